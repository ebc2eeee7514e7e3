#!/usr/bin/env bash
# 32 clients streaming at once from `exsa serve` get the same outputs as the
# same requests run one at a time; clients that disconnect mid-stream have
# their requests cancelled and their KV blocks freed (checked in /v1/status).
# Usage: bash tests/server_concurrency.sh EXSA_BIN FIXTURES BUILD_DIR
source "$(dirname "$0")/server/common.sh"
command -v node >/dev/null 2>&1 || skip "node is not installed (the clients are a node script)"

# Big enough (0.6 ms a token on 2 cores) that 32 requests sent together
# overlap on any machine: a 64-wide model finished each one in 1 ms, before
# the next had arrived.
make_model tiny --embd 384 --layers 4 --heads 6 --kv-heads 2 --ff 1024 --vocab 512
# -np 32: all 32 can run in one batch; -c 1024 leaves room for the long
# generations that the disconnecting clients start.
start_server -m "$WORK/tiny.gguf" --alias tiny -c 1024 -np 32 -t 2
timeout $((300 * SLOW)) node "$SERVER_TESTS_DIR/concurrency.mjs" "$BASE" tiny "$SLOW" ||
    fail "concurrency.mjs (see the FAIL lines above)"
server_alive || fail "the server died during the concurrency test"
http GET /health
expect_code 200 "/health after the concurrency test"
finish
