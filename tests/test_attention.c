/* Paged attention over an F16 KV cache: the fast path, bit for bit against
 * a plain scalar implementation of its defining semantics (written here).
 *
 * The semantics (cpu_attention.c, attn_kernels.h) follow llama.cpp's CPU
 * flash attention: per (row, query head), q rounded to f16; for each
 * context token in order, s = dot_f16_f32(k, q16) * scale with the dot of
 * the kernel table in use; if s > m: ms = expf(m - s), m = s, acc =
 * f16(acc * ms), vs = 1, else vs = expf(s - m); acc = f16(fmaf(v, vs,
 * acc)); l = l * ms + vs; out = acc / l (0 for an empty context). The
 * reference below does exactly that with quant.c's f16 converters and an
 * f16 array for acc; only the dot comes from the kernel table (test_kernels
 * checks it), since each table's dot rounds in its own order.
 *
 * Rows whose context is longer than EXSA_ATTN_EXACT_CTX keep those scores
 * but take the tiled float softmax of attn_kernels.h (attn_chunk over
 * chunks of EXSA_ATTN_TILE tokens from token 0), written out again here
 * (tiled_chunk_ref); every table's chunk_v_f16 and attn_chunk are checked
 * against it directly too, and exsa_exp_neg against expf.
 *
 * F32 and Q8_0 caches keep their own (float) semantics, also checked
 * exactly against a reference here: per (row, head), chunks of 64 tokens;
 * the chunk's scores (dot_f32 of the kernel table on the row's values, Q8_0
 * dequantized as d * q), the chunk max, a rescale of l and acc by
 * expf(m - max) when it rises (and l > 0), then per token w = expf(s - m),
 * l += w, axpy_f32(w, v).
 *
 * Every comparison is memcmp-exact:
 *   - the backend op against the reference: odd and large head dims (more
 *     than one register slice), GQA ratios 1..8, contexts crossing blocks,
 *     block sizes other than 16, many rows at once (prefill chunks of one
 *     sequence and decode rows of several), 1..7 threads (different task
 *     splits), f16 overflow (acc becomes inf) and subnormal values;
 *   - each attention table (scalar, AVX2, AVX-512 where the CPU has them)
 *     directly: scores_f16 against its kernel table's dot times the scale,
 *     accum_f16 against the formula, and that lanes past the head (beyond
 *     hd rounded to 16) are never written; dequant_q8_0 against d * q.
 * Sliding windows (exsa_attn_args.window): a row sees only positions
 * [n_ctx - window, n_ctx), with the same arithmetic over them as the
 * reference defines (the f16 one-row path and the F32/Q8_0 chunks start
 * at the window's first token; the tiled path keeps its grid from token 0
 * with the tokens before the window at weight 0), and blocks wholly
 * before the window are NaN in the tests: reading them would show.
 * The whole suite also runs in children with EXSA_CPU=scalar (and avx2 on
 * AVX-512 CPUs), so each table is used through the op as well (the table
 * is chosen once per process).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/cpu/attn_kernels.h"
#include "backend/cpu/cpu_features.h"
#include "backend/cpu/kernels.h"
#include "quant/quant.h"
#include "test_util.h"

static uint64_t g_rng = 0xa77e11u;

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static float h2f(exsa_fp16 h)
{
    return exsa_fp16_to_fp32(h);
}

static exsa_fp16 f2h(float f)
{
    return exsa_fp32_to_fp16(f);
}

/* Keeps the first failure; tests report it after freeing their buffers. */
static char g_fail[512];
static void note_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note_fail(const char *fmt, ...)
{
    if (g_fail[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_fail, sizeof g_fail, fmt, ap);
    va_end(ap);
}

static void report_fail(void)
{
    if (g_fail[0]) {
        char msg[sizeof g_fail];
        memcpy(msg, g_fail, sizeof msg);
        g_fail[0] = '\0';
        fail_msg("%s", msg);
    }
}

/* First index where a and b differ bitwise, or -1. */
static long first_diff(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(a + i, b + i, sizeof(float)) != 0)
            return (long)i;
    return -1;
}

/* ---- the reference ------------------------------------------------------ */

/* The first position row r sees (its window's start, or 0). */
static int first_pos(const exsa_attn_args *a, int r)
{
    return a->window > 0 && a->n_ctx[r] > a->window ? a->n_ctx[r] - a->window : 0;
}

typedef float (*dot_fn)(int n, const exsa_fp16 *x, const float *y);

/* attn_kernels.h's attn_chunk for one query vector, written from its
 * definition: sc holds the scores of the first nt tokens, vf V rows of
 * hdp floats. */
static void tiled_chunk_ref(int hdp, const float *vf, const float *sc, int nt, float *st)
{
    enum { T = EXSA_ATTN_TILE };
    float s[T], x[16], p[T];
    for (int j = 0; j < T; j++)
        s[j] = j < nt ? sc[j] : -INFINITY;
    for (int i = 0; i < 16; i++)
        x[i] = s[i] > s[i + 16] ? s[i] : s[i + 16];
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++)
            x[i] = x[i] > x[i + w] ? x[i] : x[i + w];
    float *m = st + hdp + EXSA_ATTN_ST_M, *l = st + hdp + EXSA_ATTN_ST_L;
    const float cm = x[0] > *m ? x[0] : *m;
    const float f = exsa_exp_neg(*m - cm);
    for (int j = 0; j < T; j++)
        p[j] = exsa_exp_neg(s[j] - cm);
    for (int i = 0; i < 16; i++) {
        l[i] = l[i] * f + p[i];
        l[i] = l[i] + p[i + 16];
    }
    for (int d = 0; d < hdp; d++) {
        st[d] = st[d] * f;
        for (int j = 0; j < nt; j++)
            st[d] = fmaf(p[j], vf[(size_t)j * (size_t)hdp + (size_t)d], st[d]);
    }
    *m = cm;
}

