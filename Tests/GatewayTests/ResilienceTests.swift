import Gateway
import GatewayProtocol
import Gearman
import JobStore
import LocalServers
import Logging
import NIOCore
import Redis
import ServiceLifecycle
import Testing

/// Jobs that get lost, gateways that restart or shut down.
@Suite("Gateway resilience", .timeLimit(.minutes(2)))
struct ResilienceTests {
    /// A watched job that gearmand no longer knows, with no outcome within the grace period, ends FAILED as lost;
    /// a WAIT on it ends the same way.
    @Test func lostJobsEnd() async throws {
        try await withGatewayStack({ $0.lostJobGrace = .milliseconds(500) }) { stack in
            let client = try await stack.connect()
            let waiter = try await stack.connect()
            let id = try #require(try await client.request(submitLine("nobody-runs-this", "x"))?.createdID)
            guard case .reply(.watching(id, _), _) = try #require(try await client.request("WATCH \(id)\n")) else { return }
            try await waiter.send("WAIT \(id) 30000\n")
            try await stack.gearmand.restart()  // no persistent queue: the job is gone
            guard case .event(.failed(id, let reason), _) = try #require(try await client.nextTerminal(timeout: .seconds(20))) else {
                Issue.record("the watcher got no FAILED"); return
            }
            #expect(String(buffer: reason).hasPrefix("lost"))
            guard case .reply(.failed(id, _), _) = try #require(try await waiter.next(timeout: .seconds(20))) else {
                Issue.record("the waiter got no FAILED"); return
            }
        }
    }

    /// A job submitted through one gateway is answered by another (or by the same one after a restart): ids and
    /// outcomes live in Redis, the gateway holds nothing a client needs.
    @Test func anotherGatewayKnowsTheJob() async throws {
        try await withGatewayStack { stack in
            let client = try await stack.connect()
            let id = try #require(try await client.request(submitLine("echo", "survives"))?.createdID)
            await client.close()

            var configuration = stack.configuration
            configuration.port = 0
            let second = GatewayServer(configuration: configuration, logger: Logger(label: "test.gateway2"))
            let group = ServiceGroup(configuration: .init(services: [second], logger: Logger(label: "test")))
            let running = Task { try await group.run() }
            defer { running.cancel() }
            let address = try await withTimeout(.seconds(10), "the second gateway") { try await second.waitUntilListening() }
            let other = try await GatewayTestClient.connect(port: address.port!)
            let reply = try await withTestWorker(stack, ["echo": { payload, _ in payload }]) {
                try await other.request("WAIT \(id) 10000\n")
            }
            #expect(reply == .reply(.done(id, result: ByteBuffer(string: "survives"))))
            _ = try await stack.store().redis.send(["DEL", "\(configuration.keyPrefix)job:\(id)"])
            #expect(try await other.request("RESULT \(id)\n") == .reply(.expired(id)), "the shared id key tells expired from never issued")
            await group.triggerGracefulShutdown()
        }
    }

    /// Graceful shutdown: requests already sent are answered (a pending WAIT at once, with the job's state), then the
    /// connection closes and the gateway stops.
    @Test func gracefulShutdown() async throws {
        try await withLocalServer(.gearmand) { gearmand in
            try await withLocalServer(.redis) { redis in
                var configuration = GatewayConfiguration()
                configuration.port = 0
                configuration.gearmanServers = [GearmanServerAddress(host: gearmand.host, port: gearmand.port)]
                configuration.redis = RedisConnectionConfiguration(host: redis.host, port: redis.port)
                let gateway = GatewayServer(configuration: configuration, logger: Logger(label: "test.gateway"))
                let group = ServiceGroup(configuration: .init(services: [gateway], logger: Logger(label: "test")))
                let running = Task { try await group.run() }
                let port = try await withTimeout(.seconds(10), "the gateway") { try await gateway.waitUntilListening() }.port!
                let client = try await GatewayTestClient.connect(port: port)
                let id = try #require(try await client.request(submitLine("nobody-runs-this", "x"))?.createdID)
                try await client.send("WAIT \(id) 60000\nPING\nSTATUS abc\n")
                try await Task.sleep(for: .milliseconds(100))
                await group.triggerGracefulShutdown()
                // The pending WAIT is answered now with the job's state, not after its minute.
                guard case .reply(.timeout(id, let status), _) = try #require(try await client.next(timeout: .seconds(10))) else {
                    Issue.record("the WAIT was not answered"); return
                }
                #expect(status.state == .queued)
                #expect(try await client.next() == .reply(.pong))
                guard case .reply(.error(.notFound, _), _) = try #require(try await client.next()) else { Issue.record("no reply"); return }
                #expect(try await client.next() == nil, "then the gateway closes the connection")
                // run() returns only after the listener closed and every connection was answered and closed.
                try await withTimeout(.seconds(10), "the gateway to stop") { try await running.value }
            }
        }
    }
}

extension GatewayTestClient {
    func nextTerminal(timeout: Duration) async throws -> GatewayResponse? {
        while true {
            let response = try await next(timeout: timeout)
            if case .event(.progress, _) = response { continue }
            return response
        }
    }
}
