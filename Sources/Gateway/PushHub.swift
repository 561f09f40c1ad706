import Gearman
import GatewayProtocol
import JobStore
import Logging
import NIOCore
import Synchronization

/// How a `WAIT` ended.
enum WaitOutcome: Sendable {
    /// The job ended; nil: its record is gone (expired).
    case ended(JobRecord?)
    /// The wait ended before the job did (its timeout passed, or the gateway shuts down): answer with the job's state.
    case stopped
}

/// Where the push hub delivers a connection's events: a gateway session, or a job page's event stream.
protocol PushTarget: AnyObject, Sendable {
    /// Called from any thread, in the order of the job's changes; must not block.
    func push(_ response: GatewayResponse)
}

/// Who is waiting for what, fed by the job store's change feed.
///
/// Watchers get every change of their job and end with its terminal event; waiters get the end only;
/// subscribers get the terminal event of every job of a function. A watcher registers before its session reads
/// the job (subscribe, then read) and stays *pending* until the session wrote its `WATCHING` reply: what
/// arrives meanwhile is held and delivered right after that reply, so no event ever precedes it.
final class PushHub: Sendable {
    let feed: JobChangeFeed
    private let statistics: GatewayStatistics
    private let state = Mutex(State())

    struct Token: Hashable, Sendable {
        let id: JobID
        let number: UInt64
    }

    private struct Watcher {
        let outbox: any PushTarget
        let tag: GatewayTag?
        let gatewayID: GatewayJobID
        var isActive = false
        /// What arrived while pending. Boxed: a record is large, and there may be 10,000 watchers holding nothing.
        var held: Held?
        var shown: JobRecord.Progress?
    }

    private indirect enum Held {
        case update(JobUpdate)
    }

    private struct Subscriber {
        let outbox: any PushTarget
        let tag: GatewayTag?
    }

    private struct State {
        var nextNumber: UInt64 = 0
        var watchers: [JobID: [UInt64: Watcher]] = [:]
        var waiters: [JobID: [UInt64: @Sendable (WaitOutcome) -> Void]] = [:]
        /// function → outbox → subscriber
        var subscribers: [String: [ObjectIdentifier: Subscriber]] = [:]
        var isShuttingDown = false
        /// outbox → the jobs it watches, for limits, UNWATCH and cleanup.
        var watchesByOutbox: [ObjectIdentifier: [JobID: Token]] = [:]
        /// outbox → the functions it subscribed to or reserved (`reserveSubscription`), for limits and cleanup.
        var subscriptionsByOutbox: [ObjectIdentifier: Set<String>] = [:]

        mutating func forget(_ token: Token, outbox: any PushTarget) {
            let key = ObjectIdentifier(outbox)
            if watchesByOutbox[key]?[token.id] == token { watchesByOutbox[key]?[token.id] = nil }
            if watchesByOutbox[key]?.isEmpty == true { watchesByOutbox[key] = nil }
        }

        mutating func number() -> UInt64 {
            nextNumber += 1
            return nextNumber
        }
    }

    init(feed: JobChangeFeed, statistics: GatewayStatistics) {
        self.feed = feed
        self.statistics = statistics
    }

    func isFollowed(_ id: JobID) -> Bool {
        state.withLock { $0.watchers[id] != nil || $0.waiters[id] != nil }
    }

    /// Watches registered now, over all connections (a metric).
    var watcherCount: Int {
        state.withLock { $0.watchers.values.reduce(0) { $0 + $1.count } }
    }

    /// Jobs someone watches or waits for: the lost-job check looks at these.
    var followedIDs: [JobID] {
        state.withLock { Array(Set($0.watchers.keys).union($0.waiters.keys)) }
    }

    // MARK: Feed

