#!/bin/sh
# Installs the Debian packages Exsa builds and tests with (run as root).
set -eu
PKGS="build-essential cmake pkg-config libcmocka-dev libjansson-dev libpcre2-dev \
libutf8proc-dev libmicrohttpd-dev libedit-dev curl ca-certificates \
python3 python3-pip python3-venv"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# The server tests drive Exsa with node's openai package. A node that came
# from elsewhere (its own npm included) is used as it is: Debian's npm
# package conflicts with such builds.
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi
