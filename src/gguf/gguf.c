/* GGUF v2/v3 reader.
 *
 * open() maps the file and parse() walks it once, checking every count,
 * length, type and offset against the bytes that remain before it is used or
 * allocated for. Counts are bounded by the smallest encoding of one item, so
 * every allocation is O(file size). Values stay in the mapping; we only keep
 * their offsets (plus an offset per element of each string array, so element
 * j is O(1)). Keys and tensor names are copied NUL-terminated into one block,
 * and two hash tables give O(1) lookup and catch duplicates.
 */
#include "gguf/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/err.h"

#define HEADER_SIZE 24     /* magic, version, n_tensors, n_kv */
#define MIN_KV_SIZE 14     /* key len 8 + key >= 1 + type 4 + value >= 1 */
#define MIN_TINFO_SIZE 33  /* name len 8 + name >= 1 + n_dims 4 + 1 dim 8 + type 4 + offset 8 */
#define MAX_ARRAY_DEPTH 8  /* nested arrays: deeper is certainly not a model file */
#define MAX_TENSOR_NAME 255
#define TYPE_ID_COUNT 40
#define QUOTE_MAX 96       /* bytes of a name quoted in a message */

/* ---- type tables ---- */

static const struct {
    const char *name;
    int64_t block, size; /* block 0: removed from the format */
} type_table[TYPE_ID_COUNT] = {
    [0] = {"F32", 1, 4},          [1] = {"F16", 1, 2},
    [2] = {"Q4_0", 32, 18},       [3] = {"Q4_1", 32, 20},
    [4] = {"Q4_2", 0, 0},         [5] = {"Q4_3", 0, 0},
    [6] = {"Q5_0", 32, 22},       [7] = {"Q5_1", 32, 24},
    [8] = {"Q8_0", 32, 34},       [9] = {"Q8_1", 32, 36},
    [10] = {"Q2_K", 256, 84},     [11] = {"Q3_K", 256, 110},
    [12] = {"Q4_K", 256, 144},    [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},    [15] = {"Q8_K", 256, 292},
    [16] = {"IQ2_XXS", 256, 66},  [17] = {"IQ2_XS", 256, 74},
    [18] = {"IQ3_XXS", 256, 98},  [19] = {"IQ1_S", 256, 50},
    [20] = {"IQ4_NL", 32, 18},    [21] = {"IQ3_S", 256, 110},
    [22] = {"IQ2_S", 256, 82},    [23] = {"IQ4_XS", 256, 136},
    [24] = {"I8", 1, 1},          [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},         [27] = {"I64", 1, 8},
    [28] = {"F64", 1, 8},         [29] = {"IQ1_M", 256, 56},
    [30] = {"BF16", 1, 2},        [31] = {"Q4_0_4_4", 0, 0},
    [32] = {"Q4_0_4_8", 0, 0},    [33] = {"Q4_0_8_8", 0, 0},
    [34] = {"TQ1_0", 256, 54},    [35] = {"TQ2_0", 256, 66},
    [36] = {"IQ4_NL_4_4", 0, 0},  [37] = {"IQ4_NL_4_8", 0, 0},
    [38] = {"IQ4_NL_8_8", 0, 0},  [39] = {"MXFP4", 32, 17},
};

int exsa_gguf_type_size(int type, int64_t *block_size, int64_t *type_size)
{
    if (type < 0 || type >= TYPE_ID_COUNT || type_table[type].block == 0)
        return EXSA_EFORMAT;
    if (block_size)
        *block_size = type_table[type].block;
    if (type_size)
        *type_size = type_table[type].size;
    return EXSA_OK;
}

const char *exsa_gguf_type_name(int type)
{
    if (type < 0 || type >= TYPE_ID_COUNT || type_table[type].block == 0)
        return NULL;
    return type_table[type].name;
}

static const char *const vtype_names[EXSA_GGUF_VTYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool", "string", "array", "uint64", "int64", "float64",
};

