import GatewayProtocol
import NIOCore
import NIOEmbedded
import LocalServers
import Testing

/// Bad input: each case gets the right error code (with the tag when it could be read), and the next request on the
/// same stream still parses.
@Suite struct GatewayRequestErrorTests {
    struct BadInput: CustomTestStringConvertible, Sendable {
        var input: [UInt8]
        var code: GatewayErrorCode
        var tag: GatewayTag?
        var why: String

        init(_ input: String, _ code: GatewayErrorCode, tag: String? = nil, _ why: String) {
            self.init(Array(input.utf8), code, tag: tag, why)
        }

        init(_ input: [UInt8], _ code: GatewayErrorCode, tag: String? = nil, _ why: String) {
            self.input = input
            self.code = code
            self.tag = tag.map { GatewayTag(rawValue: $0)! }
            self.why = why
        }

        var testDescription: String { why }
    }

    static let id = "3kq9w0c6r2z8m1v4x7b5n0t2ye"
    static let limits = GatewayRequestDecoder(maximumLineLength: 400, maximumPayloadSize: 100)

    static let cases: [BadInput] = [
        // Verbs
        BadInput("FROB\n", .unknownCommand, "unknown verb"),
        BadInput("@t1 FROB a b c\r\n", .unknownCommand, tag: "t1", "unknown verb keeps the tag"),
        BadInput([0, 0xFF, 0xFE, 10], .unknownCommand, "binary verb"),
        BadInput("SUBMITX f 3\n", .unknownCommand, "a verb that only starts like SUBMIT announces no block"),
        // Argument counts
        BadInput("STATUS\n", .badFormat, "STATUS without id"),
        BadInput("@t1 STATUS a b\n", .badFormat, tag: "t1", "STATUS with two ids"),
        BadInput("PING extra\n", .badFormat, "PING with an argument"),
        BadInput("HELLO x\n", .badFormat, "HELLO with an argument"),
        BadInput("QUIT now\n", .badFormat, "QUIT with an argument"),
        BadInput("STATS x=1\n", .badFormat, "an option on a command without options"),
        BadInput("WAIT \(id)\n", .badFormat, "WAIT without timeout"),
        BadInput("WATCH\n", .badFormat, "WATCH without id"),
        BadInput("UNWATCH a b\n", .badFormat, "UNWATCH with two ids"),
        BadInput("RESULT\n", .badFormat, "RESULT without id"),
        BadInput("SUBSCRIBE\n", .badFormat, "SUBSCRIBE without function"),
        BadInput("SUBSCRIBE a from=yesterday\n", .badFormat, "SUBSCRIBE from= not a cursor"),
        BadInput("SUBSCRIBE a from=1-2-3\n", .badFormat, "SUBSCRIBE from= a malformed cursor"),
        BadInput("SUBSCRIBE a b\n", .badFormat, "SUBSCRIBE with two functions"),
        BadInput("SUBSCRIBE a since=5\n", .badFormat, "SUBSCRIBE with an unknown option"),
        BadInput("UNSUBSCRIBE a b\n", .badFormat, "UNSUBSCRIBE with two functions"),
        BadInput("AUTH\n", .badFormat, "AUTH without secret"),
        BadInput("AUTH a b c\n", .badFormat, "AUTH with three words"),
        // Ids, numbers, names
        BadInput("STATUS bad/id\n", .badFormat, "id with a slash"),
        BadInput("RESULT \(String(repeating: "a", count: 129))\n", .badFormat, "id of 129 bytes"),
        BadInput([UInt8]("WATCH ab".utf8) + [0, 0x63, 10], .badFormat, "id with NUL"),
        BadInput("WAIT \(id) -1\n", .badFormat, "negative timeout"),
        BadInput("WAIT \(id) soon\n", .badFormat, "non-numeric timeout"),
        BadInput("WAIT \(id) 99999999999999999999999\n", .badFormat, "timeout beyond 64 bits"),
        BadInput("SUBSCRIBE \(String(repeating: "f", count: 256))\n", .badFormat, "function of 256 bytes"),
        BadInput("SUBSCRIBE a\tb\n", .badFormat, "function with a tab"),
        BadInput([UInt8]("SUBSCRIBE a".utf8) + [0xFF, 10], .badFormat, "function that is not UTF-8"),
        BadInput([UInt8]("SUBSCRIBE a".utf8) + [0xC2, 0x85, 10], .badFormat, "function with a C1 control (NEL)"),
        BadInput("SUBSCRIBE a\u{00A0}b\n", .badFormat, "function with a no-break space"),
        BadInput([UInt8]("AUTH a".utf8) + [1, 10], .badFormat, "secret with a control character"),
        // Tags
        BadInput("@bad!tag PING\n", .badFormat, "tag with '!' (no tag on the error)"),
        BadInput("@ PING\n", .badFormat, "empty tag"),
        BadInput("@\(String(repeating: "t", count: 33)) PING\n", .badFormat, "tag of 33 bytes"),
        BadInput("@t1\n", .badFormat, tag: "t1", "tag without command"),
        // SUBMIT: line errors with a valid count still consume the block
        BadInput("SUBMIT f 3 prio=high\nabc\n", .badFormat, "unknown option (typo)"),
        BadInput("@t1 SUBMIT f 3 unique=a unique=b\r\nabc\r\n", .badFormat, tag: "t1", "duplicate option"),
        BadInput("SUBMIT f 3 wait=5 WAIT=6\nabc\n", .badFormat, "duplicate option differing in case"),
        BadInput("SUBMIT f 3 priority=urgent\nabc\n", .badFormat, "bad priority"),
        BadInput("SUBMIT f 3 priority=\nabc\n", .badFormat, "empty priority"),
        BadInput("SUBMIT f 3 wait=soon\nabc\n", .badFormat, "non-numeric wait"),
        BadInput("SUBMIT f 3 wait=-1\nabc\n", .badFormat, "negative wait"),
        BadInput("SUBMIT f 3 unique=\nabc\n", .badFormat, "empty unique"),
        BadInput("SUBMIT f 3 unique=\(String(repeating: "u", count: 64))\nabc\n", .badFormat, "unique of 64 bytes, never truncated"),
        BadInput([UInt8]("SUBMIT f 3 unique=a".utf8) + [0x7F] + Array("\nabc\n".utf8), .badFormat, "unique with DEL"),
        BadInput("SUBMIT f 3 =x\nabc\n", .badFormat, "option without a name"),
        BadInput("SUBMIT f 3 extra\nabc\n", .badFormat, "a third positional argument"),
        BadInput([UInt8]("SUBMIT f".utf8) + [1] + Array(" 3\nabc\n".utf8), .badFormat, "bad function name"),
        BadInput("@b@d SUBMIT f 3\nabc\n", .badFormat, "bad tag on a SUBMIT"),
        BadInput("@t1 SUBMIT f 3 prio=1\nP\0\n\n", .badFormat, tag: "t1", "a binary block after a bad line"),
        // SUBMIT: counts
        BadInput("@t1 SUBMIT f 101\n\(String(repeating: "x", count: 101))\n", .payloadTooLarge, tag: "t1", "block over the maximum, skipped"),
        BadInput("SUBMIT f 101 prio=1\n\(String(repeating: "x", count: 101))\r\n", .payloadTooLarge, "over the maximum and a bad option: the size is reported"),
        BadInput("SUBMIT f -3\n", .badFormat, "negative count: no block, the next line is a request"),
        BadInput("SUBMIT f +3\n", .badFormat, "signed count"),
        BadInput("SUBMIT f abc\n", .badFormat, "non-numeric count"),
        BadInput("SUBMIT f 3.0\n", .badFormat, "fractional count"),
        BadInput("SUBMIT f 99999999999999999999999\n", .badFormat, "count beyond Int: no block"),
        BadInput("SUBMIT f\n", .badFormat, "SUBMIT without count"),
        BadInput("SUBMIT\n", .badFormat, "SUBMIT without arguments"),
        BadInput("@t1 SUBMIT f 3\nabcdef\n", .badFormat, tag: "t1", "block longer than announced: no line break after it"),
        BadInput("SUBMIT f 3\nabc\rX\n", .badFormat, "CR not followed by LF after the block"),
        BadInput("SUBMIT f 3 prio=1\nabcdef\n", .badFormat, "bad line and bad line break"),
        BadInput("@t1 SUBMIT f 101\n\(String(repeating: "x", count: 101))yy\n", .badFormat, tag: "t1", "skipped block without line break"),
        // Length
        BadInput("@t1 SUBSCRIBE \(String(repeating: "x", count: 500))\n", .lineTooLong, tag: "t1", "line over the maximum keeps its tag"),
        BadInput("SUBMIT f 3 \(String(repeating: "x", count: 500))\n", .lineTooLong, "an over-long SUBMIT line announces no block"),
        BadInput(Array(repeating: 0, count: 1000) + [10], .lineTooLong, "a long run of NULs"),
    ]

