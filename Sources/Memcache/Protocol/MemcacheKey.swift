/// memcached key rules, checked before a request is written.
///
/// memcached answers a bad key in a storage command with `CLIENT_ERROR` and then parses the data block as a
/// command, so the connection desyncs; refusing such keys up front keeps every connection usable.
public enum MemcacheKey {
    /// memcached's `KEY_MAX_LENGTH`.
    public static let maximumLength = 250

    /// Throws `.invalidKey` unless `key` is 1–250 bytes with no space, control character or DEL.
    public static func validate(_ key: String) throws(MemcacheError) {
        let bytes = key.utf8
        guard !bytes.isEmpty else { throw MemcacheError(.invalidKey, "empty key") }
        guard bytes.count <= maximumLength else {
            throw MemcacheError(.invalidKey, "key of \(bytes.count) bytes exceeds \(maximumLength)")
        }
        if let index = bytes.firstIndex(where: { $0 <= 0x20 || $0 == 0x7F }) {
            let offset = bytes.distance(from: bytes.startIndex, to: index)
            throw MemcacheError(.invalidKey, "key has byte 0x\(String(bytes[index], radix: 16)) at offset \(offset)")
        }
    }

    /// The key pecl memcache actually stores for `key` (`mmc_prepare_key_ex`): bytes up to 0x20 become `_`, and
    /// the result is cut to 250 bytes. Use it to look up values PHP wrote under keys with spaces; `nil` for an
    /// empty key, which pecl refuses.
    public static func peclMemcacheStoredKey(_ key: String, prefix: String = "") -> String? {
        guard !key.isEmpty else { return nil }
        let bytes = (Array(prefix.utf8) + Array(key.utf8)).prefix(maximumLength).map { $0 <= 0x20 ? UInt8(ascii: "_") : $0 }
        // Cutting inside a UTF-8 sequence is what pecl does too; decoding repairs it, so the caller gets a key
        // that may differ in its last character from the stored one only in that rare case.
        return String(decoding: bytes, as: UTF8.self)
    }
}
