import ArgumentParser
import Foundation
import GatewayProtocol
import NIOCore
import Synchronization
import UnixSignals

/// `--progress`, for the subcommands that follow a job (`status` prints its state once and has no use for it).
struct ProgressOptions: ParsableArguments {
    @Option(
        name: .customLong("progress"),
        help: ArgumentHelp("How to show progress on stderr; auto, the default, draws a bar on a terminal and lines otherwise.", valueName: "mode")
    )
    var choice: ProgressDisplay.Mode?

    var mode: ProgressDisplay.Mode { choice ?? .auto }
}

/// Progress of one job on stderr: a bar redrawn in place on a terminal, one line per change otherwise, so that
/// stdout only ever holds the result.
///
/// The follow loop and the terminal's resize signal both draw: the bar's line is owned by a lock, so the two never
/// write over each other.
final class ProgressDisplay: Sendable {
    enum Mode: String, ExpressibleByArgument, CaseIterable {
        case auto, bar, lines, none
    }

    private enum Style { case bar, lines, none }

    private let style: Style
    private let id: GatewayJobID
    private let bar = Mutex(ProgressBarLine())

    init(mode: Mode, id: GatewayJobID) {
        switch mode {
        case .auto: style = StandardStreams.isTerminal(2) ? .bar : .lines
        case .bar: style = .bar
        case .lines: style = .lines
        case .none: style = .none
        }
        self.id = id
    }

    /// A note that is not progress (`created`, `joined`), as a line of its own.
    func note(_ text: String) {
        guard style != .none else { return }
        bar.withLock { bar in StandardStreams.error(bar.clear(width: Self.width()) + "\(id) \(text)\n") }
    }

    func show(_ state: GatewayJobState, numerator: UInt64, denominator: UInt64, message: ByteBuffer? = nil) {
        let text = message.map(Self.printable) ?? ""
        switch style {
        case .none:
            return
        case .lines:
            let word = message == nil ? state.rawValue : "progress"
            StandardStreams.error("\(id) \(word) \(numerator)/\(denominator)\(text.isEmpty ? "" : " " + text)\n")
        case .bar:
            let progress = ProgressBarLine.Progress(state: state, numerator: numerator, denominator: denominator, message: text)
            bar.withLock { bar in StandardStreams.error(bar.draw(progress, width: Self.width())) }
        }
    }

    /// The job ended: the bar goes away, lines mode says how it ended.
    func end(_ outcome: String) {
        switch style {
        case .none: return
        case .bar: bar.withLock { bar in StandardStreams.error(bar.clear(width: Self.width())) }
        case .lines: StandardStreams.error("\(id) \(outcome)\n")
        }
    }

    /// Runs `body` while redrawing the bar at the new width whenever the terminal is resized (`SIGWINCH`, taken as
    /// an async sequence: nothing runs in a signal handler).
    func redrawingOnResize<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        guard style == .bar, StandardStreams.isTerminal(2) else { return try await body() }
        let resizes = await UnixSignalsSequence(trapping: .sigwinch)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in resizes {
                    self.bar.withLock { bar in StandardStreams.error(bar.redraw(width: Self.width())) }
                }
            }
            defer { group.cancelAll() }
            return try await body()
        }
    }

    /// The columns of the terminal on stderr; `$COLUMNS` or 80 when stderr is not one (`--progress bar` to a file).
    static func width() -> Int {
        var size = winsize()
        if ioctl(2, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
        return ProcessInfo.processInfo.environment["COLUMNS"].flatMap(Int.init).map { max(20, $0) } ?? 80
    }

    /// A progress message on one line: invalid UTF-8 replaced, control characters as spaces, at most 200 characters.
    static func printable(_ bytes: ByteBuffer) -> String {
        let text = String(decoding: bytes.readableBytesView.prefix(800), as: UTF8.self)
        return String(String(text.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? " " : Character($0) }).prefix(200))
    }
}

/// The bar's line on a terminal, as a state machine that returns the bytes to write: what it shows, and how many
/// columns it took, so that the next drawing erases all of it even after the terminal got narrower.
struct ProgressBarLine {
    struct Progress {
        var state: GatewayJobState
        var numerator: UInt64
        var denominator: UInt64
        var message: String
    }

