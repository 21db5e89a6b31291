/* test_rollout_analysis.c: the rollout controller's pure decisions (common/rollout_analysis.h):
 * windows built from duel:stats entries and arena battles, the check's verdicts at and around
 * each threshold, the Wilson interval against values computed by hand, and the controller's ticks:
 * the steps in order (set_weight, a timed pause, analysis waiting for a passing check, a pause
 * until promoted), failure_limit consecutive failures rolling back (not fewer, not with a pass
 * between), inconclusive checks neither counting nor resetting, and an operator's new revision
 * starting the state afresh. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "rollout_analysis.h"

#define STEPS_SPEC                                                                                  \
    "{\"revision\":5,\"stable\":\"stable\",\"status\":\"progressing\",\"arena_fraction\":0.2,"    \
    "\"arms\":[{\"name\":\"stable\",\"snapshot\":3,\"weight\":100},"                               \
    "{\"name\":\"canary\",\"snapshot\":4,\"weight\":0}],"                                          \
    "\"steps\":[{\"set_weight\":20},{\"pause\":{\"duration_s\":60}},{\"analysis\":{}},"            \
    "{\"set_weight\":50},{\"analysis\":{}}],"                                                     \
    "\"analysis\":{\"window_s\":300,\"interval_s\":10,\"failure_limit\":3,\"min_votes\":20,"     \
    "\"max_error_rate\":0.1,\"max_both_bad_rate\":0.3,\"min_win_rate\":0.4}}"

static rollout_spec parse(const char *text) {
    rollout_spec s;
    duel_error err = {0};
    if (rollout_spec_parse(text, strlen(text), NULL, &s, &err)) fail_msg("%s", err.message);
    return s;
}

static rollout_arm_window window(uint64_t a, uint64_t b, uint64_t both_bad, uint64_t duels,
                                 uint64_t errors, uint64_t battles, double wins) {
    rollout_arm_window w;
    memset(&w, 0, sizeof w);
    snprintf(w.name, sizeof w.name, "canary");
    w.votes[STATS_VOTE_A] = a;
    w.votes[STATS_VOTE_B] = b;
    w.votes[STATS_VOTE_BOTH_BAD] = both_bad;
    w.duels = duels;
    w.errors = errors;
    w.battles = battles;
    w.wins = wins;
    return w;
}

static void test_check_thresholds(void **state) {
    (void)state;
    rollout_spec s = parse(STEPS_SPEC);
    const rollout_analysis *a = &s.analysis;
    char why[256];
    rollout_arm_window w = window(10, 9, 0, 19, 0, 0, 0);
    assert_int_equal(rollout_check_arm(a, false, &w, why, sizeof why), ROLLOUT_CHECK_INCONCLUSIVE);
    assert_non_null(strstr(why, "min_votes"));
    w = window(10, 10, 0, 20, 0, 0, 0);
    assert_int_equal(rollout_check_arm(a, false, &w, why, sizeof why), ROLLOUT_CHECK_PASS);
    /* errors / (duels + errors): 2 / 20 = 0.1 is at the bound (passes), 3 / 21 above it */
    w = window(10, 10, 0, 18, 2, 0, 0);
    assert_int_equal(rollout_check_arm(a, false, &w, why, sizeof why), ROLLOUT_CHECK_PASS);
    w = window(10, 10, 0, 18, 3, 0, 0);
    assert_int_equal(rollout_check_arm(a, false, &w, why, sizeof why), ROLLOUT_CHECK_FAIL);
    assert_non_null(strstr(why, "error rate"));
    /* both_bad 6 of 20 = 0.3 at the bound; 7 of 20 above */
    w = window(7, 7, 6, 20, 0, 0, 0);
    assert_int_equal(rollout_check_arm(a, false, &w, why, sizeof why), ROLLOUT_CHECK_PASS);
    w = window(7, 6, 7, 20, 0, 0, 0);
    assert_int_equal(rollout_check_arm(a, false, &w, why, sizeof why), ROLLOUT_CHECK_FAIL);
    assert_non_null(strstr(why, "both_bad"));
    /* win rate: 4 of 20 has the Wilson interval [0.081, 0.416]: below 0.4 but not wholly
     * (inconclusive); 8 of 20 is at it (pass); 2 of 20 [0.028, 0.301]: wholly below (fail) */
    w = window(10, 10, 0, 20, 0, 20, 4);
    assert_int_equal(rollout_check_arm(a, false, &w, why, sizeof why), ROLLOUT_CHECK_INCONCLUSIVE);
    assert_non_null(strstr(why, "not surely"));
    w = window(10, 10, 0, 20, 0, 20, 8);
    assert_int_equal(rollout_check_arm(a, false, &w, why, sizeof why), ROLLOUT_CHECK_PASS);
    w = window(10, 10, 0, 20, 0, 20, 2);
    assert_int_equal(rollout_check_arm(a, false, &w, why, sizeof why), ROLLOUT_CHECK_FAIL);
    assert_non_null(strstr(why, "win rate"));
    /* battles count as votes toward min_votes */
    w = window(0, 0, 0, 0, 0, 20, 0);
    assert_int_equal(rollout_check_arm(a, false, &w, why, sizeof why), ROLLOUT_CHECK_FAIL);
    /* battles under way but too few to judge the win rate: inconclusive, not a pass */
    w = window(10, 10, 0, 20, 0, 19, 19);
    assert_int_equal(rollout_check_arm(a, false, &w, why, sizeof why), ROLLOUT_CHECK_INCONCLUSIVE);
    assert_non_null(strstr(why, "battles"));
    /* battles expected (arena_fraction above 0) and none yet: inconclusive too */
    w = window(10, 10, 0, 20, 0, 0, 0);
    assert_int_equal(rollout_check_arm(a, true, &w, why, sizeof why), ROLLOUT_CHECK_INCONCLUSIVE);
}

