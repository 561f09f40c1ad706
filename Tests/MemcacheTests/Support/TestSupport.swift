import Foundation
import LocalServers
import Memcache
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Expects `body` to throw a `MemcacheError` with `code`.
func expectMemcacheError<T>(
    _ code: MemcacheError.Code,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws -> T
) async {
    do {
        _ = try await body()
        Issue.record("expected \(code), got no error", sourceLocation: sourceLocation)
    } catch let error as MemcacheError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected MemcacheError \(code), got \(error)", sourceLocation: sourceLocation)
    }
}

extension LocalServer {
    /// SIGSTOP / SIGCONT: the server keeps its socket but stops answering. Returns once every thread of it is stopped
    /// (`kill` returns before the signal reached a thread running on another CPU, which could still answer).
    func pause() throws {
        let pid = try #require(self.pid)
        Glibc.kill(pid, SIGSTOP)
        let deadline = ContinuousClock.now + .seconds(5)
        while !Self.allThreadsStopped(pid) {
            guard ContinuousClock.now < deadline else { throw LocalServerError(message: "memcached (pid \(pid)) did not stop after SIGSTOP") }
            usleep(1_000)
        }
    }

    private static func allThreadsStopped(_ pid: pid_t) -> Bool {
        guard let threads = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"), !threads.isEmpty else { return false }
        return threads.allSatisfy { thread in
            // The state is the field after the command's closing parenthesis: `T` (stopped) or `t` (traced).
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(thread)/stat", encoding: .utf8),
                let end = stat.lastIndex(of: ")")
            else { return false }
            let state = stat[stat.index(after: end)...].drop { $0 == " " }.first
            return state == "T" || state == "t"
        }
    }

    func resume() throws {
        let pid = try #require(self.pid)
        Glibc.kill(pid, SIGCONT)
    }
}

extension ByteBuffer {
    var text: String { String(buffer: self) }
}

/// `withLocalServer(.memcached)`, ending the server with SIGKILL when done.
///
/// memcached started from a test inherits a signal mask with SIGTERM blocked (spawned from a Swift concurrency
/// thread), so `LocalServer.stop()`'s SIGTERM waits its full 5 s before SIGKILL; killing first keeps tests fast.
func withMemcached<T>(arguments: [String] = [], _ body: (LocalServer) async throws -> T) async throws -> T {
    try await withLocalServer(.memcached, arguments: arguments) { server in
        defer { server.kill() }
        return try await body(server)
    }
}
