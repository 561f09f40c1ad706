import Foundation
@testable import Gateway
import GatewayProtocol
import InMemoryLogging
import LocalServers
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Redis
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// TLS on every hop: the line-protocol and HTTP ports (certificates good and bad, mutual TLS, plain text, a slow
/// handshake, a reload), Redis over TLS, and the command-line and example clients over TLS. Every certificate is
/// made at test time by a throwaway authority.
@Suite("TLS", .timeLimit(.minutes(2)))
struct TLSTests {
    /// A good certificate: PING over TLS, and the HTTP port speaks HTTPS with the same certificate.
    @Test func goodCertificate() async throws {
        try await withCertificates { certificates in
            let server = try await certificates.issue("server")
            try await withGatewayStack({ $0.tls = .init(certificateFile: server.certificateFile, keyFile: server.keyFile); $0.httpPort = 0 }) { stack in
                let client = try await GatewayTestClient.connect(port: stack.port, tls: try clientContext(trusting: certificates.caFile))
                defer { Task { await client.close() } }
                #expect(try await client.request("PING\n") == .reply(.pong, tag: nil))

                let http = try await stack.gateway.waitUntilHTTPListening().port!
                let curl = try await runProgram("/usr/bin/curl", ["-sS", "--cacert", certificates.caFile, "https://127.0.0.1:\(http)/healthz"])
                #expect(curl.status == 0, "\(curl.errors)")
                #expect(curl.outputText == "ok\n", "\(curl.outputText)")
                let plainHTTP = try await runProgram("/usr/bin/curl", ["-sS", "http://127.0.0.1:\(http)/healthz"])
                #expect(plainHTTP.status != 0, "plain HTTP on the HTTPS port gets no page: \(plainHTTP.outputText)")
            }
        }
    }

    /// Certificates a client must refuse: expired, issued for another host, and signed by an authority it does not
    /// trust (or, with the system's trust, by none it knows). The same client trusting the same CA gets through a
    /// good certificate (in `goodCertificate`), so each refusal here is the certificate's doing.
    @Test(arguments: ["expired", "wrong host", "untrusted", "system trust"])
    func refusedCertificates(_ kind: String) async throws {
        try await withCertificates { certificates in
            let other = try await TestCertificates.make(name: "another CA")
            defer { other.remove() }
            let server: TestCertificates.Issued
            switch kind {
            case "expired": server = try await certificates.issue("server", expired: true)
            case "wrong host": server = try await certificates.issue("server", subject: "/CN=other.example", hosts: ["other.example"])
            default: server = try await certificates.issue("server")
            }
            let trusted: String? = switch kind {
            case "untrusted": other.caFile
            case "system trust": nil
            default: certificates.caFile
            }
            try await withGatewayStack({ $0.tls = .init(certificateFile: server.certificateFile, keyFile: server.keyFile) }) { stack in
                let outcome = await handshake(port: stack.port, context: try clientContext(trusting: trusted))
                guard case .failure(let error) = outcome else {
                    Issue.record("\(kind): the client accepted the certificate")
                    return
                }
                if kind == "wrong host" {
                    #expect("\(error)".contains("failedToValidateHostname"), "\(error)")
                } else {
                    #expect("\(error)".contains("CERTIFICATE_VERIFY_FAILED"), "\(error)")
                }
            }
        }
    }

