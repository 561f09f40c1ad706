import Foundation
import Gateway
import GatewayProtocol
import JobStore
import LocalServers
import Memcache
import NIOCore
import Redis
import Testing

/// A gateway whose function(s) `legacy` keep results in memcached, with memcached running.
func withLegacyStack<T: Sendable>(
    _ functions: [String: PHPMemcacheExtension],
    _ body: @Sendable (GatewayStack, LocalServer) async throws -> T
) async throws -> T {
    try await withLocalServer(.memcached) { memcached in
        try await withGatewayStack({ configuration in
            configuration.legacyFunctions = functions
            configuration.memcachedServers = [MemcacheServer(host: memcached.host, port: memcached.port)]
            configuration.legacyMinimumPollInterval = .milliseconds(50)
            configuration.legacyMaximumPollInterval = .milliseconds(200)
            configuration.lostJobGrace = .seconds(1)
        }) { stack in
            try await body(stack, memcached)
        }
    }
}

/// A legacy PHP worker: reports `sendStatus`, stores its result in memcached under the job handle, returns nothing
/// to gearmand. `store` is PHP code setting `$result`; `jobs` is how many jobs it takes before exiting. With
/// `steps`, it waits after each `sendStatus(i, 3)` until the file `<steps>.<i>` exists (the test creates it once it
/// saw that PROGRESS), so that the test does not depend on the poller's timing.
func legacyWorkerScript(
    gearmand: LocalServer,
    memcached: LocalServer,
    function: String,
    extension: PHPMemcacheExtension,
    jobs: Int,
    store: String,
    steps: String? = nil
) -> String {
    let pause = { (step: Int) in
        steps.map { "while (!file_exists('\($0).\(step)')) { usleep(10000); }" } ?? "usleep(100000);"
    }
    let connect =
        switch `extension` {
        case .peclMemcache: "$mc = memcache_connect('127.0.0.1', \(memcached.port));"
        case .phpMemcached: "$mc = new Memcached(); $mc->addServer('127.0.0.1', \(memcached.port));"
        }
    let set =
        switch `extension` {
        case .peclMemcache: "memcache_set($mc, $job->handle(), $result);"
        case .phpMemcached: "$mc->set($job->handle(), $result);"
        }
    return """
        <?php
        \(connect)
        $w = new GearmanWorker();
        $w->addServer('127.0.0.1', \(gearmand.port));
        $w->addFunction('\(function)', function ($job) use ($mc) {
            $job->sendStatus(1, 3);
            \(pause(1))
            $job->sendStatus(2, 3);
            \(pause(2))
            \(store)
            \(set)
            return '';
        });
        for ($i = 0; $i < \(jobs); $i++) { $w->work(); }
        """
}

/// Legacy workers (PHP storing results in memcached by handle) behind the gateway.
@Suite("Legacy memcached workers", .timeLimit(.minutes(2)))
struct LegacyTests {
    /// A php-gearman + pecl memcache worker: the watcher gets PROGRESS as it calls sendStatus, then DONE with the
    /// value it stored (an integer, a string, an array); WAIT returns it; RESULT after the fact returns it.
    @Test(arguments: [PHPMemcacheExtension.peclMemcache, .phpMemcached])
    func legacyWorkerValues(_ phpExtension: PHPMemcacheExtension) async throws {
        try await withLegacyStack(["legacy": phpExtension]) { stack, memcached in
            let cases: [(store: String, expected: String)] = [
                ("$result = 120;", "120"),
                ("$result = 'hello ' . $job->workload();", "hello world"),
                ("$result = ['a' => 1, 'b' => [2, 3]];", "a:2:{s:1:\"a\";i:1;s:1:\"b\";a:2:{i:0;i:2;i:1;i:3;}}"),
            ]
            for (store, expected) in cases {
                let steps = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-steps-\(UUID().uuidString)").path
                defer { for step in 1...2 { unlink("\(steps).\(step)") } }
                let worker = Task {
                    try await runPHP(
                        legacyWorkerScript(
                            gearmand: stack.gearmand, memcached: memcached, function: "legacy", extension: phpExtension, jobs: 1, store: store,
                            steps: steps
                        )
                    )
                }
                let watcher = try await stack.connect()
                let waiter = try await stack.connect()
                let id = try #require(try await watcher.request(submitLine("legacy", "world"))?.createdID)
                guard case .reply(.watching(id, let status), _) = try #require(try await watcher.request("WATCH \(id)\n")) else { return }
                try await waiter.send("WAIT \(id) 20000\n")
                // The worker may have reported before the WATCH: WATCHING shows that step.
                var progress: [UInt64] = status.numerator > 0 ? [status.numerator] : []
                if let seen = progress.last { _ = FileManager.default.createFile(atPath: "\(steps).\(seen)", contents: nil) }
                var last: GatewayResponse?
                while true {
                    last = try await watcher.next(timeout: .seconds(20))
                    guard case .event(.progress(_, let numerator, 3, _), _) = last else { break }
                    progress.append(numerator)
                    _ = FileManager.default.createFile(atPath: "\(steps).\(numerator)", contents: nil)  // let the worker go on
                }
                #expect(progress == [1, 2], "PROGRESS follows sendStatus (WATCHING showed \(status))")
                #expect(last == .event(.done(id, result: ByteBuffer(string: expected))))
                #expect(try await waiter.next(timeout: .seconds(20)) == .reply(.done(id, result: ByteBuffer(string: expected))))
                #expect(try await watcher.request("RESULT \(id)\n") == .reply(.done(id, result: ByteBuffer(string: expected))))
                _ = try await worker.value
            }
        }
    }

