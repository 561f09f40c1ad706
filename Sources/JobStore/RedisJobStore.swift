import Foundation
public import NIOCore
public import Redis

/// Where jobs live in Redis. Every writer, in any language, follows it (README "Key schema").
public struct JobKeySchema: Sendable, Hashable {
    /// Prefix of every key, so several deployments can share one Redis.
    public var prefix: String
    /// Redis database: keyspace notification channels name it.
    public var database: Int

    public init(prefix: String = "jobgate:", database: Int = 0) {
        self.prefix = prefix
        self.database = database
    }

    /// The job hash.
    public func jobKey(_ id: JobID) -> String { "\(prefix)job:\(id.rawValue)" }

    /// The id a job hash key names, if it is one.
    public func jobID(fromKey key: String) -> JobID? {
        let jobPrefix = "\(prefix)job:"
        guard key.hasPrefix(jobPrefix) else { return nil }
        return JobID(rawValue: String(key.dropFirst(jobPrefix.count)))
    }

    /// Coalescing index: the id of the job submitted with this function and client unique key, in the deployment-wide
    /// namespace (nil) or a credential's (function names and unique keys hold no spaces, so the parts cannot run
    /// into each other, whatever they contain).
    public func uniqueKey(function: String, unique: String, namespace: String? = nil) -> String {
        guard let namespace else { return "\(prefix)unique:\(function):\(unique)" }
        return "\(prefix)unique@\(namespace) \(function) \(unique)"
    }

    /// Jobs created and not yet accepted by gearmand: a set of ids (their records say when they were created).
    public var unacceptedKey: String { "\(prefix)unaccepted" }

    /// The keyevent channels the change feed subscribes to (one each, never a pattern per job).
    public var hashEventChannel: String { "__keyevent@\(database)__:hset" }
    public var expiredEventChannel: String { "__keyevent@\(database)__:expired" }
}

public struct JobStoreConfiguration: Sendable {
    public var schema = JobKeySchema()
    /// How long a finished job's record (and result) is kept, unless the submission set its own.
    public var resultTTL: Int = 86_400
    /// How long an unfinished record is kept, so that abandoned jobs do not stay forever.
    public var inFlightTTL: Int = 7 * 86_400
    /// How long gearmand may take to accept a created job. A submission with the unique key of an unfinished job
    /// still unaccepted after this long does not join it blindly (see `CreateOutcome.unaccepted`).
    public var acceptanceGrace: Duration = .seconds(30)
    /// How much of each function's completion log is kept (see `CompletionLog.swift`).
    public var logRetention = CompletionLogRetention()
    /// Replicas that must hold a created record and a written outcome before the write counts as done (`WAIT` after
    /// it): the gateway answers `CREATED` and the worker tells gearmand only then, so a failover loses neither.
    public var replicasAck: RedisReplicasAck?

    public init() {}
}

/// Reads and writes job records in Redis.
///
/// The gateway creates records (`create`) before submitting to gearmand; workers mark them running,
/// report progress and write the outcome. Every write fires a keyspace notification that the change feed
/// turns into pushed events. Running and progress writes never touch a finished record; the outcome is
/// written in one script with the TTL and its completion log entry, so nobody ever sees `done` without the result.
public final class RedisJobStore: Sendable {
    public let redis: RedisConnectionPool
    /// Where `outcomes(of:)` reads: connections of their own keep megabytes of results from queueing ahead of
    /// every other command (a `STATUS` behind a burst of large `RESULT`s).
    public let outcomeRedis: RedisConnectionPool
    public let configuration: JobStoreConfiguration
    public var schema: JobKeySchema { configuration.schema }

    private let inFlightTTLArgument: RedisArgument
    private let resultTTLArgument: RedisArgument
    private let jobKeyPrefixArgument: RedisArgument
    private let unacceptedKeyArgument: RedisArgument

    public init(redis: RedisConnectionPool, outcomeRedis: RedisConnectionPool? = nil, configuration: JobStoreConfiguration = .init()) {
        self.redis = redis
        self.outcomeRedis = outcomeRedis ?? redis
        self.configuration = configuration
        self.inFlightTTLArgument = RedisArgument(configuration.inFlightTTL)
        self.resultTTLArgument = RedisArgument(configuration.resultTTL)
        self.jobKeyPrefixArgument = RedisArgument("\(configuration.schema.prefix)job:")
        self.unacceptedKeyArgument = RedisArgument(configuration.schema.unacceptedKey)
    }

