"""Structured output and tool calls of `exsa serve` on a real model
(SmolLM2-135M-Instruct), driven by the official `openai` Python package and
checked with `jsonschema` (Draft 2020-12, formats checked). Run by
tests/server_structured_py.sh:
  python openai_structured.py        (env: BASE_URL MODEL)
Every named check prints PASS or FAIL; exits 1 if any failed.

The model is small and samples at temperature 0.7, so an answer may run out
of max_tokens ("length"): only answers that stop are validated, and most of
them must stop. A stopped answer is the grammar's whole document, so it must
validate, whatever the model chose to write.
"""
import datetime
import importlib.metadata
import json
import os
import re
import sys
import uuid

import openai
from jsonschema import Draft202012Validator, FormatChecker

BASE = os.environ["BASE_URL"]
MODEL = os.environ["MODEL"]
SEEDS = [int(s) for s in os.environ.get("SEEDS", "11 22 33").split()]
client = openai.OpenAI(base_url=BASE, api_key="sk-no-key-required", max_retries=0, timeout=300)
counts = {"pass": 0, "fail": 0}


def show(v, n=500):
    try:
        s = json.dumps(v, default=lambda o: getattr(o, "model_dump", lambda: str(o))())
    except Exception:  # noqa: BLE001 - anything printable will do
        s = repr(v)
    return s if len(s) <= n else s[:n] + "..."


def check(cond, name, detail=None):
    """One named check: prints PASS or FAIL (with detail, a value or a callable)."""
    if cond:
        counts["pass"] += 1
        print(f"PASS: {name}")
    else:
        counts["fail"] += 1
        d = detail() if callable(detail) else detail
        print(f"FAIL: {name}" + ("" if d is None else f": {d}"), file=sys.stderr)
    sys.stdout.flush()
    return bool(cond)


