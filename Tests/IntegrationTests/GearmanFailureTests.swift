import Gearman
import JobgateSupport
import LocalServers
import Logging
import NIOCore
import ServiceLifecycle
import Testing

/// Several servers, servers going away and coming back, graceful drain.
@Suite("Gearman pools and failures", .timeLimit(.minutes(2)))
struct GearmanFailureTests {
    /// Jobs spread over two gearmands by unique key; the same unique always lands on the same server and
    /// coalesces there; status goes to the server that holds the job; one worker serves both.
    @Test func poolOfTwoServers() async throws {
        try await withLocalServer(.gearmand) { first in
            try await withLocalServer(.gearmand) { second in
                let pool = GearmanServerPool(servers: [first.gearmanAddress, second.gearmanAddress])
                let jobs = (0..<100).map { job("pooled", "key-\($0)", "\($0)") }
                let locations = try await pool.submitBackground(jobs).map { try $0.get() }
                let perServer = Dictionary(grouping: locations, by: \.server)
                #expect(perServer.count == 2, "both servers get jobs")
                #expect(perServer.values.allSatisfy { $0.count >= 25 }, "keys spread: \(perServer.mapValues(\.count))")
                for (job, location) in zip(jobs, locations) {
                    #expect(location.server == pool.ranking(for: job.unique).first?.address)
                }
                // Handles repeat across servers (both count from 1): the location tells them apart.
                #expect(Set(locations.map(\.handle)).count < locations.count)

                let again = try await pool.submitBackground(job("pooled", "key-7", "other payload"))
                #expect(again == locations[7])
                let statuses = await pool.status(of: locations)
                #expect(try statuses.allSatisfy { try $0.get().known })

                let ran = Recorder<String>()
                let worker = try GearmanWorker(
                    servers: pool.servers,
                    handlers: ["pooled": { job, _ in ran.append(job.unique); return .complete(ByteBuffer()) }],
                    configuration: { var c = GearmanWorkerConfiguration(); c.concurrency = 4; return c }()
                )
                try await withRunning(worker) {
                    try await eventually("all 100 jobs to run") { ran.count == 100 }
                }
                #expect(Set(ran.all) == Set(jobs.map(\.unique)))
                await pool.shutdown()
            }
        }
    }

    /// A server that is down is skipped: jobs it would have taken go to the next server in rank.
    @Test func poolSkipsServerThatIsDown() async throws {
        try await withLocalServer(.gearmand) { up in
            let down = GearmanServerAddress(host: "127.0.0.1", port: try freeLoopbackPort())
            let pool = GearmanServerPool(servers: [down, up.gearmanAddress])
            let jobs = (0..<40).map { job("skip", "k-\($0)", "") }
            #expect(jobs.contains { pool.ranking(for: $0.unique).first?.address == down }, "some keys prefer the dead server")
            let locations = try await pool.submitBackground(jobs).map { try $0.get() }
            #expect(locations.allSatisfy { $0.server == up.gearmanAddress })
            await pool.shutdown()
        }
    }

    /// With every server down the caller gets an error, never silence.
    @Test func poolWithNoServerUpFails() async throws {
        var configuration = GearmanClientConfiguration()
        configuration.reconnectBackoff = Backoff(initial: .seconds(30), maximum: .seconds(30))  // the second call surely falls in it
        let pool = GearmanServerPool(
            servers: [
                GearmanServerAddress(host: "127.0.0.1", port: try freeLoopbackPort()),
                GearmanServerAddress(host: "127.0.0.1", port: try freeLoopbackPort()),
            ],
            configuration: configuration
        )
        let results = await pool.submitBackground([job("none", "a", ""), job("none", "b", "")])
        for result in results {
            let error = #expect(throws: GearmanError.self) { try result.get() }
            #expect(error?.code == .connectionFailed || error?.code == .serverUnavailable)
        }
        // While backing off, a request fails at once with serverUnavailable.
        let error = await #expect(throws: GearmanError.self) { try await pool.submitBackground(job("none", "a", "")) }
        #expect(error?.code == .serverUnavailable)
        await pool.shutdown()
    }

