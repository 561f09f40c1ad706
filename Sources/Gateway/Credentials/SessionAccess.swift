import GatewayProtocol

/// What an authenticated connection may do: everything (no authentication, or `AUTH <secret>` with one of
/// `--secrets`), or what a named credential of the credentials file allows.
///
/// A credential is looked up by name at every check, so a reload (SIGHUP) that changes or removes it applies to the
/// next requests of connections already authenticated with it (what they follow already, they keep).
enum SessionAccess: Sendable {
    case everything
    case credential(name: String)

    /// The credential's scopes now; nil for `.everything`. A credential removed by a reload has none.
    private func credential(in credentials: GatewayCredentials?) -> GatewayCredential? {
        guard case .credential(let name) = self else { return nil }
        return credentials?[name] ?? GatewayCredential(name: name, secrets: [], grants: [:])
    }

    /// Why `command` is refused (the text of `ERR NOPERM`), or nil when it may run. Reads by id are checked again
    /// once the job's function is known (`mayRead(_:in:)`).
    func refusal(of command: GatewayCommand, in credentials: GatewayCredentials?) -> String? {
        guard let credential = credential(in: credentials) else { return nil }
        func needs(_ scope: GatewayScope, _ function: GatewayFunctionName) -> String? {
            credential.permits(scope, function: function.rawValue) ? nil : "\(credential.name) may not \(scope.rawValue) \(function)"
        }
        switch command {
        case .submit(let submission):
            return needs(.submit, submission.function) ?? (submission.waitMilliseconds == nil ? nil : needs(.read, submission.function))
        case .status, .result, .wait, .watch:
            return credential.holds(.read) ? nil : "\(credential.name) may not read jobs"
        case .subscribe(let function, _):
            return needs(.subscribe, function)
        case .stats:
            return credential.holds(.admin) ? nil : "\(credential.name) may not use admin commands"
        case .hello, .auth, .ping, .health, .quit, .unwatch, .unsubscribe:
            return nil
        }
    }

    /// Whether a job of `function` may be read (`STATUS`, `RESULT`, `WAIT`, `WATCH`) by id.
    func mayRead(function: String, in credentials: GatewayCredentials?) -> Bool {
        credential(in: credentials)?.permits(.read, function: function) ?? true
    }

    /// The namespace of `unique=` keys: each credential coalesces only with its own submissions, so a guessed key
    /// cannot reveal another tenant's job id. nil: the deployment-wide namespace (everyone holding a `--secrets`
    /// secret, or everyone when there is no authentication, shares it).
    var coalescingNamespace: String? {
        guard case .credential(let name) = self else { return nil }
        return name
    }

    static func refused(_ text: String) -> GatewayReply {
        .error(code: .noPermission, message: text)
    }
}