/* Encoded size of a scalar value type; 0 for string and array. */
static const uint8_t vtype_size[EXSA_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *exsa_gguf_vtype_name(int vtype)
{
    if (vtype < 0 || vtype >= EXSA_GGUF_VTYPE_COUNT)
        return NULL;
    return vtype_names[vtype];
}

/* ---- handle ---- */

typedef struct gkv {
    const char *key;
    uint32_t type;
    uint64_t off;       /* value bytes (after the type field) */
    uint64_t size;      /* value bytes in the file */
    uint32_t arr_type;  /* arrays: element type, count, first element */
    uint64_t arr_n;
    uint64_t arr_off;
    uint64_t *str_off;  /* string arrays: offset of each element's length */
    uint64_t key_off, key_len; /* in the file, until the names are copied */
} gkv;

struct exsa_gguf {
    const uint8_t *base;
    uint64_t size;
    int mapped;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_off;
    int64_t n_kv, n_tensors;
    gkv *kv;
    exsa_gguf_tensor *tensors;
    char *names;       /* every key and tensor name, NUL-terminated */
    uint64_t *str_offs; /* element offsets of all string arrays */
    int64_t *kv_hash, *t_hash;
    uint64_t kv_mask, t_mask;
};

/* ---- little-endian reads (the file may be unaligned; the host order does not matter) ---- */

static uint64_t rd_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint32_t rd32(const uint8_t *p) { return (uint32_t)rd_le(p, 4); }
static uint64_t rd64(const uint8_t *p) { return rd_le(p, 8); }

/* ---- cursor with context for messages ---- */

typedef struct cur {
    const uint8_t *p;
    uint64_t size, pos;
    exsa_err *err;
    char what[160];                 /* "key 'x'", "tensor #3", ... */
    uint64_t path[MAX_ARRAY_DEPTH]; /* element indices inside nested arrays */
    int depth;
} cur;

static uint64_t left(const cur *c) { return c->size - c->pos; }

/* Copies up to QUOTE_MAX bytes of a name from the file for a message, with
 * control bytes shown as '?' so a hostile name cannot garble the log. */
static void quote(char *dst, size_t cap, const uint8_t *s, uint64_t n)
{
    size_t k = 0;
    uint64_t lim = n > QUOTE_MAX ? QUOTE_MAX : n;
    for (uint64_t i = 0; i < lim && k + 4 < cap; i++)
        dst[k++] = (s[i] < 0x20 || s[i] == 0x7f) ? '?' : (char)s[i];
    if (lim < n && k + 4 < cap) {
        memcpy(dst + k, "...", 3);
        k += 3;
    }
    dst[k] = '\0';
}

/* "gguf: <what>[elem i][j] at offset <at>: <message>" */
__attribute__((format(printf, 3, 4))) static int fail(const cur *c, uint64_t at, const char *fmt,
                                                      ...)
{
    char msg[320], path[160] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t k = 0;
    for (int d = 0; d < c->depth && k < sizeof path; d++) {
        int w = snprintf(path + k, sizeof path - k, "%s[%" PRIu64 "]", d ? "" : " element",
                         c->path[d]);
        if (w < 0)
            break;
        k += (size_t)w;
    }
    return exsa_err_set(c->err, EXSA_EFORMAT, "gguf: %s%s at offset %" PRIu64 ": %s", c->what,
                        path, at, msg);
}

/* A u64 length and that many bytes; returns their offset and length. */
static int rd_str(cur *c, const char *what, uint64_t *off, uint64_t *len)
{
    uint64_t at = c->pos;
    if (left(c) < 8)
        return fail(c, at, "%s length truncated (file size %" PRIu64 ")", what, c->size);
    uint64_t n = rd64(c->p + at);
    c->pos += 8;
    if (n > left(c))
        return fail(c, at, "%s length %" PRIu64 " exceeds file (%" PRIu64
                    " bytes left, size %" PRIu64 ")", what, n, left(c), c->size);
    *off = c->pos;
    *len = n;
    c->pos += n;
    return EXSA_OK;
}

/* Validates one value of the given type at the cursor and moves past it. */
static int check_value(cur *c, uint32_t type, int depth)
{
    uint64_t at = c->pos;
    if (type >= EXSA_GGUF_VTYPE_COUNT)
        return fail(c, at, "unknown value type %" PRIu32, type);
    uint64_t sz = vtype_size[type];
    if (sz) {
        if (left(c) < sz)
            return fail(c, at, "%s value truncated (file size %" PRIu64 ")", vtype_names[type],
                        c->size);
        if (type == EXSA_GGUF_BOOL && c->p[at] > 1)
            return fail(c, at, "bool value %u is not 0 or 1", c->p[at]);
        c->pos += sz;
        return EXSA_OK;
    }
    if (type == EXSA_GGUF_STRING) {
        uint64_t off, len;
        return rd_str(c, "string", &off, &len);
    }
    if (depth >= MAX_ARRAY_DEPTH)
        return fail(c, at, "arrays nested deeper than %d levels", MAX_ARRAY_DEPTH);
    if (left(c) < 12)
        return fail(c, at, "array header truncated (file size %" PRIu64 ")", c->size);
    uint32_t et = rd32(c->p + at);
    uint64_t n = rd64(c->p + at + 4);
    if (et >= EXSA_GGUF_VTYPE_COUNT)
        return fail(c, at, "unknown array element type %" PRIu32, et);
    c->pos += 12;
    /* Bound the count by the smallest encoding of one element before any
     * loop: an element is at least its scalar size, 8 (string), 12 (array). */
    uint64_t min = vtype_size[et] ? vtype_size[et] : et == EXSA_GGUF_STRING ? 8 : 12;
    if (n > left(c) / min)
        return fail(c, at, "array of %" PRIu64 " %s elements exceeds file (%" PRIu64
                    " bytes left, size %" PRIu64 ")", n, vtype_names[et], left(c), c->size);
    if (vtype_size[et]) {
        if (et == EXSA_GGUF_BOOL) {
            for (uint64_t j = 0; j < n; j++) {
                uint8_t b = c->p[c->pos + j];
                if (b > 1) {
                    c->path[c->depth++] = j;
                    int rc = fail(c, c->pos + j, "bool value %u is not 0 or 1", b);
                    c->depth--;
                    return rc;
                }
            }
        }
        c->pos += n * min;
        return EXSA_OK;
    }
    for (uint64_t j = 0; j < n; j++) {
        c->path[c->depth++] = j;
        int rc = check_value(c, et, depth + 1);
        c->depth--;
        if (rc)
            return rc;
    }
    return EXSA_OK;
}

/* ---- hash tables (open addressing over indices; names are unique) ---- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

/* Builds a table of n names; on a duplicate returns its two indices. */
static int hash_build(int64_t n, const char *(*name)(const exsa_gguf *, int64_t),
                      const exsa_gguf *g, int64_t **table, uint64_t *mask, int64_t *dup_a,
                      int64_t *dup_b)
{
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2)
        cap *= 2;
    int64_t *t = malloc(cap * sizeof *t);
    if (!t)
        return EXSA_ENOMEM;
    for (uint64_t k = 0; k < cap; k++)
        t[k] = -1;
    for (int64_t i = 0; i < n; i++) {
        const char *s = name(g, i);
        uint64_t k = hash_str(s) & (cap - 1);
        while (t[k] >= 0) {
            if (strcmp(name(g, t[k]), s) == 0) {
                *dup_a = t[k];
                *dup_b = i;
                free(t);
                return EXSA_EFORMAT;
            }
            k = (k + 1) & (cap - 1);
        }
        t[k] = i;
    }
    *table = t;
    *mask = cap - 1;
    return EXSA_OK;
}

