import Foundation
import LocalServers
import NIOCore
import Testing
import WorkerRuntime

#if canImport(Glibc)
import Glibc
#endif

func shell(_ script: String, timeout: Duration? = .seconds(20), maximumOutputSize: Int = JobCommand.defaultMaximumOutputSize) -> JobCommand {
    JobCommand("/bin/sh", ["-c", script], timeout: timeout, maximumOutputSize: maximumOutputSize)
}

func runExpectingError(_ command: JobCommand, input: ByteBuffer = ByteBuffer()) async throws -> JobWorkerError {
    do {
        let output = try await command.run(input: input)
        throw TestFailure(description: "expected a failure, got \(output.readableBytes) bytes of output")
    } catch let error as JobWorkerError {
        return error
    }
}

/// External commands run per job: stdin, stdout, stderr, fd 3, exits, kills.
@Suite("Job commands", .timeLimit(.minutes(2)))
struct JobCommandTests {
    /// stdout comes back byte for byte, NUL, CR LF and 0xFF included.
    @Test func binaryOutput() async throws {
        let output = try await shell(#"printf '\000\001\377\r\n'"#).run(input: ByteBuffer())
        #expect(Array(output.readableBytesView) == [0, 1, 255, 13, 10])
    }

    /// A 1 MiB payload goes through stdin and back through stdout unchanged (pipes far smaller than it).
    @Test func largePayloadRoundTrip() async throws {
        let payload = ByteBuffer(bytes: (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255) })
        let output = try await JobCommand("cat").run(input: payload)
        #expect(output == payload)
    }

    /// No output is a valid, empty result; a program that ignores its stdin does not break the worker.
    @Test func emptyOutputAndUnreadInput() async throws {
        #expect(try await JobCommand("true").run(input: ByteBuffer(repeating: 7, count: 1 << 20)).readableBytes == 0)
    }

    /// The program gets the worker's environment with the command's variables over it and the run's over those,
    /// each name once (the worker's own environment is read once and reused). `env` prints the entries as given
    /// (a shell would merge repeated names).
    @Test func environmentLayers() async throws {
        let path = try #require(ProcessInfo.processInfo.environment["PATH"])
        var command = JobCommand("env")
        command.environment = ["PATH": path, "HOME": "/from-command", "LAYER": "command"]
        for _ in 0..<2 {
            let output = try await command.run(input: ByteBuffer(), environment: ["LAYER": "run"])
            let entries = String(buffer: output).split(separator: "\n")
            #expect(entries.filter { $0.hasPrefix("HOME=") } == ["HOME=/from-command"])
            #expect(entries.filter { $0.hasPrefix("LAYER=") } == ["LAYER=run"])
            #expect(entries.filter { $0.hasPrefix("PATH=") } == ["PATH=\(path)"])
        }
    }

    /// A non-zero exit fails with the tail of stderr as the reason; without stderr the status is named.
    @Test func nonZeroExit() async throws {
        let failed = try await runExpectingError(shell("seq 1 5000 >&2; echo 'disk full' >&2; exit 3"))
        #expect(failed.code == .commandFailed)
        #expect(failed.message.hasSuffix("disk full"), "\(failed.message)")
        #expect(failed.message.utf8.count <= 2048 && !failed.message.contains("\n1\n"), "only the tail is kept")

        let silent = try await runExpectingError(shell("exit 3"))
        #expect(silent.code == .commandFailed && silent.message.contains("status 3"), "\(silent.message)")

        let killed = try await runExpectingError(shell("echo dying >&2; kill -9 $$"))
        #expect(killed.code == .commandFailed && killed.message.contains("signal 9") && killed.message.contains("dying"), "\(killed.message)")
    }

