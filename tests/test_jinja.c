/* Jinja engine tests.
 *
 * - Semantics: small snippets covering operators, float/str/repr output,
 *   tojson, filters, tests, methods, slicing, loops, scoping, macros,
 *   call blocks, whitespace control, with the outputs Python's Jinja2
 *   rendered for them (tests/data/templates/jinja_snippets.py made
 *   jinja_snippets.json with HF's environment settings).
 * - Errors: unknown filters/tests/statements and syntax errors name the
 *   line (unknown filters/tests inside an if only when applied, as in
 *   Jinja2); Jinja2's Undefined rules; raise_exception() reports the
 *   template's message.
 * - Limits: runaway loops, recursion, huge strings and deep nesting end in
 *   an error, never a hang or a crash.
 * - Fuzz: thousands of mutated real templates are parsed and rendered with
 *   small limits; each either renders or fails with a message (run under
 *   ASan/UBSan in the sanitized build).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "text/jinja.h"

static struct tm fixed_now(void)
{
    struct tm t;
    memset(&t, 0, sizeof t);
    t.tm_year = 126;
    t.tm_mday = 2;
    t.tm_hour = 3;
    t.tm_min = 4;
    t.tm_sec = 5;
    t.tm_wday = 5;
    t.tm_yday = 1;
    return t;
}

static void data_path(char *out, size_t n, const char *file)
{
    const char *f = __FILE__;
    const char *slash = strrchr(f, '/');
    snprintf(out, n, "%.*s/data/templates/%s", slash ? (int)(slash - f) : 1, slash ? f : ".", file);
}

/* Renders src with vars; returns the malloc'd output or NULL (err filled). */
static char *render(const char *src, const json_t *vars, exsa_err *err, const exsa_jinja_opts *o)
{
    exsa_jinja *t = exsa_jinja_parse(src, strlen(src), err);
    if (!t)
        return NULL;
    char *out = NULL;
    struct tm now = fixed_now();
    exsa_jinja_opts def = {.now = &now};
    int rc = exsa_jinja_render(t, vars, o ? o : &def, &out, NULL, err);
    exsa_jinja_destroy(t);
    return rc ? NULL : out;
}

static void test_snippets(void **state)
{
    (void)state;
    char path[1024];
    data_path(path, sizeof path, "jinja_snippets.json");
    json_error_t je;
    json_t *all = json_load_file(path, 0, &je);
    assert_non_null(all);
    json_t *vars = json_object_get(all, "vars"), *cases = json_object_get(all, "cases");
    size_t ok = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        const char *src = json_string_value(json_object_get(c, "t"));
        const char *want = json_string_value(json_object_get(c, "o"));
        exsa_err err = {0};
        char *out = render(src, vars, &err, NULL);
        if (!want)
            fprintf(stderr, "snippet %zu: reference failed: %s\n", i,
                    json_string_value(json_object_get(c, "e")));
        else if (!out)
            fprintf(stderr, "snippet %zu: %s\n  %s\n", i, err.msg, src);
        else if (strcmp(out, want) != 0)
            fprintf(stderr, "snippet %zu:\n  tpl:  %s\n  got:  %s\n  want: %s\n", i, src, out, want);
        else
            ok++;
        free(out);
    }
    printf("JINJA snippets %zu/%zu\n", ok, json_array_size(cases));
    assert_int_equal(ok, json_array_size(cases));
    json_decref(all);
}

static void expect_error(const char *src, const char *needle)
{
    exsa_err err = {0};
    char *out = render(src, NULL, &err, NULL);
    if (out || !strstr(err.msg, needle))
        fprintf(stderr, "template: %s\n  out: %s\n  err: %s\n  wanted error containing: %s\n", src,
                out ? out : "(null)", err.msg, needle);
    assert_null(out);
    assert_non_null(strstr(err.msg, needle));
}