    /// The error comes out with its code and tag; `@next PING` right after it still parses.
    @Test(arguments: cases)
    func errorThenResync(bad: BadInput) throws {
        let expectedNext = Result<GatewayRequest, GatewayRequestError>.success(GatewayRequest(tag: tag("next"), .ping))
        for chunkSize in [Int.max, 1, 7] {
            var feed = DecoderFeed(Self.limits)
            try feed.feed(bad.input + Array("@next PING\n".utf8), inChunksOf: [chunkSize])
            try feed.finish()
            try #require(feed.outputs.count == 2, "\(bad.why): \(feed.outputs)")
            let error = try #require(feed.outputs[0].error, "\(bad.why): \(feed.outputs[0])")
            #expect(error.code == bad.code, "\(bad.why): \(error)")
            #expect(error.tag == bad.tag, "\(bad.why): \(error)")
            #expect(!error.message.isEmpty && !error.message.contains("\n") && !error.message.contains("\r"))
            #expect(feed.outputs[1] == expectedNext, "\(bad.why)")
            #expect(feed.buffer.readableBytes == 0)
        }
    }

    /// The error's `ERR` reply carries the code, the text and the tag.
    @Test func errorResponse() throws {
        let error = try #require(try decodeOne("@t1 FROB\n").error)
        #expect(encode(error.response) == "@t1 ERR UNKNOWN_COMMAND unknown command 'FROB'\r\n")
    }

