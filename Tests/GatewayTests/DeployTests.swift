import Foundation
import LocalServers
import Testing

/// The files under `Deploy/` work as they are.
@Suite("Deploy files", .timeLimit(.minutes(2)))
struct DeployTests {
    static let deploy = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Deploy")

    /// `jobgate serve --config Deploy/jobgate.conf.example` starts (addresses overridden by the environment, which
    /// wins over the file), answers PING and stops cleanly on SIGTERM.
    @Test func exampleConfigurationIsAccepted() async throws {
        try await withLocalServer(.gearmand) { gearmand in
            try await withLocalServer(.redis) { redis in
                let port = try freeLoopbackPort()
                let process = try LocalProcess(
                    jobgateExecutable(),
                    ["serve", "--config", Self.deploy.appendingPathComponent("jobgate.conf.example").path],
                    environment: ["JOBGATE_LISTEN": "127.0.0.1:\(port)", "JOBGATE_GEARMAN": gearmand.address, "JOBGATE_REDIS": redis.address]
                )
                defer { process.stop() }
                try await eventually("the gateway to answer PING") {
                    if let status = process.exitStatus { throw DeployTestFailure(description: "jobgate serve exited (\(status)): \(process.log)") }
                    let answer = try? LoopbackSocket.exchange(port: port, request: Array("PING\r\n".utf8), timeoutMs: 500)
                    return answer == Array("PONG\r\n".utf8)
                }
                process.signal(SIGTERM)
                #expect(try await process.waitForExit() == 0, "\(process.log)")
            }
        }
    }

    /// The example names every option `jobgate serve --help` lists.
    @Test func exampleConfigurationNamesEveryOption() async throws {
        let help = try await runProgram(jobgateExecutable(), ["serve", "--help"])
        #expect(help.status == 0)
        let options = Set(help.outputText.matches(of: /--([a-z][a-z-]+)/).map { String($0.1) }).subtracting(["config", "check-config", "help", "version"])
        #expect(options.count >= 18, "\(options.sorted())")
        let example = try String(contentsOf: Self.deploy.appendingPathComponent("jobgate.conf.example"), encoding: .utf8)
        for option in options.sorted() {
            #expect(example.contains("\n\(option) = ") || example.contains("\n# \(option) = "), "Deploy/jobgate.conf.example lacks \(option)")
        }
    }

    /// The units run as `Type=notify` services that reload on SIGHUP; their headers install the config readable by the
    /// `jobgate` group and not by others, and the file `Documentation=` points at.
    @Test func systemdUnitsAreNotifyServicesWithWhatTheyNeedInstalled() throws {
        for name in ["jobgate.service", "jobgate-worker@.service"] {
            let unit = try String(contentsOf: Self.deploy.appendingPathComponent(name), encoding: .utf8)
            let lines = unit.split(separator: "\n").map(String.init)
            #expect(lines.contains("Type=notify"), "\(name)")
            #expect(lines.contains("ExecReload=/bin/kill -HUP $MAINPID"), "\(name)")
            #expect(lines.contains { $0.hasPrefix("RestartPreventExitStatus=") && $0.contains("78") }, "\(name)")
            let documentation = try #require(lines.first { $0.hasPrefix("Documentation=file://") }, "\(name)").dropFirst("Documentation=file://".count)
            let gateway = try String(contentsOf: Self.deploy.appendingPathComponent("jobgate.service"), encoding: .utf8)
            #expect(gateway.contains("install -Dm 644 README.md \(documentation)"), "\(name): nothing installs \(documentation)")
        }
        let gateway = try String(contentsOf: Self.deploy.appendingPathComponent("jobgate.service"), encoding: .utf8)
        #expect(gateway.contains("useradd --system"))
        #expect(gateway.contains("install -m 640 -g jobgate Deploy/jobgate.conf.example /etc/jobgate/jobgate.conf"), "the service's group reads the config")
        #expect(gateway.contains("install -d -m 750 -g jobgate /etc/jobgate"))
    }

    /// The example configuration passes `--check-config` as it is.
    @Test func exampleConfigurationPassesTheCheck() async throws {
        let run = try await runProgram(
            jobgateExecutable(), ["serve", "--config", Self.deploy.appendingPathComponent("jobgate.conf.example").path, "--check-config"],
            timeout: .seconds(10)
        )
        #expect(run.status == 0, "\(run.errors)")
        #expect(run.outputText.contains("listen = "))
    }

    /// Poll intervals that make no sense are refused before anything starts.
    @Test func legacyPollIntervalsAreChecked() async throws {
        for arguments in [["--legacy-poll-min", "0"], ["--legacy-poll-min", "2000", "--legacy-poll-max", "1000"]] {
            let run = try await runProgram(jobgateExecutable(), ["serve", "--listen", "127.0.0.1:1"] + arguments, timeout: .seconds(10))
            #expect(run.status != 0 && run.errors.contains("--legacy-poll-min must be positive and at most --legacy-poll-max"), "\(run.errors)")
        }
    }
}

struct DeployTestFailure: Error, CustomStringConvertible {
    let description: String
}
