/* JSON Schema -> GBNF. See json_schema.h for the supported subset.
 *
 * gen() turns one schema into a GBNF expression that is safe to place in a
 * sequence (alternations come parenthesised). Sub-schemas whose expression
 * is long get a rule of their own named after their path; $ref targets get
 * a rule named after the pointer's last segment, created before the body is
 * generated so that recursive refs can name it. Shared primitives (string,
 * number, ws, ...) are appended once at the end, only when used.
 */
#include "engine/json_schema.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

#define MAX_DEPTH 64
#define MAX_RULES 20000
#define MAX_BYTES (8u << 20)
#define MAX_REPEAT 10000
#define MAX_PROPS 1000
#define MAX_BOUND 1000000000000000000LL /* 10^18 */

/* ---- string builder ---- */

typedef struct sb {
    char *p;
    size_t n, cap;
    int oom;
} sb;

static void sb_putn(sb *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_puts(sb *b, const char *s) { sb_putn(b, s, strlen(s)); }

static void sb_printf(sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sb *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if ((size_t)n < sizeof tmp) {
        sb_putn(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_putn(b, big, (size_t)n);
    free(big);
}

/* Takes the built string; an empty builder gives "" (never NULL unless oom). */
static char *sb_take(sb *b)
{
    if (b->oom) {
        free(b->p);
        b->p = NULL;
        return NULL;
    }
    if (!b->p)
        return strdup("");
    char *p = b->p;
    b->p = NULL;
    return p;
}

/* ---- UTF-8 ---- */

/* Decodes one code point; returns its length or 0 when invalid. */
static int utf8_dec(const char *s, size_t n, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (n == 0)
        return 0;
    if (u[0] < 0x80) {
        *cp = u[0];
        return 1;
    }
    int len = (u[0] & 0xE0) == 0xC0 ? 2 : (u[0] & 0xF0) == 0xE0 ? 3 : (u[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (!len || (size_t)len > n)
        return 0;
    uint32_t c = u[0] & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if ((u[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (u[i] & 0x3F);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return len;
}

/* ---- GBNF atoms ---- */

/* One code point as it may appear in a GBNF literal or class. Letters and
 * digits stay raw; everything else is a hex escape so that no character is
 * special to the GBNF parser. */
static void put_cp(sb *b, uint32_t c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        char ch = (char)c;
        sb_putn(b, &ch, 1);
    } else if (c < 0x80) {
        sb_printf(b, "\\x%02X", c);
    } else if (c < 0x10000) {
        sb_printf(b, "\\u%04X", c);
    } else {
        sb_printf(b, "\\U%08X", c);
    }
}

/* A GBNF literal for the UTF-8 text s[0..n) (already valid UTF-8). */
static void put_lit(sb *b, const char *s, size_t n)
{
    sb_putn(b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        uint32_t c;
        int l = utf8_dec(s + i, n - i, &c);
        if (!l) { /* not reached for jansson strings; keep the byte */
            c = (unsigned char)s[i];
            l = 1;
        }
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
            char ch = (char)c;
            sb_putn(b, &ch, 1);
        } else if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            sb_putn(b, esc, 2);
        } else {
            put_cp(b, c);
        }
        i += (size_t)l;
    }
    sb_putn(b, "\"", 1);
}

/* ---- context ---- */

typedef struct rule {
    char *name;
    char *body; /* NULL while reserved */
} rule;

typedef struct refent {
    char *ref;
    char *name;
    int done;
} refent;

enum {
    P_WS,
    P_CHAR,
    P_STRING,
    P_INTEGER,
    P_NUMBER,
    P_BOOLEAN,
    P_NULL,
    P_VALUE,
    P_OBJECT,
    P_ARRAY,
    P_DATE,
    P_TIME,
    P_DATETIME,
    P_UUID,
    P_COUNT
};

static const struct {
    const char *name, *body;
    unsigned deps;
} prims[P_COUNT] = {
    [P_WS] = {"ws", "( \" \" | \"\\n\" [ \\t]{0,20} )?", 0},
    [P_CHAR] = {"char", "[^\\x22\\x5C\\x00-\\x1F] | \"\\\\\" ( [\\x22\\x5C/bfnrt] | \"u\" [0-9a-fA-F]{4} )", 0},
    [P_STRING] = {"string", "\"\\\"\" char* \"\\\"\"", 1u << P_CHAR},
    [P_INTEGER] = {"integer", "\"0\" | \"-\"? [1-9] [0-9]{0,18}", 0},
    [P_NUMBER] = {"number",
                  "\"-\"? ( \"0\" | [1-9] [0-9]{0,15} ) ( \".\" [0-9]{1,16} )? "
                  "( [eE] ( \"+\" | \"-\" )? [0-9]{1,3} )?",
                  0},
    [P_BOOLEAN] = {"boolean", "\"true\" | \"false\"", 0},
    [P_NULL] = {"null", "\"null\"", 0},
    [P_VALUE] = {"value", "object | array | string | number | boolean | null",
                 (1u << P_OBJECT) | (1u << P_ARRAY) | (1u << P_STRING) | (1u << P_NUMBER) |
                     (1u << P_BOOLEAN) | (1u << P_NULL)},
    [P_OBJECT] = {"object",
                  "\"{\" ws ( string ws \":\" ws value ws ( \",\" ws string ws \":\" ws value ws )* )? "
                  "\"}\"",
                  (1u << P_WS) | (1u << P_STRING) | (1u << P_VALUE)},
    [P_ARRAY] = {"array", "\"[\" ws ( value ws ( \",\" ws value ws )* )? \"]\"",
                 (1u << P_WS) | (1u << P_VALUE)},
    [P_DATE] = {"date",
                "[0-9]{4} \"-\" ( \"0\" [1-9] | \"1\" [0-2] ) \"-\" "
                "( \"0\" [1-9] | [12] [0-9] | \"3\" [01] )",
                0},
    [P_TIME] = {"time",
                "( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] \":\" ( [0-5] [0-9] | \"60\" ) "
                "( \".\" [0-9]{1,9} )? ( [Zz] | ( \"+\" | \"-\" ) ( [01] [0-9] | \"2\" [0-3] ) "
                "\":\" [0-5] [0-9] )",
                0},
    [P_DATETIME] = {"date-time", "date [Tt] time", (1u << P_DATE) | (1u << P_TIME)},
    [P_UUID] = {"uuid",
                "[0-9a-fA-F]{8} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} "
                "\"-\" [0-9a-fA-F]{12}",
                0},
};

typedef struct ctx {
    const json_t *root;
    exsa_err *err;
    int failed;
    rule *rules;
    size_t nrules, caprules;
    refent *refs;
    size_t nrefs, caprefs;
    size_t bytes;
    unsigned prims_used;
    int depth;
    /* refs entered since the last consumed character: reaching one of them
     * again would be left recursion */
    const char *head[MAX_DEPTH + 1];
    int nhead, head_base;
    char path[1024];
    size_t plen;
} ctx;

static char *fail(ctx *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static char *fail(ctx *c, int code, const char *fmt, ...)
{
    if (c->failed)
        return NULL;
    c->failed = 1;
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    exsa_err_set(c->err, code, "json schema: %s (at %s)", msg, c->plen ? c->path : "#");
    return NULL;
}

static char *oom(ctx *c) { return fail(c, EXSA_ENOMEM, "out of memory"); }

static char *dupname(ctx *c, const char *s)
{
    char *d = strdup(s);
    return d ? d : oom(c);
}

/* Path segments are JSON pointer tokens (~ -> ~0, / -> ~1). Returns the
 * previous length for pop; a path that would not fit is cut with "...". */
static size_t path_push(ctx *c, const char *seg)
{
    size_t old = c->plen;
    if (!c->plen) {
        c->path[0] = '#';
        c->plen = 1;
    }
    sb t = {0};
    sb_putn(&t, "/", 1);
    for (const char *s = seg; *s; s++) {
        if (*s == '~')
            sb_puts(&t, "~0");
        else if (*s == '/')
            sb_puts(&t, "~1");
        else
            sb_putn(&t, s, 1);
    }
    if (t.p && !t.oom) {
        size_t room = sizeof c->path - c->plen - 1;
        if (t.n <= room) {
            memcpy(c->path + c->plen, t.p, t.n);
            c->plen += t.n;
        } else if (room >= 4) {
            memcpy(c->path + c->plen, "/...", 4);
            c->plen += 4;
        }
        c->path[c->plen] = '\0';
    }
    free(t.p);
    if (old == 0 && c->plen == 1)
        c->path[1] = '\0';
    return old;
}

static size_t path_push_idx(ctx *c, const char *kw, size_t i)
{
    size_t old = path_push(c, kw);
    char num[32];
    snprintf(num, sizeof num, "%zu", i);
    path_push(c, num);
    return old;
}

static void path_pop(ctx *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

static const char *prim(ctx *c, int p)
{
    c->prims_used |= 1u << p;
    return prims[p].name;
}

static int name_taken(ctx *c, const char *name)
{
    if (!strcmp(name, "root"))
        return 1;
    for (int p = 0; p < P_COUNT; p++)
        if (!strcmp(prims[p].name, name))
            return 1;
    for (size_t i = 0; i < c->nrules; i++)
        if (!strcmp(c->rules[i].name, name))
            return 1;
    return 0;
}

/* Reserves a rule named after hint (letters, digits, '-'; made unique with a
 * numeric suffix). Returns its index or -1. */
static long rule_reserve(ctx *c, const char *hint)
{
    if (c->failed)
        return -1;
    if (c->nrules >= MAX_RULES) {
        fail(c, EXSA_EUNSUPPORTED, "schema needs more than %d grammar rules", MAX_RULES);
        return -1;
    }
    char base[72];
    size_t n = 0;
    for (const char *s = hint; *s && n < 60; s++) {
        char ch = *s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
            base[n++] = ch;
        else if (n && base[n - 1] != '-')
            base[n++] = '-';
    }
    while (n && base[n - 1] == '-')
        n--;
    if (!n) {
        memcpy(base, "r", 1);
        n = 1;
    }
    base[n] = '\0';
    char name[96];
    snprintf(name, sizeof name, "%s", base);
    for (unsigned k = 1; name_taken(c, name); k++)
        snprintf(name, sizeof name, "%s-%u", base, k);
    if (c->nrules == c->caprules) {
        size_t cap = c->caprules ? c->caprules * 2 : 32;
        rule *r = realloc(c->rules, cap * sizeof *r);
        if (!r) {
            oom(c);
            return -1;
        }
        c->rules = r;
        c->caprules = cap;
    }
    char *dup = strdup(name);
    if (!dup) {
        oom(c);
        return -1;
    }
    c->rules[c->nrules].name = dup;
    c->rules[c->nrules].body = NULL;
    return (long)c->nrules++;
}

/* Sets a reserved rule's body (taking it). */
static int rule_set(ctx *c, long idx, char *body)
{
    if (!body)
        return -1;
    c->bytes += strlen(body) + strlen(c->rules[idx].name) + 6;
    if (c->bytes > MAX_BYTES) {
        free(body);
        fail(c, EXSA_EUNSUPPORTED, "grammar would exceed %u bytes", MAX_BYTES);
        return -1;
    }
    c->rules[idx].body = body;
    return 0;
}

/* An expression is "simple" when it is one token: a name or a short
 * literal/class without spaces. Anything else gets a rule of its own when it
 * is reused or large. */
static int is_simple(const char *e) { return !strchr(e, ' ') && strlen(e) < 64; }

/* Turns expr (taken) into a rule reference named after hint unless simple. */
static char *as_rule(ctx *c, char *expr, const char *hint)
{
    if (!expr || is_simple(expr))
        return expr;
    long idx = rule_reserve(c, hint);
    if (idx < 0 || rule_set(c, idx, expr) < 0) {
        if (idx < 0)
            free(expr);
        return NULL;
    }
    char *name = strdup(c->rules[idx].name);
    return name ? name : oom(c);
}

/* ---- keyword tables ---- */

static const char *const refused_kw[] = {
    "not", "if", "then", "else", "patternProperties", "propertyNames", "dependentRequired",
    "dependentSchemas", "dependencies", "multipleOf", "uniqueItems", "contains", "minContains",
    "maxContains", "minProperties", "maxProperties", "unevaluatedProperties", "unevaluatedItems",
    "additionalItems", "$dynamicRef", "$recursiveRef", NULL};

/* Keywords this converter acts on (besides $ref / combinators). */
static const char *const object_kw[] = {"properties", "required", "additionalProperties", NULL};
static const char *const array_kw[] = {"items", "prefixItems", "minItems", "maxItems", NULL};
static const char *const string_kw[] = {"minLength", "maxLength", "pattern", "format", NULL};
static const char *const int_kw[] = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                                     NULL};
static const char *const other_kw[] = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref",
                                       NULL};

static int in_list(const char *const *l, const char *k)
{
    for (; *l; l++)
        if (!strcmp(*l, k))
            return 1;
    return 0;
}

static int has_any(const json_t *s, const char *const *l)
{
    for (; *l; l++)
        if (json_object_get(s, *l))
            return 1;
    return 0;
}

/* The first constraining keyword of s other than the one named `self`, or
 * NULL (annotations, $defs and unknown keywords do not count). */
static const char *other_constraint(const json_t *s, const char *self)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)s, k, v)
    {
        if (!strcmp(k, self))
            continue;
        if (in_list(object_kw, k) || in_list(array_kw, k) || in_list(string_kw, k) ||
            in_list(int_kw, k) || in_list(other_kw, k))
            return k;
    }
    return NULL;
}

/* ---- literal values (enum / const) ---- */

static void put_real(sb *b, double v)
{
    char tmp[40];
    /* shortest text that reads back as the same double */
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    sb_puts(b, tmp);
    if (!strpbrk(tmp, ".eEn")) /* keep it a real: 1 -> 1.0 */
        sb_puts(b, ".0");
}

static int dump_compact(sb *b, const json_t *v, int depth)
{
    if (depth > MAX_DEPTH)
        return -1;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        sb_putn(b, "{", 1);
        const char *k;
        json_t *x;
        int first = 1;
        json_object_foreach((json_t *)v, k, x)
        {
            if (!first)
                sb_putn(b, ",", 1);
            first = 0;
            json_t *ks = json_string(k);
            char *kd = ks ? json_dumps(ks, JSON_ENCODE_ANY) : NULL;
            json_decref(ks);
            if (!kd)
                return -1;
            sb_puts(b, kd);
            free(kd);
            sb_putn(b, ":", 1);
            if (dump_compact(b, x, depth + 1) < 0)
                return -1;
        }
        sb_putn(b, "}", 1);
        return 0;
    }
    case JSON_ARRAY:
        sb_putn(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i)
                sb_putn(b, ",", 1);
            if (dump_compact(b, json_array_get(v, i), depth + 1) < 0)
                return -1;
        }
        sb_putn(b, "]", 1);
        return 0;
    case JSON_STRING: {
        char *d = json_dumps(v, JSON_ENCODE_ANY);
        if (!d)
            return -1;
        sb_puts(b, d);
        free(d);
        return 0;
    }
    case JSON_INTEGER: sb_printf(b, "%lld", (long long)json_integer_value(v)); return 0;
    case JSON_REAL:
        if (!isfinite(json_real_value(v)))
            return -1;
        put_real(b, json_real_value(v));
        return 0;
    case JSON_TRUE: sb_puts(b, "true"); return 0;
    case JSON_FALSE: sb_puts(b, "false"); return 0;
    case JSON_NULL: sb_puts(b, "null"); return 0;
    }
    return -1;
}

