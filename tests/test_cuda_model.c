/* Whole models on the GPU (skipped where no CUDA GPU is usable).
 *
 * - Every weight format: the GPU's logits against the naive double-precision
 *   reference (tests/helpers/ref_forward.c) and against the CPU backend's,
 *   for a prefill (many rows: the tensor-core path) and decode steps (one
 *   row: the matrix-vector path). F32/F16/BF16 within 1e-3 of the CPU; every
 *   format no further from the exact logits than the CPU is (x1.25), whose
 *   quantized activations are the larger error.
 * - Batch invariance: a sequence alone and inside a mixed batch of others
 *   (prefill chunks and decode rows) gives the same logits (rel L2 < 1e-5).
 * - Partial offload: -ngl 0, 1, half, all and all + head give the same
 *   greedy tokens.
 * - Unload gives the device memory back (free memory within 16 MiB of the
 *   baseline taken before the load).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "exsa.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "quant/quant.h"
#include "ref_forward.h"
#include "test_util.h"

#define N_LAYER 3
#define PROMPT 40
#define DECODE 8

static char g_dir[64];

static const char *const g_ftypes[] = {"F32",  "F16",  "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                       "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"};
#define N_FT (int)(sizeof g_ftypes / sizeof g_ftypes[0])

static void model_path(char *out, size_t n, const char *arch, const char *ft)
{
    snprintf(out, n, "%s/%s-%s.gguf", g_dir, arch, ft);
}

static int gen(const char *arch, const char *ft, uint64_t seed)
{
    char path[160];
    model_path(path, sizeof path, arch, ft);
    exsa_gen_params p;
    exsa_gen_params_default(&p);
    p.arch = arch;
    p.n_embd = 256; /* K-quant blocks are 256 wide */
    p.n_layer = N_LAYER;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.head_dim = 64;
    p.n_ff = 512;
    p.n_vocab = 1000;
    p.n_ctx_train = 512;
    p.seed = seed;
    p.n_threads = 0;
    if (!strcmp(arch, "gemma3")) {
        p.n_swa = 16;
        p.swa_pattern = 2;
    }
    exsa_err err = {0};
    if (exsa_ftype_parse(ft, &p.ftype, &err) != 0 ||
        exsa_model_generate(path, &p, NULL, NULL, &err) != 0) {
        fprintf(stderr, "generate %s %s: %s\n", arch, ft, err.msg);
        return -1;
    }
    return 0;
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/exsa_test_cuda_model_XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    for (int i = 0; i < N_FT; i++)
        if (gen("llama", g_ftypes[i], 100 + (uint64_t)i))
            return -1;
    if (gen("qwen2", "Q4_K", 7) || gen("gemma3", "Q8_0", 8))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static exsa_model *load(const char *path, int device, int ngl)
{
    exsa_model_params mp;
    exsa_model_params_default(&mp);
    mp.device = device;
    mp.n_gpu_layers = ngl;
    exsa_err err = {0};
    exsa_model *m = exsa_model_load_ex(path, &mp, &err);
    if (!m)
        fail_msg("load %s: %s", path, err.msg);
    return m;
}

static exsa_model_ctx *make_ctx(exsa_model *m, int n_seq)
{
    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_ctx = 256;
    cp.n_seq = n_seq;
    cp.max_batch = 64;
    cp.kv_type = EXSA_TYPE_F32;
    exsa_err err = {0};
    exsa_model_ctx *c = exsa_model_ctx_create(m, &cp, &err);
    if (!c)
        fail_msg("ctx: %s", err.msg);
    return c;
}

static void tokens(int32_t *t, int n, uint64_t seed, int n_vocab)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (int32_t)((seed >> 33) % (uint64_t)n_vocab);
    }
}

/* Logits of every position of toks: a prefill of PROMPT rows (all
 * outputs), then DECODE single rows. */
