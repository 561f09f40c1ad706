/// Everything that can go wrong talking to gearmand, as one error type.
public struct GearmanError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String {
            case invalidArgument, connectionFailed, connectionClosed, serverUnavailable, serverError
            case protocolError, timeout, unexpectedReply, jobFailed, shuttingDown
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A request that gearmand would mishandle silently; nothing was sent.
        public static let invalidArgument = Code(.invalidArgument)
        /// The TCP connection could not be made; nothing was sent.
        public static let connectionFailed = Code(.connectionFailed)
        /// The connection dropped while the request was in flight: it may or may not have been applied.
        public static let connectionClosed = Code(.connectionClosed)
        /// Every server is down or backing off after a failed connect; nothing was sent.
        public static let serverUnavailable = Code(.serverUnavailable)
        /// gearmand answered with an ERROR packet or an admin `ERR` line.
        public static let serverError = Code(.serverError)
        /// gearmand sent bytes that are not valid Gearman protocol.
        public static let protocolError = Code(.protocolError)
        /// No reply within the configured request timeout; the connection was closed.
        public static let timeout = Code(.timeout)
        /// A reply of the wrong kind for the request at the head of the queue: the connection was closed.
        public static let unexpectedReply = Code(.unexpectedReply)
        /// A foreground job ended with WORK_FAIL or WORK_EXCEPTION.
        public static let jobFailed = Code(.jobFailed)
        /// The component is shutting down and takes no new work.
        public static let shuttingDown = Code(.shuttingDown)

        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "Gearman \(code): \(message)" }

    /// Whether the request certainly never reached a server, so that another server may be tried.
    public var nothingWasSent: Bool {
        code == .connectionFailed || code == .serverUnavailable || code == .invalidArgument
    }
}
