import GatewayProtocol

/// One ended job of a function's completion log, ready to push: the plain terminal event and the cursor after it.
struct LoggedEnd: Sendable, Hashable {
    let cursor: GatewayLogCursor
    let event: GatewayEvent
}

/// A run of the completion log: the entries right after `after`, in order. `trimmedThrough` is the newest entry the
/// log ever trimmed: a reader whose cursor is before it has lost entries.
struct LogRun: Sendable, Hashable {
    let after: GatewayLogCursor
    let entries: [LoggedEnd]
    let trimmedThrough: GatewayLogCursor
    /// Whether the run reached the end of the log as it was read.
    let isComplete: Bool
}

/// Where one subscription of a connection is in its function's completion log, and how it gets the rest: reading
/// the log after its cursor (replaying) until it reaches the end, then taking the hub's live runs as long as each
/// starts at or before its cursor. Every event is delivered once and in log order: a live run that starts after the
/// cursor (something was missed: the subscription was paused, or started after the run was read) sends it back to
/// reading the log; one that overlaps it delivers only what is new. A subscriber whose output is full is paused by
/// its cursor: nothing is buffered for it, it reads on from its cursor once its output drains.
struct SubscriptionReplay: Equatable {
    enum Mode: Equatable {
        /// Reading the log; `isReading` false: waiting for room in the output (or to retry a failed read).
        case replaying(isReading: Bool)
        case live
    }

    enum Action: Equatable {
        case none
        /// Read the log after the cursor; answer with `readFinished` or `readFailed`.
        case read(after: GatewayLogCursor)
        /// Push these in order while the output has room (`outputFull` when it runs out), then read after `thenRead`.
        case deliver([LoggedEnd], thenRead: GatewayLogCursor?)
        /// Entries after the cursor were trimmed from the log before they were delivered: end the subscription.
        case trimmed(after: GatewayLogCursor, through: GatewayLogCursor)
    }

    /// The last entry delivered (or the starting point).
    private(set) var cursor: GatewayLogCursor
    private(set) var mode: Mode = .replaying(isReading: false)
    /// `from=start` until the first delivery: entries trimmed before the first one retained are no gap.
    private var startsAtRetained: Bool
    /// The cursor before the last `deliver`, for `outputFull`.
    private var cursorBeforeDelivery: GatewayLogCursor

    init(after cursor: GatewayLogCursor, fromStart: Bool = false) {
        self.cursor = cursor
        self.cursorBeforeDelivery = cursor
        self.startsAtRetained = fromStart
    }

    /// The subscription starts (after `SUBSCRIBED` was written): read what ended after the cursor.
    mutating func start() -> Action {
        mode = .replaying(isReading: true)
        return .read(after: cursor)
    }

    /// A run the hub read for every subscriber of the function.
    mutating func received(_ run: LogRun) -> Action {
        guard mode == .live else { return .none }  // replaying reads on by itself and finds this run's entries
        if let trimmed = gap(run) { return trimmed }
        guard run.after <= cursor else {
            mode = .replaying(isReading: true)
            return .read(after: cursor)
        }
        return deliver(run.entries.filter { $0.cursor > cursor }, thenRead: nil)
    }

    /// A replay read came back.
    mutating func readFinished(_ run: LogRun) -> Action {
        // A read for an earlier position (of a subscription this one replaced) is not this one's.
        guard mode == .replaying(isReading: true), run.after == cursor else { return .none }
        if let trimmed = gap(run) { return trimmed }
        let entries = run.entries.filter { $0.cursor > cursor }
        if run.isComplete {
            mode = .live
            return deliver(entries, thenRead: nil)
        }
        let action = deliver(entries, thenRead: nil)
        guard case .deliver(let delivered, _) = action else { return .read(after: cursor) }
        return .deliver(delivered, thenRead: cursor)
    }

    /// A replay read failed (Redis is away): wait, then `resume`.
    mutating func readFailed() {
        if mode == .replaying(isReading: true) { mode = .replaying(isReading: false) }
    }

    /// The output filled up after the entries up to `lastDelivered` (nil: none) of the last `deliver`: pause there.
    mutating func outputFull(lastDelivered: GatewayLogCursor?) {
        cursor = lastDelivered ?? cursorBeforeDelivery
        mode = .replaying(isReading: false)
    }

    /// The output has room again (or it is time to retry a read): a paused subscription reads on.
    mutating func resume() -> Action {
        guard mode == .replaying(isReading: false) else { return .none }
        mode = .replaying(isReading: true)
        return .read(after: cursor)
    }

    private mutating func deliver(_ entries: [LoggedEnd], thenRead: GatewayLogCursor?) -> Action {
        guard let last = entries.last else { return .none }
        cursorBeforeDelivery = cursor
        cursor = last.cursor
        startsAtRetained = false
        return .deliver(entries, thenRead: thenRead)
    }

    private func gap(_ run: LogRun) -> Action? {
        // The trimmed entry `trimmedThrough` came after every entry delivered: it is lost to this subscriber.
        guard run.trimmedThrough > cursor, !startsAtRetained else { return nil }
        return .trimmed(after: cursor, through: run.trimmedThrough)
    }
}
