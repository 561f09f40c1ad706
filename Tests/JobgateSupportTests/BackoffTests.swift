import JobgateSupport
import Testing

@Suite struct BackoffTests {
    /// Without jitter: the initial delay after the first failure (and before any), doubling, then the maximum.
    @Test func doublesUpToTheMaximum() {
        let backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(1), jitter: 0)
        let delays = (0...7).map { backoff.delay(afterFailures: $0) }
        #expect(delays == [100, 100, 200, 400, 800, 1000, 1000, 1000].map { Duration.milliseconds($0) })
    }

    /// A long outage does not overflow: the delay stays at the maximum.
    @Test func manyFailuresStayAtTheMaximum() {
        let backoff = Backoff(initial: .seconds(30), maximum: .seconds(60), jitter: 0)
        #expect(backoff.delay(afterFailures: 10_000) == .seconds(60))
        #expect(backoff.delay(afterFailures: .max) == .seconds(60))
    }

    /// Jitter takes a random part off, never more than asked: every delay lies between half and all of the full one.
    @Test func jitterStaysInItsRange() {
        let backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(1), jitter: 0.5)
        let exact = Backoff(initial: .milliseconds(100), maximum: .seconds(1), jitter: 0)
        for failures in 1...8 {
            let full = exact.delay(afterFailures: failures)
            for _ in 0..<1_000 {
                let delay = backoff.delay(afterFailures: failures)
                #expect(delay >= full / 2 && delay <= full, "\(failures): \(delay) of \(full)")
            }
        }
    }

    /// Delays of many clients differ (the point of jitter).
    @Test func jitterSpreadsClients() {
        let backoff = Backoff(initial: .seconds(1), maximum: .seconds(1))
        #expect(Set((0..<20).map { _ in backoff.delay(afterFailures: 1) }).count > 1)
    }
}
