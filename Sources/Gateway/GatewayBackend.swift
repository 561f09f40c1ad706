import Gearman
import GatewayProtocol
import JobStore
import Logging
import NIOCore
import Synchronization

/// A request that needs a backend which is down, or an id nobody issued: answered with an `ERR`.
struct GatewayFailure: Error {
    var code: GatewayErrorCode
    var message: String
}

/// What a job id refers to.
enum JobLookup {
    case found(JobRecord)
    /// Issued by this deployment, record gone (its TTL passed).
    case expired(JobID)
    case notFound
}

/// The gateway's work against gearmand and Redis: submitting, looking jobs up, ending lost ones.
struct GatewayBackend: Sendable {
    let store: RedisJobStore
    let gearman: GearmanServerPool
    let ids: JobIDKeyring
    let configuration: GatewayConfiguration
    let statistics: GatewayStatistics
    let logger: Logger
    /// Set when some functions keep their results in memcached.
    let legacy: (any LegacyJobsPlugin)?
    /// Whether the legacy bridge's poller already follows a job (then a lookup need not poll it too).
    let isFollowed: @Sendable (JobID) async -> Bool

    /// A `SUBMIT`, and the namespace its `unique=` coalesces in (its credential's; nil: the deployment-wide one).
    struct Submission: Sendable {
        var request: GatewaySubmission
        var namespace: String?
    }

    /// What a `SUBMIT` got: its job id, and whether it created the job or joined an unfinished one.
    struct Submitted: Sendable {
        var id: JobID
        var created: Bool
    }

    /// Creates the records, then submits to gearmand as background jobs whose unique keys are the job ids: one
    /// Redis pipeline and one gearmand batch for all of them (group commit; see `BackendBatcher`). The records of a
    /// batch with a unique key are created only after the previous batches' (its `turn`), so that of two pipelined
    /// submissions with the same unique key the first is the one that creates the job. A batch without one has
    /// nothing to join or be joined: its Redis step overlaps the others' (waiting for its turn made the Redis round
    /// trip the bound of every gateway's submit rate); so do the gearmand steps.
    ///
    /// The records enter the unaccepted index with their creation and leave it in one `SREM` once gearmand answered
    /// (or they were joined, or failed): what a gateway killed in between leaves there is found by the sweep of any
    /// gateway (`sweepUnacceptedJobs`), followed or not, and is never joined blindly (`CreateOutcome.unaccepted`).
    func submit(_ submissions: [Submission], turn: BatchTurn) async -> [Result<Submitted, GatewayFailure>] {
        let jobs = zip(submissions, ids.mint(submissions.count)).map { submission, id in
            RedisJobStore.NewJob(
                id: id, function: submission.request.function.rawValue, unique: submission.request.unique?.rawValue,
                resultTTL: configuration.resultTTL, namespace: submission.namespace
            )
        }
        let created: [Result<RedisJobStore.CreateOutcome, JobStoreError>]
        if Self.createsInTurn(jobs) { await turn.begin() } else { turn.end() }
        do {
            defer { turn.end() }
            created = try await store.create(jobs)
        } catch {
            let failure = backendDown("Redis", error)
            return jobs.map { _ in .failure(failure) }
        }
        statistics.metrics.backendSucceeded("Redis")
        var results = [Result<Submitted, GatewayFailure>?](repeating: nil, count: jobs.count)
        var toSubmit: [Int] = []
        var suspects: [(index: Int, existing: JobID)] = []
        func settle(_ index: Int, _ outcome: Result<RedisJobStore.CreateOutcome, JobStoreError>) {
            switch outcome {
            case .success(.created):
                toSubmit.append(index)
            case .success(.joined(let existing)):
                statistics.jobsJoined.add(1, ordering: .relaxed)
                results[index] = .success(Submitted(id: existing, created: false))
            case .success(.unaccepted(let existing)):
                suspects.append((index, existing))
            case .failure(let error):
                results[index] = .failure(backendDown("Redis", error))
            }
        }
        for (index, outcome) in created.enumerated() { settle(index, outcome) }
        var accepted: [JobID] = []  // older jobs gearmand turned out to hold: their entries are cleared with the batch's
        if !suspects.isEmpty {
            // Rare: a gateway died between Redis and gearmand, or gearmand is slow beyond the grace. Join the job only
            // if gearmand has it (or cannot be asked: then the sweep decides later); a lost one is ended, and these
            // submissions create again (of several with the same unique, the first creates and the rest join it).
            let suspected = Array(Set(suspects.map(\.existing)))
            let unknown = await unknownToGearmand(suspected)
            let lost = unknown ?? []
            if unknown != nil { accepted = suspected.filter { !lost.contains($0) } }
            await endLost(lost, reason: Self.neverAcceptedReason)
            var again: [Int] = []
            for (index, existing) in suspects {
                if lost.contains(existing) {
                    again.append(index)
                } else {
                    settle(index, .success(.joined(existing)))
                }
            }
            suspects = []
            do {
                for (index, outcome) in zip(again, try await store.create(again.map { jobs[$0] })) { settle(index, outcome) }
            } catch {
                for index in again { settle(index, .failure(error)) }
            }
            // Unaccepted again only if the old job could not be ended (Redis trouble): join it; the sweep ends it later.
            for (index, existing) in suspects { settle(index, .success(.joined(existing))) }
        }
        var legacyAccepted: (@Sendable ([RedisJobStore.JobLocation]) async -> Void)?
        if let legacy, toSubmit.contains(where: { legacy.handles(jobs[$0].function) }) { legacyAccepted = await legacy.submitting() }
        let requests = toSubmit.map { index in
            GearmanJobRequest(
                function: jobs[index].function, unique: jobs[index].id.rawValue, payload: submissions[index].request.payload,
                priority: Self.priority(submissions[index].request.priority)
            )
        }
        var located: [(index: Int, location: RedisJobStore.JobLocation)] = []
        var unsettled: Set<JobID> = []
        for (index, outcome) in zip(toSubmit, await gearman.submitBackground(requests)) {
            let id = jobs[index].id
            switch outcome {
            case .success(let location):
                located.append((index, RedisJobStore.JobLocation(id: id, handle: location.handle, server: location.server.description)))
                results[index] = .success(Submitted(id: id, created: true))
            case .failure(let error):
                // The record must not stay queued for a job gearmand never took: whoever joined it learns it failed.
                // If that cannot be written either, its index entry stays for the sweep.
                if (try? await store.markFailed(id, reason: "gearmand did not accept the job: \(error.message)")) == nil { unsettled.insert(id) }
                results[index] = .failure(backendDown("gearmand", error))
            }
        }
        if !located.isEmpty { statistics.metrics.backendSucceeded("gearmand") }
        if let legacy, let legacyAccepted {
            // Only for legacy jobs: a jobgate worker records the handle itself when it starts the job; writing it here
            // too would cost every job a second Redis script and a second notification.
            await legacyAccepted(located.filter { legacy.handles(jobs[$0.index].function) }.map(\.location))
        }
        // Not waited for: the submitters' replies need not wait for this cleanup (one Redis round trip per batch).
        store.startClearingUnaccepted(jobs.map(\.id).filter { !unsettled.contains($0) } + accepted) { [logger, count = jobs.count] error in
            // The sweep clears them: gearmand knows these jobs.
            logger.warning("could not clear the unaccepted index", metadata: ["job.count": "\(count)", "job.error": "\(error)"])
        }
        statistics.jobsSubmitted.add(located.count, ordering: .relaxed)
        return results.map { $0! }
    }

