import GatewayProtocol
import NIOCore
import NIOEmbedded
import Testing

@Suite struct GatewayResponseEncoderTests {
    static let id = "3kq9w0c6r2z8m1v4x7b5n0t2ye"

    /// Every reply and event shape of the spec, and its exact bytes.
    static let shapes: [(GatewayResponse, String)] = [
        (.reply(.hello(GatewayServerInfo(version: "1.0.0", authenticationRequired: false, maximumPayloadSize: 16_777_216))),
         "HELLO jobgate 1.0.0 proto=1 auth=none max-payload=16777216\r\n"),
        (.reply(.hello(GatewayServerInfo(version: "2.1", authenticationRequired: true, maximumPayloadSize: 1024))),
         "HELLO jobgate 2.1 proto=1 auth=required max-payload=1024\r\n"),
        (.reply(.ok), "OK\r\n"),
        (.reply(.created(.sample)), "CREATED \(id)\r\n"),
        (.reply(.exists(.sample)), "EXISTS \(id)\r\n"),
        (.reply(.status(.sample, GatewayJobStatus(.queued))), "STATUS \(id) queued 0 0\r\n"),
        (.reply(.status(.sample, GatewayJobStatus(.running, numerator: 3, denominator: 10))), "STATUS \(id) running 3 10\r\n"),
        (.reply(.status(.sample, GatewayJobStatus(.done, numerator: 10, denominator: 10))), "STATUS \(id) done 10 10\r\n"),
        (.reply(.status(.sample, GatewayJobStatus(.failed, numerator: 1, denominator: 2))), "STATUS \(id) failed 1 2\r\n"),
        (.reply(.status(.sample, GatewayJobStatus(.expired))), "STATUS \(id) expired 0 0\r\n"),
        (.reply(.done(.sample, result: ByteBuffer(string: "dlrow olleh"))), "DONE \(id) 11\r\ndlrow olleh\r\n"),
        (.reply(.failed(.sample, reason: ByteBuffer(string: "no such file"))), "FAILED \(id) 12\r\nno such file\r\n"),
        (.reply(.failed(.sample, reason: ByteBuffer())), "FAILED \(id) 0\r\n\r\n"),
        (.reply(.pending(.sample, GatewayJobStatus(.running, numerator: 1, denominator: 4))), "PENDING \(id) running 1 4\r\n"),
        (.reply(.expired(.sample)), "EXPIRED \(id)\r\n"),
        (.reply(.timeout(.sample, GatewayJobStatus(.queued))), "TIMEOUT \(id) queued 0 0\r\n"),
        (.reply(.watching(.sample, GatewayJobStatus(.running, numerator: 1, denominator: 2))), "WATCHING \(id) running 1 2\r\n"),
        (.reply(.unwatched(.sample)), "UNWATCHED \(id)\r\n"),
        (.reply(.subscribed(fn("reverse"))), "SUBSCRIBED reverse\r\n"),
        (.reply(.unsubscribed(fn("reverse"))), "UNSUBSCRIBED reverse\r\n"),
        (.reply(.pong), "PONG\r\n"),
        (.reply(.stats([GatewayStatistic("connections", "3"), GatewayStatistic("jobs_submitted", "42")])),
         "STATS 32\r\nconnections 3\njobs_submitted 42\n\r\n"),
        (.reply(.stats([])), "STATS 0\r\n\r\n"),
        (.reply(.health(GatewayHealth(isReady: true, checks: [.init("redis", "up"), .init("gearmand", "2/2")]))),
         "HEALTH ready redis=up gearmand=2/2\r\n"),
        (.reply(.health(GatewayHealth(isReady: false, checks: [.init("redis", "down"), .init("gearmand", "0/1")]))),
         "HEALTH not-ready redis=down gearmand=0/1\r\n"),
        (.reply(.health(GatewayHealth(isReady: false, checks: []))), "HEALTH not-ready\r\n"),
        (.reply(.bye), "BYE\r\n"),
        (.reply(.error(code: .badFormat, message: "wrong number of arguments")), "ERR BAD_FORMAT wrong number of arguments\r\n"),
        (.reply(.error(code: .unknownCommand, message: "unknown command 'FROB'")), "ERR UNKNOWN_COMMAND unknown command 'FROB'\r\n"),
        (.reply(.error(code: .lineTooLong, message: "x")), "ERR LINE_TOO_LONG x\r\n"),
        (.reply(.error(code: .payloadTooLarge, message: "x")), "ERR PAYLOAD_TOO_LARGE x\r\n"),
        (.reply(.error(code: .noAuth, message: "AUTH first")), "ERR NOAUTH AUTH first\r\n"),
        (.reply(.error(code: .denied, message: "wrong secret")), "ERR DENIED wrong secret\r\n"),
        (.reply(.error(code: .notFound, message: "no such job")), "ERR NOT_FOUND no such job\r\n"),
        (.reply(.error(code: .tooManyWatches, message: "x")), "ERR TOO_MANY_WATCHES x\r\n"),
        (.reply(.error(code: .busy, message: "x")), "ERR BUSY x\r\n"),
        (.reply(.error(code: .backendDown, message: "gearmand unreachable")), "ERR BACKEND_DOWN gearmand unreachable\r\n"),
        (.reply(.error(code: .internal, message: "x")), "ERR INTERNAL x\r\n"),
        (.reply(.error(code: GatewayErrorCode(rawValue: "RATE_LIMITED_2")!, message: "slow down")), "ERR RATE_LIMITED_2 slow down\r\n"),
        (.reply(.error(code: .busy, message: "")), "ERR BUSY\r\n"),
        (.event(.progress(.sample, numerator: 2, denominator: 2, message: ByteBuffer())), "EVENT \(id) PROGRESS 2 2 0\r\n\r\n"),
        (.event(.progress(.sample, numerator: 1, denominator: 3, message: ByteBuffer(string: "resizing"))), "EVENT \(id) PROGRESS 1 3 8\r\nresizing\r\n"),
        (.event(.done(.sample, result: ByteBuffer(string: "dlrow olleh"))), "EVENT \(id) DONE 11\r\ndlrow olleh\r\n"),
        (.event(.failed(.sample, reason: ByteBuffer(string: "boom"))), "EVENT \(id) FAILED 4\r\nboom\r\n"),
        (.event(.expired(.sample)), "EVENT \(id) EXPIRED\r\n"),
        // A subscription's events from= carry their completion log cursor after the byte count (extension).
        (.event(.logged(.done(.sample, result: ByteBuffer(string: "ok")), cursor: GatewayLogCursor(milliseconds: 1_733_241_600_000, sequence: 3))),
         "EVENT \(id) DONE 2 cursor=1733241600000-3\r\nok\r\n"),
        (.event(.logged(.failed(.sample, reason: ByteBuffer()), cursor: GatewayLogCursor(milliseconds: 7, sequence: 0))),
         "EVENT \(id) FAILED 0 cursor=7-0\r\n\r\n"),
        (.event(.logged(.expired(.sample), cursor: GatewayLogCursor(milliseconds: 8, sequence: 1))), "EVENT \(id) EXPIRED cursor=8-1\r\n"),
    ]

