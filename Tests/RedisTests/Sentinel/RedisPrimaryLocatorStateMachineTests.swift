import Testing

@testable import Redis

private typealias Machine = RedisPrimaryLocator.StateMachine

private let first = RedisAddress(host: "127.0.0.1", port: 6379)
private let second = RedisAddress(host: "127.0.0.1", port: 6380)
private let noSentinel = RedisError(.connectionFailed, "no sentinel named the primary")

@Suite("RedisPrimaryLocator.StateMachine")
struct RedisPrimaryLocatorStateMachineTests {
    /// A machine that knows `first` as the primary.
    private static func knowingFirst() -> Machine {
        var machine = Machine()
        _ = machine.primaryRequested()
        _ = machine.sentinelAnswered(first, epoch: 0)
        return machine
    }

    /// The first caller asks the sentinels, later ones wait for the same answer, then everyone uses it.
    @Test func firstRequestAsksOnce() {
        var machine = Machine()
        #expect(machine.primaryRequested() == .ask(epoch: 0))
        #expect(machine.primaryRequested() == .wait)
        #expect(machine.sentinelAnswered(first, epoch: 0) == .switchTo(first, abandoned: nil))
        #expect(machine.primaryRequested() == .use(first))
        #expect(machine.primary == first)
    }

    /// No sentinel answered: the waiting callers fail, and the next request asks again.
    @Test func sentinelsFailingFailsWaiters() {
        var machine = Machine()
        _ = machine.primaryRequested()
        #expect(machine.sentinelsFailed(noSentinel, epoch: 0) == .failWaiters(noSentinel))
        #expect(machine.primaryRequested() == .ask(epoch: 0))
    }

    /// `+switch-master` moves to the new primary and closes connections to the old one.
    @Test func switchAnnouncementMoves() {
        var machine = Self.knowingFirst()
        #expect(machine.switchAnnounced(to: second) == .switchTo(second, abandoned: first))
        #expect(machine.primaryRequested() == .use(second))
        // The same announcement from another sentinel changes nothing.
        #expect(machine.switchAnnounced(to: second) == .switchTo(second, abandoned: nil))
    }

    /// READONLY (or ROLE, or a refused connection) from the primary: forget it, close its connections, ask again.
    @Test func primaryFailureRediscovers() {
        var machine = Self.knowingFirst()
        #expect(machine.primaryFailed(first) == .abandon(first, ask: 2))
        #expect(machine.primaryRequested() == .wait)
        // A second report about the same server, from another connection, asks nothing more.
        #expect(machine.primaryFailed(first) == .none)
        #expect(machine.sentinelAnswered(second, epoch: 2) == .switchTo(second, abandoned: nil))
        #expect(machine.primaryRequested() == .use(second))
    }

    /// The sentinels still name the failed primary during a failover: it is used (and fails) again; no loop without a caller.
    @Test func failedPrimaryNamedAgain() {
        var machine = Self.knowingFirst()
        _ = machine.primaryFailed(first)
        #expect(machine.sentinelAnswered(first, epoch: 2) == .switchTo(first, abandoned: nil))
        #expect(machine.primaryFailed(first) == .abandon(first, ask: 4))
        #expect(machine.sentinelAnswered(second, epoch: 4) == .switchTo(second, abandoned: nil))
    }

    /// A report about a former primary (a connection that lived through the switch) does not forget the new one.
    @Test func staleFailureIgnored() {
        var machine = Self.knowingFirst()
        _ = machine.switchAnnounced(to: second)
        #expect(machine.primaryFailed(first) == .none)
        #expect(machine.primary == second)
    }

    /// An answer to a question asked before a switch was announced cannot undo the switch.
    @Test func answerOvertakenByAnnouncement() {
        var machine = Self.knowingFirst()
        #expect(machine.subscribed() == .ask(epoch: 1))
        #expect(machine.switchAnnounced(to: second) == .switchTo(second, abandoned: first))
        #expect(machine.sentinelAnswered(first, epoch: 1) == .none)
        #expect(machine.primary == second)
        // Its failure is ignored as well.
        #expect(machine.sentinelsFailed(noSentinel, epoch: 1) == .none)
    }

    /// A question about a primary that then failed is replaced; the old question's answer is ignored.
    @Test func failureDuringQuestionAsksAnew() {
        var machine = Self.knowingFirst()
        #expect(machine.subscribed() == .ask(epoch: 1))
        #expect(machine.primaryFailed(first) == .abandon(first, ask: 2))
        #expect(machine.sentinelAnswered(first, epoch: 1) == .none)
        #expect(machine.sentinelAnswered(second, epoch: 2) == .switchTo(second, abandoned: nil))
    }

    /// Subscribing to announcements asks once (announcements made meanwhile are gone); a failed check keeps the primary.
    @Test func subscriptionChecksOnce() {
        var machine = Self.knowingFirst()
        #expect(machine.subscribed() == .ask(epoch: 1))
        #expect(machine.subscribed() == .none)
        #expect(machine.sentinelsFailed(noSentinel, epoch: 1) == .none)
        #expect(machine.primaryRequested() == .use(first))
        #expect(machine.subscribed() == .ask(epoch: 1))
        #expect(machine.sentinelAnswered(second, epoch: 1) == .switchTo(second, abandoned: first))
    }

    /// Waiters for a question are resumed by an announcement that arrives first.
    @Test func announcementAnswersWaiters() {
        var machine = Machine()
        #expect(machine.primaryRequested() == .ask(epoch: 0))
        #expect(machine.switchAnnounced(to: second) == .switchTo(second, abandoned: nil))
        #expect(machine.sentinelAnswered(first, epoch: 0) == .none)
        #expect(machine.primaryRequested() == .use(second))
    }

    /// `host:port` lists, as `--redis-sentinel` takes them.
    @Test func addressLists() {
        #expect(RedisAddress.list("127.0.0.1:26379, 127.0.0.1:26380") == [RedisAddress(host: "127.0.0.1", port: 26379), RedisAddress(host: "127.0.0.1", port: 26380)])
        #expect(RedisAddress.list("[::1]:26379") == [RedisAddress(host: "::1", port: 26379)])
        #expect(RedisAddress.list("127.0.0.1") == nil)
        #expect(RedisAddress.list("a:1,b") == nil)
        #expect(RedisAddress.list("") == nil)
        #expect(RedisAddress(host: "::1", port: 1).description == "[::1]:1")
    }
}
