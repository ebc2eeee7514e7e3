/* AVX-512 kernels (F/BW/VL/DQ, plus AVX512-VNNI where the CPU has it).
 *
 * Two partial tables: one for AVX-512 without VNNI, one with it. Entries
 * left NULL (Q4_1, Q5_1, Q2_K, Q3_K) are filled from the AVX2 table by the
 * selector. Every kernel takes a compile-time `vnni` flag; the non-VNNI
 * instances use vpmaddubsw + vpmaddwd where the VNNI ones use vpdpbusd /
 * vpdpwssd. (The whole file is compiled with -mavx512vnni; the non-VNNI
 * code is written with intrinsics that have no VNNI form, so the compiler
 * has nothing to turn into VNNI instructions.)
 *
 * Same structure as the AVX2 file: each weight block is decoded once and
 * applied to groups of up to 4 activation rows. 32-element blocks are taken
 * two at a time in one 512-bit register for 3-4 rows (256-bit blocks for 1-2
 * rows); K-quant superblocks as four 64-byte vectors.
 *
 * Batch invariance: a row's result is bit-identical whatever the group size
 * and the row's place in it. The accumulation order is the same for every
 * group size; where 1-2 rows use other instructions than 3-4 (32-element
 * blocks) both forms compute the same values lane by lane, in the same order
 * (see signed32_rows). Reductions use hsum512_ps, whose order we fix,
 * rather than _mm512_reduce_add_ps, whose order is the compiler's.
 *
 * Activation quantizers are byte-equal to the references for finite inputs
 * (Q8_0 rounds half away from zero, Q8_K half to even).
 */
/* Prefetch distance of the streaming kernels (kernels_internal.h): on the
 * Zen 5 host with weights on huge pages, 3-4 KB ahead gave tg128 +5-12%
 * over the AVX2 file's 1536 (Zen 3, 4 KB pages), 6 KB lost again. */
#ifndef PREFETCH_DIST
#define PREFETCH_DIST 4096
#endif
#include "backend/cpu/kernels_internal.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__) && defined(__AVX512DQ__) && defined(__AVX2__) && defined(__FMA__) && \
    defined(__F16C__)

#if defined(__AVX512VNNI__)
#define HAVE_VNNI 1
#else
#define HAVE_VNNI 0
#endif

/* acc + sum of 4 adjacent u8*s8 products, per int32 lane. */
INLINE __m512i dot4_u8s8(__m512i acc, __m512i u, __m512i s, const int vnni)
{
#if HAVE_VNNI
    if (vnni)
        return _mm512_dpbusd_epi32(acc, u, s);
#endif
    const __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1));
    return _mm512_add_epi32(acc, p);
}

INLINE __m256i dot4_u8s8_256(__m256i acc, __m256i u, __m256i s, const int vnni)
{
#if HAVE_VNNI
    if (vnni)
        return _mm256_dpbusd_epi32(acc, u, s);
#endif
    return _mm256_add_epi32(acc, dot_u8s8(u, s));
}

/* acc + sum of 2 adjacent int16 products, per int32 lane. */
INLINE __m512i dot2_i16(__m512i acc, __m512i a, __m512i b, const int vnni)
{
#if HAVE_VNNI
    if (vnni)
        return _mm512_dpwssd_epi32(acc, a, b);
#endif
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
}

INLINE __m512i zext128_512(__m128i v)
{
    return _mm512_maskz_mov_epi32(0x000F, _mm512_castsi128_si512(v));
}

INLINE __m512i zext256_512(__m256i v)
{
    return _mm512_maskz_mov_epi64(0x0F, _mm512_castsi256_si512(v));
}

/* (lanes 0..7 + lanes 8..15), then as hsum_ps. */
INLINE float hsum512_ps(__m512 v)
{
    return hsum_ps(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

INLINE __m512i load2x256(const void *lo, const void *hi)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)lo)),
                              _mm256_loadu_si256((const __m256i *)hi), 1);
}

/* ------------------------------------------------------- float weights */

INLINE __m512 load_w16(const void *w, int i, const int kind)
{
    switch (kind) {
    case K_F16:
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const exsa_fp16 *)w + i)));
    case K_BF16: {
        const __m256i h = _mm256_loadu_si256((const __m256i *)((const exsa_bf16 *)w + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    default:
        return _mm512_loadu_ps((const float *)w + i);
    }
}

/* The first popcount(m) weights from i; the others read as 0 (masked loads
 * do not touch memory past the row). */
INLINE __m512 load_w16_tail(const void *w, int i, __mmask16 m, const int kind)
{
    switch (kind) {
    case K_F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const exsa_fp16 *)w + i));
    case K_BF16: {
        const __m256i h = _mm256_maskz_loadu_epi16(m, (const exsa_bf16 *)w + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    default:
        return _mm512_maskz_loadu_ps(m, (const float *)w + i);
    }
}

/* 16 activations as floats: BF16 rows for BF16 weights (their
 * vec_dot_type), float rows otherwise; the tail form reads popcount(m). */
INLINE __m512 load_a16(const float *a, int i, const int kind)
{
    return kind == K_BF16 ? load_w16(a, i, K_BF16) : _mm512_loadu_ps(a + i);
}

INLINE __m512 load_a16_tail(const float *a, int i, __mmask16 m, const int kind)
{
    return kind == K_BF16 ? load_w16_tail(a, i, m, K_BF16) : _mm512_maskz_loadu_ps(m, a + i);
}

/* Every row sums in the same order whatever the group size R: element
 * i + 16u of each 64-element step into acc[u], leftovers into acc[0], then
 * (acc0 + acc1) + (acc2 + acc3) and the lanes. Four chains per row hide the
 * FMA latency for a lone row; 16 accumulators fit the 32 zmm registers. */
INLINE void float_rows(const rows_t *r, int j0, const int R, const int kind)
{
    const float *a[4];
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
        a[k] = act_row(r, j0 + k);
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++)
            acc[k][u] = _mm512_setzero_ps();
    }
    const int n = r->n;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 w[4];
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++)
            w[u] = load_w16(r->w, i + 16 * u, kind);
#pragma GCC unroll 4
        for (int k = 0; k < R; k++)
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++)
                acc[k][u] = _mm512_fmadd_ps(w[u], load_a16(a[k], i + 16 * u, kind), acc[k][u]);
    }
    for (; i + 16 <= n; i += 16) {
        const __m512 w = load_w16(r->w, i, kind);
#pragma GCC unroll 4
        for (int k = 0; k < R; k++)
            acc[k][0] = _mm512_fmadd_ps(w, load_a16(a[k], i, kind), acc[k][0]);
    }
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        const __m512 w = load_w16_tail(r->w, i, m, kind);
#pragma GCC unroll 4
        for (int k = 0; k < R; k++)
            acc[k][0] = _mm512_fmadd_ps(w, load_a16_tail(a[k], i, m, kind), acc[k][0]);
    }
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
        const __m512 s01 = _mm512_add_ps(acc[k][0], acc[k][1]);
        const __m512 s23 = _mm512_add_ps(acc[k][2], acc[k][3]);
        store_out(r, j0 + k, hsum512_ps(_mm512_add_ps(s01, s23)));
    }
}

/* 32-element blocks (Q4_0, Q5_0, Q8_0, ...) use the AVX2 kernels: they add
 * blocks in llama.cpp's order (see kernels_avx2.c), which keeps Exsa's
 * logits on llama.cpp's; a 512-bit version would have to keep that order per
 * row (e.g. one row per 256-bit half). */