    /// Mutual TLS: a client certificate from the clients' authority gets in and its subject reaches the session;
    /// no certificate, or one from another authority, ends the handshake; the gateway logs why and goes on.
    @Test func mutualTLS() async throws {
        try await withCertificates { certificates in
            let clients = try await TestCertificates.make(name: "clients CA")
            let stranger = try await TestCertificates.make(name: "strangers CA")
            defer { clients.remove(); stranger.remove() }
            let server = try await certificates.issue("server")
            let alice = try await clients.issue("alice", subject: "/CN=alice/O=acme", hosts: [])
            let mallory = try await stranger.issue("mallory", subject: "/CN=mallory", hosts: [])
            let logs = InMemoryLogHandler()
            var logger = Logger(label: "test.gateway") { _ in logs }
            logger.logLevel = .debug  // the subject is logged at debug
            try await withGatewayStack(
                { $0.tls = .init(certificateFile: server.certificateFile, keyFile: server.keyFile, clientCAFile: clients.caFile) },
                logger: logger
            ) { stack in
                let client = try await GatewayTestClient.connect(port: stack.port, tls: try clientContext(trusting: certificates.caFile, presenting: alice))
                defer { Task { await client.close() } }
                #expect(try await client.request("PING\n") == .reply(.pong, tag: nil))
                #expect(logs.entries.contains { $0.message.description.contains("TLS client certificate") && $0.metadata["tls.subject"] == "CN=alice,O=acme" })

                for presenting in [nil, mallory] {
                    let outcome = await handshakeAndPing(port: stack.port, context: try clientContext(trusting: certificates.caFile, presenting: presenting))
                    #expect(outcome == nil, "\(presenting == nil ? "no" : "a stranger's") certificate: \(String(describing: outcome))")
                }
                try await eventually("the failed handshakes' log lines") {
                    logs.entries.filter { $0.message.description.hasPrefix("TLS handshake failed") }.count >= 2
                }
                let again = try await GatewayTestClient.connect(port: stack.port, tls: try clientContext(trusting: certificates.caFile, presenting: alice))
                defer { Task { await again.close() } }
                #expect(try await again.request("PING\n") == .reply(.pong, tag: nil), "the gateway goes on")

                // The command-line and example clients present a certificate with --tls-cert and --tls-key: an id
                // nobody issued gets through to NOT_FOUND with it, and no further than the handshake without.
                let unknown = "a" + String(repeating: "b", count: 38)
                let gateway = ["--gateway", "127.0.0.1:\(stack.port)", "--tls-ca", certificates.caFile]
                let withCertificate = ["--tls-cert", alice.certificateFile, "--tls-key", alice.keyFile]
                let status = try await runProgram(jobgateExecutable(), ["status", unknown] + gateway + withCertificate, timeout: .seconds(30))
                #expect(status.status == 5, "\(status.errors)")
                let refused = try await runProgram(jobgateExecutable(), ["status", unknown] + gateway, timeout: .seconds(30))
                #expect(refused.status == 6, "\(refused.errors)")
                for client in ExampleClient.allCases {
                    let run = try await client.run(stack, ["--tls-ca", certificates.caFile] + withCertificate + ["wait", unknown, "100"])
                    #expect(run.status == 2 && run.errors.hasPrefix("error: NOT_FOUND "), "\(client): \(run.errors)")
                    let without = try await client.run(stack, ["--tls-ca", certificates.caFile, "wait", unknown, "100"])
                    #expect(without.status == 2 && !without.errors.contains("NOT_FOUND"), "\(client): \(without.errors)")
                }
            }
        }
    }

    /// Mutual TLS with credentials: a verified certificate whose subject a credential lists is that credential
    /// without `AUTH` (its scopes apply: `NOPERM` outside them); one no credential lists must still `AUTH`.
    @Test func certificateSubjectsAreCredentials() async throws {
        try await withCertificates { certificates in
            let clients = try await TestCertificates.make(name: "clients CA")
            defer { clients.remove() }
            let server = try await certificates.issue("server")
            let billing = try await clients.issue("billing", subject: "/CN=billing/O=acme", hosts: [])
            let other = try await clients.issue("other", subject: "/CN=other/O=acme", hosts: [])
            let credentials = try GatewayCredentials(parsing: "billing - subject=CN=billing,O=acme submit=billing read=billing", source: "test")
            try await withGatewayStack({
                $0.tls = .init(certificateFile: server.certificateFile, keyFile: server.keyFile, clientCAFile: clients.caFile)
                $0.credentials = credentials
            }) { stack in
                let client = try await GatewayTestClient.connect(port: stack.port, tls: try clientContext(trusting: certificates.caFile, presenting: billing))
                defer { Task { await client.close() } }
                guard case .reply(.created, nil) = try await client.request("SUBMIT billing 1\nx\n") else {
                    Issue.record("the certificate's credential may submit billing")
                    return
                }
                guard case .reply(.error(code: .noPermission, _), nil) = try await client.request("SUBMIT payroll 1\nx\n") else {
                    Issue.record("billing may not submit payroll")
                    return
                }
                guard case .reply(.error(code: .noPermission, _), nil) = try await client.request("STATS\n") else {
                    Issue.record("billing is no admin")
                    return
                }

                let unlisted = try await GatewayTestClient.connect(port: stack.port, tls: try clientContext(trusting: certificates.caFile, presenting: other))
                defer { Task { await unlisted.close() } }
                guard case .reply(.error(code: .noAuth, _), nil) = try await unlisted.request("SUBMIT billing 1\nx\n") else {
                    Issue.record("a certificate no credential lists must AUTH")
                    return
                }
            }
        }
    }

