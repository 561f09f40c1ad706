import GatewayProtocol
import NIOCore
import Synchronization

/// What a connection still has to write: replies in request order and pushed events between them.
///
/// The one writer of the connection drains it. Progress events for a job are coalesced while they wait (the
/// newest replaces the queued one in place: a slow watcher sees the latest progress, not every step); replies
/// and terminal events are never dropped. The queued bytes are bounded: past `limit` (with more than one entry
/// waiting, so that a single large result still goes to a client that reads) the outbox overflows, drops
/// everything and calls `onOverflow` (once), which closes the connection, instead of memory growing for a client
/// that does not read.
final class SessionOutbox: Sendable {
    private struct ProgressKey: Hashable {
        var id: GatewayJobID
        var tag: GatewayTag?
    }

    private enum Entry {
        case response(GatewayResponse)
        /// The newest progress for the key sits in `latestProgress`.
        case progress(ProgressKey)
    }

    private struct State {
        var queue = CircularBuffer<Entry>()
        var latestProgress: [ProgressKey: GatewayResponse] = [:]
        var bytes = 0
        var isClosed = false
        var hasOverflowed = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    enum Next {
        case response(GatewayResponse)
        case overflowed
        case closed
    }

    private let state = Mutex(State())
    let limit: Int
    /// Called by whoever enqueues past the limit: the writer cannot be relied on to notice, as it may be stuck
    /// writing to a socket the client does not read.
    private let onOverflow: @Sendable () -> Void

    init(limit: Int, onOverflow: @escaping @Sendable () -> Void = {}) {
        self.limit = limit
        self.onOverflow = onOverflow
    }

    /// Queues a reply or a terminal event; false once the outbox is closed or overflowed.
    @discardableResult
    func enqueue(_ response: GatewayResponse) -> Bool {
        if case .event(.progress(let id, _, _, _), let tag) = response {
            return enqueueProgress(response, key: ProgressKey(id: id, tag: tag))
        }
        return push { state in
            state.queue.append(.response(response))
            state.bytes += Self.size(of: response)
        }
    }

    private func enqueueProgress(_ response: GatewayResponse, key: ProgressKey) -> Bool {
        push { state in
            if let queued = state.latestProgress.updateValue(response, forKey: key) {
                state.bytes -= Self.size(of: queued)
            } else {
                state.queue.append(.progress(key))
            }
            state.bytes += Self.size(of: response)
        }
    }

    private func push(_ body: (inout State) -> Void) -> Bool {
        let (waiter, overflowed) = state.withLock { state -> (CheckedContinuation<Void, Never>??, Bool) in
            guard !state.isClosed, !state.hasOverflowed else { return (.none, false) }
            body(&state)
            // One entry may be larger than the limit on its own (a big result to a client that reads): only a
            // backlog behind it counts as a client that does not keep up.
            if state.bytes > limit && state.queue.count > 1 {
                state.hasOverflowed = true
                state.queue.removeAll()
                state.latestProgress.removeAll()
            }
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
                guard let entry = state.queue.popFirst() else { return state.isClosed ? .closed : nil }
                let response: GatewayResponse
                switch entry {
                case .response(let queued): response = queued
                case .progress(let key): response = state.latestProgress.removeValue(forKey: key)!
                }
                state.bytes -= Self.size(of: response)
                return .response(response)
            }
            if let next { return next }
            await withCheckedContinuation { continuation in
                let ready = state.withLock { state -> Bool in
                    if state.queue.isEmpty && !state.isClosed && !state.hasOverflowed {
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

    /// An estimate of the bytes a response takes on the wire, for the output bound.
    static func size(of response: GatewayResponse) -> Int {
        let block: Int =
            switch response {
            case .reply(.done(_, let bytes), _), .reply(.failed(_, let bytes), _): bytes.readableBytes
            case .event(.done(_, let bytes), _), .event(.failed(_, let bytes), _): bytes.readableBytes
            case .event(.progress(_, _, _, let bytes), _): bytes.readableBytes
            default: 0
            }
        return 96 + block
    }
}
