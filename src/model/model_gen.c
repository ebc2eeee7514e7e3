#include "model/model_gen.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu_features.h"
#include "gguf/gguf.h"
#include "quant/quant.h"
#include "util/err.h"
#include "util/hash.h"
#include "util/threadpool.h"

void exsa_gen_params_default(exsa_gen_params *p)
{
    *p = (exsa_gen_params){
        .arch = "llama", .n_embd = 256, .n_layer = 2, .n_head = 4, .n_head_kv = 2,
        .n_ff = 768, .n_vocab = 4096, .tied = 1, .seed = 42, .n_swa = 0, .swa_pattern = 6,
        .ftype = {"F32", EXSA_TYPE_F32, 0},
    };
}

/* ---- vocabulary ---- */

/* GPT-2's byte map: printable bytes stand for themselves, the rest are
 * shifted to U+0100.. so every token is printable UTF-8. */
static int byte_to_cp(int b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
        return b;
    int n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255)))
            n++;
    return 256 + n;
}

static size_t put_utf8(char *out, int cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

typedef struct vocab {
    int n;
    char **text;       /* raw bytes of each token, NUL-terminated */
    char **shown;      /* GPT-2-mapped token strings */
    char **merges;     /* "left right" in mapped form */
    int n_merges;
    uint64_t *set;     /* open-addressing hash set of raw texts (0 = empty) */
    size_t set_cap;
} vocab;

static int set_insert(vocab *v, const char *s)
{
    uint64_t h = exsa_hash_bytes(EXSA_HASH_INIT, s, strlen(s)) | 1;
    size_t i = h & (v->set_cap - 1);
    while (v->set[i]) {
        if (v->set[i] == h)
            return 0; /* a 64-bit hash collision counts as taken: harmless here */
        i = (i + 1) & (v->set_cap - 1);
    }
    v->set[i] = h;
    return 1;
}

static char *map_text(const char *raw)
{
    size_t n = strlen(raw);
    char *out = malloc(2 * n + 1);
    if (!out)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += put_utf8(out + k, byte_to_cp((unsigned char)raw[i]));
    out[k] = '\0';
    return out;
}

static int is_word_piece(const char *s, int allow_space)
{
    if (allow_space && *s == ' ')
        s++;
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!(*s >= 'a' && *s <= 'z'))
            return 0;
    return 1;
}

static void vocab_free(vocab *v)
{
    for (int i = 0; i < v->n; i++) {
        free(v->text ? v->text[i] : NULL);
        free(v->shown ? v->shown[i] : NULL);
    }
    for (int i = 0; i < v->n_merges; i++)
        free(v->merges[i]);
    free(v->text);
    free(v->shown);
    free(v->merges);
    free(v->set);
}

/* 256 byte tokens, then merges of a lowercase piece (optionally with a
 * leading space) and a lowercase piece, drawn with a bias towards short
 * pieces so the vocabulary looks like subwords, then <s> and </s>. */
