import Foundation
public import NIOCore
import Synchronization

/// Progress a job reports: `numerator` of `denominator`, with an optional message.
public struct JobProgress: Sendable, Hashable {
    public var numerator: UInt32
    public var denominator: UInt32
    public var message: String

    public init(_ numerator: UInt32, of denominator: UInt32, message: String = "") {
        self.numerator = numerator
        self.denominator = denominator
        self.message = message
    }

    /// Parses `PROGRESS <numerator> <denominator>[ <message>]` (a trailing CR is ignored); nil for anything else.
    /// Split on the bytes, not on Swift characters: a message starting with a combining mark would otherwise join
    /// the space before it and the number before that into one character.
    public init?(line: some Collection<UInt8>) {
        var bytes = Array(line)
        if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
        let parts = bytes.split(separator: UInt8(ascii: " "), maxSplits: 3, omittingEmptySubsequences: false)
        func number(_ part: ArraySlice<UInt8>) -> UInt32? { UInt32(String(decoding: part, as: UTF8.self)) }
        guard parts.count >= 3, parts[0].elementsEqual("PROGRESS".utf8), let numerator = number(parts[1]), let denominator = number(parts[2]) else {
            return nil
        }
        self.init(numerator, of: denominator, message: parts.count == 4 ? String(decoding: parts[3], as: UTF8.self) : "")
    }
}

/// An external program run once per job: the payload on stdin, the result from stdout.
///
/// - A non-zero exit, a kill by a signal or a timeout fails the job with the tail of stderr as the reason.
/// - Progress: the program writes lines `PROGRESS <numerator> <denominator> [message]` to **file descriptor 3**
///   (`echo "PROGRESS 3 10 resizing" >&3` in a shell); other lines there are ignored. stderr stays free for
///   diagnostics, which become the reason when the program fails.
/// - Output above `maximumOutputSize` kills the program and fails the job with `outputTooLarge`.
/// - The program runs in its own process group; a timeout or cancellation kills the whole group.
public struct JobCommand: Sendable {
    /// A path, or a name looked up in `PATH`.
    public var executable: String
    public var arguments: [String]
    /// Longest run; nil lets it run as long as it likes.
    public var timeout: Duration?
    /// Largest stdout accepted, in bytes.
    public var maximumOutputSize: Int
    /// How much of the end of stderr is kept for the failure reason, in bytes.
    public var errorTailSize: Int
    /// Added to (or overriding) the worker's own environment.
    public var environment: [String: String]

    public static let defaultMaximumOutputSize = 16 << 20

    public init(
        _ executable: String,
        _ arguments: [String] = [],
        timeout: Duration? = nil,
        maximumOutputSize: Int = Self.defaultMaximumOutputSize,
        errorTailSize: Int = 2048,
        environment: [String: String] = [:]
    ) {
        self.executable = executable
        self.arguments = arguments
        self.timeout = timeout
        self.maximumOutputSize = maximumOutputSize
        self.errorTailSize = errorTailSize
        self.environment = environment
    }

