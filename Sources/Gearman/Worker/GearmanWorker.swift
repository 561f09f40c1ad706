import JobgateSupport
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// A job handed to this worker by JOB_ASSIGN_UNIQ.
public struct GearmanJob: Sendable, Hashable {
    public let handle: String
    public let function: String
    /// The submitter's unique key: the durable identity of a job (handles restart at 1 with gearmand).
    public let unique: String
    public let payload: ByteBuffer
    public let server: GearmanServerAddress
}

/// How a job ended, as reported to gearmand.
public enum GearmanJobOutcome: Sendable, Hashable {
    /// WORK_COMPLETE with the result.
    case complete(ByteBuffer)
    /// WORK_FAIL: gearmand drops a background job without retrying it.
    case fail
    /// WORK_EXCEPTION: like WORK_FAIL, with data for foreground clients that asked for exceptions.
    case exception(ByteBuffer)
}

/// Sends a running job's WORK_STATUS, WORK_DATA and WORK_WARNING to the gearmand that assigned it.
public struct GearmanJobReporter: Sendable {
    let connection: GearmanWorkerConnection
    let handle: String

    /// WORK_STATUS: gearmand keeps it for GET_STATUS.
    public func status(numerator: UInt32, denominator: UInt32) async throws {
        try await connection.send(GearmanPacket(.request, .workStatus, handle, String(numerator), String(denominator)))
    }

    public func data(_ data: ByteBuffer) async throws {
        try await connection.send(GearmanPacket(magic: .request, type: .workData, arguments: [ByteBuffer(string: handle), data]))
    }

    public func warning(_ data: ByteBuffer) async throws {
        try await connection.send(GearmanPacket(magic: .request, type: .workWarning, arguments: [ByteBuffer(string: handle), data]))
    }

    func report(_ outcome: GearmanJobOutcome) async throws {
        let handle = ByteBuffer(string: handle)
        let packet =
            switch outcome {
            case .complete(let result): GearmanPacket(magic: .request, type: .workComplete, arguments: [handle, result])
            case .fail: GearmanPacket(magic: .request, type: .workFail, arguments: [handle])
            case .exception(let data): GearmanPacket(magic: .request, type: .workException, arguments: [handle, data])
            }
        try await connection.send(packet)
    }
}

public typealias GearmanJobHandler = @Sendable (GearmanJob, GearmanJobReporter) async -> GearmanJobOutcome

public struct GearmanWorkerConfiguration: Sendable {
    /// Jobs run at once across all servers.
    public var concurrency: Int = 1
    /// Shown by gearmand's `workers` listing.
    public var clientID: String?
    /// Largest JOB_ASSIGN_UNIQ accepted. A larger job cannot be read, so the connection closes and gearmand
    /// requeues the job: keep this above the submitters' payload limit.
    public var maximumJobSize: Int = 256 << 20
    public var connectTimeout: TimeAmount = .seconds(3)
    /// The waits between attempts to reach a server that is down.
    public var reconnectBackoff = Backoff(initial: .milliseconds(100), maximum: .seconds(5))
    /// Run each handler on the event loop of the connection that brought its job, not on the cooperative pool: its
    /// report, and its requests on connections of that loop, then wake no other thread. Only for handlers that
    /// wait rather than compute (a long computation would hold up every connection of the loop); `JobWorker` sets it
    /// and moves Swift handlers to the pool itself.
    public var runsHandlersOnEventLoops = false

    public init() {}
}

/// A Gearman worker: registers its functions on every server, runs up to `concurrency` jobs at once and
/// reports each outcome to the server that assigned the job.
///
/// A long-lived `Service`: `run()` returns after a graceful shutdown, once the running jobs have reported
/// (no new job is taken meanwhile). Connections that drop are made again with backoff; gearmand requeues
/// the jobs that were running on them.
public final class GearmanWorker: Service {
    private let servers: [GearmanServerAddress]
    private let handlers: [String: GearmanJobHandler]
    private let configuration: GearmanWorkerConfiguration
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let slots: GearmanWorkerSlots
    private let state = Mutex(State())

    private struct State {
        var draining = false
        var connections: [ObjectIdentifier: GearmanWorkerConnection] = [:]
    }

    public init(
        servers: [GearmanServerAddress],
        handlers: [String: GearmanJobHandler],
        configuration: GearmanWorkerConfiguration = .init(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "jobgate.gearman.worker")
    ) throws(GearmanError) {
        guard !servers.isEmpty else { throw GearmanError(.invalidArgument, "a worker needs at least one gearmand server") }
        guard !handlers.isEmpty else { throw GearmanError(.invalidArgument, "a worker needs at least one function") }
        guard configuration.concurrency >= 1 else { throw GearmanError(.invalidArgument, "concurrency must be at least 1") }
        for function in handlers.keys { try GearmanValidation.function(function) }
        self.servers = servers
        self.handlers = handlers
        self.configuration = configuration
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.slots = GearmanWorkerSlots(count: configuration.concurrency)
    }

