import Foundation
import Gearman
import InMemoryLogging
import JobStore
import LocalServers
import Logging
import NIOCore
import Testing
import WorkerRuntime

/// The worker tells operators when a backend goes away (once, at warning) and when it is back (at notice, with
/// how long it was gone), against real servers that the tests stop and start again.
@Suite("Worker outage logs", .timeLimit(.minutes(2)))
struct WorkerOutageLogTests {
    /// Redis down while a job's outcome waits to be stored: one warning, then one notice with `redis.outage_ms`.
    @Test func redisOutage() async throws {
        try await withWorkerServers { redis, gearmand, store, gearman in
            let logs = InMemoryLogHandler()
            let finish = Gate()
            let worker = try makeWorker(gearmand, store: store, logger: Logger(label: "test.worker") { _ in logs }) { registry in
                registry.register("slow") { _, _ in
                    await finish.wait()
                    return ByteBuffer(string: "ok")
                }
            }
            try await withRunning(worker) {
                let (id, _) = try await submit("slow", "x", store: store, gearman: gearman)
                try await eventually("running") { try await store.record(id)?.state == .running }
                redis.kill()
                finish.open()
                try await eventually("the outage to be logged") { logs.entries.contains { $0.level == .warning } }
                try await Task.sleep(for: .milliseconds(500))
                try await redis.launch()
                try await eventually("the stored result", timeout: .seconds(15)) { (try? await store.record(id))??.state == .done }
            }
            let warnings = logs.entries.filter { $0.level == .warning }
            #expect(warnings.map(\.message.description) == ["Redis unreachable"], "one warning for one outage, not one per retry")
            let notices = logs.entries.filter { $0.level == .notice }
            #expect(notices.map(\.message.description) == ["Redis reachable again"])
            let outage = notices.first?.metadata["redis.outage_ms"].flatMap { Int("\($0)") } ?? 0
            #expect(outage >= 500, "Redis was gone at least 500 ms")
        }
    }

    /// `jobgate worker --log-format json`: every line is a JSON object, and the gearmand outage is there as fields.
    @Test func jsonLogsOfTheCommand() async throws {
        try await withWorkerServers { redis, gearmand, _, gearman in
            let process = try startWorkerCommand(gearmand: gearmand, redis: redis, ["--log-format", "json", "--function", "noop", "--", "/bin/true"])
            defer { process.stop() }
            try await waitForWorker(gearman, function: "noop")
            gearmand.kill()
            try await eventually("the outage to be logged") { process.log.contains("gearmand unreachable") }
            try await Task.sleep(for: .milliseconds(300))
            try await gearmand.restart()
            try await eventually("the recovery to be logged", timeout: .seconds(15)) { process.log.contains("gearmand reachable again") }
            let entries = try process.log.split(separator: "\n").map { line in
                try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not a JSON object: \(line)")
            }
            let notice = try #require(entries.first { $0["message"] as? String == "gearmand reachable again" })
            #expect(notice["level"] as? String == "notice")
            #expect(notice["label"] as? String == "jobgate.worker")
            #expect(notice["gearman.server"] as? String == gearmand.address)
            #expect((notice["gearman.outage_ms"] as? String).flatMap { Int($0) }.map { $0 >= 300 } == true)
            #expect(entries.allSatisfy { $0["time"] is String && $0["level"] is String && $0["message"] is String })
        }
    }

    /// gearmand killed and started again: one warning, then one notice with `gearman.outage_ms`.
    @Test func gearmandOutage() async throws {
        try await withWorkerServers { _, gearmand, store, _ in
            let logs = InMemoryLogHandler()
            let worker = try makeWorker(gearmand, store: store, logger: Logger(label: "test.worker") { _ in logs }) { registry in
                registry.register("noop") { _, _ in ByteBuffer() }
            }
            try await withRunning(worker) {
                try await Task.sleep(for: .milliseconds(300))
                gearmand.kill()
                try await eventually("the outage to be logged") { logs.entries.contains { $0.level == .warning } }
                try await Task.sleep(for: .milliseconds(500))
                try await gearmand.restart()
                try await eventually("the recovery to be logged", timeout: .seconds(15)) { logs.entries.contains { $0.level == .notice } }
            }
            let server = "\(gearmand.gearmanAddress)"
            let warnings = logs.entries.filter { $0.level == .warning }
            #expect(warnings.map(\.message.description) == ["gearmand unreachable"])
            #expect(warnings.first?.metadata["gearman.server"] == "\(server)")
            let notices = logs.entries.filter { $0.level == .notice }
            #expect(notices.map(\.message.description) == ["gearmand reachable again"])
            #expect((notices.first?.metadata["gearman.outage_ms"].flatMap { Int("\($0)") } ?? 0) >= 500)
        }
    }
}
