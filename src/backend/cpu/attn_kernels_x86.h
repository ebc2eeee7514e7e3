/* Private to the x86 attention kernel files (attn_kernels_avx2.c,
 * attn_kernels_avx512.c): inline helpers both use, each file compiling its
 * own copy with its own ISA flags (as kernels_internal.h does). */
#ifndef EXSA_CPU_ATTN_KERNELS_X86_H
#define EXSA_CPU_ATTN_KERNELS_X86_H

#include "backend/cpu/attn_kernels.h"
#include "backend/cpu/kernels_internal.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

INLINE __m256 load_h8(const exsa_fp16 *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* Lane t = hsum_ps(v[t]) for 8 vectors at once, adding the same pairs:
 * x_j = v_j + v_j+4, then y_j = x_j + x_j+2, then y_0 + y_1 (addition
 * commutes exactly, so only the pairing matters). */
INLINE __m256 hsum8(const __m256 *v)
{
    __m256 x[4];
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++)
        x[p] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x20),
                             _mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x31));
    /* x[p]: low half token 2p's x_0..3, high half token 2p+1's */
    const __m256 y0 = _mm256_add_ps(_mm256_shuffle_ps(x[0], x[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm256_shuffle_ps(x[0], x[1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 y1 = _mm256_add_ps(_mm256_shuffle_ps(x[2], x[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm256_shuffle_ps(x[2], x[3], _MM_SHUFFLE(3, 2, 3, 2)));
    /* y0: tokens 0, 2 (low) and 1, 3 (high), two y per token; hadd pairs
     * them into tokens 0 2 4 6 | 1 3 5 7 */
    const __m256 z = _mm256_hadd_ps(y0, y1);
    return _mm256_permutevar8x32_ps(z, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* dequant_q8_0 of attn_kernels.h: d * q, 8 lanes at a time. */
INLINE void dequant_q8_0_x86(const exsa_block_q8_0 *x, float *y, int64_t n_blocks)
{
    for (int64_t b = 0; b < n_blocks; b++) {
        const __m256 d = _mm256_set1_ps(h2f(x[b].d));
#pragma GCC unroll 4
        for (int i = 0; i < EXSA_QK8_0; i += 8) {
            const __m128i q = _mm_loadl_epi64((const __m128i *)(x[b].qs + i));
            const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
            _mm256_storeu_ps(y + b * EXSA_QK8_0 + i, _mm256_mul_ps(d, f));
        }
    }
}

#endif

#endif
