/* Tests of the quant layer (src/quant).
 *
 * 1. fp16 / bf16 conversions against independent references: an exhaustive
 *    decode of all 65536 halves by the IEEE formula, a rounding reference
 *    computed with nearbyint() in double, and (where the CPU has F16C) the
 *    hardware converter.
 * 2. Type names, traits and row sizes against the GGUF block table.
 * 3. Round trips of seeded random data with per-format error bounds derived
 *    from each format's step size (see the bound table below).
 * 4. Byte-exact comparison with llama.cpp's reference quantizers and
 *    dequantizers on ../shared/fixtures/quant (skipped, exit 77, if absent).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_X86 1
#endif

#include "quant/quant.h"
#include "test_util.h"

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* ---------------------------------------------------------------- fp16 */

/* IEEE binary16 value by the textbook formula, in double. */
static double ref_half_value(uint16_t h)
{
    const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 0)
        v = ldexp((double)m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp((double)(1024 + m), e - 25);
    return s ? -v : v;
}

/* Round-to-nearest-even fp32 -> fp16 done with nearbyint() on the scaled
 * value (the default rounding mode is to nearest, ties to even). NaN maps to
 * a quiet NaN that keeps the top 10 payload bits (what F16C does). */
static uint16_t ref_fp32_to_fp16(float f)
{
    const uint32_t u = bits_of(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    if (isnan(f))
        return (uint16_t)(sign | 0x7e00 | ((u >> 13) & 0x3ff));
    const double a = fabs((double)f);
    if (a < ldexp(1.0, -14)) { /* subnormal range: units of 2^-24 */
        const double q = nearbyint(a * ldexp(1.0, 24));
        return (uint16_t)(sign | (uint16_t)q); /* q == 1024 is the min normal */
    }
    int ex;
    frexp(a, &ex); /* a = m * 2^ex, m in [0.5, 1) */
    int E = ex - 1;
    double q = nearbyint(a * ldexp(1.0, 10 - E)); /* in [1024, 2048] */
    if (q == 2048.0) {
        q = 1024.0;
        E++;
    }
    if (E > 15)
        return (uint16_t)(sign | 0x7c00);
    return (uint16_t)(sign | ((E + 15) << 10) | ((uint16_t)q - 1024));
}

#ifdef HAVE_X86
__attribute__((target("f16c"))) static uint16_t hw_fp32_to_fp16(float f)
{
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
#endif

static void test_fp16_decode_exhaustive(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        const float got = exsa_fp16_to_fp32((exsa_fp16)h);
        const double want = ref_half_value((uint16_t)h);
        if (isnan(want)) {
            /* NaN stays NaN, sign and payload kept */
            assert_true(isnan(got));
            assert_int_equal(bits_of(got), ((h & 0x8000u) << 16) | 0x7f800000u | ((h & 0x3ffu) << 13));
        } else {
            assert_true(got == (float)want);
            assert_int_equal(signbit(got) != 0, (h >> 15) != 0); /* -0 stays -0 */
        }
    }
}

static void check_f16(float f)
{
    const uint16_t want = ref_fp32_to_fp16(f);
    const uint16_t got = exsa_fp32_to_fp16(f);
    if (got != want)
        fail_msg("fp32 %a (0x%08x) -> fp16 0x%04x, want 0x%04x", (double)f, bits_of(f), got, want);
}

static void test_fp16_encode(void **state)
{
    (void)state;
    /* every half converts back to itself */
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 31) == 31 && (h & 1023))
            continue; /* NaNs: below */
        assert_int_equal(exsa_fp32_to_fp16(exsa_fp16_to_fp32((exsa_fp16)h)), h);
    }
    /* ties and their neighbours between consecutive positive halves */
    for (uint32_t h = 0; h < 0x7c00; h++) {
        const double lo = ref_half_value((uint16_t)h);
        const double hi = h + 1 < 0x7c00 ? ref_half_value((uint16_t)(h + 1)) : 65536.0;
        const float mid = (float)((lo + hi) / 2); /* exact: 12 significant bits */
        assert_true((double)mid == (lo + hi) / 2);
        check_f16(mid);
        check_f16(-mid);
        check_f16(nextafterf(mid, 0.0f));
        check_f16(nextafterf(mid, INFINITY));
    }
    /* named special values */
    assert_int_equal(exsa_fp32_to_fp16(0.0f), 0x0000);
    assert_int_equal(exsa_fp32_to_fp16(-0.0f), 0x8000);
    assert_int_equal(exsa_fp32_to_fp16(INFINITY), 0x7c00);
    assert_int_equal(exsa_fp32_to_fp16(-INFINITY), 0xfc00);
    assert_int_equal(exsa_fp32_to_fp16(65504.0f), 0x7bff);
    assert_int_equal(exsa_fp32_to_fp16(65519.996f), 0x7bff);
    assert_int_equal(exsa_fp32_to_fp16(65520.0f), 0x7c00); /* tie rounds to even = inf */
    assert_int_equal(exsa_fp32_to_fp16(1e6f), 0x7c00);
    assert_int_equal(exsa_fp32_to_fp16(0x1p-24f), 0x0001);  /* smallest subnormal */
    assert_int_equal(exsa_fp32_to_fp16(0x1p-25f), 0x0000);  /* tie to even: 0 */
    assert_int_equal(exsa_fp32_to_fp16(0x1.8p-24f), 0x0002); /* 1.5 ulp: tie to 2 */
    assert_int_equal(exsa_fp32_to_fp16(0x1p-14f), 0x0400);  /* smallest normal */
    assert_int_equal(exsa_fp32_to_fp16(1e-40f), 0x0000);    /* fp32 subnormal */
    assert_int_equal(exsa_fp32_to_fp16(1.0f + 0x1p-11f), 0x3c00); /* tie to even */
    assert_int_equal(exsa_fp32_to_fp16(1.0f + 0x1.8p-10f), 0x3c02);
    const uint16_t qn = exsa_fp32_to_fp16(NAN);
    assert_int_equal(qn & 0x7c00, 0x7c00);
    assert_true((qn & 0x3ff) != 0);
    assert_true((qn & 0x200) != 0); /* quiet */
    const uint16_t sn = exsa_fp32_to_fp16(float_of(0xff800001u)); /* signalling, tiny payload */
    assert_int_equal(sn & 0xfe00, 0xfe00);
    assert_true(isnan(exsa_fp16_to_fp32(sn)));

    /* random bit patterns against the nearbyint reference and F16C */
    uint64_t rng = 12345;
