#!/usr/bin/env bash
# `exsa serve` through curl: /health, /v1/health, /v1/status, /v1/generate
# (JSON and SSE) against `exsa run`, every sampling field, tokenize /
# detokenize against `exsa tokenize`, the model registry endpoints, /metrics,
# request ids, limits, errors, API keys, CORS, rate limit, configuration
# precedence, and graceful shutdown on SIGTERM.
# Usage: bash tests/server_native.sh EXSA_BIN FIXTURES BUILD_DIR
source "$(dirname "$0")/server/common.sh"
command -v node >/dev/null 2>&1 || skip "node is not installed (JSON checks use it)"
command -v curl >/dev/null 2>&1 || skip "curl is not installed"

make_model tiny
make_model second --embd 64 --layers 2 --heads 4 --kv-heads 2 --ff 128 --vocab 512 --seed 7
TINY="$WORK/tiny.gguf"
SECOND="$WORK/second.gguf"

echo "== exsa serve --help (at ${SECONDS}s)"
if "$EXSA" serve --help >"$WORK/help.txt" 2>&1; then
    for w in --model --host --port --ctx-size --parallel --threads --api-key --api-key-file \
        --cors-origin --rate-limit --max-body-bytes --timeout --log-level --log-format \
        --alias --env-file MODEL_PATH HOST PORT CONTEXT_SIZE CPU_THREADS MAX_BATCH_SIZE \
        BATCH_SIZE KV_CACHE_POOL_SIZE SCHEDULING_STRATEGY GPU_LAYERS; do
        grep -q -- "$w" "$WORK/help.txt" || fail "exsa serve --help does not mention $w"
    done
    grep -q '127.0.0.1' "$WORK/help.txt" || fail "exsa serve --help does not show the default host 127.0.0.1"
    grep -q '8080' "$WORK/help.txt" || fail "exsa serve --help does not show the default port 8080"
else
    fail "exsa serve --help exited with $?: $(head -c 300 "$WORK/help.txt")"
fi
"$EXSA" serve --no-such-flag >"$WORK/badflag.txt" 2>&1
rc=$?
[ $rc != 0 ] || fail "exsa serve --no-such-flag exited 0"
grep -q -- 'no-such-flag' "$WORK/badflag.txt" || fail "exsa serve --no-such-flag: message does not name the flag: $(head -c 300 "$WORK/badflag.txt")"
"$EXSA" serve --port notaport >"$WORK/badport.txt" 2>&1
[ $? != 0 ] || fail "exsa serve --port notaport exited 0"
grep -qi 'port' "$WORK/badport.txt" || fail "exsa serve --port notaport: message does not name the port: $(head -c 300 "$WORK/badport.txt")"

echo "== main server (at ${SECONDS}s)"
start_server -m "$TINY" --alias tiny -c 2048 -np 4 -t 1 --max-tokens-cap 2000 --max-prompt-tokens 1000
grep -q "listening on http://127.0.0.1:$PORT" "$SERVER_LOG" || fail "server log lacks 'listening on http://127.0.0.1:$PORT'"
grep -qE "model tiny ready in [0-9.]+ ?s" "$SERVER_LOG" || fail "server log lacks 'model tiny ready in X s'"
sleep 0.5
note "start to /health 200: $SERVER_READY_MS ms; idle RSS $(awk '/VmRSS/ {print $2, $3}' "/proc/$SERVER_PID/status")"

# ---- health ----
http GET /health
expect_code 200 "GET /health" && expect_js 'j.status === "ok"' "GET /health body {status: ok}"
http GET /v1/health
expect_code 200 "GET /v1/health"