/* A row whose context is longer than EXSA_ATTN_EXACT_CTX: the scores of
 * the f16 semantics (q rounded to f16, the table's dot, times the scale),
 * then float softmax and V sums over chunks of EXSA_ATTN_TILE tokens from
 * token 0. */
static void reference_tiled(const exsa_attn_args *a, dot_fn dot, int r, int h, float *out)
{
    enum { T = EXSA_ATTN_TILE };
    const exsa_kv_layer *kv = a->kv;
    const int hd = kv->head_dim, hdp = (hd + 15) / 16 * 16, group = a->n_head / kv->n_kv_head;
    const size_t e0 = (size_t)(h / group) * (size_t)hd;
    const float *q = a->q + ((size_t)r * (size_t)a->n_head + (size_t)h) * (size_t)hd;
    float *q16 = xmalloc(sizeof(float) * (size_t)hd);
    for (int d = 0; d < hd; d++)
        q16[d] = h2f(f2h(q[d]));
    float *vf = xmalloc(sizeof(float) * (size_t)hdp * T);
    float *st = xmalloc(sizeof(float) * (size_t)(hdp + EXSA_ATTN_ST_EXTRA));
    float sc[T];
    memset(st, 0, sizeof(float) * (size_t)(hdp + EXSA_ATTN_ST_EXTRA));
    st[hdp + EXSA_ATTN_ST_M] = -INFINITY;
    const int first = first_pos(a, r);
    for (int t0 = first / T * T; t0 < a->n_ctx[r]; t0 += T) {
        const int nt = a->n_ctx[r] - t0 < T ? a->n_ctx[r] - t0 : T;
        memset(vf, 0, sizeof(float) * (size_t)hdp * T);
        for (int j = 0; j < nt; j++) {
            const int t = t0 + j;
            if (t < first) { /* before the window: weight 0 */
                sc[j] = -INFINITY;
                continue;
            }
            int32_t blk = exsa_attn_row_table(a, r)[t / kv->block_size];
            size_t slot = (size_t)blk * (size_t)kv->block_size + (size_t)(t % kv->block_size);
            const exsa_fp16 *kp = (const exsa_fp16 *)((const char *)kv->k + slot * kv->token_bytes) + e0;
            const exsa_fp16 *vp = (const exsa_fp16 *)((const char *)kv->v + slot * kv->token_bytes) + e0;
            sc[j] = dot(hd, kp, q16) * a->scale;
            for (int d = 0; d < hd; d++)
                vf[(size_t)j * (size_t)hdp + (size_t)d] = h2f(vp[d]);
        }
        tiled_chunk_ref(hdp, vf, sc, nt, st);
    }
    const float l = exsa_attn_lsum(st + hdp + EXSA_ATTN_ST_L);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int d = 0; d < hd; d++)
        out[d] = st[d] * inv;
    free(st);
    free(vf);
    free(q16);
}

static void reference(const exsa_attn_args *a, dot_fn dot, float *out)
{
    const exsa_kv_layer *kv = a->kv;
    const int hd = kv->head_dim, group = a->n_head / kv->n_kv_head;
    float *q16 = xmalloc(sizeof(float) * (size_t)hd);
    exsa_fp16 *acc = xmalloc(sizeof(exsa_fp16) * (size_t)hd);
    for (int r = 0; r < a->n_rows; r++)
        for (int h = 0; h < a->n_head; h++) {
            size_t off = ((size_t)r * (size_t)a->n_head + (size_t)h) * (size_t)hd;
            size_t e0 = (size_t)(h / group) * (size_t)hd;
            if (a->n_ctx[r] > EXSA_ATTN_EXACT_CTX) {
                reference_tiled(a, dot, r, h, out + off);
                continue;
            }
            for (int d = 0; d < hd; d++) {
                q16[d] = h2f(f2h(a->q[off + d]));
                acc[d] = 0;
            }
            float m = -INFINITY, l = 0.0f;
            for (int t = first_pos(a, r); t < a->n_ctx[r]; t++) {
                int32_t blk = exsa_attn_row_table(a, r)[t / kv->block_size];
                size_t slot = (size_t)blk * (size_t)kv->block_size + (size_t)(t % kv->block_size);
                const exsa_fp16 *kp = (const exsa_fp16 *)((const char *)kv->k + slot * kv->token_bytes) + e0;
                const exsa_fp16 *vp = (const exsa_fp16 *)((const char *)kv->v + slot * kv->token_bytes) + e0;
                float s = dot(hd, kp, q16) * a->scale, ms = 1.0f, vs = 1.0f;
                if (s > m) {
                    ms = expf(m - s);
                    m = s;
                    for (int d = 0; d < hd; d++)
                        acc[d] = f2h(h2f(acc[d]) * ms);
                } else {
                    vs = expf(s - m);
                }
                for (int d = 0; d < hd; d++)
                    acc[d] = f2h(fmaf(h2f(vp[d]), vs, h2f(acc[d])));
                l = l * ms + vs;
            }
            float inv = l > 0.0f ? 1.0f / l : 0.0f;
            for (int d = 0; d < hd; d++)
                out[off + d] = h2f(acc[d]) * inv;
        }
    free(acc);
    free(q16);
}

enum { F32_CHUNK = 64 };

/* A token row's element e of a float-semantics cache. */
static float cache_elem(const exsa_kv_layer *kv, const char *row, size_t e)
{
    if (kv->type == EXSA_TYPE_F32)
        return ((const float *)row)[e];
    const exsa_block_q8_0 *b = (const exsa_block_q8_0 *)row + e / EXSA_QK8_0;
    return h2f(b->d) * (float)b->qs[e % EXSA_QK8_0];
}

