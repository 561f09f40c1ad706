import NIOCore
import NIOEmbedded
import Testing

@testable import Gearman

@Suite("Gearman helpers")
struct GearmanHelpersTests {
    /// Whether `body` throws a `GearmanError` with code `invalidArgument`.
    static func invalidArgument(_ body: () throws -> Void) -> Bool {
        do {
            try body()
            return false
        } catch {
            return (error as? GearmanError)?.code == .invalidArgument
        }
    }

    // MARK: GearmanServerAddress

    @Test(arguments: [
        ("gearman.local:4731", "gearman.local", 4731, "gearman.local:4731"),
        ("127.0.0.1:4730", "127.0.0.1", 4730, "127.0.0.1:4730"),
        ("localhost", "localhost", 4730, "localhost:4730"),
        ("[::1]:4731", "::1", 4731, "[::1]:4731"),
        ("[::1]", "::1", 4730, "[::1]:4730"),
        ("::1", "::1", 4730, "[::1]:4730"),
        ("host:65535", "host", 65535, "host:65535"),
    ])
    func addressParses(text: String, host: String, port: Int, description: String) throws {
        let address = try #require(GearmanServerAddress(text))
        #expect(address.host == host)
        #expect(address.port == port)
        #expect(address.description == description)
        #expect(GearmanServerAddress(address.description) == address)
    }

    @Test(arguments: ["", ":4730", "host:", "host:0", "host:65536", "host:-1", "host:abc", "[::1]:", "[::1]x", "[]:4730", "[::1]:99999"])
    func addressRejectsBadInput(text: String) {
        #expect(GearmanServerAddress(text) == nil)
    }

    /// An unclosed bracket is taken as a host name instead of being refused.
    @Test func addressRejectsUnclosedBracket() {
        #expect(GearmanServerAddress("[::1") == nil)
        #expect(GearmanServerAddress("[") == nil)
    }

    // MARK: gearmand numbers

    @Test(arguments: [
        ("0", 0), ("42", 42), ("7abc", 7), ("abc", 0), ("", 0), ("4294967295", 4_294_967_295),
        ("4294967296", 0), ("5000000000", 705_032_704), ("0100", 100),
    ] as [(String, UInt32)])
    func gearmanNumberParsesLikeAtoi(text: String, value: UInt32) {
        #expect(UInt32(gearmanNumber: text) == value)
    }

    /// atoi skips leading whitespace and takes a sign; the parser stops at them instead.
    @Test func gearmanNumberWhitespaceAndSign() {
        #expect(UInt32(gearmanNumber: " 42") == 42)
        #expect(UInt32(gearmanNumber: "+5") == 5)
        #expect(UInt32(gearmanNumber: "-1") == UInt32.max)
    }

    // MARK: GearmanValidation

    @Test func uniqueLimits() {
        #expect(Self.invalidArgument { try GearmanValidation.unique("") })
        #expect(!Self.invalidArgument { try GearmanValidation.unique("a") })
        #expect(!Self.invalidArgument { try GearmanValidation.unique(String(repeating: "u", count: 63)) })
        #expect(Self.invalidArgument { try GearmanValidation.unique(String(repeating: "u", count: 64)) })
        #expect(Self.invalidArgument { try GearmanValidation.unique("a\0b") })
        // Bytes count, not characters: 32 × "é" is 64 bytes.
        #expect(Self.invalidArgument { try GearmanValidation.unique(String(repeating: "é", count: 32)) })
    }

    @Test func handleLimits() {
        #expect(Self.invalidArgument { try GearmanValidation.handle("") })
        #expect(!Self.invalidArgument { try GearmanValidation.handle("H:vm:1") })
        #expect(!Self.invalidArgument { try GearmanValidation.handle(String(repeating: "h", count: 63)) })
        #expect(Self.invalidArgument { try GearmanValidation.handle(String(repeating: "h", count: 64)) })
        #expect(Self.invalidArgument { try GearmanValidation.handle("H:\0") })
    }

    @Test func functionNameLimits() {
        for bad in ["", " ", "a b", "a\tb", "fn\n", "fn\r", "fn\u{7F}", "\0", String(repeating: "f", count: 513)] {
            #expect(Self.invalidArgument { try GearmanValidation.function(bad) }, "\(String(reflecting: bad))")
        }
        for good in ["fn", "resize-image", "a.b:c/d", "résumé", String(repeating: "f", count: 512)] {
            #expect(!Self.invalidArgument { try GearmanValidation.function(good) }, "\(String(reflecting: good))")
        }
    }

