#!/bin/sh
# Installs dependencies, builds, and serves $MODEL_PATH with `exsa serve`
# (OpenAI-compatible HTTP API on http://127.0.0.1:8080, Ctrl-C stops it), or
# a demo model with random weights made by `exsa gen-model` (its output is
# random text: the weights are random, the demo shows the machinery working).
# HOST, PORT and the other settings of `exsa serve --help` apply.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
model="${MODEL_PATH:-}"
if [ -z "$model" ]; then
    model=build/demo-110M-Q4_0.gguf
    [ -f "$model" ] || build/exsa gen-model "$model" --arch llama --embd 768 --layers 12 \
        --heads 12 --kv-heads 12 --ff 2048 --vocab 32000 --type Q4_0 --seed 1
fi
build/exsa info "$model" | tail -n 8
echo "try: curl -s http://${HOST:-127.0.0.1}:${PORT:-8080}/v1/completions -H 'Content-Type: application/json' -d '{\"prompt\": \"Once upon a time\", \"max_tokens\": 32}'"
exec build/exsa serve -m "$model"
