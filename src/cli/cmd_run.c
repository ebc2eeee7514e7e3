#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/sampling.h"
#include "model/model.h"
#include "quant/quant.h"
#include "text/tokenizer.h"
#include "text/vocab.h"
#include "util/timer.h"

static const char *usage =
    "usage: exsa run -m MODEL (-p TEXT | --prompt-ids 1,2,3) [options]\n"
    "  -n N                 tokens to generate (default 64; 0 = only the prompt)\n"
    "  -t N                 threads (default: physical cores)\n"
    "  -c N                 context size (default: model's, capped at 4096)\n"
    "  -b N                 prompt rows per forward pass (default 512)\n"
    "  --kv-type T          f16 (default), f32 or q8_0\n"
    "  --json               print one JSON object (ids, text, timings) at the end\n"
    "  --dump-logits FILE   write the logits of every prompt position as float32\n"
    "                       little-endian [n_prompt][n_vocab]\n"
    "  --ignore-eos         keep generating past end-of-generation tokens\n"
    "MODEL defaults to $MODEL_PATH.\n";

static int parse_ids(const char *s, int32_t **out, int *n)
{
    int cap = 16, k = 0;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    if (!ids)
        return -1;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > INT32_MAX) {
            free(ids);
            return -1;
        }
        if (k == cap) {
            int32_t *t = realloc(ids, (size_t)(cap *= 2) * sizeof *ids);
            if (!t) {
                free(ids);
                return -1;
            }
            ids = t;
        }
        ids[k++] = (int32_t)v;
        s = end;
        while (*s == ',' || *s == ' ')
            s++;
    }
    *out = ids;
    *n = k;
    return 0;
}

