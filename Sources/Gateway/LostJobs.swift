import Gearman
import GatewayProtocol
import JobStore
import Logging
import Synchronization

/// One way to know a job is gone, for one kind of job: gearmand by unique key for jobs whose workers write Redis
/// (`GearmanPresenceCheck`), gearmand by handle plus memcached for legacy ones (`LegacyJobsPlugin`).
protocol JobPresenceCheck: Sendable {
    /// Whether this check is the one for the job.
    func covers(_ record: JobRecord) -> Bool
    /// Asks about unfinished jobs it covers; a job it could not ask about (its server is down) has no answer, and
    /// nothing is decided about it.
    func presence(of records: [JobRecord]) async -> [JobID: JobPresence]
    /// The reason a job it found gone fails with (`FAILED <id> lost: …`).
    func lostReason(_ record: JobRecord, grace: Duration) -> String
}

/// Jobs whose workers write their outcome to Redis before they report to gearmand: gearmand forgetting the job alone
/// means nothing (it forgets a finished one), so only a job unknown to gearmand *and* unfinished in Redis for the
/// whole grace period is lost (its worker died with it, gearmand restarted without a persistent queue). Asked for by
/// unique key, which survives gearmand's handle renumbering on a persistent-queue replay.
struct GearmanPresenceCheck: JobPresenceCheck {
    let gearman: GearmanServerPool
    /// Jobs of its functions are the legacy path's.
    let legacy: (any LegacyJobsPlugin)?

    func covers(_ record: JobRecord) -> Bool {
        !(legacy?.handles(record.function) ?? false)
    }

    func presence(of records: [JobRecord]) async -> [JobID: JobPresence] {
        var byServer: [GearmanServerAddress: [JobRecord]] = [:]
        for record in records {
            let server = record.server.flatMap(GearmanServerAddress.init) ?? gearman.ranking(for: record.id.rawValue)[0].address
            byServer[server, default: []].append(record)
        }
        var answers: [JobID: JobPresence] = [:]
        for (server, records) in byServer {
            guard let client = gearman.client(for: server), let statuses = try? await client.status(uniques: records.map(\.id.rawValue)) else {
                continue  // cannot ask: decide nothing
            }
            for (record, status) in zip(records, statuses) { answers[record.id] = status.known ? .present : .gone }
        }
        return answers
    }

    func lostReason(_ record: JobRecord, grace: Duration) -> String {
        LostJobReason.reason("gearmand no longer knows the job and no result came within \(grace.components.seconds) s")
    }
}

/// Asks a presence check about the unfinished jobs someone follows, on a timer, and fails as lost those gone for the
/// whole grace period (the tracker keeps since when each is gone). It asks every `minimumInterval` while jobs move,
/// backing off to `maximumInterval` while none does.
struct LostJobWatch: Sendable {
    let check: any JobPresenceCheck
    let store: RedisJobStore
    let tracker: JobTracker
    let minimumInterval: Duration
    let maximumInterval: Duration
    let grace: Duration
    let statistics: GatewayStatistics
    let logger: Logger

    /// Followed jobs read and asked about at a time: what a check holds at once stays small however many jobs are
    /// followed (10,000 records read at once, freed between long-lived allocations, left glibc's heap fragmented).
    static let jobsPerStep = 256

    func run() async {
        var interval = minimumInterval
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            let ids = await tracker.followedIDs()
            var moved = false
            var readAny = false
            for start in stride(from: 0, to: ids.count, by: Self.jobsPerStep) {
                guard let records = try? await store.records(Array(ids[start..<min(start + Self.jobsPerStep, ids.count)])) else { break }
                readAny = true
                let asked = records.compactMap { $0 }.filter { !$0.state.isTerminal && check.covers($0) }
                let answers = await check.presence(of: asked)
                let lost = await tracker.presenceAnswered(answers, asked: asked.map(\.id), grace: grace)
                for record in asked where lost.contains(record.id) { await markLost(record) }
                moved = moved || answers.values.contains(.moved)
            }
            guard readAny else {
                interval = maximumInterval
                continue
            }
            interval = moved ? minimumInterval : min(interval * 2, maximumInterval)
        }
    }

    private func markLost(_ record: JobRecord) async {
        let id = record.id
        do {
            if try await store.markLost(id, reason: check.lostReason(record, grace: grace)) {
                statistics.jobsLost.add(1, ordering: .relaxed)
                logger.notice("job lost", metadata: ["job.id": "\(id)"])
            }
        } catch {
            logger.warning("could not mark a lost job", metadata: ["job.id": "\(id)", "job.error": "\(error)"])
        }
    }
}
