#!/usr/bin/env bash
# Makes the Python virtual environment the server tests use (the official
# openai package, tests/requirements-server.txt, every pin with its hash):
#   scripts/setup-venv.sh [VENV_DIR]      (default: build/venv, or $EXSA_VENV)
# Idempotent: when VENV_DIR already holds exactly these requirements it only
# checks that and returns (well under a second). Exit status: 0 ready;
# 2 the package index cannot be reached (one line says so; tests skip);
# 1 anything else (python3-venv missing, a hash mismatch, ...).
# Honours pip's usual settings (PIP_INDEX_URL, proxies in the environment).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:-${EXSA_VENV:-$ROOT/build/venv}}
REQ="$ROOT/tests/requirements-server.txt"
PYTHON=${PYTHON:-python3}
say() { echo "setup-venv: $*" >&2; }

[ -f "$REQ" ] || { say "missing $REQ"; exit 1; }
want=$(sha256sum "$REQ" | cut -d' ' -f1)
# The stamp is written only after an install that imported openai.
ready() {
    [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.exsa-requirements" 2>/dev/null)" = "$want" ]
}
ready && exit 0

command -v "$PYTHON" >/dev/null 2>&1 || { say "$PYTHON not found (Debian: apt-get install python3 python3-venv)"; exit 1; }
mkdir -p "$(dirname "$VENV")" || { say "cannot create $(dirname "$VENV")"; exit 1; }
# One set-up at a time (parallel test runs share the venv).
exec 9>"$VENV.lock" || { say "cannot create $VENV.lock"; exit 1; }
flock -w 600 9 || { say "timed out waiting for another set-up of $VENV"; exit 1; }
ready && exit 0

# Can the index be reached at all? Asked once, with a short timeout, so
# that a machine without network gets one line instead of pip's retries.
INDEX=${PIP_INDEX_URL:-https://pypi.org/simple}
if ! why=$("$PYTHON" - "$INDEX" 2>&1 <<'PY'
import sys, urllib.request
url = sys.argv[1].rstrip('/') + '/openai/'
try:
    urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=15).close()
except Exception as e:  # any failure means: not reachable from here
    print(f'{type(e).__name__}: {e}'[:300])
    sys.exit(1)
PY
); then
    say "cannot reach the Python package index $INDEX ($why); the openai client tests will be skipped"
    exit 2
fi

if [ ! -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" >"$VENV.log" 2>&1 || {
        cat "$VENV.log" >&2
        say "'$PYTHON -m venv' failed (Debian: apt-get install python3-venv)"
        rm -rf "$VENV"
        exit 1
    }
fi
rm -f "$VENV/.exsa-requirements"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
        --require-hashes --only-binary=:all: --timeout 30 --retries 2 -r "$REQ" >"$VENV.log" 2>&1; then
    tail -n 20 "$VENV.log" >&2
    say "pip could not install $REQ into $VENV (full log: $VENV.log)"
    exit 1
fi
"$VENV/bin/python" -c 'import openai' || { say "openai does not import in $VENV"; exit 1; }
echo "$want" >"$VENV/.exsa-requirements"
say "$VENV ready: openai $("$VENV/bin/python" -c 'import openai; print(openai.__version__)')"
exit 0
