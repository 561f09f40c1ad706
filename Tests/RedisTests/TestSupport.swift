import LocalServers
import NIOCore
import Synchronization
import Testing

@testable import Redis


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