#ifdef HAVE_X86
    unsigned eax, ebx, ecx = 0, edx;
    const int hw = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
#endif
    for (int i = 0; i < 300000; i++) {
        uint32_t u = (uint32_t)exsa_test_rand_u64(&rng);
        if (i & 1) /* half of them inside fp16's exponent range */
            u = (u & 0x83ffffffu) | ((uint32_t)(100 + (i >> 1) % 44) << 23);
        const float f = float_of(u);
        check_f16(f);
#ifdef HAVE_X86
        if (hw)
            assert_int_equal(exsa_fp32_to_fp16(f), hw_fp32_to_fp16(f));
#endif
    }
}

/* ---------------------------------------------------------------- bf16 */

/* Nearest bf16 by comparing distances in double; ties to the even one. */
static uint16_t ref_fp32_to_bf16(float f)
{
    const uint32_t u = bits_of(f);
    if (isnan(f))
        return (uint16_t)((u >> 16) | 0x40);
    const uint32_t lo = u & 0xffff0000u; /* toward zero */
    const double dlo = fabs((double)float_of(lo));
    const uint32_t hib = lo + 0x10000u;
    /* next one up in magnitude; past the largest finite it is 2^128 */
    const double dhi = (hib & 0x7fffffffu) >= 0x7f800000u ? ldexp(1.0, 128)
                                                          : fabs((double)float_of(hib));
    const double a = fabs((double)f);
    uint32_t r;
    if (a - dlo < dhi - a)
        r = lo;
    else if (a - dlo > dhi - a)
        r = hib;
    else
        r = ((lo >> 16) & 1) ? hib : lo;
    return (uint16_t)(r >> 16); /* hib past max finite is 0x7f80..: inf */
}

