import NIOCore

/// Writes replies and events. Lines end in CRLF (clients accept LF or CRLF); a data block follows its line as raw
/// bytes, then CRLF.
///
/// Writing never fails: ids, tags, function names and error codes are valid by construction, and free text (error
/// messages, the version, statistics) is made to fit one line.
public struct GatewayResponseEncoder: MessageToByteEncoder, Sendable {
    public typealias OutboundIn = GatewayResponse

    public init() {}

    public func encode(data: GatewayResponse, out: inout ByteBuffer) {
        Self.write(data, into: &out)
    }

    /// Appends one reply or event; several calls fill one buffer, so a burst costs one write.
    public static func write(_ response: GatewayResponse, into out: inout ByteBuffer) {
        if let block = writeLeavingBlock(response, into: &out) { writeBlockAndEnd(block, into: &out) }
    }

    public static func write(_ reply: GatewayReply, tag: GatewayTag? = nil, into out: inout ByteBuffer) {
        if let block = writeLeavingBlock(reply, tag: tag, into: &out) { writeBlockAndEnd(block, into: &out) }
    }

    public static func write(_ event: GatewayEvent, tag: GatewayTag? = nil, into out: inout ByteBuffer) {
        if let block = writeLeavingBlock(event, tag: tag, into: &out) { writeBlockAndEnd(block, into: &out) }
    }

    /// Appends a response up to its data block and returns the block (nil: it has none). The caller sends the
    /// block itself, then `blockEnd`: a large result goes to the socket as it is, not copied into `out`.
    public static func writeLeavingBlock(_ response: GatewayResponse, into out: inout ByteBuffer) -> ByteBuffer? {
        switch response {
        case .reply(let reply, let tag): writeLeavingBlock(reply, tag: tag, into: &out)
        case .event(let event, let tag): writeLeavingBlock(event, tag: tag, into: &out)
        }
    }

    /// What follows a data block.
    public static let blockEnd = "\r\n"

    private static func writeLeavingBlock(_ reply: GatewayReply, tag: GatewayTag?, into out: inout ByteBuffer) -> ByteBuffer? {
        writeTag(tag, into: &out)
        switch reply {
        case .hello(let info):
            out.writeString("HELLO jobgate \(GatewaySyntax.oneWord(info.version)) proto=1")
            out.writeString(" auth=\(info.authenticationRequired ? "required" : "none") max-payload=\(max(0, info.maximumPayloadSize))\r\n")
        case .ok: out.writeString("OK\r\n")
        case .created(let id): out.writeString("CREATED \(id)\r\n")
        case .exists(let id): out.writeString("EXISTS \(id)\r\n")
        case .status(let id, let status): writeStatusLine("STATUS", id, status, into: &out)
        case .done(let id, let result): return writeBlockLine("DONE \(id) ", result, into: &out)
        case .failed(let id, let reason): return writeBlockLine("FAILED \(id) ", reason, into: &out)
        case .pending(let id, let status): writeStatusLine("PENDING", id, status, into: &out)
        case .expired(let id): out.writeString("EXPIRED \(id)\r\n")
        case .timeout(let id, let status): writeStatusLine("TIMEOUT", id, status, into: &out)
        case .watching(let id, let status): writeStatusLine("WATCHING", id, status, into: &out)
        case .unwatched(let id): out.writeString("UNWATCHED \(id)\r\n")
        case .subscribed(let function): out.writeString("SUBSCRIBED \(function)\r\n")
        case .unsubscribed(let function): out.writeString("UNSUBSCRIBED \(function)\r\n")
        case .pong: out.writeString("PONG\r\n")
        case .stats(let statistics):
            var block = ByteBuffer()
            for statistic in statistics {
                block.writeString("\(GatewaySyntax.oneWord(statistic.name)) \(GatewaySyntax.oneLine(statistic.value))\n")
            }
            return writeBlockLine("STATS ", block, into: &out)
        case .health(let health):
            var line = health.isReady ? "HEALTH ready" : "HEALTH not-ready"
            for check in health.checks {
                let name = String(GatewaySyntax.oneWord(check.name).map { $0 == "=" ? "_" : $0 })
                line += " \(name)=\(GatewaySyntax.oneWord(check.value))"
            }
            out.writeString(line + "\r\n")
        case .bye: out.writeString("BYE\r\n")
        case .error(let code, let message):
            let text = GatewaySyntax.oneLine(message)
            out.writeString(text.isEmpty ? "ERR \(code)\r\n" : "ERR \(code) \(text)\r\n")
        }
        return nil
    }

