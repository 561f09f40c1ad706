import Foundation
import Gearman
import LocalServers
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// `jobgate bench`: starts (or uses) gearmand and Redis on loopback, runs the gateway as its own process and
/// measures it side by side with gearmand alone and with polling. Every comparison runs in the same run on the
/// same servers and is reported as a ratio: on a shared machine absolute figures drift, ratios much less.
public struct BenchmarkRunner: Sendable {
    public var options: BenchmarkOptions
    /// A running gearmand to use instead of starting one.
    public var gearman: GearmanServerAddress?
    /// A running Redis to use instead of starting one.
    public var redis: (host: String, port: Int)?
    /// The `jobgate` executable, started as `jobgate serve`.
    public var executable: String
    /// What to measure (`--only`); every section by default.
    public var sections: Set<BenchmarkSection>
    public var logger: Logger

    public init(
        options: BenchmarkOptions,
        sections: Set<BenchmarkSection> = Set(BenchmarkSection.allCases),
        gearman: GearmanServerAddress? = nil,
        redis: (host: String, port: Int)? = nil,
        executable: String,
        logger: Logger
    ) {
        self.options = options
        self.sections = sections
        self.gearman = gearman
        self.redis = redis
        self.executable = executable
        self.logger = logger
    }

    public func run(progress: @escaping @Sendable (String) -> Void) async throws -> BenchmarkReport {
        let (options, sections) = (self.options, self.sections)
        let openFiles = raiseOpenFilesLimit()
        guard !sections.contains(.watchers) || openFiles >= options.watchers + 512 else {
            throw BenchmarkError(
                "\(options.watchers) watchers need more than \(openFiles) open files (the hard limit); lower --watchers or raise `ulimit -Hn`"
            )
        }
        return try await BenchmarkStack.with(gearman: gearman, redis: redis, executable: executable, logger: logger) { stack in
            progress("stack: gearmand \(stack.gearman), redis \(stack.redis.host):\(stack.redis.port), gateway pid \(stack.gateway.pid) on port \(stack.gatewayPort)")

            var report = BenchmarkReport(
                machine: .current(openFilesLimit: openFiles),
                options: options,
                sections: BenchmarkSection.allCases.filter { sections.contains($0) }
            )

            if sections.contains(.submit) {
                progress("1. submit: \(options.jobs) jobs × \(options.rounds) rounds per side")
                let submit = try await Self.compare(rounds: options.rounds, warmUp: min(500, options.jobs), jobs: options.jobs) { round, jobs in
                    try await stack.gatewaySubmitRate(function: "bench.submit.gateway", jobs: jobs, connections: options.connections, window: options.submitWindow)
                } direct: { round, jobs in
                    try await stack.directSubmitRate(
                        function: "bench.submit.direct", jobs: jobs, connections: options.connections, window: options.submitWindow, round: round
                    )
                }
                let submitRatio = submit.gateway / submit.direct
                report.submit = .init(
                    what: "background SUBMITs, \(options.connections) connections × \(options.submitWindow) outstanding, 16-byte payloads, no worker",
                    direct: "SUBMIT_JOB_BG to the same gearmand, same connections and window, GearmanConnection.submitBackground batches",
                    gatewayJobsPerSecond: submit.gateway,
                    directJobsPerSecond: submit.direct,
                    ratio: submitRatio,
                    gatewayRounds: submit.gatewayRounds,
                    directRounds: submit.directRounds,
                    target: "≥ 0.8× direct",
                    met: submitRatio >= 0.8
                )
            }

            if sections.contains(.endToEnd) {
                progress("2. end to end: \(options.jobs) jobs × \(options.rounds) rounds per side")
                let endToEnd = try await stack.withJobWorker("bench.e2e.gateway", concurrency: options.workerConcurrency, handler: { job, _ in job.payload }) {
                    try await stack.withGearmanWorker("bench.e2e.direct", concurrency: options.workerConcurrency) {
                        try await Self.compare(rounds: options.rounds, warmUp: min(200, options.jobs), jobs: options.jobs) { round, jobs in
                            try await stack.gatewayEndToEndRate(function: "bench.e2e.gateway", jobs: jobs, connections: options.connections, window: options.endToEndWindow)
                        } direct: { round, jobs in
                            try await stack.directEndToEndRate(
                                function: "bench.e2e.direct", jobs: jobs, connections: options.connections, window: options.endToEndWindow, round: round
                            )
                        }
                    }
                }
                report.endToEnd = .init(
                    what: "SUBMIT + WATCH → no-op JobWorker (Swift handler, in the bench process, concurrency \(options.workerConcurrency)) → result in Redis → EVENT DONE; \(options.connections) connections × \(options.endToEndWindow) jobs in flight",
                    direct: "foreground SUBMIT_JOB → no-op GearmanWorker (in process, same concurrency) → WORK_COMPLETE, same connections and jobs in flight",
                    gatewayJobsPerSecond: endToEnd.gateway,
                    directJobsPerSecond: endToEnd.direct,
                    ratio: endToEnd.gateway / endToEnd.direct,
                    gatewayRounds: endToEnd.gatewayRounds,
                    directRounds: endToEnd.directRounds,
                    target: "≥ 20,000 jobs/s through the gateway",
                    met: endToEnd.gateway >= 20_000
                )
            }

            if sections.contains(.push) {
                progress("3. push latency: \(options.latencySamples) samples; polling every 1 s (\(options.pollSamplesSlow) jobs) and 100 ms (\(options.pollSamplesFast) jobs)")
                let latencies = try await stack.latencies(
                    samples: options.latencySamples,
                    polls: [(.seconds(1), options.pollSamplesSlow), (.milliseconds(100), options.pollSamplesFast)]
                )
                let push = BenchmarkReport.Distribution(nanoseconds: latencies.push)
                let polling = zip([1_000, 100], latencies.polling).map { BenchmarkReport.Polling(intervalMilliseconds: $0, detection: .init(nanoseconds: $1)) }
                let pollingRatio = polling[0].detection.meanMicroseconds / push.meanMicroseconds
                report.pushLatency = .init(
                    what: "worker's outcome write (in-process JobWorker) → client decoded EVENT DONE, one job at a time; pollers send STATUS at a fixed interval from a random phase",
                    push: push,
                    polling: polling,
                    meanRatioToOneSecondPolling: pollingRatio,
                    target: "p50 ≤ 200 µs, p99 ≤ 1 ms, ≥ 1,000× lower mean than 1 s polling",
                    met: push.p50Microseconds <= 200 && push.p99Microseconds <= 1_000 && pollingRatio >= 1_000
                )
            }

            if sections.contains(.watchers) {
                progress("4. watchers: \(options.watchers) connections, one job each")
                let watched = try await stack.watchers(count: options.watchers, workerConcurrency: options.workerConcurrency, progress: progress)
                let rssIdleMiB = Double(watched.rssIdle) / 1_048_576
                let lastDone = watched.lastDoneAfterLastCompletion.seconds * 1_000
                report.watchers = .init(
                    what: "\(options.watchers) connections (one bench process, NIO), each watching one queued job; gateway is a separate `jobgate serve` process; then an in-process JobWorker (concurrency \(options.workerConcurrency)) runs the jobs",
                    watchers: options.watchers,
                    gatewayRSSBeforeMiB: Double(watched.rssBefore) / 1_048_576,
                    gatewayRSSJustAfterMiB: Double(watched.rssJustAfter) / 1_048_576,
                    gatewayRSSIdleMiB: rssIdleMiB,
                    bytesPerWatcher: Double(watched.rssIdle - watched.rssBefore) / Double(max(1, options.watchers)),
                    completionSpanMilliseconds: watched.completionSpan.seconds * 1_000,
                    lastDoneAfterLastCompletionMilliseconds: lastDone,
                    delivery: .init(nanoseconds: watched.delivery),
                    target: "≤ 64 MiB RSS idle with 10,000 watchers, every DONE within 1 s of the jobs completing",
                    met: options.watchers >= 10_000 && rssIdleMiB <= 64 && lastDone <= 1_000
                )
            }

            if sections.contains(.legacy) {
                progress("5. legacy bridge: \(options.legacyJobs) memcached-backed jobs per side, worker concurrency \(options.legacyConcurrency)")
                let legacy = try await stack.legacyBridge(jobs: options.legacyJobs, concurrency: options.legacyConcurrency, progress: progress)
                let gatewaySide = BenchmarkReport.LegacySide(legacy.gateway)
                let pollingSide = BenchmarkReport.LegacySide(legacy.polling)
                report.legacyBridge = .init(
                    what: "PHP-style GearmanWorker (in the bench process; WORK_STATUS 1/3 and 2/3, holds 0.5–1.5 s, stores its result in memcached under the job handle, pecl-memcache format, then WORK_COMPLETE); a second `jobgate serve` with --legacy-functions bridges the jobs: SUBMIT + WATCH on 4 connections until EVENT DONE; gearmand reached through a counting proxy",
                    polling: "the same jobs submitted as SUBMIT_JOB_BG; per job its own Gearman connection sends GET_STATUS every 1 s (random phase) and, once the handle is unknown, reads memcached by handle (the PHP monitor)",
                    jobs: options.legacyJobs,
                    workerConcurrency: options.legacyConcurrency,
                    gatewaySide: gatewaySide,
                    pollingSide: pollingSide,
                    statusRequestRatio: gatewaySide.statusRequestsPerJobSecond / pollingSide.statusRequestsPerJobSecond,
                    roundTripRatio: gatewaySide.statusRoundTripsPerJobSecond / pollingSide.statusRoundTripsPerJobSecond,
                    latencyRatio: gatewaySide.latency.meanMicroseconds / pollingSide.latency.meanMicroseconds
                )
            }

            if sections.contains(.largeResults) {
                let (lookups, lookupConnections, resultBytes, bursts) = (100, 4, 1 << 20, 20)  // 20 bursts: some 350 STATUS samples, so that p99 is not just the slowest one
                progress("6. large results: \(bursts) × \(lookups) pipelined RESULTs of a 1 MiB result on \(lookupConnections) connections")
                let large = try await stack.largeResults(lookups: lookups, connections: lookupConnections, size: resultBytes, bursts: bursts)
                let largeStatus = BenchmarkReport.Distribution(nanoseconds: large.status)
                let largePeakMiB = Double(large.rssPeak - large.rssIdle) / 1_048_576

                report.largeResults = .init(
                    what: "a job's 1 MiB result read with \(lookups) pipelined RESULTs spread over \(lookupConnections) connections, each reading its replies (counting result bytes, not keeping them), \(bursts) bursts in a row; meanwhile one more client (on an event loop of its own) sends STATUS of the job one at a time (1 ms apart); default lookup limits",
                    lookups: lookups,
                    connections: lookupConnections,
                    resultBytes: resultBytes,
                    gatewayRSSIdleMiB: Double(large.rssIdle) / 1_048_576,
                    gatewayRSSPeakAboveIdleMiB: largePeakMiB,
                    elapsedMilliseconds: median(large.bursts.map { $0.seconds * 1_000 }),
                    status: largeStatus,
                    target: "≤ 64 MiB RSS above idle, STATUS p99 ≤ 10 ms",
                    met: largePeakMiB <= 64 && largeStatus.p99Microseconds <= 10_000
                )
            }

            for (number, section, kind) in [(7, BenchmarkSection.swiftWorker, BenchmarkStack.UserWorker.swift), (8, .commandWorker, .command), (9, .phpWorker, .php)]
            where sections.contains(section) {
                progress("\(number). \(section.rawValue): \(options.workerJobs) jobs, \(options.connections) connections × \(options.endToEndWindow) in flight, then \(options.workerLatencySamples) one at a time")
                let measured = try await stack.userWorker(kind, options: options)
                switch kind {
                case .swift: report.swiftWorker = measured
                case .command: report.commandWorker = measured
                case .php: report.phpWorker = measured
                }
            }

            if sections.contains(.tls) {
                progress("10. TLS: submit (\(options.jobs) jobs × \(options.rounds) rounds) and push latency (\(options.latencySamples) samples), TLS beside plain TCP")
                let tlsCost = try await stack.tlsCost(
                    jobs: options.jobs, rounds: options.rounds, connections: options.connections, window: options.submitWindow, samples: options.latencySamples
                )
                report.tls = .init(
                    what: "a second `jobgate serve` with --tls-cert (P-256 certificate, TLS 1.3) on the same gearmand and Redis; sections 1 and 3's measurements through it and through the plain gateway, alternating",
                    tlsCost
                )
            }
            return report
        }
    }