    /// A negative count says that the bytes after the line are read as requests.
    @Test func negativeCountSaysNoBlockWasRead() throws {
        let outputs = try decodeRequests("SUBMIT f -2\nPING\n")
        #expect(outputs.first?.error?.message.contains("no data block was read") == true)
        #expect(outputs.last == .success(GatewayRequest(.ping)))
    }

    /// An over-long line streamed in small chunks: the decoder never holds more than the limit plus one byte.
    @Test func overLongLineStaysBounded() throws {
        var feed = DecoderFeed(GatewayRequestDecoder(maximumLineLength: 1024))
        try feed.feed("@big SUBMIT f 5 ")
        let junk = [UInt8](repeating: UInt8(ascii: "x"), count: 1 << 20)
        try feed.feed(junk, inChunksOf: [100, 33, 1, 517])
        #expect(feed.maximumBuffered <= 1025)
        #expect(feed.buffer.readableBytes == 0)
        #expect(feed.outputs.isEmpty)
        try feed.feed("\r\nPING\n")
        #expect(feed.outputs == [.failure(GatewayRequestError(tag: tag("big"), code: .lineTooLong, message: "request line longer than 1024 bytes; discarded up to the next LF")), .success(GatewayRequest(.ping))])
    }

    /// Binary junk without LF (NUL, 0xFF, CR) for a long time stays bounded too.
    @Test func binaryJunkWithoutLineBreakStaysBounded() throws {
        var rng = SplitMix64(seed: 42)
        var feed = DecoderFeed(GatewayRequestDecoder(maximumLineLength: 512))
        let junk = (0..<(1 << 19)).map { _ -> UInt8 in
            let byte = UInt8.random(in: 0...255, using: &rng)
            return byte == 10 ? 0 : byte
        }
        try feed.feed(junk, inChunksOf: randomSizes(maximum: 300, using: &rng))
        #expect(feed.maximumBuffered <= 513)
        try feed.feed("\n@n PING\n")
        #expect(feed.outputs.map(\.error?.code) == [.lineTooLong, nil])
        #expect(feed.outputs.last == .success(GatewayRequest(tag: tag("n"), .ping)))
    }

