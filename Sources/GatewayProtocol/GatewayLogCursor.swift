/// Extension: a position in a function's completion log (`<ms>-<seq>`, the Redis stream entry id). Every terminal
/// event of a `SUBSCRIBE … from=` carries the cursor just after it; `SUBSCRIBE <function> from=<cursor>` resumes there.
public struct GatewayLogCursor: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var milliseconds: UInt64
    public var sequence: UInt64

    /// Before every entry.
    public static let start = GatewayLogCursor(milliseconds: 0, sequence: 0)

    public init(milliseconds: UInt64, sequence: UInt64) {
        self.milliseconds = milliseconds
        self.sequence = sequence
    }

    /// `<ms>-<seq>`, both decimal (a bare `<ms>` means `<ms>-0`).
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard let milliseconds = GatewaySyntax.decimal(parts[0].utf8),
            let sequence = parts.count == 2 ? GatewaySyntax.decimal(parts[1].utf8) : 0
        else { return nil }
        self.init(milliseconds: milliseconds, sequence: sequence)
    }

    public static func < (a: Self, b: Self) -> Bool { (a.milliseconds, a.sequence) < (b.milliseconds, b.sequence) }

    public var description: String { "\(milliseconds)-\(sequence)" }
}

/// Extension: where a `SUBSCRIBE` starts (`from=`). Without `from=` a subscription is exactly protocol v1's: jobs
/// that end from now on, events without cursors.
public enum GatewaySubscriptionStart: Hashable, Sendable {
    /// `from=now`: what ends from now on, with cursors.
    case now
    /// `from=start`: everything the log still holds, then live.
    case start
    /// `from=<cursor>`: what ended after the cursor, then live.
    case after(GatewayLogCursor)
}