    /// gearmand killed mid-stream: calls in flight fail with a clear error (none hangs); after a restart on the
    /// same port, later calls succeed through a new connection.
    @Test func gearmandKilledAndRestarted() async throws {
        try await withLocalServer(.gearmand) { server in
            var configuration = GearmanClientConfiguration()
            configuration.reconnectBackoff = Backoff(initial: .milliseconds(50), maximum: .milliseconds(200))
            let client = GearmanClient(address: server.gearmanAddress, configuration: configuration)
            _ = try await client.submitBackground(job("restart", "before", ""))

            // A stream of batches, with the server killed in the middle of it.
            let outcomes = try await withTimeout(.seconds(30), "submits during a gearmand kill") {
                try await withThrowingTaskGroup(of: [Result<String, GearmanError>].self) { group in
                    group.addTask {
                        var all: [Result<String, GearmanError>] = []
                        for batch in 0..<200 {
                            all += await client.submitBackground((0..<50).map { job("restart", "b\(batch)-\($0)", "") })
                            try await Task.sleep(for: .milliseconds(2))
                        }
                        return all
                    }
                    try await Task.sleep(for: .milliseconds(100))
                    server.kill()
                    return try await group.next()!
                }
            }
            let failures = outcomes.compactMap { result -> GearmanError? in
                if case .failure(let error) = result { return error }
                return nil
            }
            #expect(!failures.isEmpty, "calls made while gearmand was down fail")
            #expect(failures.allSatisfy { [.connectionClosed, .connectionFailed, .serverUnavailable].contains($0.code) }, "\(Set(failures.map(\.code)))")

            try await server.launch()
            try await eventually("the client to reconnect") {
                (try? await client.submitBackground(job("restart", "after", ""))) != nil
            }
            #expect(try await client.status(unique: "after").known)
            await client.shutdown()
        }
    }

    /// Graceful shutdown while jobs run: the running jobs finish and report, no new job is taken.
    @Test func workerDrainsOnGracefulShutdown() async throws {
        try await withLocalServer(.gearmand) { server in
            let client = GearmanClient(address: server.gearmanAddress)
            let started = Recorder<String>()
            let finished = Recorder<String>()
            let gate = Gate()
            let worker = try GearmanWorker(
                servers: [server.gearmanAddress],
                handlers: [
                    "drain": { job, _ in
                        started.append(job.unique)
                        await gate.wait()
                        finished.append(job.unique)
                        return .complete(ByteBuffer(string: "ok"))
                    }
                ],
                configuration: { var c = GearmanWorkerConfiguration(); c.concurrency = 3; return c }()
            )
            for index in 0..<5 { _ = try await client.submitBackground(job("drain", "d\(index)", "")) }

            let group = ServiceGroup(configuration: .init(services: [worker], logger: Logger(label: "test")))
            let running = Task { try await group.run() }
            try await eventually("three jobs to start") { started.count == 3 }
            await group.triggerGracefulShutdown()
            try await Task.sleep(for: .milliseconds(200))
            gate.open()
            try await withTimeout(.seconds(10), "the worker to drain") { try await running.value }
            #expect(started.count == 3, "no job is taken after shutdown began")
            #expect(Set(finished.all) == Set(started.all))
            // gearmand saw the three complete (they are gone) and still holds the other two, not running.
            // (gearmand notices the worker's disconnect a moment after it closed)
            let lastStatus = Recorder<[String]>()
            do {
                try await eventually("gearmand to show the two untouched jobs and no worker", timeout: .seconds(20)) {
                    let status = try await client.admin(.status)
                    lastStatus.append(status)
                    return status.contains("drain\t2\t0\t0")
                }
            } catch {
                Issue.record("gearmand status: \(lastStatus.all.last ?? [])")
                throw error
            }
            await client.shutdown()
        }
    }

    /// A worker whose gearmand restarts reconnects and goes on taking jobs.
    @Test func workerReconnectsAfterRestart() async throws {
        try await withLocalServer(.gearmand) { server in
            let ran = Recorder<String>()
            var configuration = GearmanWorkerConfiguration()
            configuration.reconnectBackoff = Backoff(initial: .milliseconds(50), maximum: .milliseconds(200))
            let worker = try GearmanWorker(
                servers: [server.gearmanAddress],
                handlers: ["re": { job, _ in ran.append(job.unique); return .complete(ByteBuffer()) }],
                configuration: configuration
            )
            try await withRunning(worker) {
                let client = GearmanClient(address: server.gearmanAddress)
                _ = try await client.submitBackground(job("re", "one", ""))
                try await eventually("the first job") { ran.count == 1 }
                try await server.restart()
                try await eventually("a new connection") {
                    (try? await client.submitBackground(job("re", "two", ""))) != nil
                }
                try await eventually("the job after the restart") { ran.all.contains("two") }
                await client.shutdown()
            }
        }
    }
}
