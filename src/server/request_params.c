#include "server/request_params.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "engine/json_schema.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timer.h"

int exsa_param_fail(exsa_param_err *pe, const char *param, const char *code, const char *fmt, ...)
{
    if (pe) {
        if (pe->status < 400)
            pe->status = 400;
        snprintf(pe->param, sizeof pe->param, "%s", param ? param : "");
        pe->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(pe->msg, sizeof pe->msg, fmt, ap);
        va_end(ap);
    }
    return EXSA_EINVAL;
}

/* Depth-first search for a number beyond the 64-bit integers; *path gets
 * the key (or index) chain to it. */
static const json_t *find_big(const json_t *v, char *path, size_t cap)
{
    if (json_is_real(v) && fabs(json_real_value(v)) >= 9.2e18)
        return v;
    size_t n = strlen(path);
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
        {
            snprintf(path + n, cap - n, "%s%s", n ? "." : "", k);
            const json_t *r = find_big(x, path, cap);
            if (r)
                return r;
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            snprintf(path + n, cap - n, "[%zu]", i);
            const json_t *r = find_big(json_array_get(v, i), path, cap);
            if (r)
                return r;
        }
    }
    path[n] = '\0';
    return NULL;
}

/* jansson refuses integers beyond 64 bits as malformed JSON. They are valid
 * JSON, just out of range: parse again with integers as reals to name the
 * field (its top-level key is the param). 1 when pe was filled. */
static int name_big_number(const char *body, size_t len, exsa_param_err *pe)
{
    json_t *j = json_loadb(body, len, JSON_DECODE_INT_AS_REAL, NULL);
    if (!j)
        return 0;
    char path[96] = "", top[96];
    const json_t *v = find_big(j, path, sizeof path);
    if (v) {
        snprintf(top, sizeof top, "%s", path);
        top[strcspn(top, ".[")] = '\0';
        exsa_param_fail(pe, top[0] ? top : NULL, "invalid_value",
                        "'%s': the number %.0f is out of range", path[0] ? path : "(body)",
                        json_real_value(v));
    }
    json_decref(j);
    return v != NULL;
}