def section(name):
    """Runs one group of checks; an exception there is one FAIL, not the end."""

    def wrap(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - any exception fails the section
            body = getattr(e, "body", None)
            check(False, f"{name}: no unexpected exception",
                  f"{type(e).__name__}: {e}" + (f" {show(body)}" if body else ""))
        return fn

    return wrap


# ---- formats: jsonschema checks date-time only with an optional package,
# so the RFC 3339 / RFC 4122 shapes are checked here, never skipped ----
FORMATS = FormatChecker()
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(s):
    if not isinstance(s, str):
        return True
    if not RFC3339.match(s):
        return False
    # leap second 60 is valid RFC 3339 but not for datetime: map it to 59
    datetime.datetime.fromisoformat(re.sub(r":60(?=[.Zz+-]|$)", ":59", s).replace("z", "Z"))
    return True


@FORMATS.checks("date", raises=ValueError)
def _date(s):
    if not isinstance(s, str):
        return True
    if not re.match(r"^\d{4}-\d{2}-\d{2}$", s):
        return False
    datetime.date.fromisoformat(s)
    return True


@FORMATS.checks("uuid", raises=ValueError)
def _uuid(s):
    if not isinstance(s, str):
        return True
    if not re.match(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", s):
        return False
    uuid.UUID(s)
    return True


def validate(schema, doc):
    """None when doc is valid under schema, else the first error, briefly."""
    errs = sorted(Draft202012Validator(schema, format_checker=FORMATS).iter_errors(doc),
                  key=lambda e: list(e.absolute_path))
    if not errs:
        return None
    e = errs[0]
    return f"{e.message} at /{'/'.join(str(p) for p in e.absolute_path)} (schema {'/'.join(map(str, e.schema_path))})"


def parse_and_validate(schema, text):
    """(doc, None) or (None, why not)."""
    try:
        doc = json.loads(text)
    except (TypeError, ValueError) as e:
        return None, f"not JSON ({e}): {show(text)}"
    why = validate(schema, doc)
    return (doc, None) if why is None else (None, f"{why}; document {show(doc)}")


def user(text, system=None):
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def stream_text(**kw):
    """Streams a chat completion: (assembled content, finish_reason, chunks)."""
    parts, fin, n = [], None, 0
    for ch in client.chat.completions.create(stream=True, **kw):
        n += 1
        for c in ch.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                fin = c.finish_reason
    return "".join(parts), fin, n


# ---- the schemas: things people ask a model to fill in ----
SCHEMAS = {
    "person": ("Invent a person: name, age, email address, job and a few hobbies.", {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "email": {"type": "string", "pattern": "^[a-z0-9._]{1,20}@[a-z0-9]{1,15}\\.(com|org|net)$"},
            "occupation": {"type": "string", "maxLength": 40},
            "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 4},
        },
        "required": ["name", "age", "email", "occupation", "hobbies"],
        "additionalProperties": False,
    }),
    "address": ("Write the postal address of a museum in Europe.", {
        "type": "object",
        "properties": {
            "street": {"type": "string", "minLength": 1, "maxLength": 60},
            "city": {"type": "string", "minLength": 1, "maxLength": 40},
            "postal_code": {"type": "string", "pattern": "^[0-9A-Z]{3,5}( ?[0-9A-Z]{3})?$"},
            "country": {"enum": ["FR", "DE", "IT", "ES", "GB", "NL", "NO", "SE", "PL", "AT"],
                        "description": "ISO 3166-1 alpha-2"},
        },
        "required": ["street", "city", "postal_code", "country"],
        "additionalProperties": False,
    }),
    "invoice": ("Make an invoice for a bakery order: some bread, cakes and coffee.", {
        "type": "object",
        "properties": {
            "invoice_number": {"type": "string", "pattern": "^INV-[0-9]{4}$"},
            "customer": {"type": "string", "maxLength": 40},
            "items": {
                "type": "array", "minItems": 1, "maxItems": 4,
                "items": {
                    "type": "object",
                    "properties": {
                        "description": {"type": "string", "maxLength": 30},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 50},
                        "unit_price": {"type": "number"},
                    },
                    "required": ["description", "quantity", "unit_price"],
                    "additionalProperties": False,
                },
            },
            "currency": {"enum": ["EUR", "USD", "GBP"]},
            "total": {"type": "number"},
        },
        "required": ["invoice_number", "customer", "items", "currency", "total"],
        "additionalProperties": False,
    }),
    "event": ("Schedule a team meeting next week with two colleagues.", {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 50},
            "start": {"type": "string", "format": "date-time"},
            "end": {"type": "string", "format": "date-time"},
            "location": {"type": "string", "maxLength": 40},
            "attendees": {"type": "array", "maxItems": 3,
                          "items": {"type": "string", "maxLength": 30}},
            "all_day": {"type": "boolean"},
        },
        "required": ["title", "start", "end", "attendees", "all_day"],
        "additionalProperties": False,
    }),
    "comment_thread": ("Write a short forum thread about a broken bicycle, with replies.", {
        "$defs": {
            "comment": {
                "type": "object",
                "properties": {
                    "author": {"type": "string", "minLength": 1, "maxLength": 20},
                    "text": {"type": "string", "maxLength": 60},
                    "replies": {"type": "array", "items": {"$ref": "#/$defs/comment"}, "maxItems": 2},
                },
                # replies optional: with them required this model nests
                # replies to replies until max_tokens, every seed
                "required": ["author", "text"],
                "additionalProperties": False,
            },
        },
        "$ref": "#/$defs/comment",
    }),
    "classification": ("Classify the sentiment of this review: 'The hotel room was clean, "
                       "but the staff were rude and breakfast was cold.'", {
        "type": "object",
        "properties": {
            "label": {"enum": ["positive", "negative", "neutral", "mixed"]},
            "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
            "reasons": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
        },
        "required": ["label", "confidence", "reasons"],
        "additionalProperties": False,
    }),
    "uuids": ("Give me a few random UUIDs for database keys.", {
        "type": "array",
        "items": {"type": "string", "format": "uuid"},
        "minItems": 1,
        "maxItems": 5,
    }),
    "product": ("Describe a product for an online shop: a wooden desk.", {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 40},
            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3,6}$"},
            "price": {"type": "number"},
            "in_stock": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4},
            "dimensions": {
                "type": "object",
                "properties": {"width_cm": {"type": "integer", "minimum": 1, "maximum": 500},
                               "height_cm": {"type": "integer", "minimum": 1, "maximum": 500}},
                "required": ["width_cm", "height_cm"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "price"],
        "additionalProperties": False,
    }),
}
STREAMED = ["person", "invoice", "comment_thread", "uuids"]
MAX_TOKENS = {"comment_thread": 1000}  # others: 600
SYSTEM = "You are a helpful assistant that answers in JSON."


