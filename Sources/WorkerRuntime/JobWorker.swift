public import Gearman
public import JobStore
public import JobgateSupport
public import LegacyJobs
public import Logging
public import NIOCore
import NIOPosix
public import Redis
public import ServiceLifecycle
import Synchronization

/// Runs one job: gets the job as gearmand handed it (payload, unique, handle, function) and a context to
/// report progress; returns the result bytes, or throws to fail the job (the error is the reason, see
/// `JobWorkerError`).
public typealias JobHandler = @Sendable (GearmanJob, JobContext) async throws -> ByteBuffer

/// The functions a worker serves.
public struct JobRegistry: Sendable {
    var handlers: [String: JobHandler] = [:]

    public init() {}

    /// Serves `function` with a Swift handler (a later registration of the same name replaces it).
    public mutating func register(_ function: String, _ handler: @escaping JobHandler) {
        // On the cooperative pool: the worker runs a job's steps on an event loop, where code that computes for long
        // would hold up every connection of that loop.
        handlers[function] = { job, context in
            try await withTaskExecutorPreference(globalConcurrentExecutor) { try await handler(job, context) }
        }
    }

    /// Serves `function` by running `command` once per job (see `JobCommand` for its contract). The program
    /// also gets `JOBGATE_FUNCTION`, `JOBGATE_HANDLE`, `JOBGATE_UNIQUE` (= `JOBGATE_JOB_ID`) and
    /// `JOBGATE_PROGRESS_FD=3` in its environment.
    public mutating func register(_ function: String, command: JobCommand) {
        // On the job's event loop: the program runs on a thread of its own, this only waits for it.
        handlers[function] = { job, context in
            let environment = [
                "JOBGATE_FUNCTION": job.function, "JOBGATE_HANDLE": job.handle, "JOBGATE_UNIQUE": job.unique,
                "JOBGATE_JOB_ID": job.unique, "JOBGATE_PROGRESS_FD": "\(ChildProcess.progressDescriptor)",
            ]
            return try await command.run(input: job.payload, environment: environment) { progress in
                await context.progress(progress)
            }
        }
    }

    public var functions: [String] { handlers.keys.sorted() }
}

/// What a running handler can do besides returning: report progress.
public struct JobContext: Sendable {
    public let job: GearmanJob
    /// The job's id in the job store (its Gearman unique key), when the unique is a valid id.
    public let id: JobID?
    public let logger: Logger
    let reporter: GearmanJobReporter
    let store: RedisJobStore

    /// Reports progress to gearmand (`WORK_STATUS`) and to the job store. Best effort: a lost progress
    /// report is logged and never fails the job.
    public func progress(_ numerator: UInt32, of denominator: UInt32, message: String = "") async {
        do {
            try await reporter.status(numerator: numerator, denominator: denominator)
        } catch {
            logger.debug("progress not sent to gearmand", metadata: ["gearman.error": "\(error)"])
        }
        guard let id else { return }
        do {
            try await store.reportProgress(id, numerator: numerator, denominator: denominator, message: ByteBuffer(string: message))
        } catch {
            logger.warning("progress not stored", metadata: ["jobstore.error": "\(error)"])
        }
    }

    public func progress(_ progress: JobProgress) async {
        await self.progress(progress.numerator, of: progress.denominator, message: progress.message)
    }
}

public struct JobWorkerConfiguration: Sendable {
    /// Jobs run at once, across all gearmand servers and functions.
    public var concurrency: Int = 1
    /// Seconds a finished record is kept when the submission did not set its own (nil: the store's default).
    public var resultTTL: Int?
    /// Waits between attempts to store a job's start or outcome while Redis is unreachable.
    public var storeBackoff = Backoff(initial: .milliseconds(100), maximum: .seconds(5))
    /// Attempts at the memcached dual-write before it is given up (it never holds the job back longer).
    public var legacyAttempts = 3
    /// Connection settings towards gearmand (its `concurrency` is replaced by the one above).
    public var gearman = GearmanWorkerConfiguration()

    public init() {}
}

