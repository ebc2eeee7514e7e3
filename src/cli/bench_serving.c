/* exsa bench --concurrency: the serving engine under C concurrent clients.
 * Each client thread sends --requests requests one after another (prompt of
 * --prompt random ids, the first --shared-prefix of them common to all
 * requests, --gen tokens with ignore_eos), reading the event stream as an
 * HTTP handler would. Reports aggregate generated tokens/s over the level's
 * wall time, time to first token and inter-token latency percentiles, and
 * the peak KV blocks in use. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "exsa.h"
#include "model/model.h"
#include "util/hash.h"
#include "util/timer.h"

typedef struct client {
    exsa_engine *e;
    int id, n_req, n_prompt, n_gen, n_shared, n_vocab;
    double *ttft, *itl; /* [n_req], [n_req * n_gen] ms */
    int n_itl, failed, generated;
    double decode_ms; /* first to last token, summed over requests */
    int decode_tokens; /* tokens after the first */
    int done; /* set (atomically) when the thread ends */
    char err[sizeof(((exsa_err *)0)->msg)];
} client;

static void *client_main(void *arg)
{
    client *c = arg;
    int32_t *ids = malloc((size_t)c->n_prompt * sizeof *ids);
    if (!ids) {
        c->failed = c->n_req;
        __atomic_store_n(&c->done, 1, __ATOMIC_RELEASE);
        return NULL;
    }
    for (int r = 0; r < c->n_req; r++) {
        uint64_t rs = 0x51ED + (uint64_t)c->id * 1000 + (uint64_t)r;
        uint64_t shared = 0xC0FFEE;
        for (int i = 0; i < c->n_prompt; i++)
            ids[i] = (int32_t)((i < c->n_shared ? exsa_splitmix64(&shared)
                                                : exsa_splitmix64(&rs)) % (uint64_t)c->n_vocab);
        exsa_request_params p;
        exsa_request_params_default(&p);
        p.prompt_ids = ids;
        p.n_prompt_ids = c->n_prompt;
        p.max_tokens = c->n_gen;
        p.ignore_eos = 1;
        p.sampling.seed = rs;
        exsa_err err = {0};
        int64_t t0 = exsa_time_ns(), last = 0;
        exsa_request *q = exsa_engine_submit(c->e, &p, &err);
        if (!q) {
            c->failed++;
            snprintf(c->err, sizeof c->err, "%s", err.msg);
            continue;
        }
        exsa_event ev;
        int n = 0, finish = 0;
        while (exsa_request_next(q, &ev, -1) == 0) {
            int64_t now = exsa_time_ns();
            if (ev.type == EXSA_EVENT_TOKEN) {
                if (n == 0)
                    c->ttft[r] = (double)(now - t0) / 1e6;
                else {
                    c->itl[c->n_itl++] = (double)(now - last) / 1e6;
                    c->decode_ms += (double)(now - last) / 1e6;
                    c->decode_tokens++;
                }
                last = now;
                n++;
            } else {
                finish = ev.finish;
                break;
            }
        }
        exsa_request_free(q);
        c->generated += n;
        if (finish != EXSA_FINISH_LENGTH || n != c->n_gen)
            c->failed++;
    }
    free(ids);
    __atomic_store_n(&c->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    int k = (int)ceil(p / 100.0 * n) - 1;
    return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}

int exsa_bench_serving(const char *path, const exsa_model_params *mp, const char *levels,
                       int n_prompt, int n_gen, int n_shared, int n_req, int threads, int n_ctx,
                       int json)
{
    /* The vocabulary bounds the random prompt ids (a CPU load reads it). */
    exsa_err merr = {0};
    exsa_model_params cpu = *mp;
    cpu.device = EXSA_DEVICE_CPU;
    exsa_model *m = exsa_model_load_ex(path, &cpu, &merr);
    if (!m)
        return exsa_cli_fail("bench", "%s", merr.msg);
    const int n_vocab = exsa_model_hparams(m)->n_vocab;
    exsa_model_free(m);
    const char *cmd = "bench";
    int lv[32], n_lv = 0;
    for (const char *s = levels; *s && n_lv < 32;) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 1024)
            return exsa_cli_fail(cmd, "--concurrency expects a list like 1,4,8,16");
        lv[n_lv++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return exsa_cli_fail(cmd, "--concurrency expects a list like 1,4,8,16");
    }
    if (n_shared > n_prompt)
        return exsa_cli_fail(cmd, "--shared-prefix %d exceeds --prompt %d", n_shared, n_prompt);
    if (json)
        printf("[\n");
    else
        printf("| clients | requests | gen t/s | decode t/s | ttft p50 ms | ttft p99 ms | "
               "itl p50 ms | itl p99 ms | kv peak blocks | prefix hit tokens | failed |\n"
               "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (int l = 0; l < n_lv; l++) {
        int C = lv[l];
        exsa_engine_params ep;
        exsa_engine_params_default(&ep);
        ep.model_path = path;
        ep.n_threads = threads;
        ep.device = mp->device;
        ep.n_gpu_layers = mp->n_gpu_layers;
        ep.gpu = mp->gpu;
        ep.n_ctx = n_ctx > 0 ? n_ctx : n_prompt + n_gen;
        ep.max_batch_size = C;
        ep.queue_size = C * n_req + 16;
        exsa_err err = {0};
        exsa_engine *e = exsa_engine_create(&ep, &err);
        if (!e)
            return exsa_cli_fail(cmd, "%s", err.msg);
        exsa_engine_stats st;
        client *cs = calloc((size_t)C, sizeof *cs);
        pthread_t *th = calloc((size_t)C, sizeof *th);
        int ok = cs && th;
        for (int i = 0; ok && i < C; i++) {
            cs[i] = (client){.e = e, .id = i, .n_req = n_req, .n_prompt = n_prompt,
                             .n_gen = n_gen, .n_shared = n_shared, .n_vocab = n_vocab};
            cs[i].ttft = calloc((size_t)n_req, sizeof(double));
            cs[i].itl = calloc((size_t)n_req * (size_t)(n_gen > 0 ? n_gen : 1), sizeof(double));
            ok = cs[i].ttft && cs[i].itl;
        }
        if (!ok) {
            exsa_engine_free(e);
            return exsa_cli_fail(cmd, "out of memory");
        }
        int64_t t0 = exsa_time_ns();
        for (int i = 0; i < C; i++)
            pthread_create(&th[i], NULL, client_main, &cs[i]);
        /* Peak KV use, sampled while the clients run. */
        int peak = 0, alive = C;
        while (alive > 0) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
            exsa_engine_stats_get(e, &st);
            int used = st.kv_blocks_total - st.kv_blocks_free;
            peak = used > peak ? used : peak;
            alive = 0;
            for (int i = 0; i < C; i++)
                alive += !__atomic_load_n(&cs[i].done, __ATOMIC_ACQUIRE);
        }
        for (int i = 0; i < C; i++)
            pthread_join(th[i], NULL);
        double wall = (double)(exsa_time_ns() - t0) / 1e9;
        exsa_engine_stats_get(e, &st);
        int total_req = C * n_req, gen = 0, failed = 0, n_itl = 0;
        double *ttft = calloc((size_t)total_req, sizeof *ttft);
        double *itl = calloc((size_t)total_req * (size_t)(n_gen > 0 ? n_gen : 1), sizeof *itl);
        for (int i = 0; i < C && ttft && itl; i++) {
            memcpy(ttft + i * n_req, cs[i].ttft, (size_t)n_req * sizeof *ttft);
            memcpy(itl + n_itl, cs[i].itl, (size_t)cs[i].n_itl * sizeof *itl);
            n_itl += cs[i].n_itl;
            gen += cs[i].generated;
            failed += cs[i].failed;
        }
        double tps = gen / wall;
        /* Decode speed as llama-batched-bench's S_TG counts it: each client's
         * tokens after its first over the time they took, summed (clients
         * decode side by side in one batch). */
        double dtps = 0;
        for (int i = 0; i < C; i++)
            if (cs[i].decode_ms > 0)
                dtps += cs[i].decode_tokens / (cs[i].decode_ms / 1e3);
        double t50 = ttft ? pct(ttft, total_req, 50) : 0, t99 = ttft ? pct(ttft, total_req, 99) : 0;
        double i50 = itl ? pct(itl, n_itl, 50) : 0, i99 = itl ? pct(itl, n_itl, 99) : 0;
        if (json)
            printf("%s  {\"test\": \"serve\", \"concurrency\": %d, \"requests\": %d, "
                   "\"n_prompt\": %d, \"n_gen\": %d, \"shared_prefix\": %d, \"gen_tps\": %.3f, "
                   "\"decode_tps\": %.3f, "
                   "\"ttft_ms_p50\": %.3f, \"ttft_ms_p99\": %.3f, \"itl_ms_p50\": %.3f, "
                   "\"itl_ms_p99\": %.3f, \"kv_blocks_peak\": %d, \"kv_blocks_total\": %d, "
                   "\"block_size\": %d, \"prefix_hit_tokens\": %lld, \"preemptions\": %lld, "
                   "\"failed\": %d, \"wall_s\": %.3f}",
                   l ? ",\n" : "", C, total_req, n_prompt, n_gen, n_shared, tps, dtps, t50, t99, i50,
                   i99, peak, st.kv_blocks_total, st.block_size,
                   (long long)st.prefix_hit_tokens, (long long)st.preemptions, failed, wall);
        else
            printf("| %d | %d | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %d / %d | %lld | %d |\n",
                   C, total_req, tps, dtps, t50, t99, i50, i99, peak, st.kv_blocks_total,
                   (long long)st.prefix_hit_tokens, failed);
        fflush(stdout);
        for (int i = 0; i < C; i++) {
            free(cs[i].ttft);
            free(cs[i].itl);
            if (cs[i].failed && cs[i].err[0])
                fprintf(stderr, "exsa bench: client %d: %s\n", i, cs[i].err);
        }
        free(ttft);
        free(itl);
        free(cs);
        free(th);
        exsa_engine_free(e);
    }
    if (json)
        printf("\n]\n");
    return 0;
}
