import Synchronization

/// Something that becomes ready once (a listener bound, a subscription confirmed), or fails for good: whoever
/// waits before is resumed then, whoever waits after gets the outcome at once. A waiter that is cancelled stops
/// waiting with a `CancellationError`.
public final class ReadinessLatch<Value: Sendable>: Sendable {
    private struct State {
        var outcome: Result<Value, any Error>?
        var waiters: [Int: CheckedContinuation<Value, any Error>] = [:]
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// Sets the outcome and resumes every waiter; only the first call counts. Returns whether this one did.
    @discardableResult
    public func resolve(_ outcome: Result<Value, any Error>) -> Bool {
        let waiters = state.withLock { state -> [Int: CheckedContinuation<Value, any Error>]? in
            guard state.outcome == nil else { return nil }
            state.outcome = outcome
            defer { state.waiters = [:] }
            return state.waiters
        }
        guard let waiters else { return false }
        for waiter in waiters.values { waiter.resume(with: outcome) }
        return true
    }

    /// The value once ready; throws the failure it was resolved with, or `CancellationError`.
    public func wait() async throws -> Value {
        let waiter = state.withLock { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let outcome = state.withLock { state -> Result<Value, any Error>? in
                    if let outcome = state.outcome { return outcome }
                    // Cancelled before it got here: the handler below found nothing to resume.
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiters[waiter] = continuation
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: waiter) }?.resume(throwing: CancellationError())
        }
    }

    public var isResolved: Bool { state.withLock { $0.outcome != nil } }

    /// How many wait now (for tests).
    package var waiting: Int { state.withLock { $0.waiters.count } }
}

extension ReadinessLatch where Value == Void {
    @discardableResult
    public func succeed() -> Bool { resolve(.success(())) }
}
