/// The one error type of the Redis module.
///
/// `code` says what went wrong; `message` carries the details (the server's error line for
/// `.serverError` and `.authenticationFailed`). Codes are a struct over a private enum so new ones
/// can be added without breaking `switch`es in client code.
public struct RedisError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case connectionRefused, connectionFailed, connectionClosed, authenticationFailed
            case serverError, protocolError, replyTooLarge, timeout
            case notPrimary, replicasNotAcknowledged
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// Nothing listens on the address (ECONNREFUSED).
        public static let connectionRefused = Code(.connectionRefused)
        /// The connection could not be made for another reason (name resolution, unreachable network …).
        public static let connectionFailed = Code(.connectionFailed)
        /// The connection is closed or was lost; requests in flight may or may not have run on the server.
        public static let connectionClosed = Code(.connectionClosed)
        /// `AUTH` was refused (wrong password or user).
        public static let authenticationFailed = Code(.authenticationFailed)
        /// The server answered this command with an error reply (`-ERR …`, `-WRONGTYPE …`); the connection is fine.
        public static let serverError = Code(.serverError)
        /// The byte stream is not valid RESP2; the connection is closed.
        public static let protocolError = Code(.protocolError)
        /// A reply exceeded the configured maximum size; the connection is closed.
        public static let replyTooLarge = Code(.replyTooLarge)
        /// Connecting or waiting for a reply took longer than configured; the connection is closed.
        public static let timeout = Code(.timeout)
        /// With Sentinel: the server is not (or no longer) the primary (`ROLE` named another role, or it answered
        /// `READONLY`); the connection is closed and the sentinels are asked again.
        public static let notPrimary = Code(.notPrimary)
        /// `WAIT` ended with fewer replicas holding the write than required: it ran on the primary and may be lost if
        /// the primary fails now, so it is not acknowledged.
        public static let replicasNotAcknowledged = Code(.replicasNotAcknowledged)

        public var description: String { base.rawValue }
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The error kind Redis put first in its error line (`ERR`, `WRONGTYPE`, `NOAUTH`, `WRONGPASS`, `EXECABORT` …).
    public var serverErrorPrefix: Substring? {
        guard code == .serverError || code == .authenticationFailed else { return nil }
        return message.split(separator: " ", maxSplits: 1).first
    }

    public var description: String { "Redis \(code): \(message)" }
}

extension RedisError {
    static func server(_ line: String) -> RedisError { RedisError(.serverError, line) }
    static func closed(_ message: String) -> RedisError { RedisError(.connectionClosed, message) }
}
