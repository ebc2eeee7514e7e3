/* AVX512-BF16 kernels: the repacked BF16 matmul with vdpbf16ps.
 *
 * A separate file because it needs -mavx512bf16, which the other AVX-512
 * kernels must not be compiled with (the CPUs that have AVX-512 VNNI but
 * not BF16, e.g. Ice Lake, would meet instructions they lack). The selector
 * overlays this partial table on the AVX-512 VNNI one where the CPU has
 * both (kernels.c).
 *
 * vdpbf16ps adds, per float lane, the products of a dword's two bf16 pairs:
 * the odd element's product first, then the even's, each rounded (measured
 * bit for bit on Zen 5 against that order, see gemm_bf16 in kernels.h), so
 * the scalar reference's two fmaf per pair give the same bits.
 */
/* As kernels_avx512.c: 4 KB ahead on Zen 5 with huge pages. */
#ifndef PREFETCH_DIST
#define PREFETCH_DIST 4096
#endif
#include "backend/cpu/kernels_internal.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__) && defined(__AVX512BF16__) && defined(__AVX2__) && defined(__FMA__) && \
    defined(__F16C__)

/* Pair p of groups g0 and g1 (lanes 0..7 and 8..15); g1 zero when absent. */
INLINE __m512bh bf16_pairs(const char *g0, const char *g1, size_t p, const int one)
{
    const __m256i lo = _mm256_loadu_si256((const __m256i *)(g0 + 32 * p));
    if (one)
        return (__m512bh)_mm512_zextsi256_si512(lo);
    return (__m512bh)_mm512_inserti64x4(_mm512_castsi256_si512(lo),
                                        _mm256_loadu_si256((const __m256i *)(g1 + 32 * p)), 1);
}

/* P zmm of group pairs (the last holding one group when odd) x R rows. */
INLINE void bf16_tile(int n, const char *w, size_t gb, const int P, const int odd,
                      const exsa_bf16 *const *a, const int R, float *out, size_t os, int pf)
{
    __m512 acc[24];
#pragma GCC unroll 24
    for (int t = 0; t < P * R; t++)
        acc[t] = _mm512_setzero_ps();
    for (int p = 0; p < n / 2; p++) {
        __m512bh wv[2];
        if (pf && p % 2 == 0)
#pragma GCC unroll 4
            for (int g = 0; g < 2 * P - odd; g++)
                prefetch_stream(w + (size_t)g * gb, gb, 2 * P - odd, 32 * (size_t)p, 64);
#pragma GCC unroll 2
        for (int q = 0; q < P; q++)
            wv[q] = bf16_pairs(w + (size_t)(2 * q) * gb, w + (size_t)(2 * q + 1) * gb, (size_t)p,
                               odd && q == P - 1);
#pragma GCC unroll 12
        for (int k = 0; k < R; k++) {
            int32_t pair;
            memcpy(&pair, a[k] + 2 * p, sizeof(pair));
            const __m512bh b = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 2
            for (int q = 0; q < P; q++)
                acc[q * R + k] = _mm512_dpbf16_ps(acc[q * R + k], wv[q], b);
        }
    }
#pragma GCC unroll 12
    for (int k = 0; k < R; k++)
#pragma GCC unroll 2
        for (int q = 0; q < P; q++) {
            float *o = out + (size_t)k * os + 16 * (size_t)q;
            if (odd && q == P - 1)
                _mm256_storeu_ps(o, _mm512_castps512_ps256(acc[q * R + k]));
            else
                _mm512_storeu_ps(o, acc[q * R + k]);
        }
}

#define BF16_CASE(P, ODD, R)                                                              \
    case (R):                                                                             \
        bf16_tile(n, w, gb, P, ODD, a, R, o, os, j == 0);                                 \
        break;
#define BF16_ROWS(P, ODD)                                                                 \
    switch (r) {                                                                          \
        BF16_CASE(P, ODD, 1) BF16_CASE(P, ODD, 2) BF16_CASE(P, ODD, 3)                    \
        BF16_CASE(P, ODD, 4) BF16_CASE(P, ODD, 5) BF16_CASE(P, ODD, 6)                    \
        BF16_CASE(P, ODD, 7) BF16_CASE(P, ODD, 8) BF16_CASE(P, ODD, 9)                    \
        BF16_CASE(P, ODD, 10) BF16_CASE(P, ODD, 11) BF16_CASE(P, ODD, 12)                 \
    default:                                                                              \
        break;                                                                            \
    }

/* Row blocks of up to 12 (P * R <= 24 accumulators, two weight vectors and
 * a broadcast within the 32 registers). */
static void gemm_bf16(int n, const void *vw, size_t gb, int G, const exsa_bf16 *act, size_t as,
                      int n_act, float *out, size_t os)
{
    const char *w = vw;
    const int P = (G + 1) / 2, odd = G % 2;
    const exsa_bf16 *a[12];
    for (int j = 0; j < n_act;) {
        const int r = n_act - j < 12 ? n_act - j : 12;
        for (int k = 0; k < r; k++)
            a[k] = (const exsa_bf16 *)((const char *)act + (size_t)(j + k) * as);
        float *o = out + (size_t)j * os;
        if (P == 2 && !odd)
            BF16_ROWS(2, 0)
        else if (P == 2)
            BF16_ROWS(2, 1)
        else if (!odd)
            BF16_ROWS(1, 0)
        else
            BF16_ROWS(1, 1)
        j += r;
    }
}
#undef BF16_ROWS
#undef BF16_CASE

static const exsa_cpu_kernels avx512bf16_partial = {
    .isa = "avx512",
    .gemm_bf16 = gemm_bf16,
};

const exsa_cpu_kernels *const exsa_cpu_kernels_avx512bf16_partial = &avx512bf16_partial;

#else

const exsa_cpu_kernels *const exsa_cpu_kernels_avx512bf16_partial = NULL;

#endif
