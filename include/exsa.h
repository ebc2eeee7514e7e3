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
    /* Chat template: NULL uses the model's tokenizer.chat_template (or a
     * builtin guessed from the model); else a builtin name (chatml, llama2,
     * llama3, ...) or Jinja source text. Copied. */
    const char *chat_template;
    /* Name the engine answers to (registry, OpenAI "model"); NULL: general.name
     * of the file, else its file name without ".gguf". Copied. */
    const char *name;
    /* Placement: device (0 auto, 1 cpu, 2 cuda: backend.h's exsa_device),
     * layers on the GPU counted from the last (-1: all and the output
     * head; llama.cpp's -ngl), CUDA device ordinal. */
    int device;
    int n_gpu_layers;
    int gpu;
    /* Speculative decoding (DESIGN.md): guesses of the next tokens verified
     * in the same batched pass, exact (greedy: the same tokens; sampling:
     * the same distribution). spec 1 turns it on for requests that do not
     * say (0: off unless a request asks). The guesses come from
     * draft_model_path (copied; a GGUF with the target's vocabulary, placed
     * like the target) or, without one, from n-gram lookup over the
     * sequence. */
    int spec;
    const char *draft_model_path;
    int spec_n_max;       /* tokens guessed per sequence and step at most (16) */
    int spec_n_min;       /* > 0: guess at least this many whenever possible, even where the
                           * measured costs say it does not pay; shorter guesses are dropped (0) */
    float spec_p_min;     /* draft model: stops guessing below this probability (0.75) */
    int spec_max_seqs;    /* no guesses while more sequences than this decode (4) */
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
    /* 1: each TOKEN event carries the chosen token's log-probability, and the
     * top_logprobs (0..EXSA_MAX_TOP_LOGPROBS) most likely tokens, from the
     * log-softmax of the model's raw logits (before penalties, bias and
     * temperature), as OpenAI reports them. */
    int logprobs;
    int top_logprobs;
    /* Constrained output: a grammar in llama.cpp's GBNF (copied; NULL:
     * none), compiled at submit (a bad one is EXSA_EINVAL naming line and
     * column). Only tokens the grammar allows are sampled, and an
     * end-of-generation token only where it is complete. With
     * grammar_trigger (copied) the grammar is lazy: off until that text
     * appears in the output, then applied from the trigger's first byte
     * (tool calls in free text). Prompt tokens never advance it. */
    const char *grammar;
    const char *grammar_trigger;
    /* Speculative decoding for this request (llama-server's speculative.*):
     * spec -1 follows the engine (default), 0 off, 1 on; n_max, n_min,
     * p_min < 0 take the engine's. */
    int spec;
    int spec_n_max, spec_n_min;
    float spec_p_min;
    /* Predicted output (OpenAI's predicted outputs; copied, tokenized at
     * submit): the text the answer is expected to repeat, e.g. the code
     * being edited. Guesses come from it first; it turns speculation on
     * unless spec is 0. NULL: none. */
    const char *prediction;
} exsa_request_params;

#define EXSA_MAX_TOP_LOGPROBS 20

void exsa_request_params_default(exsa_request_params *p);

/* Queues a request. Fails fast: EXSA_EFULL when the queue is full, EXSA_EINVAL
 * for a request that could never run (empty prompt, a token out of the
 * vocabulary, prompt + max_tokens beyond n_ctx, more KV blocks than the pool,
 * bad sampling parameters). The handle belongs to the caller: read it with
 * exsa_request_next, release it with exsa_request_free. */
exsa_request *exsa_engine_submit(exsa_engine *e, const exsa_request_params *p, exsa_err *err);

typedef struct exsa_token_logprob {
    int32_t token;
    float logprob;
} exsa_token_logprob;

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
    int draft_tokens;     /* speculative guesses verified */
    int accepted_tokens;  /* of those, kept (each one a token of the output) */
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
    /* TOKEN with logprobs requested: the chosen token's log-probability and
     * the n_top most likely tokens, most likely first (valid like text). */
    float logprob;
    int n_top;
    const exsa_token_logprob *top;
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
    int batch_seqs_peak;        /* most sequences in one forward step since start */
    int64_t spec_draft_tokens;  /* speculative guesses verified */
    int64_t spec_accepted_tokens;
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

/* ---- Model information and text helpers (for server/ and cli/) ---- */

typedef struct exsa_model_info {
    char name[256];        /* the engine's name (exsa_engine_params.name) */
    char path[1024];       /* file it was loaded from */
    char arch[32];         /* "llama", "qwen2", ... */
    char weight_type[16];  /* type of most matrices: "Q4_0", "F16", ... */
    int n_ctx;             /* tokens per sequence this engine runs */
    int n_ctx_train;
    int n_vocab, n_embd, n_layer;
    int32_t bos, eos;      /* -1: none */
    uint64_t n_params, weight_bytes;
    int64_t created;       /* unix time the engine was created */
    char backend[128];     /* what runs it: backend, ISA, threads ("cpu avx2 x8") */
    char device[8];        /* "cpu" or "cuda" (any layer on the GPU) */
    /* GPU memory (device "cuda"; else 0): free and total now, and what the
     * weights take there. */
    uint64_t gpu_free_bytes, gpu_total_bytes, gpu_weight_bytes;
} exsa_model_info;

void exsa_engine_model_info(exsa_engine *e, exsa_model_info *out);

