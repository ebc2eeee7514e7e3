#!/usr/bin/env bash
# `exsa serve` on a real model (SmolLM2-135M-Instruct) driven by the official
# openai Python package (pinned with hashes in tests/requirements-server.txt,
# installed into build/venv by scripts/setup-venv.sh): models, chat (plain,
# streamed, usage), completions, n, stop, logprobs, seeds, embeddings,
# errors, then API keys. Skipped without the model or when the package index
# cannot be reached. Usage: bash tests/server_openai_py.sh EXSA_BIN FIXTURES BUILD_DIR
source "$(dirname "$0")/server/common.sh"
use_real_model SmolLM2-135M-Instruct.Q4_1.gguf
use_venv "the openai Python package"
VERSION=$(sed -n 's/^project(exsa VERSION \([0-9][0-9.]*\).*/\1/p' "$REPO/CMakeLists.txt")

# The id is the file name without .gguf (no --alias).
MODEL=${MODEL_FILE_NAME%.gguf}
N_EMBD=576 # SmolLM2-135M's hidden size (its config.json / GGUF llama.embedding_length)

echo "== openai Python SDK against exsa serve on $MODEL_FILE_NAME (at ${SECONDS}s)"
start_server -m "$MODEL_FILE" -c 2048 -np 4 -t 2
BASE_URL="$BASE/v1" MODEL=$MODEL N_EMBD=$N_EMBD EXSA_VERSION=$VERSION \
    py_client timeout $((600 * SLOW)) "$PY" "$SERVER_TESTS_DIR/openai_client.py" main ||
    fail "openai_client.py main (see FAIL lines above)"
server_alive || fail "server died during the openai SDK tests"
stop_server

echo "== openai Python SDK against exsa serve --api-key (at ${SECONDS}s)"
KEY="sk-test-$RANDOM$RANDOM-key"
start_server -m "$MODEL_FILE" -c 512 -np 2 -t 2 --api-key "$KEY"
BASE_URL="$BASE/v1" MODEL=$MODEL API_KEY=$KEY py_client timeout $((120 * SLOW)) \
    "$PY" "$SERVER_TESTS_DIR/openai_client.py" auth || fail "openai_client.py auth (see FAIL lines above)"
finish
