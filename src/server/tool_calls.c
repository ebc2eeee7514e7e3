/* Tool calling: formats, grammars, the generic prompt rewrite and the
 * incremental output parser (tool_calls.h). */
#include "server/tool_calls.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/json_schema.h"
#include "util/err.h"

/* DeepSeek's markers: U+FF5C (fullwidth vertical bar) and U+2581 (lower
 * one eighth block) around ASCII words; split literals so that no \x escape
 * swallows the letter after it. */
#define DS_BAR "\xef\xbd\x9c"
#define DS_SP "\xe2\x96\x81"
#define DS_CALLS_BEGIN "<" DS_BAR "tool" DS_SP "calls" DS_SP "begin" DS_BAR ">"
#define DS_CALLS_END "<" DS_BAR "tool" DS_SP "calls" DS_SP "end" DS_BAR ">"
#define DS_CALL_BEGIN "<" DS_BAR "tool" DS_SP "call" DS_SP "begin" DS_BAR ">"
#define DS_CALL_END "<" DS_BAR "tool" DS_SP "call" DS_SP "end" DS_BAR ">"
#define DS_SEP "<" DS_BAR "tool" DS_SP "sep" DS_BAR ">"

#define R7_THINK "<|START_THINKING|>"
#define R7_THINK_END "<|END_THINKING|>"
#define R7_ACTION "<|START_ACTION|>"
#define R7_ACTION_END "<|END_ACTION|>"
#define R7_RESP "<|START_RESPONSE|>"
#define R7_RESP_END "<|END_RESPONSE|>"

#define GRANITE_MARK "<|tool_call|>"
#define FN_OPEN "<function="
#define FN_CLOSE "</function>"
#define FV_SEP ">>>"

int exsa_tool_format_detect(const char *src)
{
    if (!src)
        return EXSA_TOOLS_GENERIC;
    if (strstr(src, "<tool_call>"))
        return EXSA_TOOLS_HERMES;
    if (strstr(src, "[TOOL_CALLS]"))
        return EXSA_TOOLS_MISTRAL;
    /* R1 and V3 fence the arguments in ```json; V3.1 writes them bare */
    if (strstr(src, DS_CALL_BEGIN) && strstr(src, DS_SEP))
        return strstr(src, "```json") ? EXSA_TOOLS_DEEPSEEK_R1 : EXSA_TOOLS_DEEPSEEK_V31;
    if (strstr(src, R7_ACTION) && strstr(src, "tool_name"))
        return EXSA_TOOLS_COMMAND_R7B;
    if (strstr(src, GRANITE_MARK))
        return EXSA_TOOLS_GRANITE;
    /* before LLAMA3: both Functionary templates are Llama 3 chat templates */
    if (strstr(src, FV_SEP "all"))
        return EXSA_TOOLS_FUNCTIONARY_V32;
    /* Seed-OSS and Qwen3-Coder write <function=N> too, with XML parameters */
    if (strstr(src, FN_OPEN) && strstr(src, FN_CLOSE) && !strstr(src, "<parameter="))
        return EXSA_TOOLS_FUNCTIONARY_V31;
    if (strstr(src, "<|start_header_id|>") && strstr(src, "ipython"))
        return EXSA_TOOLS_LLAMA3;
    return EXSA_TOOLS_GENERIC;
}

const char *exsa_tool_format_name(int f)
{
    switch (f) {
    case EXSA_TOOLS_HERMES: return "hermes";
    case EXSA_TOOLS_MISTRAL: return "mistral";
    case EXSA_TOOLS_LLAMA3: return "llama3";
    case EXSA_TOOLS_DEEPSEEK_R1: return "deepseek-r1";
    case EXSA_TOOLS_DEEPSEEK_V31: return "deepseek-v3.1";
    case EXSA_TOOLS_COMMAND_R7B: return "command-r7b";
    case EXSA_TOOLS_FUNCTIONARY_V32: return "functionary-v3.2";
    case EXSA_TOOLS_FUNCTIONARY_V31: return "functionary-v3.1";
    case EXSA_TOOLS_GRANITE: return "granite";
    default: return "generic";
    }
}

/* ---- the request's tools ---- */

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}

static const json_t *fn_of(const json_t *tool) { return json_object_get(tool, "function"); }

static const char *name_of(const json_t *tool)
{
    return json_string_value(json_object_get(fn_of(tool), "name"));
}

int exsa_tool_spec_parse(const json_t *body, int format, exsa_tool_spec *spec, exsa_err *err)
{
    memset(spec, 0, sizeof *spec);
    spec->format = format;
    spec->parallel = 1;
    const json_t *tools = json_object_get(body, "tools");
    const json_t *choice = json_object_get(body, "tool_choice");
    const json_t *par = json_object_get(body, "parallel_tool_calls");
    if (par && !json_is_null(par)) {
        if (!json_is_boolean(par))
            return exsa_err_set(err, EXSA_EINVAL, "parallel_tool_calls: must be true or false");
        spec->parallel = json_is_true(par);
    }
    if (!tools || json_is_null(tools) || (json_is_array(tools) && json_array_size(tools) == 0)) {
        if (choice && !json_is_null(choice) &&
            !(json_is_string(choice) && (!strcmp(json_string_value(choice), "none") ||
                                         !strcmp(json_string_value(choice), "auto"))))
            return exsa_err_set(err, EXSA_EINVAL, "tool_choice: there are no tools to choose");
        return 0;
    }
    if (!json_is_array(tools))
        return exsa_err_set(err, EXSA_EINVAL, "tools: must be an array of tools");
    if (json_array_size(tools) > 128)
        return exsa_err_set(err, EXSA_EINVAL, "tools: at most 128 tools");
    size_t i;
    const json_t *t;
    json_array_foreach(tools, i, t) {
        const json_t *type = json_object_get(t, "type"), *fn = fn_of(t);
        if (!json_is_object(t) || !json_is_string(type) || strcmp(json_string_value(type), "function"))
            return exsa_err_set(err, EXSA_EINVAL, "tools[%zu].type: must be \"function\"", i);
        if (!json_is_object(fn))
            return exsa_err_set(err, EXSA_EINVAL, "tools[%zu].function: must be an object", i);
        const char *name = name_of(t);
        if (!name || !valid_name(name))
            return exsa_err_set(err, EXSA_EINVAL,
                                "tools[%zu].function.name: 1 to 64 letters, digits, '_' or '-'", i);
        const json_t *params = json_object_get(fn, "parameters");
        if (params && !json_is_null(params) && !json_is_object(params))
            return exsa_err_set(err, EXSA_EINVAL,
                                "tools[%zu].function.parameters: must be a JSON Schema object", i);
        for (size_t k = 0; k < i; k++)
            if (!strcmp(name_of(json_array_get(tools, k)), name))
                return exsa_err_set(err, EXSA_EINVAL, "tools[%zu]: a second function named '%s'",
                                    i, name);
    }
    spec->choice = EXSA_TOOL_CHOICE_AUTO;
    if (choice && !json_is_null(choice)) {
        const char *c = json_string_value(choice);
        if (c && !strcmp(c, "none"))
            spec->choice = EXSA_TOOL_CHOICE_NONE;
        else if (c && !strcmp(c, "auto"))
            spec->choice = EXSA_TOOL_CHOICE_AUTO;
        else if (c && !strcmp(c, "required"))
            spec->choice = EXSA_TOOL_CHOICE_REQUIRED;
        else if (json_is_object(choice)) {
            const char *n = json_string_value(json_object_get(json_object_get(choice, "function"),
                                                              "name"));
            int found = 0;
            for (size_t k = 0; n && k < json_array_size(tools); k++)
                found |= !strcmp(name_of(json_array_get(tools, k)), n);
            if (!found)
                return exsa_err_set(err, EXSA_EINVAL,
                                    "tool_choice: names no function of tools (expected {\"type\": "
                                    "\"function\", \"function\": {\"name\": ...}})");
            spec->choice = EXSA_TOOL_CHOICE_NAMED;
            snprintf(spec->named, sizeof spec->named, "%s", n);
        } else {
            return exsa_err_set(err, EXSA_EINVAL,
                                "tool_choice: must be \"none\", \"auto\", \"required\" or a "
                                "named function");
        }
    }
    spec->tools = json_incref((json_t *)tools);
    return 0;
}

