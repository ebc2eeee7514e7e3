/* CPU kernel tables: every SIMD table against the scalar one, and the scalar
 * one against an independent double-precision reference.
 *
 * Dots: random weights quantized with quant.c's reference quantizers,
 * activations quantized with the reference Q8_0/Q8_K quantizers, awkward
 * sizes, 1..9 activation rows at padded strides and a strided output.
 *   - scalar vs sum(dequant(w) * dequant(a)) in double, and
 *   - ISA vs scalar,
 * both within TOL of sum(|dequant(w_i) * dequant(a_i)|) (rounding of float
 * sums and of per-block scale products stays far below it).
 * Batch invariance, every table: each activation row's dot is bit-identical
 * (memcmp) whether computed alone or at any position of a call of 1..9 rows.
 * Activation quantizers: byte-equal to the reference, ties included.
 * f16 conversions: bit-equal to quant.c's converters (NaN: NaN).
 *
 * An ISA the CPU lacks is reported as skipped ("not tested"), never passed.
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
#include <sys/wait.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_features.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/kernels_internal.h"
#include "quant/quant.h"
#include "test_util.h"

#define TOL 1e-5

static const int weight_types[] = {
    EXSA_TYPE_F32,  EXSA_TYPE_F16,  EXSA_TYPE_BF16, EXSA_TYPE_Q4_0, EXSA_TYPE_Q4_1,
    EXSA_TYPE_Q5_0, EXSA_TYPE_Q5_1, EXSA_TYPE_Q8_0, EXSA_TYPE_Q2_K, EXSA_TYPE_Q3_K,
    EXSA_TYPE_Q4_K, EXSA_TYPE_Q5_K, EXSA_TYPE_Q6_K,
};
#define N_WEIGHT_TYPES (int)(sizeof(weight_types) / sizeof(weight_types[0]))

static const int n_acts[] = {1, 2, 3, 4, 5, 7, 9};
static const int sizes_float[] = {1, 7, 8, 31, 33, 100, 256, 544};
static const int sizes_b32[] = {32, 64, 96, 256, 544};
static const int sizes_k[] = {256, 768, 2816};
static const uint64_t seeds[] = {1, 77, 4242};

#define ARRAY_LEN(a) (int)(sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------ test data */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

/* Normal values with a per-32 magnitude drift, so blocks differ in scale. */
static void fill_random(float *x, int n, uint64_t *rng)
{
    float scale = 1.0f;
    for (int i = 0; i < n; i++) {
        if (i % 32 == 0)
            scale = 0.05f + 2.0f * exsa_test_rand_uniform(rng);
        x[i] = scale * exsa_test_rand_normal(rng);
    }
}

/* One weight row of type t (raw bytes) plus its float values. */
typedef struct {
    void *raw;
    float *deq;
    size_t bytes;
} row_data;

static void make_weight(int t, int n, uint64_t *rng, row_data *r)
{
    const exsa_type_traits *tr = exsa_type_traits_get(t);
    assert_non_null(tr);
    float *src = xmalloc((size_t)n * sizeof(float));
    fill_random(src, n, rng);
    if (tr->is_quantized && n >= 2 * tr->block_size) /* an all-zero block (d = 0) */
        memset(src, 0, (size_t)tr->block_size * sizeof(float));
    r->bytes = exsa_type_row_size(t, n);
    r->raw = xmalloc(r->bytes); /* exact size: ASan catches overreads */
    tr->from_float(src, r->raw, n);
    r->deq = xmalloc((size_t)n * sizeof(float));
    tr->to_float(r->raw, r->deq, n);
    free(src);
}

/* n_act activation rows of type at, act_stride bytes apart; padding bytes
 * hold garbage so a kernel that reads past its row gets a wrong answer. */
typedef struct {
    char *raw;
    float *deq; /* [n_act][n] */
    size_t stride;
} act_data;

static void make_acts(int at, int n, int n_act, uint64_t *rng, act_data *a)
{
    const exsa_type_traits *tr = exsa_type_traits_get(at);
    const size_t row = exsa_type_row_size(at, n);
    a->stride = row + 4 * (1 + exsa_test_rand_u64(rng) % 7);
    const size_t total = (size_t)(n_act - 1) * a->stride + row; /* last row ends the buffer */
    a->raw = xmalloc(total);
    memset(a->raw, 0xA5, total);
    a->deq = xmalloc((size_t)n_act * n * sizeof(float));
    float *src = xmalloc((size_t)n * sizeof(float));
    for (int j = 0; j < n_act; j++) {
        fill_random(src, n, rng);
        if (j == 1 && n >= 512) /* an all-zero activation block */
            memset(src, 0, 256 * sizeof(float));
        tr->from_float(src, a->raw + (size_t)j * a->stride, n);
        tr->to_float(a->raw + (size_t)j * a->stride, a->deq + (size_t)j * n, n);
    }
    free(src);
}

static void exact_dot(const float *w, const float *a, int n, double *dot, double *mag)
{
    double s = 0.0, m = 0.0;
    for (int i = 0; i < n; i++) {
        const double p = (double)w[i] * a[i];
        s += p;
        m += fabs(p);
    }
    *dot = s;
    *mag = m;
}

/* --------------------------------------------------------------- dots */

#define OUT_STRIDE 3
#define SENTINEL -12345.0f

static void run_dot(exsa_dot_fn f, int n, const row_data *w, const act_data *a, int n_act,
                    float *out)
{
    for (int j = 0; j < n_act * OUT_STRIDE; j++)
        out[j] = SENTINEL;
    f(n, w->raw, a->raw, a->stride, n_act, out, OUT_STRIDE);
    for (int j = 0; j < n_act * OUT_STRIDE; j++)
        if (j % OUT_STRIDE)
            assert_true(out[j] == SENTINEL); /* only every OUT_STRIDE-th is written */
}

static double worst; /* largest |err| / (TOL * mag) seen by check_close */

static int check_close(const char *what, const char *isa, int t, int n, int n_act, int row,
                       double got, double want, double mag)
{
    const double err = fabs(got - want);
    if (mag > 0 && err / (TOL * mag) > worst)
        worst = err / (TOL * mag);
    if (err <= TOL * mag)
        return 1;
    print_error("%s %s %s: n=%d n_act=%d row=%d got %.9g want %.9g (|err| %.3g > %.3g)\n", isa,
                what, exsa_type_traits_get(t)->name, n, n_act, row, got, want, err, TOL * mag);
    return 0;
}

static void sizes_for(int t, const int **sizes, int *count)
{
    const exsa_type_traits *tr = exsa_type_traits_get(t);
    if (tr->block_size == 1) {
        *sizes = sizes_float;
        *count = ARRAY_LEN(sizes_float);
    } else if (tr->block_size == 32) {
        *sizes = sizes_b32;
        *count = ARRAY_LEN(sizes_b32);
    } else {
        *sizes = sizes_k;
        *count = ARRAY_LEN(sizes_k);
    }
}

/* isa == NULL: scalar against the double reference; else isa vs scalar. */
static void check_dots(const exsa_cpu_kernels *isa)
{
    const exsa_cpu_kernels *sc = exsa_cpu_kernels_scalar();
    int failures = 0, cases = 0;
    worst = 0.0;
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const int t = weight_types[ti];
        const int at = exsa_type_traits_get(t)->vec_dot_type;
        assert_non_null(sc->dot[t]);
        if (isa)
            assert_non_null(isa->dot[t]);
        const int *sizes;
        int n_sizes;
        sizes_for(t, &sizes, &n_sizes);
        for (int si = 0; si < ARRAY_LEN(seeds); si++) {
            uint64_t rng = seeds[si] * 1000003u + (uint64_t)t;
            for (int ni = 0; ni < n_sizes; ni++) {
                const int n = sizes[ni];
                for (int ai = 0; ai < ARRAY_LEN(n_acts); ai++) {
                    const int n_act = n_acts[ai];
                    row_data w;
                    act_data a;
                    make_weight(t, n, &rng, &w);
                    make_acts(at, n, n_act, &rng, &a);
                    float out_s[9 * OUT_STRIDE], out_i[9 * OUT_STRIDE];
                    run_dot(sc->dot[t], n, &w, &a, n_act, out_s);
                    if (isa)
                        run_dot(isa->dot[t], n, &w, &a, n_act, out_i);
                    for (int j = 0; j < n_act; j++) {
                        double want, mag;
                        exact_dot(w.deq, a.deq + (size_t)j * n, n, &want, &mag);
                        const float s = out_s[j * OUT_STRIDE];
                        int ok = isa ? check_close("dot vs scalar", isa->isa, t, n, n_act, j,
                                                   out_i[j * OUT_STRIDE], s, mag)
                                     : check_close("dot vs double", "scalar", t, n, n_act, j, s,
                                                   want, mag);
                        failures += !ok;
                        cases++;
                    }
                    free(w.raw);
                    free(w.deq);
                    free(a.raw);
                    free(a.deq);
                }
            }
        }
    }
    printf("    %s: %d dot results checked, worst error %.3f of the tolerance\n",
           isa ? isa->isa : "scalar vs double", cases, worst);
    assert_int_equal(failures, 0);
}

/* ------------------------------------------------- batch invariance */

/* Sizes that reach every loop tail: float steps of 64/32/16/8 and scalar or
 * masked leftovers; odd and even 32-block counts; one and three superblocks. */
static const int inv_sizes_float[] = {1, 31, 100, 544, 1031};
static const int inv_sizes_b32[] = {32, 96, 544, 1056, 2048};
static const int inv_sizes_k[] = {256, 768};

/* For every row j of 9, its result alone (n_act = 1) is the reference; every
 * call of n_act = 1..9 rows starting at any row s must reproduce the
 * references of rows s..s+n_act-1 bit for bit. A kernel that sums in an
 * order depending on the group size or the row's place in it fails. */