    /// Over the connection limit a TLS client gets its `ERR BUSY` over TLS, after the handshake, then is closed;
    /// connections still in their handshake count against the limit, and leave it when they close without one.
    @Test func connectionLimit() async throws {
        try await withCertificates { certificates in
            let server = try await certificates.issue("server")
            try await withGatewayStack({ $0.tls = .init(certificateFile: server.certificateFile, keyFile: server.keyFile); $0.maximumConnections = 2 }) { stack in
                let context = try clientContext(trusting: certificates.caFile)
                let first = try await GatewayTestClient.connect(port: stack.port, tls: context)
                defer { Task { await first.close() } }
                #expect(try await first.request("PING\n") == .reply(.pong, tag: nil))
                var handshaking: LoopbackSocket? = try LoopbackSocket(port: stack.port)  // connected, no handshake
                let refused = try await GatewayTestClient.connect(port: stack.port, tls: context)
                try await refused.expectError(.busy)
                #expect(try await refused.next() == nil, "a refused connection is closed")
                #expect(handshaking != nil)
                handshaking = nil  // closes it
                try await eventually("a place for a new connection, once the one in its handshake closed") {
                    guard let next = try? await GatewayTestClient.connect(port: stack.port, tls: context) else { return false }
                    defer { Task { await next.close() } }
                    return (try? await next.request("PING\n")) == .reply(.pong, tag: nil)
                }
            }
        }
    }

