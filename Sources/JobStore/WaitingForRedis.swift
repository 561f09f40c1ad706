public import Logging
import Redis

/// Redis may come up after a jobgate process (boot order, a restart at the same moment): the gateway and the
/// worker both wait for it at start, logging once (and every 30th try), rather than exit. What waiting cannot fix
/// (a refused password, notifications that cannot be enabled) still ends the start.
public func untilRedisAnswers<T>(at address: String, logger: Logger, _ body: () async throws -> T) async throws -> T {
    var attempt = 0
    while true {
        do {
            let result = try await body()
            if attempt > 0 { logger.info("Redis answers", metadata: ["redis.server": "\(address)", "redis.attempts": "\(attempt + 1)"]) }
            return result
        } catch let error where isRedisUnreachable(error) {
            attempt += 1
            if attempt == 1 || attempt % 30 == 0 {
                logger.warning("waiting for Redis at \(address)", metadata: ["redis.error": "\(error)", "redis.attempts": "\(attempt)"])
            }
            try await Task.sleep(for: .milliseconds(min(1_000, 50 << min(attempt, 5))))
        }
    }
}

/// Whether `error` says Redis is not there (yet), as opposed to a refusal that waiting cannot change.
func isRedisUnreachable(_ error: any Error) -> Bool {
    if let error = error as? JobStoreError { return error.code == .backendDown }
    if let error = error as? RedisError { return ![.serverError, .authenticationFailed].contains(error.code) }
    return false
}
