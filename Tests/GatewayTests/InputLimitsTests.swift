import Foundation
import Gateway
import GatewayProtocol
import LocalServers
import NIOCore
import Testing

/// What a client can make the gateway hold while it reads: data blocks (per connection and in total), requests
/// that never finish arriving, subscriptions, and guesses at the AUTH secret.
@Suite("Gateway input limits", .timeLimit(.minutes(2)))
struct InputLimitsTests {
    /// Unauthenticated connections announcing large blocks cost no buffered input: each block is skipped as it
    /// streams in (the gateway's count stays at 0 while they are half sent), then answered `NOAUTH`, and the
    /// connection stays usable.
    @Test func unauthenticatedBlocksAreSkippedUnread() async throws {
        try await withGatewayStack({ $0.secrets = ["s3cret"] }) { stack in
            let admin = try await stack.connect()
            #expect(try await admin.request("AUTH s3cret\n") == .reply(.ok))
            let size = 8_000_000
            var clients: [GatewayTestClient] = []
            for index in 0..<8 {
                let client = try await stack.connect()
                try await client.send("@c\(index) SUBMIT reverse \(size)\n")
                try await client.send(bytes: [UInt8](repeating: UInt8(ascii: "x"), count: size - 1_000_000))
                clients.append(client)
            }
            // The blocks' lines were read long before this (the first STATS goes after them on the loop).
            for _ in 0..<5 {
                #expect(try await inputBuffered(admin) == 0)
                try await Task.sleep(for: .milliseconds(100))
            }
            for (index, client) in clients.enumerated() {
                try await client.send(bytes: [UInt8](repeating: UInt8(ascii: "x"), count: 1_000_000) + Array("\n".utf8))
                try await client.expectError(.noAuth, tag: GatewayTag(rawValue: "c\(index)"))
                try await client.expectUsable()
            }
            #expect(try await inputBuffered(admin) == 0)
        }
    }