    /// An over-size block streamed in small chunks is skipped as it arrives, never buffered.
    @Test func overSizeBlockIsSkippedNotBuffered() throws {
        var feed = DecoderFeed(GatewayRequestDecoder(maximumPayloadSize: 64 * 1024))
        let size = 4 << 20
        try feed.feed("@big SUBMIT f \(size)\r\n")
        var rng = SplitMix64(seed: 7)
        try feed.feed((0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }, inChunksOf: [4096, 1, 65_537, 100])
        #expect(feed.maximumBuffered <= 1)
        #expect(feed.outputs.isEmpty)
        try feed.feed("\r\n@n PING\n")
        #expect(feed.outputs.map(\.error?.code) == [.payloadTooLarge, nil])
        #expect(feed.outputs[0].error?.tag == tag("big"))
        #expect(feed.outputs[1] == .success(GatewayRequest(tag: tag("n"), .ping)))
    }

    /// A block the caller refuses when its line is read is skipped as it streams in, never buffered, and answered
    /// with the caller's error (carrying the tag); the caller is asked once per good SUBMIT line, with its length,
    /// and the next request reads normally.
    @Test func refusedBlockIsSkippedNotBuffered() throws {
        var decoder = GatewayRequestDecoder(maximumPayloadSize: 1 << 20)
        var asked: [GatewayBlockAnnouncement] = []
        var outputs: [Result<GatewayRequest, GatewayRequestError>] = []
        var buffer = ByteBuffer()
        var maximumBuffered = 0
        func feed(_ bytes: some Sequence<UInt8>) {
            buffer.writeBytes(Array(bytes))
            while let output = decoder.decode(buffer: &buffer, admittingBlock: { block in
                asked.append(block)
                return block.length > 100 ? GatewayRequestError(tag: block.tag, code: .busy, message: "no room") : nil
            }) {
                outputs.append(output)
            }
            buffer.discardReadBytes()
            maximumBuffered = max(maximumBuffered, buffer.readableBytes)
        }
        let size = 1 << 20
        feed("@big SUBMIT f \(size)\r\n".utf8)
        #expect(asked == [GatewayBlockAnnouncement(tag: tag("big"), length: size)])
        for offset in stride(from: 0, to: size, by: 4096) { feed(repeatElement(UInt8(offset % 251), count: min(4096, size - offset))) }
        #expect(maximumBuffered <= 1)
        #expect(outputs.isEmpty)
        feed("\r\nSUBMIT f 3\nabc\n".utf8)
        #expect(outputs.map(\.error?.code) == [.busy, nil])
        #expect(outputs[0].error?.tag == tag("big"))
        #expect(outputs[1].request?.command == .submit(.init(function: fn("f"), payload: ByteBuffer(string: "abc"))))
        #expect(asked.map(\.length) == [size, 3])
    }

    /// A block within the limit is buffered until complete, and no more than the block and its line break.
    @Test func acceptedBlockIsBufferedUpToItsSize() throws {
        var feed = DecoderFeed(GatewayRequestDecoder(maximumPayloadSize: 10_000))
        try feed.feed("SUBMIT f 10000\n")
        try feed.feed([UInt8](repeating: 0, count: 10_000) + [13], inChunksOf: [333])
        #expect(feed.maximumBuffered <= 10_002)
        #expect(feed.outputs.isEmpty)
        try feed.feed("\n")
        #expect(feed.outputs.first?.request?.command == .submit(.init(function: fn("f"), payload: ByteBuffer(bytes: [UInt8](repeating: 0, count: 10_000)))))
    }

    // MARK: Truncation

    static let truncated: [String] = [
        "PING",
        "@t1 SUBMIT f 5",
        "SUBMIT f 5\nab",
        "SUBMIT f 5\nabcde",
        "SUBMIT f 5\nabcde\r",
        "SUBMIT f 5 prio=1\nab",
        "SUBMIT f 500\nab",
        "SUBMIT f 3\nabcX",
        String(repeating: "x", count: 300),
    ]

