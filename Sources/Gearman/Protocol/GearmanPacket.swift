import NIOCore

/// Which side sent a packet: `\0REQ` goes to the server, `\0RES` comes from it.
public enum GearmanMagic: Sendable, Hashable {
    case request
    case response

    static let requestBytes: UInt32 = 0x0052_4551  // "\0REQ"
    static let responseBytes: UInt32 = 0x0052_4553  // "\0RES"

    var wireValue: UInt32 { self == .request ? Self.requestBytes : Self.responseBytes }
}

/// One binary packet: a 12-byte header (magic, type, body size) and NUL-separated fields.
///
/// `arguments` holds exactly `type.fieldCount` fields; the last one is the rest of the body and may
/// contain any bytes (payloads, results). The others must not contain NUL.
public struct GearmanPacket: Sendable, Hashable, CustomStringConvertible {
    public var magic: GearmanMagic
    public var type: GearmanPacketType
    public var arguments: [ByteBuffer]

    public init(magic: GearmanMagic, type: GearmanPacketType, arguments: [ByteBuffer] = []) {
        self.magic = magic
        self.type = type
        self.arguments = arguments
    }

    public init(_ magic: GearmanMagic, _ type: GearmanPacketType, _ arguments: String...) {
        self.init(magic: magic, type: type, arguments: arguments.map { ByteBuffer(string: $0) })
    }

    /// The field at `index` as text (lossy for invalid UTF-8), or "" when absent.
    public func string(at index: Int) -> String {
        guard index < arguments.count else { return "" }
        return String(buffer: arguments[index])
    }

    /// The job handle of packets whose first field is one. gearmand adds a stray trailing NUL to the
    /// WORK_FAIL it sends in place of WORK_EXCEPTION, so trailing NULs are dropped.
    public var handle: String {
        var handle = string(at: 0)
        while handle.last == "\0" { handle.removeLast() }
        return handle
    }

    public var description: String {
        let fields = arguments.map { field -> String in
            field.readableBytes > 64 ? "<\(field.readableBytes) bytes>" : String(reflecting: String(buffer: field))
        }
        return "\(magic == .request ? "REQ" : "RES") \(type.name)(\(fields.joined(separator: ", ")))"
    }
}

/// What travels on a gearmand port: binary packets and lines of the admin text protocol, mixed.
public enum GearmanMessage: Sendable, Hashable {
    case packet(GearmanPacket)
    /// One admin text line without its line break (`status`, `OK 1.1.20`, `.`).
    case text(String)
}
