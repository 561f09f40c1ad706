import Foundation

/// Sizes of a benchmark run.
public struct BenchmarkOptions: Sendable, Codable {
    /// Jobs per throughput measurement (submit and end to end), per side and round.
    public var jobs = 20_000
    /// Client connections for the throughput measurements (the same on both sides).
    public var connections = 4
    /// Requests each connection keeps outstanding while submitting.
    public var submitWindow = 64
    /// Jobs each connection keeps in flight end to end.
    public var endToEndWindow = 16
    /// Jobs the no-op worker runs at once (the same on both sides).
    public var workerConcurrency = 32
    /// Rounds of each throughput comparison; sides alternate which goes first.
    public var rounds = 3
    /// Sequential push-latency samples.
    public var latencySamples = 2_000
    /// Jobs detected by the 1 s and the 100 ms poller.
    public var pollSamplesSlow = 20
    public var pollSamplesFast = 60
    /// Connections that each watch one job.
    public var watchers = 10_000
    /// Memcached-backed jobs per side of the legacy bridge comparison.
    public var legacyJobs = 200
    /// Jobs the legacy worker runs at once (each holds 0.5–1.5 s).
    public var legacyConcurrency = 50
    /// Jobs of each worker section's throughput part (swift-worker, command-worker, php-worker).
    public var workerJobs = 5_000
    /// Jobs one at a time of each worker section's latency part.
    public var workerLatencySamples = 1_000

    public init() {}

    /// A small smoke run: every section, small sizes.
    public static var quick: BenchmarkOptions {
        var options = BenchmarkOptions()
        options.jobs = 1_000
        options.connections = 2
        options.submitWindow = 16
        options.endToEndWindow = 8
        options.workerConcurrency = 8
        options.rounds = 1
        options.latencySamples = 50
        options.pollSamplesSlow = 3
        options.pollSamplesFast = 8
        options.watchers = 100
        options.legacyJobs = 20
        options.legacyConcurrency = 10
        options.workerJobs = 300
        options.workerLatencySamples = 50
        return options
    }
}

/// Everything `jobgate bench` measured, as written with `--json`; a section not run (`--only`) is absent.
public struct BenchmarkReport: Sendable, Codable {
    public var machine: Machine
    public var options: BenchmarkOptions
    /// The sections run, in the order they ran.
    public var sections: [BenchmarkSection]
    public var submit: Throughput?
    public var endToEnd: Throughput?
    public var pushLatency: PushLatency?
    public var watchers: Watchers?
    public var legacyBridge: LegacyBridge?
    public var largeResults: LargeResults?
    public var swiftWorker: UserWorker?
    public var commandWorker: UserWorker?
    public var phpWorker: UserWorker?
    /// Section 10: the submit rate and push latency through TLS beside plain TCP.
    public var tls: TLSCost?

    public init(machine: Machine, options: BenchmarkOptions, sections: [BenchmarkSection]) {
        self.machine = machine
        self.options = options
        self.sections = sections
    }

    /// End to end through one kind of worker as users run it, with the CPU each process spent per job.
    public struct UserWorker: Sendable, Codable {
        public var what: String
        public var worker: String
        public var jobs: Int
        public var inFlight: Int
        public var jobsPerSecond: Double
        /// One job at a time: `SUBMIT` written → `EVENT … DONE` decoded.
        public var latency: Distribution
        /// One job at a time: the job's end in its worker (a Swift handler's return, a program's exit, a PHP job's
        /// work done), before the worker writes its outcome → `EVENT … DONE` decoded.
        public var latencyFromEnd: Distribution
        /// Per process (or group of processes, such as a worker's children), over the throughput part.
        public var cpuSecondsPer1000Jobs: [ProcessCPU]
    }

    public struct ProcessCPU: Sendable, Codable {
        public var process: String
        public var seconds: Double
    }

    public struct Machine: Sendable, Codable {
        public var cpus: Int
        public var cpuModel: String
        public var memoryGiB: Double
        public var kernel: String
        /// `release` or `debug`: figures from a debug build say little.
        public var build: String
        public var date: String
        /// RLIMIT_NOFILE after the bench raised its soft limit (the gateway process inherits it).
        public var openFilesLimit: Int
    }

