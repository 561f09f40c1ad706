import JobgateSupport
import Logging
import NIOCore
import NIOPosix

/// Where a gearmand listens.
public struct GearmanServerAddress: Sendable, Hashable, CustomStringConvertible {
    public static let defaultPort = 4730

    public var host: String
    public var port: Int

    public init(host: String, port: Int = Self.defaultPort) {
        self.host = host
        self.port = port
    }

    /// Parses `host`, `host:port` or `[v6]:port`.
    public init?(_ text: String) {
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if rest.isEmpty {
                port = Self.defaultPort
            } else if rest.hasPrefix(":"), let port = Int(rest.dropFirst()) {
                self.port = port
            } else {
                return nil
            }
        } else if let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon {
            guard let port = Int(text[text.index(after: colon)...]) else { return nil }
            host = String(text[..<colon])
            self.port = port
        } else {
            host = text
            port = Self.defaultPort
        }
        guard !host.isEmpty, (1...65535).contains(port) else { return nil }
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

public struct GearmanClientConfiguration: Sendable {
    /// Payloads above this are refused before sending: gearmand itself has no limit (reference §3).
    public var maximumPayloadSize: Int = 16 << 20
    /// Largest packet accepted from gearmand (results of foreground jobs, echo replies).
    public var maximumReplySize: Int = 64 << 20
    /// A request unanswered for this long fails, with everything behind it, and the connection closes.
    public var requestTimeout: TimeAmount = .seconds(10)
    public var connectTimeout: TimeAmount = .seconds(3)
    /// Ask for WORK_EXCEPTION packets instead of WORK_FAIL (OPTION_REQ exceptions) on every connection.
    public var exceptions: Bool = false
    /// Shown by gearmand's `workers` listing.
    public var clientID: String?
    /// The waits after failed connects, during which requests fail at once with `serverUnavailable`.
    public var reconnectBackoff = Backoff(initial: .milliseconds(100), maximum: .seconds(5))

    public init() {}
}

/// A foreground job: its handle and the WORK_* events gearmand forwards for it.
public struct GearmanForegroundJob: Sendable {
    public let handle: String
    public let events: AsyncThrowingStream<GearmanJobEvent, any Error>

    /// Waits for the job to end: its result, or `GearmanError.jobFailed`.
    public func result() async throws -> ByteBuffer {
        for try await event in events {
            switch event {
            case .completed(let data): return data
            case .failed: throw GearmanError(.jobFailed, "job \(handle) failed")
            case .exception(let data): throw GearmanError(.jobFailed, "job \(handle) raised: \(String(buffer: data))")
            case .status, .data, .warning: continue
            }
        }
        throw GearmanError(.connectionClosed, "events of job \(handle) ended without a result")
    }
}

/// One connection to one gearmand, with pipelined requests.
///
/// Requests may be issued from any task; replies are matched in order on the channel's event loop.
/// `submitBackground(_:)` with many jobs writes them with one flush and resolves them with one hop.
public final class GearmanConnection: Sendable {
    public let address: GearmanServerAddress
    let channel: any Channel
    let configuration: GearmanClientConfiguration

    private init(address: GearmanServerAddress, channel: any Channel, configuration: GearmanClientConfiguration) {
        self.address = address
        self.channel = channel
        self.configuration = configuration
    }

