/* Jinja2-subset engine: lexer -> AST -> tree-walking interpreter.
 * See jinja.h for the scope and the limits. Semantics follow Python's
 * Jinja2 3.x as HF transformers configures it; where a Python type matters
 * (str(), repr of floats, json.dumps) the Python output is reproduced. */
#include "text/jinja.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "util/err.h"

/* ------------------------------------------------------------------ arena */

typedef struct ablk {
    struct ablk *next;
    size_t cap, used;
    max_align_t data[];
} ablk;

typedef struct arena {
    ablk *head;
    size_t total, limit; /* limit 0 = none */
} arena;

#define ABLK_SIZE (64u * 1024u)

static void *aalloc(arena *a, size_t n)
{
    n = (n + 15u) & ~(size_t)15u;
    if (n == 0)
        n = 16;
    if (a->head && a->head->cap - a->head->used >= n) {
        void *p = (char *)a->head->data + a->head->used;
        a->head->used += n;
        return p;
    }
    size_t cap = n > ABLK_SIZE / 4 ? n : ABLK_SIZE;
    if (a->limit && (cap > a->limit || a->total > a->limit - cap))
        return NULL;
    ablk *b = malloc(sizeof(ablk) + cap);
    if (!b)
        return NULL;
    b->cap = cap;
    b->used = n;
    a->total += cap;
    if (cap != ABLK_SIZE && a->head) {
        /* a big one-off block goes behind the current block, which keeps
         * its free room for the small allocations that follow */
        b->next = a->head->next;
        a->head->next = b;
    } else {
        b->next = a->head;
        a->head = b;
    }
    return b->data;
}

static void afree(arena *a)
{
    ablk *b = a->head;
    while (b) {
        ablk *n = b->next;
        free(b);
        b = n;
    }
    a->head = NULL;
    a->total = 0;
}

/* ------------------------------------------------------------------ values */

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_FUNC, V_LOOP };

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jfunc jfunc;
typedef struct jloop jloop;

typedef struct jv {
    int t;
    union {
        int b;
        int64_t i;
        double f;
        struct {
            const char *p;
            size_t n;
        } s;
        jlist *l;
        jdict *d;
        jfunc *fn;
        jloop *lp;
    } u;
} jv;

struct jlist {
    size_t n, cap;
    jv *v;
    int tuple; /* prints as (a, b) */
};
struct jdict {
    size_t n, cap;
    jv *k, *v;
};

typedef struct node node;
typedef struct frame frame;

enum { F_BUILTIN, F_MACRO, F_METHOD, F_CALLER };
struct jfunc {
    int kind;
    const char *name; /* builtin or method name */
    jv self;          /* bound object of a method */
    const node *def;  /* macro definition / call block */
    frame *env;       /* caller: frame the call block runs in */
};

struct jloop {
    jlist *items;
    size_t idx;
    int depth;
};

static const jv UNDEF = {.t = V_UNDEF};
static const jv NONE = {.t = V_NONE};

static jv vbool(int b)
{
    jv v = {.t = V_BOOL};
    v.u.b = b != 0;
    return v;
}
static jv vint(int64_t i)
{
    jv v = {.t = V_INT};
    v.u.i = i;
    return v;
}
static jv vflt(double f)
{
    jv v = {.t = V_FLOAT};
    v.u.f = f;
    return v;
}
static jv vstrref(const char *p, size_t n)
{
    jv v = {.t = V_STR};
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}

/* ------------------------------------------------------------------ buffers */

typedef struct sbuf {
    char *p;
    size_t n, cap, limit;
    int over; /* hit the limit or out of memory */
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->over || n == 0)
        return;
    if (n > b->limit || b->n > b->limit - n) {
        b->over = 1;
        return;
    }
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 64;
        while (c < b->n + n + 1)
            c *= 2;
        char *q = realloc(b->p, c);
        if (!q) {
            b->over = 2;
            return;
        }
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}
static void sb_puts(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}
static void sb_putc(sbuf *b, char c)
{
    sb_put(b, &c, 1);
}
static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k > 0)
        sb_put(b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

/* ------------------------------------------------------------------ utf-8 */

/* Decodes one code point at s[0..n); invalid bytes decode as themselves
 * (one byte each) so every input has a defined length. */
static size_t u8dec(const unsigned char *s, size_t n, int32_t *cp)
{
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate(s, (utf8proc_ssize_t)n, &c);
    if (k <= 0) {
        *cp = s[0];
        return 1;
    }
    *cp = c;
    return (size_t)k;
}

static size_t u8enc(int32_t cp, char *out)
{
    utf8proc_ssize_t k = utf8proc_encode_char(cp, (utf8proc_uint8_t *)out);
    if (k <= 0) {
        out[0] = '?';
        return 1;
    }
    return (size_t)k;
}

static int is_ascii(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] >= 0x80)
            return 0;
    return 1;
}

static size_t u8len(const char *p, size_t n)
{
    if (is_ascii(p, n))
        return n;
    size_t c = 0;
    int32_t cp;
    for (size_t i = 0; i < n; c++)
        i += u8dec((const unsigned char *)p + i, n - i, &cp);
    return c;
}

