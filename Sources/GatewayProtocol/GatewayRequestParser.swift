import NIOCore

/// Parses one request line (without its line break) into a request, an error, or the announcement of a data block.
enum GatewayRequestParser {
    enum Outcome {
        /// Nothing but spaces: ignored.
        case empty
        /// A whole request, or an error to answer.
        case complete(Result<GatewayRequest, GatewayRequestError>)
        /// A `SUBMIT` line with a valid byte count: the block follows, whether the rest of the line was good or not.
        case block(length: Int, Result<PendingSubmission, GatewayRequestError>)
    }

    /// A `SUBMIT` waiting for its data block.
    struct PendingSubmission {
        var tag: GatewayTag?
        var function: GatewayFunctionName
        var unique: GatewayUniqueKey?
        var priority: GatewayPriority
        var waitMilliseconds: UInt64?

        func request(payload: ByteBuffer) -> GatewayRequest {
            GatewayRequest(
                tag: tag,
                .submit(.init(function: function, payload: payload, unique: unique, priority: priority, waitMilliseconds: waitMilliseconds))
            )
        }
    }

    struct Failure: Error {
        var code: GatewayErrorCode
        var message: String

        static func badFormat(_ message: String) -> Failure { Failure(code: .badFormat, message: message) }
    }

    static func parse(_ line: ArraySlice<UInt8>, maximumPayloadSize: Int) -> Outcome {
        var words = GatewaySyntax.words(line).map { line[$0] }
        guard !words.isEmpty else { return .empty }

        var tag: GatewayTag?
        var tagFailure: Failure?
        if words[0].first == .at {
            let tagWord = words.removeFirst()
            tag = GatewayTag(bytes: tagWord.dropFirst())
            if tag == nil {
                tagFailure = .badFormat("invalid tag \(GatewaySyntax.quoted(tagWord)): 1-32 of A-Z a-z 0-9 _ . -")
            }
        }

        // Known before anything else is checked, so that the block of a bad SUBMIT line is skipped rather than read
        // as requests.
        let blockLength: Int? =
            if words.count >= 3, GatewaySyntax.asciiUppercased(words[0]) == "SUBMIT" { GatewaySyntax.byteCount(words[2]) } else { nil }

        do throws(Failure) {
            if let tagFailure { throw tagFailure }
            guard let verbWord = words.first else { throw .badFormat("missing command after the tag") }
            let arguments = Array(words.dropFirst())
            let verb = GatewaySyntax.asciiUppercased(verbWord)
            let command: GatewayCommand
            switch verb {
            case "HELLO":
                try expect(arguments, verb, usage: "")
                command = .hello
            case "AUTH":
                guard arguments.count == 1 || arguments.count == 2 else { throw .badFormat("wrong number of arguments: AUTH [<name>] <secret>") }
                let words = try arguments.map { word throws(Failure) in
                    guard let text = GatewaySyntax.string(validating: word), GatewaySyntax.isWord(text, maximumLength: .max) else {
                        throw .badFormat("the name and the secret must be UTF-8 without control characters")
                    }
                    return text
                }
                command = .auth(name: words.count == 2 ? words[0] : nil, secret: words[words.count - 1])
            case "SUBMIT":
                let pending = try submission(arguments, tag: tag, maximumPayloadSize: maximumPayloadSize)
                return .block(length: blockLength!, .success(pending))
            case "STATUS":
                try expect(arguments, verb, usage: " <id>")
                command = .status(try jobID(arguments[0]))
            case "RESULT":
                try expect(arguments, verb, usage: " <id>")
                command = .result(try jobID(arguments[0]))
            case "WAIT":
                try expect(arguments, verb, usage: " <id> <timeout-ms>")
                let id = try jobID(arguments[0])
                guard let timeout = GatewaySyntax.decimal(arguments[1]) else {
                    throw .badFormat("timeout \(GatewaySyntax.quoted(arguments[1])) is not a number of milliseconds")
                }
                command = .wait(id, timeoutMilliseconds: timeout)
            case "WATCH":
                try expect(arguments, verb, usage: " <id>")
                command = .watch(try jobID(arguments[0]))
            case "UNWATCH":
                try expect(arguments, verb, usage: " <id>")
                command = .unwatch(try jobID(arguments[0]))
            case "SUBSCRIBE":
                command = try subscription(arguments)
            case "UNSUBSCRIBE":
                try expect(arguments, verb, usage: " <function>")
                command = .unsubscribe(try function(arguments[0]))
            case "PING":
                try expect(arguments, verb, usage: "")
                command = .ping
            case "STATS":
                try expect(arguments, verb, usage: "")
                command = .stats
            case "HEALTH":
                try expect(arguments, verb, usage: "")
                command = .health
            case "QUIT":
                try expect(arguments, verb, usage: "")
                command = .quit
            default:
                throw Failure(code: .unknownCommand, message: "unknown command \(GatewaySyntax.quoted(verbWord))")
            }
            return .complete(.success(GatewayRequest(tag: tag, command)))
        } catch {
            let requestError = GatewayRequestError(tag: tag, code: error.code, message: error.message)
            if let blockLength { return .block(length: blockLength, .failure(requestError)) }
            return .complete(.failure(requestError))
        }
    }

