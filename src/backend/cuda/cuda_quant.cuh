/* Device dequantization of GGUF weight formats, private to the CUDA kernels.
 *
 * Each format is a struct with CHUNK (elements per load, 8 or 1) and
 * load(row, c, v): v[0..CHUNK) = elements [CHUNK*c, CHUNK*c + CHUNK) of the
 * weight row starting at `row`. Eight contiguous elements always lie in one
 * quantization group (16 or 32 long), so a chunk needs one scale.
 *
 * The floats are bit-equal to quant.c / quant_k.c's scalar dequantizers:
 * those are built with FP contraction off, so every multiply and add here is
 * an explicit __fmul_rn / __fadd_rn / __fsub_rn that nvcc never fuses.
 *
 * Alignment: the matrix starts 16-byte aligned and every block size is even
 * (18 .. 210 bytes), so block fields are only known to be 2-byte aligned;
 * quantized bytes are read with 16-bit loads. The float formats' 8-chunks
 * read 16 bytes at once and are only used when the launcher checked that
 * the base and row_bytes are multiples of 16.
 */
#ifndef EXSA_CUDA_QUANT_CUH
#define EXSA_CUDA_QUANT_CUH

#include <stdint.h>

#include <cuda_fp16.h>

namespace exsa_cuda {

__device__ __forceinline__ uint32_t ld_u16(const uint8_t *p)
{
    return *(const uint16_t *)p;
}

__device__ __forceinline__ float ld_f16(const uint8_t *p)
{
    return __half2float(__ushort_as_half((unsigned short)ld_u16(p)));
}

/* Eight bytes from a 2-byte aligned address. */
struct bytes8 {
    uint32_t lo, hi;
    __device__ __forceinline__ uint32_t operator[](int k) const
    {
        return ((k < 4 ? lo : hi) >> (8 * (k & 3))) & 0xffu;
    }
};

__device__ __forceinline__ bytes8 ld_bytes8(const uint8_t *p)
{
    bytes8 b;
    b.lo = ld_u16(p) | (ld_u16(p + 2) << 16);
    b.hi = ld_u16(p + 4) | (ld_u16(p + 6) << 16);
    return b;
}

/* Block and chunk-within-block of chunk c for blocks of BLOCK elements. */
template <int BLOCK, int BYTES>
struct blocked {
    static constexpr int CHUNK = 8;
    static constexpr int SUBS = BLOCK / 8;
    __device__ static __forceinline__ const uint8_t *block(const uint8_t *row, int64_t c)
    {
        return row + (c / SUBS) * BYTES;
    }
};

/* ------------------------------------------------------------ float formats */

struct fmt_f32x8 {
    static constexpr int CHUNK = 8;
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const float4 *p = (const float4 *)(row + 32 * c);
        const float4 a = p[0], b = p[1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    }
};

struct fmt_f16x8 {
    static constexpr int CHUNK = 8;
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const uint4 q = *(const uint4 *)(row + 16 * c);
        const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[2 * k] = __half2float(__ushort_as_half((unsigned short)(w[k] & 0xffffu)));
            v[2 * k + 1] = __half2float(__ushort_as_half((unsigned short)(w[k] >> 16)));
        }
    }
};

struct fmt_bf16x8 {
    static constexpr int CHUNK = 8;
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const uint4 q = *(const uint4 *)(row + 16 * c);
        const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[2 * k] = __uint_as_float(w[k] << 16);
            v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
        }
    }
};

/* One element at a time: rows of any length or alignment. */
struct fmt_f32x1 {
    static constexpr int CHUNK = 1;
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        v[0] = ((const float *)row)[c];
    }
};

struct fmt_f16x1 {
    static constexpr int CHUNK = 1;
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        v[0] = ld_f16(row + 2 * c);
    }
};

struct fmt_bf16x1 {
    static constexpr int CHUNK = 1;
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        v[0] = __uint_as_float(ld_u16(row + 2 * c) << 16);
    }
};

/* ------------------------------------------------------- 32-element blocks */

