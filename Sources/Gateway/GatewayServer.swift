import Gearman
import GatewayProtocol
import JobStore
import JobgateSupport
import LegacyJobs
public import Logging
import Memcache
public import NIOCore
public import NIOPosix
public import Prometheus
import Redis
public import ServiceLifecycle
import Synchronization

/// `jobgate serve`: the TCP gateway, as a long-lived `Service`.
///
/// On start it checks Redis keyspace notifications, loads the id key, subscribes to job changes and only
/// then listens. On graceful shutdown it stops accepting, stops reading requests, answers what is in
/// flight and closes each connection.
public final class GatewayServer: Service {
    private let live: LiveConfiguration
    /// Where the gateway's metrics live (`/metrics`, `STATS`): its own unless given one, so that several gateways
    /// can run in one process. `jobgate serve` passes the one it bootstraps swift-metrics' `MetricsSystem` with.
    public let metrics: PrometheusCollectorRegistry
    private let logger: Logger
    /// Where the connections live; one of its loops is the job tracker's, for the gateway's lifetime.
    private let eventLoopGroup: any EventLoopGroup
    private let listening = ReadinessLatch<SocketAddress>()
    private let httpListening = ReadinessLatch<SocketAddress>()
    /// The certificate new connections get, when the ports speak TLS (`configuration.tls`).
    private let tls = GatewayTLSContext()

