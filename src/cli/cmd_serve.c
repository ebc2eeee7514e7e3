/* exsa serve: flags > environment > .env > defaults -> the HTTP server. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "model/model.h"
#include "server/server.h"
#include "util/config.h"
#include "util/err.h"
#include "util/log.h"

static const exsa_config_opt opts[] = {
    {"--model", "-m", "MODEL_PATH", NULL, "PATH",
     "GGUF model to load at start; without it the server starts empty (load one with POST "
     "/v1/models/load)"},
    {"--alias", "-a", NULL, NULL, "NAME",
     "name the model answers to (\"model\" field, /v1/models id); default: the file name "
     "without its directory and .gguf"},
    {"--host", NULL, "HOST", "127.0.0.1", "ADDR",
     "address to listen on (0.0.0.0 or :: for every interface: set --api-key then)"},
    {"--port", NULL, "PORT", "8080", "N", "TCP port (0: any free port)"},
    {"--ctx-size", "-c", "CONTEXT_SIZE", "0", "N",
     "tokens per sequence (0: the model's training context, at most 4096)"},
    {"--parallel", "-np", "MAX_BATCH_SIZE", "16", "N", "sequences generated at once"},
    {"--batch-size", "-b", "BATCH_SIZE", "512", "N",
     "tokens per forward pass (prompt chunks + one row per running sequence)"},
    {"--threads", "-t", "CPU_THREADS", "0", "N", "CPU threads (0: physical cores)"},
    {"--device", NULL, "EXSA_DEVICE", "auto", "NAME",
     "where the model runs: auto (a CUDA GPU when one is usable, else the CPU), cpu or cuda"},
    {"--n-gpu-layers", "-ngl", "GPU_LAYERS", "-1", "N",
     "layers on the GPU, counted from the last; above the layer count the output head too "
     "(-1: everything; 0: CPU only)"},
    {"--main-gpu", "-mg", NULL, "0", "N", "CUDA device to use"},
    {"--kv-pool-tokens", NULL, "KV_CACHE_POOL_SIZE", "0", "N",
     "KV cache pool size in tokens, shared by all sequences (0: parallel x ctx-size, at most "
     "max(ctx-size, 8192); the prefix cache and preemption make the most of it)"},
    {"--kv-pool-mb", NULL, NULL, "0", "MB",
     "KV cache pool as a memory budget in MiB (overrides --kv-pool-tokens; 0: unused)"},
    {"--cache-type-k", "-ctk", NULL, "f16", "TYPE", "KV cache type: f16, q8_0 or f32"},
    {"--scheduling", NULL, "SCHEDULING_STRATEGY", "fifo", "NAME",
     "admission order: fifo, shortest, priority or dynamic"},
    {"--queue-size", NULL, NULL, "256", "N", "waiting requests at most per model (503 beyond)"},
    {"--prefix-cache", NULL, NULL, "1", NULL,
     "reuse the KV cache of common prompt prefixes (--no-prefix-cache: off)"},
    {"--chat-template", NULL, NULL, NULL, "NAME|FILE",
     "chat template: a builtin name (chatml, llama3, ...) or a Jinja file; default: the model's"},
    {"--api-key", NULL, NULL, NULL, "KEY",
     "require 'Authorization: Bearer KEY' (comma-separated list; may be repeated)"},
    {"--api-key-file", NULL, NULL, NULL, "PATH", "file with API keys, one per line ('#' comments)"},
    {"--cors-origin", NULL, NULL, NULL, "LIST",
     "origins allowed to call from a browser (comma list, * = any); default: none"},
    {"--rate-limit", NULL, NULL, "0", "N",
     "requests per second per client IP (0: no limit); beyond: 429 + Retry-After"},
    {"--rate-burst", NULL, NULL, "0", "N",
     "requests a client may make at once (0: 2 x rate-limit)"},
    {"--max-body-bytes", NULL, NULL, "1048576", "N", "largest request body (413 beyond)"},
    {"--max-prompt-tokens", NULL, NULL, "0", "N", "longest prompt in tokens (0: the context)"},
    {"--n-predict", "-n", "N_PREDICT", "2048", "N",
     "tokens generated for a request that sets no max_tokens / max_completion_tokens / "
     "n_predict (-1: until the context is full); a default, not a limit: requests may ask for "
     "more"},
    {"--max-tokens-cap", NULL, NULL, "0", "N",
     "largest max_tokens a request may ask for, a limit (400 beyond; 0: no cap); it also bounds "
     "--n-predict and a request's n_predict -1"},
    {"--timeout", NULL, NULL, "600", "SECONDS",
     "request timeout: the generation is cancelled, the reply is 504 (a stream ends with an "
     "error event); 0: none"},
    {"--shutdown-grace", NULL, NULL, "10", "SECONDS",
     "on SIGTERM/SIGINT, how long requests in flight may still run before they are cancelled"},
    {"--max-connections", NULL, NULL, "256", "N", "open connections at most"},
    {"--conn-timeout", NULL, NULL, "60", "SECONDS", "idle connection timeout"},
    {"--log-level", NULL, NULL, "info", "LEVEL", "debug, info, warn or error"},
    {"--log-format", NULL, NULL, "text", "FORMAT", "text or json (one object per line)"},
    {"--env-file", NULL, NULL, NULL, "PATH",
     "settings file of KEY=VALUE lines (default: ./.env when it exists)"},
    {"--speculative", NULL, "ENABLE_SPECULATIVE", "0", NULL,
     "speculative decoding for requests that do not say (\"speculative\": false turns it off "
     "for one): guesses from n-gram lookup over the prompt and output, or from --model-draft; "
     "exact (greedy: the same tokens; sampling: the same distribution)"},
    {"--model-draft", "-md", "DRAFT_MODEL_PATH", NULL, "PATH",
     "draft model for speculative decoding: a small GGUF with the model's vocabulary (turns "
     "--speculative on)"},
    {"--draft-max", NULL, "SPECULATION_DEPTH", "16", "N",
     "tokens guessed per sequence and step at most (adapts below it to what is accepted)"},
    {"--draft-min", NULL, NULL, "0", "N", "guess at least N tokens whenever a guess can be made, even where the measured costs say it does not pay; shorter guesses are dropped (0: the cost model decides)"},
    {"--draft-p-min", NULL, NULL, "0.75", "P",
     "draft model: stop guessing where its probability falls below P"},
    {"--spec-max-seqs", NULL, NULL, "4", "N",
     "no guesses while more than N sequences decode (a large batch gains nothing from them)"},
    /* The seed's settings that do not apply: accepted, warned about. */
    {"--cont-batching", "-cb", "ENABLE_CONTINUOUS_BATCHING", "1", NULL,
     "continuous batching (always on; --no-cont-batching only warns)"},
    {"--batch-timeout-ms", NULL, "BATCH_TIMEOUT_MS", "0", "MS",
     "wait for a fuller batch (not used: the engine steps as soon as work waits; a warning when "
     "set)"},
};
#define N_OPTS ((int)(sizeof opts / sizeof opts[0]))

