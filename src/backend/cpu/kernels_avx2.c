/* AVX2 + FMA + F16C kernels (compiled with -mavx2 -mfma -mf16c; chosen at
 * run time only on CPUs that have all three).
 *
 * Batched dots: every kernel walks the weight row once per group of up to 4
 * activation rows, decoding each weight block into registers and applying
 * it to every row of the group. One row (decode) is the same code with a
 * group of 1.
 *
 * Batch invariance: a row's result is bit-identical whatever the group size
 * and the row's place in it (decode and prefill agree exactly). Each row has
 * its own accumulators, and the accumulator scheme and summation order are
 * the same for every group size; only the register allocation changes.
 *
 * Integer products use vpmaddubsw (unsigned x signed bytes -> int16 pairs).
 * Weights with a sign (Q4_0, Q5_0, Q8_0) use |w| and sign(w)*a; unsigned
 * K-quant values are fed directly and their offsets/mins come back through
 * Q8_K's bsums. No int16 pair sum can saturate for the value ranges the
 * formats allow. The sign trick needs activations above -128: the reference
 * quantizers (and ours) only produce -127..127.
 *
 * Activation quantizers give the same bytes as the scalar references for
 * finite inputs, ties included: Q8_0 rounds half away from zero like roundf,
 * Q8_K rounds half to even like nearest_int. NaN/Inf inputs are not
 * byte-matched.
 */
#include "backend/cpu/kernels_internal.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

/* ------------------------------------------------------- float weights */

/* 8 weights as floats, from F32, F16 or BF16. */
INLINE __m256 load_w8(const void *w, int i, const int kind)
{
    switch (kind) {
    case K_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const exsa_fp16 *)w + i)));
    case K_BF16: {
        const __m128i h = _mm_loadu_si128((const __m128i *)((const exsa_bf16 *)w + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    default:
        return _mm256_loadu_ps((const float *)w + i);
    }
}

INLINE float load_w1(const void *w, int i, const int kind)
{
    switch (kind) {
    case K_F16:
        return h2f(((const exsa_fp16 *)w)[i]);
    case K_BF16:
        return exsa_bf16_to_fp32(((const exsa_bf16 *)w)[i]);
    default:
        return ((const float *)w)[i];
    }
}

/* 8 activations as floats: BF16 rows for BF16 weights (their
 * vec_dot_type), float rows otherwise. */
INLINE __m256 load_a8(const float *a, int i, const int kind)
{
    return kind == K_BF16 ? load_w8(a, i, K_BF16) : _mm256_loadu_ps(a + i);
}

INLINE float load_a1(const float *a, int i, const int kind)
{
    return kind == K_BF16 ? load_w1(a, i, K_BF16) : a[i];
}

/* Every row sums in the same order whatever the group size R (batch
 * invariance): four accumulators, element i + 8u of each 32-element step
 * into acc[u], 8-element leftovers into acc[0], then (acc0 + acc1) +
 * (acc2 + acc3), the lanes, and the scalar tail. Four independent chains
 * hide the FMA latency when a row is alone (decode). */
INLINE void float_rows(const rows_t *r, int j0, const int R, const int kind)
{
    const float *a[4];
    __m256 acc[4][4]; /* 16 for R = 4: measured as fast as 2 per row */
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
        a[k] = act_row(r, j0 + k);
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++)
            acc[k][u] = _mm256_setzero_ps();
    }
    const int n = r->n;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) {
            const __m256 w = load_w8(r->w, i + 8 * u, kind);
#pragma GCC unroll 4
            for (int k = 0; k < R; k++)
                acc[k][u] = _mm256_fmadd_ps(w, load_a8(a[k], i + 8 * u, kind), acc[k][u]);
        }
    }
    for (; i + 8 <= n; i += 8) {
        const __m256 w = load_w8(r->w, i, kind);
#pragma GCC unroll 4
        for (int k = 0; k < R; k++)
            acc[k][0] = _mm256_fmadd_ps(w, load_a8(a[k], i, kind), acc[k][0]);
    }
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
        const __m256 s01 = _mm256_add_ps(acc[k][0], acc[k][1]);
        const __m256 s23 = _mm256_add_ps(acc[k][2], acc[k][3]);
        float s = hsum_ps(_mm256_add_ps(s01, s23));
        for (int t = i; t < n; t++)
            s += load_w1(r->w, t, kind) * load_a1(a[k], t, kind);
        store_out(r, j0 + k, s);
    }
}

/* ------------------------------------------------ 32-element blocks */

/* Q4_0 / Q5_0 / Q8_0 / Q4_1 / Q5_1 against Q8_0. Every row sums in the
 * same order whatever the group size R (batch invariance): even blocks into
 * accumulator set 0, odd blocks into set 1 (two chains, so a lone row is not
 * bound by the latency of one), then set 0 + set 1 and the lanes. */

/* One signed block applied to R rows: sum(|w| * (sign(w) * a)). */
INLINE void signed32_block(const rows_t *r, const exsa_block_q8_0 *const *a, int i, const int R,
                           const int kind, __m256 *acc)
{
    float dw;
    const __m256i x = decode_signed(r->w, i, kind, &dw);
    const __m256i ax = _mm256_sign_epi8(x, x);
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
        const __m256i y = _mm256_loadu_si256((const __m256i *)a[k][i].qs);
        const __m256i p = dot_u8s8(ax, _mm256_sign_epi8(y, x));
        const __m256 d = _mm256_set1_ps(dw * h2f(a[k][i].d));
        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc[k]);
    }
}

/* One unsigned block applied to R rows: m_w*d_a*sum(q_a) +
 * d_w*d_a*sum(q_w*q_a). Both terms go into the same accumulator, so a group
 * of 4 rows needs 8 of them (two sets) and stays within the 16 ymm
 * registers; the min term first, as it does not wait for the decode. */
INLINE void unsigned32_block(const rows_t *r, const exsa_block_q8_0 *const *a, int i,
                             const int R, const int kind, __m256 *acc)
{
    const __m256i ones = _mm256_set1_epi8(1);
    float dw, mw;
    const __m256i u = decode_unsigned(r->w, i, kind, &dw, &mw);
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
        const __m256i y = _mm256_loadu_si256((const __m256i *)a[k][i].qs);
        const float da = h2f(a[k][i].d);
        const __m256 p = _mm256_cvtepi32_ps(dot_u8s8(u, y));
        const __m256 s = _mm256_cvtepi32_ps(dot_u8s8(ones, y));
        acc[k] = _mm256_fmadd_ps(s, _mm256_set1_ps(mw * da), acc[k]);
        acc[k] = _mm256_fmadd_ps(p, _mm256_set1_ps(dw * da), acc[k]);
    }
}

