/* Shared by the jinja*.c files (the template engine split by task); not
 * visible outside src/text/. jinja_lexer.c turns the source into tokens,
 * jinja_parser.c builds the AST, jinja_value.c holds the value model
 * (arena, strings, lists, dicts, conversions, comparison, JSON),
 * jinja_methods.c the Python str/dict/list methods, jinja_filters.c the
 * filters and tests, and jinja.c the evaluator and exsa_jinja_render. */
#ifndef EXSA_TEXT_JINJA_INTERNAL_H
#define EXSA_TEXT_JINJA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "text/jinja.h"
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

/* ------------------------------------------------------------------ values */

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_FUNC, V_LOOP };

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jfunc jfunc;
typedef struct jloop jloop;

typedef struct jv {
    int t;
    /* V_UNDEF, for Jinja2's error messages: 0 when the variable u.s is
     * missing, else 1 + the type (V_*) of the object that has no attribute
     * or item u.s (u.s.p NULL: an index that is out of range).
     * V_STR: 1 for a Markup string (made by |safe or |escape), which
     * escapes the plain string it is added to, as MarkupSafe does. */
    int miss;
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
    /* not a list in Jinja2 but what its filter returns there: GEN_ITER a
     * generator (map, select, reject, selectattr, rejectattr, unique,
     * items), GEN_REVERSED a list_reverseiterator (reverse): always true,
     * no len(), no subscript, not JSON (values are still kept as a list,
     * and may be iterated more than once) */
    int gen;
};

enum { GEN_NONE, GEN_ITER, GEN_REVERSED };
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

static inline jv vbool(int b)
{
    jv v = {.t = V_BOOL};
    v.u.b = b != 0;
    return v;
}
static inline jv vint(int64_t i)
{
    jv v = {.t = V_INT};
    v.u.i = i;
    return v;
}
static inline jv vflt(double f)
{
    jv v = {.t = V_FLOAT};
    v.u.f = f;
    return v;
}
static inline jv vstrref(const char *p, size_t n)
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

/* ------------------------------------------------------------------ AST */

