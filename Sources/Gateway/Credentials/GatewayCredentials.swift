import Crypto
import Foundation
import _CryptoExtras

/// What a credential may do, each on the functions its patterns match.
public enum GatewayScope: String, CaseIterable, Sendable {
    /// `SUBMIT` (with `wait=`, also `read`).
    case submit
    /// `STATUS`, `RESULT`, `WAIT`, `WATCH` of a job whose id the client holds.
    case read
    /// `SUBSCRIBE`: the terminal event of every job of the function, whoever submitted it.
    case subscribe
    /// `STATS`: the gateway's figures.
    case admin
}

/// A function-name glob: `*` matches any run of bytes (also none), `?` one byte, anything else itself.
public struct FunctionPattern: Hashable, Sendable, CustomStringConvertible {
    public let description: String
    private let bytes: [UInt8]

    public init?(_ text: String) {
        guard !text.isEmpty, !text.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F || $0 == UInt8(ascii: ",") }) else { return nil }
        description = text
        bytes = Array(text.utf8)
    }

    /// Linear-time glob matching: on a mismatch, the last `*` takes one more byte (no recursion, no blow-up).
    public func matches(_ function: String) -> Bool {
        let name = Array(function.utf8)
        var (p, n) = (0, 0)
        var star: (p: Int, n: Int)?
        while n < name.count {
            if p < bytes.count && bytes[p] == UInt8(ascii: "*") {
                star = (p, n)
                p += 1
            } else if p < bytes.count && (bytes[p] == UInt8(ascii: "?") || bytes[p] == name[n]) {
                p += 1
                n += 1
            } else if let last = star {
                star = (last.p, last.n + 1)
                (p, n) = (last.p + 1, last.n + 1)
            } else {
                return false
            }
        }
        while p < bytes.count && bytes[p] == UInt8(ascii: "*") { p += 1 }
        return p == bytes.count
    }
}

/// A secret as the credentials file keeps it: `pbkdf2-sha256$<rounds>$<salt>$<key>` (salt and key in base64).
///
/// PBKDF2-HMAC-SHA256 from swift-crypto's `_CryptoExtras` (BoringSSL): the slow, salted KDF the package already
/// has. Scrypt would cost memory per guess as well, but every `AUTH` would then cost the gateway that memory too.
public struct SecretHash: Hashable, Sendable, CustomStringConvertible {
    /// The fewest rounds the file may ask for (swift-crypto's checked minimum); `jobgate credentials hash` uses more.
    public static let minimumRounds = 210_000
    public static let defaultRounds = 600_000
    static let scheme = "pbkdf2-sha256"

    public let rounds: Int
    let salt: [UInt8]
    let key: [UInt8]

    public init?(_ text: String) {
        let parts = text.split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == Self.scheme, let rounds = Int(parts[1]), rounds >= Self.minimumRounds,
            let salt = Data(base64Encoded: String(parts[2])), salt.count >= 16,
            let key = Data(base64Encoded: String(parts[3])), key.count == 32
        else { return nil }
        self.rounds = rounds
        self.salt = Array(salt)
        self.key = Array(key)
    }

    private init(rounds: Int, salt: [UInt8], key: [UInt8]) {
        self.rounds = rounds
        self.salt = salt
        self.key = key
    }

    /// A new hash of `secret` under a random salt; `rounds` must be at least `minimumRounds`.
    public static func make(_ secret: String, rounds: Int = defaultRounds) -> SecretHash {
        precondition(rounds >= minimumRounds, "PBKDF2 rounds below the minimum")
        let salt = (0..<16).map { _ in UInt8.random(in: .min ... .max) }
        return SecretHash(rounds: rounds, salt: salt, key: derive(secret, salt: salt, rounds: rounds))
    }

    /// Whether `secret` is the one hashed: the whole KDF runs, then the keys are compared without an early exit.
    /// Slow on purpose (tens to hundreds of milliseconds): call it off the event loop.
    public func verifies(_ secret: String) -> Bool {
        constantTimeEqual(Self.derive(secret, salt: salt, rounds: rounds), key)
    }

    /// A hash no secret matches in practice, for unknown names: they cost the same KDF as a wrong secret.
    static func decoy(rounds: Int) -> SecretHash {
        SecretHash(rounds: rounds, salt: [UInt8](repeating: 0, count: 16), key: (0..<32).map { _ in UInt8.random(in: .min ... .max) })
    }

