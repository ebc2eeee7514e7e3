#include "server/api_openai.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/app.h"
#include "server/gen_job.h"
#include "server/json_text.h"
#include "server/reasoning.h"
#include "server/request_params.h"
#include "server/tool_calls.h"
#include "util/err.h"

#define KEEPALIVE_MS 10000
#define MAX_EMBED_INPUTS 256

/* ---- one chat / completions request ---- */

typedef struct oai {
    exsa_gen_job *job;
    exsa_gen_params g;
    exsa_gen_prompt *prompts;
    int n_prompts;
    int chat; /* 1: chat.completion, 0: text_completion */
    char id[160];
    long long created;
    int role_for;      /* stream: the choice that last got its role chunk */
    size_t *text_len;  /* per choice: bytes of text so far (text_offset) */
    exsa_strbuf *text; /* per choice (not streamed) */
    json_t **lp;       /* per choice logprobs (not streamed) */
    int ended;
    /* Tools (chat): the request's, and per choice the output parser and
     * how many of its calls were streamed. */
    exsa_tool_spec tools;
    exsa_tool_parser **tp;
    int *calls_sent;
    int think;           /* chat: <think> goes to reasoning_content (reasoning_format) */
    int opened;          /* the prompt opened <think> */
    exsa_reasoning *rsn; /* per choice (stream) */
    exsa_strbuf rpiece, cpiece; /* one piece's reasoning / content (stream) */
} oai;

static void oai_free(void *ctx)
{
    oai *o = ctx;
    if (!o)
        return;
    int n = o->job ? o->job->n_ch : 0;
    exsa_gen_job_free(o->job);
    exsa_reqparams_free(&o->g);
    for (int i = 0; i < o->n_prompts; i++)
        free(o->prompts[i].ids);
    free(o->prompts);
    if (o->text)
        for (int i = 0; i < n; i++)
            exsa_strbuf_free(&o->text[i]);
    free(o->text);
    if (o->lp)
        for (int i = 0; i < n; i++)
            json_decref(o->lp[i]);
    free(o->lp);
    free(o->text_len);
    if (o->tp)
        for (int i = 0; i < n; i++)
            exsa_tool_parser_free(o->tp[i]);
    free(o->tp);
    free(o->calls_sent);
    exsa_tool_spec_free(&o->tools);
    free(o->rsn);
    exsa_strbuf_free(&o->rpiece);
    exsa_strbuf_free(&o->cpiece);
    free(o);
}


static json_t *bytes_json(const char *s, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_integer((unsigned char)s[i]));
    return a;
}

/* Chat: {"token", "logprob", "bytes", "top_logprobs": [...]} */
static json_t *lp_chat_entry(oai *o, const exsa_event *ev)
{
    char t[512];
    size_t n = exsa_gen_job_token_text(o->job, ev->token, t, sizeof t);
    json_t *e = json_object();
    json_t *top = json_array();
    if (!e || !top) {
        json_decref(e);
        json_decref(top);
        return NULL;
    }
    json_object_set_new(e, "token", exsa_json_text(t, n));
    json_object_set_new(e, "logprob", exsa_json_real(ev->logprob));
    n = exsa_gen_job_token_bytes(o->job, ev->token, t, sizeof t);
    json_object_set_new(e, "bytes", bytes_json(t, n));
    for (int i = 0; i < ev->n_top; i++) {
        size_t m = exsa_gen_job_token_text(o->job, ev->top[i].token, t, sizeof t);
        json_t *x = json_object();
        if (!x)
            break;
        json_object_set_new(x, "token", exsa_json_text(t, m));
        json_object_set_new(x, "logprob", exsa_json_real(ev->top[i].logprob));
        m = exsa_gen_job_token_bytes(o->job, ev->top[i].token, t, sizeof t);
        json_object_set_new(x, "bytes", bytes_json(t, m));
        json_array_append_new(top, x);
    }
    json_object_set_new(e, "top_logprobs", top);
    return e;
}

/* Completions (legacy shape): appends one token to {"tokens", "token_logprobs",
 * "top_logprobs", "text_offset"}. */
static void lp_completion_add(oai *o, json_t *lp, const exsa_event *ev, size_t offset)
{
    char t[512];
    size_t n = exsa_gen_job_token_text(o->job, ev->token, t, sizeof t);
    json_array_append_new(json_object_get(lp, "tokens"), exsa_json_text(t, n));
    json_array_append_new(json_object_get(lp, "token_logprobs"), exsa_json_real(ev->logprob));
    json_t *top = json_object();
    for (int i = 0; top && i < ev->n_top; i++) {
        size_t m = exsa_gen_job_token_text(o->job, ev->top[i].token, t, sizeof t);
        /* Two tokens may print alike: keep the likelier (the first). */
        if (!json_object_getn(top, t, strnlen(t, m)))
            exsa_json_set_text_key(top, t, m, exsa_json_real(ev->top[i].logprob));
    }
    json_array_append_new(json_object_get(lp, "top_logprobs"), top);
    json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)offset));
}

static json_t *lp_completion_new(void)
{
    json_t *lp = json_object();
    if (!lp)
        return NULL;
    json_object_set_new(lp, "tokens", json_array());
    json_object_set_new(lp, "token_logprobs", json_array());
    json_object_set_new(lp, "top_logprobs", json_array());
    json_object_set_new(lp, "text_offset", json_array());
    return lp;
}