void exsa_tool_spec_free(exsa_tool_spec *spec)
{
    json_decref(spec->tools);
    spec->tools = NULL;
}

/* ---- grammars ---- */

/* Renames rule `from` to `to` in GBNF text: identifiers outside string
 * literals, character classes and comments. */
static char *rename_rule(const char *g, const char *from, const char *to)
{
    const size_t n = strlen(g), nf = strlen(from), nt = strlen(to);
    size_t cap = n + 1 + (n / (nf ? nf : 1) + 1) * (nt > nf ? nt - nf : 0);
    char *out = malloc(cap), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n;) {
        const char c = g[i];
        if (c == '"' || c == '[') {
            const char close = c == '"' ? '"' : ']';
            *o++ = g[i++];
            while (i < n && g[i] != close) {
                if (g[i] == '\\' && i + 1 < n)
                    *o++ = g[i++];
                *o++ = g[i++];
            }
            if (i < n)
                *o++ = g[i++];
        } else if (c == '#') {
            while (i < n && g[i] != '\n')
                *o++ = g[i++];
        } else if (isalnum((unsigned char)c) || c == '_' || c == '-') {
            size_t j = i;
            while (j < n && (isalnum((unsigned char)g[j]) || g[j] == '_' || g[j] == '-'))
                j++;
            if (j - i == nf && !memcmp(g + i, from, nf)) {
                memcpy(o, to, nt);
                o += nt;
            } else {
                memcpy(o, g + i, j - i);
                o += j - i;
            }
            i = j;
        } else {
            *o++ = g[i++];
        }
    }
    *o = '\0';
    return out;
}

/* Whether the choice lets the model call this tool. */
static int selected(const exsa_tool_spec *spec, const json_t *tool)
{
    return spec->choice != EXSA_TOOL_CHOICE_NAMED || !strcmp(name_of(tool), spec->named);
}

/* A tool's parameters schema; {"type": "object"} (a new reference in *own)
 * when it has none. */
static const json_t *params_of(const json_t *tool, json_t **own)
{
    const json_t *params = json_object_get(fn_of(tool), "parameters");
    *own = NULL;
    if (params && json_is_object(params) && json_object_size(params))
        return params;
    return *own = json_pack("{s:s}", "type", "object");
}

/* The JSON Schema of one call object: anyOf over the tools (or the named
 * one), each {[idkey: digits,] namekey: const, argkey: its parameters}. */
static json_t *call_schema(const exsa_tool_spec *spec, const char *idkey, const char *namekey,
                           const char *argkey)
{
    json_t *any = json_array();
    size_t i;
    const json_t *t;
    json_array_foreach(spec->tools, i, t) {
        if (!selected(spec, t))
            continue;
        json_t *own;
        const json_t *params = params_of(t, &own);
        json_t *props = json_object();
        if (idkey)
            json_object_set_new(props, idkey, json_pack("{s:s, s:s}", "type", "string", "pattern",
                                                        "^[A-Za-z0-9_-]{1,40}$"));
        json_object_set_new(props, namekey, json_pack("{s:s}", "const", name_of(t)));
        json_object_set(props, argkey, (json_t *)params);
        json_decref(own);
        json_t *req = idkey ? json_pack("[s,s,s]", idkey, namekey, argkey)
                            : json_pack("[s,s]", namekey, argkey);
        json_array_append_new(any, json_pack("{s:s, s:o, s:o, s:b}", "type", "object",
                                             "properties", props, "required", req,
                                             "additionalProperties", 0));
    }
    return json_pack("{s:o}", "anyOf", any);
}

/* The GBNF of call objects (call_schema) as rule `tcall`. */
static char *call_rules(const exsa_tool_spec *spec, const char *idkey, const char *namekey,
                        const char *argkey, exsa_err *err)
{
    json_t *schema = call_schema(spec, idkey, namekey, argkey);
    if (!schema) {
        exsa_err_set(err, EXSA_ENOMEM, "tools: out of memory");
        return NULL;
    }
    char *g = exsa_json_schema_to_gbnf(schema, err);
    json_decref(schema);
    if (!g) {
        exsa_err_prefix(err, "tools: parameters");
        return NULL;
    }
    char *calls = rename_rule(g, "root", "tcall");
    free(g);
    if (!calls)
        exsa_err_set(err, EXSA_ENOMEM, "tools: out of memory");
    return calls;
}

/* Appends GBNF text g with every rule name prefixed by pfx (the words
 * outside string literals, classes, repetition braces and comments), so
 * that several converted schemas live in one grammar. */
static void append_prefixed(exsa_strbuf *out, const char *g, const char *pfx)
{
    const size_t n = strlen(g);
    for (size_t i = 0; i < n;) {
        const char c = g[i];
        size_t j = i + 1;
        if (c == '"' || c == '[' || c == '{') {
            const char close = c == '"' ? '"' : c == '[' ? ']' : '}';
            while (j < n && g[j] != close)
                j += g[j] == '\\' && j + 1 < n ? 2 : 1;
            j = j < n ? j + 1 : n;
        } else if (c == '#') {
            while (j < n && g[j] != '\n')
                j++;
        } else if (isalnum((unsigned char)c) || c == '_' || c == '-') {
            while (j < n && (isalnum((unsigned char)g[j]) || g[j] == '_' || g[j] == '-'))
                j++;
            exsa_strbuf_puts(out, pfx);
        }
        exsa_strbuf_append(out, g + i, j - i);
        i = j;
    }
}

/* For each tool the choice allows, the GBNF of its arguments as rule
 * t<i>-root (i: its index in tools). */
static int args_rules(const exsa_tool_spec *spec, exsa_strbuf *out, exsa_err *err)
{
    size_t i;
    const json_t *t;
    json_array_foreach(spec->tools, i, t) {
        if (!selected(spec, t))
            continue;
        json_t *own;
        const json_t *params = params_of(t, &own);
        char *g = params ? exsa_json_schema_to_gbnf(params, err) : NULL;
        json_decref(own);
        if (!g) {
            if (!params)
                exsa_err_set(err, EXSA_ENOMEM, "tools: out of memory");
            else
                exsa_err_prefix(err, "tools[%zu].function.parameters", i);
            return err->code ? err->code : EXSA_ENOMEM;
        }
        char pfx[32];
        snprintf(pfx, sizeof pfx, "t%zu-", i);
        append_prefixed(out, g, pfx);
        exsa_strbuf_puts(out, "\n");
        free(g);
    }
    return 0;
}

/* Appends `x-call ::= open ( "N0" mid t0-root | ... ) close`: the tools'
 * names each followed by their own arguments. Strings are GBNF text. */
