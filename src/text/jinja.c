/* Jinja2-subset engine, the evaluator: walks the AST that jinja_parser.c
 * built (operators, expressions, statements, macros, the global functions)
 * and renders. See jinja.h for the scope and the limits, and
 * jinja_internal.h for how the engine is split over its files. Semantics
 * follow Python's Jinja2 3.x as HF transformers configures it; where a Python type matters
 * (str(), repr of floats, json.dumps) the Python output is reproduced. */
#include "text/jinja_internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>


/* ---- operators ---- */

/* Fails with Jinja2's UndefinedError for the undefined value u: what an
 * attribute, item, call, arithmetic or comparison on it raises. */
jv jinja_undef_err(ctx *C, int line, jv u)
{
    if (u.miss > 0) {
        static const char *const names[] = {"Undefined", "None", "bool object", "int object",
                                            "float object", "str object", "list object",
                                            "dict object", "Namespace object", "function object",
                                            "LoopContext object"};
        int t = u.miss - 1;
        const char *tn = t >= 0 && t <= V_LOOP ? names[t] : "object", *obj = "";
        if (u.u.s.p)
            jinja_rfail(C, line, "'%s%s' has no attribute '%.*s'", tn, obj, (int)u.u.s.n, u.u.s.p);
        else
            jinja_rfail(C, line, "'%s%s' has no such element", tn, obj);
    } else if (u.u.s.p)
        jinja_rfail(C, line, "'%.*s' is undefined", (int)u.u.s.n, u.u.s.p);
    else
        jinja_rfail(C, line, "an undefined value was used in an operation");
    return UNDEF;
}

jv jinja_arith(ctx *C, int line, const char *op, jv a, jv b)
{
    if (C->failed)
        return UNDEF;
    char o = op[0];
    if (o == '~') {
        sbuf s = jinja_sbnew(C);
        jinja_vstr(&s, a, 0, 0);
        jinja_vstr(&s, b, 0, 0);
        return jinja_sbtake(C, &s, line);
    }
    if (a.t == V_UNDEF)
        return jinja_undef_err(C, line, a);
    if (b.t == V_UNDEF)
        return jinja_undef_err(C, line, b);
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
                    return jinja_rfail(C, line, "zero to a negative power"), UNDEF;
                return vflt(pow(x, y));
            }
            if (!fl && !__builtin_mul_overflow(i, j, &r))
                return vint(r);
            return vflt(x * y);
        case '/':
            if (op[1] == '/') {
                if (fl ? y == 0 : j == 0)
                    return jinja_rfail(C, line, "integer division or modulo by zero"), UNDEF;
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
                return jinja_rfail(C, line, "division by zero"), UNDEF;
            return vflt(x / y);
        case '%':
            if (fl ? y == 0 : j == 0)
                return jinja_rfail(C, line, "integer division or modulo by zero"), UNDEF;
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
            /* Markup + str escapes the str (and str + Markup too) */
            int markup = a.miss || b.miss;
            if (markup) {
                a = jinja_html_escape(C, a, line);
                b = jinja_html_escape(C, b, line);
                if (C->failed)
                    return UNDEF;
            }
            sbuf s = jinja_sbnew(C);
            jinja_sb_put(&s, a.u.s.p, a.u.s.n);
            jinja_sb_put(&s, b.u.s.p, b.u.s.n);
            jv r = jinja_sbtake(C, &s, line);
            r.miss = markup;
            return r;
        }
        if (a.t == V_LIST && b.t == V_LIST && !a.u.l->gen && !b.u.l->gen) {
            size_t n = a.u.l->n + b.u.l->n;
            jlist *l = jinja_newlist(C, n, line);
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
            return a.t == V_STR ? vstrref("", 0) : vlist(jinja_newlist(C, 0, line));
        size_t unit = a.t == V_STR ? a.u.s.n : a.u.l->n * sizeof(jv), tot;
        if (__builtin_mul_overflow(unit, (size_t)k, &tot) || tot > C->max_out)
            return jinja_rfail(C, line, "repetition result too large"), UNDEF;
        if (jinja_step(C, line, (uint64_t)k))
            return UNDEF;
        if (a.t == V_STR) {
            sbuf s = jinja_sbnew(C);
            for (int64_t i = 0; i < k; i++)
                jinja_sb_put(&s, a.u.s.p, a.u.s.n);
            jv r = jinja_sbtake(C, &s, line);
            r.miss = a.miss;
            return r;
        }
        jlist *l = jinja_newlist(C, a.u.l->n * (size_t)k, line);
        if (!l)
            return UNDEF;
        for (int64_t i = 0; i < k; i++)
            for (size_t j = 0; j < a.u.l->n; j++)
                l->v[l->n++] = a.u.l->v[j];
        return vlist(l);
    }
    if (o == '*' && op[1] == 0 && (b.t == V_STR || b.t == V_LIST) && (a.t == V_INT || a.t == V_BOOL))
        return jinja_arith(C, line, op, b, a);
    jinja_rfail(C, line, "unsupported operand type(s) for %s: '%s' and '%s'", op, jinja_tname(a), jinja_tname(b));
    return UNDEF;
}

