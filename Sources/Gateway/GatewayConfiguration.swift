public import Gearman
import Logging
public import Memcache
public import Redis
import Synchronization

/// Everything `jobgate serve` can be told. Defaults suit one machine: loopback only, local servers.
public struct GatewayConfiguration: Sendable {
    public static let defaultPort = 4740

    /// Where clients connect. Loopback unless told otherwise.
    public var host = "127.0.0.1"
    public var port = Self.defaultPort
    public var gearmanServers = [GearmanServerAddress(host: "127.0.0.1")]
    public var redis = RedisConnectionConfiguration()
    /// Find the Redis primary through these sentinels and follow failovers (`--redis-sentinel`, `--redis-master`); `redis`
    /// then gives only the authentication and the database.
    public var redisSentinel: RedisSentinelConfiguration?
    /// Replicas that must hold a created record before `CREATED` (and a gateway-written outcome): `--redis-replicas-ack`.
    public var redisReplicasAck: RedisReplicasAck?
    /// Prefix of every Redis key (several deployments may share a Redis).
    public var keyPrefix = "jobgate:"
    /// The HTTP port for `/metrics` and job pages (`--http`); nil: off. Port 0 picks a free port.
    public var httpHost = "127.0.0.1"
    public var httpPort: Int?
    /// Accepted `AUTH` secrets; none means no authentication. Several allow rotating a secret.
    public var secrets: [String] = []
    /// Named credentials with scopes (`--credentials`): `AUTH <name> <secret>`; nil: none. With credentials (or
    /// secrets) every connection must authenticate.
    public var credentials: GatewayCredentials?

    /// Whether clients must `AUTH` before anything but HELLO, AUTH, PING, HEALTH and QUIT.
    public var requiresAuthentication: Bool { !secrets.isEmpty || credentials != nil }
    /// TLS on the line-protocol and HTTP ports; nil: plain TCP.
    public var tls: GatewayTLSConfiguration?

    // MARK: Legacy workers that store results in memcached under the Gearman job handle
    /// Memcached-backed functions and the PHP extension their workers store with; all others use Redis.
    public var legacyFunctions: [String: PHPMemcacheExtension] = [:]
    /// The legacy workers' memcached servers, as they list them (order, hosts, ports, weights), and their hashing.
    public var memcachedServers: [MemcacheServer] = []
    public var memcachedDistribution: MemcacheDistribution = .peclMemcacheConsistent
    /// The bridge polls gearmand this often while legacy jobs change, backing off to the maximum while they do not.
    public var legacyMinimumPollInterval: Duration = .milliseconds(100)
    public var legacyMaximumPollInterval: Duration = .seconds(1)

    // MARK: Limits, each answered with its own ERR code
    public var maximumLineLength = 8 * 1024
    public var maximumPayloadSize = 16 * 1024 * 1024
    public var maximumWatchesPerConnection = 1_000
    public var maximumSubscriptionsPerConnection = 1_000
    public var maximumConnections = 10_000
    /// A connection with no complete request for this long, and nothing watched, waited on or subscribed, is closed.
    public var idleTimeout: Duration = .seconds(300)
    /// Replies and events queued for a client that does not read; past it the connection is closed.
    public var outputBufferLimit = 8 * 1024 * 1024
    /// Bytes of `SUBMIT` blocks held across all connections, from the moment a block's line is read until its
    /// submission is answered. A block that does not fit is refused (`BUSY`) and skipped unread, never waited for:
    /// waiting could deadlock connections that each hold part of the room. At least `maximumPayloadSize`.
    public var inputBufferLimit = 256 * 1024 * 1024
    /// Longest a request may take to arrive whole, from its first byte (while the gateway reads); past it the
    /// connection is closed with `REQUEST_TIMEOUT`, and what it had sent of the request is dropped.
    public var requestTimeout: Duration = .seconds(60)
    /// Wrong `AUTH`s one connection may send; the last is answered, then the connection is closed.
    public var maximumAuthFailures = 10
    /// The second wrong `AUTH` is answered this long after the first, each further one twice as long after the one
    /// before (up to 32×), pipelined or not.
    public var authFailureDelay: Duration = .milliseconds(100)
    /// A client whose socket has taken none of its queued output for this long is closed as a slow consumer (it
    /// holds replies, and their share of `maximumOutcomeBytes`, that it does not read).
    public var outputStallTimeout: Duration = .seconds(30)
    /// The same, for a client that holds large results others wait for (the lookup budget is full): it may take
    /// none of its output only this long, so one client that stops reading cannot hold up everyone's large lookups
    /// for the whole `outputStallTimeout`. A client that reads, however slowly, shows progress with every 64 KiB.
    public var contendedOutputStallTimeout: Duration = .seconds(5)
    /// Bytes of results and failure reasons that lookups (`RESULT`, `WAIT`, `WATCH`, `SUBMIT wait=`) read and hold
    /// until written, per connection and in all; past them the gateway pauses lookups until earlier ones are written.
    public var maximumOutcomeBytesPerConnection = 2 * 1024 * 1024
    public var maximumOutcomeBytes = 8 * 1024 * 1024
    /// `WAIT` timeouts above this are cut to it.
    public var maximumWaitTimeout: Duration = .seconds(3_600)

