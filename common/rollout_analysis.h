/* rollout_analysis.h: the rollout controller's decisions (issue 20, docs/SERVING.md "Analysis,
 * steps and rollback"): each arm's figures over the spec's sliding window, the check of the
 * canary against the spec's thresholds, and one tick of the controller (the steps' progression,
 * the count of consecutive failed checks, the automatic rollback and the final promotion).
 *
 * The canary is the arm besides the stable one of a two-arm spec; a spec of more arms gets its
 * figures but no automatic action (its steps are refused by rollout_spec_check anyway).
 *
 * A check over the window:
 *   inconclusive  fewer than analysis.min_votes votes on the canary (nothing is judged on a few),
 *                 or fewer than min_votes arena battles against the stable arm while battles
 *                 are expected (the spec's arena_fraction above 0) or under way;
 *   fail          errors / (duels + errors) > max_error_rate, or both_bad / votes >
 *                 max_both_bad_rate, or the canary's arena battles against the stable arm (ties
 *                 and both_bad half a win) have a 95 % Wilson interval wholly below min_win_rate;
 *   pass          otherwise, when the win rate (if battles were fought) is at least
 *                 min_win_rate; a win rate below it whose interval reaches above it is
 *                 inconclusive (more battles decide).
 * failure_limit consecutive failed checks roll the canary back: weight 0, status degraded
 * (rollout_spec_abort). Inconclusive checks neither count nor reset the run.
 *
 * Pure code: no I/O, no clock (now is an argument), no global state. */
#ifndef DUEL_ROLLOUT_ANALYSIS_H
#define DUEL_ROLLOUT_ANALYSIS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "rollout_spec.h"
#include "stats.h"

/* One arm's figures over the window. */
typedef struct rollout_arm_window {
    char name[ROLLOUT_NAME_MAX];
    uint64_t duels, errors;
    uint64_t votes[STATS_VOTE_KINDS]; /* a, b, tie, both_bad */
    stats_hist time_to_duel, regret;  /* merged over the window's entries */
    uint64_t battles;                 /* arena battles against the stable arm */
    double wins;                      /* of them won; ties and both_bad count half */
} rollout_arm_window;

typedef struct rollout_windows {
    int n_arms;
    rollout_arm_window arms[ROLLOUT_MAX_ARMS]; /* in the spec's order */
} rollout_windows;

/* Empty windows for spec's arms. */
void rollout_windows_init(rollout_windows *w, const rollout_spec *spec);
/* Adds a duel:stats serving entry (its groups count under the arm they name: the gateway names
 * a rollout duel's group after its arm; groups of other names are not the rollout's). */
void rollout_windows_add_entry(rollout_windows *w, const stats_entry *e);
/* Adds one arena battle between the arms named first and second (first_score: 1, 0 or 1/2);
 * battles not between the stable arm and another are not counted. */
void rollout_windows_add_battle(rollout_windows *w, const rollout_spec *spec, const char *first,
                                const char *second, double first_score);

/* The 95 % Wilson score interval of wins / n (n > 0). */
void rollout_wilson_interval(double wins, double n, double *lo, double *hi);

typedef enum rollout_verdict {
    ROLLOUT_CHECK_INCONCLUSIVE,
    ROLLOUT_CHECK_PASS,
    ROLLOUT_CHECK_FAIL,
} rollout_verdict;

const char *rollout_verdict_name(rollout_verdict v);
/* The check of arm w against a's thresholds; why (cap bytes) says which figure decided. */
rollout_verdict rollout_check_arm(const rollout_analysis *a, bool battles_expected,
                                  const rollout_arm_window *w, char *why, size_t cap);

/* The window as JSON: {"arms":[{name, duels, errors, error_rate, votes{a,b,tie,both_bad},
 * both_bad_rate, ttd_p95_s, regret_mean, battles, win_rate, win_lo, win_hi}]} (null where
 * nothing was counted). NULL on out of memory. */
json_t *rollout_windows_json(const rollout_windows *w);

/* ---- the controller ------------------------------------------------------------------------- */

/* Its memory between ticks (the one controller process keeps it; a restart begins the current
 * step's timers again, which only lengthens a pause). */
typedef struct rollout_controller {
    long long revision;       /* the spec revision it follows; another one starts it afresh */
    int64_t step_started_ms;  /* when the spec's current step began */
    int64_t last_check_ms;    /* 0: no check yet */
    int failures;             /* consecutive failed checks */
    bool step_passed;         /* a check passed since the current step began */
} rollout_controller;

typedef enum rollout_decision_kind {
    ROLLOUT_DECIDE_KEEP,     /* nothing to write */
    ROLLOUT_DECIDE_STEP,     /* the spec moved on a step (set_weight applied, pause over, ...) */
    ROLLOUT_DECIDE_ROLLBACK, /* the canary failed failure_limit checks: weight 0, degraded */
    ROLLOUT_DECIDE_PROMOTE,  /* the steps are done: the canary is the stable arm, healthy */
} rollout_decision_kind;

typedef struct rollout_decision {
    rollout_decision_kind kind;
    bool checked;            /* a check ran on this tick */
    rollout_verdict verdict; /* when checked */
    int failures;            /* consecutive failed checks after this tick */
    char why[256];           /* what decided (the check's reason, the step taken) */
} rollout_decision;

/* Whether a tick at now_ms checks the canary (interval_s since the last check, and a canary
 * that serves: two arms, status progressing or paused, weight above 0): the caller then reads
 * the window and passes it to rollout_controller_tick. */
bool rollout_controller_check_due(const rollout_controller *c, const rollout_spec *spec,
                                  int64_t now_ms);

/* One tick at now_ms. canary: the canary's window when rollout_controller_check_due said so,
 * else NULL. *spec is changed in place when out->kind is not KEEP (the caller writes it, audits
 * it and, once written, sets c->revision to its new revision so that the state carries on). */
void rollout_controller_tick(rollout_controller *c, rollout_spec *spec, int64_t now_ms,
                             const rollout_arm_window *canary, rollout_decision *out);

/* The canary's index in spec (-1: not a two-arm spec). */
int rollout_canary_index(const rollout_spec *spec);

#endif
