import JobgateSupport
import Logging
import NIOCore

/// The lazily opened connection to one server of a `MemcacheClient`, with reconnect back-off.
///
/// The first request opens the connection; concurrent requests share one connect attempt. After a failed connect
/// the server counts as down for a back-off that doubles up to a maximum: requests in that window fail at once
/// with `.serverUnavailable` instead of each waiting for a connect timeout. A dropped connection is reopened by
/// the next request.
actor MemcacheServerConnection {
    let server: MemcacheServer
    private let configuration: MemcacheClient.Configuration
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger

    private var connection: MemcacheConnection?
    private var attempt: (id: Int, task: Task<MemcacheConnection, any Error>)?
    private var attemptCounter = 0
    private var consecutiveFailures = 0
    private var downUntil: ContinuousClock.Instant?
    private var lastFailure: MemcacheError?
    private var isShutDown = false

    init(server: MemcacheServer, configuration: MemcacheClient.Configuration, eventLoopGroup: any EventLoopGroup, logger: Logger) {
        self.server = server
        self.configuration = configuration
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
    }

    func connection() async throws(MemcacheError) -> MemcacheConnection {
        guard !isShutDown else { throw MemcacheError(.connectionClosed, "client is shut down", server: server.description) }
        if let connection, connection.isActive { return connection }
        connection = nil
        if let downUntil, ContinuousClock.now < downUntil {
            throw MemcacheError(
                .serverUnavailable,
                "server is down (\(consecutiveFailures) failed connect(s)); next attempt after back-off",
                server: server.description,
                underlying: lastFailure
            )
        }
        let current: (id: Int, task: Task<MemcacheConnection, any Error>)
        if let attempt {
            current = attempt
        } else {
            attemptCounter += 1
            let (server, configuration, group, logger) = (server, configuration.connection, eventLoopGroup, logger)
            current = (attemptCounter, Task {
                try await MemcacheConnection.connect(
                    host: server.host, port: server.port, configuration: configuration, eventLoopGroup: group, logger: logger
                )
            })
            attempt = current
        }
        let result = await current.task.result
        // Only the first waiter to resume records the outcome of an attempt.
        if attempt?.id == current.id {
            attempt = nil
            switch result {
            case .success(let opened):
                consecutiveFailures = 0
                downUntil = nil
                lastFailure = nil
                if isShutDown { await opened.close() } else { connection = opened }
            case .failure(let error):
                consecutiveFailures += 1
                lastFailure = error as? MemcacheError
                downUntil = ContinuousClock.now + configuration.reconnectBackoff.delay(afterFailures: consecutiveFailures)
                logger.debug("memcached connect failed", metadata: ["memcache.server": "\(server)", "memcache.failures": "\(consecutiveFailures)"])
            }
        }
        switch result {
        case .success(let opened):
            guard !isShutDown else { throw MemcacheError(.connectionClosed, "client is shut down", server: server.description) }
            return opened
        case .failure(let error as MemcacheError):
            throw error
        case .failure(let error):
            throw MemcacheError(.connectionFailed, "cannot connect", server: server.description, underlying: error)
        }
    }

    func shutdown() async {
        isShutDown = true
        attempt?.task.cancel()
        if let connection { await connection.close() }
        connection = nil
    }
}