static void test_bf16(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = exsa_bf16_to_fp32((exsa_bf16)h);
        assert_int_equal(bits_of(f), h << 16);
        if (!isnan(f))
            assert_int_equal(exsa_fp32_to_bf16(f), h);
    }
    assert_int_equal(exsa_fp32_to_bf16(0.0f), 0x0000);
    assert_int_equal(exsa_fp32_to_bf16(-0.0f), 0x8000);
    assert_int_equal(exsa_fp32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(exsa_fp32_to_bf16(-INFINITY), 0xff80);
    assert_int_equal(exsa_fp32_to_bf16(FLT_MAX), 0x7f80); /* rounds up past the max */
    assert_int_equal(exsa_fp32_to_bf16(float_of(0x3f808000u)), 0x3f80); /* tie, even down */
    assert_int_equal(exsa_fp32_to_bf16(float_of(0x3f818000u)), 0x3f82); /* tie, even up */
    assert_int_equal(exsa_fp32_to_bf16(float_of(0x3f808001u)), 0x3f81);
    assert_int_equal(exsa_fp32_to_bf16(float_of(0x00018000u)), 0x0002); /* subnormal tie */
    assert_int_equal(exsa_fp32_to_bf16(float_of(0x7f800001u)), 0x7fc0); /* sNaN -> qNaN */
    assert_int_equal(exsa_fp32_to_bf16(float_of(0xffc12345u)), 0xffc1);
    uint64_t rng = 777;
    for (int i = 0; i < 300000; i++) {
        const float f = float_of((uint32_t)exsa_test_rand_u64(&rng));
        const uint16_t got = exsa_fp32_to_bf16(f), want = ref_fp32_to_bf16(f);
        if (got != want)
            fail_msg("fp32 0x%08x -> bf16 0x%04x, want 0x%04x", bits_of(f), got, want);
    }
}

/* ------------------------------------------------------- names, traits */

struct type_info {
    int type;
    const char *lower, *upper;
    int64_t block, bytes;
    int quantized, vec_dot;
};

/* Block sizes and bytes of the GGUF spec (ggml's type table). */
static const struct type_info types[] = {
    {EXSA_TYPE_F32, "f32", "F32", 1, 4, 0, EXSA_TYPE_F32},
    {EXSA_TYPE_F16, "f16", "F16", 1, 2, 0, EXSA_TYPE_F32},
    {EXSA_TYPE_BF16, "bf16", "BF16", 1, 2, 0, EXSA_TYPE_BF16},
    {EXSA_TYPE_Q4_0, "q4_0", "Q4_0", 32, 18, 1, EXSA_TYPE_Q8_0},
    {EXSA_TYPE_Q4_1, "q4_1", "Q4_1", 32, 20, 1, EXSA_TYPE_Q8_0},
    {EXSA_TYPE_Q5_0, "q5_0", "Q5_0", 32, 22, 1, EXSA_TYPE_Q8_0},
    {EXSA_TYPE_Q5_1, "q5_1", "Q5_1", 32, 24, 1, EXSA_TYPE_Q8_0},
    {EXSA_TYPE_Q8_0, "q8_0", "Q8_0", 32, 34, 1, EXSA_TYPE_Q8_0},
    {EXSA_TYPE_Q8_1, "q8_1", "Q8_1", 32, 36, 1, EXSA_TYPE_Q8_1},
    {EXSA_TYPE_Q2_K, "q2_k", "Q2_K", 256, 84, 1, EXSA_TYPE_Q8_K},
    {EXSA_TYPE_Q3_K, "q3_k", "Q3_K", 256, 110, 1, EXSA_TYPE_Q8_K},
    {EXSA_TYPE_Q4_K, "q4_k", "Q4_K", 256, 144, 1, EXSA_TYPE_Q8_K},
    {EXSA_TYPE_Q5_K, "q5_k", "Q5_K", 256, 176, 1, EXSA_TYPE_Q8_K},
    {EXSA_TYPE_Q6_K, "q6_k", "Q6_K", 256, 210, 1, EXSA_TYPE_Q8_K},
    {EXSA_TYPE_Q8_K, "q8_k", "Q8_K", 256, 292, 1, EXSA_TYPE_Q8_K},
};
#define N_TYPES (sizeof(types) / sizeof(types[0]))

