/// The grab cycle of one worker connection: GRAB_JOB_UNIQ, then a job or NO_JOB; after NO_JOB, PRE_SLEEP
/// and wait for NOOP. A grab needs a free slot of the worker's shared concurrency, reserved before sending.
///
/// Draining stops new grabs; the connection closes once its running jobs have reported, so that their
/// WORK_COMPLETE still reaches gearmand. Generic over the job type so tests can use plain values.
struct GearmanWorkerStateMachine<Job> {
    private enum State {
        /// Wants to grab; waits for a slot.
        case waitingForSlot
        /// GRAB_JOB_UNIQ sent with a reserved slot; the reply decides what the slot is for.
        case grabbing(draining: Bool)
        /// PRE_SLEEP sent; gearmand sends NOOP when a job arrives.
        case sleeping
        case draining
        case closed
    }

    private var state: State = .waitingForSlot
    private(set) var runningJobs = 0

    enum Action {
        case none
        case sendGrab
        /// The reserved slot is not needed: give it back, then PRE_SLEEP.
        case releaseSlotAndSleep
        /// Hand the job to a runner; the reserved slot is now the job's. Then look for another slot.
        case runJob(Job)
        case releaseSlot
        case close
        case releaseSlotAndClose
    }

    /// Whether the connection would grab if it had a slot.
    var wantsSlot: Bool {
        if case .waitingForSlot = state { return true }
        return false
    }

    /// A slot was reserved for this connection (only ask when `wantsSlot`).
    mutating func slotReserved() -> Action {
        guard case .waitingForSlot = state else { return .none }
        state = .grabbing(draining: false)
        return .sendGrab
    }

    mutating func noJob() -> Action {
        switch state {
        case .grabbing(draining: false):
            state = .sleeping
            return .releaseSlotAndSleep
        case .grabbing(draining: true):
            guard runningJobs == 0 else {
                state = .draining
                return .releaseSlot
            }
            state = .closed
            return .releaseSlotAndClose
        default:
            return .none
        }
    }

    mutating func jobAssigned(_ job: Job) -> Action {
        guard case .grabbing(let draining) = state else { return .none }
        runningJobs += 1
        // Even while draining a job that was handed out must run: gearmand already counts it as running.
        state = draining ? .draining : .waitingForSlot
        return .runJob(job)
    }

    mutating func noopReceived() -> Action {
        guard case .sleeping = state else { return .none }
        state = .waitingForSlot
        return .none
    }

    mutating func jobFinished() -> Action {
        runningJobs -= 1
        if case .draining = state, runningJobs == 0 {
            state = .closed
            return .close
        }
        return .none
    }

    /// Take no new jobs; close once the running ones are done.
    mutating func drain() -> Action {
        switch state {
        case .grabbing:
            state = .grabbing(draining: true)
            return .none
        case .waitingForSlot, .sleeping:
            state = .draining
            if runningJobs == 0 {
                state = .closed
                return .close
            }
            return .none
        case .draining, .closed:
            return .none
        }
    }

    /// The connection is gone: a grab in flight will never be answered, so its slot goes back.
    mutating func connectionClosed() -> Action {
        defer { state = .closed }
        if case .grabbing = state { return .releaseSlot }
        return .none
    }

    var isDraining: Bool {
        switch state {
        case .grabbing(draining: true), .draining, .closed: true
        default: false
        }
    }
}
