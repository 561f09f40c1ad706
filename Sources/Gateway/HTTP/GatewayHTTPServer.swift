import GatewayProtocol
import JobStore
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The gateway's HTTP port (`--http`): `/metrics` for Prometheus, `/healthz` and `/readyz` for probes, and a live
/// page per job.
///
/// `GET /jobs/<id>` is a page that follows the job through `GET /jobs/<id>/events` (Server-Sent Events). Knowing
/// an id is the only way in: unknown ids are 404 and nothing lists jobs. Every response but the event stream
/// closes its connection, and a request must arrive within `requestTimeout`, so idle clients hold nothing.
final class GatewayHTTPServer: Sendable {
    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    let host: String
    let port: Int
    private let backend: GatewayBackend
    private let tracker: JobTracker
    private let statistics: GatewayStatistics
    private let logger: Logger
    private let requestTimeout: TimeAmount = .seconds(10)
    private let maximumConnections: Int
    /// HTTPS when the gateway's ports speak TLS.
    private let tls: GatewayTLSContext
    private let connections = Mutex<[ObjectIdentifier: any Channel]>([:])
    /// Job pages answer 403 while the gateway has a credentials file: the HTTP port has no credentials, and the
    /// `read` scope would mean nothing if a page showed any job to whoever holds its id.
    private let servesJobPages: @Sendable () -> Bool
    /// Largest result shown on a job page; the rest is cut (the line protocol has all of it).
    static let maximumResultShown = 256 * 1024

    init(
        host: String, port: Int, backend: GatewayBackend, tracker: JobTracker, statistics: GatewayStatistics, maximumConnections: Int,
        tls: GatewayTLSContext = GatewayTLSContext(), logger: Logger,
        servesJobPages: @escaping @Sendable () -> Bool = { true }
    ) {
        self.tls = tls
        self.host = host
        self.port = port
        self.backend = backend
        self.tracker = tracker
        self.statistics = statistics
        self.maximumConnections = maximumConnections
        self.logger = logger
        self.servesJobPages = servesJobPages
    }

    /// Binds, then calls `listening` with the address and serves until cancelled or `stop()`.
    func run(listening: @Sendable (SocketAddress) -> Void) async throws {
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: host, port: port) { [tls = self.tls, logger = self.logger] channel in
                channel.eventLoop.makeCompletedFuture {
                    try tls.secureInFront(channel, port: "HTTP", logger: logger)
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
        let listenerChannel = listener.channel
        connections.withLock { $0[ObjectIdentifier(listenerChannel)] = listenerChannel }
        listening(listener.channel.localAddress!)
        logger.info("gateway HTTP listening", metadata: ["gateway.http": "\(listener.channel.localAddress!)"])
        try await withTaskCancellationHandler {
            try await listener.executeThenClose { inbound in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await connection in inbound {
                        let key = ObjectIdentifier(connection.channel)
                        let admitted = connections.withLock { open -> Bool in
                            guard open.count <= maximumConnections else { return false }
                            open[key] = connection.channel
                            return true
                        }
                        guard admitted else {
                            connection.channel.close(promise: nil)
                            continue
                        }
                        group.addTask {
                            await self.serve(connection)
                            _ = self.connections.withLock { $0.removeValue(forKey: key) }
                        }
                    }
                }
            }
        } onCancel: {
            stop()
        }
    }

    /// Closes the listener and every connection, event streams included.
    func stop() {
        for channel in connections.withLock({ Array($0.values) }) { channel.close(promise: nil) }
    }

    // MARK: Requests

