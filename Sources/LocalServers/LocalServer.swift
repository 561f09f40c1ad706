import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A real server process (gearmand, redis-server or memcached) listening on a free loopback port.
///
/// Tests and benchmarks talk to these, never to mocks. A missing binary is an error that names the
/// Debian package to install; nothing is skipped. `stop()` is idempotent and `kill()`/`restart()`
/// let failure tests take a server away and bring it back on the same port.
public final class LocalServer: Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        case gearmand
        case redis = "redis-server"
        case memcached
        /// `redis-server --sentinel`; its `arguments` are lines of its configuration file (`sentinel monitor …`), which
        /// it rewrites as it learns the topology and keeps across `restart()`.
        case redisSentinel = "redis-sentinel"

        /// Debian package that provides the binary.
        var package: String {
            switch self {
            case .gearmand: "gearman-job-server"
            case .redis, .redisSentinel: "redis-server"
            case .memcached: "memcached"
            }
        }

        var binary: String { self == .redisSentinel ? "redis-server" : rawValue }

        var searchPaths: [String] {
            ["/usr/sbin/\(binary)", "/usr/bin/\(binary)", "/usr/local/bin/\(binary)", "/usr/local/sbin/\(binary)"]
        }
    }

    public let kind: Kind
    public let host = "127.0.0.1"
    public let port: Int
    /// Folder holding the server's log and data; removed by `stop()`.
    public let directory: URL
    let extraArguments: [String]
    private let process: Mutex<pid_t?>

    public var logFile: URL { directory.appendingPathComponent(kind == .memcached ? "server.log.out" : "server.log") }
    /// "host:port", as gearmand and memcached clients take it.
    public var address: String { "\(host):\(port)" }

    /// The server's log so far, for failure messages.
    public var log: String {
        (try? String(contentsOf: logFile, encoding: .utf8)) ?? "(no log at \(logFile.path))"
    }

    /// Starts `kind` on a free loopback port and returns once it answers a request.
    public static func start(_ kind: Kind, arguments: [String] = []) async throws -> LocalServer {
        var lastError: (any Error)?
        // A free port can be taken by someone else between our probe and the server's bind: try a few.
        for _ in 0..<5 {
            let server = try LocalServer(kind: kind, port: try freeLoopbackPort(), extraArguments: arguments)
            do {
                try await server.launch()
                return server
            } catch {
                lastError = error
                server.stop()
            }
        }
        throw lastError ?? LocalServerError(message: "could not start \(kind.rawValue)")
    }

    private init(kind: Kind, port: Int, extraArguments: [String]) throws {
        self.kind = kind
        self.port = port
        self.extraArguments = extraArguments
        self.directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("jobgate-localserver-\(kind.rawValue)-\(port)-\(UUID().uuidString.prefix(8))")
        self.process = Mutex(nil)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    deinit {
        stop(removeFiles: false)
    }

    private var executable: String? {
        kind.searchPaths.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    private var arguments: [String] {
        let dir = directory.path
        switch kind {
        case .gearmand:
            return [
                "--listen=\(host)", "--port=\(port)", "--log-file=\(logFile.path)", "--pid-file=\(dir)/gearmand.pid",
                "--verbose=INFO", "--threads=1",
            ] + extraArguments
        case .redis:
            return [
                "--bind", host, "--port", "\(port)", "--save", "", "--appendonly", "no", "--dir", dir,
                "--logfile", logFile.path, "--daemonize", "no",
            ] + extraArguments
        case .memcached:
            return ["-l", host, "-p", "\(port)", "-U", "0", "-u", "root", "-vv"] + extraArguments
        case .redisSentinel:
            return [sentinelConfigurationFile, "--sentinel"]
        }
    }

    private var sentinelConfigurationFile: String { directory.appendingPathComponent("sentinel.conf").path }

    /// A sentinel's configuration file, written at the first launch only: the sentinel rewrites it with what it learnt.
    private func writeSentinelConfiguration() throws {
        guard kind == .redisSentinel, !FileManager.default.fileExists(atPath: sentinelConfigurationFile) else { return }
        let lines = ["port \(port)", "bind \(host)", "dir \(directory.path)", "logfile \(logFile.path)", "daemonize no"] + extraArguments
        try (lines.joined(separator: "\n") + "\n").write(toFile: sentinelConfigurationFile, atomically: true, encoding: .utf8)
    }

    /// Starts the process (again, on the same port after `kill()`) and waits until it answers.
    public func launch() async throws {
        guard let executable else {
            throw LocalServerError(
                message: "\(kind.rawValue) is not installed: run `apt-get install \(kind.package)` (the README's test command does this)"
            )
        }
        try writeSentinelConfiguration()
        let pid = try spawnProcess(executable, arguments, stdin: nil, stdout: logFile.path + ".out", stderr: logFile.path + ".out")
        self.process.withLock { $0 = pid }

        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let status = exitStatus(pid) {
                self.process.withLock { $0 = nil }
                throw LocalServerError(message: "\(kind.rawValue) exited at start (status \(status)):\n\(log)\(outputLog)")
            }
            if probe() { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw LocalServerError(message: "\(kind.rawValue) on port \(port) did not answer within 10 s:\n\(log)\(outputLog)")
    }

    private var outputLog: String {
        (try? String(contentsOfFile: logFile.path + ".out", encoding: .utf8)) ?? ""
    }

    /// Process id of the running server, if any.
    public var pid: Int32? {
        process.withLock { $0 }
    }

    /// `kill -9`: the server vanishes without closing anything cleanly.
    public func kill() {
        signalAndWait(SIGKILL)
    }

    /// Kills the server and starts it again on the same port.
    public func restart() async throws {
        kill()
        try await launch()
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and removes its folder.
    public func stop() {
        stop(removeFiles: true)
    }

    private func stop(removeFiles: Bool) {
        signalAndWait(SIGTERM)
        if removeFiles {
            try? FileManager.default.removeItem(at: directory)
        }
    }

    private func signalAndWait(_ signal: Int32) {
        guard let pid = process.withLock({ pid -> pid_t? in
            defer { pid = nil }
            return pid
        }) else { return }
        Glibc.kill(pid, signal)
        for _ in 0..<1000 {
            if exitStatus(pid) != nil { return }
            usleep(5_000)
        }
        Glibc.kill(pid, SIGKILL)
        reap(pid)
    }

    /// Sends the kind's cheapest request and checks the answer.
    private func probe() -> Bool {
        let (request, expected): (String, String) =
            switch kind {
            case .gearmand: ("version\n", "OK ")
            case .redis, .redisSentinel: ("PING\r\n", "+PONG")
            case .memcached: ("version\r\n", "VERSION ")
            }
        guard let reply = try? LoopbackSocket.exchange(port: port, request: Array(request.utf8), timeoutMs: 500) else {
            return false
        }
        return String(decoding: reply, as: UTF8.self).hasPrefix(expected)
    }
}

public struct LocalServerError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }

    public init(message: String) { self.message = message }
}

/// Runs `body` with a fresh server and always stops it; a thrown error carries the server's log.
public func withLocalServer<T>(
    _ kind: LocalServer.Kind,
    arguments: [String] = [],
    _ body: (LocalServer) async throws -> T
) async throws -> T {
    let server = try await LocalServer.start(kind, arguments: arguments)
    defer { server.stop() }
    do {
        return try await body(server)
    } catch {
        let tail = server.log.split(separator: "\n", omittingEmptySubsequences: false).suffix(60).joined(separator: "\n")
        print("--- last lines of the \(kind.rawValue) log (port \(server.port), \(server.logFile.path)) ---\n\(tail)\n--- end of log ---")
        throw error
    }
}

/// A loopback port that is free right now, outside the kernel's ephemeral range, and not handed out before by
/// this process.
///
/// Outside the ephemeral range because a test that kills a server and starts it again on the same port would
/// otherwise race every outgoing connection on the machine for it: a client reconnecting to the dead port can even
/// be given that very port as its source and connect to itself (TCP simultaneous open), which then holds it.
public func freeLoopbackPort() throws -> Int {
    let ephemeral = ephemeralPortRange()
    let candidates = 10_000..<max(10_001, ephemeral.lowerBound)
    for _ in 0..<200 {
        let port = Int.random(in: candidates)
        guard portsHandedOut.withLock({ $0.insert(port).inserted }) else { continue }
        if (try? bindLoopback(port: port)) != nil { return port }
    }
    // A machine whose ephemeral range leaves nothing below it: let the kernel choose.
    return try bindLoopback(port: 0)
}

private let portsHandedOut = Mutex<Set<Int>>([])

private func ephemeralPortRange() -> ClosedRange<Int> {
    let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
    let bounds = text.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
    guard bounds.count == 2, bounds[0] <= bounds[1] else { return 32768...60999 }
    return bounds[0]...bounds[1]
}

/// Binds (and closes) a loopback socket on `port`; returns the port bound (the kernel's choice for 0).
private func bindLoopback(port: Int) throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw LocalServerError(message: "socket() failed: errno \(errno)") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
        }
    }
    guard bound else { throw LocalServerError(message: "could not bind loopback port \(port): errno \(errno)") }
    return Int(UInt16(bigEndian: address.sin_port))
}
