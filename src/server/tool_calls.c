/* Tool calling: formats, grammars, the generic prompt rewrite and the
 * incremental output parser (tool_calls.h). */
#include "server/tool_calls.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/json_schema.h"
#include "util/err.h"

int exsa_tool_format_detect(const char *src)
{
    if (!src)
        return EXSA_TOOLS_GENERIC;
    if (strstr(src, "<tool_call>"))
        return EXSA_TOOLS_HERMES;
    if (strstr(src, "[TOOL_CALLS]"))
        return EXSA_TOOLS_MISTRAL;
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

/* The JSON Schema of one call object: anyOf over the tools (or the named
 * one), each {"name": const, <argkey>: its parameters}. */
static json_t *call_schema(const exsa_tool_spec *spec, const char *argkey)
{
    json_t *any = json_array();
    size_t i;
    const json_t *t;
    json_array_foreach(spec->tools, i, t) {
        const char *name = name_of(t);
        if (spec->choice == EXSA_TOOL_CHOICE_NAMED && strcmp(name, spec->named))
            continue;
        const json_t *params = json_object_get(fn_of(t), "parameters");
        json_t *props = json_object();
        json_object_set_new(props, "name", json_pack("{s:s}", "const", name));
        json_object_set(props, argkey,
                        params && json_is_object(params) && json_object_size(params)
                            ? (json_t *)params
                            : json_pack("{s:s}", "type", "object"));
        if (!(params && json_is_object(params) && json_object_size(params)))
            json_decref(json_object_get(props, argkey)); /* the pack's own reference */
        json_array_append_new(any, json_pack("{s:s, s:o, s:[s,s], s:b}", "type", "object",
                                             "properties", props, "required", "name", argkey,
                                             "additionalProperties", 0));
    }
    return json_pack("{s:o}", "anyOf", any);
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
    json_t *schema = call_schema(spec, f == EXSA_TOOLS_LLAMA3 ? "parameters" : "arguments");
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
    if (!calls) {
        exsa_err_set(err, EXSA_ENOMEM, "tools: out of memory");
        return NULL;
    }
    const int forced = spec->choice == EXSA_TOOL_CHOICE_REQUIRED ||
                       spec->choice == EXSA_TOOL_CHOICE_NAMED;
    const int many = spec->parallel && spec->choice != EXSA_TOOL_CHOICE_NAMED;
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
    else
        exsa_err_set(err, EXSA_ENOMEM, "tools: out of memory");
    free(calls);
    return out;
}

/* ---- the generic format's prompt ---- */

json_t *exsa_tool_rewrite_messages(const json_t *messages, const exsa_tool_spec *spec,
                                   exsa_err *err)
{
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

enum { P_TEXT, P_CALL, P_JSON_HEAD, P_RESPONSE, P_REST };

struct exsa_tool_parser {
    int format, mode;
    char prefix[32];
    exsa_strbuf hold;  /* TEXT: a possible marker prefix; CALL: the call's text */
    int depth, in_str, esc; /* JSON scan (MISTRAL, LLAMA3) */
    int started;       /* LLAMA3 / GENERIC: the first non-space byte seen */
    char uesc[8];      /* GENERIC response: a \uXXXX escape in progress */
    int n_uesc, resp_esc;
    int resp_done;     /* GENERIC: the response string was streamed and closed */
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
    p->mode = format == EXSA_TOOLS_GENERIC ? P_JSON_HEAD : P_TEXT;
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

/* One call object {"name", "arguments"|"parameters"} into the list; 0 when
 * it is not one. */
static int add_call(exsa_tool_parser *p, const json_t *o)
{
    const char *name = json_string_value(json_object_get(o, "name"));
    const json_t *args = json_object_get(o, "arguments");
    if (!args)
        args = json_object_get(o, "parameters");
    if (!json_is_object(o) || !name)
        return 0;
    char *a = json_is_string(args) ? strdup(json_string_value(args))
                                   : json_dumps(args ? args : json_object(), JSON_COMPACT);
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

static int feed_byte_text(exsa_tool_parser *p, char c, exsa_strbuf *out)
{
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
