import Gearman
import GatewayProtocol
import JobStore
import Logging
import NIOCore
import Synchronization

/// One client connection: requests answered strictly in order, events pushed between replies.
///
/// The request loop handles one request at a time (a `WAIT` holds back the replies of later pipelined
/// requests, as the protocol says) and queues its reply in the connection's outbox; a writer task drains the
/// outbox to the socket, so pushes never wait for a request and a slow reader is bounded by the outbox.
struct GatewaySession {
    let channel: NIOAsyncChannel<Result<GatewayRequest, GatewayRequestError>, GatewayResponse>
    let backend: GatewayBackend
    let hub: PushHub
    let configuration: GatewayConfiguration
    let statistics: GatewayStatistics
    let logger: Logger

    private var serverInfo: GatewayServerInfo {
        GatewayServerInfo(
            version: JobGateVersion.current,
            authenticationRequired: !configuration.secrets.isEmpty,
            maximumPayloadSize: configuration.maximumPayloadSize
        )
    }

    func run() async {
        let outbox = SessionOutbox(limit: configuration.outputBufferLimit) { [channel, statistics, logger] in
            // The client does not read: tell it if the socket still takes it, and close rather than buffer more.
            // Not through the writer, which may be stuck on a full socket, and without waiting long for the ERR.
            statistics.slowConsumersClosed.add(1, ordering: .relaxed)
            logger.notice("closing a connection that does not read its replies")
            let connection = channel.channel
            let message = GatewayResponse.reply(.error(code: GatewayErrorCode.slowConsumer, message: "output buffer limit exceeded; closing"))
            connection.writeAndFlush(message).whenComplete { _ in connection.close(promise: nil) }
            connection.eventLoop.scheduleTask(in: .seconds(1)) { connection.close(promise: nil) }
        }
        let lastRequest = LastActivity()
        do {
            try await channel.executeThenClose { inbound, outbound in
                await withDiscardingTaskGroup { group in
                    group.addTask { await closeWhenIdle(outbox, lastRequest: lastRequest) }
                    async let writing: Void = write(outbox, to: outbound)
                    await serve(inbound, outbox: outbox, lastRequest: lastRequest)
                    // Input ended (QUIT, EOF, shutdown): everything queued is still written, then the connection closes.
                    hub.removeAll(for: outbox)
                    outbox.close()
                    await writing
                    group.cancelAll()
                }
            }
        } catch {
            logger.debug("connection ended", metadata: ["gateway.error": "\(error)"])
        }
        hub.removeAll(for: outbox)
    }

    // MARK: Writing

    private func write(_ outbox: SessionOutbox, to outbound: NIOAsyncChannelOutboundWriter<GatewayResponse>) async {
        while true {
            switch await outbox.next() {
            case .response(let response):
                do {
                    try await outbound.write(response)
                } catch {
                    channel.channel.close(promise: nil)
                    return
                }
            case .overflowed:
                return  // the outbox's overflow handler closes the connection
            case .closed:
                return
            }
        }
    }


    /// Closes a connection that sent no complete request for `idleTimeout` and follows nothing: this also ends
    /// clients that trickle a request a byte at a time.
    private func closeWhenIdle(_ outbox: SessionOutbox, lastRequest: LastActivity) async {
        var wait = configuration.idleTimeout
        while !Task.isCancelled {
            // Sleep until the earliest moment the connection can be idle: one wakeup per timeout, not per second.
            try? await Task.sleep(for: wait)
            let quiet = lastRequest.elapsed
            wait = quiet >= configuration.idleTimeout ? configuration.idleTimeout : configuration.idleTimeout - quiet
            if quiet >= configuration.idleTimeout && !hub.isFollowing(outbox: outbox) {
                outbox.enqueue(.reply(.error(code: .idleTimeout, message: "no request for \(configuration.idleTimeout); closing")))
                outbox.close()
                try? await Task.sleep(for: .milliseconds(100))
                channel.channel.close(promise: nil)
                return
            }
        }
    }

