/* GGUF reader and writer.
 *
 * Reference files are built byte by byte in this test (an encoder of its own,
 * independent of gguf_writer.c), so the reader is checked against known
 * bytes and the writer's output against known bytes. The malformed corpus is
 * generated here too: every truncation of a valid file, a table of hand-made
 * bad files (one fault each, with the words the message must contain) and
 * seeded bit flips. Run under ASan, each buffer is an exact-size heap copy so
 * any read past the end is caught.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf/gguf.h"
#include "test_util.h"

/* ---- independent encoder ---- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf;

static void b_put(buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void b_le(buf *b, uint64_t v, int n)
{
    uint8_t t[8];
    for (int i = 0; i < n; i++)
        t[i] = (uint8_t)(v >> (8 * i));
    b_put(b, t, (size_t)n);
}

static void b_u8(buf *b, uint8_t v) { b_le(b, v, 1); }
static void b_u16(buf *b, uint16_t v) { b_le(b, v, 2); }
static void b_u32(buf *b, uint32_t v) { b_le(b, v, 4); }
static void b_u64(buf *b, uint64_t v) { b_le(b, v, 8); }
static void b_f32(buf *b, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    b_u32(b, u);
}
static void b_f64(buf *b, double f)
{
    uint64_t u;
    memcpy(&u, &f, 8);
    b_u64(b, u);
}
static void b_strn(buf *b, const void *s, size_t n)
{
    b_u64(b, n);
    b_put(b, s, n);
}
static void b_str(buf *b, const char *s) { b_strn(b, s, strlen(s)); }
static void b_zeros(buf *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        b_u8(b, 0);
}
static void b_pad(buf *b, size_t align) { b_zeros(b, (align - b->n % align) % align); }

static void b_hdr(buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    b_put(b, "GGUF", 4);
    b_u32(b, version);
    b_u64(b, n_tensors);
    b_u64(b, n_kv);
}
static void b_key(buf *b, const char *key, uint32_t type)
{
    b_str(b, key);
    b_u32(b, type);
}
static void kv_u32(buf *b, const char *key, uint32_t v)
{
    b_key(b, key, 4);
    b_u32(b, v);
}
static void kv_str(buf *b, const char *key, const char *v)
{
    b_key(b, key, 8);
    b_str(b, v);
}
static void b_tinfo(buf *b, const char *name, uint32_t nd, const int64_t *ne, uint32_t type,
                    uint64_t off)
{
    b_str(b, name);
    b_u32(b, nd);
    for (uint32_t d = 0; d < nd; d++)
        b_u64(b, (uint64_t)ne[d]);
    b_u32(b, type);
    b_u64(b, off);
}
static void b_data(buf *b, size_t n)
{
    b_pad(b, 32);
    for (size_t i = 0; i < n; i++)
        b_u8(b, (uint8_t)(i * 7 + 3));
}

/* Block size and bytes per block, from the GGUF spec (not from gguf.c). */
static const struct {
    int id;
    const char *name;
    int64_t block, size;
} spec_types[] = {
    {0, "F32", 1, 4},         {1, "F16", 1, 2},       {2, "Q4_0", 32, 18},
    {3, "Q4_1", 32, 20},      {6, "Q5_0", 32, 22},    {7, "Q5_1", 32, 24},
    {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 36},    {10, "Q2_K", 256, 84},
    {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144}, {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292}, {16, "IQ2_XXS", 256, 66},
    {17, "IQ2_XS", 256, 74},  {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},
    {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110}, {22, "IQ2_S", 256, 82},
    {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},       {25, "I16", 1, 2},
    {26, "I32", 1, 4},        {27, "I64", 1, 8},      {28, "F64", 1, 8},
    {29, "IQ1_M", 256, 56},   {30, "BF16", 1, 2},     {34, "TQ1_0", 256, 54},
    {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},
};
#define N_SPEC_TYPES (sizeof spec_types / sizeof spec_types[0])

static uint64_t spec_size(int type, const int64_t *ne, int nd)
{
    for (size_t k = 0; k < N_SPEC_TYPES; k++)
        if (spec_types[k].id == type) {
            int64_t n = 1;
            for (int d = 0; d < nd; d++)
                n *= ne[d];
            return (uint64_t)(n / spec_types[k].block * spec_types[k].size);
        }
    fail_msg("type %d not in the spec table", type);
    return 0;
}

/* ---- the reference file with every value type ---- */

static const int64_t ne_tok[2] = {4, 3};   /* F32: 48 bytes at 0 */
static const int64_t ne_q[1] = {64};       /* Q8_0: 68 bytes at 64 */
static const int64_t ne_k[4] = {2, 2, 2, 2}; /* F16: 32 bytes at 160, ends the file */
static const char *const arr_strs[3] = {"", "a", "\xc3\xbcn\xc3\xaf"};
#define UNI_KEY "\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87.\xc3\xbcn\xc3\xaf" /* ключ.ünï */

static void build_all_types(buf *b, uint32_t version)
{
    b_hdr(b, version, 3, 29);
    kv_str(b, "general.architecture", "llama");
    b_key(b, "t.u8", 0); b_u8(b, 200);
    b_key(b, "t.i8", 1); b_u8(b, (uint8_t)-100);
    b_key(b, "t.u16", 2); b_u16(b, 60000);
    b_key(b, "t.i16", 3); b_u16(b, (uint16_t)-30000);
    b_key(b, "t.u32", 4); b_u32(b, 4000000000u);
    b_key(b, "t.i32", 5); b_u32(b, (uint32_t)-2000000000);
    b_key(b, "t.f32", 6); b_f32(b, 1.5f);
    b_key(b, "t.bool", 7); b_u8(b, 1);
    b_key(b, "t.str", 8); b_strn(b, "hello\0world", 11);
    b_key(b, "t.u64", 10); b_u64(b, UINT64_MAX);
    b_key(b, "t.i64", 11); b_u64(b, (uint64_t)INT64_MIN);
    b_key(b, "t.f64", 12); b_f64(b, -2.5e300);
    b_key(b, "a.u8", 9); b_u32(b, 0); b_u64(b, 3); b_u8(b, 1); b_u8(b, 2); b_u8(b, 255);
    b_key(b, "a.i8", 9); b_u32(b, 1); b_u64(b, 2); b_u8(b, 0xff); b_u8(b, 127);
    b_key(b, "a.u16", 9); b_u32(b, 2); b_u64(b, 2); b_u16(b, 65535); b_u16(b, 7);
    b_key(b, "a.i16", 9); b_u32(b, 3); b_u64(b, 2); b_u16(b, (uint16_t)-32768); b_u16(b, 5);
    b_key(b, "a.u32", 9); b_u32(b, 4); b_u64(b, 2); b_u32(b, 0xffffffffu); b_u32(b, 9);
    b_key(b, "a.i32", 9); b_u32(b, 5); b_u64(b, 2); b_u32(b, (uint32_t)-7); b_u32(b, 11);
    b_key(b, "a.f32", 9); b_u32(b, 6); b_u64(b, 2); b_f32(b, 0.5f); b_f32(b, -1.0f);
    b_key(b, "a.bool", 9); b_u32(b, 7); b_u64(b, 3); b_u8(b, 1); b_u8(b, 0); b_u8(b, 1);
    b_key(b, "a.u64", 9); b_u32(b, 10); b_u64(b, 2); b_u64(b, UINT64_MAX); b_u64(b, 3);
    b_key(b, "a.i64", 9); b_u32(b, 11); b_u64(b, 2); b_u64(b, (uint64_t)-5); b_u64(b, 1ull << 40);
    b_key(b, "a.f64", 9); b_u32(b, 12); b_u64(b, 2); b_f64(b, 1e-300); b_f64(b, 42.0);
    b_key(b, "a.str", 9); b_u32(b, 8); b_u64(b, 3);
    for (int j = 0; j < 3; j++)
        b_str(b, arr_strs[j]);
    b_key(b, "a.empty", 9); b_u32(b, 4); b_u64(b, 0);
    /* [[1, 2], [3]] of uint16 */
    b_key(b, "a.nested", 9); b_u32(b, 9); b_u64(b, 2);
    b_u32(b, 2); b_u64(b, 2); b_u16(b, 1); b_u16(b, 2);
    b_u32(b, 2); b_u64(b, 1); b_u16(b, 3);
    /* [[["x", "yz"]]] */
    b_key(b, "a.nested_str", 9); b_u32(b, 9); b_u64(b, 1);
    b_u32(b, 9); b_u64(b, 1);
    b_u32(b, 8); b_u64(b, 2); b_str(b, "x"); b_str(b, "yz");
    kv_u32(b, UNI_KEY, 7);
    b_tinfo(b, "tok_embd.weight", 2, ne_tok, 0, 0);
    b_tinfo(b, "blk.0.attn_q.weight", 1, ne_q, 8, 64);
    b_tinfo(b, "blk.0.attn_k.weight", 4, ne_k, 1, 160);
    b_pad(b, 32);
    for (size_t i = 0; i < 192; i++)
        b_u8(b, (uint8_t)(i * 13 + 1));
}

