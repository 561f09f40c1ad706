import GatewayProtocol
import Synchronization

/// The gateway's counters, shown by `STATS`.
final class GatewayStatistics: Sendable {
    let connectionsAccepted = Atomic<Int>(0)
    let connectionsOpen = Atomic<Int>(0)
    let connectionsRefused = Atomic<Int>(0)
    let commands = Atomic<Int>(0)
    let protocolErrors = Atomic<Int>(0)
    let jobsSubmitted = Atomic<Int>(0)
    let jobsJoined = Atomic<Int>(0)
    let jobsLost = Atomic<Int>(0)
    let eventsPushed = Atomic<Int>(0)
    let backendErrors = Atomic<Int>(0)
    let slowConsumersClosed = Atomic<Int>(0)
    let legacyPolls = Atomic<Int>(0)
    /// Labelled counters and the push latency histogram (`GatewayMetrics.swift`).
    let metrics = GatewayMetricCounters()
    /// Result bytes lookups hold now, and their peak (the budget is their one owner).
    let outcomes: OutcomeBudget

    init(maximumOutcomeBytes: Int = GatewayConfiguration().maximumOutcomeBytes) {
        outcomes = OutcomeBudget(limit: maximumOutcomeBytes)
    }

    func snapshot(watchedJobs: Int) -> [GatewayStatistic] {
        func stat(_ name: String, _ counter: borrowing Atomic<Int>) -> GatewayStatistic {
            GatewayStatistic(name, String(counter.load(ordering: .relaxed)))
        }
        return [
            stat("connections_accepted", connectionsAccepted), stat("connections_open", connectionsOpen),
            stat("connections_refused", connectionsRefused), stat("commands", commands), stat("protocol_errors", protocolErrors),
            stat("jobs_submitted", jobsSubmitted), stat("jobs_joined", jobsJoined), stat("jobs_lost", jobsLost),
            stat("events_pushed", eventsPushed), stat("backend_errors", backendErrors), stat("slow_consumers_closed", slowConsumersClosed),
            stat("legacy_polls", legacyPolls),
            GatewayStatistic("jobs_followed", String(watchedJobs)),
            GatewayStatistic("outcome_bytes_in_flight", String(outcomes.reserved)),
            GatewayStatistic("outcome_bytes_in_flight_peak", String(outcomes.peak)),
        ] + metrics.samples().map { GatewayStatistic($0.statisticName, $0.value) }
    }
}
