import NIOCore
import NIOTestUtils
import LocalServers
import Testing

@testable import Gearman

@Suite("Gearman codec")
struct GearmanCodecTests {
    // MARK: Helpers

    /// Feeds `chunks` through the single-step processor, the way the channel handlers do.
    static func decode(
        _ chunks: [ByteBuffer],
        decoder: GearmanMessageDecoder = GearmanMessageDecoder(),
        seenEOF: Bool = false
    ) throws -> [GearmanMessage] {
        let processor = NIOSingleStepByteToMessageProcessor(decoder)
        var messages: [GearmanMessage] = []
        for chunk in chunks {
            try processor.process(buffer: chunk) { messages.append($0) }
        }
        if seenEOF {
            try processor.finishProcessing(seenEOF: true) { messages.append($0) }
        }
        return messages
    }

    /// Splits `buffer` into chunks of 1...maxChunk bytes.
    static func chunks(of buffer: ByteBuffer, maxChunk: Int, using rng: inout SplitMix64) -> [ByteBuffer] {
        var rest = buffer
        var chunks: [ByteBuffer] = []
        while rest.readableBytes > 0 {
            let length = Int.random(in: 1...min(maxChunk, rest.readableBytes), using: &rng)
            chunks.append(rest.readSlice(length: length)!)
        }
        return chunks
    }

    /// One byte at a time.
    static func bytes(of buffer: ByteBuffer) -> [ByteBuffer] {
        buffer.readableBytesView.map { ByteBuffer(bytes: [$0]) }
    }

    /// A packet of `type` whose fields are all present; the last holds NUL, CR and LF.
    static func samplePacket(_ type: GearmanPacketType, magic: GearmanMagic) -> GearmanPacket {
        let count = type.fieldCount!
        let fields = (0..<count).map { index -> ByteBuffer in
            index == count - 1
                ? ByteBuffer(bytes: Array("data\0with\r\nbreaks\0".utf8) + [0, 0xFF, 0x0A])
                : ByteBuffer(string: "field-\(index)")
        }
        return GearmanPacket(magic: magic, type: type, arguments: fields)
    }

    static func decodeError(_ bytes: ByteBuffer, decoder: GearmanMessageDecoder = GearmanMessageDecoder()) -> GearmanProtocolError? {
        var buffer = bytes
        var decoder = decoder
        do {
            _ = try decoder.decode(buffer: &buffer)
            return nil
        } catch {
            return error
        }
    }

    // MARK: The packet table

    /// Field counts transcribed from the gearmand 1.1.20 packet table (reference §2), type 5 unused.
    static let referenceFieldCounts: [UInt32: (String, Int)] = [
        1: ("CAN_DO", 1), 2: ("CANT_DO", 1), 3: ("RESET_ABILITIES", 0), 4: ("PRE_SLEEP", 0), 6: ("NOOP", 0),
        7: ("SUBMIT_JOB", 3), 8: ("JOB_CREATED", 1), 9: ("GRAB_JOB", 0), 10: ("NO_JOB", 0), 11: ("JOB_ASSIGN", 3),
        12: ("WORK_STATUS", 3), 13: ("WORK_COMPLETE", 2), 14: ("WORK_FAIL", 1), 15: ("GET_STATUS", 1),
        16: ("ECHO_REQ", 1), 17: ("ECHO_RES", 1), 18: ("SUBMIT_JOB_BG", 3), 19: ("ERROR", 2), 20: ("STATUS_RES", 5),
        21: ("SUBMIT_JOB_HIGH", 3), 22: ("SET_CLIENT_ID", 1), 23: ("CAN_DO_TIMEOUT", 2), 24: ("ALL_YOURS", 0),
        25: ("WORK_EXCEPTION", 2), 26: ("OPTION_REQ", 1), 27: ("OPTION_RES", 1), 28: ("WORK_DATA", 2),
        29: ("WORK_WARNING", 2), 30: ("GRAB_JOB_UNIQ", 0), 31: ("JOB_ASSIGN_UNIQ", 4), 32: ("SUBMIT_JOB_HIGH_BG", 3),
        33: ("SUBMIT_JOB_LOW", 3), 34: ("SUBMIT_JOB_LOW_BG", 3), 35: ("SUBMIT_JOB_SCHED", 8), 36: ("SUBMIT_JOB_EPOCH", 4),
        37: ("SUBMIT_REDUCE_JOB", 5), 38: ("SUBMIT_REDUCE_JOB_BACKGROUND", 5), 39: ("GRAB_JOB_ALL", 0),
        40: ("JOB_ASSIGN_ALL", 5), 41: ("GET_STATUS_UNIQUE", 1), 42: ("STATUS_RES_UNIQUE", 6),
    ]

