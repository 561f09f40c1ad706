import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A unix datagram socket standing in for systemd's notification socket (`NOTIFY_SOCKET`) in tests.
public final class NotifySocket: @unchecked Sendable {
    public let path: String
    private let descriptor: Int32

    public init() throws {
        path = "/tmp/jobgate-notify-\(UUID().uuidString.prefix(8)).sock"
        descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard descriptor >= 0 else { throw LocalServerError(message: "socket: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            close(descriptor)
            throw LocalServerError(message: "bind \(path): errno \(errno)")
        }
        var timeout = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit {
        close(descriptor)
        unlink(path)
    }

    /// The next datagram; throws if none arrives within 15 s. Blocks a thread of its own, not one of the pool's.
    public func receive() async throws -> String {
        let descriptor = self.descriptor
        return try await withCheckedThrowingContinuation { continuation in
            Thread {
                var buffer = [UInt8](repeating: 0, count: 4096)
                let count = recv(descriptor, &buffer, buffer.count, 0)
                continuation.resume(
                    with: count >= 0
                        ? .success(String(decoding: buffer[..<count], as: UTF8.self))
                        : .failure(LocalServerError(message: "no notification within 15 s (errno \(errno))"))
                )
            }.start()
        }
    }
}
