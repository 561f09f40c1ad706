import NIOCore
import NIOTestUtils
import Testing

@testable import Redis

@Suite struct RedisReplyDecoderTests {
    /// Runs `bytes` through a processor in chunks of `chunk` bytes, like reads from a socket.
    private func decode(_ bytes: [UInt8], chunk: Int = .max, maximumReplySize: Int = RedisReplyDecoder.defaultMaximumReplySize) throws -> [RedisReply] {
        let processor = NIOSingleStepByteToMessageProcessor(RedisReplyDecoder(maximumReplySize: maximumReplySize))
        var replies: [RedisReply] = []
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + chunk)
            try processor.process(buffer: ByteBuffer(bytes: bytes[offset..<end])) { replies.append($0) }
            offset = end
        }
        return replies
    }

    private func decode(_ text: String, chunk: Int = .max) throws -> [RedisReply] {
        try decode(Array(text.utf8), chunk: chunk)
    }

    private func bulk(_ text: String) -> RedisReply { .bulkString(ByteBuffer(string: text)) }

    /// The bulk strings of one reply are slices of one allocation, side by side (an `HGETALL` of a watched job is
    /// kept for as long as the watch: before, each string taken made the next write copy the storage, so a record
    /// of a dozen fields held a dozen growing copies).
    @Test func bulkStringsOfAReplyShareOneAllocation() throws {
        let replies = try decode("*6\r\n$5\r\nstate\r\n$6\r\nqueued\r\n:7\r\n$8\r\nfunction\r\n*1\r\n$3\r\nabc\r\n$0\r\n\r\n")
        guard case .array(let elements) = try #require(replies.first) else { Issue.record("not an array: \(replies)"); return }
        var strings = elements.compactMap(\.buffer)
        if case .array(let nested) = elements[4] { strings.insert(contentsOf: nested.compactMap(\.buffer), at: 3) }
        #expect(strings.map { String(buffer: $0) } == ["state", "queued", "function", "abc", ""])
        let addresses = strings.map { $0.withUnsafeReadableBytes { Int(bitPattern: $0.baseAddress) } }
        for index in 1..<(strings.count - 1) {
            #expect(addresses[index] == addresses[index - 1] + strings[index - 1].readableBytes, "string \(index) is not next to the one before")
        }
    }

    /// Every RESP2 type becomes its Swift case.
    @Test func everyType() throws {
        #expect(try decode("+OK\r\n") == [.simpleString("OK")])
        #expect(try decode("-ERR unknown command\r\n") == [.error("ERR unknown command")])
        #expect(try decode(":42\r\n") == [.integer(42)])
        #expect(try decode(":-9223372036854775808\r\n") == [.integer(.min)])
        #expect(try decode("$5\r\nhello\r\n") == [bulk("hello")])
        #expect(try decode("$0\r\n\r\n") == [bulk("")])
        #expect(try decode("$-1\r\n") == [.null])
        #expect(try decode("*-1\r\n") == [.null])
        #expect(try decode("*0\r\n") == [.array([])])
        #expect(try decode("*4\r\n:1\r\n$1\r\na\r\n$-1\r\n+x\r\n") == [.array([.integer(1), bulk("a"), .null, .simpleString("x")])])
    }

    /// Accessors read the values callers need without switching.
    @Test func accessors() {
        #expect(bulk("12").int == 12)
        #expect(RedisReply.integer(7).int == 7)
        #expect(bulk("hé").string == "hé")
        #expect(RedisReply.simpleString("OK").string == "OK")
        #expect(RedisReply.null.isNull)
        #expect(RedisReply.error("ERR x").errorMessage == "ERR x")
        #expect(RedisReply.array([.integer(1)]).array == [.integer(1)])
        #expect(RedisReply.integer(1).string == nil)
    }

    /// Eight levels of nested arrays parse (hiredis's limit); a ninth is a protocol error.
    @Test func nesting() throws {
        let eight = String(repeating: "*1\r\n", count: 7) + "*1\r\n:5\r\n"
        var expected = RedisReply.array([.integer(5)])
        for _ in 0..<7 { expected = .array([expected]) }
        #expect(try decode(eight) == [expected])

        let nine = String(repeating: "*1\r\n", count: 9) + ":5\r\n"
        let error = #expect(throws: RedisError.self) { try decode(nine) }
        #expect(error?.code == .protocolError)
    }

    /// Bulk strings carry any bytes, including NUL, CR and LF, and every byte value.
    @Test func binaryValues() throws {
        let value: [UInt8] = [0, 13, 10, 0, 255] + Array(0...255)
        let bytes = Array("*2\r\n$\(value.count)\r\n".utf8) + value + Array("\r\n$2\r\n\r\n\r\n".utf8)
        for chunk in [1, 3, bytes.count] {
            #expect(try decode(bytes, chunk: chunk) == [.array([.bulkString(ByteBuffer(bytes: value)), bulk("\r\n")])])
        }
    }

    /// A stream of replies split at every byte position decodes to the same replies.
    @Test func splitAtEveryByte() throws {
        let stream = "+OK\r\n:1\r\n$3\r\na\0b\r\n*2\r\n*1\r\n$-1\r\n-ERR x\r\n$-1\r\n*0\r\n"
        let bytes = Array(stream.utf8)
        let expected = try decode(stream)
        #expect(expected.count == 6)
        for split in 1..<bytes.count {
            let processor = NIOSingleStepByteToMessageProcessor(RedisReplyDecoder())
            var replies: [RedisReply] = []
            try processor.process(buffer: ByteBuffer(bytes: bytes[..<split])) { replies.append($0) }
            try processor.process(buffer: ByteBuffer(bytes: bytes[split...])) { replies.append($0) }
            #expect(replies == expected, "split at \(split)")
        }
        #expect(try decode(stream, chunk: 1) == expected)
    }

    /// NIO's verifier: drip-fed, batched and combined input all give the same replies.
    @Test func byteToMessageDecoderVerifier() throws {
        try ByteToMessageDecoderVerifier.verifyDecoder(
            stringInputOutputPairs: [
                ("+OK\r\n", [.simpleString("OK")]),
                (":1\r\n:2\r\n", [.integer(1), .integer(2)]),
                ("$4\r\n\r\n\r\n\r\n", [bulk("\r\n\r\n")]),
                ("*2\r\n$1\r\nx\r\n*1\r\n$-1\r\n", [.array([bulk("x"), .array([.null])])]),
                ("-WRONGTYPE bad\r\n$-1\r\n", [.error("WRONGTYPE bad"), .null]),
            ],
            decoderFactory: { RedisReplyDecoder() }
        )
    }

    /// Several replies in one read all come out, in order.
    @Test func severalRepliesInOneBuffer() throws {
        let stream = (0..<100).map { ":\($0)\r\n" }.joined()
        #expect(try decode(stream) == (0..<100).map { .integer(Int64($0)) })
    }

    /// A server error reply is a value, not a decoding failure: the stream goes on.
    @Test func serverErrorReply() throws {
        #expect(try decode("-NOAUTH Authentication required.\r\n+OK\r\n") == [.error("NOAUTH Authentication required."), .simpleString("OK")])
    }

    /// A reply over the bound is refused while it is still incomplete; a reply at the bound passes.
    @Test func replyOverTheBound() throws {
        let exact = "$93\r\n" + String(repeating: "a", count: 93) + "\r\n"  // 100 bytes
        #expect(try decode(Array(exact.utf8), chunk: 7, maximumReplySize: 100).count == 1)

        let tooLarge = "$1000\r\n" + String(repeating: "a", count: 200)
        let error = #expect(throws: RedisError.self) { try decode(Array(tooLarge.utf8), chunk: 10, maximumReplySize: 100) }
        #expect(error?.code == .replyTooLarge)

        // Many small replies in one read do not add up against the bound.
        let many = String(repeating: "$10\r\n0123456789\r\n", count: 50)
        #expect(try decode(Array(many.utf8), maximumReplySize: 100).count == 50)
    }

    /// Large top-level bulk strings (results) are read past hiredis into a buffer of their own: the same replies
    /// whatever the reads' sizes (a header split across reads goes through hiredis), with replies before and after
    /// them in the same reads, and inside arrays (always through hiredis).
    @Test func largeBulkStrings() throws {
        let size = RedisReplyDecoder.directBulkMinimum * 4 + 3
        let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let bulkBytes = Array("$\(size)\r\n".utf8) + payload + Array("\r\n".utf8)
        let stream = Array(":1\r\n".utf8) + bulkBytes + bulkBytes + Array("*2\r\n".utf8) + bulkBytes + Array("$1\r\nx\r\n+OK\r\n".utf8)
        let large = RedisReply.bulkString(ByteBuffer(bytes: payload))
        let expected: [RedisReply] = [.integer(1), large, large, .array([large, bulk("x")]), .simpleString("OK")]
        for chunk in [1, 5, 4_096, 65_536, .max] {
            #expect(try decode(stream, chunk: chunk) == expected, "chunk \(chunk)")
        }
    }

    /// A large bulk string must end with CRLF, and one over the bound is refused from its header on.
    @Test func largeBulkStringErrors() throws {
        let size = RedisReplyDecoder.directBulkMinimum
        let badEnd = Array("$\(size)\r\n".utf8) + [UInt8](repeating: 0x61, count: size) + Array("\n\r".utf8)
        let error = #expect(throws: RedisError.self) { try decode(badEnd, chunk: 1_000) }
        #expect(error?.code == .protocolError)
        let tooLarge = #expect(throws: RedisError.self) { try decode(Array("$\(size)\r\nabc".utf8), maximumReplySize: size) }
        #expect(tooLarge?.code == .replyTooLarge)
    }

    /// An array header announcing more elements than the bound can hold is refused before hiredis allocates them.
    @Test func hugeArrayHeader() throws {
        let error = #expect(throws: RedisError.self) { try decode(Array("*2000000000\r\n".utf8), maximumReplySize: 1 << 20) }
        #expect(error?.code == .replyTooLarge)
        let nested = #expect(throws: RedisError.self) { try decode(Array("*1\r\n*500000\r\n".utf8), maximumReplySize: 1 << 20) }
        #expect(nested?.code == .replyTooLarge)
    }

    /// Malformed bytes are a typed protocol error, and the error is sticky: valid bytes afterwards still fail.
    @Test func malformedStream() throws {
        for bad in ["!oops\r\n", ">2\r\n+a\r\n+b\r\n", "%1\r\n+a\r\n+b\r\n", "_\r\n", ":12x\r\n"] {
            let processor = NIOSingleStepByteToMessageProcessor(RedisReplyDecoder())
            let error = #expect(throws: RedisError.self, "\(bad)") {
                try processor.process(buffer: ByteBuffer(string: bad)) { _ in }
            }
            #expect(error?.code == .protocolError, "\(bad)")
            let again = #expect(throws: RedisError.self) { try processor.process(buffer: ByteBuffer(string: "+OK\r\n")) { _ in } }
            #expect(again?.code == .protocolError)
        }
    }
}
