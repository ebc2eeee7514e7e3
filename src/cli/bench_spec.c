/* exsa bench --spec-prompt: speculative decoding against none on the same
 * prompt (greedy, one engine, runs interleaved: guess, none, guess, ...).
 * The prompt goes through the model's chat template as one user message.
 * Reports decode tokens/s of each (first to last token), the speed-up, and
 * the guesses verified and kept. The outputs must be the same tokens; a
 * difference is reported as an error (speculation is exact). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli/cli.h"
#include "exsa.h"
#include "util/err.h"

typedef struct spec_run {
    double tps;
    int n, drafted, accepted;
    int32_t *ids;
} spec_run;

static int run_once(exsa_engine *e, const int32_t *prompt, int n_prompt, int n_gen, int spec,
                    spec_run *out, exsa_err *err)
{
    exsa_request_params rp;
    exsa_request_params_default(&rp);
    rp.prompt_ids = prompt;
    rp.n_prompt_ids = n_prompt;
    rp.max_tokens = n_gen;
    rp.sampling.temperature = 0;
    rp.spec = spec;
    exsa_request *r = exsa_engine_submit(e, &rp, err);
    if (!r)
        return err->code;
    out->n = 0;
    for (;;) {
        exsa_event ev;
        int rc = exsa_request_next(r, &ev, -1);
        if (rc) {
            exsa_request_free(r);
            return exsa_err_set(err, rc, "bench: the request stream failed");
        }
        if (ev.type == EXSA_EVENT_DONE) {
            double ms = ev.timings.total_ms - ev.timings.ttft_ms;
            out->tps = out->n > 1 && ms > 0 ? (out->n - 1) * 1e3 / ms : 0;
            out->drafted = ev.usage.draft_tokens;
            out->accepted = ev.usage.accepted_tokens;
            rc = ev.finish == EXSA_FINISH_ERROR ? exsa_err_set(err, EXSA_EINVAL, "%s", ev.error)
                                                : 0;
            exsa_request_free(r);
            return rc;
        }
        if (out->n < n_gen)
            out->ids[out->n++] = ev.token;
    }
}

int exsa_bench_spec(const char *path, const exsa_model_params *mp, const exsa_engine_params *sp,
                    const char *prompt_text, int n_gen, int reps, int threads, int json)
{
    const char *cmd = "bench";
    exsa_err err = {0};
    exsa_engine_params ep;
    exsa_engine_params_default(&ep);
    ep.model_path = path;
    ep.n_threads = threads;
    ep.device = mp->device;
    ep.n_gpu_layers = mp->n_gpu_layers;
    ep.gpu = mp->gpu;
    ep.max_batch_size = 1;
    ep.prefix_cache = 0; /* both runs prefill the same way */
    ep.spec = 0;
    ep.draft_model_path = sp->draft_model_path;
    ep.spec_n_max = sp->spec_n_max;
    ep.spec_n_min = sp->spec_n_min;
    ep.spec_p_min = sp->spec_p_min;
    exsa_engine *e = exsa_engine_create(&ep, &err);
    if (!e)
        return exsa_cli_fail(cmd, "%s", err.msg);
    int rc = 1;
    int32_t *ids = NULL;
    spec_run run[2] = {{0}};
    double sum[2] = {0, 0};
    long drafted = 0, accepted = 0;
    json_t *msgs = json_pack("[{s:s, s:s}]", "role", "user", "content", prompt_text);
    char *mj = msgs ? json_dumps(msgs, 0) : NULL;
    char *text = mj ? exsa_engine_chat_render(e, mj, NULL, 1, &err) : NULL;
    json_decref(msgs);
    free(mj);
    if (!text) {
        exsa_cli_fail(cmd, "--spec-prompt: %s", err.msg[0] ? err.msg : "out of memory");
        goto done;
    }
    int64_t n = exsa_engine_tokenize(e, text, strlen(text), 1, 1, NULL, 0, &err);
    if (n <= 0 || !(ids = malloc((size_t)n * sizeof *ids)) ||
        exsa_engine_tokenize(e, text, strlen(text), 1, 1, ids, n, &err) != n ||
        !(run[0].ids = malloc((size_t)n_gen * sizeof(int32_t))) ||
        !(run[1].ids = malloc((size_t)n_gen * sizeof(int32_t)))) {
        exsa_cli_fail(cmd, "--spec-prompt: %s", err.msg[0] ? err.msg : "no tokens");
        goto done;
    }
    for (int k = 0; k < reps; k++)
        for (int s = 1; s >= 0; s--) {
            if (run_once(e, ids, (int)n, n_gen, s, &run[s], &err)) {
                exsa_cli_fail(cmd, "%s", err.msg);
                goto done;
            }
            sum[s] += run[s].tps;
            if (s) {
                drafted += run[s].drafted;
                accepted += run[s].accepted;
            }
        }
    if (run[0].n != run[1].n || memcmp(run[0].ids, run[1].ids, (size_t)run[0].n * sizeof(int32_t))) {
        exsa_cli_fail(cmd, "speculation changed the output (%d vs %d tokens): a bug", run[1].n,
                      run[0].n);
        goto done;
    }
    double t0 = sum[0] / reps, t1 = sum[1] / reps;
    const char *how = sp->draft_model_path ? "draft model" : "n-gram";
    if (json)
        printf("{\"proposer\": \"%s\", \"prompt_tokens\": %lld, \"generated\": %d, "
               "\"tps_plain\": %.2f, \"tps_spec\": %.2f, \"speedup\": %.3f, \"drafted\": %ld, "
               "\"accepted\": %ld}\n",
               how, (long long)n, run[1].n, t0, t1, t0 > 0 ? t1 / t0 : 0, drafted, accepted);
    else
        printf("speculative (%s), %lld prompt tokens, %d generated, %d runs each, interleaved:\n"
               "  without: %.2f t/s   with: %.2f t/s   speed-up %.2fx   guesses kept %ld of %ld "
               "(%.1f%%)\n",
               how, (long long)n, run[1].n, reps, t0, t1, t0 > 0 ? t1 / t0 : 0, accepted, drafted,
               drafted ? 100.0 * accepted / drafted : 0);
    rc = 0;
done:
    free(text);
    free(ids);
    free(run[0].ids);
    free(run[1].ids);
    exsa_engine_free(e);
    return rc;
}
