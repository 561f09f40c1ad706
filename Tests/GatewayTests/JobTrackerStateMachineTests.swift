import GatewayProtocol
import JobStore
import NIOCore
import Synchronization
import Testing

@testable import Gateway

/// The job tracker's bookkeeping, event by event, without Redis: which follower is shown what, and when interest ends.
struct JobTrackerStateMachineTests {
    final class Target: PushTarget {
        func push(_ response: GatewayResponse, ending: JobTrackerStateMachine.Token?) {}
        func holdEnd(_ update: JobUpdate, for watch: JobTrackerStateMachine.Token) {}
    }

    /// What a run of actions does, in a form tests can compare.
    enum Effect: Equatable {
        case push(ObjectIdentifier, GatewayResponse, ending: JobTrackerStateMachine.Token?)
        case holdEnd(ObjectIdentifier, JobState?, for: JobTrackerStateMachine.Token)
        case readAgain(JobID)
        case endWait(String)
        case jobEnded(JobState?, pushes: Int)
    }

    static let id = JobID(rawValue: "job-1")!
    static let gatewayID = GatewayJobID(rawValue: "job-1")!

    static func record(_ state: JobState, _ numerator: UInt32 = 0, of denominator: UInt32 = 0, function: String = "f") -> JobRecord {
        var record = JobRecord(id: id, state: state, function: function)
        record.numerator = numerator
        record.denominator = denominator
        if state == .done { record.result = ByteBuffer(string: "r") }
        if state == .failed { record.reason = ByteBuffer(string: "no") }
        return record
    }

    static func update(_ record: JobRecord?, read: UInt64 = .max) -> JobUpdate { JobUpdate(id: id, record: record, readNumber: read) }

    static func progress(_ numerator: UInt64, of denominator: UInt64) -> GatewayResponse {
        .event(.progress(gatewayID, numerator: numerator, denominator: denominator, message: ByteBuffer()), tag: nil)
    }

    static let done = GatewayResponse.event(.done(gatewayID, result: ByteBuffer(string: "r")), tag: nil)

    static func effects(_ actions: [JobTrackerStateMachine.Action]) -> [Effect] {
        var effects: [Effect] = []
        for action in actions {
            switch action {
            case .push(let target, let response, let ending):
                effects.append(.push(ObjectIdentifier(target), response, ending: ending))
            case .holdEnd(let target, let update, let token):
                effects.append(.holdEnd(ObjectIdentifier(target), update.record?.state, for: token))
            case .readAgain(let id):
                effects.append(.readAgain(id))
            case .endWait(_, .ended(let record?)):
                effects.append(.endWait("ended \(record.state)"))
            case .endWait(_, .ended(nil)):
                effects.append(.endWait("expired"))
            case .endWait(_, .stopped):
                effects.append(.endWait("stopped"))
            case .jobEnded(let record, let pushes):
                effects.append(.jobEnded(record?.state, pushes: pushes))
            }
        }
        return effects
    }

