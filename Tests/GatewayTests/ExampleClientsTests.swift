import Foundation
import Gateway
import GatewayProtocol
import LocalServers
import NIOCore
import Synchronization
import Testing

/// The copy-pasteable clients in Deploy/examples, run as their users would run them.
enum ExampleClient: String, CaseIterable, Sendable, CustomStringConvertible {
    case php, python

    var description: String { rawValue }

    /// Executable and arguments before the client's own: python3 from /usr/bin, else from PATH through env.
    var command: (executable: String, arguments: [String]) {
        let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Deploy/examples")
        switch self {
        case .php:
            return ("/usr/bin/php", [examples.appendingPathComponent("client.php").path])
        case .python:
            let script = examples.appendingPathComponent("client.py").path
            return FileManager.default.isExecutableFile(atPath: "/usr/bin/python3")
                ? ("/usr/bin/python3", [script]) : ("/usr/bin/env", ["python3", script])
        }
    }

    func run(_ stack: GatewayStack, _ arguments: [String]) async throws -> ProgramRun {
        try await runProgram(command.executable, command.arguments + ["127.0.0.1", "\(stack.port)"] + arguments, timeout: .seconds(30))
    }

    func start(_ stack: GatewayStack, _ arguments: [String]) throws -> LocalProcess {
        try LocalProcess(command.executable, command.arguments + ["127.0.0.1", "\(stack.port)"] + arguments)
    }
}

/// The running client, for a worker that paces itself on what the client has printed.
private final class ClientSlot: Sendable {
    let process = Mutex<LocalProcess?>(nil)

    /// Waits until the client printed `text`, so that each progress report reaches a watch that is in place.
    func waitForOutput(_ text: String) async throws {
        try await eventually("the client to print \(text)", timeout: .seconds(15)) {
            process.withLock { $0?.log.contains(text) ?? false }
        }
    }
}

private struct JobFailure: Error, CustomStringConvertible {
    var description: String
}

private func hex(_ bytes: some Sequence<UInt8>) -> String {
    bytes.map { String(format: "%02x", $0) }.joined()
}

