public import NIOCore
public import Redis

/// The completion log: every job's end is also appended to a Redis stream per function, in the same script or
/// `MULTI/EXEC` as the outcome, so the log and the records cannot disagree. Its entry ids are the cursors that
/// `SUBSCRIBE <function> from=<cursor>` resumes from (README "Key schema").
extension JobKeySchema {
    /// The stream of a function's ended jobs: entries `job <id> state <done|failed>`.
    public func completionLogKey(function: String) -> String { "\(prefix)ended:\(function)" }

    /// The function a completion log key names, if it is one.
    public func function(fromCompletionLogKey key: String) -> String? {
        let logPrefix = "\(prefix)ended:"
        guard key.hasPrefix(logPrefix), key.utf8.count > logPrefix.utf8.count else { return nil }
        return String(key.dropFirst(logPrefix.count))
    }

    /// The keyevent channel of stream appends (one for every function, never a pattern).
    public var streamAddedEventChannel: String { "__keyevent@\(database)__:xadd" }
}

/// How much of the completion log Redis keeps (`--subscription-retention`, `--subscription-log-length`).
public struct CompletionLogRetention: Sendable, Hashable {
    /// Seconds an entry is kept at least (entries are trimmed by age when the log is appended to).
    public var age: Int
    /// Entries kept per function at most (approximately: Redis trims whole nodes, `MAXLEN ~`).
    public var maximumLength: Int

    public init(age: Int = 86_400, maximumLength: Int = 100_000) {
        self.age = age
        self.maximumLength = maximumLength
    }
}

/// One ended job, as a subscriber gets it.
public struct CompletionLogEntry: Sendable, Hashable {
    /// The stream entry id (`<ms>-<seq>`): the subscriber's cursor after this entry.
    public var cursor: String
    public var id: JobID
    public var state: JobState
    /// The result (done) or reason (failed); nil when the record is gone (expired) since.
    public var outcome: ByteBuffer?

    public init(cursor: String, id: JobID, state: JobState, outcome: ByteBuffer?) {
        self.cursor = cursor
        self.id = id
        self.state = state
        self.outcome = outcome
    }
}

/// A read of the completion log: the entries after a cursor, with what the log says about its own ends.
public struct CompletionLogPage: Sendable, Hashable {
    public var entries: [CompletionLogEntry]
    /// Whether the page reaches the log's end (as it was when read).
    public var isComplete: Bool
    /// The id of the newest entry ever added ("0-0": none, or the log is gone).
    public var lastCursor: String
    /// The newest entry ever trimmed ("0-0": none): a cursor before it has lost entries.
    public var trimmedThrough: String

    public init(entries: [CompletionLogEntry], isComplete: Bool, lastCursor: String, trimmedThrough: String) {
        self.entries = entries
        self.isComplete = isComplete
        self.lastCursor = lastCursor
        self.trimmedThrough = trimmedThrough
    }
}

extension RedisJobStore {
    /// Lua that appends an ended job to its function's log and trims the log; the outcome scripts include it.
    /// Expects locals `logKey` (nil: no function known, nothing is logged), `jobID`, `endState`, and
    /// `maxLength`, `minID` (the oldest entry id to keep by age). Trimming is exact, and notes the newest entry it
    /// removed as the stream's max-deleted-entry-id (XTRIM leaves that alone): so a reader tells a cursor the log no
    /// longer covers from one that is merely old. Only the oldest entry is looked at unless something is due to go
    /// (an `XREVRANGE` from a bound older than every entry walks the whole stream).
    static let appendToLogLua =
        "\n" + """
        if logKey then
          local id = redis.call('XADD', logKey, '*', 'job', jobID, 'state', endState)
          local trimmed
          local over = redis.call('XLEN', logKey) - tonumber(maxLength)
          if over > 0 then
            local gone = redis.call('XRANGE', logKey, '-', '+', 'COUNT', over)
            trimmed = gone[#gone][1]
            redis.call('XTRIM', logKey, 'MAXLEN', maxLength)
          end
          local first = redis.call('XRANGE', logKey, '-', '+', 'COUNT', 1)[1][1]
          if tonumber(string.match(first, '^%d+')) < tonumber(string.match(minID, '^%d+')) then
            trimmed = redis.call('XREVRANGE', logKey, '(' .. minID, '-', 'COUNT', 1)[1][1]
            redis.call('XTRIM', logKey, 'MINID', minID)
          end
          if trimmed then redis.call('XSETID', logKey, id, 'MAXDELETEDID', trimmed) end
        end
        """ + "\n"