static void expect_output(const char *src, const char *want)
{
    exsa_err err = {0};
    char *out = render(src, NULL, &err, NULL);
    if (!out || strcmp(out, want) != 0)
        fprintf(stderr, "template: %s\n  got: %s\n  want: %s\n  err: %s\n", src, out ? out : "(null)", want,
                err.msg);
    assert_non_null(out);
    assert_string_equal(out, want);
    free(out);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error("line1\n{{ x | nosuchfilter }}", "line 2: unknown filter 'nosuchfilter'");
    expect_error("a\nb\n{% if x is nosuchtest %}{% endif %}", "line 3: unknown test 'nosuchtest'");
    expect_error("{% include 'x.jinja' %}", "line 1: unknown or unsupported statement 'include'");
    /* HF's environment loads loopcontrols only, not jinja2.ext.do */
    expect_error("{% set l = [] %}{% do l.append(1) %}", "line 1: unknown or unsupported statement 'do'");
    expect_error("{% for x in y %}\n\nno end", "expected 'endfor' (block opened at line 1)");
    expect_error("{% if true %}{% endfor %}", "unexpected 'endfor'");
    expect_error("{{ 'abc' ", "expected '}}'");
    expect_error("{{ 1 + }}", "line 1: unexpected");
    expect_error("{# never closed", "unclosed comment");
    expect_error("ok\n\n{{ raise_exception('Bad role: ' ~ 'tool') }}", "line 3: Bad role: tool");
    expect_error("{{ nosuchfunc(1) }}", "'nosuchfunc' is undefined");
    expect_error("{{ x + 1 }}", "'x' is undefined");
    expect_error("{{ 1 / 0 }}", "division by zero");
    expect_error("{{ 'a' + 1 }}", "unsupported operand");
    expect_error("{% set a, b = [1] %}", "cannot unpack");
    expect_error("{% set x = 1 %}{% set x.y = 2 %}", "namespace");
    expect_error("{{ [].append(1) }}", "immutable");
    expect_error("{{ none | length }}", "has no len()");
    expect_error("{% for x in 5 %}{% endfor %}", "not iterable");
    /* Jinja2's Undefined: a missing variable or attribute is undefined
     * (iterates as empty, prints as ""), but an attribute, item or slice of
     * an undefined value is an error, as is a loop over None */
    expect_output("{% set d = {} %}{{ d.b is defined }}|{{ d.b }}|{% for i in nothing %}x{% endfor %}|"
                  "{% for i in d.b %}x{% else %}E{% endfor %}",
                  "False|||E");
    expect_error("{{ a.b.c is defined }}", "'a' is undefined");
    expect_error("{% for x in a.b %}a{% else %}E{% endfor %}", "'a' is undefined");
    expect_error("{{ a['x'] }}", "'a' is undefined");
    expect_error("{{ a[1:] }}", "'a' is undefined");
    expect_error("{{ {}.x.y }}", "'dict object' has no attribute 'x'");
    expect_error("{% set d = {} %}{% for x in d.b.c %}{% endfor %}", "'dict object' has no attribute 'b'");
    expect_error("{% set n = none %}{{ n.b.c }}", "'None' has no attribute 'b'");
    expect_error("{% set n = none %}{% for k, v in n.items() %}{% endfor %}", "'None' has no attribute 'items'");
    expect_error("{{ 'abc'.nomethod() }}", "'str object' has no attribute 'nomethod'");
    expect_error("{{ [][3].x }}", "'list object' has no such element");
    expect_error("{{ a.x | default('d') }}", "'a' is undefined");
    expect_error("{{ a | int }}", "'a' is undefined");
    expect_error("{% set n = none %}{% for x in n %}a{% else %}E{% endfor %}", "'NoneType' object is not iterable");
    expect_error("{% set d = {'c': none} %}{% for x in d.c %}{% endfor %}", "'NoneType' object is not iterable");
    /* an unknown filter or test fails when the template is parsed, unless it
     * is inside an {% if %} or an inline if: then only when it is applied
     * (Jinja2's soft frames); a for / macro / filter / set block opens a hard
     * one again */
    expect_error("{% if true %}\n{{ x | nofilter }}{% endif %}", "line 2: unknown filter 'nofilter'");
    expect_error("{% if x is notest %}{% endif %}", "line 1: unknown test 'notest'");
    expect_error("{{ (x | nofilter) ~ 'a' if true else 2 }}", "unknown filter 'nofilter'");
    expect_error("{% if false %}{% for a in b %}{{ x | nofilter }}{% endfor %}{% endif %}", "unknown filter");
    expect_error("{% if false %}{% for a in b if a | nofilter %}{% endfor %}{% endif %}", "unknown filter");
    expect_error("{% if false %}{% macro m() %}{{ x | nofilter }}{% endmacro %}{% endif %}", "unknown filter");
    expect_error("{% if false %}{% filter nofilter %}a{% endfilter %}{% endif %}", "unknown filter");
    expect_error("{% if false %}{% set s %}{{ x | nofilter }}{% endset %}{% endif %}", "unknown filter");
    expect_error("{% set z = x | nofilter %}", "unknown filter 'nofilter'");
    expect_output("{% if false %}{{ x | nofilter }}{% endif %}{% if false %}{% set y = x | nofilter %}{% endif %}ok", "ok");
    /* the iterators Jinja2's map / select / reverse ... return have no len(),
     * are not JSON and not reversible; Markup only adds to strings */
    expect_error("{{ [1, 2] | map('string') | length }}", "object of type 'generator' has no len()");
    expect_error("{{ [1, 2] | map('string') | tojson }}", "Object of type generator is not JSON serializable");
    expect_error("{{ {'a': 1} | items | tojson }}", "Object of type generator is not JSON serializable");
    expect_error("{{ [1, 2] | reverse | tojson }}", "Object of type list_reverseiterator is not JSON");
    expect_error("{{ [1, 2] | select | last }}", "'generator' object is not reversible");
    expect_error("{{ [1] | select + [2] }}", "unsupported operand type(s) for +: 'generator' and 'list'");
    expect_error("{{ 'a' | safe + 1 }}", "'Markup' and 'int'");
    /* fromjson (json.loads) wants a string holding JSON */
    expect_error("{{ 3 | fromjson }}", "must be str");
    expect_error("{{ '{\"a\": }' | from_json }}", "invalid JSON");
    /* HF's generation block renders its body */
    expect_output("{% generation %}gen{{ 1 }}{% endgeneration %}!", "gen1!");
    /* CRLF templates behave like LF ones; one trailing newline is dropped */
    expect_output("{% if true %}\r\nA\r\n{% endif %}\r\n", "A\n");
    /* namespace set inside a macro is visible outside it */
    expect_output("{% set ns = namespace(v=1) %}{% macro m() %}{% set ns.v = 5 %}{% endmacro %}{{ m() }}{{ ns.v }}",
                  "5");
    /* {{- negative number is whitespace control, as in Jinja2 */
    expect_output("a {{-1}}", "a1");
}

