import GatewayProtocol
import NIOCore
import NIOEmbedded
import NIOTestUtils
import LocalServers
import Testing

@Suite struct GatewayRequestDecoderTests {
    static let id = "3kq9w0c6r2z8m1v4x7b5n0t2ye"

    /// Every command of the spec, as a line, and what it parses to.
    static let commands: [(String, GatewayCommand)] = [
        ("HELLO", .hello),
        ("AUTH s3cr=t!", .auth(secret: "s3cr=t!")),
        ("AUTH resizer s3cr=t!", .auth(name: "resizer", secret: "s3cr=t!")),
        ("STATUS \(id)", .status(.sample)),
        ("RESULT \(id)", .result(.sample)),
        ("WAIT \(id) 2500", .wait(.sample, timeoutMilliseconds: 2500)),
        ("WAIT \(id) 0", .wait(.sample, timeoutMilliseconds: 0)),
        ("WATCH \(id)", .watch(.sample)),
        ("UNWATCH \(id)", .unwatch(.sample)),
        ("SUBSCRIBE reverse", .subscribe(fn("reverse"))),
        ("SUBSCRIBE reverse from=now", .subscribe(fn("reverse"), from: .now)),
        ("SUBSCRIBE reverse FROM=start", .subscribe(fn("reverse"), from: .start)),
        ("SUBSCRIBE reverse from=1733241600000-3", .subscribe(fn("reverse"), from: .after(GatewayLogCursor(milliseconds: 1_733_241_600_000, sequence: 3)))),
        ("UNSUBSCRIBE image.resize/v2", .unsubscribe(fn("image.resize/v2"))),
        ("PING", .ping),
        ("STATS", .stats),
        ("HEALTH", .health),
        ("health", .health),
        ("QUIT", .quit),
    ]

    /// Each command without a data block parses to its typed value.
    @Test(arguments: commands.indices)
    func parsesCommand(index: Int) throws {
        let (line, command) = Self.commands[index]
        #expect(try decodeOne(line + "\n") == .success(GatewayRequest(command)))
    }

    /// Verbs are case-insensitive; arguments keep their case.
    @Test func verbsAreCaseInsensitive() throws {
        #expect(try decodeOne("ping\n") == .success(GatewayRequest(.ping)))
        #expect(try decodeOne("PiNg\r\n") == .success(GatewayRequest(.ping)))
        #expect(try decodeOne("subscribe Reverse\n") == .success(GatewayRequest(.subscribe(fn("Reverse")))))
        #expect(try decodeOne("wait \(Self.id) 5\n") == .success(GatewayRequest(.wait(.sample, timeoutMilliseconds: 5))))
        #expect(try decodeOne("submit fn 2\nab\n").request?.command == .submit(.init(function: fn("fn"), payload: ByteBuffer(string: "ab"))))
    }

    /// `@tag ` before the verb is kept on the request, for every command.
    @Test(arguments: commands.indices)
    func tagsAreParsed(index: Int) throws {
        let (line, command) = Self.commands[index]
        #expect(try decodeOne("@Az09_.- \(line)\n") == .success(GatewayRequest(tag: tag("Az09_.-"), command)))
    }

    /// A 32-byte tag is the longest.
    @Test func longestTag() throws {
        let tag32 = String(repeating: "x", count: 32)
        #expect(try decodeOne("@\(tag32) PING\n") == .success(GatewayRequest(tag: tag(tag32), .ping)))
    }

    /// SUBMIT with its data block, without options.
    @Test func submit() throws {
        let result = try decodeOne("SUBMIT reverse 11\nhello world\n")
        #expect(result == .success(GatewayRequest(.submit(.init(function: fn("reverse"), payload: ByteBuffer(string: "hello world"))))))
    }

    /// SUBMIT's options, in any order and any case of names, give typed fields.
    @Test(arguments: [
        "unique=order-42 priority=high wait=1500",
        "wait=1500 unique=order-42 priority=high",
        "priority=HIGH wait=1500 UNIQUE=order-42",
        "Wait=1500 Priority=High unique=order-42",
    ])
    func submitOptionsInAnyOrder(options: String) throws {
        let result = try decodeOne("@job7 SUBMIT resize 3 \(options)\r\nabc\r\n")
        let expected = GatewaySubmission(
            function: fn("resize"),
            payload: ByteBuffer(string: "abc"),
            unique: GatewayUniqueKey(rawValue: "order-42")!,
            priority: .high,
            waitMilliseconds: 1500
        )
        #expect(result == .success(GatewayRequest(tag: tag("job7"), .submit(expected))))
    }

    /// Each priority; absent means normal.
    @Test func priorities() throws {
        for priority in GatewayPriority.allCases {
            let request = try decodeOne("SUBMIT f 0 priority=\(priority.rawValue)\n\n").request
            guard case .submit(let submission) = request?.command else { throw TestFailure("not a submit: \(String(describing: request))") }
            #expect(submission.priority == priority)
        }
        guard case .submit(let plain) = try decodeOne("SUBMIT f 0\n\n").request?.command else { throw TestFailure("not a submit") }
        #expect(plain.priority == .normal && plain.unique == nil && plain.waitMilliseconds == nil)
    }