static json_t *usage_json(const oai *o)
{
    int pt = exsa_gen_job_prompt_tokens(o->job), ct = exsa_gen_job_generated_tokens(o->job);
    int cached = 0, last = -1, drafted = 0, accepted = 0;
    for (int i = 0; i < o->job->n_ch; i++) {
        if (o->job->ch[i].prompt != last) {
            cached += o->job->ch[i].usage.cached_tokens;
            last = o->job->ch[i].prompt;
        }
        drafted += o->job->ch[i].usage.draft_tokens;
        accepted += o->job->ch[i].usage.accepted_tokens;
    }
    json_t *u = json_object();
    if (!u)
        return NULL;
    json_object_set_new(u, "prompt_tokens", json_integer(pt));
    json_object_set_new(u, "completion_tokens", json_integer(ct));
    json_object_set_new(u, "total_tokens", json_integer((json_int_t)pt + ct));
    json_t *d = json_object();
    if (d) {
        json_object_set_new(d, "cached_tokens", json_integer(cached));
        json_object_set_new(u, "prompt_tokens_details", d);
    }
    /* OpenAI's predicted-output counts: speculative guesses kept and
     * dropped (the kept ones are part of completion_tokens). */
    if ((d = json_object())) {
        json_object_set_new(d, "accepted_prediction_tokens", json_integer(accepted));
        json_object_set_new(d, "rejected_prediction_tokens", json_integer(drafted - accepted));
        json_object_set_new(u, "completion_tokens_details", d);
    }
    return u;
}

static json_t *base_object(const oai *o, const char *object)
{
    json_t *j = json_object();
    if (!j)
        return NULL;
    json_object_set_new(j, "id", exsa_json_str(o->id));
    json_object_set_new(j, "object", json_string(object));
    json_object_set_new(j, "created", json_integer(o->created));
    json_object_set_new(j, "model", exsa_json_str(o->job->info.name));
    json_object_set_new(j, "system_fingerprint", json_string("exsa-" EXSA_VERSION));
    return j;
}

/* ---- streaming ---- */

static void sse(exsa_strbuf *out, json_t *j)
{
    char *s = j ? exsa_json_dump(j) : NULL;
    json_decref(j);
    if (!s) {
        out->oom = 1;
        return;
    }
    exsa_strbuf_puts(out, "data: ");
    exsa_strbuf_puts(out, s);
    exsa_strbuf_puts(out, "\n\n");
    free(s);
}

static json_t *chunk(const oai *o, int index, json_t *delta_or_text, json_t *logprobs,
                     const char *finish)
{
    json_t *j = base_object(o, o->chat ? "chat.completion.chunk" : "text_completion");
    json_t *choices = json_array(), *c = json_object();
    if (!j || !choices || !c) {
        json_decref(j);
        json_decref(choices);
        json_decref(c);
        json_decref(delta_or_text);
        json_decref(logprobs);
        return NULL;
    }
    json_object_set_new(c, "index", json_integer(index));
    json_object_set_new(c, o->chat ? "delta" : "text", delta_or_text);
    json_object_set_new(c, "logprobs", logprobs ? logprobs : json_null());
    json_object_set_new(c, "finish_reason", finish ? json_string(finish) : json_null());
    json_array_append_new(choices, c);
    json_object_set_new(j, "choices", choices);
    return j;
}

/* Whether choices' text goes through tool-call parsers. */
static int has_tools(const oai *o)
{
    return o->chat && o->tools.tools && o->tools.choice != EXSA_TOOL_CHOICE_NONE;
}

/* Whether messages hold an assistant's tool calls or a tool result. */
static int history_has_tools(const json_t *msgs)
{
    size_t i;
    const json_t *m;
    json_array_foreach(msgs, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        const json_t *calls = json_object_get(m, "tool_calls");
        if ((role && !strcmp(role, "tool")) || (json_is_array(calls) && json_array_size(calls)))
            return 1;
    }
    return 0;
}

static json_t *tool_call_json(const exsa_tool_call *tc, int index, int with_index)
{
    json_t *fn = json_pack("{s:s, s:s}", "name", tc->name, "arguments", tc->arguments);
    json_t *c = json_pack("{s:s, s:s, s:o}", "id", tc->id, "type", "function", "function", fn);
    if (c && with_index)
        json_object_set_new(c, "index", json_integer(index));
    return c;
}

/* The finish reason of a choice: "tool_calls" when it ended with calls. */
static const char *finish_of(const oai *o, int idx, int finish)
{
    if (has_tools(o) && o->tp[idx] && exsa_tool_parser_n_calls(o->tp[idx]) > 0 &&
        finish == EXSA_FINISH_STOP)
        return "tool_calls";
    return exsa_gen_finish_name(finish);
}