static int64_t key_of(const exsa_gguf *g, const char *key)
{
    int64_t i = exsa_gguf_find_key(g, key);
    if (i < 0)
        fail_msg("key %s not found", key);
    assert_string_equal(exsa_gguf_kv_key(g, i), key);
    return i;
}

static int64_t geti(const exsa_gguf *g, const char *key)
{
    int64_t v = 0;
    assert_int_equal(exsa_gguf_kv_int(g, key_of(g, key), &v), EXSA_OK);
    return v;
}

static double getf(const exsa_gguf *g, const char *key)
{
    double v = 0;
    assert_int_equal(exsa_gguf_kv_float(g, key_of(g, key), &v), EXSA_OK);
    return v;
}

/* Checks every value of build_all_types() (also after a copy). */
static void check_all_types(const exsa_gguf *g, const uint8_t *ref_data)
{
    assert_int_equal(exsa_gguf_n_kv(g), 29);
    const char *s;
    size_t len;
    assert_int_equal(exsa_gguf_kv_str(g, key_of(g, "general.architecture"), &s, &len), 0);
    assert_int_equal(len, 5);
    assert_memory_equal(s, "llama", 5);
    assert_int_equal(exsa_gguf_kv_type(g, key_of(g, "t.u8")), EXSA_GGUF_UINT8);
    assert_int_equal(geti(g, "t.u8"), 200);
    assert_int_equal(geti(g, "t.i8"), -100);
    assert_int_equal(geti(g, "t.u16"), 60000);
    assert_int_equal(geti(g, "t.i16"), -30000);
    assert_int_equal(geti(g, "t.u32"), 4000000000ll);
    assert_int_equal(geti(g, "t.i32"), -2000000000ll);
    assert_true(getf(g, "t.f32") == 1.5);
    int bv = -1;
    assert_int_equal(exsa_gguf_kv_bool(g, key_of(g, "t.bool"), &bv), 0);
    assert_int_equal(bv, 1);
    assert_int_equal(exsa_gguf_kv_str(g, key_of(g, "t.str"), &s, &len), 0);
    assert_int_equal(len, 11);
    assert_memory_equal(s, "hello\0world", 11);
    uint64_t u = 0;
    assert_int_equal(exsa_gguf_kv_uint(g, key_of(g, "t.u64"), &u), 0);
    assert_true(u == UINT64_MAX);
    assert_true(geti(g, "t.i64") == INT64_MIN);
    assert_true(getf(g, "t.f64") == -2.5e300);
    assert_int_equal(exsa_gguf_kv_type(g, key_of(g, "t.f64")), EXSA_GGUF_FLOAT64);

    struct {
        const char *key;
        int type;
        uint64_t n;
        double v[3];
    } arrs[] = {
        {"a.u8", 0, 3, {1, 2, 255}},          {"a.i8", 1, 2, {-1, 127}},
        {"a.u16", 2, 2, {65535, 7}},          {"a.i16", 3, 2, {-32768, 5}},
        {"a.u32", 4, 2, {4294967295.0, 9}},   {"a.i32", 5, 2, {-7, 11}},
        {"a.f32", 6, 2, {0.5, -1.0}},         {"a.bool", 7, 3, {1, 0, 1}},
        {"a.u64", 10, 2, {18446744073709551615.0, 3}},
        {"a.i64", 11, 2, {-5, 1099511627776.0}}, {"a.f64", 12, 2, {1e-300, 42}},
        {"a.empty", 4, 0, {0}},
    };
    for (size_t k = 0; k < sizeof arrs / sizeof arrs[0]; k++) {
        int64_t i = key_of(g, arrs[k].key);
        assert_int_equal(exsa_gguf_kv_type(g, i), EXSA_GGUF_ARRAY);
        assert_int_equal(exsa_gguf_arr_type(g, i), arrs[k].type);
        assert_int_equal(exsa_gguf_arr_n(g, i), arrs[k].n);
        for (uint64_t j = 0; j < arrs[k].n; j++) {
            assert_true(exsa_gguf_arr_float(g, i, j) == arrs[k].v[j]);
            if (arrs[k].type != 6 && arrs[k].type != 12 && arrs[k].type != 10)
                assert_true(exsa_gguf_arr_int(g, i, j) == (int64_t)arrs[k].v[j]);
        }
        assert_non_null(exsa_gguf_arr_data(g, i));
    }
    /* u64 elements above INT64_MAX saturate in arr_int; floats truncate */
    assert_true(exsa_gguf_arr_int(g, key_of(g, "a.u64"), 0) == INT64_MAX);
    assert_int_equal(exsa_gguf_arr_int(g, key_of(g, "a.u64"), 1), 3);
    assert_int_equal(exsa_gguf_arr_int(g, key_of(g, "a.f32"), 1), -1);
    assert_int_equal(exsa_gguf_arr_int(g, key_of(g, "a.f64"), 1), 42);
    /* raw LE bytes of a u16 array */
    const uint8_t *raw = exsa_gguf_arr_data(g, key_of(g, "a.u16"));
    const uint8_t want_raw[4] = {0xff, 0xff, 7, 0};
    assert_memory_equal(raw, want_raw, 4);

    int64_t i = key_of(g, "a.str");
    assert_int_equal(exsa_gguf_arr_type(g, i), EXSA_GGUF_STRING);
    assert_int_equal(exsa_gguf_arr_n(g, i), 3);
    for (uint64_t j = 0; j < 3; j++) {
        s = exsa_gguf_arr_str(g, i, j, &len);
        assert_non_null(s);
        assert_int_equal(len, strlen(arr_strs[j]));
        assert_memory_equal(s, arr_strs[j], len);
    }
    assert_null(exsa_gguf_arr_str(g, i, 3, &len));
    assert_null(exsa_gguf_arr_data(g, i));

    i = key_of(g, "a.nested");
    assert_int_equal(exsa_gguf_arr_type(g, i), EXSA_GGUF_ARRAY);
    assert_int_equal(exsa_gguf_arr_n(g, i), 2);
    assert_null(exsa_gguf_arr_data(g, i));
    assert_null(exsa_gguf_arr_str(g, i, 0, &len));
    i = key_of(g, "a.nested_str");
    assert_int_equal(exsa_gguf_arr_type(g, i), EXSA_GGUF_ARRAY);
    assert_int_equal(exsa_gguf_arr_n(g, i), 1);
    assert_int_equal(geti(g, UNI_KEY), 7);

    assert_int_equal(exsa_gguf_n_tensors(g), 3);
    struct {
        const char *name;
        int type, nd;
        const int64_t *ne;
        uint64_t off, size;
    } ts[3] = {
        {"tok_embd.weight", 0, 2, ne_tok, 0, 48},
        {"blk.0.attn_q.weight", 8, 1, ne_q, 64, 68},
        {"blk.0.attn_k.weight", 1, 4, ne_k, 160, 32},
    };
    for (int k = 0; k < 3; k++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(g, k);
        assert_non_null(t);
        assert_ptr_equal(exsa_gguf_find_tensor(g, ts[k].name), t);
        assert_string_equal(t->name, ts[k].name);
        assert_int_equal(t->type, ts[k].type);
        assert_int_equal(t->n_dims, ts[k].nd);
        for (int d = 0; d < EXSA_GGUF_MAX_DIMS; d++)
            assert_int_equal(t->ne[d], d < ts[k].nd ? ts[k].ne[d] : 1);
        assert_int_equal(t->offset, ts[k].off);
        assert_int_equal(t->size, ts[k].size);
        assert_int_equal(t->size, spec_size(t->type, t->ne, t->n_dims));
        if (ref_data)
            assert_memory_equal(t->data, ref_data + t->offset, t->size);
    }
    assert_null(exsa_gguf_tensor_at(g, 3));
    assert_null(exsa_gguf_tensor_at(g, -1));
    assert_null(exsa_gguf_find_tensor(g, "nope"));
    assert_int_equal(exsa_gguf_find_key(g, "nope"), -1);
    assert_int_equal(exsa_gguf_alignment(g), 32);
    assert_int_equal(exsa_gguf_data_offset(g) % 32, 0);
}

