/// The code of an `ERR <CODE> <text>` reply.
///
/// A struct over the wire string rather than an enum, so that codes added later (by a newer server, or by the
/// gateway itself) decode and render without breaking anyone's `switch`.
public struct GatewayErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public static let maximumLength = 32
    public let rawValue: String

    /// A code is 1–32 of `A-Z 0-9 _`.
    public init?(rawValue: String) {
        guard (1...Self.maximumLength).contains(rawValue.utf8.count),
            rawValue.utf8.allSatisfy({ ($0 >= .upperA && $0 <= .upperZ) || $0.isASCIIDigit || $0 == .underscore })
        else { return nil }
        self.rawValue = rawValue
    }

    private init(known: String) { self.rawValue = known }

    /// The request line is not well formed: wrong argument count, bad id, bad or duplicate option, bad tag.
    public static let badFormat = GatewayErrorCode(known: "BAD_FORMAT")
    public static let unknownCommand = GatewayErrorCode(known: "UNKNOWN_COMMAND")
    public static let lineTooLong = GatewayErrorCode(known: "LINE_TOO_LONG")
    public static let payloadTooLarge = GatewayErrorCode(known: "PAYLOAD_TOO_LARGE")
    /// The server requires `AUTH` before this command.
    public static let noAuth = GatewayErrorCode(known: "NOAUTH")
    /// `AUTH` with a wrong secret.
    public static let denied = GatewayErrorCode(known: "DENIED")
    /// An id this service never issued.
    public static let notFound = GatewayErrorCode(known: "NOT_FOUND")
    public static let tooManyWatches = GatewayErrorCode(known: "TOO_MANY_WATCHES")
    public static let busy = GatewayErrorCode(known: "BUSY")
    public static let backendDown = GatewayErrorCode(known: "BACKEND_DOWN")
    public static let `internal` = GatewayErrorCode(known: "INTERNAL")
    /// Extension: the client did not read its replies and events; the connection is closed.
    public static let slowConsumer = GatewayErrorCode(known: "SLOW_CONSUMER")
    /// Extension: no complete request for the idle timeout while nothing was followed; the connection is closed.
    public static let idleTimeout = GatewayErrorCode(known: "IDLE_TIMEOUT")
    /// Extension: `SUBSCRIBE` past the connection's subscription limit.
    public static let tooManySubscriptions = GatewayErrorCode(known: "TOO_MANY_SUBSCRIPTIONS")
    /// Extension: `SUBSCRIBE … from=<cursor>` with a cursor older than the retained completion log (or a subscriber
    /// that fell that far behind, which closes the connection): entries after it were trimmed.
    public static let trimmed = GatewayErrorCode(known: "TRIMMED")
    /// Extension: a request took longer than the request timeout to arrive whole; the connection is closed.
    public static let requestTimeout = GatewayErrorCode(known: "REQUEST_TIMEOUT")
    /// Extension: the credential the connection authenticated with has no scope for this verb on this function.
    public static let noPermission = GatewayErrorCode(known: "NOPERM")

    public var description: String { rawValue }
}

/// A request the decoder could not accept. It is recoverable: the session answers it with `ERR <code> <message>`
/// (carrying the request's tag when one could be read) and the connection stays usable, because the decoder has
/// already skipped the rest of the bad line and any data block it announced.
public struct GatewayRequestError: Error, Hashable, Sendable, CustomStringConvertible {
    public var tag: GatewayTag?
    public var code: GatewayErrorCode
    public var message: String

    public init(tag: GatewayTag? = nil, code: GatewayErrorCode, message: String) {
        self.tag = tag
        self.code = code
        self.message = message
    }

    /// The `ERR` reply for this error.
    public var response: GatewayResponse { .reply(.error(code: code, message: message), tag: tag) }

    public var description: String { "\(tag.map { "\($0) " } ?? "")\(code) \(message)" }
}

/// Bytes that break the protocol beyond recovery (or a request that cannot be written): the connection should close.
///
/// Thrown by ``GatewayRequestDecoder/decodeLast(buffer:seenEOF:)`` when the peer closes in the middle of a request,
/// by ``GatewayResponseDecoder`` for anything a conforming server never sends, and by ``GatewayRequestEncoder`` for
/// a request that cannot be expressed on the wire.
public struct GatewayProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case truncated, lineTooLong, blockTooLarge, missingLineBreak, malformedLine, invalidArgument
        }
        private let base: Base

        /// The connection closed inside a line or a data block.
        public static let truncated = Code(base: .truncated)
        /// A line longer than the decoder's maximum.
        public static let lineTooLong = Code(base: .lineTooLong)
        /// A data block larger than the decoder's maximum.
        public static let blockTooLarge = Code(base: .blockTooLarge)
        /// A data block not followed by CRLF or LF.
        public static let missingLineBreak = Code(base: .missingLineBreak)
        /// A reply or event line that does not have any shape of the protocol.
        public static let malformedLine = Code(base: .malformedLine)
        /// A request whose fields cannot be written as a protocol line.
        public static let invalidArgument = Code(base: .invalidArgument)

        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String

    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
