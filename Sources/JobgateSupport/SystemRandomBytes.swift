#if canImport(Glibc)
import Glibc
#endif

/// Random bytes from the kernel in as few system calls as the kernel allows: `getrandom(2)` fills a whole buffer in one
/// call (up to 32 MiB), where the standard library's generator (also behind swift-crypto's `SymmetricKey(size:)` on
/// Linux) makes one call per 8 bytes. Minting a batch of job ids draws its bytes at once.
public enum SystemRandomBytes {
    /// Fills `buffer`. Where glibc lacks `getrandom` (before 2.25) the standard library's generator fills it instead.
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress, !buffer.isEmpty else { return }
        var filled = 0
        if let kernelRandom {
            while filled < buffer.count {
                let count = kernelRandom(base + filled, buffer.count - filled, 0)
                if count > 0 {
                    filled += count
                } else if !(count < 0 && errno == EINTR) {
                    break  // ENOSYS before Linux 3.17, or a filter refusing it: the fallback below fills the rest
                }
            }
        }
        var generator = SystemRandomNumberGenerator()
        for index in filled..<buffer.count { buffer[index] = generator.next() }
    }

    /// `count` random bytes.
    public static func bytes(_ count: Int) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: count) { storage, initialized in
            fill(UnsafeMutableRawBufferPointer(storage))
            initialized = count
        }
    }

    /// glibc's `getrandom`, looked up at run time: Swift's Glibc module does not import `<sys/random.h>`.
    private static let kernelRandom: (@convention(c) (UnsafeMutableRawPointer, Int, UInt32) -> Int)? =
        dlsym(UnsafeMutableRawPointer(bitPattern: 0), "getrandom").map {
            unsafeBitCast($0, to: (@convention(c) (UnsafeMutableRawPointer, Int, UInt32) -> Int).self)
        }
}
