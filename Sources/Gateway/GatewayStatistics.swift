import GatewayProtocol
import Prometheus
import Synchronization

/// The gateway's figures, kept in its Prometheus registry: `/metrics` is the registry's exposition, and `STATS`
/// is the same exposition line by line, each name without the `jobgate_` prefix and a counter's `_total` suffix,
/// labels as `{name=value}`: `jobgate_commands_total{verb="SUBMIT"} 3` is `commands{verb=SUBMIT} 3`.
final class GatewayStatistics: Sendable {
    let registry: PrometheusCollectorRegistry
    let connectionsAccepted: GatewayFigure
    let connectionsOpen: GatewayFigure
    let connectionsRefused: GatewayFigure
    let commands: GatewayFigure
    let protocolErrors: GatewayFigure
    let jobsSubmitted: GatewayFigure
    let jobsJoined: GatewayFigure
    let jobsLost: GatewayFigure
    let eventsPushed: GatewayFigure
    let backendErrors: GatewayFigure
    let slowConsumersClosed: GatewayFigure
    /// Subscriptions paused by their cursor, their output full (they read on from the completion log later).
    let subscriptionsPaused: GatewayFigure
    let legacyPolls: GatewayFigure
    /// Wrong `AUTH`s, on all connections.
    let authFailures: GatewayFigure
    /// Bytes of `SUBMIT` blocks held now, bounded by `inputBufferLimit`: an atomic, since admission reads the sum it
    /// adds to; the registry's gauge is set from it on a scrape.
    let inputBuffered = Atomic<Int>(0)
    /// Labelled counters and the push latency histogram (`GatewayMetrics.swift`).
    let metrics: GatewayMetricCounters
    /// Which backends are reachable now (`HEALTH`, `/readyz`, `jobgate_backend_up`).
    let backends: BackendStatus
    /// Result bytes lookups hold now (the budget is their one owner).
    let outcomes: OutcomeLanes
    private let process: ProcessMetrics
    private let jobsFollowed: Gauge
    private let inputBufferedGauge: Gauge
    private let outcomeBytesGauge: Gauge
    private let outcomeBytesPeakGauge: Gauge
    private let backendUp: [Gauge]
    /// One scrape at a time: the figures read on a scrape are set, then written out, as one.
    private let scrape = Mutex(())

    init(
        registry: PrometheusCollectorRegistry, backends: BackendStatus,
        maximumOutcomeBytes: Int = GatewayConfiguration().maximumOutcomeBytes
    ) {
        self.registry = registry
        self.backends = backends
        outcomes = OutcomeLanes(limit: maximumOutcomeBytes)
        func counter(_ name: String, _ help: String) -> GatewayFigure { .counter(registry, name, help) }
        connectionsAccepted = counter("jobgate_connections_accepted_total", "Client connections accepted.")
        connectionsOpen = .gauge(registry, "jobgate_connections_open", "Client connections open now.")
        connectionsRefused = counter("jobgate_connections_refused_total", "Connections refused over --max-connections (ERR BUSY).")
        commands = counter("jobgate_requests_total", "Requests read, well-formed or not.")
        protocolErrors = counter("jobgate_protocol_errors_total", "Requests answered with a protocol error before any verb ran.")
        jobsSubmitted = counter("jobgate_jobs_submitted_total", "New jobs created by SUBMIT.")
        jobsJoined = counter("jobgate_jobs_joined_total", "SUBMITs that joined a queued or running job with the same unique key.")
        jobsLost = counter("jobgate_jobs_marked_lost_total", "Jobs this gateway failed as lost.")
        eventsPushed = counter("jobgate_events_pushed_total", "Events queued to clients (progress and terminal).")
        backendErrors = counter("jobgate_backend_errors_all_total", "Requests that failed because Redis or gearmand did not answer.")
        slowConsumersClosed = counter("jobgate_slow_consumers_closed_total", "Connections closed for not reading (SLOW_CONSUMER).")
        subscriptionsPaused = counter(
            "jobgate_subscriptions_paused_total", "Times a subscription paused at its cursor, its client's output full (it catches up from the log)."
        )
        legacyPolls = counter("jobgate_legacy_polls_total", "Pipelined gearmand status polls by the legacy memcached bridge.")
        authFailures = counter("jobgate_auth_failures_total", "Wrong AUTH secrets (ERR DENIED).")
        inputBufferedGauge = registry.gauge("jobgate_input_buffered_bytes", help: "Bytes of SUBMIT blocks held now, bounded by --input-buffer.")
        outcomeBytesGauge = registry.gauge(
            "jobgate_outcome_bytes_in_flight", help: "Result bytes that lookups reserved, read or hold until written (--max-lookup-bytes-total)."
        )
        outcomeBytesPeakGauge = registry.gauge("jobgate_outcome_bytes_in_flight_peak", help: "The most result bytes lookups held at once (small and large lanes' peaks added).")
        metrics = GatewayMetricCounters(registry: registry)
        process = ProcessMetrics(registry: registry)
        jobsFollowed = registry.gauge("jobgate_jobs_followed", help: "Jobs watched or waited for now.")
        backendUp = backends.servers().map { server in
            registry.gauge(
                "jobgate_backend_up", labels: [("backend", server.backend), ("server", server.server)],
                help: "1 while the gateway reaches the backend server (Redis: subscribed, keyspace notifications on), else 0."
            )
        }
        registry.gauge(
            "jobgate_build_info", labels: [("version", JobGateVersion.current)], help: "Always 1; the version is in the label."
        ).set(to: 1)
    }