/// Takes jobs from gearmand, runs them and publishes their progress and outcome to the job store.
///
/// Per job, in this order: mark it running in Redis (a requeued copy of a finished job is not run again);
/// each progress report goes to gearmand and to Redis; the outcome and its TTL go to Redis in one
/// `MULTI/EXEC`, retried with backoff while Redis is unreachable; optionally the result is also stored in
/// memcached under the job handle for legacy readers; only then `WORK_COMPLETE` (or `WORK_FAIL`) goes to
/// gearmand, so gearmand never forgets a job whose outcome is not stored.
///
/// A `Service`: on graceful shutdown it takes no new job and `run()` returns once the running jobs have
/// published and reported.
public final class JobWorker: Service {
    private let worker: GearmanWorker

    /// - Parameters:
    ///   - servers: the gearmand servers to take jobs from.
    ///   - registry: the functions to serve.
    ///   - store: where progress and outcomes go (the caller owns and closes its Redis pool).
    ///   - legacy: when set, results are also stored in memcached under the Gearman job handle.
    public init(
        servers: [GearmanServerAddress],
        registry: JobRegistry,
        store: RedisJobStore,
        legacy: LegacyResultStore? = nil,
        configuration: JobWorkerConfiguration = .init(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "jobgate.worker")
    ) throws(JobWorkerError) {
        let runner = JobRunner(handlers: registry.handlers, store: store, legacy: legacy, configuration: configuration, logger: logger)
        var gearman = configuration.gearman
        gearman.concurrency = configuration.concurrency
        // A job's steps (mark running, outcome, report) on its connection's loop; Swift handlers go to the pool.
        gearman.runsHandlersOnEventLoops = true
        var handlers: [String: GearmanJobHandler] = [:]
        for function in registry.handlers.keys {
            handlers[function] = { job, reporter in await runner.execute(job, reporter: reporter) }
        }
        do {
            worker = try GearmanWorker(servers: servers, handlers: handlers, configuration: gearman, eventLoopGroup: eventLoopGroup, logger: logger)
        } catch {
            throw JobWorkerError(.invalidConfiguration, error.message)
        }
    }

    public func run() async throws {
        try await worker.run()
    }

    /// Take no new job; `run()` returns once the running ones have published and reported.
    public func drain() {
        worker.drain()
    }
}

/// The per-job sequence of `JobWorker`.
struct JobRunner: Sendable {
    let handlers: [String: JobHandler]
    let store: RedisJobStore
    let legacy: LegacyResultStore?
    let configuration: JobWorkerConfiguration
    let logger: Logger
    /// Shared by the jobs running at once, so an outage is logged once, not once per job and retry.
    let redisOutage = OutageClock()

    // MARK: One job

    private enum Outcome {
        case done(ByteBuffer)
        case failed(ByteBuffer)
    }

    func execute(_ job: GearmanJob, reporter: GearmanJobReporter) async -> GearmanJobOutcome {
        var logger = self.logger
        logger[metadataKey: "gearman.handle"] = "\(job.handle)"
        logger[metadataKey: "gearman.function"] = "\(job.function)"
        logger[metadataKey: "job.id"] = "\(job.unique)"
        let id = JobID(rawValue: job.unique)
        if id == nil {
            logger.warning("the job's unique key is not a job id: running it without publishing to Redis")
        }

        var ttl = configuration.resultTTL
        if let id {
            let started = await untilStored("mark running", logger) { () async throws(JobStoreError) in
                try await store.markRunning(id, function: job.function, handle: job.handle, server: "\(job.server)")
            }
            guard case .some(let requested) = started else { return abandoned(logger) }
            if let requested {
                ttl = requested
            } else if let finished = await finishedOutcome(of: id, logger) {
                // A requeued copy of a job whose outcome is stored: repeat the outcome, do not run it again.
                logger.info("job already finished; reporting its stored outcome")
                return finished
            }
        }
        if let legacy {
            // Handles restart at 1 with gearmand: a legacy reader must not find an earlier job's value here.
            do { try await legacy.clear(handle: job.handle) } catch { logger.warning("memcached clear failed", metadata: ["memcache.error": "\(error)"]) }
        }

        let context = JobContext(job: job, id: id, logger: logger, reporter: reporter, store: store)
        let outcome: Outcome
        do {
            guard let handler = handlers[job.function] else { throw JobWorkerError.failed("no handler for function \(job.function)") }
            outcome = .done(try await handler(job, context))
        } catch let error as JobWorkerError {
            outcome = .failed(ByteBuffer(string: error.message))
        } catch {
            outcome = .failed(ByteBuffer(string: "\(error)"))
        }

        if let id {
            let stored: Void? = await untilStored("store the outcome", logger) { () async throws(JobStoreError) in
                switch outcome {
                case .done(let result): try await store.complete(id, result: result, ttl: ttl)
                case .failed(let reason): try await store.fail(id, reason: reason, ttl: ttl)
                }
            }
            guard stored != nil else { return abandoned(logger) }
        }
        switch outcome {
        case .done(let result):
            if let legacy { await dualWrite(result, handle: job.handle, legacy: legacy, logger) }
            logger.debug("job done", metadata: ["job.result_bytes": "\(result.readableBytes)"])
            return .complete(result)
        case .failed(let reason):
            logger.info("job failed", metadata: ["job.reason": "\(String(buffer: reason))"])
            return .fail
        }
    }

