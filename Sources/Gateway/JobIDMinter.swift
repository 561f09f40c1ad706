import Crypto
import Foundation
import JobStore
import JobgateSupport
import Logging
import Redis
import Synchronization

/// Mints job ids: 128 random bits and a 64-bit HMAC of them, in lowercase base32 (39 characters, URL-safe).
///
/// The MAC lets any gateway of a deployment tell an id it issued whose record expired (`EXPIRED`) from one
/// nobody issued (`NOT_FOUND`) without storing ids. It signs with one key and accepts the MAC of any key of the
/// deployment's key ring (`JobIDKeyring`).
struct JobIDMinter: Sendable {
    let signingKey: [UInt8]
    /// The signing key first.
    let keys: [[UInt8]]
    /// One HMAC per key with its key schedule done (two SHA-256 blocks, a key object and buffers per id otherwise:
    /// a twentieth of the gateway's time went to checking ids); a MAC is computed on a copy of it.
    private let authenticators: [Authenticator]
    static let randomBytes = 16
    static let macBytes = 8

    /// Signs with `key`, accepts ids signed with it or with any of `alsoAccepted`.
    init(key: [UInt8], alsoAccepted: [[UInt8]] = []) {
        self.signingKey = key
        var keys = [key]
        for other in alsoAccepted where !keys.contains(other) { keys.append(other) }
        self.keys = keys
        self.authenticators = keys.map(Authenticator.init)
    }

    func mint() -> JobID { mint(1)[0] }

    /// `count` ids from one draw of random bytes, one `getrandom` system call for the batch (`SymmetricKey(size:)`
    /// made two per id, 2 % of the gateway's time under a stream of `SUBMIT`s; asked per byte, a tenth of it).
    func mint(_ count: Int) -> [JobID] {
        guard count > 0 else { return [] }
        let size = Self.randomBytes
        let random = SystemRandomBytes.bytes(size * count)
        return (0..<count).map { index in
            let bytes = random[(index * size)..<((index + 1) * size)]
            return JobID(rawValue: Base32.encode(Array(bytes) + authenticators[0].mac(bytes)))!
        }
    }

    /// Whether this deployment issued `id`, spelled exactly as minted (the MAC is checked in constant time).
    func isGenuine(_ id: String) -> Bool {
        guard let bytes = Base32.decode(id), bytes.count == Self.randomBytes + Self.macBytes else { return false }
        let random = bytes[..<Self.randomBytes]
        let given = bytes[Self.randomBytes...]
        return authenticators.contains { authenticator in
            var difference: UInt8 = 0
            for (a, b) in zip(authenticator.mac(random), given) { difference |= a ^ b }
            return difference == 0
        }
    }

    /// `HMAC` holds its hashers copy-on-write, so a copy of a keyed one can be used by any thread while the original
    /// is never changed; it is not marked `Sendable`, hence the unchecked wrapper.
    private struct Authenticator: @unchecked Sendable {
        private let keyed: HMAC<SHA256>

        init(key: [UInt8]) {
            keyed = HMAC(key: SymmetricKey(data: key))
        }

        func mac(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
            var authenticator = keyed
            authenticator.update(data: bytes)
            return Array(authenticator.finalize().prefix(JobIDMinter.macBytes))
        }

        func mac(_ bytes: [UInt8]) -> [UInt8] { mac(bytes[...]) }
    }
}

/// The deployment's id keys, kept in Redis so every gateway signs and checks alike: `<prefix>id-key` holds the key
/// new ids are signed with, `<prefix>id-keys` (a set) every key ids were ever signed with.
///
/// Redis may lose them (restarted without persistence, flushed, failed over to an empty replica) while gateways
/// run with the keys cached. So after every (re)connect, and every `interval` for the gateways that did not see the
/// loss, each gateway re-asserts what it knows (`SET NX` of its signing key, `SADD` of all its keys) and re-reads
/// both. The first gateway back restores the old key; one that started meanwhile with a fresh key and won the
/// `SET NX` race keeps it as the signing key, which the others adopt (logged at warning) while their old key stays
/// in the set: ids handed out under either key stay readable everywhere, and no gateway accepts a key that is not
/// the deployment's (only gateways write them, and only the keys they were given or made). Keys are never dropped,
/// so the set grows by one key per such race.
final class JobIDKeyring: Sendable {
    /// Read per request (`mint`, `isGenuine`): an uncontended lock around an immutable snapshot, replaced whole on
    /// a change (rare).
    private let minter: Mutex<JobIDMinter>
    private let redis: RedisConnectionPool
    private let keyName: String
    private let ringName: String
    private let logger: Logger

    private init(minter: JobIDMinter, redis: RedisConnectionPool, prefix: String, logger: Logger) {
        self.minter = Mutex(minter)
        self.redis = redis
        self.keyName = "\(prefix)id-key"
        self.ringName = "\(prefix)id-keys"
        self.logger = logger
    }

