import Foundation
import LocalServers

/// A response read off a raw loopback socket (the server closes after each one).
struct HTTPTestResponse {
    var status: Int
    var headers: [String: String]
    var body: String
}

/// One HTTP/1.1 request on a fresh connection; reads until the server closes.
func httpRequest(port: Int, _ path: String, method: String = "GET") async throws -> HTTPTestResponse {
    try await onOwnThread {
        let socket = try LoopbackSocket(port: port, timeoutMs: 10_000)
        try socket.send(Array("\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8))
        let bytes = try socket.receive { _ in false }
        return try parseHTTPResponse(bytes)
    }
}

/// Runs blocking socket code on a thread of its own: blocking the few threads of the Swift concurrency pool
/// would starve the gateway under test, which runs in this process.
func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

struct HTTPTestFailure: Error, CustomStringConvertible {
    var description: String
}

func parseHTTPResponse(_ bytes: [UInt8]) throws -> HTTPTestResponse {
    let text = String(decoding: bytes, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { throw HTTPTestFailure(description: "no complete head in \(text.prefix(200))") }
    let lines = text[..<split.lowerBound].components(separatedBy: "\r\n")
    let statusWords = lines[0].split(separator: " ")
    guard statusWords.count >= 2, statusWords[0].hasPrefix("HTTP/1."), let status = Int(statusWords[1]) else {
        throw HTTPTestFailure(description: "bad status line \(lines[0])")
    }
    var headers: [String: String] = [:]
    for line in lines.dropFirst() {
        guard let colon = line.firstIndex(of: ":") else { throw HTTPTestFailure(description: "bad header \(line)") }
        headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    var body = String(text[split.upperBound...])
    if headers["transfer-encoding"] == "chunked" { body = try dechunked(body) }
    return HTTPTestResponse(status: status, headers: headers, body: body)
}

/// The body of a chunked response: `<hex size>\r\n<bytes>\r\n` … `0\r\n\r\n`.
private func dechunked(_ text: String) throws -> String {
    var rest = Array(text.utf8)[...]
    var body: [UInt8] = []
    while true {
        guard let lineEnd = rest.firstIndex(of: 13), rest[rest.index(after: lineEnd)] == 10,
            let size = Int(String(decoding: rest[..<lineEnd], as: UTF8.self), radix: 16)
        else { throw HTTPTestFailure(description: "bad chunk") }
        rest = rest[(lineEnd + 2)...]
        if size == 0 { return String(decoding: body, as: UTF8.self) }
        guard rest.count >= size + 2 else { throw HTTPTestFailure(description: "short chunk") }
        body += rest.prefix(size)
        rest = rest.dropFirst(size + 2)
    }
}

/// The Prometheus text exposition format (0.0.4), parsed strictly: a test fails on anything a Prometheus server
/// would reject.
struct PrometheusExposition {
    struct Sample: Hashable {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    var types: [String: String] = [:]
    var samples: [Sample] = []

    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }

    init(parsing text: String) throws {
        func fail(_ why: String, _ line: Substring) -> HTTPTestFailure { HTTPTestFailure(description: "\(why): \(line)") }
        let metricName = /[a-zA-Z_:][a-zA-Z0-9_:]*/
        let labelName = /[a-zA-Z_][a-zA-Z0-9_]*/
        guard text.hasSuffix("\n") else { throw HTTPTestFailure(description: "the exposition must end with a line feed") }
        var familyOrder: [String] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            if line.isEmpty { continue }
            if line.hasPrefix("#") {
                let words = line.split(separator: " ", maxSplits: 3)
                guard words.count >= 3, words[0] == "#" else { continue }  // a plain comment
                guard let name = try metricName.wholeMatch(in: words[2]) else { throw fail("bad metric name", line) }
                if words[1] == "TYPE" {
                    guard words.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(words[3]) else {
                        throw fail("bad TYPE", line)
                    }
                    guard types[String(name.output)] == nil else { throw fail("second TYPE", line) }
                    guard !samples.contains(where: { Self.family(of: $0.name, types) == String(name.output) }) else {
                        throw fail("TYPE after samples", line)
                    }
                    types[String(name.output)] = String(words[3])
                }
                continue
            }
            // name{label="value",…} value [timestamp]
            var rest = line[...]
            guard let name = rest.prefixMatch(of: metricName) else { throw fail("bad sample name", line) }
            rest = rest[name.range.upperBound...]
            var labels: [String: String] = [:]
            if rest.first == "{" {
                rest = rest.dropFirst()
                while rest.first != "}" {
                    guard let label = rest.prefixMatch(of: labelName) else { throw fail("bad label name", line) }
                    rest = rest[label.range.upperBound...]
                    guard rest.hasPrefix("=\"") else { throw fail("label without =\"", line) }
                    rest = rest.dropFirst(2)
                    var value = ""
                    while true {
                        guard let character = rest.popFirst() else { throw fail("unterminated label value", line) }
                        if character == "\"" { break }
                        if character == "\\" {
                            switch rest.popFirst() {
                            case "\\": value.append("\\")
                            case "\"": value.append("\"")
                            case "n": value.append("\n")
                            default: throw fail("bad escape", line)
                            }
                        } else {
                            value.append(character)
                        }
                    }
                    guard labels.updateValue(value, forKey: String(label.output)) == nil else { throw fail("repeated label", line) }
                    if rest.first == "," { rest = rest.dropFirst() } else if rest.first != "}" { throw fail("bad label list", line) }
                }
                rest = rest.dropFirst()
            }
            let fields = rest.split(separator: " ")
            guard rest.first == " ", (1...2).contains(fields.count) else { throw fail("bad value field", line) }
            let valueText = String(fields[0])
            guard let value = ["+Inf": Double.infinity, "-Inf": -Double.infinity, "NaN": Double.nan][valueText] ?? Double(valueText) else {
                throw fail("bad value", line)
            }
            let family = Self.family(of: String(name.output), types)
            if familyOrder.last != family {
                guard !familyOrder.contains(family) else { throw fail("samples of a family must be together", line) }
                familyOrder.append(family)
            }
            let sample = Sample(name: String(name.output), labels: labels, value: value)
            guard !samples.contains(where: { $0.name == sample.name && $0.labels == sample.labels }) else { throw fail("duplicate sample", line) }
            samples.append(sample)
        }
        // Counters never go below zero; histogram buckets are cumulative and end in +Inf = _count.
        for (family, type) in types {
            if type == "counter" {
                for sample in samples where sample.name == family && !(sample.value >= 0) {
                    throw HTTPTestFailure(description: "negative counter \(family)")
                }
            }
            if type == "histogram" {
                let buckets = samples.filter { $0.name == family + "_bucket" }
                guard buckets.last?.labels["le"] == "+Inf", zip(buckets, buckets.dropFirst()).allSatisfy({ $0.value <= $1.value }),
                    buckets.last?.value == value(family + "_count"), value(family + "_sum") != nil
                else { throw HTTPTestFailure(description: "inconsistent histogram \(family)") }
            }
        }
    }

    private static func family(of name: String, _ types: [String: String]) -> String {
        for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) {
            let base = String(name.dropLast(suffix.count))
            if types[base] == "histogram" || types[base] == "summary" { return base }
        }
        return name
    }
}
