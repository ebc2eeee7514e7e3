/* exsa bench: prompt processing (pp) and token generation (tg) speed, in the
 * manner of llama-bench: pp runs the whole prompt as one batch from an empty
 * cache; tg decodes n tokens one at a time from an empty cache. Each test
 * runs -r times after one warm-up; mean and standard deviation of t/s. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "model/model.h"
#include "quant/quant.h"
#include "util/hash.h"
#include "util/timer.h"

static const char *usage =
    "usage: exsa bench -m MODEL [-p 512] [-n 128] [-t THREADS] [-r 3] [-b 512]\n"
    "                  [--kv-type f16|f32|q8_0] [--device auto|cpu|cuda] [-ngl N] [--json]\n"
    "       exsa bench -m MODEL --concurrency 1,4,8,16 [--prompt 256] [--gen 128]\n"
    "                  [--requests 4] [--shared-prefix N] [-t THREADS] [--json]\n"
    "       exsa bench -m MODEL --spec-prompt TEXT|@FILE [-n 128] [-r 3] [-md DRAFT]\n"
    "                  [--draft-max 16] [--draft-min 0] [--draft-p-min 0.75] [--json]\n"
    "pp<P>: the P-token prompt as batches of -b rows; tg<N>: N single-token steps.\n"
    "-p 0 or -n 0 skips that test. Reports tokens/s, mean and standard deviation.\n"
    "--concurrency: the serving engine with C clients each sending --requests\n"
    "requests in turn; aggregate generated t/s, time to first token and\n"
    "inter-token latency p50/p99, peak KV blocks.\n"
    "--spec-prompt: that prompt (a chat user message; @FILE reads it) greedy with\n"
    "speculative decoding (n-gram, or -md's guesses) and without, interleaved:\n"
    "decode t/s of each, the speed-up, guesses kept; the outputs must match.\n";

int exsa_bench_serving(const char *path, const exsa_model_params *mp, const char *levels,
                       int n_prompt, int n_gen, int n_shared, int n_req, int threads, int n_ctx,
                       int json);
int exsa_bench_spec(const char *path, const exsa_model_params *mp, const exsa_engine_params *sp,
                    const char *prompt_text, int n_gen, int reps, int threads, int json);

typedef struct bench_ctx {
    exsa_model_ctx *c;
    int32_t *tok, *pos, *seq;
    uint8_t *want;
    float *logits;
    int batch;
} bench_ctx;

/* Runs n tokens from position 0 of sequence 0 in chunks of `chunk` rows;
 * returns seconds, or -1 on error. */
static double run_tokens(bench_ctx *b, int n, int chunk, exsa_err *err)
{
    exsa_kv_seq_free(exsa_model_ctx_kv(b->c), 0);
    int64_t t0 = exsa_time_ns();
    for (int s = 0; s < n; s += chunk) {
        int k = n - s < chunk ? n - s : chunk;
        for (int i = 0; i < k; i++) {
            b->pos[i] = s + i;
            b->want[i] = i == k - 1;
        }
        exsa_batch bt = {.n = k, .token = b->tok + s, .pos = b->pos, .seq = b->seq,
                         .logits = b->want};
        if (exsa_model_forward(b->c, &bt, b->logits, err))
            return -1;
    }
    return (double)(exsa_time_ns() - t0) / 1e9;
}

/* Bytes a decoded token reads: every weight, except that an untied model
 * reads one row of token_embd rather than all of it (the roofline of
 * token generation is bandwidth / this). */
static uint64_t stream_bytes(const exsa_model *m)
{
    const exsa_gguf *g = exsa_model_gguf(m);
    uint64_t total = exsa_model_weight_bytes(m);
    const exsa_gguf_tensor *emb = exsa_gguf_find_tensor(g, "token_embd.weight");
    if (emb && exsa_gguf_find_tensor(g, "output.weight") && emb->size <= total)
        total -= emb->size;
    return total;
}