static void run_seq(exsa_model_ctx *c, const int32_t *toks, int V, float *out)
{
    int32_t pos[PROMPT], seq[PROMPT] = {0};
    uint8_t want[PROMPT];
    for (int i = 0; i < PROMPT; i++) {
        pos[i] = i;
        want[i] = 1;
    }
    exsa_err err = {0};
    exsa_batch b = {.n = PROMPT, .token = (int32_t *)toks, .pos = pos, .seq = seq,
                    .logits = want};
    if (exsa_model_forward(c, &b, out, &err))
        fail_msg("prefill: %s", err.msg);
    for (int i = 0; i < DECODE; i++) {
        int32_t p = PROMPT + i, s = 0;
        uint8_t w = 1;
        exsa_batch d = {.n = 1, .token = (int32_t *)&toks[PROMPT + i], .pos = &p, .seq = &s,
                        .logits = &w};
        if (exsa_model_forward(c, &d, out + (size_t)(PROMPT + i) * V, &err))
            fail_msg("decode: %s", err.msg);
    }
}

static double rel_l2_f(const float *a, const float *b, size_t n)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        s += (double)b[i] * b[i];
    }
    return s > 0 ? sqrt(d / s) : sqrt(d);
}

static void test_formats_against_reference(void **state)
{
    (void)state;
    const int N = PROMPT + DECODE;
    for (int f = 0; f < N_FT; f++) {
        char path[160];
        model_path(path, sizeof path, "llama", g_ftypes[f]);
        exsa_model *cpu = load(path, EXSA_DEVICE_CPU, -1);
        const int V = exsa_model_hparams(cpu)->n_vocab;
        int32_t toks[PROMPT + DECODE];
        tokens(toks, N, 1234 + (uint64_t)f, V);
        float *lc = malloc((size_t)N * V * sizeof *lc), *lg = malloc((size_t)N * V * sizeof *lg);
        double *ex = malloc((size_t)N * V * sizeof *ex);
        assert_true(lc && lg && ex);
        exsa_model_ctx *c = make_ctx(cpu, 1);
        run_seq(c, toks, V, lc);
        exsa_model_ctx_free(c);
        exsa_model_free(cpu);
        exsa_model *gpu = load(path, EXSA_DEVICE_CUDA, -1);
        assert_int_equal(exsa_model_device(gpu), EXSA_DEVICE_CUDA);
        c = make_ctx(gpu, 1);
        for (size_t i = 0; i < (size_t)N * V; i++)
            lg[i] = NAN;
        run_seq(c, toks, V, lg);
        exsa_model_ctx_free(c);
        exsa_model_free(gpu);
        char msg[256];
        exsa_ref_model *r = exsa_ref_load(path, msg, sizeof msg);
        if (!r)
            fail_msg("reference: %s", msg);
        assert_int_equal(exsa_ref_forward(r, toks, N, ex), 0);
        exsa_ref_free(r);
        const double e_gpu = exsa_ref_rel_l2(lg, ex, (size_t)N * V);
        const double e_cpu = exsa_ref_rel_l2(lc, ex, (size_t)N * V);
        const double e_pre = exsa_ref_rel_l2(lg, ex, (size_t)PROMPT * V);
        const double e_dec = exsa_ref_rel_l2(lg + (size_t)PROMPT * V, ex + (size_t)PROMPT * V,
                                             (size_t)DECODE * V);
        const double gc = rel_l2_f(lg, lc, (size_t)N * V);
        printf("GPUERR %-5s exact: gpu %.3e (prefill %.3e, decode %.3e) cpu %.3e; gpu-cpu %.3e\n",
               g_ftypes[f], e_gpu, e_pre, e_dec, e_cpu, gc);
        if (f < 3)
            assert_true(gc < 1e-3);
        assert_true(e_gpu <= 1.25 * e_cpu + 1e-4);
        free(lc);
        free(lg);
        free(ex);
    }
}

