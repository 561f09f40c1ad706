import GatewayProtocol
import JobStore
import Logging
import NIOCore
import Redis
import Synchronization

/// A subscription's connection, as the completion log hub sees it.
protocol LogSubscriber: AnyObject, Sendable {
    /// A run of `function`'s log, read once for all its subscribers; called from any thread, in log order.
    func logAdvanced(_ function: String, _ run: LogRun)
}

/// Follows the completion logs of the functions someone subscribes to, for every subscriber of this gateway.
///
/// The log (a Redis stream per function, written with each outcome) is the source of every subscription's events;
/// keyspace notifications of stream appends (`xadd`) say when to read it. Per function one reader reads what was
/// added after the last entry it read and hands the run to each subscriber, whose `SubscriptionReplay` keeps only
/// what is new to it. After a reconnect, and at every sweep, each followed log is read again: a lost notification
/// delays an event, never loses it. Replays (`read`) are each subscriber's own reads.
final class CompletionLogHub: Sendable {
    /// Entries per read, and the outcome bytes a read holds at most (a read always takes one entry).
    static let pageSize = 100
    static let pageBytes = 1 << 20

    private let store: RedisJobStore
    private let notifications: RedisSubscriber
    private let sweepInterval: Duration
    private let logger: Logger
    private let state = Mutex(State())

    private struct Follow {
        /// Tells this follow from a later one of the same function (after every subscriber had left): a read under
        /// way for an earlier one must not touch it.
        let number: UInt64
        var subscribers: [ObjectIdentifier: any LogSubscriber] = [:]
        /// The last entry read; nil until the first read found where the log ends.
        var head: GatewayLogCursor?
        var isReading = false
        var readAgain = false
    }

    private struct State {
        var follows: [String: Follow] = [:]
        var followsMade: UInt64 = 0
    }

    init(store: RedisJobStore, redis: RedisConnectionConfiguration, sweepInterval: Duration, logger: Logger) {
        self.store = store
        self.sweepInterval = sweepInterval
        self.logger = logger
        self.notifications = RedisSubscriber(
            configuration: redis,
            channels: [store.schema.streamAddedEventChannel],
            logger: logger
        )
    }

    /// Subscribes to stream appends and sweeps until cancelled.
    func run() async {
        let schema = store.schema
        notifications.onMessage { message in
            guard let function = schema.function(fromCompletionLogKey: String(buffer: message.payload)) else { return }
            self.advance(function)
        }
        await withDiscardingTaskGroup { group in
            group.addTask {
                do { try await self.notifications.run() } catch { self.logger.error("completion log notifications stopped", metadata: ["redis.error": "\(error)"]) }
            }
            group.addTask {
                // Messages may have been lost before (re)subscribing, or dropped: read every followed log again.
                for await event in self.notifications.events where event.mayHaveLostMessages { self.advanceAll() }
            }
            group.addTask {
                while (try? await Task.sleep(for: self.sweepInterval)) != nil { self.advanceAll() }
            }
        }
    }

    // MARK: Subscribers

    /// Hands `subscriber` every run of `function`'s log read from now on.
    func follow(_ function: String, _ subscriber: any LogSubscriber) {
        let isFirst = state.withLock { state in
            let isFirst = state.follows[function] == nil
            if isFirst {
                state.followsMade += 1
                state.follows[function] = Follow(number: state.followsMade)
            }
            state.follows[function]!.subscribers[ObjectIdentifier(subscriber)] = subscriber
            return isFirst
        }
        if isFirst { advance(function) }  // finds where the log ends
    }

    func unfollow(_ function: String, _ subscriber: any LogSubscriber) {
        state.withLock { state in
            state.follows[function]?.subscribers[ObjectIdentifier(subscriber)] = nil
            if state.follows[function]?.subscribers.isEmpty == true { state.follows[function] = nil }
        }
    }

