import NIOCore
import NIOEmbedded
import Testing

@testable import Memcache

/// The handler on an `EmbeddedChannel`: bytes out per batch, replies in, promises completed.
@Suite struct MemcacheChannelHandlerTests {
    private func makeChannel(_ configuration: MemcacheConnection.Configuration = .init()) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(MemcacheChannelHandler(configuration: configuration))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    private func send(_ requests: [MemcacheRequest], on channel: EmbeddedChannel) -> [EventLoopFuture<MemcacheReply>] {
        let promises = requests.map { _ in channel.eventLoop.makePromise(of: MemcacheReply.self) }
        channel.writeAndFlush(MemcacheBatch(requests: requests, promises: promises), promise: nil)
        return promises.map(\.futureResult)
    }

    /// A batch goes out as one buffer; replies complete the futures in order.
    @Test func batchIsOneWrite() throws {
        let channel = try makeChannel()
        let futures = send([.store(.set, key: "a", flags: 3, exptime: 0, data: ByteBuffer(string: "1")), .get(["a", "b"])], on: channel)
        let written = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(String(buffer: written) == "set a 3 0 1\r\n1\r\nget a b\r\n")
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        try channel.writeInbound(ByteBuffer(string: "STORED\r\nVALUE a 3 1\r\n1\r\nEND\r\n"))
        #expect(try futures[0].wait() == .stored)
        #expect(try futures[1].wait() == .values([MemcacheItem(key: "a", flags: 3, data: ByteBuffer(string: "1"))]))
        _ = try channel.finish()
    }

    /// Malformed bytes fail every waiting request with a typed error and close the channel.
    @Test func malformedReplyFailsAllAndCloses() throws {
        let channel = try makeChannel()
        let futures = send([.version, .delete("x")], on: channel)
        _ = try channel.readOutbound(as: ByteBuffer.self)
        _ = try? channel.writeInbound(ByteBuffer(string: "HELLO WORLD\r\n"))
        for future in futures {
            #expect(throws: MemcacheError.self) { try future.wait() }
            do { _ = try future.wait() } catch let error as MemcacheError { #expect(error.code == .malformedResponse) }
        }
        #expect(!channel.isActive)
    }

    /// A value larger than the maximum fails the request from its header, without buffering the data.
    @Test func oversizeValueFailsTheRequest() throws {
        let channel = try makeChannel(.init(maximumValueSize: 100))
        let futures = send([.get(["big"])], on: channel)
        _ = try? channel.writeInbound(ByteBuffer(string: "VALUE big 0 101\r\n"))
        do {
            _ = try futures[0].wait()
            Issue.record("no error")
        } catch let error as MemcacheError {
            #expect(error.code == .valueTooLarge)
        }
        #expect(!channel.isActive)
    }

    /// Closing the channel fails requests in flight and any sent afterwards.
    @Test func closeFailsInFlight() throws {
        let channel = try makeChannel()
        let futures = send([.version], on: channel)
        channel.pipeline.fireChannelInactive()
        do {
            _ = try futures[0].wait()
            Issue.record("no error")
        } catch let error as MemcacheError {
            #expect(error.code == .connectionClosed)
        }
        let later = send([.version], on: channel)
        #expect(throws: MemcacheError.self) { try later[0].wait() }
    }
}