/* Sequence 0 alone, then again with sequences 1 and 2 in every batch
 * (their prefill chunks beside its prefill, their decode rows beside its
 * decode rows). */
static void invariance(const char *path)
{
    exsa_model *m = load(path, EXSA_DEVICE_CUDA, -1);
    const int V = exsa_model_hparams(m)->n_vocab, N = PROMPT + DECODE;
    int32_t toks[3][PROMPT + DECODE];
    for (int s = 0; s < 3; s++)
        tokens(toks[s], N, 77 + (uint64_t)s, V);
    float *alone = malloc((size_t)N * V * sizeof *alone);
    float *mixed = malloc((size_t)N * V * sizeof *mixed);
    float *scratch = malloc((size_t)3 * 64 * V * sizeof *scratch);
    assert_true(alone && mixed && scratch);
    exsa_model_ctx *c = make_ctx(m, 3);
    run_seq(c, toks[0], V, alone);
    exsa_model_ctx_free(c);

    c = make_ctx(m, 3);
    exsa_err err = {0};
    /* prefill: seq 1's first 7 rows, seq 0's PROMPT rows, seq 2's first 11 */
    int32_t tk[64], ps[64], sq[64];
    uint8_t w[64];
    int n = 0;
    const int pre[3] = {PROMPT, 7, 11};
    for (int s = 1; s <= 3; s++) {
        const int q = s % 3;
        for (int i = 0; i < pre[q]; i++, n++) {
            tk[n] = toks[q][i];
            ps[n] = i;
            sq[n] = q;
            w[n] = 1;
        }
    }
    exsa_batch b = {.n = n, .token = tk, .pos = ps, .seq = sq, .logits = w};
    if (exsa_model_forward(c, &b, scratch, &err))
        fail_msg("mixed prefill: %s", err.msg);
    /* seq 0's rows are 7 .. 7 + PROMPT in output order */
    memcpy(mixed, scratch + (size_t)pre[1] * V, (size_t)PROMPT * V * sizeof *mixed);
    int len[3] = {PROMPT, 7, 11};
    for (int i = 0; i < DECODE; i++) {
        n = 0;
        for (int q = 2; q >= 0; q--, n++) {
            tk[n] = toks[q][len[q]];
            ps[n] = len[q]++;
            sq[n] = q;
            w[n] = 1;
        }
        exsa_batch d = {.n = n, .token = tk, .pos = ps, .seq = sq, .logits = w};
        if (exsa_model_forward(c, &d, scratch, &err))
            fail_msg("mixed decode: %s", err.msg);
        memcpy(mixed + (size_t)(PROMPT + i) * V, scratch + (size_t)2 * V, (size_t)V * sizeof *mixed);
    }
    exsa_model_ctx_free(c);
    const double e = rel_l2_f(mixed, alone, (size_t)N * V);
    printf("BATCHINV %s rel_l2 %.3e\n", path, e);
    assert_true(e < 1e-5);
    free(alone);
    free(mixed);
    free(scratch);
    exsa_model_free(m);
}