static void test_read_v2_v3(void **state)
{
    (void)state;
    for (uint32_t v = 2; v <= 3; v++) {
        buf b = {0};
        build_all_types(&b, v);
        exsa_err err = {0};
        exsa_gguf *g = exsa_gguf_open_memory(b.p, b.n, &err);
        if (!g)
            fail_msg("v%u: %s", v, err.msg);
        assert_int_equal(exsa_gguf_version(g), v);
        assert_int_equal(exsa_gguf_file_size(g), b.n);
        /* the data section is the last 192 bytes; the last tensor ends the file */
        assert_int_equal(exsa_gguf_data_offset(g), b.n - 192);
        check_all_types(g, b.p + b.n - 192);
        exsa_gguf_close(g);
        free(b.p);
    }
}

/* ---- typed getters ---- */

static void test_getters(void **state)
{
    (void)state;
    buf b = {0};
    build_all_types(&b, 3);
    exsa_err err = {0};
    exsa_gguf *g = exsa_gguf_open_memory(b.p, b.n, &err);
    assert_non_null(g);
    int64_t v;
    uint64_t u;
    double d;
    int bv;
    const char *s;
    size_t len;

    /* conversions that do not fit */
    assert_int_equal(exsa_gguf_kv_int(g, key_of(g, "t.u64"), &v), EXSA_EFORMAT);
    assert_int_equal(exsa_gguf_get_int(g, "t.u64", &v, &err), EXSA_EFORMAT);
    assert_non_null(strstr(err.msg, "t.u64"));
    assert_non_null(strstr(err.msg, "18446744073709551615"));
    assert_int_equal(exsa_gguf_kv_uint(g, key_of(g, "t.i8"), &u), EXSA_EFORMAT);
    assert_int_equal(exsa_gguf_kv_uint(g, key_of(g, "t.i64"), &u), EXSA_EFORMAT);
    assert_int_equal(exsa_gguf_kv_uint(g, key_of(g, "t.u32"), &u), 0);
    assert_int_equal(u, 4000000000ull);
    /* bool converts to int; int does not convert to bool */
    assert_int_equal(exsa_gguf_get_int(g, "t.bool", &v, &err), 0);
    assert_int_equal(v, 1);
    assert_int_equal(exsa_gguf_kv_bool(g, key_of(g, "t.u8"), &bv), EXSA_EFORMAT);
    /* floats take integers */
    assert_int_equal(exsa_gguf_get_float(g, "t.i32", &d, &err), 0);
    assert_true(d == -2000000000.0);
    assert_int_equal(exsa_gguf_get_float(g, "t.f32", &d, &err), 0);
    assert_true(d == 1.5);

    /* wrong types name the key */
    memset(&err, 0, sizeof err);
    assert_int_equal(exsa_gguf_get_int(g, "t.str", &v, &err), EXSA_EFORMAT);
    assert_int_equal(err.code, EXSA_EFORMAT);
    assert_non_null(strstr(err.msg, "'t.str'"));
    assert_non_null(strstr(err.msg, "string"));
    assert_int_equal(exsa_gguf_get_int(g, "t.f32", &v, &err), EXSA_EFORMAT);
    assert_non_null(strstr(err.msg, "t.f32"));
    assert_int_equal(exsa_gguf_get_float(g, "a.f32", &d, &err), EXSA_EFORMAT);
    assert_non_null(strstr(err.msg, "a.f32"));
    assert_non_null(strstr(err.msg, "array"));
    assert_int_equal(exsa_gguf_get_bool(g, "t.u8", &bv, &err), EXSA_EFORMAT);
    assert_non_null(strstr(err.msg, "t.u8"));
    assert_int_equal(exsa_gguf_get_str(g, "t.u32", &s, &len, &err), EXSA_EFORMAT);
    assert_non_null(strstr(err.msg, "t.u32"));
    assert_int_equal(exsa_gguf_get_float(g, "t.str", &d, &err), EXSA_EFORMAT);
    assert_int_equal(exsa_gguf_get_float(g, "t.bool", &d, &err), EXSA_EFORMAT);

    /* missing keys */
    assert_int_equal(exsa_gguf_get_int(g, "no.such.key", &v, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "missing key"));
    assert_non_null(strstr(err.msg, "no.such.key"));
    assert_int_equal(exsa_gguf_get_str(g, "no.such.key", &s, &len, &err), EXSA_EINVAL);
    assert_int_equal(exsa_gguf_get_bool(g, "no.such.key", &bv, &err), EXSA_EINVAL);
    assert_int_equal(exsa_gguf_get_float(g, "no.such.key", &d, &err), EXSA_EINVAL);

    /* good by-name getters */
    assert_int_equal(exsa_gguf_get_str(g, "general.architecture", &s, &len, &err), 0);
    assert_int_equal(len, 5);
    assert_int_equal(exsa_gguf_get_bool(g, "t.bool", &bv, &err), 0);
    assert_int_equal(bv, 1);
    assert_int_equal(exsa_gguf_get_int(g, "t.i16", &v, &err), 0);
    assert_int_equal(v, -30000);

    /* indices out of range, arrays asked as scalars and back */
    assert_int_equal(exsa_gguf_kv_int(g, -1, &v), EXSA_EINVAL);
    assert_int_equal(exsa_gguf_kv_int(g, 30, &v), EXSA_EINVAL);
    assert_null(exsa_gguf_kv_key(g, 30));
    assert_int_equal(exsa_gguf_kv_type(g, 30), EXSA_EINVAL);
    assert_int_equal(exsa_gguf_kv_int(g, key_of(g, "a.u8"), &v), EXSA_EFORMAT);
    assert_int_equal(exsa_gguf_kv_str(g, key_of(g, "a.str"), &s, &len), EXSA_EFORMAT);
    assert_int_equal(exsa_gguf_arr_type(g, key_of(g, "t.u8")), EXSA_EFORMAT);
    assert_int_equal(exsa_gguf_arr_n(g, key_of(g, "t.u8")), 0);
    assert_null(exsa_gguf_arr_str(g, key_of(g, "a.u8"), 0, &len));
    assert_int_equal(exsa_gguf_arr_int(g, key_of(g, "a.u8"), 3), 0); /* j out of range */
    assert_int_equal(exsa_gguf_arr_int(g, key_of(g, "a.str"), 0), 0);
    exsa_gguf_close(g);
    free(b.p);
}

/* ---- writer ---- */

static char *tmp_path(void)
{
    char *p = strdup("/tmp/exsa_test_gguf_XXXXXX");
    assert_non_null(p);
    int fd = mkstemp(p);
    assert_true(fd >= 0);
    close(fd);
    return p;
}

static void fill_random(uint8_t *p, size_t n, uint64_t *rng)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)exsa_test_rand_u64(rng);
}

/* Writer output compared byte for byte with the hand encoder. */
static void test_writer_bytes(void **state)
{
    (void)state;
    exsa_err err = {0};
    exsa_gguf_writer *w = exsa_gguf_writer_create(&err);
    assert_non_null(w);
    assert_int_equal(exsa_gguf_writer_set_str(w, "general.name", "w"), 0);
    assert_int_equal(exsa_gguf_writer_set_u32(w, "x.n", 4), 0);
    const uint8_t a8[3] = {1, 2, 3};
    assert_int_equal(exsa_gguf_writer_set_arr(w, "x.a", EXSA_GGUF_UINT8, a8, 3), 0);
    assert_int_equal(exsa_gguf_writer_set_u32(w, "x.n", 5), 0); /* replaces, keeps place */
    assert_int_equal(exsa_gguf_writer_set_str(w, "x.gone", "bye"), 0);
    assert_int_equal(exsa_gguf_writer_remove_key(w, "x.gone"), 0);
    assert_int_equal(exsa_gguf_writer_remove_key(w, "x.never"), 0);
    const int64_t ne_a[1] = {3}, ne_b[2] = {32, 1};
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "a", 0, 1, ne_a, &err), 0);
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "b", 8, 2, ne_b, &err), 0);
    char *path = tmp_path();
    assert_int_equal(exsa_gguf_writer_begin(w, path, &err), 0);
    uint8_t da[12], db[34];
    for (int i = 0; i < 12; i++)
        da[i] = (uint8_t)(0xa0 + i);
    for (int i = 0; i < 34; i++)
        db[i] = (uint8_t)(0x10 + i);
    assert_int_equal(exsa_gguf_writer_write_tensor(w, da, 12, &err), 0);
    assert_int_equal(exsa_gguf_writer_write_tensor(w, db, 34, &err), 0);
    assert_int_equal(exsa_gguf_writer_finish(w, &err), 0);
    exsa_gguf_writer_free(w);

    buf b = {0};
    b_hdr(&b, 3, 2, 3);
    kv_str(&b, "general.name", "w");
    kv_u32(&b, "x.n", 5);
    b_key(&b, "x.a", 9);
    b_u32(&b, 0);
    b_u64(&b, 3);
    b_put(&b, a8, 3);
    b_tinfo(&b, "a", 1, ne_a, 0, 0);
    b_tinfo(&b, "b", 2, ne_b, 8, 32);
    b_pad(&b, 32);
    b_put(&b, da, 12);
    b_pad(&b, 32);
    b_put(&b, db, 34);
    b_pad(&b, 32);

    size_t n;
    uint8_t *got = exsa_test_read_file(path, &n);
    assert_non_null(got);
    assert_int_equal(n, b.n);
    assert_memory_equal(got, b.p, n);
    free(got);
    free(b.p);
    unlink(path);
    free(path);
}