    // MARK: Gateway side

    public enum CreateOutcome: Sendable, Hashable {
        case created
        /// A job with this function and unique is still queued or running: the submission joins it.
        case joined(JobID)
        /// A job with this function and unique is still queued, but gearmand has not accepted it within the acceptance
        /// grace: its gateway may have died before submitting it. Nothing was created; the caller asks gearmand, then
        /// joins it or ends it as lost and creates again.
        case unaccepted(JobID)
    }

    /// A job record to create: see `create(_:)`.
    public struct NewJob: Sendable {
        public var id: JobID
        public var function: String
        public var unique: String?
        public var resultTTL: Int?
        /// Whose submissions `unique` coalesces with: a credential's name, or nil for everyone's (see `uniqueKey`).
        public var namespace: String?

        public init(id: JobID, function: String, unique: String?, resultTTL: Int? = nil, namespace: String? = nil) {
            self.id = id
            self.function = function
            self.unique = unique
            self.resultTTL = resultTTL
            self.namespace = namespace
        }
    }

    /// Creates the record of a new job (state `queued`), or finds the unfinished job it coalesces with.
    /// For a job with a unique key, check and create are one script, so two gateways cannot both create a job for
    /// the same unique; a job without one gets a fresh id, so its record is plain `HSET` and `EXPIRE`.
    ///
    /// Every job is also entered in the unaccepted index (`JobKeySchema.unacceptedKey`) until the caller clears it
    /// once gearmand answered (`clearUnaccepted`): a gateway that dies in between leaves the entry, and whichever
    /// gateway sweeps the index finds the job (`unacceptedJobs`). One `SADD` for the whole batch, in the same
    /// pipeline before the records, so no record exists without its entry; the entries of submissions that
    /// joined another job are cleared with the rest. (A set, not a sorted set by time: `SADD`/`SREM` cost a tenth of
    /// `ZADD`/`ZREM` per job, and the sweep reads the creation time from the records it reads anyway.)
    public func create(id: JobID, function: String, unique: String?, resultTTL: Int? = nil) async throws(JobStoreError) -> CreateOutcome {
        try await create([NewJob(id: id, function: function, unique: unique, resultTTL: resultTTL)])[0].get()
    }

