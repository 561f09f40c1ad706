import Gearman
import GatewayProtocol
import JobStore
public import Logging
import Memcache
import NIOCore
import NIOPosix
import Redis
public import ServiceLifecycle
import Synchronization

/// `jobgate serve`: the TCP gateway, as a long-lived `Service`.
///
/// On start it checks Redis keyspace notifications, loads the id key, subscribes to job changes and only
/// then listens. On graceful shutdown it stops accepting, stops reading requests, answers what is in
/// flight and closes each connection.
public final class GatewayServer: Service {
    public let configuration: GatewayConfiguration
    private let logger: Logger
    private let listening = Mutex<ListenState>(.init())
    private let httpAddress = ListeningAddress()

    private struct ListenState {
        var address: SocketAddress?
        var waiters: [CheckedContinuation<SocketAddress, any Error>] = []
        var sessions: [ObjectIdentifier: any Channel] = [:]
        var failure: (any Error)?
    }

    public init(configuration: GatewayConfiguration, logger: Logger = Logger(label: "jobgate.gateway")) {
        self.configuration = configuration
        self.logger = logger
    }

    /// The address the server listens on, once it does (port 0 in the configuration picks a free port).
    public func waitUntilListening() async throws -> SocketAddress {
        try await withCheckedThrowingContinuation { continuation in
            let ready = listening.withLock { state -> Result<SocketAddress, any Error>? in
                if let address = state.address { return .success(address) }
                if let failure = state.failure { return .failure(failure) }
                state.waiters.append(continuation)
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }

    /// The address of the HTTP port (`/metrics`, job pages), once it listens; throws when it is off.
    public func waitUntilHTTPListening() async throws -> SocketAddress {
        guard configuration.httpPort != nil else { throw GatewayHTTPDisabled() }
        return try await httpAddress.wait()
    }

    public func run() async throws {
        do {
            try await serve()
        } catch {
            httpAddress.resolve(.failure(error))
            let waiters = listening.withLock { state in
                state.failure = error
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume(throwing: error) }
            throw error
        }
    }

    private func serve() async throws {
        let statistics = GatewayStatistics()
        let redis = RedisConnectionPool(configuration: configuration.redis, size: 4, logger: logger)
        var storeConfiguration = JobStoreConfiguration()
        storeConfiguration.schema = JobKeySchema(prefix: configuration.keyPrefix, database: configuration.redis.database ?? 0)
        storeConfiguration.resultTTL = configuration.resultTTL
        let store = RedisJobStore(redis: redis, configuration: storeConfiguration)
        try await KeyspaceNotifications.ensureEnabled(on: redis)
        let ids = try await JobIDMinter.load(from: redis, prefix: configuration.keyPrefix)
        let feed = JobChangeFeed(store: store, sweepInterval: configuration.sweepInterval, logger: logger)
        let hub = PushHub(feed: feed, statistics: statistics)
        let gearman = GearmanServerPool(servers: configuration.gearmanServers, logger: logger)
        let legacy = try makeLegacyBridge(store: store, gearman: gearman, statistics: statistics)
        let backend = GatewayBackend(
            store: store, gearman: gearman, ids: ids, configuration: configuration, statistics: statistics, logger: logger, legacy: legacy,
            isFollowed: { hub.isFollowed($0) }
        )
        statistics.metrics.countWatchers { hub.watcherCount }
        do {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await feed.run() }
                group.addTask { await hub.run() }
                group.addTask { await backend.watchForLostJobs(followed: { hub.followedIDs }) }
                if let legacy {
                    group.addTask { await legacy.run(followed: { hub.followedIDs }) }
                }
                await feed.waitUntilReady()
                if let httpPort = configuration.httpPort {
                    let http = GatewayHTTPServer(
                        host: configuration.httpHost, port: httpPort, backend: backend, hub: hub, statistics: statistics,
                        maximumConnections: configuration.maximumConnections, logger: logger
                    )
                    group.addTask { try await http.run { address in self.httpAddress.resolve(.success(address)) } }
                }
                try await acceptConnections(backend: backend, hub: hub, statistics: statistics)
                group.cancelAll()
            }
        } catch {
            await gearman.shutdown()
            await redis.close()
            await legacy?.memcache.shutdown()
            throw error
        }
        await gearman.shutdown()
        await redis.close()
        await legacy?.memcache.shutdown()
    }

    private func makeLegacyBridge(store: RedisJobStore, gearman: GearmanServerPool, statistics: GatewayStatistics) throws -> LegacyBridge? {
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
            minimumInterval: configuration.legacyMinimumPollInterval,
            maximumInterval: configuration.legacyMaximumPollInterval,
            grace: configuration.lostJobGrace,
            statistics: statistics,
            logger: logger
        )
    }


    private func acceptConnections(backend: GatewayBackend, hub: PushHub, statistics: GatewayStatistics) async throws {
        let configuration = self.configuration
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // A client that sends its requests and shuts its side (`printf … | nc`) still gets every reply.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .bind(host: configuration.host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(
                            GatewayRequestDecoder(maximumLineLength: configuration.maximumLineLength, maximumPayloadSize: configuration.maximumPayloadSize)
                        )
                    )
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(GatewayResponseEncoder()))
                    return try NIOAsyncChannel<Result<GatewayRequest, GatewayRequestError>, GatewayResponse>(wrappingChannelSynchronously: channel)
                }
            }
        let address = listener.channel.localAddress!
        let waiters = listening.withLock { state in
            state.address = address
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: address) }
        logger.info("gateway listening", metadata: ["gateway.address": "\(address)"])

        try await withGracefulShutdownHandler {
            try await listener.executeThenClose { connections in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await connection in connections {
                        let open = statistics.connectionsOpen.add(1, ordering: .relaxed).newValue
                        statistics.connectionsAccepted.add(1, ordering: .relaxed)
                        guard open <= configuration.maximumConnections else {
                            statistics.connectionsOpen.subtract(1, ordering: .relaxed)
                            statistics.connectionsRefused.add(1, ordering: .relaxed)
                            group.addTask { await Self.refuse(connection, limit: configuration.maximumConnections) }
                            continue
                        }
                        group.addTask {
                            let key = ObjectIdentifier(connection.channel)
                            self.listening.withLock { $0.sessions[key] = connection.channel }
                            await GatewaySession(
                                channel: connection,
                                backend: backend,
                                hub: hub,
                                configuration: configuration,
                                statistics: statistics,
                                logger: self.logger
                            ).run()
                            self.listening.withLock { _ = $0.sessions.removeValue(forKey: key) }
                            statistics.connectionsOpen.subtract(1, ordering: .relaxed)
                        }
                    }
                }
            }
        } onGracefulShutdown: {
            // Stop accepting, and stop reading requests: what was read is answered, then each connection closes.
            listener.channel.close(promise: nil)
            let sessions = self.listening.withLock { Array($0.sessions.values) }
            for session in sessions { session.close(mode: .input, promise: nil) }
            hub.endAllWaits()
        }
    }

    /// Over the connection limit: one `ERR BUSY` line, then close.
    private static func refuse(_ connection: NIOAsyncChannel<Result<GatewayRequest, GatewayRequestError>, GatewayResponse>, limit: Int) async {
        try? await connection.executeThenClose { _, outbound in
            try await outbound.write(.reply(.error(code: .busy, message: "too many connections (limit \(limit)); try again later")))
        }
    }
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
