import GatewayProtocol
import JobgateSupport
import NIOCore
import Synchronization

/// Gathers the requests of every connection and hands them to the backend in batches (group commit): a burst of
/// `SUBMIT`s from any number of clients costs one Redis pipeline and one gearmand write, not a round trip each.
///
/// `run()` keeps `maximumConcurrentBatches` drainers, so one batch's gearmand step overlaps the next one's Redis
/// step; each batch carries its `BatchTurn`, with which an operation keeps a step in the order the batches were
/// taken (requests are taken in the order they were enqueued). What arrives while every drainer is busy waits for
/// the next batch, so batches grow with the load and an idle gateway answers a lone request at once. Callers get an
/// `EventLoopFuture` on their own event loop, which completes there without a hop through Swift concurrency.
final class BackendBatcher<Input: Sendable, Output: Sendable>: Sendable {
    typealias Operation = @Sendable ([Input], BatchTurn) async -> [Result<Output, GatewayFailure>]

    private struct Queued {
        var input: Input
        var promise: EventLoopPromise<Output>
    }

    private enum Take {
        case batch([Queued], BatchTurn)
        case wait
        case stop
    }

    private struct State {
        var queued: [Queued] = []
        /// Drainers waiting for requests, with the loop each runs on (nil: the cooperative pool).
        var idle: [(continuation: CheckedContinuation<Void, Never>, eventLoop: (any EventLoop)?)] = []
        var nextTurn: UInt64 = 0
        /// `run()` was cancelled: what is queued is still answered, nothing more is taken.
        var isStopped = false
    }

    private let state = Mutex(State())
    private let maximumBatch: Int
    private let maximumConcurrentBatches: Int
    private let turns = BatchTurns()
    private let operation: Operation

    init(maximumBatch: Int = 1_024, maximumConcurrentBatches: Int = 4, operation: @escaping Operation) {
        self.maximumBatch = maximumBatch
        self.maximumConcurrentBatches = maximumConcurrentBatches
        self.operation = operation
    }

    /// How many drainers wait for requests (for tests).
    var idleDrainers: Int { state.withLock { $0.idle.count } }

    /// Queues `input`; the future fails with a `GatewayFailure` when the backend refused or is down, or `run()` ended.
    func enqueue(_ input: Input, on eventLoop: any EventLoop) -> EventLoopFuture<Output> {
        let promise = eventLoop.makePromise(of: Output.self)
        let (isTaken, drainer) = state.withLock { state -> (Bool, CheckedContinuation<Void, Never>?) in
            guard !state.isStopped else { return (false, nil) }
            state.queued.append(Queued(input: input, promise: promise))
            // The drainer on the caller's loop, if idle: it starts without waking another thread.
            let local = state.idle.lastIndex { $0.eventLoop === eventLoop } ?? state.idle.indices.last
            return (true, local.map { state.idle.remove(at: $0).continuation })
        }
        if !isTaken { promise.fail(GatewayFailure(code: .busy, message: "the gateway is shutting down; try another or again later")) }
        drainer?.resume()
        return promise.futureResult
    }

    /// Runs the batches until cancelled, then answers what is still queued and returns: no batch of this batcher
    /// runs after that. The drainers take turns over `executors` (one per event loop of the gateway), so that a
    /// batch's steps resume on the loops of its connections instead of hopping through the cooperative pool.
    func run(on executors: [EventLoopTaskExecutor] = []) async {
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                for drainer in 0..<maximumConcurrentBatches {
                    let executor = executors.isEmpty ? nil : executors[drainer % executors.count]
                    group.addTask(executorPreference: executor) { await self.drain(on: executor?.eventLoop) }
                }
            }
        } onCancel: {
            let idle = state.withLock { state in
                state.isStopped = true
                defer { state.idle = [] }
                return state.idle
            }
            for drainer in idle { drainer.continuation.resume() }
        }
    }

    private func drain(on eventLoop: (any EventLoop)?) async {
        while let next = await nextBatch(on: eventLoop) {
            let (batch, turn) = next
            let results = await operation(batch.map(\.input), turn)
            turn.end()  // in case the operation did not take its turn
            for (queued, result) in zip(batch, results) {
                queued.promise.completeWith(result.mapError { $0 as any Error })
            }
        }
    }

    /// The next batch, waiting while there is none; nil once stopped with nothing queued.
    private func nextBatch(on eventLoop: (any EventLoop)?) async -> ([Queued], BatchTurn)? {
        while true {
            let next = state.withLock { state -> Take in
                let count = min(maximumBatch, state.queued.count)
                guard count > 0 else { return state.isStopped ? .stop : .wait }
                let batch = Array(state.queued.prefix(count))
                state.queued.removeFirst(count)
                defer { state.nextTurn += 1 }
                return .batch(batch, BatchTurn(number: state.nextTurn, turns: turns))
            }
            switch next {
            case .batch(let batch, let turn): return (batch, turn)
            case .stop: return nil
            case .wait:
                await withCheckedContinuation { continuation in
                    // Parked unless a request or the stop came in since the look above.
                    let isReady = state.withLock { state -> Bool in
                        guard state.queued.isEmpty && !state.isStopped else { return true }
                        state.idle.append((continuation, eventLoop))
                        return false
                    }
                    if isReady { continuation.resume() }
                }
            }
        }
    }
}

/// A batch's place in line for a step that must run one batch at a time, in the order the batches were taken.
struct BatchTurn: Sendable {
    fileprivate let number: UInt64
    fileprivate let turns: BatchTurns

    /// Waits until every earlier batch ended its turn.
    func begin() async {
        await turns.wait(for: number)
    }

    /// Lets the next batch have its turn (again: a no-op).
    func end() {
        turns.end(number)
    }
}

private final class BatchTurns: Sendable {
    private struct State {
        var current: UInt64 = 0
        var ended: Set<UInt64> = []
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    func wait(for number: UInt64) async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                guard number != state.current else { return true }
                state.waiters[number] = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    func end(_ number: UInt64) {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard number >= state.current, state.ended.insert(number).inserted else { return nil }
            // Batches may end out of order (one that failed early): move past every ended turn.
            while state.ended.remove(state.current) != nil { state.current += 1 }
            return state.waiters.removeValue(forKey: state.current)
        }
        next?.resume()
    }
}
