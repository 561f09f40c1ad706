import JobgateSupport
import LocalServers
import NIOCore
import NIOPosix
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

    /// The slots connect on the group's loops in turn, and a caller on a loop gets that loop's connection: a
    /// request and its reply stay on one thread.
    @Test func aCallerOnALoopGetsThatLoopsConnection() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
                        let pool = RedisConnectionPool(configuration: server.redisConfiguration(), size: 4, eventLoopGroup: group)
                try await eventually("all four pool connections") {
                    _ = try await pool.send(["PING"])
                    return try await pool.send(["CLIENT", "LIST"]).string?.split(separator: "\n").count == 4
                }
                for loop in group.makeIterator() {
                    for _ in 0..<4 {
                        let isLocal = try await loop.submit { pool.connectedConnection()?.eventLoop === loop }.get()
                        #expect(isLocal)
                    }
                }
                await pool.close()
                try await group.shutdownGracefully()
            }
        }
    }
}
