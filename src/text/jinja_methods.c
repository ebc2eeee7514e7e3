/* Python str / dict / list methods as templates call them
 * (message.content.strip(), d.items(), ...), by code point. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "text/jinja_internal.h"

/* ---- string operations (Python semantics, by code point) ---- */

static size_t prev_cp(const char *p, size_t i, int32_t *cp)
{
    size_t j = i - 1;
    while (j > 0 && i - j < 4 && ((unsigned char)p[j] & 0xc0) == 0x80)
        j--;
    size_t k = jinja_u8dec((const unsigned char *)p + j, i - j, cp);
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
        i += jinja_u8dec((const unsigned char *)set + i, n - i, &c);
        if (c == cp)
            return 1;
    }
    return 0;
}

jv jinja_s_strip(jv s, jv chars, int left, int right)
{
    const char *p = s.u.s.p;
    size_t a = 0, b = s.u.s.n;
    int ws = chars.t != V_STR;
    int32_t cp;
    while (left && a < b) {
        size_t k = jinja_u8dec((const unsigned char *)p + a, b - a, &cp);
        if (ws ? !jinja_py_space(cp) : !in_set(chars.u.s.p, chars.u.s.n, cp))
            break;
        a += k;
    }
    while (right && b > a) {
        size_t j = prev_cp(p, b, &cp);
        if (j < a || (ws ? !jinja_py_space(cp) : !in_set(chars.u.s.p, chars.u.s.n, cp)))
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


jv jinja_s_case(ctx *C, jv s, int mode, int line)
{
    sbuf b = jinja_sbnew(C);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n;
    int prev_cased = 0, first = 1;
    for (size_t i = 0; i < n;) {
        int32_t cp, o;
        i += jinja_u8dec((const unsigned char *)p + i, n - i, &cp);
        switch (mode) {
        case CASE_LOWER: o = utf8proc_tolower(cp); break;
        case CASE_UPPER: o = utf8proc_toupper(cp); break;
        case CASE_CAP: o = first ? utf8proc_totitle(cp) : utf8proc_tolower(cp); break;
        case CASE_TITLE_PY:
            o = prev_cased ? utf8proc_tolower(cp) : utf8proc_totitle(cp);
            prev_cased = is_cased(cp);
            break;
        case CASE_TITLE_JINJA: {
            int sep = jinja_py_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
            o = prev_cased ? utf8proc_tolower(cp) : utf8proc_toupper(cp);
            prev_cased = !sep;
            break;
        }
        default: o = utf8proc_islower(cp) ? utf8proc_toupper(cp) : utf8proc_tolower(cp); break;
        }
        first = 0;
        char tmp[8];
        jinja_sb_put(&b, tmp, jinja_u8enc(o, tmp));
    }
    return jinja_sbtake(C, &b, line);
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

jv jinja_s_replace(ctx *C, jv s, jv old, jv nw, int64_t count, int line)
{
    sbuf b = jinja_sbnew(C);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0;
    int64_t done = 0;
    if (old.u.s.n == 0) {
        /* Python inserts the replacement around every character */
        int32_t cp;
        while (count < 0 || done < count) {
            jinja_sb_put(&b, nw.u.s.p, nw.u.s.n);
            done++;
            if (i >= n)
                break;
            size_t k = jinja_u8dec((const unsigned char *)p + i, n - i, &cp);
            jinja_sb_put(&b, p + i, k);
            i += k;
        }
        jinja_sb_put(&b, p + i, n - i);
        return jinja_sbtake(C, &b, line);
    }
    while (i < n && (count < 0 || done < count)) {
        const char *f = memfind(p + i, n - i, old.u.s.p, old.u.s.n);
        if (!f)
            break;
        jinja_sb_put(&b, p + i, (size_t)(f - (p + i)));
        jinja_sb_put(&b, nw.u.s.p, nw.u.s.n);
        i = (size_t)(f - p) + old.u.s.n;
        done++;
    }
    jinja_sb_put(&b, p + i, n - i);
    return jinja_sbtake(C, &b, line);
}

static jv s_split(ctx *C, jv s, jv sep, int64_t maxsplit, int right, int line)
{
    jlist *l = jinja_newlist(C, 0, line);
    if (!l)
        return UNDEF;
    const char *p = s.u.s.p;
    size_t n = s.u.s.n;
    if (sep.t == V_STR && sep.u.s.n == 0)
        return jinja_rfail(C, line, "split: empty separator"), UNDEF;
    if (sep.t != V_STR) {
        /* whitespace runs, no empty strings */
        size_t i = 0;
        int32_t cp;
        int64_t done = 0;
        if (right) {
            size_t e = n;
            jlist *r = jinja_newlist(C, 0, line);
            if (!r)
                return UNDEF;
            while (e > 0) {
                while (e > 0) {
                    size_t j = prev_cp(p, e, &cp);
                    if (!jinja_py_space(cp))
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
                        if (jinja_py_space(cp))
                            break;
                        st = j;
                    }
                }
                if (jinja_lpush(C, r, vstrref(p + st, e - st), line))
                    return UNDEF;
                done++;
                e = st;
            }
            for (size_t k = r->n; k-- > 0;)
                if (jinja_lpush(C, l, r->v[k], line))
                    return UNDEF;
            return vlist(l);
        }
        while (i < n) {
            while (i < n) {
                size_t k = jinja_u8dec((const unsigned char *)p + i, n - i, &cp);
                if (!jinja_py_space(cp))
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
                    if (!jinja_py_space(cp))
                        break;
                    e = j;
                }
                if (jinja_lpush(C, l, vstrref(p + st, e - st), line))
                    return UNDEF;
                break;
            }
            while (i < n) {
                size_t k = jinja_u8dec((const unsigned char *)p + i, n - i, &cp);
                if (jinja_py_space(cp))
                    break;
                i += k;
            }
            if (jinja_lpush(C, l, vstrref(p + st, i - st), line))
                return UNDEF;
            done++;
        }
        return vlist(l);
    }
    const char *sp = sep.u.s.p;
    size_t sn = sep.u.s.n;
    if (right) {
        jlist *r = jinja_newlist(C, 0, line);
        if (!r)
            return UNDEF;
        size_t e = n;
        int64_t done = 0;
        for (;;) {
            const char *f = maxsplit >= 0 && done >= maxsplit ? NULL : memrfind(p, e, sp, sn);
            if (!f) {
                if (jinja_lpush(C, r, vstrref(p, e), line))
                    return UNDEF;
                break;
            }
            size_t at = (size_t)(f - p);
            if (jinja_lpush(C, r, vstrref(p + at + sn, e - at - sn), line))
                return UNDEF;
            e = at;
            done++;
        }
        for (size_t k = r->n; k-- > 0;)
            if (jinja_lpush(C, l, r->v[k], line))
                return UNDEF;
        return vlist(l);
    }
    size_t i = 0;
    int64_t done = 0;
    for (;;) {
        const char *f = maxsplit >= 0 && done >= maxsplit ? NULL : memfind(p + i, n - i, sp, sn);
        if (!f) {
            if (jinja_lpush(C, l, vstrref(p + i, n - i), line))
                return UNDEF;
            break;
        }
        size_t at = (size_t)(f - p);
        if (jinja_lpush(C, l, vstrref(p + i, at - i), line))
            return UNDEF;
        i = at + sn;
        done++;
    }
    return vlist(l);
}

jv jinja_splitlines(ctx *C, jv s, int line)
{
    jlist *l = jinja_newlist(C, 0, line);
    if (!l)
        return UNDEF;
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, st = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n' || p[i] == '\r' || p[i] == '\v' || p[i] == '\f' || (p[i] >= 0x1c && p[i] <= 0x1e)) {
            if (jinja_lpush(C, l, vstrref(p + st, i - st), line))
                return UNDEF;
            if (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n')
                i++;
            st = i + 1;
        }
    }
    if (st < n && jinja_lpush(C, l, vstrref(p + st, n - st), line))
        return UNDEF;
    return vlist(l);
}


