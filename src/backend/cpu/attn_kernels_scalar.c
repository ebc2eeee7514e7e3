/* Scalar attention kernels: the reference every SIMD table must match
 * (for its own kernel table's dot), and the fallback without AVX2.
 *
 * The score is kernels_scalar.c's F16 dot (double accumulation, rounded to
 * float once) times the scale; the V accumulator holds f16 values, each
 * update acc = f16(fmaf(f32(v), a, acc)) and rescale acc = f16(acc * s)
 * rounding to nearest even like llama.cpp's CPU flash attention.
 * The tiled float path (chunk_v_f16, attn_chunk) is written exactly as
 * attn_kernels.h defines it; the SIMD tables do the same operations.
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

static void chunk_v_f16(int hd, int hdp, int n, const exsa_fp16 *const *v, float *vf)
{
    for (int j = 0; j < n; j++)
        for (int d = 0; d < hdp; d++)
            vf[(size_t)j * (size_t)hdp + (size_t)d] = d < hd ? exsa_fp16_to_fp32(v[j][d]) : 0.0f;
}

static float max_f(float a, float b)
{
    return a > b ? a : b;
}

static void attn_chunk_one(int hdp, const float *vf, const float *sc, int nt, float *st)
{
    enum { T = EXSA_ATTN_TILE };
    float s[T], x[16], p[T];
    for (int j = 0; j < T; j++)
        s[j] = j < nt ? sc[j] : -INFINITY;
    for (int i = 0; i < 16; i++)
        x[i] = max_f(s[i], s[i + 16]);
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++)
            x[i] = max_f(x[i], x[i + w]);
    float *acc = st, *l = st + hdp + EXSA_ATTN_ST_L, *m = st + hdp + EXSA_ATTN_ST_M;
    const float cm = max_f(x[0], *m);
    const float f = exsa_exp_neg(*m - cm);
    for (int j = 0; j < T; j++)
        p[j] = exsa_exp_neg(s[j] - cm);
    for (int i = 0; i < 16; i++)
        l[i] = (l[i] * f + p[i]) + p[i + 16];
    for (int d = 0; d < hdp; d++)
        acc[d] = acc[d] * f;
    for (int j = 0; j < nt; j++)
        for (int d = 0; d < hdp; d++)
            acc[d] = fmaf(p[j], vf[(size_t)j * (size_t)hdp + (size_t)d], acc[d]);
    *m = cm;
}

static void attn_chunk(int hdp, const float *vf, int n_q, const float *const *s, const int *nt,
                       float *const *st)
{
    for (int i = 0; i < n_q; i++)
        attn_chunk_one(hdp, vf, s[i], nt[i], st[i]);
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
    .chunk_v_f16 = chunk_v_f16,
    .attn_chunk = attn_chunk,
    .dequant_q8_0 = dequant_q8_0,
};

const exsa_cpu_attn_kernels *exsa_cpu_attn_kernels_scalar(void)
{
    return &scalar_table;
}
