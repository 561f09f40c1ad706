import JobgateSupport
import LocalServers
import NIOCore
import Testing

@testable import Redis

@Suite(.serialized) struct RedisSubscriberTests {
    private func message(_ event: RedisSubscriberEvent?) -> RedisPubSubMessage? {
        if case .message(let message)? = event { return message }
        return nil
    }

    /// Runs `subscriber` while `body` consumes its events, then cancels it; `run()` must return.
    private func running(
        _ subscriber: RedisSubscriber,
        _ body: @escaping @Sendable (inout RedisSubscriberEvents.AsyncIterator) async throws -> Void
    ) async throws {
        try await withTimeout {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await subscriber.run() }
                var events = subscriber.events.makeAsyncIterator()
                try await body(&events)
                group.cancelAll()
                try await group.waitForAll()
                // run() returned: the sequence ends.
                #expect(await events.next() == nil)
            }
        }
    }

    /// Keyevent notifications arrive (the channel the job change feed follows); the subscription survives a kill
    /// and restart on the same port, `.subscribed(isReconnect: true)` comes only once the server confirmed it, and
    /// later writes arrive.
    @Test func keyeventNotificationsAcrossRestart() async throws {
        try await withLocalServer(.redis, arguments: ["--notify-keyspace-events", "Eh"]) { server in
            let subscriber = RedisSubscriber(
                configuration: server.redisConfiguration(),
                channels: ["__keyevent@0__:hset"],
                backoff: .init(initial: .milliseconds(20), maximum: .milliseconds(200))
            )
            try await running(subscriber) { events in
                #expect(await events.next() == .subscribed(isReconnect: false))
                let writer = try await RedisConnection.connect(to: server)
                try await writer.send(["HSET", "job:1", "status", "running"])
                let first = try #require(message(await events.next()))
                #expect(first.channel == "__keyevent@0__:hset")
                #expect(first.pattern == nil)
                #expect(first.payload == ByteBuffer(string: "job:1"))
                await writer.close()

                server.kill()
                try await server.launch()
                #expect(await events.next() == .subscribed(isReconnect: true))
                // The event follows the confirmation: the server already counts the subscription.
                let after = try await RedisConnection.connect(to: server)
                #expect(try await after.send(["PUBSUB", "NUMSUB", "__keyevent@0__:hset"]) == .array([.bulkString(ByteBuffer(string: "__keyevent@0__:hset")), .integer(1)]))
                try await after.send(["HSET", "job:2", "status", "done"])
                let second = try #require(message(await events.next()))
                #expect(second.payload == ByteBuffer(string: "job:2"))
                await after.close()
            }
        }
    }

    /// Channels added and removed while running are confirmed before the call returns.
    @Test func dynamicSubscriptions() async throws {
        try await withLocalServer(.redis) { server in
            let subscriber = RedisSubscriber(configuration: server.redisConfiguration(), channels: ["a"])
            try await running(subscriber) { events in
                #expect(await events.next() == .subscribed(isReconnect: false))
                let publisher = try await RedisConnection.connect(to: server)
                try await subscriber.subscribe(to: ["b"])
                #expect(try await publisher.send(["PUBSUB", "NUMSUB", "b"]) == .array([.bulkString(ByteBuffer(string: "b")), .integer(1)]))
                try await publisher.send(["PUBLISH", "b", .bytes([0, 13, 10])])
                #expect(message(await events.next()) == RedisPubSubMessage(channel: "b", payload: ByteBuffer(bytes: [0, 13, 10])))
                try await subscriber.unsubscribe(from: ["b"])
                #expect(try await publisher.send(["PUBLISH", "b", "lost"]) == .integer(0))
                try await publisher.send(["PUBLISH", "a", "kept"])
                #expect(message(await events.next())?.payload == ByteBuffer(string: "kept"))
                await publisher.close()
            }
        }
    }

    /// A consumer that does not read keeps at most `capacity + 1` events: the rest are counted in one
    /// `.messagesDropped` marker, delivered after the kept messages.
    @Test func slowConsumerIsBounded() async throws {
        try await withLocalServer(.redis) { server in
            let subscriber = RedisSubscriber(configuration: server.redisConfiguration(), channels: ["flood"], bufferCapacity: 10)
            try await running(subscriber) { events in
                #expect(await events.next() == .subscribed(isReconnect: false))
                let publisher = try await RedisConnection.connect(to: server)
                let results = try await publisher.pipeline((0..<500).map { ["PUBLISH", "flood", "\($0)"] })
                #expect(results.allSatisfy { (try? $0.get()) == .integer(1) })
                // The confirmation comes after all 500 messages on the subscriber's connection.
                try await subscriber.subscribe(to: ["sync"])
                #expect(subscriber.bufferedEventCount == 11)
                for index in 0..<10 {
                    #expect(message(await events.next())?.payload == ByteBuffer(string: "\(index)"))
                }
                let marker = await events.next()
                #expect(marker == .messagesDropped(count: 490))
                #expect(marker?.mayHaveLostMessages == true)
                try await publisher.send(["PUBLISH", "flood", "after"])
                #expect(message(await events.next())?.payload == ByteBuffer(string: "after"))
                await publisher.close()
            }
        }
    }

    /// A consumer that went away (cancelled) ends the sequence; later messages are not kept.
    @Test func closedConsumerKeepsNothing() async throws {
        try await withLocalServer(.redis) { server in
            let subscriber = RedisSubscriber(configuration: server.redisConfiguration(), channels: ["c"])
            try await withTimeout {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await subscriber.run() }
                    let consumer = Task {
                        var count = 0
                        for await _ in subscriber.events { count += 1 }
                        return count
                    }
                    while !subscriber.hasConnection { try await Task.sleep(for: .milliseconds(10)) }
                    try await Task.sleep(for: .milliseconds(50))
                    consumer.cancel()
                    _ = await consumer.value
                    let publisher = try await RedisConnection.connect(to: server)
                    _ = try await publisher.pipeline((0..<100).map { ["PUBLISH", "c", "\($0)"] })
                    try await subscriber.subscribe(to: ["sync"])
                    #expect(subscriber.bufferedEventCount == 0)
                    await publisher.close()
                    group.cancelAll()
                }
            }
        }
    }

    /// A subscriber whose server never answers keeps retrying until cancelled, then returns.
    @Test func retriesUntilCancelled() async throws {
        let port = try freeLoopbackPort()
        let subscriber = RedisSubscriber(configuration: .init(port: port), channels: ["x"], backoff: .init(initial: .milliseconds(10), maximum: .milliseconds(50)))
        try await withTimeout {
            let run = Task { try await subscriber.run() }
            try await Task.sleep(for: .milliseconds(300))
            run.cancel()
            try await run.value
            var events = subscriber.events.makeAsyncIterator()
            #expect(await events.next() == nil)
        }
    }
}
