#!/usr/bin/env bash
# Stops the processes recorded in the given files, and only those: each file holds `<pid> <start time>` (field 22
# of /proc/<pid>/stat when the process started), and a process is signalled only while its pid still belongs to
# that start, never one that got the pid since. SIGTERM, then SIGKILL for what is left after 5 s. Removes the files.
#
#   Deploy/stop-recorded.sh FILE...     (files that do not exist are skipped)
set -uo pipefail

# The fields of /proc/<pid>/stat from the third on (state, ppid, …; the start time is the 20th of these). The
# name in field 2 may hold spaces and parentheses, so they are counted after its last ")".
stat_fields() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    echo "${stat##*) }"
}

# True while pid $1 is the process that started at $2 and has not ended (a zombie only waits for its parent).
running() {
    local fields
    read -ra fields <<<"$(stat_fields "$1")"
    [ "${fields[19]:-}" = "$2" ] && [ "${fields[0]}" != Z ]
}

# Sends signal $1 to each recorded process (`<pid> <start>`) that still runs; prints the records signalled.
signal_running() {
    local signal=$1 record pid started
    shift
    for record in "$@"; do
        read -r pid started <<<"$record"
        running "$pid" "$started" && kill "-$signal" "$pid" 2>/dev/null && echo "$record"
    done
}

records=()
for file in "$@"; do
    [ -f "$file" ] || continue
    read -r pid started <"$file" || true
    [[ "$pid" =~ ^[0-9]+$ && "$started" =~ ^[0-9]+$ ]] && records+=("$pid $started")
    rm -f "$file"
done
((${#records[@]})) || exit 0

mapfile -t signalled < <(signal_running TERM "${records[@]}")
for _ in $(seq 1 50); do
    left=()
    for record in "${signalled[@]}"; do
        read -r pid started <<<"$record"
        running "$pid" "$started" && left+=("$record")
    done
    ((${#left[@]})) || exit 0
    signalled=("${left[@]}")
    sleep 0.1
done
signal_running KILL "${signalled[@]}" >/dev/null
exit 0