    // MARK: Requests

    private func serve(
        _ inbound: NIOAsyncChannelInboundStream<Result<GatewayRequest, GatewayRequestError>>,
        outbox: SessionOutbox,
        lastRequest: LastActivity
    ) async {
        var isAuthenticated = configuration.secrets.isEmpty
        do {
            for try await item in inbound {
                lastRequest.touch()
                statistics.commands.add(1, ordering: .relaxed)
                let request: GatewayRequest
                switch item {
                case .success(let parsed):
                    request = parsed
                    statistics.metrics.countCommand(parsed.command.verb)
                case .failure(let error):
                    statistics.protocolErrors.add(1, ordering: .relaxed)
                    outbox.enqueue(error.response)
                    continue
                }
                switch request.command {
                case .hello, .ping, .quit, .auth: break
                default:
                    guard isAuthenticated else {
                        outbox.enqueue(request.reply(.error(code: .noAuth, message: "authenticate with AUTH first")))
                        continue
                    }
                }
                if case .auth(let secret) = request.command {
                    let accepted = configuration.secrets.isEmpty || configuration.secrets.contains { Self.constantTimeEqual($0, secret) }
                    if accepted { isAuthenticated = true }
                    outbox.enqueue(request.reply(accepted ? .ok : .error(code: .denied, message: "wrong secret")))
                    continue
                }
                if case .quit = request.command {
                    outbox.enqueue(request.reply(.bye))
                    return
                }
                do {
                    try await handle(request, outbox: outbox)
                } catch {
                    outbox.enqueue(request.reply(.error(code: error.code, message: error.message)))
                }
                guard outbox.isOpen else { return }
            }
        } catch {
            logger.debug("connection input ended", metadata: ["gateway.error": "\(error)"])
        }
    }

    private func handle(_ request: GatewayRequest, outbox: SessionOutbox) async throws(GatewayFailure) {
        switch request.command {
        case .hello:
            outbox.enqueue(request.reply(.hello(serverInfo)))
        case .ping:
            outbox.enqueue(request.reply(.pong))
        case .stats:
            outbox.enqueue(request.reply(.stats(statistics.snapshot(watchedJobs: hub.feed.followedCount))))
        case .submit(let submission):
            let (id, created) = try await backend.submit(submission)
            let gatewayID = GatewayJobID(rawValue: id.rawValue)!
            if let wait = submission.waitMilliseconds {
                outbox.enqueue(request.reply(try await waitForEnd(gatewayID, milliseconds: wait)))
            } else {
                outbox.enqueue(request.reply(created ? .created(gatewayID) : .exists(gatewayID)))
            }
        case .status(let gatewayID):
            switch try await backend.lookUp(gatewayID) {
            case .found(let record): outbox.enqueue(request.reply(.status(gatewayID, Self.status(record))))
            case .expired: outbox.enqueue(request.reply(.status(gatewayID, GatewayJobStatus(.expired))))
            case .notFound: throw Self.notFound(gatewayID)
            }
        case .result(let gatewayID):
            switch try await backend.lookUp(gatewayID) {
            case .found(let record):
                outbox.enqueue(request.reply(record.state.isTerminal ? Self.outcome(record, gatewayID) : .pending(gatewayID, Self.status(record))))
            case .expired: outbox.enqueue(request.reply(.expired(gatewayID)))
            case .notFound: throw Self.notFound(gatewayID)
            }
        case .wait(let gatewayID, let milliseconds):
            outbox.enqueue(request.reply(try await waitForEnd(gatewayID, milliseconds: milliseconds)))
        case .watch(let gatewayID):
            try await watch(gatewayID, request: request, outbox: outbox)
        case .unwatch(let gatewayID):
            if let id = JobID(rawValue: gatewayID.rawValue), let token = hub.watch(of: id, outbox: outbox) {
                hub.removeWatcher(token, outbox: outbox)
            }
            outbox.enqueue(request.reply(.unwatched(gatewayID)))
        case .subscribe(let function):
            outbox.enqueue(request.reply(.subscribed(function)))
            hub.subscribe(function.rawValue, outbox: outbox, tag: request.tag)
        case .unsubscribe(let function):
            hub.unsubscribe(function.rawValue, outbox: outbox)
            outbox.enqueue(request.reply(.unsubscribed(function)))
        case .auth, .quit:
            preconditionFailure("handled by the request loop")
        }
    }

