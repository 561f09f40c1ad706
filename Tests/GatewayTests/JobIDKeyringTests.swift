import InMemoryLogging
import JobStore
import LocalServers
import Logging
import Redis
import Testing

@testable import Gateway

/// The key ring against a real redis-server: two gateways that raced after Redis lost its data converge.
@Suite("Job id key ring", .timeLimit(.minutes(1)))
struct JobIDKeyringTests {
    /// The first gateway's key is lost with Redis's data; a second gateway starts meanwhile and writes a fresh
    /// key. Once both re-synchronize (the first on its reconnect, the second on its interval), both sign with the
    /// key Redis holds, both accept the ids of both keys, and so does a gateway started later; the first gateway
    /// warns that it changed keys; an id of another key is accepted by none.
    @Test func gatewaysThatRacedAfterADataLossConverge() async throws {
        try await withLocalServer(.redis) { server in
            let redis = RedisConnectionPool(configuration: RedisConnectionConfiguration(host: server.host, port: server.port), size: 1)
            let logs = InMemoryLogHandler()
            let first = try await JobIDKeyring.load(from: redis, prefix: "race:", logger: Logger(label: "first") { _ in logs })
            _ = try await JobIDKeyring.load(from: redis, prefix: "race:", logger: Logger(label: "again"))
            #expect(try await redis.send(["SCARD", "race:id-keys"]).int == 1, "starting a gateway adds no key")
            let before = first.mint()

            _ = try await redis.send(["FLUSHALL"])
            let second = try await JobIDKeyring.load(from: redis, prefix: "race:", logger: Logger(label: "second"))
            #expect(!second.isGenuine(before.rawValue), "the second gateway has not seen the lost key yet")
            try await first.synchronize()
            try await second.synchronize()

            let (fromFirst, fromSecond) = (first.mint(), second.mint())
            let later = try await JobIDKeyring.load(from: redis, prefix: "race:", logger: Logger(label: "later"))
            for keyring in [first, second, later] {
                for id in [before, fromFirst, fromSecond] { #expect(keyring.isGenuine(id.rawValue)) }
                #expect(!keyring.isGenuine(JobIDMinter(key: Array(repeating: 9, count: 32)).mint().rawValue))
            }
            #expect(second.isGenuine(fromFirst.rawValue) && first.isGenuine(fromSecond.rawValue))
            #expect(try await redis.send(["SCARD", "race:id-keys"]).int == 2)
            #expect(logs.entries.filter { $0.level == .warning }.count == 1, "the first gateway warns that it changed keys")
            await redis.close()
        }
    }
}
