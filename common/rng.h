/* rng.h: a small seeded random number generator (xoshiro256** seeded through splitmix64). Each
 * user (a sequence's sampler, a test) owns its own state: same seed, same stream, on every
 * platform. Not for secrets. */
#ifndef DUEL_RNG_H
#define DUEL_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct duel_rng {
    uint64_t s[4];
} duel_rng;

void duel_rng_seed(duel_rng *rng, uint64_t seed);
uint64_t duel_rng_next_u64(duel_rng *rng);
/* Uniform in [0, 1) with 53 random bits. */
double duel_rng_uniform(duel_rng *rng);
/* Uniform integer in [0, n) without modulo bias; n > 0. */
uint64_t duel_rng_below(duel_rng *rng, uint64_t n);
/* Standard normal (Box-Muller). */
double duel_rng_normal(duel_rng *rng);

#ifdef __cplusplus
}
#endif

#endif