    /// Pushes an update of the change feed (`JobChangeFeed.run(delivering:)`) to whoever follows the job.
    func deliver(_ update: JobUpdate) {
        let ended = update.record.map(\.state.isTerminal) ?? true
        var unfollow = 0
        var pushes: [(any PushTarget, GatewayResponse)] = []
        var waiters: [@Sendable (WaitOutcome) -> Void] = []
        state.withLock { state in
            if var watchers = state.watchers[update.id] {
                for (number, var watcher) in watchers {
                    guard watcher.isActive else {
                        watcher.held = .update(update)
                        watchers[number] = watcher
                        continue
                    }
                    if let response = Self.event(for: update, shown: &watcher.shown, to: watcher) {
                        pushes.append((watcher.outbox, response))
                    }
                    if ended {
                        watchers[number] = nil
                        state.forget(Token(id: update.id, number: number), outbox: watcher.outbox)
                        unfollow += 1
                    } else {
                        watchers[number] = watcher
                    }
                }
                state.watchers[update.id] = watchers.isEmpty ? nil : watchers
            }
            if ended, let ending = state.waiters.removeValue(forKey: update.id) {
                waiters = Array(ending.values)
                unfollow += ending.count
            }
            if let record = update.record, record.state.isTerminal, let subscribers = state.subscribers[record.function],
                let gatewayID = GatewayJobID(rawValue: record.id.rawValue)
            {
                let event = Self.terminalEvent(record, gatewayID)
                for subscriber in subscribers.values { pushes.append((subscriber.outbox, .event(event, tag: subscriber.tag))) }
            }
        }
        for _ in 0..<unfollow { feed.unfollow(update.id) }
        for waiter in waiters { waiter(.ended(update.record)) }
        for (outbox, response) in pushes {
            outbox.push(response)
            statistics.eventsPushed.add(1, ordering: .relaxed)
        }
        if ended { statistics.metrics.jobEnded(update.record, pushes: pushes.count) }
    }

    /// The event a watcher should see for `update`, or nil when nothing it can see changed.
    private static func event(for update: JobUpdate, shown: inout JobRecord.Progress?, to watcher: Watcher) -> GatewayResponse? {
        guard let record = update.record else { return .event(.expired(watcher.gatewayID), tag: watcher.tag) }
        if record.state.isTerminal { return .event(terminalEvent(record, watcher.gatewayID), tag: watcher.tag) }
        guard record.progress != shown else { return nil }
        let before = shown
        shown = record.progress.compacted
        // A change of state alone (queued → running) has no event in protocol v1; progress does.
        guard before == nil || before?.numerator != record.numerator || before?.denominator != record.denominator
            || before?.message != record.message
        else { return nil }
        return .event(
            .progress(watcher.gatewayID, numerator: UInt64(record.numerator), denominator: UInt64(record.denominator), message: record.message),
            tag: watcher.tag
        )
    }

    static func terminalEvent(_ record: JobRecord, _ id: GatewayJobID) -> GatewayEvent {
        record.state == .done ? .done(id, result: record.result ?? ByteBuffer()) : .failed(id, reason: record.reason ?? ByteBuffer())
    }

    // MARK: Watchers

    /// Registers a pending watcher; the caller reads the job next, queues `WATCHING`, then calls `activate`.
    /// Watching a job again on the same connection replaces the earlier watch. Nil when the connection already
    /// watches `limit` jobs.
    func addWatcher(_ id: JobID, as gatewayID: GatewayJobID, outbox: any PushTarget, tag: GatewayTag?, limit: Int) -> Token? {
        let (token, replaced) = state.withLock { state -> (Token?, Token?) in
            let key = ObjectIdentifier(outbox)
            let previous = state.watchesByOutbox[key]?[id]
            if let previous {
                state.watchers[id]?[previous.number] = nil
            } else if state.watchesByOutbox[key, default: [:]].count >= limit {
                return (nil, nil)
            }
            let token = Token(id: id, number: state.number())
            state.watchers[id, default: [:]][token.number] = Watcher(outbox: outbox, tag: tag, gatewayID: gatewayID)
            state.watchesByOutbox[key, default: [:]][id] = token
            return (token, previous)
        }
        if token != nil && replaced == nil { feed.follow(id) }
        return token
    }

    /// The watch a connection holds on a job, if any.
    func watch(of id: JobID, outbox: any PushTarget) -> Token? {
        state.withLock { $0.watchesByOutbox[ObjectIdentifier(outbox)]?[id] }
    }

    /// Whether the connection follows anything (then it is not idle).
    func isFollowing(outbox: any PushTarget) -> Bool {
        state.withLock { state in
            state.watchesByOutbox[ObjectIdentifier(outbox)] != nil || state.subscriptionsByOutbox[ObjectIdentifier(outbox)] != nil
        }
    }

    /// Drops every watch and subscription of a closing connection.
    func removeAll(for outbox: any PushTarget) {
        let tokens = state.withLock { state in Array(state.watchesByOutbox[ObjectIdentifier(outbox)]?.values ?? [:].values) }
        for token in tokens { removeWatcher(token, outbox: outbox) }
        let functions = state.withLock { state in state.subscriptionsByOutbox[ObjectIdentifier(outbox)] ?? [] }
        for function in functions { unsubscribe(function, outbox: outbox) }
    }

