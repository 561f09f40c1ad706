import NIOCore

/// The PHP extension that wrote a value: they mark types in the flags differently and cannot read each other's
/// values, so the reader has to be told.
public enum PHPMemcacheExtension: Hashable, Sendable {
    /// pecl memcache 3.x/4.x (`Memcache` class).
    case peclMemcache
    /// php-memcached 3.x on libmemcached (`Memcached` class).
    case phpMemcached
}

/// A value as PHP stored it, decoded from its flags and bytes.
public enum PHPValue: Hashable, Sendable {
    case string(ByteBuffer)
    case integer(Int64)
    case float(Double)
    case bool(Bool)
    case null
    /// An array or object: the serializer's bytes exactly as stored, never re-encoded.
    case serialized(PHPSerializedValue)

    /// The string's bytes as UTF-8 text (`nil` unless `.string`).
    public var string: String? {
        guard case .string(let buffer) = self else { return nil }
        return String(buffer: buffer)
    }
}

/// Serialized PHP data with a mark saying which serializer wrote it and what it holds.
public struct PHPSerializedValue: Hashable, Sendable {
    public enum Format: Hashable, Sendable {
        /// PHP's `serialize()` text.
        case php
        case igbinary
        case json
        case msgpack
    }

    public enum Kind: Hashable, Sendable {
        case array
        case object
        /// Another serialized value, or a format whose kind is not read here (igbinary, msgpack, json).
        case other
    }

    public var format: Format
    public var bytes: ByteBuffer

    public init(format: Format, bytes: ByteBuffer) {
        self.format = format
        self.bytes = bytes
    }

    /// From `serialize()`'s first byte: `a:` array, `O:`/`C:` object (enums `E:` count as objects too).
    public var kind: Kind {
        guard format == .php, let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self) else { return .other }
        switch first {
        case UInt8(ascii: "a"): return .array
        case UInt8(ascii: "O"), UInt8(ascii: "C"), UInt8(ascii: "E"): return .object
        default: return .other
        }
    }

    /// The serialized text (PHP `serialize()` output is text apart from string contents).
    public var text: String { String(buffer: bytes) }
}

/// Flags and bytes to store.
public struct MemcacheValue: Hashable, Sendable {
    public var flags: UInt32
    public var data: ByteBuffer

    public init(flags: UInt32, data: ByteBuffer) {
        self.flags = flags
        self.data = data
    }
}

// MARK: - Decoding

extension PHPValue {
    /// Default cap on an inflated value; compressed data could otherwise expand without bound.
    public static let defaultMaximumDecompressedSize = 32 << 20

    /// Decodes `item` as written by `writer`.
    public init(
        decoding item: MemcacheItem,
        writtenBy writer: PHPMemcacheExtension,
        maximumDecompressedSize: Int = PHPValue.defaultMaximumDecompressedSize
    ) throws(MemcacheError) {
        try self.init(flags: item.flags, data: item.data, writtenBy: writer, maximumDecompressedSize: maximumDecompressedSize)
    }

    /// Decodes stored `flags` and `data` as written by `writer`.
    ///
    /// - pecl memcache (`memcache_pool.h`): `0x2` zlib-compressed, `0x1` serialized, else type `flags & 0x0f00`:
    ///   0 string, `0x100` bool, `0x300` long, `0x700` double. Bits from `0x10000` up are the user's.
    /// - php-memcached (`php_memcached.c`): `0x10` compressed (4-byte little-endian length, then FastLZ `0x40` or
    ///   zlib `0x20`), type `flags & 0xf`: 0 string, 1 long, 2 double, 3 bool, 4 serialized, 5 igbinary,
    ///   6 json, 7 msgpack. Bits from `0x10000` up are the user's.
    public init(
        flags: UInt32,
        data: ByteBuffer,
        writtenBy writer: PHPMemcacheExtension,
        maximumDecompressedSize: Int = PHPValue.defaultMaximumDecompressedSize
    ) throws(MemcacheError) {
        switch writer {
        case .peclMemcache:
            var bytes = data
            if flags & 0x2 != 0 {
                bytes = ByteBuffer(bytes: try Zlib.inflate(Array(buffer: data), maximumSize: maximumDecompressedSize))
            }
            if flags & 0x1 != 0 {
                self = Self.unserialized(PHPSerializedValue(format: .php, bytes: bytes))
                return
            }
            switch flags & 0x0f00 {
            case 0x000: self = .string(bytes)
            case 0x100: self = .bool(try Self.bool(bytes, falseText: "0"))
            case 0x300: self = .integer(try Self.integer(bytes))
            case 0x700: self = .float(try Self.float(bytes))
            default: throw MemcacheError(.invalidValue, "pecl memcache type 0x\(String(flags & 0x0f00, radix: 16)) is not known")
            }
        case .phpMemcached:
            var bytes = data
            if flags & 0x10 != 0 {
                bytes = ByteBuffer(bytes: try Self.phpMemcachedDecompress(data, flags: flags, maximumSize: maximumDecompressedSize))
            }
            switch flags & 0xf {
            case 0: self = .string(bytes)
            case 1: self = .integer(try Self.integer(bytes))
            case 2: self = .float(try Self.float(bytes))
            case 3: self = .bool(try Self.bool(bytes, falseText: ""))
            case 4: self = Self.unserialized(PHPSerializedValue(format: .php, bytes: bytes))
            case 5: self = .serialized(PHPSerializedValue(format: .igbinary, bytes: bytes))
            case 6: self = .serialized(PHPSerializedValue(format: .json, bytes: bytes))
            case 7: self = .serialized(PHPSerializedValue(format: .msgpack, bytes: bytes))
            case let type: throw MemcacheError(.invalidValue, "php-memcached type \(type) is not known")
            }
        }
    }

