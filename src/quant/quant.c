/* Scalar conversions, the legacy 32-element block formats (Q4_0 .. Q8_1) and
 * the table of type traits. The K-quants (256-element super-blocks) live in
 * quant_k.c.
 *
 * The quantizers reproduce llama.cpp's *_ref quantizers byte for byte, so the
 * float expressions below keep the exact operation order (and the truncating
 * float -> int conversions) of those definitions: changing "a*b*c" into
 * "a*(b*c)" changes bytes. Conversions that would be undefined behaviour in
 * C for non-finite input (NaN, inf) go through clamp helpers that give the
 * same result as llama.cpp on finite input and a defined one otherwise.
 */
#include "quant/quant.h"

/* Bit-compatibility needs every a*b+c rounded twice, as llama.cpp's build
 * does: forbid fusing into FMA even where -march or -std=gnu11 allows it. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <ctype.h>
#include <stdint.h>
#include <float.h>
#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- fp16/bf16 */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

float exsa_fp16_to_fp32(exsa_fp16 h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;

    if (exp == 0x1f) /* inf / NaN: keep the payload, it fits in fp32's */
        return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 is exact in fp32 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    /* normal: rebias the exponent from 15 to 127 */
    return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

exsa_fp16 exsa_fp32_to_fp16(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;

    if (a > 0x7f800000u) /* NaN: quiet it, keep the top payload bits */
        return (exsa_fp16)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) /* >= 65520 rounds (ties to even) past 65504 */
        return (exsa_fp16)(sign | 0x7c00u);
    if (a >= 0x38800000u) { /* fp16 normal range (>= 2^-14) */
        uint32_t h = (a >> 13) - (112u << 10);
        uint32_t rem = a & 0x1fffu;
        /* a carry out of the mantissa correctly bumps the exponent */
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
            h++;
        return (exsa_fp16)(sign | h);
    }
    if (a <= 0x33000000u) /* <= 2^-25: rounds to zero (2^-25 is a tie to 0) */
        return (exsa_fp16)sign;
    /* fp16 subnormal: the value in units of 2^-24 is m >> shift */
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14 .. 24 for e in 102 .. 112 */
    uint32_t h = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u)))
        h++; /* may reach 0x400, the smallest normal: still right */
    return (exsa_fp16)(sign | h);
}

float exsa_bf16_to_fp32(exsa_bf16 h)
{
    return f32_from_bits((uint32_t)h << 16);
}

exsa_bf16 exsa_fp32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: truncate and force quiet */
        return (exsa_bf16)((u >> 16) | 0x40u);
    /* round to nearest even; overflow carries into inf as it should */
    return (exsa_bf16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* ------------------------------------------------------------ row helpers */

static void copy_f32(const float *x, float *y, int64_t n)
{
    if (n > 0)
        memmove(y, x, (size_t)n * sizeof(float));
}

static void from_f32_copy(const float *x, void *y, int64_t n)
{
    copy_f32(x, y, n);
}

static void to_f32_copy(const void *x, float *y, int64_t n)
{
    copy_f32(x, y, n);
}

static void f16_to_f32_row(const void *vx, float *y, int64_t n)
{
    const exsa_fp16 *x = vx;
    for (int64_t i = 0; i < n; i++)
        y[i] = exsa_fp16_to_fp32(x[i]);
}

static void f32_to_f16_row(const float *x, void *vy, int64_t n)
{
    exsa_fp16 *y = vy;
    for (int64_t i = 0; i < n; i++)
        y[i] = exsa_fp32_to_fp16(x[i]);
}

static void bf16_to_f32_row(const void *vx, float *y, int64_t n)
{
    const exsa_bf16 *x = vx;
    for (int64_t i = 0; i < n; i++)
        y[i] = exsa_bf16_to_fp32(x[i]);
}

static void f32_to_bf16_row(const float *x, void *vy, int64_t n)
{
    exsa_bf16 *y = vy;
    for (int64_t i = 0; i < n; i++)
        y[i] = exsa_fp32_to_bf16(x[i]);
}

/* (int)v truncated toward zero and clamped to [lo, hi]; NaN gives lo.
 * llama.cpp writes (int8_t)(v) where v is in range for finite input; this
 * gives the same value there without UB when the input held inf or NaN. */
static int trunc_clamp(float v, int lo, int hi)
{
    if (!(v > (float)lo))
        return lo;
    if (v >= (float)hi)
        return hi;
    return (int)v;
}

/* roundf(v) (half away from zero) clamped to int8, NaN -> 0. */
static int8_t round_i8(float v)
{
    if (v != v)
        return 0;
    float r = roundf(v);
    if (r >= 127.0f)
        return 127;
    if (r <= -128.0f)
        return -128;
    return (int8_t)r;
}

/* Element of largest magnitude (first one on ties), with its sign. */
static float signed_absmax(const float *x, int n)
{
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

static void min_max(const float *x, int n, float *pmin, float *pmax)
{
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < min)
            min = x[j];
        if (x[j] > max)
            max = x[j];
    }
    *pmin = min;
    *pmax = max;
}

