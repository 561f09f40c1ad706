import NIOCore
import NIOTestUtils
import Testing

@testable import Memcache

@Suite struct MemcacheResponseDecoderTests {
    private func item(_ key: String, _ flags: UInt32, _ data: String, cas: UInt64? = nil) -> MemcacheResponse {
        .value(MemcacheItem(key: key, flags: flags, data: ByteBuffer(string: data), cas: cas))
    }

    /// Decodes everything in `input` with a fresh decoder, fed in the given chunks.
    private func decodeAll(_ chunks: [String], decoder: MemcacheResponseDecoder = .init()) throws -> [MemcacheResponse] {
        let processor = NIOSingleStepByteToMessageProcessor(decoder)
        var out: [MemcacheResponse] = []
        for chunk in chunks {
            try processor.process(buffer: ByteBuffer(string: chunk)) { out.append($0) }
        }
        return out
    }

    private func decodeError(_ chunks: [String], decoder: MemcacheResponseDecoder = .init()) -> MemcacheError? {
        do {
            _ = try decodeAll(chunks, decoder: decoder)
            return nil
        } catch {
            return error as? MemcacheError
        }
    }

    /// Every reply shape decodes, whole, drip-fed byte by byte and in every batching the verifier tries.
    @Test func everyReplyShape() throws {
        let pairs: [(String, [MemcacheResponse])] = [
            ("VALUE k 5 3\r\nabc\r\nEND\r\n", [item("k", 5, "abc"), .end]),
            ("VALUE a 0 1\r\nx\r\nVALUE b 4294967295 0\r\n\r\nEND\r\n", [item("a", 0, "x"), item("b", .max, ""), .end]),
            ("VALUE k 1 2 439\r\nhi\r\nEND\r\n", [item("k", 1, "hi", cas: 439), .end]),
            ("END\r\n", [.end]),
            ("STORED\r\n", [.stored]),
            ("NOT_STORED\r\n", [.notStored]),
            ("EXISTS\r\n", [.exists]),
            ("NOT_FOUND\r\n", [.notFound]),
            ("DELETED\r\n", [.deleted]),
            ("TOUCHED\r\n", [.touched]),
            ("ERROR\r\n", [.error]),
            ("CLIENT_ERROR bad data chunk\r\n", [.clientError("bad data chunk")]),
            ("SERVER_ERROR object too large for cache\r\n", [.serverError("object too large for cache")]),
            ("SERVER_ERROR\r\n", [.serverError("")]),
            ("VERSION 1.6.18\r\n", [.version("1.6.18")]),
        ]
        try ByteToMessageDecoderVerifier.verifyDecoder(stringInputOutputPairs: pairs) { MemcacheResponseDecoder() }
    }

    /// The data block is taken by length, so reply syntax inside a value is only data.
    @Test func valueContainingEndMarker() throws {
        let data = "x\r\nEND\r\nVALUE y 0 1\r\nSTORED\r\n"
        let wire = "VALUE k 0 \(data.utf8.count)\r\n\(data)\r\nEND\r\nSTORED\r\n"
        #expect(try decodeAll([wire]) == [item("k", 0, data), .end, .stored])
    }

    /// A reply split into two chunks at every byte position decodes to the same responses.
    @Test func valueSplitAtEveryByte() throws {
        let wire = Array("VALUE key:1 768 10 7\r\n0123\r\n6789\r\nEND\r\nDELETED\r\n".utf8)
        let expected = [item("key:1", 768, "0123\r\n6789", cas: 7), .end, .deleted]
        for split in 0...wire.count {
            let first = String(decoding: wire[..<split], as: UTF8.self)
            let second = String(decoding: wire[split...], as: UTF8.self)
            #expect(try decodeAll([first, second]) == expected, "split at \(split)")
        }
    }

    /// A value announced above the maximum is refused from its header line, before any data is buffered.
    @Test func oversizeValueIsRefusedFromItsHeader() {
        let decoder = MemcacheResponseDecoder(maximumValueSize: 1000)
        #expect(decodeError(["VALUE k 0 1001\r\n"], decoder: decoder)?.code == .valueTooLarge)
        #expect((try? decodeAll(["VALUE k 0 1000\r\n", String(repeating: "a", count: 1000), "\r\nEND\r\n"], decoder: decoder))?.count == 2)
    }

    /// A line with no end within the maximum is an error as soon as the maximum is passed.
    @Test func overlongLineIsRefused() {
        let decoder = MemcacheResponseDecoder(maximumLineLength: 64)
        // 65 bytes without a line end: not yet an error (the \r\n may follow).
        #expect(decodeError([String(repeating: "S", count: 65)], decoder: decoder) == nil)
        #expect(decodeError([String(repeating: "S", count: 66)], decoder: decoder)?.code == .lineTooLong)
        #expect(decodeError(["VALUE " + String(repeating: "k", count: 100) + " 0 1\r\nx\r\n"], decoder: decoder)?.code == .lineTooLong)
        // A line of exactly the maximum is fine (and then unknown).
        #expect(decodeError([String(repeating: "S", count: 64) + "\r\n"], decoder: decoder)?.code == .malformedResponse)
    }

    /// Anything that is not a reply is a typed error, never a crash or a silent skip.
    @Test(arguments: [
        "HELLO\r\n",
        "STORED\n",
        "\r\n",
        "stored\r\n",
        "VALUE k x 3\r\nabc\r\n",
        "VALUE k 0 -1\r\n",
        "VALUE k 0 3 cas\r\nabc\r\n",
        "VALUE k 4294967296 1\r\nx\r\n",
        "VALUE k 0\r\n",
        "VALUE  0 1\r\nx\r\n",
        "VALUE k 0 1 2 3\r\nx\r\n",
        "VALUE k 0 3\r\nabcXY",
        "VALUE k 0 99999999999999999999999\r\n",
    ])
    func malformedReply(_ wire: String) {
        #expect(decodeError([wire])?.code == .malformedResponse)
    }

    /// A connection that ends inside a reply is reported as truncated.
    @Test func truncatedAtEOF() throws {
        var decoder = MemcacheResponseDecoder()
        var buffer = ByteBuffer(string: "VALUE k 0 10\r\nabc")
        #expect(try decoder.decode(buffer: &buffer) == nil)
        #expect(buffer.readableBytes == 17, "an incomplete reply leaves the reader index alone")
        #expect(throws: MemcacheError.self) { try decoder.decodeLast(buffer: &buffer, seenEOF: true) }
        var empty = ByteBuffer()
        #expect(try decoder.decodeLast(buffer: &empty, seenEOF: true) == nil)
    }
}
