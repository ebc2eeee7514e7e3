#!/usr/bin/env bash
# `exsa serve` on a real model (SmolLM2-135M-Instruct) driven by the official
# openai Python package (pinned with hashes in tests/requirements-server.txt,
# installed into build/venv by scripts/setup-venv.sh): models, chat (plain,
# streamed, usage), completions, n, stop, logprobs, seeds, embeddings,
# errors, then API keys. Skipped without the model or when the package index
# cannot be reached. Usage: bash tests/server_openai_py.sh EXSA_BIN FIXTURES BUILD_DIR
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
    2) skip "the openai Python package cannot be installed: the package index is out of reach" ;;
    *) echo "FATAL: scripts/setup-venv.sh $VENV failed" >&2; exit 1 ;;
esac
PY="$VENV/bin/python"
VERSION=$(sed -n 's/^project(exsa VERSION \([0-9][0-9.]*\).*/\1/p' "$REPO/CMakeLists.txt")

# The server is on loopback: keep the client off any proxy of the environment.
py_client() {
    env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy \
        NO_PROXY='*' no_proxy='*' PYTHONDONTWRITEBYTECODE=1 "$@"
}

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
