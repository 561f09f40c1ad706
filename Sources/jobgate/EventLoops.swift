import Logging
import NIOCore
import NIOPosix

/// `--event-loops`: how many threads run the process's connections (NIO's singleton group, which every part of the
/// gateway and the worker shares).
///
/// The default is one per CPU. On a small machine that the process shares with Redis, gearmand and workers, fewer
/// can do more: every step that passes a job from one loop to another wakes a thread (README, "What limits the
/// figures").
enum EventLoops {
    static let help =
        "Threads that serve connections and talk to Redis and gearmand. On a small machine shared with Redis, gearmand and workers, fewer than its CPUs can do more. (default: the number of CPUs)"

    /// The count from the option, the environment or the file; the number of CPUs when none says.
    static func load(_ settings: Settings, _ commandLine: Int?) throws(ConfigurationError) -> Int {
        try settings.positive("event-loops", commandLine) ?? System.coreCount
    }

    /// Sizes the singleton group; must run before anything uses it. Says so if it was too late.
    static func start(_ count: Int, logger: Logger) {
        NIOSingletons.groupLoopCountSuggestion = count
        if running != count {
            logger.warning("the event loops were started before --event-loops was read", metadata: ["event_loops": "\(running)"])
        }
    }

    /// How many loops the process runs (what a reload compares `--event-loops` against: it needs a restart).
    static var running: Int { Array(MultiThreadedEventLoopGroup.singleton.makeIterator()).count }
}
