/* Matrix kernels of the CUDA backend: y = W x for every weight format, and
 * the row gather behind token embeddings.
 *
 * Decode (n_rows <= 8) is memory bound: one warp per output row streams the
 * row once for all activation rows. A lane takes 8 contiguous elements at a
 * time (a chunk: one quarter of a 32-block or one 32nd of a K-quant
 * super-block), dequantizes them in registers and multiplies them with each
 * activation row, so a warp's 32 lanes read 256 contiguous elements of W and
 * of x per step; x is small and shared by every block, so it is read through
 * L1/L2 rather than staged. A warp-shuffle sum ends the row.
 *
 * Prefill (n_rows > 8) is compute bound and runs on the tensor cores: x is
 * converted to f16 once into scratch, then each 256-thread block computes a
 * 64 (rows) x 128 (outputs) tile of y with WMMA 16x16x16 f16 products and
 * f32 accumulation, dequantizing its 128 x 32 slice of W to f16 in shared
 * memory per k-step (two buffers: the next slice is written while the
 * current one is multiplied). F32 weights take a tiled FFMA kernel instead,
 * so F32 models keep f32 accuracy.
 *
 * Dequantization (cuda_quant.cuh) gives the scalar reference's exact floats;
 * get_rows therefore returns bit-identical rows.
 */
#include <stddef.h>
#include <stdint.h>

#include <type_traits>

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_quant.cuh"

/* Included only to check cuda_quant.cuh's offsets below. */
extern "C" {
#include "quant/quant.h"
}

using namespace exsa_cuda;

static_assert(offsetof(exsa_block_q4_0, qs) == 2 && sizeof(exsa_block_q4_0) == 18, "q4_0");
static_assert(offsetof(exsa_block_q4_1, m) == 2 && offsetof(exsa_block_q4_1, qs) == 4 &&
                  sizeof(exsa_block_q4_1) == 20, "q4_1");
static_assert(offsetof(exsa_block_q5_0, qh) == 2 && offsetof(exsa_block_q5_0, qs) == 6 &&
                  sizeof(exsa_block_q5_0) == 22, "q5_0");
static_assert(offsetof(exsa_block_q5_1, qh) == 4 && offsetof(exsa_block_q5_1, qs) == 8 &&
                  sizeof(exsa_block_q5_1) == 24, "q5_1");
static_assert(offsetof(exsa_block_q8_0, qs) == 2 && sizeof(exsa_block_q8_0) == 34, "q8_0");
static_assert(offsetof(exsa_block_q2_K, qs) == 16 && offsetof(exsa_block_q2_K, d) == 80 &&
                  offsetof(exsa_block_q2_K, dmin) == 82 && sizeof(exsa_block_q2_K) == 84, "q2_K");
static_assert(offsetof(exsa_block_q3_K, qs) == 32 && offsetof(exsa_block_q3_K, scales) == 96 &&
                  offsetof(exsa_block_q3_K, d) == 108 && sizeof(exsa_block_q3_K) == 110, "q3_K");
static_assert(offsetof(exsa_block_q4_K, dmin) == 2 && offsetof(exsa_block_q4_K, scales) == 4 &&
                  offsetof(exsa_block_q4_K, qs) == 16 && sizeof(exsa_block_q4_K) == 144, "q4_K");
static_assert(offsetof(exsa_block_q5_K, scales) == 4 && offsetof(exsa_block_q5_K, qh) == 16 &&
                  offsetof(exsa_block_q5_K, qs) == 48 && sizeof(exsa_block_q5_K) == 176, "q5_K");
static_assert(offsetof(exsa_block_q6_K, qh) == 128 && offsetof(exsa_block_q6_K, scales) == 192 &&
                  offsetof(exsa_block_q6_K, d) == 208 && sizeof(exsa_block_q6_K) == 210, "q6_K");
static_assert(fmt_q4_0::SUBS * 8 == EXSA_QK4_0 && fmt_q6_K::SUBS * 8 == EXSA_QK_K, "chunks");

/* ------------------------------------------------------------ format table */

/* Calls fn with a default-constructed format struct for `type`. The float
 * formats come in 8-element chunks when rows allow 16-byte loads (x8) and
 * one element at a time otherwise. */
