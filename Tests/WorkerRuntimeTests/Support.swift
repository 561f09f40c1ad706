import Foundation
import Gearman
import JobStore
import LocalServers
import Logging
import NIOCore
import Redis
import ServiceLifecycle
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

struct TestFailure: Error, CustomStringConvertible {
    var description: String
}

extension LocalServer {
    var gearmanAddress: GearmanServerAddress { GearmanServerAddress(host: host, port: port) }
}

func makeStore(_ server: LocalServer, resultTTL: Int = 86_400) -> RedisJobStore {
    let redis = RedisConnectionPool(
        configuration: RedisConnectionConfiguration(host: server.host, port: server.port, connectTimeout: .seconds(1), commandTimeout: .seconds(5)),
        size: 2,
        backoff: RedisBackoff(initial: .milliseconds(50), maximum: .milliseconds(300))
    )
    var configuration = JobStoreConfiguration()
    configuration.resultTTL = resultTTL
    return RedisJobStore(redis: redis, configuration: configuration)
}

func newID() -> JobID { JobID(rawValue: UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""))! }

/// Creates the record (as the gateway does) and submits the job in the background with unique = id.
@discardableResult
func submit(
    _ function: String,
    _ payload: String,
    store: RedisJobStore,
    gearman: GearmanClient,
    id: JobID = newID(),
    resultTTL: Int? = nil
) async throws -> (id: JobID, handle: String) {
    #expect(try await store.create(id: id, function: function, unique: nil, resultTTL: resultTTL) == .created)
    let handle = try await gearman.submitBackground(GearmanJobRequest(function: function, unique: id.rawValue, payload: ByteBuffer(string: payload)))
    try await store.setLocation(id, handle: handle, server: "\(gearman.address)")
    return (id, handle)
}

/// A service run in the background, shut down gracefully by the test.
struct RunningService: Sendable {
    let group: ServiceGroup
    let task: Task<Void, any Error>

    init(_ service: some Service) {
        let group = ServiceGroup(configuration: .init(services: [service], logger: Logger(label: "test")))
        self.group = group
        self.task = Task { try await group.run() }
    }

    func shutDown() async throws {
        await group.triggerGracefulShutdown()
        try await withTimeout(.seconds(30), "the service to stop") { try await task.value }
    }
}

/// Runs `service` around `body`, then shuts it down gracefully.
func withRunning<T: Sendable>(_ service: some Service, _ body: @Sendable () async throws -> T) async throws -> T {
    let running = RunningService(service)
    do {
        let result = try await body()
        try await running.shutDown()
        return result
    } catch {
        running.task.cancel()
        throw error
    }
}

/// A one-shot gate handlers wait on, opened by the test.
final class Gate: Sendable {
    private let opened = Mutex(false)

    func open() { opened.withLock { $0 = true } }

    /// Returns when opened, or when the waiting task is cancelled (a cancelled sleep would otherwise spin).
    func wait() async {
        while !opened.withLock({ $0 }), !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }
}

final class Recorder<Element: Sendable>: Sendable {
    private let storage = Mutex<[Element]>([])

    func append(_ element: Element) { storage.withLock { $0.append(element) } }
    var all: [Element] { storage.withLock { $0 } }
}

/// Collects a change feed's updates while `body` runs.
func withFeed<T: Sendable>(_ store: RedisJobStore, _ body: @Sendable (JobChangeFeed, Recorder<JobUpdate>) async throws -> T) async throws -> T {
    try await KeyspaceNotifications.ensureEnabled(on: store.redis)
    let feed = JobChangeFeed(store: store, sweepInterval: .seconds(30))
    let log = Recorder<JobUpdate>()
    let running = Task { try await feed.run() }
    let consuming = Task { for await update in feed.updates { log.append(update) } }
    defer {
        running.cancel()
        consuming.cancel()
    }
    try await withTimeout(.seconds(10), "the feed's subscription") { await feed.waitUntilReady() }
    return try await body(feed, log)
}

/// Whether a process (or zombie) with this pid exists.
func processExists(_ pid: pid_t) -> Bool {
    kill(pid, 0) == 0 || errno != ESRCH
}

// MARK: Child processes of the tests (the jobgate executable, php, python)

/// A process the test starts and stops: spawned with no blocked signal (test runners block some, and
/// children inherit the mask), output to a log file, reaped by polling so no cooperative thread blocks.
final class TestProcess: Sendable {
    let pid: pid_t
    let logFile: URL
    private let exit = Mutex<Int32?>(nil)

    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw TestFailure(description: "\(executable) is missing: build the package first (`swift build`), or install it")
        }
        logFile = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-test-\(UUID().uuidString).log")
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logFile.path, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var defaultSignals = sigset_t()
        sigemptyset(&defaultSignals)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE] { sigaddset(&defaultSignals, signal) }
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var variables = ProcessInfo.processInfo.environment
        variables.merge(environment) { $1 }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let envp = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in envp { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else { throw TestFailure(description: "cannot start \(executable): error \(result)") }
        self.pid = pid
    }

    deinit {
        stop()
    }

    var log: String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    /// The exit status once it exited (and is reaped), nil while it runs.
    var exitStatus: Int32? {
        exit.withLock { exit in
            if exit == nil {
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid { exit = status }
            }
            return exit
        }
    }

    func signal(_ signal: Int32) {
        if exitStatus == nil { kill(pid, signal) }
    }

    func waitForExit(timeout: Duration = .seconds(20)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = exitStatus { return status }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestFailure(description: "process \(pid) did not exit within \(timeout); log:\n\(log)")
    }

    /// SIGKILL and reap (a process the test is done with).
    func stop() {
        guard exitStatus == nil else { return }
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        exit.withLock { $0 = status }
    }
}

/// The built `jobgate` executable, next to the test bundle.
func jobgateExecutable() -> String {
    let bundleDirectory = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "")
        .deletingLastPathComponent()
    let besideTests = bundleDirectory.appendingPathComponent("jobgate").path
    if FileManager.default.isExecutableFile(atPath: besideTests) { return besideTests }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent(".build/debug/jobgate").path
}

/// The repository's README, whose examples the tests run.
func readme() throws -> String {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("README.md")
    return try String(contentsOf: url, encoding: .utf8)
}

/// The fenced code block that follows `<!-- example: name -->` in the README.
func readmeExample(_ name: String) throws -> String {
    let text = try readme()
    guard let marker = text.range(of: "<!-- example: \(name) -->") else { throw TestFailure(description: "README has no example \(name)") }
    let rest = text[marker.upperBound...]
    guard let open = rest.range(of: "```"), let lineEnd = rest[open.upperBound...].firstIndex(of: "\n"),
        let close = rest[lineEnd...].range(of: "\n```")
    else { throw TestFailure(description: "README example \(name) has no code block") }
    return String(rest[rest.index(after: lineEnd)..<close.lowerBound]) + "\n"
}

func temporaryFile(_ contents: String, suffix: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-\(UUID().uuidString)\(suffix)")
    try contents.write(to: url, atomically: true, encoding: .utf8)
    return url
}