    /// Whether a batch creates its records only after the batches before it: when one of its jobs has a unique key,
    /// which an earlier batch's job may hold too.
    static func createsInTurn(_ jobs: [RedisJobStore.NewJob]) -> Bool {
        jobs.contains { $0.unique != nil }
    }

    private static func priority(_ priority: GatewayPriority) -> GearmanPriority {
        switch priority {
        case .high: .high
        case .normal: .normal
        case .low: .low
        }
    }

    /// The job id, if this deployment issued `gatewayID` in exactly this spelling (its MAC checks out); nil for any
    /// other id, which is then `NOT_FOUND` without a lookup, even when a record of that name exists (another
    /// deployment's, written by a worker sharing gearmand).
    func issuedID(_ gatewayID: GatewayJobID) -> JobID? {
        ids.isGenuine(gatewayID.rawValue) ? JobID(rawValue: gatewayID.rawValue) : nil
    }

    /// What each id refers to, read in one Redis pipeline (only the ids this deployment issued are read). A found
    /// record has only the size of its result or reason (`outcomeSize`), to be read with `outcomes(of:)` when the
    /// lookup budget has room for it.
    func lookUp(_ gatewayIDs: [GatewayJobID]) async -> [Result<JobLookup, GatewayFailure>] {
        let jobIDs = gatewayIDs.map(issuedID)
        let records: [JobRecord?]
        do {
            records = try await store.recordsWithoutOutcome(jobIDs.compactMap { $0 })
        } catch {
            let failure = backendDown("Redis", error)
            return jobIDs.map { _ in .failure(failure) }
        }
        statistics.metrics.backendSucceeded("Redis")
        var found = records.makeIterator()
        var lookups: [Result<JobLookup, GatewayFailure>] = []
        for id in jobIDs {
            guard let id else {
                lookups.append(.success(.notFound))
                continue
            }
            guard let record = found.next()! else {
                lookups.append(.success(.expired(id)))
                continue
            }
            lookups.append(.success(.found(await refreshedIfLegacy(record))))
        }
        return lookups
    }

