/* CUDA ops, kv_store and paged attention against host references.
 *
 * Each launcher runs on random data of awkward sizes with every output
 * poisoned with 0xFF bytes (NaN) first, so an unwritten element fails:
 *   - rms_norm (with and without weight, in place), rope (both modes,
 *     n_rot < head_dim, freq factors, freq_scale != 1, positions up to
 *     30000), softmax (large values, a row of -inf), swiglu and geglu (in
 *     place too): rel L2 against a double reference; rope's reference takes
 *     the CPU's float angle (frequency by powf, times the position in float)
 *     and its cos and sin in double. swiglu and geglu also report how many
 *     elements differ from the CPU scalar kernels' bits (they should not).
 *   - add_bias, add, scale (aligned and unaligned): bit-equal to float math.
 *   - kv_store: the whole F32/F16/Q8_0 pool bit-equal to the CPU reference
 *     conversion/quantizer (exsa_fp32_to_fp16, exsa_quantize_row_q8_0_ref),
 *     NaN, inf, zero blocks and f16 subnormals included; a row with slot -1
 *     writes nothing.
 *   - attention: a double reference reading the same paged cache (its
 *     dequantized values) through the same flat block tables. Shuffled
 *     block ids, contexts 1..~3000, decode batches with rows sharing a
 *     table and prefill-like runs of consecutive positions, GQA 1/4/8/12,
 *     head_dim 64/80/128/256, windows, both the split and the one-split
 *     paths. Every cache slot no row may read is NaN (and so are unused
 *     table entries' blocks): a stray read shows.
 *
 * Seeded from the clock (printed); EXSA_TEST_SEED replays a run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cuda/cuda_kernels.h"
#include "quant/quant.h"
#include "test_util.h"

#define TOL 1e-5
#define ARRAY_LEN(a) (int)(sizeof(a) / sizeof((a)[0]))

static uint64_t g_seed;

/* ------------------------------------------------------------ helpers */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static void *dalloc(size_t n)
{
    void *p = NULL;
    assert_int_equal(cudaMalloc(&p, n ? n : 1), cudaSuccess);
    return p;
}

static void *dup_to_dev(const void *h, size_t n)
{
    void *d = dalloc(n);
    assert_int_equal(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice), cudaSuccess);
    return d;
}

static void to_host(void *h, const void *d, size_t n)
{
    assert_int_equal(cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost), cudaSuccess);
}

static void poison(void *d, size_t n)
{
    assert_int_equal(cudaMemset(d, 0xFF, n), cudaSuccess);
}

static void sync_ok(int launch_rc)
{
    assert_int_equal(launch_rc, 0);
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
}

static uint64_t rng_for(int test_id)
{
    return g_seed * 0x9E3779B97F4A7C15ull + (uint64_t)test_id * 0xD1B54A32D192ED03ull + 1;
}

static void fill_normal(uint64_t *rng, float *x, size_t n, float sd)
{
    for (size_t i = 0; i < n; i++)
        x[i] = sd * exsa_test_rand_normal(rng);
}

static int rand_int(uint64_t *rng, int lo, int hi) /* [lo, hi] */
{
    return lo + (int)(exsa_test_rand_u64(rng) % (uint64_t)(hi - lo + 1));
}

/* Max abs error and rel L2 of got against want (double), printed; both
 * finite and rel L2 within tol. */
static void check_close(const char *what, const float *got, const double *want, size_t n,
                        double tol)
{
    double num = 0, den = 0, max_abs = 0;
    size_t n_bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) && isfinite(want[i]))
            n_bad++;
        const double d = (double)got[i] - want[i];
        num += d * d;
        den += want[i] * want[i];
        if (fabs(d) > max_abs || d != d)
            max_abs = fabs(d);
    }
    const double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    printf("  %-52s max abs %.3g  rel L2 %.3g\n", what, max_abs, rel);
    if (n_bad)
        printf("  %s: %zu non-finite outputs\n", what, n_bad);
    assert_int_equal(n_bad, 0);
    assert_true(rel <= tol);
}

static void check_equal(const char *what, const float *got, const float *want, size_t n)
{
    size_t n_diff = 0;
    for (size_t i = 0; i < n; i++)
        n_diff += memcmp(&got[i], &want[i], sizeof(float)) != 0;
    printf("  %-52s %zu of %zu differ\n", what, n_diff, n);
    assert_int_equal(n_diff, 0);
}

/* ------------------------------------------------------------ rms_norm */