    /// A change that arrives before `WATCHING` is written is not shown: it may be older than what `WATCHING` showed
    /// (read on another connection). The job is read again, and the watcher starts from that read.
    @Test func pendingWatcherStartsFromAReadAfterItsOwn() {
        var machine = JobTrackerStateMachine()
        let target = Target()
        let token = JobTrackerStateMachine.Token(id: Self.id, number: 1)
        machine.watch(token, as: Self.gatewayID, target: target, tag: nil)
        #expect(machine.wantsChange(of: Self.id) && machine.followedCount == 1 && machine.watcherCount == 1)
        #expect(Self.effects(machine.read(Self.update(Self.record(.running, 1, of: 2), read: 1))).isEmpty, "held, not shown")
        let activated = machine.activate(token, shown: Self.record(.queued).progress, nextRead: 2, readInFlight: false)
        #expect(Self.effects(activated) == [.readAgain(Self.id)])
        #expect(
            Self.effects(machine.read(Self.update(Self.record(.running, 1, of: 2), read: 2)))
                == [.push(ObjectIdentifier(target), Self.progress(1, of: 2), ending: nil)]
        )
    }

    /// Progress never goes backwards: a read sent before the watcher's own answer came (still on its way when it
    /// was activated) is not shown, though it differs from what `WATCHING` showed; the read after it is.
    @Test func readsSentBeforeTheWatchersOwnAnswerAreNotShown() {
        var machine = JobTrackerStateMachine()
        let target = Target()
        let token = JobTrackerStateMachine.Token(id: Self.id, number: 1)
        machine.watch(token, as: Self.gatewayID, target: target, tag: nil)
        let activated = machine.activate(token, shown: Self.record(.running, 2, of: 3).progress, nextRead: 5, readInFlight: true)
        #expect(Self.effects(activated) == [.readAgain(Self.id)], "a read on its way: the job is read again after it")
        #expect(Self.effects(machine.read(Self.update(Self.record(.running, 1, of: 3), read: 4))).isEmpty, "older than WATCHING")
        #expect(Self.effects(machine.read(Self.update(Self.record(.running, 2, of: 3), read: 5))).isEmpty, "what WATCHING showed")
        #expect(
            Self.effects(machine.read(Self.update(Self.record(.running, 3, of: 3), read: 6)))
                == [.push(ObjectIdentifier(target), Self.progress(3, of: 3), ending: nil)]
        )
    }

    /// With no read on its way and nothing held, activating reads nothing more.
    @Test func quietActivationReadsNothing() {
        var machine = JobTrackerStateMachine()
        let token = JobTrackerStateMachine.Token(id: Self.id, number: 1)
        machine.watch(token, as: Self.gatewayID, target: Target(), tag: nil)
        #expect(machine.activate(token, shown: Self.record(.running, 1, of: 2).progress, nextRead: 3, readInFlight: false).isEmpty)
    }

    /// An end is final: read before the watcher's own answer or after, it goes out.
    @Test func anEndReadEarlierStillEndsTheWatch() {
        var machine = JobTrackerStateMachine()
        let target = Target()
        let token = JobTrackerStateMachine.Token(id: Self.id, number: 1)
        machine.watch(token, as: Self.gatewayID, target: target, tag: nil)
        _ = machine.activate(token, shown: Self.record(.running).progress, nextRead: 5, readInFlight: true)
        #expect(
            Self.effects(machine.read(Self.update(Self.record(.done), read: 4)))
                == [.push(ObjectIdentifier(target), Self.done, ending: token), .jobEnded(.done, pushes: 1)]
        )
    }

    /// Progress is de-duplicated per watcher, against what each was shown; a change of state alone is no event.
    @Test func progressIsShownOncePerWatcher() {
        var machine = JobTrackerStateMachine()
        let early = Target()
        let late = Target()
        let earlyToken = JobTrackerStateMachine.Token(id: Self.id, number: 1)
        let lateToken = JobTrackerStateMachine.Token(id: Self.id, number: 2)
        machine.watch(earlyToken, as: Self.gatewayID, target: early, tag: nil)
        _ = machine.activate(earlyToken, shown: Self.record(.queued).progress, nextRead: 1, readInFlight: false)
        #expect(Self.effects(machine.read(Self.update(Self.record(.running)))).isEmpty, "queued → running alone has no event")
        machine.watch(lateToken, as: Self.gatewayID, target: late, tag: nil)
        _ = machine.activate(lateToken, shown: Self.record(.running, 1, of: 2).progress, nextRead: 1, readInFlight: false)
        #expect(
            Self.effects(machine.read(Self.update(Self.record(.running, 1, of: 2))))
                == [.push(ObjectIdentifier(early), Self.progress(1, of: 2), ending: nil)]
        )
        #expect(Self.effects(machine.read(Self.update(Self.record(.running, 1, of: 2)))).isEmpty, "a re-read of the same progress")
    }

    /// The end goes to every watcher (ending its watch) and waiter once; the job is followed no more after it.
    @Test func endReachesEveryoneOnce() {
        var machine = JobTrackerStateMachine()
        let target = Target()
        let watch = JobTrackerStateMachine.Token(id: Self.id, number: 1)
        let wait = JobTrackerStateMachine.Token(id: Self.id, number: 2)
        machine.watch(watch, as: Self.gatewayID, target: target, tag: nil)
        _ = machine.activate(watch, shown: Self.record(.queued).progress, nextRead: 1, readInFlight: false)
        #expect(machine.wait(wait, onEnd: { _ in }) == nil)
        #expect(
            Self.effects(machine.read(Self.update(Self.record(.done))))
                == [.push(ObjectIdentifier(target), Self.done, ending: watch), .endWait("ended done"), .jobEnded(.done, pushes: 1)]
        )
        #expect(!machine.wantsChange(of: Self.id) && machine.followedCount == 0 && machine.watcherCount == 0)
        #expect(Self.effects(machine.read(Self.update(Self.record(.done)))).isEmpty)
        machine.unwatch(watch)
        #expect(machine.watcherCount == 0, "removing an ended watch changes nothing")
    }

    /// A record that expired ends watchers with `EXPIRED` and waiters with nothing.
    @Test func expiryEndsFollowers() {
        var machine = JobTrackerStateMachine()
        let target = Target()
        let watch = JobTrackerStateMachine.Token(id: Self.id, number: 1)
        machine.watch(watch, as: Self.gatewayID, target: target, tag: nil)
        _ = machine.activate(watch, shown: Self.record(.running).progress, nextRead: 1, readInFlight: false)
        _ = machine.wait(JobTrackerStateMachine.Token(id: Self.id, number: 2), onEnd: { _ in })
        #expect(
            Self.effects(machine.read(Self.update(nil)))
                == [.push(ObjectIdentifier(target), .event(.expired(Self.gatewayID), tag: nil), ending: watch), .endWait("expired"), .jobEnded(nil, pushes: 1)]
        )
    }

    /// An end held by a pending watcher goes out at activation and ends the watch; the job ended only once.
    @Test func heldEndEndsTheWatchAtActivation() {
        var machine = JobTrackerStateMachine()
        let target = Target()
        let token = JobTrackerStateMachine.Token(id: Self.id, number: 1)
        machine.watch(token, as: Self.gatewayID, target: target, tag: nil)
        #expect(Self.effects(machine.read(Self.update(Self.record(.done)))) == [.holdEnd(ObjectIdentifier(target), .done, for: token), .jobEnded(.done, pushes: 0)])
        #expect(Self.effects(machine.read(Self.update(Self.record(.done)))).isEmpty, "a re-read while pending: the end was handed over")
        let activated = machine.activate(token, shown: Self.record(.running).progress, nextRead: 3, readInFlight: false)
        #expect(Self.effects(activated) == [.push(ObjectIdentifier(target), Self.done, ending: token)])
        #expect(machine.followedCount == 0 && machine.watcherCount == 0)
    }

    /// Shutdown ends every wait now, and every later one at once; watches stay.
    @Test func shutdownEndsWaits() {
        var machine = JobTrackerStateMachine()
        machine.watch(JobTrackerStateMachine.Token(id: Self.id, number: 1), as: Self.gatewayID, target: Target(), tag: nil)
        _ = machine.wait(JobTrackerStateMachine.Token(id: Self.id, number: 2), onEnd: { _ in })
        #expect(Self.effects(machine.endAllWaits()) == [.endWait("stopped")])
        #expect(machine.followedCount == 1 && machine.watcherCount == 1)
        let late = machine.wait(JobTrackerStateMachine.Token(id: Self.id, number: 3), onEnd: { _ in })
        #expect(Self.effects(late.map { [$0] } ?? []) == [.endWait("stopped")])
        #expect(machine.followedCount == 1)
    }

    /// A wait taken away before the end is not ended; the last follower gone, the job is not followed.
    @Test func unwaitForgetsTheJob() {
        var machine = JobTrackerStateMachine()
        let token = JobTrackerStateMachine.Token(id: Self.id, number: 1)
        _ = machine.wait(token, onEnd: { _ in })
        #expect(machine.isFollowed(Self.id))
        machine.unwait(token)
        #expect(!machine.isFollowed(Self.id) && machine.followedIDs.isEmpty)
        #expect(Self.effects(machine.read(Self.update(Self.record(.done)))).isEmpty)
    }

    /// A followed job is lost only when every answer over the whole grace said it was gone; any other answer (or
    /// none: its server could not be asked) starts the grace again, and a job followed no more is never lost.
    @Test func lostOnlyAfterTheWholeGrace() {
        var machine = JobTrackerStateMachine()
        let token = JobTrackerStateMachine.Token(id: Self.id, number: 1)
        _ = machine.wait(token, onEnd: { _ in })
        let other = JobID(rawValue: "job-2")!
        _ = machine.wait(JobTrackerStateMachine.Token(id: other, number: 2), onEnd: { _ in })
        let start = ContinuousClock.now
        let grace = Duration.seconds(30)
        func answer(_ presence: JobPresence?, after seconds: Int64, asked: [JobID] = [Self.id]) -> [JobID] {
            machine.presenceAnswered(presence.map { [Self.id: $0] } ?? [:], asked: asked, at: start + .seconds(seconds), grace: grace)
        }
        #expect(answer(.gone, after: 0).isEmpty)
        #expect(answer(.gone, after: 29).isEmpty)
        #expect(answer(.present, after: 30).isEmpty, "known again: the grace starts over")
        #expect(answer(.gone, after: 31).isEmpty)
        #expect(answer(nil, after: 45, asked: [other]).isEmpty, "another check's round leaves it alone")
        #expect(answer(.gone, after: 61) == [Self.id])
        #expect(answer(.gone, after: 62).isEmpty, "reported once; the next round starts over")
        #expect(answer(nil, after: 100).isEmpty, "not asked: the grace starts over")
        #expect(answer(.gone, after: 101).isEmpty)
        machine.unwait(token)
        #expect(answer(.gone, after: 200).isEmpty, "followed no more")
    }
}
