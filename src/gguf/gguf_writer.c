/* Streaming GGUF v3 writer.
 *
 * Key/values are kept as their encoded value bytes (what follows the type
 * field in the file), so copying a value from a reader is a byte copy and
 * nested arrays need no special case. Tensor data is never held: begin()
 * writes header and infos with offsets computed from the sizes, then each
 * write_tensor() streams one tensor and pads it to the alignment.
 */
#include "gguf/gguf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

#define MAX_TENSOR_NAME 255 /* same limit as the reader: never write what we reject */

typedef struct wkv {
    char *key;
    uint32_t type;
    uint8_t *val;
    uint64_t size;
} wkv;

typedef struct wtensor {
    char *name;
    int type, n_dims;
    int64_t ne[EXSA_GGUF_MAX_DIMS];
    uint64_t size, offset;
} wtensor;

enum { W_COLLECT, W_DATA, W_DONE, W_FAILED };

struct exsa_gguf_writer {
    wkv *kv;
    int64_t n_kv, cap_kv;
    wtensor *t;
    int64_t n_t, cap_t;
    int state;
    FILE *f;
    char *path;
    int64_t next;     /* next tensor to write */
    uint64_t align;
    uint64_t pos;     /* bytes written */
    int io_errno;     /* first write error, 0 if none */
};

