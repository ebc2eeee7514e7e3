/* The engine's internals, shared by its files (never included outside
 * src/engine/):
 *   engine.c          the engine thread: scheduling, the batched step,
 *                     sampling, retirement; create/free; embeddings
 *   engine_request.c  requests: submit (prompt, stops, grammar), the event
 *                     stream a caller reads
 *   engine_text.c     model information, tokenize/detokenize, chat render
 *   speculative.c     speculative decoding's proposers (n-gram, draft model)
 */
#ifndef EXSA_ENGINE_INTERNAL_H
#define EXSA_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/grammar.h"
#include "engine/prefix_cache.h"
#include "engine/sampling.h"
#include "engine/speculative.h"
#include "exsa.h"
#include "model/model.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"
#include "text/vocab.h"
#include "util/err.h"

/* 0 builds the engine without src/engine/prefix_cache.c. */
#ifndef EXSA_ENGINE_HAVE_PREFIX_CACHE
#define EXSA_ENGINE_HAVE_PREFIX_CACHE 1
#endif

/* Guess rows one step verifies at most (beside one row per sequence). */
#define EXSA_SPEC_ROWS 64
/* Step sizes (rows) whose forward time the engine keeps. */
#define EXSA_COST_ROWS 128

#define PIECE_MAX 4096 /* bytes one token (plus a detok flush) may complete */

typedef struct evt {
    int type;
    int32_t token;
    size_t off, len; /* text in r->txt */
    float logprob;
    int n_top;
    size_t top_off;  /* n_top entries in r->tops */
} evt;

/* Log-probabilities of one sampled token (engine thread, on the stack). */
typedef struct lp_info {
    float logprob;
    int n_top;
    exsa_token_logprob top[EXSA_MAX_TOP_LOGPROBS];
} lp_info;

/* An embedding request; lives on the caller's stack until done is set. */
typedef struct embed_job {
    const int32_t *ids;
    int n;
    float *out;
    int rc;
    exsa_err err;
    int done;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct embed_job *next;
} embed_job;

struct exsa_request {
    /* Fixed at submit. */
    uint64_t id;
    int priority;
    int64_t t_submit;
    int32_t *tokens; /* [n_prompt + max_gen] */
    int n_prompt, max_gen;
    char **stop;
    size_t *stop_len;
    int n_stop;
    int ignore_eos;
    int until_ctx; /* max_tokens <= 0: generate until the context is full */
    int logprobs, top_logprobs;

    /* Event stream, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    evt *ev;
    int n_ev, cap_ev, rd;
    char *txt;
    size_t txt_len, txt_cap;
    char *rbuf; /* the reader's copy of the current event's text */
    size_t rbuf_cap;
    exsa_token_logprob *tops; /* top logprobs of queued events */
    size_t tops_len, tops_cap;
    exsa_token_logprob rtop[EXSA_MAX_TOP_LOGPROBS]; /* the reader's copy */
    int done_read;
    int refs; /* caller + engine */
    char errmsg[sizeof(((exsa_err *)0)->msg)];
    atomic_int cancel;

    /* Engine thread only. */
    int n_tok, n_computed, n_gen, n_registered;
    int slot;
    int plan;      /* rows to feed this step */
    int preempted; /* requeued by preemption: resumes first */
    int admitted;  /* ever admitted (queue time, cached tokens counted once) */
    int cached_tokens;
    int finish;
    exsa_sampler *smp;
    exsa_detok *detok;
    /* Constrained output (exsa_request_params.grammar). */
    exsa_grammar *gram;
    exsa_grammar_matcher *gm;
    uint32_t *gmask;     /* [ceil(n_vocab / 32)] */
    char *trigger;       /* lazy: NULL once active (or for none) */
    int gram_on;         /* masks apply */
    char *lazy;          /* lazy: output tail that may hold the trigger */
    size_t lazy_len, lazy_cap;
    char *hold; /* generated text not yet sent (a possible stop-string prefix) */
    size_t hold_len, hold_cap;
    /* Speculative decoding (engine thread). */
    int spec_on;
    int spec_n_max, spec_n_min;
    float spec_p_min;
    /* Guesses kept and judged, decayed each step (the acceptance
     * estimate; it drifts back to 1/2 while the sequence does not guess,
     * so a sequence that stopped guessing tries again later). */
    double spec_hit, spec_try;
    exsa_ngram_index *ngram;
    int32_t *pred;       /* the predicted output's tokens (exsa_request_params.prediction) */
    int n_pred;
    int pred_ok;         /* output tokens found equal to pred's start (-1: it left it) */
    exsa_ngram_index *pred_ix;
    int32_t *draft;      /* [spec_n_max]: this step's guesses */
    int n_draft;
    int n_drafted, n_accepted;
    int64_t t_admit, t_first, t_last;
    int64_t admit_order; /* rank of the first admission (exsa_event.admit_order) */
    double itl_sum_ms, itl_max_ms;
};