static char *literal_of(ctx *c, const json_t *v)
{
    sb t = {0};
    if (dump_compact(&t, v, 0) < 0) {
        free(t.p);
        return fail(c, EXSA_EINVAL, "value cannot be written as JSON");
    }
    if (t.oom) {
        free(t.p);
        return oom(c);
    }
    sb b = {0};
    put_lit(&b, t.p, t.n);
    free(t.p);
    char *r = sb_take(&b);
    return r ? r : oom(c);
}

/* ---- code point sets (regex classes, key exclusion) ---- */

typedef struct cpset {
    uint32_t lo[256], hi[256];
    int n;
} cpset;

static int set_add(cpset *s, uint32_t lo, uint32_t hi)
{
    if (s->n >= 256)
        return -1;
    s->lo[s->n] = lo;
    s->hi[s->n] = hi;
    s->n++;
    return 0;
}

static void set_norm(cpset *s)
{
    for (int i = 1; i < s->n; i++) /* insertion sort; n <= 256 */
        for (int j = i; j > 0 && s->lo[j - 1] > s->lo[j]; j--) {
            uint32_t t = s->lo[j];
            s->lo[j] = s->lo[j - 1];
            s->lo[j - 1] = t;
            t = s->hi[j];
            s->hi[j] = s->hi[j - 1];
            s->hi[j - 1] = t;
        }
    int m = 0;
    for (int i = 0; i < s->n; i++) {
        if (m && s->lo[i] <= s->hi[m - 1] + 1) {
            if (s->hi[i] > s->hi[m - 1])
                s->hi[m - 1] = s->hi[i];
        } else {
            s->lo[m] = s->lo[i];
            s->hi[m] = s->hi[i];
            m++;
        }
    }
    s->n = m;
}

/* Complement over all Unicode scalar values (surrogates excluded). */
static void set_invert(cpset *s)
{
    set_norm(s);
    cpset r = {.n = 0};
    uint32_t next = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->lo[i] > next)
            set_add(&r, next, s->lo[i] - 1);
        next = s->hi[i] + 1;
    }
    if (next <= 0x10FFFF)
        set_add(&r, next, 0x10FFFF);
    /* cut out the surrogates */
    cpset o = {.n = 0};
    for (int i = 0; i < r.n; i++) {
        uint32_t lo = r.lo[i], hi = r.hi[i];
        if (hi < 0xD800 || lo > 0xDFFF) {
            set_add(&o, lo, hi);
            continue;
        }
        if (lo < 0xD800)
            set_add(&o, lo, 0xD7FF);
        if (hi > 0xDFFF)
            set_add(&o, 0xE000, hi);
    }
    *s = o;
}

static int set_has(const cpset *s, uint32_t c)
{
    for (int i = 0; i < s->n; i++)
        if (c >= s->lo[i] && c <= s->hi[i])
            return 1;
    return 0;
}

/* The JSON-string encodings of the characters in s, as a GBNF expression:
 * plain characters as a class, '"' '\' and control characters as their
 * canonical escapes. NULL (no error) when s is empty. */
static char *set_expr(ctx *c, cpset *s)
{
    set_norm(s);
    sb cls = {0}, b = {0};
    int nalt = 0, ncls = 0;
    for (int i = 0; i < s->n; i++) {
        /* the plain part of [lo,hi]: without 0..1F, 22, 5C */
        uint32_t lo = s->lo[i] < 0x20 ? 0x20 : s->lo[i], hi = s->hi[i];
        uint32_t cuts[2] = {0x22, 0x5C};
        for (int k = 0; k <= 2 && lo <= hi; k++) {
            uint32_t end = hi;
            if (k < 2 && cuts[k] >= lo && cuts[k] <= hi)
                end = cuts[k] - 1;
            else if (k < 2)
                continue;
            if (end >= lo) {
                put_cp(&cls, lo);
                if (end > lo) {
                    sb_putn(&cls, "-", 1);
                    put_cp(&cls, end);
                }
                ncls++;
            }
            lo = (k < 2) ? cuts[k] + 1 : hi + 1;
        }
    }
    if (ncls) {
        sb_putn(&b, "[", 1);
        sb_putn(&b, cls.p, cls.n);
        sb_putn(&b, "]", 1);
        nalt++;
    }
    free(cls.p);
    if (set_has(s, '"')) {
        sb_puts(&b, nalt++ ? " | " : "");
        sb_puts(&b, "\"\\\\\\\"\""); /* emits \" */
    }
    if (set_has(s, '\\')) {
        sb_puts(&b, nalt++ ? " | " : "");
        sb_puts(&b, "\"\\\\\\\\\""); /* emits \\ */
    }
    int nctl = 0;
    for (uint32_t ch = 0; ch < 0x20; ch++)
        nctl += set_has(s, ch);
    if (nctl == 0x20) {
        sb_puts(&b, nalt++ ? " | " : "");
        sb_puts(&b, "\"\\\\\" ( [bfnrt] | \"u00\" [01] [0-9a-fA-F] )");
    } else {
        for (uint32_t ch = 0; ch < 0x20; ch++) {
            if (!set_has(s, ch))
                continue;
            sb_puts(&b, nalt++ ? " | " : "");
            const char *sh = ch == '\b' ? "b" : ch == '\f' ? "f" : ch == '\n' ? "n" : ch == '\r' ? "r"
                           : ch == '\t' ? "t" : NULL;
            if (sh)
                sb_printf(&b, "\"\\\\%s\"", sh);
            else
                sb_printf(&b, "\"\\\\u00%02X\"", ch);
        }
    }
    if (b.oom) {
        free(b.p);
        return oom(c);
    }
    if (!nalt) {
        free(b.p);
        return NULL;
    }
    if (nalt == 1)
        return sb_take(&b);
    sb w = {0};
    sb_puts(&w, "( ");
    sb_putn(&w, b.p, b.n);
    sb_puts(&w, " )");
    free(b.p);
    char *r = sb_take(&w);
    return r ? r : oom(c);
}

