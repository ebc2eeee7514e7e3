/* exsa chat: an interactive conversation in the terminal, as a client of
 * the serving engine. Each turn renders the whole conversation with the
 * chat template and submits it as one request; the engine's prefix cache
 * keeps the K/V of the blocks earlier turns computed, so a turn only
 * computes what is new. Answers stream as complete UTF-8 characters.
 *
 * SIGINT (Ctrl-C) sets a flag and never ends the process: during an answer
 * it cancels the request; at the prompt it drops the line being typed.
 * Only Ctrl-D (end of input) and /quit leave. */
#include <editline/readline.h>
#include <errno.h>
#include <jansson.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "engine/sampling.h"
#include "quant/quant.h"

static const char *usage =
    "usage: exsa chat -m MODEL [--template FILE|NAME] [--system TEXT] [-n N] [-c CTX]\n"
    "                 [-t THREADS] [--kv-type f16|f32|q8_0] [sampling flags]\n"
    EXSA_CLI_PLACEMENT_HELP
    EXSA_CLI_SPEC_HELP
    "  -n N   tokens per answer at most (default -1: until the model stops or the\n"
    "         context is full)\n"
    "In the chat, /help lists the commands. Ctrl-C stops the current answer (at the\n"
    "prompt it clears the line); Ctrl-D or /quit leaves.\n";

static const char *repl_help =
    "  /help               this list\n"
    "  /clear              forget the conversation\n"
    "  /system [TEXT]      set the system prompt (none: remove it); restarts the conversation\n"
    "  /set n N            tokens per answer at most (-1: no cap)\n"
    "  /set NAME VALUE     a sampling setting: temp, top-k, top-p, min-p, typical, tfs,\n"
    "                      repeat-penalty, repeat-last-n, presence-penalty,\n"
    "                      frequency-penalty, mirostat, mirostat-ent, mirostat-lr, seed,\n"
    "                      logit-bias (e.g. /set temp 0.7)\n"
    "  /quit, /exit        leave (or Ctrl-D)\n"
    "Ctrl-C stops an answer; at the prompt it clears the line.\n";

static volatile sig_atomic_t g_int;

static void on_sigint(int sig)
{
    (void)sig;
    g_int = 1;
}

typedef struct chat {
    exsa_engine *e;
    exsa_model_info info;
    exsa_cli_sampling sampling;
    json_t *messages;
    char *system;
    char bos[128];
    int64_t n_predict;
    exsa_cli_gen g;
    int dim; /* stderr is a terminal: stats in dim text */
} chat;

static void reset_messages(chat *ch)
{
    json_array_clear(ch->messages);
    if (ch->system)
        json_array_append_new(ch->messages,
                              json_pack("{s:s, s:s}", "role", "system", "content", ch->system));
}

/* The conversation's prompt as token ids (malloc'd), or NULL with a message. */
static int32_t *render(chat *ch, int *n_out)
{
    exsa_err err = {0};
    char *msgs = json_dumps(ch->messages, JSON_COMPACT);
    char *prompt = msgs ? exsa_engine_chat_render(ch->e, msgs, NULL, 1, &err) : NULL;
    free(msgs);
    if (!prompt) {
        fprintf(stderr, "exsa chat: %s\n", err.msg[0] ? err.msg : "out of memory");
        return NULL;
    }
    size_t len = strlen(prompt);
    /* BOS unless the template wrote it already. */
    int add = !ch->bos[0] || strncmp(prompt, ch->bos, strlen(ch->bos)) != 0;
    int64_t n = exsa_engine_tokenize(ch->e, prompt, len, add, 1, NULL, 0, &err);
    int32_t *ids = n > 0 && n <= INT32_MAX ? malloc((size_t)n * sizeof *ids) : NULL;
    if (!ids || exsa_engine_tokenize(ch->e, prompt, len, add, 1, ids, n, &err) != n) {
        fprintf(stderr, "exsa chat: %s\n", n < 0 ? err.msg : "cannot tokenize the prompt");
        free(ids);
        ids = NULL;
    }
    free(prompt);
    *n_out = (int)n;
    return ids;
}