template <class Fn>
static int with_format(int type, bool x8, Fn &&fn)
{
    switch (type) {
    case EXSA_TYPE_F32: return x8 ? fn(fmt_f32x8{}) : fn(fmt_f32x1{});
    case EXSA_TYPE_F16: return x8 ? fn(fmt_f16x8{}) : fn(fmt_f16x1{});
    case EXSA_TYPE_BF16: return x8 ? fn(fmt_bf16x8{}) : fn(fmt_bf16x1{});
    case EXSA_TYPE_Q4_0: return fn(fmt_q4_0{});
    case EXSA_TYPE_Q4_1: return fn(fmt_q4_1{});
    case EXSA_TYPE_Q5_0: return fn(fmt_q5_0{});
    case EXSA_TYPE_Q5_1: return fn(fmt_q5_1{});
    case EXSA_TYPE_Q8_0: return fn(fmt_q8_0{});
    case EXSA_TYPE_Q2_K: return fn(fmt_q2_K{});
    case EXSA_TYPE_Q3_K: return fn(fmt_q3_K{});
    case EXSA_TYPE_Q4_K: return fn(fmt_q4_K{});
    case EXSA_TYPE_Q5_K: return fn(fmt_q5_K{});
    case EXSA_TYPE_Q6_K: return fn(fmt_q6_K{});
    default: return (int)cudaErrorInvalidValue;
    }
}

/* Elements per block (the granularity of n_in), 0 if unsupported. */
static int64_t block_elems(int type)
{
    switch (type) {
    case EXSA_TYPE_F32:
    case EXSA_TYPE_F16:
    case EXSA_TYPE_BF16: return 1;
    case EXSA_TYPE_Q4_0:
    case EXSA_TYPE_Q4_1:
    case EXSA_TYPE_Q5_0:
    case EXSA_TYPE_Q5_1:
    case EXSA_TYPE_Q8_0: return 32;
    case EXSA_TYPE_Q2_K:
    case EXSA_TYPE_Q3_K:
    case EXSA_TYPE_Q4_K:
    case EXSA_TYPE_Q5_K:
    case EXSA_TYPE_Q6_K: return EXSA_QK_K;
    default: return 0;
    }
}

/* Whether a float-format matrix can use 16-byte chunk loads. */
static bool float_rows_x8(const void *w, int64_t n_in, size_t row_bytes)
{
    return n_in % 8 == 0 && (uintptr_t)w % 16 == 0 && row_bytes % 16 == 0;
}

/* Sizes and pointers the kernels rely on: a whole number of blocks per row,
 * rows at least that long, rows at strides that keep the element loads
 * aligned (4 bytes for F32, 2 for the rest, whose fields are 16-bit). */
static bool args_ok(const void *w, int type, int64_t n_in, size_t row_bytes)
{
    const int64_t be = block_elems(type);
    if (be == 0 || n_in < 0 || n_in % be != 0 || w == NULL)
        return false;
    const size_t min_bytes = exsa_type_row_size(type, n_in);
    if (n_in > 0 && (min_bytes == 0 || row_bytes < min_bytes))
        return false;
    return row_bytes % (type == EXSA_TYPE_F32 ? 4 : 2) == 0;
}

/* --------------------------------------------------------------- decode */

constexpr int DECODE_MAX_ROWS = 8;
constexpr int DECODE_WARPS = 4;

