/* CUDA backend: row-wise and elementwise ops (cuda_kernels.h).
 *
 * All memory-bound: elementwise ops are grid-stride loops (float4 where the
 * pointers allow), row ops one block per row with a block reduction.
 * swiglu and geglu compute the CPU kernels' formula to the bit (exsa_exp_neg
 * and the sigmoid with IEEE division, no contraction), so the two backends
 * agree exactly there. rope's per-pair frequencies are computed on the host
 * with the CPU backend's expression (powf on the same libm), because at
 * positions of tens of thousands one ulp of frequency moves the angle by
 * ~1e-3 rad; the device then does what the CPU does (divide by the freq
 * factor, multiply by the position in float, cos and sin).
 */
#include <math.h>
#include <stdint.h>

#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_reduce.cuh"

#define OPS_THREADS 256
#define OPS_MAX_BLOCKS 4096
/* rope's host-computed frequencies travel in the kernel parameters. */
#define ROPE_MAX_HALF 256

static unsigned grid_for(int64_t n)
{
    int64_t b = (n + OPS_THREADS - 1) / OPS_THREADS;
    if (b < 1)
        b = 1;
    return (unsigned)(b < OPS_MAX_BLOCKS ? b : OPS_MAX_BLOCKS);
}

static bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread
 * gets the result. red holds 32 floats; callers sync before reusing it. */
/* ---- rms_norm --------------------------------------------------------- */

/* One block per row. Each thread reads and writes only its own elements,
 * and all reads of the row end before the reduction's barrier, so y may
 * be x. */
static __global__ void rms_norm_kernel(const float *x, const float *w, float *y, int dim, float eps)
{
    __shared__ float red[32];
    const size_t row = (size_t)blockIdx.x * (size_t)dim;
    const float *xr = x + row;
    float *yr = y + row;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        ss = fmaf(xr[i], xr[i], ss);
    ss = block_sum(ss, red);
    const float s = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        yr[i] = w ? xr[i] * s * w[i] : xr[i] * s;
}

extern "C" int exsa_cuda_rms_norm(const float *x, const float *w, float *y, int n_rows, int dim,
                                  float eps, cudaStream_t s)
{
    if (n_rows <= 0 || dim <= 0)
        return 0;
    const int threads = dim >= 1024 ? 256 : dim >= 256 ? 128 : 64;
    rms_norm_kernel<<<n_rows, threads, 0, s>>>(x, w, y, dim, eps);
    return launch_status();
}

/* ---- add_bias, add, scale ---------------------------------------------- */

static __global__ void add_bias_kernel(float *y, const float *bias, int64_t n, int dim)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] += bias[i % dim];
}

extern "C" int exsa_cuda_add_bias(float *y, const float *bias, int n_rows, int dim,
                                  cudaStream_t s)
{
    if (n_rows <= 0 || dim <= 0)
        return 0;
    const int64_t n = (int64_t)n_rows * dim;
    add_bias_kernel<<<grid_for(n), OPS_THREADS, 0, s>>>(y, bias, n, dim);
    return launch_status();
}

/* y += x on n4 float4s then the scalar tail from 4 * n4 to n. */
static __global__ void add_kernel(float *y, const float *x, int64_t n, int64_t n4)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t i = t; i < n4; i += stride) {
        float4 a = reinterpret_cast<float4 *>(y)[i];
        const float4 b = reinterpret_cast<const float4 *>(x)[i];
        a.x += b.x;
        a.y += b.y;
        a.z += b.z;
        a.w += b.w;
        reinterpret_cast<float4 *>(y)[i] = a;
    }
    for (int64_t i = 4 * n4 + t; i < n; i += stride)
        y[i] += x[i];
}

extern "C" int exsa_cuda_add(float *y, const float *x, int64_t n, cudaStream_t s)
{
    if (n <= 0)
        return 0;
    const int64_t n4 = aligned16(y) && aligned16(x) ? n / 4 : 0;
    add_kernel<<<grid_for(n4 > 0 ? n4 : n), OPS_THREADS, 0, s>>>(y, x, n, n4);
    return launch_status();
}

static __global__ void scale_kernel(float *x, float sc, int64_t n, int64_t n4)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t i = t; i < n4; i += stride) {
        float4 a = reinterpret_cast<float4 *>(x)[i];
        a.x *= sc;
        a.y *= sc;
        a.z *= sc;
        a.w *= sc;
        reinterpret_cast<float4 *>(x)[i] = a;
    }
    for (int64_t i = 4 * n4 + t; i < n; i += stride)
        x[i] *= sc;
}

extern "C" int exsa_cuda_scale(float *x, float sc, int64_t n, cudaStream_t s)
{
    if (n <= 0)
        return 0;
    const int64_t n4 = aligned16(x) ? n / 4 : 0;
    scale_kernel<<<grid_for(n4 > 0 ? n4 : n), OPS_THREADS, 0, s>>>(x, sc, n, n4);
    return launch_status();
}

/* ---- rope ------------------------------------------------------------- */

struct rope_freqs {
    float f[ROPE_MAX_HALF]; /* freq_scale * base^(-2i/n_rot), as the CPU computes it */
};

/* One thread per rotated pair (row, head, i < n_rot/2); dims past n_rot
 * are not touched. */
