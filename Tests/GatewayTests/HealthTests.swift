import Gateway
import GatewayProtocol
import InMemoryLogging
import LocalServers
import NIOCore
import Logging
import Testing

/// `/healthz`, `/readyz`, `HEALTH` and the backend logs, against real servers that the tests stop and start again.
@Suite("Gateway health", .timeLimit(.minutes(2)))
struct HealthTests {
    /// Readiness follows Redis: ready, not ready once it is killed, ready again once it is back; the outage is
    /// logged once at warning and its end at notice with its length; `jobgate_backend_up` says the same.
    @Test func readinessFollowsRedis() async throws {
        let logs = InMemoryLogHandler()
        try await withGatewayStack({ $0.httpPort = 0 }, logger: Logger(label: "test.gateway") { _ in logs }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            let client = try await stack.connect()
            let redisServer = "\(stack.redis.host):\(stack.redis.port)"
            try await eventually("the gateway to be ready") { try await health(client)?.isReady == true }
            #expect(try await health(client) == GatewayHealth(isReady: true, checks: [.init("redis", "up"), .init("gearmand", "1/1")]))
            let live = try await httpRequest(port: http, "/healthz")
            #expect(live.status == 200)
            let ready = try await httpRequest(port: http, "/readyz")
            #expect(ready.status == 200)
            #expect(ready.body == "ready redis=up gearmand=1/1\n")
            #expect(try await backendUp(http, "redis", redisServer) == 1)

            stack.redis.kill()
            try await eventually("HEALTH to say Redis is down") { try await health(client)?[check: "redis"] == "down" }
            #expect(try await health(client)?.isReady == false)
            let notReady = try await httpRequest(port: http, "/readyz")
            #expect(notReady.status == 503)
            #expect(notReady.body == "not-ready redis=down gearmand=1/1\n")
            #expect(try await httpRequest(port: http, "/healthz").status == 200, "the process still serves")
            #expect(try await backendUp(http, "redis", redisServer) == 0)

            try await stack.redis.restart()
            try await eventually("the gateway to be ready again", timeout: .seconds(20)) { try await health(client)?.isReady == true }
            #expect(try await httpRequest(port: http, "/readyz").status == 200)
            #expect(try await backendUp(http, "redis", redisServer) == 1)

            let warnings = logs.entries.filter { $0.level == .warning && $0.metadata["redis.server"] == "\(redisServer)" }
            #expect(warnings.map(\.message.description) == ["Redis unreachable"], "one warning for one outage")
            let notices = logs.entries.filter { $0.level == .notice && $0.metadata["redis.server"] == "\(redisServer)" }
            #expect(notices.map(\.message.description) == ["Redis reachable again"])
            let outage = notices.first?.metadata["redis.outage_ms"].flatMap { Int("\($0)") }
            #expect((outage ?? 0) > 0, "the notice says how long Redis was gone")
        }
    }

    /// The same for gearmand: not ready with no gearmand up, ready again once one is back, logged with the outage.
    @Test func readinessFollowsGearmand() async throws {
        let logs = InMemoryLogHandler()
        try await withGatewayStack({ $0.httpPort = 0 }, logger: Logger(label: "test.gateway") { _ in logs }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            let client = try await stack.connect()
            let server = "\(stack.gearmanAddress)"
            try await eventually("the gateway to be ready") { try await health(client)?.isReady == true }

            stack.gearmand.kill()
            try await eventually("HEALTH to say gearmand is down") { try await health(client)?[check: "gearmand"] == "0/1" }
            #expect(try await health(client) == GatewayHealth(isReady: false, checks: [.init("redis", "up"), .init("gearmand", "0/1")]))
            let notReady = try await httpRequest(port: http, "/readyz")
            #expect(notReady.status == 503)
            #expect(notReady.body == "not-ready redis=up gearmand=0/1\n")
            #expect(try await backendUp(http, "gearmand", server) == 0)

            try await stack.gearmand.restart()
            try await eventually("the gateway to be ready again", timeout: .seconds(20)) { try await health(client)?.isReady == true }
            #expect(try await backendUp(http, "gearmand", server) == 1)

            let warnings = logs.entries.filter { $0.level == .warning && $0.metadata["gearman.server"] == "\(server)" }
            #expect(warnings.map(\.message.description) == ["gearmand unreachable"])
            let notices = logs.entries.filter { $0.level == .notice && $0.metadata["gearman.server"] == "\(server)" }
            #expect(notices.map(\.message.description) == ["gearmand reachable again"])
            #expect((notices.first?.metadata["gearman.outage_ms"].flatMap { Int("\($0)") } ?? 0) > 0)
        }
    }

    /// A load balancer's check cannot authenticate: `HEALTH`, like `PING`, is answered before `AUTH`.
    @Test func healthNeedsNoAuth() async throws {
        try await withGatewayStack({ $0.secrets = ["s3cret"] }) { stack in
            let client = try await stack.connect()
            guard case .reply(.error(let code, _), _) = try #require(try await client.request("STATS\n")) else {
                Issue.record("STATS answered before AUTH"); return
            }
            #expect(code == .noAuth)
            try await eventually("the gateway to be ready") { try await health(client)?.isReady == true }
        }
    }

    private func health(_ client: GatewayTestClient) async throws -> GatewayHealth? {
        guard case .reply(.health(let health), _) = try await client.request("HEALTH\n") else { return nil }
        return health
    }

    private func backendUp(_ port: Int, _ backend: String, _ server: String) async throws -> Double? {
        try PrometheusExposition(parsing: try await httpRequest(port: port, "/metrics").body)
            .value("jobgate_backend_up", ["backend": backend, "server": server])
    }
}