    /// Plain text on the TLS ports: the connection is closed, a log line says why, the gateway goes on.
    @Test func plainTextOnTheTLSPort() async throws {
        try await withCertificates { certificates in
            let server = try await certificates.issue("server")
            let logs = InMemoryLogHandler()
            try await withGatewayStack(
                { $0.tls = .init(certificateFile: server.certificateFile, keyFile: server.keyFile); $0.httpPort = 0 },
                logger: Logger(label: "test.gateway") { _ in logs }
            ) { stack in
                let http = try await stack.gateway.waitUntilHTTPListening().port!
                for (port, request) in [(stack.port, "PING\r\nPING\r\n"), (http, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")] {
                    let socket = try LoopbackSocket(port: port, timeoutMs: 5_000)
                    try socket.send(Array(request.utf8))
                    let answer = try socket.receive { _ in false }
                    #expect(!String(decoding: answer, as: UTF8.self).contains("PONG") && !String(decoding: answer, as: UTF8.self).contains("200"))
                }
                try await eventually("the plain-text log lines") {
                    logs.entries.filter { $0.message.description.contains("plain text to a TLS port") }.count >= 2
                }
                let client = try await GatewayTestClient.connect(port: stack.port, tls: try clientContext(trusting: certificates.caFile))
                defer { Task { await client.close() } }
                #expect(try await client.request("PING\n") == .reply(.pong, tag: nil))
            }
        }
    }

    /// A client that connects and never finishes the handshake is closed at `--tls-handshake-timeout`, long before
    /// the idle timeout.
    @Test func slowHandshake() async throws {
        try await withCertificates { certificates in
            let server = try await certificates.issue("server")
            let logs = InMemoryLogHandler()
            try await withGatewayStack(
                { $0.tls = .init(certificateFile: server.certificateFile, keyFile: server.keyFile, handshakeTimeout: .seconds(1)) },
                logger: Logger(label: "test.gateway") { _ in logs }
            ) { stack in
                #expect(stack.configuration.idleTimeout >= .seconds(60))
                let socket = try LoopbackSocket(port: stack.port, timeoutMs: 20_000)
                try socket.send([0x16, 0x03, 0x01])  // the start of a ClientHello, and no more
                #expect(try socket.receive { _ in false }.isEmpty, "closed without a word")
                #expect(logs.entries.contains { $0.message.description.contains("TLS handshake not finished in time") })
            }
        }
    }

    /// SIGHUP rereads the certificate files: a connection made after it gets the renewed certificate, one made
    /// before keeps working.
    @Test func hangupReloadsTheCertificate() async throws {
        try await withCertificates { certificates in
            let first = try await certificates.issue("first", subject: "/CN=first")
            let second = try await certificates.issue("second", subject: "/CN=second")
            let live = certificates.directory.appendingPathComponent("live")
            try FileManager.default.createDirectory(at: live, withIntermediateDirectories: true)
            let (certificate, key) = (live.appendingPathComponent("cert.pem").path, live.appendingPathComponent("key.pem").path)
            func install(_ issued: TestCertificates.Issued) throws {
                for (from, to) in [(issued.certificateFile, certificate), (issued.keyFile, key)] {
                    try? FileManager.default.removeItem(atPath: to)
                    try FileManager.default.copyItem(atPath: from, toPath: to)
                }
            }
            try install(first)
            try await withLocalServer(.gearmand) { gearmand in
                try await withLocalServer(.redis) { redis in
                    let port = try freeLoopbackPort()
                    let gateway = try LocalProcess(
                        jobgateExecutable(),
                        ["serve", "--listen", "127.0.0.1:\(port)", "--gearman", gearmand.address, "--redis", redis.address,
                         "--tls-cert", certificate, "--tls-key", key]
                    )
                    defer { gateway.stop() }
                    try await eventually("the gateway to listen") { gateway.log.contains("gateway listening") }
                    let context = try clientContext(trusting: certificates.caFile)
                    #expect(try await handshake(port: port, context: context).get()?.commonName == "first")
                    let before = try await GatewayTestClient.connect(port: port, tls: context)
                    defer { Task { await before.close() } }
                    #expect(try await before.request("PING\n") == .reply(.pong, tag: nil))

                    try install(second)
                    gateway.signal(SIGHUP)
                    try await eventually("the reload's log line") { gateway.log.contains("configuration reloaded") }
                    #expect(try await handshake(port: port, context: context).get()?.commonName == "second", "\(gateway.log)")
                    #expect(try await before.request("PING\n") == .reply(.pong, tag: nil))

                    // A certificate file that cannot be read on the next reload changes nothing: logged, and the
                    // running certificate stays.
                    try "not a certificate".write(toFile: certificate, atomically: true, encoding: .utf8)
                    gateway.signal(SIGHUP)
                    try await eventually("the refused reload's log line") { gateway.log.contains("configuration not reloaded") }
                    #expect(gateway.log.contains("cannot read the TLS certificate \(certificate)"), "\(gateway.log)")
                    #expect(try await handshake(port: port, context: context).get()?.commonName == "second")
                }
            }
        }
    }

    /// SIGTERM with TLS connections open ends them as it ends plain ones: what was read is answered (a pending
    /// WAIT, the PING behind it), then the connection closes and the gateway exits 0. (TLS cannot close only its
    /// input, which `close(mode: .input)` asks for.)
    @Test func stopsGracefullyWithTLSConnections() async throws {
        try await withCertificates { certificates in
            let server = try await certificates.issue("server")
            try await withLocalServer(.gearmand) { gearmand in
                try await withLocalServer(.redis) { redis in
                    let port = try freeLoopbackPort()
                    let gateway = try LocalProcess(
                        jobgateExecutable(),
                        ["serve", "--listen", "127.0.0.1:\(port)", "--gearman", gearmand.address, "--redis", redis.address,
                         "--tls-cert", server.certificateFile, "--tls-key", server.keyFile]
                    )
                    defer { gateway.stop() }
                    try await eventually("the gateway to listen") { gateway.log.contains("gateway listening") }
                    let client = try await GatewayTestClient.connect(port: port, tls: try clientContext(trusting: certificates.caFile))
                    defer { Task { await client.close() } }
                    let id = try #require(try await client.request(submitLine("nobody-runs-this", "x"))?.createdID)
                    try await client.send("WAIT \(id) 60000\nPING\n")
                    try await Task.sleep(for: .milliseconds(500))  // both read and the WAIT pending before the signal
                    gateway.signal(SIGTERM)
                    let waited = try await client.next()
                    #expect(waited != nil && waited != .reply(.pong, tag: nil), "the WAIT is answered: \(String(describing: waited))")
                    #expect(try await client.next() == .reply(.pong, tag: nil))
                    #expect(try await client.next() == nil, "then the connection closes")
                    #expect(try await gateway.waitForExit() == 0, "\(gateway.log)")
                }
            }
        }
    }

    /// TLS files that cannot be used stop the start and `--check-config` (exit 78), naming the file.
    @Test func unusableFilesAreConfigurationErrors() async throws {
        try await withCertificates { certificates in
            let server = try await certificates.issue("server")
            let other = try await certificates.issue("other")
            let missing = certificates.directory.appendingPathComponent("missing.pem").path
            for (arguments, message) in [
                (["--tls-cert", missing, "--tls-key", server.keyFile], "cannot read the TLS certificate \(missing)"),
                (["--tls-cert", server.certificateFile, "--tls-key", other.keyFile], "cannot be used together"),
                (["--tls-cert", server.certificateFile], "needs both tls-cert and tls-key"),
                (["--redis-tls-ca", missing], "cannot read the Redis TLS CA file \(missing)"),
            ] {
                let run = try await runProgram(jobgateExecutable(), ["serve", "--check-config"] + arguments, timeout: .seconds(10))
                #expect(run.status == 78, "\(arguments): \(run.outputText)")
                #expect(run.errors.contains(message), "\(arguments): \(run.errors)")
            }
            let good = try await runProgram(
                jobgateExecutable(), ["serve", "--check-config", "--tls-cert", server.certificateFile, "--tls-key", server.keyFile], timeout: .seconds(10)
            )
            #expect(good.status == 0 && good.outputText.contains("tls-cert = \(server.certificateFile)"), "\(good.errors)")
        }
    }

    /// The main path through a Redis that speaks only TLS to them (and asks for client certificates): `jobgate
    /// submit` over TLS to `jobgate serve`, whose job `jobgate worker` runs; both keep the job in that Redis.
    @Test func mainPathThroughATLSRedis() async throws {
        try await withCertificates { certificates in
            let server = try await certificates.issue("server")
            let redisCertificate = try await certificates.issue("redis")
            let redisClient = try await certificates.issue("redis-client", subject: "/CN=jobgate", hosts: [])
            let tlsPort = try freeLoopbackPort()
            let redisTLS = [
                "--tls-port", "\(tlsPort)", "--tls-cert-file", redisCertificate.certificateFile, "--tls-key-file", redisCertificate.keyFile,
                "--tls-ca-cert-file", certificates.caFile,
            ]
            try await withLocalServer(.gearmand) { gearmand in
                try await withLocalServer(.redis, arguments: redisTLS) { redis in
                    let redisOptions = [
                        "--redis", "127.0.0.1:\(tlsPort)", "--redis-tls-ca", certificates.caFile,
                        "--redis-tls-cert", redisClient.certificateFile, "--redis-tls-key", redisClient.keyFile,
                    ]
                    let port = try freeLoopbackPort()
                    let gateway = try LocalProcess(
                        jobgateExecutable(),
                        ["serve", "--listen", "127.0.0.1:\(port)", "--gearman", gearmand.address, "--tls-cert", server.certificateFile,
                         "--tls-key", server.keyFile] + redisOptions
                    )
                    defer { gateway.stop() }
                    let worker = try LocalProcess(
                        jobgateExecutable(), ["worker", "--function", "tls.upper", "--gearman", gearmand.address] + redisOptions + ["--", "tr", "a-z", "A-Z"]
                    )
                    defer { worker.stop() }
                    try await eventually("the gateway to listen", timeout: .seconds(20)) { gateway.log.contains("gateway listening") }

                    let submit = try await runProgram(
                        jobgateExecutable(), ["submit", "tls.upper", "--data", "hello", "--wait", "20", "--gateway", "127.0.0.1:\(port)", "--tls-ca", certificates.caFile],
                        timeout: .seconds(30)
                    )
                    #expect(submit.status == 0, "\(submit.errors)\n\(gateway.log)\n\(worker.log)")
                    #expect(submit.outputText == "HELLO", "\(submit.outputText)")

                    // The record is in the TLS Redis (its plain port serves the same data, for this check only).
                    let keys = try LoopbackSocket.exchange(port: redis.port, request: Array("KEYS jobgate:*\r\n".utf8), timeoutMs: 2_000)
                    #expect(!keys.isEmpty && keys != Array("*0\r\n".utf8), "\(String(decoding: keys, as: UTF8.self))")

                    let plain = try await runProgram(
                        jobgateExecutable(), ["submit", "tls.upper", "--data", "x", "--wait", "5", "--gateway", "127.0.0.1:\(port)"], timeout: .seconds(30)
                    )
                    #expect(plain.status == 6, "plain text to the TLS port: \(plain.outputText) \(plain.errors)")
                    let untrusted = try await runProgram(
                        jobgateExecutable(), ["submit", "tls.upper", "--data", "x", "--wait", "5", "--gateway", "127.0.0.1:\(port)", "--tls"], timeout: .seconds(30)
                    )
                    #expect(untrusted.status == 6, "\(untrusted.errors)")
                    #expect(untrusted.errors.contains("CERTIFICATE_VERIFY_FAILED"), "\(untrusted.errors)")
                }
            }
        }
    }

    /// A Redis connection checks the server's certificate: its own CA gets through, another's is a connect error
    /// that says it was the TLS handshake.
    @Test func redisConnectionChecksTheCertificate() async throws {
        try await withCertificates { certificates in
            let other = try await TestCertificates.make(name: "another CA")
            defer { other.remove() }
            let redisCertificate = try await certificates.issue("redis")
            let tlsPort = try freeLoopbackPort()
            let arguments = [
                "--tls-port", "\(tlsPort)", "--tls-cert-file", redisCertificate.certificateFile, "--tls-key-file", redisCertificate.keyFile,
                "--tls-ca-cert-file", certificates.caFile, "--tls-auth-clients", "no",
            ]
            try await withLocalServer(.redis, arguments: arguments) { _ in
                let good = try await RedisConnection.connect(
                    configuration: .init(port: tlsPort, tls: try RedisConnectionConfiguration.tls(caFile: certificates.caFile))
                )
                #expect(try await good.send(["PING"]) == .simpleString("PONG"))
                await good.close()
                await #expect {
                    _ = try await RedisConnection.connect(configuration: .init(port: tlsPort, tls: try RedisConnectionConfiguration.tls(caFile: other.caFile)))
                } throws: { error in
                    "\(error)".contains("TLS handshake") && "\(error)".contains("CERTIFICATE_VERIFY_FAILED")
                }
            }
        }
    }

