/// A Redis server's address: a primary named by Sentinel, or a sentinel itself.
public struct RedisAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`, `[v6]:port` or `v6:port` (the last colon separates the port).
    public init?(_ text: some StringProtocol) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65_535).contains(port) else {
            return nil
        }
        var host = text[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty else { return nil }
        self.init(host: String(host), port: port)
    }

    /// Parses a comma-separated list (`--redis-sentinel 127.0.0.1:26379,127.0.0.1:26380`); nil if any entry is not an address.
    public static func list(_ text: String) -> [RedisAddress]? {
        let entries = text.split(separator: ",").map { entry in entry.filter { !$0.isWhitespace } }
        let addresses = entries.compactMap { RedisAddress($0) }
        return addresses.isEmpty || addresses.count != entries.count ? nil : addresses
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
