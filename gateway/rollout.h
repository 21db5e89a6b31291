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

#include "error.h"
#include "rollout_spec.h"

typedef struct rollout_router {
    bool active;       /* a spec is in effect (else: follow the latest snapshot) */
    rollout_spec spec; /* when active */
} rollout_router;

/* Takes json (NULL: no key) as the new spec. A refused text is DUEL_EFORMAT or DUEL_EINVAL with
 * the spec's message, and the router keeps its spec. */
int rollout_router_update(rollout_router *router, const char *json, duel_error *err);

/* The snapshot id is pinned to: a version, ROLLOUT_SNAPSHOT_BASE (0), or
 * ROLLOUT_SNAPSHOT_LATEST (-1: no rollout, or an arm that follows the latest snapshot). */
long long rollout_router_pick(const rollout_router *router, const char *id);

#endif
