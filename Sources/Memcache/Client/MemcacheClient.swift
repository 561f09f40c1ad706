public import JobgateSupport
import Logging
import NIOCore
import NIOPosix

/// A memcached client over the server list PHP workers use, placing keys as their extension does.
///
/// Connections open lazily, one per server, and are reopened after a drop; a server that cannot be reached gives
/// `.connectionFailed`, then `.serverUnavailable` until its reconnect back-off has passed. Call `shutdown()` when
/// done.
public final class MemcacheClient: Sendable {
    public struct Configuration: Sendable {
        public var connection: MemcacheConnection.Configuration
        /// The waits after failed connects, during which requests fail at once with `.serverUnavailable`.
        public var reconnectBackoff: Backoff
        /// Cap for inflating compressed PHP values.
        public var maximumDecompressedSize: Int

        public init(
            connection: MemcacheConnection.Configuration = .init(),
            reconnectBackoff: Backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(10)),
            maximumDecompressedSize: Int = PHPValue.defaultMaximumDecompressedSize
        ) {
            self.connection = connection
            self.reconnectBackoff = reconnectBackoff
            self.maximumDecompressedSize = maximumDecompressedSize
        }
    }

    public let selector: MemcacheServerSelector
    public let configuration: Configuration
    private let connections: [MemcacheServerConnection]

    /// - Parameters:
    ///   - servers: the workers' list, in their order, with their host strings, ports and weights.
    ///   - distribution: how their extension places keys (`.single` for one server).
    public init(
        servers: [MemcacheServer],
        distribution: MemcacheDistribution,
        configuration: Configuration = Configuration(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "jobgate.memcache")
    ) throws(MemcacheError) {
        self.selector = try MemcacheServerSelector(servers: servers, distribution: distribution)
        self.configuration = configuration
        self.connections = servers.map {
            MemcacheServerConnection(server: $0, configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger)
        }
    }

    /// Closes all connections; later requests fail with `.connectionClosed`.
    public func shutdown() async {
        for connection in connections { await connection.shutdown() }
    }

    /// The server that holds `key`.
    public func server(forKey key: String) -> MemcacheServer {
        selector.server(forKey: key)
    }

    private func connection(forKey key: String) async throws(MemcacheError) -> MemcacheConnection {
        try MemcacheKey.validate(key)
        return try await connections[selector.serverIndex(forKey: key)].connection()
    }

    // MARK: Raw items

    public func get(_ key: String) async throws(MemcacheError) -> MemcacheItem? {
        try await connection(forKey: key).get(key)
    }

    /// The current CAS counter of every server, in list order: each later write to a server gets a larger CAS.
    ///
    /// memcached numbers all writes of an instance from one counter, so a value whose CAS is above its server's
    /// watermark was written after the watermark was taken. Found by writing and reading back a probe key on
    /// each server.
    public func casWatermarks() async throws(MemcacheError) -> [UInt64] {
        var watermarks: [UInt64] = []
        for server in connections {
            let connection = try await server.connection()
            let probe = "jobgate:cas-watermark"
            try await connection.set(probe, to: ByteBuffer(string: "1"))
            guard let cas = try await connection.gets([probe]).first?.cas else {
                throw MemcacheError(.unexpectedResponse, "gets of the CAS probe returned no CAS", server: server.server.description)
            }
            watermarks.append(cas)
        }
        return watermarks
    }

    /// `gets`: the item with its CAS unique, which changes with every write of the key.
    public func gets(_ key: String) async throws(MemcacheError) -> MemcacheItem? {
        try await connection(forKey: key).gets([key]).first
    }

    /// The hits among `keys`, by key: one pipelined multi-get per server, the servers asked concurrently.
    public func get(_ keys: [String]) async throws(MemcacheError) -> [String: MemcacheItem] {
        var byServer: [Int: [String]] = [:]
        for key in Set(keys) {
            try MemcacheKey.validate(key)
            byServer[selector.serverIndex(forKey: key), default: []].append(key)
        }
        let groups = byServer
        let outcome = await withTaskGroup(of: Result<[MemcacheItem], MemcacheError>.self) { group in
            for (index, keys) in groups {
                group.addTask {
                    do throws(MemcacheError) {
                        return .success(try await self.connections[index].connection().get(keys))
                    } catch {
                        return .failure(error)
                    }
                }
            }
            var items: [String: MemcacheItem] = [:]
            var failure: MemcacheError?
            for await result in group {
                switch result {
                case .success(let found): for item in found { items[item.key] = item }
                case .failure(let error): failure = failure ?? error
                }
            }
            return failure.map { Result<[String: MemcacheItem], MemcacheError>.failure($0) } ?? .success(items)
        }
        return try outcome.get()
    }

    public func set(_ key: String, to data: ByteBuffer, flags: UInt32 = 0, exptime: Int32 = 0) async throws(MemcacheError) {
        try await connection(forKey: key).set(key, to: data, flags: flags, exptime: exptime)
    }

    public func set(_ key: String, to value: MemcacheValue, exptime: Int32 = 0) async throws(MemcacheError) {
        try await set(key, to: value.data, flags: value.flags, exptime: exptime)
    }

    @discardableResult
    public func delete(_ key: String) async throws(MemcacheError) -> Bool {
        try await connection(forKey: key).delete(key)
    }

    @discardableResult
    public func touch(_ key: String, exptime: Int32) async throws(MemcacheError) -> Bool {
        try await connection(forKey: key).touch(key, exptime: exptime)
    }

    // MARK: PHP values

    /// The value PHP stored under `key` with `writer`, or nil on a miss.
    public func getPHPValue(_ key: String, writtenBy writer: PHPMemcacheExtension) async throws(MemcacheError) -> PHPValue? {
        guard let item = try await get(key) else { return nil }
        do {
            return try PHPValue(decoding: item, writtenBy: writer, maximumDecompressedSize: configuration.maximumDecompressedSize)
        } catch {
            throw error.at(selector.server(forKey: key).description)
        }
    }

    /// Stores `text` so that both pecl memcache and php-memcached read it back as that string.
    public func setPHPString(_ key: String, to text: String, exptime: Int32 = 0) async throws(MemcacheError) {
        try await set(key, to: PHPValue.portableString(text), exptime: exptime)
    }
}
