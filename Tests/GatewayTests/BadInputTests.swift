import Gateway
import GatewayProtocol
import LocalServers
import NIOCore
import Testing

/// Malformed and hostile input: each case gets its documented `ERR` code, the connection stays usable where the
/// protocol says so, and the gateway never crashes or hangs.
@Suite("Gateway bad input", .timeLimit(.minutes(2)))
struct BadInputTests {
    /// A line over the limit: `LINE_TOO_LONG` with the request's tag; the connection goes on.
    @Test func overlongLine() async throws {
        try await withGatewayStack { stack in
            let client = try await stack.connect()
            try await client.send("@long PING " + String(repeating: "x", count: 9_000) + "\n")
            try await client.expectError(.lineTooLong, tag: GatewayTag(rawValue: "long"))
            // Far over the limit and in pieces: still discarded as it streams in.
            for _ in 0..<8 { try await client.send(String(repeating: "y", count: 16_384)) }
            try await client.send("\n")
            try await client.expectError(.lineTooLong)
            try await client.expectUsable()
        }
    }

    /// A byte count that is negative or not a number cannot announce a block: `BAD_FORMAT`, nothing submitted.
    @Test func badByteCount() async throws {
        try await withGatewayStack { stack in
            let client = try await stack.connect()
            for count in ["-5", "abc", "0x10", "1.5", "+3", "99999999999999999999999"] {
                try await client.send("@b SUBMIT reverse \(count)\n")
                try await client.expectError(.badFormat, tag: GatewayTag(rawValue: "b"))
                try await client.expectUsable()
            }
            #expect(try await stack.statistic("jobs_submitted") == 0)
        }
    }

    /// A count over the limit: `PAYLOAD_TOO_LARGE`, and the block is consumed unread, even when it looks like
    /// requests (were it read as lines, untagged PONGs would come first).
    @Test func payloadOverTheLimit() async throws {
        try await withGatewayStack({ $0.maximumPayloadSize = 1_024 }) { stack in
            let client = try await stack.connect()
            let block = String(repeating: "PING\n", count: 1_000)
            try await client.send("@big SUBMIT reverse \(block.utf8.count)\n\(block)\n@after PING\n")
            try await client.expectError(.payloadTooLarge, tag: GatewayTag(rawValue: "big"))
            #expect(try await client.next() == .reply(.pong, tag: GatewayTag(rawValue: "after")))
            try await client.expectUsable()
            #expect(try await stack.statistic("jobs_submitted") == 0)
        }
    }

    /// The requests before a truncated one are still answered before the connection closes.
    @Test func repliesBeforeATruncatedRequest() async throws {
        try await withGatewayStack { stack in
            let raw = try await RawGatewayConnection.connect(port: stack.port)
            try await raw.send("@a PING\n@b PING\nSUBMIT reverse 100\n0123")
            try await raw.finishSending()
            try await raw.waitUntilClosed()
            #expect(try raw.responses() == [.reply(.pong, tag: GatewayTag(rawValue: "a")), .reply(.pong, tag: GatewayTag(rawValue: "b"))])
        }
    }

    /// A block shorter than declared, then the client closes: nothing is executed, the server stays up.
    @Test func truncatedBlockThenClose() async throws {
        try await withGatewayStack { stack in
            let raw = try await RawGatewayConnection.connect(port: stack.port)
            try await raw.send("SUBMIT reverse 100\n0123456789")
            try await raw.finishSending()
            try await raw.waitUntilClosed()
            #expect(try raw.responses().isEmpty, "a request that never arrived whole gets no reply")
            #expect(try await stack.statistic("jobs_submitted") == 0)

            // The counter does count: a whole SUBMIT on a new connection is executed.
            let client = try await stack.connect()
            _ = try await client.submit("reverse", "0123456789")
            #expect(try await stack.statistic("jobs_submitted") == 1)
        }
    }

    /// An unknown verb: `UNKNOWN_COMMAND`, tagged when the request was.
    @Test func unknownCommand() async throws {
        try await withGatewayStack { stack in
            let client = try await stack.connect()
            try await client.send("FROBNICATE a b\n")
            try await client.expectError(.unknownCommand)
            try await client.send("@t1 frob\n")
            try await client.expectError(.unknownCommand, tag: GatewayTag(rawValue: "t1"))
            try await client.expectUsable()
        }
    }

