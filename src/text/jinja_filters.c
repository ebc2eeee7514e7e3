/* Jinja2 filters and tests (plus HF's tojson and fromjson). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "text/jinja_internal.h"


/* ---- filters ---- */

/* Jinja2's attribute paths ("a.b.0"): item lookup first, then attribute. */
static jv attrpath(ctx *C, int line, jv v, jv path)
{
    if (path.t != V_STR)
        return jinja_getitem(C, line, v, path);
    const char *p = path.u.s.p, *e = p + path.u.s.n;
    while (p <= e) {
        const char *dot = memchr(p, '.', (size_t)(e - p));
        size_t k = dot ? (size_t)(dot - p) : (size_t)(e - p);
        int digits = k > 0;
        for (size_t i = 0; i < k; i++)
            digits &= p[i] >= '0' && p[i] <= '9';
        jv key = digits ? vint(atoll(p)) : vstrref(p, k);
        jv r = jinja_getitem(C, line, v, key);
        if (r.t == V_UNDEF && !digits)
            r = jinja_getattr(C, line, v, p, k);
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
        if (jinja_vcmp(C, line, key[j], key[i], &r))
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
        v = jinja_s_case(C, v, CASE_LOWER, line);
    return v;
}

static jv f_sort(ctx *C, int line, jlist *src, int rev, int cs, jv attr)
{
    size_t n = src->n;
    jlist *l = jinja_newlist(C, n, line);
    jv *key = jinja_cal(C, (n + 1) * sizeof(jv), line), *tv = jinja_cal(C, (n + 1) * sizeof(jv), line),
       *tk = jinja_cal(C, (n + 1) * sizeof(jv), line);
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
            return jinja_rfail(C, line, "tojson: indent too large"), UNDEF;
        o.indent = k < 0 ? 0 : (int)k;
        o.isep = ",";
        o.isepn = 1;
    } else if (ind.t != V_NONE && ind.t != V_UNDEF)
        return jinja_rfail(C, line, "tojson: indent must be an integer"), UNDEF;
    if (sep.t == V_LIST && sep.u.l->n == 2 && sep.u.l->v[0].t == V_STR && sep.u.l->v[1].t == V_STR) {
        o.isep = sep.u.l->v[0].u.s.p;
        o.isepn = sep.u.l->v[0].u.s.n;
        o.ksep = sep.u.l->v[1].u.s.p;
        o.ksepn = sep.u.l->v[1].u.s.n;
    }
    sbuf b = jinja_sbnew(C);
    if (jinja_vjson(C, &b, v, &o, 0, line)) {
        free(b.p);
        return UNDEF;
    }
    return jinja_sbtake(C, &b, line);
}

static jv f_indent(ctx *C, int line, jv s, cargs *A)
{
    jv w = ga(A, 0, "width", vint(4)), first = ga(A, 1, "first", vbool(0)), blank = ga(A, 2, "blank", vbool(0));
    sbuf ind = jinja_sbnew(C);
    if (w.t == V_STR)
        jinja_sb_put(&ind, w.u.s.p, w.u.s.n);
    else {
        int64_t k = isnum(w) ? numi(w) : 4;
        for (int64_t i = 0; i < k && i < 1024; i++)
            sb_putc(&ind, ' ');
    }
    jv in = jinja_sbtake(C, &ind, line);
    if (C->failed)
        return UNDEF;
    /* Jinja2 appends "\n" before jinja_splitlines(), so a trailing newline is
     * kept and an empty input gives one (empty) line */
    sbuf t = jinja_sbnew(C);
    jinja_sb_put(&t, s.u.s.p, s.u.s.n);
    sb_putc(&t, '\n');
    jv ts = jinja_sbtake(C, &t, line);
    if (C->failed)
        return UNDEF;
    jv lv = jinja_splitlines(C, ts, line);
    if (C->failed)
        return UNDEF;
    jlist *l = lv.u.l;
    sbuf b = jinja_sbnew(C);
    if (truthy(first))
        jinja_sb_put(&b, in.u.s.p, in.u.s.n);
    for (size_t i = 0; i < l->n; i++) {
        jv x = l->v[i];
        if (i) {
            sb_putc(&b, '\n');
            if (truthy(blank) || x.u.s.n)
                jinja_sb_put(&b, in.u.s.p, in.u.s.n);
        }
        jinja_sb_put(&b, x.u.s.p, x.u.s.n);
    }
    return jinja_sbtake(C, &b, line);
}

