#!/bin/sh
# Installs dependencies, builds, and runs Exsa on $MODEL_PATH, or on a demo
# model with random weights made by `exsa gen-model` (its output is random
# text: the weights are random, the demo shows the machinery working).
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
build/exsa run -m "$model" -p "${PROMPT:-Once upon a time}" -n 64 --seed 42
