#!/usr/bin/env bash
# Starts the whole jobgate stack on this machine, on loopback, and shows it working:
# gearmand, redis-server and memcached, the gateway (`jobgate serve` on 127.0.0.1:4740) and a demo
# worker for the function `reverse` (the command `rev`). Installs what is missing first.
#
#   Deploy/demo.sh          start (or restart) the stack and run a short session with nc
#   Deploy/demo.sh stop     stop everything it started
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"

state="${JOBGATE_DEMO_DIR:-${TMPDIR:-/tmp}/jobgate-demo-$(id -un)}"
gateway_port=4740
# The backends get ports of their own, so that system services on the default ports are left alone.
gearman_port=47300
redis_port=47301
memcached_port=47302

# Each process it started has `<pid> <start time>` in $state/<name>.pid: a pid the system has given to another
# process since (after a reboot, say) is left alone.
stop() {
    Deploy/stop-recorded.sh "$state"/{worker,gateway,memcached,redis,gearmand}.pid
}

source Deploy/processes.sh

if [ "${1:-}" = "stop" ]; then
    stop
    echo "stopped"
    exit 0
fi

Deploy/install-dependencies.sh
mkdir -p "$state"
echo "building jobgate…"
swift build --product jobgate >"$state/build.log" 2>&1 || { cat "$state/build.log"; exit 1; }
bin="$(swift build --show-bin-path)/jobgate"

stop
for port in $gearman_port $redis_port $memcached_port $gateway_port; do
    if nc -z 127.0.0.1 "$port" 2>/dev/null; then
        echo "127.0.0.1:$port is already in use by another program; stop it (or Deploy/demo.sh stop) and try again" >&2
        exit 1
    fi
done
start gearmand /usr/sbin/gearmand --listen=127.0.0.1 --port=$gearman_port --threads=1 --log-file=stderr
start redis redis-server --bind 127.0.0.1 --port $redis_port --save "" --appendonly yes --appendfsync everysec \
    --dir "$state" --notify-keyspace-events Ehtx
start memcached memcached -l 127.0.0.1 -p $memcached_port -U 0 -u "$(id -un)"
wait_for_port $gearman_port
wait_for_port $redis_port
wait_for_port $memcached_port

start gateway "$bin" serve --listen 127.0.0.1:$gateway_port --gearman 127.0.0.1:$gearman_port --redis 127.0.0.1:$redis_port
start worker "$bin" worker --function reverse --gearman 127.0.0.1:$gearman_port --redis 127.0.0.1:$redis_port -- rev
wait_for_port $gateway_port

cat <<EOF

jobgate is running: gateway on 127.0.0.1:$gateway_port, logs and pids in $state.
A session (each request is a line; SUBMIT's line ends with the payload's byte count, the payload follows):

\$ printf 'SUBMIT reverse 11 wait=10000\nhello world\nQUIT\n' | nc -N 127.0.0.1 $gateway_port
EOF
printf 'SUBMIT reverse 11 wait=10000\nhello world\nQUIT\n' | nc -N 127.0.0.1 $gateway_port
cat <<EOF

Try it yourself with \`nc 127.0.0.1 $gateway_port\` and type HELLO, SUBMIT reverse 5 (then a line: hello),
WATCH <id>, RESULT <id>, QUIT. The protocol: Sources/GatewayProtocol/PROTOCOL.md. Stop with: Deploy/demo.sh stop
EOF
