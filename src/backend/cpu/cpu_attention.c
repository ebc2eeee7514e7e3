/* CPU backend: KV stores and paged attention.
 *
 * Attention runs one task per (query row, run of consecutive query heads):
 * as few runs per row as leave every thread 4 tasks, so a decode step of
 * a few rows gives each task whole token rows to read (all its heads'
 * slices, in order) rather than one head's 128-byte slice out of every
 * row. A task walks its row's context through the block table in chunks,
 * keeping per-head state (running max m, sum l, accumulator) in per-thread
 * scratch; one pass over K and V, no buffer that grows with the context.
 * Each head's arithmetic is the same whatever the split, so results do not
 * depend on the thread count or the batch.
 *
 * An F16 cache follows llama.cpp's CPU flash attention to the rounding:
 * q is rounded to f16 like K, the softmax is updated token by token, and the
 * V accumulator is kept at f16 precision. Matmuls on Q8 activations amplify
 * any 5e-4 difference in attention output to ~1.5e-2 in the logits of
 * quantized models (rounding steps flip), so only the same rounding lets
 * Exsa's logits be checked against llama.cpp's within a quarter of the
 * quantization error (fixtures/README.md). The inner loops are the
 * attention kernels (attn_kernels.h): per chunk of F16_CHUNK tokens and kv
 * head, the scores of the task's query heads on it, then per head the
 * softmax factors (here, scalar expf in token order) and the V update,
 * whose accumulator stays in registers across the chunk. The next chunk is
 * prefetched meanwhile: each layer has its own cache, so a step's K/V
 * comes from memory, and strided head slices defeat the hardware
 * prefetchers.
 *
 * That rounding only matters where llama.cpp itself uses it: its one-row
 * path runs for batches under 64 rows, and the fixtures' prompts are
 * shorter. So only rows whose context is at most EXSA_ATTN_EXACT_CTX
 * tokens take it; longer rows take a tiled float path (llama.cpp also
 * switches to one for long prompts): the same scores (scores_f16), then per
 * chunk of EXSA_ATTN_TILE tokens and kv head the chunk's V converted to
 * float once and, for every (row, head) of the task, the table's
 * attn_chunk: a vector exp (exsa_exp_neg), an online softmax with 16
 * partial sums and an f32 accumulator. Chunks start at
 * token 0 and the path depends on the row's context alone, so results
 * still do not depend on the batch, the chunking of a prompt or the
 * thread count; closer to exact than the rounding path, and 110M pp512
 * +34% (bench/RESULTS.md, 2026-12-02 second session).
 *
 * A sliding window (exsa_attn_args.window) starts each row at its
 * window's first token: the one-row f16 path and the F32/Q8_0 chunks
 * begin there; the tiled path keeps its grid of EXSA_ATTN_TILE from token
 * 0, and in the first chunk the tokens before a row's window get a score
 * of -inf (weight exactly 0) while those before the run's first visible
 * token are never read (copies of that token stand in): blocks before a
 * window may already be back in the pool.
 *
 * F32 and Q8_0 caches use chunks of ATTN_CHUNK tokens: scores for the
 * chunk, then an online-softmax update (rescale the running sum and
 * accumulator only when the chunk raises the running max) and the
 * weighted sum of V. Q8_0 K/V rows are quantized across all kv heads of a
 * token, so a head's slice may start inside a block; the task dequantizes
 * the blocks covering its heads once per token row and reads them as
 * float.
 */
#include "backend/cpu/cpu_backend_impl.h"

#include <math.h>
#include <string.h>

#include "backend/cpu/attn_kernels.h"
#include "quant/quant.h"

#define ATTN_CHUNK 64
/* F16 path: tokens per chunk (two blocks of the engine's 16). */
#define F16_CHUNK 32

/* ---- kv_store ----------------------------------------------------------- */

typedef struct {
    const exsa_cpu_kernels *k;
    const exsa_kv_layer *kv;
    const float *src_k, *src_v;
    const int32_t *slots;
    int64_t row; /* floats per token row */
} store_job;

