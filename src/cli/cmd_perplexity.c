/* exsa perplexity: perplexity of a model over a text file, by
 * llama-perplexity's method so the figures compare:
 *
 * - the whole text is tokenized once, with BOS when the model adds one;
 * - it is cut into n_chunk = n_tokens / n_ctx chunks of n_ctx tokens (the
 *   tail is dropped); each chunk is evaluated from an empty cache, with its
 *   first token replaced by BOS (when the model adds one);
 * - only the second half of a chunk is scored: the logits at positions
 *   first = n_ctx/2 .. n_ctx-2 predict tokens first+1 .. n_ctx-1, so every
 *   scored token has at least n_ctx/2 tokens of context (n_ctx - first - 1
 *   tokens per chunk);
 * - the negative log-likelihood -log softmax(logits)[next] is summed in
 *   double; after each chunk the running PPL = exp(sum / count) is printed;
 *   the final error is ppl * sqrt((E[nll^2] - E[nll]^2) / (count - 1)).
 *
 * -b below -c splits a chunk into several forward passes (the cache keeps
 * the earlier part); -b a multiple of -c runs b / c chunks as separate
 * sequences in one pass. Neither changes the figures, only the speed.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "model/model.h"
#include "quant/quant.h"
#include "text/tokenizer.h"
#include "text/vocab.h"
#include "util/timer.h"

static const char *usage =
    "usage: exsa perplexity -m MODEL -f TEXT [options]\n"
    "  -c N          tokens per chunk (default 512); the second half of each is scored\n"
    "  -b N          rows per forward pass (default 2048): below -c splits a chunk,\n"
    "                a multiple of -c runs b/c chunks per pass\n"
    "  --chunks N    evaluate at most N chunks (default: all)\n"
    "  -t N          threads (default: physical cores)\n"
    EXSA_CLI_PLACEMENT_HELP
    "  --kv-type T   f16 (default), f32 or q8_0\n"
    "  --json        print one JSON object at the end instead of the text report\n"
    "Method and figures as llama-perplexity's. MODEL defaults to $MODEL_PATH.\n";

typedef struct ppl_opts {
    const char *model, *file;
    int64_t ctx, batch, chunks, threads;
    int kv_type, json;
    exsa_model_params mp;
} ppl_opts;

static int parse(int argc, char **argv, ppl_opts *o)
{
    const char *cmd = "perplexity";
    exsa_model_params_default(&o->mp);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        const int pl = exsa_cli_placement(cmd, argc, argv, &i, &o->mp);
        if (pl < 0)
            return 1;
        if (pl > 0)
            continue;
        struct { const char *flag; int64_t *dst; int64_t lo, hi; } ints[] = {
            {"-c", &o->ctx, 4, 1 << 20},         {"--ctx-size", &o->ctx, 4, 1 << 20},
            {"-b", &o->batch, 1, 1 << 16},       {"--batch-size", &o->batch, 1, 1 << 16},
            {"--chunks", &o->chunks, 1, 1 << 30}, {"-t", &o->threads, 1, 1024},
            {"--threads", &o->threads, 1, 1024},
        };
        int matched = 0;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0] && !matched; k++)
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
            return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(o->model = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
            if (!(o->file = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--kv-type")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                exsa_cli_kv_type(cmd, v, &o->kv_type))
                return 1;
        } else {
            return exsa_cli_fail(cmd, "unknown option '%s' (see --help)", a);
        }
    }
    return 0;
}


/* -log softmax(x)[tok]: float exps of max-subtracted logits summed in
 * double, as llama-perplexity computes it. */
