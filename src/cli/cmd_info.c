#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "quant/quant.h"

static void print_scalar(const exsa_gguf *g, int64_t i)
{
    int t = exsa_gguf_kv_type(g, i);
    int64_t iv;
    uint64_t uv;
    double fv;
    const char *s;
    size_t len;
    if (t == EXSA_GGUF_STRING && exsa_gguf_kv_str(g, i, &s, &len) == 0) {
        /* Long strings (chat templates) are cut; control bytes escaped. */
        size_t show = len > 120 ? 120 : len;
        putchar('"');
        for (size_t k = 0; k < show; k++) {
            unsigned char c = (unsigned char)s[k];
            if (c == '\n')
                fputs("\\n", stdout);
            else if (c < 0x20 || c == 0x7f)
                printf("\\x%02x", c);
            else
                putchar(c);
        }
        printf("\"%s", len > show ? "..." : "");
    } else if (t == EXSA_GGUF_FLOAT32 || t == EXSA_GGUF_FLOAT64) {
        exsa_gguf_kv_float(g, i, &fv);
        printf("%g", fv);
    } else if (t == EXSA_GGUF_BOOL) {
        exsa_gguf_kv_int(g, i, &iv);
        printf("%s", iv ? "true" : "false");
    } else if (t == EXSA_GGUF_UINT64 && exsa_gguf_kv_uint(g, i, &uv) == 0) {
        printf("%llu", (unsigned long long)uv);
    } else if (exsa_gguf_kv_int(g, i, &iv) == 0) {
        printf("%lld", (long long)iv);
    }
}

static void print_array(const exsa_gguf *g, int64_t i)
{
    int et = exsa_gguf_arr_type(g, i);
    uint64_t n = exsa_gguf_arr_n(g, i);
    printf("[%s x %llu]", exsa_gguf_vtype_name(et), (unsigned long long)n);
    if (et == EXSA_GGUF_ARRAY)
        return;
    fputs(" ", stdout);
    for (uint64_t j = 0; j < n && j < 4; j++) {
        if (et == EXSA_GGUF_STRING) {
            size_t len;
            const char *s = exsa_gguf_arr_str(g, i, j, &len);
            printf("%s\"%.*s\"", j ? ", " : "", (int)(len > 24 ? 24 : len), s);
        } else if (et == EXSA_GGUF_FLOAT32 || et == EXSA_GGUF_FLOAT64) {
            printf("%s%g", j ? ", " : "", exsa_gguf_arr_float(g, i, j));
        } else {
            printf("%s%lld", j ? ", " : "", (long long)exsa_gguf_arr_int(g, i, j));
        }
    }
    if (n > 4)
        fputs(", ...", stdout);
}

static void human(double bytes, char *buf, size_t cap)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int k = 0;
    while (bytes >= 1024 && k < 4) {
        bytes /= 1024;
        k++;
    }
    snprintf(buf, cap, "%.2f %s", bytes, u[k]);
}

