import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP socket to 127.0.0.1, for readiness probes and for tests that need raw bytes on the wire.
public final class LoopbackSocket {
    private let fd: Int32

    public init(port: Int, timeoutMs: Int = 2_000) throws {
        // `fd` is assigned only once connected: a throwing init of a fully initialised class runs deinit,
        // and closing a failed socket there too would close a descriptor number another thread reused.
        fd = try Self.connectedSocket(port: port, timeoutMs: timeoutMs)
    }

    private static func connectedSocket(port: Int, timeoutMs: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw LocalServerError(message: "socket() failed: errno \(errno)") }
        var timeout = timeval(tv_sec: timeoutMs / 1000, tv_usec: (timeoutMs % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard connected else {
            let code = errno
            close(fd)
            throw LocalServerError(message: "connect to 127.0.0.1:\(port) failed: errno \(code)")
        }
        return fd
    }

    deinit { close(fd) }

    public func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { throw LocalServerError(message: "send failed: errno \(errno)") }
            offset += written
        }
    }

    /// Ends the sending side: the peer reads the end of input, and reading goes on.
    public func finishSending() {
        shutdown(fd, Int32(SHUT_WR))
    }

    /// Reads what is available (at least one byte); an empty array means the peer closed.
    public func receive(maximum: Int = 65_536) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: maximum)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, maximum, 0) }
        guard count >= 0 else { throw LocalServerError(message: "recv failed or timed out: errno \(errno)") }
        return Array(buffer.prefix(count))
    }

    /// Reads until `isComplete` holds for everything read so far, the peer closes, or the timeout passes.
    public func receive(until isComplete: ([UInt8]) -> Bool) throws -> [UInt8] {
        var received: [UInt8] = []
        while !isComplete(received) {
            let chunk = try receive()
            if chunk.isEmpty { break }
            received += chunk
        }
        return received
    }

    /// Connects, sends `request`, and returns the first bytes of the answer.
    public static func exchange(port: Int, request: [UInt8], timeoutMs: Int) throws -> [UInt8] {
        let socket = try LoopbackSocket(port: port, timeoutMs: timeoutMs)
        try socket.send(request)
        return try socket.receive()
    }
}