    public init(
        configuration: GatewayConfiguration,
        metrics: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "jobgate.gateway")
    ) {
        self.live = LiveConfiguration(configuration)
        self.metrics = metrics
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
    }

    /// The configuration in effect (reloads change part of it).
    public var configuration: GatewayConfiguration { live.value }

    /// Takes the secrets, limits and timeouts of `new` for what follows (new `AUTH`s, new requests, new
    /// connections); the rest of `new` needs a restart. Returns the configuration now in effect.
    /// A reload reads the TLS certificate and key files again (renewed in place, or new paths).
    @discardableResult
    public func reload(_ new: GatewayConfiguration) -> GatewayConfiguration {
        let configuration = live.reload(from: new)
        if let tlsConfiguration = configuration.tls {
            do {
                try tls.load(tlsConfiguration)
            } catch {
                logger.error("TLS certificate not reloaded: new connections keep the running one", metadata: ["tls.error": "\(error)"])
            }
        }
        return configuration
    }

    /// The address the server listens on, once it does (port 0 in the configuration picks a free port).
    public func waitUntilListening() async throws -> SocketAddress {
        try await listening.wait()
    }

    /// The address of the HTTP port (`/metrics`, job pages), once it listens; throws when it is off.
    public func waitUntilHTTPListening() async throws -> SocketAddress {
        guard configuration.httpPort != nil else { throw GatewayHTTPDisabled() }
        return try await httpListening.wait()
    }

    public func run() async throws {
        do {
            try await serve()
        } catch {
            httpListening.resolve(.failure(error))
            listening.resolve(.failure(error))
            // Stopped while it waited for Redis: a stop as asked, not a failure.
            if error is CancellationError && Task.isShuttingDownGracefully { return }
            throw error
        }
    }

    private func serve() async throws {
        let configuration = self.configuration.locatingRedisPrimary(logger: logger)
        let backends = BackendStatus(
            redisServer: configuration.redis.serverDescription,
            gearmandServers: configuration.gearmanServers.map { "\($0)" },
            logger: logger
        )
        if let tlsConfiguration = configuration.tls { try tls.load(tlsConfiguration) }
        let statistics = GatewayStatistics(registry: metrics, backends: backends, maximumOutcomeBytes: configuration.maximumOutcomeBytes)
        let redis = RedisConnectionPool(configuration: configuration.redis, size: 4, logger: logger)
        let outcomeRedis = RedisConnectionPool(configuration: configuration.redis, size: 2, logger: logger)
        var storeConfiguration = JobStoreConfiguration()
        storeConfiguration.schema = JobKeySchema(prefix: configuration.keyPrefix, database: configuration.redis.database ?? 0)
        storeConfiguration.resultTTL = configuration.resultTTL
        storeConfiguration.acceptanceGrace = configuration.lostJobGrace
        storeConfiguration.logRetention = CompletionLogRetention(age: configuration.subscriptionRetention, maximumLength: configuration.subscriptionLogLength)
        storeConfiguration.replicasAck = configuration.redisReplicasAck
        let store = RedisJobStore(redis: redis, outcomeRedis: outcomeRedis, configuration: storeConfiguration)
        let logger = self.logger
        let ids = try await cancelWhenGracefulShutdown {
            try await untilRedisAnswers(at: configuration.redis.serverDescription, logger: logger) {
                try await KeyspaceNotifications.ensureEnabled(on: redis)
                return try await JobIDKeyring.load(from: redis, prefix: configuration.keyPrefix, logger: logger)
            }
        }
        // The tracker's loop, and its feed's: notification, re-read and the followers' bookkeeping run there, unlocked.
        let tracker = JobTracker(
            store: store, eventLoop: eventLoopGroup.next(), sweepInterval: configuration.sweepInterval, statistics: statistics, logger: logger
        )
        let feed = tracker.feed
        // Each reconnect may find a Redis that lost its data, the id keys with it: the keyring re-asserts them.
        let (redisReconnects, redisReconnected) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        feed.onLinkChange { link, error in
            backends.redisChanged(link, error: error)
            if link != .down { redisReconnected.yield() }
        }
        let logHub = CompletionLogHub(store: store, redis: configuration.redis, sweepInterval: configuration.sweepInterval, logger: logger)
        let gearman = GearmanServerPool(servers: configuration.gearmanServers, logger: logger)
        let legacy = try makeLegacyBridge(store: store, gearman: gearman, statistics: statistics)
        let backend = GatewayBackend(
            store: store, gearman: gearman, ids: ids, configuration: configuration, statistics: statistics, logger: logger, legacy: legacy,
            isFollowed: { await tracker.isFollowed($0) }
        )
        statistics.metrics.countWatchers { tracker.watcherCount }
        let services = SessionServices(backend: backend, tracker: tracker, logHub: logHub, configuration: live, statistics: statistics, logger: logger)
        do {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await tracker.run() }
                // Cancelled once every connection closed: nothing is queued by then.
                let executors = EventLoopTaskExecutor.all(of: eventLoopGroup)
                group.addTask { await services.submits.run(on: executors) }
                group.addTask { await services.lookups.run(on: executors) }
                group.addTask { await services.outcomes.run(on: executors) }
                group.addTask { await logHub.run() }
                if let locator = redis.configuration.primaryLocator {
                    group.addTask { try await locator.run() }  // failovers announced by the sentinels
                }
                let lostJobs = LostJobWatch(
                    check: GearmanPresenceCheck(gearman: gearman, legacy: legacy), store: store, tracker: tracker,
                    minimumInterval: configuration.lostJobCheckInterval, maximumInterval: configuration.lostJobCheckInterval,
                    grace: configuration.lostJobGrace, statistics: statistics, logger: logger
                )
                group.addTask { await lostJobs.run() }
                group.addTask { await ids.run(every: configuration.sweepInterval, reconnected: redisReconnects) }
                group.addTask { await backends.follow(gearman) }
                group.addTask { await backend.sweepUnacceptedJobs() }
                if let legacy {
                    let legacyJobs = LostJobWatch(
                        check: legacy, store: store, tracker: tracker, minimumInterval: configuration.legacyMinimumPollInterval,
                        maximumInterval: configuration.legacyMaximumPollInterval, grace: configuration.lostJobGrace, statistics: statistics,
                        logger: logger
                    )
                    group.addTask { await legacyJobs.run() }
                }
                try await feed.waitUntilReady()
                if let httpPort = configuration.httpPort {
                    let http = GatewayHTTPServer(
                        host: configuration.httpHost, port: httpPort, backend: backend, tracker: tracker, statistics: statistics,
                        maximumConnections: configuration.maximumConnections, tls: tls, logger: logger,
                        servesJobPages: { [live] in live.value.credentials == nil }
                    )
                    group.addTask {
                        // Cancelled below once the line protocol has drained: the HTTP port's normal end, not a failure.
                        do { try await http.run { address in self.httpListening.resolve(.success(address)) } } catch is CancellationError {}
                    }
                }
                try await acceptConnections(services: services, tracker: tracker, statistics: statistics)
                group.cancelAll()
            }
        } catch {
            await gearman.shutdown()
            await redis.close()
            await outcomeRedis.close()
            await legacy?.shutdown()
            throw error
        }
        await gearman.shutdown()
        await redis.close()
        await outcomeRedis.close()
        await legacy?.shutdown()
    }

    private func makeLegacyBridge(store: RedisJobStore, gearman: GearmanServerPool, statistics: GatewayStatistics) throws -> LegacyBridge? {
        let configuration = self.configuration
        guard !configuration.legacyFunctions.isEmpty else { return nil }
        guard !configuration.memcachedServers.isEmpty else {
            throw GatewayConfigurationError("legacy functions need the memcached servers their workers store results in")
        }
        let distribution = configuration.memcachedServers.count == 1 ? .single : configuration.memcachedDistribution
        return LegacyBridge(
            functions: configuration.legacyFunctions,
            memcache: try MemcacheClient(servers: configuration.memcachedServers, distribution: distribution, logger: logger),
            store: store,
            gearman: gearman,
            polled: { statistics.legacyPolls.add(1, ordering: .relaxed) },
            logger: logger
        )
    }


    private func acceptConnections(services: SessionServices, tracker: JobTracker, statistics: GatewayStatistics) async throws {
        let configuration = self.configuration
        let connections = services.connections
        let listener = try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // A client that sends its requests and shuts its side (`printf … | nc`) still gets every reply.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            // Each connection keeps its receive buffers between reads (NIO pools two once a read found more): start
            // them at a `WATCH` line's size (they grow with the traffic, doubling on each full read), as most connections
            // are idle watchers and there may be 10,000 of them.
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 64, maximum: 65_536))
            .childChannelInitializer { [tls = self.tls, logger = self.logger] channel in
                channel.eventLoop.makeCompletedFuture {
                    let refusal = connections.admit(channel)
                    do {
                        // The session leaves `connections` when its channel closes (no callback on the close future:
                        // an allocation less per connection), but under TLS it starts only after the handshake,
                        // which may never end.
                        let waitsForHandshake = try tls.secure(channel, port: "line protocol", logger: logger) { pipeline, peerSubject in
                            if let refusal {
                                return try pipeline.addHandler(ConnectionRefusal(message: refusal))
                            }
                            try pipeline.addHandler(GatewaySessionHandler(services: services, tlsPeerSubject: peerSubject))
                        }
                        if waitsForHandshake, refusal == nil {
                            channel.closeFuture.whenComplete { _ in connections.remove(channel) }
                        }
                    } catch {
                        connections.remove(channel)
                        throw error
                    }
                }
            }
            .bind(host: configuration.host, port: configuration.port)
            .get()
        let address = listener.localAddress!
        listening.resolve(.success(address))
        logger.info("gateway listening", metadata: ["gateway.address": "\(address)"])

        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                try? await listener.closeFuture.get()
                await connections.waitUntilAllClosed()
            } onGracefulShutdown: {
                // Stop accepting, and stop reading requests: what was read is answered, then each connection closes.
                listener.close(promise: nil)
                connections.endInputs()
                tracker.endAllWaits()
            }
        } onCancel: {
            listener.close(promise: nil)
            connections.closeAll()
        }
    }
}

