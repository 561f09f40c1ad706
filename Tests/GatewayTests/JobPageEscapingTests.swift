import Foundation
import LocalServers
import Testing

@testable import Gateway

/// The job page's escaping of job bytes, on hostile inputs.
struct JobPageEscapingTests {
    /// `<` and `>` behind marks that join them into one `Character` (U+0600 prepends, U+0301 and ZWJ extend) are
    /// escaped all the same, as are quotes and `&`.
    @Test(arguments: ["\u{0600}<script \u{0600}>", "e\u{0301}<b>", "\u{200D}<i\u{200D}>", "👩\u{200D}<svg>", "a\u{0600}\"\u{0600}'&x"])
    func marksHideNothing(_ text: String) {
        let escaped = JobPage.escape(text.utf8)
        #expect(!escaped.utf8.contains { [UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "\""), UInt8(ascii: "'")].contains($0) })
        #expect(Self.unescaped(escaped) == text)
    }

    /// Invalid UTF-8 becomes U+FFFD and never swallows or forms a `<`: an overlong `<` (C0 BC) is two U+FFFD, a
    /// cut-off sequence before `<` leaves the `<` to be escaped; NUL becomes U+FFFD.
    @Test func invalidUTF8AndNUL() {
        #expect(JobPage.escape([0xC0, 0xBC]) == "\u{FFFD}\u{FFFD}")
        #expect(JobPage.escape([0xC3, 0x3C, 0xE2, 0x82, 0x3E]) == "\u{FFFD}&lt;\u{FFFD}&gt;")
        #expect(JobPage.escape([0xFF, 0x00, 0x3C, 0x00]) == "\u{FFFD}\u{FFFD}&lt;\u{FFFD}")
        #expect(JobPage.escape([0xED, 0xA0, 0x80]) == "\u{FFFD}\u{FFFD}\u{FFFD}", "a surrogate is not UTF-8")
    }

    /// Seeded random bytes: the escaped text has no markup character and no NUL, and unescapes to the bytes as
    /// valid text (invalid UTF-8 and NUL as U+FFFD).
    @Test func randomBytes() {
        var random = SplitMix64(seed: 11)
        let interesting: [UInt8] = [0x00, 0x22, 0x26, 0x27, 0x3C, 0x3E, 0x80, 0xBC, 0xC0, 0xC3, 0xD8, 0xE2, 0xED, 0xF0, 0xFF]
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0...40, using: &random)).map { _ in
                random.next() % 2 == 0 ? interesting.randomElement(using: &random)! : UInt8.random(in: 0...255, using: &random)
            }
            let escaped = JobPage.escape(bytes)
            #expect(!escaped.utf8.contains { [0, UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "\""), UInt8(ascii: "'")].contains($0) }, "\(bytes)")
            let expected = String(decoding: bytes, as: UTF8.self).utf8.flatMap { $0 == 0 ? Array("\u{FFFD}".utf8) : [$0] }
            #expect(Array(Self.unescaped(escaped).utf8) == expected, "\(bytes)")
        }
    }

    /// The event stream's JSON: no raw `<` or line break whatever marks precede them, and it parses back to the text.
    @Test(arguments: ["\u{0600}<script \u{0600}>\u{0600}\n\u{0600}\r", "e\u{0301}\"\u{0301}\\", "\u{2028}\u{2029}\u{0}\u{1F}"])
    func eventJSON(_ text: String) throws {
        let json = JSONString.quoted(text)
        #expect(!json.unicodeScalars.contains { $0 == "<" || $0.value < 0x20 || $0 == "\u{2028}" || $0 == "\u{2029}" })
        let parsed = try JSONSerialization.jsonObject(with: Data(json.utf8), options: .fragmentsAllowed) as? String
        #expect(parsed == text)
    }

    /// The text of escaped HTML, decoded byte by byte (`replacingOccurrences` matches whole `Character`s, so a mark
    /// after `;` would hide an entity from it).
    private static func unescaped(_ html: String) -> String {
        let entities = ["&lt;": "<", "&gt;": ">", "&quot;": "\"", "&#39;": "'", "&amp;": "&"].map { (Array($0.utf8), UInt8(ascii: Unicode.Scalar($1)!)) }
        var bytes = Array(html.utf8)[...]
        var out: [UInt8] = []
        while let byte = bytes.first {
            if let (entity, character) = entities.first(where: { bytes.starts(with: $0.0) }) {
                out.append(character)
                bytes = bytes.dropFirst(entity.count)
            } else {
                out.append(byte)
                bytes = bytes.dropFirst()
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
