import Foundation
import Gateway
import GatewayProtocol
import JobStore
import LocalServers
import NIOCore
import Redis
import Testing

/// `/metrics` on the HTTP port, and `STATS` showing the same figures.
@Suite("Gateway metrics", .timeLimit(.minutes(2)))
struct MetricsTests {
    /// The exposition parses, and its counters move as jobs are submitted, watched, pushed and end.
    @Test func countersMoveWhenJobsRun() async throws {
        try await withGatewayStack({ $0.httpPort = 0 }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            let proceed = Gate()
            let failNow = Gate()
            try await withTestWorker(stack, [
                "reverse": { payload, progress in
                    try await progress(1, 2, "halfway")
                    await proceed.wait()
                    return ByteBuffer(string: String(String(buffer: payload).reversed()))
                },
                "fail": { _, _ in
                    await failNow.wait()
                    throw ClientTestError.broken
                },
            ]) {
                let before = try await metrics(http)
                #expect(before.types["jobgate_commands_total"] == "counter")
                #expect(before.types["jobgate_push_latency_seconds"] == "histogram")
                #expect(before.types["jobgate_watchers"] == "gauge")
                #expect(before.value("jobgate_watchers") == 0)

                let client = try await stack.connect()
                let id = try #require(try await client.request(submitLine("reverse", "hello"))?.createdID)
                guard case .reply(.watching, _) = try #require(try await client.request("WATCH \(id)\n")) else { Issue.record("no WATCHING"); return }
                let watching = try await metrics(http)
                #expect(watching.value("jobgate_watchers") == 1)
                #expect(watching.value("jobgate_connections_open") == 1)
                proceed.open()
                _ = try await client.nextTerminal(timeout: .seconds(10))
                let failing = try #require(try await client.request(submitLine("fail", "x"))?.createdID)
                guard case .reply(.watching, _) = try #require(try await client.request("WATCH \(failing)\n")) else { Issue.record("no WATCHING"); return }
                failNow.open()
                guard case .event(.failed, _) = try #require(try await client.nextTerminal(timeout: .seconds(10))) else { Issue.record("no FAILED"); return }
                guard case .reply(.done, _) = try #require(try await client.request("WAIT \(id) 1000\n")) else { Issue.record("no DONE"); return }

                let after = try await metrics(http)
                func moved(_ name: String, _ labels: [String: String] = [:]) -> Double {
                    (after.value(name, labels) ?? .nan) - (before.value(name, labels) ?? .nan)
                }
                #expect(moved("jobgate_commands_total", ["verb": "SUBMIT"]) == 2)
                #expect(moved("jobgate_commands_total", ["verb": "WATCH"]) == 2)
                #expect(moved("jobgate_commands_total", ["verb": "WAIT"]) == 1)
                #expect(moved("jobgate_jobs_submitted_total") == 2)
                #expect(moved("jobgate_jobs_ended_total", ["state": "done"]) == 1)
                #expect(moved("jobgate_jobs_ended_total", ["state": "failed"]) == 1)
                #expect(moved("jobgate_push_latency_seconds_count") == 2, "two terminal events went to a watcher")
                #expect(moved("jobgate_push_latency_seconds_bucket", ["le": "+Inf"]) == 2)
                #expect(moved("jobgate_events_pushed_total") >= 1)
                #expect(after.value("jobgate_watchers") == 0, "the watch ended with the job")
                #expect(after.value("jobgate_connections_accepted_total") == 1)

                // STATS shows the same figures: the metric names without `jobgate_` and a counter's `_total`.
                guard case .reply(.stats(let stats), _) = try #require(try await client.request("STATS\n")) else { Issue.record("no STATS"); return }
                let byName = Dictionary(stats.map { ($0.name, $0.value) }, uniquingKeysWith: { $1 })
                #expect(byName["commands{verb=SUBMIT}"] == "2")
                #expect(byName["jobs_ended{state=done}"] == "1")
                #expect(byName["push_latency_seconds_count"] == "2")
                #expect(byName["jobs_submitted"] == "2")
            }
        }
    }