static void usage(FILE *f)
{
    fprintf(f,
            "usage: exsa serve [-m MODEL] [--host H] [--port P] [-c CTX] [-np N] [-t THREADS]\n"
            "                  [--api-key KEY] [options]\n"
            "An OpenAI-compatible and native HTTP API over the serving engine. Settings come from\n"
            "flags, then the environment (EXSA_NAME, then the plain NAME), then the --env-file /\n"
            "./.env file, then the defaults.\n\n");
    exsa_config_print_help(opts, N_OPTS, f);
}

/* --api-key may be repeated: gathers every occurrence into one comma list
 * (*keys, malloc'd) and drops them from the argument list it returns (new
 * array in *out, the strings still argv's). */
static int gather_keys(int argc, char **argv, char ***out, int *n_out, char **keys)
{
    char **v = calloc((size_t)argc + 2, sizeof *v);
    if (!v)
        return -1;
    size_t klen = 0;
    char *k = NULL;
    int n = 0;
    for (int i = 0; i < argc; i++) {
        const char *val = NULL;
        if (!strcmp(argv[i], "--api-key") && i + 1 < argc)
            val = argv[++i];
        else if (!strncmp(argv[i], "--api-key=", 10))
            val = argv[i] + 10;
        if (!val) {
            v[n++] = argv[i];
            continue;
        }
        size_t l = strlen(val);
        char *nk = realloc(k, klen + l + 2);
        if (!nk) {
            free(k);
            free(v);
            return -1;
        }
        k = nk;
        if (klen)
            k[klen++] = ',';
        memcpy(k + klen, val, l + 1);
        klen += l;
    }
    *out = v;
    *n_out = n;
    *keys = k;
    return 0;
}

static const char *find_env_file(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--env-file") && i + 1 < argc)
            return argv[i + 1];
        if (!strncmp(argv[i], "--env-file=", 11))
            return argv[i] + 11;
    }
    return NULL;
}

