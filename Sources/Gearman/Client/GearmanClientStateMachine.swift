import NIOCore

/// The reply a client request waits for.
enum GearmanExpectation: Hashable, Sendable {
    /// SUBMIT_JOB*: JOB_CREATED (or ERROR).
    case jobCreated
    /// GET_STATUS: STATUS_RES.
    case status
    /// GET_STATUS_UNIQUE: STATUS_RES_UNIQUE.
    case statusUnique
    /// ECHO_REQ: ECHO_RES.
    case echo
    /// OPTION_REQ: OPTION_RES.
    case option
    /// An admin text command: one line, or lines up to `.` for listings.
    case admin(isListing: Bool)
}

enum GearmanReply: Hashable, Sendable {
    case jobCreated(handle: String)
    case status(GearmanJobStatus)
    case echo(ByteBuffer)
    case option(String)
    case admin([String])
}

/// Matches gearmand's replies to a client's pipelined requests, and routes WORK_* packets to foreground jobs.
///
/// gearmand answers each request of a connection in order, so replies pop a FIFO (JOB_CREATED, ERROR,
/// STATUS_RES, STATUS_RES_UNIQUE, ECHO_RES, OPTION_RES and admin text); WORK_* packets are routed by job
/// handle instead. Anything else means the two sides disagree about the conversation, and the only safe
/// move is to fail everything and close. Generic over the promise and sink types so tests can use plain values.
struct GearmanClientStateMachine<Promise, Sink> {
    private struct Pending {
        var expectation: GearmanExpectation
        var promise: Promise
        /// Set for foreground submits: registered under the handle once JOB_CREATED names it.
        var sink: Sink?
        var deadline: NIODeadline
    }

    private enum State {
        case active(pending: CircularBuffer<Pending>, adminLines: [String], foreground: [String: [Sink]])
        case closed(GearmanError)
        case modifying
    }

    private var state: State = .active(pending: [], adminLines: [], foreground: [:])

    enum SendAction {
        case write
        case fail(GearmanError)
    }

    enum ReceiveAction {
        case none
        case succeed(Promise, GearmanReply)
        case fail(Promise, GearmanError)
        /// Deliver to every foreground caller of the job; a terminal event also unregisters them.
        case deliver([Sink], GearmanJobEvent)
        case failAllAndClose([Promise], [Sink], GearmanError)
    }

    enum DeadlineAction: Equatable {
        case none
        case reschedule(NIODeadline)
        case failAllAndClose
    }

    var pendingCount: Int {
        if case .active(let pending, _, _) = state { return pending.count }
        return 0
    }

    /// The earliest deadline among requests waiting for a reply (the head's, since they are FIFO).
    var nextDeadline: NIODeadline? {
        if case .active(let pending, _, _) = state { return pending.first?.deadline }
        return nil
    }

    // MARK: Events

    mutating func send(_ expectation: GearmanExpectation?, promise: Promise, sink: Sink?, deadline: NIODeadline) -> SendAction {
        switch state {
        case .active(var pending, let lines, let foreground):
            guard let expectation else { return .write }
            state = .modifying
            pending.append(Pending(expectation: expectation, promise: promise, sink: sink, deadline: deadline))
            state = .active(pending: pending, adminLines: lines, foreground: foreground)
            return .write
        case .closed(let error):
            return .fail(error)
        case .modifying:
            preconditionFailure("reentrant state machine")
        }
    }

    mutating func packetReceived(_ packet: GearmanPacket) -> ReceiveAction {
        guard case .active(var pending, let lines, var foreground) = state else { return .none }
        state = .modifying
        defer {
            if case .modifying = state { state = .active(pending: pending, adminLines: lines, foreground: foreground) }
        }

        if let event = Self.jobEvent(packet) {
            let handle = packet.handle
            guard let sinks = foreground[handle] else { return .none }
            if event.isTerminal { foreground[handle] = nil }
            return .deliver(sinks, event)
        }

        guard let head = pending.first else {
            return closeAll(&pending, &foreground, "\(packet.type) arrived with no request waiting for it")
        }
        switch (head.expectation, packet.type) {
        case (.admin, _):
            return closeAll(&pending, &foreground, "\(packet.type) arrived while an admin command waited for text")
        case (_, .error):
            pending.removeFirst()
            return .fail(head.promise, GearmanError(.serverError, "\(packet.string(at: 0)): \(packet.string(at: 1))"))
        case (.jobCreated, .jobCreated):
            pending.removeFirst()
            let handle = packet.handle
            if let sink = head.sink { foreground[handle, default: []].append(sink) }
            return .succeed(head.promise, .jobCreated(handle: handle))
        case (.status, .statusRes):
            pending.removeFirst()
            return .succeed(head.promise, .status(Self.status(packet, fieldOffset: 1, clientCountField: nil)))
        case (.statusUnique, .statusResUnique):
            pending.removeFirst()
            return .succeed(head.promise, .status(Self.status(packet, fieldOffset: 1, clientCountField: 5)))
        case (.echo, .echoRes):
            pending.removeFirst()
            return .succeed(head.promise, .echo(packet.arguments[0]))
        case (.option, .optionRes):
            pending.removeFirst()
            return .succeed(head.promise, .option(packet.string(at: 0)))
        default:
            return closeAll(&pending, &foreground, "\(packet.type) arrived while \(head.expectation) was expected")
        }
    }

