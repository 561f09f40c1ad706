import Foundation
import Gateway
import GatewayProtocol
import LocalServers
import Logging
import NIOCore
import Redis
import ServiceLifecycle
import Testing

/// `SUBSCRIBE <function> from=…` against real servers: the completion log in Redis lets a subscriber miss nothing
/// across disconnects, gateways, a gateway's kill -9 and a Redis restart.
@Suite("Resumable subscriptions", .timeLimit(.minutes(4)))
struct ResumableSubscriptionTests {
    private let echo: [String: @Sendable (ByteBuffer, ProgressReporter) async throws -> ByteBuffer] = ["echo": { payload, _ in payload }]

    @Test func resumesAfterAThousandJobsEndedWhileDisconnected() async throws {
        try await withGatewayStack { stack in
            try await withTestWorker(stack, concurrency: 16, echo) {
                let subscriber = try await stack.connect()
                #expect(try await subscriber.request("SUBSCRIBE echo from=now\n") == .reply(.subscribed(function("echo"))))
                let submitter = try await stack.connect()
                let first = try await submit(submitter, "echo", count: 1)
                let seen = try await loggedEnds(subscriber, 1)
                #expect(seen.map(\.id) == first)
                await subscriber.close()

                let counter = try await stack.connect()  // a protocol v1 subscriber: tells when all 1,000 ended
                #expect(try await counter.request("SUBSCRIBE echo\n") == .reply(.subscribed(function("echo"))))
                let ids = try await submit(submitter, "echo", count: 1_000)
                let live = try await plainEnds(counter, 1_000)
                #expect(Set(live) == Set(ids))

                let resumed = try await stack.connect()
                #expect(try await resumed.request("SUBSCRIBE echo from=\(seen[0].cursor)\n") == .reply(.subscribed(function("echo"))))
                let replayed = try await loggedEnds(resumed, 1_000)
                #expect(replayed.map(\.id) == live, "each job once, in the order they ended")
                #expect(zip(replayed, replayed.dropFirst()).allSatisfy { $0.cursor < $1.cursor })
                // Then live, past the seam: the next job once, nothing twice.
                let next = try await submit(submitter, "echo", count: 1)
                #expect(try await loggedEnds(resumed, 1).map(\.id) == next)
                await #expect(throws: (any Error).self) { try await resumed.next(timeout: .milliseconds(500)) }
            }
        }
    }

    @Test func resumesThroughAnotherGateway() async throws {
        try await withGatewayStack { stack in
            try await withTestWorker(stack, concurrency: 8, echo) {
                let subscriber = try await stack.connect()
                _ = try await subscriber.request("SUBSCRIBE echo from=now\n")
                let submitter = try await stack.connect()
                _ = try await submit(submitter, "echo", count: 1)
                let cursor = try await loggedEnds(subscriber, 1)[0].cursor
                await subscriber.close()
                let missed = try await submit(submitter, "echo", count: 50)
                try await withSecondGateway(stack) { port in
                    let elsewhere = try await GatewayTestClient.connect(port: port)
                    #expect(try await elsewhere.request("SUBSCRIBE echo from=\(cursor)\n") == .reply(.subscribed(function("echo"))))
                    #expect(Set(try await loggedEnds(elsewhere, 50).map(\.id)) == Set(missed))
                    let next = try await submit(submitter, "echo", count: 1)
                    #expect(try await loggedEnds(elsewhere, 1).map(\.id) == next)
                }
            }
        }
    }

    @Test func resumesAfterTheGatewayIsKilled() async throws {
        try await withGatewayStack { stack in
            let port = try freeLoopbackPort()
            let arguments = [
                "serve", "--listen", "127.0.0.1:\(port)", "--gearman", stack.gearmand.address, "--redis", stack.redis.address,
                "--log-level", "warning",
            ]
            try await withTestWorker(stack, concurrency: 8, echo) {
                let first = try LocalProcess(jobgateExecutable(), arguments)
                defer { first.stop() }
                try await eventually("jobgate serve to listen") { (try? await GatewayTestClient.connect(port: port)) != nil }
                let subscriber = try await GatewayTestClient.connect(port: port)
                _ = try await subscriber.request("SUBSCRIBE echo from=now\n")
                let submitter = try await stack.connect()
                let before = try await submit(submitter, "echo", count: 10)
                let seen = try await loggedEnds(subscriber, 10)
                #expect(Set(seen.map(\.id)) == Set(before))
                first.signal(SIGKILL)
                _ = try await first.waitForExit()
                let during = try await submit(submitter, "echo", count: 20)

                let second = try LocalProcess(jobgateExecutable(), arguments)
                defer { second.stop() }
                try await eventually("the restarted gateway to listen") { (try? await GatewayTestClient.connect(port: port)) != nil }
                let resumed = try await GatewayTestClient.connect(port: port)
                _ = try await resumed.request("SUBSCRIBE echo from=\(seen.last!.cursor)\n")
                let replayed = try await loggedEnds(resumed, 20)
                #expect(Set(replayed.map(\.id)) == Set(during))
                await #expect(throws: (any Error).self) { try await resumed.next(timeout: .milliseconds(500)) }
            }
        }
    }

