import Foundation
import GatewayProtocol
import LocalServers
import NIOCore
import NIOPosix
import Synchronization

/// Many lookups of one large result at once, while another client asks for a status.
extension BenchmarkStack {
    static let largeResultFunction = "bench.large"

    struct LargeResultsResult {
        var rssIdle: Int
        var rssPeak: Int
        /// How long each burst took to read all its replies.
        var bursts: [Duration]
        var status: [Int64]
    }

    /// A job finishes with a `size`-byte result; then, `bursts` times in a row, `connections` clients each pipeline
    /// their share of `lookups` `RESULT`s of it and read the replies, while one more client sends `STATUS` of it one
    /// at a time. The gateway's RSS is sampled every few milliseconds meanwhile. The `STATUS` client has an event
    /// loop of its own, as another process would: the readers' megabytes must not delay reading its replies here.
    func largeResults(lookups: Int, connections: Int, size: Int, bursts: Int) async throws -> LargeResultsResult {
        let port = gatewayPort
        let result = ByteBuffer(repeating: UInt8(ascii: "m"), count: size)
        let id = try await withJobWorker(Self.largeResultFunction, concurrency: 1, handler: { _, _ in result }) {
            try await connectGateway(port: port).executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                try await outbound.write(GatewayRequests.line("SUBMIT \(Self.largeResultFunction) 1 wait=30000\r\nx"))
                guard case .reply(.done(let id, let bytes), _) = try await iterator.nextResponse("the large job").response, bytes == result else {
                    throw BenchmarkError("the large job did not end with its result")
                }
                return id
            }
        }
        try await Task.sleep(for: .seconds(3))  // the gateway trims malloc's free pages every 2 s
        let rssIdle = try gatewayRSSBytes

        let finished = Flag()
        let peak = Maximum(rssIdle)
        let statusLoop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { statusLoop.shutdownGracefully { _ in } }
        return try await withThrowingTaskGroup(of: [Int64].self) { group in
            group.addTask {
                while !finished.isRaised {
                    peak.record(try self.gatewayRSSBytes)
                    try await Task.sleep(for: .milliseconds(2))
                }
                return []
            }
            group.addTask {
                try await connectGateway(port: port, group: statusLoop).executeThenClose { inbound, outbound in
                    var iterator = inbound.makeAsyncIterator()
                    var latencies: [Int64] = []
                    while !finished.isRaised {
                        let start = ContinuousClock.now
                        try await outbound.write(GatewayRequests.line("STATUS \(id)"))
                        let reply = try await iterator.nextResponse("STATUS")
                        guard case .reply(.status, _) = reply.response else { throw BenchmarkError("STATUS answered \(reply.response)") }
                        latencies.append((reply.at - start).nanoseconds)
                        try await Task.sleep(for: .milliseconds(1))
                    }
                    return latencies
                }
            }
            var durations: [Duration] = []
            for _ in 0..<bursts {
                let start = ContinuousClock.now
                try await withThrowingTaskGroup(of: Void.self) { readers in
                    for share in Self.shares(lookups, connections) {
                        readers.addTask { try await Self.readResults(port: port, id: id, count: share, size: size) }
                    }
                    try await readers.waitForAll()
                }
                durations.append(ContinuousClock.now - start)
            }
            finished.raise()
            var status: [Int64] = []
            for try await latencies in group { status += latencies }
            return LargeResultsResult(rssIdle: rssIdle, rssPeak: peak.value, bursts: durations, status: status)
        }
    }
}

extension BenchmarkStack {
    /// Pipelines `count` RESULTs of `id` on a connection of its own and reads every reply, checking each is `DONE`
    /// with `size` bytes, but counting the bytes rather than keeping them: the readers stand for clients on other
    /// machines, so they should take as little of this machine's CPU as they can (decoding each result into a buffer
    /// of its own took the bench process twice the gateway's CPU, most of it page faults).
    static func readResults(port: Int, id: GatewayJobID, count: Int, size: Int) async throws {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ResultCounter(expected: count, size: size, done: channel.eventLoop.makePromise()))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        defer { channel.close(promise: nil) }
        let counter = try await channel.pipeline.handler(type: ResultCounter.self).get()
        try await channel.writeAndFlush(ByteBuffer(string: String(repeating: "RESULT \(id)\r\n", count: count)))
        try await counter.done.futureResult.get()
    }
}

/// Counts `DONE <id> <size>` replies and skips their results (see `readResults`); fails on anything else.
private final class ResultCounter: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let done: EventLoopPromise<Void>
    private let size: Int
    private var remaining: Int
    private var line: [UInt8] = []
    /// Bytes of the current result, and of the line break after it, still to skip.
    private var skipping = 0

    init(expected: Int, size: Int, done: EventLoopPromise<Void>) {
        self.remaining = expected
        self.size = size
        self.done = done
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        while buffer.readableBytes > 0, remaining > 0 {
            if skipping > 0 {
                let skipped = min(skipping, buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: skipped)
                skipping -= skipped
                if skipping == 0 {
                    remaining -= 1
                    if remaining == 0 { done.succeed() }
                }
                continue
            }
            guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
                line += buffer.readableBytesView
                return
            }
            line += buffer.readableBytesView[..<newline]
            buffer.moveReaderIndex(to: newline + 1)
            let words = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ")
            line.removeAll(keepingCapacity: true)
            guard words.count == 3, words[0] == "DONE", Int(words[2]) == size else {
                fail(BenchmarkError("RESULT answered `\(words.joined(separator: " ").prefix(120))`, not the result"))
                context.close(promise: nil)
                return
            }
            skipping = size + GatewayResponseEncoder.blockEnd.utf8.count
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(BenchmarkError("the gateway closed the connection with \(remaining) RESULTs unanswered"))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(error)
        context.close(promise: nil)
    }

    private func fail(_ error: any Error) {
        guard remaining > 0 else { return }  // every reply was read: nothing left to fail
        remaining = 0
        done.fail(error)
    }
}

/// A flag one task raises and others poll.
private final class Flag: Sendable {
    private let value = Atomic<Bool>(false)

    func raise() { value.store(true, ordering: .relaxed) }
    var isRaised: Bool { value.load(ordering: .relaxed) }
}

/// The largest of the values recorded.
private final class Maximum: Sendable {
    private let largest: Atomic<Int>

    init(_ initial: Int) { largest = Atomic(initial) }

    func record(_ value: Int) { largest.max(value, ordering: .relaxed) }
    var value: Int { largest.load(ordering: .relaxed) }
}
