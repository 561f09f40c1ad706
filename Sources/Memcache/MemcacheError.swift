/// The one error type of the Memcache module: bad keys and values refused before sending, bad bytes from the
/// server, connection failures, PHP values that cannot be decoded.
///
/// Match on `code`; `message` says what happened in words, `server` names the memcached involved when known.
public struct MemcacheError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, as an extensible set of values (new codes do not break `switch` users).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidKey, valueTooLarge, lineTooLong, malformedResponse, unexpectedResponse, truncatedResponse
            case connectionFailed, connectionClosed, serverUnavailable, timeout, cancelled
            case commandError, clientError, serverError
            case invalidValue, decompressionFailed, invalidConfiguration
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A key that is empty, longer than 250 bytes or contains a space, control character or DEL.
        /// Refused before sending, so the connection stays in sync.
        public static let invalidKey = Code(.invalidKey)
        /// A value over the configured maximum: refused before sending, or announced by the server and refused
        /// before it is buffered.
        public static let valueTooLarge = Code(.valueTooLarge)
        /// A reply line longer than the configured maximum.
        public static let lineTooLong = Code(.lineTooLong)
        /// Bytes from the server that are not a memcached text-protocol reply.
        public static let malformedResponse = Code(.malformedResponse)
        /// A well-formed reply that does not answer the request at the head of the queue.
        public static let unexpectedResponse = Code(.unexpectedResponse)
        /// The server closed the connection in the middle of a reply.
        public static let truncatedResponse = Code(.truncatedResponse)
        /// The TCP connection could not be established (refused, unreachable, timed out).
        public static let connectionFailed = Code(.connectionFailed)
        /// The connection closed (or was closed after an error) before the request was answered.
        public static let connectionClosed = Code(.connectionClosed)
        /// The server failed recently and is in its reconnect back-off window.
        public static let serverUnavailable = Code(.serverUnavailable)
        /// The server stopped answering for longer than the request timeout; the connection was closed.
        public static let timeout = Code(.timeout)
        /// The calling task was cancelled while waiting; the connection stays usable.
        public static let cancelled = Code(.cancelled)
        /// The server answered `ERROR` (unknown command).
        public static let commandError = Code(.commandError)
        /// The server answered `CLIENT_ERROR <message>`.
        public static let clientError = Code(.clientError)
        /// The server answered `SERVER_ERROR <message>` (for example "object too large for cache").
        public static let serverError = Code(.serverError)
        /// Stored bytes that do not match the format their flags announce.
        public static let invalidValue = Code(.invalidValue)
        /// A compressed PHP value that cannot be inflated, or inflates beyond the allowed size.
        public static let decompressionFailed = Code(.decompressionFailed)
        /// A server list or option the client cannot work with.
        public static let invalidConfiguration = Code(.invalidConfiguration)

        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String
    /// `host:port` of the server involved, when known.
    public var server: String?
    /// The lower-level error (NIO, socket), when there is one.
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, server: String? = nil, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.server = server
        self.underlying = underlying
    }

    public var description: String {
        var text = "memcache \(code): \(message)"
        if let server { text += " (server \(server))" }
        if let underlying { text += " [\(underlying)]" }
        return text
    }

    /// The same error, naming `server` if it did not name one yet.
    func at(_ server: String) -> MemcacheError {
        var copy = self
        copy.server = copy.server ?? server
        return copy
    }
}
