import Testing
import WorkerRuntime

/// How the run learns that its program exited: the child's pidfd wakes the poll loop, no timer does.
@Suite("Child process exit", .timeLimit(.minutes(1)))
struct ChildProcessExitTests {
    static func child(_ script: String, watchesExitThroughDescriptor: Bool = true) -> ChildProcess {
        ChildProcess(
            executable: "/bin/sh", arguments: ["-c", script], environment: ["PATH=/usr/bin:/bin"],
            watchesExitThroughDescriptor: watchesExitThroughDescriptor
        )
    }

    /// A program that exits at once, many times over, and one that closes its outputs and then sleeps (so that
    /// only its exit can end the wait): the loop never waits for a timeout to notice the exit.
    @Test func exitWakesThePollLoop() async throws {
        var timerWakeUps = 0
        for _ in 0..<50 {
            let outcome = try await ChildProcess(executable: "/bin/true", arguments: [], environment: []).run(input: []) { _ in }
            #expect(outcome.termination == .exited(0))
            timerWakeUps += outcome.timerWakeUps
        }
        #expect(timerWakeUps == 0, "50 runs of /bin/true")

        let sleeper = try await Self.child("exec >&- 2>&- 3>&-; sleep 0.3; exit 4").run(input: []) { _ in }
        #expect(sleeper.termination == .exited(4))
        #expect(sleeper.timerWakeUps == 0)
    }

    /// Where the kernel has no pidfd, the exit is still found, by the timed check; output and status are the same.
    @Test func timedExitCheckWithoutPidfd() async throws {
        let outcome = try await Self.child("echo out; echo err >&2; exec >&- 2>&- 3>&-; sleep 0.2; exit 3", watchesExitThroughDescriptor: false)
            .run(input: Array("ignored".utf8)) { _ in }
        #expect(outcome.termination == .exited(3))
        #expect(outcome.output == Array("out\n".utf8) && outcome.errorTail == Array("err\n".utf8))
        #expect(outcome.timerWakeUps > 0, "the exit was found by the timed check")
    }
}
