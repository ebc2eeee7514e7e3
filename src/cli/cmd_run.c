/* exsa run: one prompt, one generation, through the serving engine (the
 * same path as `exsa serve`). --dump-logits and -n 0 run the prompt alone
 * through the model API, for the logits of every prompt row. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli/cli.h"
#include "engine/json_schema.h"
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
    EXSA_CLI_PLACEMENT_HELP
    EXSA_CLI_SPEC_HELP
    "  -c N                 context size (default: model's, capped at 4096)\n"
    "  -b N                 prompt rows per forward pass (default 512)\n"
    "  --kv-type T          f16 (default), f32 or q8_0\n"
    "  --json               print one JSON object (ids, text, timings) at the end\n"
    "  --dump-logits FILE   write the logits of every prompt position as float32\n"
    "                       little-endian [n_prompt][n_vocab]\n"
    "  --ignore-eos         keep generating past end-of-generation tokens\n"
    "  --stop TEXT          stop before this text (repeatable, at most 16)\n"
    "  --grammar-file F     constrain the output to a GBNF grammar (llama.cpp's syntax)\n"
    "  --json-schema-file F constrain the output to JSON valid under a JSON Schema\n"
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

typedef struct run_opts {
    const char *model, *prompt, *prompt_ids, *dump;
    int64_t n_gen, threads, ctx, batch;
    int kv_type, json, ignore_eos;
    const char *stop[16];
    int n_stop;
    char *grammar; /* --grammar-file / --json-schema-file, as GBNF (owned) */
    exsa_cli_sampling smp;
    exsa_model_params mp;
    exsa_engine_params spec; /* only its speculative decoding fields */
} run_opts;

static int parse(int argc, char **argv, run_opts *o)
{
    const char *cmd = "run";
    exsa_model_params_default(&o->mp);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        const int pl = exsa_cli_placement(cmd, argc, argv, &i, &o->mp);
        if (pl < 0)
            return 1;
        if (pl > 0)
            continue;
        const int sp = exsa_cli_spec(cmd, argc, argv, &i, &o->spec);
        if (sp < 0)
            return 1;
        if (sp > 0)
            continue;
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
        } else if (!strcmp(a, "--grammar-file") || !strcmp(a, "--json-schema-file")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
            if (o->grammar)
                return exsa_cli_fail(cmd, "give one --grammar-file or --json-schema-file");
            size_t n = 0;
            char *text = exsa_cli_read_file(cmd, v, &n);
            if (!text)
                return 1;
            if (!strcmp(a, "--grammar-file")) {
                o->grammar = text;
            } else {
                json_error_t je;
                json_t *sc = json_loadb(text, n, 0, &je);
                free(text);
                exsa_err err = {0};
                if (!sc)
                    return exsa_cli_fail(cmd, "%s: line %d: %s", v, je.line, je.text);
                o->grammar = exsa_json_schema_to_gbnf(sc, &err);
                json_decref(sc);
                if (!o->grammar)
                    return exsa_cli_fail(cmd, "%s: %s", v, err.msg);
            }
        } else if (!strcmp(a, "--stop")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
            if (o->n_stop == 16)
                return exsa_cli_fail(cmd, "at most 16 --stop strings");
            o->stop[o->n_stop++] = v;
        } else if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = 1;
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

static void print_json(const run_opts *o, int n_prompt, const int32_t *gen, int n_out,
                       const char *text, size_t text_len, double pms, double gms,
                       double gen_tps, const char *finish, const char *backend)
{
    printf("{\"model\": ");
    exsa_cli_json_string(stdout, o->model, strlen(o->model));
    printf(", \"n_prompt\": %d, \"n_gen\": %d, \"prompt_ms\": %.3f, \"gen_ms\": %.3f, "
           "\"prompt_tps\": %.3f, \"gen_tps\": %.3f, \"tokens\": [",
           n_prompt, n_out, pms, gms, pms > 0 ? n_prompt * 1e3 / pms : 0.0, gen_tps);
    for (int i = 0; i < n_out; i++)
        printf("%s%d", i ? ", " : "", gen[i]);
    printf("], \"text\": ");
    exsa_cli_json_string(stdout, text, text_len);
    printf(", \"finish_reason\": \"%s\", \"backend\": ", finish);
    exsa_cli_json_string(stdout, backend, strlen(backend));
    printf("}\n");
}