    /// The arguments the outcome scripts pass for `appendToLogLua`: log key prefix, maximum length, oldest id kept.
    func logArguments(now: Int64) -> [RedisArgument] {
        let retention = configuration.logRetention
        return [
            "\(schema.completionLogKey(function: ""))", "\(retention.maximumLength)",
            "\(max(1, now - Int64(retention.age) * 1000))-0",
        ]
    }

    /// Reads up to `limit` entries after `cursor` ("0-0": from the start; `limit` 0: only where the log ends), with
    /// their outcomes, in one script: the page ends early once its outcomes hold `byteBudget` bytes (always at least
    /// one entry), so a read costs bounded memory however large results are.
    public func completionLog(function: String, after cursor: String, limit: Int, byteBudget: Int) async throws(JobStoreError) -> CompletionLogPage {
        let call = Self.readLog.call(
            keys: ["\(schema.completionLogKey(function: function))"],
            arguments: ["\(cursor)", "\(limit)", "\(byteBudget)", "\(schema.prefix)job:"]
        )
        let reply = try await evaluate(call, Self.readLog)
        guard let values = reply.array, values.count >= 3, values.count % 4 == 3,
            let last = values[0].string, let trimmed = values[1].string, let complete = values[2].int
        else { throw JobStoreError(.unexpectedReply, "log read script answered \(reply)") }
        var entries: [CompletionLogEntry] = []
        var index = 3
        while index < values.count {
            if let cursor = values[index].string, let id = values[index + 1].string.flatMap(JobID.init(rawValue:)),
                let state = values[index + 2].string.flatMap(JobState.init(rawValue:)), state.isTerminal
            {
                entries.append(CompletionLogEntry(cursor: cursor, id: id, state: state, outcome: values[index + 3].buffer))
            }
            index += 4
        }
        return CompletionLogPage(entries: entries, isComplete: complete == 1, lastCursor: last, trimmedThrough: trimmed)
    }

    /// KEYS[1] log; ARGV cursor, count, byte budget, job key prefix. Returns last-generated id, max-deleted id,
    /// 1 if the page reaches the end, then per entry: id, job, state, outcome (false: the record is gone).
    static let readLogScript = """
        if redis.call('EXISTS', KEYS[1]) == 0 then return {'0-0', '0-0', 1} end
        local info = redis.call('XINFO', 'STREAM', KEYS[1])
        local reply = {'0-0', '0-0', 1}
        for i = 1, #info, 2 do
          if info[i] == 'last-generated-id' then reply[1] = info[i + 1] end
          if info[i] == 'max-deleted-entry-id' then reply[2] = info[i + 1] end
        end
        local count = tonumber(ARGV[2])
        if count == 0 then return reply end
        local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', count)
        local bytes = 0
        for n, entry in ipairs(entries) do
          local fields = {}
          for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
          local field = fields['state'] == 'done' and 'result' or 'reason'
          local outcome = redis.call('HGET', ARGV[4] .. (fields['job'] or ''), field)
          if outcome and n > 1 and bytes + #outcome > tonumber(ARGV[3]) then
            reply[3] = 0
            return reply
          end
          bytes = bytes + (outcome and #outcome or 0)
          table.insert(reply, entry[1])
          table.insert(reply, fields['job'] or '')
          table.insert(reply, fields['state'] or '')
          table.insert(reply, outcome)
        end
        if #entries == count then reply[3] = 0 end
        return reply
        """
    static let readLog = StoredScript(readLogScript)
}