    /// The same as seen from outside: a `jobgate serve` process that 16 unauthenticated connections each send most of
    /// a 16 MB block grows by far less than those blocks (256 MB), since it skips them as they arrive.
    @Test func unauthenticatedBlocksDoNotGrowTheProcess() async throws {
        try await withGatewayStack { stack in
            let port = try freeLoopbackPort()
            let gateway = try LocalProcess(jobgateExecutable(), [
                "serve", "--listen", "127.0.0.1:\(port)", "--gearman", stack.gearmand.address, "--redis", stack.redis.address,
                "--secrets", "s3cret", "--log-level", "warning",
            ])
            defer { gateway.stop() }
            try await eventually("jobgate serve to listen") { (try? await GatewayTestClient.connect(port: port)) != nil }
            let before = try residentBytes(of: gateway.pid)
            let size = 16_000_000
            let clients = try await withThrowingTaskGroup(of: GatewayTestClient.self) { group in
                for _ in 0..<16 {
                    group.addTask {
                        let client = try await GatewayTestClient.connect(port: port)
                        try await client.send("SUBMIT reverse \(size)\n")
                        try await client.send(bytes: [UInt8](repeating: UInt8(ascii: "x"), count: size - 100_000))
                        return client
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            // The gateway reads as fast as it can: within a second it would hold what the kernel buffered, too.
            var largest = 0
            for _ in 0..<10 {
                largest = max(largest, try residentBytes(of: gateway.pid))
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(largest - before < 32 << 20, "RSS grew from \(before >> 20) MiB to \(largest >> 20) MiB")
            for client in clients {
                try await client.send(bytes: [UInt8](repeating: UInt8(ascii: "x"), count: 100_000) + Array("\n".utf8))
                try await client.expectError(.noAuth)
            }
        }
    }

    /// `inputBufferLimit` = 1000: while one connection holds 600 bytes of an unfinished block, another's 600-byte
    /// block is refused with `BUSY` (skipped unread; the connection stays usable) and a 300-byte one fits; once the
    /// first block is submitted its bytes are released and a 600-byte block fits again.
    @Test func inputBoundRefusesBlocksPastIt() async throws {
        try await withGatewayStack({
            $0.inputBufferLimit = 1_000
            $0.maximumPayloadSize = 1_000
        }) { stack in
            let first = try await stack.connect()
            try await first.send("SUBMIT reverse 600\n" + String(repeating: "a", count: 100))
            try await eventually("the first block to be admitted") { try await stack.statistic("input_buffered_bytes") == 600 }

            let second = try await stack.connect()
            try await second.send("@big SUBMIT reverse 600\n" + String(repeating: "b", count: 600) + "\n")
            try await second.expectError(.busy, tag: GatewayTag(rawValue: "big"))
            try await second.expectUsable()
            _ = try await second.submit("reverse", String(repeating: "c", count: 300))

            try await first.send(String(repeating: "a", count: 500) + "\n")
            guard case .reply(.created, nil) = try await first.next() else {
                Issue.record("the admitted block was not submitted")
                return
            }
            try await eventually("every block to be released") { try await stack.statistic("input_buffered_bytes") == 0 }
            _ = try await second.submit("reverse", String(repeating: "d", count: 600))
            #expect(try await stack.statistic("jobs_submitted") == 3)
        }
    }

    /// Twelve connections each half way through a 1 MB block, with `inputBufferLimit` = 4 MB: the gateway holds
    /// exactly four blocks' worth and never more; those four are submitted, the other eight answered `BUSY`.
    @Test func manyConnectionsStayWithinTheInputBound() async throws {
        try await withGatewayStack({
            $0.inputBufferLimit = 4_000_000
            $0.maximumPayloadSize = 1_000_000
        }) { stack in
            let size = 1_000_000
            var clients: [GatewayTestClient] = []
            for _ in 0..<12 {
                let client = try await stack.connect()
                try await client.send("SUBMIT reverse \(size)\n")
                try await client.send(bytes: [UInt8](repeating: UInt8(ascii: "x"), count: size / 2))
                clients.append(client)
            }
            try await eventually("four blocks to be admitted") { try await stack.statistic("input_buffered_bytes") == 4 * size }
            for _ in 0..<5 {
                #expect(try await stack.statistic("input_buffered_bytes") <= 4 * size)
                try await Task.sleep(for: .milliseconds(100))
            }
            var created = 0
            var busy = 0
            for client in clients {
                try await client.send(bytes: [UInt8](repeating: UInt8(ascii: "x"), count: size / 2) + Array("\n".utf8))
                switch try await client.next() {
                case .reply(.created, nil): created += 1
                case .reply(.error(.busy, _), nil): busy += 1
                case let other: Issue.record("unexpected \(String(describing: other))")
                }
                try await client.expectUsable()
            }
            #expect(created == 4 && busy == 8)
            try await eventually("every block to be released") { try await stack.statistic("input_buffered_bytes") == 0 }
        }
    }

    /// `requestTimeout`: a block or a line that stops arriving closes its connection with `REQUEST_TIMEOUT` (and
    /// releases what the block held) long before the idle timeout, while a client that keeps sending whole requests
    /// is served throughout.
    @Test func stalledRequestsTimeOut() async throws {
        try await withGatewayStack({
            $0.requestTimeout = .seconds(1)
            $0.idleTimeout = .seconds(300)
        }) { stack in
            let block = try await stack.connect()
            try await block.send("SUBMIT reverse 100\n0123456789")
            let line = try await stack.connect()
            try await line.send("PIN")
            let normal = try await stack.connect()
            for _ in 0..<8 {
                #expect(try await normal.request("PING\n") == .reply(.pong))
                try await Task.sleep(for: .milliseconds(300))
            }
            for client in [block, line] {
                try await client.expectError(.requestTimeout)
                #expect(try await client.next() == nil, "the connection is closed")
            }
            try await normal.expectUsable()
            #expect(try await stack.statistic("input_buffered_bytes") == 0)
        }
    }

    /// `maximumSubscriptionsPerConnection` = 2: a third function is `TOO_MANY_SUBSCRIPTIONS`; subscribing again to
    /// one already subscribed fits; after an UNSUBSCRIBE one more works; the limit is per connection.
    @Test func subscriptionsPerConnection() async throws {
        try await withGatewayStack({ $0.maximumSubscriptionsPerConnection = 2 }) { stack in
            let client = try await stack.connect()
            for function in ["a", "b", "a"] {
                #expect(try await client.request("SUBSCRIBE \(function)\n") == .reply(.subscribed(GatewayFunctionName(rawValue: function)!)))
            }
            try await client.send("@third SUBSCRIBE c\n")
            try await client.expectError(.tooManySubscriptions, tag: GatewayTag(rawValue: "third"))
            #expect(try await client.request("UNSUBSCRIBE a\n") == .reply(.unsubscribed(GatewayFunctionName(rawValue: "a")!)))
            #expect(try await client.request("SUBSCRIBE c\n") == .reply(.subscribed(GatewayFunctionName(rawValue: "c")!)))
            try await client.send("SUBSCRIBE a\n")
            try await client.expectError(.tooManySubscriptions)

            let other = try await stack.connect()
            #expect(try await other.request("SUBSCRIBE a\n") == .reply(.subscribed(GatewayFunctionName(rawValue: "a")!)))
        }
    }

    /// Wrong `AUTH`s: the first is answered at once, each further one later (doubling, and counted from the answer
    /// before, so pipelined guesses wait in turn), requests behind it keep their order; the last allowed one closes
    /// the connection. Failures are counted; the right secret still works on a new connection.
    @Test func authFailuresSlowDownThenClose() async throws {
        try await withGatewayStack({
            $0.secrets = ["s3cret"]
            $0.maximumAuthFailures = 4
            $0.authFailureDelay = .milliseconds(300)
        }) { stack in
            let guesser = try await stack.connect()
            try await guesser.send("AUTH a\n")
            try await guesser.expectError(.denied)
            let start = ContinuousClock.now
            try await guesser.send("AUTH b\nAUTH c\nPING\n")
            for delay in [Duration.milliseconds(300), .milliseconds(300 + 600)] {
                try await guesser.expectError(.denied)
                #expect(ContinuousClock.now - start >= delay, "answered after \(ContinuousClock.now - start)")
            }
            #expect(try await guesser.next() == .reply(.pong))
            try await guesser.send("AUTH d\nPING\n")
            let message = try await guesser.expectError(.denied)
            #expect(message?.contains("closing") == true)
            #expect(try await guesser.next() == nil, "closed after the last allowed failure, the PING unanswered")

            let admin = try await stack.connect()
            #expect(try await admin.request("AUTH s3cret\n") == .reply(.ok))
            #expect(try await statistic(admin, "auth_failures") == "4")
        }
    }

    /// An input bound below the largest payload could never admit such a block: refused before anything starts.
    @Test func inputBufferBelowMaximumPayloadIsRefused() async throws {
        let arguments = ["serve", "--listen", "127.0.0.1:1", "--max-payload", "2000", "--input-buffer", "1000"]
        let run = try await runProgram(jobgateExecutable(), arguments, timeout: .seconds(10))
        #expect(run.status != 0 && run.errors.contains("--input-buffer must be at least --max-payload"), "\(run.errors)")
    }

    private func residentBytes(of pid: pid_t) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") })
        return try #require(Int(line.split(separator: " ")[1])) * 1024
    }

    private func inputBuffered(_ client: GatewayTestClient) async throws -> Int? {
        try await statistic(client, "input_buffered_bytes").flatMap { Int($0) }
    }
}
