/* exsa chat: an interactive conversation in the terminal. Each turn renders
 * the whole conversation with the model's chat template, reuses the KV cache
 * for the common prefix with what was already computed, and streams the
 * answer as complete UTF-8 characters. */
#include <editline/readline.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "model/model.h"
#include "quant/quant.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"
#include "text/vocab.h"

static const char *usage =
    "usage: exsa chat -m MODEL [--template FILE|NAME] [--system TEXT] [-n N] [-c CTX]\n"
    "                 [-t THREADS] [--kv-type f16|f32|q8_0] [sampling flags]\n"
    "Commands: /clear (forget the conversation), /system TEXT, /set NAME VALUE\n"
    "(a sampling setting, e.g. /set temp 0.7), /help, /quit. Ctrl-C stops the\n"
    "current answer; Ctrl-D leaves. -n caps tokens per answer (default: until the\n"
    "model stops or the context is full).\n";

static volatile sig_atomic_t g_stop;

static void on_sigint(int sig)
{
    (void)sig;
    g_stop = 1;
}

typedef struct chat {
    exsa_model *m;
    exsa_model_ctx *c;
    exsa_vocab *v;
    exsa_tokenizer *tok;
    exsa_detok *detok;
    exsa_chat_template *tpl;
    exsa_sampler *smp;
    exsa_cli_sampling sampling;
    json_t *messages;
    char *system;
    char bos[128], eos[128];
    int32_t *cached;  /* ids whose K/V are in sequence 0 */
    int n_cached, n_ctx, max_batch;
    int64_t n_predict;
    float *logits;
    int32_t *pos, *seq;
    uint8_t *want;
} chat;

static void reset_messages(chat *ch)
{
    json_array_clear(ch->messages);
    if (ch->system)
        json_array_append_new(ch->messages,
                              json_pack("{s:s, s:s}", "role", "system", "content", ch->system));
}

static void token_text(const exsa_vocab *v, int32_t id, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (id >= 0) {
        size_t len;
        const char *s = exsa_vocab_token_str(v, id, &len);
        snprintf(buf, cap, "%.*s", (int)(len < cap ? len : cap - 1), s);
    }
}

/* Runs ids[from..n) into the cache; logits of the last row. */
static int prefill(chat *ch, const int32_t *ids, int from, int n, exsa_err *err)
{
    for (int s = from; s < n; s += ch->max_batch) {
        int k = n - s < ch->max_batch ? n - s : ch->max_batch;
        for (int i = 0; i < k; i++) {
            ch->pos[i] = s + i;
            ch->want[i] = s + i == n - 1;
        }
        exsa_batch b = {.n = k, .token = (int32_t *)ids + s, .pos = ch->pos, .seq = ch->seq,
                        .logits = ch->want};
        if (exsa_model_forward(ch->c, &b, ch->logits, err))
            return err->code;
    }
    return 0;
}

/* One assistant answer to the conversation so far; appends it. */
static int answer(chat *ch)
{
    exsa_err err = {0};
    exsa_chat_opts o = {.add_generation_prompt = 1, .bos_token = ch->bos, .eos_token = ch->eos};
    char *prompt = exsa_chat_template_render(ch->tpl, ch->messages, &o, &err);
    if (!prompt) {
        fprintf(stderr, "exsa chat: %s\n", err.msg);
        return 1;
    }
    size_t len = strlen(prompt);
    /* BOS unless the template wrote it already. */
    int flags = EXSA_TOK_PARSE_SPECIAL;
    if (!ch->bos[0] || strncmp(prompt, ch->bos, strlen(ch->bos)) != 0)
        flags |= EXSA_TOK_ADD_SPECIAL;
    int64_t n = exsa_tokenize(ch->tok, prompt, len, flags, NULL, 0, &err);
    int32_t *ids = n > 0 ? malloc((size_t)n * sizeof *ids) : NULL;
    if (n <= 0 || !ids || exsa_tokenize(ch->tok, prompt, len, flags, ids, n, &err) != n) {
        fprintf(stderr, "exsa chat: %s\n", n < 0 ? err.msg : "cannot tokenize the prompt");
        free(ids);
        free(prompt);
        return 1;
    }
    free(prompt);
    if (n >= ch->n_ctx) {
        fprintf(stderr, "exsa chat: the conversation (%lld tokens) fills the context (%d); "
                        "/clear it or raise -c\n", (long long)n, ch->n_ctx);
        free(ids);
        return 1;
    }
    /* Keep the common prefix in the cache; recompute at least the last id. */
    int common = 0;
    while (common < ch->n_cached && common < n - 1 && ch->cached[common] == ids[common])
        common++;
    exsa_kv_seq_truncate(exsa_model_ctx_kv(ch->c), 0, common);
    ch->n_cached = common;
    if (prefill(ch, ids, common, (int)n, &err)) {
        fprintf(stderr, "exsa chat: %s\n", err.msg);
        free(ids);
        return 1;
    }
    memcpy(ch->cached, ids, (size_t)n * sizeof *ids);
    ch->n_cached = (int)n;
    free(ids);

    exsa_sampler_reset(ch->smp);
    exsa_detok_reset(ch->detok);
    size_t cap = 4096, tlen = 0;
    char *text = malloc(cap);
    struct sigaction sa = {.sa_handler = on_sigint}, old;
    sigemptyset(&sa.sa_mask);
    g_stop = 0;
    sigaction(SIGINT, &sa, &old);
    int64_t produced = 0;
    while (text && !g_stop && ch->n_cached < ch->n_ctx &&
           (ch->n_predict < 0 || produced < ch->n_predict)) {
        int32_t t = exsa_sampler_sample(ch->smp, ch->logits);
        exsa_sampler_accept(ch->smp, t);
        produced++;
        if (exsa_vocab_is_eog(ch->v, t))
            break;
        if (tlen + 256 > cap) {
            char *p = realloc(text, cap *= 2);
            if (!p)
                break;
            text = p;
        }
        int k = exsa_detok_push(ch->detok, t, text + tlen, 256);
        if (k > 0) {
            fwrite(text + tlen, 1, (size_t)k, stdout);
            fflush(stdout);
            tlen += (size_t)k;
        }
        int32_t p = ch->n_cached, s0 = 0;
        uint8_t one = 1;
        exsa_batch b = {.n = 1, .token = &t, .pos = &p, .seq = &s0, .logits = &one};
        if (exsa_model_forward(ch->c, &b, ch->logits, &err)) {
            fprintf(stderr, "\nexsa chat: %s\n", err.msg);
            break;
        }
        ch->cached[ch->n_cached++] = t;
    }
    sigaction(SIGINT, &old, NULL);
    if (text) {
        int k = exsa_detok_flush(ch->detok, text + tlen, 256);
        if (k > 0) {
            fwrite(text + tlen, 1, (size_t)k, stdout);
            tlen += (size_t)k;
        }
        text[tlen] = '\0';
        json_array_append_new(ch->messages, json_pack("{s:s, s:s%}", "role", "assistant",
                                                      "content", text, tlen));
    }
    if (g_stop)
        fputs(" [stopped]", stdout);
    fputs("\n", stdout);
    free(text);
    return 0;
}

