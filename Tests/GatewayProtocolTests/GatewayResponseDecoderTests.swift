import GatewayProtocol
import NIOCore
import NIOTestUtils
import LocalServers
import Testing

@Suite struct GatewayResponseDecoderTests {
    static let shapes = GatewayResponseEncoderTests.shapes.map(\.0)

    /// Every reply and event, untagged and tagged, as the encoder writes it.
    static let all: [GatewayResponse] = shapes + shapes.map { response in
        switch response {
        case .reply(let reply, _): .reply(reply, tag: tag("T.9"))
        case .event(let event, _): .event(event, tag: tag("T.9"))
        }
    } + [
        .reply(.done(.sample, result: ByteBuffer(bytes: [0, 13, 10, 13, 13, 10, 0xFF]))),
        .event(.progress(.sample, numerator: .max, denominator: .max, message: ByteBuffer(bytes: [10, 10, 0]))),
        .reply(.error(code: .notFound, message: "  two leading spaces and trailing  ")),
    ]

    static func wire(_ responses: [GatewayResponse]) -> ByteBuffer {
        var out = ByteBuffer()
        for response in responses { GatewayResponseEncoder.write(response, into: &out) }
        return out
    }

    /// Each reply and event comes back as the value it was written from.
    @Test(arguments: all.indices)
    func roundTrip(index: Int) throws {
        var feed = DecoderFeed(GatewayResponseDecoder())
        try feed.feed(Self.wire([Self.all[index]]).bytes)
        try feed.finish()
        #expect(feed.outputs == [Self.all[index]])
    }

    /// All of them in one stream, one byte at a time.
    @Test func oneByteAtATime() throws {
        var feed = DecoderFeed(GatewayResponseDecoder())
        for byte in Self.wire(Self.all).readableBytesView { try feed.feed([byte]) }
        try feed.finish()
        #expect(feed.outputs == Self.all)
    }

    /// All of them in seeded random chunks.
    @Test(arguments: 1...8 as ClosedRange<UInt64>)
    func randomChunks(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        var feed = DecoderFeed(GatewayResponseDecoder())
        try feed.feed(Self.wire(Self.all).bytes, inChunksOf: randomSizes(maximum: 50, using: &rng))
        try feed.finish()
        #expect(feed.outputs == Self.all)
    }

    /// NIO's verifier over the replies and events.
    @Test func verifier() throws {
        let pairs = Self.all.map { (Self.wire([$0]), [$0]) }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { GatewayResponseDecoder() }
    }

