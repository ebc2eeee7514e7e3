#include "server/metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/err.h"

#define MAX_MODELS 64
#define MAX_BUCKETS 16

static const int status_codes[] = {200, 204, 400, 401, 403, 404, 405, 408, 413,
                                   414, 429, 431, 499, 500, 501, 503, 504};
#define N_STATUS ((int)(sizeof status_codes / sizeof status_codes[0]) + 1) /* + "other" */

static const double ttft_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                     1,     2.5,  5,     10,   30,  60};
static const double itl_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
static const double dur_bounds[] = {0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1,
                                    2.5,   5,    10,   30,  60,   120, 300};

typedef struct hist {
    atomic_llong bucket[MAX_BUCKETS + 1]; /* per bucket, not cumulative; last = +Inf */
    atomic_llong count;
    atomic_llong sum_ns;
} hist;

struct exsa_model_metrics {
    char name[256];
    atomic_llong prompt_tokens, generated_tokens;
    hist ttft, itl;
};

struct exsa_metrics {
    const char *const *endpoints;
    int n_endpoints;
    atomic_llong *requests; /* [(n_endpoints + 1) * N_STATUS] */
    hist *duration;         /* [n_endpoints + 1] */
    pthread_mutex_t mu;     /* guards n_models (slot creation) */
    int n_models;
    exsa_model_metrics models[MAX_MODELS + 1]; /* last: "_other" */
};

static void hist_observe(hist *h, const double *bounds, int nb, double v)
{
    int i = 0;
    while (i < nb && v > bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    if (v > 0)
        atomic_fetch_add_explicit(&h->sum_ns, (long long)(v * 1e9), memory_order_relaxed);
}

exsa_metrics *exsa_metrics_create(const char *const *endpoints, int n_endpoints, exsa_err *err)
{
    exsa_metrics *m = calloc(1, sizeof *m);
    if (!m || n_endpoints < 0) {
        free(m);
        exsa_err_set(err, EXSA_ENOMEM, "metrics: out of memory");
        return NULL;
    }
    m->endpoints = endpoints;
    m->n_endpoints = n_endpoints;
    m->requests = calloc((size_t)(n_endpoints + 1) * N_STATUS, sizeof *m->requests);
    m->duration = calloc((size_t)n_endpoints + 1, sizeof *m->duration);
    if (!m->requests || !m->duration) {
        exsa_metrics_free(m);
        exsa_err_set(err, EXSA_ENOMEM, "metrics: out of memory");
        return NULL;
    }
    pthread_mutex_init(&m->mu, NULL);
    snprintf(m->models[MAX_MODELS].name, sizeof m->models[MAX_MODELS].name, "_other");
    return m;
}

void exsa_metrics_free(exsa_metrics *m)
{
    if (!m)
        return;
    if (m->requests)
        pthread_mutex_destroy(&m->mu);
    free(m->requests);
    free(m->duration);
    free(m);
}

void exsa_metrics_request(exsa_metrics *m, int endpoint, int status, double seconds)
{
    if (endpoint < 0 || endpoint >= m->n_endpoints)
        endpoint = m->n_endpoints;
    int s = N_STATUS - 1;
    for (int i = 0; i < N_STATUS - 1; i++)
        if (status_codes[i] == status)
            s = i;
    atomic_fetch_add_explicit(&m->requests[endpoint * N_STATUS + s], 1, memory_order_relaxed);
    hist_observe(&m->duration[endpoint], dur_bounds,
                 (int)(sizeof dur_bounds / sizeof dur_bounds[0]), seconds);
}

exsa_model_metrics *exsa_metrics_model(exsa_metrics *m, const char *model)
{
    if (!model)
        model = "";
    pthread_mutex_lock(&m->mu);
    exsa_model_metrics *mm = NULL;
    for (int i = 0; i < m->n_models && !mm; i++)
        if (!strcmp(m->models[i].name, model))
            mm = &m->models[i];
    if (!mm && m->n_models < MAX_MODELS && strlen(model) < sizeof mm->name) {
        mm = &m->models[m->n_models];
        snprintf(mm->name, sizeof mm->name, "%s", model);
        /* Published after the name is written: readers scan [0, n_models). */
        m->n_models++;
    }
    pthread_mutex_unlock(&m->mu);
    return mm ? mm : &m->models[MAX_MODELS];
}

void exsa_metrics_prompt_tokens(exsa_model_metrics *mm, int n)
{
    atomic_fetch_add_explicit(&mm->prompt_tokens, n, memory_order_relaxed);
}

void exsa_metrics_token(exsa_model_metrics *mm, double gap_s)
{
    atomic_fetch_add_explicit(&mm->generated_tokens, 1, memory_order_relaxed);
    if (gap_s >= 0)
        hist_observe(&mm->itl, itl_bounds, (int)(sizeof itl_bounds / sizeof itl_bounds[0]), gap_s);
}

void exsa_metrics_ttft(exsa_model_metrics *mm, double seconds)
{
    hist_observe(&mm->ttft, ttft_bounds, (int)(sizeof ttft_bounds / sizeof ttft_bounds[0]),
                 seconds);
}

/* ---- exposition ---- */

/* Label values escape backslash, double quote and newline. */
static void label(exsa_strbuf *o, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            exsa_strbuf_printf(o, "\\%c", *s);
        else if (*s == '\n')
            exsa_strbuf_puts(o, "\\n");
        else
            exsa_strbuf_append(o, s, 1);
    }
}

