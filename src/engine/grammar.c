/* GBNF parser and pushdown matcher (see grammar.h for the design). */
#include "engine/grammar.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/vocab.h"
#include "util/err.h"

#define MAX_NEST 128          /* parentheses */
#define MAX_ELEMS (1u << 20)  /* elements after repetition expansion */
#define MAX_RULES (1u << 18)
#define MAX_REP 100000        /* repetition bound */
#define MAX_TOKTEXT 256
#define MAX_CP 0x10FFFFu

enum { E_END = 0, E_REF, E_CHARS, E_TOKEN };

typedef struct {
    uint8_t type;
    uint8_t neg;    /* E_TOKEN: '!' */
    uint8_t bytext; /* E_TOKEN: a is an index into tok_text, else a token id */
    uint32_t a;     /* rule, charset or token */
} gelem;

typedef struct {
    uint32_t off, n;   /* sorted disjoint [lo, hi] pairs in rng */
    uint32_t ascii[4]; /* code points < 128, for the common case */
} gcset;

struct exsa_grammar {
    gelem *el;
    uint32_t n_el;
    uint32_t *alt_start; /* elem index of each alternative */
    uint32_t *rule_alt;  /* rule r's alternatives: rule_alt[r] .. rule_alt[r+1] */
    uint32_t n_rules, n_alts;
    gcset *cs;
    uint32_t n_cs;
    uint32_t *rng;
    char **tok_text;
    uint32_t n_tok_text;
    uint32_t root;
};

/* ---------------------------------------------------------------- parser */

typedef struct {
    gelem *e;
    uint32_t n, cap;
} seq;

typedef struct {
    char *name; /* NULL for synthetic rules */
    int defined;
    const char *ref_at; /* first reference, for "undefined rule" */
    const char *def_at;
    seq *alts;
    uint32_t n_alts, cap_alts;
} prule;

typedef struct {
    const char *text, *s, *end;
    exsa_err *err;
    int failed;
    prule *rules;
    uint32_t n_rules, cap_rules;
    uint32_t *rng;
    uint32_t n_rng, cap_rng;
    gcset *cs;
    uint32_t n_cs, cap_cs;
    char **tok_text;
    uint32_t n_tok_text, cap_tok_text;
    size_t total;
    int depth;
} parser;

