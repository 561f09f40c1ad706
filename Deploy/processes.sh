# Sourced by Deploy/demo.sh and Deploy/cluster.sh: starting a process with its pid recorded (for
# Deploy/stop-recorded.sh), and waiting for a port. Both need $state, the folder of logs and pid files.

# start NAME COMMAND…: runs COMMAND in the background, its output in $state/NAME.log, and records its pid with its
# start time in $state/NAME.pid (so a stop never hits a process that reused the pid).
start() {
    local name=$1
    shift
    "$@" >"$state/$name.log" 2>&1 &
    local stat fields
    stat=$(cat "/proc/$!/stat")
    read -ra fields <<<"${stat##*) }"  # from field 3 on: the start time (field 22) is the 20th
    echo "$! ${fields[19]}" >"$state/$name.pid"
}

# wait_for_port PORT: waits up to 10 s for something to answer on 127.0.0.1:PORT, or exits.
wait_for_port() {
    for _ in $(seq 1 100); do
        nc -z 127.0.0.1 "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing answers on 127.0.0.1:$1; see $state/*.log" >&2
    exit 1
}
