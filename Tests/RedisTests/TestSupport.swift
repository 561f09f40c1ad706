import LocalServers
import NIOCore
import Synchronization
import Testing

@testable import Redis

/// Fails the test instead of hanging when `body` does not finish in time.
func withTimeout<T: Sendable>(
    _ duration: Duration = .seconds(20),
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: duration)
            return nil
        }
        defer { group.cancelAll() }
        guard case .some(.some(let result)) = try await group.next() else {
            Issue.record("timed out after \(duration)", sourceLocation: sourceLocation)
            throw TimedOut()
        }
        return result
    }
}

struct TimedOut: Error {}

extension LocalServer {
    func redisConfiguration(
        authentication: RedisConnectionConfiguration.Authentication? = nil,
        database: Int? = nil,
        commandTimeout: Duration? = .seconds(10)
    ) -> RedisConnectionConfiguration {
        RedisConnectionConfiguration(host: host, port: port, authentication: authentication, database: database, commandTimeout: commandTimeout)
    }
}

extension RedisConnection {
    /// Connects to a local server, from tests.
    static func connect(to server: LocalServer, authentication: RedisConnectionConfiguration.Authentication? = nil, database: Int? = nil) async throws -> RedisConnection {
        try await connect(configuration: server.redisConfiguration(authentication: authentication, database: database))
    }
}

/// A value shared with `@Sendable` callbacks.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    var value: Value { mutex.withLock { $0 } }
    func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
}