    /// A 63-byte unique key is accepted as is.
    @Test func uniqueOf63Bytes() throws {
        let key = String(repeating: "k", count: 63)
        guard case .submit(let submission) = try decodeOne("SUBMIT f 0 unique=\(key)\n\n").request?.command else { throw TestFailure("not a submit") }
        #expect(submission.unique?.rawValue == key)
    }

    /// Function names: 255 bytes, UTF-8, punctuation.
    @Test func functionNames() throws {
        let long = String(repeating: "f", count: 255)
        #expect(try decodeOne("SUBSCRIBE \(long)\n") == .success(GatewayRequest(.subscribe(fn(long)))))
        #expect(try decodeOne("SUBSCRIBE größe:v1=2\n") == .success(GatewayRequest(.subscribe(fn("größe:v1=2")))))
    }

    /// Several spaces between words, and leading or trailing ones, are tolerated.
    @Test func extraSpaces() throws {
        #expect(try decodeOne("  WAIT   \(Self.id)    7  \r\n") == .success(GatewayRequest(.wait(.sample, timeoutMilliseconds: 7))))
    }

    /// Empty lines (LF, CRLF, spaces only) are ignored.
    @Test func emptyLinesAreIgnored() throws {
        let outputs = try decodeRequests("\n\r\n   \n\nPING\n\r\n\nQUIT\n")
        #expect(outputs == [.success(GatewayRequest(.ping)), .success(GatewayRequest(.quit))])
    }

