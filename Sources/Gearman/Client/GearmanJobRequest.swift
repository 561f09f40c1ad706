import NIOCore

public enum GearmanPriority: String, Sendable, Hashable, CaseIterable {
    case high, normal, low
}

/// A job to submit: gearmand coalesces jobs with the same function and unique while one is queued or running.
public struct GearmanJobRequest: Sendable, Hashable {
    public var function: String
    public var unique: String
    public var payload: ByteBuffer
    public var priority: GearmanPriority

    public init(function: String, unique: String, payload: ByteBuffer, priority: GearmanPriority = .normal) {
        self.function = function
        self.unique = unique
        self.payload = payload
        self.priority = priority
    }

    func packet(background: Bool) -> GearmanPacket {
        let type: GearmanPacketType =
            switch (priority, background) {
            case (.high, true): .submitJobHighBackground
            case (.normal, true): .submitJobBackground
            case (.low, true): .submitJobLowBackground
            case (.high, false): .submitJobHigh
            case (.normal, false): .submitJob
            case (.low, false): .submitJobLow
            }
        return GearmanPacket(magic: .request, type: type, arguments: [ByteBuffer(string: function), ByteBuffer(string: unique), payload])
    }

    /// Refuses what gearmand 1.1.20 would mishandle silently (see shared/reference/gearmand.md §3).
    func validate(maximumPayloadSize: Int) throws(GearmanError) {
        try GearmanValidation.function(function)
        try GearmanValidation.unique(unique)
        guard payload.readableBytes <= maximumPayloadSize else {
            throw GearmanError(.invalidArgument, "payload of \(payload.readableBytes) bytes exceeds the maximum of \(maximumPayloadSize)")
        }
    }
}

/// Checks on what gearmand accepts but then mishandles without telling anyone.
public enum GearmanValidation {
    /// gearmand stores uniques in `char[64]`: 64 bytes are cut to 63 and never coalesce again, 65+ are refused.
    public static let maximumUniqueLength = 63
    /// GET_STATUS with a handle of 64 bytes or more gets no reply at all, which would desync the reply queue.
    public static let maximumHandleLength = 63
    /// Leading fields share an 8 KiB receive buffer; longer names close the connection.
    public static let maximumFunctionLength = 512

    public static func function(_ name: String) throws(GearmanError) {
        guard !name.isEmpty else { throw GearmanError(.invalidArgument, "function name is empty") }
        guard name.utf8.count <= maximumFunctionLength else {
            throw GearmanError(.invalidArgument, "function name is \(name.utf8.count) bytes; the maximum is \(maximumFunctionLength)")
        }
        // Whitespace breaks gearmand's tab-separated `status` output; NUL breaks the packet itself.
        guard !name.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) else {
            throw GearmanError(.invalidArgument, "function name \(String(reflecting: name)) contains whitespace or control characters")
        }
    }

    public static func unique(_ unique: String) throws(GearmanError) {
        let length = unique.utf8.count
        guard (1...maximumUniqueLength).contains(length) else {
            throw GearmanError(.invalidArgument, "unique key must be 1 to \(maximumUniqueLength) bytes, got \(length)")
        }
        guard !unique.utf8.contains(0) else { throw GearmanError(.invalidArgument, "unique key contains NUL") }
    }

    public static func handle(_ handle: String) throws(GearmanError) {
        let length = handle.utf8.count
        guard (1...maximumHandleLength).contains(length) else {
            throw GearmanError(.invalidArgument, "job handle must be 1 to \(maximumHandleLength) bytes, got \(length)")
        }
        // Handles also travel in admin lines (`cancel job H`), where a space or line break changes the command.
        guard !handle.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) else {
            throw GearmanError(.invalidArgument, "job handle \(String(reflecting: handle)) contains whitespace or control characters")
        }
    }
}

/// What GET_STATUS or GET_STATUS_UNIQUE tells about a job. Finished and never-existed jobs look the same (`known == false`).
public struct GearmanJobStatus: Sendable, Hashable {
    public var known: Bool
    public var running: Bool
    public var numerator: UInt32
    public var denominator: UInt32
    /// Foreground clients attached to the job; only GET_STATUS_UNIQUE reports it.
    public var clientCount: UInt32?

    public init(known: Bool, running: Bool, numerator: UInt32, denominator: UInt32, clientCount: UInt32? = nil) {
        self.known = known
        self.running = running
        self.numerator = numerator
        self.denominator = denominator
        self.clientCount = clientCount
    }
}

/// What a foreground client hears about its job, routed by handle.
public enum GearmanJobEvent: Sendable, Hashable {
    case status(numerator: UInt32, denominator: UInt32)
    case data(ByteBuffer)
    case warning(ByteBuffer)
    case completed(ByteBuffer)
    case failed
    case exception(ByteBuffer)

    public var isTerminal: Bool {
        switch self {
        case .completed, .failed, .exception: true
        case .status, .data, .warning: false
        }
    }
}

extension UInt32 {
    /// gearmand parses numbers with `atoi` and stores them in 32 bits: leading digits count, the rest is ignored.
    init(gearmanNumber text: String) {
        var bytes = text.utf8.drop { $0 == UInt8(ascii: " ") || (0x09...0x0D).contains($0) }
        let negative = bytes.first == UInt8(ascii: "-")
        if negative || bytes.first == UInt8(ascii: "+") { bytes = bytes.dropFirst() }
        var value: UInt32 = 0
        for byte in bytes {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { break }
            value = value &* 10 &+ UInt32(byte - UInt8(ascii: "0"))
        }
        self = negative ? 0 &- value : value
    }
}