static void position(const parser *p, const char *at, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (const char *c = p->text; c < at && c < p->end; c++) {
        if (*c == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

__attribute__((format(printf, 3, 4))) static int perr(parser *p, const char *at, const char *fmt,
                                                      ...)
{
    if (p->failed)
        return -1;
    p->failed = 1;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    position(p, at, &line, &col);
    exsa_err_set(p->err, EXSA_EINVAL, "grammar: line %d col %d: %s", line, col, msg);
    return -1;
}

static int oom(parser *p)
{
    if (!p->failed) {
        p->failed = 1;
        exsa_err_set(p->err, EXSA_ENOMEM, "grammar: out of memory");
    }
    return -1;
}

/* Grows *buf (elements of size sz) to hold need; 0 or -1. */
static int grow(void **buf, uint32_t *cap, uint32_t need, size_t sz)
{
    if (need <= *cap)
        return 0;
    uint32_t nc = *cap ? *cap : 8;
    while (nc < need) {
        if (nc > UINT32_MAX / 2)
            return -1;
        nc *= 2;
    }
    void *nb = realloc(*buf, (size_t)nc * sz);
    if (!nb)
        return -1;
    *buf = nb;
    *cap = nc;
    return 0;
}

static int seq_push(parser *p, seq *q, gelem e)
{
    if (++p->total > MAX_ELEMS)
        return perr(p, p->s, "grammar too large (over %u elements after expanding repetitions)",
                    MAX_ELEMS);
    if (grow((void **)&q->e, &q->cap, q->n + 1, sizeof(gelem)))
        return oom(p);
    q->e[q->n++] = e;
    return 0;
}

static int new_rule(parser *p, const char *name, size_t nlen, const char *at)
{
    if (p->n_rules >= MAX_RULES)
        return perr(p, at, "too many rules (over %u)", MAX_RULES);
    if (grow((void **)&p->rules, &p->cap_rules, p->n_rules + 1, sizeof(prule)))
        return oom(p);
    prule *r = &p->rules[p->n_rules];
    memset(r, 0, sizeof *r);
    if (name) {
        r->name = malloc(nlen + 1);
        if (!r->name)
            return oom(p);
        memcpy(r->name, name, nlen);
        r->name[nlen] = 0;
    }
    r->ref_at = at;
    return (int)p->n_rules++;
}

static int find_rule(parser *p, const char *name, size_t nlen, const char *at)
{
    for (uint32_t i = 0; i < p->n_rules; i++) {
        const char *n = p->rules[i].name;
        if (n && strlen(n) == nlen && memcmp(n, name, nlen) == 0)
            return (int)i;
    }
    return new_rule(p, name, nlen, at);
}

/* Takes ownership of q's elements. */
static int rule_add_alt(parser *p, uint32_t r, seq *q)
{
    prule *pr = &p->rules[r];
    if (grow((void **)&pr->alts, &pr->cap_alts, pr->n_alts + 1, sizeof(seq))) {
        free(q->e);
        return oom(p);
    }
    pr->alts[pr->n_alts++] = *q;
    memset(q, 0, sizeof *q);
    return 0;
}

static int is_name_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

static void skip_space(parser *p, int newline_ok)
{
    while (p->s < p->end) {
        char c = *p->s;
        if (c == ' ' || c == '\t' || c == '\r') {
            p->s++;
        } else if (c == '#') {
            while (p->s < p->end && *p->s != '\n')
                p->s++;
        } else if (c == '\n' && newline_ok) {
            p->s++;
        } else {
            break;
        }
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One UTF-8 code point at p->s; strict (no overlongs, surrogates). */
static int decode_utf8(const char *s, const char *end, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t avail = (size_t)(end - s);
    if (avail == 0)
        return -1;
    unsigned c = u[0];
    int n;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        n = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, v = c & 0x07, min = 0x10000;
    } else {
        return -1;
    }
    if (avail < (size_t)n)
        return -1;
    for (int i = 1; i < n; i++) {
        if ((u[i] & 0xC0) != 0x80)
            return -1;
        v = (v << 6) | (u[i] & 0x3F);
    }
    if (v < min || v > MAX_CP || (v >= 0xD800 && v <= 0xDFFF))
        return -1;
    *cp = v;
    return n;
}

/* A character of a literal or class: an escape or one UTF-8 code point. */
static int parse_char(parser *p, uint32_t *cp)
{
    const char *at = p->s;
    if (*p->s == '\\') {
        if (p->s + 1 >= p->end)
            return perr(p, at, "escape '\\' at end of input");
        char c = p->s[1];
        p->s += 2;
        int nhex = 0;
        switch (c) {
        case 'n': *cp = '\n'; return 0;
        case 't': *cp = '\t'; return 0;
        case 'r': *cp = '\r'; return 0;
        case '\\': case '"': case '\'': case '[': case ']': case '-': case '^': case '/':
            *cp = (unsigned char)c;
            return 0;
        case 'x': nhex = 2; break;
        case 'u': nhex = 4; break;
        case 'U': nhex = 8; break;
        default:
            if ((unsigned char)c >= 0x20 && (unsigned char)c < 0x7F)
                return perr(p, at, "bad escape '\\%c'", c);
            return perr(p, at, "bad escape '\\' followed by byte 0x%02x", (unsigned char)c);
        }
        uint32_t v = 0;
        for (int i = 0; i < nhex; i++) {
            int h = p->s < p->end ? hexval(*p->s) : -1;
            if (h < 0)
                return perr(p, at, "bad escape '\\%c': expected %d hex digits", c, nhex);
            v = (v << 4) | (uint32_t)h;
            p->s++;
        }
        if (v > MAX_CP)
            return perr(p, at, "escape '\\%c' gives code point 0x%X beyond U+10FFFF", c, v);
        *cp = v;
        return 0;
    }
    int n = decode_utf8(p->s, p->end, cp);
    if (n < 0)
        return perr(p, at, "invalid UTF-8 byte 0x%02x", (unsigned char)*p->s);
    p->s += n;
    return 0;
}

static int cmp_range(const void *a, const void *b)
{
    const uint32_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0;
}

/* Adds the charset made of ranges r[0..2n) (sorted, merged, optionally
 * complemented here); returns its index. */
static int add_charset(parser *p, uint32_t *r, uint32_t n, int neg, const char *at)
{
    qsort(r, n, 2 * sizeof(uint32_t), cmp_range);
    uint32_t m = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (m && r[2 * i] <= r[2 * (m - 1) + 1] + 1) {
            if (r[2 * i + 1] > r[2 * (m - 1) + 1])
                r[2 * (m - 1) + 1] = r[2 * i + 1];
        } else {
            r[2 * m] = r[2 * i];
            r[2 * m + 1] = r[2 * i + 1];
            m++;
        }
    }
    uint32_t off = p->n_rng, cnt = 0;
    if (grow((void **)&p->rng, &p->cap_rng, p->n_rng + 2 * (m + 1), sizeof(uint32_t)))
        return oom(p);
    if (!neg) {
        memcpy(p->rng + off, r, 2 * m * sizeof(uint32_t));
        cnt = m;
    } else {
        uint32_t next = 0;
        for (uint32_t i = 0; i < m; i++) {
            if (r[2 * i] > next) {
                p->rng[off + 2 * cnt] = next;
                p->rng[off + 2 * cnt + 1] = r[2 * i] - 1;
                cnt++;
            }
            next = r[2 * i + 1] + 1;
        }
        if (next <= MAX_CP) {
            p->rng[off + 2 * cnt] = next;
            p->rng[off + 2 * cnt + 1] = MAX_CP;
            cnt++;
        }
    }
    if (cnt == 0)
        return perr(p, at, "character class matches nothing");
    p->n_rng += 2 * cnt;
    if (grow((void **)&p->cs, &p->cap_cs, p->n_cs + 1, sizeof(gcset)))
        return oom(p);
    gcset *c = &p->cs[p->n_cs];
    memset(c, 0, sizeof *c);
    c->off = off;
    c->n = cnt;
    for (uint32_t i = 0; i < cnt; i++)
        for (uint32_t v = p->rng[off + 2 * i]; v <= p->rng[off + 2 * i + 1] && v < 128; v++)
            c->ascii[v >> 5] |= 1u << (v & 31);
    return (int)p->n_cs++;
}

static int push_chars(parser *p, seq *q, int cs)
{
    gelem e = {E_CHARS, 0, 0, (uint32_t)cs};
    return seq_push(p, q, e);
}

static int parse_literal(parser *p, seq *q)
{
    const char *open = p->s++;
    while (p->s < p->end && *p->s != '"') {
        if (*p->s == '\n')
            break;
        uint32_t cp;
        if (parse_char(p, &cp))
            return -1;
        uint32_t r[2] = {cp, cp};
        int cs = add_charset(p, r, 1, 0, open);
        if (cs < 0 || push_chars(p, q, cs))
            return -1;
    }
    if (p->s >= p->end || *p->s != '"')
        return perr(p, open, "unterminated string literal");
    p->s++;
    return 0;
}

static int parse_class(parser *p, seq *q)
{
    const char *open = p->s++;
    int neg = 0;
    if (p->s < p->end && *p->s == '^') {
        neg = 1;
        p->s++;
    }
    uint32_t *r = NULL, n = 0, cap = 0;
    while (p->s < p->end && *p->s != ']' && *p->s != '\n') {
        uint32_t lo, hi;
        const char *at = p->s;
        if (parse_char(p, &lo))
            goto fail;
        hi = lo;
        if (p->s + 1 < p->end && *p->s == '-' && p->s[1] != ']') {
            p->s++;
            if (parse_char(p, &hi))
                goto fail;
            if (hi < lo) {
                perr(p, at, "bad range in character class: end U+%04X before start U+%04X", hi,
                     lo);
                goto fail;
            }
        }
        if (grow((void **)&r, &cap, 2 * (n + 1), sizeof(uint32_t))) {
            oom(p);
            goto fail;
        }
        r[2 * n] = lo;
        r[2 * n + 1] = hi;
        n++;
    }
    if (p->s >= p->end || *p->s != ']') {
        perr(p, open, "unterminated character class '['");
        goto fail;
    }
    p->s++;
    if (n == 0) {
        perr(p, open, "empty character class");
        goto fail;
    }
    int cs = add_charset(p, r, n, neg, open);
    free(r);
    return cs < 0 ? -1 : push_chars(p, q, cs);
fail:
    free(r);
    return -1;
}

static int parse_token(parser *p, seq *q)
{
    const char *at = p->s;
    gelem e = {E_TOKEN, 0, 0, 0};
    if (*p->s == '!') {
        e.neg = 1;
        p->s++;
    }
    if (p->s >= p->end || *p->s != '<')
        return perr(p, at, "expected '<' after '!' (negated token)");
    if (p->s + 1 < p->end && p->s[1] == '[') {
        p->s += 2;
        uint64_t id = 0;
        int nd = 0;
        while (p->s < p->end && *p->s >= '0' && *p->s <= '9') {
            id = id * 10 + (uint64_t)(*p->s - '0');
            if (id > INT32_MAX)
                return perr(p, at, "token id too large");
            p->s++;
            nd++;
        }
        if (!nd || p->s + 1 >= p->end || p->s[0] != ']' || p->s[1] != '>')
            return perr(p, at, "bad token id: expected <[digits]>");
        p->s += 2;
        e.a = (uint32_t)id;
        return seq_push(p, q, e);
    }
    const char *start = p->s;
    p->s++;
    while (p->s < p->end && *p->s != '>' && *p->s != '\n' && *p->s != ' ')
        p->s++;
    if (p->s >= p->end || *p->s != '>')
        return perr(p, at, "unterminated token '<...>'");
    p->s++;
    size_t len = (size_t)(p->s - start);
    if (len <= 2 || len > MAX_TOKTEXT)
        return perr(p, at, "token text must be 1 to %d characters", MAX_TOKTEXT - 2);
    if (grow((void **)&p->tok_text, &p->cap_tok_text, p->n_tok_text + 1, sizeof(char *)))
        return oom(p);
    char *t = malloc(len + 1);
    if (!t)
        return oom(p);
    memcpy(t, start, len);
    t[len] = 0;
    e.bytext = 1;
    e.a = p->n_tok_text;
    p->tok_text[p->n_tok_text++] = t;
    return seq_push(p, q, e);
}

static int parse_alternates(parser *p, uint32_t rule, int nested);

/* Replaces q[start..n) by its repetition {min, max} (max < 0: unbounded),
 * through new rules R ::= S R | "" (unbounded) or a chain of optional
 * copies, so that no stack grows with the count. */
static int repeat(parser *p, seq *q, uint32_t start, long min, long max, const char *at)
{
    uint32_t sn = q->n - start;
    if (sn == 0)
        return 0;
    gelem *s = malloc(sn * sizeof(gelem));
    if (!s)
        return oom(p);
    memcpy(s, q->e + start, sn * sizeof(gelem));
    q->n = start;
    p->total -= sn;
    int rc = 0;
    for (long i = 0; i < min && !rc; i++)
        for (uint32_t j = 0; j < sn && !rc; j++)
            rc = seq_push(p, q, s[j]);
    long opt = max < 0 ? 1 : max - min;
    int prev = -1;
    for (long k = 0; k < opt && !rc; k++) {
        int r = new_rule(p, NULL, 0, at);
        if (r < 0) {
            rc = -1;
            break;
        }
        p->rules[r].defined = 1;
        p->rules[r].def_at = at;
        seq a = {0}, empty = {0};
        for (uint32_t j = 0; j < sn && !rc; j++)
            rc = seq_push(p, &a, s[j]);
        if (!rc && (max < 0 || prev >= 0)) {
            gelem ref = {E_REF, 0, 0, (uint32_t)(max < 0 ? r : prev)};
            rc = seq_push(p, &a, ref);
        }
        if (!rc)
            rc = rule_add_alt(p, (uint32_t)r, &a);
        else
            free(a.e);
        if (!rc)
            rc = rule_add_alt(p, (uint32_t)r, &empty);
        prev = r;
    }
    if (!rc && prev >= 0) {
        gelem ref = {E_REF, 0, 0, (uint32_t)prev};
        rc = seq_push(p, q, ref);
    }
    free(s);
    return rc;
}

static int parse_count(parser *p, long *v)
{
    const char *at = p->s;
    long x = 0;
    int nd = 0;
    while (p->s < p->end && *p->s >= '0' && *p->s <= '9') {
        x = x * 10 + (*p->s - '0');
        if (x > MAX_REP)
            return perr(p, at, "repetition count too large (limit %d)", MAX_REP);
        p->s++;
        nd++;
    }
    if (!nd)
        return perr(p, at, "expected a number in repetition '{m,n}'");
    *v = x;
    return 0;
}

static int parse_repetition(parser *p, seq *q, int64_t last)
{
    const char *at = p->s;
    char c = *p->s;
    if (last < 0)
        return perr(p, at, "'%c' has nothing to repeat", c);
    long min = 0, max = -1;
    p->s++;
    if (c == '+') {
        min = 1;
    } else if (c == '?') {
        max = 1;
    } else if (c == '{') {
        skip_space(p, 0);
        if (parse_count(p, &min))
            return -1;
        skip_space(p, 0);
        if (p->s < p->end && *p->s == ',') {
            p->s++;
            skip_space(p, 0);
            if (p->s < p->end && *p->s != '}') {
                if (parse_count(p, &max))
                    return -1;
                skip_space(p, 0);
            }
        } else {
            max = min;
        }
        if (p->s >= p->end || *p->s != '}')
            return perr(p, at, "unterminated repetition '{': expected '}'");
        p->s++;
        if (max >= 0 && max < min)
            return perr(p, at, "bad repetition {%ld,%ld}: max below min", min, max);
    }
    return repeat(p, q, (uint32_t)last, min, max, at);
}

static int parse_sequence(parser *p, seq *q, int nested)
{
    int64_t last = -1;
    for (;;) {
        skip_space(p, nested);
        if (p->failed)
            return -1;
        if (p->s >= p->end)
            return 0;
        char c = *p->s;
        uint32_t start = q->n;
        int rc;
        if (c == '"') {
            rc = parse_literal(p, q);
        } else if (c == '[') {
            rc = parse_class(p, q);
        } else if (c == '.') {
            uint32_t r[2] = {0, MAX_CP};
            p->s++;
            int cs = add_charset(p, r, 1, 0, p->s - 1);
            rc = cs < 0 ? -1 : push_chars(p, q, cs);
        } else if (c == '(') {
            const char *open = p->s;
            if (++p->depth > MAX_NEST)
                return perr(p, open, "parentheses nested deeper than %d", MAX_NEST);
            p->s++;
            int r = new_rule(p, NULL, 0, open);
            if (r < 0)
                return -1;
            p->rules[r].defined = 1;
            p->rules[r].def_at = open;
            skip_space(p, 1);
            if (parse_alternates(p, (uint32_t)r, 1))
                return -1;
            skip_space(p, 1);
            if (p->s >= p->end || *p->s != ')') {
                if (p->s >= p->end)
                    return perr(p, open, "unbalanced '(': no matching ')'");
                return perr(p, p->s, "expected ')' to close '(', found '%c'", *p->s);
            }
            p->s++;
            p->depth--;
            gelem ref = {E_REF, 0, 0, (uint32_t)r};
            rc = seq_push(p, q, ref);
        } else if (is_name_char((unsigned char)c)) {
            const char *n0 = p->s;
            while (p->s < p->end && is_name_char((unsigned char)*p->s))
                p->s++;
            int r = find_rule(p, n0, (size_t)(p->s - n0), n0);
            if (r < 0)
                return -1;
            gelem ref = {E_REF, 0, 0, (uint32_t)r};
            rc = seq_push(p, q, ref);
        } else if (c == '<' || c == '!') {
            rc = parse_token(p, q);
        } else if (c == '*' || c == '+' || c == '?' || c == '{') {
            if (parse_repetition(p, q, last))
                return -1;
            continue;
        } else if (c == ')' && !nested) {
            return perr(p, p->s, "unbalanced ')': no '(' to close");
        } else {
            return 0; /* '|', ')', newline or a stray character: the caller decides */
        }
        if (rc)
            return -1;
        last = start;
    }
}

static int parse_alternates(parser *p, uint32_t rule, int nested)
{
    for (;;) {
        seq q = {0};
        if (parse_sequence(p, &q, nested) || rule_add_alt(p, rule, &q)) {
            free(q.e);
            return -1;
        }
        skip_space(p, nested);
        if (p->s < p->end && *p->s == '|') {
            p->s++;
            skip_space(p, 1);
            continue;
        }
        if (!nested && p->s < p->end && *p->s == '\n') {
            /* A line that starts with '|' continues the rule. */
            const char *save = p->s;
            skip_space(p, 1);
            if (p->s < p->end && *p->s == '|') {
                p->s++;
                skip_space(p, 1);
                continue;
            }
            p->s = save;
        }
        return 0;
    }
}

static int parse_rule(parser *p)
{
    const char *n0 = p->s;
    while (p->s < p->end && is_name_char((unsigned char)*p->s))
        p->s++;
    if (p->s == n0) {
        if ((unsigned char)*p->s >= 0x20 && (unsigned char)*p->s < 0x7F)
            return perr(p, n0, "expected a rule name, found '%c'", *p->s);
        return perr(p, n0, "expected a rule name, found byte 0x%02x", (unsigned char)*p->s);
    }
    size_t nlen = (size_t)(p->s - n0);
    skip_space(p, 0);
    if ((size_t)(p->end - p->s) < 3 || memcmp(p->s, "::=", 3) != 0)
        return perr(p, p->s, "expected '::=' after rule name '%.*s'", (int)nlen, n0);
    p->s += 3;
    int r = find_rule(p, n0, nlen, n0);
    if (r < 0)
        return -1;
    if (p->rules[r].defined)
        return perr(p, n0, "rule '%.*s' defined twice", (int)nlen, n0);
    p->rules[r].defined = 1;
    p->rules[r].def_at = n0;
    skip_space(p, 1);
    if (parse_alternates(p, (uint32_t)r, 0))
        return -1;
    skip_space(p, 0);
    if (p->s < p->end && *p->s != '\n') {
        if (*p->s == ')')
            return perr(p, p->s, "unbalanced ')': no '(' to close");
        if ((unsigned char)*p->s >= 0x20 && (unsigned char)*p->s < 0x7F)
            return perr(p, p->s, "unexpected '%c' in rule '%.*s'", *p->s, (int)nlen, n0);
        return perr(p, p->s, "unexpected byte 0x%02x in rule '%.*s'", (unsigned char)*p->s,
                    (int)nlen, n0);
    }
    return 0;
}

static void parser_free(parser *p)
{
    for (uint32_t i = 0; i < p->n_rules; i++) {
        for (uint32_t j = 0; j < p->rules[i].n_alts; j++)
            free(p->rules[i].alts[j].e);
        free(p->rules[i].alts);
        free(p->rules[i].name);
    }
    free(p->rules);
    free(p->rng);
    free(p->cs);
    for (uint32_t i = 0; i < p->n_tok_text; i++)
        free(p->tok_text[i]);
    free(p->tok_text);
}

/* The user rule a (possibly synthetic) rule belongs to, for messages. */
static const char *rule_label(const parser *p, uint32_t r)
{
    if (p->rules[r].name)
        return p->rules[r].name;
    /* Synthetic rules are made while parsing their parent's text: the last
     * named rule defined before that position. */
    const char *best = "?", *at = p->rules[r].def_at, *bat = NULL;
    for (uint32_t i = 0; i < p->n_rules; i++)
        if (p->rules[i].name && p->rules[i].def_at && p->rules[i].def_at <= at &&
            (!bat || p->rules[i].def_at > bat)) {
            bat = p->rules[i].def_at;
            best = p->rules[i].name;
        }
    return best;
}

/* Left recursion: a rule reaching itself before any terminal, through an
 * edge that is not in tail position (a tail reference reuses the caller's
 * frame, so such cycles do not grow a stack and the matcher's closure stops
 * them with its visited set). Tarjan's SCCs over the "may start with"
 * graph; an edge inside one SCC that is not a tail edge is the error. */
static int check_left_recursion(parser *p)
{
    uint32_t n = p->n_rules;
    uint8_t *nullable = calloc(n, 1);
    uint32_t *eoff = calloc((size_t)n + 1, sizeof(uint32_t));
    uint32_t *edst = NULL;
    uint8_t *etail = NULL;
    uint32_t *idx = NULL, *low = NULL, *stk = NULL, *cstk = NULL, *cpos = NULL, *comp = NULL;
    uint8_t *onstk = NULL;
    int rc = -1;
    if (!nullable || !eoff)
        goto oomx;
    for (int changed = 1; changed;) {
        changed = 0;
        for (uint32_t r = 0; r < n; r++) {
            if (nullable[r])
                continue;
            for (uint32_t a = 0; a < p->rules[r].n_alts && !nullable[r]; a++) {
                seq *q = &p->rules[r].alts[a];
                uint32_t j = 0;
                while (j < q->n && q->e[j].type == E_REF && nullable[q->e[j].a])
                    j++;
                if (j == q->n) {
                    nullable[r] = 1;
                    changed = 1;
                }
            }
        }
    }
    uint32_t ne = 0, ce = 0;
    for (int pass = 0; pass < 2; pass++) {
        ne = 0;
        for (uint32_t r = 0; r < n; r++) {
            if (pass)
                eoff[r] = ne;
            for (uint32_t a = 0; a < p->rules[r].n_alts; a++) {
                seq *q = &p->rules[r].alts[a];
                for (uint32_t j = 0; j < q->n && q->e[j].type == E_REF; j++) {
                    if (pass) {
                        edst[ne] = q->e[j].a;
                        etail[ne] = j + 1 == q->n;
                    }
                    ne++;
                    if (!nullable[q->e[j].a])
                        break;
                }
            }
        }
        if (pass)
            eoff[n] = ne;
        else {
            ce = ne ? ne : 1;
            edst = malloc(ce * sizeof(uint32_t));
            etail = malloc(ce);
            if (!edst || !etail)
                goto oomx;
        }
    }
    idx = malloc(n * sizeof(uint32_t));
    low = malloc(n * sizeof(uint32_t));
    stk = malloc(n * sizeof(uint32_t));
    cstk = malloc(n * sizeof(uint32_t));
    cpos = malloc(n * sizeof(uint32_t));
    comp = malloc(n * sizeof(uint32_t));
    onstk = calloc(n, 1);
    if (!idx || !low || !stk || !cstk || !cpos || !comp || !onstk)
        goto oomx;
    for (uint32_t i = 0; i < n; i++)
        idx[i] = UINT32_MAX;
    uint32_t counter = 0, sp = 0, csp = 0, ncomp = 0;
    for (uint32_t s0 = 0; s0 < n; s0++) {
        if (idx[s0] != UINT32_MAX)
            continue;
        cstk[csp] = s0;
        cpos[csp++] = eoff[s0];
        idx[s0] = low[s0] = counter++;
        stk[sp++] = s0;
        onstk[s0] = 1;
        while (csp) {
            uint32_t v = cstk[csp - 1];
            if (cpos[csp - 1] < eoff[v + 1]) {
                uint32_t w = edst[cpos[csp - 1]++];
                if (idx[w] == UINT32_MAX) {
                    idx[w] = low[w] = counter++;
                    stk[sp++] = w;
                    onstk[w] = 1;
                    cstk[csp] = w;
                    cpos[csp++] = eoff[w];
                } else if (onstk[w] && idx[w] < low[v]) {
                    low[v] = idx[w];
                }
                continue;
            }
            if (low[v] == idx[v]) {
                uint32_t w;
                do {
                    w = stk[--sp];
                    onstk[w] = 0;
                    comp[w] = ncomp;
                } while (w != v);
                ncomp++;
            }
            csp--;
            if (csp) {
                uint32_t u = cstk[csp - 1];
                if (low[v] < low[u])
                    low[u] = low[v];
            }
        }
    }
    rc = 0;
    for (uint32_t r = 0; r < n && !rc; r++)
        for (uint32_t e = eoff[r]; e < eoff[r + 1]; e++)
            if (!etail[e] && comp[edst[e]] == comp[r]) {
                perr(p, p->rules[r].def_at ? p->rules[r].def_at : p->text,
                     "left recursion: rule '%s' can reach itself through '%s' without "
                     "consuming input",
                     rule_label(p, r), rule_label(p, edst[e]));
                rc = -1;
                break;
            }
    goto done;
oomx:
    oom(p);
done:
    free(nullable);
    free(eoff);
    free(edst);
    free(etail);
    free(idx);
    free(low);
    free(stk);
    free(cstk);
    free(cpos);
    free(comp);
    free(onstk);
    return rc;
}

void exsa_grammar_free(exsa_grammar *g)
{
    if (!g)
        return;
    free(g->el);
    free(g->alt_start);
    free(g->rule_alt);
    free(g->cs);
    free(g->rng);
    for (uint32_t i = 0; i < g->n_tok_text; i++)
        free(g->tok_text[i]);
    free(g->tok_text);
    free(g);
}

int exsa_grammar_n_rules(const exsa_grammar *g)
{
    return g ? (int)g->n_rules : 0;
}

exsa_grammar *exsa_grammar_parse(const char *text, size_t len, const char *root, exsa_err *err)
{
    if (!text && len) {
        exsa_err_set(err, EXSA_EINVAL, "grammar: NULL text");
        return NULL;
    }
    if (!root)
        root = "root";
    parser P = {0}, *p = &P;
    p->text = p->s = text ? text : "";
    p->end = p->s + len;
    p->err = err;
    exsa_grammar *g = NULL;
    skip_space(p, 1);
    while (p->s < p->end && !p->failed) {
        if (parse_rule(p))
            break;
        skip_space(p, 1);
    }
    if (p->failed)
        goto fail;
    uint32_t n_named = 0;
    for (uint32_t i = 0; i < p->n_rules; i++)
        n_named += p->rules[i].defined && p->rules[i].name;
    if (n_named == 0) {
        exsa_err_set(err, EXSA_EINVAL, "grammar: empty grammar (no rules)");
        goto fail;
    }
    for (uint32_t i = 0; i < p->n_rules; i++)
        if (!p->rules[i].defined) {
            perr(p, p->rules[i].ref_at, "undefined rule '%s'", p->rules[i].name);
            goto fail;
        }
    int root_id = -1;
    for (uint32_t i = 0; i < p->n_rules; i++)
        if (p->rules[i].name && strcmp(p->rules[i].name, root) == 0)
            root_id = (int)i;
    if (root_id < 0) {
        exsa_err_set(err, EXSA_EINVAL, "grammar: missing root rule '%s'", root);
        goto fail;
    }
    if (check_left_recursion(p))
        goto fail;

    /* Flatten: each rule's alternatives, each ended by E_END. */
    g = calloc(1, sizeof *g);
    if (!g)
        goto nomem;
    g->n_rules = p->n_rules;
    size_t nel = 0, nalt = 0;
    for (uint32_t i = 0; i < p->n_rules; i++) {
        nalt += p->rules[i].n_alts;
        for (uint32_t j = 0; j < p->rules[i].n_alts; j++)
            nel += p->rules[i].alts[j].n + 1;
    }
    g->el = malloc((nel ? nel : 1) * sizeof(gelem));
    g->alt_start = malloc((nalt ? nalt : 1) * sizeof(uint32_t));
    g->rule_alt = malloc(((size_t)p->n_rules + 1) * sizeof(uint32_t));
    if (!g->el || !g->alt_start || !g->rule_alt)
        goto nomem;
    uint32_t ei = 0, ai = 0;
    for (uint32_t i = 0; i < p->n_rules; i++) {
        g->rule_alt[i] = ai;
        for (uint32_t j = 0; j < p->rules[i].n_alts; j++) {
            seq *q = &p->rules[i].alts[j];
            g->alt_start[ai++] = ei;
            if (q->n)
                memcpy(g->el + ei, q->e, q->n * sizeof(gelem));
            ei += q->n;
            gelem end = {E_END, 0, 0, 0};
            g->el[ei++] = end;
        }
    }
    g->rule_alt[p->n_rules] = ai;
    g->n_el = ei;
    g->n_alts = ai;
    g->root = (uint32_t)root_id;
    g->cs = p->cs;
    g->n_cs = p->n_cs;
    g->rng = p->rng;
    g->tok_text = p->tok_text;
    g->n_tok_text = p->n_tok_text;
    p->cs = NULL;
    p->rng = NULL;
    p->tok_text = NULL;
    p->n_tok_text = 0;
    parser_free(p);
    return g;
nomem:
    oom(p);
fail:
    exsa_grammar_free(g);
    parser_free(p);
    return NULL;
}

/* ------------------------------------------------------------ vocabulary */

#define MAX_TOKEN_BYTES 1024 /* longer tokens are never allowed by bytes */

struct exsa_grammar_vocab {
    int32_t n;
    uint8_t *eog;
    int32_t *eog_ids;
    int32_t n_eog;
    char *bytes; /* token i's bytes: bytes[boff[i] .. boff[i+1]) */
    size_t *boff;
    char *text; /* token i's text with specials rendered */
    size_t *toff;
    int32_t *by_text; /* ids sorted by text, for `<|name|>` */
    /* Byte trie of all token byte strings, nodes in depth-first order:
     * node i's subtree is i .. nend[i]-1; the tokens spelled by the path to
     * i are tok[ntok[i] .. ntok[i+1]). The root is implicit. */
    uint32_t n_nodes;
    uint8_t *nb;
    uint32_t *nend;
    uint16_t *ndep;
    uint32_t *ntok;
    int32_t *tok;
    int max_depth;
    /* The same nodes packed for the mask walk: one 8-byte load per node. */
    struct tnode {
        uint8_t b;
        uint8_t multi; /* more than one token ends here: see ntok */
        uint16_t dep;
        int32_t tok;   /* the token ending here, or -1 */
    } *node;
};

void exsa_grammar_vocab_free(exsa_grammar_vocab *gv)
{
    if (!gv)
        return;
    free(gv->eog);
    free(gv->eog_ids);
    free(gv->bytes);
    free(gv->boff);
    free(gv->text);
    free(gv->toff);
    free(gv->by_text);
    free(gv->nb);
    free(gv->nend);
    free(gv->ndep);
    free(gv->ntok);
    free(gv->tok);
    free(gv->node);
    free(gv);
}

int32_t exsa_grammar_vocab_n_tokens(const exsa_grammar_vocab *gv)
{
    return gv ? gv->n : 0;
}

typedef struct {
    const unsigned char *p;
    size_t len;
    int32_t id;
} tokkey;

static int cmp_tokkey(const void *a, const void *b)
{
    const tokkey *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = n ? memcmp(x->p, y->p, n) : 0;
    if (c)
        return c;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Builds the trie and text index once bytes/text/eog are filled. */
static int gv_index(exsa_grammar_vocab *gv, exsa_err *err)
{
    int32_t n = gv->n;
    tokkey *k = malloc((size_t)(n ? n : 1) * sizeof(tokkey));
    gv->by_text = malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!k || !gv->by_text)
        goto nomem;
    /* Text index. */
    for (int32_t i = 0; i < n; i++) {
        k[i].p = (const unsigned char *)gv->text + gv->toff[i];
        k[i].len = gv->toff[i + 1] - gv->toff[i];
        k[i].id = i;
    }
    qsort(k, (size_t)n, sizeof(tokkey), cmp_tokkey);
    for (int32_t i = 0; i < n; i++)
        gv->by_text[i] = k[i].id;
    /* Trie over the byte strings of tokens that can be produced as text. */
    int32_t m = 0;
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t len = gv->boff[i + 1] - gv->boff[i];
        if (gv->eog[i] || len == 0 || len > MAX_TOKEN_BYTES)
            continue;
        k[m].p = (const unsigned char *)gv->bytes + gv->boff[i];
        k[m].len = len;
        k[m].id = i;
        total += len;
        m++;
    }
    qsort(k, (size_t)m, sizeof(tokkey), cmp_tokkey);
    size_t cap = total ? total : 1;
    gv->nb = malloc(cap);
    gv->nend = malloc(cap * sizeof(uint32_t));
    gv->ndep = malloc(cap * sizeof(uint16_t));
    gv->ntok = calloc(cap + 1, sizeof(uint32_t));
    gv->tok = malloc((size_t)(m ? m : 1) * sizeof(int32_t));
    uint32_t *tnode = malloc((size_t)(m ? m : 1) * sizeof(uint32_t));
    if (!gv->nb || !gv->nend || !gv->ndep || !gv->ntok || !gv->tok || !tnode) {
        free(tnode);
        goto nomem;
    }
    uint32_t path[MAX_TOKEN_BYTES + 1];
    size_t depth = 0;
    uint32_t nn = 0;
    for (int32_t t = 0; t < m; t++) {
        size_t l = 0;
        if (t) {
            size_t lim = k[t - 1].len < k[t].len ? k[t - 1].len : k[t].len;
            while (l < lim && k[t - 1].p[l] == k[t].p[l])
                l++;
        }
        for (size_t d = depth; d > l; d--)
            gv->nend[path[d]] = nn;
        for (size_t d = l + 1; d <= k[t].len; d++) {
            gv->nb[nn] = k[t].p[d - 1];
            gv->ndep[nn] = (uint16_t)d;
            path[d] = nn++;
        }
        depth = k[t].len;
        if ((int)depth > gv->max_depth)
            gv->max_depth = (int)depth;
        tnode[t] = path[depth];
        gv->tok[t] = k[t].id;
    }
    for (size_t d = depth; d > 0; d--)
        gv->nend[path[d]] = nn;
    gv->n_nodes = nn;
    /* Tokens come in node order (a prefix sorts before its extensions). */
    for (int32_t t = 0; t < m; t++)
        gv->ntok[tnode[t] + 1]++;
    for (uint32_t i = 0; i < nn; i++)
        gv->ntok[i + 1] += gv->ntok[i];
    free(tnode);
    gv->node = malloc((size_t)(nn ? nn : 1) * sizeof(struct tnode));
    if (!gv->node) {
        free(k);
        return exsa_err_set(err, EXSA_ENOMEM, "grammar vocab: out of memory");
    }
    for (uint32_t i = 0; i < nn; i++) {
        uint32_t c = gv->ntok[i + 1] - gv->ntok[i];
        gv->node[i].b = gv->nb[i];
        gv->node[i].dep = gv->ndep[i];
        gv->node[i].multi = c > 1;
        gv->node[i].tok = c ? gv->tok[gv->ntok[i]] : -1;
    }
    free(k);
    return 0;
nomem:
    free(k);
    return exsa_err_set(err, EXSA_ENOMEM, "grammar vocab: out of memory");
}

static exsa_grammar_vocab *gv_alloc(int32_t n, exsa_err *err)
{
    exsa_grammar_vocab *gv = calloc(1, sizeof *gv);
    if (gv) {
        gv->n = n;
        gv->eog = calloc((size_t)n + 1, 1);
        gv->boff = calloc((size_t)n + 1, sizeof(size_t));
        gv->toff = calloc((size_t)n + 1, sizeof(size_t));
        gv->eog_ids = malloc(((size_t)n + 1) * sizeof(int32_t));
    }
    if (!gv || !gv->eog || !gv->boff || !gv->toff || !gv->eog_ids) {
        exsa_grammar_vocab_free(gv);
        exsa_err_set(err, EXSA_ENOMEM, "grammar vocab: out of memory");
        return NULL;
    }
    return gv;
}

static void gv_eog_list(exsa_grammar_vocab *gv)
{
    gv->n_eog = 0;
    for (int32_t i = 0; i < gv->n; i++)
        if (gv->eog[i])
            gv->eog_ids[gv->n_eog++] = i;
}

exsa_grammar_vocab *exsa_grammar_vocab_from_strings(const char *const *tokens, const size_t *lens,
                                                    int n, const int32_t *eog, int n_eog,
                                                    exsa_err *err)
{
    if (n <= 0 || !tokens || !lens || (n_eog > 0 && !eog) || n_eog < 0) {
        exsa_err_set(err, EXSA_EINVAL, "grammar vocab: bad arguments (n=%d, n_eog=%d)", n,
                     n_eog);
        return NULL;
    }
    exsa_grammar_vocab *gv = gv_alloc(n, err);
    if (!gv)
        return NULL;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (!tokens[i] && lens[i]) {
            exsa_err_set(err, EXSA_EINVAL, "grammar vocab: token %d is NULL", i);
            goto fail;
        }
        total += lens[i];
    }
    gv->bytes = malloc(total ? total : 1);
    gv->text = malloc(total ? total : 1);
    if (!gv->bytes || !gv->text) {
        exsa_err_set(err, EXSA_ENOMEM, "grammar vocab: out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        if (lens[i])
            memcpy(gv->bytes + gv->boff[i], tokens[i], lens[i]);
        gv->boff[i + 1] = gv->boff[i] + lens[i];
    }
    memcpy(gv->text, gv->bytes, total);
    memcpy(gv->toff, gv->boff, ((size_t)n + 1) * sizeof(size_t));
    for (int i = 0; i < n_eog; i++) {
        if (eog[i] < 0 || eog[i] >= n) {
            exsa_err_set(err, EXSA_EINVAL, "grammar vocab: eog id %d out of range", eog[i]);
            goto fail;
        }
        gv->eog[eog[i]] = 1;
    }
    gv_eog_list(gv);
    if (gv_index(gv, err))
        goto fail;
    return gv;
fail:
    exsa_grammar_vocab_free(gv);
    return NULL;
}

/* Appends token id's piece to *blob (growing it). */
static int piece_append(const exsa_vocab *v, int32_t id, int special, char **blob, size_t *len,
                        size_t *cap)
{
    for (;;) {
        int r = exsa_vocab_token_to_piece(v, id, *blob + *len, *cap - *len, special);
        if (r < 0)
            return r;
        if ((size_t)r <= *cap - *len) {
            *len += (size_t)r;
            return 0;
        }
        size_t nc = *cap * 2 + (size_t)r;
        char *nb = realloc(*blob, nc);
        if (!nb)
            return EXSA_ENOMEM;
        *blob = nb;
        *cap = nc;
    }
}

exsa_grammar_vocab *exsa_grammar_vocab_create(const exsa_vocab *v, exsa_err *err)
{
    int32_t n = v ? exsa_vocab_n_tokens(v) : 0;
    if (n <= 0) {
        exsa_err_set(err, EXSA_EINVAL, "grammar vocab: empty vocabulary");
        return NULL;
    }
    exsa_grammar_vocab *gv = gv_alloc(n, err);
    if (!gv)
        return NULL;
    size_t bl = 0, bc = (size_t)n * 8, tl = 0, tc = (size_t)n * 8;
    gv->bytes = malloc(bc);
    gv->text = malloc(tc);
    if (!gv->bytes || !gv->text)
        goto nomem;
    for (int32_t i = 0; i < n; i++) {
        int r = piece_append(v, i, 0, &gv->bytes, &bl, &bc);
        if (!r)
            r = piece_append(v, i, 1, &gv->text, &tl, &tc);
        if (r == EXSA_ENOMEM)
            goto nomem;
        if (r < 0) {
            exsa_err_set(err, EXSA_EINVAL, "grammar vocab: token %d has no piece", i);
            goto fail;
        }
        gv->boff[i + 1] = bl;
        gv->toff[i + 1] = tl;
        gv->eog[i] = exsa_vocab_is_eog(v, i) ? 1 : 0;
    }
    gv_eog_list(gv);
    if (gv_index(gv, err))
        goto fail;
    return gv;
nomem:
    exsa_err_set(err, EXSA_ENOMEM, "grammar vocab: out of memory");
fail:
    exsa_grammar_vocab_free(gv);
    return NULL;
}

/* Token whose text is exactly s, or -1 (the lowest id when several). */
static int32_t gv_find_text(const exsa_grammar_vocab *gv, const char *s, size_t len)
{
    int32_t lo = 0, hi = gv->n;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2, id = gv->by_text[mid];
        tokkey a = {(const unsigned char *)gv->text + gv->toff[id], gv->toff[id + 1] - gv->toff[id],
                    id};
        tokkey b = {(const unsigned char *)s, len, -1};
        if (cmp_tokkey(&a, &b) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < gv->n) {
        int32_t id = gv->by_text[lo];
        size_t tl = gv->toff[id + 1] - gv->toff[id];
        if (tl == len && memcmp(gv->text + gv->toff[id], s, len) == 0)
            return id;
    }
    return -1;
}

/* --------------------------------------------------------------- matcher */

#define MAX_STACKS 16384           /* stacks in one state */
#define HARD_NODES (1u << 22)      /* stack nodes in one matcher */
#define HARD_STATES (1u << 15)  /* 32 MiB of transitions at most */
#define SOFT_NODES (1u << 19)      /* past these, caches are dropped between calls */
#define SOFT_STATES 4096u
#define SOFT_SETMEM (1u << 21)
#define MASK_BUDGET (4u << 20)     /* bytes of cached masks per matcher */
#define DEAD (-1)
#define FAIL (-2)
#define UNKNOWN (-3)

/* A stack is a chain of hash-consed nodes: node (pos, parent) means "match
 * the element at pos, then return to parent". Equal stacks are equal ids,
 * so a state (set of stacks) is a sorted id array. Node 0 is the empty
 * stack: the grammar is complete. */
typedef struct {
    uint32_t pos;
    int32_t parent;
} gnode;

typedef struct {
    uint32_t off, n;
} gset;

typedef struct {
    int32_t set;
    uint32_t pval;    /* bits of a partial UTF-8 code point */
    uint8_t prem;     /* continuation bytes still to come (0: none) */
    uint8_t plen;     /* length of that sequence */
    uint32_t *mask;   /* cached mask or NULL */
    int32_t mask_count;
} gstate;

typedef struct {
    int32_t *slot;
    uint32_t cap; /* power of two */
} htab;

struct exsa_grammar_matcher {
    const exsa_grammar *g;
    const exsa_grammar_vocab *gv;
    int32_t *tok_res; /* token id of each `<text>` element */
    uint32_t n_words;
    gnode *nodes;
    uint32_t n_nodes, cap_nodes;
    htab nh;
    int32_t *setmem;
    uint32_t n_setmem, cap_setmem;
    gset *sets;
    uint32_t n_sets, cap_sets;
    htab sh;
    gstate *states;
    uint32_t n_states, cap_states;
    int32_t *T; /* T[state * 256 + byte]: successor, UNKNOWN until computed */
    uint32_t cap_T; /* states with room in T */
    htab sth;
    uint32_t n_masks, max_masks;
    /* closure scratch */
    uint64_t *work;
    uint32_t n_work, cap_work;
    int32_t *out;
    uint32_t n_out, cap_out;
    uint64_t *vkey;
    uint32_t *vstamp;
    uint32_t vcap, vcount, stamp;
    int32_t *walk; /* mask walk: state per trie depth */
    int32_t cur, init;
    int finished;
    char errmsg[200];
};

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ull;
    x ^= x >> 27;
    x *= 0x81dadef4bc2dd44dull;
    x ^= x >> 33;
    return x;
}

static int ht_init(htab *h, uint32_t cap)
{
    free(h->slot);
    h->slot = malloc(cap * sizeof(int32_t));
    if (!h->slot)
        return -1;
    memset(h->slot, 0xff, cap * sizeof(int32_t));
    h->cap = cap;
    return 0;
}

static int mfail(exsa_grammar_matcher *m, int code, const char *msg)
{
    snprintf(m->errmsg, sizeof m->errmsg, "grammar: %s", msg);
    return code;
}

static uint64_t node_hash(uint32_t pos, int32_t parent)
{
    return mix64(((uint64_t)pos << 32) | (uint32_t)parent);
}

static int ht_rehash_nodes(exsa_grammar_matcher *m)
{
    if (ht_init(&m->nh, m->nh.cap * 2))
        return -1;
    for (uint32_t i = 1; i < m->n_nodes; i++) {
        uint32_t j = (uint32_t)node_hash(m->nodes[i].pos, m->nodes[i].parent) & (m->nh.cap - 1);
        while (m->nh.slot[j] >= 0)
            j = (j + 1) & (m->nh.cap - 1);
        m->nh.slot[j] = (int32_t)i;
    }
    return 0;
}

static int32_t node_intern(exsa_grammar_matcher *m, uint32_t pos, int32_t parent)
{
    uint32_t j = (uint32_t)node_hash(pos, parent) & (m->nh.cap - 1);
    for (int32_t id; (id = m->nh.slot[j]) >= 0; j = (j + 1) & (m->nh.cap - 1))
        if (m->nodes[id].pos == pos && m->nodes[id].parent == parent)
            return id;
    if (m->n_nodes >= HARD_NODES)
        return mfail(m, FAIL, "too many parse stack nodes (grammar too ambiguous or nested)");
    if (grow((void **)&m->nodes, &m->cap_nodes, m->n_nodes + 1, sizeof(gnode)))
        return mfail(m, FAIL, "out of memory");
    int32_t id = (int32_t)m->n_nodes++;
    m->nodes[id].pos = pos;
    m->nodes[id].parent = parent;
    m->nh.slot[j] = id;
    if (m->n_nodes * 2 > m->nh.cap && ht_rehash_nodes(m))
        return mfail(m, FAIL, "out of memory");
    return id;
}

static uint64_t set_hash(const int32_t *a, uint32_t n)
{
    uint64_t h = n;
    for (uint32_t i = 0; i < n; i++)
        h = mix64(h ^ (uint32_t)a[i]) + i;
    return h;
}

static int32_t set_intern(exsa_grammar_matcher *m, const int32_t *a, uint32_t n)
{
    uint64_t h = set_hash(a, n);
    uint32_t j = (uint32_t)h & (m->sh.cap - 1);
    for (int32_t id; (id = m->sh.slot[j]) >= 0; j = (j + 1) & (m->sh.cap - 1)) {
        gset *s = &m->sets[id];
        if (s->n == n && memcmp(m->setmem + s->off, a, n * sizeof(int32_t)) == 0)
            return id;
    }
    if (grow((void **)&m->setmem, &m->cap_setmem, m->n_setmem + n, sizeof(int32_t)) ||
        grow((void **)&m->sets, &m->cap_sets, m->n_sets + 1, sizeof(gset)))
        return mfail(m, FAIL, "out of memory");
    int32_t id = (int32_t)m->n_sets++;
    m->sets[id].off = m->n_setmem;
    m->sets[id].n = n;
    memcpy(m->setmem + m->n_setmem, a, n * sizeof(int32_t));
    m->n_setmem += n;
    m->sh.slot[j] = id;
    if (m->n_sets * 2 > m->sh.cap) {
        if (ht_init(&m->sh, m->sh.cap * 2))
            return mfail(m, FAIL, "out of memory");
        for (uint32_t i = 0; i < m->n_sets; i++) {
            gset *s = &m->sets[i];
            uint32_t k = (uint32_t)set_hash(m->setmem + s->off, s->n) & (m->sh.cap - 1);
            while (m->sh.slot[k] >= 0)
                k = (k + 1) & (m->sh.cap - 1);
            m->sh.slot[k] = (int32_t)i;
        }
    }
    return id;
}

static uint64_t state_hash(int32_t set, uint32_t pval, uint8_t prem, uint8_t plen)
{
    return mix64(((uint64_t)(uint32_t)set << 32) ^ ((uint64_t)pval << 4) ^
                 ((uint64_t)prem << 2) ^ plen);
}

static int32_t state_intern(exsa_grammar_matcher *m, int32_t set, uint32_t pval, uint8_t prem,
                            uint8_t plen)
{
    uint32_t j = (uint32_t)state_hash(set, pval, prem, plen) & (m->sth.cap - 1);
    for (int32_t id; (id = m->sth.slot[j]) >= 0; j = (j + 1) & (m->sth.cap - 1)) {
        gstate *s = &m->states[id];
        if (s->set == set && s->pval == pval && s->prem == prem && s->plen == plen)
            return id;
    }
    if (m->n_states >= HARD_STATES)
        return mfail(m, FAIL, "too many matcher states (grammar too large for one mask)");
    if (grow((void **)&m->states, &m->cap_states, m->n_states + 1, sizeof(gstate)) ||
        grow((void **)&m->T, &m->cap_T, m->n_states + 1, 256 * sizeof(int32_t)))
        return mfail(m, FAIL, "out of memory");
    for (int b = 0; b < 256; b++)
        m->T[(size_t)m->n_states * 256 + (size_t)b] = UNKNOWN;
    int32_t id = (int32_t)m->n_states++;
    gstate *s = &m->states[id];
    memset(s, 0, sizeof *s);
    s->set = set;
    s->pval = pval;
    s->prem = prem;
    s->plen = plen;
    m->sth.slot[j] = id;
    if (m->n_states * 2 > m->sth.cap) {
        if (ht_init(&m->sth, m->sth.cap * 2))
            return mfail(m, FAIL, "out of memory");
        for (uint32_t i = 0; i < m->n_states; i++) {
            gstate *t = &m->states[i];
            uint32_t k = (uint32_t)state_hash(t->set, t->pval, t->prem, t->plen) &
                         (m->sth.cap - 1);
            while (m->sth.slot[k] >= 0)
                k = (k + 1) & (m->sth.cap - 1);
            m->sth.slot[k] = (int32_t)i;
        }
    }
    return id;
}

/* ---- closure: from pushed (pos, parent) items to stacks whose top is a
 * terminal (or the empty stack), collected in m->out. */

static void closure_begin(exsa_grammar_matcher *m)
{
    m->n_work = 0;
    m->n_out = 0;
    m->vcount = 0;
    if (++m->stamp == 0) {
        memset(m->vstamp, 0, m->vcap * sizeof(uint32_t));
        m->stamp = 1;
    }
}

static int work_push(exsa_grammar_matcher *m, uint32_t pos, int32_t parent)
{
    if (grow((void **)&m->work, &m->cap_work, m->n_work + 1, sizeof(uint64_t)))
        return mfail(m, FAIL, "out of memory");
    m->work[m->n_work++] = ((uint64_t)pos << 32) | (uint32_t)parent;
    return 0;
}

static int out_push(exsa_grammar_matcher *m, int32_t id)
{
    if (m->n_out >= MAX_STACKS)
        return mfail(m, FAIL, "more than 16384 parse stacks (grammar too ambiguous)");
    if (grow((void **)&m->out, &m->cap_out, m->n_out + 1, sizeof(int32_t)))
        return mfail(m, FAIL, "out of memory");
    m->out[m->n_out++] = id;
    return 0;
}

/* 1 if k was already visited in this closure, else marks it and 0. */
static int visit(exsa_grammar_matcher *m, uint64_t k)
{
    if ((m->vcount + 1) * 2 > m->vcap) {
        uint32_t oc = m->vcap, nc = oc ? oc * 2 : 256;
        uint64_t *ok = m->vkey;
        uint32_t *os = m->vstamp;
        uint64_t *nk = malloc(nc * sizeof(uint64_t));
        uint32_t *ns = calloc(nc, sizeof(uint32_t));
        if (!nk || !ns) {
            free(nk);
            free(ns);
            return -1;
        }
        for (uint32_t i = 0; i < oc; i++)
            if (os[i] == m->stamp) {
                uint32_t j = (uint32_t)mix64(ok[i]) & (nc - 1);
                while (ns[j] == m->stamp)
                    j = (j + 1) & (nc - 1);
                nk[j] = ok[i];
                ns[j] = m->stamp;
            }
        free(ok);
        free(os);
        m->vkey = nk;
        m->vstamp = ns;
        m->vcap = nc;
    }
    uint32_t j = (uint32_t)mix64(k) & (m->vcap - 1);
    while (m->vstamp[j] == m->stamp) {
        if (m->vkey[j] == k)
            return 1;
        j = (j + 1) & (m->vcap - 1);
    }
    m->vkey[j] = k;
    m->vstamp[j] = m->stamp;
    m->vcount++;
    return 0;
}

static int closure_run(exsa_grammar_matcher *m)
{
    const exsa_grammar *g = m->g;
    while (m->n_work) {
        uint64_t k = m->work[--m->n_work];
        int v = visit(m, k);
        if (v < 0)
            return mfail(m, FAIL, "out of memory");
        if (v)
            continue;
        uint32_t pos = (uint32_t)(k >> 32);
        int32_t parent = (int32_t)(uint32_t)k;
        const gelem *e = &g->el[pos];
        if (e->type == E_END) {
            if (parent == 0) {
                if (out_push(m, 0))
                    return FAIL;
            } else if (work_push(m, m->nodes[parent].pos, m->nodes[parent].parent)) {
                return FAIL;
            }
        } else if (e->type == E_REF) {
            int32_t cont = parent;
            if (g->el[pos + 1].type != E_END) {
                cont = node_intern(m, pos + 1, parent);
                if (cont < 0)
                    return FAIL;
            }
            for (uint32_t a = g->rule_alt[e->a]; a < g->rule_alt[e->a + 1]; a++)
                if (work_push(m, g->alt_start[a], cont))
                    return FAIL;
        } else {
            int32_t id = node_intern(m, pos, parent);
            if (id < 0 || out_push(m, id))
                return FAIL;
        }
    }
    return 0;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

/* Interns m->out as a set: its id, DEAD when empty, FAIL. */
static int32_t closure_set(exsa_grammar_matcher *m)
{
    if (m->n_out == 0)
        return DEAD;
    qsort(m->out, m->n_out, sizeof(int32_t), cmp_i32);
    uint32_t u = 1;
    for (uint32_t i = 1; i < m->n_out; i++)
        if (m->out[i] != m->out[u - 1])
            m->out[u++] = m->out[i];
    m->n_out = u;
    return set_intern(m, m->out, u);
}

static int cs_match(const exsa_grammar *g, const gcset *c, uint32_t cp)
{
    if (cp < 128)
        return (c->ascii[cp >> 5] >> (cp & 31)) & 1;
    const uint32_t *r = g->rng + c->off;
    uint32_t lo = 0, hi = c->n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (r[2 * mid + 1] < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < c->n && r[2 * lo] <= cp;
}

static int cs_overlaps(const exsa_grammar *g, const gcset *c, uint32_t lo, uint32_t hi)
{
    const uint32_t *r = g->rng + c->off;
    for (uint32_t i = 0; i < c->n; i++)
        if (r[2 * i] <= hi && r[2 * i + 1] >= lo)
            return 1;
    return 0;
}

static int32_t initial_state(exsa_grammar_matcher *m)
{
    const exsa_grammar *g = m->g;
    closure_begin(m);
    for (uint32_t a = g->rule_alt[g->root]; a < g->rule_alt[g->root + 1]; a++)
        if (work_push(m, g->alt_start[a], 0))
            return FAIL;
    if (closure_run(m))
        return FAIL;
    int32_t s = closure_set(m);
    if (s == DEAD)
        return mfail(m, FAIL, "the root rule matches nothing");
    if (s < 0)
        return FAIL;
    return state_intern(m, s, 0, 0, 0);
}

static const uint32_t utf8_min[5] = {0, 0, 0x80, 0x800, 0x10000};

/* The state after byte b: an id, DEAD or FAIL. */
/* A partial code point whose every completion is matched by the same
 * stacks needs no bits: such states keep only those stacks (as their set)
 * and this flag in pval, so that the many UTF-8 prefixes of a vocabulary
 * (CJK, emoji) fall into a few states instead of one state each. */
#define PV_CANON 0x80000000u

static int cs_contains(const exsa_grammar *g, const gcset *c, uint32_t lo, uint32_t hi)
{
    const uint32_t *r = g->rng + c->off;
    uint32_t a = 0, z = c->n;
    while (a < z) {
        uint32_t mid = (a + z) / 2;
        if (r[2 * mid + 1] < lo)
            a = mid + 1;
        else
            z = mid;
    }
    return a < c->n && r[2 * a] <= lo && hi <= r[2 * a + 1];
}

/* Advances the stacks whose top matched a code point: closure, new state. */
static int32_t advance_out(exsa_grammar_matcher *m)
{
    if (closure_run(m))
        return FAIL;
    int32_t s = closure_set(m);
    if (s < 0)
        return s;
    return state_intern(m, s, 0, 0, 0);
}

/* The state after byte b: an id, DEAD or FAIL. */
static int32_t step(exsa_grammar_matcher *m, int32_t st, uint8_t b)
{
    const exsa_grammar *g = m->g;
    gstate S = m->states[st];
    const int32_t *set = m->setmem + m->sets[S.set].off;
    uint32_t n = m->sets[S.set].n;
    if (S.pval & PV_CANON) {
        if ((b & 0xC0) != 0x80)
            return DEAD;
        if (S.prem > 1)
            return state_intern(m, S.set, S.pval, (uint8_t)(S.prem - 1), S.plen);
        closure_begin(m);
        for (uint32_t i = 0; i < n; i++) {
            gnode nd = m->nodes[set[i]];
            if (work_push(m, nd.pos + 1, nd.parent))
                return FAIL;
        }
        return advance_out(m);
    }
    uint32_t val = 0, cp = 0;
    int rem = 0, len = S.plen, complete = 0;
    if (S.prem == 0) {
        if (b < 0x80) {
            cp = b;
            complete = 1;
            len = 1;
        } else if (b >= 0xC2 && b <= 0xDF) {
            val = b & 0x1Fu, rem = 1, len = 2;
        } else if (b >= 0xE0 && b <= 0xEF) {
            val = b & 0x0Fu, rem = 2, len = 3;
        } else if (b >= 0xF0 && b <= 0xF4) {
            val = b & 0x07u, rem = 3, len = 4;
        } else {
            return DEAD;
        }
    } else {
        if ((b & 0xC0) != 0x80)
            return DEAD;
        val = (S.pval << 6) | (b & 0x3Fu);
        rem = S.prem - 1;
        if (rem == 0) {
            cp = val;
            complete = 1;
        }
    }
    if (!complete) {
        uint32_t lo = val << (6 * rem), hi = lo | ((1u << (6 * rem)) - 1);
        /* Exact bounds (no overlong or out-of-range completion) allow the
         * canonical form. */
        int exact = lo >= utf8_min[len] && hi <= MAX_CP;
        if (lo < utf8_min[len])
            lo = utf8_min[len];
        if (hi > MAX_CP)
            hi = MAX_CP;
        if (lo > hi)
            return DEAD;
        int any = 0, split = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (set[i] == 0)
                continue;
            const gelem *e = &g->el[m->nodes[set[i]].pos];
            if (e->type != E_CHARS || !cs_overlaps(g, &g->cs[e->a], lo, hi))
                continue;
            any = 1;
            if (!cs_contains(g, &g->cs[e->a], lo, hi))
                split = 1;
        }
        if (!any)
            return DEAD;
        if (!exact || split)
            return state_intern(m, S.set, val, (uint8_t)rem, (uint8_t)len);
        m->n_out = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (set[i] == 0)
                continue;
            const gelem *e = &g->el[m->nodes[set[i]].pos];
            if (e->type == E_CHARS && cs_overlaps(g, &g->cs[e->a], lo, hi) &&
                out_push(m, set[i]))
                return FAIL;
        }
        int32_t cs = closure_set(m);
        if (cs < 0)
            return cs;
        return state_intern(m, cs, PV_CANON, (uint8_t)rem, (uint8_t)len);
    }
    if (cp < utf8_min[len] || cp > MAX_CP)
        return DEAD;
    closure_begin(m);
    for (uint32_t i = 0; i < n; i++) {
        if (set[i] == 0)
            continue;
        gnode nd = m->nodes[set[i]];
        const gelem *e = &g->el[nd.pos];
        if (e->type == E_CHARS && cs_match(g, &g->cs[e->a], cp) &&
            work_push(m, nd.pos + 1, nd.parent))
            return FAIL;
    }
    return advance_out(m);
}

/* Memoized step: one load from the dense table in the common case. */
static inline int32_t trans(exsa_grammar_matcher *m, int32_t st, uint8_t b)
{
    int32_t ns = m->T[(size_t)st * 256 + b];
    if (ns != UNKNOWN)
        return ns;
    ns = step(m, st, b);
    if (ns == FAIL)
        return FAIL;
    m->T[(size_t)st * 256 + b] = ns; /* T may have moved */
    return ns;
}

static void drop_tables(exsa_grammar_matcher *m)
{
    for (uint32_t i = 0; i < m->n_states; i++) {
        free(m->states[i].mask);
    }
    m->n_states = 0;
    m->n_masks = 0;
    m->n_nodes = 1;
    m->n_sets = 0;
    m->n_setmem = 0;
    memset(m->nh.slot, 0xff, m->nh.cap * sizeof(int32_t));
    memset(m->sh.slot, 0xff, m->sh.cap * sizeof(int32_t));
    memset(m->sth.slot, 0xff, m->sth.cap * sizeof(int32_t));
}

/* Drops the memo tables when they grew past their soft bounds, keeping
 * only the current state (re-interned). Called between operations only. */
static int maybe_flush(exsa_grammar_matcher *m)
{
    if (m->n_states <= SOFT_STATES && m->n_nodes <= SOFT_NODES && m->n_setmem <= SOFT_SETMEM)
        return 0;
    gstate S = m->states[m->cur];
    uint32_t n = m->sets[S.set].n;
    /* Each stack as its positions, bottom first, in one buffer. */
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        for (int32_t id = m->setmem[m->sets[S.set].off + i]; id; id = m->nodes[id].parent)
            total++;
    uint32_t *pos = malloc((total + 1) * sizeof(uint32_t));
    uint32_t *cnt = malloc((n + 1) * sizeof(uint32_t));
    if (!pos || !cnt) {
        free(pos);
        free(cnt);
        return mfail(m, EXSA_ENOMEM, "out of memory");
    }
    size_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t c = 0;
        for (int32_t id = m->setmem[m->sets[S.set].off + i]; id; id = m->nodes[id].parent)
            c++;
        cnt[i] = c;
        uint32_t j = c;
        for (int32_t id = m->setmem[m->sets[S.set].off + i]; id; id = m->nodes[id].parent)
            pos[k + --j] = m->nodes[id].pos;
        k += c;
    }
    drop_tables(m);
    m->init = -1;
    m->n_out = 0;
    int rc = 0;
    k = 0;
    for (uint32_t i = 0; i < n && !rc; i++) {
        int32_t id = 0;
        for (uint32_t j = 0; j < cnt[i] && id >= 0; j++)
            id = node_intern(m, pos[k + j], id);
        k += cnt[i];
        rc = id < 0 || out_push(m, id);
    }
    free(pos);
    free(cnt);
    if (rc)
        return EXSA_EFULL;
    int32_t s = closure_set(m);
    if (s < 0)
        return EXSA_EFULL;
    int32_t st = state_intern(m, s, S.pval, S.prem, S.plen);
    if (st < 0)
        return EXSA_EFULL;
    m->cur = st;
    return 0;
}

