/* Model forward tests on synthetic models.
 *
 * Random-weight models of many shapes and weight types are written with
 * exsa_model_generate into a temporary directory. Their logits for random
 * prompts are compared with tests/helpers/ref_forward.c, a naive
 * double-precision forward pass that shares no code with src/model or
 * src/backend (it reads the GGUF keys and dequantizes the weights itself).
 *
 * Measured:
 * - relative L2 error of all logits of a prompt, ||mine - ref|| / ||ref||,
 *   against bounds per weight type and KV type (printed as REFERR lines);
 * - 8 greedy tokens continued by both (the reference recomputes the whole
 *   sequence each time), which must be identical (a step where the
 *   reference's top two logits lie within the error bound is reported as a
 *   near-tie instead);
 * - quantized weights also against the reference run with its matmul inputs
 *   rounded to the kernels' activation format (Q8_0 / Q8_K), which the
 *   engine must match to float rounding;
 * - batch invariance: a sequence's logits alone and mixed in batches with
 *   other sequences at other positions (chunks and single rows interleaved);
 * - the paged KV cache through the API: chunked prefill, a pool that runs
 *   short (EXSA_EFULL, nothing changed, model still usable), prefix sharing
 *   and rollback;
 * - invalid batches (EXSA_EINVAL + message) and files that are not models.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf/gguf.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "quant/quant.h"
#include "ref_forward.h"
#include "test_util.h"

#define N_GREEDY 8
#define N_CTX 128
#define N_THREADS 2

/* Bounds on the relative L2 error of all logits against the reference. */
#define TOL_F32 1e-5     /* F32 weights, F32 KV */
#define TOL_KV_F16 2e-3  /* F32 weights, default F16 KV */
#define TOL_KV_Q8 3.5e-2 /* F32 weights, Q8_0 KV: measured up to 1.2e-2 */
#define TOL_16BIT 1e-3   /* F16 weights, F32 KV */
/* BF16 weights, F32 KV: matmul inputs rounded to BF16 as llama.cpp does
 * (measured 3.3e-3; tight against the reference that rounds them too). */
#define TOL_BF16 1e-2
/* Quantized weights, F32 KV: the reference uses the same dequantized
 * weights, but the engine quantizes activations to Q8 blocks for the
 * integer dot products, which the exact reference does not. About 3x the
 * measured values (printed as REFERR lines). */
#define TOL_Q8_0 6e-2  /* measured 1.1e-2 (llama), 2.0e-2 (qwen2 tied) */
#define TOL_Q4_0 3.5e-2 /* measured 1.2e-2 */
#define TOL_Q4_K 5e-2  /* measured 1.6e-2 */
/* Against the reference that rounds matmul inputs the same way (best of
 * several prompts, see check_act_quant): measured ~1e-7. */
#define TOL_ACTQ 1e-5

typedef struct env {
    char dir[64];
} env;

typedef struct mcase {
    const char *name;  /* file name and REFERR label */
    const char *arch;
    int embd, layers, heads, kv_heads, head_dim, ff, vocab, tied;
    const char *ftype;
    uint64_t seed;
} mcase;

/* ---- helpers ---- */

static int setup_dir(void **state)
{
    env *e = calloc(1, sizeof *e);
    if (!e)
        return -1;
    snprintf(e->dir, sizeof e->dir, "/tmp/exsa_test_model_XXXXXX");
    if (!mkdtemp(e->dir)) {
        free(e);
        return -1;
    }
    *state = e;
    return 0;
}

