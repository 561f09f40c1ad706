import GatewayProtocol
import Gearman
import NIOCore
import NIOSSL
import Synchronization

/// Push latency and the polling it replaces. A held handler of an in-process `JobWorker` returns when the bench
/// releases its job and records that instant: the moment the worker starts writing the outcome to Redis. The clock
/// stops when the client's event loop has decoded `EVENT … DONE` (or, polling, the `STATUS … done` reply).
extension BenchmarkStack {
    static let latencyFunction = "bench.latency"

    /// Runs the latency measurements with one worker whose handlers wait to be released.
    func latencies(samples: Int, polls: [(interval: Duration, samples: Int)]) async throws -> (push: [Int64], polling: [[Int64]]) {
        let board = ReleaseBoard()
        let instants = Instants()
        let concurrency = (polls.map(\.samples).max() ?? 0) + 4
        return try await withJobWorker(Self.latencyFunction, concurrency: concurrency, handler: { job, _ in
            await board.wait(job.unique)
            instants.record(job.unique)
            return ByteBuffer(string: "ok")
        }) {
            let push = try await pushLatencies(samples: samples, board: board, instants: instants)
            var polling: [[Int64]] = []
            for poll in polls {
                polling.append(try await pollingDelays(interval: poll.interval, samples: poll.samples, board: board, instants: instants))
            }
            return (push, polling)
        }
    }

    /// One job at a time: submit, watch, release, read `EVENT … DONE`. The first few samples warm up and are dropped.
    /// `port` and `tls`: another gateway than the stack's (section 10 measures one with TLS).
    func pushLatencies(samples: Int, board: ReleaseBoard, instants: Instants, port: Int? = nil, tls: NIOSSLContext? = nil) async throws -> [Int64] {
        let warmUp = min(20, samples)
        return try await connectGateway(port: port ?? gatewayPort, tls: tls).executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            var latencies: [Int64] = []
            latencies.reserveCapacity(samples)
            for sample in 0..<(warmUp + samples) {
                var buffer = ByteBuffer()
                GatewayRequests.submit(Self.latencyFunction, payload: Self.payload, into: &buffer)
                try await outbound.write(buffer)
                guard case .reply(.created(let id), _) = try await iterator.nextResponse("submitting").response else {
                    throw BenchmarkError("expected CREATED")
                }
                try await outbound.write(GatewayRequests.line("WATCH \(id)"))
                guard case .reply(.watching, _) = try await iterator.nextResponse("watching").response else {
                    throw BenchmarkError("expected WATCHING")
                }
                board.release(id.rawValue)
                while true {
                    let next = try await iterator.nextResponse("waiting for DONE")
                    guard case .event(let event, _) = next.response, event.jobID == id else { continue }
                    guard case .done = event else { throw BenchmarkError("expected EVENT DONE, got \(event)") }
                    guard let start = instants[id.rawValue] else { throw BenchmarkError("DONE before the worker finished \(id)") }
                    if sample >= warmUp { latencies.append((next.at - start).nanoseconds) }
                    break
                }
            }
            return latencies
        }
    }

    /// `samples` jobs at once, each with its own poller sending `STATUS` every `interval` from a random phase;
    /// each job is released at a random moment within one to two intervals. Returns each detection delay.
    private func pollingDelays(interval: Duration, samples: Int, board: ReleaseBoard, instants: Instants) async throws -> [Int64] {
        let port = gatewayPort
        let ids = try await Self.submitThroughGateway(
            try await connectGateway(port: port), function: Self.latencyFunction, jobs: samples, window: samples
        )
        var pollers: [GatewayChannel] = []
        for _ in ids { pollers.append(try await connectGateway(port: port)) }
        let start = ContinuousClock.now
        return try await withThrowingTaskGroup(of: Int64?.self) { group in
            for id in ids {
                group.addTask {
                    try await Task.sleep(until: start + interval + interval * Double.random(in: 0..<1), clock: .continuous)
                    board.release(id.rawValue)
                    return nil
                }
            }
            for (id, poller) in zip(ids, pollers) {
                group.addTask {
                    try await poller.executeThenClose { inbound, outbound in
                        var iterator = inbound.makeAsyncIterator()
                        var next = start + interval * Double.random(in: 0..<1)
                        while true {
                            try await Task.sleep(until: next, clock: .continuous)
                            try await outbound.write(GatewayRequests.line("STATUS \(id)"))
                            let reply = try await iterator.nextResponse("polling")
                            guard case .reply(.status(_, let status), _) = reply.response else {
                                throw BenchmarkError("expected STATUS, got \(reply.response)")
                            }
                            if status.state == .done {
                                guard let finished = instants[id.rawValue] else { throw BenchmarkError("done before the worker finished \(id)") }
                                return (reply.at - finished).nanoseconds
                            }
                            next += interval
                        }
                    }
                }
            }
            var delays: [Int64] = []
            for try await delay in group { if let delay { delays.append(delay) } }
            return delays
        }
    }
}