static void named_calls_rule(exsa_strbuf *out, const exsa_tool_spec *spec, const char *open,
                             const char *mid, const char *close)
{
    exsa_strbuf_printf(out, "x-call ::= %s (", open);
    size_t i;
    const json_t *t;
    int first = 1;
    json_array_foreach(spec->tools, i, t) {
        if (!selected(spec, t))
            continue;
        exsa_strbuf_printf(out, "%s \"%s%s\" t%zu-root", first ? "" : " |", name_of(t), mid, i);
        first = 0;
    }
    exsa_strbuf_printf(out, " ) %s\n", close);
}

/* Text that never holds ">>>" (Functionary v3.2's text segments). */
#define FV_TEXT_RULE "x-text ::= ( [^>] | \">\" [^>] | \">>\" [^>] )* ( \">\" | \">>\" )?\n"

/* The formats whose calls put the name outside the arguments' JSON. */
static char *family_grammar(const exsa_tool_spec *spec, int forced, int many,
                            const char **lazy_trigger, exsa_err *err)
{
    exsa_strbuf g;
    exsa_strbuf_init(&g);
    switch (spec->format) {
    case EXSA_TOOLS_DEEPSEEK_R1:
        exsa_strbuf_puts(&g, many ? "root ::= \"" DS_CALLS_BEGIN "\" x-call ( \"\\n\" x-call )* \""
                                    DS_CALLS_END "\"\n"
                                  : "root ::= \"" DS_CALLS_BEGIN "\" x-call \"" DS_CALLS_END
                                    "\"\n");
        named_calls_rule(&g, spec, "\"" DS_CALL_BEGIN "function" DS_SEP "\"", "\\n```json\\n",
                         "\"\\n```" DS_CALL_END "\"");
        if (!forced)
            *lazy_trigger = DS_CALLS_BEGIN;
        break;
    case EXSA_TOOLS_DEEPSEEK_V31:
        exsa_strbuf_puts(&g, many ? "root ::= \"" DS_CALLS_BEGIN "\" x-call+ \"" DS_CALLS_END "\"\n"
                                  : "root ::= \"" DS_CALLS_BEGIN "\" x-call \"" DS_CALLS_END
                                    "\"\n");
        named_calls_rule(&g, spec, "\"" DS_CALL_BEGIN "\"", DS_SEP, "\"" DS_CALL_END "\"");
        if (!forced)
            *lazy_trigger = DS_CALLS_BEGIN;
        break;
    case EXSA_TOOLS_FUNCTIONARY_V31:
        exsa_strbuf_puts(&g, many ? "root ::= x-call+\n" : "root ::= x-call\n");
        named_calls_rule(&g, spec, "\"" FN_OPEN "\"", ">", "\"" FN_CLOSE "\"");
        if (!forced)
            *lazy_trigger = FN_OPEN;
        break;
    default: /* EXSA_TOOLS_FUNCTIONARY_V32: the prompt ends with ">>>" */
        if (forced)
            exsa_strbuf_puts(&g, many ? "root ::= x-call ( \">>>\" x-call )*\n"
                                      : "root ::= x-call\n");
        else
            exsa_strbuf_puts(&g, many ? "root ::= x-seg ( \">>>\" x-seg )*\n"
                                        "x-seg ::= x-call | \"all\\n\" x-text\n" FV_TEXT_RULE
                                      : "root ::= \"all\\n\" x-text ( \">>>\" x-call )? | x-call\n"
                                        FV_TEXT_RULE);
        named_calls_rule(&g, spec, "", "\\n", "");
        break;
    }
    if (args_rules(spec, &g, err)) {
        exsa_strbuf_free(&g);
        *lazy_trigger = NULL;
        return NULL;
    }
    if (g.oom) {
        exsa_strbuf_free(&g);
        *lazy_trigger = NULL;
        exsa_err_set(err, EXSA_ENOMEM, "tools: out of memory");
        return NULL;
    }
    return g.p; /* the buffer's memory, handed over */
}

/* A JSON string, for the generic format's {"response": ...}. */
#define JSON_STRING_RULE                                                                       \
    "jstr ::= \"\\\"\" ( [^\"\\\\\\x00-\\x1f] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" "           \
    "[0-9a-fA-F]{4} ) )* \"\\\"\"\n"

char *exsa_tool_grammar(const exsa_tool_spec *spec, const char **lazy_trigger, exsa_err *err)
{
    *lazy_trigger = NULL;
    if (!spec->tools || spec->choice == EXSA_TOOL_CHOICE_NONE)
        return NULL;
    const int f = spec->format;
    const int forced = spec->choice == EXSA_TOOL_CHOICE_REQUIRED ||
                       spec->choice == EXSA_TOOL_CHOICE_NAMED;
    const int many = spec->parallel && spec->choice != EXSA_TOOL_CHOICE_NAMED;
    if (f == EXSA_TOOLS_DEEPSEEK_R1 || f == EXSA_TOOLS_DEEPSEEK_V31 ||
        f == EXSA_TOOLS_FUNCTIONARY_V31 || f == EXSA_TOOLS_FUNCTIONARY_V32)
        return family_grammar(spec, forced, many, lazy_trigger, err);
    char *calls = f == EXSA_TOOLS_COMMAND_R7B
                      ? call_rules(spec, "tool_call_id", "tool_name", "parameters", err)
                      : call_rules(spec, NULL, "name",
                                   f == EXSA_TOOLS_LLAMA3 ? "parameters" : "arguments", err);
    if (!calls)
        return NULL;
    const char *head;
    switch (f) {
    case EXSA_TOOLS_HERMES:
        head = many ? "root ::= one ( \"\\n\" one )*\n"
                      "one ::= \"<tool_call>\\n\" tcall \"\\n</tool_call>\"\n"
                    : "root ::= \"<tool_call>\\n\" tcall \"\\n</tool_call>\"\n";
        if (!forced)
            *lazy_trigger = "<tool_call>";
        break;
    case EXSA_TOOLS_MISTRAL:
        head = many ? "root ::= \"[TOOL_CALLS][\" tcall ( \", \" tcall )* \"]\"\n"
                    : "root ::= \"[TOOL_CALLS][\" tcall \"]\"\n";
        if (!forced)
            *lazy_trigger = "[TOOL_CALLS]";
        break;
    case EXSA_TOOLS_GRANITE:
        head = many ? "root ::= \"" GRANITE_MARK "[\" tcall ( \", \" tcall )* \"]\"\n"
                    : "root ::= \"" GRANITE_MARK "[\" tcall \"]\"\n";
        if (!forced)
            *lazy_trigger = GRANITE_MARK;
        break;
    case EXSA_TOOLS_COMMAND_R7B:
        /* the layout of the template: "[\n    {...},\n    {...}\n]" */
        head = many ? "root ::= \"" R7_ACTION "[\" x-ws tcall ( \",\" x-ws tcall )* x-ws \"]"
                      R7_ACTION_END "\"\nx-ws ::= ( \" \" | \"\\n\" [ \\t]{0,20} )?\n"
                    : "root ::= \"" R7_ACTION "[\" x-ws tcall x-ws \"]" R7_ACTION_END
                      "\"\nx-ws ::= ( \" \" | \"\\n\" [ \\t]{0,20} )?\n";
        if (!forced)
            *lazy_trigger = R7_ACTION;
        break;
    case EXSA_TOOLS_LLAMA3:
        head = "root ::= tcall\n";
        if (!forced)
            *lazy_trigger = "{\"";
        break;
    default:
        /* the whole answer is JSON: calls, or (unless forced) a response */
        head = forced ? (many ? "root ::= \"{\\\"tool_calls\\\": [\" tcall ( \", \" tcall )* \"]}\"\n"
                              : "root ::= \"{\\\"tool_calls\\\": [\" tcall \"]}\"\n")
                      : (many ? "root ::= \"{\\\"tool_calls\\\": [\" tcall ( \", \" tcall )* \"]}\" "
                                "| \"{\\\"response\\\": \" jstr \"}\"\n" JSON_STRING_RULE
                              : "root ::= \"{\\\"tool_calls\\\": [\" tcall \"]}\" "
                                "| \"{\\\"response\\\": \" jstr \"}\"\n" JSON_STRING_RULE);
        break;
    }
    size_t len = strlen(head) + strlen(calls) + 1;
    char *out = malloc(len);
    if (out)
        snprintf(out, len, "%s%s", head, calls);
    else {
        exsa_err_set(err, EXSA_ENOMEM, "tools: out of memory");
        *lazy_trigger = NULL;
    }
    free(calls);
    return out;
}

