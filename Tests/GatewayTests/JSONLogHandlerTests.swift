import Foundation
import Gateway
import Logging
import Synchronization
import Testing

/// `--log-format json`: one JSON object per line that a log shipper can parse.
@Suite struct JSONLogHandlerTests {
    private final class Lines: Sendable {
        let lines = Mutex<[String]>([])
    }

    private func logger(_ lines: Lines, level: Logger.Level = .info) -> Logger {
        Logger(label: "jobgate.gateway") { label in
            var handler = JSONLogHandler(label: label) { line in lines.lines.withLock { $0.append(line) } }
            handler.logLevel = level
            return handler
        }
    }

    private func object(_ line: String) throws -> [String: Any] {
        #expect(line.hasSuffix("}\n") && line.dropLast().firstIndex(of: "\n") == nil, "one line per entry")
        return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    /// Time, level, label and message, and the metadata as fields of their own.
    @Test func fieldsAndMetadata() throws {
        let lines = Lines()
        var logger = logger(lines)
        logger[metadataKey: "gateway.address"] = "127.0.0.1:4740"
        logger.notice("Redis reachable again", metadata: ["redis.outage_ms": "1520", "redis.server": "127.0.0.1:6379"])
        let entry = try object(try #require(lines.lines.withLock { $0.first }))
        #expect(entry["level"] as? String == "notice")
        #expect(entry["label"] as? String == "jobgate.gateway")
        #expect(entry["message"] as? String == "Redis reachable again")
        #expect(entry["redis.outage_ms"] as? String == "1520")
        #expect(entry["redis.server"] as? String == "127.0.0.1:6379")
        #expect(entry["gateway.address"] as? String == "127.0.0.1:4740")
        let time = try #require(entry["time"] as? String)
        #expect(time.wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/) != nil, "\(time)")
        let parsed = try #require(ISO8601DateFormatter.withFractionalSeconds.date(from: time))
        #expect(abs(parsed.timeIntervalSinceNow) < 60)
    }

    /// Quotes, backslashes, line breaks and control characters are escaped, so an entry stays one line of JSON;
    /// nested metadata become arrays and objects; the four fixed fields win a name clash.
    @Test func escapingAndNesting() throws {
        let lines = Lines()
        logger(lines).warning(
            "a \"quoted\"\nmessage\\ with \u{1} and é",
            metadata: ["list": ["a", "b\n"], "map": ["k": "v"], "level": "not the level"]
        )
        let entry = try object(try #require(lines.lines.withLock { $0.first }))
        #expect(entry["message"] as? String == "a \"quoted\"\nmessage\\ with \u{1} and é")
        #expect(entry["level"] as? String == "warning")
        #expect(entry["list"] as? [String] == ["a", "b\n"])
        #expect(entry["map"] as? [String: String] == ["k": "v"])
    }

    /// Below the handler's level nothing is written.
    @Test func level() {
        let lines = Lines()
        let logger = logger(lines, level: .warning)
        logger.info("not written")
        logger.warning("written")
        #expect(lines.lines.withLock { $0.count } == 1)
    }
}

extension ISO8601DateFormatter {
    static var withFractionalSeconds: ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }
}
