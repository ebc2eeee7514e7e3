/* Scalar attention kernels: the reference every SIMD table must match
 * (for its own kernel table's dot), and the fallback without AVX2.
 *
 * The score is kernels_scalar.c's F16 dot (double accumulation, rounded to
 * float once) times the scale; the V accumulator holds f16 values, each
 * update acc = f16(fmaf(f32(v), a, acc)) and rescale acc = f16(acc * s)
 * rounding to nearest even like llama.cpp's CPU flash attention.
 */
#include <math.h>

#include "backend/cpu/attn_kernels.h"

static float dot_f16(int n, const exsa_fp16 *k, const float *q)
{
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += (double)exsa_fp16_to_fp32(k[i]) * q[i];
    return (float)s;
}

static void scores_f16(int hd, int n, const exsa_fp16 *const *k, const float *q, int n_q,
                       float scale, float *sc)
{
    for (int h = 0; h < n_q; h++)
        for (int i = 0; i < n; i++)
            sc[(size_t)h * (size_t)n + (size_t)i] = dot_f16(hd, k[i], q + (size_t)h * (size_t)hd) * scale;
}

static float round_f16(float x)
{
    return exsa_fp16_to_fp32(exsa_fp32_to_fp16(x));
}

static void accum_f16(int hd, int n, const exsa_fp16 *const *v, const float *ms, const float *vs,
                      float *acc)
{
    for (int i = 0; i < n; i++) {
        if (ms[i] != 1.0f)
            for (int d = 0; d < hd; d++)
                acc[d] = round_f16(acc[d] * ms[i]);
        for (int d = 0; d < hd; d++)
            acc[d] = round_f16(fmaf(exsa_fp16_to_fp32(v[i][d]), vs[i], acc[d]));
    }
}

static void accum_f16_rows(int hd, int n, const exsa_fp16 *const *v, int n_r,
                           const float *const *ms, const float *const *vs, float *const *acc)
{
    for (int r = 0; r < n_r; r++)
        accum_f16(hd, n, v, ms[r], vs[r], acc[r]);
}

static void dequant_q8_0(const exsa_block_q8_0 *x, float *y, int64_t n_blocks)
{
    for (int64_t b = 0; b < n_blocks; b++) {
        const float d = exsa_fp16_to_fp32(x[b].d);
        for (int i = 0; i < EXSA_QK8_0; i++)
            y[b * EXSA_QK8_0 + i] = d * (float)x[b].qs[i];
    }
}

static const exsa_cpu_attn_kernels scalar_table = {
    .isa = "scalar",
    .scores_f16 = scores_f16,
    .accum_f16 = accum_f16,
    .accum_f16_rows = accum_f16_rows,
    .dequant_q8_0 = dequant_q8_0,
};

const exsa_cpu_attn_kernels *exsa_cpu_attn_kernels_scalar(void)
{
    return &scalar_table;
}