static void test_names_traits(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_TYPES; i++) {
        const struct type_info *ti = &types[i];
        assert_int_equal(exsa_type_from_name(ti->lower), ti->type);
        assert_int_equal(exsa_type_from_name(ti->upper), ti->type);
        const exsa_type_traits *tr = exsa_type_traits_get(ti->type);
        assert_non_null(tr);
        assert_int_equal(exsa_type_from_name(tr->name), ti->type);
        assert_int_equal(tr->block_size, ti->block);
        assert_int_equal(tr->type_size, ti->bytes);
        assert_int_equal(tr->is_quantized, ti->quantized);
        assert_int_equal(tr->vec_dot_type, ti->vec_dot);
        assert_non_null(tr->to_float);
        assert_non_null(tr->from_float);
        assert_int_equal(exsa_type_row_size(ti->type, 0), 0);
        assert_int_equal(exsa_type_row_size(ti->type, 4096), (size_t)(4096 / ti->block * ti->bytes));
        assert_int_equal(exsa_type_row_size(ti->type, ti->block * 3), (size_t)(3 * ti->bytes));
        if (ti->block > 1) /* not a whole number of blocks */
            assert_int_equal(exsa_type_row_size(ti->type, ti->block + 1), 0);
        assert_int_equal(exsa_type_row_size(ti->type, -ti->block), 0);
    }
    assert_int_equal(exsa_type_from_name("Bf16"), EXSA_TYPE_BF16);
    assert_int_equal(exsa_type_from_name("q4_K"), EXSA_TYPE_Q4_K);
    const char *bad[] = {"", "q4", "q4_k ", " q4_k", "q4_kk", "iq2_xxs", "f64", "q4_k\n", "Q"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(exsa_type_from_name(bad[i]), -1);
    assert_int_equal(exsa_type_from_name(NULL), -1);
    /* ids GGUF knows but Exsa does not compute with (Q4_2, IQ*, I8, ...) */
    const int unsupported[] = {-1, 4, 5, 16, 17, 20, 24, 29, 31, 39, 40, 1000, -1000};
    for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++) {
        assert_null(exsa_type_traits_get(unsupported[i]));
        assert_int_equal(exsa_type_row_size(unsupported[i], 256), 0);
    }
    /* size arithmetic that would overflow gives 0, not a wrapped size */
    assert_int_equal(exsa_type_row_size(EXSA_TYPE_F32, INT64_MAX), 0);
    assert_int_equal(exsa_type_row_size(EXSA_TYPE_F16, INT64_MAX - 1), 0);
    assert_int_equal(exsa_type_row_size(EXSA_TYPE_Q8_K, INT64_MAX / 256 * 256), 0);
    assert_int_equal(exsa_type_row_size(EXSA_TYPE_F16, PTRDIFF_MAX / 2), (size_t)(PTRDIFF_MAX / 2 * 2));
    /* the traits' quantizers are the reference ones */
    assert_ptr_equal(exsa_type_traits_get(EXSA_TYPE_Q4_K)->from_float, exsa_quantize_row_q4_K_ref);
    assert_ptr_equal(exsa_type_traits_get(EXSA_TYPE_Q8_0)->to_float, exsa_dequantize_row_q8_0);
}

/* --------------------------------------------------------- round trips */

/* Error bounds, per block of the format, from the input alone.
 *
 * Symmetric formats with b bits use step = amax / 2^(b-1) (Q4_0: d = amax/8)
 * and affine ones step = (max - min) / (2^b - 1); the K-quants fit the range
 * [min(0, min), max] of the whole super-block. Round-to-nearest gives
 * |err| <= step/2 and, for errors spread over the step, RMS = step/sqrt(12)
 * = 0.29 step. On top of that:
 *  - the legacy formats store d (and m) in fp16: relative error 2^-11 on d
 *    times the largest level, |min| * 2^-11 on m;
 *  - Q4_0/Q5_0/Q3_K/Q6_K map the largest-magnitude value to -2^(b-1); a
 *    value of the other sign near amax is clamped to level 2^(b-1)-1, so it
 *    can be off by up to one step;
 *  - the K-quants round each sub-block scale (and min) to 4-8 bits of the
 *    super-block's, so a sub-block's grid can stop short of its extremes by
 *    a fraction of a step (Q2_K: 4-bit scales over 3 levels, much more).
 * max_err and rms are in units of step; rms is over all elements of a data
 * kind, so biased rounding (truncation: 0.58 step) fails it. The legacy
 * formats are checked against the exact per-element bound above (worst
 * measured ratio 0.999). For the K-quants the weighted least-squares fits
 * trade the largest error for a lower weighted one, so max_err is the
 * theory's 0.5 step plus room for the scale rounding and that trade, set at
 * about 1.3-1.6x the measured worst case (the comment on each line). */
struct rt_bound {
    int type;
    int bits;
    int affine;
    double max_err, rms;
};

