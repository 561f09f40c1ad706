import LocalServers
import Memcache
import NIOCore
import Testing

/// `MemcacheConnection` against a real memcached.
@Suite struct MemcacheConnectionTests {
    private func connect(_ server: LocalServer, _ configuration: MemcacheConnection.Configuration = .init()) async throws -> MemcacheConnection {
        try await MemcacheConnection.connect(host: server.host, port: server.port, configuration: configuration)
    }

    /// 1,000 sets and 1,000 gets, each batch pipelined in one write, all answered in order.
    @Test func pipelinedThousand() async throws {
        try await withMemcached { server in
            let connection = try await connect(server)
            defer { Task { await connection.close() } }
            let sets = (0..<1000).map { i in
                MemcacheRequest.store(.set, key: "pipe:\(i)", flags: UInt32(i), exptime: 0, data: ByteBuffer(string: "value-\(i)"))
            }
            let setReplies = try await connection.execute(sets)
            #expect(setReplies == Array(repeating: .stored, count: 1000))

            let gets = (0..<1000).map { MemcacheRequest.get(["pipe:\($0)"]) }
            let getReplies = try await connection.execute(gets)
            for (i, reply) in getReplies.enumerated() {
                #expect(reply == .values([MemcacheItem(key: "pipe:\(i)", flags: UInt32(i), data: ByteBuffer(string: "value-\(i)"))]))
            }

            // Many callers at once on one connection: each gets its own answer.
            try await withThrowingTaskGroup(of: (Int, MemcacheItem?).self) { group in
                for i in stride(from: 0, to: 1000, by: 7) {
                    group.addTask { (i, try await connection.get("pipe:\(i)")) }
                }
                for try await (i, item) in group {
                    #expect(item?.data.text == "value-\(i)")
                }
            }
        }
    }

    /// Misses are nil (single) or absent (multi-get); hits keep their flags and bytes.
    @Test func missingKeys() async throws {
        try await withMemcached { server in
            let connection = try await connect(server)
            defer { Task { await connection.close() } }
            #expect(try await connection.get("missing:1") == nil)
            try await connection.set("present", to: ByteBuffer(string: "here\r\nEND\r\n"), flags: 0x300)
            let items = try await connection.get(["missing:1", "present", "missing:2"])
            #expect(items == [MemcacheItem(key: "present", flags: 0x300, data: ByteBuffer(string: "here\r\nEND\r\n"))])
            let withCas = try await connection.gets(["present"])
            #expect(withCas.first?.cas != nil)
        }
    }

    /// delete and touch report whether the key existed; touch changes the expiry.
    @Test func deleteAndTouch() async throws {
        try await withMemcached { server in
            let connection = try await connect(server)
            defer { Task { await connection.close() } }
            try await connection.set("d", to: ByteBuffer(string: "1"))
            #expect(try await connection.delete("d"))
            #expect(try await !connection.delete("d"))
            #expect(try await connection.get("d") == nil)

            try await connection.set("t", to: ByteBuffer(string: "1"))
            #expect(try await connection.touch("t", exptime: 3600))
            #expect(try await connection.get("t") != nil)
            #expect(try await !connection.touch("nothing-here", exptime: 10))
            // A negative exptime expires the item at once: proof that touch changed it.
            #expect(try await connection.touch("t", exptime: -1))
            #expect(try await connection.get("t") == nil)

            #expect(try await connection.store(.add, "t2", data: ByteBuffer(string: "a")) == .stored)
            #expect(try await connection.store(.add, "t2", data: ByteBuffer(string: "b")) == .notStored)
        }
    }

