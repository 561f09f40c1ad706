import NIOCore

/// Matches replies to requests in FIFO order on one connection.
///
/// ```
///   RedisConnection ── send(commands, promise) ──▶ RedisChannelHandler ── one write + flush ──▶ socket
///   promise ◀── replies, in order ── RedisReplyDecoder (hiredis) ◀── bytes ───────────────────── socket
/// ```
///
/// A request is a batch of commands answered by one promise, so a pipeline of N commands costs one
/// buffer, one flush and one promise. Any failure of the connection (drop, protocol error, reply too
/// large, timeout) fails every request in flight and closes the channel; later requests fail at once.
///
/// With a `pushHandler` (subscriber connections) `message`/`pmessage` arrays go there instead; the
/// FIFO then receives the subscription confirmations, one per channel or pattern named.
final class RedisChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private struct Request {
        let id: UInt64
        let expectedReplies: Int
        /// `nil` once cancelled: the replies are still read, then dropped.
        var promise: EventLoopPromise<[RedisReply]>?
        /// For (P)SUBSCRIBE: one error reply answers the whole command rather than one name.
        let errorEndsRequest: Bool
        let deadline: NIODeadline
    }

    private var processor: NIOSingleStepByteToMessageProcessor<RedisReplyDecoder>
    private var requests = CircularBuffer<Request>()
    /// The replies so far of the oldest request. Not kept in its `Request`: a `CircularBuffer` element cannot be
    /// changed in place, so appending through its subscript copied the whole array for every reply (quadratic in a
    /// pipeline's length: a batch of 50 creates has ~150 replies).
    private var oldestReplies: [RedisReply] = []
    private var context: ChannelHandlerContext?
    /// Set once the connection cannot carry requests any more; new ones fail with it.
    private var closedError: RedisError?
    private let pushHandler: (@Sendable (RedisPubSubMessage) -> Void)?
    private let commandTimeout: TimeAmount?
    private var timeoutTimer: Scheduled<Void>?
    private var nextID: UInt64 = 0
    private let peer: String

    init(maximumReplySize: Int, commandTimeout: TimeAmount?, peer: String, pushHandler: (@Sendable (RedisPubSubMessage) -> Void)? = nil) {
        self.processor = NIOSingleStepByteToMessageProcessor(RedisReplyDecoder(maximumReplySize: maximumReplySize))
        self.commandTimeout = commandTimeout
        self.peer = peer
        self.pushHandler = pushHandler
    }

    // MARK: Requests

    /// Writes `commands` in one flush; `promise` receives `expectedReplies` replies (error replies included).
    @discardableResult
    func send(
        _ commands: [RedisCommand],
        expectedReplies: Int? = nil,
        errorEndsRequest: Bool = false,
        promise: EventLoopPromise<[RedisReply]>
    ) -> UInt64 {
        nextID &+= 1
        let expected = expectedReplies ?? commands.count
        if let closedError {
            promise.fail(closedError)
            return nextID
        }
        guard let context else {
            promise.fail(RedisError.closed("the connection to \(peer) is not open"))
            return nextID
        }
        guard expected > 0 else {
            promise.succeed([])
            return nextID
        }
        var buffer = context.channel.allocator.buffer(capacity: commands.reduce(0) { $0 + RedisCommandEncoder.encodedSize(of: $1) })
        for command in commands {
            RedisCommandEncoder.write(command, into: &buffer)
        }
        let deadline = commandTimeout.map { context.eventLoop.now + $0 } ?? .distantFuture
        requests.append(Request(id: nextID, expectedReplies: expected, promise: promise, errorEndsRequest: errorEndsRequest, deadline: deadline))
        armTimeout(context: context)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        return nextID
    }

    /// Fails the request with `CancellationError`; its replies are skipped when they arrive.
    func cancel(_ id: UInt64) {
        guard let index = requests.firstIndex(where: { $0.id == id }), let promise = requests[index].promise else { return }
        requests[index].promise = nil
        promise.fail(CancellationError())
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        failAll(RedisError.closed("the Redis handler was removed"))
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard closedError == nil else { return }
        do {
            try processor.process(buffer: unwrapInboundIn(data)) { reply in
                replyReceived(reply, context: context)
            }
        } catch {
            failAndClose(error as? RedisError ?? RedisError(.protocolError, "\(error)"), context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let inFlight = requests.count
        failAll(RedisError.closed("connection to \(peer) closed" + (inFlight > 0 ? " with \(inFlight) requests in flight (they may or may not have run)" : "")))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAndClose(RedisError.closed("connection to \(peer) failed: \(error)"), context: context)
    }

    // MARK: Replies

    private func replyReceived(_ reply: RedisReply, context: ChannelHandlerContext) {
        guard closedError == nil else { return }
        if let pushHandler, let message = RedisPubSubMessage(reply) {
            pushHandler(message)
            return
        }
        guard let oldest = requests.first else {
            failAndClose(RedisError(.protocolError, "unexpected reply with no request in flight: \(reply)"), context: context)
            return
        }
        if oldestReplies.isEmpty { oldestReplies.reserveCapacity(oldest.expectedReplies) }
        oldestReplies.append(reply)
        if oldestReplies.count == oldest.expectedReplies || (oldest.errorEndsRequest && reply.errorMessage != nil) {
            requests.removeFirst()
            let replies = oldestReplies
            oldestReplies = []
            oldest.promise?.succeed(replies)
        }
    }

    // MARK: Failure

    private func failAndClose(_ error: RedisError, context: ChannelHandlerContext) {
        failAll(error)
        context.close(promise: nil)
    }

    private func failAll(_ error: RedisError) {
        if closedError == nil { closedError = error }
        timeoutTimer?.cancel()
        timeoutTimer = nil
        oldestReplies = []
        while let request = requests.popFirst() {
            request.promise?.fail(error)
        }
    }

    /// One timer at a time, set for the oldest request; when it fires it re-arms for the new oldest.
    private func armTimeout(context: ChannelHandlerContext) {
        guard timeoutTimer == nil, let deadline = requests.first?.deadline, deadline != .distantFuture else { return }
        timeoutTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.timeoutTimer = nil
            guard let oldest = self.requests.first else { return }
            if oldest.deadline <= context.eventLoop.now {
                self.failAndClose(RedisError(.timeout, "no reply from \(self.peer) within \((self.commandTimeout?.nanoseconds ?? 0) / 1_000_000) ms"), context: context)
            } else {
                self.armTimeout(context: context)
            }
        }
    }
}
