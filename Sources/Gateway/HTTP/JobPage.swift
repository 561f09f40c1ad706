import Crypto
import Foundation
import GatewayProtocol
import JobStore
import NIOCore

/// The live job page and the JSON of its events.
///
/// The page is complete as served (state, progress, outcome), so it reads without JavaScript; a small script then
/// follows `/jobs/<id>/events` and updates it. The state is also on `<body data-state=…>` for scripts and tests.
enum JobPage {
    /// The page and the Content-Security-Policy to serve it with: nothing runs or loads but the page's own script
    /// and style, allowed by their hashes (the style holds the progress, so its hash is the page's own).
    static func page(id: GatewayJobID, record: JobRecord?) -> (html: String, contentSecurityPolicy: String) {
        let state = record.map { $0.state.rawValue } ?? "expired"
        let numerator = UInt64(record?.numerator ?? 0)
        let denominator = UInt64(record?.denominator ?? 0)
        let percent = Self.percent(state: state, numerator: numerator, denominator: denominator)
        let message = record?.message ?? ByteBuffer()
        var outcome = ByteBuffer()
        if let record, record.state == .done {
            outcome = record.result ?? ByteBuffer()
            outcome = outcome.getSlice(at: outcome.readerIndex, length: min(outcome.readableBytes, GatewayHTTPServer.maximumResultShown))!
        } else if let record, record.state == .failed {
            outcome = record.reason ?? ByteBuffer()
        }
        let function = Array((record?.function ?? "?").utf8)
        let outcomeTitle = state == "failed" ? "Reason" : "Result"
        let hasOutcome = state == "done" || state == "failed"
        let style = Self.style + "\n#fill { width: \(percent)%; }\n"
        let policy = "default-src 'none'; script-src \(scriptHash); style-src \(Self.hash(style)); connect-src 'self'; "
            + "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        let html = """
            <!doctype html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <meta name="referrer" content="no-referrer">
            <title>jobgate · \(escape(record == nil ? Array("job".utf8) : function))</title>
            <style>\(style)</style>
            </head>
            <body data-state="\(escape(state.utf8))">
            <main>
            <h1>Job <code id="job-id">\(escape(id.rawValue.utf8))</code></h1>
            <div>Function <code id="function">\(escape(function))</code></div>
            <div id="state">\(escape(state.utf8))</div>
            <div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="\(percent)"><div id="fill"></div></div>
            <div id="figures"><span id="percent">\(percent)%</span> · <span id="fraction">\(numerator)/\(denominator)</span></div>
            <div id="message">\(escape(message.readableBytesView))</div>
            <section id="outcome"\(hasOutcome ? "" : " hidden")><h2 id="outcome-title">\(outcomeTitle)</h2><pre id="result">\(escape(outcome.readableBytesView))</pre></section>
            </main>
            <script>\(script)</script>
            </body>
            </html>

            """
        return (html, policy)
    }

    /// The page's style but the progress bar's width.
    private static let style = """
        body { font: 16px/1.5 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
        main { max-width: 44rem; margin: 3rem auto; background: #fff; padding: 2rem 2.5rem; border-radius: 10px;
               box-shadow: 0 1px 4px rgba(0,0,0,.12); }
        h1 { font-size: 1.25rem; margin: 0 0 .25rem; }
        code { font-size: .85rem; background: #eef0f3; padding: .1rem .35rem; border-radius: 4px; word-break: break-all; }
        #state { display: inline-block; margin: 1rem 0 .5rem; padding: .15rem .7rem; border-radius: 99px; font-weight: 600;
                 background: #e3e8ef; text-transform: uppercase; letter-spacing: .05em; font-size: .8rem; }
        body[data-state=running] #state { background: #dbeafe; color: #1e40af; }
        body[data-state=done] #state { background: #dcfce7; color: #166534; }
        body[data-state=failed] #state, body[data-state=expired] #state { background: #fee2e2; color: #991b1b; }
        .bar { height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; }
        #fill { height: 100%; background: #3b82f6; transition: width .3s; }
        body[data-state=done] #fill { background: #22c55e; }
        body[data-state=failed] #fill { background: #ef4444; }
        #figures { color: #4b5563; margin: .4rem 0; }
        #message { min-height: 1.5em; margin: .25rem 0 1rem; }
        pre { background: #0f172a; color: #e2e8f0; padding: 1rem; border-radius: 6px; white-space: pre-wrap; word-break: break-all;
              max-height: 24rem; overflow: auto; }
        """

    /// Updates the page from each event; closes the stream at the end (an EventSource would reconnect otherwise).
    private static let script = """
        (function () {
          var body = document.body;
          function $(id) { return document.getElementById(id); }
          function show(job) {
            body.dataset.state = job.state;
            $("state").textContent = job.state;
            if (job.numerator !== undefined) {
              var percent = job.state === "done" ? 100
                : job.denominator > 0 ? Math.min(100, Math.floor(job.numerator * 100 / job.denominator)) : 0;
              $("fill").style.width = percent + "%";
              $("fill").parentNode.setAttribute("aria-valuenow", percent);
              $("percent").textContent = percent + "%";
              $("fraction").textContent = job.numerator + "/" + job.denominator;
            }
            if (job.message !== undefined) { $("message").textContent = job.message; }
            if (job.state === "done" || job.state === "failed") {
              if (job.state === "done") { $("fill").style.width = "100%"; $("percent").textContent = "100%"; }
              $("outcome-title").textContent = job.state === "failed" ? "Reason" : "Result";
              $("result").textContent = job.state === "failed" ? (job.reason || "") : (job.result || "");
              $("outcome").hidden = false;
            }
          }
          if (!window.EventSource || body.dataset.state === "done" || body.dataset.state === "failed" || body.dataset.state === "expired") { return; }
          var source = new EventSource(location.pathname.replace(/\\/$/, "") + "/events");
          source.addEventListener("state", function (e) { show(JSON.parse(e.data)); });
          source.addEventListener("end", function (e) { show(JSON.parse(e.data)); source.close(); });
        })();
        """

    private static let scriptHash = hash(script)

    /// A CSP source that allows exactly this inline script or style.
    private static func hash(_ text: String) -> String {
        "'sha256-" + Data(SHA256.hash(data: Array(text.utf8))).base64EncodedString() + "'"
    }

    // MARK: Event data

    static func json(_ record: JobRecord) -> String {
        var fields: [(String, String)] = [
            ("state", JSONString.quoted(record.state.rawValue)),
            ("numerator", String(record.numerator)),
            ("denominator", String(record.denominator)),
            ("message", JSONString.quoted(text(record.message))),
        ]
        if record.state == .done {
            let result = shown(record.result ?? ByteBuffer())
            fields += [("result", JSONString.quoted(result.text)), ("truncated", String(result.truncated))]
        }
        if record.state == .failed { fields.append(("reason", JSONString.quoted(text(record.reason ?? ByteBuffer())))) }
        return object(fields)
    }

    static func json(state: String, numerator: UInt64, denominator: UInt64, message: ByteBuffer) -> String {
        object([("state", JSONString.quoted(state)), ("numerator", String(numerator)), ("denominator", String(denominator)), ("message", JSONString.quoted(text(message)))])
    }

    static func json(state: String, result: ByteBuffer) -> String {
        let result = shown(result)
        return object([("state", JSONString.quoted(state)), ("result", JSONString.quoted(result.text)), ("truncated", String(result.truncated))])
    }

    static func json(state: String, reason: ByteBuffer) -> String {
        object([("state", JSONString.quoted(state)), ("reason", JSONString.quoted(text(reason)))])
    }

    static func json(state: String) -> String { object([("state", JSONString.quoted(state))]) }

    // MARK: Helpers

    static func percent(state: String, numerator: UInt64, denominator: UInt64) -> UInt64 {
        if state == "done" { return 100 }
        return denominator > 0 ? min(100, numerator * 100 / denominator) : 0
    }

    private static func shown(_ bytes: ByteBuffer) -> (text: String, truncated: Bool) {
        let truncated = bytes.readableBytes > GatewayHTTPServer.maximumResultShown
        return (String(decoding: bytes.readableBytesView.prefix(GatewayHTTPServer.maximumResultShown), as: UTF8.self), truncated)
    }

    /// Bytes as text: invalid UTF-8 becomes U+FFFD.
    private static func text(_ bytes: ByteBuffer) -> String { String(decoding: bytes.readableBytesView, as: UTF8.self) }

    private static func object(_ fields: [(String, String)]) -> String {
        "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }


    /// Bytes as HTML text, safe in element content and in quoted attribute values.
    ///
    /// Byte by byte, never by `Character`: a grapheme cluster may hold `<` or `>` behind a mark (U+0600 `<` is one
    /// `Character`), and the browser's parser sees the `<` all the same. Invalid UTF-8 becomes U+FFFD first, so the
    /// page stays valid UTF-8, and so does NUL, which the HTML parser would drop or replace anyway.
    static func escape(_ bytes: some Collection<UInt8>) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        for byte in String(decoding: bytes, as: UTF8.self).utf8 {
            switch byte {
            case UInt8(ascii: "&"): out += "&amp;".utf8
            case UInt8(ascii: "<"): out += "&lt;".utf8
            case UInt8(ascii: ">"): out += "&gt;".utf8
            case UInt8(ascii: "\""): out += "&quot;".utf8
            case UInt8(ascii: "'"): out += "&#39;".utf8
            case 0: out += "\u{FFFD}".utf8
            default: out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
