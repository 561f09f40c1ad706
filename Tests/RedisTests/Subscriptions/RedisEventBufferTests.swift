import NIOCore
import Testing

@testable import Redis

/// The subscriber's bounded event buffer, event by event.
@Suite struct RedisEventBufferTests {
    private func message(_ index: Int) -> RedisSubscriberEvent {
        .message(RedisPubSubMessage(channel: "c", payload: ByteBuffer(string: "\(index)")))
    }

    private func drain(_ buffer: RedisEventBuffer) async -> [RedisSubscriberEvent] {
        buffer.finish()
        var events: [RedisSubscriberEvent] = []
        while let event = await buffer.next() { events.append(event) }
        return events
    }

    /// Overflowing messages fold into one trailing marker; the buffer never exceeds capacity + 1.
    @Test func overflowFoldsIntoOneMarker() async {
        let buffer = RedisEventBuffer(capacity: 3)
        for index in 0..<10 { buffer.yield(message(index)) }
        #expect(buffer.count == 4)
        #expect(await drain(buffer) == [message(0), message(1), message(2), .messagesDropped(count: 7)])
    }

    /// A resubscription while full and already marked is folded (the marker is read after it);
    /// without a marker it is kept, so a gap is always followed by an event that asks for a re-read.
    @Test func subscribedWhileFull() async {
        let marked = RedisEventBuffer(capacity: 2)
        for index in 0..<3 { marked.yield(message(index)) }
        marked.yield(.subscribed(isReconnect: true))
        #expect(await drain(marked) == [message(0), message(1), .messagesDropped(count: 1)])

        let unmarked = RedisEventBuffer(capacity: 2)
        for index in 0..<2 { unmarked.yield(message(index)) }
        unmarked.yield(.subscribed(isReconnect: true))
        unmarked.yield(message(2))
        #expect(await drain(unmarked) == [message(0), message(1), .subscribed(isReconnect: true)])
    }

    /// After the consumer catches up, messages are stored again in order.
    @Test func resumesAfterDraining() async {
        let buffer = RedisEventBuffer(capacity: 2)
        for index in 0..<4 { buffer.yield(message(index)) }
        #expect(await buffer.next() == message(0))
        #expect(await buffer.next() == message(1))
        #expect(await buffer.next() == .messagesDropped(count: 2))
        buffer.yield(message(9))
        #expect(await drain(buffer) == [message(9)])
    }

    /// A waiting consumer gets the next event directly; finishing wakes it with nil.
    @Test func waitingConsumer() async {
        let buffer = RedisEventBuffer(capacity: 2)
        async let first = buffer.next()
        try? await Task.sleep(for: .milliseconds(20))
        buffer.yield(message(1))
        #expect(await first == message(1))
        async let end = buffer.next()
        try? await Task.sleep(for: .milliseconds(20))
        buffer.finish()
        #expect(await end == nil)
    }
}