/// The open client connections: the connection limit, and closing them on shutdown.
final class GatewayConnections: Sendable {
    private struct State {
        var channels: [ObjectIdentifier: any Channel] = [:]
        var allClosed: [CheckedContinuation<Void, Never>] = []
        var isShuttingDown = false
    }

    private let state = Mutex(State())
    private let configuration: LiveConfiguration
    private let statistics: GatewayStatistics

    init(configuration: LiveConfiguration, statistics: GatewayStatistics) {
        self.configuration = configuration
        self.statistics = statistics
    }

    /// Counts a new connection in; otherwise says why not (it gets `ERR BUSY` with that, then is closed).
    func admit(_ channel: any Channel) -> String? {
        statistics.connectionsAccepted.add(1, ordering: .relaxed)
        let key = ObjectIdentifier(channel)
        let limit = configuration.value.maximumConnections
        let refusal = state.withLock { state -> String? in
            // One accepted just as shutdown began (the listener closes meanwhile) would never be asked to close.
            if state.isShuttingDown { return "the gateway is shutting down; try another or again later" }
            if state.channels.count >= limit { return "too many connections (limit \(limit)); try again later" }
            state.channels[key] = channel
            return nil
        }
        if refusal != nil {
            statistics.connectionsRefused.add(1, ordering: .relaxed)
            return refusal
        }
        statistics.connectionsOpen.add(1, ordering: .relaxed)
        return nil
    }

    /// A connection closed (nothing if it was not admitted, or was removed already).
    func remove(_ channel: any Channel) {
        let (wasOpen, waiters) = state.withLock { state -> (Bool, [CheckedContinuation<Void, Never>]) in
            guard state.channels.removeValue(forKey: ObjectIdentifier(channel)) != nil else { return (false, []) }
            guard state.channels.isEmpty else { return (true, []) }
            defer { state.allClosed = [] }
            return (true, state.allClosed)
        }
        if wasOpen { statistics.connectionsOpen.subtract(1, ordering: .relaxed) }
        for waiter in waiters { waiter.resume() }
    }

    /// Graceful shutdown: no more requests are read; each session answers what it read, then closes.
    func endInputs() {
        let channels = state.withLock { state in
            state.isShuttingDown = true
            return Array(state.channels.values)
        }
        for channel in channels { channel.close(mode: .input, promise: nil) }
    }

    func closeAll() {
        for channel in state.withLock({ Array($0.channels.values) }) { channel.close(promise: nil) }
    }

    func waitUntilAllClosed() async {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> Bool in
                guard !state.channels.isEmpty else { return true }
                state.allClosed.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }
}

/// Over the connection limit (or shutting down): one `ERR BUSY` line, then close.
private final class ConnectionRefusal: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let text: String

    init(message: String) {
        self.text = message
    }

    func channelActive(context: ChannelHandlerContext) {
        var message = context.channel.allocator.buffer(capacity: 80)
        GatewayResponseEncoder.write(.reply(.error(code: .busy, message: text)), into: &message)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(message)).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

/// A configuration the gateway cannot run with.
public struct GatewayConfigurationError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// `waitUntilHTTPListening()` on a gateway without `--http`.
public struct GatewayHTTPDisabled: Error, CustomStringConvertible {
    public var description: String { "the gateway has no HTTP port (--http)" }
}