static const struct rt_bound rt_bounds[] = {
    /* legacy formats: exact per-element bounds, see check_block_legacy */
    {EXSA_TYPE_Q4_0, 4, 0, 0, 0.33},
    {EXSA_TYPE_Q4_1, 4, 1, 0, 0.33},
    {EXSA_TYPE_Q5_0, 5, 0, 0, 0.33},
    {EXSA_TYPE_Q5_1, 5, 1, 0, 0.33},
    {EXSA_TYPE_Q8_0, 8, 0, 0, 0.33},
    {EXSA_TYPE_Q8_1, 8, 0, 0, 0.33},
    /* K-quants: step over the whole super-block; measured worst max / rms
     * over these data kinds in the comments */
    {EXSA_TYPE_Q2_K, 2, 1, 1.00, 0.30}, /* 0.62 / 0.23 */
    {EXSA_TYPE_Q3_K, 3, 0, 1.25, 0.36}, /* 0.94 / 0.29 */
    {EXSA_TYPE_Q4_K, 4, 1, 1.25, 0.33}, /* 0.80 / 0.25 */
    {EXSA_TYPE_Q5_K, 5, 1, 1.50, 0.33}, /* 0.90 / 0.26 */
    {EXSA_TYPE_Q6_K, 6, 0, 1.00, 0.33}, /* 0.60 / 0.25 */
    {EXSA_TYPE_Q8_K, 8, 0, 0.51, 0.31}, /* plain rounding, float scale: 0.50 / 0.29 */
};

enum data_kind { DK_NORMAL, DK_UNIFORM, DK_POSITIVE, DK_OUTLIERS, DK_ZERO, DK_CONST, DK_COUNT };
static const char *const dk_names[] = {"normal", "uniform", "positive", "outliers", "zero", "const"};

#define RT_ROWS 8
#define RT_COLS 1024 /* 4 super-blocks, 32 legacy blocks a row */

static void gen_data(enum data_kind kind, uint64_t seed, float *x, size_t n)
{
    uint64_t rng = seed;
    for (size_t i = 0; i < n; i++) {
        const size_t row = i / RT_COLS;
        const float scale = ldexpf(1.0f, (int)row - 3); /* 2^-3 .. 2^4 by row */
        switch (kind) {
        case DK_NORMAL:
            x[i] = scale * exsa_test_rand_normal(&rng);
            break;
        case DK_UNIFORM:
            x[i] = scale * (2.0f * exsa_test_rand_uniform(&rng) - 1.0f);
            break;
        case DK_POSITIVE:
            x[i] = scale * (0.5f + 1.5f * exsa_test_rand_uniform(&rng));
            break;
        case DK_OUTLIERS:
            x[i] = scale * exsa_test_rand_normal(&rng);
            if (exsa_test_rand_u64(&rng) % 61 == 0)
                x[i] *= 40.0f;
            break;
        case DK_ZERO:
            x[i] = 0.0f;
            break;
        case DK_CONST:
            x[i] = (row & 1) ? -3.25f * scale : 0.7f * scale;
            break;
        default:
            break;
        }
    }
}

static void block_stats(const float *x, int n, float *amax, float *min, float *max)
{
    *amax = 0.0f;
    *min = x[0];
    *max = x[0];
    for (int i = 0; i < n; i++) {
        *amax = fmaxf(*amax, fabsf(x[i]));
        *min = fminf(*min, x[i]);
        *max = fmaxf(*max, x[i]);
    }
}

/* Checks one legacy block; accumulates (err/step)^2. Returns the worst
 * err/bound ratio seen (must be <= 1). */
static double check_block_legacy(const struct rt_bound *b, const float *x, const float *y, int n,
                                 double *sum_sq, long *count)
{
    float amax, min, max;
    block_stats(x, n, &amax, &min, &max);
    const double h = ldexp(1.0, -11); /* fp16 relative rounding */
    const double eps = 8.0 * FLT_EPSILON * (fabs(min) + fabs(max)) + 1e-30;
    double worst = 0.0;
    if (b->affine) {
        const int levels = (1 << b->bits) - 1;
        const double step = ((double)max - min) / levels;
        for (int i = 0; i < n; i++) {
            const double err = fabs((double)y[i] - x[i]);
            const double bound = 0.5 * step + levels * step * h + fabs(min) * h + eps;
            worst = fmax(worst, err / bound);
            if (step > 0) {
                *sum_sq += (err / step) * (err / step);
                (*count)++;
            }
        }
        return worst;
    }
    /* symmetric: d = amax / 2^(b-1) (Q8: amax / 127), levels -2^(b-1)..2^(b-1)-1 */
    const int half = b->bits == 8 ? 127 : 1 << (b->bits - 1);
    const double step = (double)amax / half;
    /* the value that set amax, and its sign: the other sign clamps at half-1 */
    float signed_max = 0.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > fabsf(signed_max))
            signed_max = x[i];
    for (int i = 0; i < n; i++) {
        const double err = fabs((double)y[i] - x[i]);
        double ideal = 0.5 * step;
        if (b->bits < 8 && (x[i] > 0) != (signed_max > 0))
            ideal = fmax(ideal, fabs(x[i]) - (half - 1) * step);
        const double bound = ideal + half * step * h + eps;
        worst = fmax(worst, err / bound);
        if (step > 0) {
            *sum_sq += (err / step) * (err / step);
            (*count)++;
        }
    }
    return worst;
}

