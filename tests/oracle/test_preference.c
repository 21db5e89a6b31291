/* test_preference.c: oracle preferences, the simulated user's noise model (oracle/preference.c):
 * deterministic labels with ties, Bernoulli(sigmoid(delta/tau)) label frequencies, numerically
 * safe probabilities, the tie margin, flips (their frequency), both-bad below a threshold, the
 * matching win probability, bad input; the kind and choice names. */
#include "test_helpers.h"

#include "oracle.h"

static void test_deterministic(void **state) {
    (void)state;
    oracle_preference_config c;
    oracle_preference_config_default(&c);
    assert_false(c.stochastic);
    assert_true(c.temperature == 1.0);
    oracle_choice ch;
    assert_int_equal(oracle_prefer(&c, 0.7, 0.2, NULL, &ch, NULL), 0);
    assert_int_equal(ch, ORACLE_PREFER_A);
    assert_int_equal(oracle_prefer(&c, -3, 1e-9, NULL, &ch, NULL), 0);
    assert_int_equal(ch, ORACLE_PREFER_B);
    assert_int_equal(oracle_prefer(&c, 0.5, 0.5, NULL, &ch, NULL), 0);
    assert_int_equal(ch, ORACLE_TIE);
    assert_string_equal(oracle_choice_name(ORACLE_PREFER_A), "a");
    assert_string_equal(oracle_choice_name(ORACLE_PREFER_B), "b");
    assert_string_equal(oracle_choice_name(ORACLE_TIE), "tie");
}

static void check_frequency(double ra, double rb, double tau, uint64_t seed) {
    oracle_preference_config c = {.stochastic = true, .temperature = tau};
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    const int N = 20000;
    int a = 0;
    for (int t = 0; t < N; t++) {
        oracle_choice ch;
        assert_int_equal(oracle_prefer(&c, ra, rb, &rng, &ch, NULL), 0);
        assert_true(ch != ORACLE_TIE);
        a += ch == ORACLE_PREFER_A;
    }
    double p = 1.0 / (1.0 + exp(-(ra - rb) / tau));
    double sd = sqrt(N * p * (1 - p));
    if (!(fabs(a - N * p) <= 4 * sd + 1)) fprintf(stderr, "a=%d expected %g\n", a, N * p);
    assert_true(fabs(a - N * p) <= 4 * sd + 1);
}

static void test_stochastic(void **state) {
    (void)state;
    check_frequency(1.0, 0.0, 0.5, 1);  /* sigmoid(2) = 0.881 */
    check_frequency(0.3, 0.3, 1.0, 2);  /* 1/2 */
    check_frequency(-0.2, 0.5, 2.0, 3); /* sigmoid(-0.35) */
    check_frequency(0.0, 50.0, 1.0, 4); /* ~0: never a */
    assert_true(fabs(oracle_preference_probability(2.0, 1.0) - 1 / (1 + exp(-2.0))) < 1e-15);
    assert_true(fabs(oracle_preference_probability(-2.0, 1.0) - 1 / (1 + exp(2.0))) < 1e-15);
    assert_true(oracle_preference_probability(1e308, 1e-300) == 1.0);
    assert_true(oracle_preference_probability(-1e308, 1e-300) == 0.0);
    /* Huge finite rewards whose difference overflows still give a label. */
    oracle_preference_config c = {.stochastic = true, .temperature = 1.0};
    duel_rng rng;
    duel_rng_seed(&rng, 5);
    oracle_choice ch;
    assert_int_equal(oracle_prefer(&c, 1.5e308, -1.5e308, &rng, &ch, NULL), 0);
    assert_int_equal(ch, ORACLE_PREFER_A);
}

static void test_bad_input(void **state) {
    (void)state;
    oracle_preference_config c = {.stochastic = false, .temperature = 1.0};
    duel_rng rng;
    duel_rng_seed(&rng, 1);
    duel_error err;
    oracle_choice ch = (oracle_choice)77;
    assert_int_equal(oracle_prefer(&c, NAN, 0, &rng, &ch, &err), DUEL_EINVAL);
    assert_string_equal(err.message, "oracle preference: reward of a is NaN");
    assert_int_equal(oracle_prefer(&c, 0, -INFINITY, &rng, &ch, &err), DUEL_EINVAL);
    assert_string_equal(err.message, "oracle preference: reward of b is infinite");
    c.stochastic = true;
    double taus[] = {0, -1, NAN, INFINITY};
    for (int i = 0; i < 4; i++) {
        c.temperature = taus[i];
        assert_int_equal(oracle_prefer(&c, 1, 0, &rng, &ch, &err), DUEL_EINVAL);
        assert_non_null(strstr(err.message, "temperature"));
    }
    c.temperature = 1;
    assert_int_equal(oracle_prefer(&c, 1, 0, NULL, &ch, &err), DUEL_EINVAL);
    assert_int_equal(ch, 77); /* no vote */
}

