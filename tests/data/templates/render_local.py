#!/usr/bin/python3
"""Renders every *.jinja in this folder with Python's Jinja2 for the
conversations below -> cases.json, read by tests/test_chat_template.c.
Same environment as ../../../../shared/fixtures/templates/render.py (HF
transformers settings). Needs python3-jinja2; run with /usr/bin/python3.
A conversation that makes the template raise is stored with its error."""
import glob, json, os, datetime
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}},
    # a richer schema: numbers, arrays, nested objects, nullable and anyOf types, defaults
    {"type": "function", "function": {
        "name": "search_docs", "description": "Search the documentation.\nReturns matching pages.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "description": "Search text"},
            "limit": {"type": "integer", "description": "Max results", "default": 10},
            "score": {"type": "number"},
            "exact": {"type": "boolean", "default": False},
            "tags": {"type": "array", "items": {"type": "string"}},
            "range": {"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": ["string", "null"]}}},
            "mode": {"anyOf": [{"type": "string", "enum": ["fast", "full"]}, {"type": "integer"}]},
            "lang": {"type": "string", "nullable": True}},
            "required": ["query"]}}}]

CONVS = [
    {"messages": [{"role": "user", "content": "Hello!"}]},
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4."},
                  {"role": "user", "content": "And 3+3?"}]},
    {"messages": [{"role": "user", "content": "Grüße, 世界! \"q\" <b>&</b> 🎉\n  indented\t"},
                  {"role": "assistant", "content": "<think>\nLet me think.\n</think>\n\nHallo!"},
                  {"role": "user", "content": "  Again?  "}]},
    {"messages": [{"role": "user", "content": "What's the weather in Paris?"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call12345", "type": "function",
                       "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
                  {"role": "tool", "tool_call_id": "call12345", "content": "{\"temp\": 21.5}"},
                  {"role": "assistant", "content": "It is 21.5 °C in Paris."},
                  {"role": "user", "content": "Thanks"}],
     "tools": TOOLS},
    {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                  {"role": "assistant", "content": "", "tool_calls": [
                      {"id": "abcdef123", "type": "function",
                       "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
                  {"role": "tool", "tool_call_id": "abcdef123", "content": "cold"}],
     "tools": TOOLS},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe"},
                                               {"type": "text", "text": " this, please."}]}]},
    {"messages": [{"role": "system", "content": "Be brief. /no_think"},
                  {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello.", "reasoning_content": "greet back"}],
     "extra": {"enable_thinking": False}, "add_generation_prompt": False},
    # parallel tool calls with typed/nested/unicode arguments, consecutive tool results
    {"messages": [{"role": "system", "content": "Use tools when useful."},
                  {"role": "user", "content": "Weather in Zürich and Tokyo?"},
                  {"role": "assistant", "content": "", "tool_calls": [
                      {"id": "zrh000001", "type": "function",
                       "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 3, "precise": True,
                                                                          "ratio": 0.25, "tags": ["a", "b"], "extra": None}}},
                      {"id": "tyo000002", "type": "function",
                       "function": {"name": "get_weather", "arguments": {"city": "東京"}}}]},
                  {"role": "tool", "tool_call_id": "zrh000001", "content": "12 °C"},
                  {"role": "tool", "tool_call_id": "tyo000002", "content": "18 °C"},
                  {"role": "assistant", "content": "Zürich 12 °C, Tokyo 18 °C."},
                  {"role": "user", "content": "Thanks!"}],
     "tools": TOOLS, "extra": {"reasoning_effort": "high"}},
    # multimodal parts: system as a list, an image part in the user turn
    {"messages": [{"role": "system", "content": [{"type": "text", "text": "You describe images."}]},
                  {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]},
    # reasoning carried in history (thinking / reasoning_content), then a pending tool result
    {"messages": [{"role": "user", "content": "Plan a trip."},
                  {"role": "assistant", "content": "Go to Rome.", "thinking": "Consider Europe.",
                   "reasoning_content": "Consider Europe."},
                  {"role": "user", "content": "Weather there?"},
                  {"role": "assistant", "content": "", "thinking": "Need the tool.", "reasoning_content": "Need the tool.",
                   "tool_calls": [{"id": "rome00003", "type": "function",
                                   "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
                  {"role": "tool", "tool_call_id": "rome00003", "content": "{\"temp\": 25}"}],
     "tools": TOOLS, "extra": {"enable_thinking": True}},
    # tools in Cohere's legacy shape (parameter_definitions), as Command-R+ expects
    {"messages": [{"role": "user", "content": "Find news about Exsa."}],
     "tools": [{"name": "internet_search", "description": "Search the web",
                "parameter_definitions": {"query": {"description": "Query text", "type": "str", "required": True}}}]},
    # developer instructions plus template options (gpt-oss builtin tools, identity)
    {"messages": [{"role": "developer", "content": "Answer in French."},
                  {"role": "user", "content": "Hi"}],
     "extra": {"model_identity": "You are Exsa.", "builtin_tools": ["browser", "python"],
               "reasoning_effort": "low"}},
]

def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)

def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = lambda fmt: datetime.datetime(2026, 1, 2, 3, 4, 5).strftime(fmt)

here = os.path.dirname(os.path.abspath(__file__))
out = {"conversations": CONVS, "templates": {}}
for path in sorted(glob.glob(os.path.join(here, "*.jinja"))):
    name = os.path.basename(path)
    tpl = env.from_string(open(path, encoding="utf-8").read())
    cases = []
    for i, conv in enumerate(CONVS):
        kw = dict(conv.get("extra", {}))
        if "tools" in conv:
            kw["tools"] = conv["tools"]
        try:
            s = tpl.render(messages=conv["messages"], add_generation_prompt=conv.get("add_generation_prompt", True),
                           bos_token="<s>", eos_token="</s>", **kw)
            cases.append({"conv": i, "output": s})
        except jinja2.exceptions.TemplateError as e:
            raised = type(e) is jinja2.exceptions.TemplateError
            cases.append({"conv": i, "error": str(e), "raised": raised})
        except Exception as e:
            cases.append({"conv": i, "error": type(e).__name__ + ": " + str(e), "raised": False})
    out["templates"][name] = cases
json.dump(out, open(os.path.join(here, "cases.json"), "w", encoding="utf-8"), indent=1, ensure_ascii=False)
print(len(out["templates"]), "templates,", sum(len(v) for v in out["templates"].values()), "cases")
for k, v in out["templates"].items():
    errs = [c for c in v if "error" in c]
    if errs:
        print(" ", k, [(c["conv"], c["error"][:60]) for c in errs])
