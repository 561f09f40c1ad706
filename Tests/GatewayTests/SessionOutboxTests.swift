import GatewayProtocol
import NIOCore
import Synchronization
import Testing

@testable import Gateway

/// The per-connection outbox, event by event.
struct SessionOutboxTests {
    static let id = GatewayJobID(rawValue: "job1")!

    static func progress(_ numerator: UInt64) -> GatewayResponse {
        .event(.progress(id, numerator: numerator, denominator: 10, message: ByteBuffer()))
    }

    /// A slow reader sees the newest progress of a job in the place of the first unsent one; replies and terminal
    /// events stay, in order.
    @Test func progressIsCoalescedRepliesAreKept() async {
        let outbox = SessionOutbox(limit: 1 << 20)
        outbox.enqueue(.reply(.pong))
        outbox.enqueue(Self.progress(1))
        outbox.enqueue(.reply(.ok))
        outbox.enqueue(Self.progress(2))
        outbox.enqueue(Self.progress(3))
        outbox.enqueue(.event(.done(Self.id, result: ByteBuffer(string: "r"))))
        outbox.close()
        var written: [GatewayResponse] = []
        while case .response(let response) = await outbox.next() { written.append(response) }
        #expect(written == [.reply(.pong), Self.progress(3), .reply(.ok), .event(.done(Self.id, result: ByteBuffer(string: "r")))])
    }

    /// A backlog over the limit overflows once: everything is dropped, the owner is told, nothing more is taken.
    @Test func overflowDropsTheBacklogAndTellsOnce() async {
        let overflows = Mutex(0)
        let outbox = SessionOutbox(limit: 1_000) { overflows.withLock { $0 += 1 } }
        let big = GatewayResponse.event(.done(Self.id, result: ByteBuffer(repeating: 0, count: 900)))
        #expect(outbox.enqueue(big), "one entry may exceed the limit on its own")
        #expect(overflows.withLock { $0 } == 0)
        outbox.enqueue(.event(.expired(Self.id)))  // a backlog of events behind it: over the limit (replies do not count)
        #expect(overflows.withLock { $0 } == 1)
        #expect(outbox.enqueue(.reply(.pong)) == false)
        #expect(overflows.withLock { $0 } == 1)
        #expect(!outbox.isOpen)
    }
}
