/* rollout_store.h: the rollout in Redis (DESIGN.md section 8): duel:rollout (the spec's JSON,
 * common/rollout_spec.h), each operator action on it with its duel:audit entry (written by
 * knob_store.h's audit code, action "rollout.<verb>") and a {"kind":"rollout","revision":N} note
 * on duel:notify, and the arena votes of duel:prefs read into a tally (common/arena_ratings.h).
 * Used by `duel rollout`, `duel arena` and the gateway's console thread (the admin API), so an
 * action taken either way is validated, applied and audited by the same code.
 *
 * An action is all or nothing: duel:rollout is read under WATCH, the action applied, the whole
 * resulting spec checked (rollout_spec_check: the engine's arm limit, the registered snapshots
 * of duel:snapshots), and the SET with its audit entry go in one MULTI/EXEC, tried again when a
 * concurrent change made EXEC fail. Each accepted action raises the revision by one. A refused
 * action is DUEL_EINVAL or DUEL_EFORMAT with the spec's message, and nothing is written: the
 * running rollout is untouched.
 *
 * Synchronous hiredis calls: never on the lws thread. */
#ifndef DUEL_GATEWAY_ROLLOUT_STORE_H
#define DUEL_GATEWAY_ROLLOUT_STORE_H

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "arena_ratings.h"
#include "error.h"
#include "rollout_spec.h"

typedef enum rollout_action {
    ROLLOUT_ACTION_SET,     /* spec_text replaces the spec */
    ROLLOUT_ACTION_WEIGHT,  /* arm's weight (the stable arm takes the rest) */
    ROLLOUT_ACTION_PAUSE,
    ROLLOUT_ACTION_RESUME,
    ROLLOUT_ACTION_PROMOTE, /* arm (NULL: the canary) becomes stable at 100 % */
    ROLLOUT_ACTION_ABORT,   /* every arm but the stable one to 0 %, status aborted */
    /* The controller's (gateway/rollout_runner.h), never an operator's: spec_text is the spec it
     * decided on, written only while duel:rollout is still at expect_revision. */
    ROLLOUT_ACTION_STEP,     /* a step taken */
    ROLLOUT_ACTION_ROLLBACK, /* the canary failed failure_limit checks */
    ROLLOUT_ACTION_COMPLETE, /* every step passed: the canary promoted */
} rollout_action;

typedef struct rollout_change {
    rollout_action action;
    const char *spec_text; /* SET */
    const char *arm;       /* WEIGHT, PROMOTE */
    int weight;            /* WEIGHT */
    long long expect_revision; /* the controller's actions: the revision it decided on */
    const char *reason;    /* the controller's actions: why, in the duel:notify note */
} rollout_change;

const char *rollout_action_name(rollout_action action);
/* "set", "weight", ... (an operator's actions) -> *out; DUEL_EINVAL for anything else. */
int rollout_action_parse(const char *name, rollout_action *out);

/* duel:rollout: *present is false when there is no key (no rollout: serving follows the latest
 * snapshot) and *out is untouched. A stored text the parser refuses is its error. */
int rollout_store_read(redisContext *rc, const char *prefix, rollout_spec *out, bool *present,
                       duel_error *err);

/* Applies change as described above; max_arms is the engine's limit (rollout.max_arms). On
 * success *after (may be NULL) is the spec now in effect and *audit (may be NULL) the audit
 * entry as JSON (caller json_decrefs). */
int rollout_store_change(redisContext *rc, const char *prefix, const char *who,
                         const rollout_change *change, int max_arms, rollout_spec *after,
                         json_t **audit, duel_error *err);

/* Adds every arena vote of duel:prefs to t (read in pages, oldest first). */
int rollout_store_arena(redisContext *rc, const char *prefix, arena_tally *t, duel_error *err);
/* The same for the entries after stream id last_id (when not empty), else from since_ms on;
 * last_id becomes the last id read, so that a tally kept between calls reads only new votes. */
#define ROLLOUT_STORE_ID_MAX 64
int rollout_store_arena_after(redisContext *rc, const char *prefix,
                              char last_id[ROLLOUT_STORE_ID_MAX], int64_t since_ms, arena_tally *t,
                              duel_error *err);

#endif