static const uint8_t scalar_size[EXSA_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

exsa_gguf_writer *exsa_gguf_writer_create(exsa_err *err)
{
    exsa_gguf_writer *w = calloc(1, sizeof *w);
    if (!w)
        exsa_err_set(err, EXSA_ENOMEM, "gguf writer: out of memory");
    return w;
}

void exsa_gguf_writer_free(exsa_gguf_writer *w)
{
    if (!w)
        return;
    if (w->f)
        fclose(w->f);
    for (int64_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    for (int64_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w->path);
    free(w);
}

/* ---- key/values ---- */

static int64_t find_kv(const exsa_gguf_writer *w, const char *key)
{
    for (int64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0)
            return i;
    return -1;
}

/* Stores key = (type, encoded value); takes ownership of val (freed on error). */
static int set_kv(exsa_gguf_writer *w, const char *key, uint32_t type, uint8_t *val, uint64_t size)
{
    if (!w || !key || !*key || w->state != W_COLLECT) {
        free(val);
        return EXSA_EINVAL;
    }
    int64_t i = find_kv(w, key);
    if (i >= 0) {
        free(w->kv[i].val);
        w->kv[i].type = type;
        w->kv[i].val = val;
        w->kv[i].size = size;
        return EXSA_OK;
    }
    if (w->n_kv == w->cap_kv) {
        int64_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
        wkv *nk = realloc(w->kv, (size_t)cap * sizeof *nk);
        if (!nk) {
            free(val);
            return EXSA_ENOMEM;
        }
        w->kv = nk;
        w->cap_kv = cap;
    }
    char *k = strdup(key);
    if (!k) {
        free(val);
        return EXSA_ENOMEM;
    }
    w->kv[w->n_kv++] = (wkv){k, type, val, size};
    return EXSA_OK;
}

static int set_scalar(exsa_gguf_writer *w, const char *key, uint32_t type, uint64_t bits)
{
    uint8_t *v = malloc(8);
    if (!v)
        return EXSA_ENOMEM;
    put_le(v, bits, scalar_size[type]);
    return set_kv(w, key, type, v, scalar_size[type]);
}

int exsa_gguf_writer_set_u32(exsa_gguf_writer *w, const char *key, uint32_t v)
{
    return set_scalar(w, key, EXSA_GGUF_UINT32, v);
}

int exsa_gguf_writer_set_i32(exsa_gguf_writer *w, const char *key, int32_t v)
{
    return set_scalar(w, key, EXSA_GGUF_INT32, (uint32_t)v);
}

int exsa_gguf_writer_set_u64(exsa_gguf_writer *w, const char *key, uint64_t v)
{
    return set_scalar(w, key, EXSA_GGUF_UINT64, v);
}

int exsa_gguf_writer_set_f32(exsa_gguf_writer *w, const char *key, float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    return set_scalar(w, key, EXSA_GGUF_FLOAT32, b);
}

int exsa_gguf_writer_set_bool(exsa_gguf_writer *w, const char *key, int v)
{
    return set_scalar(w, key, EXSA_GGUF_BOOL, v ? 1 : 0);
}

int exsa_gguf_writer_set_str(exsa_gguf_writer *w, const char *key, const char *v)
{
    if (!v)
        return EXSA_EINVAL;
    size_t n = strlen(v);
    uint8_t *b = malloc(8 + n);
    if (!b)
        return EXSA_ENOMEM;
    put_le(b, n, 8);
    memcpy(b + 8, v, n);
    return set_kv(w, key, EXSA_GGUF_STRING, b, 8 + n);
}

int exsa_gguf_writer_set_arr(exsa_gguf_writer *w, const char *key, int elem_type,
                             const void *data, uint64_t n)
{
    if (elem_type < 0 || elem_type >= EXSA_GGUF_VTYPE_COUNT || !scalar_size[elem_type] ||
        (!data && n))
        return EXSA_EINVAL;
    uint64_t bytes, total;
    if (__builtin_mul_overflow(n, (uint64_t)scalar_size[elem_type], &bytes) ||
        __builtin_add_overflow(bytes, 12, &total) || total > SIZE_MAX)
        return EXSA_ENOMEM;
    /* A bool outside 0/1 would make a file the reader rejects. */
    if (elem_type == EXSA_GGUF_BOOL)
        for (uint64_t j = 0; j < n; j++)
            if (((const uint8_t *)data)[j] > 1)
                return EXSA_EINVAL;
    uint8_t *b = malloc((size_t)total);
    if (!b)
        return EXSA_ENOMEM;
    put_le(b, (uint32_t)elem_type, 4);
    put_le(b + 4, n, 8);
    if (bytes)
        memcpy(b + 12, data, (size_t)bytes);
    return set_kv(w, key, EXSA_GGUF_ARRAY, b, total);
}

int exsa_gguf_writer_set_arr_str(exsa_gguf_writer *w, const char *key,
                                 const char *const *strs, uint64_t n)
{
    if (!strs && n)
        return EXSA_EINVAL;
    uint64_t total = 12;
    for (uint64_t j = 0; j < n; j++) {
        if (!strs[j])
            return EXSA_EINVAL;
        if (__builtin_add_overflow(total, 8 + (uint64_t)strlen(strs[j]), &total))
            return EXSA_ENOMEM;
    }
    if (total > SIZE_MAX)
        return EXSA_ENOMEM;
    uint8_t *b = malloc((size_t)total);
    if (!b)
        return EXSA_ENOMEM;
    put_le(b, EXSA_GGUF_STRING, 4);
    put_le(b + 4, n, 8);
    uint8_t *p = b + 12;
    for (uint64_t j = 0; j < n; j++) {
        size_t len = strlen(strs[j]);
        put_le(p, len, 8);
        memcpy(p + 8, strs[j], len);
        p += 8 + len;
    }
    return set_kv(w, key, EXSA_GGUF_ARRAY, b, total);
}

int exsa_gguf_writer_copy_kv(exsa_gguf_writer *w, const exsa_gguf *src, int64_t i)
{
    uint64_t size;
    const void *raw = exsa_gguf_kv_raw(src, i, &size);
    if (!raw || size > SIZE_MAX)
        return EXSA_EINVAL;
    uint8_t *b = malloc(size ? (size_t)size : 1);
    if (!b)
        return EXSA_ENOMEM;
    memcpy(b, raw, (size_t)size);
    return set_kv(w, exsa_gguf_kv_key(src, i), (uint32_t)exsa_gguf_kv_type(src, i), b, size);
}

int exsa_gguf_writer_remove_key(exsa_gguf_writer *w, const char *key)
{
    if (!w || !key || w->state != W_COLLECT)
        return EXSA_EINVAL;
    int64_t i = find_kv(w, key);
    if (i < 0)
        return EXSA_OK; /* absent already: removal is idempotent */
    free(w->kv[i].key);
    free(w->kv[i].val);
    memmove(&w->kv[i], &w->kv[i + 1], (size_t)(w->n_kv - i - 1) * sizeof *w->kv);
    w->n_kv--;
    return EXSA_OK;
}

/* ---- tensors ---- */

int exsa_gguf_writer_add_tensor(exsa_gguf_writer *w, const char *name, int type, int n_dims,
                                const int64_t *ne, exsa_err *err)
{
    if (!w)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: NULL writer");
    if (w->state != W_COLLECT)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: add_tensor after begin");
    if (!name || !*name)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: empty tensor name");
    size_t len = strlen(name);
    if (len > MAX_TENSOR_NAME)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: tensor name '%.64s...' is %zu bytes,"
                            " limit %d", name, len, MAX_TENSOR_NAME);
    int64_t bs, ts;
    if (exsa_gguf_type_size(type, &bs, &ts) != EXSA_OK)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: tensor '%s': unknown ggml type %d",
                            name, type);
    if (n_dims < 1 || n_dims > EXSA_GGUF_MAX_DIMS || !ne)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: tensor '%s': n_dims %d out of "
                            "range 1..%d", name, n_dims, EXSA_GGUF_MAX_DIMS);
    int64_t nel = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] <= 0)
            return exsa_err_set(err, EXSA_EINVAL, "gguf writer: tensor '%s': ne[%d] = %" PRId64
                                " must be positive", name, d, ne[d]);
        if (__builtin_mul_overflow(nel, ne[d], &nel))
            return exsa_err_set(err, EXSA_EINVAL, "gguf writer: tensor '%s': element count "
                                "overflows", name);
    }
    if (ne[0] % bs)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: tensor '%s': ne[0] = %" PRId64
                            " is not a multiple of the block size %" PRId64 " of %s", name,
                            ne[0], bs, exsa_gguf_type_name(type));
    int64_t size;
    if (__builtin_mul_overflow(nel / bs, ts, &size))
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: tensor '%s': size overflows", name);
    for (int64_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return exsa_err_set(err, EXSA_EINVAL, "gguf writer: duplicate tensor name '%s'",
                                name);
    if (w->n_t == w->cap_t) {
        int64_t cap = w->cap_t ? w->cap_t * 2 : 64;
        wtensor *nt = realloc(w->t, (size_t)cap * sizeof *nt);
        if (!nt)
            return exsa_err_set(err, EXSA_ENOMEM, "gguf writer: out of memory");
        w->t = nt;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name)
        return exsa_err_set(err, EXSA_ENOMEM, "gguf writer: out of memory");
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < EXSA_GGUF_MAX_DIMS; d++)
        t->ne[d] = d < n_dims ? ne[d] : 1;
    t->size = (uint64_t)size;
    w->n_t++;
    return EXSA_OK;
}

