public import Redis

/// Keyspace notifications the gateway needs: keyevent (`E`) for hash writes (`h`) and expiries (`x`) (the change feed),
/// and stream appends (`t`, the completion log that subscriptions follow).
public enum KeyspaceNotifications {
    public static let requiredFlags: Set<Character> = ["E", "h", "t", "x"]

    /// Checks `notify-keyspace-events` and adds the missing flags with `CONFIG SET`. Where CONFIG is not
    /// allowed (managed Redis often forbids it), the error names the redis.conf line to add instead.
    public static func ensureEnabled(on redis: RedisConnectionPool) async throws(JobStoreError) {
        let current: String
        do {
            let reply = try await redis.send(["CONFIG", "GET", "notify-keyspace-events"])
            guard let values = reply.array, values.count == 2, let flags = values[1].string else {
                throw JobStoreError(.unexpectedReply, "CONFIG GET answered \(reply)")
            }
            current = flags
        } catch let error as JobStoreError {
            throw error
        } catch let error as RedisError where error.code != .serverError && error.code != .authenticationFailed {
            throw JobStoreError(redis: error)  // Redis is unreachable: that says nothing about its notifications
        } catch {
            throw disabled(current: nil, because: error)
        }
        let missing = missingFlags(in: current)
        guard !missing.isEmpty else { return }
        let wanted = merged(current, missing)
        do {
            _ = try await redis.send(["CONFIG", "SET", "notify-keyspace-events", "\(wanted)"])
        } catch {
            throw disabled(current: current, because: error)
        }
    }

    /// Required flags not covered by `flags` (`A` stands for every class, `h`, `t` and `x` included).
    static func missingFlags(in flags: String) -> [Character] {
        let present = Set(flags)
        return requiredFlags.sorted().filter { flag in
            !present.contains(flag) && !(flag != "E" && present.contains("A"))
        }
    }

    static func merged(_ flags: String, _ missing: [Character]) -> String {
        flags + String(missing)
    }

    private static func disabled(current: String?, because error: any Error) -> JobStoreError {
        let line = "notify-keyspace-events \(merged(current ?? "", missingFlags(in: current ?? "")))"
        return JobStoreError(
            .notificationsDisabled,
            "Redis keyspace notifications are off and CONFIG is not allowed (\(error)); add `\(line)` to redis.conf (or your provider's parameter group) and restart"
        )
    }
}