static void test_rms_norm(void **state)
{
    (void)state;
    uint64_t rng = rng_for(1);
    static const int dims[] = {1, 33, 1000, 4097};
    static const int rows[] = {1, 3, 7};
    for (int di = 0; di < ARRAY_LEN(dims); di++)
        for (int ri = 0; ri < ARRAY_LEN(rows); ri++)
            for (int mode = 0; mode < 3; mode++) { /* w; no w; w in place */
                const int dim = dims[di], nr = rows[ri];
                const size_t n = (size_t)nr * (size_t)dim;
                const float eps = 1e-6f;
                float *x = xmalloc(n * sizeof *x), *w = xmalloc((size_t)dim * sizeof *w);
                float *y = xmalloc(n * sizeof *y);
                double *ref = xmalloc(n * sizeof *ref);
                fill_normal(&rng, x, n, 3.0f);
                fill_normal(&rng, w, (size_t)dim, 1.0f);
                const int use_w = mode != 1;
                for (int r = 0; r < nr; r++) {
                    double ss = 0;
                    for (int i = 0; i < dim; i++)
                        ss += (double)x[r * dim + i] * x[r * dim + i];
                    const double s = 1.0 / sqrt(ss / dim + eps);
                    for (int i = 0; i < dim; i++)
                        ref[r * dim + i] = x[r * dim + i] * s * (use_w ? w[i] : 1.0);
                }
                float *dx = dup_to_dev(x, n * sizeof *x), *dw = dup_to_dev(w, (size_t)dim * 4);
                float *dy = dx;
                if (mode != 2) {
                    dy = dalloc(n * sizeof *dy);
                    poison(dy, n * sizeof *dy);
                }
                sync_ok(exsa_cuda_rms_norm(dx, use_w ? dw : NULL, dy, nr, dim, eps, 0));
                to_host(y, dy, n * sizeof *y);
                char what[96];
                snprintf(what, sizeof what, "rms_norm rows %d dim %d %s", nr, dim,
                         mode == 0 ? "w" : mode == 1 ? "no w" : "w in place");
                check_close(what, y, ref, n, TOL);
                if (dy != dx)
                    cudaFree(dy);
                cudaFree(dx);
                cudaFree(dw);
                free(x);
                free(w);
                free(y);
                free(ref);
            }
}

/* ------------------------------------------------------ add_bias, add, scale */

static void test_add_bias_add_scale(void **state)
{
    (void)state;
    uint64_t rng = rng_for(2);
    static const int dims[] = {1, 7, 1003};
    static const int rows[] = {1, 5};
    for (int di = 0; di < ARRAY_LEN(dims); di++)
        for (int ri = 0; ri < ARRAY_LEN(rows); ri++) {
            const int dim = dims[di], nr = rows[ri];
            const size_t n = (size_t)nr * (size_t)dim;
            float *y = xmalloc(n * 4), *b = xmalloc((size_t)dim * 4), *want = xmalloc(n * 4);
            float *got = xmalloc(n * 4);
            fill_normal(&rng, y, n, 1.0f);
            fill_normal(&rng, b, (size_t)dim, 1.0f);
            for (size_t i = 0; i < n; i++)
                want[i] = y[i] + b[i % (size_t)dim];
            float *dy = dup_to_dev(y, n * 4), *db = dup_to_dev(b, (size_t)dim * 4);
            sync_ok(exsa_cuda_add_bias(dy, db, nr, dim, 0));
            to_host(got, dy, n * 4);
            char what[96];
            snprintf(what, sizeof what, "add_bias rows %d dim %d", nr, dim);
            check_equal(what, got, want, n);
            cudaFree(dy);
            cudaFree(db);
            free(y);
            free(b);
            free(want);
            free(got);
        }

    static const int64_t sizes[] = {1, 3, 4, 1001, 100003};
    for (int si = 0; si < ARRAY_LEN(sizes); si++)
        for (int off = 0; off < 2; off++) { /* off 1: not 16-byte aligned */
            const int64_t n = sizes[si];
            const size_t bytes = (size_t)(n + 1) * 4;
            float *y = xmalloc(bytes), *x = xmalloc(bytes), *want = xmalloc(bytes);
            float *got = xmalloc(bytes);
            fill_normal(&rng, y, (size_t)n + 1, 1.0f);
            fill_normal(&rng, x, (size_t)n + 1, 1.0f);
            float *dy = dup_to_dev(y, bytes), *dx = dup_to_dev(x, bytes);
            sync_ok(exsa_cuda_add(dy + off, dx + off, n, 0));
            to_host(got, dy, bytes);
            memcpy(want, y, bytes);
            for (int64_t i = 0; i < n; i++)
                want[off + i] = y[off + i] + x[off + i];
            char what[96];
            snprintf(what, sizeof what, "add n %lld offset %d", (long long)n, off);
            check_equal(what, got, want, (size_t)n + 1);

            const float sc = 0.37f;
            assert_int_equal(cudaMemcpy(dy, y, bytes, cudaMemcpyHostToDevice), cudaSuccess);
            sync_ok(exsa_cuda_scale(dy + off, sc, n, 0));
            to_host(got, dy, bytes);
            memcpy(want, y, bytes);
            for (int64_t i = 0; i < n; i++)
                want[off + i] = y[off + i] * sc;
            snprintf(what, sizeof what, "scale n %lld offset %d", (long long)n, off);
            check_equal(what, got, want, (size_t)n + 1);
            cudaFree(dy);
            cudaFree(dx);
            free(y);
            free(x);
            free(want);
            free(got);
        }
}