static void reference_f32(const exsa_attn_args *a, const exsa_cpu_kernels *kt, float *out)
{
    const exsa_kv_layer *kv = a->kv;
    const int hd = kv->head_dim, group = a->n_head / kv->n_kv_head;
    float *acc = xmalloc(sizeof(float) * (size_t)hd);
    float *kx = xmalloc(sizeof(float) * (size_t)hd * F32_CHUNK);
    float *vx = xmalloc(sizeof(float) * (size_t)hd * F32_CHUNK);
    float s[F32_CHUNK];
    for (int r = 0; r < a->n_rows; r++)
        for (int h = 0; h < a->n_head; h++) {
            size_t off = ((size_t)r * (size_t)a->n_head + (size_t)h) * (size_t)hd;
            size_t e0 = (size_t)(h / group) * (size_t)hd;
            memset(acc, 0, sizeof(float) * (size_t)hd);
            float m = -INFINITY, l = 0.0f;
            for (int t0 = first_pos(a, r); t0 < a->n_ctx[r]; t0 += F32_CHUNK) {
                int n = a->n_ctx[r] - t0 < F32_CHUNK ? a->n_ctx[r] - t0 : F32_CHUNK;
                float cmax = -INFINITY;
                for (int i = 0; i < n; i++) {
                    int t = t0 + i;
                    int32_t blk = exsa_attn_row_table(a, r)[t / kv->block_size];
                    size_t slot = (size_t)blk * (size_t)kv->block_size + (size_t)(t % kv->block_size);
                    for (int d = 0; d < hd; d++) {
                        kx[(size_t)i * (size_t)hd + (size_t)d] =
                            cache_elem(kv, (const char *)kv->k + slot * kv->token_bytes, e0 + (size_t)d);
                        vx[(size_t)i * (size_t)hd + (size_t)d] =
                            cache_elem(kv, (const char *)kv->v + slot * kv->token_bytes, e0 + (size_t)d);
                    }
                    s[i] = kt->dot_f32(hd, kx + (size_t)i * (size_t)hd, a->q + off) * a->scale;
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
                    kt->axpy_f32(hd, w, vx + (size_t)i * (size_t)hd, acc);
                }
            }
            float inv = l > 0.0f ? 1.0f / l : 0.0f;
            for (int d = 0; d < hd; d++)
                out[off + d] = acc[d] * inv;
        }
    free(vx);
    free(kx);
    free(acc);
}

/* ---- the op against the reference --------------------------------------- */

enum { MAX_ROWS = 12 };

/* Values for the cache and q: normal ones, or special ranges. */
enum fill { FILL_NORMAL, FILL_OVERFLOW, FILL_TINY };

typedef struct {
    int n_head, n_kv, hd, block_size;
    int n_rows;
    int n_ctx[MAX_ROWS];
    int seq[MAX_ROWS]; /* rows with the same seq share a block table */
    enum fill fill;
    int window;        /* 0: none */
} attn_case;

static exsa_fp16 rand_half(enum fill f, float scale)
{
    float x = exsa_test_rand_normal(&g_rng) * scale;
    if (f == FILL_OVERFLOW) /* positive and large: the sum passes 65504 */
        x = 20000.0f + 10000.0f * exsa_test_rand_uniform(&g_rng);
    else if (f == FILL_TINY) /* around and below f16's smallest normal */
        x *= 1e-5f;
    return f2h(x);
}

/* Token row values of a cache of `type` at dst (row elements). */
static void store_row(int type, const float *x, size_t row, char *dst)
{
    if (type == EXSA_TYPE_F32)
        memcpy(dst, x, row * sizeof(float));
    else if (type == EXSA_TYPE_F16)
        for (size_t e = 0; e < row; e++)
            ((exsa_fp16 *)dst)[e] = f2h(x[e]);
    else
        exsa_quantize_row_q8_0_ref(x, dst, (int64_t)row);
}

static float rand_value(enum fill f, float scale)
{
    return h2f(rand_half(f, scale));
}