/* ---- regex subset -> GBNF ---- */

typedef struct re {
    ctx *c;
    const char *s;
    size_t n, i;
    int depth;
    double w; /* expanded size of the last atom / sequence / alternation */
} re;

static char *re_alt(re *r, int top);

static int re_peek(re *r, uint32_t *cp)
{
    if (r->i >= r->n)
        return 0;
    int l = utf8_dec(r->s + r->i, r->n - r->i, cp);
    return l;
}

static char *re_err(re *r, const char *what)
{
    return fail(r->c, EXSA_EUNSUPPORTED, "pattern: %s at offset %zu (supported: literals, escapes, "
                "., classes, groups, |, * + ? {m,n}, ^ $ at the ends)", what, r->i);
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* After a backslash: adds the escape's characters to set. Returns 0, or -1
 * with the error set. */
static int re_escape(re *r, cpset *set)
{
    if (r->i >= r->n) {
        re_err(r, "trailing backslash");
        return -1;
    }
    char e = r->s[r->i];
    int neg = 0;
    cpset t = {.n = 0};
    switch (e) {
    case 'd': case 'D':
        set_add(&t, '0', '9');
        neg = e == 'D';
        break;
    case 'w': case 'W':
        set_add(&t, '0', '9');
        set_add(&t, 'A', 'Z');
        set_add(&t, 'a', 'z');
        set_add(&t, '_', '_');
        neg = e == 'W';
        break;
    case 's': case 'S':
        set_add(&t, '\t', '\r');
        set_add(&t, ' ', ' ');
        neg = e == 'S';
        break;
    case 't': set_add(&t, '\t', '\t'); break;
    case 'n': set_add(&t, '\n', '\n'); break;
    case 'r': set_add(&t, '\r', '\r'); break;
    case 'f': set_add(&t, '\f', '\f'); break;
    case 'v': set_add(&t, '\v', '\v'); break;
    case 'x': case 'u': {
        int nd = e == 'x' ? 2 : 4;
        uint32_t v = 0;
        for (int k = 1; k <= nd; k++) {
            int h = r->i + (size_t)k < r->n ? hexval(r->s[r->i + (size_t)k]) : -1;
            if (h < 0) {
                re_err(r, "bad \\x or \\u escape");
                return -1;
            }
            v = v * 16 + (uint32_t)h;
        }
        if (v >= 0xD800 && v <= 0xDFFF) {
            re_err(r, "surrogate \\u escape");
            return -1;
        }
        set_add(&t, v, v);
        r->i += (size_t)nd;
        break;
    }
    default:
        if ((e >= 0x21 && e <= 0x2F) || (e >= 0x3A && e <= 0x40) || (e >= 0x5B && e <= 0x60) ||
            (e >= 0x7B && e <= 0x7E)) {
            set_add(&t, (uint32_t)e, (uint32_t)e);
            break;
        }
        re_err(r, "unsupported escape (\\b, backreferences, \\p, ...)");
        return -1;
    }
    r->i++;
    if (neg)
        set_invert(&t);
    for (int k = 0; k < t.n; k++)
        if (set_add(set, t.lo[k], t.hi[k]) < 0) {
            re_err(r, "character class too large");
            return -1;
        }
    return 0;
}

static char *re_set_expr(re *r, cpset *set)
{
    r->w = 1;
    char *e = set_expr(r->c, set);
    if (!e && !r->c->failed)
        return re_err(r, "character class matches nothing");
    return e;
}

static char *re_class(re *r)
{
    /* r->i is just past '[' */
    cpset set = {.n = 0};
    int neg = 0;
    if (r->i < r->n && r->s[r->i] == '^') {
        neg = 1;
        r->i++;
    }
    int first = 1;
    for (;;) {
        if (r->i >= r->n)
            return re_err(r, "unterminated character class");
        if (r->s[r->i] == ']' && !first)
            break;
        first = 0;
        cpset one = {.n = 0};
        uint32_t lo;
        if (r->s[r->i] == '\\') {
            r->i++;
            if (re_escape(r, &one) < 0)
                return NULL;
        } else if (r->s[r->i] == '[') {
            return re_err(r, "nested '[' in a class (POSIX classes are not supported)");
        } else {
            int l = re_peek(r, &lo);
            if (!l)
                return re_err(r, "invalid UTF-8");
            r->i += (size_t)l;
            set_add(&one, lo, lo);
        }
        /* a range a-b, when both ends are single characters */
        if (r->i + 1 < r->n && r->s[r->i] == '-' && r->s[r->i + 1] != ']') {
            if (one.n != 1 || one.lo[0] != one.hi[0])
                return re_err(r, "range with a class escape as its start");
            r->i++;
            cpset end = {.n = 0};
            if (r->s[r->i] == '\\') {
                r->i++;
                if (re_escape(r, &end) < 0)
                    return NULL;
            } else {
                uint32_t hi;
                int l = re_peek(r, &hi);
                if (!l)
                    return re_err(r, "invalid UTF-8");
                r->i += (size_t)l;
                set_add(&end, hi, hi);
            }
            if (end.n != 1 || end.lo[0] != end.hi[0] || end.lo[0] < one.lo[0])
                return re_err(r, "bad range in a class");
            one.hi[0] = end.lo[0];
        }
        for (int k = 0; k < one.n; k++)
            if (set_add(&set, one.lo[k], one.hi[k]) < 0)
                return re_err(r, "character class too large");
        set_norm(&set);
    }
    r->i++; /* ']' */
    if (neg)
        set_invert(&set);
    return re_set_expr(r, &set);
}

static int re_num(re *r, long *v)
{
    size_t st = r->i;
    long x = 0;
    while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9') {
        if (x > MAX_REPEAT)
            return -1;
        x = x * 10 + (r->s[r->i] - '0');
        r->i++;
    }
    if (r->i == st)
        return 0;
    *v = x;
    return 1;
}

static char *re_atom(re *r)
{
    char ch = r->s[r->i];
    if (ch == '(') {
        r->i++;
        if (r->i < r->n && r->s[r->i] == '?') {
            if (r->i + 1 < r->n && r->s[r->i + 1] == ':')
                r->i += 2;
            else
                return re_err(r, "look-around and named groups are not supported");
        }
        char *in = re_alt(r, 0);
        if (!in)
            return NULL;
        if (r->i >= r->n || r->s[r->i] != ')') {
            free(in);
            return re_err(r, "missing ')'");
        }
        r->i++;
        sb b = {0};
        sb_puts(&b, "( ");
        sb_puts(&b, in);
        sb_puts(&b, " )");
        free(in);
        char *e = sb_take(&b);
        return e ? e : oom(r->c);
    }
    cpset set = {.n = 0};
    if (ch == '[') {
        r->i++;
        return re_class(r);
    }
    if (ch == '.') {
        r->i++;
        set_add(&set, '\n', '\n');
        set_add(&set, '\r', '\r');
        set_add(&set, 0x2028, 0x2029);
        set_invert(&set);
        return re_set_expr(r, &set);
    }
    if (ch == '\\') {
        r->i++;
        if (re_escape(r, &set) < 0)
            return NULL;
        return re_set_expr(r, &set);
    }
    if (ch == '*' || ch == '+' || ch == '?' || ch == '{')
        return re_err(r, "quantifier without an atom (escape '{' to match it)");
    if (ch == '^' || ch == '$')
        return re_err(r, "anchor inside the pattern");
    uint32_t cp;
    int l = re_peek(r, &cp);
    if (!l)
        return re_err(r, "invalid UTF-8");
    r->i += (size_t)l;
    set_add(&set, cp, cp);
    return re_set_expr(r, &set);
}

/* Parses an optional quantifier after an atom and applies it (takes atom). */
static char *re_quant(re *r, char *atom)
{
    if (r->i >= r->n)
        return atom;
    char ch = r->s[r->i];
    sb b = {0};
    if (ch != '*' && ch != '+' && ch != '?' && ch != '{')
        return atom;
    int wrap = !is_simple(atom) && atom[0] != '(';
    if (wrap)
        sb_puts(&b, "( ");
    sb_puts(&b, atom);
    if (wrap)
        sb_puts(&b, " )");
    free(atom);
    if (ch == '{') {
        r->i++;
        long m = 0, x = -1;
        int got = re_num(r, &m);
        if (got <= 0)
            goto bad;
        if (r->i < r->n && r->s[r->i] == ',') {
            r->i++;
            int g2 = re_num(r, &x);
            if (g2 < 0)
                goto bad;
            if (g2 == 0)
                x = -2; /* open */
        } else {
            x = m;
        }
        if (r->i >= r->n || r->s[r->i] != '}')
            goto bad;
        r->i++;
        if (x >= 0 && x < m)
            goto bad;
        r->w *= (double)(x > m ? x : m > 0 ? m : 1);
        if (x == -2)
            sb_printf(&b, "{%ld,}", m);
        else if (x == m)
            sb_printf(&b, "{%ld}", m);
        else
            sb_printf(&b, "{%ld,%ld}", m, x);
    } else {
        sb_putn(&b, &ch, 1);
        r->i++;
    }
    if (r->i < r->n && r->s[r->i] == '?') /* lazy: same language */
        r->i++;
    else if (r->i < r->n && r->s[r->i] == '+') {
        free(b.p);
        return re_err(r, "possessive quantifier");
    }
    char *e = sb_take(&b);
    if (e && r->i < r->n && (r->s[r->i] == '*' || r->s[r->i] == '+' || r->s[r->i] == '?' ||
                             r->s[r->i] == '{')) {
        free(e);
        return re_err(r, "quantifier on a quantifier");
    }
    return e ? e : oom(r->c);
bad:
    free(b.p);
    return re_err(r, "bad {m,n} quantifier (counts up to 10000, m <= n)");
}

/* One alternative. At the top level '^' may open it and '$' close it; an
 * unanchored end matches any string characters there. */
