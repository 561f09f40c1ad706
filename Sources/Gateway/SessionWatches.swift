import JobStore

/// A connection's watches, by job. Almost every connection watches none or one job: that one is held inline, and
/// only a second one allocates a dictionary (memory, with 10,000 idle watchers; the dictionary is freed once empty).
struct SessionWatches {
    private var first: JobTracker.Token?
    private var others: [JobID: JobTracker.Token] = [:]

    var count: Int { (first == nil ? 0 : 1) + others.count }
    var isEmpty: Bool { first == nil && others.isEmpty }
    var tokens: [JobTracker.Token] { (first.map { [$0] } ?? []) + others.values }

    subscript(id: JobID) -> JobTracker.Token? {
        get { first?.id == id ? first : others[id] }
        set {
            if first?.id == id || (first == nil && newValue != nil) {
                first = newValue ?? others.popFirst()?.value
            } else {
                others[id] = newValue
            }
            if others.isEmpty { others = [:] }  // frees its storage (removing keeps the capacity)
        }
    }

    mutating func removeAll() { self = SessionWatches() }
}