/* ---- the generic format's prompt ---- */

/* DeepSeek's own templates (R1, its distills, V3.1) render no tools: the
 * tools and the call syntax go into the system turn, and everything else
 * stays for the template, which writes calls and results natively. */
static json_t *deepseek_rewrite(const json_t *messages, const exsa_tool_spec *spec, exsa_err *err)
{
    json_t *desc = json_array(), *out = NULL;
    char *tools_text = NULL, *sys = NULL;
    size_t i;
    const json_t *t;
    if (!desc)
        goto oom;
    json_array_foreach(spec->tools, i, t) json_array_append(desc, (json_t *)fn_of(t));
    tools_text = json_dumps(desc, JSON_INDENT(2) | JSON_ENSURE_ASCII);
    if (!tools_text)
        goto oom;
    const int r1 = spec->format == EXSA_TOOLS_DEEPSEEK_R1;
    char must[320] = "";
    if (spec->choice == EXSA_TOOL_CHOICE_NAMED)
        snprintf(must, sizeof must, "\nCall the function %s.", spec->named);
    else if (spec->choice == EXSA_TOOL_CHOICE_REQUIRED)
        snprintf(must, sizeof must, "\nCall at least one function.");
    if (asprintf(&sys,
                 "You can call any of the following function tools to satisfy the user's "
                 "requests: %s\n\nExample function tool call syntax:\n\n%s%s",
                 tools_text,
                 r1 ? DS_CALLS_BEGIN DS_CALL_BEGIN "function" DS_SEP "example_function_name\n"
                      "```json\n{\n  \"arg1\": \"some_value\"\n}\n```" DS_CALL_END DS_CALLS_END
                    : DS_CALLS_BEGIN DS_CALL_BEGIN "example_function_name" DS_SEP
                      "{\"arg1\": \"some_value\"}" DS_CALL_END DS_CALLS_END,
                 must) < 0) {
        sys = NULL;
        goto oom;
    }
    out = json_array();
    if (!out)
        goto oom;
    const json_t *m;
    json_array_foreach(messages, i, m) {
        json_t *c = json_deep_copy(m);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (c && i == 0 && role && !strcmp(role, "system")) {
            const char *txt = json_string_value(json_object_get(m, "content"));
            char *joined = NULL;
            if (asprintf(&joined, "%s\n\n%s", sys, txt ? txt : "") < 0)
                joined = NULL;
            if (!joined || json_object_set_new(c, "content", json_string(joined))) {
                free(joined);
                json_decref(c);
                goto oom;
            }
            free(joined);
            free(sys);
            sys = NULL; /* used */
        }
        if (!c || json_array_append_new(out, c))
            goto oom;
    }
    if (sys && json_array_insert_new(out, 0, json_pack("{s:s, s:s}", "role", "system", "content",
                                                       sys)))
        goto oom;
    free(sys);
    free(tools_text);
    json_decref(desc);
    return out;
oom:
    free(sys);
    free(tools_text);
    json_decref(desc);
    json_decref(out);
    exsa_err_set(err, EXSA_ENOMEM, "tools: out of memory");
    return NULL;
}