/* ------------------------------------------------------------------ rope */

typedef struct {
    int mode, n_heads, head_dim, n_rot, factors;
    float freq_base, freq_scale;
} rope_case;

static void test_rope(void **state)
{
    (void)state;
    uint64_t rng = rng_for(3);
    static const rope_case cases[] = {
        {EXSA_ROPE_NORMAL, 3, 64, 64, 0, 10000.0f, 1.0f},
        {EXSA_ROPE_NEOX, 3, 64, 64, 0, 10000.0f, 1.0f},
        {EXSA_ROPE_NORMAL, 5, 80, 48, 0, 10000.0f, 0.25f},
        {EXSA_ROPE_NEOX, 5, 80, 48, 0, 1000000.0f, 0.25f},
        {EXSA_ROPE_NORMAL, 4, 128, 128, 1, 500000.0f, 1.0f},
        {EXSA_ROPE_NEOX, 2, 256, 192, 1, 10000.0f, 0.5f},
        {EXSA_ROPE_NEOX, 7, 128, 96, 1, 1000000.0f, 1.0f},
    };
    const int n_rows = 9;
    for (int ci = 0; ci < ARRAY_LEN(cases); ci++) {
        const rope_case *c = &cases[ci];
        const int half = c->n_rot / 2, hd = c->head_dim;
        const size_t n = (size_t)n_rows * (size_t)c->n_heads * (size_t)hd;
        float *x = xmalloc(n * 4), *got = xmalloc(n * 4), *ff = xmalloc((size_t)half * 4);
        double *ref = xmalloc(n * sizeof *ref);
        int32_t pos[9];
        fill_normal(&rng, x, n, 1.0f);
        for (int i = 0; i < half; i++)
            ff[i] = 1.0f + 7.0f * exsa_test_rand_uniform(&rng);
        for (int r = 0; r < n_rows; r++)
            pos[r] = r == 0 ? 0 : r == 1 ? 30000 : rand_int(&rng, 0, 30000);
        for (size_t i = 0; i < n; i++)
            ref[i] = x[i];
        for (int r = 0; r < n_rows; r++)
            for (int i = 0; i < half; i++) {
                /* the CPU backend's float angle; its cos and sin in double */
                float f = c->freq_scale * powf(c->freq_base, -(float)(2 * i) / (float)c->n_rot);
                if (c->factors)
                    f /= ff[i];
                const float theta = (float)pos[r] * f;
                const double cs = cos((double)theta), sn = sin((double)theta);
                for (int h = 0; h < c->n_heads; h++) {
                    const size_t o = ((size_t)r * c->n_heads + h) * (size_t)hd;
                    const size_t i0 = o + (size_t)(c->mode == EXSA_ROPE_NEOX ? i : 2 * i);
                    const size_t i1 = o + (size_t)(c->mode == EXSA_ROPE_NEOX ? i + half : 2 * i + 1);
                    ref[i0] = (double)x[i0] * cs - (double)x[i1] * sn;
                    ref[i1] = (double)x[i0] * sn + (double)x[i1] * cs;
                }
            }
        float *dx = dup_to_dev(x, n * 4), *dff = dup_to_dev(ff, (size_t)half * 4);
        int32_t *dpos = dup_to_dev(pos, sizeof pos);
        exsa_rope_args a = {n_rows, c->n_heads, hd, c->n_rot, c->mode, c->freq_base,
                            c->freq_scale, c->factors ? dff : NULL};
        sync_ok(exsa_cuda_rope(dx, dpos, &a, 0));
        to_host(got, dx, n * 4);
        char what[96];
        snprintf(what, sizeof what, "rope %s hd %d n_rot %d ff %d scale %g",
                 c->mode == EXSA_ROPE_NEOX ? "neox" : "normal", hd, c->n_rot, c->factors,
                 (double)c->freq_scale);
        check_close(what, got, ref, n, TOL);
        /* dims past n_rot pass through untouched */
        for (size_t o = 0; o < n; o += (size_t)hd)
            for (int d = c->n_rot; d < hd; d++)
                assert_memory_equal(&got[o + (size_t)d], &x[o + (size_t)d], sizeof(float));
        cudaFree(dx);
        cudaFree(dff);
        cudaFree(dpos);
        free(x);
        free(got);
        free(ff);
        free(ref);
    }
}

