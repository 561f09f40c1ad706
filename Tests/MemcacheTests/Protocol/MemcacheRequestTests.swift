import NIOCore
import Testing

@testable import Memcache

@Suite struct MemcacheRequestTests {
    private func wire(_ request: MemcacheRequest) -> String {
        var buffer = ByteBuffer()
        request.encode(into: &buffer)
        return String(buffer: buffer)
    }

    /// Requests encode to the exact protocol bytes.
    @Test func encoding() {
        #expect(wire(.get(["a"])) == "get a\r\n")
        #expect(wire(.get(["a", "H:gw:1"])) == "get a H:gw:1\r\n")
        #expect(wire(.gets(["a"])) == "gets a\r\n")
        #expect(wire(.store(.set, key: "k", flags: 768, exptime: 60, data: ByteBuffer(string: "a\r\nb"))) == "set k 768 60 4\r\na\r\nb\r\n")
        #expect(wire(.store(.add, key: "k", flags: 0, exptime: -1, data: ByteBuffer())) == "add k 0 -1 0\r\n\r\n")
        #expect(wire(.delete("k")) == "delete k\r\n")
        #expect(wire(.touch("k", exptime: 5)) == "touch k 5\r\n")
        #expect(wire(.version) == "version\r\n")
    }

    /// Keys memcached would misparse are refused with `.invalidKey`; legal keys pass.
    @Test func keyRules() throws {
        for bad in ["", String(repeating: "k", count: 251), "a b", "a\tb", "a\r\nb", "a\u{01}", "a\u{7F}", "é" + String(repeating: "k", count: 249)] {
            #expect(throws: MemcacheError.self, "\(bad.debugDescription)") { try MemcacheKey.validate(bad) }
            #expect((try? MemcacheRequest.get([bad]).validate(maximumValueSize: 10)) == nil)
        }
        for good in ["k", String(repeating: "k", count: 250), "H:gw-host:123", "clé"] {
            try MemcacheKey.validate(good)
        }
        #expect((try? MemcacheRequest.get([]).validate(maximumValueSize: 10)) == nil)
    }

    /// A value above the configured maximum is refused before sending.
    @Test func valueSizeRule() throws {
        let big = MemcacheRequest.store(.set, key: "k", flags: 0, exptime: 0, data: ByteBuffer(repeating: 0, count: 11))
        do {
            try big.validate(maximumValueSize: 10)
            Issue.record("no error")
        } catch {
            #expect(error.code == .valueTooLarge)
        }
        try MemcacheRequest.store(.set, key: "k", flags: 0, exptime: 0, data: ByteBuffer(repeating: 0, count: 10)).validate(maximumValueSize: 10)
    }

    /// pecl memcache's key rewriting: control bytes and spaces become `_`, cut to 250 bytes.
    @Test func peclStoredKey() {
        #expect(MemcacheKey.peclMemcacheStoredKey("a b\tc") == "a_b_c")
        #expect(MemcacheKey.peclMemcacheStoredKey(String(repeating: "x", count: 300))?.utf8.count == 250)
        #expect(MemcacheKey.peclMemcacheStoredKey("k", prefix: "p ") == "p_k")
        #expect(MemcacheKey.peclMemcacheStoredKey("") == nil)
    }
}