/* The prompt alone through the model API: chunks of -b rows, logits of
 * every row to --dump-logits. With -n 0 it is the whole command. */
static int prompt_pass(const run_opts *o, const int32_t *given, int n_given)
{
    const char *cmd = "run";
    int rc = 1;
    exsa_err err = {0};
    int32_t *ids = NULL;
    int n_prompt = n_given;
    exsa_model *m = NULL;
    exsa_model_ctx *c = NULL;
    exsa_vocab *voc = NULL;
    exsa_tokenizer *tok = NULL;
    float *logits = NULL;
    FILE *dump = NULL;
    int32_t *pos = NULL, *seq = NULL;
    uint8_t *want = NULL;

    if (!(m = exsa_model_load_ex(o->model, &o->mp, &err))) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    if (o->prompt) {
        if (!(voc = exsa_vocab_load(exsa_model_gguf(m), &err)) ||
            !(tok = exsa_tokenizer_create(voc, &err))) {
            exsa_cli_fail(cmd, "-p needs the model's tokenizer: %s", err.msg);
            goto done;
        }
        size_t len = strlen(o->prompt);
        int64_t n = exsa_tokenize(tok, o->prompt, len, EXSA_TOK_ADD_SPECIAL, NULL, 0, &err);
        if (n <= 0 || n > INT32_MAX || !(ids = malloc((size_t)n * sizeof *ids)) ||
            exsa_tokenize(tok, o->prompt, len, EXSA_TOK_ADD_SPECIAL, ids, n, &err) != n) {
            exsa_cli_fail(cmd, "%s", n == 0 ? "the prompt has no tokens" : err.msg);
            goto done;
        }
        n_prompt = (int)n;
        given = ids;
    }
    const exsa_hparams *hp = exsa_model_hparams(m);
    for (int i = 0; i < n_prompt; i++)
        if (given[i] >= hp->n_vocab) {
            exsa_cli_fail(cmd, "prompt token %d is out of the vocabulary (%d tokens)", given[i],
                          hp->n_vocab);
            goto done;
        }
    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_threads = (int)o->threads;
    cp.n_ctx = (int)o->ctx;
    cp.max_batch = (int)o->batch;
    cp.kv_type = o->kv_type;
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
    const size_t V = (size_t)hp->n_vocab;
    const int B = (int)o->batch;
    logits = malloc((size_t)(o->dump ? B : 1) * V * sizeof(float));
    pos = malloc((size_t)B * sizeof *pos);
    seq = calloc((size_t)B, sizeof *seq);
    want = calloc((size_t)B, 1);
    if (!logits || !pos || !seq || !want) {
        exsa_cli_fail(cmd, "out of memory");
        goto done;
    }
    if (o->dump && !(dump = fopen(o->dump, "wb"))) {
        exsa_cli_fail(cmd, "cannot write '%s'", o->dump);
        goto done;
    }
    int64_t t0 = exsa_time_ns();
    for (int s = 0; s < n_prompt; s += B) {
        int n = n_prompt - s < B ? n_prompt - s : B;
        for (int i = 0; i < n; i++) {
            pos[i] = s + i;
            want[i] = o->dump ? 1 : (s + i == n_prompt - 1);
        }
        exsa_batch b = {.n = n, .token = (int32_t *)given + s, .pos = pos, .seq = seq,
                        .logits = want};
        if (exsa_model_forward(c, &b, logits, &err)) {
            exsa_cli_fail(cmd, "%s", err.msg);
            goto done;
        }
        if (dump && fwrite(logits, sizeof(float) * V, (size_t)n, dump) != (size_t)n) {
            exsa_cli_fail(cmd, "write to '%s' failed", o->dump);
            goto done;
        }
    }
    double pms = (double)(exsa_time_ns() - t0) / 1e6;
    if (dump) {
        int bad = fclose(dump) != 0;
        dump = NULL;
        if (bad) {
            exsa_cli_fail(cmd, "write to '%s' failed", o->dump);
            goto done;
        }
    }
    if (o->n_gen == 0) {
        if (o->json)
            print_json(o, n_prompt, NULL, 0, "", 0, pms, 0, 0, "length",
                       exsa_model_ctx_describe(c));
        else
            fprintf(stderr, "\nprompt: %d tokens in %.1f ms (%.2f t/s); %s\n", n_prompt, pms,
                    pms > 0 ? n_prompt * 1e3 / pms : 0.0, exsa_model_ctx_describe(c));
    }
    rc = 0;
done:
    if (dump)
        fclose(dump);
    free(pos);
    free(seq);
    free(want);
    free(logits);
    free(ids);
    exsa_tokenizer_free(tok);
    exsa_vocab_free(voc);
    exsa_model_ctx_free(c);
    exsa_model_free(m);
    return rc;
}

