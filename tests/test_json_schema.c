/* JSON Schema -> GBNF tests.
 *
 * No GBNF matcher exists in the library yet, so this file carries its own:
 * a small parser for the GBNF constructs the converter emits (rules,
 * alternation, groups, literals, classes, '.', * + ? {m,n}) and a
 * backtracking recognizer over it (continuation passing, with a step limit so
 * that a pathological grammar fails the test instead of hanging it). Each
 * real-world schema below comes with JSON documents that the grammar must
 * accept (valid, in the converter's layout) and documents it must reject
 * (missing required property, wrong type, extra property, out-of-range
 * integer, too many items, bad format ...). Integer ranges are checked
 * against plain arithmetic over every value near the bounds. Refused
 * keywords and malformed schemas must give errors that name the keyword and
 * the JSON pointer; a fuzz loop mutates the schemas and checks that every
 * outcome is either a well-formed grammar or an error.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "engine/json_schema.h"
#include "test_util.h"

/* ---- an independent GBNF recognizer ---- */

enum { N_ALT, N_SEQ, N_LIT, N_CLASS, N_ANY, N_REF, N_REP };

typedef struct gnode {
    int type;
    struct gnode **kid; /* ALT, SEQ: kids; REP: kid[0] */
    int nkid;
    char *lit; /* LIT: UTF-8 bytes */
    size_t litn;
    uint32_t *lo, *hi; /* CLASS ranges */
    int nr, neg;
    int ref; /* REF: rule index */
    char *refname;
    long min, max; /* REP; max < 0: unbounded */
} gnode;

#define MAX_GRULES 4096

typedef struct gram {
    char *name[MAX_GRULES];
    gnode *body[MAX_GRULES];
    int n;
    gnode **all; /* every node, for freeing */
    size_t nall, capall;
    const char *p; /* parse cursor */
    char err[200];
} gram;

static gnode *new_node(gram *g, int type)
{
    gnode *n = calloc(1, sizeof *n);
    assert_non_null(n);
    n->type = type;
    if (g->nall == g->capall) {
        g->capall = g->capall ? g->capall * 2 : 256;
        g->all = realloc(g->all, g->capall * sizeof *g->all);
        assert_non_null(g->all);
    }
    g->all[g->nall++] = n;
    return n;
}

static void add_kid(gnode *n, gnode *k)
{
    n->kid = realloc(n->kid, (size_t)(n->nkid + 1) * sizeof *n->kid);
    assert_non_null(n->kid);
    n->kid[n->nkid++] = k;
}

static void gram_free(gram *g)
{
    for (size_t i = 0; i < g->nall; i++) {
        gnode *n = g->all[i];
        free(n->kid);
        free(n->lit);
        free(n->lo);
        free(n->hi);
        free(n->refname);
        free(n);
    }
    free(g->all);
    for (int i = 0; i < g->n; i++)
        free(g->name[i]);
    memset(g, 0, sizeof *g);
}

static int is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

static void skip_sp(gram *g)
{
    while (*g->p == ' ' || *g->p == '\t')
        g->p++;
}

