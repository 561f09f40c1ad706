/// The `@tag` a client may put before a request; its reply and every event the request causes carry it back.
///
/// 1–32 bytes of `A-Z a-z 0-9 _ . -`. The raw value is without the `@`.
public struct GatewayTag: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public static let maximumLength = 32
    public let rawValue: String

    public init?(rawValue: String) {
        guard Self.isValid(rawValue.utf8) else { return nil }
        self.rawValue = rawValue
    }

    init?(bytes: some Collection<UInt8>) {
        guard Self.isValid(bytes) else { return nil }
        self.rawValue = String(decoding: bytes, as: UTF8.self)
    }

    private static func isValid(_ bytes: some Collection<UInt8>) -> Bool {
        (1...maximumLength).contains(bytes.count) && bytes.allSatisfy { $0.isASCIIAlphanumeric || $0 == .underscore || $0 == .dot || $0 == .dash }
    }

    public var description: String { "@" + rawValue }
}

/// A job id: opaque to clients, minted by the gateway.
///
/// The codec only checks that it is URL-safe: 1–128 bytes of `A-Z a-z 0-9 _ . - ~` (the unreserved characters of
/// RFC 3986), which leaves room for signed ids. Anything else in a request is `BAD_FORMAT`.
public struct GatewayJobID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public static let maximumLength = 128
    public let rawValue: String

    public init?(rawValue: String) {
        guard Self.isValid(rawValue.utf8) else { return nil }
        self.rawValue = rawValue
    }

    init?(bytes: some Collection<UInt8>) {
        guard Self.isValid(bytes) else { return nil }
        self.rawValue = String(decoding: bytes, as: UTF8.self)
    }

    private static func isValid(_ bytes: some Collection<UInt8>) -> Bool {
        (1...maximumLength).contains(bytes.count)
            && bytes.allSatisfy { $0.isASCIIAlphanumeric || $0 == .underscore || $0 == .dot || $0 == .dash || $0 == .tilde }
    }

    public var description: String { rawValue }
}

/// A Gearman function name: 1–255 bytes of UTF-8 without whitespace or control characters
/// (they would split the protocol line and break gearmand's `status` output).
public struct GatewayFunctionName: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public static let maximumLength = 255
    public let rawValue: String

    public init?(rawValue: String) {
        guard GatewaySyntax.isWord(rawValue, maximumLength: Self.maximumLength) else { return nil }
        self.rawValue = rawValue
    }

    public var description: String { rawValue }
}

/// The `unique=` key of a submission: jobs with the same function and key coalesce while one is queued or running.
///
/// 1–63 bytes of UTF-8 without whitespace or control characters. gearmand cuts longer keys to 63 bytes, after which
/// they never coalesce again, so longer keys are refused rather than truncated.
public struct GatewayUniqueKey: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public static let maximumLength = 63
    public let rawValue: String

    public init?(rawValue: String) {
        guard GatewaySyntax.isWord(rawValue, maximumLength: Self.maximumLength) else { return nil }
        self.rawValue = rawValue
    }

    public var description: String { rawValue }
}

// MARK: - Byte-level syntax shared by the decoders and encoders

enum GatewaySyntax {
    /// A non-empty string of at most `maximumLength` UTF-8 bytes with no whitespace or control character,
    /// so it stays one token of a protocol line.
    static func isWord(_ string: String, maximumLength: Int) -> Bool {
        let utf8 = string.utf8
        guard (1...maximumLength).contains(utf8.count) else { return false }
        // ASCII (function names, ids, tags: nearly always) is checked byte by byte; Unicode properties are slow.
        if utf8.allSatisfy({ $0 < 0x80 }) { return utf8.allSatisfy { $0 > 0x20 && $0 != 0x7F } }
        return string.unicodeScalars.allSatisfy { !$0.properties.isWhitespace && $0.properties.generalCategory != .control }
    }

