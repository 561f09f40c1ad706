import Foundation
import LocalServers
import Testing

/// `--redis-sentinel`, `--redis-master` and `--redis-replicas-ack`, from the command line, the environment and a file,
/// for `jobgate serve` and `jobgate worker`.
@Suite("Sentinel options")
struct SentinelOptionsTests {
    /// `--check-config` shows the sentinels, the primary's name and the replicas to wait for.
    @Test func serveTakesTheOptions() async throws {
        let run = try await runProgram(
            jobgateExecutable(),
            ["serve", "--redis-sentinel", "127.0.0.1:26379, 127.0.0.1:26380", "--redis-master", "orders", "--redis-replicas-ack", "1", "--check-config"],
            timeout: .seconds(20)
        )
        #expect(run.status == 0, "\(run.errors)")
        for line in ["redis-sentinel = 127.0.0.1:26379,127.0.0.1:26380", "redis-master = orders", "redis-replicas-ack = 1", "redis-replicas-ack-timeout = 1000"] {
            #expect(run.outputText.contains(line + "\n"), "\(line) in:\n\(run.outputText)")
        }
    }

    /// A sentinel list that does not parse stops the start (78), naming where it came from.
    @Test func aBadSentinelListIsRefused() async throws {
        let run = try await runProgram(
            jobgateExecutable(), ["serve", "--check-config"], environment: ["JOBGATE_REDIS_SENTINEL": "127.0.0.1:26379,sentinel-without-port"], timeout: .seconds(20)
        )
        #expect(run.status == 78)
        #expect(run.errors.contains("JOBGATE_REDIS_SENTINEL: expected host:port,…"), "\(run.errors)")
    }

    /// The worker reads the same names from its config file.
    @Test func workerTakesThemFromAFile() async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-worker-\(UUID().uuidString).conf")
        try "function = f\nredis-sentinel = 127.0.0.1:26379\nredis-master = orders\nredis-replicas-ack = 2\n".write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let run = try await runProgram(jobgateExecutable(), ["worker", "--config", file.path, "--check-config", "--", "cat"], timeout: .seconds(20))
        #expect(run.status == 0, "\(run.errors)")
        for line in ["redis-sentinel = 127.0.0.1:26379", "redis-master = orders", "redis-replicas-ack = 2"] {
            #expect(run.outputText.contains(line + "\n"), "\(line) in:\n\(run.outputText)")
        }
    }
}
