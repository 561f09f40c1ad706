import Foundation
import Gateway
import GatewayProtocol
import NIOCore
import Redis
import Testing

/// The ACL users of `Deploy/redis-jobgate.conf` are enough: the main path runs with the gateway and the worker
/// connected to Redis as those users, and each is refused what it does not need.
@Suite("Redis ACL users", .timeLimit(.minutes(2)))
struct RedisACLTests {
    /// The `user …` lines of the deploy file, by user name, as redis-server arguments.
    static func aclUsers() throws -> [String: [String]] {
        let text = try String(contentsOf: DeployTests.deploy.appendingPathComponent("redis-jobgate.conf"), encoding: .utf8)
        var users: [String: [String]] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("user ") {
            let words = line.split(separator: " ").map(String.init)
            users[words[1]] = ["--user"] + words.dropFirst()
        }
        return users
    }

    static func authentication(_ user: [String]) -> RedisConnectionConfiguration.Authentication {
        RedisConnectionConfiguration.Authentication(username: user[1], password: String(user.first { $0.hasPrefix(">") }!.dropFirst()))
    }

    /// Submit, a worker's progress and result, WATCH, SUBSCRIBE, RESULT and coalescing, with the gateway as
    /// `jobgate-gateway` and the worker as `jobgate-worker`; notifications are on from the config (neither user may
    /// CONFIG SET). The worker user cannot touch the gateway's keys.
    @Test func mainPathUnderACLUsers() async throws {
        let users = try Self.aclUsers()
        let gatewayUser = try #require(users["jobgate-gateway"])
        let workerUser = try #require(users["jobgate-worker"])
        let redisArguments = gatewayUser + workerUser + ["--notify-keyspace-events", "Ehx"]
        try await withGatewayStack(
            { $0.redis.authentication = Self.authentication(gatewayUser) },
            redisArguments: redisArguments
        ) { stack in
            var workerRedis = stack.configuration.redis
            workerRedis.authentication = Self.authentication(workerUser)
            let handlers: [String: @Sendable (ByteBuffer, ProgressReporter) async throws -> ByteBuffer] = [
                "reverse": { payload, progress in
                    try await progress(1, 2, "half")
                    return ByteBuffer(string: String(String(buffer: payload).reversed()))
                }
            ]
            try await withTestWorker(stack, redis: workerRedis, handlers) {
                let subscriber = try await stack.connect()
                #expect(try await subscriber.request("SUBSCRIBE reverse\n") == .reply(.subscribed(GatewayFunctionName(rawValue: "reverse")!)))
                let client = try await stack.connect()
                let id = try await client.submit("reverse", "hello", options: "unique=acl")
                let watching = try await client.request("WATCH \(id)\n")
                guard case .reply(.watching(id, _), nil) = watching else {
                    Issue.record("WATCH answered \(String(describing: watching))")
                    return
                }
                var events: [GatewayEvent] = []
                while true {
                    guard case .event(let event, nil) = try await client.next() else { break }
                    events.append(event)
                    if case .done = event { break }
                }
                #expect(events.last == .done(id, result: ByteBuffer(string: "olleh")), "\(events)")
                #expect(try await subscriber.next() == .event(.done(id, result: ByteBuffer(string: "olleh"))))
                #expect(try await client.request("RESULT \(id)\n") == .reply(.done(id, result: ByteBuffer(string: "olleh"))))
                // A finished job does not coalesce: the same unique creates again.
                let again = try await client.submit("reverse", "abc", options: "unique=acl")
                #expect(try await client.request("WAIT \(again) 10000\n") == .reply(.done(again, result: ByteBuffer(string: "cba"))))
            }
            // Least privilege: the worker's user may not read the id keys or write a coalescing key.
            let worker = RedisConnectionPool(configuration: workerRedis, size: 1)
            await #expect(throws: (any Error).self) { _ = try await worker.send(["GET", "\(stack.configuration.keyPrefix)id-key"]) }
            await #expect(throws: (any Error).self) { _ = try await worker.send(["SET", "\(stack.configuration.keyPrefix)unique:x", "y"]) }
            await #expect(throws: (any Error).self) { _ = try await worker.send(["CONFIG", "SET", "notify-keyspace-events", ""]) }
        }
    }
}
