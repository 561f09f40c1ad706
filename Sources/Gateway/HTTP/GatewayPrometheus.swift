import Foundation
import GatewayProtocol

/// `/metrics` in the Prometheus text format (0.0.4), written from the same figures `STATS` shows.
enum GatewayPrometheus {
    enum Kind: String { case counter, gauge, histogram }

    /// STATS name → the metric family, its type and help. Anything not listed is written as `untyped`.
    static let families: [String: (metric: String, kind: Kind, help: String)] = [
        "connections_accepted": ("jobgate_connections_accepted_total", .counter, "Client connections accepted."),
        "connections_open": ("jobgate_connections_open", .gauge, "Client connections open now."),
        "connections_refused": ("jobgate_connections_refused_total", .counter, "Connections refused over --max-connections (ERR BUSY)."),
        "commands": ("jobgate_requests_total", .counter, "Requests read, well-formed or not."),
        "commands_by_verb": ("jobgate_commands_total", .counter, "Well-formed requests, by verb."),
        "protocol_errors": ("jobgate_protocol_errors_total", .counter, "Requests answered with a protocol error before any verb ran."),
        "jobs_submitted": ("jobgate_jobs_submitted_total", .counter, "New jobs created by SUBMIT."),
        "jobs_joined": ("jobgate_jobs_joined_total", .counter, "SUBMITs that joined a queued or running job with the same unique key."),
        "jobs_lost": ("jobgate_jobs_marked_lost_total", .counter, "Jobs this gateway failed as lost."),
        "jobs_ended": ("jobgate_jobs_ended_total", .counter, "Jobs this gateway followed (watched, waited for, subscribed to) that ended, by outcome."),
        "events_pushed": ("jobgate_events_pushed_total", .counter, "Events queued to clients (progress and terminal)."),
        "backend_errors": ("jobgate_backend_errors_all_total", .counter, "Requests that failed because Redis or gearmand did not answer."),
        "backend_errors_by_backend": ("jobgate_backend_errors_total", .counter, "Failed requests to a backend, by backend."),
        "backend_reconnects": ("jobgate_backend_reconnects_total", .counter, "A backend answering again after failing, by backend."),
        "slow_consumers_closed": ("jobgate_slow_consumers_closed_total", .counter, "Connections closed for not reading (SLOW_CONSUMER)."),
        "outcome_bytes_in_flight": (
            "jobgate_outcome_bytes_in_flight", .gauge, "Result bytes that lookups reserved, read or hold until written (--max-lookup-bytes-total)."
        ),
        "outcome_bytes_in_flight_peak": ("jobgate_outcome_bytes_in_flight_peak", .gauge, "The most result bytes lookups held at once."),
        "jobs_followed": ("jobgate_jobs_followed", .gauge, "Jobs watched or waited for now."),
        "legacy_polls": ("jobgate_legacy_polls_total", .counter, "Pipelined gearmand status polls by the legacy memcached bridge."),
        "watchers": ("jobgate_watchers", .gauge, "Watches registered now (WATCH), over all connections."),
        "event_streams_open": ("jobgate_event_streams_open", .gauge, "Job pages following a job now (Server-Sent Events)."),
        "push_latency_seconds": (
            "jobgate_push_latency_seconds", .histogram,
            "From the worker's terminal write (the record's finished time) to the terminal event sent to a client."
        ),
    ]

    static func render(_ statistics: [GatewayStatistic]) -> String {
        var output = ""
        var described: Set<String> = []
        for statistic in statistics {
            let (name, labels) = split(statistic.name)
            var family = name
            var suffix = ""
            for histogramSuffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(histogramSuffix) {
                let base = String(name.dropLast(histogramSuffix.count))
                if families[base]?.kind == .histogram { (family, suffix) = (base, histogramSuffix) }
            }
            let (metric, kind, help) = families[family] ?? ("jobgate_" + sanitized(family), nil, "") as (String, Kind?, String)
            if described.insert(metric).inserted {
                if !help.isEmpty { output += "# HELP \(metric) \(help)\n" }
                output += "# TYPE \(metric) \(kind?.rawValue ?? "untyped")\n"
            }
            let labelText = labels.isEmpty ? "" : "{" + labels.map { "\(sanitized($0.0))=\"\(escaped($0.1))\"" }.joined(separator: ",") + "}"
            output += "\(metric)\(suffix)\(labelText) \(Double(statistic.value) != nil ? statistic.value : "NaN")\n"
        }
        return output
    }

    /// `name{a=1,b=2}` → name and labels, as ``GatewayMetricSample/statisticName`` writes them.
    static func split(_ statisticName: String) -> (String, [(String, String)]) {
        guard let open = statisticName.firstIndex(of: "{"), statisticName.last == "}" else { return (statisticName, []) }
        let inside = statisticName[statisticName.index(after: open)..<statisticName.index(before: statisticName.endIndex)]
        let labels = inside.split(separator: ",").map { pair -> (String, String) in
            let parts = pair.split(separator: "=", maxSplits: 1)
            return (String(parts[0]), parts.count > 1 ? String(parts[1]) : "")
        }
        return (String(statisticName[..<open]), labels)
    }

    private static func sanitized(_ name: String) -> String {
        String(name.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") ? $0 : "_" })
    }

    private static func escaped(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }
}
