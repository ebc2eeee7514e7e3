/* CPU inner kernels, one table per instruction set.
 *
 * kernels_scalar.c is the reference: plain C, the definition every SIMD
 * variant (kernels_avx2.c, kernels_avx512.c) is tested against. The table is
 * chosen once at start-up from the CPU's features; EXSA_CPU=scalar|avx2|avx512
 * in the environment caps the choice (tests and benchmarks use it).
 *
 * Matmul convention: weights W are [n_out][n] rows of type T; activations are
 * rows already converted to exsa_type_traits_get(T)->vec_dot_type (F32 for
 * F32/F16 weights, BF16 for BF16, Q8_0 for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, Q8_K
 * for K-quants).
 */
#ifndef EXSA_CPU_KERNELS_H
#define EXSA_CPU_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quant/quant.h"

/* For one weight row w (n elements of type T) and n_act activation rows
 * (act + j*act_stride bytes, j < n_act):  out[j*out_stride] = dot(w, act_j).
 * The weight row is read once for all activation rows: this is the batched
 * path of matmul (n_act > 1 during prefill). */
typedef void (*exsa_dot_fn)(int n, const void *w, const void *act, size_t act_stride,
                            int n_act, float *out, size_t out_stride);

/* Q4_0 weights repacked 8 rows at a time (repack.h): block column b of a
 * group of 8 rows is the 8 scales, then for j = 0..3 the 4 bytes qs[4j..4j+3]
 * of each row in turn (128 bytes). One 32-byte load thus holds, in dword r,
 * row r's elements 4j..4j+3 (low nibbles) and 16+4j..16+4j+3 (high): the 8
 * lanes of a vector are 8 output rows, so no horizontal sums are needed and
 * one scale multiply serves 8 outputs. Same 144 bytes as 8 Q4_0 blocks. */
typedef struct {
    exsa_fp16 d[8];
    uint8_t qs[128];
} exsa_block_q4_0x8;

/* Activation block for the repacked kernels: Q8_0's values with the scale
 * as float (the f16 value widened) and the sum of the values (for Q4_0's
 * offset of 8: dot(q - 8, a) = dot(q, a) - 8 * sum(a)). */
typedef struct {
    float d;
    int32_t sum;
    int8_t qs[32];
} exsa_block_q8_0s;

/* out[j * out_stride + r] = dot(row r of the 8-row group w, act row j), for
 * r < 8, j < n_act; act rows are act_stride bytes apart; n % 32 == 0.
 * Per output: acc = fmaf((float)(dot(q, a) - 8 * sum(a)), d_w * d_a, acc)
 * over the blocks in order, so every table and every n_act gives the same
 * bits. */
typedef void (*exsa_gemm_x8_fn)(int n, const exsa_block_q4_0x8 *w, const exsa_block_q8_0s *act,
                                size_t act_stride, int n_act, float *out, size_t out_stride);

/* Q4_1 weights repacked like Q4_0 (same nibble arrangement), with the 8
 * rows' mins after their scales. Same 160 bytes as 8 Q4_1 blocks. */
typedef struct {
    exsa_fp16 d[8];
    exsa_fp16 m[8];
    uint8_t qs[128];
} exsa_block_q4_1x8;

/* As exsa_gemm_x8_fn for Q4_1 (q in 0..15, value d * q + m). Per output:
 *   acc = fmaf((float)dot(q, a), d_w * d_a, acc);
 *   acc = fmaf(m_w, d_a * (float)sum(a), acc)
 * over the blocks in order. */
typedef void (*exsa_gemm_q4_1x8_fn)(int n, const exsa_block_q4_1x8 *w,
                                    const exsa_block_q8_0s *act, size_t act_stride, int n_act,
                                    float *out, size_t out_stride);

/* Q5_0 / Q5_1 repacked like Q4_0 / Q4_1, with the fifth bits arranged for
 * the nibble quads: qh[8 * j + r] holds, in bits 0..3, the fifth bits of row
 * r's elements 4j..4j+3 and, in bits 4..7, those of 16+4j..16+4j+3. Same
 * bytes as 8 Q5_0 (176) / Q5_1 (192) blocks. */
typedef struct {
    exsa_fp16 d[8];
    uint8_t qh[32];
    uint8_t qs[128];
} exsa_block_q5_0x8;

typedef struct {
    exsa_fp16 d[8];
    exsa_fp16 m[8];
    uint8_t qh[32];
    uint8_t qs[128];
} exsa_block_q5_1x8;

