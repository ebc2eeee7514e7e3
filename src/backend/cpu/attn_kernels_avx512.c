/* AVX-512 attention kernels (see attn_kernels.h).
 *
 * Scores: kernels_avx512.c's float_rows for a lone F16 row, operation for
 * operation (four zmm accumulators over 64-element steps, 16-element
 * leftovers and the masked tail into the first, (a0 + a1) + (a2 + a3),
 * then the 256-bit halves and hsum_ps), so bit-identical to that table's
 * dot_f16_f32. As in the AVX2 file, the last step runs for 8 tokens at
 * once (hsum8) and GQA heads share K rows converted once.
 *
 * V update: as the AVX2 file, 16 lanes per register and slices of up to
 * 128 dims (8 zmm), the tail by masked loads. The rounding is per lane, so
 * the register width changes nothing in the result; it halves the passes
 * over a chunk for head dims above 64, where the dependency of each
 * accumulator on the previous token bounds the speed.
 */
#include "backend/cpu/attn_kernels.h"

#include "backend/cpu/attn_kernels_x86.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__) && defined(__AVX512DQ__) && defined(__AVX2__) && defined(__FMA__) && \
    defined(__F16C__)

INLINE __m512 load_h16(const exsa_fp16 *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* The halves of p selected by m, the other lanes 0; reads nothing else. */
INLINE __m512 load_h16_mask(const exsa_fp16 *p, __mmask16 m)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

INLINE __m512 round_h16(__m512 x)
{
    return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* 16 K values as floats, from the cache (f16) or a converted row; the
 * masked form reads only the lanes of m and zeroes the others. */
INLINE __m512 load_k16(const void *k, int i, const int conv)
{
    return conv ? _mm512_loadu_ps((const float *)k + i) : load_h16((const exsa_fp16 *)k + i);
}

INLINE __m512 load_k16_mask(const void *k, int i, __mmask16 m, const int conv)
{
    return conv ? _mm512_maskz_loadu_ps(m, (const float *)k + i)
                : load_h16_mask((const exsa_fp16 *)k + i, m);
}

/* One token's dot up to the last 256-bit fold: (a0 + a1) + (a2 + a3), its
 * halves added (then hsum_ps finishes it, as hsum512_ps does). */
INLINE __m256 dot_lanes(const int n, const void *k, const int conv, const float *q)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(load_k16(k, i, conv), _mm512_loadu_ps(q + i), a0);
        a1 = _mm512_fmadd_ps(load_k16(k, i + 16, conv), _mm512_loadu_ps(q + i + 16), a1);
        a2 = _mm512_fmadd_ps(load_k16(k, i + 32, conv), _mm512_loadu_ps(q + i + 32), a2);
        a3 = _mm512_fmadd_ps(load_k16(k, i + 48, conv), _mm512_loadu_ps(q + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16)
        a0 = _mm512_fmadd_ps(load_k16(k, i, conv), _mm512_loadu_ps(q + i), a0);
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        a0 = _mm512_fmadd_ps(load_k16_mask(k, i, m, conv), _mm512_maskz_loadu_ps(m, q + i), a0);
    }
    const __m512 v = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
}

/* Scores of 8 tokens for n_q heads: K rows k[0..7] (f16), or with conv
 * the same rows converted, kf + t * hd. */
INLINE void scores8(const int hd, const exsa_fp16 *const *k, const float *kf, const int conv,
                    const float *q, int n_q, __m256 vscale, float *sc, size_t n)
{
    for (int h = 0; h < n_q; h++) {
        const float *qh = q + (size_t)h * (size_t)hd;
        __m256 v[8];
#pragma GCC unroll 8
        for (int t = 0; t < 8; t++)
            v[t] = conv ? dot_lanes(hd, kf + t * hd, 1, qh) : dot_lanes(hd, k[t], 0, qh);
        _mm256_storeu_ps(sc + (size_t)h * n, _mm256_mul_ps(hsum8(v), vscale));
    }
}

/* Rows up to this many floats are converted once for a group of heads. */
#define CONV_MAX 256

INLINE void scores_n(const int hd, int n, const exsa_fp16 *const *k, const float *q, int n_q,
                     float scale, float *sc)
{
    /* tokens outer: a K row comes from memory once for the whole group;
     * 8 tokens share one lane reduction (no scalar tail here) */
    const __m256 vscale = _mm256_set1_ps(scale);
    int i = 0;
    if (n_q > 1 && hd <= CONV_MAX) {
        /* several heads: convert the 8 K rows once, not per head */
        float kf[8 * CONV_MAX];
        for (; i + 8 <= n; i += 8) {
            for (int t = 0; t < 8; t++)
                for (int d = 0; d < hd; d += 16) {
                    const __mmask16 m = (__mmask16)(hd - d >= 16 ? 0xFFFFu : (1u << (hd - d)) - 1);
                    _mm512_mask_storeu_ps(kf + t * hd + d, m, load_h16_mask(k[i + t] + d, m));
                }
            scores8(hd, k + i, kf, 1, q, n_q, vscale, sc + i, (size_t)n);
        }
    } else {
        for (; i + 8 <= n; i += 8)
            scores8(hd, k + i, NULL, 0, q, n_q, vscale, sc + i, (size_t)n);
    }
    for (; i < n; i++)
        for (int h = 0; h < n_q; h++)
            sc[(size_t)h * (size_t)n + (size_t)i] =
                hsum_ps(dot_lanes(hd, k[i], 0, q + (size_t)h * (size_t)hd)) * scale;
}

static void scores_f16(int hd, int n, const exsa_fp16 *const *k, const float *q, int n_q,
                       float scale, float *sc)
{
    switch (hd) {
    case 64:
        scores_n(64, n, k, q, n_q, scale, sc);
        break;
    case 128:
        scores_n(128, n, k, q, n_q, scale, sc);
        break;
    default:
        scores_n(hd, n, k, q, n_q, scale, sc);
        break;
    }
}

/* Lanes [d0, d0 + 16 * nv); the last register loads only the lanes of m. */
INLINE void accum_slice(const int nv, __mmask16 m, int d0, int n, const exsa_fp16 *const *v,
                        const float *ms, const float *vs, float *acc)
{
    __m512 a[8];
#pragma GCC unroll 8
    for (int j = 0; j < nv; j++)
        a[j] = _mm512_loadu_ps(acc + d0 + 16 * j);
    for (int i = 0; i < n; i++) {
        const exsa_fp16 *vp = v[i] + d0;
        if (ms[i] != 1.0f) {
            const __m512 s = _mm512_set1_ps(ms[i]);
#pragma GCC unroll 8
            for (int j = 0; j < nv; j++)
                a[j] = round_h16(_mm512_mul_ps(a[j], s));
        }
        const __m512 w = _mm512_set1_ps(vs[i]);
#pragma GCC unroll 8
        for (int j = 0; j < nv - 1; j++)
            a[j] = round_h16(_mm512_fmadd_ps(load_h16(vp + 16 * j), w, a[j]));
        const __m512 x = load_h16_mask(vp + 16 * (nv - 1), m);
        a[nv - 1] = round_h16(_mm512_fmadd_ps(x, w, a[nv - 1]));
    }
#pragma GCC unroll 8
    for (int j = 0; j < nv; j++)
        _mm512_storeu_ps(acc + d0 + 16 * j, a[j]);
}

static void accum_f16(int hd, int n, const exsa_fp16 *const *v, const float *ms, const float *vs,
                      float *acc)
{
    const int nvec = (hd + 15) / 16, tail = hd % 16;
    for (int j0 = 0; j0 < nvec; j0 += 8) {
        const int nv = nvec - j0 < 8 ? nvec - j0 : 8;
        const int t = j0 + nv == nvec ? tail : 0;
        const __mmask16 m = (__mmask16)(t ? (1u << t) - 1 : 0xFFFFu);
        const int d0 = 16 * j0;
        switch (nv) {
        case 1: accum_slice(1, m, d0, n, v, ms, vs, acc); break;
        case 2: accum_slice(2, m, d0, n, v, ms, vs, acc); break;
        case 3: accum_slice(3, m, d0, n, v, ms, vs, acc); break;
        case 4: accum_slice(4, m, d0, n, v, ms, vs, acc); break;
        case 5: accum_slice(5, m, d0, n, v, ms, vs, acc); break;
        case 6: accum_slice(6, m, d0, n, v, ms, vs, acc); break;
        case 7: accum_slice(7, m, d0, n, v, ms, vs, acc); break;
        default: accum_slice(8, m, d0, n, v, ms, vs, acc); break;
        }
    }
}

/* accum_f16_rows: lanes [d0, d0 + 16 * nv) of R accumulators over n
 * tokens, each lane's operations those of accum_slice; R x nv independent
 * chains where a lone head has nv. */
INLINE void accum_rows_slice(const int R, const int nv, __mmask16 m, int d0, int n,
                             const exsa_fp16 *const *v, const float *const *ms,
                             const float *const *vs, float *const *acc)
{
    __m512 a[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++)
            a[r][j] = _mm512_loadu_ps(acc[r] + d0 + 16 * j);
    for (int i = 0; i < n; i++) {
        const exsa_fp16 *vp = v[i] + d0;
        __m512 x[4];
#pragma GCC unroll 4
        for (int j = 0; j < nv - 1; j++)
            x[j] = load_h16(vp + 16 * j);
        x[nv - 1] = load_h16_mask(vp + 16 * (nv - 1), m);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            if (ms[r][i] != 1.0f) {
                const __m512 sc = _mm512_set1_ps(ms[r][i]);
#pragma GCC unroll 4
                for (int j = 0; j < nv; j++)
                    a[r][j] = round_h16(_mm512_mul_ps(a[r][j], sc));
            }
            const __m512 w = _mm512_set1_ps(vs[r][i]);
#pragma GCC unroll 4
            for (int j = 0; j < nv; j++)
                a[r][j] = round_h16(_mm512_fmadd_ps(x[j], w, a[r][j]));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++)
            _mm512_storeu_ps(acc[r] + d0 + 16 * j, a[r][j]);
}

#define ROWS_CASE(R)                                                                          \
    switch (nv) {                                                                             \
    case 1: accum_rows_slice(R, 1, m, d0, n, v, ms, vs, acc); break;                          \
    case 2: accum_rows_slice(R, 2, m, d0, n, v, ms, vs, acc); break;                          \
    case 3: accum_rows_slice(R, 3, m, d0, n, v, ms, vs, acc); break;                          \
    default: accum_rows_slice(R, 4, m, d0, n, v, ms, vs, acc); break;                         \
    }

static void accum_f16_rows(int hd, int n, const exsa_fp16 *const *v, int n_r,
                           const float *const *ms, const float *const *vs, float *const *acc)
{
    const int nvec = (hd + 15) / 16, tail = hd % 16;
    for (int r0 = 0; r0 < n_r; r0 += 4) {
        const int nr = n_r - r0 < 4 ? n_r - r0 : 4;
        for (int j0 = 0; j0 < nvec; j0 += 4) {
            const int nv = nvec - j0 < 4 ? nvec - j0 : 4;
            const int t = j0 + nv == nvec ? tail : 0;
            const __mmask16 m = (__mmask16)(t ? (1u << t) - 1 : 0xFFFFu);
            const int d0 = 16 * j0;
            switch (nr) {
            case 1: ROWS_CASE(1) break;
            case 2: ROWS_CASE(2) break;
            case 3: ROWS_CASE(3) break;
            default: ROWS_CASE(4) break;
            }
        }
        ms += 4;
        vs += 4;
        acc += 4;
    }
}
#undef ROWS_CASE

/* ---- tiled float attention (attn_kernels.h: chunk_v_f16, attn_chunk) ---- */

static void chunk_v_f16(int hd, int hdp, int n, const exsa_fp16 *const *v, float *vf)
{
    for (int j = 0; j < n; j++)
        for (int d0 = 0; d0 < hdp; d0 += 16) {
            const int nd = hd - d0 <= 0 ? 0 : hd - d0 < 16 ? hd - d0 : 16;
            const __mmask16 m = (__mmask16)((1u << nd) - 1);
            _mm512_storeu_ps(vf + (size_t)j * (size_t)hdp + d0,
                             nd == 16 ? load_h16(v[j] + d0) : load_h16_mask(v[j] + d0, m));
        }
}

/* acc lanes [d0, d0 + 16 * NB) of NQ states over the chunk's tokens:
 * acc * f, then token by token fmaf(p_j, v_j, acc) while j < nt. */
INLINE void pv_block(const int NQ, const int NB, int d0, int hdp, const float *vf, const int *nt,
                     const float (*p)[EXSA_ATTN_TILE], const float *f, float *const *st)
{
    __m512 a[4][4];
    int nmin = EXSA_ATTN_TILE;
#pragma GCC unroll 4
    for (int i = 0; i < NQ; i++) {
        nmin = nt[i] < nmin ? nt[i] : nmin;
        const __m512 fi = _mm512_set1_ps(f[i]);
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++)
            a[i][b] = _mm512_mul_ps(_mm512_loadu_ps(st[i] + d0 + 16 * b), fi);
    }
    int j = 0;
    for (; j < nmin; j++) {
        const float *vr = vf + (size_t)j * (size_t)hdp + d0;
        __m512 x[4];
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++)
            x[b] = _mm512_loadu_ps(vr + 16 * b);
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) {
            const __m512 w = _mm512_set1_ps(p[i][j]);
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++)
                a[i][b] = _mm512_fmadd_ps(w, x[b], a[i][b]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NQ; i++) {
        for (int jj = j; jj < nt[i]; jj++) {
            const float *vr = vf + (size_t)jj * (size_t)hdp + d0;
            const __m512 w = _mm512_set1_ps(p[i][jj]);
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++)
                a[i][b] = _mm512_fmadd_ps(w, _mm512_loadu_ps(vr + 16 * b), a[i][b]);
        }
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++)
            _mm512_storeu_ps(st[i] + d0 + 16 * b, a[i][b]);
    }
}