INLINE void block32_apply(const rows_t *r, const exsa_block_q8_0 *const *a, int i, const int R,
                          const int kind, __m256 *acc)
{
    if (kind == K_Q4_1 || kind == K_Q5_1)
        unsigned32_block(r, a, i, R, kind, acc);
    else
        signed32_block(r, a, i, R, kind, acc);
}

/* Signed formats (Q4_0, Q5_0, Q8_0) keep one accumulator per row and add
 * the blocks in order, then hsum_ps: the order of llama.cpp's AVX2 kernels,
 * so that Exsa's logits track llama.cpp's instead of drifting by the
 * activation-rounding flips a different float order causes (see
 * cpu_attention.c). One FMA chain is not the bottleneck: decoding a block
 * takes longer than the FMA latency. Unsigned formats alternate two
 * accumulator sets. Either way the order is the same for every R, so a row's
 * result does not depend on the batch. */
INLINE void block32_rows(const rows_t *r, int j0, const int R, const int kind)
{
    const exsa_block_q8_0 *a[4];
    __m256 acc[2][4];
    const int two = kind == K_Q4_1 || kind == K_Q5_1;
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
        a[k] = act_row(r, j0 + k);
        acc[0][k] = acc[1][k] = _mm256_setzero_ps();
    }
    const int nb = r->n / 32;
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        block32_apply(r, a, i, R, kind, acc[0]);
        block32_apply(r, a, i + 1, R, kind, acc[two]);
    }
    if (i < nb)
        block32_apply(r, a, i, R, kind, acc[0]);
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        store_out(r, j0 + k, two ? hsum_ps(_mm256_add_ps(acc[0][k], acc[1][k]))
                                 : hsum_ps(acc[0][k]));
}

/* ------------------------------------------------------------ K-quants */

/* Broadcast int16 lane m (0..7) of each 128-bit half to the whole half. */
INLINE __m256i bcast_i16(__m256i v, int m)
{
    return _mm256_shuffle_epi8(v, _mm256_set1_epi16((short)(((2 * m + 1) << 8) | (2 * m))));
}

/* Scales of 16-element groups as int16 (sc16: groups 0..15). For the
 * 32-element vector k (groups 2k, 2k+1) the multiplier vector has group 2k in
 * the low half and 2k+1 in the high half. lo/hi hold groups 0..7 / 8..15 in
 * both halves. */
typedef struct {
    __m256i lo, hi;
} scales16_t;

INLINE scales16_t scales16_prepare(__m256i sc16)
{
    scales16_t s = {_mm256_permute2x128_si256(sc16, sc16, 0x00),
                    _mm256_permute2x128_si256(sc16, sc16, 0x11)};
    return s;
}

INLINE __m256i scales16_for(const scales16_t *s, int k)
{
    const int m = k & 3;
    const __m256i pick = _mm256_set_m128i(_mm_set1_epi16((short)(((4 * m + 3) << 8) | (4 * m + 2))),
                                          _mm_set1_epi16((short)(((4 * m + 1) << 8) | (4 * m))));
    return _mm256_shuffle_epi8(k < 4 ? s->lo : s->hi, pick);
}

/* Q2_K, Q3_K and Q6_K: 16-element groups. Scales (and Q2_K's mins) as
 * int16; Q3_K/Q6_K subtract an offset (4 / 32) through the bsums, Q2_K its
 * mins scaled by dmin. */
INLINE void g16_scales(const void *w, int i, const int kind, __m256i *sc16, __m256i *mn16,
                       float *d, float *dmin)
{
    if (kind == K_Q2_K) {
        const exsa_block_q2_K *b = (const exsa_block_q2_K *)w + i;
        *d = h2f(b->d);
        *dmin = h2f(b->dmin);
        const __m128i s8 = _mm_loadu_si128((const __m128i *)b->scales);
        *sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(s8, _mm_set1_epi8(0x0F)));
        *mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), _mm_set1_epi8(0x0F)));
    } else if (kind == K_Q3_K) {
        const exsa_block_q3_K *b = (const exsa_block_q3_K *)w + i;
        *d = h2f(b->d);
        *dmin = 0.0f;
        uint32_t a0, a1, a2;
        memcpy(&a0, b->scales, 4);
        memcpy(&a1, b->scales + 4, 4);
        memcpy(&a2, b->scales + 8, 4);
        /* group g: low 4 bits from byte g (g < 8) or the high nibble of byte
         * g - 8; high 2 bits from byte 8 + g % 4 at bit 2 * (g / 4) */
        const uint32_t k4 = 0x0F0F0F0Fu, k2 = 0x03030303u;
        const __m128i s8 = _mm_setr_epi32((int)((a0 & k4) | ((a2 & k2) << 4)),
                                          (int)((a1 & k4) | (((a2 >> 2) & k2) << 4)),
                                          (int)(((a0 >> 4) & k4) | (((a2 >> 4) & k2) << 4)),
                                          (int)(((a1 >> 4) & k4) | (((a2 >> 6) & k2) << 4)));
        *sc16 = _mm256_cvtepi8_epi16(_mm_sub_epi8(s8, _mm_set1_epi8(32)));
        *mn16 = _mm256_setzero_si256();
    } else {
        const exsa_block_q6_K *b = (const exsa_block_q6_K *)w + i;
        *d = h2f(b->d);
        *dmin = 0.0f;
        *sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
        *mn16 = _mm256_setzero_si256();
    }
}

/* Half h of a superblock: vectors 4h..4h+3 of 32 unsigned values each. */
INLINE void g16_half(const void *w, int i, int h, const int kind, __m256i u[4])
{
    const __m256i m3 = _mm256_set1_epi8(3);
    if (kind == K_Q2_K) {
        const exsa_block_q2_K *b = (const exsa_block_q2_K *)w + i;
        const __m256i q = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * h));
        u[0] = _mm256_and_si256(q, m3);
        u[1] = _mm256_and_si256(_mm256_srli_epi16(q, 2), m3);
        u[2] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m3);
        u[3] = _mm256_and_si256(_mm256_srli_epi16(q, 6), m3);
    } else if (kind == K_Q3_K) {
        const exsa_block_q3_K *b = (const exsa_block_q3_K *)w + i;
        /* value + 4 = low 2 bits | high bit << 2; the high bit of vector
         * 4h + s is bit 4h + s of hmask */
        const __m256i q = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * h));
        __m256i hm = _mm256_loadu_si256((const __m256i *)b->hmask);
        hm = h ? _mm256_srli_epi16(hm, 4) : hm;
        const __m256i b2 = _mm256_set1_epi8(4);
#pragma GCC unroll 4
        for (int s = 0; s < 4; s++) {
            const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(q, 2 * s), m3);
            const __m256i hb = _mm256_and_si256(_mm256_slli_epi16(hm, 2), b2);
            u[s] = _mm256_or_si256(lo, hb);
            hm = _mm256_srli_epi16(hm, 1);
        }
    } else {
        const exsa_block_q6_K *b = (const exsa_block_q6_K *)w + i;
        const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
        u[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
                               _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
        u[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                               _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
        u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                               _mm256_and_si256(qh, m30));
        u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                               _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
    }
}

