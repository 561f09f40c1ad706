import Testing

@testable import Memcache

@Suite struct MemcacheServerSelectorTests {
    /// The hash primitives match their published test vectors.
    @Test func hashVectors() {
        #expect(MemcacheHash.crc32(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(MemcacheHash.oneAtATime(Array("a".utf8)) == 0xCA2E_9442)
        #expect(MemcacheHash.oneAtATime(Array("The quick brown fox jumps over the lazy dog".utf8)) == 0x519E_91F5)
        let hex = { (bytes: [UInt8]) in bytes.map { String($0, radix: 16) }.map { $0.count == 1 ? "0" + $0 : $0 }.joined() }
        #expect(hex(MD5.digest([])) == "d41d8cd98f00b204e9800998ecf8427e")
        #expect(hex(MD5.digest(Array("abc".utf8))) == "900150983cd24fb0d6963f7d28e17f72")
        #expect(hex(MD5.digest(Array("The quick brown fox jumps over the lazy dog".utf8))) == "9e107d9d372bb6826bd81d3542a419d6")
        // 56 and 64 bytes: padding into a second block.
        #expect(hex(MD5.digest(Array(repeating: UInt8(ascii: "a"), count: 56))) == "3b0c8ac703f828b04c6c197006d17218")
        #expect(hex(MD5.digest(Array(repeating: UInt8(ascii: "a"), count: 64))) == "014842d480b571495a4a0363793f7367")
    }

    /// libmemcached reads keys as signed chars: bytes ≥ 0x80 are sign-extended.
    @Test func oneAtATimeSignExtends() {
        var value: UInt32 = 0
        value &+= 0xFFFF_FFE9  // (int8)0xE9
        value &+= value << 10
        value ^= value >> 6
        value &+= value << 3
        value ^= value >> 11
        value &+= value << 15
        #expect(MemcacheHash.oneAtATime([0xE9]) == value)
    }

    /// Bad server lists are refused with `.invalidConfiguration`.
    @Test func invalidConfiguration() {
        let a = MemcacheServer(host: "127.0.0.1", port: 1)
        let b = MemcacheServer(host: "127.0.0.1", port: 2)
        #expect(throws: MemcacheError.self) { try MemcacheServerSelector(servers: [], distribution: .peclMemcacheConsistent) }
        #expect(throws: MemcacheError.self) { try MemcacheServerSelector(servers: [a, b], distribution: .single) }
        #expect(throws: MemcacheError.self) { try MemcacheServerSelector(servers: [MemcacheServer(host: "h", port: 0)], distribution: .single) }
        #expect(throws: MemcacheError.self) {
            try MemcacheServerSelector(servers: [MemcacheServer(host: "h", port: 1, weight: -1)], distribution: .phpMemcachedKetama)
        }
    }

    /// With one server every distribution picks it; with several each key maps to a valid index, stably.
    @Test(arguments: [
        MemcacheDistribution.peclMemcacheConsistent, .peclMemcacheStandard, .phpMemcachedModula, .phpMemcachedConsistent,
        .phpMemcachedKetama,
    ])
    func selection(_ distribution: MemcacheDistribution) throws {
        let one = try MemcacheServerSelector(servers: [MemcacheServer(host: "cache1")], distribution: distribution)
        #expect(one.serverIndex(forKey: "anything") == 0)
        let servers = (1...4).map { MemcacheServer(host: "10.0.0.\($0)") }
        let selector = try MemcacheServerSelector(servers: servers, distribution: distribution)
        var counts = [0, 0, 0, 0]
        for i in 0..<2000 {
            let index = selector.serverIndex(forKey: "k\(i)")
            counts[index] += 1
            #expect(index == selector.serverIndex(forKey: "k\(i)"))
        }
        #expect(counts.allSatisfy { $0 > 200 }, "\(counts)")
    }
}
