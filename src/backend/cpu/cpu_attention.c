/* CPU backend: KV stores and paged attention.
 *
 * Attention runs one task per (query row, query head). A task walks its
 * row's context through the block table in chunks of ATTN_CHUNK tokens:
 * scores for the chunk, then an online-softmax update (rescale the running
 * sum and accumulator only when the chunk raises the running max) and the
 * weighted sum of V. One pass over K and V, no buffer that grows with the
 * context: per-thread scratch is a few head_dim-sized rows.
 *
 * An F16 cache follows llama.cpp's CPU flash attention to the rounding:
 * q is rounded to f16 like K, the softmax is updated token by token, and the
 * V accumulator is kept at f16 precision. Matmuls on Q8 activations amplify
 * any 5e-4 difference in attention output to ~1.5e-2 in the logits of
 * quantized models (rounding steps flip), so only the same rounding lets
 * Exsa's logits be checked against llama.cpp's within a quarter of the
 * quantization error (fixtures/README.md); it costs no speed.
 *
 * Q8_0 K/V rows are quantized across all kv heads of a token, so a head's
 * slice may start inside a block; it is dequantized into scratch (the blocks
 * covering it) and then handled as float.
 */
#include "backend/cpu/cpu_backend_impl.h"

#include <math.h>
#include <string.h>

#include "quant/quant.h"

#define ATTN_CHUNK 64

/* ---- kv_store ----------------------------------------------------------- */

typedef struct {
    const exsa_cpu_kernels *k;
    const exsa_kv_layer *kv;
    const float *src_k, *src_v;
    const int32_t *slots;
    int64_t row; /* floats per token row */
} store_job;

static void store_one(const store_job *j, const float *src, char *dst)
{
    switch (j->kv->type) {
    case EXSA_TYPE_F32:
        memcpy(dst, src, (size_t)j->row * sizeof(float));
        break;
    case EXSA_TYPE_F16:
        j->k->f32_to_f16(src, (exsa_fp16 *)dst, j->row);
        break;
    case EXSA_TYPE_Q8_0:
        j->k->quantize_q8_0(src, dst, j->row);
        break;
    default:
        break;
    }
}

static void store_range(void *vctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    store_job *j = vctx;
    const exsa_kv_layer *kv = j->kv;
    for (int64_t r = begin; r < end; r++) {
        int32_t s = j->slots[r];
        if (s < 0) /* no slot: the caller keeps this row out of the cache */
            continue;
        size_t off = (size_t)s * kv->token_bytes;
        store_one(j, j->src_k + r * j->row, (char *)kv->k + off);
        store_one(j, j->src_v + r * j->row, (char *)kv->v + off);
    }
}

void cpu_kv_store(exsa_backend *b, const exsa_kv_layer *kv, const float *k, const float *v,
                  const int32_t *slots, int n_rows)
{
    cpu_backend *c = cpu_of(b);
    int64_t row = (int64_t)kv->n_kv_head * kv->head_dim;
    if (n_rows <= 0 || row <= 0)
        return;
    if (kv->type == EXSA_TYPE_Q8_0 && row % EXSA_QK8_0 != 0)
        return; /* the model layer refuses such a cache type at load */
    store_job j = {c->k, kv, k, v, slots, row};
    cpu_parallel_for(c, n_rows, CPU_PAR_MIN_ELEMS / 2 / row + 1, store_range, &j);
}

/* ---- attention ------------------------------------------------------------ */

typedef struct {
    cpu_backend *c;
    const exsa_attn_args *a;
    int group;     /* query heads per kv head */
    size_t hd_pad; /* head_dim rounded up to 16 floats */
} attn_job;

/* Dequantizes the Q8_0 blocks that cover elements [e0, e0 + n) of a token
 * row into tmp; returns where element e0 landed. */
static const float *q8_span(const void *row, int64_t e0, int n, float *restrict tmp)
{
    const exsa_block_q8_0 *blk = row;
    int64_t b0 = e0 / EXSA_QK8_0, b1 = (e0 + n - 1) / EXSA_QK8_0;
    for (int64_t bi = b0; bi <= b1; bi++) {
        float d = exsa_fp16_to_fp32(blk[bi].d);
        /* restrict: int8 may alias anything, and the loop only vectorizes
         * once the compiler knows the float stores leave qs alone. */
        const int8_t *restrict qs = blk[bi].qs;
        float *restrict t = tmp + (bi - b0) * EXSA_QK8_0;
        for (int i = 0; i < EXSA_QK8_0; i++)
            t[i] = d * (float)qs[i];
    }
    return tmp + (e0 - b0 * EXSA_QK8_0);
}

/* One (row, head) over an F16 cache; see the header comment. The scores
 * of a chunk come first (they do not depend on the softmax state, so the
 * dots of consecutive tokens overlap in the core); then the softmax and
 * the accumulator advance token by token, the accumulator stored as f16 so
 * that each fused update does the rounding of the reference. */