template <int CHUNK>
__device__ __forceinline__ void load_x(const float *p, bool vec, float *v)
{
    if (CHUNK == 8 && vec) {
        const float4 a = ((const float4 *)p)[0], b = ((const float4 *)p)[1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
#pragma unroll
        for (int k = 0; k < CHUNK; k++)
            v[k] = p[k];
    }
}

/* One warp per output row o; activation rows r < nr <= NR. x_vec: x is
 * 16-byte aligned (rows are then too: n_in % 8 == 0 for 8-chunks). */
template <class F, int NR>
__global__ void __launch_bounds__(DECODE_WARPS * 32)
    matvec_kernel(const uint8_t *__restrict__ w, int64_t n_in, int64_t n_out, size_t row_bytes,
                  const float *__restrict__ x, int nr, int x_vec, float *__restrict__ y,
                  int64_t y_stride, int accumulate)
{
    const int lane = threadIdx.x & 31;
    const int64_t o = (int64_t)blockIdx.x * DECODE_WARPS + (threadIdx.x >> 5);
    if (o >= n_out)
        return; /* whole warps leave: the shuffles below stay full-warp */
    const uint8_t *row = w + o * (int64_t)row_bytes;
    const int64_t n_chunks = n_in / F::CHUNK;

    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++)
        acc[r] = 0.0f;

    /* Batch invariance: a row must get the same products whether it comes
     * alone (here) or in a batch (the tensor cores, which take W and x as
     * f16), so outside F32 weights both are rounded to f16 here too; the
     * f16 x f16 products are exact in f32 and only the order of the sums
     * differs between the paths. */
    constexpr bool as_f16 =
        !std::is_same<F, fmt_f32x8>::value && !std::is_same<F, fmt_f32x1>::value;
#pragma unroll 2
    for (int64_t c = lane; c < n_chunks; c += 32) {
        float wv[F::CHUNK];
        F::load(row, c, wv);
        if (as_f16)
#pragma unroll
            for (int k = 0; k < F::CHUNK; k++)
                wv[k] = __half2float(__float2half_rn(wv[k]));
#pragma unroll
        for (int r = 0; r < NR; r++) {
            if (r < nr) {
                float xv[F::CHUNK];
                load_x<F::CHUNK>(x + r * n_in + c * F::CHUNK, x_vec != 0, xv);
                if (as_f16)
#pragma unroll
                    for (int k = 0; k < F::CHUNK; k++)
                        xv[k] = __half2float(__float2half_rn(xv[k]));
#pragma unroll
                for (int k = 0; k < F::CHUNK; k++)
                    acc[r] = fmaf(wv[k], xv[k], acc[r]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < NR; r++)
#pragma unroll
        for (int off = 16; off > 0; off >>= 1)
            acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);

    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < NR; r++) {
            if (r < nr) {
                float *p = y + r * y_stride + o;
                *p = accumulate ? *p + acc[r] : acc[r];
            }
        }
    }
}

template <class F, int NR>
static void launch_matvec(const void *w, int64_t n_in, int64_t n_out, size_t row_bytes,
                          const float *x, int n_rows, float *y, int64_t y_stride,
                          int accumulate, cudaStream_t s)
{
    const int64_t blocks = (n_out + DECODE_WARPS - 1) / DECODE_WARPS;
    const int x_vec = (uintptr_t)x % 16 == 0;
    matvec_kernel<F, NR><<<(unsigned)blocks, DECODE_WARPS * 32, 0, s>>>(
        (const uint8_t *)w, n_in, n_out, row_bytes, x, n_rows, x_vec, y, y_stride, accumulate);
}

template <class F>
static void matvec(const void *w, int64_t n_in, int64_t n_out, size_t row_bytes, const float *x,
                   int n_rows, float *y, int64_t y_stride, int accumulate, cudaStream_t s)
{
    /* rounded up to 1, 2, 4 or 8 templates; the kernel guards r < n_rows */
    if (n_rows <= 1)
        launch_matvec<F, 1>(w, n_in, n_out, row_bytes, x, n_rows, y, y_stride, accumulate, s);
    else if (n_rows <= 2)
        launch_matvec<F, 2>(w, n_in, n_out, row_bytes, x, n_rows, y, y_stride, accumulate, s);
    else if (n_rows <= 4)
        launch_matvec<F, 4>(w, n_in, n_out, row_bytes, x, n_rows, y, y_stride, accumulate, s);
    else
        launch_matvec<F, 8>(w, n_in, n_out, row_bytes, x, n_rows, y, y_stride, accumulate, s);
}

/* -------------------------------------------------- prefill: tensor cores */

namespace wmma = nvcuda::wmma;

constexpr int GM = 64;         /* activation rows per block */
constexpr int GN = 128;        /* outputs per block */
constexpr int GK = 32;         /* k per step */
constexpr int GLD = GK + 8;    /* smem row stride in halves: 80 bytes, conflict-free */
constexpr int G_THREADS = 256; /* 8 warps as 2 (rows) x 4 (outputs), 32 x 32 each */

/* x rows in scratch are padded to a whole number of k-steps with zeros. */
static int64_t xh_stride(int64_t n_in)
{
    return (n_in + GK - 1) / GK * GK;
}

__global__ void x_to_f16_kernel(const float *__restrict__ x, int64_t n_in, int n_rows,
                                __half *__restrict__ xh, int64_t ldx)
{
    const int64_t total = (int64_t)n_rows * ldx;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / ldx, k = i % ldx;
        xh[i] = __float2half_rn(k < n_in ? x[r * n_in + k] : 0.0f);
    }
}

/* Rows m0.. of the f16 activations, k0..k0+GK, into sx[GM][GLD]; rows past
 * n_rows are zero. */
