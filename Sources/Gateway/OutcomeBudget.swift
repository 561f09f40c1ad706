import NIOCore
import Synchronization

/// Bytes of job outcomes (results and failure reasons) that lookups of all connections have reserved, are reading
/// from Redis, or hold until the client's socket took them (`--max-lookup-bytes-total`).
///
/// A lookup learns an outcome's size before it reads the outcome and reserves that much first; reservations are
/// granted in the order they were asked for, while the total stays within `limit` (or when nothing is reserved: an
/// outcome larger than the limit is read alone). So the gateway pauses lookups rather than fail them, and a burst
/// of lookups of a large result costs at most `limit` bytes, however many clients send it.
final class OutcomeBudget: Sendable {
    private struct Waiter {
        var bytes: Int
        var grant: @Sendable () -> Void
    }

    private struct State {
        var reserved = 0
        var peak = 0
        var waiters = CircularBuffer<Waiter>()
    }

    let limit: Int
    private let state = Mutex(State())

    init(limit: Int) {
        self.limit = limit
    }

    /// Bytes reserved now, and the most ever reserved at once.
    var reserved: Int { state.withLock { $0.reserved } }
    var peak: Int { state.withLock { $0.peak } }
    /// Reservations waiting for room.
    var waiting: Int { state.withLock { $0.waiters.count } }

    /// Reserves `bytes`, then calls `grant` (at once, or later on the thread of a `release`).
    func reserve(_ bytes: Int, then grant: @escaping @Sendable () -> Void) {
        let now = state.withLock { state -> Bool in
            guard state.waiters.isEmpty, Self.fits(bytes, in: &state, limit: limit) else {
                state.waiters.append(Waiter(bytes: bytes, grant: grant))
                return false
            }
            return true
        }
        if now { grant() }
    }

    /// Returns bytes a reservation no longer needs, and grants what waited for them.
    func release(_ bytes: Int) {
        guard bytes > 0 else { return }
        let granted = state.withLock { state -> [Waiter] in
            state.reserved -= bytes
            var granted: [Waiter] = []
            while let next = state.waiters.first, Self.fits(next.bytes, in: &state, limit: limit) {
                granted.append(state.waiters.removeFirst())
            }
            return granted
        }
        for waiter in granted { waiter.grant() }
    }

    private static func fits(_ bytes: Int, in state: inout State, limit: Int) -> Bool {
        guard state.reserved == 0 || state.reserved + bytes <= limit else { return false }
        state.reserved += bytes
        state.peak = max(state.peak, state.reserved)
        return true
    }
}

/// The lookup budget as two lanes: outcomes of at most `smallOutcome` bytes have a quarter of the limit to themselves,
/// so a client that holds the rest with large results it does not read (until `--output-stall`) cannot hold up
/// everyone's small ones. Which lane an outcome uses is decided here only, by its size.
final class OutcomeLanes: Sendable {
    static let smallOutcome = 64 * 1024

    let large: OutcomeBudget
    let small: OutcomeBudget

    init(limit: Int) {
        large = OutcomeBudget(limit: limit - limit / 4)
        small = OutcomeBudget(limit: limit / 4)
    }

    /// Bytes reserved now, and the lanes' peaks added (an upper bound of the most reserved at once).
    var reserved: Int { large.reserved + small.reserved }
    var peak: Int { large.peak + small.peak }

    func reserve(_ bytes: Int, then grant: @escaping @Sendable () -> Void) { lane(for: bytes).reserve(bytes, then: grant) }

    /// Gives back one reservation of `bytes`.
    func release(_ bytes: Int) { lane(for: bytes).release(bytes) }

    /// Gives back everything a holder still holds.
    func release(_ held: Held) {
        large.release(held.large)
        small.release(held.small)
    }

    func lane(for bytes: Int) -> OutcomeBudget { bytes <= Self.smallOutcome ? small : large }

    /// What one holder (a connection) holds in each lane.
    struct Held {
        private(set) var large = 0
        private(set) var small = 0

        var total: Int { large + small }

        mutating func add(_ bytes: Int) {
            if bytes <= OutcomeLanes.smallOutcome { small += bytes } else { large += bytes }
        }

        mutating func remove(_ bytes: Int) {
            if bytes <= OutcomeLanes.smallOutcome { small -= bytes } else { large -= bytes }
        }
    }
}