static void run_case(exsa_backend *B, int type, const attn_case *c, int threads)
{
    const int hd = c->hd, bs = c->block_size;
    const size_t row = (size_t)c->n_kv * (size_t)hd;
    const size_t tb = exsa_type_row_size(type, (int64_t)row);
    assert_true(tb > 0);
    /* blocks per sequence: enough for its longest row */
    int max_ctx[MAX_ROWS] = {0}, n_seq = 0;
    for (int r = 0; r < c->n_rows; r++) {
        if (c->seq[r] + 1 > n_seq)
            n_seq = c->seq[r] + 1;
        if (c->n_ctx[r] > max_ctx[c->seq[r]])
            max_ctx[c->seq[r]] = c->n_ctx[r];
    }
    int n_blocks = 0, first[MAX_ROWS];
    for (int s = 0; s < n_seq; s++) {
        first[s] = n_blocks;
        n_blocks += (max_ctx[s] + bs - 1) / bs;
    }
    n_blocks += 3; /* blocks nobody uses, holding NaN: must not be read */

    exsa_kv_layer kv = {NULL, NULL, type, bs, c->n_kv, hd, tb};
    size_t n_slots = (size_t)n_blocks * (size_t)bs;
    char *kc = xmalloc(n_slots * tb), *vc = xmalloc(n_slots * tb);
    float *kx = xmalloc(sizeof(float) * row), *vx = xmalloc(sizeof(float) * row);
    /* shuffled block ids: tables are not contiguous */
    int32_t *perm = xmalloc(sizeof(int32_t) * (size_t)n_blocks);
    for (int i = 0; i < n_blocks; i++)
        perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)(exsa_test_rand_u64(&g_rng) % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (size_t slot = 0; slot < n_slots; slot++) {
        int unused = 0;
        for (int i = n_blocks - 3; i < n_blocks; i++)
            unused |= slot / (size_t)bs == (size_t)perm[i];
        for (size_t e = 0; e < row; e++) {
            kx[e] = unused ? NAN : rand_value(c->fill == FILL_TINY ? FILL_TINY : FILL_NORMAL, 1.0f);
            vx[e] = unused ? NAN : rand_value(c->fill, 1.0f);
        }
        store_row(type, kx, row, kc + slot * tb);
        store_row(type, vx, row, vc + slot * tb);
    }
    kv.k = kc;
    kv.v = vc;

    const size_t qrow = (size_t)c->n_head * (size_t)hd;
    const size_t nout = qrow * (size_t)c->n_rows;
    float *q = xmalloc(sizeof(float) * nout), *out = xmalloc(sizeof(float) * nout);
    float *ref = xmalloc(sizeof(float) * nout);
    float qscale = c->fill == FILL_NORMAL ? 3.0f : 1.0f; /* 3: peaked softmax */
    for (size_t i = 0; i < nout; i++)
        q[i] = exsa_test_rand_normal(&g_rng) * qscale;
    if (c->fill == FILL_OVERFLOW) /* equal scores: every token adds fully */
        memset(q, 0, sizeof(float) * nout);
    int32_t n_ctx[MAX_ROWS];
    int32_t row_tab[MAX_ROWS]; /* offsets into tabs (bt_stride 1) */
    /* Per sequence, its table; with a window, the blocks wholly before
     * every row's window point at a NaN block (as if returned). */
    int32_t *tabs = xmalloc(sizeof(int32_t) * (size_t)n_blocks);
    memcpy(tabs, perm, sizeof(int32_t) * (size_t)n_blocks);
    for (int s = 0; s < n_seq && c->window > 0; s++) {
        int lo = INT32_MAX;
        for (int r = 0; r < c->n_rows; r++)
            if (c->seq[r] == s) {
                int f = c->n_ctx[r] > c->window ? c->n_ctx[r] - c->window : 0;
                lo = f < lo ? f : lo;
            }
        for (int b = 0; lo != INT32_MAX && b < lo / bs; b++)
            tabs[first[s] + b] = perm[n_blocks - 1];
    }
    for (int r = 0; r < c->n_rows; r++) {
        n_ctx[r] = c->n_ctx[r];
        row_tab[r] = first[c->seq[r]];
    }
    for (size_t i = 0; i < nout; i++)
        memcpy(out + i, &(uint32_t){0x7fc00123u}, sizeof(float)); /* all must be written */
    exsa_attn_args a = {.n_rows = c->n_rows, .n_head = c->n_head, .q = q, .out = out,
                        .n_ctx = n_ctx, .row_tab = row_tab, .block_table = tabs,
                        .bt_stride = 1, .kv = &kv,
                        .scale = 1.0f / sqrtf((float)hd), .window = c->window};
    B->ops->attention(B, &a);
    if (type == EXSA_TYPE_F16)
        reference(&a, exsa_cpu_kernels_best()->dot_f16_f32, ref);
    else
        reference_f32(&a, exsa_cpu_kernels_best(), ref);

    const char *tname = exsa_type_traits_get(type)->name;
    long d = first_diff(out, ref, nout);
    if (d >= 0) {
        int r = (int)((size_t)d / qrow), h = (int)((size_t)d % qrow / (size_t)hd);
        note_fail("%s heads %d/%d dim %d block %d rows %d threads %d fill %d window %d: row %d "
                  "(n_ctx %d) head %d dim %d: got %.9g, reference %.9g",
                  tname, c->n_head, c->n_kv, hd, bs, c->n_rows, threads, (int)c->fill, c->window, r,
                  n_ctx[r], h, (int)((size_t)d % (size_t)hd), (double)out[d], (double)ref[d]);
    }
    if (c->fill == FILL_OVERFLOW && type == EXSA_TYPE_F16) {
        /* the case must really overflow, or it tests nothing */
        int saw_inf = 0;
        for (size_t i = 0; i < nout; i++)
            saw_inf |= isinf(ref[i]);
        if (!saw_inf)
            note_fail("overflow case: no inf in the reference");
    }
    for (size_t i = 0; i < nout && c->window > 0; i++)
        if (isnan(out[i])) { /* a NaN block was read */
            note_fail("window %d: NaN in the output (row %zu)", c->window, i / qrow);
            break;
        }
    free(ref);
    free(out);
    free(q);
    free(tabs);
    free(perm);
    free(vx);
    free(kx);
    free(vc);
    free(kc);
    report_fail();
}