/* One assistant answer to the conversation so far; appends it. */
static int answer(chat *ch)
{
    int n = 0;
    int32_t *ids = render(ch, &n);
    if (!ids)
        return 1;
    const int n_ctx = ch->info.n_ctx;
    if (n >= n_ctx) {
        fprintf(stderr, "exsa chat: the conversation (%d tokens) fills the context (%d); "
                        "/clear it or raise -c\n", n, n_ctx);
        free(ids);
        return 1;
    }
    int room = n_ctx - n;
    int capped = ch->n_predict > 0 && ch->n_predict <= room;
    exsa_request_params rp;
    exsa_request_params_default(&rp);
    rp.prompt_ids = ids;
    rp.n_prompt_ids = n;
    rp.sampling = ch->sampling.sp;
    rp.max_tokens = capped ? (int)ch->n_predict : room;
    exsa_err err = {0};
    g_int = 0;
    int rc = exsa_cli_generate(ch->e, &rp, stdout, &g_int, &ch->g, &err);
    free(ids);
    if (rc) {
        fprintf(stderr, "exsa chat: %s\n", err.msg);
        return 1;
    }
    const exsa_cli_gen *g = &ch->g;
    json_array_append_new(ch->messages, json_pack("{s:s, s:s%}", "role", "assistant", "content",
                                                  g->text, g->len));
    if (g->finish == EXSA_FINISH_CANCEL)
        fputs(" [stopped]", stdout);
    else if (g->finish == EXSA_FINISH_LENGTH && capped)
        fputs(" [length]", stdout);
    else if (g->finish == EXSA_FINISH_LENGTH || g->finish == EXSA_FINISH_CONTEXT)
        fputs(" [context full]", stdout);
    fputs("\n", stdout);
    fflush(stdout);
    if (g->finish == EXSA_FINISH_ERROR)
        fprintf(stderr, "exsa chat: %s\n", g->error);
    double gen_ms = g->timings.total_ms - g->timings.ttft_ms;
    fprintf(stderr, "%s[%d tokens, %.1f t/s; prompt %d tokens (%d cached) in %.2f s]%s\n",
            ch->dim ? "\033[2m" : "", g->n_ids,
            g->n_ids > 1 && gen_ms > 0 ? (g->n_ids - 1) * 1e3 / gen_ms : 0.0,
            g->usage.prompt_tokens, g->usage.cached_tokens, g->timings.ttft_ms / 1e3,
            ch->dim ? "\033[0m" : "");
    g_int = 0;
    return 0;
}

static void set_cmd(chat *ch, char *args)
{
    char *name = strtok(args, " "), *value = strtok(NULL, " ");
    if (!name || !value) {
        fputs("usage: /set NAME VALUE (e.g. /set temp 0.7, /set n 128); /help lists them\n",
              stderr);
        return;
    }
    if (!strcmp(name, "n")) {
        int64_t v;
        if (exsa_cli_int("chat", "n", value, -1, 1 << 24, &v) == 0) {
            ch->n_predict = v > 0 ? v : -1;
            printf("(n = %lld)\n", (long long)ch->n_predict);
        }
        return;
    }
    exsa_cli_sampling trial = ch->sampling;
    trial.sp.logit_bias = trial.bias;
    exsa_err err = {0};
    if (exsa_cli_sampling_set("chat", &trial, name, value) != 0)
        return;
    if (exsa_sampling_params_check(&trial.sp, ch->info.n_vocab, &err) != 0) {
        fprintf(stderr, "exsa chat: %s\n", err.msg);
        return;
    }
    ch->sampling = trial;
    ch->sampling.sp.logit_bias = ch->sampling.bias;
    printf("(%s = %s)\n", name, value);
}

/* A REPL command; -1 leaves. */
static int command(chat *ch, char *line)
{
    if (!strcmp(line, "/quit") || !strcmp(line, "/exit"))
        return -1;
    if (!strcmp(line, "/help")) {
        fputs(repl_help, stdout);
    } else if (!strcmp(line, "/clear")) {
        reset_messages(ch);
        puts("(conversation cleared)");
    } else if (!strncmp(line, "/system", 7) && (line[7] == ' ' || !line[7])) {
        const char *s = line[7] ? line + 8 : "";
        free(ch->system);
        ch->system = *s ? strdup(s) : NULL;
        reset_messages(ch);
        puts(*s ? "(system prompt set; conversation restarted)" : "(system prompt removed)");
    } else if (!strncmp(line, "/set", 4) && (line[4] == ' ' || !line[4])) {
        set_cmd(ch, line + 4);
    } else {
        fprintf(stderr, "unknown command '%s' (/help lists them)\n", line);
    }
    fflush(stdout);
    return 0;
}

/* libedit reads keys through this: a SIGINT at the prompt (read fails with
 * EINTR) ends the line, which the loop then drops. Returns a code point
 * (UTF-8 decoded, as libedit's own reader does) or EOF. */
static int read_key(FILE *f)
{
    unsigned char c[4];
    for (;;) {
        ssize_t k = read(fileno(f), c, 1);
        if (k == 1)
            break;
        if (k == 0 || errno != EINTR)
            return EOF;
        if (g_int) {
            fputs("^C", stdout);
            fflush(stdout);
            return '\n';
        }
    }
    int more = c[0] >= 0xF0 ? 3 : c[0] >= 0xE0 ? 2 : c[0] >= 0xC0 ? 1 : 0;
    int cp = more == 3 ? c[0] & 0x07 : more == 2 ? c[0] & 0x0F : more ? c[0] & 0x1F : c[0];
    for (int i = 1; i <= more; i++) {
        ssize_t k;
        while ((k = read(fileno(f), c + i, 1)) < 0 && errno == EINTR)
            ;
        if (k != 1 || (c[i] & 0xC0) != 0x80)
            return 0xFFFD;
        cp = cp << 6 | (c[i] & 0x3F);
    }
    return cp;
}

