/* test_arena_ratings.c: common/arena_ratings.c. The Bradley-Terry fit against an independent one
 * (tests/tools/bradley_terry_reference.py: scipy's BFGS on per-battle logistic rows, Chatbot
 * Arena's layout) on the same simulated votes; the 400 r + 1000 scale with mean 1000; ties and
 * both_bad as half a win; an arm that never lost stays finite; bootstrap intervals identical for
 * the same seed and different for another, containing the point rating; ranks as the interval
 * rule says; arena votes read from duel:prefs fields (arena_arms and arena_versions, which side
 * won, ties), other votes ignored, unreadable arena votes counted with their reason. */
#include "test_helpers.h"

#include <sys/wait.h>

#include "arena_ratings.h"
#include "rng.h"

#define N_ARMS 5
#define N_BATTLES 3000

/* Battles from a known Bradley-Terry model (r in log10 odds), 10 % of them ties. */
static void simulate(arena_tally *t, const double *truth, int n_arms, size_t n, uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    duel_error err = {0};
    char name[16];
    for (int i = 0; i < n_arms; i++) {
        snprintf(name, sizeof name, "arm%d", i);
        assert_int_equal(arena_tally_arm(t, name, &err), i);
    }
    for (size_t k = 0; k < n; k++) {
        int a = (int)duel_rng_below(&rng, (uint64_t)n_arms);
        int b = (int)duel_rng_below(&rng, (uint64_t)n_arms - 1);
        if (b >= a) b++;
        double p = 1 / (1 + pow(10, -(truth[a] - truth[b])));
        double u = duel_rng_uniform(&rng);
        double score = duel_rng_uniform(&rng) < 0.1 ? 0.5 : (u < p ? 1 : 0);
        assert_int_equal(arena_tally_add(t, a, b, score, &err), 0);
    }
}

/* The reference's ratings, or false when python3 or scipy is missing. */
static bool reference_fit(const arena_tally *t, double *out) {
    char dir[512], path[600], cmd[2048];
    test_make_temp_dir("arena_ratings", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/battles.txt", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (size_t k = 0; k < t->n_battles; k++)
        fprintf(f, "%d %d %.1f\n", t->battles[k].first, t->battles[k].second, t->battles[k].first_score);
    fclose(f);
    if (access("/usr/bin/python3", X_OK) != 0) return false;
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/tools/bradley_terry_reference.py %s %d",
             test_env("DUEL_SOURCE_DIR", "."), path, t->n_arms);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    int got = 0;
    while (got < t->n_arms && fscanf(p, "%lf", &out[got]) == 1) got++;
    int status = pclose(p);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3) return false;
    assert_int_equal(status, 0);
    assert_int_equal(got, t->n_arms);
    return true;
}

static void test_fit_matches_scipy(void **state) {
    (void)state;
    const double truth[N_ARMS] = {0.30, 0.10, 0.0, -0.15, -0.25};
    arena_tally t = {0};
    simulate(&t, truth, N_ARMS, N_BATTLES, 1);
    double ours[N_ARMS], ref[N_ARMS];
    duel_error err = {0};
    assert_int_equal(arena_ratings_fit(N_ARMS, t.battles, NULL, t.n_battles, ours, &err), 0);
    double mean = 0, truth_mean = 0;
    for (int i = 0; i < N_ARMS; i++) mean += ours[i] / N_ARMS, truth_mean += truth[i] / N_ARMS;
    assert_true(fabs(mean - 1000) < 1e-6);
    /* the fit recovers the model it was drawn from: 3000 battles, sd about 15 points */
    for (int i = 0; i < N_ARMS; i++) {
        assert_false(isnan(ours[i]));
        assert_true(fabs(ours[i] - (400 * (truth[i] - truth_mean) + 1000)) < 60);
    }
    if (!reference_fit(&t, ref)) {
        printf("SKIP: /usr/bin/python3 with python3-scipy is missing: no independent fit\n");
        arena_tally_free(&t);
        skip();
    }
    for (int i = 0; i < N_ARMS; i++) {
        printf("arm%d: ours %.6f scipy %.6f\n", i, ours[i], ref[i]);
        assert_true(fabs(ours[i] - ref[i]) < 1e-3); /* rating points */
    }
    arena_tally_free(&t);
}

