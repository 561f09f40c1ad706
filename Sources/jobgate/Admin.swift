import ArgumentParser
import Gearman

/// `jobgate admin`: what each gearmand of a pool holds, through its admin text protocol.
struct Admin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask every gearmand server for its queues, workers, jobs or version.",
        discussion: """
            Examples:
              jobgate admin status --gearman 127.0.0.1:4730
              jobgate admin workers --gearman 127.0.0.1:4730,127.0.0.1:4731
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
    }

    @Argument(help: "What to show: \(Query.allCases.map(\.rawValue).joined(separator: ", ")).")
    var query: Query = .status

    @Option(
        name: .long,
        help: "gearmand servers, comma-separated host:port.",
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

    func run() async throws {
        var failed = false
        for server in gearman {
            let client = GearmanClient(address: server)
            do {
                let lines = try await client.admin(query.command)
                print("# \(server)")
                for line in lines { print(line) }
            } catch {
                print("# \(server): \(error)")
                failed = true
            }
            await client.shutdown()
        }
        if failed { throw ExitCode.failure }
    }
}