/* --------------------------------------------------------------- softmax */

static void test_softmax(void **state)
{
    (void)state;
    uint64_t rng = rng_for(4);
    static const int sizes[] = {1, 37, 5000, 40001};
    const int n_rows = 4;
    for (int si = 0; si < ARRAY_LEN(sizes); si++) {
        const int n = sizes[si];
        const size_t total = (size_t)n_rows * (size_t)n;
        float *x = xmalloc(total * 4), *got = xmalloc(total * 4);
        double *ref = xmalloc(total * sizeof *ref);
        fill_normal(&rng, x, total, 3.0f);
        for (int i = 0; i < n; i++) { /* row 1: large values; row 3: all -inf */
            x[(size_t)n + (size_t)i] = 20000.0f + 40.0f * exsa_test_rand_normal(&rng);
            x[3 * (size_t)n + (size_t)i] = -INFINITY;
        }
        if (n > 1)
            x[2] = -INFINITY; /* a masked entry in a live row */
        for (int r = 0; r < n_rows; r++) {
            const float *xr = x + (size_t)r * n;
            double *o = ref + (size_t)r * n;
            double m = -INFINITY, s = 0;
            for (int i = 0; i < n; i++)
                m = xr[i] > m ? xr[i] : m;
            if (m == -INFINITY) {
                for (int i = 0; i < n; i++)
                    o[i] = 0;
                continue;
            }
            for (int i = 0; i < n; i++)
                s += o[i] = exp((double)xr[i] - m);
            for (int i = 0; i < n; i++)
                o[i] /= s;
        }
        float *dx = dup_to_dev(x, total * 4);
        sync_ok(exsa_cuda_softmax(dx, n_rows, n, 0));
        to_host(got, dx, total * 4);
        char what[96];
        snprintf(what, sizeof what, "softmax rows %d n %d", n_rows, n);
        check_close(what, got, ref, total, TOL);
        cudaFree(dx);
        free(x);
        free(got);
        free(ref);
    }
}

/* ---------------------------------------------------------- swiglu, geglu */

static void test_gated(void **state)
{
    (void)state;
    uint64_t rng = rng_for(5);
    const exsa_cpu_kernels *cpu = exsa_cpu_kernels_scalar();
    static const int64_t sizes[] = {1, 1001, 100003};
    for (int gelu = 0; gelu < 2; gelu++)
        for (int si = 0; si < ARRAY_LEN(sizes); si++)
            for (int in_place = 0; in_place < 2; in_place++) {
                const int64_t n = sizes[si];
                const size_t bytes = (size_t)n * 4;
                float *g = xmalloc(bytes), *u = xmalloc(bytes), *got = xmalloc(bytes);
                float *cpu_out = xmalloc(bytes);
                double *ref = xmalloc((size_t)n * sizeof *ref);
                fill_normal(&rng, g, (size_t)n, 4.0f);
                fill_normal(&rng, u, (size_t)n, 1.0f);
                if (n > 2) {
                    g[0] = -120.0f; /* exp clamps */
                    g[1] = 0.0f;
                }
                for (int64_t i = 0; i < n; i++) {
                    const double x = g[i];
                    const double act = gelu ? 0.5 * x * (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) *
                                                                  (x + 0.044715 * x * x * x)))
                                            : x / (1.0 + exp(-x));
                    ref[i] = act * u[i];
                }
                (gelu ? cpu->geglu : cpu->swiglu)(g, u, cpu_out, n);
                float *dg = dup_to_dev(g, bytes), *du = dup_to_dev(u, bytes);
                float *dout = dg;
                if (!in_place) {
                    dout = dalloc(bytes);
                    poison(dout, bytes);
                }
                sync_ok((gelu ? exsa_cuda_geglu : exsa_cuda_swiglu)(dg, du, dout, n, 0));
                to_host(got, dout, bytes);
                char what[96];
                snprintf(what, sizeof what, "%s n %lld%s", gelu ? "geglu" : "swiglu",
                         (long long)n, in_place ? " in place" : "");
                check_close(what, got, ref, (size_t)n, TOL);
                size_t n_diff = 0;
                for (int64_t i = 0; i < n; i++)
                    n_diff += memcmp(&got[i], &cpu_out[i], 4) != 0;
                printf("  %-52s %zu differ from the CPU scalar bits\n", what, n_diff);
                if (dout != dg)
                    cudaFree(dout);
                cudaFree(dg);
                cudaFree(du);
                free(g);
                free(u);
                free(got);
                free(cpu_out);
                free(ref);
            }
}