static void test_writer_roundtrip(void **state)
{
    (void)state;
    for (int pass = 0; pass < 2; pass++) {
        uint32_t align = pass ? 64 : 32;
        exsa_err err = {0};
        exsa_gguf_writer *w = exsa_gguf_writer_create(&err);
        assert_non_null(w);
        if (pass)
            assert_int_equal(exsa_gguf_writer_set_u32(w, "general.alignment", 64), 0);
        assert_int_equal(exsa_gguf_writer_set_u32(w, "w.u32", 0xdeadbeefu), 0);
        assert_int_equal(exsa_gguf_writer_set_i32(w, "w.i32", -123456), 0);
        assert_int_equal(exsa_gguf_writer_set_u64(w, "w.u64", UINT64_MAX - 1), 0);
        assert_int_equal(exsa_gguf_writer_set_f32(w, "w.f32", -3.25f), 0);
        assert_int_equal(exsa_gguf_writer_set_bool(w, "w.true", 1), 0);
        assert_int_equal(exsa_gguf_writer_set_bool(w, "w.false", 0), 0);
        assert_int_equal(exsa_gguf_writer_set_str(w, "w.empty", ""), 0);
        assert_int_equal(exsa_gguf_writer_set_str(w, UNI_KEY, "h\xc3\xa9llo \xe2\x9c\x93"), 0);
        /* a key set twice keeps the last value and type */
        assert_int_equal(exsa_gguf_writer_set_u32(w, "w.twice", 1), 0);
        assert_int_equal(exsa_gguf_writer_set_str(w, "w.twice", "second"), 0);
        /* arrays of each scalar type: element bytes 0..n*size-1 */
        static const int elem_size[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
        uint8_t raw[40];
        for (int et = 0; et < 13; et++) {
            if (!elem_size[et])
                continue;
            char key[32];
            snprintf(key, sizeof key, "w.arr.%d", et);
            for (int k = 0; k < 40; k++)
                raw[k] = et == EXSA_GGUF_BOOL ? (uint8_t)(k % 2) : (uint8_t)(k * 3 + et);
            if (et == EXSA_GGUF_FLOAT32) {
                float f[5] = {1.0f, -2.5f, 0.0f, 1e30f, -1e-30f};
                memcpy(raw, f, sizeof f);
            }
            if (et == EXSA_GGUF_FLOAT64) {
                double f[5] = {1.0, -2.5, 0.0, 1e300, -1e-300};
                memcpy(raw, f, sizeof f);
            }
            assert_int_equal(exsa_gguf_writer_set_arr(w, key, et, raw, 5), 0);
        }
        assert_int_equal(exsa_gguf_writer_set_arr(w, "w.arr.none", EXSA_GGUF_INT32, NULL, 0), 0);
        const char *strs[4] = {"alpha", "", "\xe2\x9c\x93", "a longer string with spaces"};
        assert_int_equal(exsa_gguf_writer_set_arr_str(w, "w.strs", strs, 4), 0);
        /* bad calls */
        assert_int_equal(exsa_gguf_writer_set_arr(w, "w.bad", EXSA_GGUF_STRING, raw, 1),
                         EXSA_EINVAL);
        assert_int_equal(exsa_gguf_writer_set_arr(w, "w.bad", 13, raw, 1), EXSA_EINVAL);
        const uint8_t bad_bool[2] = {1, 2};
        assert_int_equal(exsa_gguf_writer_set_arr(w, "w.bad", EXSA_GGUF_BOOL, bad_bool, 2),
                         EXSA_EINVAL);
        assert_int_equal(exsa_gguf_writer_set_u32(w, "", 1), EXSA_EINVAL);
        assert_int_equal(exsa_gguf_writer_set_u32(w, NULL, 1), EXSA_EINVAL);
        assert_int_equal(exsa_gguf_writer_set_str(w, "w.bad", NULL), EXSA_EINVAL);

        struct {
            const char *name;
            int type, nd;
            int64_t ne[4];
        } ts[] = {
            {"t.f32", 0, 1, {7}},          {"t.f16", 1, 2, {5, 3}},
            {"t.q4_0", 2, 2, {64, 2}},     {"t.q8_0", 8, 3, {32, 1, 3}},
            {"t.q4_k", 12, 2, {256, 2}},   {"t.bf16", 30, 4, {3, 2, 2, 2}},
            {"t.i8", 24, 1, {33}},         {"t.q6_k", 14, 1, {512}},
            {"t.mxfp4", 39, 2, {32, 3}},
        };
        const int nt = (int)(sizeof ts / sizeof ts[0]);
        uint8_t *data[16];
        uint64_t sizes[16];
        uint64_t rng = 1234 + (uint64_t)pass;
        for (int k = 0; k < nt; k++) {
            assert_int_equal(exsa_gguf_writer_add_tensor(w, ts[k].name, ts[k].type, ts[k].nd,
                                                         ts[k].ne, &err), 0);
            sizes[k] = spec_size(ts[k].type, ts[k].ne, ts[k].nd);
            data[k] = malloc(sizes[k]);
            fill_random(data[k], sizes[k], &rng);
        }
        char *path = tmp_path();
        assert_int_equal(exsa_gguf_writer_begin(w, path, &err), 0);
        for (int k = 0; k < nt; k++)
            assert_int_equal(exsa_gguf_writer_write_tensor(w, data[k], sizes[k], &err), 0);
        assert_int_equal(exsa_gguf_writer_finish(w, &err), 0);
        exsa_gguf_writer_free(w);

        exsa_gguf *g = exsa_gguf_open(path, &err);
        if (!g)
            fail_msg("%s", err.msg);
        assert_int_equal(exsa_gguf_version(g), 3);
        assert_int_equal(exsa_gguf_alignment(g), align);
        assert_int_equal(exsa_gguf_data_offset(g) % align, 0);
        assert_int_equal(exsa_gguf_n_kv(g), 9 + 11 + 2 + (pass ? 1 : 0));
        if (pass)
            assert_int_equal(geti(g, "general.alignment"), 64);
        assert_int_equal(geti(g, "w.u32"), 0xdeadbeefll);
        assert_int_equal(exsa_gguf_kv_type(g, key_of(g, "w.u32")), EXSA_GGUF_UINT32);
        assert_int_equal(geti(g, "w.i32"), -123456);
        assert_int_equal(exsa_gguf_kv_type(g, key_of(g, "w.i32")), EXSA_GGUF_INT32);
        uint64_t u;
        assert_int_equal(exsa_gguf_kv_uint(g, key_of(g, "w.u64"), &u), 0);
        assert_true(u == UINT64_MAX - 1);
        assert_true(getf(g, "w.f32") == -3.25);
        assert_int_equal(exsa_gguf_kv_type(g, key_of(g, "w.f32")), EXSA_GGUF_FLOAT32);
        int bv;
        assert_int_equal(exsa_gguf_kv_bool(g, key_of(g, "w.true"), &bv), 0);
        assert_int_equal(bv, 1);
        assert_int_equal(exsa_gguf_kv_bool(g, key_of(g, "w.false"), &bv), 0);
        assert_int_equal(bv, 0);
        const char *s;
        size_t len;
        assert_int_equal(exsa_gguf_kv_str(g, key_of(g, "w.empty"), &s, &len), 0);
        assert_int_equal(len, 0);
        assert_int_equal(exsa_gguf_kv_str(g, key_of(g, UNI_KEY), &s, &len), 0);
        assert_int_equal(len, strlen("h\xc3\xa9llo \xe2\x9c\x93"));
        assert_memory_equal(s, "h\xc3\xa9llo \xe2\x9c\x93", len);
        assert_int_equal(exsa_gguf_kv_str(g, key_of(g, "w.twice"), &s, &len), 0);
        assert_int_equal(len, 6);
        assert_memory_equal(s, "second", 6);
        for (int et = 0; et < 13; et++) {
            if (!elem_size[et])
                continue;
            char key[32];
            snprintf(key, sizeof key, "w.arr.%d", et);
            int64_t i = key_of(g, key);
            assert_int_equal(exsa_gguf_arr_type(g, i), et);
            assert_int_equal(exsa_gguf_arr_n(g, i), 5);
            const uint8_t *p = exsa_gguf_arr_data(g, i);
            assert_non_null(p);
            for (int k = 0; k < 5 * elem_size[et]; k++) {
                uint8_t want = et == EXSA_GGUF_BOOL ? (uint8_t)(k % 2) : (uint8_t)(k * 3 + et);
                if (et != EXSA_GGUF_FLOAT32 && et != EXSA_GGUF_FLOAT64)
                    assert_int_equal(p[k], want);
            }
            if (et == EXSA_GGUF_FLOAT32) {
                assert_true(exsa_gguf_arr_float(g, i, 1) == -2.5);
                assert_true(exsa_gguf_arr_float(g, i, 3) == (double)1e30f);
            }
            if (et == EXSA_GGUF_FLOAT64)
                assert_true(exsa_gguf_arr_float(g, i, 4) == -1e-300);
        }
        /* LE decoding of the element values, computed here from the bytes */
        assert_int_equal(exsa_gguf_arr_int(g, key_of(g, "w.arr.2"), 1),
                         (2 * 3 + 2) + 256 * (3 * 3 + 2));
        assert_int_equal(exsa_gguf_arr_int(g, key_of(g, "w.arr.1"), 4), 4 * 3 + 1);
        assert_int_equal(exsa_gguf_arr_n(g, key_of(g, "w.arr.none")), 0);
        int64_t si = key_of(g, "w.strs");
        assert_int_equal(exsa_gguf_arr_n(g, si), 4);
        for (uint64_t j = 0; j < 4; j++) {
            s = exsa_gguf_arr_str(g, si, j, &len);
            assert_int_equal(len, strlen(strs[j]));
            assert_memory_equal(s, strs[j], len);
        }
        assert_int_equal(exsa_gguf_find_key(g, "w.bad"), -1);

        assert_int_equal(exsa_gguf_n_tensors(g), nt);
        uint64_t end = 0;
        for (int k = 0; k < nt; k++) {
            const exsa_gguf_tensor *t = exsa_gguf_tensor_at(g, k);
            assert_string_equal(t->name, ts[k].name);
            assert_ptr_equal(exsa_gguf_find_tensor(g, ts[k].name), t);
            assert_int_equal(t->type, ts[k].type);
            assert_int_equal(t->n_dims, ts[k].nd);
            for (int d = 0; d < 4; d++)
                assert_int_equal(t->ne[d], d < ts[k].nd ? ts[k].ne[d] : 1);
            assert_int_equal(t->size, sizes[k]);
            assert_int_equal(t->offset % align, 0);
            assert_int_equal((uintptr_t)t->data % align, 0); /* mmap is page aligned */
            assert_true(t->offset >= end); /* in order, no overlap */
            end = t->offset + t->size;
            assert_memory_equal(t->data, data[k], sizes[k]);
            free(data[k]);
        }
        /* the file ends with the last tensor padded to the alignment */
        assert_int_equal(exsa_gguf_file_size(g),
                         exsa_gguf_data_offset(g) + (end + align - 1) / align * align);
        exsa_gguf_close(g);
        unlink(path);
        free(path);
    }
}

/* copy_kv: every value of the all-types file (nested arrays included) copied
 * through a writer reads back with the same bytes. */
static void test_copy_kv(void **state)
{
    (void)state;
    buf b = {0};
    build_all_types(&b, 2);
    exsa_err err = {0};
    exsa_gguf *src = exsa_gguf_open_memory(b.p, b.n, &err);
    assert_non_null(src);
    exsa_gguf_writer *w = exsa_gguf_writer_create(&err);
    assert_non_null(w);
    /* a key already present is replaced by the copy (type changes too) */
    assert_int_equal(exsa_gguf_writer_set_str(w, "a.nested", "placeholder"), 0);
    for (int64_t i = 0; i < exsa_gguf_n_kv(src); i++)
        assert_int_equal(exsa_gguf_writer_copy_kv(w, src, i), 0);
    assert_int_equal(exsa_gguf_writer_copy_kv(w, src, 30), EXSA_EINVAL);
    assert_int_equal(exsa_gguf_writer_copy_kv(w, src, -1), EXSA_EINVAL);
    for (int64_t k = 0; k < exsa_gguf_n_tensors(src); k++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(src, k);
        assert_int_equal(
            exsa_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, &err), 0);
    }
    char *path = tmp_path();
    assert_int_equal(exsa_gguf_writer_begin(w, path, &err), 0);
    for (int64_t k = 0; k < exsa_gguf_n_tensors(src); k++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(src, k);
        assert_int_equal(exsa_gguf_writer_write_tensor(w, t->data, t->size, &err), 0);
    }
    assert_int_equal(exsa_gguf_writer_finish(w, &err), 0);
    exsa_gguf_writer_free(w);

    exsa_gguf *g = exsa_gguf_open(path, &err);
    if (!g)
        fail_msg("%s", err.msg);
    assert_int_equal(exsa_gguf_version(g), 3);
    /* a.nested moved to the front (it was set first) */
    assert_string_equal(exsa_gguf_kv_key(g, 0), "a.nested");
    check_all_types(g, b.p + b.n - 192);
    for (int64_t i = 0; i < exsa_gguf_n_kv(src); i++) {
        const char *key = exsa_gguf_kv_key(src, i);
        int64_t j = key_of(g, key);
        assert_int_equal(exsa_gguf_kv_type(g, j), exsa_gguf_kv_type(src, i));
        uint64_t n1, n2;
        const void *r1 = exsa_gguf_kv_raw(src, i, &n1);
        const void *r2 = exsa_gguf_kv_raw(g, j, &n2);
        assert_int_equal(n1, n2);
        assert_memory_equal(r1, r2, n1);
    }
    /* the nested value's bytes, as encoded by hand above */
    buf nb = {0};
    b_u32(&nb, 9); b_u64(&nb, 2);
    b_u32(&nb, 2); b_u64(&nb, 2); b_u16(&nb, 1); b_u16(&nb, 2);
    b_u32(&nb, 2); b_u64(&nb, 1); b_u16(&nb, 3);
    uint64_t rn;
    const void *r = exsa_gguf_kv_raw(g, key_of(g, "a.nested"), &rn);
    assert_int_equal(rn, nb.n);
    assert_memory_equal(r, nb.p, nb.n);
    free(nb.p);
    exsa_gguf_close(g);
    exsa_gguf_close(src);
    unlink(path);
    free(path);
    free(b.p);
}