/* Python's str.isspace() set. */
static int py_space(int32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* ------------------------------------------------------------------ lexer */

enum { T_EOF, T_TEXT, T_VBEGIN, T_VEND, T_BBEGIN, T_BEND, T_NAME, T_STR, T_INT, T_FLOAT, T_OP };

typedef struct tok {
    int t, line;
    const char *s;
    size_t n;
    int64_t i;
    double f;
} tok;

typedef struct lexer {
    const char *src;
    size_t n, pos;
    int line;
    tok *v;
    size_t nt, cap;
    arena *a;
    exsa_err *err;
    int failed;
} lexer;

static int lex_fail(lexer *L, int line, const char *msg)
{
    if (!L->failed)
        exsa_err_set(L->err, EXSA_EINVAL, "jinja: line %d: %s", line, msg);
    L->failed = 1;
    return -1;
}

static int emit(lexer *L, int t, int line, const char *s, size_t n)
{
    if (L->nt == L->cap) {
        size_t c = L->cap ? L->cap * 2 : 256;
        tok *q = realloc(L->v, c * sizeof *q);
        if (!q)
            return lex_fail(L, line, "out of memory");
        L->v = q;
        L->cap = c;
    }
    tok *k = &L->v[L->nt++];
    memset(k, 0, sizeof *k);
    k->t = t;
    k->line = line;
    k->s = s;
    k->n = n;
    return 0;
}

static int count_nl(const char *s, size_t n)
{
    int c = 0;
    for (size_t i = 0; i < n; i++)
        c += s[i] == '\n';
    return c;
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int hexv(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A string literal body with Python's unicode-escape rules. */
static int lex_string(lexer *L, size_t *pp)
{
    size_t p = *pp;
    char q = L->src[p++];
    int line = L->line;
    size_t start = p;
    while (p < L->n && L->src[p] != q) {
        if (L->src[p] == '\\' && p + 1 < L->n)
            p++;
        p++;
    }
    if (p >= L->n)
        return lex_fail(L, line, "unterminated string literal");
    size_t rawn = p - start;
    char *out = aalloc(L->a, rawn + 1);
    if (!out)
        return lex_fail(L, line, "out of memory");
    size_t o = 0;
    const char *s = L->src + start;
    for (size_t i = 0; i < rawn; i++) {
        char c = s[i];
        if (c != '\\' || i + 1 >= rawn) {
            out[o++] = c;
            continue;
        }
        char e = s[++i];
        int32_t cp = -1;
        switch (e) {
        case 'n': out[o++] = '\n'; break;
        case 't': out[o++] = '\t'; break;
        case 'r': out[o++] = '\r'; break;
        case '\\': out[o++] = '\\'; break;
        case '\'': out[o++] = '\''; break;
        case '"': out[o++] = '"'; break;
        case 'a': out[o++] = '\a'; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'v': out[o++] = '\v'; break;
        case '\n': break;
        case 'x': case 'u': case 'U': {
            int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8, ok = i + (size_t)nd < rawn;
            int32_t v = 0;
            for (int k = 1; ok && k <= nd; k++) {
                int h = hexv(s[i + (size_t)k]);
                if (h < 0)
                    ok = 0;
                else
                    v = v * 16 + h;
            }
            if (!ok || v > 0x10ffff) {
                out[o++] = '\\';
                out[o++] = e;
            } else {
                cp = v;
                i += (size_t)nd;
            }
            break;
        }
        default:
            if (e >= '0' && e <= '7') {
                int32_t v = 0;
                int k = 0;
                while (k < 3 && i < rawn && s[i] >= '0' && s[i] <= '7') {
                    v = v * 8 + (s[i] - '0');
                    i++;
                    k++;
                }
                i--;
                cp = v;
            } else {
                out[o++] = '\\';
                out[o++] = e;
            }
        }
        if (cp >= 0) {
            char tmp[8];
            size_t k = u8enc(cp, tmp);
            /* an escape never expands beyond its own text (\x41 is 4 bytes) */
            memcpy(out + o, tmp, k);
            o += k;
        }
    }
    out[o] = '\0';
    L->line += count_nl(L->src + start, rawn);
    if (emit(L, T_STR, line, out, o))
        return -1;
    *pp = p + 1;
    return 0;
}

static const char *const OPS2[] = {"//", "**", "==", "!=", ">=", "<="};
static const char OPS1[] = "+-*/%~<>=()[]{},.:|";

/* Tokens inside a {{ }} or {% %} tag up to and including its end marker. */
static int lex_tag(lexer *L, int block)
{
    size_t p = L->pos;
    int depth = 0;
    const char *src = L->src;
    for (;;) {
        while (p < L->n && is_ws(src[p])) {
            if (src[p] == '\n')
                L->line++;
            p++;
        }
        if (p >= L->n)
            return lex_fail(L, L->line, block ? "unexpected end of template, expected '%}'"
                                                 : "unexpected end of template, expected '}}'");
        char c = src[p];
        /* end markers (a '}' closes a dict literal while braces are open) */
        size_t endlen = 0;
        int strip = 0;
        if (block) {
            if ((c == '-' || c == '+') && p + 2 < L->n && src[p + 1] == '%' && src[p + 2] == '}') {
                endlen = 3;
                strip = c == '-' ? 1 : 2;
            } else if (c == '%' && p + 1 < L->n && src[p + 1] == '}')
                endlen = 2;
        } else if (depth == 0) {
            if (c == '-' && p + 2 < L->n && src[p + 1] == '}' && src[p + 2] == '}') {
                endlen = 3;
                strip = 1;
            } else if (c == '}' && p + 1 < L->n && src[p + 1] == '}')
                endlen = 2;
        }
        if (endlen) {
            if (emit(L, block ? T_BEND : T_VEND, L->line, NULL, 0))
                return -1;
            p += endlen;
            if (strip == 1) {
                while (p < L->n && is_ws(src[p])) {
                    if (src[p] == '\n')
                        L->line++;
                    p++;
                }
            } else if (block && strip == 0 && p < L->n && src[p] == '\n') {
                p++; /* trim_blocks */
                L->line++;
            }
            L->pos = p;
            return 0;
        }
        if (c == '\'' || c == '"') {
            if (lex_string(L, &p))
                return -1;
            continue;
        }
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
            size_t s = p;
            while (p < L->n && ((src[p] >= 'a' && src[p] <= 'z') || (src[p] >= 'A' && src[p] <= 'Z') ||
                                (src[p] >= '0' && src[p] <= '9') || src[p] == '_'))
                p++;
            if (emit(L, T_NAME, L->line, src + s, p - s))
                return -1;
            continue;
        }
        if (c >= '0' && c <= '9') {
            char num[64];
            size_t k = 0, s = p;
            int isf = 0;
            while (p < L->n && ((src[p] >= '0' && src[p] <= '9') || src[p] == '_')) {
                if (src[p] != '_' && k < sizeof num - 1)
                    num[k++] = src[p];
                p++;
            }
            if (p + 1 < L->n && src[p] == '.' && src[p + 1] >= '0' && src[p + 1] <= '9') {
                isf = 1;
                num[k < sizeof num - 1 ? k++ : k] = '.';
                p++;
                while (p < L->n && src[p] >= '0' && src[p] <= '9') {
                    if (k < sizeof num - 1)
                        num[k++] = src[p];
                    p++;
                }
            }
            if (p < L->n && (src[p] == 'e' || src[p] == 'E')) {
                size_t q = p + 1;
                if (q < L->n && (src[q] == '+' || src[q] == '-'))
                    q++;
                if (q < L->n && src[q] >= '0' && src[q] <= '9') {
                    isf = 1;
                    while (p < q && k < sizeof num - 1)
                        num[k++] = src[p++];
                    p = q;
                    while (p < L->n && src[p] >= '0' && src[p] <= '9') {
                        if (k < sizeof num - 1)
                            num[k++] = src[p];
                        p++;
                    }
                }
            }
            num[k] = '\0';
            if (emit(L, isf ? T_FLOAT : T_INT, L->line, src + s, p - s))
                return -1;
            tok *t = &L->v[L->nt - 1];
            if (isf)
                t->f = strtod(num, NULL);
            else {
                errno = 0;
                unsigned long long u = strtoull(num, NULL, 10);
                if (errno || u > INT64_MAX || k >= sizeof num - 1)
                    return lex_fail(L, L->line, "integer literal too large");
                t->i = (int64_t)u;
            }
            continue;
        }
        size_t oplen = 0;
        for (size_t k = 0; k < sizeof OPS2 / sizeof OPS2[0]; k++)
            if (p + 1 < L->n && src[p] == OPS2[k][0] && src[p + 1] == OPS2[k][1])
                oplen = 2;
        if (!oplen && strchr(OPS1, c) && c)
            oplen = 1;
        if (!oplen) {
            char m[64];
            snprintf(m, sizeof m, "unexpected character '%c' in tag", c);
            return lex_fail(L, L->line, m);
        }
        if (c == '{' || c == '(' || c == '[')
            depth++;
        else if ((c == '}' || c == ')' || c == ']') && depth > 0)
            depth--;
        if (emit(L, T_OP, L->line, src + p, oplen))
            return -1;
        p += oplen;
    }
}

/* Finds "{% endraw %}" (with optional -/+ and spaces) from p; returns the
 * tag start or n. *tag_end gets the end of the tag, *strip the '-' flags. */
static size_t find_endraw(const char *s, size_t n, size_t p, size_t *tag_end, int *lstrip, int *rstrip)
{
    for (size_t i = p; i + 1 < n; i++) {
        if (s[i] != '{' || s[i + 1] != '%')
            continue;
        size_t q = i + 2;
        int ls = 0, rs = 0;
        if (q < n && (s[q] == '-' || s[q] == '+'))
            ls = s[q++] == '-';
        while (q < n && is_ws(s[q]))
            q++;
        if (q + 6 > n || memcmp(s + q, "endraw", 6) != 0)
            continue;
        q += 6;
        while (q < n && is_ws(s[q]))
            q++;
        if (q < n && (s[q] == '-' || s[q] == '+'))
            rs = s[q++] == '-';
        if (q + 1 < n && s[q] == '%' && s[q + 1] == '}') {
            *tag_end = q + 2;
            *lstrip = ls;
            *rstrip = rs;
            return i;
        }
    }
    return n;
}

static int lex(lexer *L)
{
    const char *s = L->src;
    int line_starting = 1;
    L->line = 1;
    while (L->pos < L->n) {
        size_t p = L->pos, k = p;
        while (k + 1 < L->n && !(s[k] == '{' && (s[k + 1] == '{' || s[k + 1] == '%' || s[k + 1] == '#')))
            k++;
        if (k + 1 >= L->n)
            k = L->n;
        size_t tlen = k - p;
        int tline = L->line;
        if (k == L->n) {
            if (tlen && emit(L, T_TEXT, tline, s + p, tlen))
                return -1;
            break;
        }
        char kind = s[k + 1];
        char sign = k + 2 < L->n && (s[k + 2] == '-' || s[k + 2] == '+') ? s[k + 2] : 0;
        /* the '-' of "{{-" must not be mistaken for a negative number in
         * "{{-1}}": Jinja2 treats it as whitespace control too */
        size_t keep = tlen;
        if (sign == '-') {
            while (keep > 0 && is_ws(s[p + keep - 1]))
                keep--;
        } else if (sign != '+' && kind != '{') {
            /* lstrip_blocks: drop spaces between the line start and a tag */
            size_t l = keep;
            while (l > 0 && s[p + l - 1] != '\n')
                l--;
            if (l > 0 || line_starting) {
                size_t j = l;
                while (j < keep && is_ws(s[p + j]) && s[p + j] != '\n')
                    j++;
                if (j == keep)
                    keep = l;
            }
        }
        if (keep && emit(L, T_TEXT, tline, s + p, keep))
            return -1;
        L->line += count_nl(s + p, tlen);
        L->pos = k + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            size_t q = L->pos;
            while (q + 1 < L->n && !(s[q] == '#' && s[q + 1] == '}'))
                q++;
            if (q + 1 >= L->n)
                return lex_fail(L, L->line, "unclosed comment");
            L->line += count_nl(s + L->pos, q - L->pos);
            int strip = q > L->pos && s[q - 1] == '-';
            int plus = q > L->pos && s[q - 1] == '+';
            q += 2;
            if (strip) {
                while (q < L->n && is_ws(s[q])) {
                    L->line += s[q] == '\n';
                    q++;
                }
            } else if (!plus && q < L->n && s[q] == '\n') {
                q++;
                L->line++;
            }
            L->pos = q;
            line_starting = s[q - 1] == '\n';
            continue;
        }
        size_t first = L->nt;
        if (emit(L, kind == '%' ? T_BBEGIN : T_VBEGIN, L->line, NULL, 0))
            return -1;
        if (lex_tag(L, kind == '%'))
            return -1;
        line_starting = s[L->pos - 1] == '\n';
        /* {% raw %}: everything up to {% endraw %} is text */
        if (kind == '%' && L->nt == first + 3 && L->v[first + 1].t == T_NAME && L->v[first + 1].n == 3 &&
            memcmp(L->v[first + 1].s, "raw", 3) == 0) {
            int rline = L->v[first].line;
            L->nt = first;
            size_t tag_end;
            int ls, rs;
            size_t e = find_endraw(s, L->n, L->pos, &tag_end, &ls, &rs);
            if (e == L->n)
                return lex_fail(L, rline, "missing {% endraw %}");
            size_t blen = e - L->pos;
            if (ls)
                while (blen > 0 && is_ws(s[L->pos + blen - 1]))
                    blen--;
            if (blen && emit(L, T_TEXT, L->line, s + L->pos, blen))
                return -1;
            L->line += count_nl(s + L->pos, tag_end - L->pos);
            size_t q = tag_end;
            if (rs) {
                while (q < L->n && is_ws(s[q])) {
                    L->line += s[q] == '\n';
                    q++;
                }
            } else if (q < L->n && s[q] == '\n') {
                q++;
                L->line++;
            }
            L->pos = q;
            line_starting = s[q - 1] == '\n';
        }
    }
    return emit(L, T_EOF, L->line, NULL, 0);
}

/* ------------------------------------------------------------------ AST */

enum {
    /* expressions */
    E_LIT, E_NAME, E_ATTR, E_INDEX, E_SLICE, E_CALL, E_FILTER, E_TEST, E_NEG, E_POS, E_BIN,
    E_AND, E_OR, E_NOT, E_COND, E_LIST, E_DICT, E_KW, E_PIPEIN,
    /* statements */
    S_BODY, S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_MACRO, S_CALLBLOCK, S_FILTERBLOCK,
    S_BREAK, S_CONTINUE, S_DO
};

typedef struct nlist {
    node **v;
    size_t n, cap;
} nlist;

struct node {
    int k, line;
    const char *s; /* name, text, operator */
    size_t n;
    jv lit;
    node *a, *b, *c, *d;
    nlist l1, l2;
    int neg; /* E_TEST: "is not" */
};

struct exsa_jinja {
    arena a;
    node *root;
};

typedef struct parser {
    tok *t;
    size_t pos, nt;
    arena *a;
    exsa_err *err;
    int failed, depth;
} parser;

#define MAX_DEPTH 96

static node *perr(parser *P, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static node *perr(parser *P, int line, const char *fmt, ...)
{
    if (!P->failed) {
        char m[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(m, sizeof m, fmt, ap);
        va_end(ap);
        exsa_err_set(P->err, EXSA_EINVAL, "jinja: line %d: %s", line, m);
    }
    P->failed = 1;
    return NULL;
}

static node *mk(parser *P, int k, int line)
{
    node *n = aalloc(P->a, sizeof *n);
    if (!n)
        return perr(P, line, "out of memory");
    memset(n, 0, sizeof *n);
    n->k = k;
    n->line = line;
    return n;
}

static int nl_push(parser *P, nlist *l, node *x)
{
    if (l->n == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 4;
        node **v = aalloc(P->a, c * sizeof *v);
        if (!v) {
            perr(P, x ? x->line : 0, "out of memory");
            return -1;
        }
        if (l->n)
            memcpy(v, l->v, l->n * sizeof *v);
        l->v = v;
        l->cap = c;
    }
    l->v[l->n++] = x;
    return 0;
}

static tok *cur(parser *P)
{
    return &P->t[P->pos];
}
static int is_op(tok *t, const char *op)
{
    return t->t == T_OP && t->n == strlen(op) && memcmp(t->s, op, t->n) == 0;
}
static int is_name(tok *t, const char *nm)
{
    return t->t == T_NAME && t->n == strlen(nm) && memcmp(t->s, nm, t->n) == 0;
}
static void adv(parser *P)
{
    if (P->t[P->pos].t != T_EOF)
        P->pos++;
}
static int expect_op(parser *P, const char *op)
{
    if (!is_op(cur(P), op)) {
        perr(P, cur(P)->line, "expected '%s'", op);
        return -1;
    }
    adv(P);
    return 0;
}

static const char *tok_desc(tok *t, char *buf, size_t n)
{
    switch (t->t) {
    case T_EOF: return "end of template";
    case T_TEXT: return "text";
    case T_VBEGIN: return "'{{'";
    case T_VEND: return "'}}'";
    case T_BBEGIN: return "'{%'";
    case T_BEND: return "'%}'";
    default:
        snprintf(buf, n, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s ? t->s : "");
        return buf;
    }
}

static node *p_expr(parser *P, int with_cond);
static node *p_tuple(parser *P, int with_cond);
static node *p_unary(parser *P, int with_filter);

static const char *const FILTERS[] = {
    "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first",
    "float", "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max",
    "min", "reject", "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr",
    "sort", "string", "sum", "title", "tojson", "trim", "unique", "upper", "wordcount",
    NULL};
static const char *const TESTS[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false",
    "filter", "float", "ge", "gt", "greaterthan", "in", "integer", "iterable", "le", "lower", "lt",
    "lessthan", "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string", "test",
    "true", "undefined", "upper", "==", "!=", "<", "<=", ">", ">=", NULL};

static int in_list(const char *const *l, const char *s, size_t n)
{
    for (; *l; l++)
        if (strlen(*l) == n && memcmp(*l, s, n) == 0)
            return 1;
    return 0;
}

/* ( args ) after the '(' has been seen; kwargs go to l2 as E_KW nodes. */
static int p_args(parser *P, nlist *args, nlist *kw)
{
    if (expect_op(P, "("))
        return -1;
    while (!is_op(cur(P), ")")) {
        tok *t = cur(P);
        if (t->t == T_EOF || t->t == T_BEND || t->t == T_VEND) {
            perr(P, t->line, "unclosed '(' in call");
            return -1;
        }
        if (t->t == T_NAME && is_op(&P->t[P->pos + 1], "=")) {
            node *k = mk(P, E_KW, t->line);
            if (!k)
                return -1;
            k->s = t->s;
            k->n = t->n;
            adv(P);
            adv(P);
            k->a = p_expr(P, 1);
            if (!k->a || nl_push(P, kw, k))
                return -1;
        } else {
            if (is_op(t, "*") || is_op(t, "**")) {
                perr(P, t->line, "*args / **kwargs in calls are not supported");
                return -1;
            }
            node *x = p_expr(P, 1);
            if (!x || nl_push(P, args, x))
                return -1;
        }
        if (is_op(cur(P), ","))
            adv(P);
        else if (!is_op(cur(P), ")")) {
            perr(P, cur(P)->line, "expected ',' or ')' in call arguments");
            return -1;
        }
    }
    adv(P);
    return 0;
}

static node *p_primary(parser *P)
{
    tok *t = cur(P);
    node *n;
    if (++P->depth > MAX_DEPTH)
        return perr(P, t->line, "expression nested too deeply");
    switch (t->t) {
    case T_NAME:
        n = mk(P, E_LIT, t->line);
        if (!n)
            return NULL;
        if (is_name(t, "true") || is_name(t, "True"))
            n->lit = vbool(1);
        else if (is_name(t, "false") || is_name(t, "False"))
            n->lit = vbool(0);
        else if (is_name(t, "none") || is_name(t, "None"))
            n->lit = NONE;
        else {
            n->k = E_NAME;
            n->s = t->s;
            n->n = t->n;
        }
        adv(P);
        break;
    case T_STR: {
        /* adjacent literals concatenate, as in Python */
        size_t tot = 0, j = P->pos;
        while (P->t[j].t == T_STR)
            tot += P->t[j++].n;
        char *s = aalloc(P->a, tot + 1);
        n = mk(P, E_LIT, t->line);
        if (!n || !s)
            return perr(P, t->line, "out of memory");
        size_t o = 0;
        while (cur(P)->t == T_STR) {
            memcpy(s + o, cur(P)->s, cur(P)->n);
            o += cur(P)->n;
            adv(P);
        }
        s[o] = '\0';
        n->lit = vstrref(s, o);
        break;
    }
    case T_INT:
        n = mk(P, E_LIT, t->line);
        if (n)
            n->lit = vint(t->i);
        adv(P);
        break;
    case T_FLOAT:
        n = mk(P, E_LIT, t->line);
        if (n)
            n->lit = vflt(t->f);
        adv(P);
        break;
    case T_OP:
        if (is_op(t, "(")) {
            adv(P);
            if (is_op(cur(P), ")")) { /* empty tuple */
                adv(P);
                n = mk(P, E_LIST, t->line);
                if (n)
                    n->neg = 1;
                break;
            }
            n = p_tuple(P, 1);
            if (!n || expect_op(P, ")"))
                return NULL;
            break;
        }
        if (is_op(t, "[")) {
            adv(P);
            n = mk(P, E_LIST, t->line);
            if (!n)
                return NULL;
            while (!is_op(cur(P), "]")) {
                node *x = p_expr(P, 1);
                if (!x || nl_push(P, &n->l1, x))
                    return NULL;
                if (is_op(cur(P), ","))
                    adv(P);
                else if (!is_op(cur(P), "]"))
                    return perr(P, cur(P)->line, "expected ',' or ']' in list literal");
            }
            adv(P);
            break;
        }
        if (is_op(t, "{")) {
            adv(P);
            n = mk(P, E_DICT, t->line);
            if (!n)
                return NULL;
            while (!is_op(cur(P), "}")) {
                node *k = p_expr(P, 1);
                if (!k || expect_op(P, ":"))
                    return NULL;
                node *v = p_expr(P, 1);
                if (!v || nl_push(P, &n->l1, k) || nl_push(P, &n->l2, v))
                    return NULL;
                if (is_op(cur(P), ","))
                    adv(P);
                else if (!is_op(cur(P), "}"))
                    return perr(P, cur(P)->line, "expected ',' or '}' in dict literal");
            }
            adv(P);
            break;
        }
        /* fallthrough */
    default: {
        char b[64];
        return perr(P, t->line, "unexpected %s in expression", tok_desc(t, b, sizeof b));
    }
    }
    P->depth--;
    return n;
}

/* .name / .0 / [index] / [a:b:c] / (args) */
static node *p_postfix(parser *P, node *n)
{
    while (n) {
        tok *t = cur(P);
        if (is_op(t, ".")) {
            adv(P);
            tok *a = cur(P);
            if (a->t == T_NAME) {
                node *x = mk(P, E_ATTR, a->line);
                if (!x)
                    return NULL;
                x->a = n;
                x->s = a->s;
                x->n = a->n;
                n = x;
            } else if (a->t == T_INT) {
                node *x = mk(P, E_INDEX, a->line), *i = mk(P, E_LIT, a->line);
                if (!x || !i)
                    return NULL;
                i->lit = vint(a->i);
                x->a = n;
                x->b = i;
                n = x;
            } else
                return perr(P, a->line, "expected a name after '.'");
            adv(P);
        } else if (is_op(t, "[")) {
            adv(P);
            node *parts[3] = {NULL, NULL, NULL};
            int np = 0, slice = 0;
            for (;;) {
                if (is_op(cur(P), ":")) {
                    slice = 1;
                    if (++np > 2)
                        return perr(P, cur(P)->line, "too many ':' in slice");
                    adv(P);
                    continue;
                }
                if (is_op(cur(P), "]"))
                    break;
                if (parts[np])
                    return perr(P, cur(P)->line, "expected ']'");
                parts[np] = p_expr(P, 1);
                if (!parts[np])
                    return NULL;
            }
            adv(P);
            node *x = mk(P, slice ? E_SLICE : E_INDEX, t->line);
            if (!x)
                return NULL;
            x->a = n;
            if (slice) {
                x->b = parts[0];
                x->c = parts[1];
                x->d = parts[2];
            } else {
                if (!parts[0])
                    return perr(P, t->line, "empty subscript");
                x->b = parts[0];
            }
            n = x;
        } else if (is_op(t, "(")) {
            node *x = mk(P, E_CALL, t->line);
            if (!x)
                return NULL;
            x->a = n;
            if (p_args(P, &x->l1, &x->l2))
                return NULL;
            n = x;
        } else
            break;
    }
    return n;
}

/* A dotted filter/test name into one arena string. */
static int p_dotted(parser *P, const char **s, size_t *n)
{
    tok *t = cur(P);
    if (t->t != T_NAME) {
        perr(P, t->line, "expected a filter or test name");
        return -1;
    }
    *s = t->s;
    *n = t->n;
    adv(P);
    while (is_op(cur(P), ".") && P->t[P->pos + 1].t == T_NAME) {
        adv(P);
        *n = (size_t)(cur(P)->s + cur(P)->n - *s);
        adv(P);
    }
    return 0;
}

/* name[(args)] applied to n */
static node *p_one_filter(parser *P, node *n)
{
    if (!n)
        return NULL;
    node *f = mk(P, E_FILTER, cur(P)->line);
    if (!f || p_dotted(P, &f->s, &f->n))
        return NULL;
    if (!in_list(FILTERS, f->s, f->n))
        return perr(P, f->line, "unknown filter '%.*s'", (int)f->n, f->s);
    f->a = n;
    if (is_op(cur(P), "(") && p_args(P, &f->l1, &f->l2))
        return NULL;
    return f;
}

static node *p_filters(parser *P, node *n)
{
    while (n) {
        tok *t = cur(P);
        if (is_op(t, "|")) {
            adv(P);
            n = p_one_filter(P, n);
        } else if (is_name(t, "is")) {
            adv(P);
            node *x = mk(P, E_TEST, t->line);
            if (!x)
                return NULL;
            if (is_name(cur(P), "not")) {
                x->neg = 1;
                adv(P);
            }
            tok *nt = cur(P);
            if (nt->t == T_OP && (is_op(nt, "==") || is_op(nt, "!=") || is_op(nt, "<") ||
                                  is_op(nt, "<=") || is_op(nt, ">") || is_op(nt, ">="))) {
                x->s = nt->s;
                x->n = nt->n;
                adv(P);
            } else if (p_dotted(P, &x->s, &x->n))
                return NULL;
            if (!in_list(TESTS, x->s, x->n))
                return perr(P, x->line, "unknown test '%.*s'", (int)x->n, x->s);
            x->a = n;
            tok *a = cur(P);
            if (is_op(a, "(")) {
                if (p_args(P, &x->l1, &x->l2))
                    return NULL;
            } else if ((a->t == T_NAME || a->t == T_STR || a->t == T_INT || a->t == T_FLOAT ||
                        is_op(a, "[") || is_op(a, "{")) &&
                       !is_name(a, "else") && !is_name(a, "or") && !is_name(a, "and") &&
                       !is_name(a, "if") && !is_name(a, "is") && !is_name(a, "in") &&
                       !is_name(a, "not") && !is_name(a, "for")) {
                node *arg = p_postfix(P, p_primary(P));
                if (!arg || nl_push(P, &x->l1, arg))
                    return NULL;
            }
            n = x;
        } else if (is_op(t, "(")) {
            n = p_postfix(P, n);
        } else
            break;
    }
    return n;
}

static node *p_unary(parser *P, int with_filter)
{
    tok *t = cur(P);
    node *n;
    if (++P->depth > MAX_DEPTH)
        return perr(P, t->line, "expression nested too deeply");
    if (is_op(t, "-") || is_op(t, "+")) {
        adv(P);
        n = mk(P, is_op(t, "-") ? E_NEG : E_POS, t->line);
        if (!n)
            return NULL;
        n->a = p_unary(P, 0);
        if (!n->a)
            return NULL;
    } else
        n = p_primary(P);
    n = p_postfix(P, n);
    if (with_filter)
        n = p_filters(P, n);
    P->depth--;
    return n;
}

static node *mkbin(parser *P, const char *op, size_t opn, node *a, node *b, int line)
{
    if (!a || !b)
        return NULL;
    node *x = mk(P, E_BIN, line);
    if (!x)
        return NULL;
    x->s = op;
    x->n = opn;
    x->a = a;
    x->b = b;
    return x;
}

static node *p_pow(parser *P)
{
    node *n = p_unary(P, 1);
    while (n && is_op(cur(P), "**")) {
        tok *t = cur(P);
        adv(P);
        n = mkbin(P, "**", 2, n, p_unary(P, 1), t->line);
    }
    return n;
}
static node *p_mul(parser *P)
{
    node *n = p_pow(P);
    while (n && (is_op(cur(P), "*") || is_op(cur(P), "/") || is_op(cur(P), "//") || is_op(cur(P), "%"))) {
        tok *t = cur(P);
        adv(P);
        n = mkbin(P, t->s, t->n, n, p_pow(P), t->line);
    }
    return n;
}
static node *p_concat(parser *P)
{
    node *n = p_mul(P);
    while (n && is_op(cur(P), "~")) {
        tok *t = cur(P);
        adv(P);
        n = mkbin(P, "~", 1, n, p_mul(P), t->line);
    }
    return n;
}
static node *p_add(parser *P)
{
    node *n = p_concat(P);
    while (n && (is_op(cur(P), "+") || is_op(cur(P), "-"))) {
        tok *t = cur(P);
        adv(P);
        n = mkbin(P, t->s, t->n, n, p_concat(P), t->line);
    }
    return n;
}
static node *p_cmp(parser *P)
{
    node *n = p_add(P);
    while (n) {
        tok *t = cur(P);
        if (is_op(t, "==") || is_op(t, "!=") || is_op(t, "<") || is_op(t, "<=") || is_op(t, ">") ||
            is_op(t, ">=")) {
            adv(P);
            n = mkbin(P, t->s, t->n, n, p_add(P), t->line);
        } else if (is_name(t, "in")) {
            adv(P);
            n = mkbin(P, "in", 2, n, p_add(P), t->line);
        } else if (is_name(t, "not") && is_name(&P->t[P->pos + 1], "in")) {
            adv(P);
            adv(P);
            n = mkbin(P, "notin", 5, n, p_add(P), t->line);
        } else
            break;
    }
    return n;
}
static node *p_not(parser *P)
{
    tok *t = cur(P);
    if (is_name(t, "not")) {
        if (++P->depth > MAX_DEPTH)
            return perr(P, t->line, "expression nested too deeply");
        adv(P);
        node *n = mk(P, E_NOT, t->line);
        if (!n)
            return NULL;
        n->a = p_not(P);
        P->depth--;
        return n->a ? n : NULL;
    }
    return p_cmp(P);
}
static node *p_and(parser *P)
{
    node *n = p_not(P);
    while (n && is_name(cur(P), "and")) {
        tok *t = cur(P);
        adv(P);
        node *x = mk(P, E_AND, t->line);
        if (!x)
            return NULL;
        x->a = n;
        x->b = p_not(P);
        n = x->b ? x : NULL;
    }
    return n;
}
static node *p_or(parser *P)
{
    node *n = p_and(P);
    while (n && is_name(cur(P), "or")) {
        tok *t = cur(P);
        adv(P);
        node *x = mk(P, E_OR, t->line);
        if (!x)
            return NULL;
        x->a = n;
        x->b = p_and(P);
        n = x->b ? x : NULL;
    }
    return n;
}
static node *p_expr(parser *P, int with_cond)
{
    node *n = p_or(P);
    while (n && with_cond && is_name(cur(P), "if")) {
        tok *t = cur(P);
        if (++P->depth > MAX_DEPTH)
            return perr(P, t->line, "expression nested too deeply");
        adv(P);
        node *x = mk(P, E_COND, t->line);
        if (!x)
            return NULL;
        x->b = n;
        x->a = p_or(P);
        if (!x->a)
            return NULL;
        if (is_name(cur(P), "else")) {
            adv(P);
            x->c = p_expr(P, 1);
            if (!x->c)
                return NULL;
        }
        P->depth--;
        n = x;
    }
    return n;
}
/* a, b, c  (a tuple, represented as a list) or a single expression */
static node *p_tuple(parser *P, int with_cond)
{
    node *n = p_expr(P, with_cond);
    if (!n || !is_op(cur(P), ","))
        return n;
    node *t = mk(P, E_LIST, n->line);
    if (!t || nl_push(P, &t->l1, n))
        return NULL;
    t->neg = 1; /* a tuple: prints as (a, b) */
    while (is_op(cur(P), ",")) {
        adv(P);
        tok *c = cur(P);
        if (c->t == T_VEND || c->t == T_BEND || is_op(c, ")") || is_op(c, "]") || is_name(c, "in") ||
            is_name(c, "if") || is_op(c, "="))
            break;
        node *x = p_expr(P, with_cond);
        if (!x || nl_push(P, &t->l1, x))
            return NULL;
    }
    return t;
}

/* ------------------------------------------------------------ statements */

static node *p_body(parser *P, const char *const *ends, const char **which, int open_line);

static int expect_bend(parser *P)
{
    if (cur(P)->t != T_BEND) {
        char b[64];
        perr(P, cur(P)->line, "expected '%%}', found %s", tok_desc(cur(P), b, sizeof b));
        return -1;
    }
    adv(P);
    return 0;
}

/* Assignment targets: name | name.attr | a, b | (a, b) */
static int p_targets(parser *P, nlist *out, int allow_attr)
{
    int paren = 0;
    if (is_op(cur(P), "(")) {
        paren = 1;
        adv(P);
    }
    for (;;) {
        tok *t = cur(P);
        if (t->t != T_NAME) {
            perr(P, t->line, "expected a variable name");
            return -1;
        }
        node *x = mk(P, E_NAME, t->line);
        if (!x)
            return -1;
        x->s = t->s;
        x->n = t->n;
        adv(P);
        if (allow_attr && is_op(cur(P), ".")) {
            adv(P);
            tok *a = cur(P);
            if (a->t != T_NAME) {
                perr(P, a->line, "expected an attribute name");
                return -1;
            }
            node *y = mk(P, E_ATTR, a->line);
            if (!y)
                return -1;
            y->a = x;
            y->s = a->s;
            y->n = a->n;
            x = y;
            adv(P);
        }
        if (nl_push(P, out, x))
            return -1;
        if (!is_op(cur(P), ","))
            break;
        adv(P);
    }
    if (paren && expect_op(P, ")"))
        return -1;
    return 0;
}

static node *p_stmt(parser *P)
{
    tok *kw = cur(P);
    int line = kw->line;
    if (kw->t != T_NAME) {
        char b[64];
        return perr(P, line, "expected a statement name, found %s", tok_desc(kw, b, sizeof b));
    }
    adv(P);
    if (is_name(kw, "if") || is_name(kw, "elif")) {
        node *n = mk(P, S_IF, line);
        if (!n)
            return NULL;
        n->a = p_tuple(P, 0);
        if (!n->a || expect_bend(P))
            return NULL;
        static const char *const ends[] = {"elif", "else", "endif", NULL};
        const char *w;
        n->b = p_body(P, ends, &w, line);
        if (!n->b)
            return NULL;
        if (strcmp(w, "elif") == 0) {
            P->pos--; /* reparse "elif" as a nested if that owns the endif */
            n->c = p_stmt(P);
            return n->c ? n : NULL;
        }
        if (strcmp(w, "else") == 0) {
            if (expect_bend(P))
                return NULL;
            static const char *const e2[] = {"endif", NULL};
            n->c = p_body(P, e2, &w, line);
            if (!n->c)
                return NULL;
        }
        return expect_bend(P) ? NULL : n;
    }
    if (is_name(kw, "for")) {
        node *n = mk(P, S_FOR, line);
        if (!n || p_targets(P, &n->l1, 0))
            return NULL;
        if (!is_name(cur(P), "in"))
            return perr(P, cur(P)->line, "expected 'in' in for loop");
        adv(P);
        n->a = p_tuple(P, 0);
        if (!n->a)
            return NULL;
        if (is_name(cur(P), "if")) {
            adv(P);
            n->d = p_expr(P, 1);
            if (!n->d)
                return NULL;
        }
        if (is_name(cur(P), "recursive"))
            return perr(P, cur(P)->line, "recursive for loops are not supported");
        if (expect_bend(P))
            return NULL;
        static const char *const ends[] = {"else", "endfor", NULL};
        const char *w;
        n->b = p_body(P, ends, &w, line);
        if (!n->b)
            return NULL;
        if (strcmp(w, "else") == 0) {
            if (expect_bend(P))
                return NULL;
            static const char *const e2[] = {"endfor", NULL};
            n->c = p_body(P, e2, &w, line);
            if (!n->c)
                return NULL;
        }
        return expect_bend(P) ? NULL : n;
    }
    if (is_name(kw, "set")) {
        node *n = mk(P, S_SET, line);
        if (!n || p_targets(P, &n->l1, 1))
            return NULL;
        if (is_op(cur(P), "=")) {
            adv(P);
            n->a = p_tuple(P, 1);
            if (!n->a || expect_bend(P))
                return NULL;
            return n;
        }
        n->k = S_SETBLOCK;
        if (n->l1.n != 1 || n->l1.v[0]->k != E_NAME)
            return perr(P, line, "block set needs a single variable name");
        if (is_op(cur(P), "|")) {
            /* {% set x | filter %}: the filter node's input is filled in at run time */
            n->c = p_filters(P, mk(P, E_PIPEIN, line));
            if (!n->c)
                return NULL;
        }
        if (expect_bend(P))
            return NULL;
        static const char *const ends[] = {"endset", NULL};
        const char *w;
        n->b = p_body(P, ends, &w, line);
        return n->b && !expect_bend(P) ? n : NULL;
    }
    if (is_name(kw, "macro") || is_name(kw, "call")) {
        int is_macro = is_name(kw, "macro");
        node *n = mk(P, is_macro ? S_MACRO : S_CALLBLOCK, line);
        if (!n)
            return NULL;
        if (is_macro) {
            if (cur(P)->t != T_NAME)
                return perr(P, line, "expected a macro name");
            n->s = cur(P)->s;
            n->n = cur(P)->n;
            adv(P);
        }
        if (is_macro && !is_op(cur(P), "("))
            return perr(P, line, "expected '(' after the macro name");
        /* macro parameters, or {% call(params) m() %} caller parameters */
        if (is_op(cur(P), "(")) {
            adv(P);
            while (!is_op(cur(P), ")")) {
                tok *t = cur(P);
                if (t->t != T_NAME)
                    return perr(P, t->line, "expected a parameter name");
                node *p = mk(P, E_NAME, t->line);
                if (!p)
                    return NULL;
                p->s = t->s;
                p->n = t->n;
                adv(P);
                if (is_op(cur(P), "=")) {
                    adv(P);
                    p->a = p_expr(P, 1);
                    if (!p->a)
                        return NULL;
                }
                if (nl_push(P, &n->l1, p))
                    return NULL;
                if (is_op(cur(P), ","))
                    adv(P);
                else if (!is_op(cur(P), ")"))
                    return perr(P, cur(P)->line, "expected ',' or ')' in parameters");
            }
            adv(P);
        }
        if (!is_macro) {
            n->a = p_expr(P, 1);
            if (!n->a)
                return NULL;
            if (n->a->k != E_CALL)
                return perr(P, line, "{%% call %%} needs a macro call");
        }
        if (expect_bend(P))
            return NULL;
        static const char *const em[] = {"endmacro", NULL};
        static const char *const ec[] = {"endcall", NULL};
        const char *w;
        n->b = p_body(P, is_macro ? em : ec, &w, line);
        if (!n->b)
            return NULL;
        if (cur(P)->t == T_NAME) /* {% endmacro name %} */
            adv(P);
        return expect_bend(P) ? NULL : n;
    }
    if (is_name(kw, "filter")) {
        node *n = mk(P, S_FILTERBLOCK, line);
        if (!n)
            return NULL;
        n->c = p_one_filter(P, mk(P, E_PIPEIN, line));
        if (!n->c)
            return NULL;
        while (is_op(cur(P), "|")) {
            adv(P);
            n->c = p_one_filter(P, n->c);
            if (!n->c)
                return NULL;
        }
        if (expect_bend(P))
            return NULL;
        static const char *const ends[] = {"endfilter", NULL};
        const char *w;
        n->b = p_body(P, ends, &w, line);
        return n->b && !expect_bend(P) ? n : NULL;
    }
    if (is_name(kw, "generation")) {
        if (expect_bend(P))
            return NULL;
        static const char *const ends[] = {"endgeneration", NULL};
        const char *w;
        node *b = p_body(P, ends, &w, line);
        return b && !expect_bend(P) ? b : NULL;
    }
    if (is_name(kw, "break") || is_name(kw, "continue")) {
        node *n = mk(P, is_name(kw, "break") ? S_BREAK : S_CONTINUE, line);
        return n && !expect_bend(P) ? n : NULL;
    }
    if (is_name(kw, "do")) {
        node *n = mk(P, S_DO, line);
        if (!n)
            return NULL;
        n->a = p_tuple(P, 1);
        return n->a && !expect_bend(P) ? n : NULL;
    }
    return perr(P, line, "unknown or unsupported statement '%.*s'", (int)kw->n, kw->s);
}

static const char *const ALL_ENDS[] = {"elif", "else", "endif", "endfor", "endset", "endmacro",
                                       "endcall", "endfilter", "endgeneration", NULL};

/* Parses statements until one of ends (consumed up to the keyword; the
 * caller expects the '%}'); ends == NULL parses to the end of input. */
static node *p_body(parser *P, const char *const *ends, const char **which, int open_line)
{
    if (++P->depth > MAX_DEPTH)
        return perr(P, open_line, "blocks nested too deeply");
    node *b = mk(P, S_BODY, open_line);
    if (!b)
        return NULL;
    for (;;) {
        tok *t = cur(P);
        if (t->t == T_EOF) {
            if (ends)
                return perr(P, t->line, "unexpected end of template, expected '%s' (block opened at line %d)",
                            ends[ends[1] ? 1 : 0], open_line);
            break;
        }
        node *s = NULL;
        if (t->t == T_TEXT) {
            s = mk(P, S_TEXT, t->line);
            if (!s)
                return NULL;
            s->s = t->s;
            s->n = t->n;
            adv(P);
        } else if (t->t == T_VBEGIN) {
            adv(P);
            s = mk(P, S_OUT, t->line);
            if (!s)
                return NULL;
            s->a = p_tuple(P, 1);
            if (!s->a)
                return NULL;
            if (cur(P)->t != T_VEND) {
                char bb[64];
                return perr(P, cur(P)->line, "expected '}}', found %s", tok_desc(cur(P), bb, sizeof bb));
            }
            adv(P);
        } else if (t->t == T_BBEGIN) {
            adv(P);
            tok *k = cur(P);
            if (k->t == T_NAME && in_list(ALL_ENDS, k->s, k->n)) {
                if (ends && in_list(ends, k->s, k->n)) {
                    for (const char *const *e = ends; *e; e++)
                        if (strlen(*e) == k->n && memcmp(*e, k->s, k->n) == 0)
                            *which = *e;
                    adv(P);
                    P->depth--;
                    return b;
                }
                return perr(P, k->line, "unexpected '%.*s'", (int)k->n, k->s);
            }
            s = p_stmt(P);
            if (!s)
                return NULL;
        } else {
            char bb[64];
            return perr(P, t->line, "unexpected %s", tok_desc(t, bb, sizeof bb));
        }
        if (nl_push(P, &b->l1, s))
            return NULL;
    }
    P->depth--;
    return b;
}

exsa_jinja *exsa_jinja_parse(const char *src, size_t len, exsa_err *err)
{
    if (!src && len)
        return exsa_err_set(err, EXSA_EINVAL, "jinja: NULL template"), NULL;
    exsa_jinja *t = calloc(1, sizeof *t);
    if (!t)
        return exsa_err_set(err, EXSA_ENOMEM, "jinja: out of memory"), NULL;
    /* Jinja2 normalizes \r\n and \r to \n and drops one trailing newline */
    char *s = aalloc(&t->a, len + 1);
    if (!s) {
        exsa_jinja_destroy(t);
        return exsa_err_set(err, EXSA_ENOMEM, "jinja: out of memory"), NULL;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else
            s[n++] = src[i];
    }
    if (n > 0 && s[n - 1] == '\n')
        n--;
    s[n] = '\0';
    lexer L = {.src = s, .n = n, .a = &t->a, .err = err};
    if (lex(&L)) {
        free(L.v);
        exsa_jinja_destroy(t);
        return NULL;
    }
    parser P = {.t = L.v, .nt = L.nt, .a = &t->a, .err = err};
    t->root = p_body(&P, NULL, NULL, 1);
    free(L.v);
    if (!t->root) {
        exsa_jinja_destroy(t);
        return NULL;
    }
    return t;
}

void exsa_jinja_destroy(exsa_jinja *t)
{
    if (!t)
        return;
    afree(&t->a);
    free(t);
}

/* ------------------------------------------------------------ interpreter */

struct frame {
    frame *parent;
    jdict *vars;
};

typedef struct ctx {
    arena a;
    exsa_err *err;
    int failed;
    int ctl; /* pending break (1) / continue (2) */
    sbuf *out;
    size_t max_out;
    uint64_t steps, max_steps;
    int depth; /* macro calls in progress */
    frame *root;
    const struct tm *now;
    jv pipe_in; /* input of a {% filter %} / {% set x | f %} block */
} ctx;

#define MAX_CALL_DEPTH 40

typedef struct cargs {
    jv *pos;
    size_t np;
    const node **kwn; /* E_KW nodes (s, n) */
    jv *kwv;
    size_t nk;
} cargs;

static void rfail(ctx *C, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void rfail(ctx *C, int line, const char *fmt, ...)
{
    if (C->failed)
        return;
    char m[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    exsa_err_set(C->err, EXSA_EINVAL, "jinja: line %d: %s", line, m);
    C->failed = 1;
}

static void *cal(ctx *C, size_t n, int line)
{
    void *p = aalloc(&C->a, n);
    if (!p) {
        rfail(C, line, "out of memory (render memory limit reached)");
        if (C->err)
            C->err->code = EXSA_ENOMEM;
    }
    return p;
}

static int step(ctx *C, int line, uint64_t n)
{
    if (C->failed)
        return -1;
    if (n > C->max_steps || C->steps > C->max_steps - n) {
        rfail(C, line, "template exceeded %llu steps (runaway loop?)", (unsigned long long)C->max_steps);
        return -1;
    }
    C->steps += n;
    return 0;
}

static jv mkstr(ctx *C, const char *p, size_t n, int line)
{
    char *q = cal(C, n + 1, line);
    if (!q)
        return UNDEF;
    if (n)
        memcpy(q, p, n);
    q[n] = '\0';
    return vstrref(q, n);
}

static jlist *newlist(ctx *C, size_t cap, int line)
{
    jlist *l = cal(C, sizeof *l, line);
    if (!l)
        return NULL;
    memset(l, 0, sizeof *l);
    if (cap) {
        if (cap > SIZE_MAX / sizeof(jv))
            return rfail(C, line, "list too large"), NULL;
        l->v = cal(C, cap * sizeof(jv), line);
        if (!l->v)
            return NULL;
        l->cap = cap;
    }
    return l;
}

static int lpush(ctx *C, jlist *l, jv v, int line)
{
    if (l->n == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 4;
        if (c > SIZE_MAX / sizeof(jv) / 2)
            return rfail(C, line, "list too large"), -1;
        jv *nv = cal(C, c * sizeof(jv), line);
        if (!nv)
            return -1;
        if (l->n)
            memcpy(nv, l->v, l->n * sizeof(jv));
        l->v = nv;
        l->cap = c;
    }
    l->v[l->n++] = v;
    return 0;
}

static jv vlist(jlist *l)
{
    jv v = {.t = V_LIST};
    v.u.l = l;
    return v;
}
static jv vdict(jdict *d, int t)
{
    jv v = {.t = t};
    v.u.d = d;
    return v;
}

static jdict *newdict(ctx *C, int line)
{
    jdict *d = cal(C, sizeof *d, line);
    if (d)
        memset(d, 0, sizeof *d);
    return d;
}

static int veq(jv a, jv b);

static long dfind(const jdict *d, jv key)
{
    for (size_t i = 0; i < d->n; i++)
        if (veq(d->k[i], key))
            return (long)i;
    return -1;
}
static long dfinds(const jdict *d, const char *s, size_t n)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == V_STR && d->k[i].u.s.n == n && memcmp(d->k[i].u.s.p, s, n) == 0)
            return (long)i;
    return -1;
}

static int dset(ctx *C, jdict *d, jv k, jv v, int line)
{
    long i = dfind(d, k);
    if (i >= 0) {
        d->v[i] = v;
        return 0;
    }
    if (d->n == d->cap) {
        size_t c = d->cap ? d->cap * 2 : 4;
        if (c > SIZE_MAX / sizeof(jv) / 2)
            return rfail(C, line, "dict too large"), -1;
        jv *nk = cal(C, c * sizeof(jv), line), *nv = cal(C, c * sizeof(jv), line);
        if (!nk || !nv)
            return -1;
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(jv));
            memcpy(nv, d->v, d->n * sizeof(jv));
        }
        d->k = nk;
        d->v = nv;
        d->cap = c;
    }
    d->k[d->n] = k;
    d->v[d->n] = v;
    d->n++;
    return 0;
}

static sbuf sbnew(ctx *C)
{
    sbuf b = {.limit = C->max_out};
    return b;
}

/* Moves a builder's text into the arena as a string value. */
static jv sbtake(ctx *C, sbuf *b, int line)
{
    jv r = UNDEF;
    if (b->over)
        rfail(C, line, b->over == 2 ? "out of memory" : "string longer than the output limit (%zu bytes)",
              C->max_out);
    else
        r = mkstr(C, b->p ? b->p : "", b->n, line);
    free(b->p);
    b->p = NULL;
    return r;
}

/* ---- conversions ---- */

static int truthy(jv v)
{
    switch (v.t) {
    case V_UNDEF:
    case V_NONE: return 0;
    case V_BOOL: return v.u.b;
    case V_INT: return v.u.i != 0;
    case V_FLOAT: return v.u.f != 0.0;
    case V_STR: return v.u.s.n != 0;
    case V_LIST: return v.u.l->n != 0;
    case V_DICT: return v.u.d->n != 0;
    default: return 1;
    }
}

static int isnum(jv v)
{
    return v.t == V_INT || v.t == V_FLOAT || v.t == V_BOOL;
}
static double numf(jv v)
{
    return v.t == V_FLOAT ? v.u.f : v.t == V_INT ? (double)v.u.i : (double)v.u.b;
}
static int64_t numi(jv v)
{
    return v.t == V_INT ? v.u.i : v.t == V_BOOL ? v.u.b : (int64_t)v.u.f;
}

static const char *tname(jv v)
{
    static const char *const names[] = {"Undefined", "NoneType", "bool", "int", "float", "str",
                                        "list", "dict", "Namespace", "function", "LoopContext"};
    if (v.t == V_LIST && v.u.l->tuple)
        return "tuple";
    return names[v.t];
}

/* Python's repr(float): the shortest digits that round-trip. */
static void fmt_float(double d, char *out, size_t on)
{
    if (isnan(d)) {
        snprintf(out, on, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(out, on, d < 0 ? "-inf" : "inf");
        return;
    }
    if (d == 0) {
        snprintf(out, on, signbit(d) ? "-0.0" : "0.0");
        return;
    }
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    /* tmp = [-]D[.DDD]e[+-]XX */
    char dig[24];
    size_t nd = 0;
    const char *q = tmp;
    int neg = 0;
    if (*q == '-') {
        neg = 1;
        q++;
    }
    while (*q && *q != 'e') {
        if (*q != '.' && nd < sizeof dig - 1)
            dig[nd++] = *q;
        q++;
    }
    dig[nd] = '\0';
    int ex = *q == 'e' ? atoi(q + 1) : 0;
    while (nd > 1 && dig[nd - 1] == '0')
        dig[--nd] = '\0';
    char buf[64];
    size_t o = 0;
    if (neg)
        buf[o++] = '-';
    if (ex < -4 || ex >= 16) {
        buf[o++] = dig[0];
        if (nd > 1) {
            buf[o++] = '.';
            for (size_t i = 1; i < nd; i++)
                buf[o++] = dig[i];
        }
        o += (size_t)snprintf(buf + o, sizeof buf - o, "e%c%02d", ex < 0 ? '-' : '+', ex < 0 ? -ex : ex);
    } else if (ex >= 0) {
        for (int i = 0; i <= ex; i++)
            buf[o++] = (size_t)i < nd ? dig[i] : '0';
        buf[o++] = '.';
        if ((size_t)ex + 1 < nd)
            for (size_t i = (size_t)ex + 1; i < nd; i++)
                buf[o++] = dig[i];
        else
            buf[o++] = '0';
        buf[o] = '\0';
    } else {
        buf[o++] = '0';
        buf[o++] = '.';
        for (int i = 0; i < -ex - 1; i++)
            buf[o++] = '0';
        for (size_t i = 0; i < nd; i++)
            buf[o++] = dig[i];
        buf[o] = '\0';
    }
    snprintf(out, on, "%s", buf);
}

static void repr_str(sbuf *b, const char *p, size_t n)
{
    int sq = memchr(p, '\'', n) != NULL, dq = memchr(p, '"', n) != NULL;
    char q = sq && !dq ? '"' : '\'';
    sb_putc(b, q);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == (unsigned char)q || c == '\\') {
            sb_putc(b, '\\');
            sb_putc(b, (char)c);
        } else if (c == '\n')
            sb_puts(b, "\\n");
        else if (c == '\r')
            sb_puts(b, "\\r");
        else if (c == '\t')
            sb_puts(b, "\\t");
        else if (c < 0x20 || c == 0x7f)
            sb_printf(b, "\\x%02x", c);
        else
            sb_putc(b, (char)c);
    }
    sb_putc(b, q);
}

