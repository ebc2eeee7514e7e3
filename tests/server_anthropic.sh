#!/usr/bin/env bash
# `exsa serve` through curl on /v1/messages (Anthropic's Messages API) and
# the reasoning split: the message object, streamed events in Anthropic's
# order and shape, stop_sequences (the matched one named), max_tokens,
# system / block content / prefill, errors in Anthropic's shape (missing
# max_tokens, bad role, bad JSON, image block, unknown model, API key via
# x-api-key), tool use (tool_choice any / tool / none / auto, plain and
# streamed with input_json_delta pieces assembled, tool_use and tool_result
# blocks in the history, the tool errors; the generic format and a
# Hermes-style template with tool syntax), then a template that opens
# <think>: thinking blocks, OpenAI reasoning_content (reasoning_format,
# chat_template_kwargs).
# Usage: bash tests/server_anthropic.sh EXSA_BIN FIXTURES BUILD_DIR
source "$(dirname "$0")/server/common.sh"
command -v node >/dev/null 2>&1 || skip "node is not installed (JSON checks use it)"
command -v curl >/dev/null 2>&1 || skip "curl is not installed"

make_model tiny

# expect_anthropic_error STATUS TYPE WORD WHAT: status, Anthropic's error
# shape, its type, and a message that contains WORD.
expect_anthropic_error() {
    expect_code "$1" "$4" || return 1
    expect_js "j.type === 'error' && typeof j.error === 'object' && j.error.type === '$2' && typeof j.error.message === 'string' && Object.keys(j).length === 2" \
        "$4 (Anthropic error shape, type $2)" || return 1
    expect_js "j.error.message.includes($(printf '%s' "$3" | node -e 'process.stdout.write(JSON.stringify(require("fs").readFileSync(0, "utf8")))'))" \
        "$4 (message names '$3')"
}

# ltrim TEXT: TEXT without leading whitespace (the splitter drops it).
ltrim() { printf '%s' "$1" | node -e 'process.stdout.write(require("fs").readFileSync(0, "utf8").replace(/^\s+/, ""))'; }

# SSE event names of the last body, one line.
events() { grep '^event:' "$WORK/body" | cut -d' ' -f2 | tr '\n' ' ' | sed 's/ $//'; }

echo "== /v1/messages (at ${SECONDS}s)"
start_server -m "$WORK/tiny.gguf" --alias tiny -c 1024 -np 2 -t 1

Q='"messages":[{"role":"user","content":"hello"}]'
http POST /v1/messages "{\"model\":\"tiny\",\"max_tokens\":12,\"temperature\":0,$Q}"
expect_code 200 "messages" &&
    expect_js 'j.id.startsWith("msg_") && j.type === "message" && j.role === "assistant" && j.model === "tiny"' "message object fields" &&
    expect_js 'Array.isArray(j.content) && j.content.length === 1 && j.content[0].type === "text" && typeof j.content[0].text === "string" && j.content[0].text.length > 0' "content is one text block" &&
    expect_js 'j.stop_reason === "max_tokens" && j.stop_sequence === null' "12 tokens of a random model: stop_reason max_tokens" &&
    expect_js 'j.usage.output_tokens === 12 && j.usage.input_tokens > 0' "usage input/output tokens"
FULL=$(jv 'j.content[0].text')
IN_TOKENS=$(jv 'j.usage.input_tokens')

# The same conversation through OpenAI's chat endpoint: the same prompt
# and, greedy, the same text.
http POST /v1/chat/completions "{\"max_tokens\":12,\"temperature\":0,$Q}"
expect_code 200 "chat for comparison" &&
    expect_eq "$(jv 'j.choices[0].message.content')" "$FULL" "messages text = chat completions text (greedy)" &&
    expect_eq "$(jv 'j.usage.prompt_tokens')" "$IN_TOKENS" "input_tokens = chat prompt_tokens"