void exsa_grammar_matcher_free(exsa_grammar_matcher *m)
{
    if (!m)
        return;
    for (uint32_t i = 0; i < m->n_states; i++) {
        free(m->states[i].mask);
    }
    free(m->states);
    free(m->T);
    free(m->tok_res);
    free(m->nodes);
    free(m->nh.slot);
    free(m->setmem);
    free(m->sets);
    free(m->sh.slot);
    free(m->sth.slot);
    free(m->work);
    free(m->out);
    free(m->vkey);
    free(m->vstamp);
    free(m->walk);
    free(m);
}

exsa_grammar_matcher *exsa_grammar_matcher_create(const exsa_grammar *g,
                                                  const exsa_grammar_vocab *gv, exsa_err *err)
{
    if (!g || !gv) {
        exsa_err_set(err, EXSA_EINVAL, "grammar matcher: NULL grammar or vocabulary");
        return NULL;
    }
    exsa_grammar_matcher *m = calloc(1, sizeof *m);
    if (!m)
        goto nomem;
    m->g = g;
    m->gv = gv;
    m->n_words = ((uint32_t)gv->n + 31) / 32;
    m->max_masks = MASK_BUDGET / (m->n_words * 4);
    if (m->max_masks < 16)
        m->max_masks = 16;
    m->tok_res = malloc((g->n_tok_text + 1) * sizeof(int32_t));
    m->walk = malloc(((size_t)gv->max_depth + 1) * sizeof(int32_t));
    if (!m->tok_res || !m->walk || ht_init(&m->nh, 1024) || ht_init(&m->sh, 256) ||
        ht_init(&m->sth, 256) || grow((void **)&m->nodes, &m->cap_nodes, 1024, sizeof(gnode)))
        goto nomem;
    m->n_nodes = 1;
    m->nodes[0].pos = 0;
    m->nodes[0].parent = 0;
    for (uint32_t i = 0; i < g->n_tok_text; i++) {
        m->tok_res[i] = gv_find_text(gv, g->tok_text[i], strlen(g->tok_text[i]));
        if (m->tok_res[i] < 0) {
            exsa_err_set(err, EXSA_EINVAL,
                         "grammar: token '%s' is not a single token of this vocabulary",
                         g->tok_text[i]);
            goto fail;
        }
    }
    for (uint32_t i = 0; i < g->n_el; i++)
        if (g->el[i].type == E_TOKEN && !g->el[i].bytext && g->el[i].a >= (uint32_t)gv->n) {
            exsa_err_set(err, EXSA_EINVAL,
                         "grammar: token id %u out of range (vocabulary of %d tokens)",
                         g->el[i].a, gv->n);
            goto fail;
        }
    m->init = initial_state(m);
    if (m->init < 0) {
        exsa_err_set(err, EXSA_EINVAL, "%s", m->errmsg);
        goto fail;
    }
    m->cur = m->init;
    return m;
nomem:
    exsa_err_set(err, EXSA_ENOMEM, "grammar matcher: out of memory");
fail:
    exsa_grammar_matcher_free(m);
    return NULL;
}