    private var shown: Progress?
    /// Columns of the line drawn last; 0 when nothing is drawn.
    private var drawnColumns = 0

    /// Replaces the bar with `progress`, fitted to `width` columns.
    mutating func draw(_ progress: Progress, width: Int) -> String {
        let line = Self.line(progress, width: width)
        defer { (shown, drawnColumns) = (progress, Self.columns(line)) }
        return erase(width: width) + line
    }

    /// The terminal was resized: the same progress, fitted to the new width.
    mutating func redraw(width: Int) -> String {
        guard let shown else { return "" }
        return draw(shown, width: width)
    }

    /// Takes the bar away, leaving the cursor at the start of its (now empty) line.
    mutating func clear(width: Int) -> String {
        guard shown != nil else { return "" }
        defer { (shown, drawnColumns) = (nil, 0) }
        return erase(width: width)
    }

    /// Erases the bar and leaves the cursor where it began. A terminal made narrower than the bar reflows it onto
    /// several rows with the cursor on the last (tmux, VTE, iTerm2 and most others do): each of those rows is
    /// erased on the way up, row by row, since erasing the screen from its top corner makes tmux keep it as
    /// scrollback.
    private func erase(width: Int) -> String {
        let rowsAbove = max(0, (drawnColumns - 1) / max(1, width))
        return "\r\u{1B}[K" + String(repeating: "\u{1B}[A\u{1B}[K", count: rowsAbove)
    }

    /// `[██████░░░░░░]  50% 1/2 message`, at most `width - 1` columns: writing the last column would leave the
    /// cursor waiting to wrap, and some terminals then wrap on the next `\r`.
    static func line(_ progress: Progress, width: Int) -> String {
        let cells = max(4, min(24, (width - 1) / 3))
        var line: String
        if progress.denominator > 0 {
            let fraction = min(1, Double(progress.numerator) / Double(progress.denominator))
            let filled = Int((fraction * Double(cells)).rounded(.down))
            let percent = String(Int((fraction * 100).rounded(.down)))
            line = "[" + String(repeating: "█", count: filled) + String(repeating: "░", count: cells - filled) + "] "
            line += String(repeating: " ", count: 3 - percent.count) + "\(percent)% \(progress.numerator)/\(progress.denominator)"
        } else {
            line = "[" + String(repeating: "░", count: cells) + "] \(progress.state.rawValue)"
        }
        if !progress.message.isEmpty { line += " " + progress.message }
        return fitted(line, columns: width - 1)
    }

    /// The longest start of `text` that takes at most `limit` columns.
    static func fitted(_ text: String, columns limit: Int) -> String {
        var used = 0
        var end = text.unicodeScalars.startIndex
        for scalar in text.unicodeScalars {
            used += columns(of: scalar)
            if used > limit { break }
            end = text.unicodeScalars.index(after: end)
        }
        return String(text.unicodeScalars[..<end])
    }

    static func columns(_ text: String) -> Int {
        text.unicodeScalars.reduce(0) { $0 + columns(of: $1) }
    }

    /// Columns a terminal gives `scalar`, as `wcwidth` counts them without depending on the locale: none for
    /// combining marks, two for emoji and East Asian wide and fullwidth characters, one for the rest.
    private static func columns(of scalar: Unicode.Scalar) -> Int {
        switch scalar.properties.generalCategory {
        case .nonspacingMark, .enclosingMark, .format: return 0
        default: break
        }
        if scalar.properties.isEmojiPresentation { return 2 }
        switch scalar.value {
        case 0x1100...0x115F, 0x2E80...0x303E, 0x3041...0x33FF, 0x3400...0x4DBF, 0x4E00...0x9FFF, 0xA000...0xA4CF,
            0xAC00...0xD7A3, 0xF900...0xFAFF, 0xFE30...0xFE4F, 0xFF00...0xFF60, 0xFFE0...0xFFE6, 0x20000...0x3FFFD:
            return 2
        default: return 1
        }
    }
}