    public func run() async throws {
        let (assignments, deliver) = AsyncStream<(GearmanJob, GearmanWorkerConnection)>.makeStream()
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    await withDiscardingTaskGroup { servers in
                        for server in self.servers {
                            servers.addTask { await self.maintainConnection(to: server, deliver: deliver) }
                        }
                    }
                    deliver.finish()
                }
                for await (job, connection) in assignments {
                    let executor = self.configuration.runsHandlersOnEventLoops ? connection.executor : nil
                    group.addTask(executorPreference: executor) { await self.execute(job, on: connection) }
                }
            }
        } onGracefulShutdown: {
            self.drain()
        }
    }

    /// Take no new jobs; `run()` returns once the running ones have reported.
    public func drain() {
        let connections = state.withLock { state in
            state.draining = true
            return Array(state.connections.values)
        }
        for connection in connections { connection.drain() }
    }

    private var isDraining: Bool { state.withLock { $0.draining } }

    private func execute(_ job: GearmanJob, on connection: GearmanWorkerConnection) async {
        let reporter = GearmanJobReporter(connection: connection, handle: job.handle)
        let outcome: GearmanJobOutcome
        if let handler = handlers[job.function] {
            outcome = await handler(job, reporter)
        } else {
            outcome = .exception(ByteBuffer(string: "no handler for function \(job.function)"))
        }
        do {
            try await reporter.report(outcome)
        } catch {
            // gearmand requeues the job when the connection dropped; nothing more to do here.
            logger.warning(
                "could not report a job outcome",
                metadata: ["gearman.handle": "\(job.handle)", "gearman.server": "\(job.server)", "gearman.error": "\(error)"]
            )
        }
        slots.release()
        connection.jobFinished()
    }

    private func maintainConnection(
        to server: GearmanServerAddress,
        deliver: AsyncStream<(GearmanJob, GearmanWorkerConnection)>.Continuation
    ) async {
        var failures = 0
        // When this server's outage began: loss is logged once at warning, the end at notice with its length.
        var downSince: ContinuousClock.Instant?
        while !isDraining {
            do {
                let channel = try await connect(to: server, deliver: deliver)
                failures = 0
                if let since = downSince {
                    downSince = nil
                    logger.notice(
                        "gearmand reachable again",
                        metadata: ["gearman.server": "\(server)", "gearman.outage_ms": "\(GearmanWorker.milliseconds(ContinuousClock.now - since))"]
                    )
                }
                try? await channel.closeFuture.get()
                state.withLock { _ = $0.connections.removeValue(forKey: ObjectIdentifier(channel)) }
                if !isDraining {
                    downSince = .now
                    logger.warning("gearmand unreachable", metadata: ["gearman.server": "\(server)", "gearman.error": "connection closed"])
                }
            } catch {
                failures += 1
                if downSince == nil {
                    downSince = .now
                    logger.warning("gearmand unreachable", metadata: ["gearman.server": "\(server)", "gearman.error": "\(error)"])
                } else {
                    logger.debug("worker cannot connect to gearmand", metadata: ["gearman.server": "\(server)", "gearman.error": "\(error)"])
                }
            }
            guard !isDraining else { break }
            let delay = configuration.reconnectBackoff.delay(afterFailures: failures)
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: delay) }
        }
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    }

    private func connect(
        to server: GearmanServerAddress,
        deliver: AsyncStream<(GearmanJob, GearmanWorkerConnection)>.Continuation
    ) async throws -> any Channel {
        let functions = handlers.keys.sorted()
        return try await ClientBootstrap(group: eventLoopGroup)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [configuration, slots, logger] channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = GearmanWorkerChannelHandler(
                        server: server,
                        functions: functions,
                        clientID: configuration.clientID,
                        maximumJobSize: configuration.maximumJobSize,
                        slots: slots,
                        logger: logger
                    ) { job, connection in deliver.yield((job, connection)) }
                    let connection = GearmanWorkerConnection(channel: channel, handler: NIOLoopBound(handler, eventLoop: channel.eventLoop))
                    handler.connection = connection
                    try channel.pipeline.syncOperations.addHandler(handler)
                    self.register(connection)
                }
            }
            .connect(host: server.host, port: server.port)
            .get()
    }

    private func register(_ connection: GearmanWorkerConnection) {
        let draining = state.withLock { state in
            state.connections[ObjectIdentifier(connection.channel)] = connection
            return state.draining
        }
        if draining { connection.drain() }
    }
}
