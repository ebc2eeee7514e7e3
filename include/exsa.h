/* Exsa public C API.
 *
 * What cli/ and server/ see of the engine: error codes, the batch that a
 * forward pass takes, and opaque handles. Every function that can fail
 * returns 0 / a negative EXSA_E* code (or NULL) and writes a one-line message
 * into the caller's exsa_err.
 */
#ifndef EXSA_H
#define EXSA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    EXSA_OK = 0,
    EXSA_EINVAL = -1,       /* bad argument or parameter out of range */
    EXSA_ENOMEM = -2,       /* allocation failed or size would overflow */
    EXSA_EIO = -3,          /* open/read/write/mmap failed */
    EXSA_EFORMAT = -4,      /* malformed file (GGUF) */
    EXSA_EUNSUPPORTED = -5, /* valid, but not something Exsa runs */
    EXSA_EFULL = -6,        /* out of KV blocks / batch capacity */
    EXSA_ETIMEDOUT = -7,    /* nothing happened within the timeout */
};

/* A caller-owned error buffer: functions that fail fill msg. */
typedef struct exsa_err {
    int code;
    char msg[512];
} exsa_err;

/* One forward pass: rows of (token, position, sequence, wants-logits).
 * Rows of several sequences at different positions go through one pass. */
typedef struct exsa_batch {
    int n;            /* rows */
    int32_t *token;   /* [n] */
    int32_t *pos;     /* [n] position inside its sequence */
    int32_t *seq;     /* [n] sequence id (selects the block table) */
    uint8_t *logits;  /* [n] 1 = return logits for this row */
} exsa_batch;

/* ---- Sampling parameters (the chain itself is engine/sampling.h) ---- */

typedef struct exsa_logit_bias {
    int32_t token;
    float bias; /* added to the logit; -INFINITY bans the token */
} exsa_logit_bias;

typedef struct exsa_sampling_params {
    float temperature;       /* 0.8; <= 0 greedy */
    int32_t top_k;           /* 40; <= 0 disabled */
    float top_p;             /* 0.95; 1 disabled */
    float min_p;             /* 0.05; 0 disabled */
    float typical_p;         /* 1.0 disabled */
    float tfs_z;             /* 1.0 disabled */
    float repeat_penalty;    /* 1.0 disabled */
    int32_t repeat_last_n;   /* 64; 0 disabled, -1 = whole history */
    float presence_penalty;  /* 0 */
    float frequency_penalty; /* 0 */
    int32_t mirostat;        /* 0 off, 1 or 2 */
    float mirostat_tau;      /* 5.0 */
    float mirostat_eta;      /* 0.1 */
    uint64_t seed;           /* EXSA_SEED_RANDOM: from the clock */
    int32_t n_logit_bias;
    const exsa_logit_bias *logit_bias; /* copied at create */
} exsa_sampling_params;

#define EXSA_SEED_RANDOM UINT64_MAX

void exsa_sampling_params_default(exsa_sampling_params *p);

/* ---- Serving engine ----
 *
 * One engine per loaded model. exsa_engine_create loads the model and starts
 * ONE engine thread that owns the model context, the paged KV cache, the
 * prefix cache and every sampler: all forward passes and sampling happen on
 * it. Other threads (HTTP handlers) only submit requests, read their event
 * streams and cancel them; every function below is thread safe unless said
 * otherwise.
 *
 * Each engine step admits waiting requests by the scheduling strategy while
 * KV blocks, the per-step token budget (max_batch_tokens) and the cap on
 * running sequences (max_batch_size) allow, then runs ONE forward pass with
 * one decode row per running sequence plus prefill chunks of new prompts, so
 * a long prompt never stalls the others. When the KV pool runs out, the most
 * recently admitted sequence is preempted (its blocks freed, it is requeued
 * first and recomputes prompt + generated-so-far; the events already sent
 * stay valid, nothing is sent twice).
 */

typedef struct exsa_engine exsa_engine;
typedef struct exsa_request exsa_request;