# ---- request id ----
http GET /health - -H 'X-Request-Id: test-req-abc-123'
expect_eq "$(header X-Request-Id)" "test-req-abc-123" "X-Request-Id is echoed"
http GET /health
rid=$(header X-Request-Id)
[ -n "$rid" ] || fail "X-Request-Id generated when absent: header missing"
http GET /health
[ "$(header X-Request-Id)" != "$rid" ] || fail "generated X-Request-Id differs per request: got '$rid' twice"
long_id=$(printf 'x%.0s' $(seq 1 300))
http GET /health - -H "X-Request-Id: $long_id"
rid=$(header X-Request-Id)
{ [ -n "$rid" ] && [ "$rid" != "$long_id" ] && [ ${#rid} -le 128 ]; } ||
    fail "a 300-char X-Request-Id must be replaced by a generated one (<= 128 chars), got ${#rid} chars"
http POST /v1/generate '{"prompt":"hi","max_tokens":2}' -H 'X-Request-Id: gen-id-777'
expect_code 200 "generate with X-Request-Id"
expect_eq "$(header X-Request-Id)" "gen-id-777" "X-Request-Id echoed on /v1/generate"
sleep 0.2
grep -q 'gen-id-777' "$SERVER_LOG" || fail "the request id gen-id-777 does not appear in the server log"

# ---- tokenize / detokenize, against exsa tokenize ----
ref_plain=$("$EXSA" tokenize -m "$TINY" "hello world" | tr -d ' \n')
ref_bos=$("$EXSA" tokenize -m "$TINY" --bos "hello world" | tr -d ' \n')
http POST /v1/tokenize '{"content":"hello world","add_special":false}'
expect_code 200 "tokenize" && expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$ref_plain" "tokenize 'hello world' = exsa tokenize"
http POST /v1/tokenize '{"content":"hello world","add_special":true}'
expect_code 200 "tokenize add_special" && expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$ref_bos" "tokenize add_special = exsa tokenize --bos"
http POST /v1/tokenize '{"text":"hello world","add_special":false}'
expect_code 200 "tokenize with text" && expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$ref_plain" "tokenize accepts text as well as content"
http POST /v1/detokenize "{\"tokens\":$ref_plain}"
expect_code 200 "detokenize" && expect_js 'j.content === "hello world"' "detokenize(tokenize(x)) = x"
http POST /v1/detokenize '{"tokens":[]}'
expect_code 200 "detokenize []" && expect_js 'j.content === ""' "detokenize [] = empty"
http POST /v1/detokenize '{"tokens":[99999]}'
expect_openai_error 400 tokens "detokenize id out of vocabulary"
http POST /v1/tokenize '{"content":5}'
expect_openai_error 400 content "tokenize content not a string"
u8=$(printf '{"content":"h\\u00e9llo \xe2\x82\xac"}')
http POST /v1/tokenize "$u8"
if expect_code 200 "tokenize UTF-8"; then
    toks=$(jv 'JSON.stringify(j.tokens)')
    http POST /v1/detokenize "{\"tokens\":$toks}"
    expect_js 'j.content === "h\u00e9llo \u20ac"' "detokenize round trip of UTF-8 text"
fi

# ---- /v1/generate against exsa run ----
"$EXSA" run -m "$TINY" -p "hello" -n 8 --temp 0 --ignore-eos --json >"$WORK/run.json" 2>/dev/null ||
    fail "exsa run --json failed"
ref_tokens=$(jv 'JSON.stringify(j.tokens)' "$WORK/run.json")
ref_text=$(jv 'JSON.stringify(j.text)' "$WORK/run.json")
http POST /v1/generate '{"prompt":"hello","max_tokens":8,"temperature":0,"ignore_eos":true}'
if expect_code 200 "generate"; then
    cp "$WORK/body" "$WORK/gen.json"
    expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$ref_tokens" "generate greedy tokens = exsa run's"
    expect_eq "$(jv 'JSON.stringify(j.text)')" "$ref_text" "generate greedy text = exsa run's"
    expect_js 'j.finish_reason === "length"' "generate finish_reason length"
    expect_js 'j.usage.prompt_tokens === 6 && j.usage.completion_tokens === 8 && j.usage.total_tokens === 14' \
        "generate usage: 6 prompt tokens (BOS + 5 bytes), 8 generated, total 14"
    expect_js 'typeof j.timings === "object" && j.timings !== null' "generate has timings"
fi
http POST /v1/generate '{"prompt":"hello","n_predict":8,"temperature":0,"ignore_eos":true,"cache_prompt":true}'
expect_code 200 "generate with n_predict and cache_prompt" &&
    expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$ref_tokens" "n_predict is max_tokens (llama-server's name)"
bos_hello=$("$EXSA" tokenize -m "$TINY" --bos "hello" | tr -d ' \n')
http POST /v1/generate "{\"tokens\":$bos_hello,\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true}"
expect_code 200 "generate from token ids" &&
    expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$ref_tokens" "generate from ids [BOS hello] = from the text"

# Streaming: SSE token events whose text adds up to the non-stream text.
curl -sS -N --max-time $((60 * SLOW)) -D "$WORK/headers" -o "$WORK/sse.txt" -H 'Content-Type: application/json' \
    --data-binary '{"prompt":"hello","max_tokens":8,"temperature":0,"ignore_eos":true,"stream":true}' \
    "$BASE/v1/generate" || fail "SSE /v1/generate: curl failed"
LAST_REQ="POST /v1/generate stream"
[[ "$(header Content-Type)" == text/event-stream* ]] || fail "SSE Content-Type: got '$(header Content-Type)'"
export JV_SSE=1
expect_eq "$(jv 'JSON.stringify(j.filter(e => typeof e === "object" && !e.done).map(e => e.token).join(""))' "$WORK/sse.txt")" "$ref_text" \
    "SSE tokens concatenated = non-stream text"
expect_js 'j.length > 0 && ((e) => e.done === true && e.token === "" && e.finish_reason === "length" && e.usage.completion_tokens === 8 && e.usage.prompt_tokens === 6)(j[j.length - 1])' \
    "SSE last event: {token: \"\", done: true, finish_reason: length, usage}" "$WORK/sse.txt"
expect_eq "$(jv 'j.filter(e => typeof e === "object" && e.done === false).length' "$WORK/sse.txt")" 8 "SSE: 8 token events before done"
expect_eq "$(jv 'JSON.stringify(j.filter(e => typeof e === "object" && e.done === false).map(e => e.id))' "$WORK/sse.txt")" "$ref_tokens" \
    "SSE token events carry the ids of exsa run's tokens"
grep -q '^data: ' "$WORK/sse.txt" && ! grep -qvE '^(data: .*|:.*|)$' "$WORK/sse.txt" || fail "SSE body has lines other than 'data: ...', comments and blank lines"
unset JV_SSE

# Every sampling field of exsa_sampling_params is accepted by its name.
http POST /v1/generate '{"prompt":"hello","max_tokens":4,"temperature":0.7,"top_k":20,"top_p":0.9,"min_p":0.1,"typical_p":0.95,"tfs_z":0.98,"repeat_penalty":1.1,"repeat_last_n":32,"presence_penalty":0.2,"frequency_penalty":0.3,"mirostat":0,"mirostat_tau":5,"mirostat_eta":0.1,"seed":5,"logit_bias":{"65":0.5},"priority":1,"ignore_eos":true}'
expect_code 200 "generate with every sampling field"
all_fields=$(jv 'JSON.stringify(j.tokens)')
http POST /v1/generate '{"prompt":"hello","max_tokens":4,"temperature":0.7,"top_k":20,"top_p":0.9,"min_p":0.1,"typical_p":0.95,"tfs_z":0.98,"repeat_penalty":1.1,"repeat_last_n":32,"presence_penalty":0.2,"frequency_penalty":0.3,"mirostat":0,"mirostat_tau":5,"mirostat_eta":0.1,"seed":5,"logit_bias":{"65":0.5},"priority":1,"ignore_eos":true}'
expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$all_fields" "the full sampling chain with seed 5 is reproducible"
# Penalties and biases reach the sampler as `exsa run` applies them (greedy,
# so only they decide).
"$EXSA" run -m "$TINY" -p "hello" -n 12 --temp 0 --ignore-eos --repeat-penalty 1.5 --repeat-last-n 16 \
    --presence-penalty 0.5 --frequency-penalty 0.7 --logit-bias 335-5 --json >"$WORK/run_pen.json" 2>/dev/null ||
    fail "exsa run with penalties failed"
http POST /v1/generate '{"prompt":"hello","max_tokens":12,"temperature":0,"ignore_eos":true,"repeat_penalty":1.5,"repeat_last_n":16,"presence_penalty":0.5,"frequency_penalty":0.7,"logit_bias":{"335":-5}}'
expect_code 200 "generate with penalties" &&
    expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$(jv 'JSON.stringify(j.tokens)' "$WORK/run_pen.json")" \
        "greedy with repeat/presence/frequency penalties and a logit bias = exsa run's"
http POST /v1/generate '{"prompt":"hello","max_tokens":4,"mirostat":2,"mirostat_tau":4,"mirostat_eta":0.2,"seed":1,"ignore_eos":true}'
expect_code 200 "generate with mirostat 2"
# logit_bias both forms: +100 on one token makes greedy pick only it.
http POST /v1/generate '{"prompt":"hello","max_tokens":5,"temperature":0,"ignore_eos":true,"logit_bias":{"65":100}}'
expect_code 200 "logit_bias object" && expect_js 'JSON.stringify(j.tokens) === "[65,65,65,65,65]"' "logit_bias {65: 100} forces token 65"
http POST /v1/generate '{"prompt":"hello","max_tokens":5,"temperature":0,"ignore_eos":true,"logit_bias":[[66,100]]}'
expect_code 200 "logit_bias list" && expect_js 'JSON.stringify(j.tokens) === "[66,66,66,66,66]"' "logit_bias [[66, 100]] forces token 66"
first=$(jv 'j.tokens[0]' "$WORK/gen.json")
http POST /v1/generate "{\"prompt\":\"hello\",\"max_tokens\":1,\"temperature\":0,\"ignore_eos\":true,\"logit_bias\":[[$first,-100]]}"
expect_code 200 "logit_bias ban" && expect_js "j.tokens[0] !== $first" "logit_bias -100 on the greedy token changes it"
# Seeds: same seed same text at temperature 1.
http POST /v1/generate '{"prompt":"hello","max_tokens":16,"temperature":1,"seed":1234,"ignore_eos":true}'
s1=$(jv 'JSON.stringify(j.tokens)')
http POST /v1/generate '{"prompt":"hello","max_tokens":16,"temperature":1,"seed":1234,"ignore_eos":true}'
expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$s1" "generate seed 1234 twice at temperature 1 gives the same tokens"
# Stop string on the native endpoint.
http POST /v1/generate '{"prompt":"The quick brown fox","max_tokens":24,"temperature":0,"ignore_eos":true}'
full=$(jv 'JSON.stringify(j.text)')
stop=$(jv '(() => { for (let i = 1; i + 2 <= j.text.length; i++) { const s = j.text.slice(i, i + 2); if (/^[a-z]{2}$/.test(s) && j.text.indexOf(s) === i) return s; } return ""; })()')
if [ -n "$stop" ]; then
    http POST /v1/generate "{\"prompt\":\"The quick brown fox\",\"max_tokens\":24,\"temperature\":0,\"ignore_eos\":true,\"stop\":[\"$stop\"]}"
    want=$(node -e 'const t = JSON.parse(process.argv[1]); console.log(JSON.stringify(t.slice(0, t.indexOf(process.argv[2]))))' "$full" "$stop")
    expect_eq "$(jv 'JSON.stringify(j.text)')" "$want" "generate stop [\"$stop\"] cuts the text before it"
    expect_js 'j.finish_reason === "stop"' "generate stop: finish_reason stop"
fi

# Prefix cache: the same long prompt twice; the second reuses its full KV
# blocks and still gives the same text.
long_same=$(printf 'the same long prompt %.0s' $(seq 1 8))
http GET /v1/status
hits0=$(jv 'j.prefix_hit_tokens')
http POST /v1/completions "{\"prompt\":\"$long_same\",\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true}"
expect_code 200 "long prompt, first time"
first_text=$(jv 'JSON.stringify(j.choices[0].text)')
n_prompt=$(jv 'j.usage.prompt_tokens')
http POST /v1/completions "{\"prompt\":\"$long_same\",\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true}"
expect_code 200 "long prompt, second time"
expect_eq "$(jv 'JSON.stringify(j.choices[0].text)')" "$first_text" "prefix-cached prompt gives the same text"
cached=$(jv 'j.usage.prompt_tokens_details && j.usage.prompt_tokens_details.cached_tokens')
[ "$cached" -ge $((n_prompt / 16 * 16 - 16)) ] 2>/dev/null ||
    fail "second identical prompt of $n_prompt tokens: usage.prompt_tokens_details.cached_tokens $cached, expected its full 16-token blocks"
http GET /v1/status
expect_js "j.prefix_hit_tokens - $hits0 === $cached" "/v1/status.prefix_hit_tokens grew by the cached tokens ($cached)"
# No --cors-origin: no CORS headers at all.
http GET /v1/models - -H 'Origin: http://good.example'
expect_eq "$(header Access-Control-Allow-Origin)" "" "no Access-Control-Allow-Origin without --cors-origin"

# ---- parameter errors and limits ----
http POST /v1/generate '{"prompt":"hello","temperature":"hot"}'
expect_openai_error 400 temperature "temperature \"hot\""
expect_js 'j.error.type === "invalid_request_error"' "400 error type invalid_request_error"
http POST /v1/generate '{"prompt":"hello","top_k":-3}'
expect_openai_error 400 top_k "top_k -3"
http POST /v1/generate '{"prompt":"hello","mirostat":3}'
expect_openai_error 400 mirostat "mirostat 3"
http POST /v1/generate '{"prompt":"hello","logit_bias":{"99999":1}}'
expect_openai_error 400 logit_bias "logit_bias token out of vocabulary"
http POST /v1/generate '{"prompt":"hello","max_tokens":2001}'
expect_openai_error 400 max_tokens "max_tokens above --max-tokens-cap 2000"
http POST /v1/generate '{"prompt":"hello","max_tokens":2000,"ignore_eos":true,"temperature":0}'
expect_code 200 "max_tokens = --max-tokens-cap is allowed"
long_prompt=$(printf 'a b %.0s' $(seq 1 600))
http POST /v1/generate "{\"prompt\":\"$long_prompt\",\"max_tokens\":1}"
expect_openai_error 400 prompt "prompt above --max-prompt-tokens 1000"
http POST /v1/generate '{"prompt":"","max_tokens":1}'
expect_code '200|400' "empty prompt (BOS only or a clear 400)"
http POST /v1/generate '{"max_tokens":1}'
expect_openai_error 400 prompt "generate without prompt"
http POST /v1/nope '{}'
expect_openai_error 404 '' "unknown route"
http GET /v1/generate
expect_openai_error 405 '' "GET /v1/generate"
[[ "$(header Allow)" == *POST* ]] || fail "405 reply lacks 'Allow: POST' (got '$(header Allow)')"
head -c 2000000 /dev/zero | tr '\0' 'a' >"$WORK/big.txt"
http POST /v1/generate "@$WORK/big.txt"
expect_code 413 "2 MB body (default --max-body-bytes 1 MiB)"
http GET /health
expect_code 200 "health after a 413"

# ---- /v1/status ----
http GET /v1/status
if expect_code 200 "GET /v1/status"; then
    cp "$WORK/body" "$WORK/status.json"
    expect_js 'typeof j.uptime_s === "number" && j.uptime_s >= 0' "status.uptime_s"
    expect_js 'j.model === "tiny" && Array.isArray(j.models) && j.models.some(m => m.name === "tiny")' "status names the model"
    for k in queue running kv_blocks_total kv_blocks_used kv_blocks_free kv_blocks_cached prefix_hit_tokens \
        tokens_per_s generated_tokens requests_served; do
        expect_js "typeof j.$k === 'number' && j.$k >= 0" "/v1/status.$k is a number >= 0"
    done
    expect_js 'j.queue === 0 && j.running === 0' "/v1/status: nothing queued or running when idle"
    expect_js 'j.kv_blocks_used + j.kv_blocks_free === j.kv_blocks_total && j.kv_blocks_cached <= j.kv_blocks_used' \
        "/v1/status: kv used + free = total, cached within used"
    expect_js 'j.generated_tokens >= 2000' "/v1/status.generated_tokens counts the tokens generated so far"
fi

# ---- model registry ----
http GET /v1/models/list
expect_code 200 "models/list" && expect_js 'JSON.stringify(j).includes("\"tiny\"")' "models/list contains tiny"
http GET /v1/models/active
expect_code 200 "models/active" && expect_js 'JSON.stringify(j).includes("\"tiny\"")' "models/active is tiny"
http POST /v1/models/load "{\"path\":\"$SECOND\",\"name\":\"second\",\"ctx_size\":1800}"
expect_code 200 "models/load second"
http GET /v1/models/list
expect_js 'j.models.find(m => m.name === "second").n_ctx === 1800' "models/load option ctx_size 1800 applies"
http GET /v1/models/list
expect_js 'JSON.stringify(j).includes("\"tiny\"") && JSON.stringify(j).includes("\"second\"")' "models/list has both after load"
http GET /v1/models
expect_code 200 "GET /v1/models" && expect_js 'j.object === "list" && j.data.map(m => m.id).sort().join(",") === "second,tiny"' "/v1/models lists both"
http POST /v1/models/load "{\"path\":\"$SECOND\",\"name\":\"second\"}"
expect_code 400 "loading the name second twice"
http POST /v1/models/load '{"path":"/nonexistent/model.gguf","name":"ghost"}'
expect_code '400|404' "models/load of a missing file"
http POST /v1/models/load "{\"path\":\"$SERVER_TESTS_DIR/common.sh\",\"name\":\"notgguf\"}"
expect_code 400 "models/load of a file that is not GGUF"
http POST /v1/models/load '{"name":"nopath"}'
expect_openai_error 400 path "models/load without path"
# The second model answers by name, with its own weights: different text.
"$EXSA" run -m "$SECOND" -p "hello" -n 8 --temp 0 --ignore-eos --json >"$WORK/run2.json" 2>/dev/null
http POST /v1/generate '{"model":"second","prompt":"hello","max_tokens":8,"temperature":0,"ignore_eos":true}'
expect_code 200 "generate on second" &&
    expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$(jv 'JSON.stringify(j.tokens)' "$WORK/run2.json")" "model second gives exsa run -m second's tokens"
http POST /v1/generate '{"model":"nope","prompt":"hello","max_tokens":2}'
expect_openai_error 404 '' "generate on an unknown model"
http POST /v1/models/active '{"name":"second"}'
expect_code 200 "set active second"
http GET /v1/models/active
expect_js 'JSON.stringify(j).includes("\"second\"")' "models/active is second after setting it"
http POST /v1/generate '{"prompt":"hello","max_tokens":8,"temperature":0,"ignore_eos":true}'
expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$(jv 'JSON.stringify(j.tokens)' "$WORK/run2.json")" "no model field: the active model (second) answers"
http POST /v1/models/active '{"name":"nope"}'
expect_code 404 "set active to an unknown model"
# Reload while a long stream runs on the model: the stream still completes.
curl -sS -N --max-time $((120 * SLOW)) -o "$WORK/reload_sse.txt" -H 'Content-Type: application/json' \
    --data-binary '{"model":"second","prompt":"hello","max_tokens":1500,"temperature":0,"ignore_eos":true,"stream":true}' \
    "$BASE/v1/generate" &
cpid=$!
sleep 0.05
http POST /v1/models/reload '{"name":"second"}'
expect_code 200 "models/reload second"
wait $cpid || fail "stream during reload: curl failed"
expect_eq "$(JV_SSE=1 jv 'j.filter(e => typeof e === "object" && e.done === false).length + "," + JSON.stringify(j[j.length-1].finish_reason)' "$WORK/reload_sse.txt")" \
    '1500,"length"' "a stream running through a reload of its model completes all 1500 tokens"
http POST /v1/generate '{"model":"second","prompt":"hello","max_tokens":8,"temperature":0,"ignore_eos":true}'
expect_code 200 "generate on second after reload" &&
    expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$(jv 'JSON.stringify(j.tokens)' "$WORK/run2.json")" "reloaded model gives the same tokens"
http GET /v1/models/list
expect_js 'j.models.find(m => m.name === "second").n_ctx === 1800' "reload without options keeps the load options"
http POST /v1/models/reload '{"name":"second","ctx_size":512}'
expect_code 200 "models/reload second with ctx_size 512"
http GET /v1/models/list
expect_js 'j.models.find(m => m.name === "second").n_ctx === 512' "reload with ctx_size 512 applies it"
http POST /v1/generate '{"model":"second","prompt":"hello","max_tokens":600}'
expect_openai_error 400 '' "prompt + max_tokens beyond the reloaded model's 512 context"
http POST /v1/models/reload '{"name":"nope"}'
expect_code 404 "reload of an unknown model"
http POST /v1/models/unload '{"name":"second"}'
expect_code 200 "models/unload second"
http GET /v1/models/list
expect_js '!JSON.stringify(j).includes("\"second\"")' "models/list lacks second after unload"
http GET /v1/models/active
expect_js 'JSON.stringify(j).includes("\"tiny\"")' "tiny is active again after unloading the active second"
http POST /v1/generate '{"model":"second","prompt":"hello","max_tokens":2}'
expect_code 404 "generate on an unloaded model"
http POST /v1/models/unload '{"name":"second"}'
expect_code 404 "unload an unknown model"
# No model at all: 503, then loading one brings /health back.
http POST /v1/models/unload '{"name":"tiny"}'
expect_code 200 "unload tiny (the last model)"
http GET /health
expect_code 503 "/health with no model loaded"
http POST /v1/generate '{"prompt":"hello","max_tokens":2}'
expect_openai_error 503 '' "generate with no model loaded"
http POST /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}'
expect_openai_error 503 '' "chat with no model loaded"
http POST /v1/models/load "{\"path\":\"$TINY\",\"name\":\"tiny\"}"
expect_code 200 "load tiny again"
http GET /health
expect_code 200 "/health after loading a model again"
http POST /v1/generate '{"prompt":"hello","max_tokens":8,"temperature":0,"ignore_eos":true}'
expect_eq "$(jv 'JSON.stringify(j.tokens)')" "$ref_tokens" "reloaded tiny answers as before"

# ---- /metrics ----
http GET /metrics
if expect_code 200 "GET /metrics"; then
    cp "$WORK/body" "$WORK/metrics.txt"
    [[ "$(header Content-Type)" == text/plain* ]] || fail "/metrics Content-Type: got '$(header Content-Type)'"
    bad=$(grep -vE '^(#( HELP| TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*|[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? [-+0-9.eEInfa]+( [0-9]+)?)$' "$WORK/metrics.txt" | grep -v '^$' | head -3)
    [ -z "$bad" ] || fail "/metrics has lines that are not Prometheus text format: $bad"
    for m in exsa_requests_total exsa_prompt_tokens_total exsa_generated_tokens_total \
        exsa_time_to_first_token_seconds exsa_inter_token_latency_seconds exsa_request_duration_seconds \
        exsa_queue_length exsa_running_sequences exsa_kv_blocks_used exsa_kv_blocks_free \
        exsa_kv_blocks_cached exsa_prefix_cache_hit_tokens_total exsa_preemptions_total; do
        grep -q "^# TYPE $m " "$WORK/metrics.txt" || fail "/metrics lacks '# TYPE $m'"
    done
    grep -q '^# TYPE exsa_time_to_first_token_seconds histogram' "$WORK/metrics.txt" || fail "TTFT is not a histogram"
    grep -qE '^exsa_time_to_first_token_seconds_bucket\{.*le="\+Inf".*\} [0-9]+' "$WORK/metrics.txt" || fail "TTFT histogram lacks its +Inf bucket"
    grep -qE '^exsa_requests_total\{[^}]*endpoint="/v1/generate"[^}]*status="200"[^}]*\} [0-9]+' "$WORK/metrics.txt" ||
        grep -qE '^exsa_requests_total\{[^}]*status="200"[^}]*endpoint="/v1/generate"[^}]*\} [0-9]+' "$WORK/metrics.txt" ||
        fail "/metrics lacks exsa_requests_total{endpoint=\"/v1/generate\",status=\"200\"}"
    n200=$(grep -E '^exsa_requests_total\{' "$WORK/metrics.txt" | grep 'endpoint="/v1/generate"' | grep 'status="200"' | awk '{s += $2} END {print s + 0}')
    [ "${n200%.*}" -ge 15 ] || fail "exsa_requests_total for /v1/generate 200 is $n200, expected >= 15 (the requests made so far)"
    n400=$(grep -E '^exsa_requests_total\{' "$WORK/metrics.txt" | grep 'endpoint="/v1/generate"' | grep 'status="400"' | awk '{s += $2} END {print s + 0}')
    [ "${n400%.*}" -ge 5 ] || fail "exsa_requests_total for /v1/generate 400 is $n400, expected >= 5"
    # Histograms: cumulative buckets, +Inf bucket = _count, per label set.
    node -e '
const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n");
const hist = {};
for (const l of lines) {
  const m = /^(exsa_[a-z_]+)_(bucket|count|sum)(\{[^}]*\})? (\S+)$/.exec(l);
  if (!m) continue;
  const labels = (m[3] || "").replace(/,?le="[^"]*"/, "").replace("{,", "{");
  const key = m[1] + labels;
  const h = hist[key] || (hist[key] = { buckets: [], count: null });
  if (m[2] === "bucket") h.buckets.push([/le="([^"]*)"/.exec(m[3])[1], +m[4]]);
  if (m[2] === "count") h.count = +m[4];
}
let bad = 0, n = 0;
for (const [k, h] of Object.entries(hist)) {
  if (!h.buckets.length) continue;
  n++;
  for (let i = 1; i < h.buckets.length; i++) if (h.buckets[i][1] < h.buckets[i - 1][1]) { bad++; console.error(k + ": buckets not cumulative"); break; }
  const inf = h.buckets.find((b) => b[0] === "+Inf");
  if (!inf || inf[1] !== h.count) { bad++; console.error(k + ": +Inf bucket " + (inf && inf[1]) + " != _count " + h.count); }
}
if (n < 3) { console.error("only " + n + " histograms"); bad++; }
process.exit(bad ? 1 : 0);
' "$WORK/metrics.txt" || fail "/metrics histograms are not consistent (see above)"
    gen=$(grep -E '^exsa_generated_tokens_total' "$WORK/metrics.txt" | awk '{s += $2} END {print s + 0}')
    [ "${gen%.*}" -ge 2000 ] || fail "exsa_generated_tokens_total is $gen, expected >= 2000 after a 2000-token request"
fi

# ---- SIGTERM while a stream runs: exit 0, the stream ends ----
curl -sS -N --max-time $((60 * SLOW)) -o "$WORK/term_sse.txt" -H 'Content-Type: application/json' \
    --data-binary '{"prompt":"hello","max_tokens":1900,"temperature":0,"ignore_eos":true,"stream":true}' \
    "$BASE/v1/generate" &
cpid=$!
sleep 0.1
t0=$SECONDS
stop_server
[ $((SECONDS - t0)) -le $((15 * SLOW)) ] || fail "SIGTERM with a stream in flight took $((SECONDS - t0)) s"
wait $cpid
grep -q '"done": *true' "$WORK/term_sse.txt" || note "(the in-flight stream was cut at shutdown without a done event)"
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && fail "port $PORT still accepts connections after the server exited"

# ---- API keys, CORS (one server) ----
echo "== --api-key, --api-key-file, --cors-origin (at ${SECONDS}s)"
printf 'file-key-1\n' >"$WORK/keys.txt"
start_server -m "$TINY" --alias tiny -c 256 -np 2 -t 1 --api-key flag-key-1,flag-key-2 \
    --api-key-file "$WORK/keys.txt" --cors-origin http://good.example
req_chat='{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}'
http POST /v1/chat/completions "$req_chat"
expect_openai_error 401 '' "no API key"
http POST /v1/chat/completions "$req_chat" -H 'Authorization: Bearer wrong'
expect_openai_error 401 '' "wrong API key"
http POST /v1/chat/completions "$req_chat" -H 'Authorization: flag-key-1'
expect_code 401 "API key without the Bearer scheme"
http POST /v1/chat/completions "$req_chat" -H 'Authorization: Bearer flag-key-1x'
expect_code 401 "API key with an extra character"
for k in flag-key-1 flag-key-2 file-key-1; do
    http POST /v1/chat/completions "$req_chat" -H "Authorization: Bearer $k"
    expect_code 200 "API key $k"
done
http POST /v1/chat/completions "$req_chat" -H 'X-Api-Key: flag-key-2'
expect_code 200 "API key in llama-server's X-Api-Key header"
http POST /v1/generate '{"prompt":"hi","max_tokens":2}'
expect_code 401 "native /v1/generate also needs the key"
http POST /v1/models/unload '{"name":"tiny"}'
expect_code 401 "model management needs the key"
http GET /health
expect_code 200 "/health stays open without a key (load balancers)"
# CORS: preflight without a key, allowed origin echoed, others not.
http OPTIONS /v1/chat/completions - -H 'Origin: http://good.example' -H 'Access-Control-Request-Method: POST' \
    -H 'Access-Control-Request-Headers: authorization, content-type'
expect_code '200|204' "CORS preflight from an allowed origin"
expect_eq "$(header Access-Control-Allow-Origin)" "http://good.example" "preflight Access-Control-Allow-Origin"
[[ "$(header Access-Control-Allow-Methods)" == *POST* ]] || fail "preflight Access-Control-Allow-Methods lacks POST: '$(header Access-Control-Allow-Methods)'"
[[ "$(header Access-Control-Allow-Headers | tr A-Z a-z)" == *authorization* ]] || fail "preflight Access-Control-Allow-Headers lacks authorization: '$(header Access-Control-Allow-Headers)'"
http POST /v1/chat/completions "$req_chat" -H 'Authorization: Bearer flag-key-1' -H 'Origin: http://good.example'
expect_code 200 "request from an allowed origin"
expect_eq "$(header Access-Control-Allow-Origin)" "http://good.example" "Access-Control-Allow-Origin on an allowed origin's reply"
http POST /v1/chat/completions "$req_chat" -H 'Authorization: Bearer flag-key-1' -H 'Origin: http://evil.example'
expect_eq "$(header Access-Control-Allow-Origin)" "" "no Access-Control-Allow-Origin for an origin not on the list"
http OPTIONS /v1/chat/completions - -H 'Origin: http://evil.example' -H 'Access-Control-Request-Method: POST'
expect_eq "$(header Access-Control-Allow-Origin)" "" "no Access-Control-Allow-Origin on a preflight from an origin not on the list"
stop_server

# ---- rate limit ----
echo "== --rate-limit (at ${SECONDS}s)"
start_server -m "$TINY" --alias tiny -c 256 -np 2 -t 1 --rate-limit 2 --log-format json --log-level debug --conn-timeout 2
# An idle connection is closed after --conn-timeout.
t0=$SECONDS
if exec 3<>"/dev/tcp/127.0.0.1/$PORT"; then
    timeout $((20 * SLOW)) cat <&3 >/dev/null
    dt=$((SECONDS - t0))
    exec 3<&-
    { [ $dt -ge 1 ] && [ $dt -le $((6 * SLOW)) ]; } || fail "an idle connection with --conn-timeout 2 was closed after $dt s"
else
    fail "cannot connect to 127.0.0.1:$PORT"
fi
codes=""
for i in $(seq 1 30); do
    http GET /v1/models
    codes="$codes $CODE"
    if [ "$CODE" = 429 ]; then
        ra=$(header Retry-After)
        [[ "$ra" =~ ^[0-9]+$ ]] || fail "429 without a numeric Retry-After header (got '$ra')"
        expect_openai_error 429 '' "rate limited reply"
        break
    fi
done
[[ "$codes" == *429* ]] || fail "30 immediate requests at --rate-limit 2 (per second) never got 429: $codes"
[[ "$codes" == *200* ]] || fail "rate limit: not even the first request passed: $codes"
sleep 2
http GET /v1/models
expect_code 200 "rate limit: tokens come back after waiting"
stop_server 0 INT
# --log-format json: every line one JSON object; request lines carry the id.
node -e '
const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter((l) => l.length);
let bad = 0, withId = 0;
for (const l of lines) {
  let j;
  try { j = JSON.parse(l); } catch (e) { if (bad++ < 3) console.error("not JSON: " + l.slice(0, 200)); continue; }
  if (typeof j.level !== "string" || typeof j.msg !== "string" || typeof j.ts !== "string") { if (bad++ < 3) console.error("lacks ts/level/msg: " + l.slice(0, 200)); }
  if (typeof j.request_id === "string" && j.request_id.length) withId++;
}
if (bad || lines.length < 5 || withId < 3) { console.error(`json log: ${lines.length} lines, ${bad} bad, ${withId} with request_id`); process.exit(1); }
' "$SERVER_LOG" || fail "--log-format json: the log is not one JSON object per line with ts/level/msg (and request_id on request lines)"

# ---- configuration: environment, EXSA_ form over the seed's name, flag over both; no model ----
echo "== configuration precedence, no model (at ${SECONDS}s)"
p1=$(pick_port)
p2=$p1
while [ "$p2" = "$p1" ]; do p2=$(pick_port); done
start_server --no-wait --fixed-port "$p1" --env "EXSA_PORT=$p1" --env "PORT=$p2" --env "HOST=127.0.0.1"
wait_health 30 503 || fail "server configured by EXSA_PORT without a model: /health on $p1 did not answer 503"
http GET /health
expect_code 503 "/health without a model"
(exec 3<>"/dev/tcp/127.0.0.1/$p2") 2>/dev/null && fail "server listens on PORT=$p2 although EXSA_PORT=$p1 is set"
http POST /v1/models/load "{\"path\":\"$TINY\"}"
expect_code 200 "load a model into an empty server"
http GET /health
expect_code 200 "/health after the load"
http GET /v1/models
expect_js 'j.data.length === 1 && j.data[0].id === "tiny"' "a model loaded without a name is named by its file name (tiny.gguf -> tiny)"
stop_server
printf '# settings for the test\nexport EXSA_ALIAS="from-dotenv"\n\nEXSA_RATE_LIMIT=0\n' >"$WORK/test.env"
start_server --no-wait --fixed-port "$p2" --env "EXSA_PORT=$p1" --env "MODEL_PATH=$TINY" --port "$p2" --env-file "$WORK/test.env"
wait_health 30 200 || fail "--port $p2 over EXSA_PORT=$p1, model from MODEL_PATH: /health on $p2 not 200"
http GET /v1/models
expect_js 'j.data.length === 1 && j.data[0].id === "from-dotenv"' "EXSA_ALIAS from the --env-file names the model"
stop_server
start_server --no-wait --fixed-port "$p2" --env "EXSA_PORT=$p2" --env "MODEL_PATH=$TINY" --env "EXSA_ALIAS=from-env" --env-file "$WORK/test.env"
wait_health 30 200 || fail "EXSA_PORT=$p2: /health not 200"
http GET /v1/models
expect_js 'j.data.length === 1 && j.data[0].id === "from-env"' "the environment's EXSA_ALIAS wins over the .env file's"
stop_server
printf 'THIS LINE IS BROKEN\n' >"$WORK/bad.env"
"$EXSA" serve --env-file "$WORK/bad.env" --port 0 >"$WORK/badenv.txt" 2>&1 &
bpid=$!
t0=$SECONDS
while kill -0 $bpid 2>/dev/null && [ $((SECONDS - t0)) -lt $((10 * SLOW)) ]; do sleep 0.1; done
if kill -0 $bpid 2>/dev/null; then
    kill $bpid; wait $bpid
    fail "exsa serve with a malformed --env-file kept running"
else
    wait $bpid
    rc=$?
    [ $rc != 0 ] || fail "exsa serve with a malformed --env-file exited 0"
    grep -q 'bad.env:1' "$WORK/badenv.txt" || fail "malformed --env-file: the message does not name bad.env:1: $(head -c 300 "$WORK/badenv.txt")"
fi

# ---- a slower model: request timeout, queue full, graceful shutdown ----
echo "== --timeout, --queue-size, SIGTERM with requests in flight (at ${SECONDS}s)"
make_model slow --embd 512 --layers 8 --heads 8 --kv-heads 4 --ff 1536 --vocab 512 --type Q8_0
SLOWM="$WORK/slow.gguf"
start_server -m "$SLOWM" --alias slow -c 4096 -np 1 -t 1 --timeout 3
t0=$SECONDS
http POST /v1/generate '{"prompt":"hello","max_tokens":3500,"ignore_eos":true}'
dt=$((SECONDS - t0))
expect_openai_error 504 '' "generation longer than --timeout 3"
expect_js 'j.error.code === "timeout"' "504 error.code timeout"
{ [ $dt -ge 2 ] && [ $dt -le $((6 + 3 * SLOW)) ]; } || fail "--timeout 3: the reply came after $dt s"
curl -sS -N --max-time $((60 * SLOW)) -o "$WORK/timeout_sse.txt" -H 'Content-Type: application/json' \
    --data-binary '{"messages":[{"role":"user","content":"hi"}],"max_tokens":3500,"ignore_eos":true,"stream":true}' \
    "$BASE/v1/chat/completions" || fail "streamed chat past --timeout: curl failed"
LAST_REQ="streamed chat past --timeout"
JV_SSE=1 expect_js 'j.some(e => e && e.error && e.error.code === "timeout")' "a stream past --timeout ends with an error event (code timeout)" "$WORK/timeout_sse.txt"
wait_status() { # EXPR: polls /v1/status until EXPR holds
    local t0=$SECONDS
    while [ $((SECONDS - t0)) -lt $((15 * SLOW)) ]; do
        http GET /v1/status
        [ "$(jv "$1")" = true ] && return 0
        sleep 0.05
    done
    fail "/v1/status never showed ($1): $(body_excerpt)"
    return 1
}
wait_status 'j.running === 0 && j.queue === 0'
stop_server
# Queue full: one running (-np 1), one waiting (--queue-size 1), the third 503.
start_server -m "$SLOWM" --alias slow -c 4096 -np 1 --queue-size 1 -t 1 --timeout 0
long='{"prompt":"hello","max_tokens":3500,"ignore_eos":true,"stream":true}'
curl -sS -N --max-time $((60 * SLOW)) -o /dev/null -H 'Content-Type: application/json' --data-binary "$long" "$BASE/v1/generate" &
pa=$!
wait_status 'j.running === 1'
curl -sS -N --max-time $((60 * SLOW)) -o /dev/null -H 'Content-Type: application/json' --data-binary "$long" "$BASE/v1/generate" &
pb=$!
wait_status 'j.queue === 1'
http POST /v1/generate '{"prompt":"hello","max_tokens":4}'
expect_openai_error 503 '' "a request beyond --queue-size"
[[ "$(header Retry-After)" =~ ^[0-9]+$ ]] || fail "503 (queue full) without a numeric Retry-After (got '$(header Retry-After)')"
kill $pa $pb 2>/dev/null
wait $pa $pb 2>/dev/null
wait_status 'j.running === 0 && j.queue === 0' # the disconnected clients' requests are cancelled
stop_server

# SIGTERM: a request in flight finishes (within the grace period), new
# connections are refused, exit 0.
start_server -m "$SLOWM" --alias slow -c 1024 -np 2 -t 1 --timeout 0 --shutdown-grace 60
curl -sS -N --max-time $((60 * SLOW)) -o "$WORK/grace_sse.txt" -H 'Content-Type: application/json' \
    --data-binary '{"prompt":"hello","max_tokens":40,"temperature":0,"ignore_eos":true,"stream":true}' "$BASE/v1/generate" &
pa=$!
t0=$SECONDS
until grep -q '"done": *false' "$WORK/grace_sse.txt" 2>/dev/null || [ $((SECONDS - t0)) -gt $((20 * SLOW)) ]; do sleep 0.02; done
kill -TERM "$SERVER_PID"
sleep 0.1
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$BASE/health")
[[ "$code" =~ ^(000|503)$ ]] || fail "after SIGTERM a new request got $code (expected a refused connection or 503)"
wait $pa || fail "the stream in flight at SIGTERM: curl failed"
JV_SSE=1 expect_js 'j.filter(e => e.done === false).length === 40 && j[j.length - 1].done === true && j[j.length - 1].finish_reason === "length"' \
    "a stream in flight at SIGTERM finishes all its 40 tokens (--shutdown-grace 60)" "$WORK/grace_sse.txt"
stop_server 0 -
# SIGTERM with --shutdown-grace 1: a long request is cancelled, exit 0 soon.
start_server -m "$SLOWM" --alias slow -c 4096 -np 1 -t 1 --timeout 0 --shutdown-grace 1
curl -sS -N --max-time $((60 * SLOW)) -o "$WORK/cancel_sse.txt" -H 'Content-Type: application/json' \
    --data-binary '{"prompt":"hello","max_tokens":3500,"ignore_eos":true,"stream":true}' "$BASE/v1/generate" &
pa=$!
t0=$SECONDS
until grep -q '"done": *false' "$WORK/cancel_sse.txt" 2>/dev/null || [ $((SECONDS - t0)) -gt $((20 * SLOW)) ]; do sleep 0.02; done
t0=$SECONDS
stop_server
[ $((SECONDS - t0)) -le $((5 * SLOW)) ] || fail "SIGTERM with --shutdown-grace 1 took $((SECONDS - t0)) s"
wait $pa
n=$(JV_SSE=1 jv 'j.filter(e => e.done === false).length' "$WORK/cancel_sse.txt")
[ "$n" -lt 3500 ] 2>/dev/null || fail "the long stream was not cut at shutdown ($n tokens)"

finish