    /// Bad keys and over-size values are refused before sending; the same connection keeps working.
    @Test func invalidKeysKeepTheConnectionInSync() async throws {
        try await withMemcached { server in
            let connection = try await connect(server, .init(maximumValueSize: 1000))
            defer { Task { await connection.close() } }
            let bad = [String(repeating: "k", count: 251), "with space", "ctrl\u{01}", "line\r\nbreak", "", "del\u{7F}"]
            for key in bad {
                await expectMemcacheError(.invalidKey) { try await connection.set(key, to: ByteBuffer(string: "set k 0 0 1\r\nx")) }
                await expectMemcacheError(.invalidKey) { try await connection.get(key) }
                await expectMemcacheError(.invalidKey) { try await connection.delete(key) }
                await expectMemcacheError(.invalidKey) { try await connection.touch(key, exptime: 1) }
                // A batch with one bad key sends nothing at all.
                await expectMemcacheError(.invalidKey) {
                    try await connection.execute([.store(.set, key: "fine", flags: 0, exptime: 0, data: ByteBuffer(string: "x")), .get([key])])
                }
                try await connection.set("ok", to: ByteBuffer(string: key))
                #expect(try await connection.get("ok")?.data.text == key)
            }
            #expect(try await connection.get("fine") == nil, "nothing of the refused batch was sent")
            await expectMemcacheError(.valueTooLarge) { try await connection.set("big", to: ByteBuffer(repeating: 1, count: 1001)) }
            #expect(try await connection.get("ok") != nil)
            #expect(connection.isActive)
        }
    }

    /// The server's own refusal (item over `-I`) is a typed error and leaves the connection in sync.
    @Test func serverErrorIsTyped() async throws {
        try await withMemcached(arguments: ["-I", "1m"]) { server in
            let connection = try await connect(server, .init(maximumValueSize: 2 << 20))
            defer { Task { await connection.close() } }
            await expectMemcacheError(.serverError) { try await connection.set("huge", to: ByteBuffer(repeating: 7, count: 1_100_000)) }
            try await connection.set("after", to: ByteBuffer(string: "fine"))
            #expect(try await connection.get("after")?.data.text == "fine")
        }
    }

    /// A server killed with requests in flight fails every one of them with `.connectionClosed`; none hangs.
    @Test func serverKilledWithRequestsInFlight() async throws {
        try await withMemcached { server in
            let connection = try await connect(server)
            try await connection.set("k", to: ByteBuffer(string: "v"))
            // Stopped, the server cannot answer: the batch is surely in flight when it dies.
            try server.pause()
            try await withTimeout(.seconds(20)) {
                let replies = Task { try await connection.execute((0..<200).map { _ in MemcacheRequest.get(["k"]) }) }
                let single = Task { try await connection.get("k") }
                try await Task.sleep(for: .milliseconds(200))
                server.kill()
                await expectMemcacheError(.connectionClosed) { try await replies.value }
                await expectMemcacheError(.connectionClosed) { try await single.value }
            }
            #expect(!connection.isActive)
            await expectMemcacheError(.connectionClosed) { try await connection.get("k") }
        }
    }

    /// A server that stops answering fails waiting requests with `.timeout` and the connection is closed.
    @Test func silentServerTimesOut() async throws {
        try await withMemcached { server in
            let connection = try await connect(server, .init(requestTimeout: .milliseconds(300)))
            try server.pause()
            defer { try? server.resume() }
            try await withTimeout(.seconds(20)) {
                await expectMemcacheError(.timeout) { try await connection.version() }
            }
            // The close starts with the timeout and completes on the event loop a moment later.
            try await eventually("the connection to close") { !connection.isActive }
        }
    }

    /// A cancelled caller stops waiting at once; its late reply is dropped and the connection stays in sync.
    @Test func cancelledRequestKeepsTheConnectionInSync() async throws {
        try await withMemcached { server in
            let connection = try await connect(server)
            defer { Task { await connection.close() } }
            try await connection.set("a", to: ByteBuffer(string: "A"))
            try await connection.set("b", to: ByteBuffer(string: "B"))
            try server.pause()
            let waiting = Task { try await connection.get("a") }
            try await Task.sleep(for: .milliseconds(100))
            waiting.cancel()
            try await withTimeout(.seconds(10)) {
                await expectMemcacheError(.cancelled) { try await waiting.value }
            }
            try server.resume()
            #expect(try await connection.get("b")?.data.text == "B")
            #expect(try await connection.get("a")?.data.text == "A")
        }
    }

    /// Nothing listening: `.connectionFailed`.
    @Test func connectionRefused() async throws {
        let port = try freeLoopbackPort()
        await expectMemcacheError(.connectionFailed) {
            try await MemcacheConnection.connect(host: "127.0.0.1", port: port)
        }
    }
}