/* ------------------------------------------------------------------- Q4_0 */

void exsa_quantize_row_q4_0_ref(const float *x, void *vy, int64_t n)
{
    exsa_block_q4_0 *y = vy;
    const int qk = EXSA_QK4_0;
    for (int64_t i = 0; i < n / qk; i++, x += qk) {
        /* the largest-magnitude value maps to -8, using the full range */
        const float d = signed_absmax(x, qk) / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = exsa_fp32_to_fp16(d);
        for (int j = 0; j < qk / 2; j++) {
            const float x0 = x[j] * id;
            const float x1 = x[qk / 2 + j] * id;
            const int q0 = trunc_clamp(x0 + 8.5f, 0, 15);
            const int q1 = trunc_clamp(x1 + 8.5f, 0, 15);
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void exsa_dequantize_row_q4_0(const void *vx, float *y, int64_t n)
{
    const exsa_block_q4_0 *x = vx;
    const int qk = EXSA_QK4_0;
    for (int64_t i = 0; i < n / qk; i++, y += qk) {
        const float d = exsa_fp16_to_fp32(x[i].d);
        for (int j = 0; j < qk / 2; j++) {
            y[j] = ((x[i].qs[j] & 0x0f) - 8) * d;
            y[j + qk / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

/* ------------------------------------------------------------------- Q4_1 */

void exsa_quantize_row_q4_1_ref(const float *x, void *vy, int64_t n)
{
    exsa_block_q4_1 *y = vy;
    const int qk = EXSA_QK4_1;
    for (int64_t i = 0; i < n / qk; i++, x += qk) {
        float min, max;
        min_max(x, qk, &min, &max);
        const float d = (max - min) / 15;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = exsa_fp32_to_fp16(d);
        y[i].m = exsa_fp32_to_fp16(min);
        for (int j = 0; j < qk / 2; j++) {
            const float x0 = (x[j] - min) * id;
            const float x1 = (x[qk / 2 + j] - min) * id;
            const int q0 = trunc_clamp(x0 + 0.5f, 0, 15);
            const int q1 = trunc_clamp(x1 + 0.5f, 0, 15);
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void exsa_dequantize_row_q4_1(const void *vx, float *y, int64_t n)
{
    const exsa_block_q4_1 *x = vx;
    const int qk = EXSA_QK4_1;
    for (int64_t i = 0; i < n / qk; i++, y += qk) {
        const float d = exsa_fp16_to_fp32(x[i].d);
        const float m = exsa_fp16_to_fp32(x[i].m);
        for (int j = 0; j < qk / 2; j++) {
            y[j] = (x[i].qs[j] & 0x0f) * d + m;
            y[j + qk / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

/* ------------------------------------------------------------------- Q5_0 */

void exsa_quantize_row_q5_0_ref(const float *x, void *vy, int64_t n)
{
    exsa_block_q5_0 *y = vy;
    const int qk = EXSA_QK5_0;
    for (int64_t i = 0; i < n / qk; i++, x += qk) {
        const float d = signed_absmax(x, qk) / -16;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = exsa_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < qk / 2; j++) {
            const float x0 = x[j] * id;
            const float x1 = x[qk / 2 + j] * id;
            const uint32_t q0 = (uint32_t)trunc_clamp(x0 + 16.5f, 0, 31);
            const uint32_t q1 = (uint32_t)trunc_clamp(x1 + 16.5f, 0, 31);
            y[i].qs[j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
            /* bit 4 of element j goes to bit j of qh, of j+16 to bit j+16 */
            qh |= (q0 >> 4) << j;
            qh |= (q1 >> 4) << (j + qk / 2);
        }
        for (int b = 0; b < 4; b++) /* little-endian, as GGUF stores it */
            y[i].qh[b] = (uint8_t)(qh >> (8 * b));
    }
}

static uint32_t load_qh(const uint8_t qh[4])
{
    return (uint32_t)qh[0] | ((uint32_t)qh[1] << 8) | ((uint32_t)qh[2] << 16) |
           ((uint32_t)qh[3] << 24);
}

void exsa_dequantize_row_q5_0(const void *vx, float *y, int64_t n)
{
    const exsa_block_q5_0 *x = vx;
    const int qk = EXSA_QK5_0;
    for (int64_t i = 0; i < n / qk; i++, y += qk) {
        const float d = exsa_fp16_to_fp32(x[i].d);
        const uint32_t qh = load_qh(x[i].qh);
        for (int j = 0; j < qk / 2; j++) {
            const int h0 = (int)((qh >> j) & 1u) << 4;
            const int h1 = (int)((qh >> (j + qk / 2)) & 1u) << 4;
            y[j] = (((x[i].qs[j] & 0x0f) | h0) - 16) * d;
            y[j + qk / 2] = (((x[i].qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

/* ------------------------------------------------------------------- Q5_1 */

void exsa_quantize_row_q5_1_ref(const float *x, void *vy, int64_t n)
{
    exsa_block_q5_1 *y = vy;
    const int qk = EXSA_QK5_1;
    for (int64_t i = 0; i < n / qk; i++, x += qk) {
        float min, max;
        min_max(x, qk, &min, &max);
        const float d = (max - min) / 31;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = exsa_fp32_to_fp16(d);
        y[i].m = exsa_fp32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < qk / 2; j++) {
            const float x0 = (x[j] - min) * id;
            const float x1 = (x[qk / 2 + j] - min) * id;
            /* llama.cpp has no clamp here: (x-min)*id + 0.5 < 32 */
            const uint32_t q0 = (uint32_t)trunc_clamp(x0 + 0.5f, 0, 31);
            const uint32_t q1 = (uint32_t)trunc_clamp(x1 + 0.5f, 0, 31);
            y[i].qs[j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
            qh |= (q0 >> 4) << j;
            qh |= (q1 >> 4) << (j + qk / 2);
        }
        for (int b = 0; b < 4; b++)
            y[i].qh[b] = (uint8_t)(qh >> (8 * b));
    }
}

void exsa_dequantize_row_q5_1(const void *vx, float *y, int64_t n)
{
    const exsa_block_q5_1 *x = vx;
    const int qk = EXSA_QK5_1;
    for (int64_t i = 0; i < n / qk; i++, y += qk) {
        const float d = exsa_fp16_to_fp32(x[i].d);
        const float m = exsa_fp16_to_fp32(x[i].m);
        const uint32_t qh = load_qh(x[i].qh);
        for (int j = 0; j < qk / 2; j++) {
            const int h0 = (int)((qh >> j) & 1u) << 4;
            const int h1 = (int)((qh >> (j + qk / 2)) & 1u) << 4;
            y[j] = ((x[i].qs[j] & 0x0f) | h0) * d + m;
            y[j + qk / 2] = ((x[i].qs[j] >> 4) | h1) * d + m;
        }
    }
}

/* ------------------------------------------------------------- Q8_0, Q8_1 */

static float absmax(const float *x, int n)
{
    float amax = 0.0f;
    for (int j = 0; j < n; j++) {
        const float v = fabsf(x[j]);
        amax = amax > v ? amax : v; /* as llama.cpp's MAX(), also for NaN */
    }
    return amax;
}

void exsa_quantize_row_q8_0_ref(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_0 *y = vy;
    const int qk = EXSA_QK8_0;
    for (int64_t i = 0; i < n / qk; i++, x += qk) {
        const float d = absmax(x, qk) / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = exsa_fp32_to_fp16(d);
        for (int j = 0; j < qk; j++)
            y[i].qs[j] = round_i8(x[j] * id);
    }
}

void exsa_dequantize_row_q8_0(const void *vx, float *y, int64_t n)
{
    const exsa_block_q8_0 *x = vx;
    const int qk = EXSA_QK8_0;
    for (int64_t i = 0; i < n / qk; i++, y += qk) {
        const float d = exsa_fp16_to_fp32(x[i].d);
        for (int j = 0; j < qk; j++)
            y[j] = x[i].qs[j] * d;
    }
}

void exsa_quantize_row_q8_1_ref(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_1 *y = vy;
    const int qk = EXSA_QK8_1;
    for (int64_t i = 0; i < n / qk; i++, x += qk) {
        const float d = absmax(x, qk) / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = exsa_fp32_to_fp16(d);
        int sum = 0;
        for (int j = 0; j < qk; j++) {
            y[i].qs[j] = round_i8(x[j] * id);
            sum += y[i].qs[j];
        }
        /* s uses the unrounded d, as llama.cpp does */
        y[i].s = exsa_fp32_to_fp16(sum * d);
    }
}

static void dequantize_row_q8_1(const void *vx, float *y, int64_t n)
{
    const exsa_block_q8_1 *x = vx;
    const int qk = EXSA_QK8_1;
    for (int64_t i = 0; i < n / qk; i++, y += qk) {
        const float d = exsa_fp16_to_fp32(x[i].d);
        for (int j = 0; j < qk; j++)
            y[j] = x[i].qs[j] * d;
    }
}

/* ----------------------------------------------------------------- traits */

static const exsa_type_traits traits[EXSA_TYPE_COUNT] = {
    [EXSA_TYPE_F32] = {"F32", 1, sizeof(float), 0, to_f32_copy, from_f32_copy,
                       EXSA_TYPE_F32},
    [EXSA_TYPE_F16] = {"F16", 1, sizeof(exsa_fp16), 0, f16_to_f32_row, f32_to_f16_row,
                       EXSA_TYPE_F32},
    [EXSA_TYPE_BF16] = {"BF16", 1, sizeof(exsa_bf16), 0, bf16_to_f32_row, f32_to_bf16_row,
                        EXSA_TYPE_BF16},
    [EXSA_TYPE_Q4_0] = {"Q4_0", EXSA_QK4_0, sizeof(exsa_block_q4_0), 1,
                        exsa_dequantize_row_q4_0, exsa_quantize_row_q4_0_ref,
                        EXSA_TYPE_Q8_0},
    [EXSA_TYPE_Q4_1] = {"Q4_1", EXSA_QK4_1, sizeof(exsa_block_q4_1), 1,
                        exsa_dequantize_row_q4_1, exsa_quantize_row_q4_1_ref,
                        EXSA_TYPE_Q8_0},
    [EXSA_TYPE_Q5_0] = {"Q5_0", EXSA_QK5_0, sizeof(exsa_block_q5_0), 1,
                        exsa_dequantize_row_q5_0, exsa_quantize_row_q5_0_ref,
                        EXSA_TYPE_Q8_0},
    [EXSA_TYPE_Q5_1] = {"Q5_1", EXSA_QK5_1, sizeof(exsa_block_q5_1), 1,
                        exsa_dequantize_row_q5_1, exsa_quantize_row_q5_1_ref,
                        EXSA_TYPE_Q8_0},
    [EXSA_TYPE_Q8_0] = {"Q8_0", EXSA_QK8_0, sizeof(exsa_block_q8_0), 1,
                        exsa_dequantize_row_q8_0, exsa_quantize_row_q8_0_ref,
                        EXSA_TYPE_Q8_0},
    [EXSA_TYPE_Q8_1] = {"Q8_1", EXSA_QK8_1, sizeof(exsa_block_q8_1), 1,
                        dequantize_row_q8_1, exsa_quantize_row_q8_1_ref,
                        EXSA_TYPE_Q8_1},
    [EXSA_TYPE_Q2_K] = {"Q2_K", EXSA_QK_K, sizeof(exsa_block_q2_K), 1,
                        exsa_dequantize_row_q2_K, exsa_quantize_row_q2_K_ref,
                        EXSA_TYPE_Q8_K},
    [EXSA_TYPE_Q3_K] = {"Q3_K", EXSA_QK_K, sizeof(exsa_block_q3_K), 1,
                        exsa_dequantize_row_q3_K, exsa_quantize_row_q3_K_ref,
                        EXSA_TYPE_Q8_K},
    [EXSA_TYPE_Q4_K] = {"Q4_K", EXSA_QK_K, sizeof(exsa_block_q4_K), 1,
                        exsa_dequantize_row_q4_K, exsa_quantize_row_q4_K_ref,
                        EXSA_TYPE_Q8_K},
    [EXSA_TYPE_Q5_K] = {"Q5_K", EXSA_QK_K, sizeof(exsa_block_q5_K), 1,
                        exsa_dequantize_row_q5_K, exsa_quantize_row_q5_K_ref,
                        EXSA_TYPE_Q8_K},
    [EXSA_TYPE_Q6_K] = {"Q6_K", EXSA_QK_K, sizeof(exsa_block_q6_K), 1,
                        exsa_dequantize_row_q6_K, exsa_quantize_row_q6_K_ref,
                        EXSA_TYPE_Q8_K},
    [EXSA_TYPE_Q8_K] = {"Q8_K", EXSA_QK_K, sizeof(exsa_block_q8_K), 1,
                        exsa_dequantize_row_q8_K, exsa_quantize_row_q8_K_ref,
                        EXSA_TYPE_Q8_K},
};

const exsa_type_traits *exsa_type_traits_get(int type)
{
    if (type < 0 || type >= EXSA_TYPE_COUNT || traits[type].name == NULL)
        return NULL;
    return &traits[type];
}

int exsa_type_from_name(const char *name)
{
    if (name == NULL)
        return -1;
    for (int t = 0; t < EXSA_TYPE_COUNT; t++) {
        const char *a = traits[t].name;
        if (a == NULL)
            continue;
        const char *b = name;
        while (*a && tolower((unsigned char)*a) == tolower((unsigned char)*b)) {
            a++;
            b++;
        }
        if (*a == '\0' && *b == '\0')
            return t;
    }
    return -1;
}

size_t exsa_type_row_size(int type, int64_t n)
{
    const exsa_type_traits *tr = exsa_type_traits_get(type);
    /* 0 is never a valid row size here: it flags a bad type or length */
    if (tr == NULL || n < 0 || n % tr->block_size != 0)
        return 0;
    int64_t bytes;
    /* no object can exceed PTRDIFF_MAX, and callers add sizes to offsets */
    if (__builtin_mul_overflow(n / tr->block_size, tr->type_size, &bytes) ||
        (uint64_t)bytes > (uint64_t)PTRDIFF_MAX)
        return 0;
    return (size_t)bytes;
}
