import Gearman
import GatewayProtocol
import JobStore
import Logging
import Memcache
import NIOCore
import Synchronization

/// Jobs whose workers keep results in memcached under the Gearman job handle (the legacy pattern), made to look
/// like any other job.
///
/// The bridge never pushes anything itself: it turns what gearmand and memcached say into the job's Redis record
/// (progress, then `done` with the value found under the handle, or gone: `failed` as lost), and the change feed
/// pushes that like every other change. So `STATUS`, `RESULT`, `WAIT`, `WATCH` and `SUBSCRIBE` work the same,
/// through any gateway. It is the presence check of legacy jobs: one `LostJobWatch` per gateway asks it about every
/// legacy job that is watched or waited on, every `minimumInterval` while something changes, backing off to
/// `maximumInterval` while nothing does.
struct LegacyBridge: JobPresenceCheck {
    /// Memcached-backed functions and the PHP extension their workers store values with.
    let functions: [String: PHPMemcacheExtension]
    let memcache: MemcacheClient
    let store: RedisJobStore
    let gearman: GearmanServerPool
    let minimumInterval: Duration
    let maximumInterval: Duration
    let grace: Duration
    let statistics: GatewayStatistics
    let logger: Logger

    func handles(_ function: String) -> Bool { functions[function] != nil }

    private func results(for function: String) -> LegacyResultStore? {
        functions[function].map { LegacyResultStore(memcache: memcache, writtenBy: $0) }
    }

    /// Before the job is submitted: the memcached servers' CAS counters, so that a value an earlier job left under
    /// a reused handle is never taken as this job's (see `LegacyResultStore`). Nil when memcached is down: then
    /// any value under the handle counts.
    func watermarks(for function: String) async -> [UInt64]? {
        guard let results = results(for: function) else { return nil }
        do {
            return try await results.watermarks()
        } catch {
            logger.warning("could not take memcached's CAS watermark", metadata: ["job.function": "\(function)", "job.error": "\(error)"])
            return nil
        }
    }

    /// After gearmand named the handle: record the watermark of the server that holds the handle's key.
    func fence(_ id: JobID, function: String, handle: String, watermarks: [UInt64]?) async {
        guard let results = results(for: function), let watermarks, let watermark = results.watermark(for: handle, in: watermarks) else { return }
        do {
            try await store.setLegacyFence(id, String(watermark))
        } catch {
            logger.warning("could not record a legacy job's watermark", metadata: ["job.id": "\(id)", "job.error": "\(error)"])
        }
    }

    // MARK: JobPresenceCheck (run by a `LostJobWatch`)

    func covers(_ record: JobRecord) -> Bool { handles(record.function) }

    /// One round over `records`, in one pipelined `GET_STATUS` batch per server: a job gearmand knows gets its
    /// progress written; one it no longer knows gets the result found under its handle, or is gone.
    func presence(of records: [JobRecord]) async -> [JobID: JobPresence] {
        var byServer: [GearmanServerAddress: [(JobRecord, String)]] = [:]
        for record in records {
            guard let handle = record.handle, let server = record.server.flatMap(GearmanServerAddress.init) else { continue }
            byServer[server, default: []].append((record, handle))
        }
        var answers: [JobID: JobPresence] = [:]
        for (server, jobs) in byServer {
            guard let client = gearman.client(for: server) else { continue }
            statistics.legacyPolls.add(1, ordering: .relaxed)
            guard let statuses = try? await client.status(handles: jobs.map(\.1)) else { continue }  // gearmand down: decide nothing
            for ((record, handle), status) in zip(jobs, statuses) {
                if status.known {
                    answers[record.id] = await progress(record, status)
                } else {
                    answers[record.id] = await finish(record, handle: handle)
                }
            }
        }
        return answers
    }

    func lostReason(_ record: JobRecord, grace: Duration) -> String {
        LostJobReason.reason("gearmand no longer knows the job and memcached has no result under \(record.handle ?? "its handle") after \(grace.components.seconds) s")
    }

    private func progress(_ record: JobRecord, _ status: GearmanJobStatus) async -> JobPresence {
        let starts = status.running && record.state == .queued
        guard starts || status.numerator != record.numerator || status.denominator != record.denominator else { return .present }
        do {
            // One write for state and numbers: a separate "running" write would reset the numbers under a concurrent poll.
            try await store.reportProgress(record.id, numerator: status.numerator, denominator: status.denominator, running: status.running)
            return .moved
        } catch {
            logger.warning("could not record a legacy job's progress", metadata: ["job.id": "\(record.id)", "job.error": "\(error)"])
            return .present
        }
    }

    /// gearmand no longer knows the job: its result is in memcached, or it never comes (gone). Nil: memcached cannot
    /// be asked.
    private func finish(_ record: JobRecord, handle: String) async -> JobPresence? {
        guard let results = results(for: record.function) else { return nil }
        let watermark = record.legacyFence.flatMap { UInt64($0) }
        do {
            guard let value = try await results.result(handle: handle, after: watermark) else { return .gone }
            try await store.completeUnlessFinished(record.id, result: Self.bytes(of: value))
            return .moved
        } catch {
            logger.warning("could not read a legacy job's result", metadata: ["job.id": "\(record.id)", "job.error": "\(error)"])
            return nil
        }
    }

    /// A PHP value as result bytes: strings as stored, numbers and booleans as PHP prints them (`true` is `1`,
    /// `false` and `null` are empty), arrays and objects as their serialized text.
    static func bytes(of value: PHPValue) -> ByteBuffer {
        switch value {
        case .string(let bytes): bytes
        case .integer(let number): ByteBuffer(string: String(number))
        case .float(let number): ByteBuffer(string: number == number.rounded() && abs(number) < 1e15 ? String(Int64(number)) : String(number))
        case .bool(let flag): ByteBuffer(string: flag ? "1" : "")
        case .null: ByteBuffer()
        case .serialized(let serialized): serialized.bytes
        }
    }
}
