import ArgumentParser
import Foundation
import NIOCore
import NIOSSL

/// How the client subcommands speak TLS to a gateway that serves it (`jobgate serve --tls-cert`).
struct ClientTLSOptions: ParsableArguments {
    @Flag(name: .customLong("tls"), help: "Speak TLS to the gateway, trusting the system's authorities (or JOBGATE_TLS=1).")
    var enabled = false

    @Option(
        name: .customLong("tls-ca"),
        help: ArgumentHelp("Speak TLS to the gateway, trusting the authorities in this PEM file (or JOBGATE_TLS_CA).", valueName: "file")
    )
    var caFile: String?

    @Option(
        name: .customLong("tls-cert"),
        help: ArgumentHelp("Client certificate (PEM) for a gateway that asks for one, with --tls-key (or JOBGATE_CLIENT_CERT).", valueName: "file")
    )
    var certificateFile: String?

    @Option(name: .customLong("tls-key"), help: ArgumentHelp("Private key (PEM) of --tls-cert (or JOBGATE_CLIENT_KEY).", valueName: "file"))
    var keyFile: String?

    /// The TLS context to connect with, or nil for plain TCP. The files are read here, so a wrong path is a usage
    /// error naming it before anything connects.
    func context() throws -> NIOSSLContext? {
        let environment = ProcessInfo.processInfo.environment
        let caFile = caFile ?? environment["JOBGATE_TLS_CA"]
        let certificateFile = certificateFile ?? environment["JOBGATE_CLIENT_CERT"]
        let keyFile = keyFile ?? environment["JOBGATE_CLIENT_KEY"]
        guard enabled || environment["JOBGATE_TLS"] == "1" || caFile != nil || certificateFile != nil else { return nil }
        var tls = TLSConfiguration.makeClientConfiguration()
        do {
            if let caFile { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile)) }
            switch (certificateFile, keyFile) {
            case (nil, nil): break
            case let (certificateFile?, keyFile?):
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
            default: throw ValidationError("--tls-cert and --tls-key go together")
            }
            return try NIOSSLContext(configuration: tls)
        } catch let error as ValidationError {
            throw error
        } catch {
            throw ValidationError("TLS files: \(error)")
        }
    }

    /// Puts TLS first in a new connection's pipeline. The certificate is checked against `host`, or against its
    /// IP addresses when `host` is one.
    static func secure(_ channel: any Channel, context: NIOSSLContext?, host: String) throws {
        guard let context else { return }
        let isAddress = (try? SocketAddress(ipAddress: host, port: 0)) != nil
        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: isAddress ? nil : host))
    }
}
