import JobgateSupport
import LocalServers
import NIOCore
import Testing

@testable import Redis

/// Connections through a ``RedisPrimaryLocator`` against a real primary, two replicas and three sentinels.
@Suite(.serialized, .timeLimit(.minutes(3))) struct RedisSentinelFailoverTests {
    private static func withSentinels(_ body: @escaping @Sendable (LocalRedisSentinels, RedisPrimaryLocator) async throws -> Void) async throws {
        let cluster = try await LocalRedisSentinels.start()
        defer { cluster.stop() }
        let locator = RedisPrimaryLocator(
            configuration: .init(
                sentinels: cluster.sentinels.map { RedisAddress(host: $0.host, port: $0.port) },
                primaryName: LocalRedisSentinels.primaryName,
                connectTimeout: .milliseconds(500),
                commandTimeout: .seconds(1),
                pingInterval: .seconds(1)
            )
        )
        try await withTimeout(.seconds(90)) { try await body(cluster, locator) }
    }

    private static func configuration(_ locator: RedisPrimaryLocator) -> RedisConnectionConfiguration {
        RedisConnectionConfiguration(host: "127.0.0.1", port: 1, connectTimeout: .milliseconds(500), commandTimeout: .seconds(2), primaryLocator: locator)
    }

    /// Writes until one succeeds, as the job store's callers retry; returns how many failed first.
    private static func writeUntilTaken(_ pool: RedisConnectionPool, key: String, value: String) async throws -> Int {
        var failures = 0
        while true {
            do {
                try await pool.send(["SET", "\(key)", "\(value)"])
                return failures
            } catch let error as RedisError {
                failures += 1
                #expect([.connectionClosed, .connectionRefused, .timeout, .notPrimary, .connectionFailed].contains(error.code), "\(error)")
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    /// The primary is found through the sentinels; after kill -9 of it, the announcement moves the pool and the subscriber
    /// to the promoted replica, and the subscriber confirms its subscriptions there (so its consumer re-reads).
    @Test func followsAFailover() async throws {
        try await Self.withSentinels { cluster, locator in
            let configuration = Self.configuration(locator)
            let pool = RedisConnectionPool(configuration: configuration, size: 2, backoff: .init(initial: .milliseconds(20), maximum: .milliseconds(200)))
            let subscriber = RedisSubscriber(configuration: configuration, channels: ["news"], backoff: .init(initial: .milliseconds(20), maximum: .milliseconds(200)))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await locator.run() }
                group.addTask { try await subscriber.run() }
                var events = subscriber.events.makeAsyncIterator()
                #expect(await events.next() == .subscribed(isReconnect: false))

                try await pool.send(["SET", "before", "1"])
                let first = cluster.nodes[0]
                #expect(locator.knownPrimary == RedisAddress(host: first.host, port: first.port))
                // Held by a replica before the primary dies (WAIT), as jobgate's acknowledged writes are.
                _ = try await pool.pipeline([["SET", "acknowledged", "1"]], acknowledgedBy: RedisReplicasAck(replicas: 1))

                first.kill()
                try await cluster.waitForFailover(from: first)
                // The subscriber subscribes again on the new primary, which a publish there reaches.
                #expect(await events.next() == .subscribed(isReconnect: true))
                let promoted = try #require(cluster.primary())  // the one now, should a slow failover have been retried
                #expect(locator.knownPrimary == RedisAddress(host: promoted.host, port: promoted.port))
                _ = try await Self.writeUntilTaken(pool, key: "after", value: "2")
                let direct = try await RedisConnection.connect(to: promoted)
                #expect(try await direct.send(["GET", "after"]).string == "2")
                #expect(try await direct.send(["GET", "acknowledged"]).string == "1", "an acknowledged write survives the failover")
                try await direct.send(["PUBLISH", "news", "from the new primary"])
                #expect(await events.next() == .message(RedisPubSubMessage(channel: "news", payload: ByteBuffer(string: "from the new primary"))))
                await direct.close()
                group.cancelAll()
            }
            await pool.close()
        }
    }

    /// Without the announcements (no `run()`), a connection still never writes to a demoted primary: its write is refused
    /// (`READONLY`, or `ROLE` on reconnecting), the sentinels are asked again, and the next write reaches the new primary.
    @Test func neverWritesToAReplica() async throws {
        try await Self.withSentinels { cluster, locator in
            let pool = RedisConnectionPool(configuration: Self.configuration(locator), size: 1, backoff: .init(initial: .milliseconds(20), maximum: .milliseconds(200)))
            let first = cluster.nodes[0]
            try await pool.send(["SET", "k", "on the first primary"])
            // A failover the pool hears nothing about; the former primary stays up, as a replica.
            _ = try LocalRedisSentinels.command(port: cluster.sentinels[0].port, "SENTINEL failover \(LocalRedisSentinels.primaryName)")
            try await cluster.waitForFailover(from: first)
            try await eventually("the former primary to be a replica", timeout: .seconds(20)) {
                (try? LocalRedisSentinels.command(port: first.port, "ROLE"))?.first == "slave"
            }
            let failures = try await Self.writeUntilTaken(pool, key: "k", value: "on the new primary")
            #expect(failures >= 1, "the first write after the switch is refused, not sent to the replica")
            let promoted = try #require(cluster.primary())
            #expect(locator.knownPrimary == RedisAddress(host: promoted.host, port: promoted.port))
            let direct = try await RedisConnection.connect(to: promoted)
            #expect(try await direct.send(["GET", "k"]).string == "on the new primary")
            await direct.close()
            await pool.close()
        }
    }

    /// A write on a connection to a server that became a replica answers `READONLY`: the connection throws `.notPrimary`,
    /// closes, and the locator forgets the server.
    @Test func readOnlyReplyClosesTheConnection() async throws {
        try await Self.withSentinels { cluster, locator in
            let connection = try await RedisConnection.connect(configuration: Self.configuration(locator))
            let first = cluster.nodes[0]
            #expect(connection.configuration.port == first.port)
            // Demoted behind the sentinels' back (they would undo it later; the test is over by then).
            _ = try LocalRedisSentinels.command(port: first.port, "REPLICAOF \(cluster.nodes[1].host) \(cluster.nodes[1].port)")
            let error = await #expect(throws: RedisError.self) { try await connection.send(["SET", "k", "v"]) }
            #expect(error?.code == .notPrimary, "\(String(describing: error))")
            try await eventually("the connection to close") { !connection.isConnected }
            _ = try LocalRedisSentinels.command(port: first.port, "REPLICAOF NO ONE")
        }
    }
}
