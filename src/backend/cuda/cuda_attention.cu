/* CUDA backend: KV stores and paged attention (cuda_kernels.h).
 *
 * kv_store: one block per (row, K or V); F32 copies, F16 rounds as
 * exsa_fp32_to_fp16 (ported bit for bit, NaN payloads included), Q8_0 gives
 * each 32-element block to a warp, which forms the block's amax in the CPU
 * reference's order (exsa_quantize_row_q8_0_ref) so the bytes are the same.
 *
 * attention: split-context ("flash decoding") in two kernels.
 *   attn_partial: grid (kv head x head group, row, split). A block serves up
 *   to ATTN_GMAX query heads of one kv head (GQA: the K/V it loads serve all
 *   of them) for one row, over the split's slice of the row's visible
 *   context [lo, n_ctx) (lo the window's start). It walks that slice in
 *   tiles of T tokens: token slots through the row's block table, K and V
 *   head slices into shared memory as f32 (coalesced, 16-byte loads where
 *   alignment allows), scores (one thread per (head, token), the dot read
 *   in a rotated order so the lanes of a warp hit distinct banks), an
 *   online softmax per head (one warp per head, exp2 domain), then the
 *   weighted V sum (one thread per (head, dim), accumulators in registers).
 *   It writes the unnormalised partial (m, l, acc) to scratch, or, when
 *   there is one split, the finished output.
 *   attn_reduce: grid (head, row) combines the splits' partials.
 * The number of splits depends on n_rows and cap_ctx only (host values
 * that stay put between steps), so a recorded graph stays valid; blocks
 * whose slice is empty for this step's n_ctx exit at once after writing
 * an empty marker. Decode (few rows) gets up to ATTN_ROW_SPLITS / n_rows
 * splits of at least ATTN_MIN_CHUNK tokens; big batches (prefill) one.
 */
#include <stdint.h>

#include <cuda_fp16.h>

#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_reduce.cuh"
#include "quant/quant.h"

#define ATTN_THREADS 128
#define ATTN_GMAX 8          /* query heads per block */
#define ATTN_MIN_CHUNK 64    /* tokens per split, at least */
#define ATTN_ROW_SPLITS 256  /* n_rows * n_split, at most (when n_rows < it) */
#define ATTN_MAX_D 256

/* ---- device helpers ----------------------------------------------------- */