    /// `create` for many jobs in one pipelined write (in order: a later job with the same unique joins an earlier one).
    /// The index entries and the records of jobs without a unique key are one `MULTI/EXEC` (no record without its
    /// TTL); the jobs with one follow, one create script each.
    /// Throws when Redis cannot be reached; a failed write fails only its job.
    public func create(_ jobs: [NewJob]) async throws(JobStoreError) -> [Result<CreateOutcome, JobStoreError>] {
        guard !jobs.isEmpty else { return [] }
        typealias Constant = CreateCommandConstants
        let now = Self.now()
        let nowArgument = RedisArgument(now)
        let acceptedSince = RedisArgument(now - Int64(configuration.acceptanceGrace / .milliseconds(1)))
        let plain = jobs.indices.filter { jobs[$0].unique == nil }
        let coalescing = jobs.indices.filter { jobs[$0].unique != nil }
        // Built with as few allocations as they can be: a batch of creates is most of the gateway's work per SUBMIT.
        var commands: [RedisCommand] = []
        commands.reserveCapacity(3 + 2 * plain.count + coalescing.count)
        var indexEntries = [Constant.sadd, unacceptedKeyArgument]
        indexEntries.reserveCapacity(2 + jobs.count)
        for job in jobs { indexEntries.append(RedisArgument(job.id.rawValue)) }
        commands.append(Constant.multi)
        commands.append(RedisCommand(indexEntries))
        for index in plain {
            let key = RedisArgument(schema.jobKey(jobs[index].id))
            var record: [RedisArgument] = []
            record.reserveCapacity(2 + Constant.mostRecordFields)
            record.append(Constant.hset)
            record.append(key)
            appendRecordFields(jobs[index], now: nowArgument, to: &record)
            commands.append(RedisCommand(record))
            commands.append(RedisCommand([Constant.expire, key, inFlightTTLArgument]))
        }
        commands.append(Constant.exec)
        for index in coalescing { commands.append(createCommand(jobs[index], now: nowArgument, acceptedSince: acceptedSince)) }
        let replies = try await evaluate(commands, Self.create, acknowledgedBy: configuration.replicasAck)

        var outcomes = [Result<CreateOutcome, JobStoreError>](repeating: .success(.created), count: jobs.count)
        let exec = replies[commands.count - coalescing.count - 1]
        guard case .success(let written) = exec, let writes = written.array, writes.count == 1 + 2 * plain.count else {
            if case .failure(let error) = exec { throw JobStoreError(redis: error) }
            throw JobStoreError(.unexpectedReply, "EXEC of the new records answered \(exec)")
        }
        if let error = writes[0].errorMessage { throw JobStoreError(redis: RedisError(.serverError, error)) }
        for (number, index) in plain.enumerated() {
            if let error = writes[1 + 2 * number].errorMessage ?? writes[2 + 2 * number].errorMessage {
                outcomes[index] = .failure(JobStoreError(redis: RedisError(.serverError, error)))
            }
        }
        for (index, reply) in zip(coalescing, replies.suffix(coalescing.count)) {
            let job = jobs[index]
            switch reply {
            case .success(let reply):
                if let unaccepted = reply.array?.first?.string, let existingID = JobID(rawValue: unaccepted) {
                    outcomes[index] = .success(.unaccepted(existingID))
                } else if let existing = reply.string, let existingID = JobID(rawValue: existing) {
                    outcomes[index] = .success(existingID == job.id ? .created : .joined(existingID))
                } else {
                    outcomes[index] = .failure(JobStoreError(.unexpectedReply, "create script answered \(reply)"))
                }
            case .failure(let error):
                outcomes[index] = .failure(JobStoreError(redis: error))
            }
        }
        return outcomes
    }

    /// Appends the fields of a new record, as `HSET` and the create script take them.
    private func appendRecordFields(_ job: NewJob, now: RedisArgument, to arguments: inout [RedisArgument]) {
        typealias Constant = CreateCommandConstants
        arguments.reserveCapacity(arguments.count + Constant.mostRecordFields)
        arguments.append(contentsOf: [Constant.state, Constant.queued, Constant.function, RedisArgument(job.function)])
        arguments.append(contentsOf: Constant.zeroProgress)
        arguments.append(contentsOf: [Constant.created, now, Constant.updated, now, Constant.resultTTL])
        arguments.append(job.resultTTL.map { RedisArgument($0) } ?? resultTTLArgument)
        if let unique = job.unique {
            arguments.append(Constant.unique)
            arguments.append(RedisArgument(unique))
        }
    }

    private func createCommand(_ job: NewJob, now: RedisArgument, acceptedSince: RedisArgument) -> RedisCommand {
        var keys: [RedisArgument] = ["\(schema.jobKey(job.id))", unacceptedKeyArgument]
        if let unique = job.unique { keys.append("\(schema.uniqueKey(function: job.function, unique: unique, namespace: job.namespace))") }
        var arguments: [RedisArgument] = []
        arguments.reserveCapacity(4 + CreateCommandConstants.mostRecordFields)
        arguments.append(contentsOf: [RedisArgument(job.id.rawValue), inFlightTTLArgument, jobKeyPrefixArgument, acceptedSince])
        appendRecordFields(job, now: now, to: &arguments)
        return Self.create.call(keys: keys, arguments: arguments)
    }

    /// The parts of every new record that never change, made once (each argument is a buffer).
    private enum CreateCommandConstants {
        static let multi: RedisCommand = ["MULTI"]
        static let exec: RedisCommand = ["EXEC"]
        static let sadd = RedisArgument("SADD")
        static let hset = RedisArgument("HSET")
        static let expire = RedisArgument("EXPIRE")
        /// Arguments `appendRecordFields` appends at most (with a unique key).
        static let mostRecordFields = 18
        static let state = RedisArgument(JobField.state)
        static let queued = RedisArgument(JobState.queued.rawValue)
        static let function = RedisArgument(JobField.function)
        static let zeroProgress = [JobField.numerator, "0", JobField.denominator, "0", JobField.message, ""].map { RedisArgument($0) }
        static let created = RedisArgument(JobField.created)
        static let updated = RedisArgument(JobField.updated)
        static let resultTTL = RedisArgument(JobField.resultTTL)
        static let unique = RedisArgument(JobField.unique)
    }