/* ------------------------------------------------------------ K-quants */

/* Q4_K / Q5_K. Vector m (0..3) holds elements 64m..64m+63: the low nibbles
 * of qs[32m..32m+31] (group 2m) then their high nibbles (group 2m+1). */
INLINE void g32_rows(const rows_t *r, int j0, const int R, const int kind, const int vnni)
{
    const exsa_block_q8_K *a[4];
    __m512 acc[4];
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
        a[k] = act_row(r, j0 + k);
        acc[k] = _mm512_setzero_ps();
    }
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i b4 = _mm512_set1_epi8(0x10);
    /* int16 lane j of the scale vector for m takes scale 2m + (j >= 16) */
    const __m512i half_idx = _mm512_set_epi32(0x00010001, 0x00010001, 0x00010001, 0x00010001,
                                              0x00010001, 0x00010001, 0x00010001, 0x00010001,
                                              0, 0, 0, 0, 0, 0, 0, 0);
    const int nb = r->n / EXSA_QK_K;
    for (int i = 0; i < nb; i++) {
        const uint8_t *qs, *scales, *qh = NULL;
        float d, dmin;
        if (kind == K_Q4_K) {
            const exsa_block_q4_K *b = (const exsa_block_q4_K *)r->w + i;
            qs = b->qs;
            scales = b->scales;
            d = h2f(b->d);
            dmin = h2f(b->dmin);
        } else {
            const exsa_block_q5_K *b = (const exsa_block_q5_K *)r->w + i;
            qs = b->qs;
            scales = b->scales;
            qh = b->qh;
            d = h2f(b->d);
            dmin = h2f(b->dmin);
        }
        const __m256i scm = _mm256_cvtepu8_epi16(unpack_scale_min_k4(scales));
        const __m128i mins = _mm256_extracti128_si256(scm, 1);
        const __m512i scm512 = zext256_512(scm);

        __m512i v[4];
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m512i q = _mm512_loadu_si512((const void *)(qs + 64 * h));
            const __m512i lo = _mm512_and_si512(q, m4);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
            /* 128-bit lanes: lo = [c0 lo, c0 lo, c1 lo, c1 lo], hi alike */
            v[2 * h] = _mm512_shuffle_i64x2(lo, hi, 0x44);
            v[2 * h + 1] = _mm512_shuffle_i64x2(lo, hi, 0xEE);
        }
        if (kind == K_Q5_K) {
            /* element 64m + 32t + l takes bit 2m + t of qh[l]: the upper
             * half starts one bit further, then both move by 2 per m */
            __m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)qh));
            hb = _mm512_mask_srli_epi16(hb, 0xFFFF0000u, hb, 1);
#pragma GCC unroll 4
            for (int m = 0; m < 4; m++) {
                v[m] = _mm512_or_si512(v[m], _mm512_and_si512(_mm512_slli_epi16(hb, 4), b4));
                hb = _mm512_srli_epi16(hb, 2);
            }
        }

        __m512i sumi[4];
#pragma GCC unroll 4
        for (int k = 0; k < R; k++)
            sumi[k] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++) {
            const __m512i s = _mm512_permutexvar_epi16(
                _mm512_add_epi16(half_idx, _mm512_set1_epi16((short)(2 * m))), scm512);
#pragma GCC unroll 4
            for (int k = 0; k < R; k++) {
                const __m512i y = _mm512_loadu_si512((const void *)(a[k][i].qs + 64 * m));
                sumi[k] = dot2_i16(sumi[k], _mm512_maddubs_epi16(v[m], y), s, vnni);
            }
        }
#pragma GCC unroll 4
        for (int k = 0; k < R; k++) {
            const float da = a[k][i].d;
            const __m128i bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)a[k][i].bsums),
                                              _mm_loadu_si128((const __m128i *)(a[k][i].bsums + 8)));
            const __m512 mn = _mm512_cvtepi32_ps(zext128_512(_mm_madd_epi16(mins, bs)));
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[k]), _mm512_set1_ps(d * da), acc[k]);
            acc[k] = _mm512_fnmadd_ps(mn, _mm512_set1_ps(dmin * da), acc[k]);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        store_out(r, j0 + k, hsum512_ps(acc[k]));
}

/* Q6_K. Half h of a superblock: ql[64h..64h+63] low nibbles are elements
 * 128h + 0..63, high nibbles 128h + 64..127; the top 2 bits come from
 * qh[32h + l] (bits 0-1, 2-3, 4-5, 6-7 for the four 32-element quarters).
 * Values are stored +32; the offset comes back through bsums. */
INLINE void q6_K_rows(const rows_t *r, int j0, const int R, const int vnni)
{
    const exsa_block_q8_K *a[4];
    __m512 acc[4];
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
        a[k] = act_row(r, j0 + k);
        acc[k] = _mm512_setzero_ps();
    }
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    /* int16 lane j of the scale vector for m takes scale 4m + j / 8 */
    const __m512i quarter_idx = _mm512_set_epi32(
        0x00030003, 0x00030003, 0x00030003, 0x00030003, 0x00020002, 0x00020002, 0x00020002,
        0x00020002, 0x00010001, 0x00010001, 0x00010001, 0x00010001, 0, 0, 0, 0);
    const int nb = r->n / EXSA_QK_K;
    for (int i = 0; i < nb; i++) {
        const exsa_block_q6_K *b = (const exsa_block_q6_K *)r->w + i;
        const float d = h2f(b->d);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
        const __m512i sc512 = zext256_512(sc16);
        __m512i v[4];
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m512i q = _mm512_loadu_si512((const void *)(b->ql + 64 * h));
            __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qh + 32 * h)));
            /* upper 256 bits: quarter 1 / 3 bits, two further up */
            qh = _mm512_mask_srli_epi16(qh, 0xFFFF0000u, qh, 2);
            v[2 * h] = _mm512_or_si512(_mm512_and_si512(q, m4),
                                       _mm512_and_si512(_mm512_slli_epi16(qh, 4), m30));
            v[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(q, 4), m4),
                                           _mm512_and_si512(qh, m30));
        }
        __m512i sumi[4];
#pragma GCC unroll 4
        for (int k = 0; k < R; k++)
            sumi[k] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++) {
            const __m512i s = _mm512_permutexvar_epi16(
                _mm512_add_epi16(quarter_idx, _mm512_set1_epi16((short)(4 * m))), sc512);
#pragma GCC unroll 4
            for (int k = 0; k < R; k++) {
                const __m512i y = _mm512_loadu_si512((const void *)(a[k][i].qs + 64 * m));
                sumi[k] = dot2_i16(sumi[k], _mm512_maddubs_epi16(v[m], y), s, vnni);
            }
        }
#pragma GCC unroll 4
        for (int k = 0; k < R; k++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)a[k][i].bsums);
            const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
            const __m512i tot = _mm512_sub_epi32(sumi[k], zext256_512(off));
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), _mm512_set1_ps(d * a[k][i].d), acc[k]);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        store_out(r, j0 + k, hsum512_ps(acc[k]));
}

/* ------------------------------------------------------------ dispatch */

INLINE void group(const rows_t *r, int j0, const int R, const int kind, const int vnni)
{
    switch (kind) {
    case K_F32:
    case K_F16:
    case K_BF16:
        float_rows(r, j0, R, kind);
        break;
    case K_Q4_K:
    case K_Q5_K:
        g32_rows(r, j0, R, kind, vnni);
        break;
    default:
        q6_K_rows(r, j0, R, vnni);
        break;
    }
}