static char *re_seq(re *r, int top)
{
    sb b = {0};
    int anch_start = 0, anch_end = 0, items = 0;
    double w = 0;
    if (top && r->i < r->n && r->s[r->i] == '^') {
        anch_start = 1;
        r->i++;
    }
    if (top && !anch_start) {
        sb_puts(&b, prim(r->c, P_CHAR));
        sb_puts(&b, "*");
        items++;
    }
    while (r->i < r->n && r->s[r->i] != '|' && r->s[r->i] != ')') {
        if (top && r->s[r->i] == '$') {
            r->i++;
            if (r->i < r->n && r->s[r->i] != '|') {
                free(b.p);
                return re_err(r, "'$' before the end of the pattern");
            }
            anch_end = 1;
            break;
        }
        char *a = re_atom(r);
        if (a)
            a = re_quant(r, a);
        if (!a) {
            free(b.p);
            return NULL;
        }
        w += r->w;
        if (w > MAX_REPEAT * 10.0) {
            free(a);
            free(b.p);
            return re_err(r, "pattern expands to too many items (nested counts)");
        }
        if (items++)
            sb_putn(&b, " ", 1);
        sb_puts(&b, a);
        free(a);
        if (b.n > MAX_BYTES) {
            free(b.p);
            return re_err(r, "pattern too large");
        }
    }
    if (top && !anch_end) {
        if (items++)
            sb_putn(&b, " ", 1);
        sb_puts(&b, prim(r->c, P_CHAR));
        sb_puts(&b, "*");
    }
    if (!items)
        sb_puts(&b, "\"\"");
    r->w = w;
    char *e = sb_take(&b);
    return e ? e : oom(r->c);
}

static char *re_alt(re *r, int top)
{
    if (++r->depth > MAX_DEPTH)
        return re_err(r, "groups nested too deep");
    sb b = {0};
    int nalt = 0;
    double w = 0;
    for (;;) {
        char *s = re_seq(r, top);
        w += r->w;
        if (!s) {
            free(b.p);
            return NULL;
        }
        if (nalt++)
            sb_puts(&b, " | ");
        sb_puts(&b, s);
        free(s);
        if (r->i < r->n && r->s[r->i] == '|') {
            r->i++;
            continue;
        }
        break;
    }
    r->depth--;
    r->w = w;
    if (nalt > 1) {
        sb w = {0};
        sb_puts(&w, "( ");
        sb_putn(&w, b.p, b.n);
        sb_puts(&w, " )");
        free(b.p);
        b = w;
    }
    char *e = sb_take(&b);
    return e ? e : oom(r->c);
}

static char *gen_pattern(ctx *c, const char *pat)
{
    re r = {.c = c, .s = pat, .n = strlen(pat)};
    char *body = re_alt(&r, 1);
    if (!body)
        return NULL;
    if (r.i != r.n) {
        free(body);
        return re_err(&r, "unbalanced ')'");
    }
    sb b = {0};
    sb_puts(&b, "\"\\\"\" ");
    sb_puts(&b, body);
    sb_puts(&b, " \"\\\"\"");
    free(body);
    char *e = sb_take(&b);
    return e ? e : oom(c);
}

/* ---- integers ---- */

/* Alternatives (as one parenthesised expression) for the digit strings of
 * equal length n between lo and hi inclusive (lo <= hi, same length). */
static void digits_range(sb *b, const char *lo, const char *hi, size_t n)
{
    if (n == 0)
        return;
    if (lo[0] == hi[0]) {
        sb_printf(b, "\"%c\"", lo[0]);
        if (n > 1) {
            sb_putn(b, " ", 1);
            digits_range(b, lo + 1, hi + 1, n - 1);
        }
        return;
    }
    int lo_zero = 1, hi_nine = 1;
    for (size_t k = 1; k < n; k++) {
        lo_zero &= lo[k] == '0';
        hi_nine &= hi[k] == '9';
    }
    int nalt = 0;
    sb_puts(b, "( ");
    char start = lo[0], end = hi[0];
    if (!lo_zero) {
        char nines[24];
        memset(nines, '9', n - 1);
        sb_printf(b, "\"%c\" ", lo[0]);
        digits_range(b, lo + 1, nines, n - 1);
        nalt++;
        start++;
    }
    if (!hi_nine)
        end--;
    if (start <= end) {
        if (nalt++)
            sb_puts(b, " | ");
        if (start == end)
            sb_printf(b, "\"%c\"", start);
        else
            sb_printf(b, "[%c-%c]", start, end);
        if (n > 1)
            sb_printf(b, " [0-9]{%zu}", n - 1);
    }
    if (!hi_nine) {
        char zeros[24];
        memset(zeros, '0', n - 1);
        if (nalt++)
            sb_puts(b, " | ");
        sb_printf(b, "\"%c\" ", hi[0]);
        digits_range(b, zeros, hi + 1, n - 1);
    }
    sb_puts(b, " )");
}

#define MAX_DIGITS 19 /* beyond 10^18 the grammar stops; see MAX_BOUND */

/* Canonical decimal numbers in [a, b] (a, b >= 0); b < 0 means no upper
 * bound (then up to MAX_DIGITS digits). Appends "( alt | ... )". */
static void uint_range(sb *b, long long a, long long hi)
{
    char as[24], bs[24];
    int la = snprintf(as, sizeof as, "%lld", a);
    int lb = hi >= 0 ? snprintf(bs, sizeof bs, "%lld", hi) : MAX_DIGITS;
    int nalt = 0;
    sb_puts(b, "( ");
    for (int len = la; len <= lb; len++) {
        char lo_s[24], hi_s[24];
        if (len == la)
            memcpy(lo_s, as, (size_t)la + 1);
        else {
            lo_s[0] = '1';
            memset(lo_s + 1, '0', (size_t)len - 1);
        }
        if (hi >= 0 && len == lb)
            memcpy(hi_s, bs, (size_t)lb + 1);
        else
            memset(hi_s, '9', (size_t)len);
        if (hi < 0 && len > la) { /* every longer number: one alternative */
            if (nalt++)
                sb_puts(b, " | ");
            sb_printf(b, "[1-9] [0-9]{%d,%d}", len - 1, MAX_DIGITS - 1);
            break;
        }
        if (nalt++)
            sb_puts(b, " | ");
        /* a run of whole lengths (10..99, 100..999, ...): one alternative */
        int full = lo_s[0] == '1';
        for (int k = 1; k < len; k++)
            full &= lo_s[k] == '0';
        for (int k = 0; k < len; k++)
            full &= hi_s[k] == '9';
        if (full) {
            int last = len, top_full = hi >= 0;
            for (int k = 0; hi >= 0 && k < lb; k++)
                top_full &= bs[k] == '9';
            while (hi >= 0 && (last + 1 < lb || (last + 1 == lb && top_full)))
                last++;
            if (last == len)
                sb_printf(b, "[1-9] [0-9]{%d}", len - 1);
            else
                sb_printf(b, "[1-9] [0-9]{%d,%d}", len - 1, last - 1);
            len = last;
            continue;
        }
        digits_range(b, lo_s, hi_s, (size_t)len);
    }
    sb_puts(b, " )");
}

/* A bound as the least (up = 1) or greatest (up = 0) integer on its side:
 * integers exactly (doubles lose digits past 2^53), reals rounded. Sets
 * *exact when the bound itself is an integer. Returns 1, 0 when absent, -1
 * on error. */
static int bound_of(ctx *c, const json_t *s, const char *kw, int up, long long *out, int *exact)
{
    json_t *x = json_object_get(s, kw);
    if (!x)
        return 0;
    const char *why = NULL;
    int code = EXSA_EINVAL;
    if (json_is_integer(x)) {
        long long v = json_integer_value(x);
        if (v > MAX_BOUND || v < -MAX_BOUND)
            why = "beyond +-10^18 is not supported";
        *out = v;
        *exact = 1;
    } else if (json_is_real(x)) {
        double v = json_real_value(x);
        if (!(fabs(v) <= (double)MAX_BOUND))
            why = "beyond +-10^18 is not supported";
        else {
            double r = up ? ceil(v) : floor(v);
            *out = (long long)r;
            *exact = r == v;
        }
    } else {
        why = "must be a number";
    }
    if (why) {
        if (strstr(why, "10^18"))
            code = EXSA_EUNSUPPORTED;
        size_t o = path_push(c, kw);
        fail(c, code, "'%s' %s", kw, why);
        path_pop(c, o);
        return -1;
    }
    return 1;
}

static char *gen_integer(ctx *c, const json_t *s)
{
    int has_lo = 0, has_hi = 0, exact, r;
    long long lo = 0, hi = 0, v;
    int ex_min_bool = json_is_true(json_object_get(s, "exclusiveMinimum"));
    int ex_max_bool = json_is_true(json_object_get(s, "exclusiveMaximum"));
    if ((r = bound_of(c, s, "minimum", 1, &v, &exact)) < 0)
        return NULL;
    if (r) {
        has_lo = 1;
        lo = v + (ex_min_bool && exact);
    }
    if (!json_is_boolean(json_object_get(s, "exclusiveMinimum"))) {
        /* the least integer above x: floor(x) + 1 */
        if ((r = bound_of(c, s, "exclusiveMinimum", 0, &v, &exact)) < 0)
            return NULL;
        if (r && (!has_lo || v + 1 > lo))
            lo = v + 1;
        has_lo |= r;
    }
    if ((r = bound_of(c, s, "maximum", 0, &v, &exact)) < 0)
        return NULL;
    if (r) {
        has_hi = 1;
        hi = v - (ex_max_bool && exact);
    }
    if (!json_is_boolean(json_object_get(s, "exclusiveMaximum"))) {
        if ((r = bound_of(c, s, "exclusiveMaximum", 1, &v, &exact)) < 0)
            return NULL;
        if (r && (!has_hi || v - 1 < hi))
            hi = v - 1;
        has_hi |= r;
    }
    if (!has_lo && !has_hi)
        return dupname(c, prim(c, P_INTEGER));
    if (has_lo && has_hi && lo > hi)
        return fail(c, EXSA_EINVAL, "no integer lies between the minimum %lld and maximum %lld", lo,
                    hi);
    sb b = {0};
    int nalt = 0;
    sb_puts(&b, "( ");
    if (!has_lo || lo < 0) { /* negative part: "-" then |x| in [max(1,-hi), -lo] */
        long long nlo = has_hi && hi < 0 ? -hi : 1;
        long long nhi = has_lo ? -lo : -1;
        sb_puts(&b, "\"-\" ");
        uint_range(&b, nlo, nhi);
        nalt++;
    }
    if (!has_hi || hi >= 0) {
        if (nalt++)
            sb_puts(&b, " | ");
        uint_range(&b, has_lo && lo > 0 ? lo : 0, has_hi ? hi : -1);
    }
    sb_puts(&b, " )");
    char *e = sb_take(&b);
    return e ? e : oom(c);
}

