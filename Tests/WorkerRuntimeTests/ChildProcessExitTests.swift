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

    /// Children one after another run on a thread kept from the one before: no thread is started per job. Each
    /// child lists the threads of this process while the thread that spawned it waits for it; a thread started
    /// per child is new in every list. Other threads of the test process may start meanwhile (other tests), so
    /// one list with no thread the list before lacked is enough.
    @Test func childrenReuseTheirThreads() async throws {
        var lists: [Set<Substring>] = []
        for _ in 0..<10 {
            let outcome = try await Self.child("ls /proc/$PPID/task").run(input: []) { _ in }
            #expect(outcome.termination == .exited(0))
            lists.append(Set(String(decoding: outcome.output, as: UTF8.self).split(separator: "\n")))
        }
        let withoutNewThread = zip(lists, lists.dropFirst()).filter { before, after in after.isSubset(of: before) }.count
        #expect(withoutNewThread > 0, "every child was spawned by a thread the child before did not see")
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