static const attn_case cases[] = {
    /* the 110M shape: decode rows of 8 sequences */
    {12, 12, 64, 16, 8, {320, 257, 256, 255, 17, 16, 1, 300}, {0, 1, 2, 3, 4, 5, 6, 7},
     FILL_NORMAL, 0},
    /* a prefill chunk of one sequence (causal: n_ctx grows by row) */
    {4, 4, 64, 16, 10, {31, 32, 33, 34, 35, 36, 37, 38, 39, 40}, {0}, FILL_NORMAL, 0},
    /* GQA ratios 2, 3, 4, 8; odd and large head dims */
    {8, 4, 128, 16, 3, {100, 1, 64}, {0, 1, 0}, FILL_NORMAL, 0},
    {6, 2, 40, 16, 4, {5, 48, 49, 70}, {0, 1, 1, 0}, FILL_NORMAL, 0},
    {8, 2, 72, 16, 2, {80, 33}, {0, 1}, FILL_NORMAL, 0},
    {16, 2, 80, 16, 2, {65, 3}, {0, 1}, FILL_NORMAL, 0},
    {3, 1, 13, 16, 3, {1, 16, 47}, {0, 0, 0}, FILL_NORMAL, 0},
    {2, 2, 7, 16, 2, {9, 40}, {0, 1}, FILL_NORMAL, 0},
    {4, 2, 200, 16, 2, {50, 19}, {0, 1}, FILL_NORMAL, 0},
    {2, 1, 264, 16, 2, {33, 70}, {0, 1}, FILL_NORMAL, 0},
    {2, 2, 1, 16, 2, {3, 20}, {0, 1}, FILL_NORMAL, 0},
    /* prefill chunks across EXSA_ATTN_EXACT_CTX (both paths in one run),
     * more rows than a task's tile, chunks ending anywhere */
    {4, 4, 64, 16, 12, {58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69}, {0}, FILL_NORMAL, 0},
    {8, 2, 128, 16, 12, {97, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140},
     {0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, FILL_NORMAL, 0},
    {32, 4, 64, 16, 12, {300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311}, {0},
     FILL_NORMAL, 0},
    {5, 5, 17, 7, 3, {65, 96, 97}, {0, 1, 2}, FILL_NORMAL, 0},
    /* block sizes other than 16; an empty context (zeros) */
    {4, 2, 64, 5, 3, {23, 0, 11}, {0, 1, 2}, FILL_NORMAL, 0},
    {6, 3, 24, 7, 2, {50, 64}, {0, 1}, FILL_NORMAL, 0},
    {2, 2, 64, 64, 2, {130, 64}, {0, 1}, FILL_NORMAL, 0},
    /* acc overflows f16 to inf; values in the f16 subnormal range */
    {2, 1, 24, 16, 2, {40, 3}, {0, 1}, FILL_OVERFLOW, 0},
    {2, 1, 24, 16, 2, {100, 40}, {0, 1}, FILL_OVERFLOW, 0},
    {4, 2, 40, 16, 2, {60, 17}, {0, 1}, FILL_TINY, 0},
    {4, 2, 40, 16, 2, {90, 170}, {0, 1}, FILL_TINY, 0},
    /* sliding windows smaller than, equal to and larger than the context,
     * on both F16 paths, odd sizes, a prefill chunk of one sequence
     * (rows whose windows start at different tokens) and decode rows */
    {.n_head = 4, .n_kv = 1, .hd = 64, .block_size = 16, .n_rows = 8,
     .n_ctx = {300, 257, 256, 255, 17, 16, 1, 130}, .seq = {0, 1, 2, 3, 4, 5, 6, 7},
     .fill = FILL_NORMAL, .window = 32},
    {.n_head = 4, .n_kv = 2, .hd = 40, .block_size = 16, .n_rows = 12,
     .n_ctx = {97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108}, .seq = {0},
     .fill = FILL_NORMAL, .window = 37},
    {.n_head = 3, .n_kv = 1, .hd = 13, .block_size = 7, .n_rows = 6,
     .n_ctx = {20, 21, 22, 23, 24, 25}, .seq = {0}, .fill = FILL_NORMAL, .window = 5},
    {.n_head = 2, .n_kv = 2, .hd = 64, .block_size = 16, .n_rows = 4,
     .n_ctx = {45, 60, 61, 200}, .seq = {0, 1, 1, 2}, .fill = FILL_NORMAL, .window = 45},
    {.n_head = 2, .n_kv = 1, .hd = 32, .block_size = 16, .n_rows = 3,
     .n_ctx = {40, 64, 70}, .seq = {0, 1, 2}, .fill = FILL_NORMAL, .window = 64},
    {.n_head = 2, .n_kv = 1, .hd = 32, .block_size = 16, .n_rows = 3,
     .n_ctx = {40, 64, 70}, .seq = {0, 1, 2}, .fill = FILL_NORMAL, .window = 1000},
    {.n_head = 8, .n_kv = 2, .hd = 72, .block_size = 16, .n_rows = 5,
     .n_ctx = {1, 2, 513, 514, 515}, .seq = {0, 1, 2, 2, 2}, .fill = FILL_NORMAL, .window = 1},
    {.n_head = 4, .n_kv = 4, .hd = 24, .block_size = 5, .n_rows = 4,
     .n_ctx = {129, 130, 131, 300}, .seq = {0, 0, 0, 1}, .fill = FILL_NORMAL, .window = 66},
};

static void run_cases(int type, const int *thread_counts, size_t n_counts)
{
    for (size_t t = 0; t < n_counts; t++) {
        exsa_err err = {0};
        exsa_backend *B = exsa_backend_cpu_create(thread_counts[t], &err);
        assert_non_null(B);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            const attn_case *c = &cases[i];
            /* Q8_0 rows are whole blocks; overflow is an f16 matter */
            if (type == EXSA_TYPE_Q8_0 && (c->n_kv * c->hd) % EXSA_QK8_0 != 0)
                continue;
            if (type != EXSA_TYPE_F16 && c->fill == FILL_OVERFLOW)
                continue;
            run_case(B, type, c, thread_counts[t]);
        }
        exsa_backend_free(B);
    }
}

static void test_f16_matches_reference(void **state)
{
    (void)state;
    static const int threads[] = {1, 2, 3, 7};
    run_cases(EXSA_TYPE_F16, threads, 4);
}

static void test_f32_q8_0_match_reference(void **state)
{
    (void)state;
    static const int threads[] = {1, 3};
    run_cases(EXSA_TYPE_F32, threads, 2);
    run_cases(EXSA_TYPE_Q8_0, threads, 2);
}

