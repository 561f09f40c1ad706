import Foundation

/// A Redis primary, its replicas and the sentinels that watch them, all on loopback: the topology of
/// `Deploy/sentinel/`, with timeouts short enough for tests (a failover takes a few seconds, not half a minute).
///
/// Every data node has the keyspace notifications jobgate needs, so a promoted replica has them already. The harness
/// starts everything, waits until every sentinel knows both replicas and the other sentinels (only then can they agree
/// on a failover), and stops them by pid.
public final class LocalRedisSentinels: Sendable {
    /// The name the sentinels monitor the primary under (`--redis-master`).
    public static let primaryName = "jobgate"

    /// The data nodes; `nodes[0]` is the primary at the start.
    public let nodes: [LocalServer]
    public let sentinels: [LocalServer]

    /// `--redis-sentinel`'s value.
    public var sentinelList: String { sentinels.map(\.address).joined(separator: ",") }

    private init(nodes: [LocalServer], sentinels: [LocalServer]) {
        self.nodes = nodes
        self.sentinels = sentinels
    }

    /// What every data node is started with: a replication that starts at once, and (unless a test wants to see the
    /// gateway switch them on) the keyspace notifications `Deploy/redis-jobgate.conf` sets.
    static func nodeArguments(keyspaceNotifications: Bool) -> [String] {
        ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"] + (keyspaceNotifications ? ["--notify-keyspace-events", "Ehtx"] : [])
    }

    /// Starts a primary, `replicas` replicas and `sentinels` sentinels (quorum: a majority).
    /// - Parameters:
    ///   - downAfter: how long the primary may be silent before a sentinel thinks it down (`down-after-milliseconds`).
    ///   - failoverTimeout: `failover-timeout`; also how long before the same sentinels try a failover again.
    ///   - keyspaceNotifications: whether the nodes start with jobgate's keyspace notifications on.
    public static func start(
        replicas: Int = 2,
        sentinels sentinelCount: Int = 3,
        downAfter: Duration = .milliseconds(1_000),
        failoverTimeout: Duration = .seconds(3),
        keyspaceNotifications: Bool = true
    ) async throws -> LocalRedisSentinels {
        let nodeArguments = nodeArguments(keyspaceNotifications: keyspaceNotifications)
        var nodes: [LocalServer] = []
        var sentinels: [LocalServer] = []
        do {
            let primary = try await LocalServer.start(.redis, arguments: nodeArguments)
            nodes.append(primary)
            for _ in 0..<replicas {
                nodes.append(try await LocalServer.start(.redis, arguments: nodeArguments + ["--replicaof", primary.host, "\(primary.port)"]))
            }
            try await eventually("\(replicas) replicas to be in sync with the primary", timeout: .seconds(20)) {
                let fields = (try? info(port: primary.port, section: "replication")) ?? [:]
                return (0..<replicas).allSatisfy { fields["slave\($0)"]?.contains("state=online") == true }
            }
            let configuration = [
                "sentinel monitor \(primaryName) \(primary.host) \(primary.port) \(sentinelCount / 2 + 1)",
                "sentinel down-after-milliseconds \(primaryName) \(Int(downAfter / .milliseconds(1)))",
                "sentinel failover-timeout \(primaryName) \(Int(failoverTimeout / .milliseconds(1)))",
                "sentinel parallel-syncs \(primaryName) \(replicas)",
            ]
            for _ in 0..<sentinelCount {
                sentinels.append(try await LocalServer.start(.redisSentinel, arguments: configuration))
            }
            for sentinel in sentinels {
                try await eventually("sentinel \(sentinel.address) to know the replicas and the other sentinels", timeout: .seconds(30)) {
                    guard let state = try? sentinelState(port: sentinel.port) else { return false }
                    return state["num-slaves"] == "\(replicas)" && state["num-other-sentinels"] == "\(sentinelCount - 1)"
                }
            }
        } catch {
            for server in sentinels + nodes { server.stop() }
            throw error
        }
        return LocalRedisSentinels(nodes: nodes, sentinels: sentinels)
    }

