#!/usr/bin/env bash
# Structured output and tool calls through `exsa serve` on a random-weight
# model: whatever the model's logits, a grammar-constrained answer must
# parse. response_format json_object and json_schema (validated field by
# field), llama-server's grammar and json_schema on /completion and
# /v1/completions, tools with tool_choice required / named / none / auto
# (plain and streamed, the streamed deltas assembled), a tool round trip,
# and the 400s for bad grammars, refused schema keywords and conflicts.
# Usage: bash tests/server_structured.sh EXSA_BIN FIXTURES BUILD_DIR
source "$(dirname "$0")/server/common.sh"
command -v node >/dev/null 2>&1 || skip "node is not installed (JSON checks use it)"
command -v curl >/dev/null 2>&1 || skip "curl is not installed"

make_model tiny
jv_start
start_server -m "$WORK/tiny.gguf" --alias tiny -c 2048 -np 4 -t 1

SCHEMA='{"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
 "age": {"type": "integer", "minimum": 0, "maximum": 120},
 "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
 "ok": {"type": "boolean"}}, "required": ["name", "age", "ok"], "additionalProperties": false}'
# JavaScript: x is valid under SCHEMA
VALID='(typeof x === "object" && x !== null && !Array.isArray(x) &&
 Object.keys(x).every(k => ["name","age","tags","ok"].includes(k)) &&
 typeof x.name === "string" && x.name.length <= 12 &&
 Number.isInteger(x.age) && x.age >= 0 && x.age <= 120 && typeof x.ok === "boolean" &&
 (x.tags === undefined || (Array.isArray(x.tags) && x.tags.length <= 3 &&
  x.tags.every(t => ["a","b","c"].includes(t)))))'

chat() { # SEED EXTRA_JSON [STREAM]
    http POST /v1/chat/completions "{\"model\": \"tiny\", \"messages\": [{\"role\": \"user\",
 \"content\": \"Give me data\"}], \"max_tokens\": 300, \"temperature\": 1.0, \"seed\": $1,
 \"stream\": ${3:-false} $2}"
}

echo "== response_format (at ${SECONDS}s)"
stops=0
for seed in 1 2 3 4 5 6; do
    chat $seed ', "response_format": {"type": "json_object"}'
    expect_code 200 "json_object seed $seed" || continue
    fin=$(jv 'j.choices[0].finish_reason')
    if [ "$fin" = stop ]; then
        stops=$((stops + 1))
        expect_js '(() => { const x = JSON.parse(j.choices[0].message.content);
            return typeof x === "object" && x !== null && !Array.isArray(x); })()' \
            "json_object seed $seed: the content is a JSON object"
    fi
done
[ $stops -gt 0 ] || fail "json_object: no answer of 6 ended within 300 tokens"
stops=0
for seed in 1 2 3 4 5 6; do
    chat $seed ", \"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"person\",
 \"strict\": true, \"schema\": $SCHEMA}}"
    expect_code 200 "json_schema seed $seed" || continue
    if [ "$(jv 'j.choices[0].finish_reason')" = stop ]; then
        stops=$((stops + 1))
        expect_js "(() => { const x = JSON.parse(j.choices[0].message.content); return $VALID; })()" \
            "json_schema seed $seed: the content validates"
    fi
done
[ $stops -gt 0 ] || fail "json_schema: no answer of 6 ended within 300 tokens"
# streamed: the deltas put together validate too
chat 7 ", \"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"p\",
 \"schema\": $SCHEMA}}" true
expect_code 200 "json_schema streamed"
if [ "$(JV_SSE=1 jv 'j.filter(c => c.choices && c.choices[0] && c.choices[0].finish_reason).map(c => c.choices[0].finish_reason)[0]')" = stop ]; then
    JV_SSE=1 expect_js "(() => { const x = JSON.parse(j.filter(c => c.choices && c.choices[0])
        .map(c => c.choices[0].delta.content || '').join('')); return $VALID; })()" \
        "json_schema streamed: the assembled content validates"
fi

echo "== grammar and json_schema fields (at ${SECONDS}s)"
for seed in 1 2 3; do
    http POST /completion "{\"prompt\": \"Is it?\", \"n_predict\": 8, \"seed\": $seed,
 \"temperature\": 1.0, \"grammar\": \"root ::= (\\\"yes\\\" | \\\"no\\\") \\\".\\\"\"}"
    expect_code 200 "/completion grammar"
    c=$(jv 'j.content')
    [[ "$c" == "yes." || "$c" == "no." ]] || fail "/completion grammar seed $seed: '$c' is not yes. or no."
