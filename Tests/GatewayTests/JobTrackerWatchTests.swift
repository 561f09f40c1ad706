import Foundation
import GatewayProtocol
import JobStore
import LocalServers
import Logging
import NIOCore
import NIOPosix
import Redis
import Synchronization
import Testing

@testable import Gateway

/// `JobTracker.watch(_:as:target:tag:read:)`, the WATCH sequence of the session and the job page, on a real Redis
/// with the real change feed: a change that comes between registering and reading, or between reading and
/// activating, reaches the watcher exactly once; a watch with nothing to follow leaves no watcher behind.
@Suite("Job tracker: watch", .timeLimit(.minutes(2)))
struct JobTrackerWatchTests {
    /// What the tracker hands a watcher: events pushed, and changes held while the watch is pending.
    final class Recorder: PushTarget {
        private let state = Mutex([String]())

        func push(_ response: GatewayResponse, ending: JobTracker.Token?) {
            guard case .event(let event, _) = response else { return }
            let text: String =
                switch event.withoutCursor {
                case .progress(_, let numerator, let denominator, _): "progress \(numerator)/\(denominator)"
                case .done: "done"
                case .failed: "failed"
                case .expired, .logged: "expired"
                }
            state.withLock { $0.append(text) }
        }

        func holdEnd(_ update: JobUpdate, for watch: JobTracker.Token) {}

        var pushed: [String] { state.withLock { $0 } }
    }

    private struct Fixture: Sendable {
        let store: RedisJobStore
        let tracker: JobTracker
        let eventLoop: any EventLoop

        func newJob() async throws -> (JobID, GatewayJobID) {
            let (id, gatewayID) = Self.newID()
            _ = try await store.create(id: id, function: "f", unique: nil)
            return (id, gatewayID)
        }

        /// The feed's reads of changed jobs so far (`HMGET`s, counted by the test's own redis-server).
        func feedReads() async throws -> Int {
            let info = try #require(try await store.redis.send(["INFO", "commandstats"]).string)
            guard let line = info.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("cmdstat_hmget:") }) else { return 0 }
            let calls = try #require(line.split(separator: ",").first?.split(separator: "=").last)
            return try #require(Int(calls))
        }

        static func newID() -> (JobID, GatewayJobID) {
            let text = UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
            return (JobID(rawValue: text)!, GatewayJobID(rawValue: text)!)
        }

        /// A read for `watch`: `before`, then the job as Redis has it, then `after`.
        func read(
            _ id: JobID, before: @escaping @Sendable () async throws -> Void = {}, after: @escaping @Sendable () async throws -> Void = {}
        ) -> @Sendable () -> EventLoopFuture<JobLookup> {
            { [store] in
                eventLoop.makeFutureWithTask {
                    try await before()
                    let record = try await store.record(id)
                    try await after()
                    return record.map { JobLookup.found($0) } ?? JobLookup.expired(id)
                }
            }
        }
    }

    /// A tracker following a real Redis through its change feed, as the gateway runs it.
    private func withTracker(_ body: @Sendable (Fixture) async throws -> Void) async throws {
        try await withLocalServer(.redis) { server in
            let redis = RedisConnectionPool(configuration: RedisConnectionConfiguration(host: server.host, port: server.port), size: 2)
            let store = RedisJobStore(redis: redis)
            try await KeyspaceNotifications.ensureEnabled(on: redis)
            let eventLoop = MultiThreadedEventLoopGroup.singleton.any()
            // The gateway's own statistics (their registry is the gateway's).
            let statistics = GatewayStatistics(
                registry: GatewayServer(configuration: GatewayConfiguration()).metrics,
                backends: BackendStatus(redisServer: "redis", gearmandServers: [], logger: Logger(label: "test"))
            )
            let tracker = JobTracker(store: store, eventLoop: eventLoop, sweepInterval: .seconds(30), statistics: statistics, logger: Logger(label: "test"))
            let running = Task { try await tracker.run() }
            defer { running.cancel() }
            try await withTimeout(.seconds(10), "the feed's subscription") { try await tracker.feed.waitUntilReady() }
            try await body(Fixture(store: store, tracker: tracker, eventLoop: eventLoop))
        }
    }

    /// A change after the watcher registered and before the read: the read shows it, the tracker holds it too, and
    /// activating with what was shown does not show it again; later changes follow.
    @Test func changeBeforeTheReadIsNotShownTwice() async throws {
        try await withTracker { fixture in
            let (id, gatewayID) = try await fixture.newJob()
            let recorder = Recorder()
            let token = fixture.tracker.makeToken(for: id)
            let read = fixture.read(id, before: {
                let reads = try await fixture.feedReads()
                try await fixture.store.reportProgress(id, numerator: 1, denominator: 4)
                try await eventually("the feed to read the change for the pending watcher") { try await fixture.feedReads() > reads }
            })
            let lookup = try await fixture.tracker.watch(token, as: gatewayID, target: recorder, tag: nil, read: read).get()
            guard case .found(let record) = lookup else { Issue.record("the job was not found: \(lookup)"); return }
            #expect(record.numerator == 1 && record.denominator == 4)
            fixture.tracker.activate(token, shown: record.progress)
            try await fixture.store.reportProgress(id, numerator: 2, denominator: 4)
            try await fixture.store.complete(id, result: ByteBuffer(string: "r"))
            try await eventually("the job's end") { recorder.pushed.last == "done" }
            #expect(recorder.pushed == ["progress 2/4", "done"])
        }
    }

    /// A change after the read and before the watch is active (its `WATCHING` not written yet): the job is read
    /// again once the watch is activated, and the change pushed (a change held while pending may be older than what
    /// was shown, so it is not shown itself).
    @Test func changeAfterTheReadIsNotLost() async throws {
        try await withTracker { fixture in
            let (id, gatewayID) = try await fixture.newJob()
            let recorder = Recorder()
            let token = fixture.tracker.makeToken(for: id)
            let read = fixture.read(id, after: {
                let reads = try await fixture.feedReads()
                try await fixture.store.reportProgress(id, numerator: 1, denominator: 4)
                try await eventually("the feed to read the change for the pending watcher") { try await fixture.feedReads() > reads }
            })
            let lookup = try await fixture.tracker.watch(token, as: gatewayID, target: recorder, tag: nil, read: read).get()
            guard case .found(let record) = lookup else { Issue.record("the job was not found: \(lookup)"); return }
            #expect(record.numerator == 0)
            #expect(recorder.pushed.isEmpty)  // nothing before the caller showed the job
            fixture.tracker.activate(token, shown: record.progress)
            try await eventually("the change, read again") { recorder.pushed == ["progress 1/4"] }
            try await fixture.store.complete(id, result: ByteBuffer(string: "r"))
            try await eventually("the job's end") { recorder.pushed.last == "done" }
            #expect(recorder.pushed == ["progress 1/4", "done"])
        }
    }

    /// A read that fails removes the watcher: the caller has nothing to undo.
    @Test func failedReadUnregisters() async throws {
        try await withTracker { fixture in
            let (id, gatewayID) = try await fixture.newJob()
            let token = fixture.tracker.makeToken(for: id)
            let eventLoop = fixture.eventLoop
            let watchersAtRead = Atomic(-1)
            let read = fixture.tracker.watch(token, as: gatewayID, target: Recorder(), tag: nil) {
                watchersAtRead.store(fixture.tracker.watcherCount, ordering: .relaxed)
                return eventLoop.makeFailedFuture(GatewayFailure(code: .backendDown, message: "Redis is away"))
            }
            await #expect(throws: GatewayFailure.self) { try await read.get() }
            #expect(watchersAtRead.load(ordering: .relaxed) == 1)  // registered before the read
            try await eventually("the watcher to be removed") { fixture.tracker.watcherCount == 0 && fixture.tracker.followedCount == 0 }
        }
    }

    /// A read that finds the job ended (or gone) removes the watcher: there is nothing left to follow.
    @Test func finishedJobUnregisters() async throws {
        try await withTracker { fixture in
            let (id, gatewayID) = try await fixture.newJob()
            try await fixture.store.complete(id, result: ByteBuffer(string: "r"))
            let ended = try await fixture.tracker.watch(fixture.tracker.makeToken(for: id), as: gatewayID, target: Recorder(), tag: nil, read: fixture.read(id)).get()
            guard case .found(let record) = ended, record.state == .done else { Issue.record("not done: \(ended)"); return }
            try await eventually("the watcher to be removed") { fixture.tracker.watcherCount == 0 && fixture.tracker.followedCount == 0 }
            let (gone, goneGatewayID) = Fixture.newID()
            let expired = try await fixture.tracker.watch(fixture.tracker.makeToken(for: gone), as: goneGatewayID, target: Recorder(), tag: nil, read: fixture.read(gone)).get()
            guard case .expired = expired else { Issue.record("not expired: \(expired)"); return }
            try await eventually("the watcher to be removed") { fixture.tracker.watcherCount == 0 && fixture.tracker.followedCount == 0 }
        }
    }
}

