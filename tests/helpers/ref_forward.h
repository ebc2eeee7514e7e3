/* A naive double-precision forward pass of the llama family (llama, qwen2,
 * qwen3) and Gemma 3, written straight from the math for the model tests.
 *
 * It shares nothing with src/model or src/backend: it reads the
 * hyperparameters from the GGUF keys itself, dequantizes every weight to
 * double with the quant traits' to_float (so a quantized model is compared on
 * exactly the weights the file holds), and recomputes every position of a
 * token sequence from scratch with full causal attention. No KV cache, no
 * batching, no activation quantization (unless asked for with
 * exsa_ref_set_act_quant): it is the exact answer the engine approximates.
 */
#ifndef EXSA_TEST_REF_FORWARD_H
#define EXSA_TEST_REF_FORWARD_H

#include <stddef.h>
#include <stdint.h>

typedef struct exsa_ref_model exsa_ref_model;

typedef struct exsa_ref_hparams {
    char arch[16];      /* "llama", "qwen2", "qwen3" */
    int n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_rot;
    double norm_eps, rope_base, rope_freq_scale;
    int neox;           /* 1: rotate (i, i + n_rot/2); 0: rotate (2i, 2i+1) */
    int qkv_bias, qk_norm, tied;
    /* gemma3: embeddings times sqrt(n_embd), post-attention and post-FFN
     * norms, GeGLU (tanh GELU), q.k scale, optional logit softcap, and
     * sliding-window layers (n_swa > 0: layer l is one when swa_pattern is
     * 0 or l % swa_pattern < swa_pattern - 1) at their own rope base. */
    int gemma3;
    double embd_scale, attn_scale, logit_softcap, rope_base_swa;
    int n_swa, swa_pattern;
} exsa_ref_hparams;

/* Loads the model at path; NULL with a message in msg[msg_len] on failure. */
exsa_ref_model *exsa_ref_load(const char *path, char *msg, size_t msg_len);
void exsa_ref_free(exsa_ref_model *r);
const exsa_ref_hparams *exsa_ref_hparams_get(const exsa_ref_model *r);

/* Off (0, the default): exact math on the dequantized weights. On: each
 * matmul input is first rounded through the weight type's activation format
 * (the quant traits' vec_dot_type: Q8_0 for Q4_0/Q8_0, Q8_K for the
 * K-quants) with the reference quantizer, as the integer dot-product
 * kernels see it. Lets quantized models be checked with tight bounds. */
void exsa_ref_set_act_quant(exsa_ref_model *r, int on);

/* Logits of every position of tokens[0..n): logits[n][n_vocab]. Returns 0,
 * or -1 for a token out of range or an allocation failure. */
int exsa_ref_forward(const exsa_ref_model *r, const int32_t *tokens, int n, double *logits);

/* Greedy continuation: appends n_gen argmax tokens to the n_prompt tokens in
 * seq (which must have room for n_prompt + n_gen), recomputing the whole
 * sequence for each new token. Returns 0 or -1. */
int exsa_ref_greedy(const exsa_ref_model *r, int32_t *seq, int n_prompt, int n_gen);

/* ||a - ref|| / ||ref|| over n values, in double. */
double exsa_ref_rel_l2(const float *a, const double *ref, size_t n);
/* Index of the largest of n values (first one on ties). */
int exsa_ref_argmax_d(const double *x, int n);
int exsa_ref_argmax_f(const float *x, int n);

#endif
