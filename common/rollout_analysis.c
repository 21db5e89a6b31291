/* rollout_analysis.c: windows, checks and the controller's tick (see rollout_analysis.h).
 * Invariant: rollout_controller_tick changes *spec only through rollout_spec.h's actions
 * (set_weight, promote, abort), so what it hands back passes rollout_spec_check whenever the spec
 * it was given did. */
#include "rollout_analysis.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void rollout_windows_init(rollout_windows *w, const rollout_spec *spec) {
    memset(w, 0, sizeof *w);
    w->n_arms = spec->n_arms;
    for (int i = 0; i < spec->n_arms; i++)
        snprintf(w->arms[i].name, sizeof w->arms[i].name, "%s", spec->arms[i].name);
}

static rollout_arm_window *arm_named(rollout_windows *w, const char *name) {
    for (int i = 0; i < w->n_arms; i++)
        if (strcmp(w->arms[i].name, name) == 0) return &w->arms[i];
    return NULL;
}

void rollout_windows_add_entry(rollout_windows *w, const stats_entry *e) {
    if (e->trainer) return;
    for (int i = 0; i < e->serving.n_groups; i++) {
        const stats_group *g = &e->serving.groups[i];
        rollout_arm_window *a = arm_named(w, g->arm);
        if (!a) continue;
        a->errors += g->errors;
        stats_hist_merge(&a->time_to_duel, &g->time_to_duel);
        /* A battle's answers are two arms': its duel and vote are no one arm's figures (its
         * outcome counts through rollout_windows_add_battle). Its errors and time are. */
        if (strcmp(g->strategy, "arena") == 0) continue;
        a->duels += g->duels;
        for (int k = 0; k < STATS_VOTE_KINDS; k++) a->votes[k] += g->votes[k];
        stats_hist_merge(&a->regret, &g->regret);
    }
}

void rollout_windows_add_battle(rollout_windows *w, const rollout_spec *spec, const char *first,
                                const char *second, double first_score) {
    const char *stable = spec->arms[spec->stable].name;
    const char *other = NULL;
    double other_score = 0;
    if (strcmp(first, stable) == 0) {
        other = second;
        other_score = 1.0 - first_score;
    } else if (strcmp(second, stable) == 0) {
        other = first;
        other_score = first_score;
    }
    rollout_arm_window *a = other ? arm_named(w, other) : NULL;
    if (!a || strcmp(other, stable) == 0) return;
    a->battles++;
    a->wins += other_score;
}

void rollout_wilson_interval(double wins, double n, double *lo, double *hi) {
    const double z = 1.959963984540054; /* the normal's 97.5 % quantile */
    double p = wins / n, z2n = z * z / n;
    double centre = (p + z2n / 2) / (1 + z2n);
    double half = z * sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n);
    *lo = fmax(0.0, centre - half);
    *hi = fmin(1.0, centre + half);
}

const char *rollout_verdict_name(rollout_verdict v) {
    switch (v) {
    case ROLLOUT_CHECK_PASS: return "pass";
    case ROLLOUT_CHECK_FAIL: return "fail";
    case ROLLOUT_CHECK_INCONCLUSIVE: break;
    }
    return "inconclusive";
}

static uint64_t vote_total(const rollout_arm_window *w) {
    uint64_t n = 0;
    for (int k = 0; k < STATS_VOTE_KINDS; k++) n += w->votes[k];
    return n;
}