    private func serve(_ connection: Connection) async {
        let channel = connection.channel
        let timer = channel.eventLoop.scheduleTask(in: requestTimeout) { channel.close(promise: nil) }
        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                for try await part in inbound {
                    switch part {
                    case .head(let requestHead): head = requestHead
                    case .body: continue  // no route takes a body
                    case .end:
                        timer.cancel()
                        guard let head else { return }
                        try await respond(to: head, channel: channel, outbound: outbound)
                        return
                    }
                }
            }
        } catch {
            logger.debug("HTTP connection ended", metadata: ["gateway.error": "\(error)"])
        }
        timer.cancel()
    }

    private func respond(to head: HTTPRequestHead, channel: any Channel, outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        guard head.method == .GET || head.method == .HEAD else {
            return try await send(.methodNotAllowed, "text/plain; charset=utf-8", "only GET\n", head: head, outbound: outbound, extra: [("Allow", "GET, HEAD")])
        }
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        switch Array(segments) {
        case ["healthz"]:
            // The process serves HTTP: all a liveness probe asks. Backends are /readyz's business.
            try await send(.ok, "text/plain; charset=utf-8", "ok\n", head: head, outbound: outbound)
        case ["readyz"]:
            let health = statistics.backends.health()
            let text = ([health.isReady ? "ready" : "not-ready"] + health.checks.map { "\($0.name)=\($0.value)" }).joined(separator: " ")
            try await send(health.isReady ? .ok : .serviceUnavailable, "text/plain; charset=utf-8", text + "\n", head: head, outbound: outbound)
        case ["metrics"]:
            let text = statistics.exposition(watchedJobs: tracker.followedCount)
            try await send(.ok, "text/plain; version=0.0.4; charset=utf-8", text, head: head, outbound: outbound)
        case let route where route.first == "jobs" && !servesJobPages():
            try await send(.forbidden, "text/plain; charset=utf-8", "job pages are off: this gateway has credentials (use the line protocol)\n", head: head, outbound: outbound)
        case let route where route.count == 2 && route[0] == "jobs":
            guard let id = GatewayJobID(rawValue: String(route[1])) else { return try await notFound(head, outbound) }
            guard let held = try await lookUp(id, head: head, outbound: outbound) else { return }
            defer { held.release() }
            switch held.lookup {
            case .notFound: return
            case .expired: try await sendPage(JobPage.page(id: id, record: nil), head: head, outbound: outbound)
            case .found(let record): try await sendPage(JobPage.page(id: id, record: record), head: head, outbound: outbound)
            }
        case let route where route.count == 3 && route[0] == "jobs" && route[2] == "events":
            guard let id = GatewayJobID(rawValue: String(route[1])) else { return try await notFound(head, outbound) }
            try await streamEvents(of: id, head: head, channel: channel, outbound: outbound)
        default:
            try await notFound(head, outbound)
        }
    }

    /// A lookup whose result (or reason) bytes are reserved from the lookup budget until `release()`.
    private struct HeldLookup {
        var lookup: JobLookup
        var release: @Sendable () -> Void = {}
    }

    /// The job, with a finished one's result read within the lookup budget (as for `RESULT`: however many pages of
    /// a large result are asked for, the gateway holds at most the budget of them), or nil after answering 404
    /// (never issued) or 503 (Redis is down). `found`: the job as a watch read it, if it did.
    private func lookUp(
        _ id: GatewayJobID, found: Result<JobLookup, GatewayFailure>? = nil, head: HTTPRequestHead,
        outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    ) async throws -> HeldLookup? {
        func unavailable(_ failure: GatewayFailure) async throws -> HeldLookup? {
            try await send(.serviceUnavailable, "text/plain; charset=utf-8", "\(failure.message)\n", head: head, outbound: outbound)
            return nil
        }
        let result: Result<JobLookup, GatewayFailure>
        if let found { result = found } else { result = await backend.lookUp([id])[0] }
        let lookup: JobLookup
        do {
            lookup = try result.get()
        } catch {
            return try await unavailable(error)
        }
        switch lookup {
        case .notFound:
            try await notFound(head, outbound)
            return nil
        case .found(let record) where record.outcome == nil && record.outcomeSize > 0:
            let bytes = record.outcomeSize
            let budget = statistics.outcomes
            await withCheckedContinuation { continuation in budget.reserve(bytes) { continuation.resume() } }
            let read: JobRecord?
            do {
                read = try await backend.outcomes(of: [record])[0].get()
            } catch {
                budget.release(bytes)
                return try await unavailable(error)
            }
            return HeldLookup(lookup: read.map { .found($0) } ?? .expired(record.id)) { budget.release(bytes) }
        default:
            return HeldLookup(lookup: lookup)
        }
    }

    private func notFound(_ head: HTTPRequestHead, _ outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        try await send(.notFound, "text/plain; charset=utf-8", "not found\n", head: head, outbound: outbound)
    }

    /// Headers every response carries: ids in URLs must not leak through caches or the Referer header, and nothing
    /// but a job page (which sets its own policy) may run or load anything.
    private static let commonHeaders: [(String, String)] = [
        ("Cache-Control", "no-store"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Content-Type-Options", "nosniff"),
    ]
    private static let strictestPolicy = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

    private func sendPage(_ page: (html: String, contentSecurityPolicy: String), head: HTTPRequestHead, outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        try await send(.ok, "text/html; charset=utf-8", page.html, head: head, outbound: outbound, policy: page.contentSecurityPolicy)
    }

    private func send(
        _ status: HTTPResponseStatus,
        _ contentType: String,
        _ body: String,
        head: HTTPRequestHead,
        outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>,
        extra: [(String, String)] = [],
        policy: String = strictestPolicy
    ) async throws {
        let bytes = ByteBuffer(string: body)
        var headers = HTTPHeaders(Self.commonHeaders + extra)
        headers.add(name: "Content-Security-Policy", value: policy)
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(bytes.readableBytes))
        headers.add(name: "Connection", value: "close")
        try await outbound.write(.head(HTTPResponseHead(version: head.version, status: status, headers: headers)))
        if head.method != .HEAD { try await outbound.write(.body(.byteBuffer(bytes))) }
        try await outbound.write(.end(nil))
    }

    // MARK: Server-Sent Events

    /// The job's state now, then each change as it happens, until its end; the page closes the stream then.
    /// A watcher in the job tracker, as for `WATCH`: registered before the read, so no change falls in between.
    private func streamEvents(of gatewayID: GatewayJobID, head: HTTPRequestHead, channel: any Channel, outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        guard let id = backend.issuedID(gatewayID) else { return try await notFound(head, outbound) }
        let outbox = SessionOutbox(limit: 1024 * 1024)
        let token = tracker.makeToken(for: id)
        defer { tracker.unwatch(token) }  // however the stream ends
        let backend = self.backend
        let read = tracker.watch(token, as: gatewayID, target: outbox, tag: nil) {
            channel.eventLoop.makeFutureWithTask { try await backend.lookUp([gatewayID])[0].get() }
        }
        let found: Result<JobLookup, GatewayFailure>
        do {
            found = .success(try await read.get())
        } catch {
            found = .failure(error as? GatewayFailure ?? GatewayFailure(code: .internal, message: "\(error)"))
        }
        guard let held = try await lookUp(gatewayID, found: found, head: head, outbound: outbound) else { return }
        defer { held.release() }
        var headers = HTTPHeaders(Self.commonHeaders)
        headers.add(name: "Content-Security-Policy", value: Self.strictestPolicy)
        headers.add(name: "Content-Type", value: "text/event-stream; charset=utf-8")
        try await outbound.write(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers)))
        guard head.method == .GET else { return try await outbound.write(.end(nil)) }
        statistics.metrics.eventStreamOpened()
        defer { statistics.metrics.eventStreamClosed() }
        // A client that goes away ends the stream at once, not at the job's next change.
        channel.closeFuture.whenComplete { _ in outbox.close() }

        func write(_ event: String, _ json: String) async throws {
            try await outbound.write(.body(.byteBuffer(ByteBuffer(string: "event: \(event)\ndata: \(json)\n\n"))))
        }
        switch held.lookup {
        case .notFound:
            return
        case .expired:
            try await write("end", JobPage.json(state: "expired"))
            return try await outbound.write(.end(nil))
        case .found(let record):
            try await write("state", JobPage.json(record))
            if record.state.isTerminal {
                try await write("end", JobPage.json(record))
                return try await outbound.write(.end(nil))
            }
            tracker.activate(token, shown: record.progress)
        }
        while true {
            switch await outbox.next() {
            case .closed, .overflowed:
                return
            case .response(.event(let event, _)):
                switch event.withoutCursor {
                case .progress(_, let numerator, let denominator, let message):
                    try await write("state", JobPage.json(state: "running", numerator: numerator, denominator: denominator, message: message))
                case .done(_, let result):
                    try await write("end", JobPage.json(state: "done", result: result))
                    return try await outbound.write(.end(nil))
                case .failed(_, let reason):
                    try await write("end", JobPage.json(state: "failed", reason: reason))
                    return try await outbound.write(.end(nil))
                case .expired, .logged:
                    try await write("end", JobPage.json(state: "expired"))
                    return try await outbound.write(.end(nil))
                }
            case .response:
                continue
            }
        }
    }
}