static void test_round_trip(void **state)
{
    (void)state;
    const size_t n = (size_t)RT_ROWS * RT_COLS;
    float *x = malloc(n * sizeof(float));
    float *y = malloc(n * sizeof(float));
    void *q = malloc(RT_ROWS * exsa_type_row_size(EXSA_TYPE_Q8_K, RT_COLS) + 64);
    assert_non_null(x);
    assert_non_null(y);
    assert_non_null(q);

    for (size_t t = 0; t < sizeof(rt_bounds) / sizeof(rt_bounds[0]); t++) {
        const struct rt_bound *b = &rt_bounds[t];
        const exsa_type_traits *tr = exsa_type_traits_get(b->type);
        const size_t rs = exsa_type_row_size(b->type, RT_COLS);
        const int bs = (int)tr->block_size;
        for (int kind = 0; kind < DK_COUNT; kind++) {
            gen_data((enum data_kind)kind, 1000 + (uint64_t)kind, x, n);
            for (int r = 0; r < RT_ROWS; r++)
                tr->from_float(x + (size_t)r * RT_COLS, (char *)q + r * rs, RT_COLS);
            for (int r = 0; r < RT_ROWS; r++)
                tr->to_float((const char *)q + r * rs, y + (size_t)r * RT_COLS, RT_COLS);

            double sum_sq = 0.0, worst = 0.0;
            long count = 0;
            for (size_t blk = 0; blk < n / (size_t)bs; blk++) {
                const float *xb = x + blk * bs, *yb = y + blk * bs;
                if (kind == DK_ZERO) {
                    for (int i = 0; i < bs; i++)
                        assert_true(yb[i] == 0.0f);
                    continue;
                }
                if (b->max_err == 0.0) {
                    worst = fmax(worst, check_block_legacy(b, xb, yb, bs, &sum_sq, &count));
                    continue;
                }
                float amax, min, max;
                block_stats(xb, bs, &amax, &min, &max);
                const double step = b->affine ? (fmax(max, 0.0) - fmin(min, 0.0)) / ((1 << b->bits) - 1)
                                              : (double)amax / (b->bits == 8 ? 127 : 1 << (b->bits - 1));
                for (int i = 0; i < bs; i++) {
                    const double err = fabs((double)yb[i] - xb[i]) / step;
                    worst = fmax(worst, err / b->max_err);
                    sum_sq += err * err;
                    count++;
                }
            }
            const double rms = count ? sqrt(sum_sq / count) : 0.0;
            /* constant blocks have a zero-width range: only the max bound */
            const int check_rms = kind != DK_CONST && kind != DK_ZERO;
            if (getenv("EXSA_TEST_VERBOSE"))
                print_message("  %-5s %-8s worst err/bound %.3f  rms %.3f step\n", tr->name,
                              dk_names[kind], worst, rms);
            if (worst > 1.0 || (check_rms && rms > b->rms))
                fail_msg("%s on %s data: worst err/bound %.3f (must be <= 1), rms %.3f step "
                         "(bound %.2f)",
                         tr->name, dk_names[kind], worst, rms, b->rms);
        }
    }
    free(x);
    free(y);
    free(q);
}

/* Blocks are independent, and non-finite input in one block neither crashes
 * (the sanitizer build would flag any UB) nor leaks into the next block. */
