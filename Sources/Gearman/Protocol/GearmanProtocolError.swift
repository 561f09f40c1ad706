/// Bytes on a gearmand connection that do not form a valid packet or admin line.
public enum GearmanProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The first four bytes of a packet were neither `\0REQ` nor `\0RES`.
    case invalidMagic(UInt32)
    /// A packet type gearmand 1.1.20 does not define.
    case unknownPacketType(UInt32)
    /// A size header over the configured maximum: refused before any of the body is buffered.
    case bodyTooLarge(size: Int, maximum: Int)
    /// A body with fewer NUL-separated fields than its type has.
    case missingArguments(type: GearmanPacketType, expected: Int, found: Int)
    /// A body on a packet type that has none.
    case unexpectedBody(type: GearmanPacketType, size: Int)
    /// A field other than the last contains NUL, which would shift every field after it.
    case nulInArgument(type: GearmanPacketType, index: Int)
    /// An admin text line longer than the configured maximum.
    case lineTooLong(maximum: Int)
    /// An admin command containing a line break or NUL.
    case invalidTextCommand(String)
    /// The connection closed in the middle of a packet or line.
    case truncated(buffered: Int)

    public var description: String {
        switch self {
        case .invalidMagic(let magic): "invalid packet magic 0x\(String(magic, radix: 16))"
        case .unknownPacketType(let type): "unknown packet type \(type)"
        case .bodyTooLarge(let size, let maximum): "packet body of \(size) bytes exceeds the maximum of \(maximum)"
        case .missingArguments(let type, let expected, let found): "\(type) needs \(expected) fields, got \(found)"
        case .unexpectedBody(let type, let size): "\(type) takes no body but has \(size) bytes"
        case .nulInArgument(let type, let index): "field \(index) of \(type) contains NUL"
        case .lineTooLong(let maximum): "admin line longer than \(maximum) bytes"
        case .invalidTextCommand(let line): "admin command \(String(reflecting: line)) contains a line break or NUL"
        case .truncated(let buffered): "connection closed inside a message (\(buffered) bytes buffered)"
        }
    }
}
