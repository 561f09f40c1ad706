import NIOCore
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// glibc malloc settings for a long-running gateway with many idle connections.
///
/// The gateway allocates on its event loops and frees on Swift's concurrency threads (and back), in bursts (a
/// thousand `WATCH`es read in one batch). glibc keeps what is freed for later, scattered over one arena per
/// thread, so after a burst RSS stays high though little is in use: in `jobgate bench` (section 4), 10,000 idle
/// watchers showed about twice their live size. An arena per core and a periodic `malloc_trim` (which returns whole free
/// pages to the kernel) keep RSS near what is used. The functions are looked up at run time: Swift's Glibc module
/// does not import `malloc.h`.
enum GlibcMalloc {
    /// One arena per core, at least two (glibc's default is eight per core).
    static func limitArenas() {
        #if canImport(Glibc)
        typealias MallocOption = @convention(c) (Int32, Int32) -> Int32
        let arenaMaximum: Int32 = -8  // M_ARENA_MAX
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
        _ = unsafeBitCast(symbol, to: MallocOption.self)(arenaMaximum, Int32(clamping: max(2, System.coreCount)))
        #endif
    }

    /// Gives free pages back to the kernel.
    static func trim() {
        #if canImport(Glibc)
        typealias MallocTrim = @convention(c) (Int) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return }
        _ = unsafeBitCast(symbol, to: MallocTrim.self)(0)
        #endif
    }

    /// Trims every few seconds (a few milliseconds of work at most) until shutdown.
    struct Trimmer: Service {
        var interval: Duration = .seconds(2)

        func run() async throws {
            try? await cancelWhenGracefulShutdown {
                while true {
                    try await Task.sleep(for: interval)
                    GlibcMalloc.trim()
                }
            }
        }
    }
}
