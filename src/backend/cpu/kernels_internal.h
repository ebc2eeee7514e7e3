/* Private glue between the per-ISA kernel files and the selector (kernels.c).
 *
 * Each ISA file exports its table as a data pointer, NULL when the file was
 * compiled without that ISA (e.g. on a non-x86 target). The selector checks
 * the CPU's features before handing a table out, so no code compiled with
 * ISA flags runs before that check.
 *
 * The AVX-512 file exports partial tables: NULL entries are filled from the
 * AVX2 table by the selector (AVX-512 CPUs all have AVX2, FMA and F16C).
 */
#ifndef EXSA_CPU_KERNELS_INTERNAL_H
#define EXSA_CPU_KERNELS_INTERNAL_H

#include "backend/cpu/kernels.h"

extern const exsa_cpu_kernels *const exsa_cpu_kernels_avx2_table;
/* AVX-512 F/BW/VL/DQ without VNNI, and with AVX512-VNNI (vpdpbusd). */
extern const exsa_cpu_kernels *const exsa_cpu_kernels_avx512_partial;
extern const exsa_cpu_kernels *const exsa_cpu_kernels_avx512vnni_partial;
/* AVX512-BF16 (vdpbf16ps), over the VNNI table. */
extern const exsa_cpu_kernels *const exsa_cpu_kernels_avx512bf16_partial;

/* The complete AVX-512 table of one variant (vnni = 0 or 1), or NULL when
 * not built or the CPU lacks it. exsa_cpu_kernels_avx512() returns the VNNI
 * variant where the CPU has VNNI; tests use this to cover both. */
const exsa_cpu_kernels *exsa_cpu_kernels_avx512_variant(int vnni);
/* The VNNI table with the AVX512-BF16 kernels over it, or NULL; the best
 * table where the CPU has both. */
const exsa_cpu_kernels *exsa_cpu_kernels_avx512_bf16(void);

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
/* Inline helpers shared by the x86 kernel files (each compiles its own copy
 * with its own ISA flags; nothing here is visible to plain-C files). */
#include <immintrin.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

/* One call's weight row, activation rows and outputs. */
typedef struct {
    int n;
    const void *w;
    const char *act;
    size_t stride;
    float *out;
    size_t ostride;
} rows_t;

