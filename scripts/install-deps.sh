#!/bin/sh
# Installs the Debian packages Exsa builds and tests with (run as root).
set -eu
PKGS="build-essential cmake pkg-config libcmocka-dev libjansson-dev libpcre2-dev \
libutf8proc-dev libmicrohttpd-dev libedit-dev nodejs npm curl"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi
