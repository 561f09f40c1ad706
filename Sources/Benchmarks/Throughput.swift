import Gearman
import GatewayProtocol
import NIOCore
import NIOSSL
import Synchronization

/// The submit and end-to-end comparisons: N connections, each keeping a window of jobs outstanding.
extension BenchmarkStack {
    static let payload = ByteBuffer(string: "0123456789abcdef")

    /// Splits `jobs` over `connections` as evenly as possible.
    static func shares(_ jobs: Int, _ connections: Int) -> [Int] {
        (0..<connections).map { jobs / connections + ($0 < jobs % connections ? 1 : 0) }.filter { $0 > 0 }
    }

    /// Jobs per second of `body` run once per share, all at once; connecting happens before the clock starts.
    static func rate<Connection: Sendable>(
        jobs: Int,
        connections: Int,
        connect: @Sendable () async throws -> Connection,
        body: @escaping @Sendable (Connection, Int) async throws -> Void
    ) async throws -> Double {
        let shares = shares(jobs, connections)
        var opened: [Connection] = []
        for _ in shares { opened.append(try await connect()) }
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (connection, share) in zip(opened, shares) {
                group.addTask { try await body(connection, share) }
            }
            try await group.waitForAll()
        }
        return Double(jobs) / (ContinuousClock.now - start).seconds
    }

    // MARK: Submit

    /// Background submits through the gateway: `SUBMIT` pipelined, refilled by half a window at a time.
    /// `port` and `tls`: another gateway than the stack's (section 10 measures one with TLS).
    func gatewaySubmitRate(function: String, jobs: Int, connections: Int, window: Int, port: Int? = nil, tls: NIOSSLContext? = nil) async throws -> Double {
        let port = port ?? gatewayPort
        return try await Self.rate(jobs: jobs, connections: connections, connect: { try await connectGateway(port: port, tls: tls) }) { channel, share in
            _ = try await Self.submitThroughGateway(channel, function: function, jobs: share, window: window)
        }
    }

    /// Submits `jobs` on one connection with `window` outstanding; returns the ids in order.
    static func submitThroughGateway(_ channel: GatewayChannel, function: String, jobs: Int, window: Int) async throws -> [GatewayJobID] {
        try await channel.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            var ids: [GatewayJobID] = []
            ids.reserveCapacity(jobs)
            var sent = 0
            let refill = max(1, window / 2)
            func send(_ count: Int) async throws {
                var buffer = ByteBuffer()
                for _ in 0..<count { GatewayRequests.submit(function, payload: payload, into: &buffer) }
                sent += count
                try await outbound.write(buffer)
            }
            try await send(min(window, jobs))
            while ids.count < jobs {
                let reply = try await iterator.nextResponse("submitting")
                guard case .reply(.created(let id), _) = reply.response else {
                    throw BenchmarkError("expected CREATED, got \(reply.response)")
                }
                ids.append(id)
                if sent < jobs && sent - ids.count <= window - refill { try await send(min(refill, jobs - sent)) }
            }
            return ids
        }
    }

    /// Background submits straight to gearmand: per connection two tasks alternate batches of half a window
    /// (`submitBackground([…])`: one write, one hop each), so about a window is outstanding, as on the gateway side.
    func directSubmitRate(function: String, jobs: Int, connections: Int, window: Int, round: Int) async throws -> Double {
        let server = gearman
        return try await Self.rate(jobs: jobs, connections: connections, connect: { try await GearmanConnection.connect(to: server) }) { connection, share in
            let batch = max(1, window / 2)
            let claimed = Counter()
            let prefix = "bench-\(round)-\(ObjectIdentifier(connection).hashValue & 0xffffff)-"
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<2 {
                    group.addTask {
                        while true {
                            let first = claimed.add(batch) - batch
                            guard first < share else { return }
                            let jobs = (first..<min(first + batch, share)).map {
                                GearmanJobRequest(function: function, unique: prefix + String($0), payload: Self.payload)
                            }
                            for result in await connection.submitBackground(jobs) { _ = try result.get() }
                        }
                    }
                }
                try await group.waitForAll()
            }
            await connection.close()
        }
    }

    // MARK: End to end

    /// Submit, then watch: each connection keeps `window` jobs in flight, each ending with `EVENT … DONE`.
    func gatewayEndToEndRate(function: String, jobs: Int, connections: Int, window: Int) async throws -> Double {
        let port = gatewayPort
        return try await Self.rate(jobs: jobs, connections: connections, connect: { try await connectGateway(port: port) }) { channel, share in
            try await channel.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                var sent = 0
                var done = 0
                var buffer = ByteBuffer()
                for _ in 0..<min(window, share) { GatewayRequests.submit(function, payload: Self.payload, into: &buffer) }
                sent = min(window, share)
                try await outbound.write(buffer)
                while done < share {
                    let next = try await iterator.nextResponse("running jobs end to end")
                    switch next.response {
                    case .reply(.created(let id), _):
                        try await outbound.write(GatewayRequests.line("WATCH \(id)"))
                    case .reply(.watching, _), .event(.progress, _):
                        continue
                    case .event(.done, _):
                        done += 1
                        if sent < share {
                            var buffer = ByteBuffer()
                            GatewayRequests.submit(function, payload: Self.payload, into: &buffer)
                            sent += 1
                            try await outbound.write(buffer)
                        }
                    default:
                        throw BenchmarkError("unexpected \(next.response) while running jobs end to end")
                    }
                }
            }
        }
    }

    /// Foreground jobs straight to gearmand: per connection `window` tasks, each submitting and awaiting the result.
    func directEndToEndRate(function: String, jobs: Int, connections: Int, window: Int, round: Int) async throws -> Double {
        let server = gearman
        return try await Self.rate(jobs: jobs, connections: connections, connect: { try await GearmanConnection.connect(to: server) }) { connection, share in
            let claimed = Counter()
            let prefix = "fg-\(round)-\(ObjectIdentifier(connection).hashValue & 0xffffff)-"
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<min(window, share) {
                    group.addTask {
                        while true {
                            let number = claimed.increment() - 1
                            guard number < share else { return }
                            let job = try await connection.submitForeground(
                                GearmanJobRequest(function: function, unique: prefix + String(number), payload: Self.payload)
                            )
                            _ = try await job.result()
                        }
                    }
                }
                try await group.waitForAll()
            }
            await connection.close()
        }
    }
}