static void vstr_(sbuf *b, jv v, int repr, int depth);

static void vstr_seq(sbuf *b, jv v, int depth)
{
    if (v.t == V_LIST) {
        jlist *l = v.u.l;
        sb_putc(b, l->tuple ? '(' : '[');
        for (size_t i = 0; i < l->n && !b->over; i++) {
            if (i)
                sb_puts(b, ", ");
            vstr_(b, l->v[i], 1, depth + 1);
        }
        if (l->tuple && l->n == 1)
            sb_putc(b, ',');
        sb_putc(b, l->tuple ? ')' : ']');
    } else {
        jdict *d = v.u.d;
        sb_putc(b, '{');
        for (size_t i = 0; i < d->n && !b->over; i++) {
            if (i)
                sb_puts(b, ", ");
            vstr_(b, d->k[i], 1, depth + 1);
            sb_puts(b, ": ");
            vstr_(b, d->v[i], 1, depth + 1);
        }
        sb_putc(b, '}');
    }
}

/* Python str() (repr = 0) or repr() (repr = 1). */
static void vstr_(sbuf *b, jv v, int repr, int depth)
{
    char tmp[64];
    if (depth > 200) {
        sb_puts(b, "[...]");
        return;
    }
    switch (v.t) {
    case V_UNDEF: break;
    case V_NONE: sb_puts(b, "None"); break;
    case V_BOOL: sb_puts(b, v.u.b ? "True" : "False"); break;
    case V_INT: sb_printf(b, "%lld", (long long)v.u.i); break;
    case V_FLOAT:
        fmt_float(v.u.f, tmp, sizeof tmp);
        sb_puts(b, tmp);
        break;
    case V_STR:
        if (repr)
            repr_str(b, v.u.s.p, v.u.s.n);
        else
            sb_put(b, v.u.s.p, v.u.s.n);
        break;
    case V_LIST:
    case V_DICT: vstr_seq(b, v, depth); break;
    case V_NS:
        sb_puts(b, "<Namespace ");
        vstr_seq(b, vdict(v.u.d, V_DICT), depth);
        sb_putc(b, '>');
        break;
    case V_FUNC: sb_printf(b, "<function %s>", v.u.fn->name ? v.u.fn->name : "macro"); break;
    case V_LOOP: sb_puts(b, "<LoopContext>"); break;
    }
}