static void test_wilson_by_hand(void **state) {
    (void)state;
    double lo, hi;
    /* p = 0.5, n = 100: centre 0.5, half = 1.96 sqrt(0.0025 + 0.000096) / 1.0384 = 0.0961 */
    rollout_wilson_interval(50, 100, &lo, &hi);
    assert_true(fabs(lo - 0.40383) < 1e-4 && fabs(hi - 0.59617) < 1e-4);
    rollout_wilson_interval(4, 20, &lo, &hi);
    assert_true(fabs(lo - 0.08066) < 1e-4 && fabs(hi - 0.41603) < 1e-4);
    rollout_wilson_interval(0, 10, &lo, &hi);
    assert_true(lo == 0.0 && fabs(hi - 0.27753) < 1e-4);
}

static void test_windows_from_entries(void **state) {
    (void)state;
    rollout_spec s = parse(STEPS_SPEC);
    rollout_windows w;
    rollout_windows_init(&w, &s);
    stats_entry e;
    memset(&e, 0, sizeof e);
    stats_group *g = stats_serving_group(&e.serving, "canary", "ee_ts");
    g->duels = 5;
    g->errors = 1;
    g->votes[STATS_VOTE_BOTH_BAD] = 2;
    stats_hist_add(&g->time_to_duel, 2.0);
    stats_hist_add(&g->regret, 0.5);
    g = stats_serving_group(&e.serving, "canary", "arena"); /* a battle: its errors count */
    g->duels = 3;
    g->errors = 1;
    g->votes[STATS_VOTE_A] = 3;
    g = stats_serving_group(&e.serving, "v000004", "ee_ts"); /* not a rollout arm */
    g->duels = 100;
    rollout_windows_add_entry(&w, &e);
    rollout_windows_add_entry(&w, &e);
    const rollout_arm_window *c = &w.arms[1];
    assert_string_equal(c->name, "canary");
    assert_int_equal(c->duels, 10);
    assert_int_equal(c->errors, 4);
    assert_int_equal(c->votes[STATS_VOTE_BOTH_BAD], 4);
    assert_int_equal(c->votes[STATS_VOTE_A], 0);
    assert_int_equal(c->time_to_duel.n, 2);
    assert_int_equal(w.arms[0].duels, 0);
    /* battles: against the stable arm only, from the canary's side */
    rollout_windows_add_battle(&w, &s, "stable", "canary", 1.0);  /* canary lost */
    rollout_windows_add_battle(&w, &s, "canary", "stable", 1.0);  /* canary won */
    rollout_windows_add_battle(&w, &s, "canary", "stable", 0.5);  /* tie */
    rollout_windows_add_battle(&w, &s, "canary", "other", 1.0);   /* not against stable */
    assert_int_equal(c->battles, 3);
    assert_true(fabs(c->wins - 1.5) < 1e-12);
    json_t *o = rollout_windows_json(&w);
    assert_non_null(o);
    json_t *arm = json_array_get(json_object_get(o, "arms"), 1);
    assert_true(fabs(json_real_value(json_object_get(arm, "error_rate")) - 4.0 / 14.0) < 1e-12);
    assert_true(fabs(json_real_value(json_object_get(arm, "win_rate")) - 0.5) < 1e-12);
    assert_true(json_is_null(json_object_get(json_array_get(json_object_get(o, "arms"), 0), "win_rate")));
    json_decref(o);
}

