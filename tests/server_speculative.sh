#!/usr/bin/env bash
# Speculative decoding through `exsa serve`: a server started with
# --speculative (n-gram guesses) and one with --model-draft (the model as its
# own draft) give greedy and seeded sampled requests the same text as the
# same request with "speculative": false; OpenAI predicted outputs
# ("prediction") give the same answer on a server without --speculative;
# the guesses show in usage
# (completion_tokens_details), in llama-server's timings (draft_n,
# draft_n_accepted), in /v1/status and in /metrics; bad speculative fields
# are 400s naming them; a draft with another vocabulary fails the start
# with one line saying so.
# Usage: bash tests/server_speculative.sh EXSA_BIN FIXTURES BUILD_DIR
source "$(dirname "$0")/server/common.sh"
command -v node >/dev/null 2>&1 || skip "node is not installed (JSON checks use it)"
command -v curl >/dev/null 2>&1 || skip "curl is not installed"

make_model tiny
make_model other --embd 64 --layers 2 --heads 4 --kv-heads 2 --ff 128 --vocab 700
jv_start

# A prompt that repeats itself: the n-gram index finds guesses in it.
PROMPT='one two three four five six one two three four five six one two three four five six one two'

check_server() { # LABEL
    local label=$1 seed
    for body in '"temperature": 0' '"temperature": 0.9, "top_k": 20, "repeat_penalty": 1.2, "seed": 11'; do
        http POST /v1/completions "{\"model\": \"tiny\", \"prompt\": \"$PROMPT\", \"max_tokens\": 48,
 \"ignore_eos\": true, $body, \"speculative\": false}"
        expect_code 200 "$label: without speculation ($body)" || continue
        local want
        want=$(jv 'j.choices[0].text')
        expect_js 'j.usage.completion_tokens_details.accepted_prediction_tokens === 0 &&
 j.usage.completion_tokens_details.rejected_prediction_tokens === 0' \
            "$label: no guesses with speculative false"
        http POST /v1/completions "{\"model\": \"tiny\", \"prompt\": \"$PROMPT\", \"max_tokens\": 48,
 \"ignore_eos\": true, $body}"
        expect_code 200 "$label: with speculation ($body)" || continue
        expect_eq "$(jv 'j.choices[0].text')" "$want" "$label: the same text with speculation ($body)"
        expect_js 'j.usage.completion_tokens === 48' "$label: completion_tokens"
    done
    # llama-server's /completion with its flat fields and timings.
    http POST /completion "{\"prompt\": \"$PROMPT\", \"n_predict\": 40, \"temperature\": 0,
 \"ignore_eos\": true, \"speculative.n_max\": 4, \"speculative.n_min\": 1}"
    expect_code 200 "$label: /completion with speculative.n_max"
    expect_js 'j.timings.draft_n > 0 && j.timings.draft_n_accepted >= 0 &&
 j.timings.draft_n_accepted <= j.timings.draft_n' "$label: timings.draft_n / draft_n_accepted"
    http GET /v1/status
    expect_js 'j.spec_draft_tokens > 0 && j.spec_accepted_tokens > 0 &&
 j.spec_accepted_tokens <= j.spec_draft_tokens' "$label: /v1/status counts guesses and kept ones"
    http GET /metrics
    grep -q '^exsa_spec_draft_tokens_total{model="tiny"} [1-9]' "$WORK/body" ||
        fail "$label: /metrics has no exsa_spec_draft_tokens_total > 0"
    grep -q '^exsa_spec_accepted_tokens_total{model="tiny"} [1-9]' "$WORK/body" ||
        fail "$label: /metrics has no exsa_spec_accepted_tokens_total > 0"
    # Bad fields: 400s naming them.
    for bad in '"speculative": 3' '"speculative": {"n_max": -1}' '"speculative.p_min": 1.5' \
        '"speculative": {"n_max": 2, "n_min": 5}'; do
        http POST /v1/completions "{\"model\": \"tiny\", \"prompt\": \"x\", \"max_tokens\": 2, $bad}"
        expect_code 400 "$label: $bad"
        expect_js 'j.error && /speculative|n_max|n_min|p_min/.test(j.error.message)' \
            "$label: the error for $bad names the field"
    done
    http GET /v1/status
    expect_js 'j.running === 0 && j.queue === 0 && j.kv_blocks_used === j.kv_blocks_cached' \
        "$label: the pool is free again"
}

echo "== predicted outputs on a server without --speculative (at ${SECONDS}s)"
start_server -m "$WORK/tiny.gguf" --alias tiny -c 512 -np 2 -t 1
chat_pred() { # PREDICTION_JSON
    http POST /v1/chat/completions "{\"model\": \"tiny\", \"messages\": [{\"role\": \"user\",
 \"content\": \"$PROMPT\"}], \"max_tokens\": 40, \"temperature\": 0, \"ignore_eos\": true $1}"
}
chat_pred ''
expect_code 200 "no prediction"
want=$(jv 'j.choices[0].message.content')
expect_js 'j.usage.completion_tokens_details.rejected_prediction_tokens === 0' "no guesses by default"
for pred in "{\"type\": \"content\", \"content\": $(node -e 'console.log(JSON.stringify(process.argv[1]))' "$want")}" \
    '{"type": "content", "content": [{"type": "text", "text": "one two three four five six"}]}'; do
    # n_min 1: guess whatever the measured step times say (not a timing test)
    chat_pred ", \"prediction\": $pred, \"speculative.n_min\": 1"
    expect_code 200 "prediction $pred" || continue
    expect_eq "$(jv 'j.choices[0].message.content')" "$want" "the same answer with prediction $pred"
    expect_js 'j.usage.completion_tokens_details.accepted_prediction_tokens +
 j.usage.completion_tokens_details.rejected_prediction_tokens > 0' "guesses counted for $pred"
done
for bad in '"prediction": {"type": "text", "content": "x"}' '"prediction": {"type": "content", "content": 3}' \
    '"prediction": {"type": "content", "content": [{"type": "image", "text": "x"}]}'; do
    http POST /v1/chat/completions "{\"model\": \"tiny\", \"messages\": [{\"role\": \"user\",
 \"content\": \"x\"}], \"max_tokens\": 2, $bad}"
    expect_code 400 "$bad"
    expect_js 'j.error && /prediction/.test(j.error.message)' "the error for $bad names prediction"
done
stop_server

echo "== --speculative (n-gram) (at ${SECONDS}s)"
start_server -m "$WORK/tiny.gguf" --alias tiny -c 512 -np 4 -t 1 --speculative
check_server ngram
stop_server

echo "== --model-draft (at ${SECONDS}s)"
start_server -m "$WORK/tiny.gguf" --alias tiny -c 512 -np 4 -t 1 --model-draft "$WORK/tiny.gguf" \
    --draft-p-min 0 --draft-min 1 # guess even where the cost model would not (a draft as big as the model)
check_server draft
stop_server

echo "== a draft of another vocabulary (at ${SECONDS}s)"
if "$EXSA" serve -m "$WORK/tiny.gguf" --port 0 -t 1 -md "$WORK/other.gguf" >"$WORK/bad.log" 2>&1; then
    fail "a draft of another vocabulary: the server started"
else
    grep -q "draft model" "$WORK/bad.log" && grep -q "vocabulary\|tokens" "$WORK/bad.log" ||
        fail "a draft of another vocabulary: no clear error ($(tail -c 300 "$WORK/bad.log"))"
fi
finish