/* In Q4_x/Q5_x, element e < 16 is the low nibble of qs[e], e >= 16 the high
 * nibble of qs[e - 16]: chunk s (0..3) reads qs[8 (s&1) ..] at shift 4 (s>>1). */

struct fmt_q4_0 : blocked<32, 18> { /* d, qs[16] */
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const uint8_t *b = block(row, c);
        const int s = (int)(c % SUBS);
        const float d = ld_f16(b);
        const bytes8 q = ld_bytes8(b + 2 + 8 * (s & 1));
        const int sh = 4 * (s >> 1);
#pragma unroll
        for (int k = 0; k < 8; k++)
            v[k] = __fmul_rn((float)((int)((q[k] >> sh) & 0xfu) - 8), d);
    }
};

struct fmt_q4_1 : blocked<32, 20> { /* d, m, qs[16] */
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const uint8_t *b = block(row, c);
        const int s = (int)(c % SUBS);
        const float d = ld_f16(b), m = ld_f16(b + 2);
        const bytes8 q = ld_bytes8(b + 4 + 8 * (s & 1));
        const int sh = 4 * (s >> 1);
#pragma unroll
        for (int k = 0; k < 8; k++)
            v[k] = __fadd_rn(__fmul_rn((float)((q[k] >> sh) & 0xfu), d), m);
    }
};

struct fmt_q5_0 : blocked<32, 22> { /* d, qh[4], qs[16] */
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const uint8_t *b = block(row, c);
        const int s = (int)(c % SUBS);
        const float d = ld_f16(b);
        const uint32_t qh = ld_u16(b + 2) | (ld_u16(b + 4) << 16); /* bit e: element e */
        const bytes8 q = ld_bytes8(b + 6 + 8 * (s & 1));
        const int sh = 4 * (s >> 1);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const uint32_t h = ((qh >> (8 * s + k)) & 1u) << 4;
            v[k] = __fmul_rn((float)((int)(((q[k] >> sh) & 0xfu) | h) - 16), d);
        }
    }
};

struct fmt_q5_1 : blocked<32, 24> { /* d, m, qh[4], qs[16] */
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const uint8_t *b = block(row, c);
        const int s = (int)(c % SUBS);
        const float d = ld_f16(b), m = ld_f16(b + 2);
        const uint32_t qh = ld_u16(b + 4) | (ld_u16(b + 6) << 16);
        const bytes8 q = ld_bytes8(b + 8 + 8 * (s & 1));
        const int sh = 4 * (s >> 1);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const uint32_t h = ((qh >> (8 * s + k)) & 1u) << 4;
            v[k] = __fadd_rn(__fmul_rn((float)(((q[k] >> sh) & 0xfu) | h), d), m);
        }
    }
};

struct fmt_q8_0 : blocked<32, 34> { /* d, qs[32] signed */
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const uint8_t *b = block(row, c);
        const int s = (int)(c % SUBS);
        const float d = ld_f16(b);
        const bytes8 q = ld_bytes8(b + 2 + 8 * s);
#pragma unroll
        for (int k = 0; k < 8; k++)
            v[k] = __fmul_rn((float)(int8_t)q[k], d);
    }
};

/* ------------------------------------------------------------- K-quants */

/* Element e of a 256 super-block in Q2_K/Q3_K: 2 bits of qs[32 (e/128) + e%32]
 * at shift 2 ((e%128)/32). A chunk starts at e0 = 8 s. */

struct fmt_q2_K : blocked<256, 84> { /* scales[16], qs[64], d, dmin */
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const uint8_t *b = block(row, c);
        const int e0 = 8 * (int)(c % SUBS);
        const float d = ld_f16(b + 80), dmin = ld_f16(b + 82);
        const uint32_t sc = b[e0 / 16];
        const float dl = __fmul_rn(d, (float)(sc & 0xfu));
        const float ml = __fmul_rn(dmin, (float)(sc >> 4));
        const bytes8 q = ld_bytes8(b + 16 + 32 * (e0 / 128) + e0 % 32);
        const int sh = 2 * ((e0 % 128) / 32);
#pragma unroll
        for (int k = 0; k < 8; k++)
            v[k] = __fsub_rn(__fmul_rn(dl, (float)((q[k] >> sh) & 3u)), ml);
    }
};

