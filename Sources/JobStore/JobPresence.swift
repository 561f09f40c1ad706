/// What the backend running a job says about it, asked while the job is unfinished in Redis (by a gateway's
/// presence checks: gearmand by unique key, or the legacy bridge by handle and memcached).
public enum JobPresence: Sendable, Hashable {
    /// It still has the job.
    case present
    /// It had news the check wrote to the record (progress, or the outcome found elsewhere): ask again soon.
    case moved
    /// It no longer knows the job, and no outcome came: lost once that lasts the grace period.
    case gone
}
