#!/usr/bin/env bash
# Installs the Debian packages jobgate and its test suite need, skipping those already present.
# Needs root (or sudo). The Swift toolchain itself (6.1 or later) is expected on PATH or in /opt/swift.
set -euo pipefail

packages=(
    # build
    libhiredis-dev zlib1g-dev pkg-config
    # the servers jobgate talks to (tests start their own copies on free loopback ports)
    gearman-job-server gearman-tools redis-server memcached
    # interop peers used by the tests
    php-cli php-gearman php-memcache php-memcached php-redis python3-redis
    # examples and tests (chromium: the job page tests load it headless)
    netcat-openbsd procps chromium fonts-dejavu-core
    # the command-line client's terminal tests run it in tmux
    tmux
    # the TLS tests make their certificates with the openssl CLI and fetch an HTTPS page with curl
    openssl curl
)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian starts these as system services on install; jobgate's tests and demo run their own copies.
for binary in gearmand redis-server memcached php chromium swift; do
    command -v "$binary" >/dev/null || [ -x "/usr/sbin/$binary" ] || [ -x "/opt/swift/usr/bin/$binary" ] || {
        echo "missing after install: $binary" >&2
        exit 1
    }
done
