public import NIOCore

/// One RESP2 reply, copied out of hiredis's reply objects.
public enum RedisReply: Sendable, Hashable {
    /// `+OK`: a status line.
    case simpleString(String)
    /// `-ERR …`: an error line. Top-level errors reach callers as ``RedisError``; this case remains
    /// inside arrays (an `EXEC` whose commands failed at run time).
    case error(String)
    /// `:42`
    case integer(Int64)
    /// `$5\r\nhello`: binary-safe bytes.
    case bulkString(ByteBuffer)
    /// `$-1` or `*-1`: a missing key, a timed-out `BLPOP`, an aborted `EXEC` after `WATCH`.
    case null
    /// `*N`: nested replies (hiredis 0.14 parses at most 8 levels).
    case array([RedisReply])
}

extension RedisReply {
    /// The text of a simple or bulk string (bulk bytes decoded as UTF-8, invalid sequences repaired).
    public var string: String? {
        switch self {
        case .simpleString(let text): text
        case .bulkString(let bytes): String(buffer: bytes)
        default: nil
        }
    }

    /// The bytes of a bulk or simple string.
    public var buffer: ByteBuffer? {
        switch self {
        case .bulkString(let bytes): bytes
        case .simpleString(let text): ByteBuffer(string: text)
        default: nil
        }
    }

    /// An integer reply, or a string holding a decimal integer (`HGET` of a counter).
    public var int: Int? {
        switch self {
        case .integer(let value): Int(exactly: value)
        case .bulkString, .simpleString: string.flatMap { Int($0) }
        default: nil
        }
    }

    /// The elements of an array reply.
    public var array: [RedisReply]? {
        if case .array(let elements) = self { return elements }
        return nil
    }

    public var isNull: Bool { self == .null }

    /// The message of an error reply.
    public var errorMessage: String? {
        if case .error(let message) = self { return message }
        return nil
    }
}

extension RedisReply: CustomStringConvertible {
    /// A redis-cli-like rendering, for logs and test failures.
    public var description: String {
        switch self {
        case .simpleString(let text): text
        case .error(let message): "(error) \(message)"
        case .integer(let value): "(integer) \(value)"
        case .bulkString(let bytes): String(reflecting: String(buffer: bytes))
        case .null: "(nil)"
        case .array(let elements): "[" + elements.map(\.description).joined(separator: ", ") + "]"
        }
    }
}
