import Testing

@testable import Gateway

/// A session's life, event by event, without a channel: what it may still do, and what the handler is told to do.
struct SessionLifecycleTests {
    /// A session that has stopped reading and answers what it read (the client closed its side, with a request
    /// outstanding).
    private func makeDraining() -> SessionLifecycle {
        var lifecycle = SessionLifecycle()
        #expect(lifecycle.inputEnded(allAnswered: false, waitsForOutput: false) == .stopFollowing)
        return lifecycle
    }

    /// A session closing once its output is written (`QUIT` answered, output waiting for the socket).
    private func makeClosing(waitsForOutput: Bool) -> SessionLifecycle {
        var lifecycle = SessionLifecycle()
        #expect(lifecycle.requestsStopped() == .none)
        #expect(lifecycle.closeRequested(waitsForOutput: waitsForOutput) == .closeWhenWritten(waitsForOutput: waitsForOutput))
        return lifecycle
    }

    // MARK: Reading

    /// A new session reads, starts requests and writes.
    @Test func startsReading() {
        let lifecycle = SessionLifecycle()
        #expect(lifecycle.state == .reading(readIsHeld: false))
        #expect(lifecycle.startsRequests && lifecycle.isOpen && lifecycle.isReading && !lifecycle.isClosed)
    }

    /// A read asked for while there is room goes ahead; without room it is held until room is made.
    @Test func readsAreHeldUntilThereIsRoom() {
        var lifecycle = SessionLifecycle()
        #expect(lifecycle.readRequested(canTakeMore: true) == .read)
        #expect(lifecycle.state == .reading(readIsHeld: false))
        #expect(lifecycle.readRequested(canTakeMore: false) == .none)
        #expect(lifecycle.state == .reading(readIsHeld: true))
        #expect(lifecycle.roomMade(canTakeMore: false) == .none)
        #expect(lifecycle.state == .reading(readIsHeld: true))
        #expect(lifecycle.roomMade(canTakeMore: true) == .read)
        #expect(lifecycle.state == .reading(readIsHeld: false))
        // Room made with no read held: nothing to resume.
        #expect(lifecycle.roomMade(canTakeMore: true) == .none)
    }

    /// A held read is not resumed once input ended: nothing more is read.
    @Test func heldReadIsDroppedWhenInputEnds() {
        var lifecycle = SessionLifecycle()
        #expect(lifecycle.readRequested(canTakeMore: false) == .none)
        #expect(lifecycle.inputEnded(allAnswered: false, waitsForOutput: false) == .stopFollowing)
        #expect(lifecycle.roomMade(canTakeMore: true) == .none)
        #expect(lifecycle.readRequested(canTakeMore: true) == .none)
    }

    // MARK: The end of input

    /// The client closes its side (or the gateway shuts down, or TLS stops reading) with requests outstanding: what
    /// was read still starts and is answered, nothing is followed any more; the last answer closes.
    @Test func inputEndDrainsThenCloses() {
        var lifecycle = makeDraining()
        #expect(lifecycle.state == .draining(startsRequests: true))
        #expect(lifecycle.startsRequests && lifecycle.isOpen && !lifecycle.isReading)
        #expect(lifecycle.requestAnswered(allAnswered: false, waitsForOutput: false) == .none)
        #expect(lifecycle.requestAnswered(allAnswered: true, waitsForOutput: true) == .closeWhenWritten(waitsForOutput: true))
        #expect(lifecycle.state == .closing(waitsForOutput: true))
        #expect(!lifecycle.startsRequests && !lifecycle.isOpen)
    }

    /// Input ends with everything answered: stop following and close at once (after what was written).
    @Test func inputEndWithNothingOutstandingCloses() {
        var lifecycle = SessionLifecycle()
        #expect(lifecycle.inputEnded(allAnswered: true, waitsForOutput: false) == .stopFollowingAndCloseWhenWritten(waitsForOutput: false))
        #expect(lifecycle.state == .closing(waitsForOutput: false))
        // A second end of input (TLS after the shutdown's) changes nothing.
        #expect(lifecycle.inputEnded(allAnswered: true, waitsForOutput: false) == .none)
    }

    /// While reading, an answer never closes: only the end of input, `BYE` or a timeout do.
    @Test func answersWhileReadingDoNotClose() {
        var lifecycle = SessionLifecycle()
        #expect(lifecycle.requestAnswered(allAnswered: true, waitsForOutput: false) == .none)
        #expect(lifecycle.state == .reading(readIsHeld: false))
    }

    // MARK: QUIT, timeouts, wrong secrets

    /// `QUIT` (or a request timeout, or the last wrong secret allowed): nothing more is read or started; the reply
    /// that asks to close (`BYE`) closes once written.
    @Test func quitStopsRequestsThenByeCloses() {
        var lifecycle = SessionLifecycle()
        #expect(lifecycle.requestsStopped() == .none)
        #expect(lifecycle.state == .draining(startsRequests: false))
        #expect(!lifecycle.startsRequests && lifecycle.isOpen && !lifecycle.isReading)
        #expect(lifecycle.readRequested(canTakeMore: true) == .none)
        #expect(lifecycle.closeRequested(waitsForOutput: false) == .closeWhenWritten(waitsForOutput: false))
        #expect(lifecycle.state == .closing(waitsForOutput: false))
        // The answer that wrote BYE finds the session closing already.
        #expect(lifecycle.requestAnswered(allAnswered: true, waitsForOutput: false) == .none)
    }

