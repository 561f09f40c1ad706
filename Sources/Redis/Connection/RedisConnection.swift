public import Logging
public import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One connection to a Redis server, with any number of requests in flight, answered in order.
///
/// An actor whose executor is the channel's event loop: a call hops to the loop once, writes its
/// commands straight into the channel handler and waits for the handler to complete a promise.
///
/// ```swift
/// let connection = try await RedisConnection.connect(configuration: .init(port: 6379))
/// try await connection.send(["SET", "job:1", .bytes(payload)])
/// let replies = try await connection.pipeline((0..<100).map { ["GET", "job:\($0)"] })
/// ```
///
/// Errors are ``RedisError`` (or `CancellationError` when the calling task is cancelled).
public actor RedisConnection {
    nonisolated public let unownedExecutor: UnownedSerialExecutor
    nonisolated let channel: any Channel
    nonisolated private let handler: NIOLoopBound<RedisChannelHandler>
    nonisolated public let configuration: RedisConnectionConfiguration
    nonisolated let logger: Logger

    private init(channel: any Channel, handler: NIOLoopBound<RedisChannelHandler>, configuration: RedisConnectionConfiguration, logger: Logger) {
        self.unownedExecutor = channel.eventLoop.executor.asUnownedSerialExecutor()
        self.channel = channel
        self.handler = handler
        self.configuration = configuration
        self.logger = logger
    }

    /// Connects, then authenticates and selects the database (both in one round trip) if configured.
    public static func connect(
        configuration: RedisConnectionConfiguration,
        eventLoop: any EventLoop = MultiThreadedEventLoopGroup.singleton.any(),
        logger: Logger = Logger(label: "jobgate.redis")
    ) async throws -> RedisConnection {
        try await connect(configuration: configuration, eventLoop: eventLoop, logger: logger, pushHandler: nil)
    }

    static func connect(
        configuration: RedisConnectionConfiguration,
        eventLoop: any EventLoop,
        logger: Logger,
        pushHandler: (@Sendable (RedisPubSubMessage) -> Void)?
    ) async throws -> RedisConnection {
        guard let locator = configuration.primaryLocator else {
            return try await connect(directlyTo: configuration, eventLoop: eventLoop, logger: logger, pushHandler: pushHandler)
        }
        let address = try await locator.primary()
        var direct = configuration
        direct.host = address.host
        direct.port = address.port
        let connection: RedisConnection
        do {
            connection = try await connect(directlyTo: direct, eventLoop: eventLoop, logger: logger, pushHandler: pushHandler)
        } catch let error as RedisError where error.code != .authenticationFailed && error.code != .serverError {
            // Refused, unreachable or not the primary: a failover may have begun, ask the sentinels again.
            locator.primaryFailed(address)
            throw error
        }
        // Closed when `address` stops being the primary, so pools and subscribers reconnect to the new one.
        guard let id = locator.watch(address, close: { [channel = connection.channel] in channel.close(promise: nil) }) else {
            await connection.close()
            throw RedisError(.notPrimary, "\(address) stopped being the primary while connecting")
        }
        connection.closeFuture.whenComplete { _ in locator.forget(id) }
        return connection
    }

    private static func connect(
        directlyTo configuration: RedisConnectionConfiguration,
        eventLoop: any EventLoop,
        logger: Logger,
        pushHandler: (@Sendable (RedisPubSubMessage) -> Void)?
    ) async throws -> RedisConnection {
        var logger = logger
        logger[metadataKey: "redis.address"] = "\(configuration.host):\(configuration.port)"
        let peer = "\(configuration.host):\(configuration.port)"
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(configuration.connectTimeout))
        let (channel, handler): (any Channel, NIOLoopBound<RedisChannelHandler>)
        let tlsContext: NIOSSLContext?
        do {
            tlsContext = try configuration.tls.map { try NIOSSLContext(configuration: $0) }
        } catch {
            throw RedisError(.connectionFailed, "TLS to \(peer) cannot be set up: \(error)")
        }
        let handshake = eventLoop.makePromise(of: Void.self)
        do {
            (channel, handler) = try await bootstrap.connect(host: configuration.host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tlsContext {
                        // An IP address is checked against the certificate's IP addresses; a name is also sent as SNI.
                        let isAddress = (try? SocketAddress(ipAddress: configuration.host, port: 0)) != nil
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(context: tlsContext, serverHostname: isAddress ? nil : configuration.host)
                        )
                        try channel.pipeline.syncOperations.addHandler(TLSHandshakeWatch(done: handshake))
                    } else {
                        handshake.succeed()
                    }
                    let handler = RedisChannelHandler(
                        maximumReplySize: configuration.maximumReplySize,
                        commandTimeout: configuration.commandTimeout.map(TimeAmount.init),
                        peer: peer,
                        pushHandler: pushHandler
                    )
                    try channel.pipeline.syncOperations.addHandler(handler)
                    return (channel, NIOLoopBound(handler, eventLoop: channel.eventLoop))
                }
            }
        } catch {
            handshake.succeed()
            throw connectError(error, peer: peer)
        }
        do {
            try await handshake.futureResult.get()
        } catch {
            try? await channel.close()
            throw RedisError(.connectionFailed, "TLS handshake with \(peer) failed: \(error)")
        }
        let connection = RedisConnection(channel: channel, handler: handler, configuration: configuration, logger: logger)
        do {
            try await connection.handshake()
        } catch {
            await connection.close()
            throw error
        }
        logger.debug("connected to Redis")
        return connection
    }

    /// `AUTH`, `SELECT` and, with a primary locator, `ROLE` (never write to a replica), in one round trip.
    private func handshake() async throws {
        var commands: [RedisCommand] = []
        if let auth = configuration.authentication {
            commands.append(auth.username.map { ["AUTH", "\($0)", "\(auth.password)"] } ?? ["AUTH", "\(auth.password)"])
        }
        if let database = configuration.database {
            commands.append(["SELECT", .init(database)])
        }
        let checksRole = configuration.primaryLocator != nil
        if checksRole { commands.append(["ROLE"]) }
        guard !commands.isEmpty else { return }
        var replies = try await execute(commands)
        if configuration.authentication != nil, let message = replies[0].errorMessage {
            throw RedisError(.authenticationFailed, message)
        }
        if checksRole {
            let reply = replies.removeLast()
            // A user whose ACL refuses ROLE (NOPERM) cannot check it here; a write to a replica still answers READONLY.
            if let message = reply.errorMessage, !message.hasPrefix("NOPERM") {
                throw RedisError(.notPrimary, "\(configuration.address) cannot say its role: \(message)")
            }
            if let role = reply.array?.first?.string, role != "master" {
                throw RedisError(.notPrimary, "\(configuration.address) is a \(role), not the primary")
            }
        }
        if let message = replies.last?.errorMessage {
            throw RedisError.server(message)
        }
    }

    // MARK: Commands

    /// Sends one command; an error reply throws ``RedisError`` with code `.serverError`.
    @discardableResult
    public func send(_ command: RedisCommand) async throws -> RedisReply {
        let reply = try await execute([command])[0]
        if let message = reply.errorMessage { throw RedisError.server(message) }
        return reply
    }

    /// Writes all `commands` with one flush and returns their replies in order. An error reply fails
    /// only its own command; a lost connection throws for the whole batch. With `ack`, a `WAIT` follows in the same
    /// write and throws `.replicasNotAcknowledged` when too few replicas took the commands in time.
    public func pipeline(_ commands: [RedisCommand], acknowledgedBy ack: RedisReplicasAck? = nil) async throws -> [Result<RedisReply, RedisError>] {
        var replies = try await execute(ack.map { commands + [$0.command] } ?? commands)
        if let ack { try ack.check(replies.removeLast()) }
        return replies.map { reply in
            reply.errorMessage.map { .failure(.server($0)) } ?? .success(reply)
        }
    }

    /// Runs `commands` between `MULTI` and `EXEC` in one write and returns `EXEC`'s replies, which hold
    /// `.error` elements for commands that failed while running (`WRONGTYPE`). Throws `.serverError`
    /// with the refused command's error when one was refused while queueing (nothing ran), or when a
    /// `WATCH`ed key changed (`EXEC` answered null). With `ack`, as ``pipeline(_:acknowledgedBy:)``.
    public func transaction(_ commands: [RedisCommand], acknowledgedBy ack: RedisReplicasAck? = nil) async throws -> [RedisReply] {
        let results = try await pipeline([["MULTI"]] + commands + [["EXEC"]], acknowledgedBy: ack)
        for case .failure(let error) in results.dropLast() where error.serverErrorPrefix != "EXECABORT" {
            // A command refused while queueing makes EXEC abort; report that command's error.
            throw error
        }
        switch try results.last!.get() {
        case .array(let replies): return replies
        case .null: throw RedisError.server("EXECABORT transaction aborted: a watched key changed")
        case let other: throw RedisError(.protocolError, "EXEC answered \(other)")
        }
    }

    /// Writes `commands` in one flush, returns every reply (error replies included).
    func execute(_ commands: [RedisCommand]) async throws -> [RedisReply] {
        try Task.checkCancellation()
        let promise = channel.eventLoop.makePromise(of: [RedisReply].self)
        let id = handler.value.send(commands, promise: promise)
        let replies = try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: { [handler] in
            handler.eventLoop.execute { handler.value.cancel(id) }
        }
        if let locator = configuration.primaryLocator, let refusal = replies.lazy.compactMap(\.errorMessage).first(where: { $0.hasPrefix("READONLY") }) {
            // The server became a replica (a failover this connection missed): nothing more goes to it.
            locator.primaryFailed(configuration.address)
            channel.close(promise: nil)
            throw RedisError(.notPrimary, refusal)
        }
        return replies
    }

    /// ``pipeline(_:)`` for code that runs on event loops: no hop through Swift concurrency. The future completes
    /// on the connection's event loop with every reply (error replies as `RedisReply` values), and fails when the
    /// connection is lost.
    public nonisolated func pipelineFuture(_ commands: [RedisCommand]) -> EventLoopFuture<[RedisReply]> {
        let promise = channel.eventLoop.makePromise(of: [RedisReply].self)
        if channel.eventLoop.inEventLoop {
            _ = handler.value.send(commands, promise: promise)
        } else {
            channel.eventLoop.execute { [handler] in _ = handler.value.send(commands, promise: promise) }
        }
        return promise.futureResult
    }

    /// The event loop the connection runs on.
    public nonisolated var eventLoop: any EventLoop { channel.eventLoop }

    /// Queues a write from any thread; writes run in the order of these calls. Subscribers use it to
    /// keep (un)subscriptions in the order their state changed.
    nonisolated func enqueue(_ command: RedisCommand, expectedReplies: Int, errorEndsRequest: Bool) -> EventLoopFuture<[RedisReply]> {
        let promise = channel.eventLoop.makePromise(of: [RedisReply].self)
        channel.eventLoop.execute { [handler] in
            handler.value.send([command], expectedReplies: expectedReplies, errorEndsRequest: errorEndsRequest, promise: promise)
        }
        return promise.futureResult
    }

    // MARK: Lifecycle

    /// Closes the connection; requests in flight fail with `.connectionClosed`.
    public nonisolated func close() async {
        try? await channel.close()
    }

    /// Starts closing the connection without waiting for it: for code on an event loop that cannot wait.
    public nonisolated func startClosing() {
        channel.close(promise: nil)
    }

    /// False once the connection was closed or lost.
    public nonisolated var isConnected: Bool { channel.isActive }

    /// Completes when the connection is closed or lost.
    nonisolated var closeFuture: EventLoopFuture<Void> { channel.closeFuture }

    /// Returns when the connection closes, and throws when a `PING` sent every `interval` fails: a subscribed
    /// connection sends nothing else, so this is how a peer that went away without a word is noticed.
    nonisolated func pingUntilClosed(every interval: Duration) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.closeFuture.get() }
            group.addTask {
                while true {
                    try await Task.sleep(for: interval)
                    _ = try await self.enqueue(["PING"], expectedReplies: 1, errorEndsRequest: true).get()
                }
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }
}