/* ---- strings ---- */

static int count_of(ctx *c, const json_t *s, const char *kw, long *v)
{
    json_t *x = json_object_get(s, kw);
    if (!x)
        return 0;
    size_t o = path_push(c, kw);
    int rc = 1;
    if (!json_is_integer(x) && !(json_is_real(x) && json_real_value(x) == floor(json_real_value(x))))
        rc = (fail(c, EXSA_EINVAL, "'%s' must be a non-negative integer", kw), -1);
    else if (json_number_value(x) < 0)
        rc = (fail(c, EXSA_EINVAL, "'%s' must be a non-negative integer", kw), -1);
    else if (json_number_value(x) > MAX_REPEAT)
        rc = (fail(c, EXSA_EUNSUPPORTED, "'%s' above %d is not supported", kw, MAX_REPEAT), -1);
    else
        *v = (long)json_number_value(x);
    path_pop(c, o);
    return rc;
}

/* "{m,n}" (n < 0: open) or "" for {0,inf}; fmt into buf */
static void rep_suffix(char *buf, size_t cap, long m, long n)
{
    if (n < 0)
        snprintf(buf, cap, m == 0 ? "*" : m == 1 ? "+" : "{%ld,}", m);
    else if (m == n)
        snprintf(buf, cap, "{%ld}", m);
    else
        snprintf(buf, cap, "{%ld,%ld}", m, n);
}

static char *gen_string(ctx *c, const json_t *s)
{
    json_t *fmt = json_object_get(s, "format"), *pat = json_object_get(s, "pattern");
    long mn = 0, mx = -1;
    int hmn, hmx;
    if ((hmn = count_of(c, s, "minLength", &mn)) < 0 || (hmx = count_of(c, s, "maxLength", &mx)) < 0)
        return NULL;
    if (hmn && hmx && mx < mn) {
        size_t o = path_push(c, "maxLength");
        fail(c, EXSA_EINVAL, "maxLength %ld below minLength %ld", mx, mn);
        path_pop(c, o);
        return NULL;
    }
    if (pat) {
        size_t o = path_push(c, "pattern");
        char *e = NULL;
        if (!json_is_string(pat))
            fail(c, EXSA_EINVAL, "'pattern' must be a string");
        else if (hmn || hmx)
            fail(c, EXSA_EUNSUPPORTED, "'pattern' together with '%s' is not supported",
                 hmn ? "minLength" : "maxLength");
        else if (fmt)
            fail(c, EXSA_EUNSUPPORTED, "'pattern' together with 'format' is not supported");
        else
            e = gen_pattern(c, json_string_value(pat));
        path_pop(c, o);
        return e;
    }
    if (fmt) {
        size_t o = path_push(c, "format");
        const char *f = json_string_value(fmt);
        int p = -1;
        if (!f)
            fail(c, EXSA_EINVAL, "'format' must be a string");
        else if (hmn || hmx)
            fail(c, EXSA_EUNSUPPORTED, "'format' together with '%s' is not supported",
                 hmn ? "minLength" : "maxLength");
        else if (!strcmp(f, "date"))
            p = P_DATE;
        else if (!strcmp(f, "time"))
            p = P_TIME;
        else if (!strcmp(f, "date-time"))
            p = P_DATETIME;
        else if (!strcmp(f, "uuid"))
            p = P_UUID;
        else
            fail(c, EXSA_EUNSUPPORTED,
                 "format '%.64s' is not supported (supported: date, time, date-time, uuid)", f);
        path_pop(c, o);
        if (p < 0)
            return NULL;
        sb b = {0};
        sb_printf(&b, "\"\\\"\" %s \"\\\"\"", prim(c, p));
        char *e = sb_take(&b);
        return e ? e : oom(c);
    }
    if (!hmn && !hmx)
        return dupname(c, prim(c, P_STRING));
    if (hmx && mx == 0)
        return dupname(c, "\"\\\"\\\"\""); /* "" */
    char rep[48];
    rep_suffix(rep, sizeof rep, mn, hmx ? mx : -1);
    sb b = {0};
    sb_printf(&b, "\"\\\"\" %s%s \"\\\"\"", prim(c, P_CHAR), rep);
    char *e = sb_take(&b);
    return e ? e : oom(c);
}

/* ---- the walk ---- */

static char *gen(ctx *c, const json_t *s, const char *hint);

/* A sub-schema under keyword kw (and, when key is non-NULL, key), as a rule
 * reference or simple expression. */
static char *gen_sub(ctx *c, const json_t *s, const char *kw, const char *key, const char *hint)
{
    size_t o = path_push(c, kw);
    if (key)
        path_push(c, key);
    char *e = gen(c, s, hint);
    if (e)
        e = as_rule(c, e, hint);
    path_pop(c, o);
    return e;
}

static char *join_hint(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *h = malloc(n);
    if (h)
        snprintf(h, n, "%s-%s", a, b);
    return h;
}

/* Follows "#/a/b" inside the document. */
static const json_t *resolve(ctx *c, const char *ref)
{
    if (ref[0] != '#')
        return NULL;
    const json_t *cur = c->root;
    const char *p = ref + 1;
    if (*p == '\0')
        return cur;
    if (*p != '/')
        return NULL;
    while (*p == '/') {
        p++;
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char tok[256];
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            if (m + 1 >= sizeof tok)
                return NULL;
            if (p[i] == '~' && i + 1 < n && (p[i + 1] == '0' || p[i + 1] == '1')) {
                tok[m++] = p[i + 1] == '0' ? '~' : '/';
                i++;
            } else if (p[i] == '%' && i + 2 < n && hexval(p[i + 1]) >= 0 && hexval(p[i + 2]) >= 0) {
                tok[m++] = (char)(hexval(p[i + 1]) * 16 + hexval(p[i + 2]));
                i += 2;
            } else {
                tok[m++] = p[i];
            }
        }
        tok[m] = '\0';
        if (json_is_object(cur)) {
            cur = json_object_get(cur, tok);
        } else if (json_is_array(cur)) {
            char *ep;
            unsigned long idx = strtoul(tok, &ep, 10);
            cur = (*tok && !*ep) ? json_array_get(cur, idx) : NULL;
        } else {
            cur = NULL;
        }
        if (!cur)
            return NULL;
        p += n;
    }
    return cur;
}

static char *gen_ref(ctx *c, const json_t *s)
{
    json_t *rv = json_object_get(s, "$ref");
    size_t o = path_push(c, "$ref");
    const char *ref = json_string_value(rv);
    char *res = NULL;
    if (!ref) {
        fail(c, EXSA_EINVAL, "'$ref' must be a string");
        goto out;
    }
    const char *other = other_constraint(s, "$ref");
    if (other) {
        fail(c, EXSA_EUNSUPPORTED, "'$ref' beside '%s' is not supported", other);
        goto out;
    }
    for (int i = c->head_base; i < c->nhead; i++)
        if (!strcmp(c->head[i], ref)) {
            fail(c, EXSA_EUNSUPPORTED,
                 "$ref '%.128s' reaches itself before any character (left recursion)", ref);
            goto out;
        }
    for (size_t i = 0; i < c->nrefs; i++)
        if (!strcmp(c->refs[i].ref, ref)) {
            res = strdup(c->refs[i].name);
            if (!res)
                oom(c);
            goto out;
        }
    if (ref[0] != '#') {
        fail(c, EXSA_EUNSUPPORTED, "$ref '%.128s': only local refs ('#/...') are supported", ref);
        goto out;
    }
    const json_t *target = resolve(c, ref);
    if (!target) {
        fail(c, EXSA_EINVAL, "$ref '%.128s' points nowhere in the schema", ref);
        goto out;
    }
    if (c->nrefs == c->caprefs) {
        size_t cap = c->caprefs ? c->caprefs * 2 : 16;
        refent *r = realloc(c->refs, cap * sizeof *r);
        if (!r) {
            oom(c);
            goto out;
        }
        c->refs = r;
        c->caprefs = cap;
    }
    const char *last = strrchr(ref, '/');
    long idx = rule_reserve(c, last && last[1] ? last + 1 : "root-ref");
    if (idx < 0)
        goto out;
    refent *e = &c->refs[c->nrefs];
    e->ref = strdup(ref);
    e->name = strdup(c->rules[idx].name);
    e->done = 0;
    if (!e->ref || !e->name) {
        free(e->ref);
        free(e->name);
        oom(c);
        goto out;
    }
    c->nrefs++;
    if (c->nhead >= MAX_DEPTH) {
        fail(c, EXSA_EUNSUPPORTED, "$ref chain nested too deep");
        goto out;
    }
    /* the target's path in errors is the pointer itself */
    char saved[sizeof c->path];
    size_t saved_len = c->plen;
    memcpy(saved, c->path, sizeof saved);
    snprintf(c->path, sizeof c->path, "%s", ref);
    c->plen = strlen(c->path);
    c->head[c->nhead++] = ref;
    char *body = gen(c, target, c->rules[idx].name);
    c->nhead--;
    memcpy(c->path, saved, sizeof saved);
    c->plen = saved_len;
    if (!body || rule_set(c, idx, body) < 0)
        goto out;
    res = strdup(c->rules[idx].name);
    if (!res)
        oom(c);
out:
    path_pop(c, o);
    return res;
}

/* Characters were consumed: refs entered before no longer threaten left
 * recursion. Returns the saved count for head_restore. */
static int head_clear(ctx *c)
{
    int b = c->head_base;
    c->head_base = c->nhead;
    return b;
}

static void head_restore(ctx *c, int b) { c->head_base = b; }

/* Key trie for "a string that is none of the listed keys" */
typedef struct tnode {
    uint32_t cp;
    int terminal;
    struct tnode *kid, *next;
} tnode;

static void trie_free(tnode *t)
{
    while (t) {
        tnode *n = t->next;
        trie_free(t->kid);
        free(t);
        t = n;
    }
}

/* Raw string characters: extra keys are written without escapes, so that
 * no escaped spelling of a listed key ("\u0061" for "a") can slip through. */
#define RAW_CHAR "[^\\x22\\x5C\\x00-\\x1F]"

/* Expression for the rest of a key after the prefix this node stands for,
 * closing quote included. */