/* exsa_fp32_to_fp16 (quant.c), the same bits for every input. */
static __device__ uint16_t fp32_to_fp16(float f)
{
    const uint32_t u = __float_as_uint(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) {
        uint32_t h = (a >> 13) - (112u << 10);
        const uint32_t rem = a & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
            h++;
        return (uint16_t)(sign | h);
    }
    if (a <= 0x33000000u)
        return (uint16_t)sign;
    const uint32_t e = a >> 23;
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

static __device__ float fp16_bits_to_fp32(uint16_t h)
{
    return __half2float(__ushort_as_half(h));
}

/* quant.c's round_i8: NaN gives 0, else roundf clamped to [-128, 127]. */
static __device__ int8_t round_i8(float v)
{
    if (v != v)
        return 0;
    const float r = roundf(v);
    if (r >= 127.0f)
        return 127;
    if (r <= -128.0f)
        return -128;
    return (int8_t)r;
}

/* ---- kv_store ----------------------------------------------------------- */

/* blockIdx.x: row, blockIdx.y: 0 for K, 1 for V. */
static __global__ void kv_store_kernel(char *kc, char *vc, int type, size_t token_bytes,
                                       const float *k, const float *v, const int32_t *slots,
                                       int n_elem)
{
    const int r = blockIdx.x;
    const int32_t slot = slots[r];
    if (slot < 0) /* no slot: the caller keeps this row out of the cache */
        return;
    const float *src = (blockIdx.y ? v : k) + (size_t)r * (size_t)n_elem;
    char *dst = (blockIdx.y ? vc : kc) + (size_t)slot * token_bytes;
    if (type == EXSA_TYPE_F32) {
        float *d = reinterpret_cast<float *>(dst);
        for (int i = threadIdx.x; i < n_elem; i += blockDim.x)
            d[i] = src[i];
    } else if (type == EXSA_TYPE_F16) {
        uint16_t *d = reinterpret_cast<uint16_t *>(dst);
        for (int i = threadIdx.x; i < n_elem; i += blockDim.x)
            d[i] = fp32_to_fp16(src[i]);
    } else { /* Q8_0: a warp per block of 32, lane j its element j */
        const int lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
        for (int b = threadIdx.x >> 5; b < n_elem / EXSA_QK8_0; b += n_warps) {
            const float x = src[b * EXSA_QK8_0 + lane];
            const float ax = fabsf(x);
            /* the reference's scan, element by element: its NaN behaviour
             * depends on the order */
            float amax = 0.0f;
            for (int j = 0; j < EXSA_QK8_0; j++) {
                const float vj = __shfl_sync(0xffffffffu, ax, j);
                amax = amax > vj ? amax : vj;
            }
            const float d = __fdiv_rn(amax, 127.0f);
            const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
            char *blk = dst + (size_t)b * sizeof(exsa_block_q8_0);
            blk[2 + lane] = (char)round_i8(__fmul_rn(x, id));
            if (lane == 0) /* blocks are 34 bytes: d is 2-byte aligned */
                *reinterpret_cast<uint16_t *>(blk) = fp32_to_fp16(d);
        }
    }
}

extern "C" int exsa_cuda_kv_store(const exsa_kv_layer *kv, const float *k, const float *v,
                                  const int32_t *slots, int n_rows, cudaStream_t s)
{
    const int64_t n_elem = (int64_t)kv->n_kv_head * kv->head_dim;
    if (n_rows <= 0 || n_elem <= 0)
        return 0;
    if (n_elem > INT32_MAX)
        return (int)cudaErrorInvalidValue;
    if (kv->type != EXSA_TYPE_F32 && kv->type != EXSA_TYPE_F16 && kv->type != EXSA_TYPE_Q8_0)
        return (int)cudaErrorInvalidValue;
    if (kv->type == EXSA_TYPE_Q8_0 && n_elem % EXSA_QK8_0 != 0)
        return (int)cudaErrorInvalidValue; /* the model layer refuses such a cache */
    kv_store_kernel<<<dim3((unsigned)n_rows, 2), 128, 0, s>>>(
        (char *)kv->k, (char *)kv->v, kv->type, kv->token_bytes, k, v, slots, (int)n_elem);
    return launch_status();
}

/* ---- attention ------------------------------------------------------------ */

typedef struct attn_params {
    const float *q;
    float *out;
    const int32_t *n_ctx, *row_tab, *block_table;
    const char *k, *v;
    size_t token_bytes;
    int bt_stride, block_size;
    int n_head, head_dim, group, n_hgroups;
    int window, n_split, chunk_len;
    int vec;          /* head slices may be read in VEC-element units */
    float q_scale;    /* scale * log2(e): scores in the exp2 domain */
    float *part_ml;   /* [n_rows][n_head][n_split][2]: m, l */
    float *part_acc;  /* [n_rows][n_head][n_split][head_dim] */
} attn_params;

/* Elements per vector load of a head slice: 16 bytes of F32 or F16, two
 * Q8_0 quants (a 2-byte load: blocks are only 2-byte aligned). */
template <int TYPE> struct kv_vec { enum { N = TYPE == EXSA_TYPE_F32 ? 4 : TYPE == EXSA_TYPE_F16 ? 8 : 2 }; };

/* Elements e .. e + n - 1 (n = 1, or kv_vec N with e a multiple of it) of a
 * token row (all kv heads) as f32 into dst (16-byte aligned when n >= 4). */
template <int TYPE>
static __device__ void load_elems(const char *row, int e, int n, float *dst)
{
    if (TYPE == EXSA_TYPE_F32) {
        const float *p = reinterpret_cast<const float *>(row) + e;
        if (n == 4) {
            *reinterpret_cast<float4 *>(dst) = *reinterpret_cast<const float4 *>(p);
        } else {
            dst[0] = p[0];
        }
    } else if (TYPE == EXSA_TYPE_F16) {
        const uint16_t *p = reinterpret_cast<const uint16_t *>(row) + e;
        if (n == 8) {
            const uint4 raw = *reinterpret_cast<const uint4 *>(p);
            const __half2 *h = reinterpret_cast<const __half2 *>(&raw);
            float2 f0 = __half22float2(h[0]), f1 = __half22float2(h[1]);
            float2 f2 = __half22float2(h[2]), f3 = __half22float2(h[3]);
            reinterpret_cast<float4 *>(dst)[0] = make_float4(f0.x, f0.y, f1.x, f1.y);
            reinterpret_cast<float4 *>(dst)[1] = make_float4(f2.x, f2.y, f3.x, f3.y);
        } else {
            dst[0] = fp16_bits_to_fp32(p[0]);
        }
    } else {
        const char *blk = row + (size_t)(e / EXSA_QK8_0) * sizeof(exsa_block_q8_0);
        const int j = e % EXSA_QK8_0;
        const float d = fp16_bits_to_fp32(*reinterpret_cast<const uint16_t *>(blk));
        if (n == 2) {
            const uint16_t pair = *reinterpret_cast<const uint16_t *>(blk + 2 + j);
            dst[0] = d * (float)(int8_t)(pair & 0xffu);
            dst[1] = d * (float)(int8_t)(pair >> 8);
        } else {
            dst[0] = d * (float)(int8_t)blk[2 + j];
        }
    }
}

/* Tokens per tile: K and V tiles of T * DMAX floats each fit 48 KiB of
 * static shared memory beside q. */
template <int DMAX> struct attn_tile { enum { T = DMAX <= 128 ? 32 : 16 }; };

template <int TYPE, int DMAX>
static __global__ void __launch_bounds__(ATTN_THREADS)
attn_partial(const attn_params p)
{
    enum { T = attn_tile<DMAX>::T, NACC = ATTN_GMAX * DMAX / ATTN_THREADS, VEC = kv_vec<TYPE>::N };
    __shared__ __align__(16) float q_s[ATTN_GMAX * DMAX];
    __shared__ __align__(16) float k_s[T * DMAX];
    __shared__ __align__(16) float v_s[T * DMAX];
    __shared__ float p_s[ATTN_GMAX * T];
    __shared__ int32_t slot_s[T];
    __shared__ float m_s[ATTN_GMAX], l_s[ATTN_GMAX], alpha_s[ATTN_GMAX];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int D = p.head_dim;
    const int kvh = blockIdx.x / p.n_hgroups, hgrp = blockIdx.x % p.n_hgroups;
    const int r = blockIdx.y, split = blockIdx.z;
    const int h0 = kvh * p.group + hgrp * ATTN_GMAX; /* first query head */
    const int gh = min(ATTN_GMAX, p.group - hgrp * ATTN_GMAX);

    const int hi = p.n_ctx[r];
    const int lo = p.window > 0 && hi > p.window ? hi - p.window : 0;
    int c0 = split * p.chunk_len;
    /* the last split takes any rest, should n_ctx exceed cap_ctx */
    const int c1 = split == p.n_split - 1 ? hi : min(hi, c0 + p.chunk_len);
    c0 = max(c0, lo);

    const size_t row_q = (size_t)r * (size_t)p.n_head * (size_t)D;
    /* partial index of query head h0 + j: (r * n_head + h0 + j) * n_split + split */
    const size_t part0 = ((size_t)r * (size_t)p.n_head + (size_t)h0) * (size_t)p.n_split + split;

    if (c0 >= c1) { /* nothing visible in this slice: an empty marker */
        if (p.n_split == 1) {
            for (int i = tid; i < gh * D; i += ATTN_THREADS)
                p.out[row_q + (size_t)h0 * D + i] = 0.0f;
        } else if (tid < gh) {
            p.part_ml[(part0 + (size_t)tid * p.n_split) * 2] = -INFINITY;
            p.part_ml[(part0 + (size_t)tid * p.n_split) * 2 + 1] = 0.0f;
        }
        return;
    }

    for (int i = tid; i < gh * D; i += ATTN_THREADS)
        q_s[i] = p.q[row_q + (size_t)h0 * D + i] * p.q_scale;
    if (tid < ATTN_GMAX) {
        m_s[tid] = -INFINITY;
        l_s[tid] = 0.0f;
    }
    float acc[NACC];
#pragma unroll
    for (int a = 0; a < NACC; a++)
        acc[a] = 0.0f;

    const int32_t *table = p.block_table + (size_t)p.row_tab[r] * (size_t)p.bt_stride;
    const int bs = p.block_size;
    const int ev = p.vec ? VEC : 1;    /* elements per load */
    const int upt = D / ev;            /* loads per token and head slice */
    const int e_head = kvh * D;        /* the head slice's first element in a token row */

    for (int t0 = c0; t0 < c1; t0 += T) {
        const int nt = min(T, c1 - t0);
        if (tid < nt) {
            const int pos = t0 + tid;
            slot_s[tid] = table[pos / bs] * bs + pos % bs;
        }
        /* also: the previous tile's readers of k_s, v_s, p_s are done */
        __syncthreads();

        for (int u = tid; u < nt * upt; u += ATTN_THREADS) {
            const int t = u / upt, e = (u - t * upt) * ev;
            const size_t off = (size_t)slot_s[t] * p.token_bytes;
            load_elems<TYPE>(p.k + off, e_head + e, ev, k_s + t * D + e);
            load_elems<TYPE>(p.v + off, e_head + e, ev, v_s + t * D + e);
        }
        __syncthreads();

        /* scores: thread per (head j, token t); token t starts its dot at
         * dim t % D so the lanes of a warp read distinct banks */
        for (int idx = tid; idx < gh * T; idx += ATTN_THREADS) {
            const int j = idx / T, t = idx - j * T;
            float sc = -INFINITY;
            if (t < nt) {
                const float *qr = q_s + j * D, *kr = k_s + t * D;
                int i = t % D;
                float s0 = 0.0f;
                for (int c = 0; c < D; c++) { /* one trip count for every lane */
                    s0 = fmaf(qr[i], kr[i], s0);
                    i = i + 1 == D ? 0 : i + 1;
                }
                sc = s0;
            }
            p_s[idx] = sc;
        }
        __syncthreads();

        /* online softmax: warp per head, lane per token */
        for (int j = warp; j < gh; j += ATTN_THREADS / 32) {
            const float sc = lane < T ? p_s[j * T + lane] : -INFINITY;
            float tmax = sc;
            for (int o = 16; o > 0; o >>= 1)
                tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
            const float m_old = m_s[j];
            const float m_new = fmaxf(m_old, tmax); /* finite: the tile's first token is visible */
            const float e = lane < nt ? exp2f(sc - m_new) : 0.0f;
            float sum = e;
            for (int o = 16; o > 0; o >>= 1)
                sum += __shfl_xor_sync(0xffffffffu, sum, o);
            if (lane < T)
                p_s[j * T + lane] = e;
            if (lane == 0) {
                const float alpha = exp2f(m_old - m_new); /* 0 on the first tile */
                alpha_s[j] = alpha;
                l_s[j] = l_s[j] * alpha + sum;
                m_s[j] = m_new;
            }
        }
        __syncthreads();

        /* acc (head j, dim d) = acc * alpha_j + sum_t p_jt v_td */
#pragma unroll
        for (int a = 0; a < NACC; a++) {
            const int idx = tid + a * ATTN_THREADS;
            if (idx < gh * D) {
                const int j = idx / D, d = idx - j * D;
                const float *pj = p_s + j * T;
                float x = acc[a] * alpha_s[j];
#pragma unroll 4
                for (int t = 0; t < nt; t++)
                    x = fmaf(pj[t], v_s[t * D + d], x);
                acc[a] = x;
            }
        }
    }

    /* m_s and l_s were last written before the V sum's barrier */
#pragma unroll
    for (int a = 0; a < NACC; a++) {
        const int idx = tid + a * ATTN_THREADS;
        if (idx < gh * D) {
            const int j = idx / D, d = idx - j * D;
            if (p.n_split == 1)
                p.out[row_q + (size_t)(h0 + j) * D + d] = acc[a] / l_s[j];
            else
                p.part_acc[(part0 + (size_t)j * p.n_split) * D + d] = acc[a];
        }
    }
    if (p.n_split > 1 && tid < gh) {
        p.part_ml[(part0 + (size_t)tid * p.n_split) * 2] = m_s[tid];
        p.part_ml[(part0 + (size_t)tid * p.n_split) * 2 + 1] = l_s[tid];
    }
}

/* out[r][h] = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s over the
 * non-empty splits; grid (head, row). */
static __global__ void __launch_bounds__(ATTN_THREADS)
attn_reduce(const float *part_ml, const float *part_acc, float *out, int n_head, int head_dim,
            int n_split)
{
    __shared__ float red[32];
    __shared__ float w_s[ATTN_ROW_SPLITS];
    const int h = blockIdx.x, r = blockIdx.y, D = head_dim;
    const size_t base = ((size_t)r * n_head + h) * (size_t)n_split;
    float *o = out + ((size_t)r * n_head + h) * (size_t)D;

    float m = -INFINITY;
    for (int s = threadIdx.x; s < n_split; s += blockDim.x)
        m = fmaxf(m, part_ml[(base + s) * 2]);
    const float M = block_max(m, red);
    if (M == -INFINITY) { /* no visible token at all (n_ctx 0) */
        for (int d = threadIdx.x; d < D; d += blockDim.x)
            o[d] = 0.0f;
        return;
    }
    __syncthreads(); /* red is reused */
    float l = 0.0f;
    for (int s = threadIdx.x; s < n_split; s += blockDim.x) {
        const float ms = part_ml[(base + s) * 2];
        const float w = ms == -INFINITY ? 0.0f : exp2f(ms - M);
        w_s[s] = w;
        l += w * part_ml[(base + s) * 2 + 1];
    }
    const float L = block_sum(l, red); /* its barrier also publishes w_s */
    const float inv = 1.0f / L;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float x = 0.0f;
        for (int s = 0; s < n_split; s++) {
            const float w = w_s[s];
            if (w != 0.0f) /* empty splits' acc was never written */
                x = fmaf(w, part_acc[(base + s) * D + d], x);
        }
        o[d] = x * inv;
    }
}

