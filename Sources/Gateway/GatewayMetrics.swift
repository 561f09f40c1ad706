import GatewayProtocol
import JobStore
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The counters beyond `GatewayStatistics`' plain ones: by verb, by outcome, by backend, and the push latency
/// histogram. `STATS` and `/metrics` both read them, so they always agree.
final class GatewayMetricCounters: Sendable {
    /// Upper bounds of the push latency buckets, in seconds.
    static let latencyBuckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    static let backends = ["redis", "gearmand"]
    static let outcomes = ["done", "failed", "lost", "expired"]

    private struct State {
        var commandsByVerb: [String: Int] = [:]
        var jobsEnded: [String: Int] = [:]
        var backendErrors: [String: Int] = [:]
        var backendReconnects: [String: Int] = [:]
        var backendDown: Set<String> = []
        /// Counts per bucket (not cumulative), the last one for above every bound.
        var latencyCounts = [Int](repeating: 0, count: GatewayMetricCounters.latencyBuckets.count + 1)
        var latencySum = 0.0
        var eventStreamsOpen = 0
    }

    private let state = Mutex(State())
    /// Watchers registered in the push hub (set once the hub exists).
    private let watcherCount = Mutex<(@Sendable () -> Int)?>(nil)

    func countCommand(_ verb: String) {
        state.withLock { $0.commandsByVerb[verb, default: 0] += 1 }
    }

    /// A followed job ended (`record == nil`: its record expired); `pushes` events carried the outcome out.
    func jobEnded(_ record: JobRecord?, pushes: Int) {
        let outcome: String
        switch record?.state {
        case .done: outcome = "done"
        case .failed: outcome = record?.reason.map { $0.readableBytesView.starts(with: "lost".utf8) } == true ? "lost" : "failed"
        default: outcome = "expired"
        }
        state.withLock { $0.jobsEnded[outcome, default: 0] += 1 }
        if let finished = record?.finished {
            for _ in 0..<pushes { observePushLatency(finishedMilliseconds: finished) }
        }
    }

    /// Time from the worker's terminal write (the record's `finished`, Unix ms) to now, when its event goes out.
    func observePushLatency(finishedMilliseconds: Int64) {
        let seconds = max(0, Double(Self.unixMilliseconds() - finishedMilliseconds) / 1000)
        let bucket = Self.latencyBuckets.firstIndex { seconds <= $0 } ?? Self.latencyBuckets.count
        state.withLock { state in
            state.latencyCounts[bucket] += 1
            state.latencySum += seconds
        }
    }

    /// `backend` (`Redis` or `gearmand`, any case) failed a request.
    func backendFailed(_ backend: String) {
        let name = backend.lowercased()
        state.withLock { state in
            state.backendErrors[name, default: 0] += 1
            state.backendDown.insert(name)
        }
    }

    /// `backend` answered: after a failure, that is a reconnect.
    func backendSucceeded(_ backend: String) {
        let name = backend.lowercased()
        state.withLock { state in
            if state.backendDown.remove(name) != nil { state.backendReconnects[name, default: 0] += 1 }
        }
    }

    func eventStreamOpened() { state.withLock { $0.eventStreamsOpen += 1 } }
    func eventStreamClosed() { state.withLock { $0.eventStreamsOpen -= 1 } }

    func countWatchers(_ count: @escaping @Sendable () -> Int) { watcherCount.withLock { $0 = count } }

    /// Every figure, by name and labels; `STATS` and `/metrics` are both written from this.
    func samples() -> [GatewayMetricSample] {
        let watchers = watcherCount.withLock { $0 }?() ?? 0
        return state.withLock { state in
            var samples: [GatewayMetricSample] = []
            for verb in Self.verbs {
                samples.append(.init("commands_by_verb", ["verb": verb], state.commandsByVerb[verb, default: 0]))
            }
            for outcome in Self.outcomes {
                samples.append(.init("jobs_ended", ["state": outcome], state.jobsEnded[outcome, default: 0]))
            }
            for backend in Self.backends {
                samples.append(.init("backend_errors_by_backend", ["backend": backend], state.backendErrors[backend, default: 0]))
            }
            for backend in Self.backends {
                samples.append(.init("backend_reconnects", ["backend": backend], state.backendReconnects[backend, default: 0]))
            }
            samples.append(.init("watchers", [:], watchers))
            samples.append(.init("event_streams_open", [:], state.eventStreamsOpen))
            var cumulative = 0
            for (index, bound) in Self.latencyBuckets.enumerated() {
                cumulative += state.latencyCounts[index]
                samples.append(.init("push_latency_seconds_bucket", ["le": Self.format(bound)], cumulative))
            }
            cumulative += state.latencyCounts.last!
            samples.append(.init("push_latency_seconds_bucket", ["le": "+Inf"], cumulative))
            samples.append(GatewayMetricSample(name: "push_latency_seconds_sum", labels: [], value: Self.format(state.latencySum)))
            samples.append(.init("push_latency_seconds_count", [:], cumulative))
            return samples
        }
    }

    static let verbs = ["HELLO", "AUTH", "SUBMIT", "STATUS", "RESULT", "WAIT", "WATCH", "UNWATCH", "SUBSCRIBE", "UNSUBSCRIBE", "PING", "STATS", "QUIT"]

    static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }

    static func unixMilliseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}

/// One figure: `name{labels} value`.
struct GatewayMetricSample: Sendable, Equatable {
    var name: String
    var labels: [(String, String)]
    var value: String

    init(name: String, labels: [(String, String)], value: String) {
        self.name = name
        self.labels = labels
        self.value = value
    }

    init(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: Int) {
        self.init(name: name, labels: labels.map { ($0.key, $0.value) }, value: String(value))
    }

    static func == (a: Self, b: Self) -> Bool {
        a.name == b.name && a.value == b.value && a.labels.elementsEqual(b.labels) { $0 == $1 }
    }

    /// As a `STATS` line name: `commands_by_verb{verb=SUBMIT}` (one word, no quotes).
    var statisticName: String {
        labels.isEmpty ? name : name + "{" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
    }
}
