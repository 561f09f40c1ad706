import Foundation

/// A throwaway certificate authority and certificates it signs, made with the `openssl` CLI in a temporary folder
/// at test time: no private key is ever committed. `remove()` deletes the folder.
///
/// ```swift
/// let certificates = try await TestCertificates.make()
/// let server = try await certificates.issue("server")                       // localhost, 127.0.0.1, ::1
/// let expired = try await certificates.issue("old", expired: true)
/// ```
public final class TestCertificates: Sendable {
    /// A certificate and its key, as PEM files.
    public struct Issued: Sendable {
        public let certificateFile: String
        public let keyFile: String
    }

    public let directory: URL
    /// The authority's certificate: the CA file clients (and a server checking client certificates) trust.
    public let caFile: String
    private let caKeyFile: String

    private init(directory: URL, caFile: String, caKeyFile: String) {
        self.directory = directory
        self.caFile = caFile
        self.caKeyFile = caKeyFile
    }

    /// A new authority named `name` in a new temporary folder.
    public static func make(name: String = "jobgate test CA") async throws -> TestCertificates {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-certificates-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let certificates = TestCertificates(
            directory: directory,
            caFile: directory.appendingPathComponent("ca.pem").path,
            caKeyFile: directory.appendingPathComponent("ca.key").path
        )
        try await openssl(
            ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=\(name)",
             "-keyout", certificates.caKeyFile, "-out", certificates.caFile]
        )
        // `openssl ca` (not `x509 -req`) can set any validity period, so an expired certificate needs no clock tricks.
        try "".write(to: directory.appendingPathComponent("index.txt"), atomically: true, encoding: .utf8)
        try "01\n".write(to: directory.appendingPathComponent("serial"), atomically: true, encoding: .utf8)
        try """
            [ca]
            default_ca = test
            [test]
            database = \(directory.path)/index.txt
            new_certs_dir = \(directory.path)
            serial = \(directory.path)/serial
            default_md = sha256
            policy = anything
            copy_extensions = copy
            unique_subject = no
            [anything]
            countryName = optional
            stateOrProvinceName = optional
            localityName = optional
            organizationName = optional
            organizationalUnitName = optional
            commonName = supplied
            """.write(to: directory.appendingPathComponent("ca.cnf"), atomically: true, encoding: .utf8)
        return certificates
    }

    /// A certificate for `hosts` (DNS names and IP addresses; empty for a client certificate) signed by this
    /// authority; `expired` makes one that ran out in 2020. `subject` is the name it is issued to.
    public func issue(
        _ name: String,
        subject: String = "/CN=localhost",
        hosts: [String] = ["localhost", "127.0.0.1", "::1"],
        expired: Bool = false
    ) async throws -> Issued {
        let base = directory.appendingPathComponent(name).path
        let issued = Issued(certificateFile: base + ".pem", keyFile: base + ".key")
        var request = ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", subject,
                       "-keyout", issued.keyFile, "-out", base + ".csr"]
        if !hosts.isEmpty {
            let isAddress = { (host: String) in host.contains(":") || host.allSatisfy { $0.isNumber || $0 == "." } }
            let names = hosts.map { isAddress($0) ? "IP:\($0)" : "DNS:\($0)" }
            request += ["-addext", "subjectAltName=\(names.joined(separator: ","))"]
        }
        try await Self.openssl(request)
        let validity = expired ? ["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"] : ["-days", "2"]
        try await Self.openssl(
            ["ca", "-batch", "-notext", "-preserveDN", "-config", directory.appendingPathComponent("ca.cnf").path, "-cert", caFile, "-keyfile", caKeyFile,
             "-in", base + ".csr", "-out", issued.certificateFile] + validity
        )
        return issued
    }

    public func remove() {
        try? FileManager.default.removeItem(at: directory)
    }

    private static func openssl(_ arguments: [String]) async throws {
        let run = try await runProgram("/usr/bin/openssl", arguments)
        guard run.status == 0 else {
            throw LocalServerError(message: "openssl \(arguments.prefix(2).joined(separator: " ")) exited \(run.status): \(run.errors)")
        }
    }
}