static void check_batch_invariance(const exsa_cpu_kernels *k)
{
    enum { ROWS = 9 };
    int calls = 0;
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const int t = weight_types[ti];
        const exsa_type_traits *tr = exsa_type_traits_get(t);
        assert_non_null(k->dot[t]);
        const int *sizes = tr->block_size == 1    ? inv_sizes_float
                           : tr->block_size == 32 ? inv_sizes_b32
                                                  : inv_sizes_k;
        const int n_sizes = tr->block_size == 1    ? ARRAY_LEN(inv_sizes_float)
                            : tr->block_size == 32 ? ARRAY_LEN(inv_sizes_b32)
                                                   : ARRAY_LEN(inv_sizes_k);
        for (int ni = 0; ni < n_sizes; ni++) {
            const int n = sizes[ni];
            uint64_t rng = 0xB47C4u + 31u * (uint64_t)t + (uint64_t)n;
            row_data w;
            act_data a;
            make_weight(t, n, &rng, &w);
            make_acts(tr->vec_dot_type, n, ROWS, &rng, &a);
            float alone[ROWS];
            for (int j = 0; j < ROWS; j++) {
                float o[OUT_STRIDE];
                k->dot[t](n, w.raw, a.raw + (size_t)j * a.stride, a.stride, 1, o, OUT_STRIDE);
                alone[j] = o[0];
            }
            for (int n_act = 1; n_act <= ROWS; n_act++) {
                for (int s0 = 0; s0 + n_act <= ROWS; s0++) {
                    float out[ROWS * OUT_STRIDE];
                    k->dot[t](n, w.raw, a.raw + (size_t)s0 * a.stride, a.stride, n_act, out,
                              OUT_STRIDE);
                    calls++;
                    for (int j = 0; j < n_act; j++)
                        if (memcmp(&out[j * OUT_STRIDE], &alone[s0 + j], sizeof(float)) != 0)
                            fail_msg("%s %s n=%d: row %d at position %d of %d gives %a, "
                                     "alone %a",
                                     k->isa, tr->name, n, s0 + j, j, n_act,
                                     (double)out[j * OUT_STRIDE], (double)alone[s0 + j]);
                }
            }
            free(w.raw);
            free(w.deq);
            free(a.raw);
            free(a.deq);
        }
    }
    printf("    %s: %d batched calls bit-identical to single-row calls\n", k->isa, calls);
}

/* ------------------------------------------------------ quantizers */

/* Inputs with exact ties, zero blocks, and the largest magnitude present
 * with both signs (the reference keeps the first). */
static void fill_quant_input(float *x, int n, int block, int variant, uint64_t *rng)
{
    fill_random(x, n, rng);
    for (int b = 0; b < n / block; b++) {
        float *xb = x + b * block;
        switch ((b + variant) % 5) {
        case 0: /* Q8_0: amax 127 gives d = 1; Q8_K: max -127 gives iscale 1 */
            for (int i = 0; i < block; i++)
                xb[i] = (float)((int)(exsa_test_rand_u64(rng) % 200) - 100) + 0.5f;
            xb[block / 2] = -127.0f;
            break;
        case 1:
            memset(xb, 0, (size_t)block * sizeof(float));
            break;
        case 2: /* equal magnitudes, opposite signs */
            xb[3] = -4.0f;
            xb[block - 2] = 4.0f;
            for (int i = 0; i < block; i++)
                if (fabsf(xb[i]) > 4.0f)
                    xb[i] *= 0.5f;
            break;
        case 3: /* tiny and huge scales */
            for (int i = 0; i < block; i++)
                xb[i] *= (b & 1) ? 1e-30f : 1e30f;
            break;
        default:
            break;
        }
    }
}

/* The repacked kernels' activation blocks, built here from the Q8_0
 * reference by their definition (kernels.h). */
static void want_q8_0sa(const float *x, int n, int with_abs, unsigned char *out)
{
    for (int b = 0; b < n / EXSA_QK8_0; b++) {
        exsa_block_q8_0 q;
        exsa_quantize_row_q8_0_ref(x + EXSA_QK8_0 * b, &q, EXSA_QK8_0);
        const float d = exsa_fp16_to_fp32(q.d);
        if (with_abs) {
            exsa_block_q8_0a a;
            a.d = d;
            memcpy(a.qs, q.qs, 32);
            for (int i = 0; i < 32; i++)
                a.aqs[i] = (uint8_t)abs(q.qs[i]);
            for (int k = 0; k < 8; k++) {
                int32_t s = 0;
                for (int i = 4 * k; i < 4 * k + 4; i++)
                    s += q.qs[i];
                a.corr[k] = -128 * s;
            }
            memcpy(out + (size_t)b * sizeof a, &a, sizeof a);
        } else {
            exsa_block_q8_0s a;
            a.d = d;
            a.sum = 0;
            for (int i = 0; i < 32; i++)
                a.sum += q.qs[i];
            memcpy(a.qs, q.qs, 32);
            memcpy(out + (size_t)b * sizeof a, &a, sizeof a);
        }
    }
}

static void check_quantizers(const exsa_cpu_kernels *isa)
{
    /* q8_0s / q8_0a: blocks with -128-free values, zero blocks, ties */
    for (int with_abs = 0; with_abs < 2; with_abs++) {
        const size_t blk = with_abs ? sizeof(exsa_block_q8_0a) : sizeof(exsa_block_q8_0s);
        for (int si = 0; si < ARRAY_LEN(seeds); si++) {
            uint64_t rng = seeds[si] + 7u * (unsigned)with_abs;
            for (int nb = 1; nb <= 70; nb += 23) {
                for (int variant = 0; variant < 5; variant++) {
                    const int n = EXSA_QK8_0 * nb;
                    float *x = xmalloc((size_t)n * sizeof(float));
                    unsigned char *want = xmalloc(blk * (size_t)nb), *got = xmalloc(blk * (size_t)nb);
                    fill_quant_input(x, n, EXSA_QK8_0, variant, &rng);
                    want_q8_0sa(x, n, with_abs, want);
                    memset(got, 0xC3, blk * (size_t)nb);
                    (with_abs ? isa->quantize_q8_0a : isa->quantize_q8_0s)(x, got, n);
                    if (memcmp(want, got, blk * (size_t)nb) != 0) {
                        size_t at = 0;
                        while (want[at] == got[at])
                            at++;
                        fail_msg("%s quantize_q8_0%s: n=%d variant %d differs at byte %zu of "
                                 "block %zu (%d vs %d)",
                                 isa->isa, with_abs ? "a" : "s", n, variant, at % blk, at / blk,
                                 got[at], want[at]);
                    }
                    free(x);
                    free(want);
                    free(got);
                }
            }
        }
    }

    static const int nblocks[] = {1, 2, 3, 8, 17};
    for (int q = 0; q < 2; q++) {
        const int block = q == 0 ? EXSA_QK8_0 : EXSA_QK_K;
        const int type = q == 0 ? EXSA_TYPE_Q8_0 : EXSA_TYPE_Q8_K;
        for (int si = 0; si < ARRAY_LEN(seeds); si++) {
            uint64_t rng = seeds[si] + 99u * q;
            for (int bi = 0; bi < ARRAY_LEN(nblocks); bi++) {
                for (int variant = 0; variant < 5; variant++) {
                    const int n = block * nblocks[bi];
                    const size_t bytes = exsa_type_row_size(type, n);
                    float *x = xmalloc((size_t)n * sizeof(float));
                    unsigned char *want = xmalloc(bytes), *got = xmalloc(bytes);
                    fill_quant_input(x, n, block, variant, &rng);
                    memset(want, 0x5A, bytes);
                    memset(got, 0xC3, bytes);
                    if (q == 0) {
                        exsa_quantize_row_q8_0_ref(x, want, n);
                        isa->quantize_q8_0(x, got, n);
                    } else {
                        exsa_quantize_row_q8_K_ref(x, want, n);
                        isa->quantize_q8_K(x, got, n);
                    }
                    if (memcmp(want, got, bytes) != 0) {
                        size_t at = 0;
                        while (want[at] == got[at])
                            at++;
                        fail_msg("%s quantize_%s: n=%d variant %d differs at byte %zu (%d vs %d)",
                                 isa->isa, q == 0 ? "q8_0" : "q8_K", n, variant, at, got[at],
                                 want[at]);
                    }
                    free(x);
                    free(want);
                    free(got);
                }
            }
        }
    }
}

/* ---------------------------------------------------- float helpers */

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* swiglu against kernels.h's formula (exsa_exp_neg) bit for bit, odd
 * lengths and specials (signed zeros, +-inf, NaN, past exp's range), in
 * place too; and against double-precision SiLU within 4e-7 relative. */
static void check_swiglu(const exsa_cpu_kernels *k)
{
    enum { N = 67 };
    float g[N] = {0}, u[N] = {0}, out[N], want[N];
    double worst = 0;
    uint64_t rng = 0x5111u;
    for (int n = 0; n <= N; n += n < 20 ? 1 : 23) {
        for (int i = 0; i < n; i++) {
            g[i] = (float)(exsa_test_rand_normal(&rng) * 8.0);
            u[i] = (float)exsa_test_rand_normal(&rng);
        }
        static const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 90.0f, -90.0f,
                                         -87.5f, 1e-30f, -1e-30f};
        for (int i = 0; i < n && i < ARRAY_LEN(specials); i++)
            g[(i * 7) % n] = specials[i];
        for (int i = 0; i < n; i++) {
            const float x = g[i], t = exsa_exp_neg(-fabsf(x));
            want[i] = x * ((x >= 0.0f ? 1.0f : t) / (1.0f + t)) * u[i];
            if (isfinite(x) && fabsf(x) < 80.0f) {
                const double e = (double)x / (1.0 + exp(-(double)x)) * u[i];
                const double r = fabs(want[i] - e) / (fabs(e) + 1e-30);
                worst = r > worst ? r : worst;
            }
        }
        k->swiglu(g, u, out, n);
        for (int i = 0; i < n; i++)
            if (memcmp(&out[i], &want[i], sizeof(float)) != 0)
                fail_msg("%s swiglu n %d [%d]: g %.9g got %.9g want %.9g", k->isa, n, i,
                         (double)g[i], (double)out[i], (double)want[i]);
        k->swiglu(g, u, g, n); /* out aliases g */
        for (int i = 0; i < n; i++)
            if (memcmp(&g[i], &want[i], sizeof(float)) != 0)
                fail_msg("%s swiglu in place n %d [%d]", k->isa, n, i);
    }
    assert_true(worst < 4e-7);
}

