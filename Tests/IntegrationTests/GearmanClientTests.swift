import Gearman
import LocalServers
import NIOCore
import NIOPosix
import Testing

/// The Gearman client, pool and worker against real gearmand processes.
@Suite("Gearman against gearmand", .timeLimit(.minutes(2)))
struct GearmanClientTests {
    /// Jobs queued at low, normal and high priority run high first, then normal, then low.
    @Test func prioritiesRunInOrder() async throws {
        try await withLocalServer(.gearmand) { server in
            let client = GearmanClient(address: server.gearmanAddress)
            let results = await client.submitBackground([
                job("prio", "l1", "low-1", .low), job("prio", "n1", "normal-1", .normal),
                job("prio", "h1", "high-1", .high), job("prio", "l2", "low-2", .low),
                job("prio", "h2", "high-2", .high), job("prio", "n2", "normal-2", .normal),
            ])
            for result in results { _ = try result.get() }

            let seen = Recorder<String>()
            let worker = try GearmanWorker(servers: [server.gearmanAddress], handlers: [
                "prio": { job, _ in
                    seen.append(String(buffer: job.payload))
                    return .complete(ByteBuffer())
                }
            ])
            try await withRunning(worker) {
                try await eventually("all six jobs to run") { seen.count == 6 }
            }
            #expect(seen.all == ["high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2"])
            await client.shutdown()
        }
    }

    /// By default a worker's handlers run on the cooperative pool; with `runsHandlersOnEventLoops`, on the loop of
    /// the connection that brought their job (their reports then wake no other thread).
    @Test(arguments: [false, true])
    func handlersRunOnTheirConnectionsLoopWhenAsked(onLoops: Bool) async throws {
        try await withLocalServer(.gearmand) { server in
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
            let loops = Array(group.makeIterator())
            let client = GearmanClient(address: server.gearmanAddress)
            for index in 0..<4 { _ = try await client.submitBackground(job("loops", "\(index)", "x")) }
            let ranOnALoop = Recorder<Bool>()
            var configuration = GearmanWorkerConfiguration()
            configuration.runsHandlersOnEventLoops = onLoops
            let worker = try GearmanWorker(servers: [server.gearmanAddress], handlers: [
                "loops": { _, _ in
                    ranOnALoop.append(loops.contains { $0.inEventLoop })
                    return .complete(ByteBuffer())
                }
            ], configuration: configuration, eventLoopGroup: group)
            try await withRunning(worker) {
                try await eventually("the four jobs to run") { ranOnALoop.count == 4 }
            }
            #expect(ranOnALoop.all == Array(repeating: onLoops, count: 4))
            await client.shutdown()
            try await group.shutdownGracefully()
        }
    }

    /// Same function and unique while queued → the same handle; after the job completed → a new job.
    @Test func coalescing() async throws {
        try await withLocalServer(.gearmand) { server in
            let client = GearmanClient(address: server.gearmanAddress)
            let first = try await client.submitBackground(job("co", "same-key", "first"))
            let second = try await client.submitBackground(job("co", "same-key", "second"))
            let otherFunction = try await client.submitBackground(job("co2", "same-key", "x"))
            #expect(first == second)
            #expect(first != otherFunction)

            let payloads = Recorder<String>()
            let worker = try GearmanWorker(servers: [server.gearmanAddress], handlers: [
                "co": { job, _ in
                    payloads.append(String(buffer: job.payload))
                    return .complete(ByteBuffer(string: "ok"))
                }
            ])
            try await withRunning(worker) {
                try await eventually("the coalesced job to run") { payloads.count == 1 }
                try await eventually("gearmand to forget the finished job") { try await !client.status(handle: first).known }
                let third = try await client.submitBackground(job("co", "same-key", "third"))
                #expect(third != first)
                try await eventually("the new job to run") { payloads.count == 2 }
            }
            // The first payload wins; the second submitter joined it.
            #expect(payloads.all == ["first", "third"])
            await client.shutdown()
        }
    }