static void attn_f16(const attn_job *j, const float *q, float *out, int nc, const int32_t *bt,
                     int64_t e0, exsa_fp16 *acc, float *q16, exsa_fp16 *tmp)
{
    const exsa_attn_args *a = j->a;
    const exsa_kv_layer *kv = a->kv;
    const exsa_cpu_kernels *k = j->c->k;
    const int hd = kv->head_dim, bs = kv->block_size;
    k->f32_to_f16(q, tmp, hd); /* q rounded to f16 like K, kept as f32 */
    k->f16_to_f32(tmp, q16, hd);
    memset(acc, 0, (size_t)hd * sizeof *acc);
    float m = -INFINITY, l = 0.0f;
    float sc[ATTN_CHUNK];
    const exsa_fp16 *vrow[ATTN_CHUNK];
    for (int t0 = 0; t0 < nc; t0 += ATTN_CHUNK) {
        int n = nc - t0 < ATTN_CHUNK ? nc - t0 : ATTN_CHUNK;
        for (int i = 0; i < n; i++) {
            int t = t0 + i;
            size_t off = ((size_t)bt[t / bs] * (size_t)bs + (size_t)(t % bs)) * kv->token_bytes;
            const exsa_fp16 *kp = (const exsa_fp16 *)((const char *)kv->k + off) + e0;
            vrow[i] = (const exsa_fp16 *)((const char *)kv->v + off) + e0;
            sc[i] = k->dot_f16_f32(hd, kp, q16) * a->scale;
        }
        for (int i = 0; i < n; i++) {
            float s = sc[i], ms = 1.0f, vs = 1.0f;
            if (s > m) {
                ms = expf(m - s);
                m = s;
                k->scale_f16_acc(hd, ms, acc);
            } else {
                vs = expf(s - m);
            }
            k->mad_f16_acc(hd, vs, vrow[i], acc);
            l = l * ms + vs;
        }
    }
    k->f16_to_f32(acc, q16, hd);
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int d = 0; d < hd; d++)
        out[d] = q16[d] * inv;
}

static void attn_task(void *vctx, int task, int thread)
{
    attn_job *j = vctx;
    const exsa_attn_args *a = j->a;
    const exsa_kv_layer *kv = a->kv;
    const exsa_cpu_kernels *k = j->c->k;
    int hd = kv->head_dim;
    int r = task / a->n_head, h = task % a->n_head;
    int64_t e0 = (int64_t)(h / j->group) * hd; /* kv head's first element in a token row */
    size_t off = ((size_t)r * (size_t)a->n_head + (size_t)h) * (size_t)hd;
    const float *q = a->q + off;
    float *out = a->out + off;
    int nc = a->n_ctx[r];
    const int32_t *bt = a->block_table[r];
    int bs = kv->block_size;

    float *acc = cpu_tls(j->c, thread);
    float *kbuf = acc + j->hd_pad;              /* hd_pad + 64 floats */
    float *vbuf = kbuf + j->hd_pad + 64;        /* hd_pad + 64 floats */
    if (kv->type == EXSA_TYPE_F16) {
        attn_f16(j, q, out, nc, bt, e0, (exsa_fp16 *)acc, kbuf, (exsa_fp16 *)vbuf);
        return;
    }
    memset(acc, 0, (size_t)hd * sizeof *acc);

    float m = -INFINITY, l = 0.0f;
    float s[ATTN_CHUNK];
    size_t slot_off[ATTN_CHUNK];
    for (int t0 = 0; t0 < nc; t0 += ATTN_CHUNK) {
        int n = nc - t0 < ATTN_CHUNK ? nc - t0 : ATTN_CHUNK;
        float cmax = -INFINITY;
        for (int i = 0; i < n; i++) {
            int t = t0 + i;
            size_t slot = (size_t)bt[t / bs] * (size_t)bs + (size_t)(t % bs);
            slot_off[i] = slot * kv->token_bytes;
            const char *kp = (const char *)kv->k + slot_off[i];
            float dot;
            if (kv->type == EXSA_TYPE_Q8_0)
                dot = k->dot_f32(hd, q8_span(kp, e0, hd, kbuf), q);
            else
                dot = k->dot_f32(hd, (const float *)kp + e0, q);
            s[i] = dot * a->scale;
            cmax = s[i] > cmax ? s[i] : cmax;
        }
        if (cmax > m) {
            if (l > 0.0f) {
                float corr = expf(m - cmax);
                l *= corr;
                for (int d = 0; d < hd; d++)
                    acc[d] *= corr;
            }
            m = cmax;
        }
        for (int i = 0; i < n; i++) {
            float w = expf(s[i] - m);
            l += w;
            const char *vp = (const char *)kv->v + slot_off[i];
            if (kv->type == EXSA_TYPE_Q8_0)
                k->axpy_f32(hd, w, q8_span(vp, e0, hd, vbuf), acc);
            else
                k->axpy_f32(hd, w, (const float *)vp + e0, acc);
        }
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f; /* empty context: zeros */
    for (int d = 0; d < hd; d++)
        out[d] = acc[d] * inv;
}

void cpu_attention(exsa_backend *b, const exsa_attn_args *a)
{
    cpu_backend *c = cpu_of(b);
    const exsa_kv_layer *kv = a->kv;
    int hd = kv->head_dim;
    if (a->n_rows <= 0 || a->n_head <= 0 || hd <= 0)
        return;
    int64_t total = (int64_t)a->n_rows * a->n_head;
    size_t hd_pad = ((size_t)hd + 15) & ~(size_t)15;
    int ok = kv->n_kv_head > 0 && a->n_head % kv->n_kv_head == 0 && kv->block_size > 0 &&
             total <= INT32_MAX &&
             (kv->type == EXSA_TYPE_F32 || kv->type == EXSA_TYPE_F16 ||
              kv->type == EXSA_TYPE_Q8_0);
    if (!ok || cpu_tls_reserve(c, 3 * hd_pad + 128) != 0) {
        cpu_fill_nan(a->out, total * hd);
        return;
    }
    attn_job j = {c, a, a->n_head / kv->n_kv_head, hd_pad};
    exsa_threadpool_run(c->pool, attn_task, &j, (int)total);
}