static int get_int(const exsa_config *c, const char *flag, long long lo, long long hi, int *out,
                   exsa_err *err)
{
    long long v;
    if (exsa_config_get_int(c, flag, lo, hi, &v, err))
        return -1;
    *out = (int)v;
    return 0;
}

/* Settings of the seed that Exsa does not act on: say so. */
static void warn_unsupported(const exsa_config *c)
{
    long long v;
    int b;
    /* A GPU asked for where none is usable runs on the CPU: say so. */
    const char *why = NULL;
    if (!exsa_config_get_int(c, "--n-gpu-layers", -1, 100000, &v, NULL) && v > 0 &&
        !exsa_cuda_usable(&why))
        exsa_log(EXSA_LOG_WARN, NULL, "--n-gpu-layers %lld (%s) ignored: %s", v,
                 exsa_config_source(c, "--n-gpu-layers"), why);
    if (!exsa_config_get_bool(c, "--cont-batching", &b, NULL) && !b)
        exsa_log(EXSA_LOG_WARN, NULL, "continuous batching cannot be turned off (%s); it stays on",
                 exsa_config_source(c, "--cont-batching"));
    if (!exsa_config_get_int(c, "--batch-timeout-ms", 0, 1000000000, &v, NULL) && v != 0)
        exsa_log(EXSA_LOG_WARN, NULL,
                 "--batch-timeout-ms %lld (%s) ignored: the engine steps as "
                 "soon as work is waiting",
                 v, exsa_config_source(c, "--batch-timeout-ms"));
}

/* Every setting into cfg; strings point into c (valid until it is freed). */
static int read_config(const exsa_config *c, exsa_server_config *cfg, exsa_err *err)
{
    exsa_server_config_default(cfg);
    exsa_engine_params *e = &cfg->engine;
    long long mb;
    double d;
    int b;
    cfg->model_path = exsa_config_get(c, "--model");
    cfg->alias = exsa_config_get(c, "--alias");
    cfg->host = exsa_config_get(c, "--host");
    if (get_int(c, "--port", 0, 65535, &cfg->port, err) ||
        get_int(c, "--ctx-size", 0, 1 << 24, &e->n_ctx, err) ||
        get_int(c, "--parallel", 1, 4096, &e->max_batch_size, err) ||
        get_int(c, "--batch-size", 1, 1 << 20, &e->max_batch_tokens, err) ||
        get_int(c, "--threads", 0, 4096, &e->n_threads, err) ||
        get_int(c, "--n-gpu-layers", -1, 1 << 20, &e->n_gpu_layers, err) ||
        get_int(c, "--main-gpu", 0, 1024, &e->gpu, err) ||
        get_int(c, "--kv-pool-tokens", 0, 1 << 30, &e->kv_tokens, err) ||
        exsa_config_get_int(c, "--kv-pool-mb", 0, 1 << 24, &mb, err) ||
        get_int(c, "--queue-size", 1, 1 << 20, &e->queue_size, err) ||
        exsa_config_get_bool(c, "--prefix-cache", &b, err) ||
        get_int(c, "--draft-max", 0, 1024, &e->spec_n_max, err) ||
        get_int(c, "--draft-min", 0, 1024, &e->spec_n_min, err) ||
        get_int(c, "--spec-max-seqs", 0, 4096, &e->spec_max_seqs, err) ||
        exsa_config_get_double(c, "--draft-p-min", 0, 1, &d, err))
        return -1;
    e->spec_p_min = (float)d;
    int spec;
    if (exsa_config_get_bool(c, "--speculative", &spec, err))
        return -1;
    e->draft_model_path = exsa_config_get(c, "--model-draft");
    e->spec = spec || e->draft_model_path;
    if (e->spec_n_min > e->spec_n_max)
        return exsa_err_set(err, EXSA_EINVAL, "--draft-min %d is above --draft-max %d",
                            e->spec_n_min, e->spec_n_max);
    e->kv_bytes = (int64_t)mb << 20;
    exsa_server_default_kv_pool(e);
    e->prefix_cache = b;
    const char *s = exsa_config_get(c, "--device");
    if ((e->device = exsa_device_from_name(s)) < 0)
        return exsa_err_set(err, EXSA_EINVAL, "--device (%s): '%s' is not auto, cpu or cuda",
                            exsa_config_source(c, "--device"), s ? s : "");
    s = exsa_config_get(c, "--cache-type-k");
    if ((e->kv_type = exsa_server_kv_type(s)) < 0)
        return exsa_err_set(err, EXSA_EINVAL, "--cache-type-k (%s): '%s' is not f16, q8_0 or f32",
                            exsa_config_source(c, "--cache-type-k"), s ? s : "");
    s = exsa_config_get(c, "--scheduling");
    if ((e->strategy = exsa_server_strategy(s)) < 0)
        return exsa_err_set(err, EXSA_EINVAL,
                            "--scheduling (%s): '%s' is not fifo, shortest, priority or dynamic",
                            exsa_config_source(c, "--scheduling"), s ? s : "");
    e->chat_template = exsa_config_get(c, "--chat-template");
    cfg->api_keys = exsa_config_get(c, "--api-key");
    cfg->api_key_file = exsa_config_get(c, "--api-key-file");
    cfg->cors_origins = exsa_config_get(c, "--cors-origin");
    if (exsa_config_get_double(c, "--rate-limit", 0, 1e6, &cfg->rate_limit, err) ||
        exsa_config_get_double(c, "--rate-burst", 0, 1e6, &cfg->rate_burst, err) ||
        exsa_config_get_int(c, "--max-body-bytes", 1, (long long)1 << 32, &mb, err))
        return -1;
    cfg->max_body_bytes = (size_t)mb;
    if (get_int(c, "--max-prompt-tokens", 0, 1 << 24, &cfg->max_prompt_tokens, err) ||
        get_int(c, "--max-tokens-cap", 0, 1 << 24, &cfg->max_tokens_cap, err) ||
        get_int(c, "--n-predict", -1, 1 << 24, &cfg->n_predict, err) ||
        exsa_config_get_double(c, "--timeout", 0, 1e7, &cfg->request_timeout_s, err) ||
        exsa_config_get_double(c, "--shutdown-grace", 0, 1e5, &d, err) ||
        get_int(c, "--max-connections", 1, 100000, &cfg->max_connections, err) ||
        get_int(c, "--conn-timeout", 1, 1000000, &cfg->conn_timeout_s, err))
        return -1;
    cfg->shutdown_grace_s = d;
    if (cfg->n_predict == 0)
        return exsa_err_set(err, EXSA_EINVAL,
                            "--n-predict (%s): 0 would generate nothing; give N >= 1, or -1 for "
                            "until the context is full",
                            exsa_config_source(c, "--n-predict"));
    return 0;
}

