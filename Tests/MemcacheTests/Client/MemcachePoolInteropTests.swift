import LocalServers
import Memcache
import NIOCore
import Testing

/// Two real memcached servers: keys PHP writes through a pool are found by the Swift client with the same list.
@Suite struct MemcachePoolInteropTests {
    struct Mode: Sendable, CustomTestStringConvertible {
        var distribution: MemcacheDistribution
        var weights: (Int, Int)
        var testDescription: String { "\(distribution) weights \(weights.0)/\(weights.1)" }

        var writer: PHPMemcacheExtension {
            switch distribution {
            case .peclMemcacheConsistent, .peclMemcacheStandard: .peclMemcache
            default: .phpMemcached
            }
        }
    }

    static let modes: [Mode] = [
        Mode(distribution: .peclMemcacheConsistent, weights: (1, 1)),
        Mode(distribution: .peclMemcacheConsistent, weights: (1, 3)),
        Mode(distribution: .peclMemcacheStandard, weights: (1, 1)),
        Mode(distribution: .peclMemcacheStandard, weights: (2, 1)),
        Mode(distribution: .phpMemcachedModula, weights: (1, 1)),
        Mode(distribution: .phpMemcachedConsistent, weights: (1, 1)),
        Mode(distribution: .phpMemcachedKetama, weights: (1, 1)),
        Mode(distribution: .phpMemcachedKetama, weights: (1, 3)),
    ]

    static let keyCount = 200

    /// The keys PHP writes: gateway job handles and other shapes.
    static func key(_ i: Int) -> String {
        switch i % 3 {
        case 0: "H:gw-host:\(i)"
        case 1: "result:\(i * 7919)"
        default: "job-\(i)-x"
        }
    }

    private func phpScript(_ mode: Mode, servers: [MemcacheServer]) -> (code: String, ini: [String: String]) {
        let write = """
            for ($i = 0; $i < \(Self.keyCount); $i++) {
                switch ($i % 3) { case 0: $k = "H:gw-host:$i"; break; case 1: $k = "result:" . ($i * 7919); break; default: $k = "job-$i-x"; }
                if (!$m->set($k, "value-$i")) { fwrite(STDERR, "set $k failed"); exit(1); }
            }
            echo "ok";
            """
        switch mode.distribution {
        case .peclMemcacheConsistent, .peclMemcacheStandard:
            let add = servers.map { "$m->addServer('\($0.host)', \($0.port), false, \($0.weight));" }.joined(separator: "\n")
            let strategy = mode.distribution == .peclMemcacheConsistent ? "consistent" : "standard"
            return ("$m = new Memcache();\n\(add)\n\(write)", ["memcache.hash_strategy": strategy, "memcache.hash_function": "crc32"])
        default:
            let option: String
            switch mode.distribution {
            case .phpMemcachedConsistent: option = "$m->setOption(Memcached::OPT_DISTRIBUTION, Memcached::DISTRIBUTION_CONSISTENT);"
            case .phpMemcachedKetama: option = "$m->setOption(Memcached::OPT_LIBKETAMA_COMPATIBLE, true);"
            default: option = ""
            }
            let add = servers.map { "$m->addServer('\($0.host)', \($0.port), \($0.weight));" }.joined(separator: "\n")
            return ("$m = new Memcached();\n\(option)\n\(add)\n\(write)", [:])
        }
    }

    /// Every key PHP wrote is found by the Swift client on the server it selects, and the keys really are spread
    /// over both servers.
    @Test(arguments: modes)
    func findsKeysPHPWroteThroughAPool(_ mode: Mode) async throws {
        try await withMemcached { first in
            try await withMemcached { second in
                let servers = [
                    MemcacheServer(host: first.host, port: first.port, weight: mode.weights.0),
                    MemcacheServer(host: second.host, port: second.port, weight: mode.weights.1),
                ]
                let (code, ini) = phpScript(mode, servers: servers)
                #expect(try await PHPRunner.run(code, ini: ini) == "ok")

                let client = try MemcacheClient(servers: servers, distribution: mode.distribution)
                defer { Task { await client.shutdown() } }
                let keys = (0..<Self.keyCount).map(Self.key)

                // One at a time: each lookup goes only to the selected server.
                for (i, key) in keys.enumerated() {
                    let value = try await client.getPHPValue(key, writtenBy: mode.writer)
                    #expect(value?.string == "value-\(i)", "\(key) on \(client.server(forKey: key))")
                }
                // Multi-get across the pool.
                let all = try await client.get(keys)
                #expect(all.count == keys.count)

                // Where the keys really are: ask each server directly.
                var onServer: [Int] = []
                for (index, server) in servers.enumerated() {
                    let connection = try await MemcacheConnection.connect(host: server.host, port: server.port)
                    let found = Set(try await connection.get(keys).map(\.key))
                    await connection.close()
                    onServer.append(found.count)
                    for key in found {
                        #expect(client.selector.serverIndex(forKey: key) == index, "\(key) is on server \(index)")
                    }
                }
                #expect(onServer.allSatisfy { $0 > keys.count / 10 }, "keys spread over both servers: \(onServer)")
                #expect(onServer.reduce(0, +) == keys.count)

                // The check discriminates: another extension's algorithm puts many of these keys elsewhere.
                let other = try MemcacheServerSelector(
                    servers: servers,
                    distribution: mode.writer == .peclMemcache ? .phpMemcachedModula : .peclMemcacheConsistent
                )
                let moved = keys.filter { other.serverIndex(forKey: $0) != client.selector.serverIndex(forKey: $0) }.count
                #expect(moved > keys.count / 5, "only \(moved) keys placed differently")
            }
        }
    }
}
