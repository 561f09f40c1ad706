import NIOCore

/// The storage commands of the text protocol; all take `<key> <flags> <exptime> <bytes>` and a data block.
public enum MemcacheStoreCommand: String, Hashable, Sendable {
    case set, add, replace, append, prepend
}

/// One request of the memcached text protocol (memcached/memcached:doc/protocol.txt).
public enum MemcacheRequest: Hashable, Sendable {
    /// `get <key>*`: one `VALUE` per hit, then `END`.
    case get([String])
    /// `gets <key>*`: like `get`, with the CAS unique of each item.
    case gets([String])
    /// `<command> <key> <flags> <exptime> <bytes>\r\n<data>\r\n`. `exptime`: 0 never, up to 2,592,000 relative
    /// seconds, larger an absolute Unix time, negative expired at once.
    case store(MemcacheStoreCommand, key: String, flags: UInt32, exptime: Int32, data: ByteBuffer)
    /// `delete <key>` → `DELETED` or `NOT_FOUND`.
    case delete(String)
    /// `touch <key> <exptime>` → `TOUCHED` or `NOT_FOUND`.
    case touch(String, exptime: Int32)
    /// `version` → `VERSION <text>`; a cheap liveness probe.
    case version

    /// The keys this request names.
    public var keys: [String] {
        switch self {
        case .get(let keys), .gets(let keys): keys
        case .store(_, let key, _, _, _), .delete(let key), .touch(let key, _): [key]
        case .version: []
        }
    }

    /// Checks keys and value size so that nothing the server would misparse is ever written.
    public func validate(maximumValueSize: Int) throws(MemcacheError) {
        switch self {
        case .get(let keys), .gets(let keys):
            guard !keys.isEmpty else { throw MemcacheError(.invalidKey, "get without keys") }
            for key in keys { try MemcacheKey.validate(key) }
        case .store(_, let key, _, _, let data):
            try MemcacheKey.validate(key)
            guard data.readableBytes <= maximumValueSize else {
                throw MemcacheError(.valueTooLarge, "value of \(data.readableBytes) bytes exceeds the maximum of \(maximumValueSize)")
            }
        case .delete(let key), .touch(let key, _):
            try MemcacheKey.validate(key)
        case .version:
            break
        }
    }

    /// Appends the request's bytes; call `validate` first.
    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .get(let keys), .gets(let keys):
            buffer.writeString(self.isGets ? "gets" : "get")
            for key in keys {
                buffer.writeInteger(UInt8(ascii: " "))
                buffer.writeString(key)
            }
            buffer.writeStaticString("\r\n")
        case .store(let command, let key, let flags, let exptime, let data):
            buffer.writeString("\(command.rawValue) \(key) \(flags) \(exptime) \(data.readableBytes)\r\n")
            buffer.writeImmutableBuffer(data)
            buffer.writeStaticString("\r\n")
        case .delete(let key):
            buffer.writeString("delete \(key)\r\n")
        case .touch(let key, let exptime):
            buffer.writeString("touch \(key) \(exptime)\r\n")
        case .version:
            buffer.writeStaticString("version\r\n")
        }
    }

    private var isGets: Bool {
        if case .gets = self { return true }
        return false
    }
}
