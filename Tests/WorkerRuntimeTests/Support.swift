import Foundation
import Gearman
import JobStore
import JobgateSupport
import LocalServers
import Logging
import NIOCore
import NIOPosix
import Redis
import ServiceLifecycle
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

struct TestFailure: Error, CustomStringConvertible {
    var description: String
}

extension LocalServer {
    var gearmanAddress: GearmanServerAddress { GearmanServerAddress(host: host, port: port) }
}

func makeStore(_ server: LocalServer, resultTTL: Int = 86_400) -> RedisJobStore {
    let redis = RedisConnectionPool(
        configuration: RedisConnectionConfiguration(host: server.host, port: server.port, connectTimeout: .seconds(1), commandTimeout: .seconds(5)),
        size: 2,
        backoff: Backoff(initial: .milliseconds(50), maximum: .milliseconds(300))
    )
    var configuration = JobStoreConfiguration()
    configuration.resultTTL = resultTTL
    return RedisJobStore(redis: redis, configuration: configuration)
}

/// A real redis-server and gearmand, with a job store and a Gearman client on them that are closed after `body`,
/// also when it throws.
func withWorkerServers<T>(
    redisArguments: [String] = [],
    _ body: (_ redis: LocalServer, _ gearmand: LocalServer, RedisJobStore, GearmanClient) async throws -> T
) async throws -> T {
    try await withLocalServer(.redis, arguments: redisArguments) { redis in
        try await withLocalServer(.gearmand) { gearmand in
            let store = makeStore(redis)
            let gearman = GearmanClient(address: gearmand.gearmanAddress)
            do {
                let result = try await body(redis, gearmand, store, gearman)
                await gearman.shutdown()
                await store.redis.close()
                return result
            } catch {
                await gearman.shutdown()
                await store.redis.close()
                throw error
            }
        }
    }
}

func newID() -> JobID { JobID(rawValue: UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""))! }

/// Creates the record (as the gateway does) and submits the job in the background with unique = id.
@discardableResult
func submit(
    _ function: String,
    _ payload: String,
    store: RedisJobStore,
    gearman: GearmanClient,
    id: JobID = newID(),
    resultTTL: Int? = nil
) async throws -> (id: JobID, handle: String) {
    #expect(try await store.create(id: id, function: function, unique: nil, resultTTL: resultTTL) == .created)
    let handle = try await gearman.submitBackground(GearmanJobRequest(function: function, unique: id.rawValue, payload: ByteBuffer(string: payload)))
    try await store.setLocation(id, handle: handle, server: "\(gearman.address)")
    return (id, handle)
}

/// A service run in the background, shut down gracefully by the test.
struct RunningService: Sendable {
    let group: ServiceGroup
    let task: Task<Void, any Error>

    init(_ service: some Service) {
        let group = ServiceGroup(configuration: .init(services: [service], logger: Logger(label: "test")))
        self.group = group
        self.task = Task { try await group.run() }
    }

    func shutDown() async throws {
        await group.triggerGracefulShutdown()
        try await withTimeout(.seconds(30), "the service to stop") { try await task.value }
    }
}

/// Runs `service` around `body`, then shuts it down gracefully.
func withRunning<T: Sendable>(_ service: some Service, _ body: @Sendable () async throws -> T) async throws -> T {
    let running = RunningService(service)
    do {
        let result = try await body()
        try await running.shutDown()
        return result
    } catch {
        running.task.cancel()
        throw error
    }
}

/// A one-shot gate handlers wait on, opened by the test.
/// Follows jobs through a change feed as a watcher would: each change of progress of a followed job, until its end.
final class FeedLog: JobChangeConsumer {
    private struct State {
        var followed: Set<JobID> = []
        var shown: [JobID: JobRecord.Progress] = [:]
        var updates: [JobUpdate] = []
    }

    private let state = Mutex(State())

    func follow(_ id: JobID) { state.withLock { _ = $0.followed.insert(id) } }
    var all: [JobUpdate] { state.withLock { $0.updates } }

    func wantsChange(of id: JobID) -> Bool { state.withLock { $0.followed.contains(id) } }
    func followedJobs() -> [JobID] { state.withLock { Array($0.followed) } }

    func changed(_ update: JobUpdate) {
        state.withLock { state in
            guard let record = update.record else {
                state.followed.remove(update.id)
                return state.updates.append(update)
            }
            guard state.shown.updateValue(record.progress, forKey: update.id) != record.progress else { return }
            state.updates.append(update)
            if record.state.isTerminal { state.followed.remove(update.id) }
        }
    }
}

/// Collects a change feed's updates while `body` runs.
func withFeed<T: Sendable>(_ store: RedisJobStore, _ body: @Sendable (FeedLog) async throws -> T) async throws -> T {
    try await KeyspaceNotifications.ensureEnabled(on: store.redis)
    let feed = JobChangeFeed(store: store, eventLoop: MultiThreadedEventLoopGroup.singleton.any(), sweepInterval: .seconds(30))
    let log = FeedLog()
    let running = Task { try await feed.run(consumer: log) }
    defer { running.cancel() }
    try await withTimeout(.seconds(10), "the feed's subscription") { try await feed.waitUntilReady() }
    return try await body(log)
}

/// Whether a process (or zombie) with this pid exists.
func processExists(_ pid: pid_t) -> Bool {
    kill(pid, 0) == 0 || errno != ESRCH
}

/// The repository's README, whose examples the tests run.
func readme() throws -> String {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("README.md")
    return try String(contentsOf: url, encoding: .utf8)
}

/// The fenced code block that follows `<!-- example: name -->` in the README.
func readmeExample(_ name: String) throws -> String {
    let text = try readme()
    guard let marker = text.range(of: "<!-- example: \(name) -->") else { throw TestFailure(description: "README has no example \(name)") }
    let rest = text[marker.upperBound...]
    guard let open = rest.range(of: "```"), let lineEnd = rest[open.upperBound...].firstIndex(of: "\n"),
        let close = rest[lineEnd...].range(of: "\n```")
    else { throw TestFailure(description: "README example \(name) has no code block") }
    return String(rest[rest.index(after: lineEnd)..<close.lowerBound]) + "\n"
}

func temporaryFile(_ contents: String, suffix: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-\(UUID().uuidString)\(suffix)")
    try contents.write(to: url, atomically: true, encoding: .utf8)
    return url
}
