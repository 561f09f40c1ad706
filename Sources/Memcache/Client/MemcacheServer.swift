/// One memcached in a pool, written exactly as the PHP workers write it: the host string, port, weight and the
/// position in the list all take part in placing keys (`10.0.0.5` and `cache1` place keys differently).
public struct MemcacheServer: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// The weight given to `addServer` (pecl memcache default 1; php-memcached's 0 counts as 1).
    public var weight: Int

    public init(host: String, port: Int = 11211, weight: Int = 1) {
        self.host = host
        self.port = port
        self.weight = weight
    }

    public var description: String { "\(host):\(port)" }
}