def schema_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


def structured_tests():
    for name, (_, schema) in SCHEMAS.items():
        Draft202012Validator.check_schema(schema)  # the test's own schemas are valid
    total = {"n": 0, "stop": 0}

    for name, (prompt, schema) in SCHEMAS.items():
        @section(f"json_schema {name}")
        def _(name=name, prompt=prompt, schema=schema):
            stops = 0
            for seed in SEEDS:
                r = client.chat.completions.create(
                    model=MODEL, messages=user(prompt, SYSTEM), max_tokens=MAX_TOKENS.get(name, 600),
                    temperature=0.7, seed=seed, response_format=schema_format(name, schema))
                c = r.choices[0]
                total["n"] += 1
                check(c.finish_reason in ("stop", "length"), f"json_schema {name} seed {seed}: finish_reason",
                      lambda: show(c.finish_reason))
                if c.finish_reason != "stop":
                    print(f"  note: json_schema {name} seed {seed}: {c.finish_reason} after "
                          f"{r.usage.completion_tokens} tokens")
                    continue
                stops += 1
                total["stop"] += 1
                doc, why = parse_and_validate(schema, c.message.content)
                check(why is None, f"json_schema {name} seed {seed}: content validates", why)
                check(c.message.tool_calls is None, f"json_schema {name} seed {seed}: no tool_calls",
                      lambda: show(c.message))
            check(stops >= 1, f"json_schema {name}: at least one of {len(SEEDS)} answers stopped",
                  f"{stops} stopped")
            print(f"  json_schema {name}: {stops}/{len(SEEDS)} stopped")

    check(total["stop"] * 2 > total["n"], "json_schema: most answers stopped",
          f"{total['stop']}/{total['n']}")
    print(f"  json_schema: {total['stop']}/{total['n']} answers stopped (all of them validated or FAILed above)")

    for name in STREAMED:
        @section(f"json_schema {name} streamed")
        def _(name=name):
            prompt, schema = SCHEMAS[name]
            seed = SEEDS[0] + 100
            text, fin, n = stream_text(model=MODEL, messages=user(prompt, SYSTEM),
                                       max_tokens=MAX_TOKENS.get(name, 600),
                                       temperature=0.7, seed=seed, response_format=schema_format(name, schema))
            check(fin in ("stop", "length"), f"json_schema {name} streamed: finish_reason", show(fin))
            check(n >= 3, f"json_schema {name} streamed: several chunks", f"{n} chunks")
            if fin == "stop":
                _, why = parse_and_validate(schema, text)
                check(why is None, f"json_schema {name} streamed: the assembled content validates", why)
            else:
                print(f"  note: json_schema {name} streamed: {fin}")

    @section("json_schema: streamed and plain agree for one seed")
    def _():
        prompt, schema = SCHEMAS["classification"]
        kw = dict(model=MODEL, messages=user(prompt, SYSTEM), max_tokens=300, temperature=0.7, seed=7,
                  response_format=schema_format("classification", schema))
        plain = client.chat.completions.create(**kw).choices[0].message.content
        text, _, _ = stream_text(**kw)
        check(text == plain, "json_schema classification seed 7: streamed content equals the plain one",
              lambda: f"plain {show(plain)}, streamed {show(text)}")

    @section("json_object")
    def _():
        stops = 0
        for seed in SEEDS:
            r = client.chat.completions.create(
                model=MODEL, messages=user("List three fruits and their colours as JSON.", SYSTEM),
                max_tokens=400, temperature=0.7, seed=seed, response_format={"type": "json_object"})
            c = r.choices[0]
            if c.finish_reason != "stop":
                print(f"  note: json_object seed {seed}: {c.finish_reason}")
                continue
            stops += 1
            try:
                doc = json.loads(c.message.content)
            except ValueError as e:
                doc = e
            check(isinstance(doc, dict), f"json_object seed {seed}: the content parses as a JSON object",
                  lambda: show(c.message.content))
        check(stops >= 1, "json_object: at least one answer stopped", f"{stops}/{len(SEEDS)}")
        text, fin, _ = stream_text(model=MODEL, messages=user("Describe a cat as JSON.", SYSTEM), max_tokens=400,
                                   temperature=0.7, seed=5, response_format={"type": "json_object"})
        if fin == "stop":
            try:
                doc = json.loads(text)
            except ValueError as e:
                doc = e
            check(isinstance(doc, dict), "json_object streamed: the assembled content is a JSON object",
                  lambda: show(text))
        else:
            print(f"  note: json_object streamed: {fin}")

    @section("llama-server fields")
    def _():
        prompt, schema = SCHEMAS["classification"]
        r = client.chat.completions.create(model=MODEL, messages=user(prompt, SYSTEM), max_tokens=300,
                                           temperature=0.7, seed=3, extra_body={"json_schema": schema})
        if r.choices[0].finish_reason == "stop":
            _, why = parse_and_validate(schema, r.choices[0].message.content)
            check(why is None, "chat with extra_body json_schema: content validates", why)
        r = client.chat.completions.create(model=MODEL, messages=user("Is the sky blue? Answer yes or no."),
                                           max_tokens=8, temperature=0.7, seed=3,
                                           extra_body={"grammar": 'root ::= ("yes" | "no") "."'})
        check(r.choices[0].message.content in ("yes.", "no."), "chat with extra_body grammar: yes. or no.",
              lambda: show(r.choices[0].message.content))

    @section("chat.completions.parse (pydantic)")
    def _():
        from typing import List, Optional

        import pydantic

        class Ingredient(pydantic.BaseModel):
            name: str = pydantic.Field(max_length=30)
            grams: int = pydantic.Field(ge=1, le=2000)

        class Recipe(pydantic.BaseModel):
            title: str = pydantic.Field(max_length=40)
            servings: int = pydantic.Field(ge=1, le=12)
            ingredients: List[Ingredient] = pydantic.Field(max_length=4)
            vegetarian: bool
            note: Optional[str] = pydantic.Field(max_length=40)

        stopped = 0
        for seed in SEEDS:
            r = client.chat.completions.parse(model=MODEL, messages=user("Give me a pancake recipe.", SYSTEM),
                                              max_tokens=600, temperature=0.7, seed=seed, response_format=Recipe)
            c = r.choices[0]
            if c.finish_reason != "stop":
                print(f"  note: parse seed {seed}: {c.finish_reason}")
                continue
            stopped += 1
            check(isinstance(c.message.parsed, Recipe), f"parse(response_format=Recipe) seed {seed}: parsed",
                  lambda: show(c.message))
        check(stopped >= 1, "parse(response_format=Recipe): at least one answer stopped", f"{stopped}/{len(SEEDS)}")


