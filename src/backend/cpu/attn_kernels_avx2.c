/* AVX2 attention kernels (see attn_kernels.h).
 *
 * Scores: one token's dot is kernels_avx2.c's float_rows for a lone F16
 * row, operation for operation (four accumulators over 32-element steps,
 * 8-element leftovers into the first, (a0 + a1) + (a2 + a3), hsum_ps, then
 * the scalar tail), so it is bit-identical to that table's dot_f16_f32;
 * inlined here, the per-token call and its setup are gone. Without a tail
 * (head_dim % 8 == 0), 8 tokens' lane sums are reduced together by
 * shuffles that add the same pairs as hsum_ps, and query heads sharing the
 * kv head (GQA) use the 8 K rows converted to float once.
 *
 * V update: the accumulator lives in ymm registers as f32 holding f16
 * values; vcvtps2ph + vcvtph2ps after each fma rounds exactly as storing
 * f16 and loading it back does (the scalar table's definition). Head dims are done in slices
 * of up to 64 (8 registers), each slice run over the whole chunk of tokens
 * (the chunk's V rows stay in L1 between slices), and the slice is only
 * loaded and stored once per chunk.
 */
#include "backend/cpu/attn_kernels.h"

#include "backend/cpu/attn_kernels_x86.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

/* The first t < 8 halves at p, the other lanes 0; reads nothing past p + t. */
INLINE __m256 load_h_tail(const exsa_fp16 *p, int t)
{
    exsa_fp16 b[8] = {0};
    memcpy(b, p, (size_t)t * sizeof *b);
    return load_h8(b);
}

/* f16(x) per lane, kept as f32. */
INLINE __m256 round_h(__m256 x)
{
    return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
}

/* 8 K values as floats: from the cache (f16) or from a row already
 * converted (exact, so both give the same products). */
INLINE __m256 load_k8(const void *k, int i, const int conv)
{
    return conv ? _mm256_loadu_ps((const float *)k + i) : load_h8((const exsa_fp16 *)k + i);
}

/* One token's dot up to the lane sums: (a0 + a1) + (a2 + a3), without the
 * scalar tail (n % 8 elements). */