    /// The client's side of the nc session in PROTOCOL-v1.md.
    @Test func ncSessionRequests() throws {
        let outputs = try decodeRequests("SUBMIT reverse 11\nhello world\nWATCH 3kq9w0c6r2z8m1v4x7b5n0t2ye\n")
        #expect(
            outputs == [
                .success(GatewayRequest(.submit(.init(function: fn("reverse"), payload: ByteBuffer(string: "hello world"))))),
                .success(GatewayRequest(.watch(.sample))),
            ]
        )
    }

    /// Data blocks are binary-safe: NUL, CR, LF, CRLF, 0xFF and bytes that look like requests stay in the payload.
    @Test(arguments: [
        [0, 13, 10, 0xFF, 0x80, 13, 10, 10, 0] as [UInt8],
        Array("PING\r\nQUIT\n".utf8),
        [13] as [UInt8],
        [10] as [UInt8],
        [] as [UInt8],
        (0...255).map { UInt8($0) },
    ])
    func binaryPayloads(payload: [UInt8]) throws {
        for lineBreak in ["\n", "\r\n"] {
            var feed = DecoderFeed(GatewayRequestDecoder())
            try feed.feed("SUBMIT bin \(payload.count)\(lineBreak)")
            try feed.feed(payload)
            try feed.feed("\(lineBreak)PING\n")
            #expect(feed.outputs == [.success(GatewayRequest(.submit(.init(function: fn("bin"), payload: ByteBuffer(bytes: payload))))), .success(GatewayRequest(.ping))])
        }
    }

    /// A stream of every kind of request, its expected outputs, for the feeding tests.
    static let mixedStream: [(String, [Result<GatewayRequest, GatewayRequestError>])] = [
        ("HELLO\r\n", [.success(GatewayRequest(.hello))]),
        ("@a SUBMIT reverse 12 unique=u1 priority=low wait=10\r\nhello\r\nworld\r\n", [
            .success(GatewayRequest(tag: tag("a"), .submit(.init(
                function: fn("reverse"), payload: ByteBuffer(string: "hello\r\nworld"),
                unique: GatewayUniqueKey(rawValue: "u1"), priority: .low, waitMilliseconds: 10))))
        ]),
        ("submit empty 0\n\n", [.success(GatewayRequest(.submit(.init(function: fn("empty"), payload: ByteBuffer()))))]),
        ("@b watch \(id)\n", [.success(GatewayRequest(tag: tag("b"), .watch(.sample)))]),
        ("WAIT \(id) 100\r\n", [.success(GatewayRequest(.wait(.sample, timeoutMilliseconds: 100)))]),
        ("\r\n", []),
        ("PING\n", [.success(GatewayRequest(.ping))]),
        ("FROB x\n", [.failure(GatewayRequestError(code: .unknownCommand, message: "unknown command 'FROB'"))]),
        ("@c SUBMIT f 3 prio=high\nxyz\n", [
            .failure(GatewayRequestError(tag: tag("c"), code: .badFormat, message: "unknown option 'prio': SUBMIT takes unique=, priority= and wait="))
        ]),
        ("STATS\n", [.success(GatewayRequest(.stats))]),
    ]

    /// NIO's verifier: drip-fed, all at once, in shuffled orders.
    @Test func verifier() throws {
        let pairs = Self.mixedStream.map { (ByteBuffer(string: $0.0), $0.1) }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { GatewayRequestDecoder() }
    }

    /// The mixed stream fed one byte at a time.
    @Test func oneByteAtATime() throws {
        let stream = Array(Self.mixedStream.map(\.0).joined().utf8)
        var feed = DecoderFeed(GatewayRequestDecoder())
        for byte in stream { try feed.feed([byte]) }
        try feed.finish()
        #expect(feed.outputs == Self.mixedStream.flatMap(\.1))
    }

    /// The mixed stream fed in seeded random chunks.
    @Test(arguments: 1...8 as ClosedRange<UInt64>)
    func randomChunks(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let stream = Array(Self.mixedStream.map(\.0).joined().utf8)
        var feed = DecoderFeed(GatewayRequestDecoder())
        try feed.feed(stream, inChunksOf: randomSizes(maximum: 40, using: &rng))
        try feed.finish()
        #expect(feed.outputs == Self.mixedStream.flatMap(\.1))
    }

    /// 1,000 pipelined requests in one buffer all come out, in order.
    @Test func thousandPipelinedRequests() throws {
        var input = ""
        var expected: [Result<GatewayRequest, GatewayRequestError>] = []
        for index in 0..<1000 {
            let requestTag = tag("r\(index)")
            switch index % 4 {
            case 0:
                input += "@r\(index) PING\r\n"
                expected.append(.success(GatewayRequest(tag: requestTag, .ping)))
            case 1:
                let payload = "payload \(index)\n\0"
                input += "@r\(index) SUBMIT work \(payload.utf8.count) unique=k\(index)\r\n\(payload)\r\n"
                expected.append(.success(GatewayRequest(tag: requestTag, .submit(.init(
                    function: fn("work"), payload: ByteBuffer(string: payload), unique: GatewayUniqueKey(rawValue: "k\(index)"))))))
            case 2:
                input += "@r\(index) WAIT job\(index) \(index)\n"
                expected.append(.success(GatewayRequest(tag: requestTag, .wait(jobID("job\(index)"), timeoutMilliseconds: UInt64(index)))))
            default:
                input += "@r\(index) STATUS\n"
                expected.append(.failure(GatewayRequestError(tag: requestTag, code: .badFormat, message: "wrong number of arguments: STATUS <id>")))
            }
        }
        var feed = DecoderFeed(GatewayRequestDecoder())
        try feed.feed(input)
        try feed.finish()
        #expect(feed.outputs.count == 1000)
        #expect(feed.outputs == expected)
        #expect(feed.buffer.readableBytes == 0)
    }

    /// Through a channel: `ByteToMessageHandler` delivers the results in order.
    @Test func inAChannelPipeline() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(GatewayRequestDecoder()))
        try channel.writeInbound(ByteBuffer(string: "@x PING\nSUBMIT f 2\n"))
        try channel.writeInbound(ByteBuffer(string: "ok\nBOGUS\n"))
        #expect(try channel.readInbound(as: GatewayRequestDecoder.InboundOut.self) == .success(GatewayRequest(tag: tag("x"), .ping)))
        #expect(try channel.readInbound(as: GatewayRequestDecoder.InboundOut.self)?.request?.command == .submit(.init(function: fn("f"), payload: ByteBuffer(string: "ok"))))
        #expect(try channel.readInbound(as: GatewayRequestDecoder.InboundOut.self)?.error?.code == .unknownCommand)
        #expect(try channel.readInbound(as: GatewayRequestDecoder.InboundOut.self) == nil)
        #expect(try channel.finish().isClean)
    }

    /// A request line exactly at the limit is accepted (with or without CR); one byte more is not.
    @Test func lineLimitIsExact() throws {
        let decoder = GatewayRequestDecoder(maximumLineLength: 20)
        let line = "SUBSCRIBE " + String(repeating: "f", count: 10)  // 20 bytes
        #expect(try decodeRequests(line + "\n", decoder: decoder) == [.success(GatewayRequest(.subscribe(fn(String(repeating: "f", count: 10)))))])
        #expect(try decodeRequests(line + "\r\n", decoder: decoder).first?.request != nil)
        #expect(try decodeRequests(line + "g\n", decoder: decoder).first?.error?.code == .lineTooLong)
        #expect(try decodeRequests(line + "g\r\n", decoder: decoder).first?.error?.code == .lineTooLong)
    }

    /// The configured maximum payload itself is accepted.
    @Test func payloadLimitIsInclusive() throws {
        let decoder = GatewayRequestDecoder(maximumPayloadSize: 4)
        #expect(try decodeRequests("SUBMIT f 4\nabcd\n", decoder: decoder).first?.request != nil)
        #expect(try decodeRequests("SUBMIT f 5\nabcde\n", decoder: decoder).first?.error?.code == .payloadTooLarge)
    }
}