static const char *finish_name(int f)
{
    switch (f) {
    case EXSA_FINISH_STOP: return "stop";
    case EXSA_FINISH_LENGTH: return "length";
    case EXSA_FINISH_CONTEXT: return "context";
    case EXSA_FINISH_CANCEL: return "cancel";
    default: return "error";
    }
}

/* Generation: one request to an engine of one sequence. */
static int generate(const run_opts *o, const int32_t *given, int n_given)
{
    const char *cmd = "run";
    int rc = 1;
    exsa_err err = {0};
    int32_t *ids = NULL;
    int n_prompt = n_given;
    exsa_cli_gen g = {0};
    exsa_engine_params ep;
    exsa_engine_params_default(&ep);
    ep.model_path = o->model;
    ep.n_threads = (int)o->threads;
    ep.device = o->mp.device;
    ep.n_gpu_layers = o->mp.n_gpu_layers;
    ep.gpu = o->mp.gpu;
    ep.n_ctx = (int)o->ctx;
    ep.max_batch_tokens = (int)o->batch;
    ep.max_batch_size = 1;
    ep.kv_type = o->kv_type;
    ep.queue_size = 1;
    ep.prefix_cache = 0;
    ep.spec = o->spec.spec;
    ep.draft_model_path = o->spec.draft_model_path;
    ep.spec_n_max = o->spec.spec_n_max;
    ep.spec_n_min = o->spec.spec_n_min;
    ep.spec_p_min = o->spec.spec_p_min;
    ep.spec_max_seqs = o->spec.spec_max_seqs;
    exsa_engine *e = exsa_engine_create(&ep, &err);
    if (!e)
        return exsa_cli_fail(cmd, "%s", err.msg);
    static exsa_model_info info;
    exsa_engine_model_info(e, &info);
    /* Without a tokenizer the engine still runs ids; output is ids then. */
    int has_text = exsa_engine_tokenize(e, "", 0, 0, 0, NULL, 0, NULL) >= 0;
    if (o->prompt) {
        size_t len = strlen(o->prompt);
        int64_t n = exsa_engine_tokenize(e, o->prompt, len, 1, 0, NULL, 0, &err);
        if (n < 0 && !has_text) {
            exsa_cli_fail(cmd, "-p needs the model's tokenizer: %s", err.msg);
            goto done;
        }
        if (n <= 0 || n > INT32_MAX || !(ids = malloc((size_t)n * sizeof *ids)) ||
            exsa_engine_tokenize(e, o->prompt, len, 1, 0, ids, n, &err) != n) {
            exsa_cli_fail(cmd, "%s", n == 0 ? "the prompt has no tokens" : err.msg);
            goto done;
        }
        n_prompt = (int)n;
        given = ids;
    }
    for (int i = 0; i < n_prompt; i++)
        if (given[i] >= info.n_vocab) {
            exsa_cli_fail(cmd, "prompt token %d is out of the vocabulary (%d tokens)", given[i],
                          info.n_vocab);
            goto done;
        }
    if (n_prompt >= info.n_ctx) {
        exsa_cli_fail(cmd, "prompt of %d tokens %s the context (%d); raise -c", n_prompt,
                      n_prompt > info.n_ctx ? "exceeds" : "fills", info.n_ctx);
        goto done;
    }
    exsa_request_params rp;
    exsa_request_params_default(&rp);
    rp.prompt_ids = given;
    rp.n_prompt_ids = n_prompt;
    rp.sampling = o->smp.sp;
    rp.max_tokens = o->n_gen < info.n_ctx - n_prompt ? (int)o->n_gen : info.n_ctx - n_prompt;
    rp.ignore_eos = o->ignore_eos;
    rp.stop = o->stop;
    rp.n_stop = o->n_stop;
    rp.grammar = o->grammar;
    if (exsa_cli_generate(e, &rp, o->json || !has_text ? NULL : stdout, NULL, &g, &err)) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    if (g.finish == EXSA_FINISH_ERROR) {
        exsa_cli_fail(cmd, "%s", g.error);
        goto done;
    }
    /* Prompt time: submit to the first token (one prefill and a sample);
     * generation: the rest, n - 1 decode steps. */
    double pms = g.timings.ttft_ms, gms = g.timings.total_ms - g.timings.ttft_ms;
    double gen_tps = g.n_ids > 1 && gms > 0 ? (g.n_ids - 1) * 1e3 / gms : 0.0;
    if (o->json) {
        print_json(o, n_prompt, g.ids, g.n_ids, g.text, g.len, pms, gms, gen_tps,
                   finish_name(g.finish), info.backend);
    } else {
        if (!has_text)
            for (int i = 0; i < g.n_ids; i++)
                printf("%s%d", i ? " " : "", g.ids[i]);
        printf("\n");
        fprintf(stderr,
                "prompt: %d tokens in %.1f ms (%.2f t/s); generated: %d tokens in %.1f ms "
                "(%.2f t/s); %s\n",
                n_prompt, pms, pms > 0 ? n_prompt * 1e3 / pms : 0.0, g.n_ids, gms, gen_tps,
                info.backend);
        if (g.usage.draft_tokens > 0)
            fprintf(stderr, "speculative: %d of %d guessed tokens accepted (%.1f%%)\n",
                    g.usage.accepted_tokens, g.usage.draft_tokens,
                    100.0 * g.usage.accepted_tokens / g.usage.draft_tokens);
    }
    rc = 0;
done:
    exsa_cli_gen_free(&g);
    free(ids);
    exsa_engine_free(e);
    return rc;
}

