/* The value model of the template engine: the arena, string builders,
 * UTF-8 helpers, lists and dicts, Python str()/repr(), json.dumps, equality
 * and ordering, subscripts, attributes and iteration. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "text/jinja_internal.h"

void *jinja_aalloc(arena *a, size_t n)
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

void jinja_afree(arena *a)
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

void jinja_sb_put(sbuf *b, const char *s, size_t n)
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
static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k > 0)
        jinja_sb_put(b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

/* ------------------------------------------------------------------ utf-8 */

/* Decodes one code point at s[0..n); invalid bytes decode as themselves
 * (one byte each) so every input has a defined length. */
size_t jinja_u8dec(const unsigned char *s, size_t n, int32_t *cp)
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

size_t jinja_u8enc(int32_t cp, char *out)
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

size_t jinja_u8len(const char *p, size_t n)
{
    if (is_ascii(p, n))
        return n;
    size_t c = 0;
    int32_t cp;
    for (size_t i = 0; i < n; c++)
        i += jinja_u8dec((const unsigned char *)p + i, n - i, &cp);
    return c;
}

/* Python's str.isspace() set. */
int jinja_py_space(int32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

void jinja_rfail(ctx *C, int line, const char *fmt, ...)
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

void *jinja_cal(ctx *C, size_t n, int line)
{
    void *p = jinja_aalloc(&C->a, n);
    if (!p) {
        jinja_rfail(C, line, "out of memory (render memory limit reached)");
        if (C->err)
            C->err->code = EXSA_ENOMEM;
    }
    return p;
}

int jinja_step(ctx *C, int line, uint64_t n)
{
    if (C->failed)
        return -1;
    if (n > C->max_steps || C->steps > C->max_steps - n) {
        jinja_rfail(C, line, "template exceeded %llu steps (runaway loop?)", (unsigned long long)C->max_steps);
        return -1;
    }
    C->steps += n;
    return 0;
}

jv jinja_mkstr(ctx *C, const char *p, size_t n, int line)
{
    char *q = jinja_cal(C, n + 1, line);
    if (!q)
        return UNDEF;
    if (n)
        memcpy(q, p, n);
    q[n] = '\0';
    return vstrref(q, n);
}

jlist *jinja_newlist(ctx *C, size_t cap, int line)
{
    jlist *l = jinja_cal(C, sizeof *l, line);
    if (!l)
        return NULL;
    memset(l, 0, sizeof *l);
    if (cap) {
        if (cap > SIZE_MAX / sizeof(jv))
            return jinja_rfail(C, line, "list too large"), NULL;
        l->v = jinja_cal(C, cap * sizeof(jv), line);
        if (!l->v)
            return NULL;
        l->cap = cap;
    }
    return l;
}

int jinja_lpush(ctx *C, jlist *l, jv v, int line)
{
    if (l->n == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 4;
        if (c > SIZE_MAX / sizeof(jv) / 2)
            return jinja_rfail(C, line, "list too large"), -1;
        jv *nv = jinja_cal(C, c * sizeof(jv), line);
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


jdict *jinja_newdict(ctx *C, int line)
{
    jdict *d = jinja_cal(C, sizeof *d, line);
    if (d)
        memset(d, 0, sizeof *d);
    return d;
}


long jinja_dfind(const jdict *d, jv key)
{
    for (size_t i = 0; i < d->n; i++)
        if (jinja_veq(d->k[i], key))
            return (long)i;
    return -1;
}
long jinja_dfinds(const jdict *d, const char *s, size_t n)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == V_STR && d->k[i].u.s.n == n && memcmp(d->k[i].u.s.p, s, n) == 0)
            return (long)i;
    return -1;
}

int jinja_dset(ctx *C, jdict *d, jv k, jv v, int line)
{
    long i = jinja_dfind(d, k);
    if (i >= 0) {
        d->v[i] = v;
        return 0;
    }
    if (d->n == d->cap) {
        size_t c = d->cap ? d->cap * 2 : 4;
        if (c > SIZE_MAX / sizeof(jv) / 2)
            return jinja_rfail(C, line, "dict too large"), -1;
        jv *nk = jinja_cal(C, c * sizeof(jv), line), *nv = jinja_cal(C, c * sizeof(jv), line);
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

sbuf jinja_sbnew(ctx *C)
{
    sbuf b = {.limit = C->max_out};
    return b;
}

/* Moves a builder's text into the arena as a string value. */
jv jinja_sbtake(ctx *C, sbuf *b, int line)
{
    jv r = UNDEF;
    if (b->over)
        jinja_rfail(C, line, b->over == 2 ? "out of memory" : "string longer than the output limit (%zu bytes)",
              C->max_out);
    else
        r = jinja_mkstr(C, b->p ? b->p : "", b->n, line);
    free(b->p);
    b->p = NULL;
    return r;
}

/* MarkupSafe's escape(): a Markup string is returned as it is, any other
 * string comes back escaped, as Markup. */
jv jinja_html_escape(ctx *C, jv s, int line)
{
    if (s.miss)
        return s;
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
    jv r = jinja_sbtake(C, &b, line);
    r.miss = 1;
    return r;
}

/* ---- conversions ---- */



const char *jinja_tname(jv v)
{
    static const char *const names[] = {"Undefined", "NoneType", "bool", "int", "float", "str",
                                        "list", "dict", "Namespace", "function", "LoopContext"};
    if (v.t == V_LIST && v.u.l->tuple)
        return "tuple";
    if (v.t == V_LIST && v.u.l->gen)
        return v.u.l->gen == GEN_ITER ? "generator" : "list_reverseiterator";
    if (v.t == V_STR && v.miss)
        return "Markup";
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


static void vstr_seq(sbuf *b, jv v, int depth)
{
    if (v.t == V_LIST) {
        jlist *l = v.u.l;
        sb_putc(b, l->tuple ? '(' : '[');
        for (size_t i = 0; i < l->n && !b->over; i++) {
            if (i)
                sb_puts(b, ", ");
            jinja_vstr(b, l->v[i], 1, depth + 1);
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
            jinja_vstr(b, d->k[i], 1, depth + 1);
            sb_puts(b, ": ");
            jinja_vstr(b, d->v[i], 1, depth + 1);
        }
        sb_putc(b, '}');
    }
}

/* Python str() (repr = 0) or repr() (repr = 1). */
void jinja_vstr(sbuf *b, jv v, int repr, int depth)
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
            jinja_sb_put(b, v.u.s.p, v.u.s.n);
        break;
    case V_LIST:
        if (v.u.l->gen) {
            sb_printf(b, "<%s object>", jinja_tname(v));
            break;
        }
        vstr_seq(b, v, depth);
        break;
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

jv jinja_tostr(ctx *C, jv v, int line)
{
    if (v.t == V_STR)
        return v;
    sbuf b = jinja_sbnew(C);
    jinja_vstr(&b, v, 0, 0);
    return jinja_sbtake(C, &b, line);
}


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
            size_t k = jinja_u8dec((const unsigned char *)p + i, n - i, &cp);
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


int jinja_vjson(ctx *C, sbuf *b, jv v, const jopt *o, int level, int line)
{
    char tmp[64];
    if (level > 200)
        return jinja_rfail(C, line, "tojson: value nested too deeply"), -1;
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
        if (isl && v.u.l->gen)
            return jinja_rfail(C, line, "Object of type %s is not JSON serializable", jinja_tname(v)), -1;
        size_t n = isl ? v.u.l->n : v.u.d->n;
        sb_putc(b, isl ? '[' : '{');
        if (n == 0) {
            sb_putc(b, isl ? ']' : '}');
            return 0;
        }
        size_t *ord = NULL;
        if (!isl && o->sort) {
            ord = jinja_cal(C, n * sizeof *ord, line);
            if (!ord)
                return -1;
            for (size_t i = 0; i < n; i++) {
                size_t j = i;
                ord[i] = i;
                while (j > 0) { /* insertion sort keeps it stable */
                    int r;
                    if (jinja_vcmp(C, line, v.u.d->k[ord[j - 1]], v.u.d->k[ord[j]], &r))
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
                jinja_sb_put(b, o->isep, o->isepn);
            if (o->indent >= 0) {
                sb_putc(b, '\n');
                for (int k = 0; k < o->indent * (level + 1); k++)
                    sb_putc(b, ' ');
            }
            if (isl) {
                if (jinja_vjson(C, b, v.u.l->v[i], o, level + 1, line))
                    return -1;
                continue;
            }
            size_t j = ord ? ord[i] : i;
            jv k = v.u.d->k[j];
            if (k.t == V_STR)
                json_str(b, k.u.s.p, k.u.s.n, o->ascii);
            else if (k.t == V_INT || k.t == V_FLOAT || k.t == V_BOOL || k.t == V_NONE) {
                sb_putc(b, '"');
                if (jinja_vjson(C, b, k, o, level + 1, line))
                    return -1;
                sb_putc(b, '"');
            } else
                return jinja_rfail(C, line, "tojson: keys must be str, int, float, bool or None, not %s",
                             jinja_tname(k)), -1;
            jinja_sb_put(b, o->ksep, o->ksepn);
            if (jinja_vjson(C, b, v.u.d->v[j], o, level + 1, line))
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
        return jinja_rfail(C, line, "tojson: Object of type %s is not JSON serializable", jinja_tname(v)), -1;
    }
}

/* ---- comparison ---- */

int jinja_veq(jv a, jv b)
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
            if (!jinja_veq(a.u.l->v[i], b.u.l->v[i]))
                return 0;
        return 1;
    case V_DICT:
        if (a.u.d->n != b.u.d->n)
            return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            long j = jinja_dfind(b.u.d, a.u.d->k[i]);
            if (j < 0 || !jinja_veq(a.u.d->v[i], b.u.d->v[j]))
                return 0;
        }
        return 1;
    case V_NS: return a.u.d == b.u.d;
    case V_FUNC: return a.u.fn == b.u.fn;
    case V_LOOP: return a.u.lp == b.u.lp;
    }
    return 0;
}

int jinja_vcmp(ctx *C, int line, jv a, jv b, int *res)
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
            if (jinja_veq(a.u.l->v[i], b.u.l->v[i]))
                continue;
            return jinja_vcmp(C, line, a.u.l->v[i], b.u.l->v[i], res);
        }
        *res = a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
        return 0;
    }
    jinja_rfail(C, line, "comparison not supported between instances of '%s' and '%s'", jinja_tname(a), jinja_tname(b));
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
    size_t c = jinja_u8len(p, n);
    size_t *o = jinja_cal(C, (c + 1) * sizeof *o, line);
    if (!o) {
        *count = 0;
        return NULL;
    }
    size_t i = 0, k = 0;
    int32_t cp;
    while (i < n) {
        o[k++] = i;
        i += jinja_u8dec((const unsigned char *)p + i, n - i, &cp);
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

jv jinja_do_slice(ctx *C, int line, jv obj, jv *st, jv *sp, jv *stp)
{
    if (obj.t == V_LIST && obj.u.l->gen) /* not subscriptable: undefined */
        return UNDEF;
    int64_t step = stp && stp->t != V_NONE && stp->t != V_UNDEF ? numi(*stp) : 1;
    if (step == 0)
        return jinja_rfail(C, line, "slice step cannot be zero"), UNDEF;
    if ((st && st->t != V_NONE && st->t != V_UNDEF && !isnum(*st)) ||
        (sp && sp->t != V_NONE && sp->t != V_UNDEF && !isnum(*sp)) ||
        (stp && stp->t != V_NONE && stp->t != V_UNDEF && !isnum(*stp)))
        return jinja_rfail(C, line, "slice indices must be integers or None"), UNDEF;
    if (obj.t == V_LIST) {
        int64_t a, b;
        slice_bounds((int64_t)obj.u.l->n, st, sp, step, &a, &b);
        jlist *l = jinja_newlist(C, 0, line);
        if (!l)
            return UNDEF;
        for (int64_t i = a; step > 0 ? i < b : i > b; i += step)
            if (jinja_lpush(C, l, obj.u.l->v[i], line))
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
        sbuf sb = jinja_sbnew(C);
        for (int64_t i = a; step > 0 ? i < b : i > b; i += step) {
            size_t s = off ? off[i] : (size_t)i, e = off ? off[i + 1] : (size_t)i + 1;
            jinja_sb_put(&sb, obj.u.s.p + s, e - s);
        }
        return jinja_sbtake(C, &sb, line);
    }
    if (obj.t == V_UNDEF)
        return UNDEF;
    return jinja_rfail(C, line, "'%s' object is not subscriptable", jinja_tname(obj)), UNDEF;
}

jv jinja_getitem(ctx *C, int line, jv obj, jv key)
{
    switch (obj.t) {
    case V_DICT:
    case V_NS: {
        long i = jinja_dfind(obj.u.d, key);
        return i >= 0 ? obj.u.d->v[i] : UNDEF;
    }
    case V_LIST:
        if (obj.u.l->gen) /* not subscriptable: Jinja2 gives undefined */
            return UNDEF;
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

jv jinja_mkfunc(ctx *C, int kind, const char *name, jv self, int line)
{
    jfunc *f = jinja_cal(C, sizeof *f, line);
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

jv jinja_getattr(ctx *C, int line, jv obj, const char *name, size_t n)
{
    switch (obj.t) {
    case V_DICT: {
        /* like Python's getattr first: a dict's methods shadow its keys */
        for (const char *const *m = DICT_METHODS; *m; m++)
            if (strlen(*m) == n && memcmp(*m, name, n) == 0)
                return jinja_mkfunc(C, F_METHOD, *m, obj, line);
        long i = jinja_dfinds(obj.u.d, name, n);
        return i >= 0 ? obj.u.d->v[i] : UNDEF;
    }
    case V_NS: {
        long i = jinja_dfinds(obj.u.d, name, n);
        return i >= 0 ? obj.u.d->v[i] : UNDEF;
    }
    case V_STR:
        for (const char *const *m = STR_METHODS; *m; m++)
            if (strlen(*m) == n && memcmp(*m, name, n) == 0)
                return jinja_mkfunc(C, F_METHOD, *m, obj, line);
        return UNDEF;
    case V_LIST:
        if (obj.u.l->gen)
            return UNDEF;
        for (const char *const *m = LIST_METHODS; *m; m++)
            if (strlen(*m) == n && memcmp(*m, name, n) == 0)
                return jinja_mkfunc(C, F_METHOD, *m, obj, line);
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
            return jinja_mkfunc(C, F_METHOD, "cycle", obj, line);
        if (IS("changed"))
            return jinja_mkfunc(C, F_METHOD, "changed", obj, line);
#undef IS
        return UNDEF;
    }
    default: return UNDEF;
    }
}

/* Everything iterable as a list: dict -> keys, str -> characters,
 * undefined -> empty (Jinja2's Undefined iterates as empty). */
jlist *jinja_iterlist(ctx *C, int line, jv v)
{
    switch (v.t) {
    case V_LIST: return v.u.l;
    case V_UNDEF: return jinja_newlist(C, 0, line);
    case V_DICT: {
        jlist *l = jinja_newlist(C, v.u.d->n, line);
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
        jlist *l = jinja_newlist(C, cnt, line);
        if (!l)
            return NULL;
        for (size_t i = 0; i < cnt; i++) {
            size_t s = off ? off[i] : i, e = off ? off[i + 1] : i + 1;
            l->v[l->n++] = vstrref(v.u.s.p + s, e - s);
        }
        return l;
    }
    default:
        jinja_rfail(C, line, "'%s' object is not iterable", jinja_tname(v));
        return NULL;
    }
}

int jinja_contains(ctx *C, int line, jv hay, jv needle)
{
    switch (hay.t) {
    case V_STR:
        if (needle.t != V_STR) {
            jinja_rfail(C, line, "'in <string>' requires string as left operand, not %s", jinja_tname(needle));
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
            if (jinja_veq(hay.u.l->v[i], needle))
                return 1;
        return 0;
    case V_DICT:
    case V_NS: return jinja_dfind(hay.u.d, needle) >= 0;
    case V_UNDEF: return 0;
    default:
        jinja_rfail(C, line, "argument of type '%s' is not iterable", jinja_tname(hay));
        return -1;
    }
}

/* ---- argument access ---- */


int jinja_want_str(ctx *C, int line, jv v, const char *what)
{
    if (v.t == V_STR)
        return 0;
    jinja_rfail(C, line, "%s: expected a string, got %s", what, jinja_tname(v));
    return -1;
}

