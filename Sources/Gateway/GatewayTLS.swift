public import Logging
import NIOCore
public import NIOSSL
import NIOTLS
import Synchronization

/// TLS on the gateway's ports (`--tls-cert`, `--tls-key`): the line protocol and the HTTP port both speak it.
public struct GatewayTLSConfiguration: Sendable, Equatable {
    /// The server's certificate chain (PEM, leaf first) and its private key (PEM).
    public var certificateFile: String
    public var keyFile: String
    /// Mutual TLS: clients must present a certificate signed by an authority in this PEM file; its subject is
    /// the session's `tlsPeerSubject`.
    public var clientCAFile: String?
    /// Longest a client may take to finish the TLS handshake after connecting; then it is closed.
    public var handshakeTimeout: Duration = .seconds(10)

    public init(certificateFile: String, keyFile: String, clientCAFile: String? = nil, handshakeTimeout: Duration = .seconds(10)) {
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.clientCAFile = clientCAFile
        self.handshakeTimeout = handshakeTimeout
    }

    /// Reads the files; the error names the one that cannot be used.
    public func makeContext() throws -> NIOSSLContext {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificateFile)
        } catch {
            throw GatewayConfigurationError("cannot read the TLS certificate \(certificateFile): \(error)")
        }
        do {
            key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
        } catch {
            throw GatewayConfigurationError("cannot read the TLS key \(keyFile): \(error)")
        }
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        tls.minimumTLSVersion = .tlsv12
        if let clientCAFile {
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(clientCAFile))
            } catch {
                throw GatewayConfigurationError("cannot read the TLS client CA file \(clientCAFile): \(error)")
            }
            // A client has no host name to check; its certificate must chain to the CA and be in date.
            tls.certificateVerification = .noHostnameVerification
        }
        do {
            return try NIOSSLContext(configuration: tls)
        } catch {
            throw GatewayConfigurationError("the TLS certificate \(certificateFile) and key \(keyFile) cannot be used together: \(error)")
        }
    }
}

/// The TLS context new connections get: one owner, replaced on reload, so new connections use a renewed
/// certificate while open ones keep theirs.
final class GatewayTLSContext: Sendable {
    private let current = Mutex<(context: NIOSSLContext, configuration: GatewayTLSConfiguration)?>(nil)

    /// Reads the files of `configuration` and uses them from now on; on an error the context in use stays.
    func load(_ configuration: GatewayTLSConfiguration) throws {
        let context = try configuration.makeContext()
        current.withLock { $0 = (context, configuration) }
    }

    var value: (context: NIOSSLContext, configuration: GatewayTLSConfiguration)? { current.withLock { $0 } }

    /// Adds TLS in front of a new connection's handlers: `then` adds them once the handshake is done (with the
    /// client certificate's subject under mutual TLS), so nothing of the session runs for a client that never
    /// finishes it. Returns whether it waits for a handshake (false: TLS is off, `then` ran).
    @discardableResult
    func secure(
        _ channel: any Channel,
        port: String,
        logger: Logger,
        then: @escaping (ChannelPipeline.SynchronousOperations, _ peerSubject: String?) throws -> Void
    ) throws -> Bool {
        guard let current = value else {
            try then(channel.pipeline.syncOperations, nil)
            return false
        }
        let pipeline = channel.pipeline.syncOperations
        try pipeline.addHandler(NIOSSLServerHandler(context: current.context))
        try pipeline.addHandler(TLSInputClosing())
        try pipeline.addHandler(TLSHandshakeGate(timeout: TimeAmount(current.configuration.handshakeTimeout), port: port, logger: logger, then: then))
        return true
    }

    /// Adds TLS in front of the handlers the caller adds next, which see the connection from the start (the HTTP
    /// port's `NIOAsyncChannel`); the handshake deadline and failures are handled as for `secure(_:port:logger:then:)`.
    func secureInFront(_ channel: any Channel, port: String, logger: Logger) throws {
        guard let current = value else { return }
        let pipeline = channel.pipeline.syncOperations
        try pipeline.addHandler(NIOSSLServerHandler(context: current.context))
        try pipeline.addHandler(TLSHandshakeGate(timeout: TimeAmount(current.configuration.handshakeTimeout), port: port, logger: logger, then: nil))
    }
}