static int64_t hash_find(const int64_t *t, uint64_t mask, const char *s,
                         const char *(*name)(const exsa_gguf *, int64_t), const exsa_gguf *g)
{
    if (!t || !s)
        return -1;
    uint64_t k = hash_str(s) & mask;
    while (t[k] >= 0) {
        if (strcmp(name(g, t[k]), s) == 0)
            return t[k];
        k = (k + 1) & mask;
    }
    return -1;
}

static const char *key_name(const exsa_gguf *g, int64_t i) { return g->kv[i].key; }
static const char *tensor_name(const exsa_gguf *g, int64_t i) { return g->tensors[i].name; }

/* ---- parse ---- */

static int parse_header(exsa_gguf *g, cur *c)
{
    snprintf(c->what, sizeof c->what, "header");
    if (g->size < 4)
        return fail(c, 0, "file too small (%" PRIu64 " bytes) for a GGUF header", g->size);
    if (memcmp(g->base, "GGUF", 4) != 0) {
        char q[16];
        quote(q, sizeof q, g->base, 4);
        return fail(c, 0, "bad magic \"%s\" (%02x %02x %02x %02x), expected \"GGUF\"", q,
                    g->base[0], g->base[1], g->base[2], g->base[3]);
    }
    if (g->size < HEADER_SIZE)
        return fail(c, 4, "header truncated (file size %" PRIu64 ", need %d)", g->size,
                    HEADER_SIZE);
    uint32_t v = rd32(g->base + 4);
    if (v == 1)
        return fail(c, 4, "GGUF version 1 is not supported (it uses 32-bit counts); "
                    "re-convert the model with a current converter");
    if (v != 2 && v != 3) {
        if ((v & 0xffffu) == 0 && (v >> 24) >= 1 && (v >> 24) <= 3)
            return fail(c, 4, "version field 0x%08" PRIx32 " looks byte-swapped: big-endian GGUF "
                        "files are not supported", v);
        return fail(c, 4, "unsupported GGUF version %" PRIu32 " (supported: 2, 3)", v);
    }
    g->version = v;
    uint64_t nt = rd64(g->base + 8), nkv = rd64(g->base + 16);
    uint64_t room = g->size - HEADER_SIZE;
    if (nkv > room / MIN_KV_SIZE)
        return fail(c, 16, "n_kv %" PRIu64 " cannot fit in the file (size %" PRIu64 ")", nkv,
                    g->size);
    if (nt > room / MIN_TINFO_SIZE)
        return fail(c, 8, "n_tensors %" PRIu64 " cannot fit in the file (size %" PRIu64 ")", nt,
                    g->size);
    g->n_kv = (int64_t)nkv;
    g->n_tensors = (int64_t)nt;
    c->pos = HEADER_SIZE;
    return EXSA_OK;
}

static int parse_kvs(exsa_gguf *g, cur *c, uint64_t *n_strings)
{
    for (int64_t i = 0; i < g->n_kv; i++) {
        gkv *kv = &g->kv[i];
        uint64_t at = c->pos;
        snprintf(c->what, sizeof c->what, "key #%" PRId64, i);
        int rc = rd_str(c, "key string", &kv->key_off, &kv->key_len);
        if (rc)
            return rc;
        const uint8_t *k = c->p + kv->key_off;
        if (kv->key_len == 0)
            return fail(c, at, "empty key");
        const uint8_t *nul = memchr(k, 0, kv->key_len);
        if (nul)
            return fail(c, at, "key contains a NUL byte at position %td", nul - k);
        char q[QUOTE_MAX + 8];
        quote(q, sizeof q, k, kv->key_len);
        snprintf(c->what, sizeof c->what, "key '%s'", q);
        if (left(c) < 4)
            return fail(c, c->pos, "value type truncated (file size %" PRIu64 ")", c->size);
        kv->type = rd32(c->p + c->pos);
        if (kv->type >= EXSA_GGUF_VTYPE_COUNT)
            return fail(c, c->pos, "unknown value type %" PRIu32, kv->type);
        c->pos += 4;
        kv->off = c->pos;
        rc = check_value(c, kv->type, 0);
        if (rc)
            return rc;
        kv->size = c->pos - kv->off;
        if (kv->type == EXSA_GGUF_ARRAY) {
            kv->arr_type = rd32(c->p + kv->off);
            kv->arr_n = rd64(c->p + kv->off + 4);
            kv->arr_off = kv->off + 12;
            if (kv->arr_type == EXSA_GGUF_STRING)
                *n_strings += kv->arr_n; /* each took >= 8 bytes: bounded by the file */
        }
    }
    return EXSA_OK;
}