# ---- streaming ----
http POST /v1/messages "{\"max_tokens\":12,\"temperature\":0,\"stream\":true,$Q}"
expect_code 200 "stream" && expect_eq "$(header Content-Type)" "text/event-stream" "stream content type"
ev=$(events)
want="message_start content_block_start ping$(printf ' content_block_delta%.0s' $(seq 1 "$(grep -c '^event: content_block_delta' "$WORK/body")")) content_block_stop message_delta message_stop"
expect_eq "$ev" "$want" "event order"
[ "$(grep -c '^event: content_block_delta' "$WORK/body")" -ge 1 ] || fail "stream: no content_block_delta"
# Every data line's type is its event's name.
paste -d' ' <(grep '^event:' "$WORK/body" | cut -d' ' -f2) <(grep '^data:' "$WORK/body" | cut -c7- | node -e '
  const ls = require("fs").readFileSync(0, "utf8").trim().split("\n");
  for (const l of ls) console.log(JSON.parse(l).type);') | while read -r a b; do
    [ "$a" = "$b" ] || echo "event $a has data of type $b"
done >"$WORK/mismatch"
[ -s "$WORK/mismatch" ] && fail "stream: $(head -3 "$WORK/mismatch")"
JV_SSE=1 expect_js 'j[0].message.id.startsWith("msg_") && Array.isArray(j[0].message.content) && j[0].message.content.length === 0 && j[0].message.stop_reason === null && j[0].message.usage.input_tokens > 0' "message_start carries the empty message and usage"
JV_SSE=1 expect_js 'j[1].index === 0 && j[1].content_block.type === "text" && j[1].content_block.text === ""' "content_block_start: index 0, empty text block"
JV_SSE=1 expect_js 'j.filter(e => e.type === "content_block_delta").every(e => e.index === 0 && e.delta.type === "text_delta" && typeof e.delta.text === "string")' "deltas are text_delta of block 0"
JV_SSE=1 expect_eq "$(JV_SSE=1 jv 'j.filter(e => e.type === "content_block_delta").map(e => e.delta.text).join("")')" "$FULL" "streamed text = the reply's text"
JV_SSE=1 expect_js 'j.at(-2).delta.stop_reason === "max_tokens" && j.at(-2).delta.stop_sequence === null && j.at(-2).usage.output_tokens === 12' "message_delta: stop_reason, stop_sequence, usage"

# ---- stop_sequences: a piece of the greedy text stops it there ----
STOP=$(printf '%s' "$FULL" | node -e '
  const t = require("fs").readFileSync(0, "utf8");
  // two ASCII letters past the start, so that some text comes before
  const m = /[a-z]{2}/.exec(t.slice(3));
  process.stdout.write(m ? m[0] : "");')
if [ -n "$STOP" ]; then
    BEFORE=$(printf '%s' "$FULL" | STOP="$STOP" node -e '
      const t = require("fs").readFileSync(0, "utf8"); process.stdout.write(t.slice(0, t.indexOf(process.env.STOP)));')
    http POST /v1/messages "{\"max_tokens\":12,\"temperature\":0,\"stop_sequences\":[\"zzzz-never\",\"$STOP\"],$Q}"
    expect_code 200 "stop_sequences" &&
        expect_js "j.stop_reason === 'stop_sequence' && j.stop_sequence === '$STOP'" "stop_reason stop_sequence names '$STOP'" &&
        expect_eq "$(jv 'j.content[0].text')" "$BEFORE" "text ends before the stop sequence"
    http POST /v1/messages "{\"max_tokens\":12,\"temperature\":0,\"stream\":true,\"stop_sequences\":[\"$STOP\"],$Q}"
    JV_SSE=1 expect_js "j.at(-2).type === 'message_delta' && j.at(-2).delta.stop_reason === 'stop_sequence' && j.at(-2).delta.stop_sequence === '$STOP'" "stream: message_delta names the stop sequence"
else
    fail "no two ASCII letters in the greedy text '$FULL' to stop on"
fi

# ---- request forms: system as blocks = as a string; prefill ----
http POST /v1/messages "{\"max_tokens\":6,\"temperature\":0,\"system\":\"be short\",$Q}"
A=$(jv 'j.content[0].text'); AU=$(jv 'j.usage.input_tokens')
http POST /v1/messages "{\"max_tokens\":6,\"temperature\":0,\"system\":[{\"type\":\"text\",\"text\":\"be \"},{\"type\":\"text\",\"text\":\"short\"}],\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hello\"}]}],\"metadata\":{\"user_id\":\"u1\"}}"
expect_code 200 "system and content as blocks" &&
    expect_eq "$(jv 'j.content[0].text')" "$A" "blocks give the same text as strings" &&
    expect_eq "$(jv 'j.usage.input_tokens')" "$AU" "blocks give the same prompt as strings"
[ "$AU" -gt "$IN_TOKENS" ] || fail "a system prompt adds tokens ($AU vs $IN_TOKENS)"
http POST /v1/messages "{\"max_tokens\":4,\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"hello\"},{\"role\":\"assistant\",\"content\":\"Sure thing\"}]}"
expect_code 200 "prefill" && expect_js "j.usage.input_tokens > $IN_TOKENS" "the prefill is in the prompt"

# ---- errors in Anthropic's shape ----
http POST /v1/messages "{$Q}"
expect_anthropic_error 400 invalid_request_error max_tokens "missing max_tokens"
http POST /v1/messages '{"max_tokens":4,"messages":[{"role":"system","content":"x"}]}'
expect_anthropic_error 400 invalid_request_error "messages.0.role" "bad role"
http POST /v1/messages '{"max_tokens":4,"messages":['
expect_anthropic_error 400 invalid_request_error "JSON" "bad JSON"
http POST /v1/messages '{"max_tokens":4,"messages":[{"role":"user","content":[{"type":"text","text":"see"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AA=="}}]}]}'
expect_anthropic_error 400 invalid_request_error "not supported" "image block"
http POST /v1/messages "{\"max_tokens\":4,\"stop_sequences\":\"x\",$Q}"
expect_anthropic_error 400 invalid_request_error stop_sequences "stop_sequences not a list"
http POST /v1/messages "{\"max_tokens\":4,\"temperature\":1.5,$Q}"
expect_anthropic_error 400 invalid_request_error temperature "temperature above 1"
http POST /v1/messages '{"max_tokens":4,"messages":[]}'
expect_anthropic_error 400 invalid_request_error messages "empty messages"
http POST /v1/messages "{\"model\":\"nope\",\"max_tokens\":4,$Q}"
expect_anthropic_error 404 not_found_error nope "unknown model"
http POST /v1/messages "{\"max_tokens\":100000,$Q}"
expect_anthropic_error 400 invalid_request_error max_tokens "max_tokens beyond the context"
http GET /v1/messages
expect_anthropic_error 405 invalid_request_error "" "GET /v1/messages"
# The OpenAI endpoints keep OpenAI's shape.
http POST /v1/chat/completions '{"messages":['
expect_openai_error 400 "" "chat bad JSON stays OpenAI-shaped"
server_alive || fail "server died during the /v1/messages tests"
stop_server

echo "== API keys: x-api-key and Bearer (at ${SECONDS}s)"
KEY="sk-ant-test-$RANDOM$RANDOM"
start_server -m "$WORK/tiny.gguf" --alias tiny -c 512 -np 1 -t 1 --api-key "$KEY"
http POST /v1/messages "{\"max_tokens\":2,$Q}"
expect_anthropic_error 401 authentication_error "API key" "no key"
http POST /v1/messages "{\"max_tokens\":2,$Q}" -H "x-api-key: wrong-$KEY"
expect_anthropic_error 401 authentication_error "invalid" "wrong x-api-key"
http POST /v1/messages "{\"max_tokens\":2,$Q}" -H "x-api-key: $KEY" -H 'anthropic-version: 2023-06-01'
expect_code 200 "x-api-key accepted"
http POST /v1/messages "{\"max_tokens\":2,$Q}" -H "Authorization: Bearer $KEY"
expect_code 200 "Authorization: Bearer accepted"
stop_server

echo "== tool use (at ${SECONDS}s)"
# The tiny model's template has no tool syntax: the generic format, whose
# grammar makes every call well formed whatever the random weights say.
start_server -m "$WORK/tiny.gguf" --alias tiny -c 4096 -np 2 -t 1
TOOLS='[{"name": "get_weather", "description": "Weather of a city", "input_schema": {"type": "object",
 "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}},
 "required": ["city", "unit"], "additionalProperties": false}},
 {"name": "add", "input_schema": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0,
 "maximum": 99}, "b": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["a", "b"],
 "additionalProperties": false}}]'
