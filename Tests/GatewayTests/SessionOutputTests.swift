import GatewayProtocol
import NIOCore
import Synchronization
import Testing

@testable import Gateway

/// Reply order and the output backlog of a session, event by event.
struct ReplyOrderTests {
    /// A reply waits for every earlier one; filling the gap releases the run behind it, in order.
    @Test func repliesLeaveInRequestOrder() {
        var order = ReplyOrder<String>()
        let slots = (0..<3).map { _ in order.reserve() }
        #expect(order.outstanding == 3)
        var released: [[String]] = []
        released.append(order.fill(slots[2], with: "c"))
        released.append(order.fill(slots[1], with: "b"))
        released.append(order.fill(slots[0], with: "a"))
        #expect(released == [[], [], ["a", "b", "c"]])
        #expect(order.outstanding == 0)
        let next = order.reserve()
        #expect(next == 3, "slot numbers keep counting")
        released = [order.fill(next, with: "d")]
        #expect(released == [["d"]])
    }

    /// The head goes alone while the slot after it is open; a slot filled early waits for the gap before it.
    @Test func headGoesAloneWhenNextIsOpen() {
        var order = ReplyOrder<Int>()
        let slots = (0..<4).map { _ in order.reserve() }
        var released: [[Int]] = []
        for (slot, value) in [(slots[2], 2), (slots[0], 0), (slots[1], 1), (slots[3], 3)] {
            released.append(order.fill(slot, with: value))
        }
        #expect(released == [[], [0], [1, 2], [3]])
    }
}

struct OutputBacklogTests {
    static let id = GatewayJobID(rawValue: "job1")!

    static func progress(_ numerator: UInt64, tag: String? = nil) -> GatewayResponse {
        .event(.progress(id, numerator: numerator, denominator: 10, message: ByteBuffer()), tag: tag.flatMap(GatewayTag.init(rawValue:)))
    }

    /// Progress of one job (and tag) coalesces in place; other entries stay, in order; the byte count follows.
    @Test func progressCoalescesInPlace() {
        var backlog = OutputBacklog(limit: 1 << 20)
        let done = GatewayResponse.event(.done(Self.id, result: ByteBuffer(string: "r")))
        var accepted: [Bool] = []
        for response in [.reply(.pong), Self.progress(1), Self.progress(1, tag: "w"), .reply(.ok), Self.progress(2), Self.progress(3), done] {
            accepted.append(backlog.append(response))
        }
        #expect(accepted.allSatisfy { $0 })
        #expect(backlog.bytes == 5 * 96 + 1)
        var drained: [GatewayResponse] = []
        while let entry = backlog.popFirst() { drained.append(entry.response) }
        #expect(drained == [.reply(.pong), Self.progress(3), Self.progress(1, tag: "w"), .reply(.ok), done])
        #expect(backlog.bytes == 0 && backlog.isEmpty)
    }

    /// One entry may exceed the limit (a big result to a client that reads); a backlog behind it overflows and
    /// empties.
    @Test func overflowEmptiesTheBacklog() {
        var backlog = OutputBacklog(limit: 1_000)
        let big = backlog.append(.event(.done(Self.id, result: ByteBuffer(repeating: 0, count: 2_000))))
        let behind = backlog.append(.reply(.ok))
        #expect(big && !behind)
        #expect(backlog.isEmpty && backlog.bytes == 0)
    }
}

/// The gateway-wide budget of result bytes that lookups hold.
struct OutcomeBudgetTests {
    /// Reservations are granted in the order they were asked for, while they fit; a release grants what waited,
    /// and the peak never passes the limit.
    @Test func grantsInOrderWithinTheLimit() {
        let budget = OutcomeBudget(limit: 10)
        let granted = Mutex<[String]>([])
        budget.reserve(6) { granted.withLock { $0.append("a") } }
        budget.reserve(6) { granted.withLock { $0.append("b") } }
        budget.reserve(1) { granted.withLock { $0.append("c") } }  // fits, but waits behind b
        #expect(granted.withLock { $0 } == ["a"])
        budget.release(6)
        #expect(granted.withLock { $0 } == ["a", "b", "c"])
        #expect(budget.reserved == 7 && budget.peak == 7)
        budget.release(7)
        #expect(budget.reserved == 0)
    }

    /// A reservation larger than the limit is granted alone, once nothing else is reserved.
    @Test func anOversizedReservationGoesAlone() {
        let budget = OutcomeBudget(limit: 10)
        let granted = Mutex<[String]>([])
        budget.reserve(4) { granted.withLock { $0.append("small") } }
        budget.reserve(25) { granted.withLock { $0.append("large") } }
        #expect(granted.withLock { $0 } == ["small"])
        budget.release(4)
        #expect(granted.withLock { $0 } == ["small", "large"])
        #expect(budget.peak == 25)
    }
}

extension ReplyOrderTests {
    /// `isFilled` tells slots with their reply (written or held) from open ones.
    @Test func filledSlots() {
        var order = ReplyOrder<String>()
        let slots = (0..<3).map { _ in order.reserve() }
        _ = order.fill(slots[1], with: "b")
        #expect(!order.isFilled(slots[0]) && order.isFilled(slots[1]) && !order.isFilled(slots[2]))
        _ = order.fill(slots[0], with: "a")
        #expect(order.isFilled(slots[0]) && order.nextSlot == 3 && !order.isFilled(3))
    }
}