static int command(chat *ch, char *line)
{
    if (!strcmp(line, "/quit") || !strcmp(line, "/exit"))
        return -1;
    if (!strcmp(line, "/help")) {
        fputs(usage, stdout);
    } else if (!strcmp(line, "/clear")) {
        reset_messages(ch);
        exsa_kv_seq_free(exsa_model_ctx_kv(ch->c), 0);
        ch->n_cached = 0;
        puts("(conversation cleared)");
    } else if (!strncmp(line, "/system", 7) && (line[7] == ' ' || !line[7])) {
        const char *s = line[7] ? line + 8 : "";
        free(ch->system);
        ch->system = *s ? strdup(s) : NULL;
        reset_messages(ch);
        ch->n_cached = 0;
        exsa_kv_seq_free(exsa_model_ctx_kv(ch->c), 0);
        puts(*s ? "(system prompt set; conversation restarted)" : "(system prompt removed)");
    } else if (!strncmp(line, "/set ", 5)) {
        char *name = strtok(line + 5, " "), *value = strtok(NULL, " ");
        exsa_cli_sampling trial = ch->sampling;
        trial.sp.logit_bias = trial.bias;
        exsa_err err = {0};
        exsa_sampler *s;
        const int32_t n_vocab = exsa_model_hparams(ch->m)->n_vocab;
        if (!name || !value) {
            fputs("usage: /set NAME VALUE (e.g. /set temp 0.7)\n", stderr);
        } else if (exsa_cli_sampling_set("chat", &trial, name, value) == 0) {
            if (exsa_sampling_params_check(&trial.sp, n_vocab, &err) ||
                !(s = exsa_sampler_create(&trial.sp, n_vocab, &err))) {
                fprintf(stderr, "exsa chat: %s\n", err.msg);
            } else {
                exsa_sampler_free(ch->smp);
                ch->smp = s;
                ch->sampling = trial;
                ch->sampling.sp.logit_bias = ch->sampling.bias;
                printf("(%s = %s)\n", name, value);
            }
        }
    } else {
        fprintf(stderr, "unknown command '%s' (/help)\n", line);
    }
    return 0;
}

static void chat_free(chat *ch)
{
    free(ch->cached);
    free(ch->logits);
    free(ch->pos);
    free(ch->seq);
    free(ch->want);
    free(ch->system);
    json_decref(ch->messages);
    exsa_sampler_free(ch->smp);
    exsa_chat_template_destroy(ch->tpl);
    exsa_detok_free(ch->detok);
    exsa_tokenizer_free(ch->tok);
    exsa_vocab_free(ch->v);
    exsa_model_ctx_free(ch->c);
    exsa_model_free(ch->m);
}

