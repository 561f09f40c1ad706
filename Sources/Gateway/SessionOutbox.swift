import GatewayProtocol
import JobStore
import NIOCore
import Synchronization

/// The pushed events of a job page's event stream, for the one task that writes them (see `OutputBacklog` for
/// coalescing and the bound). Past the bound it drops everything and calls `onOverflow` once.
final class SessionOutbox: PushTarget {
    private struct State {
        var backlog: OutputBacklog
        var isClosed = false
        var hasOverflowed = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    enum Next {
        case response(GatewayResponse)
        case overflowed
        case closed
    }

    private let state: Mutex<State>
    /// Called by whoever enqueues past the limit: the writer cannot be relied on to notice, as it may be stuck
    /// writing to a socket the client does not read.
    private let onOverflow: @Sendable () -> Void

    init(limit: Int, onOverflow: @escaping @Sendable () -> Void = {}) {
        self.state = Mutex(State(backlog: OutputBacklog(limit: limit)))
        self.onOverflow = onOverflow
    }

    func push(_ response: GatewayResponse, ending: JobTracker.Token?) {
        enqueue(response)
    }

    /// Nothing: the stream writes its events only after activating the watch, which delivers the end the tracker held.
    func holdEnd(_ update: JobUpdate, for watch: JobTracker.Token) {}

    /// Queues a response; false once the outbox is closed or overflowed.
    @discardableResult
    func enqueue(_ response: GatewayResponse) -> Bool {
        let (waiter, overflowed) = state.withLock { state -> (CheckedContinuation<Void, Never>??, Bool) in
            guard !state.isClosed, !state.hasOverflowed else { return (.none, false) }
            state.hasOverflowed = !state.backlog.append(response)
            defer { state.waiter = nil }
            return (.some(state.waiter), state.hasOverflowed)
        }
        guard case .some(let continuation) = waiter else { return false }
        continuation?.resume()
        if overflowed { onOverflow() }
        return true
    }

    /// The next thing to write, waiting until there is one. One consumer only.
    func next() async -> Next {
        while true {
            let next = state.withLock { state -> Next? in
                if state.hasOverflowed { return .overflowed }
                guard let entry = state.backlog.popFirst() else { return state.isClosed ? .closed : nil }
                return .response(entry.response)
            }
            if let next { return next }
            await withCheckedContinuation { continuation in
                let ready = state.withLock { state -> Bool in
                    if state.backlog.isEmpty && !state.isClosed && !state.hasOverflowed {
                        state.waiter = continuation
                        return false
                    }
                    return true
                }
                if ready { continuation.resume() }
            }
        }
    }

    /// No more entries; `next()` returns `.closed` once the queue is drained.
    func close() {
        let waiter = state.withLock { state in
            state.isClosed = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    var isOpen: Bool { state.withLock { !$0.isClosed && !$0.hasOverflowed } }
}