INLINE void dot_rows(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os, const int kind, const int vnni)
{
    const rows_t r = {n, w, act, as, out, os};
    int j = 0;
    for (; j + 4 <= na; j += 4)
        group(&r, j, 4, kind, vnni);
    switch (na - j) {
    case 3:
        group(&r, j, 3, kind, vnni);
        break;
    case 2:
        group(&r, j, 2, kind, vnni);
        break;
    case 1:
        group(&r, j, 1, kind, vnni);
        break;
    default:
        break;
    }
}

static void dot_f32(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_F32, 0);
}
static void dot_f16(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_F16, 0);
}
static void dot_bf16(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_BF16, 0);
}
static void dot_q4_K(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q4_K, 0);
}
static void dot_q5_K(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q5_K, 0);
}
static void dot_q6_K(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q6_K, 0);
}

#if HAVE_VNNI
static void dot_q4_K_vnni(int n, const void *w, const void *act, size_t as, int na, float *out,
                          size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q4_K, 1);
}
static void dot_q5_K_vnni(int n, const void *w, const void *act, size_t as, int na, float *out,
                          size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q5_K, 1);
}
static void dot_q6_K_vnni(int n, const void *w, const void *act, size_t as, int na, float *out,
                          size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q6_K, 1);
}
#endif

/* ------------------------------------------------ activation quantizers */

/* roundf() of 16 floats: half away from zero (v - trunc(v) is exact). */
INLINE __m512 round_half_away512(__m512 v)
{
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)),
                                            _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(INT32_MIN));
    const __m512 one = _mm512_castsi512_ps(
        _mm512_or_si512(sign, _mm512_castps_si512(_mm512_set1_ps(1.0f))));
    return _mm512_mask_add_ps(t, up, t, one);
}

static void quantize_q8_0(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / EXSA_QK8_0; i++, x += EXSA_QK8_0) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        /* same expressions as the reference, so d and id are bit-equal */
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        const __m512 vid = _mm512_set1_ps(id);
        const __m512i q0 = _mm512_cvttps_epi32(round_half_away512(_mm512_mul_ps(v0, vid)));
        const __m512i q1 = _mm512_cvttps_epi32(round_half_away512(_mm512_mul_ps(v1, vid)));
        _mm_storeu_si128((__m128i *)y[i].qs, _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(y[i].qs + 16), _mm512_cvtsepi32_epi8(q1));
    }
}

static void quantize_q8_K(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_K *y = vy;
    for (int64_t i = 0; i < n / EXSA_QK_K; i++, x += EXSA_QK_K) {
        __m512 mx = _mm512_setzero_ps();
        for (int u = 0; u < EXSA_QK_K / 16; u++)
            mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(x + 16 * u)));
        const float amax = _mm512_reduce_max_ps(mx);
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }
        /* the reference keeps the first element of largest magnitude */
        const __m512 vamax = _mm512_set1_ps(amax);
        int first = 0;
        for (int u = 0; u < EXSA_QK_K / 16; u++) {
            const __mmask16 m = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + 16 * u)),
                                                   vamax, _CMP_EQ_OQ);
            if (m) {
                first = 16 * u + __builtin_ctz((unsigned)m);
                break;
            }
        }
        const float iscale = -127.0f / x[first];
        const __m512 vis = _mm512_set1_ps(iscale);
        for (int u = 0; u < EXSA_QK_K / 16; u++) { /* one bsum group per vector */
            const __m512i q = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * u), vis),
                                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm_storeu_si128((__m128i *)(y[i].qs + 16 * u), _mm512_cvtsepi32_epi8(q));
            y[i].bsums[u] = (int16_t)_mm512_reduce_add_epi32(q);
        }
        y[i].d = 1 / iscale;
    }
}

/* --------------------------------------------------------- float helpers */

static float vec_dot_f32(int n, const float *x, const float *y)
{
    float s;
    const rows_t r = {n, x, (const char *)y, 0, &s, 0};
    float_rows(&r, 0, 1, K_F32);
    return s;
}

static float vec_dot_f16_f32(int n, const exsa_fp16 *x, const float *y)
{
    float s;
    const rows_t r = {n, x, (const char *)y, 0, &s, 0};
    float_rows(&r, 0, 1, K_F16);
    return s;
}

INLINE __mmask16 tail_mask(int left)
{
    return (__mmask16)(left >= 16 ? 0xFFFFu : (1u << left) - 1);
}

static void axpy_f32(int n, float a, const float *x, float *y)
{
    const __m512 va = _mm512_set1_ps(a);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 r = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i),
                                         _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, r);
    }
}

static void axpy_f16(int n, float a, const exsa_fp16 *x, float *y)
{
    const __m512 va = _mm512_set1_ps(a);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 xv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i));
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, xv, _mm512_maskz_loadu_ps(m, y + i)));
    }
}

static void f32_to_f16(const float *x, exsa_fp16 *y, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i > 16 ? 16 : (int)(n - i));
        const __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16(y + i, m, h);
    }
}

static void f16_to_f32(const exsa_fp16 *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i > 16 ? 16 : (int)(n - i));
        _mm512_mask_storeu_ps(y + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i)));
    }
}

/* ---------------------------------------------- repacked F32 / F16 x 16 */

/* gemm_fx (kernels.h) with two groups per zmm: lanes 0..7 group 2p, lanes
 * 8..15 group 2p + 1 (zero when the pair is the odd one out). Each output
 * keeps one accumulator over the elements in order, as the AVX2 and scalar
 * forms, so the bits are theirs. */
INLINE __m512 fx16_load(const char *w0, const char *w1, size_t k, const int kind, const int one)
{
    switch (kind) {
    case K_F16: {
        const __m128i lo = _mm_loadu_si128((const __m128i *)(w0 + 16 * k));
        const __m128i hi = one ? _mm_setzero_si128() : _mm_loadu_si128((const __m128i *)(w1 + 16 * k));
        return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
    }
    default: {
        const __m256 lo = _mm256_loadu_ps((const float *)(w0 + 32 * k));
        if (one)
            return _mm512_insertf32x8(_mm512_setzero_ps(), lo, 0);
        return _mm512_insertf32x8(_mm512_castps256_ps512(lo),
                                  _mm256_loadu_ps((const float *)(w1 + 32 * k)), 1);
    }
    }
}

/* P zmm of group pairs (the last holding one group when odd) x R rows. */
INLINE void fx16_tile(int n, const char *w, size_t gb, const int P, const int odd,
                      const float *const *a, const int R, float *out, size_t os, const int kind,
                      int pf)
{
    __m512 acc[24];
#pragma GCC unroll 24
    for (int t = 0; t < P * R; t++)
        acc[t] = _mm512_setzero_ps();
    const size_t elem = kind == K_F32 ? 4 : 2;
    for (int i = 0; i < n; i++) {
        __m512 wv[2];
        if (pf && (i * 8 * elem) % 64 == 0)
#pragma GCC unroll 4
            for (int g = 0; g < 2 * P - odd; g++)
                prefetch_stream(w + (size_t)g * gb, gb, 2 * P - odd, (size_t)i * 8 * elem, 64);
#pragma GCC unroll 2
        for (int p = 0; p < P; p++)
            wv[p] = fx16_load(w + (size_t)(2 * p) * gb, w + (size_t)(2 * p + 1) * gb, (size_t)i,
                              kind, odd && p == P - 1);
#pragma GCC unroll 12
        for (int k = 0; k < R; k++) {
            const __m512 b = _mm512_set1_ps(a[k][i]);
#pragma GCC unroll 2
            for (int p = 0; p < P; p++)
                acc[p * R + k] = _mm512_fmadd_ps(wv[p], b, acc[p * R + k]);
        }
    }
#pragma GCC unroll 12
    for (int k = 0; k < R; k++)
#pragma GCC unroll 2
        for (int p = 0; p < P; p++) {
            float *o = out + (size_t)k * os + 16 * (size_t)p;
            if (odd && p == P - 1)
                _mm256_storeu_ps(o, _mm512_castps512_ps256(acc[p * R + k]));
            else
                _mm512_storeu_ps(o, acc[p * R + k]);
        }
}

