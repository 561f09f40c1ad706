import ArgumentParser
import Foundation
import Gateway

/// `jobgate credentials`: lines for the gateway's credentials file (`jobgate serve --credentials`).
struct Credentials: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make lines for the credentials file of `jobgate serve --credentials`.",
        subcommands: [Hash.self]
    )

    /// `jobgate credentials hash <name> [scope=pattern,…]…`: the secret from stdin, a line for the file on stdout.
    struct Hash: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Hash a secret (read from stdin, one line) and print a credentials-file line for it.",
            discussion: """
                Scopes: submit, read (STATUS, RESULT, WAIT, WATCH by id), subscribe, admin (STATS), each with \
                comma-separated function patterns (* any run, ? one character). To rotate a secret, add the new \
                line's hash to the credential's line after a comma, reload, move clients over, then drop the old one.

                Example:
                  printf '%s\\n' "$SECRET" | jobgate credentials hash resizer 'submit=resize,thumb-*' 'read=resize,thumb-*'
                """
        )

        @Argument(help: "The credential's name: 1-64 of A-Z a-z 0-9 _ . -")
        var name: String

        @Argument(help: "What it may do: scope=pattern[,pattern…]")
        var grants: [String] = []

        @Option(help: "PBKDF2-HMAC-SHA256 rounds (at least \(SecretHash.minimumRounds)). (default: \(SecretHash.defaultRounds))")
        var rounds: Int = SecretHash.defaultRounds

        func run() throws {
            guard rounds >= SecretHash.minimumRounds else { throw ValidationError("--rounds must be at least \(SecretHash.minimumRounds)") }
            guard let secret = readLine(strippingNewline: true), !secret.isEmpty, !secret.contains(where: \.isWhitespace) else {
                throw ValidationError("expected the secret on stdin: one word on one line")
            }
            let line = GatewayCredentials.line(name: name, secret: secret, grants: grants, rounds: rounds)
            do {
                _ = try GatewayCredentials(parsing: line, source: "the line")  // the same checks as the gateway's
            } catch {
                throw ValidationError(error.description)
            }
            print(line)
        }
    }
}
