import Crypto
import Foundation
import JobStore
import Redis

/// Mints job ids: 128 random bits and a 64-bit HMAC of them, in lowercase base32 (39 characters, URL-safe).
///
/// The MAC lets any gateway of a deployment tell an id it issued whose record expired (`EXPIRED`) from one
/// nobody issued (`NOT_FOUND`) without storing ids. The key lives in Redis, created once by whichever gateway
/// starts first, so every gateway shares it and ids survive restarts.
struct JobIDMinter: Sendable {
    /// The raw key: `SymmetricKey` and `HMAC` are not `Sendable`, so one is made per use (cheap).
    private let key: [UInt8]
    static let randomBytes = 16
    static let macBytes = 8

    init(key: [UInt8]) {
        self.key = key
    }

    /// Loads the deployment's id key from Redis, creating it if this is the first gateway.
    static func load(from redis: RedisConnectionPool, prefix: String) async throws -> JobIDMinter {
        let keyName = "\(prefix)id-key"
        let fresh = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0).base64EncodedString() }
        _ = try await redis.send(["SET", "\(keyName)", "\(fresh)", "NX"])
        guard let stored = try await redis.send(["GET", "\(keyName)"]).string, let bytes = Data(base64Encoded: stored), bytes.count >= 16 else {
            throw JobStoreError(.unexpectedReply, "\(keyName) in Redis does not hold a base64 key")
        }
        return JobIDMinter(key: [UInt8](bytes))
    }

    func mint() -> JobID {
        // BoringSSL's generator (behind `SymmetricKey`) reseeds from the kernel now and then; the standard library's
        // makes a getrandom system call per 8 bytes, which was a tenth of the gateway's time under a stream of SUBMITs.
        let random = SymmetricKey(size: .bits128).withUnsafeBytes { [UInt8]($0) }
        return JobID(rawValue: Base32.encode(random + mac(random)))!
    }

    /// Whether this deployment issued `id`, spelled exactly as minted (the MAC is checked in constant time).
    func isGenuine(_ id: String) -> Bool {
        guard let bytes = Base32.decode(id), bytes.count == Self.randomBytes + Self.macBytes else { return false }
        let random = Array(bytes.prefix(Self.randomBytes))
        let expected = mac(random)
        var difference: UInt8 = 0
        for (a, b) in zip(expected, bytes.suffix(Self.macBytes)) { difference |= a ^ b }
        return difference == 0
    }

    private func mac(_ random: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: random, using: SymmetricKey(data: key)).prefix(Self.macBytes))
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

    /// The bytes, if `text` is their one canonical spelling: the bits left over after the last whole byte must be
    /// zero (else 8 spellings of 24 bytes would decode alike) and fewer than 5 (else a character is extra).
    static func decode(_ text: String) -> [UInt8]? {
        var output: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for character in text.utf8 {
            guard let value = alphabet.firstIndex(of: character) else { return nil }
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
