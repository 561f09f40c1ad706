private import CHiredis
public import NIOCore

/// Decodes RESP2 replies with hiredis's reader, one reply per `decode` call.
///
/// A `final class` because it owns the C `redisReader`, freed in `deinit`. Use one decoder per
/// connection, on that connection's event loop (hiredis readers are not thread-safe).
///
/// Bounds: a reply may take at most `maximumReplySize` bytes on the wire (counted while it is still
/// incomplete, so a huge bulk string is refused before it is fully buffered), and an array header
/// may not announce more elements than could fit in that many bytes (three bytes each at least).
/// Both throw ``RedisError/Code-swift.struct/replyTooLarge``. Invalid bytes throw
/// ``RedisError/Code-swift.struct/protocolError``. Both errors are sticky, as hiredis's are: the
/// connection must be closed.
public final class RedisReplyDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = RedisReply

    public static let defaultMaximumReplySize = 512 << 20

    public let maximumReplySize: Int
    private let reader: UnsafeMutablePointer<redisReader>
    /// Bytes fed to the reader since the last complete reply: all of them belong to the next one.
    private var bytesInCurrentReply = 0
    private var failure: RedisError?
    /// A large top-level bulk string being read past hiredis (see `decode`).
    private var largeBulk: LargeBulk?

    /// Top-level bulk strings of at least this many bytes (a job's result, read with `HGET`) are read straight into
    /// a buffer of their own: one copy, where hiredis takes three (into its buffer, into a reply object, out of it)
    /// and two large allocations.
    static let directBulkMinimum = 16 * 1024

    private struct LargeBulk {
        var storage: ByteBuffer
        var remaining: Int
        /// Bytes of the CRLF after the string still to come.
        var trailer = 2
    }

    public init(maximumReplySize: Int = RedisReplyDecoder.defaultMaximumReplySize) {
        precondition(maximumReplySize >= 3, "a reply takes at least three bytes")
        guard let reader = chiredis_reader_create(Int64(maximumReplySize / 3)) else {
            fatalError("hiredis could not allocate a reader (out of memory)")
        }
        self.maximumReplySize = maximumReplySize
        self.reader = reader
    }

    deinit {
        chiredis_reader_free(reader)
    }

    public func decode(buffer: inout ByteBuffer) throws(RedisError) -> RedisReply? {
        if let failure { throw failure }
        // The reader may still hold complete replies from bytes fed earlier.
        if let reply = try nextReply() { return reply }
        if largeBulk != nil || (chiredis_reader_unparsed(reader) == 0 && startsLargeBulk(&buffer)) {
            if let failure { throw failure }
            return try continueLargeBulk(&buffer)
        }

        // NIO calls `decode` again only while the buffer is not empty, but the reader copies what it is
        // fed. So feed all but the last byte and keep that byte back while replies come out: the
        // replies still inside the reader get their calls. The last byte completes at most one reply.
        let readable = buffer.readableBytes
        guard readable > 0 else { return nil }
        if readable > 1 {
            try feed(buffer.readSlice(length: readable - 1)!)
            if let reply = try nextReply() { return reply }
        }
        try feed(buffer.readSlice(length: 1)!)
        return try nextReply()
    }

    public func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(RedisError) -> RedisReply? {
        try decode(buffer: &buffer)
    }

    /// At a reply boundary: whether `buffer` starts with the whole header of a large bulk string (then consumed).
    /// A header split across reads, or a small string, goes through hiredis as any reply.
    private func startsLargeBulk(_ buffer: inout ByteBuffer) -> Bool {
        let view = buffer.readableBytesView
        guard view.first == UInt8(ascii: "$"), let end = view.prefix(24).firstIndex(of: UInt8(ascii: "\r")), end + 1 < view.endIndex,
            view[end + 1] == UInt8(ascii: "\n"), let length = Int(String(decoding: view[(view.startIndex + 1)..<end], as: UTF8.self)),
            length >= Self.directBulkMinimum
        else { return false }
        let header = end + 2 - view.startIndex
        guard header + length + 2 <= maximumReplySize else {
            failure = RedisError(.replyTooLarge, "reply exceeds \(maximumReplySize) bytes (a bulk string of \(length))")
            return true
        }
        buffer.moveReaderIndex(forwardBy: header)
        largeBulk = LargeBulk(storage: ByteBufferAllocator().buffer(capacity: length), remaining: length)
        return true
    }

    /// Takes what `buffer` holds of the large bulk string; the reply once it is whole.
    private func continueLargeBulk(_ buffer: inout ByteBuffer) throws(RedisError) -> RedisReply? {
        guard var bulk = largeBulk else { return nil }
        largeBulk = nil  // not kept in two places while its storage grows (no copy on write)
        let taken = min(bulk.remaining, buffer.readableBytes)
        if taken > 0 {
            var slice = buffer.readSlice(length: taken)!
            bulk.storage.writeBuffer(&slice)
            bulk.remaining -= taken
        }
        while bulk.remaining == 0, bulk.trailer > 0, let byte = buffer.readInteger(as: UInt8.self) {
            guard byte == (bulk.trailer == 2 ? UInt8(ascii: "\r") : UInt8(ascii: "\n")) else {
                throw fail(RedisError(.protocolError, "a bulk string does not end with CRLF"))
            }
            bulk.trailer -= 1
        }
        guard bulk.remaining == 0, bulk.trailer == 0 else {
            largeBulk = bulk
            return nil
        }
        return .bulkString(bulk.storage)
    }

    private func feed(_ bytes: ByteBuffer) throws(RedisError) {
        let status = bytes.withUnsafeReadableBytes { raw in
            redisReaderFeed(reader, raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count)
        }
        guard status == REDIS_OK else { throw fail(readerError()) }
        bytesInCurrentReply += bytes.readableBytes
    }

    private func nextReply() throws(RedisError) -> RedisReply? {
        var raw: UnsafeMutableRawPointer?
        guard redisReaderGetReply(reader, &raw) == REDIS_OK else { throw fail(readerError()) }
        guard let raw else {
            if bytesInCurrentReply > maximumReplySize {
                throw fail(RedisError(.replyTooLarge, "reply exceeds \(maximumReplySize) bytes (\(bytesInCurrentReply) buffered)"))
            }
            return nil
        }
        // The top-level reply owns its children: free it exactly once, after copying everything out.
        defer { freeReplyObject(raw) }
        bytesInCurrentReply = chiredis_reader_unparsed(reader)
        return copyReply(raw.assumingMemoryBound(to: redisReply.self))
    }

    private func readerError() -> RedisError {
        if chiredis_reader_limit_exceeded(reader) != 0 {
            return RedisError(.replyTooLarge, "array announces more elements than fit in \(maximumReplySize) bytes")
        }
        return RedisError(.protocolError, "hiredis: " + String(cString: chiredis_reader_errstr(reader)))
    }

    private func fail(_ error: RedisError) -> RedisError {
        failure = error
        return error
    }
}

