import NIOCore
import Synchronization

/// Gathers the requests of every connection and hands them to the backend in batches (group commit): a burst of
/// `SUBMIT`s from any number of clients costs one Redis pipeline and one gearmand write, not a round trip each.
///
/// Up to `maximumConcurrentBatches` batches run at once, so one batch's gearmand step overlaps the next one's Redis
/// step; each batch carries its `BatchTurn`, with which an operation keeps a step in the order the batches were
/// taken (requests are taken in the order they were enqueued). What arrives while every batch slot is busy waits
/// for the next batch, so batches grow with the load and an idle gateway answers a lone request at once. Callers
/// get an `EventLoopFuture` on their own event loop, which completes there without a hop through Swift concurrency.
final class BackendBatcher<Input: Sendable, Output: Sendable>: Sendable {
    typealias Operation = @Sendable ([Input], BatchTurn) async -> [Result<Output, GatewayFailure>]

    private struct Queued {
        var input: Input
        var promise: EventLoopPromise<Output>
    }

    private struct State {
        var queued: [Queued] = []
        var running = 0
        var nextTurn: UInt64 = 0
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

    /// Queues `input`; the future fails with a `GatewayFailure` when the backend refused or is down.
    func enqueue(_ input: Input, on eventLoop: any EventLoop) -> EventLoopFuture<Output> {
        let promise = eventLoop.makePromise(of: Output.self)
        let start = state.withLock { state -> Bool in
            state.queued.append(Queued(input: input, promise: promise))
            guard state.running < maximumConcurrentBatches else { return false }
            state.running += 1
            return true
        }
        if start { Task { await self.drain() } }
        return promise.futureResult
    }

    private func drain() async {
        while true {
            let (batch, turn) = state.withLock { state -> ([Queued], BatchTurn?) in
                let count = min(maximumBatch, state.queued.count)
                guard count > 0 else {
                    state.running -= 1
                    return ([], nil)
                }
                let batch = Array(state.queued.prefix(count))
                state.queued.removeFirst(count)
                defer { state.nextTurn += 1 }
                return (batch, BatchTurn(number: state.nextTurn, turns: turns))
            }
            guard let turn else { return }
            let results = await operation(batch.map(\.input), turn)
            turn.end()  // in case the operation did not take its turn
            for (queued, result) in zip(batch, results) {
                queued.promise.completeWith(result.mapError { $0 as any Error })
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
