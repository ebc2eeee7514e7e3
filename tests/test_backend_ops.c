/* CPU backend ops against naive double-precision references written here.
 *
 * The whole suite runs three times: with 1 and 3 threads on the best kernel
 * table for this CPU, and (in a forked child, so EXSA_CPU is set before the
 * kernel table is first chosen) with 3 threads and EXSA_CPU=scalar.
 *
 * Tolerances:
 * - float paths: per element 1e-5 relative for rms_norm, softmax, swiglu;
 *   rel L2 1e-5 for matmul with F32/F16 weights, and with BF16 weights
 *   against the activations rounded to BF16 as the kernels take them (5e-3
 *   against the float ones: bf16 rounding alone gives ~1.7e-3), and for
 *   attention against the values the cache holds (all float rounding
 *   only); rope
 *   5e-3 absolute (float angles at positions ~4000, see check_rope);
 * - matmul with activations quantized to Q8_0 / Q8_K (all quantized weight
 *   types): rel L2 1.5e-2 against the float activations (activation
 *   quantization alone contributes 5e-3 to 8.5e-3 for normal rows), and
 *   1e-3 against the activations quantized by the reference quantizer and
 *   decoded (what is left is float rounding and SIMD quantizers rounding a
 *   rare tie differently);
 * - attention against the original float K/V: rel L2 F16 2e-3, Q8_0 1e-2;
 * - add, add_bias, scale: exact (one correctly rounded float op each);
 * - batch invariance of matmul (row r of an n-row call vs the same row
 *   alone), per element relative to max(1, |y|): 1e-6 for quantized weights,
 *   1e-5 for float weights (float sums reordered by SIMD accumulator splits).
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
#include <sys/wait.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_repack.h"
#include "quant/quant.h"
#include "test_util.h"

static exsa_backend *B;
static int g_threads;
static uint64_t g_rng;

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static void fill_normal(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * exsa_test_rand_normal(&g_rng);
}

static void fill_uniform(float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * exsa_test_rand_uniform(&g_rng);
}

/* |got - ref| <= atol + rtol * |ref| for every element. */
static void check_close(const char *what, const float *got, const double *ref, size_t n,
                        double rtol, double atol)
{
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        if (!(err <= atol + rtol * fabs(ref[i]))) {
            fail_msg("%s: element %zu: got %.9g, want %.9g (threads %d)", what, i, (double)got[i],
                     ref[i], g_threads);
        }
    }
}

