import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The topology of README "Scaling out", on loopback: a Redis primary with two replicas and three sentinels
/// (``LocalRedisSentinels``), two gearmand servers, two gateways and two workers, the last two as `jobgate`
/// processes (so that a test can kill -9 one). Every process is stopped by pid.
public final class LocalJobgateCluster: Sendable {
    public let redis: LocalRedisSentinels
    public let gearmands: [LocalServer]
    /// The gateways' line-protocol ports, in the order of ``gateways``.
    public let gatewayPorts: [Int]
    public let gateways: [LocalProcess]
    private let workers: Mutex<[LocalProcess]>
    /// Gateways started by `startGateway`.
    private let extraGateways = Mutex<[LocalProcess]>([])
    /// `--redis-sentinel …` and the rest that gateways and workers share.
    private let redisOptions: [String]
    private let lostGrace: Int
    private let queueDirectory: URL

    /// What a worker runs by default: waits a little (so jobs are in flight when a test breaks something), then
    /// answers with the payload.
    public static let echoCommand = ["/bin/sh", "-c", "sleep 0.2; cat"]

    private init(
        redis: LocalRedisSentinels, gearmands: [LocalServer], gatewayPorts: [Int], gateways: [LocalProcess], redisOptions: [String], lostGrace: Int,
        queueDirectory: URL
    ) {
        self.redis = redis
        self.gearmands = gearmands
        self.gatewayPorts = gatewayPorts
        self.gateways = gateways
        self.workers = Mutex([])
        self.redisOptions = redisOptions
        self.lostGrace = lostGrace
        self.queueDirectory = queueDirectory
    }

    /// Starts everything and returns once both gateways accept connections.
    /// - Parameters:
    ///   - replicasAck: `--redis-replicas-ack` of the gateways and workers.
    ///   - persistentQueues: gearmand with `-q libsqlite3`, so that queued jobs survive a kill -9 and restart.
    ///   - lostGrace: the gateways' `--lost-grace`, in seconds.
    ///   - workerFunctions: functions of the two workers started now (none: start them later with `startWorker`).
    public static func start(
        replicasAck: Int = 1,
        persistentQueues: Bool = false,
        lostGrace: Int = 2,
        workerFunctions: [String] = ["echo"]
    ) async throws -> LocalJobgateCluster {
        let redis = try await LocalRedisSentinels.start()
        var gearmands: [LocalServer] = []
        var gateways: [LocalProcess] = []
        let queueDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-cluster-\(UUID().uuidString.prefix(8))")
        do {
            try FileManager.default.createDirectory(at: queueDirectory, withIntermediateDirectories: true)
            for index in 0..<2 {
                let queue = persistentQueues ? ["-q", "libsqlite3", "--libsqlite3-db=\(queueDirectory.path)/gearmand-\(index).sqlite"] : []
                gearmands.append(try await LocalServer.start(.gearmand, arguments: queue))
            }
            let redisOptions = Self.redisOptions(redis, replicasAck: replicasAck)
            var ports: [Int] = []
            for _ in 0..<2 {
                let (gateway, port) = try Self.launchGateway(gearmands: gearmands, options: ["--lost-grace", "\(lostGrace)"] + redisOptions)
                gateways.append(gateway)
                ports.append(port)
            }
            for (gateway, port) in zip(gateways, ports) { try await Self.waitUntilListening(gateway, port: port) }
            let cluster = LocalJobgateCluster(
                redis: redis, gearmands: gearmands, gatewayPorts: ports, gateways: gateways, redisOptions: redisOptions, lostGrace: lostGrace,
                queueDirectory: queueDirectory
            )
            if !workerFunctions.isEmpty {
                for _ in 0..<2 { _ = try cluster.startWorker(functions: workerFunctions) }
            }
            return cluster
        } catch {
            for gateway in gateways { gateway.stop() }
            for gearmand in gearmands { gearmand.stop() }
            redis.stop()
            try? FileManager.default.removeItem(at: queueDirectory)
            throw error
        }
    }

    private static func redisOptions(_ redis: LocalRedisSentinels, replicasAck: Int) -> [String] {
        [
            "--redis-sentinel", redis.sentinelList, "--redis-master", LocalRedisSentinels.primaryName,
            "--redis-replicas-ack", "\(replicasAck)", "--log-level", "info",
        ]
    }

    private static func launchGateway(gearmands: [LocalServer], options: [String]) throws -> (LocalProcess, port: Int) {
        let port = try freeLoopbackPort()
        let gearman = gearmands.map(\.address).joined(separator: ",")
        return (try LocalProcess(jobgateExecutable(), ["serve", "--listen", "127.0.0.1:\(port)", "--gearman", gearman] + options), port)
    }

    private static func waitUntilListening(_ gateway: LocalProcess, port: Int) async throws {
        try await eventually("the gateway on port \(port) to listen", timeout: .seconds(30)) {
            if let status = gateway.exitStatus { throw LocalServerError(message: "gateway exited (\(status)):\n\(gateway.log)") }
            return (try? LoopbackSocket(port: port, timeoutMs: 200)) != nil
        }
    }

    /// Starts another gateway on the same servers, with its own `--redis-replicas-ack`; returns its port once it listens.
    public func startGateway(replicasAck: Int) async throws -> Int {
        let options = ["--lost-grace", "\(lostGrace)"] + Self.redisOptions(redis, replicasAck: replicasAck)
        let (gateway, port) = try Self.launchGateway(gearmands: gearmands, options: options)
        extraGateways.withLock { $0.append(gateway) }
        try await Self.waitUntilListening(gateway, port: port)
        return port
    }

    /// Starts another `jobgate worker` on both gearmand servers.
    @discardableResult
    public func startWorker(functions: [String], concurrency: Int = 8, command: [String] = LocalJobgateCluster.echoCommand) throws -> LocalProcess {
        let gearman = gearmands.map(\.address).joined(separator: ",")
        let worker = try LocalProcess(
            jobgateExecutable(),
            ["worker", "--gearman", gearman, "--concurrency", "\(concurrency)"] + functions.flatMap { ["--function", $0] } + redisOptions
                + ["--"] + command
        )
        workers.withLock { $0.append(worker) }
        return worker
    }

    /// Every process's log, for a failing test's message.
    public var logs: String {
        let processes = zip(["gateway 1", "gateway 2"], gateways).map { ($0, $1.log) }
            + workers.withLock { $0 }.enumerated().map { ("worker \($0.offset + 1)", $0.element.log) }
        return processes.map { "--- \($0.0) ---\n\($0.1.split(separator: "\n").suffix(40).joined(separator: "\n"))" }.joined(separator: "\n")
    }

    /// Stops every process by pid: workers and gateways first, then gearmand and Redis.
    public func stop() {
        for worker in workers.withLock({ $0 }) { worker.stop() }
        for gateway in gateways + extraGateways.withLock({ $0 }) { gateway.stop() }
        for gearmand in gearmands { gearmand.stop() }
        redis.stop()
        try? FileManager.default.removeItem(at: queueDirectory)
    }
}