json_t *exsa_tool_rewrite_messages(const json_t *messages, const exsa_tool_spec *spec,
                                   exsa_err *err)
{
    if (spec->format == EXSA_TOOLS_DEEPSEEK_R1 || spec->format == EXSA_TOOLS_DEEPSEEK_V31)
        return deepseek_rewrite(messages, spec, err);
    json_t *out = json_array();
    json_t *desc = NULL;
    char *sys = NULL;
    if (!out)
        goto oom;
    size_t i;
    /* Without tools on offer (none given, or tool_choice "none") the history
     * is still rewritten, since the template cannot render calls and tool
     * turns, but no tools are described and free text stays free text. */
    const int offered = spec->tools && spec->choice != EXSA_TOOL_CHOICE_NONE;
    if (offered) {
        const json_t *t;
        desc = json_array();
        if (!desc)
            goto oom;
        json_array_foreach(spec->tools, i, t) json_array_append(desc, (json_t *)fn_of(t));
        char *tools_text = json_dumps(desc, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(desc);
        desc = NULL;
        if (!tools_text)
            goto oom;
        const int forced = spec->choice == EXSA_TOOL_CHOICE_REQUIRED ||
                           spec->choice == EXSA_TOOL_CHOICE_NAMED;
        if (asprintf(&sys,
                     "You can call these tools (JSON Schema of their arguments):\n%s\n"
                     "Answer with JSON only:%s {\"tool_calls\": [{\"name\": <tool name>, "
                     "\"arguments\": {<arguments>}}]} to call tools%s. A tool's result comes "
                     "back in the next user turn.",
                     tools_text,
                     forced ? "" : " either",
                     forced ? "" : ", or {\"response\": \"<your answer>\"} to answer the user") < 0)
            sys = NULL;
        free(tools_text);
        if (!sys)
            goto oom;
    }
    const json_t *m;
    int have_system = 0;
    json_array_foreach(messages, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *c = json_deep_copy(m);
        if (!c)
            goto oom_sys;
        const json_t *calls = json_object_get(m, "tool_calls");
        const int has_calls = json_is_array(calls) && json_array_size(calls);
        if (!sys && role && (!strcmp(role, "system") || (!strcmp(role, "assistant") && !has_calls))) {
            /* no tools on offer: such turns as they are */
        } else if (role && !strcmp(role, "system") && i == 0) {
            const char *txt = json_string_value(json_object_get(m, "content"));
            char *joined = NULL;
            if (asprintf(&joined, "%s\n\n%s", txt ? txt : "", sys) < 0) {
                json_decref(c);
                goto oom_sys;
            }
            json_object_set_new(c, "content", json_string(joined));
            free(joined);
            have_system = 1;
        } else if (role && !strcmp(role, "assistant")) {
            /* earlier answers as the JSON this format answers with */
            json_t *obj;
            if (has_calls) {
                json_t *arr = json_array();
                size_t k;
                const json_t *tc;
                json_array_foreach(calls, k, tc) {
                    const json_t *fn = json_object_get(tc, "function");
                    const char *args = json_string_value(json_object_get(fn, "arguments"));
                    json_t *a = args ? json_loads(args, JSON_DECODE_ANY, NULL) : NULL;
                    json_array_append_new(
                        arr, json_pack("{s:O?, s:o}", "name", json_object_get(fn, "name"),
                                       "arguments", a ? a : json_object()));
                }
                obj = json_pack("{s:o}", "tool_calls", arr);
            } else {
                const json_t *txt = json_object_get(m, "content");
                obj = json_is_string(txt) ? json_pack("{s:O}", "response", txt)
                                          : json_pack("{s:s}", "response", "");
            }
            char *dump = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
            json_decref(obj);
            json_object_del(c, "tool_calls");
            json_object_set_new(c, "content", json_string(dump ? dump : ""));
            free(dump);
        } else if (role && !strcmp(role, "tool")) {
            const json_t *txt = json_object_get(m, "content");
            char *line = NULL;
            if (asprintf(&line, "Tool result%s%s: %s",
                         json_is_string(json_object_get(m, "tool_call_id")) ? " for " : "",
                         json_is_string(json_object_get(m, "tool_call_id"))
                             ? json_string_value(json_object_get(m, "tool_call_id"))
                             : "",
                         json_is_string(txt) ? json_string_value(txt) : "") < 0) {
                json_decref(c);
                goto oom_sys;
            }
            json_decref(c);
            c = json_pack("{s:s, s:s}", "role", "user", "content", line);
            free(line);
        }
        if (!c || json_array_append_new(out, c))
            goto oom_sys;
    }
    if (sys && !have_system &&
        json_array_insert_new(out, 0, json_pack("{s:s, s:s}", "role", "system", "content", sys)))
        goto oom_sys;
    free(sys);
    return out;
oom_sys:
    free(sys);
oom:
    json_decref(desc);
    json_decref(out);
    exsa_err_set(err, EXSA_ENOMEM, "tools: out of memory");
    return NULL;
}

/* ---- the output parser ---- */

enum {
    P_TEXT, P_CALL, P_JSON_HEAD, P_RESPONSE, P_REST,
    /* the families of family_byte() */
    X_SKIP,     /* Command R7B's thinking, dropped up to its end marker */
    X_UNTIL,    /* a call's text, up to the end marker `until` */
    X_DS_BLOCK, /* DeepSeek: between the calls of a block */
    X_JSON,     /* Granite: the JSON after the marker */
    X_NAME,     /* Functionary: the name after <function= / a recipient line */
    X_ARGS,     /* Functionary v3.2: a call's JSON after its recipient line */
};

struct exsa_tool_parser {
    int format, mode;
    char prefix[32];
    exsa_strbuf hold;  /* TEXT: a possible marker prefix; CALL: the call's text */
    int depth, in_str, esc; /* JSON scan (MISTRAL, LLAMA3) */
    int started;       /* LLAMA3 / GENERIC: the first non-space byte seen */
    char uesc[8];      /* GENERIC response: a \uXXXX escape in progress */
    int n_uesc, resp_esc;
    int resp_done;     /* GENERIC: the response string was streamed and closed */
    const char *until; /* X_UNTIL: the end marker */
    int in_block;      /* DeepSeek: inside <｜tool▁calls▁begin｜> ... end */
    int skip_ws;       /* text: drop white space (after a call or a marker) */
    int seg_marked;    /* Functionary v3.2: this segment began with ">>>" */
    char name[72];     /* Functionary: the call's name */
    exsa_tool_call *calls;
    int n_calls, cap_calls;
    int oom;
};

exsa_tool_parser *exsa_tool_parser_create(int format, const char *id_prefix, exsa_err *err)
{
    exsa_tool_parser *p = calloc(1, sizeof *p);
    if (!p) {
        exsa_err_set(err, EXSA_ENOMEM, "tools: out of memory");
        return NULL;
    }
    p->format = format;
    p->mode = format == EXSA_TOOLS_GENERIC           ? P_JSON_HEAD
              : format == EXSA_TOOLS_FUNCTIONARY_V32 ? X_NAME /* the prompt wrote ">>>" */
                                                     : P_TEXT;
    snprintf(p->prefix, sizeof p->prefix, "%s", id_prefix ? id_prefix : "");
    exsa_strbuf_init(&p->hold);
    return p;
}

void exsa_tool_parser_free(exsa_tool_parser *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n_calls; i++) {
        free(p->calls[i].name);
        free(p->calls[i].arguments);
    }
    free(p->calls);
    exsa_strbuf_free(&p->hold);
    free(p);
}

int exsa_tool_parser_n_calls(const exsa_tool_parser *p) { return p->n_calls; }
const exsa_tool_call *exsa_tool_parser_call(const exsa_tool_parser *p, int i)
{
    return i >= 0 && i < p->n_calls ? &p->calls[i] : NULL;
}

/* One call object {"name"|"tool_name", "arguments"|"parameters"} into the
 * list; 0 when it is not one. */
static int add_call(exsa_tool_parser *p, const json_t *o)
{
    const char *name = json_string_value(json_object_get(o, "name"));
    if (!name) /* Command R7B */
        name = json_string_value(json_object_get(o, "tool_name"));
    const json_t *args = json_object_get(o, "arguments");
    if (!args)
        args = json_object_get(o, "parameters");
    if (!json_is_object(o) || !name)
        return 0;
    char *a = json_is_string(args) ? strdup(json_string_value(args))
              : args              ? json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY)
                                  : strdup("{}");
    char *n = strdup(name);
    if (p->n_calls == p->cap_calls) {
        int cap = p->cap_calls ? 2 * p->cap_calls : 4;
        exsa_tool_call *c = realloc(p->calls, (size_t)cap * sizeof *c);
        if (!c) {
            free(a);
            free(n);
            p->oom = 1;
            return 0;
        }
        p->calls = c;
        p->cap_calls = cap;
    }
    if (!a || !n) {
        free(a);
        free(n);
        p->oom = 1;
        return 0;
    }
    exsa_tool_call *c = &p->calls[p->n_calls];
    snprintf(c->id, sizeof c->id, "call_%s%d", p->prefix, p->n_calls);
    c->name = n;
    c->arguments = a;
    p->n_calls++;
    return 1;
}

/* Calls in JSON text: one object or an array of them; 0 when none parse. */
static int add_calls_json(exsa_tool_parser *p, const char *s, size_t n)
{
    json_t *j = json_loadb(s, n, JSON_DECODE_ANY, NULL);
    int got = 0;
    if (json_is_array(j)) {
        size_t i;
        json_t *o;
        json_array_foreach(j, i, o) got += add_call(p, o);
    } else if (json_is_object(j)) {
        const json_t *tc = json_object_get(j, "tool_calls");
        if (json_is_array(tc)) {
            size_t i;
            json_t *o;
            json_array_foreach(tc, i, o) got += add_call(p, o);
        } else {
            got = add_call(p, j);
        }
    }
    json_decref(j);
    return got;
}

static const char *marker_of(int f)
{
    return f == EXSA_TOOLS_HERMES ? "<tool_call>" : f == EXSA_TOOLS_MISTRAL ? "[TOOL_CALLS]"
                                                                           : "<|python_tag|>";
}

/* The length of the longest suffix of s[0..n) that starts marker. */
static size_t partial_marker(const char *s, size_t n, const char *marker)
{
    size_t m = strlen(marker);
    for (size_t k = m - 1 < n ? m - 1 : n; k > 0; k--)
        if (!memcmp(s + n - k, marker, k))
            return k;
    return 0;
}

