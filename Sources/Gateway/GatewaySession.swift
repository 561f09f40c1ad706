import Gearman
import GatewayProtocol
import JobStore
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// What every session of a gateway shares (a class: each of possibly 10,000 sessions holds a reference, not a copy).
final class SessionServices: Sendable {
    let backend: GatewayBackend
    let tracker: JobTracker
    /// Where subscriptions get their events: the functions' completion logs.
    let logHub: CompletionLogHub
    let submits: BackendBatcher<GatewayBackend.Submission, GatewayBackend.Submitted>
    let lookups: BackendBatcher<GatewayJobID, JobLookup>
    let live: LiveConfiguration
    /// Reads the results (or reasons) of finished records found by `lookups`; nil where the record expired since.
    let outcomes: BackendBatcher<JobRecord, JobRecord?>
    let statistics: GatewayStatistics
    /// The open connections: a session leaves them when its channel closes.
    let connections: GatewayConnections
    let logger: Logger

    /// What is in effect now: a reload (SIGHUP) changes the secrets, limits and timeouts for what follows.
    var configuration: GatewayConfiguration { live.value }

    init(
        backend: GatewayBackend, tracker: JobTracker, logHub: CompletionLogHub, configuration: LiveConfiguration, statistics: GatewayStatistics,
        logger: Logger
    ) {
        self.backend = backend
        self.tracker = tracker
        self.logHub = logHub
        self.submits = BackendBatcher { submissions, turn in await backend.submit(submissions, turn: turn) }
        self.lookups = BackendBatcher { ids, _ in await backend.lookUp(ids) }
        self.outcomes = BackendBatcher { records, _ in await backend.outcomes(of: records) }
        self.live = configuration
        self.statistics = statistics
        self.connections = GatewayConnections(configuration: configuration, statistics: statistics)
        self.logger = logger
    }
}

/// A request's reply: the responses to write, and what to do around writing them.
struct SessionReply {
    var responses: [GatewayResponse]
    var effect: SessionEffect?
    /// Result bytes its last response carries that were reserved from the lookup budget, released once written.
    var charge = 0

    init(_ responses: GatewayResponse..., then effect: SessionEffect? = nil) {
        self.responses = responses
        self.effect = effect
    }

    /// Its bytes on the wire (an estimate), but for those the lookup budget bounds, for the output bound.
    var size: Int { responses.reduce(0) { $0 + OutputBacklog.size(of: $1) } - charge }
}

/// Tracker changes that happen exactly when a reply is written: no event comes before the reply that starts it, and
/// none that the tracker handed over after the reply that stops it (events already on their way may still follow).
enum SessionEffect {
    /// After `WATCHING`: the watch's events flow from now on. (Indirect: a record is large, and every reply slot of
    /// every connection has room for an effect.)
    indirect case activate(JobTracker.Token, shown: JobRecord)
    /// After `SUBSCRIBED`: the subscription reads its function's completion log from there.
    case subscribe(LogSubscriptionStart)
    /// Before `UNWATCHED`: the watch the connection had when it sent `UNWATCH` (not one a later `WATCH` made).
    case unwatch(JobTracker.Token)
    /// Before `UNSUBSCRIBED`.
    case unsubscribe(String)
    /// After `BYE`.
    case close
}

