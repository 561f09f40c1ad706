import Foundation
import GatewayProtocol
import LocalServers
import Testing

/// `jobgate credentials hash`, `jobgate serve --credentials` (re-read on SIGHUP) and the client's `--user`, as built.
@Suite("Credentials commands", .timeLimit(.minutes(3)))
struct CredentialsCommandTests {
    static func hashLine(_ secret: String, _ arguments: [String]) async throws -> String {
        let run = try await runProgram(
            jobgateExecutable(), ["credentials", "hash"] + arguments + ["--rounds", "210000"], input: Array("\(secret)\n".utf8), timeout: .seconds(30)
        )
        #expect(run.status == 0, "\(run.errors)")
        return run.outputText
    }

    static func client(_ port: Int, _ arguments: [String], user: String, secret: String) async throws -> ProgramRun {
        try await runProgram(
            jobgateExecutable(), arguments + ["--gateway", "127.0.0.1:\(port)", "--user", user], environment: ["JOBGATE_SECRET": secret],
            timeout: .seconds(30)
        )
    }

    /// The printed line is accepted by `serve --credentials`; the client authenticates by name (a read it may do:
    /// exit 5 for an unknown id), is refused what its scope lacks (exit 7, NOPERM), and a wrong secret is exit 6.
    /// After the file gains `submit` and SIGHUP, the same credential submits.
    @Test func hashServeAndReload() async throws {
        let line = try await Self.hashLine("pw", ["svc", "read=rev*"])
        #expect(line.hasPrefix("svc pbkdf2-sha256$210000$") && line.hasSuffix(" read=rev*\n"), "\(line)")
        let file = try TemporaryFile("# test credentials\n" + line)
        try await withServeProcess(arguments: ["--credentials", file.path]) { gateway, port in
            let unissued = String(repeating: "a", count: 39)
            var run = try await Self.client(port, ["status", unissued], user: "svc", secret: "pw")
            #expect(run.status == 5, "\(run.errors)")
            run = try await Self.client(port, ["submit", "reverse", "--data", "x"], user: "svc", secret: "pw")
            #expect(run.status == 7 && run.errors.contains("NOPERM"), "\(run.status) \(run.errors)")
            run = try await Self.client(port, ["status", unissued], user: "svc", secret: "wrong")
            #expect(run.status == 6 && run.errors.contains("DENIED"), "\(run.status) \(run.errors)")

            try file.write(try await Self.hashLine("pw2", ["svc", "read=rev*", "submit=reverse"]))
            gateway.signal(SIGHUP)
            try await eventually("the reload's log line") { gateway.log.contains("configuration reloaded") }
            let reloadLine = try #require(gateway.log.split(separator: "\n").first { $0.contains("configuration reloaded") })
            #expect(reloadLine.contains("config.changed=credentials"), "\(reloadLine)")
            run = try await Self.client(port, ["submit", "reverse", "--data", "x"], user: "svc", secret: "pw2")
            #expect(run.status == 0 && GatewayJobID(rawValue: run.outputText.trimmingCharacters(in: .newlines)) != nil, "\(run.errors)")
        }
    }

    /// A mistake in the credentials file stops the start with exit 78, naming the file and line.
    @Test func badFileStopsTheStart() async throws {
        let file = try TemporaryFile("svc not-a-hash read=*\n")
        let run = try await runProgram(jobgateExecutable(), ["serve", "--credentials", file.path, "--check-config"], timeout: .seconds(10))
        #expect(run.status == 78 && run.errors.contains("\(file.path):1: not a secret hash"), "\(run.errors)")
    }
}