/* ---- evaluation ---- */

static jv eval(ctx *C, frame *F, const node *e);
static void exec_body(ctx *C, frame *F, const node *b);

static jv lookup(ctx *C, frame *F, const char *s, size_t n, int line)
{
    for (frame *f = F; f; f = f->parent) {
        long i = jinja_dfinds(f->vars, s, n);
        if (i >= 0)
            return f->vars->v[i];
    }
    static const char *const builtins[] = {"range", "namespace", "raise_exception", "strftime_now",
                                           "dict", NULL};
    for (const char *const *b = builtins; *b; b++)
        if (eqs(s, n, *b))
            return jinja_mkfunc(C, F_BUILTIN, *b, UNDEF, line);
    jv u = UNDEF;
    u.u.s.p = s; /* remembered for "'x' is undefined" messages */
    u.u.s.n = n;
    return u;
}

/* Evaluates call arguments into A (arena arrays). */
static int eval_args(ctx *C, frame *F, const node *e, cargs *A, int extra_front, jv front)
{
    size_t np = e->l1.n + (extra_front ? 1 : 0);
    A->pos = jinja_cal(C, (np + 1) * sizeof(jv), e->line);
    A->kwv = jinja_cal(C, (e->l2.n + 1) * sizeof(jv), e->line);
    A->kwn = jinja_cal(C, (e->l2.n + 1) * sizeof(node *), e->line);
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
        return jinja_rfail(C, line, "macro calls nested too deeply (limit %d)", MAX_CALL_DEPTH), UNDEF;
    if (jinja_step(C, line, 1))
        return UNDEF;
    frame f = {.parent = env, .vars = jinja_newdict(C, line)};
    if (!f.vars)
        return UNDEF;
    const nlist *ps = &def->l1;
    jlist *varargs = jinja_newlist(C, 0, line);
    jdict *kwargs = jinja_newdict(C, line);
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
        if (C->failed || jinja_dset(C, f.vars, vstrref(p->s, p->n), v, line))
            return UNDEF;
    }
    for (size_t i = ps->n; i < A->np; i++)
        if (jinja_lpush(C, varargs, A->pos[i], line))
            return UNDEF;
    for (size_t k = 0; k < A->nk; k++) {
        int known = 0;
        for (size_t i = 0; i < ps->n; i++)
            known |= A->kwn[k]->n == ps->v[i]->n && memcmp(A->kwn[k]->s, ps->v[i]->s, ps->v[i]->n) == 0;
        if (!known && jinja_dset(C, kwargs, vstrref(A->kwn[k]->s, A->kwn[k]->n), A->kwv[k], line))
            return UNDEF;
    }
    if (jinja_dset(C, f.vars, vstrref("varargs", 7), vlist(varargs), line) ||
        jinja_dset(C, f.vars, vstrref("kwargs", 6), vdict(kwargs, V_DICT), line))
        return UNDEF;
    if (caller.t != V_UNDEF && jinja_dset(C, f.vars, vstrref("caller", 6), caller, line))
        return UNDEF;
    sbuf cap = jinja_sbnew(C), *saved = C->out;
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
    return jinja_sbtake(C, &cap, line);
}