#define FX16_CASE(P, ODD, R)                                                              \
    case (R):                                                                             \
        fx16_tile(n, w, gb, P, ODD, a, R, o, os, kind, j == 0);                           \
        break;
#define FX16_ROWS(P, ODD)                                                                 \
    switch (r) {                                                                          \
        FX16_CASE(P, ODD, 1) FX16_CASE(P, ODD, 2) FX16_CASE(P, ODD, 3)                    \
        FX16_CASE(P, ODD, 4) FX16_CASE(P, ODD, 5) FX16_CASE(P, ODD, 6)                    \
        FX16_CASE(P, ODD, 7) FX16_CASE(P, ODD, 8)                                         \
    default:                                                                              \
        if ((P) == 1)                                                                     \
            fx16_tile(n, w, gb, 1, ODD, a, 12, o, os, kind, j == 0);                      \
        break;                                                                            \
    }

/* Row blocks: 12 rows for one pair, 8 for two (P * R <= 24 accumulators,
 * the weight vectors and a broadcast within the 32 registers). */
INLINE void fx16_drive(int n, const char *w, size_t gb, int G, const float *act, size_t as,
                       int n_act, float *out, size_t os, const int kind)
{
    const int P = (G + 1) / 2, odd = G % 2, rmax = P == 2 ? 8 : 12;
    const float *a[12];
    for (int j = 0; j < n_act;) {
        const int left = n_act - j;
        const int r = left >= rmax ? rmax : left > 8 ? 8 : left;
        for (int k = 0; k < r; k++)
            a[k] = (const float *)((const char *)act + (size_t)(j + k) * as);
        float *o = out + (size_t)j * os;
        if (P == 2 && !odd)
            FX16_ROWS(2, 0)
        else if (P == 2)
            FX16_ROWS(2, 1)
        else if (!odd)
            FX16_ROWS(1, 0)
        else
            FX16_ROWS(1, 1)
        j += r;
    }
}
#undef FX16_ROWS
#undef FX16_CASE

static void gemm_fx16(int type, int n, const void *w, size_t group_bytes, int n_groups,
                      const float *act, size_t act_stride, int n_act, float *out,
                      size_t out_stride)
{
    const char *wc = w;
    if (type == EXSA_TYPE_F16)
        fx16_drive(n, wc, group_bytes, n_groups, act, act_stride, n_act, out, out_stride, K_F16);
    else
        fx16_drive(n, wc, group_bytes, n_groups, act, act_stride, n_act, out, out_stride, K_F32);
}

/* ---- activation prologue: 16 lanes, the AVX2 file's operations ----- */

/* round_half_away of 16 lanes: t + (|v - t| >= 0.5 ? copysign(1, v) : 0);
 * the integers it gives are the AVX2 form's. */
INLINE __m512 round_half_away16(__m512 v)
{
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 one = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(1.0f));
    const __mmask16 half =
        _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm512_mask_add_ps(t, half, t, one);
}

/* One Q8_0 block as two 16-lane int32 halves (values in [-128, 127]) and
 * its scale, the references' expressions: d = amax / 127, id = 1 / d. */
INLINE void q8_0_block16(const float *x, __m512i *lo, __m512i *hi, exsa_fp16 *dh)
{
    const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    const float d = amax / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    *dh = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i mn = _mm512_set1_epi32(-128), mx = _mm512_set1_epi32(127);
    *lo = _mm512_cvttps_epi32(round_half_away16(_mm512_mul_ps(a, vid)));
    *hi = _mm512_cvttps_epi32(round_half_away16(_mm512_mul_ps(b, vid)));
    *lo = _mm512_max_epi32(_mm512_min_epi32(*lo, mx), mn); /* the packs' saturation */
    *hi = _mm512_max_epi32(_mm512_min_epi32(*hi, mx), mn);
}

INLINE __m256i q8_0_bytes(__m512i lo, __m512i hi)
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(lo)),
                                   _mm512_cvtepi32_epi8(hi), 1);
}

static void quantize_q8_0s(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_0s *y = vy;
    for (int64_t i = 0; i < n / EXSA_QK8_0; i++, x += EXSA_QK8_0) {
        __m512i lo, hi;
        exsa_fp16 dh;
        q8_0_block16(x, &lo, &hi, &dh);
        y[i].d = _cvtsh_ss(dh);
        y[i].sum = _mm512_reduce_add_epi32(_mm512_add_epi32(lo, hi));
        _mm256_storeu_si256((__m256i *)y[i].qs, q8_0_bytes(lo, hi));
    }
}

static void quantize_q8_0a(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_0a *y = vy;
    for (int64_t i = 0; i < n / EXSA_QK8_0; i++, x += EXSA_QK8_0) {
        __m512i lo, hi;
        exsa_fp16 dh;
        q8_0_block16(x, &lo, &hi, &dh);
        const __m256i q = q8_0_bytes(lo, hi);
        y[i].d = _cvtsh_ss(dh);
        _mm256_storeu_si256((__m256i *)y[i].qs, q);
        _mm256_storeu_si256((__m256i *)y[i].aqs, _mm256_abs_epi8(q));
        /* quad sums, then -128 * s as -(s << 7): exact for |s| <= 508 */
        const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
                                            _mm256_set1_epi16(1));
        _mm256_storeu_si256((__m256i *)y[i].corr,
                            _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s, 7)));
    }
}

/* swiglu of kernels.h, 16 lanes with exp16_neg; the tail by the formula. */
static void swiglu(const float *g, const float *u, float *out, int64_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f), sign = _mm512_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(g + i);
        const __m512 t = exp16_neg(_mm512_or_ps(x, sign)); /* -|x| */
        const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
        const __m512 s = _mm512_div_ps(_mm512_mask_blend_ps(pos, t, one), _mm512_add_ps(one, t));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(x, s), _mm512_loadu_ps(u + i)));
    }
    for (; i < n; i++) {
        const float x = g[i], t = exsa_exp_neg(-fabsf(x));
        out[i] = x * ((x >= 0.0f ? 1.0f : t) / (1.0f + t)) * u[i];
    }
}

/* scale_mul of kernels.h: x * s, then * w, rounded as the scalar form. */
static void scale_mul(const float *x, float s, const float *w, float *y, int64_t n)
{
    const __m512 vs = _mm512_set1_ps(s);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 p = _mm512_mul_ps(_mm512_loadu_ps(x + i), vs);
        _mm512_storeu_ps(y + i, w ? _mm512_mul_ps(p, _mm512_loadu_ps(w + i)) : p);
    }
    for (; i < n; i++)
        y[i] = w ? x[i] * s * w[i] : x[i] * s;
}

