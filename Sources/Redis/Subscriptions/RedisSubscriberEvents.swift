import NIOCore
import Synchronization

/// What a ``RedisSubscriber`` delivers.
///
/// Pub/sub is fire-and-forget: messages published while the subscriber was disconnected, or dropped
/// because the consumer fell behind, are gone. `.subscribed` and `.messagesDropped` mark those gaps:
/// **a consumer must treat each of them as "messages may have been lost" and re-read the state it
/// follows** (for jobgate: `HGET` every watched job). ``mayHaveLostMessages`` is true for both.
public enum RedisSubscriberEvent: Sendable, Hashable {
    case message(RedisPubSubMessage)
    /// The server confirmed every subscription on a new connection. `isReconnect` is false for the
    /// first connection only. Messages published from now on arrive; earlier ones may be lost.
    case subscribed(isReconnect: Bool)
    /// The consumer did not keep up and `count` messages were dropped before this point.
    case messagesDropped(count: Int)

    /// True when the consumer must reconcile (re-read state) because messages may be missing.
    public var mayHaveLostMessages: Bool {
        if case .message = self { return false }
        return true
    }
}

/// The events of a ``RedisSubscriber``, for one consumer, from a buffer of bounded size.
///
/// When `capacity` events wait, new messages are counted instead of stored: the buffer then ends
/// with one `.messagesDropped(count)`, so it never holds more than `capacity + 1` events. While the
/// buffer is full and ends in an unread marker (`.messagesDropped` or `.subscribed`), anything new is
/// folded into it: the consumer reads that marker, and re-reads state, after the loss anyway. Cancelling the
/// consuming task ends the sequence and discards what waits.
public struct RedisSubscriberEvents: AsyncSequence, Sendable {
    public typealias Element = RedisSubscriberEvent
    public typealias Failure = Never

    let buffer: RedisEventBuffer

    public struct AsyncIterator: AsyncIteratorProtocol {
        let buffer: RedisEventBuffer

        public mutating func next() async -> RedisSubscriberEvent? {
            await buffer.next()
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async -> RedisSubscriberEvent? {
            await buffer.next()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(buffer: buffer)
    }
}

final class RedisEventBuffer: Sendable {
    private struct State {
        var queue = CircularBuffer<RedisSubscriberEvent>()
        var waiter: CheckedContinuation<RedisSubscriberEvent?, Never>?
        var isFinished = false
    }

    let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) {
        precondition(capacity > 0, "the event buffer needs room for at least one event")
        self.capacity = capacity
    }

    /// Events waiting to be consumed (tests check the bound with it).
    var count: Int { state.withLock { $0.queue.count } }

    func yield(_ event: RedisSubscriberEvent) {
        let waiter: CheckedContinuation<RedisSubscriberEvent?, Never>? = state.withLock { state in
            guard !state.isFinished else { return nil }
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            if state.queue.count < capacity {
                state.queue.append(event)
                return nil
            }
            switch (event, state.queue.last) {
            case (.message, .messagesDropped(let count)?):
                state.queue[state.queue.index(before: state.queue.endIndex)] = .messagesDropped(count: count + 1)
            case (_, .some(let last)) where last.mayHaveLostMessages:
                break  // the unread marker at the end already asks for a re-read after this point
            case (.message, _):
                state.queue.append(.messagesDropped(count: 1))
            default:
                state.queue.append(event)
            }
            return nil
        }
        waiter?.resume(returning: event)
    }

    /// Ends the sequence after the events already buffered.
    func finish() {
        let waiter = state.withLock { state in
            state.isFinished = true
            defer { state.waiter = nil }
            return state.queue.isEmpty ? state.waiter : nil
        }
        waiter?.resume(returning: nil)
    }

    /// The consumer went away: end now and free what waits.
    private func cancel() {
        let waiter = state.withLock { state in
            state.isFinished = true
            state.queue.removeAll()
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    func next() async -> RedisSubscriberEvent? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<RedisSubscriberEvent?, Never>) in
                let ready: RedisSubscriberEvent?? = state.withLock { state in
                    if let event = state.queue.popFirst() { return .some(event) }
                    if state.isFinished { return .some(nil) }
                    precondition(state.waiter == nil, "RedisSubscriberEvents supports one consumer at a time")
                    state.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            cancel()
        }
    }
}