enum exsa_sched_strategy {
    EXSA_SCHED_FIFO = 0,     /* arrival order */
    EXSA_SCHED_SHORTEST,     /* smallest prompt + max_tokens first */
    EXSA_SCHED_PRIORITY,     /* highest priority first, FIFO within a level, with ageing */
    EXSA_SCHED_DYNAMIC,      /* FIFO when the queue is short, shortest-first when long */
};

typedef struct exsa_engine_params {
    const char *model_path;  /* GGUF file (required; copied) */
    int n_threads;           /* <= 0: physical cores */
    int n_ctx;               /* tokens per sequence; <= 0: min(n_ctx_train, 4096) */
    int max_batch_tokens;    /* rows per forward pass (512) */
    int max_batch_size;      /* running sequences at most (16) */
    int kv_type;             /* EXSA_TYPE_F16 (default), F32 or Q8_0 of quant/quant.h */
    int kv_tokens;           /* KV pool size in tokens; <= 0: max_batch_size * n_ctx */
    int queue_size;          /* waiting requests at most (256); submit beyond: EXSA_EFULL */
    int strategy;            /* exsa_sched_strategy (FIFO) */
    int prefix_cache;        /* 1: reuse cached full prompt blocks (default on) */
    int priority_aging_ms;   /* PRIORITY: +1 level per this many ms waited (1000); <= 0 off */
    int dynamic_threshold;   /* DYNAMIC: queue length from which shortest-first is used (8) */
    /* KV pool as a memory budget in bytes (0: use kv_tokens): as many whole
     * blocks as fit at kv_type for this model's per-token K/V size. */
    int64_t kv_bytes;
} exsa_engine_params;

void exsa_engine_params_default(exsa_engine_params *p);

/* Loads the model, sizes the KV pool and starts the engine thread. */
exsa_engine *exsa_engine_create(const exsa_engine_params *p, exsa_err *err);
/* Stops the engine: cancels every request still queued or running (their
 * streams end with EXSA_FINISH_CANCEL), joins the thread, frees the model.
 * Request handles stay valid until exsa_request_free, which must still be
 * called for each. */
void exsa_engine_free(exsa_engine *e);

typedef struct exsa_request_params {
    /* Prompt: ids (copied) if n_prompt_ids > 0, else prompt_text (copied,
     * tokenized on the calling thread). */
    const int32_t *prompt_ids;
    int n_prompt_ids;
    const char *prompt_text;
    int parse_special;       /* recognise special-token strings in prompt_text (0) */
    int add_special;         /* add BOS/EOS as the model says, for prompt_text (1) */
    exsa_sampling_params sampling;
    int max_tokens;          /* tokens to generate at most (256); <= 0: until the context is full */
    const char *const *stop; /* stop strings (copied); matched on the detokenized text */
    int n_stop;
    int priority;            /* PRIORITY strategy: higher first (0) */
    int ignore_eos;          /* keep generating past end-of-generation tokens (0) */
} exsa_request_params;

void exsa_request_params_default(exsa_request_params *p);

/* Queues a request. Fails fast: EXSA_EFULL when the queue is full, EXSA_EINVAL
 * for a request that could never run (empty prompt, a token out of the
 * vocabulary, prompt + max_tokens beyond n_ctx, more KV blocks than the pool,
 * bad sampling parameters). The handle belongs to the caller: read it with
 * exsa_request_next, release it with exsa_request_free. */
exsa_request *exsa_engine_submit(exsa_engine *e, const exsa_request_params *p, exsa_err *err);

enum exsa_event_type {
    EXSA_EVENT_TOKEN = 1, /* one generated token and the text it completed */
    EXSA_EVENT_DONE = 2,  /* last event of a stream */
};

enum exsa_finish_reason {
    EXSA_FINISH_NONE = 0,
    EXSA_FINISH_STOP,     /* end-of-generation token or a stop string */
    EXSA_FINISH_LENGTH,   /* max_tokens generated */
    EXSA_FINISH_CONTEXT,  /* the sequence filled its context */
    EXSA_FINISH_CANCEL,   /* exsa_request_cancel/free or engine shutdown */
    EXSA_FINISH_ERROR,    /* the forward pass failed; see event.error */
};