/* geglu against kernels.h's formula bit for bit (odd lengths, specials,
 * in place), and against double-precision tanh GELU times up within 2e-6
 * relative (1e-12 absolute). */
static void check_geglu(const exsa_cpu_kernels *k)
{
    enum { N = 67 };
    float g[N] = {0}, u[N] = {0}, out[N], want[N];
    double worst = 0;
    uint64_t rng = 0x6e61u;
    for (int n = 0; n <= N; n += n < 20 ? 1 : 23) {
        for (int i = 0; i < n; i++) {
            g[i] = (float)(exsa_test_rand_normal(&rng) * 4.0);
            u[i] = (float)exsa_test_rand_normal(&rng);
        }
        static const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 20.0f, -20.0f,
                                         -5.5f, 1e-30f, -1e-30f};
        for (int i = 0; i < n && i < ARRAY_LEN(specials); i++)
            g[(i * 7) % n] = specials[i];
        for (int i = 0; i < n; i++) {
            const float x = g[i], y = (EXSA_GELU_2C * x) * (1.0f + (EXSA_GELU_A * x) * x);
            const float t = exsa_exp_neg(-fabsf(y));
            want[i] = x * ((y >= 0.0f ? 1.0f : t) / (1.0f + t)) * u[i];
            if (isfinite(x) && fabsf(x) < 9.0f) {
                const double xd = x, c = sqrt(2.0 / M_PI);
                /* 0.5 (1 + tanh(z)) as 1 / (1 + exp(-2z)): no cancellation */
                const double e = xd / (1.0 + exp(-2.0 * c * (xd + 0.044715 * xd * xd * xd))) * u[i];
                const double r = fabs(want[i] - e) / (fabs(e) + 1e-12);
                worst = r > worst ? r : worst;
            }
        }
        k->geglu(g, u, out, n);
        for (int i = 0; i < n; i++)
            if (memcmp(&out[i], &want[i], sizeof(float)) != 0)
                fail_msg("%s geglu n %d [%d]: g %.9g got %.9g want %.9g", k->isa, n, i,
                         (double)g[i], (double)out[i], (double)want[i]);
        k->geglu(g, u, g, n); /* out aliases g */
        for (int i = 0; i < n; i++)
            if (memcmp(&g[i], &want[i], sizeof(float)) != 0)
                fail_msg("%s geglu in place n %d [%d]", k->isa, n, i);
    }
    if (!(worst < 2e-6))
        fail_msg("%s geglu: %.3g relative from tanh GELU", k->isa, worst);
}

static void check_float_helpers(const exsa_cpu_kernels *isa)
{
    static const int sizes[] = {0, 1, 5, 8, 9, 31, 32, 33, 64, 100, 257};
    const exsa_cpu_kernels *sc = exsa_cpu_kernels_scalar();
    for (int si = 0; si < ARRAY_LEN(seeds); si++) {
        uint64_t rng = seeds[si] + 5u;
        for (int zi = 0; zi < ARRAY_LEN(sizes); zi++) {
            const int n = sizes[zi];
            float *x = xmalloc((size_t)n * sizeof(float));
            float *y = xmalloc((size_t)n * sizeof(float));
            float *xh_f = xmalloc((size_t)n * sizeof(float));
            exsa_fp16 *xh = xmalloc((size_t)n * sizeof(exsa_fp16));
            float *ys = xmalloc((size_t)n * sizeof(float));
            float *yi = xmalloc((size_t)n * sizeof(float));
            fill_random(x, n, &rng);
            fill_random(y, n, &rng);
            for (int i = 0; i < n; i++) {
                xh[i] = exsa_fp32_to_fp16(x[i]);
                xh_f[i] = exsa_fp16_to_fp32(xh[i]);
            }
            double want, mag;
            exact_dot(x, y, n, &want, &mag);
            assert_true(fabs(sc->dot_f32(n, x, y) - want) <= TOL * mag);
            assert_true(fabs(isa->dot_f32(n, x, y) - want) <= TOL * mag);
            exact_dot(xh_f, y, n, &want, &mag);
            assert_true(fabs(sc->dot_f16_f32(n, xh, y) - want) <= TOL * mag);
            assert_true(fabs(isa->dot_f16_f32(n, xh, y) - want) <= TOL * mag);

            /* axpy: fused or not, each element within a few ulps */
            const float alpha = exsa_test_rand_normal(&rng);
            for (int pass = 0; pass < 2; pass++) {
                memcpy(ys, y, (size_t)n * sizeof(float));
                memcpy(yi, y, (size_t)n * sizeof(float));
                if (pass == 0) {
                    sc->axpy_f32(n, alpha, x, ys);
                    isa->axpy_f32(n, alpha, x, yi);
                } else {
                    sc->axpy_f16(n, alpha, xh, ys);
                    isa->axpy_f16(n, alpha, xh, yi);
                }
                for (int i = 0; i < n; i++) {
                    const double xv = pass == 0 ? x[i] : xh_f[i];
                    const double exact = (double)y[i] + (double)alpha * xv;
                    const double bound = 4e-7 * (fabs(y[i]) + fabs(alpha * xv));
                    assert_true(fabs(ys[i] - exact) <= bound);
                    assert_true(fabs(yi[i] - exact) <= bound);
                }
            }

            /* scale_mul and add_f32: each element the rounded products /
             * sum of kernels.h, bit for bit, in place too */
            const float s = exsa_test_rand_normal(&rng);
            for (int pass = 0; pass < 4; pass++) {
                const float *w = pass & 1 ? y : NULL;
                const int in_place = pass >= 2;
                memcpy(yi, x, (size_t)n * sizeof(float));
                isa->scale_mul(in_place ? yi : x, s, w, yi, n);
                for (int i = 0; i < n; i++) {
                    const float want = w ? x[i] * s * w[i] : x[i] * s;
                    if (memcmp(&yi[i], &want, sizeof want) != 0)
                        fail_msg("%s scale_mul n %d pass %d [%d]", isa->isa, n, pass, i);
                }
            }
            memcpy(yi, y, (size_t)n * sizeof(float));
            isa->add_f32(yi, x, n);
            for (int i = 0; i < n; i++) {
                const float want = y[i] + x[i];
                if (memcmp(&yi[i], &want, sizeof want) != 0)
                    fail_msg("%s add_f32 n %d [%d]", isa->isa, n, i);
            }
            free(x);
            free(y);
            free(xh_f);
            free(xh);
            free(ys);
            free(yi);
        }
    }

    /* f16 -> f32: all 65536 halves, bit-equal (NaN: any NaN) */
    exsa_fp16 *h = xmalloc(65536 * sizeof(exsa_fp16));
    float *f = xmalloc(65536 * sizeof(float));
    for (int i = 0; i < 65536; i++)
        h[i] = (exsa_fp16)i;
    isa->f16_to_f32(h, f, 65536);
    for (int i = 0; i < 65536; i++) {
        const float want = exsa_fp16_to_fp32((exsa_fp16)i);
        if (isnan(want))
            assert_true(isnan(f[i]));
        else
            assert_memory_equal(&f[i], &want, sizeof(float));
    }
    /* f32 -> f16: random bit patterns, every half's midpoints and edges */
    const int nf = 65536 * 3;
    float *src = xmalloc((size_t)nf * sizeof(float));
    exsa_fp16 *out = xmalloc((size_t)nf * sizeof(exsa_fp16));
    uint64_t rng = 12345;
    for (int i = 0; i < 65536; i++) {
        const float a = exsa_fp16_to_fp32((exsa_fp16)i);
        const float b = exsa_fp16_to_fp32((exsa_fp16)(i + 1));
        src[3 * i] = isfinite(a) && isfinite(b) ? 0.5f * a + 0.5f * b : a; /* ties */
        src[3 * i + 1] = bits_to_f32((uint32_t)exsa_test_rand_u64(&rng));
        src[3 * i + 2] = isfinite(a) ? nextafterf(a, INFINITY) : 65520.0f;
    }
    src[1] = 65520.0f; /* rounds to inf */
    src[4] = 65519.99f;
    isa->f32_to_f16(src, out, nf);
    for (int i = 0; i < nf; i++) {
        const exsa_fp16 want = exsa_fp32_to_fp16(src[i]);
        if (isnan(src[i]))
            assert_true((out[i] & 0x7C00) == 0x7C00 && (out[i] & 0x3FF) != 0);
        else if (out[i] != want)
            fail_msg("%s f32_to_f16(%a) = 0x%04x, want 0x%04x", isa->isa, (double)src[i], out[i],
                     want);
    }
    free(h);
    free(f);
    free(src);
    free(out);
}

/* ------------------------------------------------------------ cmocka */

typedef struct {
    const char *label;
    const exsa_cpu_kernels *table; /* NULL: the CPU (or build) lacks it */
} isa_case;

static isa_case isa_cases[4];

static int usable(void **state)
{
    const isa_case *c = *state;
    if (!c->table) {
        printf("    %s: NOT TESTED (this CPU or build lacks it)\n", c->label);
        return 0;
    }
    return 1;
}

/* ------------------------------------------------- repacked Q4_0 x 8 */

/* gemm_q4_0x8 / gemm_q4_1x8: the scalar table against an exact double dot
 * of the decoded values (it is the definition of the others' rounding),
 * every other table bit for bit against the scalar one; the extreme case
 * (all nibbles 15 or 0, activations +-127) would saturate an int16 sum if
 * one were too long. Both layouts share the nibbles and scales here; Q4_1
 * adds a min per row. */