static double rel_l2_d(const float *got, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Keeps the first failure message; tests that own heap buffers report it
 * after freeing them, so a failure does not also show up as a leak. */
static void note_fail(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void note_fail(char *buf, size_t size, const char *fmt, ...)
{
    if (buf[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

/* ---- independent decoders (format facts, written again here) ------------ */

static float half_to_float(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 0)
        v = ldexp(m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp(m + 1024, e - 25);
    return (float)((h >> 15) ? -v : v);
}

static void decode_q8_0(const void *src, double *y, int n)
{
    const exsa_block_q8_0 *b = src;
    for (int i = 0; i < n / 32; i++) {
        double d = half_to_float(b[i].d);
        for (int j = 0; j < 32; j++)
            y[i * 32 + j] = d * b[i].qs[j];
    }
}

static void decode_q4_0(const void *src, double *y, int n)
{
    const exsa_block_q4_0 *b = src;
    for (int i = 0; i < n / 32; i++) {
        double d = half_to_float(b[i].d);
        for (int j = 0; j < 16; j++) {
            y[i * 32 + j] = d * ((b[i].qs[j] & 0x0F) - 8);
            y[i * 32 + j + 16] = d * ((b[i].qs[j] >> 4) - 8);
        }
    }
}

static void decode_q4_1(const void *src, double *y, int n)
{
    const exsa_block_q4_1 *b = src;
    for (int i = 0; i < n / 32; i++) {
        double d = half_to_float(b[i].d), m = half_to_float(b[i].m);
        for (int j = 0; j < 16; j++) {
            y[i * 32 + j] = d * (b[i].qs[j] & 0x0F) + m;
            y[i * 32 + j + 16] = d * (b[i].qs[j] >> 4) + m;
        }
    }
}

/* Q5_0 (d, qh, qs; value d * (q - 16)) and Q5_1 (d, m, qh, qs; d * q + m):
 * the fifth bit of element i is bit i of the little-endian qh word. */
static void decode_q5(const void *src, int has_min, double *y, int n)
{
    const uint8_t *p = src;
    const size_t bytes = has_min ? 24 : 22;
    for (int i = 0; i < n / 32; i++, p += bytes) {
        uint16_t dh, mh = 0;
        memcpy(&dh, p, 2);
        if (has_min)
            memcpy(&mh, p + 2, 2);
        const double d = half_to_float(dh), m = half_to_float(mh);
        const uint8_t *qh = p + 2 + 2 * has_min, *qs = qh + 4;
        const uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 |
                           (uint32_t)qh[3] << 24;
        for (int j = 0; j < 32; j++) {
            int q = (j < 16 ? qs[j] & 0x0F : qs[j - 16] >> 4) | (int)((h >> j) & 1) << 4;
            y[i * 32 + j] = has_min ? d * q + m : d * (q - 16);
        }
    }
}

static void k4_scale_min(int j, const uint8_t *q, int *sc, int *mn)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

static void decode_q4_K(const void *src, double *y, int n)
{
    const exsa_block_q4_K *b = src;
    for (int i = 0; i < n / 256; i++) {
        double d = half_to_float(b[i].d), dmin = half_to_float(b[i].dmin);
        for (int g = 0; g < 4; g++) {
            int sc1, m1, sc2, m2;
            k4_scale_min(2 * g, b[i].scales, &sc1, &m1);
            k4_scale_min(2 * g + 1, b[i].scales, &sc2, &m2);
            const uint8_t *q = b[i].qs + 32 * g;
            double *o = y + i * 256 + 64 * g;
            for (int l = 0; l < 32; l++) {
                o[l] = d * sc1 * (q[l] & 15) - dmin * m1;
                o[32 + l] = d * sc2 * (q[l] >> 4) - dmin * m2;
            }
        }
    }
}

static void decode_row(int type, const void *src, double *y, int n)
{
    switch (type) {
    case EXSA_TYPE_F32:
        for (int i = 0; i < n; i++)
            y[i] = ((const float *)src)[i];
        break;
    case EXSA_TYPE_F16:
        for (int i = 0; i < n; i++)
            y[i] = half_to_float(((const uint16_t *)src)[i]);
        break;
    case EXSA_TYPE_Q8_0:
        decode_q8_0(src, y, n);
        break;
    case EXSA_TYPE_Q4_K:
        decode_q4_K(src, y, n);
        break;
    case EXSA_TYPE_Q4_0:
        decode_q4_0(src, y, n);
        break;
    case EXSA_TYPE_Q4_1:
        decode_q4_1(src, y, n);
        break;
    case EXSA_TYPE_Q5_0:
    case EXSA_TYPE_Q5_1:
        decode_q5(src, type == EXSA_TYPE_Q5_1, y, n);
        break;
    default:
        fail_msg("no test decoder for type %d", type);
    }
}

/* Quantizes n_out rows of n_in floats with the reference quantizer. */
static void *make_weights(int type, const float *src, int n_in, int n_out, size_t *row_bytes)
{
    const exsa_type_traits *tr = exsa_type_traits_get(type);
    assert_non_null(tr);
    *row_bytes = exsa_type_row_size(type, n_in);
    assert_true(*row_bytes > 0);
    char *data = xmalloc(*row_bytes * (size_t)n_out);
    for (int o = 0; o < n_out; o++)
        tr->from_float(src + (size_t)o * n_in, data + (size_t)o * *row_bytes, n_in);
    return data;
}

/* ---- setup ------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    exsa_err err = {0};
    B = exsa_backend_cpu_create(g_threads, &err);
    if (!B) {
        fprintf(stderr, "backend: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    exsa_backend_free(B);
    B = NULL;
    return 0;
}

static void test_describe_alloc(void **state)
{
    (void)state;
    const char *d = exsa_backend_describe(B);
    char want[32];
    snprintf(want, sizeof want, " x%d", g_threads);
    assert_non_null(strstr(d, "cpu"));
    assert_non_null(strstr(d, want));
    const char *env = getenv("EXSA_CPU");
    if (env && strcmp(env, "scalar") == 0)
        assert_non_null(strstr(d, "scalar"));

    size_t sizes[] = {0, 1, 63, 64, 1000, 1 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *p = B->ops->alloc(B, sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 64, 0);
        for (size_t j = 0; j < sizes[i]; j++)
            assert_int_equal(p[j], 0);
        B->ops->free(B, p);
    }

    /* n_threads <= 0 picks the physical core count. */
    exsa_backend *b2 = exsa_backend_cpu_create(0, NULL);
    assert_non_null(b2);
    assert_non_null(strstr(exsa_backend_describe(b2), " x"));
    exsa_backend_free(b2);
    exsa_backend_free(NULL);
}

/* ---- get_rows ------------------------------------------------------------------ */

/* Tests run with weights in GGUF's row layout, then (g_repack = 1) in the
 * CPU backend's repacked layout where it has one for the type and shape. */
static int g_repack;

static void *maybe_repack(exsa_tensor *t)
{
    void *buf = NULL;
    if (g_repack) {
        assert_int_equal(exsa_cpu_repack(t, &buf, NULL), 0);
        /* Q4_0 / Q4_K with whole groups of 8 rows must take the repacked path. */
        if (t->type == EXSA_TYPE_Q4_0 && t->n_out % 8 == 0)
            assert_int_equal(t->layout, EXSA_LAYOUT_Q4_0X8);
        if (t->type == EXSA_TYPE_Q4_K && t->n_out % 8 == 0)
            assert_int_equal(t->layout, EXSA_LAYOUT_Q4_KX8);
        if (t->type == EXSA_TYPE_Q4_1 && t->n_out % 8 == 0)
            assert_int_equal(t->layout, EXSA_LAYOUT_Q4_1X8);
        if ((t->type == EXSA_TYPE_F32 || t->type == EXSA_TYPE_F16 ||
             t->type == EXSA_TYPE_BF16) && t->n_out % 8 == 0)
            assert_int_equal(t->layout, EXSA_LAYOUT_FX8);
        if (t->type == EXSA_TYPE_Q5_0 && t->n_out % 8 == 0)
            assert_int_equal(t->layout, EXSA_LAYOUT_Q5_0X8);
        if (t->type == EXSA_TYPE_Q5_1 && t->n_out % 8 == 0)
            assert_int_equal(t->layout, EXSA_LAYOUT_Q5_1X8);
        if (t->type == EXSA_TYPE_Q8_0 && t->n_out % 8 == 0)
            assert_int_equal(t->layout, EXSA_LAYOUT_Q8_0X8);
        if (t->type == EXSA_TYPE_Q6_K && t->n_out % 8 == 0)
            assert_int_equal(t->layout, EXSA_LAYOUT_Q6_KX8);
    }
    return buf;
}

static void check_get_rows(int type, double src_tol, int n_out)
{
    const int n_in = 256, n_ids = 200;
    float *src = xmalloc(sizeof(float) * n_in * n_out);
    fill_normal(src, (size_t)n_in * n_out, 1.0f);
    size_t rb;
    void *data = make_weights(type, src, n_in, n_out, &rb);
    exsa_tensor t = {"emb", type, n_in, n_out, rb, data, EXSA_LAYOUT_ROWS};
    void *rbuf = maybe_repack(&t);

    int32_t ids[200];
    for (int i = 0; i < n_ids; i++)
        ids[i] = (int32_t)(exsa_test_rand_u64(&g_rng) % n_out);
    ids[0] = 3;
    ids[1] = 0;
    ids[2] = n_out - 1;
    ids[3] = 3;
    ids[4] = -1;    /* out of range: zeros */
    ids[5] = n_out; /* out of range: zeros */

    float *out = xmalloc(sizeof(float) * n_in * n_ids);
    /* 200 x 256 values: enough to take the parallel path. */
    B->ops->get_rows(B, &t, ids, n_ids, out);
    double *ref = xmalloc(sizeof(double) * n_in);
    for (int i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= n_out) {
            for (int j = 0; j < n_in; j++)
                ref[j] = 0;
        } else {
            decode_row(type, (const char *)data + (size_t)ids[i] * rb, ref, n_in);
            /* The decoders above must also reproduce the source data. */
            assert_true(rel_l2_d(src + (size_t)ids[i] * n_in, ref, n_in) <= src_tol);
        }
        check_close(exsa_type_traits_get(type)->name, out + (size_t)i * n_in, ref, n_in, 1e-6,
                    1e-6);
    }
    free(ref);
    free(out);
    free(rbuf);
    free(data);
    free(src);
}

static void test_get_rows(void **state)
{
    (void)state;
    check_get_rows(EXSA_TYPE_F32, 0, 11);
    check_get_rows(EXSA_TYPE_F16, 1e-3, 11);
    check_get_rows(EXSA_TYPE_Q8_0, 1e-2, 11);
    check_get_rows(EXSA_TYPE_Q4_K, 0.15, 11);
    check_get_rows(EXSA_TYPE_Q4_0, 0.15, 11);
    g_repack = 1;
    check_get_rows(EXSA_TYPE_Q4_0, 0.15, 16);
    check_get_rows(EXSA_TYPE_Q4_K, 0.15, 16);
    check_get_rows(EXSA_TYPE_Q4_1, 0.15, 16);
    check_get_rows(EXSA_TYPE_Q5_0, 0.1, 16);
    check_get_rows(EXSA_TYPE_Q5_1, 0.1, 16);
    check_get_rows(EXSA_TYPE_Q8_0, 1e-2, 16);
    check_get_rows(EXSA_TYPE_F32, 0, 16);
    check_get_rows(EXSA_TYPE_F16, 1e-3, 24);
    g_repack = 0;
}

/* Repacking is lossless: every row read back from the repacked layout is
 * the GGUF row byte for byte, for arbitrary bytes (every bit of Q4_K's
 * packed 6-bit scales and mins, any f16 pattern), and the layouts decline
 * shapes they cannot hold. */
static void check_repack_lossless(int type, int n_in, int n_out, int want_layout)
{
    size_t rb = exsa_type_row_size(type, n_in);
    unsigned char *data = xmalloc(rb * (size_t)n_out);
    for (size_t i = 0; i < rb * (size_t)n_out; i++)
        data[i] = (unsigned char)exsa_test_rand_u64(&g_rng);
    if (type == EXSA_TYPE_Q8_0) {
        /* Q8_0X8 holds -127..127 (kernels.h): a -128 anywhere keeps the
         * row layout, so the layout case has none and the other has one */
        exsa_block_q8_0 *blk = (exsa_block_q8_0 *)data;
        const size_t n_blk = rb * (size_t)n_out / sizeof *blk;
        for (size_t b = 0; b < n_blk; b++)
            for (int i = 0; i < 32; i++)
                if (blk[b].qs[i] == INT8_MIN)
                    blk[b].qs[i] = INT8_MIN + 1;
        if (want_layout == EXSA_LAYOUT_ROWS)
            blk[n_blk - 1].qs[31] = INT8_MIN;
    }
    exsa_tensor t = {"w", type, n_in, n_out, rb, data, EXSA_LAYOUT_ROWS};
    void *buf = NULL;
    assert_int_equal(exsa_cpu_repack(&t, &buf, NULL), 0);
    assert_int_equal(t.layout, want_layout);
    if (want_layout == EXSA_LAYOUT_ROWS) {
        assert_null(buf);
        assert_ptr_equal(t.data, data);
    } else {
        assert_non_null(buf);
        assert_ptr_equal(t.data, buf);
        unsigned char *row = xmalloc(rb);
        for (int r = 0; r < n_out; r++) {
            exsa_cpu_repacked_row(&t, r, row);
            if (memcmp(row, data + (size_t)r * rb, rb) != 0)
                fail_msg("repack %s %dx%d: row %d differs after the round trip",
                         exsa_type_traits_get(type)->name, n_out, n_in, r);
        }
        free(row);
    }
    free(buf);
    free(data);
}

static void test_repack_lossless(void **state)
{
    (void)state;
    check_repack_lossless(EXSA_TYPE_Q4_0, 96, 16, EXSA_LAYOUT_Q4_0X8);
    check_repack_lossless(EXSA_TYPE_Q4_1, 96, 16, EXSA_LAYOUT_Q4_1X8);
    check_repack_lossless(EXSA_TYPE_Q5_0, 96, 16, EXSA_LAYOUT_Q5_0X8);
    check_repack_lossless(EXSA_TYPE_Q8_0, 160, 24, EXSA_LAYOUT_Q8_0X8);
    check_repack_lossless(EXSA_TYPE_Q8_0, 160, 24, EXSA_LAYOUT_ROWS); /* holds a -128 */
    check_repack_lossless(EXSA_TYPE_F16, 37, 16, EXSA_LAYOUT_FX8);
    check_repack_lossless(EXSA_TYPE_F32, 5, 8, EXSA_LAYOUT_FX8);
    check_repack_lossless(EXSA_TYPE_Q5_1, 160, 24, EXSA_LAYOUT_Q5_1X8);
    check_repack_lossless(EXSA_TYPE_Q4_K, 768, 24, EXSA_LAYOUT_Q4_KX8);
    check_repack_lossless(EXSA_TYPE_Q4_K, 256, 8, EXSA_LAYOUT_Q4_KX8);
    check_repack_lossless(EXSA_TYPE_Q4_K, 256, 12, EXSA_LAYOUT_ROWS); /* n_out % 8 */
    check_repack_lossless(EXSA_TYPE_Q6_K, 768, 24, EXSA_LAYOUT_Q6_KX8);
    check_repack_lossless(EXSA_TYPE_Q6_K, 256, 12, EXSA_LAYOUT_ROWS); /* n_out % 8 */
    check_repack_lossless(EXSA_TYPE_Q5_K, 256, 8, EXSA_LAYOUT_ROWS);  /* no layout */
    check_repack_lossless(EXSA_TYPE_BF16, 38, 16, EXSA_LAYOUT_FX8);    /* in pairs */
    check_repack_lossless(EXSA_TYPE_BF16, 37, 16, EXSA_LAYOUT_ROWS);   /* odd n_in */
    /* Over 4 MB: packed by several threads (cpu_repack.c), each on its own
     * groups; the Q8_0 -128 sits in the last group, a helper thread's. */
    check_repack_lossless(EXSA_TYPE_Q4_0, 4096, 2048, EXSA_LAYOUT_Q4_0X8);
    check_repack_lossless(EXSA_TYPE_Q4_1, 4096, 2048, EXSA_LAYOUT_Q4_1X8);
    check_repack_lossless(EXSA_TYPE_Q5_0, 4096, 2048, EXSA_LAYOUT_Q5_0X8);
    check_repack_lossless(EXSA_TYPE_Q5_1, 4096, 1536, EXSA_LAYOUT_Q5_1X8);
    check_repack_lossless(EXSA_TYPE_Q8_0, 4096, 1032, EXSA_LAYOUT_Q8_0X8);
    check_repack_lossless(EXSA_TYPE_Q8_0, 4096, 1032, EXSA_LAYOUT_ROWS);
    check_repack_lossless(EXSA_TYPE_Q4_K, 4096, 2048, EXSA_LAYOUT_Q4_KX8);
    check_repack_lossless(EXSA_TYPE_Q6_K, 4096, 2048, EXSA_LAYOUT_Q6_KX8);
    check_repack_lossless(EXSA_TYPE_F16, 2048, 1088, EXSA_LAYOUT_FX8);
    check_repack_lossless(EXSA_TYPE_BF16, 2048, 1088, EXSA_LAYOUT_FX8);
    check_repack_lossless(EXSA_TYPE_F32, 1024, 1088, EXSA_LAYOUT_FX8);
    /* EXSA_REPACK=0 turns repacking off. */
    setenv("EXSA_REPACK", "0", 1);
    check_repack_lossless(EXSA_TYPE_Q4_K, 256, 8, EXSA_LAYOUT_ROWS);
    unsetenv("EXSA_REPACK");
}

/* ---- rms_norm ---------------------------------------------------------------- */

static void test_rms_norm(void **state)
{
    (void)state;
    static const int dims[] = {1, 7, 33, 1000};
    static const int rows[] = {1, 3, 40};
    const float eps = 1e-5f;
    for (size_t di = 0; di < 4; di++) {
        for (size_t ri = 0; ri < 3; ri++) {
            int dim = dims[di], nr = rows[ri];
            size_t n = (size_t)dim * nr;
            float *x = xmalloc(n * sizeof *x), *y = xmalloc(n * sizeof *y);
            float *w = xmalloc((size_t)dim * sizeof *w);
            double *ref = xmalloc(n * sizeof *ref), *refw = xmalloc(n * sizeof *refw);
            fill_normal(x, n, 2.0f);
            fill_uniform(w, dim, 0.5f, 1.5f);
            for (int r = 0; r < nr; r++) {
                double ss = 0;
                for (int i = 0; i < dim; i++)
                    ss += (double)x[r * dim + i] * x[r * dim + i];
                double s = 1.0 / sqrt(ss / dim + eps);
                for (int i = 0; i < dim; i++) {
                    ref[r * dim + i] = x[r * dim + i] * s;
                    refw[r * dim + i] = x[r * dim + i] * s * w[i];
                }
            }
            B->ops->rms_norm(B, x, NULL, y, nr, dim, eps);
            check_close("rms_norm", y, ref, n, 1e-5, 1e-7);
            B->ops->rms_norm(B, x, w, y, nr, dim, eps);
            check_close("rms_norm weighted", y, refw, n, 1e-5, 1e-7);
            B->ops->rms_norm(B, x, w, x, nr, dim, eps); /* in place */
            check_close("rms_norm in place", x, refw, n, 1e-5, 1e-7);
            free(x);
            free(y);
            free(w);
            free(ref);
            free(refw);
        }
    }
}

/* ---- matmul -------------------------------------------------------------------- */

/* invariance = 0: accuracy of one-row and batched calls against the double
 * references; 1: each row of a batched call against the same row alone. */
static void check_matmul(int type, int n_in, int n_out, int invariance)
{
    const exsa_type_traits *tr = exsa_type_traits_get(type);
    assert_non_null(tr);
    /* F32 / F16 weights take the float rows; BF16 weights BF16 rows, whose
     * rounding is exact to undo, so float rounding is all that is left. */
    int float_path = type == EXSA_TYPE_F32 || type == EXSA_TYPE_F16;
    int bf16 = type == EXSA_TYPE_BF16;
    double tol = float_path ? 1e-5 : bf16 ? 5e-3 : 1.5e-2;
    double tol_q = float_path || bf16 ? 1e-5 : 1e-3;
    const int max_rows = 70;
    char fail[512] = ""; /* first failure, reported after the buffers are freed */

    float *wsrc = xmalloc(sizeof(float) * n_in * n_out);
    fill_normal(wsrc, (size_t)n_in * n_out, 0.5f);
    size_t rb;
    void *data = make_weights(type, wsrc, n_in, n_out, &rb);
    exsa_tensor t = {"w", type, n_in, n_out, rb, data, EXSA_LAYOUT_ROWS};
    void *rbuf = maybe_repack(&t);
    /* Dequantized weights: the reference multiplies exactly these values. */
    float *wd = xmalloc(sizeof(float) * n_in * n_out);
    for (int o = 0; o < n_out; o++)
        tr->to_float((const char *)data + (size_t)o * rb, wd + (size_t)o * n_in, n_in);

    float *x = xmalloc(sizeof(float) * n_in * max_rows);
    fill_normal(x, (size_t)n_in * max_rows, 1.0f);
    /* The activations as the kernels see them: quantized by the reference
     * quantizer of the weights' vec_dot_type and decoded again. */
    float *xq = xmalloc(sizeof(float) * n_in * max_rows);
    if (float_path) {
        memcpy(xq, x, sizeof(float) * n_in * max_rows);
    } else {
        const exsa_type_traits *at = exsa_type_traits_get(tr->vec_dot_type);
        assert_non_null(at);
        void *blk = xmalloc(exsa_type_row_size(tr->vec_dot_type, n_in));
        for (int r = 0; r < max_rows; r++) {
            at->from_float(x + (size_t)r * n_in, blk, n_in);
            at->to_float(blk, xq + (size_t)r * n_in, n_in);
        }
        free(blk);
    }
    double *ref = xmalloc(sizeof(double) * n_out * max_rows);
    double *refq = xmalloc(sizeof(double) * n_out * max_rows);
    for (int r = 0; r < max_rows && !invariance; r++)
        for (int o = 0; o < n_out; o++) {
            double s = 0, sq = 0;
            for (int i = 0; i < n_in; i++) {
                s += (double)wd[(size_t)o * n_in + i] * x[(size_t)r * n_in + i];
                sq += (double)wd[(size_t)o * n_in + i] * xq[(size_t)r * n_in + i];
            }
            ref[(size_t)r * n_out + o] = s;
            refq[(size_t)r * n_out + o] = sq;
        }

    /* Each row alone: the decode path, and the baseline for batch invariance. */
    float *single = xmalloc(sizeof(float) * n_out * max_rows);
    for (int r = 0; r < max_rows; r++)
        B->ops->matmul(B, &t, x + (size_t)r * n_in, single + (size_t)r * n_out, 1);
    double e1 = invariance ? 0 : rel_l2_d(single, ref, (size_t)n_out * max_rows);
    if (!(e1 < tol))
        note_fail(fail, sizeof fail, "matmul %s n_in %d n_rows 1: rel L2 %.3g >= %.3g (threads %d)",
                  tr->name, n_in, e1, tol, g_threads);
    double e1q = invariance ? 0 : rel_l2_d(single, refq, (size_t)n_out * max_rows);
    if (!(e1q < tol_q))
        note_fail(fail, sizeof fail,
                  "matmul %s n_in %d: rel L2 %.3g >= %.3g vs quantized activations (threads %d)",
                  tr->name, n_in, e1q, tol_q, g_threads);

    static const int n_rows_list[] = {3, 17, 70};
    float *y = xmalloc(sizeof(float) * n_out * max_rows);
    for (size_t k = 0; k < 3; k++) {
        int nr = n_rows_list[k];
        B->ops->matmul(B, &t, x, y, nr);
        if (!invariance) {
            double e = rel_l2_d(y, ref, (size_t)n_out * nr);
            if (!(e < tol))
                note_fail(fail, sizeof fail,
                          "matmul %s n_in %d n_rows %d: rel L2 %.3g >= %.3g (threads %d)",
                          tr->name, n_in, nr, e, tol, g_threads);
            double eq = rel_l2_d(y, refq, (size_t)n_out * nr);
            if (!(eq < tol_q))
                note_fail(fail, sizeof fail,
                          "matmul %s n_in %d n_rows %d: rel L2 %.3g >= %.3g vs quantized "
                          "activations (threads %d)",
                          tr->name, n_in, nr, eq, tol_q, g_threads);
            continue;
        }
        /* A row's result must not depend on the batch it came in. */
        float inv_tol = float_path || bf16 ? 1e-5f : 1e-6f;
        for (size_t i = 0; i < (size_t)n_out * nr; i++) {
            float a = y[i], b = single[i];
            if (!(fabsf(a - b) <= inv_tol * fmaxf(1.0f, fabsf(b))))
                note_fail(fail, sizeof fail,
                          "matmul %s n_in %d n_rows %d: row %zu col %zu batched %.9g vs alone "
                          "%.9g (threads %d)",
                          tr->name, n_in, nr, i / n_out, i % n_out, (double)a, (double)b,
                          g_threads);
        }
    }
    free(y);
    free(single);
    free(refq);
    free(ref);
    free(xq);
    free(x);
    free(wd);
    free(rbuf);
    free(data);
    free(wsrc);
    if (fail[0])
        fail_msg("%s", fail);
}

static const int matmul_types[] = {
    EXSA_TYPE_F32,  EXSA_TYPE_F16,  EXSA_TYPE_BF16, EXSA_TYPE_Q4_0, EXSA_TYPE_Q4_1,
    EXSA_TYPE_Q5_0, EXSA_TYPE_Q5_1, EXSA_TYPE_Q8_0, EXSA_TYPE_Q2_K, EXSA_TYPE_Q3_K,
    EXSA_TYPE_Q4_K, EXSA_TYPE_Q5_K, EXSA_TYPE_Q6_K,
};

static void matmul_shapes(int invariance)
{
    for (size_t i = 0; i < sizeof matmul_types / sizeof matmul_types[0]; i++) {
        int type = matmul_types[i];
        check_matmul(type, 512, 37, invariance);
        /* Shorter rows: one super-block, or a length no SIMD width divides. */
        int64_t bs = exsa_type_traits_get(type)->block_size;
        check_matmul(type, bs == 256 ? 256 : bs == 32 ? 96 : 100, 37, invariance);
    }
    /* Enough output rows for many chunks per thread. */
    check_matmul(EXSA_TYPE_Q4_K, 256, 301, invariance);
    check_matmul(EXSA_TYPE_F16, 128, 301, invariance);
    /* Repacked Q4_0 (8-row groups): one group, many groups and chunks. */
    g_repack = 1;
    check_matmul(EXSA_TYPE_Q4_0, 512, 8, invariance);
    check_matmul(EXSA_TYPE_Q4_0, 96, 40, invariance);
    check_matmul(EXSA_TYPE_Q4_0, 256, 1024, invariance);
    /* Repacked Q4_K: one group, longer rows, many groups and chunks. */
    check_matmul(EXSA_TYPE_Q4_K, 512, 8, invariance);
    check_matmul(EXSA_TYPE_Q4_K, 2816, 16, invariance);
    check_matmul(EXSA_TYPE_Q4_K, 256, 1024, invariance);
    /* Repacked Q6_K: one group, longer rows, many groups and chunks (and
     * an odd number of groups, which leaves the two-group form one). */
    check_matmul(EXSA_TYPE_Q6_K, 512, 8, invariance);
    check_matmul(EXSA_TYPE_Q6_K, 2816, 24, invariance);
    check_matmul(EXSA_TYPE_Q6_K, 256, 1024, invariance);
    /* Repacked Q4_1. */
    check_matmul(EXSA_TYPE_Q4_1, 512, 8, invariance);
    check_matmul(EXSA_TYPE_Q4_1, 96, 40, invariance);
    check_matmul(EXSA_TYPE_Q4_1, 256, 1024, invariance);
    /* Repacked Q5_0 / Q5_1. */
    check_matmul(EXSA_TYPE_Q5_0, 512, 8, invariance);
    check_matmul(EXSA_TYPE_Q5_0, 96, 40, invariance);
    check_matmul(EXSA_TYPE_Q5_1, 512, 8, invariance);
    check_matmul(EXSA_TYPE_Q5_1, 256, 1024, invariance);
    check_matmul(EXSA_TYPE_Q8_0, 512, 8, invariance);
    check_matmul(EXSA_TYPE_Q8_0, 96, 40, invariance);
    check_matmul(EXSA_TYPE_Q8_0, 256, 1024, invariance);
    /* Repacked floats: odd lengths, one group, groups not a multiple of
     * the kernel's 2 / 4 per call. */
    check_matmul(EXSA_TYPE_F32, 100, 8, invariance);
    check_matmul(EXSA_TYPE_F16, 333, 40, invariance);
    check_matmul(EXSA_TYPE_BF16, 128, 56, invariance);
    check_matmul(EXSA_TYPE_F16, 128, 1000, invariance);
    g_repack = 0;
}

static void test_matmul(void **state)
{
    (void)state;
    matmul_shapes(0);
}

static void test_matmul_batch_invariance(void **state)
{
    (void)state;
    matmul_shapes(1);
}

/* ---- rope ------------------------------------------------------------------------ */

static void check_rope(int mode, int n_rows, int n_heads, int head_dim, int n_rot,
                       float freq_scale, int with_factors)
{
    size_t n = (size_t)n_rows * n_heads * head_dim;
    float *x = xmalloc(n * sizeof *x), *x0 = xmalloc(n * sizeof *x0);
    double *ref = xmalloc(n * sizeof *ref);
    int32_t *pos = xmalloc((size_t)n_rows * sizeof *pos);
    float ff[256];
    fill_normal(x0, n, 1.0f);
    memcpy(x, x0, n * sizeof *x);
    static const int32_t pos_pick[] = {0, 1, 7, 100, 1000, 4095};
    for (int r = 0; r < n_rows; r++)
        pos[r] = pos_pick[r % 6] + r / 6;
    for (int i = 0; i < n_rot / 2; i++)
        ff[i] = 1.0f + 3.0f * exsa_test_rand_uniform(&g_rng);
    const double base = 10000.0;

    int half = n_rot / 2;
    for (int r = 0; r < n_rows; r++)
        for (int h = 0; h < n_heads; h++) {
            size_t o = ((size_t)r * n_heads + h) * head_dim;
            for (int d = 0; d < head_dim; d++)
                ref[o + d] = x0[o + d];
            for (int i = 0; i < half; i++) {
                double theta = pos[r] * (double)freq_scale * pow(base, -2.0 * i / n_rot);
                if (with_factors)
                    theta /= ff[i];
                int a = mode == EXSA_ROPE_NEOX ? i : 2 * i;
                int b = mode == EXSA_ROPE_NEOX ? i + half : 2 * i + 1;
                double v0 = x0[o + a], v1 = x0[o + b];
                ref[o + a] = v0 * cos(theta) - v1 * sin(theta);
                ref[o + b] = v0 * sin(theta) + v1 * cos(theta);
            }
        }
    exsa_rope_args a = {n_rows, n_heads, head_dim, n_rot, mode, (float)base, freq_scale,
                        with_factors ? ff : NULL};
    B->ops->rope(B, x, pos, &a);
    /* Float angles at position ~4000 carry up to ~4000 * 2e-7 rad of
     * rounding, times |x| up to ~4: an absolute 5e-3 bound; a wrong
     * frequency is off by O(1). Dims past n_rot must be untouched. */
    check_close(mode == EXSA_ROPE_NEOX ? "rope neox" : "rope normal", x, ref, n, 0, 5e-3);
    for (int r = 0; r < n_rows; r++)
        for (int h = 0; h < n_heads; h++) {
            size_t o = ((size_t)r * n_heads + h) * head_dim;
            for (int d = n_rot; d < head_dim; d++)
                assert_true(x[o + d] == x0[o + d]);
        }
    /* Low positions are far tighter. */
    for (int h = 0; h < n_heads * head_dim; h++)
        assert_true(fabs(x[h] - ref[h]) <= 1e-6); /* row 0 is position 0 */
    free(pos);
    free(ref);
    free(x0);
    free(x);
}

static void test_rope(void **state)
{
    (void)state;
    for (int m = 0; m < 2; m++) {
        int mode = m ? EXSA_ROPE_NEOX : EXSA_ROPE_NORMAL;
        check_rope(mode, 6, 3, 16, 12, 0.5f, 1);
        check_rope(mode, 7, 2, 64, 64, 1.0f, 0);
        check_rope(mode, 5, 4, 32, 8, 0.25f, 0);
        check_rope(mode, 70, 8, 64, 64, 0.125f, 1); /* parallel path */
    }
}

/* ---- softmax, swiglu, add, add_bias, scale ----------------------------------------- */

static void test_softmax(void **state)
{
    (void)state;
    const int n = 37;
    for (int nr = 4; nr <= 304; nr += 300) {
        size_t tot = (size_t)nr * n;
        float *x = xmalloc(tot * sizeof *x);
        double *ref = xmalloc(tot * sizeof *ref);
        fill_normal(x, tot, 4.0f);
        for (int i = 0; i < n; i += 3)
            x[n + i] = -INFINITY; /* row 1: masked entries */
        for (int i = 0; i < n; i++)
            x[2 * n + i] = -INFINITY; /* row 2: all masked -> zeros */
        for (int i = 0; i < n; i++)
            x[3 * n + i] = 1000.0f + (float)i * 0.25f; /* row 3: needs max subtraction */
        for (int r = 0; r < nr; r++) {
            const float *xr = x + (size_t)r * n;
            double max = -INFINITY, sum = 0;
            for (int i = 0; i < n; i++)
                max = xr[i] > max ? xr[i] : max;
            for (int i = 0; i < n; i++) {
                double e = max == -INFINITY ? 0 : exp((double)xr[i] - max);
                ref[(size_t)r * n + i] = e;
                sum += e;
            }
            for (int i = 0; i < n; i++)
                ref[(size_t)r * n + i] = sum > 0 ? ref[(size_t)r * n + i] / sum : 0;
        }
        B->ops->softmax(B, x, nr, n);
        check_close("softmax", x, ref, tot, 1e-5, 1e-9);
        for (int i = 0; i < n; i += 3)
            assert_true(x[n + i] == 0.0f);
        for (int i = 0; i < n; i++)
            assert_true(x[2 * n + i] == 0.0f);
        free(ref);
        free(x);
    }
}

typedef void (*gated_op)(exsa_backend *b, const float *gate, const float *up, float *out,
                         int64_t n);

/* act(gate) * up in double precision. */
static double silu_ref(double x)
{
    return x / (1.0 + exp(-x));
}

static double gelu_tanh_ref(double x)
{
    /* 0.5 x (1 + tanh(z)) = x / (1 + exp(-2z)), without cancellation */
    return x / (1.0 + exp(-2.0 * sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

/* A gated activation op against act(gate) * up in double, gates drawn from
 * [-range, range] plus -100, 100 and 0, also with out aliasing gate. */
static void check_gated(const char *name, gated_op op, double (*act)(double), float range)
{
    static const int64_t sizes[] = {1, 1001, 70001};
    char label[64];
    for (size_t k = 0; k < 3; k++) {
        int64_t n = sizes[k];
        float *g = xmalloc((size_t)n * sizeof *g), *u = xmalloc((size_t)n * sizeof *u);
        float *out = xmalloc((size_t)n * sizeof *out);
        double *ref = xmalloc((size_t)n * sizeof *ref);
        fill_uniform(g, (size_t)n, -range, range);
        fill_normal(u, (size_t)n, 1.0f);
        if (n > 3) {
            g[0] = -100.0f;
            g[1] = 100.0f;
            g[2] = 0.0f;
        }
        for (int64_t i = 0; i < n; i++)
            ref[i] = act(g[i]) * u[i];
        op(B, g, u, out, n);
        check_close(name, out, ref, (size_t)n, 1e-5, 1e-30);
        op(B, g, u, g, n); /* out aliases gate */
        snprintf(label, sizeof label, "%s in place", name);
        check_close(label, g, ref, (size_t)n, 1e-5, 1e-30);
        free(ref);
        free(out);
        free(u);
        free(g);
    }
}

/* geglu against double-precision tanh GELU times up. */
static void test_geglu(void **state)
{
    (void)state;
    check_gated("geglu", B->ops->geglu, gelu_tanh_ref, 8.0f);
}

static void test_swiglu(void **state)
{
    (void)state;
    check_gated("swiglu", B->ops->swiglu, silu_ref, 30.0f);
}

static void test_add_bias_scale(void **state)
{
    (void)state;
    static const int64_t sizes[] = {1, 1003, 100003};
    for (size_t k = 0; k < 3; k++) {
        int64_t n = sizes[k];
        float *y = xmalloc((size_t)n * sizeof *y), *x = xmalloc((size_t)n * sizeof *x);
        float *want = xmalloc((size_t)n * sizeof *want);
        fill_normal(y, (size_t)n, 1.0f);
        fill_normal(x, (size_t)n, 1.0f);
        for (int64_t i = 0; i < n; i++)
            want[i] = (float)((double)y[i] + (double)x[i]);
        B->ops->add(B, y, x, n);
        assert_memory_equal(y, want, (size_t)n * sizeof *y);
        for (int64_t i = 0; i < n; i++)
            want[i] = (float)((double)y[i] * 0.37f);
        B->ops->scale(B, y, 0.37f, n);
        assert_memory_equal(y, want, (size_t)n * sizeof *y);
        free(want);
        free(x);
        free(y);
    }
    static const int shapes[][2] = {{1, 1}, {3, 17}, {37, 1001}, {101, 1000}};
    for (size_t k = 0; k < 4; k++) {
        int nr = shapes[k][0], dim = shapes[k][1];
        size_t n = (size_t)nr * dim;
        float *y = xmalloc(n * sizeof *y), *bias = xmalloc((size_t)dim * sizeof *bias);
        float *want = xmalloc(n * sizeof *want);
        fill_normal(y, n, 1.0f);
        fill_normal(bias, (size_t)dim, 1.0f);
        for (size_t i = 0; i < n; i++)
            want[i] = (float)((double)y[i] + (double)bias[i % dim]);
        B->ops->add_bias(B, y, bias, nr, dim);
        assert_memory_equal(y, want, n * sizeof *y);
        free(want);
        free(bias);
        free(y);
    }
}

/* ---- kv_store + attention ----------------------------------------------------------- */

enum { BS = 16, N_BLOCKS = 32, LEN_A = 100, LEN_B = 40 };

static void check_attention(int kv_type, int n_head, int n_kv, int hd, double tol_orig)
{
    const char *tname = exsa_type_traits_get(kv_type)->name;
    int row = n_kv * hd;
    size_t tb = exsa_type_row_size(kv_type, row);
    assert_true(tb > 0);
    exsa_kv_layer kv = {NULL, NULL, kv_type, BS, n_kv, hd, tb};
    kv.k = B->ops->alloc(B, tb * N_BLOCKS * BS);
    kv.v = B->ops->alloc(B, tb * N_BLOCKS * BS);
    assert_non_null(kv.k);
    assert_non_null(kv.v);

    /* Random, non-contiguous block tables for two sequences. */
    int32_t perm[N_BLOCKS];
    for (int i = 0; i < N_BLOCKS; i++)
        perm[i] = i;
    for (int i = N_BLOCKS - 1; i > 0; i--) {
        int j = (int)(exsa_test_rand_u64(&g_rng) % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    const int32_t *table[2] = {perm, perm + (LEN_A + BS - 1) / BS};
    const int len[2] = {LEN_A, LEN_B};
    int n_tok = LEN_A + LEN_B;

    /* Original K/V per (seq, token), stored in one call in shuffled order. */
    float *kf = xmalloc(sizeof(float) * row * n_tok), *vf = xmalloc(sizeof(float) * row * n_tok);
    fill_uniform(kf, (size_t)row * n_tok, -1.0f, 1.0f);
    fill_uniform(vf, (size_t)row * n_tok, -1.0f, 1.0f);
    int *order = xmalloc(sizeof(int) * n_tok);
    for (int i = 0; i < n_tok; i++)
        order[i] = i;
    for (int i = n_tok - 1; i > 0; i--) {
        int j = (int)(exsa_test_rand_u64(&g_rng) % (uint64_t)(i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    /* token index g: seq 0 tokens 0..LEN_A-1, then seq 1. */
    int32_t *slots = xmalloc(sizeof(int32_t) * n_tok);
    float *kin = xmalloc(sizeof(float) * row * n_tok), *vin = xmalloc(sizeof(float) * row * n_tok);
    int32_t *slot_of = xmalloc(sizeof(int32_t) * n_tok);
    for (int g = 0; g < n_tok; g++) {
        int s = g < LEN_A ? 0 : 1, t = g < LEN_A ? g : g - LEN_A;
        slot_of[g] = table[s][t / BS] * BS + t % BS;
    }
    for (int i = 0; i < n_tok; i++) {
        int g = order[i];
        slots[i] = slot_of[g];
        memcpy(kin + (size_t)i * row, kf + (size_t)g * row, sizeof(float) * row);
        memcpy(vin + (size_t)i * row, vf + (size_t)g * row, sizeof(float) * row);
    }
    B->ops->kv_store(B, &kv, kin, vin, slots, n_tok);

    /* What the cache holds, decoded here; and that it matches the input. */
    double *kd = xmalloc(sizeof(double) * row * n_tok), *vd = xmalloc(sizeof(double) * row * n_tok);
    for (int g = 0; g < n_tok; g++) {
        const char *kp = (const char *)kv.k + (size_t)slot_of[g] * tb;
        const char *vp = (const char *)kv.v + (size_t)slot_of[g] * tb;
        decode_row(kv_type, kp, kd + (size_t)g * row, row);
        decode_row(kv_type, vp, vd + (size_t)g * row, row);
        for (int e = 0; e < row; e++) {
            double x = kf[(size_t)g * row + e], dk = kd[(size_t)g * row + e];
            double tol = 0;
            if (kv_type == EXSA_TYPE_F16)
                tol = fabs(x) * 0x1p-11 + 0x1p-25;
            else if (kv_type == EXSA_TYPE_Q8_0) /* half a step, plus the fp16 scale's rounding */
                tol = 0.6 * half_to_float(((const exsa_block_q8_0 *)kp)[e / 32].d) + 1e-7;
            if (!(fabs(dk - x) <= tol))
                fail_msg("kv_store %s: token %d element %d holds %.9g, stored %.9g", tname, g, e,
                         dk, x);
        }
    }
    /* Blocks outside both tables were not written. */
    int used = (LEN_A + BS - 1) / BS + (LEN_B + BS - 1) / BS;
    for (int i = used; i < N_BLOCKS; i++) {
        const unsigned char *kp = (const unsigned char *)kv.k + (size_t)perm[i] * BS * tb;
        const unsigned char *vp = (const unsigned char *)kv.v + (size_t)perm[i] * BS * tb;
        for (size_t j = 0; j < BS * tb; j++)
            assert_true(kp[j] == 0 && vp[j] == 0);
    }

    /* Query rows of both sequences with assorted context lengths. */
    static const int rows_seq[] = {0, 0, 0, 0, 0, 1, 1, 1, 1};
    static const int rows_ctx[] = {1, 15, 16, 17, 100, 1, 16, 33, 40};
    enum { NR = 9 };
    int qrow = n_head * hd;
    float *q = xmalloc(sizeof(float) * qrow * NR), *out = xmalloc(sizeof(float) * qrow * NR);
    fill_normal(q, (size_t)qrow * NR, 1.0f);
    int32_t n_ctx[NR];
    int32_t row_tab[NR]; /* offsets into perm (bt_stride 1) */
    for (int r = 0; r < NR; r++) {
        n_ctx[r] = rows_ctx[r];
        row_tab[r] = (int32_t)(table[rows_seq[r]] - perm);
        assert_true(rows_ctx[r] <= len[rows_seq[r]]);
    }
    float scale = 1.0f / sqrtf((float)hd);
    exsa_attn_args a = {.n_rows = NR, .n_head = n_head, .q = q, .out = out, .n_ctx = n_ctx,
                        .row_tab = row_tab, .block_table = perm, .bt_stride = 1, .kv = &kv,
                        .scale = scale};
    B->ops->attention(B, &a);

    /* Two references: on the decoded cache (tight: the same numbers) and on
     * the original floats (the cache format's error). */
    double *ref_c = xmalloc(sizeof(double) * qrow * NR), *ref_o = xmalloc(sizeof(double) * qrow * NR);
    double *sc = xmalloc(sizeof(double) * LEN_A);
    int group = n_head / n_kv;
    for (int pass = 0; pass < 2; pass++) {
        double *ref = pass ? ref_o : ref_c;
        for (int r = 0; r < NR; r++)
            for (int h = 0; h < n_head; h++) {
                const float *qh = q + (size_t)r * qrow + (size_t)h * hd;
                int e0 = (h / group) * hd, g0 = rows_seq[r] ? LEN_A : 0;
                double max = -INFINITY, sum = 0;
                for (int t = 0; t < n_ctx[r]; t++) {
                    size_t base = (size_t)(g0 + t) * row + e0;
                    double s = 0;
                    for (int d = 0; d < hd; d++) {
                        /* An F16 cache rounds q to f16 too (as llama.cpp). */
                        double qd = kv_type == EXSA_TYPE_F16 && !pass
                                        ? exsa_fp16_to_fp32(exsa_fp32_to_fp16(qh[d]))
                                        : qh[d];
                        s += qd * (pass ? (double)kf[base + d] : kd[base + d]);
                    }
                    sc[t] = s * scale;
                    max = sc[t] > max ? sc[t] : max;
                }
                double *o = ref + (size_t)r * qrow + (size_t)h * hd;
                for (int d = 0; d < hd; d++)
                    o[d] = 0;
                for (int t = 0; t < n_ctx[r]; t++) {
                    double w = exp(sc[t] - max);
                    sum += w;
                    size_t base = (size_t)(g0 + t) * row + e0;
                    for (int d = 0; d < hd; d++)
                        o[d] += w * (pass ? (double)vf[base + d] : vd[base + d]);
                }
                for (int d = 0; d < hd; d++)
                    o[d] /= sum;
            }
    }
    /* F16 keeps its V accumulator at f16 precision (cpu_attention.c): a few
     * f16 roundings of the sum, measured ~6e-4; everything else is exact
     * arithmetic on the cache contents. */
    const double tol_cache = kv_type == EXSA_TYPE_F16 ? 2e-3 : 1e-5;
    for (int r = 0; r < NR; r++) {
        double e = rel_l2_d(out + (size_t)r * qrow, ref_c + (size_t)r * qrow, (size_t)qrow);
        if (!(e < tol_cache))
            fail_msg("attention %s heads %d/%d dim %d row %d (n_ctx %d): rel L2 %.3g vs cache "
                     "contents (threads %d)",
                     tname, n_head, n_kv, hd, r, n_ctx[r], e, g_threads);
    }
    double eo = rel_l2_d(out, ref_o, (size_t)qrow * NR);
    if (!(eo < tol_orig))
        fail_msg("attention %s heads %d/%d dim %d: rel L2 %.3g vs float K/V >= %.3g", tname,
                 n_head, n_kv, hd, eo, tol_orig);

    free(sc);
    free(ref_o);
    free(ref_c);
    free(out);
    free(q);
    free(vd);
    free(kd);
    free(slot_of);
    free(vin);
    free(kin);
    free(slots);
    free(order);
    free(vf);
    free(kf);
    B->ops->free(B, kv.v);
    B->ops->free(B, kv.k);
}

static void test_attention(void **state)
{
    (void)state;
    static const int types[] = {EXSA_TYPE_F32, EXSA_TYPE_F16, EXSA_TYPE_Q8_0};
    static const double tol[] = {1e-5, 2e-3, 1e-2};
    for (int i = 0; i < 3; i++) {
        check_attention(types[i], 6, 2, 64, tol[i]); /* GQA, 3 query heads per kv head */
        check_attention(types[i], 4, 1, 32, tol[i]); /* one kv head */
        check_attention(types[i], 4, 2, 48, tol[i]); /* Q8_0: head 1 starts mid-block */
    }
}

/* ---- matmul_multi ----------------------------------------------------------- */

/* n_w weights (n_in inputs; types and output counts given) made from
 * normal(0, 0.5) floats, repacked where g_repack says, with want / got
 * outputs of max_rows rows: the sets the matmul tests compare. */
typedef struct {
    int n_w;
    exsa_tensor t[3];
    const exsa_tensor *tp[3];
    void *data[3], *rbuf[3];
    float *want[3], *got[3];
} wset;

static void wset_make(wset *s, int n_w, int n_in, const int *type, const int *n_out, int max_rows)
{
    s->n_w = n_w;
    for (int i = 0; i < n_w; i++) {
        const int no = n_out[i];
        float *src = xmalloc(sizeof(float) * (size_t)n_in * (size_t)no);
        fill_normal(src, (size_t)n_in * (size_t)no, 0.5f);
        size_t rb;
        s->data[i] = make_weights(type[i], src, n_in, no, &rb);
        free(src);
        s->t[i] = (exsa_tensor){"w", type[i], n_in, no, rb, s->data[i], EXSA_LAYOUT_ROWS};
        s->rbuf[i] = maybe_repack(&s->t[i]);
        s->want[i] = xmalloc(sizeof(float) * (size_t)no * (size_t)max_rows);
        s->got[i] = xmalloc(sizeof(float) * (size_t)no * (size_t)max_rows);
        s->tp[i] = &s->t[i];
    }
}

static void wset_free(wset *s)
{
    for (int i = 0; i < s->n_w; i++) {
        free(s->rbuf[i]);
        free(s->data[i]);
        free(s->want[i]);
        free(s->got[i]);
    }
}

/* matmul_multi must give, for each weight, the bits of matmul on it alone:
 * weights of one repacked layout run fused (one quantized input, one pool
 * run), others (row layout, another layout, n_out not a multiple of 8) on
 * their own, in any mix. Weights repacked where they can be. */
static void test_matmul_multi(void **state)
{
    (void)state;
    static const struct {
        int n_w, n_in;
        int type[3], n_out[3];
    } sets[] = {
        {3, 256, {EXSA_TYPE_Q4_0, EXSA_TYPE_Q4_0, EXSA_TYPE_Q4_0}, {64, 32, 24}},
        {3, 256, {EXSA_TYPE_Q4_K, EXSA_TYPE_Q6_K, EXSA_TYPE_Q4_K}, {64, 32, 16}},
        {2, 256, {EXSA_TYPE_Q4_K, EXSA_TYPE_Q4_K}, {48, 32}},
        {3, 64, {EXSA_TYPE_Q8_0, EXSA_TYPE_Q8_0, EXSA_TYPE_Q4_0}, {16, 40, 8}},
        {2, 64, {EXSA_TYPE_F16, EXSA_TYPE_F32}, {16, 8}},
        /* one layout, two activation formats (BF16 rows, float rows) */
        {3, 64, {EXSA_TYPE_BF16, EXSA_TYPE_F32, EXSA_TYPE_BF16}, {16, 8, 24}},
        {3, 256, {EXSA_TYPE_Q4_0, EXSA_TYPE_Q4_0, EXSA_TYPE_Q4_0}, {12, 32, 8}},
    };
    static const int rows[] = {1, 5, 70};
    char fail[512] = "";
    g_repack = 1;
    for (size_t si = 0; si < sizeof sets / sizeof sets[0]; si++) {
        const int n_w = sets[si].n_w, n_in = sets[si].n_in;
        float *x = xmalloc(sizeof(float) * (size_t)n_in * 70);
        fill_normal(x, (size_t)n_in * 70, 1.0f);
        wset ws;
        wset_make(&ws, n_w, n_in, sets[si].type, sets[si].n_out, 70);
        const exsa_tensor *t = ws.t, *const *tp = ws.tp;
        float **want = ws.want, **got = ws.got;
        for (size_t ri = 0; ri < sizeof rows / sizeof rows[0] && !fail[0]; ri++) {
            const int nr = rows[ri];
            for (int i = 0; i < n_w; i++) {
                memset(got[i], 0xFF, sizeof(float) * (size_t)t[i].n_out * (size_t)nr);
                B->ops->matmul(B, &t[i], x, want[i], nr);
            }
            B->ops->matmul_multi(B, tp, n_w, x, got, nr);
            for (int i = 0; i < n_w && !fail[0]; i++)
                for (int e = 0; e < t[i].n_out * nr; e++)
                    if (memcmp(&got[i][e], &want[i][e], sizeof(float)) != 0) {
                        note_fail(fail, sizeof fail,
                                  "matmul_multi set %zu weight %d (%s %dx%d) rows %d out %d: "
                                  "%.9g, matmul %.9g",
                                  si, i, exsa_type_traits_get(t[i].type)->name, n_in,
                                  (int)t[i].n_out, nr, e, (double)got[i][e], (double)want[i][e]);
                        break;
                    }
        }
        wset_free(&ws);
        free(x);
    }
    g_repack = 0;
    if (fail[0])
        fail_msg("%s", fail);
}

/* matmul_fused against the plain ops in order (rms_norm or swiglu,
 * matmul_multi, add), bit for bit: decode batches (the fused path: each
 * thread prepares the rows itself and adds its own units' rows) and larger
 * ones (the plain path), repacked and row layouts. */
static void test_matmul_fused(void **state)
{
    (void)state;
    static const struct {
        int n_w, n_in;
        int type[3], n_out[3];
    } sets[] = {
        {3, 256, {EXSA_TYPE_Q4_0, EXSA_TYPE_Q4_0, EXSA_TYPE_Q4_0}, {64, 32, 24}},
        {2, 256, {EXSA_TYPE_Q4_K, EXSA_TYPE_Q4_K}, {72, 72}},
        {2, 64, {EXSA_TYPE_BF16, EXSA_TYPE_BF16}, {40, 40}},
        {1, 256, {EXSA_TYPE_Q4_0}, {200}},
        {1, 256, {EXSA_TYPE_Q6_K}, {264}},
        {1, 96, {EXSA_TYPE_Q8_0}, {48}},
        {1, 64, {EXSA_TYPE_F32}, {56}},
        {1, 64, {EXSA_TYPE_F16}, {24}},
        {1, 256, {EXSA_TYPE_Q5_K}, {40}}, /* rows layout only */
        {1, 256, {EXSA_TYPE_Q4_0}, {36}}, /* not whole groups: rows layout */
        {3, 64, {EXSA_TYPE_Q8_0, EXSA_TYPE_Q4_0, EXSA_TYPE_Q8_0}, {16, 8, 24}},
    };
    static const int rows[] = {1, 3, 8, 9, 70};
    enum { MAXR = 70 };
    char fail[512] = "";
    for (int repack = 0; repack < 2; repack++) {
        g_repack = repack;
        for (size_t si = 0; si < sizeof sets / sizeof sets[0] && !fail[0]; si++) {
            const int n_w = sets[si].n_w, n_in = sets[si].n_in, no0 = sets[si].n_out[0];
            const size_t nx = (size_t)n_in * MAXR, nres = (size_t)no0 * MAXR;
            float *x = xmalloc(sizeof(float) * nx), *up = xmalloc(sizeof(float) * nx);
            float *xin = xmalloc(sizeof(float) * nx), *scratch = xmalloc(sizeof(float) * nx);
            float *norm = xmalloc(sizeof(float) * (size_t)n_in);
            float *res0 = xmalloc(sizeof(float) * nres);
            float *res_want = xmalloc(sizeof(float) * nres);
            float *res_got = xmalloc(sizeof(float) * nres);
            fill_normal(x, nx, 0.05f); /* small: eps matters to the norm */
            fill_normal(up, nx, 1.0f);
            fill_uniform(norm, (size_t)n_in, 0.5f, 1.5f);
            fill_normal(res0, nres, 1.0f);
            wset ws;
            wset_make(&ws, n_w, n_in, sets[si].type, sets[si].n_out, MAXR);
            const exsa_tensor *t = ws.t, *const *tp = ws.tp;
            float **want = ws.want, **got = ws.got;
            for (size_t ri = 0; ri < sizeof rows / sizeof rows[0] && !fail[0]; ri++)
                for (int pro = 0; pro < 3 && !fail[0]; pro++)     /* none, norm, swiglu */
                    for (int with_res = 0; with_res <= (n_w == 1) && !fail[0]; with_res++) {
                        const int nr = rows[ri];
                        const size_t nres_r = (size_t)no0 * (size_t)nr;
                        /* the plain ops */
                        if (pro == 1)
                            B->ops->rms_norm(B, x, norm, xin, nr, n_in, 1e-5f);
                        else if (pro == 2)
                            B->ops->swiglu(B, x, up, xin, (int64_t)nr * n_in);
                        const float *in = pro ? xin : x;
                        B->ops->matmul_multi(B, tp, n_w, in, want, nr);
                        memcpy(res_want, res0, nres_r * sizeof(float));
                        if (with_res)
                            B->ops->add(B, res_want, want[0], (int64_t)nres_r);
                        /* fused */
                        for (int i = 0; i < n_w; i++)
                            memset(got[i], 0xFF, sizeof(float) * (size_t)t[i].n_out * (size_t)nr);
                        memcpy(res_got, res0, nres_r * sizeof(float));
                        exsa_matmul_fuse f = {.norm = pro == 1 ? norm : NULL, .eps = 1e-5f,
                                              .up = pro == 2 ? up : NULL, .scratch = scratch,
                                              .residual = with_res ? res_got : NULL};
                        B->ops->matmul_fused(B, tp, n_w, x, got, nr, &f);
                        for (int i = 0; i < (with_res ? 1 : n_w) && !fail[0]; i++) {
                            const float *g = with_res ? res_got : got[i];
                            const float *wv = with_res ? res_want : want[i];
                            for (size_t e = 0; e < (size_t)t[i].n_out * (size_t)nr; e++)
                                if (memcmp(&g[e], &wv[e], sizeof(float)) != 0) {
                                    note_fail(fail, sizeof fail,
                                              "matmul_fused set %zu repack %d weight %d (%s "
                                              "%dx%d) rows %d prologue %d residual %d out %zu: "
                                              "%.9g, plain ops %.9g",
                                              si, repack, i,
                                              exsa_type_traits_get(t[i].type)->name, n_in,
                                              (int)t[i].n_out, nr, pro, with_res, e,
                                              (double)g[e], (double)wv[e]);
                                    break;
                                }
                        }
                    }
            wset_free(&ws);
            free(x);
            free(up);
            free(xin);
            free(scratch);
            free(norm);
            free(res0);
            free(res_want);
            free(res_got);
        }
    }
    g_repack = 0;
    if (fail[0])
        fail_msg("%s", fail);
}

/* matmul_fused of q, k, v with rope and kv_store against the plain ops in
 * order (rms_norm, matmul_multi, rope, rope, kv_store), bit for bit in q,
 * k, v and in every byte of the cache: decode batches (rope and store on
 * each unit's rows as it is written), larger ones, NEOX rope and partial
 * rotary dims (the plain epilogue), F32 / F16 / Q8_0 caches, one repacked
 * layout and mixed ones (Q4_K q, k with a Q6_K v), a slot < 0 (no store). */
static void test_matmul_fused_qkv(void **state)
{
    (void)state;
    static const struct {
        int n_in, head_dim, n_head, n_kv;
        int type[3];
    } sets[] = {
        {256, 64, 4, 2, {EXSA_TYPE_Q4_0, EXSA_TYPE_Q4_0, EXSA_TYPE_Q4_0}},
        {256, 64, 6, 2, {EXSA_TYPE_Q4_K, EXSA_TYPE_Q4_K, EXSA_TYPE_Q6_K}},
        {256, 32, 4, 4, {EXSA_TYPE_Q8_0, EXSA_TYPE_Q8_0, EXSA_TYPE_Q8_0}},
        {64, 16, 4, 2, {EXSA_TYPE_F16, EXSA_TYPE_F16, EXSA_TYPE_F16}},
        {256, 64, 2, 1, {EXSA_TYPE_Q5_K, EXSA_TYPE_Q5_K, EXSA_TYPE_Q5_K}}, /* rows layout */
    };
    static const int rows[] = {1, 3, 8, 9};
    static const int kv_types[] = {EXSA_TYPE_F16, EXSA_TYPE_F32, EXSA_TYPE_Q8_0};
    enum { MAXR = 9, SLOTS = 32 };
    char fail[512] = "";
    for (int repack = 0; repack < 2 && !fail[0]; repack++) {
        g_repack = repack;
        for (size_t si = 0; si < sizeof sets / sizeof sets[0] && !fail[0]; si++) {
            const int n_in = sets[si].n_in, hd = sets[si].head_dim;
            const int no[3] = {sets[si].n_head * hd, sets[si].n_kv * hd, sets[si].n_kv * hd};
            float *x = xmalloc(sizeof(float) * (size_t)n_in * MAXR);
            float *xin = xmalloc(sizeof(float) * (size_t)n_in * MAXR);
            float *scratch = xmalloc(sizeof(float) * (size_t)n_in * MAXR);
            float *norm = xmalloc(sizeof(float) * (size_t)n_in);
            float ff[32];
            fill_normal(x, (size_t)n_in * MAXR, 1.0f);
            fill_uniform(norm, (size_t)n_in, 0.5f, 1.5f);
            fill_uniform(ff, 32, 1.0f, 4.0f);
            wset ws;
            wset_make(&ws, 3, n_in, sets[si].type, no, MAXR);
            const exsa_tensor *const *tp = ws.tp;
            float **want = ws.want, **got = ws.got;
            for (size_t ki = 0; ki < 3 && !fail[0]; ki++)
                for (int var = 0; var < 3 && !fail[0]; var++) /* normal, partial + factors, neox */
                    for (size_t ri = 0; ri < sizeof rows / sizeof rows[0] && !fail[0]; ri++) {
                        const int nr = rows[ri], kvt = kv_types[ki];
                        const size_t tb = exsa_type_row_size(kvt, no[1]);
                        exsa_kv_layer kv[2];
                        for (int c = 0; c < 2; c++) {
                            kv[c] = (exsa_kv_layer){NULL, NULL, kvt, 16, sets[si].n_kv, hd, tb};
                            kv[c].k = xmalloc(tb * SLOTS);
                            kv[c].v = xmalloc(tb * SLOTS);
                            memset(kv[c].k, 0x5A, tb * SLOTS);
                            memset(kv[c].v, 0x5A, tb * SLOTS);
                        }
                        int32_t pos[MAXR], slots[MAXR];
                        for (int r = 0; r < nr; r++) {
                            pos[r] = 7 + 100 * r + (int)si;
                            slots[r] = r == 1 ? -1 : (r * 3 + 2) % SLOTS;
                        }
                        exsa_rope_args rq = {nr, sets[si].n_head, hd, var == 1 ? hd / 2 : hd,
                                             var == 2 ? EXSA_ROPE_NEOX : EXSA_ROPE_NORMAL,
                                             10000.0f, var == 1 ? 0.5f : 1.0f,
                                             var == 1 ? ff : NULL};
                        exsa_rope_args rk = rq;
                        rk.n_heads = sets[si].n_kv;
                        /* the plain ops */
                        B->ops->rms_norm(B, x, norm, xin, nr, n_in, 1e-5f);
                        B->ops->matmul_multi(B, tp, 3, xin, want, nr);
                        B->ops->rope(B, want[0], pos, &rq);
                        B->ops->rope(B, want[1], pos, &rk);
                        B->ops->kv_store(B, &kv[0], want[1], want[2], slots, nr);
                        /* fused */
                        for (int i = 0; i < 3; i++)
                            memset(got[i], 0xFF, sizeof(float) * (size_t)no[i] * (size_t)nr);
                        exsa_matmul_fuse f = {.norm = norm, .eps = 1e-5f, .scratch = scratch,
                                              .rope_q = &rq, .rope_k = &rk, .pos = pos,
                                              .kv = &kv[1], .slots = slots};
                        B->ops->matmul_fused(B, tp, 3, x, got, nr, &f);
                        for (int i = 0; i < 3 && !fail[0]; i++)
                            for (size_t e = 0; e < (size_t)no[i] * (size_t)nr; e++)
                                if (memcmp(&got[i][e], &want[i][e], sizeof(float)) != 0) {
                                    note_fail(fail, sizeof fail,
                                              "matmul_fused qkv set %zu repack %d cache %s "
                                              "rope %d rows %d weight %d out %zu: %.9g, plain "
                                              "ops %.9g",
                                              si, repack, exsa_type_traits_get(kvt)->name, var,
                                              nr, i, e, (double)got[i][e], (double)want[i][e]);
                                    break;
                                }
                        if (!fail[0] && (memcmp(kv[0].k, kv[1].k, tb * SLOTS) != 0 ||
                                         memcmp(kv[0].v, kv[1].v, tb * SLOTS) != 0))
                            note_fail(fail, sizeof fail,
                                      "matmul_fused qkv set %zu repack %d cache %s rope %d rows "
                                      "%d: the cache differs from kv_store's",
                                      si, repack, exsa_type_traits_get(kvt)->name, var, nr);
                        for (int c = 0; c < 2; c++) {
                            free(kv[c].k);
                            free(kv[c].v);
                        }
                    }
            wset_free(&ws);
            free(x);
            free(xin);
            free(scratch);
            free(norm);
        }
    }
    g_repack = 0;
    if (fail[0])
        fail_msg("%s", fail);
}

/* ---- driver ---------------------------------------------------------------------- */

static int run_suite(int n_threads, const char *label)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_describe_alloc),
        cmocka_unit_test(test_get_rows),
        cmocka_unit_test(test_repack_lossless),
        cmocka_unit_test(test_rms_norm),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_batch_invariance),
        cmocka_unit_test(test_matmul_multi),
        cmocka_unit_test(test_matmul_fused),
        cmocka_unit_test(test_matmul_fused_qkv),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_geglu),
        cmocka_unit_test(test_add_bias_scale),
        cmocka_unit_test(test_attention),
    };
    char name[64];
    snprintf(name, sizeof name, "backend_ops %s x%d", label, n_threads);
    g_threads = n_threads;
    g_rng = 0x5eed0000u + (uint64_t)n_threads;
    return cmocka_run_group_tests_name(name, tests, group_setup, group_teardown);
}

int main(void)
{
    /* The scalar kernels run in a child: the kernel table is chosen once per
     * process, so EXSA_CPU must be set before the first backend exists. */
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        setenv("EXSA_CPU", "scalar", 1);
        exit(run_suite(3, "scalar") != 0);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        status = 1 << 8;
    int failed = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    failed |= run_suite(1, "best") != 0;
    failed |= run_suite(3, "best") != 0;
    return failed;
}