# JavaScript: a tool_use block whose name is a tool's and whose input
# validates against that tool's input_schema.
USE_OK='(b => b.type === "tool_use" && /^toolu_[A-Za-z0-9_-]+$/.test(b.id) &&
 typeof b.input === "object" && b.input !== null && !Array.isArray(b.input) &&
 ((b.name === "get_weather" && typeof b.input.city === "string" && [...b.input.city].length <= 10 &&
   ["c", "f"].includes(b.input.unit) && Object.keys(b.input).length === 2) ||
  (b.name === "add" && Number.isInteger(b.input.a) && b.input.a >= 0 && b.input.a <= 99 &&
   Number.isInteger(b.input.b) && b.input.b >= 0 && b.input.b <= 99 && Object.keys(b.input).length === 2)))'
# JavaScript over a streamed body (JV_SSE): the message its events build,
# checked on the way (indexes in order, a block's deltas of its type).
ASSEMBLE='(() => { const blocks = []; let open = -1, bad = "";
  for (const e of j) {
    if (e.type === "content_block_start") { if (e.index !== blocks.length || open !== -1) bad += "start " + e.index + ";";
      blocks.push(Object.assign({}, e.content_block, {json: ""})); open = e.index; }
    else if (e.type === "content_block_delta") { const b = blocks[e.index];
      if (e.index !== open) bad += "delta of " + e.index + ";";
      else if (b.type === "tool_use" && e.delta.type === "input_json_delta") b.json += e.delta.partial_json;
      else if (b.type === "text" && e.delta.type === "text_delta") b.text += e.delta.text;
      else bad += e.delta.type + " in " + b.type + ";"; }
    else if (e.type === "content_block_stop") { if (e.index !== open) bad += "stop " + e.index + ";"; open = -1; } }
  for (const b of blocks) if (b.type === "tool_use") { b.pieces = b.json; b.input = JSON.parse(b.json); delete b.json; } else delete b.json;
  const md = j.find(e => e.type === "message_delta");
  return {bad, blocks, stop_reason: md && md.delta.stop_reason}; })()'
