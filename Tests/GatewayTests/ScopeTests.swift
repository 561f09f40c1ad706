import Gateway
import GatewayProtocol
import NIOCore
import Testing

/// Credentials with scopes (`--credentials`): `AUTH <name> <secret>`, `ERR NOPERM` for a verb outside the scope,
/// coalescing per credential, rotation, and that a name nobody has fails like a wrong secret.
@Suite("Gateway credentials and scopes", .timeLimit(.minutes(3)))
struct ScopeTests {
    static let rounds = SecretHash.minimumRounds

    /// One credential per scope on `rev*`, two tenants, one with two secrets (rotation), and one that may do all.
    static func credentials() -> GatewayCredentials {
        func credential(_ name: String, _ secrets: [String], _ grants: [GatewayScope: [String]]) -> GatewayCredential {
            GatewayCredential(
                name: name, secrets: secrets.map { SecretHash.make($0, rounds: rounds) },
                grants: grants.mapValues { $0.map { FunctionPattern($0)! } }
            )
        }
        return GatewayCredentials([
            credential("submitter", ["s"], [.submit: ["rev*"]]),
            credential("reader", ["r"], [.read: ["rev*"]]),
            credential("subscriber", ["b"], [.subscribe: ["rev*"]]),
            credential("admin", ["a"], [.admin: ["*"]]),
            credential("all", ["x"], [.submit: ["*"], .read: ["*"], .subscribe: ["*"]]),
            credential("tenant-a", ["ta"], [.submit: ["reverse"], .read: ["reverse"]]),
            credential("tenant-b", ["tb"], [.submit: ["reverse"], .read: ["reverse"]]),
            credential("rotating", ["old", "new"], [.read: ["*"]]),
        ])
    }

    static func configure(_ configuration: inout GatewayConfiguration) {
        configuration.credentials = credentials()
        configuration.secrets = ["shared"]
    }

    static func authenticated(_ stack: GatewayStack, _ name: String, _ secret: String) async throws -> GatewayTestClient {
        let client = try await stack.connect()
        #expect(try await client.request("AUTH \(name) \(secret)\n") == .reply(.ok), "AUTH \(name)")
        return client
    }

    /// Every verb under every scope: what the scope covers runs, the rest is `NOPERM` (the connection stays usable),
    /// and a scope on `rev*` does not reach `other`. Verbs that need no scope (PING, HELLO, HEALTH, UNWATCH,
    /// UNSUBSCRIBE) always run.
    @Test func everyVerbUnderEveryScope() async throws {
        try await withGatewayStack(Self.configure) { stack in
            let all = try await Self.authenticated(stack, "all", "x")
            let reverseJob = try await all.submit("reverse", "abc")
            let otherJob = try await all.submit("other", "abc")
            let reverse = GatewayFunctionName(rawValue: "reverse")!

            // The verbs, each with what it answers when allowed.
            func run(_ client: GatewayTestClient, _ verb: String, allowed: Bool) async throws {
                try await client.send(verb + "\n")
                let response = try await client.next()
                if allowed {
                    if case .reply(.error(let code, let message), _) = response { Issue.record("\(verb): ERR \(code) \(message)") }
                } else {
                    guard case .reply(.error(.noPermission, _), nil) = response else {
                        Issue.record("\(verb): expected NOPERM, got \(String(describing: response))")
                        return
                    }
                }
            }
            let verbs: [(verb: String, scope: GatewayScope?)] = [
                ("SUBMIT reverse 3\nabc", .submit),
                ("STATUS \(reverseJob)", .read),
                ("RESULT \(reverseJob)", .read),
                ("WAIT \(reverseJob) 10", .read),
                ("WATCH \(reverseJob)", .read),
                ("SUBSCRIBE reverse", .subscribe),
                ("STATS", .admin),
                ("UNWATCH \(reverseJob)", nil),
                ("UNSUBSCRIBE reverse", nil),
                ("PING", nil),
                ("HELLO", nil),
                ("HEALTH", nil),
            ]
            for (name, secret, scope) in [("submitter", "s", GatewayScope.submit), ("reader", "r", .read), ("subscriber", "b", .subscribe), ("admin", "a", .admin)] {
                let client = try await Self.authenticated(stack, name, secret)
                for (verb, needed) in verbs {
                    try await run(client, verb, allowed: needed == nil || needed == scope)
                }
                // Outside the pattern: another function.
                try await run(client, "SUBMIT other 3\nabc", allowed: false)
                try await run(client, "STATUS \(otherJob)", allowed: false)
                try await run(client, "WATCH \(otherJob)", allowed: false)
                try await run(client, "WAIT \(otherJob) 10", allowed: false)
                try await run(client, "RESULT \(otherJob)", allowed: false)
                try await run(client, "SUBSCRIBE other", allowed: false)
                // SUBMIT wait= reads the result: it needs read as well as submit.
                try await run(client, "SUBMIT reverse 3 wait=10\nabc", allowed: false)
                try await client.expectUsable()
                await client.close()
            }
            // The reader's WATCH of a job it may read is a real watch; with both scopes, SUBMIT wait= works.
            let reader = try await Self.authenticated(stack, "reader", "r")
            #expect(try await reader.request("WATCH \(reverseJob)\n") == .reply(.watching(reverseJob, GatewayJobStatus(.queued))))
            #expect(try await all.request("SUBSCRIBE reverse\n") == .reply(.subscribed(reverse)))
            try await all.send("SUBMIT other 3 wait=10\nabc\n")
            guard case .reply(.timeout, nil) = try await all.next() else {
                Issue.record("SUBMIT wait= with submit and read did not run")
                return
            }
        }
    }