void exsa_grammar_matcher_reset(exsa_grammar_matcher *m)
{
    if (!m)
        return;
    m->finished = 0;
    if (m->init < 0)
        m->init = initial_state(m);
    /* After a flush the initial state is rebuilt; it was built once at
     * create, so a failure here means memory ran out: keep the state. */
    if (m->init >= 0)
        m->cur = m->init;
}

const char *exsa_grammar_matcher_error(const exsa_grammar_matcher *m)
{
    return m ? m->errmsg : "";
}

static int can_end(const exsa_grammar_matcher *m, int32_t st)
{
    const gstate *s = &m->states[st];
    /* Node 0 sorts first. */
    return s->prem == 0 && m->sets[s->set].n && m->setmem[m->sets[s->set].off] == 0;
}

int exsa_grammar_matcher_done(const exsa_grammar_matcher *m)
{
    if (!m)
        return 0;
    return m->finished || can_end(m, m->cur);
}

static int tok_elem_matches(const exsa_grammar_matcher *m, const gelem *e, int32_t token)
{
    int32_t id = e->bytext ? m->tok_res[e->a] : (int32_t)e->a;
    if (e->neg)
        return token != id && !m->gv->eog[token];
    return token == id;
}

static int compute_mask(exsa_grammar_matcher *m, int32_t st, uint32_t *out)
{
    const exsa_grammar_vocab *gv = m->gv;
    const exsa_grammar *g = m->g;
    memset(out, 0, m->n_words * sizeof(uint32_t));
    int32_t *walk = m->walk;
    walk[0] = st;
    uint32_t i = 0, nn = gv->n_nodes;
    const struct tnode *node = gv->node;
    while (i < nn) {
        const struct tnode nd = node[i];
        int32_t ps = walk[nd.dep - 1];
        int32_t ns = m->T[(size_t)ps * 256 + nd.b];
        if (ns == UNKNOWN)
            ns = trans(m, ps, nd.b);
        if (ns < 0) {
            if (ns == FAIL)
                return EXSA_EFULL;
            i = gv->nend[i];
            continue;
        }
        walk[nd.dep] = ns;
        if (nd.tok >= 0) {
            out[nd.tok >> 5] |= 1u << (nd.tok & 31);
            for (uint32_t t = gv->ntok[i] + 1; nd.multi && t < gv->ntok[i + 1]; t++)
                out[gv->tok[t] >> 5] |= 1u << (gv->tok[t] & 31);
        }
        i++;
    }
    const gstate *S = &m->states[st];
    if (S->prem == 0) {
        const int32_t *set = m->setmem + m->sets[S->set].off;
        uint32_t n = m->sets[S->set].n;
        for (int pass = 0; pass < 2; pass++)
            for (uint32_t k = 0; k < n; k++) {
                if (set[k] == 0)
                    continue;
                const gelem *e = &g->el[m->nodes[set[k]].pos];
                if (e->type != E_TOKEN || e->neg != (pass == 0))
                    continue;
                int32_t id = e->bytext ? m->tok_res[e->a] : (int32_t)e->a;
                if (!e->neg) {
                    out[id >> 5] |= 1u << (id & 31);
                    continue;
                }
                /* Everything but id (which keeps what it had) and EOG. */
                uint32_t keep = out[id >> 5] & (1u << (id & 31));
                memset(out, 0xff, m->n_words * sizeof(uint32_t));
                out[id >> 5] &= ~(1u << (id & 31));
                out[id >> 5] |= keep;
                for (int32_t q = 0; q < gv->n_eog; q++)
                    out[gv->eog_ids[q] >> 5] &= ~(1u << (gv->eog_ids[q] & 31));
                if (gv->n & 31)
                    out[m->n_words - 1] &= (1u << (gv->n & 31)) - 1;
            }
    }
    if (can_end(m, st))
        for (int32_t q = 0; q < gv->n_eog; q++)
            out[gv->eog_ids[q] >> 5] |= 1u << (gv->eog_ids[q] & 31);
    int count = 0;
    for (uint32_t w = 0; w < m->n_words; w++)
        count += __builtin_popcount(out[w]);
    return count;
}

