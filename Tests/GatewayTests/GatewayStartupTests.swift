import Gateway
import Gearman
import LocalServers
import Logging
import Redis
import Synchronization
import Testing

/// Starting up: what the gateway waits for before it listens, and what happens when it never comes.
@Suite("Gateway startup", .timeLimit(.minutes(1)))
struct GatewayStartupTests {
    /// Redis refuses the change feed's subscription (an ACL user without channels): the gateway stops with that
    /// error, and whoever waits for it to listen hears it too, instead of both waiting for ever.
    @Test func refusedSubscriptionStopsTheGateway() async throws {
        try await withLocalServer(.gearmand) { gearmand in
            let user = ["--user", "gateway", "on", ">secret", "~*", "resetchannels", "+@all"]
            try await withLocalServer(.redis, arguments: user) { redis in
                var configuration = GatewayConfiguration()
                configuration.port = 0
                configuration.gearmanServers = [GearmanServerAddress(host: gearmand.host, port: gearmand.port)]
                configuration.redis = RedisConnectionConfiguration(host: redis.host, port: redis.port, commandTimeout: .seconds(5))
                configuration.redis.authentication = .init(username: "gateway", password: "secret")
                let gateway = GatewayServer(configuration: configuration, logger: Logger(label: "test.gateway"))
                let outcome = Mutex<(any Error)??>(nil)
                let running = Task {
                    do {
                        try await gateway.run()
                        outcome.withLock { $0 = .some(nil) }
                    } catch {
                        outcome.withLock { $0 = .some(error) }
                    }
                }
                defer { running.cancel() }
                try await eventually("the gateway to stop", timeout: .seconds(20)) { outcome.withLock { $0 != nil } }
                let error = try #require(outcome.withLock { $0 } ?? nil, "run() returned without an error")
                #expect((error as? RedisError)?.code == .serverError, "\(error)")
                let listening = await #expect(throws: RedisError.self) { try await gateway.waitUntilListening() }
                #expect(listening?.code == .serverError)
            }
        }
    }
}
