import Foundation
import Gateway
import GatewayProtocol
import JobStore
import LocalServers
import Redis
import NIOCore
import Synchronization
import Testing

/// PROTOCOL-v1 conformance of `jobgate serve` against real gearmand and redis-server.
@Suite("Gateway conformance", .timeLimit(.minutes(2)))
struct ConformanceTests {
    /// HELLO, PING, STATS and QUIT, with and without tags.
    @Test func basics() async throws {
        try await withGatewayStack { stack in
            let client = try await stack.connect()
            guard case .reply(.hello(let info), nil) = try await client.request("HELLO\n") else { Issue.record("no HELLO"); return }
            #expect(info.authenticationRequired == false && info.maximumPayloadSize == stack.configuration.maximumPayloadSize)
            #expect(try await client.request("ping\r\n") == .reply(.pong))
            #expect(try await client.request("@a-1.b_2 PING\n") == .reply(.pong, tag: GatewayTag(rawValue: "a-1.b_2")))
            guard case .reply(.stats(let stats), nil) = try await client.request("STATS\n") else { Issue.record("no STATS"); return }
            #expect(stats.contains { $0.name == "requests" })
            #expect(try await client.request("QUIT\n") == .reply(.bye))
            #expect(try await client.next() == nil, "the server closes after BYE")
        }
    }
}

extension GatewayResponse {
    /// The job id of CREATED / EXISTS.
    var createdID: GatewayJobID? {
        switch self {
        case .reply(.created(let id), _), .reply(.exists(let id), _): id
        default: nil
        }
    }
}

func submitLine(_ function: String, _ payload: String, options: String = "") -> String {
    "SUBMIT \(function) \(payload.utf8.count)\(options.isEmpty ? "" : " " + options)\n\(payload)\n"
}

/// Jobs through the gateway, a worker publishing to Redis, and pushed outcomes.
@Suite("Gateway jobs and push", .timeLimit(.minutes(2)))
struct GatewayJobTests {
    /// SUBMIT → CREATED; WATCH → WATCHING, PROGRESS events, DONE; then STATUS and RESULT tell the outcome.
    @Test func submitWatchAndResult() async throws {
        try await withGatewayStack { stack in
            let started = Gate()
            let finish = Gate()
            try await withTestWorker(stack, [
                "reverse": { payload, progress in
                    await started.wait()
                    try await progress(1, 2, "halfway")
                    await finish.wait()
                    try await progress(2, 2, "")
                    return ByteBuffer(string: String(String(buffer: payload).reversed()))
                }
            ]) {
                let client = try await stack.connect()
                let id = try #require(try await client.request(submitLine("reverse", "hello world"))?.createdID)
                let watching = try #require(try await client.request("@w WATCH \(id)\n"))
                guard case .reply(.watching(id, let status), let tag) = watching, tag?.rawValue == "w" else {
                    Issue.record("unexpected \(watching)"); return
                }
                #expect([.queued, .running].contains(status.state) && status.numerator == 0)
                started.open()
                var events: [GatewayEvent] = []
                guard case .event(let first, _) = try #require(try await client.next()) else { Issue.record("no event"); return }
                events.append(first)
                finish.open()
                while events.last?.isTerminal != true {
                    guard case .event(let event, let tag) = try #require(try await client.next()) else { continue }
                    #expect(tag?.rawValue == "w", "events carry the WATCH's tag")
                    events.append(event)
                }
                #expect(events.first == .progress(id, numerator: 1, denominator: 2, message: ByteBuffer(string: "halfway")))
                #expect(events.last == .done(id, result: ByteBuffer(string: "dlrow olleh")))
                #expect(try await client.request("STATUS \(id)\n") == .reply(.status(id, GatewayJobStatus(.done, numerator: 2, denominator: 2))))
                #expect(try await client.request("RESULT \(id)\n") == .reply(.done(id, result: ByteBuffer(string: "dlrow olleh"))))
                // A job already finished when WATCH arrives: WATCHING, then its terminal event at once.
                #expect(try await client.request("WATCH \(id)\n") == .reply(.watching(id, GatewayJobStatus(.done, numerator: 2, denominator: 2))))
                #expect(try await client.next() == .event(.done(id, result: ByteBuffer(string: "dlrow olleh"))))
                // Pipelined WATCHes of it: each gets its WATCHING and then its own terminal event, with its tag.
                try await client.send("@a WATCH \(id)\n@b WATCH \(id)\n")
                for tag in ["a", "b"] {
                    #expect(try await client.next() == .reply(.watching(id, GatewayJobStatus(.done, numerator: 2, denominator: 2)), tag: GatewayTag(rawValue: tag)))
                    #expect(try await client.next() == .event(.done(id, result: ByteBuffer(string: "dlrow olleh")), tag: GatewayTag(rawValue: tag)))
                }
            }
        }
    }

