public import NIOCore

/// A message delivered to a subscriber: `message` (exact channel) or `pmessage` (pattern match).
public struct RedisPubSubMessage: Sendable, Hashable {
    /// The channel it was published on, e.g. `__keyspace@0__:job:42`.
    public var channel: String
    /// The pattern that matched, for `PSUBSCRIBE`; `nil` for an exact `SUBSCRIBE`.
    public var pattern: String?
    /// What was published; for keyspace notifications the event name (`hset`), for keyevent ones the key.
    public var payload: ByteBuffer

    public init(channel: String, pattern: String? = nil, payload: ByteBuffer) {
        self.channel = channel
        self.pattern = pattern
        self.payload = payload
    }

    /// Recognises RESP2 pub/sub pushes: `["message", channel, payload]`, `["pmessage", pattern, channel, payload]`.
    /// Only meaningful on a subscribed connection, where no command can return such an array.
    init?(_ reply: RedisReply) {
        guard case .array(let elements) = reply, case .bulkString(let kind) = elements.first else { return nil }
        switch (kind.readableBytesView.elementsEqual("message".utf8), elements.count) {
        case (true, 3):
            guard let channel = elements[1].string, let payload = elements[2].buffer else { return nil }
            self.init(channel: channel, payload: payload)
        case (false, 4) where kind.readableBytesView.elementsEqual("pmessage".utf8):
            guard let pattern = elements[1].string, let channel = elements[2].string, let payload = elements[3].buffer else { return nil }
            self.init(channel: channel, pattern: pattern, payload: payload)
        default:
            return nil
        }
    }
}