static const exsa_cpu_kernels avx512_partial = {
    .isa = "avx512",
    .gemm_fx = gemm_fx16,
    .fx_batch_groups = 4,
    .dot = {
        [EXSA_TYPE_F32] = dot_f32,
        [EXSA_TYPE_F16] = dot_f16,
        [EXSA_TYPE_BF16] = dot_bf16,
        [EXSA_TYPE_Q4_K] = dot_q4_K,
        [EXSA_TYPE_Q5_K] = dot_q5_K,
        [EXSA_TYPE_Q6_K] = dot_q6_K,
    },
    .quantize_q8_0 = quantize_q8_0,
    .quantize_q8_K = quantize_q8_K,
    .quantize_q8_0s = quantize_q8_0s,
    .quantize_q8_0a = quantize_q8_0a,
    .swiglu = swiglu,
    .scale_mul = scale_mul,
    .dot_f32 = vec_dot_f32,
    .dot_f16_f32 = vec_dot_f16_f32,
    .axpy_f32 = axpy_f32,
    .axpy_f16 = axpy_f16,
    .f32_to_f16 = f32_to_f16,
    .f16_to_f32 = f16_to_f32,
};

const exsa_cpu_kernels *const exsa_cpu_kernels_avx512_partial = &avx512_partial;

#if HAVE_VNNI
/* Repacked Q4_0 (kernels.h) with vpdpbusd: the nibble x activation-quad
 * products go straight into int32 lanes (8 rows), two chains per row. The
 * integer sums are exact, so the result is the scalar reference's bits. */
INLINE void q4_0x8_rows_vnni(int nb, const exsa_block_q4_0x8 *w,
                             const exsa_block_q8_0s *const *a, const int R, float *out,
                             size_t os, int pf)
{
    (void)pf; /* prefetch hints: measured on Zen 3 only (kernels_internal.h) */
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[4];
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        acc[k] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const exsa_block_q4_0x8 *g = &w[b];
        __m256i q[8];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(g->qs + 32 * j));
            q[j] = _mm256_and_si256(raw, m4);
            q[j + 4] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g->d));
#pragma GCC unroll 4
        for (int k = 0; k < R; k++) {
            __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                int32_t qa, qb;
                memcpy(&qa, a[k][b].qs + 4 * t, 4);
                memcpy(&qb, a[k][b].qs + 16 + 4 * t, 4);
                s0 = _mm256_dpbusd_epi32(s0, q[t], _mm256_set1_epi32(qa));
                s1 = _mm256_dpbusd_epi32(s1, q[t + 4], _mm256_set1_epi32(qb));
            }
            __m256i s32 = _mm256_add_epi32(s0, s1);
            s32 = _mm256_sub_epi32(s32, _mm256_set1_epi32(8 * a[k][b].sum));
            const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(a[k][b].d));
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), d, acc[k]);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        _mm256_storeu_ps(out + (size_t)k * os, acc[k]);
}

EXSA_X8_DRIVER(gemm_q4_0x8_vnni, exsa_block_q4_0x8, exsa_block_q8_0s, 32, q4_0x8_rows_vnni)

/* Repacked Q8_0 (kernels.h) with vpdpbusd: one instruction gives lane k's
 * exact sum of 4 products for the 8 rows, so the bits are the scalar
 * reference's. */
INLINE __m256i dot_u8s8_vnni(__m256i u, __m256i s)
{
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
}

EXSA_Q8X8_GEMM(gemm_q8_0x8_vnni, dot_u8s8_vnni)

/* ------------------------------------------- two 8-row groups at once */

/* The x16 forms (kernels.h exsa_gemm_x16_fn): lanes 0..7 of a zmm are the
 * first group's 8 rows, lanes 8..15 the second's, each lane computed with
 * the x8 kernel's exact integer sums and float operations in its order, so
 * the bits are the x8 kernels'. A weight vector is two 256-bit loads (one
 * per group); an activation broadcast then serves 16 rows. */

/* Defines NAME, an exsa_gemm_x16_fn over ROWS(nb, w0, w1, a, R, out, os,
 * pf) for up to RMAX activation rows at a time (R a constant). */
#define X16_DRIVER(NAME, WTYPE, ATYPE, BLOCK, RMAX, ROWS)                                   \
    static void NAME(int n, const void *w, size_t gbytes, const void *act, size_t as,       \
                     int n_act, float *out, size_t os)                                      \
    {                                                                                       \
        const int nb = n / (BLOCK);                                                         \
        const WTYPE *w0 = w, *w1 = (const WTYPE *)((const char *)w + gbytes);               \
        const ATYPE *a[RMAX];                                                               \
        for (int j = 0; j < n_act;) {                                                       \
            const int left = n_act - j;                                                     \
            const int r = left >= (RMAX) ? (RMAX) : left >= 4 ? 4 : left;                   \
            for (int k = 0; k < r; k++)                                                     \
                a[k] = (const ATYPE *)((const char *)act + (size_t)(j + k) * as);           \
            float *o = out + (size_t)j * os;                                                \
            if (r == (RMAX))                                                                \
                ROWS(nb, w0, w1, a, (RMAX), o, os, j == 0);                                 \
            else if (r == 4)                                                                \
                ROWS(nb, w0, w1, a, ((RMAX) > 4 ? 4 : 1), o, os, j == 0);                   \
            else if (r == 3)                                                                \
                ROWS(nb, w0, w1, a, ((RMAX) > 3 ? 3 : 1), o, os, j == 0);                   \
            else if (r == 2)                                                                \
                ROWS(nb, w0, w1, a, ((RMAX) > 2 ? 2 : 1), o, os, j == 0);                   \
            else                                                                            \
                ROWS(nb, w0, w1, a, 1, o, os, j == 0);                                      \
            j += r;                                                                         \
        }                                                                                   \
    }

/* Activation rows per pass of the Q4_0 / Q4_K forms: each decoded weight
 * vector serves this many rows from registers. */
#ifndef X16_RMAX
#define X16_RMAX 8
#endif

/* Prefetch hints of a call over groups w0 and w1 (prefetch_stream for
 * two groups; 1.1B Q6_K tg64 41 against 35 t/s with hints PREFETCH_DIST
 * ahead of each block, 5 interleaved pairs). */
INLINE void prefetch_pair_stream(const void *w0, const void *w1, size_t off, size_t bytes)
{
    const size_t gbytes = (size_t)((const char *)w1 - (const char *)w0);
    prefetch_stream(w0, gbytes, 2, off, bytes);
    prefetch_stream(w1, gbytes, 2, off, bytes);
}

/* The two groups' 8 bytes at p0 and p1 side by side (16 lanes' scales). */
INLINE __m128i load_pair8(const void *p0, const void *p1)
{
    return _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)p0),
                              _mm_loadl_epi64((const __m128i *)p1));
}

/* The two groups' 8 f16 values at p0 and p1 as 16 floats. */
INLINE __m512 cvt_pair_h(const void *p0, const void *p1)
{
    const __m256i h = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p0)),
        _mm_loadu_si128((const __m128i *)p1), 1);
    return _mm512_cvtph_ps(h);
}

/* Repacked Q4_0, as q4_0x8_rows_vnni for 16 rows. */
INLINE void q4_0x16_rows(int nb, const exsa_block_q4_0x8 *w0, const exsa_block_q4_0x8 *w1,
                         const exsa_block_q8_0s *const *a, const int R, float *out, size_t os,
                         int pf)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc[X16_RMAX];
#pragma GCC unroll 8
    for (int k = 0; k < R; k++)
        acc[k] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        if (pf)
            prefetch_pair_stream(w0, w1, (size_t)b * sizeof w0[b], sizeof w0[b]);
        __m512i q[8];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m512i raw = load2x256(w0[b].qs + 32 * j, w1[b].qs + 32 * j);
            q[j] = _mm512_and_si512(raw, m4);
            q[j + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
        }
        const __m512 dw = cvt_pair_h(w0[b].d, w1[b].d);
