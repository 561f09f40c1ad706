import Foundation
import Gearman
import JobStore
import LocalServers
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `jobgate worker` run as a service: Redis not up yet, a checked configuration, SIGHUP.
@Suite("jobgate worker lifecycle", .timeLimit(.minutes(3)))
struct WorkerLifecycleTests {
    /// Started while Redis is down, the worker waits for it (saying so once) instead of exiting, takes no job
    /// meanwhile, and runs the queued jobs once Redis is back.
    @Test func waitsForRedis() async throws {
        // An append-only file that is synced on every write: the job records survive Redis being killed.
        try await withWorkerServers(redisArguments: ["--appendonly", "yes", "--appendfsync", "always"]) { redis, gearmand, store, gearman in
            var ids: [JobID] = []
            for _ in 0..<50 { ids.append(try await submit("upper", "hello", store: store, gearman: gearman).id) }
            redis.kill()
            let worker = try startWorkerCommand(gearmand: gearmand, redis: redis, ["--function", "upper", "--concurrency", "4", "--", "tr", "a-z", "A-Z"])
            defer { worker.stop() }
            try await eventually("the worker to say it waits") { worker.log.contains("waiting for Redis at \(redis.address)") }
            try await Task.sleep(for: .seconds(1))
            #expect(worker.exitStatus == nil, "the worker exited without Redis: \(worker.log)")
            #expect(worker.log.components(separatedBy: "waiting for Redis").count == 2, "said once: \(worker.log)")
            let queued = try await gearman.admin(.status).first { $0.hasPrefix("upper\t") }
            #expect(queued == "upper\t50\t0\t0", "no job taken while Redis is down: \(String(describing: queued))")

            try await redis.launch()
            try await eventually("the 50 jobs to run", timeout: .seconds(30)) {
                var done = 0
                for id in ids where (try? await store.record(id))??.state == .done { done += 1 }
                return done == ids.count
            }
            #expect(try await store.record(ids[0])?.result == ByteBuffer(string: "HELLO"))
            worker.signal(SIGTERM)
            #expect(try await worker.waitForExit() == 0, "\(worker.log)")
        }
    }

    /// SIGTERM while waiting for Redis is a clean stop.
    @Test func stopsWhileWaitingForRedis() async throws {
        try await withWorkerServers { redis, gearmand, _, _ in
            redis.kill()
            let worker = try startWorkerCommand(gearmand: gearmand, redis: redis, ["--function", "upper", "--", "tr", "a-z", "A-Z"])
            defer { worker.stop() }
            try await eventually("the worker to say it waits") { worker.log.contains("waiting for Redis") }
            worker.signal(SIGTERM)
            #expect(try await worker.waitForExit() == 0, "\(worker.log)")
        }
    }

    /// The worker's options come from the same settings as the gateway's: a config file and JOBGATE_ variables,
    /// checked for unknown names and bad values (exit 78), and `--check-config` prints the effective configuration.
    @Test func configurationIsChecked() async throws {
        let file = try TemporaryFile("function = upper,lower\nconcurrency = 3\nredis-password = pw\n")
        let check = try await runProgram(
            jobgateExecutable(), ["worker", "--config", file.path, "--timeout", "5", "--check-config"], timeout: .seconds(10)
        )
        #expect(check.status == 0, "\(check.errors)")
        let lines = Set(check.outputText.split(separator: "\n").map(String.init))
        for expected in ["function = upper,lower", "concurrency = 3", "timeout = 5.0", "redis-password = ********", "log-level = info"] {
            #expect(lines.contains(expected), "\(expected) in \(check.outputText)")
        }
        #expect(!check.outputText.contains("= pw"))

        let typo = try TemporaryFile("function = upper\nconcurency = 3\n")
        var run = try await runProgram(jobgateExecutable(), ["worker", "--config", typo.path, "--", "true"], timeout: .seconds(10))
        #expect(run.status == 78 && run.errors.contains("\(typo.path):2: unknown setting `concurency`; did you mean `concurrency`?"), "\(run.errors)")

        run = try await runProgram(
            jobgateExecutable(), ["worker", "--function", "upper", "--", "true"], environment: ["JOBGATE_REDIS_PASWORD": "x"], timeout: .seconds(10)
        )
        #expect(run.status == 78 && run.errors.contains("did you mean `JOBGATE_REDIS_PASSWORD`?"), "\(run.errors)")

        let bad = try TemporaryFile("function = upper\nconcurrency = many\n")
        run = try await runProgram(jobgateExecutable(), ["worker", "--config", bad.path, "--", "true"], timeout: .seconds(10))
        #expect(run.status == 78 && run.errors.contains("concurrency (\(bad.path):2): expected a number, got many"), "\(run.errors)")
    }

    /// SIGHUP re-reads the file and takes a new log level; the worker keeps running.
    @Test func hangupReloadsTheLogLevel() async throws {
        try await withWorkerServers { redis, gearmand, _, gearman in
            let file = try TemporaryFile("function = upper\nlog-level = info\n")
            let worker = try LocalProcess(
                jobgateExecutable(), ["worker", "--config", file.path, "--gearman", gearmand.address, "--redis", redis.address, "--", "tr", "a-z", "A-Z"]
            )
            defer { worker.stop() }
            try await waitForWorker(gearman, function: "upper")
            try file.write("function = upper\nlog-level = debug\n")
            worker.signal(SIGHUP)
            try await eventually("the reload's log line") { worker.log.contains("configuration reloaded") }
            #expect(worker.log.contains("config.changed=log-level"), "\(worker.log)")
            #expect(worker.exitStatus == nil, "SIGHUP does not end the worker: \(worker.log)")
            worker.signal(SIGTERM)
            #expect(try await worker.waitForExit() == 0, "\(worker.log)")
        }
    }

    /// Under systemd the worker says READY=1 once Redis answers, RELOADING=1 then READY=1 around a reload and
    /// STOPPING=1 on stop, as the gateway does.
    @Test func notifiesSystemd() async throws {
        try await withWorkerServers { redis, gearmand, _, _ in
            let socket = try NotifySocket()
            let worker = try LocalProcess(
                jobgateExecutable(), ["worker", "--function", "upper", "--gearman", gearmand.address, "--redis", redis.address, "--", "tr", "a-z", "A-Z"],
                environment: ["NOTIFY_SOCKET": socket.path]
            )
            defer { worker.stop() }
            #expect(try await socket.receive() == "READY=1")
            worker.signal(SIGHUP)
            #expect(try await socket.receive().hasPrefix("RELOADING=1\nMONOTONIC_USEC="))
            #expect(try await socket.receive() == "READY=1")
            worker.signal(SIGTERM)
            #expect(try await socket.receive() == "STOPPING=1")
            #expect(try await worker.waitForExit() == 0, "\(worker.log)")
        }
    }
}
