/* K-quants: 256-element super-blocks split into sub-blocks of 16 or 32, each
 * with its own 4- to 8-bit scale (and min), the scales themselves quantized
 * against one fp16 super-block scale.
 *
 * The reference quantizers reproduce llama.cpp's quantize_row_qX_K_ref
 * (no importance matrix) byte for byte: the same iterative searches for the
 * sub-block scales, the same float operation order ("w*x*l" is (w*x)*l), and
 * the same round-to-nearest trick (nearest_int below). Do not "simplify" an
 * expression here without re-running the fixture test.
 */
#include "quant/quant.h"

/* Bit-compatibility needs every a*b+c rounded twice, as llama.cpp's build
 * does: forbid fusing into FMA even where -march or -std=gnu11 allows it. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <string.h>

/* Below this a group counts as all zero (llama.cpp's GROUP_MAX_EPS). */
#define GROUP_EPS 1e-15f

/* Round to nearest, ties to even, by adding 1.5 * 2^23: the sum's low
 * mantissa bits then hold the rounded integer. Exact for |v| < 2^22; larger
 * values give a wrapped result that the callers clamp, exactly as llama.cpp
 * does (its assert on the range is compiled out in release builds). NaN
 * gives 0. Never undefined behaviour, unlike a float -> int cast. */
static int nearest_int(float v)
{
    float t = v + 12582912.0f;
    int32_t i;
    memcpy(&i, &t, sizeof(i));
    return (i & 0x007fffff) - 0x00400000;
}

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* Symmetric fit of n values to integers in [-nmax, nmax-1] with weights x^2
 * (llama.cpp's make_qx_quants, rmse_type 1, no importance weights): start
 * from the scale that maps the largest-magnitude value to -nmax, then try 18
 * nearby scales and keep the one with the best weighted least-squares fit.
 * L gets the integers offset by nmax. Returns the scale. */
static float fit_symmetric(int n, int nmax, const float *x, int8_t *L)
{
    float max = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = -nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0.0f;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            const float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        /* sumlx^2/suml2 is the error reduction of this scale's fit */
        if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Symmetric fit for Q3_K (llama.cpp's make_q3_quants with do_rmse): start as
 * above, then up to 5 rounds of coordinate descent moving single values to
 * the level that best improves the weighted (x^2) fit. */
static float fit_symmetric_descent(int n, int nmax, const float *x, int8_t *L)
{
    float max = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    const float iscale = -nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int n_changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0.0f) {
                float sl2 = suml2 - w * L[i] * L[i];
                const int new_l = clampi(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed++;
                    }
                }
            }
        }
        if (n_changed == 0)
            break;
    }
    for (int i = 0; i < n; i++)
        L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Affine fit x ~ scale*l - the_min with l in [0, nmax] (llama.cpp's
 * make_qkx2_quants): the min is kept <= 0 so that zero stays exact-ish; try
 * nstep+1 scales around nmax/(max-min), for each solve the weighted
 * least-squares scale and min for the rounded levels, keep the lowest
 * weighted error (absolute if use_mad, else squared). */