void cpu_kv_store_span(const exsa_cpu_kernels *k, const exsa_kv_layer *kv, int is_v,
                       const float *row, int32_t slot, int64_t e0, int64_t e1)
{
    char *dst = (char *)(is_v ? kv->v : kv->k) + (size_t)slot * kv->token_bytes;
    const int64_t n = e1 - e0;
    switch (kv->type) {
    case EXSA_TYPE_F32:
        memcpy((float *)dst + e0, row + e0, (size_t)n * sizeof(float));
        break;
    case EXSA_TYPE_F16:
        k->f32_to_f16(row + e0, (exsa_fp16 *)dst + e0, n);
        break;
    case EXSA_TYPE_Q8_0:
        k->quantize_q8_0(row + e0, (exsa_block_q8_0 *)dst + e0 / EXSA_QK8_0, n);
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
        cpu_kv_store_span(j->k, kv, 0, j->src_k + r * j->row, s, 0, j->row);
        cpu_kv_store_span(j->k, kv, 1, j->src_v + r * j->row, s, 0, j->row);
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
    const exsa_cpu_attn_kernels *ak;
    int hp;        /* query heads per task */
    int n_parts;   /* tasks per row: ceil(n_head / hp) */
} attn_job;

/* Dequantizes the Q8_0 blocks that cover elements [e0, e0 + n) of a token
 * row into tmp; returns where element e0 landed. */
static const float *q8_span(const exsa_cpu_attn_kernels *ak, const void *row, int64_t e0, int n,
                            float *tmp)
{
    int64_t b0 = e0 / EXSA_QK8_0, b1 = (e0 + n - 1) / EXSA_QK8_0;
    ak->dequant_q8_0((const exsa_block_q8_0 *)row + b0, tmp, b1 - b0 + 1);
    return tmp + (e0 - b0 * EXSA_QK8_0);
}

/* ---- F16 cache ---------------------------------------------------------- */

/* Per-thread scratch of an F16 task of hp query heads, in floats: q16 and
 * acc rows (hd_pad each), f16 staging of q (hd_pad / 2), m and l, and the
 * scores of one chunk. 0, or -1 if the size overflows. */
static int f16_scratch(int hp, size_t hd_pad, size_t *n)
{
    size_t per_head = 2 * hd_pad + hd_pad / 2 + 2 + F16_CHUNK;
    return __builtin_mul_overflow((size_t)hp, per_head, n) ? -1 : 0;
}

/* Token t's row in a cache half (k or v), walking the block table. */
static const char *token_row(const exsa_kv_layer *kv, const void *base, const int32_t *bt, int bi,
                             int bo)
{
    size_t slot = (size_t)bt[bi] * (size_t)kv->block_size + (size_t)bo;
    return (const char *)base + slot * kv->token_bytes;
}

/* Asks for bytes [lo, hi) of the K and V rows of n tokens from block bi,
 * offset bo on: the next chunk, while this one is computed. A task reads
 * only its heads' slices of each token row, a strided pattern the
 * hardware prefetchers follow poorly, and a decode step's cache does not
 * fit in the caches (every layer has its own). */
static void prefetch_chunk(const exsa_kv_layer *kv, const int32_t *bt, int bi, int bo, int n,
                           size_t lo, size_t hi)
{
    for (int i = 0; i < n; i++) {
        const char *kr = token_row(kv, kv->k, bt, bi, bo);
        const char *vr = token_row(kv, kv->v, bt, bi, bo);
        for (size_t o = lo; o < hi; o += 64) {
            __builtin_prefetch(kr + o);
            __builtin_prefetch(vr + o);
        }
        __builtin_prefetch(kr + hi - 1);
        __builtin_prefetch(vr + hi - 1);
        if (++bo == kv->block_size) {
            bo = 0;
            bi++;
        }
    }
}

/* The K and V rows of the next n tokens (block bi, offset bo on, both
 * advanced past them), then a prefetch of bytes [lo, hi) of up to n_next
 * tokens after them: the chunk computed now and the one read next. */
static void chunk_rows(const exsa_kv_layer *kv, const int32_t *bt, int *bi, int *bo, int n,
                       int n_next, size_t lo, size_t hi, const char **krow, const char **vrow)
{
    for (int i = 0; i < n; i++) {
        krow[i] = token_row(kv, kv->k, bt, *bi, *bo);
        vrow[i] = token_row(kv, kv->v, bt, *bi, *bo);
        if (++*bo == kv->block_size) {
            *bo = 0;
            ++*bi;
        }
    }
    prefetch_chunk(kv, bt, *bi, *bo, n_next, lo, hi);
}

/* Kv head kh's slice (hd halves at element kh * hd) of n token rows. */
static void head_slices(int n, const char *const *krow, const char *const *vrow, int kh, int hd,
                        const exsa_fp16 **kp, const exsa_fp16 **vp)
{
    for (int i = 0; i < n; i++) {
        kp[i] = (const exsa_fp16 *)krow[i] + (size_t)kh * (size_t)hd;
        vp[i] = (const exsa_fp16 *)vrow[i] + (size_t)kh * (size_t)hd;
    }
}

/* The query heads [*ha, *hb) of kv head kh within [h0, h1). */
static void kv_heads(int kh, int group, int h0, int h1, int *ha, int *hb)
{
    *ha = kh * group > h0 ? kh * group : h0;
    *hb = (kh + 1) * group < h1 ? (kh + 1) * group : h1;
}

/* The first position row r sees: 0, or with a sliding window the start
 * of its window. Positions before it are never read (their blocks may
 * have gone back to the pool). */
static int row_first(const exsa_attn_args *a, int r)
{
    return a->window > 0 && a->n_ctx[r] > a->window ? a->n_ctx[r] - a->window : 0;
}

/* The first position any of rows [r0, r0 + nr) sees. */
static int run_first(const exsa_attn_args *a, int r0, int nr)
{
    int f = row_first(a, r0);
    for (int q = 1; q < nr; q++)
        f = row_first(a, r0 + q) < f ? row_first(a, r0 + q) : f;
    return f;
}

/* Query rows of one sequence per F16 task: they read the same K and V
 * rows, so one pass over the context serves all of them (K converted once
 * for their scores, V loaded once for their updates, whose independent
 * rounding chains then overlap). */
#define F16_ROWS 4
/* Rows per F16 task: a tiled run converts each chunk of K and V once for
 * all of them. */
#define F16_TILE 16

/* The online softmax over scores s[0 .. n) in token order from running
 * max m and sum *l: per token, if s > m the old state is rescaled by
 * ms = expf(m - s) and m = s (vs = 1), else vs = expf(s - m) (ms = 1);
 * l = l * ms + vs. Returns the new max. Both exponents are
 * -|s - m_before| (IEEE subtraction is antisymmetric, and -inf / NaN cases
 * give the same expf argument), so the expf calls are computed apart from
 * the branch: independent calls the CPU overlaps, where the branchy loop
 * waited on each. */
static float softmax_factors(const float *s, int n, float m, float *l, float *ms, float *vs)
{
    float arg[F16_CHUNK];
    unsigned char up[F16_CHUNK];
    for (int i = 0; i < n; i++) {
        up[i] = s[i] > m;
        arg[i] = -fabsf(s[i] - m);
        m = up[i] ? s[i] : m;
    }
    for (int i = 0; i < n; i++)
        arg[i] = expf(arg[i]);
    float lh = *l;
    for (int i = 0; i < n; i++) {
        const float msi = up[i] ? arg[i] : 1.0f, vsi = up[i] ? 1.0f : arg[i];
        ms[i] = msi;
        vs[i] = vsi;
        lh = lh * msi + vsi;
    }
    *l = lh;
    return m;
}

/* q16 for query rows [r0, r0 + nr), heads [h0, h1): q rounded to f16
 * like K, as floats, by kv head, then row, then that kv head's heads
 * (scores_f16 takes one kv head's query rows contiguous); tmp stages
 * (h1 - h0) * hd halves. Returns the rows' longest context. */
static int load_q16(const attn_job *j, int r0, int nr, int h0, int h1, float *q16,
                    exsa_fp16 *tmp)
{
    const exsa_attn_args *a = j->a;
    const exsa_cpu_kernels *k = j->c->k;
    const int hd = a->kv->head_dim, group = j->group, nh = h1 - h0;
    const int kv0 = h0 / group, kv1 = (h1 - 1) / group + 1;
    int nc = 0;
    for (int q = 0; q < nr; q++) {
        const size_t off = ((size_t)(r0 + q) * (size_t)a->n_head + (size_t)h0) * (size_t)hd;
        k->f32_to_f16(a->q + off, tmp, (int64_t)nh * hd);
        for (int kh = kv0; kh < kv1; kh++) {
            int ha, hb;
            kv_heads(kh, group, h0, h1, &ha, &hb);
            float *dst = q16 + ((size_t)nr * (size_t)(ha - h0) + (size_t)q * (size_t)(hb - ha)) *
                                   (size_t)hd;
            k->f16_to_f32(tmp + (size_t)(ha - h0) * (size_t)hd, dst, (int64_t)(hb - ha) * hd);
        }
        nc = a->n_ctx[r0 + q] > nc ? a->n_ctx[r0 + q] : nc;
    }
    return nc;
}

/* Query rows [r0, r0 + nr) of one sequence (one block table), heads
 * [h0, h1): per chunk of tokens and per kv head among them, the scores of
 * every (row, query head) on that kv head (each K row read once for all),
 * then per row and head the online softmax, token by token in the
 * reference's order, and the V update with the factors it produced. Rows
 * whose context covers the whole chunk update together (accum_f16_rows);
 * a row whose context ends inside it, alone. Each (row, head) sees exactly
 * the arithmetic of a task of its own. */
static void attn_f16_run(const attn_job *j, int thread, int r0, int nr, int h0, int h1)
{
    const exsa_attn_args *a = j->a;
    const exsa_kv_layer *kv = a->kv;
    const exsa_cpu_attn_kernels *ak = j->ak;
    const int hd = kv->head_dim, group = j->group;
    const int nh = h1 - h0;
    const int kv0 = h0 / group, kv1 = (h1 - 1) / group + 1;
    const size_t hdp = j->hd_pad;
    const int32_t *bt = exsa_attn_row_table(a, r0);

    /* scratch (f16_scratch for nr * nh heads): q16 [nr * nh][hd], acc
     * [nr * nh][hdp], m, l [nr * nh], sc [nr * nh][F16_CHUNK], then
     * nh * hd halves of staging. q16 is by kv head, then row, then the
     * heads of that kv head (scores_f16 takes one kv head's query rows
     * contiguous); acc, m and l are by row, then head. */
    const int nq = nr * nh;
    float *q16 = cpu_tls(j->c, thread);
    float *acc = q16 + (size_t)nq * hdp;
    float *m = acc + (size_t)nq * hdp, *l = m + nq;
    float *sc = l + nq;
    exsa_fp16 *tmp = (exsa_fp16 *)(sc + (size_t)nq * F16_CHUNK);
    const int nc = load_q16(j, r0, nr, h0, h1, q16, tmp);
    memset(acc, 0, (size_t)nq * hdp * sizeof *acc);
    for (int i = 0; i < nq; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }

    const size_t lo = (size_t)kv0 * (size_t)hd * sizeof(exsa_fp16);
    const size_t hi = (size_t)kv1 * (size_t)hd * sizeof(exsa_fp16);
    float ms[F16_ROWS][F16_CHUNK], vs[F16_ROWS][F16_CHUNK];
    const char *krow[F16_CHUNK], *vrow[F16_CHUNK];
    const exsa_fp16 *kp[F16_CHUNK], *vp[F16_CHUNK];
    const int first = run_first(a, r0, nr);
    /* block index and offset of the next token */
    int bi = first / kv->block_size, bo = first % kv->block_size;
    for (int t0 = first; t0 < nc; t0 += F16_CHUNK) {
        const int n = nc - t0 < F16_CHUNK ? nc - t0 : F16_CHUNK;
        const int left = nc - t0 - n;
        chunk_rows(kv, bt, &bi, &bo, n, left < F16_CHUNK ? left : F16_CHUNK, lo, hi, krow, vrow);
        for (int kh = kv0; kh < kv1; kh++) {
            int ha, hb;
            kv_heads(kh, group, h0, h1, &ha, &hb);
            head_slices(n, krow, vrow, kh, hd, kp, vp);
            /* scores of row q, head ha + hh: sc + (q * (hb - ha) + hh) * n */
            ak->scores_f16(hd, n, kp, q16 + (size_t)nr * (size_t)(ha - h0) * (size_t)hd,
                           nr * (hb - ha), a->scale, sc);
            for (int h = ha - h0; h < hb - h0; h++) {
                const float *msp[F16_ROWS], *vsp[F16_ROWS];
                float *accp[F16_ROWS];
                int n_full = 0;
                for (int q = 0; q < nr; q++) {
                    const int left_q = a->n_ctx[r0 + q] - t0;
                    const int end = left_q < n ? left_q : n;
                    /* tokens before its window start: skipped */
                    const int skip = row_first(a, r0 + q) > t0 ? row_first(a, r0 + q) - t0 : 0;
                    const int nt = end - skip;
                    if (nt <= 0)
                        continue;
                    const float *s =
                        sc + ((size_t)q * (size_t)(hb - ha) + (size_t)(h - (ha - h0))) * (size_t)n +
                        skip;
                    const int x = q * nh + h;
                    m[x] = softmax_factors(s, nt, m[x], &l[x], ms[q], vs[q]);
                    if (nt < n) { /* its context ends or its window starts inside */
                        ak->accum_f16(hd, nt, vp + skip, ms[q], vs[q], acc + (size_t)x * hdp);
                        continue;
                    }
                    msp[n_full] = ms[q];
                    vsp[n_full] = vs[q];
                    accp[n_full++] = acc + (size_t)x * hdp;
                }
                if (n_full == 1)
                    ak->accum_f16(hd, n, vp, msp[0], vsp[0], accp[0]);
                else if (n_full > 1)
                    ak->accum_f16_rows(hd, n, vp, n_full, msp, vsp, accp);
            }
        }
    }
    for (int q = 0; q < nr; q++)
        for (int h = 0; h < nh; h++) {
            const int x = q * nh + h;
            float inv = l[x] > 0.0f ? 1.0f / l[x] : 0.0f; /* empty context: zeros */
            float *o = a->out + ((size_t)(r0 + q) * (size_t)a->n_head + (size_t)(h0 + h)) *
                                    (size_t)hd;
            const float *ah = acc + (size_t)x * hdp;
            for (int d = 0; d < hd; d++)
                o[d] = ah[d] * inv;
        }
}

/* ---- F16 cache, tiled float path ------------------------------------- */

/* Per-thread scratch of a tiled run of up to F16_TILE rows and hp query
 * heads, in floats: q16 (hd each), states (hd_pad + EXSA_ATTN_ST_EXTRA)
 * and the chunk's scores (EXSA_ATTN_TILE) per (row, head), V as floats
 * (EXSA_ATTN_TILE x hd_pad), then hp * hd halves of staging. 0, or -1 on
 * overflow. */
static int tiled_scratch(int hd, size_t hd_pad, int hp, size_t *n)
{
    size_t per, all, vf;
    if (__builtin_add_overflow((size_t)hd, hd_pad + EXSA_ATTN_ST_EXTRA + EXSA_ATTN_TILE, &per) ||
        __builtin_mul_overflow(per, (size_t)hp * F16_TILE, &all) ||
        __builtin_mul_overflow(hd_pad, (size_t)EXSA_ATTN_TILE, &vf) ||
        __builtin_add_overflow(all, vf, n) ||
        __builtin_add_overflow(*n, (size_t)hp * (size_t)hd / 2 + 1, n))
        return -1;
    return 0;
}

/* Query rows [r0, r0 + nr) of one sequence, heads [h0, h1), every row's
 * context longer than EXSA_ATTN_EXACT_CTX. As attn_f16_run, per chunk of
 * EXSA_ATTN_TILE tokens (from token 0) and kv head: the scores of every
 * (row, query head) on that kv head (scores_f16, each K row read once for
 * all), then the chunk's V as floats once and the table's attn_chunk for
 * the (row, head) pairs that see the chunk, four at a time: a float
 * online softmax and accumulator in place of the f16 rounding chain. The
 * next chunk is prefetched meanwhile. A pair's arithmetic depends only on
 * its own q, context and the chunk grid, so the rows and heads sharing a
 * task change nothing. */
static void attn_tiled_run(const attn_job *j, int thread, int r0, int nr, int h0, int h1)
{
    enum { T = EXSA_ATTN_TILE };
    const exsa_attn_args *a = j->a;
    const exsa_kv_layer *kv = a->kv;
    const exsa_cpu_attn_kernels *ak = j->ak;
    const int hd = kv->head_dim, group = j->group;
    const int nh = h1 - h0, nq = nr * nh;
    const int kv0 = h0 / group, kv1 = (h1 - 1) / group + 1;
    const size_t hdp = j->hd_pad, stn = hdp + EXSA_ATTN_ST_EXTRA;
    const int32_t *bt = exsa_attn_row_table(a, r0);

    /* q16 by kv head, then row, then that kv head's heads (scores_f16
     * takes one kv head's query rows contiguous); states and scores by
     * row, then head */
    float *q16 = cpu_tls(j->c, thread);
    float *sts = q16 + (size_t)nq * (size_t)hd;
    float *sc = sts + (size_t)nq * stn;
    float *vf = sc + (size_t)nq * T;
    exsa_fp16 *tmp = (exsa_fp16 *)(vf + (size_t)T * hdp);
    const int nc = load_q16(j, r0, nr, h0, h1, q16, tmp);
    for (int x = 0; x < nq; x++) {
        float *st = sts + (size_t)x * stn;
        memset(st, 0, (hdp + EXSA_ATTN_ST_L + 16) * sizeof *st);
        st[hdp + EXSA_ATTN_ST_M] = -INFINITY;
    }

    const size_t lo = (size_t)kv0 * (size_t)hd * sizeof(exsa_fp16);
    const size_t hi = (size_t)kv1 * (size_t)hd * sizeof(exsa_fp16);
    const char *krow[T], *vrow[T];
    const exsa_fp16 *kp[T], *vp[T];
    /* Chunks stay on the grid of multiples of T from token 0; a window's
     * first chunk reads only from the run's first visible token on (the
     * tokens before it stand in as copies of that one, with scores of
     * -inf: weight 0). */
    const int first = run_first(a, r0, nr);
    int bi = first / kv->block_size, bo = first % kv->block_size;
    for (int t0 = first / T * T; t0 < nc; t0 += T) {
        const int n = nc - t0 < T ? nc - t0 : T;
        const int left = nc - t0 - n;
        const int pre = first > t0 ? first - t0 : 0;
        chunk_rows(kv, bt, &bi, &bo, n - pre, left < T ? left : T, lo, hi, krow + pre,
                   vrow + pre);
        for (int i = 0; i < pre; i++) {
            krow[i] = krow[pre];
            vrow[i] = vrow[pre];
        }
        for (int kh = kv0; kh < kv1; kh++) {
            int ha, hb;
            kv_heads(kh, group, h0, h1, &ha, &hb);
            head_slices(n, krow, vrow, kh, hd, kp, vp);
            /* scores of row q, head ha + hh: sc + (q * (hb - ha) + hh) * n */
            ak->scores_f16(hd, n, kp, q16 + (size_t)nr * (size_t)(ha - h0) * (size_t)hd,
                           nr * (hb - ha), a->scale, sc);
            ak->chunk_v_f16(hd, (int)hdp, n, vp, vf);
            const float *sb[4];
            float *stb[4];
            int ntb[4], nb = 0;
            for (int q = 0; q < nr; q++) {
                const int left_q = a->n_ctx[r0 + q] - t0;
                const int nt = left_q < T ? left_q : T;
                const int skip = row_first(a, r0 + q) > t0 ? row_first(a, r0 + q) - t0 : 0;
                if (nt <= skip)
                    continue;
                for (int h = ha; h < hb; h++) {
                    float *sq = sc + ((size_t)q * (size_t)(hb - ha) + (size_t)(h - ha)) * (size_t)n;
                    for (int i = 0; i < skip; i++)
                        sq[i] = -INFINITY; /* before its window */
                    sb[nb] = sq;
                    stb[nb] = sts + ((size_t)q * (size_t)nh + (size_t)(h - h0)) * stn;
                    ntb[nb++] = nt;
                    if (nb == 4) {
                        ak->attn_chunk((int)hdp, vf, nb, sb, ntb, stb);
                        nb = 0;
                    }
                }
            }
            if (nb > 0)
                ak->attn_chunk((int)hdp, vf, nb, sb, ntb, stb);
        }
    }
    for (int x = 0; x < nq; x++) {
        const int q = x / nh, h = h0 + x % nh;
        const float *st = sts + (size_t)x * stn;
        const float l = exsa_attn_lsum(st + hdp + EXSA_ATTN_ST_L);
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float *o = a->out + ((size_t)(r0 + q) * (size_t)a->n_head + (size_t)h) * (size_t)hd;
        for (int d = 0; d < hd; d++)
            o[d] = st[d] * inv;
    }
}

static int row_tiled(const exsa_attn_args *a, int r)
{
    return a->n_ctx[r] > EXSA_ATTN_EXACT_CTX;
}

/* One task: query heads [h0, h1) of the F16_TILE rows of one tile, in
 * runs of rows that share a sequence (the same block table) and a path:
 * the f16 one-row arithmetic F16_ROWS rows at a time, or the tiled one. */
static void attn_f16_task(void *vctx, int task, int thread)
{
    const attn_job *j = vctx;
    const exsa_attn_args *a = j->a;
    const int tile = task / j->n_parts, h0 = task % j->n_parts * j->hp;
    const int h1 = h0 + j->hp < a->n_head ? h0 + j->hp : a->n_head;
    const int r0 = tile * F16_TILE, r1 = r0 + F16_TILE < a->n_rows ? r0 + F16_TILE : a->n_rows;
    for (int rs = r0; rs < r1;) {
        const int tiled = row_tiled(a, rs);
        int re = rs + 1;
        while (re < r1 && a->row_tab[re] == a->row_tab[rs] && row_tiled(a, re) == tiled)
            re++;
        if (tiled)
            attn_tiled_run(j, thread, rs, re - rs, h0, h1);
        else
            for (int x = rs; x < re; x += F16_ROWS)
                attn_f16_run(j, thread, x, re - x < F16_ROWS ? re - x : F16_ROWS, h0, h1);
        rs = re;
    }
}

/* ---- F32 and Q8_0 caches -------------------------------------------------- */

/* Per-thread scratch of an F32/Q8_0 task of hp query heads, in floats: acc
 * rows, m and l, the chunk's scores, and a token row's span of hp heads
 * dequantized (Q8_0). 0, or -1 if the size overflows. */
static int f32_scratch(int hp, int hd, size_t hd_pad, size_t *n)
{
    size_t per_head = hd_pad + 2 + ATTN_CHUNK, span;
    if (__builtin_mul_overflow((size_t)hp, (size_t)hd, &span) ||
        __builtin_mul_overflow((size_t)hp, per_head, n) ||
        __builtin_add_overflow(*n, span + 2 * EXSA_QK8_0, n))
        return -1;
    return 0;
}

/* A token row's elements [e_lo, e_hi) as floats: the row itself (F32) or
 * the Q8_0 blocks covering them dequantized into buf. */
static const float *span_f32(const attn_job *j, const char *row, int64_t e_lo, int64_t e_hi,
                             float *buf)
{
    if (j->a->kv->type == EXSA_TYPE_Q8_0)
        return q8_span(j->ak, row, e_lo, (int)(e_hi - e_lo), buf);
    return (const float *)row + e_lo;
}

/* One task: query heads [h0, h1) of row r. Per chunk of ATTN_CHUNK tokens:
 * the scores of all heads token by token (each K row read once, in order),
 * then per head the chunk's max and rescale, then the weights and V sums
 * token by token. Each head's arithmetic is exactly the one-head loop's
 * (dots, max in token order, correction, weights and sums in token order),
 * only interleaved with the other heads'. */
static void attn_task(void *vctx, int task, int thread)
{
    const attn_job *j = vctx;
    const exsa_attn_args *a = j->a;
    const exsa_kv_layer *kv = a->kv;
    const exsa_cpu_kernels *k = j->c->k;
    const int hd = kv->head_dim, bs = kv->block_size, group = j->group;
    const int r = task / j->n_parts, h0 = task % j->n_parts * j->hp;
    const int h1 = h0 + j->hp < a->n_head ? h0 + j->hp : a->n_head, nh = h1 - h0;
    const int64_t e_lo = (int64_t)(h0 / group) * hd, e_hi = (int64_t)((h1 - 1) / group + 1) * hd;
    const size_t hdp = j->hd_pad;
    const size_t off = ((size_t)r * (size_t)a->n_head + (size_t)h0) * (size_t)hd;
    const int nc = a->n_ctx[r];
    const int32_t *bt = exsa_attn_row_table(a, r);

    /* scratch (f32_scratch): acc [nh][hdp], m [nh], l [nh],
     * s [nh][ATTN_CHUNK], then the dequantized span */
    float *acc = cpu_tls(j->c, thread);
    float *m = acc + (size_t)nh * hdp, *l = m + nh;
    float *s = l + nh;
    float *buf = s + (size_t)nh * ATTN_CHUNK;
    memset(acc, 0, (size_t)nh * hdp * sizeof *acc);
    for (int h = 0; h < nh; h++) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
    }

    size_t slot_off[ATTN_CHUNK];
    const int first = row_first(a, r);
    int bi = first / bs, bo = first % bs; /* block index and offset of the next token */
    for (int t0 = first; t0 < nc; t0 += ATTN_CHUNK) {
        const int n = nc - t0 < ATTN_CHUNK ? nc - t0 : ATTN_CHUNK;
        for (int i = 0; i < n; i++) {
            slot_off[i] = ((size_t)bt[bi] * (size_t)bs + (size_t)bo) * kv->token_bytes;
            if (++bo == bs) {
                bo = 0;
                bi++;
            }
            const float *kr = span_f32(j, (const char *)kv->k + slot_off[i], e_lo, e_hi, buf);
            for (int h = 0; h < nh; h++) {
                const int64_t e0 = (int64_t)((h0 + h) / group) * hd - e_lo;
                float dot = k->dot_f32(hd, kr + e0, a->q + off + (size_t)h * (size_t)hd);
                s[(size_t)h * ATTN_CHUNK + (size_t)i] = dot * a->scale;
            }
        }
        for (int h = 0; h < nh; h++) {
            const float *sh = s + (size_t)h * ATTN_CHUNK;
            float cmax = -INFINITY;
            for (int i = 0; i < n; i++)
                cmax = sh[i] > cmax ? sh[i] : cmax;
            if (cmax > m[h]) {
                if (l[h] > 0.0f) {
                    float corr = expf(m[h] - cmax);
                    float *ah = acc + (size_t)h * hdp;
                    l[h] *= corr;
                    for (int d = 0; d < hd; d++)
                        ah[d] *= corr;
                }
                m[h] = cmax;
            }
        }
        for (int i = 0; i < n; i++) {
            const float *vr = span_f32(j, (const char *)kv->v + slot_off[i], e_lo, e_hi, buf);
            for (int h = 0; h < nh; h++) {
                const int64_t e0 = (int64_t)((h0 + h) / group) * hd - e_lo;
                float w = expf(s[(size_t)h * ATTN_CHUNK + (size_t)i] - m[h]);
                l[h] += w;
                k->axpy_f32(hd, w, vr + e0, acc + (size_t)h * hdp);
            }
        }
    }
    for (int h = 0; h < nh; h++) {
        float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f; /* empty context: zeros */
        float *o = a->out + off + (size_t)h * (size_t)hd;
        const float *ah = acc + (size_t)h * hdp;
        for (int d = 0; d < hd; d++)
            o[d] = ah[d] * inv;
    }
}

