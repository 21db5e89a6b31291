/* sampler.h: picking the next token from logits: temperature, top-k, top-p, greedy. Randomness
 * comes from the caller's duel_rng (one per sequence), so the same seed gives the same tokens. */
#ifndef DUEL_SAMPLER_H
#define DUEL_SAMPLER_H

#include <stdint.h>

#include "error.h"
#include "rng.h"

typedef struct sampler_params {
    float temperature; /* 0 = greedy (argmax; ties go to the lower id) */
    float top_p;       /* (0, 1]; 1 = off */
    int top_k;         /* 0 = off */
} sampler_params;

/* Checks ranges; the message names the bad parameter. */
int sampler_params_validate(const sampler_params *params, duel_error *err);

/* Samples a token id from logits[0..vocab_size). Returns the id, or a negative error when the
 * logits hold NaN or an allocation fails. logprob_out (optional): log-probability of the chosen
 * token under the unmodified (temperature 1, unfiltered) distribution. */
int32_t sampler_sample(const float *logits, int vocab_size, const sampler_params *params,
                       duel_rng *rng, float *logprob_out, duel_error *err);

#endif
