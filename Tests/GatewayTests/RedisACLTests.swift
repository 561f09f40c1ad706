import Foundation
import Gateway
import LocalServers
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
        let redisArguments = gatewayUser + workerUser + ["--notify-keyspace-events", "Ehtx"]
        try await withGatewayStack(
            { $0.redis.authentication = Self.authentication(gatewayUser) },
            redisArguments: redisArguments
        ) { stack in
            var workerRedis = stack.configuration.redis
            workerRedis.authentication = Self.authentication(workerUser)
            // The real worker, connected as the worker user: progress on fd 3, the result upper-cased.
            let worker = try LocalProcess(
                jobgateExecutable(),
                [
                    "worker", "--gearman", "\(stack.gearmand.host):\(stack.gearmand.port)", "--redis", "\(stack.redis.host):\(stack.redis.port)",
                    "--redis-user", workerUser[1], "--function", "upper", "--", "/bin/sh", "-c", "echo 'PROGRESS 1 2 half' >&3; tr a-z A-Z",
                ],
                environment: ["JOBGATE_REDIS_PASSWORD": workerRedis.authentication!.password]
            )
            defer { worker.stop() }
            let subscriber = try await stack.connect()
            #expect(try await subscriber.request("SUBSCRIBE upper\n") == .reply(.subscribed(GatewayFunctionName(rawValue: "upper")!)))
            let client = try await stack.connect()
            let id = try await client.submit("upper", "hello", options: "unique=acl")
            let watching = try await client.request("WATCH \(id)\n")
            guard case .reply(.watching(id, _), nil) = watching else {
                Issue.record("WATCH answered \(String(describing: watching))")
                return
            }
            var events: [GatewayEvent] = []
            while let response = try await client.next(timeout: .seconds(30)), case .event(let event, nil) = response {
                events.append(event)
                if case .done = event { break }
            }
            #expect(events.last == .done(id, result: ByteBuffer(string: "HELLO")), "\(events) \(worker.log)")
            #expect(try await subscriber.next() == .event(.done(id, result: ByteBuffer(string: "HELLO"))))
            #expect(try await client.request("RESULT \(id)\n") == .reply(.done(id, result: ByteBuffer(string: "HELLO"))))
            // A finished job does not coalesce: the same unique creates again.
            let again = try await client.submit("upper", "abc", options: "unique=acl")
            #expect(try await client.request("WAIT \(again) 20000\n") == .reply(.done(again, result: ByteBuffer(string: "ABC"))))
            // Least privilege: the worker's user reads job records, but not the id keys; it writes no coalescing key.
            let workerPool = RedisConnectionPool(configuration: workerRedis, size: 1)
            let prefix = stack.configuration.keyPrefix
            // The progress was written (a watcher may see only the end, when both land before it reads the record).
            #expect(try await workerPool.send(["HGET", "\(prefix)job:\(id)", "message"]).string == "half")
            await #expect(throws: (any Error).self) { _ = try await workerPool.send(["GET", "\(prefix)id-key"]) }
            await #expect(throws: (any Error).self) { _ = try await workerPool.send(["SET", "\(prefix)unique:x", "y"]) }
            await #expect(throws: (any Error).self) { _ = try await workerPool.send(["CONFIG", "SET", "notify-keyspace-events", ""]) }
        }
    }
}
