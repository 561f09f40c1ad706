import ArgumentParser
import Redis

/// `--redis-sentinel`, `--redis-master` and `--redis-replicas-ack`: the same for `jobgate serve` and `jobgate worker`,
/// and read through `Settings` like every option (environment `JOBGATE_REDIS_SENTINEL`, file key `redis-sentinel`).
struct RedisFailoverOptions: ParsableArguments {
    @Option(
        name: .customLong("redis-sentinel"),
        help: ArgumentHelp(
            "Redis Sentinels, comma-separated: connect to the primary they name (see --redis-master) and follow failovers, instead of --redis.",
            valueName: "host:port,…"
        )
    )
    var sentinels: String?

    @Option(name: .customLong("redis-master"), help: "The name the sentinels monitor the Redis primary under. (default: jobgate)")
    var master: String?

    @Option(
        name: .customLong("redis-replicas-ack"),
        help: "Replicas that must hold each new job record and each outcome before it is acknowledged (Redis WAIT); 0: none. (default: 0)"
    )
    var replicasAck: Int?

    @Option(
        name: .customLong("redis-replicas-ack-timeout"),
        help: "Longest wait, in milliseconds, for --redis-replicas-ack; an unacknowledged write counts as failed. (default: 1000)"
    )
    var replicasAckTimeout: Int?

    static let defaultMaster = "jobgate"

    /// The sentinels and the replicas to wait for, from the options, the environment and the config file.
    struct Loaded {
        var sentinels: [RedisAddress] = []
        var master = RedisFailoverOptions.defaultMaster
        var replicasAck = 0
        var replicasAckTimeout = 1_000

        var sentinel: RedisSentinelConfiguration? {
            sentinels.isEmpty ? nil : RedisSentinelConfiguration(sentinels: sentinels, primaryName: master)
        }

        var ack: RedisReplicasAck? {
            replicasAck == 0 ? nil : RedisReplicasAck(replicas: replicasAck, timeout: .milliseconds(replicasAckTimeout))
        }

        /// For `--check-config`.
        var entries: [(name: String, value: String)] {
            [
                ("redis-sentinel", sentinels.map(\.description).joined(separator: ",")),
                ("redis-master", master),
                ("redis-replicas-ack", "\(replicasAck)"),
                ("redis-replicas-ack-timeout", "\(replicasAckTimeout)"),
            ]
        }
    }

    func load(_ settings: Settings) throws(ConfigurationError) -> Loaded {
        var loaded = Loaded()
        if let text = settings.value("redis-sentinel", sentinels), !text.isEmpty {
            guard let addresses = RedisAddress.list(text) else {
                throw ConfigurationError("\(settings.source("redis-sentinel", commandLine: sentinels != nil)): expected host:port,…, got \(text)")
            }
            loaded.sentinels = addresses
        }
        loaded.master = settings.value("redis-master", master) ?? loaded.master
        guard !loaded.master.isEmpty, !loaded.master.contains(where: \.isWhitespace) else {
            throw ConfigurationError("\(settings.source("redis-master", commandLine: master != nil)): a primary name has no spaces, got `\(loaded.master)`")
        }
        loaded.replicasAck = try settings.int("redis-replicas-ack", replicasAck) ?? loaded.replicasAck
        loaded.replicasAckTimeout = try settings.positive("redis-replicas-ack-timeout", replicasAckTimeout) ?? loaded.replicasAckTimeout
        return loaded
    }
}
