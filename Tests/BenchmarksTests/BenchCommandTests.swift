import Benchmarks
import Foundation
import LocalServers
import Testing

/// `jobgate bench --quick` runs every section against real servers and writes a complete report. Speed is not
/// checked (the machine is shared): only that every figure is a positive, finite number.
@Suite struct BenchCommandTests {
    @Test func quickRunReportsEverySection() async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-bench-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: file) }
        let run = try await runProgram(jobgateExecutable(), ["bench", "--quick", "--json", file.path], timeout: .seconds(300))
        try #require(run.status == 0, "jobgate bench failed (\(run.status)):\n\(run.outputText)\n\(run.errors)")
        let report = try JSONDecoder().decode(BenchmarkReport.self, from: Data(contentsOf: file))

        func sane(_ value: Double, _ name: String) {
            #expect(value.isFinite && value > 0, "\(name) = \(value)")
        }
        for (name, section) in [("submit", report.submit), ("endToEnd", report.endToEnd)] {
            sane(section.gatewayJobsPerSecond, "\(name).gateway")
            sane(section.directJobsPerSecond, "\(name).direct")
            sane(section.ratio, "\(name).ratio")
            #expect(section.gatewayRounds.count == report.options.rounds && section.directRounds.count == report.options.rounds)
            for value in section.gatewayRounds + section.directRounds { sane(value, "\(name) round") }
        }
        func sane(_ distribution: BenchmarkReport.Distribution, _ name: String, samples: Int) {
            #expect(distribution.samples == samples, "\(name) samples")
            for (field, value) in [("mean", distribution.meanMicroseconds), ("p50", distribution.p50Microseconds),
                                   ("p99", distribution.p99Microseconds), ("p99.9", distribution.p999Microseconds),
                                   ("max", distribution.maxMicroseconds)] {
                sane(value, "\(name).\(field)")
            }
            #expect(distribution.p50Microseconds <= distribution.p99Microseconds && distribution.p99Microseconds <= distribution.maxMicroseconds)
        }
        sane(report.pushLatency.push, "push", samples: report.options.latencySamples)
        #expect(report.pushLatency.polling.map(\.intervalMilliseconds) == [1_000, 100])
        sane(report.pushLatency.polling[0].detection, "poll 1 s", samples: report.options.pollSamplesSlow)
        sane(report.pushLatency.polling[1].detection, "poll 100 ms", samples: report.options.pollSamplesFast)
        sane(report.pushLatency.meanRatioToOneSecondPolling, "polling ratio")

        #expect(report.watchers.watchers == report.options.watchers)
        sane(report.watchers.gatewayRSSBeforeMiB, "RSS before")
        sane(report.watchers.gatewayRSSIdleMiB, "RSS idle")
        sane(report.watchers.completionSpanMilliseconds, "completion span")
        #expect(report.watchers.lastDoneAfterLastCompletionMilliseconds.isFinite && report.watchers.lastDoneAfterLastCompletionMilliseconds >= 0)
        sane(report.watchers.delivery, "delivery", samples: report.options.watchers)

        #expect(!report.legacyBridge.available)
        #expect(report.legacyBridge.note.contains("not available yet"))
        #expect(report.machine.cpus > 0 && report.machine.openFilesLimit > report.options.watchers)

        // The table names every section.
        for heading in ["1. submit", "2. end to end", "3. push latency", "4. watchers", "5. legacy bridge"] {
            #expect(run.outputText.contains(heading), "table lacks \(heading)")
        }
    }
}