static float fit_affine(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                        float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                        int use_mad)
{
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min)
            min = x[i];
        if (x[i] > max)
            max = x[i];
        const float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0.0f)
        min = 0.0f;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)clampi(l, 0, nmax);
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += weights[i] * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
            Laux[i] = (uint8_t)l;
            const float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0.0f) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0.0f) {
                this_min = 0.0f;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0.0f;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* 4 levels per byte: element j+l+32k of a 128-group at bits 2k of byte l. */
static void pack_2bit(const uint8_t *L, uint8_t *qs)
{
    for (int j = 0; j < EXSA_QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                      (L[j + l + 96] << 6));
}

/* ------------------------------------------------------------------- Q2_K */

void exsa_quantize_row_q2_K_ref(const float *x, void *vy, int64_t n)
{
    exsa_block_q2_K *y = vy;
    uint8_t L[EXSA_QK_K];
    uint8_t Laux[16];
    float weights[16];
    float mins[EXSA_QK_K / 16];
    float scales[EXSA_QK_K / 16];
    const float q4scale = 15.0f;

    for (int64_t i = 0; i < n / EXSA_QK_K; i++, x += EXSA_QK_K) {
        float max_scale = 0.0f, max_min = 0.0f; /* scales are >= 0 */
        for (int j = 0; j < EXSA_QK_K / 16; j++) {
            for (int l = 0; l < 16; l++)
                weights[l] = fabsf(x[16 * j + l]);
            scales[j] = fit_affine(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux,
                                   -0.5f, 0.1f, 15, 1);
            if (scales[j] > max_scale)
                max_scale = scales[j];
            if (mins[j] > max_min)
                max_min = mins[j];
        }

        if (max_scale > 0.0f) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < EXSA_QK_K / 16; j++)
                y[i].scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            y[i].d = exsa_fp32_to_fp16(max_scale / q4scale);
        } else {
            memset(y[i].scales, 0, sizeof(y[i].scales));
            y[i].d = exsa_fp32_to_fp16(0.0f);
        }
        if (max_min > 0.0f) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < EXSA_QK_K / 16; j++)
                y[i].scales[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
            y[i].dmin = exsa_fp32_to_fp16(max_min / q4scale);
        } else {
            y[i].dmin = exsa_fp32_to_fp16(0.0f);
        }

        /* requantize against the scales as stored */
        const float dall = exsa_fp16_to_fp32(y[i].d);
        const float dmin = exsa_fp16_to_fp32(y[i].dmin);
        for (int j = 0; j < EXSA_QK_K / 16; j++) {
            const float d = dall * (y[i].scales[j] & 0xf);
            if (d == 0.0f)
                continue; /* keeps the levels of the fit */
            const float dm = dmin * (y[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ii++) {
                const int l = nearest_int((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (uint8_t)clampi(l, 0, 3);
            }
        }
        pack_2bit(L, y[i].qs);
    }
}

void exsa_dequantize_row_q2_K(const void *vx, float *y, int64_t n)
{
    const exsa_block_q2_K *x = vx;
    for (int64_t i = 0; i < n / EXSA_QK_K; i++) {
        const float d = exsa_fp16_to_fp32(x[i].d);
        const float min = exsa_fp16_to_fp32(x[i].dmin);
        for (int e = 0; e < EXSA_QK_K; e += 16) {
            const uint8_t sc = x[i].scales[e / 16];
            const float dl = d * (sc & 0xf);
            const float ml = min * (sc >> 4);
            const uint8_t *q = x[i].qs + 32 * (e / 128) + e % 32;
            const int shift = 2 * ((e % 128) / 32);
            for (int l = 0; l < 16; l++)
                *y++ = dl * ((q[l] >> shift) & 3) - ml;
        }
    }
}

/* ------------------------------------------------------------------- Q3_K */

/* 6-bit scale j of a Q3_K block: low 4 bits in bytes 0..7 (nibble j/8), high
 * 2 bits in bytes 8..11 (byte 8 + j%4, bit pair j/4). Returns it minus 32. */
static int q3_scale(const uint8_t *scales, int j)
{
    const int lo = j < 8 ? scales[j] & 0xf : scales[j - 8] >> 4;
    const int hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

void exsa_quantize_row_q3_K_ref(const float *x, void *vy, int64_t n)
{
    exsa_block_q3_K *y = vy;
    int8_t L[EXSA_QK_K];
    float scales[EXSA_QK_K / 16];

    for (int64_t i = 0; i < n / EXSA_QK_K; i++, x += EXSA_QK_K) {
        float max_scale = 0.0f, amax = 0.0f;
        for (int j = 0; j < EXSA_QK_K / 16; j++) {
            scales[j] = fit_symmetric_descent(16, 4, x + 16 * j, L + 16 * j);
            const float scale = fabsf(scales[j]);
            if (scale > amax) {
                amax = scale;
                max_scale = scales[j];
            }
        }

        memset(y[i].scales, 0, sizeof(y[i].scales));
        if (max_scale != 0.0f) {
            const float iscale = -32.0f / max_scale;
            for (int j = 0; j < EXSA_QK_K / 16; j++) {
                /* llama.cpp narrows to int8 before clamping; in range anyway */
                const int l = clampi((int8_t)nearest_int(iscale * scales[j]), -32, 31) + 32;
                if (j < 8)
                    y[i].scales[j] = (uint8_t)(l & 0xf);
                else
                    y[i].scales[j - 8] |= (uint8_t)((l & 0xf) << 4);
                y[i].scales[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
            }
            y[i].d = exsa_fp32_to_fp16(1 / iscale);
        } else {
            y[i].d = exsa_fp32_to_fp16(0.0f);
        }

        const float dall = exsa_fp16_to_fp32(y[i].d);
        for (int j = 0; j < EXSA_QK_K / 16; j++) {
            const float d = dall * q3_scale(y[i].scales, j);
            if (d == 0.0f)
                continue;
            for (int ii = 0; ii < 16; ii++) {
                const int l = nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)(clampi(l, -4, 3) + 4);
            }
        }

        /* bit 2 of element j goes to hmask[j % 32], bit j / 32 */
        memset(y[i].hmask, 0, sizeof(y[i].hmask));
        uint8_t low[EXSA_QK_K];
        for (int j = 0; j < EXSA_QK_K; j++) {
            int l = L[j];
            if (l > 3) {
                y[i].hmask[j % 32] |= (uint8_t)(1u << (j / 32));
                l -= 4;
            }
            low[j] = (uint8_t)l;
        }
        pack_2bit(low, y[i].qs);
    }
}

void exsa_dequantize_row_q3_K(const void *vx, float *y, int64_t n)
{
    const exsa_block_q3_K *x = vx;
    for (int64_t i = 0; i < n / EXSA_QK_K; i++) {
        const float dall = exsa_fp16_to_fp32(x[i].d);
        for (int e = 0; e < EXSA_QK_K; e += 16) {
            const float dl = dall * q3_scale(x[i].scales, e / 16);
            const uint8_t *q = x[i].qs + 32 * (e / 128) + e % 32;
            const uint8_t *hm = x[i].hmask + e % 32;
            const int shift = 2 * ((e % 128) / 32);
            const uint8_t bit = (uint8_t)(1u << (e / 32));
            for (int l = 0; l < 16; l++)
                *y++ = dl * (((q[l] >> shift) & 3) - ((hm[l] & bit) ? 0 : 4));
        }
    }
}

/* ------------------------------------------------------------ Q4_K, Q5_K */

/* Fits the 8 sub-blocks of 32 of one super-block (shared by Q4_K and Q5_K,
 * which differ in nmax and the search grid), quantizes the 8 (scale, min)
 * pairs to 6 bits against fp16 d and dmin, and requantizes the elements to
 * levels 0..nmax with those stored scales. */
static void quantize_kx(const float *x, int nmax, float rmin, int nstep, uint8_t scales_out[12],
                        exsa_fp16 *d_out, exsa_fp16 *dmin_out, uint8_t L[EXSA_QK_K])
{
    uint8_t Laux[32];
    float weights[32];
    float mins[EXSA_QK_K / 32];
    float scales[EXSA_QK_K / 32];
    float max_scale = 0.0f, max_min = 0.0f;

    for (int j = 0; j < EXSA_QK_K / 32; j++) {
        float sum_x2 = 0.0f;
        for (int l = 0; l < 32; l++)
            sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = fit_affine(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin,
                               0.1f, nstep, 0);
        if (scales[j] > max_scale)
            max_scale = scales[j];
        if (mins[j] > max_min)
            max_min = mins[j];
    }

    const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < EXSA_QK_K / 32; j++) {
        /* narrowed to 8 bits before the clamp, as in llama.cpp */
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            scales_out[j] = ls;
            scales_out[j + 4] = lm;
        } else {
            scales_out[j + 4] = (uint8_t)((ls & 0xf) | ((lm & 0xf) << 4));
            scales_out[j - 4] |= (uint8_t)((ls >> 4) << 6);
            scales_out[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d_out = exsa_fp32_to_fp16(max_scale / 63.0f);
    *dmin_out = exsa_fp32_to_fp16(max_min / 63.0f);

    const float dall = exsa_fp16_to_fp32(*d_out);
    const float dmin = exsa_fp16_to_fp32(*dmin_out);
    for (int j = 0; j < EXSA_QK_K / 32; j++) {
        uint8_t sc, m;
        exsa_get_scale_min_k4(j, scales_out, &sc, &m);
        const float d = dall * sc;
        if (d == 0.0f)
            continue;
        const float dm = dmin * m;
        for (int ii = 0; ii < 32; ii++) {
            const int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)clampi(l, 0, nmax);
        }
    }
}

void exsa_quantize_row_q4_K_ref(const float *x, void *vy, int64_t n)
{
    exsa_block_q4_K *y = vy;
    uint8_t L[EXSA_QK_K];
    for (int64_t i = 0; i < n / EXSA_QK_K; i++, x += EXSA_QK_K) {
        quantize_kx(x, 15, -1.0f, 20, y[i].scales, &y[i].d, &y[i].dmin, L);
        /* 64-element chunks: first 32 in low nibbles, next 32 in high */
        for (int j = 0; j < EXSA_QK_K; j += 64)
            for (int l = 0; l < 32; l++)
                y[i].qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

void exsa_dequantize_row_q4_K(const void *vx, float *y, int64_t n)
{
    const exsa_block_q4_K *x = vx;
    for (int64_t i = 0; i < n / EXSA_QK_K; i++) {
        const float d = exsa_fp16_to_fp32(x[i].d);
        const float min = exsa_fp16_to_fp32(x[i].dmin);
        for (int j = 0; j < EXSA_QK_K / 32; j++) {
            uint8_t sc, m;
            exsa_get_scale_min_k4(j, x[i].scales, &sc, &m);
            const float d1 = d * sc;
            const float m1 = min * m;
            const uint8_t *q = x[i].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; l++)
                *y++ = d1 * ((q[l] >> shift) & 0xf) - m1;
        }
    }
}

void exsa_quantize_row_q5_K_ref(const float *x, void *vy, int64_t n)
{
    exsa_block_q5_K *y = vy;
    uint8_t L[EXSA_QK_K];
    for (int64_t i = 0; i < n / EXSA_QK_K; i++, x += EXSA_QK_K) {
        quantize_kx(x, 31, -0.5f, 15, y[i].scales, &y[i].d, &y[i].dmin, L);
        /* low 4 bits as in Q4_K; bit 4 of element e in qh[e % 32], bit e/32 */
        memset(y[i].qh, 0, sizeof(y[i].qh));
        for (int j = 0; j < EXSA_QK_K; j += 64) {
            for (int l = 0; l < 32; l++) {
                const int e1 = j + l, e2 = j + l + 32;
                y[i].qh[l] |= (uint8_t)(((L[e1] >> 4) << (e1 / 32)) | ((L[e2] >> 4) << (e2 / 32)));
                y[i].qs[j / 2 + l] = (uint8_t)((L[e1] & 0xf) | ((L[e2] & 0xf) << 4));
            }
        }
    }
}

void exsa_dequantize_row_q5_K(const void *vx, float *y, int64_t n)
{
    const exsa_block_q5_K *x = vx;
    for (int64_t i = 0; i < n / EXSA_QK_K; i++) {
        const float d = exsa_fp16_to_fp32(x[i].d);
        const float min = exsa_fp16_to_fp32(x[i].dmin);
        for (int j = 0; j < EXSA_QK_K / 32; j++) {
            uint8_t sc, m;
            exsa_get_scale_min_k4(j, x[i].scales, &sc, &m);
            const float d1 = d * sc;
            const float m1 = min * m;
            const uint8_t *q = x[i].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; l++) {
                const int hi = (x[i].qh[l] >> j) & 1;
                *y++ = d1 * (((q[l] >> shift) & 0xf) + 16 * hi) - m1;
            }
        }
    }
}

/* ------------------------------------------------------------------- Q6_K */

void exsa_quantize_row_q6_K_ref(const float *x, void *vy, int64_t n)
{
    exsa_block_q6_K *y = vy;
    int8_t L[EXSA_QK_K];
    float scales[EXSA_QK_K / 16];

    for (int64_t i = 0; i < n / EXSA_QK_K; i++, x += EXSA_QK_K) {
        float max_scale = 0.0f, max_abs_scale = 0.0f;
        for (int ib = 0; ib < EXSA_QK_K / 16; ib++) {
            scales[ib] = fit_symmetric(16, 32, x + 16 * ib, L + 16 * ib);
            const float abs_scale = fabsf(scales[ib]);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < GROUP_EPS) {
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }

        const float iscale = -128.0f / max_scale;
        y[i].d = exsa_fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < EXSA_QK_K / 16; ib++) {
            const int s = nearest_int(iscale * scales[ib]);
            y[i].scales[ib] = (int8_t)(uint8_t)(s < 127 ? s : 127);
        }

        const float dall = exsa_fp16_to_fp32(y[i].d);
        for (int j = 0; j < EXSA_QK_K / 16; j++) {
            const float d = dall * y[i].scales[j];
            if (d == 0.0f)
                continue;
            for (int ii = 0; ii < 16; ii++) {
                const int l = nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)(clampi(l, -32, 31) + 32);
            }
        }

        /* per 128: low nibbles of elements l, l+32 | l+64, l+96 in ql[l],
         * ql[l+32]; the 2 high bits of all four in qh[l] */
        uint8_t *ql = y[i].ql;
        uint8_t *qh = y[i].qh;
        const uint8_t *u = (const uint8_t *)L;
        for (int j = 0; j < EXSA_QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                const uint8_t q1 = u[j + l], q2 = u[j + l + 32];
                const uint8_t q3 = u[j + l + 64], q4 = u[j + l + 96];
                ql[l] = (uint8_t)((q1 & 0xf) | ((q3 & 0xf) << 4));
                ql[l + 32] = (uint8_t)((q2 & 0xf) | ((q4 & 0xf) << 4));
                qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) |
                                  ((q4 >> 4) << 6));
            }
        }
    }
}

