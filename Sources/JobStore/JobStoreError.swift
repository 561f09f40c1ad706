import Redis

/// What can go wrong storing or reading jobs.
public struct JobStoreError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// Redis could not be reached or the connection dropped.
        public static let backendDown = Code("backendDown")
        /// Redis answered with an error.
        public static let serverError = Code("serverError")
        /// Redis answered something the store did not expect.
        public static let unexpectedReply = Code("unexpectedReply")
        /// Keyspace notifications are off and cannot be switched on from here.
        public static let notificationsDisabled = Code("notificationsDisabled")
        /// memcached could not be reached or refused the request.
        public static let legacyStore = Code("legacyStore")

        public var description: String { name }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    init(redis error: any Error) {
        if let error = error as? RedisError, error.code == .serverError {
            self.init(.serverError, "\(error)")
        } else {
            self.init(.backendDown, "\(error)")
        }
    }

    public var description: String { "job store \(code): \(message)" }
}
