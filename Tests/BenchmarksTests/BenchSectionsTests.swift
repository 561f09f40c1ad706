@testable import Benchmarks
import Foundation
import LocalServers
import Testing

/// `--only`, the CPU figures read from /proc, and a report of some sections: shapes and parsing, never timings.
@Suite struct BenchSectionsTests {
    @Test func sectionListsParse() throws {
        #expect(try BenchmarkSection.parse("command-worker,php-worker") == [.commandWorker, .phpWorker])
        #expect(try BenchmarkSection.parse(" push , large-results,") == [.push, .largeResults])
        #expect(Set(BenchmarkSection.allCases.map(\.rawValue)).count == BenchmarkSection.allCases.count)
        for bad in ["", ",", "submit,bogus", "Submit"] {
            #expect(throws: (any Error).self, "\(bad)") { try BenchmarkSection.parse(bad) }
        }
        let error = try #require(throws: (any Error).self) { try BenchmarkSection.parse("bogus") }
        #expect("\(error)".contains("bogus") && "\(error)".contains("command-worker"), "\(error)")
    }

    /// Fields 14–17 of /proc/<pid>/stat, counted after the name, which may hold spaces and parentheses.
    @Test func cpuTimesParse() throws {
        let line = "4242 (php (worker) 2) S 1 4242 4242 0 -1 4194560 1180 0 0 0 37 12 5 3 20 0 1 0 812 250000000 4000 18446744073709551615"
        #expect(ProcessCPUTime.ticks(statLine: line, includingReaped: false) == 49)
        #expect(ProcessCPUTime.ticks(statLine: line, includingReaped: true) == 57)
        #expect(ProcessCPUTime.ticks(statLine: "4242 (short) S 1 2 3", includingReaped: false) == nil)
        #expect(ProcessCPUTime.ticks(statLine: "no name here", includingReaped: false) == nil)
        #expect(ProcessCPUTime.ticks(statLine: line.replacingOccurrences(of: " 37 ", with: " x "), includingReaped: false) == nil)
        // This process's own line parses.
        let own = try ProcessCPUTime.seconds(pid: getpid(), includingReaped: true)
        #expect(own.isFinite && own >= 0)
    }

    /// A job's end, written by its program (bash's `$EPOCHREALTIME`, PHP's `microtime(true)`) as the last line of its
    /// result, back on the continuous clock.
    @Test func exitStampsParse() throws {
        var wallClock = timespec()
        clock_gettime(CLOCK_REALTIME, &wallClock)
        let microseconds = String(Int(wallClock.tv_nsec) / 1_000)
        let stamp = "\(wallClock.tv_sec).\(String(repeating: "0", count: 6 - microseconds.count))\(microseconds)"
        for result in ["payload\n\(stamp)", "\n\(stamp.replacingOccurrences(of: ".", with: ","))", stamp] {
            let instant = try #require(BenchmarkStack.endStamped(in: result), "\(result)")
            let since = ContinuousClock.now - instant
            // Written just now: within the test's own run, and not in the future.
            #expect(since >= .zero && since < .seconds(60), "\(result): \(since)")
        }
        let earlier = try #require(BenchmarkStack.endStamped(in: "\(wallClock.tv_sec - 10).000000"))
        #expect(ContinuousClock.now - earlier >= .seconds(9))
        for bad in ["", "payload", "payload\n1700000000", "1700000000.1234", "x.123456", "1.2.3"] {
            #expect(BenchmarkStack.endStamped(in: bad) == nil, "\(bad)")
        }
    }