    /// GET_STATUS and GET_STATUS_UNIQUE show a running job's WORK_STATUS numerator and denominator.
    @Test func statusWhileRunning() async throws {
        try await withLocalServer(.gearmand) { server in
            let client = GearmanClient(address: server.gearmanAddress)
            let gate = Gate()
            let reported = Gate()
            let worker = try GearmanWorker(servers: [server.gearmanAddress], handlers: [
                "slow": { _, reporter in
                    try? await reporter.status(numerator: 3, denominator: 10)
                    reported.open()
                    await gate.wait()
                    return .complete(ByteBuffer(string: "done"))
                }
            ])
            let handle = try await client.submitBackground(job("slow", "status-1", ""))
            let queued = try await client.status(handle: handle)
            #expect(queued == GearmanJobStatus(known: true, running: false, numerator: 0, denominator: 0))
            try await withRunning(worker) {
                await reported.wait()
                try await eventually("gearmand to record the status") {
                    try await client.status(handle: handle).numerator == 3
                }
                #expect(try await client.status(handle: handle) == GearmanJobStatus(known: true, running: true, numerator: 3, denominator: 10))
                let byUnique = try await client.status(unique: "status-1")
                #expect(byUnique == GearmanJobStatus(known: true, running: true, numerator: 3, denominator: 10, clientCount: 0))
                gate.open()
                try await eventually("the job to finish") { try await !client.status(handle: handle).known }
            }
            await client.shutdown()
        }
    }

    /// 5,000 pipelined submits: every reply is matched to its own request.
    @Test func fiveThousandPipelinedSubmits() async throws {
        try await withLocalServer(.gearmand) { server in
            let connection = try await GearmanConnection.connect(to: server.gearmanAddress)
            let jobs = (0..<5000).map { job("pipe", "u-\($0)", "payload-\($0)") }
            let handles = try await connection.submitBackground(jobs).map { try $0.get() }
            #expect(Set(handles).count == 5000)

            let seen = Recorder<GearmanJob>()
            let worker = try GearmanWorker(
                servers: [server.gearmanAddress],
                handlers: ["pipe": { job, _ in seen.append(job); return .complete(ByteBuffer()) }],
                configuration: { var c = GearmanWorkerConfiguration(); c.concurrency = 16; return c }()
            )
            try await withRunning(worker) {
                try await eventually("5,000 jobs to run", timeout: .seconds(60)) { seen.count == 5000 }
            }
            let byHandle = Dictionary(uniqueKeysWithValues: seen.all.map { ($0.handle, $0) })
            for (index, handle) in handles.enumerated() {
                let job = try #require(byHandle[handle])
                #expect(job.unique == "u-\(index)" && String(buffer: job.payload) == "payload-\(index)")
            }
            await connection.close()
        }
    }

    /// A foreground job gets its WORK_STATUS, WORK_DATA and result; two at once on one connection are kept apart.
    @Test func foregroundJobsRoutedByHandle() async throws {
        try await withLocalServer(.gearmand) { server in
            let worker = try GearmanWorker(
                servers: [server.gearmanAddress],
                handlers: [
                    "echo": { job, reporter in
                        try? await reporter.status(numerator: 1, denominator: 2)
                        try? await reporter.data(ByteBuffer(string: "partial-" + String(buffer: job.payload)))
                        return .complete(ByteBuffer(string: "result-" + String(buffer: job.payload)))
                    }
                ],
                configuration: { var c = GearmanWorkerConfiguration(); c.concurrency = 2; return c }()
            )
            try await withRunning(worker) {
                let connection = try await GearmanConnection.connect(to: server.gearmanAddress)
                let a = try await connection.submitForeground(job("echo", "fg-a", "a"))
                let b = try await connection.submitForeground(job("echo", "fg-b", "b"))
                #expect(a.handle != b.handle)
                var eventsA: [GearmanJobEvent] = []
                for try await event in a.events { eventsA.append(event) }
                #expect(eventsA == [.status(numerator: 1, denominator: 2), .data(ByteBuffer(string: "partial-a")), .completed(ByteBuffer(string: "result-a"))])
                #expect(String(buffer: try await b.result()) == "result-b")
                await connection.close()
            }
        }
    }