    private static func derive(_ secret: String, salt: [UInt8], rounds: Int) -> [UInt8] {
        // Cannot throw: rounds are at least the minimum, and 32 bytes is a valid length for SHA-256.
        let key = try! KDF.Insecure.PBKDF2.deriveKey(from: Array(secret.utf8), salt: salt, using: .sha256, outputByteCount: 32, rounds: rounds)
        return key.withUnsafeBytes { Array($0) }
    }

    public var description: String {
        "\(Self.scheme)$\(rounds)$\(Data(salt).base64EncodedString())$\(Data(key).base64EncodedString())"
    }
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
func constantTimeEqual(_ left: [UInt8], _ right: [UInt8]) -> Bool {
    var difference = UInt8(truncatingIfNeeded: left.count ^ right.count)
    for index in 0..<max(left.count, right.count) {
        difference |= (index < left.count ? left[index] : 0) ^ (index < right.count ? right[index] : 0)
    }
    return difference == 0
}

/// One credential: a name, its secrets (two while one is rotated), the client-certificate subjects that prove it
/// (mutual TLS), and the functions each scope covers.
public struct GatewayCredential: Sendable {
    public let name: String
    public let secrets: [SecretHash]
    /// Verified client-certificate subjects (`CN=…,O=…`, as the gateway logs them) that are this credential.
    public let subjects: [String]
    public let grants: [GatewayScope: [FunctionPattern]]

    public init(name: String, secrets: [SecretHash], subjects: [String] = [], grants: [GatewayScope: [FunctionPattern]]) {
        self.name = name
        self.secrets = secrets
        self.subjects = subjects
        self.grants = grants
    }

    public func permits(_ scope: GatewayScope, function: String) -> Bool {
        grants[scope]?.contains { $0.matches(function) } ?? false
    }

    /// Whether the scope covers any function at all: a read by id needs the job's function, known only once read.
    public func holds(_ scope: GatewayScope) -> Bool {
        !(grants[scope] ?? []).isEmpty
    }

    /// Names are 1–64 of `A-Z a-z 0-9 _ . -`: they appear in Redis keys (per-credential coalescing) and in logs.
    static func isValidName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy { $0.isASCIIAlphanumeric || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") }
    }
}

/// The credentials file (`--credentials`): one credential per line.
///
/// ```
/// # name    secret hash(es), comma-separated, or -          scope=pattern,… and subject=<certificate subject>
/// resizer   pbkdf2-sha256$600000$<salt>$<key>                submit=resize,thumb-* read=resize,thumb-*
/// ops       pbkdf2-sha256$600000$<salt>$<key>,pbkdf2-…       read=* subscribe=* admin=*
/// billing   -                                                subject=CN=billing,O=acme submit=billing read=billing
/// ```
/// `#` starts a comment; a name appears once; a scope may be given once per line; `subject=` any number of times
/// (its text is the rest of the word: a subject with a space or `#` cannot be listed).
public struct GatewayCredentials: Sendable {
    public let byName: [String: GatewayCredential]
    /// Client-certificate subject → credential name.
    let bySubject: [String: String]
    /// What a check runs besides a credential's own secrets: an unknown name, and a name with fewer secrets than
    /// another (one being rotated has two), is checked against this hash (the most rounds any secret uses) until
    /// every check has run `kdfsPerCheck` KDFs, so that no name takes longer than another.
    let decoy: SecretHash
    let kdfsPerCheck: Int
    /// Names, then 8 hex digits of a SHA-256 over every credential: a reload's log says whether the file changed,
    /// without showing a hash.
    public let summary: String

    public init(_ credentials: [GatewayCredential]) {
        byName = Dictionary(credentials.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        bySubject = Dictionary(credentials.flatMap { credential in credential.subjects.map { ($0, credential.name) } }, uniquingKeysWith: { first, _ in first })
        decoy = SecretHash.decoy(rounds: credentials.flatMap(\.secrets).map(\.rounds).max() ?? SecretHash.defaultRounds)
        kdfsPerCheck = max(1, credentials.map(\.secrets.count).max() ?? 1)
        let described = byName.values.sorted { $0.name < $1.name }.map { credential in
            let grants = credential.grants.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.rawValue)=\($0.value.map(\.description))" }
            return "\(credential.name) \(credential.secrets.map(\.description)) \(credential.subjects) \(grants)"
        }
        let digest = SHA256.hash(data: Array(described.joined(separator: "\n").utf8)).prefix(4).map { String(format: "%02x", $0) }.joined()
        summary = "\(byName.keys.sorted().joined(separator: ",")) #\(digest)"
    }

    public subscript(name: String) -> GatewayCredential? { byName[name] }