INLINE void chunk_nq(const int NQ, int hdp, const float *vf, const float *const *s, const int *nt,
                     float *const *st)
{
    enum { T = EXSA_ATTN_TILE };
    float p[4][T] __attribute__((aligned(64)));
    float f[4];
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
#pragma GCC unroll 4
    for (int i = 0; i < NQ; i++) {
        const int n = nt[i];
        const __mmask16 m0 = (__mmask16)(n >= 16 ? 0xFFFFu : (1u << n) - 1);
        const __mmask16 m1 = (__mmask16)(n >= 32 ? 0xFFFFu : n > 16 ? (1u << (n - 16)) - 1 : 0);
        /* masked loads: s[i] is read only below nt */
        const __m512 a = _mm512_mask_loadu_ps(ninf, m0, s[i]);
        const __m512 b = _mm512_mask_loadu_ps(ninf, m1, s[i] + 16);
        __m512 x = _mm512_max_ps(a, b);
        x = _mm512_max_ps(x, _mm512_shuffle_f32x4(x, x, 0xEE));
        x = _mm512_max_ps(x, _mm512_shuffle_f32x4(x, x, 0x01));
        x = _mm512_max_ps(x, _mm512_permute_ps(x, _MM_SHUFFLE(3, 2, 3, 2)));
        x = _mm512_max_ps(x, _mm512_permute_ps(x, _MM_SHUFFLE(1, 1, 1, 1)));
        float *stm = st[i] + hdp + EXSA_ATTN_ST_M;
        const float x0 = _mm512_cvtss_f32(x), m = *stm;
        const float cm = x0 > m ? x0 : m;
        f[i] = exsa_exp_neg(m - cm);
        const __m512 c = _mm512_set1_ps(cm);
        const __m512 p0 = exp16_neg(_mm512_sub_ps(a, c)), p1 = exp16_neg(_mm512_sub_ps(b, c));
        float *l = st[i] + hdp + EXSA_ATTN_ST_L;
        __m512 lv = _mm512_mul_ps(_mm512_loadu_ps(l), _mm512_set1_ps(f[i]));
        lv = _mm512_add_ps(_mm512_add_ps(lv, p0), p1);
        _mm512_storeu_ps(l, lv);
        _mm512_store_ps(p[i], p0);
        _mm512_store_ps(p[i] + 16, p1);
        *stm = cm;
    }
    int d0 = 0;
    for (; d0 + 64 <= hdp; d0 += 64)
        pv_block(NQ, 4, d0, hdp, vf, nt, (const float(*)[T])p, f, st);
    for (; d0 < hdp; d0 += 16)
        pv_block(NQ, 1, d0, hdp, vf, nt, (const float(*)[T])p, f, st);
}