/* ------------------------------------------------------------- kv_store */

static size_t token_bytes_for(int type, int64_t n_elem)
{
    return exsa_type_row_size(type, n_elem);
}

/* A token row as the CPU kv_store writes it. */
static void cpu_store_row(int type, const float *x, int64_t n, void *dst)
{
    if (type == EXSA_TYPE_F32) {
        memcpy(dst, x, (size_t)n * 4);
    } else if (type == EXSA_TYPE_F16) {
        exsa_fp16 *h = dst;
        for (int64_t i = 0; i < n; i++)
            h[i] = exsa_fp32_to_fp16(x[i]);
    } else {
        exsa_quantize_row_q8_0_ref(x, dst, n);
    }
}

static const char *type_name(int type)
{
    return type == EXSA_TYPE_F32 ? "F32" : type == EXSA_TYPE_F16 ? "F16" : "Q8_0";
}

static void test_kv_store(void **state)
{
    (void)state;
    uint64_t rng = rng_for(6);
    static const int types[] = {EXSA_TYPE_F32, EXSA_TYPE_F16, EXSA_TYPE_Q8_0};
    static const int shapes[][2] = {{3, 64}, {2, 80}, {1, 256}}; /* n_kv_head, head_dim */
    for (int ti = 0; ti < ARRAY_LEN(types); ti++)
        for (int si = 0; si < ARRAY_LEN(shapes); si++) {
            const int type = types[ti], n_kv = shapes[si][0], hd = shapes[si][1];
            const int64_t n_elem = (int64_t)n_kv * hd;
            const size_t tb = token_bytes_for(type, n_elem);
            const int n_slots = 41, n_rows = 11;
            const size_t pool = (size_t)n_slots * tb;
            float *k = xmalloc((size_t)n_rows * (size_t)n_elem * 4);
            float *v = xmalloc((size_t)n_rows * (size_t)n_elem * 4);
            fill_normal(&rng, k, (size_t)n_rows * (size_t)n_elem, 2.0f);
            fill_normal(&rng, v, (size_t)n_rows * (size_t)n_elem, 2.0f);
            /* special values: a zero block, NaN, inf, f16 subnormals and ties */
            for (int i = 0; i < 32; i++)
                k[i] = 0.0f;
            k[40] = NAN;
            v[70] = INFINITY;
            v[3] = -INFINITY;
            for (int i = 96; i < 128; i++)
                k[n_elem + i] = 3e-6f * exsa_test_rand_normal(&rng);
            k[2 * n_elem + 5] = 1.0f + 1.0f / 2048.0f; /* an f16 tie */
            int32_t slots[11];
            int perm[41];
            for (int i = 0; i < n_slots; i++)
                perm[i] = i;
            for (int i = n_slots - 1; i > 0; i--) {
                const int j = rand_int(&rng, 0, i), t = perm[i];
                perm[i] = perm[j];
                perm[j] = t;
            }
            for (int r = 0; r < n_rows; r++)
                slots[r] = r == 4 ? -1 : perm[r];
            unsigned char *want_k = xmalloc(pool), *want_v = xmalloc(pool);
            unsigned char *got = xmalloc(pool);
            memset(want_k, 0xAB, pool);
            memset(want_v, 0xAB, pool);
            for (int r = 0; r < n_rows; r++)
                if (slots[r] >= 0) {
                    cpu_store_row(type, k + (size_t)r * n_elem, n_elem, want_k + (size_t)slots[r] * tb);
                    cpu_store_row(type, v + (size_t)r * n_elem, n_elem, want_v + (size_t)slots[r] * tb);
                }
            void *dk = dalloc(pool), *dv = dalloc(pool);
            assert_int_equal(cudaMemset(dk, 0xAB, pool), cudaSuccess);
            assert_int_equal(cudaMemset(dv, 0xAB, pool), cudaSuccess);
            float *dsk = dup_to_dev(k, (size_t)n_rows * (size_t)n_elem * 4);
            float *dsv = dup_to_dev(v, (size_t)n_rows * (size_t)n_elem * 4);
            int32_t *dslots = dup_to_dev(slots, sizeof slots);
            exsa_kv_layer kv = {dk, dv, type, 16, n_kv, hd, tb};
            sync_ok(exsa_cuda_kv_store(&kv, dsk, dsv, dslots, n_rows, 0));
            size_t diff_k = 0, diff_v = 0;
            to_host(got, dk, pool);
            for (size_t i = 0; i < pool; i++)
                diff_k += got[i] != want_k[i];
            to_host(got, dv, pool);
            for (size_t i = 0; i < pool; i++)
                diff_v += got[i] != want_v[i];
            printf("  kv_store %-4s n_kv %d hd %3d: %zu K and %zu V bytes differ\n",
                   type_name(type), n_kv, hd, diff_k, diff_v);
            assert_int_equal(diff_k, 0);
            assert_int_equal(diff_v, 0);
            cudaFree(dk);
            cudaFree(dv);
            cudaFree(dsk);
            cudaFree(dsv);
            cudaFree(dslots);
            free(k);
            free(v);
            free(want_k);
            free(want_v);
            free(got);
        }
}