    /// Jobs validate function, unique and payload size, and pick the packet type from priority and mode.
    @Test func jobRequestValidationAndPacket() throws {
        let job = GearmanJobRequest(function: "fn", unique: "u1", payload: ByteBuffer(string: "12345"))
        #expect(!Self.invalidArgument { try job.validate(maximumPayloadSize: 5) })
        #expect(Self.invalidArgument { try job.validate(maximumPayloadSize: 4) })
        #expect(Self.invalidArgument { try GearmanJobRequest(function: "f n", unique: "u", payload: ByteBuffer()).validate(maximumPayloadSize: 1) })
        #expect(Self.invalidArgument { try GearmanJobRequest(function: "fn", unique: "", payload: ByteBuffer()).validate(maximumPayloadSize: 1) })

        let expected: [(GearmanPriority, Bool, GearmanPacketType)] = [
            (.high, true, .submitJobHighBackground), (.normal, true, .submitJobBackground), (.low, true, .submitJobLowBackground),
            (.high, false, .submitJobHigh), (.normal, false, .submitJob), (.low, false, .submitJobLow),
        ]
        for (priority, background, type) in expected {
            var request = job
            request.priority = priority
            #expect(request.packet(background: background) == GearmanPacket(.request, type, "fn", "u1", "12345"))
        }
    }

    @Test func jobEventTerminality() {
        #expect(GearmanJobEvent.completed(ByteBuffer()).isTerminal)
        #expect(GearmanJobEvent.failed.isTerminal)
        #expect(GearmanJobEvent.exception(ByteBuffer()).isTerminal)
        #expect(!GearmanJobEvent.status(numerator: 1, denominator: 2).isTerminal)
        #expect(!GearmanJobEvent.data(ByteBuffer()).isTerminal)
        #expect(!GearmanJobEvent.warning(ByteBuffer()).isTerminal)
    }

    @Test func nothingWasSentOnlyForRefusalsBeforeSending() {
        #expect(GearmanError(.connectionFailed, "").nothingWasSent)
        #expect(GearmanError(.serverUnavailable, "").nothingWasSent)
        #expect(GearmanError(.invalidArgument, "").nothingWasSent)
        for code: GearmanError.Code in [.connectionClosed, .timeout, .serverError, .protocolError, .unexpectedReply, .jobFailed, .shuttingDown] {
            #expect(!GearmanError(code, "").nothingWasSent, "\(code)")
        }
    }

    // MARK: Admin listings

    @Test func functionStatusLines() throws {
        let row = try #require(GearmanFunctionStatus(line: "fn_a\t3\t1\t2"))
        #expect(row == GearmanFunctionStatus(line: "fn_a\t3\t1\t2"))
        #expect((row.function, row.total, row.running, row.workers) == ("fn_a", 3, 1, 2))
        #expect(GearmanFunctionStatus(line: ".") == nil)
        #expect(GearmanFunctionStatus(line: "fn\t1\t2") == nil)
        #expect(GearmanFunctionStatus(line: "fn\tx\t1\t2") == nil)
        #expect(GearmanFunctionStatus(line: "fn\t1\t0\t0\t1") == nil)  // a `prioritystatus` row
        #expect(GearmanFunctionStatus(line: "fn 1 2 3") == nil)
    }

    @Test func workerInfoLines() throws {
        let worker = try #require(GearmanWorkerInfo(line: "39 127.0.0.1 worker-A : f_w3 f_w2 f_w1"))
        #expect(worker.fileDescriptor == 39)
        #expect(worker.address == "127.0.0.1")
        #expect(worker.clientID == "worker-A")
        #expect(worker.functions == ["f_w3", "f_w2", "f_w1"])

        // An IPv6 peer with no client id and no functions (a plain client connection).
        let client = try #require(GearmanWorkerInfo(line: "33 ::1 - :"))
        #expect(client.fileDescriptor == 33)
        #expect(client.address == "::1")
        #expect(client.clientID == "-")
        #expect(client.functions.isEmpty)

        let mapped = try #require(GearmanWorkerInfo(line: "40 ::ffff:127.0.0.1 w : fn"))
        #expect(mapped.address == "::ffff:127.0.0.1")
        #expect(mapped.functions == ["fn"])

        #expect(GearmanWorkerInfo(line: ".") == nil)
        #expect(GearmanWorkerInfo(line: "x 127.0.0.1 - :") == nil)
        #expect(GearmanWorkerInfo(line: "39 127.0.0.1 worker-A f_w3") == nil)
        #expect(GearmanWorkerInfo(line: "") == nil)
    }

    // MARK: GearmanAdminCommand