/* A generator-like result (see jlist.gen) for a filter Jinja2 makes one with. */
static jlist *newgen(ctx *C, size_t cap, int line)
{
    jlist *l = jinja_newlist(C, cap, line);
    if (l)
        l->gen = GEN_ITER;
    return l;
}

static jv f_select(ctx *C, int line, jv in, cargs *A, int attr, int reject)
{
    if (!truthy(in)) /* Jinja2: `if value:` before the loop, so none gives nothing */
        return vlist(newgen(C, 0, line));
    jlist *src = jinja_iterlist(C, line, in);
    if (!src)
        return UNDEF;
    jlist *l = newgen(C, 0, line);
    if (!l)
        return UNDEF;
    size_t ti = attr ? 1 : 0;
    jv test = ga(A, ti, NULL, UNDEF);
    if (test.t != V_UNDEF && jinja_want_str(C, line, test, "select test"))
        return UNDEF;
    size_t na = A->np > ti + 1 ? A->np - ti - 1 : 0;
    for (size_t i = 0; i < src->n; i++) {
        jv x = src->v[i], v = attr ? attrpath(C, line, x, ga(A, 0, NULL, UNDEF)) : x;
        int r = test.t == V_UNDEF ? truthy(v)
                                  : jinja_apply_test(C, line, test.u.s.p, test.u.s.n, v, A->pos + ti + 1, na);
        if (r < 0)
            return UNDEF;
        if (r != reject && jinja_lpush(C, l, x, line))
            return UNDEF;
    }
    return vlist(l);
}

static jv f_map(ctx *C, int line, jv in, cargs *A)
{
    if (!truthy(in))
        return vlist(newgen(C, 0, line));
    jlist *src = jinja_iterlist(C, line, in);
    if (!src)
        return UNDEF;
    jlist *l = newgen(C, src->n, line);
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
    if (jinja_want_str(C, line, f, "map"))
        return UNDEF;
    if (!jinja_filter_known(f.u.s.p, f.u.s.n))
        return jinja_rfail(C, line, "map: unknown filter '%.*s'", (int)f.u.s.n, f.u.s.p), UNDEF;
    cargs sub = {.pos = A->pos + 1, .np = A->np ? A->np - 1 : 0, .kwn = A->kwn, .kwv = A->kwv, .nk = A->nk};
    for (size_t i = 0; i < src->n; i++) {
        jv v = jinja_apply_filter(C, line, f.u.s.p, f.u.s.n, src->v[i], &sub);
        if (C->failed)
            return UNDEF;
        l->v[l->n++] = v;
    }
    return vlist(l);
}


static jv f_round(ctx *C, int line, jv v, cargs *A)
{
    if (!isnum(v))
        return jinja_rfail(C, line, "round: expected a number, got %s", jinja_tname(v)), UNDEF;
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
    jlist *l = jinja_iterlist(C, line, in);
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
        if (jinja_vcmp(C, line, k, bk, &r))
            return UNDEF;
        if (want_max ? r > 0 : r < 0) {
            best = i;
            bk = k;
        }
    }
    return l->v[best];
}


/* ---- the filter table ---- */

/* Markup(value): Jinja2 prints it as it is; what matters without
 * autoescape is that a Markup escapes a plain string added to it. */
