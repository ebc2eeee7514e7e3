/* Scalar reference kernels: plain C, the definition every SIMD table is
 * tested against, and the fallback on CPUs without AVX2.
 *
 * Quantized dots follow the block math directly: integer sums of products
 * inside a block (or a K-quant group), scaled once by the block's float
 * factors. Terms that only depend on the activations (sum of a's quants, for
 * the min of Q4_1/Q5_1/K-quants) are summed from the quants themselves, not
 * from Q8_K's bsums, so this code does not trust what it is checking.
 * Float dots accumulate in double so the reference stays close to exact.
 */
#include <math.h>
#include <string.h>

#include "backend/cpu/kernels.h"

static inline float h2f(exsa_fp16 h)
{
    return exsa_fp16_to_fp32(h);
}

typedef float (*row_dot_fn)(int n, const void *w, const void *a);

static void each_row(row_dot_fn f, int n, const void *w, const void *act, size_t act_stride,
                     int n_act, float *out, size_t out_stride)
{
    for (int j = 0; j < n_act; j++)
        out[(size_t)j * out_stride] = f(n, w, (const char *)act + (size_t)j * act_stride);
}

/* ----------------------------------------------------------- float weights */

static float row_f32(int n, const void *vw, const void *va)
{
    const float *w = vw, *a = va;
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += (double)w[i] * a[i];
    return (float)s;
}

static float row_f16(int n, const void *vw, const void *va)
{
    const exsa_fp16 *w = vw;
    const float *a = va;
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += (double)h2f(w[i]) * a[i];
    return (float)s;
}

/* BF16 activations (vec_dot_type BF16). */
static float row_bf16(int n, const void *vw, const void *va)
{
    const exsa_bf16 *w = vw, *a = va;
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += (double)exsa_bf16_to_fp32(w[i]) * exsa_bf16_to_fp32(a[i]);
    return (float)s;
}

/* --------------------------------------------------- 32-element blocks */

static float row_q4_0(int n, const void *vw, const void *va)
{
    const exsa_block_q4_0 *w = vw;
    const exsa_block_q8_0 *a = va;
    float s = 0.0f;
    for (int i = 0; i < n / EXSA_QK4_0; i++) {
        int si = 0;
        for (int j = 0; j < EXSA_QK4_0 / 2; j++) {
            si += ((w[i].qs[j] & 0xF) - 8) * a[i].qs[j];
            si += ((w[i].qs[j] >> 4) - 8) * a[i].qs[j + 16];
        }
        s += (float)si * (h2f(w[i].d) * h2f(a[i].d));
    }
    return s;
}

static float row_q4_1(int n, const void *vw, const void *va)
{
    const exsa_block_q4_1 *w = vw;
    const exsa_block_q8_0 *a = va;
    float s = 0.0f;
    for (int i = 0; i < n / EXSA_QK4_1; i++) {
        int si = 0, sa = 0;
        for (int j = 0; j < EXSA_QK4_1 / 2; j++) {
            si += (w[i].qs[j] & 0xF) * a[i].qs[j] + (w[i].qs[j] >> 4) * a[i].qs[j + 16];
            sa += a[i].qs[j] + a[i].qs[j + 16];
        }
        const float da = h2f(a[i].d);
        s += (float)si * (h2f(w[i].d) * da) + (float)sa * (h2f(w[i].m) * da);
    }
    return s;
}

