/// Where a gateway session is in its life, and what it does next: a plain state machine that `GatewaySessionHandler`
/// feeds events (a read asked for, input ended, requests stopped, a request answered, a close asked for, output
/// drained, output overflowed, an error, the channel gone) and whose returned actions it only carries out.
///
/// ```
///  reading ──input ended, QUIT, timeout──▶ draining ──all answered──▶ closing ──channel gone──▶ closed
///     │                                       │        (or BYE)         ▲
///     └───────────── idle timeout ────────────┴─────────────────────────┘
/// ```
/// Any state goes to `closed` when the channel goes or the output overflows; nothing is done after that (work that
/// comes back later, such as a `SUBMIT`'s answer, finds the session closed). The gateway's shutdown and a TLS
/// connection's end both arrive as the end of input.
struct SessionLifecycle {
    enum State: Equatable {
        /// Requests are read and handled. `readIsHeld`: the channel asked for a read while the session could take no
        /// more; reading resumes once it can.
        case reading(readIsHeld: Bool)
        /// Nothing more is read (the client closed its side, the gateway shuts down, `QUIT`, a request timeout, too
        /// many wrong secrets): what was read is answered. `startsRequests`: requests read but not started yet still
        /// start (at the end of input, not after `QUIT` or a timeout).
        case draining(startsRequests: Bool)
        /// All is answered: the connection closes once its output is written (a client that does not read gets a
        /// deadline). `waitsForOutput`: some output still waits for the socket, and its drain closes.
        case closing(waitsForOutput: Bool)
        /// The session ended: it holds nothing and does nothing more.
        case closed
    }

    enum Action: Equatable {
        case none
        /// Ask the channel for more bytes.
        case read
        /// Input ended: follow no job and no log any more (nothing would be pushed after the answers).
        case stopFollowing
        /// Input ended with everything answered: stop following, then `closeWhenWritten`.
        case stopFollowingAndCloseWhenWritten(waitsForOutput: Bool)
        /// Close once the output is written, with a deadline; unless `waitsForOutput`, close after the writes handed
        /// to the channel now.
        case closeWhenWritten(waitsForOutput: Bool)
        /// The output drained while closing: close after the writes handed to the channel.
        case closeAfterPendingWrites
        /// Tell the client why (the output overflowed, or a subscription fell behind its log), close, end the session.
        case reportAndClose
        /// Close the channel now (an error).
        case closeNow
        /// The channel is gone: release everything the session holds (exactly once).
        case endSession
    }

    private(set) var state = State.reading(readIsHeld: false)

    // MARK: What the session may do now

    /// Requests read are started (and, before that, decoded).
    var startsRequests: Bool {
        switch state {
        case .reading, .draining(startsRequests: true): true
        case .draining(startsRequests: false), .closing, .closed: false
        }
    }

    /// Replies and events are written; once closing, only what was written before goes out.
    var isOpen: Bool {
        switch state {
        case .reading, .draining: true
        case .closing, .closed: false
        }
    }

    /// Input is still read (a request that does not arrive whole in time is the client's doing).
    var isReading: Bool {
        if case .reading = state { return true }
        return false
    }

    var isClosed: Bool { state == .closed }

    // MARK: Reading

    /// The channel asks for a read. `canTakeMore`: the output and the outstanding requests leave room for more.
    mutating func readRequested(canTakeMore: Bool) -> Action {
        guard case .reading = state else { return .none }
        state = .reading(readIsHeld: !canTakeMore)
        return canTakeMore ? .read : .none
    }

    /// Room was made (a reply written, the output drained): a held read goes ahead if there is room now.
    mutating func roomMade(canTakeMore: Bool) -> Action {
        guard state == .reading(readIsHeld: true), canTakeMore else { return .none }
        state = .reading(readIsHeld: false)
        return .read
    }

    /// The client closed its side, the gateway shuts down (it ends every connection's input), or a TLS connection
    /// stopped reading. `allAnswered`: no request is outstanding or waits to start.
    mutating func inputEnded(allAnswered: Bool, waitsForOutput: Bool) -> Action {
        switch state {
        case .reading:
            state = .draining(startsRequests: true)
        case .draining:
            break  // after QUIT, say: it stops following now
        case .closing, .closed:
            return .none
        }
        guard allAnswered else { return .stopFollowing }
        state = .closing(waitsForOutput: waitsForOutput)
        return .stopFollowingAndCloseWhenWritten(waitsForOutput: waitsForOutput)
    }

    /// `QUIT`, a request that took too long to arrive, or the last wrong secret allowed: no more reading, and no
    /// request read after this one starts.
    mutating func requestsStopped() -> Action {
        switch state {
        case .reading, .draining: state = .draining(startsRequests: false)
        case .closing, .closed: break
        }
        return .none
    }

    // MARK: Writing and closing

    /// A request was answered (its reply may wait for an earlier one). `allAnswered`: no request is outstanding or
    /// waits to start.
    mutating func requestAnswered(allAnswered: Bool, waitsForOutput: Bool) -> Action {
        guard case .draining = state, allAnswered else { return .none }
        state = .closing(waitsForOutput: waitsForOutput)
        return .closeWhenWritten(waitsForOutput: waitsForOutput)
    }

    /// `BYE` was written, or the idle timeout wrote its error: close once the output is written.
    mutating func closeRequested(waitsForOutput: Bool) -> Action {
        guard isOpen else { return .none }
        state = .closing(waitsForOutput: waitsForOutput)
        return .closeWhenWritten(waitsForOutput: waitsForOutput)
    }

    /// Everything waiting for the socket was handed to the channel.
    mutating func outputDrained() -> Action {
        guard state == .closing(waitsForOutput: true) else { return .none }
        state = .closing(waitsForOutput: false)
        return .closeAfterPendingWrites
    }

    /// The output is over its limit, the socket took nothing for the stall timeout, or a subscriber fell behind its
    /// log: the session ends now rather than buffer more.
    mutating func outputFailed() -> Action {
        guard state != .closed else { return .none }
        state = .closed
        return .reportAndClose
    }

    mutating func errorCaught() -> Action {
        state == .closed ? .none : .closeNow
    }

    /// The channel became inactive, or the handler was removed: the first of them ends the session.
    mutating func channelClosed() -> Action {
        guard state != .closed else { return .none }
        state = .closed
        return .endSession
    }
}