/* One tick, writing the spec as the controller's caller does (the revision goes up by one). */
static rollout_decision tick(rollout_controller *c, rollout_spec *s, int64_t now,
                             const rollout_arm_window *w) {
    rollout_decision d;
    bool due = rollout_controller_check_due(c, s, now);
    rollout_controller_tick(c, s, now, due ? w : NULL, &d);
    if (d.kind != ROLLOUT_DECIDE_KEEP) c->revision = ++s->revision;
    return d;
}

static void test_steps_then_promotion(void **state) {
    (void)state;
    rollout_spec s = parse(STEPS_SPEC);
    rollout_controller c = {0};
    rollout_arm_window good = window(15, 15, 1, 31, 0, 20, 10);
    rollout_arm_window few = window(1, 1, 0, 2, 0, 0, 0);
    int64_t t = 1000000;
    /* step 0: set_weight 20 (no check: the canary is at 0 %) */
    rollout_decision d = tick(&c, &s, t, &good);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_STEP);
    assert_false(d.checked);
    assert_int_equal(s.arms[1].weight, 20);
    assert_int_equal(s.arms[0].weight, 80);
    assert_int_equal(s.step, 1);
    /* step 1: a 60 s pause; checks run meanwhile every 10 s */
    d = tick(&c, &s, t + 1000, &few);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_KEEP);
    assert_true(d.checked);
    assert_int_equal(d.verdict, ROLLOUT_CHECK_INCONCLUSIVE);
    d = tick(&c, &s, t + 5000, &good);
    assert_false(d.checked); /* 4 s after the last check */
    d = tick(&c, &s, t + 59000, &few);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_KEEP);
    d = tick(&c, &s, t + 61000, &few);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_STEP);
    assert_int_equal(s.step, 2);
    /* step 2: analysis waits for a passing check begun after the step */
    d = tick(&c, &s, t + 72000, &few);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_KEEP);
    d = tick(&c, &s, t + 83000, &good);
    assert_int_equal(d.verdict, ROLLOUT_CHECK_PASS);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_STEP);
    assert_int_equal(s.step, 3);
    /* steps 3 and 4: set_weight 50, then one more pass */
    d = tick(&c, &s, t + 84000, &good);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_STEP);
    assert_int_equal(s.arms[1].weight, 50);
    d = tick(&c, &s, t + 85000, &good);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_KEEP); /* the pass before this step does not count */
    d = tick(&c, &s, t + 95000, &good);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_STEP);
    assert_int_equal(s.step, 5);
    /* every step done: promoted */
    d = tick(&c, &s, t + 96000, &good);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_PROMOTE);
    assert_int_equal(s.status, ROLLOUT_HEALTHY);
    assert_int_equal(s.arms[s.stable].snapshot, 4);
    assert_int_equal(s.arms[s.stable].weight, 100);
    duel_error err = {0};
    assert_int_equal(rollout_spec_check(&s, NULL, &err), 0);
    /* healthy: nothing more to do, no checks */
    d = tick(&c, &s, t + 200000, &good);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_KEEP);
    assert_false(d.checked);
}