/* ------------------------------------------------------------ attention */

typedef struct {
    const char *name;
    int type, head_dim, n_kv, group, block_size;
    int n_rows;   /* decode rows (different tables, some shared), or */
    int prefill;  /* n_rows consecutive positions of one sequence */
    int window;
    int max_len;  /* longest context */
} attn_case;

static const attn_case attn_cases[] = {
    {"F32 hd64 gqa1 decode", EXSA_TYPE_F32, 64, 4, 1, 16, 7, 0, 0, 3000},
    {"F32 hd128 gqa4 decode", EXSA_TYPE_F32, 128, 2, 4, 16, 5, 0, 0, 3000},
    {"F32 hd256 gqa8 decode", EXSA_TYPE_F32, 256, 2, 8, 16, 3, 0, 0, 3000},
    {"F32 hd80 gqa4 prefill", EXSA_TYPE_F32, 80, 2, 4, 16, 64, 1, 0, 3000},
    {"F32 hd64 gqa8 prefill window 100", EXSA_TYPE_F32, 64, 1, 8, 16, 64, 1, 100, 2000},
    {"F32 hd64 gqa4 decode short (one split)", EXSA_TYPE_F32, 64, 2, 4, 16, 3, 0, 0, 40},
    {"F32 hd64 gqa1 prefill 257 rows (one split)", EXSA_TYPE_F32, 64, 2, 1, 16, 257, 1, 0, 1500},
    {"F16 hd128 gqa8 decode", EXSA_TYPE_F16, 128, 2, 8, 16, 6, 0, 0, 3000},
    {"F16 hd256 gqa4 prefill", EXSA_TYPE_F16, 256, 1, 4, 16, 64, 1, 0, 3000},
    {"F16 hd80 gqa1 decode bs7", EXSA_TYPE_F16, 80, 2, 1, 7, 4, 0, 0, 3000},
    {"F16 hd128 gqa4 decode window 100", EXSA_TYPE_F16, 128, 2, 4, 16, 5, 0, 100, 3000},
    {"F16 hd64 gqa12 decode", EXSA_TYPE_F16, 64, 1, 12, 16, 3, 0, 0, 2500},
    {"Q8_0 hd64 gqa4 decode", EXSA_TYPE_Q8_0, 64, 2, 4, 16, 7, 0, 0, 3000},
    {"Q8_0 hd80 gqa8 prefill", EXSA_TYPE_Q8_0, 80, 2, 8, 16, 64, 1, 0, 3000},
    {"Q8_0 hd256 gqa1 decode", EXSA_TYPE_Q8_0, 256, 1, 1, 16, 4, 0, 0, 3000},
    {"Q8_0 hd128 gqa8 decode window 100 bs5", EXSA_TYPE_Q8_0, 128, 1, 8, 5, 5, 0, 100, 3000},
};

/* A cache token row of NaNs in the cache's type. */
static void nan_row(int type, int64_t n_elem, void *dst, size_t tb)
{
    if (type == EXSA_TYPE_F32) {
        float *f = dst;
        for (int64_t i = 0; i < n_elem; i++)
            f[i] = NAN;
    } else if (type == EXSA_TYPE_F16) {
        exsa_fp16 *h = dst;
        for (int64_t i = 0; i < n_elem; i++)
            h[i] = 0x7e00;
    } else {
        memset(dst, 0x11, tb);
        exsa_block_q8_0 *b = dst;
        for (int64_t i = 0; i < n_elem / EXSA_QK8_0; i++)
            b[i].d = 0x7e00;
    }
}

static void dequant_row(int type, const void *src, int64_t n_elem, float *dst)
{
    if (type == EXSA_TYPE_F32)
        memcpy(dst, src, (size_t)n_elem * 4);
    else if (type == EXSA_TYPE_F16)
        for (int64_t i = 0; i < n_elem; i++)
            dst[i] = exsa_fp16_to_fp32(((const exsa_fp16 *)src)[i]);
    else
        exsa_dequantize_row_q8_0(src, dst, n_elem);
}

