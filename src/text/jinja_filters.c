/* Jinja2 filters and tests (plus HF's tojson). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "text/jinja_internal.h"

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

int jinja_in_list(const char *const *l, const char *s, size_t n)
{
    for (; *l; l++)
        if (strlen(*l) == n && memcmp(*l, s, n) == 0)
            return 1;
    return 0;
}

int jinja_filter_known(const char *s, size_t n)
{
    return jinja_in_list(FILTERS, s, n);
}

int jinja_test_known(const char *s, size_t n)
{
    return jinja_in_list(TESTS, s, n);
}


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

static jv f_select(ctx *C, int line, jv in, cargs *A, int attr, int reject)
{
    jlist *src = jinja_iterlist(C, line, in);
    if (!src)
        return UNDEF;
    jlist *l = jinja_newlist(C, 0, line);
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
    jlist *src = jinja_iterlist(C, line, in);
    if (!src)
        return UNDEF;
    jlist *l = jinja_newlist(C, src->n, line);
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
    if (!jinja_in_list(FILTERS, f.u.s.p, f.u.s.n))
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

static jv html_escape(ctx *C, jv s, int line)
{
    sbuf b = jinja_sbnew(C);
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
    return jinja_sbtake(C, &b, line);
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


jv jinja_apply_filter(ctx *C, int line, const char *name, size_t nn, jv in, cargs *A)
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
        case V_STR: return vint((int64_t)jinja_u8len(in.u.s.p, in.u.s.n));
        case V_LIST: return vint((int64_t)in.u.l->n);
        case V_DICT:
        case V_NS: return vint((int64_t)in.u.d->n);
        case V_UNDEF: return vint(0);
        default: return jinja_rfail(C, line, "object of type '%s' has no len()", jinja_tname(in)), UNDEF;
        }
    }
    if (eqs(name, nn, "string"))
        return jinja_tostr(C, in, line);
    if (eqs(name, nn, "items")) {
        if (in.t == V_UNDEF)
            return vlist(jinja_newlist(C, 0, line));
        if (in.t != V_DICT)
            return jinja_rfail(C, line, "items: expected a mapping, got %s", jinja_tname(in)), UNDEF;
        return jinja_call_method(C, line, in, "items", A);
    }
    if (eqs(name, nn, "list")) {
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
    if (eqs(name, nn, "first") || eqs(name, nn, "last")) {
        jlist *l = jinja_iterlist(C, line, in);
        if (!l)
            return UNDEF;
        if (l->n == 0)
            return UNDEF;
        return name[0] == 'f' ? l->v[0] : l->v[l->n - 1];
    }
    if (eqs(name, nn, "join")) {
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
    if (eqs(name, nn, "selectattr") || eqs(name, nn, "rejectattr"))
        return f_select(C, line, in, A, 1, name[0] == 'r');
    if (eqs(name, nn, "select") || eqs(name, nn, "reject"))
        return f_select(C, line, in, A, 0, name[0] == 'r');
    if (eqs(name, nn, "map"))
        return f_map(C, line, in, A);
    if (eqs(name, nn, "unique")) {
        jlist *s = jinja_iterlist(C, line, in);
        jlist *l = jinja_newlist(C, 0, line), *seen = jinja_newlist(C, 0, line);
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
    if (eqs(name, nn, "sort")) {
        jlist *s = jinja_iterlist(C, line, in);
        if (!s)
            return UNDEF;
        return f_sort(C, line, s, truthy(ga(A, 0, "reverse", vbool(0))),
                      truthy(ga(A, 1, "case_sensitive", vbool(0))), ga(A, 2, "attribute", NONE));
    }
    if (eqs(name, nn, "dictsort")) {
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
    if (eqs(name, nn, "reverse")) {
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
        return vlist(l);
    }
    if (eqs(name, nn, "min") || eqs(name, nn, "max"))
        return f_minmax(C, line, in, A, name[1] == 'a');
    if (eqs(name, nn, "sum")) {
        jlist *l = jinja_iterlist(C, line, in);
        if (!l)
            return UNDEF;
        jv at = ga(A, 0, "attribute", NONE), acc = ga(A, 1, "start", vint(0));
        for (size_t i = 0; i < l->n && !C->failed; i++)
            acc = jinja_arith(C, line, "+", acc, at.t != V_NONE ? attrpath(C, line, l->v[i], at) : l->v[i]);
        return acc;
    }
    if (eqs(name, nn, "abs")) {
        if (in.t == V_INT)
            return in.u.i == INT64_MIN ? vflt(9223372036854775808.0) : vint(in.u.i < 0 ? -in.u.i : in.u.i);
        if (in.t == V_BOOL)
            return vint(in.u.b);
        if (in.t == V_FLOAT)
            return vflt(fabs(in.u.f));
        return jinja_rfail(C, line, "bad operand type for abs(): '%s'", jinja_tname(in)), UNDEF;
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
    if (eqs(name, nn, "float")) {
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
    if (eqs(name, nn, "attr")) {
        jv nm = ga(A, 0, "name", UNDEF);
        if (jinja_want_str(C, line, nm, "attr"))
            return UNDEF;
        return jinja_getattr(C, line, in, nm.u.s.p, nm.u.s.n);
    }
    /* the rest work on str(value) */
    jv s = jinja_tostr(C, in, line);
    if (C->failed)
        return UNDEF;
    if (eqs(name, nn, "trim"))
        return jinja_s_strip(s, ga(A, 0, "chars", NONE), 1, 1);
    if (eqs(name, nn, "upper"))
        return jinja_s_case(C, s, CASE_UPPER, line);
    if (eqs(name, nn, "lower"))
        return jinja_s_case(C, s, CASE_LOWER, line);
    if (eqs(name, nn, "capitalize"))
        return jinja_s_case(C, s, CASE_CAP, line);
    if (eqs(name, nn, "title"))
        return jinja_s_case(C, s, CASE_TITLE_JINJA, line);
    if (eqs(name, nn, "replace")) {
        jv o = jinja_tostr(C, ga(A, 0, "old", UNDEF), line), nw = jinja_tostr(C, ga(A, 1, "new", UNDEF), line);
        jv cnt = ga(A, 2, "count", NONE);
        if (C->failed)
            return UNDEF;
        return jinja_s_replace(C, s, o, nw, isnum(cnt) ? numi(cnt) : -1, line);
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
    return jinja_rfail(C, line, "filter '%.*s' is not supported", (int)nn, name), UNDEF;
}