    /// The stored outcome when the record is finished, as gearmand should hear it.
    private func finishedOutcome(of id: JobID, _ logger: Logger) async -> GearmanJobOutcome? {
        guard let record = try? await store.record(id) else { return nil }
        switch record.state {
        case .done: return .complete(record.result ?? ByteBuffer())
        case .failed: return .fail
        case .queued, .running: return nil
        }
    }

    /// Runs `body` until Redis takes it, backing off between attempts; nil only when the task was cancelled.
    private func untilStored<T>(_ what: String, _ logger: Logger, _ body: () async throws(JobStoreError) -> T) async -> T? {
        var attempt = 0
        while true {
            do {
                let value = try await body()
                if let outage = redisOutage.ended() {
                    logger.notice("Redis reachable again", metadata: ["redis.outage_ms": "\(outage)", "job.step": "\(what)"])
                }
                if attempt > 0 { logger.info("job store reachable again", metadata: ["job.step": "\(what)", "job.attempts": "\(attempt + 1)"]) }
                return value
            } catch {
                attempt += 1
                let delay = configuration.storeBackoff.delay(afterFailures: attempt)
                if redisOutage.began() {
                    logger.warning("Redis unreachable", metadata: ["jobstore.error": "\(error)", "job.step": "\(what)"])
                }
                logger.info(
                    "job store write failed; retrying",
                    metadata: ["job.step": "\(what)", "jobstore.error": "\(error)", "job.retry_in": "\(delay)"]
                )
                do { try await Task.sleep(for: delay) } catch { return nil }
            }
        }
    }

    /// Cancelled (hard shutdown) before the outcome was stored. gearmand drops a job it hears WORK_FAIL for,
    /// but the connection is going away with the process and a job that was never reported is requeued.
    private func abandoned(_ logger: Logger) -> GearmanJobOutcome {
        logger.error("job abandoned: cancelled before its outcome was stored")
        return .fail
    }

    private func dualWrite(_ result: ByteBuffer, handle: String, legacy: LegacyResultStore, _ logger: Logger) async {
        for attempt in 1...max(1, configuration.legacyAttempts) {
            do {
                try await legacy.store(result, handle: handle)
                return
            } catch {
                logger.warning("memcached dual-write failed", metadata: ["memcache.error": "\(error)", "memcache.attempt": "\(attempt)"])
                try? await Task.sleep(for: configuration.storeBackoff.delay(afterFailures: attempt))
            }
        }
    }
}

/// A backend's outage as the worker sees it through its writes: the first failure starts it, the next success ends it.
final class OutageClock: Sendable {
    private let since = Mutex<ContinuousClock.Instant?>(nil)

    /// True when this failure starts an outage (log it then, not on every retry).
    func began() -> Bool {
        since.withLock { since in
            guard since == nil else { return false }
            since = .now
            return true
        }
    }

    /// The outage's length in milliseconds, when this success ends one.
    func ended() -> Int64? {
        guard let start = since.withLock({ since in defer { since = nil }; return since }) else { return nil }
        let length = ContinuousClock.now - start
        return length.components.seconds * 1000 + length.components.attoseconds / 1_000_000_000_000_000
    }
}