static void test_batch_invariance(void **state)
{
    (void)state;
    const char *cases[][2] = {{"llama", "F32"}, {"llama", "Q4_K"}, {"llama", "Q8_0"},
                              {"qwen2", "Q4_K"}, {"gemma3", "Q8_0"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[160];
        model_path(path, sizeof path, cases[i][0], cases[i][1]);
        invariance(path);
    }
}

static void greedy(exsa_model *m, const int32_t *prompt, int n_prompt, int n_gen, int32_t *out)
{
    const int V = exsa_model_hparams(m)->n_vocab;
    exsa_model_ctx *c = make_ctx(m, 1);
    float *lg = malloc((size_t)V * sizeof *lg);
    assert_non_null(lg);
    int32_t pos[PROMPT], seq[PROMPT] = {0};
    uint8_t want[PROMPT] = {0};
    for (int i = 0; i < n_prompt; i++)
        pos[i] = i;
    want[n_prompt - 1] = 1;
    exsa_err err = {0};
    exsa_batch b = {.n = n_prompt, .token = (int32_t *)prompt, .pos = pos, .seq = seq,
                    .logits = want};
    if (exsa_model_forward(c, &b, lg, &err))
        fail_msg("prefill: %s", err.msg);
    for (int i = 0; i < n_gen; i++) {
        int best = 0;
        for (int v = 1; v < V; v++)
            best = lg[v] > lg[best] ? v : best;
        out[i] = best;
        int32_t p = n_prompt + i, s = 0;
        uint8_t w = 1;
        exsa_batch d = {.n = 1, .token = &out[i], .pos = &p, .seq = &s, .logits = &w};
        if (exsa_model_forward(c, &d, lg, &err))
            fail_msg("decode: %s", err.msg);
    }
    free(lg);
    exsa_model_ctx_free(c);
}

static void test_partial_offload_same_tokens(void **state)
{
    (void)state;
    const char *files[][2] = {{"llama", "Q4_K"}, {"gemma3", "Q8_0"}};
    for (size_t f = 0; f < 2; f++) {
        char path[160];
        model_path(path, sizeof path, files[f][0], files[f][1]);
        const int ngls[] = {-1, 0, 1, N_LAYER / 2 + 1, N_LAYER, N_LAYER + 1};
        int32_t prompt[PROMPT], want[24], got[24];
        tokens(prompt, PROMPT, 5, 1000);
        for (size_t k = 0; k < sizeof ngls / sizeof ngls[0]; k++) {
            exsa_model *m = load(path, EXSA_DEVICE_CUDA, ngls[k]);
            printf("OFFLOAD %s -ngl %d: %s\n", files[f][1], ngls[k], exsa_model_placement(m));
            greedy(m, prompt, 20, 24, k == 0 ? want : got);
            exsa_model_free(m);
            if (k > 0) {
                int same = 0;
                while (same < 24 && got[same] == want[same])
                    same++;
                printf("OFFLOAD %s -ngl %d: %d/24 tokens as -ngl -1\n", files[f][1], ngls[k],
                       same);
                assert_int_equal(same, 24);
            }
        }
    }
}

static void test_unload_frees_device_memory(void **state)
{
    (void)state;
    char path[160];
    model_path(path, sizeof path, "llama", "F16");
    size_t free0, total, free1, free2;
    cudaFree(0);
    assert_int_equal(cudaMemGetInfo(&free0, &total), cudaSuccess);
    for (int round = 0; round < 3; round++) {
        exsa_model *m = load(path, EXSA_DEVICE_CUDA, -1);
        exsa_model_ctx *c = make_ctx(m, 4);
        int32_t toks[PROMPT + DECODE];
        tokens(toks, PROMPT + DECODE, 9, 1000);
        float *lg = malloc((size_t)(PROMPT + DECODE) * 1000 * sizeof *lg);
        run_seq(c, toks, 1000, lg);
        free(lg);
        assert_int_equal(cudaMemGetInfo(&free1, &total), cudaSuccess);
        exsa_model_ctx_free(c);
        exsa_model_free(m);
        assert_int_equal(cudaMemGetInfo(&free2, &total), cudaSuccess);
        printf("DEVMEM round %d: baseline free %zu MiB, loaded %zu MiB, after unload %zu MiB\n",
               round, free0 >> 20, free1 >> 20, free2 >> 20);
        assert_true(free1 < free0);
        assert_true(free2 + (16u << 20) >= free0);
    }
}

int main(void)
{
    const char *why = NULL;
    if (!exsa_cuda_usable(&why)) {
        printf("no CUDA device: skipped (%s)\n", why);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_formats_against_reference),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_partial_offload_same_tokens),
        cmocka_unit_test(test_unload_frees_device_memory),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