    private static func writeLeavingBlock(_ event: GatewayEvent, tag: GatewayTag?, into out: inout ByteBuffer) -> ByteBuffer? {
        writeTag(tag, into: &out)
        var options = ""
        var event = event
        if case .logged(let inner, let cursor) = event {
            options = " cursor=\(cursor)"
            event = inner
        }
        switch event {
        case .progress(let id, let numerator, let denominator, let message):
            return writeBlockLine("EVENT \(id) PROGRESS \(numerator) \(denominator) ", message, options: options, into: &out)
        case .done(let id, let result): return writeBlockLine("EVENT \(id) DONE ", result, options: options, into: &out)
        case .failed(let id, let reason): return writeBlockLine("EVENT \(id) FAILED ", reason, options: options, into: &out)
        case .expired(let id): out.writeString("EVENT \(id) EXPIRED\(options)\r\n")
        case .logged: preconditionFailure("a logged event holds a plain event")
        }
        return nil
    }

    private static func writeTag(_ tag: GatewayTag?, into out: inout ByteBuffer) {
        if let tag { out.writeString("@\(tag.rawValue) ") }
    }

    private static func writeStatusLine(_ verb: String, _ id: GatewayJobID, _ status: GatewayJobStatus, into out: inout ByteBuffer) {
        out.writeString("\(verb) \(id) \(status.state.rawValue) \(status.numerator) \(status.denominator)\r\n")
    }

    /// `head` (ending in a space), the byte count, CRLF; the block and `blockEnd` follow.
    private static func writeBlockLine(_ head: String, _ block: ByteBuffer, options: String = "", into out: inout ByteBuffer) -> ByteBuffer {
        out.writeString("\(head)\(block.readableBytes)\(options)\r\n")
        return block
    }

    private static func writeBlockAndEnd(_ block: ByteBuffer, into out: inout ByteBuffer) {
        out.writeImmutableBuffer(block)
        out.writeString(blockEnd)
    }
}

/// Writes requests, for clients (the `jobgate submit` command, benchmarks, tests). Lines end in CRLF.
public struct GatewayRequestEncoder: MessageToByteEncoder, Sendable {
    public typealias OutboundIn = GatewayRequest

    public init() {}

    public func encode(data: GatewayRequest, out: inout ByteBuffer) throws {
        try Self.write(data, into: &out)
    }

    /// Appends one request; several calls fill one buffer for pipelining. Throws `invalidArgument` for an `AUTH`
    /// name or secret that is not one word; nothing is written then.
    public static func write(_ request: GatewayRequest, into out: inout ByteBuffer) throws(GatewayProtocolError) {
        let tag = request.tag.map { "@\($0.rawValue) " } ?? ""
        switch request.command {
        case .auth(let name, let secret):
            guard GatewaySyntax.isWord(secret, maximumLength: .max), name.map({ GatewaySyntax.isWord($0, maximumLength: .max) }) ?? true else {
                throw GatewayProtocolError(code: .invalidArgument, message: "an AUTH name and secret must each be one word without control characters")
            }
            out.writeString("\(tag)AUTH \(name.map { "\($0) " } ?? "")\(secret)\r\n")
        case .submit(let submission):
            var line = "\(tag)SUBMIT \(submission.function) \(submission.payload.readableBytes)"
            if let unique = submission.unique { line += " unique=\(unique)" }
            if submission.priority != .normal { line += " priority=\(submission.priority.rawValue)" }
            if let wait = submission.waitMilliseconds { line += " wait=\(wait)" }
            out.writeString(line + "\r\n")
            out.writeImmutableBuffer(submission.payload)
            out.writeString("\r\n")
        case .status(let id), .result(let id), .watch(let id), .unwatch(let id):
            out.writeString("\(tag)\(request.command.verb) \(id)\r\n")
        case .wait(let id, let timeout):
            out.writeString("\(tag)WAIT \(id) \(timeout)\r\n")
        case .subscribe(let function, let start):
            let from: String =
                switch start {
                case nil: ""
                case .now: " from=now"
                case .start: " from=start"
                case .after(let cursor): " from=\(cursor)"
                }
            out.writeString("\(tag)SUBSCRIBE \(function)\(from)\r\n")
        case .unsubscribe(let function):
            out.writeString("\(tag)\(request.command.verb) \(function)\r\n")
        case .hello, .ping, .stats, .health, .quit:
            out.writeString("\(tag)\(request.command.verb)\r\n")
        }
    }
}
