import LocalServers
import GatewayProtocol
import NIOCore

/// Drives a single-step decoder the way NIO's processor does: append what arrived, decode until nothing more comes
/// out, drop the consumed bytes. Records the most bytes ever left buffered, which is what the limits bound.
struct DecoderFeed<Decoder: NIOSingleStepByteToMessageDecoder> {
    var decoder: Decoder
    var buffer = ByteBuffer()
    var outputs: [Decoder.InboundOut] = []
    var maximumBuffered = 0

    init(_ decoder: Decoder) {
        self.decoder = decoder
    }

    mutating func feed(_ bytes: some Sequence<UInt8>) throws {
        buffer.writeBytes(Array(bytes))
        while buffer.readableBytes > 0, let output = try decoder.decode(buffer: &buffer) {
            outputs.append(output)
        }
        buffer.discardReadBytes()
        maximumBuffered = max(maximumBuffered, buffer.readableBytes)
    }

    mutating func feed(_ string: String) throws {
        try feed(Array(string.utf8))
    }

    /// Feeds `bytes` in pieces of `sizes` (cycled).
    mutating func feed(_ bytes: [UInt8], inChunksOf sizes: [Int]) throws {
        var offset = 0
        var index = 0
        while offset < bytes.count {
            let size = max(1, sizes[index % sizes.count])
            try feed(bytes[offset..<min(bytes.count, offset + size)])
            offset += size
            index += 1
        }
    }

    /// The connection closed: what `decodeLast` produces, or what it throws.
    mutating func finish() throws {
        while let output = try decoder.decodeLast(buffer: &buffer, seenEOF: true) {
            outputs.append(output)
        }
    }

    /// Takes the outputs decoded so far.
    mutating func take() -> [Decoder.InboundOut] {
        defer { outputs = [] }
        return outputs
    }
}


/// Random chunk sizes from 1 to `maximum`.
func randomSizes(count: Int = 64, maximum: Int, using rng: inout SplitMix64) -> [Int] {
    (0..<count).map { _ in Int.random(in: 1...maximum, using: &rng) }
}

// MARK: Fixtures

extension GatewayJobID {
    static let sample = GatewayJobID(rawValue: "3kq9w0c6r2z8m1v4x7b5n0t2ye")!
}

extension GatewayTag {
    static let t1 = GatewayTag(rawValue: "t1")!
}

func jobID(_ string: String) -> GatewayJobID { GatewayJobID(rawValue: string)! }
func tag(_ string: String) -> GatewayTag { GatewayTag(rawValue: string)! }
func fn(_ string: String) -> GatewayFunctionName { GatewayFunctionName(rawValue: string)! }

extension ByteBuffer {
    init(bytes: [UInt8]) {
        self.init()
        writeBytes(bytes)
    }

    var bytes: [UInt8] { Array(readableBytesView) }
}

/// Decodes `input` (all at once) into requests and errors.
func decodeRequests(_ input: String, decoder: GatewayRequestDecoder = GatewayRequestDecoder()) throws -> [Result<GatewayRequest, GatewayRequestError>] {
    var feed = DecoderFeed(decoder)
    try feed.feed(input)
    return feed.outputs
}

/// The single request in `line`, or the error.
func decodeOne(_ input: String) throws -> Result<GatewayRequest, GatewayRequestError> {
    let outputs = try decodeRequests(input)
    guard outputs.count == 1 else { throw TestFailure("expected one output for \(String(reflecting: input)), got \(outputs)") }
    return outputs[0]
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension Result where Success == GatewayRequest, Failure == GatewayRequestError {
    var request: GatewayRequest? { try? get() }
    var error: GatewayRequestError? {
        if case .failure(let error) = self { return error }
        return nil
    }
}

func encode(_ response: GatewayResponse) -> String {
    var buffer = ByteBuffer()
    GatewayResponseEncoder.write(response, into: &buffer)
    return String(buffer: buffer)
}