static jv tostr(ctx *C, jv v, int line)
{
    if (v.t == V_STR)
        return v;
    sbuf b = sbnew(C);
    vstr_(&b, v, 0, 0);
    return sbtake(C, &b, line);
}

/* json.dumps(v, ensure_ascii, indent, separators, sort_keys) */
typedef struct jopt {
    int indent; /* < 0: none */
    const char *isep, *ksep;
    size_t isepn, ksepn;
    int ascii, sort;
} jopt;

static void json_str(sbuf *b, const char *p, size_t n, int ascii)
{
    sb_putc(b, '"');
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\') {
            sb_putc(b, '\\');
            sb_putc(b, (char)c);
        } else if (c == '\n')
            sb_puts(b, "\\n");
        else if (c == '\r')
            sb_puts(b, "\\r");
        else if (c == '\t')
            sb_puts(b, "\\t");
        else if (c == '\b')
            sb_puts(b, "\\b");
        else if (c == '\f')
            sb_puts(b, "\\f");
        else if (c < 0x20)
            sb_printf(b, "\\u%04x", c);
        else if (c >= 0x80 && ascii) {
            int32_t cp;
            size_t k = u8dec((const unsigned char *)p + i, n - i, &cp);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                sb_printf(b, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
            } else
                sb_printf(b, "\\u%04x", (unsigned)cp);
            i += k;
            continue;
        } else
            sb_putc(b, (char)c);
        i++;
    }
    sb_putc(b, '"');
}

static int vcmp(ctx *C, int line, jv a, jv b, int *res);

static int vjson(ctx *C, sbuf *b, jv v, const jopt *o, int level, int line)
{
    char tmp[64];
    if (level > 200)
        return rfail(C, line, "tojson: value nested too deeply"), -1;
    switch (v.t) {
    case V_NONE: sb_puts(b, "null"); return 0;
    case V_BOOL: sb_puts(b, v.u.b ? "true" : "false"); return 0;
    case V_INT: sb_printf(b, "%lld", (long long)v.u.i); return 0;
    case V_FLOAT:
        if (isnan(v.u.f))
            sb_puts(b, "NaN");
        else if (isinf(v.u.f))
            sb_puts(b, v.u.f < 0 ? "-Infinity" : "Infinity");
        else {
            fmt_float(v.u.f, tmp, sizeof tmp);
            sb_puts(b, tmp);
        }
        return 0;
    case V_STR: json_str(b, v.u.s.p, v.u.s.n, o->ascii); return 0;
    case V_LIST:
    case V_DICT: {
        int isl = v.t == V_LIST;
        size_t n = isl ? v.u.l->n : v.u.d->n;
        sb_putc(b, isl ? '[' : '{');
        if (n == 0) {
            sb_putc(b, isl ? ']' : '}');
            return 0;
        }
        size_t *ord = NULL;
        if (!isl && o->sort) {
            ord = cal(C, n * sizeof *ord, line);
            if (!ord)
                return -1;
            for (size_t i = 0; i < n; i++) {
                size_t j = i;
                ord[i] = i;
                while (j > 0) { /* insertion sort keeps it stable */
                    int r;
                    if (vcmp(C, line, v.u.d->k[ord[j - 1]], v.u.d->k[ord[j]], &r))
                        return -1;
                    if (r <= 0)
                        break;
                    size_t t = ord[j];
                    ord[j] = ord[j - 1];
                    ord[j - 1] = t;
                    j--;
                }
            }
        }
        for (size_t i = 0; i < n && !b->over; i++) {
            if (i)
                sb_put(b, o->isep, o->isepn);
            if (o->indent >= 0) {
                sb_putc(b, '\n');
                for (int k = 0; k < o->indent * (level + 1); k++)
                    sb_putc(b, ' ');
            }
            if (isl) {
                if (vjson(C, b, v.u.l->v[i], o, level + 1, line))
                    return -1;
                continue;
            }
            size_t j = ord ? ord[i] : i;
            jv k = v.u.d->k[j];
            if (k.t == V_STR)
                json_str(b, k.u.s.p, k.u.s.n, o->ascii);
            else if (k.t == V_INT || k.t == V_FLOAT || k.t == V_BOOL || k.t == V_NONE) {
                sb_putc(b, '"');
                if (vjson(C, b, k, o, level + 1, line))
                    return -1;
                sb_putc(b, '"');
            } else
                return rfail(C, line, "tojson: keys must be str, int, float, bool or None, not %s",
                             tname(k)), -1;
            sb_put(b, o->ksep, o->ksepn);
            if (vjson(C, b, v.u.d->v[j], o, level + 1, line))
                return -1;
        }
        if (o->indent >= 0) {
            sb_putc(b, '\n');
            for (int k = 0; k < o->indent * level; k++)
                sb_putc(b, ' ');
        }
        sb_putc(b, isl ? ']' : '}');
        return 0;
    }
    default:
        return rfail(C, line, "tojson: Object of type %s is not JSON serializable", tname(v)), -1;
    }
}

/* ---- comparison ---- */

static int veq(jv a, jv b)
{
    if (isnum(a) && isnum(b)) {
        if (a.t == V_FLOAT || b.t == V_FLOAT)
            return numf(a) == numf(b);
        return numi(a) == numi(b);
    }
    if (a.t != b.t)
        return 0;
    switch (a.t) {
    case V_UNDEF:
    case V_NONE: return 1;
    case V_STR: return a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case V_LIST:
        if (a.u.l->n != b.u.l->n)
            return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!veq(a.u.l->v[i], b.u.l->v[i]))
                return 0;
        return 1;
    case V_DICT:
        if (a.u.d->n != b.u.d->n)
            return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            long j = dfind(b.u.d, a.u.d->k[i]);
            if (j < 0 || !veq(a.u.d->v[i], b.u.d->v[j]))
                return 0;
        }
        return 1;
    case V_NS: return a.u.d == b.u.d;
    case V_FUNC: return a.u.fn == b.u.fn;
    case V_LOOP: return a.u.lp == b.u.lp;
    }
    return 0;
}

static int vcmp(ctx *C, int line, jv a, jv b, int *res)
{
    if (isnum(a) && isnum(b)) {
        double x = numf(a), y = numf(b);
        if (a.t != V_FLOAT && b.t != V_FLOAT) {
            int64_t i = numi(a), j = numi(b);
            *res = i < j ? -1 : i > j;
        } else
            *res = x < y ? -1 : x > y;
        return 0;
    }
    if (a.t == V_STR && b.t == V_STR) {
        size_t n = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int r = n ? memcmp(a.u.s.p, b.u.s.p, n) : 0;
        *res = r ? (r < 0 ? -1 : 1) : (a.u.s.n < b.u.s.n ? -1 : a.u.s.n > b.u.s.n);
        return 0;
    }
    if (a.t == V_LIST && b.t == V_LIST) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++) {
            if (veq(a.u.l->v[i], b.u.l->v[i]))
                continue;
            return vcmp(C, line, a.u.l->v[i], b.u.l->v[i], res);
        }
        *res = a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
        return 0;
    }
    rfail(C, line, "comparison not supported between instances of '%s' and '%s'", tname(a), tname(b));
    return -1;
}

/* ---- strings by code point ---- */

/* Byte offsets of each code point (n + 1 entries); NULL when ASCII. */
static size_t *cpoffs(ctx *C, const char *p, size_t n, size_t *count, int line)
{
    if (is_ascii(p, n)) {
        *count = n;
        return NULL;
    }
    size_t c = u8len(p, n);
    size_t *o = cal(C, (c + 1) * sizeof *o, line);
    if (!o) {
        *count = 0;
        return NULL;
    }
    size_t i = 0, k = 0;
    int32_t cp;
    while (i < n) {
        o[k++] = i;
        i += u8dec((const unsigned char *)p + i, n - i, &cp);
    }
    o[k] = n;
    *count = c;
    return o;
}

static void slice_bounds(int64_t len, jv *st, jv *sp, int64_t step, int64_t *start, int64_t *stop)
{
    int64_t a, b;
    if (step > 0) {
        a = st && st->t != V_NONE && st->t != V_UNDEF ? numi(*st) : 0;
        b = sp && sp->t != V_NONE && sp->t != V_UNDEF ? numi(*sp) : len;
        if (a < 0)
            a = a + len < 0 ? 0 : a + len;
        if (a > len)
            a = len;
        if (b < 0)
            b = b + len < 0 ? 0 : b + len;
        if (b > len)
            b = len;
    } else {
        a = st && st->t != V_NONE && st->t != V_UNDEF ? numi(*st) : len - 1;
        b = sp && sp->t != V_NONE && sp->t != V_UNDEF ? numi(*sp) : -1;
        int bdef = !(sp && sp->t != V_NONE && sp->t != V_UNDEF);
        if (a < 0)
            a = a + len < 0 ? -1 : a + len;
        if (a >= len)
            a = len - 1;
        if (!bdef) {
            if (b < 0)
                b = b + len < 0 ? -1 : b + len;
            if (b >= len)
                b = len - 1;
        }
    }
    *start = a;
    *stop = b;
}

static jv do_slice(ctx *C, int line, jv obj, jv *st, jv *sp, jv *stp)
{
    int64_t step = stp && stp->t != V_NONE && stp->t != V_UNDEF ? numi(*stp) : 1;
    if (step == 0)
        return rfail(C, line, "slice step cannot be zero"), UNDEF;
    if ((st && st->t != V_NONE && st->t != V_UNDEF && !isnum(*st)) ||
        (sp && sp->t != V_NONE && sp->t != V_UNDEF && !isnum(*sp)) ||
        (stp && stp->t != V_NONE && stp->t != V_UNDEF && !isnum(*stp)))
        return rfail(C, line, "slice indices must be integers or None"), UNDEF;
    if (obj.t == V_LIST) {
        int64_t a, b;
        slice_bounds((int64_t)obj.u.l->n, st, sp, step, &a, &b);
        jlist *l = newlist(C, 0, line);
        if (!l)
            return UNDEF;
        for (int64_t i = a; step > 0 ? i < b : i > b; i += step)
            if (lpush(C, l, obj.u.l->v[i], line))
                return UNDEF;
        return vlist(l);
    }
    if (obj.t == V_STR) {
        size_t cnt;
        size_t *off = cpoffs(C, obj.u.s.p, obj.u.s.n, &cnt, line);
        if (C->failed)
            return UNDEF;
        int64_t a, b;
        slice_bounds((int64_t)cnt, st, sp, step, &a, &b);
        sbuf sb = sbnew(C);
        for (int64_t i = a; step > 0 ? i < b : i > b; i += step) {
            size_t s = off ? off[i] : (size_t)i, e = off ? off[i + 1] : (size_t)i + 1;
            sb_put(&sb, obj.u.s.p + s, e - s);
        }
        return sbtake(C, &sb, line);
    }
    if (obj.t == V_UNDEF)
        return UNDEF;
    return rfail(C, line, "'%s' object is not subscriptable", tname(obj)), UNDEF;
}

static jv getitem(ctx *C, int line, jv obj, jv key)
{
    switch (obj.t) {
    case V_DICT:
    case V_NS: {
        long i = dfind(obj.u.d, key);
        return i >= 0 ? obj.u.d->v[i] : UNDEF;
    }
    case V_LIST:
        if (key.t == V_INT || key.t == V_BOOL) {
            int64_t i = numi(key), n = (int64_t)obj.u.l->n;
            if (i < 0)
                i += n;
            return i >= 0 && i < n ? obj.u.l->v[i] : UNDEF;
        }
        if (key.t == V_LIST) /* a tuple key never matches a list */
            return UNDEF;
        return UNDEF;
    case V_STR:
        if (key.t == V_INT || key.t == V_BOOL) {
            size_t cnt;
            size_t *off = cpoffs(C, obj.u.s.p, obj.u.s.n, &cnt, line);
            if (C->failed)
                return UNDEF;
            int64_t i = numi(key), n = (int64_t)cnt;
            if (i < 0)
                i += n;
            if (i < 0 || i >= n)
                return UNDEF;
            size_t s = off ? off[i] : (size_t)i, e = off ? off[i + 1] : (size_t)i + 1;
            return vstrref(obj.u.s.p + s, e - s);
        }
        return UNDEF;
    default: return UNDEF;
    }
}

static jv mkfunc(ctx *C, int kind, const char *name, jv self, int line)
{
    jfunc *f = cal(C, sizeof *f, line);
    if (!f)
        return UNDEF;
    memset(f, 0, sizeof *f);
    f->kind = kind;
    f->name = name;
    f->self = self;
    jv v = {.t = V_FUNC};
    v.u.fn = f;
    return v;
}

static const char *const STR_METHODS[] = {
    "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "rsplit", "upper", "lower",
    "title", "capitalize", "replace", "find", "rfind", "count", "join", "format", "splitlines",
    "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper", "removeprefix",
    "removesuffix", "index", "swapcase", "casefold", "zfill", "center", "ljust", "rjust",
    "encode", "partition", "rpartition", "expandtabs", "isnumeric", "isdecimal", "istitle",
    "isidentifier", "isprintable", "isascii", "format_map", "translate", "maketrans", NULL};
static const char *const DICT_METHODS[] = {"items", "keys", "values", "get", "pop", "update",
                                           "copy", "clear", "setdefault", "popitem", "fromkeys",
                                           NULL};
static const char *const LIST_METHODS[] = {"append", "extend", "insert", "pop", "remove", "index",
                                           "count", "sort", "reverse", "copy", "clear", NULL};

static jv getattr_(ctx *C, int line, jv obj, const char *name, size_t n)
{
    switch (obj.t) {
    case V_DICT: {
        /* like Python's getattr first: a dict's methods shadow its keys */
        for (const char *const *m = DICT_METHODS; *m; m++)
            if (strlen(*m) == n && memcmp(*m, name, n) == 0)
                return mkfunc(C, F_METHOD, *m, obj, line);
        long i = dfinds(obj.u.d, name, n);
        return i >= 0 ? obj.u.d->v[i] : UNDEF;
    }
    case V_NS: {
        long i = dfinds(obj.u.d, name, n);
        return i >= 0 ? obj.u.d->v[i] : UNDEF;
    }
    case V_STR:
        for (const char *const *m = STR_METHODS; *m; m++)
            if (strlen(*m) == n && memcmp(*m, name, n) == 0)
                return mkfunc(C, F_METHOD, *m, obj, line);
        return UNDEF;
    case V_LIST:
        for (const char *const *m = LIST_METHODS; *m; m++)
            if (strlen(*m) == n && memcmp(*m, name, n) == 0)
                return mkfunc(C, F_METHOD, *m, obj, line);
        return UNDEF;
    case V_LOOP: {
        jloop *lp = obj.u.lp;
        int64_t len = (int64_t)lp->items->n, i = (int64_t)lp->idx;
#define IS(s) (n == sizeof(s) - 1 && memcmp(name, s, n) == 0)
        if (IS("index"))
            return vint(i + 1);
        if (IS("index0"))
            return vint(i);
        if (IS("revindex"))
            return vint(len - i);
        if (IS("revindex0"))
            return vint(len - i - 1);
        if (IS("first"))
            return vbool(i == 0);
        if (IS("last"))
            return vbool(i == len - 1);
        if (IS("length"))
            return vint(len);
        if (IS("depth"))
            return vint(lp->depth);
        if (IS("depth0"))
            return vint(lp->depth - 1);
        if (IS("previtem"))
            return i > 0 ? lp->items->v[i - 1] : UNDEF;
        if (IS("nextitem"))
            return i + 1 < len ? lp->items->v[i + 1] : UNDEF;
        if (IS("cycle"))
            return mkfunc(C, F_METHOD, "cycle", obj, line);
        if (IS("changed"))
            return mkfunc(C, F_METHOD, "changed", obj, line);
#undef IS
        return UNDEF;
    }
    default: return UNDEF;
    }
}

