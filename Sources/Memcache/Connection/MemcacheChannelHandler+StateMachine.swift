import NIOCore

extension MemcacheChannelHandler {
    /// What a request's reply must look like; the text protocol has no request ids, so replies are matched to
    /// requests by order alone and anything else means the stream can no longer be trusted.
    enum Expectation: Hashable, Sendable {
        /// `VALUE`s then `END`; at most `maximumCount` values (one per key asked for), so a bad server cannot make
        /// the collected list grow without bound.
        case values(maximumCount: Int)
        case storage
        case deletion
        case touch
        case version

        init(_ request: MemcacheRequest) {
            switch request {
            case .get(let keys), .gets(let keys): self = .values(maximumCount: keys.count)
            case .store: self = .storage
            case .delete: self = .deletion
            case .touch: self = .touch
            case .version: self = .version
            }
        }
    }

    /// Matches replies to pipelined requests (FIFO) and owns the "no progress" deadline.
    ///
    /// Generic over `Promise` so tests can drive it with plain values, event by event.
    struct StateMachine<Promise> {
        struct Pending {
            var expectation: Expectation
            var promise: Promise
        }

        enum SendAction {
            /// Write the requests; arm the timer for `deadline` if one is given (none was armed).
            case write(armTimeout: NIODeadline?)
            /// The connection is closed: fail the batch's promises with the error.
            case fail(MemcacheError)
        }

        enum ResponseAction {
            /// Part of a reply (a `VALUE`); nothing to do yet.
            case wait
            case succeed(Promise, MemcacheReply)
            /// The stream is out of sync or the server misbehaved: fail everything and close.
            case failAllAndClose([Promise], MemcacheError)
            /// Already closed: drop it.
            case ignore
        }

        enum DeadlineAction {
            case none
            case rearm(NIODeadline)
            case failAllAndClose([Promise], MemcacheError)
        }

        private enum State {
            case active
            case closed(MemcacheError)
        }

        private var state: State = .active
        private var pending: CircularBuffer<Pending> = []
        private var collected: [MemcacheItem] = []
        let requestTimeout: TimeAmount
        /// When the head request times out unless some reply arrives first.
        private var deadline: NIODeadline?
        private var timerArmed = false

        init(requestTimeout: TimeAmount) {
            self.requestTimeout = requestTimeout
        }

        var pendingCount: Int { pending.count }

        mutating func requestsSent(_ batch: [Pending], now: NIODeadline) -> SendAction {
            if case .closed(let error) = state { return .fail(error) }
            guard !batch.isEmpty else { return .write(armTimeout: nil) }
            if pending.isEmpty { deadline = now + requestTimeout }
            pending.append(contentsOf: batch)
            guard !timerArmed, let deadline else { return .write(armTimeout: nil) }
            timerArmed = true
            return .write(armTimeout: deadline)
        }

        mutating func responseReceived(_ response: MemcacheResponse, now: NIODeadline) -> ResponseAction {
            guard case .active = state else { return .ignore }
            guard let head = pending.first else {
                return closeAndFailAll(MemcacheError(.unexpectedResponse, "reply \(response) with no request waiting"))
            }
            let reply: MemcacheReply
            switch (head.expectation, response) {
            case (_, .error): reply = .error
            case (_, .clientError(let message)): reply = .clientError(message)
            case (_, .serverError(let message)): reply = .serverError(message)
            case (.values(let maximumCount), .value(let item)):
                guard collected.count < maximumCount else {
                    return closeAndFailAll(MemcacheError(.unexpectedResponse, "more VALUEs than keys asked for (\(maximumCount))"))
                }
                collected.append(item)
                deadline = now + requestTimeout
                return .wait
            case (.values, .end):
                reply = .values(collected)
                collected = []
            case (.storage, .stored): reply = .stored
            case (.storage, .notStored): reply = .notStored
            case (.storage, .exists): reply = .exists
            case (.storage, .notFound), (.deletion, .notFound), (.touch, .notFound): reply = .notFound
            case (.deletion, .deleted): reply = .deleted
            case (.touch, .touched): reply = .touched
            case (.version, .version(let text)): reply = .version(text)
            default:
                return closeAndFailAll(MemcacheError(.unexpectedResponse, "reply \(response) does not answer a \(head.expectation) request"))
            }
            collected = []
            pending.removeFirst()
            deadline = pending.isEmpty ? nil : now + requestTimeout
            return .succeed(head.promise, reply)
        }

        /// The armed timer fired.
        mutating func hitDeadline(now: NIODeadline) -> DeadlineAction {
            timerArmed = false
            guard case .active = state, let deadline else { return .none }
            if deadline > now {
                timerArmed = true
                return .rearm(deadline)
            }
            let error = MemcacheError(.timeout, "no reply within \(requestTimeout.nanoseconds / 1_000_000) ms; \(pending.count) request(s) failed")
            guard case .failAllAndClose(let promises, let error) = closeAndFailAll(error) else { return .none }
            return .failAllAndClose(promises, error)
        }

        /// Decoding failed or the channel reported an error.
        mutating func errorHappened(_ error: MemcacheError) -> ResponseAction {
            guard case .active = state else { return .ignore }
            return closeAndFailAll(error)
        }

        /// The channel went inactive: everything still waiting fails; later sends fail at once.
        mutating func connectionClosed() -> (promises: [Promise], error: MemcacheError) {
            if case .closed(let error) = state {
                return (takeAll(), error)
            }
            let error = MemcacheError(
                .connectionClosed,
                pending.isEmpty ? "connection closed" : "connection closed with \(pending.count) request(s) unanswered"
            )
            state = .closed(error)
            return (takeAll(), error)
        }

        private mutating func closeAndFailAll(_ error: MemcacheError) -> ResponseAction {
            state = .closed(error)
            return .failAllAndClose(takeAll(), error)
        }

        private mutating func takeAll() -> [Promise] {
            let promises = pending.map(\.promise)
            pending.removeAll()
            collected = []
            deadline = nil
            return promises
        }
    }
}