INLINE void g16_rows(const rows_t *r, int j0, const int R, const int kind)
{
    /* offset subtracted from the unsigned values: Q3_K 4 (shift 2), Q6_K 32 */
    const int off_shift = kind == K_Q3_K ? 2 : 5;
    const exsa_block_q8_K *a[4];
    __m256 acc[4];
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
        a[k] = act_row(r, j0 + k);
        acc[k] = _mm256_setzero_ps();
    }
    const int nb = r->n / EXSA_QK_K;
    const size_t bb = kind == K_Q2_K   ? sizeof(exsa_block_q2_K)
                      : kind == K_Q3_K ? sizeof(exsa_block_q3_K)
                                       : sizeof(exsa_block_q6_K);
    for (int i = 0; i < nb; i++) {
        if (j0 == 0)
            prefetch_ahead((const char *)r->w + (size_t)i * bb, bb);
        __m256i sc16, mn16;
        float d, dmin;
        g16_scales(r->w, i, kind, &sc16, &mn16, &d, &dmin);
        const scales16_t sc = scales16_prepare(sc16);
        __m256i sumi[4];
#pragma GCC unroll 4
        for (int k = 0; k < R; k++)
            sumi[k] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i u[4];
            g16_half(r->w, i, h, kind, u);
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                const __m256i s = scales16_for(&sc, 4 * h + v);
#pragma GCC unroll 4
                for (int k = 0; k < R; k++) {
                    const __m256i y =
                        _mm256_loadu_si256((const __m256i *)(a[k][i].qs + 128 * h + 32 * v));
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u[v], y), s);
                    sumi[k] = _mm256_add_epi32(sumi[k], p);
                }
            }
        }
#pragma GCC unroll 4
        for (int k = 0; k < R; k++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)a[k][i].bsums);
            const float da = a[k][i].d;
            if (kind == K_Q2_K) {
                const __m256 m = _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mn16));
                acc[k] = _mm256_fnmadd_ps(m, _mm256_set1_ps(dmin * da), acc[k]);
            } else {
                const __m256i off = _mm256_madd_epi16(bs, sc16);
                sumi[k] = _mm256_sub_epi32(sumi[k], _mm256_slli_epi32(off, off_shift));
            }
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[k]), _mm256_set1_ps(d * da), acc[k]);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        store_out(r, j0 + k, hsum_ps(acc[k]));
}

INLINE void g32_rows(const rows_t *r, int j0, const int R, const int kind)
{
    const exsa_block_q8_K *a[4];
    __m256 acc[4];
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
        a[k] = act_row(r, j0 + k);
        acc[k] = _mm256_setzero_ps();
    }
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const int nb = r->n / EXSA_QK_K;
    const size_t bb = kind == K_Q4_K ? sizeof(exsa_block_q4_K) : sizeof(exsa_block_q5_K);
    for (int i = 0; i < nb; i++) {
        if (j0 == 0)
            prefetch_ahead((const char *)r->w + (size_t)i * bb, bb);
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
        const __m256i scb = _mm256_permute2x128_si256(scm, scm, 0x00);
        __m256i hb = kind == K_Q5_K ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
        const __m256i b4 = _mm256_set1_epi8(0x10);

        __m256i sumi[4];
#pragma GCC unroll 4
        for (int k = 0; k < R; k++)
            sumi[k] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            __m256i lo = _mm256_and_si256(q, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (kind == K_Q5_K) {
                /* bits 2c / 2c+1 of qh are the 16s of the low / high half;
                 * hb is shifted down by 2 per chunk */
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hb, 4), b4));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hb, 3), b4));
                hb = _mm256_srli_epi16(hb, 2);
            }
            const __m256i s_lo = bcast_i16(scb, 2 * c), s_hi = bcast_i16(scb, 2 * c + 1);
#pragma GCC unroll 4
            for (int k = 0; k < R; k++) {
                const int8_t *y = a[k][i].qs + 64 * c;
                const __m256i p_lo = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)y)), s_lo);
                const __m256i p_hi = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y + 32))), s_hi);
                sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(p_lo, p_hi));
            }
        }
#pragma GCC unroll 4
        for (int k = 0; k < R; k++) {
            const float da = a[k][i].d;
            /* sums of the activations of each 32-element group */
            const __m128i bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)a[k][i].bsums),
                                              _mm_loadu_si128((const __m128i *)(a[k][i].bsums + 8)));
            const __m128i pm = _mm_madd_epi16(mins, bs);
            const __m256 m = _mm256_cvtepi32_ps(_mm256_inserti128_si256(_mm256_setzero_si256(), pm, 0));
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[k]), _mm256_set1_ps(d * da), acc[k]);
            acc[k] = _mm256_fnmadd_ps(m, _mm256_set1_ps(dmin * da), acc[k]);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        store_out(r, j0 + k, hsum_ps(acc[k]));
}

/* ------------------------------------------------------------ dispatch */

INLINE void group(const rows_t *r, int j0, const int R, const int kind)
{
    switch (kind) {
    case K_F32:
    case K_F16:
    case K_BF16:
        float_rows(r, j0, R, kind);
        break;
    case K_Q4_0:
    case K_Q4_1:
    case K_Q5_0:
    case K_Q5_1:
    case K_Q8_0:
        block32_rows(r, j0, R, kind);
        break;
    case K_Q2_K:
    case K_Q3_K:
    case K_Q6_K:
        g16_rows(r, j0, R, kind);
        break;
    default:
        g32_rows(r, j0, R, kind);
        break;
    }
}

INLINE void dot_rows(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os, const int kind)
{
    const rows_t r = {n, w, act, as, out, os};
    int j = 0;
    for (; j + 4 <= na; j += 4)
        group(&r, j, 4, kind);
    switch (na - j) {
    case 3:
        group(&r, j, 3, kind);
        break;
    case 2:
        group(&r, j, 2, kind);
        break;
    case 1:
        group(&r, j, 1, kind);
        break;
    default:
        break;
    }
}

static void dot_f32(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_F32);
}
static void dot_f16(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_F16);
}
static void dot_bf16(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_BF16);
}
static void dot_q4_0(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q4_0);
}
static void dot_q4_1(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q4_1);
}
static void dot_q5_0(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q5_0);
}
static void dot_q5_1(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q5_1);
}
static void dot_q8_0(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q8_0);
}
static void dot_q2_K(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q2_K);
}
static void dot_q3_K(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q3_K);
}
static void dot_q4_K(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q4_K);
}
static void dot_q5_K(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q5_K);
}
static void dot_q6_K(int n, const void *w, const void *act, size_t as, int na, float *out, size_t os)
{
    dot_rows(n, w, act, as, na, out, os, K_Q6_K);
}