HI='[{"role": "user", "content": "hi"}]'
tool_req() { # EXTRA_JSON [MAX_TOKENS [MESSAGES]]
    http POST /v1/messages "{\"model\": \"tiny\", \"max_tokens\": ${2:-400}, \"temperature\": 0,
 \"tools\": $TOOLS, \"messages\": ${3:-$HI} $1}"
}

tool_req ', "tool_choice": {"type": "any"}'
expect_code 200 "tool_choice any" &&
    expect_js 'j.stop_reason === "tool_use" && j.stop_sequence === null' "tool_choice any: stop_reason tool_use" &&
    expect_js "j.content.length >= 1 && j.content.every(b => b.type === 'text' ? b === j.content[0] : $USE_OK(b)) && j.content.some(b => b.type === 'tool_use')" \
        "tool_choice any: tool_use blocks (after any text) name tools and their input validates" &&
    expect_js 'new Set(j.content.filter(b => b.type === "tool_use").map(b => b.id)).size === j.content.filter(b => b.type === "tool_use").length' \
        "tool_choice any: tool_use ids are distinct"
ANY_INPUTS=$(jv 'j.content.filter(b => b.type === "tool_use").map(b => [b.name, b.input])')

tool_req ', "tool_choice": {"type": "tool", "name": "get_weather"}'
expect_code 200 "tool_choice tool" &&
    expect_js "j.stop_reason === 'tool_use' && j.content.length === 1 && j.content[0].name === 'get_weather' && $USE_OK(j.content[0])" \
        "tool_choice tool get_weather: one call of it, input valid"
tool_req ', "tool_choice": {"type": "tool", "name": "add"}'
expect_code 200 "tool_choice tool add" &&
    expect_js "j.stop_reason === 'tool_use' && j.content.length === 1 && j.content[0].name === 'add' && $USE_OK(j.content[0])" \
        "tool_choice tool add: one call of it, input valid"
tool_req ', "tool_choice": {"type": "any", "disable_parallel_tool_use": true}'
expect_code 200 "disable_parallel_tool_use" &&
    expect_js "j.stop_reason === 'tool_use' && j.content.length === 1 && $USE_OK(j.content[0])" \
        "disable_parallel_tool_use: exactly one call"

# none: the tools stay out of the prompt and the answer is text.
http POST /v1/messages "{\"max_tokens\":8,\"temperature\":0,\"messages\":$HI}"
PLAIN_IN=$(jv 'j.usage.input_tokens'); PLAIN_TEXT=$(jv 'j.content[0].text')
tool_req ', "tool_choice": {"type": "none"}' 8
expect_code 200 "tool_choice none" &&
    expect_js 'j.content.length === 1 && j.content[0].type === "text" && j.stop_reason !== "tool_use"' "tool_choice none: one text block" &&
    expect_eq "$(jv 'j.usage.input_tokens')" "$PLAIN_IN" "tool_choice none: the prompt is the one without tools" &&
    expect_eq "$(jv 'j.content[0].text')" "$PLAIN_TEXT" "tool_choice none: the text of the request without tools (greedy)"