/* The op picks the attention table that pairs with the kernel table. */
static void test_table_pairing(void **state)
{
    (void)state;
    const exsa_cpu_kernels *k = exsa_cpu_kernels_best();
    const exsa_cpu_attn_kernels *ak = exsa_cpu_attn_kernels_for(k);
    assert_non_null(ak);
    assert_string_equal(ak->isa, k->isa);
    assert_string_equal(exsa_cpu_attn_kernels_for(exsa_cpu_kernels_scalar())->isa, "scalar");
    if (exsa_cpu_kernels_avx2())
        assert_ptr_equal(exsa_cpu_attn_kernels_for(exsa_cpu_kernels_avx2()),
                         exsa_cpu_attn_kernels_avx2());
    else
        assert_null(exsa_cpu_attn_kernels_avx2());
    if (exsa_cpu_kernels_avx512())
        assert_ptr_equal(exsa_cpu_attn_kernels_for(exsa_cpu_kernels_avx512()),
                         exsa_cpu_attn_kernels_avx512());
    else
        assert_null(exsa_cpu_attn_kernels_avx512());
}

/* ---- each table's kernels directly --------------------------------------- */

enum { GUARD = 32, MAX_N = 40 };

/* chunk_v_f16 against its formula (zeros where it says so), then
 * attn_chunk for 1..6 query vectors with their own token counts, scores
 * and states (fresh, rising and falling maxima) against tiled_chunk_ref,
 * bit for bit; scores past nt are NaN (never to be read) and nothing is
 * written past a state. */
static void check_tiled(const char *name, const exsa_cpu_attn_kernels *ak, int hd, int n,
                        const exsa_fp16 *const *rows)
{
    enum { T = EXSA_ATTN_TILE, MAXQ = 6 };
    const int hdp = (hd + 15) / 16 * 16, stn = hdp + EXSA_ATTN_ST_EXTRA;
    float *vf = xmalloc(sizeof(float) * (size_t)hdp * T);
    for (size_t i = 0; i < (size_t)hdp * T; i++)
        vf[i] = NAN;
    ak->chunk_v_f16(hd, hdp, n, rows, vf);
    for (int j = 0; j < n; j++)
        for (int d = 0; d < hdp; d++) {
            float w = d < hd ? h2f(rows[j][d]) : 0.0f;
            if (memcmp(&w, &vf[(size_t)j * (size_t)hdp + (size_t)d], sizeof w) != 0)
                note_fail("%s chunk_v_f16 hd %d n %d: vf[%d][%d] %.9g, want %.9g", name, hd, n, j,
                          d, (double)vf[(size_t)j * (size_t)hdp + (size_t)d], (double)w);
        }
    for (int j = n; j < T; j++)
        for (int d = 0; d < hdp; d++)
            vf[(size_t)j * (size_t)hdp + (size_t)d] = NAN; /* never to be read */

    float *st = xmalloc(sizeof(float) * (size_t)MAXQ * (size_t)(stn + GUARD));
    float *want = xmalloc(sizeof(float) * (size_t)MAXQ * (size_t)stn);
    float sc[MAXQ][T];
    for (int nq = 1; nq <= MAXQ; nq++) {
        const float *sp[MAXQ];
        float *stp[MAXQ];
        int nt[MAXQ];
        for (int i = 0; i < nq; i++) {
            nt[i] = i == 0 ? n : 1 + (int)(exsa_test_rand_u64(&g_rng) % (uint64_t)n);
            for (int j = 0; j < T; j++)
                sc[i][j] = j < nt[i] ? exsa_test_rand_normal(&g_rng) * 3.0f : NAN;
            sp[i] = sc[i];
            stp[i] = st + (size_t)i * (size_t)(stn + GUARD);
            const uint64_t kind = exsa_test_rand_u64(&g_rng) % 3;
            for (int d = 0; d < stn + GUARD; d++)
                stp[i][d] = d < hd ? exsa_test_rand_normal(&g_rng) : d < hdp ? 0.0f : -12345.0f;
            for (int e = 0; e < 16; e++)
                stp[i][hdp + EXSA_ATTN_ST_L + e] = kind == 0 ? 0.0f : exsa_test_rand_uniform(&g_rng);
            stp[i][hdp + EXSA_ATTN_ST_M] = kind == 0 ? -INFINITY
                                           : kind == 1 ? -3.0f : 3.0f; /* max rises / stays */
            if (kind == 0)
                for (int d = 0; d < hdp; d++)
                    stp[i][d] = 0.0f;
            memcpy(want + (size_t)i * (size_t)stn, stp[i], sizeof(float) * (size_t)stn);
            tiled_chunk_ref(hdp, vf, sc[i], nt[i], want + (size_t)i * (size_t)stn);
        }
        ak->attn_chunk(hdp, vf, nq, sp, nt, stp);
        for (int i = 0; i < nq; i++) {
            long d = first_diff(stp[i], want + (size_t)i * (size_t)stn, (size_t)hdp);
            long e = first_diff(stp[i] + hdp, want + (size_t)i * (size_t)stn + hdp, 17);
            if (d >= 0 || e >= 0)
                note_fail("%s attn_chunk hd %d n %d queries %d: query %d (nt %d) %s %ld: %.9g, "
                          "want %.9g",
                          name, hd, n, nq, i, nt[i], d >= 0 ? "acc" : "l/m", d >= 0 ? d : e,
                          (double)stp[i][d >= 0 ? d : hdp + e],
                          (double)want[(size_t)i * (size_t)stn + (size_t)(d >= 0 ? d : hdp + e)]);
            for (int g = stn; g < stn + GUARD; g++)
                if (stp[i][g] != -12345.0f)
                    note_fail("%s attn_chunk hd %d: wrote past the state", name, hd);
        }
    }
    free(want);
    free(st);
    free(vf);
}

