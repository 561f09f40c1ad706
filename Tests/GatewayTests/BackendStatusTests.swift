@testable import Gateway
import GatewayProtocol
import InMemoryLogging
import JobStore
import Logging
import Testing

/// `BackendStatus` as a script of link changes: what `HEALTH` answers and what is logged after each.
@Suite struct BackendStatusTests {
    struct Lost: Error {}

    /// Down, then reconnected with notifications unchecked, then up: one outage, from the loss to up, logged
    /// once at warning and once at notice; not ready until notifications are confirmed.
    @Test func redisOutageSpansTheNotificationCheck() async throws {
        let logs = InMemoryLogHandler()
        let status = BackendStatus(redisServer: "r:1", gearmandServers: ["g:1", "g:2"], logger: Logger(label: "t") { _ in logs })
        #expect(status.health() == GatewayHealth(isReady: false, checks: [.init("redis", "down"), .init("gearmand", "0/2")]))

        status.redisChanged(.up, error: nil)
        status.gearmandChanged("g:2", isUp: true)
        #expect(status.health() == GatewayHealth(isReady: true, checks: [.init("redis", "up"), .init("gearmand", "1/2")]))
        #expect(logs.entries.map(\.level) == [.info, .info], "first connections are not recoveries")

        status.redisChanged(.down, error: Lost())
        status.redisChanged(.down, error: Lost())
        #expect(status.health().isReady == false)
        try await Task.sleep(for: .milliseconds(50))
        status.redisChanged(.notificationsUnconfirmed, error: nil)
        #expect(status.health() == GatewayHealth(isReady: false, checks: [.init("redis", "no-notifications"), .init("gearmand", "1/2")]))
        status.redisChanged(.up, error: nil)
        #expect(status.health().isReady)

        let redis = logs.entries.filter { $0.metadata["redis.server"] == "r:1" && $0.level > .info }
        #expect(redis.map(\.level) == [.warning, .notice])
        #expect(redis.map(\.message.description) == ["Redis unreachable", "Redis reachable again"])
        #expect((redis.last?.metadata["redis.outage_ms"].flatMap { Int("\($0)") } ?? 0) >= 50, "from the loss, not from the reconnect")
        #expect(status.servers().map(\.isUp) == [true, false, true])
    }

    /// A gearmand that was never reached is down from the start: one warning, then a notice once it is reached.
    @Test func gearmandNeverReachedThenUp() {
        let logs = InMemoryLogHandler()
        let status = BackendStatus(redisServer: "r:1", gearmandServers: ["g:1"], logger: Logger(label: "t") { _ in logs })
        status.gearmandChanged("g:1", isUp: false, error: Lost())
        status.gearmandChanged("g:1", isUp: false, error: Lost())
        status.gearmandChanged("g:1", isUp: true)
        status.gearmandChanged("unknown:9", isUp: true)
        #expect(logs.entries.map(\.message.description) == ["gearmand unreachable", "gearmand reachable again"])
        #expect(logs.entries.first?.metadata["gearman.server"] == "g:1")
        #expect(status.health()[check: "gearmand"] == "1/1")
    }
}
