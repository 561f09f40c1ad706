/// A wait in a test or benchmark that did not end in time.
public struct WaitTimedOut: Error, CustomStringConvertible {
    public let description: String
}

/// Polls `condition` until it holds; throws after `timeout` instead of hanging.
public func eventually(
    _ what: String,
    timeout: Duration = .seconds(10),
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw WaitTimedOut(description: "timed out after \(timeout) waiting for \(what)")
}

/// Runs `body`, which must finish within `timeout`: a hang becomes an error.
public func withTimeout<T: Sendable>(
    _ timeout: Duration = .seconds(20),
    _ what: String = "the operation",
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard case .some(.some(let result)) = try await group.next() else {
            throw WaitTimedOut(description: "\(what) did not finish within \(timeout)")
        }
        return result
    }
}
