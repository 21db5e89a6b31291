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

int rollout_router_arm(const rollout_router *router, const char *id) {
    return router->active ? rollout_spec_assign(&router->spec, id) : -1;
}

long long rollout_router_pick(const rollout_router *router, const char *id) {
    int arm = rollout_router_arm(router, id);
    return arm < 0 ? ROLLOUT_SNAPSHOT_LATEST : router->spec.arms[arm].snapshot;
}

bool rollout_router_battle(rollout_router *router, double draw, int pair[2]) {
    if (!router->active || !(draw < router->spec.arena_fraction)) return false;
    int live[ROLLOUT_MAX_ARMS], n = 0;
    for (int i = 0; i < router->spec.n_arms; i++)
        if (router->spec.arms[i].weight > 0) live[n++] = i;
    if (n < 2) return false;
    uint64_t k = router->battles++ % (uint64_t)(n * (n - 1) / 2);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (k-- == 0) {
                pair[0] = live[i];
                pair[1] = live[j];
                return true;
            }
    return false; /* not reached: k < the number of pairs */
}