    /// Subscribers across all functions (a metric).
    var subscriptionCount: Int {
        state.withLock { $0.follows.values.reduce(0) { $0 + $1.subscribers.count } }
    }

    // MARK: Reading

    /// What `function`'s log holds after `cursor`, for a subscriber's replay (`GatewayLogCursor.start`: all of it).
    func read(_ function: String, after cursor: GatewayLogCursor) async throws(JobStoreError) -> LogRun {
        let page = try await store.completionLog(function: function, after: "\(cursor)", limit: Self.pageSize, byteBudget: Self.pageBytes)
        return Self.run(page, after: cursor)
    }

    /// Where `function`'s log ends now, and the newest entry it trimmed: where a subscription `from=now` starts.
    func end(of function: String) async throws(JobStoreError) -> (last: GatewayLogCursor, trimmedThrough: GatewayLogCursor) {
        let page = try await store.completionLog(function: function, after: "0-0", limit: 0, byteBudget: 0)
        return (GatewayLogCursor(page.lastCursor) ?? .start, GatewayLogCursor(page.trimmedThrough) ?? .start)
    }

    private static func run(_ page: CompletionLogPage, after cursor: GatewayLogCursor) -> LogRun {
        let entries = page.entries.compactMap { entry -> LoggedEnd? in
            guard let cursor = GatewayLogCursor(entry.cursor), let id = GatewayJobID(rawValue: entry.id.rawValue) else { return nil }
            let event: GatewayEvent =
                switch (entry.state, entry.outcome) {
                case (.done, let result?): .done(id, result: result)
                case (_, let reason?): .failed(id, reason: reason)
                case (_, nil): .expired(id)
                }
            return LoggedEnd(cursor: cursor, event: event)
        }
        return LogRun(after: cursor, entries: entries, trimmedThrough: GatewayLogCursor(page.trimmedThrough) ?? .start, isComplete: page.isComplete)
    }

    private func advanceAll() {
        for function in state.withLock({ Array($0.follows.keys) }) { advance(function) }
    }

    /// Reads what was added to `function`'s log since the last read, unless a read is under way (then it reads again
    /// once that one ends).
    private func advance(_ function: String) {
        let starts = state.withLock { state -> UInt64? in
            guard let follow = state.follows[function] else { return nil }
            if follow.isReading {
                state.follows[function]!.readAgain = true
                return nil
            }
            state.follows[function]!.isReading = true
            return follow.number
        }
        guard let number = starts else { return }
        Task { await self.readOn(function, number) }
    }

    private func readOn(_ function: String, _ number: UInt64) async {
        func follow(_ state: State) -> Follow? { state.follows[function].flatMap { $0.number == number ? $0 : nil } }
        while true {
            guard let head = state.withLock({ state -> GatewayLogCursor?? in follow(state).map { $0.head } }) else { return }
            let run: LogRun
            do {
                if let head {
                    run = try await read(function, after: head)
                } else {
                    let end = try await end(of: function)
                    run = LogRun(after: end.last, entries: [], trimmedThrough: end.trimmedThrough, isComplete: true)
                }
            } catch {
                logger.debug("completion log read failed", metadata: ["job.function": "\(function)", "redis.error": "\(error)"])
                state.withLock { state in if follow(state) != nil { state.follows[function]!.isReading = false } }
                return  // the next reconnect or sweep reads again
            }
            let (subscribers, again) = state.withLock { state -> ([any LogSubscriber], Bool) in
                guard var current = follow(state) else { return ([], false) }
                current.head = run.entries.last?.cursor ?? (head ?? run.after)
                let again = current.readAgain || !run.isComplete
                current.readAgain = false
                current.isReading = again
                state.follows[function] = current
                return (Array(current.subscribers.values), again)
            }
            if head != nil, !run.entries.isEmpty {
                for subscriber in subscribers { subscriber.logAdvanced(function, run) }
            }
            guard again else { return }
        }
    }
}