    /// The PHP and Python example clients speak TLS with `--tls-ca`: submit, watch and wait through a TLS gateway.
    @Test(arguments: ExampleClient.allCases)
    func exampleClients(_ client: ExampleClient) async throws {
        try await withCertificates { certificates in
            let server = try await certificates.issue("server")
            try await withGatewayStack({ $0.tls = .init(certificateFile: server.certificateFile, keyFile: server.keyFile) }) { stack in
                try await withTestWorker(stack, ["examples.tls": { job, _ in ByteBuffer(bytes: Array(job.readableBytesView.reversed())) }]) {
                    let run = try await client.run(stack, ["--tls-ca", certificates.caFile, "submit", "examples.tls", "abc", "5000"])
                    #expect(run.status == 0, "\(run.outputText) \(run.errors)")
                    #expect(run.outputText.hasSuffix("WAIT DONE 636261\n"), "\(run.outputText)")
                    let plain = try await client.run(stack, ["submit", "examples.tls", "abc", "2000"])
                    #expect(plain.status == 2, "plain text to the TLS port: \(plain.outputText)")
                }
            }
        }
    }

    /// The subject as the session gets it: `CN=…,O=…` in the certificate's order.
    @Test func subjectText() async throws {
        try await withCertificates { certificates in
            let issued = try await certificates.issue("someone", subject: "/C=DE/O=acme/OU=billing/CN=svc-1", hosts: [])
            let certificate = try #require(try NIOSSLCertificate.fromPEMFile(issued.certificateFile).first)
            #expect(TLSHandshakeGate.subject(of: certificate) == "C=DE,O=acme,OU=billing,CN=svc-1")
        }
    }
}