__device__ __forceinline__ void load_x_tile(__half *sx, const __half *__restrict__ xh,
                                            int64_t ldx, int n_rows, int64_t m0, int64_t k0)
{
    for (int q = threadIdx.x; q < GM * GK / 8; q += G_THREADS) {
        const int r = q / (GK / 8), seg = q % (GK / 8);
        uint4 v = make_uint4(0, 0, 0, 0);
        if (m0 + r < n_rows)
            v = *(const uint4 *)(xh + (m0 + r) * ldx + k0 + 8 * seg);
        *(uint4 *)(sx + r * GLD + 8 * seg) = v;
    }
}

__device__ __forceinline__ uint32_t pack_half2(float a, float b)
{
    const __half2 h = __floats2half2_rn(a, b);
    return *(const uint32_t *)&h;
}

/* Weight rows n0.. (outputs), k0..k0+GK, dequantized to f16 into
 * sw[GN][GLD]; outputs past n_out and k past n_in are zero. */
template <class F>
__device__ __forceinline__ void load_w_tile(__half *sw, const uint8_t *__restrict__ w,
                                            int64_t n_in, int64_t n_out, size_t row_bytes,
                                            int64_t n0, int64_t k0)
{
    for (int q = threadIdx.x; q < GN * GK / 8; q += G_THREADS) {
        const int o = q / (GK / 8), seg = q % (GK / 8);
        const int64_t go = n0 + o, k = k0 + 8 * seg;
        const uint8_t *row = w + go * (int64_t)row_bytes;
        float v[8];
        if constexpr (F::CHUNK == 8) {
            /* n_in % 8 == 0 here, so a chunk is all in or all out */
            if (go < n_out && k < n_in) {
                F::load(row, k / 8, v);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++)
                    v[e] = 0.0f;
            }
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) {
                v[e] = 0.0f;
                if (go < n_out && k + e < n_in)
                    F::load(row, k + e, &v[e]);
            }
        }
        const uint4 h = make_uint4(pack_half2(v[0], v[1]), pack_half2(v[2], v[3]),
                                   pack_half2(v[4], v[5]), pack_half2(v[6], v[7]));
        *(uint4 *)(sw + o * GLD + 8 * seg) = h;
    }
}

template <class F>
__global__ void __launch_bounds__(G_THREADS)
    gemm_wmma_kernel(const uint8_t *__restrict__ w, int64_t n_in, int64_t n_out, size_t row_bytes,
                     const __half *__restrict__ xh, int64_t ldx, int n_rows,
                     float *__restrict__ y, int64_t y_stride, int accumulate)
{
    /* WMMA wants 32-byte aligned tile pointers: every fragment starts at a
     * multiple of 16 rows (1280 bytes) plus 0 or 16 halves (32 bytes). */
    __shared__ __align__(128) __half sx[2][GM * GLD];
    __shared__ __align__(128) __half sw[2][GN * GLD];
    __shared__ __align__(128) float stage[G_THREADS / 32][16 * 16];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wr = warp / 4, wc = warp % 4;
    const int64_t m0 = (int64_t)blockIdx.y * GM, n0 = (int64_t)blockIdx.x * GN;
    const int64_t n_k = (n_in + GK - 1) / GK;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::fill_fragment(acc[i][j], 0.0f);

    if (n_k > 0) {
        load_x_tile(sx[0], xh, ldx, n_rows, m0, 0);
        load_w_tile<F>(sw[0], w, n_in, n_out, row_bytes, n0, 0);
    }
    __syncthreads();

    for (int64_t t = 0; t < n_k; t++) {
        const int cur = (int)(t & 1);
        /* the other buffer was last read in step t-1, which ended in a sync */
        if (t + 1 < n_k) {
            load_x_tile(sx[cur ^ 1], xh, ldx, n_rows, m0, (t + 1) * GK);
            load_w_tile<F>(sw[cur ^ 1], w, n_in, n_out, row_bytes, n0, (t + 1) * GK);
        }
#pragma unroll
        for (int kk = 0; kk < GK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a[2];
            /* B[k][o] = W[o][k]: W's rows are B's columns */
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b[2];
#pragma unroll
            for (int i = 0; i < 2; i++)
                wmma::load_matrix_sync(a[i], sx[cur] + (wr * 32 + i * 16) * GLD + kk, GLD);
#pragma unroll
            for (int j = 0; j < 2; j++)
                wmma::load_matrix_sync(b[j], sw[cur] + (wc * 32 + j * 16) * GLD + kk, GLD);
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++)
                    wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }

    /* Through a per-warp staging tile: fragments have no defined element
     * order, and edge tiles need per-element guards. */
    float *st = stage[warp];
#pragma unroll
    for (int i = 0; i < 2; i++) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            wmma::store_matrix_sync(st, acc[i][j], 16, wmma::mem_row_major);
            __syncwarp();
            for (int e = lane; e < 256; e += 32) {
                const int64_t gr = m0 + wr * 32 + i * 16 + e / 16;
                const int64_t go = n0 + wc * 32 + j * 16 + e % 16;
                if (gr < n_rows && go < n_out) {
                    float *p = y + gr * y_stride + go;
                    *p = accumulate ? *p + st[e] : st[e];
                }
            }
            __syncwarp();
        }
    }
}

