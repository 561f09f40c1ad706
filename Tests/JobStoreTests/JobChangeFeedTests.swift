import InMemoryLogging
import JobStore
import LocalServers
import Logging
import NIOCore
import NIOPosix
import Redis
import Synchronization
import Testing

/// A feed's consumer as the gateway's tracker uses it: a followed job's updates until its end, then it is followed no
/// more; with `observeAllJobs`, every job's end once. (What is news to whom is the tracker's: see its state machine.)
final class UpdateLog: JobChangeConsumer {
    private struct State {
        var followed: Set<JobID> = []
        var observesAllJobs = false
        var ended: Set<JobID> = []
        var updates: [JobUpdate] = []
    }

    private let state = Mutex(State())

    func follow(_ id: JobID) { state.withLock { _ = $0.followed.insert(id) } }
    func observeAllJobs() { state.withLock { $0.observesAllJobs = true } }

    func wantsChange(of id: JobID) -> Bool { state.withLock { $0.observesAllJobs || $0.followed.contains(id) } }
    func followedJobs() -> [JobID] { state.withLock { Array($0.followed) } }

    func changed(_ update: JobUpdate) {
        let ended = update.record.map(\.state.isTerminal) ?? true
        state.withLock { state in
            if state.followed.contains(update.id) {
                state.updates.append(update)
                if ended { state.followed.remove(update.id) }
                state.ended.insert(update.id)
            } else if state.observesAllJobs, ended, state.ended.insert(update.id).inserted {
                state.updates.append(update)
            }
        }
    }

    var all: [JobUpdate] { state.withLock { $0.updates } }
    func terminal(for id: JobID) -> [JobUpdate] { all.filter { $0.id == id && ($0.record?.state.isTerminal ?? true) } }
}

/// Runs a change feed for a consumer around `body`.
func withFeed<T: Sendable>(_ store: RedisJobStore, sweep: Duration = .seconds(30), _ body: @Sendable (JobChangeFeed, UpdateLog) async throws -> T) async throws -> T {
    try await KeyspaceNotifications.ensureEnabled(on: store.redis)
    let feed = JobChangeFeed(store: store, eventLoop: MultiThreadedEventLoopGroup.singleton.any(), sweepInterval: sweep)
    let log = UpdateLog()
    let running = Task { try await feed.run(consumer: log) }
    defer { running.cancel() }
    try await withTimeout(.seconds(10), "the feed's first subscription") { try await feed.waitUntilReady() }
    return try await body(feed, log)
}

