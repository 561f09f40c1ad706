/// A command of gearmand's admin text protocol, spoken on the same port as the binary protocol.
public struct GearmanAdminCommand: Sendable, Hashable {
    public let line: String
    /// Listings end with a line holding a single `.`; the others are one line.
    public let isListing: Bool

    public static let status = Self(line: "status", isListing: true)
    public static let priorityStatus = Self(line: "prioritystatus", isListing: true)
    public static let workers = Self(line: "workers", isListing: true)
    public static let showJobs = Self(line: "show jobs", isListing: true)
    public static let showUniqueJobs = Self(line: "show unique jobs", isListing: true)
    public static let version = Self(line: "version", isListing: false)
    public static let getpid = Self(line: "getpid", isListing: false)
    public static let verbose = Self(line: "verbose", isListing: false)

    public static func cancelJob(_ handle: String) throws(GearmanError) -> Self {
        try GearmanValidation.handle(handle)
        return Self(line: "cancel job \(handle)", isListing: false)
    }

    /// Limits the queue of `function` (all priorities, or high/normal/low); 0 removes the limit.
    public static func maxQueue(_ function: String, _ limits: [Int]) throws(GearmanError) -> Self {
        try GearmanValidation.function(function)
        guard limits.count == 1 || limits.count == 3 else {
            throw GearmanError(.invalidArgument, "maxqueue takes one limit or three (high, normal, low)")
        }
        return Self(line: (["maxqueue", function] + limits.map(String.init)).joined(separator: " "), isListing: false)
    }

    public static func createFunction(_ function: String) throws(GearmanError) -> Self {
        try GearmanValidation.function(function)
        return Self(line: "create function \(function)", isListing: false)
    }

    /// Dangerous with queued jobs: gearmand leaves them orphaned (reference §9).
    public static func dropFunction(_ function: String) throws(GearmanError) -> Self {
        try GearmanValidation.function(function)
        return Self(line: "drop function \(function)", isListing: false)
    }
}

/// One row of `status`: jobs in gearmand's queue for a function.
public struct GearmanFunctionStatus: Sendable, Hashable {
    public var function: String
    /// Queued plus running.
    public var total: Int
    public var running: Int
    public var workers: Int

    /// Parses `fn\tTOTAL\tRUNNING\tWORKERS`.
    public init?(line: String) {
        let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
        guard fields.count == 4, let total = Int(fields[1]), let running = Int(fields[2]), let workers = Int(fields[3]) else {
            return nil
        }
        self.function = String(fields[0])
        self.total = total
        self.running = running
        self.workers = workers
    }
}

/// One row of `workers`: `fd ip client-id : fn fn …`.
public struct GearmanWorkerInfo: Sendable, Hashable {
    public var fileDescriptor: Int
    public var address: String
    /// `-` when the connection set none.
    public var clientID: String
    public var functions: [String]

    public init?(line: String) {
        // Split on spaces, not ":", which IPv6 addresses contain.
        let tokens = line.split(separator: " ")
        guard tokens.count >= 4, tokens[3] == ":", let fd = Int(tokens[0]) else { return nil }
        self.fileDescriptor = fd
        self.address = String(tokens[1])
        self.clientID = String(tokens[2])
        self.functions = tokens.dropFirst(4).map(String.init)
    }
}

/// One row of `show jobs`, a job gearmand holds (queued or running): `handle\tretries\tignore_job\tjob_queued`.
/// `job_queued` is gearmand's own bookkeeping (it stays 1 while a worker runs the job) and is not kept.
public struct GearmanQueuedJob: Sendable, Hashable {
    public var handle: String
    /// Times a worker took the job and went away without finishing it.
    public var retries: Int
    /// Cancelled by `cancel job`: gearmand drops it when a worker next asks for it.
    public var isCancelled: Bool

    public init?(line: String) {
        let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
        guard fields.count == 4, !fields[0].isEmpty, let retries = Int(fields[1]), let ignored = Int(fields[2]) else { return nil }
        self.handle = String(fields[0])
        self.retries = retries
        self.isCancelled = ignored != 0
    }
}