#pragma GCC unroll 8
        for (int k = 0; k < R; k++) {
            __m512i s0 = _mm512_set1_epi32(-8 * a[k][b].sum), s1 = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                int32_t qa, qb;
                memcpy(&qa, a[k][b].qs + 4 * t, 4);
                memcpy(&qb, a[k][b].qs + 16 + 4 * t, 4);
                s0 = _mm512_dpbusd_epi32(s0, q[t], _mm512_set1_epi32(qa));
                s1 = _mm512_dpbusd_epi32(s1, q[t + 4], _mm512_set1_epi32(qb));
            }
            const __m512 d = _mm512_mul_ps(dw, _mm512_set1_ps(a[k][b].d));
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), d, acc[k]);
        }
    }
#pragma GCC unroll 8
    for (int k = 0; k < R; k++)
        _mm512_storeu_ps(out + (size_t)k * os, acc[k]);
}

X16_DRIVER(gemm_q4_0x16, exsa_block_q4_0x8, exsa_block_q8_0s, 32, X16_RMAX, q4_0x16_rows)

/* Repacked Q4_0, four groups (32 outputs) per call for decode: the 8
 * activation broadcasts of a block serve 32 rows, and four weight streams
 * are in flight. Same lanes and operations as q4_0x16_rows, so the bits are
 * the x8 kernel's. w holds the four groups gbytes apart; out[j * os + 8 g +
 * r] for g < 4. */
static void gemm_q4_0x32(int n, const void *w, size_t gbytes, const void *act, size_t as,
                         int n_act, float *out, size_t os)
{
    const int nb = n / 32;
    const exsa_block_q4_0x8 *wg[4];
    for (int g = 0; g < 4; g++)
        wg[g] = (const exsa_block_q4_0x8 *)((const char *)w + (size_t)g * gbytes);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int j = 0; j < n_act; j++) {
        const exsa_block_q8_0s *a = (const exsa_block_q8_0s *)((const char *)act + (size_t)j * as);
        __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int b = 0; b < nb; b++) {
            if (j == 0)
                for (int g = 0; g < 4; g++)
                    prefetch_stream(wg[g], gbytes, 4, (size_t)b * sizeof wg[g][b],
                                    sizeof wg[g][b]);
            __m512i x[8];
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                int32_t qa, qb;
                memcpy(&qa, a[b].qs + 4 * t, 4);
                memcpy(&qb, a[b].qs + 16 + 4 * t, 4);
                x[t] = _mm512_set1_epi32(qa);
                x[t + 4] = _mm512_set1_epi32(qb);
            }
            const __m512i init = _mm512_set1_epi32(-8 * a[b].sum);
            const __m512 da = _mm512_set1_ps(a[b].d);
#pragma GCC unroll 2
            for (int p = 0; p < 2; p++) {
                const exsa_block_q4_0x8 *g0 = &wg[2 * p][b], *g1 = &wg[2 * p + 1][b];
                __m512i s0 = init, s1 = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int t = 0; t < 4; t++) {
                    const __m512i raw = load2x256(g0->qs + 32 * t, g1->qs + 32 * t);
                    s0 = _mm512_dpbusd_epi32(s0, _mm512_and_si512(raw, m4), x[t]);
                    s1 = _mm512_dpbusd_epi32(s1, _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4),
                                             x[t + 4]);
                }
                const __m512 d = _mm512_mul_ps(cvt_pair_h(g0->d, g1->d), da);
                acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), d, acc[p]);
            }
        }
        _mm512_storeu_ps(out + (size_t)j * os, acc[0]);
        _mm512_storeu_ps(out + (size_t)j * os + 16, acc[1]);
    }
}

/* Activation rows per pass of the Q8_0 form: 8 accumulators per row
 * (the x8 kernel's lanes), so 3 rows take 24 of the 32 registers. */
#ifndef Q8_RMAX
#define Q8_RMAX 3
#endif

/* Repacked Q8_0, as the x8 kernel for 16 rows (8 lane accumulators per
 * output, summed in its tree). AVX-512 has no vpsignb, so the weights are
 * offset to unsigned (w ^ 0x80 = w + 128) and vpdpbusd starts from the
 * activation's -128 * (quad sum): the same exact lane sums. */
INLINE void q8_0x16_rows(int nb, const exsa_block_q8_0x8 *w0, const exsa_block_q8_0x8 *w1,
                         const exsa_block_q8_0a *const *a, const int R, float *out, size_t os,
                         int pf)
{
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    __m512 acc[Q8_RMAX][8];
#pragma GCC unroll 3
    for (int k = 0; k < R; k++)
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++)
            acc[k][l] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        if (pf)
            prefetch_pair_stream(w0, w1, (size_t)b * sizeof w0[b], sizeof w0[b]);
        const __m512 dw = cvt_pair_h(w0[b].d, w1[b].d);
        __m512 d[Q8_RMAX];
#pragma GCC unroll 3
        for (int k = 0; k < R; k++)
            d[k] = _mm512_mul_ps(dw, _mm512_set1_ps(a[k][b].d));
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) {
            const __m512i x =
                _mm512_xor_si512(load2x256(w0[b].qs + 32 * l, w1[b].qs + 32 * l), bias);
#pragma GCC unroll 3
            for (int k = 0; k < R; k++) {
                int32_t quad;
                memcpy(&quad, a[k][b].qs + 4 * l, 4);
                const __m512i p = _mm512_dpbusd_epi32(_mm512_set1_epi32(a[k][b].corr[l]), x,
                                                      _mm512_set1_epi32(quad));
                acc[k][l] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), d[k], acc[k][l]);
            }
        }
    }
#pragma GCC unroll 3
    for (int k = 0; k < R; k++) {
        const __m512 *c = acc[k];
        const __m512 s = _mm512_add_ps(
            _mm512_add_ps(_mm512_add_ps(c[0], c[4]), _mm512_add_ps(c[2], c[6])),
            _mm512_add_ps(_mm512_add_ps(c[1], c[5]), _mm512_add_ps(c[3], c[7])));
        _mm512_storeu_ps(out + (size_t)k * os, s);
    }
}

X16_DRIVER(gemm_q8_0x16, exsa_block_q8_0x8, exsa_block_q8_0a, 32, Q8_RMAX, q8_0x16_rows)

/* Repacked Q8_0, four groups (32 outputs) per call for decode, as
 * gemm_q4_0x32: each activation quad and correction broadcast serves 32
 * rows. Same lanes and operations as q8_0x16_rows, so the same bits. */