static int attn_n_split(const exsa_attn_args *a)
{
    int by_ctx = (a->cap_ctx + ATTN_MIN_CHUNK - 1) / ATTN_MIN_CHUNK;
    const int by_rows = (ATTN_ROW_SPLITS + a->n_rows - 1) / a->n_rows;
    if (by_ctx > by_rows)
        by_ctx = by_rows;
    return by_ctx > 1 ? by_ctx : 1;
}

extern "C" size_t exsa_cuda_attention_scratch_bytes(const exsa_attn_args *a)
{
    if (a->n_rows <= 0)
        return 0;
    const int n_split = attn_n_split(a);
    if (n_split == 1) /* the partial kernel writes out directly */
        return 0;
    return (size_t)a->n_rows * (size_t)a->n_head * (size_t)n_split *
           ((size_t)a->kv->head_dim + 2) * sizeof(float);
}

template <int TYPE, int DMAX>
static void launch_partial(dim3 grid, const attn_params &p, cudaStream_t s)
{
    attn_partial<TYPE, DMAX><<<grid, ATTN_THREADS, 0, s>>>(p);
}

template <int DMAX>
static void launch_partial_type(int type, dim3 grid, const attn_params &p, cudaStream_t s)
{
    if (type == EXSA_TYPE_F32)
        launch_partial<EXSA_TYPE_F32, DMAX>(grid, p, s);
    else if (type == EXSA_TYPE_F16)
        launch_partial<EXSA_TYPE_F16, DMAX>(grid, p, s);
    else
        launch_partial<EXSA_TYPE_Q8_0, DMAX>(grid, p, s);
}