/* Stream: a chunk for new content and one for each call completed since. */
static void stream_tool_text(oai *o, int idx, int index, const char *text, size_t len,
                             int finish, exsa_strbuf *out)
{
    exsa_strbuf content;
    exsa_strbuf_init(&content);
    exsa_tool_parser *tp = o->tp[idx];
    if (len)
        exsa_tool_parser_feed(tp, text, len, &content);
    if (finish)
        exsa_tool_parser_finish(tp, &content);
    if (content.len) {
        json_t *d = json_object();
        json_object_set_new(d, "content", exsa_json_text(content.p, content.len));
        sse(out, chunk(o, index, d, NULL, NULL));
    }
    exsa_strbuf_free(&content);
    for (; o->calls_sent[idx] < exsa_tool_parser_n_calls(tp); o->calls_sent[idx]++) {
        const int k = o->calls_sent[idx];
        json_t *d = json_object();
        json_t *arr = json_array();
        json_array_append_new(arr, tool_call_json(exsa_tool_parser_call(tp, k), k, 1));
        json_object_set_new(d, "tool_calls", arr);
        sse(out, chunk(o, index, d, NULL, NULL));
    }
}

static void stream_error(exsa_strbuf *out, const char *type, const char *code, const char *msg)
{
    sse(out, exsa_http_error_json(type, NULL, code, msg));
    exsa_strbuf_puts(out, "data: [DONE]\n\n");
}

/* A chat delta for a piece of text, split into reasoning_content and
 * content when the request asks for it; NULL when there is nothing to say
 * (the piece went into a held marker prefix). final: the choice ended. */
static json_t *chat_delta(oai *o, int idx, const char *t, size_t n, int final)
{
    json_t *d = json_object();
    if (!d)
        return NULL;
    if (!o->think) {
        json_object_set_new(d, "content", exsa_json_text(t, n));
        return d;
    }
    exsa_strbuf_reset(&o->rpiece);
    exsa_strbuf_reset(&o->cpiece);
    exsa_reasoning_feed(&o->rsn[idx], t, n, &o->rpiece, &o->cpiece);
    if (final)
        exsa_reasoning_finish(&o->rsn[idx], &o->rpiece, &o->cpiece);
    if (o->rpiece.len)
        json_object_set_new(d, "reasoning_content", exsa_json_text(o->rpiece.p, o->rpiece.len));
    if (o->cpiece.len)
        json_object_set_new(d, "content", exsa_json_text(o->cpiece.p, o->cpiece.len));
    if (json_object_size(d) == 0) {
        json_decref(d);
        return NULL;
    }
    return d;
}

static int oai_pull(void *ctx, exsa_strbuf *out)
{
    oai *o = ctx;
    if (o->ended)
        return 1;
    for (;;) {
        int idx = 0;
        exsa_event ev;
        int st = exsa_gen_job_next(o->job, KEEPALIVE_MS, &idx, &ev);
        if (st == EXSA_GEN_IDLE) {
            exsa_strbuf_puts(out, ": keep-alive\n\n");
            return 0;
        }
        if (st == EXSA_GEN_TIMEOUT) {
            char msg[128];
            snprintf(msg, sizeof msg,
                     "request timed out after %g s (--timeout); generation cancelled",
                     o->job->app->cfg->request_timeout_s);
            stream_error(out, "timeout_error", "timeout", msg);
            o->ended = 1;
            return 1;
        }
        if (st == EXSA_GEN_GONE)
            return -1;
        if (st == EXSA_GEN_END) {
            if (o->g.include_usage) {
                json_t *j = base_object(o, o->chat ? "chat.completion.chunk" : "text_completion");
                if (j) {
                    json_object_set_new(j, "choices", json_array());
                    json_object_set_new(j, "usage", usage_json(o));
                }
                sse(out, j);
            }
            exsa_strbuf_puts(out, "data: [DONE]\n\n");
            o->ended = 1;
            return 1;
        }
        exsa_gen_choice *c = &o->job->ch[idx];
        if (o->chat && o->role_for != idx) {
            json_t *d = json_object();
            if (d) {
                json_object_set_new(d, "role", json_string("assistant"));
                json_object_set_new(d, "content", json_string(""));
            }
            sse(out, chunk(o, c->index, d, NULL, NULL));
            o->role_for = idx;
        }
        if (ev.type == EXSA_EVENT_TOKEN) {
            if (ev.text_len == 0 && !o->g.logprobs) {
                if (exsa_strbuf_pending(out))
                    return 0;
                continue;
            }
            json_t *lp = NULL;
            if (o->g.logprobs) {
                if (o->chat) {
                    json_t *arr = json_array();
                    json_array_append_new(arr, lp_chat_entry(o, &ev));
                    lp = json_object();
                    if (lp) {
                        json_object_set_new(lp, "content", arr);
                        json_object_set_new(lp, "refusal", json_null());
                    } else {
                        json_decref(arr);
                    }
                } else if ((lp = lp_completion_new())) {
                    lp_completion_add(o, lp, &ev, o->text_len[idx]);
                }
            }
            o->text_len[idx] += ev.text_len;
            if (has_tools(o)) {
                stream_tool_text(o, idx, c->index, ev.text, ev.text_len, 0, out);
                json_decref(lp);
                if (exsa_strbuf_pending(out))
                    return 0;
                continue;
            }
            json_t *content;
            if (o->chat) {
                content = chat_delta(o, idx, ev.text, ev.text_len, 0);
                if (!content && !lp) {
                    if (exsa_strbuf_pending(out))
                        return 0;
                    continue;
                }
                if (!content)
                    content = json_object();
            } else {
                content = exsa_json_text(ev.text, ev.text_len);
            }
            sse(out, chunk(o, c->index, content, lp, NULL));
            return 0;
        }
        /* DONE of choice idx */
        if (c->finish == EXSA_FINISH_CANCEL) {
            stream_error(out, "server_error", "cancelled",
                         "generation cancelled (the server is shutting down)");
            o->ended = 1;
            return 1;
        }
        if (c->finish == EXSA_FINISH_ERROR) {
            stream_error(out, "server_error", "generation_error",
                         c->error[0] ? c->error : "generation failed");
            o->ended = 1;
            return 1;
        }
        if (has_tools(o))
            stream_tool_text(o, idx, c->index, NULL, 0, 1, out);
        else if (o->chat && o->think) {
            /* Bytes held as a possible marker are text after all. */
            json_t *rest = chat_delta(o, idx, "", 0, 1);
            if (rest)
                sse(out, chunk(o, c->index, rest, NULL, NULL));
        }
        json_t *last = o->chat ? json_object() : json_string("");
        sse(out, chunk(o, c->index, last, NULL, finish_of(o, idx, c->finish)));
        return 0;
    }
}