    /// KEYS[1] job hash, KEYS[2] unaccepted index, KEYS[3] coalescing key (optional); ARGV id, in-flight TTL, job key
    /// prefix, creation time (ms) before which an unaccepted job is suspect, fields…. A queued job created before that
    /// and still in the index is answered as `{id}` (unaccepted) rather than joined.
    static let createScript = """
        if KEYS[3] then
          local existing = redis.call('GET', KEYS[3])
          if existing then
            local job = redis.call('HMGET', ARGV[3] .. existing, 'state', 'created')
            if job[1] == 'running' then return existing end
            if job[1] == 'queued' then
              if tonumber(job[2] or 0) < tonumber(ARGV[4]) and redis.call('SISMEMBER', KEYS[2], existing) == 1 then
                return {existing}
              end
              return existing
            end
          end
          redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2])
        end
        redis.call('HSET', KEYS[1], unpack(ARGV, 5))
        redis.call('EXPIRE', KEYS[1], ARGV[2])
        return ARGV[1]
        """
    static let create = StoredScript(createScript)

    /// Clears the unaccepted-index entries of jobs gearmand accepted, or whose fate is settled otherwise (one `SREM`).
    public func clearUnaccepted(_ ids: [JobID]) async throws(JobStoreError) {
        guard !ids.isEmpty else { return }
        _ = try await send(clearUnacceptedCommand(ids))
    }

    private func clearUnacceptedCommand(_ ids: [JobID]) -> RedisCommand {
        RedisCommand(["SREM", unacceptedKeyArgument] + ids.map { "\($0.rawValue)" })
    }

    /// `clearUnaccepted` without waiting for Redis to answer, on a connection that is up now: the submit path's
    /// clients need not wait for this cleanup. Where it cannot be sent or fails, `failed` is called and the entries
    /// stay for the sweep (`unacceptedJobs`), which finds their jobs known to gearmand or ended.
    public func startClearingUnaccepted(_ ids: [JobID], failed: @escaping @Sendable (any Error) -> Void) {
        guard !ids.isEmpty else { return }
        guard let connection = redis.connectedConnection() else {
            return failed(JobStoreError(.backendDown, "no Redis connection is up"))
        }
        connection.pipelineFuture([clearUnacceptedCommand(ids)]).whenComplete { result in
            switch result {
            case .success(let replies):
                if let message = replies.first?.errorMessage { failed(JobStoreError(.serverError, message)) }
            case .failure(let error):
                failed(JobStoreError(redis: error))
            }
        }
    }

    /// The jobs of the unaccepted index created more than `age` ago, with their records (nil: the record is gone).
    /// Looks at up to `limit` entries: all of them, or a random sample when the index holds more (only while gateways
    /// submit faster than gearmand accepts, or after many crashes), so that repeated sweeps still reach every entry.
    public func unacceptedJobs(olderThan age: Duration, limit: Int) async throws(JobStoreError) -> [(id: JobID, record: JobRecord?)] {
        let reply = try await send(["SRANDMEMBER", unacceptedKeyArgument, "\(limit)"])
        guard let members = reply.array else { throw JobStoreError(.unexpectedReply, "SRANDMEMBER answered \(reply)") }
        let ids = members.compactMap { $0.string.flatMap(JobID.init(rawValue:)) }
        let createdBefore = Self.now() - Int64(age / .milliseconds(1))
        return zip(ids, try await records(ids)).filter { $0.1.map { ($0.created ?? 0) < createdBefore } ?? true }.map { ($0, $1) }
    }

    /// Where gearmand put a job (its handle on that server).
    public struct JobLocation: Sendable {
        public var id: JobID
        public var handle: String
        public var server: String

        public init(id: JobID, handle: String, server: String) {
            self.id = id
            self.handle = handle
            self.server = server
        }
    }

