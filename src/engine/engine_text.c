/* Model information and the text helpers of the public API: tokenize,
 * detokenize, chat templates. Any thread; nothing here touches the engine
 * thread's state. */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/grammar.h"
#include "engine/prefix_cache.h"
#include "engine/sampling.h"
#include "exsa.h"
#include "model/model.h"
#include "quant/quant.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"
#include "text/vocab.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timer.h"
#include "engine/engine_internal.h"

/* ---- model information and text helpers ---- */

void exsa_engine_model_info(exsa_engine *e, exsa_model_info *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!e)
        return;
    const exsa_hparams *hp = exsa_model_hparams(e->m);
    snprintf(out->name, sizeof out->name, "%s", e->name);
    snprintf(out->path, sizeof out->path, "%s", e->model_path);
    snprintf(out->arch, sizeof out->arch, "%s", hp->arch_name);
    const exsa_type_traits *tr = exsa_type_traits_get(hp->weight_type);
    const char *tn = tr ? tr->name : exsa_gguf_type_name(hp->weight_type);
    snprintf(out->weight_type, sizeof out->weight_type, "%s", tn ? tn : "unknown");
    out->n_ctx = e->n_ctx;
    out->n_ctx_train = hp->n_ctx_train;
    out->n_vocab = hp->n_vocab;
    out->n_embd = hp->n_embd;
    out->n_layer = hp->n_layer;
    out->bos = e->voc ? exsa_vocab_bos(e->voc) : -1;
    out->eos = e->voc ? exsa_vocab_eos(e->voc) : -1;
    out->n_params = exsa_model_n_params(e->m);
    out->weight_bytes = exsa_model_weight_bytes(e->m);
    out->created = e->created;
    snprintf(out->backend, sizeof out->backend, "%s", exsa_model_ctx_describe(e->ctx));
    snprintf(out->device, sizeof out->device, "%s", exsa_device_name(exsa_model_device(e->m)));
    size_t fb, tb, wb;
    if (exsa_model_device_memory(e->m, &fb, &tb, &wb) == 0) {
        out->gpu_free_bytes = fb;
        out->gpu_total_bytes = tb;
        out->gpu_weight_bytes = wb;
    }
}

/* Appends k bytes of piece to out (at most cap - 1 kept) and counts them. */
static void detok_put(char *out, size_t cap, int64_t *total, const char *piece, int k)
{
    if (k <= 0)
        return;
    if (cap > 0 && (uint64_t)*total < cap - 1) {
        size_t room = cap - 1 - (size_t)*total;
        memcpy(out + *total, piece, (size_t)k < room ? (size_t)k : room);
    }
    *total += k;
}

int64_t exsa_engine_token_bytes(exsa_engine *e, int32_t id, int special, char *out, size_t cap,
                                exsa_err *err)
{
    if (!e || (!out && cap > 0))
        return exsa_err_set(err, EXSA_EINVAL, "token_bytes: engine and out are required");
    if (!e->voc || id < 0 || id >= exsa_vocab_n_tokens(e->voc))
        return exsa_err_set(err, EXSA_EINVAL, "token_bytes: token id %d is out of the vocabulary",
                            (int)id);
    /* The vocab is read-only after load: no lock needed. */
    int n = exsa_vocab_token_to_piece(e->voc, id, out, cap, special);
    if (n < 0)
        return exsa_err_set(err, EXSA_EINVAL, "token_bytes: token id %d has no text", (int)id);
    return n;
}

int64_t exsa_engine_detokenize(exsa_engine *e, const int32_t *ids, int64_t n, int special,
                               char *out, size_t cap, exsa_err *err)
{
    if (!e || n < 0 || (n > 0 && !ids) || (cap > 0 && !out))
        return exsa_err_set(err, EXSA_EINVAL, "detokenize: engine, ids and out are required");
    if (!e->tok)
        return exsa_err_set(err, EXSA_EUNSUPPORTED,
                            "detokenize: the model has no usable tokenizer");
    int32_t nv = exsa_vocab_n_tokens(e->voc);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= nv)
            return exsa_err_set(err, EXSA_EINVAL,
                                "detokenize: ids[%lld] = %d is out of the vocabulary (%d)",
                                (long long)i, ids[i], nv);
    char piece[PIECE_MAX + 1];
    int64_t total = 0;
    int rc = 0;
    pthread_mutex_lock(&e->detok_mu);
    exsa_detok *d = e->dt[special ? 1 : 0];
    exsa_detok_reset(d);
    /* Text that does not fit in piece stays queued in d and comes out
     * with the next push or the final flushes. */
    for (int64_t i = 0; i < n && rc >= 0; i++) {
        rc = exsa_detok_push(d, ids[i], piece, sizeof piece);
        detok_put(out, cap, &total, piece, rc);
    }
    /* The first flush ends a pending partial character (as U+FFFD); the
     * rest hand out what is still queued. */
    while (rc >= 0 && (rc = exsa_detok_flush(d, piece, sizeof piece)) > 0)
        detok_put(out, cap, &total, piece, rc);
    pthread_mutex_unlock(&e->detok_mu);
    if (rc < 0)
        return exsa_err_set(err, rc, "detokenize: %s", exsa_strerror(rc));
    if (cap > 0)
        out[(uint64_t)total < cap ? (size_t)total : cap - 1] = 0;
    return total;
}

/* One message's content as the template sees it: a string stays, a list of
 * text parts becomes their concatenation (what the builtin templates do,
 * and what Jinja templates written for string content need). */