static void check_table(const char *name, const exsa_cpu_attn_kernels *ak,
                        const exsa_cpu_kernels *k)
{
    static const int hds[] = {1, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 80, 96, 127,
                              128, 129, 136, 192, 255, 256, 257, 300};
    static const int ns[] = {1, 2, 7, 16, 32, MAX_N};
    for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++) {
        const int hd = hds[hi], hdp = (hd + 15) / 16 * 16, nq = 1 + (int)(hi % 4);
        /* rows at odd offsets and strides, so nothing is aligned */
        exsa_fp16 *kv = xmalloc(sizeof(exsa_fp16) * ((size_t)MAX_N * (size_t)(hd + 3) + 1));
        for (size_t i = 0; i < (size_t)MAX_N * (size_t)(hd + 3) + 1; i++)
            kv[i] = rand_half(FILL_NORMAL, 1.0f);
        const exsa_fp16 *rows[MAX_N];
        for (int i = 0; i < MAX_N; i++)
            rows[i] = kv + 1 + (size_t)i * (size_t)(hd + 3);
        float *q = xmalloc(sizeof(float) * (size_t)nq * (size_t)hd);
        for (int i = 0; i < nq * hd; i++)
            q[i] = h2f(f2h(exsa_test_rand_normal(&g_rng)));
        float *acc = xmalloc(sizeof(float) * (size_t)(hdp + GUARD));
        float *want = xmalloc(sizeof(float) * (size_t)hdp);
        float sc[4 * MAX_N], ms[MAX_N], vs[MAX_N];

        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            const int n = ns[ni];
            ak->scores_f16(hd, n, rows, q, nq, 0.125f, sc);
            for (int h = 0; h < nq; h++)
                for (int i = 0; i < n; i++) {
                    float w = k->dot_f16_f32(hd, rows[i], q + (size_t)h * (size_t)hd) * 0.125f;
                    if (memcmp(&w, &sc[h * n + i], sizeof w) != 0)
                        note_fail("%s scores_f16 hd %d n %d head %d token %d: %.9g, dot %.9g",
                                  name, hd, n, h, i, (double)sc[h * n + i], (double)w);
                }

            /* factors: rescales (0 < ms < 1, ms == 0 as for the first token,
             * ms == 1 exactly) among plain weights */
            for (int i = 0; i < n; i++) {
                uint64_t u = exsa_test_rand_u64(&g_rng) % 8;
                ms[i] = u == 0 ? 0.0f : u == 1 ? exsa_test_rand_uniform(&g_rng) : 1.0f;
                vs[i] = ms[i] != 1.0f ? 1.0f : exsa_test_rand_uniform(&g_rng);
            }
            for (int d = 0; d < hdp + GUARD; d++)
                acc[d] = d < hd ? h2f(f2h(exsa_test_rand_normal(&g_rng))) : 0.0f;
            for (int d = hdp; d < hdp + GUARD; d++)
                acc[d] = -12345.0f; /* guard */
            memcpy(want, acc, sizeof(float) * (size_t)hd);
            for (int i = 0; i < n; i++) {
                for (int d = 0; d < hd; d++)
                    want[d] = h2f(f2h(want[d] * ms[i]));
                for (int d = 0; d < hd; d++)
                    want[d] = h2f(f2h(fmaf(h2f(rows[i][d]), vs[i], want[d])));
            }
            ak->accum_f16(hd, n, rows, ms, vs, acc);
            long d = first_diff(acc, want, (size_t)hd);
            if (d >= 0)
                note_fail("%s accum_f16 hd %d n %d: lane %ld %.9g, want %.9g", name, hd, n, d,
                          (double)acc[d], (double)want[d]);
            for (int g = hdp; g < hdp + GUARD; g++)
                if (acc[g] != -12345.0f)
                    note_fail("%s accum_f16 hd %d: wrote lane %d past the padded head", name, hd,
                              g);

            /* accum_f16_rows: 1..6 accumulators (more than one pass of 4),
             * each with its own factors, against accum_f16 of the same
             * table on each, bit for bit */
            enum { MAX_R = 6 };
            float *racc = xmalloc(sizeof(float) * (size_t)MAX_R * (size_t)(hdp + GUARD));
            float *rwant = xmalloc(sizeof(float) * (size_t)MAX_R * (size_t)hdp);
            float rms[MAX_R][MAX_N], rvs[MAX_R][MAX_N];
            for (int nr = 1; nr <= MAX_R; nr++) {
                const float *msp[MAX_R], *vsp[MAX_R];
                float *accp[MAX_R];
                for (int r = 0; r < nr; r++) {
                    for (int i = 0; i < n; i++) {
                        uint64_t u = exsa_test_rand_u64(&g_rng) % 8;
                        rms[r][i] = u == 0 ? 0.0f : u == 1 ? exsa_test_rand_uniform(&g_rng) : 1.0f;
                        rvs[r][i] = rms[r][i] != 1.0f ? 1.0f : exsa_test_rand_uniform(&g_rng);
                    }
                    float *ar = racc + (size_t)r * (size_t)(hdp + GUARD);
                    for (int d = 0; d < hdp + GUARD; d++)
                        ar[d] = d < hd ? h2f(f2h(exsa_test_rand_normal(&g_rng)))
                                : d < hdp ? 0.0f : -12345.0f;
                    memcpy(rwant + (size_t)r * (size_t)hdp, ar, sizeof(float) * (size_t)hdp);
                    ak->accum_f16(hd, n, rows, rms[r], rvs[r], rwant + (size_t)r * (size_t)hdp);
                    msp[r] = rms[r];
                    vsp[r] = rvs[r];
                    accp[r] = ar;
                }
                ak->accum_f16_rows(hd, n, rows, nr, msp, vsp, accp);
                for (int r = 0; r < nr; r++) {
                    long dd = first_diff(accp[r], rwant + (size_t)r * (size_t)hdp, (size_t)hd);
                    if (dd >= 0)
                        note_fail("%s accum_f16_rows hd %d n %d rows %d: row %d lane %ld %.9g, "
                                  "accum_f16 %.9g",
                                  name, hd, n, nr, r, dd, (double)accp[r][dd],
                                  (double)rwant[(size_t)r * (size_t)hdp + (size_t)dd]);
                    for (int g = hdp; g < hdp + GUARD; g++)
                        if (accp[r][g] != -12345.0f)
                            note_fail("%s accum_f16_rows hd %d: wrote lane %d past the head",
                                      name, hd, g);
                }
            }
            free(rwant);
            free(racc);
            if (n <= EXSA_ATTN_TILE)
                check_tiled(name, ak, hd, n, rows);
        }
        free(want);
        free(acc);
        free(q);
        free(kv);
        report_fail();
    }
}