    /// Records where gearmand put the job, unless it already finished.
    public func setLocation(_ id: JobID, handle: String, server: String) async throws(JobStoreError) {
        _ = try await updateUnlessFinished(id, [JobField.handle: ByteBuffer(string: handle), JobField.server: ByteBuffer(string: server)])
    }

    /// Writes `fields` into each unfinished record, in one pipelined write: for a writer keeping fields of its own in
    /// the record (the legacy bridge's fence), which the store does not read.
    public func setFields(_ updates: [(id: JobID, fields: [String: ByteBuffer])]) async throws(JobStoreError) {
        guard !updates.isEmpty else { return }
        for case .failure(let error) in try await evaluate(updates.map { updateCommand($0.id, $0.fields) }, Self.update) {
            throw JobStoreError(redis: error)
        }
    }

    /// One field of each record, in one pipelined read; nil where the record or the field does not exist.
    public func field(_ field: String, of ids: [JobID]) async throws(JobStoreError) -> [ByteBuffer?] {
        guard !ids.isEmpty else { return [] }
        return try await pipeline(ids.map { ["HGET", "\(schema.jobKey($0))", "\(field)"] }, on: redis).map(\.buffer)
    }

    /// Writes `done` and the result over an unfinished record only (for writers that may race each other, such as
    /// the gateways bridging legacy jobs). Returns whether it wrote.
    @discardableResult
    public func completeUnlessFinished(_ id: JobID, result: ByteBuffer) async throws(JobStoreError) -> Bool {
        try await finishUnlessFinished(id, state: .done, field: JobField.result, payload: result)
    }

    /// Marks an unfinished job failed without a worker (gearmand refused it). A job that finished meanwhile keeps
    /// its outcome; a record that is gone stays gone. Returns whether it was marked.
    @discardableResult
    public func markFailed(_ id: JobID, reason: String) async throws(JobStoreError) -> Bool {
        try await finishUnlessFinished(id, state: .failed, field: JobField.reason, payload: ByteBuffer(string: reason))
    }

    /// `markFailed` for a job that was lost (gearmand no longer has it, and no outcome came): the record says so
    /// (`JobRecord.isLost`), whatever the reason's text.
    @discardableResult
    public func markLost(_ id: JobID, reason: String) async throws(JobStoreError) -> Bool {
        try await finishUnlessFinished(id, state: .failed, field: JobField.reason, payload: ByteBuffer(string: reason), lost: true)
    }

    private func finishUnlessFinished(
        _ id: JobID,
        state: JobState,
        field: String,
        payload: ByteBuffer,
        lost: Bool = false
    ) async throws(JobStoreError) -> Bool {
        let now = Self.now()
        var arguments: [RedisArgument] = ["\(configuration.resultTTL)", "\(field)", .bytes(payload), "\(now)", "\(state.rawValue)", "\(id.rawValue)"]
        arguments += logArguments(now: now)
        if lost { arguments.append("\(JobField.lost)") }
        let call = Self.finishUnlessFinished.call(keys: ["\(schema.jobKey(id))"], arguments: arguments)
        return try await evaluate(call, Self.finishUnlessFinished, acknowledgedBy: configuration.replicasAck).int == 1
    }

    /// KEYS[1] job hash; ARGV default TTL, field, value, now, state, id, log key prefix, log length, oldest log id,
    /// and for a lost job the field `lost`. Writes the outcome over an unfinished record only, with the record's own
    /// result TTL if it has one, and appends it to the function's completion log.
    static let finishUnlessFinishedScript = """
        local state = redis.call('HGET', KEYS[1], 'state')
        if not state or state == 'done' or state == 'failed' then return 0 end
        redis.call('HSET', KEYS[1], ARGV[2], ARGV[3], 'finished', ARGV[4], 'updated', ARGV[4], 'state', ARGV[5])
        if ARGV[10] then redis.call('HSET', KEYS[1], ARGV[10], ARGV[4]) end
        redis.call('EXPIRE', KEYS[1], tonumber(redis.call('HGET', KEYS[1], 'result_ttl') or ARGV[1]))
        local fn = redis.call('HGET', KEYS[1], 'function')
        local logKey, jobID, endState, maxLength, minID = fn and (ARGV[7] .. fn), ARGV[6], ARGV[5], ARGV[8], ARGV[9]
        """ + appendToLogLua + """
        return 1
        """
    static let finishUnlessFinished = StoredScript(finishUnlessFinishedScript)