    /// Seeded junk, part random bytes and part protocol fragments, on many connections: every connection gets
    /// well-formed replies (errors among them) and ends when its input does; the server stays up and a new
    /// connection is served.
    @Test(arguments: [UInt64(1), 2, 3])
    func randomJunk(seed: UInt64) async throws {
        try await withGatewayStack({ $0.maximumWaitTimeout = .seconds(1) }) { stack in
            var generator = SplitMix64(seed: seed)
            var errors = 0
            for _ in 0..<8 {
                let junk = Self.junk(bytes: 3_000, using: &generator)
                let raw = try await RawGatewayConnection.connect(port: stack.port)
                try await raw.send(bytes: junk)
                try await raw.finishSending()
                try await raw.waitUntilClosed(timeout: .seconds(20))
                for response in try raw.responses() {
                    if case .reply(.error(let code, _), _) = response {
                        #expect(code != .internal)
                        errors += 1
                    }
                }
            }
            #expect(errors > 0, "junk is answered with errors")
            let client = try await stack.connect()
            guard case .reply(.hello, nil) = try await client.request("HELLO\n") else {
                Issue.record("HELLO not answered after junk")
                return
            }
            try await client.expectUsable()
            #expect(try await stack.statistic("protocol_errors") > 0)
        }
    }

    static let fragments = [
        "SUBMIT ", "WATCH ", "WAIT ", "STATUS ", "RESULT ", "UNWATCH ", "SUBSCRIBE ", "UNSUBSCRIBE ", "AUTH ", "HELLO",
        "PING", "STATS", "@", "@tag ", " ", "  ", "\r", "\n", "\r\n", "-1", "0", "7", "18446744073709551616", "fn ",
        "unique=", "priority=high", "wait=500", "=", "\u{0}", "\u{7F}", "é", "3kq9w0c6r2z8m1v4x7b5n0t2ye",
    ].map { Array($0.utf8) }

    static func junk(bytes count: Int, using generator: inout SplitMix64) -> [UInt8] {
        var bytes: [UInt8] = []
        while bytes.count < count {
            switch generator.next() % 8 {
            case 0..<3:
                bytes += (0..<Int.random(in: 1...40, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            case 3:
                bytes.append(.init(ascii: "\n"))
            default:
                bytes += fragments.randomElement(using: &generator)!
            }
        }
        return bytes
    }

    /// A client that sends one byte a second never completes a request: it is closed with `IDLE_TIMEOUT`, while a
    /// normal client on another connection is served throughout.
    @Test func slowloris() async throws {
        try await withGatewayStack({ $0.idleTimeout = .seconds(2) }) { stack in
            let slow = try await stack.connect()
            let normal = try await stack.connect()
            let trickle = Task {
                for _ in 0..<60 {
                    try await slow.send("P")  // never a line break
                    try await Task.sleep(for: .seconds(1))
                }
            }
            defer { trickle.cancel() }
            let slowEnded = Flag()
            async let slowOutcome: (GatewayResponse?, GatewayResponse?) = {
                defer { slowEnded.raise() }
                let first = try await slow.next(timeout: .seconds(20))
                return (first, try await slow.next(timeout: .seconds(5)))
            }()
            var pings = 0
            let deadline = ContinuousClock.now + .seconds(25)
            while !slowEnded.isRaised && ContinuousClock.now < deadline {
                #expect(try await normal.request("PING\n") == .reply(.pong))
                pings += 1
                try await Task.sleep(for: .milliseconds(200))
            }
            let (first, second) = try await slowOutcome
            guard case .reply(.error(.idleTimeout, _), nil) = first else {
                Issue.record("the trickling client got \(String(describing: first)) instead of ERR IDLE_TIMEOUT")
                return
            }
            #expect(second == nil, "the server closes the trickling connection")
            #expect(pings > 0)
            try await normal.expectUsable()
        }
    }
}
