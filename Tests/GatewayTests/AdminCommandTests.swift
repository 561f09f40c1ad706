import Foundation
import Gearman
import LocalServers
import Logging
import NIOCore
import ServiceLifecycle
import Testing

/// `jobgate admin` against a real gearmand holding queued jobs and a worker busy with one of them.
@Suite("jobgate admin", .timeLimit(.minutes(2)))
struct AdminCommandTests {
    @Test func tablesForPeopleAndJSONForPrograms() async throws {
        try await withLocalServer(.gearmand) { gearmand in
            let address = GearmanServerAddress(host: gearmand.host, port: gearmand.port)
            let client = GearmanClient(address: address)
            for unique in ["photo-1", "photo-2", "photo-3"] {
                _ = try await client.submitBackground(GearmanJobRequest(function: "resize", unique: unique, payload: ByteBuffer(string: unique)))
            }
            _ = try await client.submitBackground(GearmanJobRequest(function: "report", unique: "daily", payload: ByteBuffer()))
            await client.shutdown()

            let started = Gate()
            let release = Gate()
            var configuration = GearmanWorkerConfiguration()
            configuration.clientID = "thumbnailer"
            let worker = try GearmanWorker(servers: [address], handlers: [
                "resize": { _, _ in
                    started.open()
                    await release.wait()
                    return .complete(ByteBuffer())
                }
            ], configuration: configuration)
            let group = ServiceGroup(configuration: .init(services: [worker], logger: Logger(label: "test.worker")))
            let running = Task { try await group.run() }
            defer { running.cancel() }
            await started.wait()

            // status: resize has two waiting and one running on one worker; report waits with no worker.
            let status = try await admin(["status", "--gearman", gearmand.address])
            let statusRows = try Self.expectAligned(status, header: ["SERVER", "FUNCTION", "QUEUED", "RUNNING", "WORKERS"])
            #expect(statusRows.contains([gearmand.address, "resize", "2", "1", "1"]), "\(status)")
            #expect(statusRows.contains([gearmand.address, "report", "1", "0", "0"]), "\(status)")
            let statusJSON = try Self.objects(try await admin(["status", "--gearman", gearmand.address, "--json"]))
            let resize = try #require(statusJSON.first { $0["function"] as? String == "resize" })
            #expect(resize["server"] as? String == gearmand.address)
            #expect(resize["queued"] as? Int == 2 && resize["running"] as? Int == 1 && resize["workers"] as? Int == 1, "\(resize)")

            // workers: the worker with its id and function (and this admin connection, with neither).
            let workers = try await admin(["workers", "--gearman", gearmand.address])
            let workerRows = try Self.expectAligned(workers, header: ["SERVER", "FD", "ADDRESS", "CLIENT-ID", "FUNCTIONS"])
            #expect(workerRows.contains { $0[2] == "127.0.0.1" && $0[3] == "thumbnailer" && $0[4] == "resize" }, "\(workers)")
            let workersJSON = try Self.objects(try await admin(["workers", "--gearman", gearmand.address, "--json"]))
            let thumbnailer = try #require(workersJSON.first { $0["clientID"] as? String == "thumbnailer" }, "\(workersJSON)")
            #expect(thumbnailer["functions"] as? [String] == ["resize"] && thumbnailer["fd"] is Int && thumbnailer["address"] as? String == "127.0.0.1")

            // jobs: the four gearmand holds, running or not; uniques and version.
            let jobs = try await admin(["jobs", "--gearman", gearmand.address])
            let jobRows = try Self.expectAligned(jobs, header: ["SERVER", "HANDLE", "RETRIES", "CANCELLED"])
            #expect(jobRows.count == 4 && jobRows.allSatisfy { $0[1].hasPrefix("H:") && $0[2] == "0" && $0[3] == "no" }, "\(jobs)")
            let jobsJSON = try Self.objects(try await admin(["jobs", "--gearman", gearmand.address, "--json"]))
            #expect(jobsJSON.count == 4 && jobsJSON.allSatisfy { ($0["handle"] as? String)?.hasPrefix("H:") == true && $0["cancelled"] as? Bool == false })
            let uniques = try await admin(["uniques", "--gearman", gearmand.address])
            let uniqueRows = try Self.expectAligned(uniques, header: ["SERVER", "UNIQUE"])
            #expect(Set(uniqueRows.map { $0[1] }) == ["photo-1", "photo-2", "photo-3", "daily"])
            let version = try Self.objects(try await admin(["version", "--gearman", gearmand.address, "--json"]))
            #expect(version.count == 1 && (version[0]["version"] as? String)?.hasPrefix("1.") == true, "\(version)")

            // A server that does not answer: the others are still shown, the failure goes to stderr, exit 1.
            let partial = try await runProgram(jobgateExecutable(), ["status", "--gearman", "\(gearmand.address),127.0.0.1:1"].admin, timeout: .seconds(30))
            #expect(partial.status == 1 && partial.errors.contains("127.0.0.1:1"), "\(partial.errors)")
            #expect(partial.outputText.hasPrefix("SERVER") && partial.outputText.contains("resize"))

            release.open()
            await group.triggerGracefulShutdown()
            _ = try? await withTimeout(.seconds(10), "the worker to stop") { try await running.value }
        }
    }

    private func admin(_ arguments: [String]) async throws -> String {
        let run = try await runProgram(jobgateExecutable(), arguments.admin, timeout: .seconds(30))
        guard run.status == 0 else { throw LocalServerError(message: "jobgate admin \(arguments) exited \(run.status): \(run.errors)") }
        return run.outputText
    }

    /// The header is as given and every cell of every row starts in its header's column; returns the rows' cells.
    private static func expectAligned(_ text: String, header: [String]) throws -> [[String]] {
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.first?.split(separator: " ").map(String.init) == header, "\(text)")
        let headerLine = Array(lines.first ?? "")
        let starts = headerLine.indices.filter { headerLine[$0] != " " && ($0 == 0 || headerLine[$0 - 1] == " ") }
        return lines.dropFirst().map { line in
            let characters = Array(line)
            var cells: [String] = []
            for (column, start) in starts.enumerated() {
                let end = column + 1 < starts.count ? starts[column + 1] : characters.count
                #expect(start < characters.count && characters[start] != " " && (start == 0 || characters[start - 1] == " "),
                        "column \(header[column]) of \(line)")
                cells.append(String(characters[min(start, characters.count)..<max(start, min(end, characters.count))]).trimmingCharacters(in: .whitespaces))
            }
            return cells
        }
    }

    private static func objects(_ json: String) throws -> [[String: Any]] {
        try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]], "\(json)")
    }
}

private extension [String] {
    var admin: [String] { ["admin"] + self }
}