static void trie_expr(ctx *c, sb *b, const tnode *t)
{
    int nalt = 0;
    sb_puts(b, "( ");
    if (!t->terminal) {
        sb_puts(b, "\"\\\"\"");
        nalt++;
    }
    /* a character none of the children start with, then anything */
    cpset other = {.n = 0};
    set_add(&other, 0, 0x1F);
    set_add(&other, '"', '"');
    set_add(&other, '\\', '\\');
    for (const tnode *k = t->kid; k; k = k->next)
        if (set_add(&other, k->cp, k->cp) < 0) {
            fail(c, EXSA_EUNSUPPORTED, "too many property names to exclude from "
                 "additionalProperties");
            return;
        }
    set_invert(&other);
    char *oe = set_expr(c, &other); /* a plain class: the specials are excluded */
    if (oe) {
        if (nalt++)
            sb_puts(b, " | ");
        sb_printf(b, "%s " RAW_CHAR "* \"\\\"\"", oe);
        free(oe);
    }
    for (const tnode *k = t->kid; k; k = k->next) {
        if (nalt++)
            sb_puts(b, " | ");
        sb_putn(b, "\"", 1);
        put_cp(b, k->cp);
        sb_putn(b, "\" ", 2);
        trie_expr(c, b, k);
    }
    sb_puts(b, " )");
}

/* A JSON string, written without escapes, that is none of the given keys.
 * Keys that need escapes cannot be spelt so and need no exclusion. */
static char *key_excluding(ctx *c, const char *const *keys, size_t nkeys, const char *hint)
{
    tnode root = {0};
    for (size_t i = 0; i < nkeys; i++) {
        const char *k = keys[i];
        size_t n = strlen(k), pos = 0;
        tnode *cur = &root;
        int skip = 0;
        for (const char *q = k; *q; q++)
            skip |= (unsigned char)*q < 0x20 || *q == '"' || *q == '\\';
        if (skip)
            continue;
        if (n > 128) {
            trie_free(root.kid);
            return fail(c, EXSA_EUNSUPPORTED, "property name longer than 128 bytes beside "
                        "additionalProperties");
        }
        while (pos < n) {
            uint32_t cp;
            int l = utf8_dec(k + pos, n - pos, &cp);
            if (!l) {
                trie_free(root.kid);
                return fail(c, EXSA_EINVAL, "property name is not valid UTF-8");
            }
            pos += (size_t)l;
            tnode *kid = cur->kid;
            while (kid && kid->cp != cp)
                kid = kid->next;
            if (!kid) {
                kid = calloc(1, sizeof *kid);
                if (!kid) {
                    trie_free(root.kid);
                    return oom(c);
                }
                kid->cp = cp;
                kid->next = cur->kid;
                cur->kid = kid;
            }
            cur = kid;
        }
        cur->terminal = 1;
    }
    sb b = {0};
    sb_puts(&b, "\"\\\"\" ");
    trie_expr(c, &b, &root);
    trie_free(root.kid);
    if (c->failed) {
        free(b.p);
        return NULL;
    }
    char *e = sb_take(&b);
    if (!e)
        return oom(c);
    char *h = join_hint(hint, "key");
    if (!h) {
        free(e);
        return oom(c);
    }
    char *r = as_rule(c, e, h);
    free(h);
    return r;
}

typedef struct item {
    char *expr;
    int kind; /* 0 required, 1 optional, 2 zero or more */
} item;

/* Comma-separated items in order: required ones present, optional ones
 * skippable, the star item repeated. rest(i) follows at least one item. */
static void put_rest(ctx *c, sb *b, const item *it, size_t i, size_t n)
{
    for (; i < n; i++) {
        const char *pre = it[i].kind == 0 ? "" : "( ";
        const char *post = it[i].kind == 0 ? "" : it[i].kind == 1 ? " )?" : " )*";
        sb_printf(b, " %s\"%s\" %s %s%s", pre, ",", prim(c, P_WS), it[i].expr, post);
    }
}

/* One object member: the key as a JSON string literal, then the value
 * expression ve (taken, freed here). NULL (error set) when out of memory. */
static char *member_expr(ctx *c, const char *key, char *ve)
{
    json_t *ks = json_string(key);
    char *kl = ks ? literal_of(c, ks) : oom(c);
    json_decref(ks);
    if (!kl) {
        free(ve);
        return NULL;
    }
    sb b = {0};
    sb_printf(&b, "%s %s \":\" %s %s %s", kl, prim(c, P_WS), prim(c, P_WS), ve, prim(c, P_WS));
    free(kl);
    free(ve);
    char *e = sb_take(&b);
    return e ? e : oom(c);
}

static char *gen_object(ctx *c, const json_t *props, const json_t *required, const json_t *addl,
                        const char *hint)
{
    size_t np = props ? json_object_size(props) : 0;
    size_t nr = required ? json_array_size(required) : 0;
    if (np > MAX_PROPS || nr > MAX_PROPS)
        return fail(c, EXSA_EUNSUPPORTED, "more than %d properties", MAX_PROPS);
    for (size_t i = 0; i < nr; i++) {
        if (!json_is_string(json_array_get(required, i))) {
            size_t o = path_push_idx(c, "required", i);
            fail(c, EXSA_EINVAL, "'required' entries must be strings");
            path_pop(c, o);
            return NULL;
        }
    }
    int any = !props && !required && (!addl || json_is_true(addl));
    if (any) /* no listed keys: the generic object */
        return dupname(c, prim(c, P_OBJECT));

    item *it = calloc(np + nr + 1, sizeof *it);
    const char **keys = calloc(np + nr + 1, sizeof *keys);
    char *res = NULL;
    size_t n = 0, nkeys = 0;
    int saved_head = head_clear(c);
    if (!it || !keys) {
        oom(c);
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)props, k, v) /* props may be NULL: no iterations */
    {
        int req = 0;
        for (size_t i = 0; i < nr; i++)
            req |= !strcmp(json_string_value(json_array_get(required, i)), k);
        char *h = join_hint(hint, k);
        char *ve = h ? gen_sub(c, v, "properties", k, h) : oom(c);
        free(h);
        if (!ve || !(it[n].expr = member_expr(c, k, ve)))
            goto out;
        it[n++].kind = req ? 0 : 1;
        keys[nkeys++] = k;
    }
    /* required names that "properties" does not describe */
    for (size_t i = 0; i < nr; i++) {
        const char *rk = json_string_value(json_array_get(required, i));
        int listed = 0;
        for (size_t j = 0; j < nkeys; j++)
            listed |= !strcmp(keys[j], rk);
        if (listed)
            continue;
        if (json_is_false(addl)) {
            size_t o = path_push_idx(c, "required", i);
            fail(c, EXSA_EINVAL, "required property '%.64s' is forbidden by additionalProperties "
                 "false", rk);
            path_pop(c, o);
            goto out;
        }
        char *ve;
        if (json_is_object(addl)) {
            char *h = join_hint(hint, rk);
            ve = h ? gen_sub(c, addl, "additionalProperties", NULL, h) : oom(c);
            free(h);
        } else {
            ve = dupname(c, prim(c, P_VALUE));
        }
        if (!ve || !(it[n].expr = member_expr(c, rk, ve)))
            goto out;
        it[n++].kind = 0;
        keys[nkeys++] = rk;
    }
    if (addl && (json_is_true(addl) || json_is_object(addl))) {
        char *h = join_hint(hint, "additional");
        char *ve = NULL;
        if (!h)
            oom(c);
        else if (json_is_true(addl))
            ve = dupname(c, prim(c, P_VALUE));
        else
            ve = gen_sub(c, addl, "additionalProperties", NULL, h);
        char *ke = ve ? key_excluding(c, keys, nkeys, hint) : NULL;
        free(h);
        if (!ve || !ke) {
            free(ve);
            free(ke);
            goto out;
        }
        sb b = {0};
        sb_printf(&b, "%s %s \":\" %s %s %s", ke, prim(c, P_WS), prim(c, P_WS), ve, prim(c, P_WS));
        free(ke);
        free(ve);
        it[n].expr = sb_take(&b);
        it[n++].kind = 2;
        if (!it[n - 1].expr) {
            oom(c);
            goto out;
        }
    } else if (addl && !json_is_false(addl)) {
        size_t o = path_push(c, "additionalProperties");
        fail(c, EXSA_EINVAL, "'additionalProperties' must be a boolean or a schema");
        path_pop(c, o);
        goto out;
    }

    /* Which item comes first: any optional one up to the first required
     * one. With two or more choices the tails become shared rules. */
    size_t first_req = n;
    for (size_t i = 0; i < n; i++)
        if (it[i].kind == 0) {
            first_req = i;
            break;
        }
    size_t nchoice = first_req < n ? first_req + 1 : n;
    sb b = {0};
    const char *ws = prim(c, P_WS);
    sb_printf(&b, "\"{\" %s ", ws);
    if (n == 0) {
        /* "{}" */
    } else if (first_req == 0) {
        sb_puts(&b, it[0].expr);
        put_rest(c, &b, it, 1, n);
    } else if (n == 1) {
        if (it[0].kind == 1)
            sb_printf(&b, "( %s )?", it[0].expr);
        else
            sb_printf(&b, "( %s ( \",\" %s %s )* )?", it[0].expr, ws, it[0].expr);
    } else {
        /* tail rules: tail_i = part_i tail_{i+1} */
        char **tails = calloc(n + 1, sizeof *tails);
        int bad = !tails;
        for (size_t i = n; !bad && i-- > 1;) {
            sb t = {0};
            put_rest(c, &t, it, i, i + 1);
            if (tails[i + 1])
                sb_printf(&t, " %s", tails[i + 1]);
            char *body = sb_take(&t);
            char *trimmed = body ? strdup(body + 1) : NULL; /* drop the lead space */
            free(body);
            char tn[32];
            snprintf(tn, sizeof tn, "tail-%zu", i); /* unique at first try: no O(n^2) probing */
            char *h = join_hint(hint, tn);
            long idx = (trimmed && h) ? rule_reserve(c, h) : -1;
            free(h);
            if (idx < 0) {
                free(trimmed);
                bad = 1;
            } else if (rule_set(c, idx, trimmed) < 0) {
                bad = 1;
            } else if (!(tails[i] = strdup(c->rules[idx].name))) {
                bad = 1;
            }
        }
        if (!bad) {
            sb_puts(&b, "( ");
            for (size_t i = 0; i < nchoice; i++) {
                if (i)
                    sb_puts(&b, " | ");
                if (it[i].kind == 2)
                    sb_printf(&b, "%s ( \",\" %s %s )*", it[i].expr, ws, it[i].expr);
                else
                    sb_puts(&b, it[i].expr);
                if (i + 1 < n && tails[i + 1])
                    sb_printf(&b, " %s", tails[i + 1]);
            }
            sb_puts(&b, first_req < n ? " )" : " )?");
        }
        for (size_t i = 0; tails && i <= n; i++)
            free(tails[i]);
        free(tails);
        if (bad) {
            free(b.p);
            if (!c->failed)
                oom(c);
            goto out;
        }
    }
    sb_puts(&b, " \"}\"");
    res = sb_take(&b);
    if (!res)
        oom(c);