int exsa_cmd_chat(int argc, char **argv)
{
    const char *cmd = "chat", *path = exsa_cli_env_model(), *tpl_name = NULL;
    static chat ch;
    memset(&ch, 0, sizeof ch);
    exsa_cli_sampling_init(&ch.sampling);
    ch.n_predict = -1;
    int64_t threads = 0, ctx = 0;
    int kv_type = EXSA_TYPE_F16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            fputs(exsa_cli_sampling_help(), stdout);
            return 0;
        } else if (a[0] == '-' && a[1] == '-' && exsa_cli_sampling_is(a + 2)) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                exsa_cli_sampling_set(cmd, &ch.sampling, a + 2, v))
                return 1;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(path = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--template") || !strcmp(a, "--chat-template")) {
            if (!(tpl_name = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--system")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
            free(ch.system);
            ch.system = strdup(v);
        } else if (!strcmp(a, "-n")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                exsa_cli_int(cmd, a, v, -1, 1 << 24, &ch.n_predict))
                return 1;
        } else if (!strcmp(a, "-t")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                exsa_cli_int(cmd, a, v, 1, 1024, &threads))
                return 1;
        } else if (!strcmp(a, "-c")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                exsa_cli_int(cmd, a, v, 16, 1 << 24, &ctx))
                return 1;
        } else if (!strcmp(a, "--kv-type")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
            kv_type = exsa_type_from_name(v);
            if (kv_type != EXSA_TYPE_F16 && kv_type != EXSA_TYPE_F32 && kv_type != EXSA_TYPE_Q8_0)
                return exsa_cli_fail(cmd, "--kv-type must be f16, f32 or q8_0, got '%s'", v);
        } else {
            return exsa_cli_fail(cmd, "unknown option '%s' (see --help)", a);
        }
    }
    if (!path)
        return exsa_cli_fail(cmd, "missing -m MODEL (or MODEL_PATH); see --help");
    exsa_err err = {0};
    int rc = 1;
    const char *tpl_src = NULL;
    if (!(ch.m = exsa_model_load(path, &err)) ||
        !(ch.v = exsa_vocab_load(exsa_model_gguf(ch.m), &err)) ||
        !(ch.tok = exsa_tokenizer_create(ch.v, &err)) ||
        !(ch.detok = exsa_detok_create(ch.tok, 0, &err)) ||
        !(ch.tpl = exsa_chat_template_for_model(exsa_model_gguf(ch.m), tpl_name, &tpl_src,
                                                &err))) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    const exsa_hparams *hp = exsa_model_hparams(ch.m);
    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_threads = (int)threads;
    cp.n_ctx = (int)ctx;
    cp.kv_type = kv_type;
    if (!(ch.c = exsa_model_ctx_create(ch.m, &cp, &err)) ||
        exsa_sampling_params_check(&ch.sampling.sp, hp->n_vocab, &err) ||
        !(ch.smp = exsa_sampler_create(&ch.sampling.sp, hp->n_vocab, &err))) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    ch.n_ctx = exsa_model_ctx_params_get(ch.c)->n_ctx;
    ch.max_batch = exsa_model_ctx_params_get(ch.c)->max_batch;
    ch.cached = malloc((size_t)ch.n_ctx * sizeof *ch.cached);
    ch.logits = malloc((size_t)hp->n_vocab * sizeof *ch.logits);
    ch.pos = malloc((size_t)ch.max_batch * sizeof *ch.pos);
    ch.seq = calloc((size_t)ch.max_batch, sizeof *ch.seq);
    ch.want = calloc((size_t)ch.max_batch, 1);
    ch.messages = json_array();
    if (!ch.cached || !ch.logits || !ch.pos || !ch.seq || !ch.want || !ch.messages) {
        exsa_cli_fail(cmd, "out of memory");
        goto done;
    }
    token_text(ch.v, exsa_vocab_bos(ch.v), ch.bos, sizeof ch.bos);
    token_text(ch.v, exsa_vocab_eos(ch.v), ch.eos, sizeof ch.eos);
    reset_messages(&ch);
    int tty = isatty(0);
    if (tty)
        fprintf(stderr, "exsa chat: %s (%s, template: %s, context %d). /help for commands.\n",
                path, exsa_model_ctx_describe(ch.c), tpl_src, ch.n_ctx);
    for (;;) {
        char *line = NULL;
        if (tty) {
            line = readline("> ");
        } else {
            size_t cap = 0;
            ssize_t k = getline(&line, &cap, stdin);
            if (k < 0) {
                free(line);
                line = NULL;
            } else if (k > 0 && line[k - 1] == '\n') {
                line[k - 1] = '\0';
            }
        }
        if (!line)
            break;
        if (tty && *line)
            add_history(line);
        int r = 0;
        if (line[0] == '/') {
            r = command(&ch, line);
        } else if (*line) {
            json_array_append_new(ch.messages,
                                  json_pack("{s:s, s:s}", "role", "user", "content", line));
            if (answer(&ch) != 0) /* the turn failed: forget the question */
                json_array_remove(ch.messages, json_array_size(ch.messages) - 1);
        }
        free(line);
        if (r < 0)
            break;
    }
    rc = 0;
done:
    chat_free(&ch);
    return rc;
}
