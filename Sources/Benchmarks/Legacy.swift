import Foundation
import GatewayProtocol
import Gearman
import LocalServers
import Memcache
import NIOCore
import Synchronization

/// The legacy bridge against the legacy pattern it replaces. A worker written like the PHP ones (`sendStatus`,
/// then its result stored in memcached under the job handle, then `WORK_COMPLETE`) runs the same number of jobs
/// for each side, one side after the other:
/// - through a gateway bridging its function (`--legacy-functions`): every job submitted and `WATCH`ed, the
///   bridge's poller asks gearmand and reads memcached, the client waits for `EVENT … DONE`;
/// - the legacy way: each job submitted straight to gearmand and polled by its own monitor, `GET_STATUS` every
///   second, then a memcached get once gearmand no longer knows it.
///
/// Both sides reach gearmand through a counting proxy, so their status requests are counted where gearmand gets
/// them; memcached's own `cmd_get` counts the reads. Latency runs from the instant the worker starts its memcached
/// write to the client decoding `EVENT … DONE` (or the monitor having the value).
extension BenchmarkStack {
    static let legacyFunction = "bench.legacy"

    struct LegacySide {
        /// Per job, nanoseconds.
        var latencies: [Int64] = []
        /// Σ over jobs of submit → outcome seen: how long jobs were watched.
        var watched: Duration = .zero
        var elapsed: Duration = .zero
        var statusRequests = 0
        var statusRoundTrips = 0
        var memcachedGets = 0
    }

    func legacyBridge(jobs: Int, concurrency: Int, progress: @Sendable (String) -> Void) async throws -> (gateway: LegacySide, polling: LegacySide) {
        let memcached = try await LocalServer.start(.memcached)
        defer { memcached.stop() }
        let proxy = try await GearmanCountingProxy.start(upstream: gearman)
        return try await withCleanUp {
            try await legacyBridge(jobs: jobs, concurrency: concurrency, memcached: memcached, proxy: proxy, progress: progress)
        } cleanUp: {
            await proxy.close()
        }
    }

    private func legacyBridge(
        jobs: Int,
        concurrency: Int,
        memcached: LocalServer,
        proxy: GearmanCountingProxy,
        progress: @Sendable (String) -> Void
    ) async throws -> (gateway: LegacySide, polling: LegacySide) {
        // Its own gateway, reaching gearmand through the proxy; its own key prefix, so the main gateway's
        // keyspace subscription does not see these jobs.
        let (gateway, port) = try await Self.launchGateway(
            executable,
            [
                "--gearman", "127.0.0.1:\(proxy.port)", "--redis", "\(redis.host):\(redis.port)", "--key-prefix", "jobgate-bench-legacy:",
                "--legacy-functions", "\(Self.legacyFunction):pecl-memcache", "--memcached", memcached.address,
            ]
        )
        defer { gateway.stop() }
        let servers = [MemcacheServer(host: memcached.host, port: memcached.port)]
        let writer = try MemcacheClient(servers: servers, distribution: .peclMemcacheConsistent, logger: logger)
        let reader = try MemcacheClient(servers: servers, distribution: .peclMemcacheConsistent, logger: logger)
        let written = Instants()
        let failure = FirstFailure()
        var configuration = GearmanWorkerConfiguration()
        configuration.concurrency = concurrency
        let worker = try GearmanWorker(
            servers: [gearman],
            handlers: [
                Self.legacyFunction: { job, reporter in
                    do {
                        let hold = Duration.milliseconds(Int.random(in: 500..<1_500))
                        try await reporter.status(numerator: 1, denominator: 3)
                        try await Task.sleep(for: hold / 2)
                        try await reporter.status(numerator: 2, denominator: 3)
                        try await Task.sleep(for: hold / 2)
                        written.record(job.unique)
                        try await writer.setPHPString(job.handle, to: "result of \(job.unique)", exptime: 3_600)
                        return .complete(ByteBuffer())
                    } catch {
                        failure.record("legacy worker, job \(job.handle): \(error)")
                        return .fail
                    }
                }
            ],
            configuration: configuration,
            logger: logger
        )
        // Each side: the worker's hold (0.5–1.5 s) per wave of `concurrency` jobs, plus generous slack.
        let deadline = Duration.seconds(60 + 3 * (jobs + concurrency - 1) / concurrency)
        return try await withCleanUp {
            try await runLegacySides(jobs: jobs, concurrency: concurrency, worker: worker, port: port, memcachedPort: memcached.port, deadline: deadline,
                                     written: written, failure: failure, reader: reader, proxy: proxy, progress: progress)
        } cleanUp: {
            await writer.shutdown()
            await reader.shutdown()
        }
    }