# ---- tools ----
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "minLength": 1, "maxLength": 40,
                             "description": "City name, e.g. Paris"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    }},
    {"type": "function", "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic operation on two numbers",
        "parameters": {
            "type": "object",
            "properties": {
                "operation": {"enum": ["add", "subtract", "multiply", "divide"]},
                "a": {"type": "number"},
                "b": {"type": "number"},
            },
            "required": ["operation", "a", "b"],
            "additionalProperties": False,
        },
    }},
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = "What is the weather in Oslo in celsius, and what is 12 times 7?"


def call_problem(call, allowed=None):
    """None when a tool call (SDK object or dict) is well formed and its
    arguments validate against its tool's parameters, else why not."""
    if hasattr(call, "model_dump"):
        call = call.model_dump()
    if call.get("type") != "function":
        return f"type {show(call.get('type'))}"
    if not isinstance(call.get("id"), str) or not call["id"]:
        return f"id {show(call.get('id'))}"
    fn = call.get("function") or {}
    name = fn.get("name")
    names = allowed or list(PARAMS)
    if name not in names:
        return f"name {show(name)} is not among {names}"
    try:
        args = json.loads(fn.get("arguments"))
    except (TypeError, ValueError) as e:
        return f"arguments are not JSON ({e}): {show(fn.get('arguments'))}"
    why = validate(PARAMS[name], args)
    return None if why is None else f"{name} arguments: {why}; {show(args)}"