    /// WAIT returns the outcome as soon as the job ends; a WAIT that times out says TIMEOUT with the state;
    /// SUBMIT wait= replies like WAIT; failures carry their reason.
    @Test func waitAndTimeout() async throws {
        try await withGatewayStack { stack in
            let gate = Gate()
            try await withTestWorker(stack, [
                "slow": { payload, _ in
                    await gate.wait()
                    return payload
                },
                "broken": { _, _ in throw WorkerFailure(description: "disk full") },
            ]) {
                let client = try await stack.connect()
                let id = try #require(try await client.request(submitLine("slow", "x"))?.createdID)
                let timedOut = try #require(try await client.request("WAIT \(id) 200\n"))
                guard case .reply(.timeout(id, let status), nil) = timedOut else { Issue.record("\(timedOut)"); return }
                #expect([.queued, .running].contains(status.state))
                try await client.send("WAIT \(id) 10000\nPING\n")
                gate.open()
                #expect(try await client.next() == .reply(.done(id, result: ByteBuffer(string: "x"))))
                #expect(try await client.next() == .reply(.pong), "replies after a WAIT follow it")

                let reply = try #require(try await client.request(submitLine("slow", "y", options: "wait=10000")))
                guard case .reply(.done(_, let result), _) = reply else { Issue.record("\(reply)"); return }
                #expect(result == ByteBuffer(string: "y"))
                let failed = try #require(try await client.request(submitLine("broken", "z", options: "wait=10000 priority=high")))
                guard case .reply(.failed(_, let reason), _) = failed else { Issue.record("\(failed)"); return }
                #expect(String(buffer: reason).contains("disk full"))
            }
        }
    }

    /// Requests run concurrently but replies keep request order: a WATCH behind a pending WAIT gets its WATCHING
    /// only after the WAIT's reply, and its job's events (even when the job ended meanwhile) only after WATCHING.
    @Test func eventsNeverOvertakeTheirReply() async throws {
        try await withGatewayStack { stack in
            let slowGate = Gate()
            let fastGate = Gate()
            try await withTestWorker(stack, [
                "slow": { payload, _ in
                    await slowGate.wait()
                    return payload
                },
                "fast": { payload, _ in
                    await fastGate.wait()
                    return payload
                },
            ]) {
                let client = try await stack.connect()
                let slow = try #require(try await client.request(submitLine("slow", "s"))?.createdID)
                let fast = try #require(try await client.request(submitLine("fast", "f"))?.createdID)
                try await client.send("@a WAIT \(slow) 10000\n@b WATCH \(fast)\n@c PING\n")
                // The WATCH is registered and read while the WAIT holds its reply back; the job ends meanwhile.
                fastGate.open()
                let watcher = try await stack.connect()
                let done = try #require(try await watcher.request("WAIT \(fast) 10000\n"))
                #expect(done == .reply(.done(fast, result: ByteBuffer(string: "f"))))
                slowGate.open()
                #expect(try await client.next() == .reply(.done(slow, result: ByteBuffer(string: "s")), tag: GatewayTag(rawValue: "a")))
                let watching = try #require(try await client.next())
                guard case .reply(.watching(fast, _), let tag) = watching else { Issue.record("\(watching)"); return }
                #expect(tag?.rawValue == "b")
                #expect(try await client.next() == .event(.done(fast, result: ByteBuffer(string: "f")), tag: GatewayTag(rawValue: "b")))
                #expect(try await client.next() == .reply(.pong, tag: GatewayTag(rawValue: "c")))
            }
        }
    }

