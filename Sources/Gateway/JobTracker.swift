import GatewayProtocol
import JobStore
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// Follows jobs for the gateway's connections and job pages: runs `JobTrackerStateMachine` on the change feed's
/// event loop and carries out its actions.
///
/// Everything about one job's followers happens on that one loop, with no lock: a notification, its re-read, and the
/// pushes to the followers' targets (which hop to their own loops). Callers on other threads hand their
/// registrations over with `execute`, in order (one thread's tasks run in the order they were handed over); a
/// registration that must precede a read (`watch`, `wait`) returns a future that completes once it is in place.
///
/// Entry points for what comes next: `rereadFollowed()` (a Redis primary switched: re-read everything followed),
/// `changed(_:)` (a job as read, from the feed or any other source). Subscriptions are not here: they read their
/// function's completion log (`CompletionLogHub`).
final class JobTracker: JobChangeConsumer, Service {
    typealias Token = JobTrackerStateMachine.Token

    let feed: JobChangeFeed
    private let statistics: GatewayStatistics
    private let machine: NIOLoopBoundBox<JobTrackerStateMachine>
    private let lastNumber = Atomic<UInt64>(0)
    /// Published after each change of the machine, for metrics read from other threads.
    private let followed = Atomic<Int>(0)
    private let watchers = Atomic<Int>(0)

    /// Given by the owner, once: the tracker's state and its feed live there.
    let eventLoop: any EventLoop

    init(store: RedisJobStore, eventLoop: any EventLoop, sweepInterval: Duration, statistics: GatewayStatistics, logger: Logger) {
        self.eventLoop = eventLoop
        self.feed = JobChangeFeed(store: store, eventLoop: eventLoop, sweepInterval: sweepInterval, logger: logger)
        self.statistics = statistics
        self.machine = NIOLoopBoundBox.makeBoxSendingValue(JobTrackerStateMachine(), eventLoop: eventLoop)
    }

    func run() async throws {
        try await feed.run(consumer: self)
    }

    /// Jobs someone follows now (a metric: `STATS`, `/metrics`).
    var followedCount: Int { followed.load(ordering: .relaxed) }
    /// Watches registered now, over all connections (a metric).
    var watcherCount: Int { watchers.load(ordering: .relaxed) }

    /// Jobs someone watches or waits for: the lost-job checks look at these.
    func followedIDs() async -> [JobID] {
        (try? await eventLoop.submit { self.machine.value.followedIDs }.get()) ?? []
    }

    func isFollowed(_ id: JobID) async -> Bool {
        (try? await eventLoop.submit { self.machine.value.isFollowed(id) }.get()) ?? false
    }

    /// A token for a new watch or wait of `id`.
    func makeToken(for id: JobID) -> Token {
        Token(id: id, number: lastNumber.wrappingAdd(1, ordering: .relaxed).newValue)
    }

    // MARK: Registrations (from any thread)

    /// WATCH, for a session and a job page alike: registers a pending watcher, then reads the job with `read`
    /// (subscribe, then read). A change before the read is in what it finds; one after it goes out once the caller
    /// has shown what was found and calls `activate(_:shown:)` (only what is news to it, never older than it).
    ///
    /// When the read fails, or finds nothing left to follow (never issued, expired, ended), the watcher is removed
    /// again here; otherwise it is the caller's until `activate` and the job's end, or `unwatch`.
    func watch(
        _ token: Token, as gatewayID: GatewayJobID, target: any PushTarget, tag: GatewayTag?,
        read: @escaping @Sendable () -> EventLoopFuture<JobLookup>
    ) -> EventLoopFuture<JobLookup> {
        let registered = eventLoop.submit {
            self.machine.value.watch(token, as: gatewayID, target: target, tag: tag)
            self.publishCounts()
        }
        let lookup = registered.flatMap { read() }
        lookup.whenComplete { result in
            if case .success(.found(let record)) = result, !record.state.isTerminal { return }
            self.unwatch(token)
        }
        return lookup
    }

    /// The watch's `WATCHING` was written, showing `shown`: its events flow from now on.
    func activate(_ token: Token, shown: JobRecord.Progress) {
        eventLoop.execute {
            self.run(self.machine.value.activate(token, shown: shown, nextRead: self.feed.nextReadNumber, readInFlight: self.feed.isReading(token.id)))
            self.publishCounts()
        }
    }

    func unwatch(_ token: Token) {
        eventLoop.execute {
            self.machine.value.unwatch(token)
            self.publishCounts()
        }
    }

    /// A waiter: `onEnd` is called once (on the tracker's loop) when the job ends or the gateway shuts down, unless
    /// `unwait` comes first. Once the future completes, the caller reads the job.
    func wait(_ token: Token, onEnd: @escaping JobTrackerStateMachine.WaitEnd) -> EventLoopFuture<Void> {
        eventLoop.submit {
            self.run(self.machine.value.wait(token, onEnd: onEnd).map { [$0] } ?? [])
            self.publishCounts()
        }
    }

    func unwait(_ token: Token) {
        eventLoop.execute {
            self.machine.value.unwait(token)
            self.publishCounts()
        }
    }

    /// A closing connection's watches and waits, in one hop.
    func removeAll(watches: [Token], waits: [Token]) {
        guard !(watches.isEmpty && waits.isEmpty) else { return }
        eventLoop.execute {
            for token in watches { self.machine.value.unwatch(token) }
            for token in waits { self.machine.value.unwait(token) }
            self.publishCounts()
        }
    }

    /// Shutting down: every pending WAIT is answered now (with the job's current state) instead of at its timeout.
    func endAllWaits() {
        eventLoop.execute {
            self.run(self.machine.value.endAllWaits())
            self.publishCounts()
        }
    }

    /// A presence check's answers about the followed jobs it was asked about: the jobs now lost (see
    /// `JobTrackerStateMachine.presenceAnswered`).
    func presenceAnswered(_ answers: [JobID: JobPresence], asked: [JobID], grace: Duration) async -> [JobID] {
        let now = ContinuousClock.now
        return (try? await eventLoop.submit { self.machine.value.presenceAnswered(answers, asked: asked, at: now, grace: grace) }.get()) ?? []
    }

    /// Re-reads every followed job (after notifications may have been lost, e.g. on a switch of Redis primary).
    func rereadFollowed() {
        feed.rereadFollowed()
    }

    // MARK: The change feed (on the tracker's loop)

    func wantsChange(of id: JobID) -> Bool {
        machine.value.wantsChange(of: id)
    }

    func followedJobs() -> [JobID] {
        machine.value.followedIDs
    }

    func changed(_ update: JobUpdate) {
        run(machine.value.read(update))
        publishCounts()
    }

    // MARK: Actions

    private func run(_ actions: [JobTrackerStateMachine.Action]) {
        for action in actions {
            switch action {
            case .push(let target, let response, let ending):
                target.push(response, ending: ending)
                statistics.eventsPushed.add(1, ordering: .relaxed)
            case .holdEnd(let target, let update, let token):
                target.holdEnd(update, for: token)
            case .readAgain(let id):
                feed.readAgain(id)
            case .endWait(let onEnd, let outcome):
                onEnd(outcome)
            case .jobEnded(let record, let pushes):
                statistics.metrics.jobEnded(record, pushes: pushes)
            }
        }
    }

    private func publishCounts() {
        followed.store(machine.value.followedCount, ordering: .relaxed)
        watchers.store(machine.value.watcherCount, ordering: .relaxed)
    }
}