def calls_ok(calls, what, allowed=None):
    check(isinstance(calls, list) and len(calls) >= 1, f"{what}: at least one tool call", lambda: show(calls))
    for i, c in enumerate(calls or []):
        why = call_problem(c, allowed)
        check(why is None, f"{what}: call {i} is valid", why)
    ids = [c.id if hasattr(c, "id") else c["id"] for c in calls or []]
    check(len(set(ids)) == len(ids), f"{what}: call ids are distinct", lambda: show(ids))


def stream_calls(what, **kw):
    """Streams a chat completion with tools and assembles its tool_call
    deltas as a client does: (calls, content, finish_reason, argument pieces).
    Checks the delta protocol: the first delta of a call carries its index,
    id, type and name; later ones only more arguments."""
    calls, content, fin, pieces = {}, [], None, 0
    for ch in client.chat.completions.create(stream=True, **kw):
        for c in ch.choices:
            if c.finish_reason:
                fin = c.finish_reason
            if c.delta.content:
                content.append(c.delta.content)
            for d in c.delta.tool_calls or []:
                if d.index not in calls:
                    check(isinstance(d.index, int) and d.index == len(calls),
                          f"{what}: call indexes count up from 0", lambda: show(d))
                    check(bool(d.id) and d.type == "function" and d.function is not None and bool(d.function.name),
                          f"{what}: the first delta of call {d.index} has id, type and name", lambda: show(d))
                    calls[d.index] = {"id": d.id, "type": d.type,
                                      "function": {"name": d.function.name if d.function else None,
                                                   "arguments": ""}}
                else:
                    check(d.id is None and (d.function is None or d.function.name is None),
                          f"{what}: a later delta of call {d.index} repeats no id or name", lambda: show(d))
                if d.function is not None and d.function.arguments:
                    calls[d.index]["function"]["arguments"] += d.function.arguments
                    pieces += 1
    return [calls[i] for i in sorted(calls)], "".join(content), fin, pieces


