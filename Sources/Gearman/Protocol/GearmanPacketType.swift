/// A Gearman binary packet type (gearmand 1.1.20 `libgearman/command.cc`).
///
/// A struct over the wire value so that a decoder can report an unknown number instead of losing it.
public struct GearmanPacketType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32

    public init(rawValue: UInt32) {
        self.rawValue = rawValue
    }

    public static let canDo = Self(rawValue: 1)
    public static let cantDo = Self(rawValue: 2)
    public static let resetAbilities = Self(rawValue: 3)
    public static let preSleep = Self(rawValue: 4)
    public static let noop = Self(rawValue: 6)
    public static let submitJob = Self(rawValue: 7)
    public static let jobCreated = Self(rawValue: 8)
    public static let grabJob = Self(rawValue: 9)
    public static let noJob = Self(rawValue: 10)
    public static let jobAssign = Self(rawValue: 11)
    public static let workStatus = Self(rawValue: 12)
    public static let workComplete = Self(rawValue: 13)
    public static let workFail = Self(rawValue: 14)
    public static let getStatus = Self(rawValue: 15)
    public static let echoReq = Self(rawValue: 16)
    public static let echoRes = Self(rawValue: 17)
    public static let submitJobBackground = Self(rawValue: 18)
    public static let error = Self(rawValue: 19)
    public static let statusRes = Self(rawValue: 20)
    public static let submitJobHigh = Self(rawValue: 21)
    public static let setClientID = Self(rawValue: 22)
    public static let canDoTimeout = Self(rawValue: 23)
    public static let allYours = Self(rawValue: 24)
    public static let workException = Self(rawValue: 25)
    public static let optionReq = Self(rawValue: 26)
    public static let optionRes = Self(rawValue: 27)
    public static let workData = Self(rawValue: 28)
    public static let workWarning = Self(rawValue: 29)
    public static let grabJobUniq = Self(rawValue: 30)
    public static let jobAssignUniq = Self(rawValue: 31)
    public static let submitJobHighBackground = Self(rawValue: 32)
    public static let submitJobLow = Self(rawValue: 33)
    public static let submitJobLowBackground = Self(rawValue: 34)
    public static let submitJobSched = Self(rawValue: 35)
    public static let submitJobEpoch = Self(rawValue: 36)
    public static let submitReduceJob = Self(rawValue: 37)
    public static let submitReduceJobBackground = Self(rawValue: 38)
    public static let grabJobAll = Self(rawValue: 39)
    public static let jobAssignAll = Self(rawValue: 40)
    public static let getStatusUnique = Self(rawValue: 41)
    public static let statusResUnique = Self(rawValue: 42)

    private static let table: [UInt32: (name: String, fields: Int)] = [
        1: ("CAN_DO", 1), 2: ("CANT_DO", 1), 3: ("RESET_ABILITIES", 0), 4: ("PRE_SLEEP", 0),
        6: ("NOOP", 0), 7: ("SUBMIT_JOB", 3), 8: ("JOB_CREATED", 1), 9: ("GRAB_JOB", 0),
        10: ("NO_JOB", 0), 11: ("JOB_ASSIGN", 3), 12: ("WORK_STATUS", 3), 13: ("WORK_COMPLETE", 2),
        14: ("WORK_FAIL", 1), 15: ("GET_STATUS", 1), 16: ("ECHO_REQ", 1), 17: ("ECHO_RES", 1),
        18: ("SUBMIT_JOB_BG", 3), 19: ("ERROR", 2), 20: ("STATUS_RES", 5), 21: ("SUBMIT_JOB_HIGH", 3),
        22: ("SET_CLIENT_ID", 1), 23: ("CAN_DO_TIMEOUT", 2), 24: ("ALL_YOURS", 0), 25: ("WORK_EXCEPTION", 2),
        26: ("OPTION_REQ", 1), 27: ("OPTION_RES", 1), 28: ("WORK_DATA", 2), 29: ("WORK_WARNING", 2),
        30: ("GRAB_JOB_UNIQ", 0), 31: ("JOB_ASSIGN_UNIQ", 4), 32: ("SUBMIT_JOB_HIGH_BG", 3),
        33: ("SUBMIT_JOB_LOW", 3), 34: ("SUBMIT_JOB_LOW_BG", 3), 35: ("SUBMIT_JOB_SCHED", 8),
        36: ("SUBMIT_JOB_EPOCH", 4), 37: ("SUBMIT_REDUCE_JOB", 5), 38: ("SUBMIT_REDUCE_JOB_BACKGROUND", 5),
        39: ("GRAB_JOB_ALL", 0), 40: ("JOB_ASSIGN_ALL", 5), 41: ("GET_STATUS_UNIQUE", 1), 42: ("STATUS_RES_UNIQUE", 6),
    ]

    /// Every packet type of the protocol, in wire order.
    public static let allKnown: [GearmanPacketType] = table.keys.sorted().map(Self.init(rawValue:))

    /// Whether gearmand 1.1.20 knows this type.
    public var isKnown: Bool { Self.table[rawValue] != nil }

    /// The number of NUL-separated fields in the body; the last one is the rest of the body (often opaque data).
    public var fieldCount: Int? { Self.table[rawValue]?.fields }

    public var name: String { Self.table[rawValue]?.name ?? "UNKNOWN(\(rawValue))" }

    public var description: String { name }
}
