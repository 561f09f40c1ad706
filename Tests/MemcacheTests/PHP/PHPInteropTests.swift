import Foundation
import LocalServers
import NIOCore
import Testing

@testable import Memcache

/// Values written by the real PHP extensions, read by the Swift client, and the other way round.
@Suite struct PHPInteropTests {
    private func client(_ server: LocalServer) throws -> MemcacheClient {
        try MemcacheClient(servers: [MemcacheServer(host: server.host, port: server.port)], distribution: .single)
    }

    /// 45,000 bytes: over pecl's 20,000-byte threshold, and under 64 KiB so php-memcached uses FastLZ level 1.
    private static let bigText = String(repeating: "result line of a finished job\n", count: 1500)

    /// PHP code building a 100 KB string of five copies of a 20 KB pseudo-random block: FastLZ level 2 (used from
    /// 64 KiB) then has to reach back further than 8191 bytes.
    private static let hugePHP = """
        mt_srand(42); $block = ''; for ($i = 0; $i < 20000; $i++) { $block .= chr(mt_rand(97, 122)); }
        $huge = str_repeat($block, 5);
        """

    /// pecl memcache: int, string, float, bools, null, array, object and a zlib-compressed string.
    @Test func readsWhatPeclMemcacheWrote() async throws {
        try await withMemcached { server in
            let output = try await PHPRunner.run("""
                $m = new Memcache();
                $m->addServer('127.0.0.1', \(server.port));
                $ok = $m->set('int', 120) && $m->set('negative', -7) && $m->set('string', \(PHPRunner.literal("héllo\r\nEND\r\n")))
                    && $m->set('float', 1.5) && $m->set('true', true) && $m->set('false', false) && $m->set('null', null)
                    && $m->set('array', [1, 2, 'a' => 'b']) && $m->set('object', (object)['x' => 1])
                    && $m->set('big', str_repeat("result line of a finished job\\n", 1500), MEMCACHE_COMPRESSED);
                if (!$ok) { fwrite(STDERR, "set failed"); exit(1); }
                echo serialize([1, 2, 'a' => 'b']), "\\n", serialize((object)['x' => 1]);
                """)
            let lines = output.split(separator: "\n").map(String.init)
            try #require(lines.count == 2)
            let client = try client(server)
            defer { Task { await client.shutdown() } }

            #expect(try await client.getPHPValue("int", writtenBy: .peclMemcache) == .integer(120))
            #expect(try await client.get("int")?.flags == 0x300)
            #expect(try await client.getPHPValue("negative", writtenBy: .peclMemcache) == .integer(-7))
            #expect(try await client.getPHPValue("string", writtenBy: .peclMemcache)?.string == "héllo\r\nEND\r\n")
            #expect(try await client.getPHPValue("float", writtenBy: .peclMemcache) == .float(1.5))
            #expect(try await client.getPHPValue("true", writtenBy: .peclMemcache) == .bool(true))
            #expect(try await client.getPHPValue("false", writtenBy: .peclMemcache) == .bool(false))
            #expect(try await client.getPHPValue("null", writtenBy: .peclMemcache) == .null)
            guard case .serialized(let array) = try await client.getPHPValue("array", writtenBy: .peclMemcache) else {
                Issue.record("array not serialized"); return
            }
            #expect(array.format == .php && array.kind == .array && array.text == lines[0])
            guard case .serialized(let object) = try await client.getPHPValue("object", writtenBy: .peclMemcache) else {
                Issue.record("object not serialized"); return
            }
            #expect(object.kind == .object && object.text == lines[1])

            let raw = try #require(try await client.get("big"))
            #expect(raw.flags & 2 != 0, "pecl compressed the value")
            #expect(raw.data.readableBytes < Self.bigText.utf8.count / 5)
            #expect(try await client.getPHPValue("big", writtenBy: .peclMemcache)?.string == Self.bigText)
            #expect(try await client.getPHPValue("absent", writtenBy: .peclMemcache) == nil)
        }
    }

