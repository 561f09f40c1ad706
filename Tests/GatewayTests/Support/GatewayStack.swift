import Gateway
import GatewayProtocol
import Gearman
import JobStore
import JobgateSupport
import LocalServers
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Redis
import ServiceLifecycle
import Synchronization
import Testing

/// A real gearmand and redis-server on loopback, with a gateway in this process in front of them.
struct GatewayStack: Sendable {
    let gearmand: LocalServer
    let redis: LocalServer
    let gateway: GatewayServer
    let port: Int

    var configuration: GatewayConfiguration { gateway.configuration }
    var gearmanAddress: GearmanServerAddress { GearmanServerAddress(host: gearmand.host, port: gearmand.port) }

    func connect() async throws -> GatewayTestClient {
        try await GatewayTestClient.connect(port: port)
    }

    /// A store on the gateway's Redis, connected as the gateway is, or with `redis` (another ACL user).
    func store(redis: RedisConnectionConfiguration? = nil) -> RedisJobStore {
        var configuration = JobStoreConfiguration()
        configuration.schema = JobKeySchema(prefix: self.configuration.keyPrefix)
        configuration.logRetention = CompletionLogRetention(
            age: self.configuration.subscriptionRetention, maximumLength: self.configuration.subscriptionLogLength
        )
        return RedisJobStore(redis: RedisConnectionPool(configuration: redis ?? self.configuration.redis, size: 1), configuration: configuration)
    }
}

/// Starts gearmand, redis-server and a gateway (adjusted by `configure`), runs `body`, shuts everything down.
func withGatewayStack<T: Sendable>(
    _ configure: (inout GatewayConfiguration) -> Void = { _ in },
    logger: Logger = Logger(label: "test.gateway"),
    redisArguments: [String] = [],
    _ body: @Sendable (GatewayStack) async throws -> T
) async throws -> T {
    try await withLocalServer(.gearmand) { gearmand in
        try await withLocalServer(.redis, arguments: redisArguments) { redis in
            var configuration = GatewayConfiguration()
            configuration.port = 0
            configuration.gearmanServers = [GearmanServerAddress(host: gearmand.host, port: gearmand.port)]
            configuration.redis = RedisConnectionConfiguration(host: redis.host, port: redis.port, commandTimeout: .seconds(5))
            configuration.lostJobCheckInterval = .milliseconds(200)
            configuration.sweepInterval = .seconds(2)
            configure(&configuration)
            let gateway = GatewayServer(configuration: configuration, logger: logger)
            let group = ServiceGroup(configuration: .init(services: [gateway], logger: Logger(label: "test")))
            let running = Task { try await group.run() }
            defer { running.cancel() }
            let address = try await withTimeout(.seconds(10), "the gateway to listen") { try await gateway.waitUntilListening() }
            let stack = GatewayStack(gearmand: gearmand, redis: redis, gateway: gateway, port: address.port!)
            let result = try await body(stack)
            await group.triggerGracefulShutdown()
            _ = try? await withTimeout(.seconds(10), "the gateway to shut down") { try await running.value }
            return result
        }
    }
}

/// What a test worker's handler gets to report progress with.
typealias ProgressReporter = @Sendable (UInt32, UInt32, String) async throws -> Void