    /// Connects, sets the client id and the exceptions option if configured.
    public static func connect(
        to address: GearmanServerAddress,
        configuration: GearmanClientConfiguration = .init(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "jobgate.gearman")
    ) async throws(GearmanError) -> GearmanConnection {
        var logger = logger
        logger[metadataKey: "gearman.server"] = "\(address)"
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: eventLoopGroup)
                .connectTimeout(configuration.connectTimeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { [logger] channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            GearmanClientChannelHandler(
                                maximumBodySize: configuration.maximumReplySize,
                                requestTimeout: configuration.requestTimeout,
                                logger: logger
                            )
                        )
                    }
                }
                .connect(host: address.host, port: address.port)
                .get()
        } catch {
            throw GearmanError(.connectionFailed, "cannot connect to gearmand at \(address): \(error)")
        }
        let connection = GearmanConnection(address: address, channel: channel, configuration: configuration)
        var setup: [GearmanClientRequest] = []
        if let clientID = configuration.clientID {
            setup.append(.init(message: .packet(.init(.request, .setClientID, clientID)), expectation: nil))
        }
        if configuration.exceptions {
            setup.append(.init(message: .packet(.init(.request, .optionReq, "exceptions")), expectation: .option))
        }
        if !setup.isEmpty {
            for result in await connection.send(setup) {
                if case .failure(let error) = result {
                    await connection.close()
                    throw error
                }
            }
        }
        return connection
    }

    public var isActive: Bool { channel.isActive }

    /// Fires when the connection has closed, for whatever reason.
    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }

    public func close() async {
        try? await channel.close()
    }

    // MARK: Submitting

    /// Submits background jobs with one write; each result is the job handle or why that job was refused.
    /// Invalid jobs fail on their own without being sent; the others still go.
    public func submitBackground(_ jobs: [GearmanJobRequest]) async -> [Result<String, GearmanError>] {
        var results = [Result<String, GearmanError>?](repeating: nil, count: jobs.count)
        var requests: [GearmanClientRequest] = []
        var sentIndices: [Int] = []
        requests.reserveCapacity(jobs.count)
        for (index, job) in jobs.enumerated() {
            do throws(GearmanError) {
                try job.validate(maximumPayloadSize: configuration.maximumPayloadSize)
                requests.append(.init(message: .packet(job.packet(background: true)), expectation: .jobCreated))
                sentIndices.append(index)
            } catch {
                results[index] = .failure(error)
            }
        }
        for (index, reply) in zip(sentIndices, await send(requests)) {
            results[index] = reply.flatMap(Self.handle)
        }
        return results.map { $0! }
    }

    public func submitBackground(_ job: GearmanJobRequest) async throws(GearmanError) -> String {
        try await submitBackground([job])[0].get()
    }

    /// Submits a foreground job; gearmand forwards its WORK_* packets to this connection until it ends.
    /// The job dies with the connection (gearmand drops foreground jobs whose client left).
    public func submitForeground(_ job: GearmanJobRequest) async throws(GearmanError) -> GearmanForegroundJob {
        try job.validate(maximumPayloadSize: configuration.maximumPayloadSize)
        let (events, sink) = AsyncThrowingStream<GearmanJobEvent, any Error>.makeStream()
        let reply = await send([.init(message: .packet(job.packet(background: false)), expectation: .jobCreated, sink: sink)])[0]
        return GearmanForegroundJob(handle: try reply.flatMap(Self.handle).get(), events: events)
    }

    // MARK: Status and health

    /// GET_STATUS. A finished job and one that never existed both answer `known == false`.
    public func status(handle: String) async throws(GearmanError) -> GearmanJobStatus {
        try GearmanValidation.handle(handle)
        return try await status(.init(message: .packet(.init(.request, .getStatus, handle)), expectation: .status))
    }

    /// GET_STATUS_UNIQUE: looks a job up by its unique key (any function), with its foreground client count.
    public func status(unique: String) async throws(GearmanError) -> GearmanJobStatus {
        try GearmanValidation.unique(unique)
        return try await status(.init(message: .packet(.init(.request, .getStatusUnique, unique)), expectation: .statusUnique))
    }

    /// GET_STATUS for many handles with one write.
    public func status(handles: [String]) async throws(GearmanError) -> [GearmanJobStatus] {
        for handle in handles { try GearmanValidation.handle(handle) }
        return try await statuses(of: handles, type: .getStatus, expectation: .status)
    }

    /// GET_STATUS_UNIQUE for many unique keys with one write.
    public func status(uniques: [String]) async throws(GearmanError) -> [GearmanJobStatus] {
        for unique in uniques { try GearmanValidation.unique(unique) }
        return try await statuses(of: uniques, type: .getStatusUnique, expectation: .statusUnique)
    }

    private func statuses(of keys: [String], type: GearmanPacketType, expectation: GearmanExpectation) async throws(GearmanError) -> [GearmanJobStatus] {
        let requests = keys.map { GearmanClientRequest(message: .packet(.init(.request, type, $0)), expectation: expectation) }
        return try await send(requests).map { reply throws(GearmanError) in
            guard case .status(let status) = try reply.get() else { throw Self.mismatch(reply) }
            return status
        }
    }

    /// ECHO_REQ round trip: the health check.
    public func echo(_ data: ByteBuffer = ByteBuffer(string: "ping")) async throws(GearmanError) -> ByteBuffer {
        let reply = try await send([.init(message: .packet(.init(magic: .request, type: .echoReq, arguments: [data])), expectation: .echo)])[0].get()
        guard case .echo(let echoed) = reply else { throw Self.mismatch(.success(reply)) }
        return echoed
    }

    /// OPTION_REQ; gearmand 1.1.20 knows only `exceptions`.
    public func setOption(_ name: String) async throws(GearmanError) {
        _ = try await send([.init(message: .packet(.init(.request, .optionReq, name)), expectation: .option)])[0].get()
    }

    /// Runs an admin text command; listings come back without their closing `.`.
    public func admin(_ command: GearmanAdminCommand) async throws(GearmanError) -> [String] {
        let reply = try await send([.init(message: .text(command.line), expectation: .admin(isListing: command.isListing))])[0].get()
        guard case .admin(let lines) = reply else { throw Self.mismatch(.success(reply)) }
        return lines
    }

    /// `status`: queued and running jobs and workers per function.
    public func functionStatus() async throws(GearmanError) -> [GearmanFunctionStatus] {
        try await admin(.status).compactMap(GearmanFunctionStatus.init(line:))
    }

    /// `workers`: every connection with its client id and functions.
    public func workers() async throws(GearmanError) -> [GearmanWorkerInfo] {
        try await admin(.workers).compactMap(GearmanWorkerInfo.init(line:))
    }

    // MARK: Plumbing

    private func status(_ request: GearmanClientRequest) async throws(GearmanError) -> GearmanJobStatus {
        let reply = try await send([request])[0].get()
        guard case .status(let status) = reply else { throw Self.mismatch(.success(reply)) }
        return status
    }

    func send(_ requests: [GearmanClientRequest]) async -> [Result<GearmanReply, GearmanError>] {
        guard !requests.isEmpty else { return [] }
        let promise = channel.eventLoop.makePromise(of: [Result<GearmanReply, GearmanError>].self)
        let batch = GearmanClientBatch(requests: requests, promise: promise)
        channel.writeAndFlush(batch).whenFailure { error in
            // The channel is gone before the handler saw the batch: nobody else will answer it.
            let failure = GearmanError(.connectionClosed, "connection to gearmand closed: \(error)")
            for request in requests { request.sink?.finish(throwing: failure) }
            promise.succeed(Array(repeating: .failure(failure), count: requests.count))
        }
        do {
            return try await promise.futureResult.get()
        } catch {
            return Array(repeating: .failure(GearmanError(.connectionClosed, "\(error)")), count: requests.count)
        }
    }

    private static func handle(_ reply: GearmanReply) -> Result<String, GearmanError> {
        guard case .jobCreated(let handle) = reply else { return .failure(mismatch(.success(reply))) }
        return .success(handle)
    }

    private static func mismatch(_ reply: Result<GearmanReply, GearmanError>) -> GearmanError {
        GearmanError(.unexpectedReply, "unexpected reply \(reply)")
    }
}