    /// The credential a verified client certificate with this subject is (mutual TLS), if one lists it.
    public func credential(forSubject subject: String) -> GatewayCredential? { bySubject[subject].flatMap { byName[$0] } }

    /// Parses the file's text; `source` names it in errors (`path:line: …`).
    public init(parsing text: String, source: String) throws(GatewayCredentialsError) {
        var credentials: [GatewayCredential] = []
        var seen: Set<String> = []
        var seenSubjects: Set<String> = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            func failure(_ message: String) -> GatewayCredentialsError { GatewayCredentialsError("\(source):\(index + 1): \(message)") }
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            guard !words.isEmpty else { continue }
            guard words.count >= 2 else { throw failure("expected `<name> <secret-hash>[,…]|- [subject=<subject>]… <scope>=<pattern>[,…]…`") }
            let name = words[0]
            guard GatewayCredential.isValidName(name) else { throw failure("invalid name `\(name)`: 1-64 of A-Z a-z 0-9 _ . -") }
            guard seen.insert(name).inserted else { throw failure("`\(name)` is listed twice; list both secrets on one line to rotate") }
            var secrets: [SecretHash] = []
            for text in words[1] == "-" ? [] : words[1].split(separator: ",") {
                guard let hash = SecretHash(String(text)) else {
                    throw failure("not a secret hash (`jobgate credentials hash` prints one; at least \(SecretHash.minimumRounds) rounds)")
                }
                secrets.append(hash)
            }
            var subjects: [String] = []
            var grants: [GatewayScope: [FunctionPattern]] = [:]
            for grant in words.dropFirst(2) {
                if grant.hasPrefix("subject=") {
                    let subject = String(grant.dropFirst("subject=".count))
                    guard !subject.isEmpty else { throw failure("empty subject") }
                    guard seenSubjects.insert(subject).inserted else { throw failure("subject `\(subject)` is listed twice") }
                    subjects.append(subject)
                    continue
                }
                let parts = grant.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                guard parts.count == 2, let scope = GatewayScope(rawValue: parts[0]) else {
                    throw failure("expected <scope>=<pattern>[,…] with a scope of \(GatewayScope.allCases.map(\.rawValue).joined(separator: ", ")), got `\(grant)`")
                }
                guard grants[scope] == nil else { throw failure("scope \(scope.rawValue) given twice") }
                let patterns = parts[1].split(separator: ",", omittingEmptySubsequences: false).map { FunctionPattern(String($0)) }
                guard !patterns.isEmpty, !patterns.contains(where: { $0 == nil }) else { throw failure("empty or invalid function pattern in `\(grant)`") }
                grants[scope] = patterns.compactMap { $0 }
            }
            guard !secrets.isEmpty || !subjects.isEmpty else { throw failure("no secret hash and no subject: nothing could prove `\(name)`") }
            credentials.append(GatewayCredential(name: name, secrets: secrets, subjects: subjects, grants: grants))
        }
        self.init(credentials)
    }

    public static func load(path: String) throws(GatewayCredentialsError) -> GatewayCredentials {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw GatewayCredentialsError("cannot read credentials file \(path): \(error.localizedDescription)")
        }
        return try GatewayCredentials(parsing: text, source: path)
    }

    /// The credential `name` proves with `secret`, or nil: an unknown name and a wrong secret take the same path
    /// (the same number of full KDFs, then nil), so neither timing nor answer tells which it was. Slow: call it off
    /// the event loop.
    public func verify(name: String, secret: String) -> GatewayCredential? {
        let credential = byName[name]
        let hashes = credential?.secrets ?? []
        var matched = false
        // Every hash is tried, whichever matches: the work does not depend on which secret (if any) is right.
        for hash in hashes + Array(repeating: decoy, count: max(0, kdfsPerCheck - hashes.count)) where hash.verifies(secret) {
            matched = matched || hashes.contains(hash)
        }
        return matched ? credential : nil
    }

    /// One line of the file for `name` with a new hash of `secret` (what `jobgate credentials hash` prints).
    public static func line(name: String, secret: String, grants: [String], rounds: Int = SecretHash.defaultRounds) -> String {
        ([name, SecretHash.make(secret, rounds: rounds).description] + grants).joined(separator: " ")
    }
}

public struct GatewayCredentialsError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

extension UInt8 {
    fileprivate var isASCIIAlphanumeric: Bool {
        (self >= UInt8(ascii: "a") && self <= UInt8(ascii: "z")) || (self >= UInt8(ascii: "A") && self <= UInt8(ascii: "Z"))
            || (self >= UInt8(ascii: "0") && self <= UInt8(ascii: "9"))
    }
}
