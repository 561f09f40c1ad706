import GatewayProtocol
import NIOCore

/// Replies in request order, whatever order their requests finish in.
///
/// Each request reserves a slot when it is read; its reply fills the slot when ready. A reply is released only
/// once every earlier slot is filled, so a slow `WAIT` holds back the replies behind it, as the protocol says.
struct ReplyOrder<Reply> {
    private var slots = LazyQueue<Reply?>()
    /// The slot number of `slots.first`.
    private var firstNumber = 0

    /// Requests read and not answered yet.
    var outstanding: Int { slots.count }

    mutating func reserve() -> Int {
        slots.append(nil)
        return firstNumber + slots.count - 1
    }

    /// Fills `slot` and returns the replies that can go out now, in order.
    mutating func fill(_ slot: Int, with reply: Reply) -> [Reply] {
        precondition(slot >= firstNumber && slot < firstNumber + slots.count && slots[offset: slot - firstNumber] == nil, "slot \(slot) is not open")
        slots[offset: slot - firstNumber] = reply
        var ready: [Reply] = []
        while let first = slots.first, let reply = first {
            ready.append(reply)
            _ = slots.popFirst()
            firstNumber += 1
        }
        return ready
    }
}

/// A FIFO queue that allocates nothing while it has never held anything: a connection has several, most stay
/// empty, and there may be 10,000 connections.
struct LazyQueue<Element> {
    private var storage: CircularBuffer<Element>?

    var isEmpty: Bool { storage?.isEmpty ?? true }
    var count: Int { storage?.count ?? 0 }
    var first: Element? { storage?.first }

    mutating func append(_ element: Element) {
        if storage == nil { storage = CircularBuffer(initialCapacity: 2) }
        storage!.append(element)
    }

    mutating func popFirst() -> Element? {
        storage?.popFirst()
    }

    mutating func removeAll() {
        storage = nil
    }

    subscript(offset offset: Int) -> Element {
        get { storage![offset: offset] }
        set { storage![offset: offset] = newValue }
    }
}

/// Output that a connection could not write yet (its client reads slower than it gets events), bounded.
///
/// Progress events for a job are coalesced while they wait (the newest replaces the queued one in place: a slow
/// watcher sees the latest progress, not every step); replies and terminal events are never dropped. Past `limit`
/// bytes, with more than one entry waiting (so that a single large result still goes to a client that reads), the
/// backlog overflows: it drops everything, and the connection is closed instead of memory growing for a client
/// that does not read.
struct OutputBacklog {
    private struct ProgressKey: Hashable {
        var id: GatewayJobID
        var tag: GatewayTag?
    }

    private enum Entry {
        case response(GatewayResponse)
        /// The newest progress for the key sits in `latestProgress`.
        case progress(ProgressKey)
    }

    private var queue = LazyQueue<Entry>()
    private var latestProgress: [ProgressKey: GatewayResponse] = [:]
    private(set) var bytes = 0
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    var isEmpty: Bool { queue.isEmpty }

    /// Queues a response; false when that overflowed the backlog (now empty).
    mutating func append(_ response: GatewayResponse) -> Bool {
        if case .event(.progress(let id, _, _, _), let tag) = response {
            let key = ProgressKey(id: id, tag: tag)
            if let queued = latestProgress.updateValue(response, forKey: key) {
                bytes -= Self.size(of: queued)
            } else {
                queue.append(.progress(key))
            }
        } else {
            queue.append(.response(response))
        }
        bytes += Self.size(of: response)
        guard bytes > limit && queue.count > 1 else { return true }
        self = OutputBacklog(limit: limit)
        return false
    }

    mutating func popFirst() -> GatewayResponse? {
        guard let entry = queue.popFirst() else { return nil }
        let response: GatewayResponse
        switch entry {
        case .response(let queued): response = queued
        case .progress(let key): response = latestProgress.removeValue(forKey: key)!
        }
        bytes -= Self.size(of: response)
        return response
    }

    /// An estimate of the bytes a response takes on the wire, for the output bound.
    static func size(of response: GatewayResponse) -> Int {
        let block: Int =
            switch response {
            case .reply(.done(_, let bytes), _), .reply(.failed(_, let bytes), _): bytes.readableBytes
            case .event(.done(_, let bytes), _), .event(.failed(_, let bytes), _): bytes.readableBytes
            case .event(.progress(_, _, _, let bytes), _): bytes.readableBytes
            default: 0
            }
        return 96 + block
    }
}
