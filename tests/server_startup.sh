#!/usr/bin/env bash
# `exsa serve` start-up and server-wide defaults: the version everywhere it
# shows (checked against CMakeLists.txt's project VERSION), a bad -m file
# failing before the port is taken, a load failing after it (the server
# exits non-zero), a port in use, model ids from the file name (and the
# duplicate-name error), and -n/--n-predict as the budget of requests that
# give none. Usage: bash tests/server_startup.sh EXSA_BIN FIXTURES BUILD_DIR
source "$(dirname "$0")/server/common.sh"
command -v node >/dev/null 2>&1 || skip "node is not installed (the JSON checks use it)"

make_model tiny
TINY="$WORK/tiny.gguf"

# The version, independently of the binary: CMakeLists.txt's project() line.
WANT_VERSION=$(sed -n 's/^project(exsa VERSION \([0-9][0-9.]*\).*/\1/p' "$SERVER_TESTS_DIR/../../CMakeLists.txt")
[ -n "$WANT_VERSION" ] || fail "no 'project(exsa VERSION x.y.z' line in CMakeLists.txt"

echo "== exsa --version (at ${SECONDS}s)"
for flag in --version -V; do
    out=$("$EXSA" $flag 2>&1)
    rc=$?
    expect_eq "$rc" 0 "exsa $flag exit status"
    expect_eq "$out" "exsa $WANT_VERSION" "exsa $flag output"
done

# run_serve_fails WHAT SERVE_ARGS...: `exsa serve` must exit by itself within
# 10 s (x SLOW) with status 1; its output is left in $WORK/fail.txt.
run_serve_fails() {
    local what=$1 pid t0 rc
    shift
    "$EXSA" serve "$@" >"$WORK/fail.txt" 2>&1 &
    pid=$!
    t0=$SECONDS
    while kill -0 $pid 2>/dev/null && [ $((SECONDS - t0)) -lt $((10 * SLOW)) ]; do sleep 0.05; done
    if kill -0 $pid 2>/dev/null; then
        kill -TERM $pid
        wait $pid
        fail "$what: exsa serve $* still ran after $((10 * SLOW)) s; output: $(head -c 400 "$WORK/fail.txt")"
        return 1
    fi
    wait $pid
    rc=$?
    expect_eq "$rc" 1 "$what: exit status" || return 1
    if log_has_sanitizer_report "$WORK/fail.txt"; then
        fail "$what: sanitizer report: $(head -c 2000 "$WORK/fail.txt")"
        return 1
    fi
    return 0
}

# ---- a bad -m file fails at once, before "listening" ----
echo "== bad model files (at ${SECONDS}s)"
head -c $(($(stat -c %s "$TINY") - 1000)) "$TINY" >"$WORK/truncated.gguf"
# A well-formed GGUF of an architecture Exsa does not run, and one of a
# supported architecture without any hyperparameter or tensor (the quick
# check passes it; the full load fails).
python3 - "$WORK" <<'PY' || fail "python3 could not write the hand-made GGUF files"
import struct, sys
def s(x):
    b = x.encode()
    return struct.pack('<Q', len(b)) + b
for name, arch in (('mamba', 'mamba'), ('hollow', 'llama')):
    d = b'GGUF' + struct.pack('<IQQ', 3, 0, 1) + s('general.architecture') + struct.pack('<I', 8) + s(arch)
    open(f'{sys.argv[1]}/{name}.gguf', 'wb').write(d)
PY
for case in "missing|$WORK/missing.gguf|No such file" \
            "truncated|$WORK/truncated.gguf|beyond end of file" \
            "unsupported architecture|$WORK/mamba.gguf|architecture 'mamba' is not supported"; do
    IFS='|' read -r what file want <<<"$case"
    run_serve_fails "-m $what file" -m "$file" --host 127.0.0.1 --port 0 || continue
    n=$(wc -l <"$WORK/fail.txt")
    expect_eq "$n" 1 "-m $what file: lines of output (one clear line): $(cat "$WORK/fail.txt")"
    grep -q '^exsa serve: cannot load the model: ' "$WORK/fail.txt" ||
        fail "-m $what file: the line does not start with 'exsa serve: cannot load the model: ': $(cat "$WORK/fail.txt")"
    grep -qF "$file" "$WORK/fail.txt" || fail "-m $what file: the line does not name $file: $(cat "$WORK/fail.txt")"
    grep -qF "$want" "$WORK/fail.txt" || fail "-m $what file: the line does not say '$want': $(cat "$WORK/fail.txt")"
    grep -q 'listening' "$WORK/fail.txt" && fail "-m $what file: 'listening' was announced before the check"
done

# ---- the full load fails after the port is bound: the server exits ----
echo "== load failing in the background (at ${SECONDS}s)"
if run_serve_fails "-m hollow.gguf (loads no hyperparameters)" -m "$WORK/hollow.gguf" --host 127.0.0.1 --port 0; then
    grep -q 'listening on' "$WORK/fail.txt" || fail "hollow.gguf passes the quick check, so the server should listen first: $(cat "$WORK/fail.txt")"
    grep -q "ERROR.*cannot load the model.*hollow.gguf.*llama\." "$WORK/fail.txt" ||
        fail "hollow.gguf: no ERROR line naming the file and the missing llama.* key: $(cat "$WORK/fail.txt")"
fi

# ---- model id from the file name; version in /v1/status, /metrics, OpenAI replies ----
echo "== model id, version (at ${SECONDS}s)"
start_server -m "$TINY" -c 4096 -np 2 -t 1
http GET /v1/models
expect_code 200 "/v1/models"
expect_js 'j.data.length === 1 && j.data[0].id === "tiny"' "the -m model is named by its file name (tiny.gguf -> tiny)"
http GET /v1/status
expect_js "j.version === \"$WANT_VERSION\"" "/v1/status version"
http GET /metrics
grep -qxF "exsa_build_info{version=\"$WANT_VERSION\"} 1" "$WORK/body" ||
    fail "/metrics lacks the line exsa_build_info{version=\"$WANT_VERSION\"} 1: $(grep build_info "$WORK/body")"