    @Test func aSubscriptionContinuesAcrossARedisRestart() async throws {
        try await withGatewayStack { stack in
            try await withTestWorker(stack, concurrency: 8, echo) {
                let subscriber = try await stack.connect()
                _ = try await subscriber.request("SUBSCRIBE echo from=now\n")
                let submitter = try await stack.connect()
                let before = try await submit(submitter, "echo", count: 10)
                let seenBefore = try await loggedEnds(subscriber, 10)
                #expect(Set(seenBefore.map(\.id)) == Set(before))
                try await stack.redis.restart()  // without persistence: the log starts again, empty
                let restarted = try await stack.connect()
                var after: [GatewayJobID] = []
                try await eventually("the gateway to take jobs again", timeout: .seconds(30)) {
                    guard let id = try? await restarted.request(submitLine("echo", "after"))?.createdID else { return false }
                    after.append(id)
                    return true
                }
                after += try await submit(restarted, "echo", count: 9)
                let seenAfter = try await loggedEnds(subscriber, 10, timeout: .seconds(30))
                #expect(Set(seenAfter.map(\.id)) == Set(after))
                #expect(seenBefore.last!.cursor < seenAfter.first!.cursor)
                await #expect(throws: (any Error).self) { try await subscriber.next(timeout: .milliseconds(500)) }
            }
        }
    }

    @Test func aCursorOlderThanTheRetainedLogIsRefused() async throws {
        try await withGatewayStack({ $0.subscriptionRetention = 1 }) { stack in
            try await withTestWorker(stack, concurrency: 1, echo) {
                let subscriber = try await stack.connect()
                _ = try await subscriber.request("SUBSCRIBE echo from=now\n")
                let submitter = try await stack.connect()
                _ = try await submit(submitter, "echo", count: 4)
                let old = try await loggedEnds(subscriber, 4)
                try await Task.sleep(for: .milliseconds(1_500))
                let fresh = try await submit(submitter, "echo", count: 2)
                _ = try await loggedEnds(subscriber, 2)
                await subscriber.close()

                let resumed = try await stack.connect()
                guard case .reply(.error(let code, let message), _)? = try await resumed.request("SUBSCRIBE echo from=\(old[0].cursor)\n") else {
                    Issue.record("a trimmed cursor was accepted")
                    return
                }
                #expect(code == .trimmed)
                #expect(message.contains("trimmed"), "\(message)")
                #expect(try await resumed.request("SUBSCRIBE echo from=start\n") == .reply(.subscribed(function("echo"))))
                #expect(try await loggedEnds(resumed, 2).map(\.id) == fresh, "from=start: what the log still holds")
            }
        }
    }

    /// 100 subscribers on one function while 500 jobs end at full speed: each gets every job once, in log order.
    @Test func aHundredSubscribersGetEveryJobOnce() async throws {
        try await withGatewayStack { stack in
            try await withTestWorker(stack, concurrency: 16, echo) {
                var subscribers: [GatewayTestClient] = []
                for _ in 0..<100 {
                    let client = try await stack.connect()
                    #expect(try await client.request("SUBSCRIBE echo from=now\n") == .reply(.subscribed(function("echo"))))
                    subscribers.append(client)
                }
                let submitter = try await stack.connect()
                let ids = try await submit(submitter, "echo", count: 500)
                var firstOrder: [GatewayJobID]?
                for subscriber in subscribers {
                    let ends = try await loggedEnds(subscriber, 500, timeout: .seconds(60))
                    #expect(Set(ends.map(\.id)) == Set(ids))
                    #expect(ends.map(\.id) == (firstOrder ?? ends.map(\.id)), "every subscriber sees the log's order")
                    firstOrder = firstOrder ?? ends.map(\.id)
                }
                let stats = try await statistics(submitter)
                #expect(stats["slow_consumers_closed"] == "0")
            }
        }
    }

