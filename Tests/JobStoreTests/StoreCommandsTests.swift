import JobStore
import LocalServers
import NIOCore
import Redis
import Testing

/// What the store costs Redis per job, counted by a real redis-server (`INFO commandstats`), and the script cache
/// it relies on.
@Suite("Job store commands", .timeLimit(.minutes(2)))
struct StoreCommandsTests {
    /// Calls per command name since the last `CONFIG RESETSTAT` (`EVALSHA`'s inner commands count too).
    static func commandCalls(_ store: RedisJobStore) async throws -> [String: Int] {
        let info = try #require(try await store.redis.send(["INFO", "commandstats"]).string)
        var calls: [String: Int] = [:]
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
            let name = line.dropFirst("cmdstat_".count).prefix { $0 != ":" }
            let count = line.split(separator: "calls=").dropFirst().first?.prefix { $0.isNumber }
            calls[String(name)] = count.flatMap { Int($0) }
        }
        return calls
    }

    /// Scripts cross the wire by their SHA1: a job's whole life sends no script text once Redis has each script,
    /// and a job without a unique key is created without any script.
    @Test func scriptsAreSentByTheirSHA1() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            _ = try await store.redis.send(["CONFIG", "RESETSTAT"])
            let jobs = 20
            for number in 0..<jobs {
                let (plain, coalescing) = (newID(), newID())
                let created = try await store.create([
                    .init(id: plain, function: "f", unique: nil), .init(id: coalescing, function: "f", unique: "u\(number)"),
                ])
                #expect(created.map { try? $0.get() } == [.created, .created])
                for id in [plain, coalescing] {
                    try await store.markRunning(id, function: "f", handle: "H:x:\(number)", server: "s")
                    try await store.reportProgress(id, numerator: 1, denominator: 2)
                }
                try await store.complete(plain, result: ByteBuffer(string: "r"))
                #expect(try await store.markFailed(coalescing, reason: "lost"))
            }
            let calls = try await Self.commandCalls(store)
            // At most one EVAL per script (the first call of each, answered NOSCRIPT, goes again with the text).
            #expect((calls["eval"] ?? 0) <= 4, "\(calls)")
            // Per job pair: one create script (the unique one), two running and two progress updates, the worker's
            // outcome and the gateway's finish-unless-finished (each appends to the completion log).
            #expect(calls["eval", default: 0] + calls["evalsha", default: 0] >= 7 * jobs, "\(calls)")
            #expect(calls["evalsha", default: 0] <= 7 * jobs + 4, "\(calls)")
        }
    }

    /// After `SCRIPT FLUSH` (or a Redis restart) every script call still works: it goes again with the text.
    @Test func scriptsSurviveAFlushedCache() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            let first = newID()
            #expect(try await store.create(id: first, function: "f", unique: "order-1") == .created)
            _ = try await store.redis.send(["SCRIPT", "FLUSH"])
            #expect(try await store.create(id: newID(), function: "f", unique: "order-1") == .joined(first))
            _ = try await store.redis.send(["SCRIPT", "FLUSH"])
            #expect(try await store.markRunning(first, function: "f", handle: "H:x:1", server: "s") == store.configuration.resultTTL)
            _ = try await store.redis.send(["SCRIPT", "FLUSH"])
            try await store.reportProgress(first, numerator: 1, denominator: 3)
            _ = try await store.redis.send(["SCRIPT", "FLUSH"])
            try await store.setFields([(first, [JobField.handle: ByteBuffer(string: "H:x:2"), JobField.server: ByteBuffer(string: "s2")])])
            _ = try await store.redis.send(["SCRIPT", "FLUSH"])
            #expect(try await store.completeUnlessFinished(first, result: ByteBuffer(string: "ok")))
            #expect(try await !store.markFailed(first, reason: "late"))
            let record = try #require(try await store.record(first))
            #expect(record.state == .done && record.result == ByteBuffer(string: "ok") && record.numerator == 1 && record.handle == "H:x:2")
        }
    }

    /// A batch mixing jobs with and without unique keys: each answered in its place, later uniques join earlier ones,
    /// every record has its in-flight TTL and every job its unaccepted-index entry.
    @Test func mixedBatchKeepsOrderAndTTLs() async throws {
        try await withLocalServer(.redis) { server in
            let store = makeStore(server)
            let ids = (0..<5).map { _ in newID() }
            let outcomes = try await store.create([
                .init(id: ids[0], function: "f", unique: "a"), .init(id: ids[1], function: "f", unique: nil),
                .init(id: ids[2], function: "f", unique: "a"), .init(id: ids[3], function: "f", unique: nil, resultTTL: 60),
                .init(id: ids[4], function: "g", unique: "a"),
            ]).map { try $0.get() }
            #expect(outcomes == [.created, .created, .joined(ids[0]), .created, .created])
            for id in [ids[0], ids[1], ids[3], ids[4]] {
                let ttl = try await store.redis.send(["TTL", "\(store.schema.jobKey(id))"]).int ?? -1
                #expect(ttl > 86_400, "TTL of \(id): \(ttl)")
                #expect(try await store.record(id)?.state == .queued)
                #expect(try await store.redis.send(["SISMEMBER", "\(store.schema.unacceptedKey)", "\(id.rawValue)"]).int == 1)
            }
            #expect(try await store.record(ids[3])?.resultTTL == 60)
            #expect(try await store.record(ids[2]) == nil)
        }
    }
}
