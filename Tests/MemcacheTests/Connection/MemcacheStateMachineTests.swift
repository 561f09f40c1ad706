import NIOCore
import Testing

@testable import Memcache

/// The reply-matching state machine, driven event by event with plain `Int` promises.
@Suite struct MemcacheStateMachineTests {
    typealias Machine = MemcacheChannelHandler.StateMachine<Int>
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    private func item(_ key: String) -> MemcacheItem {
        MemcacheItem(key: key, flags: 0, data: ByteBuffer(string: "v"))
    }

    private func pending(_ request: MemcacheRequest, _ promise: Int) -> Machine.Pending {
        Machine.Pending(expectation: .init(request), promise: promise)
    }

    /// Pipelined replies complete their requests in order; VALUEs are collected until END.
    @Test func repliesMatchRequestsInOrder() {
        var machine = Machine(requestTimeout: .seconds(1))
        guard case .write(let armed) = machine.requestsSent(
            [pending(.get(["a", "b"]), 1), pending(.store(.set, key: "c", flags: 0, exptime: 0, data: ByteBuffer()), 2), pending(.delete("d"), 3)],
            now: t0
        ) else { Issue.record("not written"); return }
        #expect(armed == t0 + .seconds(1))
        guard case .wait = machine.responseReceived(.value(item("a")), now: t0) else { Issue.record("expected wait"); return }
        guard case .wait = machine.responseReceived(.value(item("b")), now: t0) else { Issue.record("expected wait"); return }
        guard case .succeed(1, .values(let items)) = machine.responseReceived(.end, now: t0) else { Issue.record("get"); return }
        #expect(items.map(\.key) == ["a", "b"])
        guard case .succeed(2, .stored) = machine.responseReceived(.stored, now: t0) else { Issue.record("set"); return }
        guard case .succeed(3, .notFound) = machine.responseReceived(.notFound, now: t0) else { Issue.record("delete"); return }
        #expect(machine.pendingCount == 0)
    }

    /// Error replies answer the head request and keep the stream in sync.
    @Test func errorRepliesAnswerOneRequest() {
        var machine = Machine(requestTimeout: .seconds(1))
        _ = machine.requestsSent([pending(.store(.set, key: "c", flags: 0, exptime: 0, data: ByteBuffer()), 1), pending(.get(["x"]), 2)], now: t0)
        guard case .succeed(1, .serverError("object too large for cache")) = machine.responseReceived(.serverError("object too large for cache"), now: t0) else {
            Issue.record("server error"); return
        }
        guard case .succeed(2, .values([])) = machine.responseReceived(.end, now: t0) else { Issue.record("get"); return }
    }

    /// A reply that answers nothing, or the wrong kind of request, fails everything and closes.
    @Test func unexpectedRepliesCloseTheConnection() {
        var machine = Machine(requestTimeout: .seconds(1))
        guard case .failAllAndClose([], let error) = machine.responseReceived(.stored, now: t0) else { Issue.record("no request"); return }
        #expect(error.code == .unexpectedResponse)
        guard case .fail(let closed) = machine.requestsSent([pending(.version, 9)], now: t0) else { Issue.record("closed"); return }
        #expect(closed.code == .unexpectedResponse)

        var other = Machine(requestTimeout: .seconds(1))
        _ = other.requestsSent([pending(.delete("a"), 1), pending(.delete("b"), 2)], now: t0)
        guard case .failAllAndClose([1, 2], let mismatch) = other.responseReceived(.stored, now: t0) else { Issue.record("mismatch"); return }
        #expect(mismatch.code == .unexpectedResponse)
        guard case .ignore = other.responseReceived(.deleted, now: t0) else { Issue.record("after close"); return }
    }

    /// More VALUEs than keys asked for is a misbehaving server, not an unbounded list.
    @Test func valueCountIsBounded() {
        var machine = Machine(requestTimeout: .seconds(1))
        _ = machine.requestsSent([pending(.get(["a"]), 1)], now: t0)
        _ = machine.responseReceived(.value(item("a")), now: t0)
        guard case .failAllAndClose([1], let error) = machine.responseReceived(.value(item("a")), now: t0) else { Issue.record("bound"); return }
        #expect(error.code == .unexpectedResponse)
    }

    /// The deadline moves with every reply; when it passes with requests waiting, they all fail with `.timeout`.
    @Test func deadline() {
        var machine = Machine(requestTimeout: .seconds(1))
        guard case .write(t0 + .seconds(1)) = machine.requestsSent([pending(.version, 1), pending(.version, 2)], now: t0) else {
            Issue.record("arm"); return
        }
        guard case .write(nil) = machine.requestsSent([pending(.version, 3)], now: t0) else { Issue.record("armed once"); return }
        _ = machine.responseReceived(.version("1"), now: t0 + .milliseconds(600))
        guard case .rearm(let next) = machine.hitDeadline(now: t0 + .seconds(1)) else { Issue.record("rearm"); return }
        #expect(next == t0 + .milliseconds(1600))
        guard case .failAllAndClose([2, 3], let error) = machine.hitDeadline(now: next) else { Issue.record("timeout"); return }
        #expect(error.code == .timeout)
    }

    /// Once everything is answered, a firing timer does nothing.
    @Test func deadlineWithNothingWaiting() {
        var machine = Machine(requestTimeout: .seconds(1))
        _ = machine.requestsSent([pending(.version, 1)], now: t0)
        _ = machine.responseReceived(.version("1"), now: t0)
        guard case .none = machine.hitDeadline(now: t0 + .seconds(5)) else { Issue.record("no-op"); return }
    }

    /// A closed connection fails what waits and everything sent later.
    @Test func connectionClosed() {
        var machine = Machine(requestTimeout: .seconds(1))
        _ = machine.requestsSent([pending(.get(["a"]), 1), pending(.version, 2)], now: t0)
        _ = machine.responseReceived(.value(item("a")), now: t0)
        let (promises, error) = machine.connectionClosed()
        #expect(promises == [1, 2])
        #expect(error.code == .connectionClosed)
        guard case .fail(let later) = machine.requestsSent([pending(.version, 3)], now: t0) else { Issue.record("later"); return }
        #expect(later.code == .connectionClosed)
    }
}