    private func runLegacySides(
        jobs: Int, concurrency: Int, worker: GearmanWorker, port: Int, memcachedPort: Int, deadline: Duration,
        written: Instants, failure: FirstFailure, reader: MemcacheClient, proxy: GearmanCountingProxy, progress: @Sendable (String) -> Void
    ) async throws -> (gateway: LegacySide, polling: LegacySide) {
        try await withService({ try await worker.run() }, drain: { worker.drain() }) {
            progress("  through the gateway: \(jobs) jobs submitted and watched, worker concurrency \(concurrency)")
            let bridged = try await withDeadline(deadline, "the legacy jobs through the gateway") {
                try await Self.legacyThroughGateway(port: port, jobs: jobs, written: written, proxy: proxy, memcachedPort: memcachedPort)
            }
            if let message = failure.message { throw BenchmarkError(message) }
            progress("  polled: \(jobs) jobs, each with its own monitor (GET_STATUS every 1 s, then memcached)")
            let polled = try await withDeadline(deadline, "the polled legacy jobs") {
                try await Self.legacyPolled(
                    jobs: jobs, interval: .seconds(1), written: written, reader: reader, proxy: proxy, memcachedPort: memcachedPort
                )
            }
            if let message = failure.message { throw BenchmarkError(message) }
            return (bridged, polled)
        }
    }

    /// SUBMIT then WATCH each job, spread over a few connections, until every `EVENT … DONE`.
    private static func legacyThroughGateway(port: Int, jobs: Int, written: Instants, proxy: GearmanCountingProxy, memcachedPort: Int) async throws -> LegacySide {
        let pollsBefore = try await gatewayStatistic("legacy_polls", port: port)
        let statusBefore = proxy.requests(.getStatus, .getStatusUnique)
        let getsBefore = try memcachedGets(port: memcachedPort)
        let start = ContinuousClock.now
        var side = LegacySide()
        try await withThrowingTaskGroup(of: [(latency: Int64, watched: Duration)].self) { group in
            for share in shares(jobs, 4) {
                group.addTask {
                    try await connectGateway(port: port).executeThenClose { inbound, outbound in
                        var iterator = inbound.makeAsyncIterator()
                        var created: [GatewayJobID: ContinuousClock.Instant] = [:]
                        var seen: [(latency: Int64, watched: Duration)] = []
                        func take(_ next: Stamped) throws {
                            guard case .event(let event, _) = next.response, event.isTerminal, let since = created[event.jobID] else { return }
                            guard case .done = event else { throw BenchmarkError("expected EVENT DONE, got \(event)") }
                            guard let write = written[event.jobID.rawValue] else { throw BenchmarkError("DONE before the worker stored \(event.jobID)") }
                            created[event.jobID] = nil
                            seen.append(((next.at - write).nanoseconds, next.at - since))
                        }
                        for _ in 0..<share {
                            var buffer = ByteBuffer()
                            GatewayRequests.submit(legacyFunction, payload: payload, into: &buffer)
                            try await outbound.write(buffer)
                            var reply = try await iterator.nextResponse("submitting")
                            while case .event = reply.response {
                                try take(reply)
                                reply = try await iterator.nextResponse("submitting")
                            }
                            guard case .reply(.created(let id), _) = reply.response else { throw BenchmarkError("expected CREATED, got \(reply.response)") }
                            try await outbound.write(GatewayRequests.line("WATCH \(id)"))
                            var watching = try await iterator.nextResponse("watching")
                            while case .event = watching.response {
                                try take(watching)
                                watching = try await iterator.nextResponse("watching")
                            }
                            guard case .reply(.watching(_, let status), _) = watching.response, status.state != .done else {
                                throw BenchmarkError("expected WATCHING of an unfinished job, got \(watching.response)")
                            }
                            created[id] = reply.at
                        }
                        while !created.isEmpty { try take(try await iterator.nextResponse("waiting for DONE")) }
                        return seen
                    }
                }
            }
            for try await seen in group {
                side.latencies += seen.map(\.latency)
                side.watched = seen.reduce(side.watched) { $0 + $1.watched }
            }
        }
        side.elapsed = .now - start
        side.statusRequests = proxy.requests(.getStatus, .getStatusUnique) - statusBefore
        side.statusRoundTrips = try await gatewayStatistic("legacy_polls", port: port) - pollsBefore
        side.memcachedGets = try memcachedGets(port: memcachedPort) - getsBefore
        return side
    }

