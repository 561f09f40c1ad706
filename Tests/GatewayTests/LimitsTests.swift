import Gateway
import GatewayProtocol
import LocalServers
import NIOCore
import Testing

/// Every configurable limit, each answered with its own `ERR` code (or a close where the protocol allows no reply).
@Suite("Gateway limits", .timeLimit(.minutes(2)))
struct LimitsTests {
    /// `maximumLineLength`: a line of exactly the limit is read (a CR before the LF does not count), one byte
    /// more is `LINE_TOO_LONG`.
    @Test func lineLength() async throws {
        try await withGatewayStack({ $0.maximumLineLength = 64 }) { stack in
            let client = try await stack.connect()
            let atLimit = "AUTH " + String(repeating: "a", count: 59)  // no secrets configured: any AUTH is OK
            #expect(atLimit.utf8.count == 64)
            #expect(try await client.request(atLimit + "\n") == .reply(.ok))
            #expect(try await client.request(atLimit + "\r\n") == .reply(.ok))
            try await client.send(atLimit + "a\n")
            try await client.expectError(.lineTooLong)
            try await client.expectUsable()
        }
    }

    /// `maximumPayloadSize`: announced by HELLO; a block of exactly the limit is submitted, one byte more is
    /// `PAYLOAD_TOO_LARGE` and skipped.
    @Test func payloadSize() async throws {
        try await withGatewayStack({ $0.maximumPayloadSize = 16 }) { stack in
            let client = try await stack.connect()
            guard case .reply(.hello(let info), nil) = try await client.request("HELLO\n") else {
                Issue.record("no HELLO")
                return
            }
            #expect(info.maximumPayloadSize == 16)
            _ = try await client.submit("reverse", String(repeating: "p", count: 16))
            try await client.send("SUBMIT reverse 17\n" + String(repeating: "p", count: 17) + "\n")
            try await client.expectError(.payloadTooLarge)
            try await client.expectUsable()
            #expect(try await stack.statistic("jobs_submitted") == 1)
        }
    }

    /// `maximumWatchesPerConnection` = 2: a third WATCH is `TOO_MANY_WATCHES`; after an UNWATCH one more works;
    /// the limit is per connection.
    @Test func watchesPerConnection() async throws {
        try await withGatewayStack({ $0.maximumWatchesPerConnection = 2 }) { stack in
            let client = try await stack.connect()
            // No worker for this function: the jobs stay queued.
            let ids = try await [client.submit("unserved", "1"), client.submit("unserved", "2"), client.submit("unserved", "3")]
            for id in ids.prefix(2) {
                #expect(try await client.request("WATCH \(id)\n") == .reply(.watching(id, GatewayJobStatus(.queued))))
            }
            try await client.send("@third WATCH \(ids[2])\n")
            try await client.expectError(.tooManyWatches, tag: GatewayTag(rawValue: "third"))
            #expect(try await client.request("UNWATCH \(ids[0])\n") == .reply(.unwatched(ids[0])))
            #expect(try await client.request("WATCH \(ids[2])\n") == .reply(.watching(ids[2], GatewayJobStatus(.queued))))
            try await client.send("WATCH \(ids[0])\n")
            try await client.expectError(.tooManyWatches)

            let other = try await stack.connect()
            #expect(try await other.request("WATCH \(ids[0])\n") == .reply(.watching(ids[0], GatewayJobStatus(.queued))))
        }
    }

    /// `maximumConnections` = 2: a third connection gets `ERR BUSY` and is closed; once one closes, a new one is
    /// served.
    @Test func connections() async throws {
        try await withGatewayStack({ $0.maximumConnections = 2 }) { stack in
            let first = try await stack.connect()
            let second = try await stack.connect()
            try await first.expectUsable()
            try await second.expectUsable()
            let third = try await stack.connect()
            try await third.expectError(.busy)
            #expect(try await third.next() == nil, "a refused connection is closed")

            await first.close()
            var served: GatewayTestClient?
            try await eventually("a slot to free up") {
                let client = try await stack.connect()
                if try await client.request("PING\n") == .reply(.pong) {
                    served = client
                    return true
                }
                await client.close()
                return false
            }
            let client = try #require(served)
            guard case .reply(.stats(let stats), nil) = try await client.request("STATS\n") else {
                Issue.record("no STATS")
                return
            }
            #expect(stats.contains { $0.name == "connections_refused" && (Int($0.value) ?? 0) >= 1 })
            try await second.expectUsable()
        }
    }

