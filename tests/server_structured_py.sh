#!/usr/bin/env bash
# Structured output and tool calls of `exsa serve` on a real model
# (SmolLM2-135M-Instruct), driven by the official openai Python package and
# validated with jsonschema (both pinned with hashes in
# tests/requirements-server.txt, installed into build/venv by
# scripts/setup-venv.sh): response_format json_schema (strict) for eight
# real-world schemas over several seeds, plain and streamed; json_object;
# llama-server's grammar / json_schema fields; chat.completions.parse with a
# pydantic model; tools with tool_choice required / named / none / auto,
# parallel_tool_calls false, streamed tool_call deltas; tool round trips; and
# the 400s for refused schemas and bad tools. Each check prints PASS or FAIL.
# Skipped without the model or when the package index cannot be reached.
# Usage: bash tests/server_structured_py.sh EXSA_BIN FIXTURES BUILD_DIR
source "$(dirname "$0")/server/common.sh"
use_real_model SmolLM2-135M-Instruct.Q4_1.gguf
use_venv "the openai and jsonschema Python packages"
"$PY" -c 'import jsonschema, openai' || { echo "FATAL: jsonschema or openai does not import in $VENV" >&2; exit 1; }

# The id is the file name without .gguf (no --alias).
MODEL=${MODEL_FILE_NAME%.gguf}

echo "== structured output and tools through the openai Python SDK on $MODEL_FILE_NAME (at ${SECONDS}s)"
start_server -m "$MODEL_FILE" -c 4096 -np 2 -t 2
# A sanitized server is several times slower: one seed per schema there
# (every schema, tool and error check still runs).
[ "$SLOW" -gt 1 ] && export SEEDS=${SEEDS:-11}
BASE_URL="$BASE/v1" MODEL=$MODEL py_client timeout $((900 * SLOW)) \
    "$PY" "$SERVER_TESTS_DIR/openai_structured.py" || fail "openai_structured.py (see FAIL lines above)"
server_alive || fail "server died during the structured output tests"
echo "== done (at ${SECONDS}s)"
finish