static int hexd(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int utf8_len_dec(const char *s, size_t n, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (!n)
        return 0;
    if (u[0] < 0x80) {
        *cp = u[0];
        return 1;
    }
    int l = (u[0] & 0xE0) == 0xC0 ? 2 : (u[0] & 0xF0) == 0xE0 ? 3 : (u[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (!l || (size_t)l > n)
        return 0;
    uint32_t c = u[0] & (0x7F >> l);
    for (int i = 1; i < l; i++) {
        if ((u[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (u[i] & 0x3F);
    }
    *cp = c;
    return l;
}

static int utf8_enc(uint32_t c, char *o)
{
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char)(0xC0 | (c >> 6));
        o[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | (c >> 12));
        o[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (c >> 18));
    o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* One character of a literal or class: raw UTF-8 or an escape. */
static int parse_char(gram *g, uint32_t *cp)
{
    if (*g->p == '\\') {
        char e = g->p[1];
        int nd = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
        if (nd) {
            uint32_t v = 0;
            for (int i = 0; i < nd; i++) {
                int h = hexd(g->p[2 + i]);
                if (h < 0)
                    return -1;
                v = v * 16 + (uint32_t)h;
            }
            g->p += 2 + nd;
            *cp = v;
            return 0;
        }
        switch (e) {
        case 'n': *cp = '\n'; break;
        case 't': *cp = '\t'; break;
        case 'r': *cp = '\r'; break;
        case '\\': case '"': case '[': case ']': *cp = (uint32_t)e; break;
        default: return -1;
        }
        g->p += 2;
        return 0;
    }
    int l = utf8_len_dec(g->p, strlen(g->p), cp);
    if (!l || *cp == '\n')
        return -1;
    g->p += l;
    return 0;
}

static gnode *parse_alts(gram *g, int depth);

static gnode *parse_primary(gram *g, int depth)
{
    char c = *g->p;
    if (c == '"') {
        g->p++;
        gnode *n = new_node(g, N_LIT);
        char buf[4096];
        size_t len = 0;
        while (*g->p != '"') {
            uint32_t cp;
            if (!*g->p || parse_char(g, &cp) < 0 || len + 4 >= sizeof buf)
                return NULL;
            len += (size_t)utf8_enc(cp, buf + len);
        }
        g->p++;
        n->lit = malloc(len + 1);
        assert_non_null(n->lit);
        memcpy(n->lit, buf, len);
        n->litn = len;
        return n;
    }
    if (c == '[') {
        g->p++;
        gnode *n = new_node(g, N_CLASS);
        if (*g->p == '^') {
            n->neg = 1;
            g->p++;
        }
        while (*g->p != ']') {
            uint32_t a, b;
            if (!*g->p || parse_char(g, &a) < 0)
                return NULL;
            b = a;
            if (g->p[0] == '-' && g->p[1] != ']') {
                g->p++;
                if (parse_char(g, &b) < 0 || b < a)
                    return NULL;
            }
            n->lo = realloc(n->lo, (size_t)(n->nr + 1) * sizeof *n->lo);
            n->hi = realloc(n->hi, (size_t)(n->nr + 1) * sizeof *n->hi);
            assert_true(n->lo && n->hi);
            n->lo[n->nr] = a;
            n->hi[n->nr++] = b;
        }
        g->p++;
        return n;
    }
    if (c == '.') {
        g->p++;
        return new_node(g, N_ANY);
    }
    if (c == '(') {
        g->p++;
        gnode *n = parse_alts(g, depth + 1);
        skip_sp(g);
        if (!n || *g->p != ')')
            return NULL;
        g->p++;
        return n;
    }
    if (is_name_char(c)) {
        const char *st = g->p;
        while (is_name_char(*g->p))
            g->p++;
        gnode *n = new_node(g, N_REF);
        n->refname = strndup(st, (size_t)(g->p - st));
        n->ref = -1;
        return n;
    }
    return NULL;
}

static int parse_count(gram *g, long *v)
{
    const char *st = g->p;
    long x = 0;
    while (*g->p >= '0' && *g->p <= '9')
        x = x * 10 + (*g->p++ - '0');
    *v = x;
    return g->p > st;
}

static gnode *parse_seq(gram *g, int depth)
{
    gnode *seq = new_node(g, N_SEQ);
    for (;;) {
        skip_sp(g);
        char c = *g->p;
        if (!c || c == '\n' || c == '|' || c == ')')
            return seq;
        gnode *p = parse_primary(g, depth);
        if (!p)
            return NULL;
        for (;;) {
            char q = *g->p;
            long mn, mx;
            if (q == '*' || q == '+' || q == '?') {
                mn = q == '+' ? 1 : 0;
                mx = q == '?' ? 1 : -1;
                g->p++;
            } else if (q == '{') {
                g->p++;
                if (!parse_count(g, &mn))
                    return NULL;
                mx = mn;
                if (*g->p == ',') {
                    g->p++;
                    if (!parse_count(g, &mx))
                        mx = -1;
                }
                if (*g->p != '}' || (mx >= 0 && mx < mn))
                    return NULL;
                g->p++;
            } else {
                break;
            }
            gnode *r = new_node(g, N_REP);
            add_kid(r, p);
            r->min = mn;
            r->max = mx;
            p = r;
        }
        add_kid(seq, p);
    }
}

static gnode *parse_alts(gram *g, int depth)
{
    if (depth > 200)
        return NULL;
    gnode *alt = new_node(g, N_ALT);
    for (;;) {
        gnode *s = parse_seq(g, depth);
        if (!s)
            return NULL;
        add_kid(alt, s);
        skip_sp(g);
        if (*g->p != '|')
            return alt;
        g->p++;
    }
}

static int find_rule(const gram *g, const char *name)
{
    for (int i = 0; i < g->n; i++)
        if (!strcmp(g->name[i], name))
            return i;
    return -1;
}

/* Parses the whole grammar; 0 on success, else g->err says why. */
static int gram_parse(gram *g, const char *text)
{
    memset(g, 0, sizeof *g);
    g->p = text;
    while (*g->p) {
        if (*g->p == '\n') {
            g->p++;
            continue;
        }
        const char *st = g->p;
        while (is_name_char(*g->p))
            g->p++;
        if (g->p == st || strncmp(g->p, " ::= ", 5)) {
            snprintf(g->err, sizeof g->err, "bad rule head at offset %zu", (size_t)(st - text));
            return -1;
        }
        char *name = strndup(st, (size_t)(g->p - st));
        if (find_rule(g, name) >= 0 || g->n >= MAX_GRULES) {
            snprintf(g->err, sizeof g->err, "duplicate rule '%s'", name);
            free(name);
            return -1;
        }
        g->p += 5;
        g->name[g->n] = name;
        gnode *b = parse_alts(g, 0);
        if (!b || (*g->p && *g->p != '\n')) {
            snprintf(g->err, sizeof g->err, "syntax error in rule '%s' near offset %zu", name,
                     (size_t)(g->p - text));
            g->n++;
            return -1;
        }
        g->body[g->n++] = b;
    }
    for (size_t i = 0; i < g->nall; i++) {
        gnode *n = g->all[i];
        if (n->type != N_REF)
            continue;
        n->ref = find_rule(g, n->refname);
        if (n->ref < 0) {
            snprintf(g->err, sizeof g->err, "undefined rule '%s'", n->refname);
            return -1;
        }
    }
    if (find_rule(g, "root") < 0) {
        snprintf(g->err, sizeof g->err, "no root rule");
        return -1;
    }
    return 0;
}

typedef struct kont {
    const gnode *n;
    long idx;     /* SEQ: next kid; REP: repetitions done */
    size_t start; /* REP: where the last repetition began */
    const struct kont *next;
} kont;

typedef struct matcher {
    const gram *g;
    const char *s;
    size_t len;
    long steps;
    int overflow;
} matcher;

#define MAX_STEPS 20000000L

static int m_node(matcher *m, const gnode *n, size_t pos, const kont *k);
static int m_rep(matcher *m, const gnode *n, long cnt, size_t start, size_t pos, const kont *k);
static int m_seq(matcher *m, const gnode *n, long i, size_t pos, const kont *k);

static int m_cont(matcher *m, size_t pos, const kont *k)
{
    if (!k)
        return pos == m->len;
    if (k->n->type == N_REP)
        return m_rep(m, k->n, k->idx, k->start, pos, k->next);
    return m_seq(m, k->n, k->idx, pos, k->next);
}

static int m_seq(matcher *m, const gnode *n, long i, size_t pos, const kont *k)
{
    if (i == n->nkid)
        return m_cont(m, pos, k);
    kont c = {n, i + 1, 0, k};
    return m_node(m, n->kid[i], pos, &c);
}

static int m_rep(matcher *m, const gnode *n, long cnt, size_t start, size_t pos, const kont *k)
{
    if (cnt > 0 && start == pos) /* an empty repetition: more of them add nothing */
        return m_cont(m, pos, k);
    if (n->max < 0 || cnt < n->max) {
        kont c = {n, cnt + 1, pos, k};
        if (m_node(m, n->kid[0], pos, &c))
            return 1;
    }
    return cnt >= n->min && m_cont(m, pos, k);
}

static int m_node(matcher *m, const gnode *n, size_t pos, const kont *k)
{
    if (++m->steps > MAX_STEPS) {
        m->overflow = 1;
        return 0;
    }
    if (m->overflow)
        return 0;
    switch (n->type) {
    case N_ALT:
        for (int i = 0; i < n->nkid; i++)
            if (m_node(m, n->kid[i], pos, k))
                return 1;
        return 0;
    case N_SEQ: return m_seq(m, n, 0, pos, k);
    case N_LIT:
        if (m->len - pos < n->litn || memcmp(m->s + pos, n->lit, n->litn))
            return 0;
        return m_cont(m, pos + n->litn, k);
    case N_CLASS: case N_ANY: {
        uint32_t cp;
        int l = utf8_len_dec(m->s + pos, m->len - pos, &cp);
        if (!l)
            return 0;
        if (n->type == N_CLASS) {
            int in = 0;
            for (int i = 0; i < n->nr; i++)
                in |= cp >= n->lo[i] && cp <= n->hi[i];
            if (in == n->neg)
                return 0;
        }
        return m_cont(m, pos + (size_t)l, k);
    }
    case N_REF: return m_node(m, m->g->body[n->ref], pos, k);
    case N_REP: return m_rep(m, n, 0, (size_t)-1, pos, k);
    }
    return 0;
}

static int gram_match(const gram *g, const char *s)
{
    matcher m = {.g = g, .s = s, .len = strlen(s)};
    int r = m_node(&m, g->body[find_rule(g, "root")], 0, NULL);
    if (m.overflow)
        fail_msg("recognizer step limit hit on %s", s);
    return r;
}

/* ---- helpers ---- */

static char *convert(const char *schema_text, exsa_err *err)
{
    json_error_t je;
    json_t *s = json_loads(schema_text, JSON_DECODE_ANY, &je);
    if (!s)
        fail_msg("test schema does not parse: %s: %s", je.text, schema_text);
    char *g = exsa_json_schema_to_gbnf(s, err);
    json_decref(s);
    return g;
}

static void load_grammar(gram *g, const char *text)
{
    if (gram_parse(g, text) < 0)
        fail_msg("generated grammar does not parse: %s\n%s", g->err, text);
}

typedef struct schema_case {
    const char *name;
    const char *schema;
    const char *good[10];
    const char *bad[14];
} schema_case;

static const schema_case cases[] = {
    {"address",
     "{\"type\":\"object\",\"properties\":{\"street\":{\"type\":\"string\"},\"city\":{\"type\":"
     "\"string\"},\"zip\":{\"type\":\"string\",\"pattern\":\"^[0-9]{5}$\"},\"country\":{\"enum\":["
     "\"US\",\"CA\"]}},\"required\":[\"street\",\"city\",\"zip\"]}",
     {"{\"street\":\"1 Main St\",\"city\":\"Springfield\",\"zip\":\"12345\"}",
      "{ \"street\": \"a\", \"city\": \"b\", \"zip\": \"00000\", \"country\": \"CA\" }",
      "{\n  \"street\": \"x\\\"y\",\n  \"city\": \"\\u00e9\",\n  \"zip\": \"99999\"\n}",
      "{\"street\":\"\",\"city\":\"K\\u00f6ln\",\"zip\":\"50667\",\"country\":\"US\"}"},
     {"{\"street\":\"a\",\"zip\":\"12345\"}", "{\"street\":\"a\",\"city\":\"b\",\"zip\":\"1234\"}",
      "{\"street\":\"a\",\"city\":\"b\",\"zip\":12345}",
      "{\"street\":\"a\",\"city\":\"b\",\"zip\":\"12345\",\"country\":\"MX\"}",
      "{\"street\":\"a\",\"city\":\"b\",\"zip\":\"12345\",\"foo\":1}",
      "{\"street\":\"a\",\"city\":\"b\",\"zip\":\"12345\",}", "{  \"street\":\"a\",\"city\":\"b\","
      "\"zip\":\"12345\"}", "[]", "{\"street\":\"a\nb\",\"city\":\"b\",\"zip\":\"12345\"}"}},
    {"product",
     "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"},\"name\":{\"type\":"
     "\"string\",\"minLength\":1,\"maxLength\":20},\"price\":{\"type\":\"number\"},\"tags\":{"
     "\"type\":\"array\",\"items\":{\"type\":\"string\"},\"maxItems\":3},\"status\":{\"enum\":["
     "\"active\",\"discontinued\"]},\"dims\":{\"type\":\"object\",\"properties\":{\"w\":{\"type\":"
     "\"number\"},\"h\":{\"type\":\"number\"}},\"required\":[\"w\",\"h\"]}},\"required\":[\"id\","
     "\"name\",\"price\",\"status\"],\"title\":\"Product\",\"description\":\"x\"}",
     {"{\"id\":1,\"name\":\"Lamp\",\"price\":19.99,\"status\":\"active\"}",
      "{\"id\":-7,\"name\":\"L\",\"price\":0,\"tags\":[],\"status\":\"discontinued\"}",
      "{\"id\":2,\"name\":\"Desk\",\"price\":1.5e3,\"tags\":[\"a\", \"b\",\"c\"],\"status\":"
      "\"active\",\"dims\":{\"w\":1,\"h\":2.25}}"},
     {"{\"id\":1.5,\"name\":\"Lamp\",\"price\":1,\"status\":\"active\"}",
      "{\"id\":1,\"name\":\"\",\"price\":1,\"status\":\"active\"}",
      "{\"id\":1,\"name\":\"abcdefghijklmnopqrstu\",\"price\":1,\"status\":\"active\"}",
      "{\"id\":1,\"name\":\"L\",\"price\":1,\"status\":\"gone\"}",
      "{\"id\":1,\"name\":\"L\",\"price\":1,\"tags\":[\"a\",\"b\",\"c\",\"d\"],\"status\":"
      "\"active\"}",
      "{\"id\":1,\"name\":\"L\",\"price\":1,\"status\":\"active\",\"dims\":{\"w\":1}}",
      "{\"id\":1,\"name\":\"L\",\"price\":\"1\",\"status\":\"active\"}",
      "{\"id\":01,\"name\":\"L\",\"price\":1,\"status\":\"active\"}"}},
    {"tree",
     "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"value\":{\"type\":\"integer\"},"
     "\"children\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"}}},\"required\":["
     "\"value\"]}},\"$ref\":\"#/$defs/node\"}",
     {"{\"value\":1}", "{\"value\":1,\"children\":[]}",
      "{\"value\":1,\"children\":[{\"value\":2},{\"value\":3,\"children\":[{\"value\":4}]}]}"},
     {"{}", "{\"children\":[]}", "{\"value\":1,\"children\":[{\"value\":\"x\"}]}",
      "{\"value\":1,\"children\":[{\"children\":[]}]}", "{\"value\":1,\"children\":{}}"}},
    {"tool call",
     "{\"type\":\"object\",\"properties\":{\"name\":{\"const\":\"get_weather\"},\"arguments\":{"
     "\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},\"unit\":{\"enum\":["
     "\"c\",\"f\"]}},\"required\":[\"city\"]}},\"required\":[\"name\",\"arguments\"]}",
     {"{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}",
      "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"unit\": \"c\"}}"},
     {"{\"name\":\"get_time\",\"arguments\":{\"city\":\"Paris\"}}",
      "{\"name\":\"get_weather\"}", "{\"name\":\"get_weather\",\"arguments\":{}}",
      "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"P\",\"unit\":\"k\"}}",
      "{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"P\\\"}\"}"}},
    {"anyOf types", "{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"integer\"},{\"type\":\"null\"}]}",
     {"\"x\"", "42", "-3", "null", "\"\""},
     {"4.5", "true", "[]", "{}", "nul"}},
    {"type list", "{\"type\":[\"string\",\"null\"],\"maxLength\":3}",
     {"\"abc\"", "null", "\"\"", "\"\\n\\t\""}, {"\"abcd\"", "3", "false"}},
    {"date-time", "{\"type\":\"string\",\"format\":\"date-time\"}",
     {"\"2024-01-31T12:00:00Z\"", "\"2024-12-01t23:59:59.123+05:30\"",
      "\"1999-02-28T00:00:00-08:00\""},
     {"\"2024-13-01T00:00:00Z\"", "\"2024-01-01 00:00:00Z\"", "\"2024-01-01T24:00:00Z\"",
      "\"2024-01-01T12:00:00\"", "\"2024-01-32T12:00:00Z\"", "\"24-01-01T12:00:00Z\"",
      "2024"}},
    {"date and time",
     "{\"type\":\"object\",\"properties\":{\"d\":{\"type\":\"string\",\"format\":\"date\"},\"t\":{"
     "\"type\":\"string\",\"format\":\"time\"}},\"required\":[\"d\",\"t\"]}",
     {"{\"d\":\"2020-02-29\",\"t\":\"08:30:00Z\"}", "{\"d\":\"0001-10-10\",\"t\":\"23:59:60.5+00:00\"}"},
     {"{\"d\":\"2020-2-29\",\"t\":\"08:30:00Z\"}", "{\"d\":\"2020-02-29\",\"t\":\"8:30:00Z\"}",
      "{\"d\":\"2020-00-10\",\"t\":\"08:30:00Z\"}", "{\"d\":\"2020-02-29\",\"t\":\"08:61:00Z\"}"}},
    {"uuid", "{\"type\":\"string\",\"format\":\"uuid\"}",
     {"\"123e4567-e89b-12d3-a456-426614174000\"", "\"ABCDEF01-2345-6789-abcd-ef0123456789\""},
     {"\"123e4567e89b12d3a456426614174000\"", "\"123e4567-e89b-12d3-a456-42661417400\"",
      "\"g23e4567-e89b-12d3-a456-426614174000\"", "\"{123e4567-e89b-12d3-a456-426614174000}\""}},
    {"month 1..12", "{\"type\":\"integer\",\"minimum\":1,\"maximum\":12}",
     {"1", "9", "10", "12"}, {"0", "13", "-1", "01", "1.0", "\"1\"", "100"}},
    {"-5..300", "{\"type\":\"integer\",\"minimum\":-5,\"maximum\":300}",
     {"-5", "-1", "0", "7", "99", "300", "250"}, {"-6", "301", "-0", "1000", "-10", "3000"}},
    {"code pattern", "{\"type\":\"string\",\"pattern\":\"^[A-Z]{2}-[0-9]{3}$\"}",
     {"\"AB-123\"", "\"ZZ-000\""},
     {"\"A-123\"", "\"ab-123\"", "\"AB-1234\"", "\"AB123\"", "\"xAB-123\"", "\"AB-123 \""}},
    {"min/max items",
     "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2,\"maxItems\":4}",
     {"[1,2]", "[1, 2, 3]", "[ 1,2,3,4]", "[\n  1,\n  2\n]"},
     {"[]", "[1]", "[1,2,3,4,5]", "[1,\"2\"]", "[1,2,]", "[1,,2]"}},
    {"no extra props",
     "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"additionalProperties\":"
     "false}",
     {"{}", "{\"a\":1}", "{ }"}, {"{\"b\":1}", "{\"a\":1,\"b\":2}", "{\"a\":null}"}},
    {"extra props schema",
     "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"additionalProperties\":"
     "{\"type\":\"string\"}}",
     {"{\"a\":1}", "{\"a\":1,\"b\":\"x\"}", "{\"b\":\"x\",\"ab\":\"y\"}", "{}",
      "{\"\":\"empty\"}", "{\"A\":\"z\"}"},
     {"{\"a\":\"x\"}", "{\"a\":1,\"b\":2}", "{\"a\":1,\"a\":\"x\"}", "{\"a\":\"x\",\"b\":\"y\"}"}},
    {"allOf merge",
     "{\"allOf\":[{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}},\"required\":["
     "\"x\"]},{\"properties\":{\"y\":{\"type\":\"boolean\"}},\"required\":[\"y\"]}]}",
     {"{\"x\":1,\"y\":true}"}, {"{\"x\":1}", "{\"y\":false}", "{\"x\":1,\"y\":1}"}},
    {"definitions + oneOf",
     "{\"definitions\":{\"pt\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"number\"},"
     "\"y\":{\"type\":\"number\"}},\"required\":[\"x\",\"y\"]}},\"oneOf\":[{\"$ref\":\"#/"
     "definitions/pt\"},{\"type\":\"array\",\"items\":{\"$ref\":\"#/definitions/pt\"}}]}",
     {"{\"x\":1,\"y\":2}", "[]", "[{\"x\":0,\"y\":-1.5}]"},
     {"{\"x\":1}", "[{\"x\":1}]", "[1]", "null"}},
    {"empty schema", "{}",
     {"1", "\"s\"", "null", "[1,{\"a\":[true,false]}]", "{\"k\":{}}", "-0.5e-3"},
     {"{", "[1,]", "01", "tru", "{\"a\" 1}", "'x'"}},
    {"true schema", "true", {"{}", "[]", "0"}, {"", "]"}},
    {"tuple",
     "{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"integer\"}],"
     "\"items\":{\"type\":\"boolean\"},\"maxItems\":4}",
     {"[\"a\",1]", "[\"a\",1,true]", "[\"a\", 1, true, false]"},
     {"[\"a\"]", "[1,\"a\"]", "[\"a\",1,2]", "[\"a\",1,true,true,true]"}},
    {"all optional",
     "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"},"
     "\"c\":{\"type\":\"boolean\"}}}",
     {"{}", "{\"b\":\"x\"}", "{\"a\":1,\"c\":true}", "{\"a\":1,\"b\":\"x\",\"c\":false}",
      "{\"c\":true}"},
     {"{\"a\":1,}", "{,\"a\":1}", "{\"d\":1}", "{\"a\":1,\"a\":1}", "{\"a\":1 \"b\":\"x\"}"}},
    {"number", "{\"type\":\"number\"}",
     {"0", "-1.5", "1e10", "3.25E-2", "12345678901234"}, {"01", "1.", ".5", "\"1\"", "NaN", "+1"}},
    {"mixed enum", "{\"enum\":[\"a\",1,null,true,{\"k\":[1,2]},2.5]}",
     {"\"a\"", "1", "null", "true", "{\"k\":[1,2]}", "2.5"}, {"\"b\"", "false", "2", "{\"k\":[1]}"}},
    {"escapes in pattern", "{\"type\":\"string\",\"pattern\":\"^a\\\"b\\\\\\\\c\\\\.$\"}",
     {"\"a\\\"b\\\\c.\""}, {"\"a\\\"b\\\\cx\"", "\"ab\\\\c.\""}},
    {"unanchored pattern", "{\"type\":\"string\",\"pattern\":\"ab\"}",
     {"\"ab\"", "\"xxabyy\"", "\"ab\\n\""}, {"\"axb\"", "\"\"", "\"ba\""}},
    {"group pattern", "{\"type\":\"string\",\"pattern\":\"^(foo|ba[rz])+(-\\\\d{1,2})?$\"}",
     {"\"foo\"", "\"barbazfoo\"", "\"foo-7\"", "\"baz-42\""},
     {"\"\"", "\"bat\"", "\"foo-\"", "\"foo-123\"", "\"-1\""}},
    {"exclusive bounds", "{\"type\":\"integer\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":100}",
     {"1", "50", "99"}, {"0", "100", "-1"}},
    {"string lengths", "{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}",
     {"\"ab\"", "\"h\\u00e9\\u00e9\"", "\"h\xc3\xa9\xc3\xa9\"", "\"a\\n\""},
     {"\"a\"", "\"abcd\"", "\"\""}},
    {"required not in properties",
     "{\"type\":\"object\",\"required\":[\"id\"],\"properties\":{\"x\":{\"type\":\"integer\"}}}",
     {"{\"id\":\"anything\"}", "{\"x\":1,\"id\":[1]}"}, {"{\"x\":1}", "{}"}},
    {"linked list via #",
     "{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},\"next\":{\"$ref\":\"#\"}},"
     "\"required\":[\"v\"]}",
     {"{\"v\":1}", "{\"v\":1,\"next\":{\"v\":2,\"next\":{\"v\":3}}}"},
     {"{\"v\":1,\"next\":{}}", "{\"v\":1,\"next\":null}"}},
    {"allOf with $ref",
     "{\"$defs\":{\"base\":{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\","
     "\"minimum\":1}},\"required\":[\"id\"]},\"color\":{\"enum\":[\"red\",\"green\"]}},"
     "\"allOf\":[{\"$ref\":\"#/$defs/base\"},{\"properties\":{\"c\":{\"allOf\":[{\"$ref\":"
     "\"#/$defs/color\"}],\"description\":\"pydantic v1 style\"}},\"required\":[\"c\"]}]}",
     {"{\"id\":1,\"c\":\"red\"}", "{\"id\":99,\"c\":\"green\"}"},
     {"{\"id\":0,\"c\":\"red\"}", "{\"id\":1,\"c\":\"blue\"}", "{\"c\":\"red\"}"}},
    {"strict nullable (OpenAI style)",
     "{\"type\":\"object\",\"properties\":{\"q\":{\"type\":\"string\"},\"limit\":{\"anyOf\":"
     "[{\"type\":\"integer\",\"minimum\":1,\"maximum\":50},{\"type\":\"null\"}]},\"items\":{"
     "\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"k\":{\"type\":"
     "\"string\"}},\"required\":[\"k\"],\"additionalProperties\":false}}},\"required\":[\"q\","
     "\"limit\",\"items\"],\"additionalProperties\":false}",
     {"{\"q\":\"x\",\"limit\":null,\"items\":[]}",
      "{\"q\":\"x\",\"limit\":50,\"items\":[{\"k\":\"a\"},{\"k\":\"b\"}]}"},
     {"{\"q\":\"x\",\"limit\":51,\"items\":[]}", "{\"q\":\"x\",\"items\":[]}",
      "{\"q\":\"x\",\"limit\":1,\"items\":[{\"k\":\"a\",\"z\":1}]}"}},
    {"odd keys, extras allowed",
     "{\"type\":\"object\",\"properties\":{\"a b\":{\"type\":\"integer\"},\"q\\\"t\":{"
     "\"type\":\"boolean\"},\"\u00e9t\u00e9\":{\"type\":\"null\"}},\"required\":[\"a b\"],"
     "\"additionalProperties\":true}",
     {"{\"a b\":1}", "{\"a b\":1,\"q\\\"t\":true}", "{\"a b\":1,\"\u00e9t\u00e9\":null}",
      "{\"a b\":1,\"x\":[1,2]}"},
     {"{\"a b\":\"1\"}", "{\"a b\":1,\"q\\\"t\":5}", "{\"ab\":1}",
      /* escaped spellings of listed keys, and escapes in extra keys at all */
      "{\"a b\":1,\"\\u0061 b\":2}", "{\"a b\":1,\"\u00e9t\\u00e9\":1}",
      "{\"a b\":1,\"x\\ny\":1}"}},
    {"exactly one item", "{\"type\":\"array\",\"items\":{\"type\":\"boolean\"},\"minItems\":1,"
     "\"maxItems\":1}", {"[true]", "[ false ]"}, {"[]", "[true,false]", "[1]"}},
    {"exactly three items", "{\"type\":\"array\",\"minItems\":3,\"maxItems\":3}",
     {"[1,\"a\",null]", "[[],{},0]"}, {"[1,2]", "[1,2,3,4]"}},
    {"empty string only", "{\"type\":\"string\",\"maxLength\":0}", {"\"\""}, {"\"a\"", "\" \""}},
};