    /// The records with their result or reason read in (one Redis pipeline); nil where a record expired since.
    func outcomes(of records: [JobRecord]) async -> [Result<JobRecord?, GatewayFailure>] {
        let outcomes: [ByteBuffer?]
        do {
            outcomes = try await store.outcomes(of: records)
        } catch {
            let failure = backendDown("Redis", error)
            return records.map { _ in .failure(failure) }
        }
        return zip(records, outcomes).map { record, outcome in
            guard let outcome else { return .success(nil) }
            var record = record
            if record.state == .done { record.result = outcome } else { record.reason = outcome }
            return .success(record)
        }
    }

    /// Nobody may be polling an unwatched legacy job: ask gearmand and memcached now. (A followed one is left to the
    /// poller: two polls of one job racing could write an older progress over a newer one.)
    private func refreshedIfLegacy(_ record: JobRecord) async -> JobRecord {
        guard let legacy, !record.state.isTerminal, legacy.handles(record.function), !(await isFollowed(record.id)) else { return record }
        if await legacy.presence(of: [record])[record.id] == .moved, let fresh = try? await store.record(record.id) {
            return fresh
        }
        return record
    }

    func backendDown(_ backend: String, _ error: any Error) -> GatewayFailure {
        statistics.backendErrors.add(1, ordering: .relaxed)
        statistics.metrics.backendFailed(backend)
        return GatewayFailure(code: .backendDown, message: "\(backend) is unavailable: \(error)")
    }

    // MARK: Lost jobs

    static let neverAcceptedReason = LostJobReason.reason("gearmand never accepted the job (the gateway that created it stopped before submitting it)")

    /// Finds the jobs that a gateway created in Redis and then died (or lost Redis) before gearmand accepted them,
    /// whether or not anyone follows them: every gateway of the deployment sweeps the unaccepted index.
    ///
    /// The index holds only the jobs between their two steps (a submission clears its batch's entries once gearmand
    /// answered), so a sweep reads a handful of entries, not every record. An entry older than `--lost-grace` whose
    /// record is still queued, with no worker on it, is checked against every gearmand: one that none of them knows
    /// is ended as lost. The grace (30 s by default) is above gearmand's request timeout (10 s), after which the
    /// submitting gateway fails the job itself, so a submission still in flight is not taken for a lost one. Gateways sweeping at once
    /// do no harm: ending a job writes only over an unfinished record, and clearing an entry twice is a no-op.
    func sweepUnacceptedJobs() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: configuration.lostJobCheckInterval)
            await endUnacceptedJobs()
        }
    }

    private func endUnacceptedJobs() async {
        guard let entries = try? await store.unacceptedJobs(olderThan: configuration.lostJobGrace, limit: 1_000), !entries.isEmpty else { return }
        var settled: [JobID] = []
        var suspects: [JobID] = []
        for (id, record) in entries {
            // Gone, finished, or taken by a worker: gearmand had it (or it never was a job: a submission that joined).
            if let record, record.state == .queued, record.handle == nil { suspects.append(id) } else { settled.append(id) }
        }
        if let lost = await unknownToGearmand(suspects) {
            settled += suspects.filter { !lost.contains($0) }
            await endLost(lost, reason: Self.neverAcceptedReason)
        }
        try? await store.clearUnaccepted(settled)
    }

    /// The jobs no gearmand of the pool knows (by unique key: a job may be on any server, as the pool skips a server
    /// it cannot reach); nil when some server cannot be asked, so that nothing is decided on half an answer.
    private func unknownToGearmand(_ ids: [JobID]) async -> Set<JobID>? {
        var unknown = ids
        for client in gearman.clients where !unknown.isEmpty {
            guard let statuses = try? await client.status(uniques: unknown.map(\.rawValue)) else { return nil }
            unknown = zip(unknown, statuses).filter { !$0.1.known }.map(\.0)
        }
        return Set(unknown)
    }

    /// Fails unfinished jobs as lost and clears them from the unaccepted index.
    private func endLost(_ ids: Set<JobID>, reason: String) async {
        var ended: [JobID] = []
        for id in ids {
            do {
                if try await store.markLost(id, reason: reason) {
                    statistics.jobsLost.add(1, ordering: .relaxed)
                    logger.notice("job lost", metadata: ["job.id": "\(id)"])
                }
                ended.append(id)
            } catch {
                logger.warning("could not mark a lost job", metadata: ["job.id": "\(id)", "job.error": "\(error)"])
            }
        }
        try? await store.clearUnaccepted(ended)
    }
}
