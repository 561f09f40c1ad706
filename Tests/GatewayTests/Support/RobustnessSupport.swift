import GatewayProtocol
import LocalServers
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// A connection that deals in raw bytes: for junk, half-closes, and clients that stop reading.
///
/// Everything received is kept, to be decoded afterwards (so a malformed reply fails the test instead of
/// looking like a close). With `receiveBufferSize`, `SO_RCVBUF` is set before connecting, so the TCP window
/// stays small.
final class RawGatewayConnection: Sendable {
    let channel: any Channel
    private let collector: Collector

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received = Mutex(ByteBuffer())

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            received.withLock { _ = $0.writeBuffer(&bytes) }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }

    private init(channel: any Channel, collector: Collector) {
        self.channel = channel
        self.collector = collector
    }

    /// With `resetOnClose`, `close()` aborts the connection (RST, via `SO_LINGER` 0) instead of shutting it down.
    /// With `readChunk`, each read from the socket takes at most that many bytes (see `readOnce`).
    static func connect(
        port: Int,
        receiveBufferSize: Int? = nil,
        readChunk: Int? = nil,
        resetOnClose: Bool = false
    ) async throws -> RawGatewayConnection {
        let collector = Collector()
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        if let receiveBufferSize {
            bootstrap = bootstrap.channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBufferSize))
        }
        if let readChunk {
            bootstrap = bootstrap.channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: readChunk))
        }

        let channel = try await bootstrap
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        if resetOnClose, let provider = channel as? any SocketOptionProvider {
            try await provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).get()
        }
        return RawGatewayConnection(channel: channel, collector: collector)
    }

    func send(_ text: String) async throws { try await channel.writeAndFlush(ByteBuffer(string: text)) }
    func send(bytes: [UInt8]) async throws { try await channel.writeAndFlush(ByteBuffer(bytes: bytes)) }

    /// Closes our sending side only: the server sees EOF and can still answer.
    func finishSending() async throws { try await channel.close(mode: .output) }

    /// Stops (or resumes) reading from the socket, so the server's writes back up.
    func setReading(_ reading: Bool) async throws { try await channel.setOption(.autoRead, value: reading).get() }

    /// With reading stopped: reads from the socket once (at most `readChunk` bytes), for a client that reads slowly.
    func readOnce() { channel.read() }

    /// Waits until the connection ended (the server closed it and we read up to its EOF).
    func waitUntilClosed(timeout: Duration = .seconds(10)) async throws {
        let channel = self.channel
        try await withTimeout(timeout, "the server to close the connection") { try await channel.closeFuture.get() }
    }

    var receivedBytes: Int { collector.received.withLock { $0.readableBytes } }

    /// Everything received so far, decoded; fails on bytes that are not well-formed responses, and on a
    /// response cut short unless `allowingTruncatedEnd` (a server closing on a client that does not read may
    /// drop what it could not write).
    func responses(allowingTruncatedEnd: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) throws -> [GatewayResponse] {
        var buffer = collector.received.withLock { $0 }
        var decoder = GatewayResponseDecoder()
        var responses: [GatewayResponse] = []
        while let response = try decoder.decode(buffer: &buffer) { responses.append(response) }
        if !allowingTruncatedEnd {
            #expect(buffer.readableBytes == 0, "the server's output ends inside a response", sourceLocation: sourceLocation)
        }
        return responses
    }

    func close() async { try? await channel.close() }
}

/// A gate a test worker's handler waits at until the test opens it.
final class Latch: Sendable {
    private let state = Mutex<(isOpen: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { continuation in
            let open = state.withLock { state in
                if !state.isOpen { state.waiters.append(continuation) }
                return state.isOpen
            }
            if open { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { state in
            state.isOpen = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}



extension GatewayStack {
    /// The gateway's `STATS`, read over a connection of its own.
    func statistics() async throws -> [String: Int] {
        let client = try await connect()
        defer { Task { await client.close() } }
        guard case .reply(.stats(let stats), nil) = try await client.request("STATS\n") else {
            throw StatsUnavailable()
        }
        var values: [String: Int] = [:]
        for stat in stats { values[stat.name] = Int(stat.value) }
        return values
    }

    func statistic(_ name: String) async throws -> Int {
        try #require(try await statistics()[name], "STATS has no \(name)")
    }
}

struct StatsUnavailable: Error {}

extension GatewayTestClient {
    /// SUBMITs `payload` to `function` and returns the new job's id; records an issue for any other reply.
    func submit(_ function: String, _ payload: String = "", options: String = "") async throws -> GatewayJobID {
        let reply = try await request("SUBMIT \(function) \(payload.utf8.count)\(options.isEmpty ? "" : " " + options)\n\(payload)\n")
        guard case .reply(.created(let id), nil) = reply else {
            Issue.record("SUBMIT answered \(String(describing: reply))")
            throw UnexpectedReply(reply: reply)
        }
        return id
    }

    /// The next response, which must be `ERR <code>`; returns it for further checks.
    @discardableResult
    func expectError(_ code: GatewayErrorCode, tag: GatewayTag? = nil, sourceLocation: SourceLocation = #_sourceLocation) async throws -> String? {
        let response = try await next()
        guard case .reply(.error(let actual, let message), let actualTag) = response else {
            Issue.record("expected ERR \(code), got \(String(describing: response))", sourceLocation: sourceLocation)
            return nil
        }
        #expect(actual == code, "\(message)", sourceLocation: sourceLocation)
        #expect(actualTag == tag, sourceLocation: sourceLocation)
        return message
    }

    /// PING must still be answered with PONG: the connection is usable.
    func expectUsable(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let response = try await request("@alive PING\n")
        #expect(response == .reply(.pong, tag: GatewayTag(rawValue: "alive")), sourceLocation: sourceLocation)
    }
}

struct UnexpectedReply: Error {
    var reply: GatewayResponse?
}

/// A flag one task raises and another polls.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)

    func raise() { value.store(true, ordering: .relaxed) }
    var isRaised: Bool { value.load(ordering: .relaxed) }
}
