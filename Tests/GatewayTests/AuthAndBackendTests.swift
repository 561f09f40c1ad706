import Gateway
import GatewayProtocol
import LocalServers
import NIOCore
import Testing

/// `AUTH`, and what clients see while gearmand or Redis is away and after it came back.
@Suite("Gateway auth and backends", .timeLimit(.minutes(2)))
struct AuthAndBackendTests {
    /// With a secret: HELLO says `auth=required`; only HELLO, AUTH, PING and QUIT work before a good AUTH
    /// (`NOAUTH`, a SUBMIT's block still consumed); a wrong secret is `DENIED`; the right one unlocks the rest.
    @Test func authentication() async throws {
        try await withGatewayStack({ $0.secrets = ["s3cret"] }) { stack in
            let client = try await stack.connect()
            guard case .reply(.hello(let info), nil) = try await client.request("HELLO\n") else {
                Issue.record("no HELLO")
                return
            }
            #expect(info.authenticationRequired)
            try await client.send("STATUS x\n")
            try await client.expectError(.noAuth)
            try await client.send("@s SUBMIT reverse 5\nPING\n\n")
            try await client.expectError(.noAuth, tag: GatewayTag(rawValue: "s"))
            try await client.send("STATS\n")
            try await client.expectError(.noAuth)
            try await client.expectUsable()
            try await client.send("AUTH wrong\n")
            try await client.expectError(.denied)
            try await client.send("STATUS x\n")
            try await client.expectError(.noAuth)

            #expect(try await client.request("AUTH s3cret\n") == .reply(.ok))
            try await client.send("STATUS x\n")
            try await client.expectError(.notFound)
            let id = try await client.submit("reverse", "hello")
            #expect(try await client.request("STATUS \(id)\n") == .reply(.status(id, GatewayJobStatus(.queued))))

            // Authentication belongs to the connection.
            let other = try await stack.connect()
            try await other.send("STATUS \(id)\n")
            try await other.expectError(.noAuth)
            #expect(try await other.request("QUIT\n") == .reply(.bye))
        }
    }

    /// gearmand down: SUBMIT is `BACKEND_DOWN`, and the record it had created is marked failed (a subscriber
    /// sees it end) rather than left queued; once gearmand is back, the same unique key starts a new job.
    @Test func gearmandDown() async throws {
        try await withGatewayStack { stack in
            let client = try await stack.connect()
            _ = try await client.submit("reverse", "warm")  // the gateway holds a connection to gearmand now
            let subscriber = try await stack.connect()
            #expect(try await subscriber.request("SUBSCRIBE reverse\n") == .reply(.subscribed(GatewayFunctionName(rawValue: "reverse")!)))

            stack.gearmand.kill()
            try await client.send("SUBMIT reverse 5 unique=k1\nhello\n")
            try await client.expectError(.backendDown)
            let event = try await subscriber.next()
            guard case .event(.failed(let id, let reason), nil) = event else {
                Issue.record("the refused job did not end as failed: \(String(describing: event))")
                return
            }
            #expect(String(buffer: reason).contains("gearmand"))
            #expect(try await client.request("STATUS \(id)\n") == .reply(.status(id, GatewayJobStatus(.failed))))
            try await client.expectUsable()

            try await stack.gearmand.launch()
            var created: GatewayJobID?
            try await eventually("SUBMIT to work again", timeout: .seconds(20)) {
                switch try await client.request("SUBMIT reverse 5 unique=k1\nhello\n") {
                case .reply(.created(let id), nil):
                    created = id
                    return true
                case .reply(.error(.backendDown, _), nil): return false
                case let other:
                    Issue.record("SUBMIT after gearmand returned: \(String(describing: other))")
                    return true
                }
            }
            #expect(created != nil && created != id)
        }
    }

    /// Redis down: STATUS, RESULT, WATCH and SUBMIT are `BACKEND_DOWN` and the connection stays usable; once
    /// Redis is back they work again.
    @Test func redisDown() async throws {
        try await withGatewayStack { stack in
            let client = try await stack.connect()
            let id = try await client.submit("unserved", "x")
            stack.redis.kill()
            for request in ["STATUS \(id)", "RESULT \(id)", "WATCH \(id)", "WAIT \(id) 100"] {
                try await client.send(request + "\n")
                try await client.expectError(.backendDown)
            }
            try await client.send("SUBMIT unserved 1\ny\n")
            try await client.expectError(.backendDown)
            try await client.expectUsable()
            #expect(try await stack.statistic("backend_errors_all") >= 5)

            try await stack.redis.launch()
            try await eventually("Redis to be used again", timeout: .seconds(20)) {
                guard case .reply(.created, nil) = try await client.request("SUBMIT unserved 1\ny\n") else { return false }
                return true
            }
        }
    }