    /// php-memcached: scalars, array, and compressed strings with FastLZ level 1, level 2 and zlib.
    @Test func readsWhatPHPMemcachedWrote() async throws {
        try await withMemcached { server in
            let output = try await PHPRunner.run("""
                $m = new Memcached();
                $m->addServer('127.0.0.1', \(server.port));
                \(Self.hugePHP)
                $ok = $m->set('int', 120) && $m->set('string', \(PHPRunner.literal("héllo\r\nEND\r\n"))) && $m->set('float', -2.25)
                    && $m->set('true', true) && $m->set('false', false) && $m->set('null', null)
                    && $m->set('array', [1, 2, 'a' => 'b'])
                    && $m->set('big', str_repeat("result line of a finished job\\n", 1500))
                    && $m->set('huge', $huge);
                $m->setOption(Memcached::OPT_COMPRESSION, false);
                $ok = $ok && $m->set('huge-plain', $huge);
                $m->setOption(Memcached::OPT_COMPRESSION, true);
                $m->setOption(Memcached::OPT_COMPRESSION_TYPE, Memcached::COMPRESSION_ZLIB);
                $ok = $ok && $m->set('big-zlib', str_repeat("result line of a finished job\\n", 1500));
                if (!$ok) { fwrite(STDERR, "set failed: " . $m->getResultMessage()); exit(1); }
                echo serialize([1, 2, 'a' => 'b']);
                """)
            let client = try client(server)
            defer { Task { await client.shutdown() } }

            #expect(try await client.getPHPValue("int", writtenBy: .phpMemcached) == .integer(120))
            #expect(try await client.get("int")?.flags == 1)
            #expect(try await client.getPHPValue("string", writtenBy: .phpMemcached)?.string == "héllo\r\nEND\r\n")
            #expect(try await client.getPHPValue("float", writtenBy: .phpMemcached) == .float(-2.25))
            #expect(try await client.getPHPValue("true", writtenBy: .phpMemcached) == .bool(true))
            #expect(try await client.getPHPValue("false", writtenBy: .phpMemcached) == .bool(false))
            #expect(try await client.getPHPValue("null", writtenBy: .phpMemcached) == .null)
            guard case .serialized(let array) = try await client.getPHPValue("array", writtenBy: .phpMemcached) else {
                Issue.record("array not serialized"); return
            }
            #expect(array.kind == .array && array.text == output)

            // FastLZ level 1 (under 64 KiB).
            let big = try #require(try await client.get("big"))
            #expect(big.flags == 0x50, "php-memcached compressed with FastLZ")
            #expect(big.data.getInteger(at: big.data.readerIndex + 4, as: UInt8.self).map { $0 >> 5 } == 0, "level 1")
            #expect(try await client.getPHPValue("big", writtenBy: .phpMemcached)?.string == Self.bigText)

            // FastLZ level 2, with far back-references.
            let huge = try #require(try await client.get("huge"))
            #expect(huge.flags == 0x50)
            #expect(huge.data.getInteger(at: huge.data.readerIndex + 4, as: UInt8.self).map { $0 >> 5 } == 1, "level 2")
            let plain = try #require(try await client.get("huge-plain"))
            #expect(plain.flags == 0)
            #expect(try await client.getPHPValue("huge", writtenBy: .phpMemcached) == .string(plain.data))

            // zlib.
            #expect(try await client.get("big-zlib")?.flags == 0x30)
            #expect(try await client.getPHPValue("big-zlib", writtenBy: .phpMemcached)?.string == Self.bigText)
        }
    }

    /// A string the Swift client writes reads back as that exact string through both extensions.
    @Test func bothExtensionsReadSwiftStrings() async throws {
        try await withMemcached { server in
            let client = try client(server)
            defer { Task { await client.shutdown() } }
            let small = "{\"status\":\"done\",\"note\":\"tab\\there, é ü\"}\r\nEND\r\n"
            try await client.setPHPString("H:gw-host:1", to: small)
            try await client.setPHPString("H:gw-host:2", to: Self.bigText)
            try await client.setPHPString("H:gw-host:3", to: "")

            let script = """
                $pecl = new Memcache(); $pecl->addServer('127.0.0.1', \(server.port));
                $mc = new Memcached(); $mc->addServer('127.0.0.1', \(server.port));
                foreach (['H:gw-host:1', 'H:gw-host:2', 'H:gw-host:3'] as $k) {
                    foreach ([$pecl->get($k), $mc->get($k)] as $v) { echo gettype($v), ':', strlen($v), ':', md5($v), "\\n"; }
                }
                """
            let lines = try await PHPRunner.run(script).split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
            let summary = { (text: String) in
                "string:\(text.utf8.count):" + MD5.digest(Array(text.utf8)).map { String(format: "%02x", $0) }.joined()
            }
            #expect(lines == [small, small, Self.bigText, Self.bigText, "", ""].map(summary))
        }
    }

    /// Each typed value encoded for an extension is read back by that extension as the same PHP value.
    @Test(arguments: [PHPMemcacheExtension.peclMemcache, .phpMemcached])
    func typedWritesReadBackByPHP(_ reader: PHPMemcacheExtension) async throws {
        try await withMemcached { server in
            let client = try client(server)
            defer { Task { await client.shutdown() } }
            let values: [(String, PHPValue, String)] = [
                ("int", .integer(-42), "-42"),
                ("float", .float(2.5), "2.5"),
                ("true", .bool(true), "true"),
                ("false", .bool(false), "false"),
                // pecl memcache returns false for a stored null, exactly as for a null PHP wrote itself.
                ("null", .null, reader == .peclMemcache ? "false" : "NULL"),
                ("string", .string(ByteBuffer(string: "text")), "'text'"),
                ("array", .serialized(PHPSerializedValue(format: .php, bytes: ByteBuffer(string: "a:1:{s:1:\"k\";i:7;}"))), "array (  'k' => 7,)"),
            ]
            for (key, value, _) in values {
                try await client.set(key, to: try value.encoded(for: reader))
            }
            let connect = reader == .peclMemcache
                ? "$m = new Memcache(); $m->addServer('127.0.0.1', \(server.port));"
                : "$m = new Memcached(); $m->addServer('127.0.0.1', \(server.port));"
            let output = try await PHPRunner.run("""
                \(connect)
                foreach ([\(values.map { "'\($0.0)'" }.joined(separator: ", "))] as $k) {
                    echo str_replace("\\n", '', var_export($m->get($k), true)), "\\n";
                }
                """)
            #expect(output.split(separator: "\n").map(String.init) == values.map(\.2))
            // And the Swift decoder agrees with its own encoding.
            for (key, value, _) in values {
                #expect(try await client.getPHPValue(key, writtenBy: reader) == value)
            }
        }
    }
}
