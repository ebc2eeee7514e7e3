#include "server/json_text.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int exsa_utf8_seq_len(const unsigned char *s, size_t n)
{
    if (n == 0)
        return 0;
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    int len;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0)
        len = 2, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
        len = 3, cp = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
        len = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if ((size_t)len > n)
        return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

int exsa_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int l = exsa_utf8_seq_len(u + i, n - i);
        if (!l)
            return 0;
        i += (size_t)l;
    }
    return 1;
}

char *exsa_utf8_sanitize(const char *s, size_t n, size_t *out_len)
{
    /* Worst case: every byte becomes the 3-byte U+FFFD. */
    size_t cap;
    if (__builtin_mul_overflow(n, 3, &cap) || __builtin_add_overflow(cap, 1, &cap))
        return NULL;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        int l = exsa_utf8_seq_len(u + i, n - i);
        if (l) {
            memcpy(out + o, u + i, (size_t)l);
            o += (size_t)l;
            i += (size_t)l;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    if (out_len)
        *out_len = o;
    return out;
}

json_t *exsa_json_text(const char *s, size_t n)
{
    if (!s)
        return json_string("");
    if (exsa_utf8_valid(s, n))
        return json_stringn(s, n);
    size_t m;
    char *t = exsa_utf8_sanitize(s, n, &m);
    if (!t)
        return NULL;
    json_t *j = json_stringn(t, m);
    free(t);
    return j;
}

int exsa_json_set_text_key(json_t *obj, const char *key, size_t key_len, json_t *value)
{
    if (!value)
        return -1;
    /* Object keys are C strings: cut at an embedded NUL, then sanitize. */
    size_t n = strnlen(key, key_len);
    if (exsa_utf8_valid(key, n) && n == key_len)
        return json_object_set_new(obj, key, value);
    char *k = exsa_utf8_sanitize(key, n, NULL);
    if (!k) {
        json_decref(value);
        return -1;
    }
    int rc = json_object_set_new(obj, k, value);
    free(k);
    return rc;
}

/* 9 significant digits round-trip every float32 (logprobs, embeddings)
 * without jansson's default 17-digit noise. */
char *exsa_json_dump(const json_t *j)
{
    return json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(9));
}

json_t *exsa_json_real(double v)
{
    /* JSON has no infinities: -9999 is what OpenAI reports for a logprob of
     * an impossible token. */
    if (!isfinite(v))
        v = v < 0 || isnan(v) ? -9999.0 : 9999.0;
    return json_real(v);
}

char *exsa_base64_encode(const void *data, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t groups = n / 3 + (n % 3 != 0), len;
    if (__builtin_mul_overflow(groups, 4, &len) || len == SIZE_MAX)
        return NULL;
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    const unsigned char *p = data;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return out;
}
