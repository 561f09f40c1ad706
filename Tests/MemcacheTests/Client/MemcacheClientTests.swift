import JobgateSupport
import LocalServers
import Memcache
import NIOCore
import Testing

/// `MemcacheClient` against real servers: lazy connect, down servers, reconnect.
@Suite struct MemcacheClientTests {
    /// Basic operations through the client, including a multi-get over two servers.
    @Test func operationsOverAPool() async throws {
        try await withMemcached { first in
            try await withMemcached { second in
                let servers = [MemcacheServer(host: first.host, port: first.port), MemcacheServer(host: second.host, port: second.port)]
                let client = try MemcacheClient(servers: servers, distribution: .phpMemcachedConsistent)
                defer { Task { await client.shutdown() } }
                let keys = (0..<100).map { "client:\($0)" }
                for key in keys { try await client.setPHPString(key, to: "v-\(key)") }
                let found = try await client.get(keys + ["client:absent"])
                #expect(found.count == 100)
                #expect(found["client:7"]?.data.text == "v-client:7")
                #expect(try await client.delete("client:7"))
                #expect(try await client.get("client:7") == nil)
                #expect(try await client.touch("client:8", exptime: 100))
                await expectMemcacheError(.invalidKey) { try await client.get("bad key") }
                await expectMemcacheError(.invalidKey) { try await client.get(["ok", "bad key"]) }
            }
        }
    }

    /// A server that is down: `.connectionFailed`, then `.serverUnavailable` during back-off, then the client
    /// reconnects once the server is back.
    @Test func downServerAndReconnect() async throws {
        try await withMemcached { server in
            let client = try MemcacheClient(
                servers: [MemcacheServer(host: server.host, port: server.port)],
                distribution: .single,
                configuration: .init(reconnectBackoff: Backoff(initial: .milliseconds(300), maximum: .seconds(1)))
            )
            defer { Task { await client.shutdown() } }
            try await client.setPHPString("k", to: "before")

            server.kill()
            try await withTimeout(.seconds(20)) {
                // The first request finds the connection dropped (or races the close); the reconnect fails with a
                // typed error, and inside the back-off window the server is reported unavailable without a connect.
                var codes: [MemcacheError.Code] = []
                for _ in 0..<4 {
                    do {
                        _ = try await client.get("k")
                        Issue.record("get on a killed server succeeded")
                    } catch let error as MemcacheError {
                        codes.append(error.code)
                    }
                }
                #expect([MemcacheError.Code.connectionClosed, .connectionFailed].contains(codes.first), "\(codes)")
                #expect(codes.contains(.connectionFailed), "\(codes)")
                #expect(codes.last == .serverUnavailable, "\(codes)")
            }

            try await server.launch()
            try await withTimeout(.seconds(20)) {
                // Back-off is at most 1 s: the client must be back within a few seconds.
                let deadline = ContinuousClock.now + .seconds(10)
                while ContinuousClock.now < deadline {
                    if (try? await client.setPHPString("k", to: "after")) != nil { break }
                    try await Task.sleep(for: .milliseconds(100))
                }
                #expect(try await client.getPHPValue("k", writtenBy: .phpMemcached)?.string == "after")
            }
        }
    }

    /// Nothing ever listened there: a typed error, quickly.
    @Test func refusedServer() async throws {
        let client = try MemcacheClient(servers: [MemcacheServer(host: "127.0.0.1", port: try freeLoopbackPort())], distribution: .single)
        await expectMemcacheError(.connectionFailed) { try await client.get("k") }
        await expectMemcacheError(.serverUnavailable) { try await client.get("k") }
        await client.shutdown()
        await expectMemcacheError(.connectionClosed) { try await client.get("k") }
    }
}
