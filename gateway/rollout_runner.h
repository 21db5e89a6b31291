/* rollout_runner.h: the one rollout controller of a deployment (issue 20, docs/SERVING.md
 * "Analysis, steps and rollback"): every gateway's console thread runs one, and the one holding
 * the Redis lock <prefix>rollout:controller (SET NX PX, renewed on every tick by its holder only)
 * acts; the others wait to take over when its holder stops renewing (a gateway gone: the lock
 * lapses after ROLLOUT_RUNNER_LOCK_MS). On each tick (every tick_ms) the holder reads
 * duel:rollout; when a check is due it reads the canary's sliding window (the duel:stats entries
 * and the arena votes of duel:prefs since now - window_s) and runs rollout_controller_tick
 * (common/rollout_analysis.h); a step, a rollback or the final promotion is written with
 * rollout_store_change (validated, audited as rollout.step / rollout.rollback /
 * rollout.complete, noted on duel:notify with its reason), and only while duel:rollout is still
 * at the revision it decided on (an operator's change in between wins).
 *
 * Thread: the console thread (synchronous hiredis; never the lws thread). */
#ifndef DUEL_GATEWAY_ROLLOUT_RUNNER_H
#define DUEL_GATEWAY_ROLLOUT_RUNNER_H

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "rollout_analysis.h"

#define ROLLOUT_RUNNER_TICK_MS 1000
#define ROLLOUT_RUNNER_LOCK_MS 10000
/* <prefix> + this: the holder's rollout_runner_json after each check, for every gateway's
 * GET /api/rollout ("analysis"); it expires an hour after the last check. */
#define ROLLOUT_RUNNER_ANALYSIS_KEY "rollout:analysis"

typedef struct rollout_runner {
    char prefix[128], instance[128];
    int tick_ms, max_arms;
    int64_t next_tick_ms;
    bool leader;
    rollout_controller ctl;
    rollout_decision last;   /* of the last tick that checked or acted */
    rollout_windows windows; /* of the last check */
    bool have_windows;
    unsigned long long checks, actions;
} rollout_runner;

/* instance: this process's name (the lock's value, the audit's who "controller:<instance>");
 * tick_ms 0: ROLLOUT_RUNNER_TICK_MS; max_arms: rollout.max_arms. */
void rollout_runner_init(rollout_runner *r, const char *prefix, const char *instance, int tick_ms,
                         int max_arms);

/* One tick when due (now_ms past the next tick). DUEL_OK, or DUEL_EIO when Redis failed (the
 * caller reconnects; nothing half-written: a change is one MULTI). */
int rollout_runner_step(rollout_runner *r, redisContext *rc, int64_t now_ms, duel_error *err);

/* The runner's state as JSON: {"leader", "checks", "actions", "failures", "last": {verdict,
 * kind, why} or null, "window": rollout_windows_json or null}. NULL on out of memory. */
json_t *rollout_runner_json(const rollout_runner *r);

/* Reads the canary's window (every arm's figures) for spec at now_ms into *w. */
int rollout_runner_window(redisContext *rc, const char *prefix, const rollout_spec *spec,
                          int64_t now_ms, rollout_windows *w, duel_error *err);

#endif