/* The task grid of attention a: query heads per part (*hp), parts per row
 * (*n_parts) and tasks; 0 when the shapes are not ones it takes. As few
 * parts per row as leave 4 tasks per thread (balance), so that a task
 * reads long runs of each token row; parts of whole kv groups where a
 * part holds more than one group. */
static int64_t attn_grid(const cpu_backend *c, const exsa_attn_args *a, int *hp, int *n_parts)
{
    const exsa_kv_layer *kv = a->kv;
    if (a->n_rows <= 0 || a->n_head <= 0 || kv->head_dim <= 0 || kv->n_kv_head <= 0 ||
        a->n_head % kv->n_kv_head != 0 || kv->block_size <= 0 ||
        (int64_t)a->n_rows * a->n_head > INT32_MAX ||
        (kv->type != EXSA_TYPE_F32 && kv->type != EXSA_TYPE_F16 && kv->type != EXSA_TYPE_Q8_0))
        return 0;
    const int group = a->n_head / kv->n_kv_head;
    const int64_t units =
        kv->type == EXSA_TYPE_F16 ? (a->n_rows + F16_TILE - 1) / F16_TILE : a->n_rows;
    int64_t want = (4 * (int64_t)c->n_threads + units - 1) / units;
    int parts = want < a->n_head ? (int)want : a->n_head;
    *hp = (a->n_head + parts - 1) / parts;
    if (*hp > group)
        *hp = (*hp + group - 1) / group * group;
    *n_parts = (a->n_head + *hp - 1) / *hp;
    return units * *n_parts;
}