static jv fl_safe(ctx *C, int line, jv in, cargs *A)
{
    jv s = in.t == V_STR ? in : jinja_tostr(C, in, line);
    s.miss = 1;
    return s;
}

/* s, Markup again when in was Markup (str methods of Markup return Markup). */
static jv keep_markup(jv in, jv s)
{
    if (in.t == V_STR && in.miss && s.t == V_STR)
        s.miss = 1;
    return s;
}

static jv fl_default(ctx *C, int line, jv in, cargs *A)
{
    int boolean = truthy(ga(A, 1, "boolean", vbool(0)));
    if (in.t == V_UNDEF || (boolean && !truthy(in)))
        return ga(A, 0, "default_value", vstrref("", 0));
    return in;
}

static jv fl_length(ctx *C, int line, jv in, cargs *A)
{
    switch (in.t) {
    case V_STR: return vint((int64_t)jinja_u8len(in.u.s.p, in.u.s.n));
    case V_LIST:
        if (in.u.l->gen)
            return jinja_rfail(C, line, "object of type '%s' has no len()", jinja_tname(in)), UNDEF;
        return vint((int64_t)in.u.l->n);
    case V_DICT:
    case V_NS: return vint((int64_t)in.u.d->n);
    case V_UNDEF: return vint(0);
    default: return jinja_rfail(C, line, "object of type '%s' has no len()", jinja_tname(in)), UNDEF;
    }
}

static jv fl_string(ctx *C, int line, jv in, cargs *A)
{
    return keep_markup(in, jinja_tostr(C, in, line));
}

static jv fl_items(ctx *C, int line, jv in, cargs *A)
{
    if (in.t == V_UNDEF)
        return vlist(newgen(C, 0, line));
    if (in.t != V_DICT)
        return jinja_rfail(C, line, "items: expected a mapping, got %s", jinja_tname(in)), UNDEF;
    jv r = jinja_call_method(C, line, in, "items", A);
    if (r.t == V_LIST)
        r.u.l->gen = GEN_ITER;
    return r;
}

static jv fl_list(ctx *C, int line, jv in, cargs *A)
{
    jlist *s = jinja_iterlist(C, line, in);
    if (!s)
        return UNDEF;
    jlist *l = jinja_newlist(C, s->n, line);
    if (!l)
        return UNDEF;
    if (s->n)
        memcpy(l->v, s->v, s->n * sizeof(jv));
    l->n = s->n;
    return vlist(l);
}

static jv first_last(ctx *C, int line, jv in, int last)
{
    jlist *l = jinja_iterlist(C, line, in);
    if (!l || l->n == 0)
        return UNDEF;
    return last ? l->v[l->n - 1] : l->v[0];
}
static jv fl_first(ctx *C, int line, jv in, cargs *A)
{
    return first_last(C, line, in, 0);
}
static jv fl_last(ctx *C, int line, jv in, cargs *A)
{
    if (in.t == V_LIST && in.u.l->gen)
        return jinja_rfail(C, line, "'%s' object is not reversible", jinja_tname(in)), UNDEF;
    return first_last(C, line, in, 1);
}

static jv fl_join(ctx *C, int line, jv in, cargs *A)
{
    jlist *l = jinja_iterlist(C, line, in);
    if (!l)
        return UNDEF;
    jv sep = jinja_tostr(C, ga(A, 0, "d", vstrref("", 0)), line), at = ga(A, 1, "attribute", NONE);
    sbuf b = jinja_sbnew(C);
    for (size_t i = 0; i < l->n; i++) {
        if (i)
            jinja_sb_put(&b, sep.u.s.p, sep.u.s.n);
        jv x = at.t != V_NONE ? attrpath(C, line, l->v[i], at) : l->v[i];
        jinja_vstr(&b, x, 0, 0);
    }
    return jinja_sbtake(C, &b, line);
}