json_t *exsa_reqparams_body(const char *body, size_t len, exsa_param_err *pe)
{
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    if (i == len) {
        exsa_param_fail(pe, NULL, "invalid_json",
                        "the request body is empty; expected a JSON object");
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb(body, len, 0, &je);
    if (!j) {
        if (json_error_code(&je) == json_error_out_of_memory) {
            pe->status = 500;
            exsa_param_fail(pe, NULL, "internal_error", "out of memory parsing the request body");
            return NULL;
        }
        if (json_error_code(&je) == json_error_numeric_overflow && name_big_number(body, len, pe))
            return NULL;
        exsa_param_fail(pe, NULL, "invalid_json",
                        "the request body is not valid JSON: %s (line %d, column %d)", je.text,
                        je.line, je.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        exsa_param_fail(pe, NULL, "invalid_json", "the request body must be a JSON object");
        return NULL;
    }
    return j;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* Absent and null both mean "not given". */
static const json_t *field(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return v && !json_is_null(v) ? v : NULL;
}

int exsa_reqparams_int(const json_t *obj, const char *key, long long lo, long long hi,
                       long long *out, int *present, exsa_param_err *pe)
{
    const json_t *v = field(obj, key);
    if (present)
        *present = v != NULL;
    if (!v)
        return 0;
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        /* Reals are only accepted when they are whole and within range;
         * the range test comes first so the cast below is defined. */
        if (!(d == floor(d)) || d < (double)lo || d > (double)hi)
            return exsa_param_fail(pe, key, "invalid_type",
                                   "'%s' must be an integer in [%lld, %lld], got %g", key, lo, hi,
                                   d);
        x = (long long)d;
    } else {
        return exsa_param_fail(pe, key, "invalid_type", "'%s' must be an integer, got %s", key,
                               type_name(v));
    }
    if (x < lo || x > hi)
        return exsa_param_fail(pe, key, "invalid_value", "'%s' must be in [%lld, %lld], got %lld",
                               key, lo, hi, x);
    *out = x;
    return 0;
}

int exsa_reqparams_num(const json_t *obj, const char *key, double lo, double hi, double *out,
                       int *present, exsa_param_err *pe)
{
    const json_t *v = field(obj, key);
    if (present)
        *present = v != NULL;
    if (!v)
        return 0;
    if (!json_is_number(v))
        return exsa_param_fail(pe, key, "invalid_type", "'%s' must be a number, got %s", key,
                               type_name(v));
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        return exsa_param_fail(pe, key, "invalid_value", "'%s' must be in [%g, %g], got %g", key,
                               lo, hi, x);
    *out = x;
    return 0;
}

int exsa_reqparams_bool(const json_t *obj, const char *key, int *out, int *present,
                        exsa_param_err *pe)
{
    const json_t *v = field(obj, key);
    if (present)
        *present = v != NULL;
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return exsa_param_fail(pe, key, "invalid_type", "'%s' must be true or false, got %s", key,
                               type_name(v));
    *out = json_is_true(v);
    return 0;
}

int exsa_reqparams_str(const json_t *obj, const char *key, const char **out, int *present,
                       exsa_param_err *pe)
{
    const json_t *v = field(obj, key);
    if (present)
        *present = v != NULL;
    if (!v)
        return 0;
    if (!json_is_string(v))
        return exsa_param_fail(pe, key, "invalid_type", "'%s' must be a string, got %s", key,
                               type_name(v));
    if (strlen(json_string_value(v)) != json_string_length(v))
        return exsa_param_fail(pe, key, "invalid_value", "'%s' must not contain NUL characters",
                               key);
    *out = json_string_value(v);
    return 0;
}

int exsa_reqparams_ids(const json_t *arr, const char *name, int n_vocab, int32_t **ids, int *n,
                       exsa_param_err *pe)
{
    *ids = NULL;
    *n = 0;
    if (!json_is_array(arr))
        return exsa_param_fail(pe, name, "invalid_type",
                               "'%s' must be an array of token ids, got %s", name, type_name(arr));
    size_t len = json_array_size(arr);
    if (len > (1u << 24))
        return exsa_param_fail(pe, name, "invalid_value", "'%s' has too many tokens (%zu)", name,
                               len);
    int32_t *v = malloc((len ? len : 1) * sizeof *v);
    if (!v) {
        pe->status = 500;
        return exsa_param_fail(pe, name, "internal_error", "out of memory");
    }
    for (size_t i = 0; i < len; i++) {
        const json_t *x = json_array_get(arr, i);
        long long hi = n_vocab > 0 ? n_vocab - 1 : INT32_MAX;
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > hi) {
            free(v);
            if (!json_is_integer(x))
                return exsa_param_fail(pe, name, "invalid_type",
                                       "'%s[%zu]' must be a token id (integer), got %s", name, i,
                                       type_name(x));
            return exsa_param_fail(pe, name, "invalid_value",
                                   "'%s[%zu]' = %lld is not a token id of the model (0..%lld)",
                                   name, i, (long long)json_integer_value(x), hi);
        }
        v[i] = (int32_t)json_integer_value(x);
    }
    *ids = v;
    *n = (int)len;
    return 0;
}

int exsa_reqparams_model(const json_t *body, const char **model, exsa_param_err *pe)
{
    *model = NULL;
    return exsa_reqparams_str(body, "model", model, NULL, pe);
}

/* ---- fields that are not plain numbers ---- */

static int parse_stop(const json_t *body, exsa_gen_params *g, exsa_param_err *pe)
{
    const json_t *v = field(body, "stop");
    if (!v)
        return 0;
    const json_t *one = json_is_string(v) ? v : NULL;
    if (!one && !json_is_array(v))
        return exsa_param_fail(pe, "stop", "invalid_type",
                               "'stop' must be a string or an array of strings, got %s",
                               type_name(v));
    size_t n = one ? 1 : json_array_size(v);
    if (n > EXSA_MAX_STOPS)
        return exsa_param_fail(pe, "stop", "invalid_value", "'stop' has %zu strings; at most %d", n,
                               EXSA_MAX_STOPS);
    if (n == 0)
        return 0;
    if (!(g->stop = calloc(n, sizeof *g->stop))) {
        pe->status = 500;
        return exsa_param_fail(pe, "stop", "internal_error", "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *s = one ? one : json_array_get(v, i);
        if (!json_is_string(s))
            return exsa_param_fail(pe, "stop", "invalid_type",
                                   "'stop[%zu]' must be a string, got %s", i, type_name(s));
        size_t len = json_string_length(s);
        if (len > EXSA_MAX_STOP_LEN)
            return exsa_param_fail(pe, "stop", "invalid_value",
                                   "'stop[%zu]' is %zu bytes long; at most %d", i, len,
                                   EXSA_MAX_STOP_LEN);
        if (strlen(json_string_value(s)) != len)
            return exsa_param_fail(pe, "stop", "invalid_value",
                                   "'stop[%zu]' must not contain NUL characters", i);
        if (len == 0)
            continue; /* an empty stop string would stop at once: OpenAI ignores it */
        if (!(g->stop[g->rp.n_stop] = strdup(json_string_value(s)))) {
            pe->status = 500;
            return exsa_param_fail(pe, "stop", "internal_error", "out of memory");
        }
        g->rp.n_stop++;
    }
    g->rp.stop = (const char *const *)g->stop;
    return 0;
}

static int bias_value(const json_t *x, const char *where, float *out, exsa_param_err *pe)
{
    if (json_is_false(x)) { /* llama-server: false bans the token */
        *out = -INFINITY;
        return 0;
    }
    if (!json_is_number(x))
        return exsa_param_fail(pe, "logit_bias", "invalid_type",
                               "'logit_bias' %s: the bias must be a number (or false), got %s",
                               where, type_name(x));
    double b = json_number_value(x);
    if (!(b >= -100 && b <= 100))
        return exsa_param_fail(pe, "logit_bias", "invalid_value",
                               "'logit_bias' %s: the bias must be in [-100, 100], got %g", where,
                               b);
    *out = (float)b;
    return 0;
}

static int bias_token(long long id, const char *where, int n_vocab, int32_t *out,
                      exsa_param_err *pe)
{
    if (id < 0 || (n_vocab > 0 && id >= n_vocab) || id > INT32_MAX)
        return exsa_param_fail(pe, "logit_bias", "invalid_value",
                               "'logit_bias' %s: token id %lld is not in the vocabulary (0..%d)",
                               where, id, n_vocab - 1);
    *out = (int32_t)id;
    return 0;
}

/* OpenAI: {"123": 5.0}; llama-server also: [[123, 5.0], [456, false]]. */
static int parse_logit_bias(const json_t *body, int n_vocab, exsa_gen_params *g, exsa_param_err *pe)
{
    const json_t *v = field(body, "logit_bias");
    if (!v)
        return 0;
    size_t n = json_is_object(v) ? json_object_size(v) : json_is_array(v) ? json_array_size(v) : 0;
    if (!json_is_object(v) && !json_is_array(v))
        return exsa_param_fail(pe, "logit_bias", "invalid_type",
                               "'logit_bias' must be an object {\"token id\": bias} or a list of "
                               "[id, bias] pairs, got %s",
                               type_name(v));
    if (n > 1024)
        return exsa_param_fail(pe, "logit_bias", "invalid_value",
                               "'logit_bias' has %zu entries; at most 1024", n);
    if (n == 0)
        return 0;
    if (!(g->bias = calloc(n, sizeof *g->bias))) {
        pe->status = 500;
        return exsa_param_fail(pe, "logit_bias", "internal_error", "out of memory");
    }
    int k = 0;
    if (json_is_object(v)) {
        const char *key;
        json_t *x;
        json_object_foreach((json_t *)v, key, x)
        {
            char *end;
            char where[96];
            snprintf(where, sizeof where, "key '%.40s'", key);
            long long id = strtoll(key, &end, 10);
            if (end == key || *end || strlen(key) > 12)
                return exsa_param_fail(pe, "logit_bias", "invalid_value",
                                       "'logit_bias' %s: keys must be token ids", where);
            if (bias_token(id, where, n_vocab, &g->bias[k].token, pe) ||
                bias_value(x, where, &g->bias[k].bias, pe))
                return EXSA_EINVAL;
            k++;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            const json_t *p = json_array_get(v, i);
            char where[48];
            snprintf(where, sizeof where, "entry %zu", i);
            if (!json_is_array(p) || json_array_size(p) != 2 ||
                !json_is_integer(json_array_get(p, 0)))
                return exsa_param_fail(pe, "logit_bias", "invalid_type",
                                       "'logit_bias' %s must be a pair [token id, bias]", where);
            if (bias_token(json_integer_value(json_array_get(p, 0)), where, n_vocab,
                           &g->bias[k].token, pe) ||
                bias_value(json_array_get(p, 1), where, &g->bias[k].bias, pe))
                return EXSA_EINVAL;
            k++;
        }
    }
    g->rp.sampling.logit_bias = g->bias;
    g->rp.sampling.n_logit_bias = k;
    return 0;
}

/* ---- fields Exsa knows but does not act on ---- */

enum { IGNORE, NEUTRAL_ONLY };

/* A field either does not change the output (ignored, but its JSON type is
 * still checked: 'b'oolean, 's'tring, 'i'nteger, 'o'bject, 'a'rray, 0 any),
 * or does and Exsa cannot honour it: then only its "off" value (null,
 * false, 0, "", [], or a listed string / {"type": string}) is accepted,
 * anything else is a 400 naming it. */
static const struct {
    const char *name;
    int kind;
    char type;      /* IGNORE: expected JSON type */
    const char *ok; /* NEUTRAL_ONLY: a string value that is also fine, or NULL */
    const char *why;
} other_fields[] = {
    {"user", IGNORE, 's', NULL, NULL},
    {"cache_prompt", IGNORE, 'b', NULL, NULL},
    {"store", IGNORE, 'b', NULL, NULL},
    {"metadata", IGNORE, 'o', NULL, NULL},
    {"service_tier", IGNORE, 's', NULL, NULL},
    {"reasoning_effort", IGNORE, 's', NULL, NULL},
    {"n_keep", IGNORE, 'i', NULL, NULL},
    {"id_slot", IGNORE, 'i', NULL, NULL},
    {"slot_id", IGNORE, 'i', NULL, NULL},
    {"t_max_predict_ms", IGNORE, 'i', NULL, NULL},
    {"t_max_prompt_ms", IGNORE, 'i', NULL, NULL},
    {"timings_per_token", IGNORE, 'b', NULL, NULL},
    {"return_tokens", IGNORE, 'b', NULL, NULL},
    {"penalize_nl", IGNORE, 'b', NULL, NULL},
    {"min_keep", IGNORE, 'i', NULL, NULL},
    {"samplers", IGNORE, 0, NULL, NULL},
    {"dynatemp_exponent", IGNORE, 0, NULL, NULL},
    {"functions", NEUTRAL_ONLY, 0, NULL, "function calling is not supported"},
    {"function_call", NEUTRAL_ONLY, 0, "none", "function calling is not supported"},
    {"audio", NEUTRAL_ONLY, 0, NULL, "audio output is not supported"},
    {"modalities", NEUTRAL_ONLY, 0, "text", "only text output is supported"},
    {"web_search_options", NEUTRAL_ONLY, 0, NULL, "web search is not supported"},
    {"n_probs", NEUTRAL_ONLY, 0, NULL, "n_probs is not supported; use logprobs / top_logprobs"},
    {"dry_multiplier", NEUTRAL_ONLY, 0, NULL, "DRY sampling is not supported"},
    {"xtc_probability", NEUTRAL_ONLY, 0, NULL, "XTC sampling is not supported"},
    {"dynatemp_range", NEUTRAL_ONLY, 0, NULL, "dynamic temperature is not supported"},
    {"lora", NEUTRAL_ONLY, 0, NULL, "LoRA adapters are not supported"},
    {"image_data", NEUTRAL_ONLY, 0, NULL, "images are not supported"},
    {"multimodal_data", NEUTRAL_ONLY, 0, NULL, "multimodal input is not supported"},
    {"echo", NEUTRAL_ONLY, 0, NULL, "echo is not supported"},
    {"suffix", NEUTRAL_ONLY, 0, NULL, "suffix (insertion) is not supported"},
};

static int has_type(const json_t *v, char t)
{
    switch (t) {
    case 'b': return json_is_boolean(v);
    case 's': return json_is_string(v);
    case 'i': return json_is_integer(v);
    case 'o': return json_is_object(v);
    case 'a': return json_is_array(v);
    default: return 1;
    }
}

static const char *type_word(char t)
{
    switch (t) {
    case 'b': return "true or false";
    case 's': return "a string";
    case 'i': return "an integer";
    case 'o': return "an object";
    default: return "an array";
    }
}

/* Fields each endpoint reads itself (prompt, model) or reads below. */
static const char *const handled_fields[] = {
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "n_predict",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "tfs_z",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "seed",
    "logit_bias",
    "stop",
    "n",
    "priority",
    "ignore_eos",
    "logprobs",
    "top_logprobs",
    "max_completion_tokens",
    "best_of",
    "messages",
    "prompt",
    "tokens",
    "add_special",
    "parse_special",
    "response_format",
    "grammar",
    "json_schema",
    "grammar_lazy",
    "grammar_triggers",
    "tools", /* chat: the endpoint reads them (tool_calls.h) */
    "tool_choice",
    "parallel_tool_calls",
    "speculative",
    "prediction",
    "speculative.n_max",
    "speculative.n_min",
    "speculative.p_min",
};

/* Speculative decoding per request: "speculative": true / false, or an
 * object {"n_max", "n_min", "p_min"} (on unless it says "enabled": false),
 * or llama-server's flat "speculative.n_max" / ".n_min" / ".p_min". */
static int parse_speculative(const json_t *body, exsa_gen_params *g, exsa_param_err *pe)
{
    const json_t *v = json_object_get(body, "speculative");
    const json_t *obj = body;
    const char *keys[3] = {"speculative.n_max", "speculative.n_min", "speculative.p_min"};
    if (v && !json_is_null(v)) {
        if (json_is_boolean(v)) {
            g->rp.spec = json_is_true(v);
        } else if (json_is_object(v)) {
            int b, has;
            if (exsa_reqparams_bool(v, "enabled", &b, &has, pe))
                return EXSA_EINVAL;
            g->rp.spec = has ? b : 1;
            obj = v;
            keys[0] = "n_max", keys[1] = "n_min", keys[2] = "p_min";
        } else {
            return exsa_param_fail(pe, "speculative", "invalid_type",
                                   "'speculative' must be true, false or an object with n_max, "
                                   "n_min and p_min");
        }
    }
    long long i;
    double d;
    int has;
    if (exsa_reqparams_int(obj, keys[0], 0, 1024, &i, &has, pe))
        return EXSA_EINVAL;
    if (has)
        g->rp.spec_n_max = (int)i;
    if (exsa_reqparams_int(obj, keys[1], 0, 1024, &i, &has, pe))
        return EXSA_EINVAL;
    if (has)
        g->rp.spec_n_min = (int)i;
    if (exsa_reqparams_num(obj, keys[2], 0, 1, &d, &has, pe))
        return EXSA_EINVAL;
    if (has)
        g->rp.spec_p_min = (float)d;
    if (g->rp.spec_n_max >= 0 && g->rp.spec_n_min > g->rp.spec_n_max)
        return exsa_param_fail(pe, keys[1], "invalid_value",
                               "'%s' (%d) is above '%s' (%d)", keys[1], g->rp.spec_n_min,
                               keys[0], g->rp.spec_n_max);
    return 0;
}

/* OpenAI's predicted outputs: {"type": "content", "content": text or
 * [{"type": "text", "text": ...}]}: the text the answer is expected to
 * repeat, used as speculative guesses (exact either way; the kept and
 * dropped counts come back as accepted / rejected_prediction_tokens). */
static int parse_prediction(const json_t *body, exsa_gen_params *g, exsa_param_err *pe)
{
    const json_t *v = json_object_get(body, "prediction");
    if (!v || json_is_null(v))
        return 0;
    const json_t *type = json_object_get(v, "type"), *c = json_object_get(v, "content");
    if (!json_is_object(v) || !json_is_string(type) || strcmp(json_string_value(type), "content"))
        return exsa_param_fail(pe, "prediction", "invalid_value",
                               "'prediction' must be {\"type\": \"content\", \"content\": ...}");
    size_t len = 0;
    if (json_is_string(c)) {
        len = json_string_length(c);
    } else if (json_is_array(c)) {
        size_t i;
        const json_t *part;
        json_array_foreach(c, i, part) {
            const json_t *t = json_object_get(part, "text");
            if (!json_is_string(t) || !json_is_string(json_object_get(part, "type")) ||
                strcmp(json_string_value(json_object_get(part, "type")), "text"))
                return exsa_param_fail(pe, "prediction.content", "invalid_value",
                                       "'prediction.content' parts must be {\"type\": \"text\", "
                                       "\"text\": ...}");
            len += json_string_length(t);
        }
    } else {
        return exsa_param_fail(pe, "prediction.content", "invalid_type",
                               "'prediction.content' must be a string or an array of text parts");
    }
    if (memchr(json_is_string(c) ? json_string_value(c) : "", 0, json_is_string(c) ? len : 0))
        return exsa_param_fail(pe, "prediction.content", "invalid_value",
                               "'prediction.content' contains a NUL byte");
    char *s = malloc(len + 1);
    if (!s)
        return exsa_param_fail(pe, "prediction", "out_of_memory", "out of memory");
    if (json_is_string(c)) {
        memcpy(s, json_string_value(c), len);
    } else {
        size_t i, at = 0;
        const json_t *part;
        json_array_foreach(c, i, part) {
            const json_t *t = json_object_get(part, "text");
            memcpy(s + at, json_string_value(t), json_string_length(t));
            at += json_string_length(t);
        }
    }
    s[len] = 0;
    free(g->prediction);
    g->prediction = s;
    g->rp.prediction = strlen(s) == len ? s : NULL; /* a NUL inside a part: ignore it */
    return 0;
}

static int neutral(const json_t *v, const char *ok)
{
    switch (json_typeof(v)) {
    case JSON_NULL:
    case JSON_FALSE: return 1;
    case JSON_INTEGER: return json_integer_value(v) == 0;
    case JSON_REAL: return json_real_value(v) == 0;
    case JSON_STRING:
        return json_string_length(v) == 0 || (ok && !strcmp(json_string_value(v), ok));
    case JSON_ARRAY:
        if (json_array_size(v) == 0)
            return 1;
        /* ["text"] for modalities */
        return ok && json_array_size(v) == 1 && json_is_string(json_array_get(v, 0)) &&
               !strcmp(json_string_value(json_array_get(v, 0)), ok);
    case JSON_OBJECT: {
        /* {} is neutral for fields without a named off value; one with
         * (response_format) needs {"type": that value}. */
        if (json_object_size(v) == 0)
            return !ok;
        const json_t *t = json_object_get(v, "type");
        return ok && json_object_size(v) == 1 && json_is_string(t) &&
               !strcmp(json_string_value(t), ok);
    }
    default: return 0;
    }
}

static int check_other_fields(const json_t *body, int kind, exsa_param_err *pe)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)body, key, v)
    {
        int known = 0;
        for (size_t i = 0; i < sizeof handled_fields / sizeof handled_fields[0] && !known; i++)
            known = !strcmp(key, handled_fields[i]);
        if (known)
            continue;
        for (size_t i = 0; i < sizeof other_fields / sizeof other_fields[0] && !known; i++) {
            if (strcmp(key, other_fields[i].name))
                continue;
            known = 1;
            if (other_fields[i].kind == IGNORE && !json_is_null(v) &&
                !has_type(v, other_fields[i].type))
                return exsa_param_fail(pe, key, "invalid_type", "'%s' must be %s, got %s", key,
                                       type_word(other_fields[i].type), type_name(v));
            if (other_fields[i].kind == NEUTRAL_ONLY && !neutral(v, other_fields[i].ok)) {
                char what[96] = "";
                const json_t *t = json_is_object(v) ? json_object_get(v, "type") : NULL;
                if (json_is_string(t))
                    snprintf(what, sizeof what, " (type '%.40s')", json_string_value(t));
                return exsa_param_fail(pe, key, "unsupported_parameter", "'%s'%s: %s", key, what,
                                       other_fields[i].why);
            }
        }
        if (!known && exsa_log_enabled(EXSA_LOG_DEBUG))
            exsa_log(EXSA_LOG_DEBUG, NULL, "request field '%.80s' is not known; ignored", key);
    }
    (void)kind;
    return 0;
}

