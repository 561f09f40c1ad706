public import NIOCore

/// Runs the tasks that prefer it on one event loop, so that their awaits on that loop's futures and connections
/// resume in place: no wakeup of a thread of the cooperative pool and of the loop again for each step.
///
/// The gateway's batchers run their drainers on these (a batch's Redis pipeline goes out on, and is answered on, the
/// drainer's loop: `RedisConnectionPool` gives a caller on a loop that loop's connection), and a worker runs each
/// job's steps on the loop of the gearmand connection that brought it. Code that may compute
/// for long (a job's own handler) does not belong here: it would hold up every connection of the loop.
public final class EventLoopTaskExecutor: TaskExecutor {
    public let eventLoop: any EventLoop

    public init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        eventLoop.execute { job.runSynchronously(on: executor) }
    }

    /// One executor per loop of `group`.
    public static func all(of group: any EventLoopGroup) -> [EventLoopTaskExecutor] {
        group.makeIterator().map(EventLoopTaskExecutor.init)
    }
}