/* ------------------------------------------------ activation quantizers */

/* 4 x 8 int32 -> 32 int8 (saturating) in element order. */
INLINE __m256i pack_i32x32(__m256i a, __m256i b, __m256i c, __m256i d)
{
    const __m256i ab = _mm256_packs_epi32(a, b);
    const __m256i cd = _mm256_packs_epi32(c, d);
    const __m256i q = _mm256_packs_epi16(ab, cd);
    /* packs interleave per 128-bit half; dword k of the result holds
     * elements of source dword order 0,4,1,5,2,6,3,7 */
    return _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* One Q8_0 block: its 32 values in element order, the f16 scale in *dh. */
INLINE __m256i q8_0_block(const float *x, exsa_fp16 *dh)
{
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 v[4];
    __m256 mx = _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int u = 0; u < 4; u++) {
        v[u] = _mm256_loadu_ps(x + 8 * u);
        mx = _mm256_max_ps(mx, _mm256_and_ps(v[u], abs_mask));
    }
    /* same expressions as the reference, so d and id are bit-equal */
    const float d = hmax_ps(mx) / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    *dh = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
#pragma GCC unroll 4
    for (int u = 0; u < 4; u++)
        q[u] = _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v[u], vid)));
    return pack_i32x32(q[0], q[1], q[2], q[3]);
}

static void quantize_q8_0(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / EXSA_QK8_0; i++, x += EXSA_QK8_0)
        _mm256_storeu_si256((__m256i *)y[i].qs, q8_0_block(x, &y[i].d));
}

/* Sums of the 8 quads of 32 int8 values (quad k in dword k). */
INLINE __m256i quad_sums(__m256i q)
{
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q);
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

static void quantize_q8_0s(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_0s *y = vy;
    for (int64_t i = 0; i < n / EXSA_QK8_0; i++, x += EXSA_QK8_0) {
        exsa_fp16 dh;
        const __m256i q = q8_0_block(x, &dh);
        const __m256i s8 = quad_sums(q);
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        y[i].d = _cvtsh_ss(dh);
        y[i].sum = _mm_cvtsi128_si32(s4);
        _mm256_storeu_si256((__m256i *)y[i].qs, q);
    }
}

static void quantize_q8_0a(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_0a *y = vy;
    for (int64_t i = 0; i < n / EXSA_QK8_0; i++, x += EXSA_QK8_0) {
        exsa_fp16 dh;
        const __m256i q = q8_0_block(x, &dh);
        y[i].d = _cvtsh_ss(dh);
        _mm256_storeu_si256((__m256i *)y[i].qs, q);
        _mm256_storeu_si256((__m256i *)y[i].aqs, _mm256_abs_epi8(q));
        /* -128 * s as -(s << 7): exact for |s| <= 508 */
        _mm256_storeu_si256((__m256i *)y[i].corr,
                            _mm256_sub_epi32(_mm256_setzero_si256(),
                                             _mm256_slli_epi32(quad_sums(q), 7)));
    }
}

static void quantize_q8_K(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_K *y = vy;
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int64_t i = 0; i < n / EXSA_QK_K; i++, x += EXSA_QK_K) {
        __m256 mx = _mm256_setzero_ps();
        for (int u = 0; u < EXSA_QK_K / 8; u++)
            mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(x + 8 * u), abs_mask));
        const float amax = hmax_ps(mx);
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }
        /* the reference keeps the first element of largest magnitude */
        const __m256 vamax = _mm256_set1_ps(amax);
        int first = 0;
        for (int u = 0; u < EXSA_QK_K / 8; u++) {
            const __m256 ax = _mm256_and_ps(_mm256_loadu_ps(x + 8 * u), abs_mask);
            const int m = _mm256_movemask_ps(_mm256_cmp_ps(ax, vamax, _CMP_EQ_OQ));
            if (m) {
                first = 8 * u + __builtin_ctz((unsigned)m);
                break;
            }
        }
        const float iscale = -127.0f / x[first];
        const __m256 vis = _mm256_set1_ps(iscale);
        __m128i sums[4];
        for (int c = 0; c < 4; c++) { /* 64 elements = 4 bsum groups */
            __m256i q[8];
#pragma GCC unroll 8
            for (int u = 0; u < 8; u++) /* cvtps rounds half to even, as nearest_int */
                q[u] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 64 * c + 8 * u), vis));
            _mm256_storeu_si256((__m256i *)(y[i].qs + 64 * c), pack_i32x32(q[0], q[1], q[2], q[3]));
            _mm256_storeu_si256((__m256i *)(y[i].qs + 64 * c + 32),
                                pack_i32x32(q[4], q[5], q[6], q[7]));
            const __m256i h01 = _mm256_hadd_epi32(_mm256_add_epi32(q[0], q[1]),
                                                  _mm256_add_epi32(q[2], q[3]));
            const __m256i h23 = _mm256_hadd_epi32(_mm256_add_epi32(q[4], q[5]),
                                                  _mm256_add_epi32(q[6], q[7]));
            const __m256i h = _mm256_hadd_epi32(h01, h23);
            sums[c] = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        }
        _mm_storeu_si128((__m128i *)y[i].bsums, _mm_packs_epi32(sums[0], sums[1]));
        _mm_storeu_si128((__m128i *)(y[i].bsums + 8), _mm_packs_epi32(sums[2], sums[3]));
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

static void axpy_f32(int n, float a, const float *x, float *y)
{
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

static void axpy_f16(int n, float a, const exsa_fp16 *x, float *y)
{
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 xv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, xv, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++)
        y[i] += a * h2f(x[i]);
}

static void f32_to_f16(const float *x, exsa_fp16 *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

/* swiglu of kernels.h, 8 lanes at a time with exp8_neg; the tail by the
 * same scalar formula (exsa_exp_neg, fmaf with this file's FMA). */
static void swiglu(const float *g, const float *u, float *out, int64_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 t = exp8_neg(_mm256_or_ps(x, sign)); /* -|x| */
        const __m256 pos = _mm256_cmp_ps(x, zero, _CMP_GE_OQ);
        const __m256 s = _mm256_div_ps(_mm256_blendv_ps(t, one, pos), _mm256_add_ps(one, t));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(x, s), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) {
        const float x = g[i], t = exsa_exp_neg(-fabsf(x));
        out[i] = x * ((x >= 0.0f ? 1.0f : t) / (1.0f + t)) * u[i];
    }
}

/* geglu of kernels.h, 8 lanes with exp8_neg as swiglu; the tail by the
 * same scalar formula. */
