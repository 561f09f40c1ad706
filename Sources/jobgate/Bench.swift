import ArgumentParser
import Benchmarks
import Foundation
import Gearman
import Logging

/// `jobgate bench`: the gateway measured against gearmand alone and against polling, on loopback.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the gateway against gearmand alone and against polling, on a stack on loopback.",
        usage: "jobgate bench [--quick] [<options>]",
        discussion: """
            Starts gearmand and redis-server on free loopback ports (or uses --gearman/--redis), runs \
            this executable as `jobgate serve` in its own process, and measures, each side by side in the \
            same run: submit throughput (gateway vs SUBMIT_JOB_BG straight to gearmand), end to end \
            (SUBMIT + WATCH through a no-op in-process JobWorker and Redis vs foreground jobs straight to \
            gearmand), push latency vs STATUS polling every 1 s and 100 ms, and many idle watchers (gateway \
            RSS, time to deliver every DONE), and memcached-backed legacy jobs watched through a gateway \
            bridging them vs each polled with GET_STATUS every 1 s (latency, status requests per job-second, \
            counted by a proxy in front of gearmand; needs memcached), and end to end through workers as \
            users run them: the in-process Swift worker, `jobgate worker -- cat` and the README's PHP worker \
            × 4 (each with jobs/s, latency one job at a time from SUBMIT and from the job's end in its \
            worker, and CPU-s per 1,000 jobs of the gateway, \
            redis-server, gearmand and the worker, from /proc/<pid>/stat). --only picks sections: \
            \(BenchmarkSection.allCases.map(\.rawValue).joined(separator: ", ")). Raises the soft \
            open-files limit to the hard limit.

            Build with `swift build -c release` first: debug figures say little.

            Examples:
              .build/release/jobgate bench
              .build/release/jobgate bench --quick --json /tmp/bench.json
              .build/release/jobgate bench --only command-worker,php-worker --json /tmp/workers.json
            """
    )

    @Flag(help: "A small smoke run: every section, small sizes.")
    var quick = false

    @Option(help: ArgumentHelp("Only these sections, comma-separated (default: all).", valueName: "section,…"))
    var only: String?
    @Flag(
        help: """
            Instead: the tested scale-out cluster (Redis primary, 2 replicas, 3 sentinels, 2 gearmand, 2 gateways) on \
            loopback; submit throughput through one gateway vs two, and with --redis-replicas-ack 1 vs 0.
            """
    )
    var cluster = false

    @Option(help: "Jobs per throughput measurement, per side and round.")
    var jobs: Int?

    @Option(help: "Client connections for the throughput measurements (the same on both sides).")
    var connections: Int?

    @Option(help: "Connections that each watch one job.")
    var watchers: Int?

    @Option(help: "Rounds of each throughput comparison.")
    var rounds: Int?

    @Option(name: .customLong("latency-samples"), help: "Sequential push-latency samples.")
    var latencySamples: Int?

    @Option(name: .customLong("worker-concurrency"), help: "Jobs the no-op workers run at once.")
    var workerConcurrency: Int?

    @Option(name: .customLong("legacy-jobs"), help: "Memcached-backed jobs per side of the legacy bridge comparison.")
    var legacyJobs: Int?

    @Option(name: .customLong("legacy-concurrency"), help: "Jobs the legacy worker runs at once (each takes 0.5–1.5 s).")
    var legacyConcurrency: Int?

    @Option(name: .customLong("worker-jobs"), help: "Jobs of each worker section's throughput part.")
    var workerJobs: Int?

    @Option(name: .customLong("worker-latency-samples"), help: "Jobs one at a time of each worker section's latency part.")
    var workerLatencySamples: Int?

    @Option(help: ArgumentHelp("Use this gearmand instead of starting one.", valueName: "host:port"))
    var gearman: HostPort?

    @Option(help: ArgumentHelp("Use this Redis instead of starting one (the gateway enables keyspace events on it).", valueName: "host:port"))
    var redis: HostPort?

    @Option(help: ArgumentHelp("Also write the report as JSON to this file.", valueName: "file"))
    var json: String?

    func validate() throws {
        for (name, value) in [("jobs", jobs), ("connections", connections), ("watchers", watchers), ("rounds", rounds),
                              ("latency-samples", latencySamples), ("worker-concurrency", workerConcurrency),
                              ("legacy-jobs", legacyJobs), ("legacy-concurrency", legacyConcurrency),
                              ("worker-jobs", workerJobs), ("worker-latency-samples", workerLatencySamples)] {
            if let value, value < 1 { throw ValidationError("--\(name) must be at least 1") }
        }
        if let only {
            do { _ = try BenchmarkSection.parse(only) } catch { throw ValidationError("--only: \(error)") }
        }
    }

    func run() async throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        var options = quick ? BenchmarkOptions.quick : BenchmarkOptions()
        if let jobs { options.jobs = jobs }
        if let connections { options.connections = connections }
        if let watchers { options.watchers = watchers }
        if let rounds { options.rounds = rounds }
        if let latencySamples { options.latencySamples = latencySamples }
        if let workerConcurrency { options.workerConcurrency = workerConcurrency }
        if let legacyJobs { options.legacyJobs = legacyJobs }
        if let legacyConcurrency { options.legacyConcurrency = legacyConcurrency }
        if cluster {
            var benchmark = ClusterBenchmark()
            if quick { (benchmark.jobs, benchmark.rounds) = (2_000, 1) }
            if let jobs { benchmark.jobs = jobs }
            if let connections { benchmark.connections = connections }
            if let rounds { benchmark.rounds = rounds }
            let report = try await benchmark.run { line in FileHandle.standardError.write(Data((line + "\n").utf8)) }
            print(report.table)
            if let json {
                try JSONEncoder().encode(report).write(to: URL(fileURLWithPath: json))
            }
            return
        }
        if let workerJobs { options.workerJobs = workerJobs }
        if let workerLatencySamples { options.workerLatencySamples = workerLatencySamples }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let runner = BenchmarkRunner(
            options: options,
            sections: try only.map(BenchmarkSection.parse) ?? Set(BenchmarkSection.allCases),
            gearman: gearman.map { GearmanServerAddress(host: $0.host, port: $0.port) },
            redis: redis.map { ($0.host, $0.port) },
            executable: executable,
            logger: Logger(label: "jobgate.bench")
        )
        let report = try await runner.run { line in
            FileHandle.standardError.write(Data((line + "\n").utf8))
        }
        print(report.table)
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(report).write(to: URL(fileURLWithPath: json))
        }
    }
}