done
http POST /v1/completions "{\"model\": \"tiny\", \"prompt\": \"Count:\", \"max_tokens\": 12,
 \"temperature\": 1.0, \"seed\": 3, \"grammar\": \"root ::= [0-9]{3} \\\"-\\\" [a-c]+\"}"
expect_code 200 "/v1/completions grammar"
expect_js '/^[0-9]{3}-[a-c]+$/.test(j.choices[0].text)' "/v1/completions grammar: text matches"
http POST /v1/completions "{\"model\": \"tiny\", \"prompt\": \"x\", \"max_tokens\": 60,
 \"temperature\": 1.0, \"seed\": 5, \"json_schema\": {\"type\": \"array\",
 \"items\": {\"type\": \"integer\", \"minimum\": -5, \"maximum\": 300}, \"minItems\": 1, \"maxItems\": 4}}"
expect_code 200 "/v1/completions json_schema"
if [ "$(jv 'j.choices[0].finish_reason')" = stop ]; then
    expect_js '(() => { const x = JSON.parse(j.choices[0].text); return Array.isArray(x) &&
        x.length >= 1 && x.length <= 4 && x.every(v => Number.isInteger(v) && v >= -5 && v <= 300); })()' \
        "json_schema array of integers validates"
fi

# lazy: free text until the trigger, then the grammar from the trigger on
# (logit_bias makes this random model write the trigger first)
http POST /tokenize '{"content": "<"}'
LT=$(jv 'j.tokens[0]')
for seed in 1 2 3; do
    http POST /completion "{\"prompt\": \"x\", \"n_predict\": 16, \"temperature\": 1.0, \"seed\": $seed,
 \"logit_bias\": [[$LT, 100]], \"grammar\": \"root ::= \\\"<\\\" [a-c]{3} \\\">\\\"\",
 \"grammar_lazy\": true, \"grammar_triggers\": [{\"type\": \"word\", \"value\": \"<\"}]}"
    expect_code 200 "lazy grammar seed $seed"
    expect_js '/^<[a-c]{3}>$/.test(j.content)' "lazy grammar seed $seed: '<abc>'-like from the trigger on"
done
http POST /completion '{"prompt": "x", "n_predict": 4, "grammar_lazy": true}'
expect_code 400 "grammar_lazy without a grammar"

echo "== tools (at ${SECONDS}s)"
TOOLS='[{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
 "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
 "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"], "additionalProperties": false}}},
 {"type": "function", "function": {"name": "add", "parameters": {"type": "object",
 "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
 "b": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["a", "b"],
 "additionalProperties": false}}}]'
CALLS_OK='(c => c.every(t => t.type === "function" && typeof t.id === "string" && t.id.length > 0 &&
 ((t.function.name === "get_weather" && (a => typeof a.city === "string" && ["c","f"].includes(a.unit)
  && Object.keys(a).length === 2)(JSON.parse(t.function.arguments))) ||
  (t.function.name === "add" && (a => Number.isInteger(a.a) && Number.isInteger(a.b) &&
  Object.keys(a).length === 2)(JSON.parse(t.function.arguments))))))'
for seed in 1 2 3 4; do
    chat $seed ", \"tools\": $TOOLS, \"tool_choice\": \"required\""
    expect_code 200 "tools required seed $seed" || continue
    [ "$(jv 'j.choices[0].finish_reason')" = length ] && continue
    expect_eq "$(jv 'j.choices[0].finish_reason')" tool_calls "tools required seed $seed: finish_reason"
    expect_js "Array.isArray(j.choices[0].message.tool_calls) && j.choices[0].message.tool_calls.length >= 1 &&
        $CALLS_OK(j.choices[0].message.tool_calls)" "tools required seed $seed: the calls validate"
done
chat 5 ", \"tools\": $TOOLS, \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"add\"}},
 \"parallel_tool_calls\": false"
expect_code 200 "tools named"
if [ "$(jv 'j.choices[0].finish_reason')" != length ]; then
    expect_js "j.choices[0].message.tool_calls.length === 1 &&
        j.choices[0].message.tool_calls[0].function.name === 'add' && $CALLS_OK(j.choices[0].message.tool_calls)" \
        "tools named: one call of add"
fi
chat 6 ", \"tools\": $TOOLS, \"tool_choice\": \"none\""
expect_code 200 "tools none"
expect_js '!j.choices[0].message.tool_calls && typeof j.choices[0].message.content === "string"' \
    "tools none: text, no calls"
