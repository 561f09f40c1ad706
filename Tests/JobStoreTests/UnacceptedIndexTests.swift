import JobStore
import LocalServers
import Redis
import Testing

/// The index of jobs created in Redis and not yet accepted by gearmand, in a real redis-server.
@Suite("Unaccepted jobs index", .timeLimit(.minutes(1)))
struct UnacceptedIndexTests {
    /// Every created job is in the index until cleared. A queued job still in it after the acceptance grace is
    /// answered `unaccepted` instead of joined; one that was cleared (gearmand took it), or that runs, is joined.
    @Test func coalescingTellsUnacceptedJobs() async throws {
        try await withLocalServer(.redis) { server in
            var configuration = JobStoreConfiguration()
            configuration.acceptanceGrace = .milliseconds(300)
            let store = makeStore(server, configuration: configuration)
            let (unaccepted, accepted, running) = (newID(), newID(), newID())
            #expect(try await store.create(id: unaccepted, function: "f", unique: "a") == .created)
            #expect(try await store.create(id: accepted, function: "f", unique: "b") == .created)
            #expect(try await store.create(id: running, function: "f", unique: "c") == .created)
            #expect(try await store.create(id: newID(), function: "f", unique: "a") == .joined(unaccepted), "within the grace")
            try await store.clearUnaccepted([accepted])
            try await store.markRunning(running, function: "f", handle: "H:x:1", server: "s")
            try await Task.sleep(for: .milliseconds(400))

            let old = try await store.unacceptedJobs(olderThan: .milliseconds(300), limit: 10).map(\.id)
            #expect(old.contains(unaccepted) && old.contains(running) && !old.contains(accepted))
            let joiners = [newID(), newID(), newID()]
            #expect(try await store.create(id: joiners[0], function: "f", unique: "a") == .unaccepted(unaccepted))
            #expect(try await store.create(id: joiners[1], function: "f", unique: "b") == .joined(accepted))
            #expect(try await store.create(id: joiners[2], function: "f", unique: "c") == .joined(running))
            try await store.clearUnaccepted(old)
            // What is left: the entries of the submissions that created nothing (the gateway clears them with its batch).
            let left = try await store.unacceptedJobs(olderThan: .milliseconds(300), limit: 10)
            #expect(Set(left.map(\.id)) == Set(joiners) && left.allSatisfy { $0.record == nil })
        }
    }
}
