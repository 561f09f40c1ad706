import JobgateSupport
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// A reconnecting client of one gearmand.
///
/// Connects on first use and again after the connection drops. After a failed connect it backs off
/// (`reconnectBackoff`) and meanwhile fails requests at once with
/// `serverUnavailable`, so that a pool can move on to another server without waiting.
public final class GearmanClient: Sendable {
    public let address: GearmanServerAddress
    let configuration: GearmanClientConfiguration
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let state: Mutex<State>

    private enum State {
        case idle(failures: Int, retryAfter: NIODeadline, lastError: GearmanError?)
        case connecting(EventLoopFuture<GearmanConnection>)
        case connected(GearmanConnection)
        case shutDown
    }

    public init(
        address: GearmanServerAddress,
        configuration: GearmanClientConfiguration = .init(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "jobgate.gearman")
    ) {
        self.address = address
        self.configuration = configuration
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.state = Mutex(.idle(failures: 0, retryAfter: .uptimeNanoseconds(0), lastError: nil))
    }

    private enum ConnectionAction {
        case use(GearmanConnection)
        case wait(EventLoopFuture<GearmanConnection>)
        case connect(EventLoopPromise<GearmanConnection>, failures: Int)
        case fail(GearmanError)
    }

    /// Whether the server is backing off after a failed connect.
    public var isBackingOff: Bool {
        state.withLock { state in
            if case .idle(let failures, let retryAfter, _) = state { return failures > 0 && retryAfter > .now() }
            return false
        }
    }

    /// The live connection, connecting first if needed.
    public func connection() async throws(GearmanError) -> GearmanConnection {
        let action = state.withLock { state -> ConnectionAction in
            switch state {
            case .connected(let connection) where connection.isActive:
                return .use(connection)
            case .connecting(let future):
                return .wait(future)
            case .idle(_, let retryAfter, let lastError) where retryAfter > .now():
                return .fail(
                    GearmanError(.serverUnavailable, "gearmand at \(address) is unavailable (\(lastError.map { "\($0.message)" } ?? "down")); retrying later")
                )
            case .shutDown:
                return .fail(GearmanError(.shuttingDown, "client of \(address) is shut down"))
            case .idle(let failures, _, _):
                let promise = eventLoopGroup.any().makePromise(of: GearmanConnection.self)
                state = .connecting(promise.futureResult)
                return .connect(promise, failures: failures)
            case .connected:
                let promise = eventLoopGroup.any().makePromise(of: GearmanConnection.self)
                state = .connecting(promise.futureResult)
                return .connect(promise, failures: 0)
            }
        }
        switch action {
        case .use(let connection):
            return connection
        case .fail(let error):
            throw error
        case .wait(let future):
            do {
                return try await future.get()
            } catch {
                throw (error as? GearmanError) ?? GearmanError(.connectionFailed, "\(error)")
            }
        case .connect(let promise, let failures):
            do throws(GearmanError) {
                let connection = try await GearmanConnection.connect(
                    to: address,
                    configuration: configuration,
                    eventLoopGroup: eventLoopGroup,
                    logger: logger
                )
                let stillWanted = state.withLock { state -> Bool in
                    guard case .connecting = state else { return false }
                    state = .connected(connection)
                    return true
                }
                guard stillWanted else {
                    await connection.close()
                    let error = GearmanError(.shuttingDown, "client of \(address) is shut down")
                    promise.fail(error)
                    throw error
                }
                connection.closeFuture.whenComplete { [weak self] _ in self?.connectionClosed(connection) }
                promise.succeed(connection)
                return connection
            } catch {
                let delay = configuration.reconnectBackoff.delay(afterFailures: failures + 1)
                // Each attempt, at debug: whoever follows the server's state (the gateway) logs the outage once.
                logger.debug(
                    "cannot connect to gearmand",
                    metadata: ["gearman.server": "\(address)", "gearman.error": "\(error)", "gearman.retry_in": "\(delay)"]
                )
                state.withLock { state in
                    if case .connecting = state {
                        state = .idle(failures: failures + 1, retryAfter: .now() + TimeAmount(delay), lastError: error)
                    }
                }
                promise.fail(error)
                throw error
            }
        }
    }

    private func connectionClosed(_ connection: GearmanConnection) {
        state.withLock { state in
            if case .connected(let current) = state, current === connection {
                state = .idle(failures: 0, retryAfter: .uptimeNanoseconds(0), lastError: nil)
            }
        }
    }

    /// Closes the connection; later requests fail with `shuttingDown`.
    public func shutdown() async {
        let connection = state.withLock { state -> GearmanConnection? in
            defer { state = .shutDown }
            if case .connected(let connection) = state { return connection }
            return nil
        }
        await connection?.close()
    }

    // MARK: Requests through the current connection

    public func submitBackground(_ jobs: [GearmanJobRequest]) async -> [Result<String, GearmanError>] {
        do {
            return try await connection().submitBackground(jobs)
        } catch {
            return Array(repeating: .failure(error), count: jobs.count)
        }
    }

    public func submitBackground(_ job: GearmanJobRequest) async throws(GearmanError) -> String {
        try await submitBackground([job])[0].get()
    }

    public func submitForeground(_ job: GearmanJobRequest) async throws(GearmanError) -> GearmanForegroundJob {
        try await connection().submitForeground(job)
    }

    public func status(handle: String) async throws(GearmanError) -> GearmanJobStatus {
        try await connection().status(handle: handle)
    }

    public func status(handles: [String]) async throws(GearmanError) -> [GearmanJobStatus] {
        try await connection().status(handles: handles)
    }

    public func status(unique: String) async throws(GearmanError) -> GearmanJobStatus {
        try await connection().status(unique: unique)
    }

    public func status(uniques: [String]) async throws(GearmanError) -> [GearmanJobStatus] {
        try await connection().status(uniques: uniques)
    }

    public func echo(_ data: ByteBuffer = ByteBuffer(string: "ping")) async throws(GearmanError) -> ByteBuffer {
        try await connection().echo(data)
    }

    public func admin(_ command: GearmanAdminCommand) async throws(GearmanError) -> [String] {
        try await connection().admin(command)
    }
}
