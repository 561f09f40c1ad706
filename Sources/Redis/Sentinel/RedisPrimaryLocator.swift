public import JobgateSupport
public import Logging
import NIOCore
public import NIOPosix
import Synchronization

/// Where the sentinels are and which primary to ask them for.
public struct RedisSentinelConfiguration: Sendable {
    public var sentinels: [RedisAddress]
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> …`).
    public var primaryName: String
    /// The sentinels' own `requirepass`, if they have one (the data nodes' password is the connection's).
    public var authentication: RedisConnectionConfiguration.Authentication?
    public var connectTimeout: Duration
    /// Longest wait for a sentinel's answer, and for the answer to a `PING` on the announcement subscription.
    public var commandTimeout: Duration
    /// Interval of `PING`s on the announcement subscription, which find a silently dead sentinel.
    public var pingInterval: Duration
    /// Between attempts to subscribe to a sentinel's announcements.
    public var backoff: Backoff

    public init(
        sentinels: [RedisAddress],
        primaryName: String,
        authentication: RedisConnectionConfiguration.Authentication? = nil,
        connectTimeout: Duration = .seconds(2),
        commandTimeout: Duration = .seconds(2),
        pingInterval: Duration = .seconds(5),
        backoff: Backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(2))
    ) {
        precondition(!sentinels.isEmpty, "Sentinel needs at least one sentinel address")
        self.sentinels = sentinels
        self.primaryName = primaryName
        self.authentication = authentication
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.pingInterval = pingInterval
        self.backoff = backoff
    }
}

/// Finds the Redis primary through Sentinel and follows failovers; connections configured with it
/// (``RedisConnectionConfiguration/primaryLocator``) connect through it.
///
/// ```
///   sentinels ── SENTINEL get-master-addr-by-name ──▶ ┌─────────────────────┐ ◀── primary() ── RedisConnection.connect
///             ── +switch-master (run()) ────────────▶ │ RedisPrimaryLocator │ ◀── primaryFailed: READONLY, ROLE, refused
///                                                     └─────────────────────┘ ──▶ closes connections to a former primary
/// ```
///
/// The decisions are in ``StateMachine``; this class asks the sentinels, keeps the callers waiting for an answer,
/// and closes the connections to a server that is not the primary any more, so that pools and subscribers reconnect
/// (and subscribers confirm `.subscribed(isReconnect: true)`, after which their consumers re-read what they follow).
/// Without `run()` the primary is still found and rediscovered on failures; `run()` adds the announcements, which
/// move every connection within moments of a failover instead of at its first failed command.
public final class RedisPrimaryLocator: Sendable {
    public let configuration: RedisSentinelConfiguration
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger

    private struct State {
        var machine = StateMachine()
        var waiters: [CheckedContinuation<RedisAddress, any Error>] = []
        /// Open connections to the primary, each with how to close it when the primary moves.
        var connections: [UInt64: (address: RedisAddress, close: @Sendable () -> Void)] = [:]
        var nextConnectionID: UInt64 = 0
        /// In the order to ask them: the last sentinel that answered first.
        var sentinels: [RedisAddress]
        var isRunning = false

        /// Takes the connections whose address matches, returning how to close them.
        mutating func removeConnections(where matches: (RedisAddress) -> Bool) -> [@Sendable () -> Void] {
            let matching = connections.filter { matches($0.value.address) }
            for id in matching.keys { connections[id] = nil }
            return matching.values.map(\.close)
        }
    }

    private let state: Mutex<State>

    public init(
        configuration: RedisSentinelConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "jobgate.redis.sentinel")
    ) {
        self.configuration = configuration
        self.eventLoopGroup = eventLoopGroup
        var logger = logger
        logger[metadataKey: "redis.primary_name"] = "\(configuration.primaryName)"
        self.logger = logger
        self.state = Mutex(State(sentinels: configuration.sentinels))
    }

    // MARK: The primary

    /// The primary's address: the one known, or the sentinels' answer (callers at the same time share one question).
    /// Throws ``RedisError`` `.connectionFailed` when no sentinel answered or none knows the primary.
    public func primary() async throws -> RedisAddress {
        try await withCheckedThrowingContinuation { continuation in
            let action = state.withLock { state in
                let action = state.machine.primaryRequested()
                if case .use = action {} else { state.waiters.append(continuation) }
                return action
            }
            if case .use(let address) = action {
                continuation.resume(returning: address)
            } else {
                run(action)
            }
        }
    }

    /// The primary last named, if any (for logs and tests).
    public var knownPrimary: RedisAddress? { state.withLock { $0.machine.primary } }

    /// `address` is not the primary (it answered `READONLY`, `ROLE` named another role, or it refused a connection):
    /// close what is connected to it and ask the sentinels again.
    package func primaryFailed(_ address: RedisAddress) {
        perform { $0.primaryFailed(address) }
    }

    /// Calls `close` once `address` is not the primary any more (at once if it is not now); `forget(_:)` with the
    /// returned token when the connection closed on its own.
    package func watch(_ address: RedisAddress, close: @escaping @Sendable () -> Void) -> UInt64? {
        let id = state.withLock { state -> UInt64? in
            guard state.machine.primary == address else { return nil }
            state.nextConnectionID += 1
            state.connections[state.nextConnectionID] = (address, close)
            return state.nextConnectionID
        }
        if id == nil { close() }
        return id
    }

    package func forget(_ id: UInt64) {
        _ = state.withLock { $0.connections.removeValue(forKey: id) }
    }

