/* rollout.c: the A/B router (see rollout.h). Invariant: router->spec, when active, passed
 * rollout_spec_parse (so its weights sum to 100 and rollout_spec_assign finds an arm). */
#include "rollout.h"

#include <string.h>

int rollout_router_update(rollout_router *router, const char *json, duel_error *err) {
    if (!json) {
        router->active = false;
        return DUEL_OK;
    }
    /* The gateway does not know the registry or the engine's limit: `duel rollout set` and the
     * admin API checked those; this checks the spec itself, whoever wrote it. */
    int rc = rollout_spec_parse(json, strlen(json), NULL, &router->spec, err);
    if (!rc) router->active = true;
    return rc;
}

long long rollout_router_pick(const rollout_router *router, const char *id) {
    if (!router->active) return ROLLOUT_SNAPSHOT_LATEST;
    int arm = rollout_spec_assign(&router->spec, id);
    return arm < 0 ? ROLLOUT_SNAPSHOT_LATEST : router->spec.arms[arm].snapshot;
}
