import Logging
import NIOCore

/// One request of a batch: the message to send and, unless it is fire-and-forget, the reply it waits for.
struct GearmanClientRequest: Sendable {
    var message: GearmanMessage
    var expectation: GearmanExpectation?
    /// Receives the WORK_* events of a foreground job.
    var sink: GearmanJobEventSink?
}

typealias GearmanJobEventSink = AsyncThrowingStream<GearmanJobEvent, any Error>.Continuation

/// Requests written together with one flush; one promise gets every reply, so a burst costs one hop.
struct GearmanClientBatch: Sendable {
    var requests: [GearmanClientRequest]
    var promise: EventLoopPromise<[Result<GearmanReply, GearmanError>]>
}

/// Collects the replies of one batch on the event loop and fulfils its promise when the last one arrives.
private final class GearmanBatchCollector {
    private var results: [Result<GearmanReply, GearmanError>?]
    private var missing: Int
    private let promise: EventLoopPromise<[Result<GearmanReply, GearmanError>]>

    init(count: Int, promise: EventLoopPromise<[Result<GearmanReply, GearmanError>]>) {
        self.results = Array(repeating: nil, count: count)
        self.missing = count
        self.promise = promise
    }

    func complete(_ index: Int, _ result: Result<GearmanReply, GearmanError>) {
        guard results[index] == nil else { return }
        results[index] = result
        missing -= 1
        if missing == 0 { promise.succeed(results.map { $0! }) }
    }
}

/// Where one reply goes: an entry of a batch.
private struct GearmanReplySlot {
    let collector: GearmanBatchCollector
    let index: Int

    func complete(_ result: Result<GearmanReply, GearmanError>) { collector.complete(index, result) }
}

/// Runs `GearmanClientStateMachine` on the channel: decodes, encodes, enforces the request timeout.
final class GearmanClientChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = GearmanClientBatch
    typealias OutboundOut = ByteBuffer

    private var stateMachine = GearmanClientStateMachine<GearmanReplySlot, GearmanJobEventSink>()
    private var decoder: NIOSingleStepByteToMessageProcessor<GearmanMessageDecoder>
    private let requestTimeout: TimeAmount
    private var deadlineTimer: Scheduled<Void>?
    private var logger: Logger
    private var context: ChannelHandlerContext?

    init(maximumBodySize: Int, requestTimeout: TimeAmount, logger: Logger) {
        self.decoder = NIOSingleStepByteToMessageProcessor(GearmanMessageDecoder(maximumBodySize: maximumBodySize))
        self.requestTimeout = requestTimeout
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        fail(GearmanError(.connectionClosed, "connection to gearmand closed"), context: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(GearmanError(.connectionClosed, "connection to gearmand closed"), context: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let gearmanError = (error as? GearmanError) ?? GearmanError(.connectionClosed, "connection to gearmand failed: \(error)")
        fail(gearmanError, context: context)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let batch = unwrapOutboundIn(data)
        let collector = GearmanBatchCollector(count: batch.requests.count, promise: batch.promise)
        var buffer = context.channel.allocator.buffer(capacity: 0)
        let deadline = NIODeadline.now() + requestTimeout
        for (index, request) in batch.requests.enumerated() {
            let slot = GearmanReplySlot(collector: collector, index: index)
            // Encode before queueing: a request that cannot be encoded fails alone and never waits for a reply.
            let mark = buffer.writerIndex
            do {
                switch request.message {
                case .packet(let packet): try GearmanMessageEncoder.write(packet, into: &buffer)
                case .text: try GearmanMessageEncoder().encode(data: request.message, out: &buffer)
                }
            } catch {
                buffer.moveWriterIndex(to: mark)
                let failure = GearmanError(.invalidArgument, "could not encode \(request.message): \(error)")
                slot.complete(.failure(failure))
                request.sink?.finish(throwing: failure)
                continue
            }
            switch stateMachine.send(request.expectation, promise: slot, sink: request.sink, deadline: deadline) {
            case .write:
                if request.expectation == nil { slot.complete(.success(.admin([]))) }
            case .fail(let error):
                buffer.moveWriterIndex(to: mark)
                slot.complete(.failure(error))
                request.sink?.finish(throwing: error)
            }
        }
        if buffer.readableBytes > 0 {
            // From here on the state machine owns every request and fails them if the socket write fails.
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
        promise?.succeed()
        scheduleDeadline(context: context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try decoder.process(buffer: unwrapInboundIn(data)) { message in
                let action: GearmanClientStateMachine<GearmanReplySlot, GearmanJobEventSink>.ReceiveAction =
                    switch message {
                    case .packet(let packet): stateMachine.packetReceived(packet)
                    case .text(let line): stateMachine.textReceived(line)
                    }
                run(action, context: context)
            }
        } catch {
            fail(GearmanError(.protocolError, "\(error)"), context: context)
        }
    }

    private func run(_ action: GearmanClientStateMachine<GearmanReplySlot, GearmanJobEventSink>.ReceiveAction, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .succeed(let slot, let reply):
            slot.complete(.success(reply))
            scheduleDeadline(context: context)
        case .fail(let slot, let error):
            slot.complete(.failure(error))
            scheduleDeadline(context: context)
        case .deliver(let sinks, let event):
            for sink in sinks {
                sink.yield(event)
                if event.isTerminal { sink.finish() }
            }
        case .failAllAndClose(let slots, let sinks, let error):
            logger.warning("closing gearmand connection", metadata: ["gearman.error": "\(error)"])
            finish(slots, sinks, error)
            context.close(promise: nil)
        }
    }

    private func fail(_ error: GearmanError, context: ChannelHandlerContext?) {
        deadlineTimer?.cancel()
        deadlineTimer = nil
        let (slots, sinks) = stateMachine.close(error)
        finish(slots, sinks, error)
        context?.close(promise: nil)
    }

    private func finish(_ slots: [GearmanReplySlot], _ sinks: [GearmanJobEventSink], _ error: GearmanError) {
        for slot in slots { slot.complete(.failure(error)) }
        for sink in sinks { sink.finish(throwing: error) }
    }

    /// Keeps one timer armed at the oldest request's deadline.
    private func scheduleDeadline(context: ChannelHandlerContext) {
        guard let deadline = stateMachine.nextDeadline else {
            deadlineTimer?.cancel()
            deadlineTimer = nil
            return
        }
        guard deadlineTimer == nil else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        deadlineTimer = context.eventLoop.scheduleTask(deadline: deadline) {
            loopBound.value.deadlineFired()
        }
    }

    private func deadlineFired() {
        deadlineTimer = nil
        guard let context else { return }
        switch stateMachine.hitDeadline(now: .now()) {
        case .none:
            break
        case .reschedule:
            scheduleDeadline(context: context)
        case .failAllAndClose:
            fail(GearmanError(.timeout, "gearmand did not answer within \(requestTimeout)"), context: context)
        }
    }
}
