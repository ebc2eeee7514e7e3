/* Jinja2 lexer: template source -> tokens (text, {{ }}, {% %}, names,
 * literals, operators), with trim_blocks / lstrip_blocks and whitespace
 * control applied to the text tokens. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "text/jinja_internal.h"

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
    char *out = jinja_aalloc(L->a, rawn + 1);
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
            size_t k = jinja_u8enc(cp, tmp);
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

int jinja_lex(lexer *L)
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
