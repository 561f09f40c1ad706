import NIOCore
import Testing

@testable import Gearman

/// Promises are ints and sinks are strings, so each action can be compared whole.
typealias ClientMachine = GearmanClientStateMachine<Int, String>

@Suite("GearmanClientStateMachine")
struct GearmanClientStateMachineTests {
    static let deadline = NIODeadline.uptimeNanoseconds(1_000)

    static func unexpectedReply(_ action: ClientMachine.ReceiveAction) -> (promises: [Int], sinks: [String])? {
        guard case .failAllAndClose(let promises, let sinks, let error) = action, error.code == .unexpectedReply else { return nil }
        return (promises, sinks.sorted())
    }

    // MARK: FIFO matching

    /// Pipelined submits get their JOB_CREATED in request order.
    @Test func pipelinedJobCreatedRepliesMatchInOrder() {
        var machine = ClientMachine()
        for promise in 1...3 {
            #expect(machine.send(.jobCreated, promise: promise, sink: nil, deadline: Self.deadline) == .write)
        }
        #expect(machine.pendingCount == 3)
        for index in 1...3 {
            #expect(machine.packetReceived(.response(.jobCreated, "H:vm:\(index)")) == .succeed(index, .jobCreated(handle: "H:vm:\(index)")))
        }
        #expect(machine.pendingCount == 0)
    }

