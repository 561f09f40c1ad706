/// FastLZ decompression (ariya/FastLZ 0.1, the copy bundled in php-memcached), levels 1 and 2.
///
/// The level is the top three bits of the first byte (0 → level 1, 1 → level 2). Each instruction is either a
/// literal run (`ctrl < 32`: copy `ctrl + 1` bytes) or a back-reference (`len = ctrl >> 5`, distance high bits
/// `ctrl & 31`). Every read and copy is bounds-checked: corrupt input is a typed error, never a crash.
enum FastLZ {
    /// Level 2's `MAX_DISTANCE`: a 16-bit far distance is counted from here.
    private static let level2FarBase = 8191

    static func decompress(_ input: [UInt8], expectedSize: Int) throws(MemcacheError) -> [UInt8] {
        guard let first = input.first else { throw corrupt("empty input") }
        let level = Int(first >> 5) + 1
        guard level == 1 || level == 2 else { throw corrupt("unknown level \(level)") }

        var output: [UInt8] = []
        output.reserveCapacity(expectedSize)
        var ip = 1
        var ctrl = Int(first & 31)

        func next() throws(MemcacheError) -> Int {
            guard ip < input.count else { throw corrupt("input ends inside an instruction") }
            defer { ip += 1 }
            return Int(input[ip])
        }

        while true {
            if ctrl >= 32 {
                var length = (ctrl >> 5) - 1
                let high = (ctrl & 31) << 8
                var distance: Int
                if level == 1 {
                    if length == 6 { length += try next() }
                    distance = high + (try next()) + 1
                } else {
                    if length == 6 {
                        var code: Int
                        repeat {
                            code = try next()
                            length += code
                        } while code == 255
                    }
                    let low = try next()
                    distance = high + low + 1
                    if low == 255 && high == 31 << 8 {
                        let far = (try next()) << 8 | (try next())
                        distance = far + level2FarBase + 1
                    }
                }
                length += 3
                guard distance <= output.count else { throw corrupt("back-reference before the start") }
                guard output.count + length <= expectedSize else { throw corrupt("output longer than \(expectedSize) bytes") }
                // Byte by byte: a match may overlap the bytes it produces (a run).
                let start = output.count - distance
                for offset in 0..<length { output.append(output[start + offset]) }
            } else {
                let count = ctrl + 1
                guard ip + count <= input.count else { throw corrupt("literal run past the end of input") }
                guard output.count + count <= expectedSize else { throw corrupt("output longer than \(expectedSize) bytes") }
                output.append(contentsOf: input[ip..<(ip + count)])
                ip += count
            }
            guard ip < input.count else { break }
            ctrl = Int(input[ip])
            ip += 1
        }
        guard output.count == expectedSize else {
            throw corrupt("decompressed \(output.count) bytes, expected \(expectedSize)")
        }
        return output
    }

    private static func corrupt(_ what: String) -> MemcacheError {
        MemcacheError(.decompressionFailed, "FastLZ: \(what)")
    }
}