struct fmt_q3_K : blocked<256, 110> { /* hmask[32], qs[64], scales[12], d */
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const uint8_t *b = block(row, c);
        const int e0 = 8 * (int)(c % SUBS);
        const float d = ld_f16(b + 108);
        /* 6-bit scale j: low 4 bits in bytes 0..7, high 2 bits in bytes 8..11 */
        const int j = e0 / 16;
        const uint8_t *scales = b + 96;
        const int lo = j < 8 ? scales[j] & 0xf : scales[j - 8] >> 4;
        const int hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        const float dl = __fmul_rn(d, (float)((lo | (hi << 4)) - 32));
        const bytes8 hm = ld_bytes8(b + e0 % 32);
        const bytes8 q = ld_bytes8(b + 32 + 32 * (e0 / 128) + e0 % 32);
        const int sh = 2 * ((e0 % 128) / 32);
        const uint32_t bit = 1u << (e0 / 32);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int qv = (int)((q[k] >> sh) & 3u) - ((hm[k] & bit) ? 0 : 4);
            v[k] = __fmul_rn(dl, (float)qv);
        }
    }
};

/* Q4_K/Q5_K 6-bit (scale, min) pair j, as exsa_get_scale_min_k4. */
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

struct fmt_q4_K : blocked<256, 144> { /* d, dmin, scales[12], qs[128] */
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const uint8_t *b = block(row, c);
        const int e0 = 8 * (int)(c % SUBS);
        const int j = e0 / 32;
        int sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        const float d1 = __fmul_rn(ld_f16(b), (float)sc);
        const float m1 = __fmul_rn(ld_f16(b + 2), (float)m);
        const bytes8 q = ld_bytes8(b + 16 + 32 * (j / 2) + e0 % 32);
        const int sh = 4 * (j % 2);
#pragma unroll
        for (int k = 0; k < 8; k++)
            v[k] = __fsub_rn(__fmul_rn(d1, (float)((q[k] >> sh) & 0xfu)), m1);
    }
};

struct fmt_q5_K : blocked<256, 176> { /* d, dmin, scales[12], qh[32], qs[128] */
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const uint8_t *b = block(row, c);
        const int e0 = 8 * (int)(c % SUBS);
        const int j = e0 / 32;
        int sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        const float d1 = __fmul_rn(ld_f16(b), (float)sc);
        const float m1 = __fmul_rn(ld_f16(b + 2), (float)m);
        const bytes8 qh = ld_bytes8(b + 16 + e0 % 32);
        const bytes8 q = ld_bytes8(b + 48 + 32 * (j / 2) + e0 % 32);
        const int sh = 4 * (j % 2);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const uint32_t qv = ((q[k] >> sh) & 0xfu) + 16u * ((qh[k] >> j) & 1u);
            v[k] = __fsub_rn(__fmul_rn(d1, (float)qv), m1);
        }
    }
};

struct fmt_q6_K : blocked<256, 210> { /* ql[128], qh[64], scales[16] signed, d */
    __device__ static __forceinline__ void load(const uint8_t *row, int64_t c, float *v)
    {
        const uint8_t *b = block(row, c);
        const int e0 = 8 * (int)(c % SUBS);
        const int half = e0 / 128, kq = (e0 % 128) / 32, l0 = e0 % 32;
        const bytes8 lo = ld_bytes8(b + 64 * half + l0 + 32 * (kq & 1));
        const bytes8 hi = ld_bytes8(b + 128 + 32 * half + l0);
        const int shl = 4 * (kq >> 1), shh = 2 * kq;
        /* the reference's d * scale * q is (d * scale) * q */
        const float ds = __fmul_rn(ld_f16(b + 208), (float)(int8_t)b[192 + e0 / 16]);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int qv = (int)(((lo[k] >> shl) & 0xfu) | (((hi[k] >> shh) & 3u) << 4)) - 32;
            v[k] = __fmul_rn(ds, (float)qv);
        }
    }
};

} /* namespace exsa_cuda */

#endif
