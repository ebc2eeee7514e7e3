"""Drives `exsa serve` with the official `openai` Python package, as an
existing OpenAI client would. Run by tests/server_openai_py.sh:
  python openai_client.py main   (env: BASE_URL MODEL N_EMBD EXSA_VERSION)
  python openai_client.py auth   (env: BASE_URL MODEL API_KEY)
The model is a real one (SmolLM2-135M-Instruct): besides shapes, counts and
the server agreeing with itself across endpoints, modes and seeds, a greedy
answer is checked for content. Prints every failed check; exits 1 if any.
"""
import base64
import json
import math
import os
import sys
import urllib.error
import urllib.request

import openai
from pycheck import check, eq, fail, show, tally

MODE = sys.argv[1] if len(sys.argv) > 1 else "main"
BASE = os.environ["BASE_URL"]  # .../v1, for the SDK
ROOT = BASE[: -len("/v1")] if BASE.endswith("/v1") else BASE
MODEL = os.environ["MODEL"]


def section(name):
    """Runs one named group of checks; an exception is one failure, not the end."""

    def wrap(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - any exception is a failed section
            body = getattr(e, "body", None)
            fail(f"{name}: unexpected exception", f"{type(e).__name__}: {e}" + (f" {show(body)}" if body else ""))
        return fn

    return wrap


def expect_api_error(what, fn, cls, status, param=None):
    """fn must raise an openai APIStatusError of class cls with status."""
    try:
        r = fn()
    except openai.APIStatusError as e:
        check(isinstance(e, cls), f"{what}: error class",
              lambda: f"expected {cls.__name__}, got {type(e).__name__} (status {e.status_code}, {e})")
        eq(e.status_code, status, f"{what}: status")
        err = e.body  # the SDK keeps the body's "error" object
        check(isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"]
              and all(k in err for k in ("type", "param", "code")),
              f"{what}: OpenAI error shape {{message,type,param,code}}", lambda: show(err))
        if param is not None:
            check(isinstance(err, dict) and isinstance(err.get("param"), str) and err["param"].startswith(param),
                  f"{what}: error.param names {param}", lambda: show(err))
            eq(e.param, err.get("param") if isinstance(err, dict) else None, f"{what}: the SDK's e.param")
        return e
    except Exception as e:  # noqa: BLE001
        fail(what, f"expected {cls.__name__} {status}, got {type(e).__name__}: {e}")
        return None
    fail(what, f"expected {cls.__name__} {status}, got a success: {show(r)}")
    return None


def raw(method, path, body=None, headers=None):
    """A request without the SDK: (status, parsed JSON or text, headers)."""
    data = None if body is None else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(ROOT + path, data=data, method=method, headers=h)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(req, timeout=120) as res:
            status, text, hdrs = res.status, res.read().decode(), res.headers
    except urllib.error.HTTPError as e:
        status, text, hdrs = e.code, e.read().decode(), e.headers
    try:
        return status, json.loads(text), hdrs
    except ValueError:
        return status, text, hdrs


def new_client(key):
    return openai.OpenAI(base_url=BASE, api_key=key, max_retries=0, timeout=300)


client = new_client(os.environ.get("API_KEY") or "sk-no-key-required")


def user(content):
    return [{"role": "user", "content": content}]


# ignore_eos is llama-server's body field: the SDK passes it through extra_body.
NO_EOS = {"ignore_eos": True}


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def first_ascii_pair(text):
    """A 2-character printable ASCII piece that first occurs after the start."""
    for i in range(1, len(text) - 1):
        s = text[i:i + 2]
        if all(0x21 <= ord(c) <= 0x7E for c in s) and text.find(s) == i:
            return s
    return None


def main_tests():
    n_embd = int(os.environ["N_EMBD"])
    version = os.environ["EXSA_VERSION"]
    state = {}

    @section("models.list / retrieve")
    def _():
        page = client.models.list()
        ids = [m.id for m in page.data]
        check(MODEL in ids, "models.list() contains the served model (named by its file name)",
              lambda: f"ids {show(ids)}, want {MODEL}")
        m = next((x for x in page.data if x.id == MODEL), None)
        if m:
            eq(m.object, "model", "models.list(): object")
            eq(m.owned_by, "exsa", "models.list(): owned_by")
            check(isinstance(m.created, int) and m.created > 1600000000, "models.list(): created is a unix time",
                  lambda: show(m))
        r = client.models.retrieve(MODEL)
        eq(r.id, MODEL, "models.retrieve(): id")
        eq(r.object, "model", "models.retrieve(): object")
        expect_api_error("models.retrieve of an unknown id", lambda: client.models.retrieve("no-such-model"),
                         openai.NotFoundError, 404)

    @section("chat: a real answer")
    def _():
        # With a system message of our own: without one, the template puts in
        # SmolLM's default, after which this 4-bit 135M model's greedy answer
        # to this question wanders off.
        system = [{"role": "system", "content": "You are a helpful assistant."}]
        r = client.chat.completions.create(model=MODEL, messages=system + user("What is the capital of France?"),
                                           max_tokens=32, temperature=0)
        text = r.choices[0].message.content
        check("Paris" in text, "greedy chat: 'What is the capital of France?' is answered with Paris",
              lambda: show(text))
        r2 = client.chat.completions.create(model=MODEL, messages=system + user("What is 2+2?"), max_tokens=32,
                                            temperature=0)
        a2 = r2.choices[0].message.content.lower()
        check("4" in a2 or "four" in a2, "greedy chat: 'What is 2+2?' is answered with 4 (or four)",
              lambda: show(r2.choices[0].message.content))
        check(r.choices[0].finish_reason in ("stop", "length"), "chat: finish_reason stop|length",
              lambda: show(r.choices[0].finish_reason))
        if r.choices[0].finish_reason == "stop":
            check(r.usage.completion_tokens < 32, "chat: an answer that stopped used fewer than max_tokens",
                  lambda: show(r.usage))
        eq(r.system_fingerprint, f"exsa-{version}", "chat: system_fingerprint carries the version")

    @section("chat: predicted outputs and speculative decoding")
    def _():
        # The answer itself as `prediction` (OpenAI's predicted outputs): the
        # same answer, most of it taken from the prediction; n-gram guessing
        # through extra_body gives the same answer too.
        msgs = user("Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the river bank.")
        base = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=40, temperature=0)
        text = base.choices[0].message.content
        d0 = base.usage.completion_tokens_details
        check(d0 is not None and d0.accepted_prediction_tokens == 0 and d0.rejected_prediction_tokens == 0,
              "no prediction: accepted/rejected_prediction_tokens are 0", lambda: show(base.usage))
        r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=40, temperature=0,
                                           prediction={"type": "content", "content": text},
                                           # at least 4 guesses a step whatever the step timings
                                           extra_body={"speculative": {"n_min": 4}})
        eq(r.choices[0].message.content, text, "prediction: the same answer")
        d = r.usage.completion_tokens_details
        check(d is not None and d.accepted_prediction_tokens * 2 > r.usage.completion_tokens,
              "prediction = the answer: most completion tokens were accepted predictions",
              lambda: show(r.usage))
        r2 = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=40, temperature=0,
                                            extra_body={"speculative": True})
        eq(r2.choices[0].message.content, text, "speculative n-gram guessing: the same answer")

    chat_req = dict(model=MODEL, messages=user("Hello there, how are you?"), max_tokens=8, temperature=0,
                    extra_body=NO_EOS)

    @section("chat non-stream")
    def _():
        r = client.chat.completions.create(**chat_req)
        eq(r.object, "chat.completion", "chat: object")
        check(isinstance(r.id, str) and r.id.startswith("chatcmpl-"), "chat: id starts with chatcmpl-",
              lambda: show(r.id))
        check(isinstance(r.created, int), "chat: created is an integer")
        eq(r.model, MODEL, "chat: model")
        eq(len(r.choices), 1, "chat: one choice")
        c = r.choices[0]
        eq(c.index, 0, "chat: choices[0].index")
        eq(c.message.role, "assistant", "chat: message.role")
        check(isinstance(c.message.content, str) and c.message.content, "chat: message.content is a non-empty string",
              lambda: show(c.message))
        eq(c.finish_reason, "length", "chat: finish_reason with ignore_eos and max_tokens 8")
        eq(r.usage.completion_tokens, 8, "chat: usage.completion_tokens = max_tokens (ignore_eos)")
        check(r.usage.prompt_tokens > 0, "chat: usage.prompt_tokens > 0", lambda: show(r.usage))
        eq(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens, "chat: total_tokens")
        state["greedy"] = r
        again = client.chat.completions.create(**chat_req)
        eq(again.choices[0].message.content, c.message.content, "chat: the same greedy request twice, the same text")
        check(again.id != r.id, "chat: each completion has its own id", lambda: show([again.id, r.id]))

    greedy = state.get("greedy")
    greedy_text = greedy.choices[0].message.content if greedy else None

    @section("chat stream with include_usage")
    def _():
        chunks = list(client.chat.completions.create(**chat_req, stream=True,
                                                     stream_options={"include_usage": True}))
        if not check(len(chunks) >= 2, "chat stream: at least 2 chunks", lambda: show(chunks)):
            return
        eq(len({c.id for c in chunks}), 1, "chat stream: one id over the chunks")
        check(chunks[0].id.startswith("chatcmpl-"), "chat stream: id starts with chatcmpl-", chunks[0].id)
        check(all(c.object == "chat.completion.chunk" for c in chunks), "chat stream: object chat.completion.chunk")
        check(all(c.model == MODEL for c in chunks), "chat stream: model in every chunk")
        eq(chunks[0].choices[0].delta.role if chunks[0].choices else None, "assistant",
           "chat stream: the first delta has role assistant")
        last = chunks[-1]
        eq(last.choices, [], "chat stream: the usage chunk has no choices")
        check(last.usage is not None and last.usage.completion_tokens == 8, "chat stream: usage.completion_tokens 8",
              lambda: show(last.usage))
        check(all(c.usage is None for c in chunks[:-1]), "chat stream: only the last chunk has usage")
        with_choices = [c for c in chunks if c.choices]
        eq(with_choices[-1].choices[0].finish_reason, "length", "chat stream: the last choice chunk has finish_reason")
        check(all(c.choices[0].finish_reason is None for c in with_choices[:-1]),
              "chat stream: only the last choice chunk has a finish_reason")
        text = "".join(c.choices[0].delta.content or "" for c in with_choices)
        if greedy:
            eq(text, greedy_text, "chat stream: the deltas put together = the non-streamed content")
            eq(last.usage.prompt_tokens, greedy.usage.prompt_tokens, "chat stream: prompt_tokens = non-stream")

    @section("chat stream without include_usage")
    def _():
        chunks = list(client.chat.completions.create(**chat_req, stream=True))
        check(all(c.usage is None for c in chunks), "chat stream without include_usage: no usage")
        check(chunks and chunks[-1].choices and chunks[-1].choices[0].finish_reason == "length",
              "chat stream without include_usage: the last chunk has finish_reason", lambda: show(chunks[-1:]))
        text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
        if greedy:
            eq(text, greedy_text, "chat stream without include_usage: text = non-stream")

    @section("max_completion_tokens")
    def _():
        req = dict(chat_req)
        del req["max_tokens"]
        r = client.chat.completions.create(**req, max_completion_tokens=3)
        eq(r.usage.completion_tokens, 3, "chat: max_completion_tokens 3 with ignore_eos gives 3 tokens")
        eq(r.choices[0].finish_reason, "length", "chat: max_completion_tokens finish_reason length")
        if greedy:
            check(greedy_text.startswith(r.choices[0].message.content),
                  "chat: the 3-token greedy text is a prefix of the 8-token one",
                  lambda: show([r.choices[0].message.content, greedy_text]))

    comp_req = dict(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, extra_body=NO_EOS)

    @section("completions")
    def _():
        r = client.completions.create(**comp_req)
        eq(r.object, "text_completion", "completions: object")
        check(isinstance(r.id, str) and r.id, "completions: id")
        eq(r.model, MODEL, "completions: model")
        eq(len(r.choices), 1, "completions: one choice")
        eq(r.choices[0].index, 0, "completions: index")
        eq(r.choices[0].finish_reason, "length", "completions: finish_reason")
        eq(r.usage.completion_tokens, 8, "completions: completion_tokens")
        eq(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens, "completions: total_tokens")
        eq(r.system_fingerprint, f"exsa-{version}", "completions: system_fingerprint")
        state["comp"] = r
        # The native API generates the same text for the same prompt.
        st, j, _h = raw("POST", "/v1/generate", {"prompt": comp_req["prompt"], "max_tokens": 8, "temperature": 0,
                                                 "ignore_eos": True})
        eq(st, 200, "/v1/generate status")
        eq(j.get("text") if isinstance(j, dict) else j, r.choices[0].text,
           "completions text = /v1/generate text (greedy)")
        # A list of two prompts: two choices, the first as alone.
        two = client.completions.create(**{**comp_req, "prompt": ["Once upon a time", "The weather today"]})
        by_index = sorted(two.choices, key=lambda c: c.index)
        eq([c.index for c in by_index], [0, 1], "completions: two prompts, choices 0 and 1")
        eq(by_index[0].text, r.choices[0].text, "completions: the first prompt of a list gives its text alone")
        eq(two.usage.completion_tokens, 16, "completions: completion_tokens summed over the prompts")

    @section("completions stream")
    def _():
        comp = state.get("comp")
        chunks = list(client.completions.create(**comp_req, stream=True, stream_options={"include_usage": True}))
        check(all(c.object == "text_completion" for c in chunks), "completions stream: object text_completion")
        eq(len({c.id for c in chunks}), 1, "completions stream: one id")
        with_choices = [c for c in chunks if c.choices]
        if comp:
            eq("".join(c.choices[0].text for c in with_choices), comp.choices[0].text,
               "completions stream: the pieces put together = the non-streamed text")
        eq(with_choices[-1].choices[0].finish_reason if with_choices else None, "length",
           "completions stream: finish_reason")
        last = chunks[-1]
        check(not last.choices and last.usage and last.usage.completion_tokens == 8,
              "completions stream: a usage chunk with no choices", lambda: show(last))

    @section("n = 2")
    def _():
        req = dict(model=MODEL, messages=user("Pick a word"), max_tokens=8, temperature=1, seed=7, n=2,
                   extra_body=NO_EOS)
        r = client.chat.completions.create(**req)
        if not eq(len(r.choices), 2, "chat n=2: two choices"):
            return
        eq(sorted(c.index for c in r.choices), [0, 1], "chat n=2: indices 0 and 1")
        check(all(c.finish_reason == "length" and isinstance(c.message.content, str) for c in r.choices),
              "chat n=2: both choices complete", lambda: show(r.choices))
        eq(r.usage.completion_tokens, 16, "chat n=2: completion_tokens counts both choices")
        r2 = client.chat.completions.create(**req)
        texts = lambda x: [c.message.content for c in sorted(x.choices, key=lambda c: c.index)]  # noqa: E731
        eq(texts(r2), texts(r), "chat n=2 with a seed is reproducible")
        g = client.chat.completions.create(**{**req, "temperature": 0})
        if eq(len(g.choices), 2, "chat n=2 greedy: two choices"):
            eq(g.choices[0].message.content, g.choices[1].message.content, "chat n=2 greedy: both choices equal")

    @section("chat logprobs")
    def _():
        r = client.chat.completions.create(**{**chat_req, "max_tokens": 4}, logprobs=True, top_logprobs=3)
        lp = r.choices[0].logprobs
        if not check(lp is not None and isinstance(lp.content, list), "chat logprobs: logprobs.content is a list",
                     lambda: show(lp)):
            return
        eq(len(lp.content), 4, "chat logprobs: one entry per generated token")
        all_bytes = []
        for i, e in enumerate(lp.content):
            ok = (isinstance(e.token, str) and e.logprob <= 0 and len(e.top_logprobs) == 3
                  and all(t.logprob <= 0 for t in e.top_logprobs))
            if not check(ok, f"chat logprobs: entry {i} shape {{token, logprob<=0, top_logprobs[3]}}", lambda: show(e)):
                continue
            tl = [t.logprob for t in e.top_logprobs]
            check(tl[0] >= tl[1] >= tl[2], f"chat logprobs: entry {i} most likely first", lambda: show(tl))
            check(sum(math.exp(x) for x in tl) <= 1.0001, f"chat logprobs: entry {i} probabilities sum <= 1")
            check(abs(e.logprob - tl[0]) < 1e-4 and e.token == e.top_logprobs[0].token,
                  f"chat logprobs: entry {i} greedy token = top_logprobs[0]", lambda: show(e))
            all_bytes.extend(e.bytes or [])
        content = r.choices[0].message.content
        if all(e.bytes is not None for e in lp.content):
            eq(bytes(all_bytes).decode("utf-8", "replace"), content, "chat logprobs: the bytes put together = content")
        if greedy:
            check(greedy_text.startswith(content), "chat logprobs: asking for logprobs keeps the greedy text",
                  lambda: show([content, greedy_text]))
        plain = client.chat.completions.create(**{**chat_req, "max_tokens": 4})
        check(plain.choices[0].logprobs is None, "chat: no logprobs unless asked", lambda: show(plain.choices[0].logprobs))
        entries = []
        for ch in client.chat.completions.create(**{**chat_req, "max_tokens": 4}, logprobs=True, top_logprobs=2,
                                                 stream=True):
            if ch.choices and ch.choices[0].logprobs and ch.choices[0].logprobs.content:
                entries.extend(ch.choices[0].logprobs.content)
        eq(len(entries), 4, "chat stream logprobs: 4 entries over the chunks")
        check(all(len(e.top_logprobs) == 2 for e in entries), "chat stream logprobs: top_logprobs 2 each")

    @section("completions logprobs")
    def _():
        r = client.completions.create(**{**comp_req, "max_tokens": 4}, logprobs=2)
        lp = r.choices[0].logprobs
        if not check(lp is not None and lp.tokens is not None, "completions logprobs: {tokens, token_logprobs, top_logprobs}",
                     lambda: show(lp)):
            return
        eq(len(lp.tokens), 4, "completions logprobs: 4 tokens")
        eq(len(lp.token_logprobs), 4, "completions logprobs: 4 token_logprobs")
        eq(len(lp.top_logprobs or []), 4, "completions logprobs: 4 top_logprobs")
        check(all(x <= 0 for x in lp.token_logprobs), "completions logprobs: logprobs <= 0")
        check(all(1 <= len(o) <= 2 for o in lp.top_logprobs or []), "completions logprobs: top_logprobs of <= 2 tokens",
              lambda: show(lp.top_logprobs))
        eq("".join(lp.tokens), r.choices[0].text, "completions logprobs: the tokens put together = text")

    @section("seed reproducibility")
    def _():
        req = dict(model=MODEL, messages=user("Write something random"), max_tokens=16, temperature=1,
                   extra_body=NO_EOS)
        a = client.chat.completions.create(**req, seed=42).choices[0].message.content
        b = client.chat.completions.create(**req, seed=42).choices[0].message.content
        eq(b, a, "seed 42 twice at temperature 1: the same text")
        texts = {a} | {client.chat.completions.create(**req, seed=s).choices[0].message.content for s in (1, 2, 3)}
        check(len(texts) >= 2, "different seeds at temperature 1 give different texts", lambda: show(sorted(texts)))
        c = client.completions.create(model=MODEL, prompt="abc", max_tokens=16, temperature=1, seed=99,
                                      extra_body=NO_EOS).choices[0].text
        d = client.completions.create(model=MODEL, prompt="abc", max_tokens=16, temperature=1, seed=99,
                                      extra_body=NO_EOS).choices[0].text
        eq(d, c, "completions: seed 99 twice, the same text")

    @section("stop strings")
    def _():
        base = dict(model=MODEL, prompt="The quick brown fox jumps", max_tokens=24, temperature=0, extra_body=NO_EOS)
        full = client.completions.create(**base).choices[0].text
        stop = first_ascii_pair(full)
        if stop is None:
            print(f"  (stop: no usable ASCII piece in {show(full)}; skipped)")
            return
        want = full[: full.index(stop)]
        r = client.completions.create(**base, stop=stop)
        eq(r.choices[0].text, want, f"completions stop {show(stop)}: text cut before the stop string")
        eq(r.choices[0].finish_reason, "stop", "completions stop: finish_reason stop")
        check(r.usage.completion_tokens < 24, "completions stop: fewer tokens than max_tokens", lambda: show(r.usage))
        r2 = client.completions.create(**base, stop=["\u00a7never1", stop, "\u00a7never2", "zzzzzzzzzz"])
        eq(r2.choices[0].text, want, "completions stop list of 4: cut at the matching one")
        st, fr = "", None
        for ch in client.completions.create(**base, stop=[stop], stream=True):
            for c in ch.choices:
                st += c.text or ""
                fr = c.finish_reason or fr
        eq(st, want, "completions stop streamed: the stop string and what follows are never sent")
        eq(fr, "stop", "completions stop streamed: finish_reason stop")
        cfull = client.chat.completions.create(**{**chat_req, "max_tokens": 24}).choices[0].message.content
        cstop = first_ascii_pair(cfull)
        if cstop:
            cr = client.chat.completions.create(**{**chat_req, "max_tokens": 24}, stop=cstop)
            eq(cr.choices[0].message.content, cfull[: cfull.index(cstop)], f"chat stop {show(cstop)}: content cut before it")
            eq(cr.choices[0].finish_reason, "stop", "chat stop: finish_reason stop")

    @section("embeddings")
    def _():
        r = client.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
        eq(r.object, "list", "embeddings: object list")
        eq(len(r.data), 1, "embeddings: one item")
        e = r.data[0]
        eq(e.object, "embedding", "embeddings: data[0].object")
        eq(e.index, 0, "embeddings: data[0].index")
        eq(len(e.embedding), n_embd, f"embeddings: vector length = n_embd {n_embd}")
        check(all(math.isfinite(x) for x in e.embedding), "embeddings: finite values")
        check(abs(norm(e.embedding) - 1) < 1e-3, "embeddings: unit L2 norm", lambda: norm(e.embedding))
        check(r.usage.prompt_tokens > 0, "embeddings: usage.prompt_tokens > 0", lambda: show(r.usage))
        two = client.embeddings.create(model=MODEL, input=["hello world", "something else entirely"],
                                       encoding_format="float")
        s = sorted(two.data, key=lambda x: x.index)
        eq([x.index for x in s], [0, 1], "embeddings: two inputs, indices 0 and 1")
        if len(s) == 2:
            a, b = s[0].embedding, s[1].embedding
            check(len(a) == n_embd and max(abs(x - y) for x, y in zip(a, e.embedding)) < 1e-5,
                  "embeddings: the same input in a list gives the same vector")
            check(max(abs(x - y) for x, y in zip(a, b)) > 1e-4, "embeddings: different inputs, different vectors")
            # Related sentences are closer than unrelated ones (a real model).
            rel = client.embeddings.create(model=MODEL, input=["hello world", "hello there, world"],
                                           encoding_format="float").data
            cos = lambda u, v: sum(x * y for x, y in zip(u, v))  # noqa: E731 - unit vectors
            check(cos(rel[0].embedding, rel[1].embedding) > cos(a, b),
                  "embeddings: 'hello world' is closer to 'hello there, world' than to 'something else entirely'")
            check(two.usage.prompt_tokens > r.usage.prompt_tokens, "embeddings: usage counts both inputs")
        # The SDK's default asks for base64 and decodes it; the raw reply is
        # little-endian float32 of the same vector.
        d = client.embeddings.create(model=MODEL, input="hello world")
        v = d.data[0].embedding
        eq(len(v), n_embd, "embeddings (base64, the SDK default): vector length = n_embd")
        check(max(abs(x - y) for x, y in zip(v, e.embedding)) < 1e-6, "embeddings: base64 = float vector")
        st, j, _h = raw("POST", "/v1/embeddings", {"model": MODEL, "input": "hello world", "encoding_format": "base64"})
        raw_b64 = j["data"][0]["embedding"] if st == 200 else ""
        check(isinstance(raw_b64, str) and len(base64.b64decode(raw_b64)) == 4 * n_embd,
              "embeddings: raw base64 is 4 bytes per dimension", lambda: show(j))

    # ---- errors through the SDK ----
    def no_model(fn, what):
        expect_api_error(what, fn, openai.NotFoundError, 404)

    no_model(lambda: client.chat.completions.create(model="no-such-model", messages=user("hi"), max_tokens=2),
             "unknown model (chat)")
    no_model(lambda: client.completions.create(model="no-such-model", prompt="hi", max_tokens=2),
             "unknown model (completions)")
    no_model(lambda: client.embeddings.create(model="no-such-model", input="hi", encoding_format="float"),
             "unknown model (embeddings)")
    bad = openai.BadRequestError
    expect_api_error("temperature -1", lambda: client.chat.completions.create(
        model=MODEL, messages=user("hi"), temperature=-1), bad, 400, "temperature")
    expect_api_error('temperature "hot"', lambda: client.chat.completions.create(
        model=MODEL, messages=user("hi"), temperature="hot"), bad, 400, "temperature")
    expect_api_error("top_p 2", lambda: client.chat.completions.create(
        model=MODEL, messages=user("hi"), top_p=2), bad, 400, "top_p")
    expect_api_error("max_tokens -5", lambda: client.chat.completions.create(
        model=MODEL, messages=user("hi"), max_tokens=-5), bad, 400, "max_tokens")
    expect_api_error("n 0", lambda: client.chat.completions.create(
        model=MODEL, messages=user("hi"), n=0), bad, 400, "n")
    expect_api_error("messages not a list", lambda: client.chat.completions.create(
        model=MODEL, messages="hi"), bad, 400, "messages")
    expect_api_error("missing messages", lambda: client.post(
        "/chat/completions", body={"model": MODEL, "max_tokens": 2}, cast_to=object), bad, 400, "messages")
    expect_api_error("missing prompt", lambda: client.post(
        "/completions", body={"model": MODEL, "max_tokens": 2}, cast_to=object), bad, 400, "prompt")
    expect_api_error("missing input", lambda: client.post(
        "/embeddings", body={"model": MODEL}, cast_to=object), bad, 400, "input")
    expect_api_error("a prompt longer than the context", lambda: client.completions.create(
        model=MODEL, prompt="hello " * 5000, max_tokens=2), bad, 400, "prompt")

    @section("X-Request-Id through with_raw_response")
    def _():
        resp = client.chat.completions.with_raw_response.create(model=MODEL, messages=user("hi"), max_tokens=1)
        check(resp.headers.get("x-request-id"), "the reply carries an X-Request-Id header",
              lambda: show(dict(resp.headers)))
        eq(resp.parse().object, "chat.completion", "with_raw_response: the parsed reply")


