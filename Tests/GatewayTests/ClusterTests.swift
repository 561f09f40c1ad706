import Foundation
import GatewayProtocol
import LocalServers
import NIOCore
import Synchronization
import Testing

/// Losing any one machine of the tested topology (README "Scaling out"): a Redis primary with two replicas and three
/// sentinels, two gearmand, two gateways and two workers, all real processes on loopback (`LocalJobgateCluster`).
@Suite("Cluster: losing one machine", .serialized, .timeLimit(.minutes(4)))
struct ClusterTests {
    /// Runs `body` on a fresh cluster; a failure prints the processes' logs.
    private static func withCluster(
        persistentQueues: Bool = false,
        workerFunctions: [String] = ["echo"],
        _ body: @escaping @Sendable (LocalJobgateCluster) async throws -> Void
    ) async throws {
        let cluster = try await LocalJobgateCluster.start(replicasAck: 1, persistentQueues: persistentQueues, lostGrace: 2, workerFunctions: workerFunctions)
        defer { cluster.stop() }
        do {
            try await withTimeout(.seconds(150)) { try await body(cluster) }
        } catch {
            print(cluster.logs)
            throw error
        }
    }

    /// kill -9 of the Redis primary while jobs are submitted, waited on and watched through both gateways: every `WAIT`
    /// and every `WATCH` ends with the job's result, and every result is still there after the failover
    /// (`--redis-replicas-ack 1`). Clients see `ERR BACKEND_DOWN` meanwhile, and retry; how long is printed.
    @Test func redisPrimaryKilledUnderLoad() async throws {
        try await Self.withCluster { cluster in
            let outage = OutageLog()
            let jobs = Mutex<[(id: GatewayJobID, payload: String, submittedTo: Int)]>([])
            try await withThrowingTaskGroup(of: Void.self) { group in
                var killedAt: ContinuousClock.Instant?
                for wave in 0..<3 {
                    if wave == 1 {
                        let primary = try #require(cluster.redis.primary())
                        killedAt = .now
                        primary.kill()
                        outage.killed()
                    }
                    for index in 0..<10 {
                        let payload = "job-\(wave)-\(index)"
                        let gateway = index % 2
                        let id = try await Self.submit(payload, port: cluster.gatewayPorts[gateway], outage: outage)
                        jobs.withLock { $0.append((id, payload, gateway)) }
                        // Waited on through the other gateway, watched through the one it was submitted to.
                        group.addTask {
                            let outcome = try await Self.wait(id, port: cluster.gatewayPorts[1 - gateway], outage: outage)
                            #expect(outcome == .done(id, result: ByteBuffer(string: payload)), "WAIT \(payload)")
                        }
                        group.addTask {
                            let outcome = try await Self.watch(id, port: cluster.gatewayPorts[gateway], outage: outage)
                            #expect(outcome == .done(id, result: ByteBuffer(string: payload)), "WATCH \(payload)")
                        }
                    }
                    if wave == 1, let killedAt {
                        try await cluster.redis.waitForFailover(from: cluster.redis.nodes[0])
                        outage.note("failover after \(ContinuousClock.now - killedAt)")
                    }
                }
                try await group.waitForAll()
            }
            // 0 results lost: each job's result is readable through either gateway after the failover.
            for job in jobs.withLock({ $0 }) {
                for port in cluster.gatewayPorts {
                    let client = try await GatewayTestClient.connect(port: port)
                    #expect(try await client.request("RESULT \(job.id)\n") == .reply(.done(job.id, result: ByteBuffer(string: job.payload))))
                    await client.close()
                }
            }
            #expect(jobs.withLock { $0.count } == 30)
            print("cluster: Redis primary kill -9: \(outage.summary)")
        }
    }

    /// kill -9 of a gateway: its clients reconnect to the other one with their job ids and get every outcome.
    @Test func gatewayKilled() async throws {
        try await Self.withCluster { cluster in
            let client = try await GatewayTestClient.connect(port: cluster.gatewayPorts[0])
            var ids: [(GatewayJobID, String)] = []
            for index in 0..<10 {
                let payload = "through-the-first-gateway-\(index)"
                let id = try #require(try await client.request(submitLine("echo", payload))?.createdID)
                #expect(try await client.request("WATCH \(id)\n")?.isWatching(id) == true)
                ids.append((id, payload))
            }
            cluster.gateways[0].stop()  // SIGKILL
            // The connection to the killed gateway ends (after any event it had sent).
            while try await client.next(timeout: .seconds(5)) != nil {}
            let other = try await GatewayTestClient.connect(port: cluster.gatewayPorts[1])
            for (id, payload) in ids {
                #expect(try await other.request("WAIT \(id) 30000\n") == .reply(.done(id, result: ByteBuffer(string: payload))))
            }
            await other.close()
        }
    }

