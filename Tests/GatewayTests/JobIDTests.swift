import GatewayProtocol
import JobStore
import LocalServers
import Logging
import NIOCore
import ServiceLifecycle
import Testing

@testable import Gateway

/// Ids are capabilities: only the exact spelling the gateway issued, signed by this deployment, reaches a job.
@Suite("Job ids", .timeLimit(.minutes(2)))
struct JobIDTests {
    /// The last base32 character of an id carries 2 bits: the 7 other spellings with the same bits are ids nobody
    /// issued (NOT_FOUND everywhere, HTTP 404), not a live job reported `expired`.
    @Test func onlyTheCanonicalSpellingIsAccepted() async throws {
        try await withGatewayStack({ $0.httpPort = 0 }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            let client = try await stack.connect()
            let id = try #require(try await client.request(submitLine("nobody-runs-this", "x"))?.createdID)
            let variants = Self.otherSpellings(of: id.rawValue)
            #expect(variants.count == 7)
            for variant in variants {
                for request in ["STATUS \(variant)", "RESULT \(variant)", "WAIT \(variant) 50", "WATCH \(variant)"] {
                    let reply = try #require(try await client.request(request + "\n"))
                    guard case .reply(.error(.notFound, _), nil) = reply else { Issue.record("\(request) → \(reply)"); continue }
                }
                #expect(try await httpRequest(port: http, "/jobs/\(variant)").status == 404, "\(variant)")
                #expect(try await httpRequest(port: http, "/jobs/\(variant)/events").status == 404, "\(variant)")
            }
            // The id itself still works.
            #expect(try await client.request("STATUS \(id)\n") == .reply(.status(id, GatewayJobStatus(.queued))))
            #expect(try await httpRequest(port: http, "/jobs/\(id)").status == 200)
        }
    }

    /// Two deployments (`--key-prefix`) share gearmand and Redis, and a worker of the first runs a job the second
    /// issued, so a record of it lies under the first's prefix. The first never issued that id: NOT_FOUND and 404.
    @Test func anIDOfAnotherDeploymentIsNotFoundEvenWithARecord() async throws {
        try await withGatewayStack({ $0.httpPort = 0 }) { stack in
            let http = try await stack.gateway.waitUntilHTTPListening().port!
            try await withSecondGateway(stack, keyPrefix: "other:") { otherPort in
                let other = try await GatewayTestClient.connect(port: otherPort)
                let client = try await stack.connect()
                try await withTestWorker(stack, ["shared": { payload, _ in payload }]) {
                    let foreign = try #require(try await other.request(submitLine("shared", "theirs"))?.createdID)
                    let store = stack.store()
                    try await eventually("the worker to write the job under this deployment's prefix") {
                        try await store.record(JobID(rawValue: foreign.rawValue)!)?.state == .done
                    }
                    for request in ["STATUS \(foreign)", "RESULT \(foreign)", "WAIT \(foreign) 50", "WATCH \(foreign)"] {
                        let reply = try #require(try await client.request(request + "\n"))
                        guard case .reply(.error(.notFound, _), nil) = reply else { Issue.record("\(request) → \(reply)"); continue }
                    }
                    #expect(try await httpRequest(port: http, "/jobs/\(foreign)").status == 404)
                    #expect(try await httpRequest(port: http, "/jobs/\(foreign)/events").status == 404)
                    // And the other way round: this deployment's id means nothing to the other one.
                    let own = try #require(try await client.request(submitLine("shared", "ours"))?.createdID)
                    #expect(try await client.request("WAIT \(own) 10000\n") == .reply(.done(own, result: ByteBuffer(string: "ours"))))
                    guard case .reply(.error(.notFound, _), nil) = try #require(try await other.request("STATUS \(own)\n")) else {
                        Issue.record("the other deployment must not know this id"); return
                    }
                }
                await other.close()
            }
        }
    }

    /// The spellings that decode to the same bytes as `id` under a lenient base32 decoder.
    static func otherSpellings(of id: String) -> [String] {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz234567")
        let last = alphabet.firstIndex(of: id.last!)!
        // 24 bytes are 192 bits; 39 characters hold 195: the last character's low 3 bits are padding.
        return (0..<8).map { (last & ~7) | $0 }.filter { $0 != last }.map { String(id.dropLast()) + String(alphabet[$0]) }
    }
}

