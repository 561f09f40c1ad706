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