/* dequant_q8_0 against d * q, for blocks with every int8 value and
 * assorted scales (negative, subnormal, zero). */
static void check_dequant(const char *name, const exsa_cpu_attn_kernels *ak)
{
    enum { NB = 13 };
    exsa_block_q8_0 x[NB];
    float y[NB * EXSA_QK8_0 + 1];
    for (int b = 0; b < NB; b++) {
        x[b].d = b == 0 ? 0 : b == 1 ? 0x0001 : b == 2 ? 0x8123 : rand_half(FILL_NORMAL, 1.0f);
        for (int i = 0; i < EXSA_QK8_0; i++)
            x[b].qs[i] = (int8_t)(uint8_t)((b * EXSA_QK8_0 + i) * 37 % 256);
    }
    for (int nb = 0; nb <= NB; nb++) {
        y[nb * EXSA_QK8_0] = -7.0f; /* guard */
        ak->dequant_q8_0(x, y, nb);
        for (int e = 0; e < nb * EXSA_QK8_0; e++) {
            float want = h2f(x[e / EXSA_QK8_0].d) * (float)x[e / EXSA_QK8_0].qs[e % EXSA_QK8_0];
            if (memcmp(&want, &y[e], sizeof want) != 0)
                fail_msg("%s dequant_q8_0 %d blocks: element %d %.9g, want %.9g", name, nb, e,
                         (double)y[e], (double)want);
        }
        if (y[nb * EXSA_QK8_0] != -7.0f)
            fail_msg("%s dequant_q8_0 %d blocks: wrote past them", name, nb);
    }
}

static void test_tables(void **state)
{
    (void)state;
    check_table("scalar", exsa_cpu_attn_kernels_scalar(), exsa_cpu_kernels_scalar());
    check_dequant("scalar", exsa_cpu_attn_kernels_scalar());
    if (exsa_cpu_attn_kernels_avx2()) {
        check_table("avx2", exsa_cpu_attn_kernels_avx2(), exsa_cpu_kernels_avx2());
        check_dequant("avx2", exsa_cpu_attn_kernels_avx2());
    } else
        print_message("avx2 attention kernels: not available here, not tested\n");
    if (exsa_cpu_attn_kernels_avx512()) {
        check_table("avx512", exsa_cpu_attn_kernels_avx512(), exsa_cpu_kernels_avx512());
        check_dequant("avx512", exsa_cpu_attn_kernels_avx512());
    } else
        print_message("avx512 attention kernels: not available here, not tested\n");
}

/* exsa_exp_neg against expf: within 2 ulp on [-87, 0] (every float of
 * a dense sweep), exact at 0, 0 for -inf, NaN and below the normal range. */
static void test_attn_exp(void **state)
{
    (void)state;
    assert_true(exsa_exp_neg(0.0f) == 1.0f);
    assert_true(exsa_exp_neg(-INFINITY) == 0.0f);
    assert_true(exsa_exp_neg(NAN) == 0.0f);
    assert_true(exsa_exp_neg(-200.0f) == 0.0f);
    assert_true(exsa_exp_neg(5.0f) == 1.0f); /* the domain ends at 0 */
    double worst = 0;
    float at = 0;
    for (float x = -87.0f; x <= 0.0f; x += 1.0e-4f) {
        const float got = exsa_exp_neg(x), want = expf(x);
        const double ulp = (double)nextafterf(want, INFINITY) - want;
        const double e = fabs((double)got - want) / ulp;
        if (e > worst) {
            worst = e;
            at = x;
        }
    }
    print_message("exsa_exp_neg: worst %.2f ulp at %.7g\n", worst, (double)at);
    assert_true(worst <= 2.0);
}

/* ---- driver -------------------------------------------------------------- */

static int run_suite(const char *label)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attn_exp),
        cmocka_unit_test(test_table_pairing),
        cmocka_unit_test(test_tables),
        cmocka_unit_test(test_f16_matches_reference),
        cmocka_unit_test(test_f32_q8_0_match_reference),
    };
    char name[64];
    snprintf(name, sizeof name, "attention %s", label);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}

/* The kernel table is chosen once per process, so each cap of EXSA_CPU
 * runs in a child. */
static int run_child(const char *cpu)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        setenv("EXSA_CPU", cpu, 1);
        exit(run_suite(cpu) != 0);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        return 1;
    return !WIFEXITED(status) || WEXITSTATUS(status) != 0;
}

int main(void)
{
    /* EXSA_CPU=avx2 differs from the best table only on AVX-512 CPUs (the
     * features are read directly: asking for a table would fix the choice
     * before the children set EXSA_CPU) */
    exsa_cpu_features f;
    exsa_cpu_features_detect(&f);
    int failed = run_child("scalar");
    if (f.avx512f)
        failed |= run_child("avx2");
    failed |= run_suite("best") != 0;
    return failed;
}