/* Whether a's tasks are one per part (one tile of rows), every task the
 * same work: then thread t runs tasks [t * n / T, (t + 1) * n / T) and
 * reads the same heads' slices each step, which a q, k, v run can fetch
 * for it ahead (cpu_attn_thread_bytes); a share whose thread is late is
 * taken by another (run_each). */
static int attn_static(const cpu_backend *c, const exsa_attn_args *a, int64_t tasks, int n_parts)
{
    return c->n_threads > 1 && tasks == n_parts && (a->n_rows == 1 || a->kv->type == EXSA_TYPE_F16);
}

int cpu_attn_thread_bytes(const cpu_backend *c, const exsa_attn_args *a, int thread, size_t *lo,
                          size_t *hi)
{
    int hp, n_parts;
    const int64_t tasks = attn_grid(c, a, &hp, &n_parts);
    if (tasks == 0 || !attn_static(c, a, tasks, n_parts))
        return 0;
    const exsa_kv_layer *kv = a->kv;
    const int T = c->n_threads, group = a->n_head / kv->n_kv_head;
    const int64_t t0 = tasks * thread / T, t1 = tasks * (thread + 1) / T;
    if (t0 >= t1) {
        *lo = *hi = 0;
        return 1;
    }
    const int64_t h0 = t0 * hp, h1 = t1 * hp < a->n_head ? t1 * hp : a->n_head;
    const int64_t e0 = h0 / group * kv->head_dim, e1 = ((h1 - 1) / group + 1) * kv->head_dim;
    if (kv->type == EXSA_TYPE_Q8_0) {
        *lo = (size_t)(e0 / EXSA_QK8_0) * sizeof(exsa_block_q8_0);
        *hi = (size_t)((e1 + EXSA_QK8_0 - 1) / EXSA_QK8_0) * sizeof(exsa_block_q8_0);
    } else {
        const size_t eb = kv->type == EXSA_TYPE_F16 ? sizeof(exsa_fp16) : sizeof(float);
        *lo = (size_t)e0 * eb;
        *hi = (size_t)e1 * eb;
    }
    return 1;
}