    /// Both extensions store `null` as the serialized `N;`.
    private static func unserialized(_ value: PHPSerializedValue) -> PHPValue {
        value.bytes.readableBytesView.elementsEqual("N;".utf8) ? .null : .serialized(value)
    }

    private static func phpMemcachedDecompress(_ data: ByteBuffer, flags: UInt32, maximumSize: Int) throws(MemcacheError) -> [UInt8] {
        var data = data
        guard let length = data.readInteger(endianness: .little, as: UInt32.self) else {
            throw MemcacheError(.decompressionFailed, "compressed value shorter than its 4-byte length")
        }
        guard length <= maximumSize else {
            throw MemcacheError(.decompressionFailed, "compressed value announces \(length) bytes; the maximum is \(maximumSize)")
        }
        let payload = Array(buffer: data)
        if flags & 0x40 != 0 {
            return try FastLZ.decompress(payload, expectedSize: Int(length))
        }
        if flags & 0x20 != 0 {
            let inflated = try Zlib.inflate(payload, maximumSize: Int(length))
            guard inflated.count == Int(length) else {
                throw MemcacheError(.decompressionFailed, "zlib value inflated to \(inflated.count) bytes, expected \(length)")
            }
            return inflated
        }
        throw MemcacheError(.decompressionFailed, "compressed flag 0x10 without FastLZ (0x40) or zlib (0x20)")
    }

    private static func integer(_ bytes: ByteBuffer) throws(MemcacheError) -> Int64 {
        guard let value = Int64(String(buffer: bytes)) else {
            throw MemcacheError(.invalidValue, "integer value is not a decimal: \(String(reflecting: String(buffer: bytes).prefix(40)))")
        }
        return value
    }

    private static func float(_ bytes: ByteBuffer) throws(MemcacheError) -> Double {
        guard let value = Double(String(buffer: bytes)) else {
            throw MemcacheError(.invalidValue, "float value is not a number: \(String(reflecting: String(buffer: bytes).prefix(40)))")
        }
        return value
    }

    private static func bool(_ bytes: ByteBuffer, falseText: String) throws(MemcacheError) -> Bool {
        switch String(buffer: bytes) {
        case "1": return true
        case falseText, "0", "": return false
        case let text: throw MemcacheError(.invalidValue, "bool value is \(String(reflecting: text.prefix(40)))")
        }
    }
}

// MARK: - Encoding

extension PHPValue {
    /// A string stored so that both pecl memcache and php-memcached read it back as that string: flags 0, raw
    /// bytes, never compressed (each extension marks compression its own way, unreadable by the other).
    public static func portableString(_ bytes: ByteBuffer) -> MemcacheValue {
        MemcacheValue(flags: 0, data: bytes)
    }

    public static func portableString(_ text: String) -> MemcacheValue {
        portableString(ByteBuffer(string: text))
    }

    /// Flags and bytes `reader` decodes back to this value. Nothing is compressed. pecl memcache reads only PHP's
    /// own `serialize()` format, so other serialized formats throw `.invalidValue` for it.
    public func encoded(for reader: PHPMemcacheExtension) throws(MemcacheError) -> MemcacheValue {
        let pecl = reader == .peclMemcache
        switch self {
        case .string(let bytes):
            return MemcacheValue(flags: 0, data: bytes)
        case .integer(let value):
            return MemcacheValue(flags: pecl ? 0x300 : 1, data: ByteBuffer(string: String(value)))
        case .float(let value):
            // PHP parses with zend_strtod, which reads "1.5", "1.0E+25", "inf" and "nan".
            return MemcacheValue(flags: pecl ? 0x700 : 2, data: ByteBuffer(string: "\(value)"))
        case .bool(let value):
            return MemcacheValue(flags: pecl ? 0x100 : 3, data: ByteBuffer(string: value ? "1" : (pecl ? "0" : "")))
        case .null:
            return MemcacheValue(flags: pecl ? 1 : 4, data: ByteBuffer(string: "N;"))
        case .serialized(let value):
            switch (value.format, pecl) {
            case (.php, true): return MemcacheValue(flags: 1, data: value.bytes)
            case (.php, false): return MemcacheValue(flags: 4, data: value.bytes)
            case (.igbinary, false): return MemcacheValue(flags: 5, data: value.bytes)
            case (.json, false): return MemcacheValue(flags: 6, data: value.bytes)
            case (.msgpack, false): return MemcacheValue(flags: 7, data: value.bytes)
            case (let format, true): throw MemcacheError(.invalidValue, "pecl memcache cannot read \(format)-serialized values")
            }
        }
    }
}
