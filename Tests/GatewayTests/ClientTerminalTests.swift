import Foundation
import LocalServers
import NIOCore
import Testing

/// The client as a person sees it: in a real terminal (tmux) and in its `--help`.
@Suite("jobgate client in a terminal", .timeLimit(.minutes(3)))
struct ClientTerminalTests {
    /// The bar fits the terminal it starts in, leaves no wrapped line behind, is redrawn at the new width when the
    /// terminal is resized (narrower: tmux reflows the old bar onto two rows), and goes away when the job ends; also
    /// with a message of characters two columns wide.
    @Test(arguments: [(60, 100, false), (100, 60, false), (100, 60, true)])
    func progressBarFollowsTheTerminalWidth(width: Int, resizedTo newWidth: Int, wideCharacters: Bool) async throws {
        try await withGatewayStack { stack in
            let watched = Gate()
            let proceed = Gate()
            // Longer than any line: the bar is cut to the terminal's width, so its length shows the width it was drawn for.
            let message = String(repeating: wideCharacters ? "写真を縮小しています、" : "resizing the photo, ", count: 8)
            try await withTestWorker(stack, [
                "reverse": { payload, progress in
                    await watched.wait()  // WATCHING carries no message: progress must come as an event
                    try await progress(1, 2, message)
                    await proceed.wait()
                    return ByteBuffer(string: String(String(buffer: payload).reversed()))
                }
            ]) {
                let command = "'\(jobgateExecutable())' submit reverse --data 'hello world' --watch --gateway 127.0.0.1:\(stack.port);"
                    + " printf '\\nexit=%s\\n' \"$?\"; exec sleep 120"
                let terminal = try await TmuxTerminal.start(width: width, height: 20, command: command)
                defer { terminal.stop() }

                _ = try await terminal.waitForScreen("the watch to start") { $0.last?.hasPrefix("[░") == true }
                watched.open()
                let shown = "░]  50% 1/2 " + message.prefix(5)
                var screen = try await terminal.waitForScreen("the bar at 1/2") { $0.last?.contains(shown) == true }
                Self.expectBarOnly(screen, showing: shown, fitting: width)

                try await terminal.resize(width: newWidth)
                screen = try await terminal.waitForScreen("the bar redrawn at \(newWidth) columns") {
                    Self.fills($0.last ?? "", width: newWidth)
                }
                Self.expectBarOnly(screen, showing: shown, fitting: newWidth)

                proceed.open()
                screen = try await terminal.waitForScreen("the result") { $0.last?.hasPrefix("exit=") == true }
                #expect(screen.count == 3 && screen[0].hasSuffix(" created"), "\(screen)")
                #expect(Array(screen.dropFirst()) == ["dlrow olleh", "exit=0"], "the bar is gone, the result is in its place: \(screen)")
            }
        }
    }

    /// Only the `created` note and one bar that fills the width.
    private static func expectBarOnly(_ screen: [String], showing shown: String, fitting width: Int) {
        #expect(screen.count == 2 && screen[0].hasSuffix(" created"), "no line left behind: \(screen)")
        let bar = screen.last ?? ""
        #expect(bar.hasPrefix("[█") && bar.contains(shown), "\(bar)")
        #expect(fills(bar, width: width), "the bar fills \(width) columns less one: \(columns(bar))")
    }

    /// The bar never writes the last column; a character two columns wide that would reach it is left out too.
    private static func fills(_ line: String, width: Int) -> Bool {
        (width - 2...width - 1).contains(columns(line))
    }

    /// Columns of the bar's characters: the kana and kanji of the test's message take two.
    private static func columns(_ line: String) -> Int {
        line.unicodeScalars.reduce(0) { $0 + ((0x3000..<0xA000).contains($1.value) ? 2 : 1) }
    }

