/* One generation path for `run` and `chat`: submit to the engine, stream
 * the events, collect what came. */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static int reserve(void **buf, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *p = realloc(*buf, n * elem);
    if (!p)
        return -1;
    *buf = p;
    *cap = n;
    return 0;
}

int exsa_cli_generate(exsa_engine *e, const exsa_request_params *p, FILE *out,
                      volatile sig_atomic_t *interrupt, exsa_cli_gen *g, exsa_err *err)
{
    g->n_ids = 0;
    g->len = 0;
    g->finish = EXSA_FINISH_NONE;
    g->error[0] = 0;
    memset(&g->usage, 0, sizeof g->usage);
    memset(&g->timings, 0, sizeof g->timings);
    if (reserve((void **)&g->text, &g->cap, 1, 1))
        return exsa_cli_fail("generate", "out of memory"), EXSA_ENOMEM;
    g->text[0] = 0;
    exsa_request *r = exsa_engine_submit(e, p, err);
    if (!r)
        return err->code ? err->code : EXSA_EINVAL;
    int cancelled = 0;
    for (;;) {
        if (interrupt && *interrupt && !cancelled) {
            exsa_request_cancel(r);
            cancelled = 1;
        }
        exsa_event ev;
        int rc = exsa_request_next(r, &ev, interrupt ? 50 : -1);
        if (rc == EXSA_ETIMEDOUT)
            continue;
        if (rc != 0)
            break; /* only after DONE, which ends the loop first */
        if (ev.type == EXSA_EVENT_DONE) {
            g->finish = ev.finish;
            g->usage = ev.usage;
            g->timings = ev.timings;
            if (ev.error)
                snprintf(g->error, sizeof g->error, "%s", ev.error);
            break;
        }
        size_t n_ids = (size_t)g->cap_ids;
        if (reserve((void **)&g->ids, &n_ids, (size_t)g->n_ids + 1, sizeof *g->ids) ||
            reserve((void **)&g->text, &g->cap, g->len + ev.text_len + 1, 1)) {
            exsa_request_cancel(r);
            cancelled = 1;
            snprintf(g->error, sizeof g->error, "out of memory");
            continue;
        }
        g->cap_ids = (int)n_ids;
        g->ids[g->n_ids++] = ev.token;
        memcpy(g->text + g->len, ev.text, ev.text_len);
        g->len += ev.text_len;
        g->text[g->len] = 0;
        if (out && ev.text_len) {
            fwrite(ev.text, 1, ev.text_len, out);
            fflush(out);
        }
    }
    exsa_request_free(r);
    return 0;
}

void exsa_cli_gen_free(exsa_cli_gen *g)
{
    free(g->ids);
    free(g->text);
    memset(g, 0, sizeof *g);
}