/* ---- output ---- */

static void out(exsa_gguf_writer *w, const void *p, size_t n)
{
    if (w->io_errno || n == 0)
        return;
    if (fwrite(p, 1, n, w->f) != n)
        w->io_errno = errno ? errno : EIO;
    w->pos += n;
}

static void out_le(exsa_gguf_writer *w, uint64_t v, int n)
{
    uint8_t b[8];
    put_le(b, v, n);
    out(w, b, (size_t)n);
}

static void out_pad(exsa_gguf_writer *w)
{
    static const uint8_t zeros[256];
    uint64_t pad = (w->align - w->pos % w->align) % w->align;
    while (pad) {
        size_t k = pad > sizeof zeros ? sizeof zeros : (size_t)pad;
        out(w, zeros, k);
        pad -= k;
    }
}

/* On a write error: close, remember the failure, report it. */
static int io_fail(exsa_gguf_writer *w, const char *what, exsa_err *err)
{
    int e = w->io_errno ? w->io_errno : errno;
    if (w->f)
        fclose(w->f);
    w->f = NULL;
    w->state = W_FAILED;
    return exsa_err_set(err, EXSA_EIO, "gguf writer: %s '%s' failed: %s", what,
                        w->path ? w->path : "?", strerror(e ? e : EIO));
}

static int check_state(exsa_gguf_writer *w, int want, const char *call, exsa_err *err)
{
    if (!w)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: NULL writer");
    if (w->state == want)
        return EXSA_OK;
    static const char *const names[] = {"before begin", "after begin", "after finish",
                                        "after a write error"};
    return exsa_err_set(err, w->state == W_FAILED ? EXSA_EIO : EXSA_EINVAL,
                        "gguf writer: %s called %s", call, names[w->state]);
}