    // MARK: Jobs
    /// Seconds a finished job's record and result are kept.
    public var resultTTL = 86_400
    /// A watched job that gearmand no longer knows, with no outcome after this long, ends as failed (lost); so does
    /// any job gearmand has not accepted this long after its record was created (its gateway died in between).
    public var lostJobGrace: Duration = .seconds(30)
    public var lostJobCheckInterval: Duration = .seconds(5)
    /// Backstop re-read of every followed job, for anything a notification missed; also how often the job id keys
    /// are re-synchronized with Redis (`JobIDKeyring`).
    public var sweepInterval: Duration = .seconds(30)
    /// Seconds, and entries per function, that the completion log keeps for resuming subscribers
    /// (`SUBSCRIBE … from=<cursor>`); the workers trim it with their own settings of the same names.
    public var subscriptionRetention = 86_400
    public var subscriptionLogLength = 100_000

    public init() {}

    /// With `redisSentinel`: this configuration with one locator for every Redis connection of the gateway (one question
    /// to the sentinels, one switch on failover).
    func locatingRedisPrimary(logger: Logger) -> GatewayConfiguration {
        guard let sentinel = redisSentinel else { return self }
        var result = self
        result.redis.primaryLocator = RedisPrimaryLocator(configuration: sentinel, logger: logger)
        return result
    }

    /// This configuration with what a running gateway takes from `new` on reload (SIGHUP): the secrets and
    /// credentials (for new `AUTH`s; a credential's scopes also for connections using it), the limits and the
    /// timeouts. The rest (addresses, servers, key prefix, legacy bridge, job timing) is built into the running parts
    /// and needs a restart.
    public func applyingReloadable(from new: GatewayConfiguration) -> GatewayConfiguration {
        var result = self
        result.secrets = new.secrets
        result.credentials = new.credentials
        result.maximumLineLength = new.maximumLineLength
        result.maximumPayloadSize = new.maximumPayloadSize
        result.maximumWatchesPerConnection = new.maximumWatchesPerConnection
        result.maximumConnections = new.maximumConnections
        result.idleTimeout = new.idleTimeout
        result.outputBufferLimit = new.outputBufferLimit
        result.maximumWaitTimeout = new.maximumWaitTimeout
        result.maximumSubscriptionsPerConnection = new.maximumSubscriptionsPerConnection
        result.inputBufferLimit = new.inputBufferLimit
        result.requestTimeout = new.requestTimeout
        result.maximumAuthFailures = new.maximumAuthFailures
        result.authFailureDelay = new.authFailureDelay
        result.outputStallTimeout = new.outputStallTimeout
        result.contendedOutputStallTimeout = new.contendedOutputStallTimeout
        result.maximumOutcomeBytesPerConnection = new.maximumOutcomeBytesPerConnection
        // New certificate files (or the same files renewed) for new connections; turning TLS on or off needs a restart.
        if result.tls != nil, let tls = new.tls { result.tls = tls }
        return result
    }
}

/// The configuration of a running gateway: one owner, read by every session, swapped on reload.
final class LiveConfiguration: Sendable {
    private let current: Mutex<GatewayConfiguration>

    init(_ configuration: GatewayConfiguration) {
        current = Mutex(configuration)
    }

    var value: GatewayConfiguration { current.withLock { $0 } }

    /// Takes what may change while running from `new`; returns the configuration now in effect.
    func reload(from new: GatewayConfiguration) -> GatewayConfiguration {
        current.withLock { configuration in
            configuration = configuration.applyingReloadable(from: new)
            return configuration
        }
    }
}
