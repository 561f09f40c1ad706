public import Gearman
import GatewayProtocol
public import JobStore
public import Logging
public import Memcache
import NIOCore

/// Jobs whose workers keep results in memcached under the Gearman job handle (the legacy pattern), made to look
/// like any other job.
///
/// The bridge never pushes anything itself: it turns what gearmand and memcached say into the job's Redis record
/// (progress, then `done` with the value found under the handle, or gone: `failed` as lost), and the change feed
/// pushes that like every other change. So `STATUS`, `RESULT`, `WAIT`, `WATCH` and `SUBSCRIBE` work the same,
/// through any gateway. It is the presence check of legacy jobs: the gateway asks it about every legacy job that is
/// watched or waited on, on a timer, and fails as lost those gone for the grace period.
public struct LegacyBridge: Sendable {
    /// Memcached-backed functions and the PHP extension their workers store values with.
    let functions: [String: PHPMemcacheExtension]
    let memcache: MemcacheClient
    let store: RedisJobStore
    let gearman: GearmanServerPool
    /// Called once per pipelined gearmand status batch (the gateway counts them).
    let polled: @Sendable () -> Void
    let logger: Logger

    /// The record field holding the fence of a legacy job: the CAS watermark of the memcached server that holds its
    /// handle's key, taken before the job was submitted (see `LegacyResultStore`). In the record, not in the bridge,
    /// because any gateway of the deployment may be the one that finds the job's result.
    static let fenceField = "legacy_fence"

    public init(
        functions: [String: PHPMemcacheExtension],
        memcache: MemcacheClient,
        store: RedisJobStore,
        gearman: GearmanServerPool,
        polled: @escaping @Sendable () -> Void = {},
        logger: Logger
    ) {
        self.functions = functions
        self.memcache = memcache
        self.store = store
        self.gearman = gearman
        self.polled = polled
        self.logger = logger
    }

    public func handles(_ function: String) -> Bool { functions[function] != nil }

    private func results(for function: String) -> LegacyResultStore? {
        functions[function].map { LegacyResultStore(memcache: memcache, writtenBy: $0) }
    }

    /// Before legacy jobs are submitted: takes the memcached servers' CAS counters (one memcached client serves every
    /// legacy function), so that a value an earlier job left under a reused handle is never taken as one of these
    /// jobs' (see `LegacyResultStore`). Returns what to call with the jobs gearmand accepted: it records each one's
    /// handle and server (legacy workers never write Redis, and the bridge reads results by handle) and its fence,
    /// one write per job. Without the counters (memcached down) any value under the handle counts.
    public func submitting() async -> @Sendable ([RedisJobStore.JobLocation]) async -> Void {
        let results = LegacyResultStore(memcache: memcache, writtenBy: .peclMemcache)  // the extension: no matter to counters
        let watermarks: [UInt64]?
        do {
            watermarks = try await results.watermarks()
        } catch {
            logger.warning("could not take memcached's CAS watermark", metadata: ["job.error": "\(error)"])
            watermarks = nil
        }
        return { [store, logger] jobs in
            let updates = jobs.map { job in
                var fields = [JobField.handle: ByteBuffer(string: job.handle), JobField.server: ByteBuffer(string: job.server)]
                if let watermarks, let fence = results.watermark(for: job.handle, in: watermarks) {
                    fields[Self.fenceField] = ByteBuffer(string: String(fence))
                }
                return (id: job.id, fields: fields)
            }
            do {
                try await store.setFields(updates)
            } catch {
                logger.warning("could not record legacy jobs' handles", metadata: ["job.count": "\(jobs.count)", "job.error": "\(error)"])
            }
        }
    }

    /// Closes the memcached connections.
    public func shutdown() async {
        await memcache.shutdown()
    }

    // MARK: Presence (the gateway's presence check of legacy jobs)

    public func covers(_ record: JobRecord) -> Bool { handles(record.function) }

    /// One round over `records`, in one pipelined `GET_STATUS` batch per server: a job gearmand knows gets its
    /// progress written; one it no longer knows gets the result found under its handle, or is gone.
    public func presence(of records: [JobRecord]) async -> [JobID: JobPresence] {
        var byServer: [GearmanServerAddress: [(JobRecord, String)]] = [:]
        for record in records {
            guard let handle = record.handle, let server = record.server.flatMap(GearmanServerAddress.init) else { continue }
            byServer[server, default: []].append((record, handle))
        }
        var answers: [JobID: JobPresence] = [:]
        for (server, jobs) in byServer {
            guard let client = gearman.client(for: server) else { continue }
            polled()
            guard let statuses = try? await client.status(handles: jobs.map(\.1)) else { continue }  // gearmand down: decide nothing
            var unknown: [(record: JobRecord, handle: String)] = []
            for ((record, handle), status) in zip(jobs, statuses) {
                if status.known {
                    answers[record.id] = await progress(record, status)
                } else {
                    unknown.append((record, handle))
                }
            }
            // Their result should be in memcached now: read their fences first (Redis down: decide nothing).
            guard !unknown.isEmpty, let fences = try? await store.field(Self.fenceField, of: unknown.map(\.record.id)) else { continue }
            for ((record, handle), fence) in zip(unknown, fences) {
                answers[record.id] = await finish(record, handle: handle, fence: fence.flatMap { UInt64(String(buffer: $0)) })
            }
        }
        return answers
    }

    public func lostReason(_ record: JobRecord, grace: Duration) -> String {
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

    /// gearmand no longer knows the job: its result is in memcached (written after `fence`), or it never comes
    /// (gone). Nil: memcached cannot be asked.
    private func finish(_ record: JobRecord, handle: String, fence: UInt64?) async -> JobPresence? {
        guard let results = results(for: record.function) else { return nil }
        do {
            guard let value = try await results.result(handle: handle, after: fence) else { return .gone }
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