/* ---- tests ---- */

static void check_case(const schema_case *tc)
{
    exsa_err err = {0};
    char *text = convert(tc->schema, &err);
    if (!text)
        fail_msg("%s: conversion failed: %s", tc->name, err.msg);
    gram g;
    load_grammar(&g, text);
    for (int i = 0; i < 10 && tc->good[i]; i++) {
        json_t *j = json_loads(tc->good[i], JSON_DECODE_ANY, NULL);
        if (!j) /* the test data itself must be JSON */
            fail_msg("%s: good[%d] is not JSON: %s", tc->name, i, tc->good[i]);
        json_decref(j);
        if (!gram_match(&g, tc->good[i]))
            fail_msg("%s: rejected valid %s\ngrammar:\n%s", tc->name, tc->good[i], text);
    }
    for (int i = 0; i < 14 && tc->bad[i]; i++)
        if (gram_match(&g, tc->bad[i]))
            fail_msg("%s: accepted invalid %s\ngrammar:\n%s", tc->name, tc->bad[i], text);
    gram_free(&g);
    free(text);
}

static void test_real_world_schemas(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_case(&cases[i]);
}

static void test_json_object(void **state)
{
    (void)state;
    char *text = exsa_json_object_gbnf();
    assert_non_null(text);
    gram g;
    load_grammar(&g, text);
    const char *good[] = {"{}", "{\"a\":[1,{\"b\":null}],\"c\":\"d\"}", "{ \"x\": -1.25e+3 }",
                          "{\n  \"k\": true\n}"};
    const char *bad[] = {"[1]", "\"x\"", "{\"a\"}", "{\"a\":1,}", "{   }", "{\"a\":01}",
                         "{a:1}", "{\"a\":1}x"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        if (!gram_match(&g, good[i]))
            fail_msg("json_object rejected %s", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (gram_match(&g, bad[i]))
            fail_msg("json_object accepted %s", bad[i]);
    gram_free(&g);
    free(text);
}

/* Whitespace is bounded: one space or one newline+indent per position. */
static void test_whitespace_bound(void **state)
{
    (void)state;
    exsa_err err = {0};
    char *text = convert("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},"
                         "\"required\":[\"a\"]}", &err);
    assert_non_null(text);
    gram g;
    load_grammar(&g, text);
    assert_true(gram_match(&g, "{\"a\":1}"));
    assert_true(gram_match(&g, "{ \"a\" : 1 }"));
    assert_true(gram_match(&g, "{\n\t\"a\": 1\n}"));
    assert_false(gram_match(&g, "{  \"a\":1}"));
    assert_false(gram_match(&g, "{\"a\":1 \n}"));
    assert_false(gram_match(&g, "{\n\n\"a\":1}"));
    assert_false(gram_match(&g, " {\"a\":1}"));
    gram_free(&g);
    free(text);
}

/* Every integer near the bounds, against arithmetic. */
static void check_range(int has_lo, long long lo, int has_hi, long long hi)
{
    char schema[256];
    int n = snprintf(schema, sizeof schema, "{\"type\":\"integer\"");
    if (has_lo)
        n += snprintf(schema + n, sizeof schema - (size_t)n, ",\"minimum\":%lld", lo);
    if (has_hi)
        n += snprintf(schema + n, sizeof schema - (size_t)n, ",\"maximum\":%lld", hi);
    snprintf(schema + n, sizeof schema - (size_t)n, "}");
    exsa_err err = {0};
    char *text = convert(schema, &err);
    if (!text)
        fail_msg("%s: %s", schema, err.msg);
    gram g;
    load_grammar(&g, text);
    long long probes[4096];
    int np = 0;
    long long centers[6] = {has_lo ? lo : -1000, has_hi ? hi : 1000, 0, 9, 10, 100};
    for (int c = 0; c < 6; c++)
        for (long long d = -120; d <= 120; d++)
            probes[np++] = centers[c] + d;
    uint64_t rs = (uint64_t)lo * 31u + (uint64_t)hi;
    for (int i = 0; i < 500; i++) {
        long long span = 1;
        int digits = (int)(exsa_test_rand_u64(&rs) % 18) + 1;
        for (int k = 0; k < digits; k++)
            span *= 10;
        long long v = (long long)(exsa_test_rand_u64(&rs) % (uint64_t)span);
        probes[np++] = (exsa_test_rand_u64(&rs) & 1) ? -v : v;
    }
    for (int i = 0; i < np; i++) {
        long long v = probes[i];
        char doc[32];
        snprintf(doc, sizeof doc, "%lld", v);
        int want = (!has_lo || v >= lo) && (!has_hi || v <= hi) && strlen(doc) - (v < 0) <= 19;
        if (gram_match(&g, doc) != want)
            fail_msg("%s: %s should be %s\n%s", schema, doc, want ? "accepted" : "rejected", text);
    }
    const char *noncanon[] = {"-0", "+1", "00", "01", "1.0", "1e2", " 1"};
    for (size_t i = 0; i < sizeof noncanon / sizeof *noncanon; i++)
        if (gram_match(&g, noncanon[i]))
            fail_msg("%s: accepted %s", schema, noncanon[i]);
    gram_free(&g);
    free(text);
}

static void test_integer_ranges(void **state)
{
    (void)state;
    check_range(1, 1, 1, 12);
    check_range(1, -5, 1, 300);
    check_range(1, 0, 1, 0);
    check_range(1, -1, 1, -1);
    check_range(1, -100, 1, -7);
    check_range(1, 7, 1, 1234);
    check_range(1, 999, 1, 1001);
    check_range(1, -1000000, 1, 1000000);
    check_range(1, 123456789012LL, 1, 123456789999LL);
    check_range(1, 10, 1, 99);
    check_range(1, 100, 1, 109);
    check_range(0, 0, 1, -10);
    check_range(0, 0, 1, 42);
    check_range(1, -3, 0, 0);
    check_range(1, 1000, 0, 0);
    check_range(1, 0, 0, 0);
    check_range(1, -999999999999999999LL, 1, 999999999999999999LL);
    check_range(0, 0, 0, 0);
}

typedef struct refusal {
    const char *schema;
    const char *needle1, *needle2; /* both must be in the message */
} refusal;

static void check_errors(const refusal *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        exsa_err err = {0};
        char *text = convert(r[i].schema, &err);
        if (text)
            fail_msg("accepted %s:\n%s", r[i].schema, text);
        assert_true(err.code < 0);
        if (!strstr(err.msg, r[i].needle1) || (r[i].needle2 && !strstr(err.msg, r[i].needle2)))
            fail_msg("error for %s lacks '%s'/'%s': %s", r[i].schema, r[i].needle1,
                     r[i].needle2 ? r[i].needle2 : "", err.msg);
    }
}

static void test_refused_keywords(void **state)
{
    (void)state;
    static const char *const kws[] = {
        "not", "if", "then", "else", "patternProperties", "propertyNames", "dependentRequired",
        "dependentSchemas", "dependencies", "multipleOf", "uniqueItems", "contains",
        "minContains", "maxContains", "minProperties", "maxProperties", "unevaluatedProperties",
        "unevaluatedItems", "additionalItems", "$dynamicRef", "$recursiveRef"};
    for (size_t i = 0; i < sizeof kws / sizeof *kws; i++) {
        char schema[256], kwq[64], path[96];
        /* nested, so the pointer is checked too */
        snprintf(schema, sizeof schema,
                 "{\"type\":\"object\",\"properties\":{\"a/b\":{\"type\":\"array\",\"%s\":{}}}}",
                 kws[i]);
        snprintf(kwq, sizeof kwq, "'%s'", kws[i]);
        snprintf(path, sizeof path, "#/properties/a~1b/%s", kws[i]);
        refusal r = {schema, kwq, path};
        check_errors(&r, 1);
    }
    static const refusal more[] = {
        {"{\"type\":\"number\",\"minimum\":0.5}", "'minimum'", "#/minimum"},
        {"{\"type\":\"number\",\"exclusiveMaximum\":3}", "'exclusiveMaximum'", "number"},
        {"{\"type\":\"string\",\"format\":\"email\"}", "email", "#/format"},
        {"{\"type\":\"string\",\"pattern\":\"(?=a)b\"}", "pattern", "look-around"},
        {"{\"type\":\"string\",\"pattern\":\"(a)\\\\1\"}", "pattern", "escape"},
        {"{\"type\":\"string\",\"pattern\":\"\\\\bfoo\"}", "pattern", "#/pattern"},
        {"{\"type\":\"string\",\"pattern\":\"a++\"}", "possessive", NULL},
        {"{\"type\":\"string\",\"pattern\":\"\\\\p{L}\"}", "pattern", NULL},
        {"{\"type\":\"string\",\"pattern\":\"a^b\"}", "anchor", NULL},
        {"{\"type\":\"string\",\"pattern\":\"a$b\"}", "'$'", NULL},
        {"{\"type\":\"string\",\"pattern\":\"[[:alpha:]]\"}", "POSIX", NULL},
        {"{\"type\":\"string\",\"pattern\":\"^a$\",\"maxLength\":3}", "'maxLength'", NULL},
        {"{\"type\":\"string\",\"pattern\":\"((a{100}){100}){100}\"}", "expands", NULL},
        {"{\"type\":\"object\",\"properties\":{\"a\":{}},\"anyOf\":[{\"required\":[\"a\"]}]}",
         "'anyOf' beside '", "#/anyOf"},
        {"{\"$ref\":\"#/$defs/a\",\"type\":\"string\",\"$defs\":{\"a\":{}}}", "beside 'type'",
         NULL},
        {"{\"allOf\":[{\"type\":\"string\"},{\"minLength\":1}]}", "allOf", "#/allOf/0"},
        {"{\"allOf\":[{\"properties\":{\"a\":{\"type\":\"string\"}}},{\"properties\":{\"a\":{"
         "\"type\":\"integer\"}}}]}", "property 'a'", NULL},
        {"{\"$ref\":\"other.json#/a\"}", "only local refs", "#/$ref"},
        {"{\"$defs\":{\"a\":{\"anyOf\":[{\"$ref\":\"#/$defs/a\"},{\"type\":\"null\"}]}},\"$ref\":"
         "\"#/$defs/a\"}", "left recursion", NULL},
        {"{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/b\"},\"b\":{\"$ref\":\"#/$defs/a\"}},\"$ref\":"
         "\"#/$defs/a\"}", "left recursion", NULL},
        {"{\"type\":\"integer\",\"minimum\":1e30}", "10^18", "#/minimum"},
        {"{\"type\":\"string\",\"maxLength\":100000}", "'maxLength' above", NULL},
        {"false", "matches nothing", NULL},
        {"{\"minimum\":3}", "'minimum' needs", NULL},
    };
    check_errors(more, sizeof more / sizeof *more);
}

static void test_malformed_schemas(void **state)
{
    (void)state;
    static const refusal bad[] = {
        {"{\"type\":\"object\",\"properties\":[]}", "'properties' must be", "#/properties"},
        {"{\"type\":\"object\",\"required\":\"a\"}", "'required' must be", NULL},
        {"{\"type\":\"object\",\"required\":[1]}", "'required' entries", "#/required/0"},
        {"{\"type\":\"foo\"}", "unknown type 'foo'", NULL},
        {"{\"type\":5}", "'type' must be", "#/type"},
        {"{\"type\":[\"string\",\"string\"]}", "'type' entries", "#/type/1"},
        {"{\"type\":[]}", "empty list", NULL},
        {"{\"enum\":[]}", "'enum' must be", "#/enum"},
        {"{\"enum\":3}", "'enum' must be", NULL},
        {"{\"anyOf\":{}}", "'anyOf' must be", "#/anyOf"},
        {"{\"oneOf\":[]}", "'oneOf' must be", NULL},
        {"{\"anyOf\":[{\"type\":\"string\"},3]}", "must be an object or a boolean", "#/anyOf/1"},
        {"{\"$ref\":\"#/$defs/missing\"}", "points nowhere", "#/$ref"},
        {"{\"$ref\":\"#/definitions/x\",\"definitions\":{\"y\":{}}}", "'#/definitions/x'", NULL},
        {"{\"$ref\":5}", "'$ref' must be a string", NULL},
        {"{\"type\":\"string\",\"minLength\":-1}", "'minLength' must be", "#/minLength"},
        {"{\"type\":\"string\",\"minLength\":\"3\"}", "'minLength' must be", NULL},
        {"{\"type\":\"string\",\"minLength\":5,\"maxLength\":2}", "below minLength", NULL},
        {"{\"type\":\"array\",\"minItems\":5,\"maxItems\":2}", "below minItems", NULL},
        {"{\"type\":\"integer\",\"minimum\":10,\"maximum\":2}", "no integer", NULL},
        {"{\"type\":\"integer\",\"minimum\":\"1\"}", "'minimum' must be a number", NULL},
        {"{\"type\":\"array\",\"items\":3}", "'items' must be", "#/items"},
        {"{\"type\":\"array\",\"prefixItems\":{}}", "'prefixItems' must be", NULL},
        {"[]", "must be an object or a boolean", NULL},
        {"\"string\"", "must be an object or a boolean", NULL},
        {"{\"type\":\"string\",\"pattern\":\"([a-z]\"}", "missing ')'", NULL},
        {"{\"type\":\"string\",\"pattern\":\"[z-a]\"}", "bad range", NULL},
        {"{\"type\":\"string\",\"pattern\":\"a{3,2}\"}", "quantifier", NULL},
        {"{\"type\":\"string\",\"pattern\":\"a)\"}", "unbalanced", NULL},
        {"{\"type\":\"string\",\"pattern\":5}", "'pattern' must be", NULL},
        {"{\"type\":\"string\",\"format\":5}", "'format' must be", NULL},
        {"{\"type\":\"object\",\"additionalProperties\":5,\"properties\":{}}",
         "'additionalProperties' must be", NULL},
        {"{\"type\":\"object\",\"required\":[\"a\"],\"additionalProperties\":false}",
         "forbidden by additionalProperties", "#/required/0"},
    };
    check_errors(bad, sizeof bad / sizeof *bad);

    /* nesting beyond the limit */
    size_t depth = 200;
    char *deep = malloc(depth * 40 + 64);
    assert_non_null(deep);
    size_t n = 0;
    for (size_t i = 0; i < depth; i++)
        n += (size_t)sprintf(deep + n, "{\"type\":\"array\",\"items\":");
    n += (size_t)sprintf(deep + n, "{}");
    for (size_t i = 0; i < depth; i++)
        deep[n++] = '}';
    deep[n] = '\0';
    refusal r = {deep, "nested deeper", NULL};
    check_errors(&r, 1);
    free(deep);
    exsa_err err = {0};
    assert_null(exsa_json_schema_to_gbnf(NULL, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
}

/* Annotations are ignored; the output does not depend on them. */
static void test_annotations_ignored(void **state)
{
    (void)state;
    exsa_err err = {0};
    char *a = convert("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},"
                      "\"required\":[\"a\"]}", &err);
    char *b = convert("{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\",\"$id\":\"x\","
                      "\"title\":\"T\",\"description\":\"D\",\"$comment\":\"c\",\"type\":\"object\","
                      "\"properties\":{\"a\":{\"type\":\"integer\",\"examples\":[1],\"default\":2,"
                      "\"description\":\"n\"}},\"required\":[\"a\"]}", &err);
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(a, b);
    free(a);
    free(b);
}

/* ---- fuzz ---- */

static json_t *random_value(uint64_t *rs, int depth)
{
    static const char *const strs[] = {"", "string", "integer", "object", "array", "#/$defs/node",
                                       "#", "^(a|b", "[^\\d]{2,3}$", "date-time", "x/y~z",
                                       "\\u0000", "((((", "a{1,10000}"};
    static const char *const kws[] = {"type", "properties", "required", "items", "enum", "const",
                                      "anyOf", "allOf", "$ref", "minimum", "maximum", "pattern",
                                      "minItems", "maxItems", "format", "additionalProperties",
                                      "prefixItems", "not", "minLength", "exclusiveMinimum"};
    switch (exsa_test_rand_u64(rs) % (depth > 3 ? 6 : 9)) {
    case 0: return json_integer((json_int_t)(exsa_test_rand_u64(rs) % 41) - 20);
    case 1: return json_real((double)(int64_t)exsa_test_rand_u64(rs) / 1e3);
    case 2: return json_string(strs[exsa_test_rand_u64(rs) % (sizeof strs / sizeof *strs)]);
    case 3: return json_true();
    case 4: return json_false();
    case 5: return json_null();
    case 6: {
        json_t *a = json_array();
        for (int i = (int)(exsa_test_rand_u64(rs) % 3); i > 0; i--)
            json_array_append_new(a, random_value(rs, depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (int i = (int)(exsa_test_rand_u64(rs) % 3); i > 0; i--)
            json_object_set_new(o, kws[exsa_test_rand_u64(rs) % (sizeof kws / sizeof *kws)],
                                random_value(rs, depth + 1));
        return o;
    }
    }
}

/* Replaces one random node of the tree (or adds a key) in place. */
static void mutate_tree(json_t *j, uint64_t *rs, int depth)
{
    size_t n = json_is_object(j) ? json_object_size(j) : json_is_array(j) ? json_array_size(j) : 0;
    if (!n || depth > 12)
        return;
    size_t pick = exsa_test_rand_u64(rs) % n;
    int here = exsa_test_rand_u64(rs) % 3 == 0;
    if (json_is_array(j)) {
        if (here)
            json_array_set_new(j, pick, random_value(rs, 0));
        else
            mutate_tree(json_array_get(j, pick), rs, depth + 1);
        return;
    }
    const char *k;
    json_t *v;
    size_t i = 0;
    json_object_foreach(j, k, v)
    {
        if (i++ != pick)
            continue;
        if (here) {
            if (exsa_test_rand_u64(rs) & 1)
                json_object_set_new(j, k, random_value(rs, 0));
            else
                json_object_del(j, k);
        } else {
            mutate_tree(v, rs, depth + 1);
        }
        break;
    }
}

/* Any outcome must be a parseable grammar or an error with a message. */
static void check_outcome(const json_t *s, const schema_case *tc)
{
    exsa_err err = {0};
    char *text = exsa_json_schema_to_gbnf(s, &err);
    if (!text) {
        assert_true(err.code < 0);
        assert_true(err.msg[0] != '\0');
        return;
    }
    gram g;
    if (gram_parse(&g, text) < 0) {
        char *dump = json_dumps(s, JSON_ENCODE_ANY);
        fail_msg("mutated schema %s gave a bad grammar (%s):\n%s", dump, g.err, text);
    }
    for (int i = 0; i < 2 && tc->good[i]; i++)
        (void)gram_match(&g, tc->good[i]);
    gram_free(&g);
    free(text);
}

#ifndef FUZZ_ITERS /* -DFUZZ_ITERS=... for a longer run */
#define FUZZ_ITERS 10000
#endif

static void test_fuzz(void **state)
{
    (void)state;
    uint64_t rs = 12345;
    size_t ncases = sizeof cases / sizeof cases[0];
    int produced = 0, refused = 0;
    for (int it = 0; it < FUZZ_ITERS; it++) {
        const schema_case *tc = &cases[exsa_test_rand_u64(&rs) % ncases];
        if (it & 1) { /* text mutations: truncations, byte flips, inserted bytes */
            size_t len = strlen(tc->schema);
            char *t = malloc(len + 8);
            assert_non_null(t);
            memcpy(t, tc->schema, len + 1);
            int edits = 1 + (int)(exsa_test_rand_u64(&rs) % 4);
            for (int e = 0; e < edits; e++) {
                size_t at = exsa_test_rand_u64(&rs) % (len ? len : 1);
                static const char pool[] = "{}[]\":,0123456789-eE.\\/tfn ";
                switch (exsa_test_rand_u64(&rs) % 3) {
                case 0: t[at] = pool[exsa_test_rand_u64(&rs) % (sizeof pool - 1)]; break;
                case 1: t[at] = (char)(t[at] ^ (1 << (exsa_test_rand_u64(&rs) % 7))); break;
                default: t[at] = '\0'; len = at; break;
                }
            }
            json_t *s = json_loads(t, JSON_DECODE_ANY, NULL);
            free(t);
            if (!s)
                continue;
            check_outcome(s, tc);
            json_decref(s);
        } else {
            json_t *s = json_loads(tc->schema, JSON_DECODE_ANY, NULL);
            assert_non_null(s);
            int edits = 1 + (int)(exsa_test_rand_u64(&rs) % 3);
            for (int e = 0; e < edits; e++)
                mutate_tree(s, &rs, 0);
            exsa_err err = {0};
            char *text = exsa_json_schema_to_gbnf(s, &err);
            if (text)
                produced++;
            else
                refused++;
            free(text);
            check_outcome(s, tc);
            json_decref(s);
        }
    }
    /* the mutations must exercise both outcomes */
    assert_true(produced > 100);
    assert_true(refused > 100);
}

/* ---- patterns against PCRE2 ----
 * Random patterns in the supported subset are converted, and random strings
 * are judged both by the grammar (on their JSON encoding) and by PCRE2 (an
 * independent regex engine; search semantics, '$' only at the very end, as
 * in ECMA-262). The alphabet keeps to characters on which PCRE and ECMA
 * agree ('.' never meets \r or U+2028). */

static const char alpha[] = {'a', 'b', '1', '-', '"', '\\', '\n', ' '};

static void rand_atom(uint64_t *rs, char *o, size_t *n, int depth)
{
    switch (exsa_test_rand_u64(rs) % (depth > 2 ? 6 : 7)) {
    case 0: case 1: { /* literal, escaped when special */
        char ch = alpha[exsa_test_rand_u64(rs) % sizeof alpha];
        if (ch == '\\') {
            o[(*n)++] = '\\';
            o[(*n)++] = '\\';
        } else if (ch == '\n') {
            o[(*n)++] = '\\';
            o[(*n)++] = 'n';
        } else if (ch == '-' && exsa_test_rand_u64(rs) % 2) {
            o[(*n)++] = '\\';
            o[(*n)++] = '-';
        } else {
            o[(*n)++] = ch;
        }
        break;
    }
    case 2: {
        static const char *const cls[] = {"[ab]", "[^a]", "[a-b1]", "[^\\\\\"]", "[\\d-]",
                                          "[^\\s]", "[\\n\"]"};
        const char *c = cls[exsa_test_rand_u64(rs) % (sizeof cls / sizeof *cls)];
        memcpy(o + *n, c, strlen(c));
        *n += strlen(c);
        break;
    }
    case 3: {
        static const char *const esc[] = {"\\d", "\\D", "\\w", "\\W", "\\s", "\\S", "\\x61",
                                          "\\u0022", "\\."};
        const char *c = esc[exsa_test_rand_u64(rs) % (sizeof esc / sizeof *esc)];
        memcpy(o + *n, c, strlen(c));
        *n += strlen(c);
        break;
    }
    case 4: o[(*n)++] = '.'; break;
    case 5: o[(*n)++] = 'a'; break;
    default: { /* group with alternation */
        o[(*n)++] = '(';
        if (exsa_test_rand_u64(rs) % 2) {
            o[(*n)++] = '?';
            o[(*n)++] = ':';
        }
        int alts = 1 + (int)(exsa_test_rand_u64(rs) % 3);
        for (int a = 0; a < alts; a++) {
            if (a)
                o[(*n)++] = '|';
            int len = (int)(exsa_test_rand_u64(rs) % 3);
            for (int i = 0; i < len; i++)
                rand_atom(rs, o, n, depth + 1);
        }
        o[(*n)++] = ')';
        break;
    }
    }
    switch (exsa_test_rand_u64(rs) % 8) {
    case 0: o[(*n)++] = '*'; break;
    case 1: o[(*n)++] = '+'; break;
    case 2: o[(*n)++] = '?'; break;
    case 3: {
        int m = (int)(exsa_test_rand_u64(rs) % 3), x = m + (int)(exsa_test_rand_u64(rs) % 3);
        *n += (size_t)(exsa_test_rand_u64(rs) % 2 ? sprintf(o + *n, "{%d,%d}", m, x)
                                                  : sprintf(o + *n, "{%d}", m));
        break;
    }
    default: break;
    }
}

static void test_patterns_vs_pcre(void **state)
{
    (void)state;
    uint64_t rs = 777;
    int compared = 0, matched = 0;
    for (int it = 0; it < 400; it++) {
        char pat[512];
        size_t n = 0;
        if (exsa_test_rand_u64(&rs) % 2)
            pat[n++] = '^';
        int atoms = 1 + (int)(exsa_test_rand_u64(&rs) % 4);
        for (int a = 0; a < atoms; a++)
            rand_atom(&rs, pat, &n, 0);
        if (exsa_test_rand_u64(&rs) % 2)
            pat[n++] = '$';
        pat[n] = '\0';
        json_t *schema = json_pack("{s:s, s:s}", "type", "string", "pattern", pat);
        assert_non_null(schema);
        exsa_err err = {0};
        char *text = exsa_json_schema_to_gbnf(schema, &err);
        json_decref(schema);
        if (!text)
            fail_msg("pattern /%s/ refused: %s", pat, err.msg);
        gram g;
        load_grammar(&g, text);
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, n, PCRE2_UTF | PCRE2_DOLLAR_ENDONLY | PCRE2_ALT_BSUX, &ec,
                                       &eo, NULL);
        if (!re)
            fail_msg("PCRE2 rejects /%s/", pat);
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
        for (int k = 0; k < 60; k++) {
            char str[16];
            int len = (int)(exsa_test_rand_u64(&rs) % 7);
            for (int i = 0; i < len; i++)
                str[i] = alpha[exsa_test_rand_u64(&rs) % sizeof alpha];
            str[len] = '\0';
            int want = pcre2_match(re, (PCRE2_SPTR)str, (size_t)len, 0, 0, md, NULL) >= 0;
            json_t *js = json_stringn(str, (size_t)len);
            char *doc = json_dumps(js, JSON_ENCODE_ANY);
            json_decref(js);
            int got = gram_match(&g, doc);
            if (got != want)
                fail_msg("/%s/ on %s: grammar %d, PCRE2 %d\n%s", pat, doc, got, want, text);
            free(doc);
            compared++;
            matched += want;
        }
        pcre2_match_data_free(md);
        pcre2_code_free(re);
        gram_free(&g);
        free(text);
    }
    /* both outcomes must be common for the comparison to mean anything */
    assert_true(matched > compared / 10);
    assert_true(matched < compared * 9 / 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_world_schemas), cmocka_unit_test(test_json_object),
        cmocka_unit_test(test_whitespace_bound),   cmocka_unit_test(test_integer_ranges),
        cmocka_unit_test(test_refused_keywords),   cmocka_unit_test(test_malformed_schemas),
        cmocka_unit_test(test_annotations_ignored), cmocka_unit_test(test_patterns_vs_pcre),
        cmocka_unit_test(test_fuzz),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
