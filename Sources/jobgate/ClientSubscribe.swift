import ArgumentParser
import GatewayProtocol
import NIOCore

/// `jobgate subscribe`: every job of a function that ends, with the cursor to resume from.
struct Subscribe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print every job of a function that ends: `<cursor> <id> <done|failed|expired> <bytes>` per line.",
        discussion: """
            Each line's cursor is where the function's completion log stands after that job: run again with
            --from <the last cursor printed> and nothing that ended in between is missed or printed twice (as long as
            the log still holds it, see `jobgate serve --subscription-retention`; otherwise it exits with TRIMMED).
            <bytes> is the size of the result (done) or reason (failed); --results prints them after the line.

            Example:  jobgate subscribe resize --from "$(tail -1 seen | cut -d' ' -f1)" >> seen

            \(ClientExit.help)
            """
    )

    @Argument(help: "The Gearman function whose jobs to follow.")
    var function: String

    @Option(help: ArgumentHelp("now (the default), start (everything the log holds), or a cursor printed before.", valueName: "cursor"))
    var from: String = "now"

    @Option(help: "Exit after this many jobs (default: follow until interrupted).")
    var count: Int?

    @Flag(help: "Print each result or reason (its <bytes> raw bytes and a line break) after its line.")
    var results = false

    @OptionGroup var client: GatewayClientOptions

    func validate() throws {
        guard GatewayFunctionName(rawValue: function) != nil else { throw ValidationError("invalid function name \(function)") }
        guard start != nil else { throw ValidationError("--from must be now, start or a cursor <ms>-<seq>") }
    }

    private var start: GatewaySubscriptionStart? {
        switch from.lowercased() {
        case "now": .now
        case "start": .start
        default: GatewayLogCursor(from).map { .after($0) }
        }
    }

    func run() async throws {
        try await runClient {
            try await client.withConnection { connection in
                let function = GatewayFunctionName(rawValue: function)!
                let reply = try await connection.request(.subscribe(function, from: start))
                guard case .subscribed = reply else { throw connection.unexpected(reply) }
                var printed = 0
                while count.map({ printed < $0 }) ?? true {
                    guard case .event(.logged(let event, let cursor), _) = try await connection.next() else { continue }
                    let (state, bytes): (String, ByteBufferView?) =
                        switch event {
                        case .done(_, let result): ("done", result.readableBytesView)
                        case .failed(_, let reason): ("failed", reason.readableBytesView)
                        default: ("expired", nil)
                        }
                    StandardStreams.output("\(cursor) \(event.jobID) \(state) \(bytes?.count ?? 0)\n")
                    if results, let bytes { StandardStreams.output(Array(bytes) + [0x0A]) }
                    printed += 1
                }
                return .done
            }
        }
    }
}