static void test_nonfinite_isolated(void **state)
{
    (void)state;
    const float poison[] = {NAN, INFINITY, -INFINITY, 3e38f, -3e38f, 1e-45f};
    float x[2 * EXSA_QK_K], y[2 * EXSA_QK_K];
    uint8_t q2[2 * sizeof(exsa_block_q8_K)], q1[sizeof(exsa_block_q8_K)];
    for (size_t t = 0; t < N_TYPES; t++) {
        const exsa_type_traits *tr = exsa_type_traits_get(types[t].type);
        if (!tr->is_quantized)
            continue;
        const int bs = (int)tr->block_size;
        for (size_t p = 0; p < sizeof(poison) / sizeof(poison[0]); p++) {
            uint64_t rng = 99 + p;
            for (int i = 0; i < 2 * bs; i++)
                x[i] = exsa_test_rand_normal(&rng);
            for (int i = 0; i < bs; i += 7)
                x[i] = poison[p];
            tr->from_float(x, q2, 2 * bs);
            tr->from_float(x + bs, q1, bs);
            assert_memory_equal(q2 + tr->type_size, q1, (size_t)tr->type_size);
            tr->to_float(q2, y, 2 * bs);
            for (int i = bs; i < 2 * bs; i++)
                assert_true(isfinite(y[i]));
        }
    }
}

/* Activation formats carry sums that the dot products rely on. */
static void test_activation_sums(void **state)
{
    (void)state;
    float x[2 * EXSA_QK_K];
    uint64_t rng = 4242;
    for (int i = 0; i < 2 * EXSA_QK_K; i++)
        x[i] = 3.0f * exsa_test_rand_normal(&rng);
    exsa_block_q8_K k[2];
    exsa_quantize_row_q8_K_ref(x, k, 2 * EXSA_QK_K);
    for (int b = 0; b < 2; b++) {
        for (int g = 0; g < EXSA_QK_K / 16; g++) {
            int sum = 0;
            for (int i = 0; i < 16; i++)
                sum += k[b].qs[16 * g + i];
            assert_int_equal(k[b].bsums[g], sum);
        }
        float amax = 0.0f;
        for (int i = 0; i < EXSA_QK_K; i++)
            amax = fmaxf(amax, fabsf(x[b * EXSA_QK_K + i]));
        /* d = -max/127: negative when the largest magnitude is positive */
        assert_true(fabsf(fabsf(k[b].d) - amax / 127.0f) <= amax * 1e-6f);
    }
    exsa_block_q8_1 q[EXSA_QK_K / 32];
    exsa_quantize_row_q8_1_ref(x, q, EXSA_QK_K);
    for (int b = 0; b < EXSA_QK_K / 32; b++) {
        int sum = 0;
        for (int i = 0; i < 32; i++)
            sum += q[b].qs[i];
        const float d = exsa_fp16_to_fp32(q[b].d), s = exsa_fp16_to_fp32(q[b].s);
        /* s is fp16(sum * d_unrounded): within fp16 rounding of d and s */
        const float want = (float)sum * d;
        assert_true(fabsf(s - want) <= fabsf(want) * 0x1p-10f + 1e-6f);
    }
}

/* ------------------------------------------------------------ fixtures */

#define FX_ROWS 16
#define FX_COLS 256

struct fixture_case {
    const char *name; /* file stem: q4_K */
};

static float *fx_src;

static void *read_fixture(const char *file, size_t *size)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/quant/%s", exsa_test_fixtures_dir(), file);
    void *p = exsa_test_read_file(path, size);
    if (p == NULL)
        fail_msg("cannot read fixture %s", path);
    return p;
}