static void test_writer_errors(void **state)
{
    (void)state;
    exsa_err err = {0};
    exsa_gguf_writer *w = exsa_gguf_writer_create(&err);
    const int64_t ne[4] = {32, 2, 1, 1}, ne_bad[2] = {48, 1}, ne_zero[2] = {32, 0};
    uint8_t data[256] = {0};

    /* bad order: data before begin, finish before begin */
    assert_int_equal(exsa_gguf_writer_write_tensor(w, data, 128, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "before begin"));
    assert_int_equal(exsa_gguf_writer_finish(w, &err), EXSA_EINVAL);
    /* bad tensors */
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "q", 2, 2, ne_bad, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "block size"));
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "q", 4, 2, ne, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "type 4"));
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "q", 0, 5, ne, &err), EXSA_EINVAL);
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "q", 0, 0, ne, &err), EXSA_EINVAL);
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "q", 0, 2, ne_zero, &err), EXSA_EINVAL);
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "", 0, 2, ne, &err), EXSA_EINVAL);
    char longname[300];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(exsa_gguf_writer_add_tensor(w, longname, 0, 2, ne, &err), EXSA_EINVAL);
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "q", 0, 2, ne, &err), 0); /* 256 bytes */
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "q", 0, 2, ne, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "duplicate"));
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "r", 1, 1, ne, &err), 0); /* 64 bytes */

    /* bad alignment values are refused at begin */
    assert_int_equal(exsa_gguf_writer_set_u32(w, "general.alignment", 48), 0);
    char *path = tmp_path();
    assert_int_equal(exsa_gguf_writer_begin(w, path, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "general.alignment"));
    assert_int_equal(exsa_gguf_writer_set_u64(w, "general.alignment", 64), 0);
    assert_int_equal(exsa_gguf_writer_begin(w, path, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "uint32"));
    assert_int_equal(exsa_gguf_writer_remove_key(w, "general.alignment"), 0);
    /* unwritable path */
    assert_int_equal(exsa_gguf_writer_begin(w, "/nonexistent-dir/x.gguf", &err), EXSA_EIO);
    assert_non_null(strstr(err.msg, "/nonexistent-dir/x.gguf"));

    assert_int_equal(exsa_gguf_writer_begin(w, path, &err), 0);
    assert_int_equal(exsa_gguf_writer_begin(w, path, &err), EXSA_EINVAL);
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "s", 0, 2, ne, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "after begin"));
    assert_int_equal(exsa_gguf_writer_set_u32(w, "late", 1), EXSA_EINVAL);
    /* wrong size */
    assert_int_equal(exsa_gguf_writer_write_tensor(w, data, 255, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "'q'"));
    assert_non_null(strstr(err.msg, "256"));
    assert_int_equal(exsa_gguf_writer_write_tensor(w, data, 256, &err), 0);
    assert_int_equal(exsa_gguf_writer_finish(w, &err), EXSA_EINVAL); /* 'r' missing */
    assert_non_null(strstr(err.msg, "'r'"));
    assert_int_equal(exsa_gguf_writer_write_tensor(w, data, 64, &err), 0);
    assert_int_equal(exsa_gguf_writer_write_tensor(w, data, 64, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "already written"));
    assert_int_equal(exsa_gguf_writer_finish(w, &err), 0);
    assert_int_equal(exsa_gguf_writer_finish(w, &err), EXSA_EINVAL);
    exsa_gguf_writer_free(w);
    exsa_gguf *g = exsa_gguf_open(path, &err);
    assert_non_null(g);
    assert_int_equal(exsa_gguf_n_tensors(g), 2);
    exsa_gguf_close(g);

    /* an unfinished writer: free closes the file; the reader rejects it */
    w = exsa_gguf_writer_create(&err);
    assert_int_equal(exsa_gguf_writer_add_tensor(w, "q", 0, 2, ne, &err), 0);
    assert_int_equal(exsa_gguf_writer_begin(w, path, &err), 0);
    exsa_gguf_writer_free(w);
    assert_null(exsa_gguf_open(path, &err));
    assert_int_equal(err.code, EXSA_EFORMAT);
    unlink(path);
    free(path);

    /* a full device: the error shows by finish at the latest */
    if (access("/dev/full", W_OK) == 0) {
        w = exsa_gguf_writer_create(&err);
        assert_int_equal(exsa_gguf_writer_add_tensor(w, "q", 0, 2, ne, &err), 0);
        int rc = exsa_gguf_writer_begin(w, "/dev/full", &err);
        if (rc == 0)
            rc = exsa_gguf_writer_write_tensor(w, data, 256, &err);
        if (rc == 0)
            rc = exsa_gguf_writer_finish(w, &err);
        assert_int_equal(rc, EXSA_EIO);
        assert_non_null(strstr(err.msg, "/dev/full"));
        /* later calls keep failing */
        assert_int_equal(exsa_gguf_writer_finish(w, &err), EXSA_EIO);
        exsa_gguf_writer_free(w);
    }
}

