import Gateway
import GatewayProtocol
import NIOCore
import Testing

/// PROTOCOL-v1 conformance of `jobgate serve` against real gearmand and redis-server.
@Suite("Gateway conformance", .timeLimit(.minutes(2)))
struct ConformanceTests {
    /// HELLO, PING, STATS and QUIT, with and without tags.
    @Test func basics() async throws {
        try await withGatewayStack { stack in
            let client = try await stack.connect()
            guard case .reply(.hello(let info), nil) = try await client.request("HELLO\n") else { Issue.record("no HELLO"); return }
            #expect(info.authenticationRequired == false && info.maximumPayloadSize == stack.configuration.maximumPayloadSize)
            #expect(try await client.request("ping\r\n") == .reply(.pong))
            #expect(try await client.request("@a-1.b_2 PING\n") == .reply(.pong, tag: GatewayTag(rawValue: "a-1.b_2")))
            guard case .reply(.stats(let stats), nil) = try await client.request("STATS\n") else { Issue.record("no STATS"); return }
            #expect(stats.contains { $0.name == "commands" })
            #expect(try await client.request("QUIT\n") == .reply(.bye))
            #expect(try await client.next() == nil, "the server closes after BYE")
        }
    }
}
