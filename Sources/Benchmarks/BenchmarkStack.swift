import Foundation
import Gearman
import JobStore
import LocalServers
import Logging
import NIOCore
import Redis
import Synchronization
import WorkerRuntime

#if canImport(Glibc)
import Glibc
#endif

/// gearmand, redis-server and a `jobgate serve` process on loopback, plus what the bench's in-process workers need.
final class BenchmarkStack: Sendable {
    let gearman: GearmanServerAddress
    let redis: (host: String, port: Int)
    let gateway: LocalProcess
    let gatewayPort: Int
    /// The servers this stack started, to meter their CPU (nil: given with --gearman/--redis).
    let serverPIDs: (redis: pid_t?, gearmand: pid_t?)
    let store: RedisJobStore
    let redisPool: RedisConnectionPool
    /// The `jobgate` executable, for gateways a section starts itself.
    let executable: String
    let logger: Logger

    private init(
        gearman: GearmanServerAddress,
        redis: (String, Int),
        serverPIDs: (redis: pid_t?, gearmand: pid_t?),
        gateway: LocalProcess,
        gatewayPort: Int,
        executable: String,
        logger: Logger
    ) {
        self.gearman = gearman
        self.serverPIDs = serverPIDs
        self.redis = redis
        self.gateway = gateway
        self.gatewayPort = gatewayPort
        self.executable = executable
        self.logger = logger
        redisPool = RedisConnectionPool(configuration: .init(host: redis.0, port: redis.1), size: 4, logger: logger)
        store = RedisJobStore(redis: redisPool)
    }

    /// Starts gearmand and redis-server on free loopback ports (unless given), then the gateway as its own
    /// process (`<this executable> serve`), so that its RSS is its own; runs `body`; stops what it started.
    static func with<T: Sendable>(
        gearman given: GearmanServerAddress?,
        redis givenRedis: (host: String, port: Int)?,
        executable: String,
        logger: Logger,
        _ body: (BenchmarkStack) async throws -> T
    ) async throws -> T {
        var started: [LocalServer] = []
        defer { for server in started { server.stop() } }
        let gearman: GearmanServerAddress
        var serverPIDs: (redis: pid_t?, gearmand: pid_t?) = (nil, nil)
        if let given {
            gearman = given
        } else {
            // A large hash table: with gearmand's default 991 buckets, submits slow down as the queue grows
            // (baselines.md), which would favour whichever side runs first.
            let server = try await LocalServer.start(.gearmand, arguments: ["--hashtable-buckets=1000003"])
            started.append(server)
            serverPIDs.gearmand = server.pid
            gearman = GearmanServerAddress(host: server.host, port: server.port)
        }
        let redis: (host: String, port: Int)
        if let givenRedis {
            redis = givenRedis
        } else {
            let server = try await LocalServer.start(.redis)
            started.append(server)
            serverPIDs.redis = server.pid
            redis = (server.host, server.port)
        }
        let (gateway, port) = try await launchGateway(
            executable,
            ["--gearman", gearman.description, "--redis", "\(redis.host):\(redis.port)", "--max-connections", "30000"]
        )
        defer { gateway.stop() }
        let stack = BenchmarkStack(gearman: gearman, redis: redis, serverPIDs: serverPIDs, gateway: gateway, gatewayPort: port, executable: executable, logger: logger)
        do {
            let result = try await body(stack)
            await stack.redisPool.close()
            return result
        } catch {
            await stack.redisPool.close()
            throw error
        }
    }

    /// Starts `executable serve` with `arguments` on a free loopback port and waits until it answers PING. The
    /// caller stops it.
    static func launchGateway(_ executable: String, _ arguments: [String]) async throws -> (LocalProcess, port: Int) {
        let port = try freeLoopbackPort()
        let gateway = try LocalProcess(executable, ["serve", "--listen", "127.0.0.1:\(port)", "--log-level", "warning"] + arguments)
        do {
            try await eventually("the gateway to answer PING on port \(port)", timeout: .seconds(30)) {
                if gateway.exitStatus != nil { throw BenchmarkError("jobgate serve exited at start:\n\(gateway.log)") }
                guard let reply = try? LoopbackSocket.exchange(port: port, request: Array("PING\r\n".utf8), timeoutMs: 500) else { return false }
                return String(decoding: reply, as: UTF8.self).hasPrefix("PONG")
            }
        } catch {
            gateway.stop()
            throw error
        }
        return (gateway, port)
    }

