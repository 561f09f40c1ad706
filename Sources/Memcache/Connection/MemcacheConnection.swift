import Logging
import NIOCore
import NIOPosix

/// One TCP connection to one memcached, with pipelining: any number of requests in flight, answered in order.
///
/// Keys and value sizes are checked before anything is written, so a bad key is a thrown `.invalidKey` and the
/// connection stays usable. If the connection drops, every waiting request fails with `.connectionClosed`; if the
/// server stops answering for `requestTimeout`, they fail with `.timeout` and the connection closes. A cancelled
/// caller gets `.cancelled` at once. Nothing waits forever.
public final class MemcacheConnection: Sendable {
    public struct Configuration: Sendable {
        /// Largest value accepted for writing and reading (memcached's default item size limit is 1 MiB).
        public var maximumValueSize: Int
        /// Longest reply line accepted (a `VALUE` header holds a key of at most 250 bytes).
        public var maximumLineLength: Int
        public var connectTimeout: Duration
        /// How long the server may go without answering while requests wait.
        public var requestTimeout: Duration

        public init(
            maximumValueSize: Int = 1 << 20,
            maximumLineLength: Int = 4096,
            connectTimeout: Duration = .seconds(5),
            requestTimeout: Duration = .seconds(10)
        ) {
            self.maximumValueSize = maximumValueSize
            self.maximumLineLength = maximumLineLength
            self.connectTimeout = connectTimeout
            self.requestTimeout = requestTimeout
        }
    }

    public let configuration: Configuration
    /// `host:port`, for error messages.
    public let address: String
    private let channel: any Channel

    private init(channel: any Channel, address: String, configuration: Configuration) {
        self.channel = channel
        self.address = address
        self.configuration = configuration
    }