    /// The nc transcript of PROTOCOL-v1.md as typed (LF only) decodes too.
    @Test func ncTranscriptWithLF() throws {
        var feed = DecoderFeed(GatewayResponseDecoder())
        try feed.feed("""
            CREATED 3kq9w0c6r2z8m1v4x7b5n0t2ye
            WATCHING 3kq9w0c6r2z8m1v4x7b5n0t2ye running 1 2
            EVENT 3kq9w0c6r2z8m1v4x7b5n0t2ye PROGRESS 2 2 0

            EVENT 3kq9w0c6r2z8m1v4x7b5n0t2ye DONE 11
            dlrow olleh

            """)
        try feed.finish()
        #expect(
            feed.outputs == [
                .reply(.created(.sample)),
                .reply(.watching(.sample, GatewayJobStatus(.running, numerator: 1, denominator: 2))),
                .event(.progress(.sample, numerator: 2, denominator: 2, message: ByteBuffer())),
                .event(.done(.sample, result: ByteBuffer(string: "dlrow olleh"))),
            ]
        )
    }

    /// A newer server may add `name=value` options to a reply; they are ignored.
    @Test func extraOptionsAreIgnored() throws {
        var feed = DecoderFeed(GatewayResponseDecoder())
        try feed.feed("HELLO jobgate 1.2 max-payload=9 auth=none proto=1 cluster=eu-1\r\nCREATED abc shard=3\r\nDONE abc 2 crc=77\r\nhi\r\n")
        #expect(
            feed.outputs == [
                .reply(.hello(GatewayServerInfo(version: "1.2", authenticationRequired: false, maximumPayloadSize: 9))),
                .reply(.created(jobID("abc"))),
                .reply(.done(jobID("abc"), result: ByteBuffer(string: "hi"))),
            ]
        )
    }

    /// Error codes the client does not know still decode.
    @Test func unknownErrorCode() throws {
        var feed = DecoderFeed(GatewayResponseDecoder())
        try feed.feed("@q ERR SOMETHING_NEW because\n")
        #expect(feed.outputs == [.reply(.error(code: GatewayErrorCode(rawValue: "SOMETHING_NEW")!, message: "because"), tag: tag("q"))])
    }

    /// `NOPERM` (a verb outside the credential's scope) decodes to its named code.
    @Test func noPermission() throws {
        var feed = DecoderFeed(GatewayResponseDecoder())
        try feed.feed("ERR NOPERM resizer may not subscribe billing\n")
        #expect(feed.outputs == [.reply(.error(code: .noPermission, message: "resizer may not subscribe billing"), tag: nil)])
    }

    /// Lines a conforming server never sends are protocol errors.
    @Test(arguments: [
        ("FROB\n", GatewayProtocolError.Code.malformedLine),
        ("CREATED\n", .malformedLine),
        ("CREATED a/b\n", .malformedLine),
        ("CREATED abc extra\n", .malformedLine),
        ("STATUS abc sleeping 1 2\n", .malformedLine),
        ("STATUS abc running -1 2\n", .malformedLine),
        ("STATUS abc running 1\n", .malformedLine),
        ("DONE abc x\n", .malformedLine),
        ("DONE abc -1\n", .malformedLine),
        ("HELLO jobgate 1 proto=2 auth=none max-payload=1\n", .malformedLine),
        ("HELLO memcached 1 proto=1 auth=none max-payload=1\n", .malformedLine),
        ("HELLO jobgate 1 proto=1 auth=maybe max-payload=1\n", .malformedLine),
        ("HELLO jobgate 1 proto=1 auth=none\n", .malformedLine),
        ("ERR bad_code x\n", .malformedLine),
        ("ERR\n", .malformedLine),
        ("EVENT abc\n", .malformedLine),
        ("EVENT abc STARTED\n", .malformedLine),
        ("EVENT abc PROGRESS 1 2\n", .malformedLine),
        ("@bad! PONG\n", .malformedLine),
        ("HEALTH\n", .malformedLine),
        ("HEALTH maybe redis=up\n", .malformedLine),
        ("HEALTH ready redis\n", .malformedLine),
        ("HEALTH ready =up\n", .malformedLine),
        ("@t\n", .malformedLine),
        ("SUBSCRIBED a\u{1}b\n", .malformedLine),
        ("DONE abc 3\nabcX\n", .missingLineBreak),
        ("DONE abc 3\nabc\rX\n", .missingLineBreak),
        ("DONE abc 1000\n", .blockTooLarge),
        ("EVENT abc DONE 1000\n", .blockTooLarge),
        ("STATUS \(String(repeating: "a", count: 300))\n", .lineTooLong),
        (String(repeating: "\0", count: 300), .lineTooLong),
    ])
    func protocolErrors(input: String, code: GatewayProtocolError.Code) {
        var feed = DecoderFeed(GatewayResponseDecoder(maximumLineLength: 256, maximumBlockSize: 999))
        #expect {
            try feed.feed(input)
        } throws: { error in
            (error as? GatewayProtocolError)?.code == code
        }
    }

    /// Closing inside a line or a block is `truncated`; closing between responses is clean.
    @Test(arguments: ["PONG", "DONE abc 5\nab", "DONE abc 5\nabcde", "DONE abc 5\nabcde\r", "STATS 3\n"])
    func truncated(tail: String) throws {
        var feed = DecoderFeed(GatewayResponseDecoder())
        try feed.feed("PONG\r\n" + tail)
        #expect(feed.take() == [.reply(.pong)])
        #expect {
            try feed.finish()
        } throws: { error in
            (error as? GatewayProtocolError)?.code == .truncated
        }
        var clean = DecoderFeed(GatewayResponseDecoder())
        try clean.feed("PONG\r\n")
        try clean.finish()
        #expect(clean.outputs == [.reply(.pong)])
    }

    /// A line without LF is refused once it passes the limit; it is never buffered beyond it.
    @Test func longLineIsBounded() throws {
        var feed = DecoderFeed(GatewayResponseDecoder(maximumLineLength: 100))
        #expect(throws: GatewayProtocolError.self) {
            try feed.feed([UInt8](repeating: 65, count: 10_000), inChunksOf: [7])
        }
        #expect(feed.maximumBuffered <= 101)
    }

    /// Statistics parse back from their `name value` lines.
    @Test func statisticsBlock() throws {
        var feed = DecoderFeed(GatewayResponseDecoder())
        try feed.feed("STATS 33\r\nuptime 12\nversion 1.0 beta\r\nflag\n\r\n")
        #expect(feed.outputs == [.reply(.stats([GatewayStatistic("uptime", "12"), GatewayStatistic("version", "1.0 beta"), GatewayStatistic("flag", "")]))])
    }
}