    struct Comparison {
        var gatewayRounds: [Double] = []
        var directRounds: [Double] = []
        var gateway: Double { median(gatewayRounds) }
        var direct: Double { median(directRounds) }
    }

    /// Alternates which side goes first each round, after an unrecorded warm-up of each.
    static func compare(
        rounds: Int,
        warmUp: Int,
        jobs: Int,
        gateway: (Int, Int) async throws -> Double,
        direct: (Int, Int) async throws -> Double
    ) async throws -> Comparison {
        _ = try await gateway(-1, warmUp)
        _ = try await direct(-1, warmUp)
        var comparison = Comparison()
        for round in 0..<max(1, rounds) {
            if round % 2 == 0 {
                comparison.directRounds.append(try await direct(round, jobs))
                comparison.gatewayRounds.append(try await gateway(round, jobs))
            } else {
                comparison.gatewayRounds.append(try await gateway(round, jobs))
                comparison.directRounds.append(try await direct(round, jobs))
            }
        }
        return comparison
    }
}

extension BenchmarkReport.LegacySide {
    init(_ side: BenchmarkStack.LegacySide) {
        let jobSeconds = side.watched.seconds
        self.init(
            done: side.latencies.count,
            latency: .init(nanoseconds: side.latencies),
            watchedJobSeconds: jobSeconds,
            elapsedSeconds: side.elapsed.seconds,
            statusRequests: side.statusRequests,
            statusRequestsPerJobSecond: Double(side.statusRequests) / jobSeconds,
            statusRoundTrips: side.statusRoundTrips,
            statusRoundTripsPerJobSecond: Double(side.statusRoundTrips) / jobSeconds,
            memcachedGets: side.memcachedGets
        )
    }
}

extension BenchmarkReport.Machine {
    static func current(openFilesLimit: Int) -> Self {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { $0.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "" } ?? "unknown"
        var name = utsname()
        uname(&name)
        let release = withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        #if DEBUG
        let build = "debug"
        #else
        let build = "release"
        #endif
        return .init(
            cpus: ProcessInfo.processInfo.activeProcessorCount,
            cpuModel: model,
            memoryGiB: Double(ProcessInfo.processInfo.physicalMemory) / 1_073_741_824,
            kernel: "Linux \(release)",
            build: build,
            date: ISO8601DateFormatter().string(from: Date()),
            openFilesLimit: openFilesLimit
        )
    }
}
