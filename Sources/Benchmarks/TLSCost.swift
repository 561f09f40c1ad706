import Foundation
import GatewayProtocol
import Gearman
import LocalServers
import NIOCore
import NIOSSL

/// Section 10, what TLS costs: a second `jobgate serve` with TLS on the same gearmand and Redis, and the submit rate
/// and the push latency measured through it and through the plain gateway in the same run, as ratios.
extension BenchmarkStack {
    struct TLSCostMeasured: Sendable {
        var submitPlain: [Double]
        var submitTLS: [Double]
        var pushPlain: [Int64]
        var pushTLS: [Int64]
    }

    func tlsCost(jobs: Int, rounds: Int, connections: Int, window: Int, samples: Int) async throws -> TLSCostMeasured {
        let certificates = try await TestCertificates.make(name: "jobgate bench CA")
        defer { certificates.remove() }
        let certificate = try await certificates.issue("gateway")
        var client = TLSConfiguration.makeClientConfiguration()
        client.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(certificates.caFile))
        let tls = try NIOSSLContext(configuration: client)

        let port = try freeLoopbackPort()
        let gateway = try LocalProcess(
            executable,
            ["serve", "--listen", "127.0.0.1:\(port)", "--log-level", "warning", "--gearman", gearman.description, "--redis", "\(redis.host):\(redis.port)",
             "--max-connections", "30000", "--tls-cert", certificate.certificateFile, "--tls-key", certificate.keyFile]
        )
        defer { gateway.stop() }
        try await eventually("the TLS gateway to answer PING on port \(port)", timeout: .seconds(30)) {
            if gateway.exitStatus != nil { throw BenchmarkError("jobgate serve --tls-cert exited at start:\n\(gateway.log)") }
            return (try? await pingGateway(port: port, tls: tls)) == true
        }

        let submit = try await BenchmarkRunner.compare(rounds: rounds, warmUp: min(500, jobs), jobs: jobs) { _, jobs in
            try await self.gatewaySubmitRate(function: "bench.submit.tls", jobs: jobs, connections: connections, window: window, port: port, tls: tls)
        } direct: { _, jobs in
            try await self.gatewaySubmitRate(function: "bench.submit.plain", jobs: jobs, connections: connections, window: window)
        }

        let board = ReleaseBoard()
        let instants = Instants()
        let (pushPlain, pushTLS) = try await withJobWorker(Self.latencyFunction, concurrency: 4, handler: { job, _ in
            await board.wait(job.unique)
            instants.record(job.unique)
            return ByteBuffer(string: "ok")
        }) {
            // Alternating halves, so that neither side has the machine's quieter moments to itself.
            var plain: [Int64] = []
            var secured: [Int64] = []
            for half in [samples / 2, samples - samples / 2] {
                plain += try await pushLatencies(samples: half, board: board, instants: instants, port: gatewayPort)
                secured += try await pushLatencies(samples: half, board: board, instants: instants, port: port, tls: tls)
            }
            return (plain, secured)
        }
        return TLSCostMeasured(submitPlain: submit.directRounds, submitTLS: submit.gatewayRounds, pushPlain: pushPlain, pushTLS: pushTLS)
    }
}

/// Whether the gateway on `port` answers `PING` (over TLS with `tls`).
private func pingGateway(port: Int, tls: NIOSSLContext?) async throws -> Bool {
    try await connectGateway(port: port, tls: tls).executeThenClose { inbound, outbound in
        var iterator = inbound.makeAsyncIterator()
        try await outbound.write(GatewayRequests.line("PING"))
        return try await iterator.nextResponse("pinging").response == .reply(.pong, tag: nil)
    }
}

extension BenchmarkReport {
    /// The submit rate and the push latency through a TLS gateway beside the plain one, in the same run.
    public struct TLSCost: Sendable, Codable {
        public var what: String
        public var submitPlainJobsPerSecond: Double
        public var submitTLSJobsPerSecond: Double
        public var submitPlainRounds: [Double]
        public var submitTLSRounds: [Double]
        /// TLS ÷ plain jobs per second.
        public var submitRatio: Double
        public var pushPlain: Distribution
        public var pushTLS: Distribution
        /// TLS ÷ plain, mean push latency.
        public var pushMeanRatio: Double

        init(what: String, _ measured: BenchmarkStack.TLSCostMeasured) {
            self.what = what
            submitPlainRounds = measured.submitPlain
            submitTLSRounds = measured.submitTLS
            submitPlainJobsPerSecond = median(measured.submitPlain)
            submitTLSJobsPerSecond = median(measured.submitTLS)
            submitRatio = submitTLSJobsPerSecond / submitPlainJobsPerSecond
            pushPlain = Distribution(nanoseconds: measured.pushPlain)
            pushTLS = Distribution(nanoseconds: measured.pushTLS)
            pushMeanRatio = pushTLS.meanMicroseconds / pushPlain.meanMicroseconds
        }

        var tableLines: [String] {
            func us(_ value: Double) -> String { String(format: "%9.0f µs", value) }
            func row(_ name: String, _ d: Distribution) -> String {
                "   \(name.padding(toLength: 22, withPad: " ", startingAt: 0))\(String(format: "%7d", d.samples)) \(us(d.meanMicroseconds)) \(us(d.p50Microseconds)) \(us(d.p99Microseconds)) \(us(d.maxMicroseconds))"
            }
            return [
                "",
                "10. TLS: \(what)",
                "   submit plain \(String(format: "%10.0f", submitPlainJobsPerSecond)) jobs/s   rounds: \(submitPlainRounds.map { String(format: "%.0f", $0) }.joined(separator: ", "))",
                "   submit TLS   \(String(format: "%10.0f", submitTLSJobsPerSecond)) jobs/s   rounds: \(submitTLSRounds.map { String(format: "%.0f", $0) }.joined(separator: ", "))",
                "   TLS ÷ plain submit rate: \(String(format: "%.2f", submitRatio))×",
                "   \("".padding(toLength: 22, withPad: " ", startingAt: 0))samples         mean          p50          p99          max",
                row("push plain", pushPlain),
                row("push TLS", pushTLS),
                "   TLS ÷ plain mean push latency: \(String(format: "%.2f", pushMeanRatio))×",
            ]
        }
    }
}
