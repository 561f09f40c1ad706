import Foundation
import Gateway
import GatewayProtocol
import LocalServers
import NIOCore
import Testing

/// `GET /jobs/<id>` and its event stream, over raw HTTP and in headless Chromium.
@Suite("Job page", .timeLimit(.minutes(3)))
struct JobPageTests {
    /// Only a job's id opens its page: unknown ids, listings and other paths are 404, other methods 405.
    @Test func nothingWithoutAnID() async throws {
        try await withGatewayStack({ $0.httpPort = 0 }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            let client = try await stack.connect()
            let id = try #require(try await client.request(submitLine("nobody", "x"))?.createdID)
            let never = String(repeating: "a", count: 39)
            for path in ["/", "/jobs", "/jobs/", "/jobs/\(never)", "/jobs/\(never)/events", "/jobs/not-an-id", "/jobs/\(id)/result", "/jobs/\(id)x"] {
                let response = try await httpRequest(port: http, path)
                #expect(response.status == 404, "\(path)")
                #expect(!response.body.contains(id.rawValue))
            }
            #expect(try await httpRequest(port: http, "/jobs/\(id)", method: "POST").status == 405)
            let garbage = try await onOwnThread {
                let socket = try LoopbackSocket(port: http, timeoutMs: 10_000)
                try socket.send(Array("NOT HTTP AT ALL\r\n\r\n".utf8))
                return String(decoding: try socket.receive { _ in false }, as: UTF8.self)
            }
            #expect(garbage.hasPrefix("HTTP/1.1 400"), "a malformed request gets 400 and the connection closes: \(garbage)")
            let page = try await httpRequest(port: http, "/jobs/\(id)")
            #expect(page.status == 200)
            #expect(page.headers["content-type"] == "text/html; charset=utf-8")
            #expect(page.headers["referrer-policy"] == "no-referrer" && page.headers["cache-control"] == "no-store")
            #expect(page.body.contains(#"<body data-state="queued">"#) && page.body.contains(id.rawValue))
        }
    }

