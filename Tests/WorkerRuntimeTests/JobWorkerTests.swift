import Foundation
import Gearman
import JobStore
import JobgateSupport
import LegacyJobs
import LocalServers
import Memcache
import Logging
import NIOCore
import NIOPosix
import Redis
import ServiceLifecycle
import Synchronization
import Testing
import WorkerRuntime

func makeWorker(
    _ gearmand: LocalServer,
    store: RedisJobStore,
    concurrency: Int = 1,
    legacy: LegacyResultStore? = nil,
    logger: Logger = Logger(label: "jobgate.worker"),
    _ register: (inout JobRegistry) -> Void
) throws -> JobWorker {
    var registry = JobRegistry()
    register(&registry)
    var configuration = JobWorkerConfiguration()
    configuration.concurrency = concurrency
    configuration.storeBackoff = Backoff(initial: .milliseconds(50), maximum: .milliseconds(300))
    return try JobWorker(
        servers: [gearmand.gearmanAddress], registry: registry, store: store, legacy: legacy, configuration: configuration, logger: logger
    )
}

/// The Swift worker API against real gearmand and redis-server.
@Suite("Job worker", .timeLimit(.minutes(3)))
struct JobWorkerTests {
    /// running → progress (to gearmand and Redis) → done with the result; the change feed sees each step.
    @Test func publishesRunningProgressAndDone() async throws {
        try await withWorkerServers { redis, gearmand, store, gearman in
            let startProgress = Gate(), finish = Gate()
            let worker = try makeWorker(gearmand, store: store) { registry in
                registry.register("upper") { job, context in
                    await startProgress.wait()
                    await context.progress(1, of: 2, message: "half way")
                    await finish.wait()
                    return ByteBuffer(string: String(buffer: job.payload).uppercased())
                }
            }
            try await withFeed(store) { log in
                try await withRunning(worker) {
                    let id = newID()
                    log.follow(id)
                    let (_, handle) = try await submit("upper", "hello", store: store, gearman: gearman, id: id, resultTTL: 600)
                    try await eventually("running") { log.all.contains { $0.record?.state == .running } }
                    let running = try #require(try await store.record(id))
                    #expect(running.handle == handle && running.server == "\(gearmand.gearmanAddress)" && running.started != nil)
                    startProgress.open()
                    try await eventually("progress") { log.all.contains { $0.record?.numerator == 1 } }
                    let progress = try #require(log.all.last?.record)
                    #expect(progress.state == .running && progress.denominator == 2 && progress.message == ByteBuffer(string: "half way"))
                    let status = try await gearman.status(handle: handle)
                    #expect(status.running && status.numerator == 1 && status.denominator == 2, "WORK_STATUS reached gearmand")
                    finish.open()
                    try await eventually("done") { log.all.contains { $0.record?.state == .done } }
                    let done = try #require(try await store.record(id))
                    #expect(done.result == ByteBuffer(string: "HELLO") && done.finished != nil)
                    let ttl = try await store.redis.send(["TTL", "\(store.schema.jobKey(id))"]).int ?? 0
                    #expect((590...600).contains(ttl), "the submitter's result TTL: \(ttl)")
                    // Before the worker, the feed may see the gateway's own writes (queued).
                    #expect(Array(log.all.map { $0.record?.state }.drop { $0 == .queued }) == [.running, .running, .done])
                    try await eventually("gearmand to forget the job") { try await !gearman.status(handle: handle).known }
                }
            }
        }
    }

    /// The worker's steps around a job run on an event loop, but a Swift handler runs on the cooperative pool: a
    /// handler that computes for long holds up no connection.
    @Test func aSwiftHandlerRunsOffTheEventLoops() async throws {
        try await withWorkerServers { redis, gearmand, store, gearman in
            let onALoop = Mutex<[Bool]>([])
            let worker = try makeWorker(gearmand, store: store) { registry in
                registry.register("where") { job, _ in
                    onALoop.withLock { $0.append(MultiThreadedEventLoopGroup.singleton.makeIterator().contains { $0.inEventLoop }) }
                    return job.payload
                }
            }
            try await withRunning(worker) {
                let (id, _) = try await submit("where", "x", store: store, gearman: gearman)
                try await eventually("done") { try await store.record(id)?.state == .done }
            }
            #expect(onALoop.withLock { $0 } == [false])
        }
    }

    /// A failing handler → `failed` with its reason in Redis, and WORK_FAIL to gearmand (a foreground client
    /// sees the failure).
    @Test func failingHandler() async throws {
        try await withWorkerServers { redis, gearmand, store, gearman in
            struct Broken: Error, CustomStringConvertible { var description: String { "broken pipe in resize" } }
            let worker = try makeWorker(gearmand, store: store) { registry in
                registry.register("resize") { job, _ in
                    if String(buffer: job.payload) == "typed" { throw JobWorkerError.failed("disk full") }
                    throw Broken()
                }
            }
            try await withRunning(worker) {
                for (payload, reason) in [("typed", "disk full"), ("other", "broken pipe in resize")] {
                    let id = newID()
                    _ = try await store.create(id: id, function: "resize", unique: nil)
                    let job = try await gearman.submitForeground(GearmanJobRequest(function: "resize", unique: id.rawValue, payload: ByteBuffer(string: payload)))
                    let error = await #expect(throws: GearmanError.self) { try await withTimeout(.seconds(10), "the job") { try await job.result() } }
                    #expect(error?.code == .jobFailed && error?.message.contains("failed") == true, "WORK_FAIL: \(String(describing: error))")
                    let record = try #require(try await store.record(id))
                    #expect(record.state == .failed && record.reason == ByteBuffer(string: reason))
                }
            }
        }
    }

