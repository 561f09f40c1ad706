import ArgumentParser
import Foundation
import Gateway
import Gearman
import Logging
import Memcache
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
            Every option can also come from the environment (JOBGATE_ plus the option name in capitals with
            underscores, e.g. JOBGATE_MAX_PAYLOAD=1048576) or from a config file (--config FILE, lines
            `name = value` with the option names, e.g. `redis = 127.0.0.1:6379`; `#` starts a comment).
            Command-line options win over the environment, which wins over the file.

            Example (everything on this machine, the defaults):
              jobgate serve --listen 127.0.0.1:4740 --gearman 127.0.0.1:4730 --redis 127.0.0.1:6379
            Then talk to it:  printf 'PING\\n' | nc -q1 127.0.0.1 4740
            """
    )

    @Option(help: "Config file with `name = value` lines (same names as the options).")
    var config: String?

    @Option(help: "Address to listen on, host:port. Loopback unless you mean otherwise. (default: 127.0.0.1:4740)")
    var listen: String?

    @Option(help: "HTTP address for /metrics (Prometheus) and live job pages (/jobs/<id>), host:port. (default: off)")
    var http: String?

    @Option(help: "gearmand servers, comma-separated host:port. (default: 127.0.0.1:4730)")
    var gearman: String?

    @Option(help: "Redis server, host:port. (default: 127.0.0.1:6379)")
    var redis: String?

    @Option(name: .customLong("redis-password"), help: "Redis password (AUTH).")
    var redisPassword: String?

    @Option(name: .customLong("redis-user"), help: "Redis ACL user (with --redis-password).")
    var redisUser: String?

    @Option(name: .customLong("redis-db"), help: "Redis database number. (default: 0)")
    var redisDB: Int?

    @Option(name: .customLong("key-prefix"), help: "Prefix of every Redis key. (default: jobgate:)")
    var keyPrefix: String?

    @Option(help: "Secrets clients must AUTH with, comma-separated; none: no authentication.")
    var secrets: String?

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

    @Option(name: .customLong("max-connections"), help: "Open connections; more get ERR BUSY and are closed. (default: 10000)")
    var maxConnections: Int?

    @Option(name: .customLong("idle-timeout"), help: "Seconds without a request before an idle connection is closed. (default: 300)")
    var idleTimeout: Int?

    @Option(name: .customLong("output-buffer"), help: "Bytes queued for a client that does not read before it is closed. (default: 8388608)")
    var outputBuffer: Int?

    @Option(name: .customLong("output-stall"), help: "Seconds a client's socket may take none of its output before it is closed (ERR SLOW_CONSUMER). (default: 30)")
    var outputStall: Int?

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

    @Option(name: .customLong("lost-grace"), help: "Seconds a job may be unknown to gearmand without a result before it is failed as lost. (default: 30)")
    var lostGrace: Int?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical. (default: info)")
    var logLevel: String?

    func run() async throws {
        GlibcMalloc.limitArenas()
        let settings = try Settings(file: config)
        let configuration = try makeConfiguration(settings)
        let level = Logger.Level(rawValue: settings.value("log-level", logLevel) ?? "info") ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "jobgate.gateway")
        let server = GatewayServer(configuration: configuration, logger: logger)
        let group = ServiceGroup(
            configuration: .init(services: [server, GlibcMalloc.Trimmer()], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
    }

    func makeConfiguration(_ settings: Settings) throws -> GatewayConfiguration {
        var configuration = GatewayConfiguration()
        if let listen = settings.value("listen", listen) {
            let (host, port) = try Settings.hostPort(listen, option: "listen")
            configuration.host = host
            configuration.port = port
        }
        if let http = settings.value("http", http), !http.isEmpty, http != "off" {
            let (host, port) = try Settings.hostPort(http, option: "http")
            configuration.httpHost = host
            configuration.httpPort = port
        }
        if let gearman = settings.value("gearman", gearman) {
            configuration.gearmanServers = try gearman.split(separator: ",").map { part in
                guard let address = GearmanServerAddress(String(part)) else { throw ValidationError("--gearman: not host:port: \(part)") }
                return address
            }
        }
        if let redis = settings.value("redis", redis) {
            let (host, port) = try Settings.hostPort(redis, option: "redis")
            configuration.redis.host = host
            configuration.redis.port = port
        }
        if let password = settings.value("redis-password", redisPassword) {
            configuration.redis.authentication = .init(username: settings.value("redis-user", redisUser), password: password)
        }
        configuration.redis.database = try settings.int("redis-db", redisDB)
        configuration.keyPrefix = settings.value("key-prefix", keyPrefix) ?? configuration.keyPrefix
        if let secrets = settings.value("secrets", secrets) {
            configuration.secrets = secrets.split(separator: ",").map(String.init)
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
        configuration.maximumLineLength = try settings.int("max-line", maxLine) ?? configuration.maximumLineLength
        configuration.maximumPayloadSize = try settings.int("max-payload", maxPayload) ?? configuration.maximumPayloadSize
        configuration.maximumWatchesPerConnection = try settings.int("max-watches", maxWatches) ?? configuration.maximumWatchesPerConnection
        configuration.maximumConnections = try settings.int("max-connections", maxConnections) ?? configuration.maximumConnections
        configuration.outputBufferLimit = try settings.int("output-buffer", outputBuffer) ?? configuration.outputBufferLimit
        if let seconds = try settings.int("output-stall", outputStall) { configuration.outputStallTimeout = .seconds(seconds) }
        configuration.maximumOutcomeBytesPerConnection =
            try settings.int("max-lookup-bytes", maxLookupBytes) ?? configuration.maximumOutcomeBytesPerConnection
        configuration.maximumOutcomeBytes = try settings.int("max-lookup-bytes-total", maxLookupBytesTotal) ?? configuration.maximumOutcomeBytes
        configuration.resultTTL = try settings.int("result-ttl", resultTTL) ?? configuration.resultTTL
        if let seconds = try settings.int("idle-timeout", idleTimeout) { configuration.idleTimeout = .seconds(seconds) }
        if let seconds = try settings.int("max-wait", maxWait) { configuration.maximumWaitTimeout = .seconds(seconds) }
        if let seconds = try settings.int("lost-grace", lostGrace) { configuration.lostJobGrace = .seconds(seconds) }
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

/// Option values from the command line, then the environment (`JOBGATE_…`), then a config file.
struct Settings {
    let file: [String: String]
    let environment: [String: String]

    init(file path: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        self.environment = environment
        guard let path else {
            self.file = [:]
            return
        }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ValidationError("cannot read config file \(path): \(error.localizedDescription)")
        }
        var values: [String: String] = [:]
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0].trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty else { continue }
            let parts = line.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { throw ValidationError("\(path):\(number + 1): expected `name = value`") }
            values[parts[0].trimmingCharacters(in: .whitespaces)] = parts[1].trimmingCharacters(in: .whitespaces)
        }
        self.file = values
    }

    func value(_ name: String, _ commandLine: String?) -> String? {
        commandLine ?? environment["JOBGATE_" + name.uppercased().replacingOccurrences(of: "-", with: "_")] ?? file[name]
    }

    func int(_ name: String, _ commandLine: Int?) throws -> Int? {
        guard let text = value(name, commandLine.map(String.init)) else { return nil }
        guard let number = Int(text), number >= 0 else { throw ValidationError("\(name): not a non-negative number: \(text)") }
        return number
    }

    static func hostPort(_ text: String, option: String) throws -> (String, Int) {
        guard let address = GearmanServerAddress(text), text.contains(":") else {
            throw ValidationError("--\(option): expected host:port, got \(text)")
        }
        return (address.host, address.port)
    }
}