    /// Every subcommand's help fits 80 columns, each paragraph wrapped once, and offers only the options that apply.
    @Test func helpFitsEightyColumnsAndOffersWhatApplies() async throws {
        let connection: Set = ["--gateway", "--secret", "--user", "--tls", "--tls-ca", "--tls-cert", "--tls-key", "--help", "--version"]
        let options: [String: Set<String>] = [
            "submit": connection.union(["--unique", "--priority", "--data", "--file", "--watch", "--wait", "--progress"]),
            "status": connection,
            "watch": connection.union(["--progress"]),
            "admin": ["--gearman", "--json", "--help", "--version"],
        ]
        for subcommand in ["", "submit", "status", "watch", "admin", "bench", "serve", "worker"] {
            let run = try await runProgram(
                jobgateExecutable(), (subcommand.isEmpty ? [] : [subcommand]) + ["--help"], environment: ["COLUMNS": "80"]
            )
            #expect(run.status == 0)
            let lines = run.outputText.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            for line in lines {
                #expect(line.count <= 80, "jobgate \(subcommand) --help: \(line.count) columns: \(line)")
            }
            for (line, next) in zip(lines, lines.dropFirst()) where Self.isProse(line) && Self.isProse(next) {
                let firstWord = next.drop { $0 == " " }.prefix { $0 != " " }
                // ArgumentParser fills lines to 79 columns: a first word that fit there was pushed down by a hard break.
                #expect(line.count + 1 + firstWord.count > 79, "jobgate \(subcommand) --help is wrapped twice:\n\(line)\n\(next)")
            }
            if let expected = options[subcommand] {
                let offered = Set(run.outputText.matches(of: /(?m)^  (?:-\w, )?(--[a-z][a-z-]*)/).map { String($0.1) })
                #expect(offered == expected, "jobgate \(subcommand) --help")
            }
        }
        let misplaced = try await runProgram(jobgateExecutable(), ["submit", "echo", "--data", "x", "--progress", "bar"])
        #expect(misplaced.status == 64 && misplaced.errors.contains("--progress applies only with --watch"), "\(misplaced.errors)")
    }

    /// A line of a paragraph: the overview and discussion start at the margin (examples and the rows of options
    /// and subcommands are indented), option descriptions at column 26, after their option or on lines of their own.
    private static func isProse(_ line: String) -> Bool {
        let indentation = line.prefix { $0 == " " }.count
        return !line.isEmpty && !line.hasSuffix(":") && (indentation == 0 || indentation == 26)
    }
}

/// A tmux server of the test's own (its socket in a fresh folder) with one window running a shell command.
final class TmuxTerminal: Sendable {
    private let folder: URL
    private let serverPID: pid_t

    private init(folder: URL, serverPID: pid_t) {
        self.folder = folder
        self.serverPID = serverPID
    }

    static func start(width: Int, height: Int, command: String) async throws -> TmuxTerminal {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("jobgate-tmux-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        _ = try await tmux(folder, ["new-session", "-d", "-s", "test", "-x", "\(width)", "-y", "\(height)", command])
        let pid = try await tmux(folder, ["display-message", "-p", "-t", "test", "#{pid}"])
        guard let serverPID = pid_t(pid.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw LocalServerError(message: "tmux did not tell its pid: \(pid)")
        }
        // tmux runs as a daemon, not our child: recorded so that Deploy/test.sh stops it after a crash.
        StartedProcesses.record(serverPID)
        return TmuxTerminal(folder: folder, serverPID: serverPID)
    }

    /// The window's lines, scrollback included, without the empty ones at the end.
    func screen() async throws -> [String] {
        let text = try await Self.tmux(folder, ["capture-pane", "-p", "-S", "-", "-t", "test"])
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        while lines.last?.isEmpty == true { lines.removeLast() }
        return lines
    }

    /// Polls the screen until `condition` holds; returns it then.
    func waitForScreen(_ what: String, _ condition: ([String]) -> Bool) async throws -> [String] {
        var last: [String] = []
        do {
            try await eventually(what) {
                last = try await screen()
                return condition(last)
            }
        } catch {
            throw LocalServerError(message: "\(error); the screen:\n\(last.joined(separator: "\n"))")
        }
        return last
    }

    func resize(width: Int) async throws {
        _ = try await Self.tmux(folder, ["resize-window", "-t", "test", "-x", "\(width)"])
    }

    /// Ends the server (and with it the window's processes, by SIGHUP) by its pid, and removes the folder.
    func stop() {
        kill(serverPID, SIGTERM)
        for _ in 0..<200 where kill(serverPID, 0) == 0 { usleep(10_000) }
        StartedProcesses.forget(serverPID)
        try? FileManager.default.removeItem(at: folder)
    }

    private static func tmux(_ folder: URL, _ arguments: [String]) async throws -> String {
        // -u: UTF-8 whatever the locale says; -f /dev/null: none of the user's configuration.
        let run = try await runProgram("/usr/bin/tmux", ["-u", "-f", "/dev/null", "-S", folder.appendingPathComponent("socket").path] + arguments,
                                       timeout: .seconds(10))
        guard run.status == 0 else { throw LocalServerError(message: "tmux \(arguments.joined(separator: " ")): \(run.errors)") }
        return run.outputText
    }
}
