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
    ///
    /// Written through one pointer into room reserved once: byte by byte through `ByteBuffer`'s writes (five per
    /// argument, each checking room and uniqueness) it was a seventh of the gateway's time under a stream of `SUBMIT`s.
    public static func write(_ command: RedisCommand, into buffer: inout ByteBuffer) {
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: encodedSize(of: command)) { output -> Int in
            var offset = 0
            offset = writeHeader(UInt8(ascii: "*"), command.arguments.count, into: output, at: offset)
            for argument in command.arguments {
                offset = writeHeader(UInt8(ascii: "$"), argument.readableBytes, into: output, at: offset)
                argument.withUnsafeReadableBytes { bytes in
                    if let source = bytes.baseAddress, !bytes.isEmpty {
                        (output.baseAddress! + offset).copyMemory(from: source, byteCount: bytes.count)
                    }
                }
                offset += argument.readableBytes
                output[offset] = UInt8(ascii: "\r")
                output[offset + 1] = UInt8(ascii: "\n")
                offset += 2
            }
            return offset
        }
    }

    /// Bytes `command` takes on the wire, to size a buffer once for a whole pipeline.
    public static func encodedSize(of command: RedisCommand) -> Int {
        command.arguments.reduce(1 + 20 + 2) { $0 + 1 + 20 + 2 + $1.readableBytes + 2 }
    }

    /// `marker`, `value` in ASCII and CRLF at `offset`; returns the offset after them.
    private static func writeHeader(_ marker: UInt8, _ value: Int, into output: UnsafeMutableRawBufferPointer, at offset: Int) -> Int {
        output[offset] = marker
        var digits = 1
        var power = 10
        while value >= power && digits < 19 {
            digits += 1
            power &*= 10
        }
        var remaining = value
        for position in stride(from: offset + digits, to: offset, by: -1) {
            output[position] = UInt8(ascii: "0") + UInt8(remaining % 10)
            remaining /= 10
        }
        output[offset + digits + 1] = UInt8(ascii: "\r")
        output[offset + digits + 2] = UInt8(ascii: "\n")
        return offset + digits + 3
    }
}
