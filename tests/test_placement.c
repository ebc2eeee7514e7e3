/* Placement and partial offload, without a GPU: the "GPU" is the CPU backend
 * under a device's memory contract (exsa_backend_cpu_create_as_device:
 * weights copied at load, activations and batch metadata only through
 * set/get). Every split of the layers (-ngl 0, 1, half, all, all + head)
 * must give the same logits and hidden states, bit for bit, as the plain
 * CPU model: the kernels are the same, so any difference is a fault in
 * what crosses between backends (the residual stream, the metadata, the
 * block tables, the output head's chunks). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "exsa.h"
#include "model/model.h"
#include "model/model_gen.h"
#include "test_util.h"

static char g_dir[64];

typedef struct model_case {
    const char *arch, *ftype;
    int tied, n_swa;
    char path[128];
} model_case;

static model_case g_cases[] = {
    {"llama", "Q8_0", 1, 0, ""},  /* tied output: a second copy when the head moves */
    {"qwen2", "F16", 0, 0, ""},   /* biases */
    {"gemma3", "F32", 0, 12, ""}, /* window group, softcap-free head, embedding scale */
};
#define N_CASES (int)(sizeof g_cases / sizeof g_cases[0])
#define N_LAYER 4

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/exsa_test_place_XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    for (int i = 0; i < N_CASES; i++) {
        model_case *mc = &g_cases[i];
        snprintf(mc->path, sizeof mc->path, "%s/%s.gguf", g_dir, mc->arch);
        exsa_gen_params p;
        exsa_gen_params_default(&p);
        p.arch = mc->arch;
        p.n_embd = 64;
        p.n_layer = N_LAYER;
        p.n_head = 4;
        p.n_head_kv = 2;
        p.n_ff = 128;
        p.n_vocab = 320;
        p.n_ctx_train = 256;
        p.tied = mc->tied;
        p.n_swa = mc->n_swa;
        p.swa_pattern = mc->n_swa ? 2 : 0;
        p.seed = 11 + (uint64_t)i;
        p.n_threads = 1;
        exsa_err err = {0};
        if (exsa_ftype_parse(mc->ftype, &p.ftype, &err) != 0 ||
            exsa_model_generate(mc->path, &p, NULL, NULL, &err) != 0) {
            fprintf(stderr, "generate %s: %s\n", mc->arch, err.msg);
            return -1;
        }
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N_CASES; i++)
        unlink(g_cases[i].path);
    rmdir(g_dir);
    return 0;
}

/* A fixed schedule of batches over three sequences: two prefills (one
 * with every row's logits, more than a head chunk), then decode steps
 * mixing all three. Returns the logits (or hidden states) of every batch
 * concatenated; *n_floats their count. */