static jv builtin(ctx *C, int line, const char *name, cargs *A)
{
    if (strcmp(name, "raise_exception") == 0) {
        jv m = jinja_tostr(C, ga(A, 0, "message", vstrref("", 0)), line);
        if (!C->failed)
            jinja_rfail(C, line, "%.*s", (int)(m.u.s.n > 380 ? 380 : m.u.s.n), m.u.s.p);
        return UNDEF;
    }
    if (strcmp(name, "namespace") == 0 || strcmp(name, "dict") == 0) {
        jdict *d = jinja_newdict(C, line);
        if (!d)
            return UNDEF;
        for (size_t i = 0; i < A->np; i++) {
            jv a = A->pos[i];
            if (a.t == V_DICT || a.t == V_NS) {
                for (size_t k = 0; k < a.u.d->n; k++)
                    if (jinja_dset(C, d, a.u.d->k[k], a.u.d->v[k], line))
                        return UNDEF;
            } else
                return jinja_rfail(C, line, "%s(): positional arguments must be mappings", name), UNDEF;
        }
        for (size_t k = 0; k < A->nk; k++)
            if (jinja_dset(C, d, vstrref(A->kwn[k]->s, A->kwn[k]->n), A->kwv[k], line))
                return UNDEF;
        return vdict(d, name[0] == 'n' ? V_NS : V_DICT);
    }
    if (strcmp(name, "range") == 0) {
        int64_t a = 0, b, s = 1;
        for (size_t i = 0; i < A->np; i++)
            if (A->pos[i].t != V_INT && A->pos[i].t != V_BOOL)
                return jinja_rfail(C, line, "range(): integer arguments expected, got %s", jinja_tname(A->pos[i])), UNDEF;
        if (A->np == 1)
            b = numi(A->pos[0]);
        else if (A->np == 2 || A->np == 3) {
            a = numi(A->pos[0]);
            b = numi(A->pos[1]);
            if (A->np == 3)
                s = numi(A->pos[2]);
        } else
            return jinja_rfail(C, line, "range() takes 1 to 3 arguments"), UNDEF;
        if (s == 0)
            return jinja_rfail(C, line, "range() arg 3 must not be zero"), UNDEF;
        double cnt = s > 0 ? ceil(((double)b - (double)a) / (double)s) : ceil(((double)a - (double)b) / (double)-s);
        if (cnt < 0)
            cnt = 0;
        if (cnt > 1e8 || jinja_step(C, line, (uint64_t)cnt))
            return jinja_rfail(C, line, "range() too large"), UNDEF;
        jlist *l = jinja_newlist(C, (size_t)cnt, line);
        if (!l)
            return UNDEF;
        for (int64_t i = 0; i < (int64_t)cnt; i++)
            l->v[l->n++] = vint(a + i * s);
        return vlist(l);
    }
    if (strcmp(name, "strftime_now") == 0) {
        jv f = ga(A, 0, "format", UNDEF);
        if (jinja_want_str(C, line, f, "strftime_now"))
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
            return jinja_rfail(C, line, "strftime_now: format too long"), UNDEF;
        memcpy(fmt, f.u.s.p, f.u.s.n);
        fmt[f.u.s.n] = '\0';
        size_t k = strftime(out, sizeof out, fmt, &tmv);
        return jinja_mkstr(C, out, k, line);
    }
    return jinja_rfail(C, line, "unknown function %s", name), UNDEF;
}