static uint32_t load_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static float row_q5_0(int n, const void *vw, const void *va)
{
    const exsa_block_q5_0 *w = vw;
    const exsa_block_q8_0 *a = va;
    float s = 0.0f;
    for (int i = 0; i < n / EXSA_QK5_0; i++) {
        const uint32_t qh = load_u32(w[i].qh);
        int si = 0;
        for (int j = 0; j < EXSA_QK5_0 / 2; j++) {
            const int q0 = ((w[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16;
            const int q1 = ((w[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            si += q0 * a[i].qs[j] + q1 * a[i].qs[j + 16];
        }
        s += (float)si * (h2f(w[i].d) * h2f(a[i].d));
    }
    return s;
}

static float row_q5_1(int n, const void *vw, const void *va)
{
    const exsa_block_q5_1 *w = vw;
    const exsa_block_q8_0 *a = va;
    float s = 0.0f;
    for (int i = 0; i < n / EXSA_QK5_1; i++) {
        const uint32_t qh = load_u32(w[i].qh);
        int si = 0, sa = 0;
        for (int j = 0; j < EXSA_QK5_1 / 2; j++) {
            const int q0 = (w[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            const int q1 = (w[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            si += q0 * a[i].qs[j] + q1 * a[i].qs[j + 16];
            sa += a[i].qs[j] + a[i].qs[j + 16];
        }
        const float da = h2f(a[i].d);
        s += (float)si * (h2f(w[i].d) * da) + (float)sa * (h2f(w[i].m) * da);
    }
    return s;
}

static float row_q8_0(int n, const void *vw, const void *va)
{
    const exsa_block_q8_0 *w = vw;
    const exsa_block_q8_0 *a = va;
    float s = 0.0f;
    for (int i = 0; i < n / EXSA_QK8_0; i++) {
        int si = 0;
        for (int j = 0; j < EXSA_QK8_0; j++)
            si += w[i].qs[j] * a[i].qs[j];
        s += (float)si * (h2f(w[i].d) * h2f(a[i].d));
    }
    return s;
}

/* ------------------------------------------------------------- K-quants */

/* One superblock as integers: element e of group g = e / group_size is
 *   d * sc[g] * q[e] - dmin * mn[g]. */
typedef struct {
    int8_t q[EXSA_QK_K];
    int sc[16], mn[16];
    int group_size; /* 16 or 32 */
    float d, dmin;
} ksuper;

static void unpack_q2_K(const exsa_block_q2_K *b, ksuper *k)
{
    k->group_size = 16;
    k->d = h2f(b->d);
    k->dmin = h2f(b->dmin);
    for (int g = 0; g < 16; g++) {
        k->sc[g] = b->scales[g] & 0xF;
        k->mn[g] = b->scales[g] >> 4;
    }
    /* element 128*h + 32*s + l is bits 2s..2s+1 of qs[32*h + l] */
    for (int e = 0; e < EXSA_QK_K; e++) {
        const int h = e / 128, s = (e % 128) / 32, l = e % 32;
        k->q[e] = (int8_t)((b->qs[32 * h + l] >> (2 * s)) & 3);
    }
}

static void unpack_q3_K(const exsa_block_q3_K *b, ksuper *k)
{
    k->group_size = 16;
    k->d = h2f(b->d);
    k->dmin = 0.0f;
    for (int g = 0; g < 16; g++) {
        const int lo = g < 8 ? b->scales[g] & 0xF : b->scales[g - 8] >> 4;
        const int hi = (b->scales[8 + g % 4] >> (2 * (g / 4))) & 3;
        k->sc[g] = (lo | (hi << 4)) - 32;
        k->mn[g] = 0;
    }
    /* low 2 bits as Q2_K; the high bit of element 128*h + 32*s + l is bit
     * 4*h + s of hmask[l]; a clear high bit means "minus 4" */
    for (int e = 0; e < EXSA_QK_K; e++) {
        const int h = e / 128, s = (e % 128) / 32, l = e % 32;
        const int low = (b->qs[32 * h + l] >> (2 * s)) & 3;
        const int high = (b->hmask[l] >> (4 * h + s)) & 1;
        k->q[e] = (int8_t)(low - (high ? 0 : 4));
    }
}

static void unpack_q4_K(const exsa_block_q4_K *b, ksuper *k)
{
    k->group_size = 32;
    k->d = h2f(b->d);
    k->dmin = h2f(b->dmin);
    for (int g = 0; g < 8; g++) {
        uint8_t sc, mn;
        exsa_get_scale_min_k4(g, b->scales, &sc, &mn);
        k->sc[g] = sc;
        k->mn[g] = mn;
    }
    /* element 64*c + l is the low nibble of qs[32*c + l], 64*c + 32 + l the high */
    for (int e = 0; e < EXSA_QK_K; e++) {
        const int c = e / 64, hi = (e % 64) / 32, l = e % 32;
        k->q[e] = (int8_t)((b->qs[32 * c + l] >> (4 * hi)) & 0xF);
    }
}

static void unpack_q5_K(const exsa_block_q5_K *b, ksuper *k)
{
    k->group_size = 32;
    k->d = h2f(b->d);
    k->dmin = h2f(b->dmin);
    for (int g = 0; g < 8; g++) {
        uint8_t sc, mn;
        exsa_get_scale_min_k4(g, b->scales, &sc, &mn);
        k->sc[g] = sc;
        k->mn[g] = mn;
    }
    /* as Q4_K, plus bit g of qh[l] (g = e / 32) as the value 16 */
    for (int e = 0; e < EXSA_QK_K; e++) {
        const int c = e / 64, hi = (e % 64) / 32, l = e % 32;
        const int low = (b->qs[32 * c + l] >> (4 * hi)) & 0xF;
        const int high = (b->qh[l] >> (e / 32)) & 1;
        k->q[e] = (int8_t)(low | (high << 4));
    }
}

static void unpack_q6_K(const exsa_block_q6_K *b, ksuper *k)
{
    k->group_size = 16;
    k->d = h2f(b->d);
    k->dmin = 0.0f;
    for (int g = 0; g < 16; g++) {
        k->sc[g] = b->scales[g];
        k->mn[g] = 0;
    }
    /* element 128*h + 32*s + l: low nibble from ql[64*h + 32*(s&1) + l]
     * (shifted by 4 for s >= 2), high 2 bits from qh[32*h + l] >> 2s */
    for (int e = 0; e < EXSA_QK_K; e++) {
        const int h = e / 128, s = (e % 128) / 32, l = e % 32;
        const int low = (b->ql[64 * h + 32 * (s & 1) + l] >> (4 * (s >> 1))) & 0xF;
        const int high = (b->qh[32 * h + l] >> (2 * s)) & 3;
        k->q[e] = (int8_t)((low | (high << 4)) - 32);
    }
}

static float ksuper_dot(const ksuper *k, const exsa_block_q8_K *a)
{
    int sumi = 0, summ = 0;
    const int ng = EXSA_QK_K / k->group_size;
    for (int g = 0; g < ng; g++) {
        int sq = 0, sa = 0;
        for (int l = 0; l < k->group_size; l++) {
            const int e = g * k->group_size + l;
            sq += k->q[e] * a->qs[e];
            sa += a->qs[e];
        }
        sumi += k->sc[g] * sq;
        summ += k->mn[g] * sa;
    }
    return a->d * (k->d * (float)sumi - k->dmin * (float)summ);
}

/* The K-quants differ only in how a super-block unpacks. */
static float row_k(int n, const void *vw, const void *va, size_t type_size,
                   void (*unpack)(const void *, ksuper *))
{
    const char *w = vw;
    const exsa_block_q8_K *a = va;
    ksuper k;
    float s = 0.0f;
    for (int i = 0; i < n / EXSA_QK_K; i++) {
        unpack(w + (size_t)i * type_size, &k);
        s += ksuper_dot(&k, &a[i]);
    }
    return s;
}

#define ROW_K(t)                                                                  \
    static void unpack_any_##t(const void *b, ksuper *k) { unpack_##t(b, k); }    \
    static float row_##t(int n, const void *vw, const void *va)                   \
    {                                                                             \
        return row_k(n, vw, va, sizeof(exsa_block_##t), unpack_any_##t);          \
    }
ROW_K(q2_K)
ROW_K(q3_K)
ROW_K(q4_K)
ROW_K(q5_K)
ROW_K(q6_K)
#undef ROW_K

/* ---------------------------------------------------- table entry points */

static void dot_f32(int n, const void *w, const void *act, size_t as, int na, float *out,
                    size_t os)
{
    each_row(row_f32, n, w, act, as, na, out, os);
}
static void dot_f16(int n, const void *w, const void *act, size_t as, int na, float *out,
                    size_t os)
{
    each_row(row_f16, n, w, act, as, na, out, os);
}
static void dot_bf16(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os)
{
    each_row(row_bf16, n, w, act, as, na, out, os);
}
static void dot_q4_0(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os)
{
    each_row(row_q4_0, n, w, act, as, na, out, os);
}
static void dot_q4_1(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os)
{
    each_row(row_q4_1, n, w, act, as, na, out, os);
}
static void dot_q5_0(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os)
{
    each_row(row_q5_0, n, w, act, as, na, out, os);
}
static void dot_q5_1(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os)
{
    each_row(row_q5_1, n, w, act, as, na, out, os);
}
static void dot_q8_0(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os)
{
    each_row(row_q8_0, n, w, act, as, na, out, os);
}
static void dot_q2_K(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os)
{
    each_row(row_q2_K, n, w, act, as, na, out, os);
}
static void dot_q3_K(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os)
{
    each_row(row_q3_K, n, w, act, as, na, out, os);
}
static void dot_q4_K(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os)
{
    each_row(row_q4_K, n, w, act, as, na, out, os);
}
static void dot_q5_K(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os)
{
    each_row(row_q5_K, n, w, act, as, na, out, os);
}
static void dot_q6_K(int n, const void *w, const void *act, size_t as, int na, float *out,
                     size_t os)
{
    each_row(row_q6_K, n, w, act, as, na, out, os);
}

/* ---------------------------------------------------------- float helpers */

static float vec_dot_f32(int n, const float *x, const float *y)
{
    return row_f32(n, x, y);
}

static float vec_dot_f16_f32(int n, const exsa_fp16 *x, const float *y)
{
    return row_f16(n, x, y);
}

static void axpy_f32(int n, float a, const float *x, float *y)
{
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void axpy_f16(int n, float a, const exsa_fp16 *x, float *y)
{
    for (int i = 0; i < n; i++)
        y[i] += a * h2f(x[i]);
}

static void f32_to_f16(const float *x, exsa_fp16 *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = exsa_fp32_to_fp16(x[i]);
}

static void swiglu(const float *g, const float *u, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const float x = g[i], t = exsa_exp_neg(-fabsf(x));
        out[i] = x * ((x >= 0.0f ? 1.0f : t) / (1.0f + t)) * u[i];
    }
}

static void geglu(const float *g, const float *u, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const float x = g[i], y = (EXSA_GELU_2C * x) * (1.0f + (EXSA_GELU_A * x) * x);
        const float t = exsa_exp_neg(-fabsf(y));
        out[i] = x * ((y >= 0.0f ? 1.0f : t) / (1.0f + t)) * u[i];
    }
}

static void f16_to_f32(const exsa_fp16 *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = h2f(x[i]);
}

static void scale_mul(const float *x, float s, const float *w, float *y, int64_t n)
{
    if (w)
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] * s * w[i];
    else
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] * s;
}

static void add_f32(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
}

/* The references of the repacked Q4_0 / Q4_1 kernels (kernels.h): an exact
 * integer dot per block, then fused multiply-adds in a fixed order. */

/* Dot of row r of a repacked Q4_0/Q4_1 block column (nibbles unsigned). */
static int32_t q4x8_dot(const uint8_t *qs, const uint8_t *qh, int r, const exsa_block_q8_0s *a)
{
    int32_t isum = 0;
    for (int k = 0; k < 4; k++)
        for (int t = 0; t < 4; t++) {
            const uint8_t q = qs[32 * k + 4 * r + t];
            const int h = qh ? qh[8 * k + r] : 0;
            const int lo = (q & 0x0F) | ((h >> t) & 1) << 4;
            const int hi = (q >> 4) | ((h >> (4 + t)) & 1) << 4;
            isum += lo * a->qs[4 * k + t] + hi * a->qs[16 + 4 * k + t];
        }
    return isum;
}

/* kind: 0 Q4_0, 1 Q4_1, 2 Q5_0, 3 Q5_1 (the layouts differ only in the
 * optional mins and fifth bits, kernels.h). */
static void gemm_qx8(int kind, int n, const void *w, const exsa_block_q8_0s *act,
                     size_t act_stride, int n_act, float *out, size_t out_stride)
{
    const int has_min = kind & 1, has_high = kind >= 2;
    const size_t stride = 16 + 16 * (size_t)has_min + 32 * (size_t)has_high + 128;
    const int nb = n / 32, offset = has_high ? 16 : 8;
    for (int j = 0; j < n_act; j++) {
        const exsa_block_q8_0s *a = (const exsa_block_q8_0s *)((const char *)act + j * act_stride);
        for (int r = 0; r < 8; r++) {
            float acc = 0.0f;
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = (const uint8_t *)w + (size_t)b * stride;
                exsa_fp16 d, m = 0;
                memcpy(&d, blk + 2 * r, 2);
                if (has_min)
                    memcpy(&m, blk + 16 + 2 * r, 2);
                const uint8_t *qh = has_high ? blk + 16 + 16 * has_min : NULL;
                const uint8_t *qs = blk + 16 + 16 * has_min + 32 * has_high;
                int32_t isum = q4x8_dot(qs, qh, r, &a[b]);
                if (!has_min)
                    isum -= offset * a[b].sum;
                acc = fmaf((float)isum, h2f(d) * a[b].d, acc);
                if (has_min)
                    acc = fmaf(h2f(m), a[b].d * (float)a[b].sum, acc);
            }
            out[(size_t)j * out_stride + (size_t)r] = acc;
        }
    }
}

static void gemm_q4_0x8(int n, const exsa_block_q4_0x8 *w, const exsa_block_q8_0s *act,
                        size_t act_stride, int n_act, float *out, size_t out_stride)
{
    gemm_qx8(0, n, w, act, act_stride, n_act, out, out_stride);
}

static void gemm_q4_1x8(int n, const exsa_block_q4_1x8 *w, const exsa_block_q8_0s *act,
                        size_t act_stride, int n_act, float *out, size_t out_stride)
{
    gemm_qx8(1, n, w, act, act_stride, n_act, out, out_stride);
}

static void gemm_q5_0x8(int n, const exsa_block_q5_0x8 *w, const exsa_block_q8_0s *act,
                        size_t act_stride, int n_act, float *out, size_t out_stride)
{
    gemm_qx8(2, n, w, act, act_stride, n_act, out, out_stride);
}

static void gemm_q5_1x8(int n, const exsa_block_q5_1x8 *w, const exsa_block_q8_0s *act,
                        size_t act_stride, int n_act, float *out, size_t out_stride)
{
    gemm_qx8(3, n, w, act, act_stride, n_act, out, out_stride);
}

/* The reference of the repacked Q8_0 kernel (kernels.h): 8 lane
 * accumulators per output, combined as hsum_ps does in the AVX2 files. */
static void gemm_q8_0x8(int n, const exsa_block_q8_0x8 *w, const exsa_block_q8_0a *act,
                        size_t act_stride, int n_act, float *out, size_t out_stride)
{
    const int nb = n / 32;
    for (int j = 0; j < n_act; j++) {
        const exsa_block_q8_0a *a = (const exsa_block_q8_0a *)((const char *)act + j * act_stride);
        for (int r = 0; r < 8; r++) {
            float acc[8] = {0};
            for (int b = 0; b < nb; b++) {
                const float d = h2f(w[b].d[r]) * a[b].d;
                for (int k = 0; k < 8; k++) {
                    int32_t lane = 0;
                    for (int t = 0; t < 4; t++)
                        lane += w[b].qs[32 * k + 4 * r + t] * a[b].qs[4 * k + t];
                    acc[k] = fmaf((float)lane, d, acc[k]);
                }
            }
            out[(size_t)j * out_stride + (size_t)r] =
                ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
        }
    }
}

/* The reference of the repacked Q4_K kernel (kernels.h): exact integer
 * sums per super-block (activation sums from the quants, not from bsums),
 * then two fused multiply-adds per super-block per output. */
static void gemm_q4_Kx8(int n, const exsa_block_q4_Kx8 *w, const exsa_block_q8_K *act,
                        size_t act_stride, int n_act, float *out, size_t out_stride)
{
    const int nb = n / EXSA_QK_K;
    for (int j = 0; j < n_act; j++) {
        const exsa_block_q8_K *a = (const exsa_block_q8_K *)((const char *)act + j * act_stride);
        for (int r = 0; r < 8; r++) {
            float acc = 0.0f;
            for (int b = 0; b < nb; b++) {
                const exsa_block_q4_Kx8 *g = &w[b];
                int32_t isum = 0, msum = 0;
                for (int s = 0; s < 8; s++) {
                    /* sub-block s: nibble s % 2 of chunk s / 2 (kernels.h) */
                    const uint8_t *qs = g->qs + 256 * (s / 2) + 4 * r;
                    int32_t dot = 0, sa = 0;
                    for (int e = 0; e < 32; e++) {
                        const int q = (qs[32 * (e / 4) + e % 4] >> (4 * (s % 2))) & 0x0F;
                        dot += q * a[b].qs[32 * s + e];
                        sa += a[b].qs[32 * s + e];
                    }
                    isum += g->scales[8 * s + r] * dot;
                    msum += g->mins[16 * (s / 2) + 2 * r + s % 2] * sa;
                }
                acc = fmaf((float)isum, h2f(g->d[r]) * a[b].d, acc);
                acc = fmaf(-(float)msum, h2f(g->dmin[r]) * a[b].d, acc);
            }
            out[(size_t)j * out_stride + (size_t)r] = acc;
        }
    }
}

/* The reference of the repacked float kernel (kernels.h). */
static float fx_weight(int type, const void *w, size_t i)
{
    if (type == EXSA_TYPE_F16)
        return h2f(((const exsa_fp16 *)w)[i]);
    return ((const float *)w)[i];
}

static void gemm_fx(int type, int n, const void *w, size_t group_bytes, int n_groups,
                    const float *act, size_t act_stride, int n_act, float *out,
                    size_t out_stride)
{
    for (int g = 0; g < n_groups; g++) {
        const void *wg = (const char *)w + (size_t)g * group_bytes;
        for (int j = 0; j < n_act; j++) {
            const float *a = (const float *)((const char *)act + (size_t)j * act_stride);
            for (int r = 0; r < 8; r++) {
                float acc = 0.0f;
                for (int k = 0; k < n; k++)
                    acc = fmaf(fx_weight(type, wg, 8 * (size_t)k + (size_t)r), a[k], acc);
                out[(size_t)j * out_stride + 8 * (size_t)g + (size_t)r] = acc;
            }
        }
    }
}

/* The reference of the repacked BF16 kernel (kernels.h): vdpbf16ps's order,
 * the odd element of each pair first. */
static void gemm_bf16(int n, const void *w, size_t group_bytes, int n_groups,
                      const exsa_bf16 *act, size_t act_stride, int n_act, float *out,
                      size_t out_stride)
{
    for (int g = 0; g < n_groups; g++) {
        const exsa_bf16 *wg = (const exsa_bf16 *)((const char *)w + (size_t)g * group_bytes);
        for (int j = 0; j < n_act; j++) {
            const exsa_bf16 *a = (const exsa_bf16 *)((const char *)act + (size_t)j * act_stride);
            for (int r = 0; r < 8; r++) {
                float acc = 0.0f;
                for (int p = 0; p < n / 2; p++) {
                    const exsa_bf16 *wp = wg + 16 * (size_t)p + 2 * (size_t)r;
                    acc = fmaf(exsa_bf16_to_fp32(wp[1]), exsa_bf16_to_fp32(a[2 * p + 1]), acc);
                    acc = fmaf(exsa_bf16_to_fp32(wp[0]), exsa_bf16_to_fp32(a[2 * p]), acc);
                }
                out[(size_t)j * out_stride + 8 * (size_t)g + (size_t)r] = acc;
            }
        }
    }
}

/* The reference of the repacked Q6_K kernel (kernels.h): the exact integer
 * sum per super-block from the values themselves, then one fused
 * multiply-add per super-block per output. */
static void gemm_q6_Kx8(int n, const exsa_block_q6_Kx8 *w, const exsa_block_q8_K *act,
                        size_t act_stride, int n_act, float *out, size_t out_stride)
{
    const int nb = n / EXSA_QK_K;
    for (int j = 0; j < n_act; j++) {
        const exsa_block_q8_K *a = (const exsa_block_q8_K *)((const char *)act + j * act_stride);
        for (int r = 0; r < 8; r++) {
            float acc = 0.0f;
            for (int b = 0; b < nb; b++) {
                int32_t isum = 0;
                for (int sj = 0; sj < 16; sj++) {
                    int32_t dot = 0;
                    for (int e = 16 * sj; e < 16 * sj + 16; e++)
                        dot += (exsa_q6_Kx8_value(&w[b], r, e) - 32) * a[b].qs[e];
                    isum += w[b].scales[8 * sj + r] * dot;
                }
                acc = fmaf((float)isum, h2f(w[b].d[r]) * a[b].d, acc);
            }
            out[(size_t)j * out_stride + (size_t)r] = acc;
        }
    }
}

/* Q8_0 blocks with the float scale and the sum of the values; the
 * definition of quantize_q8_0s (kernels.h). */
static void quantize_q8_0s(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_0s *y = vy;
    for (int64_t b = 0; b < n / EXSA_QK8_0; b++) {
        exsa_block_q8_0 q;
        exsa_quantize_row_q8_0_ref(x + EXSA_QK8_0 * b, &q, EXSA_QK8_0);
        int32_t sum = 0;
        for (int i = 0; i < EXSA_QK8_0; i++)
            sum += q.qs[i];
        y[b].d = h2f(q.d);
        y[b].sum = sum;
        memcpy(y[b].qs, q.qs, sizeof q.qs);
    }
}

/* Q8_0 blocks with the float scale, the magnitudes and the quad
 * corrections; the definition of quantize_q8_0a (kernels.h). */
static void quantize_q8_0a(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_0a *y = vy;
    for (int64_t b = 0; b < n / EXSA_QK8_0; b++) {
        exsa_block_q8_0 q;
        exsa_quantize_row_q8_0_ref(x + EXSA_QK8_0 * b, &q, EXSA_QK8_0);
        y[b].d = h2f(q.d);
        memcpy(y[b].qs, q.qs, sizeof q.qs);
        for (int i = 0; i < EXSA_QK8_0; i++)
            y[b].aqs[i] = (uint8_t)(q.qs[i] < 0 ? -q.qs[i] : q.qs[i]);
        for (int k = 0; k < 8; k++)
            y[b].corr[k] =
                -128 * (q.qs[4 * k] + q.qs[4 * k + 1] + q.qs[4 * k + 2] + q.qs[4 * k + 3]);
    }
}

static const exsa_cpu_kernels scalar_table = {
    .isa = "scalar",
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
    .quantize_q8_0 = exsa_quantize_row_q8_0_ref,
    .quantize_q8_K = exsa_quantize_row_q8_K_ref,
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

const exsa_cpu_kernels *exsa_cpu_kernels_scalar(void)
{
    return &scalar_table;
}
