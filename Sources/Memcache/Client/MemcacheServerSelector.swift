/// How PHP chose the server for a key; pick the one the workers use, with their ini/options.
public enum MemcacheDistribution: Hashable, Sendable {
    /// One server; no hashing.
    case single
    /// pecl memcache `memcache.hash_strategy=consistent` (its default) with `hash_function=crc32`.
    case peclMemcacheConsistent
    /// pecl memcache `memcache.hash_strategy=standard` with `hash_function=crc32` (the 2.2.x default).
    case peclMemcacheStandard
    /// php-memcached's default: `OPT_DISTRIBUTION` modula with the one-at-a-time hash.
    case phpMemcachedModula
    /// php-memcached `OPT_DISTRIBUTION => DISTRIBUTION_CONSISTENT` (weights ignored).
    case phpMemcachedConsistent
    /// php-memcached `OPT_LIBKETAMA_COMPATIBLE => true` (weighted ketama over MD5).
    case phpMemcachedKetama
}

/// Places keys on servers exactly as pecl memcache (`memcache_consistent_hash.c`, `memcache_standard_hash.c`) or
/// libmemcached under php-memcached (`hosts.cc` `update_continuum`, `hash.cc` `dispatch_host`) do, so that a key
/// written by PHP is looked up on the server that holds it.
public struct MemcacheServerSelector: Sendable {
    public let servers: [MemcacheServer]
    public let distribution: MemcacheDistribution

    private enum Table: Sendable {
        case single
        /// pecl consistent: 1024 precomputed buckets over the crc32 continuum.
        case peclBuckets([Int])
        /// pecl standard: each server `weight` times, in order.
        case peclStandard([Int])
        case modula(count: Int)
        /// libmemcached continuum, sorted by point; the key hash is `hash`.
        case continuum(points: [UInt32], servers: [Int], md5: Bool)
    }

    private let table: Table

    public init(servers: [MemcacheServer], distribution: MemcacheDistribution) throws(MemcacheError) {
        guard !servers.isEmpty else { throw MemcacheError(.invalidConfiguration, "empty server list") }
        if let bad = servers.first(where: { $0.weight < 0 || $0.port <= 0 || $0.port > 65535 || $0.host.isEmpty }) {
            throw MemcacheError(.invalidConfiguration, "invalid server \(bad) (weight \(bad.weight))")
        }
        self.servers = servers
        self.distribution = distribution
        switch distribution {
        case .single:
            guard servers.count == 1 else {
                throw MemcacheError(.invalidConfiguration, "distribution .single with \(servers.count) servers")
            }
            table = .single
        case .peclMemcacheConsistent:
            table = .peclBuckets(Self.peclBuckets(servers))
        case .peclMemcacheStandard:
            let list = servers.indices.flatMap { index in Array(repeating: index, count: servers[index].weight) }
            guard !list.isEmpty else { throw MemcacheError(.invalidConfiguration, "all server weights are 0") }
            table = .peclStandard(list)
        case .phpMemcachedModula:
            table = .modula(count: servers.count)
        case .phpMemcachedConsistent:
            table = Self.libmemcachedConsistent(servers)
        case .phpMemcachedKetama:
            table = Self.libmemcachedKetama(servers)
        }
    }

    /// Index into `servers` of the server that holds `key`.
    public func serverIndex(forKey key: String) -> Int {
        let bytes = Array(key.utf8)
        switch table {
        case .single:
            return 0
        case .peclBuckets(let buckets):
            // memcache_consistent_hash.c: a pool of one skips hashing.
            guard servers.count > 1 else { return 0 }
            return buckets[Int(MemcacheHash.crc32(bytes) % UInt32(buckets.count))]
        case .peclStandard(let list):
            guard servers.count > 1 else { return list[0] }
            let hash = (MemcacheHash.crc32(bytes) >> 16) & 0x7fff
            return list[Int((hash == 0 ? 1 : hash) % UInt32(list.count))]
        case .modula(let count):
            guard count > 1 else { return 0 }
            return Int(MemcacheHash.oneAtATime(bytes) % UInt32(count))
        case .continuum(let points, let owners, let md5):
            guard servers.count > 1 else { return 0 }
            let hash = md5 ? MemcacheHash.md5Word(MD5.digest(bytes), 0) : MemcacheHash.oneAtATime(bytes)
            return owners[Self.firstPoint(atLeast: hash, in: points)]
        }
    }

