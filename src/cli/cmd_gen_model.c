#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "model/model_gen.h"

static const char *usage =
    "usage: exsa gen-model OUT.gguf [--arch llama|qwen2|qwen3|gemma3] [--embd N] [--layers N]\n"
    "         [--heads N] [--kv-heads N] [--ff N] [--vocab N|FILE.gguf] [--head-dim N] [--ctx N]\n"
    "         [--type F32|F16|Q4_0|Q4_K_M|...] [--untied] [--seed S] [-t THREADS]\n"
    "         [--swa N] [--swa-pattern N]   (gemma3: sliding window, every Nth layer global)\n"
    "Writes a model with seeded random weights and Exsa's own generated vocabulary\n"
    "(256 bytes + merges). Its output is random text: it is for tests, benchmarks and\n"
    "the demo. Defaults: llama, embd 256, 2 layers, 4 heads, 2 kv heads, ff 768,\n"
    "vocab 4096, F32, tied output, seed 42.\n"
    "--vocab FILE.gguf copies that file's tokenizer (vocabulary, merges, special\n"
    "tokens, chat template) instead, e.g. ../shared/fixtures/vocab/ggml-vocab-llama-spm.gguf,\n"
    "so that other engines can load the very same file.\n";

int exsa_cmd_gen_model(int argc, char **argv)
{
    const char *cmd = "gen-model", *out = NULL;
    exsa_gen_params p;
    exsa_gen_params_default(&p);
    exsa_err err = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int64_t n;
        struct { const char *flag; int *dst; int64_t lo, hi; } ints[] = {
            {"--embd", &p.n_embd, 2, 65536}, {"--layers", &p.n_layer, 1, 512},
            {"--heads", &p.n_head, 1, 4096}, {"--kv-heads", &p.n_head_kv, 1, 4096},
            {"--ff", &p.n_ff, 1, 262144},
            {"--head-dim", &p.head_dim, 2, 1024}, {"--ctx", &p.n_ctx_train, 1, 1 << 24},
            {"-t", &p.n_threads, 1, 1024},
            {"--swa", &p.n_swa, 0, 1 << 24}, {"--swa-pattern", &p.swa_pattern, 0, 1 << 20},
        };
        int matched = 0;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
            if (!strcmp(a, ints[k].flag)) {
                if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                    exsa_cli_int(cmd, a, v, ints[k].lo, ints[k].hi, &n))
                    return 1;
                *ints[k].dst = (int)n;
                matched = 1;
            }
        if (matched)
            continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--vocab")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
            if (v[0] >= '0' && v[0] <= '9' && strspn(v, "0123456789") == strlen(v)) {
                if (exsa_cli_int(cmd, a, v, 260, 1000000, &n))
                    return 1;
                p.n_vocab = (int)n;
                p.vocab_path = NULL;
            } else {
                p.vocab_path = v;
            }
        } else if (!strcmp(a, "--arch")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
            p.arch = v;
        } else if (!strcmp(a, "--type")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)))
                return 1;
            if (exsa_ftype_parse(v, &p.ftype, &err))
                return exsa_cli_fail(cmd, "--type: %s", err.msg);
        } else if (!strcmp(a, "--seed")) {
            if (!(v = exsa_cli_value(cmd, argc, argv, &i)) ||
                exsa_cli_int(cmd, a, v, 0, INT64_MAX, &n))
                return 1;
            p.seed = (uint64_t)n;
        } else if (!strcmp(a, "--untied")) {
            p.tied = 0;
        } else if (a[0] == '-') {
            return exsa_cli_fail(cmd, "unknown option '%s' (see --help)", a);
        } else if (!out) {
            out = a;
        } else {
            return exsa_cli_fail(cmd, "unexpected argument '%s'", a);
        }
    }
    if (!out)
        return exsa_cli_fail(cmd, "missing OUT.gguf (see --help)");
    if (exsa_model_generate(out, &p, exsa_cli_progress, NULL, &err))
        return exsa_cli_fail(cmd, "%s", err.msg);
    if (p.vocab_path)
        fprintf(stderr, "wrote %s (%s, embd %d, %d layers, %d/%d heads, ff %d, vocab of %s, %s)\n",
                out, p.arch, p.n_embd, p.n_layer, p.n_head, p.n_head_kv, p.n_ff, p.vocab_path,
                p.ftype.name);
    else
        fprintf(stderr, "wrote %s (%s, embd %d, %d layers, %d/%d heads, ff %d, vocab %d, %s)\n",
                out, p.arch, p.n_embd, p.n_layer, p.n_head, p.n_head_kv, p.n_ff, p.n_vocab,
                p.ftype.name);
    return 0;
}