/* As the Q4 forms with q in 0..31: Q5_0 subtracts 16 * sum(a) like Q4_0's
 * 8 * sum(a); Q5_1 adds the min like Q4_1. */
typedef void (*exsa_gemm_q5_0x8_fn)(int n, const exsa_block_q5_0x8 *w,
                                    const exsa_block_q8_0s *act, size_t act_stride, int n_act,
                                    float *out, size_t out_stride);
typedef void (*exsa_gemm_q5_1x8_fn)(int n, const exsa_block_q5_1x8 *w,
                                    const exsa_block_q8_0s *act, size_t act_stride, int n_act,
                                    float *out, size_t out_stride);

/* Q8_0 weights repacked 8 rows at a time: the 8 scales, then for lane
 * k = 0..7 the 4 values qs[4k..4k+3] of each row in turn, so that one 32-byte
 * load holds lane k of the 8 rows. Same 272 bytes as 8 Q8_0 blocks. */
typedef struct {
    exsa_fp16 d[8];
    int8_t qs[256];
} exsa_block_q8_0x8;

/* Activation block for repacked Q8_0: the values, their magnitudes and the
 * scale as float. With |a| at hand the x86 kernels form a * w as
 * |a| * (w with a's sign): one vpsignb per 32 products instead of an abs
 * and a sign. That needs w != -128 (negating it overflows), so weights
 * holding -128 are not repacked (cpu_repack.c). aqs[i] = |qs[i]|. */
typedef struct {
    float d;
    int8_t qs[32];
    uint8_t aqs[32];
    /* -128 * (qs[4k] + ... + qs[4k+3]): with weights offset to unsigned
     * (w + 128), vpdpbusd started from corr[k] gives lane k's exact sum of
     * w * a (the AVX-512 VNNI kernels; AVX-512 has no vpsignb) */
    int32_t corr[8];
} exsa_block_q8_0a;

/* out[j * out_stride + r] = dot(row r of the group, act row j) in the order
 * of the AVX2 row kernel (and of llama.cpp's Q8_0 kernels, whose logits the
 * fixtures hold to a tight bound): per output, 8 lane accumulators, lane k
 * taking the exact int sum of elements 4k..4k+3 of each block,
 *   acc[k] = fmaf((float)lane_sum, d_w * d_a, acc[k])   (blocks in order)
 * then ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7)). */
typedef void (*exsa_gemm_q8_0x8_fn)(int n, const exsa_block_q8_0x8 *w,
                                    const exsa_block_q8_0a *act, size_t act_stride, int n_act,
                                    float *out, size_t out_stride);

/* F32 / F16 weights repacked 8 rows at a time: a group is element k of its
 * 8 rows side by side (8 values), k = 0..n-1, group_bytes long.
 * gemm_fx computes n_groups consecutive groups (1..4) at once:
 *   out[j * out_stride + 8 * g + r] = dot(row r of group g, act row j)
 * for float activation rows act_stride bytes apart, each output as ONE
 * accumulator over the elements in order, acc = fmaf(w, a, acc), so any
 * n_groups and n_act give the same bits. Several groups at once give a lone
 * activation row (decode) independent FMA chains; several rows at once
 * reuse every weight vector from a register. type: EXSA_TYPE_F32/F16. */
typedef void (*exsa_gemm_fx_fn)(int type, int n, const void *w, size_t group_bytes,
                                int n_groups, const float *act, size_t act_stride, int n_act,
                                float *out, size_t out_stride);

/* BF16 weights repacked 8 rows at a time in element pairs (n even): dword
 * r of pair p of a group is row r's elements 2p (low half) and 2p + 1
 * (high half), 32 bytes per pair, group_bytes = 16 * n. Activations are
 * BF16 rows too (the weights' vec_dot_type, as llama.cpp rounds them), so
 * one vdpbf16ps takes 32 products. gemm_bf16 computes n_groups (1..4)
 * consecutive groups like gemm_fx, each output ONE accumulator over the
 * pairs in order, in vdpbf16ps's order (the product of two bf16 is exact
 * in float, so each step is one rounding):
 *   acc = fmaf(w[2p + 1], a[2p + 1], acc); acc = fmaf(w[2p], a[2p], acc)
 * from acc = 0.0f. The same bits in every table and for any n_groups and
 * n_act, except that vdpbf16ps treats denormal inputs and sums as zero
 * (values below 1.2e-38, which no model's matmul reaches). */