/* ---- not streamed ---- */

static void oai_collect_and_reply(oai *o, exsa_http_req *rq)
{
    exsa_gen_job *j = o->job;
    int n = j->n_ch;
    o->text = calloc((size_t)n, sizeof *o->text);
    o->lp = calloc((size_t)n, sizeof *o->lp);
    if (!o->text || !o->lp) {
        exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        exsa_strbuf_init(&o->text[i]);
        if (o->g.logprobs)
            o->lp[i] = o->chat ? json_array() : lp_completion_new();
    }
    j->watch_client = 1;
    for (;;) {
        int idx = 0;
        exsa_event ev;
        int st = exsa_gen_job_next(j, -1, &idx, &ev);
        if (st == EXSA_GEN_END)
            break;
        if (exsa_gen_job_reply_cut(j, st))
            return;
        if (st != EXSA_GEN_EVENT || ev.type != EXSA_EVENT_TOKEN)
            continue;
        if (o->g.logprobs && o->lp[idx]) {
            if (o->chat)
                json_array_append_new(o->lp[idx], lp_chat_entry(o, &ev));
            else
                lp_completion_add(o, o->lp[idx], &ev, o->text[idx].len);
        }
        exsa_strbuf_append(&o->text[idx], ev.text, ev.text_len);
    }
    for (int i = 0; i < n; i++) {
        if (j->ch[i].finish == EXSA_FINISH_CANCEL) {
            exsa_http_reply_error(rq, 503, "unavailable_error", NULL, "cancelled",
                                  "generation cancelled (the server is shutting down)");
            return;
        }
        if (j->ch[i].finish == EXSA_FINISH_ERROR) {
            exsa_http_reply_error(rq, 500, "server_error", NULL, "generation_error", "%s",
                                  j->ch[i].error[0] ? j->ch[i].error : "generation failed");
            return;
        }
        if (o->text[i].oom) {
            exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
            return;
        }
    }
    json_t *r = base_object(o, o->chat ? "chat.completion" : "text_completion");
    json_t *choices = json_array();
    if (!r || !choices) {
        json_decref(r);
        json_decref(choices);
        exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        json_t *c = json_object();
        if (!c)
            continue;
        json_object_set_new(c, "index", json_integer(j->ch[i].index));
        json_t *content = NULL, *reasoning = NULL, *calls = NULL;
        if (has_tools(o)) {
            exsa_strbuf txt;
            exsa_strbuf_init(&txt);
            exsa_tool_parser_feed(o->tp[i], o->text[i].p, o->text[i].len, &txt);
            exsa_tool_parser_finish(o->tp[i], &txt);
            const int nc = exsa_tool_parser_n_calls(o->tp[i]);
            content = txt.len || nc == 0 ? exsa_json_text(txt.p, txt.len) : json_null();
            exsa_strbuf_free(&txt);
            if (nc) {
                calls = json_array();
                for (int k = 0; k < nc; k++)
                    json_array_append_new(calls,
                                          tool_call_json(exsa_tool_parser_call(o->tp[i], k), k, 0));
            }
        } else if (o->chat && o->think) {
            exsa_reasoning r;
            exsa_strbuf rs, cs;
            exsa_strbuf_init(&rs);
            exsa_strbuf_init(&cs);
            exsa_reasoning_init(&r, o->opened);
            exsa_reasoning_feed(&r, o->text[i].p, o->text[i].len, &rs, &cs);
            exsa_reasoning_finish(&r, &rs, &cs);
            content = exsa_json_text(cs.p, cs.len);
            if (rs.len)
                reasoning = exsa_json_text(rs.p, rs.len);
            exsa_strbuf_free(&rs);
            exsa_strbuf_free(&cs);
        } else {
            content = exsa_json_text(o->text[i].p, o->text[i].len);
        }
        if (o->chat) {
            json_t *m = json_object();
            if (m) {
                json_object_set_new(m, "role", json_string("assistant"));
                json_object_set_new(m, "content", content);
                if (calls)
                    json_object_set_new(m, "tool_calls", calls);
                if (reasoning)
                    json_object_set_new(m, "reasoning_content", reasoning);
                json_object_set_new(m, "refusal", json_null());
            } else {
                json_decref(content);
                json_decref(calls);
                json_decref(reasoning);
            }
            json_object_set_new(c, "message", m);
        } else {
            json_object_set_new(c, "text", content);
        }
        json_t *lp = o->lp[i];
        o->lp[i] = NULL;
        if (lp && o->chat) {
            json_t *w = json_object();
            if (w) {
                json_object_set_new(w, "content", lp);
                json_object_set_new(w, "refusal", json_null());
            } else {
                json_decref(lp);
            }
            lp = w;
        }
        json_object_set_new(c, "logprobs", lp ? lp : json_null());
        const char *fin = finish_of(o, i, j->ch[i].finish);
        json_object_set_new(c, "finish_reason", fin ? json_string(fin) : json_null());
        json_array_append_new(choices, c);
    }
    json_object_set_new(r, "choices", choices);
    json_object_set_new(r, "usage", usage_json(o));
    if (n > 0)
        json_object_set_new(r, "timings", exsa_gen_timings_json(&j->ch[0]));
    exsa_http_reply_json(rq, 200, r);
}

