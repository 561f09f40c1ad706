import JobgateSupport
public import Logging
import NIOCore
import Redis
import ServiceLifecycle
import Synchronization

/// A job whose record changed, read after the change: the fields its followers see (`JobRecord.followedFields`).
/// `record == nil`: the record is gone (expired or deleted).
public struct JobUpdate: Sendable, Hashable {
    public var id: JobID
    public var record: JobRecord?
    /// The feed's read this came from (they are numbered from 1 in the order they are sent): what a follower read
    /// itself, on another connection, may be newer than an update from a read sent before it had that answer.
    public var readNumber: UInt64

    public init(id: JobID, record: JobRecord?, readNumber: UInt64) {
        self.id = id
        self.record = record
        self.readNumber = readNumber
    }
}

/// Who a `JobChangeFeed` works for: it decides which jobs are worth a read and takes what was read. Called on the
/// feed's event loop only, so its state needs no lock.
public protocol JobChangeConsumer: AnyObject, Sendable {
    /// Whether a change of this job concerns anyone: a notification is worth a read, a read worth delivering.
    func wantsChange(of id: JobID) -> Bool
    /// Every job to read again after notifications may have been lost (a resubscription, dropped messages, a sweep).
    func followedJobs() -> [JobID]
    /// A job as read after its change: the consumer decides what is news to whom.
    func changed(_ update: JobUpdate)
}

/// Turns Redis keyspace notifications into `JobUpdate`s for the jobs its consumer follows.
///
/// One subscription per process, to two exact keyevent channels (`hset`, `expired`), never a pattern per job.
/// Notifications are hints: each one marks the job dirty and a single reader re-reads dirty jobs in pipelined
/// batches, so the update always carries Redis's state. The reader lives on the event loop it is given, with the
/// subscriber and its own connection: notification → re-read → delivery runs without a hop through Swift
/// concurrency (each such hop is a thread wakeup, and push latency is mostly made of them). After every
/// (re)subscription, and after the subscriber dropped messages, every followed job is re-read; a slow sweep re-reads
/// them all again as a backstop. Which job is followed, and what is news to whom, is the consumer's alone.
/// Everything the feed starts (subscriber, sweep, the reader's connects and closes) is a child of `run()`.
public final class JobChangeFeed: Sendable {
    public let store: RedisJobStore
    private let subscriber: RedisSubscriber
    private let sweepInterval: Duration
    private let logger: Logger
    private let state = Mutex(State())
    private let ready = ReadinessLatch<Void>()
    /// The reader's side, on `eventLoop` only.
    private let reader: NIOLoopBoundBox<Reader>
    /// What the reader, on the event loop, asks `run()` to do off it: connecting and closing are async.
    private let readerWork = AsyncStream<ReaderWork>.makeStream()
    public var eventLoop: any EventLoop { reader.eventLoop }

    private struct Reader {
        var consumer: (any JobChangeConsumer)?
        var dirty: Set<JobID> = []
        var connection: RedisConnection?
        var isReading = false
        /// The jobs of the read on its way (empty when none is).
        var inFlight: [JobID] = []
        /// Reads sent so far (`JobUpdate.readNumber`).
        var readsSent: UInt64 = 0
        /// A read is due at the end of this event-loop tick (see `noteChange`).
        var isReadScheduled = false
        var isConnecting = false
        var failures = 0
        var isStopped = false
    }

    private enum ReaderWork {
        case connect(afterFailures: Int)
        case close(RedisConnection)
    }

    private struct State {
        var link = Link.down
        /// Counts subscriptions, so that a late confirmation of notifications is not taken for a newer connection's.
        var linkGeneration = 0
        var linkHandler: (@Sendable (Link, (any Error)?) -> Void)?
    }

    /// Whether the feed sees changes: subscribed, with keyspace notifications known to be on.
    public enum Link: Sendable, Hashable {
        case down
        /// Subscribed again after an outage; notifications are being checked (a restarted Redis may have them off).
        case notificationsUnconfirmed
        case up
    }