typedef void (*exsa_gemm_bf16_fn)(int n, const void *w, size_t group_bytes, int n_groups,
                                  const exsa_bf16 *act, size_t act_stride, int n_act,
                                  float *out, size_t out_stride);

/* Q4_K weights repacked 8 rows at a time: super-block column b of a group of
 * 8 rows (256 elements of each) holds the 8 rows' d and dmin, their 6-bit
 * sub-block scales and mins unpacked to bytes, and their nibbles interleaved
 * in 4-byte quads as in exsa_block_q4_0x8:
 *   scales[8 * j + r]                  = scale of sub-block j of row r
 *   mins[16 * (j / 2) + 2 * r + j % 2] = min of sub-block j of row r
 *     (16 bytes zero-extended to int16 are one vpmaddwd operand: the 8
 *     rows' pairs (min of sub-block 2k, min of 2k + 1))
 *   qs[256 * c + 32 * t + 4 * r + i]   = row r's GGUF qs[32 * c + 4 * t + i]
 * so one 32-byte load at qs + 256c + 32t holds in dword r row r's elements
 * 32(2c) + 4t..+3 (low nibbles) and 32(2c+1) + 4t..+3 (high nibbles).
 * 1184 bytes for 8 Q4_K blocks of 144 (+2.8%); repacking is lossless. */
typedef struct {
    exsa_fp16 d[8];
    exsa_fp16 dmin[8];
    uint8_t scales[64];
    uint8_t mins[64];
    uint8_t qs[1024];
} exsa_block_q4_Kx8;
_Static_assert(sizeof(exsa_block_q4_Kx8) == 1184, "q4_Kx8 block");

/* out[j * out_stride + r] = dot(row r of the 8-row group w, act row j) with
 * Q8_K activations (act rows act_stride bytes apart, n % 256 == 0, bsums the
 * sums of qs as quantize_q8_K makes them). Per output and super-block, in
 * order, with q the nibbles, s_j / m_j row r's sub-block scale / min:
 *   isum = sum_j s_j * sum_{e in j} q_e * a_e          (int32, exact)
 *   msum = sum_j m_j * sum_{e in j} a_e                (int32, exact)
 *   acc  = fmaf((float)isum, d_r * d_a, acc)
 *   acc  = fmaf(-(float)msum, dmin_r * d_a, acc)
 * (d_r, dmin_r widened from f16, the products rounded to float, (float)
 * rounding to nearest even), acc from 0.0f, so every table and every n_act
 * gives the same bits. */
typedef void (*exsa_gemm_q4_Kx8_fn)(int n, const exsa_block_q4_Kx8 *w,
                                    const exsa_block_q8_K *act, size_t act_stride, int n_act,
                                    float *out, size_t out_stride);

/* Q6_K weights repacked 8 rows at a time: super-block column b of a group
 * of 8 rows (256 elements of each) holds the 8 rows' d, their 16 scales
 * (one per 16 elements) and their 6-bit values (stored +32, as in Q6_K) in
 * 4-byte quads as in exsa_block_q4_Kx8, for element e = 32 s + 4 t + i of
 * row r (sub-block s < 8, quad t < 8, i < 4):
 *   scales[8 * j + r]                   = scale j (elements 16j..16j+15)
 *   ql[256 * (s / 2) + 32 * t + 4 * r + i], nibble s % 2 = its low 4 bits
 *   qh[256 * (s / 4) + 32 * t + 4 * r + i], bits 2 (s % 4) + 0..1 = its top 2
 * so one 32-byte load of ql and one of qh give sub-block s's quad t of the
 * 8 rows. 1680 bytes, the same as 8 Q6_K blocks; lossless. */
typedef struct {
    exsa_fp16 d[8];
    int8_t scales[128];
    uint8_t ql[1024];
    uint8_t qh[512];
} exsa_block_q6_Kx8;
_Static_assert(sizeof(exsa_block_q6_Kx8) == 1680, "q6_Kx8 block");

/* Element e (0..255) of row r of a repacked Q6_K column, 0..63. */
static inline int exsa_q6_Kx8_value(const exsa_block_q6_Kx8 *g, int r, int e)
{
    const int s = e / 32, t = e % 32 / 4, i = e % 4, o = 32 * t + 4 * r + i;
    return ((g->ql[256 * (s / 2) + o] >> (4 * (s % 2))) & 15) |
           ((g->qh[256 * (s / 4) + o] >> (2 * (s % 4))) & 3) << 4;
}

