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
        private let state = Mutex((pushed: [String](), held: 0))

        func push(_ response: GatewayResponse, ending: JobTracker.Token?) {
            guard case .event(let event, _) = response else { return }
            let text: String =
                switch event.withoutCursor {
                case .progress(_, let numerator, let denominator, _): "progress \(numerator)/\(denominator)"
                case .done: "done"
                case .failed: "failed"
                case .expired, .logged: "expired"
                }
            state.withLock { $0.pushed.append(text) }
        }

        func hold(_ update: JobUpdate, for watch: JobTracker.Token) {
            state.withLock { $0.held += 1 }
        }

        var pushed: [String] { state.withLock { $0.pushed } }
        var held: Int { state.withLock { $0.held } }
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
                try await fixture.store.reportProgress(id, numerator: 1, denominator: 4)
                try await eventually("the tracker to hold the change for the pending watcher") { recorder.held == 1 }
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

    /// A change after the read and before the watch is active (its `WATCHING` not written yet): held, and pushed
    /// once the watch is activated with what the read showed.
    @Test func changeAfterTheReadIsNotLost() async throws {
        try await withTracker { fixture in
            let (id, gatewayID) = try await fixture.newJob()
            let recorder = Recorder()
            let token = fixture.tracker.makeToken(for: id)
            let read = fixture.read(id, after: {
                try await fixture.store.reportProgress(id, numerator: 1, denominator: 4)
                try await eventually("the tracker to hold the change for the pending watcher") { recorder.held == 1 }
            })
            let lookup = try await fixture.tracker.watch(token, as: gatewayID, target: recorder, tag: nil, read: read).get()
            guard case .found(let record) = lookup else { Issue.record("the job was not found: \(lookup)"); return }
            #expect(record.numerator == 0)
            #expect(recorder.pushed.isEmpty)  // nothing before the caller showed the job
            fixture.tracker.activate(token, shown: record.progress)
            try await eventually("the held change") { recorder.pushed == ["progress 1/4"] }
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