    /// Redis killed before the outcome is written and back 3 s later on the same port: the worker keeps the
    /// job (gearmand still shows it running) until the outcome is stored, then reports WORK_COMPLETE.
    @Test func redisDownAtCompletion() async throws {
        try await withWorkerServers(redisArguments: ["--appendonly", "yes", "--appendfsync", "always"]) { redis, gearmand, store, gearman in
            let finish = Gate()
            let worker = try makeWorker(gearmand, store: store) { registry in
                registry.register("slow") { job, _ in
                    await finish.wait()
                    return ByteBuffer(string: "result of \(job.unique)")
                }
            }
            try await withRunning(worker) {
                let (id, handle) = try await submit("slow", "x", store: store, gearman: gearman, resultTTL: 600)
                try await eventually("running") { try await store.record(id)?.state == .running }
                redis.kill()
                finish.open()
                let downSince = ContinuousClock.now
                while ContinuousClock.now - downSince < .seconds(3) {
                    let status = try await gearman.status(handle: handle)
                    #expect(status.known && status.running, "gearmand must keep the job while its result is not stored")
                    try await Task.sleep(for: .milliseconds(250))
                }
                try await redis.launch()
                try await eventually("the stored result", timeout: .seconds(15)) {
                    (try? await store.record(id))??.state == .done
                }
                let record = try #require(try await store.record(id))
                #expect(record.result == ByteBuffer(string: "result of \(id)"))
                #expect(record.handle == handle && record.started != nil, "the record from before the kill survived")
                try await eventually("WORK_COMPLETE after the store", timeout: .seconds(10)) { try await !gearman.status(handle: handle).known }
            }
        }
    }

    /// Graceful shutdown while 5 jobs run: all 5 publish their results, no new job is taken, `run()` returns.
    @Test func gracefulShutdownDrains() async throws {
        try await withWorkerServers { redis, gearmand, store, gearman in
            let finish = Gate()
            let worker = try makeWorker(gearmand, store: store, concurrency: 5) { registry in
                registry.register("work") { job, _ in
                    await finish.wait()
                    return ByteBuffer(string: "done \(String(buffer: job.payload))")
                }
            }
            let running = RunningService(worker)
            var jobs: [(id: JobID, handle: String)] = []
            for index in 0..<5 { jobs.append(try await submit("work", "\(index)", store: store, gearman: gearman)) }
            try await eventually("5 jobs running") {
                try await store.records(jobs.map(\.id)).allSatisfy { $0?.state == .running }
            }
            await running.group.triggerGracefulShutdown()
            let late = try await submit("work", "late", store: store, gearman: gearman)
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await store.record(late.id)?.state == .queued, "no new job while draining")
            finish.open()
            try await withTimeout(.seconds(20), "the worker to stop") { try await running.task.value }
            for (index, record) in try await store.records(jobs.map(\.id)).enumerated() {
                #expect(record?.state == .done && record?.result == ByteBuffer(string: "done \(index)"))
            }
            #expect(try await store.record(late.id)?.state == .queued)
            for job in jobs { #expect(try await !gearman.status(handle: job.handle).known, "WORK_COMPLETE reached gearmand") }
            let lateStatus = try await gearman.status(handle: late.handle)
            #expect(lateStatus.known && !lateStatus.running, "the late job waits for another worker")
        }
    }

    /// A requeued copy of a job that already finished is not run again; gearmand hears the stored outcome.
    @Test func finishedJobIsNotRunAgain() async throws {
        try await withWorkerServers { redis, gearmand, store, gearman in
            let calls = Recorder<String>()
            let worker = try makeWorker(gearmand, store: store) { registry in
                registry.register("once") { job, _ in
                    calls.append(job.unique)
                    return ByteBuffer(string: "fresh")
                }
            }
            try await withRunning(worker) {
                let id = newID()
                _ = try await store.create(id: id, function: "once", unique: nil)
                try await store.complete(id, result: ByteBuffer(string: "stored"))
                let job = try await gearman.submitForeground(GearmanJobRequest(function: "once", unique: id.rawValue, payload: ByteBuffer()))
                #expect(try await withTimeout(.seconds(10), "the job") { try await job.result() } == ByteBuffer(string: "stored"))
                #expect(calls.all.isEmpty)
                #expect(try await store.record(id)?.result == ByteBuffer(string: "stored"))
            }
        }
    }

    /// Dual-write: the result is also in memcached under the Gearman handle (what legacy readers fetch),
    /// written before WORK_COMPLETE.
    @Test func dualWriteToMemcached() async throws {
        try await withLocalServer(.redis) { redis in
            try await withLocalServer(.gearmand) { gearmand in
                try await withLocalServer(.memcached) { memcached in
                    let store = makeStore(redis)
                    let gearman = GearmanClient(address: gearmand.gearmanAddress)
                    let memcache = try MemcacheClient(servers: [MemcacheServer(host: memcached.host, port: memcached.port)], distribution: .single)
                    let legacy = LegacyResultStore(memcache: memcache, writtenBy: .peclMemcache)
                    let worker = try makeWorker(gearmand, store: store, legacy: legacy) { registry in
                        registry.register("legacy") { job, _ in ByteBuffer(string: "for \(job.handle)") }
                    }
                    try await withRunning(worker) {
                        let (_, handle) = try await submit("legacy", "x", store: store, gearman: gearman)
                        try await eventually("gearmand to forget the job") { try await !gearman.status(handle: handle).known }
                        // No wait here: once gearmand forgot the job, the value must already be there.
                        #expect(try await legacy.result(handle: handle) == .string(ByteBuffer(string: "for \(handle)")))
                    }
                    await memcache.shutdown()
                    await gearman.shutdown()
                    await store.redis.close()
                }
            }
        }
    }
}
