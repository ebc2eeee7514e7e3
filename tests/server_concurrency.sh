#!/usr/bin/env bash
# 32 clients streaming at once from `exsa serve` get the same outputs as the
# same requests run one at a time; clients that disconnect mid-stream have
# their requests cancelled and their KV blocks freed (checked in /v1/status).
# Usage: bash tests/server_concurrency.sh EXSA_BIN FIXTURES BUILD_DIR
source "$(dirname "$0")/server/common.sh"
command -v node >/dev/null 2>&1 || skip "node is not installed (the clients are a node script)"

make_model tiny
# -np 32: all 32 can run in one batch; -c 1024 leaves room for the long
# generations that the disconnecting clients start.
start_server -m "$WORK/tiny.gguf" --alias tiny -c 1024 -np 32 -t 2
timeout $((300 * SLOW)) node "$SERVER_TESTS_DIR/concurrency.mjs" "$BASE" tiny "$SLOW" ||
    fail "concurrency.mjs (see the FAIL lines above)"
server_alive || fail "the server died during the concurrency test"
http GET /health
expect_code 200 "/health after the concurrency test"
finish
