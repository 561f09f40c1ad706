import Foundation
import GatewayProtocol
import LocalServers
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `jobgate serve` run as a service: signals, reload, systemd notifications, a checked configuration.
@Suite("jobgate serve lifecycle", .timeLimit(.minutes(2)))
struct LifecycleTests {
    /// SIGTERM and SIGINT stop the gateway with exit status 0, with and without `--http`, after answering what it
    /// had read: a pending WAIT gets its reply, and the PING read behind it too.
    @Test(arguments: [SIGTERM, SIGINT], [false, true])
    func stopsGracefully(signal: Int32, http: Bool) async throws {
        try await withServeProcess(arguments: http ? ["--http", "127.0.0.1:\(try freeLoopbackPort())"] : []) { gateway, port in
            let client = try await GatewayTestClient.connect(port: port)
            defer { Task { await client.close() } }
            let id = try #require(try await client.request(submitLine("nobody-runs-this", "x"))?.createdID)
            try await client.send("WAIT \(id) 60000\nPING\n")
            try await Task.sleep(for: .milliseconds(500))  // both read and the WAIT pending before the signal
            gateway.signal(signal)
            let waited = try await client.next()
            #expect(waited != nil && waited != .reply(.pong, tag: nil), "the WAIT is answered: \(String(describing: waited))")
            #expect(try await client.next() == .reply(.pong, tag: nil))
            #expect(try await client.next() == nil, "then the connection closes")
            #expect(try await gateway.waitForExit() == 0, "\(gateway.log)")
            #expect(!gateway.log.contains("Error"), "\(gateway.log)")
        }
    }

