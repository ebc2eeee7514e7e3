/* Tool-call formats: each family's parser on fixed model outputs, whole and
 * fed one byte at a time and in random pieces, with text before and after;
 * format detection from real templates; tools / tool_choice checking; the
 * generic format's message rewrite. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "server/tool_calls.h"

typedef struct expect_call {
    const char *name, *args; /* args: JSON, compared as JSON */
} expect_call;

typedef struct parse_case {
    int format;
    const char *output;
    const char *content;
    int n_calls;
    expect_call calls[3];
} parse_case;

static const parse_case cases[] = {
    {EXSA_TOOLS_HERMES, "Hello there.", "Hello there.", 0, {{0}}},
    {EXSA_TOOLS_HERMES,
     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
     "", 1, {{"get_weather", "{\"city\": \"Paris\"}"}}},
    {EXSA_TOOLS_HERMES,
     "Let me check. <tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n"
     "<tool_call>\n{\"name\": \"b\", \"arguments\": {\"s\": \"</tool\"}}\n</tool_call> done",
     "Let me check. \n done", 2, {{"a", "{\"x\": 1}"}, {"b", "{\"s\": \"</tool\"}"}}},
    {EXSA_TOOLS_HERMES, "a < b and <tool", "a < b and <tool", 0, {{0}}},
    {EXSA_TOOLS_HERMES, "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}", "", 1, {{"f", "{}"}}},
    {EXSA_TOOLS_HERMES, "<tool_call>not json</tool_call>", "<tool_call>not json</tool_call>", 0,
     {{0}}},
    {EXSA_TOOLS_MISTRAL,
     "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"q\": \"[x]\"}}, {\"name\": \"g\", "
     "\"arguments\": {}}]",
     "", 2, {{"f", "{\"q\": \"[x]\"}"}, {"g", "{}"}}},
    {EXSA_TOOLS_MISTRAL, "Sure [TOOLS] no", "Sure [TOOLS] no", 0, {{0}}},
    {EXSA_TOOLS_LLAMA3, "{\"name\": \"f\", \"parameters\": {\"n\": 2}}", "", 1, {{"f", "{\"n\": 2}"}}},
    {EXSA_TOOLS_LLAMA3, "  The answer is {not a call}.", "  The answer is {not a call}.", 0, {{0}}},
    {EXSA_TOOLS_GENERIC, "{\"response\": \"Hi \\\"you\\\"\\n\\u00e9!\"}", "Hi \"you\"\n\xc3\xa9!", 0,
     {{0}}},
    {EXSA_TOOLS_GENERIC,
     "{\"tool_calls\": [{\"name\": \"f\", \"arguments\": {\"a\": [1, 2]}}, {\"name\": \"g\", "
     "\"arguments\": {}}]}",
     "", 2, {{"f", "{\"a\": [1, 2]}"}, {"g", "{}"}}},
    {EXSA_TOOLS_GENERIC, "plain words", "plain words", 0, {{0}}},
};

static int json_equal_text(const char *a, const char *b)
{
    json_t *x = json_loads(a, JSON_DECODE_ANY, NULL), *y = json_loads(b, JSON_DECODE_ANY, NULL);
    int eq = x && y && json_equal(x, y);
    json_decref(x);
    json_decref(y);
    return eq;
}

/* Feeds the output in pieces of `piece` bytes (0: random 1..7). */
static void run_case(const parse_case *c, int piece, unsigned *seed)
{
    exsa_err err = {0};
    exsa_tool_parser *p = exsa_tool_parser_create(c->format, "t", &err);
    assert_non_null(p);
    exsa_strbuf out;
    exsa_strbuf_init(&out);
    const size_t n = strlen(c->output);
    for (size_t i = 0; i < n;) {
        size_t k = piece ? (size_t)piece : 1 + (size_t)(rand_r(seed) % 7);
        if (k > n - i)
            k = n - i;
        assert_int_equal(exsa_tool_parser_feed(p, c->output + i, k, &out), 0);
        i += k;
    }
    assert_int_equal(exsa_tool_parser_finish(p, &out), 0);
    char *got = strndup(out.p ? out.p : "", out.len);
    if (strcmp(got, c->content) || exsa_tool_parser_n_calls(p) != c->n_calls)
        fail_msg("%s, pieces %d, output '%s': content '%s' (want '%s'), %d calls (want %d)",
                 exsa_tool_format_name(c->format), piece, c->output, got, c->content,
                 exsa_tool_parser_n_calls(p), c->n_calls);
    for (int i = 0; i < c->n_calls; i++) {
        const exsa_tool_call *tc = exsa_tool_parser_call(p, i);
        assert_string_equal(tc->name, c->calls[i].name);
        if (!json_equal_text(tc->arguments, c->calls[i].args))
            fail_msg("call %d arguments '%s', want '%s'", i, tc->arguments, c->calls[i].args);
        char id[40];
        snprintf(id, sizeof id, "call_t%d", i);
        assert_string_equal(tc->id, id);
    }
    free(got);
    exsa_strbuf_free(&out);
    exsa_tool_parser_free(p);
}

static void test_parsers(void **state)
{
    (void)state;
    unsigned seed = 12345;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_case(&cases[i], 1 << 20, &seed);
        run_case(&cases[i], 1, &seed);
        for (int r = 0; r < 5; r++)
            run_case(&cases[i], 0, &seed);
    }
}