/* ---- request parsing shared by both ---- */

static oai *oai_begin(exsa_http_req *rq, exsa_app *a, int kind, json_t **body)
{
    oai *o = calloc(1, sizeof *o);
    if (!o) {
        exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
        return NULL;
    }
    o->chat = kind == EXSA_API_CHAT;
    o->role_for = -1;
    exsa_strbuf_init(&o->rpiece);
    exsa_strbuf_init(&o->cpiece);
    o->created = (long long)time(NULL);
    snprintf(o->id, sizeof o->id, "%s-%s", o->chat ? "chatcmpl" : "cmpl", exsa_http_req_id(rq));
    o->job = exsa_gen_job_begin(a, rq, kind, body, &o->g);
    if (!o->job) {
        free(o);
        return NULL;
    }
    return o;
}

static void oai_run(oai *o, exsa_http_req *rq, const char *prompt_field)
{
    if (exsa_gen_job_submit(o->job, &o->g, o->prompts, o->n_prompts, prompt_field)) {
        oai_free(o);
        return;
    }
    o->text_len = calloc((size_t)o->job->n_ch, sizeof *o->text_len);
    if (has_tools(o)) {
        o->tp = calloc((size_t)o->job->n_ch, sizeof *o->tp);
        o->calls_sent = calloc((size_t)o->job->n_ch, sizeof *o->calls_sent);
        for (int i = 0; o->tp && i < o->job->n_ch; i++) {
            char pre[32];
            snprintf(pre, sizeof pre, "%.12s_%d_", exsa_http_req_id(rq), i % 1000);
            if (!(o->tp[i] = exsa_tool_parser_create(o->tools.format, pre, NULL)))
                break;
        }
        if (!o->tp || !o->calls_sent || !o->tp[o->job->n_ch - 1]) {
            exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
            oai_free(o);
            return;
        }
    }
    o->rsn = o->think ? calloc((size_t)o->job->n_ch, sizeof *o->rsn) : NULL;
    for (int i = 0; o->rsn && i < o->job->n_ch; i++)
        exsa_reasoning_init(&o->rsn[i], o->opened);
    if (!o->text_len || (o->think && !o->rsn)) {
        exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
        oai_free(o);
        return;
    }
    if (o->g.stream) {
        exsa_http_reply_stream(rq, 200, "text/event-stream", oai_pull, o, oai_free);
        return;
    }
    oai_collect_and_reply(o, rq);
    oai_free(o);
}

static int add_prompt(oai *o, const exsa_gen_prompt *p)
{
    exsa_gen_prompt *np = realloc(o->prompts, (size_t)(o->n_prompts + 1) * sizeof *np);
    if (!np)
        return EXSA_ENOMEM;
    o->prompts = np;
    o->prompts[o->n_prompts++] = *p;
    return 0;
}

int exsa_chat_reasoning_fields(const json_t *body, const json_t **kwargs, int *format,
                               exsa_param_err *pe)
{
    const char *f = NULL;
    *kwargs = NULL;
    *format = EXSA_REASONING_AUTO;
    if (exsa_reqparams_str(body, "reasoning_format", &f, NULL, pe))
        return EXSA_EINVAL;
    if (f && !strcmp(f, "none"))
        *format = EXSA_REASONING_NONE;
    else if (f && !strcmp(f, "deepseek"))
        *format = EXSA_REASONING_DEEPSEEK;
    else if (f && strcmp(f, "auto"))
        return exsa_param_fail(pe, "reasoning_format", "invalid_value",
                               "'reasoning_format' must be \"none\", \"auto\" or \"deepseek\", "
                               "got \"%.40s\"",
                               f);
    const json_t *k = json_object_get(body, "chat_template_kwargs");
    if (k && !json_is_null(k)) {
        if (!json_is_object(k))
            return exsa_param_fail(pe, "chat_template_kwargs", "invalid_type",
                                   "'chat_template_kwargs' must be an object");
        *kwargs = k;
    }
    return 0;
}