INLINE __m256 dot_lanes(const int n, const void *k, const int conv, const float *q)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_k8(k, i, conv), _mm256_loadu_ps(q + i), a0);
        a1 = _mm256_fmadd_ps(load_k8(k, i + 8, conv), _mm256_loadu_ps(q + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_k8(k, i + 16, conv), _mm256_loadu_ps(q + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_k8(k, i + 24, conv), _mm256_loadu_ps(q + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(load_k8(k, i, conv), _mm256_loadu_ps(q + i), a0);
    return _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
}

INLINE float dot_f16(const int n, const exsa_fp16 *k, const float *q)
{
    float s = hsum_ps(dot_lanes(n, k, 0, q));
    for (int i = n & ~7; i < n; i++)
        s += h2f(k[i]) * q[i];
    return s;
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
    /* tokens outer: a K row comes from memory once for the whole group */
    int i = 0;
    if (hd % 8 == 0) {
        /* no scalar tail: 8 tokens share one lane reduction */
        const __m256 vscale = _mm256_set1_ps(scale);
        if (n_q > 1 && hd <= CONV_MAX) {
            /* several heads: convert the 8 K rows once, not per head */
            float kf[8 * CONV_MAX];
            for (; i + 8 <= n; i += 8) {
                for (int t = 0; t < 8; t++)
                    for (int d = 0; d < hd; d += 8)
                        _mm256_storeu_ps(kf + t * hd + d, load_h8(k[i + t] + d));
                scores8(hd, k + i, kf, 1, q, n_q, vscale, sc + i, (size_t)n);
            }
        } else {
            for (; i + 8 <= n; i += 8)
                scores8(hd, k + i, NULL, 0, q, n_q, vscale, sc + i, (size_t)n);
        }
    }
    for (; i < n; i++)
        for (int h = 0; h < n_q; h++)
            sc[(size_t)h * (size_t)n + (size_t)i] = dot_f16(hd, k[i], q + (size_t)h * (size_t)hd) * scale;
}

static void scores_f16(int hd, int n, const exsa_fp16 *const *k, const float *q, int n_q,
                       float scale, float *sc)
{
    /* common head dims get fully unrolled copies */
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

/* Lanes [d0, d0 + 8 * nv) over n tokens; tail (1..7) = valid halves in the
 * last vector when it runs past the head, 0 when it is full. */
INLINE void accum_slice(const int nv, int tail, int d0, int n, const exsa_fp16 *const *v,
                        const float *ms, const float *vs, float *acc)
{
    __m256 a[8];
#pragma GCC unroll 8
    for (int j = 0; j < nv; j++)
        a[j] = _mm256_loadu_ps(acc + d0 + 8 * j);
    for (int i = 0; i < n; i++) {
        const exsa_fp16 *vp = v[i] + d0;
        if (ms[i] != 1.0f) {
            const __m256 s = _mm256_set1_ps(ms[i]);
#pragma GCC unroll 8
            for (int j = 0; j < nv; j++)
                a[j] = round_h(_mm256_mul_ps(a[j], s));
        }
        const __m256 w = _mm256_set1_ps(vs[i]);
#pragma GCC unroll 8
        for (int j = 0; j < nv - 1; j++)
            a[j] = round_h(_mm256_fmadd_ps(load_h8(vp + 8 * j), w, a[j]));
        const __m256 x = tail ? load_h_tail(vp + 8 * (nv - 1), tail) : load_h8(vp + 8 * (nv - 1));
        a[nv - 1] = round_h(_mm256_fmadd_ps(x, w, a[nv - 1]));
    }
#pragma GCC unroll 8
    for (int j = 0; j < nv; j++)
        _mm256_storeu_ps(acc + d0 + 8 * j, a[j]);
}

static void accum_f16(int hd, int n, const exsa_fp16 *const *v, const float *ms, const float *vs,
                      float *acc)
{
    const int nvec = (hd + 7) / 8, tail = hd % 8;
    for (int j0 = 0; j0 < nvec; j0 += 8) {
        const int nv = nvec - j0 < 8 ? nvec - j0 : 8;
        const int t = j0 + nv == nvec ? tail : 0;
        const int d0 = 8 * j0;
        switch (nv) {
        case 1: accum_slice(1, t, d0, n, v, ms, vs, acc); break;
        case 2: accum_slice(2, t, d0, n, v, ms, vs, acc); break;
        case 3: accum_slice(3, t, d0, n, v, ms, vs, acc); break;
        case 4: accum_slice(4, t, d0, n, v, ms, vs, acc); break;
        case 5: accum_slice(5, t, d0, n, v, ms, vs, acc); break;
        case 6: accum_slice(6, t, d0, n, v, ms, vs, acc); break;
        case 7: accum_slice(7, t, d0, n, v, ms, vs, acc); break;
        default: accum_slice(8, t, d0, n, v, ms, vs, acc); break;
        }
    }
}

/* accum_f16_rows: lanes [d0, d0 + 8 * nv) of R accumulators over n tokens,
 * each lane's operations those of accum_slice; the R x nv chains are
 * independent, so they overlap where one chain waits on its rounding. */
INLINE void accum_rows_slice(const int R, const int nv, int tail, int d0, int n,
                             const exsa_fp16 *const *v, const float *const *ms,
                             const float *const *vs, float *const *acc)
{
    __m256 a[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++)
            a[r][j] = _mm256_loadu_ps(acc[r] + d0 + 8 * j);
    for (int i = 0; i < n; i++) {
        const exsa_fp16 *vp = v[i] + d0;
        __m256 x[2];
#pragma GCC unroll 2
        for (int j = 0; j < nv - 1; j++)
            x[j] = load_h8(vp + 8 * j);
        x[nv - 1] = tail ? load_h_tail(vp + 8 * (nv - 1), tail) : load_h8(vp + 8 * (nv - 1));
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            if (ms[r][i] != 1.0f) {
                const __m256 sc = _mm256_set1_ps(ms[r][i]);
#pragma GCC unroll 2
                for (int j = 0; j < nv; j++)
                    a[r][j] = round_h(_mm256_mul_ps(a[r][j], sc));
            }
            const __m256 w = _mm256_set1_ps(vs[r][i]);
#pragma GCC unroll 2
            for (int j = 0; j < nv; j++)
                a[r][j] = round_h(_mm256_fmadd_ps(x[j], w, a[r][j]));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++)
            _mm256_storeu_ps(acc[r] + d0 + 8 * j, a[r][j]);
}

#define ROWS_CASE(R)                                                                          \
    if (nv == 2)                                                                              \
        accum_rows_slice(R, 2, t, d0, n, v, ms, vs, acc);                                     \
    else                                                                                      \
        accum_rows_slice(R, 1, t, d0, n, v, ms, vs, acc);

static void accum_f16_rows(int hd, int n, const exsa_fp16 *const *v, int n_r,
                           const float *const *ms, const float *const *vs, float *const *acc)
{
    const int nvec = (hd + 7) / 8, tail = hd % 8;
    for (int r0 = 0; r0 < n_r; r0 += 4) {
        const int nr = n_r - r0 < 4 ? n_r - r0 : 4;
        for (int j0 = 0; j0 < nvec; j0 += 2) {
            const int nv = nvec - j0 < 2 ? nvec - j0 : 2;
            const int t = j0 + nv == nvec ? tail : 0;
            const int d0 = 8 * j0;
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

/* Halves [d0, d0 + 8) of a row as floats, 0 past hd. */
INLINE __m256 load_h8_upto(const exsa_fp16 *row, int d0, int hd)
{
    return hd - d0 >= 8 ? load_h8(row + d0) : hd - d0 <= 0 ? _mm256_setzero_ps()
                                                           : load_h_tail(row + d0, hd - d0);
}

static void chunk_v_f16(int hd, int hdp, int n, const exsa_fp16 *const *v, float *vf)
{
    for (int j = 0; j < n; j++)
        for (int d0 = 0; d0 < hdp; d0 += 8)
            _mm256_storeu_ps(vf + (size_t)j * (size_t)hdp + d0, load_h8_upto(v[j], d0, hd));
}

/* acc lanes [d0, d0 + 8 * NB) of NQ states over the chunk's tokens:
 * acc * f, then token by token fmaf(p_j, v_j, acc) while j < nt. */
INLINE void pv_block(const int NQ, const int NB, int d0, int hdp, const float *vf, const int *nt,
                     const float (*p)[EXSA_ATTN_TILE], const float *f, float *const *st)
{
    __m256 a[2][4];
    int nmin = EXSA_ATTN_TILE;
#pragma GCC unroll 2
    for (int i = 0; i < NQ; i++) {
        nmin = nt[i] < nmin ? nt[i] : nmin;
        const __m256 fi = _mm256_set1_ps(f[i]);
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++)
            a[i][b] = _mm256_mul_ps(_mm256_loadu_ps(st[i] + d0 + 8 * b), fi);
    }
    int j = 0;
    for (; j < nmin; j++) {
        const float *vr = vf + (size_t)j * (size_t)hdp + d0;
        __m256 x[4];
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++)
            x[b] = _mm256_loadu_ps(vr + 8 * b);
#pragma GCC unroll 2
        for (int i = 0; i < NQ; i++) {
            const __m256 w = _mm256_set1_ps(p[i][j]);
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++)
                a[i][b] = _mm256_fmadd_ps(w, x[b], a[i][b]);
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < NQ; i++) {
        for (int jj = j; jj < nt[i]; jj++) {
            const float *vr = vf + (size_t)jj * (size_t)hdp + d0;
            const __m256 w = _mm256_set1_ps(p[i][jj]);
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++)
                a[i][b] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vr + 8 * b), a[i][b]);
        }
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++)
            _mm256_storeu_ps(st[i] + d0 + 8 * b, a[i][b]);
    }
}

INLINE void chunk_nq(const int NQ, int hdp, const float *vf, const float *const *s, const int *nt,
                     float *const *st)
{
    enum { T = EXSA_ATTN_TILE };
    float p[2][T] __attribute__((aligned(32)));
    float f[2];
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
#pragma GCC unroll 2
    for (int i = 0; i < NQ; i++) {
        __m256 a[4];
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) {
            /* masked loads: s[i] is read only below nt */
            const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(nt[i] - 8 * b), idx);
            a[b] = _mm256_blendv_ps(ninf, _mm256_maskload_ps(s[i] + 8 * b, keep),
                                    _mm256_castsi256_ps(keep));
        }
        /* lanes 0..7 and 8..15 of the 16-lane tree */
        __m256 x = _mm256_max_ps(_mm256_max_ps(a[0], a[2]), _mm256_max_ps(a[1], a[3]));
        x = _mm256_max_ps(x, _mm256_permute2f128_ps(x, x, 0x01));
        x = _mm256_max_ps(x, _mm256_permute_ps(x, _MM_SHUFFLE(3, 2, 3, 2)));
        x = _mm256_max_ps(x, _mm256_permute_ps(x, _MM_SHUFFLE(1, 1, 1, 1)));
        float *stm = st[i] + hdp + EXSA_ATTN_ST_M;
        const float x0 = _mm256_cvtss_f32(x), m = *stm;
        const float cm = x0 > m ? x0 : m;
        f[i] = exsa_exp_neg(m - cm);
        const __m256 c = _mm256_set1_ps(cm), fv = _mm256_set1_ps(f[i]);
        float *l = st[i] + hdp + EXSA_ATTN_ST_L;
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256 p0 = exp8_neg(_mm256_sub_ps(a[h], c)), p1 = exp8_neg(_mm256_sub_ps(a[h + 2], c));
            __m256 lv = _mm256_mul_ps(_mm256_loadu_ps(l + 8 * h), fv);
            lv = _mm256_add_ps(_mm256_add_ps(lv, p0), p1);
            _mm256_storeu_ps(l + 8 * h, lv);
            _mm256_store_ps(p[i] + 8 * h, p0);
            _mm256_store_ps(p[i] + 16 + 8 * h, p1);
        }
        *stm = cm;
    }
    int d0 = 0;
    for (; d0 + 32 <= hdp; d0 += 32)
        pv_block(NQ, 4, d0, hdp, vf, nt, (const float(*)[T])p, f, st);
    for (; d0 < hdp; d0 += 8)
        pv_block(NQ, 1, d0, hdp, vf, nt, (const float(*)[T])p, f, st);
}

static void attn_chunk(int hdp, const float *vf, int n_q, const float *const *s, const int *nt,
                       float *const *st)
{
    for (; n_q >= 2; n_q -= 2, s += 2, nt += 2, st += 2)
        chunk_nq(2, hdp, vf, s, nt, st);
    if (n_q == 1)
        chunk_nq(1, hdp, vf, s, nt, st);
}

static void dequant_q8_0(const exsa_block_q8_0 *x, float *y, int64_t n_blocks)
{
    dequant_q8_0_x86(x, y, n_blocks);
}

static const exsa_cpu_attn_kernels avx2_table = {
    .isa = "avx2",
    .scores_f16 = scores_f16,
    .accum_f16 = accum_f16,
    .accum_f16_rows = accum_f16_rows,
    .chunk_v_f16 = chunk_v_f16,
    .attn_chunk = attn_chunk,
    .dequant_q8_0 = dequant_q8_0,
};

const exsa_cpu_attn_kernels *const exsa_cpu_attn_kernels_avx2_table = &avx2_table;

#else

const exsa_cpu_attn_kernels *const exsa_cpu_attn_kernels_avx2_table = NULL;

#endif