    /// The stream: the state now, each progress (messages as JSON, `<` escaped), then the outcome, then it closes.
    @Test func eventStreamFollowsTheJob() async throws {
        try await withGatewayStack({ $0.httpPort = 0 }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            let client = try await stack.connect()
            let streaming = Gate()
            let progressShown = Gate()
            try await withTestWorker(stack, [
                "reverse": { payload, progress in
                    await streaming.wait()
                    try await progress(1, 2, "half <way>")
                    // Finishing at once could overtake the progress (a watcher is shown the latest state).
                    await progressShown.wait()
                    return ByteBuffer(string: "\"quoted\"\n")
                }
            ]) {
                let id = try #require(try await client.request(submitLine("reverse", "x"))?.createdID)
                async let stream = onOwnThread {
                    let socket = try LoopbackSocket(port: http, timeoutMs: 20_000)
                    try socket.send(Array("GET /jobs/\(id)/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8))
                    return try parseHTTPResponse(
                        socket.receive { received in
                            if String(decoding: received, as: UTF8.self).contains("half") { progressShown.open() }
                            return false
                        }
                    )
                }
                try await eventually("the stream to open") { try await statistic(client, "event_streams_open") == "1" }
                streaming.open()
                let response = try await stream
                #expect(response.status == 200 && response.headers["content-type"] == "text/event-stream; charset=utf-8")
                let events = response.body.components(separatedBy: "\n\n").filter { !$0.isEmpty }
                #expect(events.first?.hasPrefix("event: state\ndata: {\"state\":\"") == true, "\(events)")
                #expect(events.contains { $0.contains(#""numerator":1,"denominator":2,"message":"half \u003cway>""#) }, "\(events)")
                #expect(events.last == #"event: end"# + "\n" + #"data: {"state":"done","result":"\"quoted\"\n","truncated":false}"#, "\(events)")
                #expect(try await statistic(client, "event_streams_open") == "0")
            }
        }
    }

    /// In Chromium: a page opened while the job runs shows its progress, follows it live to the end and shows the
    /// result (escaped); screenshots of both go to the folder printed.
    @Test func chromiumShowsProgressThenTheResult() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-job-page-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        print("job page screenshots: \(folder.path)")
        try await withGatewayStack({ $0.httpPort = 0 }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            let client = try await stack.connect()
            let finish = Gate()
            try await withTestWorker(stack, [
                "render": { _, progress in
                    try await progress(1, 2, "rendering page 1 of 2")
                    await finish.wait()
                    return ByteBuffer(string: "<b>not bold</b> & done")
                }
            ]) {
                let id = try #require(try await client.request(submitLine("render", "x"))?.createdID)
                try await eventually("the job to progress") {
                    try await client.request("STATUS \(id)\n") == .reply(.status(id, GatewayJobStatus(.running, numerator: 1, denominator: 2)))
                }
                let url = "http://127.0.0.1:\(http)/jobs/\(id)"

                let inProgress = try await chromium(["--screenshot=\(folder.path)/job-in-progress.png", url], folder: folder, virtualTime: false)
                #expect(inProgress.status == 0, "\(inProgress.errors.suffix(2000))")
                // Without a virtual time budget Chromium dumps at the load event: the page as served.
                let running = try await chromium(["--dump-dom", url], folder: folder, virtualTime: false)
                #expect(running.outputText.contains(#"<body data-state="running">"#), "\(running.outputText)")
                #expect(running.outputText.contains(">50%<") && running.outputText.contains("rendering page 1 of 2"))

                // Loaded while running; the stream brings the end while the page is open. (Virtual time stands still
                // while the event stream is open, so this dump comes only after the page closed it at the end.)
                async let live = chromium(["--dump-dom", url], folder: folder)
                try await eventually("the page's event stream", timeout: .seconds(30)) {
                    try await statistic(client, "event_streams_open") != "0"
                }
                finish.open()
                let ended = try await live
                #expect(ended.outputText.contains(#"<body data-state="done">"#), "\(ended.outputText)")
                #expect(ended.outputText.contains("&lt;b&gt;not bold&lt;/b&gt; &amp; done"), "the result shows as text")
                #expect(ended.outputText.contains(">100%<"))

                let finished = try await chromium(["--screenshot=\(folder.path)/job-finished.png", url], folder: folder)
                #expect(finished.status == 0)
            }
        }
        for name in ["job-in-progress.png", "job-finished.png"] {
            let bytes = try [UInt8](Data(contentsOf: folder.appendingPathComponent(name)))
            #expect(bytes.starts(with: [0x89, 0x50, 0x4e, 0x47]) && bytes.count > 2_000, "\(name) is a PNG")
        }
    }

    // MARK: Hostile job bytes

    /// Markup that sets `data-pwned` on `<html>` if any of it runs; `<` and `>` follow U+0600, which a per-Character
    /// escaper misses (U+0600 and the next character are one grapheme cluster). Function names allow no spaces.
    static let injected = "\u{0600}<script \u{0600}>document.documentElement.dataset.pwned='script'//\u{0600}</script \u{0600}>"
        + "\u{0600}<img src=x onerror=document.documentElement.dataset.pwned='img'//\u{0600}>\"'&"
    static let injectedFunction = "\u{0600}<svg/onload=document.documentElement.dataset.pwned='svg'//\u{0600}>"
    /// Invalid UTF-8, NUL and a lone continuation byte around the markup.
    static let injectedBytes: [UInt8] = [0xFF, 0x00, 0xC3] + Array(injected.utf8) + [0x80, 0xE2, 0x82, 0x00]

    private struct InjectedFailure: Error, CustomStringConvertible {
        var description: String { JobPageTests.injected }
    }

    /// A job of every kind whose bytes reaching the page carry markup: a queued job with such a function name, a
    /// done one (progress message and result), a failed one (reason). Their ids, the done job held open by `finish`.
    private func withInjectedJobs(
        _ stack: GatewayStack,
        _ client: GatewayTestClient,
        _ body: @Sendable (_ queued: GatewayJobID, _ running: GatewayJobID, _ failed: GatewayJobID, _ finish: Gate) async throws -> Void
    ) async throws {
        let finish = Gate()
        try await withTestWorker(stack, [
            "inject": { _, progress in
                try await progress(1, 2, Self.injected)
                await finish.wait()
                return ByteBuffer(bytes: Self.injectedBytes)
            },
            "inject-fail": { _, _ in throw InjectedFailure() },
        ]) {
            let queued = try #require(try await client.request(submitLine(Self.injectedFunction, "x"))?.createdID)
            let running = try #require(try await client.request(submitLine("inject", "x"))?.createdID)
            let failed = try #require(try await client.request(submitLine("inject-fail", "x"))?.createdID)
            guard case .reply(.failed(failed, _), _) = try #require(try await client.request("WAIT \(failed) 10000\n")) else {
                Issue.record("the failing job did not fail"); return
            }
            try await eventually("the job to progress") {
                guard case .reply(.status(running, let status), _) = try await client.request("STATUS \(running)\n") else { return false }
                return status.numerator == 1
            }
            try await body(queued, running, failed, finish)
        }
    }