# auto: the tools are in the prompt; the answer is calls or text.
tool_req '' 300
expect_code 200 "tool_choice auto (default)" &&
    expect_js "j.usage.input_tokens > $PLAIN_IN + 50" "auto: the tools are in the prompt" &&
    expect_js "j.stop_reason === 'tool_use' ? j.content.filter(b => b.type === 'tool_use').length >= 1 && j.content.every(b => b.type === 'text' || $USE_OK(b)) : j.content.length === 1 && j.content[0].type === 'text'" \
        "auto: either valid tool_use blocks or one text block"

# streamed: tool_use blocks whose input_json_delta pieces assemble into
# the input the plain request gave (greedy).
tool_req ', "tool_choice": {"type": "any"}, "stream": true'
expect_code 200 "stream tool_choice any"
ev=$(events | sed 's/\(content_block_delta \)*content_block_delta/DELTAS/g')
expect_eq "$ev" "message_start ping$(printf ' content_block_start DELTAS content_block_stop%.0s' $(seq 1 "$(grep -c '^event: content_block_start' "$WORK/body")")) message_delta message_stop" \
    "stream tools: event order (blocks start, deltas, stop; then message_delta)"
JV_SSE=1 expect_js "(m => m.bad === '' && m.stop_reason === 'tool_use' && m.blocks.length >= 1 && m.blocks.every(b => $USE_OK(b)))($ASSEMBLE)" \
    "stream tools: input_json_delta pieces assemble into valid inputs, stop_reason tool_use"
JV_SSE=1 expect_js "j.filter(e => e.type === 'content_block_start').every(e => e.content_block.type === 'tool_use' && typeof e.content_block.name === 'string' && JSON.stringify(e.content_block.input) === '{}')" \
    "stream tools: content_block_start carries the tool_use with input {}"
JV_SSE=1 expect_eq "$(JV_SSE=1 jv "$ASSEMBLE.blocks.map(b => [b.name, b.input])")" "$ANY_INPUTS" "stream tools: the calls of the plain request (greedy)"
tool_req ', "tool_choice": {"type": "tool", "name": "get_weather"}, "stream": true'
JV_SSE=1 expect_js "(m => m.bad === '' && m.blocks.length === 1 && m.blocks[0].name === 'get_weather' && $USE_OK(m.blocks[0]))($ASSEMBLE)" \
    "stream named tool: one valid get_weather block"
JV_SSE=1 expect_js 'j.filter(e => e.type === "content_block_delta").length >= 2' "stream named tool: its input in several input_json_delta pieces"
tool_req ', "tool_choice": {"type": "none"}, "stream": true' 8
JV_SSE=1 expect_js "(m => m.bad === '' && m.blocks.length === 1 && m.blocks[0].type === 'text')($ASSEMBLE)" "stream tool_choice none: one text block" &&
    expect_eq "$(JV_SSE=1 jv "$ASSEMBLE.blocks[0].text")" "$PLAIN_TEXT" "stream tool_choice none: the plain text (greedy)"
# Sampled (temperature 1): whatever the calls, the stream stays coherent.
for i in 1 2 3; do
    http POST /v1/messages "{\"max_tokens\": 400, \"temperature\": 1, \"stream\": true, \"tools\": $TOOLS,
 \"tool_choice\": {\"type\": \"any\"}, $Q}"
    JV_SSE=1 expect_js "(m => m.bad === '' && (m.stop_reason === 'max_tokens' || (m.stop_reason === 'tool_use' && m.blocks.length >= 1 && m.blocks.every(b => $USE_OK(b)))))($ASSEMBLE)" \
        "stream sampled $i: blocks in order, every call valid"
done

# A round trip: the call and its result go back through the template.
RT_USER='{"role": "user", "content": "Weather in Oslo?"}'
RT_CALL='{"role": "assistant", "content": [{"type": "text", "text": "Let me check."}, {"type": "tool_use",
 "id": "toolu_01", "name": "get_weather", "input": {"city": "Oslo", "unit": "c"}}]}'
rt() { # TOOL_RESULT_CONTENT_JSON [IS_ERROR]
    tool_req '' 300 "[$RT_USER, $RT_CALL, {\"role\": \"user\", \"content\": [{\"type\": \"tool_result\",
 \"tool_use_id\": \"toolu_01\", \"content\": $1${2:+, \"is_error\": $2}}]}]"
}
rt '"-3 C, snow"'
expect_code 200 "round trip: tool_use and tool_result in the history" &&
    expect_js "j.stop_reason === 'tool_use' ? j.content.every(b => b.type === 'text' || $USE_OK(b)) : j.content[0].type === 'text'" \
        "round trip: a valid answer"
