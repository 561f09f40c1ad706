import GatewayProtocol
import JobStore
import JobgateSupport
import LocalServers
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import Gateway

/// The batcher's work belongs to its `run()`: requests wait for it, batches grow while the backend is busy, and
/// once `run()` returned no batch of it runs and new requests are refused.
@Suite("Backend batcher", .timeLimit(.minutes(1)))
struct BackendBatcherTests {
    /// An operation that holds each batch until the test lets it go, and records the batches it saw.
    private final class HeldBackend: Sendable {
        private struct State {
            var batches: [[Int]] = []
            var isOpen = false
            var gate: [CheckedContinuation<Void, Never>] = []
            var finished = 0
        }

        private let state = Mutex(State())

        var batches: [[Int]] { state.withLock { $0.batches } }
        var finished: Int { state.withLock { $0.finished } }

        func operation(_ inputs: [Int], _ turn: BatchTurn) async -> [Result<Int, GatewayFailure>] {
            await withCheckedContinuation { continuation in
                let isOpen = state.withLock { state -> Bool in
                    state.batches.append(inputs)
                    if !state.isOpen { state.gate.append(continuation) }
                    return state.isOpen
                }
                if isOpen { continuation.resume() }
            }
            state.withLock { $0.finished += 1 }
            return inputs.map { .success($0 * 10) }
        }

        func open() {
            let held = state.withLock { state in
                state.isOpen = true
                defer { state.gate = [] }
                return state.gate
            }
            for continuation in held { continuation.resume() }
        }
    }

    private let loop = MultiThreadedEventLoopGroup.singleton.next()

    /// Requests made before `run()` starts are answered once it runs; what arrives while the only batch is held
    /// goes out as one batch after it, in order.
    @Test func batchesGrowWhileTheBackendIsBusy() async throws {
        let backend = HeldBackend()
        let batcher = BackendBatcher<Int, Int>(maximumConcurrentBatches: 1, operation: backend.operation)
        let first = batcher.enqueue(1, on: loop)
        let running = Task { await batcher.run() }
        try await eventually("the first batch to start") { backend.batches.count == 1 }
        let rest = (2...5).map { batcher.enqueue($0, on: loop) }
        backend.open()
        #expect(try await first.get() == 10)
        for (future, input) in zip(rest, 2...5) { #expect(try await future.get() == input * 10) }
        #expect(backend.batches == [[1], [2, 3, 4, 5]])
        running.cancel()
        await running.value
    }

    /// Cancelled with a batch in flight and a request queued behind it, `run()` answers both and returns only after
    /// its last batch ended; then a new request is refused with `BUSY` instead of waiting for ever.
    @Test func runReturnsAfterItsWork() async throws {
        let backend = HeldBackend()
        let batcher = BackendBatcher<Int, Int>(maximumConcurrentBatches: 1, operation: backend.operation)
        let returned = Atomic<Bool>(false)
        let running = Task {
            await batcher.run()
            returned.store(true, ordering: .sequentiallyConsistent)
        }
        let inFlight = batcher.enqueue(1, on: loop)
        try await eventually("the first batch to start") { backend.batches.count == 1 }
        let queued = batcher.enqueue(2, on: loop)
        running.cancel()
        try await Task.sleep(for: .milliseconds(200))
        let returnedWhileHeld = returned.load(ordering: .sequentiallyConsistent)
        #expect(!returnedWhileHeld, "run() returned while its batch was held")
        backend.open()
        await running.value
        #expect(backend.batches == [[1], [2]])
        #expect(backend.finished == 2)
        #expect(try await inFlight.get() == 10)
        #expect(try await queued.get() == 20)
        let refused = batcher.enqueue(3, on: loop)
        let error = await #expect(throws: GatewayFailure.self) { try await refused.get() }
        #expect(error?.code == .busy)
    }

    /// With executors, each batch runs on an event loop, the one of the drainer that took it: a request from a
    /// loop wakes the idle drainer of that loop, so a lone request's batch starts on its caller's thread.
    @Test func batchesRunOnTheCallersLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loops = Array(group.makeIterator())
        let ranOn = Mutex<[(input: Int, isOnLoop: Bool)]>([])
        let batcher = BackendBatcher<Int, Int>(maximumConcurrentBatches: 2) { inputs, _ in
            let expected = loops[inputs[0] % 2]
            ranOn.withLock { $0.append((inputs[0], expected.inEventLoop)) }
            return inputs.map { .success($0) }
        }
        let running = Task { await batcher.run(on: EventLoopTaskExecutor.all(of: group)) }
        for input in 0..<20 {
            try await eventually("both drainers to be idle") { batcher.idleDrainers == 2 }
            let loop = loops[input % 2]
            let answer = try await loop.flatSubmit { batcher.enqueue(input, on: loop) }.get()
            #expect(answer == input)
        }
        let runs = ranOn.withLock { $0 }
        #expect(runs.count == 20)
        let elsewhere = runs.filter { !$0.isOnLoop }.map(\.input)
        #expect(elsewhere.isEmpty, "these ran on another thread than their caller's loop")
        running.cancel()
        await running.value
        try await group.shutdownGracefully()
    }

    /// A submit batch takes its turn to create its records exactly when one of its jobs has a unique key.
    @Test func onlyBatchesWithAUniqueKeyCreateInTurn() {
        func job(_ unique: String?) -> RedisJobStore.NewJob {
            RedisJobStore.NewJob(id: JobID(rawValue: "j")!, function: "f", unique: unique)
        }
        #expect(!GatewayBackend.createsInTurn([job(nil), job(nil)]))
        #expect(GatewayBackend.createsInTurn([job(nil), job("u")]))
        #expect(GatewayBackend.createsInTurn([job("u")]))
    }

    /// Turns keep order only among the batches that take them: a batch that gives its turn up at once (a submit
    /// batch without a unique key) runs while an earlier one holds its turn, and a later batch that takes its turn
    /// still waits for that earlier one.
    @Test func aBatchThatGivesUpItsTurnDoesNotWait() async throws {
        let gate = HeldBackend()  // only its gate: held until `open()`
        let events = Mutex<[String]>([])
        let batcher = BackendBatcher<Int, Int>(maximumConcurrentBatches: 3) { inputs, turn in
            switch inputs[0] {
            case 2:
                turn.end()
                events.withLock { $0.append("2 ran") }
            default:
                await turn.begin()
                events.withLock { $0.append("\(inputs[0]) began") }
                if inputs[0] == 1 { _ = await gate.operation([], turn) }
                turn.end()
            }
            return inputs.map { .success($0) }
        }
        let running = Task { await batcher.run() }
        let first = batcher.enqueue(1, on: loop)
        try await eventually("the first batch to take its turn") { events.withLock { $0 } == ["1 began"] }
        #expect(try await batcher.enqueue(2, on: loop).get() == 2)
        let third = batcher.enqueue(3, on: loop)
        try await Task.sleep(for: .milliseconds(200))
        #expect(events.withLock { $0 } == ["1 began", "2 ran"], "the third batch took its turn before the first ended it")
        gate.open()
        #expect(try await first.get() == 1)
        #expect(try await third.get() == 3)
        #expect(events.withLock { $0 } == ["1 began", "2 ran", "3 began"])
        running.cancel()
        await running.value
    }
}