    /// The known types are 1...42 without 5, with the names and field counts of the reference.
    @Test func packetTableMatchesReference() {
        #expect(GearmanPacketType.allKnown.map(\.rawValue) == Array(1...42).filter { $0 != 5 })
        for type in GearmanPacketType.allKnown {
            let expected = Self.referenceFieldCounts[type.rawValue]
            #expect(type.name == expected?.0, "name of \(type.rawValue)")
            #expect(type.fieldCount == expected?.1, "field count of \(type.name)")
        }
        for unknown: UInt32 in [0, 5, 43, .max] {
            let type = GearmanPacketType(rawValue: unknown)
            #expect(!type.isKnown)
            #expect(type.fieldCount == nil)
            #expect(type.name == "UNKNOWN(\(unknown))")
        }
    }

    // MARK: Round trips and wire bytes

    /// Every known type survives encode → decode with both magics, with binary bytes in its last field.
    @Test(arguments: GearmanPacketType.allKnown, [GearmanMagic.request, .response])
    func roundTrip(type: GearmanPacketType, magic: GearmanMagic) throws {
        let packet = Self.samplePacket(type, magic: magic)
        let wire = packet.wire
        let count = try #require(type.fieldCount)
        let bodySize = packet.arguments.reduce(max(0, count - 1)) { $0 + $1.readableBytes }
        #expect(wire.readableBytes == GearmanMessageDecoder.headerSize + bodySize)
        #expect(wire.getInteger(at: 0, as: UInt32.self) == (magic == .request ? 0x0052_4551 : 0x0052_4553))
        #expect(wire.getInteger(at: 4, as: UInt32.self) == type.rawValue)
        #expect(wire.getInteger(at: 8, as: UInt32.self) == UInt32(bodySize))

        #expect(try Self.decode([wire]) == [.packet(packet)])
        #expect(try Self.decode(Self.bytes(of: wire)) == [.packet(packet)])
    }

    /// Empty fields keep their places: `\0\0` is three empty fields.
    @Test(arguments: GearmanPacketType.allKnown)
    func roundTripWithEmptyFields(type: GearmanPacketType) throws {
        let count = try #require(type.fieldCount)
        let packet = GearmanPacket(magic: .response, type: type, arguments: Array(repeating: ByteBuffer(), count: count))
        let wire = packet.wire
        #expect(wire.readableBytes == 12 + max(0, count - 1))
        #expect(try Self.decode([wire]) == [.packet(packet)])
    }

    /// JOB_CREATED as observed from gearmand 1.1.20: `00 52 45 53 | 00 00 00 08 | 00 00 00 06 | "H:vm:1"`.
    @Test func jobCreatedWireBytesMatchReference() throws {
        let expected: [UInt8] = [0x00, 0x52, 0x45, 0x53, 0, 0, 0, 8, 0, 0, 0, 6] + Array("H:vm:1".utf8)
        #expect(Array(GearmanPacket.response(.jobCreated, "H:vm:1").wire.readableBytesView) == expected)
        let decoded = try Self.decode([ByteBuffer(bytes: expected)])
        #expect(decoded == [.packet(.response(.jobCreated, "H:vm:1"))])
    }

    /// Requests carry `\0REQ`, fields are NUL-separated and the last is not terminated.
    @Test func requestWireBytes() {
        let submit = GearmanPacket(.request, .submitJobBackground, "fn", "u1", "payload")
        let body = Array("fn\0u1\0payload".utf8)
        #expect(Array(submit.wire.readableBytesView) == [0x00, 0x52, 0x45, 0x51, 0, 0, 0, 18, 0, 0, 0, UInt8(body.count)] + body)

        let preSleep = GearmanPacket(.request, .preSleep)
        #expect(Array(preSleep.wire.readableBytesView) == [0x00, 0x52, 0x45, 0x51, 0, 0, 0, 4, 0, 0, 0, 0])

        let error = GearmanPacket.response(.error, "QUEUE_ERROR", "Job queue is full")
        #expect(Array(error.wire.readableBytesView.dropFirst(12)) == Array("QUEUE_ERROR\0Job queue is full".utf8))
    }

