import Foundation
import Gearman
import JobStore
import LocalServers
import NIOCore
import Redis
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Starts `jobgate worker` against the given servers with `arguments` (options, then `--` and the command).
func startWorkerCommand(gearmand: LocalServer, redis: LocalServer, _ arguments: [String]) throws -> LocalProcess {
    try LocalProcess(
        jobgateExecutable(),
        ["worker", "--gearman", gearmand.address, "--redis", redis.address, "--log-level", "debug"] + arguments
    )
}

/// Waits until gearmand lists a worker for `function` (so that jobs are not submitted before anyone can take them).
func waitForWorker(_ gearman: GearmanClient, function: String) async throws {
    try await eventually("a worker for \(function)", timeout: .seconds(15)) {
        let lines = try await gearman.admin(.status)
        return lines.contains { line in
            let fields = line.split(separator: "\t")
            return fields.first.map(String.init) == function && fields.count == 4 && (Int(fields[3]) ?? 0) > 0
        }
    }
}

/// The `jobgate worker` executable against real servers.
@Suite("jobgate worker", .timeLimit(.minutes(3)))
struct WorkerCommandTests {
    /// Two functions served by one program: progress on fd 3 and the result from stdout reach the job store,
    /// and the change feed sees running → progress → done.
    @Test func runsJobsAndPublishes() async throws {
        try await withWorkerServers { redis, gearmand, store, gearman in
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            @Sendable func touch(_ name: String) { _ = FileManager.default.createFile(atPath: directory.appendingPathComponent(name).path, contents: nil) }
            // Each step waits for the test, so the feed sees every state (it reports only the latest when behind).
            let script = #"""
                wait_for() { while [ ! -e "$DIR/$JOBGATE_JOB_ID.$1" ]; do sleep 0.02; done; }
                wait_for progress; echo "PROGRESS 1 2 converting" >&3; wait_for finish
                if [ "$JOBGATE_FUNCTION" = upper ]; then tr a-z A-Z; else tr A-Z a-z; fi
                """#
            let process = try LocalProcess(
                jobgateExecutable(),
                [
                    "worker", "--gearman", gearmand.address, "--redis", redis.address, "--function", "upper", "--function", "lower",
                    "--concurrency", "2", "--", "/bin/sh", "-c", script,
                ],
                environment: ["DIR": directory.path]
            )
            defer { process.stop() }
            try await waitForWorker(gearman, function: "lower")
            try await withFeed(store) { log in
                let upperID = newID(), lowerID = newID()
                log.follow(upperID)
                log.follow(lowerID)
                touch("\(lowerID).progress")
                touch("\(lowerID).finish")
                try await submit("upper", "Hello", store: store, gearman: gearman, id: upperID)
                try await submit("lower", "Hello", store: store, gearman: gearman, id: lowerID)
                try await eventually("running") { log.all.contains { $0.id == upperID && $0.record?.state == .running } }
                touch("\(upperID).progress")
                try await eventually("progress") { log.all.contains { $0.id == upperID && $0.record?.numerator == 1 } }
                touch("\(upperID).finish")
                try await eventually("both done") { log.all.filter { $0.record?.state == .done }.count == 2 }
                #expect(try await store.record(upperID)?.result == ByteBuffer(string: "HELLO"))
                #expect(try await store.record(lowerID)?.result == ByteBuffer(string: "hello"))
                let upperStates = log.all.filter { $0.id == upperID }.compactMap(\.record).filter { $0.state != .queued }
                #expect(upperStates.map(\.state) == [.running, .running, .done])
                #expect(upperStates[1].numerator == 1 && upperStates[1].denominator == 2 && upperStates[1].message == ByteBuffer(string: "converting"))
            }
            process.signal(SIGTERM)
            #expect(try await process.waitForExit() == 0, "\(process.log)")
        }
    }

    /// A non-zero exit fails the job with the tail of stderr, and a missing program fails it clearly.
    @Test func failuresAreStored() async throws {
        try await withWorkerServers { redis, gearmand, store, gearman in
            let failing = try startWorkerCommand(gearmand: gearmand, redis: redis, ["--function", "fails", "--", "/bin/sh", "-c", "echo 'no space left' >&2; exit 2"])
            defer { failing.stop() }
            let missing = try startWorkerCommand(gearmand: gearmand, redis: redis, ["--function", "missing", "--", "jobgate-no-such-program", "x"])
            defer { missing.stop() }
            try await waitForWorker(gearman, function: "fails")
            try await waitForWorker(gearman, function: "missing")
            let (failedID, _) = try await submit("fails", "x", store: store, gearman: gearman)
            let (missingID, _) = try await submit("missing", "x", store: store, gearman: gearman)
            try await eventually("both failed") {
                try await store.records([failedID, missingID]).allSatisfy { $0?.state == .failed }
            }
            #expect(try await store.record(failedID)?.reason == ByteBuffer(string: "no space left"))
            #expect(try await store.record(missingID)?.reason == ByteBuffer(string: "command not found: jobgate-no-such-program"))
        }
    }

    /// Redis with a password (from JOBGATE_REDIS_PASSWORD, which the job programs do not inherit), another
    /// database and key prefix.
    @Test func redisPasswordDatabaseAndPrefix() async throws {
        try await withLocalServer(.redis) { redis in
            try await withLocalServer(.gearmand) { gearmand in
                let open = makeStore(redis)
                _ = try await open.redis.send(["CONFIG", "SET", "requirepass", "s3cret"])
                await open.redis.close()
                var configuration = JobStoreConfiguration()
                configuration.schema = JobKeySchema(prefix: "app1:", database: 2)
                let store = RedisJobStore(
                    redis: RedisConnectionPool(
                        configuration: RedisConnectionConfiguration(host: redis.host, port: redis.port, authentication: .init(password: "s3cret"), database: 2),
                        size: 1
                    ),
                    configuration: configuration
                )
                let gearman = GearmanClient(address: gearmand.gearmanAddress)
                let process = try LocalProcess(
                    jobgateExecutable(),
                    [
                        "worker", "--gearman", gearmand.address, "--redis", redis.address, "--redis-db", "2", "--key-prefix", "app1:",
                        "--function", "env", "--", "/bin/sh", "-c", #"printf '%s' "${JOBGATE_REDIS_PASSWORD:-hidden}""#,
                    ],
                    environment: ["JOBGATE_REDIS_PASSWORD": "s3cret"]
                )
                defer { process.stop() }
                try await waitForWorker(gearman, function: "env")
                let (id, _) = try await submit("env", "", store: store, gearman: gearman)
                try await eventually("done") { try await store.record(id)?.state == .done }
                #expect(try await store.record(id)?.result == ByteBuffer(string: "hidden"))
                await gearman.shutdown()
                await store.redis.close()
            }
        }
    }

    /// SIGTERM while 5 jobs run: the process waits for them, all 5 results are published, then it exits 0;
    /// a job submitted after the signal is left for another worker.
    @Test func sigtermDrains() async throws {
        try await withWorkerServers { redis, gearmand, store, gearman in
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let script = #"touch "$DIR/$JOBGATE_JOB_ID"; while [ ! -e "$DIR/go" ]; do sleep 0.05; done; printf 'result:'; cat"#
            let process = try LocalProcess(
                jobgateExecutable(),
                ["worker", "--gearman", gearmand.address, "--redis", redis.address, "--function", "slow", "--concurrency", "5", "--", "/bin/sh", "-c", script],
                environment: ["DIR": directory.path]
            )
            defer { process.stop() }
            try await waitForWorker(gearman, function: "slow")
            var jobs: [(id: JobID, handle: String)] = []
            for index in 0..<5 { jobs.append(try await submit("slow", "\(index)", store: store, gearman: gearman)) }
            try await eventually("5 programs running") {
                jobs.allSatisfy { FileManager.default.fileExists(atPath: directory.appendingPathComponent($0.id.rawValue).path) }
            }
            process.signal(SIGTERM)
            try await Task.sleep(for: .milliseconds(500))
            #expect(process.exitStatus == nil, "the worker waits for its running jobs")
            let late = try await submit("slow", "late", store: store, gearman: gearman)
            try await Task.sleep(for: .milliseconds(300))
            _ = FileManager.default.createFile(atPath: directory.appendingPathComponent("go").path, contents: nil)
            #expect(try await process.waitForExit() == 0, "\(process.log)")
            for (index, record) in try await store.records(jobs.map(\.id)).enumerated() {
                #expect(record?.state == .done && record?.result == ByteBuffer(string: "result:\(index)"), "\(String(describing: record))")
            }
            #expect(try await store.record(late.id)?.state == .queued, "taken after SIGTERM")
            for job in jobs { #expect(try await !gearman.status(handle: job.handle).known) }
        }
    }

    /// Dual-write: a legacy PHP client submits, polls `jobStatus` until gearmand forgets the job, then reads
    /// memcached by handle, and gets the result.
    @Test func legacyPHPReaderGetsTheResult() async throws {
        try await withLocalServer(.redis) { redis in
            try await withLocalServer(.gearmand) { gearmand in
                try await withLocalServer(.memcached) { memcached in
                    let gearman = GearmanClient(address: gearmand.gearmanAddress)
                    let process = try startWorkerCommand(
                        gearmand: gearmand,
                        redis: redis,
                        ["--function", "legacy", "--memcached", memcached.address, "--", "/bin/sh", "-c", "sleep 0.2; printf 'legacy:'; cat"]
                    )
                    defer { process.stop() }
                    try await waitForWorker(gearman, function: "legacy")
                    let script = """
                        <?php
                        $client = new GearmanClient();
                        $client->addServer('127.0.0.1', \(gearmand.port));
                        $handle = $client->doBackground('legacy', 'payload-42');
                        $deadline = microtime(true) + 15;
                        do {
                            usleep(50000);
                            [$known, $running] = $client->jobStatus($handle);
                        } while ($known && microtime(true) < $deadline);
                        $memcache = new Memcache();
                        $memcache->addServer('127.0.0.1', \(memcached.port));
                        echo json_encode(['known' => $known, 'result' => $memcache->get($handle)]);
                        """
                    let file = try temporaryFile(script, suffix: ".php")
                    defer { try? FileManager.default.removeItem(at: file) }
                    let php = try LocalProcess("/usr/bin/php", [file.path])
                    #expect(try await php.waitForExit() == 0, "\(php.log)")
                    #expect(php.log == #"{"known":false,"result":"legacy:payload-42"}"#, "\(php.log)")
                    await gearman.shutdown()
                }
            }
        }
    }
}

/// The README's worked examples, run as they are printed.
@Suite("README examples", .timeLimit(.minutes(2)))
struct ReadmeExampleTests {
    /// The PHP worker publishes progress, results and failures the way the key schema says.
    @Test func phpWorker() async throws {
        try await withWorkerServers { redis, gearmand, store, gearman in
            let file = try temporaryFile(try readmeExample("php-worker"), suffix: ".php")
            defer { try? FileManager.default.removeItem(at: file) }
            let worker = try LocalProcess(
                "/usr/bin/php",
                [file.path],
                environment: ["GEARMAN_HOST": "127.0.0.1", "GEARMAN_PORT": "\(gearmand.port)", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "\(redis.port)"]
            )
            defer { worker.stop() }
            try await waitForWorker(gearman, function: "reverse")
            try await withFeed(store) { log in
                let id = newID()
                log.follow(id)
                let (_, handle) = try await submit("reverse", "stressed", store: store, gearman: gearman, id: id, resultTTL: 300)
                try await eventually("done", timeout: .seconds(15)) { try await store.record(id)?.state == .done }
                let record = try #require(try await store.record(id))
                #expect(record.result == ByteBuffer(string: "desserts") && record.handle == handle && record.numerator == 1 && record.denominator == 2)
                #expect(record.message == ByteBuffer(string: "reversing") && record.started != nil && record.finished != nil)
                let ttl = try await store.redis.send(["TTL", "\(store.schema.jobKey(id))"]).int ?? 0
                #expect((290...300).contains(ttl), "\(ttl)")
                try await eventually("the feed's done") { log.all.contains { $0.id == id && $0.record?.state == .done } }
                try await eventually("gearmand to forget the job") { try await !gearman.status(handle: handle).known }
            }
            // An empty payload fails: reason in Redis, WORK_FAIL to a foreground client.
            _ = try await store.redis.send(["CONFIG", "RESETSTAT"])
            let id = newID()
            _ = try await store.create(id: id, function: "reverse", unique: nil)
            let job = try await gearman.submitForeground(GearmanJobRequest(function: "reverse", unique: id.rawValue, payload: ByteBuffer()))
            let error = await #expect(throws: GearmanError.self) { try await withTimeout(.seconds(10), "the job") { try await job.result() } }
            #expect(error?.code == .jobFailed, "\(worker.log)")
            let record = try #require(try await store.record(id))
            #expect(record.state == .failed && record.reason == ByteBuffer(string: "nothing to reverse"))
            #expect(try await completionLog(store, "reverse") == ["done", "failed"], "each outcome is in the completion log")
            // Redis has both scripts since the first job: the second one's start and outcome went by their SHA1 alone.
            let stats = try await store.redis.send(["INFO", "commandstats"]).string ?? ""
            let scriptCalls = stats.split(whereSeparator: \.isNewline).filter { $0.hasPrefix("cmdstat_eval") }
            #expect(scriptCalls.count == 1 && scriptCalls[0].hasPrefix("cmdstat_evalsha:calls=2,"), "\(scriptCalls)")
        }
    }

    /// The Python publisher's start, progress and finish write what the Swift store reads back.
    @Test func pythonPublisher() async throws {
        let python = try await pythonWithRedis()
        try await withLocalServer(.redis) { redis in
            let store = makeStore(redis)
            let done = newID(), failed = newID()
            _ = try await store.create(id: done, function: "f", unique: nil, resultTTL: 120)
            _ = try await store.create(id: failed, function: "f", unique: nil)
            let driver = try readmeExample("python-publisher") + """

                import sys
                r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
                ttl = start(r, sys.argv[2], "f", "H:py:1", "127.0.0.1:4730")
                progress(r, sys.argv[2], 2, 5, b"step two")
                finish(r, sys.argv[2], ttl, result=b"\\x00binary\\xff")
                ttl = start(r, sys.argv[3], "f", "H:py:2", "127.0.0.1:4730")
                finish(r, sys.argv[3], ttl, reason="bad input")
                assert start(r, sys.argv[3], "f", "H:py:3", "127.0.0.1:4730") is None  # finished: not reopened
                print("ok")
                """
            let file = try temporaryFile(driver, suffix: ".py")
            defer { try? FileManager.default.removeItem(at: file) }
            let process = try LocalProcess(python, [file.path, "\(redis.port)", done.rawValue, failed.rawValue])
            #expect(try await process.waitForExit() == 0, "\(process.log)")
            let record = try #require(try await store.record(done))
            #expect(record.state == .done && record.result == ByteBuffer(bytes: [0] + Array("binary".utf8) + [0xFF]))
            #expect(record.numerator == 2 && record.denominator == 5 && record.message == ByteBuffer(string: "step two") && record.handle == "H:py:1")
            let ttl = try await store.redis.send(["TTL", "\(store.schema.jobKey(done))"]).int ?? 0
            #expect((110...120).contains(ttl), "\(ttl)")
            let failure = try #require(try await store.record(failed))
            #expect(failure.state == .failed && failure.reason == ByteBuffer(string: "bad input") && failure.handle == "H:py:2")
            #expect(try await completionLog(store, "f") == ["done", "failed"], "each outcome is in the completion log")
            await store.redis.close()
        }
    }
}

/// The states in a function's completion log, oldest first.
func completionLog(_ store: RedisJobStore, _ function: String) async throws -> [String] {
    let entries = try await store.redis.send(["XRANGE", "\(store.schema.completionLogKey(function: function))", "-", "+"]).array ?? []
    return entries.compactMap { entry in
        let fields = entry.array?[1].array?.compactMap(\.string) ?? []
        return fields.firstIndex(of: "state").map { fields[$0 + 1] }
    }
}

/// A python3 that has the `redis` module (Debian's python3-redis, or one on PATH); none fails loudly.
func pythonWithRedis() async throws -> String {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
    let candidates = path.split(separator: ":").map { "\($0)/python3" } + ["/usr/bin/python3"]
    for candidate in candidates where FileManager.default.isExecutableFile(atPath: candidate) {
        if try await LocalProcess(candidate, ["-c", "import redis"]).waitForExit() == 0 { return candidate }
    }
    throw TestFailure(description: "no python3 with the redis module: run `apt-get install python3-redis`")
}