INLINE float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE float hmax_ps(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE float h2f(exsa_fp16 h)
{
    return _cvtsh_ss(h);
}

INLINE const void *act_row(const rows_t *r, int j)
{
    return r->act + (size_t)j * r->stride;
}

INLINE void store_out(const rows_t *r, int j, float v)
{
    r->out[(size_t)j * r->ostride] = v;
}

/* 16 packed bytes -> 32 bytes: low nibbles in 0..15, high nibbles in 16..31
 * (the element order of Q4_0/Q4_1/Q5_x blocks). */
INLINE __m256i unpack_nibbles(const uint8_t *qs)
{
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    const __m256i v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* 32 bits -> 32 bytes, byte i = 0xFF where bit i is set. */
INLINE __m256i bits_to_bytes(const uint8_t *p)
{
    uint32_t bits;
    memcpy(&bits, p, sizeof(bits));
    /* byte i takes source byte i / 8 (both lanes hold all four bytes) */
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

/* Decode streams every weight byte once from memory. Zen 3's hardware
 * prefetchers alone left tg128 8-15% short (bench/RESULTS.md, 2026-11-25
 * third session), so the streaming kernels also ask for the lines
 * PREFETCH_DIST bytes ahead of the block they read. On Zen 3 with 4 KB
 * pages 1024..2048 measured alike and 4096 lost; on Zen 5 with the weights
 * on huge pages (cpu_repack.c) 3072 beat 1536 by 5-8% in this file's
 * K-quant decode kernels (bench/RESULTS.md, 2026-12-02). A batch's later
 * rows find the lines cached and the hints cost a load slot each. */
#ifndef PREFETCH_DIST
#define PREFETCH_DIST 3072
#endif
INLINE void prefetch_ahead(const void *p, size_t bytes)
{
    const char *c = (const char *)p + PREFETCH_DIST;
    for (size_t i = 0; i < bytes; i += 64)
        _mm_prefetch(c + i, _MM_HINT_T0);
}

/* The decode form for a call over `groups` weight groups gbytes apart,
 * each streamed front to back: group g's hint at byte off, and past the
 * group's end the same stream of the next call (`groups` groups on), whose
 * first PREFETCH_DIST bytes no stream of this call reads (the next call's
 * groups begin cold otherwise: 1.1B Q4_0 tg128 +9%, 110M Q8_0 +21%,
 * bench/RESULTS.md 2026-12-02 fourth session). Hints past the tensor's
 * end are harmless: prefetches never fault. */
INLINE void prefetch_stream(const void *group, size_t gbytes, int groups, size_t off,
                            size_t bytes)
{
    size_t t = off + PREFETCH_DIST;
    if (t >= gbytes)
        t += (size_t)(groups - 1) * gbytes;
    const char *c = (const char *)group + t;
    for (size_t i = 0; i < bytes; i += 64)
        _mm_prefetch(c + i, _MM_HINT_T0);
}

/* exsa_exp_neg on 8 lanes: the same operations in the same order. */
INLINE __m256 exp8_neg(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(EXSA_EXP_MIN)); /* a > b ? a : b, as the C */
    x = _mm256_min_ps(x, _mm256_setzero_ps());
    const __m256 magic = _mm256_set1_ps(EXSA_EXP_ROUND);
    const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(EXSA_EXP_LOG2E));
    const __m256 n = _mm256_sub_ps(_mm256_add_ps(t, magic), magic);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(EXSA_EXP_LN2_HI), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(EXSA_EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXSA_EXP_C7);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXSA_EXP_C6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXSA_EXP_C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXSA_EXP_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXSA_EXP_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#ifdef __AVX512F__
/* exsa_exp_neg on 16 lanes: the same operations in the same order. */
INLINE __m512 exp16_neg(__m512 x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(EXSA_EXP_MIN)); /* a > b ? a : b, as the C */
    x = _mm512_min_ps(x, _mm512_setzero_ps());
    const __m512 magic = _mm512_set1_ps(EXSA_EXP_ROUND);
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(EXSA_EXP_LOG2E));
    const __m512 n = _mm512_sub_ps(_mm512_add_ps(t, magic), magic);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(EXSA_EXP_LN2_HI), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(EXSA_EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(EXSA_EXP_C7);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXSA_EXP_C6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXSA_EXP_C5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXSA_EXP_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXSA_EXP_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i e =
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}
#endif

/* Sum of products of unsigned u and signed s bytes, as 8 int32 lanes. */
INLINE __m256i dot_u8s8(__m256i u, __m256i s)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* Weight formats; kernels take one as a compile-time constant and the
 * switch statements on it fold away. */
enum kind {
    K_F32, K_F16, K_BF16,
    K_Q4_0, K_Q4_1, K_Q5_0, K_Q5_1, K_Q8_0,
    K_Q2_K, K_Q3_K, K_Q4_K, K_Q5_K, K_Q6_K,
};

/* Signed weight block i (Q4_0, Q5_0, Q8_0) as 32 int8 values. */
INLINE __m256i decode_signed(const void *w, int i, const int kind, float *d)
{
    switch (kind) {
    case K_Q4_0: {
        const exsa_block_q4_0 *b = (const exsa_block_q4_0 *)w + i;
        *d = h2f(b->d);
        return _mm256_sub_epi8(unpack_nibbles(b->qs), _mm256_set1_epi8(8));
    }
    case K_Q5_0: {
        const exsa_block_q5_0 *b = (const exsa_block_q5_0 *)w + i;
        *d = h2f(b->d);
        /* (nibble | 16*h) - 16: a clear high bit sets the top 4 bits, which
         * is the same int8 as nibble - 16 */
        const __m256i hi = _mm256_andnot_si256(bits_to_bytes(b->qh), _mm256_set1_epi8((char)0xF0));
        return _mm256_or_si256(unpack_nibbles(b->qs), hi);
    }
    default: {
        const exsa_block_q8_0 *b = (const exsa_block_q8_0 *)w + i;
        *d = h2f(b->d);
        return _mm256_loadu_si256((const __m256i *)b->qs);
    }
    }
}

/* Unsigned weight block with a min (Q4_1, Q5_1): 32 values 0..31. */
INLINE __m256i decode_unsigned(const void *w, int i, const int kind, float *d, float *m)
{
    if (kind == K_Q4_1) {
        const exsa_block_q4_1 *b = (const exsa_block_q4_1 *)w + i;
        *d = h2f(b->d);
        *m = h2f(b->m);
        return unpack_nibbles(b->qs);
    }
    const exsa_block_q5_1 *b = (const exsa_block_q5_1 *)w + i;
    *d = h2f(b->d);
    *m = h2f(b->m);
    const __m256i hi = _mm256_and_si256(bits_to_bytes(b->qh), _mm256_set1_epi8(0x10));
    return _mm256_or_si256(unpack_nibbles(b->qs), hi);
}

/* Q4_K / Q5_K: 6-bit scales and mins of 32-element groups, bytes 0..7 =
 * scales, 8..15 = mins. */
INLINE __m128i unpack_scale_min_k4(const uint8_t *q)
{
    uint32_t w0, w1, w2;
    memcpy(&w0, q, 4);
    memcpy(&w1, q + 4, 4);
    memcpy(&w2, q + 8, 4);
    /* groups 0..3 keep the low 6 bits of bytes 0..3 (scales) and 4..7
     * (mins); groups 4..7 take a nibble from bytes 8..11 and their top
     * 2 bits from the top of bytes 0..3 / 4..7 */
    const uint32_t k6 = 0x3F3F3F3Fu, k4 = 0x0F0F0F0Fu, k2 = 0x03030303u;
    const uint32_t sc_lo = w0 & k6, mn_lo = w1 & k6;
    const uint32_t sc_hi = (w2 & k4) | (((w0 >> 6) & k2) << 4);
    const uint32_t mn_hi = ((w2 >> 4) & k4) | (((w1 >> 6) & k2) << 4);
    return _mm_setr_epi32((int)sc_lo, (int)sc_hi, (int)mn_lo, (int)mn_hi);
}

/* roundf() of 8 floats: half away from zero. v - trunc(v) is exact. */
INLINE __m256 round_half_away(__m256 v)
{
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 frac = _mm256_and_ps(_mm256_sub_ps(v, t), abs_mask);
    const __m256 one = _mm256_or_ps(_mm256_andnot_ps(abs_mask, v), _mm256_set1_ps(1.0f));
    const __m256 step = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), one);
    return _mm256_add_ps(t, step);
}