    /// The gateway process's resident set, from /proc.
    var gatewayRSSBytes: Int {
        get throws {
            let status = try String(contentsOfFile: "/proc/\(gateway.pid)/status", encoding: .utf8)
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
                let kibibytes = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
            else { throw BenchmarkError("no VmRSS in /proc/\(gateway.pid)/status") }
            return kibibytes * 1024
        }
    }

    /// Runs an in-process `JobWorker` serving `function` with `handler` while `body` runs, then drains it.
    func withJobWorker<T: Sendable>(
        _ function: String,
        concurrency: Int,
        handler: @escaping JobHandler,
        _ body: () async throws -> T
    ) async throws -> T {
        var registry = JobRegistry()
        registry.register(function, handler)
        var configuration = JobWorkerConfiguration()
        configuration.concurrency = concurrency
        let worker = try JobWorker(servers: [gearman], registry: registry, store: store, configuration: configuration, logger: logger)
        return try await withService({ try await worker.run() }, drain: { worker.drain() }, body)
    }

    /// Runs a plain `GearmanWorker` (no Redis) serving `function` with a no-op handler while `body` runs.
    func withGearmanWorker<T: Sendable>(_ function: String, concurrency: Int, _ body: () async throws -> T) async throws -> T {
        var configuration = GearmanWorkerConfiguration()
        configuration.concurrency = concurrency
        let worker = try GearmanWorker(
            servers: [gearman],
            handlers: [function: { job, _ in .complete(job.payload) }],
            configuration: configuration,
            logger: logger
        )
        return try await withService({ try await worker.run() }, drain: { worker.drain() }, body)
    }

    func withService<T: Sendable>(
        _ run: @escaping @Sendable () async throws -> Void,
        drain: @escaping @Sendable () -> Void,
        _ body: () async throws -> T
    ) async throws -> T {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await run() }
            let result: Result<T, any Error>
            do {
                result = .success(try await body())
            } catch {
                result = .failure(error)
            }
            // Drained on failure too: a worker's run() ends when drained, not (always) when cancelled.
            drain()
            // A drained worker returns once its running jobs reported; do not wait forever for one that does not.
            group.addTask {
                try await Task.sleep(for: .seconds(10))
                throw BenchmarkError("a worker did not stop within 10 s of being drained")
            }
            var stopFailure: (any Error)?
            do { _ = try await group.next() } catch { stopFailure = error }
            group.cancelAll()
            let value = try result.get()
            if let stopFailure { throw stopFailure }
            return value
        }
    }
}

/// Raises the soft limit of open files to the hard limit (10,000 watchers need more than the usual 1024);
/// children, such as the gateway process, inherit it. Returns the new soft limit.
func raiseOpenFilesLimit() -> Int {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        _ = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
    return Int(clamping: limit.rlim_cur)
}

/// Lets a held job handler return when the benchmark says so, whichever of the two comes first.
final class ReleaseBoard: Sendable {
    private enum Entry {
        case released
        case waiting(CheckedContinuation<Void, Never>)
    }

    private let entries = Mutex<[String: Entry]>([:])

    func wait(_ key: String) async {
        await withCheckedContinuation { continuation in
            let resumeNow = entries.withLock { entries -> Bool in
                if case .released = entries[key] {
                    entries[key] = nil
                    return true
                }
                entries[key] = .waiting(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    func release(_ key: String) {
        let waiting = entries.withLock { entries -> CheckedContinuation<Void, Never>? in
            if case .waiting(let continuation) = entries[key] {
                entries[key] = nil
                return continuation
            }
            entries[key] = .released
            return nil
        }
        waiting?.resume()
    }
}

/// Instants recorded by handlers (the moment a job's outcome write starts), by job id.
final class Instants: Sendable {
    private let storage = Mutex<[String: ContinuousClock.Instant]>([:])

    func record(_ key: String, _ instant: ContinuousClock.Instant = .now) { storage.withLock { $0[key] = instant } }
    subscript(_ key: String) -> ContinuousClock.Instant? { storage.withLock { $0[key] } }
    var all: [String: ContinuousClock.Instant] { storage.withLock { $0 } }
    var count: Int { storage.withLock { $0.count } }
}

/// A counter for concurrent tasks.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    @discardableResult func increment() -> Int { add(1) }
    /// Adds `amount` and returns the new value.
    @discardableResult func add(_ amount: Int) -> Int { value.add(amount, ordering: .relaxed).newValue }
    var current: Int { value.load(ordering: .relaxed) }
}
