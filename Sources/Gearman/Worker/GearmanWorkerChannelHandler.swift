import JobgateSupport
import Logging
import NIOCore
import Synchronization

/// The worker's shared concurrency: a job holds a slot from its grab to its report.
final class GearmanWorkerSlots: Sendable {
    private struct State {
        var free: Int
        var listeners: [ObjectIdentifier: @Sendable () -> Void] = [:]
    }

    private let state: Mutex<State>

    init(count: Int) {
        state = Mutex(State(free: count))
    }

    func tryReserve() -> Bool {
        state.withLock { state in
            guard state.free > 0 else { return false }
            state.free -= 1
            return true
        }
    }

    /// Frees a slot and tells every connection, so one that waits for a slot can grab.
    func release() {
        let listeners = state.withLock { state in
            state.free += 1
            return Array(state.listeners.values)
        }
        for listener in listeners { listener() }
    }

    func addListener(_ id: ObjectIdentifier, _ listener: @escaping @Sendable () -> Void) {
        state.withLock { $0.listeners[id] = listener }
    }

    func removeListener(_ id: ObjectIdentifier) {
        _ = state.withLock { $0.listeners.removeValue(forKey: id) }
    }
}

/// Runs `GearmanWorkerStateMachine` on a worker connection.
final class GearmanWorkerChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = GearmanPacket
    typealias OutboundOut = ByteBuffer

    private var stateMachine = GearmanWorkerStateMachine<GearmanJob>()
    private var decoder: NIOSingleStepByteToMessageProcessor<GearmanMessageDecoder>
    private let server: GearmanServerAddress
    private let functions: [String]
    private let clientID: String?
    private let slots: GearmanWorkerSlots
    private let startJob: @Sendable (GearmanJob, GearmanWorkerConnection) -> Void
    private let logger: Logger
    /// Set right after creation: job tasks use it to report.
    var connection: GearmanWorkerConnection?

    init(
        server: GearmanServerAddress,
        functions: [String],
        clientID: String?,
        maximumJobSize: Int,
        slots: GearmanWorkerSlots,
        logger: Logger,
        startJob: @escaping @Sendable (GearmanJob, GearmanWorkerConnection) -> Void
    ) {
        self.server = server
        self.functions = functions
        self.clientID = clientID
        self.decoder = NIOSingleStepByteToMessageProcessor(GearmanMessageDecoder(maximumBodySize: maximumJobSize))
        self.slots = slots
        self.logger = logger
        self.startJob = startJob
    }

    func channelActive(context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 256)
        var packets: [GearmanPacket] = []
        if let clientID { packets.append(GearmanPacket(.request, .setClientID, clientID)) }
        packets += functions.map { GearmanPacket(.request, .canDo, $0) }
        for packet in packets { try? GearmanMessageEncoder.write(packet, into: &buffer) }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        slots.addListener(ObjectIdentifier(self)) { [loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)] in
            loopBound.eventLoop.execute { loopBound.value.slotMayBeFree() }
        }
        slotMayBeFree()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        slots.removeListener(ObjectIdentifier(self))
        run(stateMachine.connectionClosed(), context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.warning("worker connection failed", metadata: ["gearman.server": "\(server)", "gearman.error": "\(error)"])
        context.close(promise: nil)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        do {
            try GearmanMessageEncoder.write(unwrapOutboundIn(data), into: &buffer)
            context.write(wrapOutboundOut(buffer), promise: promise)
        } catch {
            promise?.fail(error)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try decoder.process(buffer: unwrapInboundIn(data)) { message in
                guard case .packet(let packet) = message else {
                    throw GearmanError(.unexpectedReply, "admin text on a worker connection")
                }
                received(packet, context: context)
            }
        } catch {
            errorCaught(context: context, error: error)
        }
    }

    private func received(_ packet: GearmanPacket, context: ChannelHandlerContext) {
        switch packet.type {
        case .noop:
            run(stateMachine.noopReceived(), context: context)
        case .noJob:
            run(stateMachine.noJob(), context: context)
        case .jobAssignUniq:
            let job = GearmanJob(
                handle: packet.handle,
                function: packet.string(at: 1),
                unique: packet.string(at: 2),
                payload: packet.arguments[3],
                server: server
            )
            run(stateMachine.jobAssigned(job), context: context)
        case .error:
            // Reports for a job gearmand no longer gives us (requeued after a disconnect, or cancelled).
            logger.warning(
                "gearmand refused a worker report",
                metadata: ["gearman.server": "\(server)", "gearman.error": "\(packet.string(at: 0)): \(packet.string(at: 1))"]
            )
        case .echoRes:
            break
        default:
            logger.warning("unexpected packet on a worker connection", metadata: ["gearman.packet": "\(packet)"])
        }
    }

    private func run(_ action: GearmanWorkerStateMachine<GearmanJob>.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .sendGrab:
            context.writeAndFlush(wrapOutboundOut(Self.encode(.init(.request, .grabJobUniq))), promise: nil)
        case .releaseSlotAndSleep:
            slots.release()
            context.writeAndFlush(wrapOutboundOut(Self.encode(.init(.request, .preSleep))), promise: nil)
        case .runJob(let job):
            if let connection { startJob(job, connection) }
        case .releaseSlot:
            slots.release()
        case .close:
            context.close(promise: nil)
        case .releaseSlotAndClose:
            slots.release()
            context.close(promise: nil)
        }
        slotMayBeFree()
    }

    private static func encode(_ packet: GearmanPacket) -> ByteBuffer {
        var buffer = ByteBuffer()
        try! GearmanMessageEncoder.write(packet, into: &buffer)  // fixed packets built right here
        return buffer
    }

    /// Called on the event loop whenever a slot may have been freed.
    fileprivate func slotMayBeFree() {
        guard let context, stateMachine.wantsSlot, slots.tryReserve() else { return }
        run(stateMachine.slotReserved(), context: context)
    }

    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    fileprivate func jobFinished() {
        guard let context else { return }
        run(stateMachine.jobFinished(), context: context)
    }

    fileprivate func drain() {
        guard let context else { return }
        run(stateMachine.drain(), context: context)
    }
}

/// A worker connection as seen from job tasks: report progress and results, then say the job is done.
final class GearmanWorkerConnection: Sendable {
    let channel: any Channel
    private let handler: NIOLoopBound<GearmanWorkerChannelHandler>
    /// Where the jobs it brings run with `runsHandlersOnEventLoops`.
    let executor: EventLoopTaskExecutor

    init(channel: any Channel, handler: NIOLoopBound<GearmanWorkerChannelHandler>) {
        self.channel = channel
        self.handler = handler
        self.executor = EventLoopTaskExecutor(channel.eventLoop)
    }

    func send(_ packet: GearmanPacket) async throws {
        try await channel.writeAndFlush(packet)
    }

    func jobFinished() {
        let handler = self.handler
        if channel.eventLoop.inEventLoop {
            handler.value.jobFinished()
        } else {
            channel.eventLoop.execute { handler.value.jobFinished() }
        }
    }

    func drain() {
        let handler = self.handler
        channel.eventLoop.execute { handler.value.drain() }
    }
}