def tool_tests():
    Draft202012Validator.check_schema({"$defs": PARAMS})
    base = dict(model=MODEL, tools=TOOLS, max_tokens=400, temperature=0.7)

    @section("tools required")
    def _():
        for seed in SEEDS:
            r = client.chat.completions.create(messages=user(ASK), tool_choice="required", seed=seed, **base)
            c = r.choices[0]
            what = f"tool_choice required seed {seed}"
            if c.finish_reason == "length":
                print(f"  note: {what}: length")
                continue
            check(c.finish_reason == "tool_calls", f"{what}: finish_reason tool_calls", show(c.finish_reason))
            calls_ok(c.message.tool_calls, what)
            check(not c.message.content, f"{what}: no content beside the calls", lambda: show(c.message.content))

    @section("tools named")
    def _():
        for seed in SEEDS[:2]:
            r = client.chat.completions.create(
                messages=user(ASK), tool_choice={"type": "function", "function": {"name": "calculator"}},
                seed=seed, **base)
            c = r.choices[0]
            what = f"tool_choice named calculator seed {seed}"
            if c.finish_reason == "length":
                print(f"  note: {what}: length")
                continue
            check(c.finish_reason == "tool_calls", f"{what}: finish_reason tool_calls", show(c.finish_reason))
            calls_ok(c.message.tool_calls, what, allowed=["calculator"])
            check(len(c.message.tool_calls or []) == 1, f"{what}: exactly one call",
                  lambda: show(c.message.tool_calls))

    @section("tools none")
    def _():
        for seed in SEEDS[:2]:
            r = client.chat.completions.create(messages=user(ASK), tool_choice="none", seed=seed,
                                               **{**base, "max_tokens": 60})
            c = r.choices[0]
            what = f"tool_choice none seed {seed}"
            check(c.message.tool_calls is None, f"{what}: no tool_calls", lambda: show(c.message.tool_calls))
            check(isinstance(c.message.content, str) and c.message.content.strip(), f"{what}: plain content",
                  lambda: show(c.message))
            check(c.finish_reason in ("stop", "length"), f"{what}: finish_reason stop|length",
                  show(c.finish_reason))

    @section("tools auto")
    def _():
        r = client.chat.completions.create(messages=user("Tell me a joke about cats."), seed=SEEDS[0], **base)
        c = r.choices[0]
        if c.finish_reason == "tool_calls":
            calls_ok(c.message.tool_calls, "tool_choice auto")
        elif c.finish_reason == "stop":
            t = c.message.content
            check(isinstance(t, str) and t.strip() and not t.lstrip().startswith('{"response"'),
                  "tool_choice auto: an answer is plain text (the generic format's wrapper removed)",
                  lambda: show(c.message))

    @section("parallel_tool_calls false")
    def _():
        for seed in SEEDS:
            r = client.chat.completions.create(messages=user(ASK), tool_choice="required",
                                               parallel_tool_calls=False, seed=seed, **base)
            c = r.choices[0]
            what = f"parallel_tool_calls false seed {seed}"
            if c.finish_reason == "length":
                print(f"  note: {what}: length")
                continue
            check(c.finish_reason == "tool_calls", f"{what}: finish_reason tool_calls", show(c.finish_reason))
            check(len(c.message.tool_calls or []) == 1, f"{what}: exactly one call",
                  lambda: show(c.message.tool_calls))
            calls_ok(c.message.tool_calls, what)

    @section("tools streamed")
    def _():
        total_pieces = 0
        for seed in SEEDS:
            what = f"tools streamed seed {seed}"
            calls, content, fin, pieces = stream_calls(what, messages=user(ASK), tool_choice="required",
                                                       seed=seed, **base)
            total_pieces += pieces
            if fin == "length":
                print(f"  note: {what}: length")
                continue
            check(fin == "tool_calls", f"{what}: finish_reason tool_calls", show(fin))
            calls_ok(calls, what)
            check(not content, f"{what}: no content beside the calls", show(content))
            # the same request unstreamed gives the same calls
            r = client.chat.completions.create(messages=user(ASK), tool_choice="required", seed=seed, **base)
            plain = [(t.function.name, t.function.arguments) for t in r.choices[0].message.tool_calls or []]
            check(plain == [(t["function"]["name"], t["function"]["arguments"]) for t in calls],
                  f"{what}: the assembled calls equal the unstreamed ones",
                  lambda: f"plain {show(plain)}, streamed {show(calls)}")
        print(f"  tools streamed: {total_pieces} argument pieces in all")
        what = "tools streamed named, parallel_tool_calls false"
        calls, _, fin, _ = stream_calls(what, messages=user(ASK), parallel_tool_calls=False, seed=5,
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}}, **base)
        if fin != "length":
            calls_ok(calls, what, allowed=["get_weather"])
            check(len(calls) == 1, f"{what}: exactly one call", lambda: show(calls))

    def round_trip(stream):
        what = "round trip" + (" streamed" if stream else "")
        msgs = user("What is the weather in Oslo? Use celsius.")
        first = dict(messages=msgs, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                     parallel_tool_calls=False, seed=SEEDS[0], **base)
        if stream:
            calls, _, fin, _ = stream_calls(what, **first)
        else:
            c = client.chat.completions.create(**first).choices[0]
            fin, calls = c.finish_reason, [t.model_dump() for t in c.message.tool_calls or []]
        check(fin == "tool_calls" and len(calls) == 1, f"{what}: the model calls get_weather",
              lambda: f"{fin} {show(calls)}")
        if not calls:
            return
        calls_ok(calls, f"{what}: first answer", allowed=["get_weather"])
        msgs = msgs + [
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": calls[0]["id"],
             "content": json.dumps({"temperature": -3, "unit": "celsius", "conditions": "light snow"})},
        ]
        # then: tools on offer; tool_choice "none"; no tools at all (a
        # client's final request often drops them)
        for choice in ("auto", "none", None):
            w = f"{what}, then " + (f"tool_choice {choice}" if choice else "no tools")
            kw = dict(messages=msgs, seed=SEEDS[1 % len(SEEDS)], **{**base, "max_tokens": 120})
            if choice:
                kw["tool_choice"] = choice
            else:
                del kw["tools"]
            if stream:
                calls2, content, fin2, _ = stream_calls(w, **kw)
            else:
                r = client.chat.completions.create(**kw)  # raises on a non-200
                c = r.choices[0]
                calls2 = [t.model_dump() for t in c.message.tool_calls or []]
                content, fin2 = c.message.content, c.finish_reason
            check(fin2 in ("stop", "length", "tool_calls"), f"{w}: the second answer ends", show(fin2))
            if calls2:
                check(choice == "auto", f"{w}: calls only when allowed", lambda: show(calls2))
                calls_ok(calls2, f"{w}: another call")
            else:
                check(isinstance(content, str) and content.strip(), f"{w}: a text answer", lambda: show(content))
                if fin2 == "stop":
                    check(not content.lstrip().startswith('{"response"'),
                          f"{w}: the text is plain (the generic format's wrapper removed)", lambda: show(content))
            print(f"  {w}: {fin2} {show(calls2 or content, 160)}")

    @section("round trip")
    def _():
        round_trip(False)

    @section("round trip streamed")
    def _():
        round_trip(True)


