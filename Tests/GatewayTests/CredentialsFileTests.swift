import Foundation
import Gateway
import Testing

/// The credentials file: its format, the function patterns, and the salted hashes secrets are kept as.
@Suite("Credentials file")
struct CredentialsFileTests {
    static let rounds = SecretHash.minimumRounds

    /// Patterns: `*` any run (also none), `?` one byte, the rest literally; the whole name must match.
    @Test func functionPatterns() throws {
        let cases: [(String, String, Bool)] = [
            ("resize", "resize", true), ("resize", "resize2", false), ("resize", "xresize", false),
            ("thumb-*", "thumb-", true), ("thumb-*", "thumb-large", true), ("thumb-*", "thumb", false),
            ("*", "anything", true), ("*-v?", "img-v2", true), ("*-v?", "img-v10", false),
            ("a*b*c", "aXbYbZc", true), ("a*b*c", "aXbYbZ", false), ("*a*a*a*a*b", String(repeating: "a", count: 200), false),
        ]
        for (pattern, function, expected) in cases {
            #expect(try #require(FunctionPattern(pattern)).matches(function) == expected, "\(pattern) ~ \(function)")
        }
        #expect(FunctionPattern("") == nil)
        #expect(FunctionPattern("a,b") == nil)
    }

    /// A hash verifies its secret and nothing else; two hashes of one secret differ (salted); the text round-trips.
    @Test func secretHashes() throws {
        let hash = SecretHash.make("s3cret", rounds: Self.rounds)
        #expect(hash.verifies("s3cret"))
        #expect(!hash.verifies("s3cres"))
        #expect(!hash.verifies(""))
        #expect(SecretHash.make("s3cret", rounds: Self.rounds).description != hash.description)
        let parsed = try #require(SecretHash(hash.description))
        #expect(parsed.verifies("s3cret"))
        #expect(hash.description.hasPrefix("pbkdf2-sha256$\(Self.rounds)$"))
        // Fewer rounds than the minimum are refused, not silently accepted.
        let weak = hash.description.replacingOccurrences(of: "$\(Self.rounds)$", with: "$1000$")
        #expect(SecretHash(weak) == nil)
    }

    /// A file of two credentials: scopes by function, rotation (two hashes, both work), comments; an unknown name
    /// and a wrong secret are both nil.
    @Test func parsesAndVerifies() throws {
        let old = SecretHash.make("old", rounds: Self.rounds)
        let new = SecretHash.make("new", rounds: Self.rounds)
        let text = """
            # name  secrets  scopes
            resizer \(old),\(new) submit=resize,thumb-* read=resize   # rotating

            ops \(SecretHash.make("ops", rounds: Self.rounds)) admin=* subscribe=*
            """
        let credentials = try GatewayCredentials(parsing: text, source: "test")
        let resizer = try #require(credentials["resizer"])
        #expect(resizer.permits(.submit, function: "thumb-small"))
        #expect(resizer.permits(.read, function: "resize"))
        #expect(!resizer.permits(.read, function: "thumb-small"))
        #expect(!resizer.holds(.subscribe) && !resizer.holds(.admin))
        #expect(credentials.verify(name: "resizer", secret: "old")?.name == "resizer")
        #expect(credentials.verify(name: "resizer", secret: "new")?.name == "resizer")
        #expect(credentials.verify(name: "resizer", secret: "ops") == nil)
        #expect(credentials.verify(name: "nobody", secret: "old") == nil)
        #expect(credentials.verify(name: "ops", secret: "ops")?.permits(.admin, function: "x") == true)
    }

    /// Each mistake names its line; nothing half-parsed is used.
    @Test(arguments: [
        ("bad/name HASH read=*", "invalid name"),
        ("a notahash read=*", "not a secret hash"),
        ("a HASH write=*", "expected <scope>"),
        ("a HASH read=", "invalid function pattern"),
        ("a HASH read=x read=y", "given twice"),
        ("a HASH read=x\na HASH read=y", "listed twice"),
        ("a", "expected `<name>"),
        ("a - read=*", "nothing could prove"),
        ("a - subject= read=*", "empty subject"),
        ("a - subject=CN=x read=*\nb - subject=CN=x read=*", "listed twice"),
    ])
    func refusesMistakes(line: String, message: String) throws {
        let text = line.replacingOccurrences(of: "HASH", with: SecretHash.make("x", rounds: Self.rounds).description)
        #expect {
            try GatewayCredentials(parsing: "# header\n" + text, source: "creds")
        } throws: { error in
            let description = (error as? GatewayCredentialsError)?.description ?? ""
            return description.contains(message) && description.hasPrefix("creds:")
        }
    }

    /// Mutual TLS: `subject=` names the client-certificate subjects that are a credential, commas and all; a
    /// credential may have a subject instead of a secret (`-`), and then no secret proves it.
    @Test func certificateSubjects() throws {
        let hash = SecretHash.make("pw", rounds: Self.rounds).description
        let text = """
            billing - subject=CN=billing,O=acme submit=billing read=billing
            both \(hash) subject=CN=both-1 subject=CN=both-2 read=*
            """
        let credentials = try GatewayCredentials(parsing: text, source: "creds")
        #expect(credentials.credential(forSubject: "CN=billing,O=acme")?.name == "billing")
        #expect(credentials.credential(forSubject: "CN=billing")?.name == nil)
        #expect(credentials.credential(forSubject: "CN=both-2")?.name == "both")
        #expect(credentials.verify(name: "billing", secret: "") == nil)
        #expect(credentials.verify(name: "billing", secret: "-") == nil)
        #expect(credentials.verify(name: "both", secret: "pw")?.name == "both")
    }

    /// `line(name:secret:grants:)` (what `jobgate credentials hash` prints) parses back to the credential.
    @Test func hashLineRoundTrips() throws {
        let line = GatewayCredentials.line(name: "svc", secret: "pw", grants: ["read=a*", "submit=a"], rounds: Self.rounds)
        let credentials = try GatewayCredentials(parsing: line, source: "line")
        #expect(credentials.verify(name: "svc", secret: "pw")?.permits(.read, function: "abc") == true)
    }
}