rollout_verdict rollout_check_arm(const rollout_analysis *a, bool battles_expected,
                                  const rollout_arm_window *w, char *why, size_t cap) {
    uint64_t votes = vote_total(w) + (uint64_t)w->battles;
    if ((long long)votes < a->min_votes) {
        snprintf(why, cap, "%s: %llu votes in the window, fewer than min_votes %lld", w->name,
                 (unsigned long long)votes, a->min_votes);
        return ROLLOUT_CHECK_INCONCLUSIVE;
    }
    uint64_t tried = w->duels + w->errors;
    double error_rate = tried ? (double)w->errors / (double)tried : 0.0;
    if (error_rate > a->max_error_rate) {
        snprintf(why, cap, "%s: error rate %.3f (%llu of %llu) above max_error_rate %.3f", w->name,
                 error_rate, (unsigned long long)w->errors, (unsigned long long)tried,
                 a->max_error_rate);
        return ROLLOUT_CHECK_FAIL;
    }
    uint64_t own = vote_total(w);
    double both_bad = own ? (double)w->votes[STATS_VOTE_BOTH_BAD] / (double)own : 0.0;
    if (both_bad > a->max_both_bad_rate) {
        snprintf(why, cap, "%s: both_bad rate %.3f (%llu of %llu) above max_both_bad_rate %.3f",
                 w->name, both_bad, (unsigned long long)w->votes[STATS_VOTE_BOTH_BAD],
                 (unsigned long long)own, a->max_both_bad_rate);
        return ROLLOUT_CHECK_FAIL;
    }
    if ((battles_expected || w->battles > 0) && (long long)w->battles < a->min_votes) {
        /* the win rate decides once there are enough battles: a canary's own duels pit it
         * against itself, so its votes alone cannot tell a worse model */
        snprintf(why, cap, "%s: %llu arena battles in the window, fewer than min_votes %lld",
                 w->name, (unsigned long long)w->battles, a->min_votes);
        return ROLLOUT_CHECK_INCONCLUSIVE;
    }
    if (w->battles > 0) {
        double lo, hi;
        rollout_wilson_interval(w->wins, (double)w->battles, &lo, &hi);
        if (hi < a->min_win_rate) {
            snprintf(why, cap,
                     "%s: arena win rate against the stable arm %.3f [%.3f, %.3f] over %llu "
                     "battles, wholly below min_win_rate %.3f",
                     w->name, w->wins / (double)w->battles, lo, hi,
                     (unsigned long long)w->battles, a->min_win_rate);
            return ROLLOUT_CHECK_FAIL;
        }
        if (w->wins / (double)w->battles < a->min_win_rate) {
            /* below, but not surely: neither a failure nor a pass until more battles say */
            snprintf(why, cap,
                     "%s: arena win rate %.3f [%.3f, %.3f] over %llu battles: below min_win_rate "
                     "%.3f, not surely",
                     w->name, w->wins / (double)w->battles, lo, hi,
                     (unsigned long long)w->battles, a->min_win_rate);
            return ROLLOUT_CHECK_INCONCLUSIVE;
        }
    }
    snprintf(why, cap, "%s: within the thresholds (%llu votes, %llu battles)", w->name,
             (unsigned long long)own, (unsigned long long)w->battles);
    return ROLLOUT_CHECK_PASS;
}

static json_t *real_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

json_t *rollout_windows_json(const rollout_windows *w) {
    json_t *arms = json_array();
    for (int i = 0; arms && i < w->n_arms; i++) {
        const rollout_arm_window *a = &w->arms[i];
        uint64_t own = vote_total(a), tried = a->duels + a->errors;
        double lo = NAN, hi = NAN;
        if (a->battles) rollout_wilson_interval(a->wins, (double)a->battles, &lo, &hi);
        json_t *o = json_pack(
            "{s:s, s:I, s:I, s:o, s:{s:I, s:I, s:I, s:I}, s:o, s:o, s:o, s:I, s:o, s:o, s:o}",
            "name", a->name, "duels", (json_int_t)a->duels, "errors", (json_int_t)a->errors,
            "error_rate", tried ? json_real((double)a->errors / (double)tried) : json_null(),
            "votes", "a", (json_int_t)a->votes[STATS_VOTE_A], "b", (json_int_t)a->votes[STATS_VOTE_B],
            "tie", (json_int_t)a->votes[STATS_VOTE_TIE], "both_bad",
            (json_int_t)a->votes[STATS_VOTE_BOTH_BAD], "both_bad_rate",
            own ? json_real((double)a->votes[STATS_VOTE_BOTH_BAD] / (double)own) : json_null(),
            "ttd_p95_s", real_or_null(stats_hist_quantile(&a->time_to_duel, 0.95)), "regret_mean",
            a->regret.n ? real_or_null(a->regret.sum / (double)a->regret.n) : json_null(),
            "battles", (json_int_t)a->battles, "win_rate",
            a->battles ? json_real(a->wins / (double)a->battles) : json_null(), "win_lo",
            real_or_null(lo), "win_hi", real_or_null(hi));
        if (!o || json_array_append_new(arms, o)) {
            json_decref(arms);
            return NULL;
        }
    }
    return arms ? json_pack("{s:o}", "arms", arms) : NULL;
}

/* ---- the controller ------------------------------------------------------------------------- */

