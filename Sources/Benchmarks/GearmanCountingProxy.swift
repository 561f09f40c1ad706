import Gearman
import NIOCore
import NIOPosix
import Synchronization

/// A loopback TCP proxy in front of gearmand that counts the request packets passing through, by type: what
/// gearmand itself was asked, whoever asked it (gearmand keeps no such counters). Bytes are forwarded unchanged.
final class GearmanCountingProxy: Sendable {
    let port: Int
    private let server: any Channel
    private let counts: PacketCounts

    private init(port: Int, server: any Channel, counts: PacketCounts) {
        self.port = port
        self.server = server
        self.counts = counts
    }

    static func start(upstream: GearmanServerAddress) async throws -> GearmanCountingProxy {
        let counts = PacketCounts()
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { inbound in
                // Both ends on one event loop, so each can write to the other directly.
                ClientBootstrap(group: inbound.eventLoop)
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .connectTimeout(.seconds(5))
                    .channelInitializer { outbound in
                        outbound.eventLoop.makeCompletedFuture {
                            try outbound.pipeline.syncOperations.addHandler(ForwardHandler(peer: inbound, tally: nil))
                        }
                    }
                    .connect(host: upstream.host, port: upstream.port)
                    .flatMapThrowing { outbound in
                        try inbound.pipeline.syncOperations.addHandler(ForwardHandler(peer: outbound, tally: counts.add))
                    }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        guard let port = server.localAddress?.port else { throw BenchmarkError("the counting proxy has no port") }
        return GearmanCountingProxy(port: port, server: server, counts: counts)
    }

    /// Request packets of these types seen so far, over all connections.
    func requests(_ types: GearmanPacketType...) -> Int {
        counts.total(types.map(\.rawValue))
    }

    func close() async {
        try? await server.close()
    }
}

private final class PacketCounts: Sendable {
    private let counts = Mutex<[UInt32: Int]>([:])

    func add(_ tally: [UInt32: Int]) {
        counts.withLock { counts in
            for (type, count) in tally { counts[type, default: 0] += count }
        }
    }

    func total(_ types: [UInt32]) -> Int {
        counts.withLock { counts in types.reduce(0) { $0 + (counts[$1] ?? 0) } }
    }
}

/// Forwards what one side reads to the other; closes the other when this side goes away. Optionally scans the
/// bytes as Gearman requests and reports each read's packet counts.
private final class ForwardHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let peer: any Channel
    private var scanner = GearmanRequestScanner()
    private let tally: (@Sendable ([UInt32: Int]) -> Void)?

    init(peer: any Channel, tally: (@Sendable ([UInt32: Int]) -> Void)?) {
        self.peer = peer
        self.tally = tally
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        if let tally {
            let counts = scanner.scan(buffer.readableBytesView)
            if !counts.isEmpty { tally(counts) }
        }
        peer.writeAndFlush(buffer, promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        peer.close(promise: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Walks a byte stream of Gearman requests without buffering it: 12-byte headers (`\0REQ`, type, body size,
/// big-endian) are counted by type and bodies skipped; a line of the text admin protocol is skipped to its `\n`.
package struct GearmanRequestScanner {
    private var header: [UInt8] = []
    private var bodyLeft = 0
    private var inTextLine = false

    package init() {}

    /// Packets whose header completed within `bytes` (the next bytes of the stream), by type.
    package mutating func scan<Bytes: RandomAccessCollection<UInt8>>(_ bytes: Bytes) -> [UInt32: Int] {
        var counts: [UInt32: Int] = [:]
        var index = bytes.startIndex
        while index != bytes.endIndex {
            if bodyLeft > 0 {
                let skipped = min(bodyLeft, bytes.distance(from: index, to: bytes.endIndex))
                bodyLeft -= skipped
                index = bytes.index(index, offsetBy: skipped)
            } else if inTextLine {
                if bytes[index] == UInt8(ascii: "\n") { inTextLine = false }
                index = bytes.index(after: index)
            } else if header.isEmpty && bytes[index] != 0 {
                inTextLine = true
            } else {
                header.append(bytes[index])
                index = bytes.index(after: index)
                if header.count == 12 {
                    func word(_ at: Int) -> UInt32 { header[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
                    counts[word(4), default: 0] += 1
                    bodyLeft = Int(word(8))
                    header.removeAll(keepingCapacity: true)
                }
            }
        }
        return counts
    }
}
