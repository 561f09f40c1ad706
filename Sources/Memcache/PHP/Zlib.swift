private import CZlib

enum Zlib {
    /// Inflates zlib-format data (`compress()` output) without knowing its size up front, stopping with an error
    /// as soon as the output would pass `maximumSize`.
    static func inflate(_ input: [UInt8], maximumSize: Int) throws(MemcacheError) -> [UInt8] {
        var stream = z_stream()
        guard czlib_inflate_init(&stream) == Z_OK else {
            throw MemcacheError(.decompressionFailed, "zlib inflateInit failed")
        }
        defer { inflateEnd(&stream) }

        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        var input = input
        let result: Result<Void, MemcacheError> = input.withUnsafeMutableBufferPointer { inputBuffer in
            stream.next_in = inputBuffer.baseAddress
            stream.avail_in = uInt(inputBuffer.count)
            while true {
                let status = chunk.withUnsafeMutableBufferPointer { chunkBuffer in
                    stream.next_out = chunkBuffer.baseAddress
                    stream.avail_out = uInt(chunkBuffer.count)
                    return CZlib.inflate(&stream, Z_NO_FLUSH)
                }
                let produced = chunk.count - Int(stream.avail_out)
                guard output.count + produced <= maximumSize else {
                    return .failure(MemcacheError(.decompressionFailed, "zlib value inflates beyond \(maximumSize) bytes"))
                }
                output.append(contentsOf: chunk[..<produced])
                switch status {
                case Z_STREAM_END: return .success(())
                case Z_OK: continue
                // Z_BUF_ERROR here means the input ended before the stream did.
                default: return .failure(MemcacheError(.decompressionFailed, "zlib inflate failed (status \(status))"))
                }
            }
        }
        try result.get()
        return output
    }

    /// zlib-format compression (what pecl memcache's and php-memcached's `compress()` calls produce).
    static func compress(_ input: [UInt8]) -> [UInt8] {
        var size = compressBound(uLong(input.count))
        var output = [UInt8](repeating: 0, count: Int(size))
        let status = output.withUnsafeMutableBufferPointer { out in
            input.withUnsafeBufferPointer { CZlib.compress(out.baseAddress, &size, $0.baseAddress, uLong($0.count)) }
        }
        precondition(status == Z_OK, "compress into compressBound bytes cannot fail")
        return Array(output.prefix(Int(size)))
    }
}