static int check_content(json_t *msg, size_t i, const char *role, json_t **content_out,
                         exsa_err *err)
{
    json_t *c = json_object_get(msg, "content");
    *content_out = NULL;
    if (json_is_string(c))
        return 0;
    if (!c || json_is_null(c)) {
        if (!strcmp(role, "assistant") && json_array_size(json_object_get(msg, "tool_calls")) > 0)
            return 0;
        return exsa_err_set(err, EXSA_EINVAL,
                            "messages[%zu].content: required (null only for an assistant "
                            "message with tool_calls)",
                            i);
    }
    if (!json_is_array(c))
        return exsa_err_set(err, EXSA_EINVAL,
                            "messages[%zu].content: must be a string or an array of text parts",
                            i);
    size_t total = 0, k;
    json_t *part;
    json_array_foreach(c, k, part) {
        const char *type = json_string_value(json_object_get(part, "type"));
        json_t *text = json_object_get(part, "text");
        if (!json_is_object(part) || !type)
            return exsa_err_set(err, EXSA_EINVAL,
                                "messages[%zu].content[%zu]: must be an object with a string "
                                "'type'",
                                i, k);
        if (strcmp(type, "text") != 0)
            return exsa_err_set(err, EXSA_EINVAL,
                                "messages[%zu].content[%zu]: part type '%.64s' is not supported "
                                "(only 'text')",
                                i, k, type);
        if (!json_is_string(text))
            return exsa_err_set(err, EXSA_EINVAL,
                                "messages[%zu].content[%zu].text: must be a string", i, k);
        if (__builtin_add_overflow(total, json_string_length(text), &total))
            return exsa_err_set(err, EXSA_ENOMEM, "messages[%zu].content: too long", i);
    }
    char *joined = malloc(total + 1);
    if (!joined)
        return exsa_err_set(err, EXSA_ENOMEM, "chat: out of memory");
    size_t at = 0;
    json_array_foreach(c, k, part) {
        json_t *text = json_object_get(part, "text");
        memcpy(joined + at, json_string_value(text), json_string_length(text));
        at += json_string_length(text);
    }
    *content_out = json_stringn_nocheck(joined, total);
    free(joined);
    if (!*content_out)
        return exsa_err_set(err, EXSA_ENOMEM, "chat: out of memory");
    return 0;
}

const char *exsa_engine_chat_template_source(exsa_engine *e)
{
    return e ? exsa_chat_template_source(e->tpl) : NULL;
}

char *exsa_engine_chat_render(exsa_engine *e, const char *messages_json, const char *tools_json,
                              int add_generation_prompt, exsa_err *err)
{
    return exsa_engine_chat_render_kw(e, messages_json, tools_json, NULL, add_generation_prompt,
                                      err);
}

char *exsa_engine_chat_render_kw(exsa_engine *e, const char *messages_json, const char *tools_json,
                                 const char *kwargs_json, int add_generation_prompt,
                                 exsa_err *err)
{
    if (!e || !messages_json) {
        exsa_err_set(err, EXSA_EINVAL, "chat: engine and messages are required");
        return NULL;
    }
    if (!e->tpl) {
        exsa_err_set(err, EXSA_EUNSUPPORTED, "%s", e->tpl_err);
        return NULL;
    }
    json_error_t je;
    json_t *msgs = json_loads(messages_json, 0, &je);
    json_t *tools = NULL, *kwargs = NULL;
    char *out = NULL;
    if (!msgs) {
        exsa_err_set(err, EXSA_EINVAL, "messages: invalid JSON at line %d column %d: %s",
                     je.line, je.column, je.text);
        goto done;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        exsa_err_set(err, EXSA_EINVAL, "messages: must be a non-empty array");
        goto done;
    }
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        if (!json_is_object(m)) {
            exsa_err_set(err, EXSA_EINVAL, "messages[%zu]: must be an object", i);
            goto done;
        }
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!role) {
            exsa_err_set(err, EXSA_EINVAL, "messages[%zu].role: required, a string", i);
            goto done;
        }
        json_t *joined;
        if (check_content(m, i, role, &joined, err) != 0)
            goto done;
        /* json_object_set keeps the key's place in the object. */
        if (joined && json_object_set_new(m, "content", joined) != 0) {
            exsa_err_set(err, EXSA_ENOMEM, "chat: out of memory");
            goto done;
        }
    }
    if (tools_json) {
        if (!(tools = json_loads(tools_json, 0, &je))) {
            exsa_err_set(err, EXSA_EINVAL, "tools: invalid JSON at line %d column %d: %s",
                         je.line, je.column, je.text);
            goto done;
        }
        if (!json_is_array(tools)) {
            exsa_err_set(err, EXSA_EINVAL, "tools: must be an array");
            goto done;
        }
    }
    if (kwargs_json) {
        if (!(kwargs = json_loads(kwargs_json, 0, &je))) {
            exsa_err_set(err, EXSA_EINVAL,
                         "chat_template_kwargs: invalid JSON at line %d column %d: %s", je.line,
                         je.column, je.text);
            goto done;
        }
        if (!json_is_object(kwargs)) {
            exsa_err_set(err, EXSA_EINVAL, "chat_template_kwargs: must be an object");
            goto done;
        }
    }
    exsa_chat_opts o = {.add_generation_prompt = add_generation_prompt != 0,
                        .bos_token = e->bos_text, .eos_token = e->eos_text, .tools = tools,
                        .extra = kwargs};
    out = exsa_chat_template_render(e->tpl, msgs, &o, err);
done:
    json_decref(kwargs);
    json_decref(msgs);
    json_decref(tools);
    return out;
}
