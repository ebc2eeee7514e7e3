#include "text/vocab.h"

#include <stdlib.h>
#include <string.h>

#include "util/err.h"
#include "util/hash.h"

struct exsa_vocab {
    const exsa_gguf *g;
    int kind;
    int32_t n;
    int64_t kv_tokens, kv_types;
    int32_t bos, eos, eot, eom, unk, pad, sep;
    int add_bos, add_eos, add_space_prefix;
    int64_t kv_scores;
    uint8_t *info;         /* per id: effective token type | TOK_EOG */
    int32_t *index;        /* open addressing over token strings, -1 empty */
    uint32_t index_mask;
    int16_t byte_of_cp[512]; /* GPT-2 map: code point -> byte, -1 if none */
};

static int32_t get_id(const exsa_gguf *g, const char *key, int32_t n)
{
    int64_t v;
    if (exsa_gguf_get_int(g, key, &v, NULL) != 0 || v < 0 || v >= n)
        return -1;
    return (int32_t)v;
}

#define TOK_EOG 0x80
#define TOK_TYPE 0x0f

/* Tokens llama.cpp treats as ending generation by their text (GGUF files
 * often name only one of them in eos/eot_token_id). Each is also made a
 * control token, so plain text that spells it is not split out. */
static const char *const EOG_TEXTS[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "[e~[", NULL};

/* Fill-in-the-middle tokens found by text when the GGUF does not name them
 * (tokenizer.ggml.fim_*_token_id): the first one present becomes a control
 * token; pad, repo and file-separator ones also end generation. */
