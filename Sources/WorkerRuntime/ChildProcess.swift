import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How a child process ended and what it wrote.
package struct ChildProcessOutcome: Sendable {
    package enum Termination: Sendable, Hashable {
        case exited(Int32)
        case signaled(Int32)
        /// Reaped by someone else (SIGCHLD set to SIG_IGN in this process): the status is unknown.
        case unknown
    }

    package enum Interruption: Sendable, Hashable {
        case timedOut
        case outputTooLarge
        case cancelled
    }

    package var termination: Termination
    /// Why the worker killed it, if it did.
    package var interruption: Interruption?
    package var output: [UInt8]
    /// The last bytes of stderr.
    package var errorTail: [UInt8]
    /// Times the poll loop woke because its timeout passed rather than for an event: the deadline, or on a
    /// kernel without `pidfd_open` the check for the child's exit. For tests: the exit itself must not wait on a timer.
    package var timerWakeUps = 0
}

/// One run of an external program: the payload on stdin, the result from stdout, the tail of stderr kept
/// for the reason, progress lines from fd 3.
///
/// The pipes are driven by `poll` on a thread of `ChildThreads`, never on the cooperative pool (a blocking read
/// or `waitpid` there would freeze every task). The child's exit wakes the same `poll` through a pidfd, so a
/// job ends the moment its program does. The child gets its own process group, so a timeout, an
/// oversized output or a cancellation kills it and everything it started; once the child itself exited
/// the rest of its group is killed too, then it is reaped: no zombie, no orphan holding the pipes open.
package struct ChildProcess: Sendable {
    var executable: String
    var arguments: [String]
    /// The whole environment of the child, `NAME=value`.
    var environment: [String]
    var timeout: Duration?
    var maximumOutputSize: Int
    var errorTailSize: Int
    /// Longest progress line kept; longer ones are dropped whole.
    var maximumProgressLineSize = 4096
    /// Watch the child's exit through a pidfd where the kernel has them; false forces the timed check (for tests).
    var watchesExitThroughDescriptor: Bool
    /// The fd the child writes progress lines to.
    static let progressDescriptor: Int32 = 3
    /// Without a pidfd nothing wakes `poll` when the child exits: it is checked this often.
    static let exitCheckInterval: Int32 = 10

    package init(
        executable: String,
        arguments: [String],
        environment: [String],
        timeout: Duration? = nil,
        maximumOutputSize: Int = JobCommand.defaultMaximumOutputSize,
        errorTailSize: Int = 2048,
        watchesExitThroughDescriptor: Bool = true
    ) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.timeout = timeout
        self.maximumOutputSize = maximumOutputSize
        self.errorTailSize = errorTailSize
        self.watchesExitThroughDescriptor = watchesExitThroughDescriptor
    }

    package func run(input: [UInt8], progressLine: @escaping @Sendable ([UInt8]) -> Void) async throws(JobWorkerError) -> ChildProcessOutcome {
        let canceller: Canceller
        do {
            canceller = try Canceller()
        } catch {
            throw JobWorkerError(.cannotStart, "cannot create a pipe: \(error)")
        }
        defer { canceller.close() }
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<ChildProcessOutcome, JobWorkerError>, Never>) in
                ChildThreads.shared.run {
                    continuation.resume(returning: runBlocking(input: input, cancelDescriptor: canceller.readDescriptor, progressLine: progressLine))
                }
            }
        } onCancel: {
            canceller.cancel()
        }
        return try result.get()
    }

    // MARK: The blocking side, on its own thread

    private func runBlocking(
        input: [UInt8],
        cancelDescriptor: Int32,
        progressLine: @Sendable ([UInt8]) -> Void
    ) -> Result<ChildProcessOutcome, JobWorkerError> {
        var pipes: [(read: Int32, write: Int32)] = []
        defer { for pipe in pipes { closeIfOpen(pipe.read); closeIfOpen(pipe.write) } }
        for _ in 0..<4 {
            guard let pipe = makePipe() else {
                return .failure(JobWorkerError(.cannotStart, "cannot create a pipe: \(String(cString: strerror(errno)))"))
            }
            pipes.append(pipe)
        }
        let pid: pid_t
        switch spawn(stdin: pipes[0].read, stdout: pipes[1].write, stderr: pipes[2].write, progress: pipes[3].write) {
        case .success(let child): pid = child
        case .failure(let error): return .failure(error)
        }
        // The parent keeps only its own ends: the child's copies must be the last writers, so EOF comes.
        let (stdin, stdout, stderr, progress) = (pipes[0], pipes[1], pipes[2], pipes[3])
        for fd in [stdin.read, stdout.write, stderr.write, progress.write] { close(fd) }
        pipes = []  // the rest now belongs to `io`
        for fd in [stdin.write, stdout.read, stderr.read, progress.read] {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        var io = PipeState(stdin: stdin.write, stdout: stdout.read, stderr: stderr.read, progress: progress.read, input: input)
        // Readable once the child exited. The child is not reaped before the loop reaps it, so its pid cannot
        // be reused in between (unless SIGCHLD is ignored: then the open may fail, and the timed check remains).
        let exitDescriptor = watchesExitThroughDescriptor ? openPidfd(pid) : -1
        defer { closeIfOpen(exitDescriptor) }
        let deadline = timeout.map { ContinuousClock.now + $0 }
        var interruption: ChildProcessOutcome.Interruption?
        var termination: ChildProcessOutcome.Termination?
        var killed = false
        var timerWakeUps = 0

        func killGroup(_ reason: ChildProcessOutcome.Interruption?) {
            if interruption == nil { interruption = reason }
            if !killed {
                killed = true
                kill(-pid, SIGKILL)
            }
            io.closeInput()
        }

        while termination == nil || io.hasOpenOutputs {
            var descriptors = io.pollDescriptors()
            descriptors.append(pollfd(fd: cancelDescriptor, events: Int16(POLLIN), revents: 0))
            // -1: no timeout. Once the child is reaped its pidfd stays readable: it is left out then.
            var wait: Int32 = -1
            if termination == nil {
                if exitDescriptor >= 0 {
                    descriptors.append(pollfd(fd: exitDescriptor, events: Int16(POLLIN), revents: 0))
                } else {
                    wait = Self.exitCheckInterval
                }
            }
            if let deadline, interruption == nil {
                let left = max(.zero, ContinuousClock.now.duration(to: deadline))
                // Rounded up: waking a little before the deadline would only spin until it passes.
                let milliseconds = Int32(clamping: left.components.seconds * 1000 + (left.components.attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
                wait = wait < 0 ? milliseconds : min(wait, milliseconds)
            }
            let ready = poll(&descriptors, nfds_t(descriptors.count), wait)
            if ready < 0, errno != EINTR {
                killGroup(.cancelled)
            }
            if ready == 0 { timerWakeUps += 1 }
            if ready > 0 {
                // The exit descriptor needs no service: the exit is looked at below, after every wake-up.
                for descriptor in descriptors where descriptor.revents != 0 && descriptor.fd != exitDescriptor {
                    if descriptor.fd == cancelDescriptor {
                        killGroup(.cancelled)
                    } else {
                        io.service(descriptor.fd, outputLimit: maximumOutputSize, errorTailSize: errorTailSize, lineLimit: maximumProgressLineSize, progressLine: progressLine)
                    }
                }
            }
            if io.outputOverflowed { killGroup(.outputTooLarge) }
            if let deadline, ContinuousClock.now >= deadline, termination == nil { killGroup(.timedOut) }
            if termination == nil, hasExited(pid) {
                // The zombie keeps its pid and group reserved until reaped: kill what it left behind first.
                kill(-pid, SIGKILL)
                termination = reap(pid)
                io.closeInput()
            }
        }
        io.closeAll()
        return .success(
            ChildProcessOutcome(
                termination: termination ?? .unknown, interruption: interruption, output: io.output, errorTail: io.errorTail,
                timerWakeUps: timerWakeUps
            )
        )
    }

    private func spawn(stdin: Int32, stdout: Int32, stderr: Int32, progress: Int32) -> Result<pid_t, JobWorkerError> {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdin, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr, 2)
        posix_spawn_file_actions_adddup2(&actions, progress, Self.progressDescriptor)

        // Threads here block signals and children inherit the mask: start with none blocked, default handlers,
        // in a process group of its own so that a kill reaches whatever the command started.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var defaultSignals = sigset_t()
        sigemptyset(&defaultSignals)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGUSR1, SIGUSR2, SIGQUIT, SIGCHLD] { sigaddset(&defaultSignals, signal) }
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let envp = environment.map { strdup($0) } + [nil]
        defer { for pointer in envp { free(pointer) } }
        var pid: pid_t = 0
        // posix_spawnp searches PATH for a bare name, as a shell would.
        let result = posix_spawnp(&pid, executable, &actions, &attributes, argv, envp)
        switch result {
        case 0:
            return .success(pid)
        case ENOENT, ENOTDIR:
            return .failure(JobWorkerError(.commandNotFound, "command not found: \(executable)"))
        default:
            return .failure(JobWorkerError(.cannotStart, "cannot start \(executable): \(String(cString: strerror(result)))"))
        }
    }

    private func hasExited(_ pid: pid_t) -> Bool {
        var info = siginfo_t()
        // WNOWAIT: look without reaping, so the pid cannot be reused before the group kill.
        let result = waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT)
        return (result == 0 && info.si_signo != 0) || (result < 0 && errno == ECHILD)
    }

    private func reap(_ pid: pid_t) -> ChildProcessOutcome.Termination {
        var status: Int32 = 0
        var result: pid_t
        repeat { result = waitpid(pid, &status, 0) } while result < 0 && errno == EINTR
        guard result == pid else { return .unknown }
        // WIFEXITED/WTERMSIG are macros Swift cannot import.
        let signal = status & 0x7F
        return signal == 0 ? .exited((status >> 8) & 0xFF) : .signaled(signal)
    }
}