/* ---- the whole set ---- */

static uint64_t random_seed(void)
{
    uint64_t s;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) != (ssize_t)sizeof s)
        s = (uint64_t)exsa_time_ns() * 0x9E3779B97F4A7C15ull;
    return s == EXSA_SEED_RANDOM ? 0 : s;
}

/* Structured output: OpenAI's response_format, llama-server's grammar and
 * json_schema; at most one of them. Tools (chat) are the endpoint's. */
static int parse_constraint(const json_t *body, int kind, exsa_gen_params *g, exsa_param_err *pe)
{
    const json_t *rf = field(body, "response_format"), *gr = field(body, "grammar"),
                 *js = field(body, "json_schema");
    const char *which = NULL;
    exsa_err err = {0};
    if (rf && !json_is_null(rf)) {
        const char *type = json_string_value(json_object_get(rf, "type"));
        if (!json_is_object(rf) || !type)
            return exsa_param_fail(pe, "response_format", "invalid_type",
                                   "'response_format' must be {\"type\": \"text\" | "
                                   "\"json_object\" | \"json_schema\", ...}");
        if (!strcmp(type, "json_object")) {
            /* llama-server also takes {"type": "json_object", "schema": ...} */
            const json_t *sc = json_object_get(rf, "schema");
            g->grammar = sc ? exsa_json_schema_to_gbnf(sc, &err) : exsa_json_object_gbnf();
            which = "response_format";
        } else if (!strcmp(type, "json_schema")) {
            const json_t *w = json_object_get(rf, "json_schema");
            const json_t *sc = json_object_get(w, "schema");
            if (!json_is_object(w) || !(json_is_object(sc) || json_is_boolean(sc)))
                return exsa_param_fail(pe, "response_format.json_schema", "invalid_value",
                                       "'response_format.json_schema' must be {\"name\": ..., "
                                       "\"schema\": {...}}");
            g->grammar = exsa_json_schema_to_gbnf(sc, &err);
            which = "response_format.json_schema.schema";
        } else if (strcmp(type, "text") != 0) {
            return exsa_param_fail(pe, "response_format.type", "invalid_value",
                                   "'response_format.type' must be text, json_object or "
                                   "json_schema, got '%s'", type);
        }
    }
    if (gr && !json_is_null(gr) && !(json_is_string(gr) && json_string_length(gr) == 0)) {
        if (which)
            return exsa_param_fail(pe, "grammar", "invalid_value",
                                   "'grammar' and '%s' cannot both be given", which);
        if (!json_is_string(gr))
            return exsa_param_fail(pe, "grammar", "invalid_type",
                                   "'grammar' must be a string (GBNF)");
        g->grammar = strdup(json_string_value(gr));
        which = "grammar";
    }
    if (js && !json_is_null(js)) {
        if (which)
            return exsa_param_fail(pe, "json_schema", "invalid_value",
                                   "'json_schema' and '%s' cannot both be given", which);
        if (!json_is_object(js) && !json_is_boolean(js))
            return exsa_param_fail(pe, "json_schema", "invalid_type",
                                   "'json_schema' must be a JSON Schema object");
        g->grammar = exsa_json_schema_to_gbnf(js, &err);
        which = "json_schema";
    }
    (void)kind;
    /* llama-server's lazy grammars: off until a trigger word appears */
    int lazy = 0;
    if (exsa_reqparams_bool(body, "grammar_lazy", &lazy, NULL, pe))
        return EXSA_EINVAL;
    const json_t *tr = field(body, "grammar_triggers");
    if (lazy || (tr && !json_is_null(tr))) {
        const json_t *t0 = json_is_array(tr) && json_array_size(tr) == 1 ? json_array_get(tr, 0)
                                                                         : NULL;
        const char *word = json_is_string(t0) ? json_string_value(t0)
                                              : json_string_value(json_object_get(t0, "value"));
        const char *type = json_string_value(json_object_get(t0, "type"));
        if (!lazy || !which)
            return exsa_param_fail(pe, "grammar_lazy", "invalid_value",
                                   "'grammar_lazy' and 'grammar_triggers' go together, with a "
                                   "grammar");
        if (!word || !*word || (type && strcmp(type, "word") != 0))
            return exsa_param_fail(pe, "grammar_triggers", "invalid_value",
                                   "'grammar_triggers' must hold one trigger word (a string or "
                                   "{\"type\": \"word\", \"value\": ...})");
        if (!(g->grammar_trigger = strdup(word)))
            return exsa_param_fail(pe, "grammar_triggers", "internal_error", "out of memory");
        g->rp.grammar_trigger = g->grammar_trigger;
    }
    if (which && !g->grammar)
        return exsa_param_fail(pe, which, "invalid_value", "'%s': %s", which,
                               err.code ? err.msg : "out of memory");
    g->rp.grammar = g->grammar;
    g->grammar_field = which;
    return 0;
}

