import Foundation

/// A file in the temporary folder (a config file, say), removed when the test is done with it.
public final class TemporaryFile {
    public let path: String

    public init(_ text: String) throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-\(UUID().uuidString).conf").path
        try write(text)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    public func write(_ text: String) throws {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }
}
