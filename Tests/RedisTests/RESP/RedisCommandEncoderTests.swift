import NIOCore
import Testing

@testable import Redis

@Suite struct RedisCommandEncoderTests {
    /// Commands are RESP arrays of bulk strings; binary arguments are written as they are.
    @Test func encodesBinaryArguments() {
        var buffer = ByteBuffer()
        let command: RedisCommand = ["SET", "k", .bytes([0, 13, 10]), 120]
        RedisCommandEncoder.write(command, into: &buffer)
        RedisCommandEncoder.write(["PING"], into: &buffer)
        let expected = Array("*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n".utf8) + [0, 13, 10] + Array("\r\n$3\r\n120\r\n*1\r\n$4\r\nPING\r\n".utf8)
        #expect(Array(buffer.readableBytesView) == expected)
        #expect(RedisCommandEncoder.encodedSize(of: command) >= expected.count - 14)
    }

    /// Large lengths and empty arguments are written correctly.
    @Test func lengths() {
        var buffer = ByteBuffer()
        let big = ByteBuffer(repeating: 7, count: 1_234_567)
        RedisCommandEncoder.write(RedisCommand([ByteBuffer(string: "SET"), ByteBuffer(), big]), into: &buffer)
        #expect(buffer.readString(length: 20) == "*3\r\n$3\r\nSET\r\n$0\r\n\r\n$")
        #expect(buffer.readString(length: 9) == "1234567\r\n")
        #expect(buffer.readableBytes == 1_234_567 + 2)
    }

    /// Every length at a change of digits, and more than nine arguments, are written as RESP spells them (checked
    /// against the encoding written out by hand, one piece at a time).
    @Test func lengthsAtEveryDigitCount() {
        let sizes = [0, 1, 9, 10, 11, 99, 100, 101, 999, 1_000, 9_999, 10_000, 65_536]
        let command = RedisCommand(sizes.map { ByteBuffer(repeating: UInt8(ascii: "a") + UInt8($0 % 26), count: $0) })
        var expected = Array("*\(sizes.count)\r\n".utf8)
        for size in sizes {
            expected += Array("$\(size)\r\n".utf8) + Array(repeating: UInt8(ascii: "a") + UInt8(size % 26), count: size) + Array("\r\n".utf8)
        }
        var buffer = ByteBuffer(string: "before")
        RedisCommandEncoder.write(command, into: &buffer)
        #expect(buffer.readString(length: 6) == "before")
        #expect(Array(buffer.readableBytesView) == expected)
        #expect(RedisCommandEncoder.encodedSize(of: command) >= expected.count)
    }

    /// The description names the command but never shows argument values (passwords).
    @Test func descriptionHidesArguments() {
        let command: RedisCommand = ["AUTH", "secret"]
        #expect(!command.description.contains("secret"))
        #expect(command.description.hasPrefix("AUTH"))
    }
}