    /// `SUBSCRIBE` through one gateway sees the jobs submitted through the other end.
    @Test func subscribeSeesJobsOfTheOtherGateway() async throws {
        try await Self.withCluster { cluster in
            let subscriber = try await GatewayTestClient.connect(port: cluster.gatewayPorts[1])
            #expect(try await subscriber.request("SUBSCRIBE echo\n") == .reply(.subscribed(try #require(GatewayFunctionName(rawValue: "echo")))))
            let submitter = try await GatewayTestClient.connect(port: cluster.gatewayPorts[0])
            var expected: Set<GatewayEvent> = []
            for index in 0..<5 {
                let payload = "seen-elsewhere-\(index)"
                let id = try #require(try await submitter.request(submitLine("echo", payload))?.createdID)
                expected.insert(.done(id, result: ByteBuffer(string: payload)))
            }
            var seen: Set<GatewayEvent> = []
            while seen.count < expected.count {
                guard case .event(let event, _) = try #require(try await subscriber.next(timeout: .seconds(20))) else { continue }
                seen.insert(event)
            }
            #expect(seen == expected)
            await subscriber.close()
            await submitter.close()
        }
    }

    /// kill -9 of a gearmand with a persistent queue (`-q libsqlite3`): its queued jobs survive its restart and run; the
    /// other server's jobs are untouched.
    @Test func gearmandKilledWithPersistentQueue() async throws {
        try await Self.withCluster(persistentQueues: true, workerFunctions: []) { cluster in
            let (jobs, queued) = try await Self.queueJobsOnBothServers(cluster)
            cluster.gearmands[0].kill()
            try await cluster.gearmands[0].launch()
            #expect(try Self.queued("held", on: cluster.gearmands[0]) == queued[0], "the restarted gearmand has its queue back")
            try cluster.startWorker(functions: ["held"])
            let client = try await GatewayTestClient.connect(port: cluster.gatewayPorts[1])
            for job in jobs {
                #expect(try await client.request("WAIT \(job.id) 30000\n") == .reply(.done(job.id, result: ByteBuffer(string: job.payload))))
            }
            await client.close()
        }
    }

    /// kill -9 of a gearmand without a persistent queue: its queued jobs end `lost:` after `--lost-grace`; the other
    /// server's jobs run as if nothing happened.
    @Test func gearmandKilledWithoutPersistentQueue() async throws {
        try await Self.withCluster(workerFunctions: []) { cluster in
            let (jobs, queued) = try await Self.queueJobsOnBothServers(cluster)
            cluster.gearmands[0].kill()
            try await cluster.gearmands[0].launch()
            try cluster.startWorker(functions: ["held"])
            // Per job: true when it ran, false when it ended lost.
            let ran = try await withThrowingTaskGroup(of: Bool?.self) { group in
                for job in jobs {
                    group.addTask {
                        let client = try await GatewayTestClient.connect(port: cluster.gatewayPorts[1])
                        // A lost job ends two lost-job checks (5 s apart) after gearmand forgot it: up to ~10 s after
                        // the kill, longer on a loaded machine, so the reply is given more than `request`'s 10 s.
                        try await client.send("WAIT \(job.id) 60000\n")
                        let outcome = try #require(try await client.next(timeout: .seconds(40)))
                        await client.close()
                        switch outcome {
                        case .reply(.done(job.id, let result), _):
                            #expect(String(buffer: result) == job.payload)
                            return true
                        case .reply(.failed(job.id, let reason), _):
                            #expect(String(buffer: reason).hasPrefix("lost:"), "\(String(buffer: reason))")
                            return false
                        default:
                            Issue.record("\(job.payload): \(outcome)")
                            return nil
                        }
                    }
                }
                return try await group.reduce(into: [Bool?]()) { $0.append($1) }
            }
            // Exactly the killed server's jobs are lost; the other server's all ran.
            #expect(ran.filter { $0 == false }.count == queued[0])
            #expect(ran.filter { $0 == true }.count == queued[1])
        }
    }

    // MARK: Helpers