/// `pidfd_open(2)` (Linux ≥ 5.3): a close-on-exec descriptor that becomes readable when the process exits;
/// -1 where the kernel lacks it (ENOSYS) or it fails. Called through `syscall`, looked up at run time: Swift does
/// not import variadic C functions, and glibc before 2.36 has no wrapper. A SIGCHLD handler writing to a
/// self-pipe would work on older kernels too, but a library must not take the process's SIGCHLD disposition
/// (a program may ignore SIGCHLD on purpose); there, the exit is checked every `exitCheckInterval` instead.
private func openPidfd(_ pid: pid_t) -> Int32 {
    guard let systemCall else { return -1 }
    let pidfdOpenNumber = 434  // the same on every Linux architecture (the shared table of new system calls)
    return Int32(truncatingIfNeeded: systemCall(pidfdOpenNumber, Int(pid), 0))
}

/// glibc's `syscall(long number, ...)`; its arguments taken as full registers, as a variadic callee reads them.
private let systemCall: (@convention(c) (Int, Int, Int) -> Int)? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "syscall").map {
    unsafeBitCast($0, to: (@convention(c) (Int, Int, Int) -> Int).self)
}

/// glibc's `pipe2(2)`, looked up at run time: it is a GNU extension, which Swift's Glibc module does not import.
private let pipeWithFlags: (@convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32)? =
    dlsym(UnsafeMutableRawPointer(bitPattern: 0), "pipe2").map {
        unsafeBitCast($0, to: (@convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32).self)
    }