out:
    head_restore(c, saved_head);
    for (size_t i = 0; i < n; i++)
        free(it ? it[i].expr : NULL);
    free(it);
    free(keys);
    return res;
}

static char *gen_array(ctx *c, const json_t *s, const char *hint)
{
    json_t *items = json_object_get(s, "items"), *prefix = json_object_get(s, "prefixItems");
    long mn = 0, mx = -1;
    int hmn, hmx;
    if ((hmn = count_of(c, s, "minItems", &mn)) < 0 || (hmx = count_of(c, s, "maxItems", &mx)) < 0)
        return NULL;
    if (hmn && hmx && mx < mn) {
        size_t o = path_push(c, "maxItems");
        fail(c, EXSA_EINVAL, "maxItems %ld below minItems %ld", mx, mn);
        path_pop(c, o);
        return NULL;
    }
    const char *pkw = "prefixItems";
    if (json_is_array(items)) { /* draft-4 tuple form */
        if (prefix) {
            size_t o = path_push(c, "items");
            fail(c, EXSA_EINVAL, "'items' as an array beside 'prefixItems'");
            path_pop(c, o);
            return NULL;
        }
        prefix = items;
        items = NULL;
        pkw = "items";
    }
    if (prefix && !json_is_array(prefix)) {
        size_t o = path_push(c, "prefixItems");
        fail(c, EXSA_EINVAL, "'prefixItems' must be an array of schemas");
        path_pop(c, o);
        return NULL;
    }
    if (items && !json_is_object(items) && !json_is_boolean(items)) {
        size_t o = path_push(c, "items");
        fail(c, EXSA_EINVAL, "'items' must be a schema");
        path_pop(c, o);
        return NULL;
    }
    size_t np = prefix ? json_array_size(prefix) : 0;
    if (np > MAX_PROPS)
        return fail(c, EXSA_EUNSUPPORTED, "more than %d prefixItems", MAX_PROPS);
    int saved_head = head_clear(c);
    sb b = {0};
    char *res = NULL;
    sb_printf(&b, "\"[\" %s", prim(c, P_WS));
    for (size_t i = 0; i < np; i++) {
        char num[32];
        snprintf(num, sizeof num, "%zu", i);
        char *h = join_hint(hint, num);
        size_t o = path_push(c, pkw);
        char *e = h ? gen_sub(c, json_array_get(prefix, i), num, NULL, h) : oom(c);
        path_pop(c, o);
        free(h);
        if (!e)
            goto out;
        sb_printf(&b, "%s %s %s", i ? " \",\" " : " ", i ? prim(c, P_WS) : "", e);
        sb_printf(&b, " %s", prim(c, P_WS));
        free(e);
    }
    /* how many further items */
    long lo = mn > (long)np ? mn - (long)np : 0;
    long hi = mx < 0 ? -1 : mx - (long)np;
    if (mx >= 0 && mx < (long)np) {
        size_t o = path_push(c, "maxItems");
        fail(c, EXSA_EUNSUPPORTED, "maxItems %ld below the %zu prefixItems", mx, np);
        path_pop(c, o);
        goto out;
    }
    /* plain {"type":"array"}: any values */
    int more = json_is_object(items) || json_is_true(items) || (!prefix && !items);
    if (!more && lo > 0) {
        size_t o = path_push(c, "minItems");
        fail(c, EXSA_EUNSUPPORTED, "minItems %ld needs more items than prefixItems allow", mn);
        path_pop(c, o);
        goto out;
    }
    if (more && hi != 0) {
        char *ie;
        if (items && json_is_object(items)) {
            char *h = join_hint(hint, "item");
            ie = h ? gen_sub(c, items, "items", NULL, h) : oom(c);
            free(h);
        } else {
            ie = dupname(c, prim(c, P_VALUE));
        }
        if (!ie)
            goto out;
        char rep[48];
        if (np > 0) { /* every further item follows a comma */
            rep_suffix(rep, sizeof rep, lo, hi);
            sb_printf(&b, " ( \",\" %s %s %s )%s", prim(c, P_WS), ie, prim(c, P_WS), rep);
        } else if (lo > 0 && hi == 1) { /* exactly one: no empty {0} group */
            sb_printf(&b, " %s %s", ie, prim(c, P_WS));
        } else if (lo > 0) {
            rep_suffix(rep, sizeof rep, lo - 1, hi < 0 ? -1 : hi - 1);
            sb_printf(&b, " %s %s ( \",\" %s %s %s )%s", ie, prim(c, P_WS), prim(c, P_WS), ie,
                      prim(c, P_WS), rep);
        } else {
            if (hi == 1)
                sb_printf(&b, " ( %s %s )?", ie, prim(c, P_WS));
            else {
                rep_suffix(rep, sizeof rep, 0, hi < 0 ? -1 : hi - 1);
                sb_printf(&b, " ( %s %s ( \",\" %s %s %s )%s )?", ie, prim(c, P_WS),
                          prim(c, P_WS), ie, prim(c, P_WS), rep);
            }
        }
        free(ie);
    }
    sb_puts(&b, " \"]\"");
    res = sb_take(&b);
    if (!res)
        oom(c);
    b.p = NULL;
out:
    free(b.p);
    head_restore(c, saved_head);
    return res;
}

static const char *const type_names[] = {"string", "number", "integer", "boolean",
                                         "null",   "object", "array",   NULL};

static int check_keywords(ctx *c, const json_t *s)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)s, k, v)
    {
        if (in_list(refused_kw, k)) {
            if (!strcmp(k, "additionalItems") && json_is_true(v))
                continue; /* the default */
            size_t o = path_push(c, k);
            fail(c, EXSA_EUNSUPPORTED, "keyword '%s' is not supported", k);
            path_pop(c, o);
            return -1;
        }
    }
    return 0;
}

/* Collects an allOf tree of object schemas into props/required/addl. */
static int merge_all(ctx *c, const json_t *s, json_t *props, json_t *req, json_t **addl,
                     int depth)
{
    if (depth > MAX_DEPTH) {
        fail(c, EXSA_EUNSUPPORTED, "allOf nested too deep");
        return -1;
    }
    for (int hops = 0; json_is_object(s) && json_object_get(s, "$ref"); hops++) {
        const char *ref = json_string_value(json_object_get(s, "$ref"));
        const json_t *t = ref ? resolve(c, ref) : NULL;
        if (!t || hops > MAX_DEPTH) {
            size_t o = path_push(c, "$ref");
            fail(c, EXSA_EINVAL, "$ref '%.128s' in allOf points nowhere (or loops)",
                 ref ? ref : "(not a string)");
            path_pop(c, o);
            return -1;
        }
        s = t;
    }
    if (json_is_true(s))
        return 0;
    if (!json_is_object(s)) {
        fail(c, EXSA_EUNSUPPORTED, "allOf members must be object schemas");
        return -1;
    }
    if (check_keywords(c, s) < 0)
        return -1;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)s, k, v)
    {
        if (!strcmp(k, "type")) {
            if (!json_is_string(v) || strcmp(json_string_value(v), "object")) {
                fail(c, EXSA_EUNSUPPORTED, "allOf: only object schemas can be merged (type %s)",
                     json_is_string(v) ? json_string_value(v) : "list");
                return -1;
            }
        } else if (!strcmp(k, "allOf")) {
            if (!json_is_array(v)) {
                fail(c, EXSA_EINVAL, "'allOf' must be an array");
                return -1;
            }
            for (size_t i = 0; i < json_array_size(v); i++) {
                size_t o = path_push_idx(c, "allOf", i);
                int r = merge_all(c, json_array_get(v, i), props, req, addl, depth + 1);
                path_pop(c, o);
                if (r < 0)
                    return -1;
            }
        } else if (!strcmp(k, "properties")) {
            if (!json_is_object(v)) {
                fail(c, EXSA_EINVAL, "'properties' must be an object");
                return -1;
            }
            const char *pk;
            json_t *pv;
            json_object_foreach(v, pk, pv)
            {
                json_t *old = json_object_get(props, pk);
                if (old && !json_equal(old, pv)) {
                    fail(c, EXSA_EUNSUPPORTED,
                         "allOf: property '%.64s' defined differently in two branches", pk);
                    return -1;
                }
                if (json_object_set(props, pk, pv) < 0) {
                    oom(c);
                    return -1;
                }
            }
        } else if (!strcmp(k, "required")) {
            if (!json_is_array(v)) {
                fail(c, EXSA_EINVAL, "'required' must be an array of strings");
                return -1;
            }
            for (size_t i = 0; i < json_array_size(v); i++) {
                json_t *x = json_array_get(v, i);
                int dup = 0;
                for (size_t j = 0; j < json_array_size(req); j++)
                    dup |= json_equal(json_array_get(req, j), x);
                if (!dup && json_array_append(req, x) < 0) {
                    oom(c);
                    return -1;
                }
            }
        } else if (!strcmp(k, "additionalProperties")) {
            if (*addl && !json_equal(*addl, v)) {
                fail(c, EXSA_EUNSUPPORTED, "allOf: different additionalProperties in two branches");
                return -1;
            }
            *addl = v;
        } else if (in_list(other_kw, k) || in_list(array_kw, k) || in_list(string_kw, k) ||
                   in_list(int_kw, k)) {
            fail(c, EXSA_EUNSUPPORTED, "allOf: keyword '%s' in a merged schema is not supported", k);
            return -1;
        }
    }
    return 0;
}

static char *gen_allof(ctx *c, const json_t *s, const char *hint)
{
    json_t *props = json_object(), *req = json_array(), *addl = NULL;
    char *res = NULL;
    if (!props || !req) {
        oom(c);
        goto out;
    }
    if (merge_all(c, s, props, req, &addl, 0) < 0)
        goto out;
    res = gen_object(c, json_object_size(props) ? props : NULL, json_array_size(req) ? req : NULL,
                     addl, hint);
out:
    json_decref(props);
    json_decref(req);
    return res;
}

