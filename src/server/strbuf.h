/* A growable byte buffer for building replies and SSE frames.
 *
 * Owns its memory (strbuf_free). Appends keep a NUL after the bytes so the
 * contents can be used as a C string. A failed allocation latches `oom`:
 * later appends do nothing and the caller checks once at the end.
 */
#ifndef EXSA_SERVER_STRBUF_H
#define EXSA_SERVER_STRBUF_H

#include <stddef.h>

typedef struct exsa_strbuf {
    char *p;
    size_t len, cap;
    size_t off; /* bytes already consumed by a reader (exsa_strbuf_take) */
    int oom;
} exsa_strbuf;

void exsa_strbuf_init(exsa_strbuf *b);
void exsa_strbuf_free(exsa_strbuf *b);
/* Empties the buffer, keeping its memory. */
void exsa_strbuf_reset(exsa_strbuf *b);
int exsa_strbuf_append(exsa_strbuf *b, const void *data, size_t n);
int exsa_strbuf_puts(exsa_strbuf *b, const char *s);
int exsa_strbuf_printf(exsa_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Copies at most max unread bytes to dst and marks them read; returns the
 * count. The buffer resets itself once everything is read. */
size_t exsa_strbuf_take(exsa_strbuf *b, char *dst, size_t max);
/* Unread bytes. */
static inline size_t exsa_strbuf_pending(const exsa_strbuf *b) { return b->len - b->off; }

#endif