    /// Two tenants with the same unique key get different jobs; each joins only its own (EXISTS); `AUTH <secret>`
    /// (the deployment-wide namespace) gets a third. So a guessed unique key never answers another tenant's id.
    @Test func tenantsCoalesceApart() async throws {
        try await withGatewayStack(Self.configure) { stack in
            let a = try await Self.authenticated(stack, "tenant-a", "ta")
            let b = try await Self.authenticated(stack, "tenant-b", "tb")
            let shared = try await stack.connect()
            #expect(try await shared.request("AUTH shared\n") == .reply(.ok))
            let first = try await a.submit("reverse", "1", options: "unique=daily-2024-06-01")
            let second = try await b.submit("reverse", "2", options: "unique=daily-2024-06-01")
            let third = try await shared.submit("reverse", "3", options: "unique=daily-2024-06-01")
            #expect(Set([first, second, third]).count == 3)
            #expect(try await a.request("SUBMIT reverse 1 unique=daily-2024-06-01\n1\n") == .reply(.exists(first)))
            #expect(try await b.request("SUBMIT reverse 1 unique=daily-2024-06-01\n1\n") == .reply(.exists(second)))
            #expect(try await shared.request("SUBMIT reverse 1 unique=daily-2024-06-01\n1\n") == .reply(.exists(third)))
        }
    }

    /// Rotation: both listed secrets work. A wrong secret and an unknown name get the same `DENIED` text, are both
    /// counted as failures, and both count towards `--auth-failures`; a credential's secret is no `--secrets` secret.
    @Test func rotationWrongSecretAndUnknownName() async throws {
        try await withGatewayStack({ Self.configure(&$0); $0.maximumAuthFailures = 4; $0.authFailureDelay = .milliseconds(5) }) { stack in
            for secret in ["old", "new"] {
                let client = try await Self.authenticated(stack, "rotating", secret)
                try await client.send("STATUS \(GatewayJobID.unissued)\n")
                try await client.expectError(.notFound)  // authenticated and allowed to read: the id is simply unknown
                await client.close()
            }
            let client = try await stack.connect()
            try await client.send("AUTH rotating wrong\n")
            let wrong = try await client.expectError(.denied)
            try await client.send("AUTH nobody old\n")
            let unknown = try await client.expectError(.denied)
            #expect(wrong == "wrong name or secret" && unknown == wrong)
            try await client.send("AUTH old\n")  // a credential's secret alone is not one of --secrets
            try await client.expectError(.denied)
            try await client.send("STATUS \(GatewayJobID.unissued)\n")
            try await client.expectError(.noAuth)
            try await client.send("AUTH nobody x\n")
            let last = try await client.expectError(.denied)
            #expect(last?.contains("closing") == true)
            #expect(try await client.next() == nil)
        }
    }