    /// The registry's exposition, after setting the figures that are read, not counted.
    func exposition(watchedJobs: Int) -> String {
        scrape.withLock { _ in
            jobsFollowed.set(Double(watchedJobs))
            inputBufferedGauge.set(Double(inputBuffered.load(ordering: .relaxed)))
            outcomeBytesGauge.set(Double(outcomes.reserved))
            outcomeBytesPeakGauge.set(Double(outcomes.peak))
            for (gauge, server) in zip(backendUp, backends.servers()) { gauge.set(to: server.isUp ? 1 : 0) }
            metrics.refresh()
            process.refresh()
            return registry.emitToString()
        }
    }

    /// `STATS`: the exposition's samples, sorted by name, as `name{label=value} value` (see the type's summary).
    func snapshot(watchedJobs: Int) -> [GatewayStatistic] {
        Self.statistics(fromExposition: exposition(watchedJobs: watchedJobs))
    }

    static func statistics(fromExposition text: String) -> [GatewayStatistic] {
        let samples = text.split(separator: "\n").compactMap { line -> GatewayStatistic? in
            guard !line.hasPrefix("#"), let space = line.lastIndex(of: " ") else { return nil }
            let sample = line[..<space]
            let labels = sample.firstIndex(of: "{").map { sample[$0...] } ?? ""
            var name = sample.dropLast(labels.count)
            if name.hasPrefix("jobgate_") { name = name.dropFirst("jobgate_".count) }
            if name.hasSuffix("_total") { name = name.dropLast("_total".count) }
            // Labels as one word: {a="x",b="y"} → {a=x,b=y}. Label values here never hold quotes, commas or spaces.
            return GatewayStatistic(String(name) + labels.filter { $0 != "\"" }, integral(line[line.index(after: space)...]))
        }
        // By family name, and stable within one: a histogram's buckets stay in order.
        func family(_ statistic: GatewayStatistic) -> Substring { statistic.name.prefix { $0 != "{" } }
        return samples.enumerated().sorted { (family($0.element), $0.offset) < (family($1.element), $1.offset) }.map(\.element)
    }

    /// `3.0` → `3`, for clients that read counts as integers; other values as written.
    private static func integral(_ value: Substring) -> String {
        value.hasSuffix(".0") && Int(value.dropLast(2)) != nil ? String(value.dropLast(2)) : String(value)
    }
}
