import NIOCore

@testable import Gearman

// MARK: Fixtures

extension GearmanPacket {
    /// A packet as gearmand sends it.
    static func response(_ type: GearmanPacketType, _ fields: String...) -> GearmanPacket {
        GearmanPacket(magic: .response, type: type, arguments: fields.map { ByteBuffer(string: $0) })
    }

    /// The packet's wire bytes.
    var wire: ByteBuffer {
        var buffer = ByteBuffer()
        try! GearmanMessageEncoder.write(self, into: &buffer)  // only used with valid fixtures
        return buffer
    }
}

extension ByteBuffer {
    /// Concatenates buffers, as they would arrive on one socket.
    static func joined(_ parts: [ByteBuffer]) -> ByteBuffer {
        var out = ByteBuffer()
        for var part in parts { out.writeBuffer(&part) }
        return out
    }

    /// A header with any magic, type and size, without a body.
    static func header(magic: UInt32 = 0x0052_4553, type: UInt32, size: UInt32) -> ByteBuffer {
        var out = ByteBuffer()
        out.writeMultipleIntegers(magic, type, size)
        return out
    }
}


// MARK: Equatable actions (the state machines keep them free of conformances the handlers do not need)

extension GearmanClientStateMachine.SendAction: Equatable {
    public static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case (.write, .write): true
        case (.fail(let l), .fail(let r)): l == r
        default: false
        }
    }
}

extension GearmanClientStateMachine.ReceiveAction: Equatable where Promise: Equatable, Sink: Comparable {
    /// Sinks of `failAllAndClose` come out of a dictionary, so they compare as a multiset.
    public static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case (.none, .none): true
        case (.succeed(let lp, let lr), .succeed(let rp, let rr)): lp == rp && lr == rr
        case (.fail(let lp, let le), .fail(let rp, let re)): lp == rp && le == re
        case (.deliver(let ls, let le), .deliver(let rs, let re)): ls.sorted() == rs.sorted() && le == re
        case (.failAllAndClose(let lp, let ls, let le), .failAllAndClose(let rp, let rs, let re)):
            lp == rp && ls.sorted() == rs.sorted() && le == re
        default: false
        }
    }
}

extension GearmanWorkerStateMachine.Action: Equatable where Job: Equatable {
    public static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case (.none, .none), (.sendGrab, .sendGrab), (.releaseSlotAndSleep, .releaseSlotAndSleep), (.releaseSlot, .releaseSlot),
            (.close, .close), (.releaseSlotAndClose, .releaseSlotAndClose):
            true
        case (.runJob(let l), .runJob(let r)): l == r
        default: false
        }
    }
}