/// A pipe whose ends are close-on-exec from their creation, so that a child another job spawns meanwhile never
/// inherits them (no lock around spawning), and above 0–3, so that dup2 onto a standard descriptor always copies
/// (dup2 onto itself would leave close-on-exec set): an end at 0–3, only in a process started with those closed,
/// is moved up.
private func makePipe() -> (read: Int32, write: Int32)? {
    var fds: [Int32] = [-1, -1]
    guard let pipeWithFlags, pipeWithFlags(&fds, O_CLOEXEC) == 0 else { return nil }
    func high(_ fd: Int32) -> Int32 {
        guard fd <= ChildProcess.progressDescriptor else { return fd }
        let moved = fcntl(fd, F_DUPFD_CLOEXEC, ChildProcess.progressDescriptor + 1)
        close(fd)
        return moved
    }
    let read = high(fds[0]), write = high(fds[1])
    guard read >= 0, write >= 0 else {
        closeIfOpen(read)
        closeIfOpen(write)
        return nil
    }
    return (read, write)
}

private func closeIfOpen(_ fd: Int32) {
    if fd >= 0 { close(fd) }
}

/// The parent's ends of the child's pipes and what came through them.
private struct PipeState {
    var stdin: Int32
    var stdout: Int32
    var stderr: Int32
    var progress: Int32
    let input: [UInt8]
    var written = 0
    var output: [UInt8] = []
    var errorTail: [UInt8] = []
    var outputOverflowed = false
    var line: [UInt8] = []
    var lineTooLong = false
    var buffer = [UInt8](repeating: 0, count: 65_536)

    init(stdin: Int32, stdout: Int32, stderr: Int32, progress: Int32, input: [UInt8]) {
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.progress = progress
        self.input = input
        if input.isEmpty { closeInput() }
    }

    var hasOpenOutputs: Bool { stdout >= 0 || stderr >= 0 || progress >= 0 }

    func pollDescriptors() -> [pollfd] {
        var descriptors: [pollfd] = []
        if stdin >= 0 { descriptors.append(pollfd(fd: stdin, events: Int16(POLLOUT), revents: 0)) }
        for fd in [stdout, stderr, progress] where fd >= 0 {
            descriptors.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
        }
        return descriptors
    }

    mutating func closeInput() {
        closeIfOpen(stdin)
        stdin = -1
    }