/* JSON scan: feeds one byte; 1 when a top-level value just closed. */
static int json_step(exsa_tool_parser *p, char c)
{
    if (p->in_str) {
        if (p->esc)
            p->esc = 0;
        else if (c == '\\')
            p->esc = 1;
        else if (c == '"')
            p->in_str = 0;
        return 0;
    }
    if (c == '"')
        p->in_str = 1;
    else if (c == '{' || c == '[')
        p->depth++;
    else if ((c == '}' || c == ']') && p->depth > 0)
        return --p->depth == 0;
    return 0;
}

static int feed_byte_text(exsa_tool_parser *p, char c, exsa_strbuf *out);

static int feed_text(exsa_tool_parser *p, const char *s, size_t n, exsa_strbuf *out)
{
    for (size_t i = 0; i < n; i++)
        if (feed_byte_text(p, s[i], out))
            return EXSA_ENOMEM;
    return p->oom ? EXSA_ENOMEM : 0;
}

/* GENERIC: {"response": "..."} streams its string, decoded; anything else
 * is kept for the end. */
static const char RESPONSE_HEAD[] = "{\"response\": \"";

static void response_byte(exsa_tool_parser *p, char c, exsa_strbuf *out)
{
    if (p->n_uesc) {
        p->uesc[p->n_uesc++ - 1] = c;
        if (p->n_uesc == 5) {
            char hex[5] = {p->uesc[0], p->uesc[1], p->uesc[2], p->uesc[3], 0};
            unsigned v = (unsigned)strtoul(hex, NULL, 16);
            char u[4];
            int k = 0;
            if (v < 0x80)
                u[k++] = (char)v;
            else if (v < 0x800)
                u[k++] = (char)(0xC0 | v >> 6), u[k++] = (char)(0x80 | (v & 63));
            else
                u[k++] = (char)(0xE0 | v >> 12), u[k++] = (char)(0x80 | (v >> 6 & 63)),
                u[k++] = (char)(0x80 | (v & 63));
            exsa_strbuf_append(out, u, (size_t)k);
            p->n_uesc = 0;
        }
        return;
    }
    if (p->resp_esc) {
        p->resp_esc = 0;
        const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
        const char *w = strchr(from, c);
        if (c == 'u')
            p->n_uesc = 1;
        else if (w && c)
            exsa_strbuf_append(out, &to[w - from], 1);
        return;
    }
    if (c == '\\')
        p->resp_esc = 1;
    else if (c == '"')
        p->mode = P_REST, p->resp_done = 1;
    else
        exsa_strbuf_append(out, &c, 1);
}

/* ---- the families with their own markers (DeepSeek, Command R7B,
 * Functionary, Granite) ---- */

static int is_family(int f) { return f >= EXSA_TOOLS_DEEPSEEK_R1 && f <= EXSA_TOOLS_GRANITE; }

static int is_name_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '-';
}

/* A call whose name is outside its arguments: args[0..n) must be a JSON
 * object. 0 when it is not one. */
static int add_named_call(exsa_tool_parser *p, const char *name, const char *args, size_t n)
{
    if (!valid_name(name))
        return 0;
    json_t *a = json_loadb(args, n, 0, NULL);
    if (!json_is_object(a)) {
        json_decref(a);
        return 0;
    }
    json_t *o = json_pack("{s:s, s:o}", "name", name, "arguments", a);
    if (!o) {
        p->oom = 1;
        return 0;
    }
    int got = add_call(p, o);
    json_decref(o);
    return got;
}

static int is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

/* Text for the user; leading white space dropped while skip_ws. */
static void text_out(exsa_tool_parser *p, exsa_strbuf *out, const char *s, size_t n)
{
    while (p->skip_ws && n && is_ws(*s))
        s++, n--;
    if (n)
        p->skip_ws = 0;
    exsa_strbuf_append(out, s, n);
}

/* Text mode over several markers: takes c, sends what can no longer start
 * a marker to out and holds the rest. The index of the marker that just
 * completed (the hold is then empty), -1 for none, -2 out of memory. */
static int scan_marks(exsa_tool_parser *p, char c, exsa_strbuf *out, const char *const *mk, int n)
{
    if (exsa_strbuf_append(&p->hold, &c, 1))
        return -2;
    size_t keep = 0;
    for (int i = 0; i < n; i++) {
        const size_t ml = strlen(mk[i]);
        if (p->hold.len >= ml && !memcmp(p->hold.p + p->hold.len - ml, mk[i], ml)) {
            text_out(p, out, p->hold.p, p->hold.len - ml);
            exsa_strbuf_reset(&p->hold);
            return i;
        }
        const size_t k = partial_marker(p->hold.p, p->hold.len, mk[i]);
        keep = k > keep ? k : keep;
    }
    if (p->hold.len > keep) {
        text_out(p, out, p->hold.p, p->hold.len - keep);
        memmove(p->hold.p, p->hold.p + p->hold.len - keep, keep);
        p->hold.len = keep;
    }
    return -1;
}

static void trim(const char **s, size_t *n)
{
    while (*n && is_ws(**s))
        (*s)++, (*n)--;
    while (*n && is_ws((*s)[*n - 1]))
        (*n)--;
}

/* One DeepSeek call, the text between its begin and end markers: V3.1's
 * "N<sep>{...}" or R1's "function<sep>N\n```json\n{...}\n```". */
static int ds_call(exsa_tool_parser *p, const char *s, size_t n)
{
    static const char sep[] = DS_SEP;
    const char *at = memmem(s, n, sep, sizeof sep - 1);
    if (!at)
        return 0;
    const char *l = s, *r = at + sizeof sep - 1;
    size_t ln = (size_t)(at - s), rn = n - (size_t)(r - s);
    trim(&l, &ln);
    trim(&r, &rn);
    const char *name = l;
    size_t nn = ln;
    if (!rn || *r != '{') { /* R1: the type before <sep>, the name after it */
        const char *nl = memchr(r, '\n', rn);
        if (!nl)
            return 0;
        name = r;
        nn = (size_t)(nl - r);
        rn -= (size_t)(nl + 1 - r);
        r = nl + 1;
        trim(&name, &nn);
        trim(&r, &rn);
        if (rn >= 7 && !memcmp(r, "```json", 7))
            r += 7, rn -= 7;
        else if (rn >= 3 && !memcmp(r, "```", 3))
            r += 3, rn -= 3;
        if (rn >= 3 && !memcmp(r + rn - 3, "```", 3))
            rn -= 3;
    }
    char nm[72];
    if (nn == 0 || nn >= sizeof nm)
        return 0;
    memcpy(nm, name, nn);
    nm[nn] = '\0';
    return add_named_call(p, nm, r, rn);
}

/* The end of an X_UNTIL call (body = the hold without the end marker):
 * the call into the list, or its whole text back as content. */
static void until_done(exsa_tool_parser *p, const char *body, size_t n, int closed,
                       exsa_strbuf *out)
{
    const char *open = "", *close = closed ? p->until : "";
    int got = 0;
    char head[96] = "";
    switch (p->format) {
    case EXSA_TOOLS_DEEPSEEK_R1:
    case EXSA_TOOLS_DEEPSEEK_V31:
        open = DS_CALL_BEGIN;
        got = ds_call(p, body, n);
        break;
    case EXSA_TOOLS_COMMAND_R7B:
        open = R7_ACTION;
        got = add_calls_json(p, body, n);
        break;
    default: /* EXSA_TOOLS_FUNCTIONARY_V31 */
        snprintf(head, sizeof head, FN_OPEN "%s>", p->name);
        open = head;
        got = add_named_call(p, p->name, body, n);
        break;
    }
    if (!got) {
        exsa_strbuf_puts(out, open);
        exsa_strbuf_append(out, body, n);
        exsa_strbuf_puts(out, close);
    }
    p->skip_ws = p->in_block; /* white space between a block's calls */
    p->mode = p->in_block ? X_DS_BLOCK : P_TEXT;
}