def auth_tests():
    key = os.environ["API_KEY"]

    @section("auth: the right key")
    def _():
        page = client.models.list()
        check(any(m.id == MODEL for m in page.data), "auth: models.list with the right key")
        r = client.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=2)
        eq(r.object, "chat.completion", "auth: chat with the right key")

    auth = openai.AuthenticationError
    expect_api_error("auth: wrong key (chat)", lambda: new_client("wrong-key").chat.completions.create(
        model=MODEL, messages=user("hi"), max_tokens=2), auth, 401)
    expect_api_error("auth: wrong key (models.list)", lambda: new_client("wrong-key").models.list(), auth, 401)
    expect_api_error("auth: the key without its last character", lambda: new_client(key[:-1]).models.list(), auth, 401)
    expect_api_error("auth: the key with one more character", lambda: new_client(key + "x").models.list(), auth, 401)
    st, j, h = raw("POST", "/v1/chat/completions", {"model": MODEL, "messages": user("hi"), "max_tokens": 2})
    eq(st, 401, "auth: no Authorization header -> 401")
    check(isinstance(j, dict) and isinstance(j.get("error"), dict) and j["error"].get("message"),
          "auth: the 401 body has the OpenAI error shape", lambda: show(j))
    check((h.get("WWW-Authenticate") or "").startswith("Bearer"), "auth: 401 with WWW-Authenticate: Bearer")
    st, j, _h = raw("GET", "/health")
    eq(st, 200, "auth: /health needs no key")


try:
    auth_tests() if MODE == "auth" else main_tests()
except Exception as e:  # noqa: BLE001
    fail("unexpected exception", repr(e))
checks, failures = tally()
print(f"openai_client.py {MODE} (openai {openai.__version__}): {checks} checks, {failures} failed")
sys.exit(1 if failures else 0)