    /// Loads the deployment's keys from Redis, creating the first one if this is the first gateway.
    static func load(from redis: RedisConnectionPool, prefix: String, logger: Logger) async throws -> JobIDKeyring {
        let fresh = SymmetricKey(size: .bits256).withUnsafeBytes { [UInt8]($0) }
        let keyring = JobIDKeyring(minter: JobIDMinter(key: fresh), redis: redis, prefix: prefix, logger: logger)
        try await keyring.synchronize(isFirst: true)
        return keyring
    }

    func mint() -> JobID { minter.withLock { $0 }.mint() }

    func mint(_ count: Int) -> [JobID] { minter.withLock { $0 }.mint(count) }

    func isGenuine(_ id: String) -> Bool { minter.withLock { $0 }.isGenuine(id) }

    /// Synchronizes every `interval`, and whenever `reconnected` yields, until cancelled.
    func run(every interval: Duration, reconnected: AsyncStream<Void>) async {
        let (nudges, nudge) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        await withDiscardingTaskGroup { group in
            group.addTask {
                for await _ in reconnected { nudge.yield() }
            }
            group.addTask {
                while (try? await Task.sleep(for: interval)) != nil { nudge.yield() }
                nudge.finish()
            }
            for await _ in nudges {
                do { try await synchronize() } catch {
                    logger.debug("Could not synchronize the job id keys with Redis", metadata: ["redis.error": "\(error)"])
                }
            }
            group.cancelAll()
        }
    }

    /// Re-asserts this gateway's keys in Redis and adopts what Redis then holds.
    func synchronize() async throws {
        try await synchronize(isFirst: false)
    }

    /// On the first load the fresh key is only proposed: added to the set only if it won, so that starting a
    /// gateway adds no key.
    private func synchronize(isFirst: Bool) async throws {
        let known = minter.withLock { $0 }
        _ = try await redis.send(["SET", "\(keyName)", "\(Self.encode(known.signingKey))", "NX"])
        guard let stored = try await redis.send(["GET", "\(keyName)"]).string.flatMap(Self.decode) else {
            throw JobStoreError(.unexpectedReply, "\(keyName) in Redis does not hold a base64 key")
        }
        let asserted = isFirst ? [stored] : known.keys + [stored]
        _ = try await redis.send(RedisCommand("SADD", [RedisArgument(ringName)] + asserted.map { RedisArgument(Self.encode($0)) }))
        let ring = (try await redis.send(["SMEMBERS", "\(ringName)"]).array ?? []).compactMap { $0.string.flatMap(Self.decode) }
        let updated = JobIDMinter(key: stored, alsoAccepted: asserted + ring)
        minter.withLock { $0 = updated }
        if !isFirst && known.signingKey != stored {
            logger.warning(
                "Redis holds another job id signing key (it lost its data and another gateway wrote a new key): signing with that one, still accepting ids of the old",
                metadata: ["jobgate.id_keys": "\(updated.keys.count)"]
            )
        }
    }

    private static func encode(_ key: [UInt8]) -> String { Data(key).base64EncodedString() }

    private static func decode(_ text: String) -> [UInt8]? {
        guard let bytes = Data(base64Encoded: text), bytes.count >= 16 else { return nil }
        return [UInt8](bytes)
    }
}

/// RFC 4648 base32 without padding, lowercase.
enum Base32 {
    private static let alphabet = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var output: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for byte in bytes {
            buffer = (buffer << 8) | UInt32(byte)
            bits += 8
            while bits >= 5 {
                output.append(alphabet[Int((buffer >> UInt32(bits - 5)) & 31)])
                bits -= 5
            }
        }
        if bits > 0 { output.append(alphabet[Int((buffer << UInt32(5 - bits)) & 31)]) }
        return String(decoding: output, as: UTF8.self)
    }

    /// Each ASCII byte's value in the alphabet, 0xFF where it is none.
    private static let values: [UInt8] = {
        var values = [UInt8](repeating: 0xFF, count: 256)
        for (value, character) in alphabet.enumerated() { values[Int(character)] = UInt8(value) }
        return values
    }()

    /// The bytes, if `text` is their one canonical spelling: the bits left over after the last whole byte must be
    /// zero (else 8 spellings of 24 bytes would decode alike) and fewer than 5 (else a character is extra).
    static func decode(_ text: String) -> [UInt8]? {
        var output: [UInt8] = []
        output.reserveCapacity(text.utf8.count * 5 / 8)
        var buffer: UInt32 = 0
        var bits = 0
        for character in text.utf8 {
            let value = values[Int(character)]
            guard value != 0xFF else { return nil }
            buffer = (buffer << 5) | UInt32(value)
            bits += 5
            if bits >= 8 {
                output.append(UInt8((buffer >> UInt32(bits - 8)) & 0xFF))
                bits -= 8
            }
        }
        guard bits < 5, buffer & ((1 << UInt32(bits)) - 1) == 0 else { return nil }
        return output
    }
}
