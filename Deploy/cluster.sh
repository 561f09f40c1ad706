#!/usr/bin/env bash
# Starts the tested scale-out topology (README "Scaling out") on this machine, on loopback, for trying failures:
# a Redis primary with two replicas and three sentinels, two gearmand, two gateways and two workers for the
# function `reverse` (the command `rev`). Installs what is missing first.
#
#   Deploy/cluster.sh           start (or restart) the cluster and print how to break it
#   Deploy/cluster.sh status    which Redis node is the primary now
#   Deploy/cluster.sh stop      stop everything it started
#
# Each process's pid is kept in $state/<name>.pid: kill -9 one (`kill -9 $(cut -d' ' -f1 $state/redis-1.pid)`) and
# watch the others carry on. The sentinels fail over within about 2 s (down-after 1 s, as in the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"

state="${JOBGATE_CLUSTER_DIR:-${TMPDIR:-/tmp}/jobgate-cluster-$(id -un)}"
# Ports of their own, so that system services and Deploy/demo.sh are left alone.
gateway_ports=(4750 4751)
gearman_ports=(47310 47311)
redis_ports=(47320 47321 47322)
sentinel_ports=(47330 47331 47332)
names=(worker-1 worker-2 gateway-1 gateway-2 sentinel-1 sentinel-2 sentinel-3 gearmand-1 gearmand-2 redis-1 redis-2 redis-3)

stop() {
    local files=()
    for name in "${names[@]}"; do files+=("$state/$name.pid"); done
    Deploy/stop-recorded.sh "${files[@]}"
}

source Deploy/processes.sh

primary() {
    for port in "${sentinel_ports[@]}"; do
        redis-cli -p "$port" SENTINEL get-master-addr-by-name jobgate 2>/dev/null | paste -sd: && return 0
    done
    echo "no sentinel answers" >&2
    return 1
}

case "${1:-}" in
stop)
    stop
    echo "stopped"
    exit 0
    ;;
status)
    echo "Redis primary: $(primary)"
    exit 0
    ;;
esac

Deploy/install-dependencies.sh
echo "building jobgate…"
mkdir -p "$state"
swift build --product jobgate >"$state/build.log" 2>&1 || { cat "$state/build.log"; exit 1; }
bin="$(swift build --show-bin-path)/jobgate"

stop
for port in "${gateway_ports[@]}" "${gearman_ports[@]}" "${redis_ports[@]}" "${sentinel_ports[@]}"; do
    if nc -z 127.0.0.1 "$port" 2>/dev/null; then
        echo "127.0.0.1:$port is already in use by another program; stop it (or Deploy/cluster.sh stop) and try again" >&2
        exit 1
    fi
done
rm -rf "${state:?}"/redis-* "$state"/sentinel-*.conf

# Redis: every node with Deploy/redis-jobgate.conf's notifications, the replicas following the first node.
node_options=(--bind 127.0.0.1 --save "" --appendonly no --notify-keyspace-events Ehtx --repl-diskless-sync yes --repl-diskless-sync-delay 0)
for index in 0 1 2; do
    mkdir -p "$state/redis-$((index + 1))"
    replica=()
    [ "$index" -gt 0 ] && replica=(--replicaof 127.0.0.1 "${redis_ports[0]}")
    start "redis-$((index + 1))" redis-server --port "${redis_ports[$index]}" --dir "$state/redis-$((index + 1))" "${node_options[@]}" "${replica[@]}"
done
for port in "${redis_ports[@]}"; do wait_for_port "$port"; done
for _ in $(seq 1 100); do
    [ "$(redis-cli -p "${redis_ports[0]}" INFO replication | tr -d '\r' | sed -n 's/^connected_slaves://p')" = 2 ] && break
    sleep 0.1
done

# Sentinels: quorum 2 of 3, a primary silent for 1 s is down (Deploy/sentinel/sentinel.conf says 5 s: real networks
# hiccup). Each rewrites its own file.
for index in 0 1 2; do
    conf="$state/sentinel-$((index + 1)).conf"
    cat >"$conf" <<EOF
port ${sentinel_ports[$index]}
bind 127.0.0.1
dir $state
sentinel monitor jobgate 127.0.0.1 ${redis_ports[0]} 2
sentinel down-after-milliseconds jobgate 1000
sentinel failover-timeout jobgate 3000
sentinel parallel-syncs jobgate 1
EOF
    start "sentinel-$((index + 1))" redis-server "$conf" --sentinel
done
for port in "${sentinel_ports[@]}"; do wait_for_port "$port"; done

for index in 0 1; do
    start "gearmand-$((index + 1))" /usr/sbin/gearmand --listen=127.0.0.1 --port="${gearman_ports[$index]}" --threads=1 --log-file=stderr
done
for port in "${gearman_ports[@]}"; do wait_for_port "$port"; done

gearman=127.0.0.1:${gearman_ports[0]},127.0.0.1:${gearman_ports[1]}
sentinels=127.0.0.1:${sentinel_ports[0]},127.0.0.1:${sentinel_ports[1]},127.0.0.1:${sentinel_ports[2]}
redis=(--redis-sentinel "$sentinels" --redis-master jobgate --redis-replicas-ack 1)
for index in 0 1; do
    start "gateway-$((index + 1))" "$bin" serve --listen "127.0.0.1:${gateway_ports[$index]}" --gearman "$gearman" "${redis[@]}"
    start "worker-$((index + 1))" "$bin" worker --function reverse --concurrency 4 --gearman "$gearman" "${redis[@]}" -- rev
done
for port in "${gateway_ports[@]}"; do wait_for_port "$port"; done

cat <<EOF

The cluster is running (logs and pids in $state):
  gateways  127.0.0.1:${gateway_ports[0]} 127.0.0.1:${gateway_ports[1]}
  gearmand  $gearman
  Redis     primary 127.0.0.1:${redis_ports[0]}, replicas 127.0.0.1:${redis_ports[1]} 127.0.0.1:${redis_ports[2]}
  sentinels $sentinels (primary name: jobgate)

A job through one gateway, its outcome through the other:
EOF
id=$(printf 'SUBMIT reverse 11\nhello world\nQUIT\n' | nc -N 127.0.0.1 "${gateway_ports[0]}" | sed -n 's/^CREATED //p' | tr -d '\r')
echo "  CREATED $id (through 127.0.0.1:${gateway_ports[0]})"
printf 'WAIT %s 10000\nQUIT\n' "$id" | nc -N 127.0.0.1 "${gateway_ports[1]}" | sed 's/^/  /'
cat <<EOF

Break something and try again:
  kill -9 \$(cut -d' ' -f1 $state/redis-1.pid)     # the Redis primary: a replica is promoted in about 2 s
  kill -9 \$(cut -d' ' -f1 $state/gateway-1.pid)   # a gateway: use the other one with the same ids
  Deploy/cluster.sh status                          # which node is the primary now
Stop with: Deploy/cluster.sh stop
EOF
