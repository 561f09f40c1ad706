import NIOCore
import Synchronization

/// Gathers the requests of every connection and hands them to the backend in batches (group commit): a burst of
/// `SUBMIT`s from any number of clients costs one Redis pipeline and one gearmand write, not a round trip each.
///
/// One batch runs at a time, so requests reach the backend in the order they were enqueued (a `SUBMIT` that
/// coalesces with an earlier one joins it); what arrives meanwhile waits for the next batch, so batches grow with
/// the load and an idle gateway answers a lone request at once. Callers get an `EventLoopFuture` on their own event
/// loop, which completes there without a hop through Swift concurrency.
final class BackendBatcher<Input: Sendable, Output: Sendable>: Sendable {
    typealias Operation = @Sendable ([Input]) async -> [Result<Output, GatewayFailure>]

    private struct Queued {
        var input: Input
        var promise: EventLoopPromise<Output>
    }

    private struct State {
        var queued: [Queued] = []
        var isRunning = false
    }

    private let state = Mutex(State())
    private let maximumBatch: Int
    private let operation: Operation

    init(maximumBatch: Int = 1_024, operation: @escaping Operation) {
        self.maximumBatch = maximumBatch
        self.operation = operation
    }

    /// Queues `input`; the future fails with a `GatewayFailure` when the backend refused or is down.
    func enqueue(_ input: Input, on eventLoop: any EventLoop) -> EventLoopFuture<Output> {
        let promise = eventLoop.makePromise(of: Output.self)
        let start = state.withLock { state in
            state.queued.append(Queued(input: input, promise: promise))
            defer { state.isRunning = true }
            return !state.isRunning
        }
        if start { Task { await self.drain() } }
        return promise.futureResult
    }

    private func drain() async {
        while true {
            let batch = state.withLock { state -> [Queued] in
                let count = min(maximumBatch, state.queued.count)
                let batch = Array(state.queued.prefix(count))
                state.queued.removeFirst(count)
                if batch.isEmpty { state.isRunning = false }
                return batch
            }
            guard !batch.isEmpty else { return }
            let results = await operation(batch.map(\.input))
            for (queued, result) in zip(batch, results) {
                queued.promise.completeWith(result.mapError { $0 as any Error })
            }
        }
    }
}
