public import NIOCore

/// A job's id: opaque to clients, and the Gearman unique key of its job, so a worker finds the
/// record from what gearmand hands it (`GRAB_JOB_UNIQ`), never from the handle (handles are reused).
public struct JobID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    /// Ids are Gearman unique keys too: 1–63 bytes, no whitespace or control characters.
    public init?(rawValue: String) {
        let bytes = rawValue.utf8
        guard (1...63).contains(bytes.count), !bytes.contains(where: { $0 <= 0x20 || $0 == 0x7F }) else { return nil }
        self.rawValue = rawValue
    }

    public var description: String { rawValue }
}

public enum JobState: String, Sendable, Hashable, CaseIterable {
    case queued, running, done, failed

    public var isTerminal: Bool { self == .done || self == .failed }
}

/// One job as stored in Redis: the hash `<prefix>job:<id>` (see `JobKeySchema`).
public struct JobRecord: Sendable, Hashable {
    public var id: JobID
    public var state: JobState
    public var function: String
    public var numerator: UInt32
    public var denominator: UInt32
    /// The latest progress message (may be empty).
    public var message: ByteBuffer
    /// Set once `state == .done`.
    public var result: ByteBuffer?
    /// Set once `state == .failed` (may be empty).
    public var reason: ByteBuffer?
    /// Bytes of the result or reason. A record read without them (`RedisJobStore.recordsWithoutOutcome`) has this
    /// and nil `result`/`reason`, so that a reader can make room before it reads them.
    public var outcomeSize = 0
    /// Gearman handle and server, once gearmand accepted the job (or a worker took it).
    public var handle: String?
    public var server: String?
    /// The client's unique key, when the submission named one (coalescing key).
    public var unique: String?
    /// Unix times in milliseconds.
    public var created: Int64?
    public var started: Int64?
    public var updated: Int64?
    public var finished: Int64?
    /// Seconds a terminal record is kept; the worker applies it when it writes the outcome.
    public var resultTTL: Int?
    /// Whether the job ended failed because a gateway found it lost (`RedisJobStore.markLost`), not by its worker.
    public var isLost = false

    public init(id: JobID, state: JobState, function: String) {
        self.id = id
        self.state = state
        self.function = function
        self.numerator = 0
        self.denominator = 0
        self.message = ByteBuffer()
    }

    /// What a watcher can see change: two reads with the same progress signature need no event.
    public struct Progress: Hashable, Sendable {
        public var state: JobState
        public var numerator: UInt32
        public var denominator: UInt32
        public var message: ByteBuffer
    }

    /// The result or reason of a finished record, when it was read with the record.
    public var outcome: ByteBuffer? { state == .done ? result : state == .failed ? reason : nil }

    public var progress: Progress { Progress(state: state, numerator: numerator, denominator: denominator, message: message) }
}

extension JobRecord.Progress {
    /// The same progress holding only its own message bytes. A record read from Redis slices every field out of
    /// the whole reply: whoever keeps a progress for long (one per watched job) should keep this instead.
    public var compacted: Self {
        var copy = self
        copy.message = message.readableBytes == 0 ? ByteBuffer() : ByteBuffer(bytes: message.readableBytesView)
        return copy
    }
}

// MARK: Hash fields

/// The field names of the job hash, shared by every writer (Swift workers, other languages, the gateway).
public enum JobField {
    public static let state = "state"
    public static let function = "function"
    public static let numerator = "numerator"
    public static let denominator = "denominator"
    public static let message = "message"
    public static let result = "result"
    public static let reason = "reason"
    public static let handle = "handle"
    public static let server = "server"
    public static let unique = "unique"
    public static let created = "created"
    public static let started = "started"
    public static let updated = "updated"
    public static let finished = "finished"
    public static let resultTTL = "result_ttl"
    /// Set by a gateway that ends the job as lost, to the `finished` time of that write: the record is lost while
    /// it is `failed` with the two equal (a late worker's outcome write moves `finished` on and leaves this).
    public static let lost = "lost"
}

extension JobRecord {
    /// Decodes `HGETALL`'s flat field/value list; nil when the key does not exist or has no valid state.
    init?(id: JobID, fields: [ByteBuffer]) {
        var values: [String: ByteBuffer] = [:]
        var index = 0
        while index + 1 < fields.count {
            values[String(buffer: fields[index])] = fields[index + 1]
            index += 2
        }
        guard let stateText = values[JobField.state].map({ String(buffer: $0) }), let state = JobState(rawValue: stateText) else {
            return nil
        }
        func text(_ field: String) -> String? { values[field].map { String(buffer: $0) } }
        func number<T: FixedWidthInteger>(_ field: String) -> T? { text(field).flatMap { T($0) } }
        self.init(id: id, state: state, function: text(JobField.function) ?? "")
        numerator = number(JobField.numerator) ?? 0
        denominator = number(JobField.denominator) ?? 0
        message = values[JobField.message] ?? ByteBuffer()
        result = state == .done ? (values[JobField.result] ?? ByteBuffer()) : nil
        reason = state == .failed ? (values[JobField.reason] ?? ByteBuffer()) : nil
        outcomeSize = (result ?? reason)?.readableBytes ?? 0
        handle = text(JobField.handle)
        server = text(JobField.server)
        unique = text(JobField.unique)
        created = number(JobField.created)
        started = number(JobField.started)
        updated = number(JobField.updated)
        finished = number(JobField.finished)
        resultTTL = number(JobField.resultTTL)
        isLost = state == .failed && finished != nil && number(JobField.lost) == finished
    }
}

// MARK: What followers see

extension JobRecord {
    /// The fields a job's watchers and waiters can be shown: its progress, its outcome, its function (whose access a
    /// waiter's answer checks), `finished` (push latency) and `lost` (the kind of a failure, for metrics). A change is re-read with `HMGET` of these alone: the
    /// notification says only that the hash was written, and no event shows the rest (where the job runs, when it
    /// started, its unique key, fields a worker added).
    public static let followedFields = [
        JobField.state, JobField.function, JobField.numerator, JobField.denominator, JobField.message, JobField.result,
        JobField.reason, JobField.finished, JobField.lost,
    ]

    /// Decodes the values of an `HMGET` of `followedFields`, in that order (nil: the field is not set); nil when the
    /// key does not exist or has no valid state. The other fields stay unset.
    init?(id: JobID, followedValues values: [ByteBuffer?]) {
        guard values.count == Self.followedFields.count, let stateValue = values[0],
            let state = JobState(rawValue: String(buffer: stateValue))
        else { return nil }
        func number<T: FixedWidthInteger>(_ value: ByteBuffer?) -> T? { value.flatMap { T(String(buffer: $0)) } }
        self.init(id: id, state: state, function: values[1].map { String(buffer: $0) } ?? "")
        numerator = number(values[2]) ?? 0
        denominator = number(values[3]) ?? 0
        message = values[4] ?? ByteBuffer()
        result = state == .done ? (values[5] ?? ByteBuffer()) : nil
        reason = state == .failed ? (values[6] ?? ByteBuffer()) : nil
        outcomeSize = (result ?? reason)?.readableBytes ?? 0
        finished = number(values[7])
        isLost = state == .failed && finished != nil && number(values[8]) == finished
    }
}
