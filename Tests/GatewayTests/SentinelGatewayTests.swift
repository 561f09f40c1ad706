import Gateway
import GatewayProtocol
import LocalServers
import NIOCore
import Redis
import Testing

/// A gateway following a Redis failover through Sentinel (`--redis-sentinel`).
@Suite("Gateway on Redis Sentinel", .timeLimit(.minutes(2)))
struct SentinelGatewayTests {
    /// After a failover the change feed subscribes on the new primary and switches keyspace notifications on there
    /// (its nodes start without them here): an outcome written there afterwards reaches a `WATCH` by notification
    /// (the backstop sweep is out of reach).
    @Test func notificationsAreSwitchedOnAtTheNewPrimary() async throws {
        let cluster = try await LocalRedisSentinels.start(keyspaceNotifications: false)
        defer { cluster.stop() }
        try await withGatewayStack({
            $0.redisSentinel = RedisSentinelConfiguration(
                sentinels: cluster.sentinels.map { RedisAddress(host: $0.host, port: $0.port) },
                primaryName: LocalRedisSentinels.primaryName,
                connectTimeout: .milliseconds(500),
                commandTimeout: .seconds(1),
                pingInterval: .seconds(1)
            )
            $0.redisReplicasAck = RedisReplicasAck(replicas: 1)
            $0.sweepInterval = .seconds(600)
        }) { stack in
            let client = try await stack.connect()
            // No worker serves `held`: the job stays queued until the test writes its outcome.
            let id = try #require(try await client.request(submitLine("held", "x"))?.createdID)
            #expect(try await client.request("WATCH \(id)\n")?.isWatching(id) == true)
            let first = try #require(cluster.primary())
            first.kill()
            try await cluster.waitForFailover(from: first)
            // The primary now: on a slow machine the sentinels may give up a failover and promote the other replica.
            var promoted = first
            try await eventually("the gateway to switch notifications on at the new primary", timeout: .seconds(20)) {
                guard let primary = cluster.primary(), primary !== first else { return false }
                promoted = primary
                let flags = (try? LocalRedisSentinels.command(port: primary.port, "CONFIG GET notify-keyspace-events"))?.last ?? ""
                return flags.contains("E") && flags.contains("h") && flags.contains("x")
            }
            try await Task.sleep(for: .milliseconds(500))  // the feed's re-read after switching them on is over
            // The outcome, written as a worker writes it, on the new primary.
            let key = "\(stack.configuration.keyPrefix)job:\(id)"
            _ = try LocalRedisSentinels.command(port: promoted.port, "HSET \(key) result after-the-failover finished 1 updated 1 state done")
            #expect(try await client.next(timeout: .seconds(5)) == .event(.done(id, result: ByteBuffer(string: "after-the-failover"))))
            await client.close()
        }
    }
}
