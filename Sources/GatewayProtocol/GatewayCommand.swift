import NIOCore

/// A request: an optional tag and a command.
///
/// ```
/// [@<tag> ]<VERB> <arguments…> [<name>=<value>…]
/// ```
public struct GatewayRequest: Hashable, Sendable {
    public var tag: GatewayTag?
    public var command: GatewayCommand

    public init(tag: GatewayTag? = nil, _ command: GatewayCommand) {
        self.tag = tag
        self.command = command
    }

    /// `reply` carrying this request's tag.
    public func reply(_ reply: GatewayReply) -> GatewayResponse { .reply(reply, tag: tag) }

    /// `event` carrying this request's tag (the events of a `WATCH` carry the `WATCH`'s tag).
    public func event(_ event: GatewayEvent) -> GatewayResponse { .event(event, tag: tag) }
}

/// A parsed request command of protocol v1.
///
/// Verbs are case-insensitive. Options (`name=value`, names case-insensitive) follow the positional arguments and
/// are strict: an unknown option or a repeated one is `BAD_FORMAT`, so that a typo such as `priorty=high` is
/// reported instead of being silently ignored.
public enum GatewayCommand: Hashable, Sendable {
    /// `HELLO` → `HELLO jobgate <version> proto=1 auth=<none|required> max-payload=<bytes>`
    case hello
    /// `AUTH <secret>`, or `AUTH <name> <secret>` for a named credential (*extension*) → `OK` or `ERR DENIED`
    case auth(name: String? = nil, secret: String)
    /// `SUBMIT <function> <bytes> [unique=<key>] [priority=high|normal|low] [wait=<ms>]` + data block
    case submit(GatewaySubmission)
    /// `STATUS <id>` → `STATUS <id> <state> <num> <den>`
    case status(GatewayJobID)
    /// `RESULT <id>` → `DONE`, `FAILED`, `PENDING` or `EXPIRED`
    case result(GatewayJobID)
    /// `WAIT <id> <timeout-ms>` → as `RESULT` once the job ends, or `TIMEOUT`
    case wait(GatewayJobID, timeoutMilliseconds: UInt64)
    /// `WATCH <id>` → `WATCHING`, then events
    case watch(GatewayJobID)
    /// `UNWATCH <id>` → `UNWATCHED <id>`
    case unwatch(GatewayJobID)
    /// `SUBSCRIBE <function> [from=…]` → `SUBSCRIBED <function>`, then the terminal event of every job of that function
    /// (from the completion log, with cursors, when `from=` is given)
    case subscribe(GatewayFunctionName, from: GatewaySubscriptionStart? = nil)
    /// `UNSUBSCRIBE <function>` → `UNSUBSCRIBED <function>`
    case unsubscribe(GatewayFunctionName)
    /// `PING` → `PONG`
    case ping
    /// `STATS` → `STATS <bytes>` + `name value` lines
    case stats
    /// `HEALTH` → `HEALTH ready|not-ready <check>=<state>…` (*extension*)
    case health
    /// `QUIT` → `BYE`, then the server closes
    case quit

    /// The verb as written on the wire.
    public var verb: String {
        switch self {
        case .hello: "HELLO"
        case .auth: "AUTH"
        case .submit: "SUBMIT"
        case .status: "STATUS"
        case .result: "RESULT"
        case .wait: "WAIT"
        case .watch: "WATCH"
        case .unwatch: "UNWATCH"
        case .subscribe: "SUBSCRIBE"
        case .unsubscribe: "UNSUBSCRIBE"
        case .ping: "PING"
        case .stats: "STATS"
        case .health: "HEALTH"
        case .quit: "QUIT"
        }
    }
}

/// The arguments of a `SUBMIT`.
public struct GatewaySubmission: Hashable, Sendable {
    public var function: GatewayFunctionName
    /// The data block: raw bytes, binary-safe.
    public var payload: ByteBuffer
    /// `unique=`: coalesce with a queued or running job of the same function and key.
    public var unique: GatewayUniqueKey?
    /// `priority=`; `.normal` when absent.
    public var priority: GatewayPriority
    /// `wait=<ms>`: reply as `WAIT <id> <ms>` would instead of `CREATED`/`EXISTS`.
    public var waitMilliseconds: UInt64?

    public init(
        function: GatewayFunctionName,
        payload: ByteBuffer,
        unique: GatewayUniqueKey? = nil,
        priority: GatewayPriority = .normal,
        waitMilliseconds: UInt64? = nil
    ) {
        self.function = function
        self.payload = payload
        self.unique = unique
        self.priority = priority
        self.waitMilliseconds = waitMilliseconds
    }
}

/// `priority=high|normal|low`: which gearmand queue the job goes to.
public enum GatewayPriority: String, Hashable, Sendable, CaseIterable {
    case high
    case normal
    case low
}
