import Foundation
import Gearman
import JobStore
import LocalServers
import Logging
import NIOCore
import Redis
import Synchronization
import Testing

func makeStore(_ server: LocalServer, configuration: JobStoreConfiguration = .init()) -> RedisJobStore {
    let redis = RedisConnectionPool(configuration: RedisConnectionConfiguration(host: server.host, port: server.port, commandTimeout: .seconds(5)), size: 2)
    return RedisJobStore(redis: redis, configuration: configuration)
}

func newID() -> JobID { JobID(rawValue: UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""))! }

/// Job records in a real redis-server.
@Suite("Job store", .timeLimit(.minutes(2)))
struct JobStoreTests {
    /// queued → running → progress → done, with the result, the TTL the submitter asked for, and the location.
    @Test func lifecycle() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            let id = newID()
            #expect(try await store.create(id: id, function: "resize", unique: nil, resultTTL: 600) == .created)
            var record = try #require(try await store.record(id))
            #expect(record.state == .queued && record.function == "resize" && record.result == nil)

            try await store.setLocation(id, handle: "H:test:1", server: "127.0.0.1:4730")
            let ttl = try await store.markRunning(id, function: "resize", handle: "H:test:1", server: "127.0.0.1:4730")
            #expect(ttl == 600)
            try await store.reportProgress(id, numerator: 3, denominator: 10, message: ByteBuffer(string: "resizing"))
            record = try #require(try await store.record(id))
            #expect(record.state == .running && record.numerator == 3 && record.denominator == 10)
            #expect(record.message == ByteBuffer(string: "resizing") && record.handle == "H:test:1")

