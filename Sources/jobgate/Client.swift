import ArgumentParser
import Foundation
import GatewayProtocol
import NIOCore
import NIOPosix

/// How `jobgate submit`, `status` and `watch` end. Scripts branch on these, so they never change meaning.
enum ClientExit: Int32, CaseIterable {
    /// The job is done (its result is on stdout), or `status`: the job exists and has not failed.
    case done = 0
    /// The job failed; the reason is on stderr.
    case failed = 1
    /// The job was lost: gearmand no longer knew it and no outcome came (a failure whose reason starts `lost:`).
    case lost = 2
    /// The job's record expired (or was deleted); its outcome is gone.
    case expired = 3
    /// `--wait` passed before the job ended; the job goes on.
    case timedOut = 4
    /// The gateway never issued this id.
    case notFound = 5
    /// No answer from the gateway, or it refused the request (AUTH, a limit, BACKEND_DOWN, a protocol error).
    case gatewayError = 6
    /// The gateway's credentials file does not let this credential do that (`ERR NOPERM`).
    case notPermitted = 7

    // One paragraph: the help wraps it to the terminal's width.
    static let help = "Exit status: 0 done (or, for status, a job that has not failed), 1 failed, 2 lost, 3 expired, "
        + "4 --wait passed first (the job goes on), 5 unknown id, 6 gateway unreachable or refused the request, 7 not permitted to the credential (NOPERM), 64 bad usage."
}

/// A failure that ends the command with one of the ``ClientExit`` codes after a line on stderr.
struct ClientFailure: Error {
    var exit: ClientExit
    var message: String
}

/// How every client subcommand reaches the gateway.
struct GatewayClientOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The gateway, host:port (or JOBGATE_GATEWAY). (default: 127.0.0.1:4740)", valueName: "host:port"))
    var gateway: String?

    @Option(help: "Secret to AUTH with (or JOBGATE_SECRET; prefer the variable: a command line is visible to other users).")
    var secret: String?

    @Option(help: "Credential name to AUTH with, for a gateway with a credentials file (or JOBGATE_USER).")
    var user: String?
    @OptionGroup var tls: ClientTLSOptions

    func address() throws -> (host: String, port: Int) {
        let text = gateway ?? ProcessInfo.processInfo.environment["JOBGATE_GATEWAY"] ?? "127.0.0.1:4740"
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port),
            colon > text.startIndex
        else { throw ValidationError("--gateway: expected host:port, got \(text)") }
        return (String(text[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port)
    }

    /// Connects, authenticates when a secret is given, runs `body`, closes; every failure becomes a ``ClientFailure``.
    func withConnection<T: Sendable>(_ body: (inout GatewayClientConnection) async throws -> T) async throws -> T {
        let (host, port) = try address()
        let tlsContext = try tls.context()
        let channel: NIOAsyncChannel<GatewayResponse, GatewayRequest>
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(10))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try ClientTLSOptions.secure(channel, context: tlsContext, host: host)
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(GatewayResponseDecoder()))
                        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(GatewayRequestEncoder()))
                        return try NIOAsyncChannel<GatewayResponse, GatewayRequest>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw ClientFailure(exit: .gatewayError, message: "cannot connect to the gateway at \(host):\(port): \(error)")
        }
        let secret = self.secret ?? ProcessInfo.processInfo.environment["JOBGATE_SECRET"]
        let user = (self.user ?? ProcessInfo.processInfo.environment["JOBGATE_USER"]).flatMap { $0.isEmpty ? nil : $0 }
        do {
            return try await channel.executeThenClose { inbound, outbound in
                var connection = GatewayClientConnection(responses: inbound.makeAsyncIterator(), outbound: outbound)
                if let secret, !secret.isEmpty {
                    switch try await connection.request(.auth(name: user, secret: secret)) {
                    case .ok: break
                    case let other: throw connection.unexpected(other)
                    }
                }
                return try await body(&connection)
            }
        } catch let failure as ClientFailure {
            throw failure
        } catch {
            throw ClientFailure(exit: .gatewayError, message: "gateway \(host):\(port): \(error)")
        }
    }
}

/// One connection to the gateway: requests in order, replies and events as they come.
struct GatewayClientConnection {
    var responses: NIOAsyncChannelInboundStream<GatewayResponse>.AsyncIterator
    let outbound: NIOAsyncChannelOutboundWriter<GatewayRequest>

    /// The next reply or event; a closed connection is a ``ClientFailure``.
    mutating func next() async throws -> GatewayResponse {
        guard let response = try await responses.next() else {
            throw ClientFailure(exit: .gatewayError, message: "the gateway closed the connection")
        }
        return response
    }

    /// Sends one request and returns its reply. Events before it would belong to earlier watches; this client
    /// watches at most one job and reads its events with ``next()``.
    mutating func request(_ command: GatewayCommand) async throws -> GatewayReply {
        do {
            try await outbound.write(GatewayRequest(command))
        } catch {
            throw ClientFailure(exit: .gatewayError, message: "the gateway closed the connection: \(error)")
        }
        while true {
            if case .reply(let reply, _) = try await next() { return reply }
        }
    }

    /// An `ERR` reply or a reply that does not fit the request, as the failure to exit with.
    func unexpected(_ reply: GatewayReply) -> ClientFailure {
        if case .error(let code, let message) = reply {
            let exit: ClientExit = code == .notFound ? .notFound : code == .noPermission ? .notPermitted : .gatewayError
            return ClientFailure(exit: exit, message: "\(code) \(message)")
        }
        return ClientFailure(exit: .gatewayError, message: "unexpected reply from the gateway: \(reply)")
    }
}

/// Runs a client command: its outcome decides the exit status (see ``ClientExit``).
func runClient(_ body: () async throws -> ClientExit) async throws {
    let exit: ClientExit
    do {
        exit = try await body()
    } catch let failure as ClientFailure {
        StandardStreams.error("jobgate: \(failure.message)\n")
        exit = failure.exit
    }
    if exit != .done { throw ExitCode(exit.rawValue) }
}

/// Unbuffered writes to stdout (raw result bytes) and stderr (progress, messages).
enum StandardStreams {
    static func output(_ bytes: some Sequence<UInt8>) { write(1, Array(bytes)) }
    static func output(_ text: String) { write(1, Array(text.utf8)) }
    static func error(_ text: String) { write(2, Array(text.utf8)) }

    static func isTerminal(_ descriptor: Int32) -> Bool { isatty(descriptor) == 1 }

    private static func write(_ descriptor: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Foundation.write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                return  // a closed pipe: nothing more to tell anyone
            }
            offset += written
        }
    }
}

extension GatewayJobID: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument) }
}
