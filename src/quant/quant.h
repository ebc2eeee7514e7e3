/* Tensor element formats, bit-compatible with GGUF files written by llama.cpp.
 *
 * Each format has a packed block struct with a static size check and one
 * scalar reference quantizer (the definition; SIMD code elsewhere must agree
 * with it) and dequantizer. A table of traits replaces switch statements:
 * exsa_type_traits_get(type) gives block size, bytes, to_float, from_float
 * and the activation format its matmul kernels consume (vec_dot_type).
 */
#ifndef EXSA_QUANT_H
#define EXSA_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* ggml type ids as stored in GGUF tensor infos. */
enum exsa_type {
    EXSA_TYPE_F32 = 0,
    EXSA_TYPE_F16 = 1,
    EXSA_TYPE_Q4_0 = 2,
    EXSA_TYPE_Q4_1 = 3,
    EXSA_TYPE_Q5_0 = 6,
    EXSA_TYPE_Q5_1 = 7,
    EXSA_TYPE_Q8_0 = 8,
    EXSA_TYPE_Q8_1 = 9,
    EXSA_TYPE_Q2_K = 10,
    EXSA_TYPE_Q3_K = 11,
    EXSA_TYPE_Q4_K = 12,
    EXSA_TYPE_Q5_K = 13,
    EXSA_TYPE_Q6_K = 14,
    EXSA_TYPE_Q8_K = 15,
    EXSA_TYPE_BF16 = 30,
    EXSA_TYPE_COUNT = 40 /* bound for tables indexed by type id */
};

#define EXSA_QK4_0 32
#define EXSA_QK4_1 32
#define EXSA_QK5_0 32
#define EXSA_QK5_1 32
#define EXSA_QK8_0 32
#define EXSA_QK8_1 32
#define EXSA_QK_K 256
#define EXSA_K_SCALE_SIZE 12

typedef uint16_t exsa_fp16;
typedef uint16_t exsa_bf16;

typedef struct { exsa_fp16 d; uint8_t qs[EXSA_QK4_0 / 2]; } exsa_block_q4_0;
typedef struct { exsa_fp16 d, m; uint8_t qs[EXSA_QK4_1 / 2]; } exsa_block_q4_1;
typedef struct { exsa_fp16 d; uint8_t qh[4]; uint8_t qs[EXSA_QK5_0 / 2]; } exsa_block_q5_0;
typedef struct { exsa_fp16 d, m; uint8_t qh[4]; uint8_t qs[EXSA_QK5_1 / 2]; } exsa_block_q5_1;
typedef struct { exsa_fp16 d; int8_t qs[EXSA_QK8_0]; } exsa_block_q8_0;
typedef struct { exsa_fp16 d, s; int8_t qs[EXSA_QK8_1]; } exsa_block_q8_1; /* s = d * sum(qs) */
typedef struct {
    uint8_t scales[EXSA_QK_K / 16]; /* 4-bit scale | 4-bit min */
    uint8_t qs[EXSA_QK_K / 4];
    exsa_fp16 d, dmin;
} exsa_block_q2_K;
typedef struct {
    uint8_t hmask[EXSA_QK_K / 8];
    uint8_t qs[EXSA_QK_K / 4];
    uint8_t scales[12]; /* 16 x 6-bit */
    exsa_fp16 d;
} exsa_block_q3_K;
typedef struct {
    exsa_fp16 d, dmin;
    uint8_t scales[EXSA_K_SCALE_SIZE]; /* 8 x (6-bit scale, 6-bit min) */
    uint8_t qs[EXSA_QK_K / 2];
} exsa_block_q4_K;
typedef struct {
    exsa_fp16 d, dmin;
    uint8_t scales[EXSA_K_SCALE_SIZE];
    uint8_t qh[EXSA_QK_K / 8];
    uint8_t qs[EXSA_QK_K / 2];
} exsa_block_q5_K;
typedef struct {
    uint8_t ql[EXSA_QK_K / 2];
    uint8_t qh[EXSA_QK_K / 4];
    int8_t scales[EXSA_QK_K / 16];
    exsa_fp16 d;
} exsa_block_q6_K;
typedef struct {
    float d;
    int8_t qs[EXSA_QK_K];
    int16_t bsums[EXSA_QK_K / 16]; /* sums of groups of 16 qs */
} exsa_block_q8_K;

/* C11's _Static_assert is C++'s static_assert (the CUDA kernels include
 * this header). */