static void check_gemm_x8(const exsa_cpu_kernels *isa, int kind)
{
    static const int sizes[] = {32, 96, 544, 2048};
    const exsa_cpu_kernels *ref = exsa_cpu_kernels_scalar();
    /* kind: 0 Q4_0, 1 Q4_1, 2 Q5_0, 3 Q5_1 (the Q5 forms add fifth bits) */
    static const char *const names[] = {"gemm_q4_0x8", "gemm_q4_1x8", "gemm_q5_0x8",
                                        "gemm_q5_1x8"};
    const char *name = names[kind];
    const int q4_1 = kind & 1, q5 = kind >= 2;
    for (int si = 0; si < ARRAY_LEN(seeds); si++) {
        uint64_t rng = seeds[si] + 31u;
        for (int zi = 0; zi < ARRAY_LEN(sizes); zi++) {
            const int n = sizes[zi], nb = n / 32, max_act = 9;
            exsa_block_q4_0x8 *w = xmalloc((size_t)nb * sizeof *w);
            exsa_block_q4_1x8 *w1 = xmalloc((size_t)nb * sizeof *w1);
            exsa_block_q5_0x8 *w5 = xmalloc((size_t)nb * sizeof *w5);
            exsa_block_q5_1x8 *w51 = xmalloc((size_t)nb * sizeof *w51);
            exsa_block_q8_0s *a = xmalloc((size_t)nb * max_act * sizeof *a);
            const int extreme = si == 2 && zi == 1;
            for (int b = 0; b < nb; b++) {
                for (int r = 0; r < 8; r++) {
                    w[b].d[r] = w1[b].d[r] =
                        exsa_fp32_to_fp16(0.01f + 0.1f * exsa_test_rand_uniform(&rng));
                    w1[b].m[r] = exsa_fp32_to_fp16(0.5f * exsa_test_rand_normal(&rng));
                }
                for (int i = 0; i < 128; i++)
                    w[b].qs[i] = w1[b].qs[i] = extreme ? (i % 3 ? 0xFF : 0xF0)
                                                       : (uint8_t)(exsa_test_rand_u64(&rng) & 0xFF);
                memcpy(w5[b].d, w[b].d, sizeof w5[b].d);
                memcpy(w51[b].d, w1[b].d, sizeof w51[b].d);
                memcpy(w51[b].m, w1[b].m, sizeof w51[b].m);
                memcpy(w5[b].qs, w[b].qs, sizeof w5[b].qs);
                memcpy(w51[b].qs, w[b].qs, sizeof w51[b].qs);
                for (int i = 0; i < 32; i++)
                    w5[b].qh[i] = w51[b].qh[i] =
                        extreme ? 0xFF : (uint8_t)(exsa_test_rand_u64(&rng) & 0xFF);
            }
            for (int k = 0; k < nb * max_act; k++) {
                int32_t sum = 0;
                for (int i = 0; i < 32; i++) {
                    int v = extreme ? (k % 2 ? -127 : 127)
                                    : (int)(exsa_test_rand_u64(&rng) % 255) - 127;
                    a[k].qs[i] = (int8_t)v;
                    sum += v;
                }
                a[k].sum = sum;
                a[k].d = exsa_fp16_to_fp32(exsa_fp32_to_fp16(0.02f * exsa_test_rand_uniform(&rng)));
            }
            for (int n_act = 1; n_act <= max_act; n_act++) {
                float got[9 * 8], want[9 * 8];
                const size_t as = (size_t)nb * sizeof *a;
                const exsa_cpu_kernels *tabs[2] = {ref, isa};
                float *outs[2] = {want, got};
                for (int ti = 0; ti < (isa ? 2 : 1); ti++) {
                    const exsa_cpu_kernels *kt = tabs[ti];
                    if (kind == 0)
                        kt->gemm_q4_0x8(n, w, a, as, n_act, outs[ti], 8);
                    else if (kind == 1)
                        kt->gemm_q4_1x8(n, w1, a, as, n_act, outs[ti], 8);
                    else if (kind == 2)
                        kt->gemm_q5_0x8(n, w5, a, as, n_act, outs[ti], 8);
                    else
                        kt->gemm_q5_1x8(n, w51, a, as, n_act, outs[ti], 8);
                }
                if (isa) {
                    for (int i = 0; i < 8 * n_act; i++)
                        if (memcmp(&got[i], &want[i], sizeof got[i]) != 0)
                            fail_msg("%s %s n=%d n_act=%d out %d: %.9g, scalar %.9g", isa->isa,
                                     name, n, n_act, i, (double)got[i], (double)want[i]);
                    continue;
                }
                for (int j = 0; j < n_act; j++)
                    for (int r = 0; r < 8; r++) {
                        double dot = 0, mag = 0;
                        for (int b = 0; b < nb; b++) {
                            const exsa_block_q8_0s *ab = &a[(size_t)j * nb + b];
                            double dw = exsa_fp16_to_fp32(w[b].d[r]);
                            double mw = q4_1 ? exsa_fp16_to_fp32(w1[b].m[r]) : 0.0;
                            for (int e = 0; e < 32; e++) {
                                int q = e < 16 ? w[b].qs[32 * (e / 4 % 4) + 4 * r + e % 4] & 15
                                               : w[b].qs[32 * ((e - 16) / 4) + 4 * r + e % 4] >> 4;
                                if (q5) /* bit e % 4 (+4 for the high half) of qh[8 j + r] */
                                    q |= ((w5[b].qh[8 * ((e % 16) / 4) + r] >> (e % 4 + (e < 16 ? 0 : 4))) & 1) << 4;
                                double wv = q4_1 ? dw * q + mw : dw * (q - (q5 ? 16 : 8));
                                double t = wv * ((double)ab->d * ab->qs[e]);
                                dot += t;
                                mag += fabs(t);
                            }
                        }
                        double g = want[j * 8 + r];
                        if (!(fabs(g - dot) <= 1e-5 * mag + 1e-30))
                            fail_msg("scalar %s n=%d row %d act %d: %.9g vs exact %.9g", name, n,
                                     r, j, g, dot);
                    }
            }
            free(w);
            free(w1);
            free(w5);
            free(w51);
            free(a);
        }
    }
}

static void test_scalar_gemm_x8(void **state)
{
    (void)state;
    for (int kind = 0; kind < 4; kind++)
        check_gemm_x8(NULL, kind);
}

static void test_isa_gemm_x8(void **state)
{
    if (!usable(state))
        skip();
    for (int kind = 0; kind < 4; kind++)
        check_gemm_x8(((const isa_case *)*state)->table, kind);
}

/* ------------------------------------------------- repacked Q8_0 x 8 */

/* gemm_q8_0x8: the scalar table against an exact double dot; every other
 * table bit for bit against the scalar one AND against its own row kernel
 * dot[Q8_0] on the same rows (the repacked layout must not move Q8_0's
 * logits away from the order the fixtures were made in). Weights span
 * -127..127, the range the layout takes (-128 stays in row layout, see
 * test_backend_ops); the extreme case (weights and activations +-127) is
 * the largest pair sum. */
static void check_gemm_q8x8(const exsa_cpu_kernels *isa)
{
    static const int sizes[] = {32, 96, 544, 2048};
    const exsa_cpu_kernels *ref = exsa_cpu_kernels_scalar();
    for (int si = 0; si < ARRAY_LEN(seeds); si++) {
        uint64_t rng = seeds[si] + 53u;
        for (int zi = 0; zi < ARRAY_LEN(sizes); zi++) {
            const int n = sizes[zi], nb = n / 32, max_act = 6;
            const int extreme = si == 2 && zi == 1;
            exsa_block_q8_0x8 *w = xmalloc((size_t)nb * sizeof *w);
            exsa_block_q8_0a *a = xmalloc((size_t)nb * max_act * sizeof *a);
            /* the same data in GGUF's rows: 8 weight rows, Q8_0 activations */
            exsa_block_q8_0 *wr = xmalloc((size_t)nb * 8 * sizeof *wr);
            exsa_block_q8_0 *ar = xmalloc((size_t)nb * max_act * sizeof *ar);
            for (int b = 0; b < nb; b++)
                for (int r = 0; r < 8; r++) {
                    w[b].d[r] = exsa_fp32_to_fp16(0.01f + 0.1f * exsa_test_rand_uniform(&rng));
                    wr[r * nb + b].d = w[b].d[r];
                    for (int e = 0; e < 32; e++) {
                        int v = extreme ? (e % 3 ? -127 : 127)
                                        : (int)(exsa_test_rand_u64(&rng) % 255) - 127;
                        w[b].qs[32 * (e / 4) + 4 * r + e % 4] = (int8_t)v;
                        wr[r * nb + b].qs[e] = (int8_t)v;
                    }
                }
            for (int k = 0; k < nb * max_act; k++) {
                ar[k].d = exsa_fp32_to_fp16(0.02f * exsa_test_rand_uniform(&rng));
                for (int i = 0; i < 32; i++) {
                    int v = extreme ? (k % 2 ? -127 : 127)
                                    : (int)(exsa_test_rand_u64(&rng) % 255) - 127;
                    a[k].qs[i] = ar[k].qs[i] = (int8_t)v;
                    a[k].aqs[i] = (uint8_t)(v < 0 ? -v : v);
                }
                a[k].d = exsa_fp16_to_fp32(ar[k].d);
            }
            const size_t as = (size_t)nb * sizeof *a, ars = (size_t)nb * sizeof *ar;
            for (int n_act = 1; n_act <= max_act; n_act++) {
                float got[6 * 8], want[6 * 8], rows[6 * 8];
                ref->gemm_q8_0x8(n, w, a, as, n_act, want, 8);
                if (isa) {
                    isa->gemm_q8_0x8(n, w, a, as, n_act, got, 8);
                    for (int r = 0; r < 8; r++)
                        isa->dot[EXSA_TYPE_Q8_0](n, wr + (size_t)r * nb, ar, ars, n_act,
                                                 rows + r, 8);
                    for (int i = 0; i < 8 * n_act; i++) {
                        if (memcmp(&got[i], &want[i], sizeof got[i]) != 0)
                            fail_msg("%s gemm_q8_0x8 n=%d n_act=%d out %d: %.9g, scalar %.9g",
                                     isa->isa, n, n_act, i, (double)got[i], (double)want[i]);
                        if (memcmp(&got[i], &rows[i], sizeof got[i]) != 0)
                            fail_msg("%s gemm_q8_0x8 n=%d n_act=%d out %d: %.9g, row kernel %.9g",
                                     isa->isa, n, n_act, i, (double)got[i], (double)rows[i]);
                    }
                    continue;
                }
                for (int j = 0; j < n_act; j++)
                    for (int r = 0; r < 8; r++) {
                        double dot = 0, mag = 0;
                        for (int b = 0; b < nb; b++) {
                            const exsa_block_q8_0a *ab = &a[(size_t)j * nb + b];
                            const double dw = exsa_fp16_to_fp32(w[b].d[r]);
                            for (int e = 0; e < 32; e++) {
                                double t = dw * w[b].qs[32 * (e / 4) + 4 * r + e % 4] *
                                           ((double)ab->d * ab->qs[e]);
                                dot += t;
                                mag += fabs(t);
                            }
                        }
                        double g = want[j * 8 + r];
                        if (!(fabs(g - dot) <= 1e-5 * mag + 1e-30))
                            fail_msg("scalar gemm_q8_0x8 n=%d row %d act %d: %.9g vs exact %.9g",
                                     n, r, j, g, dot);
                    }
            }
            free(w);
            free(a);
            free(wr);
            free(ar);
        }
    }
}