    /// The bytes as a string when they are valid UTF-8 (never repaired, so what was sent is what is used).
    static func string(validating bytes: some Collection<UInt8>) -> String? {
        String(validating: bytes, as: UTF8.self)
    }

    /// Splits a line (without its line break) into words separated by runs of spaces.
    static func words(_ line: ArraySlice<UInt8>) -> [Range<Int>] {
        var words: [Range<Int>] = []
        var index = line.startIndex
        while index < line.endIndex {
            while index < line.endIndex, line[index] == .space { index += 1 }
            let start = index
            while index < line.endIndex, line[index] != .space { index += 1 }
            if start < index { words.append(start..<index) }
        }
        return words
    }

    /// A non-negative decimal number: digits only (no sign, no spaces), within `UInt64`.
    static func decimal(_ bytes: some Collection<UInt8>) -> UInt64? {
        guard !bytes.isEmpty else { return nil }
        var value: UInt64 = 0
        for byte in bytes {
            guard byte.isASCIIDigit else { return nil }
            let (multiplied, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (added, overflow2) = multiplied.addingReportingOverflow(UInt64(byte - .digitZero))
            guard !overflow1, !overflow2 else { return nil }
            value = added
        }
        return value
    }

    /// A byte count: a decimal number that fits in `Int`.
    static func byteCount(_ bytes: some Collection<UInt8>) -> Int? {
        decimal(bytes).flatMap { $0 <= UInt64(Int.max) ? Int($0) : nil }
    }

    static func asciiUppercased(_ bytes: some Collection<UInt8>) -> String {
        String(decoding: bytes.map { $0 >= .lowerA && $0 <= .lowerZ ? $0 - 32 : $0 }, as: UTF8.self)
    }

    static func asciiLowercased(_ bytes: some Collection<UInt8>) -> String {
        String(decoding: bytes.map { $0 >= .upperA && $0 <= .upperZ ? $0 + 32 : $0 }, as: UTF8.self)
    }

    /// Text for one protocol line: line breaks and other control characters become spaces.
    static func oneLine(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        return String(String.UnicodeScalarView(text.unicodeScalars.map { isControl($0) ? " " : $0 }))
    }

    /// A single word: whitespace and control characters become `_`; empty becomes `_`.
    static func oneWord(_ text: String) -> String {
        let word = String(String.UnicodeScalarView(text.unicodeScalars.map { isControl($0) || $0.properties.isWhitespace ? "_" : $0 }))
        return word.isEmpty ? "_" : word
    }

    /// Untrusted bytes quoted in an error message: shortened, one line, never invalid UTF-8.
    static func quoted(_ bytes: some Collection<UInt8>, limit: Int = 40) -> String {
        let text = oneLine(String(decoding: bytes.prefix(limit), as: UTF8.self))
        return "'" + text + (bytes.count > limit ? "…'" : "'")
    }

    private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.properties.generalCategory == .control || scalar == "\u{2028}" || scalar == "\u{2029}"
    }
}

extension UInt8 {
    static let lf = UInt8(ascii: "\n")
    static let cr = UInt8(ascii: "\r")
    static let space = UInt8(ascii: " ")
    static let at = UInt8(ascii: "@")
    static let equals = UInt8(ascii: "=")
    static let underscore = UInt8(ascii: "_")
    static let dot = UInt8(ascii: ".")
    static let dash = UInt8(ascii: "-")
    static let tilde = UInt8(ascii: "~")
    static let digitZero = UInt8(ascii: "0")
    static let digitNine = UInt8(ascii: "9")
    static let upperA = UInt8(ascii: "A")
    static let upperZ = UInt8(ascii: "Z")
    static let lowerA = UInt8(ascii: "a")
    static let lowerZ = UInt8(ascii: "z")

    var isASCIIDigit: Bool { self >= .digitZero && self <= .digitNine }
    var isASCIIAlphanumeric: Bool { isASCIIDigit || (self >= .upperA && self <= .upperZ) || (self >= .lowerA && self <= .lowerZ) }
}