static jv fl_selectattr(ctx *C, int line, jv in, cargs *A)
{
    return f_select(C, line, in, A, 1, 0);
}
static jv fl_rejectattr(ctx *C, int line, jv in, cargs *A)
{
    return f_select(C, line, in, A, 1, 1);
}
static jv fl_select(ctx *C, int line, jv in, cargs *A)
{
    return f_select(C, line, in, A, 0, 0);
}
static jv fl_reject(ctx *C, int line, jv in, cargs *A)
{
    return f_select(C, line, in, A, 0, 1);
}

static jv fl_unique(ctx *C, int line, jv in, cargs *A)
{
    jlist *s = jinja_iterlist(C, line, in);
    jlist *l = newgen(C, 0, line), *seen = jinja_newlist(C, 0, line);
    if (!s || !l || !seen)
        return UNDEF;
    int cs = truthy(ga(A, 0, "case_sensitive", vbool(0)));
    jv attr = ga(A, 1, "attribute", NONE);
    for (size_t i = 0; i < s->n; i++) {
        jv k = sortkey(C, line, s->v[i], attr, cs);
        if (jinja_contains(C, line, vlist(seen), k))
            continue;
        if (jinja_lpush(C, seen, k, line) || jinja_lpush(C, l, s->v[i], line))
            return UNDEF;
    }
    return vlist(l);
}

static jv fl_sort(ctx *C, int line, jv in, cargs *A)
{
    jlist *s = jinja_iterlist(C, line, in);
    if (!s)
        return UNDEF;
    return f_sort(C, line, s, truthy(ga(A, 0, "reverse", vbool(0))),
                  truthy(ga(A, 1, "case_sensitive", vbool(0))), ga(A, 2, "attribute", NONE));
}

static jv fl_dictsort(ctx *C, int line, jv in, cargs *A)
{
    if (in.t == V_UNDEF)
        return jinja_undef_err(C, line, in);
    if (in.t != V_DICT)
        return jinja_rfail(C, line, "dictsort: expected a mapping, got %s", jinja_tname(in)), UNDEF;
    jv items = jinja_call_method(C, line, in, "items", A);
    if (C->failed)
        return UNDEF;
    jv by = ga(A, 1, "by", vstrref("key", 3));
    int byval = by.t == V_STR && eqs(by.u.s.p, by.u.s.n, "value");
    return f_sort(C, line, items.u.l, truthy(ga(A, 2, "reverse", vbool(0))),
                  truthy(ga(A, 0, "case_sensitive", vbool(0))), vint(byval));
}

static jv fl_reverse(ctx *C, int line, jv in, cargs *A)
{
    if (in.t == V_STR) {
        jv m1 = vint(-1);
        return jinja_do_slice(C, line, in, NULL, NULL, &m1);
    }
    jlist *s = jinja_iterlist(C, line, in);
    jlist *l = s ? jinja_newlist(C, s->n, line) : NULL;
    if (!l)
        return UNDEF;
    for (size_t i = 0; i < s->n; i++)
        l->v[i] = s->v[s->n - 1 - i];
    l->n = s->n;
    /* reversed() of a list or dict is an iterator; a generator is not
     * reversible, so Jinja2 makes a list of it */
    l->gen = (in.t == V_LIST && !in.u.l->gen) || in.t == V_DICT ? GEN_REVERSED : GEN_NONE;
    return vlist(l);
}

static jv fl_min(ctx *C, int line, jv in, cargs *A)
{
    return f_minmax(C, line, in, A, 0);
}
static jv fl_max(ctx *C, int line, jv in, cargs *A)
{
    return f_minmax(C, line, in, A, 1);
}

static jv fl_sum(ctx *C, int line, jv in, cargs *A)
{
    jlist *l = jinja_iterlist(C, line, in);
    if (!l)
        return UNDEF;
    jv at = ga(A, 0, "attribute", NONE), acc = ga(A, 1, "start", vint(0));
    for (size_t i = 0; i < l->n && !C->failed; i++)
        acc = jinja_arith(C, line, "+", acc, at.t != V_NONE ? attrpath(C, line, l->v[i], at) : l->v[i]);
    return acc;
}