/* ------------------------------------------------- prefill: F32 weights */

constexpr int FT = 64;         /* rows and outputs per block */
constexpr int FK = 16;         /* k per step */
constexpr int F_THREADS = 256; /* 16 x 16 threads, 4 x 4 outputs each */

__global__ void __launch_bounds__(F_THREADS)
    gemm_f32_kernel(const uint8_t *__restrict__ w, int64_t n_in, int64_t n_out, size_t row_bytes,
                    const float *__restrict__ x, int n_rows, float *__restrict__ y,
                    int64_t y_stride, int accumulate)
{
    /* k-major so a thread's 4 rows (4 outputs) are one float4; +4 keeps
     * float4 alignment and spreads the transposing stores over banks */
    __shared__ __align__(16) float sx[FK][FT + 4];
    __shared__ __align__(16) float sw[FK][FT + 4];

    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int64_t m0 = (int64_t)blockIdx.y * FT, n0 = (int64_t)blockIdx.x * FT;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
            acc[i][j] = 0.0f;

    for (int64_t k0 = 0; k0 < n_in; k0 += FK) {
        for (int q = threadIdx.x; q < FT * FK; q += F_THREADS) {
            const int r = q / FK, kk = q % FK;
            const int64_t k = k0 + kk, gr = m0 + r, go = n0 + r;
            sx[kk][r] = gr < n_rows && k < n_in ? x[gr * n_in + k] : 0.0f;
            sw[kk][r] = go < n_out && k < n_in
                            ? ((const float *)(w + go * (int64_t)row_bytes))[k]
                            : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < FK; kk++) {
            const float4 a = *(const float4 *)&sx[kk][ty * 4];
            const float4 b = *(const float4 *)&sw[kk][tx * 4];
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int64_t gr = m0 + ty * 4 + i;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int64_t go = n0 + tx * 4 + j;
            if (gr < n_rows && go < n_out) {
                float *p = y + gr * y_stride + go;
                *p = accumulate ? *p + acc[i][j] : acc[i][j];
            }
        }
    }
}

/* -------------------------------------------------------------- get_rows */

constexpr int ROWS_THREADS = 256;

/* Block (i, yblock) writes chunks of out row i. Negative ids give zeros;
 * ids past the matrix cannot be checked (n_out is not passed). */
template <class F>
__global__ void __launch_bounds__(ROWS_THREADS)
    get_rows_kernel(const uint8_t *__restrict__ w, int64_t n_in, size_t row_bytes,
                    const int32_t *__restrict__ ids, float scale, float *__restrict__ out)
{
    const int64_t i = blockIdx.x;
    const int32_t id = ids[i];
    const uint8_t *row = w + (int64_t)(id < 0 ? 0 : id) * (int64_t)row_bytes;
    float *dst = out + i * n_in;
    const int64_t n_chunks = n_in / F::CHUNK;
    for (int64_t c = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; c < n_chunks;
         c += (int64_t)gridDim.y * blockDim.x) {
        float v[F::CHUNK];
        if (id >= 0) {
            F::load(row, c, v);
        } else {
#pragma unroll
            for (int k = 0; k < F::CHUNK; k++)
                v[k] = 0.0f;
        }
#pragma unroll
        for (int k = 0; k < F::CHUNK; k++)
            dst[c * F::CHUNK + k] = __fmul_rn(v[k], scale); /* as the host's deq * scale */
    }
}

/* ---------------------------------------------------------------- launchers */

extern "C" int exsa_cuda_matmul_supports(int type)
{
    return block_elems(type) != 0;
}

static bool uses_tensor_cores(int type, int n_rows)
{
    return n_rows > DECODE_MAX_ROWS && type != EXSA_TYPE_F32;
}