int exsa_chat_thinks(exsa_engine *e, int format)
{
    if (format == EXSA_REASONING_AUTO)
        return exsa_reasoning_template_thinks(exsa_engine_chat_template_source(e));
    return format == EXSA_REASONING_DEEPSEEK;
}

void exsa_api_openai_chat(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    json_t *body = NULL;
    oai *o = oai_begin(rq, a, EXSA_API_CHAT, &body);
    if (!o)
        return;
    exsa_param_err pe = {0};
    const json_t *msgs = json_object_get(body, "messages");
    if (!msgs || json_is_null(msgs)) {
        exsa_param_fail(&pe, "messages", "missing_required_parameter", "'messages' is required");
    } else if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        exsa_param_fail(&pe, "messages", "invalid_value",
                        "'messages' must be a non-empty array of messages");
    }
    const json_t *kwargs = NULL;
    int rf = 0;
    if (!pe.status)
        exsa_chat_reasoning_fields(body, &kwargs, &rf, &pe);
    if (pe.status) {
        exsa_app_reply_param(rq, &pe);
        goto done;
    }
    exsa_err err = {0};
    const int format = exsa_tool_format_detect(exsa_engine_chat_template_source(o->job->eng));
    if (exsa_tool_spec_parse(body, format, &o->tools, &err)) {
        const char *param = !strncmp(err.msg, "tool_choice", 11)           ? "tool_choice"
                            : !strncmp(err.msg, "parallel_tool_calls", 19) ? "parallel_tool_calls"
                                                                           : "tools";
        exsa_param_fail(&pe, param, "invalid_value", "%s", err.msg);
        exsa_app_reply_param(rq, &pe);
        goto done;
    }
    json_t *rendered_msgs = NULL;
    const json_t *tools_arg = NULL;
    if (has_tools(o)) {
        if (o->g.grammar) {
            exsa_param_fail(&pe, "tools", "invalid_value",
                            "'tools' cannot be combined with response_format, grammar or "
                            "json_schema");
            exsa_app_reply_param(rq, &pe);
            goto done;
        }
        const char *trigger = NULL;
        char *gr = exsa_tool_grammar(&o->tools, &trigger, &err);
        if (!gr && err.code) {
            exsa_param_fail(&pe, "tools", "invalid_value", "%s", err.msg);
            exsa_app_reply_param(rq, &pe);
            goto done;
        }
        if (exsa_reqparams_take_grammar(&o->g, gr, trigger, "tools")) {
            exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
            goto done;
        }
        /* the generic format writes the tools into the turns themselves, and
         * so do templates of a tool format that never render `tools`
         * (DeepSeek's own) */
        const char *src = exsa_engine_chat_template_source(o->job->eng);
        if (format == EXSA_TOOLS_GENERIC ||
            ((format == EXSA_TOOLS_DEEPSEEK_R1 || format == EXSA_TOOLS_DEEPSEEK_V31) && src &&
             !strstr(src, "tools")))
            rendered_msgs = exsa_tool_rewrite_messages(msgs, &o->tools, &err);
        else
            tools_arg = o->tools.tools;
    } else if (format == EXSA_TOOLS_GENERIC && history_has_tools(msgs)) {
        /* no tools on offer now, but earlier calls and results still need
         * turns the template can render (a client's final request often
         * drops tools or says tool_choice "none") */
        rendered_msgs = exsa_tool_rewrite_messages(msgs, &o->tools, &err);
    }
    exsa_gen_prompt p;
    char *prompt = NULL;
    int prc = exsa_gen_job_chat_prompt(o->job, rendered_msgs ? rendered_msgs : msgs, tools_arg,
                                       kwargs, NULL, &p, &prompt);
    json_decref(rendered_msgs);
    if (prc)
        goto done;
    o->think = exsa_chat_thinks(o->job->eng, rf);
    o->opened = o->think && exsa_reasoning_prompt_opened(prompt, strlen(prompt));
    free(prompt);
    if (add_prompt(o, &p)) {
        free(p.ids);
        exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
        goto done;
    }
    json_decref(body);
    oai_run(o, rq, "messages");
    return;
done:
    json_decref(body);
    oai_free(o);
}

void exsa_api_openai_completions(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    json_t *body = NULL;
    oai *o = oai_begin(rq, a, EXSA_API_COMPLETION, &body);
    if (!o)
        return;
    exsa_param_err pe = {0};
    const json_t *pr = json_object_get(body, "prompt");
    if (!pr || json_is_null(pr)) {
        exsa_param_fail(&pe, "prompt", "missing_required_parameter", "'prompt' is required");
        goto bad;
    }
    /* A string, a list of strings, a list of token ids, or a list of lists. */
    size_t n = json_is_array(pr) ? json_array_size(pr) : 1;
    int ids_list = json_is_array(pr) && n > 0 && json_is_integer(json_array_get(pr, 0));
    if (!json_is_string(pr) && !json_is_array(pr)) {
        exsa_param_fail(&pe, "prompt", "invalid_type",
                        "'prompt' must be a string, a list of strings, a list of token ids or a "
                        "list of token id lists");
        goto bad;
    }
    /* One list of ids is one prompt, however long. */
    if (ids_list)
        n = 1;
    if (n == 0 || n > 64) {
        exsa_param_fail(&pe, "prompt", "invalid_value", "'prompt' must have 1 to 64 prompts");
        goto bad;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *x = json_is_string(pr) || ids_list ? pr : json_array_get(pr, i);
        char field[32];
        snprintf(field, sizeof field, n > 1 ? "prompt[%zu]" : "prompt", i);
        exsa_gen_prompt p = {0};
        if (json_is_string(x)) {
            if (exsa_gen_job_tokenize(o->job, json_string_value(x), json_string_length(x), 1, 1,
                                      field, &p))
                goto done;
        } else if (json_is_array(x)) {
            if (exsa_reqparams_ids(x, field, o->job->info.n_vocab, &p.ids, &p.n, &pe))
                goto bad;
        } else {
            exsa_param_fail(&pe, "prompt", "invalid_type",
                            "'%s' must be a string or a list of token ids", field);
            goto bad;
        }
        if (add_prompt(o, &p)) {
            free(p.ids);
            exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
            goto done;
        }
    }
    json_decref(body);
    oai_run(o, rq, "prompt");
    return;
bad:
    exsa_app_reply_param(rq, &pe);
done:
    json_decref(body);
    oai_free(o);
}