#ifdef __cplusplus
#define EXSA_STATIC_ASSERT static_assert
#else
#define EXSA_STATIC_ASSERT _Static_assert
#endif
EXSA_STATIC_ASSERT(sizeof(exsa_block_q4_0) == 18, "q4_0 block");
EXSA_STATIC_ASSERT(sizeof(exsa_block_q4_1) == 20, "q4_1 block");
EXSA_STATIC_ASSERT(sizeof(exsa_block_q5_0) == 22, "q5_0 block");
EXSA_STATIC_ASSERT(sizeof(exsa_block_q5_1) == 24, "q5_1 block");
EXSA_STATIC_ASSERT(sizeof(exsa_block_q8_0) == 34, "q8_0 block");
EXSA_STATIC_ASSERT(sizeof(exsa_block_q8_1) == 36, "q8_1 block");
EXSA_STATIC_ASSERT(sizeof(exsa_block_q2_K) == 84, "q2_K block");
EXSA_STATIC_ASSERT(sizeof(exsa_block_q3_K) == 110, "q3_K block");
EXSA_STATIC_ASSERT(sizeof(exsa_block_q4_K) == 144, "q4_K block");
EXSA_STATIC_ASSERT(sizeof(exsa_block_q5_K) == 176, "q5_K block");
EXSA_STATIC_ASSERT(sizeof(exsa_block_q6_K) == 210, "q6_K block");
EXSA_STATIC_ASSERT(sizeof(exsa_block_q8_K) == 292, "q8_K block");

typedef void (*exsa_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*exsa_from_float_fn)(const float *src, void *dst, int64_t n);

typedef struct exsa_type_traits {
    const char *name;           /* "Q4_K" */
    int64_t block_size;         /* elements per block */
    int64_t type_size;          /* bytes per block */
    int is_quantized;
    exsa_to_float_fn to_float;     /* n multiple of block_size */
    exsa_from_float_fn from_float; /* scalar reference quantizer */
    int vec_dot_type;           /* activation format for matmul */
} exsa_type_traits;

/* NULL for a type id Exsa cannot compute with (unknown or unsupported). */
const exsa_type_traits *exsa_type_traits_get(int type);
/* Type by name, case-insensitive ("q4_k", "F16"); -1 if unknown. */
int exsa_type_from_name(const char *name);
/* Bytes of a row of n elements (n must be a multiple of the block size);
 * 0 for an unknown type, a negative n or one that is not a whole number of
 * blocks, or a size beyond PTRDIFF_MAX. */
size_t exsa_type_row_size(int type, int64_t n);

/* Scalar conversions (IEEE half with round-to-nearest-even; bf16 rounds to
 * nearest even and keeps NaN a NaN, like llama.cpp). */
float exsa_fp16_to_fp32(exsa_fp16 h);
exsa_fp16 exsa_fp32_to_fp16(float f);
float exsa_bf16_to_fp32(exsa_bf16 h);
exsa_bf16 exsa_fp32_to_bf16(float f);

/* Reference quantizers / dequantizers, one per format (n multiple of block). */
void exsa_quantize_row_q4_0_ref(const float *x, void *y, int64_t n);
void exsa_quantize_row_q4_1_ref(const float *x, void *y, int64_t n);
void exsa_quantize_row_q5_0_ref(const float *x, void *y, int64_t n);
void exsa_quantize_row_q5_1_ref(const float *x, void *y, int64_t n);
void exsa_quantize_row_q8_0_ref(const float *x, void *y, int64_t n);
void exsa_quantize_row_q8_1_ref(const float *x, void *y, int64_t n);
void exsa_quantize_row_q2_K_ref(const float *x, void *y, int64_t n);
void exsa_quantize_row_q3_K_ref(const float *x, void *y, int64_t n);
void exsa_quantize_row_q4_K_ref(const float *x, void *y, int64_t n);
void exsa_quantize_row_q5_K_ref(const float *x, void *y, int64_t n);
void exsa_quantize_row_q6_K_ref(const float *x, void *y, int64_t n);
void exsa_quantize_row_q8_K_ref(const float *x, void *y, int64_t n);

void exsa_dequantize_row_q4_0(const void *x, float *y, int64_t n);
void exsa_dequantize_row_q4_1(const void *x, float *y, int64_t n);
void exsa_dequantize_row_q5_0(const void *x, float *y, int64_t n);
void exsa_dequantize_row_q5_1(const void *x, float *y, int64_t n);
void exsa_dequantize_row_q8_0(const void *x, float *y, int64_t n);
void exsa_dequantize_row_q2_K(const void *x, float *y, int64_t n);
void exsa_dequantize_row_q3_K(const void *x, float *y, int64_t n);
void exsa_dequantize_row_q4_K(const void *x, float *y, int64_t n);
void exsa_dequantize_row_q5_K(const void *x, float *y, int64_t n);
void exsa_dequantize_row_q6_K(const void *x, float *y, int64_t n);
void exsa_dequantize_row_q8_K(const void *x, float *y, int64_t n);

/* Unpack the 6-bit (scale, min) pair j of a Q4_K/Q5_K scales array. */
static inline void exsa_get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

#endif
