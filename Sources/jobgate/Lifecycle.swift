import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// What a long-running command does around its work: tells systemd (`Type=notify`) when it is ready, reloading and
/// stopping, and reloads on SIGHUP.
///
/// Put it after the services it reports on: the group stops services in reverse order, so `STOPPING=1` goes out
/// before they drain.
struct ProcessLifecycle: Service {
    /// Returns once the command serves (the gateway listens); `READY=1` follows.
    let ready: @Sendable () async throws -> Void
    /// Re-reads the configuration and applies what can change while running; the command logs what it did.
    let reload: @Sendable () async -> Void

    func run() async throws {
        // Trapped first: a SIGHUP's default action ends the process.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await withGracefulShutdownHandler {
            // Not ready: stopping first, or it could not start. Then the service that failed ends the group and says
            // why: this waits for that, so that its own return is not taken for the cause (it would race the error).
            guard await untilReady() else {
                try? await gracefulShutdown()
                return
            }
            SystemdNotifier.notify("READY=1")
            for await _ in hangups.cancelOnGracefulShutdown() {
                SystemdNotifier.notify("RELOADING=1\nMONOTONIC_USEC=\(SystemdNotifier.monotonicMicroseconds())")
                await reload()
                SystemdNotifier.notify("READY=1")
            }
        } onGracefulShutdown: {
            SystemdNotifier.notify("STOPPING=1")
        }
    }
}

extension ProcessLifecycle {
    /// Whether `ready` returned before a graceful shutdown began. `ready` need not heed cancellation: this must not
    /// hold up the shutdown, as the services listed before it (the one it waits for) stop only after it.
    private func untilReady() async -> Bool {
        let (outcome, report) = AsyncStream<Bool>.makeStream()
        let waiting = Task {
            report.yield((try? await ready()) != nil)
            report.finish()
        }
        defer { waiting.cancel() }
        for await isReady in outcome.cancelOnGracefulShutdown() { return isReady }
        return false
    }
}

/// `sd_notify` without libsystemd: one datagram to the unix socket in `$NOTIFY_SOCKET`, if systemd gave one.
enum SystemdNotifier {
    static func notify(_ state: String) {
        guard let path = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !path.isEmpty else { return }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if bytes[0] == UInt8(ascii: "@") { bytes[0] = 0 }  // an abstract socket
        guard bytes.count <= MemoryLayout.size(ofValue: address.sun_path) else { return }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return }
        defer { close(descriptor) }
        let message = Array(state.utf8)
        _ = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(descriptor, message, message.count, 0, $0, length) }
        }
    }

    /// `CLOCK_MONOTONIC` in microseconds, as systemd ≥ 253 wants with `RELOADING=1`.
    static func monotonicMicroseconds() -> Int {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return now.tv_sec * 1_000_000 + now.tv_nsec / 1_000
    }
}

/// The log level of every logger of the process: set at start, changed on reload.
enum ProcessLogLevel {
    private static let current = Atomic<Int>(Logger.Level.allCases.firstIndex(of: .info)!)

    static var level: Logger.Level {
        get { Logger.Level.allCases[current.load(ordering: .relaxed)] }
        set { current.store(Logger.Level.allCases.firstIndex(of: newValue)!, ordering: .relaxed) }
    }
}

/// A log handler whose level is the process's (`ProcessLogLevel`), so that a reload changes it for every logger.
struct ProcessLevelLogHandler: LogHandler {
    private var base: any LogHandler

    init(_ base: any LogHandler) {
        self.base = base
    }

    var logLevel: Logger.Level {
        get { ProcessLogLevel.level }
        set {}  // one level for the process: set through ProcessLogLevel
    }

    var metadata: Logger.Metadata {
        get { base.metadata }
        set { base.metadata = newValue }
    }

    var metadataProvider: Logger.MetadataProvider? {
        get { base.metadataProvider }
        set { base.metadataProvider = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { base[metadataKey: key] }
        set { base[metadataKey: key] = newValue }
    }

    func log(event: LogEvent) {
        base.log(event: event)
    }
}