    public func record(_ id: JobID) async throws(JobStoreError) -> JobRecord? {
        try await records([id])[0]
    }

    /// `HGETALL` for many jobs in one pipelined write; nil where the record does not exist (any more).
    public func records(_ ids: [JobID]) async throws(JobStoreError) -> [JobRecord?] {
        guard !ids.isEmpty else { return [] }
        let replies: [Result<RedisReply, RedisError>]
        do {
            replies = try await redis.pipeline(readCommands(ids))
        } catch {
            throw JobStoreError(redis: error)
        }
        for case .failure(let error) in replies { throw JobStoreError(redis: error) }
        return try Self.records(ids, from: replies.compactMap { try? $0.get() })
    }

    /// The commands that read `ids` (see `records(_:from:)`).
    func readCommands(_ ids: [JobID]) -> [RedisCommand] {
        ids.map { ["HGETALL", "\(schema.jobKey($0))"] }
    }

    /// The records in the replies to `readCommands(ids)`.
    static func records(_ ids: [JobID], from replies: [RedisReply]) throws(JobStoreError) -> [JobRecord?] {
        try zip(ids, replies).map { id, reply throws(JobStoreError) in try record(id, from: reply) }
    }

    /// The record in the reply to its `HGETALL`; nil when there is none.
    static func record(_ id: JobID, from reply: RedisReply) throws(JobStoreError) -> JobRecord? {
        guard let array = reply.array else { throw JobStoreError(.unexpectedReply, "HGETALL answered \(reply)") }
        return JobRecord(id: id, fields: array.compactMap(\.buffer))
    }

    /// The commands that re-read changed jobs for their followers: `HMGET` of `JobRecord.followedFields` (see
    /// `followedRecord(_:from:)`).
    func followedReadCommands(_ ids: [JobID]) -> [RedisCommand] {
        ids.map { RedisCommand("HMGET", [RedisArgument(schema.jobKey($0))] + Self.followedFieldArguments) }
    }

    private static let followedFieldArguments = JobRecord.followedFields.map { RedisArgument($0) }

    /// The record, as its followers see it, in the reply to its command of `followedReadCommands`; nil when there is none.
    static func followedRecord(_ id: JobID, from reply: RedisReply) throws(JobStoreError) -> JobRecord? {
        guard let values = reply.array, values.count == JobRecord.followedFields.count else {
            throw JobStoreError(.unexpectedReply, "HMGET answered \(reply)")
        }
        return JobRecord(id: id, followedValues: values.map(\.buffer))
    }

    /// Like `records(_:)`, but without the result or reason, only their size (`outcomeSize`): a lookup that may need
    /// a large result reads it with `outcomes(of:)` once there is room for it, and one that needs none (`STATUS`)
    /// never reads it. One pipelined write, three commands per job.
    public func recordsWithoutOutcome(_ ids: [JobID]) async throws(JobStoreError) -> [JobRecord?] {
        guard !ids.isEmpty else { return [] }
        let fields = Self.fieldsBesidesOutcome
        var commands: [RedisCommand] = []
        commands.reserveCapacity(ids.count * 3)
        for id in ids {
            let key = schema.jobKey(id)
            commands.append(RedisCommand("HMGET", ["\(key)"] + fields.map { RedisArgument($0) }))
            commands.append(["HSTRLEN", "\(key)", "\(JobField.result)"])
            commands.append(["HSTRLEN", "\(key)", "\(JobField.reason)"])
        }
        let replies = try await pipeline(commands, on: redis)
        return try ids.enumerated().map { index, id throws(JobStoreError) in
            let (values, resultSize, reasonSize) = (replies[3 * index], replies[3 * index + 1], replies[3 * index + 2])
            guard let values = values.array, values.count == fields.count else {
                throw JobStoreError(.unexpectedReply, "HMGET answered \(values)")
            }
            var flat: [ByteBuffer] = []
            for (field, value) in zip(fields, values) {
                guard let value = value.buffer else { continue }
                flat.append(ByteBuffer(string: field))
                flat.append(value)
            }
            guard var record = JobRecord(id: id, fields: flat) else { return nil }
            record.result = nil
            record.reason = nil
            record.outcomeSize = (record.state == .done ? resultSize.int : record.state == .failed ? reasonSize.int : 0) ?? 0
            return record
        }
    }

