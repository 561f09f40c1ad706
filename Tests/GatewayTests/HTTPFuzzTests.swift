import Foundation
import Gateway
import GatewayProtocol
import LocalServers
import NIOCore
import Testing

/// Seeded fuzzing of the gateway's HTTP port from the corpus in `Tests/Corpus/GatewayHTTPServer`: `{id}` in an
/// entry stands for a finished job's id, `{noncanonical}` for another spelling of it.
@Suite("HTTP fuzzing", .timeLimit(.minutes(3)))
struct HTTPFuzzTests {
    static let dictionary = [
        "GET ", "HEAD ", "POST ", " HTTP/1.1", " HTTP/1.0", "\r\n", "\r\n\r\n", "\n", "/jobs/", "/events", "/metrics", "{id}",
        "Host: x\r\n", "Content-Length: 3\r\n", "Transfer-Encoding: chunked\r\n", "Connection: keep-alive\r\n", "Expect: 100-continue\r\n",
        ":", " ", "\u{0}", "%", "%00", "?", "#", "..", "//", "\u{0600}<", "\u{0600}>",
    ].map { Array($0.utf8) } + [[0xFF], [0xC3]]

    /// Arbitrary bytes at the HTTP port, one connection each: never a crash, each answered with well-formed HTTP
    /// responses and closed, or just closed; afterwards the port serves as before.
    @Test func arbitraryBytesGetWellFormedAnswersOrAClose() async throws {
        let corpus = try FuzzCorpus("GatewayHTTPServer")
        try await withGatewayStack({ $0.httpPort = 0 }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            try await withTestWorker(stack, ["echo": { payload, _ in payload }]) {
                let client = try await stack.connect()
                let id = try #require(try await client.request(submitLine("echo", "fuzz"))?.createdID)
                #expect(try await client.request("WAIT \(id) 10000\n") == .reply(.done(id, result: ByteBuffer(string: "fuzz"))))
                let noncanonical = JobIDTests.otherSpellings(of: id.rawValue)[0]
                var random = SplitMix64(seed: 0x6874_7470_6675_7a7a)
                var statuses: [Int: Int] = [:]
                for round in 0..<400 {
                    let input = round < corpus.entries.count ? corpus.entries[round].bytes : corpus.mutated(dictionary: Self.dictionary, using: &random)
                    let bytes = Self.replacing(["{id}": id.rawValue, "{noncanonical}": noncanonical], in: input)
                    let answer = try await onOwnThread { try Self.exchange(port: http, bytes) }
                    do {
                        for status in try Self.responses(in: answer, headRequested: bytes.firstRange(of: Array("HEAD".utf8)) != nil) { statuses[status, default: 0] += 1 }
                    } catch {
                        Issue.record("round \(round): \(error) for \(String(decoding: bytes, as: UTF8.self).debugDescription)")
                    }
                }
                // The fuzzing reached pages, refusals and parse errors alike.
                #expect([200, 400, 404].allSatisfy { statuses[$0, default: 0] > 5 }, "\(statuses)")
                #expect(try await httpRequest(port: http, "/jobs/\(id)").status == 200)
                #expect(try await httpRequest(port: http, "/metrics").status == 200)
            }
        }
    }

    /// Sends `bytes`, and when no answer comes soon ends the input; reads until the server closes.
    static func exchange(port: Int, _ bytes: [UInt8]) throws -> [UInt8] {
        // Half a second is long enough for an answer on a busy machine; few inputs leave a request unfinished.
        let socket = try LoopbackSocket(port: port, timeoutMs: 500)
        try? socket.send(bytes)  // the server may close before reading everything
        var received: [UInt8] = []
        var waits = 0
        while true {
            do {
                let chunk = try socket.receive()
                if chunk.isEmpty { return received }
                received += chunk
            } catch {
                // Nothing yet: the request may be incomplete. Every request must end within the request timeout.
                socket.finishSending()
                waits += 1
                guard waits < 30 else { throw HTTPTestFailure(description: "neither answered nor closed in 15 s") }
            }
        }
    }

    /// The statuses of the responses in `bytes` (none when the server just closed); throws on anything malformed.
    /// The answer to a `HEAD` has a length but no body.
    static func responses(in bytes: [UInt8], headRequested: Bool) throws -> [Int] {
        var rest = bytes[...]
        var statuses: [Int] = []
        while !rest.isEmpty {
            guard let headEnd = rest.firstRange(of: Array("\r\n\r\n".utf8)) else { throw HTTPTestFailure(description: "incomplete head") }
            let lines = String(decoding: rest[..<headEnd.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
            guard let status = try /HTTP\/1\.[01] ([1-5][0-9][0-9]) .*/.wholeMatch(in: lines[0]).flatMap({ Int($0.output.1) }) else {
                throw HTTPTestFailure(description: "bad status line \(lines[0].debugDescription)")
            }
            var headers: [String: String] = [:]
            for line in lines.dropFirst() {
                guard let colon = line.firstIndex(of: ":") else { throw HTTPTestFailure(description: "bad header \(line.debugDescription)") }
                headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            statuses.append(status)
            rest = rest[headEnd.upperBound...]
            if let length = headers["content-length"] {
                guard let length = Int(length) else { throw HTTPTestFailure(description: "bad length \(length)") }
                if headRequested && (rest.isEmpty || rest.starts(with: Array("HTTP/1.".utf8))) { continue }
                guard rest.count >= length else { throw HTTPTestFailure(description: "short body for \(length)") }
                rest = rest.dropFirst(length)
            } else {
                // A stream (`text/event-stream`) runs until the server closes.
                guard headers["transfer-encoding"] == "chunked" || headers["content-type"] == "text/event-stream; charset=utf-8" else {
                    throw HTTPTestFailure(description: "a response without a length: \(headers)")
                }
                rest = []
            }
        }
        return statuses
    }

    static func replacing(_ replacements: [String: String], in bytes: [UInt8]) -> [UInt8] {
        var bytes = bytes
        for (placeholder, value) in replacements {
            while let range = bytes.firstRange(of: Array(placeholder.utf8)) { bytes.replaceSubrange(range, with: Array(value.utf8)) }
        }
        return bytes
    }
}