static void test_scalar_gemm_q8x8(void **state)
{
    (void)state;
    check_gemm_q8x8(NULL);
}

static void test_isa_gemm_q8x8(void **state)
{
    if (!usable(state))
        skip();
    check_gemm_q8x8(((const isa_case *)*state)->table);
}

/* ------------------------------------------------- repacked floats x 8 */

/* gemm_fx: scalar against an exact double dot, other tables bit for bit
 * against scalar, for 1-4 groups at once and 1-9 activation rows, odd n. */
static void check_gemm_fx(const exsa_cpu_kernels *isa)
{
    static const int types[] = {EXSA_TYPE_F32, EXSA_TYPE_F16};
    static const int sizes[] = {1, 7, 64, 333};
    const exsa_cpu_kernels *ref = exsa_cpu_kernels_scalar();
    uint64_t rng = 99;
    for (int ti = 0; ti < ARRAY_LEN(types); ti++)
        for (int zi = 0; zi < ARRAY_LEN(sizes); zi++) {
            const int type = types[ti], n = sizes[zi], max_act = 9, elem = type == EXSA_TYPE_F32 ? 4 : 2;
            const size_t gb = (size_t)8 * n * elem;
            char *w = xmalloc(4 * gb);
            float *wf = xmalloc(sizeof(float) * 4 * 8 * n); /* decoded [g][k][r] */
            for (int i = 0; i < 4 * 8 * n; i++) {
                float v = exsa_test_rand_normal(&rng);
                if (type == EXSA_TYPE_F16) {
                    exsa_fp16 h = exsa_fp32_to_fp16(v);
                    memcpy(w + 2 * (size_t)i, &h, 2);
                    wf[i] = exsa_fp16_to_fp32(h);
                } else {
                    memcpy(w + 4 * (size_t)i, &v, 4);
                    wf[i] = v;
                }
            }
            float *a = xmalloc(sizeof(float) * (size_t)max_act * n);
            for (int i = 0; i < max_act * n; i++)
                a[i] = exsa_test_rand_normal(&rng);
            for (int ng = 1; ng <= 4; ng++)
                for (int n_act = 1; n_act <= max_act; n_act++) {
                    float got[9 * 32], want[9 * 32];
                    const size_t os = 32, as = sizeof(float) * (size_t)n;
                    ref->gemm_fx(type, n, w, gb, ng, a, as, n_act, want, os);
                    if (isa) {
                        isa->gemm_fx(type, n, w, gb, ng, a, as, n_act, got, os);
                        for (int j = 0; j < n_act; j++)
                            for (int o = 0; o < 8 * ng; o++)
                                if (memcmp(&got[j * os + o], &want[j * os + o], 4) != 0)
                                    fail_msg("%s gemm_fx type %d n=%d groups %d n_act=%d out %d/%d: "
                                             "%.9g, scalar %.9g", isa->isa, type, n, ng, n_act, j, o,
                                             (double)got[j * os + o], (double)want[j * os + o]);
                        continue;
                    }
                    for (int j = 0; j < n_act; j++)
                        for (int o = 0; o < 8 * ng; o++) {
                            double dot = 0, mag = 0;
                            for (int k = 0; k < n; k++) {
                                double t = (double)wf[(size_t)(o / 8) * 8 * n + 8 * (size_t)k + o % 8] *
                                           a[(size_t)j * n + k];
                                dot += t;
                                mag += fabs(t);
                            }
                            if (!(fabs(want[j * os + o] - dot) <= 1e-5 * mag + 1e-30))
                                fail_msg("scalar gemm_fx type %d n=%d out %d/%d: %.9g vs exact %.9g",
                                         type, n, j, o, (double)want[j * os + o], dot);
                        }
                }
            free(a);
            free(wf);
            free(w);
        }
}

static void test_scalar_gemm_fx(void **state)
{
    (void)state;
    check_gemm_fx(NULL);
}

static void test_isa_gemm_fx(void **state)
{
    if (!usable(state))
        skip();
    check_gemm_fx(((const isa_case *)*state)->table);
}

/* ------------------------------------------------- repacked BF16 x 8 */

/* gemm_bf16: scalar against an exact double dot of the bf16 values, every
 * other table bit for bit against scalar (which pins vdpbf16ps's order: the
 * odd element of each pair first), for 1-4 groups and 1-14 activation rows
 * (AVX-512 takes rows 12 at a time). Values are normal numbers of mixed
 * magnitude, so the sums round at every step. */
static void check_gemm_bf16(const exsa_cpu_kernels *isa)
{
    static const int sizes[] = {2, 6, 64, 334};
    const exsa_cpu_kernels *ref = exsa_cpu_kernels_scalar();
    assert_non_null(ref->gemm_bf16);
    if (isa)
        assert_non_null(isa->gemm_bf16);
    uint64_t rng = 77;
    enum { MAX_ACT = 14, OS = 40 };
    for (int zi = 0; zi < ARRAY_LEN(sizes); zi++) {
        const int n = sizes[zi];
        const size_t gb = (size_t)16 * n;
        exsa_bf16 *w = xmalloc(4 * gb);
        for (int i = 0; i < 4 * 8 * n; i++)
            w[i] = exsa_fp32_to_bf16(exsa_test_rand_normal(&rng) *
                                     (i % 5 == 0 ? 64.0f : i % 3 == 0 ? 0.01f : 1.0f));
        /* activation rows 2n + 6 elements apart: unaligned pairs and a
         * stride that is not the row length */
        const size_t as = 2 * (size_t)n + 6;
        exsa_bf16 *a = xmalloc(as * MAX_ACT * sizeof(exsa_bf16));
        for (size_t i = 0; i < as * MAX_ACT; i++)
            a[i] = exsa_fp32_to_bf16(exsa_test_rand_normal(&rng));
        for (int ng = 1; ng <= 4; ng++)
            for (int n_act = 1; n_act <= MAX_ACT; n_act++) {
                float got[MAX_ACT * OS], want[MAX_ACT * OS];
                const size_t asb = as * sizeof(exsa_bf16);
                ref->gemm_bf16(n, w, gb, ng, a, asb, n_act, want, OS);
                if (isa) {
                    isa->gemm_bf16(n, w, gb, ng, a, asb, n_act, got, OS);
                    for (int j = 0; j < n_act; j++)
                        for (int o = 0; o < 8 * ng; o++)
                            if (memcmp(&got[j * OS + o], &want[j * OS + o], 4) != 0)
                                fail_msg("%s gemm_bf16 n=%d groups %d n_act=%d out %d/%d: %a, "
                                         "scalar %a", isa->isa, n, ng, n_act, j, o,
                                         (double)got[j * OS + o], (double)want[j * OS + o]);
                    continue;
                }
                for (int j = 0; j < n_act; j++)
                    for (int o = 0; o < 8 * ng; o++) {
                        const exsa_bf16 *wg = w + (size_t)(o / 8) * 8 * n;
                        double dot = 0, mag = 0;
                        for (int k = 0; k < n; k++) {
                            /* pair k / 2, row o % 8, half k % 2 */
                            const double t =
                                (double)exsa_bf16_to_fp32(wg[16 * (k / 2) + 2 * (o % 8) + k % 2]) *
                                exsa_bf16_to_fp32(a[(size_t)j * as + k]);
                            dot += t;
                            mag += fabs(t);
                        }
                        if (!(fabs(want[j * OS + o] - dot) <= 1e-5 * mag + 1e-30))
                            fail_msg("scalar gemm_bf16 n=%d out %d/%d: %.9g vs exact %.9g", n, j,
                                     o, (double)want[j * OS + o], dot);
                    }
            }
        free(a);
        free(w);
    }
}

static void test_scalar_gemm_bf16(void **state)
{
    (void)state;
    check_gemm_bf16(NULL);
}

static void test_isa_gemm_bf16(void **state)
{
    if (!usable(state))
        skip();
    check_gemm_bf16(((const isa_case *)*state)->table);
}

/* ------------------------------------------------- repacked Q4_K x 8 */

/* Row r's value e of a repacked super-block column, decoded from the layout
 * kernels.h documents: d * scale * q - dmin * min in double. */
static double kx8_weight(const exsa_block_q4_Kx8 *g, int r, int e)
{
    const int s = e / 32, l = e % 32;
    const uint8_t byte = g->qs[256 * (s / 2) + 32 * (l / 4) + 4 * r + l % 4];
    const int q = s % 2 ? byte >> 4 : byte & 15;
    const double d = exsa_fp16_to_fp32(g->d[r]), dmin = exsa_fp16_to_fp32(g->dmin[r]);
    return d * g->scales[8 * s + r] * q - dmin * g->mins[16 * (s / 2) + 2 * r + s % 2];
}

