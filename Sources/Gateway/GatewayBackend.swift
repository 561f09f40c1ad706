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
    let ids: JobIDMinter
    let configuration: GatewayConfiguration
    let statistics: GatewayStatistics
    let logger: Logger
    /// Set when some functions keep their results in memcached.
    let legacy: LegacyBridge?
    /// Whether the legacy bridge's poller already follows a job (then a lookup need not poll it too).
    let isFollowed: @Sendable (JobID) -> Bool

    /// Creates the record, then submits to gearmand as a background job whose unique key is the job id.
    func submit(_ submission: GatewaySubmission) async throws(GatewayFailure) -> (JobID, created: Bool) {
        let id = ids.mint()
        let outcome: RedisJobStore.CreateOutcome
        do {
            outcome = try await store.create(
                id: id,
                function: submission.function.rawValue,
                unique: submission.unique?.rawValue,
                resultTTL: configuration.resultTTL
            )
        } catch {
            throw backendDown("Redis", error)
        }
        statistics.metrics.backendSucceeded("Redis")
        if case .joined(let existing) = outcome {
            statistics.jobsJoined.add(1, ordering: .relaxed)
            return (existing, false)
        }
        let priority: GearmanPriority =
            switch submission.priority {
            case .high: .high
            case .normal: .normal
            case .low: .low
            }
        let watermarks = await legacy?.watermarks(for: submission.function.rawValue)
        let request = GearmanJobRequest(function: submission.function.rawValue, unique: id.rawValue, payload: submission.payload, priority: priority)
        let location: GearmanJobLocation
        do {
            location = try await gearman.submitBackground(request)
        } catch {
            // The record must not stay queued for a job gearmand never took: whoever joined it learns it failed.
            _ = try? await store.markFailed(id, reason: "gearmand did not accept the job: \(error.message)")
            throw backendDown("gearmand", error)
        }
        statistics.metrics.backendSucceeded("gearmand")
        do {
            try await store.setLocation(id, handle: location.handle, server: location.server.description)
        } catch {
            // The job runs anyway; its worker records the location when it starts.
            logger.warning("could not record a job's location", metadata: ["job.id": "\(id)", "job.error": "\(error)"])
        }
        await legacy?.fence(id, function: submission.function.rawValue, handle: location.handle, watermarks: watermarks)
        statistics.jobsSubmitted.add(1, ordering: .relaxed)
        return (id, true)
    }

    func lookUp(_ gatewayID: GatewayJobID) async throws(GatewayFailure) -> JobLookup {
        guard let id = JobID(rawValue: gatewayID.rawValue) else { return .notFound }
        let record: JobRecord?
        do {
            record = try await store.record(id)
        } catch {
            throw backendDown("Redis", error)
        }
        statistics.metrics.backendSucceeded("Redis")
        if let record {
            // Nobody may be polling an unwatched legacy job: ask gearmand and memcached now. (A followed one is left to
            // the poller: two polls of one job racing could write an older progress over a newer one.)
            if let legacy, !record.state.isTerminal, legacy.handles(record.function), !isFollowed(id) {
                var unknownSince: [JobID: ContinuousClock.Instant] = [:]
                if await legacy.poll([record], unknownSince: &unknownSince), let fresh = try? await store.record(id) {
                    return .found(fresh)
                }
            }
            return .found(record)
        }
        return ids.isGenuine(id.rawValue) ? .expired(id) : .notFound
    }

    func record(_ id: JobID) async throws(GatewayFailure) -> JobRecord? {
        do {
            return try await store.record(id)
        } catch {
            throw backendDown("Redis", error)
        }
    }

    func backendDown(_ backend: String, _ error: any Error) -> GatewayFailure {
        statistics.backendErrors.add(1, ordering: .relaxed)
        statistics.metrics.backendFailed(backend)
        return GatewayFailure(code: .backendDown, message: "\(backend) is unavailable: \(error)")
    }

    // MARK: Lost jobs

    /// Ends followed jobs that gearmand no longer knows and that got no outcome within the grace period.
    ///
    /// gearmand forgets a job once it completed, so "unknown" alone means nothing: a worker writes the outcome
    /// to Redis before it reports to gearmand. Only a job unknown to gearmand and still unfinished in Redis for
    /// the whole grace period is lost (its worker died with it, gearmand restarted without a persistent queue,
    /// or the gateway died between creating and submitting it). Jobs are asked for by unique key, which survives
    /// gearmand's handle renumbering on a persistent-queue replay.
    func watchForLostJobs(followed: @Sendable () -> [JobID]) async {
        var unknownSince: [JobID: ContinuousClock.Instant] = [:]
        while !Task.isCancelled {
            try? await Task.sleep(for: configuration.lostJobCheckInterval)
            let ids = followed()
            guard !ids.isEmpty, let records = try? await store.records(ids) else { continue }
            var unfinished: [GearmanServerAddress: [JobRecord]] = [:]
            // Legacy jobs never write Redis: the legacy bridge decides when they are lost.
            for record in records.compactMap({ $0 }) where !record.state.isTerminal && !(legacy?.handles(record.function) ?? false) {
                let server = record.server.flatMap(GearmanServerAddress.init) ?? gearman.ranking(for: record.id.rawValue)[0].address
                unfinished[server, default: []].append(record)
            }
            var stillUnknown: Set<JobID> = []
            for (server, records) in unfinished {
                guard let client = gearman.client(for: server),
                    let statuses = try? await client.status(uniques: records.map(\.id.rawValue))
                else { continue }  // cannot ask: decide nothing
                for (record, status) in zip(records, statuses) where !status.known {
                    stillUnknown.insert(record.id)
                }
            }
            let now = ContinuousClock.now
            unknownSince = unknownSince.filter { stillUnknown.contains($0.key) }
            for id in stillUnknown {
                let since = unknownSince[id] ?? now
                unknownSince[id] = since
                guard now - since >= configuration.lostJobGrace else { continue }
                unknownSince[id] = nil
                let seconds = configuration.lostJobGrace.components.seconds
                do {
                    try await store.markFailed(id, reason: "lost: gearmand no longer knows the job and no result came within \(seconds) s")
                    statistics.jobsLost.add(1, ordering: .relaxed)
                    logger.notice("job lost", metadata: ["job.id": "\(id)"])
                } catch {
                    logger.warning("could not mark a lost job", metadata: ["job.id": "\(id)", "job.error": "\(error)"])
                }
            }
        }
    }
}
