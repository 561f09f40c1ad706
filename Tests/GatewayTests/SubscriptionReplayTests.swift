import NIOCore
import Testing

@testable import Gateway
@testable import GatewayProtocol

/// `SubscriptionReplay`, event by event: replay to the log's end, then live runs, without a gap or a duplicate.
@Suite struct SubscriptionReplayTests {
    private func cursor(_ n: UInt64) -> GatewayLogCursor { GatewayLogCursor(milliseconds: 1_000 + n, sequence: 0) }

    private func end(_ n: UInt64) -> LoggedEnd {
        LoggedEnd(cursor: cursor(n), event: .done(GatewayJobID(rawValue: "job\(n)")!, result: ByteBuffer(string: "r\(n)")))
    }

    private func run(after: UInt64, _ entries: ClosedRange<UInt64>?, complete: Bool = true, trimmedThrough: UInt64? = nil) -> LogRun {
        LogRun(
            after: cursor(after), entries: entries.map { $0.map(end) } ?? [],
            trimmedThrough: trimmedThrough.map(cursor) ?? .start, isComplete: complete
        )
    }

    @Test func replaysPageByPageThenGoesLive() {
        var replay = SubscriptionReplay(after: cursor(0))
        #expect(replay.start() == .read(after: cursor(0)))
        #expect(replay.readFinished(run(after: 0, 1...3, complete: false)) == .deliver([end(1), end(2), end(3)], thenRead: cursor(3)))
        // A live run while replaying is left to the replay, which reads past it.
        #expect(replay.received(run(after: 3, 4...4)) == .none)
        #expect(replay.readFinished(run(after: 3, 4...5)) == .deliver([end(4), end(5)], thenRead: nil))
        #expect(replay.mode == .live)
        // The seam: a live run that overlaps what the replay delivered gives only what is new.
        #expect(replay.received(run(after: 4, 5...6)) == .deliver([end(6)], thenRead: nil))
        #expect(replay.received(run(after: 6, 7...7)) == .deliver([end(7)], thenRead: nil))
        #expect(replay.cursor == cursor(7))
    }

    @Test func aLiveRunAfterTheCursorSendsItBackToTheLog() {
        var replay = SubscriptionReplay(after: cursor(0))
        _ = replay.start()
        #expect(replay.readFinished(run(after: 0, nil)) == .none)
        #expect(replay.mode == .live)
        // Entries 1…2 were read by the hub before this subscription followed: read them from the log.
        #expect(replay.received(run(after: 2, 3...3)) == .read(after: cursor(0)))
        #expect(replay.readFinished(run(after: 0, 1...3)) == .deliver([end(1), end(2), end(3)], thenRead: nil))
    }

    @Test func aFullOutputPausesAtTheLastDeliveredCursor() {
        var replay = SubscriptionReplay(after: cursor(0))
        _ = replay.start()
        _ = replay.readFinished(run(after: 0, nil))
        #expect(replay.received(run(after: 0, 1...4)) == .deliver([end(1), end(2), end(3), end(4)], thenRead: nil))
        replay.outputFull(lastDelivered: cursor(2))
        #expect(replay.cursor == cursor(2))
        #expect(replay.received(run(after: 4, 5...5)) == .none, "paused: nothing is buffered")
        #expect(replay.resume() == .read(after: cursor(2)))
        #expect(replay.readFinished(run(after: 2, 3...5)) == .deliver([end(3), end(4), end(5)], thenRead: nil))
    }

    @Test func nothingDeliveredBeforeTheOutputFilledKeepsTheCursor() {
        var replay = SubscriptionReplay(after: cursor(5))
        _ = replay.start()
        _ = replay.readFinished(run(after: 5, 6...7))
        replay.outputFull(lastDelivered: nil)
        #expect(replay.cursor == cursor(5))
    }

    @Test func trimmedEntriesAfterTheCursorEndTheSubscription() {
        var replay = SubscriptionReplay(after: cursor(1))
        _ = replay.start()
        #expect(replay.readFinished(run(after: 1, 5...6, trimmedThrough: 4)) == .trimmed(after: cursor(1), through: cursor(4)))
        var live = SubscriptionReplay(after: cursor(1))
        _ = live.start()
        _ = live.readFinished(run(after: 1, nil, trimmedThrough: 1))
        #expect(live.mode == .live, "trimmed up to the cursor itself: nothing lost")
    }

    @Test func fromStartAcceptsWhatWasTrimmedBeforeTheFirstEntry() {
        var replay = SubscriptionReplay(after: .start, fromStart: true)
        #expect(replay.start() == .read(after: .start))
        let retained = LogRun(after: .start, entries: [end(5), end(6)], trimmedThrough: cursor(4), isComplete: true)
        #expect(replay.readFinished(retained) == .deliver([end(5), end(6)], thenRead: nil))
        #expect(replay.cursor == cursor(6))
    }

    @Test func aFailedReadWaitsAndResumes() {
        var replay = SubscriptionReplay(after: cursor(3))
        _ = replay.start()
        replay.readFailed()
        #expect(replay.readFinished(run(after: 3, 4...4)) == .none, "no read is outstanding")
        #expect(replay.resume() == .read(after: cursor(3)))
    }

    @Test func aReadForAnotherPositionIsIgnored() {
        var replay = SubscriptionReplay(after: cursor(3))
        _ = replay.start()
        #expect(replay.readFinished(run(after: 1, 2...4)) == .none)
        #expect(replay.readFinished(run(after: 3, 4...4)) == .deliver([end(4)], thenRead: nil))
    }
}