int exsa_grammar_matcher_mask(exsa_grammar_matcher *m, uint32_t *allowed)
{
    if (!m || !allowed)
        return EXSA_EINVAL;
    if (m->finished) {
        memset(allowed, 0, m->n_words * sizeof(uint32_t));
        return 0;
    }
    int rc = maybe_flush(m);
    if (rc)
        return rc;
    gstate *S = &m->states[m->cur];
    if (S->mask) {
        memcpy(allowed, S->mask, m->n_words * sizeof(uint32_t));
        return S->mask_count;
    }
    int32_t st = m->cur;
    int count = compute_mask(m, st, allowed);
    if (count < 0)
        return count;
    if (m->n_masks >= m->max_masks) {
        for (uint32_t i = 0; i < m->n_states; i++) {
            free(m->states[i].mask);
            m->states[i].mask = NULL;
        }
        m->n_masks = 0;
    }
    uint32_t *copy = malloc(m->n_words * sizeof(uint32_t));
    if (copy) { /* the cache is an optimization: no copy, no caching */
        memcpy(copy, allowed, m->n_words * sizeof(uint32_t));
        m->states[st].mask = copy;
        m->states[st].mask_count = count;
        m->n_masks++;
    }
    return count;
}

/* Runs bytes from state st: the final state, DEAD or FAIL. */
static int32_t run_bytes(exsa_grammar_matcher *m, int32_t st, const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n && st >= 0; i++)
        st = trans(m, st, s[i]);
    return st;
}

