import GatewayProtocol
import Gearman
import LocalServers
import NIOCore
import Synchronization

/// Many idle watchers: one connection per job, each waiting for its `EVENT … DONE`.
extension BenchmarkStack {
    static let watchFunction = "bench.watch"

    struct WatchersResult {
        var rssBefore: Int
        /// One second after the last `WATCHING`, and once settled (the gateway trims malloc's free pages every 2 s).
        var rssJustAfter: Int
        var rssIdle: Int
        var completionSpan: Duration
        var lastDoneAfterLastCompletion: Duration
        var delivery: [Int64]
    }

    func watchers(count: Int, workerConcurrency: Int, progress: @Sendable (String) -> Void) async throws -> WatchersResult {
        let port = gatewayPort
        var ids: [GatewayJobID] = []
        for share in Self.shares(count, 4) {
            ids += try await Self.submitThroughGateway(try await connectGateway(port: port), function: Self.watchFunction, jobs: share, window: 256)
        }
        try await Task.sleep(for: .milliseconds(500))
        let rssBefore = try gatewayRSSBytes
        progress("  \(count) jobs queued; connecting \(count) watchers")

        let watching = Counter()
        let received = Instants()
        let failure = FirstFailure()
        let finished = Instants()
        func check() throws {
            if let message = failure.message { throw BenchmarkError(message) }
        }
        return try await withThrowingTaskGroup(of: Void.self) { group in
            // Waves, so the listen backlog never overflows (a dropped SYN costs a 1 s retransmit).
            let wave = 250
            for first in stride(from: 0, to: ids.count, by: wave) {
                for id in ids[first..<min(first + wave, ids.count)] {
                    group.addTask {
                        do {
                            try await connectGateway(port: port).executeThenClose { inbound, outbound in
                                var iterator = inbound.makeAsyncIterator()
                                try await outbound.write(GatewayRequests.line("WATCH \(id)"))
                                guard case .reply(.watching, _) = try await iterator.nextResponse("watching").response else {
                                    throw BenchmarkError("expected WATCHING")
                                }
                                watching.increment()
                                while true {
                                    let next = try await iterator.nextResponse("waiting for DONE")
                                    if case .event(.done, _) = next.response {
                                        received.record(id.rawValue, next.at)
                                        return
                                    }
                                }
                            }
                        } catch {
                            failure.record("watcher of \(id): \(error)")
                        }
                    }
                }
                try await eventually("\(min(first + wave, ids.count)) watchers", timeout: .seconds(60)) {
                    try check()
                    return watching.current >= min(first + wave, ids.count)
                }
            }
            // Right after the burst of WATCHes, then once the gateway gave back what the burst freed.
            try await Task.sleep(for: .seconds(1))
            let rssJustAfter = try gatewayRSSBytes
            try await Task.sleep(for: .seconds(4))
            let rssIdle = try gatewayRSSBytes
            progress("  all watching, gateway RSS \(rssJustAfter >> 20) MiB after 1 s, \(rssIdle >> 20) MiB after 5 s; running the jobs")

            try await withJobWorker(Self.watchFunction, concurrency: workerConcurrency, handler: { job, _ in
                finished.record(job.unique)
                return ByteBuffer(string: "ok")
            }) {
                try await eventually("every watcher's DONE", timeout: .seconds(120)) {
                    try check()
                    return received.count >= ids.count
                }
            }
            try await group.waitForAll()
            try check()

            let ends = finished.all
            let arrivals = received.all
            guard let firstEnd = ends.values.min(), let lastEnd = ends.values.max(), let lastArrival = arrivals.values.max() else {
                throw BenchmarkError("no job finished")
            }
            let delivery = arrivals.compactMap { id, at in ends[id].map { (at - $0).nanoseconds } }
            return WatchersResult(
                rssBefore: rssBefore,
                rssJustAfter: rssJustAfter,
                rssIdle: rssIdle,
                completionSpan: lastEnd - firstEnd,
                lastDoneAfterLastCompletion: lastArrival - lastEnd,
                delivery: delivery
            )
        }
    }
}

/// The first of many concurrent failures.
final class FirstFailure: Sendable {
    private let first = Mutex<String?>(nil)

    func record(_ message: String) { first.withLock { $0 = $0 ?? message } }
    var message: String? { first.withLock { $0 } }
}
