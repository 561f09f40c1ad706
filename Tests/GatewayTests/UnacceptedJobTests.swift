import Foundation
import Gateway
import GatewayProtocol
import JobStore
import LocalServers
import NIOCore
import NIOPosix
import Redis
import Testing

/// Jobs whose record a gateway wrote to Redis before it died, without gearmand ever accepting them.
@Suite("Jobs gearmand never accepted", .timeLimit(.minutes(2)))
struct UnacceptedJobTests {
    /// Nobody follows the job of a killed gateway: the sweep of another gateway still ends it `failed` as lost.
    @Test func anUnfollowedJobOfAKilledGatewayEndsLost() async throws {
        try await withGatewayStack({ $0.lostJobGrace = .seconds(1) }) { stack in
            let id = try await Self.createThenKillGateway(stack, function: "orphan", unique: "order-1")
            let store = stack.store()
            let jobID = try #require(JobID(rawValue: id.rawValue))
            try await eventually("the job to end as lost", timeout: .seconds(20)) {
                try await store.record(jobID)?.state == .failed
            }
            let reason = try #require(try await store.record(jobID)?.reason)
            #expect(String(buffer: reason).hasPrefix("lost:"), "\(String(buffer: reason))")
            // Cleared right after the job's end is written (two steps: a check may see the end first).
            try await eventually("its entry to be cleared") {
                try await store.redis.send(["SISMEMBER", "\(store.schema.unacceptedKey)", "\(id.rawValue)"]).int == 0
            }
        }
    }

    /// Nothing is decided while gearmand cannot be asked: the job stays queued, and ends lost once gearmand answers.
    @Test func nothingIsDecidedWhileGearmandCannotBeAsked() async throws {
        try await withGatewayStack({ $0.lostJobGrace = .seconds(2) }) { stack in
            let id = try await Self.createThenKillGateway(stack, function: "orphan", unique: "order-4")
            stack.gearmand.kill()
            try await Task.sleep(for: .seconds(3))  // past the grace, several sweeps
            let store = stack.store()
            let jobID = try #require(JobID(rawValue: id.rawValue))
            #expect(try await store.record(jobID)?.state == .queued)
            try await stack.gearmand.launch()
            try await eventually("the job to end as lost", timeout: .seconds(20)) {
                try await store.record(jobID)?.state == .failed
            }
        }
    }