/* Functionary v3.2: the text a failed recipient or call came from. */
static void fv_restore(exsa_tool_parser *p, exsa_strbuf *out, int with_name)
{
    if (p->seg_marked)
        text_out(p, out, FV_SEP, 3);
    if (with_name) {
        text_out(p, out, p->name, strlen(p->name));
        text_out(p, out, "\n", 1);
    }
    text_out(p, out, p->hold.p, p->hold.len);
    exsa_strbuf_reset(&p->hold);
}

static int family_byte(exsa_tool_parser *p, char c, exsa_strbuf *out);

/* c did not fit the call it was read for: it is text, looked at again. */
static int again_as_text(exsa_tool_parser *p, char c, exsa_strbuf *out)
{
    p->mode = P_TEXT;
    return family_byte(p, c, out);
}

static int family_byte(exsa_tool_parser *p, char c, exsa_strbuf *out)
{
    static const char *const ds_marks[] = {DS_CALLS_BEGIN, DS_CALL_BEGIN};
    static const char *const ds_block[] = {DS_CALL_BEGIN, DS_CALLS_END};
    static const char *const r7_marks[] = {R7_THINK, R7_ACTION, R7_RESP, R7_RESP_END};
    static const char *const granite[] = {GRANITE_MARK};
    static const char *const fn_open[] = {FN_OPEN};
    static const char *const fv_sep[] = {FV_SEP};
    const int f = p->format;
    int m;
    switch (p->mode) {
    case X_SKIP: { /* drop up to the end of the thinking part */
        if (exsa_strbuf_append(&p->hold, &c, 1))
            return -1;
        static const char end[] = R7_THINK_END;
        const size_t e = sizeof end - 1;
        if (p->hold.len >= e && !memcmp(p->hold.p + p->hold.len - e, end, e)) {
            exsa_strbuf_reset(&p->hold);
            p->mode = P_TEXT;
            p->skip_ws = 1;
        } else {
            const size_t keep = partial_marker(p->hold.p, p->hold.len, end);
            memmove(p->hold.p, p->hold.p + p->hold.len - keep, keep);
            p->hold.len = keep;
        }
        return 0;
    }
    case X_UNTIL: {
        if (exsa_strbuf_append(&p->hold, &c, 1))
            return -1;
        const size_t e = strlen(p->until);
        if (p->hold.len >= e && !memcmp(p->hold.p + p->hold.len - e, p->until, e)) {
            until_done(p, p->hold.p, p->hold.len - e, 1, out);
            exsa_strbuf_reset(&p->hold);
        }
        return 0;
    }
    case X_DS_BLOCK:
        m = scan_marks(p, c, out, ds_block, 2);
        if (m == 0) {
            p->mode = X_UNTIL;
            p->until = DS_CALL_END;
        } else if (m == 1) {
            p->mode = P_TEXT;
            p->in_block = 0;
            p->skip_ws = 0;
        }
        return m == -2 ? -1 : 0;
    case X_JSON: /* Granite: one JSON value after the marker */
        if (!p->started && !is_ws(c)) {
            p->started = 1;
            if (c != '[' && c != '{') {
                text_out(p, out, GRANITE_MARK, sizeof GRANITE_MARK - 1);
                text_out(p, out, p->hold.p, p->hold.len);
                exsa_strbuf_reset(&p->hold);
                return again_as_text(p, c, out);
            }
        }
        if (exsa_strbuf_append(&p->hold, &c, 1))
            return -1;
        if (json_step(p, c)) {
            if (!add_calls_json(p, p->hold.p, p->hold.len)) {
                exsa_strbuf_puts(out, GRANITE_MARK);
                exsa_strbuf_append(out, p->hold.p, p->hold.len);
            }
            exsa_strbuf_reset(&p->hold);
            p->mode = P_TEXT;
        }
        return 0;
    case X_NAME: {
        const size_t nl = strlen(p->name);
        if (f == EXSA_TOOLS_FUNCTIONARY_V31) {
            if (c == '>' && nl) {
                p->mode = X_UNTIL;
                p->until = FN_CLOSE;
                return 0;
            }
            if (is_name_char(c) && nl < 64) {
                p->name[nl] = c;
                p->name[nl + 1] = '\0';
                return 0;
            }
            text_out(p, out, FN_OPEN, sizeof FN_OPEN - 1);
            text_out(p, out, p->name, nl);
            return again_as_text(p, c, out);
        }
        /* Functionary v3.2: a recipient line; the first segment may
         * repeat the prompt's ">>>" */
        if (c == '>' && !p->seg_marked && nl < 3 && strspn(p->name, ">") == nl) {
            p->name[nl] = c;
            p->name[nl + 1] = '\0';
            return 0;
        }
        if (!p->seg_marked && nl == 3 && !strcmp(p->name, FV_SEP)) {
            p->seg_marked = 1;
            p->name[0] = '\0';
            return family_byte(p, c, out);
        }
        if (c == '\n' && nl) {
            if (!strcmp(p->name, "all")) {
                p->mode = P_TEXT;
                p->skip_ws = 0;
            } else if (valid_name(p->name)) {
                p->mode = X_ARGS;
                p->started = p->depth = p->in_str = p->esc = 0;
            } else {
                fv_restore(p, out, 1);
                p->mode = P_TEXT;
            }
            return 0;
        }
        if (is_name_char(c) && nl < 64) {
            p->name[nl] = c;
            p->name[nl + 1] = '\0';
            return 0;
        }
        if (p->seg_marked)
            text_out(p, out, FV_SEP, 3);
        text_out(p, out, p->name, nl);
        return again_as_text(p, c, out);
    }
    case X_ARGS:
        if (!p->started && !is_ws(c)) {
            p->started = 1;
            if (c != '{') {
                fv_restore(p, out, 1);
                return again_as_text(p, c, out);
            }
        }
        if (exsa_strbuf_append(&p->hold, &c, 1))
            return -1;
        if (p->started && json_step(p, c)) {
            if (!add_named_call(p, p->name, p->hold.p, p->hold.len))
                fv_restore(p, out, 1);
            exsa_strbuf_reset(&p->hold);
            p->mode = P_TEXT;
            p->skip_ws = 1;
        }
        return 0;
    default: /* P_TEXT */
        break;
    }
    switch (f) {
    case EXSA_TOOLS_DEEPSEEK_R1:
    case EXSA_TOOLS_DEEPSEEK_V31:
        m = scan_marks(p, c, out, ds_marks, 2);
        if (m == 0) {
            p->mode = X_DS_BLOCK;
            p->in_block = 1;
            p->skip_ws = 1;
        } else if (m == 1) { /* a call without the block's marker */
            p->mode = X_UNTIL;
            p->until = DS_CALL_END;
        }
        break;
    case EXSA_TOOLS_COMMAND_R7B:
        m = scan_marks(p, c, out, r7_marks, 4);
        if (m == 0) {
            p->mode = X_SKIP;
        } else if (m == 1) {
            p->mode = X_UNTIL;
            p->until = R7_ACTION_END;
        }
        break;
    case EXSA_TOOLS_GRANITE:
        m = scan_marks(p, c, out, granite, 1);
        if (m == 0) {
            p->mode = X_JSON;
            p->started = p->depth = p->in_str = p->esc = 0;
        }
        break;
    case EXSA_TOOLS_FUNCTIONARY_V31:
        m = scan_marks(p, c, out, fn_open, 1);
        if (m == 0) {
            p->mode = X_NAME;
            p->name[0] = '\0';
        }
        break;
    default: /* EXSA_TOOLS_FUNCTIONARY_V32 */
        m = scan_marks(p, c, out, fv_sep, 1);
        if (m == 0) {
            p->mode = X_NAME;
            p->name[0] = '\0';
            p->seg_marked = 1;
        }
        break;
    }
    return m == -2 ? -1 : 0;
}