@Suite("Job change feed", .timeLimit(.minutes(3)))
struct JobChangeFeedTests {
    /// A followed job whose key is not a hash (an error reply in the middle of a read batch) does not hold back the
    /// updates of the jobs read with it.
    @Test func unreadableJobDoesNotHoldBackOthers() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            try await withFeed(store, sweep: .milliseconds(100)) { _, log in
                let good = newID()
                let broken = newID()
                _ = try await store.create(id: good, function: "f", unique: nil)
                try await store.redis.send(["SET", "\(store.schema.jobKey(broken))", "not a hash"])
                log.follow(broken)
                log.follow(good)
                try await Task.sleep(for: .milliseconds(300))  // a few sweeps read both, together
                try await store.complete(good, result: ByteBuffer(string: "fine"))
                try await eventually("the good job's end") { !log.terminal(for: good).isEmpty }
                #expect(log.all.allSatisfy { $0.id == good })
            }
        }
    }

    /// Progress and completion of a followed job arrive, read from Redis; an unfollowed job's do not.
    @Test func followedJobsArePushed() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            try await withFeed(store) { _, log in
                let followed = newID()
                let other = newID()
                _ = try await store.create(id: followed, function: "f", unique: nil)
                _ = try await store.create(id: other, function: "f", unique: nil)
                log.follow(followed)
                try await store.markRunning(followed, function: "f", handle: "H:1", server: "s")
                try await store.reportProgress(followed, numerator: 1, denominator: 2, message: ByteBuffer(string: "half"))
                try await store.complete(followed, result: ByteBuffer(string: "all done"))
                try await store.complete(other, result: ByteBuffer(string: "x"))
                try await eventually("the terminal update") { !log.terminal(for: followed).isEmpty }
                try await Task.sleep(for: .milliseconds(100))
                let updates = log.all
                #expect(updates.allSatisfy { $0.id == followed })
                #expect(updates.last?.record?.result == ByteBuffer(string: "all done"))
                #expect(log.terminal(for: followed).count == 1)
                #expect(updates.contains { $0.record?.message == ByteBuffer(string: "half") } || updates.count == 1)
            }
        }
    }

    /// Subscribe, then read: a result written between following and reading is seen by one or the other.
    @Test func writeBetweenFollowAndReadIsSeen() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            try await withFeed(store) { _, log in
                let id = newID()
                _ = try await store.create(id: id, function: "f", unique: nil)
                log.follow(id)
                try await store.complete(id, result: ByteBuffer(string: "raced"))
                let read = try await store.record(id)
                try await eventually("the feed to report it too") { log.terminal(for: id).count == 1 }
                #expect(read?.state == .done)
            }
        }
    }

    /// SUBSCRIBE-style observers get every job's terminal update once, followed or not.
    @Test func observingAllJobs() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            try await withFeed(store) { _, log in
                log.observeAllJobs()
                let ids = (0..<20).map { _ in newID() }
                for id in ids {
                    _ = try await store.create(id: id, function: "f", unique: nil)
                    try await store.markRunning(id, function: "f", handle: "H", server: "s")
                    try await store.complete(id, result: ByteBuffer(string: "r"))
                }
                try await eventually("20 terminal updates") { Set(log.all.map(\.id)) == Set(ids) }
                #expect(log.all.count == 20, "only terminal updates, once each")
            }
        }
    }

    /// A record that expires before the job finished ends its followers with a `nil` record.
    @Test func expiryIsReported() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            try await withFeed(store) { _, log in
                let id = newID()
                _ = try await store.create(id: id, function: "f", unique: nil)
                log.follow(id)
                _ = try await store.redis.send(["PEXPIRE", "\(store.schema.jobKey(id))", "200"])
                try await eventually("the expiry", timeout: .seconds(15)) {
                    // Redis deletes an expired key on access or in its expiry cycle, and notifies then.
                    _ = try? await store.redis.send(["EXISTS", "\(store.schema.jobKey(id))"])
                    return log.all.contains { $0.id == id && $0.record == nil }
                }
                #expect(log.all.filter { $0.id == id && $0.record == nil }.count == 1)
            }
        }
    }

    /// Stopped while its reader waits to reconnect to a Redis that is down, the feed tries nothing more once `run()`
    /// returned: the reader's reconnects are `run()`'s children, not tasks of their own.
    @Test func readerStopsWithRun() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            try await KeyspaceNotifications.ensureEnabled(on: store.redis)
            let logs = InMemoryLogHandler()
            var logger = Logger(label: "test.feed") { _ in logs }
            logger.logLevel = .debug
            let feed = JobChangeFeed(store: store, eventLoop: MultiThreadedEventLoopGroup.singleton.any(), sweepInterval: .seconds(30), logger: logger)
            let log = UpdateLog()
            let id = newID()
            _ = try await store.create(id: id, function: "f", unique: nil)
            log.follow(id)
            let running = Task { try await feed.run(consumer: log) }
            try await withTimeout(.seconds(10), "the feed's first subscription") { try await feed.waitUntilReady() }
            let connects = { logs.entries.filter { $0.message.description == "job change feed cannot connect its reader" }.count }

            server.kill()
            feed.rereadFollowed()  // the read fails: the reader reconnects, pausing longer after each failure
            try await eventually("the reader to fail to reconnect three times") { connects() >= 3 }
            running.cancel()
            _ = await running.result
            let attemptsWhenStopped = connects()
            // The pause after the third failure is at most 400 ms: a reconnect still on its way would have been made.
            try await Task.sleep(for: .seconds(2))
            #expect(connects() == attemptsWhenStopped, "the reader tried to connect after run() returned")
        }
    }

    /// A re-read fetches what followers can be shown, not the whole record: a large field no event shows (a worker's
    /// own, here) is not sent again for each change. Counted in bytes by the test's own redis-server.
    @Test func rereadFetchesOnlyWhatFollowersSee() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            try await withFeed(store) { _, log in
                let id = newID()
                _ = try await store.create(id: id, function: "f", unique: nil)
                let unseen = String(repeating: "x", count: 256 * 1024)
                try await store.redis.send(["HSET", "\(store.schema.jobKey(id))", "worker_notes", "\(unseen)"])
                log.follow(id)
                let before = try await Self.bytesSent(by: store)
                try await store.reportProgress(id, numerator: 1, denominator: 2, message: ByteBuffer(string: "half"))
                try await eventually("the progress update") { log.all.contains { $0.record?.message == ByteBuffer(string: "half") } }
                let sent = try await Self.bytesSent(by: store) - before
                #expect(sent < 16 * 1024, "a progress re-read sent \(sent) bytes")
                #expect(log.all.last?.record?.numerator == 1)
            }
        }
    }

    /// Notifications that arrive together are read together: a job written three times in one `MULTI` is re-read once,
    /// not once for the first notification and again for the others. Counted by the test's own redis-server.
    @Test func notificationsArrivingTogetherAreReadOnce() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            try await withFeed(store) { _, log in
                let id = newID()
                _ = try await store.create(id: id, function: "f", unique: nil)
                // The creation's own notification may still be on its way: wait until a later change of another job
                // has been read (notifications come in order), so that it has passed while `id` was not followed.
                let marker = newID()
                _ = try await store.create(id: marker, function: "f", unique: nil)
                log.follow(marker)
                try await store.redis.send(["HSET", "\(store.schema.jobKey(marker))", "message", "marker"])
                try await eventually("the marker's update") { log.all.contains { $0.record?.message == ByteBuffer(string: "marker") } }
                try await Task.sleep(for: .milliseconds(200))  // time for any read still on its way to end
                log.follow(id)
                let key = RedisArgument(store.schema.jobKey(id))
                let updatesBefore = log.all.count
                let readsBefore = try await Self.recordReads(store)
                _ = try await store.redis.pipeline([
                    ["MULTI"], ["HSET", key, "message", "one"], ["HSET", key, "message", "two"], ["HSET", key, "message", "three"], ["EXEC"],
                ])
                try await eventually("the last write's update") { log.all.contains { $0.record?.message == ByteBuffer(string: "three") } }
                try await Task.sleep(for: .milliseconds(200))  // time for any further read to happen
                #expect(try await Self.recordReads(store) - readsBefore == 1)
                #expect(log.all.count - updatesBefore == 1)
            }
        }
    }

    /// `isReading(_:)` names the jobs of the read on its way, and no others (a `WATCH` activated meanwhile asks for a
    /// read of its own job only if that job is among them). The read is held on its way by `CLIENT PAUSE`.
    @Test func readInFlightIsKnownPerJob() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            try await withFeed(store) { feed, log in
                let (changed, other) = (newID(), newID())
                for id in [changed, other] {
                    _ = try await store.create(id: id, function: "f", unique: nil)
                    log.follow(id)
                }
                try await Task.sleep(for: .milliseconds(200))  // the creations' reads are done
                _ = try await store.redis.pipeline([
                    ["HSET", RedisArgument(store.schema.jobKey(changed)), "message", "held"], ["CLIENT", "PAUSE", "1500", "ALL"],
                ])
                try await eventually("the read of the changed job on its way") {
                    try await feed.eventLoop.submit { feed.isReading(changed) }.get()
                }
                #expect(try await feed.eventLoop.submit { feed.isReading(other) }.get() == false)
                try await eventually("the held read's update") { log.all.contains { $0.record?.message == ByteBuffer(string: "held") } }
                #expect(try await feed.eventLoop.submit { feed.isReading(changed) }.get() == false)
            }
        }
    }

    /// Bytes redis-server has sent to all its clients (`INFO stats`).
    static func bytesSent(by store: RedisJobStore) async throws -> Int {
        let info = try #require(try await store.redis.send(["INFO", "stats"]).string)
        let line = try #require(info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("total_net_output_bytes:") })
        return try #require(Int(line.dropFirst("total_net_output_bytes:".count)))
    }

    /// Commands that read a whole job hash or fields of it, so far.
    static func recordReads(_ store: RedisJobStore) async throws -> Int {
        let calls = try await StoreCommandsTests.commandCalls(store)
        return calls["hgetall", default: 0] + calls["hmget", default: 0]
    }

    /// redis-server killed with -9 in the middle of 1,000 completions and restarted on the same port: every
    /// completion is observed, none twice as a terminal event.
    @Test func redisKilledDuringCompletions() async throws {
        // Append-only with fsync per write, as production should run: a kill loses no acknowledged write.
        try await withLocalServer(.redis, arguments: ["--appendonly", "yes", "--appendfsync", "always"]) { server in
            let store = makeStore(server)
            try await withFeed(store, sweep: .seconds(2)) { _, log in
                let ids = (0..<1000).map { _ in newID() }
                for id in ids {
                    _ = try await store.create(id: id, function: "f", unique: nil)
                    log.follow(id)
                }
                for (index, id) in ids.enumerated() {
                    if index == 400 {
                        // kill -9, then start again on the same port; the restarted server has notifications
                        // off again (CONFIG SET is not persisted) and the feed must switch them back on.
                        try await server.restart()
                    }
                    // A worker retries until Redis takes the outcome.
                    try await eventuallyValue { try await store.complete(id, result: ByteBuffer(string: "r\(index)")) }
                }
                try await eventually("all 1,000 completions", timeout: .seconds(60)) {
                    Set(log.all.filter { $0.record?.state == .done }.map(\.id)).count == ids.count
                }
                let terminalCounts = Dictionary(grouping: log.all.filter { $0.record?.state.isTerminal ?? true }, by: \.id).mapValues(\.count)
                #expect(terminalCounts.values.allSatisfy { $0 == 1 }, "no completion twice")
                #expect(log.all.allSatisfy { $0.record != nil }, "no record was lost")
            }
        }
    }
}