struct exsa_engine {
    exsa_engine_params p;
    char *model_path;
    exsa_model *m;
    exsa_model_ctx *ctx;
    exsa_kv_cache *kv;
    exsa_prefix_cache *pc;
    exsa_vocab *voc;
    /* The vocabulary's byte view for grammars: built by the first request
     * that has one (on its submitting thread), under gvoc_mu. */
    exsa_grammar_vocab *gvoc;
    pthread_mutex_t gvoc_mu;
    exsa_tokenizer *tok;
    int n_vocab, n_ctx, bs, n_blocks;
    char *name;
    char *tpl_override;      /* copy of p->chat_template */
    exsa_chat_template *tpl; /* NULL: tpl_err says why */
    char tpl_err[sizeof(((exsa_err *)0)->msg)];
    char *bos_text, *eos_text;
    int64_t created;
    /* Shared detokenizers (plain, special) for exsa_engine_detokenize:
     * creating one scans the vocabulary, so calls reuse these in turn. */
    pthread_mutex_t detok_mu;
    exsa_detok *dt[2];

    pthread_t th;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    int paused;
    uint64_t next_id;
    embed_job *jobs, *jobs_tail;
    exsa_request **waiting; /* arrival order; preempted ones at the front */
    int n_waiting, cap_waiting;
    exsa_engine_stats stats;

    /* Engine thread only. */
    exsa_request **running; /* admission order */
    int n_running;
    int *free_slots;
    int n_free_slots;
    exsa_request **finished;
    int n_finished;
    int32_t *b_token, *b_pos, *b_seq;
    uint8_t *b_logits;
    exsa_request **out_req; /* logits row -> request */
    float *logits;
    int32_t *match;
    char *piece;
    exsa_engine_stats acc; /* counters; copied into stats at the end of a step */
    int64_t n_admitted;    /* first admissions so far */
    int embed_seq;         /* sequence id of embedding jobs */
    float *hidden;         /* [max_batch_tokens][n_embd], allocated at the first job */
    double *pool;          /* [n_embd] */
    exsa_drafter *drafter; /* NULL: n-gram guesses */
    exsa_draft_req *dreq;  /* [max_batch_size] */
    exsa_request **dreq_owner;
    /* Logits rows for guesses past one per sequence: 0 until the first
     * request speculates (then EXSA_SPEC_ROWS, or -1 when that memory
     * could not be had). */
    int spec_rows;
    /* Measured forward time (ms) of steps whose every row gives logits
     * (decode and guess rows), by row count: what guess rows cost here. */
    double row_ms[EXSA_COST_ROWS + 1];
    uint8_t row_seen[EXSA_COST_ROWS + 1];
    double draft_ms; /* draft model: ms per guessed position (0: not measured yet) */
};

static inline int blocks_for(const exsa_engine *e, int n_tokens)
{
    return (n_tokens + e->bs - 1) / e->bs;
}

/* ---- engine_request.c ---- */

/* Grows *buf (of *cap elements of elem bytes) to hold need; 0 or -1. */
int engine_grow(void **buf, size_t *cap, size_t need, size_t elem);
void engine_request_destroy(exsa_request *r);
/* Drops one reference; the last one frees the request. */
void engine_request_unref(exsa_request *r);
/* Appends an event (lp: its log-probabilities or NULL); engine thread. */
int engine_push_event(exsa_request *r, int type, int32_t token, const char *text, size_t len,
                      const lp_info *lp);

#endif