static void gemm_q8_0x32(int n, const void *w, size_t gbytes, const void *act, size_t as,
                         int n_act, float *out, size_t os)
{
    const int nb = n / 32;
    const exsa_block_q8_0x8 *wg[4];
    for (int g = 0; g < 4; g++)
        wg[g] = (const exsa_block_q8_0x8 *)((const char *)w + (size_t)g * gbytes);
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    for (int j = 0; j < n_act; j++) {
        const exsa_block_q8_0a *a = (const exsa_block_q8_0a *)((const char *)act + (size_t)j * as);
        __m512 acc[2][8];
#pragma GCC unroll 2
        for (int p = 0; p < 2; p++)
#pragma GCC unroll 8
            for (int l = 0; l < 8; l++)
                acc[p][l] = _mm512_setzero_ps();
        for (int b = 0; b < nb; b++) {
            if (j == 0)
                for (int g = 0; g < 4; g++)
                    prefetch_stream(wg[g], gbytes, 4, (size_t)b * sizeof wg[g][b],
                                    sizeof wg[g][b]);
            const __m512 da = _mm512_set1_ps(a[b].d);
            const __m512 d0 = _mm512_mul_ps(cvt_pair_h(wg[0][b].d, wg[1][b].d), da);
            const __m512 d1 = _mm512_mul_ps(cvt_pair_h(wg[2][b].d, wg[3][b].d), da);
#pragma GCC unroll 8
            for (int l = 0; l < 8; l++) {
                int32_t quad;
                memcpy(&quad, a[b].qs + 4 * l, 4);
                const __m512i xq = _mm512_set1_epi32(quad);
                const __m512i c = _mm512_set1_epi32(a[b].corr[l]);
                const __m512i x0 = _mm512_xor_si512(
                    load2x256(wg[0][b].qs + 32 * l, wg[1][b].qs + 32 * l), bias);
                const __m512i x1 = _mm512_xor_si512(
                    load2x256(wg[2][b].qs + 32 * l, wg[3][b].qs + 32 * l), bias);
                acc[0][l] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(c, x0, xq)), d0,
                                            acc[0][l]);
                acc[1][l] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(c, x1, xq)), d1,
                                            acc[1][l]);
            }
        }
#pragma GCC unroll 2
        for (int p = 0; p < 2; p++) {
            const __m512 *cc = acc[p];
            const __m512 sum = _mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(cc[0], cc[4]), _mm512_add_ps(cc[2], cc[6])),
                _mm512_add_ps(_mm512_add_ps(cc[1], cc[5]), _mm512_add_ps(cc[3], cc[7])));
            _mm512_storeu_ps(out + (size_t)j * os + 16 * (size_t)p, sum);
        }
    }
}

/* Repacked Q4_K, as q4_Kx8_rows (kernels_avx2.c) for 16 rows: per
 * sub-block and row the exact int32 dot (vpdpbusd, two chains), times the
 * rows' scales (vpmulld), summed over the super-block; the mins term by
 * vpdpwssd of the rows' min pairs and broadcast pairs of sub-block sums. */
INLINE void q4_Kx16_rows(int nb, const exsa_block_q4_Kx8 *w0, const exsa_block_q4_Kx8 *w1,
                         const exsa_block_q8_K *const *a, const int R, float *out, size_t os,
                         int pf)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc[X16_RMAX];
#pragma GCC unroll 8
    for (int k = 0; k < R; k++)
        acc[k] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const exsa_block_q4_Kx8 *g0 = &w0[b], *g1 = &w1[b];
        if (pf)
            prefetch_pair_stream(w0, w1, (size_t)b * sizeof *g0, sizeof *g0);
        __m512i isum[X16_RMAX];
#pragma GCC unroll 8
        for (int k = 0; k < R; k++)
            isum[k] = _mm512_setzero_si512();
        for (int s = 0; s < 8; s++) {
            const int c = s / 2, shift = 4 * (s % 2);
            __m512i q[8];
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++)
                q[t] = _mm512_and_si512(
                    _mm512_srli_epi16(load2x256(g0->qs + 256 * c + 32 * t,
                                                g1->qs + 256 * c + 32 * t),
                                      (unsigned)shift),
                    m4);
            const __m512i sc =
                _mm512_cvtepu8_epi32(load_pair8(g0->scales + 8 * s, g1->scales + 8 * s));
#pragma GCC unroll 8
            for (int k = 0; k < R; k++) {
                const int8_t *qa = a[k][b].qs + 32 * s;
                __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int t = 0; t < 4; t++) {
                    int32_t x0, x1;
                    memcpy(&x0, qa + 4 * t, 4);
                    memcpy(&x1, qa + 16 + 4 * t, 4);
                    s0 = _mm512_dpbusd_epi32(s0, q[t], _mm512_set1_epi32(x0));
                    s1 = _mm512_dpbusd_epi32(s1, q[t + 4], _mm512_set1_epi32(x1));
                }
                isum[k] = _mm512_add_epi32(
                    isum[k], _mm512_mullo_epi32(_mm512_add_epi32(s0, s1), sc));
            }
        }
        const __m512 dw = cvt_pair_h(g0->d, g1->d);
        const __m512 dm = cvt_pair_h(g0->dmin, g1->dmin);
        __m512i mn[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            mn[i] = _mm512_cvtepu8_epi16(
                _mm256_inserti128_si256(
                    _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(g0->mins + 16 * i))),
                    _mm_loadu_si128((const __m128i *)(g1->mins + 16 * i)), 1));
#pragma GCC unroll 8
        for (int k = 0; k < R; k++) {
            /* sub-block sums as int16 pairs (2i, 2i + 1) = dword i */
            const __m256i bs = _mm256_loadu_si256((const __m256i *)a[k][b].bsums);
            const __m256i h = _mm256_permute4x64_epi64(_mm256_hadd_epi16(bs, bs), 0x08);
            __m512i ms = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                ms = _mm512_dpwssd_epi32(
                    ms, _mm512_permutexvar_epi32(_mm512_set1_epi32(i), _mm512_castsi256_si512(h)),
                    mn[i]);
            const __m512 da = _mm512_set1_ps(a[k][b].d);
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), _mm512_mul_ps(dw, da), acc[k]);
            acc[k] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(ms), _mm512_mul_ps(dm, da), acc[k]);
        }
    }
#pragma GCC unroll 8
    for (int k = 0; k < R; k++)
        _mm512_storeu_ps(out + (size_t)k * os, acc[k]);
}

X16_DRIVER(gemm_q4_Kx16, exsa_block_q4_Kx8, exsa_block_q8_K, EXSA_QK_K, X16_RMAX, q4_Kx16_rows)

/* Repacked Q6_K (kernels.h), 16 rows: per sub-block and row the exact
 * int32 dots of its two 16-element halves (vpdpbusd chains that start from
 * -32 * bsum of the half, the values' +32 offset), times the rows' scales
 * (vpmulld), summed over the super-block; then one cvt and FMA. */
/* One activation row (decode), the same integers and operations per output
 * as q6_Kx16_rows, in another order: quads outer, so the 4 ql and 2 qh
 * vectors of a quad serve all 8 sub-blocks (with one row there is nothing
 * to share a decoded vector with, and the loads and shifts were most of the
 * work). vpternlogd merges the masked high bits into the nibbles. */
INLINE void q6_Kx16_one(int nb, const exsa_block_q6_Kx8 *w0, const exsa_block_q6_Kx8 *w1,
                        const exsa_block_q8_K *a, float *out, int pf)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    __m512 acc = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const exsa_block_q6_Kx8 *g0 = &w0[b], *g1 = &w1[b];
        if (pf)
            prefetch_pair_stream(w0, w1, (size_t)b * sizeof *g0, sizeof *g0);
        __m512i isum = _mm512_setzero_si512();
        for (int half = 0; half < 2; half++) {
            __m512i d[8];
#pragma GCC unroll 8
            for (int sb = 0; sb < 8; sb++)
                d[sb] = _mm512_set1_epi32(-32 * a[b].bsums[2 * sb + half]);
#pragma GCC unroll 4
            for (int t = 4 * half; t < 4 * half + 4; t++) {
                __m512i lo[4], hi[2];
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++)
                    lo[c] = load2x256(g0->ql + 256 * c + 32 * t, g1->ql + 256 * c + 32 * t);
#pragma GCC unroll 2
                for (int h = 0; h < 2; h++)
                    hi[h] = load2x256(g0->qh + 256 * h + 32 * t, g1->qh + 256 * h + 32 * t);
#pragma GCC unroll 8
                for (int sb = 0; sb < 8; sb++) {
                    const int u = sb % 4;
                    const __m512i l = _mm512_and_si512(
                        sb % 2 ? _mm512_srli_epi16(lo[sb / 2], 4) : lo[sb / 2], m4);
                    const __m512i hv = hi[sb / 4];
                    const __m512i h = u == 0   ? _mm512_slli_epi16(hv, 4)
                                      : u == 1 ? _mm512_slli_epi16(hv, 2)
                                      : u == 2 ? hv
                                               : _mm512_srli_epi16(hv, 2);
                    /* l | (h & m30) */
                    const __m512i q = _mm512_ternarylogic_epi32(l, h, m30, 0xF8);
                    int32_t x;
                    memcpy(&x, a[b].qs + 32 * sb + 4 * t, 4);
                    d[sb] = _mm512_dpbusd_epi32(d[sb], q, _mm512_set1_epi32(x));
                }
            }