    /// The data node the sentinels name as the primary now (asking each until one answers).
    public func primary() -> LocalServer? {
        for sentinel in sentinels where sentinel.pid != nil {
            guard let reply = try? Self.command(port: sentinel.port, "SENTINEL get-master-addr-by-name \(Self.primaryName)"),
                let port = reply.last.flatMap({ Int($0) })
            else { continue }
            return nodes.first { $0.port == port }
        }
        return nil
    }

    /// Waits until the sentinels name a primary other than `former` and it says it is one.
    @discardableResult
    public func waitForFailover(from former: LocalServer, timeout: Duration = .seconds(30)) async throws -> LocalServer {
        var promoted: LocalServer?
        try await eventually("the sentinels to promote a replica of \(former.address)", timeout: timeout) {
            guard let primary = self.primary(), primary !== former else { return false }
            promoted = primary
            return (try? Self.info(port: primary.port, section: "replication"))?["role"] == "master"
        }
        return promoted!
    }

    /// Stops every process (sentinels first, so that none starts a failover while the nodes go).
    public func stop() {
        for server in sentinels + nodes { server.stop() }
    }

    // MARK: Plain RESP over a blocking socket (this module has no Redis client)

    /// `INFO <section>` as its `name:value` lines.
    static func info(port: Int, section: String) throws -> [String: String] {
        var fields: [String: String] = [:]
        for line in try command(port: port, "INFO \(section)") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        return fields
    }

    /// `SENTINEL master <name>`: a flat array of names and values.
    static func sentinelState(port: Int) throws -> [String: String] {
        let values = try command(port: port, "SENTINEL master \(primaryName)")
        var state: [String: String] = [:]
        for index in stride(from: 0, to: values.count - 1, by: 2) { state[values[index]] = values[index + 1] }
        return state
    }

    /// Sends an inline command and returns its reply flattened to strings (an array's elements in order, a bulk `INFO`
    /// split into lines), enough for the replies asked for here. Reads until the reply is whole.
    public static func command(port: Int, _ command: String) throws -> [String] {
        let socket = try LoopbackSocket(port: port, timeoutMs: 1_000)
        try socket.send(Array("\(command)\r\n".utf8))
        var bytes: [UInt8] = []
        while true {
            let chunk = try socket.receive()
            guard !chunk.isEmpty else { throw LocalServerError(message: "\(command): connection closed before the reply was whole") }
            bytes += chunk
            if let values = flatten(bytes) {
                if let error = values.first, error.hasPrefix("-") { throw LocalServerError(message: "\(command): \(error)") }
                return values.count == 1 ? values[0].split(separator: "\r\n").map(String.init) : values
            }
        }
    }

    /// One RESP2 reply's strings, or nil while it is incomplete. Errors keep their `-`.
    private static func flatten(_ bytes: [UInt8]) -> [String]? {
        var index = 0
        var values: [String] = []
        func line() -> String? {
            var position = index
            while position + 1 < bytes.count {
                if bytes[position] == 13, bytes[position + 1] == 10 {
                    defer { index = position + 2 }
                    return String(decoding: bytes[index..<position], as: UTF8.self)
                }
                position += 1
            }
            return nil
        }
        func element() -> Bool {
            guard let header = line(), let kind = header.first else { return false }
            let rest = String(header.dropFirst())
            switch kind {
            case "$":
                guard let length = Int(rest) else { return false }
                guard length >= 0 else {
                    values.append("")
                    return true
                }
                guard index + length + 2 <= bytes.count else { return false }
                values.append(String(decoding: bytes[index..<index + length], as: UTF8.self))
                index += length + 2
                return true
            case "*":
                guard let count = Int(rest) else { return false }
                for _ in 0..<max(count, 0) where !element() { return false }
                return true
            case "-":
                values.append(header)
                return true
            default:
                values.append(rest)
                return true
            }
        }
        return element() ? values : nil
    }
}
