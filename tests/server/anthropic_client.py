"""Drives `exsa serve` with the official `anthropic` Python package, as an
existing Anthropic client would. Run by tests/server_anthropic_py.sh:
  python anthropic_client.py main   (env: BASE_URL MODEL)
  python anthropic_client.py auth   (env: BASE_URL MODEL API_KEY)
The model is a real one (SmolLM2-135M-Instruct): a greedy answer is
checked for content, the stream against the plain reply, stop sequences and
max_tokens against the SDK's typed fields, a tool round trip (tool_use
input validated against its input_schema, the tool_result sent back; plain
and streamed), errors against the SDK's error classes. Prints every failed
check; exits 1 if any.
"""
import os
import sys

import anthropic
from pycheck import check, eq, fail, tally

MODE = sys.argv[1] if len(sys.argv) > 1 else "main"
BASE = os.environ["BASE_URL"]  # the server root: the SDK adds /v1/messages
MODEL = os.environ["MODEL"]


def section(fn):
    """One group of checks; an exception is one failure, not the end."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - any exception is a failed section
        fail(f"{fn.__name__} raised {type(e).__name__}", str(e)[:600])
    return fn


def client(key="unused"):
    return anthropic.Anthropic(base_url=BASE, api_key=key, max_retries=0, timeout=120)


def expect_error(what, fn, cls, status, word):
    try:
        fn()
    except cls as e:
        eq(e.status_code, status, f"{what}: HTTP status")
        body = e.body if isinstance(e.body, dict) else {}
        eq(body.get("type"), "error", f"{what}: body type 'error'")
        msg = (body.get("error") or {}).get("message", "")
        check(word in msg, f"{what}: message names '{word}'", msg)
        return
    except Exception as e:  # noqa: BLE001
        fail(f"{what}: expected {cls.__name__}, got {type(e).__name__}", str(e)[:300])
        return
    fail(f"{what}: no error")


# This SDK has no sampling arguments (the API still takes them): greedy
# through the raw body, so that replies can be compared.
GREEDY = {"temperature": 0}
HELLO = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
WEATHER = {
    "name": "get_weather",
    "description": "The current weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
# One call: asked for parallel calls, a model this small repeats the call
# until max_tokens.
ANY_ONE = {"type": "any", "disable_parallel_tool_use": True}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def weather_input_ok(x):
    """x validates against WEATHER's input_schema."""
    return (isinstance(x, dict) and set(x) == {"city", "unit"} and isinstance(x["city"], str)
            and len(x["city"]) <= 30 and x["unit"] in ("celsius", "fahrenheit"))


