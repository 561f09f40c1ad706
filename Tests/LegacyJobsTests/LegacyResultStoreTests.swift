import LegacyJobs
import LocalServers
import Memcache
import NIOCore
import Testing

/// Results stored in memcached by Gearman handle.
@Suite("Legacy memcached results", .timeLimit(.minutes(1)))
struct LegacyResultStoreTests {
    /// Dual-written results read back; a cleared handle reads as nothing.
    @Test func storeReadAndClear() async throws {
        try await withLocalServer(.memcached) { server in
            let client = try MemcacheClient(servers: [MemcacheServer(host: server.host, port: server.port)], distribution: .single)
            let store = LegacyResultStore(memcache: client, writtenBy: .peclMemcache)
            let bytes = ByteBuffer(bytes: [0, 1, 13, 10, 200])
            try await store.store(bytes, handle: "H:gw:1")
            #expect(try await store.result(handle: "H:gw:1") == .string(bytes))
            try await store.clear(handle: "H:gw:1")
            #expect(try await store.result(handle: "H:gw:1") == nil)
            await client.shutdown()
        }
    }
}