    /// A WATCH and a WAIT made before Redis went away still end when the job finishes after Redis is back,
    /// and miss nothing. Redis is saved before it is killed, as a persistent Redis would be; the restarted
    /// server has keyspace notifications off until the gateway re-enables them. The backstop sweep is made too
    /// slow to matter, so the events after the restart come from notifications.
    @Test func watchAndWaitSurviveRedisRestart() async throws {
        try await withGatewayStack({ $0.sweepInterval = .seconds(120) }) { stack in
            let release = Latch()
            let finish = Latch()
            try await withTestWorker(stack, ["hold": { payload, progress in
                await release.wait()
                try await progress(1, 2, "half")
                await finish.wait()
                return ByteBuffer(string: "done:" + String(buffer: payload))
            }]) {
                let (client, id, waiter, watcher) = try await Self.runningJobWithWaiterAndWatcher(stack, watchTag: GatewayTag(rawValue: "w"))

                let saved = try LoopbackSocket.exchange(port: stack.redis.port, request: Array("SAVE\r\n".utf8), timeoutMs: 5_000)
                #expect(String(decoding: saved, as: UTF8.self).hasPrefix("+OK"))
                stack.redis.kill()
                try await client.send("STATUS \(id)\n")
                try await client.expectError(.backendDown)
                try await stack.redis.launch()
                try await eventually("Redis to be used again", timeout: .seconds(20)) {
                    try await client.request("STATUS \(id)\n") == .reply(.status(id, GatewayJobStatus(.running)))
                }
                try await eventually("the gateway to re-enable keyspace notifications", timeout: .seconds(20)) {
                    let flags = try Self.notificationFlags(redisPort: stack.redis.port)
                    return flags.contains("E") && flags.contains("h")
                }

                release.open()
                let tag = GatewayTag(rawValue: "w")
                let progress = try await watcher.next()
                #expect(progress == .event(.progress(id, numerator: 1, denominator: 2, message: ByteBuffer(string: "half")), tag: tag))
                finish.open()
                #expect(try await watcher.next() == .event(.done(id, result: ByteBuffer(string: "done:job")), tag: tag))
                #expect(try await waiter.next() == .reply(.done(id, result: ByteBuffer(string: "done:job"))))
                try await watcher.expectUsable()
                try await waiter.expectUsable()
            }
        }
    }

    /// A Redis that restarts empty (no persistence) lost the job's record: a WATCH and a WAIT made before end with
    /// EXPIRED once Redis is back, instead of waiting forever.
    @Test func watchAndWaitEndWhenRedisLosesTheJob() async throws {
        try await withGatewayStack { stack in
            let release = Latch()
            try await withTestWorker(stack, ["hold": { payload, _ in
                await release.wait()
                return payload
            }]) {
                let (_, id, waiter, watcher) = try await Self.runningJobWithWaiterAndWatcher(stack, watchTag: nil)

                try await stack.redis.restart()
                #expect(try await watcher.next(timeout: .seconds(20)) == .event(.expired(id)))
                #expect(try await waiter.next(timeout: .seconds(20)) == .reply(.expired(id)))
                release.open()
                try await watcher.expectUsable()
            }
        }
    }

    /// A `hold` job, submitted and running; one connection `WAIT`s for it, another `WATCH`es it (with `watchTag`).
    static func runningJobWithWaiterAndWatcher(
        _ stack: GatewayStack,
        watchTag: GatewayTag?
    ) async throws -> (client: GatewayTestClient, id: GatewayJobID, waiter: GatewayTestClient, watcher: GatewayTestClient) {
        let client = try await stack.connect()
        let id = try await client.submit("hold", "job")
        try await eventually("the job to run") {
            try await client.request("STATUS \(id)\n") == .reply(.status(id, GatewayJobStatus(.running)))
        }
        let waiter = try await stack.connect()
        try await waiter.send("WAIT \(id) 60000\n")
        try await eventually("the WAIT to follow the job") { try await stack.statistic("jobs_followed") == 1 }
        let watcher = try await stack.connect()
        let prefix = watchTag.map { "@\($0.rawValue) " } ?? ""
        #expect(try await watcher.request("\(prefix)WATCH \(id)\n") == .reply(.watching(id, GatewayJobStatus(.running)), tag: watchTag))
        return (client, id, waiter, watcher)
    }

    /// `CONFIG GET notify-keyspace-events`, asked over a raw socket.
    static func notificationFlags(redisPort: Int) throws -> String {
        let request = "*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$22\r\nnotify-keyspace-events\r\n"
        let reply = try LoopbackSocket.exchange(port: redisPort, request: Array(request.utf8), timeoutMs: 2_000)
        // *2 $22 notify-keyspace-events $<n> <flags>
        let lines = String(decoding: reply, as: UTF8.self).split(separator: "\r\n", omittingEmptySubsequences: false)
        return lines.count > 4 ? String(lines[4]) : ""
    }
}