/* Text of ids (special tokens rendered as their text when special = 1).
 * Returns the byte length of the whole text (without NUL) and writes at
 * most cap bytes including a NUL (so a short buffer can be resized and the
 * call repeated), or a negative code for an id out of the vocabulary. Invalid
 * UTF-8 that the tokens form is replaced by U+FFFD. */
int64_t exsa_engine_detokenize(exsa_engine *e, const int32_t *ids, int64_t n, int special,
                               char *out, size_t cap, exsa_err *err);

/* Raw bytes of one token (a piece of a UTF-8 character stays as its bytes,
 * as OpenAI's logprobs "bytes" report it; control tokens give "" unless
 * special). Returns the full length and writes at most cap bytes (no NUL),
 * or EXSA_EINVAL for an id out of the vocabulary. */
int64_t exsa_engine_token_bytes(exsa_engine *e, int32_t id, int special, char *out, size_t cap,
                                exsa_err *err);

/* Renders a conversation with the engine's chat template. messages_json is a
 * JSON array of OpenAI messages ({"role", "content"}, content a string or an
 * array of {"type": "text", "text"} parts; other part types are an error
 * naming the message); tools_json a JSON array or NULL. Returns the prompt
 * text (malloc'd, the caller frees) or NULL with err set (EXSA_EINVAL for a
 * bad message list, naming the index and field). */
char *exsa_engine_chat_render(exsa_engine *e, const char *messages_json, const char *tools_json,
                              int add_generation_prompt, exsa_err *err);
/* The same with extra template variables: kwargs_json is a JSON object
 * (HF's chat_template_kwargs, e.g. {"enable_thinking": false}) or NULL. */
char *exsa_engine_chat_render_kw(exsa_engine *e, const char *messages_json, const char *tools_json,
                                 const char *kwargs_json, int add_generation_prompt,
                                 exsa_err *err);
/* The engine's chat template as Jinja text (valid while the engine lives),
 * or NULL when it has none. */
const char *exsa_engine_chat_template_source(exsa_engine *e);

/* Embedding of a token sequence: the final hidden state (after the output
 * norm) of every token, mean pooled over the tokens, L2-normalized. Runs on
 * the engine thread between steps (thread safe; blocks the caller until
 * done). out holds cap floats; returns n_embd, or a negative code (EXSA_EINVAL:
 * empty or too long for n_ctx, bad id, cap < n_embd; EXSA_EFULL: no KV blocks
 * free right now). */
int exsa_engine_embed(exsa_engine *e, const int32_t *ids, int n, float *out, int cap,
                      exsa_err *err);

/* ---- Model registry: several engines by name, one of them active ----
 *
 * Handlers acquire an engine for the length of a request and release it
 * after. unload and reload never cut a request short: the entry leaves the
 * registry at once (reload: the new engine replaces it once loaded), and the
 * old engine is freed when its last holder releases it, after the requests
 * it runs have finished. All functions are thread safe. */

typedef struct exsa_registry exsa_registry;

enum exsa_model_state {
    EXSA_MODEL_LOADING = 1,
    EXSA_MODEL_READY,
    EXSA_MODEL_DRAINING,   /* unloaded or replaced; finishing its requests */
};

typedef struct exsa_registry_entry {
    char name[256];
    char path[1024];
    int state;             /* exsa_model_state */
    int active;            /* 1 for the default model */
    int holders;           /* requests holding it now */
} exsa_registry_entry;

exsa_registry *exsa_registry_create(exsa_err *err);
/* Frees every engine (cancelling what still runs): call after the last release. */
void exsa_registry_free(exsa_registry *r);
/* Loads an engine (blocking; other models keep serving). Its name is p->name,
 * else exsa_registry_default_name(p->model_path). EXSA_EINVAL if a model of
 * that name is loaded or loading (the message names both files). The first
 * model loaded becomes active. name_out (may be NULL) receives the name used. */
int exsa_registry_load(exsa_registry *r, const exsa_engine_params *p, char *name_out,
                       size_t name_cap, exsa_err *err);
/* EXSA_EINVAL for an unknown name. If it was active, the next loaded model in
 * load order becomes active (or none). */
int exsa_registry_unload(exsa_registry *r, const char *name, exsa_err *err);
/* The name a model file gets by default: its file name without directory and
 * ".gguf" ("/m/SmolLM2-135M.Q4_1.gguf" -> "SmolLM2-135M.Q4_1"). */
void exsa_registry_default_name(const char *path, char *out, size_t cap);
/* Loads the model again (p NULL: with the parameters it was loaded with),
 * then swaps it in under the same name; requests already running finish on
 * the old engine. On a load failure the old engine keeps serving. */
int exsa_registry_reload(exsa_registry *r, const char *name, const exsa_engine_params *p,
                         exsa_err *err);
int exsa_registry_set_active(exsa_registry *r, const char *name, exsa_err *err);
/* name NULL or "": the active model. NULL with err (EXSA_EINVAL: unknown
 * name, or no model loaded) otherwise. Every acquire needs one release. */
exsa_engine *exsa_registry_acquire(exsa_registry *r, const char *name, exsa_err *err);
void exsa_registry_release(exsa_registry *r, exsa_engine *e);
/* Fills at most cap entries (load order) and returns how many exist. */
int exsa_registry_list(exsa_registry *r, exsa_registry_entry *out, int cap);
/* 1 when at least one model is ready (for /health). */
int exsa_registry_ready(exsa_registry *r);

#ifdef __cplusplus
}
#endif
#endif