/// A worker that publishes like the real one (running, progress, outcome in Redis, then gearmand), for
/// gateway tests: handlers return the result, or throw to fail with the error's description.
func withTestWorker<T: Sendable>(
    _ stack: GatewayStack,
    concurrency: Int = 4,
    redis: RedisConnectionConfiguration? = nil,
    _ handlers: [String: @Sendable (ByteBuffer, ProgressReporter) async throws -> ByteBuffer],
    _ body: @Sendable () async throws -> T
) async throws -> T {
    let store = stack.store(redis: redis)
    var gearmanHandlers: [String: GearmanJobHandler] = [:]
    for (function, handler) in handlers {
        gearmanHandlers[function] = { job, reporter in
            guard let id = JobID(rawValue: job.unique) else { return .fail }
            let ttl = try? await store.markRunning(id, function: job.function, handle: job.handle, server: job.server.description)
            let progress: ProgressReporter = { numerator, denominator, message in
                try await store.reportProgress(id, numerator: numerator, denominator: denominator, message: ByteBuffer(string: message))
                try await reporter.status(numerator: numerator, denominator: denominator)
            }
            do {
                let result = try await handler(job.payload, progress)
                try await store.complete(id, result: result, ttl: ttl)
                return .complete(result)
            } catch {
                try? await store.fail(id, reason: ByteBuffer(string: "\(error)"), ttl: ttl)
                return .fail
            }
        }
    }
    var configuration = GearmanWorkerConfiguration()
    configuration.concurrency = concurrency
    configuration.reconnectBackoff = Backoff(initial: .milliseconds(50), maximum: .milliseconds(200))
    let worker = try GearmanWorker(servers: [stack.gearmanAddress], handlers: gearmanHandlers, configuration: configuration)
    let group = ServiceGroup(configuration: .init(services: [worker], logger: Logger(label: "test.worker")))
    let running = Task { try await group.run() }
    do {
        let result = try await body()
        await group.triggerGracefulShutdown()
        _ = try? await withTimeout(.seconds(10), "the test worker to stop") { try await running.value }
        return result
    } catch {
        running.cancel()
        throw error
    }
}

/// A line-protocol client for tests: sends raw bytes, reads parsed replies and events.
final class GatewayTestClient: Sendable {
    let channel: any Channel
    private let reader: ResponseReader

    private actor ResponseReader {
        private var iterator: AsyncStream<GatewayResponse>.AsyncIterator

        init(_ stream: AsyncStream<GatewayResponse>) { iterator = stream.makeAsyncIterator() }

        func next() async -> GatewayResponse? {
            var iterator = self.iterator  // shares the stream's storage
            defer { self.iterator = iterator }
            return await iterator.next(isolation: self)
        }
    }

    private init(channel: any Channel, responses: AsyncStream<GatewayResponse>) {
        self.channel = channel
        self.reader = ResponseReader(responses)
    }

    /// With `tls`, speaks TLS and checks the gateway's certificate against 127.0.0.1. `receiveBuffer`: a small socket
    /// receive buffer (`SO_RCVBUF`), for a client that is to fall behind soon.
    static func connect(port: Int, tls: NIOSSLContext? = nil, receiveBuffer: Int? = nil) async throws -> GatewayTestClient {
        let (stream, continuation) = AsyncStream<GatewayResponse>.makeStream()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: nil)) }
                    if let receiveBuffer {
                        try channel.syncOptions?.setOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBuffer))
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(GatewayResponseDecoder()))
                    try channel.pipeline.syncOperations.addHandler(Collector(continuation: continuation))
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        return GatewayTestClient(channel: channel, responses: stream)
    }

    /// Forwards parsed responses to the stream; the stream ends when the connection does.
    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = GatewayResponse
        let continuation: AsyncStream<GatewayResponse>.Continuation

        init(continuation: AsyncStream<GatewayResponse>.Continuation) { self.continuation = continuation }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            continuation.yield(unwrapInboundIn(data))
        }

        func channelInactive(context: ChannelHandlerContext) { continuation.finish() }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case .some(.inputClosed) = event as? ChannelEvent { continuation.finish() }
        }
    }

    func send(_ text: String) async throws {
        try await channel.writeAndFlush(ByteBuffer(string: text))
    }

    func send(bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    /// The next reply or event; nil once the server closed the connection. Throws after `timeout`.
    func next(timeout: Duration = .seconds(10)) async throws -> GatewayResponse? {
        let reader = self.reader
        return try await withTimeout(timeout, "a reply from the gateway") { await reader.next() }
    }

    /// Sends `text` and returns the next response.
    func request(_ text: String) async throws -> GatewayResponse? {
        try await send(text)
        return try await next()
    }

    func close() async {
        try? await channel.close()
    }
}
