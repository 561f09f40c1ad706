import GatewayProtocol
import JobStore
import NIOCore
import Prometheus
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The labelled figures beside `GatewayStatistics`' plain ones: by verb, by outcome, by backend, and the push
/// latency histogram, registered in the gateway's Prometheus registry so `/metrics` and `STATS` both show them.
final class GatewayMetricCounters: Sendable {
    /// Upper bounds of the push latency buckets, in seconds.
    static let latencyBuckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    static let backends = ["redis", "gearmand"]
    static let outcomes = ["done", "failed", "lost", "expired"]
    static let verbs = [
        "HELLO", "AUTH", "SUBMIT", "STATUS", "RESULT", "WAIT", "WATCH", "UNWATCH", "SUBSCRIBE", "UNSUBSCRIBE", "PING", "STATS", "HEALTH", "QUIT",
    ]

    private let commandsByVerb: [String: Counter]
    private let jobsEnded: [String: Counter]
    private let backendErrors: [String: Counter]
    private let backendReconnects: [String: Counter]
    private let pushLatency: ValueHistogram
    private let eventStreamsOpen: Gauge
    /// Backends whose last request failed: the next success is a reconnect.
    private let backendDown = Mutex<Set<String>>([])
    /// Watchers registered in the job tracker (set once the tracker exists), read on each scrape.
    private let watcherCount = Mutex<(@Sendable () -> Int)?>(nil)
    private let watchers: Gauge

    init(registry: PrometheusCollectorRegistry) {
        func counters(_ name: String, _ label: String, _ values: [String], _ help: String) -> [String: Counter] {
            Dictionary(uniqueKeysWithValues: values.map { ($0, registry.counter(name, labels: [(label, $0)], help: help)) })
        }
        commandsByVerb = counters("jobgate_commands_total", "verb", Self.verbs, "Well-formed requests, by verb.")
        jobsEnded = counters(
            "jobgate_jobs_ended_total", "state", Self.outcomes,
            "Jobs this gateway followed (watched, waited for, subscribed to) that ended, by outcome."
        )
        backendErrors = counters("jobgate_backend_errors_total", "backend", Self.backends, "Failed requests to a backend, by backend.")
        backendReconnects = counters(
            "jobgate_backend_reconnects_total", "backend", Self.backends, "A backend answering requests again after failing, by backend."
        )
        pushLatency = registry.histogram(
            "jobgate_push_latency_seconds", buckets: Self.latencyBuckets,
            help: "From the worker's terminal write (the record's finished time) to the terminal event sent to a client."
        )
        eventStreamsOpen = registry.gauge("jobgate_event_streams_open", help: "Job pages following a job now (Server-Sent Events).")
        watchers = registry.gauge("jobgate_watchers", help: "Watches registered now (WATCH), over all connections.")
    }

    func countCommand(_ verb: String) {
        commandsByVerb[verb]?.increment()
    }

    /// A followed job ended (`record == nil`: its record expired); `pushes` events carried the outcome out.
    func jobEnded(_ record: JobRecord?, pushes: Int) {
        let outcome: String
        switch record?.state {
        case .done: outcome = "done"
        case .failed: outcome = record?.isLost == true ? "lost" : "failed"
        default: outcome = "expired"
        }
        jobsEnded[outcome]?.increment()
        if let finished = record?.finished {
            for _ in 0..<pushes { observePushLatency(finishedMilliseconds: finished) }
        }
    }

    /// Time from the worker's terminal write (the record's `finished`, Unix ms) to now, when its event goes out.
    func observePushLatency(finishedMilliseconds: Int64) {
        pushLatency.record(max(0, Double(Self.unixMilliseconds() - finishedMilliseconds) / 1000))
    }

    /// `backend` (`Redis` or `gearmand`, any case) failed a request.
    func backendFailed(_ backend: String) {
        let name = backend.lowercased()
        backendErrors[name]?.increment()
        backendDown.withLock { _ = $0.insert(name) }
    }

    /// `backend` answered: after a failure, that is a reconnect.
    func backendSucceeded(_ backend: String) {
        let name = backend.lowercased()
        if backendDown.withLock({ $0.remove(name) }) != nil { backendReconnects[name]?.increment() }
    }

    func eventStreamOpened() { eventStreamsOpen.increment() }
    func eventStreamClosed() { eventStreamsOpen.decrement() }

    func countWatchers(_ count: @escaping @Sendable () -> Int) { watcherCount.withLock { $0 = count } }

    /// Sets the figures that are read rather than counted.
    func refresh() {
        watchers.set(Double(watcherCount.withLock { $0 }?() ?? 0))
    }

    static func unixMilliseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}

/// A counter or gauge with the calls of the `Atomic<Int>` each one was before it moved into the registry, so the
/// places that count stay as they were. `ordering` is accepted for that and has no effect.
struct GatewayFigure: Sendable {
    private enum Metric: Sendable {
        case counter(Counter)
        case gauge(Gauge)
    }

    private let metric: Metric

    static func counter(_ registry: PrometheusCollectorRegistry, _ name: String, _ help: String) -> GatewayFigure {
        GatewayFigure(metric: .counter(registry.counter(name, help: help)))
    }

    static func gauge(_ registry: PrometheusCollectorRegistry, _ name: String, _ help: String) -> GatewayFigure {
        GatewayFigure(metric: .gauge(registry.gauge(name, help: help)))
    }

    func add(_ amount: Int, ordering: AtomicUpdateOrdering = .relaxed) {
        switch metric {
        case .counter(let counter): counter.increment(by: Int64(amount))
        case .gauge(let gauge): gauge.increment(by: Double(amount))
        }
    }

    /// Gauges only: a counter never goes down.
    func subtract(_ amount: Int, ordering: AtomicUpdateOrdering = .relaxed) {
        guard case .gauge(let gauge) = metric else { preconditionFailure("a counter never goes down") }
        gauge.decrement(by: Double(amount))
    }
}

extension PrometheusCollectorRegistry {
    /// A counter named exactly `name` (the descriptor's namespace and unit parts are not used), with its help line.
    func counter(_ name: String, labels: [(String, String)] = [], help: String) -> Counter {
        makeCounter(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
    }

    func gauge(_ name: String, labels: [(String, String)] = [], help: String) -> Gauge {
        makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
    }

    func histogram(_ name: String, buckets: [Double], help: String) -> ValueHistogram {
        makeValueHistogram(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: [], buckets: buckets)
    }
}
