import JobStore
import LocalServers
import NIOCore
import Redis
import Testing

/// `--redis-replicas-ack`: a created record and a written outcome count only once a replica holds them.
@Suite("Replicas acknowledging writes", .serialized, .timeLimit(.minutes(2)))
struct ReplicasAckTests {
    private static func store(_ server: LocalServer) -> RedisJobStore {
        var configuration = JobStoreConfiguration()
        configuration.replicasAck = RedisReplicasAck(replicas: 1, timeout: .seconds(1))
        return makeStore(server, configuration: configuration)
    }

    /// Without a replica, creating a job and writing an outcome fail as the backend being down (the gateway answers
    /// `ERR BACKEND_DOWN`, the worker retries), though the primary took them.
    @Test func unacknowledgedWritesFail() async throws {
        try await withLocalServer(.redis) { primary in
            let store = Self.store(primary)
            let id = newID()
            let created = await #expect(throws: JobStoreError.self) { try await store.create(id: id, function: "f", unique: nil) }
            #expect(created?.code == .backendDown, "\(String(describing: created))")
            #expect(created?.message.contains("replicasNotAcknowledged") == true, "\(String(describing: created))")
            let completed = await #expect(throws: JobStoreError.self) { try await store.complete(id, result: ByteBuffer(string: "r")) }
            #expect(completed?.code == .backendDown)
            let marked = await #expect(throws: JobStoreError.self) { try await store.markFailed(newID(), reason: "lost") }
            #expect(marked?.code == .backendDown)
        }
    }

    /// With a replica, the same writes succeed, and the replica holds them when they return.
    @Test func acknowledgedWritesAreOnTheReplica() async throws {
        try await withLocalServer(.redis) { primary in
            try await withLocalServer(.redis, arguments: ["--replicaof", primary.host, "\(primary.port)"]) { replica in
                let store = Self.store(primary)
                try await eventually("the replica to be in sync") {
                    (try? await store.redis.send(["INFO", "replication"]))?.string?.contains("state=online") == true
                }
                let id = newID()
                #expect(try await store.create(id: id, function: "f", unique: nil) == .created)
                try await store.complete(id, result: ByteBuffer(string: "r"))
                let onReplica = try await RedisConnection.connect(configuration: .init(host: replica.host, port: replica.port))
                let key = store.schema.jobKey(id)
                #expect(try await onReplica.send(["HGET", "\(key)", "state"]).string == "done")
                #expect(try await onReplica.send(["HGET", "\(key)", "result"]).string == "r")
                await onReplica.close()
            }
        }
    }
}
