import ArgumentParser
import Foundation
import Gearman

/// `jobgate admin`: what each gearmand of a pool holds, through its admin text protocol.
struct Admin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask every gearmand server for its queues, workers, jobs or version.",
        discussion: """
            Prints one table with a header for all servers; --json prints it as an array of objects instead. In \
            status, QUEUED counts the jobs waiting for a worker and RUNNING those a worker holds (gearmand's own \
            total is their sum).

            Examples:
              jobgate admin status --gearman 127.0.0.1:4730
              jobgate admin workers --gearman 127.0.0.1:4730,127.0.0.1:4731 --json
            """
    )

    enum Query: String, ExpressibleByArgument, CaseIterable {
        case status, workers, jobs, uniques, version

        var command: GearmanAdminCommand {
            switch self {
            case .status: .status
            case .workers: .workers
            case .jobs: .showJobs
            case .uniques: .showUniqueJobs
            case .version: .version
            }
        }

        /// The table's columns after `server`: the header for people and the key in JSON.
        var columns: [AdminTable.Column] {
            switch self {
            case .status: [.init("FUNCTION", "function"), .init("QUEUED", "queued"), .init("RUNNING", "running"), .init("WORKERS", "workers")]
            case .workers: [.init("FD", "fd"), .init("ADDRESS", "address"), .init("CLIENT-ID", "clientID"), .init("FUNCTIONS", "functions")]
            case .jobs: [.init("HANDLE", "handle"), .init("RETRIES", "retries"), .init("CANCELLED", "cancelled")]
            case .uniques: [.init("UNIQUE", "unique")]
            case .version: [.init("VERSION", "version")]
            }
        }

        /// One line of gearmand's answer as the row's values, nil for a line that does not parse.
        func row(_ line: String) -> [AdminTable.Value]? {
            switch self {
            case .status:
                guard let status = GearmanFunctionStatus(line: line) else { return nil }
                return [.text(status.function), .number(status.total - status.running), .number(status.running), .number(status.workers)]
            case .workers:
                guard let worker = GearmanWorkerInfo(line: line) else { return nil }
                return [.number(worker.fileDescriptor), .text(worker.address), .text(worker.clientID), .list(worker.functions)]
            case .jobs:
                guard let job = GearmanQueuedJob(line: line) else { return nil }
                return [.text(job.handle), .number(job.retries), .flag(job.isCancelled)]
            case .uniques:
                return [.text(line)]
            case .version:
                return [.text(line.hasPrefix("OK ") ? String(line.dropFirst(3)) : line)]
            }
        }
    }

    @Argument(help: "What to show.")
    var query: Query = .status

    @Option(
        name: .long,
        help: ArgumentHelp("gearmand servers, comma-separated host:port. (default: 127.0.0.1:4730)", valueName: "host:port,…"),
        transform: { text in
            try text.split(separator: ",").map { part in
                guard let address = GearmanServerAddress(String(part)) else {
                    throw ValidationError("not a host:port address: \(part)")
                }
                return address
            }
        }
    )
    var gearman: [GearmanServerAddress] = [GearmanServerAddress(host: "127.0.0.1")]

    @Flag(help: "Print the table as a JSON array of objects, one per row, each with its server.")
    var json = false

    func run() async throws {
        var table = AdminTable(columns: [AdminTable.Column("SERVER", "server")] + query.columns)
        var failed = false
        for server in gearman {
            let client = GearmanClient(address: server)
            do {
                for line in try await client.admin(query.command) {
                    // `show unique jobs` lists a job without a unique as an empty line: there is nothing to show.
                    guard !line.isEmpty, let row = query.row(line) else { continue }
                    table.rows.append([.text(server.description)] + row)
                }
            } catch {
                FileHandle.standardError.write(Data("jobgate: \(server): \(error)\n".utf8))
                failed = true
            }
            await client.shutdown()
        }
        print(json ? table.json() : table.text(), terminator: "")
        if failed { throw ExitCode.failure }
    }
}

/// Rows under named columns, printed aligned with a header for people or as JSON objects for programs.
struct AdminTable {
    struct Column {
        var header: String
        var key: String

        init(_ header: String, _ key: String) {
            self.header = header
            self.key = key
        }
    }

    enum Value {
        case text(String)
        case number(Int)
        case flag(Bool)
        case list([String])

        var text: String {
            switch self {
            case .text(let text): text.isEmpty ? "-" : text
            case .number(let number): String(number)
            case .flag(let flag): flag ? "yes" : "no"
            case .list(let list): list.isEmpty ? "-" : list.joined(separator: " ")
            }
        }

        var json: Any {
            switch self {
            case .text(let text): text
            case .number(let number): number
            case .flag(let flag): flag
            case .list(let list): list
            }
        }
    }

    let columns: [Column]
    var rows: [[Value]] = []

    /// Columns two spaces apart, each as wide as its widest cell; the last one is not padded.
    func text() -> String {
        let cells = [columns.map(\.header)] + rows.map { $0.map(\.text) }
        let widths = columns.indices.map { column in cells.map { $0[column].count }.max() ?? 0 }
        return cells.map { row in
            row.enumerated().map { column, cell in
                column == columns.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
            }.joined(separator: "  ") + "\n"
        }.joined()
    }

    func json() -> String {
        let objects = rows.map { row in Dictionary(uniqueKeysWithValues: zip(columns.map(\.key), row.map(\.json))) }
        // Only strings, numbers, booleans and arrays of strings: serialisation cannot fail.
        let data = try! JSONSerialization.data(withJSONObject: objects, options: [.sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}