static void run_attn_case(const attn_case *c, uint64_t *rng)
{
    const int hd = c->head_dim, n_kv = c->n_kv, n_head = n_kv * c->group, bs = c->block_size;
    const int n_rows = c->n_rows;
    const int64_t n_elem = (int64_t)n_kv * hd;
    const size_t tb = token_bytes_for(c->type, n_elem);

    /* rows -> tables and contexts */
    const int n_tables = c->prefill ? 1 : (n_rows > 2 ? n_rows - 2 : n_rows);
    int32_t *row_tab = xmalloc((size_t)n_rows * 4), *n_ctx = xmalloc((size_t)n_rows * 4);
    if (c->prefill) {
        const int start = rand_int(rng, 0, c->max_len - n_rows);
        for (int r = 0; r < n_rows; r++) {
            row_tab[r] = 0;
            n_ctx[r] = start + r + 1;
        }
    } else {
        for (int r = 0; r < n_rows; r++) {
            row_tab[r] = r % n_tables;
            n_ctx[r] = rand_int(rng, 1, c->max_len);
        }
        if (n_rows > 3)
            n_ctx[0] = 1;
        n_ctx[n_rows - 1] = c->max_len;
    }
    int max_ctx = 0;
    for (int r = 0; r < n_rows; r++)
        max_ctx = n_ctx[r] > max_ctx ? n_ctx[r] : max_ctx;
    /* short cases keep cap_ctx <= 64 tokens (one split, no scratch, in
     * the kernel as written) */
    const int cap_ctx = max_ctx + rand_int(rng, 1, c->max_len < 64 && max_ctx < 64 ? 64 - max_ctx : 1200);

    /* each table's readable span [lo, hi) over its rows */
    int *t_lo = xmalloc((size_t)n_tables * sizeof(int)), *t_hi = xmalloc((size_t)n_tables * sizeof(int));
    for (int t = 0; t < n_tables; t++) {
        t_lo[t] = INT32_MAX;
        t_hi[t] = 0;
    }
    for (int r = 0; r < n_rows; r++) {
        const int t = row_tab[r];
        const int lo = c->window > 0 && n_ctx[r] > c->window ? n_ctx[r] - c->window : 0;
        t_lo[t] = lo < t_lo[t] ? lo : t_lo[t];
        t_hi[t] = n_ctx[r] > t_hi[t] ? n_ctx[r] : t_hi[t];
    }

    /* flat tables over a shuffled pool; unused entries name a NaN block */
    const int bt_stride = (cap_ctx + bs - 1) / bs + 3;
    int n_used = 0;
    for (int t = 0; t < n_tables; t++)
        n_used += (t_hi[t] + bs - 1) / bs;
    const int n_blocks = n_used + 9;
    int *perm = xmalloc((size_t)n_blocks * sizeof(int));
    for (int i = 0; i < n_blocks; i++)
        perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        const int j = rand_int(rng, 0, i), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    const int nan_block = perm[n_blocks - 1];
    int32_t *table = xmalloc((size_t)n_tables * (size_t)bt_stride * 4);
    int next = 0;
    for (int t = 0; t < n_tables; t++)
        for (int b = 0; b < bt_stride; b++)
            table[(size_t)t * bt_stride + b] = b * bs < t_hi[t] ? perm[next++] : nan_block;

    /* the pool: NaN everywhere, real K/V where some row may read */
    const size_t n_slots = (size_t)n_blocks * (size_t)bs;
    unsigned char *kc = xmalloc(n_slots * tb), *vc = xmalloc(n_slots * tb);
    for (size_t s = 0; s < n_slots; s++) {
        nan_row(c->type, n_elem, kc + s * tb, tb);
        nan_row(c->type, n_elem, vc + s * tb, tb);
    }
    float *tmp = xmalloc((size_t)n_elem * 4);
    for (int t = 0; t < n_tables; t++)
        for (int p = t_lo[t]; p < t_hi[t]; p++) {
            const size_t slot = (size_t)table[(size_t)t * bt_stride + p / bs] * bs + (size_t)(p % bs);
            fill_normal(rng, tmp, (size_t)n_elem, 1.0f);
            cpu_store_row(c->type, tmp, n_elem, kc + slot * tb);
            fill_normal(rng, tmp, (size_t)n_elem, 1.0f);
            cpu_store_row(c->type, tmp, n_elem, vc + slot * tb);
        }
    /* the reference reads the cache's own values */
    float *kf = xmalloc(n_slots * (size_t)n_elem * 4), *vf = xmalloc(n_slots * (size_t)n_elem * 4);
    for (size_t s = 0; s < n_slots; s++) {
        dequant_row(c->type, kc + s * tb, n_elem, kf + s * (size_t)n_elem);
        dequant_row(c->type, vc + s * tb, n_elem, vf + s * (size_t)n_elem);
    }

    const size_t n_q = (size_t)n_rows * (size_t)n_head * (size_t)hd;
    float *q = xmalloc(n_q * 4), *got = xmalloc(n_q * 4);
    double *ref = xmalloc(n_q * sizeof *ref);
    fill_normal(rng, q, n_q, 1.5f);
    const float scale = 1.0f / sqrtf((float)hd);
    double *w = xmalloc((size_t)max_ctx * sizeof *w);
    for (int r = 0; r < n_rows; r++) {
        const int hi = n_ctx[r];
        const int lo = c->window > 0 && hi > c->window ? hi - c->window : 0;
        const int32_t *tab = table + (size_t)row_tab[r] * bt_stride;
        for (int h = 0; h < n_head; h++) {
            const int g = h / c->group;
            const float *qh = q + ((size_t)r * n_head + h) * hd;
            double m = -INFINITY, l = 0;
            for (int p = lo; p < hi; p++) {
                const size_t slot = (size_t)tab[p / bs] * bs + (size_t)(p % bs);
                const float *kr = kf + slot * (size_t)n_elem + (size_t)g * hd;
                double s = 0;
                for (int d = 0; d < hd; d++)
                    s += (double)qh[d] * kr[d];
                w[p] = s * scale;
                m = w[p] > m ? w[p] : m;
            }
            double *o = ref + ((size_t)r * n_head + h) * hd;
            for (int d = 0; d < hd; d++)
                o[d] = 0;
            for (int p = lo; p < hi; p++) {
                const size_t slot = (size_t)tab[p / bs] * bs + (size_t)(p % bs);
                const float *vr = vf + slot * (size_t)n_elem + (size_t)g * hd;
                const double e = exp(w[p] - m);
                l += e;
                for (int d = 0; d < hd; d++)
                    o[d] += e * vr[d];
            }
            for (int d = 0; d < hd; d++)
                o[d] /= l;
        }
    }

    void *dk = dup_to_dev(kc, n_slots * tb), *dv = dup_to_dev(vc, n_slots * tb);
    float *dq = dup_to_dev(q, n_q * 4), *dout = dalloc(n_q * 4);
    int32_t *dctx = dup_to_dev(n_ctx, (size_t)n_rows * 4);
    int32_t *dtab = dup_to_dev(row_tab, (size_t)n_rows * 4);
    int32_t *dbt = dup_to_dev(table, (size_t)n_tables * (size_t)bt_stride * 4);
    exsa_kv_layer kv = {dk, dv, c->type, bs, n_kv, hd, tb};
    exsa_attn_args a = {n_rows, n_head, dq, dout, dctx, dtab, dbt, bt_stride, max_ctx,
                        cap_ctx, &kv, scale, c->window};
    const size_t scratch_bytes = exsa_cuda_attention_scratch_bytes(&a);
    void *scratch = scratch_bytes ? dalloc(scratch_bytes) : NULL;
    if (scratch)
        poison(scratch, scratch_bytes);
    poison(dout, n_q * 4);
    sync_ok(exsa_cuda_attention(&a, scratch, 0));
    to_host(got, dout, n_q * 4);
    char what[128];
    snprintf(what, sizeof what, "attn %s (rows %d, ctx %d..%d, cap %d, scratch %zu)", c->name,
             n_rows, n_ctx[0], max_ctx, cap_ctx, scratch_bytes);
    check_close(what, got, ref, n_q, TOL);

    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(dctx);
    cudaFree(dtab);
    cudaFree(dbt);
    if (scratch)
        cudaFree(scratch);
    free(row_tab);
    free(n_ctx);
    free(t_lo);
    free(t_hi);
    free(perm);
    free(table);
    free(kc);
    free(vc);
    free(tmp);
    free(kf);
    free(vf);
    free(q);
    free(got);
    free(ref);
    free(w);
}

static void test_attention(void **state)
{
    (void)state;
    uint64_t rng = rng_for(7);
    for (int i = 0; i < ARRAY_LEN(attn_cases); i++)
        run_attn_case(&attn_cases[i], &rng);
}

int main(void)
{
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    const char *env = getenv("EXSA_TEST_SEED");
    g_seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL);
    printf("seed %llu (EXSA_TEST_SEED replays it)\n", (unsigned long long)g_seed);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rms_norm),   cmocka_unit_test(test_add_bias_add_scale),
        cmocka_unit_test(test_rope),       cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_gated),      cmocka_unit_test(test_kv_store),
        cmocka_unit_test(test_attention),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
