import GatewayProtocol
import JobStore
import NIOCore

/// How a `WAIT` ended.
enum WaitOutcome: Sendable {
    /// The job ended; nil: its record is gone (expired).
    case ended(JobRecord?)
    /// The wait ended before the job did (its timeout passed, or the gateway shuts down): answer with the job's state.
    case stopped
}

/// Where the tracker delivers a connection's events: a gateway session, or a job page's event stream.
protocol PushTarget: AnyObject, Sendable {
    /// Called from the tracker's event loop, in the order of the job's changes; must not block. `ending`: the watch
    /// this event ends (its terminal event), which the tracker has forgotten.
    func push(_ response: GatewayResponse, ending: JobTrackerStateMachine.Token?)
    /// The job's end, arrived while the watch is pending (its `WATCHING` not written yet), also held by the tracker:
    /// a target that writes `WATCHING` in order with other replies writes the end right after that reply, before any
    /// later one (PROTOCOL.md: a job that ended gets its terminal event right after `WATCHING`), and ends the watch.
    func holdEnd(_ update: JobUpdate, for watch: JobTrackerStateMachine.Token)
}

/// Who follows which job, and what each was shown: the one owner of per-job interest in a gateway.
///
/// Watchers get every change of their job they have not seen and end with its terminal event; waiters get the end
/// only. (Subscribers of a function read its completion log instead: `CompletionLogHub`.) A watcher registers before its
/// session reads the job (subscribe, then read) and stays *pending* until the session wrote its `WATCHING` reply:
/// what arrives meanwhile is held, so no event ever precedes that reply, and none shows the job older than it did.
///
/// No I/O: each event (a registration, a record read after a change, shutdown) returns the actions to run.
/// `JobTracker` runs it on its event loop; the tests drive it event by event. (Its per-job entries are references:
/// a copy of the machine shares them.)
struct JobTrackerStateMachine {
    struct Token: Hashable, Sendable {
        let id: JobID
        let number: UInt64
    }

    typealias WaitEnd = @Sendable (WaitOutcome) -> Void

    enum Action {
        case push(any PushTarget, GatewayResponse, ending: Token?)
        case holdEnd(any PushTarget, JobUpdate, for: Token)
        /// Read the job again, in the feed's next read: a watcher starts from that read (see `activate`).
        case readAgain(JobID)
        case endWait(WaitEnd, WaitOutcome)
        /// A job's end reached its followers (once per job; `record == nil`: it expired): `pushes` events carry it.
        case jobEnded(JobRecord?, pushes: Int)
    }

    private struct Watcher {
        let target: any PushTarget
        let tag: GatewayTag?
        let gatewayID: GatewayJobID
        var isActive = false
        /// What arrived while pending. Boxed: a record is large, and there may be 10,000 watchers holding nothing.
        var held: Held?
        /// The progress this watcher was last shown: the one place progress is de-duplicated.
        var shown: JobRecord.Progress?
        /// The first of the feed's reads whose progress this watcher may be shown: earlier reads were sent before its
        /// session had its own answer, on another connection, so they may be older than what it showed.
        var firstFreshRead: UInt64 = 0

        var holdsEnd: Bool {
            guard case .update(let update) = held else { return false }
            return update.record.map(\.state.isTerminal) ?? true
        }
    }

    private indirect enum Held {
        case update(JobUpdate)
    }

    /// A job's watchers by number. The first is kept inline: most jobs have one watcher, and a dictionary of one
    /// costs an allocation of ~320 bytes (10,000 idle watchers of 10,000 jobs: 3 MiB).
    private struct Watchers: Sequence {
        private var first: (number: UInt64, watcher: Watcher)?
        private var others: [UInt64: Watcher] = [:]

        var isEmpty: Bool { first == nil && others.isEmpty }

        subscript(number: UInt64) -> Watcher? {
            get { first?.number == number ? first?.watcher : others[number] }
            set {
                if first?.number == number {
                    first = newValue.map { (number, $0) }
                } else if others[number] != nil || first != nil {
                    others[number] = newValue
                    if others.isEmpty { others = [:] }  // its storage
                } else {
                    first = newValue.map { (number, $0) }
                }
            }
        }

        struct Iterator: IteratorProtocol {
            fileprivate var first: (number: UInt64, watcher: Watcher)?
            fileprivate var others: [UInt64: Watcher].Iterator