static void header(exsa_strbuf *o, const char *name, const char *type, const char *help)
{
    exsa_strbuf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void hist_render(exsa_strbuf *o, const char *name, const char *lname, const char *lval,
                        hist *h, const double *bounds, int nb)
{
    long long cum = 0;
    for (int i = 0; i <= nb; i++) {
        cum += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        exsa_strbuf_printf(o, "%s_bucket{%s=\"", name, lname);
        label(o, lval);
        if (i < nb)
            exsa_strbuf_printf(o, "\",le=\"%g\"} %lld\n", bounds[i], cum);
        else
            exsa_strbuf_printf(o, "\",le=\"+Inf\"} %lld\n", cum);
    }
    exsa_strbuf_printf(o, "%s_sum{%s=\"", name, lname);
    label(o, lval);
    exsa_strbuf_printf(o, "\"} %.9g\n", (double)atomic_load(&h->sum_ns) / 1e9);
    exsa_strbuf_printf(o, "%s_count{%s=\"", name, lname);
    label(o, lval);
    /* The +Inf bucket equals the count by construction; print that sum so
     * the two never disagree within one scrape. */
    exsa_strbuf_printf(o, "\"} %lld\n", cum);
}

static void gauge_line(exsa_strbuf *o, const char *name, const char *model, long long v)
{
    exsa_strbuf_printf(o, "%s{model=\"", name);
    label(o, model);
    exsa_strbuf_printf(o, "\"} %lld\n", v);
}

int exsa_metrics_render(exsa_metrics *m, const exsa_metrics_engine *eng, int n_eng, double uptime_s,
                        exsa_strbuf *o)
{
    header(o, "exsa_build_info", "gauge", "Always 1; the version of this exsa build.");
    exsa_strbuf_printf(o, "exsa_build_info{version=\"%s\"} 1\n", EXSA_VERSION);
    header(o, "exsa_requests_total", "counter", "HTTP requests by endpoint and status.");
    for (int e = 0; e <= m->n_endpoints; e++)
        for (int s = 0; s < N_STATUS; s++) {
            long long v = atomic_load(&m->requests[e * N_STATUS + s]);
            if (!v)
                continue;
            exsa_strbuf_printf(o, "exsa_requests_total{endpoint=\"%s\",status=\"",
                               e < m->n_endpoints ? m->endpoints[e] : "other");
            if (s < N_STATUS - 1)
                exsa_strbuf_printf(o, "%d\"} %lld\n", status_codes[s], v);
            else
                exsa_strbuf_printf(o, "other\"} %lld\n", v);
        }
    header(o, "exsa_request_duration_seconds", "histogram",
           "Time from request start to its end (last byte of a stream).");
    for (int e = 0; e <= m->n_endpoints; e++) {
        if (!atomic_load(&m->duration[e].count))
            continue;
        hist_render(o, "exsa_request_duration_seconds", "endpoint",
                    e < m->n_endpoints ? m->endpoints[e] : "other", &m->duration[e], dur_bounds,
                    (int)(sizeof dur_bounds / sizeof dur_bounds[0]));
    }

    pthread_mutex_lock(&m->mu);
    int nm = m->n_models;
    pthread_mutex_unlock(&m->mu);
    exsa_model_metrics *mods[MAX_MODELS + 1];
    int k = 0;
    for (int i = 0; i < nm; i++)
        mods[k++] = &m->models[i];
    if (atomic_load(&m->models[MAX_MODELS].generated_tokens) ||
        atomic_load(&m->models[MAX_MODELS].prompt_tokens))
        mods[k++] = &m->models[MAX_MODELS];

    header(o, "exsa_prompt_tokens_total", "counter", "Prompt tokens of submitted requests.");
    for (int i = 0; i < k; i++)
        gauge_line(o, "exsa_prompt_tokens_total", mods[i]->name,
                   atomic_load(&mods[i]->prompt_tokens));
    header(o, "exsa_generated_tokens_total", "counter", "Tokens generated.");
    for (int i = 0; i < k; i++)
        gauge_line(o, "exsa_generated_tokens_total", mods[i]->name,
                   atomic_load(&mods[i]->generated_tokens));
    header(o, "exsa_time_to_first_token_seconds", "histogram",
           "Time from submission to the first generated token.");
    for (int i = 0; i < k; i++)
        hist_render(o, "exsa_time_to_first_token_seconds", "model", mods[i]->name, &mods[i]->ttft,
                    ttft_bounds, (int)(sizeof ttft_bounds / sizeof ttft_bounds[0]));
    header(o, "exsa_inter_token_latency_seconds", "histogram",
           "Time between consecutive tokens of a request, as the server reads them.");
    for (int i = 0; i < k; i++)
        hist_render(o, "exsa_inter_token_latency_seconds", "model", mods[i]->name, &mods[i]->itl,
                    itl_bounds, (int)(sizeof itl_bounds / sizeof itl_bounds[0]));

    header(o, "exsa_model_ready", "gauge", "1 when the model serves requests, 0 while loading.");
    for (int i = 0; i < n_eng; i++)
        gauge_line(o, "exsa_model_ready", eng[i].model, eng[i].ready);
    header(o, "exsa_queue_length", "gauge", "Requests waiting to be admitted.");
    for (int i = 0; i < n_eng; i++)
        gauge_line(o, "exsa_queue_length", eng[i].model, eng[i].queue_len);
    header(o, "exsa_running_sequences", "gauge", "Sequences being generated.");
    for (int i = 0; i < n_eng; i++)
        gauge_line(o, "exsa_running_sequences", eng[i].model, eng[i].running);
    header(o, "exsa_batch_sequences_peak", "gauge",
           "Most sequences batched into one forward step since the model loaded.");
    for (int i = 0; i < n_eng; i++)
        gauge_line(o, "exsa_batch_sequences_peak", eng[i].model, eng[i].batch_seqs_peak);
    header(o, "exsa_spec_draft_tokens_total", "counter",
           "Speculative decoding: guessed tokens verified.");
    for (int i = 0; i < n_eng; i++)
        gauge_line(o, "exsa_spec_draft_tokens_total", eng[i].model, eng[i].spec_draft_tokens);
    header(o, "exsa_spec_accepted_tokens_total", "counter",
           "Speculative decoding: guessed tokens kept (each one a generated token).");
    for (int i = 0; i < n_eng; i++)
        gauge_line(o, "exsa_spec_accepted_tokens_total", eng[i].model, eng[i].spec_accepted_tokens);
    header(o, "exsa_kv_blocks_total", "gauge", "KV cache blocks in the pool.");
    for (int i = 0; i < n_eng; i++)
        gauge_line(o, "exsa_kv_blocks_total", eng[i].model, eng[i].kv_blocks_total);
    header(o, "exsa_kv_blocks_used", "gauge",
           "KV cache blocks in use (by sequences or the prefix cache).");
    for (int i = 0; i < n_eng; i++)
        gauge_line(o, "exsa_kv_blocks_used", eng[i].model,
                   eng[i].kv_blocks_total - eng[i].kv_blocks_free);
    header(o, "exsa_kv_blocks_free", "gauge", "KV cache blocks free.");
    for (int i = 0; i < n_eng; i++)
        gauge_line(o, "exsa_kv_blocks_free", eng[i].model, eng[i].kv_blocks_free);
    header(o, "exsa_gpu_memory_used_bytes", "gauge",
           "GPU memory in use on the model's device (all processes).");
    for (int i = 0; i < n_eng; i++)
        if (eng[i].gpu)
            gauge_line(o, "exsa_gpu_memory_used_bytes", eng[i].model, eng[i].gpu_used_bytes);
    header(o, "exsa_gpu_memory_total_bytes", "gauge", "GPU memory of the model's device.");
    for (int i = 0; i < n_eng; i++)
        if (eng[i].gpu)
            gauge_line(o, "exsa_gpu_memory_total_bytes", eng[i].model, eng[i].gpu_total_bytes);
    header(o, "exsa_gpu_weight_bytes", "gauge", "Bytes of the model's weights on the GPU.");
    for (int i = 0; i < n_eng; i++)
        if (eng[i].gpu)
            gauge_line(o, "exsa_gpu_weight_bytes", eng[i].model, eng[i].gpu_weight_bytes);
    header(o, "exsa_kv_blocks_cached", "gauge",
           "KV cache blocks held by the prefix cache (reusable, evictable).");
    for (int i = 0; i < n_eng; i++)
        gauge_line(o, "exsa_kv_blocks_cached", eng[i].model, eng[i].kv_blocks_cached);
    header(o, "exsa_prefix_cache_hit_tokens_total", "counter",
           "Prompt tokens served from the prefix cache (since the model was loaded).");
    for (int i = 0; i < n_eng; i++)
        gauge_line(o, "exsa_prefix_cache_hit_tokens_total", eng[i].model, eng[i].prefix_hit_tokens);
    header(o, "exsa_preemptions_total", "counter",
           "Sequences preempted for lack of KV blocks (since the model was loaded).");
    for (int i = 0; i < n_eng; i++)
        gauge_line(o, "exsa_preemptions_total", eng[i].model, eng[i].preemptions);
    header(o, "exsa_uptime_seconds", "gauge", "Seconds since the server started.");
    exsa_strbuf_printf(o, "exsa_uptime_seconds %.3f\n", uptime_s);
    return o->oom ? EXSA_ENOMEM : 0;
}
