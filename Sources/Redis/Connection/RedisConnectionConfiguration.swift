public import NIOSSL

/// Where and how to connect to one Redis server.
public struct RedisConnectionConfiguration: Sendable {
    /// `AUTH password` (`requirepass`) or, with a username, `AUTH username password` (ACL).
    public struct Authentication: Sendable {
        public var username: String?
        public var password: String

        public init(username: String? = nil, password: String) {
            self.username = username
            self.password = password
        }
    }

    public var host: String
    public var port: Int
    public var authentication: Authentication?
    /// `SELECT db` after connecting. Pub/sub ignores it: notification channels name their db.
    public var database: Int?
    public var connectTimeout: Duration
    /// Longest wait for the oldest reply in flight; when it passes, every request fails with
    /// `.timeout` and the connection closes. Blocking commands (`BLPOP`, `XREAD BLOCK`) need it to be
    /// longer than their own timeout; `nil` waits forever.
    public var commandTimeout: Duration?
    /// Largest reply accepted, in bytes on the wire; a larger one closes the connection.
    public var maximumReplySize: Int
    /// TLS to Redis (`tls-port`), checking the server's certificate against `host` (or its IP address); nil: plain TCP.
    /// ``RedisConnectionConfiguration/tls(caFile:certificateFile:keyFile:)`` makes one from files.
    public var tls: TLSConfiguration?
    /// With Sentinel: connect to the primary it names instead of `host:port`, check with `ROLE` that the server is the
    /// primary, and close when it stops being it (a failover, a `READONLY` reply). Shared by every connection of a process.
    public var primaryLocator: RedisPrimaryLocator?

    public init(
        host: String = "127.0.0.1",
        port: Int = 6379,
        authentication: Authentication? = nil,
        database: Int? = nil,
        connectTimeout: Duration = .seconds(5),
        commandTimeout: Duration? = .seconds(30),
        maximumReplySize: Int = RedisReplyDecoder.defaultMaximumReplySize,
        tls: TLSConfiguration? = nil,
        primaryLocator: RedisPrimaryLocator? = nil
    ) {
        self.tls = tls
        self.host = host
        self.port = port
        self.authentication = authentication
        self.database = database
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.maximumReplySize = maximumReplySize
        self.primaryLocator = primaryLocator
    }

    /// `host:port`: where a connection goes without a locator, and where one went with it.
    public var address: RedisAddress { RedisAddress(host: host, port: port) }

    /// What to call the server in messages: `host:port`, or the primary's name and its sentinels.
    public var serverDescription: String {
        guard let locator = primaryLocator else { return "\(address)" }
        let sentinel = locator.configuration
        return "primary \(sentinel.primaryName) of sentinels \(sentinel.sentinels.map(\.description).joined(separator: ","))"
    }
}

extension RedisConnectionConfiguration {
    /// TLS that trusts the authorities in `caFile` (PEM) and, for a Redis with `tls-auth-clients yes` (its default),
    /// presents the client certificate in `certificateFile` with its key. Reads the files now, so a wrong path is
    /// an error at start, naming the file.
    public static func tls(caFile: String, certificateFile: String? = nil, keyFile: String? = nil) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        do {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
        } catch {
            throw RedisError(.connectionFailed, "cannot read the Redis TLS CA file \(caFile): \(error)")
        }
        switch (certificateFile, keyFile) {
        case (nil, nil):
            break
        case let (certificateFile?, keyFile?):
            do {
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
            } catch {
                throw RedisError(.connectionFailed, "cannot read the Redis TLS client certificate \(certificateFile) or key \(keyFile): \(error)")
            }
        default:
            throw RedisError(.connectionFailed, "a Redis TLS client certificate needs both its certificate file and its key file")
        }
        return tls
    }
}