    /// Runs a state machine event and carries out its action.
    private func perform(_ event: (inout StateMachine) -> StateMachine.Action) {
        run(state.withLock { event(&$0.machine) })
    }

    private func run(_ action: StateMachine.Action) {
        switch action {
        case .none, .use, .wait:
            break
        case .ask(let epoch):
            ask(epoch: epoch)
        case .switchTo(let address, let abandoned):
            let (waiters, closing) = state.withLock { state in
                defer { state.waiters = [] }
                return (state.waiters, state.removeConnections { $0 != address })
            }
            if let abandoned {
                logger.info("Redis primary switched", metadata: ["redis.primary": "\(address)", "redis.former_primary": "\(abandoned)"])
            }
            for waiter in waiters { waiter.resume(returning: address) }
            for close in closing { close() }
        case .abandon(let address, let epoch):
            logger.debug("Redis primary lost; asking the sentinels", metadata: ["redis.former_primary": "\(address)"])
            for close in state.withLock({ $0.removeConnections { $0 == address } }) { close() }
            ask(epoch: epoch)
        case .failWaiters(let error):
            let waiters = state.withLock { state in
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume(throwing: error) }
        }
    }

    // MARK: Asking the sentinels

    private func ask(epoch: Int) {
        // Unstructured: the callers waiting share it, and one cancelled caller must not abort it for the others.
        // Each sentinel is bounded by the connect and command timeouts, so it ends.
        Task {
            do throws(RedisError) {
                let address = try await askSentinels()
                perform { $0.sentinelAnswered(address, epoch: epoch) }
            } catch {
                perform { $0.sentinelsFailed(error, epoch: epoch) }
            }
        }
    }

    /// `SENTINEL get-master-addr-by-name` of each sentinel in turn until one names the primary.
    private func askSentinels() async throws(RedisError) -> RedisAddress {
        let sentinels = state.withLock { $0.sentinels }
        var failures: [String] = []
        for sentinel in sentinels {
            do {
                let connection = try await RedisConnection.connect(configuration: connectionConfiguration(sentinel), eventLoop: eventLoopGroup.any(), logger: logger)
                let reply: RedisReply
                do {
                    reply = try await connection.send(["SENTINEL", "get-master-addr-by-name", "\(configuration.primaryName)"])
                    await connection.close()
                } catch {
                    await connection.close()
                    throw error
                }
                guard let pair = reply.array, pair.count == 2, let host = pair[0].string, let port = pair[1].int else {
                    failures.append("\(sentinel) does not know it")
                    continue
                }
                // Clients ask the sentinel that answered first next time (Sentinel's client guidelines).
                state.withLock { state in
                    state.sentinels.removeAll { $0 == sentinel }
                    state.sentinels.insert(sentinel, at: 0)
                }
                return RedisAddress(host: host, port: port)
            } catch {
                failures.append("\(sentinel): \(error)")
            }
        }
        throw RedisError(.connectionFailed, "no sentinel named the primary \(configuration.primaryName): \(failures.joined(separator: "; "))")
    }

    private func connectionConfiguration(_ sentinel: RedisAddress) -> RedisConnectionConfiguration {
        RedisConnectionConfiguration(
            host: sentinel.host,
            port: sentinel.port,
            authentication: configuration.authentication,
            connectTimeout: configuration.connectTimeout,
            commandTimeout: configuration.commandTimeout
        )
    }

    // MARK: Following announcements

    /// Subscribes to `+switch-master` on one sentinel after another (the next when one goes away) until cancelled.
    /// After each subscription it asks once, since announcements made while unsubscribed are gone.
    public func run() async throws {
        state.withLock { state in
            precondition(!state.isRunning, "RedisPrimaryLocator.run() may only be called once")
            state.isRunning = true
        }
        var failures = 0
        var turn = 0
        while !Task.isCancelled {
            let sentinel = state.withLock { $0.sentinels[turn % $0.sentinels.count] }
            turn += 1
            do {
                try await followAnnouncements(of: sentinel)
                failures = 0
            } catch {
                guard !Task.isCancelled else { break }
                failures += 1
                logger.debug("no announcements from sentinel", metadata: ["redis.sentinel": "\(sentinel)", "redis.error": "\(error)"])
            }
            guard !Task.isCancelled else { break }
            try? await Task.sleep(for: configuration.backoff.delay(afterFailures: max(failures, 1)))
        }
    }

    private func followAnnouncements(of sentinel: RedisAddress) async throws {
        let connection = try await RedisConnection.connect(
            configuration: connectionConfiguration(sentinel), eventLoop: eventLoopGroup.any(), logger: logger,
            pushHandler: { message in self.announced(message) }
        )
        try await withTaskCancellationHandler {
            let confirmation = try await connection.enqueue(["SUBSCRIBE", "+switch-master"], expectedReplies: 1, errorEndsRequest: true).get()
            if let message = confirmation.first?.errorMessage { throw RedisError.server(message) }
            perform { $0.subscribed() }
            try await connection.pingUntilClosed(every: configuration.pingInterval)
        } onCancel: {
            connection.channel.close(promise: nil)
        }
        await connection.close()
    }

    /// `+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>`.
    private func announced(_ message: RedisPubSubMessage) {
        let fields = String(buffer: message.payload).split(separator: " ")
        guard fields.count == 5, fields[0] == configuration.primaryName, let port = Int(fields[4]) else { return }
        perform { $0.switchAnnounced(to: RedisAddress(host: String(fields[3]), port: port)) }
    }
}