    /// `idleTimeout`: a connection that WATCHes a running job is not idle; a quiet one beside it is closed with
    /// `IDLE_TIMEOUT`; once the watch ended the watcher is idle too.
    @Test func idleTimeoutSparesWatchers() async throws {
        try await withGatewayStack({ $0.idleTimeout = .seconds(2) }) { stack in
            let release = Latch()
            try await withTestWorker(stack, ["hold": { payload, _ in
                await release.wait()
                return payload
            }]) {
                let submitter = try await stack.connect()
                let id = try await submitter.submit("hold", "result")
                try await eventually("the job to run") {
                    try await submitter.request("STATUS \(id)\n") == .reply(.status(id, GatewayJobStatus(.running)))
                }
                await submitter.close()

                let watcher = try await stack.connect()
                #expect(try await watcher.request("WATCH \(id)\n") == .reply(.watching(id, GatewayJobStatus(.running))))
                // Connected after the WATCH: the watcher has been quiet at least as long when this one is closed.
                let quiet = try await stack.connect()
                try await quiet.expectError(.idleTimeout)
                #expect(try await quiet.next() == nil)
                // Each connection checks on its own schedule (every second at most): give the watcher's a turn.
                try await Task.sleep(for: .milliseconds(1_500))

                release.open()
                #expect(try await watcher.next() == .event(.done(id, result: ByteBuffer(string: "result"))))
                try await watcher.expectError(.idleTimeout)
                #expect(try await watcher.next() == nil)
            }
        }
    }

    /// `outputBufferLimit` and subscriptions: a subscriber that stops reading while many jobs of its function end is
    /// not buffered for past half the limit, nor closed: it pauses at its cursor in the completion log, and gets
    /// every event, once, when it reads again; a subscriber that reads gets every event meanwhile.
    ///
    /// The limit is well above one event: a single event larger than the limit would close even a reading client.
    @Test func outputBufferLimit() async throws {
        let resultSize = 8 * 1_024
        try await withGatewayStack({ $0.outputBufferLimit = 256 * 1_024 }) { stack in
            let stalled = try await RawGatewayConnection.connect(port: stack.port, receiveBufferSize: 4_096)
            try await stalled.send("SUBSCRIBE bulk\n")
            try await eventually("SUBSCRIBED") { stalled.receivedBytes > 0 }
            try await stalled.setReading(false)
            let reader = try await stack.connect()
            #expect(try await reader.request("SUBSCRIBE bulk\n") == .reply(.subscribed(GatewayFunctionName(rawValue: "bulk")!)))

            let submitter = try await stack.connect()
            let result = ByteBuffer(repeating: UInt8(ascii: "r"), count: resultSize)
            let submitted = try await withTestWorker(stack, ["bulk": { _, _ in result }]) {
                var submitted = 0
                // In small batches, each read by the reading subscriber before the next: its own output never
                // holds more than a batch, whatever the scheduling.
                let batch = 10
                while submitted < 600 {
                    try await submitter.send(String(repeating: "SUBMIT bulk 1\nx\n", count: batch))
                    for _ in 0..<batch {
                        guard case .reply(.created, nil) = try await submitter.next() else {
                            Issue.record("a SUBMIT was not answered CREATED")
                            return submitted
                        }
                    }
                    submitted += batch
                    // The reading subscriber gets every job's end.
                    for _ in 0..<batch {
                        let event = try await reader.next()
                        guard case .event(.done(_, let bytes), nil) = event, bytes == result else {
                            Issue.record("the reading subscriber got \(String(describing: event))")
                            return submitted
                        }
                    }
                }
                return submitted
            }
            #expect(try await stack.statistic("slow_consumers_closed") == 0, "the stalled subscriber is paused, not closed")
            #expect(try await stack.statistic("subscriptions_paused") > 0)

            try await stalled.setReading(true)
            try await eventually("the stalled subscriber to catch up", timeout: .seconds(30)) {
                try stalled.responses(allowingTruncatedEnd: true).count == submitted + 1
            }
            let events = try stalled.responses()
            #expect(events.first == .reply(.subscribed(GatewayFunctionName(rawValue: "bulk")!)))
            let ended = events.dropFirst().compactMap { event -> GatewayJobID? in
                guard case .event(.done(let id, let bytes), nil) = event, bytes == result else { return nil }
                return id
            }
            #expect(ended.count == submitted && Set(ended).count == submitted, "every job's end, once")
            try await reader.expectUsable()
            try await submitter.expectUsable()
        }
    }