static void attn_chunk(int hdp, const float *vf, int n_q, const float *const *s, const int *nt,
                       float *const *st)
{
    for (; n_q >= 4; n_q -= 4, s += 4, nt += 4, st += 4)
        chunk_nq(4, hdp, vf, s, nt, st);
    switch (n_q) {
    case 3: chunk_nq(3, hdp, vf, s, nt, st); break;
    case 2: chunk_nq(2, hdp, vf, s, nt, st); break;
    case 1: chunk_nq(1, hdp, vf, s, nt, st); break;
    default: break;
    }
}


static void dequant_q8_0(const exsa_block_q8_0 *x, float *y, int64_t n_blocks)
{
    dequant_q8_0_x86(x, y, n_blocks);
}

static const exsa_cpu_attn_kernels avx512_table = {
    .isa = "avx512",
    .scores_f16 = scores_f16,
    .accum_f16 = accum_f16,
    .accum_f16_rows = accum_f16_rows,
    .chunk_v_f16 = chunk_v_f16,
    .attn_chunk = attn_chunk,
    .dequant_q8_0 = dequant_q8_0,
};

const exsa_cpu_attn_kernels *const exsa_cpu_attn_kernels_avx512_table = &avx512_table;

#else

const exsa_cpu_attn_kernels *const exsa_cpu_attn_kernels_avx512_table = NULL;

#endif
