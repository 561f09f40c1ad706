public import Gearman
public import Memcache
public import Redis

/// Everything `jobgate serve` can be told. Defaults suit one machine: loopback only, local servers.
public struct GatewayConfiguration: Sendable {
    public static let defaultPort = 4740

    /// Where clients connect. Loopback unless told otherwise.
    public var host = "127.0.0.1"
    public var port = Self.defaultPort
    public var gearmanServers = [GearmanServerAddress(host: "127.0.0.1")]
    public var redis = RedisConnectionConfiguration()
    /// Prefix of every Redis key (several deployments may share a Redis).
    public var keyPrefix = "jobgate:"
    /// The HTTP port for `/metrics` and job pages (`--http`); nil: off. Port 0 picks a free port.
    public var httpHost = "127.0.0.1"
    public var httpPort: Int?
    /// Accepted `AUTH` secrets; none means no authentication. Several allow rotating a secret.
    public var secrets: [String] = []

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
    public var maximumConnections = 10_000
    /// A connection with no complete request for this long, and nothing watched, waited on or subscribed, is closed.
    public var idleTimeout: Duration = .seconds(300)
    /// Replies and events queued for a client that does not read; past it the connection is closed.
    public var outputBufferLimit = 8 * 1024 * 1024
    /// A client whose socket has taken none of its queued output for this long is closed as a slow consumer (it
    /// holds replies, and their share of `maximumOutcomeBytes`, that it does not read).
    public var outputStallTimeout: Duration = .seconds(30)
    /// Bytes of results and failure reasons that lookups (`RESULT`, `WAIT`, `WATCH`, `SUBMIT wait=`) read and hold
    /// until written, per connection and in all; past them the gateway pauses lookups until earlier ones are written.
    public var maximumOutcomeBytesPerConnection = 2 * 1024 * 1024
    public var maximumOutcomeBytes = 8 * 1024 * 1024
    /// `WAIT` timeouts above this are cut to it.
    public var maximumWaitTimeout: Duration = .seconds(3_600)

    // MARK: Jobs
    /// Seconds a finished job's record and result are kept.
    public var resultTTL = 86_400
    /// A watched job that gearmand no longer knows, with no outcome after this long, ends as failed (lost).
    public var lostJobGrace: Duration = .seconds(30)
    public var lostJobCheckInterval: Duration = .seconds(5)
    /// Backstop re-read of every followed job, for anything a notification missed.
    public var sweepInterval: Duration = .seconds(30)

    public init() {}
}
