import ArgumentParser
import Foundation
import GatewayProtocol
import NIOCore

/// `jobgate submit`: one job through the gateway, optionally followed to its end.
struct Submit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Submit a job to the gateway; print its id, or follow it and print its result.",
        usage: "jobgate submit <function> [--data <data> | --file <file>] [<options>]",
        discussion: """
            The payload is --data, the contents of --file, or else stdin. Without --watch or --wait the job's id is \
            printed and the command returns at once. With --watch it shows progress on stderr (a bar on a \
            terminal, lines otherwise) and writes the result, byte for byte, to stdout; --wait does the same \
            without progress, giving up after the given seconds.

            Examples:
              jobgate submit resize --file photo.jpg --watch > small.jpg
              echo hello | jobgate submit reverse --wait 30
              id=$(jobgate submit report --unique 2024-06-01 --data '{"day":"2024-06-01"}')

            \(ClientExit.help)
            """
    )

    @Argument(help: "The Gearman function to run.")
    var function: String

    @Option(help: "Coalescing key: a queued or running job with the same function and key is joined instead.")
    var unique: String?

    @Option(help: "Queue priority.")
    var priority: GatewayPriority = .normal

    @Option(help: "The payload, as given.")
    var data: String?

    @Option(help: "Read the payload from this file ('-' for stdin).")
    var file: String?

    @Flag(help: "Follow the job: progress on stderr, then the result on stdout.")
    var watch = false

    @Option(help: ArgumentHelp("Wait up to this many seconds for the result (no progress shown).", valueName: "seconds"))
    var wait: Double?

    @OptionGroup var client: GatewayClientOptions
    @OptionGroup var progress: ProgressOptions

    func validate() throws {
        guard GatewayFunctionName(rawValue: function) != nil else {
            throw ValidationError("not a function name (1-255 bytes, no whitespace or control characters): \(function)")
        }
        if let unique, GatewayUniqueKey(rawValue: unique) == nil {
            throw ValidationError("--unique: 1-63 bytes without whitespace or control characters")
        }
        if data != nil && file != nil { throw ValidationError("--data and --file exclude each other") }
        if watch && wait != nil { throw ValidationError("--watch and --wait exclude each other") }
        if progress.choice != nil && !watch { throw ValidationError("--progress applies only with --watch") }
        if let wait, !(wait >= 0 && wait <= 1e9) { throw ValidationError("--wait: seconds, 0 or more") }
    }

    func run() async throws {
        let payload = try readPayload()
        try await runClient {
            try await client.withConnection { connection in
                let submission = GatewaySubmission(
                    function: GatewayFunctionName(rawValue: function)!,
                    payload: payload,
                    unique: unique.flatMap(GatewayUniqueKey.init(rawValue:)),
                    priority: priority,
                    waitMilliseconds: wait.map { UInt64(($0 * 1000).rounded()) }
                )
                let reply = try await connection.request(.submit(submission))
                if wait != nil { return try JobOutcome.report(reply, connection: connection) }
                let id: GatewayJobID
                let joined: Bool
                switch reply {
                case .created(let created): (id, joined) = (created, false)
                case .exists(let existing): (id, joined) = (existing, true)
                default: throw connection.unexpected(reply)
                }
                guard watch else {
                    StandardStreams.output("\(id)\n")
                    return .done
                }
                let display = ProgressDisplay(mode: progress.mode, id: id)
                display.note(joined ? "joined (a job with this unique key is under way)" : "created")
                return try await display.redrawingOnResize {
                    try await JobOutcome.follow(id, connection: &connection, display: display)
                }
            }
        }
    }

    private func readPayload() throws -> ByteBuffer {
        if let data { return ByteBuffer(string: data) }
        do {
            if let file, file != "-" {
                return ByteBuffer(bytes: try Data(contentsOf: URL(fileURLWithPath: file)))
            }
            return ByteBuffer(bytes: try FileHandle.standardInput.readToEnd() ?? Data())
        } catch {
            throw ValidationError("cannot read the payload from \(file ?? "stdin"): \(error.localizedDescription)")
        }
    }
}

extension GatewayPriority: ExpressibleByArgument {}

/// What a finished, failed, expired or waited-for job prints and exits with.
enum JobOutcome {
    /// `WATCH`es `id` and shows its progress until its terminal event.
    static func follow(_ id: GatewayJobID, connection: inout GatewayClientConnection, display: ProgressDisplay) async throws -> ClientExit {
        switch try await connection.request(.watch(id)) {
        case .watching(_, let status):
            display.show(status.state, numerator: status.numerator, denominator: status.denominator)
        case let other:
            throw connection.unexpected(other)
        }
        while true {
            guard case .event(let event, _) = try await connection.next(), event.jobID == id else { continue }
            switch event.withoutCursor {
            case .progress(_, let numerator, let denominator, let message):
                display.show(.running, numerator: numerator, denominator: denominator, message: message)
            case .done(_, let result):
                display.end("done")
                return report(.done(id, result: result))
            case .failed(_, let reason):
                display.end("failed")
                return report(.failed(id, reason: reason))
            case .expired, .logged:
                display.end("expired")
                return report(.expired(id))
            }
        }
    }

    /// A reply of `RESULT`/`WAIT` shape: the result to stdout, anything else to stderr, and the exit status.
    static func report(_ reply: GatewayReply, connection: GatewayClientConnection) throws -> ClientExit {
        switch reply {
        case .done, .failed, .expired, .timeout: report(reply)
        default: throw connection.unexpected(reply)
        }
    }

    private static func report(_ reply: GatewayReply) -> ClientExit {
        switch reply {
        case .done(_, let result):
            StandardStreams.output(result.readableBytesView)
            return .done
        case .failed(let id, let reason):
            let text = String(decoding: reason.readableBytesView, as: UTF8.self)
            StandardStreams.error("jobgate: job \(id) failed: \(text)\n")
            return LostJobReason.isLost(reason.readableBytesView) ? .lost : .failed
        case .expired(let id):
            StandardStreams.error("jobgate: job \(id) expired: its record and result are gone\n")
            return .expired
        case .timeout(let id, let status):
            StandardStreams.error("jobgate: job \(id) still \(status.state.rawValue) (\(status.numerator)/\(status.denominator)) when --wait passed\n")
            return .timedOut
        default:
            return .gatewayError
        }
    }
}