    /// Only a job the gateway ended as lost counts as lost (its record says so); a worker's failure counts as
    /// failed, even when its reason happens to start like a lost job's.
    @Test func lostJobsCountedByTheirRecord() async throws {
        try await withGatewayStack({ $0.lostJobGrace = .milliseconds(500) }) { stack in
            try await withTestWorker(stack, ["fail": { _, _ in throw SpelledLikeLost() }]) {
                let client = try await stack.connect()
                let before = try await stats(client)
                let failed = try #require(try await client.request(submitLine("fail", "x"))?.createdID)
                _ = try await client.request("WATCH \(failed)\n")
                guard case .event(.failed(failed, let reason), _) = try #require(try await client.nextTerminal(timeout: .seconds(10))) else {
                    Issue.record("no FAILED from the worker"); return
                }
                #expect(String(buffer: reason) == SpelledLikeLost().description)

                let lost = try #require(try await client.request(submitLine("nobody-runs-this", "x"))?.createdID)
                _ = try await client.request("WATCH \(lost)\n")
                try await stack.gearmand.restart()  // no persistent queue: the job is gone
                guard case .event(.failed(lost, _), _) = try #require(try await client.nextTerminal(timeout: .seconds(20))) else {
                    Issue.record("no FAILED for the lost job"); return
                }
                let after = try await stats(client)
                func moved(_ name: String) -> Double { (after[name] ?? .nan) - (before[name] ?? .nan) }
                #expect(moved("jobs_ended{state=failed}") == 1)
                #expect(moved("jobs_ended{state=lost}") == 1)
                #expect(moved("jobs_marked_lost") == 1)
                let store = stack.store()
                let records = try await store.records([failed, lost].compactMap { JobID(rawValue: $0.rawValue) })
                #expect(records.map { $0?.isLost } == [false, true])
                await store.redis.close()
            }
        }
    }

    /// A worker's failure whose text looks like a lost job's reason.
    private struct SpelledLikeLost: Error, CustomStringConvertible {
        var description: String { "lost: the printer caught fire" }
    }

    /// `STATS` as numbers by name.
    private func stats(_ client: GatewayTestClient) async throws -> [String: Double] {
        let reply = try await client.request("STATS\n")
        guard case .reply(.stats(let stats), _) = reply else { Issue.record("no STATS: \(String(describing: reply))"); return [:] }
        return Dictionary(stats.map { ($0.name, Double($0.value) ?? .nan) }, uniquingKeysWith: { $1 })
    }

    /// Backend errors are counted by backend, and a backend that answers again counts as a reconnect.
    @Test func backendErrorsAndReconnects() async throws {
        try await withGatewayStack({ $0.httpPort = 0 }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            let client = try await stack.connect()
            let id = try #require(try await client.request(submitLine("nobody", "x"))?.createdID)
            stack.redis.kill()
            guard case .reply(.error(let code, _), _) = try #require(try await client.request("STATUS \(id)\n")) else {
                Issue.record("STATUS answered with Redis down"); return
            }
            #expect(code == .backendDown)
            let down = try await metrics(http)
            #expect((down.value("jobgate_backend_errors_total", ["backend": "redis"]) ?? 0) >= 1)
            #expect(down.value("jobgate_backend_reconnects_total", ["backend": "redis"]) == 0)
            try await stack.redis.restart()
            try await eventually("STATUS to work again", timeout: .seconds(20)) {
                if case .reply(.status, _) = try await client.request("STATUS \(id)\n") { return true }
                return false
            }
            let back = try await metrics(http)
            #expect(back.value("jobgate_backend_reconnects_total", ["backend": "redis"]) == 1)
        }
    }

    /// Build info, one `backend_up` per server and the process figures are there; each is read on the scrape.
    @Test func buildBackendsAndProcess() async throws {
        try await withGatewayStack({ $0.httpPort = 0 }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            let client = try await stack.connect()
            try await eventually("the backends to be up") {
                if case .reply(.health(let health), _) = try await client.request("HEALTH\n") { return health.isReady }
                return false
            }
            let exposition = try await metrics(http)
            #expect(exposition.value("jobgate_build_info", ["version": JobGateVersion.current]) == 1)
            #expect(exposition.types["jobgate_backend_up"] == "gauge")
            #expect(exposition.value("jobgate_backend_up", ["backend": "redis", "server": "\(stack.redis.host):\(stack.redis.port)"]) == 1)
            #expect(exposition.value("jobgate_backend_up", ["backend": "gearmand", "server": "\(stack.gearmanAddress)"]) == 1)
            #expect(exposition.types["process_cpu_seconds_total"] == "counter")
            #expect((exposition.value("process_resident_memory_bytes") ?? 0) > 1_000_000)
            #expect((exposition.value("process_open_fds") ?? 0) >= 3)
            let now = Date().timeIntervalSince1970
            let start = try #require(exposition.value("process_start_time_seconds"))
            #expect(start > now - 24 * 3600 && start <= now + 1, "the process started within a day (it is this test process)")
            #expect(exposition.value("process_cpu_seconds_total") != nil)
        }
    }

    /// `STATS` and `/metrics` show one set of figures: every `STATS` line is a sample of the exposition, named without
    /// `jobgate_` and a counter's `_total`, with the same value.
    @Test func statsAndMetricsAgree() async throws {
        try await withGatewayStack({ $0.httpPort = 0 }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            let client = try await stack.connect()
            _ = try await client.request(submitLine("nobody", "x"))
            guard case .reply(.stats(let stats), _) = try #require(try await client.request("STATS\n")) else { Issue.record("no STATS"); return }
            let exposition = try await metrics(http)
            #expect(stats.count == exposition.samples.count, "one STATS line per sample")
            var compared = 0
            for sample in exposition.samples where !sample.name.hasPrefix("process_") {
                var name = sample.name.hasPrefix("jobgate_") ? String(sample.name.dropFirst("jobgate_".count)) : sample.name
                if name.hasSuffix("_total") { name = String(name.dropLast("_total".count)) }
                let labels = sample.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                let statName = labels.isEmpty ? name : name + "{" + labels.joined(separator: ",") + "}"
                let line = stats.first { line in
                    // Label order is the exposition's; compare as sets.
                    Self.split(line.name) == Self.split(statName)
                }
                #expect(line.flatMap { Double($0.value) } == sample.value, "\(statName)")
                compared += 1
            }
            #expect(compared > 40)
            let byName = Dictionary(stats.map { ($0.name, $0.value) }, uniquingKeysWith: { $1 })
            #expect(byName["jobs_submitted"] == "1")
            #expect(byName["commands{verb=STATS}"] == "1")
            #expect(byName["connections_open"] == "1", "a gauge, shown as an integer")
        }
    }

    private static func split(_ statName: String) -> [String] {
        guard let open = statName.firstIndex(of: "{") else { return [statName] }
        let labels = statName[statName.index(after: open)...].dropLast().split(separator: ",").map(String.init).sorted()
        return [String(statName[..<open])] + labels
    }

    /// Off unless asked for.
    @Test func theHTTPPortIsOffByDefault() async throws {
        #expect(GatewayConfiguration().httpPort == nil)
        _ = try await withGatewayStack { stack in
            await #expect(throws: GatewayHTTPDisabled.self) { try await stack.gateway.waitUntilHTTPListening() }
        }
    }

    private func metrics(_ port: Int) async throws -> PrometheusExposition {
        let response = try await httpRequest(port: port, "/metrics")
        #expect(response.status == 200)
        #expect(response.headers["content-type"]?.hasPrefix("text/plain; version=0.0.4") == true)
        return try PrometheusExposition(parsing: response.body)
    }
}
