import Foundation
import LocalServers
import Testing

/// `Deploy/test.sh` cleans up after a crashed run by the pids the run recorded, never by name.
@Suite("Deploy scripts stop only what they started", .timeLimit(.minutes(2)))
struct DeployScriptTests {
    /// A run that crashes leaves its servers behind; `Deploy/stop-recorded.sh` on its records stops exactly those,
    /// and another run's server on the same machine (also a `jobgate-localserver-…`) keeps running.
    @Test func aCrashedRunsServersAreStoppedAndNoOneElses() async throws {
        try await withLocalServer(.gearmand) { bystander in
            let folder = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-pids-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: folder) }
            // Whatever happens below, nothing this test's crashed run started outlives it.
            var left: [(pid: pid_t, started: String)] = []
            defer { for record in left + ((try? Self.records(folder)) ?? []) where Self.isRunning(record) { kill(record.pid, SIGKILL) } }

            // `jobgate bench` starts gearmand, redis-server and a gateway with LocalServers, like the tests do.
            let run = try LocalProcess(jobgateExecutable(), ["bench", "--quick"], environment: [StartedProcesses.variable: folder.path])
            defer { run.stop() }
            try await eventually("the run to record the servers it starts", timeout: .seconds(30)) { try Self.records(folder).count >= 2 }
            run.signal(SIGKILL)
            _ = try await run.waitForExit()
            left = try Self.records(folder)
            #expect(!left.isEmpty && left.allSatisfy(Self.isRunning), "the crashed run's servers still run: \(left)")
            #expect(left.allSatisfy { $0.pid != run.pid })

            let files = try FileManager.default.contentsOfDirectory(atPath: folder.path).map { folder.appendingPathComponent($0).path }
            let stop = try await runProgram(Self.deploy.appendingPathComponent("stop-recorded.sh").path, files, timeout: .seconds(20))
            #expect(stop.status == 0, "\(stop.errors)")
            try await eventually("the recorded servers to stop") { left.allSatisfy { !Self.isRunning($0) } }
            #expect(try Self.records(folder).isEmpty, "the records are removed")

            let bystanderPID = try #require(bystander.pid)
            #expect(Self.isRunning((bystanderPID, StartedProcesses.startTime(bystanderPID) ?? "")), "another run's server is left alone")
            let answer = try LoopbackSocket.exchange(port: bystander.port, request: Array("version\n".utf8), timeoutMs: 2_000)
            #expect(String(decoding: answer, as: UTF8.self).hasPrefix("OK "))
        }
    }

    /// A pid handed to another process since it was recorded is left alone: the start time no longer matches.
    @Test func aReusedPidIsLeftAlone() async throws {
        let sleeper = try LocalProcess("/bin/sleep", ["30"])
        defer { sleeper.stop() }
        let record = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-pid-\(UUID().uuidString.prefix(8))")
        let started = try #require(StartedProcesses.startTime(sleeper.pid))
        try "\(sleeper.pid) \(UInt64(started)! + 1)\n".write(to: record, atomically: true, encoding: .utf8)
        let stop = try await runProgram(Self.deploy.appendingPathComponent("stop-recorded.sh").path, [record.path], timeout: .seconds(20))
        #expect(stop.status == 0)
        #expect(sleeper.exitStatus == nil, "not the process recorded: not signalled")
        #expect(!FileManager.default.fileExists(atPath: record.path))
    }

    /// `Deploy/test.sh` gives the run a folder of its own for the records and stops only those; nothing by name.
    @Test func testScriptStopsByRecordedPid() throws {
        let script = try String(contentsOf: Self.deploy.appendingPathComponent("test.sh"), encoding: .utf8)
        #expect(!script.contains("pkill") && !script.contains("killall"))
        #expect(script.contains("\(StartedProcesses.variable)=$(mktemp -d"))
        #expect(script.contains("export \(StartedProcesses.variable)"))
        #expect(script.contains("trap 'Deploy/stop-recorded.sh \"$\(StartedProcesses.variable)\"/*; rm -rf \"$\(StartedProcesses.variable)\"' EXIT"))
    }

    static let deploy = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Deploy")

    /// The records in `folder`: each names a pid and its start time.
    static func records(_ folder: URL) throws -> [(pid: pid_t, started: String)] {
        try FileManager.default.contentsOfDirectory(atPath: folder.path).compactMap { name in
            let text = try String(contentsOf: folder.appendingPathComponent(name), encoding: .utf8)
            let fields = text.split(whereSeparator: \.isWhitespace)
            guard fields.count == 2, let pid = pid_t(fields[0]), String(pid) == name else { return nil }
            return (pid, String(fields[1]))
        }
    }

    /// The process that started then still runs (a zombie has ended: only its parent has not reaped it yet).
    static func isRunning(_ record: (pid: pid_t, started: String)) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(record.pid)/stat", encoding: .utf8), let nameEnd = stat.lastIndex(of: ")") else {
            return false
        }
        let fields = stat[stat.index(after: nameEnd)...].split(separator: " ")
        return fields.count > 19 && fields[0] != "Z" && String(fields[19]) == record.started
    }
}