    /// The client half-closes after `QUIT`, before `BYE` is written: it stops following, and still waits for `BYE`.
    @Test func inputEndAfterQuitStopsFollowing() {
        var lifecycle = SessionLifecycle()
        _ = lifecycle.requestsStopped()
        #expect(lifecycle.inputEnded(allAnswered: false, waitsForOutput: false) == .stopFollowing)
        #expect(lifecycle.state == .draining(startsRequests: false))
    }

    /// The idle timeout closes a reading session directly (its error is written first).
    @Test func idleTimeoutCloses() {
        var lifecycle = SessionLifecycle()
        #expect(lifecycle.closeRequested(waitsForOutput: true) == .closeWhenWritten(waitsForOutput: true))
        #expect(lifecycle.state == .closing(waitsForOutput: true))
        #expect(!lifecycle.isOpen && !lifecycle.startsRequests && !lifecycle.isReading)
        #expect(lifecycle.closeRequested(waitsForOutput: false) == .none)
    }

    // MARK: Closing

    /// Closing with output waiting for the socket (the 1c4dd74 fix: the deadline is set all the same): its drain
    /// closes, once.
    @Test func closingWaitsForTheOutputToDrain() {
        var lifecycle = makeClosing(waitsForOutput: true)
        #expect(lifecycle.outputDrained() == .closeAfterPendingWrites)
        #expect(lifecycle.state == .closing(waitsForOutput: false))
        #expect(lifecycle.outputDrained() == .none)
    }

    /// Output draining while reading or draining closes nothing.
    @Test func outputDrainedWhileOpenDoesNothing() {
        var lifecycle = SessionLifecycle()
        #expect(lifecycle.outputDrained() == .none)
        lifecycle = makeDraining()
        #expect(lifecycle.outputDrained() == .none)
        lifecycle = makeClosing(waitsForOutput: false)
        #expect(lifecycle.outputDrained() == .none)
    }

    /// A client that does not read (overflow, stall, trimmed log) is told and closed, from any open state, and
    /// also while closing; the session ends then and there, so the channel's going ends nothing twice.
    @Test func outputFailureEndsTheSession() {
        for var lifecycle in [SessionLifecycle(), makeDraining(), makeClosing(waitsForOutput: true)] {
            #expect(lifecycle.outputFailed() == .reportAndClose)
            #expect(lifecycle.isClosed)
            #expect(lifecycle.outputFailed() == .none)
            #expect(lifecycle.channelClosed() == .none)
        }
    }

    /// An error closes the channel; once closed there is nothing to close.
    @Test func errorsClose() {
        var lifecycle = SessionLifecycle()
        #expect(lifecycle.errorCaught() == .closeNow)
        #expect(lifecycle.state == .reading(readIsHeld: false))  // the channel's going ends the session
        #expect(lifecycle.channelClosed() == .endSession)
        #expect(lifecycle.errorCaught() == .none)
    }

    // MARK: The channel goes

    /// The channel goes in any state: the session ends once (inactive, then the handler removed).
    @Test func channelGoingEndsTheSessionOnce() {
        for var lifecycle in [SessionLifecycle(), makeDraining(), makeClosing(waitsForOutput: true), makeClosing(waitsForOutput: false)] {
            #expect(lifecycle.channelClosed() == .endSession)
            #expect(lifecycle.state == .closed)
            #expect(lifecycle.channelClosed() == .none)
        }
    }

    /// The order that crashed before 1c4dd74: `SUBMIT wait=` read, then the connection reset (inactive, handler
    /// removed), then the submission's answer comes back and would start the wait. Closed, the session starts,
    /// writes, reads and closes nothing, whatever comes next.
    @Test func nothingHappensAfterTheChannelWent() {
        var lifecycle = SessionLifecycle()
        #expect(lifecycle.readRequested(canTakeMore: true) == .read)
        #expect(lifecycle.channelClosed() == .endSession)
        #expect(lifecycle.channelClosed() == .none)  // handlerRemoved after channelInactive
        // The submission's answer: the handler checks this before touching its (gone) context.
        #expect(lifecycle.isClosed && !lifecycle.startsRequests && !lifecycle.isOpen && !lifecycle.isReading)
        #expect(lifecycle.requestAnswered(allAnswered: true, waitsForOutput: false) == .none)
        #expect(lifecycle.inputEnded(allAnswered: true, waitsForOutput: false) == .none)
        #expect(lifecycle.requestsStopped() == .none)
        #expect(lifecycle.closeRequested(waitsForOutput: false) == .none)
        #expect(lifecycle.outputDrained() == .none)
        #expect(lifecycle.readRequested(canTakeMore: true) == .none)
        #expect(lifecycle.roomMade(canTakeMore: true) == .none)
        #expect(lifecycle.outputFailed() == .none)
        #expect(lifecycle.state == .closed)
    }
}