int exsa_reqparams_take_grammar(exsa_gen_params *g, char *grammar, const char *trigger,
                                const char *field)
{
    if (!grammar)
        return 0;
    free(g->grammar);
    free(g->grammar_trigger);
    free(g->prediction);
    g->prediction = NULL;
    g->grammar = grammar;
    g->grammar_trigger = trigger ? strdup(trigger) : NULL;
    g->rp.grammar = g->grammar;
    g->rp.grammar_trigger = g->grammar_trigger;
    g->grammar_field = field;
    return trigger && !g->grammar_trigger ? EXSA_ENOMEM : 0;
}

int exsa_reqparams_parse(const json_t *body, int kind, int n_vocab, exsa_gen_params *g,
                         exsa_param_err *pe)
{
    memset(g, 0, sizeof *g);
    exsa_request_params_default(&g->rp);
    g->rp.max_tokens = 0;
    g->n = 1;
    exsa_sampling_params *s = &g->rp.sampling;
    long long i;
    double d;
    int has, b;

    if (check_other_fields(body, kind, pe))
        return EXSA_EINVAL;

    if (exsa_reqparams_bool(body, "stream", &g->stream, NULL, pe))
        return EXSA_EINVAL;
    const json_t *so = field(body, "stream_options");
    if (so) {
        if (!json_is_object(so))
            return exsa_param_fail(pe, "stream_options", "invalid_type",
                                   "'stream_options' must be an object, got %s", type_name(so));
        if (exsa_reqparams_bool(so, "include_usage", &g->include_usage, NULL, pe))
            return exsa_param_fail(pe, "stream_options.include_usage", "invalid_type",
                                   "'stream_options.include_usage' must be true or false");
    }

    /* Token budget: OpenAI's max_tokens / max_completion_tokens (>= 1), or
     * llama-server's n_predict (-1 = until the context is full). */
    int has_mt, has_mct, has_np;
    long long mt = 0, mct = 0, np = 0;
    if (exsa_reqparams_int(body, "max_tokens", 1, INT32_MAX, &mt, &has_mt, pe) ||
        exsa_reqparams_int(body, "max_completion_tokens", 1, INT32_MAX, &mct, &has_mct, pe) ||
        exsa_reqparams_int(body, "n_predict", -1, INT32_MAX, &np, &has_np, pe))
        return EXSA_EINVAL;
    if (has_np && np == 0)
        return exsa_param_fail(pe, "n_predict", "invalid_value",
                               "'n_predict' must be -1 (no limit) or >= 1, got 0");
    if (kind != EXSA_API_CHAT && has_mct)
        return exsa_param_fail(pe, "max_completion_tokens", "invalid_value",
                               "'max_completion_tokens' is a chat completions field; use "
                               "'max_tokens'");
    g->max_tokens = has_mct ? (int)mct : has_mt ? (int)mt : has_np ? (int)np : 0;

    if (exsa_reqparams_num(body, "temperature", 0, 2, &d, &has, pe))
        return EXSA_EINVAL;
    if (has)
        s->temperature = (float)d;
    if (exsa_reqparams_int(body, "top_k", 0, 1 << 30, &i, &has, pe))
        return EXSA_EINVAL;
    if (has)
        s->top_k = (int32_t)i;
    static const struct {
        const char *name;
        double lo, hi;
        size_t off;
    } floats[] = {
        {"top_p", 0, 1, offsetof(exsa_sampling_params, top_p)},
        {"min_p", 0, 1, offsetof(exsa_sampling_params, min_p)},
        {"typical_p", 0, 1, offsetof(exsa_sampling_params, typical_p)},
        {"tfs_z", 1e-6, 1, offsetof(exsa_sampling_params, tfs_z)},
        {"repeat_penalty", 1e-6, 100, offsetof(exsa_sampling_params, repeat_penalty)},
        {"presence_penalty", -2, 2, offsetof(exsa_sampling_params, presence_penalty)},
        {"frequency_penalty", -2, 2, offsetof(exsa_sampling_params, frequency_penalty)},
        {"mirostat_tau", 0, 100, offsetof(exsa_sampling_params, mirostat_tau)},
        {"mirostat_eta", 1e-6, 1, offsetof(exsa_sampling_params, mirostat_eta)},
    };
    for (size_t k = 0; k < sizeof floats / sizeof floats[0]; k++) {
        if (exsa_reqparams_num(body, floats[k].name, floats[k].lo, floats[k].hi, &d, &has, pe))
            return EXSA_EINVAL;
        if (has)
            *(float *)(void *)((char *)s + floats[k].off) = (float)d;
    }
    if (exsa_reqparams_int(body, "repeat_last_n", -1, 1 << 30, &i, &has, pe))
        return EXSA_EINVAL;
    if (has)
        s->repeat_last_n = (int32_t)i;
    if (exsa_reqparams_int(body, "mirostat", 0, 2, &i, &has, pe))
        return EXSA_EINVAL;
    if (has)
        s->mirostat = (int32_t)i;
    if (exsa_reqparams_int(body, "seed", -1, INT64_MAX, &i, &has, pe))
        return EXSA_EINVAL;
    if (has && i >= 0) {
        g->seed_given = 1;
        g->seed = (uint64_t)i;
    } else {
        g->seed = random_seed();
    }
    s->seed = g->seed;
    if (parse_logit_bias(body, n_vocab, g, pe) || parse_stop(body, g, pe))
        return EXSA_EINVAL;

    if (exsa_reqparams_int(body, "n", 1, EXSA_MAX_CHOICES, &i, &has, pe))
        return EXSA_EINVAL;
    if (has)
        g->n = (int)i;
    if (exsa_reqparams_int(body, "best_of", 1, EXSA_MAX_CHOICES, &i, &has, pe))
        return EXSA_EINVAL;
    if (has && i != g->n)
        return exsa_param_fail(pe, "best_of", "unsupported_parameter",
                               "'best_of' other than n is not supported");
    if (exsa_reqparams_int(body, "priority", -1000000, 1000000, &i, &has, pe))
        return EXSA_EINVAL;
    if (has)
        g->rp.priority = (int)i;
    if (exsa_reqparams_bool(body, "ignore_eos", &b, &has, pe))
        return EXSA_EINVAL;
    if (has)
        g->rp.ignore_eos = b;
    if (parse_speculative(body, g, pe) || parse_prediction(body, g, pe))
        return EXSA_EINVAL;

    /* logprobs: chat and native take a boolean plus top_logprobs; the
     * legacy completions API takes the number of alternatives. */
    if (kind == EXSA_API_COMPLETION) {
        if (field(body, "top_logprobs"))
            return exsa_param_fail(pe, "top_logprobs", "invalid_value",
                                   "'top_logprobs' is a chat completions field; completions take "
                                   "'logprobs': N");
        if (exsa_reqparams_int(body, "logprobs", 0, EXSA_MAX_TOP_LOGPROBS, &i, &has, pe))
            return EXSA_EINVAL;
        if (has) {
            g->logprobs = 1;
            g->top_logprobs = (int)i;
        }
    } else {
        if (exsa_reqparams_bool(body, "logprobs", &g->logprobs, NULL, pe))
            return EXSA_EINVAL;
        if (exsa_reqparams_int(body, "top_logprobs", 0, EXSA_MAX_TOP_LOGPROBS, &i, &has, pe))
            return EXSA_EINVAL;
        if (has) {
            if (!g->logprobs && i > 0)
                return exsa_param_fail(pe, "top_logprobs", "invalid_value",
                                       "'top_logprobs' requires 'logprobs': true");
            g->top_logprobs = (int)i;
        }
    }
    g->rp.logprobs = g->logprobs;
    g->rp.top_logprobs = g->top_logprobs;
    return parse_constraint(body, kind, g, pe);
}

