/* test_rollout_spec.c: common/rollout_spec.c. A full spec parsed, written and read back the same;
 * bad specs (malformed JSON, weights that do not sum to 100, too many arms for the engine, an
 * unknown snapshot, an unknown field, a stable arm that is not an arm, steps with three arms)
 * refused with a message naming the field and the caller's spec untouched; assignment over
 * 10,000 ids in proportion to the weights (chi-square under the 0.1 % critical value), sticky,
 * never to an arm at weight 0; raising the canary from 10 to 20 moves only stable users onto the
 * canary, about 10 % of all; the operators' actions (weight, promote, abort, pause, resume). */
#include "test_helpers.h"

#include "rollout_spec.h"

#define IDS 10000

static const char *const full =
    "{\"revision\":3,\"arms\":[{\"name\":\"stable\",\"snapshot\":12,\"weight\":90},"
    "{\"name\":\"canary\",\"snapshot\":\"latest\",\"weight\":10}],\"stable\":\"stable\","
    "\"steps\":[{\"set_weight\":20},{\"pause\":{\"duration_s\":600}},{\"analysis\":{}},"
    "{\"pause\":{}}],\"analysis\":{\"window_s\":300,\"failure_limit\":2,\"min_win_rate\":0.45},"
    "\"status\":\"progressing\",\"arena_fraction\":0.25}";

static const int64_t known[] = {11, 12, 13};
static const rollout_limits limits = {4, known, 3};

static int parse(const char *text, rollout_spec *s, duel_error *err) {
    return rollout_spec_parse(text, strlen(text), &limits, s, err);
}

static void test_parse_round_trip(void **state) {
    (void)state;
    rollout_spec s, back;
    duel_error err = {0};
    assert_int_equal(parse(full, &s, &err), 0);
    assert_int_equal(s.revision, 3);
    assert_int_equal(s.n_arms, 2);
    assert_int_equal(s.arms[0].snapshot, 12);
    assert_int_equal(s.arms[1].snapshot, ROLLOUT_SNAPSHOT_LATEST);
    assert_int_equal(s.stable, 0);
    assert_int_equal(s.n_steps, 4);
    assert_int_equal(s.steps[1].kind, ROLLOUT_STEP_PAUSE);
    assert_int_equal(s.steps[1].duration_s, 600);
    assert_int_equal(s.steps[3].duration_s, 0);
    assert_int_equal(s.analysis.window_s, 300);
    assert_int_equal(s.analysis.interval_s, 60); /* default */
    assert_int_equal(s.analysis.failure_limit, 2);
    assert_true(s.analysis.min_win_rate == 0.45);
    assert_true(s.arena_fraction == 0.25);
    char *text = rollout_spec_dump(&s);
    assert_non_null(text);
    assert_int_equal(parse(text, &back, &err), 0);
    assert_memory_equal(&s, &back, sizeof s);
    free(text);
    /* the minimal spec: one arm on the base model */
    assert_int_equal(parse("{\"arms\":[{\"name\":\"only\",\"snapshot\":\"base\",\"weight\":100}],"
                           "\"stable\":\"only\"}", &s, &err), 0);
    assert_int_equal(s.arms[0].snapshot, ROLLOUT_SNAPSHOT_BASE);
    assert_int_equal(s.status, ROLLOUT_PROGRESSING);
}

static void refused(const char *text, const char *needle) {
    rollout_spec s;
    memset(&s, 0x5a, sizeof s);
    rollout_spec before = s;
    duel_error err = {0};
    int rc = parse(text, &s, &err);
    if (rc == 0 || !strstr(err.message, needle))
        fail_msg("%s: rc %d, message \"%s\", wanted \"%s\"", text, rc, err.message, needle);
    assert_memory_equal(&s, &before, sizeof s); /* the caller's spec is untouched */
}

