import Gateway
import GatewayProtocol
import LocalServers
import Redis
import Testing

/// `--redis-replicas-ack` on the gateway: no `CREATED` for a record no replica holds.
@Suite("Gateway with --redis-replicas-ack", .timeLimit(.minutes(2)))
struct ReplicasAckGatewayTests {
    /// Against a Redis without replicas, `SUBMIT` answers `ERR BACKEND_DOWN` (after the `WAIT` timeout), never `CREATED`.
    @Test func noCreatedWithoutAReplica() async throws {
        try await withGatewayStack({ $0.redisReplicasAck = RedisReplicasAck(replicas: 1, timeout: .milliseconds(300)) }) { stack in
            let client = try await stack.connect()
            let reply = try #require(try await client.request(submitLine("echo", "unacknowledged")))
            guard case .reply(.error(let code, let message), _) = reply else {
                Issue.record("expected ERR BACKEND_DOWN, got \(reply)"); return
            }
            #expect(code == .backendDown, "\(message)")
            await client.close()
        }
    }
}