static char *gen_typed(ctx *c, const json_t *s, const char *type, const char *hint)
{
    if (!strcmp(type, "string"))
        return gen_string(c, s);
    if (!strcmp(type, "integer"))
        return gen_integer(c, s);
    if (!strcmp(type, "number")) {
        for (const char *const *k = int_kw; *k; k++)
            if (json_object_get(s, *k)) {
                size_t o = path_push(c, *k);
                fail(c, EXSA_EUNSUPPORTED, "keyword '%s' on type number is not supported "
                     "(only on integer)", *k);
                path_pop(c, o);
                return NULL;
            }
        return dupname(c, prim(c, P_NUMBER));
    }
    if (!strcmp(type, "boolean"))
        return dupname(c, prim(c, P_BOOLEAN));
    if (!strcmp(type, "null"))
        return dupname(c, prim(c, P_NULL));
    if (!strcmp(type, "object")) {
        json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required");
        const char *bad = props && !json_is_object(props) ? "properties"
                        : req && !json_is_array(req)      ? "required"
                                                          : NULL;
        if (bad) {
            size_t o = path_push(c, bad);
            fail(c, EXSA_EINVAL, "'%s' must be %s", bad,
                 !strcmp(bad, "properties") ? "an object" : "an array of strings");
            path_pop(c, o);
            return NULL;
        }
        return gen_object(c, props, req, json_object_get(s, "additionalProperties"), hint);
    }
    if (!strcmp(type, "array"))
        return gen_array(c, s, hint);
    return fail(c, EXSA_EINVAL, "unknown type '%.32s'", type);
}

static char *alternation(ctx *c, char **alts, size_t n)
{
    sb b = {0};
    if (n > 1)
        sb_puts(&b, "( ");
    for (size_t i = 0; i < n; i++) {
        if (i)
            sb_puts(&b, " | ");
        sb_puts(&b, alts[i]);
    }
    if (n > 1)
        sb_puts(&b, " )");
    char *e = sb_take(&b);
    return e ? e : oom(c);
}

static char *gen_anyof(ctx *c, const json_t *s, const char *kw, const char *hint)
{
    json_t *a = json_object_get(s, kw);
    size_t o = path_push(c, kw);
    char *res = NULL;
    const char *other = other_constraint(s, kw);
    if (!json_is_array(a) || json_array_size(a) == 0)
        fail(c, EXSA_EINVAL, "'%s' must be a non-empty array of schemas", kw);
    else if (other)
        fail(c, EXSA_EUNSUPPORTED, "'%s' beside '%s' is not supported", kw, other);
    else if (json_array_size(a) > MAX_PROPS)
        fail(c, EXSA_EUNSUPPORTED, "more than %d alternatives", MAX_PROPS);
    if (c->failed) {
        path_pop(c, o);
        return NULL;
    }
    size_t n = json_array_size(a);
    char **alts = calloc(n, sizeof *alts);
    size_t got = 0;
    if (!alts)
        oom(c);
    for (size_t i = 0; alts && i < n; i++) {
        char num[32];
        snprintf(num, sizeof num, "%zu", i);
        char *h = join_hint(hint, num);
        alts[i] = h ? gen_sub(c, json_array_get(a, i), num, NULL, h) : oom(c);
        free(h);
        if (!alts[i])
            break;
        got++;
    }
    if (alts && got == n)
        res = alternation(c, alts, n);
    for (size_t i = 0; i < got; i++)
        free(alts[i]);
    free(alts);
    path_pop(c, o);
    return res;
}

static char *gen(ctx *c, const json_t *s, const char *hint)
{
    if (c->failed)
        return NULL;
    if (c->depth >= MAX_DEPTH)
        return fail(c, EXSA_EUNSUPPORTED, "schema nested deeper than %d", MAX_DEPTH);
    if (json_is_true(s))
        return dupname(c, prim(c, P_VALUE));
    if (json_is_false(s))
        return fail(c, EXSA_EUNSUPPORTED, "schema 'false' matches nothing");
    if (!json_is_object(s))
        return fail(c, EXSA_EINVAL, "a schema must be an object or a boolean");
    if (check_keywords(c, s) < 0)
        return NULL;
    c->depth++;
    char *res = NULL;
    json_t *v;
    if (json_object_get(s, "$ref")) {
        res = gen_ref(c, s);
    } else if ((v = json_object_get(s, "const"))) {
        size_t o = path_push(c, "const");
        res = literal_of(c, v);
        path_pop(c, o);
    } else if ((v = json_object_get(s, "enum"))) {
        size_t o = path_push(c, "enum");
        if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > MAX_RULES) {
            fail(c, EXSA_EINVAL, "'enum' must be a non-empty array");
        } else {
            size_t n = json_array_size(v), got = 0;
            char **alts = calloc(n, sizeof *alts);
            if (!alts)
                oom(c);
            for (size_t i = 0; alts && i < n; i++) {
                if (!(alts[i] = literal_of(c, json_array_get(v, i))))
                    break;
                got++;
            }
            if (alts && got == n)
                res = alternation(c, alts, n);
            for (size_t i = 0; i < got; i++)
                free(alts[i]);
            free(alts);
        }
        path_pop(c, o);
    } else if (json_object_get(s, "anyOf")) {
        res = gen_anyof(c, s, "anyOf", hint);
    } else if (json_object_get(s, "oneOf")) {
        res = gen_anyof(c, s, "oneOf", hint);
    } else if ((v = json_object_get(s, "allOf"))) {
        /* one member and nothing beside it: just that schema (pydantic v1
         * wraps every described $ref so) */
        if (json_is_array(v) && json_array_size(v) == 1 && !other_constraint(s, "allOf")) {
            size_t o = path_push(c, "allOf");
            res = gen_sub(c, json_array_get(v, 0), "0", NULL, hint);
            path_pop(c, o);
        } else {
            res = gen_allof(c, s, hint);
        }
    } else {
        json_t *t = json_object_get(s, "type");
        const char *types[8];
        size_t nt = 0;
        if (json_is_string(t)) {
            types[nt++] = json_string_value(t);
        } else if (json_is_array(t)) {
            for (size_t i = 0; i < json_array_size(t) && !c->failed; i++) {
                const char *tn = json_string_value(json_array_get(t, i));
                if (!tn || !in_list(type_names, tn) || nt >= 7) {
                    size_t o = path_push_idx(c, "type", i);
                    fail(c, EXSA_EINVAL, "'type' entries must be distinct JSON type names");
                    path_pop(c, o);
                    break;
                }
                int dup = 0;
                for (size_t j = 0; j < nt; j++)
                    dup |= !strcmp(types[j], tn);
                if (dup) {
                    size_t o = path_push_idx(c, "type", i);
                    fail(c, EXSA_EINVAL, "'type' entries must be distinct JSON type names");
                    path_pop(c, o);
                    break;
                }
                types[nt++] = tn;
            }
            if (!c->failed && nt == 0) {
                size_t o = path_push(c, "type");
                fail(c, EXSA_EINVAL, "'type' must not be an empty list");
                path_pop(c, o);
            }
        } else if (t) {
            size_t o = path_push(c, "type");
            fail(c, EXSA_EINVAL, "'type' must be a string or a list of strings");
            path_pop(c, o);
        } else {
            /* inferred from the keywords present */
            int o = has_any(s, object_kw), a = has_any(s, array_kw), st = has_any(s, string_kw);
            const char *nk = NULL;
            for (const char *const *k = int_kw; *k; k++)
                if (json_object_get(s, *k))
                    nk = *k;
            if (nk && !(o || a || st)) {
                size_t po = path_push(c, nk);
                fail(c, EXSA_EUNSUPPORTED, "'%s' needs \"type\": \"integer\"", nk);
                path_pop(c, po);
            } else if (o + a + st > 1) {
                fail(c, EXSA_EUNSUPPORTED, "keywords of several types without 'type'");
            } else if (o) {
                types[nt++] = "object";
            } else if (a) {
                types[nt++] = "array";
            } else if (st) {
                types[nt++] = "string";
            } else {
                res = dupname(c, prim(c, P_VALUE));
            }
        }
        if (!c->failed && nt) {
            char *alts[8] = {0};
            size_t got = 0;
            for (size_t i = 0; i < nt; i++) {
                if (!(alts[i] = gen_typed(c, s, types[i], hint)))
                    break;
                got++;
            }
            if (got == nt)
                res = alternation(c, alts, nt);
            for (size_t i = 0; i < got; i++)
                free(alts[i]);
        }
    }
    c->depth--;
    if (!res && !c->failed)
        oom(c);
    if (c->failed) {
        free(res);
        return NULL;
    }
    return res;
}

/* ---- output ---- */

static char *emit(ctx *c, const char *root_expr)
{
    /* primitives pull in what they use */
    for (int changed = 1; changed;) {
        changed = 0;
        for (int p = 0; p < P_COUNT; p++)
            if ((c->prims_used >> p) & 1 && (c->prims_used | prims[p].deps) != c->prims_used) {
                c->prims_used |= prims[p].deps;
                changed = 1;
            }
    }
    sb b = {0};
    sb_printf(&b, "root ::= ");
    sb_puts(&b, root_expr);
    sb_puts(&b, "\n");
    for (size_t i = 0; i < c->nrules; i++) {
        sb_puts(&b, c->rules[i].name);
        sb_puts(&b, " ::= ");
        sb_puts(&b, c->rules[i].body ? c->rules[i].body : "\"\"");
        sb_puts(&b, "\n");
    }
    for (int p = 0; p < P_COUNT; p++)
        if ((c->prims_used >> p) & 1) {
            sb_puts(&b, prims[p].name);
            sb_puts(&b, " ::= ");
            sb_puts(&b, prims[p].body);
            sb_puts(&b, "\n");
        }
    char *r = sb_take(&b);
    return r ? r : oom(c);
}

static void ctx_free(ctx *c)
{
    for (size_t i = 0; i < c->nrules; i++) {
        free(c->rules[i].name);
        free(c->rules[i].body);
    }
    free(c->rules);
    for (size_t i = 0; i < c->nrefs; i++) {
        free(c->refs[i].ref);
        free(c->refs[i].name);
    }
    free(c->refs);
}

char *exsa_json_schema_to_gbnf(const json_t *schema, exsa_err *err)
{
    if (!schema) {
        exsa_err_set(err, EXSA_EINVAL, "json schema: no schema");
        return NULL;
    }
    ctx c = {.root = schema, .err = err};
    char *out = NULL;
    char *e = gen(&c, schema, "root");
    if (e) {
        out = emit(&c, e);
        free(e);
    }
    ctx_free(&c);
    return out;
}

char *exsa_json_object_gbnf(void)
{
    ctx c = {0};
    prim(&c, P_OBJECT);
    char *out = emit(&c, "object");
    ctx_free(&c);
    return out;
}
