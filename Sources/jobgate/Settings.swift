import ArgumentParser
import Foundation
import Gearman

/// Option values from the command line, then the environment (`JOBGATE_…`), then a config file: one mechanism for
/// `jobgate serve` and `jobgate worker`.
///
/// A command asks for every name it knows (`value`, `int`, `parse`), each time; `checkAllKnown()` then refuses any file key or
/// `JOBGATE_` variable nobody asked for, naming the nearest known name, as a typo (`secret` for `secrets`) must not
/// start a gateway without authentication.
final class Settings {
    let path: String?
    private let file: [String: (value: String, line: Int)]
    private let environment: [String: String]
    private var known: Set<String> = []

    init(file path: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) {
        self.path = path
        self.environment = environment.filter { $0.key.hasPrefix(Self.environmentPrefix) }
        guard let path else {
            self.file = [:]
            return
        }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError("cannot read config file \(path): \(error.localizedDescription)")
        }
        var values: [String: (String, Int)] = [:]
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0].trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty else { continue }
            let parts = line.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { throw ConfigurationError("\(path):\(index + 1): expected `name = value`") }
            values[parts[0].trimmingCharacters(in: .whitespaces)] = (parts[1].trimmingCharacters(in: .whitespaces), index + 1)
        }
        self.file = values
    }

    static let environmentPrefix = "JOBGATE_"

    static func environmentName(_ name: String) -> String {
        environmentPrefix + name.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    func value(_ name: String, _ commandLine: String?) -> String? {
        known.insert(name)
        return commandLine ?? environment[Self.environmentName(name)] ?? file[name]?.value
    }

    /// Where the value of `name` came from, for messages: `--name`, `JOBGATE_NAME` or `file:line`.
    func source(_ name: String, commandLine: Bool) -> String {
        if commandLine { return "--\(name)" }
        if environment[Self.environmentName(name)] != nil { return Self.environmentName(name) }
        if let path, let line = file[name]?.line { return "\(name) (\(path):\(line))" }
        return name
    }

    func int(_ name: String, _ commandLine: Int?) throws(ConfigurationError) -> Int? {
        guard let text = value(name, commandLine.map(String.init)) else { return nil }
        guard let number = Int(text), number >= 0 else {
            throw ConfigurationError("\(source(name, commandLine: commandLine != nil)): not a non-negative number: \(text)")
        }
        return number
    }

    /// A whole number of at least 1: a limit or a timeout of 0 would refuse everything (or trip a decoder's
    /// precondition), never what was meant.
    func positive(_ name: String, _ commandLine: Int?) throws(ConfigurationError) -> Int? {
        guard let number = try int(name, commandLine) else { return nil }
        guard number >= 1 else { throw ConfigurationError("\(source(name, commandLine: commandLine != nil)) must be at least 1, got \(number)") }
        return number
    }

    /// A value of an option type: the command line has parsed it already, the environment and the file are parsed here.
    func parse<T: ExpressibleByArgument>(_ name: String, _ commandLine: T?, expected: String) throws(ConfigurationError) -> T? {
        if let commandLine {
            known.insert(name)
            return commandLine
        }
        guard let text = value(name, nil) else { return nil }
        guard let parsed = T(argument: text) else { throw ConfigurationError("\(source(name, commandLine: false)): expected \(expected), got \(text)") }
        return parsed
    }

    /// Refuses a file key or `JOBGATE_` variable that the command did not ask for.
    func checkAllKnown() throws(ConfigurationError) {
        for (name, entry) in file.sorted(by: { $0.value.line < $1.value.line }) where !known.contains(name) {
            throw ConfigurationError("\(path ?? "config file"):\(entry.line): unknown setting `\(name)`\(suggestion(for: name, among: known))")
        }
        let environmentNames = Dictionary(uniqueKeysWithValues: known.map { (Self.environmentName($0), $0) })
        for name in environment.keys.sorted() where environmentNames[name] == nil {
            // Another jobgate program's variable is no mistake, unless it is one letter off an unset one of this
            // command's: `JOBGATE_SECRET` (the client's) with no `JOBGATE_SECRETS` would start a gateway without auth.
            let nearMiss = environmentNames.keys.contains { environment[$0] == nil && editDistance(name, $0) <= 1 }
            guard nearMiss || !Self.otherProgramsVariables.contains(name) else { continue }
            throw ConfigurationError("unknown environment variable \(name)\(suggestion(for: name, among: Set(environmentNames.keys)))")
        }
    }

    /// Variables that other jobgate programs read or set: the command-line client's, those the worker gives each job's
    /// program, the test harness's and the build's. One shell may well hold them beside a command's own.
    static let otherProgramsVariables: Set = [
        "JOBGATE_GATEWAY", "JOBGATE_SECRET", "JOBGATE_USER", "JOBGATE_FUNCTION", "JOBGATE_HANDLE", "JOBGATE_UNIQUE", "JOBGATE_JOB_ID",
        "JOBGATE_PROGRESS_FD", "JOBGATE_TEST_PID_DIR", "JOBGATE_DEMO_DIR", "JOBGATE_FUZZ", "JOBGATE_CLUSTER_DIR",
        "JOBGATE_TLS", "JOBGATE_TLS_CA", "JOBGATE_CLIENT_CERT", "JOBGATE_CLIENT_KEY",
    ]

    func hostPort(_ text: String, of name: String, commandLine: Bool) throws(ConfigurationError) -> (String, Int) {
        guard let address = GearmanServerAddress(text), text.contains(":") else {
            throw ConfigurationError("\(source(name, commandLine: commandLine)): expected host:port, got \(text)")
        }
        return (address.host, address.port)
    }

    /// `name = value` lines of the effective configuration, as `--check-config` prints them; secrets are masked.
    static func describe(_ entries: [(name: String, value: String)], secrets: Set<String>) -> String {
        entries.map { entry in
            "\(entry.name) = \(secrets.contains(entry.name) && !entry.value.isEmpty && entry.value != "none" ? "********" : entry.value)"
        }.joined(separator: "\n")
    }
}

private func suggestion(for name: String, among candidates: Set<String>) -> String {
    guard let nearest = candidates.min(by: { (editDistance(name, $0), $0) < (editDistance(name, $1), $1) }) else { return "" }
    return "; did you mean `\(nearest)`?"
}

/// Levenshtein distance: the fewest single-character insertions, deletions and substitutions from `a` to `b`.
func editDistance(_ a: String, _ b: String) -> Int {
    let b = Array(b)
    var previous = Array(0...b.count)
    for (i, x) in a.enumerated() {
        var current = [i + 1]
        for (j, y) in b.enumerated() {
            current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1)))
        }
        previous = current
    }
    return previous[b.count]
}

/// A configuration that cannot run: the message names the setting and where it came from. The commands exit 78
/// (`EX_CONFIG` of sysexits.h) with it; mistakes in the command line's syntax exit 64 (`EX_USAGE`).
struct ConfigurationError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }

    static let exitCode = ExitCode(78)
}

/// Runs `body`, turning any configuration mistake into its message on stderr and exit code 78.
func checkingConfiguration<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as ConfigurationError {
        FileHandle.standardError.write(Data("jobgate: configuration: \(error.description)\n".utf8))
        throw ConfigurationError.exitCode
    } catch let error as ValidationError {
        FileHandle.standardError.write(Data("jobgate: configuration: \(error.message)\n".utf8))
        throw ConfigurationError.exitCode
    }
}