            mutating func next() -> (UInt64, Watcher)? {
                if let first {
                    self.first = nil
                    return first
                }
                return others.next().map { ($0.key, $0.value) }
            }
        }

        func makeIterator() -> Iterator { Iterator(first: first, others: others.makeIterator()) }
    }

    /// Everyone following one job. A class: the dictionary of followed jobs keeps room for a third more entries
    /// than it holds, and a reference is 8 bytes where the entry is ~160 (10,000 watched jobs: ~0.6 MiB less).
    private final class Interest {
        var watchers = Watchers()
        var waiters: [UInt64: WaitEnd] = [:]
        /// Its end was delivered (only pending watchers, holding it, may remain).
        var hasEnded = false
        var isEmpty: Bool { watchers.isEmpty && waiters.isEmpty }
    }

    private var jobs: [JobID: Interest] = [:]
    private var isShuttingDown = false
    /// Followed jobs whose backend no longer knows them, since the first answer that said so.
    private var goneSince: [JobID: ContinuousClock.Instant] = [:]
    /// Watches registered now, over all connections (a metric).
    private(set) var watcherCount = 0

    /// Jobs someone watches or waits for: what is re-read after notifications may have been lost, and what the
    /// lost-job check looks at.
    var followedIDs: [JobID] { Array(jobs.keys) }
    var followedCount: Int { jobs.count }

    func isFollowed(_ id: JobID) -> Bool { jobs[id] != nil }

    /// Whether a change of this job concerns anyone (a notification is worth a read).
    func wantsChange(of id: JobID) -> Bool {
        jobs[id] != nil
    }

    // MARK: Watchers

    /// A pending watcher; its session reads the job next, writes `WATCHING`, then calls `activate`.
    mutating func watch(_ token: Token, as gatewayID: GatewayJobID, target: any PushTarget, tag: GatewayTag?) {
        interest(in: token.id).watchers[token.number] = Watcher(target: target, tag: tag, gatewayID: gatewayID)
        watcherCount += 1
    }

    /// The session wrote `WATCHING` showing `shown`: the watch is live. `nextRead`: the number of the feed's next
    /// read; `readInFlight`: whether a read of this job is on its way.
    ///
    /// What the session showed came from its own read, on another connection than the feed's, so a change the feed
    /// read before that answer came may be *older* than what was shown (progress would go backwards). Such a change,
    /// held while pending or still on its way, is not shown; the job is read again instead, after what was shown, and
    /// the watcher starts from that read. An end is final, whenever it was read: it goes out at once.
    mutating func activate(_ token: Token, shown: JobRecord.Progress, nextRead: UInt64, readInFlight: Bool) -> [Action] {
        guard var watcher = jobs[token.id]?.watchers[token.number] else { return [] }
        watcher.isActive = true
        watcher.shown = shown.compacted
        watcher.firstFreshRead = nextRead
        let held = watcher.held
        watcher.held = nil
        if case .update(let update) = held, update.record.map(\.state.isTerminal) ?? true {
            remove(token)
            return Self.event(for: update, shown: &watcher.shown, as: watcher.gatewayID, tag: watcher.tag).map { [.push(watcher.target, $0, ending: token)] } ?? []
        }
        jobs[token.id]?.watchers[token.number] = watcher
        return held != nil || readInFlight ? [.readAgain(token.id)] : []
    }

    /// Removes a watcher (`UNWATCH`, or its connection closed); nothing if it already ended.
    mutating func unwatch(_ token: Token) {
        guard jobs[token.id]?.watchers[token.number] != nil else { return }
        remove(token)
    }

    private mutating func remove(_ token: Token) {
        jobs[token.id]?.watchers[token.number] = nil
        watcherCount -= 1
        forgetIfUnfollowed(token.id)
    }

    /// The job's interest, added if nobody followed it yet.
    private mutating func interest(in id: JobID) -> Interest {
        if let interest = jobs[id] { return interest }
        let interest = Interest()
        jobs[id] = interest
        return interest
    }

    private mutating func forgetIfUnfollowed(_ id: JobID) {
        guard jobs[id]?.isEmpty != false else { return }
        jobs[id] = nil
        goneSince[id] = nil
    }

    // MARK: Waiters

    /// A waiter, ended once when the job ends (or at shutdown), unless `unwait` takes it away first.
    mutating func wait(_ token: Token, onEnd: @escaping WaitEnd) -> Action? {
        guard !isShuttingDown else { return .endWait(onEnd, .stopped) }
        interest(in: token.id).waiters[token.number] = onEnd
        return nil
    }