    /// Several packets written into one buffer decode in order (the batch path of the client).
    @Test func packetsAppendIntoOneBuffer() throws {
        let packets = (1...3).map { GearmanPacket(.request, .submitJobBackground, "fn", "u\($0)", "p\($0)") }
        var buffer = ByteBuffer()
        for packet in packets { try GearmanMessageEncoder.write(packet, into: &buffer) }
        #expect(buffer == .joined(packets.map(\.wire)))
        #expect(try Self.decode([buffer]) == packets.map(GearmanMessage.packet))
    }

    /// Admin commands go out with `\r\n` (a bare `\n` makes `create function` lose a character, reference §9).
    @Test func textCommandEncoding() throws {
        var out = ByteBuffer()
        try GearmanMessageEncoder().encode(data: .text("status"), out: &out)
        try GearmanMessageEncoder().encode(data: .text("cancel job H:vm:1"), out: &out)
        #expect(String(buffer: out) == "status\r\ncancel job H:vm:1\r\n")
    }

    // MARK: Chunking and mixing

    static let mixedStream: [(ByteBuffer, [GearmanMessage])] = [
        (GearmanPacket.response(.jobCreated, "H:vm:1").wire, [.packet(.response(.jobCreated, "H:vm:1"))]),
        (ByteBuffer(string: "OK 1.1.20+ds\n"), [.text("OK 1.1.20+ds")]),
        (ByteBuffer(string: "OK\r\n"), [.text("OK")]),
        (
            ByteBuffer(string: "fn_a\t3\t1\t2\nfn_b\t0\t0\t1\n.\n"),
            [.text("fn_a\t3\t1\t2"), .text("fn_b\t0\t0\t1"), .text(".")]
        ),
        (ByteBuffer(string: "\n"), [.text("")]),
        (samplePacket(.workComplete, magic: .response).wire, [.packet(samplePacket(.workComplete, magic: .response))]),
        (GearmanPacket.response(.noop).wire, [.packet(.response(.noop))]),
        (
            GearmanPacket.response(.statusResUnique, "u", "1", "1", "42", "100", "2").wire,
            [.packet(.response(.statusResUnique, "u", "1", "1", "42", "100", "2"))]
        ),
        (
            ByteBuffer(string: "ERR UNKNOWN_JOB Unknown+job\r\n"),
            [.text("ERR UNKNOWN_JOB Unknown+job")]
        ),
    ]