void exsa_dequantize_row_q6_K(const void *vx, float *y, int64_t n)
{
    const exsa_block_q6_K *x = vx;
    for (int64_t i = 0; i < n / EXSA_QK_K; i++) {
        const float d = exsa_fp16_to_fp32(x[i].d);
        for (int e = 0; e < EXSA_QK_K; e++) {
            const int half = e / 128, k = (e % 128) / 32, l = e % 32;
            const uint8_t lo = x[i].ql[64 * half + l + 32 * (k & 1)] >> (4 * (k >> 1));
            const uint8_t hi = x[i].qh[32 * half + l] >> (2 * k);
            const int q = ((lo & 0xf) | ((hi & 3) << 4)) - 32;
            *y++ = d * x[i].scales[e / 16] * q;
        }
    }
}

/* ------------------------------------------------------------------- Q8_K */

void exsa_quantize_row_q8_K_ref(const float *x, void *vy, int64_t n)
{
    exsa_block_q8_K *y = vy;
    for (int64_t i = 0; i < n / EXSA_QK_K; i++, x += EXSA_QK_K) {
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < EXSA_QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            y[i].d = 0.0f;
            memset(y[i].qs, 0, sizeof(y[i].qs));
            /* llama.cpp leaves bsums unwritten here; zero is their value */
            memset(y[i].bsums, 0, sizeof(y[i].bsums));
            continue;
        }
        /* -127 (not -128) keeps every product inside int8 range for SIMD */
        const float iscale = -127.0f / max;
        for (int j = 0; j < EXSA_QK_K; j++) {
            const int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(uint8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < EXSA_QK_K / 16; j++) {
            int sum = 0;
            for (int ii = 0; ii < 16; ii++)
                sum += y[i].qs[16 * j + ii];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

void exsa_dequantize_row_q8_K(const void *vx, float *y, int64_t n)
{
    const exsa_block_q8_K *x = vx;
    for (int64_t i = 0; i < n / EXSA_QK_K; i++)
        for (int j = 0; j < EXSA_QK_K; j++)
            *y++ = x[i].d * x[i].qs[j];
}