static jv fl_abs(ctx *C, int line, jv in, cargs *A)
{
    if (in.t == V_INT)
        return in.u.i == INT64_MIN ? vflt(9223372036854775808.0) : vint(in.u.i < 0 ? -in.u.i : in.u.i);
    if (in.t == V_BOOL)
        return vint(in.u.b);
    if (in.t == V_FLOAT)
        return vflt(fabs(in.u.f));
    return jinja_rfail(C, line, "bad operand type for abs(): '%s'", jinja_tname(in)), UNDEF;
}

static jv fl_round(ctx *C, int line, jv in, cargs *A)
{
    return f_round(C, line, in, A);
}

static jv fl_int(ctx *C, int line, jv in, cargs *A)
{
    if (in.t == V_UNDEF) /* int(Undefined) raises in Jinja2 */
        return jinja_undef_err(C, line, in);
    jv def = ga(A, 0, "default", vint(0));
    if (in.t == V_INT)
        return in;
    if (in.t == V_BOOL)
        return vint(in.u.b);
    if (in.t == V_FLOAT)
        return isfinite(in.u.f) && fabs(in.u.f) < 9.2e18 ? vint((int64_t)in.u.f) : def;
    if (in.t == V_STR) {
        char tmp[64];
        jv t = jinja_s_strip(in, NONE, 1, 1);
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

static jv fl_float(ctx *C, int line, jv in, cargs *A)
{
    if (in.t == V_UNDEF)
        return jinja_undef_err(C, line, in);
    jv def = ga(A, 0, "default", vflt(0.0));
    if (isnum(in))
        return vflt(numf(in));
    if (in.t == V_STR) {
        char tmp[64];
        jv t = jinja_s_strip(in, NONE, 1, 1);
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

static jv fl_attr(ctx *C, int line, jv in, cargs *A)
{
    if (in.t == V_UNDEF)
        return jinja_undef_err(C, line, in);
    jv nm = ga(A, 0, "name", UNDEF);
    if (jinja_want_str(C, line, nm, "attr"))
        return UNDEF;
    return jinja_getattr(C, line, in, nm.u.s.p, nm.u.s.n);
}

static jv fl_tojson(ctx *C, int line, jv in, cargs *A)
{
    return f_tojson(C, line, in, A);
}

static jv fl_map(ctx *C, int line, jv in, cargs *A)
{
    return f_map(C, line, in, A);
}

/* The filters below work on str(value), as Jinja2's string filters do. */

static jv fl_trim(ctx *C, int line, jv in, cargs *A)
{
    jv s = jinja_tostr(C, in, line);
    return C->failed ? UNDEF : keep_markup(in, jinja_s_strip(s, ga(A, 0, "chars", NONE), 1, 1));
}

static jv str_case(ctx *C, int line, jv in, int mode)
{
    jv s = jinja_tostr(C, in, line);
    return C->failed ? UNDEF : keep_markup(in, jinja_s_case(C, s, mode, line));
}
static jv fl_upper(ctx *C, int line, jv in, cargs *A)
{
    return str_case(C, line, in, CASE_UPPER);
}
static jv fl_lower(ctx *C, int line, jv in, cargs *A)
{
    return str_case(C, line, in, CASE_LOWER);
}
static jv fl_capitalize(ctx *C, int line, jv in, cargs *A)
{
    return str_case(C, line, in, CASE_CAP);
}
static jv fl_title(ctx *C, int line, jv in, cargs *A)
{
    return str_case(C, line, in, CASE_TITLE_JINJA);
}

static jv fl_replace(ctx *C, int line, jv in, cargs *A)
{
    jv s = jinja_tostr(C, in, line);
    jv o = jinja_tostr(C, ga(A, 0, "old", UNDEF), line), nw = jinja_tostr(C, ga(A, 1, "new", UNDEF), line);
    jv cnt = ga(A, 2, "count", NONE);
    if (C->failed)
        return UNDEF;
    return jinja_s_replace(C, s, o, nw, isnum(cnt) ? numi(cnt) : -1, line);
}

static jv fl_escape(ctx *C, int line, jv in, cargs *A)
{
    if (in.t == V_STR && in.miss)
        return in;
    jv s = jinja_tostr(C, in, line);
    return C->failed ? UNDEF : jinja_html_escape(C, s, line);
}

static jv fl_indent(ctx *C, int line, jv in, cargs *A)
{
    if (in.t == V_UNDEF) /* Jinja2 calls a method of its input */
        return jinja_undef_err(C, line, in);
    jv s = jinja_tostr(C, in, line);
    return C->failed ? UNDEF : keep_markup(in, f_indent(C, line, s, A));
}

static jv fl_wordcount(ctx *C, int line, jv in, cargs *A)
{
    jv s = jinja_tostr(C, in, line);
    if (C->failed)
        return UNDEF;
    int64_t k = 0;
    int inw = 0;
    for (size_t i = 0; i < s.u.s.n;) {
        int32_t cp;
        i += jinja_u8dec((const unsigned char *)s.u.s.p + i, s.u.s.n - i, &cp);
        utf8proc_category_t cat = utf8proc_category(cp);
        int w = cp == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
                (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
        if (w && !inw)
            k++;
        inw = w;
    }
    return vint(k);
}

/* json.loads(s), which transformers' chat templates know as fromjson (and
 * some templates, e.g. DeepSeek-V3.2's, as from_json): tool-call arguments
 * that arrive as a JSON string become a mapping to iterate. */
static jv fl_fromjson(ctx *C, int line, jv in, cargs *A)
{
    if (in.t != V_STR)
        return jinja_rfail(C, line, "the JSON object must be str, bytes or bytearray, not %s",
                           jinja_tname(in)), UNDEF;
    json_error_t je;
    json_t *j = json_loadb(in.u.s.p, in.u.s.n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!j)
        return jinja_rfail(C, line, "from_json: invalid JSON at line %d column %d: %s", je.line,
                           je.column, je.text), UNDEF;
    jv v = jinja_from_json(C, j, 0);
    json_decref(j);
    return C->failed ? UNDEF : v;
}

typedef jv (*filter_fn)(ctx *C, int line, jv in, cargs *A);

/* Every filter, by name (Jinja2's built-ins that chat templates use, plus
 * HF's tojson). A name not here is an error where the filter is applied. */
static const struct {
    const char *name;
    filter_fn fn;
} FILTERS[] = {
    {"abs", fl_abs},         {"attr", fl_attr},           {"capitalize", fl_capitalize},
    {"count", fl_length},    {"d", fl_default},           {"default", fl_default},
    {"dictsort", fl_dictsort}, {"e", fl_escape},          {"escape", fl_escape},
    {"first", fl_first},     {"float", fl_float},         {"from_json", fl_fromjson},  {"fromjson", fl_fromjson},
    {"indent", fl_indent},
    {"int", fl_int},         {"items", fl_items},         {"join", fl_join},
    {"last", fl_last},       {"length", fl_length},       {"list", fl_list},
    {"lower", fl_lower},     {"map", fl_map},             {"max", fl_max},
    {"min", fl_min},         {"reject", fl_reject},       {"rejectattr", fl_rejectattr},
    {"replace", fl_replace}, {"reverse", fl_reverse},     {"round", fl_round},
    {"safe", fl_safe},       {"select", fl_select},       {"selectattr", fl_selectattr},
    {"sort", fl_sort},       {"string", fl_string},       {"sum", fl_sum},
    {"title", fl_title},     {"tojson", fl_tojson},       {"trim", fl_trim},
    {"unique", fl_unique},   {"upper", fl_upper},         {"wordcount", fl_wordcount},
};

static filter_fn find_filter(const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof FILTERS / sizeof FILTERS[0]; i++)
        if (eqs(name, n, FILTERS[i].name))
            return FILTERS[i].fn;
    return NULL;
}

int jinja_filter_known(const char *s, size_t n)
{
    return find_filter(s, n) != NULL;
}

jv jinja_apply_filter(ctx *C, int line, const char *name, size_t nn, jv in, cargs *A)
{
    if (C->failed)
        return UNDEF;
    filter_fn fn = find_filter(name, nn);
    if (!fn)
        return jinja_rfail(C, line, "unknown filter '%.*s'", (int)nn, name), UNDEF;
    return fn(C, line, in, A);
}

/* ---- the test table ---- */

typedef int (*test_fn)(ctx *C, int line, jv v, jv *args, size_t na);

#define ARG0 (na ? args[0] : UNDEF)

static int ts_defined(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t != V_UNDEF;
}
static int ts_undefined(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_UNDEF;
}
static int ts_none(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_NONE;
}
static int ts_string(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_STR;
}
static int ts_mapping(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_DICT;
}
static int ts_iterable(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_STR || v.t == V_LIST || v.t == V_DICT || v.t == V_UNDEF;
}
static int ts_sequence(ctx *C, int line, jv v, jv *args, size_t na)
{
    return ts_iterable(C, line, v, args, na) && !(v.t == V_LIST && v.u.l->gen);
}
static int ts_number(ctx *C, int line, jv v, jv *args, size_t na)
{
    return isnum(v);
}
static int ts_integer(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_INT;
}
static int ts_float(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_FLOAT;
}
static int ts_boolean(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_BOOL;
}
static int ts_true(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_BOOL && v.u.b;
}
static int ts_false(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_BOOL && !v.u.b;
}
static int ts_callable(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_FUNC;
}
static int ts_escaped(ctx *C, int line, jv v, jv *args, size_t na)
{
    return 0;
}
static int ts_eq(ctx *C, int line, jv v, jv *args, size_t na)
{
    return jinja_veq(v, ARG0);
}
static int ts_ne(ctx *C, int line, jv v, jv *args, size_t na)
{
    return !jinja_veq(v, ARG0);
}
static int ts_sameas(ctx *C, int line, jv v, jv *args, size_t na)
{
    jv a0 = ARG0;
    if (v.t != a0.t)
        return 0;
    if (v.t == V_LIST)
        return v.u.l == a0.u.l;
    if (v.t == V_DICT || v.t == V_NS)
        return v.u.d == a0.u.d;
    return jinja_veq(v, a0);
}
static int ts_in(ctx *C, int line, jv v, jv *args, size_t na)
{
    return jinja_contains(C, line, ARG0, v);
}
static int str_is(ctx *C, int line, jv v, const char *method)
{
    if (v.t != V_STR)
        return 0;
    cargs none = {0};
    jv r = jinja_call_method(C, line, v, method, &none);
    return C->failed ? -1 : truthy(r);
}
static int ts_lower(ctx *C, int line, jv v, jv *args, size_t na)
{
    return str_is(C, line, v, "islower");
}
static int ts_upper(ctx *C, int line, jv v, jv *args, size_t na)
{
    return str_is(C, line, v, "isupper");
}
static int ts_filter(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_STR && jinja_filter_known(v.u.s.p, v.u.s.n);
}
static int ts_test(ctx *C, int line, jv v, jv *args, size_t na)
{
    return v.t == V_STR && jinja_test_known(v.u.s.p, v.u.s.n);
}
/* x divisible by d (odd: d = 2 and inverted, even: d = 2) */
static int divisible(ctx *C, int line, const char *what, jv v, jv *args, size_t na, int64_t d)
{
    if (!isnum(v) || (na && !isnum(args[0])))
        return jinja_rfail(C, line, "test '%s' needs numbers", what), -1;
    if (d == 0)
        return jinja_rfail(C, line, "divisibleby: division by zero"), -1;
    return d == -1 || numi(v) % d == 0;
}
static int ts_odd(ctx *C, int line, jv v, jv *args, size_t na)
{
    int r = divisible(C, line, "odd", v, args, na, 2);
    return r < 0 ? r : !r;
}
static int ts_even(ctx *C, int line, jv v, jv *args, size_t na)
{
    return divisible(C, line, "even", v, args, na, 2);
}
static int ts_divisibleby(ctx *C, int line, jv v, jv *args, size_t na)
{
    return divisible(C, line, "divisibleby", v, args, na, na && isnum(args[0]) ? numi(args[0]) : 0);
}
/* order tests: sign of the comparison wanted (lt: -1, gt: +1), and whether
 * equality passes */
static int order(ctx *C, int line, jv v, jv *args, size_t na, int sign, int or_eq)
{
    int r;
    if (jinja_vcmp(C, line, v, ARG0, &r))
        return -1;
    return (sign < 0 ? r < 0 : r > 0) || (or_eq && r == 0);
}
static int ts_lt(ctx *C, int line, jv v, jv *args, size_t na)
{
    return order(C, line, v, args, na, -1, 0);
}
static int ts_le(ctx *C, int line, jv v, jv *args, size_t na)
{
    return order(C, line, v, args, na, -1, 1);
}
static int ts_gt(ctx *C, int line, jv v, jv *args, size_t na)
{
    return order(C, line, v, args, na, 1, 0);
}
static int ts_ge(ctx *C, int line, jv v, jv *args, size_t na)
{
    return order(C, line, v, args, na, 1, 1);
}

#undef ARG0

/* Every test, by name (Jinja2's built-ins and their operator aliases). */
static const struct {
    const char *name;
    test_fn fn;
} TESTS[] = {
    {"boolean", ts_boolean},   {"callable", ts_callable}, {"defined", ts_defined},
    {"divisibleby", ts_divisibleby}, {"eq", ts_eq},       {"equalto", ts_eq},
    {"escaped", ts_escaped},   {"even", ts_even},         {"false", ts_false},
    {"filter", ts_filter},     {"float", ts_float},       {"ge", ts_ge},
    {"gt", ts_gt},             {"greaterthan", ts_gt},    {"in", ts_in},
    {"integer", ts_integer},   {"iterable", ts_iterable}, {"le", ts_le},
    {"lower", ts_lower},       {"lt", ts_lt},             {"lessthan", ts_lt},
    {"mapping", ts_mapping},   {"ne", ts_ne},             {"none", ts_none},
    {"number", ts_number},     {"odd", ts_odd},           {"sameas", ts_sameas},
    {"sequence", ts_sequence}, {"string", ts_string},     {"test", ts_test},
    {"true", ts_true},         {"undefined", ts_undefined}, {"upper", ts_upper},
    {"==", ts_eq},             {"!=", ts_ne},             {"<", ts_lt},
    {"<=", ts_le},             {">", ts_gt},              {">=", ts_ge},
};

static test_fn find_test(const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof TESTS / sizeof TESTS[0]; i++)
        if (eqs(name, n, TESTS[i].name))
            return TESTS[i].fn;
    return NULL;
}

int jinja_test_known(const char *s, size_t n)
{
    return find_test(s, n) != NULL;
}

int jinja_apply_test(ctx *C, int line, const char *name, size_t nn, jv v, jv *args, size_t na)
{
    if (C->failed)
        return -1;
    test_fn fn = find_test(name, nn);
    if (!fn)
        return jinja_rfail(C, line, "unknown test '%.*s'", (int)nn, name), -1;
    return fn(C, line, v, args, na);
}
