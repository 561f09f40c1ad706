import ArgumentParser
import Foundation
import Gearman
import JobStore
import Logging
import Memcache
import Redis
import ServiceLifecycle
import UnixSignals
import WorkerRuntime

/// `jobgate worker`: serves Gearman functions by running a program per job and publishes progress and
/// results to Redis (and, optionally, to memcached for legacy readers).
struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a program for every Gearman job of some functions and publish its progress and result to Redis.",
        usage: "jobgate worker --function NAME [--function NAME …] [options] -- COMMAND [ARGUMENTS …]",
        discussion: """
            For each job the command runs once:
              stdin   the job's payload
              stdout  the job's result (at most --max-output bytes)
              stderr  free for diagnostics; its tail is the reason if the job fails
              fd 3    progress, one line at a time:
                        PROGRESS <numerator> <denominator> [message]
                      e.g. in a shell: echo "PROGRESS 3 10 resizing" >&3
            Exit status 0: the job is done, stdout is its result. A non-zero
            status, a signal, a timeout or output over --max-output: the job
            fails. The command also gets JOBGATE_FUNCTION, JOBGATE_HANDLE,
            JOBGATE_JOB_ID (the Gearman unique key) and JOBGATE_PROGRESS_FD=3.

            Per job the worker marks it running in Redis, sends progress to
            gearmand and Redis, writes the outcome to Redis in one MULTI/EXEC
            (retrying while Redis is down), then reports WORK_COMPLETE or
            WORK_FAIL to gearmand. On SIGTERM or SIGINT it takes no new job,
            lets the running ones finish and publish, then exits.

            Examples:
              jobgate worker --function upper -- tr a-z A-Z
              jobgate worker --function resize --function thumb \\
                --concurrency 4 --timeout 300 --redis 10.0.0.7:6379 \\
                --gearman 10.0.0.5:4730,10.0.0.6:4730 -- ./images.sh
              jobgate worker --function report \\
                --memcached 10.0.0.8:11211 -- php report.php
            """
    )

    @Option(name: .long, help: ArgumentHelp("A Gearman function to serve; repeat it for several.", valueName: "name"))
    var function: [String] = []

    @Option(name: .long, help: "Jobs run at once, over all functions.")
    var concurrency: Int = 1

    @Option(name: .long, help: ArgumentHelp("Seconds a job may run before it is killed and failed (default: no limit).", valueName: "seconds"))
    var timeout: Double?

    @Option(name: .customLong("max-output"), help: ArgumentHelp("Largest result accepted, in bytes (suffix k or m allowed).", valueName: "size"))
    var maximumOutput: ByteSize = ByteSize(JobCommand.defaultMaximumOutputSize)

    @Option(name: .long, help: ArgumentHelp("gearmand servers, comma-separated host:port.", valueName: "host:port,…"))
    var gearman: GearmanServers = GearmanServers([GearmanServerAddress(host: "127.0.0.1")])

    @Option(name: .long, help: ArgumentHelp("The Redis server holding the job records.", valueName: "host:port"))
    var redis: HostPort = HostPort(host: "127.0.0.1", port: 6379)

    @Option(name: .customLong("redis-user"), help: "Redis ACL user name (with --redis-password).")
    var redisUser: String?

    @Option(
        name: .customLong("redis-password"),
        help: "Redis password (AUTH). Prefer the JOBGATE_REDIS_PASSWORD environment variable: options show in `ps`."
    )
    var redisPassword: String?

    @Option(name: .customLong("redis-db"), help: "Redis database number.")
    var redisDatabase: Int = 0

    @Option(name: .customLong("key-prefix"), help: "Prefix of every Redis key (as the gateway uses).")
    var keyPrefix: String = "jobgate:"

    @Option(
        name: .customLong("result-ttl"),
        help: ArgumentHelp("Seconds a finished job's record is kept, when its submitter did not choose.", valueName: "seconds")
    )
    var resultTTL: Int = 86_400

    @Option(
        name: .long,
        help: ArgumentHelp("Also store each result in memcached under the Gearman job handle, for legacy readers.", valueName: "host:port,…")
    )
    var memcached: MemcachedServers?

    @Option(
        name: .customLong("memcached-distribution"),
        help: ArgumentHelp(
            "How the legacy readers spread keys over several memcached servers.",
            valueName: "name"
        )
    )
    var distribution: Distribution = .peclConsistent

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: LogLevel = LogLevel(.info)

    @Option(name: .customLong("log-format"), help: "text, or json: one JSON object per line.")
    var logFormat: LogFormat = .text

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The program to run for each job, after `--`.", valueName: "command"))
    var command: [String] = []

    func validate() throws {
        guard !function.isEmpty else { throw ValidationError("give at least one --function") }
        for name in function {
            do { try GearmanValidation.function(name) } catch { throw ValidationError("--function \(name): \(error.message)") }
        }
        guard !command.isEmpty else { throw ValidationError("give the command to run after `--`, e.g. `-- tr a-z A-Z`") }
        guard concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        if let timeout, !(timeout > 0) { throw ValidationError("--timeout must be a positive number of seconds") }
        guard resultTTL >= 1 else { throw ValidationError("--result-ttl must be at least 1 second") }
        guard redisDatabase >= 0 else { throw ValidationError("--redis-db must not be negative") }
        if distribution == .single, let memcached, memcached.servers.count > 1 {
            throw ValidationError("--memcached-distribution single takes one server; pick how your readers hash keys")
        }
    }

    func run() async throws {
        logFormat.bootstrap(level: logLevel.level)
        let logger = Logger(label: "jobgate.worker")

        let password = redisPassword ?? ProcessInfo.processInfo.environment["JOBGATE_REDIS_PASSWORD"]
        unsetenv("JOBGATE_REDIS_PASSWORD")  // the job programs inherit the environment: keep the password out of it
        let pool = RedisConnectionPool(
            configuration: RedisConnectionConfiguration(
                host: redis.host,
                port: redis.port,
                authentication: password.map { .init(username: redisUser, password: $0) },
                database: redisDatabase == 0 ? nil : redisDatabase,
                commandTimeout: .seconds(10)
            ),
            size: min(max(concurrency, 2), 16),
            logger: logger
        )
        var storeConfiguration = JobStoreConfiguration()
        storeConfiguration.schema = JobKeySchema(prefix: keyPrefix, database: redisDatabase)
        storeConfiguration.resultTTL = resultTTL
        let store = RedisJobStore(redis: pool, configuration: storeConfiguration)
        do {
            _ = try await pool.send(["PING"])
        } catch {
            await pool.close()
            logger.critical("cannot reach Redis", metadata: ["redis.server": "\(redis)", "redis.error": "\(error)"])
            throw ExitCode.failure
        }

        var memcache: MemcacheClient?
        if let memcached {
            memcache = try MemcacheClient(servers: memcached.servers, distribution: memcached.servers.count == 1 ? .single : distribution.value, logger: logger)
        }
        let legacy = memcache.map { LegacyResultStore(memcache: $0, writtenBy: .peclMemcache, expiration: resultTTL) }

        var registry = JobRegistry()
        let program = JobCommand(
            command[0],
            Array(command.dropFirst()),
            timeout: timeout.map { .milliseconds(Int64($0 * 1000)) },
            maximumOutputSize: maximumOutput.bytes
        )
        for name in function { registry.register(name, command: program) }
        var configuration = JobWorkerConfiguration()
        configuration.concurrency = concurrency
        configuration.gearman.clientID = "jobgate-worker-\(ProcessInfo.processInfo.processIdentifier)"
        let worker = try JobWorker(servers: gearman.servers, registry: registry, store: store, legacy: legacy, configuration: configuration, logger: logger)

        logger.info(
            "worker started",
            metadata: [
                "worker.functions": "\(function.joined(separator: ","))", "worker.command": "\(command.joined(separator: " "))",
                "worker.concurrency": "\(concurrency)", "gearman.servers": "\(gearman.servers.map(\.description).joined(separator: ","))",
                "redis.server": "\(redis)",
            ]
        )
        let group = ServiceGroup(
            configuration: .init(services: [worker], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        do {
            try await group.run()
        } catch {
            logger.error("worker stopped", metadata: ["worker.error": "\(error)"])
        }
        await memcache?.shutdown()
        await pool.close()
        logger.info("worker stopped")
    }
}

// MARK: Option values

struct HostPort: ExpressibleByArgument, CustomStringConvertible {
    var host: String
    var port: Int

    init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    init?(argument: String) {
        guard let address = GearmanServerAddress(argument) else { return nil }
        self.init(host: address.host, port: address.port)
    }

    var description: String { "\(host):\(port)" }
    var defaultValueDescription: String { description }
}

struct GearmanServers: ExpressibleByArgument {
    var servers: [GearmanServerAddress]

    init(_ servers: [GearmanServerAddress]) { self.servers = servers }

    init?(argument: String) {
        let servers = argument.split(separator: ",").map { GearmanServerAddress(String($0)) }
        guard !servers.isEmpty, !servers.contains(where: { $0 == nil }) else { return nil }
        self.servers = servers.compactMap { $0 }
    }

    var defaultValueDescription: String { servers.map(\.description).joined(separator: ",") }
}

struct MemcachedServers: ExpressibleByArgument {
    var servers: [MemcacheServer]

    init?(argument: String) {
        var servers: [MemcacheServer] = []
        for part in argument.split(separator: ",") {
            guard let address = GearmanServerAddress(String(part)) else { return nil }
            // A bare host means memcached's port, not gearmand's.
            servers.append(MemcacheServer(host: address.host, port: part.contains(":") ? address.port : 11211))
        }
        guard !servers.isEmpty else { return nil }
        self.servers = servers
    }
}

enum Distribution: String, ExpressibleByArgument, CaseIterable {
    case single
    case peclConsistent = "pecl-consistent"
    case peclStandard = "pecl-standard"
    case memcachedModula = "memcached-modula"
    case memcachedConsistent = "memcached-consistent"
    case memcachedKetama = "memcached-ketama"

    var value: MemcacheDistribution {
        switch self {
        case .single: .single
        case .peclConsistent: .peclMemcacheConsistent
        case .peclStandard: .peclMemcacheStandard
        case .memcachedModula: .phpMemcachedModula
        case .memcachedConsistent: .phpMemcachedConsistent
        case .memcachedKetama: .phpMemcachedKetama
        }
    }
}

struct ByteSize: ExpressibleByArgument {
    var bytes: Int

    init(_ bytes: Int) { self.bytes = bytes }

    init?(argument: String) {
        let text = argument.lowercased()
        let (digits, scale): (Substring, Int) =
            switch text.last {
            case "k": (text.dropLast(), 1 << 10)
            case "m": (text.dropLast(), 1 << 20)
            default: (Substring(text), 1)
            }
        guard let value = Int(digits), value >= 0, value <= Int.max / scale else { return nil }
        bytes = value * scale
    }

    var defaultValueDescription: String { bytes % (1 << 20) == 0 ? "\(bytes >> 20)m" : "\(bytes)" }
}

struct LogLevel: ExpressibleByArgument {
    var level: Logger.Level

    init(_ level: Logger.Level) { self.level = level }

    init?(argument: String) {
        guard let level = Logger.Level(rawValue: argument.lowercased()) else { return nil }
        self.level = level
    }

    var defaultValueDescription: String { level.rawValue }
}
