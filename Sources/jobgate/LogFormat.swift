import ArgumentParser
import Gateway
import Logging

/// `--log-format`: how `jobgate serve` and `jobgate worker` write their log lines to standard error.
enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    /// swift-log's plain lines, for people.
    case text
    /// One JSON object per line (time, level, label, message, metadata as fields), for log shippers.
    case json

    /// The process's logging: called once, by the command, never by a library. The level is the process's
    /// (`ProcessLogLevel`), so that a reload changes it for every logger.
    func bootstrap() {
        switch self {
        case .text:
            LoggingSystem.bootstrap { label in ProcessLevelLogHandler(StreamLogHandler.standardError(label: label)) }
        case .json:
            LoggingSystem.bootstrap { label in ProcessLevelLogHandler(JSONLogHandler.standardError(label: label)) }
        }
    }
}
