import NIOCore

/// The wait before reconnect attempt `failures + 1`: `initial` doubling per failure, at most `maximum`.
/// (No failure yet: `initial`.) Client and worker back off the same way.
func gearmanBackoff(afterFailures failures: Int, initial: TimeAmount, maximum: TimeAmount) -> TimeAmount {
    .nanoseconds(min(maximum.nanoseconds, initial.nanoseconds << min(max(failures - 1, 0), 20)))
}
