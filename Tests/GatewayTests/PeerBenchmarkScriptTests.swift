import Foundation
import LocalServers
import Testing

/// `Deploy/bench-peers.sh`, the comparison with Celery and RQ, works: its jobgate side runs here against real servers
/// (the Celery and RQ sides need PyPI, so the suite leaves them to the full run).
@Suite("Peer comparison script", .timeLimit(.minutes(5)))
struct PeerBenchmarkScriptTests {
    static let script = DeployScriptTests.deploy.appendingPathComponent("bench-peers.sh").path
    static let columns = ["system", "jobs/s", "p50", "p99", "server + worker CPU-s per 1,000 jobs"]

    /// `--quick --only jobgate` starts redis-server, gearmand and a gateway, runs jobs through `jobgate worker -- cat`
    /// and through the README's PHP worker, and prints a table with every column filled for both; everything it
    /// started (servers and workers) is stopped when it ends, by the pids it recorded.
    @Test func quickJobgateRunFillsEveryColumnAndStopsWhatItStarted() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-peers-pids-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        var started: [pid_t: String] = [:]
        defer { for (pid, start) in started where DeployScriptTests.isRunning((pid, start)) { kill(pid, SIGKILL) } }

        let run = try LocalProcess(
            Self.script, ["--quick", "--only", "jobgate", "--jobgate", jobgateExecutable()],
            environment: [StartedProcesses.variable: folder.path]
        )
        defer { run.stop() }
        let deadline = ContinuousClock.now + .seconds(240)
        while run.exitStatus == nil {
            for record in (try? DeployScriptTests.records(folder)) ?? [] { started[record.pid] = record.started }
            guard ContinuousClock.now < deadline else { throw DeployTestFailure(description: "no end after 240 s: \(run.log)") }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(run.exitStatus == 0, "\(run.log)")

        // redis-server, gearmand, the gateway, `jobgate worker` and four PHP workers.
        #expect(started.count >= 8, "recorded: \(started)")
        #expect(started.allSatisfy { !DeployScriptTests.isRunning(($0.key, $0.value)) }, "left running: \(started)")
        #expect(try DeployScriptTests.records(folder).isEmpty, "the records are removed")

        let rows = run.log.split(separator: "\n").filter { $0.hasPrefix("| ") }.map { line in
            line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
        }
        #expect(rows.first == Self.columns, "\(run.log)")
        for system in ["jobgate, `jobgate worker --concurrency 4 -- cat`", "jobgate, README's PHP worker"] {
            let row = try #require(rows.first { $0.first?.hasPrefix(system) == true }, "no row for \(system): \(run.log)")
            try #require(row.count == Self.columns.count, "\(row)")
            #expect(row[1].wholeMatch(of: /[1-9][0-9,]*/) != nil, "jobs/s: \(row)")
            #expect(row[2].wholeMatch(of: /[0-9][0-9.,]* ms/) != nil, "p50: \(row)")
            #expect(row[3].wholeMatch(of: /[0-9][0-9.,]* ms/) != nil, "p99: \(row)")
            #expect(row[4].wholeMatch(of: /[0-9]+\.[0-9]{2} \+ [0-9]+\.[0-9]{2}/) != nil, "CPU: \(row)")
        }
    }
}