    /// NIO's verifier: drip-fed, all at once, and in every order of the pairs.
    @Test func verifierAcceptsPacketsAndLines() throws {
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: Self.mixedStream) {
            GearmanMessageDecoder()
        }
    }

    /// Binary packets and admin lines interleaved on one stream, fed in seeded random chunks.
    @Test(arguments: [1, 2, 3, 4, 5] as [UInt64])
    func randomChunks(seed: UInt64) throws {
        let stream = ByteBuffer.joined(Self.mixedStream.map(\.0))
        let expected = Self.mixedStream.flatMap(\.1)
        var rng = SplitMix64(seed: seed)
        for maxChunk in [2, 7, 13, 64] {
            let chunks = Self.chunks(of: stream, maxChunk: maxChunk, using: &rng)
            #expect(try Self.decode(chunks, seenEOF: true) == expected)
        }
        #expect(try Self.decode(Self.bytes(of: stream), seenEOF: true) == expected)
    }

    /// An incomplete packet or line yields nothing and consumes nothing.
    @Test func incompleteInputWaits() throws {
        let wire = Self.samplePacket(.jobAssignUniq, magic: .response).wire
        for length in [1, 3, 4, 11, 12, wire.readableBytes - 1] {
            var buffer = wire.getSlice(at: 0, length: length)!
            var decoder = GearmanMessageDecoder()
            #expect(try decoder.decode(buffer: &buffer) == nil)
            #expect(buffer.readableBytes == length)
        }
        var line = ByteBuffer(string: "OK 1.1.20")
        var decoder = GearmanMessageDecoder()
        #expect(try decoder.decode(buffer: &line) == nil)
        #expect(line.readableBytes == 9)
    }

    /// A body of exactly the maximum is accepted.
    @Test func bodyAtTheMaximumDecodes() throws {
        let packet = GearmanPacket(magic: .response, type: .echoRes, arguments: [ByteBuffer(repeating: 0x41, count: 64)])
        #expect(try Self.decode([packet.wire], decoder: GearmanMessageDecoder(maximumBodySize: 64)) == [.packet(packet)])
    }

    /// A line of exactly the maximum is accepted (the `\n` is not counted).
    @Test func lineAtTheMaximumDecodes() throws {
        let line = String(repeating: "x", count: 16)
        #expect(try Self.decode([ByteBuffer(string: line + "\n")], decoder: GearmanMessageDecoder(maximumLineLength: 16)) == [.text(line)])
    }

    // MARK: Malformed input

    @Test func badMagicIsRejected() {
        var bytes = ByteBuffer.header(magic: 0x0052_4558, type: 8, size: 0)  // "\0REX"
        #expect(Self.decodeError(bytes) == .invalidMagic(0x0052_4558))
        bytes = ByteBuffer(bytes: [0, 0, 0, 0])  // the magic alone is enough to refuse
        #expect(Self.decodeError(bytes) == .invalidMagic(0))
    }

    /// Unknown types are refused from the header alone, without waiting for the announced body.
    @Test(arguments: [0, 5, 43, .max] as [UInt32])
    func unknownTypeIsRejected(type: UInt32) {
        #expect(Self.decodeError(.header(type: type, size: 0)) == .unknownPacketType(type))
        #expect(Self.decodeError(.header(type: type, size: 1000)) == .unknownPacketType(type))
    }

    /// A size over the maximum fails on the header: nothing waits for (or buffers) the body.
    @Test func oversizedBodyIsRejectedBeforeBuffering() {
        let small = GearmanMessageDecoder(maximumBodySize: 1024)
        #expect(Self.decodeError(.header(type: 17, size: 1025), decoder: small) == .bodyTooLarge(size: 1025, maximum: 1024))
        #expect(Self.decodeError(.header(type: 13, size: .max)) == .bodyTooLarge(size: Int(UInt32.max), maximum: 64 << 20))
        // Through the processor too: it throws on the first 12 bytes.
        #expect(throws: GearmanProtocolError.bodyTooLarge(size: 1025, maximum: 1024)) {
            try Self.decode(Self.bytes(of: .header(type: 17, size: 1025)), decoder: small)
        }
    }

    @Test func missingFieldsAreRejected() throws {
        func body(_ type: GearmanPacketType, _ text: String) -> ByteBuffer {
            var buffer = ByteBuffer.header(type: type.rawValue, size: UInt32(text.utf8.count))
            buffer.writeString(text)
            return buffer
        }
        #expect(Self.decodeError(body(.submitJob, "fn")) == .missingArguments(type: .submitJob, expected: 3, found: 1))
        #expect(Self.decodeError(body(.submitJob, "fn\0uniq")) == .missingArguments(type: .submitJob, expected: 3, found: 2))
        #expect(Self.decodeError(body(.jobAssignUniq, "H:1\0fn")) == .missingArguments(type: .jobAssignUniq, expected: 4, found: 2))
        #expect(Self.decodeError(body(.statusRes, "")) == .missingArguments(type: .statusRes, expected: 5, found: 1))
        // Extra NULs are not an error: they belong to the last field.
        var buffer = body(.workComplete, "H:1\0a\0b")
        var decoder = GearmanMessageDecoder()
        #expect(try decoder.decode(buffer: &buffer) == .packet(.response(.workComplete, "H:1", "a\0b")))
    }

    @Test func bodyOnZeroFieldTypeIsRejected() {
        var buffer = ByteBuffer.header(type: GearmanPacketType.noop.rawValue, size: 3)
        buffer.writeString("abc")
        #expect(Self.decodeError(buffer) == .unexpectedBody(type: .noop, size: 3))
    }

    /// An admin line over the maximum fails as soon as the maximum is passed, not at the newline.
    @Test func overlongLineIsRejected() {
        let decoder = GearmanMessageDecoder(maximumLineLength: 16)
        #expect(Self.decodeError(ByteBuffer(string: String(repeating: "x", count: 17)), decoder: decoder) == .lineTooLong(maximum: 16))
        #expect(Self.decodeError(ByteBuffer(string: String(repeating: "x", count: 17) + "\n"), decoder: decoder) == .lineTooLong(maximum: 16))
        #expect(Self.decodeError(ByteBuffer(string: String(repeating: "x", count: 16)), decoder: decoder) == nil)
    }

    /// EOF inside a packet or a line is an error; EOF between messages is not.
    @Test func eofInsideAMessageIsTruncation() throws {
        let wire = GearmanPacket.response(.jobCreated, "H:vm:1").wire
        #expect(throws: GearmanProtocolError.truncated(buffered: 15)) {
            try Self.decode([wire.getSlice(at: 0, length: 15)!], seenEOF: true)
        }
        #expect(throws: GearmanProtocolError.truncated(buffered: 5)) {
            try Self.decode([ByteBuffer(string: "OK 1.")], seenEOF: true)
        }
        var partial = wire.getSlice(at: 0, length: 15)!
        var decoder = GearmanMessageDecoder()
        #expect(try decoder.decodeLast(buffer: &partial, seenEOF: false) == nil)
        #expect(try Self.decode([wire], seenEOF: true) == [.packet(.response(.jobCreated, "H:vm:1"))])
    }

    // MARK: Encoder refusals

    @Test func encoderRefusesNulInANonFinalField() {
        var out = ByteBuffer()
        let badUnique = GearmanPacket(.request, .submitJobBackground, "fn", "u\0x", "data")
        #expect(throws: GearmanProtocolError.nulInArgument(type: .submitJobBackground, index: 1)) {
            try GearmanMessageEncoder.write(badUnique, into: &out)
        }
        #expect(out.readableBytes == 0)
        // NUL in the last field is data.
        #expect(throws: Never.self) {
            try GearmanMessageEncoder.write(GearmanPacket(.request, .submitJobBackground, "fn", "u", "d\0ta"), into: &out)
        }
    }

    @Test func encoderRefusesWrongFieldCounts() {
        var out = ByteBuffer()
        #expect(throws: GearmanProtocolError.missingArguments(type: .submitJob, expected: 3, found: 2)) {
            try GearmanMessageEncoder.write(GearmanPacket(.request, .submitJob, "fn", "u"), into: &out)
        }
        #expect(throws: GearmanProtocolError.missingArguments(type: .noop, expected: 0, found: 1)) {
            try GearmanMessageEncoder.write(GearmanPacket(.request, .noop, "x"), into: &out)
        }
        #expect(throws: GearmanProtocolError.unknownPacketType(5)) {
            try GearmanMessageEncoder.write(GearmanPacket(magic: .request, type: GearmanPacketType(rawValue: 5)), into: &out)
        }
        #expect(out.readableBytes == 0)
    }

    @Test func encoderRefusesLineBreaksInTextCommands() {
        var out = ByteBuffer()
        for line in ["status\n", "cancel job H:1\r\nshutdown", "sta\0tus"] {
            #expect(throws: GearmanProtocolError.invalidTextCommand(line)) {
                try GearmanMessageEncoder().encode(data: .text(line), out: &out)
            }
        }
        #expect(out.readableBytes == 0)
    }

    /// The stray NUL of the WORK_FAIL that replaces a WORK_EXCEPTION does not end up in the handle.
    @Test func handleDropsTrailingNul() throws {
        var wire = ByteBuffer.header(type: GearmanPacketType.workFail.rawValue, size: 8)
        wire.writeString("H:vm:20\0")
        let messages = try Self.decode([wire])
        guard case .packet(let packet) = try #require(messages.first) else {
            Issue.record("expected a packet")
            return
        }
        #expect(packet.string(at: 0) == "H:vm:20\0")
        #expect(packet.handle == "H:vm:20")
    }
}