void exsa_reqparams_free(exsa_gen_params *g)
{
    if (!g)
        return;
    if (g->stop)
        for (int i = 0; i < g->rp.n_stop; i++)
            free(g->stop[i]);
    free(g->stop);
    free(g->bias);
    free(g->grammar);
    free(g->grammar_trigger);
    free(g->prediction);
    g->prediction = NULL;
    g->stop = NULL;
    g->bias = NULL;
    g->grammar = g->grammar_trigger = NULL;
}

int exsa_reqparams_budget(const exsa_gen_params *p, int n_prompt, int n_ctx, int max_cap,
                          int n_predict, int max_prompt, const char *prompt_field, int *out,
                          exsa_param_err *pe)
{
    if (n_prompt <= 0)
        return exsa_param_fail(pe, prompt_field, "invalid_value", "'%s' is empty (no tokens)",
                               prompt_field);
    if (max_prompt > 0 && n_prompt > max_prompt)
        return exsa_param_fail(pe, prompt_field, "context_length_exceeded",
                               "'%s' has %d tokens; this server accepts at most %d "
                               "(--max-prompt-tokens)",
                               prompt_field, n_prompt, max_prompt);
    if (n_prompt >= n_ctx)
        return exsa_param_fail(pe, prompt_field, "context_length_exceeded",
                               "this model's context is %d tokens, and '%s' alone has %d tokens",
                               n_ctx, prompt_field, n_prompt);
    int room = n_ctx - n_prompt;
    if (p->max_tokens > 0) {
        if (max_cap > 0 && p->max_tokens > max_cap)
            return exsa_param_fail(pe, "max_tokens", "invalid_value",
                                   "'max_tokens' is %d; this server allows at most %d "
                                   "(--max-tokens-cap)",
                                   p->max_tokens, max_cap);
        if (p->max_tokens > room)
            return exsa_param_fail(pe, "max_tokens", "context_length_exceeded",
                                   "this model's context is %d tokens; %d in '%s' + %d "
                                   "'max_tokens' do not fit",
                                   n_ctx, n_prompt, prompt_field, p->max_tokens);
        *out = p->max_tokens;
        return 0;
    }
    /* Not given: the server's default (-n); n_predict -1 in the request, or
     * a default of -1: up to the end of the context. Within the cap. */
    int n = p->max_tokens == 0 && n_predict > 0 ? n_predict : room;
    if (max_cap > 0 && max_cap < n)
        n = max_cap;
    *out = n < room ? n : room;
    return 0;
}