    /// The connection closing inside a line or a block throws `truncated` after the whole requests before it, and
    /// nothing partial comes out.
    @Test(arguments: truncated)
    func closeInsideARequest(tail: String) throws {
        var feed = DecoderFeed(GatewayRequestDecoder(maximumLineLength: 256, maximumPayloadSize: 100))
        try feed.feed("PING\n" + tail)
        #expect(feed.take() == [.success(GatewayRequest(.ping))])
        #expect {
            try feed.finish()
        } throws: { error in
            (error as? GatewayProtocolError)?.code == .truncated
        }
        #expect(feed.outputs.isEmpty)
        // Reported once.
        try feed.finish()
    }

    /// Closing between requests is clean, also after trailing empty lines.
    @Test func closeBetweenRequests() throws {
        var feed = DecoderFeed(GatewayRequestDecoder())
        try feed.feed("PING\n\r\n")
        try feed.finish()
        #expect(feed.outputs == [.success(GatewayRequest(.ping))])
    }

    /// In a channel the truncation surfaces as an error when the channel closes.
    @Test func truncationInAChannel() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(GatewayRequestDecoder()))
        try channel.writeInbound(ByteBuffer(string: "PING\nSUBMIT f 10\nhalf"))
        #expect(try channel.readInbound(as: GatewayRequestDecoder.InboundOut.self) == .success(GatewayRequest(.ping)))
        #expect {
            _ = try channel.finish()
        } throws: { error in
            (error as? GatewayProtocolError)?.code == .truncated
        }
    }

    // MARK: Fuzzing

    /// Random binary junk (seeded) never crashes, stays bounded and resyncs at the next LF-terminated request.
    @Test(arguments: 1...40 as ClosedRange<UInt64>)
    func randomJunkResyncs(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let decoder = GatewayRequestDecoder(maximumLineLength: 128, maximumPayloadSize: 256)
        var feed = DecoderFeed(decoder)
        for round in 0..<20 {
            let length = Int.random(in: 0...600, using: &rng)
            // Mostly uniform bytes, with extra LF, CR, NUL, 0xFF and spaces.
            let junk = (0..<length).map { _ -> UInt8 in
                switch Int.random(in: 0..<10, using: &rng) {
                case 0: [10, 13, 0, 0xFF, 32, 64].randomElement(using: &rng)!
                default: UInt8.random(in: 0...255, using: &rng)
                }
            }
            try feed.feed(junk + Array("\n@sync\(round) PING\n".utf8), inChunksOf: randomSizes(maximum: 64, using: &rng))
            #expect(feed.outputs.last == .success(GatewayRequest(tag: tag("sync\(round)"), .ping)))
            #expect(feed.buffer.readableBytes == 0)
            _ = feed.take()
        }
        #expect(feed.maximumBuffered <= 129)
        try feed.finish()
    }

    /// Valid requests with random bytes overwritten, inserted or deleted (seeded): never a crash, bounded memory, and
    /// once the damage is behind (a mangled byte count may swallow what follows), requests parse again.
    @Test(arguments: 1...40 as ClosedRange<UInt64>)
    func mutatedRequestsResync(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let decoder = GatewayRequestDecoder(maximumLineLength: 128, maximumPayloadSize: 256)
        var feed = DecoderFeed(decoder)
        let valid = Array(GatewayRequestDecoderTests.mixedStream.map(\.0).joined().utf8)
        for _ in 0..<10 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...8, using: &rng) {
                let position = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: bytes[position] = UInt8.random(in: 0...255, using: &rng)
                case 1: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: position)
                default: bytes.remove(at: position)
                }
            }
            try feed.feed(bytes, inChunksOf: randomSizes(maximum: 50, using: &rng))
            _ = feed.take()
            // A byte count has at most three digits here, so 1,000 bytes of sync lines always reach a parsed one.
            var synced = false
            for _ in 0..<100 where !synced {
                try feed.feed("\n@sync PING\n")
                synced = feed.take().contains(.success(GatewayRequest(tag: tag("sync"), .ping)))
            }
            #expect(synced)
        }
        #expect(feed.maximumBuffered <= 258)
    }
}