static void geglu(const float *g, const float *u, float *out, int64_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 c2 = _mm256_set1_ps(EXSA_GELU_2C), ca = _mm256_set1_ps(EXSA_GELU_A);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 y = _mm256_mul_ps(
            _mm256_mul_ps(c2, x), _mm256_add_ps(one, _mm256_mul_ps(_mm256_mul_ps(ca, x), x)));
        const __m256 t = exp8_neg(_mm256_or_ps(y, sign)); /* -|y| */
        const __m256 pos = _mm256_cmp_ps(y, zero, _CMP_GE_OQ);
        const __m256 s = _mm256_div_ps(_mm256_blendv_ps(t, one, pos), _mm256_add_ps(one, t));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(x, s), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) {
        const float x = g[i], y = (EXSA_GELU_2C * x) * (1.0f + (EXSA_GELU_A * x) * x);
        const float t = exsa_exp_neg(-fabsf(y));
        out[i] = x * ((y >= 0.0f ? 1.0f : t) / (1.0f + t)) * u[i];
    }
}

/* scale_mul / add_f32 of kernels.h: 8 lanes, then the tail one by one;
 * each element is the same rounded products as the scalar form. */
static void scale_mul(const float *x, float s, const float *w, float *y, int64_t n)
{
    const __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    if (w) {
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs),
                                                  _mm256_loadu_ps(w + i)));
        for (; i < n; i++)
            y[i] = x[i] * s * w[i];
    } else {
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
        for (; i < n; i++)
            y[i] = x[i] * s;
    }
}

static void add_f32(float *y, const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
    for (; i < n; i++)
        y[i] += x[i];
}

static void f16_to_f32(const exsa_fp16 *x, float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++)
        y[i] = h2f(x[i]);
}

/* ------------------------------------------------- repacked Q4_0 x 8 */

/* R activation rows against one 8-row group (kernels.h). Per block column
 * and row: 8 vpmaddubsw of unsigned nibbles (0..15) by broadcast signed
 * activation quads, summed in int16 (8 x 2 x 15 x 127 = 30480 cannot
 * saturate), one vpmaddwd to int32 lanes = 8 rows' exact dots, minus
 * 8 * sum(a), then one FMA for 8 outputs. The nibbles are decoded once per
 * block column for all R rows. */
/* Q4_0 / Q4_1 / Q5_0 / Q5_1 repacked (kernels.h); kind 0..3 as in the
 * scalar reference: bit 0 = has mins, kind >= 2 = has fifth bits. */
INLINE void qx8_rows(int nb, const void *w, const int kind, const exsa_block_q8_0s *const *a,
                     const int R, float *out, size_t os, int pf)
{
    const int has_min = kind & 1, has_high = kind >= 2;
    const size_t stride = 16 + 16 * (size_t)has_min + 32 * (size_t)has_high + 128;
    const int32_t offset = has_high ? 16 : 8;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4];
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        acc[k] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const char *blk = (const char *)w + (size_t)b * stride;
        if (pf)
            prefetch_ahead(blk, stride);
        const uint8_t *qh = (const uint8_t *)blk + 16 + 16 * has_min;
        const uint8_t *qs = qh + 32 * has_high;
        /* q[j]: elements 4j..4j+3, q[4 + j]: 16+4j..16+4j+3 of each row */
        __m256i q[8];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            q[j] = _mm256_and_si256(raw, m4);
            q[j + 4] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if (has_high) {
                /* byte r of the 8 -> the 4 bytes of lane r, then bit t of
                 * it (low half) / bit 4 + t (high half) -> 16 in byte t */
                int64_t h8;
                memcpy(&h8, qh + 8 * j, 8);
                const __m256i idx = _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3,
                                                     3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7,
                                                     7, 7);
                const __m256i hv = _mm256_shuffle_epi8(_mm256_set1_epi64x(h8), idx);
                const __m256i blo = _mm256_set1_epi32(0x08040201);
                const __m256i bhi = _mm256_set1_epi32((int32_t)0x80402010u);
                const __m256i b16 = _mm256_set1_epi8(0x10);
                q[j] = _mm256_or_si256(
                    q[j], _mm256_and_si256(
                              _mm256_cmpeq_epi8(_mm256_and_si256(hv, blo), blo), b16));
                q[j + 4] = _mm256_or_si256(
                    q[j + 4], _mm256_and_si256(
                                  _mm256_cmpeq_epi8(_mm256_and_si256(hv, bhi), bhi), b16));
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk));
        const __m256 mw = has_min ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 16)))
                                  : _mm256_setzero_ps();
        /* One row at a time with a tree of adds: the 8 products of a row
         * are independent, and nothing lives across rows but acc (the
         * row-interleaved order made the compiler spill them). */
#pragma GCC unroll 4
        for (int k = 0; k < R; k++) {
            __m256i x[8];
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) {
                int32_t quad;
                memcpy(&quad, a[k][b].qs + 4 * t, 4);
                x[t] = _mm256_maddubs_epi16(q[t], _mm256_set1_epi32(quad));
            }
            const __m256i s16a = _mm256_add_epi16(_mm256_add_epi16(x[0], x[1]),
                                                  _mm256_add_epi16(x[2], x[3]));
            const __m256i s16b = _mm256_add_epi16(_mm256_add_epi16(x[4], x[5]),
                                                  _mm256_add_epi16(x[6], x[7]));
            /* 4-bit values: all 8 fit one int16 sum (<= 30480); 5-bit ones
             * (<= 7874 a pair) only 4 at a time */
            __m256i s32 = has_high ? _mm256_add_epi32(_mm256_madd_epi16(s16a, ones),
                                                      _mm256_madd_epi16(s16b, ones))
                                   : _mm256_madd_epi16(_mm256_add_epi16(s16a, s16b), ones);
            if (!has_min)
                s32 = _mm256_sub_epi32(s32, _mm256_set1_epi32(offset * a[k][b].sum));
            const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(a[k][b].d));
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), d, acc[k]);
            if (has_min)
                acc[k] = _mm256_fmadd_ps(mw, _mm256_set1_ps(a[k][b].d * (float)a[k][b].sum),
                                         acc[k]);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        _mm256_storeu_ps(out + (size_t)k * os, acc[k]);
}

INLINE void q4_0x8_rows(int nb, const exsa_block_q4_0x8 *w, const exsa_block_q8_0s *const *a,
                        const int R, float *out, size_t os, int pf)
{
    qx8_rows(nb, w, 0, a, R, out, os, pf);
}

INLINE void q4_1x8_rows(int nb, const exsa_block_q4_1x8 *w, const exsa_block_q8_0s *const *a,
                        const int R, float *out, size_t os, int pf)
{
    qx8_rows(nb, w, 1, a, R, out, os, pf);
}

INLINE void q5_0x8_rows(int nb, const exsa_block_q5_0x8 *w, const exsa_block_q8_0s *const *a,
                        const int R, float *out, size_t os, int pf)
{
    qx8_rows(nb, w, 2, a, R, out, os, pf);
}