/* The end of the output for the families: a call cut short is kept when it
 * parses, else its text is content. */
static void family_finish(exsa_tool_parser *p, exsa_strbuf *out)
{
    switch (p->mode) {
    case X_UNTIL:
        until_done(p, p->hold.p, p->hold.len, 0, out);
        break;
    case X_JSON:
        if (!p->hold.len || !add_calls_json(p, p->hold.p, p->hold.len)) {
            text_out(p, out, GRANITE_MARK, sizeof GRANITE_MARK - 1);
            text_out(p, out, p->hold.p, p->hold.len);
        }
        break;
    case X_NAME:
        if (p->format == EXSA_TOOLS_FUNCTIONARY_V31) {
            text_out(p, out, FN_OPEN, sizeof FN_OPEN - 1);
            text_out(p, out, p->name, strlen(p->name));
        } else {
            if (p->seg_marked)
                text_out(p, out, FV_SEP, 3);
            text_out(p, out, p->name, strlen(p->name));
        }
        break;
    case X_ARGS:
        if (!p->hold.len || !add_named_call(p, p->name, p->hold.p, p->hold.len))
            fv_restore(p, out, 1);
        break;
    case X_SKIP:
        break; /* unterminated thinking: dropped like the rest of it */
    default: /* P_TEXT, X_DS_BLOCK */
        text_out(p, out, p->hold.p, p->hold.len);
        break;
    }
    exsa_strbuf_reset(&p->hold);
}

static int feed_byte_text(exsa_tool_parser *p, char c, exsa_strbuf *out)
{
    if (is_family(p->format))
        return family_byte(p, c, out);
    switch (p->mode) {
    case P_JSON_HEAD: /* GENERIC until the head says which answer it is */
        if (exsa_strbuf_append(&p->hold, &c, 1))
            return -1;
        if (p->hold.len <= sizeof RESPONSE_HEAD - 1 &&
            !memcmp(p->hold.p, RESPONSE_HEAD, p->hold.len)) {
            if (p->hold.len == sizeof RESPONSE_HEAD - 1) {
                p->mode = P_RESPONSE;
                exsa_strbuf_reset(&p->hold);
            }
        } else {
            p->mode = P_REST; /* calls or free text: parsed at the end */
        }
        return 0;
    case P_RESPONSE:
        response_byte(p, c, out);
        return 0;
    case P_REST:
        return exsa_strbuf_append(&p->hold, &c, 1) ? -1 : 0;
    case P_CALL:
        if (exsa_strbuf_append(&p->hold, &c, 1))
            return -1;
        if (p->format == EXSA_TOOLS_HERMES) {
            static const char end[] = "</tool_call>";
            const size_t e = sizeof end - 1;
            if (p->hold.len >= e && !memcmp(p->hold.p + p->hold.len - e, end, e)) {
                if (!add_calls_json(p, p->hold.p, p->hold.len - e)) {
                    exsa_strbuf_puts(out, "<tool_call>");
                    exsa_strbuf_append(out, p->hold.p, p->hold.len);
                }
                exsa_strbuf_reset(&p->hold);
                p->mode = P_TEXT;
            }
        } else if (json_step(p, c)) {
            if (!add_calls_json(p, p->hold.p, p->hold.len))
                exsa_strbuf_append(out, p->hold.p, p->hold.len);
            exsa_strbuf_reset(&p->hold);
            p->mode = P_TEXT;
        }
        return 0;
    default: /* P_TEXT */
        break;
    }
    if (p->format == EXSA_TOOLS_LLAMA3 && !p->started) {
        if (isspace((unsigned char)c))
            return exsa_strbuf_append(&p->hold, &c, 1) ? -1 : 0;
        p->started = 1;
        if (c == '{') {
            exsa_strbuf_reset(&p->hold);
            p->mode = P_CALL;
            p->depth = 0;
            p->in_str = p->esc = 0;
            return feed_byte_text(p, c, out);
        }
    }
    /* hold back what may be the start of the marker */
    if (exsa_strbuf_append(&p->hold, &c, 1))
        return -1;
    const char *mk = marker_of(p->format);
    const size_t ml = strlen(mk);
    if (p->hold.len >= ml && !memcmp(p->hold.p + p->hold.len - ml, mk, ml)) {
        exsa_strbuf_append(out, p->hold.p, p->hold.len - ml);
        exsa_strbuf_reset(&p->hold);
        p->mode = P_CALL;
        p->depth = 0;
        p->in_str = p->esc = 0;
        return 0;
    }
    const size_t keep = partial_marker(p->hold.p, p->hold.len, mk);
    if (p->hold.len > keep) {
        exsa_strbuf_append(out, p->hold.p, p->hold.len - keep);
        memmove(p->hold.p, p->hold.p + p->hold.len - keep, keep);
        p->hold.len = keep;
    }
    return 0;
}

int exsa_tool_parser_feed(exsa_tool_parser *p, const char *s, size_t n, exsa_strbuf *content_out)
{
    return feed_text(p, s, n, content_out);
}

int exsa_tool_parser_finish(exsa_tool_parser *p, exsa_strbuf *out)
{
    if (is_family(p->format)) {
        family_finish(p, out);
        p->mode = p->format == EXSA_TOOLS_FUNCTIONARY_V32 ? X_NAME : P_TEXT;
        p->in_block = p->seg_marked = p->skip_ws = 0;
        p->name[0] = '\0';
        return p->oom || out->oom ? EXSA_ENOMEM : 0;
    }
    switch (p->mode) {
    case P_TEXT:
        exsa_strbuf_append(out, p->hold.p, p->hold.len);
        break;
    case P_CALL:
        /* an unterminated call: keep it if it parses, else it was text */
        if (!add_calls_json(p, p->hold.p, p->hold.len)) {
            if (p->format == EXSA_TOOLS_HERMES || p->format == EXSA_TOOLS_MISTRAL)
                exsa_strbuf_puts(out, marker_of(p->format));
            exsa_strbuf_append(out, p->hold.p, p->hold.len);
        }
        break;
    case P_JSON_HEAD:
    case P_REST:
        /* after a streamed response only its closing brace is left */
        if (!p->resp_done && p->hold.len && !add_calls_json(p, p->hold.p, p->hold.len)) {
            /* {"response": ...} cut short, or text the grammar did not
             * shape: the text as it is, unless it is the response object */
            json_t *j = json_loadb(p->hold.p, p->hold.len, 0, NULL);
            const char *r = json_string_value(json_object_get(j, "response"));
            if (r)
                exsa_strbuf_puts(out, r);
            else
                exsa_strbuf_append(out, p->hold.p, p->hold.len);
            json_decref(j);
        }
        break;
    default:
        break;
    }
    exsa_strbuf_reset(&p->hold);
    p->mode = P_TEXT;
    return p->oom || out->oom ? EXSA_ENOMEM : 0;
}