/* The next input line (malloc'd), NULL at end of input; *dropped = 1 when
 * Ctrl-C ended it (the caller ignores it). */
static char *next_line(int tty, int *dropped)
{
    char *line = NULL;
    g_int = 0;
    if (tty) {
        line = readline("> ");
    } else {
        size_t cap = 0;
        ssize_t k;
        while ((k = getline(&line, &cap, stdin)) < 0 && errno == EINTR) {
            clearerr(stdin);
            if (g_int)
                break;
        }
        if (k < 0) {
            free(line);
            line = NULL;
        } else if (k > 0 && line[k - 1] == '\n') {
            line[k - 1] = '\0';
        }
    }
    *dropped = g_int != 0;
    g_int = 0;
    return line;
}

static void chat_free(chat *ch)
{
    exsa_cli_gen_free(&ch->g);
    free(ch->system);
    json_decref(ch->messages);
    exsa_engine_free(ch->e);
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
    exsa_model_params mp;
    exsa_model_params_default(&mp);
    exsa_engine_params ep;
    exsa_engine_params_default(&ep); /* the speculative flags land here */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int pl = exsa_cli_placement(cmd, argc, argv, &i, &mp);
        if (pl == 0)
            pl = exsa_cli_spec(cmd, argc, argv, &i, &ep);
        if (pl < 0)
            return 1;
        if (pl > 0)
            continue;
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
            if (ch.n_predict == 0)
                ch.n_predict = -1;
        } else if (!strcmp(a, "-t")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                exsa_cli_int(cmd, a, v, 1, 1024, &threads))
                return 1;
        } else if (!strcmp(a, "-c")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                exsa_cli_int(cmd, a, v, 16, 1 << 24, &ctx))
                return 1;
        } else if (!strcmp(a, "--kv-type")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                exsa_cli_kv_type(cmd, v, &kv_type))
                return 1;
        } else {
            free(ch.system);
            return exsa_cli_fail(cmd, "unknown option '%s' (see --help)", a);
        }
    }
    if (!path) {
        free(ch.system);
        return exsa_cli_fail(cmd, "missing -m MODEL (or MODEL_PATH); see --help");
    }
    exsa_err err = {0};
    int rc = 1;
    ep.model_path = path;
    ep.n_threads = (int)threads;
    ep.device = mp.device;
    ep.n_gpu_layers = mp.n_gpu_layers;
    ep.gpu = mp.gpu;
    ep.n_ctx = (int)ctx;
    ep.kv_type = kv_type;
    ep.max_batch_size = 1;
    ep.queue_size = 1;
    ep.chat_template = tpl_name;
    if (!(ch.e = exsa_engine_create(&ep, &err)) ||
        exsa_engine_tokenize(ch.e, "", 0, 0, 0, NULL, 0, &err) < 0) {
        exsa_cli_fail(cmd, "%s", err.msg);
        goto done;
    }
    exsa_engine_model_info(ch.e, &ch.info);
    if (exsa_sampling_params_check(&ch.sampling.sp, ch.info.n_vocab, &err) ||
        !(ch.messages = json_array())) {
        exsa_cli_fail(cmd, "%s", err.msg[0] ? err.msg : "out of memory");
        goto done;
    }
    if (ch.info.bos >= 0) {
        int64_t k = exsa_engine_token_bytes(ch.e, ch.info.bos, 1, ch.bos, sizeof ch.bos - 1, NULL);
        ch.bos[k > 0 && k < (int64_t)sizeof ch.bos ? k : 0] = '\0';
    }
    reset_messages(&ch);

    /* Ctrl-C never ends the process here; libedit must not catch it. */
    struct sigaction sa = {.sa_handler = on_sigint}, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    int tty = isatty(0);
    ch.dim = isatty(2);
    if (tty) {
        /* libedit converts what is typed through the locale's encoding:
         * without this, anything beyond ASCII is lost. */
        setlocale(LC_CTYPE, "");
        rl_catch_signals = 0;
        rl_getc_function = read_key;
        fprintf(stderr, "exsa chat: %s (%s, template: %s, context %d). /help for commands.\n",
                path, ch.info.backend, tpl_name ? tpl_name : "the model's", ch.info.n_ctx);
    }
    for (;;) {
        int dropped;
        char *line = next_line(tty, &dropped);
        if (dropped) { /* Ctrl-C: the line is dropped, the conversation goes on */
            free(line);
            continue;
        }
        if (!line) {
            if (tty)
                fputc('\n', stdout); /* Ctrl-D: leave the shell's prompt a fresh line */
            break;
        }
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
    sigaction(SIGINT, &old, NULL);
    rc = 0;
done:
    chat_free(&ch);
    return rc;
}
