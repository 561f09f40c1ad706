/// Why a job failed or a worker could not be set up, as one error type.
///
/// A handler may throw any error; this one's `message` becomes the job's `reason` verbatim, other errors are
/// described with `String(describing:)`.
public struct JobWorkerError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String {
            case jobFailed, commandNotFound, cannotStart, commandFailed, timedOut, outputTooLarge, cancelled
            case invalidConfiguration
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A handler failed the job on purpose (`JobWorkerError.failed(_:)`).
        public static let jobFailed = Code(.jobFailed)
        /// The command does not exist (or is not on `PATH`).
        public static let commandNotFound = Code(.commandNotFound)
        /// The command exists but could not be started (permissions, resources).
        public static let cannotStart = Code(.cannotStart)
        /// The command exited non-zero or was killed by a signal; the message holds the tail of its stderr.
        public static let commandFailed = Code(.commandFailed)
        /// The command ran longer than its timeout and was killed.
        public static let timedOut = Code(.timedOut)
        /// The command wrote more than the configured output limit and was killed.
        public static let outputTooLarge = Code(.outputTooLarge)
        /// The job was cancelled (hard shutdown) before it finished.
        public static let cancelled = Code(.cancelled)
        /// A worker cannot run with this configuration.
        public static let invalidConfiguration = Code(.invalidConfiguration)

        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// Fails the job with `reason` as its stored reason.
    public static func failed(_ reason: String) -> JobWorkerError { JobWorkerError(.jobFailed, reason) }

    public var description: String { "job worker \(code): \(message)" }
}
