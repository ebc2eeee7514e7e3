#include "server/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/err.h"

#define MAX_KEYS 1024
#define MAX_KEY_LEN 512

struct exsa_auth {
    char **keys;
    size_t *len;
    int n, cap;
};

int exsa_auth_equal(const char *a, size_t na, const char *b, size_t nb)
{
    /* Every byte of the longer string is visited; a length difference
     * counts as a mismatch but does not stop the loop. */
    size_t n = na > nb ? na : nb;
    unsigned diff = (unsigned)(na != nb);
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < na ? (unsigned char)a[i] : 0;
        unsigned char y = i < nb ? (unsigned char)b[i] : 0;
        diff |= (unsigned)(x ^ y);
    }
    return diff == 0;
}

static int add_key(exsa_auth *a, const char *s, size_t n, const char *where, exsa_err *err)
{
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        n--;
    if (n == 0)
        return exsa_err_set(err, EXSA_EINVAL, "%s: empty API key", where);
    if (n > MAX_KEY_LEN)
        return exsa_err_set(err, EXSA_EINVAL, "%s: API key longer than %d bytes", where,
                            MAX_KEY_LEN);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] == 0x7F)
            return exsa_err_set(err, EXSA_EINVAL,
                                "%s: API key contains a space or control character", where);
    if (a->n >= MAX_KEYS)
        return exsa_err_set(err, EXSA_EINVAL, "%s: more than %d API keys", where, MAX_KEYS);
    if (a->n == a->cap) {
        int cap = a->cap ? a->cap * 2 : 4;
        char **k = realloc(a->keys, (size_t)cap * sizeof *k);
        if (!k)
            return exsa_err_set(err, EXSA_ENOMEM, "auth: out of memory");
        a->keys = k;
        size_t *l = realloc(a->len, (size_t)cap * sizeof *l);
        if (!l)
            return exsa_err_set(err, EXSA_ENOMEM, "auth: out of memory");
        a->len = l;
        a->cap = cap;
    }
    char *k = malloc(n + 1);
    if (!k)
        return exsa_err_set(err, EXSA_ENOMEM, "auth: out of memory");
    memcpy(k, s, n);
    k[n] = '\0';
    a->keys[a->n] = k;
    a->len[a->n++] = n;
    return 0;
}

static int add_file(exsa_auth *a, const char *path, exsa_err *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return exsa_err_set(err, EXSA_EIO, "--api-key-file %s: cannot open", path);
    char line[MAX_KEY_LEN + 64];
    int lineno = 0, rc = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        size_t n = strlen(line);
        if (n == sizeof line - 1 && line[n - 1] != '\n') {
            rc =
                exsa_err_set(err, EXSA_EINVAL, "--api-key-file %s:%d: line too long", path, lineno);
            break;
        }
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        const char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p || *p == '#')
            continue;
        char where[1100];
        snprintf(where, sizeof where, "--api-key-file %s:%d", path, lineno);
        if ((rc = add_key(a, p, strlen(p), where, err)))
            break;
    }
    if (!rc && ferror(f))
        rc = exsa_err_set(err, EXSA_EIO, "--api-key-file %s: read error", path);
    fclose(f);
    if (!rc && a->n == 0)
        rc = exsa_err_set(err, EXSA_EINVAL, "--api-key-file %s: no keys in the file", path);
    return rc;
}

exsa_auth *exsa_auth_create(const char *keys_csv, const char *key_file, exsa_err *err)
{
    exsa_auth *a = calloc(1, sizeof *a);
    if (!a) {
        exsa_err_set(err, EXSA_ENOMEM, "auth: out of memory");
        return NULL;
    }
    if (keys_csv && *keys_csv) {
        for (const char *p = keys_csv;;) {
            const char *e = strchr(p, ',');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            if (add_key(a, p, n, "--api-key", err))
                goto fail;
            if (!e)
                break;
            p = e + 1;
        }
    }
    if (key_file && *key_file && add_file(a, key_file, err))
        goto fail;
    return a;
fail:
    exsa_auth_free(a);
    return NULL;
}

void exsa_auth_free(exsa_auth *a)
{
    if (!a)
        return;
    for (int i = 0; i < a->n; i++) {
        /* Keys are secrets: do not leave them in freed memory. */
        memset(a->keys[i], 0, a->len[i]);
        free(a->keys[i]);
    }
    free(a->keys);
    free(a->len);
    free(a);
}

int exsa_auth_count(const exsa_auth *a) { return a ? a->n : 0; }

int exsa_auth_check(const exsa_auth *a, const char *authorization, const char *x_api_key)
{
    if (!a || a->n == 0)
        return 1;
    const char *k = NULL;
    if (authorization) {
        const char *p = authorization;
        while (*p == ' ')
            p++;
        if (!strncasecmp(p, "Bearer", 6) && (p[6] == ' ' || p[6] == '\t')) {
            p += 6;
            while (*p == ' ' || *p == '\t')
                p++;
            k = p;
        }
    }
    if (!k && x_api_key)
        k = x_api_key;
    if (!k)
        return 0;
    size_t n = strnlen(k, MAX_KEY_LEN + 1);
    while (n && (k[n - 1] == ' ' || k[n - 1] == '\t'))
        n--;
    int ok = 0;
    for (int i = 0; i < a->n; i++)
        ok |= exsa_auth_equal(k, n, a->keys[i], a->len[i]);
    return ok;
}
