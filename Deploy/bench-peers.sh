#!/usr/bin/env bash
# Compares jobgate with Celery and RQ on the same job: a 16-byte payload and a no-op that returns it. Starts its
# own redis-server, gearmand and jobgate gateway on free loopback ports, installs Celery and RQ from PyPI into a
# throwaway virtual environment, runs Deploy/bench-peers.py (which starts each system's workers in its turn and
# measures), prints a Markdown table, and removes everything it made. It stops exactly what it started, by pid.
#
#   Deploy/bench-peers.sh [--quick] [--only jobgate,celery,rq] [--rounds 3] [--jobs 5000] [--in-flight 64]
#                         [--latency-samples 1000] [--json FILE] [--jobgate PATH]
#
# --quick: 500 jobs, 100 latency samples, one round. --only jobgate needs nothing from PyPI (the test suite runs
# that). --jobgate: an executable to use as it is; otherwise a release build is made. Heavy: the full run takes
# the machine for several minutes.
set -euo pipefail
# Paths given on the command line are the caller's, from where it was called.
caller=$PWD
from_caller() { [[ $1 = /* ]] && echo "$1" || echo "$caller/$1"; }
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"

only="jobgate,celery,rq"
jobgate=""
driver_arguments=()
while (($#)); do
    case "$1" in
    --quick) driver_arguments+=(--jobs 500 --latency-samples 100 --rounds 1) ;;
    --only) only=$2; shift ;;
    --jobgate) jobgate=$(from_caller "$2"); shift ;;
    --json) driver_arguments+=(--json "$(from_caller "$2")"); shift ;;
    --rounds | --jobs | --in-flight | --latency-samples) driver_arguments+=("$1" "$2"); shift ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-peers.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
done

state=$(mktemp -d "${TMPDIR:-/tmp}/jobgate-bench-peers.XXXXXX")
mkdir -p "$state/pids" "$state/logs"

# Everything started is recorded as `<pid> <start time>` in $state/pids (and, under the test suite, in its
# $JOBGATE_TEST_PID_DIR too, so that a crashed test run stops it as well); on any exit exactly those are stopped.
cleanup() {
    local files=() file pid
    for file in "$state"/pids/*.pid; do
        [ -f "$file" ] || continue
        files+=("$file")
        read -r pid _ <"$file" || continue
        if [ -n "${JOBGATE_TEST_PID_DIR:-}" ]; then files+=("$JOBGATE_TEST_PID_DIR/$pid"); fi
    done
    ((${#files[@]})) && Deploy/stop-recorded.sh "${files[@]}"
    rm -rf "$state"
}
trap cleanup EXIT

start() {
    local name=$1 stat fields
    shift
    "$@" >"$state/logs/$name.log" 2>&1 &
    stat=$(cat "/proc/$!/stat")
    read -ra fields <<<"${stat##*) }"  # from field 3 on: the start time (field 22) is the 20th
    echo "$! ${fields[19]}" >"$state/pids/$name.pid"
    if [ -n "${JOBGATE_TEST_PID_DIR:-}" ]; then echo "$! ${fields[19]}" >"$JOBGATE_TEST_PID_DIR/$!"; fi
}

recorded_pid() {
    read -r pid _ <"$state/pids/$1.pid"
    echo "$pid"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_port() {
    for _ in $(seq 1 100); do
        nc -z 127.0.0.1 "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing answers on 127.0.0.1:$1:" >&2
    tail -n 20 "$state"/logs/*.log >&2
    exit 1
}

# Celery and RQ come from PyPI into a virtual environment that goes with $state; the jobgate side needs only python3.
python=python3
if [[ ",$only," =~ ,(celery|rq), ]]; then
    if ! python3 -m venv "$state/venv" >/dev/null 2>&1; then
        echo "installing python3-venv…" >&2
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        rm -rf "$state/venv"
        python3 -m venv "$state/venv"
    fi
    echo "installing Celery and RQ into a throwaway virtual environment…" >&2
    "$state/venv/bin/pip" install --quiet 'celery[redis]==5.7.0' 'rq==3.0.0' 'redis==8.1.0'
    python="$state/venv/bin/python"
fi

if [ -z "$jobgate" ]; then
    echo "building jobgate (release)…" >&2
    swift build -c release --static-swift-stdlib --product jobgate >"$state/logs/build.log" 2>&1 || { cat "$state/logs/build.log" >&2; exit 1; }
    jobgate="$(swift build -c release --static-swift-stdlib --show-bin-path)/jobgate"
fi

redis_port=$(free_port)
gearman_port=$(free_port)
gateway_port=$(free_port)
gearmand=$(command -v gearmand || echo /usr/sbin/gearmand)
start redis redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --dir "$state"
start gearmand "$gearmand" --listen=127.0.0.1 --port="$gearman_port" --threads=1 --log-file=stderr
wait_for_port "$redis_port"
wait_for_port "$gearman_port"
start gateway "$jobgate" serve --listen "127.0.0.1:$gateway_port" --gearman "127.0.0.1:$gearman_port" \
    --redis "127.0.0.1:$redis_port"
wait_for_port "$gateway_port"

"$python" Deploy/bench-peers.py --state "$state" --jobgate "$jobgate" --gearmand "$gearmand" --only "$only" \
    --gateway "127.0.0.1:$gateway_port" --gearman "127.0.0.1:$gearman_port" --redis "127.0.0.1:$redis_port" \
    --server "redis=$(recorded_pid redis)" --server "gearmand=$(recorded_pid gearmand)" \
    --server "gateway=$(recorded_pid gateway)" \
    ${driver_arguments[@]+"${driver_arguments[@]}"}