static int vocab_build(vocab *v, int n_vocab, uint64_t seed, exsa_err *err)
{
    memset(v, 0, sizeof *v);
    v->text = calloc((size_t)n_vocab, sizeof *v->text);
    v->shown = calloc((size_t)n_vocab, sizeof *v->shown);
    v->merges = calloc((size_t)n_vocab, sizeof *v->merges);
    v->set_cap = 1;
    while (v->set_cap < (size_t)n_vocab * 4)
        v->set_cap <<= 1;
    v->set = calloc(v->set_cap, sizeof *v->set);
    if (!v->text || !v->shown || !v->merges || !v->set)
        goto oom;
    for (int b = 0; b < 256; b++) {
        char raw[2] = {(char)b, 0};
        v->text[b] = malloc(2);
        if (!v->text[b])
            goto oom;
        memcpy(v->text[b], raw, 2);
        v->shown[b] = map_text(raw);
        if (!v->shown[b])
            goto oom;
        v->n = b + 1;
        if (b)
            set_insert(v, raw);
    }
    uint64_t rng = seed ^ 0x5EED5EEDull;
    const int n_merge_target = n_vocab - 2;
    int tries = 0;
    while (v->n < n_merge_target && tries < 100 * n_vocab) {
        tries++;
        /* Left: ' ' + letter or any word piece; right: a word piece. */
        int a, b;
        uint64_t r = exsa_splitmix64(&rng);
        if (r % 4 == 0) {
            a = ' ';
        } else {
            int span = v->n < 600 ? v->n : 600 + (int)((r >> 8) % (uint64_t)(v->n - 600 + 1));
            a = (int)((r >> 20) % (uint64_t)span);
        }
        uint64_t r2 = exsa_splitmix64(&rng);
        int span2 = v->n < 400 ? v->n : 400 + (int)(r2 % (uint64_t)(v->n - 400 + 1)) / 4;
        b = (int)((r2 >> 24) % (uint64_t)span2);
        if (!is_word_piece(v->text[a], 1) && a != ' ')
            continue;
        if (!is_word_piece(v->text[b], 0))
            continue;
        size_t la = strlen(v->text[a]), lb = strlen(v->text[b]);
        if (la + lb > 12)
            continue;
        char raw[32];
        memcpy(raw, v->text[a], la);
        memcpy(raw + la, v->text[b], lb + 1);
        if (!set_insert(v, raw))
            continue;
        int id = v->n;
        v->text[id] = strdup(raw);
        v->shown[id] = v->text[id] ? map_text(raw) : NULL;
        size_t ls = strlen(v->shown[a]) + strlen(v->shown[b]) + 2;
        v->merges[v->n_merges] = malloc(ls);
        if (!v->text[id] || !v->shown[id] || !v->merges[v->n_merges])
            goto oom;
        snprintf(v->merges[v->n_merges], ls, "%s %s", v->shown[a], v->shown[b]);
        v->n_merges++;
        v->n++;
    }
    /* Tiny vocabularies (or a saturated merge space) pad with unused tokens. */
    while (v->n < n_vocab) {
        char name[32];
        const char *fixed = v->n == n_vocab - 2 ? "<s>" : v->n == n_vocab - 1 ? "</s>" : NULL;
        if (!fixed)
            snprintf(name, sizeof name, "<unused%d>", v->n);
        v->text[v->n] = strdup(fixed ? fixed : name);
        v->shown[v->n] = v->text[v->n] ? strdup(v->text[v->n]) : NULL;
        if (!v->shown[v->n]) {
            v->n++;
            goto oom;
        }
        v->n++;
    }
    return 0;
oom:
    vocab_free(v);
    return exsa_err_set(err, EXSA_ENOMEM, "gen-model: out of memory building the vocabulary");
}

/* ---- weights ---- */

typedef struct fill_job {
    float *data;
    int64_t n_in, n_rows;
    uint64_t seed;
    float std, mean;
} fill_job;

/* Irwin-Hall (sum of 4 uniforms) is close enough to a normal for random
 * weights and much cheaper than Box-Muller on a billion values. */
static void fill_task(void *ctx, int task, int thread)
{
    fill_job *j = ctx;
    const int64_t rows_per_task = 64;
    int64_t r0 = (int64_t)task * rows_per_task, r1 = r0 + rows_per_task;
    if (r1 > j->n_rows)
        r1 = j->n_rows;
    /* the sum of 4 uniforms on [0, 65535] has sd 65536/sqrt(3) */
    const float k = j->std * 1.7320508f / 65536.0f;
    for (int64_t r = r0; r < r1; r++) {
        uint64_t st = j->seed ^ ((uint64_t)r * 0x9E3779B97F4A7C15ull);
        float *row = j->data + r * j->n_in;
        for (int64_t i = 0; i < j->n_in; i++) {
            uint64_t x = exsa_splitmix64(&st);
            int32_t s = (int32_t)(x & 0xFFFF) + (int32_t)((x >> 16) & 0xFFFF) +
                        (int32_t)((x >> 32) & 0xFFFF) + (int32_t)(x >> 48) - 2 * 65535;
            row[i] = j->mean + k * (float)s;
        }
    }
}

typedef struct tensor_spec {
    char name[64];
    int n_dims;
    int64_t ne[2];
    float std, mean;
    int type;
} tensor_spec;