static void test_bad_specs(void **state) {
    (void)state;
    refused("{\"arms\":[", "not JSON");
    refused("", "empty");
    refused("[]", "not a JSON object");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":90},{\"name\":\"b\",\"snapshot\""
            ":13,\"weight\":20}],\"stable\":\"a\"}", "sum to 110, not 100");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":100},{\"name\":\"b\",\"snapshot\""
            ":99,\"weight\":0}],\"stable\":\"a\"}", "arms[1].snapshot: version 99 is not a registered");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":11,\"weight\":20},{\"name\":\"b\",\"snapshot\""
            ":12,\"weight\":20},{\"name\":\"c\",\"snapshot\":13,\"weight\":20},{\"name\":\"d\","
            "\"snapshot\":\"base\",\"weight\":20},{\"name\":\"e\",\"snapshot\":\"latest\",\"weight\""
            ":20}],\"stable\":\"a\"}", "5 arms, but the engine holds 4");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":100}],\"stable\":\"b\"}",
            "stable: \"b\" is not an arm");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":100,\"colour\":1}],\"stable\":"
            "\"a\"}", "arms[0].colour: unknown field");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":100}],\"stable\":\"a\",\"x\":1}",
            "x: unknown field");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":\"100\"}],\"stable\":\"a\"}",
            "arms[0].weight: an integer");
    refused("{\"arms\":[{\"name\":\"a b\",\"snapshot\":12,\"weight\":100}],\"stable\":\"a b\"}",
            "arms[0].name");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":\"newest\",\"weight\":100}],\"stable\":\"a\"}",
            "arms[0].snapshot: a version");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":50},{\"name\":\"a\",\"snapshot\""
            ":13,\"weight\":50}],\"stable\":\"a\"}", "\"a\" twice");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":11,\"weight\":50},{\"name\":\"b\",\"snapshot\""
            ":12,\"weight\":25},{\"name\":\"c\",\"snapshot\":13,\"weight\":25}],\"stable\":\"a\","
            "\"steps\":[{\"set_weight\":30}]}", "exactly two arms");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":100}],\"stable\":\"a\","
            "\"status\":\"fine\"}", "status:");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":100}],\"stable\":\"a\","
            "\"arena_fraction\":1.5}", "arena_fraction");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":100}],\"stable\":\"a\","
            "\"analysis\":{\"min_win_rate\":2}}", "analysis.min_win_rate");
    refused("{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":50},{\"name\":\"b\",\"snapshot\""
            ":13,\"weight\":50}],\"stable\":\"a\",\"steps\":[{\"jump\":1}]}", "steps[0]: unknown step");
}

/* Chi-square of counts against weights (percent) over n ids. */
static double chi_square(const int *counts, const rollout_spec *s, int n) {
    double x = 0;
    for (int i = 0; i < s->n_arms; i++) {
        double expected = (double)n * s->arms[i].weight / ROLLOUT_WEIGHT_TOTAL;
        if (expected > 0) x += (counts[i] - expected) * (counts[i] - expected) / expected;
        else assert_int_equal(counts[i], 0); /* weight 0: nobody */
    }
    return x;
}

static void client_id(int i, char *out, size_t cap) { snprintf(out, cap, "client-%08d", i); }

static void test_assignment(void **state) {
    (void)state;
    rollout_spec s;
    duel_error err = {0};
    assert_int_equal(parse("{\"arms\":[{\"name\":\"stable\",\"snapshot\":12,\"weight\":60},"
                           "{\"name\":\"canary\",\"snapshot\":13,\"weight\":30},{\"name\":\"old\","
                           "\"snapshot\":11,\"weight\":10},{\"name\":\"off\",\"snapshot\":\"base\","
                           "\"weight\":0}],\"stable\":\"stable\"}", &s, &err), 0);
    int counts[4] = {0};
    char id[32];
    for (int i = 0; i < IDS; i++) {
        client_id(i, id, sizeof id);
        int arm = rollout_spec_assign(&s, id);
        assert_in_range(arm, 0, 2);
        assert_int_equal(rollout_spec_assign(&s, id), arm); /* sticky */
        counts[arm]++;
    }
    /* 3 arms with weight: 2 degrees of freedom, 0.1 % critical value 13.82 */
    double x = chi_square(counts, &s, IDS);
    printf("60/30/10/0 over %d ids: %d %d %d %d, chi-square %.2f (bound 13.82)\n", IDS, counts[0],
           counts[1], counts[2], counts[3], x);
    assert_true(x < 13.82);
    /* a spec whose weights are all zero cannot be checked in, but assign copes */
    rollout_spec zero = s;
    for (int i = 0; i < zero.n_arms; i++) zero.arms[i].weight = 0;
    assert_int_equal(rollout_spec_assign(&zero, "x"), -1);
    assert_int_not_equal(rollout_spec_check(&zero, &limits, &err), 0);
}