    /// The PHP monitor: submit in the background, then per job its own connection polling `GET_STATUS` every
    /// `interval` (from a random phase) until gearmand no longer knows the job, then a memcached get by handle.
    private static func legacyPolled(
        jobs: Int,
        interval: Duration,
        written: Instants,
        reader: MemcacheClient,
        proxy: GearmanCountingProxy,
        memcachedPort: Int
    ) async throws -> LegacySide {
        let address = GearmanServerAddress(host: "127.0.0.1", port: proxy.port)
        let clients = (0...jobs).map { _ in GearmanClient(address: address) }
        return try await withCleanUp {
            try await pollLegacyJobs(
                submitter: clients[0], monitors: Array(clients.dropFirst()), interval: interval, written: written, reader: reader, proxy: proxy,
                memcachedPort: memcachedPort
            )
        } cleanUp: {
            for client in clients { await client.shutdown() }
        }
    }

    private static func pollLegacyJobs(
        submitter: GearmanClient,
        monitors: [GearmanClient],
        interval: Duration,
        written: Instants,
        reader: MemcacheClient,
        proxy: GearmanCountingProxy,
        memcachedPort: Int
    ) async throws -> LegacySide {
        // Connected before the clock starts, as a PHP client is before it polls.
        for monitor in monitors { _ = try await monitor.echo() }
        let jobs = monitors.count
        let statusBefore = proxy.requests(.getStatus, .getStatusUnique)
        let getsBefore = try memcachedGets(port: memcachedPort)
        let start = ContinuousClock.now
        let run = UUID().uuidString
        let requests = (0..<jobs).map { GearmanJobRequest(function: legacyFunction, unique: "bench-legacy-\(run)-\($0)", payload: payload) }
        let handles = try await submitter.submitBackground(requests).map { try $0.get() }
        let submitted = ContinuousClock.now
        var side = LegacySide()
        let polls = Counter()
        try await withThrowingTaskGroup(of: (latency: Int64, watched: Duration).self) { group in
            for ((request, handle), monitor) in zip(zip(requests, handles), monitors) {
                group.addTask {
                    var next = submitted + interval * Double.random(in: 0..<1)
                    while true {
                        try await Task.sleep(until: next, clock: .continuous)
                        polls.increment()
                        let status = try await monitor.status(handle: handle)
                        if !status.known, try await reader.getPHPValue(handle, writtenBy: .peclMemcache) != nil {
                            let at = ContinuousClock.now
                            guard let write = written[request.unique] else { throw BenchmarkError("no result write recorded for \(handle)") }
                            return ((at - write).nanoseconds, at - submitted)
                        }
                        next += interval
                    }
                }
            }
            for try await seen in group {
                side.latencies.append(seen.latency)
                side.watched += seen.watched
            }
        }
        side.elapsed = .now - start
        side.statusRequests = proxy.requests(.getStatus, .getStatusUnique) - statusBefore
        side.statusRoundTrips = polls.current
        side.memcachedGets = try memcachedGets(port: memcachedPort) - getsBefore
        return side
    }

