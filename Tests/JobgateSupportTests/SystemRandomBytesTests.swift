import JobgateSupport
import Testing

/// Random bytes drawn at once: every byte of the buffer written, draws differ, sizes from none to more than one
/// `getrandom` call may return.
@Suite struct SystemRandomBytesTests {
    @Test func fillsEveryByte() {
        #expect(SystemRandomBytes.bytes(0).isEmpty)
        for count in [1, 16, 256, 257, 4_096, 1 << 20] {
            let first = SystemRandomBytes.bytes(count)
            let second = SystemRandomBytes.bytes(count)
            #expect(first.count == count && second.count == count)
            if count >= 16 { #expect(first != second, "two draws of \(count) bytes were equal") }
        }
        // Every byte is written: over 64 KiB every value turns up (a byte left at its initial value would skew this
        // only a little, but a buffer left unfilled past some point shows as a run of equal bytes).
        let bytes = SystemRandomBytes.bytes(1 << 16)
        #expect(Set(bytes).count == 256)
        let longestRun = bytes.indices.dropFirst().reduce(into: (longest: 1, current: 1)) { run, index in
            run.current = bytes[index] == bytes[index - 1] ? run.current + 1 : 1
            run.longest = max(run.longest, run.current)
        }.longest
        #expect(longestRun < 8, "a run of \(longestRun) equal bytes")
    }
}