/* Rounding bound of one output: the sum of |terms| of both halves of the
 * Q4_K expansion (d * scale * q * a and dmin * min * a), which the float
 * steps round, even where they cancel. */
static double kx8_mag(const exsa_block_q4_Kx8 *g, int r, int e, double a)
{
    const int s = e / 32, l = e % 32;
    const uint8_t byte = g->qs[256 * (s / 2) + 32 * (l / 4) + 4 * r + l % 4];
    const int q = s % 2 ? byte >> 4 : byte & 15;
    const double d = exsa_fp16_to_fp32(g->d[r]), dmin = exsa_fp16_to_fp32(g->dmin[r]);
    return fabs(a) * (fabs(d) * g->scales[8 * s + r] * q +
                      fabs(dmin) * g->mins[16 * (s / 2) + 2 * r + s % 2]);
}

/* Q8_K activation block with bsums that match its values. */
static void fill_q8_K(exsa_block_q8_K *a, int extreme, int k, uint64_t *rng)
{
    for (int i = 0; i < EXSA_QK_K; i++)
        a->qs[i] = (int8_t)(extreme ? (k % 2 ? -128 : 127)
                                    : (int)(exsa_test_rand_u64(rng) % 256) - 128);
    for (int i = 0; i < EXSA_QK_K / 16; i++) {
        int sum = 0;
        for (int l = 0; l < 16; l++)
            sum += a->qs[16 * i + l];
        a->bsums[i] = (int16_t)sum;
    }
    a->d = 0.02f * exsa_test_rand_uniform(rng) + 1e-4f;
}

/* gemm_q4_Kx8 as check_gemm_x8 does for Q4_0: the scalar table against an
 * exact double dot of the decoded values, every other table bit for bit
 * against the scalar one. Random blocks cover every 6-bit scale and min;
 * the extreme case (all nibbles 15, scales and mins 63, activations 127 or
 * -128) would saturate an int16 sum or overflow an int32 one if one were
 * too long. */
static void check_gemm_kx8(const exsa_cpu_kernels *isa)
{
    const exsa_cpu_kernels *ref = exsa_cpu_kernels_scalar();
    for (int si = 0; si < ARRAY_LEN(seeds); si++) {
        uint64_t rng = seeds[si] + 57u;
        for (int zi = 0; zi < ARRAY_LEN(sizes_k); zi++) {
            const int n = sizes_k[zi], nb = n / EXSA_QK_K, max_act = 9;
            exsa_block_q4_Kx8 *w = xmalloc((size_t)nb * sizeof *w);
            exsa_block_q8_K *a = xmalloc((size_t)nb * max_act * sizeof *a);
            const int extreme = si == 2 && zi == 1;
            for (int b = 0; b < nb; b++) {
                for (int r = 0; r < 8; r++) {
                    w[b].d[r] = exsa_fp32_to_fp16(0.001f + 0.01f * exsa_test_rand_uniform(&rng));
                    w[b].dmin[r] = exsa_fp32_to_fp16(0.001f + 0.01f * exsa_test_rand_uniform(&rng));
                }
                for (int i = 0; i < 64; i++) {
                    w[b].scales[i] = extreme ? 63 : (uint8_t)(exsa_test_rand_u64(&rng) % 64);
                    w[b].mins[i] = extreme ? 63 : (uint8_t)(exsa_test_rand_u64(&rng) % 64);
                }
                for (int i = 0; i < 1024; i++)
                    w[b].qs[i] = extreme ? 0xFF : (uint8_t)(exsa_test_rand_u64(&rng) & 0xFF);
            }
            for (int k = 0; k < nb * max_act; k++)
                fill_q8_K(&a[k], extreme, k, &rng);
            for (int n_act = 1; n_act <= max_act; n_act++) {
                float got[9 * 8], want[9 * 8];
                const size_t as = (size_t)nb * sizeof *a;
                ref->gemm_q4_Kx8(n, w, a, as, n_act, want, 8);
                if (isa) {
                    isa->gemm_q4_Kx8(n, w, a, as, n_act, got, 8);
                    for (int i = 0; i < 8 * n_act; i++)
                        if (memcmp(&got[i], &want[i], sizeof got[i]) != 0)
                            fail_msg("%s gemm_q4_Kx8 n=%d n_act=%d out %d: %.9g, scalar %.9g",
                                     isa->isa, n, n_act, i, (double)got[i], (double)want[i]);
                    continue;
                }
                for (int j = 0; j < n_act; j++)
                    for (int r = 0; r < 8; r++) {
                        double dot = 0, mag = 0;
                        for (int b = 0; b < nb; b++) {
                            const exsa_block_q8_K *ab = &a[(size_t)j * nb + b];
                            for (int e = 0; e < EXSA_QK_K; e++) {
                                const double av = (double)ab->d * ab->qs[e];
                                dot += kx8_weight(&w[b], r, e) * av;
                                mag += kx8_mag(&w[b], r, e, av);
                            }
                        }
                        double g = want[j * 8 + r];
                        if (!(fabs(g - dot) <= 1e-5 * mag + 1e-30))
                            fail_msg("scalar gemm_q4_Kx8 n=%d row %d act %d: %.9g vs exact %.9g",
                                     n, r, j, g, dot);
                    }
            }
            free(w);
            free(a);
        }
    }
}

/* The layout against GGUF: 8 Q4_K rows from the reference quantizer,
 * repacked by exsa_cpu_repack, through the scalar gemm, against the exact
 * dot of the GGUF rows decoded by quant.c and of Q8_K activations. */
static void check_gemm_kx8_gguf(void)
{
    const exsa_cpu_kernels *ref = exsa_cpu_kernels_scalar();
    for (int zi = 0; zi < ARRAY_LEN(sizes_k); zi++) {
        uint64_t rng = 1234u + (uint64_t)zi;
        const int n = sizes_k[zi], nb = n / EXSA_QK_K, n_act = 3;
        const size_t rb = (size_t)nb * sizeof(exsa_block_q4_K);
        float *x = xmalloc(sizeof(float) * (size_t)n * 8);
        float *wd = xmalloc(sizeof(float) * (size_t)n * 8);
        float *ad = xmalloc(sizeof(float) * (size_t)n * n_act);
        char *raw = xmalloc(rb * 8);
        exsa_block_q8_K *a = xmalloc((size_t)nb * n_act * sizeof *a);
        fill_random(x, n * 8, &rng);
        for (int r = 0; r < 8; r++) {
            exsa_quantize_row_q4_K_ref(x + (size_t)r * n, raw + r * rb, n);
            exsa_dequantize_row_q4_K(raw + r * rb, wd + (size_t)r * n, n);
        }
        fill_random(x, n * n_act, &rng);
        for (int j = 0; j < n_act; j++) {
            exsa_quantize_row_q8_K_ref(x + (size_t)j * n, a + (size_t)j * nb, n);
            exsa_dequantize_row_q8_K(a + (size_t)j * nb, ad + (size_t)j * n, n);
        }
        exsa_tensor t = {"w", EXSA_TYPE_Q4_K, n, 8, rb, raw, EXSA_LAYOUT_ROWS};
        void *buf = NULL;
        assert_int_equal(exsa_cpu_repack(&t, &buf, NULL), 0);
        assert_non_null(buf);
        assert_int_equal(t.layout, EXSA_LAYOUT_Q4_KX8);
        float got[3 * 8];
        ref->gemm_q4_Kx8(n, t.data, a, (size_t)nb * sizeof *a, n_act, got, 8);
        for (int j = 0; j < n_act; j++)
            for (int r = 0; r < 8; r++) {
                double dot, mag;
                exact_dot(wd + (size_t)r * n, ad + (size_t)j * n, n, &dot, &mag);
                /* the float scale products of the kernel (d * scale, dmin *
                 * min) round differently from quant.c's decode */
                if (!(fabs(got[j * 8 + r] - dot) <= 1e-4 * mag + 1e-30))
                    fail_msg("gemm_q4_Kx8 vs GGUF rows n=%d row %d act %d: %.9g vs %.9g", n, r,
                             j, (double)got[j * 8 + r], dot);
            }
        free(buf);
        free(a);
        free(raw);
        free(ad);
        free(wd);
        free(x);
    }
}

/* gemm_q6_Kx8 as check_gemm_kx8: the scalar table against an exact double
 * dot of the decoded values (d * scale * (q - 32)), every other table bit
 * for bit against the scalar one. Random blocks cover every 6-bit value
 * and signed scale; the extreme case (values 63, scales -128, activations
 * at their ends) gives the largest int16 pair sums. */
static void fill_q6_Kx8(exsa_block_q6_Kx8 *x, int extreme, uint64_t *rng)
{
    for (int r = 0; r < 8; r++)
        x->d[r] = exsa_fp32_to_fp16(0.001f + 0.01f * exsa_test_rand_uniform(rng));
    for (int i = 0; i < 128; i++)
        x->scales[i] = (int8_t)(extreme ? -128 : (int)(exsa_test_rand_u64(rng) % 256) - 128);
    for (int i = 0; i < 1024; i++)
        x->ql[i] = extreme ? 0xFF : (uint8_t)(exsa_test_rand_u64(rng) & 0xFF);
    for (int i = 0; i < 512; i++)
        x->qh[i] = extreme ? 0xFF : (uint8_t)(exsa_test_rand_u64(rng) & 0xFF);
}

