import Benchmarks
import Foundation
import LocalServers
import Testing

/// `jobgate bench --quick` runs every section against real servers and writes a complete report. Speed is not
/// checked (the machine is shared): only that every figure is a positive, finite number, and that counts add up.
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
        #expect(report.sections == BenchmarkSection.allCases)
        for (name, section) in [("submit", try #require(report.submit)), ("endToEnd", try #require(report.endToEnd))] {
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
        let pushLatency = try #require(report.pushLatency)
        sane(pushLatency.push, "push", samples: report.options.latencySamples)
        #expect(pushLatency.polling.map(\.intervalMilliseconds) == [1_000, 100])
        sane(pushLatency.polling[0].detection, "poll 1 s", samples: report.options.pollSamplesSlow)
        sane(pushLatency.polling[1].detection, "poll 100 ms", samples: report.options.pollSamplesFast)
        sane(pushLatency.meanRatioToOneSecondPolling, "polling ratio")

        let watchers = try #require(report.watchers)
        #expect(watchers.watchers == report.options.watchers)
        sane(watchers.gatewayRSSBeforeMiB, "RSS before")
        sane(watchers.gatewayRSSIdleMiB, "RSS idle")
        sane(watchers.gatewayRSSJustAfterMiB, "RSS right after the watches")
        sane(watchers.completionSpanMilliseconds, "completion span")
        #expect(watchers.lastDoneAfterLastCompletionMilliseconds.isFinite && watchers.lastDoneAfterLastCompletionMilliseconds >= 0)
        sane(watchers.delivery, "delivery", samples: report.options.watchers)

        // Legacy bridge: every job's outcome seen on both sides, after its memcached write, with status requests
        // gearmand really received. The polling side asks once per second per job, so over its watched
        // job-seconds it sent at least one GET_STATUS per job and about one per job-second.
        let legacy = try #require(report.legacyBridge)
        #expect(legacy.jobs == report.options.legacyJobs && legacy.workerConcurrency == report.options.legacyConcurrency)
        for (name, side) in [("legacy gateway", legacy.gatewaySide), ("legacy polling", legacy.pollingSide)] {
            #expect(side.done == legacy.jobs, "\(name): \(side.done) of \(legacy.jobs) jobs seen done")
            sane(side.latency, "\(name) latency", samples: legacy.jobs)
            sane(side.watchedJobSeconds, "\(name) job-seconds")
            sane(side.elapsedSeconds, "\(name) elapsed")
            sane(side.statusRequestsPerJobSecond, "\(name) GET_STATUS per job-second")
            sane(side.statusRoundTripsPerJobSecond, "\(name) round trips per job-second")
            // Every job is found done through memcached, on either side.
            #expect(side.memcachedGets >= legacy.jobs, "\(name): \(side.memcachedGets) memcached gets for \(legacy.jobs) jobs")
            // The worker holds each job at least 0.5 s after it is submitted.
            #expect(side.watchedJobSeconds >= 0.5 * Double(legacy.jobs), "\(name) job-seconds \(side.watchedJobSeconds)")
        }
        #expect(legacy.pollingSide.statusRequests >= legacy.jobs)
        #expect(legacy.pollingSide.statusRoundTrips == legacy.pollingSide.statusRequests, "the proxy counts what the monitors sent")
        // One GET_STATUS per second from a phase within the first second, over at least 0.5 s per job: at most 3 per job-second.
        #expect(legacy.pollingSide.statusRequestsPerJobSecond <= 3)
        // The bridge batches: at most as many round trips as GET_STATUS requests.
        #expect(legacy.gatewaySide.statusRoundTrips <= legacy.gatewaySide.statusRequests)
        for (name, ratio) in [("GET_STATUS", legacy.statusRequestRatio), ("round trips", legacy.roundTripRatio), ("latency", legacy.latencyRatio)] {
            sane(ratio, "legacy \(name) ratio")
        }
        #expect(report.machine.cpus > 0 && report.machine.openFilesLimit > report.options.watchers)

        // Large results: every lookup read its whole result (the section throws otherwise), STATUS was answered
        // meanwhile.
        let large = try #require(report.largeResults)
        #expect(large.lookups == 100 && large.connections == 4 && large.resultBytes == 1 << 20)
        sane(large.gatewayRSSIdleMiB, "large results RSS idle")
        #expect(large.gatewayRSSPeakAboveIdleMiB.isFinite && large.gatewayRSSPeakAboveIdleMiB >= 0)
        sane(large.elapsedMilliseconds, "large results elapsed")
        #expect(large.status.samples > 0)
        sane(large.status, "STATUS during large results", samples: large.status.samples)

        for (name, section) in [("swift", report.swiftWorker), ("command", report.commandWorker), ("php", report.phpWorker)] {
            let section = try #require(section, "\(name) worker section missing")
            BenchSectionsTests.checkWorkerSection(section, options: report.options, serversStarted: true)
        }

        // TLS beside plain TCP: both sides of both measurements, in the same run.
        let tls = try #require(report.tls, "section 10 (TLS) is in the report")
        sane(tls.submitPlainJobsPerSecond, "TLS section: plain submit")
        sane(tls.submitTLSJobsPerSecond, "TLS section: TLS submit")
        sane(tls.submitRatio, "TLS section: submit ratio")
        #expect(tls.submitPlainRounds.count == report.options.rounds && tls.submitTLSRounds.count == report.options.rounds)
        sane(tls.pushPlain, "TLS section: plain push", samples: report.options.latencySamples)
        sane(tls.pushTLS, "TLS section: TLS push", samples: report.options.latencySamples)
        sane(tls.pushMeanRatio, "TLS section: push ratio")

        // The table names every section.
        for heading in ["1. submit", "2. end to end", "3. push latency", "4. watchers", "5. legacy bridge", "6. large results",
                        "7. swift worker", "8. command worker", "9. php worker", "10. TLS"] {
            #expect(run.outputText.contains(heading), "table lacks \(heading)")
        }
    }
}