    /// One figure of the gateway's `STATS`.
    static func gatewayStatistic(_ name: String, port: Int) async throws -> Int {
        try await connectGateway(port: port).executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            try await outbound.write(GatewayRequests.line("STATS"))
            guard case .reply(.stats(let statistics), _) = try await iterator.nextResponse("asking for STATS").response else {
                throw BenchmarkError("expected STATS")
            }
            guard let value = statistics.first(where: { $0.name == name }).flatMap({ Int($0.value) }) else {
                throw BenchmarkError("STATS has no number \(name)")
            }
            return value
        }
    }

    /// memcached's own count of keys asked for (`stats`: `cmd_get`, which includes `gets`).
    static func memcachedGets(port: Int) throws -> Int {
        let socket = try LoopbackSocket(port: port, timeoutMs: 2_000)
        try socket.send(Array("stats\r\n".utf8))
        let reply = String(decoding: try socket.receive { $0.suffix(5).elementsEqual("END\r\n".utf8) }, as: UTF8.self)
        for line in reply.split(whereSeparator: \.isNewline) {
            let words = line.split(separator: " ")
            if words.count == 3, words[0] == "STAT", words[1] == "cmd_get", let value = Int(words[2]) {
                return value
            }
        }
        throw BenchmarkError("memcached's stats have no cmd_get:\n\(reply)")
    }
}

/// `body`, then `cleanUp` whether it threw or not.
func withCleanUp<T>(_ body: () async throws -> T, cleanUp: () async -> Void) async throws -> T {
    do {
        let result = try await body()
        await cleanUp()
        return result
    } catch {
        await cleanUp()
        throw error
    }
}

/// `body`, or an error once `timeout` has passed: a section that stalls fails instead of hanging the bench. A
/// body that ignores cancellation is left behind (the bench then ends with the error).
func withDeadline<T: Sendable>(_ timeout: Duration, _ what: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let first = FirstResult<T>()
    return try await withCheckedThrowingContinuation { continuation in
        first.set(continuation)
        let work = Task {
            do { first.resume(.success(try await body())) } catch { first.resume(.failure(error)) }
        }
        let watchdog = Task {
            try await Task.sleep(for: timeout)
            work.cancel()
            first.resume(.failure(BenchmarkError("\(what) did not finish within \(timeout)")))
        }
        first.onResume { watchdog.cancel() }
    }
}

/// Resumes a continuation once, with whichever result comes first.
private final class FirstResult<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, any Error>?
        var done = false
        var onResume: (@Sendable () -> Void)?
    }

    private let state = Mutex(State())

    func set(_ continuation: CheckedContinuation<T, any Error>) { state.withLock { $0.continuation = continuation } }

    func onResume(_ action: @escaping @Sendable () -> Void) {
        let runNow = state.withLock { state -> Bool in
            if state.done { return true }
            state.onResume = action
            return false
        }
        if runNow { action() }
    }

    func resume(_ result: Result<T, any Error>) {
        let (continuation, action) = state.withLock { state -> (CheckedContinuation<T, any Error>?, (@Sendable () -> Void)?) in
            guard !state.done else { return (nil, nil) }
            state.done = true
            defer { state.continuation = nil; state.onResume = nil }
            return (state.continuation, state.onResume)
        }
        continuation?.resume(with: result)
        action?()
    }
}