typedef struct exsa_usage {
    int prompt_tokens;
    int cached_tokens;    /* prompt tokens taken from the prefix cache (first admission) */
    int generated_tokens;
} exsa_usage;

typedef struct exsa_timings {
    double queue_ms;      /* submit -> first admission */
    double ttft_ms;       /* submit -> first token */
    double total_ms;      /* submit -> done */
    double itl_mean_ms;   /* mean time between consecutive tokens (0 below 2 tokens) */
    double itl_max_ms;    /* longest such gap (0 below 2 tokens) */
} exsa_timings;

typedef struct exsa_event {
    int type;             /* exsa_event_type */
    int32_t token;        /* TOKEN: the id */
    /* TOKEN: text that is now final (whole UTF-8 characters; text that may
     * still turn out to start a stop string is held back and comes with a
     * later event). DONE: "". Valid until the next exsa_request_next or
     * exsa_request_free on this request; NUL-terminated. */
    const char *text;
    size_t text_len;
    int finish;           /* DONE: exsa_finish_reason */
    exsa_usage usage;     /* DONE */
    exsa_timings timings; /* DONE */
    const char *error;    /* DONE with EXSA_FINISH_ERROR: message; else "" */
    /* DONE: 1-based rank of this request's first admission among all the
     * engine's admissions (0: never admitted), so callers and tests can see
     * the order the scheduling strategy chose. */
    int64_t admit_order;
} exsa_event;

/* Waits for the next event: timeout_ms < 0 waits forever, 0 polls. Returns
 * 0 with *ev filled, EXSA_ETIMEDOUT when none came in time, EXSA_EINVAL after
 * the DONE event was read. One reader per request at a time. */
int exsa_request_next(exsa_request *r, exsa_event *ev, int timeout_ms);
/* Asks the engine to stop the request; its KV blocks are freed at the next
 * step and its stream ends with EXSA_FINISH_CANCEL (unless it finished
 * first). Any thread, any number of times. */
void exsa_request_cancel(exsa_request *r);
/* Releases the caller's handle (cancels the request if still running). */
void exsa_request_free(exsa_request *r);

typedef struct exsa_engine_stats {
    int queue_len;              /* waiting to be admitted (incl. preempted) */
    int running;                /* sequences admitted */
    int kv_blocks_total, kv_blocks_free, kv_blocks_cached; /* cached: held by the prefix cache */
    int block_size;             /* tokens per KV block */
    int64_t prefix_hit_tokens;  /* prompt tokens served from the prefix cache */
    int64_t preemptions;
    int64_t prompt_tokens;      /* prompt tokens of admitted requests */
    int64_t computed_tokens;    /* rows run through forward (prefill + decode + recompute) */
    int64_t generated_tokens;
    int64_t requests_done;
    int64_t steps;
    double ttft_ms_sum;         /* over requests that produced a token */
    int64_t ttft_count;
    double itl_ms_sum;          /* inter-token latency over every later token */
    int64_t itl_count;
} exsa_engine_stats;

/* A consistent snapshot taken by the engine thread at the end of its last
 * step (a request's DONE event is sent after the snapshot that includes its
 * freed blocks). */
void exsa_engine_stats_get(exsa_engine *e, exsa_engine_stats *out);
/* paused = 1: the engine thread finishes its current step and then runs no
 * more (requests still queue and can be cancelled; their cancellation takes
 * effect on resume); 0 resumes. For maintenance and for tests that need a
 * known queue. */
void exsa_engine_pause(exsa_engine *e, int paused);
/* Tokenizes text with the engine's tokenizer; same contract as
 * exsa_tokenize (returns the count, writes at most cap ids). */
int64_t exsa_engine_tokenize(exsa_engine *e, const char *text, size_t len, int add_special,
                             int parse_special, int32_t *ids, int64_t cap, exsa_err *err);

#ifdef __cplusplus
}
#endif
#endif
