import Benchmarks
import Testing

/// The counting proxy's scanner: request packets counted by type wherever the stream is cut.
@Suite struct GearmanRequestScannerTests {
    /// `\0REQ`, type, body size (big-endian), body.
    func packet(_ type: UInt32, _ body: String) -> [UInt8] {
        func word(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) } }
        return [0, 0x52, 0x45, 0x51] + word(type) + word(UInt32(body.utf8.count)) + Array(body.utf8)
    }

    /// GET_STATUS (15) ×2, SUBMIT_JOB_BG (18) with a body that looks like a header, ECHO_REQ (16) with no body, an
    /// admin text line in between.
    var stream: [UInt8] {
        packet(15, "H:host:1") + packet(18, "fn\0unique\0\0REQ\0\0\0\u{0F}\0\0\0\0") + Array("status\n".utf8) + packet(16, "")
            + packet(15, "H:host:2")
    }

    let expected: [UInt32: Int] = [15: 2, 18: 1, 16: 1]

    @Test func wholeStream() {
        var scanner = GearmanRequestScanner()
        #expect(scanner.scan(stream) == expected)
    }

    @Test func everyCutInTwo() {
        for cut in 0...stream.count {
            var scanner = GearmanRequestScanner()
            var total: [UInt32: Int] = [:]
            for part in [stream[..<cut], stream[cut...]] {
                total.merge(scanner.scan(part), uniquingKeysWith: +)
            }
            #expect(total == expected, "cut at \(cut)")
        }
    }

    @Test func byteByByte() {
        var scanner = GearmanRequestScanner()
        var total: [UInt32: Int] = [:]
        for byte in stream { total.merge(scanner.scan([byte]), uniquingKeysWith: +) }
        #expect(total == expected)
    }

    @Test func headerCountsBeforeItsBodyArrives() {
        var scanner = GearmanRequestScanner()
        let get = packet(15, "H:host:1")
        #expect(scanner.scan(get.prefix(12)) == [15: 1])
        #expect(scanner.scan(get.dropFirst(12)) == [:])
        #expect(scanner.scan(get) == [15: 1])
    }
}
