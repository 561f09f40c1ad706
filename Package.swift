// swift-tools-version:6.1
import Foundation
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "jobgate",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "jobgate", targets: ["JobGateCommand"]),
        .library(name: "Gearman", targets: ["Gearman"]),
        .library(name: "Redis", targets: ["Redis"]),
        .library(name: "Memcache", targets: ["Memcache"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    ],
    targets: [
        // MARK: What the client libraries and the gateway share: backoff, readiness, event-loop task executors
        .target(
            name: "JobgateSupport",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),

        // MARK: Gearman: binary protocol codec, client connection, server pool, worker
        .target(
            name: "Gearman",
            dependencies: [
                "JobgateSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: Redis on hiredis
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        .target(
            name: "Redis",
            dependencies: [
                "CHiredis", "JobgateSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: memcached client with PHP value formats and server selection
        .systemLibrary(
            name: "CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        .target(
            name: "Memcache",
            dependencies: [
                "JobgateSupport",
                "CZlib",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: Job records, key schema, change feed
        .target(
            name: "JobStore",
            dependencies: [
                "Redis", "JobgateSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: The legacy memcached path: results by Gearman handle, and the bridge that follows such jobs
        .target(
            name: "LegacyJobs",
            dependencies: [
                "JobStore", "Memcache", "Gearman", "GatewayProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: The gateway's line protocol: request decoder, reply/event encoder, client-side decoder
        .target(
            name: "GatewayProtocol",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            exclude: ["PROTOCOL.md"],
            swiftSettings: swiftSettings
        ),

        // MARK: The gateway: `jobgate serve`
        .target(
            name: "Gateway",
            dependencies: [
                "GatewayProtocol", "JobStore", "LegacyJobs", "Gearman", "Redis", "Memcache", "JobgateSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: Workers: Swift handlers and external commands that publish to the job store
        .target(
            name: "WorkerRuntime",
            dependencies: [
                "Gearman", "JobStore", "LegacyJobs", "Memcache", "Redis", "JobgateSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: Real gearmand, redis-server and memcached processes on loopback, for tests and benchmarks
        .target(
            name: "LocalServers",
            swiftSettings: swiftSettings
        ),

        // MARK: `jobgate bench`: the gateway against gearmand and polling, on a stack on loopback
        .target(
            name: "Benchmarks",
            dependencies: [
                "Gearman", "GatewayProtocol", "WorkerRuntime", "JobStore", "Redis", "Memcache", "LocalServers",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: The `jobgate` executable
        .executableTarget(
            name: "JobGateCommand",
            dependencies: [
                "Gearman", "Gateway", "GatewayProtocol", "WorkerRuntime", "JobStore", "LegacyJobs", "Redis", "Memcache", "Benchmarks",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "Sources/jobgate",
            swiftSettings: swiftSettings
        ),

        // MARK: Tests
        .testTarget(
            name: "JobgateSupportTests",
            dependencies: ["JobgateSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "GearmanTests",
            dependencies: [
                "Gearman", "LocalServers",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RedisTests",
            dependencies: [
                "Redis", "LocalServers", "JobgateSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MemcacheTests",
            dependencies: [
                "Memcache", "LocalServers", "JobgateSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "JobStoreTests",
            dependencies: [
                "JobStore", "Redis", "Gearman", "LocalServers",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryLogging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "LegacyJobsTests",
            dependencies: [
                "LegacyJobs", "Memcache", "LocalServers",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "GatewayProtocolTests",
            dependencies: [
                "GatewayProtocol", "LocalServers",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "GatewayTests",
            dependencies: [
                "Gateway", "GatewayProtocol", "JobStore", "Gearman", "Redis", "LocalServers", "JobgateSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryLogging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "WorkerRuntimeTests",
            dependencies: [
                "WorkerRuntime", "Gearman", "JobStore", "LegacyJobs", "Redis", "Memcache", "LocalServers", "JobgateSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryLogging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "BenchmarksTests",
            dependencies: ["Benchmarks", "LocalServers"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "Gearman", "LocalServers", "JobgateSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)

// MARK: libFuzzer targets, only with JOBGATE_FUZZ=1 (they link libFuzzer's main: see `Deploy/fuzz.sh`)
if ProcessInfo.processInfo.environment["JOBGATE_FUZZ"] == "1" {
    package.targets.append(
        .executableTarget(
            name: "GatewayRequestDecoderFuzzer",
            dependencies: ["GatewayProtocol", .product(name: "NIOCore", package: "swift-nio")],
            path: "Sources/GatewayRequestDecoderFuzzer",
            swiftSettings: swiftSettings
        )
    )
}