/* ---- open errors ---- */

static void test_open_errors(void **state)
{
    (void)state;
    exsa_err err = {0};
    const char *missing = "/tmp/exsa-no-such-dir/model.gguf";
    assert_null(exsa_gguf_open(missing, &err));
    assert_int_equal(err.code, EXSA_EIO);
    assert_non_null(strstr(err.msg, missing));
    assert_null(exsa_gguf_open("/tmp", &err));
    assert_int_equal(err.code, EXSA_EIO);
    assert_non_null(strstr(err.msg, "/tmp"));
    char *path = tmp_path(); /* empty file */
    assert_null(exsa_gguf_open(path, &err));
    assert_int_equal(err.code, EXSA_EFORMAT);
    assert_non_null(strstr(err.msg, "empty"));
    /* a malformed file on disk goes through the same checks */
    buf b = {0};
    build_all_types(&b, 1);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b.p, 1, b.n, f), b.n);
    fclose(f);
    assert_null(exsa_gguf_open(path, &err));
    assert_int_equal(err.code, EXSA_EFORMAT);
    assert_non_null(strstr(err.msg, "version 1"));
    unlink(path);
    free(path);
    free(b.p);
    assert_null(exsa_gguf_open_memory(NULL, 10, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
    assert_null(exsa_gguf_open_memory(NULL, 0, &err));
    assert_int_equal(err.code, EXSA_EFORMAT);
}

/* ---- type table ---- */

static void test_type_table(void **state)
{
    (void)state;
    int known[64] = {0};
    for (size_t k = 0; k < N_SPEC_TYPES; k++) {
        int64_t bs = 0, ts = 0;
        assert_int_equal(exsa_gguf_type_size(spec_types[k].id, &bs, &ts), 0);
        assert_int_equal(bs, spec_types[k].block);
        assert_int_equal(ts, spec_types[k].size);
        assert_string_equal(exsa_gguf_type_name(spec_types[k].id), spec_types[k].name);
        known[spec_types[k].id] = 1;
    }
    for (int id = -1; id < 64; id++) {
        if (id >= 0 && known[id])
            continue;
        int64_t bs, ts;
        assert_int_equal(exsa_gguf_type_size(id, &bs, &ts), EXSA_EFORMAT);
        assert_null(exsa_gguf_type_name(id));
    }
    assert_string_equal(exsa_gguf_vtype_name(EXSA_GGUF_UINT32), "uint32");
    assert_string_equal(exsa_gguf_vtype_name(EXSA_GGUF_FLOAT64), "float64");
    assert_null(exsa_gguf_vtype_name(13));
}

/* ---- malformed corpus ---- */

/* Opens an exact-size heap copy (so ASan sees any overread). */
static exsa_gguf *open_copy(const uint8_t *p, size_t n, exsa_err *err, void **keep)
{
    void *c = malloc(n ? n : 1);
    assert_non_null(c);
    if (n)
        memcpy(c, p, n);
    *keep = c;
    return exsa_gguf_open_memory(c, n, err);
}

/* Every byte of every value and tensor, so ASan checks what parse() allowed. */
static uint64_t walk(const exsa_gguf *g)
{
    uint64_t h = 0;
    for (int64_t i = 0; i < exsa_gguf_n_kv(g); i++) {
        const char *key = exsa_gguf_kv_key(g, i);
        h += strlen(key);
        assert_int_equal(exsa_gguf_find_key(g, key), i);
        int64_t v;
        uint64_t u;
        double d;
        int bv;
        const char *s;
        size_t len;
        if (exsa_gguf_kv_int(g, i, &v) == 0) h += (uint64_t)v;
        if (exsa_gguf_kv_uint(g, i, &u) == 0) h += u;
        if (exsa_gguf_kv_float(g, i, &d) == 0) h += d == d;
        if (exsa_gguf_kv_bool(g, i, &bv) == 0) h += (uint64_t)bv;
        if (exsa_gguf_kv_str(g, i, &s, &len) == 0)
            for (size_t k = 0; k < len; k++)
                h += (uint8_t)s[k];
        uint64_t rn;
        const uint8_t *raw = exsa_gguf_kv_raw(g, i, &rn);
        for (uint64_t k = 0; k < rn; k++)
            h += raw[k];
        if (exsa_gguf_kv_type(g, i) != EXSA_GGUF_ARRAY)
            continue;
        uint64_t n = exsa_gguf_arr_n(g, i);
        int at = exsa_gguf_arr_type(g, i);
        for (uint64_t j = 0; j < n; j++) {
            if (at == EXSA_GGUF_STRING) {
                s = exsa_gguf_arr_str(g, i, j, &len);
                assert_non_null(s);
                for (size_t k = 0; k < len; k++)
                    h += (uint8_t)s[k];
            } else if (at != EXSA_GGUF_ARRAY) {
                h += (uint64_t)exsa_gguf_arr_int(g, i, j);
                h += exsa_gguf_arr_float(g, i, j) > 0;
            }
        }
    }
    for (int64_t k = 0; k < exsa_gguf_n_tensors(g); k++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(g, k);
        assert_ptr_equal(exsa_gguf_find_tensor(g, t->name), t);
        assert_true(t->size > 0);
        const uint8_t *p = t->data;
        h += p[0] + p[t->size - 1];
    }
    return h;
}

static void test_truncations(void **state)
{
    (void)state;
    buf b = {0};
    build_all_types(&b, 3);
    for (size_t n = 0; n < b.n; n++) {
        exsa_err err = {0};
        void *keep;
        exsa_gguf *g = open_copy(b.p, n, &err, &keep);
        if (g)
            fail_msg("prefix of %zu of %zu bytes accepted", n, b.n);
        assert_int_equal(err.code, EXSA_EFORMAT);
        assert_true(strlen(err.msg) > 10);
        assert_non_null(strstr(err.msg, "gguf: "));
        free(keep);
    }
    exsa_err err = {0};
    void *keep;
    exsa_gguf *g = open_copy(b.p, b.n, &err, &keep);
    assert_non_null(g);
    walk(g);
    exsa_gguf_close(g);
    free(keep);
    free(b.p);
}

/* Header, one string kv, one F32 [8] tensor at offset 0: a valid base. */
static void base_tensor_file(buf *b, const char *name, uint32_t nd, const int64_t *ne,
                             uint32_t type, uint64_t off, size_t data)
{
    b_hdr(b, 3, 1, 1);
    kv_str(b, "general.name", "m");
    b_tinfo(b, name, nd, ne, type, off);
    b_data(b, data);
}

/* Builds malformed file number idx; returns 0 past the last one. *expect is a
 * phrase the message must contain (NULL: any non-empty message). */
static int make_case(int idx, buf *b, const char **expect)
{
    const int64_t ne8[1] = {8};
    *expect = NULL;
    switch (idx) {
    case 0: /* bad magic */
        b_put(b, "GGUX", 4); b_u32(b, 3); b_u64(b, 0); b_u64(b, 0);
        *expect = "magic"; return 1;
    case 1: /* too short for the magic */
        b_put(b, "GGU", 3); *expect = "too small"; return 1;
    case 2: b_hdr(b, 0, 0, 0); *expect = "version 0"; return 1;
    case 3: b_hdr(b, 1, 0, 0); *expect = "version 1"; return 1;
    case 4: b_hdr(b, 4, 0, 0); *expect = "version 4"; return 1;
    case 5: b_hdr(b, 0x03000000u, 0, 0); *expect = "big-endian"; return 1;
    case 6: b_hdr(b, 3, 1ull << 63, 0); b_zeros(b, 64); *expect = "n_tensors"; return 1;
    case 7: b_hdr(b, 3, 1ull << 40, 0); b_zeros(b, 64);
        *expect = "n_tensors 1099511627776"; return 1;
    case 8: b_hdr(b, 3, 0, 1ull << 63); b_zeros(b, 64); *expect = "n_kv"; return 1;
    case 9: b_hdr(b, 3, 0, 1ull << 40); b_zeros(b, 64); *expect = "n_kv 1099511627776"; return 1;
    case 10: /* key length 2^64-1 */
        b_hdr(b, 3, 0, 1); b_u64(b, UINT64_MAX); b_zeros(b, 16);
        *expect = "key #0 at offset 24: key string length 18446744073709551615 exceeds file";
        return 1;
    case 11: b_hdr(b, 3, 0, 1); b_u64(b, 1ull << 40); b_zeros(b, 16);
        *expect = "exceeds file"; return 1;
    case 12: /* key longer than the rest of the file by one byte */
        b_hdr(b, 3, 0, 1); b_u64(b, 9); b_put(b, "abcdefgh", 8);
        *expect = "key string length 9"; return 1;
    case 13: b_hdr(b, 3, 0, 1); kv_u32(b, "", 1); *expect = "empty key"; return 1;
    case 14: /* key with NUL */
        b_hdr(b, 3, 0, 1); b_strn(b, "ab\0cd", 5); b_u32(b, 4); b_u32(b, 1);
        *expect = "NUL"; return 1;
    case 15: b_hdr(b, 3, 0, 2); kv_u32(b, "a.b", 1); kv_u32(b, "a.b", 2);
        *expect = "duplicate key 'a.b'"; return 1;
    case 16: b_hdr(b, 3, 0, 1); b_key(b, "k.t", 13); b_u32(b, 0);
        *expect = "key 'k.t' at offset 35: unknown value type 13"; return 1;
    case 17: b_hdr(b, 3, 0, 1); b_key(b, "k.t", 0xffffffffu); b_u32(b, 0);
        *expect = "unknown value type 4294967295"; return 1;
    case 18: b_hdr(b, 3, 0, 1); b_key(b, "k.bool", 7); b_u8(b, 2);
        *expect = "bool value 2"; return 1;
    case 19: /* string value length absurd */
        b_hdr(b, 3, 0, 1); b_key(b, "k.s", 8); b_u64(b, 1ull << 62); b_zeros(b, 8);
        *expect = "'k.s' at offset 39: string length 4611686018427387904 exceeds file"; return 1;
    case 20: /* string value one byte longer than the file */
        b_hdr(b, 3, 0, 1); b_key(b, "k.s", 8); b_u64(b, 6); b_put(b, "hello", 5);
        *expect = "string length 6"; return 1;
    case 21: /* array of 2^62 uint32 */
        b_hdr(b, 3, 0, 1); b_key(b, "k.a", 9); b_u32(b, 4); b_u64(b, 1ull << 62); b_zeros(b, 16);
        *expect = "array of 4611686018427387904 uint32"; return 1;
    case 22: /* array of 2^40 strings */
        b_hdr(b, 3, 0, 1); b_key(b, "k.a", 9); b_u32(b, 8); b_u64(b, 1ull << 40); b_zeros(b, 16);
        *expect = "exceeds file"; return 1;
    case 23: /* array with one element too many for the file */
        b_hdr(b, 3, 0, 1); b_key(b, "k.a", 9); b_u32(b, 2); b_u64(b, 3); b_u16(b, 1); b_u16(b, 2);
        *expect = "array of 3 uint16"; return 1;
    case 24: b_hdr(b, 3, 0, 1); b_key(b, "k.a", 9); b_u32(b, 13); b_u64(b, 1); b_u32(b, 0);
        *expect = "unknown array element type 13"; return 1;
    case 25: /* 9 nested arrays */
        b_hdr(b, 3, 0, 1); b_key(b, "k.deep", 9);
        for (int d = 0; d < 9; d++) {
            b_u32(b, 9);
            b_u64(b, 1);
        }
        b_u32(b, 0); b_u64(b, 0);
        *expect = "nested deeper"; return 1;
    case 26: /* bool array with a 5 at element 2 */
        b_hdr(b, 3, 0, 1); b_key(b, "k.b", 9); b_u32(b, 7); b_u64(b, 4);
        b_u8(b, 1); b_u8(b, 0); b_u8(b, 5); b_u8(b, 1);
        *expect = "'k.b' element[2] at offset 53: bool value 5"; return 1;
    case 27: /* string array whose element 1 runs past the end */
        b_hdr(b, 3, 0, 1); b_key(b, "k.s", 9); b_u32(b, 8); b_u64(b, 2);
        b_str(b, "ok"); b_u64(b, 100); b_zeros(b, 4);
        *expect = "'k.s' element[1]"; return 1;
    case 28: /* bad value inside a nested array */
        b_hdr(b, 3, 0, 1); b_key(b, "k.n", 9); b_u32(b, 9); b_u64(b, 2);
        b_u32(b, 7); b_u64(b, 1); b_u8(b, 1);
        b_u32(b, 7); b_u64(b, 1); b_u8(b, 9);
        *expect = "element[1][0]"; return 1;
    case 29: b_hdr(b, 3, 0, 1); kv_u32(b, "general.alignment", 0);
        *expect = "not a nonzero power of two"; return 1;
    case 30: b_hdr(b, 3, 0, 1); kv_u32(b, "general.alignment", 48);
        *expect = "value 48 is not a nonzero power of two"; return 1;
    case 31: b_hdr(b, 3, 0, 1); b_key(b, "general.alignment", 10); b_u64(b, 32);
        *expect = "'general.alignment' at offset 49: type uint64, expected uint32"; return 1;
    case 32: b_hdr(b, 3, 0, 1); kv_str(b, "general.alignment", "32");
        *expect = "expected uint32"; return 1;
    case 33: base_tensor_file(b, "t", 0, ne8, 0, 0, 32); *expect = "n_dims 0"; return 1;
    case 34: { const int64_t ne[5] = {8, 1, 1, 1, 1};
        base_tensor_file(b, "t", 5, ne, 0, 0, 32); *expect = "n_dims 5"; return 1; }
    case 35: { const int64_t ne[2] = {8, 0};
        base_tensor_file(b, "t", 2, ne, 0, 0, 32); *expect = "tensor 't' at offset"; return 1; }
    case 36: { const int64_t ne[2] = {8, -3};
        base_tensor_file(b, "t", 2, ne, 0, 0, 32); *expect = "ne[1] is negative (-3)"; return 1; }
    case 37: { const int64_t ne[2] = {INT64_MIN, 1};
        base_tensor_file(b, "t", 2, ne, 0, 0, 32); *expect = "negative"; return 1; }
    case 38: { const int64_t ne[3] = {1ll << 32, 1ll << 31, 2};
        base_tensor_file(b, "t", 3, ne, 0, 0, 32); *expect = "overflows"; return 1; }
    case 39: { const int64_t ne[1] = {48};
        base_tensor_file(b, "t", 1, ne, 2, 0, 32); *expect = "block size 32"; return 1; }
    case 40: { const int64_t ne[1] = {1ll << 61}; /* F64: 2^61 elements * 8 bytes overflows */
        base_tensor_file(b, "t", 1, ne, 28, 0, 32);
        *expect = "size of 2305843009213693952"; return 1; }
    case 41: base_tensor_file(b, "t", 1, ne8, 40, 0, 32);
        *expect = "unknown ggml type 40"; return 1;
    case 42: base_tensor_file(b, "t", 1, ne8, 0xffffffffu, 0, 32);
        *expect = "unknown ggml type"; return 1;
    case 43: base_tensor_file(b, "t", 1, ne8, 4, 0, 32); *expect = "removed"; return 1;
    case 44: base_tensor_file(b, "t", 1, ne8, 31, 0, 32); *expect = "type 31 (Q4_0_4_4)"; return 1;
    case 45: base_tensor_file(b, "t", 1, ne8, 0, 4, 64); *expect = "alignment"; return 1;
    case 46: base_tensor_file(b, "blk.3.ffn_up.weight", 1, ne8, 0, 1024, 32);
        *expect = "tensor 'blk.3.ffn_up.weight': data offset 1024"; return 1;
    case 47: base_tensor_file(b, "t", 1, ne8, 0, 1ull << 63, 32);
        *expect = "beyond end of file"; return 1;
    case 48: base_tensor_file(b, "t", 1, ne8, 0, 0, 31); *expect = "size 32"; return 1;
    case 49: /* file ends before its data section */
        b_hdr(b, 3, 1, 0); b_tinfo(b, "t", 1, ne8, 0, 0); *expect = "beyond end of file"; return 1;
    case 50: { /* overlapping tensors: [0,64) and [32,96) */
        const int64_t ne16[1] = {16};
        b_hdr(b, 3, 2, 0); b_tinfo(b, "a", 1, ne16, 0, 0); b_tinfo(b, "b", 1, ne16, 0, 32);
        b_data(b, 128); *expect = "overlap"; return 1; }
    case 51: { /* same offset */
        b_hdr(b, 3, 2, 0); b_tinfo(b, "a", 1, ne8, 0, 0); b_tinfo(b, "b", 1, ne8, 0, 0);
        b_data(b, 64); *expect = "overlap"; return 1; }
    case 52:
        b_hdr(b, 3, 2, 0); b_tinfo(b, "w", 1, ne8, 0, 0); b_tinfo(b, "w", 1, ne8, 0, 32);
        b_data(b, 64); *expect = "duplicate tensor name 'w'"; return 1;
    case 53: { char name[301];
        memset(name, 'n', 300); name[300] = '\0';
        base_tensor_file(b, name, 1, ne8, 0, 0, 32);
        *expect = "name length 300 exceeds the limit"; return 1; }
    case 54: /* tensor name length absurd */
        b_hdr(b, 3, 1, 0); b_u64(b, 1ull << 62); b_zeros(b, 40);
        *expect = "tensor #0 at offset 24: name length 4611686018427387904"; return 1;
    case 55: base_tensor_file(b, "", 1, ne8, 0, 0, 32); *expect = "empty tensor name"; return 1;
    case 56: /* tensor name with NUL */
        b_hdr(b, 3, 1, 0); b_strn(b, "a\0b", 3); b_u32(b, 1); b_u64(b, 8); b_u32(b, 0); b_u64(b, 0);
        b_data(b, 32); *expect = "NUL"; return 1;
    case 57: /* n_tensors says 2 but one info follows: the second is cut off */
        b_hdr(b, 3, 2, 0); b_tinfo(b, "t", 1, ne8, 0, 0); b_zeros(b, 40);
        *expect = "tensor #1"; return 1;
    case 58: /* n_tensors can't fit after the key/values */
        b_hdr(b, 3, 3, 1); kv_str(b, "general.name", "0123456789012345678901234567890123456789"
                                                     "0123456789012345678901234567890123456789");
        b_zeros(b, 40); *expect = "after the key/values"; return 1;
    case 59: /* scalar value cut off */
        b_hdr(b, 3, 0, 1); b_key(b, "k.u64", 10); b_u32(b, 7);
        *expect = "uint64 value truncated"; return 1;
    case 60: /* array header cut off */
        b_hdr(b, 3, 0, 1); b_key(b, "k.arr", 9); b_u32(b, 4); b_u32(b, 0);
        *expect = "array header truncated"; return 1;
    case 61: { /* alignment 64, tensor at 32 */
        b_hdr(b, 3, 1, 1); kv_u32(b, "general.alignment", 64); b_tinfo(b, "t", 1, ne8, 0, 32);
        b_pad(b, 64); b_zeros(b, 128); *expect = "multiple of the alignment 64"; return 1; }
    case 62: /* n_kv says 1 and nothing follows */
        b_hdr(b, 3, 0, 1); *expect = "n_kv 1 cannot fit"; return 1;
    case 63: /* key length field cut off */
        b_hdr(b, 3, 0, 2);
        kv_str(b, "a", "0123456789012345678901234567890123456789");
        b_zeros(b, 5);
        *expect = "key #1 at offset 85: key string length truncated"; return 1;
    default: return 0;
    }
}

static void test_malformed_corpus(void **state)
{
    (void)state;
    int n = 0, with_phrase = 0;
    for (int idx = 0;; idx++) {
        buf b = {0};
        const char *expect;
        if (!make_case(idx, &b, &expect)) {
            free(b.p);
            break;
        }
        exsa_err err = {0};
        void *keep;
        exsa_gguf *g = open_copy(b.p, b.n, &err, &keep);
        if (g)
            fail_msg("case %d accepted", idx);
        if (err.code != EXSA_EFORMAT)
            fail_msg("case %d: code %d (%s)", idx, err.code, err.msg);
        assert_true(strlen(err.msg) > 10);
        if (expect) {
            with_phrase++;
            if (!strstr(err.msg, expect))
                fail_msg("case %d: message \"%s\" lacks \"%s\"", idx, err.msg, expect);
        }
        n++;
        free(keep);
        free(b.p);
    }
    assert_true(n >= 45);
    assert_true(with_phrase >= 40);
    /* the same base files with the fault removed are accepted */
    const int64_t ne8[1] = {8};
    buf b = {0};
    base_tensor_file(&b, "blk.3.ffn_up.weight", 1, ne8, 0, 0, 32);
    exsa_err err = {0};
    void *keep;
    exsa_gguf *g = open_copy(b.p, b.n, &err, &keep);
    if (!g)
        fail_msg("%s", err.msg);
    assert_int_equal(exsa_gguf_tensor_at(g, 0)->size, 32);
    exsa_gguf_close(g);
    free(keep);
    free(b.p);
}

static void test_bit_flips(void **state)
{
    (void)state;
    buf b = {0};
    build_all_types(&b, 3);
    uint64_t rng = 0x5eed;
    int parsed = 0, rejected = 0;
    uint8_t *m = malloc(b.n);
    for (int it = 0; it < 600; it++) {
        memcpy(m, b.p, b.n);
        int flips = 1 + (int)(exsa_test_rand_u64(&rng) % 3);
        for (int f = 0; f < flips; f++) {
            /* mostly in the metadata (before the 192 data bytes), where parsing happens */
            uint64_t r = exsa_test_rand_u64(&rng);
            size_t pos = (size_t)(r % (it % 4 ? b.n - 192 : b.n));
            m[pos] ^= (uint8_t)(1u << ((r >> 32) % 8));
        }
        exsa_err err = {0};
        void *keep;
        exsa_gguf *g = open_copy(m, b.n, &err, &keep);
        if (g) {
            parsed++;
            walk(g);
            exsa_gguf_close(g);
        } else {
            rejected++;
            assert_int_equal(err.code, EXSA_EFORMAT);
            assert_true(strlen(err.msg) > 10);
        }
        free(keep);
    }
    /* both outcomes must occur, or the corpus is not exercising anything */
    assert_true(parsed > 0);
    assert_true(rejected > 100);
    free(m);
    free(b.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_table),
        cmocka_unit_test(test_read_v2_v3),
        cmocka_unit_test(test_getters),
        cmocka_unit_test(test_writer_bytes),
        cmocka_unit_test(test_writer_roundtrip),
        cmocka_unit_test(test_copy_kv),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_truncations),
        cmocka_unit_test(test_malformed_corpus),
        cmocka_unit_test(test_bit_flips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