    /// ERROR belongs to the oldest request, as libgearman counts (reference §5): the next JOB_CREATED goes to the next one.
    @Test func errorPopsTheOldestRequest() {
        var machine = ClientMachine()
        for promise in 1...3 { _ = machine.send(.jobCreated, promise: promise, sink: nil, deadline: Self.deadline) }
        #expect(machine.packetReceived(.response(.jobCreated, "H:vm:1")) == .succeed(1, .jobCreated(handle: "H:vm:1")))
        #expect(
            machine.packetReceived(.response(.error, "ARGUMENT_TOO_LARGE", "Unique too large"))
                == .fail(2, GearmanError(.serverError, "ARGUMENT_TOO_LARGE: Unique too large"))
        )
        #expect(machine.packetReceived(.response(.jobCreated, "H:vm:2")) == .succeed(3, .jobCreated(handle: "H:vm:2")))
        #expect(machine.pendingCount == 0)
    }

    /// ERROR answers any kind of binary request (ECHO, OPTION, STATUS).
    @Test func errorAnswersAnyBinaryRequest() {
        var machine = ClientMachine()
        _ = machine.send(.option, promise: 1, sink: nil, deadline: Self.deadline)
        _ = machine.send(.echo, promise: 2, sink: nil, deadline: Self.deadline)
        #expect(
            machine.packetReceived(.response(.error, "UNKNOWN_OPTION", "Server does not recognize given option"))
                == .fail(1, GearmanError(.serverError, "UNKNOWN_OPTION: Server does not recognize given option"))
        )
        #expect(machine.packetReceived(.response(.echoRes, "ping")) == .succeed(2, .echo(ByteBuffer(string: "ping"))))
    }

    @Test func statusRepliesAreParsed() {
        var machine = ClientMachine()
        for promise in 1...4 { _ = machine.send(.status, promise: promise, sink: nil, deadline: Self.deadline) }
        _ = machine.send(.statusUnique, promise: 5, sink: nil, deadline: Self.deadline)
        #expect(
            machine.packetReceived(.response(.statusRes, "H:vm:1", "1", "1", "42", "100"))
                == .succeed(1, .status(GearmanJobStatus(known: true, running: true, numerator: 42, denominator: 100)))
        )
        #expect(
            machine.packetReceived(.response(.statusRes, "H:vm:2", "1", "0", "0", "0"))
                == .succeed(2, .status(GearmanJobStatus(known: true, running: false, numerator: 0, denominator: 0)))
        )
        // Finished and unknown jobs look the same.
        #expect(
            machine.packetReceived(.response(.statusRes, "garbage", "0", "0", "0", "0"))
                == .succeed(3, .status(GearmanJobStatus(known: false, running: false, numerator: 0, denominator: 0)))
        )
        // Numbers parse like gearmand's atoi into 32 bits.
        #expect(
            machine.packetReceived(.response(.statusRes, "H:vm:4", "1", "1", "5000000000", "10abc"))
                == .succeed(4, .status(GearmanJobStatus(known: true, running: true, numerator: 705_032_704, denominator: 10)))
        )
        #expect(
            machine.packetReceived(.response(.statusResUnique, "tag-1", "1", "1", "3", "9", "2"))
                == .succeed(5, .status(GearmanJobStatus(known: true, running: true, numerator: 3, denominator: 9, clientCount: 2)))
        )
    }

    @Test func echoAndOptionReplies() {
        var machine = ClientMachine()
        _ = machine.send(.echo, promise: 1, sink: nil, deadline: Self.deadline)
        _ = machine.send(.option, promise: 2, sink: nil, deadline: Self.deadline)
        let binary = ByteBuffer(bytes: [0, 1, 0x0A, 0xFF, 0])
        #expect(
            machine.packetReceived(GearmanPacket(magic: .response, type: .echoRes, arguments: [binary])) == .succeed(1, .echo(binary))
        )
        #expect(machine.packetReceived(.response(.optionRes, "exceptions")) == .succeed(2, .option("exceptions")))
    }

    /// Requests without a reply (SET_CLIENT_ID) are written but not queued.
    @Test func fireAndForgetIsNotQueued() {
        var machine = ClientMachine()
        #expect(machine.send(nil, promise: 1, sink: nil, deadline: Self.deadline) == .write)
        #expect(machine.pendingCount == 0)
        #expect(machine.nextDeadline == nil)
    }

    // MARK: Foreground routing

    /// WORK_* packets go to the job's sink by handle; the terminal one unregisters it.
    @Test func workPacketsRouteToTheForegroundSink() {
        var machine = ClientMachine()
        _ = machine.send(.jobCreated, promise: 1, sink: "a", deadline: Self.deadline)
        #expect(machine.packetReceived(.response(.jobCreated, "H:vm:1")) == .succeed(1, .jobCreated(handle: "H:vm:1")))
        #expect(machine.packetReceived(.response(.workStatus, "H:vm:1", "1", "4")) == .deliver(["a"], .status(numerator: 1, denominator: 4)))
        #expect(machine.packetReceived(.response(.workData, "H:vm:1", "chunk")) == .deliver(["a"], .data(ByteBuffer(string: "chunk"))))
        #expect(machine.packetReceived(.response(.workWarning, "H:vm:1", "hm")) == .deliver(["a"], .warning(ByteBuffer(string: "hm"))))
        #expect(machine.packetReceived(.response(.workComplete, "H:vm:1", "done")) == .deliver(["a"], .completed(ByteBuffer(string: "done"))))
        // Gone after the terminal event: a late packet for the handle is ignored.
        #expect(machine.packetReceived(.response(.workData, "H:vm:1", "late")) == .none)
        #expect(machine.pendingCount == 0)
    }

    /// Two foreground submits coalesced onto one handle both hear every event.
    @Test func coalescedForegroundJobsShareEvents() {
        var machine = ClientMachine()
        _ = machine.send(.jobCreated, promise: 1, sink: "a", deadline: Self.deadline)
        _ = machine.send(.jobCreated, promise: 2, sink: "b", deadline: Self.deadline)
        #expect(machine.packetReceived(.response(.jobCreated, "H:vm:7")) == .succeed(1, .jobCreated(handle: "H:vm:7")))
        #expect(machine.packetReceived(.response(.jobCreated, "H:vm:7")) == .succeed(2, .jobCreated(handle: "H:vm:7")))
        let data = machine.packetReceived(.response(.workData, "H:vm:7", "x"))
        #expect(data == .deliver(["a", "b"], .data(ByteBuffer(string: "x"))))
        #expect(machine.packetReceived(.response(.workException, "H:vm:7", "boom")) == .deliver(["a", "b"], .exception(ByteBuffer(string: "boom"))))
        #expect(machine.packetReceived(.response(.workStatus, "H:vm:7", "1", "2")) == .none)
    }

    /// The WORK_FAIL gearmand sends in place of WORK_EXCEPTION ends in a stray NUL; it still routes.
    @Test func workFailWithTrailingNulRoutes() {
        var machine = ClientMachine()
        _ = machine.send(.jobCreated, promise: 1, sink: "a", deadline: Self.deadline)
        _ = machine.packetReceived(.response(.jobCreated, "H:vm:20"))
        #expect(machine.packetReceived(.response(.workFail, "H:vm:20\0")) == .deliver(["a"], .failed))
        #expect(machine.packetReceived(.response(.workFail, "H:vm:20")) == .none)
    }

    /// WORK_* for a background job or an unknown handle is dropped and does not disturb the queue.
    @Test func workPacketsForUnknownHandlesAreIgnored() {
        var machine = ClientMachine()
        _ = machine.send(.jobCreated, promise: 1, sink: nil, deadline: Self.deadline)
        _ = machine.send(.jobCreated, promise: 2, sink: nil, deadline: Self.deadline)
        #expect(machine.packetReceived(.response(.jobCreated, "H:vm:1")) == .succeed(1, .jobCreated(handle: "H:vm:1")))
        #expect(machine.packetReceived(.response(.workComplete, "H:vm:1", "bg result")) == .none)
        #expect(machine.packetReceived(.response(.workStatus, "H:vm:99", "1", "2")) == .none)
        #expect(machine.pendingCount == 1)
        #expect(machine.packetReceived(.response(.jobCreated, "H:vm:2")) == .succeed(2, .jobCreated(handle: "H:vm:2")))
    }

    // MARK: Admin text

    @Test func adminSingleLine() {
        var machine = ClientMachine()
        _ = machine.send(.admin(isListing: false), promise: 1, sink: nil, deadline: Self.deadline)
        #expect(machine.textReceived("OK 1.1.20+ds") == .succeed(1, .admin(["OK 1.1.20+ds"])))
        #expect(machine.pendingCount == 0)
    }

    /// A listing accumulates until `.`; the next listing starts empty.
    @Test func adminListingAccumulatesUntilDot() {
        var machine = ClientMachine()
        _ = machine.send(.admin(isListing: true), promise: 1, sink: nil, deadline: Self.deadline)
        _ = machine.send(.admin(isListing: true), promise: 2, sink: nil, deadline: Self.deadline)
        #expect(machine.textReceived("fn_a\t3\t1\t2") == .none)
        #expect(machine.textReceived("") == .none)  // `show unique jobs` prints blank lines for empty uniques
        #expect(machine.textReceived("fn_b\t0\t0\t1") == .none)
        #expect(machine.textReceived(".") == .succeed(1, .admin(["fn_a\t3\t1\t2", "", "fn_b\t0\t0\t1"])))
        #expect(machine.textReceived(".") == .succeed(2, .admin([])))
    }

    /// `ERR …` is a whole reply, for listings and single-line commands alike.
    @Test func adminErrIsOneLine() {
        var machine = ClientMachine()
        _ = machine.send(.admin(isListing: true), promise: 1, sink: nil, deadline: Self.deadline)
        _ = machine.send(.admin(isListing: false), promise: 2, sink: nil, deadline: Self.deadline)
        _ = machine.send(.admin(isListing: false), promise: 3, sink: nil, deadline: Self.deadline)
        #expect(
            machine.textReceived("ERR UNKNOWN_COMMAND Unknown+server+command")
                == .fail(1, GearmanError(.serverError, "UNKNOWN_COMMAND Unknown+server+command"))
        )
        #expect(machine.textReceived("ERR UNKNOWN_JOB") == .fail(2, GearmanError(.serverError, "UNKNOWN_JOB")))
        #expect(machine.textReceived("OK") == .succeed(3, .admin(["OK"])))
    }

    /// A foreground job's WORK_* packets may arrive in the middle of a listing.
    @Test func workPacketsInterleaveWithAListing() {
        var machine = ClientMachine()
        _ = machine.send(.jobCreated, promise: 1, sink: "a", deadline: Self.deadline)
        _ = machine.packetReceived(.response(.jobCreated, "H:vm:1"))
        _ = machine.send(.admin(isListing: true), promise: 2, sink: nil, deadline: Self.deadline)
        #expect(machine.textReceived("fn\t1\t1\t1") == .none)
        #expect(machine.packetReceived(.response(.workData, "H:vm:1", "d")) == .deliver(["a"], .data(ByteBuffer(string: "d"))))
        #expect(machine.textReceived(".") == .succeed(2, .admin(["fn\t1\t1\t1"])))
    }

    // MARK: Disagreement closes everything

    /// A reply of the wrong kind fails every request and every foreground sink, then refuses new requests.
    @Test func wrongReplyKindFailsAllAndCloses() throws {
        var machine = ClientMachine()
        _ = machine.send(.jobCreated, promise: 1, sink: "running", deadline: Self.deadline)
        _ = machine.packetReceived(.response(.jobCreated, "H:vm:1"))
        _ = machine.send(.status, promise: 2, sink: nil, deadline: Self.deadline)
        _ = machine.send(.jobCreated, promise: 3, sink: "waiting", deadline: Self.deadline)
        let action = machine.packetReceived(.response(.jobCreated, "H:vm:2"))
        let closed = try #require(Self.unexpectedReply(action))
        #expect(closed.promises == [2, 3])
        #expect(closed.sinks == ["running", "waiting"])
        #expect(machine.pendingCount == 0)

        guard case .failAllAndClose(_, _, let error) = action else { return }
        #expect(machine.send(.echo, promise: 4, sink: nil, deadline: Self.deadline) == .fail(error))
        #expect(machine.packetReceived(.response(.echoRes, "x")) == .none)
        #expect(machine.textReceived("OK") == .none)
    }

    @Test(arguments: [
        GearmanPacket.response(.jobCreated, "H:vm:1"),
        GearmanPacket.response(.error, "ERR", "text"),
        GearmanPacket.response(.echoRes, "x"),
        GearmanPacket.response(.noop),
    ])
    func replyWithNothingPendingCloses(packet: GearmanPacket) throws {
        var machine = ClientMachine()
        let closed = try #require(Self.unexpectedReply(machine.packetReceived(packet)))
        #expect(closed.promises.isEmpty && closed.sinks.isEmpty)
        #expect(machine.send(.echo, promise: 1, sink: nil, deadline: Self.deadline) != .write)
    }

    @Test func textWithNothingPendingCloses() throws {
        var machine = ClientMachine()
        #expect(Self.unexpectedReply(machine.textReceived("OK")) != nil)
    }

    /// A binary reply while admin text is awaited (even ERROR) and text while a packet is awaited both close.
    @Test func binaryAndTextCrossingClose() throws {
        var admin = ClientMachine()
        _ = admin.send(.admin(isListing: false), promise: 1, sink: nil, deadline: Self.deadline)
        #expect(try #require(Self.unexpectedReply(admin.packetReceived(.response(.error, "E", "t")))).promises == [1])

        var binary = ClientMachine()
        _ = binary.send(.jobCreated, promise: 1, sink: "s", deadline: Self.deadline)
        let closed = try #require(Self.unexpectedReply(binary.textReceived("OK")))
        #expect(closed.promises == [1])
        #expect(closed.sinks == ["s"])
    }

    /// Every mismatched pair of request and reply closes.
    @Test func everyMismatchedPairCloses() {
        let expectations: [GearmanExpectation] = [.jobCreated, .status, .statusUnique, .echo, .option]
        let replies: [GearmanPacket] = [
            .response(.jobCreated, "H:1"), .response(.statusRes, "H:1", "0", "0", "0", "0"),
            .response(.statusResUnique, "u", "0", "0", "0", "0", "0"), .response(.echoRes, "x"), .response(.optionRes, "exceptions"),
        ]
        for (i, expectation) in expectations.enumerated() {
            for (j, reply) in replies.enumerated() where i != j {
                var machine = ClientMachine()
                _ = machine.send(expectation, promise: 1, sink: nil, deadline: Self.deadline)
                #expect(Self.unexpectedReply(machine.packetReceived(reply))?.promises == [1], "\(expectation) answered by \(reply)")
            }
        }
    }

    /// After `close`, requests fail at once with the close error; in-flight work is handed back once.
    @Test func closeFailsInFlightAndLaterRequests() {
        var machine = ClientMachine()
        _ = machine.send(.jobCreated, promise: 1, sink: "a", deadline: Self.deadline)
        _ = machine.packetReceived(.response(.jobCreated, "H:vm:1"))
        _ = machine.send(.echo, promise: 2, sink: nil, deadline: Self.deadline)
        _ = machine.send(.jobCreated, promise: 3, sink: "b", deadline: Self.deadline)
        let error = GearmanError(.connectionClosed, "gone")
        let (promises, sinks) = machine.close(error)
        #expect(promises == [2, 3])
        #expect(sinks.sorted() == ["a", "b"])
        #expect(machine.send(.echo, promise: 4, sink: nil, deadline: Self.deadline) == .fail(error))
        #expect(machine.send(nil, promise: 5, sink: nil, deadline: Self.deadline) == .fail(error))
        #expect(machine.hitDeadline(now: .distantFuture) == .none)
        let again = machine.close(GearmanError(.timeout, "later"))
        #expect(again.0.isEmpty && again.1.isEmpty)
        #expect(machine.send(.echo, promise: 6, sink: nil, deadline: Self.deadline) == .fail(error))
    }

    // MARK: Deadlines

    @Test func deadlinesFollowTheHead() {
        var machine = ClientMachine()
        #expect(machine.hitDeadline(now: .distantFuture) == .none)
        _ = machine.send(.echo, promise: 1, sink: nil, deadline: .uptimeNanoseconds(100))
        _ = machine.send(.echo, promise: 2, sink: nil, deadline: .uptimeNanoseconds(200))
        #expect(machine.nextDeadline == .uptimeNanoseconds(100))
        #expect(machine.hitDeadline(now: .uptimeNanoseconds(99)) == .reschedule(.uptimeNanoseconds(100)))
        #expect(machine.hitDeadline(now: .uptimeNanoseconds(100)) == .failAllAndClose)
        #expect(machine.hitDeadline(now: .uptimeNanoseconds(150)) == .failAllAndClose)
        _ = machine.packetReceived(.response(.echoRes, "1"))
        #expect(machine.nextDeadline == .uptimeNanoseconds(200))
        #expect(machine.hitDeadline(now: .uptimeNanoseconds(150)) == .reschedule(.uptimeNanoseconds(200)))
        _ = machine.packetReceived(.response(.echoRes, "2"))
        #expect(machine.nextDeadline == nil)
        #expect(machine.hitDeadline(now: .distantFuture) == .none)
    }
}
