/* rollout.h: the A/B router's view of duel:rollout (DESIGN.md sections 7 and 8): the arms with a
 * positive integer weight and the snapshot each pins (an integer version, or -1 for "latest" /
 * anything else), parsed once per change of the key's text. A conversation is pinned to an arm
 * by hashing its id over the weights: the same id always lands on the same arm of one spec.
 * Pure functions; the lws thread keeps the current spec (the Redis thread only fetches the text,
 * redis_worker_rollout_changed). */
#ifndef DUEL_GATEWAY_ROLLOUT_H
#define DUEL_GATEWAY_ROLLOUT_H

#include <stddef.h>

#include "error.h"

typedef struct rollout_arm {
    long long weight;   /* > 0 */
    long long snapshot; /* the pinned version; -1: any (latest) */
} rollout_arm;

typedef struct rollout_spec {
    rollout_arm *arms; /* only the arms with a positive integer weight */
    size_t n_arms;
    long long total_weight;
} rollout_spec;

/* Parses json (NULL: no key, an empty spec) into out (freed first with rollout_spec_free; start
 * from {0}). A spec that is not JSON, or has no "arms" array, is an empty spec and
 * DUEL_EFORMAT with the reason; arms without a positive integer weight are skipped, as the router
 * always did. */
int rollout_parse(const char *json, rollout_spec *out, duel_error *err);
void rollout_spec_free(rollout_spec *spec);

/* The snapshot version conversation conv_id is pinned to, or -1 (an empty spec, or an arm that
 * follows the latest snapshot). */
long long rollout_pick(const rollout_spec *spec, const char *conv_id);

#endif
