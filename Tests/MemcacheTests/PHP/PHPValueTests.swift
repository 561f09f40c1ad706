import NIOCore
import Testing

@testable import Memcache

@Suite struct PHPValueTests {
    private func decode(_ flags: UInt32, _ bytes: [UInt8], _ writer: PHPMemcacheExtension, maximum: Int = 1 << 20) throws -> PHPValue {
        try PHPValue(flags: flags, data: ByteBuffer(bytes: bytes), writtenBy: writer, maximumDecompressedSize: maximum)
    }

    private func code(_ body: () throws -> PHPValue) -> MemcacheError.Code? {
        do {
            _ = try body()
            return nil
        } catch {
            return (error as? MemcacheError)?.code
        }
    }

    /// The flag layouts of §5: the same bytes mean different things to each extension.
    @Test func flagsPerExtension() throws {
        #expect(try decode(0x300, Array("120".utf8), .peclMemcache) == .integer(120))
        #expect(try decode(0, Array("120".utf8), .peclMemcache) == .string(ByteBuffer(string: "120")))
        #expect(try decode(0x700, Array("1.5".utf8), .peclMemcache) == .float(1.5))
        #expect(try decode(0x100, Array("0".utf8), .peclMemcache) == .bool(false))
        #expect(try decode(1, Array("N;".utf8), .peclMemcache) == .null)
        #expect(try decode(1, Array("120".utf8), .phpMemcached) == .integer(120))
        #expect(try decode(3, [], .phpMemcached) == .bool(false))
        #expect(try decode(4, Array("N;".utf8), .phpMemcached) == .null)
        // User flag bits (16–31) do not change the type.
        #expect(try decode(0x1_0300, Array("7".utf8), .peclMemcache) == .integer(7))
        #expect(try decode(0x2_0001, Array("7".utf8), .phpMemcached) == .integer(7))
        guard case .serialized(let igbinary) = try decode(5, [0, 0, 0, 2, 20, 0], .phpMemcached) else { Issue.record("igbinary"); return }
        #expect(igbinary.format == .igbinary && igbinary.kind == .other)
        guard case .serialized(let json) = try decode(6, Array("{\"a\":1}".utf8), .phpMemcached) else { Issue.record("json"); return }
        #expect(json.format == .json)
    }

    /// pecl's zlib flag on a serialized array: inflated, then kept as serialized text.
    @Test func peclCompressedSerialized() throws {
        let text = "a:1:{s:1:\"k\";s:40:\"" + String(repeating: "x", count: 40) + "\";}"
        guard case .serialized(let value) = try decode(3, Zlib.compress(Array(text.utf8)), .peclMemcache) else {
            Issue.record("not serialized"); return
        }
        #expect(value.kind == .array && value.text == text)
    }

    /// Values that do not match their flags are `.invalidValue`.
    @Test func invalidValues() {
        #expect(code { try decode(0x300, Array("12a".utf8), .peclMemcache) } == .invalidValue)
        #expect(code { try decode(0x700, Array("one".utf8), .peclMemcache) } == .invalidValue)
        #expect(code { try decode(0x100, Array("yes".utf8), .peclMemcache) } == .invalidValue)
        #expect(code { try decode(0x200, Array("1".utf8), .peclMemcache) } == .invalidValue)
        #expect(code { try decode(1, Array("99999999999999999999".utf8), .phpMemcached) } == .invalidValue)
        #expect(code { try decode(9, [], .phpMemcached) } == .invalidValue)
    }

    /// Corrupt, truncated or oversized compressed data is `.decompressionFailed`, never a crash.
    @Test func badCompressedData() {
        let compressed = Zlib.compress(Array(repeating: UInt8(ascii: "z"), count: 10_000))
        #expect(code { try decode(2, Array(compressed.prefix(compressed.count / 2)), .peclMemcache) } == .decompressionFailed)
        #expect(code { try decode(2, Array("not zlib".utf8), .peclMemcache) } == .decompressionFailed)
        #expect(code { try decode(2, compressed, .peclMemcache, maximum: 9_999) } == .decompressionFailed)
        #expect((try? decode(2, compressed, .peclMemcache, maximum: 10_000))?.string?.count == 10_000)

        let lengthPrefix: [UInt8] = [0x10, 0x27, 0, 0]  // 10,000 little-endian
        #expect((try? decode(0x30, lengthPrefix + compressed, .phpMemcached))?.string?.count == 10_000)
        #expect(code { try decode(0x30, [0x11, 0x27, 0, 0] + compressed, .phpMemcached) } == .decompressionFailed)
        #expect(code { try decode(0x30, [0x10, 0x27], .phpMemcached) } == .decompressionFailed)
        #expect(code { try decode(0x10, lengthPrefix + compressed, .phpMemcached) } == .decompressionFailed)
        #expect(code { try decode(0x50, [0xFF, 0xFF, 0xFF, 0x7F, 0], .phpMemcached) } == .decompressionFailed)
    }

