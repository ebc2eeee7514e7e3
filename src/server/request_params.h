/* JSON request bodies -> engine parameters, with the validation every
 * generation endpoint shares.
 *
 * Every rejection names the field at fault (OpenAI's error "param") and
 * says what was expected, so a client learns exactly what to fix: wrong
 * JSON type, out of range, a feature Exsa does not have (response_format
 * json_object, tools, grammar, ...) rather than silently ignoring it.
 * Numbers are checked as JSON integers or reals before any conversion, so
 * huge values never overflow a C type. Harmless unknown fields (user,
 * metadata, llama-server's slot ids) are ignored.
 */
#ifndef EXSA_SERVER_REQUEST_PARAMS_H
#define EXSA_SERVER_REQUEST_PARAMS_H

#include <jansson.h>
#include <stdint.h>

#include "exsa.h"

/* A rejected request: HTTP status (400 unless said), the field, an OpenAI
 * error code (NULL: none) and the message. */
typedef struct exsa_param_err {
    int status;
    char param[96];
    const char *code;
    char msg[640];
} exsa_param_err;

/* Fills pe (status 400 unless already set otherwise by the caller) and
 * returns EXSA_EINVAL. param may be NULL. */
int exsa_param_fail(exsa_param_err *pe, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Parses a request body that must be a JSON object. NULL with pe filled
 * (malformed JSON with jansson's line/column, empty body, not an object). */
json_t *exsa_reqparams_body(const char *body, size_t len, exsa_param_err *pe);

/* Typed field readers: a missing field or JSON null leaves *out untouched
 * and sets *present = 0 (present may be NULL). Wrong types and values out of
 * [lo, hi] fail naming the field. Integers accept integral reals (8.0). */
int exsa_reqparams_int(const json_t *obj, const char *key, long long lo, long long hi,
                       long long *out, int *present, exsa_param_err *pe);
int exsa_reqparams_num(const json_t *obj, const char *key, double lo, double hi, double *out,
                       int *present, exsa_param_err *pe);
int exsa_reqparams_bool(const json_t *obj, const char *key, int *out, int *present,
                        exsa_param_err *pe);
/* A string without NUL bytes (jansson already guarantees valid UTF-8). */
int exsa_reqparams_str(const json_t *obj, const char *key, const char **out, int *present,
                       exsa_param_err *pe);
/* A list of token ids in [0, n_vocab) (n_vocab <= 0: only >= 0); malloc'd
 * into *ids (caller frees). name is the field path for messages. */
int exsa_reqparams_ids(const json_t *arr, const char *name, int n_vocab, int32_t **ids, int *n,
                       exsa_param_err *pe);

enum exsa_api_kind {
    EXSA_API_NATIVE = 0, /* /v1/generate */
    EXSA_API_CHAT,       /* /v1/chat/completions */
    EXSA_API_COMPLETION, /* /v1/completions */
};

#define EXSA_MAX_CHOICES 16
#define EXSA_MAX_STOPS 16
#define EXSA_MAX_STOP_LEN 1024

/* Everything a generation request says besides its prompt. */
typedef struct exsa_gen_params {
    exsa_request_params rp; /* sampling, stop, priority, ignore_eos, logprobs; no prompt */
    char **stop;            /* owned; rp.stop points here */
    exsa_logit_bias *bias;  /* owned; rp.sampling.logit_bias points here */
    int n;                  /* choices per prompt (1..EXSA_MAX_CHOICES) */
    int stream;
    int include_usage; /* stream_options.include_usage */
    int max_tokens;    /* 0: not given; -1: llama's n_predict -1 (no limit) */
    int logprobs;      /* per-token logprobs requested */
    int top_logprobs;
    int seed_given;
    uint64_t seed;
    /* Structured output (response_format, grammar, json_schema, or the
     * chat endpoint's tools): GBNF, owned; rp.grammar / rp.grammar_trigger
     * point here. */
    char *grammar;
    char *grammar_trigger;
    const char *grammar_field; /* the request field it came from (static) */
    char *prediction;          /* owned; rp.prediction points here */
} exsa_gen_params;

/* Takes grammar (owned; NULL: nothing to do) and a copy of trigger (NULL:
 * not lazy) as g's constraint, made from request field `field` (static
 * text, named by the errors the grammar gives at submit). 0 or EXSA_ENOMEM. */
int exsa_reqparams_take_grammar(exsa_gen_params *g, char *grammar, const char *trigger,
                                const char *field);

/* Reads every generation field of body for this kind of endpoint. n_vocab
 * bounds logit_bias ids. The prompt fields (messages, prompt, tokens) and
 * "model" are left to the caller; every other field is either used,
 * knowingly ignored, or rejected. */
int exsa_reqparams_parse(const json_t *body, int kind, int n_vocab, exsa_gen_params *out,
                         exsa_param_err *pe);
void exsa_reqparams_free(exsa_gen_params *p);

/* The "model" field: NULL when absent/null; fails for a non-string. */
int exsa_reqparams_model(const json_t *body, const char **model, exsa_param_err *pe);

/* Resolves max_tokens against the prompt length and limits: *out gets the
 * engine's max_tokens. Fails (400, code context_length_exceeded) when the
 * prompt leaves no room, or a given max_tokens does not fit or exceeds
 * max_cap (0: no cap). A request that gives no budget gets n_predict (the
 * server's -n; -1 or 0: up to the end of the context), and n_predict -1 in
 * the request means up to the end of the context; both within max_cap and
 * the room the prompt leaves. prompt_field names the prompt for messages. */
int exsa_reqparams_budget(const exsa_gen_params *p, int n_prompt, int n_ctx, int max_cap,
                          int n_predict, int max_prompt, const char *prompt_field, int *out,
                          exsa_param_err *pe);

#endif