    /// `--event-loops` (or `JOBGATE_EVENT_LOOPS`) sets how many threads serve: the process runs exactly that many
    /// event loops, and jobs go through as with the default.
    @Test(arguments: [1, 3])
    func runsTheEventLoopsItIsGiven(count: Int) async throws {
        try await withServeProcess(arguments: [], environment: ["JOBGATE_EVENT_LOOPS": "\(count)"]) { gateway, port in
            let client = try await GatewayTestClient.connect(port: port)
            defer { Task { await client.close() } }
            #expect(try await client.request(submitLine("nobody-runs-this", "x"))?.createdID != nil)
            let pid = gateway.pid
            let threads = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task").map {
                try String(contentsOfFile: "/proc/\(pid)/task/\($0)/comm", encoding: .utf8)
            }
            let loops = threads.filter { $0.hasPrefix("NIO-SGLTN-") }
            #expect(loops.count == count, "\(threads)")
        }
    }

    /// SIGTERM while the gateway still waits for Redis (not listening yet) stops it at once with exit status 0.
    @Test func stopsWhileWaitingForRedis() async throws {
        try await withLocalServer(.gearmand) { gearmand in
            try await withLocalServer(.redis) { redis in
                redis.kill()
                let gateway = try LocalProcess(
                    jobgateExecutable(),
                    ["serve", "--listen", "127.0.0.1:\(try freeLoopbackPort())", "--gearman", gearmand.address, "--redis", redis.address]
                )
                defer { gateway.stop() }
                try await eventually("the gateway to say it waits") { gateway.log.contains("waiting for Redis") }
                gateway.signal(SIGTERM)
                #expect(try await gateway.waitForExit(timeout: .seconds(10)) == 0, "\(gateway.log)")
            }
        }
    }

    /// SIGHUP re-reads the file: new AUTHs need the new secret while a connection authenticated before keeps its
    /// state; the log level changes; a log line names what changed and what needs a restart.
    @Test func hangupReloads() async throws {
        let file = try TemporaryFile("secrets = old\nlog-level = info\n")
        try await withServeProcess(arguments: ["--config", file.path]) { gateway, port in
            let before = try await GatewayTestClient.connect(port: port)
            defer { Task { await before.close() } }
            #expect(try await before.request("AUTH old\n") == .reply(.ok, tag: nil))

            try file.write("secrets = new,newer\nlog-level = debug\nmax-line = 4096\nkey-prefix = elsewhere:\n")
            gateway.signal(SIGHUP)
            try await eventually("the reload's log line") { gateway.log.contains("configuration reloaded") }
            #expect(gateway.exitStatus == nil, "SIGHUP does not end the gateway: \(gateway.log)")
            let reloadLine = try #require(gateway.log.split(separator: "\n").first { $0.contains("configuration reloaded") })
            #expect(reloadLine.contains("config.changed=secrets,max-line,log-level"), "\(reloadLine)")
            #expect(gateway.log.contains("need a restart") && gateway.log.contains("config.needs-restart=key-prefix"), "\(gateway.log)")
            #expect(!gateway.log.contains("newer"), "secrets stay out of the log")

            let after = try await GatewayTestClient.connect(port: port)
            defer { Task { await after.close() } }
            guard case .reply(.error(code: .denied, _), _) = try await after.request("AUTH old\n") else {
                Issue.record("the old secret is refused for a new AUTH")
                return
            }
            #expect(try await after.request("AUTH newer\n") == .reply(.ok, tag: nil))
            #expect(try await before.request(submitLine("nobody-runs-this", "x"))?.createdID != nil, "authenticated before, still is")
            guard case .reply(.error(code: .lineTooLong, _), _) = try await after.request("PING " + String(repeating: "x", count: 5_000) + "\n") else {
                Issue.record("the new --max-line applies to new requests")
                return
            }

            // Debug lines now show: a connection that ends inside a request logs one.
            let partial = try await GatewayTestClient.connect(port: port)
            try await partial.send("SUBMIT f 100\nabc")
            try await partial.channel.close(mode: .output)
            try await eventually("a debug line") { gateway.log.contains("connection closed inside a request") }
            await partial.close()
        }
    }

    /// A configuration with a mistake, on SIGHUP, changes nothing: the error is logged and the old secret still works.
    @Test func hangupWithBadConfigurationKeepsTheRunningOne() async throws {
        let file = try TemporaryFile("secrets = old\n")
        try await withServeProcess(arguments: ["--config", file.path]) { gateway, port in
            try file.write("secret = new\n")
            gateway.signal(SIGHUP)
            try await eventually("the error's log line") { gateway.log.contains("configuration not reloaded") }
            #expect(gateway.log.contains("unknown setting `secret`; did you mean `secrets`?"), "\(gateway.log)")
            let client = try await GatewayTestClient.connect(port: port)
            defer { Task { await client.close() } }
            #expect(try await client.request("AUTH old\n") == .reply(.ok, tag: nil))
            gateway.signal(SIGTERM)
            #expect(try await gateway.waitForExit() == 0, "\(gateway.log)")
        }
    }

    /// With `$NOTIFY_SOCKET` (as systemd sets for `Type=notify`) the gateway sends READY=1 once it listens,
    /// RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a reload, and STOPPING=1 on stop.
    @Test func notifiesSystemd() async throws {
        let socket = try NotifySocket()
        try await withServeProcess(arguments: [], environment: ["NOTIFY_SOCKET": socket.path]) { gateway, _ in
            #expect(try await socket.receive() == "READY=1")
            gateway.signal(SIGHUP)
            let reloading = try await socket.receive()
            #expect(reloading.hasPrefix("RELOADING=1\nMONOTONIC_USEC="), "\(reloading)")
            #expect(Int(reloading.split(separator: "=").last ?? "").map { $0 > 0 } == true, "\(reloading)")
            #expect(try await socket.receive() == "READY=1")
            gateway.signal(SIGTERM)
            #expect(try await socket.receive() == "STOPPING=1")
            #expect(try await gateway.waitForExit() == 0, "\(gateway.log)")
        }
    }

    /// An unknown name in the file, an unknown JOBGATE_ variable or a bad value stops the start with exit status 78
    /// and a message naming it and the nearest valid name.
    @Test func mistakesStopTheStart() async throws {
        let typo = try TemporaryFile("listen = 127.0.0.1:1\n\nsecret = x\n")
        var run = try await runProgram(jobgateExecutable(), ["serve", "--config", typo.path], timeout: .seconds(10))
        #expect(run.status == 78 && run.errors.contains("\(typo.path):3: unknown setting `secret`; did you mean `secrets`?"), "\(run.errors)")

        run = try await runProgram(
            jobgateExecutable(), ["serve", "--listen", "127.0.0.1:1"], environment: ["JOBGATE_MAX_PAYLOD": "10"], timeout: .seconds(10)
        )
        #expect(run.status == 78 && run.errors.contains("unknown environment variable JOBGATE_MAX_PAYLOD; did you mean `JOBGATE_MAX_PAYLOAD`?"), "\(run.errors)")

        run = try await runProgram(jobgateExecutable(), ["serve"], environment: ["JOBGATE_LISTEN": "nowhere"], timeout: .seconds(10))
        #expect(run.status == 78 && run.errors.contains("JOBGATE_LISTEN: expected host:port, got nowhere"), "\(run.errors)")

        let badValue = try TemporaryFile("max-line = lots\n")
        run = try await runProgram(jobgateExecutable(), ["serve", "--config", badValue.path], timeout: .seconds(10))
        #expect(run.status == 78 && run.errors.contains("max-line (\(badValue.path):1): not a non-negative number: lots"), "\(run.errors)")

        run = try await runProgram(jobgateExecutable(), ["serve", "--listen", "127.0.0.1:1"], environment: ["JOBGATE_LOG_LEVEL": "loud"], timeout: .seconds(10))
        #expect(run.status == 78 && run.errors.contains("JOBGATE_LOG_LEVEL: expected trace, debug, info, notice, warning, error or critical, got loud"), "\(run.errors)")
    }

    /// A limit or timeout of 0, or no gearmand at all, is a mistake: refused at start and by `--check-config`, and
    /// a reload that brings one keeps the running configuration (a zero line limit once crashed the next connection).
    /// A reload with the log format given on the command line does not report it as needing a restart.
    @Test func zeroLimitsAreRefusedAtStartAndOnReload() async throws {
        for arguments in [["--max-line", "0"], ["--idle-timeout", "0"], ["--max-lookup-bytes", "0"], ["--gearman", ""]] {
            let run = try await runProgram(jobgateExecutable(), ["serve", "--check-config"] + arguments, timeout: .seconds(10))
            #expect(run.status == 78 || run.status == 64, "\(arguments): \(run.errors)")
        }
        let zero = try await runProgram(jobgateExecutable(), ["serve", "--check-config", "--max-line", "0"], timeout: .seconds(10))
        #expect(zero.errors.contains("--max-line must be at least 1, got 0"), "\(zero.errors)")

        let file = try TemporaryFile("max-watches = 5\n")
        try await withServeProcess(arguments: ["--config", file.path, "--log-format", "json"]) { gateway, port in
            try file.write("max-watches = 5\nmax-line = 0\n")
            gateway.signal(SIGHUP)
            try await eventually("the error's log line") { gateway.log.contains("configuration not reloaded") }
            #expect(gateway.log.contains("max-line (\(file.path):2) must be at least 1, got 0"), "\(gateway.log)")
            let client = try await GatewayTestClient.connect(port: port)
            defer { Task { await client.close() } }
            #expect(try await client.request("PING\n") == .reply(.pong, tag: nil), "the gateway still serves")

            try file.write("max-watches = 6\n")
            gateway.signal(SIGHUP)
            try await eventually("the reload's log line") { gateway.log.contains("configuration reloaded") }
            #expect(!gateway.log.contains("needs-restart"), "\(gateway.log)")
        }
    }

    /// Other jobgate programs' variables (the client's, the test harness's) in the same environment are no mistake;
    /// the client's `JOBGATE_SECRET` without the gateway's `JOBGATE_SECRETS` is, as it would start without auth.
    @Test func otherProgramsVariablesAreNoMistakeButANearMissIs() async throws {
        var run = try await runProgram(
            jobgateExecutable(), ["serve", "--check-config"],
            environment: ["JOBGATE_GATEWAY": "127.0.0.1:4740", "JOBGATE_SECRET": "s", "JOBGATE_SECRETS": "s"], timeout: .seconds(10)
        )
        #expect(run.status == 0 && run.outputText.contains("secrets = ********"), "\(run.errors)")
        run = try await runProgram(jobgateExecutable(), ["serve", "--check-config"], environment: ["JOBGATE_SECRET": "s"], timeout: .seconds(10))
        #expect(run.status == 78 && run.errors.contains("unknown environment variable JOBGATE_SECRET; did you mean `JOBGATE_SECRETS`?"), "\(run.errors)")
    }

    /// `--check-config` validates and prints the effective configuration, secrets masked, without starting.
    @Test func checkConfigPrintsTheEffectiveConfiguration() async throws {
        let file = try TemporaryFile("secrets = hunter2\nmax-watches = 7\nredis = 127.0.0.1:1\n")
        let run = try await runProgram(
            jobgateExecutable(), ["serve", "--config", file.path, "--max-line", "100", "--check-config"],
            environment: ["JOBGATE_REDIS_PASSWORD": "swordfish"], timeout: .seconds(10)
        )
        #expect(run.status == 0, "\(run.errors)")
        let lines = Set(run.outputText.split(separator: "\n").map(String.init))
        for expected in ["max-line = 100", "max-watches = 7", "redis = 127.0.0.1:1", "secrets = ********", "redis-password = ********",
                         "listen = 127.0.0.1:4740", "log-level = info"] {
            #expect(lines.contains(expected), "\(expected) in \(run.outputText)")
        }
        #expect(!run.outputText.contains("hunter2") && !run.outputText.contains("swordfish"))

        let typo = try TemporaryFile("max-watchs = 7\n")
        let bad = try await runProgram(jobgateExecutable(), ["serve", "--config", typo.path, "--check-config"], timeout: .seconds(10))
        #expect(bad.status == 78 && bad.errors.contains("did you mean `max-watches`?"), "\(bad.errors)")
    }
}

/// Runs `jobgate serve` against fresh gearmand and Redis, once it answers PING; stops it (SIGKILL) afterwards if the
/// test did not.
func withServeProcess(
    arguments: [String], environment: [String: String] = [:], _ body: (LocalProcess, Int) async throws -> Void
) async throws {
    try await withLocalServer(.gearmand) { gearmand in
        try await withLocalServer(.redis) { redis in
            let port = try freeLoopbackPort()
            let gateway = try LocalProcess(
                jobgateExecutable(),
                ["serve", "--listen", "127.0.0.1:\(port)", "--gearman", gearmand.address, "--redis", redis.address] + arguments,
                environment: environment
            )
            defer { gateway.stop() }
            try await eventually("the gateway to answer PING") {
                if let status = gateway.exitStatus { throw DeployTestFailure(description: "jobgate serve exited (\(status)): \(gateway.log)") }
                return (try? LoopbackSocket.exchange(port: port, request: Array("PING\r\n".utf8), timeoutMs: 500)) == Array("PONG\r\n".utf8)
            }
            try await body(gateway, port)
        }
    }
}