RT_IN=$(jv 'j.usage.input_tokens')
rt '[{"type": "text", "text": "-3 C, "}, {"type": "text", "text": "snow"}]'
expect_code 200 "round trip, result as text blocks" &&
    expect_eq "$(jv 'j.usage.input_tokens')" "$RT_IN" "round trip: text blocks = the string"
rt '"-3 C, snow, wind from the north at 40 km/h"'
expect_code 200 "round trip, a longer result" &&
    expect_js "j.usage.input_tokens > $RT_IN" "round trip: the result's text is in the prompt"
rt '"-3 C, snow"' true
expect_code 200 "round trip, is_error" &&
    expect_js "j.usage.input_tokens > $RT_IN" "round trip: is_error marks the result"
tool_req '' 300 "[$RT_USER, $RT_CALL, {\"role\": \"user\", \"content\": [{\"type\": \"tool_result\",
 \"tool_use_id\": \"toolu_01\", \"content\": \"-3 C, snow\"}, {\"type\": \"text\", \"text\": \"Thanks\"}]}]"
expect_code 200 "round trip, result then text" &&
    expect_js "j.usage.input_tokens > $RT_IN" "round trip: the user's text after the result is in the prompt"
tool_req '' 300 "[$RT_USER, $RT_CALL, {\"role\": \"user\", \"content\": [{\"type\": \"tool_result\",
 \"tool_use_id\": \"toolu_unknown\", \"content\": \"-3 C, snow\"}]}]"
expect_code 200 "round trip, a tool_result for an unknown id is accepted"
tool_req ', "stream": true' 300 "[$RT_USER, $RT_CALL, {\"role\": \"user\", \"content\": [{\"type\": \"tool_result\",
 \"tool_use_id\": \"toolu_01\", \"content\": \"-3 C, snow\"}]}]"
expect_code 200 "round trip streamed" &&
    JV_SSE=1 expect_js "(m => m.bad === '' && m.blocks.length >= 1)($ASSEMBLE)" "round trip streamed: coherent blocks"

# Errors, in Anthropic's shape.
tools_err() { # TOOLS_JSON EXTRA STATUS WORD WHAT
    http POST /v1/messages "{\"max_tokens\": 4, \"tools\": $1, $Q $2}"
    expect_anthropic_error "$3" invalid_request_error "$4" "$5"
}
tools_err '[{"name": "f"}]' '' 400 "tools.0.input_schema" "tool without input_schema"
tools_err '[{"name": "f", "input_schema": "object"}]' '' 400 "tools.0.input_schema" "input_schema not an object"
tools_err '[{"name": "f", "input_schema": {"properties": {}}}]' '' 400 "input_schema" "input_schema without type object"
tools_err '[{"input_schema": {"type": "object"}}]' '' 400 "tools.0.name" "tool without a name"
tools_err '[{"name": "bad name", "input_schema": {"type": "object"}}]' '' 400 "name" "a tool name with a space"
tools_err '[{"type": "web_search_20250305", "name": "web_search"}]' '' 400 "not supported" "a server tool"
tools_err '{"name": "f"}' '' 400 "tools" "tools not a list"
tools_err "$TOOLS" ', "tool_choice": {"type": "tool", "name": "nope"}' 400 "nope" "tool_choice naming an unknown tool"
tools_err "$TOOLS" ', "tool_choice": {"type": "tool"}' 400 "tool_choice.name" "tool_choice tool without a name"
tools_err "$TOOLS" ', "tool_choice": {"type": "sometimes"}' 400 "tool_choice" "unknown tool_choice type"
tools_err "$TOOLS" ', "tool_choice": "any"' 400 "tool_choice" "tool_choice as a string"
tools_err "$TOOLS" ', "tool_choice": {"type": "any", "disable_parallel_tool_use": 1}' 400 "disable_parallel_tool_use" "disable_parallel_tool_use not a boolean"
tools_err '[]' ', "tool_choice": {"type": "any"}' 400 "needs tools" "tool_choice any without tools"
http POST /v1/messages '{"max_tokens":4,"messages":[{"role":"user","content":[{"type":"tool_use","id":"t1","name":"f","input":{}}]}]}'
expect_anthropic_error 400 invalid_request_error "belong in assistant" "tool_use block in a user message"
http POST /v1/messages '{"max_tokens":4,"messages":[{"role":"user","content":"x"},{"role":"assistant","content":[{"type":"tool_result","tool_use_id":"t1","content":"4"}]},{"role":"user","content":"y"}]}'
expect_anthropic_error 400 invalid_request_error "belong in user" "tool_result block in an assistant message"
http POST /v1/messages '{"max_tokens":4,"messages":[{"role":"user","content":"x"},{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f"}]},{"role":"user","content":"y"}]}'
expect_anthropic_error 400 invalid_request_error "messages.1.content.0.input" "tool_use without input"
http POST /v1/messages '{"max_tokens":4,"messages":[{"role":"user","content":[{"type":"tool_result","content":"4"}]}]}'
expect_anthropic_error 400 invalid_request_error "tool_use_id" "tool_result without tool_use_id"
http POST /v1/messages '{"max_tokens":4,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"image","source":{}}]}]}]}'
expect_anthropic_error 400 invalid_request_error "not supported" "an image in a tool_result"
http POST /v1/messages '{"max_tokens":4,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"4","is_error":"yes"}]}]}'
expect_anthropic_error 400 invalid_request_error "is_error" "is_error not a boolean"
http POST /v1/messages "{\"max_tokens\": 4, \"tools\": $TOOLS, \"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"Sure\"}]}"
expect_anthropic_error 400 invalid_request_error "prefill" "prefill with tools"
server_alive || fail "server died during the tool tests"
stop_server