/// One client connection, on its event loop: requests answered strictly in order, events pushed between replies.
///
/// Requests start as they are read (a pipelined burst of `SUBMIT`s joins one backend batch), up to
/// `maximumOutstanding` at once, and reserve their reply's place in `ReplyOrder`, so replies still go out in
/// request order. Pushed events are written as they come; what the socket does not take waits in a bounded
/// `OutputBacklog`. While anything waits there, or too many requests are outstanding, the session stops reading;
/// while half the output limit of replies waits (held back behind a slow one, or unwritten) it starts no requests;
/// results are read only when the lookup budget has room for them. So replies are bounded without counting as the
/// client's fault, and a client that does not read is closed when its socket takes nothing for `--output-stall`.
final class GatewaySessionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = Never
    typealias OutboundOut = ByteBuffer

    /// Requests read and not yet answered before the session stops reading.
    static let maximumOutstanding = 512

    private struct PendingWait {
        var token: JobTracker.Token
        var gatewayID: GatewayJobID
        var request: GatewayRequest
        var timer: Scheduled<Void>?
    }

    private let services: SessionServices
    private var tracker: JobTracker { services.tracker }
    private var configuration: GatewayConfiguration { services.configuration }
    private var statistics: GatewayStatistics { services.statistics }

    private var context: ChannelHandlerContext!
    private var target: SessionPushTarget!
    /// Decodes requests in this handler rather than in a `ByteToMessageHandler` before it: one handler less per
    /// connection, no receive buffer kept once it is consumed (memory, with 10,000 connections), and a truncated
    /// last request still lets earlier replies out.
    private var decoder: GatewayRequestDecoder
    /// Received bytes not decoded yet (the start of a request).
    private var input: ByteBuffer?
    private var replies = ReplyOrder<SessionReply>()
    private var backlog: OutputBacklog
    /// Encoded responses not handed to the channel yet (written at the next flush).
    private var output: ByteBuffer?
    /// What the connection may do; nil until it authenticates (when the gateway requires it).
    private var access: SessionAccess?
    private var isAuthenticated: Bool { access != nil }
    /// A credential's `AUTH` is being checked (a slow KDF, off the event loop): no later request starts until it is
    /// answered, so that what a client pipelines behind its `AUTH` runs authenticated.
    private var isVerifyingAuth = false
    /// Reading, draining, closing or closed: what the session may still do.
    private var lifecycle = SessionLifecycle()
    /// Requests read but not started yet: at most `maximumOutstanding` run at once, and none start while the replies
    /// held back (behind a slow `WAIT`) are over half the output limit.
    private var unstarted = LazyQueue<Result<GatewayRequest, GatewayRequestError>>()
    /// Replies that are ready but wait for an earlier one, and their bytes.
    private var heldReplies = 0
    private var heldReplyBytes = 0
    private var flushIsScheduled = false
    private var lastRequest = NIODeadline.now()
    private var idleCheck: Scheduled<Void>?
    /// This connection's watches (for its limit and `UNWATCH`; a terminal event pushed ends one): the tracker holds
    /// who follows a job, the session what it follows.
    private var watches = SessionWatches()
    /// Watches whose `WATCHING` is not written yet, with their job's end if the tracker handed it over meanwhile:
    /// written right after `WATCHING`, before any later reply.
    private var pendingWatches: [JobTracker.Token: PendingWatch] = [:]

    private struct PendingWatch {
        var gatewayID: GatewayJobID
        var tag: GatewayTag?
        var end: JobUpdate?
    }
    /// The first slot neither answered nor with room for its result: only its result may be reserved next. So
    /// results are reserved in request order, and room is never held by a reply that waits for an earlier one which
    /// itself waits for room (a deadlock); replies held behind a slow `WAIT` hold no result bytes.
    private var outcomeReadFrontier = 0
    /// The last sign that the socket takes output: a reply's result written, or the channel writable again.
    private var lastOutputProgress = NIODeadline.now()

    /// What only some connections use, allocated on first use: an idle watcher holds none of it (memory, with 10,000
    /// of them). Read through the properties below, as nothing until set; cleared through `occasionalState?`, which
    /// allocates nothing.
    private final class Occasional {
        /// `WAIT`s (and `SUBMIT wait=`) in progress, by reply slot.
        var waits: [Int: PendingWait] = [:]
        /// Functions subscribed to, reserved when `SUBSCRIBE` is read (for its limit).
        var subscriptions: Set<String> = []
        /// Bytes of this connection's `SUBMIT` blocks counted in the gateway's input bound (`inputBufferLimit`): from
        /// the moment a block's line is read until its submission is answered, or the session ends.
        var heldInput = 0
        /// The length of the block the decoder reads now, admitted by `admit(_:)`.
        var admittedBlock: Int?
        /// When the request now arriving began, while one is unfinished (for `requestTimeout`).
        var requestStarted: NIODeadline?
        var requestCheck: Scheduled<Void>?
        var authFailures = 0
        var lastAuthFailureAnswer = NIODeadline.uptimeNanoseconds(0)
        /// Result bytes this connection's lookups reserved and the socket has not taken yet (`--max-lookup-bytes`).
        var heldOutcomes = OutcomeLanes.Held()
        /// Results to read once there is room for them, by reply slot.
        var outcomeReads: [Int: (bytes: Int, read: () -> Void)] = [:]
        /// Subscriptions, by function: where each is in its completion log.
        var logSubscriptions: [String: LogSubscription] = [:]
        /// Slots from `outcomeReadFrontier` on whose results have room reserved.
        var reservedOutcomeSlots: Set<Int> = []
        /// The bytes of the reservation this connection waits for in the lookup budget, if any.
        var outcomeBytesReserving: Int?
        /// Set while output waits for the socket (`--output-stall`): the channel is not writable, or results are held.
        var stallCheck: Scheduled<Void>?
    }
    private var occasionalState: Occasional?
    private var occasional: Occasional {
        if let occasionalState { return occasionalState }
        let state = Occasional()
        occasionalState = state
        return state
    }
    private var waits: [Int: PendingWait] {
        get { occasionalState?.waits ?? [:] }
        _modify { yield &occasional.waits }
    }
    private var subscriptions: Set<String> {
        get { occasionalState?.subscriptions ?? [] }
        _modify { yield &occasional.subscriptions }
    }
    private var heldInput: Int {
        get { occasionalState?.heldInput ?? 0 }
        set { if newValue != 0 || occasionalState != nil { occasional.heldInput = newValue } }
    }
    private var admittedBlock: Int? {
        get { occasionalState?.admittedBlock }
        set { if newValue != nil || occasionalState != nil { occasional.admittedBlock = newValue } }
    }
    private var requestStarted: NIODeadline? {
        get { occasionalState?.requestStarted }
        set { if newValue != nil || occasionalState != nil { occasional.requestStarted = newValue } }
    }
    private var requestCheck: Scheduled<Void>? {
        get { occasionalState?.requestCheck }
        set { if newValue != nil || occasionalState != nil { occasional.requestCheck = newValue } }
    }
    private var authFailures: Int {
        get { occasionalState?.authFailures ?? 0 }
        set { occasional.authFailures = newValue }
    }
    private var lastAuthFailureAnswer: NIODeadline {
        get { occasionalState?.lastAuthFailureAnswer ?? .uptimeNanoseconds(0) }
        set { occasional.lastAuthFailureAnswer = newValue }
    }
    private var heldOutcomes: OutcomeLanes.Held {
        get { occasionalState?.heldOutcomes ?? OutcomeLanes.Held() }
        _modify { yield &occasional.heldOutcomes }
    }
    private var outcomeReads: [Int: (bytes: Int, read: () -> Void)] {
        get { occasionalState?.outcomeReads ?? [:] }
        _modify { yield &occasional.outcomeReads }
    }
    private var logSubscriptions: [String: LogSubscription] {
        get { occasionalState?.logSubscriptions ?? [:] }
        _modify { yield &occasional.logSubscriptions }
    }
    private var reservedOutcomeSlots: Set<Int> {
        get { occasionalState?.reservedOutcomeSlots ?? [] }
        _modify { yield &occasional.reservedOutcomeSlots }
    }
    private var outcomeBytesReserving: Int? {
        get { occasionalState?.outcomeBytesReserving }
        set { if newValue != nil || occasionalState != nil { occasional.outcomeBytesReserving = newValue } }
    }
    private var stallCheck: Scheduled<Void>? {
        get { occasionalState?.stallCheck }
        set { if newValue != nil || occasionalState != nil { occasional.stallCheck = newValue } }
    }

    /// `tlsPeerSubject`: the subject (`CN=…,O=…`) of the client certificate verified under mutual TLS
    /// (`--tls-client-ca`), nil otherwise; only its access is kept.
    init(services: SessionServices, tlsPeerSubject: String? = nil) {
        self.services = services
        self.decoder = GatewayRequestDecoder(
            maximumLineLength: services.configuration.maximumLineLength,
            maximumPayloadSize: services.configuration.maximumPayloadSize
        )
        self.backlog = OutputBacklog(limit: services.configuration.outputBufferLimit)
        self.access = services.configuration.requiresAuthentication ? nil : .everything
        // Mutual TLS: a verified client certificate that a credential lists is that credential, without AUTH.
        if let subject = tlsPeerSubject, let credential = services.configuration.credentials?.credential(forSubject: subject) {
            self.access = .credential(name: credential.name)
        }
    }

    // MARK: Lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        target = SessionPushTarget(handler: self, eventLoop: context.eventLoop)
        scheduleIdleCheck(in: TimeAmount(configuration.idleTimeout))
    }

    func channelInactive(context: ChannelHandlerContext) {
        run(lifecycle.channelClosed())
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        run(lifecycle.channelClosed())
        services.connections.remove(context.channel)
        self.context = nil  // the context holds this handler: without this, neither is ever freed
    }

    /// Carries out what the lifecycle decided.
    private func run(_ action: SessionLifecycle.Action) {
        switch action {
        case .none: break
        case .read: context.read()
        case .stopFollowing: stopFollowing()
        case .stopFollowingAndCloseWhenWritten(let waitsForOutput):
            stopFollowing()
            closeWhenWritten(waitsForOutput: waitsForOutput)
        case .closeWhenWritten(let waitsForOutput): closeWhenWritten(waitsForOutput: waitsForOutput)
        case .closeAfterPendingWrites: closeAfterPendingWrites()
        case .reportAndClose: break  // `overflowed(_:code:)` asked, and reports: only it knows why
        case .closeNow: context.close(promise: nil)
        case .endSession: endSession()
        }
    }

    private func endSession() {
        idleCheck?.cancel()
        requestCheck?.cancel()
        releaseInput(heldInput)
        stallCheck?.cancel()
        statistics.outcomes.release(heldOutcomes)
        for wait in waits.values { wait.timer?.cancel() }
        tracker.removeAll(watches: watches.tokens, waits: waits.values.map(\.token))
        watches.removeAll()
        pendingWatches = [:]
        endSubscriptions()
        occasionalState = nil  // waits, outcome reads, held outcomes, subscriptions…
        target.detach()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            do {
                var buffer = input ?? ByteBuffer()
                input = nil
                while lifecycle.startsRequests, let item = try decoder.decodeLast(buffer: &buffer, seenEOF: true, admittingBlock: admit) {
                    blockEnded(with: item)
                    received(item)
                }
            } catch {
                // A request that never arrived whole gets no reply; the ones before it still do.
                services.logger.debug("connection closed inside a request", metadata: ["gateway.error": "\(error)"])
            }
            run(lifecycle.inputEnded(allAnswered: allAnswered, waitsForOutput: !backlog.isEmpty))
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        services.logger.debug("connection failed", metadata: ["gateway.error": "\(error)"])
        run(lifecycle.errorCaught())
    }

    /// The client closed its side (`printf … | nc`), or the gateway shuts down: what was read is still answered,
    /// nothing is followed any more, then the connection closes.
    private func stopFollowing() {
        tracker.removeAll(watches: watches.tokens, waits: [])
        watches.removeAll()
        pendingWatches = [:]
        occasionalState?.subscriptions = []
        endSubscriptions()
    }

    /// No request is outstanding or waits to start.
    private var allAnswered: Bool { replies.outstanding == 0 && unstarted.isEmpty }

    /// Closes once everything queued has reached the socket; a client that does not read gets 5 s.
    private func closeWhenWritten(waitsForOutput: Bool) {
        let channel = context.channel
        let deadline = channel.eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
        channel.closeFuture.whenComplete { _ in deadline.cancel() }  // or it keeps the connection's memory 5 s
        if !waitsForOutput { closeAfterPendingWrites() }  // otherwise the backlog's drain does
    }

    private func closeAfterPendingWrites() {
        flushNow()
        let channel = context.channel
        // A zero-length write completes after every write before it.
        context.writeAndFlush(wrapOutboundOut(ByteBuffer())).whenComplete { _ in channel.close(promise: nil) }
    }

    // MARK: Reading

    func read(context: ChannelHandlerContext) {
        run(lifecycle.readRequested(canTakeMore: canTakeMore))
    }

    /// Room for more requests: nothing waits for the socket or to start, and more may start.
    private var canTakeMore: Bool {
        backlog.isEmpty && unstarted.isEmpty && mayStart
    }

    /// Replies are never the client's fault: rather than count them against the output limit, the session starts no
    /// requests while half of it waits, held back or unwritten (result bytes apart: the lookup budget bounds them).
    private var mayStart: Bool {
        !isVerifyingAuth && replies.outstanding < Self.maximumOutstanding && heldReplyBytes + backlog.bytes <= configuration.outputBufferLimit / 2
    }

    private func resumeReadingIfHeld() {
        run(lifecycle.roomMade(canTakeMore: canTakeMore))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard lifecycle.startsRequests else { return }
        var buffer = unwrapInboundIn(data)
        if var pending = input {
            input = nil
            pending.writeBuffer(&buffer)
            buffer = pending
        }
        // Bad requests come back as values (each answered with its ERR); the decoder bounds what it keeps.
        var decodedAny = false
        while lifecycle.startsRequests, let item = decoder.decode(buffer: &buffer, admittingBlock: admit) {
            decodedAny = true
            blockEnded(with: item)
            received(item)
        }
        if buffer.readableBytes > 0 && lifecycle.startsRequests {
            // The start of a line is copied out of the (possibly large) receive buffer; an admitted block arriving in
            // pieces keeps its buffer, which the next reads append to (its bytes are counted in the input bound).
            input = buffer.readableBytes < 4_096 || !decoder.isReadingBlock ? ByteBuffer(bytes: buffer.readableBytesView) : buffer
        }
        if input == nil && decoder.isAtLineStart {
            requestStarted = nil
        } else if requestStarted == nil || decodedAny {
            // The unfinished request began in this read (what came before it was decoded whole).
            requestStarted = .now()
            if requestCheck == nil { scheduleRequestCheck(in: TimeAmount(configuration.requestTimeout)) }
        }
    }

    /// Decides, once a `SUBMIT` line is read and before any of its block is, whether the block is read or skipped
    /// unread: a request that cannot succeed costs no memory however large its block.
    private func admit(_ block: GatewayBlockAnnouncement) -> GatewayRequestError? {
        // Not while an AUTH read before it still waits to start: it may succeed.
        if !isAuthenticated && unstarted.isEmpty && !isVerifyingAuth {
            return GatewayRequestError(tag: block.tag, code: .noAuth, message: "authenticate with AUTH first; the data block was skipped")
        }
        let limit = configuration.inputBufferLimit
        if statistics.inputBuffered.add(block.length, ordering: .relaxed).newValue > limit {
            statistics.inputBuffered.subtract(block.length, ordering: .relaxed)
            return GatewayRequestError(
                tag: block.tag,
                code: .busy,
                message: "the gateway holds its limit of \(limit) bytes of data blocks; this one was skipped, try again later"
            )
        }
        heldInput += block.length
        admittedBlock = block.length
        return nil
    }

    /// The decoder finished the admitted block (if any): a `SUBMIT` keeps its bytes counted until it is answered.
    private func blockEnded(with item: Result<GatewayRequest, GatewayRequestError>) {
        guard let length = admittedBlock else { return }
        admittedBlock = nil
        if case .success(let request) = item, case .submit = request.command { return }
        releaseInput(length)
    }

    private func releaseInput(_ bytes: Int) {
        let bytes = min(bytes, heldInput)  // all of it is released when the session ends, maybe before a SUBMIT's answer
        heldInput -= bytes
        statistics.inputBuffered.subtract(bytes, ordering: .relaxed)
    }

    private func received(_ item: Result<GatewayRequest, GatewayRequestError>) {
        guard lifecycle.startsRequests else { return }
        lastRequest = .now()
        if unstarted.isEmpty && mayStart {
            start(item)
        } else {
            unstarted.append(item)
        }
    }

    /// Starts what waited, as far as the limits allow.
    private func startUnstarted() {
        while lifecycle.startsRequests, mayStart, let item = unstarted.popFirst() {
            start(item)
        }
        if !lifecycle.startsRequests { unstarted.removeAll() }
    }

    private func start(_ item: Result<GatewayRequest, GatewayRequestError>) {
        statistics.commands.add(1, ordering: .relaxed)
        switch item {
        case .success(let request):
            statistics.metrics.countCommand(request.command.verb)
            handle(request, slot: replies.reserve())
        case .failure(let error):
            statistics.protocolErrors.add(1, ordering: .relaxed)
            answer(replies.reserve(), SessionReply(error.response))
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushNow()
        context.fireChannelReadComplete()
    }

    // MARK: Requests

    private func handle(_ request: GatewayRequest, slot: Int) {
        switch request.command {
        case .hello, .ping, .health, .quit, .auth: break
        default:
            guard isAuthenticated else {
                if case .submit(let submission) = request.command { releaseInput(submission.payload.readableBytes) }
                return answer(slot, SessionReply(request.reply(.error(code: .noAuth, message: "authenticate with AUTH first"))))
            }
        }
        // The one place verbs meet scopes; reads by id are checked again once the job's function is known.
        if let refusal = access?.refusal(of: request.command, in: configuration.credentials) {
            if case .submit(let submission) = request.command { releaseInput(submission.payload.readableBytes) }
            return answer(slot, SessionReply(request.reply(SessionAccess.refused(refusal))))
        }
        switch request.command {
        case .hello:
            let info = GatewayServerInfo(
                version: JobGateVersion.current,
                authenticationRequired: configuration.requiresAuthentication,
                maximumPayloadSize: configuration.maximumPayloadSize
            )
            answer(slot, SessionReply(request.reply(.hello(info))))
        case .ping:
            answer(slot, SessionReply(request.reply(.pong)))
        case .auth(let name, let secret):
            authenticate(name: name, secret: secret, request: request, slot: slot)
        case .quit:
            run(lifecycle.requestsStopped())
            answer(slot, SessionReply(request.reply(.bye), then: .close))
        case .stats:
            answer(slot, SessionReply(request.reply(.stats(statistics.snapshot(watchedJobs: tracker.followedCount)))))
        case .health:
            answer(slot, SessionReply(request.reply(.health(statistics.backends.health()))))
        case .submit(let submission):
            let namespaced = GatewayBackend.Submission(request: submission, namespace: access?.coalescingNamespace)
            services.submits.enqueue(namespaced, on: context.eventLoop).assumeIsolated().whenComplete { result in
                self.releaseInput(submission.payload.readableBytes)
                guard !self.lifecycle.isClosed else { return }
                switch result {
                case .success(let submitted):
                    let gatewayID = GatewayJobID(rawValue: submitted.id.rawValue)!
                    if let milliseconds = submission.waitMilliseconds {
                        self.wait(for: gatewayID, milliseconds: milliseconds, request: request, slot: slot)
                    } else {
                        self.answer(slot, SessionReply(request.reply(submitted.created ? .created(gatewayID) : .exists(gatewayID))))
                    }
                case .failure(let error):
                    self.answer(slot, Self.failure(error, request))
                }
            }
        case .status(let gatewayID):
            lookUp(gatewayID, request: request, slot: slot) { lookup in
                switch lookup {
                case .found(let record): self.answer(slot, SessionReply(request.reply(.status(gatewayID, Self.status(record)))))
                case .expired: self.answer(slot, SessionReply(request.reply(.status(gatewayID, GatewayJobStatus(.expired)))))
                case .notFound: self.answer(slot, SessionReply(request.reply(Self.notFound(gatewayID))))
                }
            }
        case .result(let gatewayID):
            lookUp(gatewayID, request: request, slot: slot) { lookup in
                switch lookup {
                case .found(let record) where record.state.isTerminal: self.answerOutcome(record, gatewayID, request: request, slot: slot)
                case .found(let record): self.answer(slot, SessionReply(request.reply(.pending(gatewayID, Self.status(record)))))
                case .expired: self.answer(slot, SessionReply(request.reply(.expired(gatewayID))))
                case .notFound: self.answer(slot, SessionReply(request.reply(Self.notFound(gatewayID))))
                }
            }
        case .wait(let gatewayID, let milliseconds):
            wait(for: gatewayID, milliseconds: milliseconds, request: request, slot: slot)
        case .watch(let gatewayID):
            watch(gatewayID, request: request, slot: slot)
        case .unwatch(let gatewayID):
            let token = JobID(rawValue: gatewayID.rawValue).flatMap { watches[$0] }
            answer(slot, SessionReply(request.reply(.unwatched(gatewayID)), then: token.map { .unwatch($0) }))
        case .subscribe(let function, let from):
            let limit = configuration.maximumSubscriptionsPerConnection
            // Subscribing again to the same function always fits.
            guard subscriptions.contains(function.rawValue) || subscriptions.count < limit else {
                let error = GatewayReply.error(code: .tooManySubscriptions, message: "this connection already subscribes to \(limit) functions")
                return answer(slot, SessionReply(request.reply(error)))
            }
            subscriptions.insert(function.rawValue)
            subscribe(function, from: from, request: request, slot: slot)
        case .unsubscribe(let function):
            answer(slot, SessionReply(request.reply(.unsubscribed(function)), then: .unsubscribe(function.rawValue)))
        }
    }

    /// `AUTH <secret>` is checked against `--secrets` at once; `AUTH <name> <secret>` against the credentials file,
    /// on the thread pool (a slow KDF), one at a time per connection. An unknown name takes the wrong secret's path.
    private func authenticate(name: String?, secret: String, request: GatewayRequest, slot: Int) {
        let configuration = self.configuration
        guard configuration.requiresAuthentication else {
            access = .everything
            return answer(slot, SessionReply(request.reply(.ok)))
        }
        guard let name else {
            guard configuration.secrets.contains(where: { Self.constantTimeEqual($0, secret) }) else { return authFailed(request, slot: slot) }
            access = .everything
            return answer(slot, SessionReply(request.reply(.ok)))
        }
        // No credentials file: no name exists, and there is nothing a quick answer could tell.
        guard let credentials = configuration.credentials else { return authFailed(request, slot: slot, named: true) }
        isVerifyingAuth = true
        let verify = {
            NIOThreadPool.singleton.runIfActive(eventLoop: self.context.eventLoop) { credentials.verify(name: name, secret: secret)?.name }
                .assumeIsolated().whenComplete { result in
                    self.isVerifyingAuth = false
                    guard !self.lifecycle.isClosed else { return }
                    if case .success(let name?) = result {
                        self.access = .credential(name: name)
                        self.answer(slot, SessionReply(request.reply(.ok)))
                    } else {
                        self.authFailed(request, slot: slot, named: true)
                    }
                    self.startUnstarted()
                    self.resumeReadingIfHeld()
                }
        }
        // A guess after a delayed wrong one starts when that one is answered: --auth-delay paces the KDFs too.
        guard lastAuthFailureAnswer > .now() else { return verify() }
        context.eventLoop.assumeIsolated().scheduleTask(deadline: lastAuthFailureAnswer) { if !self.lifecycle.isClosed { verify() } }
    }

    /// A wrong secret: each further one is answered later (a timer, the event loop never waits), and the last one
    /// allowed closes the connection, so guessing costs time and connections.
    private func authFailed(_ request: GatewayRequest, slot: Int, named: Bool = false) {
        statistics.authFailures.add(1, ordering: .relaxed)
        authFailures += 1
        let isLast = authFailures >= configuration.maximumAuthFailures
        if isLast { run(lifecycle.requestsStopped()) }
        let wrong = named ? "wrong name or secret" : "wrong secret"
        let error = GatewayReply.error(code: .denied, message: isLast ? "\(wrong); too many wrong secrets, closing" : wrong)
        let reply = SessionReply(request.reply(error), then: isLast ? .close : nil)
        guard authFailures > 1 else { return answer(slot, reply) }
        // Counted from the previous wrong secret's answer, so pipelined guesses wait one after another.
        let delay = TimeAmount(configuration.authFailureDelay * (1 << min(authFailures - 2, 5)))
        lastAuthFailureAnswer = max(.now(), lastAuthFailureAnswer) + delay
        context.eventLoop.assumeIsolated().scheduleTask(deadline: lastAuthFailureAnswer) { self.answer(slot, reply) }
    }

    /// Looks a job up (batched with every session's lookups), without its result: `then` answers (a failure is
    /// answered here).
    private func lookUp(_ gatewayID: GatewayJobID, request: GatewayRequest, slot: Int, then found: @escaping (JobLookup) -> Void) {
        readableLookup(gatewayID).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let lookup): found(lookup)
            case .failure(let error): self.answer(slot, Self.failure(error, request))
            }
        }
    }

    /// Looks a job up for a read by id: a job of a function the connection's credential may not read fails with
    /// `NOPERM`, which every lookup's failure path answers.
    private func readableLookup(_ gatewayID: GatewayJobID) -> EventLoopFuture<JobLookup> {
        Self.readableLookup(gatewayID, access: access, services: services, on: context.eventLoop)
    }

    /// `readableLookup(_:)` as any thread may start it (the job tracker, once a watcher is registered).
    private static func readableLookup(
        _ gatewayID: GatewayJobID, access: SessionAccess?, services: SessionServices, on eventLoop: any EventLoop
    ) -> EventLoopFuture<JobLookup> {
        let credentials = services.configuration.credentials
        return services.lookups.enqueue(gatewayID, on: eventLoop).flatMapThrowing { lookup in
            if case .found(let record) = lookup, access?.mayRead(function: record.function, in: credentials) == false {
                throw GatewayFailure(code: .noPermission, message: Self.unreadable(record))
            }
            return lookup
        }
    }

    private static func unreadable(_ record: JobRecord) -> String { "this credential may not read jobs of \(record.function)" }

    /// Answers with a finished job's outcome: DONE with the result, or FAILED with the reason.
    private func answerOutcome(_ record: JobRecord, _ gatewayID: GatewayJobID, request: GatewayRequest, slot: Int) {
        withOutcome(record, request: request, slot: slot) { record in
            SessionReply(request.reply(record.map { Self.outcome($0, gatewayID) } ?? .expired(gatewayID)))
        }
    }

    /// Reads a finished record's result (or reason) once this connection and the gateway have room for its bytes
    /// (`--max-lookup-bytes`, `--max-lookup-bytes-total`), and answers with what `reply` makes of the record with it
    /// (nil: the record expired meanwhile). The bytes stay reserved until the socket took the reply: however many
    /// lookups of a large result run, the gateway holds at most the budget of them, and pauses the rest.
    private func withOutcome(_ record: JobRecord, request: GatewayRequest, slot: Int, reply: @escaping (JobRecord?) -> SessionReply) {
        guard record.outcome == nil, record.outcomeSize > 0 else {
            var record = record  // read with its outcome (legacy jobs, ended waits), or an empty one
            if record.outcome == nil { if record.state == .done { record.result = ByteBuffer() } else { record.reason = ByteBuffer() } }
            return answer(slot, reply(record))
        }
        let bytes = record.outcomeSize
        outcomeReads[slot] = (bytes, {
            self.services.outcomes.enqueue(record, on: self.context.eventLoop).assumeIsolated().whenComplete { result in
                guard !self.lifecycle.isClosed else { return }
                switch result {
                case .success(let read?):
                    var answered = reply(read)
                    answered.charge = bytes
                    self.answer(slot, answered)
                case .success(nil):
                    self.outcomeWritten(bytes)
                    self.answer(slot, reply(nil))
                case .failure(let error):
                    self.outcomeWritten(bytes)
                    self.answer(slot, Self.failure(error, request))
                }
            }
        })
        startOutcomeRead()
    }

    /// Reserves room for the result of the frontier slot, if it waits for some: from this connection's share, then
    /// from the gateway's budget (granted in order, possibly later and on another thread).
    private func startOutcomeRead() {
        guard outcomeBytesReserving == nil, !lifecycle.isClosed else { return }
        while outcomeReadFrontier < replies.nextSlot,
            replies.isFilled(outcomeReadFrontier) || occasionalState?.reservedOutcomeSlots.remove(outcomeReadFrontier) != nil
        {
            outcomeReadFrontier += 1
        }
        let slot = outcomeReadFrontier
        guard let next = outcomeReads[slot] else { return }
        guard heldOutcomes.total == 0 || heldOutcomes.total + next.bytes <= configuration.maximumOutcomeBytesPerConnection else { return }
        let bytes = next.bytes
        outcomeBytesReserving = bytes
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        // Always a hop: a grant at once must not recurse through every read that fits.
        statistics.outcomes.reserve(bytes) { handler.eventLoop.execute { handler.value.outcomeReserved(bytes, slot: slot) } }
    }

    private func outcomeReserved(_ bytes: Int, slot: Int) {
        outcomeBytesReserving = nil
        guard !lifecycle.isClosed, let next = occasionalState?.outcomeReads.removeValue(forKey: slot) else { return statistics.outcomes.release(bytes) }
        heldOutcomes.add(bytes)
        reservedOutcomeSlots.insert(slot)
        watchForStall()
        next.read()
        startOutcomeRead()
    }

    /// The socket took a reply's result (or the read ended without one): its bytes are free again.
    private func outcomeWritten(_ bytes: Int) {
        // Nothing reserved (an event, a small reply), or the session ended and released everything.
        guard bytes > 0, heldOutcomes.total >= bytes else { return }
        heldOutcomes.remove(bytes)
        statistics.outcomes.release(bytes)
        startOutcomeRead()
    }

    /// WATCH: the tracker registers, then reads (subscribe, then read); events flow once `WATCHING` is written.
    private func watch(_ gatewayID: GatewayJobID, request: GatewayRequest, slot: Int) {
        guard let id = services.backend.issuedID(gatewayID) else {
            return answer(slot, SessionReply(request.reply(Self.notFound(gatewayID))))
        }
        let limit = configuration.maximumWatchesPerConnection
        let replaced = watches[id]
        // Watching a job again on the same connection replaces the earlier watch.
        guard replaced != nil || watches.count < limit else {
            let error = GatewayReply.error(code: .tooManyWatches, message: "this connection already watches \(limit) jobs")
            return answer(slot, SessionReply(request.reply(error)))
        }
        if let replaced { endWatch(replaced) }
        let token = tracker.makeToken(for: id)
        watches[id] = token
        pauseIdleCheck()
        pendingWatches[token] = PendingWatch(gatewayID: gatewayID, tag: request.tag)
        let (access, services, eventLoop) = (access, services, context.eventLoop)
        let read = tracker.watch(token, as: gatewayID, target: target, tag: request.tag) {
            Self.readableLookup(gatewayID, access: access, services: services, on: eventLoop)
        }
        read.hop(to: eventLoop).assumeIsolated().whenComplete { result in
            guard !self.lifecycle.isClosed else { return }  // the session's end took the watch away
            // Unless the job is live, the tracker removed the watcher: the session forgets it.
            switch result {
            case .failure(let error):
                self.forgetWatch(token)
                self.answer(slot, Self.failure(error, request))
            case .success(.notFound):
                self.forgetWatch(token)
                self.answer(slot, SessionReply(request.reply(Self.notFound(gatewayID))))
            case .success(.expired):
                self.forgetWatch(token)
                self.answer(slot, SessionReply(request.reply(.watching(gatewayID, GatewayJobStatus(.expired))), request.event(.expired(gatewayID))))
            case .success(.found(let record)) where record.state.isTerminal:
                let watching = request.reply(.watching(gatewayID, Self.status(record)))
                // The job had ended: its terminal event is part of this WATCH's answer, even when a later pipelined
                // WATCH of the same job has replaced this watch meanwhile (each WATCH gets its own).
                self.forgetWatch(token)
                self.withOutcome(record, request: request, slot: slot) { read in
                    SessionReply(watching, request.event(read.map { JobTrackerStateMachine.terminalEvent($0, gatewayID) } ?? .expired(gatewayID)))
                }
            case .success(.found(let record)):
                self.answer(slot, SessionReply(request.reply(.watching(gatewayID, Self.status(record))), then: .activate(token, shown: record)))
            }
        }
    }

    /// A watch ends: `UNWATCH`, a `WATCH` of the same job replaced it, or its job ended before `WATCHING` was written.
    private func endWatch(_ token: JobTracker.Token) {
        tracker.unwatch(token)
        forgetWatch(token)
    }

    /// The session's side of a watch's end.
    private func forgetWatch(_ token: JobTracker.Token) {
        if watches[token.id] == token { watches[token.id] = nil }
        pendingWatches[token] = nil
        if pendingWatches.isEmpty { pendingWatches = [:] }  // its storage, kept by each of 10,000 idle watchers otherwise
        resumeIdleCheck()
    }

    /// After `WATCHING`: the job's end if it came meanwhile, or the watch is live (the tracker sends what is news to
    /// it, never older than `record`).
    private func activate(_ token: JobTracker.Token, shown record: JobRecord) {
        guard let pending = pendingWatches.removeValue(forKey: token) else { return }  // replaced or ended meanwhile
        if pendingWatches.isEmpty { pendingWatches = [:] }
        guard let end = pending.end else { return tracker.activate(token, shown: record.progress) }
        var shown: JobRecord.Progress? = record.progress
        if let event = JobTrackerStateMachine.event(for: end, shown: &shown, as: pending.gatewayID, tag: pending.tag) { emit(event) }
        endWatch(token)
    }

    /// The end of a watched job that arrived before its `WATCHING` was written.
    fileprivate func heldEnd(_ update: JobUpdate, for token: JobTracker.Token) {
        pendingWatches[token]?.end = update
    }

    /// WAIT (and SUBMIT wait=): the outcome as soon as the job ends, or TIMEOUT with its state.
    private func wait(for gatewayID: GatewayJobID, milliseconds: UInt64, request: GatewayRequest, slot: Int) {
        guard !lifecycle.isClosed else { return }
        guard let id = services.backend.issuedID(gatewayID) else {
            return answer(slot, SessionReply(request.reply(Self.notFound(gatewayID))))
        }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let token = tracker.makeToken(for: id)
        let registered = tracker.wait(token) { outcome in
            handler.eventLoop.execute { handler.value.waitEnded(slot: slot, outcome) }
        }
        // The timeout runs from now, not from when the first read comes back.
        let timeout = min(Duration.milliseconds(Int64(clamping: milliseconds)), configuration.maximumWaitTimeout)
        let timer = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(timeout)) {
            self.tracker.unwait(token)
            self.waitEnded(slot: slot, .stopped)
        }
        waits[slot] = PendingWait(token: token, gatewayID: gatewayID, request: request, timer: timer)
        // Registered, then read: a job that ends after the read is answered by its waiter.
        registered.hop(to: context.eventLoop).assumeIsolated().whenComplete { _ in
            guard !self.lifecycle.isClosed, self.waits[slot] != nil else { return }
            self.readableLookup(gatewayID).assumeIsolated().whenComplete { result in
                // Whoever comes first answers: this read, the job's end, or the timer.
                guard let wait = self.waits[slot] else { return }
                if case .success(.found(let record)) = result, !record.state.isTerminal { return }  // the job's end or the timer answers
                self.tracker.unwait(token)
                wait.timer?.cancel()
                self.occasionalState?.waits[slot] = nil
                switch result {
                case .success(.found(let record)): self.answerOutcome(record, gatewayID, request: request, slot: slot)
                case .success(.expired): self.answer(slot, SessionReply(request.reply(.expired(gatewayID))))
                case .success(.notFound): self.answer(slot, SessionReply(request.reply(Self.notFound(gatewayID))))
                case .failure(let error): self.answer(slot, Self.failure(error, request))
                }
            }
        }
    }

    private func waitEnded(slot: Int, _ outcome: WaitOutcome) {
        guard let wait = occasionalState?.waits.removeValue(forKey: slot) else { return }
        wait.timer?.cancel()
        let (gatewayID, request) = (wait.gatewayID, wait.request)
        switch outcome {
        case .ended(let record?) where access?.mayRead(function: record.function, in: configuration.credentials) == false:
            answer(slot, SessionReply(request.reply(SessionAccess.refused(Self.unreadable(record)))))  // it ended before the lookup came back
        case .ended(let record?):
            answerOutcome(record, gatewayID, request: request, slot: slot)
        case .ended(nil):
            answer(slot, SessionReply(request.reply(.expired(gatewayID))))
        case .stopped:
            lookUp(gatewayID, request: request, slot: slot) { lookup in
                switch lookup {
                case .found(let record) where record.state.isTerminal: self.answerOutcome(record, gatewayID, request: request, slot: slot)
                case .found(let record): self.answer(slot, SessionReply(request.reply(.timeout(gatewayID, Self.status(record)))))
                case .expired, .notFound: self.answer(slot, SessionReply(request.reply(.expired(gatewayID))))
                }
            }
        }
    }

    // MARK: Writing

    /// Fills a reply slot and writes every reply that is now next in order.
    private func answer(_ slot: Int, _ reply: SessionReply) {
        guard !lifecycle.isClosed else { return }
        heldReplies += 1
        heldReplyBytes += reply.size
        for ready in replies.fill(slot, with: reply) {
            heldReplies -= 1
            heldReplyBytes -= ready.size
            write(ready)
        }
        guard !lifecycle.isClosed else { return }
        startOutcomeRead()  // the frontier may have moved on to a result waiting for room
        scheduleFlush()
        startUnstarted()
        resumeReadingIfHeld()
        run(lifecycle.requestAnswered(allAnswered: allAnswered, waitsForOutput: !backlog.isEmpty))
    }

    private func write(_ reply: SessionReply) {
        guard !lifecycle.isClosed else { return }  // an earlier reply overflowed the output
        switch reply.effect {
        case .unwatch(let token): endWatch(token)
        case .unsubscribe(let function):
            occasionalState?.subscriptions.remove(function)
            endSubscription(function)
        default: break
        }
        for (index, response) in reply.responses.enumerated() {
            emit(response, charge: index == reply.responses.count - 1 ? reply.charge : 0)
        }
        guard !lifecycle.isClosed else { return }
        switch reply.effect {
        case .activate(let token, let shown): activate(token, shown: shown)
        case .subscribe(let start): startSubscription(start)
        case .close: run(lifecycle.closeRequested(waitsForOutput: !backlog.isEmpty))
        case .unwatch, .unsubscribe, nil: break
        }
    }

    /// An event from the tracker; `ending`: the watch it ends.
    fileprivate func pushed(_ response: GatewayResponse, ending: JobTracker.Token?) {
        guard !lifecycle.isClosed else { return }
        if let ending, watches[ending.id] == ending {
            watches[ending.id] = nil
            resumeIdleCheck()
        }
        emit(response)
        scheduleFlush()
    }

    /// `charge`: result bytes the response holds from the lookup budget, released once the socket took them.
    private func emit(_ response: GatewayResponse, charge: Int = 0) {
        guard lifecycle.isOpen else { return outcomeWritten(charge) }
        guard backlog.isEmpty && context.channel.isWritable else {
            if !backlog.append(response, charge: charge) { overflowed() }
            return
        }
        send(response, charge: charge)
        if output!.readableBytes >= 64 * 1024 { writeOutput() }
    }

    /// Data blocks of at least this many bytes go to the socket as they are, not copied into `output`.
    static let blockWrittenAlone = 16 * 1024

    /// Encodes into `output`; a large block (or one whose bytes are charged) is written as it is: a result costs the
    /// one copy that was read from Redis, not a second one in an output buffer.
    private func send(_ response: GatewayResponse, charge: Int) {
        if output == nil { output = context.channel.allocator.buffer(capacity: 256) }
        guard let block = GatewayResponseEncoder.writeLeavingBlock(response, into: &output!) else { return }
        guard charge > 0 || block.readableBytes >= Self.blockWrittenAlone else {
            output!.writeImmutableBuffer(block)
            output!.writeString(GatewayResponseEncoder.blockEnd)
            return
        }
        writeOutput()
        if charge > 0 {
            writeInSlices(block) { self.outcomeWritten(charge) }
        } else {
            context.write(wrapOutboundOut(block), promise: nil)
        }
        output = context.channel.allocator.buffer(capacity: 256)
        output!.writeString(GatewayResponseEncoder.blockEnd)
    }

    /// A result's bytes are written in slices of this many (views of the one buffer, no copies), so each slice the
    /// socket takes shows progress: a client reading a large result slowly is not taken for one that does not read.
    static let progressSlice = 64 * 1024

    private func writeInSlices(_ block: ByteBuffer, then written: @escaping () -> Void) {
        var rest = block
        while let slice = rest.readSlice(length: min(Self.progressSlice, rest.readableBytes)), slice.readableBytes > 0 {
            let taken = context.eventLoop.makePromise(of: Void.self)
            let isLast = rest.readableBytes == 0
            taken.futureResult.assumeIsolated().whenComplete { _ in
                self.lastOutputProgress = .now()
                if isLast { written() }
            }
            context.write(wrapOutboundOut(slice), promise: taken)
            if isLast { return }
        }
        written()  // an empty block
    }

    private func writeOutput() {
        guard let buffer = output else { return }
        output = nil
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    private func flushNow() {
        writeOutput()
        context.flush()
    }

    /// One flush for everything written during this turn of the event loop (a batch of replies, a burst of events).
    private func scheduleFlush() {
        guard !flushIsScheduled else { return }
        flushIsScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.flushIsScheduled = false
            if !self.lifecycle.isClosed { self.flushNow() }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            lastOutputProgress = .now()
            while context.channel.isWritable, let (response, charge) = backlog.popFirst() {
                send(response, charge: charge)
                writeOutput()
            }
            flushNow()
            if backlog.isEmpty {
                run(lifecycle.outputDrained())
                startUnstarted()
                resumeReadingIfHeld()
                resumeSubscriptions()
            }
        } else {
            watchForStall()
        }
        context.fireChannelWritabilityChanged()
    }

    /// Output waits for the socket: a client that reads soon shows progress (the channel writable again, a result
    /// written); one that does not is closed after `--output-stall`, rather than keep its replies, and its share of
    /// the lookup budget, for ever.
    private func watchForStall() {
        guard stallCheck == nil, !lifecycle.isClosed else { return }
        lastOutputProgress = .now()
        scheduleStallCheck(in: TimeAmount(min(configuration.outputStallTimeout, configuration.contendedOutputStallTimeout)))
    }

    private func scheduleStallCheck(in delay: TimeAmount) {
        stallCheck = context.eventLoop.assumeIsolated().scheduleTask(in: delay) { self.checkStall() }
    }

    private func checkStall() {
        stallCheck = nil
        guard !lifecycle.isClosed, heldOutcomes.total > 0 || !context.channel.isWritable else { return }
        let timeout = holdsUpOthers ? configuration.contendedOutputStallTimeout : configuration.outputStallTimeout
        let quiet = NIODeadline.now() - lastOutputProgress
        guard quiet >= TimeAmount(timeout) else {
            // Checked again at the contended timeout at the latest: others may start waiting meanwhile.
            return scheduleStallCheck(in: min(TimeAmount(timeout) - quiet, TimeAmount(configuration.contendedOutputStallTimeout)))
        }
        overflowed("no output taken for \(timeout)")
    }

    /// Whether this connection holds large results while lookups of others wait for room in their lane.
    private var holdsUpOthers: Bool {
        guard heldOutcomes.large > 0 else { return false }
        let lane = statistics.outcomes.large
        let ownWaiting = outcomeBytesReserving.map { statistics.outcomes.lane(for: $0) === lane } ?? false
        return lane.waiting > (ownWaiting ? 1 : 0)
    }

    /// The client does not read: tell it, if the socket still takes it, and close rather than buffer more. (Also
    /// for a subscriber whose events were trimmed from the log before it read them, with `ERR TRIMMED`.)
    private func overflowed(_ reason: String = "output buffer limit exceeded", code: GatewayErrorCode = .slowConsumer) {
        guard lifecycle.outputFailed() == .reportAndClose else { return }
        if code == .slowConsumer { statistics.slowConsumersClosed.add(1, ordering: .relaxed) }
        services.logger.notice("closing a connection that does not read its replies", metadata: ["gateway.error": "\(code)"])
        let channel = context.channel
        var message = channel.allocator.buffer(capacity: 64)
        GatewayResponseEncoder.write(.reply(.error(code: code, message: "\(reason); closing")), into: &message)
        writeOutput()
        context.writeAndFlush(wrapOutboundOut(message)).whenComplete { _ in channel.close(promise: nil) }
        let deadline = channel.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
        channel.closeFuture.whenComplete { _ in deadline.cancel() }
        endSession()
    }

    // MARK: Subscriptions

    /// SUBSCRIBE: finds where the subscription starts in the function's completion log (a cursor older than what the
    /// log retains is refused with `ERR TRIMMED`); it starts reading from there once `SUBSCRIBED` is written.
    private func subscribe(_ function: GatewayFunctionName, from: GatewaySubscriptionStart?, request: GatewayRequest, slot: Int) {
        func subscribed(after cursor: GatewayLogCursor) -> SessionReply {
            let start = LogSubscriptionStart(
                function: function.rawValue, tag: request.tag, cursor: cursor, fromStart: from == .start, withCursors: from != nil
            )
            return SessionReply(request.reply(.subscribed(function)), then: .subscribe(start))
        }
        if from == .start { return answer(slot, subscribed(after: .start)) }
        let logHub = services.logHub
        let end = context.eventLoop.makePromise(of: (last: GatewayLogCursor, trimmedThrough: GatewayLogCursor).self)
        end.completeWithTask { try await logHub.end(of: function.rawValue) }
        end.futureResult.assumeIsolated().whenComplete { result in
            guard !self.lifecycle.isClosed else { return }
            switch result {
            case .failure(let error):
                if self.logSubscriptions[function.rawValue] == nil { self.occasionalState?.subscriptions.remove(function.rawValue) }
                self.answer(slot, SessionReply(request.reply(.error(code: .backendDown, message: "Redis: \(error)"))))
            case .success(let end):
                guard case .after(let cursor) = from else { return self.answer(slot, subscribed(after: end.last)) }
                guard end.trimmedThrough <= cursor else {
                    if self.logSubscriptions[function.rawValue] == nil { self.occasionalState?.subscriptions.remove(function.rawValue) }
                    let message = "the log of \(function) no longer holds what ended after \(cursor): entries up to \(end.trimmedThrough) were trimmed (--subscription-retention); resubscribe with from=start"
                    return self.answer(slot, SessionReply(request.reply(.error(code: .trimmed, message: message))))
                }
                self.answer(slot, subscribed(after: cursor))
            }
        }
    }

    /// `SUBSCRIBED` is written: follow the live log first, then replay up to it, so nothing falls in between.
    private func startSubscription(_ start: LogSubscriptionStart) {
        logSubscriptions[start.function] = LogSubscription(
            replay: SubscriptionReplay(after: start.cursor, fromStart: start.fromStart), tag: start.tag, withCursors: start.withCursors
        )
        services.logHub.follow(start.function, target)
        runSubscription(start.function) { $0.start() }
    }

    private func endSubscription(_ function: String) {
        guard occasionalState?.logSubscriptions.removeValue(forKey: function) != nil else { return }
        services.logHub.unfollow(function, target)
    }

    private func endSubscriptions() {
        for function in logSubscriptions.keys { services.logHub.unfollow(function, target) }
        occasionalState?.logSubscriptions = [:]
    }

    /// A run of a function's log that the hub read for every subscriber.
    fileprivate func logAdvanced(_ function: String, _ run: LogRun) {
        runSubscription(function) { $0.received(run) }
    }

    /// The output drained: paused subscriptions read on from their cursors.
    private func resumeSubscriptions() {
        for function in logSubscriptions.keys { runSubscription(function) { $0.resume() } }
    }

    /// Subscription events wait in the output up to half its limit; past that a subscription pauses by its cursor.
    private var hasRoomForEvents: Bool { backlog.bytes <= configuration.outputBufferLimit / 2 }

    private func runSubscription(_ function: String, _ event: (inout SubscriptionReplay) -> SubscriptionReplay.Action) {
        guard lifecycle.isOpen, var subscription = logSubscriptions[function] else { return }
        let action = event(&subscription.replay)
        logSubscriptions[function] = subscription
        switch action {
        case .none:
            break
        case .read(let cursor):
            readLog(function, after: cursor)
        case .deliver(let entries, let thenRead):
            var lastDelivered: GatewayLogCursor?
            for entry in entries {
                guard hasRoomForEvents else {
                    logSubscriptions[function]?.replay.outputFull(lastDelivered: lastDelivered)
                    statistics.subscriptionsPaused.add(1, ordering: .relaxed)
                    return scheduleFlush()
                }
                let event = subscription.withCursors ? GatewayEvent.logged(entry.event, cursor: entry.cursor) : entry.event
                emit(.event(event, tag: subscription.tag))
                statistics.eventsPushed.add(1, ordering: .relaxed)
                lastDelivered = entry.cursor
            }
            scheduleFlush()
            if let thenRead { readLog(function, after: thenRead) }
        case .trimmed(let after, let through):
            overflowed("the log of \(function) trimmed what ended after \(after) (up to \(through)) before this subscriber read it", code: .trimmed)
        }
    }

    private func readLog(_ function: String, after cursor: GatewayLogCursor) {
        let logHub = services.logHub
        let read = context.eventLoop.makePromise(of: LogRun.self)
        read.completeWithTask { try await logHub.read(function, after: cursor) }
        read.futureResult.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let run):
                self.runSubscription(function) { $0.readFinished(run) }
            case .failure(let error):
                self.services.logger.debug("completion log read failed", metadata: ["job.function": "\(function)", "redis.error": "\(error)"])
                self.logSubscriptions[function]?.replay.readFailed()
                // Redis is away: read again in a moment (the hub's reader follows the live end meanwhile).
                self.context?.eventLoop.assumeIsolated().scheduleTask(in: .seconds(1)) { self.runSubscription(function) { $0.resume() } }
            }
        }
    }

    // MARK: Idle connections

    /// Closes a connection that sent no complete request for `idleTimeout`, waits for nothing and follows nothing:
    /// this also ends clients that trickle a request a byte at a time. One timer per connection, rescheduled for
    /// the earliest moment it can be idle.
    private func scheduleIdleCheck(in delay: TimeAmount) {
        idleCheck = context.eventLoop.assumeIsolated().scheduleTask(in: delay) { self.checkIdle() }
    }

    /// A connection that watches a job is never idle: it holds no timer meanwhile (each of 10,000 idle watchers
    /// would hold one), and gets one again once it watches nothing.
    private func pauseIdleCheck() {
        idleCheck?.cancel()
        idleCheck = nil
    }

    private func resumeIdleCheck() {
        guard idleCheck == nil, watches.isEmpty, lifecycle.isReading else { return }
        let timeout = TimeAmount(configuration.idleTimeout)
        let quiet = NIODeadline.now() - lastRequest
        scheduleIdleCheck(in: quiet >= timeout ? timeout : timeout - quiet)
    }

    private func checkIdle() {
        guard lifecycle.isOpen else { return }
        let timeout = TimeAmount(configuration.idleTimeout)
        let quiet = NIODeadline.now() - lastRequest
        guard quiet >= timeout, replies.outstanding == 0, watches.isEmpty, subscriptions.isEmpty else {
            return scheduleIdleCheck(in: quiet >= timeout ? timeout : timeout - quiet)
        }
        emit(.reply(.error(code: .idleTimeout, message: "no request for \(configuration.idleTimeout); closing")))
        run(lifecycle.closeRequested(waitsForOutput: !backlog.isEmpty))
    }

    // MARK: Requests that do not arrive

    private func scheduleRequestCheck(in delay: TimeAmount) {
        requestCheck = context.eventLoop.assumeIsolated().scheduleTask(in: delay) { self.checkRequestDeadline() }
    }

    /// Closes a connection whose unfinished request (a line or a block) began `requestTimeout` ago, dropping what it
    /// sent of it: the idle timeout alone would let a stalled block hold its memory for minutes.
    private func checkRequestDeadline() {
        requestCheck = nil
        guard lifecycle.isReading, let started = requestStarted else { return }
        let timeout = TimeAmount(configuration.requestTimeout)
        guard canTakeMore else {
            // The gateway, not the client, holds the request back: its time starts again once reading resumes.
            requestStarted = .now()
            return scheduleRequestCheck(in: timeout)
        }
        let elapsed = NIODeadline.now() - started
        guard elapsed >= timeout else { return scheduleRequestCheck(in: timeout - elapsed) }
        input = nil
        requestStarted = nil
        releaseInput(admittedBlock ?? 0)
        admittedBlock = nil
        run(lifecycle.requestsStopped())
        let error = GatewayReply.error(code: .requestTimeout, message: "a request took over \(configuration.requestTimeout) to arrive; closing")
        answer(replies.reserve(), SessionReply(.reply(error), then: .close))
    }

    // MARK: Helpers

    static func status(_ record: JobRecord) -> GatewayJobStatus {
        let state: GatewayJobState =
            switch record.state {
            case .queued: .queued
            case .running: .running
            case .done: .done
            case .failed: .failed
            }
        return GatewayJobStatus(state, numerator: UInt64(record.numerator), denominator: UInt64(record.denominator))
    }

    static func outcome(_ record: JobRecord, _ id: GatewayJobID) -> GatewayReply {
        record.state == .done ? .done(id, result: record.result ?? ByteBuffer()) : .failed(id, reason: record.reason ?? ByteBuffer())
    }

    static func notFound(_ id: GatewayJobID) -> GatewayReply {
        .error(code: .notFound, message: "no job \(id) was ever issued here")
    }

    private static func failure(_ error: any Error, _ request: GatewayRequest) -> SessionReply {
        let failure = error as? GatewayFailure ?? GatewayFailure(code: .internal, message: "\(error)")
        return SessionReply(request.reply(.error(code: failure.code, message: failure.message)))
    }

    /// Compares secrets without an early exit, so timing does not tell how much of a guess was right.
    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let left = Array(a.utf8)
        let right = Array(b.utf8)
        var difference = UInt8(truncatingIfNeeded: left.count ^ right.count)
        for index in 0..<max(left.count, right.count) {
            difference |= (index < left.count ? left[index] : 0) ^ (index < right.count ? right[index] : 0)
        }
        return difference == 0
    }
}