    mutating func closeAll() {
        for fd in [stdin, stdout, stderr, progress] { closeIfOpen(fd) }
        (stdin, stdout, stderr, progress) = (-1, -1, -1, -1)
    }

    mutating func service(
        _ fd: Int32,
        outputLimit: Int,
        errorTailSize: Int,
        lineLimit: Int,
        progressLine: ([UInt8]) -> Void
    ) {
        if fd == stdin {
            let count = input[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if count > 0 {
                written += count
                if written == input.count { closeInput() }
            } else if count < 0, errno != EAGAIN, errno != EINTR {
                closeInput()  // the child closed stdin (EPIPE): it does not want the rest
            }
            return
        }
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0, errno == EAGAIN || errno == EINTR { return }
        guard count > 0 else {
            if fd == progress, !line.isEmpty, !lineTooLong { progressLine(line) }  // a last line without newline
            close(fd)
            if fd == stdout { stdout = -1 } else if fd == stderr { stderr = -1 } else if fd == progress { progress = -1 }
            return
        }
        let chunk = buffer[0..<count]
        if fd == stdout {
            if output.count + count > outputLimit {
                outputOverflowed = true
                close(stdout)
                stdout = -1
            } else {
                output.append(contentsOf: chunk)
            }
        } else if fd == stderr {
            errorTail.append(contentsOf: chunk)
            if errorTail.count > 2 * errorTailSize { errorTail.removeFirst(errorTail.count - errorTailSize) }
        } else {
            for byte in chunk {
                if byte == UInt8(ascii: "\n") {
                    if !lineTooLong { progressLine(line) }
                    line.removeAll(keepingCapacity: true)
                    lineTooLong = false
                } else if line.count < lineLimit {
                    line.append(byte)
                } else {
                    lineTooLong = true
                }
            }
        }
    }
}

/// The threads that run children: one per child running at once, kept for the next child when it ends (starting
/// and ending a thread per job was 5–10 % of a `jobgate worker`'s profile with `cat`). Idle threads wait on a
/// condition; there are never more than the most children that ran at once.
final class ChildThreads: @unchecked Sendable {
    static let shared = ChildThreads()

    /// Guards the fields below.
    private let condition = NSCondition()
    private var queued: [@Sendable () -> Void] = []
    private var threads = 0
    private var busy = 0

    /// Runs `body` on a thread of the pool, at once: a new thread when every one is busy or about to be.
    func run(_ body: @escaping @Sendable () -> Void) {
        condition.lock()
        queued.append(body)
        condition.signal()
        // Every thread not busy takes a queued body before it waits again: start one when they are too few.
        let startsThread = threads - busy < queued.count
        if startsThread { threads += 1 }
        condition.unlock()
        guard startsThread else { return }
        let thread = Thread { [self] in serve() }
        thread.name = "jobgate-child"
        thread.start()
    }

    private func serve() {
        // A child that stops reading stdin would raise SIGPIPE on our write; blocked here, the write says EPIPE.
        var pipeSignal = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &pipeSignal, nil)
        condition.lock()
        while true {
            guard !queued.isEmpty else {
                condition.wait()
                continue
            }
            let body = queued.removeFirst()
            busy += 1
            condition.unlock()
            body()
            condition.lock()
            busy -= 1
        }
    }
}

/// A self-pipe that wakes the child's poll loop when the job's task is cancelled.
private final class Canceller: Sendable {
    let readDescriptor: Int32
    private let writeDescriptor: Mutex<Int32>

    init() throws {
        guard let (read, write) = makePipe() else {
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        _ = fcntl(write, F_SETFL, fcntl(write, F_GETFL) | O_NONBLOCK)
        readDescriptor = read
        writeDescriptor = Mutex(write)
    }

    func cancel() {
        writeDescriptor.withLock { fd in
            guard fd >= 0 else { return }
            var byte: UInt8 = 1
            _ = write(fd, &byte, 1)
        }
    }

    /// Only after the run returned: the lock keeps a late `cancel()` from writing to a reused descriptor.
    func close() {
        writeDescriptor.withLock { fd in
            closeIfOpen(fd)
            fd = -1
        }
        Glibc.close(readDescriptor)
    }
}

extension ChildProcessOutcome {
    /// The errorTail as text, trimmed to `limit` bytes at a line start where possible.
    func errorText(limit: Int) -> String {
        var tail = errorTail.suffix(limit)
        if errorTail.count > limit, let newline = tail.firstIndex(of: UInt8(ascii: "\n")) {
            tail = tail[(newline + 1)...]
        }
        return String(decoding: tail, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