// MARK: Helpers

private func withCertificates<T>(_ body: (TestCertificates) async throws -> T) async throws -> T {
    let certificates = try await TestCertificates.make()
    defer { certificates.remove() }
    return try await body(certificates)
}

/// A client's TLS: trusting the authority in `caFile` (nil: the system's), presenting `certificate` if given.
private func clientContext(trusting caFile: String?, presenting certificate: TestCertificates.Issued? = nil) throws -> NIOSSLContext {
    var tls = TLSConfiguration.makeClientConfiguration()
    if let caFile { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile)) }
    if let certificate {
        tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate.certificateFile).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: certificate.keyFile, format: .pem))
    }
    return try NIOSSLContext(configuration: tls)
}

/// Runs a TLS handshake with the gateway (checking its certificate against 127.0.0.1) and returns the
/// certificate it presented, or the error that ended the handshake.
private func handshake(port: Int, context: NIOSSLContext) async -> Result<NIOSSLCertificate?, any Error> {
    let promise = MultiThreadedEventLoopGroup.singleton.any().makePromise(of: NIOSSLCertificate?.self)
    do {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: nil))
                    try channel.pipeline.syncOperations.addHandler(HandshakeOutcome(promise: promise))
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        defer { channel.close(promise: nil) }
        return .success(try await promise.futureResult.get())
    } catch {
        promise.fail(error)  // when the connection itself failed
        return .failure(error)
    }
}

/// Under TLS 1.3 a client finishes its handshake before the server has checked the client's certificate: whether
/// the gateway let it in shows in whether a PING gets its PONG. Returns the reply, nil when the connection closed.
private func handshakeAndPing(port: Int, context: NIOSSLContext) async -> GatewayResponse? {
    guard let client = try? await GatewayTestClient.connect(port: port, tls: context) else { return nil }
    defer { Task { await client.close() } }
    return try? await client.request("PING\n")
}

private final class HandshakeOutcome: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let promise: EventLoopPromise<NIOSSLCertificate?>

    init(promise: EventLoopPromise<NIOSSLCertificate?>) { self.promise = promise }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent {
            promise.succeed(try? context.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self).peerCertificate)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { promise.fail(error) }
    func channelInactive(context: ChannelHandlerContext) { promise.fail(ChannelError.eof) }
}

extension NIOSSLCertificate {
    fileprivate var commonName: String? { subjectName.first { $0.type == .commonName }?.value }
}
