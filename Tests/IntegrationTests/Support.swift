import Foundation
import Gearman
import LocalServers
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import Testing

extension LocalServer {
    var gearmanAddress: GearmanServerAddress { GearmanServerAddress(host: host, port: port) }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
}

/// Runs `service` (a worker) while `body` runs, then shuts it down gracefully and waits for it to return.
func withRunning<S: Service, T: Sendable>(_ service: S, _ body: @Sendable () async throws -> T) async throws -> T {
    let group = ServiceGroup(configuration: .init(services: [service], logger: Logger(label: "test")))
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        do {
            let result = try await body()
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return result
        } catch {
            tasks.cancelAll()
            throw error
        }
    }
}

func job(_ function: String, _ unique: String, _ payload: String, _ priority: GearmanPriority = .normal) -> GearmanJobRequest {
    GearmanJobRequest(function: function, unique: unique, payload: ByteBuffer(string: payload), priority: priority)
}

/// A TCP listener on loopback that accepts connections and never answers: a hung server.
func withSilentServer<T>(_ body: (Int) async throws -> T) async throws -> T {
    let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .childChannelInitializer { channel in channel.eventLoop.makeSucceededVoidFuture() }
        .bind(host: "127.0.0.1", port: 0)
        .get()
    defer { channel.close(promise: nil) }
    return try await body(channel.localAddress!.port!)
}