static jv str_format(ctx *C, int line, jv fmt, cargs *A)
{
    sbuf b = jinja_sbnew(C);
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
            return jinja_rfail(C, line, "format: unmatched '{'"), UNDEF;
        }
        const char *f = p + i + 1;
        size_t fl = e - i - 1;
        if (memchr(f, ':', fl) || memchr(f, '!', fl) || memchr(f, '.', fl) || memchr(f, '[', fl)) {
            free(b.p);
            return jinja_rfail(C, line, "format: only plain {} fields are supported"), UNDEF;
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
            return jinja_rfail(C, line, "format: no argument for field {%.*s}", (int)fl, f), UNDEF;
        }
        jinja_vstr(&b, v, 0, 0);
        i = e;
    }
    return jinja_sbtake(C, &b, line);
}

static jv call_method(ctx *C, int line, jv self, const char *m, cargs *A)
{
    size_t mn = strlen(m);
    if (self.t == V_STR) {
        jv a0 = ga(A, 0, NULL, NONE);
        if (eqs(m, mn, "strip") || eqs(m, mn, "lstrip") || eqs(m, mn, "rstrip"))
            return jinja_s_strip(self, ga(A, 0, "chars", NONE), m[0] != 'r', m[0] != 'l');
        if (eqs(m, mn, "startswith") || eqs(m, mn, "endswith")) {
            int ends = m[0] == 'e';
            jv list1 = a0;
            jlist one = {.n = 1, .cap = 1, .v = &list1};
            jlist *cands = a0.t == V_LIST ? a0.u.l : &one;
            for (size_t i = 0; i < cands->n; i++) {
                jv c = cands->v[i];
                if (jinja_want_str(C, line, c, m))
                    return UNDEF;
                if (c.u.s.n <= self.u.s.n &&
                    memcmp(self.u.s.p + (ends ? self.u.s.n - c.u.s.n : 0), c.u.s.p, c.u.s.n) == 0)
                    return vbool(1);
            }
            return vbool(0);
        }
        if (eqs(m, mn, "split") || eqs(m, mn, "rsplit")) {
            jv sep = ga(A, 0, "sep", NONE), ms = ga(A, 1, "maxsplit", vint(-1));
            if (sep.t != V_NONE && jinja_want_str(C, line, sep, m))
                return UNDEF;
            return s_split(C, self, sep, isnum(ms) ? numi(ms) : -1, m[0] == 'r', line);
        }
        if (eqs(m, mn, "upper"))
            return jinja_s_case(C, self, CASE_UPPER, line);
        if (eqs(m, mn, "lower") || eqs(m, mn, "casefold"))
            return jinja_s_case(C, self, CASE_LOWER, line);
        if (eqs(m, mn, "title"))
            return jinja_s_case(C, self, CASE_TITLE_PY, line);
        if (eqs(m, mn, "capitalize"))
            return jinja_s_case(C, self, CASE_CAP, line);
        if (eqs(m, mn, "swapcase"))
            return jinja_s_case(C, self, CASE_SWAP, line);
        if (eqs(m, mn, "replace")) {
            jv o = ga(A, 0, "old", UNDEF), nw = ga(A, 1, "new", UNDEF), cnt = ga(A, 2, "count", vint(-1));
            if (jinja_want_str(C, line, o, "replace") || jinja_want_str(C, line, nw, "replace"))
                return UNDEF;
            return jinja_s_replace(C, self, o, nw, isnum(cnt) ? numi(cnt) : -1, line);
        }
        if (eqs(m, mn, "find") || eqs(m, mn, "rfind") || eqs(m, mn, "index") || eqs(m, mn, "count")) {
            if (jinja_want_str(C, line, a0, m))
                return UNDEF;
            if (m[0] == 'c') {
                if (a0.u.s.n == 0)
                    return vint((int64_t)jinja_u8len(self.u.s.p, self.u.s.n) + 1);
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
                    return jinja_rfail(C, line, "substring not found"), UNDEF;
                return vint(-1);
            }
            return vint((int64_t)jinja_u8len(self.u.s.p, (size_t)(f - self.u.s.p)));
        }
        if (eqs(m, mn, "join")) {
            jlist *l = jinja_iterlist(C, line, a0);
            if (!l)
                return UNDEF;
            sbuf b = jinja_sbnew(C);
            for (size_t i = 0; i < l->n; i++) {
                if (l->v[i].t != V_STR) {
                    free(b.p);
                    return jinja_rfail(C, line, "join: sequence item %zu: expected str, %s found", i,
                                 jinja_tname(l->v[i])), UNDEF;
                }
                if (i)
                    jinja_sb_put(&b, self.u.s.p, self.u.s.n);
                jinja_sb_put(&b, l->v[i].u.s.p, l->v[i].u.s.n);
            }
            return jinja_sbtake(C, &b, line);
        }
        if (eqs(m, mn, "format"))
            return str_format(C, line, self, A);
        if (eqs(m, mn, "splitlines"))
            return jinja_splitlines(C, self, line);
        if (eqs(m, mn, "removeprefix") || eqs(m, mn, "removesuffix")) {
            if (jinja_want_str(C, line, a0, m))
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
                i += jinja_u8dec((const unsigned char *)self.u.s.p + i, self.u.s.n - i, &cp);
                utf8proc_category_t cat = utf8proc_category(cp);
                int digit = cat == UTF8PROC_CATEGORY_ND, alpha = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
                if (eqs(m, mn, "isdigit") || eqs(m, mn, "isdecimal") || eqs(m, mn, "isnumeric"))
                    all = digit;
                else if (eqs(m, mn, "isalpha"))
                    all = alpha;
                else if (eqs(m, mn, "isalnum"))
                    all = alpha || digit;
                else if (eqs(m, mn, "isspace"))
                    all = jinja_py_space(cp);
                else if (eqs(m, mn, "isascii"))
                    all = cp < 0x80;
                else if (eqs(m, mn, "islower") || eqs(m, mn, "isupper")) {
                    if (is_cased(cp)) {
                        any_cased = 1;
                        all = m[2] == 'l' ? cat != UTF8PROC_CATEGORY_LU : cat != UTF8PROC_CATEGORY_LL;
                    }
                } else
                    return jinja_rfail(C, line, "str.%s() is not supported", m), UNDEF;
            }
            if (eqs(m, mn, "islower") || eqs(m, mn, "isupper"))
                all = all && any_cased;
            if (eqs(m, mn, "isascii") && self.u.s.n == 0)
                all = 1;
            return vbool(all);
        }
        return jinja_rfail(C, line, "str.%s() is not supported", m), UNDEF;
    }
    if (self.t == V_DICT) {
        jdict *d = self.u.d;
        if (eqs(m, mn, "items") || eqs(m, mn, "keys") || eqs(m, mn, "values")) {
            jlist *l = jinja_newlist(C, d->n, line);
            if (!l)
                return UNDEF;
            for (size_t i = 0; i < d->n; i++) {
                if (m[0] == 'k')
                    l->v[l->n++] = d->k[i];
                else if (m[0] == 'v')
                    l->v[l->n++] = d->v[i];
                else {
                    jlist *p = jinja_newlist(C, 2, line);
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
            long i = jinja_dfind(d, ga(A, 0, NULL, NONE));
            return i >= 0 ? d->v[i] : ga(A, 1, "default", NONE);
        }
        return jinja_rfail(C, line, "dict.%s() is not allowed in a sandboxed template", m), UNDEF;
    }
    if (self.t == V_LIST) {
        jlist *l = self.u.l;
        if (eqs(m, mn, "index") || eqs(m, mn, "count")) {
            jv x = ga(A, 0, NULL, UNDEF);
            int64_t k = 0;
            for (size_t i = 0; i < l->n; i++)
                if (jinja_veq(l->v[i], x)) {
                    if (m[0] == 'i')
                        return vint((int64_t)i);
                    k++;
                }
            if (m[0] == 'i')
                return jinja_rfail(C, line, "list.index(x): x not in list"), UNDEF;
            return vint(k);
        }
        return jinja_rfail(C, line, "list.%s() is not allowed in a sandboxed template (lists are immutable)", m),
               UNDEF;
    }
    if (self.t == V_LOOP) {
        if (eqs(m, mn, "cycle")) {
            if (A->np == 0)
                return jinja_rfail(C, line, "loop.cycle() needs at least one argument"), UNDEF;
            return A->pos[self.u.lp->idx % A->np];
        }
        return jinja_rfail(C, line, "loop.%s() is not supported", m), UNDEF;
    }
    return jinja_rfail(C, line, "'%s' object has no method %s", jinja_tname(self), m), UNDEF;
}

jv jinja_call_method(ctx *C, int line, jv self, const char *m, cargs *A)
{
    jv r = call_method(C, line, self, m, A);
    /* Markup's string methods that return Markup (MarkupSafe wraps them) */
    static const char *const keep[] = {"strip", "lstrip", "rstrip", "upper", "lower", "title",
                                       "capitalize", "swapcase", "center", "ljust", "rjust",
                                       "zfill", "expandtabs", "replace", "translate", NULL};
    if (self.t == V_STR && self.miss && r.t == V_STR)
        for (const char *const *k = keep; *k; k++)
            if (strcmp(*k, m) == 0)
                r.miss = 1;
    return r;
}