INLINE void q5_1x8_rows(int nb, const exsa_block_q5_1x8 *w, const exsa_block_q8_0s *const *a,
                        const int R, float *out, size_t os, int pf)
{
    qx8_rows(nb, w, 3, a, R, out, os, pf);
}

/* Repacked Q8_0 (kernels.h; the row kernel's order, bit for bit). */
EXSA_Q8X8_GEMM(gemm_q8_0x8, dot_u8s8)

EXSA_X8_DRIVER(gemm_q4_0x8, exsa_block_q4_0x8, exsa_block_q8_0s, 32, q4_0x8_rows)
EXSA_X8_DRIVER(gemm_q4_1x8, exsa_block_q4_1x8, exsa_block_q8_0s, 32, q4_1x8_rows)
EXSA_X8_DRIVER(gemm_q5_0x8, exsa_block_q5_0x8, exsa_block_q8_0s, 32, q5_0x8_rows)
EXSA_X8_DRIVER(gemm_q5_1x8, exsa_block_q5_1x8, exsa_block_q8_0s, 32, q5_1x8_rows)

/* ------------------------------------------------- repacked floats x 8 */

/* Element k of a group's 8 rows as floats. */
INLINE __m256 fx_load(const void *w, size_t k, const int kind)
{
    if (kind == K_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const exsa_fp16 *)w + 8 * k)));
    return _mm256_loadu_ps((const float *)w + 8 * k);
}

/* G groups x R activation rows (G * R <= 12): 12 accumulators, G weight
 * vectors and one broadcast fit the 16 registers. */
INLINE void fx_tile(int n, const char *w, size_t gb, const int G, const float *const *a,
                    const int R, float *out, size_t os, const int kind, int pf)
{
    __m256 acc[12];
#pragma GCC unroll 12
    for (int t = 0; t < G * R; t++)
        acc[t] = _mm256_setzero_ps();
    const size_t elem = kind == K_F32 ? 4 : 2;
    for (int i = 0; i < n; i++) {
        __m256 wv[4];
        if (pf && (i * 8 * elem) % 64 == 0)
#pragma GCC unroll 4
            for (int g = 0; g < G; g++)
                prefetch_ahead(w + (size_t)g * gb + (size_t)i * 8 * elem, 64);
#pragma GCC unroll 4
        for (int g = 0; g < G; g++)
            wv[g] = fx_load(w + (size_t)g * gb, (size_t)i, kind);
#pragma GCC unroll 6
        for (int k = 0; k < R; k++) {
            const __m256 b = _mm256_broadcast_ss(a[k] + i);
#pragma GCC unroll 4
            for (int g = 0; g < G; g++)
                acc[g * R + k] = _mm256_fmadd_ps(wv[g], b, acc[g * R + k]);
        }
    }
#pragma GCC unroll 6
    for (int k = 0; k < R; k++)
#pragma GCC unroll 4
        for (int g = 0; g < G; g++)
            _mm256_storeu_ps(out + (size_t)k * os + 8 * (size_t)g, acc[g * R + k]);
}

#define FX_CASE(G, R)                                                                     \
    case (G) * 8 + (R):                                                                   \
        fx_tile(n, w, gb, G, a, R, o, os, kind, j == 0);                                  \
        break;

INLINE void fx_drive(int n, const char *w, size_t gb, int G, const float *act, size_t as,
                     int n_act, float *out, size_t os, const int kind)
{
    const int rmax = G >= 4 ? 3 : G == 3 ? 4 : 6; /* G * R <= 12 */
    const float *a[6];
    for (int j = 0; j < n_act; j += rmax) {
        const int r = n_act - j < rmax ? n_act - j : rmax;
        for (int k = 0; k < r; k++)
            a[k] = (const float *)((const char *)act + (size_t)(j + k) * as);
        float *o = out + (size_t)j * os;
        switch (G * 8 + r) {
            FX_CASE(4, 1) FX_CASE(4, 2) FX_CASE(4, 3)
            FX_CASE(3, 1) FX_CASE(3, 2) FX_CASE(3, 3) FX_CASE(3, 4)
            FX_CASE(2, 1) FX_CASE(2, 2) FX_CASE(2, 3) FX_CASE(2, 4) FX_CASE(2, 5) FX_CASE(2, 6)
            FX_CASE(1, 1) FX_CASE(1, 2) FX_CASE(1, 3) FX_CASE(1, 4) FX_CASE(1, 5) FX_CASE(1, 6)
        default:
            break;
        }
    }
}
#undef FX_CASE

static void gemm_fx(int type, int n, const void *w, size_t group_bytes, int n_groups,
                    const float *act, size_t act_stride, int n_act, float *out,
                    size_t out_stride)
{
    if (type == EXSA_TYPE_F16)
        fx_drive(n, w, group_bytes, n_groups, act, act_stride, n_act, out, out_stride, K_F16);
    else
        fx_drive(n, w, group_bytes, n_groups, act, act_stride, n_act, out, out_stride, K_F32);
}

/* ------------------------------------------------- repacked BF16 x 8 */

/* gemm_bf16 (kernels.h), G groups x R rows (G * R <= 12): a pair's dword is
 * its even element shifted up and its odd element with the low half
 * cleared, so two FMAs per pair give vdpbf16ps's two roundings. */
INLINE void bf16_tile(int n, const char *w, size_t gb, const int G, const exsa_bf16 *const *a,
                      const int R, float *out, size_t os, int pf)
{
    __m256 acc[12];
#pragma GCC unroll 12
    for (int t = 0; t < G * R; t++)
        acc[t] = _mm256_setzero_ps();
    const __m256i hi = _mm256_set1_epi32((int)0xFFFF0000u);
    for (int p = 0; p < n / 2; p++) {
        if (pf && p % 2 == 0)
#pragma GCC unroll 4
            for (int g = 0; g < G; g++)
                prefetch_ahead(w + (size_t)g * gb + 32 * (size_t)p, 64);
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(w + (size_t)g * gb + 32 * (size_t)p));
            const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
            const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
#pragma GCC unroll 6
            for (int k = 0; k < R; k++) {
                int32_t pair;
                memcpy(&pair, a[k] + 2 * p, sizeof(pair));
                const __m256i b = _mm256_set1_epi32(pair);
                acc[g * R + k] = _mm256_fmadd_ps(wo, _mm256_castsi256_ps(_mm256_and_si256(b, hi)),
                                                 acc[g * R + k]);
                acc[g * R + k] = _mm256_fmadd_ps(we, _mm256_castsi256_ps(_mm256_slli_epi32(b, 16)),
                                                 acc[g * R + k]);
            }
        }
    }
#pragma GCC unroll 6
    for (int k = 0; k < R; k++)
#pragma GCC unroll 4
        for (int g = 0; g < G; g++)
            _mm256_storeu_ps(out + (size_t)k * os + 8 * (size_t)g, acc[g * R + k]);
}