    /// WATCH: register, then read (subscribe, then read), reply, then let held events through.
    private func watch(_ gatewayID: GatewayJobID, request: GatewayRequest, outbox: SessionOutbox) async throws(GatewayFailure) {
        guard let id = JobID(rawValue: gatewayID.rawValue) else { throw Self.notFound(gatewayID) }
        guard let token = hub.addWatcher(id, as: gatewayID, outbox: outbox, tag: request.tag, limit: configuration.maximumWatchesPerConnection) else {
            throw GatewayFailure(code: .tooManyWatches, message: "this connection already watches \(configuration.maximumWatchesPerConnection) jobs")
        }
        let lookup: JobLookup
        do {
            lookup = try await backend.lookUp(gatewayID)
        } catch {
            hub.removeWatcher(token, outbox: outbox)
            throw error
        }
        switch lookup {
        case .notFound:
            hub.removeWatcher(token, outbox: outbox)
            throw Self.notFound(gatewayID)
        case .expired:
            hub.removeWatcher(token, outbox: outbox)
            outbox.enqueue(request.reply(.watching(gatewayID, GatewayJobStatus(.expired))))
            outbox.enqueue(request.event(.expired(gatewayID)))
        case .found(let record):
            outbox.enqueue(request.reply(.watching(gatewayID, Self.status(record))))
            if record.state.isTerminal {
                if hub.removeWatcher(token, outbox: outbox) {
                    outbox.enqueue(request.event(PushHub.terminalEvent(record, gatewayID)))
                }
            } else {
                hub.activate(token, shown: record)
            }
        }
    }

    /// WAIT (and SUBMIT wait=): the outcome as soon as the job ends, or TIMEOUT with its state.
    private func waitForEnd(_ gatewayID: GatewayJobID, milliseconds: UInt64) async throws(GatewayFailure) -> GatewayReply {
        guard let id = JobID(rawValue: gatewayID.rawValue) else { throw Self.notFound(gatewayID) }
        let timeout = min(Duration.milliseconds(Int64(clamping: milliseconds)), configuration.maximumWaitTimeout)
        let token = hub.addWaiter(id)
        let lookup: JobLookup
        do {
            lookup = try await backend.lookUp(gatewayID)
        } catch {
            hub.finishWaiter(token, with: .timedOut)
            throw error
        }
        switch lookup {
        case .notFound:
            hub.finishWaiter(token, with: .timedOut)
            throw Self.notFound(gatewayID)
        case .expired:
            hub.finishWaiter(token, with: .timedOut)
            return .expired(gatewayID)
        case .found(let record) where record.state.isTerminal:
            hub.finishWaiter(token, with: .timedOut)
            return Self.outcome(record, gatewayID)
        case .found:
            switch await hub.wait(token, timeout: timeout) {
            case .ended(let record?): return Self.outcome(record, gatewayID)
            case .ended(nil): return .expired(gatewayID)
            case .timedOut:
                guard let record = try await backend.record(id) else { return .expired(gatewayID) }
                return record.state.isTerminal ? Self.outcome(record, gatewayID) : .timeout(gatewayID, Self.status(record))
            }
        }
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

    static func notFound(_ id: GatewayJobID) -> GatewayFailure {
        GatewayFailure(code: .notFound, message: "no job \(id) was ever issued here")
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

public enum JobGateVersion {
    public static let current = "0.1.0"
}

/// When a connection last completed a request.
final class LastActivity: Sendable {
    private let instant = Mutex(ContinuousClock.now)

    func touch() { instant.withLock { $0 = .now } }
    var elapsed: Duration { .now - instant.withLock { $0 } }
}
