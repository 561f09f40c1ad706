public import NIOCore

/// A command and its arguments, each a binary-safe byte string.
///
/// ```swift
/// let set: RedisCommand = ["SET", "job:\(id)", .bytes(payload)]
/// let get = RedisCommand("GET", ["job:\(id)"])
/// ```
public struct RedisCommand: Sendable, Hashable, ExpressibleByArrayLiteral, CustomStringConvertible {
    public var arguments: [ByteBuffer]

    public init(_ arguments: [ByteBuffer]) {
        self.arguments = arguments
    }

    public init(_ arguments: [RedisArgument]) {
        self.arguments = arguments.map(\.bytes)
    }

    public init(_ name: String, _ arguments: [RedisArgument]) {
        self.arguments = [ByteBuffer(string: name)] + arguments.map(\.bytes)
    }

    public init(arrayLiteral elements: RedisArgument...) {
        self.init(elements)
    }

    /// The command name and argument sizes (never argument values: they may hold secrets).
    public var description: String {
        guard let name = arguments.first else { return "(empty command)" }
        return String(buffer: name) + (arguments.count > 1 ? " (\(arguments.count - 1) arguments)" : "")
    }
}

/// One argument of a ``RedisCommand``: text, an integer, or raw bytes.
public struct RedisArgument: Sendable, Hashable, ExpressibleByStringInterpolation, ExpressibleByIntegerLiteral {
    public var bytes: ByteBuffer

    public init(_ bytes: ByteBuffer) { self.bytes = bytes }
    public init(_ text: some StringProtocol) { self.bytes = ByteBuffer(string: String(text)) }
    public init(_ value: some BinaryInteger) { self.bytes = ByteBuffer(string: String(value)) }
    public init(stringLiteral value: String) { self.init(value) }
    public init(integerLiteral value: Int) { self.init(value) }

    public static func bytes(_ bytes: ByteBuffer) -> RedisArgument { RedisArgument(bytes) }
    public static func bytes(_ bytes: some Sequence<UInt8>) -> RedisArgument { RedisArgument(ByteBuffer(bytes: bytes)) }
}

/// Writes commands as RESP2 arrays of bulk strings, the only form Redis needs to be binary-safe.
public enum RedisCommandEncoder {
    /// Appends `command`; call it for several commands to pipeline them in one write.
    public static func write(_ command: RedisCommand, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "*"))
        writeDecimal(command.arguments.count, into: &buffer)
        for argument in command.arguments {
            buffer.writeInteger(UInt8(ascii: "$"))
            writeDecimal(argument.readableBytes, into: &buffer)
            buffer.writeImmutableBuffer(argument)
            buffer.writeStaticString("\r\n")
        }
    }

    /// Bytes `command` takes on the wire, to size a buffer once for a whole pipeline.
    public static func encodedSize(of command: RedisCommand) -> Int {
        command.arguments.reduce(1 + 20 + 2) { $0 + 1 + 20 + 2 + $1.readableBytes + 2 }
    }

    /// `n` in ASCII followed by CRLF, without allocating a String.
    private static func writeDecimal(_ value: Int, into buffer: inout ByteBuffer) {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var remaining = value
        var count = 0
        withUnsafeMutableBytes(of: &digits) { raw in
            repeat {
                raw[19 - count] = UInt8(ascii: "0") + UInt8(remaining % 10)
                remaining /= 10
                count += 1
            } while remaining > 0
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: raw[(20 - count)...]))
        }
        buffer.writeStaticString("\r\n")
    }
}
