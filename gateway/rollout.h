/* rollout.h: the A/B router's view of duel:rollout (DESIGN.md sections 7 and 8): the spec
 * (common/rollout_spec.h: parsed and validated as a whole) as last accepted, updated once per
 * change of the key's text, never per conversation. A refused text (malformed, weights that do
 * not sum to 100, ...) leaves the router serving the spec it had; a removed key means no rollout:
 * every conversation follows the latest snapshot. Conversations are assigned to arms by
 * rollout_spec_assign (consistent, sticky: the same id, the same arm).
 * Thread: the lws thread keeps the router (the Redis thread only fetches the text,
 * redis_worker_rollout_changed). */
#ifndef DUEL_GATEWAY_ROLLOUT_H
#define DUEL_GATEWAY_ROLLOUT_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "rollout_spec.h"

typedef struct rollout_router {
    bool active;       /* a spec is in effect (else: follow the latest snapshot) */
    rollout_spec spec; /* when active */
    uint64_t battles;  /* battles chosen so far: the round of pairs goes on from here */
} rollout_router;

/* Takes json (NULL: no key) as the new spec. A refused text is DUEL_EFORMAT or DUEL_EINVAL with
 * the spec's message, and the router keeps its spec. */
int rollout_router_update(rollout_router *router, const char *json, duel_error *err);

/* The snapshot id is pinned to: a version, ROLLOUT_SNAPSHOT_BASE (0), or
 * ROLLOUT_SNAPSHOT_LATEST (-1: no rollout, or an arm that follows the latest snapshot). */
long long rollout_router_pick(const rollout_router *router, const char *id);

/* The arm index id is assigned to (-1: no rollout, or every weight 0: follow the latest). */
int rollout_router_arm(const rollout_router *router, const char *id);

/* Whether a duel whose draw (uniform in [0, 1), from its seed) falls under the spec's
 * arena_fraction is a battle, and between which two arms (indices, pair[0] != pair[1]): the arms
 * at a weight above 0 taken pair by pair in turn (0-1, 0-2, ..., 1-2, ...), so that every arm is
 * compared with every other as often; false with fewer than two such arms. */
bool rollout_router_battle(rollout_router *router, double draw, int pair[2]);

#endif