# ---- errors through the client ----
def expect_bad_request(what, fn, words, param=None):
    try:
        r = fn()
    except openai.BadRequestError as e:
        msg = (e.body or {}).get("message", "") if isinstance(e.body, dict) else str(e)
        check(e.status_code == 400, f"{what}: HTTP 400", e.status_code)
        for w in words:
            check(w in msg, f"{what}: the message names {w}", show(msg))
        if param is not None:
            check(isinstance(e.param, str) and e.param.startswith(param), f"{what}: param names {param}",
                  show(e.body))
        return
    except Exception as e:  # noqa: BLE001
        check(False, f"{what}: BadRequestError", f"got {type(e).__name__}: {e}")
        return
    check(False, f"{what}: BadRequestError", f"got a success: {show(r)}")


def error_tests():
    msgs = user("Hi")

    @section("errors")
    def _():
        bad = {"type": "object", "properties": {"a": {"type": "string", "not": {"const": "x"}}},
               "required": ["a"]}
        expect_bad_request("json_schema with 'not'", lambda: client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=8, response_format=schema_format("bad", bad)),
            ["'not'", "#/properties/a"], param="response_format")
        expect_bad_request("json_schema with 'uniqueItems'", lambda: client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=8,
            response_format=schema_format("bad", {"type": "array", "uniqueItems": True})),
            ["uniqueItems"], param="response_format")
        expect_bad_request("json_schema with a dangling $ref", lambda: client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=8,
            response_format=schema_format("bad", {"$ref": "#/$defs/nowhere"})),
            ["#/$defs/nowhere"], param="response_format")
        badtool = [{"type": "function", "function": {"name": "get weather!", "parameters": PARAMS["get_weather"]}}]
        expect_bad_request("tools with an invalid name", lambda: client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=8, tools=badtool), ["name"], param="tools")
        iftool = [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "integer", "multipleOf": 3}}}}}]
        expect_bad_request("tool parameters with 'multipleOf'", lambda: client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=8, tools=iftool), ["multipleOf"], param="tools")
        expect_bad_request("tool_choice naming an unknown function", lambda: client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=8, tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}}), ["tool_choice"], param="tool_choice")
        expect_bad_request("tools with response_format", lambda: client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=8, tools=TOOLS, response_format={"type": "json_object"}),
            ["response_format"], param="tools")


structured_tests()
tool_tests()
error_tests()
print(f"{counts['pass']} checks passed, {counts['fail']} failed; jsonschema "
      f"{importlib.metadata.version('jsonschema')}, openai {openai.__version__}")
sys.exit(1 if counts["fail"] else 0)
