import JobStore
import Testing

@testable import Gateway

/// A connection's watches: the first held inline, more in a dictionary, and either way the same answers.
struct SessionWatchesTests {
    private static func token(_ id: String, _ number: UInt64) -> JobTrackerStateMachine.Token {
        JobTrackerStateMachine.Token(id: JobID(rawValue: id)!, number: number)
    }

    @Test func oneWatchIsFoundReplacedAndRemoved() {
        var watches = SessionWatches()
        #expect(watches.isEmpty)
        let a = Self.token("a", 1)
        watches[a.id] = a
        #expect(watches[a.id] == a && watches.count == 1 && watches.tokens == [a])
        let again = Self.token("a", 2)
        watches[a.id] = again  // a second WATCH of the same job replaces the first
        #expect(watches[a.id] == again && watches.count == 1)
        watches[a.id] = nil
        #expect(watches.isEmpty && watches.count == 0 && watches.tokens.isEmpty)
        watches[a.id] = nil  // removing what is not there changes nothing
        #expect(watches.isEmpty)
    }

    @Test func manyWatchesKeepEveryOneWhicheverEnds() {
        var watches = SessionWatches()
        let tokens = (1...5).map { Self.token("job\($0)", UInt64($0)) }
        for token in tokens { watches[token.id] = token }
        #expect(watches.count == 5 && Set(watches.tokens) == Set(tokens))
        watches[tokens[0].id] = nil  // the inline one ends: another takes its place
        #expect(watches.count == 4 && Set(watches.tokens) == Set(tokens.dropFirst()))
        for token in tokens.dropFirst() { #expect(watches[token.id] == token) }
        watches[tokens[0].id] = tokens[0]
        #expect(watches.count == 5 && watches[tokens[0].id] == tokens[0])
        for token in tokens { watches[token.id] = nil }
        #expect(watches.isEmpty && watches.tokens.isEmpty)
        watches[tokens[2].id] = tokens[2]
        #expect(watches.count == 1 && watches.tokens == [tokens[2]])
        watches.removeAll()
        #expect(watches.isEmpty)
    }
}