typedef struct tname {
    uint64_t off, len;
} tname;

static int parse_tensor_infos(exsa_gguf *g, cur *c, tname *tn)
{
    uint64_t room = left(c);
    if ((uint64_t)g->n_tensors > room / MIN_TINFO_SIZE) {
        snprintf(c->what, sizeof c->what, "header");
        return fail(c, 8, "n_tensors %" PRId64 " cannot fit in the %" PRIu64
                    " bytes after the key/values", g->n_tensors, room);
    }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        exsa_gguf_tensor *t = &g->tensors[i];
        uint64_t at = c->pos;
        snprintf(c->what, sizeof c->what, "tensor #%" PRId64, i);
        int rc = rd_str(c, "name", &tn[i].off, &tn[i].len);
        if (rc)
            return rc;
        const uint8_t *s = c->p + tn[i].off;
        if (tn[i].len == 0)
            return fail(c, at, "empty tensor name");
        if (tn[i].len > MAX_TENSOR_NAME)
            return fail(c, at, "tensor name length %" PRIu64 " exceeds the limit of %d bytes",
                        tn[i].len, MAX_TENSOR_NAME);
        const uint8_t *nul = memchr(s, 0, tn[i].len);
        if (nul)
            return fail(c, at, "tensor name contains a NUL byte at position %td", nul - s);
        char q[QUOTE_MAX + 8];
        quote(q, sizeof q, s, tn[i].len);
        snprintf(c->what, sizeof c->what, "tensor '%s'", q);

        if (left(c) < 4)
            return fail(c, c->pos, "n_dims truncated (file size %" PRIu64 ")", c->size);
        uint32_t nd = rd32(c->p + c->pos);
        if (nd < 1 || nd > EXSA_GGUF_MAX_DIMS)
            return fail(c, c->pos, "n_dims %" PRIu32 " out of range 1..%d", nd,
                        EXSA_GGUF_MAX_DIMS);
        c->pos += 4;
        if (left(c) < 8ull * nd)
            return fail(c, c->pos, "dimensions truncated (file size %" PRIu64 ")", c->size);
        t->n_dims = (int)nd;
        int64_t nel = 1;
        for (int d = 0; d < EXSA_GGUF_MAX_DIMS; d++)
            t->ne[d] = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t u = rd64(c->p + c->pos);
            if (u > INT64_MAX)
                return fail(c, c->pos, "ne[%" PRIu32 "] is negative (%" PRId64 ")", d,
                            (int64_t)(u - INT64_MAX - 1) + INT64_MIN);
            if (u == 0)
                return fail(c, c->pos, "ne[%" PRIu32 "] is 0", d);
            t->ne[d] = (int64_t)u;
            if (__builtin_mul_overflow(nel, t->ne[d], &nel))
                return fail(c, c->pos, "element count overflows int64 at ne[%" PRIu32 "] = %"
                            PRId64, d, t->ne[d]);
            c->pos += 8;
        }
        if (left(c) < 12)
            return fail(c, c->pos, "type and offset truncated (file size %" PRIu64 ")", c->size);
        uint32_t type = rd32(c->p + c->pos);
        int64_t bs, ts;
        if (type >= TYPE_ID_COUNT)
            return fail(c, c->pos, "unknown ggml type %" PRIu32, type);
        if (exsa_gguf_type_size((int)type, &bs, &ts) != EXSA_OK)
            return fail(c, c->pos, "ggml type %" PRIu32 " (%s) was removed from the format and "
                        "is not supported", type, type_table[type].name);
        if (t->ne[0] % bs != 0)
            return fail(c, c->pos, "ne[0] = %" PRId64 " is not a multiple of the block size %"
                        PRId64 " of type %s", t->ne[0], bs, type_table[type].name);
        int64_t bytes;
        if (__builtin_mul_overflow(nel / bs, ts, &bytes))
            return fail(c, c->pos, "size of %" PRId64 " elements of type %s overflows", nel,
                        type_table[type].name);
        t->type = (int)type;
        t->size = (uint64_t)bytes;
        c->pos += 4;
        t->offset = rd64(c->p + c->pos);
        c->pos += 8;
    }
    return EXSA_OK;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = ((const uint64_t *)a)[0], y = ((const uint64_t *)b)[0];
    return x < y ? -1 : x > y;
}