    /// Every byte of a job is escaped in the served page (function, message, result, reason), whatever marks come
    /// before `<` and `>`; the policy allows no inline script but the page's own, by hash.
    @Test func hostileJobBytesAreEscaped() async throws {
        try await withGatewayStack({ $0.httpPort = 0 }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            let client = try await stack.connect()
            try await withInjectedJobs(stack, client) { queued, running, failed, finish in
                var pages = [try await httpRequest(port: http, "/jobs/\(queued)"), try await httpRequest(port: http, "/jobs/\(running)")]
                finish.open()
                _ = try await client.request("WAIT \(running) 10000\n")
                pages += [try await httpRequest(port: http, "/jobs/\(running)"), try await httpRequest(port: http, "/jobs/\(failed)")]
                for page in pages {
                    #expect(page.status == 200)
                    let markup = page.body.lowercased()
                    #expect(markup.components(separatedBy: "<script").count == 2, "only the page's own script: \(page.body)")
                    #expect(!markup.contains("<img") && !markup.contains("<svg"), "\(page.body)")
                    #expect(!page.body.unicodeScalars.contains("\u{0}"), "NUL never reaches the page")
                    #expect(page.body.contains("\u{0600}&lt;"), "the markup shows as text: \(page.body)")
                    let policy = try #require(page.headers["content-security-policy"])
                    let scriptSources = policy.split(separator: ";").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix("script-src ") }
                    #expect(scriptSources?.contains("'sha256-") == true && scriptSources?.contains("unsafe") == false, "\(policy)")
                    #expect(policy.contains("default-src 'none'") && !policy.contains("unsafe-inline"), "\(policy)")
                }
            }
        }
    }

    /// In Chromium, no markup from a job runs, whether the page was served with it or the event stream brought it;
    /// the page's own (hashed) script still follows the job to its end.
    @Test func chromiumRunsNoInjectedScript() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-job-page-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try await withGatewayStack({ $0.httpPort = 0 }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            let client = try await stack.connect()
            try await withInjectedJobs(stack, client) { queued, running, failed, finish in
                let url = { (id: GatewayJobID) in "http://127.0.0.1:\(http)/jobs/\(id)" }
                // Loaded while the job runs: the message as served; the result comes through the event stream.
                let liveURL = url(running)
                // Chromium logs each CSP violation: none means the page's own script and style match their hashes,
                // and nothing injected tried to run or load.
                let logging = ["--enable-logging=stderr", "--log-level=0", "--dump-dom"]
                async let live = chromium(logging + [liveURL], folder: folder)
                try await eventually("the page's event stream", timeout: .seconds(30)) {
                    try await statistic(client, "event_streams_open") != "0"
                }
                finish.open()
                var runs = [("live", try await live)]
                // The queued job's page keeps its stream open, which holds virtual time: dump it at the load event.
                for (name, id) in [("queued", queued), ("done", running), ("failed", failed)] {
                    runs.append((name, try await chromium(logging + [url(id)], folder: folder, virtualTime: name != "queued")))
                }
                let dumps = runs.map { ($0.0, $0.1.outputText) }
                for (name, run) in runs {
                    let violations = run.errors.split(separator: "\n").filter { $0.contains("Content Security Policy") }
                    #expect(violations.isEmpty, "\(name): \(violations)")
                }
                for (name, dump) in dumps {
                    #expect(dump.contains("<body data-state="), "\(name): \(dump)")
                    #expect(!dump.contains("data-pwned"), "\(name): injected markup ran: \(dump)")
                    #expect(!dump.contains("<img") && !dump.contains("<svg"), "\(name): \(dump)")
                }
                #expect(dumps[0].1.contains(#"<body data-state="done">"#), "the page's own script followed the job: \(dumps[0].1)")
                #expect(dumps[0].1.contains("&lt;script \u{0600}&gt;document"), "the streamed result shows as text: \(dumps[0].1)")
                #expect(dumps[1].1.contains("&lt;svg/onload="), "the function name shows as text: \(dumps[1].1)")
                #expect(dumps[3].1.contains(#"<body data-state="failed">"#) && dumps[3].1.contains("&lt;img src=x"), "\(dumps[3].1)")
            }
        }
    }

    private func chromium(_ arguments: [String], folder: URL, virtualTime: Bool = true) async throws -> ProgramRun {
        try await runProgram(
            "/usr/bin/chromium",
            ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=900,640",
             "--user-data-dir=\(folder.path)/profile"] + (virtualTime ? ["--virtual-time-budget=2000"] : []) + arguments,
            timeout: .seconds(60)
        )
    }
}

/// One `STATS` figure.
func statistic(_ client: GatewayTestClient, _ name: String) async throws -> String? {
    guard case .reply(.stats(let stats), _) = try await client.request("STATS\n") else { return nil }
    return stats.first { $0.name == name }?.value
}
