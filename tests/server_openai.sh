#!/usr/bin/env bash
# `exsa serve` driven by the official openai npm package (chat, chat
# streaming with include_usage, completions, n, logprobs, seed, stop,
# embeddings, models list, errors), then the same package against a server
# started with --api-key. Usage: bash tests/server_openai.sh EXSA_BIN FIXTURES BUILD_DIR
source "$(dirname "$0")/server/common.sh"
source "$SERVER_TESTS_DIR/setup-node.sh"

N_EMBD=64
make_model tiny --embd $N_EMBD --layers 2 --heads 4 --kv-heads 2 --ff 128 --vocab 512
MODEL=tiny

# A conversation and, independently of the server, its prompt through the
# chat template (`exsa template`) and its token count (`exsa tokenize`).
cat >"$WORK/messages.json" <<'JSON'
[{"role": "system", "content": "You are terse."},
 {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
 {"role": "assistant", "content": "Hi."},
 {"role": "user", "content": "Count to three"}]
JSON
"$EXSA" template -m "$WORK/tiny.gguf" "$WORK/messages.json" >"$WORK/rendered.txt" || fail "exsa template failed"
n_rendered=$("$EXSA" tokenize -m "$WORK/tiny.gguf" --bos <"$WORK/rendered.txt" | node -e 'console.log(JSON.parse(require("fs").readFileSync(0, "utf8")).length)')

echo "== openai SDK against exsa serve (at ${SECONDS}s)"
start_server -m "$WORK/tiny.gguf" --alias "$MODEL" -c 512 -np 4 -t 1
BASE_URL="$BASE/v1" MODEL=$MODEL N_EMBD=$N_EMBD MESSAGES_FILE="$WORK/messages.json" \
    TEMPLATE_PROMPT_FILE="$WORK/rendered.txt" TEMPLATE_PROMPT_TOKENS=$n_rendered timeout $((300 * SLOW)) \
    node "$SERVER_TESTS_DIR/openai_client.mjs" main || fail "openai_client.mjs main (see FAIL lines above)"
server_alive || fail "server died during the openai SDK tests"
stop_server

echo "== openai SDK against exsa serve --api-key (at ${SECONDS}s)"
KEY="sk-test-$RANDOM$RANDOM-key"
start_server -m "$WORK/tiny.gguf" --alias "$MODEL" -c 512 -np 2 -t 1 --api-key "$KEY"
BASE_URL="$BASE/v1" MODEL=$MODEL API_KEY=$KEY timeout $((120 * SLOW)) \
    node "$SERVER_TESTS_DIR/openai_client.mjs" auth || fail "openai_client.mjs auth (see FAIL lines above)"
finish
