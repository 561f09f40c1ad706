import Foundation
import LocalServers
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
    static func run(_ code: String, ini: [String: String] = [:]) async throws -> String {
        guard let executable else {
            throw Failure(description: "php is not installed: apt-get install php-cli php-memcache php-memcached")
        }
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("memcache-test-\(UUID().uuidString)")
        let script = base.appendingPathExtension("php")
        try Data("<?php\n\(code)\n".utf8).write(to: script)
        defer { try? FileManager.default.removeItem(at: script) }

        let ini = ["display_errors": "stderr", "error_reporting": "E_ALL & ~E_DEPRECATED"].merging(ini) { $1 }
        let arguments = ini.sorted { $0.key < $1.key }.flatMap { ["-d", "\($0.key)=\($0.value)"] } + [script.path]
        let run = try await runProgram(executable, arguments, timeout: .seconds(60))
        guard run.status == 0, run.errors.isEmpty else {
            throw Failure(description: "php exited with \(run.status)\nstdout: \(run.outputText)\nstderr: \(run.errors)")
        }
        return run.outputText
    }

    /// PHP code for a string literal holding `text` (any bytes).
    static func literal(_ text: String) -> String {
        "hex2bin('\(Array(text.utf8).map { String(format: "%02x", $0) }.joined())')"
    }
}