    /// `maximumWaitTimeout` = 1 s: `WAIT id 60000` (and `SUBMIT … wait=60000`) returns TIMEOUT after about 1 s.
    @Test func waitTimeoutCap() async throws {
        try await withGatewayStack({ $0.maximumWaitTimeout = .seconds(1) }) { stack in
            let client = try await stack.connect()
            let id = try await client.submit("unserved", "x")
            let start = ContinuousClock.now
            #expect(try await client.request("WAIT \(id) 60000\n") == .reply(.timeout(id, GatewayJobStatus(.queued))))
            #expect(ContinuousClock.now - start >= .milliseconds(900))

            let again = ContinuousClock.now
            guard case .reply(.timeout(_, let status), nil) = try await client.request("SUBMIT unserved 1 wait=60000\ny\n") else {
                Issue.record("SUBMIT wait= did not time out")
                return
            }
            #expect(status.state == .queued)
            #expect(ContinuousClock.now - again >= .milliseconds(900))
        }
    }

    /// The output limit bounds a backlog, not one reply: a result larger than the limit still reaches a client
    /// that reads.
    @Test func largeResultToReadingClient() async throws {
        try await withGatewayStack({ $0.outputBufferLimit = 4096 }) { stack in
            let big = ByteBuffer(repeating: UInt8(ascii: "r"), count: 64 * 1024)
            let reply = try await withTestWorker(stack, ["big": { _, _ in big }]) {
                let client = try await stack.connect()
                return try await client.request(submitLine("big", "x", options: "wait=10000"))
            }
            guard case .reply(.done(_, let result), _) = try #require(reply) else { Issue.record("\(String(describing: reply))"); return }
            #expect(result == big)
        }
    }
}

