import ArgumentParser
import Foundation
import GatewayProtocol
import NIOCore

/// Progress of one job on stderr: a bar redrawn in place on a terminal, one line per change otherwise, so that
/// stdout only ever holds the result.
struct ProgressDisplay {
    enum Mode: String, ExpressibleByArgument, CaseIterable {
        case auto, bar, lines, none
    }

    private enum Style { case bar, lines, none }

    private let style: Style
    private let id: GatewayJobID
    private let width: Int
    private var barShown = false

    init(mode: Mode, id: GatewayJobID) {
        switch mode {
        case .auto: style = StandardStreams.isTerminal(2) ? .bar : .lines
        case .bar: style = .bar
        case .lines: style = .lines
        case .none: style = .none
        }
        self.id = id
        width = ProcessInfo.processInfo.environment["COLUMNS"].flatMap(Int.init).map { max(40, $0) } ?? 80
    }

    /// A note that is not progress (`created`, `joined`), as a line of its own.
    mutating func note(_ text: String) {
        guard style != .none else { return }
        clearBar()
        StandardStreams.error("\(id) \(text)\n")
    }

    mutating func show(_ state: GatewayJobState, numerator: UInt64, denominator: UInt64, message: ByteBuffer? = nil) {
        let text = message.map(Self.printable) ?? ""
        switch style {
        case .none:
            return
        case .lines:
            let word = message == nil ? state.rawValue : "progress"
            StandardStreams.error("\(id) \(word) \(numerator)/\(denominator)\(text.isEmpty ? "" : " " + text)\n")
        case .bar:
            StandardStreams.error("\r\u{1B}[K" + Self.bar(state, numerator: numerator, denominator: denominator, message: text, width: width))
            barShown = true
        }
    }

    /// The job ended: the bar goes away, lines mode says how it ended.
    mutating func end(_ outcome: String) {
        switch style {
        case .none: return
        case .bar: clearBar()
        case .lines: StandardStreams.error("\(id) \(outcome)\n")
        }
    }

    private mutating func clearBar() {
        if barShown { StandardStreams.error("\r\u{1B}[K") }
        barShown = false
    }

    /// `[██████░░░░░░]  50% 1/2 message`, cut to `width` columns (the cursor stays on the line).
    static func bar(_ state: GatewayJobState, numerator: UInt64, denominator: UInt64, message: String, width: Int) -> String {
        let cells = 24
        var line: String
        if denominator > 0 {
            let fraction = min(1, Double(numerator) / Double(denominator))
            let filled = Int((fraction * Double(cells)).rounded(.down))
            let percent = Int((fraction * 100).rounded(.down))
            line = "[" + String(repeating: "█", count: filled) + String(repeating: "░", count: cells - filled) + "] "
            line += String(repeating: " ", count: 3 - String(percent).count) + "\(percent)% \(numerator)/\(denominator)"
        } else {
            line = "[" + String(repeating: "░", count: cells) + "] \(state.rawValue)"
        }
        if !message.isEmpty { line += " " + message }
        return String(line.prefix(width - 1))
    }

    /// A progress message on one line: invalid UTF-8 replaced, control characters as spaces, at most 200 characters.
    static func printable(_ bytes: ByteBuffer) -> String {
        let text = String(decoding: bytes.readableBytesView.prefix(800), as: UTF8.self)
        return String(String(text.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? " " : Character($0) }).prefix(200))
    }
}
