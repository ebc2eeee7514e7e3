/* Jinja2 parser: tokens -> AST (expressions by precedence climbing,
 * statements by recursive descent), all nodes in the template's arena. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "text/jinja_internal.h"

typedef struct parser {
    tok *t;
    size_t pos, nt;
    arena *a;
    exsa_err *err;
    int failed, depth;
    /* Jinja2 checks filter and test names when it compiles, except inside
     * an {% if %} (test and branches) or an inline `x if c else y`: there an
     * unknown name fails only when it is applied. soft is set while parsing
     * such a part (a for / macro / call / filter / set block inside it
     * starts hard again); unknown names seen while hard wait in pending
     * (an inline if may still forgive the ones in its first operand) and
     * fail the parse at the end. */
    int soft;
    nlist pending;
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
    node *n = jinja_aalloc(P->a, sizeof *n);
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
        node **v = jinja_aalloc(P->a, c * sizeof *v);
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

static int in_list(const char *const *l, const char *s, size_t n)
{
    for (; *l; l++)
        if (strlen(*l) == n && memcmp(*l, s, n) == 0)
            return 1;
    return 0;
}

static node *p_expr(parser *P, int with_cond);
static node *p_tuple(parser *P, int with_cond);
static node *p_unary(parser *P, int with_filter);

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
        char *s = jinja_aalloc(P->a, tot + 1);
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
    if (!jinja_filter_known(f->s, f->n) && !P->soft && nl_push(P, &P->pending, f))
        return NULL;
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
            if (!jinja_test_known(x->s, x->n) && !P->soft && nl_push(P, &P->pending, x))
                return NULL;
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
    size_t mark = P->pending.n;
    node *n = p_or(P);
    while (n && with_cond && is_name(cur(P), "if")) {
        tok *t = cur(P);
        if (++P->depth > MAX_DEPTH)
            return perr(P, t->line, "expression nested too deeply");
        adv(P);
        node *x = mk(P, E_COND, t->line);
        if (!x)
            return NULL;
        /* the whole inline if is soft, its first operand included */
        P->pending.n = mark;
        int soft = P->soft;
        P->soft = 1;
        x->b = n;
        x->a = p_or(P);
        if (x->a && is_name(cur(P), "else")) {
            adv(P);
            x->c = p_expr(P, 1);
            if (!x->c)
                x->a = NULL;
        }
        P->soft = soft;
        if (!x->a)
            return NULL;
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

static node *p_if(parser *P, int line);
static node *p_block_stmt(parser *P, tok *kw, int line, int outer);

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
        int soft = P->soft;
        P->soft = 1;
        node *n = p_if(P, line);
        P->soft = soft;
        return n;
    }
    int soft = P->soft;
    P->soft = 0; /* the blocks below open a new Jinja2 frame */
    node *n = p_block_stmt(P, kw, line, soft);
    P->soft = soft;
    return n;
}

/* {% if %} / {% elif %}, with P->soft set. */
static node *p_if(parser *P, int line)
{
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

/* The other statements, with P->soft cleared; outer is the softness around
 * the statement, which the parts evaluated in the enclosing frame keep. */
static node *p_block_stmt(parser *P, tok *kw, int line, int outer)
{
    if (is_name(kw, "for")) {
        node *n = mk(P, S_FOR, line);
        if (!n || p_targets(P, &n->l1, 0))
            return NULL;
        if (!is_name(cur(P), "in"))
            return perr(P, cur(P)->line, "expected 'in' in for loop");
        adv(P);
        P->soft = outer;
        n->a = p_tuple(P, 0);
        P->soft = 0;
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
            P->soft = outer;
            n->a = p_tuple(P, 1);
            P->soft = 0;
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
            P->soft = outer;
            n->a = p_expr(P, 1);
            P->soft = 0;
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
    /* no {% do %}: HF's environment does not load jinja2.ext.do */
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
    char *s = jinja_aalloc(&t->a, len + 1);
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
    if (jinja_lex(&L)) {
        free(L.v);
        exsa_jinja_destroy(t);
        return NULL;
    }
    parser P = {.t = L.v, .nt = L.nt, .a = &t->a, .err = err};
    t->root = p_body(&P, NULL, NULL, 1);
    if (t->root && P.pending.n) {
        const node *u = P.pending.v[0];
        perr(&P, u->line, "unknown %s '%.*s'", u->k == E_FILTER ? "filter" : "test", (int)u->n, u->s);
        t->root = NULL;
    }
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
    jinja_afree(&t->a);
    free(t);
}