static void json_string(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

typedef struct run_opts {
    const char *model, *prompt, *prompt_ids, *dump;
    int64_t n_gen, threads, ctx, batch;
    int kv_type, json, ignore_eos;
    exsa_cli_sampling smp;
} run_opts;

static int parse(int argc, char **argv, run_opts *o)
{
    const char *cmd = "run";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        struct { const char *flag; int64_t *dst; int64_t lo, hi; } ints[] = {
            {"-n", &o->n_gen, 0, 1 << 24}, {"-t", &o->threads, 1, 1024},
            {"-c", &o->ctx, 1, 1 << 24}, {"-b", &o->batch, 1, 65536},
        };
        int matched = 0;
        if (a[0] == '-' && a[1] == '-' && exsa_cli_sampling_is(a + 2)) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                exsa_cli_sampling_set(cmd, &o->smp, a + 2, v))
                return 1;
            continue;
        }
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
            fputs(exsa_cli_sampling_help(), stdout);
            return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(o->model = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            if (!(o->prompt = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--prompt-ids")) {
            if (!(o->prompt_ids = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--dump-logits")) {
            if (!(o->dump = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = 1;
        } else if (!strcmp(a, "--kv-type")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
            int t = exsa_type_from_name(v);
            if (t != EXSA_TYPE_F16 && t != EXSA_TYPE_F32 && t != EXSA_TYPE_Q8_0)
                return exsa_cli_fail(cmd, "--kv-type must be f16, f32 or q8_0, got '%s'", v);
            o->kv_type = t;
        } else {
            return exsa_cli_fail(cmd, "unknown option '%s' (see --help)", a);
        }
    }
    return 0;
}

int exsa_cmd_run(int argc, char **argv)
{
    const char *cmd = "run";
    static run_opts o;
    memset(&o, 0, sizeof o);
    exsa_cli_sampling_init(&o.smp);
    o.model = exsa_cli_env_model();
    o.n_gen = 64;
    o.batch = 512;
    o.kv_type = EXSA_TYPE_F16;
    int prc = parse(argc, argv, &o);
    if (prc)
        return prc == 2 ? 0 : 1;
    if (!o.model)
        return exsa_cli_fail(cmd, "missing -m MODEL (or MODEL_PATH); see --help");
    if (!o.prompt && !o.prompt_ids)
        return exsa_cli_fail(cmd, "give a prompt with -p TEXT or --prompt-ids 1,2,3");
    if (o.prompt && o.prompt_ids)
        return exsa_cli_fail(cmd, "-p and --prompt-ids are exclusive");

    int rc = 1;
    exsa_err err = {0};
    int32_t *ids = NULL;
    int n_prompt = 0;
    exsa_model *m = NULL;
    exsa_model_ctx *c = NULL;
    exsa_sampler *smp = NULL;
    exsa_vocab *voc = NULL;
    exsa_tokenizer *tok = NULL;
    exsa_detok *detok = NULL;
    float *logits = NULL;
    FILE *dump = NULL;
    char *text = NULL;
    int32_t *gen = NULL;

    if (o.prompt_ids && (parse_ids(o.prompt_ids, &ids, &n_prompt) || n_prompt == 0)) {
        exsa_cli_fail(cmd, "--prompt-ids expects comma-separated token ids, got '%s'",
                      o.prompt_ids);
        goto done;
    }
    if (!(m = exsa_model_load(o.model, &err))) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    /* The tokenizer is needed for -p; without one, output is printed as ids. */
    exsa_err terr = {0};
    if ((voc = exsa_vocab_load(exsa_model_gguf(m), &terr)) &&
        (tok = exsa_tokenizer_create(voc, &terr)))
        detok = exsa_detok_create(tok, 0, &terr);
    if (o.prompt) {
        if (!tok) {
            exsa_cli_fail(cmd, "-p needs the model's tokenizer: %s", terr.msg);
            goto done;
        }
        size_t len = strlen(o.prompt);
        int64_t n = exsa_tokenize(tok, o.prompt, len, EXSA_TOK_ADD_SPECIAL, NULL, 0, &err);
        if (n <= 0 || n > INT32_MAX || !(ids = malloc((size_t)n * sizeof *ids)) ||
            exsa_tokenize(tok, o.prompt, len, EXSA_TOK_ADD_SPECIAL, ids, n, &err) != n) {
            exsa_cli_fail(cmd, "%s", n == 0 ? "the prompt has no tokens" : err.msg);
            goto done;
        }
        n_prompt = (int)n;
    }
    const exsa_hparams *hp = exsa_model_hparams(m);
    for (int i = 0; i < n_prompt; i++)
        if (ids[i] >= hp->n_vocab) {
            exsa_cli_fail(cmd, "prompt token %d is out of the vocabulary (%d tokens)", ids[i],
                          hp->n_vocab);
            goto done;
        }
    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_threads = (int)o.threads;
    cp.n_ctx = (int)o.ctx;
    cp.max_batch = (int)o.batch;
    cp.kv_type = o.kv_type;
    if (!(c = exsa_model_ctx_create(m, &cp, &err))) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    const int n_ctx = exsa_model_ctx_params_get(c)->n_ctx;
    if (n_prompt > n_ctx) {
        exsa_cli_fail(cmd, "prompt of %d tokens exceeds the context (%d); raise -c", n_prompt,
                      n_ctx);
        goto done;
    }
    if (exsa_sampling_params_check(&o.smp.sp, hp->n_vocab, &err) ||
        !(smp = exsa_sampler_create(&o.smp.sp, hp->n_vocab, &err))) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    const size_t V = (size_t)hp->n_vocab;
    int rows = o.dump ? (int)o.batch : 1;
    logits = malloc((size_t)rows * V * sizeof(float));
    gen = malloc(((size_t)o.n_gen + 1) * sizeof *gen);
    text = malloc((size_t)o.n_gen * 64 + 65);
    if (!logits || !gen || !text) {
        exsa_cli_fail(cmd, "out of memory");
        goto done;
    }
    if (o.dump && !(dump = fopen(o.dump, "wb"))) {
        exsa_cli_fail(cmd, "cannot write '%s'", o.dump);
        goto done;
    }

    /* Prompt: chunks of up to -b rows, one forward pass each. */
    int32_t *pos = malloc((size_t)o.batch * sizeof *pos), *seq = calloc((size_t)o.batch, 4);
    uint8_t *want = calloc((size_t)o.batch, 1);
    if (!pos || !seq || !want) {
        free(pos), free(seq), free(want);
        exsa_cli_fail(cmd, "out of memory");
        goto done;
    }
    int64_t t0 = exsa_time_ns();
    int fail = 0;
    for (int s = 0; s < n_prompt && !fail; s += (int)o.batch) {
        int n = n_prompt - s < (int)o.batch ? n_prompt - s : (int)o.batch;
        for (int i = 0; i < n; i++) {
            pos[i] = s + i;
            want[i] = o.dump ? 1 : (s + i == n_prompt - 1);
        }
        exsa_batch b = {.n = n, .token = ids + s, .pos = pos, .seq = seq, .logits = want};
        if (exsa_model_forward(c, &b, logits, &err)) {
            exsa_cli_fail(cmd, "%s", err.msg);
            fail = 1;
        } else if (dump && fwrite(logits, sizeof(float) * V, (size_t)n, dump) != (size_t)n) {
            exsa_cli_fail(cmd, "write to '%s' failed", o.dump);
            fail = 1;
        }
    }
    int64_t t1 = exsa_time_ns();
    free(pos), free(seq), free(want);
    if (fail)
        goto done;
    if (dump) {
        if (fclose(dump) != 0) {
            dump = NULL;
            exsa_cli_fail(cmd, "write to '%s' failed", o.dump);
            goto done;
        }
        dump = NULL;
    }
    if (o.dump) /* the last prompt row's logits for sampling */
        memmove(logits, logits + (size_t)((n_prompt - 1) % o.batch) * V, V * sizeof(float));
    for (int i = 0; i < n_prompt; i++)
        exsa_sampler_accept(smp, ids[i]);

    /* Generation: one row per step. */
    int n_out = 0;
    size_t text_len = 0;
    while (n_out < o.n_gen && n_prompt + n_out < n_ctx) {
        int32_t t = exsa_sampler_sample(smp, logits);
        exsa_sampler_accept(smp, t);
        gen[n_out++] = t;
        if (detok) {
            int k = exsa_detok_push(detok, t, text + text_len, 64);
            if (k > 0) {
                if (!o.json) {
                    fwrite(text + text_len, 1, (size_t)k, stdout);
                    fflush(stdout);
                }
                text_len += (size_t)k;
            }
        }
        if ((!o.ignore_eos && voc && exsa_vocab_is_eog(voc, t)) || n_out == o.n_gen)
            break;
        int32_t p = n_prompt + n_out - 1, s0 = 0;
        uint8_t one = 1;
        exsa_batch b = {.n = 1, .token = &t, .pos = &p, .seq = &s0, .logits = &one};
        if (exsa_model_forward(c, &b, logits, &err)) {
            exsa_cli_fail(cmd, "%s", err.msg);
            goto done;
        }
    }
    if (detok) {
        int k = exsa_detok_flush(detok, text + text_len, 64);
        if (k > 0) {
            if (!o.json)
                fwrite(text + text_len, 1, (size_t)k, stdout);
            text_len += (size_t)k;
        }
    }
    int64_t t2 = exsa_time_ns();
    double pms = (double)(t1 - t0) / 1e6, gms = (double)(t2 - t1) / 1e6;
    if (o.json) {
        printf("{\"model\": ");
        json_string(stdout, o.model, strlen(o.model));
        printf(", \"n_prompt\": %d, \"n_gen\": %d, \"prompt_ms\": %.3f, \"gen_ms\": %.3f, "
               "\"prompt_tps\": %.3f, \"gen_tps\": %.3f, \"tokens\": [",
               n_prompt, n_out, pms, gms, pms > 0 ? n_prompt * 1e3 / pms : 0.0,
               gms > 0 ? n_out * 1e3 / gms : 0.0);
        for (int i = 0; i < n_out; i++)
            printf("%s%d", i ? ", " : "", gen[i]);
        printf("], \"text\": ");
        json_string(stdout, text, text_len);
        printf(", \"backend\": ");
        const char *d = exsa_model_ctx_describe(c);
        json_string(stdout, d, strlen(d));
        printf("}\n");
    } else {
        if (!detok)
            for (int i = 0; i < n_out; i++)
                printf("%s%d", i ? " " : "", gen[i]);
        printf("\n");
        fprintf(stderr,
                "prompt: %d tokens in %.1f ms (%.2f t/s); generated: %d tokens in %.1f ms "
                "(%.2f t/s); %s\n",
                n_prompt, pms, pms > 0 ? n_prompt * 1e3 / pms : 0.0, n_out, gms,
                gms > 0 ? n_out * 1e3 / gms : 0.0, exsa_model_ctx_describe(c));
    }
    rc = 0;
done:
    if (dump)
        fclose(dump);
    free(text);
    free(gen);
    free(logits);
    free(ids);
    exsa_sampler_free(smp);
    exsa_detok_free(detok);
    exsa_tokenizer_free(tok);
    exsa_vocab_free(voc);
    exsa_model_ctx_free(c);
    exsa_model_free(m);
    return rc;
}
