import Foundation
import Testing

/// Runs real `php` (php-cli with pecl memcache and php-memcached) so interop tests use the extensions themselves.
enum PHPRunner {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    static let executable = ["/usr/bin/php", "/usr/local/bin/php"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Runs `code` (without `<?php`) with `ini` settings; returns stdout. A non-zero exit, output on stderr (any
    /// warning or notice; deprecations are off because pecl memcache 4 triggers one on PHP 8.2) or a run longer than
    /// 60 s is a failure carrying what PHP printed.
    static func run(_ code: String, ini: [String: String] = [:]) throws -> String {
        guard let executable else {
            throw Failure(description: "php is not installed: apt-get install php-cli php-memcache php-memcached")
        }
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("memcache-test-\(UUID().uuidString)")
        let script = base.appendingPathExtension("php")
        let stdoutFile = base.appendingPathExtension("out")
        let stderrFile = base.appendingPathExtension("err")
        try Data("<?php\n\(code)\n".utf8).write(to: script)
        // Files rather than pipes: nothing can block on a full pipe.
        _ = FileManager.default.createFile(atPath: stdoutFile.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrFile.path, contents: nil)
        defer {
            for file in [script, stdoutFile, stderrFile] { try? FileManager.default.removeItem(at: file) }
        }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        let ini = ["display_errors": "stderr", "error_reporting": "E_ALL & ~E_DEPRECATED"].merging(ini) { $1 }
        process.arguments = ini.sorted { $0.key < $1.key }.flatMap { ["-d", "\($0.key)=\($0.value)"] } + [script.path]
        process.standardOutput = try FileHandle(forWritingTo: stdoutFile)
        process.standardError = try FileHandle(forWritingTo: stderrFile)
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while process.isRunning && Date() < deadline { usleep(5_000) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
            throw Failure(description: "php did not finish within 60 s")
        }
        process.waitUntilExit()
        let text = String(decoding: try Data(contentsOf: stdoutFile), as: UTF8.self)
        let errorText = String(decoding: try Data(contentsOf: stderrFile), as: UTF8.self)
        guard process.terminationStatus == 0, errorText.isEmpty else {
            throw Failure(description: "php exited with \(process.terminationStatus)\nstdout: \(text)\nstderr: \(errorText)")
        }
        return text
    }

    /// PHP code for a string literal holding `text` (any bytes).
    static func literal(_ text: String) -> String {
        "hex2bin('\(Array(text.utf8).map { String(format: "%02x", $0) }.joined())')"
    }
}