def main_tests():
    c = client()
    state = {}

    @section
    def plain():
        m = c.messages.create(model=MODEL, max_tokens=24, extra_body=GREEDY, messages=HELLO)
        check(m.id.startswith("msg_"), "id starts with msg_", m.id)
        eq(m.type, "message", "type")
        eq(m.role, "assistant", "role")
        eq(m.model, MODEL, "model")
        eq([b.type for b in m.content], ["text"], "one text block")
        check("paris" in m.content[0].text.lower(), "greedy answer names Paris", m.content[0].text)
        check(m.stop_reason in ("end_turn", "max_tokens"), "stop_reason", m.stop_reason)
        check(m.usage.input_tokens > 10 and 0 < m.usage.output_tokens <= 24, "usage", m.usage)
        state["text"] = m.content[0].text
        state["reason"] = m.stop_reason

    @section
    def streamed():
        names, text = [], ""
        with c.messages.stream(model=MODEL, max_tokens=24, extra_body=GREEDY, messages=HELLO) as s:
            for ev in s:
                names.append(ev.type)
            final = s.get_final_message()
        raw = [n for n in names if n in ("message_start", "content_block_start", "content_block_delta",
                                          "content_block_stop", "message_delta", "message_stop")]
        eq(raw[0], "message_start", "stream: message_start first")
        eq(raw[1], "content_block_start", "stream: then content_block_start")
        eq(raw[-3:], ["content_block_stop", "message_delta", "message_stop"], "stream: the end")
        text = "".join(b.text for b in final.content if b.type == "text")
        eq(text, state.get("text"), "stream: final text = the plain reply's")
        eq(final.stop_reason, state.get("reason"), "stream: stop_reason = the plain reply's")

    @section
    def system_and_blocks():
        m = c.messages.create(
            model=MODEL, max_tokens=24, extra_body=GREEDY,
            system=[{"type": "text", "text": "You are a geography teacher."}],
            messages=[{"role": "user", "content": [{"type": "text", "text": HELLO[0]["content"]}]}],
            metadata={"user_id": "t"})
        check("paris" in m.content[0].text.lower(), "system + blocks: answer names Paris",
              m.content[0].text)

    @section
    def stop_and_length():
        text = state.get("text", "")
        words = [w for w in text.split() if w.isalpha()]
        if not check(words, "a word to stop on", text):
            return
        w = words[-1] if len(words) > 1 else words[0]
        m = c.messages.create(model=MODEL, max_tokens=24, extra_body=GREEDY, messages=HELLO,
                              stop_sequences=["@@never@@", w])
        eq(m.stop_reason, "stop_sequence", "stop_sequences: stop_reason")
        eq(m.stop_sequence, w, "stop_sequences: the matched one")
        eq(m.content[0].text, text[: text.index(w)], "stop_sequences: text before it")
        m = c.messages.create(model=MODEL, max_tokens=1, messages=HELLO)
        eq(m.stop_reason, "max_tokens", "max_tokens 1: stop_reason")
        eq(m.usage.output_tokens, 1, "max_tokens 1: output_tokens")

    @section
    def tool_round_trip():
        m = c.messages.create(model=MODEL, max_tokens=200, extra_body=GREEDY, messages=ASK_WEATHER,
                              tools=[WEATHER], tool_choice=ANY_ONE)
        eq(m.stop_reason, "tool_use", "tools: stop_reason")
        uses = [b for b in m.content if b.type == "tool_use"]
        if not check(len(uses) >= 1, "tools: a tool_use block", m.content):
            return
        u = uses[0]
        eq(u.name, "get_weather", "tools: the tool's name")
        check(u.id.startswith("toolu_"), "tools: id starts with toolu_", u.id)
        check(weather_input_ok(u.input), "tools: input validates against input_schema", u.input)
        check("paris" in str(u.input.get("city", "")).lower(), "tools: the city asked about",
              u.input)
        state["use"] = u
        state["uses"] = [(b.name, b.input) for b in uses]
        # The call and its result go back; the model answers from it.
        history = ASK_WEATHER + [
            {"role": "assistant", "content": m.content},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": b.id,
                 "content": "18 degrees celsius, sunny"} for b in uses]}]
        state["history"] = history
        r = c.messages.create(model=MODEL, max_tokens=60, extra_body=GREEDY, messages=history,
                              tools=[WEATHER])
        eq(r.type, "message", "tool result: a message")
        check(r.stop_reason in ("end_turn", "max_tokens", "tool_use"), "tool result: stop_reason",
              r.stop_reason)
        check(r.content and all(b.type in ("text", "tool_use") for b in r.content),
              "tool result: text or tool_use blocks", r.content)
        check(r.usage.input_tokens > m.usage.input_tokens,
              "tool result: the history is in the prompt",
              (r.usage.input_tokens, m.usage.input_tokens))
        state["answer"] = [(b.type, b.text if b.type == "text" else b.input) for b in r.content]
        state["answer_reason"] = r.stop_reason
        # tool_choice none: a text answer, which uses the result.
        r = c.messages.create(model=MODEL, max_tokens=60, extra_body=GREEDY, messages=history,
                              tools=[WEATHER], tool_choice={"type": "none"})
        eq([b.type for b in r.content], ["text"], "tool result, tool_choice none: one text block")
        check("18" in r.content[0].text,
              "tool result, tool_choice none: the answer uses the result",
              r.content[0].text)

    @section
    def tool_round_trip_streamed():
        kinds, pieces = [], ""
        with c.messages.stream(model=MODEL, max_tokens=200, extra_body=GREEDY, messages=ASK_WEATHER,
                               tools=[WEATHER], tool_choice=ANY_ONE) as s:
            for ev in s:
                kinds.append(ev.type)
                if ev.type == "input_json":
                    pieces += ev.partial_json
            final = s.get_final_message()
        eq(final.stop_reason, "tool_use", "tools stream: stop_reason")
        uses = [(b.name, b.input) for b in final.content if b.type == "tool_use"]
        eq(uses, state.get("uses"), "tools stream: the calls of the plain request (greedy)")
        check("input_json" in kinds, "tools stream: input_json events", kinds)
        if len(uses) == 1:
            import json
            eq(json.loads(pieces), uses[0][1], "tools stream: the partial_json pieces assemble")
        if "history" not in state:
            return
        with c.messages.stream(model=MODEL, max_tokens=60, extra_body=GREEDY,
                               messages=state["history"], tools=[WEATHER]) as s:
            final = s.get_final_message()
        eq([(b.type, b.text if b.type == "text" else b.input) for b in final.content],
           state.get("answer"), "tool result stream: the plain request's answer (greedy)")
        eq(final.stop_reason, state.get("answer_reason"), "tool result stream: stop_reason")

    @section
    def errors():
        expect_error("image block", lambda: c.messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}}]}]),
            anthropic.BadRequestError, 400, "not supported")
        expect_error("unknown model", lambda: c.messages.create(
            model="no-such-model", max_tokens=4, messages=HELLO),
            anthropic.NotFoundError, 404, "no-such-model")
        expect_error("bad role", lambda: c.messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "robot", "content": "x"}]),
            anthropic.BadRequestError, 400, "role")
        expect_error("tool without input_schema", lambda: c.messages.create(
            model=MODEL, max_tokens=4, messages=HELLO, tools=[{"name": "f"}]),
            anthropic.BadRequestError, 400, "input_schema")
        expect_error("tool_choice naming an unknown tool", lambda: c.messages.create(
            model=MODEL, max_tokens=4, messages=HELLO, tools=[WEATHER],
            tool_choice={"type": "tool", "name": "nope"}),
            anthropic.BadRequestError, 400, "nope")


def auth_tests():
    key = os.environ["API_KEY"]

    @section
    def keys():
        m = client(key).messages.create(model=MODEL, max_tokens=2, messages=HELLO)
        eq(m.type, "message", "the right key (x-api-key) works")
        expect_error("a wrong key", lambda: client("wrong-" + key).messages.create(
            model=MODEL, max_tokens=2, messages=HELLO),
            anthropic.AuthenticationError, 401, "API key")


(auth_tests if MODE == "auth" else main_tests)()
checks, failures = tally()
print(f"{checks} checks, {failures} failed")
sys.exit(1 if failures else 0)