/* Defines NAME, an exsa_gemm_x8_fn-shaped driver of a repacked kernel:
 * activation rows in groups of 4 (then the 1-3 left), each group through
 * ROWS(nb, w, a, R, out, out_stride, pf) with R a constant, so that ROWS'
 * per-row loops unroll. BLOCK is the weight block length in elements. pf
 * is set for the first group only, the one that streams the weights from
 * memory (prefetch hints on the later ones cost pp512 of Q4_K 13%). */
#define EXSA_X8_DRIVER(NAME, WTYPE, ATYPE, BLOCK, ROWS)                                    \
    static void NAME(int n, const WTYPE *w, const ATYPE *act, size_t act_stride, int n_act, \
                     float *out, size_t out_stride)                                        \
    {                                                                                      \
        const int nb = n / (BLOCK);                                                        \
        const ATYPE *a[4];                                                                 \
        for (int j = 0; j < n_act; j += 4) {                                               \
            const int r = n_act - j < 4 ? n_act - j : 4;                                   \
            for (int k = 0; k < r; k++)                                                    \
                a[k] = (const ATYPE *)((const char *)act + (size_t)(j + k) * act_stride);  \
            float *o = out + (size_t)j * out_stride;                                       \
            if (r == 4)                                                                    \
                ROWS(nb, w, a, 4, o, out_stride, j == 0);                                  \
            else if (r == 3)                                                               \
                ROWS(nb, w, a, 3, o, out_stride, j == 0);                                  \
            else if (r == 2)                                                               \
                ROWS(nb, w, a, 2, o, out_stride, j == 0);                                  \
            else                                                                           \
                ROWS(nb, w, a, 1, o, out_stride, j == 0);                                  \
        }                                                                                  \
    }

/* Defines NAME, an exsa_gemm_q8_0x8_fn (kernels.h) for one activation row
 * at a time: the 8 lanes of the 8-row group are 8 independent FMA chains,
 * one scale vector serves 8 outputs, and the lanes are summed in hsum_ps's
 * tree. LANE_DOT(u8, s8) gives the 8 rows' exact int32 sums of 4 products
 * (vpmaddubsw + vpmaddwd, or vpdpbusd), here of |a| and w with a's sign:
 * the activation's magnitudes come precomputed, so a quad of products costs
 * one vpsignb besides the dot, cvt and fma. Batches re-read the group from
 * L1/L2 per row: 8 accumulators per row leave no registers to share a
 * weight load (sharing it between 2 rows, lanes in two passes, measured no
 * gain on Zen 3). */
#define EXSA_Q8X8_GEMM(NAME, LANE_DOT)                                                       \
    static void NAME(int n, const exsa_block_q8_0x8 *w, const exsa_block_q8_0a *act,          \
                     size_t act_stride, int n_act, float *out, size_t out_stride)            \
    {                                                                                        \
        const int nb = n / 32;                                                               \
        for (int j = 0; j < n_act; j++) {                                                    \
            const exsa_block_q8_0a *a =                                                      \
                (const exsa_block_q8_0a *)((const char *)act + j * act_stride);              \
            __m256 acc[8];                                                                   \
            for (int k = 0; k < 8; k++)                                                      \
                acc[k] = _mm256_setzero_ps();                                                \
            for (int b = 0; b < nb; b++) {                                                   \
                if (j == 0)                                                                  \
                    prefetch_ahead(&w[b], sizeof w[b]);                                      \
                const __m256 d = _mm256_mul_ps(                                              \
                    _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w[b].d)),               \
                    _mm256_set1_ps(a[b].d));                                                 \
                _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)                          \
                {                                                                            \
                    const __m256i x = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * k)); \
                    int32_t quad, aquad;                                                     \
                    memcpy(&quad, a[b].qs + 4 * k, 4);                                       \
                    memcpy(&aquad, a[b].aqs + 4 * k, 4);                                     \
                    const __m256i s = _mm256_sign_epi8(x, _mm256_set1_epi32(quad));          \
                    const __m256i p = LANE_DOT(_mm256_set1_epi32(aquad), s);                 \
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc[k]);              \
                }                                                                            \
            }                                                                                \
            const __m256 s = _mm256_add_ps(                                                  \
                _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6])), \
                _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]))); \
            _mm256_storeu_ps(out + (size_t)j * out_stride, s);                               \
        }                                                                                    \
    }

#endif

#endif