echo "== tool use on a template with tool syntax (at ${SECONDS}s)"
# A Hermes-style template: the tools go to the template, calls come as
# <tool_call> JSON </tool_call>, results as <tool_response>.
cat >"$WORK/hermes.jinja" <<'TPL'
{%- if tools -%}{{- '<|im_start|>system\nTools: ' + (tools | tojson) + '\nCall them as <tool_call>\n{"name": N, "arguments": A}\n</tool_call><|im_end|>\n' -}}{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'assistant' and message.tool_calls -%}{{- '<|im_start|>assistant\n' + message.content -}}{%- for tc in message.tool_calls -%}{{- '<tool_call>\n{"name": "' + tc.function.name + '", "arguments": ' + tc.function.arguments + '}\n</tool_call>' -}}{%- endfor -%}{{- '<|im_end|>\n' -}}
{%- elif message.role == 'tool' -%}{{- '<|im_start|>user\n<tool_response>\n' + message.content + '\n</tool_response><|im_end|>\n' -}}
{%- else -%}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
TPL
start_server -m "$WORK/tiny.gguf" --alias tiny -c 4096 -np 2 -t 1 --chat-template "$WORK/hermes.jinja"
tool_req ', "tool_choice": {"type": "any", "disable_parallel_tool_use": true}'
expect_code 200 "hermes: tool_choice any" &&
    expect_js "j.stop_reason === 'tool_use' && j.content.length === 1 && $USE_OK(j.content[0])" "hermes: one valid call"
tool_req ', "tool_choice": {"type": "tool", "name": "get_weather"}, "stream": true'
expect_code 200 "hermes: stream named tool" &&
    JV_SSE=1 expect_js "(m => m.bad === '' && m.stop_reason === 'tool_use' && m.blocks.length === 1 && m.blocks[0].name === 'get_weather' && $USE_OK(m.blocks[0]))($ASSEMBLE)" \
        "hermes: stream named tool: one valid get_weather block"
tool_req ', "tool_choice": {"type": "none"}' 4
NONE_IN=$(jv 'j.usage.input_tokens')
tool_req '' 4
expect_js "j.usage.input_tokens > $NONE_IN + 50" "hermes: the tools go through the template (auto), not with none"
tool_req '' 4 "[$RT_USER, $RT_CALL]"
CALL_IN=$(jv 'j.usage.input_tokens')
tool_req '' 4 "[$RT_USER, $RT_CALL, {\"role\": \"user\", \"content\": [{\"type\": \"tool_result\",
 \"tool_use_id\": \"toolu_01\", \"content\": \"-3 C, snow\"}]}]"
expect_code 200 "hermes: round trip" &&
    expect_js "j.usage.input_tokens > $CALL_IN + 5" "hermes: the tool_result is in the prompt as a tool message"
server_alive || fail "server died during the hermes tool tests"
stop_server