extern "C" size_t exsa_cuda_matmul_scratch_bytes(int type, int64_t n_in, int64_t n_out,
                                                 int n_rows)
{
    (void)n_out;
    if (!exsa_cuda_matmul_supports(type) || n_in < 0 || !uses_tensor_cores(type, n_rows))
        return 0;
    return (size_t)n_rows * (size_t)xh_stride(n_in) * sizeof(__half);
}

extern "C" int exsa_cuda_matmul(const void *w, int type, int64_t n_in, int64_t n_out,
                                size_t row_bytes, const float *x, float *y, int64_t y_stride,
                                int n_rows, int accumulate, void *scratch, cudaStream_t s)
{
    if (n_rows <= 0 || n_out <= 0)
        return 0;
    if (!args_ok(w, type, n_in, row_bytes) || x == NULL || y == NULL || y_stride < n_out)
        return (int)cudaErrorInvalidValue;
    const bool x8 = float_rows_x8(w, n_in, row_bytes);

    if (n_rows <= DECODE_MAX_ROWS) {
        if ((n_out + DECODE_WARPS - 1) / DECODE_WARPS > INT32_MAX)
            return (int)cudaErrorInvalidValue;
        with_format(type, x8, [&](auto f) {
            matvec<decltype(f)>(w, n_in, n_out, row_bytes, x, n_rows, y, y_stride, accumulate, s);
            return 0;
        });
        return (int)cudaGetLastError();
    }

    if ((n_rows + GM - 1) / GM > 65535 || (n_out + GN - 1) / GN > INT32_MAX)
        return (int)cudaErrorInvalidValue;

    if (type == EXSA_TYPE_F32) {
        const dim3 grid((unsigned)((n_out + FT - 1) / FT), (unsigned)((n_rows + FT - 1) / FT));
        gemm_f32_kernel<<<grid, F_THREADS, 0, s>>>((const uint8_t *)w, n_in, n_out, row_bytes, x,
                                                   n_rows, y, y_stride, accumulate);
        return (int)cudaGetLastError();
    }

    __half *xh = (__half *)scratch;
    const int64_t ldx = xh_stride(n_in);
    const int64_t total = (int64_t)n_rows * ldx;
    if (total > 0) {
        /* the f16 rows are read 16 bytes at a time */
        if (scratch == NULL || (uintptr_t)scratch % 16 != 0)
            return (int)cudaErrorInvalidValue;
        int64_t blocks = (total + 255) / 256;
        if (blocks > 4096)
            blocks = 4096; /* grid-stride beyond that */
        x_to_f16_kernel<<<(unsigned)blocks, 256, 0, s>>>(x, n_in, n_rows, xh, ldx);
        const cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess)
            return (int)err;
    }
    const dim3 grid((unsigned)((n_out + GN - 1) / GN), (unsigned)((n_rows + GM - 1) / GM));
    with_format(type, x8, [&](auto f) {
        using F = decltype(f);
        if constexpr (!std::is_same<F, fmt_f32x8>::value && !std::is_same<F, fmt_f32x1>::value)
            gemm_wmma_kernel<F><<<grid, G_THREADS, 0, s>>>((const uint8_t *)w, n_in, n_out,
                                                           row_bytes, xh, ldx, n_rows, y,
                                                           y_stride, accumulate);
        return 0;
    });
    return (int)cudaGetLastError();
}

extern "C" int exsa_cuda_get_rows(const void *w, int type, int64_t n_in, size_t row_bytes,
                                  const int32_t *ids, int n, float scale, float *out,
                                  cudaStream_t s)
{
    if (n <= 0 || n_in == 0)
        return 0;
    if (!args_ok(w, type, n_in, row_bytes) || ids == NULL || out == NULL)
        return (int)cudaErrorInvalidValue;
    const bool x8 = float_rows_x8(w, n_in, row_bytes);
    return with_format(type, x8, [&](auto f) {
        using F = decltype(f);
        int64_t yblocks = (n_in / F::CHUNK + ROWS_THREADS - 1) / ROWS_THREADS;
        if (yblocks > 65535)
            yblocks = 65535; /* the kernel strides over the rest */
        const dim3 grid((unsigned)n, (unsigned)yblocks);
        get_rows_kernel<F><<<grid, ROWS_THREADS, 0, s>>>((const uint8_t *)w, n_in, row_bytes,
                                                         ids, scale, out);
        return (int)cudaGetLastError();
    });
}
