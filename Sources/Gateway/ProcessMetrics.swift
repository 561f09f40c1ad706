import Foundation
import Prometheus
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The process figures operators expect beside every Prometheus target (`process_*`, the names of the official
/// clients), read from `/proc/self` on each scrape: nothing runs between scrapes.
final class ProcessMetrics: Sendable {
    private let residentMemory: Gauge
    private let cpuSeconds: Counter
    private let openFileDescriptors: Gauge
    private let startTime: Gauge
    /// CPU seconds already added to the counter, which only goes up by increments.
    private let countedCPU = Mutex(0.0)

    init(registry: PrometheusCollectorRegistry) {
        residentMemory = registry.gauge("process_resident_memory_bytes", help: "Resident memory size in bytes.")
        cpuSeconds = registry.counter("process_cpu_seconds_total", help: "User and system CPU time spent in seconds.")
        openFileDescriptors = registry.gauge("process_open_fds", help: "Open file descriptors.")
        startTime = registry.gauge("process_start_time_seconds", help: "Start time of the process since the Unix epoch in seconds.")
        if let start = Self.startTimeSeconds() { startTime.set(start) }
    }

    func refresh() {
        let pageSize = Double(sysconf(Int32(_SC_PAGESIZE)))
        if let statm = Self.read("/proc/self/statm")?.split(separator: " "), statm.count > 1, let pages = Double(statm[1]) {
            residentMemory.set(pages * pageSize)
        }
        if let stat = Self.statFields(), stat.count > 12, let user = Double(stat[11]), let system = Double(stat[12]) {
            let seconds = (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
            let delta = countedCPU.withLock { counted -> Double in
                defer { counted = max(counted, seconds) }
                return seconds - counted
            }
            if delta > 0 { cpuSeconds.increment(by: delta) }
        }
        if let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") {
            // Listing the directory opens one descriptor of its own, which is gone again now.
            openFileDescriptors.set(Double(max(0, entries.count - 1)))
        }
    }

    /// `/proc/self/stat` after the command name (which may hold spaces): field 3 (state) onwards, so utime (field
    /// 14) is at index 11 and starttime (field 22) at index 19.
    private static func statFields() -> [Substring]? {
        guard let text = read("/proc/self/stat"), let close = text.lastIndex(of: ")") else { return nil }
        return text[text.index(after: close)...].split(separator: " ")
    }

    private static func startTimeSeconds() -> Double? {
        guard let stat = statFields(), stat.count > 19, let ticks = Double(stat[19]),
            let boot = read("/proc/stat")?.split(separator: "\n").first(where: { $0.hasPrefix("btime ") }),
            let bootSeconds = Double(boot.dropFirst("btime ".count))
        else { return nil }
        return bootSeconds + ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    private static func read(_ path: String) -> String? {
        try? String(contentsOfFile: path, encoding: .utf8)
    }
}
