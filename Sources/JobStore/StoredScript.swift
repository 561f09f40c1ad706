import Crypto
import NIOCore
import Redis

/// A Lua script called by its SHA1 (`EVALSHA`). Redis keeps every script it ran, so the text crosses the wire (and
/// Redis hashes it) only when Redis answers `NOSCRIPT`, after a restart or a `SCRIPT FLUSH`: then the call is sent
/// again as `EVAL`, which caches the script once more.
struct StoredScript: Sendable {
    let source: RedisArgument
    let sha1: RedisArgument

    init(_ source: String) {
        self.source = RedisArgument(source)
        self.sha1 = RedisArgument(Insecure.SHA1.hash(data: Array(source.utf8)).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined())
    }

    /// `EVALSHA` of this script with `keys` and `arguments`.
    func call(keys: [RedisArgument], arguments: [RedisArgument]) -> RedisCommand {
        RedisCommand("EVALSHA", [sha1, RedisArgument(keys.count)] + keys + arguments)
    }

    /// The same call with the script's text (`EVAL`): for a call that Redis answered `NOSCRIPT`.
    func withSource(_ call: RedisCommand) -> RedisCommand {
        var arguments = call.arguments
        arguments[0] = ByteBuffer(string: "EVAL")
        arguments[1] = source.bytes
        return RedisCommand(arguments)
    }

    /// Whether `error` says Redis does not have the script (any more).
    static func isMissing(_ error: RedisError) -> Bool {
        error.serverErrorPrefix == "NOSCRIPT"
    }
}
