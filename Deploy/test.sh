#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, and runs every test against real
# gearmand, redis-server and memcached processes started on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"

Deploy/install-dependencies.sh

# The tests stop the servers and programs they start. For a run that crashes, each records the pid of every
# process it starts in this folder until it ends, and the trap stops exactly those: never, by name, the servers of
# someone else's run on the same machine.
JOBGATE_TEST_PID_DIR=$(mktemp -d "${TMPDIR:-/tmp}/jobgate-test-pids.XXXXXX")
export JOBGATE_TEST_PID_DIR
trap 'Deploy/stop-recorded.sh "$JOBGATE_TEST_PID_DIR"/*; rm -rf "$JOBGATE_TEST_PID_DIR"' EXIT

swift build --build-tests
# One test at a time: the tests start real servers and some measure timeouts; on a small, shared machine
# running them all at once makes those waits flaky, and serially the suite still takes only a few minutes.
swift test --no-parallel "$@"