/// Pipelining against the session's limits and its end.
@Suite("Gateway session limits", .timeLimit(.minutes(1)))
struct SessionLimitTests {
    /// Replies held back behind a slow WAIT are not the client's fault: pipelining large RESULTs behind a WAIT does
    /// not close the connection, their results are not read while they could not be written (so they hold none of
    /// the lookup budget), and every reply arrives in order once the WAIT ends, with no more than
    /// `--max-lookup-bytes` of results held at once.
    @Test func heldRepliesArePausedNotClosed() async throws {
        let limit = 64 * 1_024
        try await withGatewayStack({
            $0.outputBufferLimit = limit
            $0.maximumOutcomeBytesPerConnection = limit
        }) { stack in
            let gate = Gate()
            let big = ByteBuffer(repeating: UInt8(ascii: "b"), count: 8 * 1_024)
            try await withTestWorker(stack, [
                "big": { _, _ in big },
                "slow": { payload, _ in
                    await gate.wait()
                    return payload
                },
            ]) {
                let client = try await stack.connect()
                let done = try #require(try await client.request(submitLine("big", "x"))?.createdID)
                #expect(try await client.request("WAIT \(done) 10000\n") == .reply(.done(done, result: big)))
                let slow = try #require(try await client.request(submitLine("slow", "s"))?.createdID)
                let pipelined = try await stack.connect()
                try await pipelined.send("WAIT \(slow) 10000\n" + String(repeating: "RESULT \(done)\n", count: 40))
                try await Task.sleep(for: .milliseconds(300))  // the RESULTs are looked up meanwhile
                #expect(try await stack.statistic("outcome_bytes_in_flight") == 0)
                gate.open()
                #expect(try await pipelined.next() == .reply(.done(slow, result: ByteBuffer(string: "s"))))
                for _ in 0..<40 { #expect(try await pipelined.next() == .reply(.done(done, result: big))) }
                #expect(try await stack.statistic("outcome_bytes_in_flight_peak") <= limit)
                #expect(try await stack.statistic("slow_consumers_closed") == 0)
                try await pipelined.expectUsable()
            }
        }
    }

    /// A client that quits without reading its replies is closed anyway (after `--output-stall`: its lookups hold
    /// results its socket does not take), not kept forever.
    @Test func quitWithoutReadingStillCloses() async throws {
        try await withGatewayStack({ $0.outputStallTimeout = .seconds(2) }) { stack in
            let result = ByteBuffer(repeating: UInt8(ascii: "q"), count: 256 * 1_024)
            try await withTestWorker(stack, ["large": { _, _ in result }]) {
                let client = try await stack.connect()
                let id = try #require(try await client.request(submitLine("large", "x"))?.createdID)
                #expect(try await client.request("WAIT \(id) 10000\n") == .reply(.done(id, result: result)))
                let stalled = try await RawGatewayConnection.connect(port: stack.port, receiveBufferSize: 4_096)
                try await stalled.setReading(false)
                // About 7 MiB: under the output limit, more than the socket buffers take.
                try await stalled.send(String(repeating: "RESULT \(id)\n", count: 28) + "QUIT\n")
                try await eventually("the gateway to close the connection", timeout: .seconds(15)) {
                    try await stack.statistic("connections_open") == 2  // the client and this STATS
                }
            }
        }
    }

    /// A client that goes away while its `SUBMIT … wait=` is in flight leaves nothing behind.
    @Test func disconnectDuringSubmitWait() async throws {
        try await withGatewayStack { stack in
            for index in 0..<40 {
                // Reset at once, or after the SUBMIT had time to be answered: both sides of the race.
                let raw = try await RawGatewayConnection.connect(port: stack.port, resetOnClose: true)
                try await raw.send("SUBMIT nobody-works-this 1 wait=5000\nx\n")
                if index % 2 == 1 { try await Task.sleep(for: .milliseconds(5)) }
                await raw.close()
            }
            let client = try await stack.connect()
            try await eventually("every waiter to be gone") { try await stack.statistic("jobs_followed") == 0 }
            #expect(try await client.request("PING\n") == .reply(.pong))
        }
    }

    /// More pipelined requests than may run at once (512): the rest wait their turn, and every one is answered, in
    /// order; nothing stays followed afterwards.
    @Test func requestsBeyondTheOutstandingLimitWaitTheirTurn() async throws {
        try await withGatewayStack { stack in
            let client = try await stack.connect()
            let id = try #require(try await client.request(submitLine("nobody-runs-this", "x"))?.createdID)
            let count = 1_200
            try await client.send((0..<count).map { "@w\($0) WAIT \(id) 50\n" }.joined())
            for index in 0..<count {
                let reply = try #require(try await client.next(timeout: .seconds(20)))
                guard case .reply(.timeout(id, _), let tag) = reply, tag?.rawValue == "w\(index)" else {
                    Issue.record("reply \(index): \(reply)"); return
                }
            }
            try await client.expectUsable()
            try await eventually("no waiter left") { try await stack.statistic("jobs_followed") == 0 }
        }
    }

    /// Requests split anywhere across reads: two pipelined requests sent a byte at a time, then a 4 MiB payload
    /// that arrives in many pieces, come back whole.
    @Test func requestsSplitAcrossReads() async throws {
        try await withGatewayStack { stack in
            let payload = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            try await withTestWorker(stack, ["echo": { payload, _ in payload }]) {
                let raw = try await RawGatewayConnection.connect(port: stack.port)
                for byte in "@a PING\n@b PING\n".utf8 { try await raw.send(bytes: [byte]) }
                try await raw.send("SUBMIT echo \(payload.count) wait=20000\n")
                for start in stride(from: 0, to: payload.count, by: 100_000) {
                    try await raw.send(bytes: Array(payload[start..<min(start + 100_000, payload.count)]))
                }
                try await raw.send("\nQUIT\n")
                try await raw.waitUntilClosed(timeout: .seconds(30))
                let responses = try raw.responses()
                #expect(responses.count == 4)
                #expect(responses.prefix(2) == [.reply(.pong, tag: GatewayTag(rawValue: "a")), .reply(.pong, tag: GatewayTag(rawValue: "b"))])
                guard responses.count == 4, case .reply(.done(_, let result), nil) = responses[2] else {
                    Issue.record("no DONE: \(responses.dropFirst(2).prefix(1))"); return
                }
                #expect(Array(result.readableBytesView) == payload)
                #expect(responses[3] == .reply(.bye))
            }
        }
    }

    /// `UNWATCH` takes effect at its turn: events of the job still arrive while a WAIT before it holds it back.
    @Test func unwatchTakesEffectInOrder() async throws {
        try await withGatewayStack { stack in
            let slowGate = Gate()
            let watchedGate = Gate()
            try await withTestWorker(stack, [
                "slow": { payload, _ in
                    await slowGate.wait()
                    return payload
                },
                "watched": { payload, _ in
                    await watchedGate.wait()
                    return payload
                },
            ]) {
                let client = try await stack.connect()
                let slow = try #require(try await client.request(submitLine("slow", "s"))?.createdID)
                let watched = try #require(try await client.request(submitLine("watched", "w"))?.createdID)
                guard case .reply(.watching, _) = try #require(try await client.request("WATCH \(watched)\n")) else {
                    Issue.record("no WATCHING"); return
                }
                try await client.send("WAIT \(slow) 10000\nUNWATCH \(watched)\n")
                watchedGate.open()
                #expect(try await client.nextTerminal() == .event(.done(watched, result: ByteBuffer(string: "w"))))
                slowGate.open()
                #expect(try await client.next() == .reply(.done(slow, result: ByteBuffer(string: "s"))))
                #expect(try await client.next() == .reply(.unwatched(watched)))
            }
        }
    }
}