    /// A SUBMIT with the unique key of a job gearmand never accepted creates a fresh job that runs, and ends the
    /// old one as lost. The sweep is kept from running, so what this shows is the coalescing path's own check.
    @Test func aSubmitDoesNotJoinAJobGearmandNeverAccepted() async throws {
        try await withGatewayStack({
            $0.lostJobGrace = .seconds(1)
            $0.lostJobCheckInterval = .seconds(3_600)
        }) { stack in
            let old = try await Self.createThenKillGateway(stack, function: "echo", unique: "order-2")
            try await Task.sleep(for: .milliseconds(1_500))  // past the acceptance grace
            let client = try await stack.connect()
            let reply = try await client.request(submitLine("echo", "again", options: "unique=order-2"))
            guard case .reply(.created(let new), _) = try #require(reply) else {
                Issue.record("the SUBMIT joined the job gearmand never had"); return
            }
            #expect(new != old)
            let outcome = try await withTestWorker(stack, ["echo": { payload, _ in payload }]) {
                try await client.request("WAIT \(new) 20000\n")
            }
            #expect(outcome == .reply(.done(new, result: ByteBuffer(string: "again"))))
            guard case .reply(.failed(old, let reason), _) = try #require(try await client.request("RESULT \(old)\n")) else {
                Issue.record("the old job was not ended"); return
            }
            #expect(String(buffer: reason).hasPrefix("lost:"))
        }
    }

    /// A job gearmand holds with no worker yet stays queued past the grace and is joined, even when its entry in the
    /// unaccepted index was never cleared (its gateway died right after gearmand accepted it): the sweep and the
    /// coalescing path both ask gearmand before calling a job lost, and clear the entry when it has the job.
    @Test func aQueuedJobGearmandHoldsIsJoinedNotLost() async throws {
        try await withGatewayStack({ $0.lostJobGrace = .seconds(1) }) { stack in
            let client = try await stack.connect()
            let created = try await client.request(submitLine("later", "x", options: "unique=order-3"))
            guard case .reply(.created(let id), _) = try #require(created) else {
                Issue.record("no CREATED"); return
            }
            let store = stack.store()
            let entry: RedisCommand = ["SISMEMBER", "\(store.schema.unacceptedKey)", "\(id.rawValue)"]
            let staleEntry: RedisCommand = ["SADD", "\(store.schema.unacceptedKey)", "\(id.rawValue)"]
            _ = try await store.redis.send(staleEntry)
            try await Task.sleep(for: .seconds(2))  // the grace and several sweeps
            #expect(try await client.request("STATUS \(id)\n") == .reply(.status(id, GatewayJobStatus(.queued))))
            #expect(try await store.redis.send(entry).int == 0, "the sweep found gearmand has it")
            _ = try await store.redis.send(staleEntry)
            #expect(try await client.request(submitLine("later", "y", options: "unique=order-3")) == .reply(.exists(id)))
            #expect(try await store.redis.send(entry).int == 0, "the SUBMIT found gearmand has it")
            let reply = try await withTestWorker(stack, ["later": { payload, _ in payload }]) {
                try await client.request("WAIT \(id) 20000\n")
            }
            #expect(reply == .reply(.done(id, result: ByteBuffer(string: "x"))))
        }
    }

    /// Accepted jobs leave the index without their submitters waiting for it: the `SREM` is sent after gearmand
    /// answered and not waited for, so the index is emptied shortly after the replies, not before them.
    @Test func acceptedJobsLeaveTheIndex() async throws {
        try await withGatewayStack { stack in
            let client = try await stack.connect()
            var ids: [GatewayJobID] = []
            for index in 0..<50 {
                let created = try await client.request(submitLine("later", "\(index)", options: index.isMultiple(of: 2) ? "unique=u-\(index)" : ""))
                guard case .reply(.created(let id), _) = try #require(created) else {
                    Issue.record("no CREATED: \(String(describing: created))"); return
                }
                ids.append(id)
            }
            let store = stack.store()
            try await eventually("the index to be empty") {
                try await store.redis.send(["SCARD", "\(store.schema.unacceptedKey)"]).int == 0
            }
            for id in ids.prefix(3) {
                #expect(try await client.request("STATUS \(id)\n") == .reply(.status(id, GatewayJobStatus(.queued))))
            }
        }
    }

    /// Starts a real `jobgate serve` on the stack's Redis whose gearmand takes connections and never answers, sends
    /// it `SUBMIT … unique=`, and kills it (`kill -9`) once the job's record is in Redis: gearmand never had the job.
    static func createThenKillGateway(_ stack: GatewayStack, function: String, unique: String) async throws -> GatewayJobID {
        let silentGearmand = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { $0.eventLoop.makeSucceededVoidFuture() }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        defer { silentGearmand.close(promise: nil) }
        let port = try freeLoopbackPort()
        let gateway = try LocalProcess(
            jobgateExecutable(),
            [
                "serve", "--listen", "127.0.0.1:\(port)", "--gearman", "127.0.0.1:\(silentGearmand.localAddress!.port!)",
                "--redis", stack.redis.address, "--log-level", "warning",
            ]
        )
        defer { gateway.stop() }
        try await eventually("jobgate serve to listen") { (try? await GatewayTestClient.connect(port: port)) != nil }
        let client = try await GatewayTestClient.connect(port: port)
        try await client.send(submitLine(function, "first", options: "unique=\(unique)"))
        let store = stack.store()
        var id: GatewayJobID?
        try await eventually("the job's record") {
            id = try await store.redis.send(["GET", "\(store.schema.uniqueKey(function: function, unique: unique))"]).string
                .flatMap(GatewayJobID.init(rawValue:))
            return id != nil
        }
        gateway.signal(SIGKILL)
        _ = try await gateway.waitForExit()
        let created = try #require(id)
        let record = try await store.record(try #require(JobID(rawValue: created.rawValue)))
        #expect(record?.state == .queued, "killed between Redis and gearmand")
        return created
    }
}
