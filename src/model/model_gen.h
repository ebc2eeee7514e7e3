/* Random-weight model files of any shape, for tests, benchmarks and the demo.
 *
 * Weights are seeded N(0, 1/sqrt(fan_in)) (tied embeddings N(0, 0.1)), norms
 * near 1, so activations stay in a realistic range. The vocabulary is Exsa's
 * own: the 256 bytes (GPT-2 byte map) plus deterministic generated merges up
 * to n_vocab - 2, then <s> and </s> as control tokens; tokenizer "gpt2" with
 * pre-tokenizer "gpt-2". Same params + seed = same file, whatever the
 * thread count. */
#ifndef EXSA_MODEL_GEN_H
#define EXSA_MODEL_GEN_H

#include <stdint.h>

#include "exsa.h"
#include "model/model_quantize.h"

typedef struct exsa_gen_params {
    const char *arch;   /* "llama", "qwen2", "qwen3", "gemma3" */
    int n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab;
    int head_dim;       /* 0: n_embd / n_head */
    int n_ctx_train;    /* 0: 4096 */
    int tied;           /* 1: no output.weight (uses token_embd) */
    float rope_freq_base; /* 0: 10000 (llama) / 1e6 (qwen, gemma3) */
    int n_swa;          /* gemma3: sliding window (0: none, every layer global) */
    int swa_pattern;    /* gemma3: every swa_pattern-th layer global (0: none) */
    exsa_ftype ftype;
    uint64_t seed;
    int n_threads;      /* <= 0: all cores */
    /* A GGUF file whose tokenizer.* keys (vocabulary, merges, special ids,
     * chat template) are copied instead of generating one; n_vocab then
     * comes from it. NULL: Exsa's own generated vocabulary. */
    const char *vocab_path;
} exsa_gen_params;

void exsa_gen_params_default(exsa_gen_params *p);
int exsa_model_generate(const char *path, const exsa_gen_params *p, exsa_progress_fn progress,
                        void *ud, exsa_err *err);

#endif
