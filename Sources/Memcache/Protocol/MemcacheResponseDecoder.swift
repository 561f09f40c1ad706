import NIOCore

/// Decodes memcached text-protocol replies, one `MemcacheResponse` at a time.
///
/// From memcached/memcached:doc/protocol.txt:
/// ```
/// VALUE <key> <flags> <bytes> [<cas unique>]\r\n
/// <data block>\r\n
/// ...
/// END\r\n
/// ```
/// and single status lines (`STORED`, `NOT_STORED`, `EXISTS`, `NOT_FOUND`, `DELETED`, `TOUCHED`, `ERROR`,
/// `CLIENT_ERROR <error>`, `SERVER_ERROR <error>`, `VERSION <version>`).
///
/// Both limits are checked before bytes are waited for: a line with no `\r\n` within `maximumLineLength` bytes and
/// a `VALUE` announcing more than `maximumValueSize` bytes are errors at once, so a bad server cannot make the
/// buffer grow without bound. The data block is taken by its announced length, so `\r\nEND\r\n` inside a value is
/// just data.
public struct MemcacheResponseDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = MemcacheResponse

    public let maximumValueSize: Int
    public let maximumLineLength: Int

    public init(maximumValueSize: Int = 1 << 20, maximumLineLength: Int = 4096) {
        self.maximumValueSize = maximumValueSize
        self.maximumLineLength = maximumLineLength
    }

    public mutating func decode(buffer: inout ByteBuffer) throws(MemcacheError) -> MemcacheResponse? {
        guard let lineLength = try lineLength(in: buffer) else { return nil }
        let line = buffer.readableBytesView.prefix(lineLength)
        let consumed: Int
        let response: MemcacheResponse
        if line.starts(with: Self.valuePrefix) {
            guard let (item, total) = try decodeValue(header: line, lineLength: lineLength, buffer: buffer) else { return nil }
            response = .value(item)
            consumed = total
        } else {
            response = try Self.statusLine(line)
            consumed = lineLength + 2
        }
        buffer.moveReaderIndex(forwardBy: consumed)
        return response
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(MemcacheError) -> MemcacheResponse? {
        if let response = try decode(buffer: &buffer) { return response }
        if seenEOF && buffer.readableBytes > 0 {
            throw MemcacheError(.truncatedResponse, "connection closed inside a reply (\(buffer.readableBytes) bytes buffered)")
        }
        return nil
    }

    // MARK: - Lines

    private static let valuePrefix = Array("VALUE ".utf8)

    /// Length of the first line without its `\r\n`, or nil while it is incomplete.
    private func lineLength(in buffer: ByteBuffer) throws(MemcacheError) -> Int? {
        let view = buffer.readableBytesView
        guard let newline = view.prefix(maximumLineLength + 2).firstIndex(of: UInt8(ascii: "\n")) else {
            if view.count >= maximumLineLength + 2 {
                throw MemcacheError(.lineTooLong, "reply line longer than \(maximumLineLength) bytes")
            }
            return nil
        }
        let length = newline - view.startIndex
        guard length > 0, view[newline - 1] == UInt8(ascii: "\r") else {
            throw MemcacheError(.malformedResponse, "reply line not ended by \\r\\n: \(Self.quote(view[view.startIndex..<newline]))")
        }
        return length - 1
    }

    private static func statusLine(_ line: ByteBufferView.SubSequence) throws(MemcacheError) -> MemcacheResponse {
        switch String(decoding: line, as: UTF8.self) {
        case "END": return .end
        case "STORED": return .stored
        case "NOT_STORED": return .notStored
        case "EXISTS": return .exists
        case "NOT_FOUND": return .notFound
        case "DELETED": return .deleted
        case "TOUCHED": return .touched
        case "ERROR": return .error
        case let text where text.hasPrefix("CLIENT_ERROR"):
            return .clientError(Self.message(after: "CLIENT_ERROR", in: text))
        case let text where text.hasPrefix("SERVER_ERROR"):
            return .serverError(Self.message(after: "SERVER_ERROR", in: text))
        case let text where text.hasPrefix("VERSION "):
            return .version(String(text.dropFirst("VERSION ".count)))
        default:
            throw MemcacheError(.malformedResponse, "unknown reply line \(quote(line))")
        }
    }

    private static func message(after word: String, in text: String) -> String {
        String(text.dropFirst(word.count).drop(while: { $0 == " " }))
    }

    // MARK: - VALUE blocks

    /// The item and the bytes it spans, or nil while its data block is incomplete.
    private func decodeValue(
        header: ByteBufferView.SubSequence,
        lineLength: Int,
        buffer: ByteBuffer
    ) throws(MemcacheError) -> (MemcacheItem, Int)? {
        let fields = header.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard fields.count == 4 || fields.count == 5, !fields[1].isEmpty,
            let flags = Self.number(fields[2], as: UInt32.self),
            let size = Self.number(fields[3], as: Int.self)
        else {
            throw MemcacheError(.malformedResponse, "bad VALUE line \(Self.quote(header))")
        }
        var cas: UInt64?
        if fields.count == 5 {
            guard let value = Self.number(fields[4], as: UInt64.self) else {
                throw MemcacheError(.malformedResponse, "bad CAS in VALUE line \(Self.quote(header))")
            }
            cas = value
        }
        guard size <= maximumValueSize else {
            throw MemcacheError(.valueTooLarge, "server announced a value of \(size) bytes; the maximum is \(maximumValueSize)")
        }
        let dataStart = lineLength + 2
        let total = dataStart + size + 2
        guard buffer.readableBytes >= total else { return nil }
        let start = buffer.readerIndex
        guard buffer.getInteger(at: start + dataStart + size, as: UInt16.self) == 0x0D0A else {
            throw MemcacheError(.malformedResponse, "data block of \(size) bytes not followed by \\r\\n")
        }
        let key = String(decoding: fields[1], as: UTF8.self)
        let data = buffer.getSlice(at: start + dataStart, length: size)!
        return (MemcacheItem(key: key, flags: flags, data: data, cas: cas), total)
    }

    /// A plain unsigned decimal (no sign, no spaces) that fits `T`.
    private static func number<T: FixedWidthInteger>(_ bytes: ByteBufferView.SubSequence, as: T.Type) -> T? {
        guard !bytes.isEmpty, bytes.count <= 20, bytes.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            return nil
        }
        return T(String(decoding: bytes, as: UTF8.self))
    }

    private static func quote(_ bytes: ByteBufferView.SubSequence) -> String {
        String(reflecting: String(decoding: bytes.prefix(80), as: UTF8.self))
    }
}