static jv callv(ctx *C, int line, jv fn, cargs *A, jv caller)
{
    if (fn.t == V_UNDEF)
        return jinja_undef_err(C, line, fn);
    if (fn.t != V_FUNC)
        return jinja_rfail(C, line, "'%s' object is not callable", jinja_tname(fn)), UNDEF;
    jfunc *f = fn.u.fn;
    switch (f->kind) {
    case F_BUILTIN: return builtin(C, line, f->name, A);
    case F_METHOD: return jinja_call_method(C, line, f->self, f->name, A);
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
        /* Jinja2's Undefined: a missing attribute is undefined, but any
         * attribute or item of an undefined value is an error */
        jv o = eval(C, F, e->a);
        if (C->failed)
            return UNDEF;
        if (o.t == V_UNDEF)
            return jinja_undef_err(C, line, o);
        jv r = jinja_getattr(C, line, o, e->s, e->n);
        if (r.t == V_UNDEF) {
            r.u.s.p = e->s;
            r.u.s.n = e->n;
            r.miss = o.t + 1;
        }
        return r;
    }
    case E_INDEX: {
        jv o = eval(C, F, e->a), k = eval(C, F, e->b);
        if (C->failed)
            return UNDEF;
        if (o.t == V_UNDEF)
            return jinja_undef_err(C, line, o);
        jv r = jinja_getitem(C, line, o, k);
        if (r.t == V_UNDEF && k.t == V_STR)
            r = jinja_getattr(C, line, o, k.u.s.p, k.u.s.n);
        if (r.t == V_UNDEF) {
            r.u.s.p = k.t == V_STR ? k.u.s.p : NULL;
            r.u.s.n = k.t == V_STR ? k.u.s.n : 0;
            r.miss = o.t + 1;
        }
        return r;
    }
    case E_SLICE: {
        jv o = eval(C, F, e->a), a = e->b ? eval(C, F, e->b) : NONE, b = e->c ? eval(C, F, e->c) : NONE,
           s = e->d ? eval(C, F, e->d) : NONE;
        if (C->failed)
            return UNDEF;
        if (o.t == V_UNDEF)
            return jinja_undef_err(C, line, o);
        return jinja_do_slice(C, line, o, &a, &b, &s);
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
        return jinja_apply_filter(C, line, e->s, e->n, in, &A);
    }
    case E_TEST: {
        jv in = eval(C, F, e->a);
        cargs A;
        if (C->failed || eval_args(C, F, e, &A, 0, UNDEF))
            return UNDEF;
        int r = jinja_apply_test(C, line, e->s, e->n, in, A.pos, A.np);
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
            return jinja_rfail(C, line, "bad operand type for unary %c: '%s'", e->k == E_NEG ? '-' : '+', jinja_tname(a)), UNDEF;
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
            return vbool(jinja_veq(a, b) == (op[0] == '='));
        if (eqs(op, n, "in") || eqs(op, n, "notin")) {
            int r = jinja_contains(C, line, b, a);
            return r < 0 ? UNDEF : vbool(op[0] == 'i' ? r : !r);
        }
        if (op[0] == '<' || op[0] == '>') {
            int r;
            if (jinja_vcmp(C, line, a, b, &r))
                return UNDEF;
            return vbool(op[0] == '<' ? (n == 2 ? r <= 0 : r < 0) : (n == 2 ? r >= 0 : r > 0));
        }
        char o[3] = {op[0], n > 1 ? op[1] : 0, 0};
        return jinja_arith(C, line, o, a, b);
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
        jlist *l = jinja_newlist(C, e->l1.n, line);
        if (!l)
            return UNDEF;
        l->tuple = e->neg;
        for (size_t i = 0; i < e->l1.n; i++)
            l->v[l->n++] = eval(C, F, e->l1.v[i]);
        return vlist(l);
    }
    case E_DICT: {
        jdict *d = jinja_newdict(C, line);
        if (!d)
            return UNDEF;
        for (size_t i = 0; i < e->l1.n && !C->failed; i++) {
            jv k = eval(C, F, e->l1.v[i]), v = eval(C, F, e->l2.v[i]);
            if (k.t == V_LIST || k.t == V_DICT)
                return jinja_rfail(C, line, "unhashable type: '%s'", jinja_tname(k)), UNDEF;
            if (jinja_dset(C, d, k, v, line))
                return UNDEF;
        }
        return vdict(d, V_DICT);
    }
    default: return jinja_rfail(C, line, "internal: bad expression node"), UNDEF;
    }
}

/* ---- statements ---- */

static int assign(ctx *C, frame *F, const nlist *targets, jv v, int line)
{
    if (targets->n == 1) {
        const node *t = targets->v[0];
        if (t->k == E_NAME)
            return jinja_dset(C, F->vars, vstrref(t->s, t->n), v, line);
        jv ns = lookup(C, F, t->a->s, t->a->n, line);
        if (ns.t != V_NS)
            return jinja_rfail(C, line, "can only set attributes of a namespace(), '%.*s' is %s", (int)t->a->n,
                         t->a->s, jinja_tname(ns)), -1;
        return jinja_dset(C, ns.u.d, vstrref(t->s, t->n), v, line);
    }
    jlist *l = jinja_iterlist(C, line, v);
    if (!l)
        return -1;
    if (l->n != targets->n)
        return jinja_rfail(C, line, "cannot unpack %zu values into %zu names", l->n, targets->n), -1;
    for (size_t i = 0; i < l->n; i++) {
        nlist one = {.v = &targets->v[i], .n = 1, .cap = 1};
        if (assign(C, F, &one, l->v[i], line))
            return -1;
    }
    return 0;
}

static void emit_out(ctx *C, int line, const char *s, size_t n)
{
    jinja_sb_put(C->out, s, n);
    if (C->out->over)
        jinja_rfail(C, line, C->out->over == 2 ? "out of memory" : "output longer than the limit (%zu bytes)",
              C->max_out);
}