int rollout_canary_index(const rollout_spec *spec) {
    return spec->n_arms == 2 ? 1 - spec->stable : -1;
}

static bool canary_serves(const rollout_spec *spec) {
    int c = rollout_canary_index(spec);
    return c >= 0 && spec->arms[c].weight > 0 &&
           (spec->status == ROLLOUT_PROGRESSING || spec->status == ROLLOUT_PAUSED);
}

static void follow(rollout_controller *c, const rollout_spec *spec, int64_t now_ms) {
    if (c->revision == spec->revision) return;
    /* A spec the controller did not write (an operator's action, a new spec): its step's
     * timers and the run of failures start again from it. */
    *c = (rollout_controller){.revision = spec->revision, .step_started_ms = now_ms};
}

bool rollout_controller_check_due(const rollout_controller *c, const rollout_spec *spec,
                                  int64_t now_ms) {
    if (!canary_serves(spec)) return false;
    if (c->revision != spec->revision || c->last_check_ms == 0) return true;
    return now_ms - c->last_check_ms >= spec->analysis.interval_s * 1000;
}

/* The next step of a progressing spec, when it is due; true when *spec moved on. */
static bool advance(rollout_controller *c, rollout_spec *spec, int64_t now_ms, char *why,
                    size_t cap) {
    int canary = rollout_canary_index(spec);
    const rollout_step *st = &spec->steps[spec->step];
    switch (st->kind) {
    case ROLLOUT_STEP_SET_WEIGHT: {
        duel_error err = {0};
        if (rollout_spec_set_weight(spec, spec->arms[canary].name, st->weight, &err)) {
            snprintf(why, cap, "step %d (set_weight %d) cannot apply: %.120s", spec->step, st->weight,
                     err.message);
            return false;
        }
        snprintf(why, cap, "step %d: %s at %d %%", spec->step, spec->arms[canary].name, st->weight);
        break;
    }
    case ROLLOUT_STEP_PAUSE:
        if (st->duration_s == 0 || now_ms - c->step_started_ms < st->duration_s * 1000)
            return false; /* until promoted, or not over yet */
        snprintf(why, cap, "step %d: pause of %lld s over", spec->step, st->duration_s);
        break;
    case ROLLOUT_STEP_ANALYSIS:
        if (!c->step_passed) return false;
        snprintf(why, cap, "step %d: analysis passed", spec->step);
        break;
    }
    spec->step++;
    c->step_started_ms = now_ms;
    c->step_passed = false;
    return true;
}

void rollout_controller_tick(rollout_controller *c, rollout_spec *spec, int64_t now_ms,
                             const rollout_arm_window *canary, rollout_decision *out) {
    memset(out, 0, sizeof *out);
    follow(c, spec, now_ms);
    if (canary && canary_serves(spec)) {
        out->checked = true;
        out->verdict = rollout_check_arm(&spec->analysis, spec->arena_fraction > 0, canary,
                                         out->why, sizeof out->why);
        c->last_check_ms = now_ms;
        if (out->verdict == ROLLOUT_CHECK_FAIL) c->failures++;
        if (out->verdict == ROLLOUT_CHECK_PASS) {
            c->failures = 0;
            c->step_passed = true;
        }
        if (c->failures >= spec->analysis.failure_limit) {
            char reason[sizeof out->why];
            snprintf(reason, sizeof reason, "%s", out->why);
            snprintf(out->why, sizeof out->why, "rolled back after %d failed checks in a row: %.200s",
                     c->failures, reason);
            rollout_spec_abort(spec, ROLLOUT_DEGRADED);
            out->kind = ROLLOUT_DECIDE_ROLLBACK;
            out->failures = c->failures;
            c->failures = 0;
            return;
        }
    }
    out->failures = c->failures;
    if (spec->status != ROLLOUT_PROGRESSING || spec->n_steps == 0 || rollout_canary_index(spec) < 0)
        return;
    char why[sizeof out->why];
    if (spec->step < spec->n_steps) {
        if (advance(c, spec, now_ms, why, sizeof why)) {
            out->kind = ROLLOUT_DECIDE_STEP;
            snprintf(out->why, sizeof out->why, "%s", why);
        }
        return;
    }
    duel_error err = {0};
    if (!rollout_spec_promote(spec, NULL, &err)) {
        out->kind = ROLLOUT_DECIDE_PROMOTE;
        snprintf(out->why, sizeof out->why, "every step passed: promoted");
    }
}