    /// The copy of the README's PHP worker that reports each job's end serves a function of its own; a README whose
    /// worker no longer has the edited lines stops the bench with a clear error rather than a copy that does nothing.
    @Test func phpWorkerCopyReportsItsEnd() throws {
        let source = try BenchmarkStack.readmeExample("php-worker")
        let copy = try BenchmarkStack.phpWorkerStampingItsEnd(source)
        #expect(copy.contains("addFunction('\(BenchmarkStack.stampedPHPFunction)'") && !copy.contains("addFunction('reverse'"))
        #expect(copy.contains("sprintf('%.6F', microtime(true))"))
        let error = try #require(throws: (any Error).self) {
            try BenchmarkStack.phpWorkerStampingItsEnd(source.replacingOccurrences(of: "strrev($payload)", with: "str_rot13($payload)"))
        }
        #expect("\(error)".contains("strrev"), "\(error)")
    }

    /// A report of some sections: the others are absent from its JSON and its table.
    @Test func partialReportShape() throws {
        let section = BenchmarkReport.UserWorker(
            what: "w", worker: "jobgate worker --concurrency 4 -- cat", jobs: 10, inFlight: 4, jobsPerSecond: 100,
            latency: BenchmarkReport.Distribution(samples: 1, meanMicroseconds: 1, p50Microseconds: 1, p99Microseconds: 1, p999Microseconds: 1, maxMicroseconds: 1),
            latencyFromEnd: BenchmarkReport.Distribution(samples: 1, meanMicroseconds: 1, p50Microseconds: 1, p99Microseconds: 1, p999Microseconds: 1, maxMicroseconds: 1),
            cpuSecondsPer1000Jobs: [.init(process: "gateway", seconds: 0.25), .init(process: "worker", seconds: 1.5)]
        )
        var report = BenchmarkReport(
            machine: .init(cpus: 2, cpuModel: "m", memoryGiB: 1, kernel: "k", build: "release", date: "d", openFilesLimit: 1024),
            options: .quick,
            sections: [.commandWorker]
        )
        report.commandWorker = section
        let json = try JSONEncoder().encode(report)
        let object = try #require(try JSONSerialization.jsonObject(with: json) as? [String: Any])
        #expect(object["submit"] == nil && object["phpWorker"] == nil && object["commandWorker"] != nil)
        #expect(object["sections"] as? [String] == ["command-worker"])
        let decoded = try JSONDecoder().decode(BenchmarkReport.self, from: json)
        #expect(decoded.commandWorker?.cpuSecondsPer1000Jobs.map(\.process) == ["gateway", "worker"] && decoded.submit == nil)
        #expect(report.table.contains("8. command worker") && report.table.contains("gateway 0.250, worker 1.500; all 1.750"))
        #expect(!report.table.contains("1. submit") && !report.table.contains("9. php worker"))
    }

    /// `jobgate bench --only` with the worker sections runs just those, against real servers and workers.
    @Test func onlyWorkerSections() async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-bench-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: file) }
        let run = try await runProgram(
            jobgateExecutable(), ["bench", "--quick", "--only", "php-worker,command-worker", "--json", file.path], timeout: .seconds(300)
        )
        try #require(run.status == 0, "jobgate bench failed (\(run.status)):\n\(run.outputText)\n\(run.errors)")
        let report = try JSONDecoder().decode(BenchmarkReport.self, from: Data(contentsOf: file))
        #expect(report.sections == [.commandWorker, .phpWorker])
        #expect(report.submit == nil && report.endToEnd == nil && report.pushLatency == nil && report.swiftWorker == nil)
        for section in [report.commandWorker, report.phpWorker] {
            Self.checkWorkerSection(try #require(section), options: report.options, serversStarted: true)
        }
        #expect(run.outputText.contains("8. command worker") && run.outputText.contains("9. php worker") && !run.outputText.contains("1. submit"))

        let refused = try await runProgram(jobgateExecutable(), ["bench", "--only", "submit,bogus"], timeout: .seconds(60))
        #expect(refused.status != 0 && refused.errors.contains("bogus"), "\(refused.errors)")
    }

    /// Every figure of a worker section is there and sane: a CPU figure per process (gateway, the servers the bench
    /// started, the worker), none negative, and some CPU spent in all; the latency from the job's end too.
    static func checkWorkerSection(_ section: BenchmarkReport.UserWorker, options: BenchmarkOptions, serversStarted: Bool) {
        #expect(section.jobs == options.workerJobs && section.inFlight == options.connections * options.endToEndWindow)
        #expect(section.jobsPerSecond.isFinite && section.jobsPerSecond > 0)
        #expect(section.latency.samples == options.workerLatencySamples)
        #expect(section.latency.p50Microseconds > 0 && section.latency.p50Microseconds <= section.latency.p99Microseconds)
        #expect(section.latency.p99Microseconds <= section.latency.p999Microseconds && section.latency.p999Microseconds <= section.latency.maxMicroseconds)
        let fromEnd = section.latencyFromEnd
        #expect(fromEnd.samples == options.workerLatencySamples)
        #expect(fromEnd.p50Microseconds > 0 && fromEnd.p50Microseconds <= fromEnd.p99Microseconds && fromEnd.p99Microseconds <= fromEnd.maxMicroseconds)
        let processes = section.cpuSecondsPer1000Jobs.map(\.process)
        #expect(processes.first == "gateway" && processes.count == (serversStarted ? 4 : 2), "\(processes)")
        if serversStarted { #expect(processes[1] == "redis-server" && processes[2] == "gearmand") }
        for figure in section.cpuSecondsPer1000Jobs {
            #expect(figure.seconds.isFinite && figure.seconds >= 0, "\(figure.process): \(figure.seconds)")
        }
        #expect(section.cpuSecondsPer1000Jobs.reduce(0) { $0 + $1.seconds } > 0)
    }
}
