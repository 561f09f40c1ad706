import Foundation
import LocalServers

/// `jobgate bench --cluster`: the tested scale-out topology (`LocalJobgateCluster`: a Redis primary with two replicas
/// and three sentinels, two gearmand, two gateways) measured on itself, each comparison in the same run on the same
/// servers: background submits through one gateway against the same connections spread over two, and through a
/// gateway with `--redis-replicas-ack 1` against one with 0 (the cost of `WAIT` per created job). Rounds alternate
/// which side goes first; the medians are reported.
public struct ClusterBenchmark: Sendable {
    public var jobs: Int
    public var connections: Int
    public var rounds: Int
    /// Submits each connection keeps outstanding.
    public var window: Int

    public init(jobs: Int = 20_000, connections: Int = 16, rounds: Int = 3, window: Int = 64) {
        self.jobs = jobs
        self.connections = connections
        self.rounds = rounds
        self.window = window
    }

    public struct Report: Sendable, Codable {
        public var oneGateway: Double
        public var twoGateways: Double
        public var replicasAckOne: Double
        public var replicasAckNone: Double

        public var table: String {
            func rate(_ value: Double) -> String { String(format: "%8.0f jobs/s", value) }
            return """
                cluster: background SUBMIT throughput (median of rounds)
                  one gateway                       \(rate(oneGateway))
                  two gateways, same connections    \(rate(twoGateways))   ×\(String(format: "%.2f", twoGateways / oneGateway))
                  --redis-replicas-ack 1            \(rate(replicasAckOne))
                  --redis-replicas-ack 0            \(rate(replicasAckNone))   WAIT costs \(String(format: "%.0f", (1 - replicasAckOne / replicasAckNone) * 100)) % of the rate
                """
        }
    }

    public func run(progress: @escaping @Sendable (String) -> Void) async throws -> Report {
        progress("cluster: starting a primary, 2 replicas, 3 sentinels, 2 gearmand and 2 gateways (--redis-replicas-ack 1)")
        let cluster = try await LocalJobgateCluster.start(replicasAck: 1, workerFunctions: [])
        defer { cluster.stop() }
        let unacknowledged = try await cluster.startGateway(replicasAck: 0)
        let (first, second) = (cluster.gatewayPorts[0], cluster.gatewayPorts[1])

        var one: [Double] = []
        var two: [Double] = []
        var ackOne: [Double] = []
        var ackNone: [Double] = []
        for round in 0..<rounds {
            progress("cluster round \(round + 1)/\(rounds): \(jobs) jobs per side, \(connections) connections")
            // Which side goes first alternates, so that a drift of the machine does not favour one.
            if round % 2 == 0 {
                one.append(try await rate(ports: [first]))
                two.append(try await rate(ports: [first, second]))
                ackOne.append(try await rate(ports: [second]))
                ackNone.append(try await rate(ports: [unacknowledged]))
            } else {
                two.append(try await rate(ports: [first, second]))
                one.append(try await rate(ports: [first]))
                ackNone.append(try await rate(ports: [unacknowledged]))
                ackOne.append(try await rate(ports: [second]))
            }
        }
        return Report(oneGateway: median(one), twoGateways: median(two), replicasAckOne: median(ackOne), replicasAckNone: median(ackNone))
    }

    /// Jobs per second of `jobs` background submits over `connections` connections spread round robin over `ports`.
    private func rate(ports: [Int]) async throws -> Double {
        let next = Counter()
        let (window, function) = (window, "bench.cluster")
        return try await BenchmarkStack.rate(jobs: jobs, connections: connections, connect: {
            try await connectGateway(port: ports[next.increment() % ports.count])
        }) { channel, share in
            _ = try await BenchmarkStack.submitThroughGateway(channel, function: function, jobs: share, window: window)
        }
    }
}