    static let readBatchSize = 1_000

    /// - Parameter eventLoop: where the subscriber, the reader and the consumer run (whoever owns the consumer
    ///   picks it, so that the consumer's own state lives there too).
    public init(store: RedisJobStore, eventLoop: any EventLoop, sweepInterval: Duration = .seconds(30), logger: Logger = Logger(label: "jobgate.jobstore.feed")) {
        self.store = store
        self.sweepInterval = sweepInterval
        self.logger = logger
        subscriber = RedisSubscriber(
            configuration: store.redis.configuration,
            channels: [store.schema.hashEventChannel, store.schema.expiredEventChannel],
            eventLoop: eventLoop,
            logger: logger
        )
        reader = NIOLoopBoundBox.makeBoxSendingValue(Reader(), eventLoop: eventLoop)
    }

    /// Returns once the first subscription is confirmed: a job followed from then on misses no change. Throws
    /// `CancellationError` when cancelled first, or why the feed stopped when it stopped before that.
    public func waitUntilReady() async throws {
        try await ready.wait()
    }

    // MARK: The link to Redis

    /// Tells `handler` each change of ``link`` (with the error when it went down), as it happens. Call it before
    /// `run()`. The first subscription counts as `up`: whoever runs the feed checks notifications before it starts.
    public func onLinkChange(_ handler: @escaping @Sendable (Link, (any Error)?) -> Void) {
        state.withLock { $0.linkHandler = handler }
    }

    private func subscriberLinkChanged(_ change: RedisSubscriberLink) {
        let (handler, link, error) = state.withLock { state -> ((@Sendable (Link, (any Error)?) -> Void)?, Link, (any Error)?) in
            let old = state.link
            switch change {
            case .subscribed(let isReconnect):
                state.linkGeneration += 1
                state.link = isReconnect ? .notificationsUnconfirmed : .up
                return (old == state.link ? nil : state.linkHandler, state.link, nil)
            case .lost(let error):
                state.link = .down
                return (old == .down ? nil : state.linkHandler, .down, error)
            }
        }
        handler?(link, error)
    }

    private func notificationsConfirmed(generation: Int) {
        let handler = state.withLock { state -> (@Sendable (Link, (any Error)?) -> Void)? in
            guard state.linkGeneration == generation, state.link == .notificationsUnconfirmed else { return nil }
            state.link = .up
            return state.linkHandler
        }
        handler?(.up, nil)
    }

    // MARK: Running

    /// Runs the feed for `consumer` (called on the feed's event loop) until cancelled or a graceful shutdown; once
    /// it returns, nothing the feed started is still running and its connections are closed.
    public func run(consumer: any JobChangeConsumer) async throws {
        try await eventLoop.submit {
            self.reader.value.consumer = consumer
            // Connected before the first notification, which should not wait for a connection to be set up.
            self.connectReader()
        }.get()
        subscriber.onMessage { message in self.noteChange(message) }
        subscriber.onLinkChange { change in self.subscriberLinkChanged(change) }
        do {
            try await runUntilStopped()
        } catch {
            await stop(error)
            throw error
        }
        await stop(CancellationError())
    }