int exsa_cmd_info(int argc, char **argv)
{
    const char *cmd = "info", *path = exsa_cli_env_model();
    int64_t ctx = 0;
    int show_path = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: exsa info MODEL.gguf [-c CTX]\n"
                   "Shows metadata, architecture, tensors (type, shape), parameter count,\n"
                   "and the memory the weights and the KV cache need at context CTX\n"
                   "(default: the model's training context, capped at 4096).\n");
            return 0;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                exsa_cli_int(cmd, a, v, 1, 1 << 24, &ctx))
                return 1;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(path = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
            show_path = 1;
        } else if (a[0] == '-') {
            return exsa_cli_fail(cmd, "unknown option '%s' (see --help)", a);
        } else if (!show_path) {
            path = a;
            show_path = 1;
        } else {
            return exsa_cli_fail(cmd, "unexpected argument '%s'", a);
        }
    }
    if (!path)
        return exsa_cli_fail(cmd, "missing MODEL.gguf (see --help)");
    exsa_err err = {0};
    exsa_gguf *g = exsa_gguf_open(path, &err);
    if (!g)
        return exsa_cli_fail(cmd, "%s", err.msg);
    printf("file: %s\nformat: GGUF v%u, alignment %llu, %lld key/values, %lld tensors\n", path,
           exsa_gguf_version(g), (unsigned long long)exsa_gguf_alignment(g),
           (long long)exsa_gguf_n_kv(g), (long long)exsa_gguf_n_tensors(g));
    printf("\nmetadata:\n");
    for (int64_t i = 0; i < exsa_gguf_n_kv(g); i++) {
        printf("  %-44s ", exsa_gguf_kv_key(g, i));
        if (exsa_gguf_kv_type(g, i) == EXSA_GGUF_ARRAY)
            print_array(g, i);
        else
            print_scalar(g, i);
        putchar('\n');
    }
    printf("\ntensors:\n");
    uint64_t n_params = 0, bytes = 0;
    for (int64_t i = 0; i < exsa_gguf_n_tensors(g); i++) {
        const exsa_gguf_tensor *t = exsa_gguf_tensor_at(g, i);
        char shape[96];
        int k = snprintf(shape, sizeof shape, "[%lld", (long long)t->ne[0]);
        for (int d = 1; d < t->n_dims; d++)
            k += snprintf(shape + k, sizeof shape - (size_t)k, ", %lld", (long long)t->ne[d]);
        snprintf(shape + k, sizeof shape - (size_t)k, "]");
        const char *tn = exsa_gguf_type_name(t->type);
        printf("  %-36s %-6s %-20s %llu bytes\n", t->name, tn ? tn : "?", shape,
               (unsigned long long)t->size);
        n_params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        bytes += t->size;
    }
    exsa_gguf_close(g);

    char b1[32];
    human((double)bytes, b1, sizeof b1);
    printf("\nparameters: %llu (%.2f M), weights: %s (%.2f bits per weight)\n",
           (unsigned long long)n_params, (double)n_params / 1e6, b1,
           n_params ? 8.0 * (double)bytes / (double)n_params : 0.0);

    exsa_model *m = exsa_model_load(path, &err);
    if (!m) {
        printf("model: not loadable by Exsa: %s\n", err.msg);
        return 1;
    }
    const exsa_hparams *hp = exsa_model_hparams(m);
    printf("architecture: %s\n  vocab %d, embd %d, layers %d, heads %d, kv heads %d, "
           "head dim %d, ff %d\n  context (trained) %d, rms eps %g, rope %s base %g scale %g "
           "dims %d%s%s%s\n",
           hp->arch_name, hp->n_vocab, hp->n_embd, hp->n_layer, hp->n_head, hp->n_head_kv,
           hp->head_dim, hp->n_ff, hp->n_ctx_train, hp->norm_eps,
           hp->rope_mode == 0 ? "normal" : "neox", hp->rope_freq_base, hp->rope_freq_scale,
           hp->n_rot, hp->tied_output ? ", tied output" : "",
           hp->has_qkv_bias ? ", qkv bias" : "", hp->has_qk_norm ? ", q/k norm" : "");
    if (ctx <= 0)
        ctx = hp->n_ctx_train > 0 && hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    printf("memory at context %lld (one sequence):\n  weights  %s (mapped from the file)\n",
           (long long)ctx, b1);
    const int kv_types[] = {EXSA_TYPE_F16, EXSA_TYPE_F32, EXSA_TYPE_Q8_0};
    for (int k = 0; k < 3; k++) {
        uint64_t kvb = exsa_model_kv_bytes(m, (int)ctx, kv_types[k]);
        char b2[32], b3[32];
        human((double)kvb, b2, sizeof b2);
        human((double)(kvb + bytes), b3, sizeof b3);
        printf("  kv %-5s %s (total %s)\n", exsa_type_traits_get(kv_types[k])->name, b2, b3);
    }
    exsa_model_free(m);
    return 0;
}
