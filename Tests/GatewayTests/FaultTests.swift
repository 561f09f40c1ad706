import Foundation
import Gateway
import GatewayProtocol
import LocalServers
import NIOCore
import Redis
import Testing

/// The gateway, Redis and many clients under faults and load.
@Suite("Gateway faults", .timeLimit(.minutes(3)))
struct FaultTests {
    /// `kill -9` of a real `jobgate serve` process while jobs run, then a restart: a client that reconnects and
    /// WAITs by id gets each result.
    @Test func gatewayKilledWhileJobsRun() async throws {
        try await withGatewayStack { stack in
            let port = try freeLoopbackPort()
            let arguments = [
                "serve", "--listen", "127.0.0.1:\(port)", "--gearman", stack.gearmand.address,
                "--redis", stack.redis.address, "--log-level", "warning",
            ]
            let first = try LocalProcess(jobgateExecutable(), arguments)
            defer { first.stop() }
            try await eventually("jobgate serve to listen") { (try? await GatewayTestClient.connect(port: port)) != nil }
            let client = try await GatewayTestClient.connect(port: port)
            let release = Gate()
            try await withTestWorker(stack, concurrency: 8, ["slow": { payload, _ in
                await release.wait()
                return ByteBuffer(string: "result " + String(buffer: payload))
            }]) {
                var ids: [GatewayJobID] = []
                for index in 0..<20 {
                    ids.append(try #require(try await client.request(submitLine("slow", "\(index)"))?.createdID))
                }
                first.signal(SIGKILL)
                _ = try await first.waitForExit()
                #expect(try await client.next() == nil, "the client sees its connection die")
                release.open()  // jobs finish while no gateway runs

                let second = try LocalProcess(jobgateExecutable(), arguments)
                defer { second.stop() }
                try await eventually("the restarted gateway to listen") { (try? await GatewayTestClient.connect(port: port)) != nil }
                let reconnected = try await GatewayTestClient.connect(port: port)
                try await reconnected.send(ids.map { "WAIT \($0) 20000\n" }.joined())
                for (index, id) in ids.enumerated() {
                    #expect(try await reconnected.next(timeout: .seconds(30)) == .reply(.done(id, result: ByteBuffer(string: "result \(index)"))))
                }
            }
        }
    }

    /// redis-server restarted while 100 jobs are watched: every watcher gets its terminal event.
    @Test func redisRestartedWhileHundredJobsAreWatched() async throws {
        try await withGatewayStack({ $0.sweepInterval = .seconds(120) }) { stack in
            let release = Gate()
            try await withTestWorker(stack, concurrency: 100, ["held": { payload, _ in
                await release.wait()
                return payload
            }]) {
                let submitter = try await stack.connect()
                var ids: [GatewayJobID] = []
                for index in 0..<100 {
                    ids.append(try #require(try await submitter.request(submitLine("held", "job \(index)"))?.createdID))
                }
                let watcher = try await stack.connect()
                try await watcher.send(ids.map { "WATCH \($0)\n" }.joined())
                for _ in ids {
                    guard case .reply(.watching, _) = try #require(try await watcher.next()) else { Issue.record("no WATCHING"); return }
                }
                // A persistent Redis keeps what it acknowledged; SAVE stands in for that before the kill.
                let saved = try LoopbackSocket.exchange(port: stack.redis.port, request: Array("SAVE\r\n".utf8), timeoutMs: 5_000)
                #expect(String(decoding: saved, as: UTF8.self).hasPrefix("+OK"))
                stack.redis.kill()
                try await stack.redis.launch()
                release.open()
                var done: [GatewayJobID: ByteBuffer] = [:]
                while done.count < ids.count {
                    let event = try #require(try await watcher.next(timeout: .seconds(30)))
                    if case .event(.done(let id, let result), _) = event { done[id] = result }
                    else if case .event(.progress, _) = event { continue }
                    else { Issue.record("unexpected \(event)"); return }
                }
                for (index, id) in ids.enumerated() { #expect(done[id] == ByteBuffer(string: "job \(index)")) }
            }
        }
    }

    /// 1,000 concurrent connections, each watching a job, all get their DONE.
    @Test func thousandWatchingConnections() async throws {
        try await withGatewayStack { stack in
            let submitter = try await stack.connect()
            try await submitter.send((0..<1000).map { submitLine("many", "\($0)") }.joined())
            var ids: [GatewayJobID] = []
            for _ in 0..<1000 { ids.append(try #require(try await submitter.next()?.createdID)) }
            var watchers: [GatewayTestClient] = []
            for id in ids {
                let watcher = try await stack.connect()
                try await watcher.send("WATCH \(id)\n")
                watchers.append(watcher)
            }
            for watcher in watchers {
                guard case .reply(.watching, _) = try #require(try await watcher.next()) else { Issue.record("no WATCHING"); return }
            }
            let (allWatchers, allIDs) = (watchers, ids)
            let events = try await withTestWorker(stack, concurrency: 32, ["many": { payload, _ in payload }]) {
                var events: [GatewayResponse?] = []
                for watcher in allWatchers { events.append(try await watcher.nextTerminal(timeout: .seconds(60))) }
                return events
            }
            for (index, event) in events.enumerated() {
                #expect(event == .event(.done(allIDs[index], result: ByteBuffer(string: "\(index)"))))
            }
            for watcher in watchers { await watcher.close() }
        }
    }

    /// SIGTERM to a real `jobgate serve`: what was sent is answered (a pending WAIT at once), then it exits 0.
    @Test func sigtermAnswersThenExits() async throws {
        try await withGatewayStack { stack in
            let port = try freeLoopbackPort()
            let gateway = try LocalProcess(
                jobgateExecutable(),
                ["serve", "--listen", "127.0.0.1:\(port)", "--gearman", stack.gearmand.address, "--redis", stack.redis.address]
            )
            defer { gateway.stop() }
            try await eventually("jobgate serve to listen") { (try? await GatewayTestClient.connect(port: port)) != nil }
            let client = try await GatewayTestClient.connect(port: port)
            let id = try #require(try await client.request(submitLine("nobody-runs-this", "x"))?.createdID)
            try await client.send("WAIT \(id) 60000\nPING\n")
            try await Task.sleep(for: .milliseconds(200))
            gateway.signal(SIGTERM)
            guard case .reply(.timeout(id, _), _) = try #require(try await client.next(timeout: .seconds(10))) else {
                Issue.record("the pending WAIT was not answered"); return
            }
            #expect(try await client.next() == .reply(.pong))
            #expect(try await client.next() == nil)
            let status = try await gateway.waitForExit(timeout: .seconds(10))
            #expect(status == 0, "\(gateway.log)")
        }
    }
}

/// `jobgate serve` and a Redis that is not there yet.
@Suite("Gateway start", .timeLimit(.minutes(1)))
struct GatewayStartTests {
    /// Started before Redis, the gateway waits (not listening) instead of exiting, and serves once Redis is up.
    @Test func waitsForRedis() async throws {
        try await withLocalServer(.gearmand) { gearmand in
            try await withLocalServer(.redis, arguments: ["--notify-keyspace-events", "Ehx"]) { redis in
                redis.kill()
                let port = try freeLoopbackPort()
                let gateway = try LocalProcess(
                    jobgateExecutable(),
                    ["serve", "--listen", "127.0.0.1:\(port)", "--gearman", gearmand.address, "--redis", redis.address]
                )
                defer { gateway.stop() }
                try await Task.sleep(for: .seconds(1))
                #expect(gateway.exitStatus == nil, "the gateway exited without Redis: \(gateway.log)")
                #expect((try? await GatewayTestClient.connect(port: port)) == nil, "it listens only once Redis answers")
                #expect(gateway.log.contains("waiting for Redis"))
                try await redis.launch()
                try await eventually("the gateway to listen", timeout: .seconds(10)) { (try? await GatewayTestClient.connect(port: port)) != nil }
                let client = try await GatewayTestClient.connect(port: port)
                #expect(try await client.request(submitLine("nobody-runs-this", "x"))?.createdID != nil)
            }
        }
    }

    /// A wrong Redis password ends the start at once, with the reason: waiting would not fix it.
    @Test func wrongPasswordExits() async throws {
        try await withLocalServer(.gearmand) { gearmand in
            try await withLocalServer(.redis) { redis in
                let setup = try await RedisConnection.connect(configuration: RedisConnectionConfiguration(host: redis.host, port: redis.port))
                try await setup.send(["CONFIG", "SET", "requirepass", "right"])
                await setup.close()
                let gateway = try LocalProcess(
                    jobgateExecutable(),
                    ["serve", "--listen", "127.0.0.1:\(try freeLoopbackPort())", "--gearman", gearmand.address, "--redis", redis.address,
                     "--redis-password", "wrong"]
                )
                defer { gateway.stop() }
                let status = try await gateway.waitForExit(timeout: .seconds(10))
                #expect(status != 0)
                #expect(gateway.log.lowercased().contains("auth") || gateway.log.contains("WRONGPASS"), "\(gateway.log)")
            }
        }
    }
}