static void test_limits(void **state)
{
    (void)state;
    exsa_jinja_opts o = {.max_steps = 200000, .max_output = 1 << 20, .max_memory = 64 << 20};
    exsa_err err = {0};
    char *out = render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", NULL,
                       &err, &o);
    assert_null(out);
    assert_non_null(strstr(err.msg, "steps"));
    out = render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, &err, &o);
    assert_null(out);
    assert_non_null(strstr(err.msg, "nested too deeply"));
    out = render("{{ 'x' * 100000000 }}", NULL, &err, &o);
    assert_null(out);
    out = render("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                 "{% endfor %}{{ ns.s | length }}",
                 NULL, &err, &o);
    assert_null(out);
    out = render("{% for i in range(20000) %}{{ 'abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij' }}"
                 "{% endfor %}",
                 NULL, &err, &o);
    assert_null(out);
    assert_non_null(strstr(err.msg, "limit"));
    /* deep nesting is a parse error, not a stack overflow */
    char deep[20000];
    size_t k = 0;
    k += (size_t)snprintf(deep, sizeof deep, "{{ ");
    for (int i = 0; i < 5000; i++)
        deep[k++] = '(';
    deep[k++] = '1';
    for (int i = 0; i < 5000; i++)
        deep[k++] = ')';
    snprintf(deep + k, sizeof deep - k, " }}");
    out = render(deep, NULL, &err, &o);
    assert_null(out);
    assert_non_null(strstr(err.msg, "nested too deeply"));
    k = 0;
    for (int i = 0; i < 2000 && k + 40 < sizeof deep; i++)
        k += (size_t)snprintf(deep + k, sizeof deep - k, "{%% if 1 %%}");
    deep[k] = '\0';
    out = render(deep, NULL, &err, &o);
    assert_null(out);
    assert_non_null(strstr(err.msg, "nested too deeply"));
    out = render("{{ range(1000000000) | length }}", NULL, &err, &o);
    assert_null(out);
}

/* ---- fuzz ---- */

static const char *const PIECES[] = {"{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "{{-", "-}}",
                                     "{% for x in y %}", "{% endfor %}", "{% if x %}", "{% endif %}",
                                     "{% else %}", "(", ")", "[", "]", "'", "\"", "|", ".", "loop",
                                     "{% macro m(a) %}", "{% endmacro %}", "m(m(1))", "*", "**", "~",
                                     "namespace(", "[::-1]", "|tojson", "|items", "\\", "\n", "{% raw %}",
                                     "{% set ns.x = 1 %}", "range(99999)", "{% break %}", "caller()"};

