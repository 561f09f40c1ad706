import GatewayProtocol
import LocalServers
import Testing

@testable import Gateway

/// The id key survives Redis losing its data: every gateway of a deployment keeps signing and checking alike.
@Suite("Job id key after a Redis data loss", .timeLimit(.minutes(2)))
struct JobIDKeyScenarioTests {
    /// Gateway 1 issues ids; redis-server is killed and restarted empty (no persistence); gateway 1 issues more;
    /// then gateway 2 starts with the same prefix, and later gateway 1 again (a restart: a gateway keeps nothing
    /// else). Every id gateway 1 issued is this deployment's everywhere: the records lost with Redis are `expired`,
    /// the later one `queued`; an id nobody signed stays NOT_FOUND. (The stack's own gateway has another prefix.)
    @Test func idsIssuedBeforeAndAfterTheLossStayReadableOnEveryGateway() async throws {
        try await withGatewayStack { stack in
            let prefix = "idkey:"
            let forged = GatewayJobID(rawValue: Base32.encode((0..<24).map { _ in UInt8.random(in: 0...255) }))!
            let (before, after) = try await withSecondGateway(stack, keyPrefix: prefix) { port in
                let gateway1 = try await GatewayTestClient.connect(port: port)
                let before = try #require(try await gateway1.request(submitLine("nobody-runs-this", "before"))?.createdID)
                try await stack.redis.restart()
                try await eventually("gateway 1 to be ready again", timeout: .seconds(20)) {
                    guard case .reply(.health(let health), _) = try await gateway1.request("HEALTH\n") else { return false }
                    return health.isReady
                }
                let after = try #require(try await gateway1.request(submitLine("nobody-runs-this", "after"))?.createdID)
                try await withSecondGateway(stack, keyPrefix: prefix) { port in
                    let gateway2 = try await GatewayTestClient.connect(port: port)
                    try await Self.expectReadable(before: before, after: after, forged: forged, on: gateway2, "gateway 2")
                    // And the other way round: gateway 2's ids are readable on gateway 1.
                    let own = try #require(try await gateway2.request(submitLine("nobody-runs-this", "two"))?.createdID)
                    try await Self.expectStatus(own, .queued, on: gateway1, "gateway 2's id on gateway 1")
                }
                return (before, after)
            }
            try await withSecondGateway(stack, keyPrefix: prefix) { port in
                let restarted = try await GatewayTestClient.connect(port: port)
                try await Self.expectReadable(before: before, after: after, forged: forged, on: restarted, "gateway 1 restarted")
            }
        }
    }

    private static func expectReadable(
        before: GatewayJobID, after: GatewayJobID, forged: GatewayJobID, on client: GatewayTestClient, _ gateway: String
    ) async throws {
        try await expectStatus(before, .expired, on: client, "\(gateway): the id issued before the loss")
        try await expectStatus(after, .queued, on: client, "\(gateway): the id issued after the loss")
        let reply = try #require(try await client.request("STATUS \(forged)\n"))
        guard case .reply(.error(.notFound, _), nil) = reply else { Issue.record("\(gateway): a forged id → \(reply)"); return }
    }

    /// A gateway that started with a fresh key before gateway 1 came back learns gateway 1's key within one sync
    /// interval (`sweepInterval`, 2 s in tests): wait that long for an answer other than NOT_FOUND.
    private static func expectStatus(_ id: GatewayJobID, _ state: GatewayJobState, on client: GatewayTestClient, _ what: String) async throws {
        var last: GatewayResponse?
        try? await eventually("\(what) to be found", timeout: .seconds(6)) {
            last = try await client.request("STATUS \(id)\n")
            guard case .reply(.error(.notFound, _), _) = last else { return true }
            return false
        }
        #expect(last == .reply(.status(id, GatewayJobStatus(state))), "\(what)")
    }
}