    /// A flood of pipelined AUTHs by name is answered one at a time and ends at --auth-failures, however many
    /// were sent; the requests a client pipelines behind a good AUTH run authenticated.
    @Test func pipelinedAuthentication() async throws {
        try await withGatewayStack({ Self.configure(&$0); $0.maximumAuthFailures = 3; $0.authFailureDelay = .milliseconds(5) }) { stack in
            let flood = try await stack.connect()
            try await flood.send(String(repeating: "AUTH nobody guess\n", count: 50))
            for _ in 0..<3 { try await flood.expectError(.denied) }
            #expect(try await flood.next() == nil)

            let client = try await stack.connect()
            try await client.send("AUTH reader r\nSTATUS \(GatewayJobID.unissued)\n")
            #expect(try await client.next() == .reply(.ok))
            try await client.expectError(.notFound)
        }
    }

    /// Without a credentials file, `AUTH <name> <secret>` is a wrong secret (it was BAD_FORMAT before the named
    /// form existed); the connection stays and `AUTH <secret>` works as ever.
    @Test func namedAuthWithoutCredentialsFile() async throws {
        try await withGatewayStack({ $0.secrets = ["s3cret"] }) { stack in
            let client = try await stack.connect()
            try await client.send("AUTH someone s3cret\n")
            #expect(try await client.expectError(.denied) == "wrong name or secret")
            #expect(try await client.request("AUTH s3cret\n") == .reply(.ok))
            try await client.send("STATUS \(GatewayJobID.unissued)\n")
            try await client.expectError(.notFound)
        }
    }

    /// A reload that drops a credential's scope applies to connections already authenticated with it.
    @Test func reloadAppliesToAuthenticatedConnections() async throws {
        try await withGatewayStack(Self.configure) { stack in
            let subscriber = try await Self.authenticated(stack, "subscriber", "b")
            #expect(try await subscriber.request("SUBSCRIBE reverse\n") == .reply(.subscribed(GatewayFunctionName(rawValue: "reverse")!)))
            var reloaded = stack.configuration
            reloaded.credentials = GatewayCredentials(Self.credentials().byName.values.filter { $0.name != "subscriber" })
            _ = stack.gateway.reload(reloaded)
            try await subscriber.send("SUBSCRIBE reverse\n")
            try await subscriber.expectError(.noPermission)
        }
    }

    /// With credentials, HELLO says auth=required even without --secrets, and job pages are off (403): the HTTP
    /// port has no credentials, so it cannot check `read`.
    @Test func helloAndJobPages() async throws {
        try await withGatewayStack({ $0.credentials = Self.credentials(); $0.httpPort = 0 }) { stack in
            let client = try await stack.connect()
            guard case .reply(.hello(let info), nil) = try await client.request("HELLO\n") else {
                Issue.record("no HELLO")
                return
            }
            #expect(info.authenticationRequired)
            try await client.send("AUTH anything\n")
            try await client.expectError(.denied)
            let all = try await Self.authenticated(stack, "all", "x")
            let id = try await all.submit("reverse", "abc")
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            #expect(try await httpRequest(port: http, "/jobs/\(id)").status == 403)
            #expect(try await httpRequest(port: http, "/jobs/\(id)/events").status == 403)
            #expect(try await httpRequest(port: http, "/healthz").status == 200)
        }
    }
}

extension GatewayJobID {
    /// Well-formed, never issued by any gateway.
    static let unissued = GatewayJobID(rawValue: String(repeating: "a", count: 39))!
}