/* Everything iterable as a list: dict -> keys, str -> characters,
 * undefined -> empty (Jinja2's Undefined iterates as empty). */
static jlist *iterlist(ctx *C, int line, jv v)
{
    switch (v.t) {
    case V_LIST: return v.u.l;
    case V_UNDEF: return newlist(C, 0, line);
    case V_DICT: {
        jlist *l = newlist(C, v.u.d->n, line);
        if (!l)
            return NULL;
        for (size_t i = 0; i < v.u.d->n; i++)
            l->v[l->n++] = v.u.d->k[i];
        return l;
    }
    case V_STR: {
        size_t cnt;
        size_t *off = cpoffs(C, v.u.s.p, v.u.s.n, &cnt, line);
        if (C->failed)
            return NULL;
        jlist *l = newlist(C, cnt, line);
        if (!l)
            return NULL;
        for (size_t i = 0; i < cnt; i++) {
            size_t s = off ? off[i] : i, e = off ? off[i + 1] : i + 1;
            l->v[l->n++] = vstrref(v.u.s.p + s, e - s);
        }
        return l;
    }
    default:
        rfail(C, line, "'%s' object is not iterable", tname(v));
        return NULL;
    }
}

static int contains(ctx *C, int line, jv hay, jv needle)
{
    switch (hay.t) {
    case V_STR:
        if (needle.t != V_STR) {
            rfail(C, line, "'in <string>' requires string as left operand, not %s", tname(needle));
            return -1;
        }
        if (needle.u.s.n == 0)
            return 1;
        if (needle.u.s.n > hay.u.s.n)
            return 0;
        for (size_t i = 0; i + needle.u.s.n <= hay.u.s.n; i++)
            if (memcmp(hay.u.s.p + i, needle.u.s.p, needle.u.s.n) == 0)
                return 1;
        return 0;
    case V_LIST:
        for (size_t i = 0; i < hay.u.l->n; i++)
            if (veq(hay.u.l->v[i], needle))
                return 1;
        return 0;
    case V_DICT:
    case V_NS: return dfind(hay.u.d, needle) >= 0;
    case V_UNDEF: return 0;
    default:
        rfail(C, line, "argument of type '%s' is not iterable", tname(hay));
        return -1;
    }
}

/* ---- string operations (Python semantics, by code point) ---- */

static size_t prev_cp(const char *p, size_t i, int32_t *cp)
{
    size_t j = i - 1;
    while (j > 0 && i - j < 4 && ((unsigned char)p[j] & 0xc0) == 0x80)
        j--;
    size_t k = u8dec((const unsigned char *)p + j, i - j, cp);
    if (j + k != i) {
        *cp = (unsigned char)p[i - 1];
        return i - 1;
    }
    return j;
}

static int in_set(const char *set, size_t n, int32_t cp)
{
    int32_t c;
    for (size_t i = 0; i < n;) {
        i += u8dec((const unsigned char *)set + i, n - i, &c);
        if (c == cp)
            return 1;
    }
    return 0;
}

static jv s_strip(jv s, jv chars, int left, int right)
{
    const char *p = s.u.s.p;
    size_t a = 0, b = s.u.s.n;
    int ws = chars.t != V_STR;
    int32_t cp;
    while (left && a < b) {
        size_t k = u8dec((const unsigned char *)p + a, b - a, &cp);
        if (ws ? !py_space(cp) : !in_set(chars.u.s.p, chars.u.s.n, cp))
            break;
        a += k;
    }
    while (right && b > a) {
        size_t j = prev_cp(p, b, &cp);
        if (j < a || (ws ? !py_space(cp) : !in_set(chars.u.s.p, chars.u.s.n, cp)))
            break;
        b = j;
    }
    return vstrref(p + a, b - a);
}

static int is_cased(int32_t cp)
{
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT;
}

enum { CASE_LOWER, CASE_UPPER, CASE_CAP, CASE_TITLE_PY, CASE_TITLE_JINJA, CASE_SWAP };

static jv s_case(ctx *C, jv s, int mode, int line)
{
    sbuf b = sbnew(C);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n;
    int prev_cased = 0, first = 1;
    for (size_t i = 0; i < n;) {
        int32_t cp, o;
        i += u8dec((const unsigned char *)p + i, n - i, &cp);
        switch (mode) {
        case CASE_LOWER: o = utf8proc_tolower(cp); break;
        case CASE_UPPER: o = utf8proc_toupper(cp); break;
        case CASE_CAP: o = first ? utf8proc_totitle(cp) : utf8proc_tolower(cp); break;
        case CASE_TITLE_PY:
            o = prev_cased ? utf8proc_tolower(cp) : utf8proc_totitle(cp);
            prev_cased = is_cased(cp);
            break;
        case CASE_TITLE_JINJA: {
            int sep = py_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
            o = prev_cased ? utf8proc_tolower(cp) : utf8proc_toupper(cp);
            prev_cased = !sep;
            break;
        }
        default: o = utf8proc_islower(cp) ? utf8proc_toupper(cp) : utf8proc_tolower(cp); break;
        }
        first = 0;
        char tmp[8];
        sb_put(&b, tmp, u8enc(o, tmp));
    }
    return sbtake(C, &b, line);
}

static const char *memfind(const char *h, size_t hn, const char *nd, size_t nn)
{
    if (nn == 0)
        return h;
    if (nn > hn)
        return NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (h[i] == nd[0] && memcmp(h + i, nd, nn) == 0)
            return h + i;
    return NULL;
}

static const char *memrfind(const char *h, size_t hn, const char *nd, size_t nn)
{
    if (nn > hn)
        return NULL;
    for (size_t i = hn - nn + 1; i-- > 0;)
        if (memcmp(h + i, nd, nn) == 0)
            return h + i;
    return NULL;
}

static jv s_replace(ctx *C, jv s, jv old, jv nw, int64_t count, int line)
{
    sbuf b = sbnew(C);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0;
    int64_t done = 0;
    if (old.u.s.n == 0) {
        /* Python inserts the replacement around every character */
        int32_t cp;
        while (count < 0 || done < count) {
            sb_put(&b, nw.u.s.p, nw.u.s.n);
            done++;
            if (i >= n)
                break;
            size_t k = u8dec((const unsigned char *)p + i, n - i, &cp);
            sb_put(&b, p + i, k);
            i += k;
        }
        sb_put(&b, p + i, n - i);
        return sbtake(C, &b, line);
    }
    while (i < n && (count < 0 || done < count)) {
        const char *f = memfind(p + i, n - i, old.u.s.p, old.u.s.n);
        if (!f)
            break;
        sb_put(&b, p + i, (size_t)(f - (p + i)));
        sb_put(&b, nw.u.s.p, nw.u.s.n);
        i = (size_t)(f - p) + old.u.s.n;
        done++;
    }
    sb_put(&b, p + i, n - i);
    return sbtake(C, &b, line);
}

static jv s_split(ctx *C, jv s, jv sep, int64_t maxsplit, int right, int line)
{
    jlist *l = newlist(C, 0, line);
    if (!l)
        return UNDEF;
    const char *p = s.u.s.p;
    size_t n = s.u.s.n;
    if (sep.t == V_STR && sep.u.s.n == 0)
        return rfail(C, line, "split: empty separator"), UNDEF;
    if (sep.t != V_STR) {
        /* whitespace runs, no empty strings */
        size_t i = 0;
        int32_t cp;
        int64_t done = 0;
        if (right) {
            size_t e = n;
            jlist *r = newlist(C, 0, line);
            if (!r)
                return UNDEF;
            while (e > 0) {
                while (e > 0) {
                    size_t j = prev_cp(p, e, &cp);
                    if (!py_space(cp))
                        break;
                    e = j;
                }
                if (e == 0)
                    break;
                size_t st = e;
                if (maxsplit >= 0 && done >= maxsplit) {
                    st = 0;
                } else {
                    while (st > 0) {
                        size_t j = prev_cp(p, st, &cp);
                        if (py_space(cp))
                            break;
                        st = j;
                    }
                }
                if (lpush(C, r, vstrref(p + st, e - st), line))
                    return UNDEF;
                done++;
                e = st;
            }
            for (size_t k = r->n; k-- > 0;)
                if (lpush(C, l, r->v[k], line))
                    return UNDEF;
            return vlist(l);
        }
        while (i < n) {
            while (i < n) {
                size_t k = u8dec((const unsigned char *)p + i, n - i, &cp);
                if (!py_space(cp))
                    break;
                i += k;
            }
            if (i >= n)
                break;
            size_t st = i;
            if (maxsplit >= 0 && done >= maxsplit) {
                size_t e = n;
                while (e > st) {
                    size_t j = prev_cp(p, e, &cp);
                    if (!py_space(cp))
                        break;
                    e = j;
                }
                if (lpush(C, l, vstrref(p + st, e - st), line))
                    return UNDEF;
                break;
            }
            while (i < n) {
                size_t k = u8dec((const unsigned char *)p + i, n - i, &cp);
                if (py_space(cp))
                    break;
                i += k;
            }
            if (lpush(C, l, vstrref(p + st, i - st), line))
                return UNDEF;
            done++;
        }
        return vlist(l);
    }
    const char *sp = sep.u.s.p;
    size_t sn = sep.u.s.n;
    if (right) {
        jlist *r = newlist(C, 0, line);
        if (!r)
            return UNDEF;
        size_t e = n;
        int64_t done = 0;
        for (;;) {
            const char *f = maxsplit >= 0 && done >= maxsplit ? NULL : memrfind(p, e, sp, sn);
            if (!f) {
                if (lpush(C, r, vstrref(p, e), line))
                    return UNDEF;
                break;
            }
            size_t at = (size_t)(f - p);
            if (lpush(C, r, vstrref(p + at + sn, e - at - sn), line))
                return UNDEF;
            e = at;
            done++;
        }
        for (size_t k = r->n; k-- > 0;)
            if (lpush(C, l, r->v[k], line))
                return UNDEF;
        return vlist(l);
    }
    size_t i = 0;
    int64_t done = 0;
    for (;;) {
        const char *f = maxsplit >= 0 && done >= maxsplit ? NULL : memfind(p + i, n - i, sp, sn);
        if (!f) {
            if (lpush(C, l, vstrref(p + i, n - i), line))
                return UNDEF;
            break;
        }
        size_t at = (size_t)(f - p);
        if (lpush(C, l, vstrref(p + i, at - i), line))
            return UNDEF;
        i = at + sn;
        done++;
    }
    return vlist(l);
}

static jv splitlines(ctx *C, jv s, int line)
{
    jlist *l = newlist(C, 0, line);
    if (!l)
        return UNDEF;
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, st = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n' || p[i] == '\r' || p[i] == '\v' || p[i] == '\f' || (p[i] >= 0x1c && p[i] <= 0x1e)) {
            if (lpush(C, l, vstrref(p + st, i - st), line))
                return UNDEF;
            if (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n')
                i++;
            st = i + 1;
        }
    }
    if (st < n && lpush(C, l, vstrref(p + st, n - st), line))
        return UNDEF;
    return vlist(l);
}

/* ---- argument access ---- */

/* Positional argument i, else keyword kw, else def. */
static jv ga(const cargs *A, size_t i, const char *kw, jv def)
{
    if (i < A->np)
        return A->pos[i];
    if (kw)
        for (size_t k = 0; k < A->nk; k++)
            if (A->kwn[k]->n == strlen(kw) && memcmp(A->kwn[k]->s, kw, A->kwn[k]->n) == 0)
                return A->kwv[k];
    return def;
}

static int want_str(ctx *C, int line, jv v, const char *what)
{
    if (v.t == V_STR)
        return 0;
    rfail(C, line, "%s: expected a string, got %s", what, tname(v));
    return -1;
}

static int eqs(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

static jv callv(ctx *C, int line, jv fn, cargs *A, jv caller);
static jv apply_filter(ctx *C, int line, const char *name, size_t nn, jv in, cargs *A);
static int apply_test(ctx *C, int line, const char *name, size_t nn, jv v, jv *args, size_t na);

static jv str_format(ctx *C, int line, jv fmt, cargs *A)
{
    sbuf b = sbnew(C);
    const char *p = fmt.u.s.p;
    size_t n = fmt.u.s.n, auto_i = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if ((c == '{' || c == '}') && i + 1 < n && p[i + 1] == c) {
            sb_putc(&b, c);
            i++;
            continue;
        }
        if (c != '{') {
            sb_putc(&b, c);
            continue;
        }
        size_t e = i + 1;
        while (e < n && p[e] != '}')
            e++;
        if (e >= n) {
            free(b.p);
            return rfail(C, line, "format: unmatched '{'"), UNDEF;
        }
        const char *f = p + i + 1;
        size_t fl = e - i - 1;
        if (memchr(f, ':', fl) || memchr(f, '!', fl) || memchr(f, '.', fl) || memchr(f, '[', fl)) {
            free(b.p);
            return rfail(C, line, "format: only plain {} fields are supported"), UNDEF;
        }
        jv v;
        if (fl == 0)
            v = ga(A, auto_i++, NULL, UNDEF);
        else if (f[0] >= '0' && f[0] <= '9')
            v = ga(A, (size_t)atoi(f), NULL, UNDEF);
        else {
            v = UNDEF;
            for (size_t k = 0; k < A->nk; k++)
                if (A->kwn[k]->n == fl && memcmp(A->kwn[k]->s, f, fl) == 0)
                    v = A->kwv[k];
        }
        if (v.t == V_UNDEF) {
            free(b.p);
            return rfail(C, line, "format: no argument for field {%.*s}", (int)fl, f), UNDEF;
        }
        vstr_(&b, v, 0, 0);
        i = e;
    }
    return sbtake(C, &b, line);
}

static jv call_method(ctx *C, int line, jv self, const char *m, cargs *A)
{
    size_t mn = strlen(m);
    if (self.t == V_STR) {
        jv a0 = ga(A, 0, NULL, NONE);
        if (eqs(m, mn, "strip") || eqs(m, mn, "lstrip") || eqs(m, mn, "rstrip"))
            return s_strip(self, ga(A, 0, "chars", NONE), m[0] != 'r', m[0] != 'l');
        if (eqs(m, mn, "startswith") || eqs(m, mn, "endswith")) {
            int ends = m[0] == 'e';
            jv list1 = a0;
            jlist one = {.n = 1, .cap = 1, .v = &list1};
            jlist *cands = a0.t == V_LIST ? a0.u.l : &one;
            for (size_t i = 0; i < cands->n; i++) {
                jv c = cands->v[i];
                if (want_str(C, line, c, m))
                    return UNDEF;
                if (c.u.s.n <= self.u.s.n &&
                    memcmp(self.u.s.p + (ends ? self.u.s.n - c.u.s.n : 0), c.u.s.p, c.u.s.n) == 0)
                    return vbool(1);
            }
            return vbool(0);
        }
        if (eqs(m, mn, "split") || eqs(m, mn, "rsplit")) {
            jv sep = ga(A, 0, "sep", NONE), ms = ga(A, 1, "maxsplit", vint(-1));
            if (sep.t != V_NONE && want_str(C, line, sep, m))
                return UNDEF;
            return s_split(C, self, sep, isnum(ms) ? numi(ms) : -1, m[0] == 'r', line);
        }
        if (eqs(m, mn, "upper"))
            return s_case(C, self, CASE_UPPER, line);
        if (eqs(m, mn, "lower") || eqs(m, mn, "casefold"))
            return s_case(C, self, CASE_LOWER, line);
        if (eqs(m, mn, "title"))
            return s_case(C, self, CASE_TITLE_PY, line);
        if (eqs(m, mn, "capitalize"))
            return s_case(C, self, CASE_CAP, line);
        if (eqs(m, mn, "swapcase"))
            return s_case(C, self, CASE_SWAP, line);
        if (eqs(m, mn, "replace")) {
            jv o = ga(A, 0, "old", UNDEF), nw = ga(A, 1, "new", UNDEF), cnt = ga(A, 2, "count", vint(-1));
            if (want_str(C, line, o, "replace") || want_str(C, line, nw, "replace"))
                return UNDEF;
            return s_replace(C, self, o, nw, isnum(cnt) ? numi(cnt) : -1, line);
        }
        if (eqs(m, mn, "find") || eqs(m, mn, "rfind") || eqs(m, mn, "index") || eqs(m, mn, "count")) {
            if (want_str(C, line, a0, m))
                return UNDEF;
            if (m[0] == 'c') {
                if (a0.u.s.n == 0)
                    return vint((int64_t)u8len(self.u.s.p, self.u.s.n) + 1);
                int64_t k = 0;
                const char *p = self.u.s.p, *e = p + self.u.s.n, *f;
                while ((f = memfind(p, (size_t)(e - p), a0.u.s.p, a0.u.s.n))) {
                    k++;
                    p = f + a0.u.s.n;
                }
                return vint(k);
            }
            const char *f = m[0] == 'r' ? memrfind(self.u.s.p, self.u.s.n, a0.u.s.p, a0.u.s.n)
                                        : memfind(self.u.s.p, self.u.s.n, a0.u.s.p, a0.u.s.n);
            if (!f) {
                if (m[0] == 'i')
                    return rfail(C, line, "substring not found"), UNDEF;
                return vint(-1);
            }
            return vint((int64_t)u8len(self.u.s.p, (size_t)(f - self.u.s.p)));
        }
        if (eqs(m, mn, "join")) {
            jlist *l = iterlist(C, line, a0);
            if (!l)
                return UNDEF;
            sbuf b = sbnew(C);
            for (size_t i = 0; i < l->n; i++) {
                if (l->v[i].t != V_STR) {
                    free(b.p);
                    return rfail(C, line, "join: sequence item %zu: expected str, %s found", i,
                                 tname(l->v[i])), UNDEF;
                }
                if (i)
                    sb_put(&b, self.u.s.p, self.u.s.n);
                sb_put(&b, l->v[i].u.s.p, l->v[i].u.s.n);
            }
            return sbtake(C, &b, line);
        }
        if (eqs(m, mn, "format"))
            return str_format(C, line, self, A);
        if (eqs(m, mn, "splitlines"))
            return splitlines(C, self, line);
        if (eqs(m, mn, "removeprefix") || eqs(m, mn, "removesuffix")) {
            if (want_str(C, line, a0, m))
                return UNDEF;
            size_t k = a0.u.s.n;
            if (k > self.u.s.n)
                return self;
            if (m[6] == 'p')
                return memcmp(self.u.s.p, a0.u.s.p, k) == 0 ? vstrref(self.u.s.p + k, self.u.s.n - k) : self;
            return memcmp(self.u.s.p + self.u.s.n - k, a0.u.s.p, k) == 0 ? vstrref(self.u.s.p, self.u.s.n - k)
                                                                          : self;
        }
        if (m[0] == 'i' && m[1] == 's') {
            int all = self.u.s.n > 0, any_cased = 0;
            for (size_t i = 0; i < self.u.s.n && all;) {
                int32_t cp;
                i += u8dec((const unsigned char *)self.u.s.p + i, self.u.s.n - i, &cp);
                utf8proc_category_t cat = utf8proc_category(cp);
                int digit = cat == UTF8PROC_CATEGORY_ND, alpha = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
                if (eqs(m, mn, "isdigit") || eqs(m, mn, "isdecimal") || eqs(m, mn, "isnumeric"))
                    all = digit;
                else if (eqs(m, mn, "isalpha"))
                    all = alpha;
                else if (eqs(m, mn, "isalnum"))
                    all = alpha || digit;
                else if (eqs(m, mn, "isspace"))
                    all = py_space(cp);
                else if (eqs(m, mn, "isascii"))
                    all = cp < 0x80;
                else if (eqs(m, mn, "islower") || eqs(m, mn, "isupper")) {
                    if (is_cased(cp)) {
                        any_cased = 1;
                        all = m[2] == 'l' ? cat != UTF8PROC_CATEGORY_LU : cat != UTF8PROC_CATEGORY_LL;
                    }
                } else
                    return rfail(C, line, "str.%s() is not supported", m), UNDEF;
            }
            if (eqs(m, mn, "islower") || eqs(m, mn, "isupper"))
                all = all && any_cased;
            if (eqs(m, mn, "isascii") && self.u.s.n == 0)
                all = 1;
            return vbool(all);
        }
        return rfail(C, line, "str.%s() is not supported", m), UNDEF;
    }
    if (self.t == V_DICT) {
        jdict *d = self.u.d;
        if (eqs(m, mn, "items") || eqs(m, mn, "keys") || eqs(m, mn, "values")) {
            jlist *l = newlist(C, d->n, line);
            if (!l)
                return UNDEF;
            for (size_t i = 0; i < d->n; i++) {
                if (m[0] == 'k')
                    l->v[l->n++] = d->k[i];
                else if (m[0] == 'v')
                    l->v[l->n++] = d->v[i];
                else {
                    jlist *p = newlist(C, 2, line);
                    if (!p)
                        return UNDEF;
                    p->v[0] = d->k[i];
                    p->v[1] = d->v[i];
                    p->n = 2;
                    p->tuple = 1;
                    l->v[l->n++] = vlist(p);
                }
            }
            return vlist(l);
        }
        if (eqs(m, mn, "get")) {
            long i = dfind(d, ga(A, 0, NULL, NONE));
            return i >= 0 ? d->v[i] : ga(A, 1, "default", NONE);
        }
        return rfail(C, line, "dict.%s() is not allowed in a sandboxed template", m), UNDEF;
    }
    if (self.t == V_LIST) {
        jlist *l = self.u.l;
        if (eqs(m, mn, "index") || eqs(m, mn, "count")) {
            jv x = ga(A, 0, NULL, UNDEF);
            int64_t k = 0;
            for (size_t i = 0; i < l->n; i++)
                if (veq(l->v[i], x)) {
                    if (m[0] == 'i')
                        return vint((int64_t)i);
                    k++;
                }
            if (m[0] == 'i')
                return rfail(C, line, "list.index(x): x not in list"), UNDEF;
            return vint(k);
        }
        return rfail(C, line, "list.%s() is not allowed in a sandboxed template (lists are immutable)", m),
               UNDEF;
    }
    if (self.t == V_LOOP) {
        if (eqs(m, mn, "cycle")) {
            if (A->np == 0)
                return rfail(C, line, "loop.cycle() needs at least one argument"), UNDEF;
            return A->pos[self.u.lp->idx % A->np];
        }
        return rfail(C, line, "loop.%s() is not supported", m), UNDEF;
    }
    return rfail(C, line, "'%s' object has no method %s", tname(self), m), UNDEF;
}