    /// Each shape renders to the exact bytes of the spec.
    @Test(arguments: shapes.indices)
    func rendersExactBytes(index: Int) {
        let (response, wire) = Self.shapes[index]
        #expect(encode(response) == wire)
    }

    /// A tag is written as `@tag ` before replies and events alike.
    @Test(arguments: shapes.indices)
    func rendersTag(index: Int) {
        let (response, wire) = Self.shapes[index]
        let tagged: GatewayResponse =
            switch response {
            case .reply(let reply, _): .reply(reply, tag: tag("w-1.x"))
            case .event(let event, _): .event(event, tag: tag("w-1.x"))
            }
        #expect(encode(tagged) == "@w-1.x " + wire)
        #expect(tagged.tag == tag("w-1.x"))
    }

    /// The server's side of the nc session in PROTOCOL-v1.md, byte for byte (with CRLF line ends).
    @Test func ncSession() {
        var out = ByteBuffer()
        GatewayResponseEncoder.write(.reply(.created(.sample)), into: &out)
        GatewayResponseEncoder.write(.reply(.watching(.sample, GatewayJobStatus(.running, numerator: 1, denominator: 2))), into: &out)
        GatewayResponseEncoder.write(.event(.progress(.sample, numerator: 2, denominator: 2, message: ByteBuffer())), into: &out)
        GatewayResponseEncoder.write(.event(.done(.sample, result: ByteBuffer(string: "dlrow olleh"))), into: &out)
        let transcript = """
            CREATED 3kq9w0c6r2z8m1v4x7b5n0t2ye
            WATCHING 3kq9w0c6r2z8m1v4x7b5n0t2ye running 1 2
            EVENT 3kq9w0c6r2z8m1v4x7b5n0t2ye PROGRESS 2 2 0

            EVENT 3kq9w0c6r2z8m1v4x7b5n0t2ye DONE 11
            dlrow olleh

            """
        #expect(String(buffer: out) == transcript.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\r\n"))
    }

