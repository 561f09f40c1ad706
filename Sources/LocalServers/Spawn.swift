import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Starts `executable` with stdin, stdout and stderr redirected to files (`nil` stdin: /dev/null; stderr may
/// be the same path as stdout). posix_spawn rather than Foundation's Process: waiting is a plain waitpid, with no
/// run loop and no file handles closed behind our back.
func spawnProcess(
    _ executable: String,
    _ arguments: [String],
    stdin: String?,
    stdout: String,
    stderr: String,
    environment: [String: String] = [:]
) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, stdin ?? "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    if stderr == stdout {
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
    } else {
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    }
    // Test runners block signals in their threads and children inherit the mask: a server that
    // cannot see SIGTERM would only stop at SIGKILL. Start it with no signal blocked, default handlers.
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    var defaultSignals = sigset_t()
    sigemptyset(&defaultSignals)
    for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGUSR1, SIGCHLD] { sigaddset(&defaultSignals, signal) }
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    let variables = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let envp = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for pointer in envp { free(pointer) } }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
    guard result == 0 else { throw LocalServerError(message: "cannot start \(executable): error \(result)") }
    StartedProcesses.record(pid)
    return pid
}

/// The raw wait status if the process has ended (and is now reaped), nil while it runs.
func exitStatus(_ pid: pid_t) -> Int32? {
    var status: Int32 = 0
    let result = waitpid(pid, &status, WNOHANG)
    guard result != 0 else { return nil }
    StartedProcesses.forget(pid)
    return status
}

/// Waits for the process to end and reaps it; returns the raw wait status.
@discardableResult
func reap(_ pid: pid_t) -> Int32 {
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    StartedProcesses.forget(pid)
    return status
}

/// The processes started here that still run, as files in the folder `JOBGATE_TEST_PID_DIR` names (when it is
/// set; `Deploy/test.sh` makes one): if the test run crashes, the script stops exactly these (with
/// `Deploy/stop-recorded.sh`), and never the servers of someone else's run on the same machine.
///
/// Each file is named by the pid and holds `<pid> <start time>`, the start time from `/proc/<pid>/stat`, so that
/// a pid the system handed to another process since is left alone. A record goes when its process is reaped.
public enum StartedProcesses {
    public static let variable = "JOBGATE_TEST_PID_DIR"

    static let directory: String? = ProcessInfo.processInfo.environment[variable].flatMap { $0.isEmpty ? nil : $0 }

    /// Records a process started some other way (a daemon that one of these started, say).
    public static func record(_ pid: pid_t) {
        guard let directory, let started = startTime(pid) else { return }
        try? "\(pid) \(started)\n".write(toFile: "\(directory)/\(pid)", atomically: true, encoding: .utf8)
    }

    public static func forget(_ pid: pid_t) {
        guard let directory else { return }
        unlink("\(directory)/\(pid)")
    }

    /// Field 22 of `/proc/<pid>/stat`, the process's start in clock ticks after boot. The name in field 2 may
    /// hold spaces and parentheses, so the fields are counted after its closing parenthesis.
    public static func startTime(_ pid: pid_t) -> String? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let nameEnd = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(after: nameEnd)...].split(separator: " ")
        return fields.count > 19 ? String(fields[19]) : nil
    }
}

/// A program run to completion.
public struct ProgramRun: Sendable {
    /// The exit code, or 128 + the signal that killed it.
    public var status: Int32
    public var output: [UInt8]
    public var errors: String

    public var outputText: String { String(decoding: output, as: UTF8.self) }
}

/// Runs a program to completion without blocking a thread of the Swift concurrency pool; kills it after
/// `timeout`. A program that is not installed is an error naming it.
public func runProgram(
    _ executable: String,
    _ arguments: [String],
    input: [UInt8]? = nil,
    environment: [String: String] = [:],
    timeout: Duration = .seconds(60)
) async throws -> ProgramRun {
    guard FileManager.default.isExecutableFile(atPath: executable) else {
        throw LocalServerError(message: "\(executable) is not installed: run the README's test command, which installs it")
    }
    let base = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-run-\(UUID().uuidString)").path
    let (inputPath, outputPath, errorPath) = (base + ".in", base + ".out", base + ".err")
    defer { for path in [inputPath, outputPath, errorPath] { unlink(path) } }
    if let input { try Data(input).write(to: URL(fileURLWithPath: inputPath)) }
    let pid = try spawnProcess(executable, arguments, stdin: input == nil ? nil : inputPath, stdout: outputPath, stderr: errorPath, environment: environment)
    let deadline = ContinuousClock.now + timeout
    var status: Int32? = nil
    while status == nil {
        status = exitStatus(pid)
        if status == nil {
            if ContinuousClock.now > deadline {
                kill(pid, SIGKILL)
                reap(pid)
                throw LocalServerError(message: "\(executable) did not finish within \(timeout)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
    let raw = status!
    let code = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
    let output = (try? Data(contentsOf: URL(fileURLWithPath: outputPath))).map { [UInt8]($0) } ?? []
    let errors = (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? ""
    return ProgramRun(status: code, output: output, errors: errors)
}

/// A long-running process a test starts and stops (the `jobgate` executable, php, python): output goes to a log
/// file, and it is reaped by polling, so no thread of the Swift concurrency pool ever blocks on it.
public final class LocalProcess: Sendable {
    public let pid: pid_t
    public let logFile: URL
    private let exit = Mutex<Int32?>(nil)

    public init(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw LocalServerError(message: "\(executable) is missing: build the package first (`swift build`), or install it")
        }
        logFile = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-process-\(UUID().uuidString).log")
        pid = try spawnProcess(executable, arguments, stdin: nil, stdout: logFile.path, stderr: logFile.path, environment: environment)
    }

    deinit {
        stop()
    }

    /// What the process wrote to stdout and stderr so far.
    public var log: String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    /// The raw wait status once it exited (and is reaped), nil while it runs.
    public var exitStatus: Int32? {
        exit.withLock { exit in
            if exit == nil { exit = LocalServers.exitStatus(pid) }
            return exit
        }
    }

    public func signal(_ signal: Int32) {
        if exitStatus == nil { kill(pid, signal) }
    }

    public func waitForExit(timeout: Duration = .seconds(20)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = exitStatus { return status }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw LocalServerError(message: "process \(pid) did not exit within \(timeout); log:\n\(log)")
    }

    /// SIGKILL and reap: a process the test is done with.
    public func stop() {
        guard exitStatus == nil else { return }
        kill(pid, SIGKILL)
        let status = reap(pid)
        exit.withLock { $0 = status }
    }
}

/// The built `jobgate` executable: next to the test bundle (`swift build --build-tests` builds both).
public func jobgateExecutable() -> String {
    let binDirectory = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "")
        .deletingLastPathComponent()
    return binDirectory.appendingPathComponent("jobgate").path
}

/// Runs a PHP script given as text with the `php` CLI; returns its output, or throws with it on a non-zero exit.
public func runPHP(_ script: String, arguments: [String] = [], timeout: Duration = .seconds(60)) async throws -> String {
    let file = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-\(UUID().uuidString).php")
    try script.write(to: file, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(at: file) }
    let run = try await runProgram("/usr/bin/php", [file.path] + arguments, timeout: timeout)
    guard run.status == 0 else {
        throw LocalServerError(message: "php exited \(run.status): \(run.outputText) \(run.errors)")
    }
    return run.outputText
}