/* ---- tests ---- */

int jinja_apply_test(ctx *C, int line, const char *name, size_t nn, jv v, jv *args, size_t na)
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
        return jinja_veq(v, a0);
    if (eqs(name, nn, "ne") || eqs(name, nn, "!="))
        return !jinja_veq(v, a0);
    if (eqs(name, nn, "sameas")) {
        if (v.t != a0.t)
            return 0;
        if (v.t == V_LIST)
            return v.u.l == a0.u.l;
        if (v.t == V_DICT || v.t == V_NS)
            return v.u.d == a0.u.d;
        return jinja_veq(v, a0);
    }
    if (eqs(name, nn, "in")) {
        return jinja_contains(C, line, a0, v);
    }
    if (eqs(name, nn, "lower") || eqs(name, nn, "upper")) {
        if (v.t != V_STR)
            return 0;
        cargs none = {0};
        jv r = jinja_call_method(C, line, v, name[0] == 'l' ? "islower" : "isupper", &none);
        return C->failed ? -1 : truthy(r);
    }
    if (eqs(name, nn, "filter") || eqs(name, nn, "test")) {
        if (v.t != V_STR)
            return 0;
        return jinja_in_list(name[0] == 'f' ? FILTERS : TESTS, v.u.s.p, v.u.s.n);
    }
    if (eqs(name, nn, "odd") || eqs(name, nn, "even") || eqs(name, nn, "divisibleby")) {
        if (!isnum(v) || (na && !isnum(a0)))
            return jinja_rfail(C, line, "test '%.*s' needs numbers", (int)nn, name), -1;
        int64_t x = numi(v), d = name[0] == 'd' ? numi(a0) : 2;
        if (d == 0)
            return jinja_rfail(C, line, "divisibleby: division by zero"), -1;
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
        return jinja_rfail(C, line, "test '%.*s' is not supported", (int)nn, name), -1;
    if (jinja_vcmp(C, line, v, a0, &r))
        return -1;
    return op[0] == '<' ? (op[1] ? r <= 0 : r < 0) : (op[1] ? r >= 0 : r > 0);
}