    private func runUntilStopped() async throws {
        try await cancelWhenGracefulShutdown {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await self.subscriber.run() }
                group.addTask { await self.sweep() }
                group.addTask { await self.doReaderWork() }
                for await event in self.subscriber.events {
                    if case .subscribed(isReconnect: true) = event {
                        // A restarted Redis forgets a CONFIG SET that was not also written to redis.conf.
                        group.addTask { await self.enableNotifications() }
                    }
                    self.handle(event)
                }
                group.cancelAll()
            }
        }
    }

    /// A notification, on the event loop: re-read the job if its change concerns anyone. The read waits for the end of
    /// this tick: every notification that came in the same socket read joins it, so a job written several times in
    /// a row (a `MULTI`, a worker's start and progress) is read once, and many jobs in one round trip.
    private func noteChange(_ message: RedisPubSubMessage) {
        guard let id = store.schema.jobID(fromKey: String(buffer: message.payload)),
            reader.value.consumer?.wantsChange(of: id) == true
        else { return }
        reader.value.dirty.insert(id)
        guard !reader.value.isReadScheduled else { return }
        reader.value.isReadScheduled = true
        eventLoop.execute {
            self.reader.value.isReadScheduled = false
            self.readIfIdle()
        }
    }

    /// On the event loop: the number the next read will carry; every update numbered lower was read before now.
    public var nextReadNumber: UInt64 { reader.value.readsSent + 1 }

    /// On the event loop: whether a read of `id` is on its way (what it brings was read before now). A linear search
    /// of at most one batch, asked once per `WATCH`: cheaper than keeping a set of every batch.
    public func isReading(_ id: JobID) -> Bool { reader.value.inFlight.contains(id) }

    /// On the event loop: reads `id` again, in the next read (sent now unless one is on its way).
    public func readAgain(_ id: JobID) {
        reader.value.dirty.insert(id)
        readIfIdle()
    }

    /// Reads every job the consumer follows again (from any thread): after notifications may have been lost.
    public func rereadFollowed() {
        eventLoop.execute { self.rereadFollowedOnLoop() }
    }

    private func rereadFollowedOnLoop() {
        guard let consumer = reader.value.consumer else { return }
        reader.value.dirty.formUnion(consumer.followedJobs())
        readIfIdle()
    }

    private func handle(_ event: RedisSubscriberEvent) {
        switch event {
        case .message:
            break  // messages come through `onMessage`, on the event loop
        case .subscribed, .messagesDropped:
            // Messages may have been lost: re-read everything followed. Ready after that: what is followed from
            // then on is read only when it changes.
            eventLoop.execute {
                self.rereadFollowedOnLoop()
                self.ready.succeed()
            }
            logger.debug("job change feed subscribed; re-reading followed jobs")
        }
    }

    /// Switches keyspace notifications on again, retrying until Redis takes it (its command connections may
    /// still be backing off from the outage), then re-reads everything followed: changes made while they were
    /// off sent no notification.
    private func enableNotifications() async {
        var failures = 0
        while !Task.isCancelled {
            do {
                // The subscription this check is for: one made while it runs may be to a Redis restarted since.
                let generation = state.withLock { $0.linkGeneration }
                try await KeyspaceNotifications.ensureEnabled(on: store.redis)
                notificationsConfirmed(generation: generation)
                rereadFollowed()
                return
            } catch {
                failures += 1
                if failures == 5 {
                    logger.error("keyspace notifications are still off after a reconnect", metadata: ["jobstore.error": "\(error)"])
                }
                await Self.pause(afterFailures: failures)
            }
        }
    }

    /// Between retries against a Redis that is down or restarting: 100 ms doubling to 2 s.
    private static let backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(2))

    private static func pause(afterFailures failures: Int) async {
        try? await Task.sleep(for: backoff.delay(afterFailures: failures))
    }

    private func sweep() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: sweepInterval)
            rereadFollowed()
        }
    }

    // MARK: Reading, on the event loop

    /// The single reader: re-reads dirty jobs in pipelined batches, one batch at a time (so a job's updates are
    /// delivered in order), and delivers what changed.
    private func readIfIdle() {
        guard !reader.value.isReading, !reader.value.isStopped, let consumer = reader.value.consumer, !reader.value.dirty.isEmpty else { return }
        guard let connection = reader.value.connection else { return connectReader() }
        let batch = Array(reader.value.dirty.prefix(Self.readBatchSize))
        reader.value.dirty.subtract(batch)
        reader.value.isReading = true
        reader.value.inFlight = batch
        reader.value.readsSent += 1
        let readNumber = reader.value.readsSent
        connection.pipelineFuture(store.followedReadCommands(batch)).assumeIsolated().whenComplete { result in
            self.reader.value.inFlight = []
            switch result {
            case .success(let replies):
                var unreadable: [JobID] = []
                for (id, reply) in zip(batch, replies) {
                    do {
                        let record = try RedisJobStore.followedRecord(id, from: reply)
                        // Asked again: whoever wanted it may have stopped following while it was read.
                        if consumer.wantsChange(of: id) { consumer.changed(JobUpdate(id: id, record: record, readNumber: readNumber)) }
                    } catch {
                        unreadable.append(id)
                        self.logger.warning("cannot re-read a changed job", metadata: ["job.id": "\(id)", "jobstore.error": "\(error)"])
                    }
                }
                guard !unreadable.isEmpty else {
                    self.reader.value.failures = 0
                    self.reader.value.isReading = false
                    return self.readIfIdle()
                }
                // An error reply (Redis still loading after a restart, a key that is not a hash): the others are
                // delivered; these stay dirty and are read again after a pause.
                self.reader.value.dirty.formUnion(unreadable)
                self.reader.value.failures += 1
                self.eventLoop.scheduleTask(in: TimeAmount(Self.backoff.delay(afterFailures: self.reader.value.failures))) {
                    self.reader.value.isReading = false
                    self.readIfIdle()
                }
            case .failure(let error):
                // The connection is gone: keep them dirty and read again on a new one (the resubscription after a
                // Redis restart re-reads everything too).
                self.reader.value.isReading = false
                self.reader.value.dirty.formUnion(batch)
                self.reader.value.connection = nil
                self.close(connection)
                self.reader.value.failures += 1
                self.logger.warning("cannot re-read changed jobs", metadata: ["jobstore.error": "\(error)", "jobstore.jobs": "\(batch.count)"])
                self.connectReader()
            }
        }
    }

    /// Has `run()` open the reader's connection (on its event loop), pausing first after failures.
    private func connectReader() {
        guard !reader.value.isConnecting, !reader.value.isStopped else { return }
        reader.value.isConnecting = true
        readerWork.continuation.yield(.connect(afterFailures: reader.value.failures))
    }

    /// Has `run()` close a connection the reader no longer uses (at once, should `run()` be over).
    private func close(_ connection: RedisConnection) {
        if case .terminated = readerWork.continuation.yield(.close(connection)) {
            connection.startClosing()
        }
    }

    /// The reader's connects and closes, one at a time (it has at most one connection), until cancelled.
    private func doReaderWork() async {
        for await work in readerWork.stream {
            switch work {
            case .connect(let failures): await openReader(afterFailures: failures)
            case .close(let connection): await connection.close()
            }
        }
    }

    private func openReader(afterFailures failures: Int) async {
        if failures > 0 { await Self.pause(afterFailures: failures) }
        var connection: RedisConnection?
        if !Task.isCancelled {
            do {
                connection = try await RedisConnection.connect(configuration: store.redis.configuration, eventLoop: eventLoop, logger: logger)
            } catch {
                logger.debug("job change feed cannot connect its reader", metadata: ["jobstore.error": "\(error)"])
            }
        }
        eventLoop.execute { [connection] in
            self.reader.value.isConnecting = false
            guard let connection, !self.reader.value.isStopped else {
                if let connection { self.close(connection) }
                self.reader.value.failures += 1
                if !self.reader.value.isStopped { self.connectReader() }
                return
            }
            self.reader.value.connection = connection
            self.readIfIdle()
        }
    }

    /// Once the work above has ended: no more reads, the reader's connection closed, and whoever still waits for the
    /// feed to be ready told why it never will be.
    private func stop(_ reason: any Error) async {
        ready.resolve(.failure(reason))
        readerWork.continuation.finish()
        let connection = try? await eventLoop.submit {
            self.reader.value.isStopped = true
            defer { self.reader.value.connection = nil }
            return self.reader.value.connection
        }.get()
        await connection?.close()
    }
}
