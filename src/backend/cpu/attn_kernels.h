/* CPU attention inner loops over an F16 KV cache, one table per ISA.
 *
 * cpu_attention.c walks a (row, kv head) task through the context in
 * chunks of tokens; for each chunk it asks the table for the q.k scores of
 * the query heads sharing that kv head, advances the online softmax itself
 * (scalar expf, one token at a time), and hands the per-token factors to
 * the table's V update. The split keeps every ISA's arithmetic to the two
 * loops that matter and the softmax bookkeeping in one place.
 *
 * The numbers are those of llama.cpp's CPU flash attention (see
 * cpu_attention.c): each table's scores are bit-identical to the dot_f16_f32
 * of the exsa_cpu_kernels table of the same ISA (so the choice follows
 * that table, EXSA_CPU included), and the V accumulator holds f16 values
 * (kept in f32 registers and memory, rounded after every update).
 * A Q8_0 cache only borrows the row dequantizer; F32 and Q8_0 caches use
 * the exsa_cpu_kernels float helpers for the rest.
 *
 * attn_kernels_scalar.c is the reference; attn_kernels_avx2.c and
 * attn_kernels_avx512.c must give the same bits as it does for their
 * matching kernel table's dot.
 */
#ifndef EXSA_CPU_ATTN_KERNELS_H
#define EXSA_CPU_ATTN_KERNELS_H

#include <stddef.h>

#include "backend/cpu/kernels.h"

typedef struct exsa_cpu_attn_kernels {
    const char *isa; /* the exsa_cpu_kernels isa it pairs with */
    /* sc[h * n + i] = dot_f16_f32(hd, k[i], q + h * hd) * scale, for query
     * heads h < n_q and tokens i < n; k[i] points at token i's head slice
     * (hd halves), q holds n_q rows of hd floats (already f16 values). The
     * dot is the paired kernel table's, to the bit. */
    void (*scores_f16)(int hd, int n, const exsa_fp16 *const *k, const float *q, int n_q,
                       float scale, float *sc);
    /* For i = 0 .. n-1 in order, on acc[0 .. hd) (f16 values held as f32):
     *     acc = f16(acc * ms[i]);  acc = f16(fmaf(f32(v[i]), vs[i], acc))
     * with f16() rounding to nearest even as exsa_fp32_to_fp16. The first
     * step is the identity when ms[i] == 1 and kernels skip it then. acc
     * must have room for hd rounded up to 16 floats; the lanes past hd are
     * scratch (left finite only if they start finite). */
    void (*accum_f16)(int hd, int n, const exsa_fp16 *const *v, const float *ms, const float *vs,
                      float *acc);
    /* accum_f16 for n_r (1..4) accumulators over the same n V rows, each
     * with its own factors: for r < n_r, exactly accum_f16(hd, n, v, ms[r],
     * vs[r], acc[r]). Query rows of one sequence share their V rows; their
     * updates are independent chains, so one pass keeps several in flight
     * where a lone accumulator waits on each token's rounding. */
    void (*accum_f16_rows)(int hd, int n, const exsa_fp16 *const *v, int n_r,
                           const float *const *ms, const float *const *vs, float *const *acc);
    /* Q8_0 cache rows: y[32 * b + i] = f32(x[b].d) * x[b].qs[i] for the
     * n_blocks blocks at x (a product of two floats, so every table gives
     * the same bits). */
    void (*dequant_q8_0)(const exsa_block_q8_0 *x, float *y, int64_t n_blocks);
} exsa_cpu_attn_kernels;

const exsa_cpu_attn_kernels *exsa_cpu_attn_kernels_scalar(void);
/* NULL when the binary was built without that ISA or the CPU lacks it. */
const exsa_cpu_attn_kernels *exsa_cpu_attn_kernels_avx2(void);
const exsa_cpu_attn_kernels *exsa_cpu_attn_kernels_avx512(void);
/* The table whose scores match k's dot_f16_f32 (by k->isa); the scalar
 * one for an ISA without an attention table of its own. Never NULL. */
const exsa_cpu_attn_kernels *exsa_cpu_attn_kernels_for(const exsa_cpu_kernels *k);

/* Glue for the selector (attn_kernels.c): each ISA file exports its table,
 * NULL when compiled without that ISA; the selector hands a table out only
 * once the matching exsa_cpu_kernels table exists (CPU checked). */
extern const exsa_cpu_attn_kernels *const exsa_cpu_attn_kernels_avx2_table;
extern const exsa_cpu_attn_kernels *const exsa_cpu_attn_kernels_avx512_table;

#endif