static void test_ties_and_degenerate(void **state) {
    (void)state;
    duel_error err = {0};
    double r[3];
    /* ties only: everyone 1000 */
    arena_battle ties[] = {{0, 1, 0.5}, {1, 2, 0.5}, {2, 0, 0.5}, {0, 1, 0.5}};
    assert_int_equal(arena_ratings_fit(3, ties, NULL, 4, r, &err), 0);
    for (int i = 0; i < 3; i++) assert_true(fabs(r[i] - 1000) < 1e-9);
    /* a win each way is worth two ties (both_bad counts as a tie: the codec maps it to 0.5) */
    arena_battle split[] = {{0, 1, 1}, {0, 1, 0}, {1, 2, 1}};
    arena_battle tied[] = {{0, 1, 0.5}, {1, 0, 0.5}, {1, 2, 1}};
    double r2[3];
    assert_int_equal(arena_ratings_fit(3, split, NULL, 3, r, &err), 0);
    assert_int_equal(arena_ratings_fit(3, tied, NULL, 3, r2, &err), 0);
    for (int i = 0; i < 3; i++) assert_true(fabs(r[i] - r2[i]) < 1e-6);
    /* an arm that never lost is finite and on top */
    arena_battle sweep[] = {{0, 1, 1}, {0, 2, 1}, {0, 1, 1}, {1, 2, 1}, {2, 1, 1}};
    assert_int_equal(arena_ratings_fit(3, sweep, NULL, 5, r, &err), 0);
    assert_true(isfinite(r[0]) && r[0] > r[1] && r[0] > r[2] && r[0] < 10000);
    /* bad battles are refused */
    arena_tally t = {0};
    assert_int_equal(arena_tally_arm(&t, "x", &err), 0);
    assert_int_equal(arena_tally_arm(&t, "y", &err), 1);
    assert_int_equal(arena_tally_add(&t, 0, 0, 1, &err), DUEL_EINVAL);
    assert_int_equal(arena_tally_add(&t, 0, 1, 0.7, &err), DUEL_EINVAL);
    assert_int_equal(arena_tally_arm(&t, "", &err), DUEL_EFORMAT);
    arena_tally_free(&t);
}

static void test_bootstrap_reproducible(void **state) {
    (void)state;
    const double truth[4] = {0.6, 0.0, 0.0, -0.6};
    arena_tally t = {0};
    simulate(&t, truth, 4, 1200, 2);
    duel_error err = {0};
    arena_rating a[4], b[4], c[4];
    assert_int_equal(arena_ratings_compute(&t, ARENA_RATINGS_ROUNDS, ARENA_RATINGS_SEED, a, &err), 0);
    assert_int_equal(arena_ratings_compute(&t, ARENA_RATINGS_ROUNDS, ARENA_RATINGS_SEED, b, &err), 0);
    assert_int_equal(arena_ratings_compute(&t, ARENA_RATINGS_ROUNDS, 7, c, &err), 0);
    for (int i = 0; i < 4; i++) { /* the same seed, the same intervals, bit for bit */
        assert_true(a[i].rating == b[i].rating && a[i].lower == b[i].lower);
        assert_true(a[i].upper == b[i].upper && a[i].rank == b[i].rank);
    }
    bool differs = false;
    long long battles = 0;
    for (int i = 0; i < 4; i++) {
        printf("arm%d %.1f [%.1f, %.1f] rank %d\n", i, a[i].rating, a[i].lower, a[i].upper, a[i].rank);
        differs |= a[i].lower != c[i].lower || a[i].upper != c[i].upper;
        assert_true(a[i].lower < a[i].rating && a[i].rating < a[i].upper);
        assert_true(a[i].upper - a[i].lower < 150); /* 600 battles per arm */
        int rank = 1;
        for (int j = 0; j < 4; j++) rank += a[j].lower > a[i].upper;
        assert_int_equal(a[i].rank, rank);
        battles += a[i].battles;
    }
    assert_true(differs);
    assert_int_equal(battles, 2 * 1200);
    /* 240 points apart: the extremes are ranked apart, the two equal arms share a rank */
    assert_int_equal(a[0].rank, 1);
    assert_int_equal(a[1].rank, a[2].rank);
    assert_true(a[1].rank >= 2);
    assert_int_equal(a[3].rank, 4);
    json_t *o = arena_ratings_json(&t, ARENA_RATINGS_ROUNDS, ARENA_RATINGS_SEED, &err);
    assert_non_null(o);
    json_t *arms = json_object_get(o, "arms");
    assert_int_equal(json_array_size(arms), 4);
    assert_string_equal(json_string_value(json_object_get(json_array_get(arms, 0), "name")), "arm0");
    assert_string_equal(json_string_value(json_object_get(json_array_get(arms, 3), "name")), "arm3");
    assert_int_equal(json_integer_value(json_object_get(o, "battles")), 1200);
    json_decref(o);
    arena_tally_free(&t);
}

