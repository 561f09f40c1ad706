import ArgumentParser
import Gateway
import Logging

/// `--log-format`: how `jobgate serve` and `jobgate worker` write their log lines to standard error.
enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    /// swift-log's plain lines, for people.
    case text
    /// One JSON object per line (time, level, label, message, metadata as fields), for log shippers.
    case json

    init(option value: String) throws {
        guard let format = LogFormat(rawValue: value) else {
            throw ValidationError("--log-format must be text or json, not \(value)")
        }
        self = format
    }

    /// The process's logging: called once, by the command, never by a library.
    func bootstrap(level: Logger.Level) {
        switch self {
        case .text:
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
        case .json:
            LoggingSystem.bootstrap { label in
                var handler = JSONLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
        }
    }
}