            let result = ByteBuffer(bytes: [0, 13, 10, 255, 0])
            try await store.complete(id, result: result, ttl: ttl)
            record = try #require(try await store.record(id))
            #expect(record.state == .done && record.result == result && record.finished != nil)
            let remaining = try await store.redis.send(["TTL", "\(store.schema.jobKey(id))"]).int
            #expect((590...600).contains(remaining ?? 0))
        }
    }

    /// A finished record is never reopened by a late running or progress write (a requeued duplicate).
    @Test func finishedRecordsStayFinished() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            let id = newID()
            _ = try await store.create(id: id, function: "f", unique: nil)
            try await store.fail(id, reason: ByteBuffer(string: "disk full"))
            try await store.markRunning(id, function: "f", handle: "H:x:2", server: "s")
            try await store.reportProgress(id, numerator: 1, denominator: 2)
            let record = try #require(try await store.record(id))
            #expect(record.state == .failed && record.reason == ByteBuffer(string: "disk full") && record.numerator == 0)
        }
    }

    /// A job a gateway ended as lost says so in its record, read whole or without its outcome; a worker's failure
    /// does not, even with a reason spelled like a lost one, nor does a late worker's failure over a lost job.
    @Test func lostIsAKindOfOutcome() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            let (lost, failed, failedLate) = (newID(), newID(), newID())
            for id in [lost, failed, failedLate] { _ = try await store.create(id: id, function: "f", unique: nil) }
            #expect(try await store.markLost(lost, reason: "lost: gearmand no longer knows the job"))
            try await store.fail(failed, reason: ByteBuffer(string: "lost: the printer caught fire"))
            #expect(try await !store.markLost(failed, reason: "lost: too late"), "a finished job is not ended again")
            #expect(try await store.markLost(failedLate, reason: "lost: gone"))
            try await Task.sleep(for: .milliseconds(5))  // the late worker's write is in a later millisecond
            try await store.fail(failedLate, reason: ByteBuffer(string: "came back and failed"))
            let ids = [lost, failed, failedLate]
            for records in [try await store.records(ids), try await store.recordsWithoutOutcome(ids)] {
                #expect(records.map { $0?.state } == [.failed, .failed, .failed])
                #expect(records.map { $0?.isLost } == [true, false, false])
            }
            #expect(try await store.record(lost)?.reason == ByteBuffer(string: "lost: gearmand no longer knows the job"))
        }
    }

    /// Fields a writer keeps in the record for itself (the legacy bridge's fence) go into unfinished records only,
    /// and read back one per job.
    @Test func fieldsOfAWritersOwn() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            let (open, finished, neverCreated) = (newID(), newID(), newID())
            for id in [open, finished] { _ = try await store.create(id: id, function: "f", unique: nil) }
            try await store.complete(finished, result: ByteBuffer(string: "r"))
            try await store.setFields([
                (open, ["fence": ByteBuffer(string: "7"), JobField.handle: ByteBuffer(string: "H:x:1")]),
                (finished, ["fence": ByteBuffer(string: "8")]),
            ])
            #expect(try await store.field("fence", of: [open, finished, neverCreated]) == [ByteBuffer(string: "7"), nil, nil])
            #expect(try await store.record(open)?.handle == "H:x:1")
        }
    }

    /// Same function and unique while the first job is unfinished → joined; once it finished → a new job.
    @Test func coalescing() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            let first = newID()
            #expect(try await store.create(id: first, function: "f", unique: "order-7") == .created)
            #expect(try await store.create(id: newID(), function: "f", unique: "order-7") == .joined(first))
            #expect(try await store.create(id: newID(), function: "other", unique: "order-7") == .created)
            try await store.markRunning(first, function: "f", handle: "H:x:1", server: "s")
            #expect(try await store.create(id: newID(), function: "f", unique: "order-7") == .joined(first))
            try await store.complete(first, result: ByteBuffer(string: "r"))
            let second = newID()
            #expect(try await store.create(id: second, function: "f", unique: "order-7") == .created)
            #expect(try await store.record(first)?.result == ByteBuffer(string: "r"))
            #expect(try await store.record(second)?.state == .queued)
        }
    }

    /// Nobody ever reads `done` without its result: the outcome is one MULTI/EXEC.
    @Test func doneNeverWithoutResult() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            let ids = (0..<200).map { _ in newID() }
            for id in ids { _ = try await store.create(id: id, function: "f", unique: nil) }
            let reader = Task {
                var seenDone = 0
                while seenDone < ids.count {
                    seenDone = 0
                    for record in try await store.records(ids) {
                        guard let record, record.state == .done else { continue }
                        #expect(record.result == ByteBuffer(string: "result of \(record.id)"))
                        seenDone += 1
                    }
                }
                return seenDone
            }
            for id in ids { try await store.complete(id, result: ByteBuffer(string: "result of \(id)")) }
            #expect(try await withTimeout(.seconds(30), "the reader") { try await reader.value } == ids.count)
        }
    }

    /// A record left by an earlier job whose handle gearmand reused after a restart never shows as the new job's.
    @Test func reusedHandleNeverShowsStaleResult() async throws {
        try await withLocalServer(.redis) { redisServer in
            try await withLocalServer(.gearmand) { gearmand in
                let store = makeStore(redisServer)
                let gearman = GearmanClient(address: GearmanServerAddress(host: gearmand.host, port: gearmand.port))
                let old = newID()
                _ = try await store.create(id: old, function: "f", unique: nil)
                let oldHandle = try await gearman.submitBackground(GearmanJobRequest(function: "f", unique: old.rawValue, payload: ByteBuffer()))
                try await store.setLocation(old, handle: oldHandle, server: gearmand.address)
                try await store.complete(old, result: ByteBuffer(string: "old result"))

                try await gearmand.restart()  // handles start again at 1
                let new = newID()
                _ = try await store.create(id: new, function: "f", unique: nil)
                let newHandle = try await eventuallyValue { try await gearman.submitBackground(GearmanJobRequest(function: "f", unique: new.rawValue, payload: ByteBuffer())) }
                #expect(newHandle == oldHandle, "gearmand reused the handle")
                try await store.setLocation(new, handle: newHandle, server: gearmand.address)

                let record = try #require(try await store.record(new))
                #expect(record.state == .queued && record.result == nil && record.handle == newHandle)
                #expect(try await store.record(old)?.result == ByteBuffer(string: "old result"))
                await gearman.shutdown()
            }
        }
    }

    /// Notifications are switched on where CONFIG is allowed; elsewhere the error names the redis.conf line.
    @Test func keyspaceNotificationsEnabledOrExplained() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            try await KeyspaceNotifications.ensureEnabled(on: store.redis)
            let flags = try await store.redis.send(["CONFIG", "GET", "notify-keyspace-events"]).array?[1].string ?? ""
            #expect(Set(flags).isSuperset(of: ["E", "h", "x"]), "\(flags)")
        }
        try await withLocalServer(.redis, arguments: ["--rename-command", "CONFIG", ""]) { server in
            let store = makeStore(server)
            let error = await #expect(throws: JobStoreError.self) { try await KeyspaceNotifications.ensureEnabled(on: store.redis) }
            #expect(error?.code == .notificationsDisabled)
            #expect(error?.message.contains("notify-keyspace-events Ehtx") == true, "\(error?.message ?? "")")
        }
    }

    /// Redis unreachable or refusing our password → typed errors.
    @Test func backendErrors() async throws {
        let nowhere = makeStoreAt(port: try freeLoopbackPort())
        let down = await #expect(throws: JobStoreError.self) { try await nowhere.record(newID()) }
        #expect(down?.code == .backendDown)
        try await withLocalServer(.redis) { server in
            _ = try await makeStore(server).redis.send(["CONFIG", "SET", "requirepass", "secret"])
            let wrong = RedisJobStore(
                redis: RedisConnectionPool(
                    configuration: RedisConnectionConfiguration(host: server.host, port: server.port, authentication: .init(password: "wrong")),
                    size: 1
                )
            )
            let denied = await #expect(throws: JobStoreError.self) { try await wrong.record(newID()) }
            #expect(denied?.message.contains("WRONGPASS") == true || denied?.message.contains("invalid") == true, "\(denied?.message ?? "")")
        }
    }
}

func makeStoreAt(port: Int) -> RedisJobStore {
    RedisJobStore(redis: RedisConnectionPool(configuration: RedisConnectionConfiguration(host: "127.0.0.1", port: port, connectTimeout: .seconds(1)), size: 1))
}

/// Retries `body` until it succeeds (a client reconnecting after a restart), for at most 10 s.
func eventuallyValue<T: Sendable>(_ body: () async throws -> T) async throws -> T {
    let deadline = ContinuousClock.now + .seconds(10)
    while true {
        do {
            return try await body()
        } catch {
            guard ContinuousClock.now < deadline else { throw error }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}