echo "== a template that opens <think> (at ${SECONDS}s)"
cat >"$WORK/think.jinja" <<'TPL'
{%- for message in messages -%}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- if enable_thinking is defined and not enable_thinking -%}{{- '<think>\n\n</think>\n\n' -}}{%- else -%}{{- '<think>\n' -}}{%- endif -%}{%- endif -%}
TPL
start_server -m "$WORK/tiny.gguf" --alias tiny -c 1024 -np 2 -t 1 --chat-template "$WORK/think.jinja"
# The random model never writes </think>: all of its text is thinking.
http POST /v1/chat/completions "{\"max_tokens\":10,\"temperature\":0,\"reasoning_format\":\"none\",$Q}"
expect_code 200 "chat reasoning_format none"
RAW=$(jv 'j.choices[0].message.content')
expect_js '!("reasoning_content" in j.choices[0].message)' "reasoning_format none: no reasoning_content"
http POST /v1/chat/completions "{\"max_tokens\":10,\"temperature\":0,$Q}"
expect_code 200 "chat, default reasoning_format" &&
    expect_eq "$(jv 'j.choices[0].message.reasoning_content')" "$(ltrim "$RAW")" "default (thinking template): the text is reasoning_content" &&
    expect_js 'j.choices[0].message.content === ""' "default: content is empty while thinking never ends"
http POST /v1/chat/completions "{\"max_tokens\":10,\"temperature\":0,\"stream\":true,$Q}"
JV_SSE=1 expect_js 'j.filter(e => e.choices && e.choices[0] && e.choices[0].delta.reasoning_content).length >= 1 && j.every(e => !e.choices || !e.choices[0] || !e.choices[0].delta.content)' "stream: delta.reasoning_content, no content"
expect_eq "$(JV_SSE=1 jv 'j.filter(e => e.choices && e.choices[0]).map(e => e.choices[0].delta.reasoning_content || "").join("")')" "$(ltrim "$RAW")" "streamed reasoning = the reply's reasoning"
http POST /v1/chat/completions "{\"max_tokens\":10,\"temperature\":0,\"chat_template_kwargs\":{\"enable_thinking\":false},$Q}"
expect_code 200 "chat_template_kwargs" &&
    expect_js '!("reasoning_content" in j.choices[0].message) && j.choices[0].message.content.length > 0' "enable_thinking false: the template closes <think>, all content"
NOTHINK_PT=$(jv 'j.usage.prompt_tokens')
http POST /v1/chat/completions "{\"max_tokens\":2,\"chat_template_kwargs\":[1],$Q}"
expect_openai_error 400 chat_template_kwargs "chat_template_kwargs not an object"
http POST /v1/chat/completions "{\"max_tokens\":2,\"reasoning_format\":\"weird\",$Q}"
expect_openai_error 400 reasoning_format "unknown reasoning_format"
http POST /v1/messages "{\"max_tokens\":10,\"temperature\":0,$Q}"
expect_code 200 "messages with a thinking template" &&
    expect_js 'j.content.length === 2 && j.content[0].type === "thinking" && typeof j.content[0].thinking === "string" && j.content[0].thinking.length > 0 && j.content[1].type === "text"' "thinking block before the text block"
http POST /v1/messages "{\"max_tokens\":10,\"temperature\":0,\"thinking\":{\"type\":\"disabled\"},$Q}"
expect_code 200 "thinking disabled" &&
    expect_js 'j.content.length === 1 && j.content[0].type === "text" && j.content[0].text.length > 0' "thinking disabled: only text" &&
    expect_eq "$(jv 'j.usage.input_tokens')" "$NOTHINK_PT" "thinking disabled = chat_template_kwargs enable_thinking false"
http POST /v1/messages "{\"max_tokens\":6,\"temperature\":0,\"stream\":true,$Q}"
expect_eq "$(events | sed 's/\(content_block_delta \)*content_block_delta/DELTAS/g')" "message_start ping content_block_start DELTAS content_block_stop content_block_start content_block_stop message_delta message_stop" "thinking stream: event order (thinking block 0, text block 1)"
JV_SSE=1 expect_js 'j[2].content_block.type === "thinking" && j[2].index === 0 && j.filter(e => e.type === "content_block_delta").every(e => e.delta.type === "thinking_delta" && e.index === 0) && j.at(-4).content_block.type === "text" && j.at(-4).index === 1' "thinking stream: block types and indexes"
# Tools on a thinking template: the generic format's grammar makes the
# whole answer the calls, none of it thinking.
http POST /v1/messages "{\"max_tokens\": 300, \"temperature\": 0, \"tools\": $TOOLS,
 \"tool_choice\": {\"type\": \"tool\", \"name\": \"add\"}, $Q}"
expect_code 200 "tools on a thinking template" &&
    expect_js "j.stop_reason === 'tool_use' && j.content.length === 1 && j.content[0].name === 'add' && $USE_OK(j.content[0])" \
        "tools on a thinking template: one valid call, no thinking block"
server_alive || fail "server died during the thinking tests"
finish