/// A second gateway on the stack's gearmand and Redis, of the same deployment, or with `keyPrefix` of another;
/// `body` gets its line-protocol port.
func withSecondGateway<T: Sendable>(_ stack: GatewayStack, keyPrefix: String? = nil, _ body: @Sendable (Int) async throws -> T) async throws -> T {
    var configuration = stack.configuration
    configuration.port = 0
    configuration.httpPort = nil
    configuration.keyPrefix = keyPrefix ?? configuration.keyPrefix
    let gateway = GatewayServer(configuration: configuration, logger: Logger(label: "test.gateway.second"))
    let group = ServiceGroup(configuration: .init(services: [gateway], logger: Logger(label: "test")))
    let running = Task { try await group.run() }
    defer { running.cancel() }
    let address = try await withTimeout(.seconds(10), "the second gateway to listen") { try await gateway.waitUntilListening() }
    let result = try await body(address.port!)
    await group.triggerGracefulShutdown()
    _ = try? await withTimeout(.seconds(10), "the second gateway to shut down") { try await running.value }
    return result
}

/// Ids: only what the minter minted, spelled as it minted it.
struct JobIDMinterTests {
    /// A minted id is genuine; its 7 other spellings (the last character's padding bits), an upper-case spelling,
    /// one character more or less, and the same id under another key are not.
    @Test func onlyTheMintedSpellingIsGenuine() {
        let minter = JobIDMinter(key: Array(repeating: 7, count: 32))
        for _ in 0..<50 {
            let id = minter.mint().rawValue
            #expect(id.utf8.count == 39 && minter.isGenuine(id))
            for variant in JobIDTests.otherSpellings(of: id) { #expect(!minter.isGenuine(variant), "\(variant)") }
            #expect(!minter.isGenuine(id.uppercased()) && !minter.isGenuine(id + "a") && !minter.isGenuine(String(id.dropLast())))
            #expect(!JobIDMinter(key: Array(repeating: 8, count: 32)).isGenuine(id))
        }
    }

    /// Ids minted together (one draw of random bytes for a batch of `SUBMIT`s) are as good as ids minted alone:
    /// every one genuine and well formed, no two alike, none like an earlier batch's.
    @Test func idsMintedTogetherAreDistinctAndGenuine() {
        let minter = JobIDMinter(key: Array(repeating: 5, count: 32))
        #expect(minter.mint(0).isEmpty)
        let first = minter.mint(500).map(\.rawValue)
        let second = minter.mint(500).map(\.rawValue)
        #expect(first.count == 500 && second.count == 500)
        #expect(Set(first + second).count == 1_000)
        for id in first + second { #expect(id.utf8.count == 39 && minter.isGenuine(id), "\(id)") }
        #expect(!JobIDMinter(key: Array(repeating: 6, count: 32)).isGenuine(first[0]))
    }

    /// A minter accepts the ids of every key of its ring and signs with the first, also when many threads check ids
    /// at once (its keyed HMACs are shared, each check works on a copy); bytes outside the alphabet are refused.
    @Test func everyKeyOfTheRingIsAcceptedFromManyThreads() async {
        let old = JobIDMinter(key: Array(repeating: 1, count: 32))
        let current = JobIDMinter(key: Array(repeating: 2, count: 32), alsoAccepted: [old.signingKey])
        let ids = (0..<200).map { $0.isMultiple(of: 2) ? old.mint().rawValue : current.mint().rawValue }
        #expect(ids.allSatisfy { current.isGenuine($0) })
        #expect(ids.enumerated().allSatisfy { old.isGenuine($1) == $0.isMultiple(of: 2) })
        let genuine = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<8 { group.addTask { ids.filter { current.isGenuine($0) }.count } }
            return await group.reduce(0, +)
        }
        #expect(genuine == 8 * ids.count)
        #expect(!current.isGenuine(String(ids[1].dropLast()) + "é") && !current.isGenuine(String(ids[1].dropLast()) + "1"))
    }

    /// Base32 decodes only canonical spellings, and those round-trip.
    @Test func base32IsStrict() {
        var random = SplitMix64(seed: 5)
        for count in 0..<30 {
            let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) }
            let text = Base32.encode(bytes)
            #expect(Base32.decode(text) == bytes)
            let leftover = (count * 8) % 5
            if leftover > 0 {
                #expect(Base32.decode(String(text.dropLast()) + (text.last == "a" ? "b" : "a")) != bytes)
            }
        }
        #expect(Base32.decode("ab") == nil, "10 bits: 2 padding bits must be zero")
        #expect(Base32.decode("aa") == [0])
        #expect(Base32.decode("a") == nil, "5 bits make no byte")
        #expect(Base32.decode("aaaaaaaa") == [0, 0, 0, 0, 0] && Base32.decode("aaaaaab") == nil, "40 bits are 5 bytes; 35 leave 3 padding bits")
    }
}