#pragma GCC unroll 8
            for (int sb = 0; sb < 8; sb++) {
                const int j = 2 * sb + half;
                const __m512i sc =
                    _mm512_cvtepi8_epi32(load_pair8(g0->scales + 8 * j, g1->scales + 8 * j));
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(d[sb], sc));
            }
        }
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum),
                              _mm512_mul_ps(cvt_pair_h(g0->d, g1->d), _mm512_set1_ps(a[b].d)),
                              acc);
    }
    _mm512_storeu_ps(out, acc);
}

INLINE void q6_Kx16_rows(int nb, const exsa_block_q6_Kx8 *w0, const exsa_block_q6_Kx8 *w1,
                         const exsa_block_q8_K *const *a, const int R, float *out, size_t os,
                         int pf)
{
    if (R == 1) {
        q6_Kx16_one(nb, w0, w1, a[0], out, pf);
        return;
    }
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    __m512 acc[X16_RMAX];
#pragma GCC unroll 8
    for (int k = 0; k < R; k++)
        acc[k] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const exsa_block_q6_Kx8 *g0 = &w0[b], *g1 = &w1[b];
        if (pf)
            prefetch_pair_stream(w0, w1, (size_t)b * sizeof *g0, sizeof *g0);
        __m512i isum[X16_RMAX];
#pragma GCC unroll 8
        for (int k = 0; k < R; k++)
            isum[k] = _mm512_setzero_si512();
        for (int s = 0; s < 8; s++) {
            const int u = s % 4;
            __m512i q[8];
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) {
                const size_t ol = (size_t)(256 * (s / 2) + 32 * t), oh = (size_t)(256 * (s / 4) + 32 * t);
                const __m512i lo = load2x256(g0->ql + ol, g1->ql + ol);
                const __m512i hi = load2x256(g0->qh + oh, g1->qh + oh);
                const __m512i l = _mm512_and_si512(s % 2 ? _mm512_srli_epi16(lo, 4) : lo, m4);
                const __m512i h = u == 0   ? _mm512_slli_epi16(hi, 4)
                                  : u == 1 ? _mm512_slli_epi16(hi, 2)
                                  : u == 2 ? hi
                                           : _mm512_srli_epi16(hi, 2);
                q[t] = _mm512_or_si512(l, _mm512_and_si512(h, m30));
            }
            const __m512i sa =
                _mm512_cvtepi8_epi32(load_pair8(g0->scales + 16 * s, g1->scales + 16 * s));
            const __m512i sb = _mm512_cvtepi8_epi32(
                load_pair8(g0->scales + 16 * s + 8, g1->scales + 16 * s + 8));
#pragma GCC unroll 8
            for (int k = 0; k < R; k++) {
                const int8_t *qa = a[k][b].qs + 32 * s;
                __m512i s0 = _mm512_set1_epi32(-32 * a[k][b].bsums[2 * s]);
                __m512i s1 = _mm512_set1_epi32(-32 * a[k][b].bsums[2 * s + 1]);
#pragma GCC unroll 4
                for (int t = 0; t < 4; t++) {
                    int32_t x0, x1;
                    memcpy(&x0, qa + 4 * t, 4);
                    memcpy(&x1, qa + 16 + 4 * t, 4);
                    s0 = _mm512_dpbusd_epi32(s0, q[t], _mm512_set1_epi32(x0));
                    s1 = _mm512_dpbusd_epi32(s1, q[t + 4], _mm512_set1_epi32(x1));
                }
                isum[k] = _mm512_add_epi32(isum[k], _mm512_add_epi32(_mm512_mullo_epi32(s0, sa),
                                                                     _mm512_mullo_epi32(s1, sb)));
            }
        }
        const __m512 dw = cvt_pair_h(g0->d, g1->d);
#pragma GCC unroll 8
        for (int k = 0; k < R; k++)
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]),
                                     _mm512_mul_ps(dw, _mm512_set1_ps(a[k][b].d)), acc[k]);
    }
#pragma GCC unroll 8
    for (int k = 0; k < R; k++)
        _mm512_storeu_ps(out + (size_t)k * os, acc[k]);
}

X16_DRIVER(gemm_q6_Kx16, exsa_block_q6_Kx8, exsa_block_q8_K, EXSA_QK_K, X16_RMAX, q6_Kx16_rows)

static const exsa_cpu_kernels avx512vnni_partial = {
    .isa = "avx512",
    .gemm_fx = gemm_fx16,
    .fx_batch_groups = 4,
    .dot = {
        [EXSA_TYPE_F32] = dot_f32,
        [EXSA_TYPE_F16] = dot_f16,
        [EXSA_TYPE_BF16] = dot_bf16,
        [EXSA_TYPE_Q4_K] = dot_q4_K_vnni,
        [EXSA_TYPE_Q5_K] = dot_q5_K_vnni,
        [EXSA_TYPE_Q6_K] = dot_q6_K_vnni,
    },
    .quantize_q8_0 = quantize_q8_0,
    .quantize_q8_K = quantize_q8_K,
    .quantize_q8_0s = quantize_q8_0s,
    .quantize_q8_0a = quantize_q8_0a,
    .swiglu = swiglu,
    .scale_mul = scale_mul,
    .dot_f32 = vec_dot_f32,
    .dot_f16_f32 = vec_dot_f16_f32,
    .axpy_f32 = axpy_f32,
    .axpy_f16 = axpy_f16,
    .f32_to_f16 = f32_to_f16,
    .f16_to_f32 = f16_to_f32,
    .gemm_q4_0x8 = gemm_q4_0x8_vnni,
    .gemm_q8_0x8 = gemm_q8_0x8_vnni,
    .gemm_q4_0x16 = gemm_q4_0x16,
    .gemm_q4_0x32 = gemm_q4_0x32,
    .gemm_q8_0x32 = gemm_q8_0x32,
    .gemm_q8_0x16 = gemm_q8_0x16,
    .gemm_q4_Kx16 = gemm_q4_Kx16,
    .gemm_q6_Kx16 = gemm_q6_Kx16,
};
const exsa_cpu_kernels *const exsa_cpu_kernels_avx512vnni_partial = &avx512vnni_partial;
#else
const exsa_cpu_kernels *const exsa_cpu_kernels_avx512vnni_partial = NULL;
#endif

#else

const exsa_cpu_kernels *const exsa_cpu_kernels_avx512_partial = NULL;
const exsa_cpu_kernels *const exsa_cpu_kernels_avx512vnni_partial = NULL;

#endif
