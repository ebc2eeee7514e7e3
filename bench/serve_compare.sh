#!/bin/sh
# Serving side by side over HTTP: `exsa serve` and (if LLAMA_SERVER points at
# a llama-server binary built elsewhere) llama-server on the same model file,
# each under the same load from bench/serve_load.py (OpenAI /v1/completions,
# random prompt ids, ignore_eos), runs interleaved, round after round. Also
# prints each server's time from start to /health 200 and its resident
# memory when idle after start.
#   bench/serve_compare.sh MODEL.gguf
# Environment: EXSA (build/exsa), THREADS (2), PARALLEL (8: -np / sequences),
# CTX (4096 per sequence for exsa; llama-server gets PARALLEL x CTX in total),
# CLIENTS (8), REQUESTS (4), PROMPT (256), GEN (128), ROUNDS (2), PORT (18480).
set -eu
EXSA=${EXSA:-build/exsa}
T=${THREADS:-2}
NP=${PARALLEL:-8}
CTX=${CTX:-4096}
C=${CLIENTS:-8}
R=${REQUESTS:-4}
P=${PROMPT:-256}
G=${GEN:-128}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-18480}
[ $# -eq 1 ] || { echo "usage: bench/serve_compare.sh MODEL.gguf" >&2; exit 1; }
m=$1
here=$(dirname "$0")
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; true' EXIT INT TERM

# start NAME CMD...: runs the server, waits for /health 200, prints ready
# time and idle RSS.
start() {
    name=$1
    shift
    t0=$(date +%s.%N)
    "$@" >/tmp/serve_compare.$name.log 2>&1 &
    pid=$!
    i=0
    until curl -sf --noproxy '*' "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -lt 600 ] || { echo "$name did not become ready" >&2; exit 1; }
        sleep 0.02
    done
    t1=$(date +%s.%N)
    sleep 1
    rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
    awk -v n="$name" -v a="$t0" -v b="$t1" -v r="$rss" \
        'BEGIN { printf "%s: ready in %.2f s, idle RSS %d MB\n", n, b - a, r / 1024 }'
}

stop() {
    kill "$pid" && wait "$pid" 2>/dev/null || true
    pid=""
}

load() {
    python3 "$here/serve_load.py" --url "http://127.0.0.1:$PORT" --api openai --clients "$C" \
        --requests "$R" --prompt "$P" --gen "$G"
}

for round in $(seq "$ROUNDS"); do
    echo "## round $round ($C clients x $R requests, prompt $P, gen $G, $T threads)"
    start exsa "$EXSA" serve -m "$m" --port "$PORT" -t "$T" -np "$NP" -c "$CTX" --log-level warn
    printf 'exsa: '
    load
    stop
    if [ -n "${LLAMA_SERVER:-}" ]; then
        start llama-server "$LLAMA_SERVER" -m "$m" --port "$PORT" -t "$T" -np "$NP" \
            -c $((NP * CTX)) -cb
        printf 'llama-server: '
        load
        stop
    fi
done