enum {
    /* expressions */
    E_LIT, E_NAME, E_ATTR, E_INDEX, E_SLICE, E_CALL, E_FILTER, E_TEST, E_NEG, E_POS, E_BIN,
    E_AND, E_OR, E_NOT, E_COND, E_LIST, E_DICT, E_KW, E_PIPEIN,
    /* statements */
    S_BODY, S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_MACRO, S_CALLBLOCK, S_FILTERBLOCK,
    S_BREAK, S_CONTINUE
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

/* json.dumps(v, ensure_ascii, indent, separators, sort_keys) */
typedef struct jopt {
    int indent; /* < 0: none */
    const char *isep, *ksep;
    size_t isepn, ksepn;
    int ascii, sort;
} jopt;

enum { CASE_LOWER, CASE_UPPER, CASE_CAP, CASE_TITLE_PY, CASE_TITLE_JINJA, CASE_SWAP };

/* jinja_lexer.c */
int jinja_lex(lexer *L);

/* jinja_value.c */
void *jinja_aalloc(arena *a, size_t n);
void jinja_afree(arena *a);
void *jinja_cal(ctx *C, size_t n, int line);
int jinja_contains(ctx *C, int line, jv hay, jv needle);
long jinja_dfind(const jdict *d, jv key);
long jinja_dfinds(const jdict *d, const char *s, size_t n);
jv jinja_do_slice(ctx *C, int line, jv obj, jv *st, jv *sp, jv *stp);
int jinja_dset(ctx *C, jdict *d, jv k, jv v, int line);
jv jinja_getattr(ctx *C, int line, jv obj, const char *name, size_t n);
jv jinja_getitem(ctx *C, int line, jv obj, jv key);
jlist *jinja_iterlist(ctx *C, int line, jv v);
int jinja_lpush(ctx *C, jlist *l, jv v, int line);
jv jinja_mkfunc(ctx *C, int kind, const char *name, jv self, int line);
jv jinja_mkstr(ctx *C, const char *p, size_t n, int line);
jdict *jinja_newdict(ctx *C, int line);
jlist *jinja_newlist(ctx *C, size_t cap, int line);
int jinja_py_space(int32_t c);
void jinja_rfail(ctx *C, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void jinja_sb_put(sbuf *b, const char *s, size_t n);
sbuf jinja_sbnew(ctx *C);
jv jinja_sbtake(ctx *C, sbuf *b, int line);
int jinja_step(ctx *C, int line, uint64_t n);
const char *jinja_tname(jv v);
jv jinja_tostr(ctx *C, jv v, int line);
jv jinja_html_escape(ctx *C, jv s, int line);
size_t jinja_u8dec(const unsigned char *s, size_t n, int32_t *cp);
size_t jinja_u8enc(int32_t cp, char *out);
size_t jinja_u8len(const char *p, size_t n);
int jinja_vcmp(ctx *C, int line, jv a, jv b, int *res);
int jinja_veq(jv a, jv b);
int jinja_vjson(ctx *C, sbuf *b, jv v, const jopt *o, int level, int line);
void jinja_vstr(sbuf *b, jv v, int repr, int depth);
int jinja_want_str(ctx *C, int line, jv v, const char *what);

/* jinja_methods.c */
jv jinja_call_method(ctx *C, int line, jv self, const char *m, cargs *A);
jv jinja_s_case(ctx *C, jv s, int mode, int line);
jv jinja_s_replace(ctx *C, jv s, jv old, jv nw, int64_t count, int line);
jv jinja_s_strip(jv s, jv chars, int left, int right);
jv jinja_splitlines(ctx *C, jv s, int line);

/* jinja_filters.c */
int jinja_filter_known(const char *s, size_t n);
int jinja_test_known(const char *s, size_t n);
jv jinja_apply_filter(ctx *C, int line, const char *name, size_t nn, jv in, cargs *A);
int jinja_apply_test(ctx *C, int line, const char *name, size_t nn, jv v, jv *args, size_t na);

/* jinja.c */
jv jinja_from_json(ctx *C, const json_t *j, int depth);
jv jinja_undef_err(ctx *C, int line, jv u);
jv jinja_arith(ctx *C, int line, const char *op, jv a, jv b);

/* small helpers */
static inline jv vlist(jlist *l)
{
    jv v = {.t = V_LIST};
    v.u.l = l;
    return v;
}
static inline jv vdict(jdict *d, int t)
{
    jv v = {.t = t};
    v.u.d = d;
    return v;
}
static inline int isnum(jv v)
{
    return v.t == V_INT || v.t == V_FLOAT || v.t == V_BOOL;
}
static inline double numf(jv v)
{
    return v.t == V_FLOAT ? v.u.f : v.t == V_INT ? (double)v.u.i : (double)v.u.b;
}
static inline int64_t numi(jv v)
{
    return v.t == V_INT ? v.u.i : v.t == V_BOOL ? v.u.b : (int64_t)v.u.f;
}
static inline int eqs(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}
/* Positional argument i, else keyword kw, else def. */
static inline jv ga(const cargs *A, size_t i, const char *kw, jv def)
{
    if (i < A->np)
        return A->pos[i];
    if (kw)
        for (size_t k = 0; k < A->nk; k++)
            if (A->kwn[k]->n == strlen(kw) && memcmp(A->kwn[k]->s, kw, A->kwn[k]->n) == 0)
                return A->kwv[k];
    return def;
}
static inline void sb_putc(sbuf *b, char c)
{
    jinja_sb_put(b, &c, 1);
}
static inline void sb_puts(sbuf *b, const char *s)
{
    jinja_sb_put(b, s, strlen(s));
}
static inline int truthy(jv v)
{
    switch (v.t) {
    case V_UNDEF:
    case V_NONE: return 0;
    case V_BOOL: return v.u.b;
    case V_INT: return v.u.i != 0;
    case V_FLOAT: return v.u.f != 0.0;
    case V_STR: return v.u.s.n != 0;
    case V_LIST: return v.u.l->gen || v.u.l->n != 0; /* a generator object is true */
    case V_DICT: return v.u.d->n != 0;
    default: return 1;
    }
}

#endif