/* Whether head slices can be read in kv_vec units: every slice start
 * (slot * token_bytes + kv head * head_dim elements) aligned for them. */
static int attn_vec_ok(const exsa_kv_layer *kv)
{
    const uintptr_t addr = (uintptr_t)kv->k | (uintptr_t)kv->v | (uintptr_t)kv->token_bytes;
    switch (kv->type) {
    case EXSA_TYPE_F32:
        return kv->head_dim % 4 == 0 && addr % 16 == 0;
    case EXSA_TYPE_F16:
        return kv->head_dim % 8 == 0 && addr % 16 == 0;
    default: /* Q8_0: quant pairs at even offsets of 2-byte aligned blocks */
        return kv->head_dim % 2 == 0 && addr % 2 == 0;
    }
}

extern "C" int exsa_cuda_attention(const exsa_attn_args *a, void *scratch, cudaStream_t s)
{
    const exsa_kv_layer *kv = a->kv;
    if (a->n_rows <= 0)
        return 0;
    const int D = kv->head_dim, n_kv = kv->n_kv_head;
    if (D <= 0 || D > ATTN_MAX_D || n_kv <= 0 || a->n_head <= 0 || a->n_head % n_kv != 0 ||
        a->n_rows > 65535 || kv->block_size <= 0)
        return (int)cudaErrorInvalidValue;
    if (kv->type != EXSA_TYPE_F32 && kv->type != EXSA_TYPE_F16 && kv->type != EXSA_TYPE_Q8_0)
        return (int)cudaErrorInvalidValue;
    if (kv->type == EXSA_TYPE_Q8_0 && ((int64_t)n_kv * D) % EXSA_QK8_0 != 0)
        return (int)cudaErrorInvalidValue;

    attn_params p;
    p.q = a->q;
    p.out = a->out;
    p.n_ctx = a->n_ctx;
    p.row_tab = a->row_tab;
    p.block_table = a->block_table;
    p.k = (const char *)kv->k;
    p.v = (const char *)kv->v;
    p.token_bytes = kv->token_bytes;
    p.bt_stride = a->bt_stride;
    p.block_size = kv->block_size;
    p.n_head = a->n_head;
    p.head_dim = D;
    p.group = a->n_head / n_kv;
    p.n_hgroups = (p.group + ATTN_GMAX - 1) / ATTN_GMAX;
    p.window = a->window;
    p.n_split = attn_n_split(a);
    p.chunk_len = a->cap_ctx > 0 ? (a->cap_ctx + p.n_split - 1) / p.n_split : 1;
    p.vec = attn_vec_ok(kv);
    p.q_scale = a->scale * 1.44269504088896341f;
    const size_t n_part = (size_t)a->n_rows * (size_t)a->n_head * (size_t)p.n_split;
    p.part_ml = (float *)scratch;
    p.part_acc = p.n_split > 1 ? (float *)scratch + 2 * n_part : NULL;
    if (p.n_split > 1 && !scratch)
        return (int)cudaErrorInvalidValue;

    const dim3 grid((unsigned)(n_kv * p.n_hgroups), (unsigned)a->n_rows, (unsigned)p.n_split);
    if (D <= 128)
        launch_partial_type<128>(kv->type, grid, p, s);
    else
        launch_partial_type<256>(kv->type, grid, p, s);
    int err = launch_status();
    if (err != 0 || p.n_split == 1)
        return err;
    attn_reduce<<<dim3((unsigned)a->n_head, (unsigned)a->n_rows), ATTN_THREADS, 0, s>>>(
        p.part_ml, p.part_acc, a->out, a->n_head, D, p.n_split);
    return launch_status();
}