/* out[j * out_stride + r] = dot(row r of the 8-row group w, act row j) with
 * Q8_K activations (n % 256 == 0). Per output and super-block, in order,
 * with q the stored values and sc_j row r's scales:
 *   isum = sum_j sc_j * sum_{e in j} (q_e - 32) * a_e      (int32, exact)
 *   acc  = fmaf((float)isum, d_r * d_a, acc)
 * (d_r widened from f16, the product rounded to float), acc from 0.0f, so
 * every table and every n_act gives the same bits. */
typedef void (*exsa_gemm_q6_Kx8_fn)(int n, const exsa_block_q6_Kx8 *w,
                                    const exsa_block_q8_K *act, size_t act_stride, int n_act,
                                    float *out, size_t out_stride);

/* Two consecutive 8-row groups of a repacked layout at once, the second
 * group_bytes after the first: out[j * out_stride + 8 * g + r] for g < 2,
 * r < 8, bit for bit what the layout's x8 kernel gives for each group
 * (act is that kernel's activation type). One 512-bit register holds the
 * 16 outputs, so each activation broadcast and each dot instruction serves
 * twice the rows; tables without such a form leave these NULL and the
 * matmul takes groups one at a time. */
typedef void (*exsa_gemm_x16_fn)(int n, const void *w, size_t group_bytes, const void *act,
                                 size_t act_stride, int n_act, float *out, size_t out_stride);

/* exsa_exp_neg's constants, one copy for it and its vector forms
 * (exp8_neg, exp16_neg), which must compute the same bits: clamp, round to
 * nearest through 1.5 * 2^23, ln 2 in two parts, then the degree-7
 * polynomial's coefficients 1/7! .. 1/3! (1/2, 1, 1 written out). */
#define EXSA_EXP_MIN (-88.0f)
#define EXSA_EXP_ROUND 12582912.0f
#define EXSA_EXP_LOG2E 1.44269504088896341f
#define EXSA_EXP_LN2_HI (-0.693145751953125f)
#define EXSA_EXP_LN2_LO (-1.42860682030941723212e-6f)
#define EXSA_EXP_C7 1.98412698e-4f
#define EXSA_EXP_C6 1.38888889e-3f
#define EXSA_EXP_C5 8.33333333e-3f
#define EXSA_EXP_C4 4.16666667e-2f
#define EXSA_EXP_C3 1.66666667e-1f

/* e^x for x <= 0 (the tiled attention softmax, SiLU), the same bits in
 * every table: x clamped to [-88, 0] (NaN and -inf give -88, whose result is 0), x = n ln2 + r with
 * n rounded to nearest (the 1.5 * 2^23 trick), e^r by a degree-7 Taylor
 * polynomial (Horner, fmaf), times 2^n built in the exponent bits (n =
 * -127 gives 0). Within 2 ulp of expf on the normal range. */
static inline float exsa_exp_neg(float x)
{
    x = x > EXSA_EXP_MIN ? x : EXSA_EXP_MIN;
    x = x < 0.0f ? x : 0.0f;
    const float t = x * EXSA_EXP_LOG2E;
    const float n = (t + EXSA_EXP_ROUND) - EXSA_EXP_ROUND;
    float r = fmaf(n, EXSA_EXP_LN2_HI, x);
    r = fmaf(n, EXSA_EXP_LN2_LO, r);
    float p = EXSA_EXP_C7;
    p = fmaf(p, r, EXSA_EXP_C6);
    p = fmaf(p, r, EXSA_EXP_C5);
    p = fmaf(p, r, EXSA_EXP_C4);
    p = fmaf(p, r, EXSA_EXP_C3);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}

