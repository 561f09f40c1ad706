public import JobgateSupport
public import Logging
import NIOCore
public import NIOPosix
import Synchronization

/// A dedicated pub/sub connection that stays subscribed: it reconnects with backoff after the server
/// goes away and subscribes to every channel again.
///
/// ```swift
/// let subscriber = RedisSubscriber(configuration: config, channels: ["__keyevent@0__:hset"])
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { try await subscriber.run() }
///     for await event in subscriber.events {
///         switch event {
///         case .message(let message): handle(message)
///         case .subscribed, .messagesDropped: reconcile()   // messages may have been lost: re-read state
///         }
///     }
/// }
/// ```
///
/// `.subscribed` is emitted only after the server confirmed every subscription on the new connection,
/// so state read after it cannot miss a later change (subscribe, then read). Nothing is replayed: see
/// ``RedisSubscriberEvent``. RESP2 allows no other commands on this connection; use a
/// ``RedisConnection`` or ``RedisConnectionPool`` for them.
public final class RedisSubscriber: Sendable {
    public let configuration: RedisConnectionConfiguration
    public let backoff: Backoff
    /// Interval of `PING`s that detect a silently dead connection (answered within `commandTimeout`).
    public let pingInterval: Duration
    /// The events; one consumer. Ends when `run()` returns.
    public let events: RedisSubscriberEvents
    private let buffer: RedisEventBuffer
    private let eventLoop: any EventLoop
    private let logger: Logger

    private struct State {
        var channels: Set<String>
        var connection: RedisConnection?
        var isRunning = false
        var messageHandler: (@Sendable (RedisPubSubMessage) -> Void)?
        var linkHandler: (@Sendable (RedisSubscriberLink) -> Void)?
    }
    private let state: Mutex<State>

    /// - Parameters:
    ///   - channels: exact channels (`SUBSCRIBE`), e.g. `__keyevent@0__:hset`; never patterns, which cost the
    ///     server work on every publish and notification.
    ///   - bufferCapacity: events held for a slow consumer before messages are dropped (and counted).
    public init(
        configuration: RedisConnectionConfiguration,
        channels: Set<String> = [],
        bufferCapacity: Int = 10_000,
        backoff: Backoff = Backoff(initial: .milliseconds(50), maximum: .seconds(5)),
        pingInterval: Duration = .seconds(15),
        eventLoop: any EventLoop = MultiThreadedEventLoopGroup.singleton.any(),
        logger: Logger = Logger(label: "jobgate.redis.subscriber")
    ) {
        self.configuration = configuration
        self.backoff = backoff
        self.pingInterval = pingInterval
        self.buffer = RedisEventBuffer(capacity: bufferCapacity)
        self.events = RedisSubscriberEvents(buffer: buffer)
        self.eventLoop = eventLoop
        var logger = logger
        logger[metadataKey: "redis.address"] = "\(configuration.serverDescription)"
        self.logger = logger
        self.state = Mutex(State(channels: channels))
    }

    /// Hands each message to `handler`, on the subscriber's event loop as it is decoded, instead of queueing it in
    /// ``events`` (which still carries `.subscribed`): for a consumer that reacts on the event loop, with no hop
    /// through Swift concurrency. Call it before `run()`.
    public func onMessage(_ handler: @escaping @Sendable (RedisPubSubMessage) -> Void) {
        state.withLock { $0.messageHandler = handler }
    }

    /// Tells `handler` when a connection's subscriptions are confirmed and when a connection is lost or cannot be
    /// made, as it happens (not through ``events``, which a busy consumer may read late). Call it before `run()`.
    public func onLinkChange(_ handler: @escaping @Sendable (RedisSubscriberLink) -> Void) {
        state.withLock { $0.linkHandler = handler }
    }

    private func report(_ link: RedisSubscriberLink) {
        state.withLock { $0.linkHandler }?(link)
    }

    /// The event loop the subscriber's connections run on.
    public var subscriberEventLoop: any EventLoop { eventLoop }

    /// Events waiting in the buffer (at most `bufferCapacity + 1`).
    package var bufferedEventCount: Int { buffer.count }

    /// Whether a connection is up (its subscriptions may still be unconfirmed).
    package var hasConnection: Bool { state.withLock { $0.connection != nil } }

    // MARK: Run loop