/* Tensor data: aligned, inside the file, pairwise disjoint. */
static int check_tensor_data(exsa_gguf *g, exsa_err *err)
{
    uint64_t data_size = g->size > g->data_off ? g->size - g->data_off : 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        exsa_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment)
            return exsa_err_set(err, EXSA_EFORMAT, "gguf: tensor '%s': data offset %" PRIu64
                                " is not a multiple of the alignment %" PRIu64, t->name,
                                t->offset, g->alignment);
        if (t->offset >= data_size)
            return exsa_err_set(err, EXSA_EFORMAT, "gguf: tensor '%s': data offset %" PRIu64
                                " (data section at %" PRIu64 ") beyond end of file (size %"
                                PRIu64 ")", t->name, t->offset, g->data_off, g->size);
        if (t->size > data_size - t->offset)
            return exsa_err_set(err, EXSA_EFORMAT, "gguf: tensor '%s': data offset %" PRIu64
                                " + size %" PRIu64 " (data section at %" PRIu64
                                ") beyond end of file (size %" PRIu64 ")", t->name, t->offset,
                                t->size, g->data_off, g->size);
        t->data = g->base + g->data_off + t->offset;
    }
    if (g->n_tensors < 2)
        return EXSA_OK;
    /* Sort (offset, index) pairs; each tensor must end before the next starts. */
    uint64_t(*ord)[2] = malloc((size_t)g->n_tensors * sizeof *ord);
    if (!ord)
        return exsa_err_set(err, EXSA_ENOMEM, "gguf: out of memory for %" PRId64 " tensors",
                            g->n_tensors);
    for (int64_t i = 0; i < g->n_tensors; i++) {
        ord[i][0] = g->tensors[i].offset;
        ord[i][1] = (uint64_t)i;
    }
    qsort(ord, (size_t)g->n_tensors, sizeof *ord, cmp_u64);
    int rc = EXSA_OK;
    for (int64_t i = 1; i < g->n_tensors && !rc; i++) {
        const exsa_gguf_tensor *a = &g->tensors[ord[i - 1][1]], *b = &g->tensors[ord[i][1]];
        if (a->offset + a->size > b->offset) /* no overflow: both are inside the file */
            rc = exsa_err_set(err, EXSA_EFORMAT, "gguf: tensors '%s' (data offset %" PRIu64
                              ", size %" PRIu64 ") and '%s' (data offset %" PRIu64
                              ") overlap", a->name, a->offset, a->size, b->name, b->offset);
    }
    free(ord);
    return rc;
}

static int parse(exsa_gguf *g, exsa_err *err)
{
    cur c = {.p = g->base, .size = g->size, .err = err};
    int rc = parse_header(g, &c);
    if (rc)
        return rc;
    /* Counts were bounded by the file size above, so these are O(file size). */
    g->kv = calloc((size_t)g->n_kv + 1, sizeof *g->kv);
    g->tensors = calloc((size_t)g->n_tensors + 1, sizeof *g->tensors);
    tname *tn = calloc((size_t)g->n_tensors + 1, sizeof *tn);
    if (!g->kv || !g->tensors || !tn) {
        free(tn);
        return exsa_err_set(err, EXSA_ENOMEM, "gguf: out of memory for %" PRId64
                            " key/values and %" PRId64 " tensors", g->n_kv, g->n_tensors);
    }
    uint64_t n_strings = 0;
    rc = parse_kvs(g, &c, &n_strings);
    if (!rc)
        rc = parse_tensor_infos(g, &c, tn);
    if (rc) {
        free(tn);
        return rc;
    }
    uint64_t infos_end = c.pos;

    /* Names: each is at most the file's size; the total with NULs is <= 2x. */
    uint64_t total = 0;
    for (int64_t i = 0; i < g->n_kv; i++)
        total += g->kv[i].key_len + 1;
    for (int64_t i = 0; i < g->n_tensors; i++)
        total += tn[i].len + 1;
    g->names = malloc(total ? total : 1);
    g->str_offs = malloc((n_strings ? n_strings : 1) * sizeof *g->str_offs);
    if (!g->names || !g->str_offs) {
        free(tn);
        return exsa_err_set(err, EXSA_ENOMEM, "gguf: out of memory for names (%" PRIu64
                            " bytes)", total);
    }
    char *p = g->names;
    for (int64_t i = 0; i < g->n_kv; i++) {
        memcpy(p, g->base + g->kv[i].key_off, g->kv[i].key_len);
        p[g->kv[i].key_len] = '\0';
        g->kv[i].key = p;
        p += g->kv[i].key_len + 1;
    }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        memcpy(p, g->base + tn[i].off, tn[i].len);
        p[tn[i].len] = '\0';
        g->tensors[i].name = p;
        p += tn[i].len + 1;
    }
    free(tn);

    /* Index string arrays: validated above, so walking the lengths is safe. */
    uint64_t *so = g->str_offs;
    for (int64_t i = 0; i < g->n_kv; i++) {
        gkv *kv = &g->kv[i];
        if (kv->type != EXSA_GGUF_ARRAY || kv->arr_type != EXSA_GGUF_STRING)
            continue;
        kv->str_off = so;
        uint64_t pos = kv->arr_off;
        for (uint64_t j = 0; j < kv->arr_n; j++) {
            so[j] = pos;
            pos += 8 + rd64(g->base + pos);
        }
        so += kv->arr_n;
    }

    int64_t a, b;
    rc = hash_build(g->n_kv, key_name, g, &g->kv_hash, &g->kv_mask, &a, &b);
    if (rc == EXSA_EFORMAT)
        return exsa_err_set(err, rc, "gguf: duplicate key '%s' (key #%" PRId64 " at offset %"
                            PRIu64 " and key #%" PRId64 " at offset %" PRIu64 ")",
                            g->kv[b].key, a, g->kv[a].key_off - 8, b, g->kv[b].key_off - 8);
    if (rc)
        return exsa_err_set(err, rc, "gguf: out of memory for the key index");
    rc = hash_build(g->n_tensors, tensor_name, g, &g->t_hash, &g->t_mask, &a, &b);
    if (rc == EXSA_EFORMAT)
        return exsa_err_set(err, rc, "gguf: duplicate tensor name '%s' (tensors #%" PRId64
                            " and #%" PRId64 ")", g->tensors[b].name, a, b);
    if (rc)
        return exsa_err_set(err, rc, "gguf: out of memory for the tensor index");

    g->alignment = EXSA_GGUF_DEFAULT_ALIGNMENT;
    int64_t ai = exsa_gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        const gkv *kv = &g->kv[ai];
        if (kv->type != EXSA_GGUF_UINT32)
            return exsa_err_set(err, EXSA_EFORMAT, "gguf: key 'general.alignment' at offset %"
                                PRIu64 ": type %s, expected uint32", kv->off - 4,
                                vtype_names[kv->type]);
        uint32_t al = rd32(g->base + kv->off);
        if (al == 0 || (al & (al - 1)) != 0)
            return exsa_err_set(err, EXSA_EFORMAT, "gguf: key 'general.alignment' at offset %"
                                PRIu64 ": value %" PRIu32 " is not a nonzero power of two",
                                kv->off, al);
        g->alignment = al;
    }
    /* infos_end <= size < 2^63 and alignment <= 2^31: no overflow. A file
     * without tensors may end before its (empty) data section. */
    g->data_off = (infos_end + g->alignment - 1) & ~(g->alignment - 1);
    return check_tensor_data(g, err);
}