static void test_rollback_after_failure_limit(void **state) {
    (void)state;
    rollout_spec s = parse(STEPS_SPEC);
    rollout_controller c = {0};
    rollout_arm_window bad = window(10, 10, 0, 20, 0, 20, 1); /* win rate 0.05 */
    rollout_arm_window good = window(15, 15, 1, 31, 0, 20, 10);
    rollout_arm_window few = window(1, 1, 0, 2, 0, 0, 0);
    int64_t t = 5000000;
    tick(&c, &s, t, &bad); /* set_weight 20 */
    rollout_decision d = tick(&c, &s, t += 10000, &bad);
    assert_int_equal(d.verdict, ROLLOUT_CHECK_FAIL);
    assert_int_equal(d.failures, 1);
    d = tick(&c, &s, t += 10000, &bad);
    assert_int_equal(d.failures, 2);
    /* a pass resets the run; an inconclusive check leaves it */
    d = tick(&c, &s, t += 10000, &good);
    assert_int_equal(d.failures, 0);
    d = tick(&c, &s, t += 10000, &bad);
    d = tick(&c, &s, t += 10000, &few);
    assert_int_equal(d.verdict, ROLLOUT_CHECK_INCONCLUSIVE);
    assert_int_equal(d.failures, 1);
    d = tick(&c, &s, t += 10000, &bad); /* the 60 s pause ends here too (a step, not a reset) */
    assert_int_equal(d.kind, ROLLOUT_DECIDE_STEP);
    assert_int_equal(d.failures, 2);
    d = tick(&c, &s, t += 10000, &bad);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_ROLLBACK);
    assert_non_null(strstr(d.why, "3 failed checks"));
    assert_non_null(strstr(d.why, "win rate"));
    assert_int_equal(s.status, ROLLOUT_DEGRADED);
    assert_int_equal(s.arms[1].weight, 0);
    assert_int_equal(s.arms[0].weight, 100);
    assert_int_equal(s.arms[0].snapshot, 3); /* the stable arm kept its snapshot */
    /* degraded: no more checks, no steps */
    d = tick(&c, &s, t += 10000, &bad);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_KEEP);
    assert_false(d.checked);
}

static void test_operator_revision_restarts(void **state) {
    (void)state;
    rollout_spec s = parse(STEPS_SPEC);
    rollout_controller c = {0};
    rollout_arm_window bad = window(10, 10, 0, 20, 0, 20, 1);
    int64_t t = 9000000;
    tick(&c, &s, t, &bad);
    tick(&c, &s, t += 10000, &bad);
    rollout_decision d = tick(&c, &s, t += 10000, &bad);
    assert_int_equal(d.failures, 2);
    s.revision++; /* an operator changed the spec (pause, weight, ...) */
    d = tick(&c, &s, t += 1000, &bad); /* due at once: a new revision */
    assert_true(d.checked);
    assert_int_equal(d.failures, 1);
    /* paused: checks go on (a paused canary still serves users), steps do not */
    s.status = ROLLOUT_PAUSED;
    s.revision++;
    int step = s.step;
    d = tick(&c, &s, t += 100000, &bad);
    assert_true(d.checked);
    assert_int_equal(s.step, step);
    /* a pause until promoted waits for the operator */
    rollout_spec p = parse("{\"revision\":1,\"stable\":\"s\",\"status\":\"progressing\","
                           "\"arms\":[{\"name\":\"s\",\"snapshot\":1,\"weight\":90},"
                           "{\"name\":\"c\",\"snapshot\":2,\"weight\":10}],"
                           "\"steps\":[{\"pause\":{}}]}");
    rollout_controller pc = {0};
    d = tick(&pc, &p, 1, NULL);
    d = tick(&pc, &p, 1 + 86400000LL * 30, NULL);
    assert_int_equal(d.kind, ROLLOUT_DECIDE_KEEP);
    assert_int_equal(p.step, 0);
    /* more than two arms: figures only, never an action */
    rollout_spec three = parse("{\"revision\":1,\"stable\":\"s\",\"status\":\"progressing\","
                               "\"arms\":[{\"name\":\"s\",\"snapshot\":1,\"weight\":80},"
                               "{\"name\":\"c\",\"snapshot\":2,\"weight\":10},"
                               "{\"name\":\"d\",\"snapshot\":\"latest\",\"weight\":10}]}");
    rollout_controller tc = {0};
    assert_false(rollout_controller_check_due(&tc, &three, 1));
    assert_int_equal(rollout_canary_index(&three), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_thresholds),
        cmocka_unit_test(test_wilson_by_hand),
        cmocka_unit_test(test_windows_from_entries),
        cmocka_unit_test(test_steps_then_promotion),
        cmocka_unit_test(test_rollback_after_failure_limit),
        cmocka_unit_test(test_operator_revision_restarts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
