/* Prometheus metrics (text exposition format 0.0.4).
 *
 * Counters and histograms are atomics in fixed arrays: recording a request
 * or a token takes no lock and allocates nothing. Per-model series live in a
 * fixed table of model slots, found by name once per request
 * (exsa_metrics_model, under a mutex) and then used lock-free. Engine gauges
 * (queue, running, KV blocks) and the engine's own counters (prefix-cache
 * hits, preemptions) are read at scrape time and passed to render.
 */
#ifndef EXSA_SERVER_METRICS_H
#define EXSA_SERVER_METRICS_H

#include <stdint.h>

#include "exsa.h"
#include "server/strbuf.h"

typedef struct exsa_metrics exsa_metrics;
typedef struct exsa_model_metrics exsa_model_metrics;

/* endpoints: labels of the application's endpoint indices (kept by
 * reference; static strings). */
exsa_metrics *exsa_metrics_create(const char *const *endpoints, int n_endpoints, exsa_err *err);
void exsa_metrics_free(exsa_metrics *m);

/* One finished HTTP request: endpoint index (out of range: "other"),
 * status, duration. */
void exsa_metrics_request(exsa_metrics *m, int endpoint, int status, double seconds);

/* The series of a model (created on first use; a full table shares one
 * "_other" slot). Never NULL; valid until exsa_metrics_free. */
exsa_model_metrics *exsa_metrics_model(exsa_metrics *m, const char *model);
void exsa_metrics_prompt_tokens(exsa_model_metrics *mm, int n);
/* One generated token; gap_s < 0 for a request's first token. */
void exsa_metrics_token(exsa_model_metrics *mm, double gap_s);
void exsa_metrics_ttft(exsa_model_metrics *mm, double seconds);

/* Scrape-time figures of one loaded model. */
typedef struct exsa_metrics_engine {
    const char *model;
    int ready;
    int queue_len, running;
    int batch_seqs_peak; /* most sequences in one forward step since start */
    int64_t spec_draft_tokens, spec_accepted_tokens; /* speculative guesses, kept */
    int kv_blocks_total, kv_blocks_free, kv_blocks_cached;
    int64_t prefix_hit_tokens, preemptions;
    int gpu;               /* runs (partly) on a GPU: the gpu_* below are set */
    int64_t gpu_used_bytes, gpu_total_bytes, gpu_weight_bytes;
} exsa_metrics_engine;

/* Appends the whole exposition to out (0, or EXSA_ENOMEM). */
int exsa_metrics_render(exsa_metrics *m, const exsa_metrics_engine *eng, int n_eng, double uptime_s,
                        exsa_strbuf *out);

#endif