    /// One comparison of jobs per second, the gateway against gearmand directly.
    public struct Throughput: Sendable, Codable {
        public var what: String
        public var direct: String
        /// Medians over the rounds.
        public var gatewayJobsPerSecond: Double
        public var directJobsPerSecond: Double
        /// gateway ÷ direct, from the medians.
        public var ratio: Double
        public var gatewayRounds: [Double]
        public var directRounds: [Double]
        public var target: String
        public var met: Bool
    }

    /// Latency summary in microseconds.
    public struct Distribution: Sendable, Codable {
        public var samples: Int
        public var meanMicroseconds: Double
        public var p50Microseconds: Double
        public var p99Microseconds: Double
        public var p999Microseconds: Double
        public var maxMicroseconds: Double
    }

    public struct Polling: Sendable, Codable {
        public var intervalMilliseconds: Int
        public var detection: Distribution
    }

    public struct PushLatency: Sendable, Codable {
        public var what: String
        public var push: Distribution
        public var polling: [Polling]
        /// Mean detection delay of the 1 s poller ÷ mean push latency.
        public var meanRatioToOneSecondPolling: Double
        public var target: String
        public var met: Bool
    }

    public struct Watchers: Sendable, Codable {
        public var what: String
        public var watchers: Int
        /// The gateway's RSS before the watchers connected (jobs submitted, one client).
        public var gatewayRSSBeforeMiB: Double
        /// The gateway's RSS one second after the last watcher had its `WATCHING`.
        public var gatewayRSSJustAfterMiB: Double
        /// The gateway's RSS with every watcher connected and idle, five seconds after the last `WATCHING`.
        public var gatewayRSSIdleMiB: Double
        public var bytesPerWatcher: Double
        /// First job's outcome write to the last job's: how long the worker took.
        public var completionSpanMilliseconds: Double
        /// Last outcome write to the last `EVENT … DONE` read by its watcher.
        public var lastDoneAfterLastCompletionMilliseconds: Double
        /// Per job: outcome write to `EVENT … DONE` at its watcher, under this load.
        public var delivery: Distribution
        public var target: String
        public var met: Bool
    }

    /// Pipelined lookups of one large result on several connections, and another client's `STATUS` meanwhile.
    public struct LargeResults: Sendable, Codable {
        public var what: String
        public var lookups: Int
        public var connections: Int
        public var resultBytes: Int
        /// The gateway's RSS before the lookups, and its highest sample (every 2 ms) while they ran.
        public var gatewayRSSIdleMiB: Double
        public var gatewayRSSPeakAboveIdleMiB: Double
        public var elapsedMilliseconds: Double
        /// The other client's `STATUS` round trips while the lookups ran.
        public var status: Distribution
        public var target: String
        public var met: Bool
    }

    /// Memcached-backed jobs watched through the gateway against the legacy pattern, each job polled by its own
    /// monitor. Both sides run the same jobs with the same worker, one after the other.
    public struct LegacyBridge: Sendable, Codable {
        public var what: String
        public var polling: String
        public var jobs: Int
        public var workerConcurrency: Int
        public var gatewaySide: LegacySide
        public var pollingSide: LegacySide
        /// gateway ÷ polling: GET_STATUS requests gearmand received per watched job-second.
        public var statusRequestRatio: Double
        /// gateway ÷ polling: status round trips to gearmand per watched job-second.
        public var roundTripRatio: Double
        /// gateway ÷ polling: mean latency from the worker's memcached write to the outcome seen.
        public var latencyRatio: Double
    }

    public struct LegacySide: Sendable, Codable {
        /// Jobs whose outcome the client saw (`EVENT … DONE`, or the value read from memcached).
        public var done: Int
        /// Per job: the worker's memcached write starts → the client has the outcome.
        public var latency: Distribution
        /// Σ over jobs of submit → outcome seen.
        public var watchedJobSeconds: Double
        public var elapsedSeconds: Double
        /// GET_STATUS and GET_STATUS_UNIQUE requests gearmand received (counted by a proxy in front of it).
        public var statusRequests: Int
        public var statusRequestsPerJobSecond: Double
        /// Status round trips: the gateway's `legacy_polls` (one pipelined batch per gearmand per round), or
        /// each monitor's `GET_STATUS`.
        public var statusRoundTrips: Int
        public var statusRoundTripsPerJobSecond: Double
        /// Keys read from memcached (its `cmd_get`) during the side.
        public var memcachedGets: Int
    }
}