static void test_raising_moves_only_new_users(void **state) {
    (void)state;
    rollout_spec before, after;
    duel_error err = {0};
    assert_int_equal(parse("{\"arms\":[{\"name\":\"stable\",\"snapshot\":12,\"weight\":90},"
                           "{\"name\":\"canary\",\"snapshot\":13,\"weight\":10}],\"stable\":"
                           "\"stable\"}", &before, &err), 0);
    after = before;
    assert_int_equal(rollout_spec_set_weight(&after, "canary", 20, &err), 0);
    assert_int_equal(after.arms[0].weight, 80);
    int moved = 0, counts[2] = {0};
    char id[32];
    for (int i = 0; i < IDS; i++) {
        client_id(i, id, sizeof id);
        int a = rollout_spec_assign(&before, id), b = rollout_spec_assign(&after, id);
        if (a != b) {
            /* only onto the raised arm, never off it */
            assert_int_equal(a, 0);
            assert_int_equal(b, 1);
            moved++;
        }
        counts[b]++;
    }
    /* expected 10 % of all ids: binomial sd 30 over 10,000; allow 4 sd */
    printf("10%% -> 20%%: %d of %d ids moved (expected %d +- 120)\n", moved, IDS, IDS / 10);
    assert_in_range(moved, IDS / 10 - 120, IDS / 10 + 120);
    assert_true(chi_square(counts, &after, IDS) < 10.83); /* 1 dof, 0.1 % */
}

static void test_actions(void **state) {
    (void)state;
    rollout_spec s;
    duel_error err = {0};
    assert_int_equal(parse(full, &s, &err), 0);
    assert_int_equal(rollout_spec_set_weight(&s, "canary", 95, &err), 0);
    assert_int_equal(s.arms[0].weight, 5);
    assert_int_equal(rollout_spec_set_weight(&s, "stable", 50, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "stable arm"));
    assert_int_equal(rollout_spec_set_weight(&s, "nope", 5, &err), DUEL_EINVAL);
    assert_int_equal(rollout_spec_set_weight(&s, "canary", 101, &err), DUEL_EINVAL);
    assert_int_equal(rollout_spec_pause(&s, false, &err), DUEL_EINVAL); /* not paused */
    assert_int_equal(rollout_spec_pause(&s, true, &err), 0);
    assert_int_equal(s.status, ROLLOUT_PAUSED);
    assert_int_equal(rollout_spec_pause(&s, false, &err), 0);
    assert_int_equal(s.status, ROLLOUT_PROGRESSING);
    rollout_spec p = s;
    assert_int_equal(rollout_spec_promote(&p, NULL, &err), 0);
    assert_int_equal(p.arms[0].snapshot, ROLLOUT_SNAPSHOT_LATEST); /* the canary's */
    assert_int_equal(p.arms[0].weight, 100);
    assert_int_equal(p.arms[1].weight, 0);
    assert_int_equal(p.status, ROLLOUT_HEALTHY);
    assert_int_equal(rollout_spec_check(&p, &limits, &err), 0);
    rollout_spec_abort(&s, ROLLOUT_ABORTED);
    assert_int_equal(s.arms[0].snapshot, 12);
    assert_int_equal(s.arms[0].weight, 100);
    assert_int_equal(s.arms[1].weight, 0);
    assert_int_equal(s.status, ROLLOUT_ABORTED);
    assert_int_equal(rollout_spec_check(&s, &limits, &err), 0);
    assert_int_equal(rollout_spec_pause(&s, true, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "aborted"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_round_trip),
        cmocka_unit_test(test_bad_specs),
        cmocka_unit_test(test_assignment),
        cmocka_unit_test(test_raising_moves_only_new_users),
        cmocka_unit_test(test_actions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