int exsa_cmd_bench(int argc, char **argv)
{
    const char *cmd = "bench", *path = exsa_cli_env_model();
    int64_t n_p = 512, n_g = 128, threads = 0, reps = 3, batch = 512;
    int64_t s_prompt = 256, s_gen = 128, s_req = 4, s_shared = 0;
    int json = 0, kv_type = EXSA_TYPE_F16;
    const char *levels = NULL, *spec_prompt = NULL;
    exsa_model_params mp;
    exsa_model_params_default(&mp);
    exsa_engine_params sp;
    exsa_engine_params_default(&sp);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int pl = exsa_cli_placement(cmd, argc, argv, &i, &mp);
        if (pl == 0)
            pl = exsa_cli_spec(cmd, argc, argv, &i, &sp);
        if (pl < 0)
            return 1;
        if (pl > 0)
            continue;
        struct { const char *flag; int64_t *dst; int64_t lo, hi; } ints[] = {
            {"-p", &n_p, 0, 1 << 20}, {"-n", &n_g, 0, 1 << 20}, {"-t", &threads, 1, 1024},
            {"-r", &reps, 1, 1000},   {"-b", &batch, 1, 65536},
            {"--prompt", &s_prompt, 1, 1 << 20}, {"--gen", &s_gen, 1, 1 << 20},
            {"--requests", &s_req, 1, 100000}, {"--shared-prefix", &s_shared, 0, 1 << 20},
        };
        int matched = 0;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
            if (!strcmp(a, ints[k].flag)) {
                if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                    exsa_cli_int(cmd, a, v, ints[k].lo, ints[k].hi, ints[k].dst))
                    return 1;
                matched = 1;
            }
        if (matched)
            continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(path = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--spec-prompt")) {
            if (!(spec_prompt = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--concurrency")) {
            if (!(levels = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--kv-type")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                exsa_cli_kv_type(cmd, v, &kv_type))
                return 1;
        } else {
            return exsa_cli_fail(cmd, "unknown option '%s' (see --help)", a);
        }
    }
    if (!path)
        return exsa_cli_fail(cmd, "missing -m MODEL (see --help)");
    if (spec_prompt) {
        char *text = NULL;
        size_t len;
        if (spec_prompt[0] == '@' && !(text = exsa_cli_read_file(cmd, spec_prompt + 1, &len)))
            return 1;
        int r = exsa_bench_spec(path, &mp, &sp, text ? text : spec_prompt, (int)n_g, (int)reps,
                                (int)threads, json);
        free(text);
        return r ? 1 : 0;
    }
    if (levels)
        return exsa_bench_serving(path, &mp, levels, (int)s_prompt, (int)s_gen, (int)s_shared,
                                  (int)s_req, (int)threads, 0, json) ? 1 : 0;
    if (n_p == 0 && n_g == 0)
        return exsa_cli_fail(cmd, "nothing to do: -p and -n are both 0");

    int rc = 1;
    exsa_err err = {0};
    bench_ctx b = {0};
    exsa_model *m = exsa_model_load_ex(path, &mp, &err);
    if (!m)
        return exsa_cli_fail(cmd, "%s", err.msg);
    const exsa_hparams *hp = exsa_model_hparams(m);
    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_threads = (int)threads;
    int need = (int)(n_p > n_g ? n_p : n_g);
    cp.n_ctx = need > 16 ? need : 16;
    b.batch = (int)(batch < n_p ? batch : (n_p > 0 ? n_p : 1));
    cp.max_batch = b.batch;
    cp.kv_type = kv_type;
    if (!(b.c = exsa_model_ctx_create(m, &cp, &err))) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    b.tok = malloc((size_t)need * sizeof *b.tok);
    b.pos = malloc((size_t)b.batch * sizeof *b.pos);
    b.seq = calloc((size_t)b.batch, sizeof *b.seq);
    b.want = calloc((size_t)b.batch, 1);
    b.logits = malloc((size_t)hp->n_vocab * sizeof(float));
    if (!b.tok || !b.pos || !b.seq || !b.want || !b.logits) {
        exsa_cli_fail(cmd, "out of memory");
        goto done;
    }
    uint64_t rs = 1234;
    for (int i = 0; i < need; i++)
        b.tok[i] = (int32_t)(exsa_splitmix64(&rs) % (uint64_t)hp->n_vocab);

    char model_type[96];
    double params = (double)exsa_model_n_params(m);
    const exsa_type_traits *wt = exsa_type_traits_get(hp->weight_type);
    snprintf(model_type, sizeof model_type, "%s %.0f%s %s", hp->arch_name,
             params >= 1e9 ? params / 1e9 : params / 1e6, params >= 1e9 ? "B" : "M",
             wt ? wt->name : "?");
    const char *backend = exsa_model_ctx_describe(b.c);
    int n_threads = exsa_model_ctx_params_get(b.c)->n_threads;
    if (!json)
        printf("| model | size | params | backend | test | t/s |\n"
               "| --- | ---: | ---: | --- | --- | ---: |\n");
    else
        printf("[\n");
    int first = 1;
    for (int test = 0; test < 2; test++) {
        int n = (int)(test == 0 ? n_p : n_g);
        if (n == 0)
            continue;
        int chunk = test == 0 ? b.batch : 1;
        double *ts = calloc((size_t)reps, sizeof *ts), sum = 0, sq = 0;
        if (!ts) {
            exsa_cli_fail(cmd, "out of memory");
            goto done;
        }
        /* warm-up: pages weights in and settles the thread pool */
        if (run_tokens(&b, test == 0 ? n : (n < 4 ? n : 4), chunk, &err) < 0) {
            free(ts);
            exsa_cli_fail(cmd, "%s", err.msg);
            goto done;
        }
        for (int r = 0; r < reps; r++) {
            double sec = run_tokens(&b, n, chunk, &err);
            if (sec < 0) {
                free(ts);
                exsa_cli_fail(cmd, "%s", err.msg);
                goto done;
            }
            ts[r] = n / sec;
            sum += ts[r];
        }
        double avg = sum / (double)reps;
        for (int r = 0; r < reps; r++)
            sq += (ts[r] - avg) * (ts[r] - avg);
        double sd = reps > 1 ? sqrt(sq / (double)(reps - 1)) : 0.0;
        free(ts);
        char name[32];
        snprintf(name, sizeof name, "%s%d", test == 0 ? "pp" : "tg", n);
        if (json) {
            printf("%s  {\"test\": \"%s\", \"n_prompt\": %d, \"n_gen\": %d, \"threads\": %d, "
                   "\"avg_ts\": %.3f, \"stddev_ts\": %.3f, \"model_type\": \"%s\", "
                   "\"model_size\": %llu, \"stream_bytes\": %llu, \"model_n_params\": %llu, "
                   "\"backend\": \"%s\"}",
                   first ? "" : ",\n", name, test == 0 ? n : 0, test == 0 ? 0 : n, n_threads,
                   avg, sd, model_type, (unsigned long long)exsa_model_weight_bytes(m),
                   (unsigned long long)stream_bytes(m), (unsigned long long)exsa_model_n_params(m),
                   backend);
        } else {
            printf("| %s | %.2f MiB | %.2f M | %s | %s | %.2f ± %.2f |\n", model_type,
                   (double)exsa_model_weight_bytes(m) / 1048576.0, params / 1e6, backend, name,
                   avg, sd);
        }
        fflush(stdout);
        first = 0;
    }
    if (json)
        printf("\n]\n");
    rc = 0;
done:
    free(b.tok);
    free(b.pos);
    free(b.seq);
    free(b.want);
    free(b.logits);
    exsa_model_ctx_free(b.c);
    exsa_model_free(m);
    return rc;
}