grep -q '^# TYPE exsa_build_info gauge$' "$WORK/body" || fail "/metrics: exsa_build_info has no TYPE line"
http POST /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"max_tokens":3}'
expect_code 200 "chat"
expect_js "j.system_fingerprint === \"exsa-$WANT_VERSION\"" "chat system_fingerprint carries the version"
http POST /v1/completions '{"prompt":"hi","max_tokens":3,"stream":true}'
JV_SSE=1 expect_js "j.filter(c => typeof c === 'object').length > 0 && j.filter(c => typeof c === 'object').every(c => c.system_fingerprint === \"exsa-$WANT_VERSION\")" \
    "every streamed completions chunk carries system_fingerprint exsa-$WANT_VERSION"

# Another file named tiny.gguf: loading it without a name collides.
mkdir -p "$WORK/other"
cp "$TINY" "$WORK/other/tiny.gguf"
http POST /v1/models/load "{\"path\":\"$WORK/other/tiny.gguf\"}"
expect_openai_error 400 name "a second tiny.gguf without a name"
expect_js 'j.error.code === "model_exists"' "duplicate default name: code model_exists"
expect_js "j.error.message.includes(\"$TINY\") && j.error.message.includes(\"$WORK/other/tiny.gguf\") && j.error.message.includes('\"name\"')" \
    "duplicate default name: the message names both files and the \"name\" field"
http POST /v1/models/load "{\"path\":\"$WORK/other/tiny.gguf\",\"name\":\"tiny2\"}"
expect_code 200 "the same file under a name of its own"
http GET /v1/models
expect_js 'j.data.map(m => m.id).sort().join() === "tiny,tiny2"' "both models listed"

# ---- a port in use: the second server fails at once, the first serves on ----
echo "== port in use (at ${SECONDS}s)"
if run_serve_fails "a second server on port $PORT" -m "$TINY" --host 127.0.0.1 --port "$PORT"; then
    expect_eq "$(cat "$WORK/fail.txt")" \
        "exsa serve: cannot listen on 127.0.0.1:$PORT: address already in use (another server?); pick another with --port" \
        "the second server's only line"
fi
for i in 1 2 3; do
    http GET /v1/models
    expect_code 200 "the first server still answers ($i)"
    expect_js 'j.data.some(m => m.id === "tiny")' "the first server still serves its model ($i)"
done
server_alive || fail "the first server died"

# ---- -n / --n-predict: the budget of a request that gives none ----
echo "== default budget 2048 (at ${SECONDS}s)"
# Random weights may emit EOS any time: ignore_eos lets only the budget stop it.
http POST /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"ignore_eos":true}'
expect_code 200 "chat without max_tokens"
expect_js 'j.choices[0].finish_reason === "length" && j.usage.completion_tokens === 2048' \
    "without -n and max_tokens, a chat reply stops at 2048 tokens (context 4096)"
stop_server

echo "== -n 7 (at ${SECONDS}s)"
start_server -m "$TINY" -c 64 -np 2 -t 1 -n 7
for ep in "/v1/chat/completions|{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"ignore_eos\":true}" \
          "/v1/completions|{\"prompt\":\"hello\",\"ignore_eos\":true}"; do
    IFS='|' read -r path body <<<"$ep"
    http POST "$path" "$body"
    expect_code 200 "$path without max_tokens"
    expect_js 'j.choices[0].finish_reason === "length" && j.usage.completion_tokens === 7' \
        "$path without max_tokens stops at -n 7 with finish_reason length"
done
http POST /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}'
JV_SSE=1 expect_js 'j.some(c => c.choices && c.choices[0] && c.choices[0].finish_reason === "length") && j.find(c => c.usage).usage.completion_tokens === 7' \
    "a streamed chat without max_tokens stops at -n 7"
http POST /v1/completions '{"prompt":"hello","ignore_eos":true,"max_tokens":12}'
expect_js 'j.usage.completion_tokens === 12' "a request's max_tokens wins over -n"
http POST /v1/generate '{"prompt":"hello","ignore_eos":true,"n_predict":-1}'
expect_code 200 "generate n_predict -1"
expect_js 'j.finish_reason === "length" && j.usage.prompt_tokens + j.usage.completion_tokens === 64' \
    "n_predict -1 in the request runs to the end of the context (64), whatever -n says"
stop_server

echo "== N_PREDICT=5 from the environment, -n -1 (at ${SECONDS}s)"
start_server --env N_PREDICT=5 -m "$TINY" -c 64 -np 2 -t 1
http POST /v1/completions '{"prompt":"hello","ignore_eos":true}'
expect_js 'j.usage.completion_tokens === 5' "N_PREDICT=5 in the environment is the default budget"
stop_server
start_server -m "$TINY" -c 64 -np 2 -t 1 -n -1
http POST /v1/completions '{"prompt":"hello","ignore_eos":true}'
expect_js 'j.choices[0].finish_reason === "length" && j.usage.prompt_tokens + j.usage.completion_tokens === 64' \
    "-n -1: a request without max_tokens runs to the end of the context"
stop_server
run_serve_fails "-n 0" -m "$TINY" --host 127.0.0.1 --port 0 -n 0 &&
    { grep -q -- '--n-predict' "$WORK/fail.txt" || fail "-n 0: the message does not name --n-predict: $(cat "$WORK/fail.txt")"; }
finish