    /// The session queued `WATCHING` showing `shown`: deliver what arrived meanwhile, if it is news.
    func activate(_ token: Token, shown: JobRecord) {
        var push: (any PushTarget, GatewayResponse)?
        var ended = false
        state.withLock { state in
            guard var watcher = state.watchers[token.id]?[token.number] else { return }
            watcher.isActive = true
            watcher.shown = shown.progress.compacted
            if case .update(let held) = watcher.held {
                watcher.held = nil
                push = Self.event(for: held, shown: &watcher.shown, to: watcher).map { (watcher.outbox, $0) }
                ended = held.record.map(\.state.isTerminal) ?? true
            }
            if ended {
                state.watchers[token.id]?[token.number] = nil
                if state.watchers[token.id]?.isEmpty == true { state.watchers[token.id] = nil }
                state.forget(token, outbox: watcher.outbox)
            } else {
                state.watchers[token.id]?[token.number] = watcher
            }
        }
        if ended { feed.unfollow(token.id) }
        if let (outbox, response) = push { outbox.push(response) }
    }

    /// Removes a watcher; false when it had already ended (its terminal event is on its way).
    @discardableResult
    func removeWatcher(_ token: Token, outbox: any PushTarget) -> Bool {
        let removed = state.withLock { state -> Bool in
            guard state.watchers[token.id]?.removeValue(forKey: token.number) != nil else { return false }
            if state.watchers[token.id]?.isEmpty == true { state.watchers[token.id] = nil }
            state.forget(token, outbox: outbox)
            return true
        }
        if removed { feed.unfollow(token.id) }
        return removed
    }

    // MARK: Waiters

    /// Registers a waiter, called once when the job ends (or at shutdown), unless `removeWaiter` takes it away first.
    func addWaiter(_ id: JobID, onEnd: @escaping @Sendable (WaitOutcome) -> Void) -> Token {
        let (number, isShuttingDown) = state.withLock { state in
            let number = state.number()
            if !state.isShuttingDown { state.waiters[id, default: [:]][number] = onEnd }
            return (number, state.isShuttingDown)
        }
        if isShuttingDown {
            onEnd(.stopped)
        } else {
            feed.follow(id)
        }
        return Token(id: id, number: number)
    }

    /// Takes a waiter away; false when it is not registered (any more): then its `onEnd` was or is being called.
    @discardableResult
    func removeWaiter(_ token: Token) -> Bool {
        let found = state.withLock { state -> Bool in
            guard state.waiters[token.id]?.removeValue(forKey: token.number) != nil else { return false }
            if state.waiters[token.id]?.isEmpty == true { state.waiters[token.id] = nil }
            return true
        }
        if found { feed.unfollow(token.id) }
        return found
    }

    /// Shutting down: every pending WAIT is answered now (with the job's current state) instead of at its timeout.
    func endAllWaits() {
        let waiters = state.withLock { state in
            state.isShuttingDown = true
            defer { state.waiters = [:] }
            return state.waiters.flatMap { id, slots in slots.values.map { (id, $0) } }
        }
        for (id, waiter) in waiters {
            feed.unfollow(id)
            waiter(.stopped)
        }
    }

    // MARK: Subscribers

    /// Claims room for a subscription when `SUBSCRIBE` is read (it starts when `SUBSCRIBED` is written); false when
    /// the connection already has `limit` others. Subscribing again to the same function always fits.
    func reserveSubscription(_ function: String, outbox: any PushTarget, limit: Int) -> Bool {
        state.withLock { state in
            let key = ObjectIdentifier(outbox)
            if state.subscriptionsByOutbox[key]?.contains(function) == true { return true }
            guard state.subscriptionsByOutbox[key, default: []].count < limit else { return false }
            state.subscriptionsByOutbox[key, default: []].insert(function)
            return true
        }
    }

    func subscribe(_ function: String, outbox: any PushTarget, tag: GatewayTag?) {
        let added = state.withLock { state in
            state.subscriptionsByOutbox[ObjectIdentifier(outbox), default: []].insert(function)
            return state.subscribers[function, default: [:]].updateValue(Subscriber(outbox: outbox, tag: tag), forKey: ObjectIdentifier(outbox)) == nil
        }
        if added { feed.observeAllJobs(true) }
    }

    func unsubscribe(_ function: String, outbox: any PushTarget) {
        let removed = state.withLock { state -> Bool in
            let key = ObjectIdentifier(outbox)
            state.subscriptionsByOutbox[key]?.remove(function)
            if state.subscriptionsByOutbox[key]?.isEmpty == true { state.subscriptionsByOutbox[key] = nil }
            guard state.subscribers[function]?.removeValue(forKey: ObjectIdentifier(outbox)) != nil else { return false }
            if state.subscribers[function]?.isEmpty == true { state.subscribers[function] = nil }
            return true
        }
        if removed { feed.observeAllJobs(false) }
    }
}
