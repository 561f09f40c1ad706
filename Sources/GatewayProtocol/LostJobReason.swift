/// A job the gateway ends as lost fails with a reason starting `lost:` (PROTOCOL.md, job states): the one spelling
/// of that convention, for the gateways that write it and the clients that tell a lost job from a worker's failure
/// by it on the wire. (The gateway itself reads the record's kind, `JobRecord.isLost`: a worker's reason may start
/// the same way.)
public enum LostJobReason {
    public static let prefix = "lost:"

    /// The reason of a job lost because of `cause`.
    public static func reason(_ cause: String) -> String { "\(prefix) \(cause)" }

    /// Whether a failed job's reason says it was lost.
    public static func isLost(_ reason: some Sequence<UInt8>) -> Bool { reason.starts(with: prefix.utf8) }
}