    /// Opens a connection; `.connectionFailed` if the server cannot be reached.
    public static func connect(
        host: String,
        port: Int,
        configuration: Configuration = Configuration(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "jobgate.memcache")
    ) async throws(MemcacheError) -> MemcacheConnection {
        let address = "\(host):\(port)"
        var logger = logger
        logger[metadataKey: "memcache.server"] = "\(address)"
        do {
            let channel = try await ClientBootstrap(group: eventLoopGroup)
                .connectTimeout(TimeAmount(configuration.connectTimeout))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { [logger] channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            MemcacheChannelHandler(configuration: configuration, logger: logger)
                        )
                    }
                }
                .connect(host: host, port: port)
                .get()
            logger.debug("connected to memcached")
            return MemcacheConnection(channel: channel, address: address, configuration: configuration)
        } catch {
            throw MemcacheError(.connectionFailed, "cannot connect", server: address, underlying: error)
        }
    }

    /// False once the connection has closed; a closed connection fails every request at once.
    public var isActive: Bool { channel.isActive }

    public func close() async {
        try? await channel.close()
    }

    // MARK: Pipelining

    /// Sends all `requests` in one write and one flush and returns their replies in order.
    ///
    /// Every request is validated first; if one is invalid nothing is sent. `ERROR`, `CLIENT_ERROR` and
    /// `SERVER_ERROR` come back as replies here (they answer one request and leave the stream in sync); connection
    /// failures throw.
    public func execute(_ requests: [MemcacheRequest]) async throws(MemcacheError) -> [MemcacheReply] {
        guard !requests.isEmpty else { return [] }
        for request in requests {
            do { try request.validate(maximumValueSize: configuration.maximumValueSize) } catch { throw error.at(address) }
        }
        let promises = requests.map { _ in channel.eventLoop.makePromise(of: MemcacheReply.self) }
        let address = self.address
        channel.writeAndFlush(MemcacheBatch(requests: requests, promises: promises)).whenFailure { error in
            // The handler has already failed the promises if it saw the batch; a closed channel never passes it
            // to the handler, so fail them here (completing a promise twice is a no-op in NIO).
            let failure = error as? MemcacheError ?? MemcacheError(.connectionClosed, "connection is closed", server: address, underlying: error)
            for promise in promises { promise.fail(failure) }
        }
        // A cancelled caller stops waiting at once; its requests are still answered and the replies dropped, so
        // the stream stays in sync (completing a failed promise again is a no-op).
        let results = await withTaskCancellationHandler {
            var results: [Result<MemcacheReply, any Error>] = []
            results.reserveCapacity(promises.count)
            for promise in promises {
                do { results.append(.success(try await promise.futureResult.get())) } catch { results.append(.failure(error)) }
            }
            return results
        } onCancel: {
            for promise in promises { promise.fail(MemcacheError(.cancelled, "request cancelled", server: address)) }
        }
        var replies: [MemcacheReply] = []
        replies.reserveCapacity(requests.count)
        for result in results {
            switch result {
            case .success(let reply): replies.append(reply)
            case .failure(let error as MemcacheError): throw error.at(address)
            case .failure(let error): throw MemcacheError(.connectionClosed, "request failed", server: address, underlying: error)
            }
        }
        return replies
    }

    /// One request; `ERROR`/`CLIENT_ERROR`/`SERVER_ERROR` are thrown.
    public func execute(_ request: MemcacheRequest) async throws(MemcacheError) -> MemcacheReply {
        let reply = try await execute([request])[0]
        if let failure = reply.failure { throw failure.at(address) }
        return reply
    }

    // MARK: Commands

    /// The item under `key`, or nil on a miss.
    public func get(_ key: String) async throws(MemcacheError) -> MemcacheItem? {
        try await get([key]).first
    }

    /// The hits among `keys`, in the server's order (misses are absent).
    public func get(_ keys: [String]) async throws(MemcacheError) -> [MemcacheItem] {
        guard !keys.isEmpty else { return [] }
        return try values(of: try await execute(.get(keys)))
    }

    /// Like `get`, with each item's CAS unique.
    public func gets(_ keys: [String]) async throws(MemcacheError) -> [MemcacheItem] {
        guard !keys.isEmpty else { return [] }
        return try values(of: try await execute(.gets(keys)))
    }

    /// Stores `data`; `exptime` as in the protocol (0 = no expiry, ≤ 30 days relative, else a Unix time).
    public func set(_ key: String, to data: ByteBuffer, flags: UInt32 = 0, exptime: Int32 = 0) async throws(MemcacheError) {
        let reply = try await execute(.store(.set, key: key, flags: flags, exptime: exptime, data: data))
        guard reply == .stored else { throw unexpected(reply, for: "set") }
    }

    /// Runs a storage command and returns its status (`stored`, `notStored`, `exists`, `notFound`).
    public func store(
        _ command: MemcacheStoreCommand,
        _ key: String,
        data: ByteBuffer,
        flags: UInt32 = 0,
        exptime: Int32 = 0
    ) async throws(MemcacheError) -> MemcacheReply {
        try await execute(.store(command, key: key, flags: flags, exptime: exptime, data: data))
    }

    /// Deletes `key`; false if it did not exist.
    @discardableResult
    public func delete(_ key: String) async throws(MemcacheError) -> Bool {
        switch try await execute(.delete(key)) {
        case .deleted: return true
        case .notFound: return false
        case let reply: throw unexpected(reply, for: "delete")
        }
    }

    /// Sets a new expiry for `key`; false if it did not exist.
    @discardableResult
    public func touch(_ key: String, exptime: Int32) async throws(MemcacheError) -> Bool {
        switch try await execute(.touch(key, exptime: exptime)) {
        case .touched: return true
        case .notFound: return false
        case let reply: throw unexpected(reply, for: "touch")
        }
    }

    /// The server's version string.
    public func version() async throws(MemcacheError) -> String {
        let reply = try await execute(.version)
        guard case .version(let text) = reply else { throw unexpected(reply, for: "version") }
        return text
    }

    private func values(of reply: MemcacheReply) throws(MemcacheError) -> [MemcacheItem] {
        guard case .values(let items) = reply else { throw unexpected(reply, for: "get") }
        return items
    }

    private func unexpected(_ reply: MemcacheReply, for command: String) -> MemcacheError {
        MemcacheError(.unexpectedResponse, "\(command) answered \(reply)", server: address)
    }
}