static void test_tie_margin_and_both_bad(void **state) {
    (void)state;
    oracle_preference_config c;
    oracle_preference_config_default(&c);
    c.tie_margin = 0.1;
    oracle_choice ch;
    assert_int_equal(oracle_prefer(&c, 0.55, 0.5, NULL, &ch, NULL), 0);
    assert_int_equal(ch, ORACLE_TIE);
    assert_int_equal(oracle_prefer(&c, 0.5, 0.62, NULL, &ch, NULL), 0);
    assert_int_equal(ch, ORACLE_PREFER_B);
    c.both_bad = true;
    c.both_bad_below = 0.2;
    assert_int_equal(oracle_prefer(&c, 0.19, -3, NULL, &ch, NULL), 0);
    assert_int_equal(ch, ORACLE_BOTH_BAD);
    assert_string_equal(oracle_choice_name(ch), "both_bad");
    assert_int_equal(oracle_prefer(&c, 0.2, -3, NULL, &ch, NULL), 0); /* one at the threshold: a */
    assert_int_equal(ch, ORACLE_PREFER_A);
    /* a Bradley-Terry user ties only within a margin it is given */
    c.both_bad = false;
    c.stochastic = true;
    duel_rng rng;
    duel_rng_seed(&rng, 9);
    assert_int_equal(oracle_prefer(&c, 0.3, 0.35, &rng, &ch, NULL), 0);
    assert_int_equal(ch, ORACLE_TIE);
    c.tie_margin = 0;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(oracle_prefer(&c, 0.3, 0.3, &rng, &ch, NULL), 0);
        assert_true(ch != ORACLE_TIE);
    }
}

static void test_flip(void **state) {
    (void)state;
    oracle_preference_config c;
    oracle_preference_config_default(&c);
    c.flip_probability = 0.2;
    duel_rng rng;
    duel_rng_seed(&rng, 11);
    const int N = 20000;
    int b = 0;
    for (int t = 0; t < N; t++) {
        oracle_choice ch;
        assert_int_equal(oracle_prefer(&c, 1.0, 0.0, &rng, &ch, NULL), 0);
        assert_true(ch == ORACLE_PREFER_A || ch == ORACLE_PREFER_B);
        b += ch == ORACLE_PREFER_B;
    }
    double sd = sqrt(N * 0.2 * 0.8);
    assert_true(fabs(b - N * 0.2) <= 4 * sd);
    /* ties are not flipped */
    oracle_choice ch;
    assert_int_equal(oracle_prefer(&c, 0.5, 0.5, &rng, &ch, NULL), 0);
    assert_int_equal(ch, ORACLE_TIE);
    /* a flip needs an rng even for a deterministic label */
    duel_error err;
    assert_int_equal(oracle_prefer(&c, 1.0, 0.0, NULL, &ch, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "rng"));
}

static void test_win_probability(void **state) {
    (void)state;
    oracle_preference_config c;
    oracle_preference_config_default(&c);
    assert_true(oracle_preference_win_probability(&c, 0.7, 0.2) == 1.0);
    assert_true(oracle_preference_win_probability(&c, 0.2, 0.7) == 0.0);
    assert_true(oracle_preference_win_probability(&c, 0.2, 0.2) == 0.5);
    c.stochastic = true;
    c.temperature = 0.5;
    assert_true(fabs(oracle_preference_win_probability(&c, 1.0, 0.0) - 1 / (1 + exp(-2.0))) < 1e-15);
    c.flip_probability = 0.25;
    double p = 1 / (1 + exp(-2.0));
    assert_true(fabs(oracle_preference_win_probability(&c, 1.0, 0.0) - (0.75 * p + 0.25 * (1 - p))) < 1e-15);
    c.tie_margin = 2.0;
    assert_true(oracle_preference_win_probability(&c, 1.0, 0.0) == 0.5);
    assert_true(isnan(oracle_preference_win_probability(&c, NAN, 0.0)));
}

static void test_config_validation(void **state) {
    (void)state;
    oracle_preference_config c;
    oracle_preference_config_default(&c);
    const struct {
        double *field;
        double bad;
        const char *name;
    } cases[] = {{&c.tie_margin, -0.1, "tie_margin"},
                 {&c.flip_probability, 1.5, "flip_probability"},
                 {&c.flip_probability, NAN, "flip_probability"},
                 {&c.both_bad_below, INFINITY, "both_bad_below"}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        oracle_preference_config_default(&c);
        *cases[i].field = cases[i].bad;
        duel_error err;
        oracle_choice ch = (oracle_choice)77;
        assert_int_equal(oracle_prefer(&c, 1, 0, NULL, &ch, &err), DUEL_EINVAL);
        assert_non_null(strstr(err.message, cases[i].name));
        assert_int_equal(ch, 77);
    }
}

static void test_kinds(void **state) {
    (void)state;
    const char *names[] = {"lexical", "rm", "judge"};
    for (int k = 0; k < 3; k++) {
        oracle_kind kind;
        assert_int_equal(oracle_kind_parse(names[k], &kind, NULL), 0);
        assert_int_equal(kind, k);
        assert_string_equal(oracle_kind_name(kind), names[k]);
    }
    oracle_kind kind;
    duel_error err;
    assert_int_equal(oracle_kind_parse("Lexical", &kind, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "expected lexical, rm or judge"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_stochastic),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_tie_margin_and_both_bad),
        cmocka_unit_test(test_flip),
        cmocka_unit_test(test_win_probability),
        cmocka_unit_test(test_config_validation),
        cmocka_unit_test(test_kinds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