    /// One gateway serving a memcached-backed and a Redis-backed function at once, 200 jobs each, interleaved:
    /// every job ends with the right result.
    @Test func mixedDeployment() async throws {
        try await withLegacyStack(["legacy_echo": .peclMemcache]) { stack, memcached in
            let php = Task {
                try await runPHP(
                    """
                    <?php
                    $mc = memcache_connect('127.0.0.1', \(memcached.port));
                    $w = new GearmanWorker();
                    $w->addServer('127.0.0.1', \(stack.gearmand.port));
                    $w->addFunction('legacy_echo', function ($job) use ($mc) {
                        memcache_set($mc, $job->handle(), 'legacy ' . $job->workload());
                        return '';
                    });
                    for ($i = 0; $i < 200; $i++) { $w->work(); }
                    """,
                    timeout: .seconds(90)
                )
            }
            try await withTestWorker(stack, ["modern_echo": { payload, _ in ByteBuffer(string: "modern " + String(buffer: payload)) }]) {
                let client = try await stack.connect()
                var batch = ""
                for index in 0..<200 {
                    batch += submitLine("legacy_echo", "\(index)") + submitLine("modern_echo", "\(index)")
                }
                try await client.send(batch)
                var ids: [(GatewayJobID, String)] = []
                for index in 0..<200 {
                    ids.append((try #require(try await client.next()?.createdID), "legacy \(index)"))
                    ids.append((try #require(try await client.next()?.createdID), "modern \(index)"))
                }
                try await client.send(ids.map { "WAIT \($0.0) 60000\n" }.joined())
                for (id, expected) in ids {
                    let reply = try await client.next(timeout: .seconds(60))
                    #expect(reply == .reply(.done(id, result: ByteBuffer(string: expected))), "\(String(describing: reply))")
                }
            }
            _ = try await php.value
        }
    }

    /// A legacy worker that dies mid-job (gearmand gives the job to the next worker) and one whose result never
    /// arrives: the watcher still gets a terminal event either way.
    @Test func diedAndLostJobsEnd() async throws {
        try await withLegacyStack(["legacy": .peclMemcache]) { stack, memcached in
            let client = try await stack.connect()
            let id = try #require(try await client.request(submitLine("legacy", "x"))?.createdID)
            _ = try await client.request("WATCH \(id)\n")
            // The first worker reports progress, then dies without a result (killed: a clean PHP exit would let the
            // extension report the job failed, and gearmand drops a failed background job instead of requeueing it).
            let dying = """
                <?php
                $w = new GearmanWorker();
                $w->addServer('127.0.0.1', \(stack.gearmand.port));
                $w->addFunction('legacy', function ($job) { $job->sendStatus(1, 2); usleep(300000); posix_kill(getmypid(), 9); });
                $w->work();
                """
            await #expect(throws: (any Error).self) { try await runPHP(dying) }
            // gearmand requeued it; the next worker finishes it.
            _ = try await runPHP(legacyWorkerScript(gearmand: stack.gearmand, memcached: memcached, function: "legacy", extension: .peclMemcache, jobs: 1, store: "$result = 'second try';"))
            #expect(try await client.nextTerminal(timeout: .seconds(20)) == .event(.done(id, result: ByteBuffer(string: "second try"))))

            // A worker that completes without storing anything: the job is lost after the grace period.
            let lost = try #require(try await client.request(submitLine("legacy", "y"))?.createdID)
            _ = try await client.request("WATCH \(lost)\n")
            _ = try await runPHP(
                """
                <?php
                $w = new GearmanWorker();
                $w->addServer('127.0.0.1', \(stack.gearmand.port));
                $w->addFunction('legacy', function ($job) { return 'forgot to store'; });
                $w->work();
                """
            )
            guard case .event(.failed(lost, let reason), _) = try #require(try await client.nextTerminal(timeout: .seconds(20))) else {
                Issue.record("no FAILED for the lost job"); return
            }
            #expect(String(buffer: reason).hasPrefix("lost"))
            let store = stack.store()
            #expect(try await store.record(try #require(JobID(rawValue: lost.rawValue)))?.isLost == true, "the record says it was lost")
            await store.redis.close()
        }
    }

    /// A value left in memcached under a handle by an earlier job (gearmand restarted and reused the handle) is never
    /// taken as the new job's result.
    @Test func staleValueUnderReusedHandle() async throws {
        // The probe is memcached-backed too: the gateway records the handle of those at submission.
        try await withLegacyStack(["legacy": .peclMemcache, "probe-handle": .peclMemcache]) { stack, memcached in
            let client = try await stack.connect()
            // gearmand hands out H:<host>:1 first after every start: leave a value there, as an earlier job would have.
            let probe = try #require(try await client.request(submitLine("probe-handle", "x"))?.createdID)
            guard case .reply(.status, _) = try #require(try await client.request("STATUS \(probe)\n")) else { return }
            let record = try #require(try await stack.store().record(.init(rawValue: probe.rawValue)!))
            let handle = try #require(record.handle)
            try await stack.gearmand.restart()
            _ = try await runPHP("<?php $mc = memcache_connect('127.0.0.1', \(memcached.port)); memcache_set($mc, '\(handle)', 'stale result');")

            let id = try #require(try await eventuallyCreated(client, submitLine("legacy", "fresh")))
            let fresh = try #require(try await stack.store().record(.init(rawValue: id.rawValue)!))
            #expect(fresh.handle == handle, "gearmand reused the handle")
            // The job is still queued: neither RESULT nor a WAIT may show the stale value.
            guard case .reply(.pending(id, _), _) = try #require(try await client.request("RESULT \(id)\n")) else {
                Issue.record("the stale value was taken as the result"); return
            }
            _ = try await runPHP(legacyWorkerScript(gearmand: stack.gearmand, memcached: memcached, function: "legacy", extension: .peclMemcache, jobs: 1, store: "$result = 'fresh result';"))
            #expect(try await client.request("WAIT \(id) 20000\n") == .reply(.done(id, result: ByteBuffer(string: "fresh result"))))
        }
    }

    /// The fence at work: a job gearmand forgot while a value an earlier job left sits under its reused handle ends
    /// lost, never `DONE` with that value (gearmand no longer knowing a legacy job is when the bridge reads memcached).
    @Test func staleValueUnderAForgottenJobsHandle() async throws {
        try await withLegacyStack(["legacy": .peclMemcache, "probe-handle": .peclMemcache]) { stack, memcached in
            let client = try await stack.connect()
            let probe = try #require(try await client.request(submitLine("probe-handle", "x"))?.createdID)
            let handle = try #require(try await stack.store().record(.init(rawValue: probe.rawValue)!)?.handle)
            try await stack.gearmand.restart()
            _ = try await runPHP("<?php $mc = memcache_connect('127.0.0.1', \(memcached.port)); memcache_set($mc, '\(handle)', 'stale result');")

            let id = try #require(try await eventuallyCreated(client, submitLine("legacy", "fresh")))
            let fresh = try #require(try await stack.store().record(.init(rawValue: id.rawValue)!))
            #expect(fresh.handle == handle, "gearmand reused the handle")
            guard case .reply(.watching, _) = try #require(try await client.request("WATCH \(id)\n")) else { Issue.record("no WATCHING"); return }
            try await stack.gearmand.restart()  // no persistent queue: the job is gone, and no worker wrote anything
            guard case .event(.failed(id, let reason), _) = try #require(try await client.nextTerminal(timeout: .seconds(20))) else {
                Issue.record("the stale value was taken as the result"); return
            }
            #expect(String(buffer: reason).hasPrefix("lost"))
        }
    }
}

/// Submits until the gateway's gearmand connection is back after a restart.
func eventuallyCreated(_ client: GatewayTestClient, _ line: String) async throws -> GatewayJobID? {
    for _ in 0..<100 {
        if let id = try await client.request(line)?.createdID { return id }
        try await Task.sleep(for: .milliseconds(100))
    }
    return nil
}