typedef struct {
    exsa_task_fn fn;
    void *job;
    int64_t tasks;
    int n_threads;
} static_job;

static void static_task(void *vctx, int task, int thread)
{
    const static_job *s = vctx;
    const int64_t t0 = s->tasks * task / s->n_threads, t1 = s->tasks * (task + 1) / s->n_threads;
    for (int64_t t = t0; t < t1; t++)
        s->fn(s->job, (int)t, thread);
}

void cpu_attention(exsa_backend *b, const exsa_attn_args *a)
{
    cpu_backend *c = cpu_of(b);
    const exsa_kv_layer *kv = a->kv;
    int hd = kv->head_dim;
    if (a->n_rows <= 0 || a->n_head <= 0 || hd <= 0)
        return;
    size_t hd_pad = ((size_t)hd + 15) & ~(size_t)15;
    attn_job j = {c, a, 1, hd_pad, NULL, 1, 1};
    const int64_t total = attn_grid(c, a, &j.hp, &j.n_parts);
    int ok = total > 0;
    size_t scratch = 0;
    if (ok) {
        j.group = a->n_head / kv->n_kv_head;
        j.ak = exsa_cpu_attn_kernels_for(c->k);
        if (kv->type == EXSA_TYPE_F16) {
            size_t tiled = 0;
            ok = f16_scratch(j.hp * F16_ROWS, hd_pad, &scratch) == 0 &&
                 tiled_scratch(hd, hd_pad, j.hp, &tiled) == 0;
            scratch = tiled > scratch ? tiled : scratch;
        } else {
            ok = f32_scratch(j.hp, hd, hd_pad, &scratch) == 0;
        }
    }
    if (!ok || total > INT32_MAX || cpu_tls_reserve(c, scratch) != 0) {
        cpu_fill_nan(a->out, (int64_t)a->n_rows * a->n_head * hd);
        return;
    }
    exsa_task_fn fn = kv->type == EXSA_TYPE_F16 ? attn_f16_task : attn_task;
    if (attn_static(c, a, total, j.n_parts)) {
        static_job s = {fn, &j, total, c->n_threads};
        exsa_threadpool_run_each(c->pool, static_task, &s);
    } else {
        exsa_threadpool_run(c->pool, fn, &j, (int)total);
    }
}
