import Foundation
import Gateway
import GatewayProtocol
import LocalServers
import NIOCore
import Testing

/// `jobgate submit`, `status` and `watch`: the built executable against a real stack.
@Suite("jobgate client commands", .timeLimit(.minutes(3)))
struct ClientCommandTests {
    /// `--watch` shows the WATCHING state, then each progress (as lines when piped, as a bar when asked), then writes
    /// the result to stdout and exits 0.
    @Test(arguments: ["lines", "bar"])
    func submitAndWatchShowProgress(mode: String) async throws {
        try await withGatewayStack { stack in
            let watched = Gate()
            let proceed = Gate()
            try await withTestWorker(stack, [
                "reverse": { payload, progress in
                    await watched.wait()
                    try await progress(1, 2, "halfway")
                    await proceed.wait()
                    return ByteBuffer(string: String(String(buffer: payload).reversed()))
                }
            ]) {
                let process = try LocalProcess(
                    jobgateExecutable(),
                    ["submit", "reverse", "--data", "hello world", "--watch", "--progress", mode, "--gateway", "127.0.0.1:\(stack.port)"]
                )
                defer { process.stop() }
                if mode == "lines" {
                    try await eventually("the watch to start") { process.log.contains(" created\n") && process.log.contains(" 0/0\n") }
                } else {
                    try await eventually("the bar to show") { process.log.contains("] queued") || process.log.contains("] running") }
                }
                watched.open()
                let progressShown = mode == "lines" ? " progress 1/2 halfway\n" : "\r\u{1B}[K[████████████░░░░░░░░░░░░]  50% 1/2 halfway"
                try await eventually("the progress to show") { process.log.contains(progressShown) }
                proceed.open()
                #expect(try await process.waitForExit() == 0, "exit 0; log: \(process.log)")
                #expect(process.log.contains("dlrow olleh"))
                if mode == "lines" { #expect(process.log.contains(" done\ndlrow olleh")) }
            }
        }
    }

    /// `jobgate subscribe --from start` prints each ended job with its cursor; `--from <cursor>` prints what came after.
    @Test func subscribeFromACursor() async throws {
        try await withGatewayStack { stack in
            try await withTestWorker(stack, ["upper": { payload, _ in ByteBuffer(string: String(buffer: payload).uppercased()) }]) {
                var ids: [String] = []
                for data in ["a", "bc"] {
                    let submitted = try await jobgate(stack, ["submit", "upper", "--data", data, "--wait", "10"])
                    #expect(submitted.status == 0, "\(submitted.errors)")
                    ids.append(try await jobgate(stack, ["submit", "upper", "--data", data + "!"]).outputText.trimmingCharacters(in: .newlines))
                }
                let client = try await stack.connect()
                for id in ids { _ = try await client.request("WAIT \(id) 10000\n") }
                let all = try await jobgate(stack, ["subscribe", "upper", "--from", "start", "--count", "4", "--results"])
                #expect(all.status == 0, "\(all.errors)")
                let lines = all.outputText.split(separator: "\n").map(String.init)
                #expect(lines.count == 8, "\(all.outputText)")
                let first = try #require(lines.first?.split(separator: " ").map(String.init))
                #expect(first.count == 4 && GatewayLogCursor(first[0]) != nil && first[2] == "done" && first[3] == "1" && lines[1] == "A")
                let rest = try await jobgate(stack, ["subscribe", "upper", "--from", first[0], "--count", "3"])
                #expect(rest.outputText.split(separator: "\n").map(String.init) == [lines[2], lines[4], lines[6]])
            }
        }
    }

    /// `jobgate watch` of a job submitted earlier, and of a job already done (its outcome at once).
    @Test func watchAnEarlierJob() async throws {
        try await withGatewayStack { stack in
            let proceed = Gate()
            try await withTestWorker(stack, [
                "upper": { payload, _ in
                    await proceed.wait()
                    return ByteBuffer(string: String(buffer: payload).uppercased())
                }
            ]) {
                let submitted = try await jobgate(stack, ["submit", "upper", "--data", "abc"])
                #expect(submitted.status == 0, "\(submitted.errors)")
                let id = submitted.outputText.trimmingCharacters(in: .newlines)
                #expect(GatewayJobID(rawValue: id) != nil, "submit prints the id: \(submitted.outputText)")
                let status = try await jobgate(stack, ["status", id])
                #expect(status.status == 0)
                #expect(["queued 0 0\n", "running 0 0\n"].contains(status.outputText))
                async let watching = jobgate(stack, ["watch", id])
                try await Task.sleep(for: .milliseconds(200))
                proceed.open()
                let watched = try await watching
                #expect(watched.status == 0 && watched.outputText == "ABC", "\(watched.errors)")
                let again = try await jobgate(stack, ["watch", id])
                #expect(again.status == 0 && again.outputText == "ABC")
                let done = try await jobgate(stack, ["status", id])
                #expect(done.status == 0 && done.outputText == "done 0 0\n")
            }
        }
    }

    /// The payload from stdin or a file and the result on stdout, byte for byte: NUL, CR, LF, invalid UTF-8.
    @Test func binaryPayloadsAndResultsStayIntact() async throws {
        try await withGatewayStack { stack in
            try await withTestWorker(stack, ["echo": { payload, _ in payload }]) {
                let bytes: [UInt8] = (0...255).map(UInt8.init) + [13, 10, 10, 0, 0xff, 0xfe] + [UInt8](repeating: 0x80, count: 70_000)
                let fromStdin = try await jobgate(stack, ["submit", "echo", "--wait", "10"], input: bytes)
                #expect(fromStdin.status == 0, "\(fromStdin.errors)")
                #expect(fromStdin.output == bytes, "\(fromStdin.output.count) of \(bytes.count) bytes")

                let file = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-payload-\(UUID().uuidString)")
                try Data(bytes.reversed()).write(to: file)
                defer { try? FileManager.default.removeItem(at: file) }
                let fromFile = try await jobgate(stack, ["submit", "echo", "--file", file.path, "--watch"])
                #expect(fromFile.status == 0, "\(fromFile.errors)")
                #expect(fromFile.output == bytes.reversed())

                let empty = try await jobgate(stack, ["submit", "echo", "--wait", "10"], input: [])
                #expect(empty.status == 0 && empty.output.isEmpty)
            }
        }
    }

    /// Each way a job can end badly has its own exit status, with the reason on stderr.
    @Test func failuresHaveTheirExitCodes() async throws {
        try await withGatewayStack({ $0.resultTTL = 1 }) { stack in
            let release = Gate()
            try await withTestWorker(stack, [
                "fail": { _, _ in throw ClientTestError.broken },
                "slow": { payload, _ in
                    await release.wait()
                    return payload
                },
                "echo": { payload, _ in payload },
            ]) {
                let failed = try await jobgate(stack, ["submit", "fail", "--data", "x", "--wait", "10"])
                #expect(failed.status == 1 && failed.output.isEmpty)
                #expect(failed.errors.contains("failed: broken"), "\(failed.errors)")
                let watchedFailure = try await jobgate(stack, ["submit", "fail", "--data", "x", "--watch"])
                #expect(watchedFailure.status == 1 && watchedFailure.errors.contains("broken"))

                let timedOut = try await jobgate(stack, ["submit", "slow", "--data", "x", "--wait", "0.3"])
                #expect(timedOut.status == 4, "\(timedOut.errors)")
                #expect(timedOut.errors.contains("when --wait passed"))
                release.open()  // the worker drains its jobs before it stops

                let notFound = try await jobgate(stack, ["status", String(repeating: "a", count: 39)])
                #expect(notFound.status == 5, "\(notFound.errors)")
                #expect(notFound.errors.contains("NOT_FOUND"))
                let notAnID = try await jobgate(stack, ["watch", "not an id"])
                #expect(notAnID.status == 64)
                for usage in [["submit", "echo", "--data", "x", "--file", "/dev/null"], ["submit", "echo", "--watch", "--wait", "1"],
                              ["submit", "bad function", "--data", "x"], ["submit", "echo", "--unique", String(repeating: "u", count: 64)]] {
                    #expect(try await jobgate(stack, usage).status == 64, "\(usage)")
                }
                let badGateway = try await runProgram(jobgateExecutable(), ["status", String(repeating: "a", count: 39), "--gateway", "nowhere"])
                #expect(badGateway.status == 64)

                let submitted = try await jobgate(stack, ["submit", "echo", "--data", "short-lived"])
                let id = submitted.outputText.trimmingCharacters(in: .newlines)
                let done = try await jobgate(stack, ["watch", id])
                #expect(done.status == 0 && done.outputText == "short-lived")
                try await eventually("the record to expire", timeout: .seconds(10)) {
                    try await jobgate(stack, ["status", id]).status == 3
                }
                let expired = try await jobgate(stack, ["watch", id])
                #expect(expired.status == 3 && expired.errors.contains("expired"))
            }
            let unreachable = try await runProgram(jobgateExecutable(), ["status", String(repeating: "a", count: 39), "--gateway", "127.0.0.1:1"])
            #expect(unreachable.status == 6 && unreachable.errors.contains("cannot connect"))
        }
    }

    /// A job gearmand forgot (restarted without a persistent queue) ends as lost: exit 2.
    @Test func lostJobsExitWithTheirCode() async throws {
        try await withGatewayStack({ $0.lostJobGrace = .milliseconds(500) }) { stack in
            let process = try LocalProcess(
                jobgateExecutable(),
                ["submit", "nobody-runs-this", "--data", "x", "--watch", "--progress", "lines", "--gateway", "127.0.0.1:\(stack.port)"]
            )
            defer { process.stop() }
            try await eventually("the watch to start") { process.log.contains(" queued 0/0\n") }
            try await stack.gearmand.restart()
            #expect(try await process.waitForExit() == 2 << 8, "\(process.log)")
            #expect(process.log.contains("failed: lost"))
        }
    }

    /// With `--secrets` on the gateway: refused without a secret, accepted with `--secret` or `JOBGATE_SECRET`.
    @Test func authentication() async throws {
        try await withGatewayStack({ $0.secrets = ["s3cret"] }) { stack in
            try await withTestWorker(stack, ["echo": { payload, _ in payload }]) {
                let refused = try await jobgate(stack, ["submit", "echo", "--data", "x", "--wait", "5"])
                #expect(refused.status == 6 && refused.errors.contains("NOAUTH"), "\(refused.errors)")
                let wrong = try await jobgate(stack, ["submit", "echo", "--data", "x", "--wait", "5", "--secret", "nope"])
                #expect(wrong.status == 6 && wrong.errors.contains("DENIED"))
                let accepted = try await jobgate(stack, ["submit", "echo", "--data", "x", "--wait", "5", "--secret", "s3cret"])
                #expect(accepted.status == 0 && accepted.outputText == "x")
                let process = try LocalProcess(
                    jobgateExecutable(),
                    ["submit", "echo", "--data", "from-env", "--wait", "5", "--gateway", "127.0.0.1:\(stack.port)"],
                    environment: ["JOBGATE_SECRET": "s3cret"]
                )
                #expect(try await process.waitForExit() == 0)
                #expect(process.log == "from-env")
            }
        }
    }

    private func jobgate(_ stack: GatewayStack, _ arguments: [String], input: [UInt8]? = nil) async throws -> ProgramRun {
        try await runProgram(jobgateExecutable(), arguments + ["--gateway", "127.0.0.1:\(stack.port)"], input: input, timeout: .seconds(30))
    }
}

enum ClientTestError: Error, CustomStringConvertible {
    case broken
    var description: String { "broken" }
}