int exsa_cmd_run(int argc, char **argv)
{
    const char *cmd = "run";
    static run_opts o;
    memset(&o, 0, sizeof o);
    exsa_cli_sampling_init(&o.smp);
    exsa_engine_params_default(&o.spec);
    o.model = exsa_cli_env_model();
    o.n_gen = 64;
    o.batch = 512;
    o.kv_type = EXSA_TYPE_F16;
    int prc = parse(argc, argv, &o);
    int32_t *ids = NULL;
    int n = 0, rc = 0;
    if (prc)
        rc = prc == 2 ? 0 : 1;
    else if (!o.model)
        rc = exsa_cli_fail(cmd, "missing -m MODEL (or MODEL_PATH); see --help");
    else if (!o.prompt && !o.prompt_ids)
        rc = exsa_cli_fail(cmd, "give a prompt with -p TEXT or --prompt-ids 1,2,3");
    else if (o.prompt && o.prompt_ids)
        rc = exsa_cli_fail(cmd, "-p and --prompt-ids are exclusive");
    else if (o.prompt_ids && (parse_ids(o.prompt_ids, &ids, &n) || n == 0))
        rc = exsa_cli_fail(cmd, "--prompt-ids expects comma-separated token ids, got '%s'",
                           o.prompt_ids);
    if (prc || rc) {
        free(ids);
        free(o.grammar);
        return rc;
    }
    if (o.dump || o.n_gen == 0)
        rc = prompt_pass(&o, ids, n);
    if (rc == 0 && o.n_gen > 0)
        rc = generate(&o, ids, n);
    free(ids);
    free(o.grammar);
    return rc;
}