static double row_nll(const float *x, int n, int32_t tok)
{
    float mx = x[0];
    for (int i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += expf(x[i] - mx);
    return (double)mx + log(sum) - (double)x[tok];
}

int exsa_cmd_perplexity(int argc, char **argv)
{
    const char *cmd = "perplexity";
    ppl_opts o = {.model = exsa_cli_env_model(), .ctx = 512, .batch = 2048,
                  .kv_type = EXSA_TYPE_F16};
    int prc = parse(argc, argv, &o);
    if (prc)
        return prc == 2 ? 0 : 1;
    if (!o.model)
        return exsa_cli_fail(cmd, "missing -m MODEL (or MODEL_PATH); see --help");
    if (!o.file)
        return exsa_cli_fail(cmd, "missing -f TEXT (the file to score); see --help");
    if (o.batch >= o.ctx && o.batch % o.ctx != 0)
        return exsa_cli_fail(cmd, "-b (%lld) must be below -c (%lld) or a multiple of it",
                             (long long)o.batch, (long long)o.ctx);

    int rc = 1;
    exsa_err err = {0};
    size_t text_len = 0;
    char *text = NULL;
    int32_t *ids = NULL, *b_tok = NULL, *b_pos = NULL, *b_seq = NULL;
    uint8_t *b_want = NULL;
    float *logits = NULL;
    double *running = NULL;
    exsa_model *m = NULL;
    exsa_model_ctx *c = NULL;
    exsa_vocab *voc = NULL;
    exsa_tokenizer *tok = NULL;

    if (!(text = exsa_cli_read_file("perplexity", o.file, &text_len)))
        goto done;
    if (!(m = exsa_model_load_ex(o.model, &o.mp, &err)) ||
        !(voc = exsa_vocab_load(exsa_model_gguf(m), &err)) ||
        !(tok = exsa_tokenizer_create(voc, &err))) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    int64_t t_start = exsa_time_ns();
    int64_t n_tok = exsa_tokenize(tok, text, text_len, EXSA_TOK_ADD_SPECIAL, NULL, 0, &err);
    if (n_tok < 0) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    const int n_ctx = (int)o.ctx;
    if (n_tok < 2 * (int64_t)n_ctx) {
        exsa_cli_fail(cmd, "needs at least %d tokens (2 x -c %d); '%s' has %lld", 2 * n_ctx,
                      n_ctx, o.file, (long long)n_tok);
        goto done;
    }
    if (n_tok > INT32_MAX || !(ids = malloc((size_t)n_tok * sizeof *ids)) ||
        exsa_tokenize(tok, text, text_len, EXSA_TOK_ADD_SPECIAL, ids, n_tok, &err) != n_tok) {
        exsa_cli_fail(cmd, "%s", err.msg[0] ? err.msg : "the text is too large");
        goto done;
    }
    int64_t t_tok = exsa_time_ns();
    free(text);
    text = NULL;

    const exsa_hparams *hp = exsa_model_hparams(m);
    const int V = hp->n_vocab;
    const int n_chunk_max = (int)(n_tok / n_ctx);
    const int n_chunk = o.chunks > 0 && o.chunks < n_chunk_max ? (int)o.chunks : n_chunk_max;
    const int n_batch = (int)o.batch;
    const int num_batches = (n_ctx + n_batch - 1) / n_batch; /* passes per chunk */
    int n_seq = n_batch / n_ctx > 1 ? n_batch / n_ctx : 1;   /* chunks per pass */
    if (n_seq > n_chunk)
        n_seq = n_chunk; /* the same passes, less memory */
    const int first = n_ctx / 2;
    const int per_chunk = n_ctx - first - 1; /* tokens scored per chunk */
    const int32_t bos = exsa_vocab_add_bos(voc) ? exsa_vocab_bos(voc) : -1;

    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_threads = (int)o.threads;
    cp.n_ctx = n_ctx;
    cp.n_seq = n_seq;
    cp.max_batch = num_batches > 1 ? n_batch : n_ctx * n_seq;
    cp.kv_type = o.kv_type;
    if (!(c = exsa_model_ctx_create(m, &cp, &err))) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    /* Logits of the scored half of every chunk of one pass. */
    size_t out_rows = (size_t)n_seq * (size_t)(n_ctx - first), nl;
    if (__builtin_mul_overflow(out_rows, (size_t)V, &nl) ||
        !(logits = malloc(nl * sizeof *logits)) ||
        !(b_tok = malloc((size_t)cp.max_batch * sizeof *b_tok)) ||
        !(b_pos = malloc((size_t)cp.max_batch * sizeof *b_pos)) ||
        !(b_seq = malloc((size_t)cp.max_batch * sizeof *b_seq)) ||
        !(b_want = malloc((size_t)cp.max_batch)) ||
        !(running = malloc((size_t)n_chunk * sizeof *running))) {
        exsa_cli_fail(cmd, "out of memory (%zu logits rows of %d)", out_rows, V);
        goto done;
    }
    if (!o.json)
        fprintf(stderr,
                "perplexity: %lld tokens, %d chunks of %d (%d scored each), batch %d, "
                "%d chunk%s per pass; %s\n",
                (long long)n_tok, n_chunk, n_ctx, per_chunk, n_batch, n_seq,
                n_seq > 1 ? "s" : "", exsa_model_ctx_describe(c));

    exsa_kv_cache *kv = exsa_model_ctx_kv(c);
    double nll = 0, nll2 = 0, eval_s = 0;
    int64_t count = 0;
    for (int i = 0; i < n_chunk; i += n_seq) {
        const int start = i * n_ctx;
        const int n_here = n_chunk - i < n_seq ? n_chunk - i : n_seq;
        for (int s = 0; s < n_seq; s++)
            exsa_kv_seq_free(kv, s);
        size_t got = 0; /* logits rows written so far in this pass */
        for (int j = 0; j < num_batches; j++) {
            const int p0 = j * n_batch;
            const int len = n_ctx - p0 < n_batch ? n_ctx - p0 : n_batch;
            const size_t before = got;
            int n = 0;
            for (int s = 0; s < n_here; s++)
                for (int k = 0; k < len; k++, n++) {
                    int p = p0 + k;
                    b_tok[n] = p == 0 && bos >= 0 ? bos : ids[start + s * n_ctx + p];
                    b_pos[n] = p;
                    b_seq[n] = s;
                    b_want[n] = p >= first;
                    got += b_want[n];
                }
            exsa_batch b = {.n = n, .token = b_tok, .pos = b_pos, .seq = b_seq, .logits = b_want};
            int64_t t0 = exsa_time_ns();
            if (exsa_model_forward(c, &b, logits + before * (size_t)V, &err)) {
                exsa_cli_fail(cmd, "%s", err.msg);
                goto done;
            }
            eval_s += (double)(exsa_time_ns() - t0) / 1e9;
        }
        /* Rows are in batch order: each chunk's n_ctx - first rows in turn. */
        for (int s = 0; s < n_here; s++) {
            const float *L = logits + (size_t)s * (size_t)(n_ctx - first) * (size_t)V;
            const int32_t *next = ids + start + s * n_ctx + first + 1;
            for (int k = 0; k < per_chunk; k++) {
                double v = row_nll(L + (size_t)k * (size_t)V, V, next[k]);
                nll += v;
                nll2 += v * v;
            }
            count += per_chunk;
            running[i + s] = exp(nll / (double)count);
            if (!o.json) {
                printf("[%d]%.4f,", i + s + 1, running[i + s]);
                fflush(stdout);
            }
        }
    }
    double total_s = (double)(exsa_time_ns() - t_start) / 1e9;
    double mean = nll / (double)count, var = nll2 / (double)count - mean * mean;
    double ppl = exp(mean);
    double ppl_err = var > 0 && count > 1 ? ppl * sqrt(var / (double)(count - 1)) : 0;
    int64_t evaluated = (int64_t)n_chunk * n_ctx;
    double tps = eval_s > 0 ? (double)evaluated / eval_s : 0;
    if (o.json) {
        printf("{\"model\": ");
        exsa_cli_json_string(stdout, o.model, strlen(o.model));
        printf(", \"file\": ");
        exsa_cli_json_string(stdout, o.file, strlen(o.file));
        printf(", \"n_tokens\": %lld, \"n_ctx\": %d, \"n_batch\": %d, \"n_seq\": %d, "
               "\"n_chunks\": %d, \"tokens_evaluated\": %lld, \"tokens_scored\": %lld, "
               "\"ppl\": %.6f, \"ppl_error\": %.6f, \"nll\": %.8f, \"tokenize_s\": %.3f, "
               "\"eval_s\": %.3f, \"eval_tps\": %.2f, \"total_s\": %.3f, \"chunks\": [",
               (long long)n_tok, n_ctx, n_batch, n_seq, n_chunk, (long long)evaluated,
               (long long)count, ppl, ppl_err, mean, (double)(t_tok - t_start) / 1e9, eval_s,
               tps, total_s);
        for (int i = 0; i < n_chunk; i++)
            printf("%s%.6f", i ? ", " : "", running[i]);
        printf("], \"backend\": ");
        const char *d = exsa_model_ctx_describe(c);
        exsa_cli_json_string(stdout, d, strlen(d));
        printf("}\n");
    } else {
        printf("\nFinal estimate: PPL = %.4f +/- %.5f\n", ppl, ppl_err);
        printf("tokens: %lld evaluated in %.2f s (%.2f t/s), %lld scored; total %.2f s\n",
               (long long)evaluated, eval_s, tps, (long long)count, total_s);
    }
    rc = 0;
done:
    free(running);
    free(b_want);
    free(b_seq);
    free(b_pos);
    free(b_tok);
    free(logits);
    free(ids);
    free(text);
    exsa_tokenizer_free(tok);
    exsa_vocab_free(voc);
    exsa_model_ctx_free(c);
    exsa_model_free(m);
    return rc;
}