static void test_fixture_type(void **state)
{
    const struct fixture_case *fc = *state;
    const int type = exsa_type_from_name(fc->name);
    assert_true(type >= 0);
    const exsa_type_traits *tr = exsa_type_traits_get(type);
    assert_non_null(tr);
    const size_t rs = exsa_type_row_size(type, FX_COLS);
    char file[64];

    size_t qsize;
    snprintf(file, sizeof(file), "%s.q", fc->name);
    uint8_t *ref_q = read_fixture(file, &qsize);
    assert_int_equal(qsize, FX_ROWS * rs);

    /* dequantize: bit for bit (q8_K has no .dq file) */
    int dq_ok = -1;
    if (type != EXSA_TYPE_Q8_K) {
        size_t dsize;
        snprintf(file, sizeof(file), "%s.dq.f32", fc->name);
        float *ref_dq = read_fixture(file, &dsize);
        assert_int_equal(dsize, FX_ROWS * FX_COLS * sizeof(float));
        float *dq = malloc(dsize);
        assert_non_null(dq);
        for (int r = 0; r < FX_ROWS; r++)
            tr->to_float(ref_q + r * rs, dq + r * FX_COLS, FX_COLS);
        dq_ok = memcmp(dq, ref_dq, dsize) == 0;
        free(dq);
        free(ref_dq);
    }

    /* quantize row by row: byte for byte */
    uint8_t *q = malloc(qsize);
    assert_non_null(q);
    for (int r = 0; r < FX_ROWS; r++)
        tr->from_float(fx_src + r * FX_COLS, q + r * rs, FX_COLS);
    int bad_rows = 0;
    for (int r = 0; r < FX_ROWS; r++) {
        const uint8_t *a = q + r * rs, *b = ref_q + r * rs;
        int same;
        if (type == EXSA_TYPE_Q8_K) {
            /* llama.cpp returns early on an all-zero block without writing
             * bsums, so the fixture holds whatever memory was there; compare
             * d and qs, and bsums only where d != 0 (ours are then 0). */
            const exsa_block_q8_K *ma = (const exsa_block_q8_K *)a;
            const exsa_block_q8_K *mb = (const exsa_block_q8_K *)b;
            same = 1;
            for (size_t i = 0; i < rs / sizeof(exsa_block_q8_K); i++) {
                if (mb[i].d == 0.0f) {
                    same &= ma[i].d == 0.0f &&
                            memcmp(ma[i].qs, mb[i].qs, sizeof(ma[i].qs)) == 0;
                    for (int g = 0; g < EXSA_QK_K / 16; g++)
                        same &= ma[i].bsums[g] == 0;
                } else {
                    same &= memcmp(&ma[i], &mb[i], sizeof(ma[i])) == 0;
                }
            }
        } else {
            same = memcmp(a, b, rs) == 0;
        }
        if (!same) {
            size_t off = 0;
            while (off < rs && a[off] == b[off])
                off++;
            print_message("  %s row %d differs first at byte %zu of the row (ours 0x%02x, "
                          "llama.cpp 0x%02x)\n",
                          fc->name, r, off, off < rs ? a[off] : 0, off < rs ? b[off] : 0);
            bad_rows++;
        }
    }
    print_message("  %-5s quantize: %s (%d/%d rows equal)   dequantize: %s\n", fc->name,
                  bad_rows ? "DIFFERS" : "bytes equal", FX_ROWS - bad_rows, FX_ROWS,
                  dq_ok < 0 ? "n/a" : dq_ok ? "bits equal" : "DIFFERS");
    free(q);
    free(ref_q);
    assert_int_equal(bad_rows, 0);
    assert_int_not_equal(dq_ok, 0);
}

static struct fixture_case fx_cases[] = {
    {"f16"},  {"bf16"}, {"q4_0"}, {"q4_1"}, {"q5_0"}, {"q5_1"}, {"q8_0"},
    {"q2_K"}, {"q3_K"}, {"q4_K"}, {"q5_K"}, {"q6_K"}, {"q8_K"},
};

#define FX_TEST(i) {"fixture_quant_" #i, test_fixture_type, NULL, NULL, &fx_cases[i]}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp16_decode_exhaustive),
        cmocka_unit_test(test_fp16_encode),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_names_traits),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_nonfinite_isolated),
        cmocka_unit_test(test_activation_sums),
    };
    int failed = cmocka_run_group_tests_name("quant", tests, NULL, NULL);

    if (exsa_test_fixtures_dir() == NULL) {
        printf("test_quant: ../shared/fixtures not found; llama.cpp comparison skipped\n");
        return failed ? failed : 77;
    }
    size_t size;
    fx_src = read_fixture("src.f32", &size);
    if (size != FX_ROWS * FX_COLS * sizeof(float)) {
        printf("test_quant: quant/src.f32 has %zu bytes, want %zu\n", size,
               (size_t)(FX_ROWS * FX_COLS * sizeof(float)));
        free(fx_src);
        return 1;
    }
    /* the file is little-endian float32, as is every host Exsa builds on */
    const struct CMUnitTest fx_tests[] = {
        FX_TEST(0), FX_TEST(1), FX_TEST(2), FX_TEST(3),  FX_TEST(4),  FX_TEST(5), FX_TEST(6),
        FX_TEST(7), FX_TEST(8), FX_TEST(9), FX_TEST(10), FX_TEST(11), FX_TEST(12),
    };
    failed += cmocka_run_group_tests_name("quant_llama_cpp_fixtures", fx_tests, NULL, NULL);
    free(fx_src);
    return failed;
}
