extension RedisPrimaryLocator {
    /// Which server is the primary, and when to ask the sentinels again: events in, one action out.
    ///
    /// The primary is what the sentinels last named (`SENTINEL get-master-addr-by-name`) or announced
    /// (`+switch-master`). Anything that says it is not the primary any more (a `READONLY` reply, `ROLE` answering
    /// `slave`, a refused connection) forgets it and asks again. Each change of the primary starts a new epoch, so the
    /// answer to a question asked before a switch cannot undo the switch.
    struct StateMachine: Sendable {
        private(set) var primary: RedisAddress?
        private(set) var epoch = 0
        /// The epoch of the question in flight to the sentinels, if one is.
        private(set) var query: Int?

        enum Action: Hashable, Sendable {
            case none
            /// Connect to this address.
            case use(RedisAddress)
            /// Wait for the question in flight.
            case wait
            /// Ask the sentinels (tagged with this epoch); the caller waits for the answer.
            case ask(epoch: Int)
            /// The primary is (now) `address`: resume whoever waits, and close connections to `abandoned`.
            case switchTo(RedisAddress, abandoned: RedisAddress?)
            /// Close the connections to `address`, which is not the primary, and ask the sentinels (tagged with `ask`).
            case abandon(RedisAddress, ask: Int)
            /// No sentinel answered: fail whoever waits.
            case failWaiters(RedisError)
        }

        /// Someone wants to connect to the primary.
        mutating func primaryRequested() -> Action {
            if let primary { return .use(primary) }
            if query != nil { return .wait }
            query = epoch
            return .ask(epoch: epoch)
        }

        /// A sentinel named `address` as the primary, in answer to the question of `epoch`.
        mutating func sentinelAnswered(_ address: RedisAddress, epoch asked: Int) -> Action {
            // A question overtaken by an announcement or a newer question: its answer may predate a switch.
            guard query == asked else { return .none }
            query = nil
            return settle(on: address)
        }

        /// No sentinel could be asked, or none knows the primary.
        mutating func sentinelsFailed(_ error: RedisError, epoch asked: Int) -> Action {
            guard query == asked else { return .none }
            query = nil
            // With a primary known (a check after resubscribing failed), keep using it.
            return primary == nil ? .failWaiters(error) : .none
        }

        /// A sentinel announced `+switch-master` to `address`.
        mutating func switchAnnounced(to address: RedisAddress) -> Action {
            // A question in flight is answered by the announcement; its own answer will be ignored.
            query = nil
            return settle(on: address)
        }

        /// `address` is not the primary: it answered `READONLY` or `ROLE` said so, or refused a connection.
        mutating func primaryFailed(_ address: RedisAddress) -> Action {
            guard primary == address else { return .none }  // already forgotten, or a report about an older primary
            primary = nil
            epoch += 1
            // A question still out was asked about the failed primary: this one replaces it.
            query = epoch
            return .abandon(address, ask: epoch)
        }

        /// The `+switch-master` subscription is (again) confirmed on a sentinel: announcements made while it was down
        /// are gone, so ask once.
        mutating func subscribed() -> Action {
            guard query == nil else { return .none }
            return ask()
        }

        private mutating func ask() -> Action {
            query = epoch
            return .ask(epoch: epoch)
        }

        private mutating func settle(on address: RedisAddress) -> Action {
            let old = primary
            if old != address {
                primary = address
                epoch += 1
            }
            return .switchTo(address, abandoned: old == address ? nil : old)
        }
    }
}