private func exitCode(_ raw: Int32) -> Int32 {
    (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
}

@Suite("Example clients (PHP, Python)", .timeLimit(.minutes(2)))
struct ExampleClientsTests {
    /// submit → WATCH: both PROGRESS events as they happen, then DONE with the exact result bytes; WAIT agrees.
    /// Payload and result hold NUL, CR and LF.
    @Test(arguments: ExampleClient.allCases)
    func submitWatchWait(_ client: ExampleClient) async throws {
        let payload: [UInt8] = [0, 13, 10, 65, 10, 255, 0, 13, 32]
        let expected: [UInt8] = payload.reversed() + [13, 10, 0]
        let slot = ClientSlot()
        try await withGatewayStack { stack in
            try await withTestWorker(stack, [
                "examples.reverse": { job, progress in
                    try await slot.waitForOutput("WATCHING")
                    try await progress(1, 3, "step one")
                    try await slot.waitForOutput("PROGRESS 1 3 step one")
                    try await progress(2, 3, "step two")
                    try await slot.waitForOutput("PROGRESS 2 3 step two")
                    return ByteBuffer(bytes: Array(job.readableBytesView.reversed()) + [13, 10, 0])
                }
            ]) {
                let process = try client.start(stack, ["submit", "examples.reverse", "hex:" + hex(payload), "5000"])
                defer { process.stop() }
                slot.process.withLock { $0 = process }
                let status = exitCode(try await process.waitForExit(timeout: .seconds(30)))
                let lines = process.log.split(separator: "\n").map(String.init)
                #expect(status == 0, "\(process.log)")
                try #require(lines.count == 6, "\(process.log)")
                let id = String(lines[0].dropFirst("CREATED ".count))
                #expect(lines[0].hasPrefix("CREATED ") && id.count == 39)
                #expect(lines[1].hasPrefix("WATCHING \(id) "))
                #expect(Array(lines[2...]) == ["PROGRESS 1 3 step one", "PROGRESS 2 3 step two", "DONE \(hex(expected))", "WAIT DONE \(hex(expected))"])
            }
        }
    }

    /// A failing job ends with FAILED and its reason (binary-safe); WAIT on a job nobody runs times out; WAIT on an
    /// id nobody issued is ERR NOT_FOUND, reported on stderr with exit status 2.
    @Test(arguments: ExampleClient.allCases)
    func failureTimeoutAndError(_ client: ExampleClient) async throws {
        let reason = "disk full\r\nsee log\n"
        try await withGatewayStack { stack in
            try await withTestWorker(stack, ["examples.fail": { _, _ in throw JobFailure(description: reason) }]) {
                let failed = try await client.run(stack, ["submit", "examples.fail", "x"])
                #expect(failed.status == 1, "\(failed.outputText) \(failed.errors)")
                let lines = failed.outputText.split(separator: "\n").map(String.init)
                #expect(Array(lines.dropFirst(2)) == ["FAILED \(hex(reason.utf8))", "WAIT FAILED \(hex(reason.utf8))"], "\(failed.outputText)")

                let gateway = try await stack.connect()
                let queued = try await gateway.submit("examples.nobody-runs-this", "x")
                await gateway.close()
                let timedOut = try await client.run(stack, ["wait", queued.rawValue, "200"])
                #expect(timedOut.status == 1, "\(timedOut.errors)")
                #expect(timedOut.outputText == "WAIT TIMEOUT \n")

                let unknown = try await client.run(stack, ["wait", "a" + String(repeating: "b", count: 38), "200"])
                #expect(unknown.status == 2)
                #expect(unknown.outputText.isEmpty)
                #expect(unknown.errors.hasPrefix("error: NOT_FOUND "), "\(unknown.errors)")
            }
        }
    }

    /// --auth: the right secret gets through (here to a NOT_FOUND), a wrong one is DENIED, none is NOAUTH.
    @Test(arguments: ExampleClient.allCases)
    func authentication(_ client: ExampleClient) async throws {
        try await withGatewayStack({ $0.secrets = ["s3cret"] }) { stack in
            let unknown = "a" + String(repeating: "b", count: 38)
            for (arguments, code) in [(["--auth", "s3cret"], "NOT_FOUND"), (["--auth", "wrong"], "DENIED"), ([], "NOAUTH")] {
                let run = try await client.run(stack, arguments + ["wait", unknown, "100"])
                #expect(run.status == 2)
                #expect(run.errors.hasPrefix("error: \(code) "), "\(arguments): \(run.errors)")
            }
        }
    }

    /// `subscribe FUNCTION start`: each ended job with its cursor and result; resumed from the first cursor, the
    /// client prints exactly the jobs after it.
    @Test(arguments: ExampleClient.allCases)
    func subscribeAndResume(_ client: ExampleClient) async throws {
        try await withGatewayStack { stack in
            try await withTestWorker(stack, ["examples.echo": { job, _ in job }]) {
                let submitter = try await stack.connect()
                var ids: [GatewayJobID] = []
                for payload in ["a", "b", "c"] {
                    let id = try #require(try await submitter.request(submitLine("examples.echo", payload))?.createdID)
                    #expect(try await submitter.request("WAIT \(id) 10000\n") == .reply(.done(id, result: ByteBuffer(string: payload))))
                    ids.append(id)
                }
                let all = try await client.run(stack, ["subscribe", "examples.echo", "start", "3"])
                #expect(all.status == 0, "\(all.errors)")
                let lines = all.outputText.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
                #expect(lines.first == ["SUBSCRIBED", "examples.echo"])
                #expect(lines.dropFirst().map { $0[1] } == ids.map(\.rawValue), "\(all.outputText)")
                #expect(lines.dropFirst().map { $0[2] + " " + $0[3] } == ["DONE 61", "DONE 62", "DONE 63"])
                let resumed = try await client.run(stack, ["subscribe", "examples.echo", lines[1][0], "2"])
                #expect(resumed.outputText.split(separator: "\n").dropFirst().map { String($0) } == lines.dropFirst(2).map { $0.joined(separator: " ") })
            }
        }
    }
}