typedef struct exsa_cpu_kernels {
    const char *isa; /* "scalar", "avx2", "avx512" */
    exsa_dot_fn dot[EXSA_TYPE_COUNT]; /* NULL where the type has no kernel */
    /* Activation quantizers (n multiple of the block size). */
    void (*quantize_q8_0)(const float *x, void *y, int64_t n);
    void (*quantize_q8_K)(const float *x, void *y, int64_t n);
    /* The repacked kernels' activation rows (n multiple of 32): Q8_0 as
     * quantize_q8_0 makes it, the scale widened to float, plus the sum of
     * the values (exsa_block_q8_0s) or their magnitudes and quad
     * corrections (exsa_block_q8_0a). The same bytes in every table. */
    void (*quantize_q8_0s)(const float *x, void *y, int64_t n);
    void (*quantize_q8_0a)(const float *x, void *y, int64_t n);
    /* Float helpers used by attention and norms. */
    float (*dot_f32)(int n, const float *x, const float *y);
    float (*dot_f16_f32)(int n, const exsa_fp16 *x, const float *y);
    void (*axpy_f32)(int n, float a, const float *x, float *y);     /* y += a*x */
    void (*axpy_f16)(int n, float a, const exsa_fp16 *x, float *y); /* y += a*x */
    void (*f32_to_f16)(const float *x, exsa_fp16 *y, int64_t n);
    void (*f16_to_f32)(const exsa_fp16 *x, float *y, int64_t n);
    exsa_gemm_x8_fn gemm_q4_0x8;
    exsa_gemm_q4_Kx8_fn gemm_q4_Kx8;
    exsa_gemm_q4_1x8_fn gemm_q4_1x8;
    exsa_gemm_q5_0x8_fn gemm_q5_0x8;
    exsa_gemm_q5_1x8_fn gemm_q5_1x8;
    exsa_gemm_fx_fn gemm_fx;
    /* Groups per gemm_fx / gemm_bf16 call for a batch (decode takes 4): the
     * tile shape its kernel keeps in registers (scalar and AVX2 2 x 6 rows,
     * AVX-512 4 x 8, AVX512-BF16 4 x 12). A size_t so the table keeps no padding (kernels.c checks its
     * size entry by entry). */
    size_t fx_batch_groups;
    /* SwiGLU: out[i] = (g * s) * u[i], s = SiLU(g) / g computed as
     * t = exsa_exp_neg(-|g|), s = (g >= 0 ? 1 : t) / (1 + t). The same
     * bits in every table; out may alias g or u. */
    void (*swiglu)(const float *g, const float *u, float *out, int64_t n);
    exsa_gemm_q8_0x8_fn gemm_q8_0x8;
    exsa_gemm_q6_Kx8_fn gemm_q6_Kx8;
    exsa_gemm_x16_fn gemm_q4_0x16;
    exsa_gemm_x16_fn gemm_q8_0x16;
    exsa_gemm_x16_fn gemm_q4_Kx16;
    exsa_gemm_x16_fn gemm_q6_Kx16;
    /* Q4_0, four groups (32 outputs, out[j * os + 8 g + r], g < 4) per call,
     * same bits: a decode step shares each activation broadcast over 32
     * rows. NULL where the ISA has none. */
    exsa_gemm_x16_fn gemm_q4_0x32;
    exsa_gemm_x16_fn gemm_q8_0x32; /* the same for Q8_0 */
    exsa_gemm_bf16_fn gemm_bf16;
    /* Elementwise, the same bits in every table (no sums): y[i] = (x[i] *
     * s) * w[i] (w NULL: x[i] * s), the tail of rms_norm; y may be x. */
    void (*scale_mul)(const float *x, float s, const float *w, float *y, int64_t n);
    void (*add_f32)(float *y, const float *x, int64_t n); /* y[i] += x[i] */
    /* GeGLU, GELU in its tanh form: out[i] = (g * s) * u[i] with
     * s = sigmoid(y) = 0.5 (1 + tanh(y / 2)), y = (EXSA_GELU_2C * g) *
     * (1 + (EXSA_GELU_A * g) * g), s computed as swiglu's (t =
     * exsa_exp_neg(-|y|), s = (y >= 0 ? 1 : t) / (1 + t)). The same bits
     * in every table; out may alias g or u. */
    void (*geglu)(const float *g, const float *u, float *out, int64_t n);
} exsa_cpu_kernels;

/* GELU (tanh form) constants: 2 sqrt(2/pi) and 0.044715. */
#define EXSA_GELU_2C 1.5957691216057308f
#define EXSA_GELU_A 0.044715f

const exsa_cpu_kernels *exsa_cpu_kernels_scalar(void);
/* NULL when the binary was built without that ISA or the CPU lacks it. */
const exsa_cpu_kernels *exsa_cpu_kernels_avx2(void);
const exsa_cpu_kernels *exsa_cpu_kernels_avx512(void);
/* Best table for this CPU, honouring EXSA_CPU; never NULL. */
const exsa_cpu_kernels *exsa_cpu_kernels_best(void);

#endif