    public func server(forKey key: String) -> MemcacheServer {
        servers[serverIndex(forKey: key)]
    }

    // MARK: pecl memcache

    private static let peclPointsPerWeight = 160
    private static let peclBucketCount = 1024

    private static func peclBuckets(_ servers: [MemcacheServer]) -> [Int] {
        // Points are crc32("<host>:<port>-<i>") for i < 160 × weight.
        var points: [(point: UInt32, server: Int)] = []
        for (index, server) in servers.enumerated() {
            for i in 0..<(server.weight * peclPointsPerWeight) {
                points.append((MemcacheHash.crc32(Array("\(server.host):\(server.port)-\(i)".utf8)), index))
            }
        }
        guard !points.isEmpty else { return [0] }
        points.sort { $0.point < $1.point }
        let values = points.map(\.point)
        let step = UInt32.max / UInt32(peclBucketCount)
        return (0..<peclBucketCount).map { j in points[firstPoint(atLeast: UInt32(j) &* step, in: values)].server }
    }

    // MARK: libmemcached

    private static func libmemcachedConsistent(_ servers: [MemcacheServer]) -> Table {
        // update_continuum, unweighted: 100 points oaat("<host>[:<port>]-<i>"), the port left out when 11211.
        var points: [(point: UInt32, server: Int)] = []
        for (index, server) in servers.enumerated() {
            for i in 0..<100 {
                points.append((MemcacheHash.oneAtATime(Array("\(libmemcachedName(server))-\(i)".utf8)), index))
            }
        }
        return continuum(points, md5: false)
    }

    private static func libmemcachedKetama(_ servers: [MemcacheServer]) -> Table {
        // update_continuum, weighted: floor(pct × 160 / 4 × n + 1e-10) × 4 points, 4 per MD5 digest. The float
        // arithmetic is libmemcached's, so that rounding matches for uneven weights.
        let weights = servers.map { max($0.weight, 1) }
        let total = Float(weights.reduce(0, +))
        var points: [(point: UInt32, server: Int)] = []
        for (index, server) in servers.enumerated() {
            let pct = Float(weights[index]) / total
            let product = pct * Float(160) / Float(4) * Float(servers.count)
            let perServer = Int((Double(product) + 0.0000000001).rounded(.down)) * 4
            for i in 0..<(perServer / 4) {
                let digest = MD5.digest(Array("\(libmemcachedName(server))-\(i)".utf8))
                for word in 0..<4 { points.append((MemcacheHash.md5Word(digest, word), index)) }
            }
        }
        return continuum(points, md5: true)
    }

    private static func libmemcachedName(_ server: MemcacheServer) -> String {
        server.port == 11211 ? server.host : "\(server.host):\(server.port)"
    }

    private static func continuum(_ points: [(point: UInt32, server: Int)], md5: Bool) -> Table {
        let sorted = points.sorted { $0.point < $1.point }
        return .continuum(points: sorted.map(\.point), servers: sorted.map(\.server), md5: md5)
    }

    /// Index of the first point ≥ `value`, wrapping to 0 past the last one.
    private static func firstPoint(atLeast value: UInt32, in points: [UInt32]) -> Int {
        var low = 0
        var high = points.count
        while low < high {
            let middle = (low + high) / 2
            if points[middle] < value { low = middle + 1 } else { high = middle }
        }
        return low == points.count ? 0 : low
    }
}
