#!/usr/bin/env bash
# `exsa serve` on a real model (SmolLM2-135M-Instruct) driven by the official
# anthropic Python package (pinned with hashes in tests/requirements-server.txt,
# installed into build/venv by scripts/setup-venv.sh): messages (plain,
# streamed, system and blocks, stop_sequences, max_tokens), a tool round
# trip (plain and streamed), errors, then API
# keys (the SDK sends x-api-key). Skipped without the model or when the
# package index cannot be reached.
# Usage: bash tests/server_anthropic_py.sh EXSA_BIN FIXTURES BUILD_DIR
source "$(dirname "$0")/server/common.sh"
use_real_model SmolLM2-135M-Instruct.Q4_1.gguf
use_venv "the anthropic Python package"
"$PY" -c 'import anthropic' 2>/dev/null || skip "the anthropic package is not in $VENV"

MODEL=${MODEL_FILE_NAME%.gguf}

echo "== anthropic Python SDK against exsa serve on $MODEL_FILE_NAME (at ${SECONDS}s)"
start_server -m "$MODEL_FILE" -c 2048 -np 2 -t 2
BASE_URL="$BASE" MODEL=$MODEL py_client timeout $((600 * SLOW)) \
    "$PY" "$SERVER_TESTS_DIR/anthropic_client.py" main || fail "anthropic_client.py main (see FAIL lines above)"
server_alive || fail "server died during the anthropic SDK tests"
stop_server

echo "== anthropic Python SDK against exsa serve --api-key (at ${SECONDS}s)"
KEY="sk-ant-test-$RANDOM$RANDOM"
start_server -m "$MODEL_FILE" -c 512 -np 1 -t 2 --api-key "$KEY"
BASE_URL="$BASE" MODEL=$MODEL API_KEY=$KEY py_client timeout $((120 * SLOW)) \
    "$PY" "$SERVER_TESTS_DIR/anthropic_client.py" auth || fail "anthropic_client.py auth (see FAIL lines above)"
finish