static void test_detect(void **state)
{
    (void)state;
    assert_int_equal(exsa_tool_format_detect("{% for tool in tools %}<tool_call>{{ x }}"),
                     EXSA_TOOLS_HERMES);
    assert_int_equal(exsa_tool_format_detect("[AVAILABLE_TOOLS]...[TOOL_CALLS]"),
                     EXSA_TOOLS_MISTRAL);
    assert_int_equal(exsa_tool_format_detect("<|start_header_id|>ipython<|end_header_id|>"),
                     EXSA_TOOLS_LLAMA3);
    assert_int_equal(exsa_tool_format_detect("<|im_start|>{{ message.content }}"),
                     EXSA_TOOLS_GENERIC);
    assert_int_equal(exsa_tool_format_detect(NULL), EXSA_TOOLS_GENERIC);
}

static int spec_of(const char *body, exsa_tool_spec *s, exsa_err *err)
{
    json_t *b = json_loads(body, 0, NULL);
    assert_non_null(b);
    int rc = exsa_tool_spec_parse(b, EXSA_TOOLS_GENERIC, s, err);
    json_decref(b);
    return rc;
}

#define TOOL(n) "{\"type\": \"function\", \"function\": {\"name\": \"" n "\", \"parameters\": {}}}"

static void test_spec_errors(void **state)
{
    (void)state;
    static const struct {
        const char *body, *needle;
    } bad[] = {
        {"{\"tools\": 3}", "tools: must be an array"},
        {"{\"tools\": [{\"type\": \"code\"}]}", "tools[0].type"},
        {"{\"tools\": [{\"type\": \"function\"}]}", "tools[0].function"},
        {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"a b\"}}]}",
         "tools[0].function.name"},
        {"{\"tools\": [" TOOL("f") ", " TOOL("f") "]}", "a second function named 'f'"},
        {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": "
         "[]}}]}",
         "parameters"},
        {"{\"tools\": [" TOOL("f") "], \"tool_choice\": \"always\"}", "tool_choice"},
        {"{\"tools\": [" TOOL("f") "], \"tool_choice\": {\"type\": \"function\", \"function\": "
         "{\"name\": \"g\"}}}",
         "names no function"},
        {"{\"tool_choice\": \"required\"}", "no tools"},
        {"{\"tools\": [" TOOL("f") "], \"parallel_tool_calls\": 1}", "parallel_tool_calls"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        exsa_tool_spec s;
        exsa_err err = {0};
        assert_int_equal(spec_of(bad[i].body, &s, &err), EXSA_EINVAL);
        if (!strstr(err.msg, bad[i].needle))
            fail_msg("%s: message '%s' lacks '%s'", bad[i].body, err.msg, bad[i].needle);
    }
    exsa_tool_spec s;
    exsa_err err = {0};
    assert_int_equal(spec_of("{\"tools\": [" TOOL("f") ", " TOOL("g") "], \"tool_choice\": "
                             "{\"type\": \"function\", \"function\": {\"name\": \"g\"}}, "
                             "\"parallel_tool_calls\": false}",
                             &s, &err),
                     0);
    assert_int_equal(s.choice, EXSA_TOOL_CHOICE_NAMED);
    assert_string_equal(s.named, "g");
    assert_int_equal(s.parallel, 0);
    exsa_tool_spec_free(&s);
    assert_int_equal(spec_of("{\"tools\": []}", &s, &err), 0);
    assert_null(s.tools);
}

static void test_generic_rewrite(void **state)
{
    (void)state;
    exsa_tool_spec s;
    exsa_err err = {0};
    assert_int_equal(spec_of("{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": "
                             "\"get_weather\", \"description\": \"Weather of a city\", "
                             "\"parameters\": {\"type\": \"object\"}}}]}",
                             &s, &err),
                     0);
    json_t *msgs = json_loads(
        "[{\"role\": \"user\", \"content\": \"Weather in Paris?\"},"
        " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"c1\", \"type\": "
        "\"function\", \"function\": {\"name\": \"get_weather\", \"arguments\": "
        "\"{\\\"city\\\": \\\"Paris\\\"}\"}}]},"
        " {\"role\": \"tool\", \"tool_call_id\": \"c1\", \"content\": \"18 C\"}]",
        0, NULL);
    assert_non_null(msgs);
    json_t *out = exsa_tool_rewrite_messages(msgs, &s, &err);
    assert_non_null(out);
    assert_int_equal(json_array_size(out), 4);
    const char *sys = json_string_value(json_object_get(json_array_get(out, 0), "content"));
    assert_non_null(strstr(sys, "get_weather"));
    assert_non_null(strstr(sys, "Weather of a city"));
    assert_non_null(strstr(sys, "{\"response\""));
    const char *asst = json_string_value(json_object_get(json_array_get(out, 2), "content"));
    assert_true(json_equal_text(asst, "{\"tool_calls\": [{\"name\": \"get_weather\", "
                                      "\"arguments\": {\"city\": \"Paris\"}}]}"));
    assert_null(json_object_get(json_array_get(out, 2), "tool_calls"));
    assert_string_equal(json_string_value(json_object_get(json_array_get(out, 3), "role")), "user");
    assert_non_null(strstr(json_string_value(json_object_get(json_array_get(out, 3), "content")),
                           "18 C"));
    json_decref(out);
    json_decref(msgs);
    exsa_tool_spec_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parsers),
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_spec_errors),
        cmocka_unit_test(test_generic_rewrite),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
