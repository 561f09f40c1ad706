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

    /// The number the next reserved slot gets.
    var nextSlot: Int { firstNumber + slots.count }

    /// Whether `slot` has its reply (written already, or held behind an earlier one).
    func isFilled(_ slot: Int) -> Bool {
        slot < firstNumber || (slot < nextSlot && slots[offset: slot - firstNumber] != nil)
    }

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

/// A FIFO queue that holds no storage while it is empty: a connection has several, most are empty most of the time
/// (an idle watcher's, once its `WATCH` was answered), and there may be 10,000 connections.
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
        defer { if storage?.isEmpty == true { storage = nil } }
        return storage?.popFirst()
    }

    mutating func removeAll() {
        storage = nil
    }

    subscript(offset offset: Int) -> Element {
        get { storage![offset: offset] }
        set { storage![offset: offset] = newValue }
    }
}

/// Output that a connection could not write yet (its client reads slower than output comes), bounded.
///
/// Progress events for a job are coalesced while they wait (the newest replaces the queued one in place: a slow
/// watcher sees the latest progress, not every step); replies and terminal events are never dropped. Events count
/// against `limit`: past it, with more than one entry waiting (so that a single large result still goes to a client
/// that reads), the backlog overflows: it drops everything, and the connection is closed instead of memory growing
/// for a client that does not read. Replies do not count there: the session bounds them by starting no requests
/// while `bytes` is high, and a reply's result bytes reserved from the lookup budget (its `charge`) are bounded by
/// that budget.
struct OutputBacklog {
    private struct ProgressKey: Hashable {
        var id: GatewayJobID
        var tag: GatewayTag?
    }

    private enum Entry {
        case response(GatewayResponse, charge: Int)
        /// The newest progress for the key sits in `latestProgress`.
        case progress(ProgressKey)
    }

    private var queue = LazyQueue<Entry>()
    private var latestProgress: [ProgressKey: GatewayResponse] = [:]
    /// Bytes waiting, but for result bytes charged to the lookup budget.
    private(set) var bytes = 0
    /// Bytes of events waiting: what `limit` bounds.
    private var eventBytes = 0
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    var isEmpty: Bool { queue.isEmpty }

    /// Queues a response, with the result bytes it holds from the lookup budget; false when that overflowed the
    /// backlog (now empty).
    mutating func append(_ response: GatewayResponse, charge: Int = 0) -> Bool {
        let size = Self.size(of: response)
        if case .event(.progress(let id, _, _, _), let tag) = response {
            let key = ProgressKey(id: id, tag: tag)
            if let queued = latestProgress.updateValue(response, forKey: key) {
                bytes -= Self.size(of: queued)
                eventBytes -= Self.size(of: queued)
            } else {
                queue.append(.progress(key))
            }
        } else {
            queue.append(.response(response, charge: charge))
        }
        bytes += size - charge
        if case .event = response { eventBytes += size }
        guard eventBytes > limit && queue.count > 1 else { return true }
        self = OutputBacklog(limit: limit)
        return false
    }

    mutating func popFirst() -> (response: GatewayResponse, charge: Int)? {
        guard let entry = queue.popFirst() else { return nil }
        let response: GatewayResponse
        var charge = 0
        switch entry {
        case .response(let queued, let queuedCharge): (response, charge) = (queued, queuedCharge)
        case .progress(let key): response = latestProgress.removeValue(forKey: key)!
        }
        bytes -= Self.size(of: response) - charge
        if case .event = response { eventBytes -= Self.size(of: response) }
        return (response, charge)
    }

    /// An estimate of the bytes a response takes on the wire, for the output bound.
    static func size(of response: GatewayResponse) -> Int {
        let block: Int =
            switch response {
            case .reply(.done(_, let bytes), _), .reply(.failed(_, let bytes), _): bytes.readableBytes
            case .event(.done(_, let bytes), _), .event(.failed(_, let bytes), _): bytes.readableBytes
            case .event(.progress(_, _, _, let bytes), _): bytes.readableBytes
            case .event(.logged(.done(_, let bytes), _), _), .event(.logged(.failed(_, let bytes), _), _): bytes.readableBytes
            default: 0
            }
        return 96 + block
    }
}
