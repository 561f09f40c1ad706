import Logging
import NIOCore
import NIOPosix

/// Where a submitted job lives: gearmand handles mean nothing without their server (they repeat across servers).
public struct GearmanJobLocation: Sendable, Hashable, CustomStringConvertible {
    public var server: GearmanServerAddress
    public var handle: String

    public init(server: GearmanServerAddress, handle: String) {
        self.server = server
        self.handle = handle
    }

    public var description: String { "\(handle)@\(server)" }
}

/// Several gearmand servers used as one.
///
/// A job goes to the server ranked first for its unique key by rendezvous hashing, so the same unique always
/// lands on the same server and gearmand's coalescing holds across the pool; adding or removing a server moves
/// only the keys it wins or loses. A server that cannot be reached is skipped for the next in rank. A request
/// that was sent and then lost with its connection is not retried elsewhere (it may have landed): the caller
/// gets the error. The returned `GearmanJobLocation` is the pool's memory of where each job is.
public final class GearmanServerPool: Sendable {
    public let clients: [GearmanClient]

    public init(
        servers: [GearmanServerAddress],
        configuration: GearmanClientConfiguration = .init(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "jobgate.gearman")
    ) {
        precondition(!servers.isEmpty, "a Gearman server pool needs at least one server")
        self.clients = servers.map {
            GearmanClient(address: $0, configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger)
        }
    }

    public var servers: [GearmanServerAddress] { clients.map(\.address) }

    public func client(for server: GearmanServerAddress) -> GearmanClient? {
        clients.first { $0.address == server }
    }

    /// The servers in the order a job with `unique` tries them.
    public func ranking(for unique: String) -> [GearmanClient] {
        guard clients.count > 1 else { return clients }
        return clients.map { ($0, Self.score($0.address, unique)) }.sorted { $0.1 > $1.1 }.map(\.0)
    }

    // MARK: Submitting

    public func submitBackground(_ job: GearmanJobRequest) async throws(GearmanError) -> GearmanJobLocation {
        try await submitBackground([job])[0].get()
    }

    /// Submits background jobs, one pipelined batch per server, in parallel.
    public func submitBackground(_ jobs: [GearmanJobRequest]) async -> [Result<GearmanJobLocation, GearmanError>] {
        var results = [Result<GearmanJobLocation, GearmanError>?](repeating: nil, count: jobs.count)
        let rankings = jobs.map { ranking(for: $0.unique) }
        var remaining = Array(jobs.indices)
        for round in 0..<clients.count where !remaining.isEmpty {
            let groups = Dictionary(grouping: remaining) { rankings[$0][round].address }
            remaining = []
            let outcomes: [(Int, Result<String, GearmanError>)]
            if groups.count == 1, let (server, indices) = groups.first {
                // The usual case (one gearmand, or one job): no child task, whose start and end cost two thread
                // wakeups on every submit (`jobgate bench`: the gateway's submit path is bound by such hops).
                outcomes = Array(zip(indices, await client(for: server)!.submitBackground(indices.map { jobs[$0] })))
            } else {
                outcomes = await withTaskGroup(of: [(Int, Result<String, GearmanError>)].self) { group in
                    for (server, indices) in groups {
                        let client = self.client(for: server)!
                        group.addTask {
                            let replies = await client.submitBackground(indices.map { jobs[$0] })
                            return Array(zip(indices, replies))
                        }
                    }
                    return await group.reduce(into: []) { $0 += $1 }
                }
            }
            for (index, outcome) in outcomes {
                switch outcome {
                case .success(let handle):
                    results[index] = .success(GearmanJobLocation(server: rankings[index][round].address, handle: handle))
                case .failure(let error) where Self.mayTryNextServer(error) && round + 1 < clients.count:
                    remaining.append(index)
                case .failure(let error):
                    results[index] = .failure(error)
                }
            }
        }
        return results.map { $0! }
    }

    // MARK: Status

    public func status(of location: GearmanJobLocation) async throws(GearmanError) -> GearmanJobStatus {
        guard let client = client(for: location.server) else {
            throw GearmanError(.invalidArgument, "\(location.server) is not in this pool")
        }
        return try await client.status(handle: location.handle)
    }

    /// GET_STATUS for many jobs: one pipelined batch per server, in parallel.
    public func status(of locations: [GearmanJobLocation]) async -> [Result<GearmanJobStatus, GearmanError>] {
        let groups = Dictionary(grouping: locations.indices) { locations[$0].server }
        var results = [Result<GearmanJobStatus, GearmanError>?](repeating: nil, count: locations.count)
        let outcomes = await withTaskGroup(of: [(Int, Result<GearmanJobStatus, GearmanError>)].self) { group in
            for (server, indices) in groups {
                group.addTask {
                    guard let client = self.client(for: server) else {
                        return indices.map { ($0, .failure(GearmanError(.invalidArgument, "\(server) is not in this pool"))) }
                    }
                    do throws(GearmanError) {
                        let statuses = try await client.status(handles: indices.map { locations[$0].handle })
                        return Array(zip(indices, statuses.map { .success($0) }))
                    } catch {
                        return indices.map { ($0, .failure(error)) }
                    }
                }
            }
            return await group.reduce(into: []) { $0 += $1 }
        }
        for (index, outcome) in outcomes { results[index] = outcome }
        return results.map { $0! }
    }

    public func shutdown() async {
        for client in clients { await client.shutdown() }
    }

    // MARK: Hashing

    /// Only failures that guarantee nothing reached the server may move a job to another one.
    private static func mayTryNextServer(_ error: GearmanError) -> Bool {
        error.code == .connectionFailed || error.code == .serverUnavailable
    }

    /// Rendezvous (highest random weight) score: FNV-1a over server and key, then a 64-bit finaliser.
    static func score(_ server: GearmanServerAddress, _ unique: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in server.description.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        hash = (hash ^ 0xff) &* 0x100_0000_01b3
        for byte in unique.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        // splitmix64 finaliser: FNV alone leaves the high bits too regular for ranking.
        hash = (hash ^ (hash >> 30)) &* 0xbf58_476d_1ce4_e5b9
        hash = (hash ^ (hash >> 27)) &* 0x94d0_49bb_1331_11eb
        return hash ^ (hash >> 31)
    }
}
