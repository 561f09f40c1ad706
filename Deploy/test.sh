#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, and runs every test against real
# gearmand, redis-server and memcached processes started on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"

Deploy/install-dependencies.sh

# Servers are stopped by the tests themselves; this only catches leftovers of a crashed run.
trap 'pkill -f "jobgate-localserver-" 2>/dev/null || true' EXIT

swift build --build-tests
# One test at a time: the tests start real servers and some measure timeouts; on a small, shared machine
# running them all at once makes those waits flaky, and serially the suite still takes only a few minutes.
swift test --no-parallel "$@"