/* ---- open / close ---- */

static exsa_gguf *open_buffer(const void *data, uint64_t size, int mapped, exsa_err *err)
{
    exsa_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        if (mapped)
            munmap((void *)data, size);
        exsa_err_set(err, EXSA_ENOMEM, "gguf: out of memory");
        return NULL;
    }
    g->base = data;
    g->size = size;
    g->mapped = mapped;
    if (parse(g, err) != EXSA_OK) {
        exsa_gguf_close(g);
        return NULL;
    }
    return g;
}

exsa_gguf *exsa_gguf_open_memory(const void *data, size_t size, exsa_err *err)
{
    if (!data && size) {
        exsa_err_set(err, EXSA_EINVAL, "gguf: NULL buffer of %zu bytes", size);
        return NULL;
    }
    static const uint8_t empty[1];
    return open_buffer(data ? data : empty, size, 0, err);
}

exsa_gguf *exsa_gguf_open(const char *path, exsa_err *err)
{
    if (!path) {
        exsa_err_set(err, EXSA_EINVAL, "gguf: NULL path");
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        exsa_err_set(err, EXSA_EIO, "gguf: cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        exsa_err_set(err, EXSA_EIO, "gguf: cannot stat '%s': %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        exsa_err_set(err, EXSA_EIO, "gguf: '%s' is not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_size == 0) {
        exsa_err_set(err, EXSA_EFORMAT, "gguf: '%s' is empty (0 bytes)", path);
        close(fd);
        return NULL;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        exsa_err_set(err, EXSA_EIO, "gguf: '%s' is too large to map", path);
        close(fd);
        return NULL;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (m == MAP_FAILED) {
        exsa_err_set(err, EXSA_EIO, "gguf: cannot map '%s' (%lld bytes): %s", path,
                     (long long)st.st_size, strerror(e));
        return NULL;
    }
    return open_buffer(m, (uint64_t)st.st_size, 1, err);
}

void exsa_gguf_close(exsa_gguf *g)
{
    if (!g)
        return;
    if (g->mapped)
        munmap((void *)g->base, (size_t)g->size);
    free(g->kv);
    free(g->tensors);
    free(g->names);
    free(g->str_offs);
    free(g->kv_hash);
    free(g->t_hash);
    free(g);
}

uint32_t exsa_gguf_version(const exsa_gguf *g) { return g ? g->version : 0; }
uint64_t exsa_gguf_alignment(const exsa_gguf *g) { return g ? g->alignment : 0; }
uint64_t exsa_gguf_file_size(const exsa_gguf *g) { return g ? g->size : 0; }
uint64_t exsa_gguf_data_offset(const exsa_gguf *g) { return g ? g->data_off : 0; }

/* ---- key/values ---- */

static const gkv *kv_at(const exsa_gguf *g, int64_t i)
{
    return g && i >= 0 && i < g->n_kv ? &g->kv[i] : NULL;
}

int64_t exsa_gguf_n_kv(const exsa_gguf *g) { return g ? g->n_kv : 0; }

const char *exsa_gguf_kv_key(const exsa_gguf *g, int64_t i)
{
    const gkv *kv = kv_at(g, i);
    return kv ? kv->key : NULL;
}

int64_t exsa_gguf_find_key(const exsa_gguf *g, const char *key)
{
    return g ? hash_find(g->kv_hash, g->kv_mask, key, key_name, g) : -1;
}

int exsa_gguf_kv_type(const exsa_gguf *g, int64_t i)
{
    const gkv *kv = kv_at(g, i);
    return kv ? (int)kv->type : EXSA_EINVAL;
}

/* An integer or bool scalar at p: sets *neg and the value as int64 (if it
 * is signed) or uint64 (if unsigned). -1 for non-integer types. */
static int int_scalar(const uint8_t *p, uint32_t type, int *is_signed, int64_t *s, uint64_t *u)
{
    switch (type) {
    case EXSA_GGUF_UINT8: case EXSA_GGUF_BOOL: *u = p[0]; *is_signed = 0; return 0;
    case EXSA_GGUF_UINT16: *u = rd_le(p, 2); *is_signed = 0; return 0;
    case EXSA_GGUF_UINT32: *u = rd_le(p, 4); *is_signed = 0; return 0;
    case EXSA_GGUF_UINT64: *u = rd_le(p, 8); *is_signed = 0; return 0;
    case EXSA_GGUF_INT8: *s = (int8_t)p[0]; *is_signed = 1; return 0;
    case EXSA_GGUF_INT16: *s = (int16_t)(uint16_t)rd_le(p, 2); *is_signed = 1; return 0;
    case EXSA_GGUF_INT32: *s = (int32_t)(uint32_t)rd_le(p, 4); *is_signed = 1; return 0;
    case EXSA_GGUF_INT64: {
        uint64_t v = rd_le(p, 8);
        /* two's complement without implementation-defined conversion */
        *s = v > INT64_MAX ? (int64_t)(v - INT64_MAX - 1) + INT64_MIN : (int64_t)v;
        *is_signed = 1;
        return 0;
    }
    default: return -1;
    }
}

/* Any numeric or bool scalar at p as double; -1 for strings/arrays. */
static int float_scalar(const uint8_t *p, uint32_t type, double *out)
{
    if (type == EXSA_GGUF_FLOAT32) {
        uint32_t b = rd32(p);
        float f;
        memcpy(&f, &b, 4);
        *out = f;
        return 0;
    }
    if (type == EXSA_GGUF_FLOAT64) {
        uint64_t b = rd64(p);
        memcpy(out, &b, 8);
        return 0;
    }
    int sg;
    int64_t s;
    uint64_t u;
    if (int_scalar(p, type, &sg, &s, &u))
        return -1;
    *out = sg ? (double)s : (double)u;
    return 0;
}

int exsa_gguf_kv_int(const exsa_gguf *g, int64_t i, int64_t *out)
{
    const gkv *kv = kv_at(g, i);
    if (!kv || !out)
        return EXSA_EINVAL;
    int sg;
    int64_t s;
    uint64_t u;
    if (int_scalar(g->base + kv->off, kv->type, &sg, &s, &u))
        return EXSA_EFORMAT;
    if (!sg && u > INT64_MAX)
        return EXSA_EFORMAT;
    *out = sg ? s : (int64_t)u;
    return EXSA_OK;
}

int exsa_gguf_kv_uint(const exsa_gguf *g, int64_t i, uint64_t *out)
{
    const gkv *kv = kv_at(g, i);
    if (!kv || !out)
        return EXSA_EINVAL;
    int sg;
    int64_t s;
    uint64_t u;
    if (int_scalar(g->base + kv->off, kv->type, &sg, &s, &u))
        return EXSA_EFORMAT;
    if (sg && s < 0)
        return EXSA_EFORMAT;
    *out = sg ? (uint64_t)s : u;
    return EXSA_OK;
}

int exsa_gguf_kv_float(const exsa_gguf *g, int64_t i, double *out)
{
    const gkv *kv = kv_at(g, i);
    if (!kv || !out)
        return EXSA_EINVAL;
    if (kv->type == EXSA_GGUF_BOOL || float_scalar(g->base + kv->off, kv->type, out))
        return EXSA_EFORMAT;
    return EXSA_OK;
}

int exsa_gguf_kv_bool(const exsa_gguf *g, int64_t i, int *out)
{
    const gkv *kv = kv_at(g, i);
    if (!kv || !out)
        return EXSA_EINVAL;
    if (kv->type != EXSA_GGUF_BOOL)
        return EXSA_EFORMAT;
    *out = g->base[kv->off];
    return EXSA_OK;
}

int exsa_gguf_kv_str(const exsa_gguf *g, int64_t i, const char **s, size_t *len)
{
    const gkv *kv = kv_at(g, i);
    if (!kv)
        return EXSA_EINVAL;
    if (kv->type != EXSA_GGUF_STRING)
        return EXSA_EFORMAT;
    if (s)
        *s = (const char *)g->base + kv->off + 8;
    if (len)
        *len = (size_t)rd64(g->base + kv->off);
    return EXSA_OK;
}

int exsa_gguf_arr_type(const exsa_gguf *g, int64_t i)
{
    const gkv *kv = kv_at(g, i);
    if (!kv)
        return EXSA_EINVAL;
    if (kv->type != EXSA_GGUF_ARRAY)
        return EXSA_EFORMAT;
    return (int)kv->arr_type;
}

uint64_t exsa_gguf_arr_n(const exsa_gguf *g, int64_t i)
{
    const gkv *kv = kv_at(g, i);
    return kv && kv->type == EXSA_GGUF_ARRAY ? kv->arr_n : 0;
}

/* Element j of a numeric array, or NULL. */
static const uint8_t *num_elem(const exsa_gguf *g, int64_t i, uint64_t j, uint32_t *type)
{
    const gkv *kv = kv_at(g, i);
    if (!kv || kv->type != EXSA_GGUF_ARRAY || j >= kv->arr_n || !vtype_size[kv->arr_type])
        return NULL;
    *type = kv->arr_type;
    return g->base + kv->arr_off + j * vtype_size[kv->arr_type];
}

int64_t exsa_gguf_arr_int(const exsa_gguf *g, int64_t i, uint64_t j)
{
    uint32_t t;
    const uint8_t *p = num_elem(g, i, j, &t);
    if (!p)
        return 0;
    int sg;
    int64_t s;
    uint64_t u;
    if (!int_scalar(p, t, &sg, &s, &u))
        return sg ? s : u > INT64_MAX ? INT64_MAX : (int64_t)u;
    double d;
    float_scalar(p, t, &d);
    /* float elements: truncate, saturating (the conversion would be UB) */
    if (d != d)
        return 0;
    if (d >= 9223372036854775807.0)
        return INT64_MAX;
    if (d <= -9223372036854775808.0)
        return INT64_MIN;
    return (int64_t)d;
}

double exsa_gguf_arr_float(const exsa_gguf *g, int64_t i, uint64_t j)
{
    uint32_t t;
    const uint8_t *p = num_elem(g, i, j, &t);
    double d = 0;
    if (p)
        float_scalar(p, t, &d);
    return d;
}

const char *exsa_gguf_arr_str(const exsa_gguf *g, int64_t i, uint64_t j, size_t *len)
{
    const gkv *kv = kv_at(g, i);
    if (!kv || kv->type != EXSA_GGUF_ARRAY || kv->arr_type != EXSA_GGUF_STRING ||
        j >= kv->arr_n)
        return NULL;
    uint64_t off = kv->str_off[j];
    if (len)
        *len = (size_t)rd64(g->base + off);
    return (const char *)g->base + off + 8;
}

const void *exsa_gguf_arr_data(const exsa_gguf *g, int64_t i)
{
    const gkv *kv = kv_at(g, i);
    if (!kv || kv->type != EXSA_GGUF_ARRAY || !vtype_size[kv->arr_type])
        return NULL;
    return g->base + kv->arr_off;
}

const void *exsa_gguf_kv_raw(const exsa_gguf *g, int64_t i, uint64_t *size)
{
    const gkv *kv = kv_at(g, i);
    if (!kv)
        return NULL;
    if (size)
        *size = kv->size;
    return g->base + kv->off;
}

/* ---- getters by name ---- */

static int64_t need_key(const exsa_gguf *g, const char *key, exsa_err *err)
{
    int64_t i = exsa_gguf_find_key(g, key);
    if (i < 0)
        exsa_err_set(err, EXSA_EINVAL, "gguf: missing key '%s'", key ? key : "(null)");
    return i;
}

static int wrong_type(const exsa_gguf *g, int64_t i, const char *want, exsa_err *err)
{
    return exsa_err_set(err, EXSA_EFORMAT, "gguf: key '%s': type %s, expected %s",
                        g->kv[i].key, vtype_names[g->kv[i].type], want);
}

int exsa_gguf_get_int(const exsa_gguf *g, const char *key, int64_t *out, exsa_err *err)
{
    int64_t i = need_key(g, key, err);
    if (i < 0)
        return EXSA_EINVAL;
    int rc = exsa_gguf_kv_int(g, i, out);
    if (rc == EXSA_EFORMAT) {
        if (g->kv[i].type == EXSA_GGUF_UINT64)
            return exsa_err_set(err, rc, "gguf: key '%s': value %" PRIu64
                                " does not fit in int64", key, rd64(g->base + g->kv[i].off));
        return wrong_type(g, i, "an integer", err);
    }
    if (rc)
        return exsa_err_set(err, rc, "gguf: key '%s': NULL output", key);
    return EXSA_OK;
}

int exsa_gguf_get_float(const exsa_gguf *g, const char *key, double *out, exsa_err *err)
{
    int64_t i = need_key(g, key, err);
    if (i < 0)
        return EXSA_EINVAL;
    int rc = exsa_gguf_kv_float(g, i, out);
    if (rc == EXSA_EFORMAT)
        return wrong_type(g, i, "a number", err);
    if (rc)
        return exsa_err_set(err, rc, "gguf: key '%s': NULL output", key);
    return EXSA_OK;
}

int exsa_gguf_get_bool(const exsa_gguf *g, const char *key, int *out, exsa_err *err)
{
    int64_t i = need_key(g, key, err);
    if (i < 0)
        return EXSA_EINVAL;
    int rc = exsa_gguf_kv_bool(g, i, out);
    if (rc == EXSA_EFORMAT)
        return wrong_type(g, i, "bool", err);
    if (rc)
        return exsa_err_set(err, rc, "gguf: key '%s': NULL output", key);
    return EXSA_OK;
}

int exsa_gguf_get_str(const exsa_gguf *g, const char *key, const char **s, size_t *len,
                      exsa_err *err)
{
    int64_t i = need_key(g, key, err);
    if (i < 0)
        return EXSA_EINVAL;
    if (exsa_gguf_kv_str(g, i, s, len) == EXSA_EFORMAT)
        return wrong_type(g, i, "string", err);
    return EXSA_OK;
}

/* ---- tensors ---- */

int64_t exsa_gguf_n_tensors(const exsa_gguf *g) { return g ? g->n_tensors : 0; }

const exsa_gguf_tensor *exsa_gguf_tensor_at(const exsa_gguf *g, int64_t i)
{
    return g && i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const exsa_gguf_tensor *exsa_gguf_find_tensor(const exsa_gguf *g, const char *name)
{
    if (!g)
        return NULL;
    int64_t i = hash_find(g->t_hash, g->t_mask, name, tensor_name, g);
    return i >= 0 ? &g->tensors[i] : NULL;
}
