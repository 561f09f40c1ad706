import LocalServers
import NIOCore
import Testing

@testable import Redis

/// `RedisConnection` against a real redis-server.
@Suite(.serialized) struct RedisConnectionTests {
    /// Binary values (NUL, CR, LF, every byte) survive SET and GET unchanged.
    @Test func binaryRoundTrip() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let connection = try await RedisConnection.connect(to: server)
                defer { Task { await connection.close() } }
                let value = ByteBuffer(bytes: [0, 13, 10, 0, 13, 10] + Array(0...255))
                let key = ByteBuffer(bytes: Array("key\0\r\n".utf8))
                #expect(try await connection.send(RedisCommand([ByteBuffer(string: "SET"), key, value])) == .simpleString("OK"))
                #expect(try await connection.send(RedisCommand([ByteBuffer(string: "GET"), key])) == .bulkString(value))
                #expect(try await connection.send(["STRLEN", .bytes(key)]) == .integer(Int64(value.readableBytes)))
            }
        }
    }

    /// 1,000 pipelined commands in one write get their own replies, in order.
    @Test func pipelineOfAThousand() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let connection = try await RedisConnection.connect(to: server)
                defer { Task { await connection.close() } }
                let sets = try await connection.pipeline((0..<1000).map { ["SET", "k\($0)", "v\($0)"] })
                #expect(sets.count == 1000)
                #expect(sets.allSatisfy { (try? $0.get()) == .simpleString("OK") })
                let gets = try await connection.pipeline((0..<1000).map { $0 % 2 == 0 ? ["GET", "k\($0)"] : ["INCR", "n"] })
                for (index, result) in gets.enumerated() {
                    let expected: RedisReply = index % 2 == 0 ? .bulkString(ByteBuffer(string: "v\(index)")) : .integer(Int64(index / 2 + 1))
                    #expect(try result.get() == expected, "reply \(index)")
                }
            }
        }
    }

    /// Many concurrent callers on one connection each get their own reply.
    @Test func concurrentSendsAreMatched() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let connection = try await RedisConnection.connect(to: server)
                defer { Task { await connection.close() } }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<200 {
                        group.addTask {
                            try await connection.send(["SET", "c\(index)", "\(index)"])
                            let reply = try await connection.send(["GET", "c\(index)"])
                            #expect(reply.int == index)
                        }
                    }
                    try await group.waitForAll()
                }
            }
        }
    }

    /// An error reply fails only its own command; the connection and the other commands are fine.
    @Test func serverErrorIsPerCommand() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let connection = try await RedisConnection.connect(to: server)
                defer { Task { await connection.close() } }
                let results = try await connection.pipeline([["SET", "s", "1"], ["LPUSH", "s", "x"], ["NOSUCHCOMMAND"], ["GET", "s"]])
                #expect(try results[0].get() == .simpleString("OK"))
                #expect(throws: RedisError.self) { try results[1].get() }
                if case .failure(let error) = results[1] {
                    #expect(error.code == .serverError)
                    #expect(error.serverErrorPrefix == "WRONGTYPE")
                }
                if case .failure(let error) = results[2] { #expect(error.serverErrorPrefix == "ERR") } else { Issue.record("NOSUCHCOMMAND succeeded") }
                #expect(try results[3].get().int == 1)

                let error = await #expect(throws: RedisError.self) { try await connection.send(["INCR", "s", "extra"]) }
                #expect(error?.code == .serverError)
                #expect(try await connection.send(["PING"]) == .simpleString("PONG"))
            }
        }
    }

    /// MULTI/EXEC through a pipeline and through `transaction`; a refused command aborts it, a run-time error does not.
    @Test func multiExec() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let connection = try await RedisConnection.connect(to: server)
                defer { Task { await connection.close() } }
                let results = try await connection.pipeline([["MULTI"], ["HSET", "job:1", "status", "done"], ["HGET", "job:1", "status"], ["EXEC"]])
                #expect(try results.map { try $0.get() } == [
                    .simpleString("OK"), .simpleString("QUEUED"), .simpleString("QUEUED"),
                    .array([.integer(1), .bulkString(ByteBuffer(string: "done"))]),
                ])

                let replies = try await connection.transaction([["SET", "t", "x"], ["INCR", "t"], ["GET", "t"]])
                #expect(replies.count == 3)
                #expect(replies[1].errorMessage?.hasPrefix("ERR") == true)
                #expect(replies[2] == .bulkString(ByteBuffer(string: "x")))

                let error = await #expect(throws: RedisError.self) {
                    try await connection.transaction([["SET", "t", "y"], ["INCR"]])
                }
                #expect(error?.code == .serverError)
                #expect(try await connection.send(["GET", "t"]).string == "x")
            }
        }
    }

    /// `requirepass`: the right password works, a wrong one is `.authenticationFailed`, none gets NOAUTH.
    @Test func passwordAuthentication() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                // Set at run time: LocalServer's readiness probe is an unauthenticated PING.
                let setup = try await RedisConnection.connect(to: server)
                try await setup.send(["CONFIG", "SET", "requirepass", "s3cret"])
                await setup.close()

                let connection = try await RedisConnection.connect(to: server, authentication: .init(password: "s3cret"))
                #expect(try await connection.send(["PING"]) == .simpleString("PONG"))
                await connection.close()

                let wrong = await #expect(throws: RedisError.self) {
                    try await RedisConnection.connect(to: server, authentication: .init(password: "wrong"))
                }
                #expect(wrong?.code == .authenticationFailed)
                #expect(wrong?.serverErrorPrefix == "WRONGPASS")

                let anonymous = try await RedisConnection.connect(to: server)
                let noAuth = await #expect(throws: RedisError.self) { try await anonymous.send(["GET", "x"]) }
                #expect(noAuth?.serverErrorPrefix == "NOAUTH")
                await anonymous.close()
            }
        }
    }

    /// ACL users: `AUTH user password` logs in as that user; a wrong password is `.authenticationFailed`.
    @Test func aclUser() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let admin = try await RedisConnection.connect(to: server)
                defer { Task { await admin.close() } }
                try await admin.send(["ACL", "SETUSER", "gateway", "on", ">gw-pass", "~job:*", "&*", "+@all"])

                let user = try await RedisConnection.connect(to: server, authentication: .init(username: "gateway", password: "gw-pass"))
                #expect(try await user.send(["ACL", "WHOAMI"]).string == "gateway")
                #expect(try await user.send(["SET", "job:1", "x"]) == .simpleString("OK"))
                let denied = await #expect(throws: RedisError.self) { try await user.send(["SET", "other", "x"]) }
                #expect(denied?.serverErrorPrefix == "NOPERM")
                await user.close()

                let wrong = await #expect(throws: RedisError.self) {
                    try await RedisConnection.connect(to: server, authentication: .init(username: "gateway", password: "nope"))
                }
                #expect(wrong?.code == .authenticationFailed)
            }
        }
    }

    /// `SELECT` after connecting: keys land in that database; an invalid database fails the connect.
    @Test func selectDatabase() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let db3 = try await RedisConnection.connect(to: server, database: 3)
                defer { Task { await db3.close() } }
                try await db3.send(["SET", "here", "3"])
                let db0 = try await RedisConnection.connect(to: server)
                defer { Task { await db0.close() } }
                #expect(try await db0.send(["GET", "here"]) == .null)
                #expect(try await db3.send(["GET", "here"]).int == 3)

                let error = await #expect(throws: RedisError.self) { try await RedisConnection.connect(to: server, database: 99) }
                #expect(error?.code == .serverError)
            }
        }
    }

    /// Nothing listening: `.connectionRefused`, promptly.
    @Test func connectionRefused() async throws {
        let port = try freeLoopbackPort()
        try await withTimeout {
            let error = await #expect(throws: RedisError.self) {
                try await RedisConnection.connect(configuration: .init(port: port))
            }
            #expect(error?.code == .connectionRefused)
        }
    }

    /// The server killed with requests in flight: each fails with `.connectionClosed`, none hangs, and
    /// later requests fail at once.
    @Test func serverKilledWithRequestsInFlight() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let connection = try await RedisConnection.connect(to: server)
                // BLPOP blocks on the server, so these are certainly in flight when it dies.
                let blocked = Task { try await connection.pipeline([["BLPOP", "never", "0"], ["GET", "x"]]) }
                let single = Task { try await connection.send(["BLPOP", "never2", "0"]) }
                try await Task.sleep(for: .milliseconds(200))
                server.kill()
                let first = await #expect(throws: RedisError.self) { try await blocked.value }
                #expect(first?.code == .connectionClosed)
                let second = await #expect(throws: RedisError.self) { try await single.value }
                #expect(second?.code == .connectionClosed)
                #expect(!connection.isConnected)
                let later = await #expect(throws: RedisError.self) { try await connection.send(["PING"]) }
                #expect(later?.code == .connectionClosed)
            }
        }
    }

    /// A reply that does not come within `commandTimeout` fails with `.timeout` and closes the connection.
    @Test func commandTimeout() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let connection = try await RedisConnection.connect(configuration: server.redisConfiguration(commandTimeout: .milliseconds(300)))
                let error = await #expect(throws: RedisError.self) { try await connection.send(["BLPOP", "never", "0"]) }
                #expect(error?.code == .timeout)
                #expect(!connection.isConnected)
            }
        }
    }

    /// A reply over `maximumReplySize` fails with `.replyTooLarge` instead of being buffered.
    @Test func replyTooLarge() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                var configuration = server.redisConfiguration()
                configuration.maximumReplySize = 64 * 1024
                let connection = try await RedisConnection.connect(configuration: configuration)
                try await connection.send(["SET", "big", .bytes(ByteBuffer(repeating: 1, count: 100_000))])
                let error = await #expect(throws: RedisError.self) { try await connection.send(["GET", "big"]) }
                #expect(error?.code == .replyTooLarge)
                #expect(!connection.isConnected)
            }
        }
    }

    /// Cancelling a waiting caller fails it with CancellationError; the connection keeps working.
    @Test func cancellation() async throws {
        try await withLocalServer(.redis) { server in
            try await withTimeout {
                let connection = try await RedisConnection.connect(to: server)
                defer { Task { await connection.close() } }
                let blocked = Task { try await connection.send(["BLPOP", "list", "0"]) }
                try await Task.sleep(for: .milliseconds(100))
                blocked.cancel()
                await #expect(throws: CancellationError.self) { try await blocked.value }
                let other = try await RedisConnection.connect(to: server)
                try await other.send(["RPUSH", "list", "a"])  // answers the cancelled BLPOP
                await other.close()
                #expect(try await connection.send(["PING"]) == .simpleString("PONG"))
            }
        }
    }
}
