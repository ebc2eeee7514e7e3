/* One HTTP request's generations: the n engine requests behind it (n
 * choices of each prompt), read one choice after the other.
 *
 * A job holds the engine it was acquired with until it is freed, and is
 * listed in the app so that shutdown can cancel it. Reading blocks on the
 * engine's per-request condition variable (exsa_request_next with a
 * timeout), never polls in a loop. The job enforces the request deadline
 * (--timeout) and, for replies that are not streamed, notices a client that
 * hung up (both cancel every request of the job). Metrics (tokens, TTFT,
 * inter-token latency) are recorded as events are read; nothing is
 * allocated per token.
 *
 * A job belongs to one thread at a time (the connection's); only
 * exsa_gen_job_cancel may be called from others.
 */
#ifndef EXSA_SERVER_GEN_JOB_H
#define EXSA_SERVER_GEN_JOB_H

#include <stdatomic.h>
#include <stdint.h>

#include <jansson.h>

#include "exsa.h"
#include "server/app.h"
#include "server/request_params.h"

typedef struct exsa_gen_prompt {
    int32_t *ids; /* owned by the caller */
    int n;
} exsa_gen_prompt;

/* One choice: prompt p's j-th sample has index p * n + j. */
typedef struct exsa_gen_choice {
    exsa_request *req;
    int index, prompt;
    int n_prompt;
    int done;   /* its DONE event was read */
    int finish; /* exsa_finish_reason */
    exsa_usage usage;
    exsa_timings timings;
    char error[256];
    int n_gen; /* TOKEN events read */
    int64_t t_prev_ns;
} exsa_gen_choice;

struct exsa_gen_job {
    exsa_app *app;
    exsa_http_req *rq;
    exsa_engine *eng;
    exsa_model_info info;
    exsa_model_metrics *mm;
    exsa_gen_choice *ch;
    int n_ch;
    int n_prompts;
    int cur;             /* choice being read */
    int64_t deadline_ns; /* 0: none */
    int watch_client;    /* check for a hung-up client while waiting */
    int timed_out, client_gone;
    atomic_int cancelled;      /* set by exsa_gen_job_cancel (any thread) */
    exsa_gen_job *prev, *next; /* app->jobs */
};

enum exsa_gen_status {
    EXSA_GEN_EVENT = 0, /* *ev filled for choice *idx */
    EXSA_GEN_IDLE,      /* nothing within wait_ms (time for a keep-alive) */
    EXSA_GEN_END,       /* every choice is done */
    EXSA_GEN_TIMEOUT,   /* the request deadline passed: everything cancelled */
    EXSA_GEN_GONE,      /* the client hung up: everything cancelled */
};

/* The common start of a generation endpoint: parses the body, acquires the
 * engine its "model" names, parses the generation fields for this kind of
 * endpoint, and creates the job. NULL when it has replied (error). On
 * success the caller owns *body, *g (exsa_reqparams_free) and the job. */
exsa_gen_job *exsa_gen_job_begin(exsa_app *app, exsa_http_req *rq, int kind, json_t **body,
                                 exsa_gen_params *g);

/* Tokenizes text for a prompt (malloc'd ids into *out, the caller frees
 * out->ids). On failure it has replied (400 naming field / 500). */
int exsa_gen_job_tokenize(exsa_gen_job *j, const char *text, size_t len, int add_special,
                          int parse_special, const char *field, exsa_gen_prompt *out);

/* A chat prompt: renders messages (a JSON array of OpenAI-shaped messages)
 * with the engine's chat template, tools and kwargs (extra template
 * variables; both JSON or NULL), appends prefill (text the answer starts
 * with; NULL: none) and tokenizes the result with BOS unless the template
 * wrote it. *text (may be NULL) gets the malloc'd prompt text. On failure it
 * has replied (400 naming "messages" / 500). */
int exsa_gen_job_chat_prompt(exsa_gen_job *j, const json_t *messages, const json_t *tools,
                             const json_t *kwargs, const char *prefill, exsa_gen_prompt *out,
                             char **text);

/* For replies that are not streamed: when st (exsa_gen_job_next's) says
 * the request timed out or the client left, replies 504 / 499 and returns
 * 1; else 0. */
int exsa_gen_job_reply_cut(exsa_gen_job *j, int st);

/* Takes ownership of the acquired engine (released by exsa_gen_job_free,
 * also on failure here). NULL when out of memory (then it has replied). */
exsa_gen_job *exsa_gen_job_create(exsa_app *app, exsa_http_req *rq, exsa_engine *eng);

/* Submits n_prompts x g->n requests (seeds seed, seed+1, ... per prompt
 * when a seed was given). Checks each prompt against the context and the
 * server's limits first. On failure nothing keeps running and the job has
 * replied (400 / 503 / 500); the caller only frees it. prompt_field names
 * the prompt in messages ("messages", "prompt", "tokens"). */
int exsa_gen_job_submit(exsa_gen_job *j, const exsa_gen_params *g, const exsa_gen_prompt *prompts,
                        int n_prompts, const char *prompt_field);

/* Next event of the current choice; see exsa_gen_status. For DONE events
 * the choice's fields (finish, usage, timings, error) are filled too. */
int exsa_gen_job_next(exsa_gen_job *j, int wait_ms, int *idx, exsa_event *ev);

/* Sum of distinct prompts' tokens and of generated tokens (usage). */
int exsa_gen_job_prompt_tokens(const exsa_gen_job *j);
int exsa_gen_job_generated_tokens(const exsa_gen_job *j);

/* Text of one token (special tokens as their text), for logprobs; writes at
 * most cap bytes incl. NUL, returns the length (0 on error). */
size_t exsa_gen_job_token_text(exsa_gen_job *j, int32_t token, char *buf, size_t cap);
/* The token's raw bytes for OpenAI's logprobs "bytes" (a piece of a UTF-8
 * character stays as its bytes; buf is not NUL-terminated). */
size_t exsa_gen_job_token_bytes(exsa_gen_job *j, int32_t token, char *buf, size_t cap);

/* llama-server's "timings" object of a finished choice (prompt_n,
 * prompt_ms, predicted_n, predicted_ms, predicted_per_second, plus
 * queue_ms, ttft_ms, total_ms). NULL when out of memory. */
json_t *exsa_gen_timings_json(const exsa_gen_choice *c);

/* "stop" / "length" / ... for OpenAI; NULL while not finished. */
const char *exsa_gen_finish_name(int finish);

void exsa_gen_job_cancel(exsa_gen_job *j);
exsa_gen_job *exsa_gen_job_next_in_list(exsa_gen_job *j);
/* Cancels what still runs, frees the requests, releases the engine. */
void exsa_gen_job_free(exsa_gen_job *j);

#endif