    @Test func adminCommandLines() throws {
        #expect(GearmanAdminCommand.status.line == "status" && GearmanAdminCommand.status.isListing)
        #expect(GearmanAdminCommand.priorityStatus.line == "prioritystatus" && GearmanAdminCommand.priorityStatus.isListing)
        #expect(GearmanAdminCommand.workers.isListing && GearmanAdminCommand.showJobs.isListing && GearmanAdminCommand.showUniqueJobs.isListing)
        #expect(GearmanAdminCommand.showUniqueJobs.line == "show unique jobs")
        for single in [GearmanAdminCommand.version, .getpid, .verbose] { #expect(!single.isListing) }

        let cancel = try GearmanAdminCommand.cancelJob("H:vm:1")
        #expect(cancel.line == "cancel job H:vm:1" && !cancel.isListing)
        #expect(try GearmanAdminCommand.maxQueue("fn", [5]).line == "maxqueue fn 5")
        #expect(try GearmanAdminCommand.maxQueue("fn", [5, 0, 1]).line == "maxqueue fn 5 0 1")
        #expect(try GearmanAdminCommand.createFunction("fn").line == "create function fn")
        #expect(try GearmanAdminCommand.dropFunction("fn").line == "drop function fn")
    }

    @Test func adminCommandBuildersValidate() {
        #expect(Self.invalidArgument { _ = try GearmanAdminCommand.cancelJob("") })
        #expect(Self.invalidArgument { _ = try GearmanAdminCommand.cancelJob(String(repeating: "h", count: 64)) })
        #expect(Self.invalidArgument { _ = try GearmanAdminCommand.maxQueue("fn", []) })
        #expect(Self.invalidArgument { _ = try GearmanAdminCommand.maxQueue("fn", [1, 2]) })
        #expect(Self.invalidArgument { _ = try GearmanAdminCommand.maxQueue("fn", [1, 2, 3, 4]) })
        #expect(Self.invalidArgument { _ = try GearmanAdminCommand.maxQueue("", [1]) })
        #expect(Self.invalidArgument { _ = try GearmanAdminCommand.maxQueue("a b", [1]) })
        #expect(Self.invalidArgument { _ = try GearmanAdminCommand.createFunction("a\tb") })
        #expect(Self.invalidArgument { _ = try GearmanAdminCommand.dropFunction("") })
    }

    /// A handle with a line break or space makes a different admin line (or one the encoder refuses, which
    /// closes the connection with every request on it): `cancelJob` must refuse it.
    @Test func cancelJobRefusesSeparatorsInTheHandle() {
        #expect(Self.invalidArgument { _ = try GearmanAdminCommand.cancelJob("H:vm:1\r\nstatus") })
        #expect(Self.invalidArgument { _ = try GearmanAdminCommand.cancelJob("H:vm:1 H:vm:2") })
    }

    // MARK: GearmanServerPool ranking

    static let servers = ["10.0.0.1:4730", "10.0.0.2:4730", "10.0.0.3:4730"].map { GearmanServerAddress($0)! }

    static func pool(_ servers: [GearmanServerAddress]) -> GearmanServerPool {
        // Building a pool makes no connection; the embedded loop would never run one anyway.
        GearmanServerPool(servers: servers, eventLoopGroup: EmbeddedEventLoop())
    }

    static let keys = (0..<3000).map { "job-\($0)" }

    /// Every server appears once; the order depends only on the key and the server set, not the list order.
    @Test func rankingIsDeterministic() {
        let pool = Self.pool(Self.servers)
        let shuffled = Self.pool([Self.servers[2], Self.servers[0], Self.servers[1]])
        for key in Self.keys.prefix(200) {
            let ranking = pool.ranking(for: key).map(\.address)
            #expect(Set(ranking) == Set(Self.servers) && ranking.count == 3)
            #expect(pool.ranking(for: key).map(\.address) == ranking)
            #expect(shuffled.ranking(for: key).map(\.address) == ranking)
        }
    }

    /// First choices spread evenly, and so do the second choices of one server's keys (its failover load).
    @Test func rankingSpreadsKeys() {
        let pool = Self.pool(Self.servers)
        var first: [GearmanServerAddress: Int] = [:]
        var secondAfterFirstServer: [GearmanServerAddress: Int] = [:]
        for key in Self.keys {
            let ranking = pool.ranking(for: key).map(\.address)
            first[ranking[0], default: 0] += 1
            if ranking[0] == Self.servers[0] { secondAfterFirstServer[ranking[1], default: 0] += 1 }
        }
        for server in Self.servers {
            #expect((850...1150).contains(first[server, default: 0]), "\(server) first for \(first[server, default: 0]) of 3000")
        }
        let firstServerKeys = first[Self.servers[0], default: 0]
        for server in Self.servers.dropFirst() {
            let share = Double(secondAfterFirstServer[server, default: 0]) / Double(firstServerKeys)
            #expect((0.4...0.6).contains(share), "\(server) second for \(share) of \(Self.servers[0])'s keys")
        }
    }

    /// Removing a server moves only the keys it won.
    @Test func rankingIsStableWhenAServerLeaves() {
        let three = Self.pool(Self.servers)
        let two = Self.pool(Array(Self.servers.prefix(2)))
        var moved = 0
        for key in Self.keys {
            let before = three.ranking(for: key).map(\.address)
            let after = two.ranking(for: key).map(\.address)
            #expect(after == before.filter { $0 != Self.servers[2] })
            if before[0] == Self.servers[2] { moved += 1 }
        }
        #expect(moved > 0)
    }

    @Test func singleServerPool() {
        let pool = Self.pool([Self.servers[0]])
        #expect(pool.ranking(for: "anything").map(\.address) == [Self.servers[0]])
        #expect(pool.servers == [Self.servers[0]])
        #expect(pool.client(for: Self.servers[1]) == nil)
    }
}