    /// FastLZ instructions decoded by hand: literal runs, short and long matches, overlapping runs, level 2's
    /// extended lengths and far distances; and every kind of corrupt input is rejected.
    @Test func fastLZ() throws {
        // Level 1: literal "abc" (ctrl 2), then match len 3+0 at distance 3 (ctrl 0b001_00000, ofs 2) → "abcabc".
        #expect(try FastLZ.decompress([2, 97, 98, 99, 0x20, 2], expectedSize: 6) == Array("abcabc".utf8))
        // Overlapping run: "a" then match len 3+6+4=13 at distance 1 (ctrl 0b111_00000, extra 4, ofs 0).
        #expect(try FastLZ.decompress([0, 97, 0xE0, 4, 0], expectedSize: 14) == Array(repeating: 97, count: 14))
        // Level 2 (first byte 0b001_xxxxx): extended length 255 + 1 → match of 3+6+256 bytes.
        #expect(try FastLZ.decompress([0x20, 97, 0xE0, 255, 1, 0], expectedSize: 266) == Array(repeating: 97, count: 266))
        // Level 2 far distance: 9000 literal bytes then a match 8192 + 808 + 1 = 9000 bytes back.
        var input: [UInt8] = []
        var literal: [UInt8] = []
        for i in 0..<9000 { literal.append(UInt8(truncatingIfNeeded: i * 31 + i / 7)) }
        for chunk in stride(from: 0, to: 9000, by: 32) {
            let run = literal[chunk..<min(chunk + 32, 9000)]
            input.append(UInt8(run.count - 1))
            input.append(contentsOf: run)
        }
        input[0] |= 0x20
        let far = 9000 - 8191 - 1
        input += [0x20 | 31, 255, UInt8(far >> 8), UInt8(far & 0xFF)]
        #expect(try FastLZ.decompress(input, expectedSize: 9003) == literal + literal.prefix(3))

        for (bad, size) in [([UInt8](), 1), ([0x40, 97], 1), ([5, 97], 6), ([0, 97, 0x20, 5], 4), ([0, 97], 2), ([0, 97, 0xE0], 10), ([2, 97, 98, 99], 2)] {
            #expect(throws: MemcacheError.self, "\(bad)") { try FastLZ.decompress(bad, expectedSize: size) }
        }
    }

    /// Encodings for writes use each extension's own marks; the portable string is plain bytes with flags 0.
    @Test func encoding() throws {
        #expect(PHPValue.portableString("x") == MemcacheValue(flags: 0, data: ByteBuffer(string: "x")))
        #expect(try PHPValue.integer(5).encoded(for: .peclMemcache) == MemcacheValue(flags: 0x300, data: ByteBuffer(string: "5")))
        #expect(try PHPValue.integer(5).encoded(for: .phpMemcached) == MemcacheValue(flags: 1, data: ByteBuffer(string: "5")))
        #expect(try PHPValue.bool(false).encoded(for: .phpMemcached).data.readableBytes == 0)
        #expect(throws: MemcacheError.self) {
            try PHPValue.serialized(PHPSerializedValue(format: .json, bytes: ByteBuffer(string: "{}"))).encoded(for: .peclMemcache)
        }
        for writer in [PHPMemcacheExtension.peclMemcache, .phpMemcached] {
            for value in [PHPValue.integer(-9), .float(0.1), .bool(true), .bool(false), .null, .string(ByteBuffer(string: "s"))] {
                let stored = try value.encoded(for: writer)
                #expect(try PHPValue(flags: stored.flags, data: stored.data, writtenBy: writer) == value)
            }
        }
    }
}
