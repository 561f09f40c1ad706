import GatewayProtocol
import NIOCore
import Testing

@Suite struct GatewayRequestEncoderTests {
    static let requests: [GatewayRequest] = GatewayRequestDecoderTests.commands.map { GatewayRequest($0.1) }
        + GatewayRequestDecoderTests.commands.map { GatewayRequest(tag: .t1, $0.1) }
        + [
            GatewayRequest(.submit(.init(function: fn("reverse"), payload: ByteBuffer(string: "hello world")))),
            GatewayRequest(tag: tag("s"), .submit(.init(
                function: fn("resize"), payload: ByteBuffer(bytes: [0, 13, 10, 0xFF]),
                unique: GatewayUniqueKey(rawValue: String(repeating: "u", count: 63)), priority: .low, waitMilliseconds: 0))),
            GatewayRequest(.submit(.init(function: fn("f"), payload: ByteBuffer(), priority: .high, waitMilliseconds: 30_000))),
        ]

    /// Every request written by the client encoder parses back to itself.
    @Test func roundTrip() throws {
        var wire = ByteBuffer()
        for request in Self.requests { try GatewayRequestEncoder.write(request, into: &wire) }
        var feed = DecoderFeed(GatewayRequestDecoder())
        try feed.feed(wire.bytes)
        try feed.finish()
        #expect(feed.outputs == Self.requests.map { .success($0) })
    }

    /// The exact bytes of a SUBMIT with options.
    @Test func submitBytes() throws {
        var wire = ByteBuffer()
        let submission = GatewaySubmission(
            function: fn("reverse"), payload: ByteBuffer(string: "abc"), unique: GatewayUniqueKey(rawValue: "k"), priority: .high, waitMilliseconds: 500)
        try GatewayRequestEncoder.write(GatewayRequest(tag: .t1, .submit(submission)), into: &wire)
        #expect(String(buffer: wire) == "@t1 SUBMIT reverse 3 unique=k priority=high wait=500\r\nabc\r\n")
    }

    /// `AUTH <name> <secret>` (a named credential) as one line.
    @Test func namedAuth() throws {
        var wire = ByteBuffer()
        try GatewayRequestEncoder.write(GatewayRequest(tag: .t1, .auth(name: "resizer", secret: "pw")), into: &wire)
        #expect(String(buffer: wire) == "@t1 AUTH resizer pw\r\n")
        #expect(throws: GatewayProtocolError.self) { try GatewayRequestEncoder.write(GatewayRequest(.auth(name: "two words", secret: "pw")), into: &wire) }
    }

    /// A secret that would split the line is refused and nothing is written.
    @Test(arguments: ["", "two words", "line\nbreak", "nul\0"])
    func badSecret(secret: String) {
        var wire = ByteBuffer()
        #expect {
            try GatewayRequestEncoder.write(GatewayRequest(.auth(secret: secret)), into: &wire)
        } throws: { error in
            (error as? GatewayProtocolError)?.code == .invalidArgument
        }
        #expect(wire.readableBytes == 0)
    }
}

@Suite struct GatewayIdentifierTests {
    /// Tags: 1-32 of A-Z a-z 0-9 _ . -
    @Test func tags() {
        #expect(GatewayTag(rawValue: "aZ9_.-") != nil)
        #expect(GatewayTag(rawValue: String(repeating: "a", count: 32)) != nil)
        for bad in ["", String(repeating: "a", count: 33), "a b", "a@b", "ä", "a/b", "a~b"] {
            #expect(GatewayTag(rawValue: bad) == nil, "\(bad)")
        }
        #expect(GatewayTag.t1.description == "@t1")
    }

    /// Job ids: 1-128 URL-safe bytes.
    @Test func jobIDs() {
        #expect(GatewayJobID(rawValue: "Ab0-_.~") != nil)
        #expect(GatewayJobID(rawValue: String(repeating: "a", count: 128)) != nil)
        for bad in ["", String(repeating: "a", count: 129), "a b", "a/b", "a?b", "a=b", "é", "a\nb"] {
            #expect(GatewayJobID(rawValue: bad) == nil, "\(bad)")
        }
    }

    /// Function names and unique keys: UTF-8 words, 255 and 63 bytes at most.
    @Test func functionNamesAndUniqueKeys() {
        #expect(GatewayFunctionName(rawValue: String(repeating: "ü", count: 127)) != nil)  // 254 bytes
        #expect(GatewayFunctionName(rawValue: String(repeating: "ü", count: 128)) == nil)  // 256 bytes
        #expect(GatewayUniqueKey(rawValue: String(repeating: "k", count: 63)) != nil)
        #expect(GatewayUniqueKey(rawValue: String(repeating: "k", count: 64)) == nil)
        for bad in ["", "a b", "a\tb", "a\rb", "a\u{7F}", "a\u{85}b", "a\u{2003}b"] {
            #expect(GatewayFunctionName(rawValue: bad) == nil, "\(bad)")
            #expect(GatewayUniqueKey(rawValue: bad) == nil, "\(bad)")
        }
    }

    /// Error codes: the spec's, and any other of A-Z 0-9 _.
    @Test func errorCodes() {
        let spec: [GatewayErrorCode] = [.badFormat, .unknownCommand, .lineTooLong, .payloadTooLarge, .noAuth, .denied, .notFound, .tooManyWatches, .busy, .backendDown, .internal]
        #expect(spec.map(\.rawValue) == ["BAD_FORMAT", "UNKNOWN_COMMAND", "LINE_TOO_LONG", "PAYLOAD_TOO_LARGE", "NOAUTH", "DENIED", "NOT_FOUND", "TOO_MANY_WATCHES", "BUSY", "BACKEND_DOWN", "INTERNAL"])
        #expect(GatewayErrorCode(rawValue: "BAD_FORMAT") == .badFormat)
        #expect(GatewayErrorCode(rawValue: "NEW_CODE_2") != nil)
        for bad in ["", "lower", "WITH SPACE", "DASH-ED", String(repeating: "A", count: 33)] {
            #expect(GatewayErrorCode(rawValue: bad) == nil, "\(bad)")
        }
    }
}