static void test_fuzz(void **state)
{
    (void)state;
    char path[1024];
    data_path(path, sizeof path, "cases.json");
    json_error_t je;
    json_t *cases = json_load_file(path, 0, &je);
    assert_non_null(cases);
    data_path(path, sizeof path, "jinja_snippets.json");
    json_t *snip = json_load_file(path, 0, &je);
    assert_non_null(snip);
    json_t *vars = json_object_get(snip, "vars");
    json_t *conv = json_array_get(json_object_get(cases, "conversations"), 3);
    json_object_set(vars, "messages", json_object_get(conv, "messages"));
    json_object_set(vars, "tools", json_object_get(conv, "tools"));

    /* corpus: the stored templates plus the snippets */
    char *corpus[64];
    size_t ncorp = 0;
    const char *name;
    json_t *v;
    json_object_foreach(json_object_get(cases, "templates"), name, v)
    {
        if (ncorp >= 40)
            break;
        data_path(path, sizeof path, name);
        size_t n;
        char *s = exsa_test_read_file(path, &n);
        if (s)
            corpus[ncorp++] = s;
    }
    json_t *sc = json_object_get(snip, "cases");
    for (size_t i = 0; i < json_array_size(sc) && ncorp < 64; i++)
        corpus[ncorp++] = strdup(json_string_value(json_object_get(json_array_get(sc, i), "t")));

    uint64_t rng = 12345;
    size_t rendered = 0, failed = 0, iters = 0;
    exsa_jinja_opts o = {.max_steps = 20000, .max_output = 256 << 10, .max_memory = 16 << 20};
    struct tm now = fixed_now();
    o.now = &now;
    for (size_t round = 0; round < 150; round++) {
        for (size_t c = 0; c < ncorp; c++) {
            size_t n = strlen(corpus[c]);
            size_t cap = n * 2 + 256;
            char *buf = malloc(cap);
            assert_non_null(buf);
            memcpy(buf, corpus[c], n);
            int nm = 1 + (int)(exsa_test_rand_u64(&rng) % 4);
            for (int m = 0; m < nm; m++) {
                size_t pos = n ? exsa_test_rand_u64(&rng) % n : 0;
                switch (exsa_test_rand_u64(&rng) % 5) {
                case 0: /* flip a byte */
                    if (n)
                        buf[pos] ^= (char)(1u << (exsa_test_rand_u64(&rng) % 8));
                    break;
                case 1: /* truncate */
                    n = pos;
                    break;
                case 2: { /* delete a range */
                    size_t len = exsa_test_rand_u64(&rng) % 32;
                    if (pos + len > n)
                        len = n - pos;
                    memmove(buf + pos, buf + pos + len, n - pos - len);
                    n -= len;
                    break;
                }
                default: { /* insert a syntax piece */
                    const char *p = PIECES[exsa_test_rand_u64(&rng) % (sizeof PIECES / sizeof PIECES[0])];
                    size_t pl = strlen(p);
                    if (n + pl <= cap) {
                        memmove(buf + pos + pl, buf + pos, n - pos);
                        memcpy(buf + pos, p, pl);
                        n += pl;
                    }
                }
                }
            }
            exsa_err err = {0};
            exsa_jinja *t = exsa_jinja_parse(buf, n, &err);
            iters++;
            if (t) {
                char *out = NULL;
                int rc = exsa_jinja_render(t, vars, &o, &out, NULL, &err);
                if (rc == 0) {
                    assert_non_null(out);
                    rendered++;
                    free(out);
                } else {
                    assert_null(out);
                    assert_true(err.msg[0] != '\0');
                    failed++;
                }
                exsa_jinja_destroy(t);
            } else {
                assert_true(strncmp(err.msg, "jinja: line ", 12) == 0);
                failed++;
            }
            free(buf);
        }
    }
    printf("JINJA fuzz %zu mutants: %zu rendered, %zu errors\n", iters, rendered, failed);
    assert_true(rendered > 0 && failed > 0);
    for (size_t i = 0; i < ncorp; i++)
        free(corpus[i]);
    json_decref(cases);
    json_decref(snip);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snippets),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_fuzz),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
