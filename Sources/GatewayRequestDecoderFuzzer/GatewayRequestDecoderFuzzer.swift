import GatewayProtocol
import NIOCore

/// libFuzzer's entry point (built and run by `Deploy/fuzz.sh`, from the corpus in `Tests/Corpus/GatewayRequestDecoder`):
/// the request decoder on arbitrary bytes, fed whole, in two halves and byte by byte. The outputs must not depend on
/// how the bytes arrive, and what stays buffered must stay within the limits; a violation traps, and libFuzzer saves
/// the input. (The seeded `GatewayRequestDecoderFuzzTests` in the suite check the same.)
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGatewayRequestDecoder(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: start, count: count))
    let whole = decode([bytes[...]])
    let halves = decode([bytes[..<(count / 2)], bytes[(count / 2)...]])
    let byteByByte = decode(bytes.indices.map { bytes[$0...$0] })
    precondition(halves.outputs == whole.outputs && halves.truncated == whole.truncated, "outputs depend on where the input is split")
    precondition(byteByByte.outputs == whole.outputs && byteByByte.truncated == whole.truncated, "outputs differ when fed byte by byte")
    return 0
}

/// The program's entry point: libFuzzer's driver, with the test above. (SwiftPM links an executable's `main` to
/// `<target>_main`, so libFuzzer's own `main` cannot be used.)
@_cdecl("GatewayRequestDecoderFuzzer_main")
public func runFuzzer(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return runLibFuzzerDriver(&argc, &argv, fuzzGatewayRequestDecoder)
}

/// `int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*test)(const uint8_t *, size_t))`, from libFuzzer.
@_silgen_name("LLVMFuzzerRunDriver")
private func runLibFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ test: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// Small limits, so that inputs reach them.
private let maximumLineLength = 96
private let maximumPayloadSize = 64

private func decode(_ chunks: [ArraySlice<UInt8>]) -> (outputs: [GatewayRequestDecoder.InboundOut], truncated: Bool) {
    var decoder = GatewayRequestDecoder(maximumLineLength: maximumLineLength, maximumPayloadSize: maximumPayloadSize)
    var buffer = ByteBuffer()
    var outputs: [GatewayRequestDecoder.InboundOut] = []
    for chunk in chunks {
        buffer.writeBytes(chunk)
        while buffer.readableBytes > 0, let output = decoder.decode(buffer: &buffer) { outputs.append(output) }
        buffer.discardReadBytes()
        precondition(buffer.readableBytes <= max(maximumLineLength, maximumPayloadSize) + 2, "\(buffer.readableBytes) bytes buffered")
    }
    do {
        while let output = try decoder.decodeLast(buffer: &buffer, seenEOF: true) { outputs.append(output) }
        return (outputs, false)
    } catch {
        return (outputs, true)
    }
}