static const struct {
    const char *key;
    int eog;
    const char *texts[9];
} FIM[] = {
    {"tokenizer.ggml.fim_pre_token_id", 0,
     {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
      "<PRE>", "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL}},
    {"tokenizer.ggml.fim_suf_token_id", 0,
     {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>",
      "<SUF>", "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL}},
    {"tokenizer.ggml.fim_mid_token_id", 0,
     {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
      "<MID>", "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL}},
    {"tokenizer.ggml.fim_pad_token_id", 1, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL}},
    {"tokenizer.ggml.fim_rep_token_id", 1,
     {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL}},
    {"tokenizer.ggml.fim_sep_token_id", 1, {"<|file_sep|>", NULL}},
};

static int32_t find_str(const exsa_vocab *v, const char *s)
{
    return exsa_vocab_find(v, s, strlen(s));
}

/* Token types as llama.cpp settles them at load, and the end-of-generation
 * set (llama-vocab.cpp, "auto-detect special tokens by text"). */
static void settle_types(exsa_vocab *v)
{
    for (int32_t id = 0; id < v->n; id++) {
        int64_t t = v->kv_types < 0 ? EXSA_TOKEN_NORMAL : exsa_gguf_arr_int(v->g, v->kv_types, (uint64_t)id);
        v->info[id] = (uint8_t)(t >= EXSA_TOKEN_UNDEFINED && t <= EXSA_TOKEN_BYTE ? t : EXSA_TOKEN_UNDEFINED);
    }
    for (const char *const *t = EOG_TEXTS; *t; t++) {
        int32_t id = find_str(v, *t);
        if (id >= 0)
            v->info[id] = TOK_EOG | EXSA_TOKEN_CONTROL;
    }
    for (size_t k = 0; k < sizeof FIM / sizeof FIM[0]; k++) {
        int32_t id = get_id(v->g, FIM[k].key, v->n);
        for (const char *const *t = FIM[k].texts; id < 0 && *t; t++)
            if ((id = find_str(v, *t)) >= 0)
                v->info[id] = (uint8_t)((v->info[id] & TOK_EOG) | EXSA_TOKEN_CONTROL);
        if (id >= 0 && FIM[k].eog)
            v->info[id] |= TOK_EOG;
    }
    const int32_t named[] = {v->eos, v->eot, v->eom};
    for (int i = 0; i < 3; i++)
        if (named[i] >= 0)
            v->info[named[i]] |= TOK_EOG;
    /* gpt-oss / solar-open: "<|end|>" ends a message, not the generation,
     * when "<|return|>" and "<|call|>" (or "<|calls|>" and "<|flush|>") exist */
    int32_t end = find_str(v, "<|end|>"), ret = find_str(v, "<|return|>"), flush = find_str(v, "<|flush|>");
    int32_t call = find_str(v, "<|call|>");
    if (call < 0)
        call = find_str(v, "<|calls|>");
    if (end >= 0 && (v->info[end] & TOK_EOG) && call >= 0 && (ret >= 0 || flush >= 0))
        v->info[end] = EXSA_TOKEN_USER_DEFINED;
    /* gemma4 / paddleocr: "</s>" is plain text beside "<|tool_response>" */
    int32_t s = find_str(v, "</s>");
    if (s >= 0 && (v->info[s] & TOK_EOG) && find_str(v, "<|tool_response>") >= 0)
        v->info[s] = EXSA_TOKEN_NORMAL;
    /* gpt-oss: these are always rendered */
    static const char *const shown[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL};
    for (const char *const *t = shown; *t; t++) {
        int32_t id = find_str(v, *t);
        if (id >= 0)
            v->info[id] = (uint8_t)((v->info[id] & TOK_EOG) | EXSA_TOKEN_USER_DEFINED);
    }
}

exsa_vocab *exsa_vocab_load(const exsa_gguf *g, exsa_err *err)
{
    const char *model;
    size_t mlen;
    if (exsa_gguf_get_str(g, "tokenizer.ggml.model", &model, &mlen, err) != 0)
        return NULL;
    int kind = 0;
    if (mlen == 5 && memcmp(model, "llama", 5) == 0)
        kind = EXSA_VOCAB_SPM;
    else if (mlen == 4 && memcmp(model, "gpt2", 4) == 0)
        kind = EXSA_VOCAB_BPE;
    else if (mlen == 4 && memcmp(model, "bert", 4) == 0)
        kind = EXSA_VOCAB_WPM;
    if (!kind) {
        exsa_err_set(err, EXSA_EUNSUPPORTED, "vocab: tokenizer model '%.*s' not supported",
                     (int)(mlen > 32 ? 32 : mlen), model);
        return NULL;
    }
    int64_t kt = exsa_gguf_find_key(g, "tokenizer.ggml.tokens");
    if (kt < 0 || exsa_gguf_kv_type(g, kt) != EXSA_GGUF_ARRAY ||
        exsa_gguf_arr_type(g, kt) != EXSA_GGUF_STRING || exsa_gguf_arr_n(g, kt) == 0 ||
        exsa_gguf_arr_n(g, kt) > (1u << 24)) {
        exsa_err_set(err, EXSA_EFORMAT, "vocab: tokenizer.ggml.tokens missing or not strings");
        return NULL;
    }
    exsa_vocab *v = calloc(1, sizeof *v);
    if (!v) {
        exsa_err_set(err, EXSA_ENOMEM, "vocab: out of memory");
        return NULL;
    }
    v->g = g;
    v->kind = kind;
    v->kv_tokens = kt;
    v->n = (int32_t)exsa_gguf_arr_n(g, kt);
    v->kv_types = exsa_gguf_find_key(g, "tokenizer.ggml.token_type");
    if (v->kv_types >= 0 && (exsa_gguf_kv_type(g, v->kv_types) != EXSA_GGUF_ARRAY ||
                             exsa_gguf_arr_n(g, v->kv_types) != (uint64_t)v->n ||
                             exsa_gguf_arr_type(g, v->kv_types) == EXSA_GGUF_STRING ||
                             exsa_gguf_arr_type(g, v->kv_types) == EXSA_GGUF_ARRAY)) {
        exsa_err_set(err, EXSA_EFORMAT, "vocab: tokenizer.ggml.token_type does not match tokens");
        free(v);
        return NULL;
    }
    v->bos = get_id(g, "tokenizer.ggml.bos_token_id", v->n);
    v->eos = get_id(g, "tokenizer.ggml.eos_token_id", v->n);
    v->eot = get_id(g, "tokenizer.ggml.eot_token_id", v->n);
    v->eom = get_id(g, "tokenizer.ggml.eom_token_id", v->n);
    if (kind == EXSA_VOCAB_WPM) { /* BERT files name [CLS]/[SEP] instead */
        if (v->bos < 0)
            v->bos = get_id(g, "tokenizer.ggml.cls_token_id", v->n);
        if (v->eos < 0)
            v->eos = get_id(g, "tokenizer.ggml.seperator_token_id", v->n);
    }
    v->unk = get_id(g, "tokenizer.ggml.unknown_token_id", v->n);
    v->pad = get_id(g, "tokenizer.ggml.padding_token_id", v->n);
    v->sep = get_id(g, "tokenizer.ggml.seperator_token_id", v->n);
    int ab = kind == EXSA_VOCAB_SPM || kind == EXSA_VOCAB_WPM, ae = kind == EXSA_VOCAB_WPM;
    int asp = kind == EXSA_VOCAB_SPM;
    exsa_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &ab, NULL);
    exsa_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &ae, NULL);
    exsa_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &asp, NULL);
    v->add_bos = ab && v->bos >= 0;
    v->add_eos = ae && v->eos >= 0;
    v->add_space_prefix = asp;
    v->kv_scores = exsa_gguf_find_key(g, "tokenizer.ggml.scores");
    if (v->kv_scores >= 0 && (exsa_gguf_kv_type(g, v->kv_scores) != EXSA_GGUF_ARRAY ||
                              exsa_gguf_arr_n(g, v->kv_scores) != (uint64_t)v->n ||
                              exsa_gguf_arr_type(g, v->kv_scores) != EXSA_GGUF_FLOAT32)) {
        exsa_err_set(err, EXSA_EFORMAT, "vocab: tokenizer.ggml.scores does not match tokens");
        free(v);
        return NULL;
    }
    /* Index of token strings. */
    uint32_t cap = 1;
    while (cap < (uint32_t)v->n * 2)
        cap <<= 1;
    v->index = malloc((size_t)cap * sizeof *v->index);
    if (!v->index) {
        exsa_err_set(err, EXSA_ENOMEM, "vocab: out of memory");
        free(v);
        return NULL;
    }
    memset(v->index, 0xFF, (size_t)cap * sizeof *v->index);
    v->index_mask = cap - 1;
    for (int32_t id = 0; id < v->n; id++) {
        size_t len;
        const char *s = exsa_gguf_arr_str(g, kt, (uint64_t)id, &len);
        uint32_t h = (uint32_t)exsa_hash_bytes(EXSA_HASH_INIT, s, len) & v->index_mask;
        int dup = 0;
        while (v->index[h] >= 0) {
            size_t l2;
            const char *s2 = exsa_gguf_arr_str(g, kt, (uint64_t)v->index[h], &l2);
            if (l2 == len && memcmp(s, s2, len) == 0) {
                dup = 1; /* the later id wins, as in llama.cpp's map */
                v->index[h] = id;
                break;
            }
            h = (h + 1) & v->index_mask;
        }
        if (!dup)
            v->index[h] = id;
    }
    for (int i = 0; i < 512; i++)
        v->byte_of_cp[i] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        v->byte_of_cp[printable ? b : 256 + extra++] = (int16_t)b;
    }
    v->info = malloc((size_t)v->n);
    if (!v->info) {
        exsa_err_set(err, EXSA_ENOMEM, "vocab: out of memory");
        exsa_vocab_free(v);
        return NULL;
    }
    settle_types(v);
    return v;
}

void exsa_vocab_free(exsa_vocab *v)
{
    if (v) {
        free(v->index);
        free(v->info);
    }
    free(v);
}

int32_t exsa_vocab_find(const exsa_vocab *v, const char *s, size_t len)
{
    uint32_t h = (uint32_t)exsa_hash_bytes(EXSA_HASH_INIT, s, len) & v->index_mask;
    while (v->index[h] >= 0) {
        size_t l2;
        const char *s2 = exsa_gguf_arr_str(v->g, v->kv_tokens, (uint64_t)v->index[h], &l2);
        if (l2 == len && memcmp(s, s2, len) == 0)
            return v->index[h];
        h = (h + 1) & v->index_mask;
    }
    return -1;
}

float exsa_vocab_score(const exsa_vocab *v, int32_t id)
{
    if (v->kv_scores < 0 || id < 0 || id >= v->n)
        return 0.0f;
    return (float)exsa_gguf_arr_float(v->g, v->kv_scores, (uint64_t)id);
}

int32_t exsa_vocab_unk(const exsa_vocab *v) { return v->unk; }
int32_t exsa_vocab_pad(const exsa_vocab *v) { return v->pad; }
int32_t exsa_vocab_sep(const exsa_vocab *v) { return v->sep; }
int exsa_vocab_add_eos(const exsa_vocab *v) { return v->add_eos; }
int exsa_vocab_add_space_prefix(const exsa_vocab *v) { return v->add_space_prefix; }
const exsa_gguf *exsa_vocab_gguf(const exsa_vocab *v) { return v->g; }

int exsa_vocab_kind(const exsa_vocab *v) { return v->kind; }
int32_t exsa_vocab_n_tokens(const exsa_vocab *v) { return v->n; }
int32_t exsa_vocab_bos(const exsa_vocab *v) { return v->bos; }
int32_t exsa_vocab_eos(const exsa_vocab *v) { return v->eos; }
int exsa_vocab_add_bos(const exsa_vocab *v) { return v->add_bos; }

int exsa_vocab_is_eog(const exsa_vocab *v, int32_t id)
{
    return id >= 0 && id < v->n && (v->info[id] & TOK_EOG);
}

int exsa_vocab_token_type(const exsa_vocab *v, int32_t id)
{
    if (id < 0 || id >= v->n)
        return EXSA_TOKEN_UNDEFINED;
    return v->info[id] & TOK_TYPE;
}

const char *exsa_vocab_token_str(const exsa_vocab *v, int32_t id, size_t *len)
{
    if (id < 0 || id >= v->n) {
        *len = 0;
        return "";
    }
    return exsa_gguf_arr_str(v->g, v->kv_tokens, (uint64_t)id, len);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0'
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
           : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static void put(char *buf, size_t cap, size_t *n, char c)
{
    if (*n < cap)
        buf[*n] = c;
    (*n)++;
}

int exsa_vocab_token_to_piece(const exsa_vocab *v, int32_t id, char *buf, size_t cap,
                              int special)
{
    if (id < 0 || id >= v->n)
        return -1;
    int type = exsa_vocab_token_type(v, id);
    size_t len, n = 0;
    const char *s = exsa_vocab_token_str(v, id, &len);
    if (type == EXSA_TOKEN_CONTROL && !special)
        return 0;
    if (type == EXSA_TOKEN_BYTE && len == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' &&
        hexval(s[3]) >= 0 && hexval(s[4]) >= 0 && s[5] == '>') {
        put(buf, cap, &n, (char)(hexval(s[3]) * 16 + hexval(s[4])));
        return (int)n;
    }
    if (type == EXSA_TOKEN_CONTROL || type == EXSA_TOKEN_USER_DEFINED ||
        type == EXSA_TOKEN_UNUSED) {
        for (size_t i = 0; i < len; i++)
            put(buf, cap, &n, s[i]);
        return (int)n;
    }
    if (v->kind == EXSA_VOCAB_SPM || v->kind == EXSA_VOCAB_WPM) {
        for (size_t i = 0; i < len; i++) {
            if (i + 2 < len && (unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x96 &&
                (unsigned char)s[i + 2] == 0x81) {
                put(buf, cap, &n, ' ');
                i += 2;
            } else {
                put(buf, cap, &n, s[i]);
            }
        }
        return (int)n;
    }
    /* Byte-level BPE: each code point of the token is one byte. */
    for (size_t i = 0; i < len;) {
        unsigned c = (unsigned char)s[i];
        int cp = -1;
        if (c < 0x80) {
            cp = (int)c;
            i += 1;
        } else if ((c & 0xE0) == 0xC0 && i + 1 < len) {
            cp = (int)(((c & 0x1F) << 6) | ((unsigned char)s[i + 1] & 0x3F));
            i += 2;
        } else {
            i += 1; /* not from the byte map: keep going, drop it */
        }
        if (cp >= 0 && cp < 512 && v->byte_of_cp[cp] >= 0)
            put(buf, cap, &n, (char)v->byte_of_cp[cp]);
    }
    return (int)n;
}
