import NIOCore

/// Decodes requests from a client connection, one at a time.
///
/// Each output is either a request or a recoverable protocol error, which the session answers with
/// `ERR <code> <text>` (see ``GatewayRequestError/response``) while the connection stays usable:
///
/// - A request is one line ending in LF; a CR before the LF is dropped; empty lines are ignored.
/// - A line longer than `maximumLineLength` (not counting its line break) is discarded up to the next LF as it
///   streams in, never buffered, and reported as `LINE_TOO_LONG` once the LF arrives (a `SUBMIT` line that long
///   has no readable byte count, so no data block is skipped for it).
/// - `SUBMIT`'s byte count announces a data block of exactly that many raw bytes, then CRLF or LF. The block is
///   consumed whenever the count itself is valid, even when the rest of the line is wrong; a count over
///   `maximumPayloadSize` gives `PAYLOAD_TOO_LARGE` and the block is skipped as it streams in, never buffered whole.
///   A negative or non-numeric count gives `BAD_FORMAT` and no block can be consumed: the bytes that follow are read
///   as request lines. A block not followed by a line break gives `BAD_FORMAT`, and the rest of that line is dropped.
/// - Before a good `SUBMIT`'s block is read, the caller may refuse it (``decode(buffer:admittingBlock:)``): a
///   request that cannot succeed (not authenticated, no room) has its block skipped as it streams in, and the
///   caller's error is the answer.
/// - Errors carry the request's tag when it could be read.
///
/// At most `maximumLineLength + 1` bytes of an unfinished line and `maximumPayloadSize + 2` bytes of a block stay
/// buffered, whatever arrives. When the connection closes in the middle of a line or a block,
/// ``decodeLast(buffer:seenEOF:)`` throws ``GatewayProtocolError/Code/truncated``: nothing partial is ever returned.
public struct GatewayRequestDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = Result<GatewayRequest, GatewayRequestError>

    public static let defaultMaximumLineLength = 8 * 1024
    public static let defaultMaximumPayloadSize = 16 * 1024 * 1024

    public let maximumLineLength: Int
    public let maximumPayloadSize: Int

    /// Indirect: a request inline would make every connection's decoder ~100 bytes larger, and most connections
    /// (idle watchers, 10,000 of them) sit at `.line`.
    private indirect enum State {
        /// At the start of a request line, or inside one that fits the limit.
        case line
        /// Dropping bytes up to the next LF, then reporting `error`.
        case discardingLine(GatewayRequestError)
        /// Waiting for the whole data block of a good `SUBMIT`.
        case readingBlock(length: Int, GatewayRequestParser.PendingSubmission)
        /// Dropping the data block of a bad `SUBMIT` as it arrives.
        case skippingBlock(remaining: Int, GatewayRequestError)
        /// Expecting the CRLF or LF after a data block.
        case blockLineBreak(Result<GatewayRequest, GatewayRequestError>)
    }

    private var state: State = .line
    /// How many bytes of the unfinished line have been searched for LF already, so a line arriving byte by byte
    /// is not searched again from its start each time.
    private var scannedBytes = 0

    public init(maximumLineLength: Int = Self.defaultMaximumLineLength, maximumPayloadSize: Int = Self.defaultMaximumPayloadSize) {
        precondition(maximumLineLength > 0 && maximumPayloadSize >= 0, "limits must be positive")
        self.maximumLineLength = maximumLineLength
        self.maximumPayloadSize = maximumPayloadSize
    }

    public mutating func decode(buffer: inout ByteBuffer) -> InboundOut? {
        decode(buffer: &buffer) { _ in nil }
    }

    /// Whether no request has been started: the decoder is at the start of a line (of which `buffer` may hold a part).
    public var isAtLineStart: Bool {
        if case .line = state { true } else { false }
    }

    /// Whether the decoder waits for the rest of a data block it was allowed to read.
    public var isReadingBlock: Bool {
        if case .readingBlock = state { true } else { false }
    }

    /// Decodes as ``decode(buffer:)`` does, but asks `admit` once a good `SUBMIT` line announced its block, before
    /// reading any of it: nil reads the block; an error skips the block as it streams in and is the request's answer.
    public mutating func decode(
        buffer: inout ByteBuffer,
        admittingBlock admit: (GatewayBlockAnnouncement) -> GatewayRequestError?
    ) -> InboundOut? {
        // Loops because skipping (an empty line, a block, junk) produces nothing, yet the next request may already
        // be buffered: returning nil then would leave it waiting for more bytes.
        while true {
            switch state {
            case .line:
                let view = buffer.readableBytesView
                let window = min(view.count, maximumLineLength + 2)
                if let lf = view[(view.startIndex + min(scannedBytes, window))..<(view.startIndex + window)].firstIndex(of: .lf) {
                    var line = Array(view[view.startIndex..<lf])[...]
                    if line.last == .cr { line = line.dropLast() }
                    buffer.moveReaderIndex(to: lf + 1)
                    scannedBytes = 0
                    if line.count > maximumLineLength {
                        return .failure(lineTooLong(tag: GatewayRequestParser.leadingTag(line)))
                    }
                    switch GatewayRequestParser.parse(line, maximumPayloadSize: maximumPayloadSize) {
                    case .empty: continue
                    case .complete(let result): return result
                    case .block(let length, .success(let pending)):
                        if let refusal = admit(GatewayBlockAnnouncement(tag: pending.tag, length: length)) {
                            state = .skippingBlock(remaining: length, refusal)
                        } else {
                            state = .readingBlock(length: length, pending)
                        }
                    case .block(let length, .failure(let error)): state = .skippingBlock(remaining: length, error)
                    }
                } else if view.count >= maximumLineLength + 2 {
                    // Too long whatever follows: keep only the tag, drop the rest as it streams in.
                    state = .discardingLine(lineTooLong(tag: GatewayRequestParser.leadingTag(view)))
                    scannedBytes = 0
                } else {
                    scannedBytes = window
                    return nil
                }

            case .discardingLine(let error):
                if let lf = buffer.readableBytesView.firstIndex(of: .lf) {
                    buffer.moveReaderIndex(to: lf + 1)
                    state = .line
                    return .failure(error)
                }
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                return nil

            case .readingBlock(let length, let pending):
                guard let payload = buffer.readSlice(length: length) else { return nil }
                state = .blockLineBreak(.success(pending.request(payload: payload)))

            case .skippingBlock(let remaining, let error):
                let skipped = min(remaining, buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: skipped)
                if skipped < remaining {
                    state = .skippingBlock(remaining: remaining - skipped, error)
                    return nil
                }
                state = .blockLineBreak(.failure(error))

            case .blockLineBreak(let result):
                guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
                var lineBreakLength = 0
                if first == .lf {
                    lineBreakLength = 1
                } else if first == .cr {
                    guard let second = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) else { return nil }
                    if second == .lf { lineBreakLength = 2 }
                }
                if lineBreakLength > 0 {
                    buffer.moveReaderIndex(forwardBy: lineBreakLength)
                    state = .line
                    return result
                }
                let tag: GatewayTag? =
                    switch result {
                    case .success(let request): request.tag
                    case .failure(let error): error.tag
                    }
                state = .discardingLine(
                    GatewayRequestError(
                        tag: tag,
                        code: .badFormat,
                        message: "data block not followed by a line break (is the byte count right?); the rest of that line was dropped"
                    )
                )
            }
        }
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(GatewayProtocolError) -> InboundOut? {
        try decodeLast(buffer: &buffer, seenEOF: seenEOF) { _ in nil }
    }

    /// ``decodeLast(buffer:seenEOF:)`` with the caller deciding on blocks, as in ``decode(buffer:admittingBlock:)``.
    public mutating func decodeLast(
        buffer: inout ByteBuffer,
        seenEOF: Bool,
        admittingBlock admit: (GatewayBlockAnnouncement) -> GatewayRequestError?
    ) throws(GatewayProtocolError) -> InboundOut? {
        if let result = decode(buffer: &buffer, admittingBlock: admit) { return result }
        guard seenEOF else { return nil }
        let inside: String
        switch state {
        case .line:
            guard buffer.readableBytes > 0 else { return nil }
            inside = "a request line (\(buffer.readableBytes) bytes without LF)"
        case .discardingLine: inside = "an over-long or broken request line"
        case .readingBlock(let length, _): inside = "a data block (\(buffer.readableBytes) of \(length) bytes)"
        case .skippingBlock(let remaining, _): inside = "a skipped data block (\(remaining) bytes missing)"
        case .blockLineBreak: inside = "the line break after a data block"
        }
        // Reset, so that a further call reports nothing twice.
        state = .line
        scannedBytes = 0
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        throw GatewayProtocolError(code: .truncated, message: "connection closed inside \(inside); the request was not executed")
    }

    private func lineTooLong(tag: GatewayTag?) -> GatewayRequestError {
        GatewayRequestError(tag: tag, code: .lineTooLong, message: "request line longer than \(maximumLineLength) bytes; discarded up to the next LF")
    }
}

/// A good `SUBMIT` line's data block, announced before any of it is read.
public struct GatewayBlockAnnouncement: Hashable, Sendable {
    /// The request's tag, for the answer when the block is refused.
    public var tag: GatewayTag?
    /// The block's length in bytes (at most the decoder's `maximumPayloadSize`).
    public var length: Int

    public init(tag: GatewayTag?, length: Int) {
        self.tag = tag
        self.length = length
    }
}
