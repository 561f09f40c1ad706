import GatewayProtocol
import LocalServers
import NIOCore
import Testing

/// Seeded fuzzing of the request decoder from the corpus in `Tests/Corpus/GatewayRequestDecoder` (the libFuzzer
/// target of `Deploy/fuzz.sh` starts from the same files).
@Suite struct GatewayRequestDecoderFuzzTests {
    static let dictionary = [
        "SUBMIT ", "STATUS ", "WAIT ", "WATCH ", "PING", "@t ", "@", " ", "\n", "\r\n", "\r", "0", "1", "-1", "65",
        "99999999999999999999", "unique=", "priority=low", "wait=1", "\u{0}", "\u{0600}<", "\u{0600}>", "\u{FF}",
    ].map { Array($0.utf8) } + [[0xFF], [0xC3], [0x80]]

    /// Small limits, so that random inputs reach them.
    static func decoder() -> GatewayRequestDecoder { GatewayRequestDecoder(maximumLineLength: 96, maximumPayloadSize: 64) }

    /// Arbitrary bytes split at arbitrary points never crash the decoder and decode to the same requests and errors
    /// however they are split (one reply per output, whatever TCP does to the bytes); what stays buffered is
    /// bounded by the limits; and line breaks bring it back to the start of a line, so the next request is decoded.
    @Test func arbitraryBytesAtArbitrarySplits() throws {
        let corpus = try FuzzCorpus("GatewayRequestDecoder")
        var random = SplitMix64(seed: 0x6a6f_6267_6174_6511)
        let bound = max(Self.decoder().maximumLineLength, Self.decoder().maximumPayloadSize) + 2
        var (requests, errors) = (0, 0)
        var recovered = 0
        for round in 0..<1500 {
            let input = round < corpus.entries.count ? corpus.entries[round].bytes : corpus.mutated(dictionary: Self.dictionary, using: &random)
            let whole = try Self.decode(input, chunkSizes: [max(1, input.count)])
            let split = try Self.decode(input, chunkSizes: (0..<8).map { _ in Int.random(in: 1...40, using: &random) })
            #expect(split.outputs == whole.outputs && split.truncated == whole.truncated, "round \(round): \(input)")
            if round % 10 == 0 {
                let byteByByte = try Self.decode(input, chunkSizes: [1])
                #expect(byteByByte.outputs == whole.outputs && byteByByte.truncated == whole.truncated, "round \(round): \(input)")
            }
            #expect(whole.maximumBuffered <= bound && split.maximumBuffered <= bound, "round \(round): \(input)")
            requests += whole.outputs.filter { $0.request != nil }.count
            errors += whole.outputs.filter { $0.error != nil }.count

            // Line breaks end whatever line or (allowed) block was open: the decoder is back at the start of a line,
            // unless a block over the limit is still being skipped (then the end of the connection reports it).
            var feed = DecoderFeed(Self.decoder())
            try feed.feed(input + [UInt8](repeating: 10, count: 200))
            do {
                try feed.finish()
                recovered += 1
            } catch is GatewayProtocolError {}
            _ = feed.take()
            try feed.feed("@sentinel PING\n")
            #expect(feed.take() == [.success(GatewayRequest(tag: GatewayTag(rawValue: "sentinel"), .ping))], "round \(round): \(input)")
        }
        // The fuzzing reached both requests and errors, and most inputs left the decoder ready for the next request.
        #expect(requests > 1000 && errors > 1000 && recovered > 1000, "\(requests) requests, \(errors) errors, \(recovered) recovered")
    }

    struct Decoded {
        var outputs: [GatewayRequestDecoder.InboundOut]
        var truncated: Bool
        var maximumBuffered: Int
    }

    /// Feeds `input` in chunks of `chunkSizes` (cycled), then ends the connection.
    static func decode(_ input: [UInt8], chunkSizes: [Int]) throws -> Decoded {
        var feed = DecoderFeed(decoder())
        try feed.feed(input, inChunksOf: chunkSizes)
        var truncated = false
        do {
            try feed.finish()
        } catch is GatewayProtocolError {
            truncated = true
        }
        return Decoded(outputs: feed.outputs, truncated: truncated, maximumBuffered: feed.maximumBuffered)
    }
}