    /// The result (of a done record) or reason (of a failed one) of each record; nil where the record expired since.
    public func outcomes(of records: [JobRecord]) async throws(JobStoreError) -> [ByteBuffer?] {
        guard !records.isEmpty else { return [] }
        let commands: [RedisCommand] = records.map { record in
            ["HGET", "\(schema.jobKey(record.id))", "\(record.state == .done ? JobField.result : JobField.reason)"]
        }
        return try await pipeline(commands, on: outcomeRedis).map(\.buffer)
    }

    /// The replies to `commands`, sent in one write; any failed command fails them all.
    private func pipeline(_ commands: [RedisCommand], on redis: RedisConnectionPool) async throws(JobStoreError) -> [RedisReply] {
        let replies: [Result<RedisReply, RedisError>]
        do {
            replies = try await redis.pipeline(commands)
        } catch {
            throw JobStoreError(redis: error)
        }
        return try replies.map { result throws(JobStoreError) in
            do { return try result.get() } catch { throw JobStoreError(redis: error) }
        }
    }

    private static let fieldsBesidesOutcome = [
        JobField.state, JobField.function, JobField.numerator, JobField.denominator, JobField.message, JobField.handle,
        JobField.server, JobField.unique, JobField.created, JobField.started, JobField.updated, JobField.finished,
        JobField.resultTTL, JobField.lost,
    ]

    // MARK: Worker side

    /// Marks the job running on `handle`@`server`; returns the result TTL the submitter asked for, if any.
    /// A finished record is left alone (a requeued duplicate must not reopen it).
    @discardableResult
    public func markRunning(_ id: JobID, function: String, handle: String, server: String) async throws(JobStoreError) -> Int? {
        let now = Self.now()
        return try await updateUnlessFinished(
            id,
            [
                JobField.state: ByteBuffer(string: JobState.running.rawValue), JobField.function: ByteBuffer(string: function),
                JobField.handle: ByteBuffer(string: handle), JobField.server: ByteBuffer(string: server),
                JobField.numerator: ByteBuffer(string: "0"), JobField.denominator: ByteBuffer(string: "0"),
                JobField.started: ByteBuffer(string: "\(now)"), JobField.updated: ByteBuffer(string: "\(now)"),
            ]
        )
    }

    /// Progress of an unfinished job; `running` also moves a queued job to running in the same write (for the legacy
    /// bridge, which learns both from one gearmand status).
    public func reportProgress(
        _ id: JobID,
        numerator: UInt32,
        denominator: UInt32,
        message: ByteBuffer = ByteBuffer(),
        running: Bool = false
    ) async throws(JobStoreError) {
        var fields = [
            JobField.numerator: ByteBuffer(string: "\(numerator)"), JobField.denominator: ByteBuffer(string: "\(denominator)"),
            JobField.message: message, JobField.updated: ByteBuffer(string: "\(Self.now())"),
        ]
        if running { fields[JobField.state] = ByteBuffer(string: JobState.running.rawValue) }
        _ = try await updateUnlessFinished(id, fields)
    }

    /// Writes `done` and the result with the TTL and its completion log entry in one script.
    public func complete(_ id: JobID, result: ByteBuffer, ttl: Int? = nil) async throws(JobStoreError) {
        try await finish(id, state: .done, payloadField: JobField.result, payload: result, ttl: ttl)
    }

    /// Writes `failed` and the reason with the TTL and its completion log entry in one script.
    public func fail(_ id: JobID, reason: ByteBuffer, ttl: Int? = nil) async throws(JobStoreError) {
        try await finish(id, state: .failed, payloadField: JobField.reason, payload: reason, ttl: ttl)
    }

    private func finish(_ id: JobID, state: JobState, payloadField: String, payload: ByteBuffer, ttl: Int?) async throws(JobStoreError) {
        let now = Self.now()
        let call = Self.finish.call(
            keys: ["\(schema.jobKey(id))"],
            arguments: ["\(ttl ?? configuration.resultTTL)", "\(payloadField)", .bytes(payload), "\(now)", "\(state.rawValue)", "\(id.rawValue)"]
                + logArguments(now: now)
        )
        _ = try await evaluate(call, Self.finish, acknowledgedBy: configuration.replicasAck)
    }

