/* A model's vocabulary as stored in GGUF (tokenizer.ggml.*): token strings,
 * types, scores and special ids, and the decoding of one token to the raw
 * bytes it stands for. Tokenizers (encode) build on this.
 *
 * Token strings point into the GGUF mapping: the vocab must not outlive the
 * exsa_gguf it was loaded from. Read-only after load, safe to share. */
#ifndef EXSA_TEXT_VOCAB_H
#define EXSA_TEXT_VOCAB_H

#include <stddef.h>
#include <stdint.h>

#include "exsa.h"
#include "gguf/gguf.h"

enum exsa_vocab_kind {
    EXSA_VOCAB_SPM = 1,  /* "llama": sentencepiece, U+2581 for space, <0xNN> bytes */
    EXSA_VOCAB_BPE = 2,  /* "gpt2": byte-level BPE with GPT-2's byte map */
    EXSA_VOCAB_WPM = 3,  /* "bert": WordPiece, "##" continuation */
};

enum exsa_token_type {
    EXSA_TOKEN_UNDEFINED = 0,
    EXSA_TOKEN_NORMAL = 1,
    EXSA_TOKEN_UNKNOWN = 2,
    EXSA_TOKEN_CONTROL = 3,
    EXSA_TOKEN_USER_DEFINED = 4,
    EXSA_TOKEN_UNUSED = 5,
    EXSA_TOKEN_BYTE = 6,
};

typedef struct exsa_vocab exsa_vocab;

exsa_vocab *exsa_vocab_load(const exsa_gguf *g, exsa_err *err);
void exsa_vocab_free(exsa_vocab *v);

int exsa_vocab_kind(const exsa_vocab *v);
int32_t exsa_vocab_n_tokens(const exsa_vocab *v);
int32_t exsa_vocab_bos(const exsa_vocab *v); /* -1 if none */
int32_t exsa_vocab_eos(const exsa_vocab *v); /* -1 if none */
int exsa_vocab_add_bos(const exsa_vocab *v);
/* End of generation: the eos/eot/eom ids of the GGUF, and, as llama.cpp
 * decides it, every token whose text is a known end-of-turn marker
 * ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "</s>", ...) and FIM
 * pad/repo/separator tokens. */
int exsa_vocab_is_eog(const exsa_vocab *v, int32_t id);
/* The token type as llama.cpp settles it at load: tokenizer.ggml.token_type,
 * except that the end-of-turn / FIM markers found by text are CONTROL (so
 * plain text that spells them stays text unless special tokens are parsed). */
int exsa_vocab_token_type(const exsa_vocab *v, int32_t id);
/* The stored token string (not NUL-terminated). */
const char *exsa_vocab_token_str(const exsa_vocab *v, int32_t id, size_t *len);

/* Token id whose stored string is exactly s[0..len), or -1 (O(1), a hash
 * index built at load). */
int32_t exsa_vocab_find(const exsa_vocab *v, const char *s, size_t len);
/* tokenizer.ggml.scores[id] (0 when the file has none). */
float exsa_vocab_score(const exsa_vocab *v, int32_t id);
/* Optional special ids (-1 when absent). */
int32_t exsa_vocab_unk(const exsa_vocab *v);
int32_t exsa_vocab_pad(const exsa_vocab *v);
int32_t exsa_vocab_sep(const exsa_vocab *v);
int exsa_vocab_add_eos(const exsa_vocab *v);
/* tokenizer.ggml.add_space_prefix (default: 1 for SPM, 0 otherwise). */
int exsa_vocab_add_space_prefix(const exsa_vocab *v);
/* The GGUF the vocab was loaded from (merges, pre-tokenizer name, ...). */
const exsa_gguf *exsa_vocab_gguf(const exsa_vocab *v);

/* Raw bytes of token id written to buf (at most cap bytes; returns the full
 * length, so a return > cap means truncated, < 0 for a bad id). Control
 * tokens give "" unless special is set. SPM's U+2581 becomes a space and
 * <0xNN> the byte; byte-level BPE is mapped back through GPT-2's table. */
int exsa_vocab_token_to_piece(const exsa_vocab *v, int32_t id, char *buf, size_t cap,
                              int special);

#endif