/* ---- models ---- */

static json_t *model_object(const exsa_model_info *info)
{
    json_t *m = json_object();
    if (!m)
        return NULL;
    json_object_set_new(m, "id", exsa_json_str(info->name));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(info->created));
    json_object_set_new(m, "owned_by", json_string("exsa"));
    json_t *meta = json_object();
    if (meta) {
        json_object_set_new(meta, "arch", exsa_json_str(info->arch));
        json_object_set_new(meta, "weight_type", exsa_json_str(info->weight_type));
        json_object_set_new(meta, "n_ctx", json_integer(info->n_ctx));
        json_object_set_new(meta, "n_ctx_train", json_integer(info->n_ctx_train));
        json_object_set_new(meta, "n_vocab", json_integer(info->n_vocab));
        json_object_set_new(meta, "n_embd", json_integer(info->n_embd));
        json_object_set_new(meta, "n_params", json_integer((json_int_t)info->n_params));
        json_object_set_new(meta, "size", json_integer((json_int_t)info->weight_bytes));
        json_object_set_new(m, "meta", meta);
    }
    return m;
}

void exsa_api_openai_models(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    exsa_registry_entry ent[64];
    int n = exsa_registry_list(a->reg, ent, 64);
    if (n > 64)
        n = 64;
    json_t *data = json_array(), *r = json_object();
    if (!data || !r) {
        json_decref(data);
        json_decref(r);
        exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        if (ent[i].state != EXSA_MODEL_READY)
            continue;
        exsa_engine *e = exsa_registry_acquire(a->reg, ent[i].name, NULL);
        if (!e)
            continue;
        exsa_model_info info;
        exsa_engine_model_info(e, &info);
        exsa_registry_release(a->reg, e);
        json_array_append_new(data, model_object(&info));
    }
    json_object_set_new(r, "object", json_string("list"));
    json_object_set_new(r, "data", data);
    exsa_http_reply_json(rq, 200, r);
}

void exsa_api_openai_model(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    const char *name = exsa_http_req_path_tail(rq);
    exsa_err err = {0};
    exsa_engine *e = *name ? exsa_registry_acquire(a->reg, name, &err) : NULL;
    if (!e) {
        exsa_http_reply_error(rq, 404, "invalid_request_error", "model", "model_not_found",
                              "the model '%.200s' does not exist or is not loaded", name);
        return;
    }
    exsa_model_info info;
    exsa_engine_model_info(e, &info);
    exsa_registry_release(a->reg, e);
    exsa_http_reply_json(rq, 200, model_object(&info));
}

/* ---- embeddings ---- */