/// The same sequence through the line protocol: WATCHes land before, between and after a job's changes.
@Suite("WATCH racing a job's progress", .timeLimit(.minutes(2)))
struct WatchRaceTests {
    /// However a WATCH falls between the job's changes, its connection is shown each change at most once and in
    /// order (its `WATCHING`, then only newer progress), and the job's end always arrives.
    @Test func watchesRacingProgressSeeEachChangeOnce() async throws {
        try await withGatewayStack { stack in
            let steps: UInt32 = 30
            try await withTestWorker(stack, [
                "race": { _, progress in
                    for step in 1...steps {
                        try await progress(step, steps, "")
                        try await Task.sleep(for: .milliseconds(3))
                    }
                    return ByteBuffer(string: "ok")
                }
            ]) {
                let submitter = try await stack.connect()
                let id = try #require(try await submitter.request(submitLine("race", "x"))?.createdID)
                /// What one connection was shown, as (state, numerator) ranks: queued < running < done.
                @Sendable func watch(after delay: Duration) async throws -> [UInt64] {
                    try await Task.sleep(for: delay)
                    let client = try await stack.connect()
                    let watching = try await client.request("WATCH \(id)\n")
                    guard case .reply(.watching(id, let status), _) = watching else {
                        Issue.record("unexpected \(String(describing: watching))")
                        return []
                    }
                    let rank: UInt64 = switch status.state {
                        case .queued: 0
                        case .running: 1_000
                        default: 2_000
                    }
                    var shown = [rank + status.numerator]
                    while true {
                        guard case .event(let event, _) = try #require(try await client.next()) else { continue }
                        switch event {
                        case .progress(_, let numerator, _, _): shown.append(1_000 + numerator)
                        case .done: return shown + [2_000 + UInt64(steps) + 1]
                        default:
                            Issue.record("unexpected \(event)")
                            return shown
                        }
                    }
                }
                try await withThrowingTaskGroup(of: [UInt64].self) { group in
                    for index in 0..<32 {
                        group.addTask { try await watch(after: .milliseconds(index * 4)) }
                    }
                    for try await shown in group {
                        #expect(zip(shown, shown.dropFirst()).allSatisfy { $0 < $1 }, "shown twice or out of order: \(shown)")
                    }
                }
            }
        }
    }
}