/* ---- filters ---- */

/* Jinja2's attribute paths ("a.b.0"): item lookup first, then attribute. */
static jv attrpath(ctx *C, int line, jv v, jv path)
{
    if (path.t != V_STR)
        return getitem(C, line, v, path);
    const char *p = path.u.s.p, *e = p + path.u.s.n;
    while (p <= e) {
        const char *dot = memchr(p, '.', (size_t)(e - p));
        size_t k = dot ? (size_t)(dot - p) : (size_t)(e - p);
        int digits = k > 0;
        for (size_t i = 0; i < k; i++)
            digits &= p[i] >= '0' && p[i] <= '9';
        jv key = digits ? vint(atoll(p)) : vstrref(p, k);
        jv r = getitem(C, line, v, key);
        if (r.t == V_UNDEF && !digits)
            r = getattr_(C, line, v, p, k);
        v = r;
        if (!dot)
            break;
        p = dot + 1;
    }
    return v;
}

/* Merge sort by vcmp on keys; returns -1 on an incomparable pair. */
static int msort(ctx *C, int line, jv *v, jv *key, size_t n, jv *tv, jv *tk, int rev)
{
    if (n < 2)
        return 0;
    size_t h = n / 2;
    if (msort(C, line, v, key, h, tv, tk, rev) || msort(C, line, v + h, key + h, n - h, tv, tk, rev))
        return -1;
    size_t i = 0, j = h, o = 0;
    while (i < h && j < n) {
        int r;
        if (vcmp(C, line, key[j], key[i], &r))
            return -1;
        if (rev ? r > 0 : r < 0) {
            tv[o] = v[j];
            tk[o++] = key[j++];
        } else {
            tv[o] = v[i];
            tk[o++] = key[i++];
        }
    }
    while (i < h) {
        tv[o] = v[i];
        tk[o++] = key[i++];
    }
    while (j < n) {
        tv[o] = v[j];
        tk[o++] = key[j++];
    }
    memcpy(v, tv, n * sizeof *v);
    memcpy(key, tk, n * sizeof *key);
    return 0;
}

/* sort key: attribute, lowercased when strings compare case-insensitively */
static jv sortkey(ctx *C, int line, jv v, jv attr, int cs)
{
    if (attr.t != V_NONE && attr.t != V_UNDEF)
        v = attrpath(C, line, v, attr);
    if (!cs && v.t == V_STR)
        v = s_case(C, v, CASE_LOWER, line);
    return v;
}

static jv f_sort(ctx *C, int line, jlist *src, int rev, int cs, jv attr)
{
    size_t n = src->n;
    jlist *l = newlist(C, n, line);
    jv *key = cal(C, (n + 1) * sizeof(jv), line), *tv = cal(C, (n + 1) * sizeof(jv), line),
       *tk = cal(C, (n + 1) * sizeof(jv), line);
    if (!l || !key || !tv || !tk)
        return UNDEF;
    for (size_t i = 0; i < n; i++) {
        l->v[i] = src->v[i];
        key[i] = sortkey(C, line, src->v[i], attr, cs);
    }
    l->n = n;
    if (msort(C, line, l->v, key, n, tv, tk, rev))
        return UNDEF;
    return vlist(l);
}

static jv f_tojson(ctx *C, int line, jv v, cargs *A)
{
    jopt o = {.indent = -1, .isep = ", ", .ksep = ": ", .isepn = 2, .ksepn = 2};
    jv ea = ga(A, 0, "ensure_ascii", vbool(0)), ind = ga(A, 1, "indent", NONE),
       sep = ga(A, 2, "separators", NONE), sk = ga(A, 3, "sort_keys", vbool(0));
    o.ascii = truthy(ea);
    o.sort = truthy(sk);
    if (ind.t == V_INT || ind.t == V_BOOL) {
        int64_t k = numi(ind);
        if (k > 64)
            return rfail(C, line, "tojson: indent too large"), UNDEF;
        o.indent = k < 0 ? 0 : (int)k;
        o.isep = ",";
        o.isepn = 1;
    } else if (ind.t != V_NONE && ind.t != V_UNDEF)
        return rfail(C, line, "tojson: indent must be an integer"), UNDEF;
    if (sep.t == V_LIST && sep.u.l->n == 2 && sep.u.l->v[0].t == V_STR && sep.u.l->v[1].t == V_STR) {
        o.isep = sep.u.l->v[0].u.s.p;
        o.isepn = sep.u.l->v[0].u.s.n;
        o.ksep = sep.u.l->v[1].u.s.p;
        o.ksepn = sep.u.l->v[1].u.s.n;
    }
    sbuf b = sbnew(C);
    if (vjson(C, &b, v, &o, 0, line)) {
        free(b.p);
        return UNDEF;
    }
    return sbtake(C, &b, line);
}

static jv f_indent(ctx *C, int line, jv s, cargs *A)
{
    jv w = ga(A, 0, "width", vint(4)), first = ga(A, 1, "first", vbool(0)), blank = ga(A, 2, "blank", vbool(0));
    sbuf ind = sbnew(C);
    if (w.t == V_STR)
        sb_put(&ind, w.u.s.p, w.u.s.n);
    else {
        int64_t k = isnum(w) ? numi(w) : 4;
        for (int64_t i = 0; i < k && i < 1024; i++)
            sb_putc(&ind, ' ');
    }
    jv in = sbtake(C, &ind, line);
    if (C->failed)
        return UNDEF;
    /* Jinja2 appends "\n" before splitlines(), so a trailing newline is
     * kept and an empty input gives one (empty) line */
    sbuf t = sbnew(C);
    sb_put(&t, s.u.s.p, s.u.s.n);
    sb_putc(&t, '\n');
    jv ts = sbtake(C, &t, line);
    if (C->failed)
        return UNDEF;
    jv lv = splitlines(C, ts, line);
    if (C->failed)
        return UNDEF;
    jlist *l = lv.u.l;
    sbuf b = sbnew(C);
    if (truthy(first))
        sb_put(&b, in.u.s.p, in.u.s.n);
    for (size_t i = 0; i < l->n; i++) {
        jv x = l->v[i];
        if (i) {
            sb_putc(&b, '\n');
            if (truthy(blank) || x.u.s.n)
                sb_put(&b, in.u.s.p, in.u.s.n);
        }
        sb_put(&b, x.u.s.p, x.u.s.n);
    }
    return sbtake(C, &b, line);
}

static jv f_select(ctx *C, int line, jv in, cargs *A, int attr, int reject)
{
    jlist *src = iterlist(C, line, in);
    if (!src)
        return UNDEF;
    jlist *l = newlist(C, 0, line);
    if (!l)
        return UNDEF;
    size_t ti = attr ? 1 : 0;
    jv test = ga(A, ti, NULL, UNDEF);
    if (test.t != V_UNDEF && want_str(C, line, test, "select test"))
        return UNDEF;
    size_t na = A->np > ti + 1 ? A->np - ti - 1 : 0;
    for (size_t i = 0; i < src->n; i++) {
        jv x = src->v[i], v = attr ? attrpath(C, line, x, ga(A, 0, NULL, UNDEF)) : x;
        int r = test.t == V_UNDEF ? truthy(v)
                                  : apply_test(C, line, test.u.s.p, test.u.s.n, v, A->pos + ti + 1, na);
        if (r < 0)
            return UNDEF;
        if (r != reject && lpush(C, l, x, line))
            return UNDEF;
    }
    return vlist(l);
}

static jv f_map(ctx *C, int line, jv in, cargs *A)
{
    jlist *src = iterlist(C, line, in);
    if (!src)
        return UNDEF;
    jlist *l = newlist(C, src->n, line);
    if (!l)
        return UNDEF;
    jv at = ga(A, 99, "attribute", UNDEF);
    if (at.t != V_UNDEF) {
        jv def = ga(A, 99, "default", UNDEF);
        for (size_t i = 0; i < src->n; i++) {
            jv v = attrpath(C, line, src->v[i], at);
            l->v[l->n++] = v.t == V_UNDEF && def.t != V_UNDEF ? def : v;
        }
        return vlist(l);
    }
    jv f = ga(A, 0, NULL, UNDEF);
    if (want_str(C, line, f, "map"))
        return UNDEF;
    if (!in_list(FILTERS, f.u.s.p, f.u.s.n))
        return rfail(C, line, "map: unknown filter '%.*s'", (int)f.u.s.n, f.u.s.p), UNDEF;
    cargs sub = {.pos = A->pos + 1, .np = A->np ? A->np - 1 : 0, .kwn = A->kwn, .kwv = A->kwv, .nk = A->nk};
    for (size_t i = 0; i < src->n; i++) {
        jv v = apply_filter(C, line, f.u.s.p, f.u.s.n, src->v[i], &sub);
        if (C->failed)
            return UNDEF;
        l->v[l->n++] = v;
    }
    return vlist(l);
}

static jv html_escape(ctx *C, jv s, int line)
{
    sbuf b = sbnew(C);
    for (size_t i = 0; i < s.u.s.n; i++) {
        char c = s.u.s.p[i];
        switch (c) {
        case '&': sb_puts(&b, "&amp;"); break;
        case '<': sb_puts(&b, "&lt;"); break;
        case '>': sb_puts(&b, "&gt;"); break;
        case '"': sb_puts(&b, "&#34;"); break;
        case '\'': sb_puts(&b, "&#39;"); break;
        default: sb_putc(&b, c);
        }
    }
    return sbtake(C, &b, line);
}

static jv f_round(ctx *C, int line, jv v, cargs *A)
{
    if (!isnum(v))
        return rfail(C, line, "round: expected a number, got %s", tname(v)), UNDEF;
    jv pr = ga(A, 0, "precision", vint(0)), me = ga(A, 1, "method", vstrref("common", 6));
    double x = numf(v), m = pow(10.0, (double)(isnum(pr) ? numi(pr) : 0));
    if (me.t == V_STR && eqs(me.u.s.p, me.u.s.n, "ceil"))
        return vflt(ceil(x * m) / m);
    if (me.t == V_STR && eqs(me.u.s.p, me.u.s.n, "floor"))
        return vflt(floor(x * m) / m);
    return vflt(rint(x * m) / m); /* Python's round(): half to even */
}

static jv f_minmax(ctx *C, int line, jv in, cargs *A, int want_max)
{
    jlist *l = iterlist(C, line, in);
    if (!l)
        return UNDEF;
    int cs = truthy(ga(A, 0, "case_sensitive", vbool(0)));
    jv attr = ga(A, 1, "attribute", NONE);
    if (l->n == 0)
        return UNDEF;
    size_t best = 0;
    jv bk = sortkey(C, line, l->v[0], attr, cs);
    for (size_t i = 1; i < l->n; i++) {
        jv k = sortkey(C, line, l->v[i], attr, cs);
        int r;
        if (vcmp(C, line, k, bk, &r))
            return UNDEF;
        if (want_max ? r > 0 : r < 0) {
            best = i;
            bk = k;
        }
    }
    return l->v[best];
}

static jv arith(ctx *C, int line, const char *op, jv a, jv b);

