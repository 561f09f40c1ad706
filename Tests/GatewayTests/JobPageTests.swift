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