int exsa_grammar_matcher_accept_bytes(exsa_grammar_matcher *m, const char *s, size_t n)
{
    if (!m || (!s && n))
        return EXSA_EINVAL;
    if (m->finished)
        return mfail(m, EXSA_EINVAL, "bytes after end of generation");
    int rc = maybe_flush(m);
    if (rc)
        return rc;
    int32_t st = run_bytes(m, m->cur, (const unsigned char *)s, n);
    if (st == FAIL)
        return EXSA_EFULL;
    if (st < 0)
        return mfail(m, EXSA_EINVAL, "bytes not allowed by the grammar");
    m->cur = st;
    return 0;
}

int exsa_grammar_matcher_accept(exsa_grammar_matcher *m, int32_t token)
{
    if (!m)
        return EXSA_EINVAL;
    const exsa_grammar_vocab *gv = m->gv;
    const exsa_grammar *g = m->g;
    if (token < 0 || token >= gv->n)
        return mfail(m, EXSA_EINVAL, "token id out of range");
    if (m->finished)
        return mfail(m, EXSA_EINVAL, "token after end of generation");
    int rc = maybe_flush(m);
    if (rc)
        return rc;
    const gstate S = m->states[m->cur];
    /* Token elements on top of a stack. */
    int32_t tset = DEAD;
    if (S.prem == 0) {
        const int32_t *set = m->setmem + m->sets[S.set].off;
        uint32_t n = m->sets[S.set].n;
        int any = 0;
        closure_begin(m);
        for (uint32_t i = 0; i < n; i++) {
            if (set[i] == 0)
                continue;
            gnode nd = m->nodes[set[i]];
            const gelem *e = &g->el[nd.pos];
            if (e->type == E_TOKEN && tok_elem_matches(m, e, token)) {
                any = 1;
                if (work_push(m, nd.pos + 1, nd.parent))
                    return EXSA_EFULL;
            }
        }
        if (any) {
            if (closure_run(m))
                return EXSA_EFULL;
            tset = closure_set(m);
            if (tset == FAIL)
                return EXSA_EFULL;
        }
    }
    int32_t st = DEAD;
    size_t len = gv->boff[token + 1] - gv->boff[token];
    if (gv->eog[token]) {
        if (tset < 0) {
            if (!can_end(m, m->cur))
                return mfail(m, EXSA_EINVAL, "end of generation before the grammar is complete");
            m->finished = 1;
            return 0;
        }
    } else if (len) {
        st = run_bytes(m, m->cur, (const unsigned char *)gv->bytes + gv->boff[token], len);
        if (st == FAIL)
            return EXSA_EFULL;
    }
    if (tset >= 0) {
        if (st >= 0 && m->states[st].prem == 0) {
            /* Both readings: the union of the two stack sets. */
            const gset a = m->sets[st >= 0 ? m->states[st].set : 0], b = m->sets[tset];
            m->n_out = 0;
            for (uint32_t i = 0; i < a.n; i++)
                if (out_push(m, m->setmem[a.off + i]))
                    return EXSA_EFULL;
            for (uint32_t i = 0; i < b.n; i++)
                if (out_push(m, m->setmem[b.off + i]))
                    return EXSA_EFULL;
            tset = closure_set(m);
            if (tset < 0)
                return EXSA_EFULL;
            st = DEAD;
        }
        if (st < 0) {
            st = state_intern(m, tset, 0, 0, 0);
            if (st < 0)
                return EXSA_EFULL;
        }
    }
    if (st < 0)
        return mfail(m, EXSA_EINVAL, "token not allowed by the grammar");
    m->cur = st;
    return 0;
}