    /// Submits 20 jobs of `held` (no worker yet) through the first gateway; returns them, and how many each gearmand
    /// queued (the gateway spreads jobs over the servers by their ids: each gets some).
    private static func queueJobsOnBothServers(_ cluster: LocalJobgateCluster) async throws -> (jobs: [(id: GatewayJobID, payload: String)], queued: [Int]) {
        let client = try await GatewayTestClient.connect(port: cluster.gatewayPorts[0])
        var jobs: [(id: GatewayJobID, payload: String)] = []
        for index in 0..<20 {
            let payload = "held-\(index)"
            jobs.append((try #require(try await client.request(submitLine("held", payload))?.createdID), payload))
        }
        await client.close()
        let queued = try cluster.gearmands.map { try Self.queued("held", on: $0) }
        #expect(queued.reduce(0, +) == jobs.count && !queued.contains(0), "jobs on both servers: \(queued)")
        return (jobs, queued)
    }

    /// Jobs of `function` queued on `gearmand`, from its admin `status`.
    private static func queued(_ function: String, on gearmand: LocalServer) throws -> Int {
        let reply = String(decoding: try LoopbackSocket.exchange(port: gearmand.port, request: Array("status\n".utf8), timeoutMs: 1_000), as: UTF8.self)
        let fields = reply.split(separator: "\n").map { $0.split(separator: "\t") }.first { $0.first.map(String.init) == function }
        return fields.flatMap { Int($0[1]) } ?? 0
    }

    /// `SUBMIT` on a fresh connection, again after each `ERR BACKEND_DOWN`.
    private static func submit(_ payload: String, port: Int, outage: OutageLog) async throws -> GatewayJobID {
        let client = try await GatewayTestClient.connect(port: port)
        defer { Task { await client.close() } }
        while true {
            let reply = try #require(try await client.request(submitLine("echo", payload)))
            if let id = reply.createdID { return id }
            try outage.backendDown(reply)
        }
    }

    /// `WAIT` until the job ends, again after each `ERR BACKEND_DOWN`; the reply.
    private static func wait(_ id: GatewayJobID, port: Int, outage: OutageLog) async throws -> GatewayReply {
        let client = try await GatewayTestClient.connect(port: port)
        defer { Task { await client.close() } }
        while true {
            try await client.send("WAIT \(id) 60000\n")
            let response = try #require(try await client.next(timeout: .seconds(70)))
            guard case .reply(let reply, _) = response else { continue }
            if case .error = reply {
                try outage.backendDown(response)
                continue
            }
            return reply
        }
    }

    /// `WATCH` (again after each `ERR BACKEND_DOWN`), then the terminal event.
    private static func watch(_ id: GatewayJobID, port: Int, outage: OutageLog) async throws -> GatewayEvent {
        let client = try await GatewayTestClient.connect(port: port)
        defer { Task { await client.close() } }
        while true {
            let response = try #require(try await client.request("WATCH \(id)\n"))
            if response.isWatching(id) { break }
            try outage.backendDown(response)
        }
        while true {
            guard case .event(let event, _) = try #require(try await client.next(timeout: .seconds(70))) else { continue }
            if event.isTerminal { return event }
        }
    }
}

/// What clients saw of an outage: when `ERR BACKEND_DOWN` came first and last after the kill.
private final class OutageLog: Sendable {
    private struct State {
        var killedAt: ContinuousClock.Instant?
        var first: ContinuousClock.Instant?
        var last: ContinuousClock.Instant?
        var count = 0
        var notes: [String] = []
    }
    private let state = Mutex(State())

    func killed() { state.withLock { $0.killedAt = .now } }
    func note(_ text: String) { state.withLock { $0.notes.append(text) } }

    /// Records a `BACKEND_DOWN` (after a short pause, as a client would retry); anything else fails the test.
    func backendDown(_ response: GatewayResponse) throws {
        guard case .reply(.error(let code, _), _) = response, code == .backendDown else {
            throw LocalServerError(message: "expected ERR BACKEND_DOWN or the answer, got \(response)")
        }
        state.withLock { state in
            state.first = state.first ?? .now
            state.last = .now
            state.count += 1
        }
        usleep(50_000)
    }

    var summary: String {
        state.withLock { state in
            guard let first = state.first, let last = state.last, let killedAt = state.killedAt else {
                return "no BACKEND_DOWN seen; \(state.notes.joined(separator: "; "))"
            }
            return "\(state.count) BACKEND_DOWN replies, from \(first - killedAt) to \(last - killedAt) after the kill; \(state.notes.joined(separator: "; "))"
        }
    }
}

extension GatewayResponse {
    func isWatching(_ id: GatewayJobID) -> Bool {
        if case .reply(.watching(id, _), _) = self { return true }
        return false
    }
}