/// Stops reading a TLS connection the way `close(mode: .input)` stops a plain one (graceful shutdown: what was read
/// is answered, then the session closes). TLS cannot close only its input, so the handler behind this one is told
/// the input ended and gets no more of it.
final class TLSInputClosing: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private var inputClosed = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !inputClosed else { return }
        context.fireChannelRead(data)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .input else { return context.close(mode: mode, promise: promise) }
        if !inputClosed {
            inputClosed = true
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }
        promise?.succeed()
    }
}

/// Holds a connection until its TLS handshake is done: closes it at the handshake deadline, logs a failed handshake
/// (plain text on the TLS port, an untrusted or missing client certificate) and closes it, and otherwise adds the
/// connection's handlers and steps aside.
final class TLSHandshakeGate: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let timeout: TimeAmount
    private let port: String
    private let logger: Logger
    /// Adds the connection's handlers after the handshake; nil when they are in place already.
    private let then: ((ChannelPipeline.SynchronousOperations, String?) throws -> Void)?
    private var deadline: Scheduled<Void>?
    private var isActive = false
    private var isDone = false

    init(timeout: TimeAmount, port: String, logger: Logger, then: ((ChannelPipeline.SynchronousOperations, String?) throws -> Void)?) {
        self.timeout = timeout
        self.port = port
        self.logger = logger
        self.then = then
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        let (logger, port, timeout) = (self.logger, self.port, self.timeout)
        deadline = context.eventLoop.scheduleTask(in: timeout) {
            logger.notice(
                "TLS handshake not finished in time: connection closed",
                metadata: ["gateway.port": "\(port)", "client.address": "\(channel.remoteAddress.map { "\($0)" } ?? "?")", "tls.timeout": "\(timeout)"]
            )
            channel.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
    }

    func channelActive(context: ChannelHandlerContext) {
        // Handlers added after the handshake see the connection become active then, once it is secure.
        guard then != nil else { return context.fireChannelActive() }
        isActive = true
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent, !isDone else {
            return context.fireUserInboundEventTriggered(event)
        }
        isDone = true
        deadline?.cancel()
        do {
            let pipeline = context.pipeline.syncOperations
            if let then {
                let subject = try pipeline.handler(type: NIOSSLServerHandler.self).peerCertificate.map { Self.subject(of: $0) }
                if let subject {
                    logger.debug("TLS client certificate verified", metadata: ["gateway.port": "\(port)", "tls.subject": "\(subject)"])
                }
                try then(pipeline, subject)
            }
            if isActive { context.fireChannelActive() }
            pipeline.removeHandler(context: context, promise: nil)
        } catch {
            logger.error("connection not set up after its TLS handshake", metadata: ["gateway.port": "\(port)", "error": "\(error)"])
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !isDone else { return context.fireErrorCaught(error) }
        isDone = true
        logger.notice(
            "TLS handshake failed: connection closed\(Self.isPlainText(error) ? " (the client spoke plain text to a TLS port)" : "")",
            metadata: [
                "gateway.port": "\(port)", "client.address": "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")", "tls.error": "\(error)",
            ]
        )
        context.close(promise: nil)
    }

    /// BoringSSL's reasons for a first record that is no TLS: a request line, or any other text.
    private static func isPlainText(_ error: any Error) -> Bool {
        let text = "\(error)"
        return text.contains("WRONG_VERSION_NUMBER") || text.contains("HTTP_REQUEST") || text.contains("UNKNOWN_PROTOCOL")
    }

    /// The certificate's subject as `CN=…,O=…`, in the certificate's order.
    static func subject(of certificate: NIOSSLCertificate) -> String {
        certificate.subjectName.map { name in
            let label: String = switch name.type {
            case .commonName: "CN"
            case .organization: "O"
            case .organizationalUnit: "OU"
            case .country: "C"
            case .state: "ST"
            case .city: "L"
            case .emailAddress: "emailAddress"
            case .userId: "UID"
            default: "?"
            }
            return "\(label)=\(name.value)"
        }.joined(separator: ",")
    }
}
