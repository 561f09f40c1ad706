import GatewayProtocol
import Gearman
import JobStore
import Logging
import Synchronization

/// Which backends the gateway can reach now, from the state of the connections it keeps anyway (the job change
/// feed's subscription, one connection per gearmand), never from a probe per question: `HEALTH`, `/readyz` and
/// `jobgate_backend_up` all read it. It logs each outage once, at `warning`, and its end at `notice` with its length.
final class BackendStatus: Sendable {
    /// One backend server: up or down, and since when.
    private struct Link {
        var state: State = .unknown
        var since = ContinuousClock.now

        enum State: Equatable { case unknown, up, down, notificationsUnconfirmed }
    }

    private struct Links {
        var redis = Link()
        var gearmand: [String: Link]
    }

    let redisServer: String
    let gearmandServers: [String]
    private let links: Mutex<Links>
    private let logger: Logger

    init(redisServer: String, gearmandServers: [String], logger: Logger) {
        self.redisServer = redisServer
        self.gearmandServers = gearmandServers
        self.links = Mutex(Links(gearmand: Dictionary(gearmandServers.map { ($0, Link()) }, uniquingKeysWith: { a, _ in a })))
        self.logger = logger
    }

    // MARK: Changes

    func redisChanged(_ link: JobChangeFeed.Link, error: (any Error)?) {
        let state: Link.State = switch link {
        case .up: .up
        case .down: .down
        case .notificationsUnconfirmed: .notificationsUnconfirmed
        }
        let change = links.withLock { Self.change(&$0.redis, to: state) }
        log(change, backend: "redis", server: redisServer, error: error)
    }

    func gearmandChanged(_ server: String, isUp: Bool, error: (any Error)? = nil) {
        let change = links.withLock { links -> Change? in
            guard links.gearmand[server] != nil else { return nil }
            return Self.change(&links.gearmand[server]!, to: isUp ? .up : .down)
        }
        log(change, backend: "gearmand", server: server, error: error)
    }

    private enum Change {
        case lost
        case recovered(outage: Duration)
        case firstUp
    }

    private static func change(_ link: inout Link, to state: Link.State) -> Change? {
        let old = link
        guard old.state != state else { return nil }
        let now = ContinuousClock.now
        // Down and "notifications unconfirmed" are one outage: the clock runs from the first loss until up again.
        let wasServing = old.state == .up
        let isServing = state == .up
        link.state = state
        if wasServing != isServing || old.state == .unknown { link.since = now }
        switch (old.state, state) {
        case (.unknown, .up): return .firstUp
        case (_, .up): return .recovered(outage: now - old.since)
        case (.up, _), (.unknown, .down): return .lost
        default: return nil
        }
    }

    private func log(_ change: Change?, backend: String, server: String, error: (any Error)?) {
        guard let change else { return }
        // The metadata namespaces the rest of the code logs in: `redis.…`, `gearman.…`.
        let (name, namespace) = backend == "redis" ? ("Redis", "redis") : ("gearmand", "gearman")
        var metadata: Logger.Metadata = ["\(namespace).server": "\(server)"]
        switch change {
        case .firstUp:
            logger.info("\(name) reachable", metadata: metadata)
        case .lost:
            if let error { metadata["\(namespace).error"] = "\(error)" }
            logger.warning("\(name) unreachable", metadata: metadata)
        case .recovered(let outage):
            metadata["\(namespace).outage_ms"] = "\(Self.milliseconds(outage))"
            logger.notice("\(name) reachable again", metadata: metadata)
        }
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    }

    // MARK: Following gearmand

    /// Keeps each gearmand's connection (the one requests use) open and follows its state, until cancelled.
    func follow(_ gearman: GearmanServerPool) async {
        await withDiscardingTaskGroup { group in
            for client in gearman.clients {
                group.addTask { await self.follow(client) }
            }
        }
    }

    private func follow(_ client: GearmanClient) async {
        let server = "\(client.address)"
        while !Task.isCancelled {
            do {
                let connection = try await client.connection()
                gearmandChanged(server, isUp: true)
                // A flag read, no request: the connection closes as soon as gearmand goes away. (Waiting on its close
                // future instead could not be cancelled, and the pool closes connections only after this stops.)
                while connection.isActive, !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(100))
                }
                if !Task.isCancelled { gearmandChanged(server, isUp: false, error: GearmanError(.connectionClosed, "connection closed")) }
            } catch {
                gearmandChanged(server, isUp: false, error: error)
                // While the client backs off, `connection()` fails at once without touching the network.
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    // MARK: Reading

    /// Ready: Redis is up with keyspace notifications on, and at least one gearmand is up.
    func health() -> GatewayHealth {
        links.withLock { links in
            let redis: String = switch links.redis.state {
            case .up: "up"
            case .notificationsUnconfirmed: "no-notifications"
            case .down, .unknown: "down"
            }
            let gearmandUp = gearmandServers.count { links.gearmand[$0]?.state == .up }
            return GatewayHealth(
                isReady: links.redis.state == .up && gearmandUp > 0,
                checks: [.init("redis", redis), .init("gearmand", "\(gearmandUp)/\(gearmandServers.count)")]
            )
        }
    }

    /// `(backend, server, up)` for each server, Redis first, gearmand servers in configuration order.
    func servers() -> [(backend: String, server: String, isUp: Bool)] {
        links.withLock { links in
            [("redis", redisServer, links.redis.state == .up)]
                + gearmandServers.map { ("gearmand", $0, links.gearmand[$0]?.state == .up) }
        }
    }
}
