/// How many replicas must hold a write before it counts as done: Redis `WAIT <replicas> <timeout>`, sent after the
/// write on the same connection (`WAIT` counts the writes of its own connection).
///
/// Redis replicates asynchronously; a write the primary took but no replica holds is lost if the primary fails before
/// passing it on. Waiting for `replicas` makes such a loss need `replicas + 1` failures, and Sentinel promotes the
/// replica with the most data.
public struct RedisReplicasAck: Sendable, Hashable {
    public var replicas: Int
    /// Longest wait; when it passes with fewer replicas, the write throws `.replicasNotAcknowledged`.
    public var timeout: Duration

    public init(replicas: Int, timeout: Duration = .seconds(1)) {
        precondition(replicas > 0, "WAIT for at least one replica")
        self.replicas = replicas
        self.timeout = timeout
    }

    var command: RedisCommand { ["WAIT", .init(replicas), .init(Int(timeout / .milliseconds(1)))] }

    func check(_ reply: RedisReply) throws {
        if let message = reply.errorMessage { throw RedisError.server(message) }
        guard let count = reply.int else { throw RedisError(.protocolError, "WAIT answered \(reply)") }
        guard count >= replicas else {
            throw RedisError(.replicasNotAcknowledged, "\(count) of \(replicas) replicas took the write within \(timeout)")
        }
    }
}