    /// With OPTION_REQ exceptions a foreground client gets WORK_EXCEPTION's data; WORK_FAIL fails the job.
    @Test func exceptionsAndFailures() async throws {
        try await withLocalServer(.gearmand) { server in
            let worker = try GearmanWorker(servers: [server.gearmanAddress], handlers: [
                "boom": { _, _ in .exception(ByteBuffer(string: "it broke")) },
                "fail": { _, _ in .fail },
            ])
            try await withRunning(worker) {
                var configuration = GearmanClientConfiguration()
                configuration.exceptions = true
                let connection = try await GearmanConnection.connect(to: server.gearmanAddress, configuration: configuration)
                let boom = try await connection.submitForeground(job("boom", "ex-1", ""))
                var events: [GearmanJobEvent] = []
                for try await event in boom.events { events.append(event) }
                #expect(events == [.exception(ByteBuffer(string: "it broke"))])

                let failing = try await connection.submitForeground(job("fail", "ex-2", ""))
                await #expect(throws: GearmanError.self) { try await failing.result() }
                await connection.close()
            }
        }
    }

    /// ECHO round trips; admin commands answer; `workers` shows our client id and functions.
    @Test func echoAndAdmin() async throws {
        try await withLocalServer(.gearmand) { server in
            var configuration = GearmanClientConfiguration()
            configuration.clientID = "jobgate-test"
            let connection = try await GearmanConnection.connect(to: server.gearmanAddress, configuration: configuration)
            let payload = ByteBuffer(bytes: [0, 1, 13, 10, 255])
            #expect(try await connection.echo(payload) == payload)

            #expect(try await connection.admin(.version).first?.hasPrefix("OK 1.1") == true)
            let pid = try await connection.admin(.getpid).first
            #expect(pid == "OK \(server.pid ?? -1)")
            _ = try await connection.submitBackground(job("admin-fn", "k1", "x"))
            _ = try await connection.submitBackground(job("admin-fn", "k2", "y"))
            let status = try await connection.functionStatus()
            #expect(status.contains(GearmanFunctionStatus(line: "admin-fn\t2\t0\t0")!))
            let jobs = try await connection.admin(.showJobs)
            #expect(jobs.count == 2)
            let workers = try await connection.workers()
            #expect(workers.contains { $0.clientID == "jobgate-test" })
            let uniques = try await connection.admin(.showUniqueJobs)
            #expect(Set(uniques) == ["k1", "k2"])

            // Errors are per command; the connection stays usable.
            await #expect(throws: GearmanError.self) { try await connection.admin(.cancelJob("H:nowhere:999")) }
            #expect(try await connection.echo() == ByteBuffer(string: "ping"))
            await connection.close()
        }
    }

    /// What gearmand would mishandle silently is refused before sending, and the connection stays in sync.
    @Test func validationBeforeSending() async throws {
        try await withLocalServer(.gearmand) { server in
            var configuration = GearmanClientConfiguration()
            configuration.maximumPayloadSize = 1024
            let connection = try await GearmanConnection.connect(to: server.gearmanAddress, configuration: configuration)
            let refused: [GearmanJobRequest] = [
                job("fn", String(repeating: "u", count: 64), "x"),  // gearmand would cut it to 63 and never coalesce
                job("fn", "", "x"),
                job("", "k", "x"),
                job("has space", "k", "x"),
                job("tab\tfn", "k", "x"),
                GearmanJobRequest(function: "fn", unique: "k", payload: ByteBuffer(repeating: 1, count: 1025)),
            ]
            let results = await connection.submitBackground(refused + [job("fn", String(repeating: "u", count: 63), "ok")])
            for result in results.dropLast() {
                #expect(throws: GearmanError.self) { try result.get() }
                if case .failure(let error) = result { #expect(error.code == .invalidArgument) }
            }
            let handle = try results.last!.get()
            // A 64-byte handle would get no reply at all from gearmand.
            await #expect(throws: GearmanError.self) { try await connection.status(handle: String(repeating: "H", count: 64)) }
            #expect(try await connection.status(handle: handle).known)
            await connection.close()
        }
    }

    /// A request gearmand never answers fails after the request timeout instead of hanging.
    @Test func unansweredRequestTimesOut() async throws {
        try await withSilentServer { port in
            var configuration = GearmanClientConfiguration()
            configuration.requestTimeout = .milliseconds(300)
            let connection = try await GearmanConnection.connect(to: GearmanServerAddress(host: "127.0.0.1", port: port), configuration: configuration)
            let error = await #expect(throws: GearmanError.self) { try await connection.echo() }
            #expect(error?.code == .timeout)
            await connection.close()
        }
    }
}
