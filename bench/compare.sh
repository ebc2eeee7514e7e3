#!/bin/sh
# Side-by-side speed: exsa bench and (if LLAMA_BENCH points at a llama-bench
# binary built elsewhere) llama-bench on the same model files, runs
# interleaved, with the memory bandwidth measured in the same run.
#   bench/compare.sh MODEL.gguf [MODEL.gguf ...]
# Environment: EXSA (default build/exsa), MEMBW (default build/membw),
# LLAMA_BENCH (optional), THREADS (2), ROUNDS (3), PP (512), TG (128), REPS (3).
set -eu
EXSA=${EXSA:-build/exsa}
MEMBW=${MEMBW:-build/membw}
T=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
PP=${PP:-512}
TG=${TG:-128}
REPS=${REPS:-3}
[ $# -ge 1 ] || { echo "usage: bench/compare.sh MODEL.gguf..." >&2; exit 1; }
for round in $(seq "$ROUNDS"); do
    echo "## round $round"
    "$MEMBW" "$T" 512 3
    for m in "$@"; do
        echo "# $m"
        "$EXSA" bench -m "$m" -t "$T" -p "$PP" -n "$TG" -r "$REPS" | grep -E 'pp|tg'
        if [ -n "${LLAMA_BENCH:-}" ]; then
            "$LLAMA_BENCH" -m "$m" -t "$T" -p "$PP" -n "$TG" -r "$REPS" 2>/dev/null | grep -E 'pp|tg'
        fi
    done
done