static void add_spec(tensor_spec *ts, int *k, const char *name, int n_dims, int64_t ne0,
                     int64_t ne1, float std, float mean)
{
    tensor_spec *t = &ts[(*k)++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->std = std;
    t->mean = mean;
}

static const char *arch_key(char *buf, size_t cap, const char *arch, const char *suffix)
{
    snprintf(buf, cap, "%s.%s", arch, suffix);
    return buf;
}

int exsa_model_generate(const char *path, const exsa_gen_params *p, exsa_progress_fn progress,
                        void *ud, exsa_err *err)
{
    int arch_qwen2 = strcmp(p->arch, "qwen2") == 0, arch_qwen3 = strcmp(p->arch, "qwen3") == 0;
    int arch_gemma3 = strcmp(p->arch, "gemma3") == 0;
    if (strcmp(p->arch, "llama") != 0 && !arch_qwen2 && !arch_qwen3 && !arch_gemma3)
        return exsa_err_set(err, EXSA_EINVAL,
                            "gen-model: --arch must be llama, qwen2, qwen3 or gemma3");
    if (p->n_swa < 0 || p->swa_pattern < 0)
        return exsa_err_set(err, EXSA_EINVAL, "gen-model: --swa and --swa-pattern must be >= 0");
    if (p->n_embd <= 0 || p->n_embd > 65536 || p->n_layer <= 0 || p->n_layer > 512 ||
        p->n_head <= 0 || p->n_head_kv <= 0 || p->n_ff <= 0 || p->n_ff > 262144 ||
        p->n_vocab < 260 || p->n_vocab > 1000000)
        return exsa_err_set(err, EXSA_EINVAL,
                            "gen-model: sizes out of range (embd 1..65536, layers 1..512, "
                            "ff 1..262144, vocab 260..1000000, heads > 0)");
    if (p->n_head % p->n_head_kv != 0)
        return exsa_err_set(err, EXSA_EINVAL, "gen-model: --kv-heads %d must divide --heads %d",
                            p->n_head_kv, p->n_head);
    int hd = p->head_dim > 0 ? p->head_dim : p->n_embd / p->n_head;
    if (hd <= 0 || hd % 2 != 0 || (p->head_dim <= 0 && p->n_embd % p->n_head != 0))
        return exsa_err_set(err, EXSA_EINVAL,
                            "gen-model: head dimension must be even and divide --embd");
    /* A borrowed vocabulary sets n_vocab; its keys are copied below. */
    exsa_gguf *vsrc = NULL;
    int64_t n_vocab = p->n_vocab;
    if (p->vocab_path) {
        if (!(vsrc = exsa_gguf_open(p->vocab_path, err)))
            return err->code;
        int64_t ti = exsa_gguf_find_key(vsrc, "tokenizer.ggml.tokens");
        if (ti < 0 || exsa_gguf_kv_type(vsrc, ti) != EXSA_GGUF_ARRAY ||
            exsa_gguf_arr_type(vsrc, ti) != EXSA_GGUF_STRING || exsa_gguf_arr_n(vsrc, ti) < 1 ||
            exsa_gguf_arr_n(vsrc, ti) > 1000000) {
            exsa_gguf_close(vsrc);
            return exsa_err_set(err, EXSA_EFORMAT,
                                "gen-model: %s has no usable tokenizer.ggml.tokens array",
                                p->vocab_path);
        }
        n_vocab = (int64_t)exsa_gguf_arr_n(vsrc, ti);
    }
    const int64_t E = p->n_embd, Q = (int64_t)p->n_head * hd, KV = (int64_t)p->n_head_kv * hd,
                  F = p->n_ff, V = n_vocab;

    vocab voc;
    memset(&voc, 0, sizeof voc);
    int rc = vsrc ? 0 : vocab_build(&voc, p->n_vocab, p->seed, err);
    if (rc)
        return rc;

    int n_per_layer = 9 + (arch_qwen2 ? 3 : 0) + (arch_qwen3 || arch_gemma3 ? 2 : 0) +
                      (arch_gemma3 ? 2 : 0);
    int n_tensors = 2 + (p->tied ? 0 : 1) + p->n_layer * n_per_layer;
    tensor_spec *ts = calloc((size_t)n_tensors, sizeof *ts);
    exsa_gguf_writer *w = exsa_gguf_writer_create(err);
    int n_threads = p->n_threads > 0 ? p->n_threads : exsa_cpu_physical_cores();
    exsa_threadpool *pool = exsa_threadpool_create(n_threads, err);
    float *f32 = NULL;
    void *qbuf = NULL;
    if (!ts || !w || !pool) {
        rc = exsa_err_set(err, EXSA_ENOMEM, "gen-model: out of memory");
        goto done;
    }
    int k = 0;
    const float emb_std = p->tied ? 0.1f : 1.0f;
    add_spec(ts, &k, "token_embd.weight", 2, E, V, emb_std, 0.0f);
    add_spec(ts, &k, "output_norm.weight", 1, E, 1, 0.1f, 1.0f);
    if (!p->tied)
        add_spec(ts, &k, "output.weight", 2, E, V, 1.0f / sqrtf((float)E), 0.0f);
    for (int l = 0; l < p->n_layer; l++) {
        char nm[64];
        const struct { const char *s; int d; int64_t a, b; float sd, mu; } lay[] = {
            {"attn_norm.weight", 1, E, 1, 0.1f, 1.0f},
            {"attn_q.weight", 2, E, Q, 1.0f / sqrtf((float)E), 0},
            {"attn_k.weight", 2, E, KV, 1.0f / sqrtf((float)E), 0},
            {"attn_v.weight", 2, E, KV, 1.0f / sqrtf((float)E), 0},
            {"attn_output.weight", 2, Q, E, 1.0f / sqrtf((float)Q), 0},
            {"ffn_norm.weight", 1, E, 1, 0.1f, 1.0f},
            {"ffn_gate.weight", 2, E, F, 1.0f / sqrtf((float)E), 0},
            {"ffn_up.weight", 2, E, F, 1.0f / sqrtf((float)E), 0},
            {"ffn_down.weight", 2, F, E, 1.0f / sqrtf((float)F), 0},
            {"attn_q.bias", 1, Q, 1, 0.1f, 0}, {"attn_k.bias", 1, KV, 1, 0.1f, 0},
            {"attn_v.bias", 1, KV, 1, 0.1f, 0},
            {"attn_q_norm.weight", 1, hd, 1, 0.1f, 1.0f},
            {"attn_k_norm.weight", 1, hd, 1, 0.1f, 1.0f},
            {"post_attention_norm.weight", 1, E, 1, 0.1f, 1.0f},
            {"post_ffw_norm.weight", 1, E, 1, 0.1f, 1.0f},
        };
        for (int i = 0; i < 16; i++) {
            if (i >= 9 && i < 12 && !arch_qwen2)
                continue;
            if (i >= 12 && i < 14 && !arch_qwen3 && !arch_gemma3)
                continue;
            if (i >= 14 && !arch_gemma3)
                continue;
            snprintf(nm, sizeof nm, "blk.%d.%s", l, lay[i].s);
            add_spec(ts, &k, nm, lay[i].d, lay[i].a, lay[i].b, lay[i].sd, lay[i].mu);
        }
    }

    /* Metadata. */
    char key[96];
    const char *a = p->arch;
    exsa_gguf_writer_set_str(w, "general.architecture", a);
    exsa_gguf_writer_set_str(w, "general.name", "exsa random model");
    exsa_gguf_writer_set_u32(w, "general.quantization_version", 2);
    exsa_gguf_writer_set_u32(w, arch_key(key, sizeof key, a, "context_length"),
                             (uint32_t)(p->n_ctx_train > 0 ? p->n_ctx_train : 4096));
    exsa_gguf_writer_set_u32(w, arch_key(key, sizeof key, a, "embedding_length"), (uint32_t)E);
    exsa_gguf_writer_set_u32(w, arch_key(key, sizeof key, a, "block_count"), (uint32_t)p->n_layer);
    exsa_gguf_writer_set_u32(w, arch_key(key, sizeof key, a, "feed_forward_length"), (uint32_t)F);
    exsa_gguf_writer_set_u32(w, arch_key(key, sizeof key, a, "attention.head_count"), (uint32_t)p->n_head);
    exsa_gguf_writer_set_u32(w, arch_key(key, sizeof key, a, "attention.head_count_kv"), (uint32_t)p->n_head_kv);
    exsa_gguf_writer_set_u32(w, arch_key(key, sizeof key, a, "attention.key_length"), (uint32_t)hd);
    exsa_gguf_writer_set_u32(w, arch_key(key, sizeof key, a, "attention.value_length"), (uint32_t)hd);
    exsa_gguf_writer_set_u32(w, arch_key(key, sizeof key, a, "rope.dimension_count"), (uint32_t)hd);
    exsa_gguf_writer_set_f32(w, arch_key(key, sizeof key, a, "attention.layer_norm_rms_epsilon"),
                             arch_qwen2 || arch_qwen3 || arch_gemma3 ? 1e-6f : 1e-5f);
    exsa_gguf_writer_set_f32(w, arch_key(key, sizeof key, a, "rope.freq_base"),
                             p->rope_freq_base > 0 ? p->rope_freq_base
                             : (arch_qwen2 || arch_qwen3 || arch_gemma3) ? 1e6f : 10000.0f);
    if (arch_gemma3 && p->n_swa > 0) {
        exsa_gguf_writer_set_u32(w, arch_key(key, sizeof key, a, "attention.sliding_window"),
                                 (uint32_t)p->n_swa);
        exsa_gguf_writer_set_u32(w,
                                 arch_key(key, sizeof key, a, "attention.sliding_window_pattern"),
                                 (uint32_t)p->swa_pattern);
    }
    if (vsrc) {
        for (int64_t i = 0; i < exsa_gguf_n_kv(vsrc); i++)
            if (strncmp(exsa_gguf_kv_key(vsrc, i), "tokenizer.", 10) == 0 &&
                (rc = exsa_gguf_writer_copy_kv(w, vsrc, i)) != 0) {
                rc = exsa_err_set(err, rc, "gen-model: cannot copy '%s' from %s",
                                  exsa_gguf_kv_key(vsrc, i), p->vocab_path);
                goto done;
            }
        goto vocab_done;
    }
    exsa_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    exsa_gguf_writer_set_str(w, "tokenizer.ggml.pre", "gpt-2");
    exsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)voc.shown,
                                 (uint64_t)voc.n);
    {
        int32_t *tt = malloc((size_t)voc.n * sizeof *tt);
        if (!tt) {
            rc = exsa_err_set(err, EXSA_ENOMEM, "gen-model: out of memory");
            goto done;
        }
        for (int i = 0; i < voc.n; i++)
            tt[i] = i < 256 + voc.n_merges ? 1 : i >= voc.n - 2 ? 3 : 5; /* normal, control, unused */
        exsa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", EXSA_GGUF_INT32, tt,
                                 (uint64_t)voc.n);
        free(tt);
    }
    exsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)voc.merges,
                                 (uint64_t)voc.n_merges);
    exsa_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)(voc.n - 2));
    exsa_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)(voc.n - 1));
    exsa_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", !arch_qwen2 && !arch_qwen3);
