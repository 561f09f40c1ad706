import Logging
import NIOCore
import NIOEmbedded
import Synchronization
import Testing

@testable import Gearman

@Suite("GearmanWorkerChannelHandler")
struct GearmanWorkerChannelHandlerTests {
    static let server = GearmanServerAddress(host: "127.0.0.1")

    /// Jobs the handler started, as seen by the runner.
    final class Started: Sendable {
        let jobs = Mutex<[GearmanJob]>([])
    }

    struct Fixture {
        let channel: EmbeddedChannel
        let connection: GearmanWorkerConnection
        let slots: GearmanWorkerSlots
        let started: Started

        /// Every buffer written so far, decoded.
        func written() throws -> [GearmanPacket] {
            var packets: [GearmanPacket] = []
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
                for message in try GearmanCodecTests.decode([buffer]) {
                    guard case .packet(let packet) = message else { throw GearmanProtocolError.invalidTextCommand("\(message)") }
                    packets.append(packet)
                }
            }
            return packets
        }

        func receive(_ packets: GearmanPacket...) throws {
            try channel.writeInbound(ByteBuffer.joined(packets.map(\.wire)))
            channel.embeddedEventLoop.run()
        }

        /// What the worker does when a job ends: free the slot, then tell the connection.
        func finishJob() {
            slots.release()
            connection.jobFinished()
            channel.embeddedEventLoop.run()
        }
    }

    static func makeFixture(concurrency: Int = 1) throws -> Fixture {
        let slots = GearmanWorkerSlots(count: concurrency)
        let started = Started()
        let handler = GearmanWorkerChannelHandler(
            server: server,
            functions: ["resize", "thumb"],
            clientID: "worker-A",
            maximumJobSize: 1 << 20,
            slots: slots,
            logger: Logger(label: "test.gearman.worker")
        ) { job, _ in started.jobs.withLock { $0.append(job) } }
        let channel = EmbeddedChannel()
        let connection = GearmanWorkerConnection(channel: channel, handler: NIOLoopBound(handler, eventLoop: channel.eventLoop))
        handler.connection = connection
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4730)).wait()
        return Fixture(channel: channel, connection: connection, slots: slots, started: started)
    }

    static let grab = GearmanPacket(.request, .grabJobUniq)
    static let preSleep = GearmanPacket(.request, .preSleep)

    /// Registers, grabs, sleeps on NO_JOB, grabs again on NOOP, and hands the assigned job to the runner.
    @Test func registerGrabSleepWakeAssign() throws {
        let fixture = try Self.makeFixture()
        defer { _ = try? fixture.channel.finish() }
        #expect(
            try fixture.written() == [
                GearmanPacket(.request, .setClientID, "worker-A"), GearmanPacket(.request, .canDo, "resize"),
                GearmanPacket(.request, .canDo, "thumb"), Self.grab,
            ]
        )
        try fixture.receive(.response(.noJob))
        #expect(try fixture.written() == [Self.preSleep])
        try fixture.receive(.response(.noop))
        #expect(try fixture.written() == [Self.grab])
        try fixture.receive(.response(.jobAssignUniq, "H:vm:1", "resize", "img-1", "pixels\0and\nbytes"))
        let job = try #require(fixture.started.jobs.withLock { $0.first })
        #expect(job == GearmanJob(handle: "H:vm:1", function: "resize", unique: "img-1", payload: ByteBuffer(string: "pixels\0and\nbytes"), server: Self.server))
        // The only slot is the job's: no grab until it ends.
        #expect(try fixture.written().isEmpty)
        fixture.finishJob()
        #expect(try fixture.written() == [Self.grab])
    }

    /// Draining with a job running: no new grab, and the connection closes once the job has ended.
    @Test func drainClosesAfterTheRunningJob() throws {
        let fixture = try Self.makeFixture(concurrency: 2)
        defer { _ = try? fixture.channel.finish() }
        _ = try fixture.written()
        try fixture.receive(.response(.jobAssignUniq, "H:vm:1", "thumb", "t-1", "x"))
        #expect(try fixture.written() == [Self.grab])  // the second slot grabs
        fixture.connection.drain()
        fixture.channel.embeddedEventLoop.run()
        try fixture.receive(.response(.noJob))
        #expect(try fixture.written().isEmpty)  // no PRE_SLEEP while draining
        #expect(fixture.channel.isActive)
        fixture.finishJob()
        #expect(!fixture.channel.isActive)
    }

    /// Admin text on a worker connection is a protocol violation: the connection closes.
    @Test func textOnAWorkerConnectionCloses() throws {
        let fixture = try Self.makeFixture()
        defer { _ = try? fixture.channel.finish() }
        try fixture.channel.writeInbound(ByteBuffer(string: "OK\n"))
        #expect(!fixture.channel.isActive)
    }

    /// Losing the connection during a grab gives the slot back to the other connections.
    @Test func connectionLossDuringGrabReleasesTheSlot() throws {
        let fixture = try Self.makeFixture()
        _ = try fixture.written()  // the grab holds the only slot
        #expect(!fixture.slots.tryReserve())
        try fixture.channel.close().wait()
        #expect(fixture.slots.tryReserve())
    }
}
