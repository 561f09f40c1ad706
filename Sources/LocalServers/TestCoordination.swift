import Synchronization

/// A one-shot gate: tasks wait until the test opens it.
public final class Gate: Sendable {
    private let opened = Mutex(false)

    public init() {}

    public func open() { opened.withLock { $0 = true } }

    /// Returns when opened, or when the waiting task is cancelled (a cancelled sleep would otherwise spin).
    public func wait() async {
        while !opened.withLock({ $0 }), !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }
}

/// Collects values from concurrent callbacks.
public final class Recorder<Element: Sendable>: Sendable {
    private let storage = Mutex<[Element]>([])

    public init() {}

    public func append(_ element: Element) { storage.withLock { $0.append(element) } }
    public var all: [Element] { storage.withLock { $0 } }
    public var count: Int { storage.withLock { $0.count } }
}

/// SplitMix64: a tiny seeded generator, so that "random" chunkings and junk are the same on every run and a
/// failing case can be replayed.
public struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
