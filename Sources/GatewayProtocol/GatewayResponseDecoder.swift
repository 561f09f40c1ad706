import NIOCore

/// Decodes replies and events from a gateway connection, for clients (the `jobgate submit` command, benchmarks,
/// tests).
///
/// Lines end in LF or CRLF; a line ending in a byte count (`DONE`, `FAILED`, `STATS`, `EVENT … PROGRESS|DONE|FAILED`)
/// is followed by that many raw bytes and a line break. Anything a conforming server never sends is thrown as a
/// ``GatewayProtocolError``, after which the connection should close: a client cannot resynchronise with a server it
/// does not understand. Options (`name=value`) after the known arguments of a reply are ignored, so a newer server
/// may add some. At most `maximumLineLength + 1` bytes of a line and `maximumBlockSize + 2` bytes of a block are
/// buffered.
public struct GatewayResponseDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = GatewayResponse

    public static let defaultMaximumLineLength = 8 * 1024
    public static let defaultMaximumBlockSize = 64 * 1024 * 1024

    public let maximumLineLength: Int
    public let maximumBlockSize: Int

    /// A reply or event line whose data block has not arrived yet.
    private enum PendingBlock {
        case done(GatewayJobID)
        case failed(GatewayJobID)
        case stats
        case progressEvent(GatewayJobID, numerator: UInt64, denominator: UInt64)
        case doneEvent(GatewayJobID, cursor: GatewayLogCursor?)
        case failedEvent(GatewayJobID, cursor: GatewayLogCursor?)
    }

    private enum Parsed {
        case response(GatewayResponse)
        case block(length: Int, PendingBlock, tag: GatewayTag?)
    }

    private enum State {
        case line
        case block(length: Int, PendingBlock, tag: GatewayTag?)
    }

    private var state: State = .line
    private var scannedBytes = 0

    public init(maximumLineLength: Int = Self.defaultMaximumLineLength, maximumBlockSize: Int = Self.defaultMaximumBlockSize) {
        precondition(maximumLineLength > 0 && maximumBlockSize >= 0, "limits must be positive")
        self.maximumLineLength = maximumLineLength
        self.maximumBlockSize = maximumBlockSize
    }

    public mutating func decode(buffer: inout ByteBuffer) throws(GatewayProtocolError) -> GatewayResponse? {
        while true {
            switch state {
            case .line:
                let view = buffer.readableBytesView
                let window = min(view.count, maximumLineLength + 2)
                guard let lf = view[(view.startIndex + min(scannedBytes, window))..<(view.startIndex + window)].firstIndex(of: .lf) else {
                    if view.count >= maximumLineLength + 2 {
                        throw GatewayProtocolError(code: .lineTooLong, message: "reply line longer than \(maximumLineLength) bytes")
                    }
                    scannedBytes = window
                    return nil
                }
                var line = Array(view[view.startIndex..<lf])[...]
                if line.last == .cr { line = line.dropLast() }
                guard line.count <= maximumLineLength else {
                    throw GatewayProtocolError(code: .lineTooLong, message: "reply line longer than \(maximumLineLength) bytes")
                }
                buffer.moveReaderIndex(to: lf + 1)
                scannedBytes = 0
                if line.allSatisfy({ $0 == .space }) { continue }
                switch try parse(line) {
                case .response(let response): return response
                case .block(let length, let pending, let tag): state = .block(length: length, pending, tag: tag)
                }

            case .block(let length, let pending, let tag):
                guard let next = buffer.getInteger(at: buffer.readerIndex + length, as: UInt8.self) else { return nil }
                var lineBreakLength = 1
                if next == .cr {
                    guard let second = buffer.getInteger(at: buffer.readerIndex + length + 1, as: UInt8.self) else { return nil }
                    guard second == .lf else { throw missingLineBreak(length) }
                    lineBreakLength = 2
                } else if next != .lf {
                    throw missingLineBreak(length)
                }
                let block = buffer.readSlice(length: length)!
                buffer.moveReaderIndex(forwardBy: lineBreakLength)
                state = .line
                return Self.response(pending, block: block, tag: tag)
            }
        }
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(GatewayProtocolError) -> GatewayResponse? {
        if let response = try decode(buffer: &buffer) { return response }
        guard seenEOF else { return nil }
        let inside: String
        switch state {
        case .line:
            guard buffer.readableBytes > 0 else { return nil }
            inside = "a reply line (\(buffer.readableBytes) bytes without LF)"
        case .block(let length, _, _):
            inside = "a data block (\(buffer.readableBytes) of \(length) bytes and its line break)"
        }
        state = .line
        scannedBytes = 0
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        throw GatewayProtocolError(code: .truncated, message: "connection closed inside \(inside)")
    }

    private func missingLineBreak(_ length: Int) -> GatewayProtocolError {
        GatewayProtocolError(code: .missingLineBreak, message: "data block of \(length) bytes not followed by a line break")
    }

    // MARK: - Lines

    private func parse(_ line: ArraySlice<UInt8>) throws(GatewayProtocolError) -> Parsed {
        var words = GatewaySyntax.words(line).map { line[$0] }
        func malformed(_ why: String) -> GatewayProtocolError {
            GatewayProtocolError(code: .malformedLine, message: "\(why): \(GatewaySyntax.quoted(line, limit: 80))")
        }

        var tag: GatewayTag?
        if words[0].first == .at {
            guard let parsed = GatewayTag(bytes: words.removeFirst().dropFirst()) else { throw malformed("invalid tag") }
            tag = parsed
        }
        guard let verbWord = words.first else { throw malformed("nothing after the tag") }
        let verb = GatewaySyntax.asciiUppercased(verbWord)

        /// The words after the verb, checking that there are at least `count` and that any more are options.
        func arguments(_ count: Int) throws(GatewayProtocolError) -> [ArraySlice<UInt8>] {
            let arguments = Array(words.dropFirst())
            guard arguments.count >= count else { throw malformed("\(verb) needs \(count) arguments") }
            for extra in arguments.dropFirst(count) where (extra.firstIndex(of: .equals) ?? extra.startIndex) == extra.startIndex {
                throw malformed("unexpected argument \(GatewaySyntax.quoted(extra))")
            }
            return Array(arguments.prefix(count))
        }
        func id(_ word: ArraySlice<UInt8>) throws(GatewayProtocolError) -> GatewayJobID {
            guard let id = GatewayJobID(bytes: word) else { throw malformed("invalid job id") }
            return id
        }
        func number(_ word: ArraySlice<UInt8>) throws(GatewayProtocolError) -> UInt64 {
            guard let number = GatewaySyntax.decimal(word) else { throw malformed("invalid number") }
            return number
        }
        func blockLength(_ word: ArraySlice<UInt8>) throws(GatewayProtocolError) -> Int {
            guard let length = GatewaySyntax.byteCount(word) else { throw malformed("invalid byte count") }
            guard length <= maximumBlockSize else {
                throw GatewayProtocolError(code: .blockTooLarge, message: "data block of \(length) bytes exceeds the maximum of \(maximumBlockSize)")
            }
            return length
        }
        func status(_ words: ArraySlice<ArraySlice<UInt8>>) throws(GatewayProtocolError) -> GatewayJobStatus {
            let words = Array(words)
            guard let state = GatewayJobState(rawValue: String(decoding: words[0], as: UTF8.self)) else { throw malformed("unknown job state") }
            return GatewayJobStatus(state, numerator: try number(words[1]), denominator: try number(words[2]))
        }
        func function(_ word: ArraySlice<UInt8>) throws(GatewayProtocolError) -> GatewayFunctionName {
            guard let string = GatewaySyntax.string(validating: word), let name = GatewayFunctionName(rawValue: string) else {
                throw malformed("invalid function name")
            }
            return name
        }
        func reply(_ reply: GatewayReply) -> Parsed { .response(.reply(reply, tag: tag)) }
        /// The `cursor=` option of a subscription's terminal event (extension), if any.
        func cursor() throws(GatewayProtocolError) -> GatewayLogCursor? {
            guard let option = words.dropFirst(3).first(where: { GatewaySyntax.asciiLowercased($0.prefix(7)) == "cursor=" }) else { return nil }
            guard let cursor = GatewayLogCursor(String(decoding: option.dropFirst(7), as: UTF8.self)) else { throw malformed("invalid cursor") }
            return cursor
        }

        switch verb {
        case "HELLO":
            let arguments = try arguments(2)
            guard arguments[0].elementsEqual("jobgate".utf8) else { throw malformed("not a jobgate server") }
            var options: [String: String] = [:]
            for option in words.dropFirst(3) {
                let equals = option.firstIndex(of: .equals)!
                options[GatewaySyntax.asciiLowercased(option[..<equals])] = String(decoding: option[(equals + 1)...], as: UTF8.self)
            }
            guard options["proto"] == "1" else { throw malformed("not protocol version 1") }
            let authenticationRequired: Bool
            switch options["auth"] {
            case "none": authenticationRequired = false
            case "required": authenticationRequired = true
            default: throw malformed("auth= must be none or required")
            }
            guard let maximumPayloadSize = options["max-payload"].flatMap({ GatewaySyntax.byteCount($0.utf8) }) else {
                throw malformed("max-payload= must be a byte count")
            }
            return reply(
                .hello(
                    GatewayServerInfo(
                        version: String(decoding: arguments[1], as: UTF8.self),
                        authenticationRequired: authenticationRequired,
                        maximumPayloadSize: maximumPayloadSize
                    )
                )
            )
        case "OK": _ = try arguments(0); return reply(.ok)
        case "PONG": _ = try arguments(0); return reply(.pong)
        case "HEALTH":
            guard words.count >= 2 else { throw malformed("HEALTH needs ready or not-ready") }
            let isReady: Bool
            switch String(decoding: words[1], as: UTF8.self) {
            case "ready": isReady = true
            case "not-ready": isReady = false
            default: throw malformed("HEALTH must say ready or not-ready")
            }
            var checks: [GatewayHealth.Check] = []
            for word in words.dropFirst(2) {
                guard let equals = word.firstIndex(of: .equals), equals != word.startIndex else { throw malformed("a HEALTH check is name=value") }
                checks.append(.init(String(decoding: word[..<equals], as: UTF8.self), String(decoding: word[(equals + 1)...], as: UTF8.self)))
            }
            return reply(.health(GatewayHealth(isReady: isReady, checks: checks)))
        case "BYE": _ = try arguments(0); return reply(.bye)
        case "CREATED": return reply(.created(try id(arguments(1)[0])))
        case "EXISTS": return reply(.exists(try id(arguments(1)[0])))
        case "EXPIRED": return reply(.expired(try id(arguments(1)[0])))
        case "UNWATCHED": return reply(.unwatched(try id(arguments(1)[0])))
        case "STATUS", "PENDING", "TIMEOUT", "WATCHING":
            let arguments = try arguments(4)
            let id = try id(arguments[0])
            let status = try status(arguments[1...])
            switch verb {
            case "STATUS": return reply(.status(id, status))
            case "PENDING": return reply(.pending(id, status))
            case "TIMEOUT": return reply(.timeout(id, status))
            default: return reply(.watching(id, status))
            }
        case "DONE", "FAILED":
            let arguments = try arguments(2)
            let id = try id(arguments[0])
            return .block(length: try blockLength(arguments[1]), verb == "DONE" ? .done(id) : .failed(id), tag: tag)
        case "SUBSCRIBED": return reply(.subscribed(try function(arguments(1)[0])))
        case "UNSUBSCRIBED": return reply(.unsubscribed(try function(arguments(1)[0])))
        case "STATS": return .block(length: try blockLength(arguments(1)[0]), .stats, tag: tag)
        case "ERR":
            guard words.count >= 2, let code = GatewayErrorCode(rawValue: String(decoding: words[1], as: UTF8.self)) else {
                throw malformed("invalid error code")
            }
            var message = line[words[1].endIndex...]
            if message.first == .space { message = message.dropFirst() }
            return reply(.error(code: code, message: String(decoding: message, as: UTF8.self)))
        case "EVENT":
            guard words.count >= 3 else { throw malformed("EVENT needs an id and a kind") }
            let kind = GatewaySyntax.asciiUppercased(words[2])
            switch kind {
            case "PROGRESS":
                let arguments = try arguments(5)
                return .block(
                    length: try blockLength(arguments[4]),
                    .progressEvent(try id(arguments[0]), numerator: try number(arguments[2]), denominator: try number(arguments[3])),
                    tag: tag
                )
            case "DONE", "FAILED":
                let arguments = try arguments(3)
                let id = try id(arguments[0])
                let cursor = try cursor()
                return .block(
                    length: try blockLength(arguments[2]),
                    kind == "DONE" ? .doneEvent(id, cursor: cursor) : .failedEvent(id, cursor: cursor),
                    tag: tag
                )
            case "EXPIRED":
                let event = GatewayEvent.expired(try id(arguments(2)[0]))
                return .response(.event(try cursor().map { .logged(event, cursor: $0) } ?? event, tag: tag))
            default:
                throw malformed("unknown event")
            }
        default:
            throw malformed("unknown reply")
        }
    }

    private static func response(_ pending: PendingBlock, block: ByteBuffer, tag: GatewayTag?) -> GatewayResponse {
        switch pending {
        case .done(let id): .reply(.done(id, result: block), tag: tag)
        case .failed(let id): .reply(.failed(id, reason: block), tag: tag)
        case .stats: .reply(.stats(statistics(in: block)), tag: tag)
        case .progressEvent(let id, let numerator, let denominator):
            .event(.progress(id, numerator: numerator, denominator: denominator, message: block), tag: tag)
        case .doneEvent(let id, let cursor): .event(logged(.done(id, result: block), cursor), tag: tag)
        case .failedEvent(let id, let cursor): .event(logged(.failed(id, reason: block), cursor), tag: tag)
        }
    }

    private static func logged(_ event: GatewayEvent, _ cursor: GatewayLogCursor?) -> GatewayEvent {
        cursor.map { .logged(event, cursor: $0) } ?? event
    }

    /// `name value` lines; a line without a space is a name with an empty value.
    private static func statistics(in block: ByteBuffer) -> [GatewayStatistic] {
        block.readableBytesView.split(separator: .lf).compactMap { line in
            let line = line.last == .cr ? line.dropLast() : line
            guard !line.isEmpty else { return nil }
            let space = line.firstIndex(of: .space) ?? line.endIndex
            let value = space < line.endIndex ? line[(space + 1)...] : line[line.endIndex...]
            return GatewayStatistic(String(decoding: line[..<space], as: UTF8.self), String(decoding: value, as: UTF8.self))
        }
    }
}