    mutating func unwait(_ token: Token) {
        guard jobs[token.id]?.waiters.removeValue(forKey: token.number) != nil else { return }
        forgetIfUnfollowed(token.id)
    }

    /// Shutting down: every pending wait ends now (answered with the job's current state), and every later one at once.
    mutating func endAllWaits() -> [Action] {
        isShuttingDown = true
        var actions: [Action] = []
        for (id, interest) in jobs where !interest.waiters.isEmpty {
            actions += interest.waiters.values.map { .endWait($0, .stopped) }
            interest.waiters = [:]
            forgetIfUnfollowed(id)
        }
        return actions
    }

    // MARK: Lost jobs

    /// A presence check answered about the unfinished followed jobs it was `asked` about (an unanswered one could not
    /// be asked); returns those gone through the whole `grace`, to be failed as lost. Each answer but `gone` starts
    /// the grace again, so a job is lost only when every answer over the grace said so.
    mutating func presenceAnswered(_ answers: [JobID: JobPresence], asked: [JobID], at now: ContinuousClock.Instant, grace: Duration) -> [JobID] {
        var lost: [JobID] = []
        for id in asked {
            guard answers[id] == .gone, jobs[id] != nil else {
                goneSince[id] = nil
                continue
            }
            let since = goneSince[id] ?? now
            if now - since >= grace {
                goneSince[id] = nil
                lost.append(id)
            } else {
                goneSince[id] = since
            }
        }
        return lost
    }

    // MARK: Changes

    /// A job as read after a change (or a re-read): what each follower has not seen yet.
    mutating func read(_ update: JobUpdate) -> [Action] {
        let ended = update.record.map(\.state.isTerminal) ?? true
        var actions: [Action] = []
        var pushes = 0
        var isFirstEnd = false
        if let interest = jobs[update.id] {
            for (number, var watcher) in interest.watchers {
                let token = Token(id: update.id, number: number)
                guard watcher.isActive else {
                    // An end is handed over once (later reads of an ended job, a sweep or a reconnect, bring it again).
                    if ended, !watcher.holdsEnd { actions.append(.holdEnd(watcher.target, update, for: token)) }
                    watcher.held = .update(update)
                    interest.watchers[number] = watcher
                    continue
                }
                // Read before the watcher's own answer came: maybe older than what it showed (`activate`).
                if !ended, update.readNumber < watcher.firstFreshRead { continue }
                if let response = Self.event(for: update, shown: &watcher.shown, as: watcher.gatewayID, tag: watcher.tag) {
                    actions.append(.push(watcher.target, response, ending: ended ? token : nil))
                    pushes += 1
                }
                if ended {
                    interest.watchers[number] = nil
                    watcherCount -= 1
                } else {
                    interest.watchers[number] = watcher
                }
            }
            if ended {
                actions += interest.waiters.values.map { .endWait($0, .ended(update.record)) }
                interest.waiters = [:]
                isFirstEnd = !interest.hasEnded
                interest.hasEnded = true
            }
            forgetIfUnfollowed(update.id)
        }
        if isFirstEnd { actions.append(.jobEnded(update.record, pushes: pushes)) }
        return actions
    }

    /// The event a watcher that was shown `shown` should see for `update` (updating `shown`), or nil when nothing it
    /// can see changed.
    static func event(for update: JobUpdate, shown: inout JobRecord.Progress?, as gatewayID: GatewayJobID, tag: GatewayTag?) -> GatewayResponse? {
        guard let record = update.record else { return .event(.expired(gatewayID), tag: tag) }
        if record.state.isTerminal { return .event(terminalEvent(record, gatewayID), tag: tag) }
        guard record.progress != shown else { return nil }
        let before = shown
        shown = record.progress.compacted
        // A change of state alone (queued → running) has no event in protocol v1; progress does.
        guard before == nil || before?.numerator != record.numerator || before?.denominator != record.denominator
            || before?.message != record.message
        else { return nil }
        return .event(
            .progress(gatewayID, numerator: UInt64(record.numerator), denominator: UInt64(record.denominator), message: record.message),
            tag: tag
        )
    }

    static func terminalEvent(_ record: JobRecord, _ id: GatewayJobID) -> GatewayEvent {
        record.state == .done ? .done(id, result: record.result ?? ByteBuffer()) : .failed(id, reason: record.reason ?? ByteBuffer())
    }
}