    /// Runs the program once with `input` on stdin and returns its stdout.
    ///
    /// - Parameters:
    ///   - environment: more variables for this run (the worker passes the job's id, handle and function).
    ///   - progress: called for each valid progress line, in order; the run waits for it.
    /// - Throws: `JobWorkerError` with `commandNotFound`, `cannotStart`, `commandFailed`, `timedOut`,
    ///   `outputTooLarge` or `cancelled`; its `message` is meant to be the job's reason.
    public func run(
        input: ByteBuffer,
        environment extra: [String: String] = [:],
        progress: @escaping @Sendable (JobProgress) async -> Void = { _ in }
    ) async throws(JobWorkerError) -> ByteBuffer {
        guard maximumOutputSize >= 0, errorTailSize >= 0 else {
            throw JobWorkerError(.invalidConfiguration, "output and stderr limits must not be negative")
        }
        guard !executable.isEmpty else { throw JobWorkerError(.invalidConfiguration, "no command given") }
        let overrides = environment.merging(extra) { $1 }
        let inherited = Self.inheritedEnvironment.filter { overrides[$0.name] == nil }.map(\.entry)
        let child = ChildProcess(
            executable: executable,
            arguments: arguments,
            environment: inherited + overrides.map { "\($0.key)=\($0.value)" },
            timeout: timeout,
            maximumOutputSize: maximumOutputSize,
            errorTailSize: errorTailSize
        )
        let publisher = ProgressPublisher(progress)
        let outcome: ChildProcessOutcome
        do {
            outcome = try await child.run(input: Array(input.readableBytesView)) { line in
                if let parsed = JobProgress(line: line) { publisher.publish(parsed) }
            }
        } catch {
            await publisher.finish()
            throw error
        }
        // Every progress report goes out before the outcome, so none arrives after it.
        await publisher.finish()
        return try Self.result(of: outcome, command: executable, timeout: timeout, limit: maximumOutputSize, errorTailSize: errorTailSize)
    }

    /// The worker's own environment, read once: `ProcessInfo` parses all of `environ` into a dictionary on every
    /// call, ~4 % of a `jobgate worker`'s CPU when it was read per job (and ~10 % with turning it back into entries).
    private static let inheritedEnvironment: [(name: String, entry: String)] = ProcessInfo.processInfo.environment.map {
        (name: $0.key, entry: "\($0.key)=\($0.value)")
    }

    static func result(
        of outcome: ChildProcessOutcome,
        command: String,
        timeout: Duration?,
        limit: Int,
        errorTailSize: Int
    ) throws(JobWorkerError) -> ByteBuffer {
        let stderr = outcome.errorText(limit: errorTailSize)
        let withTail = { (text: String) in stderr.isEmpty ? text : "\(text): \(stderr)" }
        switch outcome.interruption {
        case .timedOut:
            throw JobWorkerError(.timedOut, withTail("\(command) timed out after \(timeout.map { "\($0)" } ?? "?") and was killed"))
        case .outputTooLarge:
            throw JobWorkerError(.outputTooLarge, "\(command) wrote more than \(limit) bytes of output and was killed")
        case .cancelled:
            throw JobWorkerError(.cancelled, "\(command) was killed: the job was cancelled")
        case nil:
            break
        }
        switch outcome.termination {
        case .exited(0):
            return ByteBuffer(bytes: outcome.output)
        case .exited(let status):
            // The tail of stderr is the reason; the status only when the program said nothing.
            throw JobWorkerError(.commandFailed, stderr.isEmpty ? "\(command) exited with status \(status)" : stderr)
        case .signaled(let signal):
            throw JobWorkerError(.commandFailed, withTail("\(command) was killed by signal \(signal)"))
        case .unknown:
            throw JobWorkerError(.commandFailed, withTail("\(command) ended with an unknown status (is SIGCHLD ignored?)"))
        }
    }
}

/// Publishes a run's progress reports one by one, in order (only the newest waiting one matters), from a task
/// started with the first report: most programs report none, and they need neither the task nor its two
/// trips through the cooperative pool per job.
private final class ProgressPublisher: Sendable {
    private let progress: @Sendable (JobProgress) async -> Void
    private let started = Mutex<(deliver: AsyncStream<JobProgress>.Continuation, task: Task<Void, Never>)?>(nil)

    init(_ progress: @escaping @Sendable (JobProgress) async -> Void) {
        self.progress = progress
    }

    func publish(_ report: JobProgress) {
        started.withLock { started in
            if started == nil {
                let (reports, deliver) = AsyncStream<JobProgress>.makeStream(bufferingPolicy: .bufferingNewest(16))
                started = (deliver, Task { [progress] in for await report in reports { await progress(report) } })
            }
            started?.deliver.yield(report)
        }
    }

    /// Returns once every report went out; call after the run's last report.
    func finish() async {
        guard let (deliver, task) = started.withLock({ $0 }) else { return }
        deliver.finish()
        await task.value
    }
}