    /// KEYS[1] job hash; ARGV TTL, field, value, now, state, id, log key prefix, log length, oldest log id. The
    /// worker's outcome write: the outcome, its TTL and the completion log entry in one step (README "Key schema"
    /// gives the same as `MULTI/EXEC` for workers in other languages).
    static let finishScript = """
        redis.call('HSET', KEYS[1], ARGV[2], ARGV[3], 'finished', ARGV[4], 'updated', ARGV[4], 'state', ARGV[5])
        redis.call('EXPIRE', KEYS[1], ARGV[1])
        local fn = redis.call('HGET', KEYS[1], 'function')
        local logKey, jobID, endState, maxLength, minID = fn and (ARGV[7] .. fn), ARGV[6], ARGV[5], ARGV[8], ARGV[9]
        """ + appendToLogLua + """
        return 1
        """
    static let finish = StoredScript(finishScript)

    /// KEYS[1] job hash; ARGV in-flight TTL, fields…. Returns the record's result TTL, or -1 when it had finished.
    static let updateScript = """
        local state = redis.call('HGET', KEYS[1], 'state')
        if state == 'done' or state == 'failed' then return -1 end
        redis.call('HSET', KEYS[1], unpack(ARGV, 2))
        redis.call('EXPIRE', KEYS[1], ARGV[1])
        return tonumber(redis.call('HGET', KEYS[1], 'result_ttl') or '0')
        """
    static let update = StoredScript(updateScript)

    private func updateUnlessFinished(_ id: JobID, _ fields: [String: ByteBuffer]) async throws(JobStoreError) -> Int? {
        let reply = try await evaluate(updateCommand(id, fields), Self.update)
        guard let ttl = reply.int else { throw JobStoreError(.unexpectedReply, "update script answered \(reply)") }
        return ttl > 0 ? ttl : nil
    }

    private func updateCommand(_ id: JobID, _ fields: [String: ByteBuffer]) -> RedisCommand {
        var arguments: [RedisArgument] = [inFlightTTLArgument]
        for (field, value) in fields.sorted(by: { $0.key < $1.key }) { arguments += ["\(field)", .bytes(value)] }
        return Self.update.call(keys: ["\(schema.jobKey(id))"], arguments: arguments)
    }

    /// Sends `commands` in one write; the calls of `script` that Redis answers `NOSCRIPT` (it restarted or flushed its
    /// scripts) go again with the script's text, in their order, in one more write.
    /// Sends `commands`, calls of `script` by its SHA1 among them; those Redis answers `NOSCRIPT` go again with the
    /// text. `acknowledgedBy`: replicas that must hold the writes before this returns (`WAIT` in the same write).
    private func evaluate(
        _ commands: [RedisCommand],
        _ script: StoredScript,
        acknowledgedBy replicasAck: RedisReplicasAck? = nil
    ) async throws(JobStoreError) -> [Result<RedisReply, RedisError>] {
        do {
            var replies = try await redis.pipeline(commands, acknowledgedBy: replicasAck)
            let missing = replies.indices.filter { if case .failure(let error) = replies[$0] { StoredScript.isMissing(error) } else { false } }
            guard !missing.isEmpty else { return replies }
            let again = try await redis.pipeline(missing.map { script.withSource(commands[$0]) }, acknowledgedBy: replicasAck)
            for (index, reply) in zip(missing, again) { replies[index] = reply }
            return replies
        } catch {
            throw JobStoreError(redis: error)
        }
    }

    /// `evaluate` of one call; an error reply throws.
    func evaluate(_ call: RedisCommand, _ script: StoredScript, acknowledgedBy replicasAck: RedisReplicasAck? = nil) async throws(JobStoreError) -> RedisReply {
        let reply = try await evaluate([call], script, acknowledgedBy: replicasAck)[0]
        do {
            return try reply.get()
        } catch {
            throw JobStoreError(redis: error)
        }
    }

    func send(_ command: RedisCommand) async throws(JobStoreError) -> RedisReply {
        do {
            return try await redis.send(command)
        } catch {
            throw JobStoreError(redis: error)
        }
    }

    static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
}