/// Copies a hiredis reply tree into Swift values; all bulk strings share one ByteBuffer allocation. The bytes are all
/// written before the first slice is taken: a slice shares the storage, so a write after it would copy the whole
/// storage (for an `HGETALL` of a dozen fields, a dozen growing copies, each kept alive by its field).
private func copyReply(_ reply: UnsafePointer<redisReply>) -> RedisReply {
    var storage = ByteBuffer()
    storage.reserveCapacity(stringBytes(reply))
    writeStrings(reply, into: &storage)
    var offset = storage.readerIndex
    return copyReply(reply, slicing: storage, at: &offset)
}

private func writeStrings(_ reply: UnsafePointer<redisReply>, into storage: inout ByteBuffer) {
    switch reply.pointee.type {
    case REDIS_REPLY_STRING: storage.writeBytes(UnsafeRawBufferPointer(start: reply.pointee.str, count: reply.pointee.len))
    case REDIS_REPLY_ARRAY:
        for index in 0..<reply.pointee.elements { writeStrings(reply.pointee.element[index]!, into: &storage) }
    default: break
    }
}

private func stringBytes(_ reply: UnsafePointer<redisReply>) -> Int {
    switch reply.pointee.type {
    case REDIS_REPLY_STRING: return reply.pointee.len
    case REDIS_REPLY_ARRAY:
        var total = 0
        for index in 0..<reply.pointee.elements {
            total += stringBytes(reply.pointee.element[index]!)
        }
        return total
    default: return 0
    }
}

/// The reply, its bulk strings sliced from `storage` (written by `writeStrings`) in order from `offset`.
private func copyReply(_ reply: UnsafePointer<redisReply>, slicing storage: ByteBuffer, at offset: inout Int) -> RedisReply {
    let value = reply.pointee
    switch value.type {
    case REDIS_REPLY_STRING:
        defer { offset += value.len }
        return .bulkString(storage.getSlice(at: offset, length: value.len)!)
    case REDIS_REPLY_STATUS:
        return .simpleString(text(value))
    case REDIS_REPLY_ERROR:
        return .error(text(value))
    case REDIS_REPLY_INTEGER:
        return .integer(value.integer)
    case REDIS_REPLY_ARRAY:
        var elements: [RedisReply] = []
        elements.reserveCapacity(value.elements)
        for index in 0..<value.elements {
            elements.append(copyReply(value.element[index]!, slicing: storage, at: &offset))
        }
        return .array(elements)
    default:  // REDIS_REPLY_NIL: hiredis creates no other type
        return .null
    }
}

private func text(_ value: redisReply) -> String {
    String(decoding: UnsafeRawBufferPointer(start: value.str, count: value.len), as: UTF8.self)
}
