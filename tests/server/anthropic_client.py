"""Drives `exsa serve` with the official `anthropic` Python package, as an
existing Anthropic client would. Run by tests/server_anthropic_py.sh:
  python anthropic_client.py main   (env: BASE_URL MODEL)
  python anthropic_client.py auth   (env: BASE_URL MODEL API_KEY)
The model is a real one (SmolLM2-135M-Instruct): a greedy answer is
checked for content, the stream against the plain reply, stop sequences and
max_tokens against the SDK's typed fields, errors against the SDK's error
classes. Prints every failed check; exits 1 if any.
"""
import os
import sys

import anthropic

MODE = sys.argv[1] if len(sys.argv) > 1 else "main"
BASE = os.environ["BASE_URL"]  # the server root: the SDK adds /v1/messages
MODEL = os.environ["MODEL"]
failures = 0
checks = 0


def fail(what, detail=None):
    global failures
    failures += 1
    print(f"FAIL: {what}" + ("" if detail is None else f": {detail}"), file=sys.stderr)


def check(cond, what, detail=None):
    global checks
    checks += 1
    if not cond:
        fail(what, detail() if callable(detail) else detail)
    return bool(cond)


def eq(got, want, what):
    return check(got == want, what, lambda: f"expected {want!r}, got {got!r}")


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
print(f"{checks} checks, {failures} failed")
sys.exit(1 if failures else 0)