chat 7 ", \"tools\": $TOOLS"
expect_code 200 "tools auto"
expect_js "(m => (m.tool_calls ? $CALLS_OK(m.tool_calls) : typeof m.content === 'string'))(j.choices[0].message)" \
    "tools auto: either valid calls or text"
# streamed: the first delta of a call names it, the arguments assemble
chat 8 ", \"tools\": $TOOLS, \"tool_choice\": \"required\"" true
expect_code 200 "tools streamed"
if [ "$(JV_SSE=1 jv 'j.filter(c => c.choices && c.choices[0] && c.choices[0].finish_reason).map(c => c.choices[0].finish_reason)[0]')" = tool_calls ]; then
    JV_SSE=1 expect_js "(() => { const calls = [];
        for (const c of j) { if (!c.choices || !c.choices[0] || !c.choices[0].delta.tool_calls) continue;
          for (const d of c.choices[0].delta.tool_calls) {
            if (!calls[d.index]) calls[d.index] = {id: d.id, type: d.type, function: {name: d.function.name, arguments: ''}};
            calls[d.index].function.arguments += d.function.arguments || ''; } }
        return calls.length >= 1 && $CALLS_OK(calls); })()" "tools streamed: assembled calls validate"
fi
# round trip: the call and its result go back through the template
http POST /v1/chat/completions "{\"model\": \"tiny\", \"max_tokens\": 40, \"tools\": $TOOLS,
 \"messages\": [{\"role\": \"user\", \"content\": \"Weather in Oslo?\"},
 {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"call_1\", \"type\": \"function\",
  \"function\": {\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Oslo\\\", \\\"unit\\\": \\\"c\\\"}\"}}]},
 {\"role\": \"tool\", \"tool_call_id\": \"call_1\", \"content\": \"-3 C, snow\"}]}"
expect_code 200 "tool round trip"

echo "== a template with <tool_call> (Hermes / Qwen format) (at ${SECONDS}s)"
cat >"$WORK/hermes.jinja" <<'TPL'
{%- if tools %}<|im_start|>system
You may call tools: {{ tools | tojson }}. Write each call as <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>
{% endif %}{%- for m in messages %}<|im_start|>{{ m.role }}
{%- if m.tool_calls %}{% for tc in m.tool_calls %}
<tool_call>{{ tc.function | tojson }}</tool_call>{% endfor %}{% else %}
{{ m.content or '' }}{% endif %}<|im_end|>
{% endfor %}<|im_start|>assistant
TPL
stop_server
start_server -m "$WORK/tiny.gguf" --alias tiny -c 2048 -np 2 -t 1 --chat-template "$WORK/hermes.jinja"
for seed in 1 2 3; do
    chat $seed ", \"tools\": $TOOLS, \"tool_choice\": \"required\""
    expect_code 200 "hermes required seed $seed" || continue
    [ "$(jv 'j.choices[0].finish_reason')" = length ] && continue
    expect_eq "$(jv 'j.choices[0].finish_reason')" tool_calls "hermes required seed $seed: finish_reason"
    expect_js "j.choices[0].message.tool_calls.length >= 1 && $CALLS_OK(j.choices[0].message.tool_calls)" \
        "hermes required seed $seed: the calls validate"
done
chat 4 ", \"tools\": $TOOLS, \"tool_choice\": \"required\"" true
expect_code 200 "hermes streamed"
JV_SSE=1 expect_js '!j.some(c => c.choices && c.choices[0] && /tool_call/.test(c.choices[0].delta.content || ""))' \
    "hermes streamed: no marker leaks into the content"

echo "== errors (at ${SECONDS}s)"
http POST /completion '{"prompt": "x", "n_predict": 4, "grammar": "root ::= \"a\" | ( \"b\""}'
expect_code 400 "bad grammar"
expect_js '/grammar/.test(JSON.stringify(j)) && /line 1/.test(JSON.stringify(j))' "bad grammar: named with its line"
http POST /completion '{"prompt": "x", "n_predict": 4, "grammar": "root ::= undefined-rule"}'
expect_code 400 "grammar with an undefined rule"
chat 1 ', "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "patternProperties": {"a": {}}}}}'
expect_code 400 "refused keyword"
expect_js '/patternProperties/.test(JSON.stringify(j))' "refused keyword: named"
chat 1 ", \"tools\": $TOOLS, \"response_format\": {\"type\": \"json_object\"}"
expect_code 400 "tools with response_format"
chat 1 ', "tools": [{"type": "function", "function": {"name": "bad name"}}]'
expect_code 400 "bad tool name"
expect_js '/tools/.test(JSON.stringify(j))' "bad tool name: names tools"

finish