    /// Connects, subscribes and keeps the subscriptions alive until the task is cancelled, then
    /// closes the connection, ends ``events`` and returns. Connection failures are retried with
    /// backoff; a refused `AUTH` or a refused subscription (ACL) throws, since retrying cannot fix it.
    public func run() async throws {
        state.withLock { state in
            precondition(!state.isRunning, "RedisSubscriber.run() may only be called once")
            state.isRunning = true
        }
        defer { buffer.finish() }
        var attempt = 0
        var hasSubscribed = false
        while !Task.isCancelled {
            do {
                try await runConnection(isReconnect: hasSubscribed)
                hasSubscribed = true
                attempt = 0
                if !Task.isCancelled {
                    logger.debug("Redis subscriber connection lost; reconnecting")
                    report(.lost(RedisError.closed("connection lost")))
                }
            } catch let error as RedisError where error.code == .authenticationFailed || error.code == .serverError {
                logger.error("Redis subscriber stopped", metadata: ["redis.error": "\(error)"])
                report(.lost(error))
                throw error
            } catch {
                guard !Task.isCancelled else { break }
                attempt += 1
                // Whoever follows the link (`onLinkChange`) logs the outage once; each failed attempt is detail.
                logger.debug("Redis subscriber could not connect", metadata: ["redis.error": "\(error)", "redis.attempt": "\(attempt)"])
                report(.lost(error))
            }
            guard !Task.isCancelled else { break }
            // Immediately after a working connection dropped, then slower and slower while it fails.
            if attempt > 0 {
                try? await Task.sleep(for: backoff.delay(afterFailures: attempt))
            }
        }
    }

    /// One connection's life: subscribe everything, emit `.subscribed`, ping until it ends.
    private func runConnection(isReconnect: Bool) async throws {
        let buffer = self.buffer
        let messageHandler = state.withLock { $0.messageHandler }
        let connection = try await RedisConnection.connect(
            configuration: configuration, eventLoop: eventLoop, logger: logger,
            pushHandler: messageHandler ?? { message in buffer.yield(.message(message)) }
        )
        defer {
            state.withLock { state in
                if state.connection === connection { state.connection = nil }
            }
        }
        try await withTaskCancellationHandler {
            // Publish the connection and snapshot the subscriptions in one step, so that a concurrent
            // subscribe(to:) either is in the snapshot or sends its own command on this connection.
            let confirmation = state.withLock { state in
                state.connection = connection
                return Self.command("SUBSCRIBE", state.channels, on: connection)
            }
            if let confirmation {
                try Self.check(try await confirmation.get())
            }
            // Reported before the event is queued, so a consumer of the event already sees the new link.
            report(.subscribed(isReconnect: isReconnect))
            buffer.yield(.subscribed(isReconnect: isReconnect))
            logger.debug("Redis subscriber subscribed", metadata: ["redis.reconnect": "\(isReconnect)"])

            try await connection.pingUntilClosed(every: pingInterval)
        } onCancel: {
            connection.channel.close(promise: nil)
        }
        await connection.close()
    }

    // MARK: Changing subscriptions

    /// Adds channels. Returns once the server confirmed them, or at once while disconnected (the next
    /// `.subscribed` event covers them then).
    public func subscribe(to channels: [String]) async throws {
        try await change(channels, command: "SUBSCRIBE") { $0.channels.formUnion(channels) } undo: { $0.channels.subtract(channels) }
    }

    /// Removes channels; messages already on their way may still arrive.
    public func unsubscribe(from channels: [String]) async throws {
        try await change(channels, command: "UNSUBSCRIBE") { $0.channels.subtract(channels) } undo: { _ in }
    }

    private func change(
        _ names: [String],
        command: String,
        apply: (inout State) -> Void,
        undo: (inout State) -> Void
    ) async throws {
        guard !names.isEmpty else { return }
        // Under the lock, so commands reach the connection in the order the state changed.
        let confirmation = state.withLock { state in
            apply(&state)
            return state.connection.flatMap { Self.command(command, Set(names), on: $0) }
        }
        guard let confirmation else { return }
        do {
            try Self.check(try await confirmation.get())
        } catch let error as RedisError where error.code == .serverError {
            state.withLock { undo(&$0) }
            throw error
        } catch is RedisError {
            return  // the connection dropped: the resubscription after reconnecting includes the change
        }
    }

    private static func command(_ name: String, _ names: Set<String>, on connection: RedisConnection) -> EventLoopFuture<[RedisReply]>? {
        guard !names.isEmpty else { return nil }
        let command = RedisCommand(name, names.sorted().map { RedisArgument($0) })
        // Redis confirms each name separately, or refuses the whole command with one error.
        return connection.enqueue(command, expectedReplies: names.count, errorEndsRequest: true)
    }

    private static func check(_ confirmations: [RedisReply]) throws {
        for reply in confirmations {
            if let message = reply.errorMessage { throw RedisError.server(message) }
        }
    }
}

/// The state of a ``RedisSubscriber``'s connection, as reported to ``RedisSubscriber/onLinkChange(_:)``.
public enum RedisSubscriberLink: Sendable {
    /// A connection is up and the server confirmed every subscription on it.
    case subscribed(isReconnect: Bool)
    /// The connection was lost, or a connection attempt failed (reported again on each failed attempt).
    case lost(any Error)
}
