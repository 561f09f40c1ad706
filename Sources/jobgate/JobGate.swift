import ArgumentParser

@main
struct JobGate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jobgate",
        abstract: "Run long jobs on Gearman workers and get the outcome pushed instead of polling for it.",
        version: "0.1.0",
        subcommands: [Serve.self, Worker.self, Submit.self, Status.self, Watch.self, Subscribe.self, Admin.self, Bench.self, Credentials.self]
    )
}