    /// Pipelined submissions with the same unique key, spread over many backend batches by other clients' load:
    /// the first one creates the job, every later one joins it.
    @Test func pipelinedDuplicatesCoalesceInOrder() async throws {
        try await withGatewayStack { stack in
            let busy = try await stack.connect()
            let client = try await stack.connect()
            var load = ""
            var duplicates = ""
            for index in 0..<300 {
                load += submitLine("queued", "load \(index)")
                duplicates += submitLine("queued", "dup \(index)", options: "unique=same-\(index / 100)")
            }
            try await busy.send(load)
            try await client.send(duplicates)
            for group in 0..<3 {
                let first = try #require(try await client.next())
                let id = try #require(first.createdID, "the first of group \(group) creates: \(first)")
                for _ in 1..<100 { #expect(try await client.next() == .reply(.exists(id))) }
            }
            for _ in 0..<300 { _ = try #require(try await busy.next()?.createdID) }
        }
    }

    /// Same function and unique while the first job is unfinished → EXISTS with the same id; every watcher of it
    /// gets the terminal event; after it finished the same unique makes a new job.
    @Test func coalescedSubmissions() async throws {
        try await withGatewayStack { stack in
            let gate = Gate()
            let runs = Counter()
            try await withTestWorker(stack, [
                "once": { payload, _ in
                    runs.increment()
                    await gate.wait()
                    return payload
                }
            ]) {
                let first = try await stack.connect()
                let second = try await stack.connect()
                let id = try #require(try await first.request(submitLine("once", "first", options: "unique=order-42"))?.createdID)
                #expect(try await second.request(submitLine("once", "second", options: "unique=order-42")) == .reply(.exists(id)))
                _ = try await first.request("WATCH \(id)\n")
                _ = try await second.request("WATCH \(id)\n")
                gate.open()
                for client in [first, second] {
                    #expect(try await client.nextTerminal() == .event(.done(id, result: ByteBuffer(string: "first"))))
                }
                #expect(runs.value == 1)
                let again = try #require(try await first.request(submitLine("once", "third", options: "unique=order-42"))?.createdID)
                #expect(again != id)
            }
        }
    }

    /// SUBSCRIBE <function> delivers the terminal event of every job of that function, whoever submitted it.
    @Test func subscribeToFunction() async throws {
        try await withGatewayStack { stack in
            try await withTestWorker(stack, ["echo": { payload, _ in payload }, "other": { payload, _ in payload }]) {
                let subscriber = try await stack.connect()
                #expect(try await subscriber.request("@s SUBSCRIBE echo\n") == .reply(.subscribed(GatewayFunctionName(rawValue: "echo")!), tag: GatewayTag(rawValue: "s")))
                let submitter = try await stack.connect()
                var ids: Set<GatewayJobID> = []
                for index in 0..<5 {
                    ids.insert(try #require(try await submitter.request(submitLine("echo", "p\(index)"))?.createdID))
                    _ = try await submitter.request(submitLine("other", "not this"))
                }
                var seen: Set<GatewayJobID> = []
                while seen.count < 5 {
                    guard case .event(.done(let id, _), let tag) = try #require(try await subscriber.next()) else { Issue.record("unexpected"); return }
                    #expect(tag?.rawValue == "s")
                    seen.insert(id)
                }
                #expect(seen == ids)
                #expect(try await subscriber.request("UNSUBSCRIBE echo\n") == .reply(.unsubscribed(GatewayFunctionName(rawValue: "echo")!)))
            }
        }
    }

    /// An id nobody issued is NOT_FOUND; an id the gateway issued whose record expired is EXPIRED.
    @Test func notFoundVersusExpired() async throws {
        try await withGatewayStack { stack in
            let client = try await stack.connect()
            let forged = "a" + String(repeating: "b", count: 38)
            guard case .reply(.error(.notFound, _), _) = try #require(try await client.request("STATUS \(forged)\n")) else {
                Issue.record("a forged id must be NOT_FOUND"); return
            }
            let id = try #require(try await client.request(submitLine("nobody-runs-this", "x"))?.createdID)
            _ = try await stack.store().redis.send(["DEL", "\(stack.configuration.keyPrefix)job:\(id)"])
            #expect(try await client.request("STATUS \(id)\n") == .reply(.status(id, GatewayJobStatus(.expired))))
            #expect(try await client.request("RESULT \(id)\n") == .reply(.expired(id)))
            #expect(try await client.request("WAIT \(id) 100\n") == .reply(.expired(id)))
            #expect(try await client.request("WATCH \(id)\n") == .reply(.watching(id, GatewayJobStatus(.expired))))
            #expect(try await client.next() == .event(.expired(id)))
        }
    }

    /// Payloads and results with NUL, CR and LF pass through untouched.
    @Test func binaryPayloads() async throws {
        try await withGatewayStack { stack in
            try await withTestWorker(stack, ["echo": { payload, _ in payload }]) {
                let client = try await stack.connect()
                let payload: [UInt8] = [0, 13, 10, 255, 0, 10, 13, 32] + Array("SUBMIT x 3\n".utf8)
                try await client.send(bytes: Array("SUBMIT echo \(payload.count) wait=10000\n".utf8) + payload + [13, 10])
                guard case .reply(.done(_, let result), _) = try #require(try await client.next()) else { Issue.record("no DONE"); return }
                #expect(Array(result.readableBytesView) == payload)
            }
        }
    }

    /// 1,000 pipelined requests get 1,000 replies in order.
    @Test func thousandPipelinedRequests() async throws {
        try await withGatewayStack { stack in
            let client = try await stack.connect()
            var batch = ""
            for index in 0..<1000 {
                batch += index % 2 == 0 ? "@p\(index) PING\n" : "@s\(index) " + submitLine("pipelined", "job \(index)")
            }
            try await client.send(batch)
            var ids: Set<GatewayJobID> = []
            for index in 0..<1000 {
                let response = try #require(try await client.next())
                #expect(response.tag?.rawValue == (index % 2 == 0 ? "p\(index)" : "s\(index)"))
                if index % 2 == 1 { ids.insert(try #require(response.createdID)) }
            }
            #expect(ids.count == 500)
        }
    }
}

struct WorkerFailure: Error, CustomStringConvertible {
    var description: String
}

final class Counter: Sendable {
    private let count = Mutex(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}

extension GatewayTestClient {
    /// The next response that is not a progress event.
    func nextTerminal() async throws -> GatewayResponse? {
        while true {
            let response = try await next()
            if case .event(.progress, _) = response { continue }
            return response
        }
    }
}

/// The protocol works from `nc`, as PROTOCOL.md shows.
@Suite("Gateway with nc", .timeLimit(.minutes(1)))
struct NetcatTests {
    /// A piped nc session: HELLO, a SUBMIT that waits, the result, BYE.
    @Test func pipedSession() async throws {
        try await withGatewayStack { stack in
            try await withTestWorker(stack, ["reverse": { payload, _ in ByteBuffer(string: String(String(buffer: payload).reversed())) }]) {
                let input = "HELLO\nSUBMIT reverse 11 wait=10000\nhello world\nQUIT\n"
                let run = try await runProgram("/bin/nc", ["-N", "127.0.0.1", "\(stack.port)"], input: Array(input.utf8), timeout: .seconds(30))
                let lines = run.outputText.components(separatedBy: "\r\n")
                #expect(lines.count >= 4, "\(run.outputText) \(run.errors)")
                #expect(lines[0] == "HELLO jobgate \(JobGateVersion.current) proto=1 auth=none max-payload=16777216")
                #expect(lines[1].hasPrefix("DONE ") && lines[1].hasSuffix(" 11"))
                #expect(lines[2] == "dlrow olleh")
                #expect(lines[3] == "BYE")
            }
        }
    }
}