    mutating func textReceived(_ line: String) -> ReceiveAction {
        guard case .active(var pending, var lines, var foreground) = state else { return .none }
        state = .modifying
        defer {
            if case .modifying = state { state = .active(pending: pending, adminLines: lines, foreground: foreground) }
        }
        guard let head = pending.first, case .admin(let isListing) = head.expectation else {
            return closeAll(&pending, &foreground, "admin text \(String(reflecting: line)) arrived with no admin command waiting")
        }
        // Errors (`ERR CODE text`) are one line even for listings.
        if lines.isEmpty && line.hasPrefix("ERR ") {
            pending.removeFirst()
            return .fail(head.promise, GearmanError(.serverError, String(line.dropFirst(4))))
        }
        if isListing && line != "." {
            lines.append(line)
            return .none
        }
        pending.removeFirst()
        let reply = isListing ? lines : [line]
        lines = []
        return .succeed(head.promise, .admin(reply))
    }

    /// The oldest request has waited too long: gearmand may never answer it, so nothing after it can be trusted.
    mutating func hitDeadline(now: NIODeadline) -> DeadlineAction {
        guard case .active(let pending, _, _) = state, let head = pending.first else { return .none }
        return head.deadline <= now ? .failAllAndClose : .reschedule(head.deadline)
    }

    /// Fails what is in flight; every later request fails at once with `error`.
    mutating func close(_ error: GearmanError) -> ([Promise], [Sink]) {
        guard case .active(var pending, _, var foreground) = state else { return ([], []) }
        state = .modifying
        let (promises, sinks) = Self.drain(&pending, &foreground)
        state = .closed(error)
        return (promises, sinks)
    }

    // MARK: Helpers

    private mutating func closeAll(
        _ pending: inout CircularBuffer<Pending>,
        _ foreground: inout [String: [Sink]],
        _ message: String
    ) -> ReceiveAction {
        let error = GearmanError(.unexpectedReply, message)
        let (promises, sinks) = Self.drain(&pending, &foreground)
        state = .closed(error)
        return .failAllAndClose(promises, sinks, error)
    }

    private static func drain(_ pending: inout CircularBuffer<Pending>, _ foreground: inout [String: [Sink]]) -> ([Promise], [Sink]) {
        let promises = pending.map(\.promise)
        // Foreground submits still waiting for JOB_CREATED hold a sink too.
        let sinks = foreground.values.flatMap { $0 } + pending.compactMap(\.sink)
        pending.removeAll()
        foreground.removeAll()
        return (promises, sinks)
    }

    private static func jobEvent(_ packet: GearmanPacket) -> GearmanJobEvent? {
        switch packet.type {
        case .workStatus:
            .status(numerator: UInt32(gearmanNumber: packet.string(at: 1)), denominator: UInt32(gearmanNumber: packet.string(at: 2)))
        case .workData: .data(packet.arguments[1])
        case .workWarning: .warning(packet.arguments[1])
        case .workComplete: .completed(packet.arguments[1])
        case .workFail: .failed
        case .workException: .exception(packet.arguments[1])
        default: nil
        }
    }

    /// STATUS_RES: handle, known, running, num, den; STATUS_RES_UNIQUE adds client_count.
    private static func status(_ packet: GearmanPacket, fieldOffset: Int, clientCountField: Int?) -> GearmanJobStatus {
        GearmanJobStatus(
            known: packet.string(at: fieldOffset) == "1",
            running: packet.string(at: fieldOffset + 1) == "1",
            numerator: UInt32(gearmanNumber: packet.string(at: fieldOffset + 2)),
            denominator: UInt32(gearmanNumber: packet.string(at: fieldOffset + 3)),
            clientCount: clientCountField.map { UInt32(gearmanNumber: packet.string(at: $0)) }
        )
    }
}
