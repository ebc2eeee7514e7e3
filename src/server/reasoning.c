#include "server/reasoning.h"

#include <string.h>

#include "exsa.h"

static const char OPEN[] = "<think>", CLOSE[] = "</think>";

void exsa_reasoning_init(exsa_reasoning *r, int start_in_think)
{
    memset(r, 0, sizeof *r);
    r->in_think = start_in_think != 0;
    r->skip_ws = r->in_think;
}

static int is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

/* One byte of text (not part of a marker) into the current part. */
static void put(exsa_reasoning *r, char c, exsa_strbuf *reasoning, exsa_strbuf *content)
{
    if (r->skip_ws && is_ws(c))
        return;
    r->skip_ws = 0;
    exsa_strbuf_append(r->in_think ? reasoning : content, &c, 1);
}

int exsa_reasoning_feed(exsa_reasoning *r, const char *s, size_t n, exsa_strbuf *reasoning,
                        exsa_strbuf *content)
{
    for (size_t i = 0; i < n; i++) {
        r->pend[r->n_pend++] = s[i];
        for (;;) {
            const char *m = r->in_think ? CLOSE : OPEN;
            size_t ml = r->in_think ? sizeof CLOSE - 1 : sizeof OPEN - 1;
            if (r->n_pend == ml && !memcmp(r->pend, m, ml)) {
                r->in_think = !r->in_think;
                r->skip_ws = 1;
                r->n_pend = 0;
                break;
            }
            if (r->n_pend < ml && !memcmp(r->pend, m, r->n_pend))
                break; /* may still become the marker */
            /* The first held byte cannot start the marker: it is text, and
             * the rest may (as in "<<think>"). */
            put(r, r->pend[0], reasoning, content);
            memmove(r->pend, r->pend + 1, --r->n_pend);
            if (r->n_pend == 0)
                break;
        }
    }
    return reasoning->oom || content->oom ? EXSA_ENOMEM : 0;
}

int exsa_reasoning_finish(exsa_reasoning *r, exsa_strbuf *reasoning, exsa_strbuf *content)
{
    for (size_t i = 0; i < r->n_pend; i++)
        put(r, r->pend[i], reasoning, content);
    r->n_pend = 0;
    return reasoning->oom || content->oom ? EXSA_ENOMEM : 0;
}

int exsa_reasoning_template_thinks(const char *src)
{
    return src && (strstr(src, OPEN) || strstr(src, CLOSE));
}

int exsa_reasoning_prompt_opened(const char *p, size_t len)
{
    while (len && is_ws(p[len - 1]))
        len--;
    return len >= sizeof OPEN - 1 && !memcmp(p + len - (sizeof OPEN - 1), OPEN, sizeof OPEN - 1);
}
