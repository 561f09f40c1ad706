import JobgateSupport
import LocalServers
import NIOCore
import Testing

@testable import Redis

@Suite(.serialized) struct RedisConnectionPoolTests {
    /// Concurrent requests spread over the pool all get their own replies.
    @Test func concurrentRequests() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let pool = RedisConnectionPool(configuration: server.redisConfiguration(), size: 3)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<300 {
                        group.addTask {
                            let results = try await pool.pipeline([["SET", "p\(index)", "\(index)"], ["GET", "p\(index)"]])
                            #expect(try results[1].get().int == index)
                        }
                    }
                    try await group.waitForAll()
                }
                // Every slot connects (the last one may still be finishing its handshake under load).
                try await eventually("all three pool connections") {
                    try await pool.send(["CLIENT", "LIST"]).string?.split(separator: "\n").count == 3
                }
                await pool.close()
                let error = await #expect(throws: RedisError.self) { try await pool.send(["PING"]) }
                #expect(error?.code == .connectionClosed)
            }
        }
    }

    /// After the server restarts, the pool reconnects on demand; while it is down, requests fail fast.
    @Test func reconnectsAfterRestart() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let pool = RedisConnectionPool(configuration: server.redisConfiguration(), size: 2, backoff: .init(initial: .milliseconds(20), maximum: .milliseconds(100)))
                defer { Task { await pool.close() } }
                #expect(try await pool.send(["PING"]) == .simpleString("PONG"))
                server.kill()
                let down = await #expect(throws: RedisError.self) { try await pool.send(["PING"]) }
                #expect(down?.code == .connectionRefused || down?.code == .connectionClosed)
                try await server.launch()
                var reply: RedisReply?
                for _ in 0..<100 where reply == nil {
                    reply = try? await pool.send(["PING"])
                    if reply == nil { try await Task.sleep(for: .milliseconds(20)) }
                }
                #expect(reply == .simpleString("PONG"))
            }
        }
    }
}