/// Completes `done` when the TLS handshake succeeds or fails (before any command is sent), so that a certificate
/// problem is a connect error that says so, not a closed connection.
private final class TLSHandshakeWatch: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let done: EventLoopPromise<Void>

    init(done: EventLoopPromise<Void>) {
        self.done = done
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent {
            done.succeed()
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        done.fail(error)
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        done.fail(RedisError.closed("closed during the TLS handshake"))
        context.fireChannelInactive()
    }
}

/// Maps NIO's connect errors to ``RedisError``.
private func connectError(_ error: any Error, peer: String) -> RedisError {
    if let error = error as? NIOConnectionError {
        let errors = error.connectionErrors.map(\.error)
        if !errors.isEmpty, errors.allSatisfy({ ($0 as? IOError)?.errnoCode == ECONNREFUSED }) {
            return RedisError(.connectionRefused, "connection to \(peer) refused")
        }
        if errors.contains(where: isConnectTimeout) {
            return RedisError(.timeout, "connecting to \(peer) timed out")
        }
        return RedisError(.connectionFailed, "could not connect to \(peer): \(errors.isEmpty ? "\(error)" : "\(errors)")")
    }
    if let error = error as? IOError, error.errnoCode == ECONNREFUSED {
        return RedisError(.connectionRefused, "connection to \(peer) refused")
    }
    if isConnectTimeout(error) {
        return RedisError(.timeout, "connecting to \(peer) timed out")
    }
    return RedisError(.connectionFailed, "could not connect to \(peer): \(error)")
}

private func isConnectTimeout(_ error: any Error) -> Bool {
    if case ChannelError.connectTimeout = error { return true }
    return false
}
