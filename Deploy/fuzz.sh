#!/usr/bin/env bash
# libFuzzer on the gateway's request decoder, for a bounded time (default 60 s), starting from the committed
# corpus. New interesting inputs go to .build/fuzz/corpus (copy the worth-keeping ones to Tests/Corpus); a crash
# leaves its input in .build/fuzz/ and fails the script. Usage: Deploy/fuzz.sh [seconds] [libFuzzer options…]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"
seconds="${1:-60}"
shift || true

export JOBGATE_FUZZ=1
swift build --build-path .build/fuzz --product GatewayRequestDecoderFuzzer \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
mkdir -p .build/fuzz/corpus
.build/fuzz/debug/GatewayRequestDecoderFuzzer .build/fuzz/corpus Tests/Corpus/GatewayRequestDecoder \
    -max_total_time="$seconds" -max_len=4096 -artifact_prefix=.build/fuzz/ "$@"