    /// Two subscribers stop reading while 300 jobs with 16 KiB results end. They are not buffered for (the output
    /// bound, 64 KiB, is never passed: no SLOW_CONSUMER): they pause at their cursors and catch up from the log.
    @Test func aSlowSubscriberIsPausedByItsCursorNotBuffered() async throws {
        try await withGatewayStack({ $0.outputBufferLimit = 64 * 1024; $0.outputStallTimeout = .seconds(300) }) { stack in
            let result = ByteBuffer(repeating: UInt8(ascii: "r"), count: 16 * 1024)
            let handlers: [String: @Sendable (ByteBuffer, ProgressReporter) async throws -> ByteBuffer] = ["big": { _, _ in result }]
            try await withTestWorker(stack, concurrency: 16, handlers) {
                var subscribers: [GatewayTestClient] = []
                for index in 0..<3 {
                    let client = try await GatewayTestClient.connect(port: stack.port, receiveBuffer: index < 2 ? 4_096 : nil)
                    #expect(try await client.request("SUBSCRIBE big from=now\n") == .reply(.subscribed(function("big"))))
                    subscribers.append(client)
                }
                for slow in subscribers.prefix(2) { try await slow.channel.setOption(.autoRead, value: false) }
                let submitter = try await stack.connect()
                let ids = try await submit(submitter, "big", count: 300)
                #expect(Set(try await loggedEnds(subscribers[2], 300, timeout: .seconds(60)).map(\.id)) == Set(ids))
                let paused = try await statistics(submitter)
                #expect(Int(paused["subscriptions_paused"] ?? "0")! > 0, "the slow subscribers were paused, not buffered")
                for slow in subscribers.prefix(2) { try await slow.channel.setOption(.autoRead, value: true) }
                for slow in subscribers.prefix(2) {
                    let ends = try await loggedEnds(slow, 300, timeout: .seconds(60))
                    #expect(Set(ends.map(\.id)) == Set(ids), "each job once")
                    #expect(zip(ends, ends.dropFirst()).allSatisfy { $0.cursor < $1.cursor })
                }
                #expect(try await statistics(submitter)["slow_consumers_closed"] == "0")
            }
        }
    }
}

// MARK: Helpers

private func function(_ name: String) -> GatewayFunctionName { GatewayFunctionName(rawValue: name)! }

/// Submits `count` jobs in one pipelined write; their ids in order.
private func submit(_ client: GatewayTestClient, _ function: String, count: Int) async throws -> [GatewayJobID] {
    try await client.send((0..<count).map { submitLine(function, "\($0)") }.joined())
    var ids: [GatewayJobID] = []
    for _ in 0..<count { ids.append(try #require(try await client.next()?.createdID)) }
    return ids
}

/// The next `count` terminal events of a subscription `from=…`, each with its cursor.
private func loggedEnds(
    _ client: GatewayTestClient, _ count: Int, timeout: Duration = .seconds(20)
) async throws -> [(cursor: GatewayLogCursor, id: GatewayJobID)] {
    var ends: [(cursor: GatewayLogCursor, id: GatewayJobID)] = []
    while ends.count < count {
        let response = try await client.next(timeout: timeout)
        guard case .event(.logged(let event, let cursor), _)? = response else {
            Issue.record("expected an event with a cursor, got \(String(describing: response))")
            throw CancellationError()
        }
        ends.append((cursor, event.jobID))
    }
    return ends
}

/// The next `count` terminal events of a protocol v1 subscription (no cursors).
private func plainEnds(_ client: GatewayTestClient, _ count: Int) async throws -> [GatewayJobID] {
    var ids: [GatewayJobID] = []
    while ids.count < count {
        let response = try await client.next(timeout: .seconds(60))
        guard case .event(let event, _)? = response, event.isTerminal, event == event.withoutCursor else {
            Issue.record("expected a v1 terminal event, got \(String(describing: response))")
            throw CancellationError()
        }
        ids.append(event.jobID)
    }
    return ids
}

private func statistics(_ client: GatewayTestClient) async throws -> [String: String] {
    guard case .reply(.stats(let figures), _)? = try await client.request("STATS\n") else { return [:] }
    return Dictionary(figures.map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
}
