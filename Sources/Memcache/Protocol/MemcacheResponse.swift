import NIOCore

/// An item as `get`/`gets` return it.
public struct MemcacheItem: Hashable, Sendable {
    public var key: String
    /// The 32-bit client flags stored with the value (PHP extensions keep their type marks here).
    public var flags: UInt32
    public var data: ByteBuffer
    /// The CAS unique (`gets` only).
    public var cas: UInt64?

    public init(key: String, flags: UInt32, data: ByteBuffer, cas: UInt64? = nil) {
        self.key = key
        self.flags = flags
        self.data = data
        self.cas = cas
    }
}

/// One reply unit of the text protocol, as the decoder produces it: a `VALUE` block or a status line.
public enum MemcacheResponse: Hashable, Sendable {
    /// `VALUE <key> <flags> <bytes> [<cas>]\r\n<data>\r\n`
    case value(MemcacheItem)
    /// `END`: closes the reply to a `get`.
    case end
    case stored
    case notStored
    case exists
    case notFound
    case deleted
    case touched
    /// `VERSION <text>`
    case version(String)
    /// `ERROR`: the server did not know the command.
    case error
    /// `CLIENT_ERROR <message>`
    case clientError(String)
    /// `SERVER_ERROR <message>`
    case serverError(String)
}

/// The complete answer to one `MemcacheRequest`.
public enum MemcacheReply: Hashable, Sendable {
    /// The hits of a `get`/`gets`, in the server's order (misses are simply absent).
    case values([MemcacheItem])
    case stored
    case notStored
    case exists
    case notFound
    case deleted
    case touched
    case version(String)
    case error
    case clientError(String)
    case serverError(String)

    /// The reply as an error, for `ERROR`, `CLIENT_ERROR` and `SERVER_ERROR`.
    var failure: MemcacheError? {
        switch self {
        case .error: MemcacheError(.commandError, "server answered ERROR")
        case .clientError(let message): MemcacheError(.clientError, "CLIENT_ERROR \(message)")
        case .serverError(let message): MemcacheError(.serverError, "SERVER_ERROR \(message)")
        default: nil
        }
    }
}