static void check_gemm_q6kx8(const exsa_cpu_kernels *isa)
{
    const exsa_cpu_kernels *ref = exsa_cpu_kernels_scalar();
    if (isa && !isa->gemm_q6_Kx8)
        fail_msg("%s has no gemm_q6_Kx8 (repacked Q6_K would have no kernel)", isa->isa);
    for (int si = 0; si < ARRAY_LEN(seeds); si++) {
        uint64_t rng = seeds[si] + 61u;
        for (int zi = 0; zi < ARRAY_LEN(sizes_k); zi++) {
            const int n = sizes_k[zi], nb = n / EXSA_QK_K, max_act = 9;
            exsa_block_q6_Kx8 *w = xmalloc((size_t)nb * sizeof *w);
            exsa_block_q8_K *a = xmalloc((size_t)nb * max_act * sizeof *a);
            const int extreme = si == 2 && zi == 1;
            for (int b = 0; b < nb; b++)
                fill_q6_Kx8(&w[b], extreme, &rng);
            for (int k = 0; k < nb * max_act; k++)
                fill_q8_K(&a[k], extreme, k, &rng);
            for (int n_act = 1; n_act <= max_act; n_act++) {
                float got[9 * 8], want[9 * 8];
                const size_t as = (size_t)nb * sizeof *a;
                ref->gemm_q6_Kx8(n, w, a, as, n_act, want, 8);
                if (isa) {
                    isa->gemm_q6_Kx8(n, w, a, as, n_act, got, 8);
                    for (int i = 0; i < 8 * n_act; i++)
                        if (memcmp(&got[i], &want[i], sizeof got[i]) != 0)
                            fail_msg("%s gemm_q6_Kx8 n=%d n_act=%d out %d: %.9g, scalar %.9g",
                                     isa->isa, n, n_act, i, (double)got[i], (double)want[i]);
                    continue;
                }
                for (int j = 0; j < n_act; j++)
                    for (int r = 0; r < 8; r++) {
                        double dot = 0, mag = 0;
                        for (int b = 0; b < nb; b++) {
                            const exsa_block_q8_K *ab = &a[(size_t)j * nb + b];
                            const double d = exsa_fp16_to_fp32(w[b].d[r]);
                            for (int e = 0; e < EXSA_QK_K; e++) {
                                const int q = exsa_q6_Kx8_value(&w[b], r, e);
                                double t = d * w[b].scales[8 * (e / 16) + r] * (q - 32) *
                                           ((double)ab->d * ab->qs[e]);
                                dot += t;
                                mag += fabs(t);
                            }
                        }
                        double g = want[j * 8 + r];
                        if (!(fabs(g - dot) <= 1e-5 * mag + 1e-30))
                            fail_msg("scalar gemm_q6_Kx8 n=%d row %d act %d: %.9g vs exact %.9g",
                                     n, r, j, g, dot);
                    }
            }
            free(w);
            free(a);
        }
    }
}

static void test_scalar_gemm_q6kx8(void **state)
{
    (void)state;
    check_gemm_q6kx8(NULL);
}

static void test_isa_gemm_q6kx8(void **state)
{
    if (!usable(state))
        skip();
    check_gemm_q6kx8(((const isa_case *)*state)->table);
}

static void test_scalar_gemm_kx8(void **state)
{
    (void)state;
    check_gemm_kx8(NULL);
    check_gemm_kx8_gguf();
}

static void test_isa_gemm_kx8(void **state)
{
    if (!usable(state))
        skip();
    check_gemm_kx8(((const isa_case *)*state)->table);
}

/* The two-group forms (gemm_*x16) and the four-group decode forms
 * (gemm_*x32), where a table has them, bit for bit against the scalar x8
 * kernel on each group, for 1..9 activation rows (every row-block size and
 * remainder of the drivers).
 * Random blocks plus an extreme case per layout: weights and activations
 * at the ends of their ranges (Q8_0 weights include -128, which the
 * unsigned-offset form handles too). */
static void fill_q8_0a(exsa_block_q8_0a *a, int extreme, int k, uint64_t *rng)
{
    for (int i = 0; i < 32; i++) {
        int v = extreme ? (k % 2 ? -127 : 127) : (int)(exsa_test_rand_u64(rng) % 255) - 127;
        a->qs[i] = (int8_t)v;
        a->aqs[i] = (uint8_t)(v < 0 ? -v : v);
    }
    for (int l = 0; l < 8; l++)
        a->corr[l] = -128 * (a->qs[4 * l] + a->qs[4 * l + 1] + a->qs[4 * l + 2] + a->qs[4 * l + 3]);
    a->d = exsa_fp16_to_fp32(exsa_fp32_to_fp16(0.02f * exsa_test_rand_uniform(rng)));
}

static void check_gemm_x16(const exsa_cpu_kernels *isa, int layout, int n_groups)
{
    static const char *const names[2][4] = {
        {"gemm_q4_0x16", "gemm_q8_0x16", "gemm_q4_Kx16", "gemm_q6_Kx16"},
        {"gemm_q4_0x32", "gemm_q8_0x32", NULL, NULL}};
    const exsa_gemm_x16_fn forms[2][4] = {
        {isa->gemm_q4_0x16, isa->gemm_q8_0x16, isa->gemm_q4_Kx16, isa->gemm_q6_Kx16},
        {isa->gemm_q4_0x32, isa->gemm_q8_0x32, NULL, NULL}};
    const int wide = n_groups == 4;
    exsa_gemm_x16_fn x16 = forms[wide][layout];
    const char *name = names[wide][layout];
    if (!x16)
        return;
    static const int sizes32[] = {32, 96, 544, 2048};
    const int kq = layout >= 2; /* K-quant super-blocks, Q8_K activations */
    const int *sizes = kq ? sizes_k : sizes32;
    const int n_sizes = kq ? ARRAY_LEN(sizes_k) : ARRAY_LEN(sizes32);
    const exsa_cpu_kernels *ref = exsa_cpu_kernels_scalar();
    for (int si = 0; si < ARRAY_LEN(seeds); si++) {
        uint64_t rng = seeds[si] + 71u;
        for (int zi = 0; zi < n_sizes; zi++) {
            const int n = sizes[zi], max_act = 9, extreme = si == 2 && zi == 1;
            const int nb = kq ? n / EXSA_QK_K : n / 32;
            const size_t wsz = layout == 0   ? sizeof(exsa_block_q4_0x8)
                               : layout == 1 ? sizeof(exsa_block_q8_0x8)
                               : layout == 2 ? sizeof(exsa_block_q4_Kx8)
                                             : sizeof(exsa_block_q6_Kx8);
            const size_t asz = layout == 0   ? sizeof(exsa_block_q8_0s)
                               : layout == 1 ? sizeof(exsa_block_q8_0a)
                                             : sizeof(exsa_block_q8_K);
            const size_t gb = (size_t)nb * wsz, as = (size_t)nb * asz;
            unsigned char *w = xmalloc((size_t)n_groups * gb), *a = xmalloc((size_t)max_act * as);
            for (int b = 0; b < n_groups * nb; b++) {
                unsigned char *blk = w + (size_t)b * wsz;
                if (layout == 0) {
                    exsa_block_q4_0x8 *x = (exsa_block_q4_0x8 *)blk;
                    for (int r = 0; r < 8; r++)
                        x->d[r] = exsa_fp32_to_fp16(0.01f + 0.1f * exsa_test_rand_uniform(&rng));
                    for (int i = 0; i < 128; i++)
                        x->qs[i] = extreme ? 0xFF : (uint8_t)(exsa_test_rand_u64(&rng) & 0xFF);
                } else if (layout == 1) {
                    exsa_block_q8_0x8 *x = (exsa_block_q8_0x8 *)blk;
                    for (int r = 0; r < 8; r++)
                        x->d[r] = exsa_fp32_to_fp16(0.01f + 0.1f * exsa_test_rand_uniform(&rng));
                    for (int i = 0; i < 256; i++)
                        x->qs[i] = (int8_t)(extreme ? (i % 3 ? -128 : 127)
                                                    : (int)(exsa_test_rand_u64(&rng) % 256) - 128);
                } else if (layout == 3) {
                    fill_q6_Kx8((exsa_block_q6_Kx8 *)blk, extreme, &rng);
                } else {
                    exsa_block_q4_Kx8 *x = (exsa_block_q4_Kx8 *)blk;
                    for (int r = 0; r < 8; r++) {
                        x->d[r] = exsa_fp32_to_fp16(0.001f + 0.01f * exsa_test_rand_uniform(&rng));
                        x->dmin[r] =
                            exsa_fp32_to_fp16(0.001f + 0.01f * exsa_test_rand_uniform(&rng));
                    }
                    for (int i = 0; i < 64; i++) {
                        x->scales[i] = extreme ? 63 : (uint8_t)(exsa_test_rand_u64(&rng) % 64);
                        x->mins[i] = extreme ? 63 : (uint8_t)(exsa_test_rand_u64(&rng) % 64);
                    }
                    for (int i = 0; i < 1024; i++)
                        x->qs[i] = extreme ? 0xFF : (uint8_t)(exsa_test_rand_u64(&rng) & 0xFF);
                }
            }
            for (int k = 0; k < nb * max_act; k++) {
                unsigned char *blk = a + (size_t)k * asz;
                if (layout == 0) {
                    exsa_block_q8_0s *x = (exsa_block_q8_0s *)blk;
                    int32_t sum = 0;
                    for (int i = 0; i < 32; i++) {
                        int v = extreme ? (k % 2 ? -127 : 127)
                                        : (int)(exsa_test_rand_u64(&rng) % 255) - 127;
                        x->qs[i] = (int8_t)v;
                        sum += v;
                    }
                    x->sum = sum;
                    x->d = exsa_fp16_to_fp32(exsa_fp32_to_fp16(0.02f * exsa_test_rand_uniform(&rng)));
                } else if (layout == 1) {
                    fill_q8_0a((exsa_block_q8_0a *)blk, extreme, k, &rng);
                } else {
                    fill_q8_K((exsa_block_q8_K *)blk, extreme, k, &rng);
                }
            }
            for (int n_act = 1; n_act <= max_act; n_act++) {
                float got[9 * 32], want[9 * 32];
                memset(got, 0xFF, sizeof got);
                x16(n, w, gb, a, as, n_act, got, 8 * (size_t)n_groups);
                for (int g = 0; g < n_groups; g++) {
                    const void *wg = w + (size_t)g * gb;
                    if (layout == 0)
                        ref->gemm_q4_0x8(n, wg, (const exsa_block_q8_0s *)a, as, n_act,
                                         want + 8 * g, 8 * (size_t)n_groups);
                    else if (layout == 1)
                        ref->gemm_q8_0x8(n, wg, (const exsa_block_q8_0a *)a, as, n_act,
                                         want + 8 * g, 8 * (size_t)n_groups);
                    else if (layout == 2)
                        ref->gemm_q4_Kx8(n, wg, (const exsa_block_q8_K *)a, as, n_act,
                                         want + 8 * g, 8 * (size_t)n_groups);
                    else
                        ref->gemm_q6_Kx8(n, wg, (const exsa_block_q8_K *)a, as, n_act,
                                         want + 8 * g, 8 * (size_t)n_groups);
                }
                for (int i = 0; i < 8 * n_groups * n_act; i++)
                    if (memcmp(&got[i], &want[i], sizeof got[i]) != 0)
                        fail_msg("%s %s n=%d n_act=%d out %d: %.9g, scalar x8 %.9g", isa->isa,
                                 name, n, n_act, i, (double)got[i], (double)want[i]);
            }
            free(w);
            free(a);
        }
    }
}

