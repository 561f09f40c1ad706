import GatewayProtocol
import LocalServers
import Testing

/// The memory of a real `jobgate serve` process holding many idle watchers (the small version of `jobgate bench`
/// section 4: 10,000 of them within 64 MiB).
@Suite("Idle watchers, gateway process", .timeLimit(.minutes(3)))
struct IdleWatchersMemoryTests {
    static let watchers = 5_000
    /// What one idle watching connection may add to the gateway's RSS once it settled, all told: its NIO channel,
    /// session and watch, and what glibc could not give back of the burst that read its job. Measured in a debug
    /// build with 5,000 watchers: 3.7 KB here, 4.06 KB once in CI (4.1–4.4 KB before the session kept its rarely used
    /// state in a box and its one watch inline; 10.5 KB before this bound was first written). A release build: 3.3 KB.
    static let bytesPerWatcher = 4_608

    /// 5,000 connections each `WATCH`ing a queued job: once settled (past a lost-job check and two of malloc's
    /// trims), the gateway's RSS is within `bytesPerWatcher` of its RSS before them, per watcher.
    @Test func idleWatchersStayWithinTheirBound() async throws {
        try await withLocalServer(.gearmand) { gearmand in
            try await withLocalServer(.redis) { redis in
                let (process, port) = try await LargeResultProcessTests.startServe(gearmand: gearmand, redis: redis)
                defer { process.stop() }
                let submitter = try await GatewayTestClient.connect(port: port)
                var ids: [GatewayJobID] = []
                for _ in 0..<Self.watchers { ids.append(try await submitter.submit("memory.watch", "x")) }
                try await Task.sleep(for: .seconds(3))  // the gateway trims malloc's free pages every 2 s
                let before = try LargeResultProcessTests.rss(process.pid)

                var clients: [GatewayTestClient] = []
                for wave in stride(from: 0, to: ids.count, by: 250) {
                    clients += try await withThrowingTaskGroup(of: GatewayTestClient.self) { group in
                        for id in ids[wave..<min(wave + 250, ids.count)] {
                            group.addTask {
                                let client = try await GatewayTestClient.connect(port: port)
                                let reply = try await client.request("WATCH \(id)\n")
                                guard case .reply(.watching(id, _), nil) = reply else { throw UnexpectedReply(reply: reply) }
                                return client
                            }
                        }
                        return try await group.reduce(into: []) { $0.append($1) }
                    }
                }
                // Past the lost-job check (every 5 s, reading every followed job) and two trims.
                try await Task.sleep(for: .seconds(7))
                let idle = try LargeResultProcessTests.rss(process.pid)
                let perWatcher = (idle - before) / Self.watchers
                #expect(
                    idle - before <= Self.watchers * Self.bytesPerWatcher,
                    "RSS \(before >> 10) KiB before, \(idle >> 10) KiB with \(Self.watchers) idle watchers: \(perWatcher) B each"
                )
                for client in clients { await client.close() }
                await submitter.close()
            }
        }
    }
}