static void exec_for(ctx *C, frame *F, const node *s)
{
    int line = s->line;
    jv it = eval(C, F, s->a);
    if (C->failed)
        return;
    jlist *src = jinja_iterlist(C, line, it);
    frame f = {.parent = F, .vars = jinja_newdict(C, line)};
    jloop *lp = jinja_cal(C, sizeof *lp, line);
    if (!src || !f.vars || !lp)
        return;
    jlist *items = src;
    if (s->d) {
        items = jinja_newlist(C, 0, line);
        if (!items)
            return;
        for (size_t i = 0; i < src->n; i++) {
            if (jinja_step(C, line, 1) || assign(C, &f, &s->l1, src->v[i], line))
                return;
            jv c = eval(C, &f, s->d);
            if (C->failed)
                return;
            if (truthy(c) && jinja_lpush(C, items, src->v[i], line))
                return;
        }
    }
    lp->items = items;
    lp->depth = 1;
    jv lv = {.t = V_LOOP};
    lv.u.lp = lp;
    for (size_t i = 0; i < items->n; i++) {
        if (jinja_step(C, line, 1))
            return;
        lp->idx = i;
        /* Jinja2 gives every iteration a fresh scope: a {% set %} in the
         * body does not carry over to the next iteration */
        if (i > 0 && !(f.vars = jinja_newdict(C, line)))
            return;
        if (assign(C, &f, &s->l1, items->v[i], line) || jinja_dset(C, f.vars, vstrref("loop", 4), lv, line))
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
            jinja_vstr(C->out, v, 0, 0);
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
        sbuf cap = jinja_sbnew(C), *saved = C->out;
        C->out = &cap;
        exec_body(C, F, s->b);
        C->out = saved;
        if (C->failed) {
            free(cap.p);
            return;
        }
        jv v = jinja_sbtake(C, &cap, line);
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
            jv t = jinja_tostr(C, v, line);
            if (!C->failed)
                emit_out(C, line, t.u.s.p, t.u.s.n);
        }
        return;
    }
    case S_MACRO: {
        jv f = jinja_mkfunc(C, F_MACRO, NULL, UNDEF, line);
        if (C->failed)
            return;
        f.u.fn->def = s;
        f.u.fn->env = F;
        jinja_dset(C, F->vars, vstrref(s->s, s->n), f, line);
        return;
    }
    case S_CALLBLOCK: {
        jv caller = jinja_mkfunc(C, F_CALLER, "caller", UNDEF, line);
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
        jv t = jinja_tostr(C, r, line);
        if (!C->failed)
            emit_out(C, line, t.u.s.p, t.u.s.n);
        return;
    }
    case S_BREAK: C->ctl = 1; return;
    case S_CONTINUE: C->ctl = 2; return;
    case S_BODY: exec_body(C, F, s); return;
    default: jinja_rfail(C, line, "internal: bad statement node"); return;
    }
}

static void exec_body(ctx *C, frame *F, const node *b)
{
    for (size_t i = 0; i < b->l1.n && !C->failed && !C->ctl; i++)
        exec_stmt(C, F, b->l1.v[i]);
}

/* ---- entry ---- */

/* A JSON value as a template value (strings copied into the render arena). */
jv jinja_from_json(ctx *C, const json_t *j, int depth)
{
    if (depth > 256)
        return jinja_rfail(C, 0, "input JSON nested too deeply"), UNDEF;
    switch (json_typeof(j)) {
    case JSON_NULL: return NONE;
    case JSON_TRUE: return vbool(1);
    case JSON_FALSE: return vbool(0);
    case JSON_INTEGER: return vint((int64_t)json_integer_value(j));
    case JSON_REAL: return vflt(json_real_value(j));
    case JSON_STRING: return jinja_mkstr(C, json_string_value(j), json_string_length(j), 0);
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        jlist *l = jinja_newlist(C, n, 0);
        if (!l)
            return UNDEF;
        for (size_t i = 0; i < n && !C->failed; i++)
            l->v[l->n++] = jinja_from_json(C, json_array_get(j, i), depth + 1);
        return vlist(l);
    }
    case JSON_OBJECT: {
        jdict *d = jinja_newdict(C, 0);
        if (!d)
            return UNDEF;
        const char *k;
        json_t *v;
        /* jansson iterates objects in insertion order */
        json_object_foreach((json_t *)j, k, v)
        {
            jv kv = jinja_mkstr(C, k, strlen(k), 0);
            jv vv = jinja_from_json(C, v, depth + 1);
            if (C->failed || jinja_dset(C, d, kv, vv, 0))
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
    sbuf ob = jinja_sbnew(&C);
    C.out = &ob;
    frame root = {.parent = NULL, .vars = jinja_newdict(&C, 0)};
    C.root = &root;
    if (root.vars && vars) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)vars, k, v)
        {
            jv kv = jinja_mkstr(&C, k, strlen(k), 0);
            jv vv = jinja_from_json(&C, v, 0);
            if (C.failed || jinja_dset(&C, root.vars, kv, vv, 0))
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
    jinja_afree(&C.a);
    return code;
}