static void test_isa_gemm_x16(void **state)
{
    if (!usable(state))
        skip();
    const exsa_cpu_kernels *isa = ((const isa_case *)*state)->table;
    if (!isa->gemm_q4_0x16 && !isa->gemm_q8_0x16 && !isa->gemm_q4_Kx16 && !isa->gemm_q6_Kx16)
        skip(); /* this table has no two-group forms */
    for (int layout = 0; layout < 4; layout++) {
        check_gemm_x16(isa, layout, 2);
        check_gemm_x16(isa, layout, 4); /* the decode forms, where a table has them */
    }
}

static void test_scalar_vs_double(void **state)
{
    (void)state;
    check_dots(NULL);
}

static void test_isa_dots(void **state)
{
    if (!usable(state))
        skip();
    check_dots(((const isa_case *)*state)->table);
}

static void test_scalar_batch_invariance(void **state)
{
    (void)state;
    check_batch_invariance(exsa_cpu_kernels_scalar());
}

static void test_isa_batch_invariance(void **state)
{
    if (!usable(state))
        skip();
    check_batch_invariance(((const isa_case *)*state)->table);
}

static void test_scalar_quantizers(void **state)
{
    (void)state;
    check_quantizers(exsa_cpu_kernels_scalar());
}

static void test_isa_quantizers(void **state)
{
    if (!usable(state))
        skip();
    check_quantizers(((const isa_case *)*state)->table);
}

static void test_isa_float_helpers(void **state)
{
    if (!usable(state))
        skip();
    check_float_helpers(((const isa_case *)*state)->table);
    check_swiglu(((const isa_case *)*state)->table);
    check_geglu(((const isa_case *)*state)->table);
}

static void test_scalar_helpers(void **state)
{
    (void)state;
    const exsa_cpu_kernels *sc = exsa_cpu_kernels_scalar();
    assert_string_equal(sc->isa, "scalar");
    /* the scalar quantizers are the references themselves */
    assert_ptr_equal(sc->quantize_q8_0, exsa_quantize_row_q8_0_ref);
    assert_ptr_equal(sc->quantize_q8_K, exsa_quantize_row_q8_K_ref);
    check_float_helpers(sc);
    check_swiglu(sc);
    check_geglu(sc);
}

/* EXSA_CPU caps the choice. Selection happens once per process, so each
 * setting runs in a fresh copy of this program (see main's --best-isa). */
static const char *expected_best(const char *cap)
{
    const exsa_cpu_kernels *a2 = exsa_cpu_kernels_avx2(), *a5 = exsa_cpu_kernels_avx512();
    if (cap && strcmp(cap, "scalar") == 0)
        return "scalar";
    if (cap && strcmp(cap, "avx2") == 0)
        return a2 ? "avx2" : "scalar";
    return a5 ? "avx512" : a2 ? "avx2" : "scalar";
}

static void test_selection(void **state)
{
    (void)state;
    static const char *caps[] = {"scalar", "avx2", "avx512", "bogus", NULL};
    for (int i = 0; i < ARRAY_LEN(caps); i++) {
        const char *want = expected_best(caps[i]);
        int fd[2];
        assert_int_equal(pipe(fd), 0);
        fflush(stdout);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            dup2(fd[1], STDOUT_FILENO);
            close(fd[0]);
            close(fd[1]);
            if (caps[i])
                setenv("EXSA_CPU", caps[i], 1);
            else
                unsetenv("EXSA_CPU");
            execl("/proc/self/exe", "test_kernels", "--best-isa", (char *)NULL);
            _exit(127);
        }
        close(fd[1]);
        char got[64] = {0};
        size_t len = 0;
        ssize_t r;
        while (len < sizeof(got) - 1 && (r = read(fd[0], got + len, sizeof(got) - 1 - len)) > 0)
            len += (size_t)r;
        close(fd[0]);
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        got[strcspn(got, "\n")] = '\0';
        if (strcmp(got, want) != 0)
            fail_msg("EXSA_CPU=%s: best table is '%s', want '%s'", caps[i] ? caps[i] : "(unset)",
                     got, want);
    }
    assert_true(exsa_cpu_physical_cores() >= 1);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--best-isa") == 0) { /* for test_selection */
        puts(exsa_cpu_kernels_best()->isa);
        return 0;
    }
    exsa_cpu_features f;
    exsa_cpu_features_detect(&f);
    printf("CPU: avx2=%d fma=%d f16c=%d avx512f=%d bw=%d vl=%d dq=%d vnni=%d avx_vnni=%d "
           "bf16=%d, %d physical cores\n",
           f.avx2, f.fma, f.f16c, f.avx512f, f.avx512bw, f.avx512vl, f.avx512dq, f.avx512vnni,
           f.avx_vnni, f.avx512bf16, exsa_cpu_physical_cores());

    isa_cases[0] = (isa_case){"avx2", exsa_cpu_kernels_avx2()};
    isa_cases[1] = (isa_case){"avx512", exsa_cpu_kernels_avx512_variant(0)};
    isa_cases[2] = (isa_case){"avx512-vnni", exsa_cpu_kernels_avx512_variant(1)};
    isa_cases[3] = (isa_case){"avx512-bf16", exsa_cpu_kernels_avx512_bf16()};
    printf("ISA tables tested against scalar:");
    for (int i = 0; i < 4; i++)
        printf(" %s=%s", isa_cases[i].label, isa_cases[i].table ? "yes" : "NOT TESTED");
    printf("\n");

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalar_vs_double),
        cmocka_unit_test(test_scalar_helpers),
        cmocka_unit_test(test_scalar_batch_invariance),
        cmocka_unit_test(test_scalar_quantizers),
        cmocka_unit_test(test_selection),
        cmocka_unit_test(test_scalar_gemm_x8),
        cmocka_unit_test(test_scalar_gemm_fx),
        cmocka_unit_test_prestate(test_isa_gemm_fx, &isa_cases[0]),
        cmocka_unit_test_prestate(test_isa_gemm_fx, &isa_cases[1]),
        cmocka_unit_test_prestate(test_isa_gemm_fx, &isa_cases[2]),
        cmocka_unit_test(test_scalar_gemm_bf16),
        cmocka_unit_test_prestate(test_isa_gemm_bf16, &isa_cases[0]),
        cmocka_unit_test_prestate(test_isa_gemm_bf16, &isa_cases[1]),
        cmocka_unit_test_prestate(test_isa_gemm_bf16, &isa_cases[2]),
        cmocka_unit_test_prestate(test_isa_gemm_bf16, &isa_cases[3]),
        cmocka_unit_test_prestate(test_isa_dots, &isa_cases[3]),
        cmocka_unit_test_prestate(test_isa_gemm_x8, &isa_cases[0]),
        cmocka_unit_test_prestate(test_isa_gemm_x8, &isa_cases[1]),
        cmocka_unit_test_prestate(test_isa_gemm_x8, &isa_cases[2]),
        cmocka_unit_test(test_scalar_gemm_q8x8),
        cmocka_unit_test_prestate(test_isa_gemm_q8x8, &isa_cases[0]),
        cmocka_unit_test_prestate(test_isa_gemm_q8x8, &isa_cases[1]),
        cmocka_unit_test_prestate(test_isa_gemm_q8x8, &isa_cases[2]),
        cmocka_unit_test(test_scalar_gemm_kx8),
        cmocka_unit_test_prestate(test_isa_gemm_kx8, &isa_cases[0]),
        cmocka_unit_test_prestate(test_isa_gemm_kx8, &isa_cases[1]),
        cmocka_unit_test_prestate(test_isa_gemm_kx8, &isa_cases[2]),
        cmocka_unit_test(test_scalar_gemm_q6kx8),
        cmocka_unit_test_prestate(test_isa_gemm_q6kx8, &isa_cases[0]),
        cmocka_unit_test_prestate(test_isa_gemm_q6kx8, &isa_cases[1]),
        cmocka_unit_test_prestate(test_isa_gemm_q6kx8, &isa_cases[2]),
        cmocka_unit_test_prestate(test_isa_gemm_x16, &isa_cases[1]),
        cmocka_unit_test_prestate(test_isa_gemm_x16, &isa_cases[2]),
        cmocka_unit_test_prestate(test_isa_dots, &isa_cases[0]),
        cmocka_unit_test_prestate(test_isa_batch_invariance, &isa_cases[0]),
        cmocka_unit_test_prestate(test_isa_quantizers, &isa_cases[0]),
        cmocka_unit_test_prestate(test_isa_float_helpers, &isa_cases[0]),
        cmocka_unit_test_prestate(test_isa_dots, &isa_cases[1]),
        cmocka_unit_test_prestate(test_isa_batch_invariance, &isa_cases[1]),
        cmocka_unit_test_prestate(test_isa_quantizers, &isa_cases[1]),
        cmocka_unit_test_prestate(test_isa_float_helpers, &isa_cases[1]),
        cmocka_unit_test_prestate(test_isa_dots, &isa_cases[2]),
        cmocka_unit_test_prestate(test_isa_batch_invariance, &isa_cases[2]),
        cmocka_unit_test_prestate(test_isa_quantizers, &isa_cases[2]),
        cmocka_unit_test_prestate(test_isa_float_helpers, &isa_cases[2]),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