/* A duel:prefs entry's fields that matter to the arena (the rest of a real vote is ignored). */
static int vote(arena_tally *t, const char *strategy, const char *choice, const char *chosen,
                const char *rejected, const char *gen_params) {
    vote_entry_field f[] = {
        {"strategy", 8, strategy, strlen(strategy)},
        {"choice", 6, choice, strlen(choice)},
        {"chosen_idx", 10, chosen, strlen(chosen)},
        {"rejected_idx", 12, rejected, strlen(rejected)},
        {"gen_params", 10, gen_params, strlen(gen_params)},
    };
    return arena_tally_add_vote(t, f, 5);
}

static void test_votes_from_entries(void **state) {
    (void)state;
    arena_tally t = {0};
    const char *versions = "{\"arena_split\":2,\"arena_versions\":[12,0]}";
    const char *arms = "{\"arena_split\":2,\"arena_arms\":[\"canary\",\"stable\"]}";
    /* b won, and b showed candidate 3: the base model's (arm 1 of arena_versions) */
    assert_int_equal(vote(&t, "arena", "b", "3", "1", versions), 1);
    assert_string_equal(t.names[t.battles[0].first], "base");
    assert_string_equal(t.names[t.battles[0].second], "v12");
    assert_true(t.battles[0].first_score == 1);
    /* a tie and both_bad: half a point each way */
    assert_int_equal(vote(&t, "arena", "tie", "0", "2", versions), 1);
    assert_true(t.battles[1].first_score == 0.5);
    assert_int_equal(vote(&t, "arena", "both_bad", "2", "0", arms), 1);
    assert_true(t.battles[2].first_score == 0.5);
    assert_int_equal(vote(&t, "arena", "a", "1", "2", arms), 1);
    assert_string_equal(t.names[t.battles[3].first], "canary");
    assert_int_equal(t.n_arms, 4);
    /* not arena: ignored, not counted as skipped */
    assert_int_equal(vote(&t, "ee_ts", "a", "1", "2", "{}"), 0);
    assert_int_equal(t.skipped, 0);
    /* arena votes that cannot be read: skipped with the reason */
    assert_int_equal(vote(&t, "arena", "a", "0", "1", versions), 0); /* both from arm 0 */
    assert_non_null(strstr(t.last_skip, "one arm"));
    assert_int_equal(vote(&t, "arena", "a", "0", "3", "{\"arena_split\":2}"), 0);
    assert_non_null(strstr(t.last_skip, "arena_versions"));
    assert_int_equal(vote(&t, "arena", "maybe", "0", "3", versions), 0);
    assert_int_equal(vote(&t, "arena", "a", "0", "3", "{not json"), 0);
    assert_int_equal(t.skipped, 4);
    assert_int_equal(t.n_battles, 4);
    arena_tally_free(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fit_matches_scipy),
        cmocka_unit_test(test_ties_and_degenerate),
        cmocka_unit_test(test_bootstrap_reproducible),
        cmocka_unit_test(test_votes_from_entries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