static __global__ void rope_kernel(float *x, const int32_t *pos, int64_t n_pairs, int n_heads,
                            int head_dim, int half, int neox, const float *factors,
                            const rope_freqs fr)
{
    for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < n_pairs;
         p += (int64_t)gridDim.x * blockDim.x) {
        const int i = (int)(p % half);
        const int64_t rh = p / half; /* row * n_heads + head */
        const int64_t r = rh / n_heads;
        float f = fr.f[i];
        if (factors)
            f = __fdiv_rn(f, factors[i]);
        const float theta = __fmul_rn((float)pos[r], f);
        float sn, cs;
        sincosf(theta, &sn, &cs);
        float *xh = x + rh * head_dim;
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        const float x0 = xh[i0], x1 = xh[i1];
        xh[i0] = x0 * cs - x1 * sn;
        xh[i1] = x0 * sn + x1 * cs;
    }
}

extern "C" int exsa_cuda_rope(float *x, const int32_t *pos, const exsa_rope_args *a,
                              cudaStream_t s)
{
    const int half = a->n_rot / 2;
    if (a->n_rows <= 0 || half <= 0 || a->n_heads <= 0)
        return 0;
    if (half > ROPE_MAX_HALF || a->n_rot > a->head_dim)
        return (int)cudaErrorInvalidValue;
    rope_freqs fr;
    for (int i = 0; i < half; i++)
        fr.f[i] = a->freq_scale * powf(a->freq_base, -(float)(2 * i) / (float)a->n_rot);
    const int64_t n_pairs = (int64_t)a->n_rows * a->n_heads * half;
    rope_kernel<<<grid_for(n_pairs), OPS_THREADS, 0, s>>>(x, pos, n_pairs, a->n_heads,
                                                          a->head_dim, half,
                                                          a->mode == EXSA_ROPE_NEOX,
                                                          a->freq_factors, fr);
    return launch_status();
}

/* ---- softmax ---------------------------------------------------------- */

/* One block per row: max, exp and sum, scale. A row of -inf only gives
 * zeros (as the CPU), not NaN. */
static __global__ void softmax_kernel(float *x, int n)
{
    __shared__ float red[32];
    float *xr = x + (size_t)blockIdx.x * (size_t)n;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        m = fmaxf(m, xr[i]);
    m = block_max(m, red);
    if (m == -INFINITY) {
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            xr[i] = 0.0f;
        return;
    }
    __syncthreads(); /* red is reused by the sum */
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float e = expf(xr[i] - m);
        xr[i] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    const float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        xr[i] *= inv;
}

extern "C" int exsa_cuda_softmax(float *x, int n_rows, int n, cudaStream_t s)
{
    if (n_rows <= 0 || n <= 0)
        return 0;
    const int threads = n >= 4096 ? 512 : n >= 512 ? 256 : 64;
    softmax_kernel<<<n_rows, threads, 0, s>>>(x, n);
    return launch_status();
}

/* ---- swiglu, geglu ------------------------------------------------------ */

/* exsa_exp_neg (backend/cpu/kernels.h) to the bit: the _rn intrinsics keep
 * nvcc from contracting a multiply and an add into an fma the CPU does not
 * do. */
static __device__ float exp_neg(float x)
{
    x = x > -88.0f ? x : -88.0f;
    x = x < 0.0f ? x : 0.0f;
    const float t = __fmul_rn(x, 1.44269504088896341f);
    const float n = __fsub_rn(__fadd_rn(t, 12582912.0f), 12582912.0f);
    float r = fmaf(n, -0.693145751953125f, x);
    r = fmaf(n, -1.42860682030941723212e-6f, r);
    float p = 1.98412698e-4f;
    p = fmaf(p, r, 1.38888889e-3f);
    p = fmaf(p, r, 8.33333333e-3f);
    p = fmaf(p, r, 4.16666667e-2f);
    p = fmaf(p, r, 1.66666667e-1f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    return __fmul_rn(p, __uint_as_float(bits));
}

/* sigmoid(y) as the CPU kernels compute it: t = e^-|y|, (y >= 0 ? 1 : t) / (1 + t). */
static __device__ float sigmoid_cpu(float y)
{
    const float t = exp_neg(-fabsf(y));
    return __fdiv_rn(y >= 0.0f ? 1.0f : t, __fadd_rn(1.0f, t));
}

static __global__ void swiglu_kernel(const float *gate, const float *up, float *out, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = __fmul_rn(__fmul_rn(g, sigmoid_cpu(g)), up[i]);
    }
}

/* GELU's tanh form as x * sigmoid(2c (x + a x^3)), written as the CPU does. */
static __global__ void geglu_kernel(const float *gate, const float *up, float *out, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        const float y = __fmul_rn(__fmul_rn(1.5957691216057308f, g),
                                  __fadd_rn(1.0f, __fmul_rn(__fmul_rn(0.044715f, g), g)));
        out[i] = __fmul_rn(__fmul_rn(g, sigmoid_cpu(y)), up[i]);
    }
}

extern "C" int exsa_cuda_swiglu(const float *gate, const float *up, float *out, int64_t n,
                                cudaStream_t s)
{
    if (n <= 0)
        return 0;
    swiglu_kernel<<<grid_for(n), OPS_THREADS, 0, s>>>(gate, up, out, n);
    return launch_status();
}

extern "C" int exsa_cuda_geglu(const float *gate, const float *up, float *out, int64_t n,
                               cudaStream_t s)
{
    if (n <= 0)
        return 0;
    geglu_kernel<<<grid_for(n), OPS_THREADS, 0, s>>>(gate, up, out, n);
    return launch_status();
}