    /// The tag at the start of a line that is too long to parse, so the `LINE_TOO_LONG` reply can carry it.
    static func leadingTag(_ bytes: some Collection<UInt8>) -> GatewayTag? {
        let head = bytes.prefix(GatewayTag.maximumLength + 2)
        guard head.first == .at, let space = head.firstIndex(of: .space) else { return nil }
        return GatewayTag(bytes: head[head.index(after: head.startIndex)..<space])
    }

    // MARK: - Arguments

    private static func expect(_ arguments: [ArraySlice<UInt8>], _ verb: String, usage: String) throws(Failure) {
        let count = usage.split(separator: " ").count
        guard arguments.count == count else {
            throw .badFormat("wrong number of arguments: \(verb)\(usage)")
        }
    }

    private static func jobID(_ word: ArraySlice<UInt8>) throws(Failure) -> GatewayJobID {
        guard let id = GatewayJobID(bytes: word) else { throw .badFormat("invalid job id \(GatewaySyntax.quoted(word))") }
        return id
    }

    private static func function(_ word: ArraySlice<UInt8>) throws(Failure) -> GatewayFunctionName {
        guard let string = GatewaySyntax.string(validating: word), let name = GatewayFunctionName(rawValue: string) else {
            throw .badFormat("invalid function name \(GatewaySyntax.quoted(word)): 1-255 bytes of UTF-8 without whitespace or control characters")
        }
        return name
    }

    /// `SUBSCRIBE <function> [from=now|start|<cursor>]`.
    private static func subscription(_ arguments: [ArraySlice<UInt8>]) throws(Failure) -> GatewayCommand {
        let usage = "SUBSCRIBE <function> [from=now|start|<cursor>]"
        guard (1...2).contains(arguments.count) else { throw .badFormat("wrong number of arguments: \(usage)") }
        let function = try function(arguments[0])
        guard arguments.count == 2 else { return .subscribe(function) }
        let option = arguments[1]
        guard let equals = option.firstIndex(of: .equals), GatewaySyntax.asciiLowercased(option[..<equals]) == "from" else {
            throw .badFormat("unexpected argument \(GatewaySyntax.quoted(option)): \(usage)")
        }
        let value = String(decoding: option[option.index(after: equals)...], as: UTF8.self)
        switch value.lowercased() {
        case "now": return .subscribe(function, from: .now)
        case "start": return .subscribe(function, from: .start)
        default:
            guard let cursor = GatewayLogCursor(value) else {
                throw .badFormat("from= must be now, start or a cursor <ms>-<seq> from an event's cursor=")
            }
            return .subscribe(function, from: .after(cursor))
        }
    }

    private static func submission(
        _ arguments: [ArraySlice<UInt8>],
        tag: GatewayTag?,
        maximumPayloadSize: Int
    ) throws(Failure) -> PendingSubmission {
        guard arguments.count >= 2 else { throw .badFormat("wrong number of arguments: SUBMIT <function> <bytes> [name=value…]") }
        let function = try function(arguments[0])
        guard let length = GatewaySyntax.byteCount(arguments[1]) else {
            throw .badFormat(
                "byte count \(GatewaySyntax.quoted(arguments[1])) is not a non-negative number; no data block was read, so the bytes after this line are read as requests"
            )
        }
        guard length <= maximumPayloadSize else {
            throw Failure(code: .payloadTooLarge, message: "data block of \(length) bytes exceeds the maximum of \(maximumPayloadSize); it was skipped")
        }
        var pending = PendingSubmission(tag: tag, function: function, unique: nil, priority: .normal, waitMilliseconds: nil)
        var seen: Set<String> = []
        for word in arguments.dropFirst(2) {
            guard let equals = word.firstIndex(of: .equals) else {
                throw .badFormat("unexpected argument \(GatewaySyntax.quoted(word)): SUBMIT <function> <bytes> [name=value…]")
            }
            let name = GatewaySyntax.asciiLowercased(word[..<equals])
            let value = word[word.index(after: equals)...]
            guard ["unique", "priority", "wait"].contains(name) else {
                throw .badFormat("unknown option \(GatewaySyntax.quoted(word[..<equals])): SUBMIT takes unique=, priority= and wait=")
            }
            guard seen.insert(name).inserted else { throw .badFormat("option \(name)= given twice") }
            switch name {
            case "unique":
                guard let string = GatewaySyntax.string(validating: value), let unique = GatewayUniqueKey(rawValue: string) else {
                    throw .badFormat("unique= must be 1-63 bytes of UTF-8 without whitespace or control characters (never truncated)")
                }
                pending.unique = unique
            case "priority":
                guard let priority = GatewayPriority(rawValue: GatewaySyntax.asciiLowercased(value)) else {
                    throw .badFormat("priority= must be high, normal or low")
                }
                pending.priority = priority
            default:
                guard let wait = GatewaySyntax.decimal(value) else { throw .badFormat("wait= must be a number of milliseconds") }
                pending.waitMilliseconds = wait
            }
        }
        return pending
    }
}