/// What `SUBSCRIBED` starts (`SessionEffect.subscribe`).
struct LogSubscriptionStart {
    let function: String
    let tag: GatewayTag?
    let cursor: GatewayLogCursor
    let fromStart: Bool
    /// `from=` was given: events carry `cursor=`.
    let withCursors: Bool
}

/// One subscription of a session.
private struct LogSubscription {
    var replay: SubscriptionReplay
    let tag: GatewayTag?
    let withCursors: Bool
}

/// The session as the job tracker and the completion logs see it: events hop to the session's event loop. Detached
/// when the session ends, so a tracker or hub that still holds it keeps no connection alive.
///
/// `NIOLoopBoundBox` written out: one allocation per connection instead of two (10,000 watchers: ~0.5 MiB).
final class SessionPushTarget: PushTarget, LogSubscriber, @unchecked Sendable {
    let eventLoop: any EventLoop
    /// Read and written on `eventLoop` only.
    private var handler: GatewaySessionHandler?

    init(handler: GatewaySessionHandler, eventLoop: any EventLoop) {
        self.handler = handler
        self.eventLoop = eventLoop
    }

    func push(_ response: GatewayResponse, ending: JobTracker.Token?) {
        if eventLoop.inEventLoop {
            handler?.pushed(response, ending: ending)
        } else {
            eventLoop.execute { self.handler?.pushed(response, ending: ending) }
        }
    }

    func holdEnd(_ update: JobUpdate, for watch: JobTracker.Token) {
        if eventLoop.inEventLoop {
            handler?.heldEnd(update, for: watch)
        } else {
            eventLoop.execute { self.handler?.heldEnd(update, for: watch) }
        }
    }

    func logAdvanced(_ function: String, _ run: LogRun) {
        eventLoop.execute { self.handler?.logAdvanced(function, run) }
    }

    /// On the event loop.
    func detach() {
        eventLoop.preconditionInEventLoop()
        handler = nil
    }
}

public enum JobGateVersion {
    public static let current = "0.1.0"
}
