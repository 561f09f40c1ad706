/// JSON string literals, for the JSON log lines and the job page's event stream.
enum JSONString {
    /// `text` as a JSON string. Scalar by scalar, never by `Character`, so no combining mark hides a quote, `<` or
    /// line break. `<` is escaped too, so nothing in it can end a script or style element of a page, and U+2028/2029,
    /// which end a line for some readers, so nothing can end an event-stream line.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "<": out += "\\u003c"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F || scalar.value == 0x2028 || scalar.value == 0x2029:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
