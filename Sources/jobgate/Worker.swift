import ArgumentParser
import Foundation
import Gearman
import JobStore
import LegacyJobs
import Logging
import Memcache
import NIOCore
import NIOSSL
import Redis
import ServiceLifecycle
import UnixSignals
import WorkerRuntime

/// `jobgate worker`: serves Gearman functions by running a program per job and publishes progress and
/// results to Redis (and, optionally, to memcached for legacy readers).
struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a program for every Gearman job of some functions and publish its progress and result to Redis.",
        usage: "jobgate worker --function NAME … [options] -- COMMAND [ARGUMENTS …]",
        discussion: """
            For each job the command runs once:
              stdin   the job's payload
              stdout  the job's result (at most --max-output bytes)
              stderr  free for diagnostics; its tail is the reason if the job fails
              fd 3    progress, one line at a time:
                        PROGRESS <numerator> <denominator> [message]
                      e.g. in a shell: echo "PROGRESS 3 10 resizing" >&3
            Exit status 0: the job is done, stdout is its result. A non-zero status, a signal, a timeout or output \
            over --max-output: the job fails. The command also gets JOBGATE_FUNCTION, JOBGATE_HANDLE, JOBGATE_JOB_ID \
            (the Gearman unique key) and JOBGATE_PROGRESS_FD=3.

            Per job the worker marks it running in Redis, sends progress to gearmand and Redis, writes the outcome \
            to Redis in one MULTI/EXEC (retrying while Redis is down), then reports WORK_COMPLETE or WORK_FAIL to \
            gearmand. On SIGTERM or SIGINT it takes no new job, lets the running ones finish and publish, then \
            exits. Started before Redis, it waits for it. SIGHUP re-reads the log level.

            Options can also come from the environment (JOBGATE_ plus the option name in capitals, e.g. \
            JOBGATE_CONCURRENCY=4) or a config file (--config FILE, `name = value` lines), as for `jobgate serve`; \
            unknown names and bad values stop the start (exit 78).

            Examples:
              jobgate worker --function upper -- tr a-z A-Z
              jobgate worker --function resize --function thumb \\
                --concurrency 4 --timeout 300 --redis 127.0.0.1:6379 \\
                --gearman 127.0.0.1:4730,127.0.0.1:4731 -- ./images.sh
              jobgate worker --function report \\
                --memcached 127.0.0.1:11211 -- php report.php
            """
    )

    @Option(help: "Config file with `name = value` lines (same names as the options; `function = a,b` for several).")
    var config: String?

    @Flag(
        name: .customLong("check-config"),
        help: "Check the configuration (options, JOBGATE_ variables, config file), print the effective one (secrets masked) and exit: 0 if valid, 78 if not."
    )
    var checkConfig = false

    @Option(name: .long, help: ArgumentHelp("A Gearman function to serve; repeat it for several.", valueName: "name"))
    var function: [String] = []

    @Option(name: .long, help: "Jobs run at once, over all functions. (default: 1)")
    var concurrency: Int?

    @Option(name: .long, help: ArgumentHelp("Seconds a job may run before it is killed and failed (default: no limit).", valueName: "seconds"))
    var timeout: Double?

    @Option(name: .customLong("max-output"), help: ArgumentHelp("Largest result accepted, in bytes (suffix k or m allowed). (default: 16m)", valueName: "size"))
    var maximumOutput: ByteSize?

    @Option(name: .long, help: ArgumentHelp("gearmand servers, comma-separated host:port. (default: 127.0.0.1:4730)", valueName: "host:port,…"))
    var gearman: GearmanServers?

    @Option(name: .long, help: ArgumentHelp("The Redis server holding the job records. (default: 127.0.0.1:6379)", valueName: "host:port"))
    var redis: HostPort?

    @Option(name: .customLong("redis-user"), help: "Redis ACL user name (with --redis-password).")
    var redisUser: String?

    @Option(
        name: .customLong("redis-password"),
        help: "Redis password (AUTH). Prefer the JOBGATE_REDIS_PASSWORD environment variable or the config file: options show in `ps`."
    )
    var redisPassword: String?

    @Option(name: .customLong("redis-db"), help: "Redis database number. (default: 0)")
    var redisDatabase: Int?

    @OptionGroup(title: "Redis Sentinel and replication")
    var redisFailover: RedisFailoverOptions

    @Option(name: .customLong("key-prefix"), help: "Prefix of every Redis key (as the gateway uses). (default: jobgate:)")
    var keyPrefix: String?

    @OptionGroup(title: "TLS to Redis")
    var redisTLS: RedisTLSOptions

    @Option(
        name: .customLong("result-ttl"),
        help: ArgumentHelp("Seconds a finished job's record is kept, when its submitter did not choose. (default: 86400)", valueName: "seconds")
    )
    var resultTTL: Int?

    @Option(
        name: .customLong("subscription-retention"),
        help: ArgumentHelp("Seconds the completion log keeps what ended (as the gateway's option). (default: 86400)", valueName: "seconds")
    )
    var subscriptionRetention: Int?

    @Option(name: .customLong("subscription-log-length"), help: "Entries the completion log keeps per function at most. (default: 100000)")
    var subscriptionLogLength: Int?

    @Option(
        name: .long,
        help: ArgumentHelp("Also store each result in memcached under the Gearman job handle, for legacy readers.", valueName: "host:port,…")
    )
    var memcached: MemcachedServers?

    @Option(
        name: .customLong("memcached-distribution"),
        help: ArgumentHelp(
            "How the legacy readers spread keys over several memcached servers. (default: pecl-consistent)",
            valueName: "name"
        )
    )
    var distribution: Distribution?

    @Option(name: .customLong("event-loops"), help: ArgumentHelp(EventLoops.help))
    var eventLoops: Int?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical. (default: info)")
    var logLevel: LogLevel?

    @Option(name: .customLong("log-format"), help: "text, or json: one JSON object per line. (default: text)")
    var logFormat: LogFormat?

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The program to run for each job, after `--`.", valueName: "command"))
    var command: [String] = []

    func validate() throws {
        guard checkConfig || !command.isEmpty else { throw ValidationError("give the command to run after `--`, e.g. `-- tr a-z A-Z`") }
    }

    /// Everything `jobgate worker` runs with, from the options, the environment (`JOBGATE_…`) and the config file.
    struct Loaded {
        var functions: [String]
        var concurrency = 1
        var timeout: Double?
        var maximumOutput = JobCommand.defaultMaximumOutputSize
        var gearman = [GearmanServerAddress(host: "127.0.0.1")]
        var redis = HostPort(host: "127.0.0.1", port: 6379)
        var redisUser: String?
        var redisPassword: String?
        var redisDatabase = 0
        var redisTLS: TLSConfiguration?
        var redisFailover = RedisFailoverOptions.Loaded()
        var keyPrefix = "jobgate:"
        var resultTTL = 86_400
        var logRetention = CompletionLogRetention()
        var memcached: [MemcacheServer] = []
        var distribution = Distribution.peclConsistent
        var logLevel = Logger.Level.info
        var logFormat = LogFormat.text
        var eventLoops = System.coreCount
    }

    /// Reads the options, the environment and the config file, refusing bad values and unknown names (the same
    /// `Settings` as `jobgate serve`).
    func loadConfiguration() throws -> Loaded {
        let settings = try Settings(file: config)
        let functionList = settings.value("function", function.isEmpty ? nil : function.joined(separator: ","))
        var loaded = Loaded(functions: functionList.map { $0.split(separator: ",").map(String.init) } ?? [])
        guard !loaded.functions.isEmpty else { throw ConfigurationError("give at least one --function (or `function = name,…`)") }
        for name in loaded.functions {
            do { try GearmanValidation.function(name) } catch { throw ConfigurationError("function \(name): \(error.message)") }
        }
        loaded.concurrency = try settings.parse("concurrency", concurrency, expected: "a number") ?? loaded.concurrency
        guard loaded.concurrency >= 1 else { throw ConfigurationError("\(settings.source("concurrency", commandLine: concurrency != nil)) must be at least 1") }
        loaded.timeout = try settings.parse("timeout", timeout, expected: "seconds")
        if let timeout = loaded.timeout, !(timeout > 0) {
            throw ConfigurationError("\(settings.source("timeout", commandLine: self.timeout != nil)) must be a positive number of seconds")
        }
        loaded.maximumOutput = try settings.parse("max-output", maximumOutput, expected: "a size in bytes (suffix k or m allowed)")?.bytes ?? loaded.maximumOutput
        loaded.gearman = try settings.parse("gearman", gearman, expected: "host:port,…")?.servers ?? loaded.gearman
        loaded.redis = try settings.parse("redis", redis, expected: "host:port") ?? loaded.redis
        loaded.redisUser = settings.value("redis-user", redisUser)
        loaded.redisPassword = settings.value("redis-password", redisPassword)
        loaded.redisDatabase = try settings.int("redis-db", redisDatabase) ?? loaded.redisDatabase
        loaded.redisTLS = try redisTLS.load(settings)
        loaded.redisFailover = try redisFailover.load(settings)
        loaded.keyPrefix = settings.value("key-prefix", keyPrefix) ?? loaded.keyPrefix
        loaded.resultTTL = try settings.int("result-ttl", resultTTL) ?? loaded.resultTTL
        guard loaded.resultTTL >= 1 else { throw ConfigurationError("\(settings.source("result-ttl", commandLine: resultTTL != nil)) must be at least 1 second") }
        loaded.logRetention.age = try settings.positive("subscription-retention", subscriptionRetention) ?? loaded.logRetention.age
        loaded.logRetention.maximumLength = try settings.positive("subscription-log-length", subscriptionLogLength) ?? loaded.logRetention.maximumLength
        loaded.memcached = try settings.parse("memcached", memcached, expected: "host:port,…")?.servers ?? []
        loaded.distribution = try settings.parse("memcached-distribution", distribution, expected: Distribution.allCases.map(\.rawValue).joined(separator: ", ")) ?? loaded.distribution
        if loaded.distribution == .single, loaded.memcached.count > 1 {
            throw ConfigurationError("--memcached-distribution single takes one server; pick how your readers hash keys")
        }
        loaded.logLevel = try settings.parse("log-level", logLevel, expected: "trace, debug, info, notice, warning, error or critical")?.level ?? loaded.logLevel
        loaded.logFormat = try settings.parse("log-format", logFormat, expected: "text or json") ?? loaded.logFormat
        loaded.eventLoops = try EventLoops.load(settings, eventLoops)
        try settings.checkAllKnown()
        return loaded
    }

    /// The effective configuration by option name, as `--check-config` prints it.
    static func entries(_ loaded: Loaded) -> [(name: String, value: String)] {
        [
            ("function", loaded.functions.joined(separator: ",")),
            ("concurrency", "\(loaded.concurrency)"),
            ("timeout", loaded.timeout.map { "\($0)" } ?? "none"),
            ("max-output", "\(loaded.maximumOutput)"),
            ("gearman", loaded.gearman.map(\.description).joined(separator: ",")),
            ("redis", "\(loaded.redis)"),
            ("redis-user", loaded.redisUser ?? ""),
            ("redis-password", loaded.redisPassword ?? ""),
            ("redis-db", "\(loaded.redisDatabase)"),
        ] + loaded.redisFailover.entries + [
            ("key-prefix", loaded.keyPrefix),
            ("result-ttl", "\(loaded.resultTTL)"),
            ("subscription-retention", "\(loaded.logRetention.age)"),
            ("subscription-log-length", "\(loaded.logRetention.maximumLength)"),
            ("memcached", loaded.memcached.map { "\($0.host):\($0.port)" }.joined(separator: ",")),
            ("memcached-distribution", loaded.distribution.rawValue),
            ("event-loops", "\(loaded.eventLoops)"),
            ("log-level", loaded.logLevel.rawValue),
            ("log-format", loaded.logFormat.rawValue),
        ]
    }

    func run() async throws {
        let loaded = try checkingConfiguration { try loadConfiguration() }
        if checkConfig {
            print(Settings.describe(Self.entries(loaded), secrets: ["redis-password"]))
            return
        }
        ProcessLogLevel.level = loaded.logLevel
        loaded.logFormat.bootstrap()
        let logger = Logger(label: "jobgate.worker")
        EventLoops.start(loaded.eventLoops, logger: logger)

        unsetenv("JOBGATE_REDIS_PASSWORD")  // the job programs inherit the environment: keep the password out of it
        // With Sentinel, one locator finds the primary for every connection and follows failovers.
        let locator = loaded.redisFailover.sentinel.map { RedisPrimaryLocator(configuration: $0, logger: logger) }
        let pool = RedisConnectionPool(
            configuration: RedisConnectionConfiguration(
                host: loaded.redis.host,
                port: loaded.redis.port,
                authentication: loaded.redisPassword.map { .init(username: loaded.redisUser, password: $0) },
                database: loaded.redisDatabase == 0 ? nil : loaded.redisDatabase,
                commandTimeout: .seconds(10),
                tls: loaded.redisTLS,
                primaryLocator: locator
            ),
            size: min(max(loaded.concurrency, 2), 16),
            logger: logger
        )
        var storeConfiguration = JobStoreConfiguration()
        storeConfiguration.schema = JobKeySchema(prefix: loaded.keyPrefix, database: loaded.redisDatabase)
        storeConfiguration.resultTTL = loaded.resultTTL
        storeConfiguration.logRetention = loaded.logRetention
        storeConfiguration.replicasAck = loaded.redisFailover.ack
        let store = RedisJobStore(redis: pool, configuration: storeConfiguration)

        var memcache: MemcacheClient?
        if !loaded.memcached.isEmpty {
            memcache = try MemcacheClient(
                servers: loaded.memcached, distribution: loaded.memcached.count == 1 ? .single : loaded.distribution.value, logger: logger
            )
        }
        let legacy = memcache.map { LegacyResultStore(memcache: $0, writtenBy: .peclMemcache, expiration: loaded.resultTTL) }

        var registry = JobRegistry()
        let program = JobCommand(
            command[0],
            Array(command.dropFirst()),
            timeout: loaded.timeout.map { .milliseconds(Int64($0 * 1000)) },
            maximumOutputSize: loaded.maximumOutput
        )
        for name in loaded.functions { registry.register(name, command: program) }
        var configuration = JobWorkerConfiguration()
        configuration.concurrency = loaded.concurrency
        configuration.gearman.clientID = "jobgate-worker-\(ProcessInfo.processInfo.processIdentifier)"
        let worker = try JobWorker(servers: loaded.gearman, registry: registry, store: store, legacy: legacy, configuration: configuration, logger: logger)

        logger.info(
            "worker started",
            metadata: [
                "worker.functions": "\(loaded.functions.joined(separator: ","))", "worker.command": "\(command.joined(separator: " "))",
                "worker.concurrency": "\(loaded.concurrency)", "gearman.servers": "\(loaded.gearman.map(\.description).joined(separator: ","))",
                "redis.server": "\(pool.configuration.serverDescription)",
            ]
        )
        // Redis first, as the gateway does: a job taken while Redis is down could not be published.
        let service = WorkerService(redis: pool.configuration.serverDescription, pool: pool, worker: worker, logger: logger)
        let lifecycle = ProcessLifecycle(
            ready: { await service.waitUntilRedisAnswered() },
            reload: { reloadLogLevel(logger: logger) }
        )
        let services: [any Service] = [locator.map(SentinelService.init)].compactMap { $0 } + [service, lifecycle]
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        var failed = false
        do {
            try await group.run()
        } catch {
            failed = true
            logger.critical("worker failed", metadata: ["worker.error": "\(error)"])
        }
        await memcache?.shutdown()
        await pool.close()
        logger.info("worker stopped")
        if failed { throw ExitCode.failure }
    }

    /// SIGHUP: the worker takes only a new log level (the rest needs a restart); a configuration with a mistake
    /// changes nothing.
    func reloadLogLevel(logger: Logger) {
        do {
            let level = try loadConfiguration().logLevel
            let before = ProcessLogLevel.level
            ProcessLogLevel.level = level
            logger.notice(
                "configuration reloaded: only the log level changes without a restart",
                metadata: ["config.changed": "\(before == level ? "nothing" : "log-level")", "log.level": "\(level)"]
            )
        } catch {
            logger.error("configuration not reloaded: keeping the running one", metadata: ["config.error": "\(error)"])
        }
    }
}

/// The worker as a service: waits for Redis (logging once, like the gateway), then serves jobs.
private final class WorkerService: Service {
    let redis: String
    let pool: RedisConnectionPool
    let worker: JobWorker
    let logger: Logger
    private let answered = AsyncStream<Void>.makeStream()

    init(redis: String, pool: RedisConnectionPool, worker: JobWorker, logger: Logger) {
        self.redis = redis
        self.pool = pool
        self.worker = worker
        self.logger = logger
    }

    func run() async throws {
        let pool = self.pool
        do {
            try await cancelWhenGracefulShutdown {
                try await untilRedisAnswers(at: self.redis, logger: self.logger) { _ = try await pool.send(["PING"]) }
            }
        } catch is CancellationError where Task.isShuttingDownGracefully {
            return  // stopped while it waited
        }
        answered.continuation.finish()
        try await worker.run()
    }

    func waitUntilRedisAnswered() async {
        for await _ in answered.stream {}
    }
}

/// Follows the sentinels' failover announcements until shutdown.
private struct SentinelService: Service {
    let locator: RedisPrimaryLocator

    func run() async throws {
        try await cancelWhenGracefulShutdown { try await locator.run() }
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
