/// How long to wait before trying again after consecutive failures: `initial`, doubling per failure up to `maximum`,
/// of which a random part is taken off (`jitter`) so that the many clients of a server that went away do not all
/// come back in the same instant.
public struct Backoff: Sendable, Hashable {
    public var initial: Duration
    public var maximum: Duration
    /// The part of each delay that is random: 0.5 waits 50–100 % of it, 0 exactly it.
    public var jitter: Double

    public init(initial: Duration, maximum: Duration, jitter: Double = 0.5) {
        precondition(initial >= .zero && maximum >= initial, "a backoff needs 0 ≤ initial ≤ maximum")
        precondition((0...1).contains(jitter), "a backoff's jitter is a fraction")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
    }

    /// The wait after `failures` consecutive failures (1: the first; 0 counts as 1).
    public func delay(afterFailures failures: Int) -> Duration {
        var generator = SystemRandomNumberGenerator()
        return delay(afterFailures: failures, using: &generator)
    }

    public func delay(afterFailures failures: Int, using generator: inout some RandomNumberGenerator) -> Duration {
        // Doubling stops long before it could overflow: 2^20 times any sane initial delay is past any maximum.
        let doubled = min(initial * (1 << min(max(failures - 1, 0), 20)), maximum)
        guard jitter > 0 else { return doubled }
        return doubled * Double.random(in: (1 - jitter)...1, using: &generator)
    }
}
