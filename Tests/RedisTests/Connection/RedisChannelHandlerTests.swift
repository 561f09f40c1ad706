import NIOCore
import NIOEmbedded
import Testing

@testable import Redis

/// The handler on an `EmbeddedChannel`: FIFO matching and failure paths that a real server will not produce.
@Suite struct RedisChannelHandlerTests {
    private func makeChannel(maximumReplySize: Int = 1 << 20, commandTimeout: TimeAmount? = nil) throws -> (EmbeddedChannel, RedisChannelHandler) {
        let handler = RedisChannelHandler(maximumReplySize: maximumReplySize, commandTimeout: commandTimeout, peer: "embedded")
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 6379)).wait()
        return (channel, handler)
    }

    /// A batch is written in one buffer; replies are matched in order, split across reads as they come.
    @Test func pipelinedRequestsAreMatchedInOrder() throws {
        let (channel, handler) = try makeChannel()
        let first = channel.eventLoop.makePromise(of: [RedisReply].self)
        let second = channel.eventLoop.makePromise(of: [RedisReply].self)
        handler.send([["GET", "a"], ["GET", "b"]], promise: first)
        handler.send([["INCR", "c"]], promise: second)
        var written = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(written.readString(length: written.readableBytes) == "*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n")
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n"))

        try channel.writeInbound(ByteBuffer(string: "$1\r\nx\r\n$-1\r\n:"))
        #expect(try first.futureResult.wait() == [.bulkString(ByteBuffer(string: "x")), .null])
        try channel.writeInbound(ByteBuffer(string: "5\r\n"))
        #expect(try second.futureResult.wait() == [.integer(5)])
        #expect(channel.isActive)
    }

    /// Garbage from the server fails every request in flight with a protocol error and closes the connection.
    @Test func malformedReplyFailsAllAndCloses() throws {
        let (channel, handler) = try makeChannel()
        let first = channel.eventLoop.makePromise(of: [RedisReply].self)
        let second = channel.eventLoop.makePromise(of: [RedisReply].self)
        handler.send([["PING"]], promise: first)
        handler.send([["PING"]], promise: second)
        try channel.writeInbound(ByteBuffer(string: "?what\r\n"))
        for promise in [first, second] {
            let error = #expect(throws: RedisError.self) { try promise.futureResult.wait() }
            #expect(error?.code == .protocolError)
        }
        #expect(!channel.isActive)
        let late = channel.eventLoop.makePromise(of: [RedisReply].self)
        handler.send([["PING"]], promise: late)
        #expect(throws: RedisError.self) { try late.futureResult.wait() }
    }

    /// A reply over the configured size fails the request with `.replyTooLarge` and closes.
    @Test func replyTooLargeCloses() throws {
        let (channel, handler) = try makeChannel(maximumReplySize: 64)
        let promise = channel.eventLoop.makePromise(of: [RedisReply].self)
        handler.send([["GET", "big"]], promise: promise)
        try channel.writeInbound(ByteBuffer(string: "$1000\r\n" + String(repeating: "x", count: 100)))
        let error = #expect(throws: RedisError.self) { try promise.futureResult.wait() }
        #expect(error?.code == .replyTooLarge)
        #expect(!channel.isActive)
    }

    /// A reply nobody asked for is a protocol violation, not a crash.
    @Test func unsolicitedReplyCloses() throws {
        let (channel, _) = try makeChannel()
        try channel.writeInbound(ByteBuffer(string: "+OK\r\n"))
        #expect(!channel.isActive)
    }

    /// When the oldest reply does not come within the command timeout, everything in flight fails with `.timeout`.
    @Test func commandTimeout() throws {
        let (channel, handler) = try makeChannel(commandTimeout: .seconds(1))
        let promise = channel.eventLoop.makePromise(of: [RedisReply].self)
        handler.send([["BLPOP", "k", "0"]], promise: promise)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(999))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        let error = #expect(throws: RedisError.self) { try promise.futureResult.wait() }
        #expect(error?.code == .timeout)
        #expect(!channel.isActive)
    }

    /// A cancelled request fails at once; its reply is still consumed so later replies stay matched.
    @Test func cancelledRequestKeepsOrder() throws {
        let (channel, handler) = try makeChannel()
        let first = channel.eventLoop.makePromise(of: [RedisReply].self)
        let second = channel.eventLoop.makePromise(of: [RedisReply].self)
        let id = handler.send([["GET", "a"]], promise: first)
        handler.send([["GET", "b"]], promise: second)
        handler.cancel(id)
        #expect(throws: CancellationError.self) { try first.futureResult.wait() }
        try channel.writeInbound(ByteBuffer(string: ":1\r\n:2\r\n"))
        #expect(try second.futureResult.wait() == [.integer(2)])
    }

    /// The connection going away fails every request in flight with `.connectionClosed`.
    @Test func inactiveFailsEverything() throws {
        let (channel, handler) = try makeChannel()
        let promise = channel.eventLoop.makePromise(of: [RedisReply].self)
        handler.send([["GET", "a"]], promise: promise)
        channel.pipeline.fireChannelInactive()
        let error = #expect(throws: RedisError.self) { try promise.futureResult.wait() }
        #expect(error?.code == .connectionClosed)
        #expect(error?.message.contains("1 requests in flight") == true)
    }

    /// On a subscriber connection, messages go to the push handler and confirmations to the FIFO.
    @Test func pushMessagesBypassTheQueue() throws {
        let received = Locked<[RedisPubSubMessage]>([])
        let handler = RedisChannelHandler(maximumReplySize: 1 << 20, commandTimeout: nil, peer: "embedded") { message in
            received.withLock { $0.append(message) }
        }
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(handler)
        let promise = channel.eventLoop.makePromise(of: [RedisReply].self)
        handler.send([["SUBSCRIBE", "a", "b"]], expectedReplies: 2, errorEndsRequest: true, promise: promise)
        try channel.writeInbound(ByteBuffer(string:
            "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n"
            + "*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n*4\r\n$8\r\npmessage\r\n$2\r\nj*\r\n$2\r\nj1\r\n$3\r\nset\r\n"))
        #expect(try promise.futureResult.wait().count == 2)
        #expect(received.value == [
            RedisPubSubMessage(channel: "a", payload: ByteBuffer(string: "hi")),
            RedisPubSubMessage(channel: "j1", pattern: "j*", payload: ByteBuffer(string: "set")),
        ])

        // One error reply answers a whole SUBSCRIBE (ACL refusal).
        let refused = channel.eventLoop.makePromise(of: [RedisReply].self)
        handler.send([["SUBSCRIBE", "x", "y"]], expectedReplies: 2, errorEndsRequest: true, promise: refused)
        try channel.writeInbound(ByteBuffer(string: "-NOPERM no\r\n"))
        #expect(try refused.futureResult.wait() == [.error("NOPERM no")])
    }
}
