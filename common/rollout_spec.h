/* rollout_spec.h: the one home of the rollout spec, the JSON text of duel:rollout (DESIGN.md
 * sections 7 and 8): parsed and validated as a whole, changed by the operators' actions, written
 * back, and the consistent assignment of clients to its arms. Used by `duel rollout`, the admin
 * API and the gateway's router, so a spec one of them accepts is one all of them accept.
 *
 *   {"revision": N,                          counted by the store, one per accepted change
 *    "arms": [{"name": "stable", "snapshot": 12 | "latest" | "base", "weight": 90}, ...],
 *    "stable": "stable",                     the arm that takes what the others leave
 *    "steps": [{"set_weight": 20} | {"pause": {"duration_s": 600}} | {"pause": {}}
 *              | {"analysis": {}}],          optional; act on the canary (needs two arms)
 *    "step": 0,                              the step in progress (optional, default 0)
 *    "analysis": {"window_s", "interval_s", "failure_limit", "min_votes", "max_error_rate",
 *                 "max_both_bad_rate", "min_win_rate"},   optional, defaults below
 *    "status": "progressing" | "paused" | "healthy" | "degraded" | "aborted",
 *    "arena_fraction": 0 .. 1}               share of duels served as battles between two arms
 *
 * Rules: names unique, [A-Za-z0-9_.-], 1..ROLLOUT_NAME_MAX-1 bytes; integer weights 0..100 that
 * sum to ROLLOUT_WEIGHT_TOTAL; at most limits->max_arms arms; a pinned snapshot must be known
 * (limits->snapshots, when given); unknown fields are refused. Every refusal is DUEL_EFORMAT
 * (malformed JSON) or DUEL_EINVAL with a message naming the field ("arms[1].weight: ...").
 *
 * Assignment: weighted rendezvous hashing. Each arm scores a client id by
 * u = hash(arm name, id) in (0, 1), score = weight / -ln u, and the best score wins. So an id keeps
 * its arm while the weights stay; raising one arm's weight moves ids only onto that arm (only its
 * score grows), and the share moved is the share the raise asks for; arms at weight 0 get none.
 * Pure code: no I/O, no global state. */
#ifndef DUEL_ROLLOUT_SPEC_H
#define DUEL_ROLLOUT_SPEC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define ROLLOUT_MAX_ARMS 16        /* arms in any spec; the engine's limit is limits->max_arms */
#define ROLLOUT_MAX_STEPS 32
#define ROLLOUT_NAME_MAX 32        /* bytes of an arm name, NUL included */
#define ROLLOUT_WEIGHT_TOTAL 100   /* the weights are percentages */
#define ROLLOUT_SNAPSHOT_LATEST -1 /* "latest": follows the newest snapshot */
#define ROLLOUT_SNAPSHOT_BASE 0    /* "base": the base model */
#define ROLLOUT_MAX_TEXT 65536     /* bytes of a spec's JSON */

typedef enum rollout_status {
    ROLLOUT_PROGRESSING,
    ROLLOUT_PAUSED,
    ROLLOUT_HEALTHY,
    ROLLOUT_DEGRADED,
    ROLLOUT_ABORTED,
} rollout_status;

typedef enum rollout_step_kind {
    ROLLOUT_STEP_SET_WEIGHT,
    ROLLOUT_STEP_PAUSE,    /* duration_s > 0: that long; 0: until promoted */
    ROLLOUT_STEP_ANALYSIS, /* one passing analysis check */
} rollout_step_kind;

typedef struct rollout_step {
    rollout_step_kind kind;
    int weight;            /* SET_WEIGHT */
    long long duration_s;  /* PAUSE */
} rollout_step;

typedef struct rollout_analysis {
    long long window_s;       /* the sliding window the checks look at (default 600) */
    long long interval_s;     /* seconds between checks (default 60) */
    int failure_limit;        /* consecutive failed checks that roll the canary back (default 3) */
    long long min_votes;      /* fewer votes in the window: the check is inconclusive (default 20) */
    double max_error_rate;    /* errors / duels (default 0.05) */
    double max_both_bad_rate; /* both_bad / votes (default 0.5) */
    double min_win_rate;      /* arena win rate against the stable arm (default 0.4) */
} rollout_analysis;

typedef struct rollout_arm_spec {
    char name[ROLLOUT_NAME_MAX];
    long long snapshot; /* a version >= 1, ROLLOUT_SNAPSHOT_LATEST or ROLLOUT_SNAPSHOT_BASE */
    int weight;
} rollout_arm_spec;

typedef struct rollout_spec {
    long long revision;
    int n_arms;
    rollout_arm_spec arms[ROLLOUT_MAX_ARMS];
    int stable; /* index into arms */
    int n_steps, step;
    rollout_step steps[ROLLOUT_MAX_STEPS];
    rollout_analysis analysis;
    rollout_status status;
    double arena_fraction;
} rollout_spec;

typedef struct rollout_limits {
    int max_arms;              /* arms the engine holds besides the base; 0: ROLLOUT_MAX_ARMS */
    const int64_t *snapshots;  /* the known snapshot versions; NULL: not checked */
    size_t n_snapshots;
} rollout_limits;

/* Parses and validates text (len bytes) into *out. Nothing is written to *out on an error. */
int rollout_spec_parse(const char *text, size_t len, const rollout_limits *limits,
                       rollout_spec *out, duel_error *err);
/* Validates a spec built or changed in memory (the same rules as rollout_spec_parse). */
int rollout_spec_check(const rollout_spec *spec, const rollout_limits *limits, duel_error *err);
/* The spec as JSON (rollout_spec_parse reads it back to the same spec); NULL on out of memory. */
json_t *rollout_spec_json(const rollout_spec *spec);
char *rollout_spec_dump(const rollout_spec *spec); /* compact text; free() it */

const char *rollout_status_name(rollout_status status);
int rollout_spec_arm_index(const rollout_spec *spec, const char *name); /* -1 when absent */

/* The arm client_id is assigned to (an index; never an arm at weight 0), or -1 for a spec whose
 * weights are all 0 (no spec: the caller follows the latest snapshot). */
int rollout_spec_assign(const rollout_spec *spec, const char *client_id);

/* ---- the operators' actions (pure: the store validates, writes and audits) ---- */
/* arm's weight becomes weight; the stable arm takes or gives the difference. */
int rollout_spec_set_weight(rollout_spec *spec, const char *arm, int weight, duel_error *err);
/* arm (NULL: the only arm besides the stable one) becomes the stable arm's snapshot at weight
 * 100, every other arm 0; status healthy. */
int rollout_spec_promote(rollout_spec *spec, const char *arm, duel_error *err);
/* every arm but the stable one at weight 0; status aborted (or degraded: the analysis's
 * rollback). */
void rollout_spec_abort(rollout_spec *spec, rollout_status status);
int rollout_spec_pause(rollout_spec *spec, bool pause, duel_error *err);

#endif
