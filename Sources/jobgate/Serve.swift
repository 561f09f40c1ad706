import ArgumentParser
import Foundation
import Gateway
import Gearman
import Logging
import Memcache
import Metrics
import NIOCore
import Prometheus
import Redis
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// `jobgate serve`: the gateway.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the gateway: clients submit, watch and wait for Gearman jobs over a line protocol.",
        discussion: """
            Every option can also come from the environment (JOBGATE_ plus the option name in capitals with \
            underscores, e.g. JOBGATE_MAX_PAYLOAD=1048576) or from a config file (--config FILE, lines \
            `name = value` with the option names, e.g. `redis = 127.0.0.1:6379`; `#` starts a comment). \
            Command-line options win over the environment, which wins over the file. An unknown name in the \
            file, an unknown JOBGATE_ variable or a bad value stops the start (exit 78) naming it; \
            --check-config checks and prints the effective configuration without starting. \
            SIGHUP reloads the secrets, the credentials file, limits, timeouts, TLS certificate and log level; SIGTERM or SIGINT stop gracefully.

            Example (everything on this machine, the defaults):
              jobgate serve --listen 127.0.0.1:4740 --gearman 127.0.0.1:4730 \\
                --redis 127.0.0.1:6379
            Then talk to it:
              printf 'PING\\n' | nc -q1 127.0.0.1 4740
            """
    )

    @Option(help: "Config file with `name = value` lines (same names as the options).")
    var config: String?

    @Option(help: "Address to listen on, host:port. Loopback unless you mean otherwise. (default: 127.0.0.1:4740)")
    var listen: String?

    @Option(help: "HTTP address for /metrics (Prometheus) and live job pages (/jobs/<id>), host:port. (default: off)")
    var http: String?

    @Option(help: "gearmand servers, comma-separated host:port. (default: 127.0.0.1:4730)")
    var gearman: GearmanServers?

    @Option(help: "Redis server, host:port. (default: 127.0.0.1:6379)")
    var redis: String?

    @Option(name: .customLong("redis-password"), help: "Redis password (AUTH).")
    var redisPassword: String?

    @Option(name: .customLong("redis-user"), help: "Redis ACL user (with --redis-password).")
    var redisUser: String?

    @Option(name: .customLong("redis-db"), help: "Redis database number. (default: 0)")
    var redisDB: Int?

    @OptionGroup(title: "Redis Sentinel and replication")
    var redisFailover: RedisFailoverOptions

    @Option(name: .customLong("key-prefix"), help: "Prefix of every Redis key. (default: jobgate:)")
    var keyPrefix: String?

    @Option(help: "Secrets clients must AUTH with, comma-separated; none: no authentication.")
    var secrets: String?

    @Option(
        help: "Credentials file: named credentials (AUTH <name> <secret>) with scopes; see `jobgate credentials hash`. Reloaded on SIGHUP. (default: none)"
    )
    var credentials: String?

    @Option(
        name: .customLong("legacy-functions"),
        help: ArgumentHelp(
            "Functions whose workers store results in memcached under the Gearman job handle, comma-separated, each optionally :pecl-memcache (the default) or :php-memcached for the PHP extension they store with.",
            valueName: "fn[:ext],…"
        )
    )
    var legacyFunctions: String?

    @Option(help: ArgumentHelp("The legacy workers' memcached servers, in their order.", valueName: "host:port,…"))
    var memcached: String?

    @Option(
        name: .customLong("memcached-distribution"),
        help: "How the legacy workers spread keys over several memcached servers: \(Distribution.allCases.map(\.rawValue).joined(separator: ", ")). (default: pecl-consistent)"
    )
    var memcachedDistribution: String?

    @Option(
        name: .customLong("legacy-poll-min"),
        help: "Milliseconds between the legacy bridge's gearmand polls while its jobs change: lower sees ends sooner, and asks gearmand more often. (default: 100)"
    )
    var legacyPollMinimum: Int?

    @Option(name: .customLong("legacy-poll-max"), help: "Milliseconds the legacy bridge's polls back off to while nothing changes. (default: 1000)")
    var legacyPollMaximum: Int?

    @Option(name: .customLong("max-line"), help: "Longest request line in bytes (ERR LINE_TOO_LONG). (default: 8192)")
    var maxLine: Int?

    @Option(name: .customLong("max-payload"), help: "Largest SUBMIT payload in bytes (ERR PAYLOAD_TOO_LARGE). (default: 16777216)")
    var maxPayload: Int?

    @Option(name: .customLong("max-watches"), help: "Jobs one connection may watch (ERR TOO_MANY_WATCHES). (default: 1000)")
    var maxWatches: Int?

    @Option(name: .customLong("max-subscriptions"), help: "Functions one connection may subscribe to (ERR TOO_MANY_SUBSCRIPTIONS). (default: 1000)")
    var maxSubscriptions: Int?

    @Option(
        name: .customLong("input-buffer"),
        help: "Bytes of SUBMIT blocks held across all connections; a block that does not fit is skipped with ERR BUSY. (default: 268435456)"
    )
    var inputBuffer: Int?

    @Option(
        name: .customLong("request-timeout"),
        help: "Seconds a request may take to arrive whole before the connection is closed (ERR REQUEST_TIMEOUT). (default: 60)"
    )
    var requestTimeout: Int?

    @Option(name: .customLong("auth-failures"), help: "Wrong AUTHs after which a connection is closed. (default: 10)")
    var authFailures: Int?

    @Option(
        name: .customLong("auth-delay"),
        help: "Milliseconds between the answers to the first and second wrong AUTH, doubling for each further one up to 32 times. (default: 100)"
    )
    var authDelay: Int?

    @Option(name: .customLong("max-connections"), help: "Open connections; more get ERR BUSY and are closed. (default: 10000)")
    var maxConnections: Int?

    @Option(name: .customLong("event-loops"), help: ArgumentHelp(EventLoops.help))
    var eventLoops: Int?

    @Option(name: .customLong("idle-timeout"), help: "Seconds without a request before an idle connection is closed. (default: 300)")
    var idleTimeout: Int?

    @Option(name: .customLong("output-buffer"), help: "Bytes queued for a client that does not read before it is closed. (default: 8388608)")
    var outputBuffer: Int?

    @Option(name: .customLong("output-stall"), help: "Seconds a client's socket may take none of its output before it is closed (ERR SLOW_CONSUMER). (default: 30)")
    var outputStall: Int?

    @Option(name: .customLong("contended-output-stall"), help: "The same, for a client holding large results that other lookups wait for. (default: 5)")
    var contendedOutputStall: Int?

    @Option(
        name: .customLong("max-lookup-bytes"),
        help: "Result bytes one connection's lookups may hold until written; more lookups wait. (default: 2097152)"
    )
    var maxLookupBytes: Int?

    @Option(
        name: .customLong("max-lookup-bytes-total"),
        help: "Result bytes the lookups of all connections may hold until written; more lookups wait. (default: 8388608)"
    )
    var maxLookupBytesTotal: Int?

    @Option(name: .customLong("max-wait"), help: "Longest WAIT in seconds; longer timeouts are cut to it. (default: 3600)")
    var maxWait: Int?

    @Option(name: .customLong("result-ttl"), help: "Seconds a finished job's result is kept. (default: 86400)")
    var resultTTL: Int?

    @Option(
        name: .customLong("subscription-retention"),
        help: "Seconds the completion log keeps what ended, for subscribers resuming with SUBSCRIBE … from=<cursor>. (default: 86400)"
    )
    var subscriptionRetention: Int?

    @Option(name: .customLong("subscription-log-length"), help: "Entries the completion log keeps per function at most. (default: 100000)")
    var subscriptionLogLength: Int?

    @Option(name: .customLong("lost-grace"), help: "Seconds a job may be unknown to gearmand without a result before it is failed as lost. (default: 30)")
    var lostGrace: Int?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical. (default: info)")
    var logLevel: LogLevel?

    @Flag(
        name: .customLong("check-config"),
        help: "Check the configuration (options, JOBGATE_ variables, config file), print the effective one (secrets masked) and exit: 0 if valid, 78 if not."
    )
    var checkConfig = false

    @Option(name: .customLong("log-format"), help: "text, or json: one JSON object per line. (default: text)")
    var logFormat: LogFormat?

    // MARK: TLS
    @Option(
        name: .customLong("tls-cert"),
        help: ArgumentHelp("Certificate chain (PEM) the line-protocol and HTTP ports speak TLS with, with --tls-key; reread on SIGHUP. (default: plain TCP)", valueName: "file")
    )
    var tlsCert: String?

    @Option(name: .customLong("tls-key"), help: ArgumentHelp("Private key (PEM) of --tls-cert.", valueName: "file"))
    var tlsKey: String?

    @Option(
        name: .customLong("tls-client-ca"),
        help: ArgumentHelp("Mutual TLS: clients must present a certificate signed by an authority in this PEM file.", valueName: "file")
    )
    var tlsClientCA: String?

    @Option(name: .customLong("tls-handshake-timeout"), help: "Seconds a client may take to finish the TLS handshake before it is closed. (default: 10)")
    var tlsHandshakeTimeout: Int?

    @OptionGroup(title: "TLS to Redis")
    var redisTLS: RedisTLSOptions

    func run() async throws {
        GlibcMalloc.limitArenas()
        let loaded = try checkingConfiguration { try loadConfiguration() }
        if checkConfig {
            print(Settings.describe(Self.entries(loaded), secrets: ["secrets", "redis-password"]))
            return
        }
        ProcessLogLevel.level = loaded.logLevel
        loaded.logFormat.bootstrap()
        let logger = Logger(label: "jobgate.gateway")
        EventLoops.start(loaded.eventLoops, logger: logger)
        // One registry for the process: the gateway's own metrics, and whatever a library reports through swift-metrics.
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let server = GatewayServer(configuration: loaded.gateway, metrics: registry, logger: logger)
        let lifecycle = ProcessLifecycle(
            ready: { _ = try await server.waitUntilListening() },
            reload: { reload(server, logFormat: loaded.logFormat, logger: logger) }
        )
        let group = ServiceGroup(
            configuration: .init(services: [server, lifecycle, GlibcMalloc.Trimmer()], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
    }

    /// What `jobgate serve` runs with: the gateway's configuration and the log level.
    struct Loaded {
        var gateway: GatewayConfiguration
        var logLevel: Logger.Level
        var logFormat = LogFormat.text
        var eventLoops = System.coreCount
    }

    /// Reads the options, the environment and the config file, refusing bad values and unknown names.
    func loadConfiguration() throws -> Loaded {
        let settings = try Settings(file: config)
        let gateway = try makeConfiguration(settings)
        let level = try settings.parse("log-level", logLevel, expected: "trace, debug, info, notice, warning, error or critical")?.level ?? .info
        let format = try settings.parse("log-format", logFormat, expected: "text or json") ?? .text
        let loops = try EventLoops.load(settings, eventLoops)
        try settings.checkAllKnown()
        return Loaded(gateway: gateway, logLevel: level, logFormat: format, eventLoops: loops)
    }

    /// SIGHUP: reads the file again (the environment and the options still win) and takes what can change while
    /// running; logs what changed and what would need a restart. A configuration with a mistake changes nothing.
    func reload(_ server: GatewayServer, logFormat: LogFormat, logger: Logger) {
        let new: Loaded
        do {
            new = try loadConfiguration()
        } catch {
            logger.error("configuration not reloaded: keeping the running one", metadata: ["config.error": "\(error)"])
            return
        }
        let loops = EventLoops.running
        let before = Self.entries(Loaded(gateway: server.configuration, logLevel: ProcessLogLevel.level, logFormat: logFormat, eventLoops: loops))
        // The log format and the event loops stay what the process started with.
        let after = Self.entries(Loaded(gateway: server.reload(new.gateway), logLevel: new.logLevel, logFormat: logFormat, eventLoops: loops))
        ProcessLogLevel.level = new.logLevel
        let wanted = Self.entries(new)
        let changed = zip(before, after).filter { $0.value != $1.value }.map(\.0.name)
        let needsRestart = zip(after, wanted).filter { $0.value != $1.value }.map(\.0.name)
        logger.notice(
            "configuration reloaded",
            metadata: ["config.changed": "\(changed.isEmpty ? "nothing" : changed.joined(separator: ","))"]
        )
        if !needsRestart.isEmpty {
            logger.warning("configuration changes that need a restart", metadata: ["config.needs-restart": "\(needsRestart.joined(separator: ","))"])
        }
    }

    /// The effective configuration by option name: `--check-config` prints it, a reload compares it.
    static func entries(_ loaded: Loaded) -> [(name: String, value: String)] {
        let gateway = loaded.gateway
        func seconds(_ duration: Duration) -> String { "\(duration.components.seconds)" }
        func milliseconds(_ duration: Duration) -> String { "\(Int(duration / .milliseconds(1)))" }
        let legacy = gateway.legacyFunctions.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value == .phpMemcached ? "php-memcached" : "pecl-memcache")" }
        return [
            ("listen", "\(gateway.host):\(gateway.port)"),
            ("http", gateway.httpPort.map { "\(gateway.httpHost):\($0)" } ?? "off"),
            ("gearman", gateway.gearmanServers.map(\.description).joined(separator: ",")),
            ("redis", "\(gateway.redis.host):\(gateway.redis.port)"),
            ("redis-user", gateway.redis.authentication?.username ?? ""),
            ("redis-password", gateway.redis.authentication?.password ?? ""),
            ("redis-db", "\(gateway.redis.database ?? 0)"),
            ("redis-sentinel", gateway.redisSentinel.map { $0.sentinels.map(\.description).joined(separator: ",") } ?? ""),
            ("redis-master", gateway.redisSentinel?.primaryName ?? RedisFailoverOptions.defaultMaster),
            ("redis-replicas-ack", "\(gateway.redisReplicasAck?.replicas ?? 0)"),
            ("redis-replicas-ack-timeout", "\(Int((gateway.redisReplicasAck?.timeout ?? .seconds(1)) / .milliseconds(1)))"),
            ("key-prefix", gateway.keyPrefix),
            ("secrets", gateway.secrets.isEmpty ? "none" : gateway.secrets.joined(separator: ",")),
            ("credentials", gateway.credentials?.summary ?? "none"),
            ("legacy-functions", legacy.joined(separator: ",")),
            ("memcached", gateway.memcachedServers.map { "\($0.host):\($0.port)" }.joined(separator: ",")),
            ("memcached-distribution", Distribution.allCases.first { $0.value == gateway.memcachedDistribution }?.rawValue ?? ""),
            ("legacy-poll-min", milliseconds(gateway.legacyMinimumPollInterval)),
            ("legacy-poll-max", milliseconds(gateway.legacyMaximumPollInterval)),
            ("max-line", "\(gateway.maximumLineLength)"),
            ("max-payload", "\(gateway.maximumPayloadSize)"),
            ("max-watches", "\(gateway.maximumWatchesPerConnection)"),
            ("max-connections", "\(gateway.maximumConnections)"),
            ("event-loops", "\(loaded.eventLoops)"),
            ("idle-timeout", seconds(gateway.idleTimeout)),
            ("output-buffer", "\(gateway.outputBufferLimit)"),
            ("max-wait", seconds(gateway.maximumWaitTimeout)),
            ("max-subscriptions", "\(gateway.maximumSubscriptionsPerConnection)"),
            ("input-buffer", "\(gateway.inputBufferLimit)"),
            ("request-timeout", seconds(gateway.requestTimeout)),
            ("auth-failures", "\(gateway.maximumAuthFailures)"),
            ("auth-delay", milliseconds(gateway.authFailureDelay)),
            ("output-stall", seconds(gateway.outputStallTimeout)),
            ("contended-output-stall", seconds(gateway.contendedOutputStallTimeout)),
            ("max-lookup-bytes", "\(gateway.maximumOutcomeBytesPerConnection)"),
            ("max-lookup-bytes-total", "\(gateway.maximumOutcomeBytes)"),
            ("result-ttl", "\(gateway.resultTTL)"),
            ("subscription-retention", "\(gateway.subscriptionRetention)"),
            ("subscription-log-length", "\(gateway.subscriptionLogLength)"),
            ("lost-grace", seconds(gateway.lostJobGrace)),
            ("log-level", loaded.logLevel.rawValue),
            ("log-format", loaded.logFormat.rawValue),
            ("tls-cert", gateway.tls?.certificateFile ?? ""),
            ("tls-key", gateway.tls?.keyFile ?? ""),
            ("tls-client-ca", gateway.tls?.clientCAFile ?? ""),
            ("tls-handshake-timeout", gateway.tls.map { seconds($0.handshakeTimeout) } ?? ""),
        ]
    }

    func makeConfiguration(_ settings: Settings) throws -> GatewayConfiguration {
        var configuration = GatewayConfiguration()
        if let listen = settings.value("listen", listen) {
            let (host, port) = try settings.hostPort(listen, of: "listen", commandLine: self.listen != nil)
            configuration.host = host
            configuration.port = port
        }
        if let http = settings.value("http", http), !http.isEmpty, http != "off" {
            let (host, port) = try settings.hostPort(http, of: "http", commandLine: self.http != nil)
            configuration.httpHost = host
            configuration.httpPort = port
        }
        configuration.gearmanServers = try settings.parse("gearman", gearman, expected: "host:port,…")?.servers ?? configuration.gearmanServers
        if let redis = settings.value("redis", redis) {
            let (host, port) = try settings.hostPort(redis, of: "redis", commandLine: self.redis != nil)
            configuration.redis.host = host
            configuration.redis.port = port
        }
        let user = settings.value("redis-user", redisUser)
        if let password = settings.value("redis-password", redisPassword) {
            configuration.redis.authentication = .init(username: user, password: password)
        }
        configuration.redis.database = try settings.int("redis-db", redisDB)
        configuration.redis.tls = try redisTLS.load(settings)
        configuration.tls = try settings.gatewayTLS(certificate: tlsCert, key: tlsKey, clientCA: tlsClientCA, handshakeTimeout: tlsHandshakeTimeout)
        let failover = try redisFailover.load(settings)
        configuration.redisSentinel = failover.sentinel
        configuration.redisReplicasAck = failover.ack
        configuration.keyPrefix = settings.value("key-prefix", keyPrefix) ?? configuration.keyPrefix
        if let secrets = settings.value("secrets", secrets) {
            configuration.secrets = secrets.split(separator: ",").map(String.init)
        }
        if let path = settings.value("credentials", credentials), !path.isEmpty, path != "none" {
            do {
                configuration.credentials = try GatewayCredentials.load(path: path)
            } catch {
                throw ConfigurationError("\(settings.source("credentials", commandLine: credentials != nil)): \(error.description)")
            }
        }
        if let legacy = settings.value("legacy-functions", legacyFunctions) {
            for entry in legacy.split(separator: ",") {
                let parts = entry.split(separator: ":", maxSplits: 1).map(String.init)
                switch parts.count == 2 ? parts[1] : "pecl-memcache" {
                case "pecl-memcache": configuration.legacyFunctions[parts[0]] = .peclMemcache
                case "php-memcached": configuration.legacyFunctions[parts[0]] = .phpMemcached
                case let other: throw ValidationError("--legacy-functions: unknown PHP extension \(other) (pecl-memcache or php-memcached)")
                }
            }
        }
        if let memcached = settings.value("memcached", memcached) {
            guard let servers = MemcachedServers(argument: memcached) else { throw ValidationError("--memcached: expected host:port,…, got \(memcached)") }
            configuration.memcachedServers = servers.servers
        }
        if let name = settings.value("memcached-distribution", memcachedDistribution) {
            guard let distribution = Distribution(rawValue: name) else { throw ValidationError("--memcached-distribution: unknown \(name)") }
            configuration.memcachedDistribution = distribution.value
        }
        if !configuration.legacyFunctions.isEmpty && configuration.memcachedServers.isEmpty {
            throw ValidationError("--legacy-functions needs --memcached: the servers the legacy workers store results in")
        }
        configuration.maximumLineLength = try settings.positive("max-line", maxLine) ?? configuration.maximumLineLength
        configuration.maximumPayloadSize = try settings.positive("max-payload", maxPayload) ?? configuration.maximumPayloadSize
        configuration.maximumWatchesPerConnection = try settings.positive("max-watches", maxWatches) ?? configuration.maximumWatchesPerConnection
        configuration.maximumConnections = try settings.positive("max-connections", maxConnections) ?? configuration.maximumConnections
        configuration.maximumSubscriptionsPerConnection =
            try settings.positive("max-subscriptions", maxSubscriptions) ?? configuration.maximumSubscriptionsPerConnection
        configuration.inputBufferLimit = try settings.positive("input-buffer", inputBuffer) ?? configuration.inputBufferLimit
        if let seconds = try settings.positive("request-timeout", requestTimeout) { configuration.requestTimeout = .seconds(seconds) }
        configuration.maximumAuthFailures = try settings.positive("auth-failures", authFailures) ?? configuration.maximumAuthFailures
        if let milliseconds = try settings.int("auth-delay", authDelay) { configuration.authFailureDelay = .milliseconds(milliseconds) }
        guard configuration.inputBufferLimit >= configuration.maximumPayloadSize else {
            throw ValidationError("--input-buffer must be at least --max-payload, or no block of the largest size could ever be read")
        }
        guard configuration.requestTimeout > .zero, configuration.maximumAuthFailures > 0 else {
            throw ValidationError("--request-timeout and --auth-failures must be positive")
        }
        configuration.outputBufferLimit = try settings.positive("output-buffer", outputBuffer) ?? configuration.outputBufferLimit
        if let seconds = try settings.positive("output-stall", outputStall) { configuration.outputStallTimeout = .seconds(seconds) }
        if let seconds = try settings.positive("contended-output-stall", contendedOutputStall) {
            configuration.contendedOutputStallTimeout = .seconds(seconds)
        }
        configuration.maximumOutcomeBytesPerConnection =
            try settings.positive("max-lookup-bytes", maxLookupBytes) ?? configuration.maximumOutcomeBytesPerConnection
        configuration.maximumOutcomeBytes = try settings.positive("max-lookup-bytes-total", maxLookupBytesTotal) ?? configuration.maximumOutcomeBytes
        configuration.resultTTL = try settings.positive("result-ttl", resultTTL) ?? configuration.resultTTL
        configuration.subscriptionRetention =
            try settings.positive("subscription-retention", subscriptionRetention) ?? configuration.subscriptionRetention
        configuration.subscriptionLogLength =
            try settings.positive("subscription-log-length", subscriptionLogLength) ?? configuration.subscriptionLogLength
        if let seconds = try settings.positive("idle-timeout", idleTimeout) { configuration.idleTimeout = .seconds(seconds) }
        if let seconds = try settings.positive("max-wait", maxWait) { configuration.maximumWaitTimeout = .seconds(seconds) }
        if let seconds = try settings.positive("lost-grace", lostGrace) { configuration.lostJobGrace = .seconds(seconds) }
        if let milliseconds = try settings.int("legacy-poll-min", legacyPollMinimum) {
            configuration.legacyMinimumPollInterval = .milliseconds(milliseconds)
        }
        if let milliseconds = try settings.int("legacy-poll-max", legacyPollMaximum) {
            configuration.legacyMaximumPollInterval = .milliseconds(milliseconds)
        }
        guard configuration.legacyMinimumPollInterval > .zero, configuration.legacyMinimumPollInterval <= configuration.legacyMaximumPollInterval else {
            throw ValidationError("--legacy-poll-min must be positive and at most --legacy-poll-max")
        }
        return configuration
    }
}
