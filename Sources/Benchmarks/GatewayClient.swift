import GatewayProtocol
import NIOCore
import NIOPosix
import NIOSSL

/// A reply or event with the instant its bytes were decoded on the event loop: latencies end there, not when a
/// task got around to looking at it.
struct Stamped: Sendable {
    let response: GatewayResponse
    let at: ContinuousClock.Instant
}

private final class StampingHandler: ChannelInboundHandler {
    typealias InboundIn = GatewayResponse
    typealias InboundOut = Stamped

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let stamped = Stamped(response: unwrapInboundIn(data), at: .now)
        context.fireChannelRead(wrapInboundOut(stamped))
    }
}

typealias GatewayChannel = NIOAsyncChannel<Stamped, ByteBuffer>

/// The gateway's line protocol from the client side, as raw request bytes.
enum GatewayRequests {
    static func submit(_ function: String, payload: ByteBuffer, into buffer: inout ByteBuffer) {
        buffer.writeString("SUBMIT \(function) \(payload.readableBytes)\r\n")
        buffer.writeImmutableBuffer(payload)
        buffer.writeString("\r\n")
    }

    static func line(_ text: String) -> ByteBuffer {
        ByteBuffer(string: text + "\r\n")
    }
}

/// Connects a client of the gateway whose replies arrive stamped; with `tls`, over TLS (the certificate checked
/// against 127.0.0.1).
func connectGateway(port: Int, tls: NIOSSLContext? = nil, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> GatewayChannel {
    try await ClientBootstrap(group: group)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .connectTimeout(.seconds(10))
        .connect(host: "127.0.0.1", port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: nil)) }
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(GatewayResponseDecoder()))
                try channel.pipeline.syncOperations.addHandler(StampingHandler())
                return try GatewayChannel(wrappingChannelSynchronously: channel)
            }
        }
}

/// What the benchmark did not expect from the gateway.
struct BenchmarkError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

extension NIOAsyncChannelInboundStream<Stamped>.AsyncIterator {
    /// The next reply or event; the connection closing is an error.
    mutating func nextResponse(_ what: @autoclosure () -> String) async throws -> Stamped {
        guard let next = try await next() else { throw BenchmarkError("the gateway closed the connection while \(what())") }
        if case .reply(.error(let code, let message), _) = next.response {
            throw BenchmarkError("the gateway answered ERR \(code) \(message) while \(what())")
        }
        return next
    }
}
