import Foundation
import GatewayProtocol
import Gearman
import LocalServers
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The sections of a run, as `--only` names them.
public enum BenchmarkSection: String, CaseIterable, Codable, Sendable {
    case submit
    case endToEnd = "end-to-end"
    case push
    case watchers
    case legacy
    case largeResults = "large-results"
    case swiftWorker = "swift-worker"
    case commandWorker = "command-worker"
    case phpWorker = "php-worker"
    case tls

    /// The sections of a comma-separated list (`--only`); throws naming an unknown one and the known ones.
    public static func parse(_ list: String) throws -> Set<BenchmarkSection> {
        var sections: Set<BenchmarkSection> = []
        for name in list.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !name.isEmpty {
            guard let section = BenchmarkSection(rawValue: name) else {
                throw BenchmarkError("unknown section \(name); sections: \(allCases.map(\.rawValue).joined(separator: ", "))")
            }
            sections.insert(section)
        }
        guard !sections.isEmpty else { throw BenchmarkError("no section named; sections: \(allCases.map(\.rawValue).joined(separator: ", "))") }
        return sections
    }
}

/// CPU time of a process from `/proc/<pid>/stat`: user + system, and what it reaped of its children (a command
/// worker's programs), in seconds.
public enum ProcessCPUTime {
    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    /// utime + stime (+ cutime + cstime) in clock ticks, from the text of `/proc/<pid>/stat`. The process name
    /// (field 2, in parentheses) may hold spaces and parentheses: the fields are counted from after the last `)`.
    public static func ticks(statLine: String, includingReaped: Bool) -> Int? {
        guard let nameEnd = statLine.lastIndex(of: ")") else { return nil }
        let fields = statLine[statLine.index(after: nameEnd)...].split(separator: " ")
        // fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14–17.
        guard fields.count > 14 else { return nil }
        let values = fields[11...(includingReaped ? 14 : 12)].map { Int($0) }
        guard values.allSatisfy({ $0 != nil }) else { return nil }
        return values.reduce(0) { $0 + $1! }
    }

    public static func seconds(pid: pid_t, includingReaped: Bool) throws -> Double {
        let line = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        guard let ticks = ticks(statLine: line, includingReaped: includingReaped) else {
            throw BenchmarkError("cannot read the CPU times in /proc/\(pid)/stat: \(line)")
        }
        return Double(ticks) / ticksPerSecond
    }
}

/// The processes whose CPU a section counts, by role.
struct MeteredProcesses {
    var roles: [(name: String, pids: [pid_t], includingReaped: Bool)] = []

    func seconds() throws -> [Double] {
        try roles.map { role in
            try role.pids.reduce(0) { $0 + (try ProcessCPUTime.seconds(pid: $1, includingReaped: role.includingReaped)) }
        }
    }
}

/// End to end through workers as users run them: the in-process Swift `JobWorker`, a `jobgate worker` command
/// worker in a process of its own, and the README's PHP worker, four processes.
extension BenchmarkStack {
    enum UserWorker: CaseIterable {
        case swift, command, php

        var function: String {
            switch self {
            case .swift: "bench.swift"
            case .command: "bench.command"
            case .php: "reverse"  // the README's worker serves this one
            }
        }
    }

