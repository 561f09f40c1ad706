import NIOCore

/// Decodes binary packets and admin text lines from a gearmand connection, one at a time.
///
/// A first byte of `\0` starts a binary packet; anything else is an admin text line ending in `\n`
/// (gearmand mixes both on one port). Sizes are checked before anything is buffered, so a hostile
/// header cannot make the buffer grow without bound.
public struct GearmanMessageDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = GearmanMessage

    public static let headerSize = 12
    public let maximumBodySize: Int
    public let maximumLineLength: Int

    public init(maximumBodySize: Int = 64 << 20, maximumLineLength: Int = 1 << 20) {
        self.maximumBodySize = maximumBodySize
        self.maximumLineLength = maximumLineLength
    }

    public mutating func decode(buffer: inout ByteBuffer) throws(GearmanProtocolError) -> GearmanMessage? {
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        return first == 0 ? try decodePacket(&buffer).map(GearmanMessage.packet) : try decodeLine(&buffer).map(GearmanMessage.text)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(GearmanProtocolError) -> GearmanMessage? {
        if let message = try decode(buffer: &buffer) { return message }
        if seenEOF && buffer.readableBytes > 0 {
            throw .truncated(buffered: buffer.readableBytes)
        }
        return nil
    }

    private func decodePacket(_ buffer: inout ByteBuffer) throws(GearmanProtocolError) -> GearmanPacket? {
        let start = buffer.readerIndex
        guard let magicValue = buffer.getInteger(at: start, as: UInt32.self) else { return nil }
        let magic: GearmanMagic
        switch magicValue {
        case GearmanMagic.requestBytes: magic = .request
        case GearmanMagic.responseBytes: magic = .response
        default: throw .invalidMagic(magicValue)
        }
        guard let rawType = buffer.getInteger(at: start + 4, as: UInt32.self),
            let size = buffer.getInteger(at: start + 8, as: UInt32.self)
        else { return nil }
        let type = GearmanPacketType(rawValue: rawType)
        guard let fieldCount = type.fieldCount else { throw .unknownPacketType(rawType) }
        guard size <= maximumBodySize else { throw .bodyTooLarge(size: Int(size), maximum: maximumBodySize) }
        guard buffer.readableBytes >= Self.headerSize + Int(size) else { return nil }

        buffer.moveReaderIndex(forwardBy: Self.headerSize)
        var body = buffer.readSlice(length: Int(size))!
        var arguments: [ByteBuffer] = []
        arguments.reserveCapacity(fieldCount)
        for index in 0..<fieldCount {
            if index == fieldCount - 1 {
                arguments.append(body)
            } else if let nul = body.readableBytesView.firstIndex(of: 0) {
                arguments.append(body.readSlice(length: nul - body.readerIndex)!)
                body.moveReaderIndex(forwardBy: 1)
            } else {
                throw .missingArguments(type: type, expected: fieldCount, found: index + 1)
            }
        }
        if fieldCount == 0 && size > 0 {
            throw .unexpectedBody(type: type, size: Int(size))
        }
        return GearmanPacket(magic: magic, type: type, arguments: arguments)
    }

    private func decodeLine(_ buffer: inout ByteBuffer) throws(GearmanProtocolError) -> String? {
        let view = buffer.readableBytesView
        guard let newline = view.prefix(maximumLineLength + 1).firstIndex(of: UInt8(ascii: "\n")) else {
            if view.count > maximumLineLength { throw .lineTooLong(maximum: maximumLineLength) }
            return nil
        }
        var line = buffer.readSlice(length: newline - buffer.readerIndex)!
        buffer.moveReaderIndex(forwardBy: 1)
        if line.readableBytesView.last == UInt8(ascii: "\r") {
            line = line.getSlice(at: line.readerIndex, length: line.readableBytes - 1)!
        }
        return String(buffer: line)
    }
}

/// Encodes binary packets and admin text lines.
public struct GearmanMessageEncoder: MessageToByteEncoder {
    public typealias OutboundIn = GearmanMessage

    public init() {}

    public func encode(data: GearmanMessage, out: inout ByteBuffer) throws {
        switch data {
        case .packet(let packet): try Self.write(packet, into: &out)
        case .text(let line):
            guard !line.utf8.contains(UInt8(ascii: "\n")), !line.utf8.contains(0) else {
                throw GearmanProtocolError.invalidTextCommand(line)
            }
            out.writeString(line)
            out.writeString("\r\n")
        }
    }

    /// Appends one packet; several calls fill one buffer, so a burst costs one write and one flush.
    public static func write(_ packet: GearmanPacket, into out: inout ByteBuffer) throws(GearmanProtocolError) {
        guard let fieldCount = packet.type.fieldCount else { throw .unknownPacketType(packet.type.rawValue) }
        guard packet.arguments.count == fieldCount else {
            throw .missingArguments(type: packet.type, expected: fieldCount, found: packet.arguments.count)
        }
        var size = max(0, fieldCount - 1)
        for (index, argument) in packet.arguments.enumerated() {
            if index < fieldCount - 1, argument.readableBytesView.contains(0) {
                throw .nulInArgument(type: packet.type, index: index)
            }
            size += argument.readableBytes
        }
        guard size <= UInt32.max else { throw .bodyTooLarge(size: size, maximum: Int(UInt32.max)) }
        out.reserveCapacity(minimumWritableBytes: GearmanMessageDecoder.headerSize + size)
        out.writeMultipleIntegers(packet.magic.wireValue, packet.type.rawValue, UInt32(size))
        for (index, argument) in packet.arguments.enumerated() {
            if index > 0 { out.writeInteger(UInt8(0)) }
            out.writeImmutableBuffer(argument)
        }
    }
}