int exsa_cmd_serve(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
    char **args = NULL, *keys = NULL;
    int n_args = 0, rc = 1;
    if (gather_keys(argc - 1, argv + 1, &args, &n_args, &keys))
        return exsa_cli_fail("serve", "out of memory");
    if (keys) {
        /* Put the joined list back as one flag (the config takes each once). */
        args[n_args++] = "--api-key";
        args[n_args++] = keys;
    }
    exsa_err err = {0};
    exsa_server *s = NULL;
    exsa_config *c =
        exsa_config_load(opts, N_OPTS, n_args, args, find_env_file(n_args, args), &err);
    if (!c) {
        exsa_cli_fail("serve", "%s (see exsa serve --help)", err.msg);
        goto out;
    }
    if (exsa_log_configure(exsa_config_get(c, "--log-level"), exsa_config_get(c, "--log-format"),
                           &err)) {
        exsa_cli_fail("serve", "%s", err.msg);
        goto out;
    }
    exsa_server_config cfg;
    if (read_config(c, &cfg, &err)) {
        exsa_cli_fail("serve", "%s", err.msg);
        goto out;
    }
    warn_unsupported(c);
    /* A model file that cannot be served fails here, before the port is
     * taken and "listening" announced: the full load comes after. */
    if (cfg.model_path && *cfg.model_path && exsa_model_probe(cfg.model_path, &err)) {
        exsa_cli_fail("serve", "cannot load the model: %s", err.msg);
        goto out;
    }
    if (!(s = exsa_server_create(&cfg, &err))) {
        exsa_cli_fail("serve", "%s", err.msg);
        goto out;
    }
    if (exsa_server_load_initial(s, &err)) {
        exsa_log(EXSA_LOG_ERROR, NULL, "cannot load the model %s: %s; exiting", cfg.model_path,
                 err.msg);
        goto out;
    }
    rc = exsa_server_run(s);
out:
    exsa_server_free(s);
    exsa_config_free(c);
    if (keys)
        memset(keys, 0, strlen(keys));
    free(keys);
    free(args);
    return rc;
}