#define BF16_CASE(G, R)                                                                   \
    case (G) * 8 + (R):                                                                   \
        bf16_tile(n, w, gb, G, a, R, o, os, j == 0);                                      \
        break;

static void gemm_bf16(int n, const void *vw, size_t gb, int G, const exsa_bf16 *act, size_t as,
                      int n_act, float *out, size_t os)
{
    const char *w = vw;
    const int rmax = G >= 4 ? 3 : G == 3 ? 4 : 6; /* G * R <= 12 */
    const exsa_bf16 *a[6];
    for (int j = 0; j < n_act; j += rmax) {
        const int r = n_act - j < rmax ? n_act - j : rmax;
        for (int k = 0; k < r; k++)
            a[k] = (const exsa_bf16 *)((const char *)act + (size_t)(j + k) * as);
        float *o = out + (size_t)j * os;
        switch (G * 8 + r) {
            BF16_CASE(4, 1) BF16_CASE(4, 2) BF16_CASE(4, 3)
            BF16_CASE(3, 1) BF16_CASE(3, 2) BF16_CASE(3, 3) BF16_CASE(3, 4)
            BF16_CASE(2, 1) BF16_CASE(2, 2) BF16_CASE(2, 3) BF16_CASE(2, 4) BF16_CASE(2, 5)
            BF16_CASE(2, 6)
            BF16_CASE(1, 1) BF16_CASE(1, 2) BF16_CASE(1, 3) BF16_CASE(1, 4) BF16_CASE(1, 5)
            BF16_CASE(1, 6)
        default:
            break;
        }
    }
}
#undef BF16_CASE

/* ------------------------------------------------- repacked Q4_K x 8 */

/* One sub-block (32 elements) of 8 rows against R activation rows: q[t]
 * holds the 8 rows' elements 4t..4t+3 (0..15), sc the 8 rows' scales as
 * int16 in both halves of each dword. Per row: 8 vpmaddubsw by broadcast
 * activation quads summed in int16 (8 x 2 x 15 x 128 = 30720 cannot
 * saturate), then one vpmaddwd with sc = scale * dot exactly in int32. */
INLINE void q4_Kx8_sub(const __m256i *q, __m256i sc, const exsa_block_q8_K *const *a, int b,
                       int s, const int R, __m256i *isum)
{
#pragma GCC unroll 4
    for (int k = 0; k < R; k++) {
        const int8_t *qa = a[k][b].qs + 32 * s;
        __m256i x[8];
#pragma GCC unroll 8
        for (int t = 0; t < 8; t++) {
            int32_t quad;
            memcpy(&quad, qa + 4 * t, 4);
            x[t] = _mm256_maddubs_epi16(q[t], _mm256_set1_epi32(quad));
        }
        const __m256i s16 =
            _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(x[0], x[1]),
                                              _mm256_add_epi16(x[2], x[3])),
                             _mm256_add_epi16(_mm256_add_epi16(x[4], x[5]),
                                              _mm256_add_epi16(x[6], x[7])));
        isum[k] = _mm256_add_epi32(isum[k], _mm256_madd_epi16(s16, sc));
    }
}

/* Sub-block s's 8 scales (bytes) as int16 pairs (s, s) per dword. */
INLINE __m256i q4_Kx8_scales(const exsa_block_q4_Kx8 *g, int s)
{
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(g->scales + 8 * s)));
    return _mm256_or_si256(v, _mm256_slli_epi32(v, 16));
}

/* R activation rows against one 8-row group (kernels.h). The nibbles of a
 * sub-block are decoded once for all R rows; per super-block and row the
 * scaled dots sum in int32 over the 8 sub-blocks, the mins term is 4
 * vpmaddwd of the 8 rows' min pairs by broadcast pairs of sub-block sums,
 * then one cvt and two FMAs serve 8 outputs. */
INLINE void q4_Kx8_rows(int nb, const exsa_block_q4_Kx8 *w, const exsa_block_q8_K *const *a,
                        const int R, float *out, size_t os, int pf)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[4];
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        acc[k] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const exsa_block_q4_Kx8 *g = &w[b];
        if (pf)
            prefetch_ahead(g, sizeof *g);
        __m256i isum[4];
#pragma GCC unroll 4
        for (int k = 0; k < R; k++)
            isum[k] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const uint8_t *qs = g->qs + 256 * c;
            __m256i q[8];
            /* sub-block 2c: low nibbles */
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++)
                q[t] = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(qs + 32 * t)), m4);
            q4_Kx8_sub(q, q4_Kx8_scales(g, 2 * c), a, b, 2 * c, R, isum);
            /* sub-block 2c + 1: high nibbles */
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++)
                q[t] = _mm256_and_si256(
                    _mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)(qs + 32 * t)), 4), m4);
            q4_Kx8_sub(q, q4_Kx8_scales(g, 2 * c + 1), a, b, 2 * c + 1, R, isum);
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g->d));
        const __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g->dmin));
#pragma GCC unroll 4
        for (int k = 0; k < R; k++) {
            /* int16 sums of the 8 sub-blocks (|sum| <= 32 x 128): the pair
             * of sub-blocks 2i, 2i + 1 is dword i % 2 of lane i / 2 */
            const __m256i bs = _mm256_loadu_si256((const __m256i *)a[k][b].bsums);
            const __m256i h = _mm256_hadd_epi16(bs, bs);
            __m256i ms = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                const __m256i pair =
                    _mm256_permutevar8x32_epi32(h, _mm256_set1_epi32(i % 2 + 4 * (i / 2)));
                const __m256i mn =
                    _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(g->mins + 16 * i)));
                ms = _mm256_add_epi32(ms, _mm256_madd_epi16(pair, mn));
            }
            const __m256 da = _mm256_set1_ps(a[k][b].d);
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[k]), _mm256_mul_ps(dw, da), acc[k]);
            acc[k] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_mul_ps(dm, da), acc[k]);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        _mm256_storeu_ps(out + (size_t)k * os, acc[k]);
}

EXSA_X8_DRIVER(gemm_q4_Kx8, exsa_block_q4_Kx8, exsa_block_q8_K, EXSA_QK_K, q4_Kx8_rows)

/* ------------------------------------------------- repacked Q6_K x 8 */

/* Sub-block s's quad t of the 8 rows as bytes 0..63 (kernels.h layout). */
INLINE __m256i q6_Kx8_quad(const exsa_block_q6_Kx8 *g, int s, int t)
{
    const __m256i lo = _mm256_loadu_si256((const __m256i *)(g->ql + 256 * (s / 2) + 32 * t));
    const __m256i hi = _mm256_loadu_si256((const __m256i *)(g->qh + 256 * (s / 4) + 32 * t));
    const __m256i l = _mm256_and_si256(s % 2 ? _mm256_srli_epi16(lo, 4) : lo,
                                       _mm256_set1_epi8(0x0F));
    /* the two bits of s to bits 4..5 of each byte */
    const int u = s % 4;
    const __m256i h = u == 0   ? _mm256_slli_epi16(hi, 4)
                      : u == 1 ? _mm256_slli_epi16(hi, 2)
                      : u == 2 ? hi
                               : _mm256_srli_epi16(hi, 2);
    return _mm256_or_si256(l, _mm256_and_si256(h, _mm256_set1_epi8(0x30)));
}

