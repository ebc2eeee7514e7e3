#!/usr/bin/python3
"""Python Jinja2 (HF settings) renderings of small snippets -> jinja_snippets.json,
read by tests/test_jinja.c. Run with /usr/bin/python3 (needs python3-jinja2)."""
import json, os, datetime, jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
def raise_exception(msg): raise jinja2.exceptions.TemplateError(msg)
def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
# transformers' fromjson is json.loads; DeepSeek-V3.2's template spells it from_json
env.filters["fromjson"] = env.filters["from_json"] = json.loads
env.globals["strftime_now"] = lambda fmt: datetime.datetime(2026, 1, 2, 3, 4, 5).strftime(fmt)
V = {"d": {"b": 1, "a": [1, 2.5, None, True], "s": "x\"y\n\u00e9"}, "l": [3, 1, 2], "s": "  Hello World  ", "u": "h\u00e9llo w\u00f6rld",
     "msgs": [{"role": "user", "c": "a"}, {"role": "assistant", "c": "b"}, {"role": "user", "c": "c"}], "f": 0.1, "big": 1e20, "n": None,
     "js": "{\"b\": 1, \"a\": [1, 2.5, null, true, \"x\\u00e9\"], \"o\": {\"k\": -0.5}}"}
SN = [
 "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }} {{ 4 / 2 }}",
 "{{ f }} {{ big }} {{ 1e-5 }} {{ 3.0 }} {{ 1/3 }} {{ 2.5e16 }} {{ -0.0 }} {{ 100.0 }}",
 "{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ l | tojson(sort_keys=true) }}|{{ {'z': 1, 'a': 2} | tojson(sort_keys=true) }}",
 "{{ d }}|{{ l }}|{{ n }}|{{ true }}|{{ ('a', 1) }}|{{ ['it\\'s', \"q\"] }}|{{ d.items() | list }}",
 "{{ s | trim }}|{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxhixx'.strip('x') }}|{{ s | upper }}|{{ s | lower }}|{{ 'hello world'.title() }}|{{ 'hello-world foo' | title }}|{{ 'hELLO' | capitalize }}",
 "{{ 'a,b,,c'.split(',') }}|{{ ' a  b c '.split() }}|{{ 'a,b,c'.split(',', 1) }}|{{ 'a,b,c'.rsplit(',', 1) }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith(('x','c')) }}|{{ 'aXbXc'.replace('X', '-') }}|{{ 'abcabc'.find('c') }}",
 "{{ l[::-1] }}|{{ l[1:] }}|{{ l[:-1] }}|{{ u[::-1] }}|{{ u[1:4] }}|{{ u | length }}|{{ u[-1] }}|{{ 'abcdef'[::2] }}|{{ l[-1] }}|{{ l[5] is defined }}",
 "{% for x in l %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }};{% endfor %}",
 "{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}|{% for k in d %}{{ k }}{% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %}",
 "{% for m in msgs if m.role == 'user' %}{{ m.c }}{{ loop.index }}{{ loop.length }}{% endfor %}",
 "{% set ns = namespace(n=0, s='') %}{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% set ns.n = ns.n + i %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }}",
 "{% set x = 0 %}{% for i in [1,2,3] %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}",
 "{% for i in range(6) %}{% if i is odd %}{% continue %}{% endif %}{{ i }}{% endfor %}|{{ range(3) | list }}|{{ range(10, 0, -3) | list }}",
 "{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='c') | join(',') }}|{{ msgs | rejectattr('role', 'equalto', 'user') | list | length }}|{{ [1,2,3,4] | select('even') | list }}|{{ ['a','b'] | map('upper') | list }}",
 "{{ x | default('dflt') }}|{{ n | default('dflt') }}|{{ '' | default('e', true) }}|{{ l | first }}|{{ l | last }}|{{ l | sort }}|{{ l | sort(reverse=true) }}|{{ ['b','A','c'] | sort }}|{{ [1,1,2] | unique | list }}",
 "{{ '3' | int + 1 }}|{{ 'x' | int }}|{{ 2.7 | int }}|{{ '2.5' | float }}|{{ -3 | abs }}|{{ 2.567 | round(2) }}|{{ 2.5 | round }}|{{ l | sum }}|{{ l | max }}|{{ l | min }}",
 "{{ x is defined }}{{ n is none }}{{ s is string }}{{ d is mapping }}{{ l is iterable }}{{ 1 is number }}{{ true is boolean }}{{ x is undefined }}{{ l is sequence }}{{ 3 is integer }}{{ 3.0 is float }}{{ 'a' in 'cat' }}{{ 2 in l }}{{ 'b' in d }}{{ 5 not in l }}{{ 1 is in [1] }}",
 "{{ 'a' ~ 1 ~ none ~ x }}|{{ 'ab' * 3 }}|{{ [1] + [2] }}|{{ 'x' if l else 'y' }}|{{ 'x' if n }}|{{ not l }}|{{ l and 'yes' }}|{{ n or 'no' }}|{{ 1 < 2 <= 2 }}|{{ 'abc' < 'abd' }}",
 "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bob') }} {{ greet('Al', punct='?') }} {{ greet(name='Cy') }}",
 "{% macro wrap(t) %}[{{ caller() }}:{{ t }}]{% endmacro %}{% call wrap('x') %}inner{% endcall %}",
 "{% set blk %}  some {{ 1 + 1 }} text  {% endset %}[{{ blk }}]{% filter upper %}shout {{ 'it' }}{% endfilter %}",
 "a\n  {% if true %}\n    b\n  {% endif %}\n  c {{- ' d ' -}} e\n{# comment #}\nf {%- raw %} {{ not parsed }} {% endraw %}\ng {%+ if true %}h{% endif %}",
 "{{ d.get('b') }}|{{ d.get('zz', 'def') }}|{{ d.keys() | list }}|{{ d.values() | list | length }}|{{ d['s'] | tojson }}|{{ d.s | length }}|{{ d.missing is defined }}|{{ d['missing'] is defined }}",
 "{{ strftime_now('%Y-%m-%d %H:%M:%S %B %d, %Y %A %b') }}|{{ '{} and {}'.format('a', 1) }}|{{ '%s' | length }}|{{ 'Hello' | replace('l', 'L', 1) }}|{{ 'tab\there' | tojson }}|{{ '\u00e9\U0001F600' | tojson(ensure_ascii=true) }}",
 "{{ 'abc' | list }}|{{ 'a\nb\n' | indent(2) }}|{{ 'x\n\ny' | indent(4, true) }}|{{ '<a href=\"x\">&' | e }}|{{ [3,1] | reverse | list }}|{{ 'abc' | reverse }}|{{ {'b': 2, 'a': 1} | dictsort }}|{{ 'one two  three' | wordcount }}",
 "{{ [1,2,3] | join }}|{{ ['x', 'y'] | join(', ') }}|{{ 10 is divisibleby 5 }}|{{ 'abc' is lower }}|{{ none | string }}|{{ 1.5 | string }}|{{ (1, 2) | list }}",
 "{{ [{'a': 2}, {'a': 1}] | sort(attribute='a') | map(attribute='a') | list }}|{{ [{'x': {'y': 1}}] | map(attribute='x.y') | list }}|{{ l | map('string') | join('-') }}|{{ 'x,y'.split(',') | map('upper') | join }}",
 "{{ 1 == 1.0 }}{{ [1, 2] == [1, 2] }}{{ {'a': 1} == {'a': 1} }}{{ 'a' != 'b' }}{{ none == none }}{{ true == 1 }}",
 # unknown filters and tests fail at compile time except inside an if or an inline if
 "{% if false %}{{ x | nofilter }}{% endif %}|{{ (x | nofilter) if false else 1 }}|{{ 1 if true else x | nofilter }}|{% if false %}{{ x is notest }}{% endif %}|{% for a in [1] %}{% if false %}{{ x | nofilter }}{% endif %}{% endfor %}|{% if false %}{% set y = x | nofilter %}{% elif false %}{{ x | nofilter2 }}{% else %}ok{% endif %}|{% if false %}{% for z in l | nofilter %}{% endfor %}{% endif %}",
 # loops over undefined values run zero times (else branch), a missing attribute of a defined value is undefined
 "{% for x in nothing %}a{% else %}E{% endfor %}|{% for x in d.missing %}a{% else %}E{% endfor %}|{% for x in n.b %}a{% else %}E{% endfor %}|{{ n.b }}|{{ d.missing is defined }}|{{ l[7] }}|{% for x in [] %}a{% else %}E{% endfor %}|{% for x in nothing if x %}a{% else %}E{% endfor %}",
 # select / reject / map give nothing for a false input (none); their results, unique's, items' and reverse's are
 # iterators: always true, not subscriptable
 "{{ n | selectattr('x') | list }}|{{ n | map('upper') | list }}|{{ n | reject | list }}|{{ 0 | select | list }}|{% if [] | select %}T{% endif %}|{% if [] | reverse %}R{% endif %}|{{ ([1, 2] | select)[0] }}|{{ [1, 2] | map('string') | join('-') }}|{{ l | select | first }}|{{ l | reverse | list }}|{{ n | selectattr('type', 'equalto', 'code_interpreter') | list | length > 0 }}|{{ [1] | select is sequence }}|{{ [1] | select is iterable }}|{% for k, v in d | items %}{{ k }}{% endfor %}",
 # Markup (|safe, |escape) escapes a plain string added to it
 "{{ 'a' | safe + '\"b\"' }}|{{ '\"a\"' + 'b' | safe }}|{{ 'a' | safe ~ '\"b\"' }}|{{ ('<x>' | safe + '<y>') | length }}|{{ '<x>' | safe | e }}|{{ '<x>' | e | e }}|{{ ('<x>' | safe + '&') | upper }}|{{ ('a' | safe).upper() + '&' }}|{{ 'a' | safe * 2 + '&' }}|{{ ('a' | safe | string) + '<' }}|{{ ('a' | safe + '<') | replace('a', 'b') + '<' }}|{{ {'k': 'x&' | safe} | tojson }}|{{ ' a ' | safe | trim + '<' }}|{{ ['a' | safe, '&'] | join }}",
 # transformers' fromjson
 "{% for k, v in (js | fromjson).items() %}{{ k }}={{ v }};{% endfor %}|{{ js | from_json }}|{{ ' [1, 2] ' | fromjson | length }}|{{ (js | fromjson).o.k }}|{{ '\"s\"' | fromjson }}|{{ 'null' | fromjson }}",
]
out = []
for s in SN:
    try:
        r = env.from_string(s).render(**V)
        out.append({"t": s, "o": r})
    except Exception as e:
        out.append({"t": s, "e": str(e)})
json.dump({"vars": V, "cases": out}, open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "jinja_snippets.json"), "w"), ensure_ascii=False, indent=1)
for c in out: print(repr(c.get("o", "ERR " + c.get("e", ""))))
