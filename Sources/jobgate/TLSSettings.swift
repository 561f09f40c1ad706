import ArgumentParser
import Gateway
import NIOSSL
import Redis

/// `--redis-tls-ca`, `--redis-tls-cert` and `--redis-tls-key`: the same for `jobgate serve` and `jobgate worker`.
struct RedisTLSOptions: ParsableArguments {
    @Option(
        name: .customLong("redis-tls-ca"),
        help: ArgumentHelp("Speak TLS to Redis (its tls-port), trusting the authorities in this PEM file. (default: plain TCP)", valueName: "file")
    )
    var redisTLSCA: String?

    @Option(
        name: .customLong("redis-tls-cert"),
        help: ArgumentHelp("Client certificate (PEM) for a Redis with tls-auth-clients yes, with --redis-tls-key.", valueName: "file")
    )
    var redisTLSCert: String?

    @Option(name: .customLong("redis-tls-key"), help: ArgumentHelp("Private key (PEM) of --redis-tls-cert.", valueName: "file"))
    var redisTLSKey: String?

    /// The TLS configuration for Redis connections, from the options, the environment and the config file.
    func load(_ settings: Settings) throws(ConfigurationError) -> TLSConfiguration? {
        try settings.redisTLS(ca: redisTLSCA, certificate: redisTLSCert, key: redisTLSKey)
    }
}

/// TLS settings of `jobgate serve` and `jobgate worker`: certificate, key and CA files, read now so that a wrong
/// path or a key that does not match stops the start (or a reload) naming the file.
extension Settings {
    /// `redis-tls-ca` (TLS to Redis), with `redis-tls-cert` and `redis-tls-key` for a Redis that asks for a client
    /// certificate; nil without `redis-tls-ca`.
    func redisTLS(ca: String?, certificate: String?, key: String?) throws(ConfigurationError) -> TLSConfiguration? {
        let certificate = value("redis-tls-cert", certificate)
        let key = value("redis-tls-key", key)
        guard let ca = value("redis-tls-ca", ca) else {
            guard certificate == nil && key == nil else {
                throw ConfigurationError("redis-tls-cert and redis-tls-key need redis-tls-ca: the authority the Redis server's certificate is checked with")
            }
            return nil
        }
        do {
            return try RedisConnectionConfiguration.tls(caFile: ca, certificateFile: certificate, keyFile: key)
        } catch {
            throw ConfigurationError("\(error)")
        }
    }

    /// `tls-cert` and `tls-key` (TLS on the gateway's ports), `tls-client-ca` (mutual TLS), `tls-handshake-timeout`.
    func gatewayTLS(certificate: String?, key: String?, clientCA: String?, handshakeTimeout: Int?) throws(ConfigurationError) -> GatewayTLSConfiguration? {
        let certificate = value("tls-cert", certificate)
        let key = value("tls-key", key)
        let clientCA = value("tls-client-ca", clientCA)
        let timeout = try positive("tls-handshake-timeout", handshakeTimeout)
        guard let certificate, let key else {
            guard certificate == nil && key == nil && clientCA == nil else {
                throw ConfigurationError("TLS needs both tls-cert and tls-key (and tls-client-ca needs them too)")
            }
            return nil
        }
        var tls = GatewayTLSConfiguration(certificateFile: certificate, keyFile: key, clientCAFile: clientCA)
        if let timeout { tls.handshakeTimeout = .seconds(timeout) }
        do {
            _ = try tls.makeContext()
        } catch {
            throw ConfigurationError("\(error)")
        }
        return tls
    }
}
