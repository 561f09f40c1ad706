import ArgumentParser
import GatewayProtocol

/// `jobgate status`: a job's state and progress, once.
struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a job's state and progress: `<state> <numerator> <denominator>`.",
        usage: "jobgate status <id> [<options>]",
        discussion: """
            States: queued, running, done, failed, expired. A failed job's reason goes to stderr.

            Example:  read state done total < <(jobgate status "$id")

            \(ClientExit.help)
            """
    )

    @Argument(help: "The job's id, as `jobgate submit` printed it.")
    var id: GatewayJobID

    @OptionGroup var client: GatewayClientOptions

    func run() async throws {
        try await runClient {
            try await client.withConnection { connection in
                let reply = try await connection.request(.status(id))
                guard case .status(_, let status) = reply else { throw connection.unexpected(reply) }
                StandardStreams.output("\(status.state.rawValue) \(status.numerator) \(status.denominator)\n")
                switch status.state {
                case .queued, .running, .done:
                    return .done
                case .expired:
                    return .expired
                case .failed:
                    // The reason tells a lost job from a failed one.
                    return try JobOutcome.report(try await connection.request(.result(id)), connection: connection)
                }
            }
        }
    }
}

/// `jobgate watch`: follow a job to its end.
struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow a job: progress on stderr, then its result on stdout.",
        usage: "jobgate watch <id> [--progress <mode>] [<options>]",
        discussion: """
            A job that already ended prints its outcome at once.

            Example:  jobgate watch "$id" > result.bin

            \(ClientExit.help)
            """
    )

    @Argument(help: "The job's id, as `jobgate submit` printed it.")
    var id: GatewayJobID

    @OptionGroup var client: GatewayClientOptions
    @OptionGroup var progress: ProgressOptions

    func run() async throws {
        try await runClient {
            try await client.withConnection { connection in
                let display = ProgressDisplay(mode: progress.mode, id: id)
                return try await display.redrawingOnResize {
                    try await JobOutcome.follow(id, connection: &connection, display: display)
                }
            }
        }
    }
}
