import Foundation

/// Inputs for fuzzing: a corpus of interesting inputs committed under `Tests/Corpus/<name>/` (one file each), and
/// seeded mutations of them, so that a randomized test is the same on every run and a failing case can be replayed.
/// The libFuzzer target (`Deploy/fuzz.sh`) starts from the same files.
public struct FuzzCorpus: Sendable {
    public let name: String
    /// The inputs, by file name (sorted, so the order and thus every mutation is stable).
    public let entries: [(file: String, bytes: [UInt8])]

    /// Loads `Tests/Corpus/<name>/`; a missing or empty corpus throws (a fuzz test must not pass on nothing).
    public init(_ name: String) throws {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Tests/Corpus/\(name)").standardized
        let files = (try? FileManager.default.contentsOfDirectory(atPath: folder.path))?.filter { !$0.hasPrefix(".") }.sorted() ?? []
        guard !files.isEmpty else { throw LocalServerError(message: "no fuzz corpus at \(folder.path)") }
        self.name = name
        self.entries = try files.map { ($0, try [UInt8](Data(contentsOf: folder.appendingPathComponent($0)))) }
    }

    /// A corpus entry changed by a few random edits: bytes flipped, inserted, deleted or repeated, a token of
    /// `dictionary` put in, or a piece of another entry spliced in.
    public func mutated(dictionary: [[UInt8]], using random: inout SplitMix64) -> [UInt8] {
        var bytes = entries.randomElement(using: &random)!.bytes
        for _ in 0..<Int.random(in: 1...6, using: &random) {
            let at = Int.random(in: 0...bytes.count, using: &random)
            let end = min(bytes.count, at + Int.random(in: 1...16, using: &random))
            switch random.next() % 7 {
            case 0 where at < bytes.count: bytes[at] ^= UInt8(1) << UInt8(random.next() % 8)
            case 1: bytes.insert(UInt8.random(in: 0...255, using: &random), at: at)
            case 2: bytes.removeSubrange(at..<end)
            case 3: bytes.insert(contentsOf: Array(bytes[at..<end]), at: at)
            case 4, 5: bytes.insert(contentsOf: dictionary.randomElement(using: &random)!, at: at)
            default:
                let other = entries.randomElement(using: &random)!.bytes
                let from = Int.random(in: 0...other.count, using: &random)
                bytes.insert(contentsOf: other[from..<min(other.count, from + Int.random(in: 1...64, using: &random))], at: at)
            }
        }
        return bytes
    }
}
