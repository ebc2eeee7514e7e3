#include "server/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exsa.h"

void exsa_strbuf_init(exsa_strbuf *b) { memset(b, 0, sizeof *b); }

void exsa_strbuf_free(exsa_strbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

void exsa_strbuf_reset(exsa_strbuf *b)
{
    b->len = b->off = 0;
    if (b->p)
        b->p[0] = '\0';
}

static int reserve(exsa_strbuf *b, size_t extra)
{
    if (b->oom)
        return EXSA_ENOMEM;
    size_t need;
    if (__builtin_add_overflow(b->len, extra, &need) || __builtin_add_overflow(need, 1, &need)) {
        b->oom = 1;
        return EXSA_ENOMEM;
    }
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (__builtin_mul_overflow(cap, 2, &cap)) {
            b->oom = 1;
            return EXSA_ENOMEM;
        }
    }
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return EXSA_ENOMEM;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

int exsa_strbuf_append(exsa_strbuf *b, const void *data, size_t n)
{
    if (reserve(b, n))
        return EXSA_ENOMEM;
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int exsa_strbuf_puts(exsa_strbuf *b, const char *s) { return exsa_strbuf_append(b, s, strlen(s)); }

int exsa_strbuf_printf(exsa_strbuf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return EXSA_EINVAL;
    if ((size_t)n < sizeof small)
        return exsa_strbuf_append(b, small, (size_t)n);
    if (reserve(b, (size_t)n))
        return EXSA_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

size_t exsa_strbuf_take(exsa_strbuf *b, char *dst, size_t max)
{
    size_t n = b->len - b->off;
    if (n > max)
        n = max;
    memcpy(dst, b->p + b->off, n);
    b->off += n;
    if (b->off == b->len)
        exsa_strbuf_reset(b);
    return n;
}