static int teardown_dir(void **state)
{
    env *e = *state;
    DIR *d = opendir(e->dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            char p[512];
            snprintf(p, sizeof p, "%s/%s", e->dir, de->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(e->dir);
    free(e);
    return 0;
}

static void model_path(const env *e, const char *name, char *path, size_t len)
{
    snprintf(path, len, "%s/%s.gguf", e->dir, name);
}

static void gen_model(const env *e, const mcase *mc, char *path, size_t len)
{
    model_path(e, mc->name, path, len);
    if (access(path, F_OK) == 0)
        return; /* made by an earlier test of this run */
    exsa_gen_params p;
    exsa_gen_params_default(&p);
    p.arch = mc->arch;
    p.n_embd = mc->embd;
    p.n_layer = mc->layers;
    p.n_head = mc->heads;
    p.n_head_kv = mc->kv_heads;
    p.head_dim = mc->head_dim;
    p.n_ff = mc->ff;
    p.n_vocab = mc->vocab;
    p.tied = mc->tied;
    p.n_ctx_train = 512;
    p.seed = mc->seed;
    p.n_threads = N_THREADS;
    exsa_err err = {0};
    int rc = exsa_ftype_parse(mc->ftype, &p.ftype, &err);
    if (rc == 0)
        rc = exsa_model_generate(path, &p, NULL, NULL, &err);
    if (rc != 0)
        print_error("generate %s: %s\n", mc->name, err.msg);
    assert_int_equal(rc, 0);
}

static exsa_model *load_model(const char *path)
{
    exsa_err err = {0};
    exsa_model *m = exsa_model_load(path, &err);
    if (!m)
        print_error("load %s: %s\n", path, err.msg);
    assert_non_null(m);
    return m;
}

static exsa_ref_model *load_ref(const char *path)
{
    char msg[256];
    exsa_ref_model *r = exsa_ref_load(path, msg, sizeof msg);
    if (!r)
        print_error("%s\n", msg);
    assert_non_null(r);
    return r;
}

static exsa_model_ctx *make_ctx(const exsa_model *m, int kv_type, int n_seq, int max_batch,
                                int kv_blocks)
{
    exsa_model_ctx_params p;
    exsa_model_ctx_params_default(&p);
    p.n_threads = N_THREADS;
    p.n_ctx = N_CTX;
    p.n_seq = n_seq;
    p.max_batch = max_batch;
    p.kv_type = kv_type;
    p.kv_blocks = kv_blocks;
    exsa_err err = {0};
    exsa_model_ctx *c = exsa_model_ctx_create(m, &p, &err);
    if (!c)
        print_error("ctx: %s\n", err.msg);
    assert_non_null(c);
    return c;
}

static const char *kv_name(int kv_type)
{
    return kv_type == EXSA_TYPE_F32 ? "F32" : kv_type == EXSA_TYPE_F16 ? "F16" : "Q8_0";
}

static void random_tokens(uint64_t *rng, int32_t *tok, int n, int n_vocab)
{
    for (int i = 0; i < n; i++)
        tok[i] = (int32_t)(exsa_test_rand_u64(rng) % (uint64_t)n_vocab);
}

/* One forward call of rows (tok[i], pos0 + i) of seq, logits for every row
 * when out is non-NULL. */
static void forward_rows(exsa_model_ctx *c, int seq, const int32_t *tok, int n, int pos0,
                         float *out)
{
    int32_t *pos = calloc((size_t)n, sizeof *pos), *sq = calloc((size_t)n, sizeof *sq);
    uint8_t *want = calloc((size_t)n, 1);
    assert_non_null(pos);
    assert_non_null(sq);
    assert_non_null(want);
    for (int i = 0; i < n; i++) {
        pos[i] = pos0 + i;
        sq[i] = seq;
        want[i] = out != NULL;
    }
    exsa_batch b = {.n = n, .token = (int32_t *)tok, .pos = pos, .seq = sq, .logits = want};
    exsa_err err = {0};
    int rc = exsa_model_forward(c, &b, out, &err);
    if (rc != 0)
        print_error("forward: %s\n", err.msg);
    assert_int_equal(rc, 0);
    free(pos);
    free(sq);
    free(want);
}

/* Runs tok[0..n) of seq from position pos0 in chunks whose sizes cycle
 * through chunks[0..n_chunks); logits of every row into out[n][V]. */
static void forward_chunked(exsa_model_ctx *c, int seq, const int32_t *tok, int n, int pos0,
                            const int *chunks, int n_chunks, int n_vocab, float *out)
{
    for (int done = 0, k = 0; done < n; k++) {
        int len = chunks[k % n_chunks];
        if (len > n - done)
            len = n - done;
        forward_rows(c, seq, tok + done, len, pos0 + done, out + (size_t)done * n_vocab);
        done += len;
    }
}

/* Greedy continuation by the engine: the prompt's logits (already computed,
 * last row in last) give the first token; each further token is one decode
 * row. Writes n_gen ids to gen. */
static void engine_greedy(exsa_model_ctx *c, int seq, const float *last, int n_prompt,
                          int n_vocab, int32_t *gen, int n_gen)
{
    float *lg = malloc((size_t)n_vocab * sizeof *lg);
    assert_non_null(lg);
    gen[0] = exsa_ref_argmax_f(last, n_vocab);
    for (int i = 1; i < n_gen; i++) {
        forward_rows(c, seq, &gen[i - 1], 1, n_prompt + i - 1, lg);
        gen[i] = exsa_ref_argmax_f(lg, n_vocab);
    }
    free(lg);
}

/* ---- accuracy against the reference ---- */

typedef struct kv_check {
    int kv_type;
    double bound;     /* against the exact reference */
    int act_quant;    /* 1: also against the reference that rounds matmul
                       * inputs to the activation format like the kernels */
} kv_check;

/* The engine's greedy tokens gen[] against the reference's seq[n..]: equal,
 * except that the paths may part at a step where the reference's top two
 * logits are closer than tie_eps (an honest near-tie at the engine's
 * precision; then the rest is not compared). */
static void compare_greedy(const exsa_ref_model *r, const int32_t *seq, int n,
                           const int32_t *gen, double rel_bound, const char *name)
{
    int same = 0;
    while (same < N_GREEDY && gen[same] == seq[n + same])
        same++;
    if (same == N_GREEDY)
        return;
    const int V = exsa_ref_hparams_get(r)->n_vocab;
    double *lg = malloc((size_t)(n + same) * V * sizeof *lg);
    assert_non_null(lg);
    assert_int_equal(exsa_ref_forward(r, seq, n + same, lg), 0);
    const double *last = lg + (size_t)(n + same - 1) * V;
    double rms = 0;
    for (int v = 0; v < V; v++)
        rms += last[v] * last[v];
    rms = sqrt(rms / V);
    double gap = last[seq[n + same]] - last[gen[same]];
    double tie_eps = 3 * rel_bound * rms;
    printf("  greedy paths part at step %d: ref %d, mine %d, ref logit gap %.3e "
           "(near-tie below %.3e)\n", same, seq[n + same], gen[same], gap, tie_eps);
    free(lg);
    if (gap >= tie_eps)
        fail_msg("%s: greedy token %d differs (%d vs reference %d)", name, same, gen[same],
                 seq[n + same]);
}

/* Quantized weights, against the act-quant reference: the engine and the
 * reference agree to float rounding (~1e-7) until some activation lands so
 * close to a Q8 rounding boundary that float vs double rounds it the other
 * way; that one step then spreads to everything downstream (~1e-2, the
 * activation quantization noise itself). It hits about one prompt in four,
 * at random. So several short prompts are run and the best must be exact:
 * a wrong kernel is never exact, a right one fails all 8 with p ~ 1e-5. */
static void check_act_quant(const exsa_model *m, exsa_ref_model *r, const mcase *mc,
                            int kv_type)
{
    enum { N_PROMPTS = 8, LEN = 12 };
    const int V = exsa_ref_hparams_get(r)->n_vocab;
    double *ref = malloc((size_t)LEN * V * sizeof *ref);
    float *mine = malloc((size_t)LEN * V * sizeof *mine);
    assert_non_null(ref);
    assert_non_null(mine);
    uint64_t rng = mc->seed * 31 + 5;
    double best = INFINITY;
    int exact = 0;
    exsa_ref_set_act_quant(r, 1);
    printf("REFERR %s kv=%s ref=act-quant rel_l2:", mc->name, kv_name(kv_type));
    for (int p = 0; p < N_PROMPTS; p++) {
        int32_t tok[LEN];
        random_tokens(&rng, tok, LEN, V);
        assert_int_equal(exsa_ref_forward(r, tok, LEN, ref), 0);
        exsa_model_ctx *c = make_ctx(m, kv_type, 1, 64, 0);
        forward_rows(c, 0, tok, LEN, 0, mine);
        exsa_model_ctx_free(c);
        double e = exsa_ref_rel_l2(mine, ref, (size_t)LEN * V);
        printf(" %.1e", e);
        best = e < best ? e : best;
        exact += e < TOL_ACTQ;
    }
    printf(" (best %.3e, %d/%d exact below %.0e)\n", best, exact, N_PROMPTS, TOL_ACTQ);
    exsa_ref_set_act_quant(r, 0);
    assert_true(best < TOL_ACTQ);
    free(ref);
    free(mine);
}

/* Compares the engine with the reference on mc for each KV type: all
 * logits of a random prompt in one batch, then N_GREEDY greedy tokens. */
static void check_model(const env *e, const mcase *mc, const kv_check *kvs, int n_kvs)
{
    char path[256];
    gen_model(e, mc, path, sizeof path);
    exsa_model *m = load_model(path);
    exsa_ref_model *r = load_ref(path);
    const int V = exsa_ref_hparams_get(r)->n_vocab;
    assert_int_equal(exsa_model_hparams(m)->n_vocab, V);

    uint64_t rng = mc->seed * 7919 + 17;
    const int n = 20 + (int)(exsa_test_rand_u64(&rng) % 21); /* 20..40 */
    int32_t seq[40 + N_GREEDY];
    random_tokens(&rng, seq, n, V);
    double *ref = malloc((size_t)n * V * sizeof *ref);
    float *mine = malloc((size_t)n * V * sizeof *mine);
    assert_non_null(ref);
    assert_non_null(mine);
    assert_int_equal(exsa_ref_forward(r, seq, n, ref), 0);
    assert_int_equal(exsa_ref_greedy(r, seq, n, N_GREEDY), 0);

    for (int k = 0; k < n_kvs; k++) {
        exsa_model_ctx *c = make_ctx(m, kvs[k].kv_type, 1, 64, 0);
        forward_rows(c, 0, seq, n, 0, mine);
        double err = exsa_ref_rel_l2(mine, ref, (size_t)n * V);
        int32_t gen[N_GREEDY];
        engine_greedy(c, 0, mine + (size_t)(n - 1) * V, n, V, gen, N_GREEDY);
        int same = 0;
        while (same < N_GREEDY && gen[same] == seq[n + same])
            same++;
        printf("REFERR %s kv=%s n_prompt=%d rel_l2=%.3e bound=%.1e greedy_match=%d/%d\n",
               mc->name, kv_name(kvs[k].kv_type), n, err, kvs[k].bound, same, N_GREEDY);
        assert_true(err < kvs[k].bound);
        compare_greedy(r, seq, n, gen, kvs[k].bound, mc->name);
        exsa_model_ctx_free(c);
        if (kvs[k].act_quant)
            check_act_quant(m, r, mc, kvs[k].kv_type);
    }
    free(ref);
    free(mine);
    exsa_ref_free(r);
    exsa_model_free(m);
}

static const kv_check KV_ALL_F32W[] = {{EXSA_TYPE_F32, TOL_F32, 0},
                                       {EXSA_TYPE_F16, TOL_KV_F16, 0},
                                       {EXSA_TYPE_Q8_0, TOL_KV_Q8, 0}};
static const kv_check KV_F32_F16[] = {{EXSA_TYPE_F32, TOL_F32, 0},
                                      {EXSA_TYPE_F16, TOL_KV_F16, 0}};

static const mcase LLAMA_GQA = {"llama-gqa-e64h4kv2-untied-F32", "llama", 64, 2, 4, 2, 0,
                                192, 512, 0, "F32", 101};

static void test_llama_f32(void **state)
{
    const env *e = *state;
    check_model(e, &LLAMA_GQA, KV_ALL_F32W, 3);
    const mcase mha = {"llama-mha-e64h4kv4-tied-F32", "llama", 64, 2, 4, 4, 0, 160, 400, 1,
                       "F32", 102};
    check_model(e, &mha, KV_ALL_F32W, 3);
    /* Odd head counts; the second has n_kv_head * head_dim = 16, too short
     * for a Q8_0 KV row, so only F32/F16 KV. */
    const mcase odd = {"llama-e96h3kv1-tied-F32", "llama", 96, 2, 3, 1, 0, 256, 300, 1, "F32",
                       103};
    check_model(e, &odd, KV_ALL_F32W, 3);
    const mcase odd2 = {"llama-e96h6kv3-untied-F32", "llama", 96, 1, 6, 3, 0, 200, 700, 0,
                        "F32", 104};
    check_model(e, &odd2, KV_F32_F16, 2);
}

static void test_qwen2_f32(void **state)
{
    const env *e = *state;
    const mcase a = {"qwen2-gqa-e64h4kv2-tied-F32", "qwen2", 64, 2, 4, 2, 0, 192, 512, 1,
                     "F32", 201};
    check_model(e, &a, KV_ALL_F32W, 3);
    const mcase b = {"qwen2-e96h6kv3-untied-F32", "qwen2", 96, 2, 6, 3, 0, 224, 600, 0, "F32",
                     202};
    check_model(e, &b, KV_F32_F16, 2);
}

static void test_qwen3_f32(void **state)
{
    const env *e = *state;
    /* head_dim 32 != embd / heads = 16: q is wider than the residual. */
    const mcase a = {"qwen3-e64h4kv2-hd32-untied-F32", "qwen3", 64, 2, 4, 2, 32, 192, 512, 0,
                     "F32", 301};
    check_model(e, &a, KV_ALL_F32W, 3);
    const mcase b = {"qwen3-mha-e64h2kv2-tied-F32", "qwen3", 64, 2, 2, 2, 0, 128, 320, 1, "F32",
                     302};
    check_model(e, &b, KV_ALL_F32W, 3);
}

static void test_weight_types(void **state)
{
    const env *e = *state;
    const kv_check kv[] = {{EXSA_TYPE_F32, TOL_16BIT, 0}};
    const mcase cases[] = {
        {"llama-gqa-e64h4kv2-untied-F16", "llama", 64, 2, 4, 2, 0, 192, 512, 0, "F16", 401},
        {"qwen3-e64h4kv2-hd32-tied-F16", "qwen3", 64, 2, 4, 2, 32, 192, 512, 1, "F16", 405},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_model(e, &cases[i], kv, 1);
    const kv_check kvb[] = {{EXSA_TYPE_F32, TOL_BF16, 1}};
    const mcase bf = {"llama-gqa-e64h4kv2-untied-BF16", "llama", 64, 2, 4, 2, 0, 192, 512, 0,
                      "BF16", 402};
    check_model(e, &bf, kvb, 1);
}

/* Quantized weights: matmul inputs are quantized to the activation format
 * (Q8_0 / Q8_K) by the engine and not by the exact reference, hence a bound
 * about 3x the measured error; against the reference that rounds its
 * inputs the same way the bound is tight. */
static void test_quantized(void **state)
{
    const env *e = *state;
    const kv_check kv8[] = {{EXSA_TYPE_F32, TOL_Q8_0, 1}};
    const kv_check kv40[] = {{EXSA_TYPE_F32, TOL_Q4_0, 1}};
    const kv_check kv4k[] = {{EXSA_TYPE_F32, TOL_Q4_K, 1}};
    const mcase q8a = {"llama-gqa-e64h4kv2-untied-Q8_0", "llama", 64, 2, 4, 2, 0, 192, 512, 0,
                       "Q8_0", 403};
    check_model(e, &q8a, kv8, 1);
    const mcase q8b = {"qwen2-e96h6kv3-tied-Q8_0", "qwen2", 96, 2, 6, 3, 0, 224, 600, 1, "Q8_0",
                       404};
    check_model(e, &q8b, kv8, 1);
    const mcase q40 = {"llama-e128h4kv2-untied-Q4_0", "llama", 128, 2, 4, 2, 0, 384, 512, 0,
                       "Q4_0", 501};
    check_model(e, &q40, kv40, 1);
    const mcase q4k = {"llama-e256h4kv2-untied-Q4_K", "llama", 256, 2, 4, 2, 0, 512, 768, 0,
                       "Q4_K", 502};
    check_model(e, &q4k, kv4k, 1);
}

/* ---- rope variants written into the file ---- */

typedef struct kv_override {
    const char *key;
    char kind; /* 'u' u32, 'f' f32, 's' string, 'x' remove */
    uint32_t u;
    float f;
    const char *s;
} kv_override;

/* Copies src to dst with key overrides, leaving out tensor `skip` (NULL:
 * none, "*": all). Returns 0 or an error code. */
static int rewrite_gguf(const char *src, const char *dst, const kv_override *ov, int n_ov,
                        const char *skip)
{
    exsa_err err = {0};
    exsa_gguf *g = exsa_gguf_open(src, &err);
    if (!g)
        return err.code;
    exsa_gguf_writer *w = exsa_gguf_writer_create(&err);
    int rc = w ? 0 : err.code;
    for (int64_t i = 0; rc == 0 && i < exsa_gguf_n_kv(g); i++)
        rc = exsa_gguf_writer_copy_kv(w, g, i);
    for (int i = 0; rc == 0 && i < n_ov; i++) {
        switch (ov[i].kind) {
        case 'u': rc = exsa_gguf_writer_set_u32(w, ov[i].key, ov[i].u); break;
        case 'f': rc = exsa_gguf_writer_set_f32(w, ov[i].key, ov[i].f); break;
        case 's': rc = exsa_gguf_writer_set_str(w, ov[i].key, ov[i].s); break;
        default: rc = exsa_gguf_writer_remove_key(w, ov[i].key); break;
        }
    }
    int64_t nt = exsa_gguf_n_tensors(g);
#define SKIPPED(t) (skip && (strcmp(skip, "*") == 0 || strcmp(skip, (t)->name) == 0))
    for (int64_t i = 0; rc == 0 && i < nt; i++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(g, i);
        if (!SKIPPED(t))
            rc = exsa_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, &err);
    }
    if (rc == 0)
        rc = exsa_gguf_writer_begin(w, dst, &err);
    for (int64_t i = 0; rc == 0 && i < nt; i++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(g, i);
        if (!SKIPPED(t))
            rc = exsa_gguf_writer_write_tensor(w, t->data, t->size, &err);
    }
#undef SKIPPED
    if (rc == 0)
        rc = exsa_gguf_writer_finish(w, &err);
    if (rc != 0)
        print_error("rewrite %s: %s\n", dst, err.msg);
    exsa_gguf_writer_free(w);
    exsa_gguf_close(g);
    return rc;
}

/* Linear rope scaling, another base and partial rotary dims (n_rot <
 * head_dim), in both rope modes. */
static void test_rope_variants(void **state)
{
    const env *e = *state;
    const mcase bases[] = {
        {"rope-src-llama", "llama", 64, 2, 4, 2, 0, 192, 400, 0, "F32", 601},
        {"rope-src-qwen2", "qwen2", 64, 2, 4, 2, 0, 192, 400, 1, "F32", 602},
    };
    for (int i = 0; i < 2; i++) {
        char src[256], dst[256], key[4][64];
        gen_model(e, &bases[i], src, sizeof src);
        const char *a = bases[i].arch;
        snprintf(key[0], sizeof key[0], "%s.rope.scaling.type", a);
        snprintf(key[1], sizeof key[1], "%s.rope.scaling.factor", a);
        snprintf(key[2], sizeof key[2], "%s.rope.freq_base", a);
        snprintf(key[3], sizeof key[3], "%s.rope.dimension_count", a);
        const kv_override ov[] = {
            {key[0], 's', 0, 0, "linear"}, {key[1], 'f', 0, 4.0f, NULL},
            {key[2], 'f', 0, 5e5f, NULL}, {key[3], 'u', 8, 0, NULL},
        };
        mcase mc = bases[i];
        mc.name = i == 0 ? "llama-rope-linear4-base5e5-nrot8" : "qwen2-rope-linear4-base5e5-nrot8";
        model_path(e, mc.name, dst, sizeof dst);
        assert_int_equal(rewrite_gguf(src, dst, ov, 4, NULL), 0);
        check_model(e, &mc, KV_F32_F16, 2); /* gen_model sees the file exists */
    }
}

/* ---- batch invariance ---- */

typedef struct seqrun {
    int id;          /* sequence id in the mixed context */
    int n;           /* tokens */
    int first_call;  /* call at which it starts */
    int32_t tok[48];
    int done;
    float *mixed;    /* [n][V] logits from the mixed run */
    uint8_t *have;   /* [n] 1 = row asked for logits */
} seqrun;

static void check_batch_invariance(const env *e, const mcase *mc, int kv_type)
{
    char path[256];
    gen_model(e, mc, path, sizeof path);
    exsa_model *m = load_model(path);
    const int V = exsa_model_hparams(m)->n_vocab;
    uint64_t rng = 4242;
    /* A = seq 2 starts late, so its rows sit beside B's and C's later
     * positions; B = seq 0, C = seq 1. */
    seqrun s[3] = {{.id = 2, .n = 37, .first_call = 2},
                   {.id = 0, .n = 44, .first_call = 0},
                   {.id = 1, .n = 29, .first_call = 1}};
    for (int k = 0; k < 3; k++) {
        random_tokens(&rng, s[k].tok, s[k].n, V);
        s[k].mixed = calloc((size_t)s[k].n * V, sizeof(float));
        s[k].have = calloc((size_t)s[k].n, 1);
        assert_non_null(s[k].mixed);
        assert_non_null(s[k].have);
    }

    exsa_model_ctx *c = make_ctx(m, kv_type, 3, 64, 0);
    static const int choices[] = {0, 1, 1, 2, 5, 7, 16, 17};
    int32_t tok[64], pos[64], sq[64], who[64];
    uint8_t want[64];
    float *out = malloc((size_t)64 * V * sizeof *out);
    assert_non_null(out);
    int n_calls = 0, n_mixed = 0;
    for (int call = 0; call < 200; call++) {
        int cnt[3], total = 0, left = 0;
        for (int k = 0; k < 3; k++) {
            cnt[k] = 0;
            if (call >= s[k].first_call) {
                cnt[k] = choices[exsa_test_rand_u64(&rng) % 8];
                if (cnt[k] > s[k].n - s[k].done)
                    cnt[k] = s[k].n - s[k].done;
            }
            total += cnt[k];
            left += s[k].n - s[k].done;
        }
        if (left == 0)
            break;
        if (total == 0)
            continue;
        /* Round-robin interleave keeps each sequence's rows in order. */
        int rows = 0, nseq = 0;
        for (int k = 0; k < 3; k++)
            nseq += cnt[k] > 0;
        while (rows < total) {
            for (int k = 0; k < 3; k++) {
                if (cnt[k] == 0)
                    continue;
                int p = s[k].done++;
                cnt[k]--;
                tok[rows] = s[k].tok[p];
                pos[rows] = p;
                sq[rows] = s[k].id;
                who[rows] = k;
                /* Skip logits on some rows to exercise the output gather. */
                want[rows] = p % 3 != 1 || p == s[k].n - 1;
                rows++;
            }
        }
        exsa_batch b = {.n = rows, .token = tok, .pos = pos, .seq = sq, .logits = want};
        exsa_err err = {0};
        int rc = exsa_model_forward(c, &b, out, &err);
        if (rc != 0)
            print_error("mixed forward: %s\n", err.msg);
        assert_int_equal(rc, 0);
        int o = 0;
        for (int i = 0; i < rows; i++) {
            if (!want[i])
                continue;
            seqrun *sr = &s[who[i]];
            memcpy(sr->mixed + (size_t)pos[i] * V, out + (size_t)o * V, (size_t)V * sizeof(float));
            sr->have[pos[i]] = 1;
            o++;
        }
        n_calls++;
        n_mixed += nseq > 1;
    }
    exsa_model_ctx_free(c);
    free(out);
    assert_true(n_mixed >= 3);

    const char *label[3] = {"A", "B", "C"};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(s[k].done, s[k].n);
        exsa_model_ctx *c1 = make_ctx(m, kv_type, 1, 64, 0);
        float *alone = malloc((size_t)s[k].n * V * sizeof *alone);
        assert_non_null(alone);
        forward_rows(c1, 0, s[k].tok, s[k].n, 0, alone);
        double num = 0, den = 0;
        int rows_cmp = 0;
        for (int p = 0; p < s[k].n; p++) {
            if (!s[k].have[p])
                continue;
            rows_cmp++;
            for (int v = 0; v < V; v++) {
                double d = (double)s[k].mixed[(size_t)p * V + v] - alone[(size_t)p * V + v];
                num += d * d;
                den += (double)alone[(size_t)p * V + v] * alone[(size_t)p * V + v];
            }
        }
        double err = sqrt(num / den);
        printf("BATCHERR %s kv=%s seq=%s rows=%d calls=%d rel_l2=%.3e\n", mc->name,
               kv_name(kv_type), label[k], rows_cmp, n_calls, err);
        assert_true(err < 1e-5);
        free(alone);
        exsa_model_ctx_free(c1);
        free(s[k].mixed);
        free(s[k].have);
    }
    exsa_model_free(m);
}

static void test_batch_invariance(void **state)
{
    const env *e = *state;
    check_batch_invariance(e, &LLAMA_GQA, EXSA_TYPE_F32);
    const mcase q8 = {"qwen2-gqa-e64h4kv2-tied-Q8_0", "qwen2", 64, 2, 4, 2, 0, 192, 512, 1,
                      "Q8_0", 701};
    check_batch_invariance(e, &q8, EXSA_TYPE_F16);
}

/* ---- paged KV through the API ---- */

/* Chunks of 1, 7, 16, 17 rows (crossing 16-token block boundaries in every
 * way, and the context length where an F16 cache's attention changes path)
 * give the logits of one big batch. */
static void test_chunked_prefill(void **state)
{
    const env *e = *state;
    char path[256];
    gen_model(e, &LLAMA_GQA, path, sizeof path);
    exsa_model *m = load_model(path);
    const int V = exsa_model_hparams(m)->n_vocab, n = 100;
    uint64_t rng = 99;
    int32_t tok[100];
    random_tokens(&rng, tok, n, V);
    float *big = malloc((size_t)n * V * sizeof *big), *ch = malloc((size_t)n * V * sizeof *ch);
    assert_non_null(big);
    assert_non_null(ch);
    const int kv_types[] = {EXSA_TYPE_F16, EXSA_TYPE_F32};
    const int orders[][4] = {{1, 7, 16, 17}, {17, 16, 7, 1}, {7, 7, 7, 7}};
    for (int t = 0; t < 2; t++) {
        exsa_model_ctx *c = make_ctx(m, kv_types[t], 1, 128, 0);
        forward_rows(c, 0, tok, n, 0, big);
        exsa_model_ctx_free(c);
        for (int o = 0; o < 3; o++) {
            c = make_ctx(m, kv_types[t], 1, 128, 0);
            forward_chunked(c, 0, tok, n, 0, orders[o], 4, V, ch);
            double err = exsa_test_rel_l2(ch, big, (size_t)n * V);
            printf("CHUNKERR kv=%s chunks=%d,%d,%d,%d rel_l2=%.3e\n", kv_name(kv_types[t]),
                   orders[o][0], orders[o][1], orders[o][2], orders[o][3], err);
            assert_true(err < 1e-5);
            exsa_model_ctx_free(c);
        }
    }
    free(big);
    free(ch);
    exsa_model_free(m);
}

/* A pool of 3 blocks (48 tokens) for 2 sequences: a batch that needs more
 * fails with EXSA_EFULL and changes nothing; the model keeps working. */
static void test_kv_full(void **state)
{
    const env *e = *state;
    char path[256];
    gen_model(e, &LLAMA_GQA, path, sizeof path);
    exsa_model *m = load_model(path);
    exsa_ref_model *r = load_ref(path);
    const int V = exsa_model_hparams(m)->n_vocab;
    uint64_t rng = 555;
    int32_t a[48], b[40];
    random_tokens(&rng, a, 48, V);
    random_tokens(&rng, b, 40, V);
    exsa_model_ctx *c = make_ctx(m, EXSA_TYPE_F32, 2, 64, 3);
    exsa_kv_cache *kv = exsa_model_ctx_kv(c);
    float *lg = malloc((size_t)48 * V * sizeof *lg);
    double *ref = malloc((size_t)48 * V * sizeof *ref);
    assert_non_null(lg);
    assert_non_null(ref);

    forward_rows(c, 0, a, 20, 0, lg); /* seq 0: 2 blocks */
    assert_int_equal(exsa_kv_n_free_blocks(kv), 1);

    /* seq 1 wants 20 tokens = 2 blocks, only 1 free. */
    int32_t pos[20], sq[20];
    uint8_t want[20];
    for (int i = 0; i < 20; i++) {
        pos[i] = i;
        sq[i] = 1;
        want[i] = 1;
    }
    exsa_batch bt = {.n = 20, .token = b, .pos = pos, .seq = sq, .logits = want};
    exsa_err err = {0};
    int rc = exsa_model_forward(c, &bt, lg, &err);
    printf("EFULL message: %s\n", err.msg);
    assert_int_equal(rc, EXSA_EFULL);
    assert_true(strlen(err.msg) > 0);
    assert_int_equal(exsa_kv_n_free_blocks(kv), 1);
    assert_int_equal(exsa_kv_seq_len(kv, 1), 0);
    assert_int_equal(exsa_kv_seq_len(kv, 0), 20);

    /* A mixed batch where seq 1 fits (its 1 block) but seq 0 growing to
     * 36 tokens needs a third: refused as a whole. */
    int32_t t2[20], p2[20], s2[20];
    for (int i = 0; i < 4; i++) {
        t2[i] = b[i];
        p2[i] = i;
        s2[i] = 1;
    }
    for (int i = 4; i < 20; i++) {
        t2[i] = a[i + 16];
        p2[i] = i + 16;
        s2[i] = 0;
    }
    exsa_batch bm = {.n = 20, .token = t2, .pos = p2, .seq = s2, .logits = want};
    err = (exsa_err){0};
    rc = exsa_model_forward(c, &bm, lg, &err);
    printf("EFULL message: %s\n", err.msg);
    assert_int_equal(rc, EXSA_EFULL);
    assert_int_equal(exsa_kv_n_free_blocks(kv), 1);
    assert_int_equal(exsa_kv_seq_len(kv, 1), 0);
    assert_int_equal(exsa_kv_seq_len(kv, 0), 20);

    /* Still works: seq 0 continues to 32 tokens within its 2 blocks... */
    forward_rows(c, 0, a + 20, 12, 20, lg + (size_t)20 * V);
    assert_int_equal(exsa_ref_forward(r, a, 32, ref), 0);
    double e1 = exsa_ref_rel_l2(lg + (size_t)20 * V, ref + (size_t)20 * V, (size_t)12 * V);
    printf("REFERR after-EFULL seq0 kv=F32 rel_l2=%.3e\n", e1);
    assert_true(e1 < TOL_F32);
    /* ...and seq 1 gets the pool once seq 0 is freed. */
    exsa_kv_seq_free(kv, 0);
    assert_int_equal(exsa_kv_n_free_blocks(kv), 3);
    forward_rows(c, 1, b, 40, 0, lg);
    assert_int_equal(exsa_ref_forward(r, b, 40, ref), 0);
    double e2 = exsa_ref_rel_l2(lg, ref, (size_t)40 * V);
    printf("REFERR after-free seq1 kv=F32 rel_l2=%.3e\n", e2);
    assert_true(e2 < TOL_F32);

    free(lg);
    free(ref);
    exsa_model_ctx_free(c);
    exsa_ref_free(r);
    exsa_model_free(m);
}

/* Prefix sharing (two full blocks) and rollback by truncation give the
 * reference's logits for the continued sequences. */
static void test_kv_share_truncate(void **state)
{
    const env *e = *state;
    char path[256];
    gen_model(e, &LLAMA_GQA, path, sizeof path);
    exsa_model *m = load_model(path);
    exsa_ref_model *r = load_ref(path);
    const int V = exsa_model_hparams(m)->n_vocab;
    uint64_t rng = 777;
    int32_t a[40], b[40];
    random_tokens(&rng, a, 40, V);
    memcpy(b, a, 32 * sizeof *b);
    random_tokens(&rng, b + 32, 8, V); /* b = a's first 32 tokens + 8 others */
    exsa_model_ctx *c = make_ctx(m, EXSA_TYPE_F32, 2, 64, 0);
    exsa_kv_cache *kv = exsa_model_ctx_kv(c);
    float *lg = malloc((size_t)40 * V * sizeof *lg);
    double *ref = malloc((size_t)40 * V * sizeof *ref);
    assert_non_null(lg);
    assert_non_null(ref);

    forward_rows(c, 0, a, 40, 0, lg);
    exsa_err err = {0};
    int rc = exsa_kv_seq_share(kv, 1, 0, 32, &err);
    if (rc)
        print_error("share: %s\n", err.msg);
    assert_int_equal(rc, 0);
    forward_rows(c, 1, b + 32, 8, 32, lg);
    assert_int_equal(exsa_ref_forward(r, b, 40, ref), 0);
    double e1 = exsa_ref_rel_l2(lg, ref + (size_t)32 * V, (size_t)8 * V);
    printf("REFERR shared-prefix kv=F32 rel_l2=%.3e\n", e1);
    assert_true(e1 < TOL_F32);

    /* Roll seq 0 back to 25 tokens and continue with b's tokens. */
    exsa_kv_seq_truncate(kv, 0, 25);
    assert_int_equal(exsa_kv_seq_len(kv, 0), 25);
    int32_t a2[40];
    memcpy(a2, a, 25 * sizeof *a2);
    memcpy(a2 + 25, b + 25, 15 * sizeof *a2);
    forward_rows(c, 0, a2 + 25, 15, 25, lg);
    assert_int_equal(exsa_ref_forward(r, a2, 40, ref), 0);
    double e2 = exsa_ref_rel_l2(lg, ref + (size_t)25 * V, (size_t)15 * V);
    printf("REFERR truncated kv=F32 rel_l2=%.3e\n", e2);
    assert_true(e2 < TOL_F32);

    free(lg);
    free(ref);
    exsa_model_ctx_free(c);
    exsa_ref_free(r);
    exsa_model_free(m);
}

/* ---- invalid input ---- */

static void expect_einval(exsa_model_ctx *c, const exsa_batch *b, float *out, const char *what)
{
    exsa_err err = {0};
    int rc = exsa_model_forward(c, b, out, &err);
    printf("EINVAL %-18s -> %d: %s\n", what, rc, err.msg);
    assert_int_equal(rc, EXSA_EINVAL);
    assert_true(strlen(err.msg) > 0);
}

static void test_invalid_batches(void **state)
{
    const env *e = *state;
    char path[256];
    gen_model(e, &LLAMA_GQA, path, sizeof path);
    exsa_model *m = load_model(path);
    exsa_ref_model *r = load_ref(path);
    const int V = exsa_model_hparams(m)->n_vocab;
    exsa_model_ctx *c = make_ctx(m, EXSA_TYPE_F32, 2, 16, 0);
    exsa_kv_cache *kv = exsa_model_ctx_kv(c);
    const int n_free = exsa_kv_n_free_blocks(kv);
    float *lg = malloc((size_t)17 * V * sizeof *lg);
    assert_non_null(lg);

    int32_t tok[17], pos[17], sq[17];
    uint8_t want[17];
    uint64_t rng = 31;
    random_tokens(&rng, tok, 17, V);
#define RESET()                                                                      \
    for (int i = 0; i < 17; i++) {                                                   \
        pos[i] = i;                                                                  \
        sq[i] = 0;                                                                   \
        want[i] = 1;                                                                 \
    }
    int32_t t0 = tok[3];
    exsa_batch b = {.n = 4, .token = tok, .pos = pos, .seq = sq, .logits = want};
    RESET();
    tok[3] = V;
    expect_einval(c, &b, lg, "token = n_vocab");
    tok[3] = -1;
    expect_einval(c, &b, lg, "token = -1");
    tok[3] = t0;
    pos[2] = -1;
    expect_einval(c, &b, lg, "pos = -1");
    RESET();
    pos[3] = N_CTX;
    expect_einval(c, &b, lg, "pos = n_ctx");
    RESET();
    sq[1] = 2;
    expect_einval(c, &b, lg, "seq = n_seq");
    sq[1] = -1;
    expect_einval(c, &b, lg, "seq = -1");
    RESET();
    b.n = 0;
    expect_einval(c, &b, lg, "n = 0");
    b.n = -3;
    expect_einval(c, &b, lg, "n = -3");
    b.n = 17;
    expect_einval(c, &b, lg, "n > max_batch");
    b.n = 4;
    expect_einval(c, &b, NULL, "no logits buffer");
    expect_einval(c, NULL, lg, "NULL batch");
#undef RESET
    /* Nothing was reserved by the refused batches. */
    assert_int_equal(exsa_kv_n_free_blocks(kv), n_free);
    assert_int_equal(exsa_kv_seq_len(kv, 0), 0);
    assert_int_equal(exsa_kv_seq_len(kv, 1), 0);

    /* A valid batch still gives the reference's answer. */
    for (int i = 0; i < 16; i++) {
        pos[i] = i;
        sq[i] = 1;
        want[i] = 1;
    }
    b.n = 16;
    exsa_err err = {0};
    assert_int_equal(exsa_model_forward(c, &b, lg, &err), 0);
    double *ref = malloc((size_t)16 * V * sizeof *ref);
    assert_non_null(ref);
    assert_int_equal(exsa_ref_forward(r, tok, 16, ref), 0);
    double e1 = exsa_ref_rel_l2(lg, ref, (size_t)16 * V);
    printf("REFERR after-EINVAL kv=F32 rel_l2=%.3e\n", e1);
    assert_true(e1 < TOL_F32);
    free(ref);
    free(lg);
    exsa_model_ctx_free(c);
    exsa_ref_free(r);
    exsa_model_free(m);
}

static void expect_load_error(const char *path, const char *what, const char *needle)
{
    exsa_err err = {0};
    exsa_model *m = exsa_model_load(path, &err);
    printf("LOAD %-22s -> %d: %s\n", what, err.code, err.msg);
    if (m)
        exsa_model_free(m);
    assert_null(m);
    assert_true(err.code < 0);
    assert_true(strlen(err.msg) > 0);
    if (needle && !strstr(err.msg, needle))
        fail_msg("message for %s does not mention '%s'", what, needle);
}

static void test_load_errors(void **state)
{
    const env *e = *state;
    char path[256], bad[300];
    gen_model(e, &LLAMA_GQA, path, sizeof path);

    snprintf(bad, sizeof bad, "%s/no-such-file.gguf", e->dir);
    expect_load_error(bad, "missing file", NULL);

    snprintf(bad, sizeof bad, "%s/text.gguf", e->dir);
    FILE *f = fopen(bad, "wb");
    assert_non_null(f);
    fputs("this is not a model, just some text that is long enough to be read\n", f);
    fclose(f);
    expect_load_error(bad, "text file", NULL);

    /* Truncated halfway through the tensor data. */
    size_t size;
    char *data = exsa_test_read_file(path, &size);
    assert_non_null(data);
    snprintf(bad, sizeof bad, "%s/truncated.gguf", e->dir);
    f = fopen(bad, "wb");
    assert_non_null(f);
    fwrite(data, 1, size / 2, f);
    fclose(f);
    free(data);
    expect_load_error(bad, "truncated file", NULL);

    snprintf(bad, sizeof bad, "%s/no-ffn-down.gguf", e->dir);
    assert_int_equal(rewrite_gguf(path, bad, NULL, 0, "blk.1.ffn_down.weight"), 0);
    expect_load_error(bad, "missing tensor", "blk.1.ffn_down.weight");

    snprintf(bad, sizeof bad, "%s/no-tensors.gguf", e->dir);
    assert_int_equal(rewrite_gguf(path, bad, NULL, 0, "*"), 0);
    expect_load_error(bad, "no tensors", "token_embd");

    const kv_override arch[] = {{"general.architecture", 's', 0, 0, "gpt2"}};
    snprintf(bad, sizeof bad, "%s/gpt2.gguf", e->dir);
    assert_int_equal(rewrite_gguf(path, bad, arch, 1, NULL), 0);
    expect_load_error(bad, "unknown architecture", "gpt2");

    const kv_override embd[] = {{"llama.embedding_length", 'u', 32, 0, NULL}};
    snprintf(bad, sizeof bad, "%s/bad-embd.gguf", e->dir);
    assert_int_equal(rewrite_gguf(path, bad, embd, 1, NULL), 0);
    expect_load_error(bad, "wrong embedding_length", NULL);

    const kv_override nohead[] = {{"llama.attention.head_count", 'x', 0, 0, NULL}};
    snprintf(bad, sizeof bad, "%s/no-heads.gguf", e->dir);
    assert_int_equal(rewrite_gguf(path, bad, nohead, 1, NULL), 0);
    expect_load_error(bad, "missing head_count", "head_count");

    const kv_override kvh[] = {{"llama.attention.head_count_kv", 'u', 3, 0, NULL}};
    snprintf(bad, sizeof bad, "%s/bad-kv-heads.gguf", e->dir);
    assert_int_equal(rewrite_gguf(path, bad, kvh, 1, NULL), 0);
    expect_load_error(bad, "kv heads not dividing", NULL);

    /* The original still loads. */
    exsa_model_free(load_model(path));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_f32),
        cmocka_unit_test(test_qwen2_f32),
        cmocka_unit_test(test_qwen3_f32),
        cmocka_unit_test(test_weight_types),
        cmocka_unit_test(test_quantized),
        cmocka_unit_test(test_rope_variants),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_chunked_prefill),
        cmocka_unit_test(test_kv_full),
        cmocka_unit_test(test_kv_share_truncate),
        cmocka_unit_test(test_invalid_batches),
        cmocka_unit_test(test_load_errors),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
