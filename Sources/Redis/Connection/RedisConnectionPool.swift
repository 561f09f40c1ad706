public import JobgateSupport
public import Logging
public import NIOCore
public import NIOPosix
import Synchronization

/// A fixed number of connections to one server, used round robin and (re)connected on demand.
///
/// A slot whose connection failed waits out a growing backoff before it is tried again; meanwhile
/// requests go to the other slots, and when no slot has a connection they fail at once with the
/// last connection error instead of waiting. Commands that depend on connection state (`WATCH`,
/// `SELECT`, blocking reads) belong on a dedicated ``RedisConnection``.
public final class RedisConnectionPool: Sendable {
    public let configuration: RedisConnectionConfiguration
    public let size: Int
    public let backoff: Backoff
    /// The slots' loops, in turn: slot `i` connects on `eventLoops[i % count]`, so that every loop has connections.
    private let eventLoops: [any EventLoop]
    private let logger: Logger

    private enum Slot {
        case idle(failures: Int, retryAt: ContinuousClock.Instant, lastError: (any Error)?)
        case connecting(Task<RedisConnection, any Error>)
        case connected(RedisConnection)
    }

    private struct State {
        var slots: [Slot]
        var next = 0
        var isClosed = false
    }

    private let state: Mutex<State>

    public init(
        configuration: RedisConnectionConfiguration,
        size: Int = 4,
        backoff: Backoff = Backoff(initial: .milliseconds(50), maximum: .seconds(5)),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "jobgate.redis.pool")
    ) {
        precondition(size > 0, "a pool needs at least one connection")
        self.configuration = configuration
        self.size = size
        self.backoff = backoff
        self.eventLoops = Array(eventLoopGroup.makeIterator())
        self.logger = logger
        self.state = Mutex(State(slots: Array(repeating: .idle(failures: 0, retryAt: .now, lastError: nil), count: size)))
    }

    // MARK: Commands

    /// ``RedisConnection/send(_:)`` on the next connection.
    @discardableResult
    public func send(_ command: RedisCommand) async throws -> RedisReply {
        try await connection().send(command)
    }

    /// ``RedisConnection/pipeline(_:acknowledgedBy:)`` on the next connection: one write, replies in order.
    public func pipeline(_ commands: [RedisCommand], acknowledgedBy ack: RedisReplicasAck? = nil) async throws -> [Result<RedisReply, RedisError>] {
        try await connection().pipeline(commands, acknowledgedBy: ack)
    }

    /// ``RedisConnection/transaction(_:acknowledgedBy:)`` on the next connection.
    public func transaction(_ commands: [RedisCommand], acknowledgedBy ack: RedisReplicasAck? = nil) async throws -> [RedisReply] {
        try await connection().transaction(commands, acknowledgedBy: ack)
    }

    // MARK: Connections

    private enum Pick {
        case use(RedisConnection)
        case wait(Task<RedisConnection, any Error>)
        case fail(any Error)
    }

    /// The next live connection, round robin; starts reconnecting every dead slot whose backoff ended.
    public func connection() async throws -> RedisConnection {
        switch pick() {
        case .use(let connection): return connection
        case .wait(let task): return try await task.value
        case .fail(let error): throw error
        }
    }

    /// A live connection if there is one now, without waiting for one to connect: for work that may as well not
    /// happen when Redis is away (a cleanup that a sweep does too).
    public func connectedConnection() -> RedisConnection? {
        guard case .use(let connection) = pick() else { return nil }
        return connection
    }

    private func pick() -> Pick {
        state.withLock { state -> Pick in
            guard !state.isClosed else { return .fail(RedisError.closed("the connection pool is closed")) }
            var live: RedisConnection?
            var isLocal = false
            var pending: Task<RedisConnection, any Error>?
            var lastError: (any Error)?
            let now = ContinuousClock.now
            for offset in 0..<size {
                let index = (state.next + offset) % size
                if case .connected(let connection) = state.slots[index], !connection.isConnected {
                    state.slots[index] = .idle(failures: 0, retryAt: now, lastError: RedisError.closed("connection lost"))
                }
                switch state.slots[index] {
                case .connected(let connection):
                    // A caller on an event loop (a batcher's drainer) gets that loop's connection if it has one: its
                    // request and reply then stay on the thread, with no wakeup of another.
                    if live == nil || (!isLocal && connection.eventLoop.inEventLoop) {
                        isLocal = connection.eventLoop.inEventLoop
                        live = connection
                        state.next = index + 1
                    }
                case .connecting(let task):
                    pending = pending ?? task
                case .idle(let failures, let retryAt, let error):
                    lastError = lastError ?? error
                    if retryAt <= now {
                        let task = startConnecting(slot: index, failures: failures)
                        state.slots[index] = .connecting(task)
                        pending = pending ?? task
                    }
                }
            }
            if let live { return .use(live) }
            if let pending { return .wait(pending) }
            return .fail(lastError ?? RedisError.closed("no Redis connection available"))
        }
    }

    private func startConnecting(slot index: Int, failures: Int) -> Task<RedisConnection, any Error> {
        // An unstructured task so that concurrent callers share one attempt and a cancelled caller
        // does not abort it for the others.
        Task {
            do {
                let connection = try await RedisConnection.connect(
                    configuration: configuration, eventLoop: eventLoops[index % eventLoops.count], logger: logger
                )
                let keep = state.withLock { state in
                    guard !state.isClosed else { return false }
                    state.slots[index] = .connected(connection)
                    return true
                }
                guard keep else {
                    await connection.close()
                    throw RedisError.closed("the connection pool is closed")
                }
                return connection
            } catch {
                let delay = backoff.delay(afterFailures: failures + 1)
                state.withLock { state in
                    state.slots[index] = .idle(failures: failures + 1, retryAt: .now + delay, lastError: error)
                }
                // Debug: every slot retries on its own, and the callers say what an outage means to them, once
                // ("waiting for Redis at …", a job's store retried).
                logger.debug("Redis pool could not connect", metadata: ["redis.error": "\(error)", "redis.retry_in": "\(delay)"])
                throw error
            }
        }
    }

    /// Closes every connection; later requests fail with `.connectionClosed`.
    public func close() async {
        let slots = state.withLock { state in
            state.isClosed = true
            return state.slots
        }
        for slot in slots {
            switch slot {
            case .connected(let connection): await connection.close()
            case .connecting(let task): _ = try? await task.value
            case .idle: break
            }
        }
    }
}
