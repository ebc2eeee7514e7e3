/* Token sampling: a per-request chain over the logits of one position.
 *
 * Chain order (DESIGN.md): penalties (repeat, presence, frequency over the
 * last repeat_last_n accepted tokens) -> logit bias -> top-k -> tail-free
 * (tfs_z) -> typical-p -> top-p -> min-p -> temperature -> draw; or, with
 * mirostat 1/2, penalties -> bias -> temperature -> mirostat in place of the
 * truncations. temperature <= 0 means greedy (argmax after penalties/bias).
 *
 * A sampler owns its working memory (sized for n_vocab at create) and a
 * seeded RNG, so the same params + seed + logits give the same tokens.
 * Not thread safe: one sampler per sequence.
 */
#ifndef EXSA_SAMPLING_H
#define EXSA_SAMPLING_H

#include <stdint.h>

#include "exsa.h"

/* exsa_logit_bias, exsa_sampling_params, EXSA_SEED_RANDOM and
 * exsa_sampling_params_default are public: include/exsa.h. */

/* Range checks; the message names the parameter ("top_p must be in [0, 1],
 * got 1.5"). n_vocab bounds logit_bias token ids. */
int exsa_sampling_params_check(const exsa_sampling_params *p, int32_t n_vocab, exsa_err *err);

typedef struct exsa_sampler exsa_sampler;

exsa_sampler *exsa_sampler_create(const exsa_sampling_params *p, int32_t n_vocab, exsa_err *err);
void exsa_sampler_free(exsa_sampler *s);
/* Picks a token from logits[n_vocab] (not modified); does not record it
 * (call exsa_sampler_accept). NaN logits count as banned. When every token is
 * banned, returns the argmax of the penalized, biased logits (lowest id among
 * equal ones; 0 when all are NaN). EXSA_EINVAL when s or logits is NULL. */
int32_t exsa_sampler_sample(exsa_sampler *s, const float *logits);
/* Records a token in the penalty history (prompt tokens and sampled ones).
 * Tokens outside [0, n_vocab) are ignored. */
void exsa_sampler_accept(exsa_sampler *s, int32_t token);
/* Clears history and mirostat state; reseeds from the params' seed. */
void exsa_sampler_reset(exsa_sampler *s);
/* Current mirostat mu (starts at 2 * tau, updated by each mirostat draw);
 * 0 when mirostat is off. For tests and logging. */
double exsa_sampler_mirostat_mu(const exsa_sampler *s);

#endif
