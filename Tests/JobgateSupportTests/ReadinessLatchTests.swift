import JobgateSupport
import Testing

@Suite struct ReadinessLatchTests {
    private struct Refused: Error, Equatable {}

    /// Waiters from before the latch is ready are resumed with its value; those after get it at once.
    @Test func waitersBeforeAndAfter() async throws {
        let latch = ReadinessLatch<Int>()
        try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<3 { group.addTask { try await latch.wait() } }
            // Each early waiter registers before the latch is resolved (otherwise this only tests late waiters).
            while latch.waiting < 3 { await Task.yield() }
            #expect(!latch.isResolved)
            #expect(latch.resolve(.success(7)))
            var values: [Int] = []
            for try await value in group { values.append(value) }
            #expect(values == [7, 7, 7])
        }
        #expect(try await latch.wait() == 7)
        #expect(latch.isResolved)
    }

    /// A failure reaches every waiter, early and late; only the first outcome counts.
    @Test func failureReachesEveryWaiter() async throws {
        let latch = ReadinessLatch<Void>()
        let early = Task { try await latch.wait() }
        while latch.waiting < 1 { await Task.yield() }
        #expect(latch.resolve(.failure(Refused())))
        #expect(!latch.succeed())
        await #expect(throws: Refused.self) { try await early.value }
        await #expect(throws: Refused.self) { try await latch.wait() }
    }

    /// A cancelled waiter stops waiting (with `CancellationError`); the latch and its other waiters are unaffected.
    @Test func cancelledWaiterStops() async throws {
        let latch = ReadinessLatch<String>()
        let cancelled = Task { try await latch.wait() }
        let other = Task { try await latch.wait() }
        while latch.waiting < 2 { await Task.yield() }
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        #expect(latch.waiting == 1)
        latch.resolve(.success("up"))
        #expect(try await other.value == "up")
    }

    /// A task cancelled before it waits does not wait.
    @Test func alreadyCancelledDoesNotWait() async throws {
        let latch = ReadinessLatch<Void>()
        let task = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await latch.wait()
        }
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(latch.waiting == 0)
    }
}