void exsa_api_openai_embeddings(exsa_http_req *rq, void *app)
{
    exsa_app *a = app;
    exsa_param_err pe = {0};
    size_t blen;
    const char *b = exsa_http_req_body(rq, &blen);
    json_t *body = exsa_reqparams_body(b, blen, &pe), *data = NULL;
    exsa_engine *e = NULL;
    float *vec = NULL;
    int32_t *ids = NULL;
    if (!body)
        goto bad;
    const char *model, *fmt = "float";
    if (exsa_reqparams_model(body, &model, &pe) ||
        exsa_reqparams_str(body, "encoding_format", &fmt, NULL, &pe))
        goto bad;
    if (strcmp(fmt, "float") && strcmp(fmt, "base64")) {
        exsa_param_fail(&pe, "encoding_format", "invalid_value",
                        "'encoding_format' must be \"float\" or \"base64\", got \"%.40s\"", fmt);
        goto bad;
    }
    const json_t *in = json_object_get(body, "input");
    if (!in || json_is_null(in)) {
        exsa_param_fail(&pe, "input", "missing_required_parameter", "'input' is required");
        goto bad;
    }
    if (!json_is_string(in) && !json_is_array(in)) {
        exsa_param_fail(&pe, "input", "invalid_type",
                        "'input' must be a string, a list of strings, a list of token ids or a "
                        "list of token id lists");
        goto bad;
    }
    size_t n = json_is_array(in) ? json_array_size(in) : 1;
    int ids_list = json_is_array(in) && n > 0 && json_is_integer(json_array_get(in, 0));
    if (ids_list)
        n = 1;
    if (n == 0 || n > MAX_EMBED_INPUTS) {
        exsa_param_fail(&pe, "input", "invalid_value", "'input' must have 1 to %d items",
                        MAX_EMBED_INPUTS);
        goto bad;
    }
    if (!(e = exsa_app_acquire(a, rq, model)))
        goto out;
    exsa_model_info info;
    exsa_engine_model_info(e, &info);
    long long dims = info.n_embd;
    int has_dims;
    if (exsa_reqparams_int(body, "dimensions", 1, 1 << 20, &dims, &has_dims, &pe))
        goto bad;
    if (has_dims && dims != info.n_embd) {
        exsa_param_fail(&pe, "dimensions", "invalid_value",
                        "'dimensions' must be this model's embedding size (%d), got %lld",
                        info.n_embd, dims);
        goto bad;
    }
    if (!(vec = malloc((size_t)info.n_embd * sizeof *vec)) || !(data = json_array()))
        goto oom;
    long long total = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *x = json_is_string(in) || ids_list ? in : json_array_get(in, i);
        char field[32];
        snprintf(field, sizeof field, n > 1 ? "input[%zu]" : "input", i);
        int nt = 0;
        free(ids);
        ids = NULL;
        if (json_is_string(x)) {
            exsa_err err = {0};
            int64_t k = exsa_engine_tokenize(e, json_string_value(x), json_string_length(x), 1, 0,
                                             NULL, 0, &err);
            if (k < 0) {
                exsa_app_reply_engine(rq, &err, field);
                goto out;
            }
            if (k > info.n_ctx) {
                exsa_param_fail(&pe, field, "context_length_exceeded",
                                "'%s' has %lld tokens; this model's context is %d tokens", field,
                                (long long)k, info.n_ctx);
                goto bad;
            }
            if (!(ids = malloc((size_t)(k ? k : 1) * sizeof *ids)))
                goto oom;
            if (k > 0 && exsa_engine_tokenize(e, json_string_value(x), json_string_length(x), 1, 0,
                                              ids, k, &err) != k)
                goto oom;
            nt = (int)k;
        } else if (json_is_array(x)) {
            if (exsa_reqparams_ids(x, field, info.n_vocab, &ids, &nt, &pe))
                goto bad;
        } else {
            exsa_param_fail(&pe, "input", "invalid_type",
                            "'%s' must be a string or a list of token ids", field);
            goto bad;
        }
        if (nt == 0) {
            exsa_param_fail(&pe, "input", "invalid_value", "'%s' is empty", field);
            goto bad;
        }
        if (nt > info.n_ctx || (a->cfg->max_prompt_tokens > 0 && nt > a->cfg->max_prompt_tokens)) {
            exsa_param_fail(&pe, "input", "context_length_exceeded",
                            "'%s' has %d tokens; at most %d", field, nt,
                            a->cfg->max_prompt_tokens > 0 && a->cfg->max_prompt_tokens < info.n_ctx
                                ? a->cfg->max_prompt_tokens
                                : info.n_ctx);
            goto bad;
        }
        exsa_err err = {0};
        int d = exsa_engine_embed(e, ids, nt, vec, info.n_embd, &err);
        if (d < 0) {
            exsa_app_reply_engine(rq, &err, "input");
            goto out;
        }
        total += nt;
        json_t *item = json_object();
        if (!item)
            goto oom;
        json_object_set_new(item, "object", json_string("embedding"));
        json_object_set_new(item, "index", json_integer((json_int_t)i));
        if (!strcmp(fmt, "base64")) {
            /* OpenAI's base64 form: the little-endian float32 bytes. */
            char *s = exsa_base64_encode(vec, (size_t)d * sizeof *vec);
            json_object_set_new(item, "embedding", s ? json_string(s) : NULL);
            free(s);
        } else {
            json_t *v = json_array();
            for (int k = 0; v && k < d; k++)
                json_array_append_new(v, exsa_json_real(vec[k]));
            json_object_set_new(item, "embedding", v);
        }
        json_array_append_new(data, item);
    }
    exsa_http_req_note_tokens(rq, (int)(total > INT32_MAX ? INT32_MAX : total), 0);
    exsa_metrics_prompt_tokens(exsa_metrics_model(a->metrics, info.name), (int)total);
    json_t *r = json_object(), *u = json_object();
    if (!r || !u) {
        json_decref(r);
        json_decref(u);
        goto oom;
    }
    json_object_set_new(r, "object", json_string("list"));
    json_object_set_new(r, "data", data);
    data = NULL;
    json_object_set_new(r, "model", exsa_json_str(info.name));
    json_object_set_new(u, "prompt_tokens", json_integer(total));
    json_object_set_new(u, "total_tokens", json_integer(total));
    json_object_set_new(r, "usage", u);
    exsa_http_reply_json(rq, 200, r);
    goto out;
oom:
    exsa_http_reply_error(rq, 500, "server_error", NULL, "internal_error", "out of memory");
    goto out;
bad:
    exsa_app_reply_param(rq, &pe);
out:
    free(ids);
    free(vec);
    json_decref(data);
    json_decref(body);
    if (e)
        exsa_registry_release(a->reg, e);
}