static jv apply_filter(ctx *C, int line, const char *name, size_t nn, jv in, cargs *A)
{
    if (C->failed)
        return UNDEF;
    if (eqs(name, nn, "safe"))
        return in;
    if (eqs(name, nn, "tojson"))
        return f_tojson(C, line, in, A);
    if (eqs(name, nn, "default") || eqs(name, nn, "d")) {
        int boolean = truthy(ga(A, 1, "boolean", vbool(0)));
        if (in.t == V_UNDEF || (boolean && !truthy(in)))
            return ga(A, 0, "default_value", vstrref("", 0));
        return in;
    }
    if (eqs(name, nn, "length") || eqs(name, nn, "count")) {
        switch (in.t) {
        case V_STR: return vint((int64_t)u8len(in.u.s.p, in.u.s.n));
        case V_LIST: return vint((int64_t)in.u.l->n);
        case V_DICT:
        case V_NS: return vint((int64_t)in.u.d->n);
        case V_UNDEF: return vint(0);
        default: return rfail(C, line, "object of type '%s' has no len()", tname(in)), UNDEF;
        }
    }
    if (eqs(name, nn, "string"))
        return tostr(C, in, line);
    if (eqs(name, nn, "items")) {
        if (in.t == V_UNDEF)
            return vlist(newlist(C, 0, line));
        if (in.t != V_DICT)
            return rfail(C, line, "items: expected a mapping, got %s", tname(in)), UNDEF;
        return call_method(C, line, in, "items", A);
    }
    if (eqs(name, nn, "list")) {
        jlist *s = iterlist(C, line, in);
        if (!s)
            return UNDEF;
        jlist *l = newlist(C, s->n, line);
        if (!l)
            return UNDEF;
        if (s->n)
            memcpy(l->v, s->v, s->n * sizeof(jv));
        l->n = s->n;
        return vlist(l);
    }
    if (eqs(name, nn, "first") || eqs(name, nn, "last")) {
        jlist *l = iterlist(C, line, in);
        if (!l)
            return UNDEF;
        if (l->n == 0)
            return UNDEF;
        return name[0] == 'f' ? l->v[0] : l->v[l->n - 1];
    }
    if (eqs(name, nn, "join")) {
        jlist *l = iterlist(C, line, in);
        if (!l)
            return UNDEF;
        jv sep = tostr(C, ga(A, 0, "d", vstrref("", 0)), line), at = ga(A, 1, "attribute", NONE);
        sbuf b = sbnew(C);
        for (size_t i = 0; i < l->n; i++) {
            if (i)
                sb_put(&b, sep.u.s.p, sep.u.s.n);
            jv x = at.t != V_NONE ? attrpath(C, line, l->v[i], at) : l->v[i];
            vstr_(&b, x, 0, 0);
        }
        return sbtake(C, &b, line);
    }
    if (eqs(name, nn, "selectattr") || eqs(name, nn, "rejectattr"))
        return f_select(C, line, in, A, 1, name[0] == 'r');
    if (eqs(name, nn, "select") || eqs(name, nn, "reject"))
        return f_select(C, line, in, A, 0, name[0] == 'r');
    if (eqs(name, nn, "map"))
        return f_map(C, line, in, A);
    if (eqs(name, nn, "unique")) {
        jlist *s = iterlist(C, line, in);
        jlist *l = newlist(C, 0, line), *seen = newlist(C, 0, line);
        if (!s || !l || !seen)
            return UNDEF;
        int cs = truthy(ga(A, 0, "case_sensitive", vbool(0)));
        jv attr = ga(A, 1, "attribute", NONE);
        for (size_t i = 0; i < s->n; i++) {
            jv k = sortkey(C, line, s->v[i], attr, cs);
            if (contains(C, line, vlist(seen), k))
                continue;
            if (lpush(C, seen, k, line) || lpush(C, l, s->v[i], line))
                return UNDEF;
        }
        return vlist(l);
    }
    if (eqs(name, nn, "sort")) {
        jlist *s = iterlist(C, line, in);
        if (!s)
            return UNDEF;
        return f_sort(C, line, s, truthy(ga(A, 0, "reverse", vbool(0))),
                      truthy(ga(A, 1, "case_sensitive", vbool(0))), ga(A, 2, "attribute", NONE));
    }
    if (eqs(name, nn, "dictsort")) {
        if (in.t != V_DICT)
            return rfail(C, line, "dictsort: expected a mapping, got %s", tname(in)), UNDEF;
        jv items = call_method(C, line, in, "items", A);
        if (C->failed)
            return UNDEF;
        jv by = ga(A, 1, "by", vstrref("key", 3));
        int byval = by.t == V_STR && eqs(by.u.s.p, by.u.s.n, "value");
        return f_sort(C, line, items.u.l, truthy(ga(A, 2, "reverse", vbool(0))),
                      truthy(ga(A, 0, "case_sensitive", vbool(0))), vint(byval));
    }
    if (eqs(name, nn, "reverse")) {
        if (in.t == V_STR) {
            jv m1 = vint(-1);
            return do_slice(C, line, in, NULL, NULL, &m1);
        }
        jlist *s = iterlist(C, line, in);
        jlist *l = s ? newlist(C, s->n, line) : NULL;
        if (!l)
            return UNDEF;
        for (size_t i = 0; i < s->n; i++)
            l->v[i] = s->v[s->n - 1 - i];
        l->n = s->n;
        return vlist(l);
    }
    if (eqs(name, nn, "min") || eqs(name, nn, "max"))
        return f_minmax(C, line, in, A, name[1] == 'a');
    if (eqs(name, nn, "sum")) {
        jlist *l = iterlist(C, line, in);
        if (!l)
            return UNDEF;
        jv at = ga(A, 0, "attribute", NONE), acc = ga(A, 1, "start", vint(0));
        for (size_t i = 0; i < l->n && !C->failed; i++)
            acc = arith(C, line, "+", acc, at.t != V_NONE ? attrpath(C, line, l->v[i], at) : l->v[i]);
        return acc;
    }
    if (eqs(name, nn, "abs")) {
        if (in.t == V_INT)
            return in.u.i == INT64_MIN ? vflt(9223372036854775808.0) : vint(in.u.i < 0 ? -in.u.i : in.u.i);
        if (in.t == V_BOOL)
            return vint(in.u.b);
        if (in.t == V_FLOAT)
            return vflt(fabs(in.u.f));
        return rfail(C, line, "bad operand type for abs(): '%s'", tname(in)), UNDEF;
    }
    if (eqs(name, nn, "round"))
        return f_round(C, line, in, A);
    if (eqs(name, nn, "int")) {
        jv def = ga(A, 0, "default", vint(0));
        if (in.t == V_INT)
            return in;
        if (in.t == V_BOOL)
            return vint(in.u.b);
        if (in.t == V_FLOAT)
            return isfinite(in.u.f) && fabs(in.u.f) < 9.2e18 ? vint((int64_t)in.u.f) : def;
        if (in.t == V_STR) {
            char tmp[64];
            jv t = s_strip(in, NONE, 1, 1);
            if (t.u.s.n == 0 || t.u.s.n >= sizeof tmp)
                return def;
            memcpy(tmp, t.u.s.p, t.u.s.n);
            tmp[t.u.s.n] = '\0';
            char *e;
            errno = 0;
            long long v = strtoll(tmp, &e, 10);
            if (*e == '\0' && !errno)
                return vint(v);
            double d = strtod(tmp, &e);
            if (*e == '\0' && isfinite(d) && fabs(d) < 9.2e18)
                return vint((int64_t)d);
        }
        return def;
    }
    if (eqs(name, nn, "float")) {
        jv def = ga(A, 0, "default", vflt(0.0));
        if (isnum(in))
            return vflt(numf(in));
        if (in.t == V_STR) {
            char tmp[64];
            jv t = s_strip(in, NONE, 1, 1);
            if (t.u.s.n == 0 || t.u.s.n >= sizeof tmp)
                return def;
            memcpy(tmp, t.u.s.p, t.u.s.n);
            tmp[t.u.s.n] = '\0';
            char *e;
            double d = strtod(tmp, &e);
            if (*e == '\0')
                return vflt(d);
        }
        return def;
    }
    if (eqs(name, nn, "attr")) {
        jv nm = ga(A, 0, "name", UNDEF);
        if (want_str(C, line, nm, "attr"))
            return UNDEF;
        return getattr_(C, line, in, nm.u.s.p, nm.u.s.n);
    }
    /* the rest work on str(value) */
    jv s = tostr(C, in, line);
    if (C->failed)
        return UNDEF;
    if (eqs(name, nn, "trim"))
        return s_strip(s, ga(A, 0, "chars", NONE), 1, 1);
    if (eqs(name, nn, "upper"))
        return s_case(C, s, CASE_UPPER, line);
    if (eqs(name, nn, "lower"))
        return s_case(C, s, CASE_LOWER, line);
    if (eqs(name, nn, "capitalize"))
        return s_case(C, s, CASE_CAP, line);
    if (eqs(name, nn, "title"))
        return s_case(C, s, CASE_TITLE_JINJA, line);
    if (eqs(name, nn, "replace")) {
        jv o = tostr(C, ga(A, 0, "old", UNDEF), line), nw = tostr(C, ga(A, 1, "new", UNDEF), line);
        jv cnt = ga(A, 2, "count", NONE);
        if (C->failed)
            return UNDEF;
        return s_replace(C, s, o, nw, isnum(cnt) ? numi(cnt) : -1, line);
    }
    if (eqs(name, nn, "escape") || eqs(name, nn, "e"))
        return html_escape(C, s, line);
    if (eqs(name, nn, "indent"))
        return f_indent(C, line, s, A);
    if (eqs(name, nn, "wordcount")) {
        int64_t k = 0;
        int inw = 0;
        for (size_t i = 0; i < s.u.s.n;) {
            int32_t cp;
            i += u8dec((const unsigned char *)s.u.s.p + i, s.u.s.n - i, &cp);
            utf8proc_category_t cat = utf8proc_category(cp);
            int w = cp == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
                    (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
            if (w && !inw)
                k++;
            inw = w;
        }
        return vint(k);
    }
    return rfail(C, line, "filter '%.*s' is not supported", (int)nn, name), UNDEF;
}

/* ---- tests ---- */

static int apply_test(ctx *C, int line, const char *name, size_t nn, jv v, jv *args, size_t na)
{
    jv a0 = na ? args[0] : UNDEF;
    if (eqs(name, nn, "defined"))
        return v.t != V_UNDEF;
    if (eqs(name, nn, "undefined"))
        return v.t == V_UNDEF;
    if (eqs(name, nn, "none"))
        return v.t == V_NONE;
    if (eqs(name, nn, "string"))
        return v.t == V_STR;
    if (eqs(name, nn, "mapping"))
        return v.t == V_DICT;
    if (eqs(name, nn, "iterable"))
        return v.t == V_STR || v.t == V_LIST || v.t == V_DICT || v.t == V_UNDEF;
    if (eqs(name, nn, "sequence"))
        return v.t == V_STR || v.t == V_LIST || v.t == V_DICT || v.t == V_UNDEF;
    if (eqs(name, nn, "number"))
        return isnum(v);
    if (eqs(name, nn, "integer"))
        return v.t == V_INT;
    if (eqs(name, nn, "float"))
        return v.t == V_FLOAT;
    if (eqs(name, nn, "boolean"))
        return v.t == V_BOOL;
    if (eqs(name, nn, "true"))
        return v.t == V_BOOL && v.u.b;
    if (eqs(name, nn, "false"))
        return v.t == V_BOOL && !v.u.b;
    if (eqs(name, nn, "callable"))
        return v.t == V_FUNC;
    if (eqs(name, nn, "escaped"))
        return 0;
    if (eqs(name, nn, "equalto") || eqs(name, nn, "eq") || eqs(name, nn, "=="))
        return veq(v, a0);
    if (eqs(name, nn, "ne") || eqs(name, nn, "!="))
        return !veq(v, a0);
    if (eqs(name, nn, "sameas")) {
        if (v.t != a0.t)
            return 0;
        if (v.t == V_LIST)
            return v.u.l == a0.u.l;
        if (v.t == V_DICT || v.t == V_NS)
            return v.u.d == a0.u.d;
        return veq(v, a0);
    }
    if (eqs(name, nn, "in")) {
        return contains(C, line, a0, v);
    }
    if (eqs(name, nn, "lower") || eqs(name, nn, "upper")) {
        if (v.t != V_STR)
            return 0;
        cargs none = {0};
        jv r = call_method(C, line, v, name[0] == 'l' ? "islower" : "isupper", &none);
        return C->failed ? -1 : truthy(r);
    }
    if (eqs(name, nn, "filter") || eqs(name, nn, "test")) {
        if (v.t != V_STR)
            return 0;
        return in_list(name[0] == 'f' ? FILTERS : TESTS, v.u.s.p, v.u.s.n);
    }
    if (eqs(name, nn, "odd") || eqs(name, nn, "even") || eqs(name, nn, "divisibleby")) {
        if (!isnum(v) || (na && !isnum(a0)))
            return rfail(C, line, "test '%.*s' needs numbers", (int)nn, name), -1;
        int64_t x = numi(v), d = name[0] == 'd' ? numi(a0) : 2;
        if (d == 0)
            return rfail(C, line, "divisibleby: division by zero"), -1;
        int64_t r = d == -1 ? 0 : x % d;
        return name[0] == 'o' ? r != 0 : r == 0;
    }
    int r;
    const char *op = eqs(name, nn, "lt") || eqs(name, nn, "lessthan") || eqs(name, nn, "<") ? "<"
                     : eqs(name, nn, "le") || eqs(name, nn, "<=")                         ? "<="
                     : eqs(name, nn, "gt") || eqs(name, nn, "greaterthan") || eqs(name, nn, ">") ? ">"
                     : eqs(name, nn, "ge") || eqs(name, nn, ">=")                         ? ">="
                                                                                          : NULL;
    if (!op)
        return rfail(C, line, "test '%.*s' is not supported", (int)nn, name), -1;
    if (vcmp(C, line, v, a0, &r))
        return -1;
    return op[0] == '<' ? (op[1] ? r <= 0 : r < 0) : (op[1] ? r >= 0 : r > 0);
}

/* ---- operators ---- */

static jv undef_err(ctx *C, int line, jv u)
{
    if (u.u.s.p)
        rfail(C, line, "'%.*s' is undefined", (int)u.u.s.n, u.u.s.p);
    else
        rfail(C, line, "an undefined value was used in an operation");
    return UNDEF;
}

static jv arith(ctx *C, int line, const char *op, jv a, jv b)
{
    if (C->failed)
        return UNDEF;
    char o = op[0];
    if (o == '~') {
        sbuf s = sbnew(C);
        vstr_(&s, a, 0, 0);
        vstr_(&s, b, 0, 0);
        return sbtake(C, &s, line);
    }
    if (a.t == V_UNDEF)
        return undef_err(C, line, a);
    if (b.t == V_UNDEF)
        return undef_err(C, line, b);
    if (isnum(a) && isnum(b)) {
        int fl = a.t == V_FLOAT || b.t == V_FLOAT;
        double x = numf(a), y = numf(b);
        int64_t i = numi(a), j = numi(b), r;
        switch (o) {
        case '+':
            if (!fl && !__builtin_add_overflow(i, j, &r))
                return vint(r);
            return vflt(x + y);
        case '-':
            if (!fl && !__builtin_sub_overflow(i, j, &r))
                return vint(r);
            return vflt(x - y);
        case '*':
            if (op[1] == '*') {
                if (!fl && j >= 0) {
                    int64_t acc = 1, base = i;
                    int ovf = 0;
                    for (int64_t e = j; e > 0 && !ovf; e >>= 1) {
                        if (e & 1)
                            ovf |= __builtin_mul_overflow(acc, base, &acc);
                        if (e > 1)
                            ovf |= __builtin_mul_overflow(base, base, &base);
                    }
                    if (!ovf)
                        return vint(acc);
                }
                if (x == 0 && y < 0)
                    return rfail(C, line, "zero to a negative power"), UNDEF;
                return vflt(pow(x, y));
            }
            if (!fl && !__builtin_mul_overflow(i, j, &r))
                return vint(r);
            return vflt(x * y);
        case '/':
            if (op[1] == '/') {
                if (fl ? y == 0 : j == 0)
                    return rfail(C, line, "integer division or modulo by zero"), UNDEF;
                if (fl)
                    return vflt(floor(x / y));
                if (i == INT64_MIN && j == -1)
                    return vflt(-(double)i);
                int64_t q = i / j;
                if ((i % j != 0) && ((i < 0) != (j < 0)))
                    q--;
                return vint(q);
            }
            if (y == 0)
                return rfail(C, line, "division by zero"), UNDEF;
            return vflt(x / y);
        case '%':
            if (fl ? y == 0 : j == 0)
                return rfail(C, line, "integer division or modulo by zero"), UNDEF;
            if (fl) {
                double m = fmod(x, y);
                if (m != 0 && ((m < 0) != (y < 0)))
                    m += y;
                return vflt(m);
            }
            if (j == -1)
                return vint(0);
            r = i % j;
            if (r != 0 && ((r < 0) != (j < 0)))
                r += j;
            return vint(r);
        }
    }
    if (o == '+' && op[1] == 0) {
        if (a.t == V_STR && b.t == V_STR) {
            sbuf s = sbnew(C);
            sb_put(&s, a.u.s.p, a.u.s.n);
            sb_put(&s, b.u.s.p, b.u.s.n);
            return sbtake(C, &s, line);
        }
        if (a.t == V_LIST && b.t == V_LIST) {
            size_t n = a.u.l->n + b.u.l->n;
            jlist *l = newlist(C, n, line);
            if (!l)
                return UNDEF;
            if (a.u.l->n)
                memcpy(l->v, a.u.l->v, a.u.l->n * sizeof(jv));
            if (b.u.l->n)
                memcpy(l->v + a.u.l->n, b.u.l->v, b.u.l->n * sizeof(jv));
            l->n = n;
            l->tuple = a.u.l->tuple && b.u.l->tuple;
            return vlist(l);
        }
    }
    if (o == '*' && op[1] == 0 && ((a.t == V_STR || a.t == V_LIST) && (b.t == V_INT || b.t == V_BOOL))) {
        int64_t k = numi(b);
        if (k <= 0)
            return a.t == V_STR ? vstrref("", 0) : vlist(newlist(C, 0, line));
        size_t unit = a.t == V_STR ? a.u.s.n : a.u.l->n * sizeof(jv), tot;
        if (__builtin_mul_overflow(unit, (size_t)k, &tot) || tot > C->max_out)
            return rfail(C, line, "repetition result too large"), UNDEF;
        if (step(C, line, (uint64_t)k))
            return UNDEF;
        if (a.t == V_STR) {
            sbuf s = sbnew(C);
            for (int64_t i = 0; i < k; i++)
                sb_put(&s, a.u.s.p, a.u.s.n);
            return sbtake(C, &s, line);
        }
        jlist *l = newlist(C, a.u.l->n * (size_t)k, line);
        if (!l)
            return UNDEF;
        for (int64_t i = 0; i < k; i++)
            for (size_t j = 0; j < a.u.l->n; j++)
                l->v[l->n++] = a.u.l->v[j];
        return vlist(l);
    }
    if (o == '*' && op[1] == 0 && (b.t == V_STR || b.t == V_LIST) && (a.t == V_INT || a.t == V_BOOL))
        return arith(C, line, op, b, a);
    rfail(C, line, "unsupported operand type(s) for %s: '%s' and '%s'", op, tname(a), tname(b));
    return UNDEF;
}

/* ---- evaluation ---- */

static jv eval(ctx *C, frame *F, const node *e);
static void exec_body(ctx *C, frame *F, const node *b);

static jv lookup(ctx *C, frame *F, const char *s, size_t n, int line)
{
    for (frame *f = F; f; f = f->parent) {
        long i = dfinds(f->vars, s, n);
        if (i >= 0)
            return f->vars->v[i];
    }
    static const char *const builtins[] = {"range", "namespace", "raise_exception", "strftime_now",
                                           "dict", NULL};
    for (const char *const *b = builtins; *b; b++)
        if (eqs(s, n, *b))
            return mkfunc(C, F_BUILTIN, *b, UNDEF, line);
    jv u = UNDEF;
    u.u.s.p = s; /* remembered for "'x' is undefined" messages */
    u.u.s.n = n;
    return u;
}

/* Evaluates call arguments into A (arena arrays). */
static int eval_args(ctx *C, frame *F, const node *e, cargs *A, int extra_front, jv front)
{
    size_t np = e->l1.n + (extra_front ? 1 : 0);
    A->pos = cal(C, (np + 1) * sizeof(jv), e->line);
    A->kwv = cal(C, (e->l2.n + 1) * sizeof(jv), e->line);
    A->kwn = cal(C, (e->l2.n + 1) * sizeof(node *), e->line);
    if (!A->pos || !A->kwv || !A->kwn)
        return -1;
    A->np = 0;
    if (extra_front)
        A->pos[A->np++] = front;
    for (size_t i = 0; i < e->l1.n; i++) {
        A->pos[A->np++] = eval(C, F, e->l1.v[i]);
        if (C->failed)
            return -1;
    }
    for (size_t i = 0; i < e->l2.n; i++) {
        A->kwn[i] = e->l2.v[i];
        A->kwv[i] = eval(C, F, e->l2.v[i]->a);
        if (C->failed)
            return -1;
    }
    A->nk = e->l2.n;
    return 0;
}

static jv call_body(ctx *C, int line, const node *def, frame *env, cargs *A, jv caller)
{
    if (C->depth >= MAX_CALL_DEPTH)
        return rfail(C, line, "macro calls nested too deeply (limit %d)", MAX_CALL_DEPTH), UNDEF;
    if (step(C, line, 1))
        return UNDEF;
    frame f = {.parent = env, .vars = newdict(C, line)};
    if (!f.vars)
        return UNDEF;
    const nlist *ps = &def->l1;
    jlist *varargs = newlist(C, 0, line);
    jdict *kwargs = newdict(C, line);
    if (!varargs || !kwargs)
        return UNDEF;
    for (size_t i = 0; i < ps->n; i++) {
        const node *p = ps->v[i];
        jv v = UNDEF;
        int have = 0;
        if (i < A->np) {
            v = A->pos[i];
            have = 1;
        }
        for (size_t k = 0; k < A->nk && !have; k++)
            if (A->kwn[k]->n == p->n && memcmp(A->kwn[k]->s, p->s, p->n) == 0) {
                v = A->kwv[k];
                have = 1;
            }
        if (!have && p->a)
            v = eval(C, &f, p->a);
        if (C->failed || dset(C, f.vars, vstrref(p->s, p->n), v, line))
            return UNDEF;
    }
    for (size_t i = ps->n; i < A->np; i++)
        if (lpush(C, varargs, A->pos[i], line))
            return UNDEF;
    for (size_t k = 0; k < A->nk; k++) {
        int known = 0;
        for (size_t i = 0; i < ps->n; i++)
            known |= A->kwn[k]->n == ps->v[i]->n && memcmp(A->kwn[k]->s, ps->v[i]->s, ps->v[i]->n) == 0;
        if (!known && dset(C, kwargs, vstrref(A->kwn[k]->s, A->kwn[k]->n), A->kwv[k], line))
            return UNDEF;
    }
    if (dset(C, f.vars, vstrref("varargs", 7), vlist(varargs), line) ||
        dset(C, f.vars, vstrref("kwargs", 6), vdict(kwargs, V_DICT), line))
        return UNDEF;
    if (caller.t != V_UNDEF && dset(C, f.vars, vstrref("caller", 6), caller, line))
        return UNDEF;
    sbuf cap = sbnew(C), *saved = C->out;
    C->out = &cap;
    C->depth++;
    exec_body(C, &f, def->b);
    C->depth--;
    C->out = saved;
    C->ctl = 0;
    if (C->failed) {
        free(cap.p);
        return UNDEF;
    }
    return sbtake(C, &cap, line);
}

static jv builtin(ctx *C, int line, const char *name, cargs *A)
{
    if (strcmp(name, "raise_exception") == 0) {
        jv m = tostr(C, ga(A, 0, "message", vstrref("", 0)), line);
        if (!C->failed)
            rfail(C, line, "%.*s", (int)(m.u.s.n > 380 ? 380 : m.u.s.n), m.u.s.p);
        return UNDEF;
    }
    if (strcmp(name, "namespace") == 0 || strcmp(name, "dict") == 0) {
        jdict *d = newdict(C, line);
        if (!d)
            return UNDEF;
        for (size_t i = 0; i < A->np; i++) {
            jv a = A->pos[i];
            if (a.t == V_DICT || a.t == V_NS) {
                for (size_t k = 0; k < a.u.d->n; k++)
                    if (dset(C, d, a.u.d->k[k], a.u.d->v[k], line))
                        return UNDEF;
            } else
                return rfail(C, line, "%s(): positional arguments must be mappings", name), UNDEF;
        }
        for (size_t k = 0; k < A->nk; k++)
            if (dset(C, d, vstrref(A->kwn[k]->s, A->kwn[k]->n), A->kwv[k], line))
                return UNDEF;
        return vdict(d, name[0] == 'n' ? V_NS : V_DICT);
    }
    if (strcmp(name, "range") == 0) {
        int64_t a = 0, b, s = 1;
        for (size_t i = 0; i < A->np; i++)
            if (A->pos[i].t != V_INT && A->pos[i].t != V_BOOL)
                return rfail(C, line, "range(): integer arguments expected, got %s", tname(A->pos[i])), UNDEF;
        if (A->np == 1)
            b = numi(A->pos[0]);
        else if (A->np == 2 || A->np == 3) {
            a = numi(A->pos[0]);
            b = numi(A->pos[1]);
            if (A->np == 3)
                s = numi(A->pos[2]);
        } else
            return rfail(C, line, "range() takes 1 to 3 arguments"), UNDEF;
        if (s == 0)
            return rfail(C, line, "range() arg 3 must not be zero"), UNDEF;
        double cnt = s > 0 ? ceil(((double)b - (double)a) / (double)s) : ceil(((double)a - (double)b) / (double)-s);
        if (cnt < 0)
            cnt = 0;
        if (cnt > 1e8 || step(C, line, (uint64_t)cnt))
            return rfail(C, line, "range() too large"), UNDEF;
        jlist *l = newlist(C, (size_t)cnt, line);
        if (!l)
            return UNDEF;
        for (int64_t i = 0; i < (int64_t)cnt; i++)
            l->v[l->n++] = vint(a + i * s);
        return vlist(l);
    }
    if (strcmp(name, "strftime_now") == 0) {
        jv f = ga(A, 0, "format", UNDEF);
        if (want_str(C, line, f, "strftime_now"))
            return UNDEF;
        struct tm tmv;
        if (C->now)
            tmv = *C->now;
        else {
            time_t t = time(NULL);
            localtime_r(&t, &tmv);
        }
        char fmt[256], out[512];
        if (f.u.s.n >= sizeof fmt)
            return rfail(C, line, "strftime_now: format too long"), UNDEF;
        memcpy(fmt, f.u.s.p, f.u.s.n);
        fmt[f.u.s.n] = '\0';
        size_t k = strftime(out, sizeof out, fmt, &tmv);
        return mkstr(C, out, k, line);
    }
    return rfail(C, line, "unknown function %s", name), UNDEF;
}

static jv callv(ctx *C, int line, jv fn, cargs *A, jv caller)
{
    if (fn.t == V_UNDEF) {
        if (fn.u.s.p)
            return rfail(C, line, "'%.*s' is undefined (called as a function)", (int)fn.u.s.n, fn.u.s.p), UNDEF;
        return rfail(C, line, "an undefined value was called as a function"), UNDEF;
    }
    if (fn.t != V_FUNC)
        return rfail(C, line, "'%s' object is not callable", tname(fn)), UNDEF;
    jfunc *f = fn.u.fn;
    switch (f->kind) {
    case F_BUILTIN: return builtin(C, line, f->name, A);
    case F_METHOD: return call_method(C, line, f->self, f->name, A);
    case F_MACRO: return call_body(C, line, f->def, f->env, A, caller);
    default: return call_body(C, line, f->def, f->env, A, UNDEF);
    }
}

static jv eval(ctx *C, frame *F, const node *e)
{
    if (C->failed)
        return UNDEF;
    int line = e->line;
    switch (e->k) {
    case E_LIT: return e->lit;
    case E_PIPEIN: return C->pipe_in;
    case E_NAME: return lookup(C, F, e->s, e->n, line);
    case E_ATTR: {
        jv o = eval(C, F, e->a);
        if (C->failed)
            return UNDEF;
        jv r = getattr_(C, line, o, e->s, e->n);
        if (r.t == V_UNDEF) {
            r.u.s.p = e->s;
            r.u.s.n = e->n;
        }
        return r;
    }
    case E_INDEX: {
        jv o = eval(C, F, e->a), k = eval(C, F, e->b);
        if (C->failed)
            return UNDEF;
        jv r = getitem(C, line, o, k);
        if (r.t == V_UNDEF && k.t == V_STR)
            r = getattr_(C, line, o, k.u.s.p, k.u.s.n);
        return r;
    }
    case E_SLICE: {
        jv o = eval(C, F, e->a), a = e->b ? eval(C, F, e->b) : NONE, b = e->c ? eval(C, F, e->c) : NONE,
           s = e->d ? eval(C, F, e->d) : NONE;
        if (C->failed)
            return UNDEF;
        return do_slice(C, line, o, &a, &b, &s);
    }
    case E_CALL: {
        jv fn = eval(C, F, e->a);
        cargs A;
        if (C->failed || eval_args(C, F, e, &A, 0, UNDEF))
            return UNDEF;
        return callv(C, line, fn, &A, UNDEF);
    }
    case E_FILTER: {
        jv in = eval(C, F, e->a);
        cargs A;
        if (C->failed || eval_args(C, F, e, &A, 0, UNDEF))
            return UNDEF;
        return apply_filter(C, line, e->s, e->n, in, &A);
    }
    case E_TEST: {
        jv in = eval(C, F, e->a);
        cargs A;
        if (C->failed || eval_args(C, F, e, &A, 0, UNDEF))
            return UNDEF;
        int r = apply_test(C, line, e->s, e->n, in, A.pos, A.np);
        if (r < 0)
            return UNDEF;
        return vbool(e->neg ? !r : r);
    }
    case E_NEG:
    case E_POS: {
        jv a = eval(C, F, e->a);
        if (C->failed)
            return UNDEF;
        if (!isnum(a))
            return rfail(C, line, "bad operand type for unary %c: '%s'", e->k == E_NEG ? '-' : '+', tname(a)), UNDEF;
        if (e->k == E_POS)
            return a.t == V_BOOL ? vint(a.u.b) : a;
        if (a.t == V_FLOAT)
            return vflt(-a.u.f);
        int64_t i = numi(a);
        return i == INT64_MIN ? vflt(9223372036854775808.0) : vint(-i);
    }
    case E_BIN: {
        jv a = eval(C, F, e->a), b = eval(C, F, e->b);
        if (C->failed)
            return UNDEF;
        const char *op = e->s;
        size_t n = e->n;
        if (eqs(op, n, "==") || eqs(op, n, "!="))
            return vbool(veq(a, b) == (op[0] == '='));
        if (eqs(op, n, "in") || eqs(op, n, "notin")) {
            int r = contains(C, line, b, a);
            return r < 0 ? UNDEF : vbool(op[0] == 'i' ? r : !r);
        }
        if (op[0] == '<' || op[0] == '>') {
            int r;
            if (vcmp(C, line, a, b, &r))
                return UNDEF;
            return vbool(op[0] == '<' ? (n == 2 ? r <= 0 : r < 0) : (n == 2 ? r >= 0 : r > 0));
        }
        char o[3] = {op[0], n > 1 ? op[1] : 0, 0};
        return arith(C, line, o, a, b);
    }
    case E_AND: {
        jv a = eval(C, F, e->a);
        return truthy(a) ? eval(C, F, e->b) : a;
    }
    case E_OR: {
        jv a = eval(C, F, e->a);
        return truthy(a) ? a : eval(C, F, e->b);
    }
    case E_NOT: return vbool(!truthy(eval(C, F, e->a)));
    case E_COND:
        if (truthy(eval(C, F, e->a)))
            return eval(C, F, e->b);
        return e->c ? eval(C, F, e->c) : UNDEF;
    case E_LIST: {
        jlist *l = newlist(C, e->l1.n, line);
        if (!l)
            return UNDEF;
        l->tuple = e->neg;
        for (size_t i = 0; i < e->l1.n; i++)
            l->v[l->n++] = eval(C, F, e->l1.v[i]);
        return vlist(l);
    }
    case E_DICT: {
        jdict *d = newdict(C, line);
        if (!d)
            return UNDEF;
        for (size_t i = 0; i < e->l1.n && !C->failed; i++) {
            jv k = eval(C, F, e->l1.v[i]), v = eval(C, F, e->l2.v[i]);
            if (k.t == V_LIST || k.t == V_DICT)
                return rfail(C, line, "unhashable type: '%s'", tname(k)), UNDEF;
            if (dset(C, d, k, v, line))
                return UNDEF;
        }
        return vdict(d, V_DICT);
    }
    default: return rfail(C, line, "internal: bad expression node"), UNDEF;
    }
}

/* ---- statements ---- */

static int assign(ctx *C, frame *F, const nlist *targets, jv v, int line)
{
    if (targets->n == 1) {
        const node *t = targets->v[0];
        if (t->k == E_NAME)
            return dset(C, F->vars, vstrref(t->s, t->n), v, line);
        jv ns = lookup(C, F, t->a->s, t->a->n, line);
        if (ns.t != V_NS)
            return rfail(C, line, "can only set attributes of a namespace(), '%.*s' is %s", (int)t->a->n,
                         t->a->s, tname(ns)), -1;
        return dset(C, ns.u.d, vstrref(t->s, t->n), v, line);
    }
    jlist *l = iterlist(C, line, v);
    if (!l)
        return -1;
    if (l->n != targets->n)
        return rfail(C, line, "cannot unpack %zu values into %zu names", l->n, targets->n), -1;
    for (size_t i = 0; i < l->n; i++) {
        nlist one = {.v = &targets->v[i], .n = 1, .cap = 1};
        if (assign(C, F, &one, l->v[i], line))
            return -1;
    }
    return 0;
}

static void emit_out(ctx *C, int line, const char *s, size_t n)
{
    sb_put(C->out, s, n);
    if (C->out->over)
        rfail(C, line, C->out->over == 2 ? "out of memory" : "output longer than the limit (%zu bytes)",
              C->max_out);
}

static void exec_for(ctx *C, frame *F, const node *s)
{
    int line = s->line;
    jv it = eval(C, F, s->a);
    if (C->failed)
        return;
    jlist *src = iterlist(C, line, it);
    frame f = {.parent = F, .vars = newdict(C, line)};
    jloop *lp = cal(C, sizeof *lp, line);
    if (!src || !f.vars || !lp)
        return;
    jlist *items = src;
    if (s->d) {
        items = newlist(C, 0, line);
        if (!items)
            return;
        for (size_t i = 0; i < src->n; i++) {
            if (step(C, line, 1) || assign(C, &f, &s->l1, src->v[i], line))
                return;
            jv c = eval(C, &f, s->d);
            if (C->failed)
                return;
            if (truthy(c) && lpush(C, items, src->v[i], line))
                return;
        }
    }
    lp->items = items;
    lp->depth = 1;
    jv lv = {.t = V_LOOP};
    lv.u.lp = lp;
    for (size_t i = 0; i < items->n; i++) {
        if (step(C, line, 1))
            return;
        lp->idx = i;
        /* Jinja2 gives every iteration a fresh scope: a {% set %} in the
         * body does not carry over to the next iteration */
        if (i > 0 && !(f.vars = newdict(C, line)))
            return;
        if (assign(C, &f, &s->l1, items->v[i], line) || dset(C, f.vars, vstrref("loop", 4), lv, line))
            return;
        exec_body(C, &f, s->b);
        if (C->failed)
            return;
        int ctl = C->ctl;
        C->ctl = 0;
        if (ctl == 1)
            break;
    }
    if (items->n == 0 && s->c)
        exec_body(C, F, s->c);
}

static void exec_stmt(ctx *C, frame *F, const node *s)
{
    int line = s->line;
    switch (s->k) {
    case S_TEXT: emit_out(C, line, s->s, s->n); return;
    case S_OUT: {
        jv v = eval(C, F, s->a);
        if (C->failed)
            return;
        if (v.t == V_STR)
            emit_out(C, line, v.u.s.p, v.u.s.n);
        else {
            vstr_(C->out, v, 0, 0);
            emit_out(C, line, "", 0);
        }
        return;
    }
    case S_IF: {
        jv c = eval(C, F, s->a);
        if (C->failed)
            return;
        if (truthy(c))
            exec_body(C, F, s->b);
        else if (s->c)
            exec_stmt(C, F, s->c);
        return;
    }
    case S_FOR: exec_for(C, F, s); return;
    case S_SET: {
        jv v = eval(C, F, s->a);
        if (!C->failed)
            assign(C, F, &s->l1, v, line);
        return;
    }
    case S_SETBLOCK:
    case S_FILTERBLOCK: {
        sbuf cap = sbnew(C), *saved = C->out;
        C->out = &cap;
        exec_body(C, F, s->b);
        C->out = saved;
        if (C->failed) {
            free(cap.p);
            return;
        }
        jv v = sbtake(C, &cap, line);
        if (s->c) {
            jv saved_in = C->pipe_in;
            C->pipe_in = v;
            v = eval(C, F, s->c);
            C->pipe_in = saved_in;
        }
        if (C->failed)
            return;
        if (s->k == S_SETBLOCK)
            assign(C, F, &s->l1, v, line);
        else {
            jv t = tostr(C, v, line);
            if (!C->failed)
                emit_out(C, line, t.u.s.p, t.u.s.n);
        }
        return;
    }
    case S_MACRO: {
        jv f = mkfunc(C, F_MACRO, NULL, UNDEF, line);
        if (C->failed)
            return;
        f.u.fn->def = s;
        f.u.fn->env = F;
        dset(C, F->vars, vstrref(s->s, s->n), f, line);
        return;
    }
    case S_CALLBLOCK: {
        jv caller = mkfunc(C, F_CALLER, "caller", UNDEF, line);
        if (C->failed)
            return;
        caller.u.fn->def = s;
        caller.u.fn->env = F;
        const node *call = s->a;
        jv fn = eval(C, F, call->a);
        cargs A;
        if (C->failed || eval_args(C, F, call, &A, 0, UNDEF))
            return;
        jv r = callv(C, line, fn, &A, caller);
        if (C->failed)
            return;
        jv t = tostr(C, r, line);
        if (!C->failed)
            emit_out(C, line, t.u.s.p, t.u.s.n);
        return;
    }
    case S_BREAK: C->ctl = 1; return;
    case S_CONTINUE: C->ctl = 2; return;
    case S_DO: eval(C, F, s->a); return;
    case S_BODY: exec_body(C, F, s); return;
    default: rfail(C, line, "internal: bad statement node"); return;
    }
}

static void exec_body(ctx *C, frame *F, const node *b)
{
    for (size_t i = 0; i < b->l1.n && !C->failed && !C->ctl; i++)
        exec_stmt(C, F, b->l1.v[i]);
}

/* ---- entry ---- */

static jv from_json(ctx *C, const json_t *j, int depth)
{
    if (depth > 256)
        return rfail(C, 0, "input JSON nested too deeply"), UNDEF;
    switch (json_typeof(j)) {
    case JSON_NULL: return NONE;
    case JSON_TRUE: return vbool(1);
    case JSON_FALSE: return vbool(0);
    case JSON_INTEGER: return vint((int64_t)json_integer_value(j));
    case JSON_REAL: return vflt(json_real_value(j));
    case JSON_STRING: return mkstr(C, json_string_value(j), json_string_length(j), 0);
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        jlist *l = newlist(C, n, 0);
        if (!l)
            return UNDEF;
        for (size_t i = 0; i < n && !C->failed; i++)
            l->v[l->n++] = from_json(C, json_array_get(j, i), depth + 1);
        return vlist(l);
    }
    case JSON_OBJECT: {
        jdict *d = newdict(C, 0);
        if (!d)
            return UNDEF;
        const char *k;
        json_t *v;
        /* jansson iterates objects in insertion order */
        json_object_foreach((json_t *)j, k, v)
        {
            jv kv = mkstr(C, k, strlen(k), 0);
            jv vv = from_json(C, v, depth + 1);
            if (C->failed || dset(C, d, kv, vv, 0))
                return UNDEF;
        }
        return vdict(d, V_DICT);
    }
    }
    return UNDEF;
}

