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
REPO=$(cd "$SERVER_TESTS_DIR/../.." && pwd)

MODEL_FILE_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
MODELS_DIR=${EXSA_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exsa/models}
MODEL_FILE="$MODELS_DIR/$MODEL_FILE_NAME"
[ -f "$MODEL_FILE" ] || skip "$MODEL_FILE is absent (scripts/fetch-models.sh; or set EXSA_MODELS_DIR)"

VENV=${EXSA_VENV:-$REPO/build/venv}
"$REPO/scripts/setup-venv.sh" "$VENV"
case $? in
    0) ;;
    2) skip "the anthropic Python package cannot be installed: the package index is out of reach" ;;
    *) echo "FATAL: scripts/setup-venv.sh $VENV failed" >&2; exit 1 ;;
esac
PY="$VENV/bin/python"
"$PY" -c 'import anthropic' 2>/dev/null || skip "the anthropic package is not in $VENV"

py_client() {
    env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy \
        NO_PROXY='*' no_proxy='*' PYTHONDONTWRITEBYTECODE=1 "$@"
}
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
