import Testing

@testable import Gearman

typealias WorkerMachine = GearmanWorkerStateMachine<String>

@Suite("GearmanWorkerStateMachine")
struct GearmanWorkerStateMachineTests {
    /// A machine with a GRAB_JOB_UNIQ in flight.
    static func grabbing() -> WorkerMachine {
        var machine = WorkerMachine()
        _ = machine.slotReserved()
        return machine
    }

    /// A machine asleep after PRE_SLEEP.
    static func sleeping() -> WorkerMachine {
        var machine = grabbing()
        _ = machine.noJob()
        return machine
    }

    /// A machine running one job and waiting for a slot for the next grab.
    static func runningOneJob() -> WorkerMachine {
        var machine = grabbing()
        _ = machine.jobAssigned("job-1")
        return machine
    }

    /// grab → NO_JOB → PRE_SLEEP → NOOP → wait for a slot → grab → JOB_ASSIGN_UNIQ.
    @Test func grabSleepWakeCycle() {
        var machine = WorkerMachine()
        #expect(machine.wantsSlot)
        #expect(machine.slotReserved() == .sendGrab)
        #expect(!machine.wantsSlot)
        #expect(machine.noJob() == .releaseSlotAndSleep)
        #expect(!machine.wantsSlot)
        #expect(machine.slotReserved() == .none)  // asleep: no grab until NOOP
        #expect(machine.noopReceived() == .none)
        #expect(machine.wantsSlot)
        #expect(machine.slotReserved() == .sendGrab)
        #expect(machine.jobAssigned("job-1") == .runJob("job-1"))
        #expect(machine.runningJobs == 1)
        #expect(machine.wantsSlot)  // one connection may hold several jobs
        #expect(machine.slotReserved() == .sendGrab)
        #expect(machine.jobAssigned("job-2") == .runJob("job-2"))
        #expect(machine.runningJobs == 2)
        #expect(machine.jobFinished() == .none)
        #expect(machine.jobFinished() == .none)
        #expect(machine.runningJobs == 0)
        #expect(!machine.isDraining)
    }

    /// Replies that do not fit the state change nothing.
    @Test func outOfStateEventsAreIgnored() {
        var waiting = WorkerMachine()
        #expect(waiting.noJob() == .none)
        #expect(waiting.jobAssigned("stray") == .none)
        #expect(waiting.noopReceived() == .none)
        #expect(waiting.runningJobs == 0)
        #expect(waiting.wantsSlot)

        var grabbing = Self.grabbing()
        #expect(grabbing.noopReceived() == .none)  // a NOOP while grabbing does not cancel the grab
        #expect(grabbing.slotReserved() == .none)
        #expect(grabbing.noJob() == .releaseSlotAndSleep)

        var sleeping = Self.sleeping()
        #expect(sleeping.noJob() == .none)
        #expect(sleeping.jobAssigned("stray") == .none)
        #expect(sleeping.runningJobs == 0)
    }

    // MARK: Draining

    @Test func drainWhileWaitingWithoutJobsCloses() {
        var machine = WorkerMachine()
        #expect(machine.drain() == .close)
        #expect(machine.isDraining)
        #expect(!machine.wantsSlot)
        #expect(machine.drain() == .none)
    }

    @Test func drainWhileWaitingWithJobsClosesAfterTheLast() {
        var machine = Self.runningOneJob()
        #expect(machine.wantsSlot)
        #expect(machine.drain() == .none)
        #expect(!machine.wantsSlot)
        #expect(machine.slotReserved() == .none)
        #expect(machine.jobFinished() == .close)
    }

    @Test func drainWhileGrabbingThenNoJob() {
        var machine = Self.grabbing()
        #expect(machine.drain() == .none)
        #expect(machine.isDraining)
        #expect(machine.noJob() == .releaseSlotAndClose)
        #expect(!machine.wantsSlot)
    }

    @Test func drainWhileGrabbingThenNoJobWithRunningJobs() {
        var machine = Self.runningOneJob()
        _ = machine.slotReserved()
        #expect(machine.drain() == .none)
        #expect(machine.noJob() == .releaseSlot)
        #expect(!machine.wantsSlot)
        #expect(machine.jobFinished() == .close)
    }

    /// A job handed out during the drain still runs (gearmand counts it as running); then the connection closes.
    @Test func drainWhileGrabbingThenJobAssigned() {
        var machine = Self.grabbing()
        #expect(machine.drain() == .none)
        #expect(machine.jobAssigned("late") == .runJob("late"))
        #expect(!machine.wantsSlot)
        #expect(machine.isDraining)
        #expect(machine.jobFinished() == .close)
    }

    @Test func drainWhileGrabbingThenJobAssignedWithRunningJobs() {
        var machine = Self.runningOneJob()
        _ = machine.slotReserved()
        _ = machine.drain()
        #expect(machine.jobAssigned("job-2") == .runJob("job-2"))
        #expect(machine.runningJobs == 2)
        #expect(machine.jobFinished() == .none)
        #expect(machine.jobFinished() == .close)
    }

    @Test func drainWhileSleepingWithoutJobsCloses() {
        var machine = Self.sleeping()
        #expect(machine.drain() == .close)
        #expect(machine.noopReceived() == .none)
        #expect(!machine.wantsSlot)
    }

    /// Asleep with a job still running: a NOOP does not wake a draining connection.
    @Test func drainWhileSleepingWithJobs() {
        var machine = Self.runningOneJob()
        _ = machine.slotReserved()
        _ = machine.noJob()
        #expect(machine.drain() == .none)
        #expect(machine.noopReceived() == .none)
        #expect(!machine.wantsSlot)
        #expect(machine.jobFinished() == .close)
    }

    // MARK: Connection loss

    /// A grab in flight will never be answered: its slot goes back.
    @Test func connectionClosedWhileGrabbingReleasesTheSlot() {
        var machine = Self.grabbing()
        #expect(machine.connectionClosed() == .releaseSlot)
        #expect(!machine.wantsSlot)
        #expect(machine.slotReserved() == .none)
        #expect(machine.noJob() == .none)
        #expect(machine.isDraining)

        var draining = Self.grabbing()
        _ = draining.drain()
        #expect(draining.connectionClosed() == .releaseSlot)
    }

    /// No slot is held while waiting or asleep; running jobs finish without reopening anything.
    @Test func connectionClosedOutsideAGrabHoldsNoSlot() {
        var waiting = WorkerMachine()
        #expect(waiting.connectionClosed() == .none)
        var sleeping = Self.sleeping()
        #expect(sleeping.connectionClosed() == .none)
        var running = Self.runningOneJob()
        #expect(running.connectionClosed() == .none)
        #expect(running.jobFinished() == .none)
        #expect(running.runningJobs == 0)
        #expect(!running.wantsSlot)
    }
}