/* R activation rows against one 8-row group (kernels.h). Per sub-block the
 * 8 quads are decoded once for all rows; per row, vpmaddubsw of the values
 * by broadcast activation quads, two at a time in int16 (2 x 2 x 63 x 128
 * = 32256 cannot saturate), vpmaddwd by the rows' scales as int16 pairs,
 * and the -32 offset as sum_j sc_j * bsum_j (one vpmaddwd of scale pairs
 * by a broadcast bsum pair per sub-block). Exact int32 per super-block,
 * then one cvt and one FMA serve 8 outputs. */
INLINE void q6_Kx8_rows(int nb, const exsa_block_q6_Kx8 *w, const exsa_block_q8_K *const *a,
                        const int R, float *out, size_t os, int pf)
{
    __m256 acc[4];
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        acc[k] = _mm256_setzero_ps();
    const __m256i lo16 = _mm256_set1_epi32(0xFFFF);
    for (int b = 0; b < nb; b++) {
        const exsa_block_q6_Kx8 *g = &w[b];
        if (pf)
            prefetch_ahead(g, sizeof *g);
        __m256i isum[4], off[4];
#pragma GCC unroll 4
        for (int k = 0; k < R; k++)
            isum[k] = off[k] = _mm256_setzero_si256();
        for (int s = 0; s < 8; s++) {
            __m256i q[8];
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++)
                q[t] = q6_Kx8_quad(g, s, t);
            /* the 8 rows' scales 2s and 2s + 1: as (sc, sc) int16 pairs for
             * the dots, as (sc_2s, sc_2s+1) pairs for the offset */
            const __m256i sa =
                _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(g->scales + 16 * s)));
            const __m256i sb =
                _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(g->scales + 16 * s + 8)));
            const __m256i sca = _mm256_or_si256(_mm256_and_si256(sa, lo16), _mm256_slli_epi32(sa, 16));
            const __m256i scb = _mm256_or_si256(_mm256_and_si256(sb, lo16), _mm256_slli_epi32(sb, 16));
            const __m256i scp = _mm256_or_si256(_mm256_and_si256(sa, lo16), _mm256_slli_epi32(sb, 16));
#pragma GCC unroll 4
            for (int k = 0; k < R; k++) {
                const int8_t *qa = a[k][b].qs + 32 * s;
                __m256i x[8];
#pragma GCC unroll 8
                for (int t = 0; t < 8; t++) {
                    int32_t quad;
                    memcpy(&quad, qa + 4 * t, 4);
                    x[t] = _mm256_maddubs_epi16(q[t], _mm256_set1_epi32(quad));
                }
                const __m256i d0 = _mm256_add_epi32(
                    _mm256_madd_epi16(_mm256_add_epi16(x[0], x[1]), sca),
                    _mm256_madd_epi16(_mm256_add_epi16(x[2], x[3]), sca));
                const __m256i d1 = _mm256_add_epi32(
                    _mm256_madd_epi16(_mm256_add_epi16(x[4], x[5]), scb),
                    _mm256_madd_epi16(_mm256_add_epi16(x[6], x[7]), scb));
                isum[k] = _mm256_add_epi32(isum[k], _mm256_add_epi32(d0, d1));
                int32_t bp;
                memcpy(&bp, a[k][b].bsums + 2 * s, 4);
                off[k] = _mm256_add_epi32(off[k], _mm256_madd_epi16(scp, _mm256_set1_epi32(bp)));
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g->d));
#pragma GCC unroll 4
        for (int k = 0; k < R; k++) {
            const __m256i tot = _mm256_sub_epi32(isum[k], _mm256_slli_epi32(off[k], 5));
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot),
                                     _mm256_mul_ps(dw, _mm256_set1_ps(a[k][b].d)), acc[k]);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < R; k++)
        _mm256_storeu_ps(out + (size_t)k * os, acc[k]);
}

EXSA_X8_DRIVER(gemm_q6_Kx8, exsa_block_q6_Kx8, exsa_block_q8_K, EXSA_QK_K, q6_Kx8_rows)

static const exsa_cpu_kernels avx2_table = {
    .isa = "avx2",
    .dot = {
        [EXSA_TYPE_F32] = dot_f32,
        [EXSA_TYPE_F16] = dot_f16,
        [EXSA_TYPE_BF16] = dot_bf16,
        [EXSA_TYPE_Q4_0] = dot_q4_0,
        [EXSA_TYPE_Q4_1] = dot_q4_1,
        [EXSA_TYPE_Q5_0] = dot_q5_0,
        [EXSA_TYPE_Q5_1] = dot_q5_1,
        [EXSA_TYPE_Q8_0] = dot_q8_0,
        [EXSA_TYPE_Q2_K] = dot_q2_K,
        [EXSA_TYPE_Q3_K] = dot_q3_K,
        [EXSA_TYPE_Q4_K] = dot_q4_K,
        [EXSA_TYPE_Q5_K] = dot_q5_K,
        [EXSA_TYPE_Q6_K] = dot_q6_K,
    },
    .quantize_q8_0 = quantize_q8_0,
    .quantize_q8_K = quantize_q8_K,
    .quantize_q8_0s = quantize_q8_0s,
    .quantize_q8_0a = quantize_q8_0a,
    .dot_f32 = vec_dot_f32,
    .dot_f16_f32 = vec_dot_f16_f32,
    .axpy_f32 = axpy_f32,
    .axpy_f16 = axpy_f16,
    .f32_to_f16 = f32_to_f16,
    .f16_to_f32 = f16_to_f32,
    .gemm_q4_0x8 = gemm_q4_0x8,
    .gemm_q4_1x8 = gemm_q4_1x8,
    .gemm_q5_0x8 = gemm_q5_0x8,
    .gemm_q5_1x8 = gemm_q5_1x8,
    .gemm_q8_0x8 = gemm_q8_0x8,
    .gemm_fx = gemm_fx,
    .gemm_bf16 = gemm_bf16,
    .swiglu = swiglu,
    .geglu = geglu,
    .fx_batch_groups = 2,
    .gemm_q4_Kx8 = gemm_q4_Kx8,
    .gemm_q6_Kx8 = gemm_q6_Kx8,
    .scale_mul = scale_mul,
    .add_f32 = add_f32,
};

const exsa_cpu_kernels *const exsa_cpu_kernels_avx2_table = &avx2_table;

#else

const exsa_cpu_kernels *const exsa_cpu_kernels_avx2_table = NULL;

#endif