    /// Binary blocks go out untouched, NUL, CR and LF included.
    @Test func binaryBlocks() {
        let bytes: [UInt8] = [0, 13, 10, 0xFF, 13, 0]
        var out = ByteBuffer()
        GatewayResponseEncoder.write(.reply(.done(.sample, result: ByteBuffer(bytes: bytes))), into: &out)
        #expect(out.bytes == Array("DONE \(Self.id) 6\r\n".utf8) + bytes + [13, 10])
    }

    /// Human text stays on one line: CR, LF and other control characters in an error become spaces.
    @Test func errorTextIsSanitised() {
        #expect(encode(.reply(.error(code: .internal, message: "line one\r\nline two\0\tend\u{2028}x"))) == "ERR INTERNAL line one  line two  end x\r\n")
    }

    /// The version and statistics cannot break their lines either.
    @Test func freeTextFieldsAreSanitised() {
        let hello = encode(.reply(.hello(GatewayServerInfo(version: "1.0 beta\r\nBYE", authenticationRequired: false, maximumPayloadSize: -5))))
        #expect(hello == "HELLO jobgate 1.0_beta__BYE proto=1 auth=none max-payload=0\r\n")
        let stats = encode(.reply(.stats([GatewayStatistic("a b\n", "x\ny")])))
        #expect(stats == "STATS 9\r\na_b_ x y\n\r\n")
        #expect(encode(.reply(.hello(GatewayServerInfo(version: "", authenticationRequired: false, maximumPayloadSize: 1)))) == "HELLO jobgate _ proto=1 auth=none max-payload=1\r\n")
    }

    /// As a `MessageToByteEncoder` in a channel.
    @Test func inAChannelPipeline() throws {
        let channel = EmbeddedChannel(handler: MessageToByteHandler(GatewayResponseEncoder()))
        try channel.writeOutbound(GatewayResponse.reply(.pong, tag: .t1))
        try channel.writeOutbound(GatewayResponse.event(.expired(.sample)))
        #expect(try channel.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) } == "@t1 PONG\r\n")
        #expect(try channel.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) } == "EVENT \(Self.id) EXPIRED\r\n")
        #expect(try channel.finish().isClean)
    }

    /// A request's `reply` and `event` helpers carry its tag.
    @Test func requestHelpersCarryTheTag() {
        let request = GatewayRequest(tag: .t1, .watch(.sample))
        #expect(request.reply(.unwatched(.sample)) == .reply(.unwatched(.sample), tag: .t1))
        #expect(request.event(.expired(.sample)) == .event(.expired(.sample), tag: .t1))
        #expect(GatewayRequest(.ping).reply(.pong) == .reply(.pong))
    }
}
