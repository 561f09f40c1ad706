import NIOCore

/// What the server sends: a reply to a request, or an event pushed between replies, each with an optional tag.
public enum GatewayResponse: Hashable, Sendable {
    case reply(GatewayReply, tag: GatewayTag? = nil)
    case event(GatewayEvent, tag: GatewayTag? = nil)

    public var tag: GatewayTag? {
        switch self {
        case .reply(_, let tag), .event(_, let tag): tag
        }
    }
}

/// Every reply shape of protocol v1. Blocks (`DONE`, `FAILED`, `STATS`) are written as a byte count, the raw bytes
/// and CRLF.
public enum GatewayReply: Hashable, Sendable {
    /// `HELLO jobgate <version> proto=1 auth=<none|required> max-payload=<bytes>`
    case hello(GatewayServerInfo)
    /// `OK`
    case ok
    /// `CREATED <id>`: a new job.
    case created(GatewayJobID)
    /// `EXISTS <id>`: the submission joined a queued or running job with the same function and unique key.
    case exists(GatewayJobID)
    /// `STATUS <id> <state> <num> <den>`
    case status(GatewayJobID, GatewayJobStatus)
    /// `DONE <id> <bytes>` + the result.
    case done(GatewayJobID, result: ByteBuffer)
    /// `FAILED <id> <bytes>` + the reason (may be empty).
    case failed(GatewayJobID, reason: ByteBuffer)
    /// `PENDING <id> <state> <num> <den>`: `RESULT` of a job that has not ended.
    case pending(GatewayJobID, GatewayJobStatus)
    /// `EXPIRED <id>`: the job's record is gone.
    case expired(GatewayJobID)
    /// `TIMEOUT <id> <state> <num> <den>`: a `WAIT` whose timeout passed first.
    case timeout(GatewayJobID, GatewayJobStatus)
    /// `WATCHING <id> <state> <num> <den>`
    case watching(GatewayJobID, GatewayJobStatus)
    /// `UNWATCHED <id>`
    case unwatched(GatewayJobID)
    /// `SUBSCRIBED <function>`
    case subscribed(GatewayFunctionName)
    /// `UNSUBSCRIBED <function>`
    case unsubscribed(GatewayFunctionName)
    /// `PONG`
    case pong
    /// `STATS <bytes>` + one `name value` line (LF-terminated) per statistic.
    case stats([GatewayStatistic])
    /// `HEALTH ready|not-ready <check>=<state>…` (*extension*).
    case health(GatewayHealth)
    /// `BYE`
    case bye
    /// `ERR <code> <message>`; the message is written on one line (control characters become spaces).
    case error(code: GatewayErrorCode, message: String)
}

/// Events pushed to a `WATCH` (all of them) or a `SUBSCRIBE` (terminal ones only).
public enum GatewayEvent: Hashable, Sendable {
    /// `EVENT <id> PROGRESS <num> <den> <bytes>` + a progress message (may be empty).
    case progress(GatewayJobID, numerator: UInt64, denominator: UInt64, message: ByteBuffer)
    /// `EVENT <id> DONE <bytes>` + the result.
    case done(GatewayJobID, result: ByteBuffer)
    /// `EVENT <id> FAILED <bytes>` + the reason.
    case failed(GatewayJobID, reason: ByteBuffer)
    /// `EVENT <id> EXPIRED`
    case expired(GatewayJobID)
    /// Extension: a terminal event of a `SUBSCRIBE … from=`, with the completion log cursor just after it, written as
    /// a trailing option: `EVENT <id> DONE <bytes> cursor=<cursor>`, `EVENT <id> EXPIRED cursor=<cursor>`.
    indirect case logged(GatewayEvent, cursor: GatewayLogCursor)

    public var jobID: GatewayJobID {
        switch self {
        case .progress(let id, _, _, _), .done(let id, _), .failed(let id, _), .expired(let id): id
        case .logged(let event, _): event.jobID
        }
    }

    /// The event without its cursor, if it has one.
    public var withoutCursor: GatewayEvent {
        if case .logged(let event, _) = self { return event }
        return self
    }

    /// Whether the event ends a watch.
    public var isTerminal: Bool {
        if case .progress = self { return false }
        return true
    }
}

/// The state of a job.
public enum GatewayJobState: String, Hashable, Sendable, CaseIterable {
    case queued
    case running
    case done
    case failed
    case expired
}

/// `<state> <numerator> <denominator>`, as in `STATUS`, `PENDING`, `TIMEOUT` and `WATCHING`.
public struct GatewayJobStatus: Hashable, Sendable {
    public var state: GatewayJobState
    public var numerator: UInt64
    public var denominator: UInt64

    public init(_ state: GatewayJobState, numerator: UInt64 = 0, denominator: UInt64 = 0) {
        self.state = state
        self.numerator = numerator
        self.denominator = denominator
    }
}

/// The fields of the `HELLO` reply.
public struct GatewayServerInfo: Hashable, Sendable {
    /// The server's version; written as one word (whitespace and control characters become `_`).
    public var version: String
    /// `auth=required`: commands other than `HELLO`, `AUTH`, `PING` and `QUIT` need `AUTH` first.
    public var authenticationRequired: Bool
    /// `max-payload=`: the largest `SUBMIT` data block the server accepts.
    public var maximumPayloadSize: Int

    public init(version: String, authenticationRequired: Bool, maximumPayloadSize: Int) {
        self.version = version
        self.authenticationRequired = authenticationRequired
        self.maximumPayloadSize = maximumPayloadSize
    }
}

/// One `name value` line of the `STATS` block. The name is written as one word (whitespace and control characters
/// become `_`), the value on one line (control characters become spaces).
public struct GatewayStatistic: Hashable, Sendable {
    public var name: String
    public var value: String

    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// The `HEALTH` reply: whether the gateway can serve, and the state of each backend it needs.
///
/// `HEALTH ready redis=up gearmand=2/2` or `HEALTH not-ready redis=down gearmand=1/2`. Checks are `name=value`
/// words, in the order the server wrote them; a client should ignore checks it does not know.
public struct GatewayHealth: Hashable, Sendable {
    public struct Check: Hashable, Sendable {
        /// One word without `=`; written as one word (whitespace, control characters and `=` become `_`).
        public var name: String
        /// One word; written as one word (whitespace and control characters become `_`).
        public var value: String

        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    public var isReady: Bool
    public var checks: [Check]

    public init(isReady: Bool, checks: [Check]) {
        self.isReady = isReady
        self.checks = checks
    }

    /// The value of the check `name`, if the server wrote it.
    public subscript(check name: String) -> String? {
        checks.first { $0.name == name }?.value
    }
}