extension BenchmarkReport.Distribution {
    /// Summarises durations (nanoseconds), nearest-rank percentiles.
    init(nanoseconds values: [Int64]) {
        let sorted = values.sorted()
        func rank(_ p: Double) -> Double {
            guard !sorted.isEmpty else { return 0 }
            let index = min(sorted.count - 1, max(0, Int((p * Double(sorted.count)).rounded(.up)) - 1))
            return Double(sorted[index]) / 1_000
        }
        samples = sorted.count
        meanMicroseconds = sorted.isEmpty ? 0 : Double(sorted.reduce(0, +)) / Double(sorted.count) / 1_000
        p50Microseconds = rank(0.50)
        p99Microseconds = rank(0.99)
        p999Microseconds = rank(0.999)
        maxMicroseconds = Double(sorted.last ?? 0) / 1_000
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    var seconds: Double { Double(nanoseconds) / 1e9 }
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return 0 }
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

// MARK: The table

extension BenchmarkReport {
    /// The report as a plain-text table.
    public var table: String {
        func rate(_ value: Double) -> String { String(format: "%10.0f jobs/s", value) }
        func us(_ value: Double) -> String { value >= 10_000 ? String(format: "%.1f ms", value / 1_000) : String(format: "%.0f µs", value) }
        func verdict(_ met: Bool) -> String { met ? "met" : "MISSED" }
        var lines: [String] = []
        lines.append("jobgate bench — \(machine.cpus) CPUs (\(machine.cpuModel)), \(String(format: "%.0f", machine.memoryGiB)) GiB, \(machine.kernel), \(machine.build) build, \(machine.date)")
        lines.append("open files limit raised to \(machine.openFilesLimit) (setrlimit RLIMIT_NOFILE; the gateway process inherits it)")
        lines.append("")
        for (title, section) in [("1. submit", submit), ("2. end to end", endToEnd)] {
            guard let section else { continue }
            lines.append("\(title): \(section.what)")
            lines.append("   gateway \(rate(section.gatewayJobsPerSecond))   rounds: \(section.gatewayRounds.map { String(format: "%.0f", $0) }.joined(separator: ", "))")
            lines.append("   direct  \(rate(section.directJobsPerSecond))   rounds: \(section.directRounds.map { String(format: "%.0f", $0) }.joined(separator: ", "))   (\(section.direct))")
            lines.append("   ratio   \(String(format: "%.2f", section.ratio))×   target \(section.target): \(verdict(section.met))")
            lines.append("")
        }
        let header = "   " + "".padding(toLength: 22, withPad: " ", startingAt: 0) + "samples      mean       p50       p99     p99.9       max"
        func row(_ name: String, _ d: Distribution) -> String {
            "   " + name.padding(toLength: 22, withPad: " ", startingAt: 0)
                + [String(d.samples), us(d.meanMicroseconds), us(d.p50Microseconds), us(d.p99Microseconds), us(d.p999Microseconds), us(d.maxMicroseconds)]
                .map { $0.leftPadded(to: 9) }.joined(separator: " ")
        }
        if let pushLatency {
            lines.append("3. push latency: \(pushLatency.what)")
            lines.append(header)
            lines.append(row("push (EVENT DONE)", pushLatency.push))
            for polling in pushLatency.polling {
                lines.append(row("poll STATUS \(polling.intervalMilliseconds) ms", polling.detection))
            }
            lines.append("   mean 1 s polling ÷ mean push: \(String(format: "%.0f", pushLatency.meanRatioToOneSecondPolling))×   target \(pushLatency.target): \(verdict(pushLatency.met))")
            lines.append("")
        }
        if let watchers {
            lines.append("4. watchers: \(watchers.what)")
            lines.append("   gateway RSS \(String(format: "%.1f", watchers.gatewayRSSBeforeMiB)) MiB before, \(String(format: "%.1f", watchers.gatewayRSSIdleMiB)) MiB with \(watchers.watchers) idle watchers (\(String(format: "%.0f", watchers.bytesPerWatcher)) B each; \(String(format: "%.1f", watchers.gatewayRSSJustAfterMiB)) MiB 1 s after the last WATCHING, before malloc's free pages went back)")
            lines.append("   worker finished the jobs in \(String(format: "%.0f", watchers.completionSpanMilliseconds)) ms; last DONE \(String(format: "%.1f", watchers.lastDoneAfterLastCompletionMilliseconds)) ms after the last outcome write")
            lines.append(row("delivery per job", watchers.delivery))
            lines.append("   target \(watchers.target): \(verdict(watchers.met))")
            lines.append("")
        }
        if let legacyBridge {
            lines.append("5. legacy bridge: \(legacyBridge.what)")
            lines.append("   polling side: \(legacyBridge.polling)")
            lines.append(header)
            lines.append(row("gateway (EVENT DONE)", legacyBridge.gatewaySide.latency))
            lines.append(row("poll 1 s + memcached", legacyBridge.pollingSide.latency))
            lines.append("   " + "".padding(toLength: 22, withPad: " ", startingAt: 0) + "   done  job-s  GET_STATUS  per job-s  round trips  per job-s  mc gets")
            for (name, side) in [("gateway", legacyBridge.gatewaySide), ("polling", legacyBridge.pollingSide)] {
                lines.append(
                    "   " + name.padding(toLength: 22, withPad: " ", startingAt: 0)
                        + String(side.done).leftPadded(to: 7) + String(format: "%.0f", side.watchedJobSeconds).leftPadded(to: 7)
                        + String(side.statusRequests).leftPadded(to: 12) + String(format: "%.2f", side.statusRequestsPerJobSecond).leftPadded(to: 11)
                        + String(side.statusRoundTrips).leftPadded(to: 13) + String(format: "%.3f", side.statusRoundTripsPerJobSecond).leftPadded(to: 11)
                        + String(side.memcachedGets).leftPadded(to: 9)
                )
            }
            lines.append(
                "   gateway ÷ polling: GET_STATUS per job-second \(String(format: "%.2f", legacyBridge.statusRequestRatio))×, round trips \(String(format: "%.3f", legacyBridge.roundTripRatio))×, mean latency \(String(format: "%.3f", legacyBridge.latencyRatio))×"
            )
            lines.append("")
        }
        if let largeResults {
            lines.append("6. large results: \(largeResults.what)")
            lines.append(
                "   gateway RSS \(String(format: "%.1f", largeResults.gatewayRSSIdleMiB)) MiB idle, peak \(String(format: "%.1f", largeResults.gatewayRSSPeakAboveIdleMiB)) MiB above it; each burst read in \(String(format: "%.0f", largeResults.elapsedMilliseconds)) ms (median)"
            )
            lines.append(row("STATUS meanwhile", largeResults.status))
            lines.append("   target \(largeResults.target): \(verdict(largeResults.met))")
            lines.append("")
        }
        for (title, section) in [("7. swift worker", swiftWorker), ("8. command worker", commandWorker), ("9. php worker", phpWorker)] {
            guard let section else { continue }
            lines.append("\(title): \(section.worker); \(section.what)")
            lines.append("   \(rate(section.jobsPerSecond)) (\(section.jobs) jobs, \(section.inFlight) in flight)")
            lines.append(header)
            lines.append(row("SUBMIT → EVENT DONE", section.latency))
            lines.append(row("job's end → EVENT DONE", section.latencyFromEnd))
            let total = section.cpuSecondsPer1000Jobs.reduce(0) { $0 + $1.seconds }
            lines.append("   CPU-s per 1,000 jobs: " + section.cpuSecondsPer1000Jobs.map { "\($0.process) \(String(format: "%.3f", $0.seconds))" }.joined(separator: ", ") + "; all \(String(format: "%.3f", total))")
            lines.append("")
        }
        if let tls {
            lines += tls.tableLines
            lines.append("")
        }
        while lines.last == "" { lines.removeLast() }
        return lines.joined(separator: "\n")
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}