    /// A timeout kills the program and what it started (its process group), and reaps it: no zombie.
    @Test func timeoutKillsTheProcessGroup() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let script = "echo $$ > \(directory.path)/shell; sleep 30 & echo $! > \(directory.path)/sleeper; echo started >&2; wait"
        let error = try await runExpectingError(shell(script, timeout: .milliseconds(500)))
        #expect(error.code == .timedOut)
        #expect(error.message.contains("timed out") && error.message.contains("started"), "\(error.message)")
        let shellPID = try #require(pid_t(String(contentsOf: directory.appendingPathComponent("shell"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        let sleeperPID = try #require(pid_t(String(contentsOf: directory.appendingPathComponent("sleeper"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        // Our child is reaped by the run itself (a zombie would still exist for kill(pid, 0)).
        #expect(!processExists(shellPID), "the shell was killed and reaped")
        // The grandchild was killed too; init reaps it.
        try await eventually("the background sleep to die") { !processExists(sleeperPID) }
    }

    /// Output over the limit kills the program and fails clearly; exactly the limit is fine.
    @Test func outputLimit() async throws {
        let error = try await runExpectingError(shell("head -c 10000000 /dev/zero", maximumOutputSize: 1000))
        #expect(error.code == .outputTooLarge && error.message.contains("1000 bytes"), "\(error.message)")
        // Endless output as well: the kill ends it.
        let endless = try await runExpectingError(shell("yes", maximumOutputSize: 65_536))
        #expect(endless.code == .outputTooLarge)
        #expect(try await shell("head -c 1000 /dev/zero", maximumOutputSize: 1000).run(input: ByteBuffer()).readableBytes == 1000)
    }

    /// Progress lines on fd 3 are reported in order; anything else there is ignored; a last line needs no newline.
    @Test func progressLines() async throws {
        let seen = Recorder<JobProgress>()
        let script = #"echo "PROGRESS 1 3 first step" >&3; echo "garbage" >&3; echo "PROGRESS x 3" >&3; printf 'PROGRESS 2 3\r\n' >&3; printf 'PROGRESS 3 3 last' >&3; printf done"#
        let output = try await shell(script).run(input: ByteBuffer()) { seen.append($0) }
        #expect(output == ByteBuffer(string: "done"))
        #expect(seen.all == [JobProgress(1, of: 3, message: "first step"), JobProgress(2, of: 3), JobProgress(3, of: 3, message: "last")])
        #expect(JobProgress(line: Array("PROGRESS 4294967296 1".utf8)) == nil, "numbers beyond 32 bits are refused")
        #expect(JobProgress(line: Array("PROGRESS 1 2  two spaces".utf8)) == JobProgress(1, of: 2, message: " two spaces"))
        // A combining mark (U+0301) first in the message forms one Swift character with the space before it.
        #expect(JobProgress(line: Array("PROGRESS 1 2 \u{301}x".utf8)) == JobProgress(1, of: 2, message: "\u{301}x"))
        #expect(JobProgress(line: [0xFF] + Array(" 1 2".utf8)) == nil)
    }

    /// A progress line longer than the line limit is dropped, without buffering it whole.
    @Test func overlongProgressLineIsDropped() async throws {
        let seen = Recorder<JobProgress>()
        let script = #"printf 'PROGRESS 1 2 '; head -c 100000 /dev/zero | tr '\0' a; echo; echo "PROGRESS 2 2 ok""#
        _ = try await shell("(\(script)) >&3").run(input: ByteBuffer()) { seen.append($0) }
        #expect(seen.all == [JobProgress(2, of: 2, message: "ok")])
    }

    /// A command that does not exist fails the job with a clear reason.
    @Test func missingCommand() async throws {
        let byPath = try await runExpectingError(JobCommand("/nonexistent/jobgate-tool"))
        #expect(byPath.code == .commandNotFound && byPath.message.contains("/nonexistent/jobgate-tool"), "\(byPath.message)")
        let byName = try await runExpectingError(JobCommand("jobgate-no-such-command"))
        #expect(byName.code == .commandNotFound && byName.message.contains("jobgate-no-such-command"))
        let notExecutable = try await runExpectingError(JobCommand("/etc/hostname"))
        #expect(notExecutable.code == .cannotStart, "\(notExecutable)")
    }

    /// A background process that keeps stdout open does not hold the job once the program itself exited.
    @Test func leftoverBackgroundProcessDoesNotHoldTheJob() async throws {
        let output = try await withTimeout(.seconds(10), "the job") { try await shell("sleep 30 & echo hi").run(input: ByteBuffer()) }
        #expect(output == ByteBuffer(string: "hi\n"))
    }

    /// Cancelling the job's task kills the program at once.
    @Test func cancellationKillsTheProgram() async throws {
        let pidFile = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: pidFile) }
        let task = Task { try await shell("echo $$ > \(pidFile.path); exec sleep 30", timeout: nil).run(input: ByteBuffer()) }
        try await eventually("the program to start") { FileManager.default.fileExists(atPath: pidFile.path) && ((try? String(contentsOf: pidFile, encoding: .utf8))?.hasSuffix("\n") ?? false) }
        let pid = try #require(pid_t(String(contentsOf: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        task.cancel()
        let result = try await withTimeout(.seconds(5), "the cancelled run") { await task.result }
        #expect(throws: JobWorkerError.self) { try result.get() }
        #expect(!processExists(pid))
    }

    /// Many programs at once: each gets its own pipes (none inherits another's and holds it open).
    @Test func concurrentRuns() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<16 {
                group.addTask {
                    let output = try await shell("cat; echo \(index)").run(input: ByteBuffer(string: "job "))
                    #expect(output == ByteBuffer(string: "job \(index)\n"))
                }
            }
            try await group.waitForAll()
        }
    }
}
