import Logging
import NIOCore

/// A batch of pipelined requests, written with one flush; each request's reply completes its promise.
struct MemcacheBatch: Sendable {
    var requests: [MemcacheRequest]
    var promises: [EventLoopPromise<MemcacheReply>]
}

/// Encodes request batches and matches decoded replies to them in order.
///
/// ```
///   MemcacheConnection ──MemcacheBatch──▶ [MemcacheChannelHandler] ──ByteBuffer──▶ socket
///                     ◀─promises(reply)── StateMachine ◀─MemcacheResponseDecoder◀─ socket
/// ```
/// Any stream error (bad bytes, an unexpected reply, a timeout) fails every waiting request and closes the
/// channel: with no request ids in the protocol, the next reply could not be trusted to belong to the next request.
final class MemcacheChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = MemcacheBatch
    typealias OutboundOut = ByteBuffer

    private var decoder: NIOSingleStepByteToMessageProcessor<MemcacheResponseDecoder>
    private var stateMachine: StateMachine<EventLoopPromise<MemcacheReply>>
    private var timer: Scheduled<Void>?
    private let logger: Logger

    init(configuration: MemcacheConnection.Configuration, logger: Logger = Logger(label: "jobgate.memcache")) {
        self.decoder = NIOSingleStepByteToMessageProcessor(
            MemcacheResponseDecoder(
                maximumValueSize: configuration.maximumValueSize,
                maximumLineLength: configuration.maximumLineLength
            )
        )
        self.stateMachine = StateMachine(requestTimeout: TimeAmount(configuration.requestTimeout))
        self.logger = logger
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let batch = unwrapOutboundIn(data)
        let entries = zip(batch.requests, batch.promises).map { Pending(expectation: Expectation($0), promise: $1) }
        switch stateMachine.requestsSent(entries, now: .now()) {
        case .write(let armTimeout):
            var buffer = context.channel.allocator.buffer(capacity: 0)
            for request in batch.requests { request.encode(into: &buffer) }
            context.write(wrapOutboundOut(buffer), promise: promise)
            if let armTimeout { arm(armTimeout, context: context) }
        case .fail(let error):
            for promise in batch.promises { promise.fail(error) }
            promise?.fail(error)
        }
    }

    private typealias Pending = StateMachine<EventLoopPromise<MemcacheReply>>.Pending

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        do {
            try decoder.process(buffer: buffer) { response in
                run(stateMachine.responseReceived(response, now: .now()), context: context)
            }
        } catch let error as MemcacheError {
            run(stateMachine.errorHappened(error), context: context)
        } catch {
            run(stateMachine.errorHappened(MemcacheError(.malformedResponse, "undecodable reply", underlying: error)), context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        let (promises, error) = stateMachine.connectionClosed()
        if !promises.isEmpty {
            logger.debug("memcached connection closed with requests waiting", metadata: ["memcache.pending": "\(promises.count)"])
        }
        for promise in promises { promise.fail(error) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let wrapped = error as? MemcacheError ?? MemcacheError(.connectionClosed, "connection error", underlying: error)
        run(stateMachine.errorHappened(wrapped), context: context)
    }

    // MARK: Actions

    private func run(_ action: StateMachine<EventLoopPromise<MemcacheReply>>.ResponseAction, context: ChannelHandlerContext) {
        switch action {
        case .wait, .ignore:
            break
        case .succeed(let promise, let reply):
            promise.succeed(reply)
        case .failAllAndClose(let promises, let error):
            logger.debug("closing memcached connection", metadata: ["memcache.error": "\(error)"])
            for promise in promises { promise.fail(error) }
            context.close(promise: nil)
        }
    }

    private func arm(_ deadline: NIODeadline, context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) {
            let (handler, context) = loopBound.value
            handler.timerFired(context: context)
        }
    }

    private func timerFired(context: ChannelHandlerContext) {
        timer = nil
        switch stateMachine.hitDeadline(now: .now()) {
        case .none:
            break
        case .rearm(let deadline):
            arm(deadline, context: context)
        case .failAllAndClose(let promises, let error):
            logger.debug("memcached request timed out", metadata: ["memcache.error": "\(error)"])
            for promise in promises { promise.fail(error) }
            context.close(promise: nil)
        }
    }
}