int exsa_gguf_writer_begin(exsa_gguf_writer *w, const char *path, exsa_err *err)
{
    int rc = check_state(w, W_COLLECT, "begin", err);
    if (rc)
        return rc;
    if (!path)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: NULL path");
    w->align = EXSA_GGUF_DEFAULT_ALIGNMENT;
    int64_t ai = find_kv(w, "general.alignment");
    if (ai >= 0) {
        if (w->kv[ai].type != EXSA_GGUF_UINT32)
            return exsa_err_set(err, EXSA_EINVAL, "gguf writer: key 'general.alignment' must "
                                "be uint32");
        uint32_t a = (uint32_t)(w->kv[ai].val[0] | w->kv[ai].val[1] << 8 |
                                w->kv[ai].val[2] << 16 | (uint32_t)w->kv[ai].val[3] << 24);
        if (a == 0 || (a & (a - 1)))
            return exsa_err_set(err, EXSA_EINVAL, "gguf writer: key 'general.alignment' = %"
                                PRIu32 " is not a nonzero power of two", a);
        w->align = a;
    }
    uint64_t off = 0;
    for (int64_t i = 0; i < w->n_t; i++) {
        w->t[i].offset = off;
        uint64_t padded = (w->t[i].size + w->align - 1) / w->align * w->align;
        if (__builtin_add_overflow(off, padded, &off) || off > INT64_MAX)
            return exsa_err_set(err, EXSA_EINVAL, "gguf writer: total tensor size overflows");
    }
    free(w->path);
    w->path = strdup(path);
    if (!w->path)
        return exsa_err_set(err, EXSA_ENOMEM, "gguf writer: out of memory");
    w->f = fopen(path, "wb");
    if (!w->f)
        return exsa_err_set(err, EXSA_EIO, "gguf writer: cannot create '%s': %s", path,
                            strerror(errno));
    w->pos = 0;
    w->io_errno = 0;
    errno = 0;
    out(w, "GGUF", 4);
    out_le(w, 3, 4);
    out_le(w, (uint64_t)w->n_t, 8);
    out_le(w, (uint64_t)w->n_kv, 8);
    for (int64_t i = 0; i < w->n_kv; i++) {
        size_t n = strlen(w->kv[i].key);
        out_le(w, n, 8);
        out(w, w->kv[i].key, n);
        out_le(w, w->kv[i].type, 4);
        out(w, w->kv[i].val, (size_t)w->kv[i].size);
    }
    for (int64_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        size_t n = strlen(t->name);
        out_le(w, n, 8);
        out(w, t->name, n);
        out_le(w, (uint32_t)t->n_dims, 4);
        for (int d = 0; d < t->n_dims; d++)
            out_le(w, (uint64_t)t->ne[d], 8);
        out_le(w, (uint32_t)t->type, 4);
        out_le(w, t->offset, 8);
    }
    out_pad(w);
    if (w->io_errno)
        return io_fail(w, "writing header to", err);
    w->state = W_DATA;
    w->next = 0;
    return EXSA_OK;
}

int exsa_gguf_writer_write_tensor(exsa_gguf_writer *w, const void *data, uint64_t size,
                                  exsa_err *err)
{
    int rc = check_state(w, W_DATA, "write_tensor", err);
    if (rc)
        return rc;
    if (w->next >= w->n_t)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: all %" PRId64
                            " tensors already written", w->n_t);
    const wtensor *t = &w->t[w->next];
    if (size != t->size)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: tensor '%s': got %" PRIu64
                            " bytes, expected %" PRIu64, t->name, size, t->size);
    if (!data)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: tensor '%s': NULL data", t->name);
    /* write in chunks: fwrite's size_t is enough on 64-bit, but stay general */
    const uint8_t *p = data;
    uint64_t rem = size;
    while (rem && !w->io_errno) {
        size_t k = rem > ((size_t)1 << 30) ? ((size_t)1 << 30) : (size_t)rem;
        out(w, p, k);
        p += k;
        rem -= k;
    }
    out_pad(w);
    if (w->io_errno)
        return io_fail(w, "writing tensor data to", err);
    w->next++;
    return EXSA_OK;
}

int exsa_gguf_writer_finish(exsa_gguf_writer *w, exsa_err *err)
{
    int rc = check_state(w, W_DATA, "finish", err);
    if (rc)
        return rc;
    if (w->next != w->n_t)
        return exsa_err_set(err, EXSA_EINVAL, "gguf writer: finish after %" PRId64 " of %"
                            PRId64 " tensors (next: '%s')", w->next, w->n_t,
                            w->t[w->next].name);
    errno = 0;
    if (fflush(w->f) != 0) {
        w->io_errno = errno ? errno : EIO;
        return io_fail(w, "flushing", err);
    }
    FILE *f = w->f;
    w->f = NULL;
    if (fclose(f) != 0) {
        w->io_errno = errno ? errno : EIO;
        return io_fail(w, "closing", err);
    }
    w->state = W_DONE;
    return EXSA_OK;
}