int exsa_jinja_render(const exsa_jinja *t, const json_t *vars, const exsa_jinja_opts *opts, char **out,
                      size_t *out_len, exsa_err *err)
{
    if (!t || !out)
        return exsa_err_set(err, EXSA_EINVAL, "jinja: render: NULL template or output");
    *out = NULL;
    if (vars && !json_is_object(vars))
        return exsa_err_set(err, EXSA_EINVAL, "jinja: render: variables must be a JSON object");
    ctx C;
    memset(&C, 0, sizeof C);
    C.err = err;
    C.a.limit = opts && opts->max_memory ? opts->max_memory : (size_t)256 << 20;
    C.max_out = opts && opts->max_output ? opts->max_output : (size_t)16 << 20;
    C.max_steps = opts && opts->max_steps ? opts->max_steps : 4000000;
    C.now = opts ? opts->now : NULL;
    sbuf ob = sbnew(&C);
    C.out = &ob;
    frame root = {.parent = NULL, .vars = newdict(&C, 0)};
    C.root = &root;
    if (root.vars && vars) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)vars, k, v)
        {
            jv kv = mkstr(&C, k, strlen(k), 0);
            jv vv = from_json(&C, v, 0);
            if (C.failed || dset(&C, root.vars, kv, vv, 0))
                break;
        }
    }
    if (!C.failed)
        exec_body(&C, &root, t->root);
    int code = 0;
    if (C.failed) {
        code = err && err->code ? err->code : EXSA_EINVAL;
        free(ob.p);
    } else {
        if (!ob.p)
            ob.p = calloc(1, 1);
        if (!ob.p)
            code = exsa_err_set(err, EXSA_ENOMEM, "jinja: out of memory");
        else {
            *out = ob.p;
            if (out_len)
                *out_len = ob.n;
        }
    }
    afree(&C.a);
    return code;
}
