import Gearman
import LocalServers
import NIOCore
import Testing

/// Our client and worker with real peers: php-gearman and the `gearman` command-line tool.
@Suite("Gearman interop with PHP and the gearman CLI", .timeLimit(.minutes(2)))
struct GearmanInteropTests {
    /// A php-gearman worker runs jobs our client submits, and its sendStatus reaches our foreground client.
    @Test func phpWorkerRunsOurJobs() async throws {
        try await withLocalServer(.gearmand) { server in
            let php = Task {
                try await runPHP(
                    """
                    <?php
                    $w = new GearmanWorker();
                    $w->addServer('127.0.0.1', \(server.port));
                    $w->addFunction('php_reverse', function ($job) {
                        $job->sendStatus(1, 2);
                        return strrev($job->workload()) . '|' . $job->unique();
                    });
                    for ($i = 0; $i < 3; $i++) { $w->work(); }
                    """
                )
            }
            let connection = try await GearmanConnection.connect(to: server.gearmanAddress)
            for index in 0..<3 {
                let job = try await connection.submitForeground(job("php_reverse", "php-\(index)", "hello \(index)"))
                var events: [GearmanJobEvent] = []
                for try await event in job.events { events.append(event) }
                #expect(events == [.status(numerator: 1, denominator: 2), .completed(ByteBuffer(string: "\(index) olleh|php-\(index)"))])
            }
            _ = try await withTimeout(.seconds(20), "the PHP worker to exit") { try await php.value }
            await connection.close()
        }
    }

    /// Our worker runs a job PHP submitted with doBackground; PHP's jobStatus shows our WORK_STATUS.
    @Test func ourWorkerRunsPHPBackgroundJobs() async throws {
        try await withLocalServer(.gearmand) { server in
            let seen = Recorder<GearmanJob>()
            let gate = Gate()
            let worker = try GearmanWorker(servers: [server.gearmanAddress], handlers: [
                "swift_fn": { job, reporter in
                    seen.append(job)
                    try? await reporter.status(numerator: 7, denominator: 9)
                    await gate.wait()
                    return .complete(ByteBuffer(string: "done"))
                }
            ])
            try await withRunning(worker) {
                let output = try await runPHP(
                    """
                    <?php
                    $c = new GearmanClient();
                    $c->addServer('127.0.0.1', \(server.port));
                    $c->setTimeout(5000);
                    $handle = $c->doBackground('swift_fn', "from php\\0binary", 'php-unique-1');
                    for ($i = 0; $i < 500; $i++) {
                        $s = $c->jobStatus($handle);
                        if ($s[0] && $s[1] && $s[2] == 7) { echo json_encode($s); exit(0); }
                        usleep(10000);
                    }
                    fwrite(STDERR, 'status never showed 7/9: ' . json_encode($s));
                    exit(1);
                    """
                )
                #expect(output == "[true,true,7,9]")
                gate.open()
            }
            let job = try #require(seen.all.first)
            #expect(job.unique == "php-unique-1")
            #expect(job.payload == ByteBuffer(bytes: Array("from php".utf8) + [0] + Array("binary".utf8)))
        }
    }

    /// The gearman CLI as a worker (`-w`) runs jobs our client submits.
    @Test func gearmanCLIAsWorker() async throws {
        try await withLocalServer(.gearmand) { server in
            let cli = Task {
                try await runProgram("/usr/bin/gearman", ["-w", "-h", "127.0.0.1", "-p", "\(server.port)", "-f", "cli_upper", "-c", "2", "--", "tr", "a-z", "A-Z"])
            }
            let connection = try await GearmanConnection.connect(to: server.gearmanAddress)
            let first = try await connection.submitForeground(job("cli_upper", "cli-1", "hello gearman"))
            #expect(String(buffer: try await first.result()) == "HELLO GEARMAN")
            let second = try await connection.submitForeground(job("cli_upper", "cli-2", "again"))
            #expect(String(buffer: try await second.result()) == "AGAIN")
            let run = try await withTimeout(.seconds(20), "the gearman CLI worker to exit") { try await cli.value }
            #expect(run.status == 0, "\(run.errors)")
            await connection.close()
        }
    }

    /// The gearman CLI as a background client (`-b`): our worker gets its payload and unique; two submits with the
    /// same `-u` while queued coalesce.
    @Test func gearmanCLIAsBackgroundClient() async throws {
        try await withLocalServer(.gearmand) { server in
            let cli = ["-h", "127.0.0.1", "-p", "\(server.port)", "-b", "-f", "swift_cli", "-u", "cli-key"]
            #expect(try await runProgram("/usr/bin/gearman", cli + ["some data"]).status == 0)
            #expect(try await runProgram("/usr/bin/gearman", cli + ["other data"]).status == 0)
            let seen = Recorder<GearmanJob>()
            let worker = try GearmanWorker(servers: [server.gearmanAddress], handlers: [
                "swift_cli": { job, _ in seen.append(job); return .complete(ByteBuffer()) }
            ])
            try await withRunning(worker) {
                try await eventually("the CLI's job to run") { seen.count == 1 }
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(seen.count == 1, "the second submit joined the first")
            let job = try #require(seen.all.first)
            #expect(job.unique == "cli-key")
            #expect(String(buffer: job.payload) == "some data")
        }
    }
}