static float *run_schedule(exsa_model *m, int hidden, size_t *n_floats)
{
    const exsa_hparams *hp = exsa_model_hparams(m);
    const int width = hidden ? hp->n_embd : hp->n_vocab;
    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_threads = 1;
    cp.n_ctx = 128;
    cp.n_seq = 3;
    cp.max_batch = 48;
    exsa_err err = {0};
    exsa_model_ctx *c = exsa_model_ctx_create(m, &cp, &err);
    if (!c)
        fail_msg("ctx: %s", err.msg);
    size_t cap = (size_t)width * 400, used = 0;
    float *all = malloc(cap * sizeof *all);
    assert_non_null(all);
    int32_t tok[48], pos[48], seq[48];
    uint8_t want[48];
    int len[3] = {0, 0, 0};
    uint64_t rng = 99;
    /* step 0: seq 0, 40 rows, every row's output; step 1: seq 1, 45 rows,
     * last only; step 2: seq 2, 5 rows + seq 0, 1 row; then 12 decode
     * steps over all three */
    for (int step = 0; step < 15; step++) {
        int n = 0;
        for (int s = 0; s < 3; s++) {
            int rows = step == 0 ? (s == 0 ? 40 : 0)
                       : step == 1 ? (s == 1 ? 45 : 0)
                       : step == 2 ? (s == 2 ? 5 : s == 0 ? 1 : 0)
                                   : 1;
            for (int r = 0; r < rows; r++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                tok[n] = (int32_t)((rng >> 33) % (uint64_t)hp->n_vocab);
                pos[n] = len[s]++;
                seq[n] = s;
                want[n] = step == 0 || r == rows - 1;
                n++;
            }
        }
        exsa_batch b = {.n = n, .token = tok, .pos = pos, .seq = seq, .logits = want};
        int n_out = 0;
        for (int i = 0; i < n; i++)
            n_out += want[i];
        assert_true(used + (size_t)n_out * width <= cap);
        int rc = hidden ? exsa_model_forward_hidden(c, &b, all + used, &err)
                        : exsa_model_forward(c, &b, all + used, &err);
        if (rc)
            fail_msg("forward: %s", err.msg);
        used += (size_t)n_out * width;
    }
    exsa_model_ctx_free(c);
    *n_floats = used;
    return all;
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

static void test_splits_match_cpu(void **state)
{
    (void)state;
    const int ngls[] = {0, 1, N_LAYER / 2, N_LAYER, N_LAYER + 1, -1};
    for (int i = 0; i < N_CASES; i++) {
        for (int hidden = 0; hidden < 2; hidden++) {
            exsa_model *ref = load(g_cases[i].path, EXSA_DEVICE_CPU, -1);
            assert_int_equal(exsa_model_device(ref), EXSA_DEVICE_CPU);
            size_t n_ref;
            float *want = run_schedule(ref, hidden, &n_ref);
            exsa_model_free(ref);
            for (size_t k = 0; k < sizeof ngls / sizeof ngls[0]; k++) {
                exsa_model *m = load(g_cases[i].path, EXSA_DEVICE_CPU_AS_GPU, ngls[k]);
                const char *pl = exsa_model_placement(m);
                printf("PLACE %s %s -ngl %d: %s\n", g_cases[i].arch,
                       hidden ? "hidden" : "logits", ngls[k], pl);
                assert_int_equal(exsa_model_device(m),
                                 ngls[k] == 0 ? EXSA_DEVICE_CPU : EXSA_DEVICE_CUDA);
                if (ngls[k] > 0) {
                    char expect[64];
                    snprintf(expect, sizeof expect, "%d/%d layers",
                             ngls[k] < N_LAYER ? ngls[k] : N_LAYER, N_LAYER);
                    assert_non_null(strstr(pl, expect));
                    assert_true((strstr(pl, "+ head") != NULL) == (ngls[k] > N_LAYER));
                }
                size_t n_got;
                float *got = run_schedule(m, hidden, &n_got);
                assert_int_equal(n_got, n_ref);
                size_t diff = 0;
                for (size_t j = 0; j < n_ref; j++)
                    diff += memcmp(&got[j], &want[j], sizeof(float)) != 0;
                if (diff)
                    fail_msg("%s -ngl %d: %zu of %zu outputs differ from the CPU's",
                             g_cases[i].arch, ngls[k], diff, n_ref);
                free(got);
                exsa_model_free(m);
            }
            free(want);
        }
    }
}

/* What -ngl and --device say when there is nothing to put on a GPU. */
static void test_cpu_device_ignores_ngl(void **state)
{
    (void)state;
    exsa_model *m = load(g_cases[0].path, EXSA_DEVICE_CPU, 2);
    assert_int_equal(exsa_model_device(m), EXSA_DEVICE_CPU);
    assert_string_equal(exsa_model_placement(m), "cpu");
    assert_int_equal(exsa_model_device_memory(m, NULL, NULL, NULL), -1);
    exsa_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_splits_match_cpu),
        cmocka_unit_test(test_cpu_device_ignores_ngl),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