vocab_done:

    /* Tensors. */
    size_t max_elems = 0, max_bytes = 0;
    for (int i = 0; i < k; i++) {
        ts[i].type = exsa_ftype_tensor_type(&p->ftype, ts[i].name, ts[i].n_dims, ts[i].ne[0],
                                            p->n_layer);
        if (p->tied && strcmp(ts[i].name, "token_embd.weight") == 0 && p->ftype.mix)
            ts[i].type = exsa_ftype_tensor_type(&p->ftype, "output.weight", 2, ts[i].ne[0],
                                                p->n_layer);
        if ((rc = exsa_gguf_writer_add_tensor(w, ts[i].name, ts[i].type, ts[i].n_dims, ts[i].ne,
                                              err)) != 0)
            goto done;
        size_t ne = (size_t)(ts[i].ne[0] * ts[i].ne[1]);
        size_t nb = exsa_type_row_size(ts[i].type, ts[i].ne[0]) * (size_t)ts[i].ne[1];
        if (ne > max_elems)
            max_elems = ne;
        if (nb > max_bytes)
            max_bytes = nb;
    }
    f32 = malloc(max_elems * sizeof(float));
    qbuf = malloc(max_bytes);
    if (!f32 || !qbuf) {
        rc = exsa_err_set(err, EXSA_ENOMEM, "gen-model: cannot allocate %zu bytes",
                          max_elems * sizeof(float) + max_bytes);
        goto done;
    }
    if ((rc = exsa_gguf_writer_begin(w, path, err)) != 0)
        goto done;
    for (int i = 0; i < k; i++) {
        fill_job j = {
            .data = f32, .n_in = ts[i].ne[0], .n_rows = ts[i].ne[1], .std = ts[i].std,
            .mean = ts[i].mean,
            .seed = p->seed * 0x100000001b3ull ^ exsa_hash_bytes(EXSA_HASH_INIT, ts[i].name,
                                                                 strlen(ts[i].name)),
        };
        exsa_threadpool_run(pool, fill_task, &j, (int)((j.n_rows + 63) / 64));
        const void *out = f32;
        if (ts[i].type != EXSA_TYPE_F32) {
            rc = exsa_convert_rows(pool, EXSA_TYPE_F32, f32, ts[i].type, qbuf, j.n_in, j.n_rows,
                                   err);
            if (rc)
                goto done;
            out = qbuf;
        }
        size_t nb = exsa_type_row_size(ts[i].type, ts[i].ne[0]) * (size_t)ts[i].ne[1];
        if ((rc = exsa_gguf_writer_write_tensor(w, out, nb, err)) != 0)
            goto done;
        if (progress)
            progress(ud, i + 1, k);
    }
    rc = exsa_gguf_writer_finish(w, err);
done:
    free(f32);
    free(qbuf);
    free(ts);
    exsa_threadpool_free(pool);
    exsa_gguf_writer_free(w);
    vocab_free(&voc);
    exsa_gguf_close(vsrc);
    return rc;
}
