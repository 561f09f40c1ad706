public import JobStore
public import Memcache
public import NIOCore

/// Results stored in memcached under the Gearman job handle, as legacy PHP workers do
/// (`memcache_set($mc, $job->handle(), $result)`).
///
/// Handles restart at 1 when gearmand restarts, so a value under a handle may be left over from an earlier job.
/// The gateway takes a *watermark* before it submits a job: the CAS counter of the memcached servers
/// (`watermark()`). memcached numbers every write of an instance from one counter, so the job's own result, written
/// after the submission, has a larger CAS than the watermark, and a leftover value a smaller one
/// (`result(handle:after:)`). Nothing is deleted, so legacy readers see what they always saw.
public struct LegacyResultStore: Sendable {
    public let memcache: MemcacheClient
    /// Which PHP extension the workers use: the two store types differently (reference §5).
    public let writtenBy: PHPMemcacheExtension
    /// Seconds a dual-written result is kept (0 = until evicted).
    public let expiration: Int

    public init(memcache: MemcacheClient, writtenBy: PHPMemcacheExtension, expiration: Int = 86_400) {
        self.memcache = memcache
        self.writtenBy = writtenBy
        self.expiration = expiration
    }

    /// The value a legacy worker stored for `handle`, decoded as PHP wrote it; nil when there is none.
    public func result(handle: String) async throws(JobStoreError) -> PHPValue? {
        try await result(handle: handle, after: nil)
    }

    /// The CAS counter of each memcached server now, in list order (take it before submitting the job).
    public func watermarks() async throws(JobStoreError) -> [UInt64] {
        do {
            return try await memcache.casWatermarks()
        } catch {
            throw JobStoreError(.legacyStore, "memcached CAS watermark failed: \(error)")
        }
    }

    /// The watermark that applies to `handle`: the one of the server that holds its key.
    public func watermark(for handle: String, in watermarks: [UInt64]) -> UInt64? {
        let index = memcache.selector.serverIndex(forKey: handle)
        return index < watermarks.count ? watermarks[index] : nil
    }

    /// The value under `handle`, if it was written after `watermark` (nil: no watermark, any value counts).
    public func result(handle: String, after watermark: UInt64?) async throws(JobStoreError) -> PHPValue? {
        do {
            guard let item = try await memcache.gets(handle) else { return nil }
            if let watermark, let cas = item.cas, cas <= watermark { return nil }
            return try PHPValue(decoding: item, writtenBy: writtenBy, maximumDecompressedSize: memcache.configuration.maximumDecompressedSize)
        } catch {
            throw JobStoreError(.legacyStore, "memcached read of \(handle) failed: \(error)")
        }
    }

    /// Dual-write: stores `result` under `handle` as a plain string (flags 0), which both PHP extensions read back.
    public func store(_ result: ByteBuffer, handle: String) async throws(JobStoreError) {
        do {
            // memcached takes an exptime above 30 days as a Unix time: keep it relative.
            try await memcache.set(handle, to: result, flags: 0, exptime: Int32(min(expiration, 2_592_000)))
        } catch {
            throw JobStoreError(.legacyStore, "memcached write of \(handle) failed: \(error)")
        }
    }

    /// Removes whatever an earlier job left under a reused handle.
    public func clear(handle: String) async throws(JobStoreError) {
        do {
            _ = try await memcache.delete(handle)
        } catch {
            throw JobStoreError(.legacyStore, "memcached delete of \(handle) failed: \(error)")
        }
    }
}
