/* The `exsa` command line: one function per command, shared flag parsing. */
#ifndef EXSA_CLI_H
#define EXSA_CLI_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/sampling.h"
#include "model/model.h"

/* Commands: argv[0] is the command name; return the process exit status. */
int exsa_cmd_info(int argc, char **argv);
int exsa_cmd_run(int argc, char **argv);
int exsa_cmd_quantize(int argc, char **argv);
int exsa_cmd_bench(int argc, char **argv);
int exsa_cmd_gen_model(int argc, char **argv);
int exsa_cmd_tokenize(int argc, char **argv);
int exsa_cmd_template(int argc, char **argv);
int exsa_cmd_chat(int argc, char **argv);
int exsa_cmd_serve(int argc, char **argv);
int exsa_cmd_perplexity(int argc, char **argv);

/* Prints "exsa <cmd>: message" to stderr; returns 1 (the exit status). */
int exsa_cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Flag value parsing with range checks; on error print one line naming the
 * flag and return nonzero. */
int exsa_cli_int(const char *cmd, const char *flag, const char *s, int64_t lo, int64_t hi,
                 int64_t *out);
int exsa_cli_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
                   double *out);
/* --kv-type's value: f16, f32 or q8_0 into *out (an EXSA_TYPE_*). */
int exsa_cli_kv_type(const char *cmd, const char *s, int *out);
/* --device, -ngl/--n-gpu-layers, -mg/--main-gpu at argv[*i] into mp:
 * 1 when it was one (value taken), 0 when not, -1 after printing an error. */
int exsa_cli_placement(const char *cmd, int argc, char **argv, int *i, exsa_model_params *mp);
#define EXSA_CLI_PLACEMENT_HELP                                                           \
    "  --device NAME        auto (a CUDA GPU when usable, else the CPU), cpu or cuda\n"     \
    "  -ngl N               layers on the GPU, from the last (-1: all + output head)\n"    \
    "  -mg N                CUDA device (0)\n"
/* Speculative decoding flags (--spec, -md/--model-draft, --draft-max,
 * --draft-min, --draft-p-min, --spec-max-seqs) at argv[*i] into ep's spec
 * fields: 1 when it was one, 0 when not, -1 after printing an error. */
int exsa_cli_spec(const char *cmd, int argc, char **argv, int *i, exsa_engine_params *ep);
#define EXSA_CLI_SPEC_HELP                                                                 \
    "  --spec               speculative decoding: n-gram lookup, or -md's guesses\n"        \
    "  -md PATH             draft model (same vocabulary) for speculative decoding\n"      \
    "  --draft-max N        tokens guessed per step at most (16)\n"                         \
    "  --draft-min N        guess at least N whenever possible (0: costs decide)\n"          \
    "  --draft-p-min P      draft model: stop guessing below this probability (0.75)\n"     \
    "  --spec-max-seqs N    no guesses while more sequences decode (4)\n"
/* Takes the value of flag argv[*i] (advancing *i), or fails if missing. */
const char *exsa_cli_value(const char *cmd, int argc, char **argv, int *i);

/* Sampling settings shared by `run` flags and `chat`'s /set. */
#define EXSA_CLI_MAX_BIAS 256
typedef struct exsa_cli_sampling {
    exsa_sampling_params sp; /* sp.logit_bias points into bias */
    exsa_logit_bias bias[EXSA_CLI_MAX_BIAS];
} exsa_cli_sampling;

void exsa_cli_sampling_init(exsa_cli_sampling *s);
/* 1 if name ("temp", "top-k", ... = the flag without "--") is a setting. */
int exsa_cli_sampling_is(const char *name);
/* Applies one setting; 0 ok, else prints one line naming it and returns 1. */
int exsa_cli_sampling_set(const char *cmd, exsa_cli_sampling *s, const char *name,
                          const char *value);
const char *exsa_cli_sampling_help(void);

/* Generation through the engine: `run` and `chat` are its clients, so
 * chunked prefill, prefix reuse, stop strings and sampling live in one
 * place (engine/engine.c). */
typedef struct exsa_cli_gen {
    int32_t *ids;         /* generated ids */
    int n_ids, cap_ids;
    char *text;           /* generated text (NUL-terminated) */
    size_t len, cap;
    int finish;           /* exsa_finish_reason */
    exsa_usage usage;
    exsa_timings timings;
    char error[512];      /* finish == EXSA_FINISH_ERROR: why */
} exsa_cli_gen;

/* Submits p to e and reads the stream to its end: each token's text goes
 * to out (unless NULL) as it comes and is collected in g (emptied first,
 * buffers kept) with the ids. When *interrupt (may be NULL) becomes
 * nonzero, the request is cancelled (finish EXSA_FINISH_CANCEL). Returns 0,
 * or the submit error with err set. */
int exsa_cli_generate(exsa_engine *e, const exsa_request_params *p, FILE *out,
                      volatile sig_atomic_t *interrupt, exsa_cli_gen *g, exsa_err *err);
void exsa_cli_gen_free(exsa_cli_gen *g);

/* A terminal progress bar on stderr (only when stderr is a tty). */
void exsa_cli_progress(void *ud, int64_t done, int64_t total);

/* Writes s[0..n) as a JSON string literal (quotes, escapes) to f. */
void exsa_cli_json_string(FILE *f, const char *s, size_t n);

/* The whole file, NUL-terminated (*len its bytes); NULL after printing a
 * line naming cmd and the file. */
char *exsa_cli_read_file(const char *cmd, const char *path, size_t *len);

/* Model path default from the environment (MODEL_PATH / EXSA_MODEL_PATH). */
const char *exsa_cli_env_model(void);

#endif