    /// Starts the workers of `kind`, runs the section, stops them.
    func userWorker(_ kind: UserWorker, options: BenchmarkOptions) async throws -> BenchmarkReport.UserWorker {
        let metered = serverProcesses()
        switch kind {
        case .swift:
            var metered = metered
            metered.roles.append(("bench process (in-process worker and clients)", [getpid()], false))
            let returned = Instants()
            return try await withJobWorker(kind.function, concurrency: options.workerConcurrency, handler: { job, _ in
                defer { returned.record(job.unique) }
                return job.payload
            }) {
                try await measureUserWorker(
                    kind,
                    worker: "in-process JobWorker, no-op Swift handler, concurrency \(options.workerConcurrency)",
                    metered: metered,
                    options: options,
                    ends: .init(function: kind.function, what: "the handler's return") { id, _ in returned[id.rawValue] }
                )
            }
        case .command:
            let cat = ["/usr/bin/cat", "/bin/cat"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/bin/cat"
            let worker = try LocalProcess(executable, [
                "worker", "--function", kind.function, "--concurrency", "4", "--gearman", gearman.description,
                "--redis", "\(redis.host):\(redis.port)", "--log-level", "warning", "--", cat,
            ])
            defer { worker.stop() }
            // The same kind of worker running a program that appends its exit time to the result, for the latency
            // from the program's exit (bash's $EPOCHREALTIME, the wall clock in microseconds, is its last act).
            let stamping = try LocalProcess(executable, [
                "worker", "--function", Self.stampedCommandFunction, "--concurrency", "1", "--gearman", gearman.description,
                "--redis", "\(redis.host):\(redis.port)", "--log-level", "warning", "--", "/bin/bash", "-c", #"cat; printf '\n%s' "$EPOCHREALTIME""#,
            ])
            defer { stamping.stop() }
            var metered = metered
            metered.roles.append(("worker (jobgate worker and its programs)", [worker.pid], true))
            return try await measureUserWorker(
                kind,
                worker: "jobgate worker --concurrency 4 -- cat",
                metered: metered,
                options: options,
                ends: .stampedInResult(function: Self.stampedCommandFunction, what: "the program's exit (a bash -c that runs cat, then prints $EPOCHREALTIME as its last act)")
            ) {
                for process in [worker, stamping] where process.exitStatus != nil { throw BenchmarkError("jobgate worker exited:\n\(process.log)") }
            }
        case .php:
            let source = try Self.readmeExample("php-worker")
            let script = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-bench-\(UUID().uuidString).php")
            let stampingScript = script.deletingPathExtension().appendingPathExtension("stamping.php")
            try source.write(to: script, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(at: script) }
            try Self.phpWorkerStampingItsEnd(source).write(to: stampingScript, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(at: stampingScript) }
            let environment = [
                "GEARMAN_HOST": gearman.host, "GEARMAN_PORT": "\(gearman.port)", "REDIS_HOST": redis.host, "REDIS_PORT": "\(redis.port)",
            ]
            var workers: [LocalProcess] = []
            defer { for worker in workers { worker.stop() } }
            for _ in 0..<4 { workers.append(try LocalProcess("/usr/bin/php", [script.path], environment: environment)) }
            let stamping = try LocalProcess("/usr/bin/php", [stampingScript.path], environment: environment)
            defer { stamping.stop() }
            var metered = metered
            metered.roles.append(("worker (4 php processes)", workers.map(\.pid), true))
            return try await measureUserWorker(
                kind,
                worker: "the README's PHP worker × 4 (reverses the payload)",
                metered: metered,
                options: options,
                ends: .stampedInResult(
                    function: Self.stampedPHPFunction,
                    what: "the job's end (a copy of the worker whose result ends with microtime(true) taken once it reversed the payload, before its outcome write)"
                )
            ) {
                if let ended = (workers + [stamping]).first(where: { $0.exitStatus != nil }) { throw BenchmarkError("a PHP worker exited:\n\(ended.log)") }
            }
        }
    }

    static let stampedPHPFunction = "bench.php.stamped"

    /// The README's PHP worker serving `stampedPHPFunction`, its result followed by a line with the wall-clock time
    /// its work ended (taken before its outcome write, as a Swift handler's return and a program's exit are).
    static func phpWorkerStampingItsEnd(_ source: String) throws -> String {
        let edits = [
            ("$worker->addFunction('reverse',", "$worker->addFunction('\(stampedPHPFunction)',"),
            // %F: the decimal point whatever the locale.
            ("$result = strrev($payload);", #"$result = strrev($payload) . "\n" . sprintf('%.6F', microtime(true));"#),
        ]
        var text = source
        for (original, edited) in edits {
            guard text.components(separatedBy: original).count == 2 else {
                throw BenchmarkError("the README's PHP worker has no single `\(original)`: the bench cannot make the copy that reports each job's end")
            }
            text = text.replacingOccurrences(of: original, with: edited)
        }
        return text
    }

    /// Where a section learns when each job ended in its worker, to time from there to `EVENT DONE`.
    struct JobEnds: Sendable {
        /// Jobs of this function report their end (the section's own, or one a worker of the same kind serves).
        var function: String
        var what: String
        /// When the job with this id and result ended in its worker; nil if it did not say.
        var endedAt: @Sendable (GatewayJobID, ByteBuffer) -> ContinuousClock.Instant?

        /// Jobs of `function`, served by a second worker whose results end with a line stating when the work ended.
        static func stampedInResult(function: String, what: String) -> JobEnds {
            JobEnds(function: function, what: what) { _, result in BenchmarkStack.endStamped(in: String(buffer: result)) }
        }
    }

    static let stampedCommandFunction = "bench.command.stamped"

    /// The wall-clock instant (`seconds.microseconds`, either decimal separator) a program wrote as the last line of
    /// its result, on the continuous clock.
    static func endStamped(in result: String) -> ContinuousClock.Instant? {
        var wallClock = timespec()
        clock_gettime(CLOCK_REALTIME, &wallClock)
        let now = ContinuousClock.now
        guard let line = result.split(separator: "\n").last else { return nil }
        let parts = line.split(whereSeparator: { $0 == "." || $0 == "," })
        guard parts.count == 2, parts[1].count == 6, let seconds = Int64(parts[0]), let microseconds = Int64(parts[1]) else { return nil }
        return now - (.seconds(Int64(wallClock.tv_sec) - seconds) + .nanoseconds(Int64(wallClock.tv_nsec) - microseconds * 1_000))
    }

    /// Warm-up, then throughput with CPU per process, then latency one job at a time: from `SUBMIT`, and from the
    /// job's end as `ends` learns it.
    private func measureUserWorker(
        _ kind: UserWorker,
        worker: String,
        metered: MeteredProcesses,
        options: BenchmarkOptions,
        ends: JobEnds,
        check: () throws -> Void = {}
    ) async throws -> BenchmarkReport.UserWorker {
        let (connections, window) = (options.connections, options.endToEndWindow)
        // Workers started, connected and registered with gearmand once every warm-up job came back.
        _ = try await gatewayEndToEndRate(function: kind.function, jobs: connections * window * 2, connections: connections, window: window)
        try check()
        let before = try metered.seconds()
        let rate = try await gatewayEndToEndRate(function: kind.function, jobs: options.workerJobs, connections: connections, window: window)
        let used = zip(try metered.seconds(), before).map { $0 - $1 }
        try check()
        let samples = options.workerLatencySamples
        // The section's own jobs report their end (the Swift handler), or a second worker's do (a stamping program).
        let ownJobsReportTheirEnd = ends.function == kind.function
        var latencies = try await sequentialLatencies(function: kind.function, samples: samples, ends: ownJobsReportTheirEnd ? ends : nil)
        if !ownJobsReportTheirEnd {
            latencies.fromEnd = try await sequentialLatencies(function: ends.function, samples: samples, ends: ends).fromEnd
        }
        try check()
        return .init(
            what: "SUBMIT + WATCH until EVENT DONE, \(connections) connections × \(window) jobs in flight, 16-byte payloads; latency: one job at a time, SUBMIT written → EVENT DONE decoded"
                + ", and \(ends.what) → EVENT DONE decoded"
                + "; CPU: user + system from /proc/<pid>/stat over the throughput part",
            worker: worker,
            jobs: options.workerJobs,
            inFlight: connections * window,
            jobsPerSecond: rate,
            latency: .init(nanoseconds: latencies.fromSubmit),
            latencyFromEnd: .init(nanoseconds: latencies.fromEnd),
            cpuSecondsPer1000Jobs: zip(metered.roles, used).map { .init(process: $0.name, seconds: $1 / Double(options.workerJobs) * 1_000) }
        )
    }

    /// The servers this stack started (a server given with --gearman/--redis is not ours to meter) and the gateway.
    private func serverProcesses() -> MeteredProcesses {
        var metered = MeteredProcesses()
        metered.roles.append(("gateway", [gateway.pid], false))
        if let pid = serverPIDs.redis { metered.roles.append(("redis-server", [pid], false)) }
        if let pid = serverPIDs.gearmand { metered.roles.append(("gearmand", [pid], false)) }
        return metered
    }

    /// One job at a time on one connection: SUBMIT, WATCH, EVENT DONE; from writing the SUBMIT to decoding the DONE,
    /// and with `ends`, from the job's end in its worker to decoding the DONE.
    func sequentialLatencies(function: String, samples: Int, ends: JobEnds? = nil) async throws -> (fromSubmit: [Int64], fromEnd: [Int64]) {
        try await connectGateway(port: gatewayPort).executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            var latencies: (fromSubmit: [Int64], fromEnd: [Int64]) = ([], [])
            latencies.fromSubmit.reserveCapacity(samples)
            latencies.fromEnd.reserveCapacity(ends == nil ? 0 : samples)
            for _ in 0..<samples {
                var buffer = ByteBuffer()
                GatewayRequests.submit(function, payload: Self.payload, into: &buffer)
                let start = ContinuousClock.now
                try await outbound.write(buffer)
                guard case .reply(.created(let id), _) = try await iterator.nextResponse("submitting").response else {
                    throw BenchmarkError("expected CREATED")
                }
                try await outbound.write(GatewayRequests.line("WATCH \(id)"))
                while true {
                    let next = try await iterator.nextResponse("waiting for DONE")
                    guard case .event(let event, _) = next.response, event.jobID == id else { continue }
                    if case .progress = event { continue }
                    guard case .done(_, let result) = event else { throw BenchmarkError("expected EVENT DONE, got \(event)") }
                    latencies.fromSubmit.append((next.at - start).nanoseconds)
                    if let ends {
                        guard let end = ends.endedAt(id, result) else {
                            throw BenchmarkError("job \(id) of \(function) did not report its end (\(ends.what)); result: \(String(buffer: result).debugDescription)")
                        }
                        latencies.fromEnd.append((next.at - end).nanoseconds)
                    }
                    break
                }
            }
            return latencies
        }
    }

    /// The code block after `<!-- example: name -->` in the README of the source tree this was built from.
    static func readmeExample(_ name: String) throws -> String {
        let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("README.md")
        guard let text = try? String(contentsOf: readme, encoding: .utf8),
            let marked = text.range(of: "<!-- example: \(name) -->"),
            let open = text.range(of: "```", range: marked.upperBound..<text.endIndex),
            let lineEnd = text.range(of: "\n", range: open.upperBound..<text.endIndex),
            let close = text.range(of: "\n```", range: lineEnd.upperBound..<text.endIndex)
        else { throw BenchmarkError("the \(name) example is not in \(readme.path) (the README of the source tree jobgate was built from)") }
        return String(text[lineEnd.upperBound..<close.lowerBound]) + "\n"
    }
}
