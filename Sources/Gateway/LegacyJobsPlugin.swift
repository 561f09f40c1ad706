import JobStore
import LegacyJobs

/// The jobs of `--legacy-functions`, whose workers keep their results in memcached under the Gearman handle and never
/// write Redis: all the gateway does differently for them, behind one seam (module `LegacyJobs` does the work). At
/// submission the plugin fences the handles and records where gearmand put the jobs; it is their presence check
/// (run by a `LostJobWatch`), which also writes their progress and outcome to Redis; a lookup of one nobody follows
/// asks it once.
protocol LegacyJobsPlugin: JobPresenceCheck {
    /// Whether jobs of `function` are legacy ones.
    func handles(_ function: String) -> Bool
    /// Before a batch with legacy jobs goes to gearmand; returns what to call with the legacy jobs gearmand accepted.
    func submitting() async -> @Sendable ([RedisJobStore.JobLocation]) async -> Void
}

extension LegacyBridge: LegacyJobsPlugin {}
