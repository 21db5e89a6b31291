/* test_duel.c: the pair selection strategies (inference/duel.c) on hand-built reward matrices
 * where the right pair is known (ties, unanimous heads, M = 2, non-finite rewards), Thompson
 * sampling checked as a sampler with a chi-square test, placement, regret, PILAF logit mixing and
 * the arena pairing. */
#include "test_helpers.h"

#include "duel.h"

/* A matrix r[M][E] where head e's scores are given by fn(i, e). */
#define FILL(r, M, E, expr)                                                                        \
    do {                                                                                           \
        for (int i = 0; i < (M); i++)                                                              \
            for (int e = 0; e < (E); e++) (r)[i * (E) + e] = (float)(expr);                        \
    } while (0)

static void test_strategy_names(void **state) {
    (void)state;
    const char *names[] = {"ee_ts", "bai_ts", "uncertainty", "passive", "bon", "pilaf", "arena"};
    for (int s = 0; s < DUEL_STRATEGY_COUNT; s++) {
        duel_strategy got;
        assert_int_equal(duel_strategy_parse(names[s], &got, NULL), 0);
        assert_int_equal(got, s);
        assert_string_equal(duel_strategy_name(got), names[s]);
        assert_int_equal(duel_strategy_uses_rewards(got), s <= DUEL_STRATEGY_BON);
    }
    assert_int_equal(DUEL_STRATEGY_DEFAULT, DUEL_STRATEGY_EE_TS);
    duel_error err;
    duel_strategy got = DUEL_STRATEGY_BON;
    const char *bad[] = {"EE_TS", "ee_ts ", "", "thompson"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(duel_strategy_parse(bad[i], &got, &err), DUEL_EINVAL);
        assert_non_null(strstr(err.message, "expected ee_ts, bai_ts"));
    }
    assert_int_equal(got, DUEL_STRATEGY_BON); /* untouched on failure */
    assert_string_equal(duel_strategy_name((duel_strategy)99), "unknown");
}

/* Every heads-based strategy refuses non-finite rewards with a message naming the entry, and
 * leaves the output alone. */
static void test_nonfinite_rejected(void **state) {
    (void)state;
    enum { M = 5, E = 8 };
    float r[M * E];
    FILL(r, M, E, i * 0.5 + e * 0.01);
    float bad_values[] = {NAN, INFINITY, -INFINITY};
    const char *words[] = {"NaN", "+inf", "-inf"};
    duel_rng rng;
    duel_rng_seed(&rng, 1);
    for (int b = 0; b < 3; b++) {
        r[3 * E + 7] = bad_values[b];
        char want[64];
        snprintf(want, sizeof want, "candidate 3 head 7 reward is %s", words[b]);
        for (int s = 0; s < DUEL_STRATEGY_COUNT; s++) {
            if (!duel_strategy_uses_rewards((duel_strategy)s)) continue;
            duel_pair p = {.first = -7, .second = -7};
            duel_error err;
            assert_int_equal(duel_select((duel_strategy)s, r, M, E, &rng, &p, &err), DUEL_EINVAL);
            assert_string_equal(err.message, want);
            assert_int_equal(p.first, -7);
        }
        double regret = -1;
        duel_error err;
        assert_int_equal(duel_estimated_regret(r, M, E, 0, 1, &regret, &err), DUEL_EINVAL);
        assert_string_equal(err.message, want);
        assert_true(regret == -1);
        int a = -1, bb = -1;
        assert_int_equal(duel_select_arena(r, 1, E, r, M, E, &a, &bb, &err), DUEL_EINVAL);
        assert_non_null(strstr(err.message, "arena arm 2"));
        assert_non_null(strstr(err.message, want));
    }
}

static void test_shape_rejected(void **state) {
    (void)state;
    float r[4] = {1, 2, 3, 4};
    duel_rng rng;
    duel_rng_seed(&rng, 1);
    duel_pair p;
    duel_error err;
    for (int s = 0; s <= DUEL_STRATEGY_BON; s++) {
        assert_int_equal(duel_select((duel_strategy)s, r, 1, 4, &rng, &p, &err), DUEL_EINVAL);
        assert_non_null(strstr(err.message, "a duel needs two answers"));
        assert_int_equal(duel_select((duel_strategy)s, r, DUEL_MAX_CANDIDATES + 1, 1, &rng, &p, &err),
                         DUEL_EINVAL);
        if (s != DUEL_STRATEGY_PASSIVE) {
            assert_int_equal(duel_select((duel_strategy)s, r, 2, 0, &rng, &p, &err), DUEL_EINVAL);
            assert_int_equal(duel_select((duel_strategy)s, NULL, 2, 2, &rng, &p, &err), DUEL_EINVAL);
        }
    }
    assert_int_equal(duel_select(DUEL_STRATEGY_EE_TS, r, 2, 2, NULL, &p, &err), DUEL_EINVAL);
    assert_int_equal(duel_select(DUEL_STRATEGY_PILAF, r, 2, 2, &rng, &p, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "pilaf"));
    assert_int_equal(duel_select(DUEL_STRATEGY_ARENA, r, 2, 2, &rng, &p, &err), DUEL_EINVAL);
    assert_int_equal(duel_select((duel_strategy)42, r, 2, 2, &rng, &p, &err), DUEL_EINVAL);
}

/* All heads agree: candidate 2 best, candidate 0 second for every head, whatever the order. */
static void test_ee_ts_unanimous(void **state) {
    (void)state;
    enum { M = 4, E = 20 };
    float r[M * E];
    const double base[M] = {0.8, 0.1, 1.0, 0.3};
    FILL(r, M, E, base[i] + 0.001 * e);
    duel_rng rng;
    duel_rng_seed(&rng, 5);
    for (int t = 0; t < 200; t++) {
        duel_pair p;
        assert_int_equal(duel_select_ee_ts(r, M, E, &rng, &p, NULL), 0);
        assert_int_equal(p.first, 2);
        assert_int_equal(p.second, 0);
        assert_true(p.head_first >= 0 && p.head_first < E);
        assert_int_equal(p.head_second, p.head_first); /* fallback uses s0 */
    }
}

/* Two camps of heads: ten pick candidate 1, ten pick 3. The pair is always {1, 3}, the first
 * answer from the head that was drawn first. */
static void test_ee_ts_two_camps(void **state) {
    (void)state;
    enum { M = 5, E = 20 };
    float r[M * E];
    FILL(r, M, E, (e < 10 ? (i == 1) : (i == 3)) + 0.1 * i);
    duel_rng rng;
    duel_rng_seed(&rng, 6);
    int first_counts[M] = {0};
    for (int t = 0; t < 400; t++) {
        duel_pair p;
        assert_int_equal(duel_select_ee_ts(r, M, E, &rng, &p, NULL), 0);
        assert_int_equal(p.first, p.head_first < 10 ? 1 : 3);
        assert_int_equal(p.second, p.head_first < 10 ? 3 : 1);
        assert_true(p.head_second < 10 ? p.second == 1 : p.second == 3);
        first_counts[p.first]++;
    }
    assert_true(first_counts[1] > 150 && first_counts[3] > 150);
}

/* Ties go to the lower index: an all-equal matrix gives (0, 1); M = 2 always gives both. */
static void test_ties_and_m2(void **state) {
    (void)state;
    enum { M = 6, E = 4 };
    float r[M * E];
    FILL(r, M, E, 0.25);
    duel_rng rng;
    duel_rng_seed(&rng, 7);
    for (int s = 0; s <= DUEL_STRATEGY_BON; s++) {
        duel_pair p;
        assert_int_equal(duel_select((duel_strategy)s, r, M, E, &rng, &p, NULL), 0);
        assert_int_equal(p.first, 0);
        assert_int_equal(p.second, 1);
    }
    /* A tie between candidates 2 and 4 at the top of every head: 2 wins, then 4 is the best
     * other. */
    FILL(r, M, E, (i == 2 || i == 4) ? 1.0 : 0.1 * i);
    for (int s = 0; s <= DUEL_STRATEGY_BON; s++) {
        if (s == DUEL_STRATEGY_PASSIVE || s == DUEL_STRATEGY_UNCERTAINTY) continue;
        duel_pair p;
        assert_int_equal(duel_select((duel_strategy)s, r, M, E, &rng, &p, NULL), 0);
        assert_int_equal(p.first, 2);
        if (s != DUEL_STRATEGY_BAI_TS) assert_int_equal(p.second, 4);
    }
    /* M = 2: every strategy shows both, in either order. */
    float r2[2 * 3] = {0.5f, -1.0f, 2.0f, 0.4f, 1.0f, -3.0f};
    for (int t = 0; t < 50; t++)
        for (int s = 0; s <= DUEL_STRATEGY_BON; s++) {
            duel_pair p;
            assert_int_equal(duel_select((duel_strategy)s, r2, 2, 3, &rng, &p, NULL), 0);
            assert_true((p.first == 0 && p.second == 1) || (p.first == 1 && p.second == 0));
            if (s == DUEL_STRATEGY_EE_TS) /* y1 is the drawn head's argmax */
                assert_int_equal(p.first, r2[p.head_first] >= r2[3 + p.head_first] ? 0 : 1);
        }
}

/* Chi-square statistic of observed counts against expected probabilities (categories with
 * probability 0 must be empty). */
static double chi_square(const int *obs, const double *prob, int k, int n, int *df) {
    double x2 = 0;
    *df = -1;
    for (int i = 0; i < k; i++) {
        if (prob[i] == 0) {
            assert_int_equal(obs[i], 0);
            continue;
        }
        double ex = prob[i] * n;
        x2 += (obs[i] - ex) * (obs[i] - ex) / ex;
        (*df)++;
    }
    return x2;
}

/* Thompson sampling is a sampler: over many draws, y1 = i with frequency (heads whose argmax is
 * i) / E. 5 candidates, 20 heads: argmax counts 8, 0, 6, 4, 2. */
static void test_ee_ts_is_a_sampler(void **state) {
    (void)state;
    enum { M = 5, E = 20, N = 40000 };
    float r[M * E];
    const int camp_of_head[E] = {0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4};
    duel_rng noise;
    duel_rng_seed(&noise, 123);
    for (int e = 0; e < E; e++)
        for (int i = 0; i < M; i++)
            r[i * E + e] = (float)(duel_rng_uniform(&noise) + (i == camp_of_head[e] ? 2.0 : 0.0));
    const double prob[M] = {8.0 / 20, 0, 6.0 / 20, 4.0 / 20, 2.0 / 20};
    /* 99.9% quantile of chi-square with 3 degrees of freedom. */
    const double critical_df3 = 16.266;
    int obs_ee[M] = {0}, obs_bai[M] = {0};
    int heads[E] = {0};
    duel_rng rng;
    duel_rng_seed(&rng, 2024);
    for (int t = 0; t < N; t++) {
        duel_pair p;
        assert_int_equal(duel_select_ee_ts(r, M, E, &rng, &p, NULL), 0);
        obs_ee[p.first]++;
        heads[p.head_first]++;
        assert_true(p.second != p.first);
        assert_int_equal(p.second, camp_of_head[p.head_second]); /* second from a dissenting head */
        assert_true(camp_of_head[p.head_second] != camp_of_head[p.head_first]);
        assert_int_equal(duel_select_bai_ts(r, M, E, &rng, &p, NULL), 0);
        obs_bai[p.first]++;
    }
    int df;
    double x2 = chi_square(obs_ee, prob, M, N, &df);
    assert_int_equal(df, 3);
    if (!(x2 < critical_df3)) fprintf(stderr, "ee_ts chi2 = %g\n", x2);
    assert_true(x2 < critical_df3);
    x2 = chi_square(obs_bai, prob, M, N, &df);
    if (!(x2 < critical_df3)) fprintf(stderr, "bai_ts chi2 = %g\n", x2);
    assert_true(x2 < critical_df3);
    /* The first head itself is uniform over the 20 heads (19 degrees of freedom, 99.9%: 43.82). */
    double uniform[E];
    for (int e = 0; e < E; e++) uniform[e] = 1.0 / E;
    x2 = chi_square(heads, uniform, E, N, &df);
    assert_int_equal(df, 19);
    assert_true(x2 < 43.82);
}

/* The same seed gives the same pairs; different seeds give different sequences. */
static void test_seeded(void **state) {
    (void)state;
    enum { M = 8, E = 20 };
    float r[M * E];
    duel_rng noise;
    duel_rng_seed(&noise, 9);
    FILL(r, M, E, duel_rng_normal(&noise));
    duel_rng a, b, c;
    duel_rng_seed(&a, 77);
    duel_rng_seed(&b, 77);
    duel_rng_seed(&c, 78);
    int differ = 0;
    for (int t = 0; t < 100; t++) {
        duel_pair pa, pb, pc;
        duel_select_ee_ts(r, M, E, &a, &pa, NULL);
        duel_select_ee_ts(r, M, E, &b, &pb, NULL);
        duel_select_ee_ts(r, M, E, &c, &pc, NULL);
        assert_memory_equal(&pa, &pb, sizeof pa);
        differ += memcmp(&pa, &pc, sizeof pa) != 0;
    }
    assert_true(differ > 0);
}

/* bai_ts: candidate 0 is every head's best; the second is the candidate whose difference from 0
 * varies most across heads, not the second best. */
static void test_bai_ts_variance(void **state) {
    (void)state;
    enum { M = 5, E = 4 };
    float r[M * E] = {
        10, 10, 10, 10,      /* 0: best everywhere */
        9, 9, 9, 9,          /* 1: second best, certain: variance 0 */
        1, 5, 1, 5,          /* 2: difference 9,5,9,5: variance 4 */
        0, 8, 0, 8,          /* 3: difference 10,2,10,2: variance 16 */
        2, 6, 2, 6,          /* 4: variance 4 */
    };
    duel_rng rng;
    duel_rng_seed(&rng, 3);
    for (int t = 0; t < 50; t++) {
        duel_pair p;
        assert_int_equal(duel_select_bai_ts(r, M, E, &rng, &p, NULL), 0);
        assert_int_equal(p.first, 0);
        assert_int_equal(p.second, 3);
        assert_int_equal(p.head_second, -1);
    }
    /* Equal variances: the lower index (2 before 4) once 3 is made certain. */
    for (int e = 0; e < E; e++) r[3 * E + e] = 7;
    duel_pair p;
    assert_int_equal(duel_select_bai_ts(r, M, E, &rng, &p, NULL), 0);
    assert_int_equal(p.second, 2);
    /* One head: all variances are zero, the lowest index other than y1. */
    float one[3] = {1, 5, 2};
    assert_int_equal(duel_select_bai_ts(one, 3, 1, &rng, &p, NULL), 0);
    assert_int_equal(p.first, 1);
    assert_int_equal(p.second, 0);
}

static void test_uncertainty(void **state) {
    (void)state;
    enum { M = 4, E = 3 };
    float r[M * E] = {
        1, 2, 3,  /* 0 */
        0, 5, 0,  /* 1 */
        1, 2, 3,  /* 2 = 0: zero variance with 0 */
        5, 0, 5,  /* 3: (1,3) differ by -5,5,-5: the largest variance */
    };
    duel_pair p;
    assert_int_equal(duel_select_uncertainty(r, M, E, &p, NULL), 0);
    assert_int_equal(p.first, 1);
    assert_int_equal(p.second, 3);
    assert_int_equal(p.head_first, -1);
    /* Shifting a candidate by a constant does not change its variance with anyone. */
    for (int e = 0; e < E; e++) r[1 * E + e] += 100;
    assert_int_equal(duel_select_uncertainty(r, M, E, &p, NULL), 0);
    assert_int_equal(p.first, 1);
    assert_int_equal(p.second, 3);
    /* Identical differences for (0,1) and (1,2) (since 0 == 2): lexicographic tie-break. */
    float t[3 * 2] = {0, 1, 4, 0, 0, 1};
    assert_int_equal(duel_select_uncertainty(t, 3, 2, &p, NULL), 0);
    assert_int_equal(p.first, 0);
    assert_int_equal(p.second, 1);
}

static void test_passive(void **state) {
    (void)state;
    duel_pair p;
    duel_error err;
    assert_int_equal(duel_select_passive(NULL, 4, 0, &p, &err), 0);
    assert_int_equal(p.first, 0);
    assert_int_equal(p.second, 1);
    float r[2 * 2] = {5, 5, 9, 9};
    assert_int_equal(duel_select_passive(r, 2, 2, &p, &err), 0);
    assert_int_equal(p.first, 0); /* no selection, even though 1 is better */
    assert_int_equal(p.second, 1);
    assert_int_equal(duel_select_passive(NULL, 1, 0, &p, &err), DUEL_EINVAL);
    r[1] = NAN;
    assert_int_equal(duel_select_passive(r, 2, 2, &p, &err), DUEL_EINVAL);
    assert_string_equal(err.message, "candidate 0 head 1 reward is NaN");
}

/* bon: y1 is the best ensemble mean even when no single head ranks it first. */
static void test_bon(void **state) {
    (void)state;
    enum { M = 3, E = 4 };
    float r[M * E] = {
        10, 0, 10, 0, /* 0: mean 5, argmax of heads 0 and 2 */
        0, 10, 0, 10, /* 1: mean 5, argmax of heads 1 and 3 */
        9, 9, 9, 9,   /* 2: mean 9, never a head's argmax */
    };
    duel_rng rng;
    duel_rng_seed(&rng, 8);
    int seconds[M] = {0};
    for (int t = 0; t < 400; t++) {
        duel_pair p;
        assert_int_equal(duel_select_bon(r, M, E, &rng, &p, NULL), 0);
        assert_int_equal(p.first, 2);
        assert_int_equal(p.head_first, -1);
        assert_int_equal(p.second, p.head_second % 2 == 0 ? 0 : 1);
        seconds[p.second]++;
    }
    assert_true(seconds[0] > 150 && seconds[1] > 150);
    /* Unanimous heads: the best other candidate under the first head. */
    float u[M * 2] = {1, 1, 3, 3, 2, 2};
    duel_pair p;
    assert_int_equal(duel_select_bon(u, M, 2, &rng, &p, NULL), 0);
    assert_int_equal(p.first, 1);
    assert_int_equal(p.second, 2);
}

static void test_place(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 11);
    duel_pair pair = {.first = 4, .second = 7, .head_first = 0, .head_second = 1};
    int swaps = 0;
    const int N = 10000;
    for (int t = 0; t < N; t++) {
        duel_placement pl;
        duel_place(&pair, &rng, &pl);
        if (pl.side_swap) {
            assert_int_equal(pl.a, 7);
            assert_int_equal(pl.b, 4);
            swaps++;
        } else {
            assert_int_equal(pl.a, 4);
            assert_int_equal(pl.b, 7);
        }
    }
    /* Binomial(10000, 1/2): standard deviation 50; 4 sigma. */
    assert_true(abs(swaps - N / 2) < 200);
}

static void test_regret(void **state) {
    (void)state;
    double s[4] = {1.0, 3.0, -1.0, 2.0};
    double out = -1;
    duel_error err;
    assert_int_equal(duel_regret(s, 4, 1, 3, &out, &err), 0);
    assert_true(fabs(out - 0.5) < 1e-15); /* 3 - (3 + 2)/2 */
    assert_int_equal(duel_regret(s, 4, 2, 0, &out, &err), 0);
    assert_true(fabs(out - 3.0) < 1e-15); /* 3 - (-1 + 1)/2 */
    assert_int_equal(duel_regret(s, 4, 1, 1, &out, &err), 0);
    assert_true(out == 0.0);
    assert_int_equal(duel_regret(s, 4, 1, 4, &out, &err), DUEL_EINVAL);
    assert_int_equal(duel_regret(s, 4, -1, 0, &out, &err), DUEL_EINVAL);
    s[2] = NAN;
    assert_int_equal(duel_regret(s, 4, 0, 1, &out, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "candidate 2"));

    /* R-hat from a reward matrix: means 1, 4, 2.5 */
    float r[3 * 2] = {0, 2, 3, 5, 2, 3};
    double mean[3];
    assert_int_equal(duel_ensemble_mean(r, 3, 2, mean, &err), 0);
    assert_true(mean[0] == 1.0 && mean[1] == 4.0 && mean[2] == 2.5);
    assert_int_equal(duel_estimated_regret(r, 3, 2, 0, 2, &out, &err), 0);
    assert_true(fabs(out - (4.0 - 1.75)) < 1e-15);
    assert_int_equal(duel_estimated_regret(r, 3, 2, 2, 1, &out, &err), 0);
    assert_true(fabs(out - 0.75) < 1e-15);
}

/* softmax in double */
static void softmax_d(const double *x, int n, double *p) {
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < n; i++) s += (p[i] = isinf(x[i]) ? 0 : exp(x[i] - mx));
    for (int i = 0; i < n; i++) p[i] /= s;
}

static void test_pilaf_beta_zero(void **state) {
    (void)state;
    enum { V = 50 };
    float h[V], ref[V], plus[V], minus[V];
    duel_rng rng;
    duel_rng_seed(&rng, 12);
    for (int k = 0; k < V; k++) {
        h[k] = (float)(3 * duel_rng_normal(&rng));
        ref[k] = (float)(3 * duel_rng_normal(&rng));
    }
    assert_int_equal(duel_pilaf_mix_logits(h, ref, V, 0.0, plus, minus, NULL), 0);
    assert_memory_equal(plus, h, sizeof h);
    assert_memory_equal(minus, h, sizeof h);
}

/* With known logits, softmax(plus) is pi_theta^(1+beta) pi_ref^(-beta) normalised and
 * softmax(minus) is pi_theta^(1-beta) pi_ref^(beta) normalised, computed from the
 * probabilities (not the logits) in double. The logits carry different offsets, which must not
 * matter. */
static void test_pilaf_formula(void **state) {
    (void)state;
    enum { V = 64 };
    float h[V], ref[V], plus[V], minus[V];
    duel_rng rng;
    duel_rng_seed(&rng, 13);
    for (int k = 0; k < V; k++) {
        h[k] = (float)(2 * duel_rng_normal(&rng) + 7.0);
        ref[k] = (float)(2 * duel_rng_normal(&rng) - 3.0);
    }
    const double betas[] = {0.1, 0.5, 1.0, 2.0};
    for (size_t b = 0; b < 4; b++) {
        double beta = betas[b];
        assert_int_equal(duel_pilaf_mix_logits(h, ref, V, beta, plus, minus, NULL), 0);
        double hd[V], rd[V], pt[V], pr[V], want_p[V], want_m[V], x[V], got_p[V], got_m[V];
        for (int k = 0; k < V; k++) {
            hd[k] = h[k];
            rd[k] = ref[k];
        }
        softmax_d(hd, V, pt);
        softmax_d(rd, V, pr);
        double zp = 0, zm = 0;
        for (int k = 0; k < V; k++) {
            zp += want_p[k] = pow(pt[k], 1 + beta) * pow(pr[k], -beta);
            zm += want_m[k] = pow(pt[k], 1 - beta) * pow(pr[k], beta);
        }
        for (int k = 0; k < V; k++) {
            want_p[k] /= zp;
            want_m[k] /= zm;
        }
        for (int k = 0; k < V; k++) x[k] = plus[k];
        softmax_d(x, V, got_p);
        for (int k = 0; k < V; k++) x[k] = minus[k];
        softmax_d(x, V, got_m);
        float gp[V], gm[V];
        for (int k = 0; k < V; k++) {
            gp[k] = (float)got_p[k];
            gm[k] = (float)got_m[k];
        }
        /* float logits of magnitude ~10: relative rounding ~1e-6 per logit */
        assert_true(test_relative_error(gp, want_p, V) < 1e-5);
        assert_true(test_relative_error(gm, want_m, V) < 1e-5);
        /* and the logits themselves */
        for (int k = 0; k < V; k++) {
            assert_true(fabs(plus[k] - ((1 + beta) * hd[k] - beta * rd[k])) < 1e-5 * (1 + fabs(plus[k])));
            assert_true(fabs(minus[k] - ((1 - beta) * hd[k] + beta * rd[k])) < 1e-5 * (1 + fabs(minus[k])));
        }
    }
    /* Outputs may alias the policy's logits. */
    float copy[V];
    memcpy(copy, h, sizeof h);
    assert_int_equal(duel_pilaf_mix_logits(copy, ref, V, 0.5, copy, minus, NULL), 0);
    assert_int_equal(duel_pilaf_mix_logits(h, ref, V, 0.5, plus, NULL, NULL), 0);
    assert_memory_equal(copy, plus, sizeof plus);
}

static void test_pilaf_masks_and_errors(void **state) {
    (void)state;
    float h[4] = {1, -INFINITY, 2, 0.5f}, ref[4] = {0, 1, -INFINITY, 0.5f}, plus[4], minus[4];
    duel_error err;
    assert_int_equal(duel_pilaf_mix_logits(h, ref, 4, 0.1, plus, minus, &err), 0);
    assert_true(plus[1] == -INFINITY && minus[1] == -INFINITY);
    assert_true(plus[2] == -INFINITY && minus[2] == -INFINITY);
    assert_true(isfinite(plus[0]) && isfinite(minus[3]));
    float bad = h[0];
    h[0] = NAN;
    plus[3] = 42;
    assert_int_equal(duel_pilaf_mix_logits(h, ref, 4, 0.1, plus, minus, &err), DUEL_EINVAL);
    assert_string_equal(err.message, "pilaf: policy logit 0 is NaN");
    assert_true(plus[3] == 42); /* nothing written */
    h[0] = bad;
    ref[3] = INFINITY;
    assert_int_equal(duel_pilaf_mix_logits(h, ref, 4, 0.1, plus, minus, &err), DUEL_EINVAL);
    assert_string_equal(err.message, "pilaf: reference logit 3 is +inf");
    ref[3] = 0;
    assert_int_equal(duel_pilaf_mix_logits(h, ref, 4, -0.1, plus, minus, &err), DUEL_EINVAL);
    assert_int_equal(duel_pilaf_mix_logits(h, ref, 4, NAN, plus, minus, &err), DUEL_EINVAL);
    assert_int_equal(duel_pilaf_mix_logits(h, ref, 4, INFINITY, plus, minus, &err), DUEL_EINVAL);
    assert_int_equal(duel_pilaf_mix_logits(h, ref, 0, 0.1, plus, minus, &err), DUEL_EINVAL);
    /* Mode draws are fair. */
    duel_rng rng;
    duel_rng_seed(&rng, 14);
    int mixed = 0;
    for (int t = 0; t < 10000; t++) mixed += duel_pilaf_draw_mode(&rng) == DUEL_PILAF_MIXED;
    assert_true(abs(mixed - 5000) < 200);
}

static void test_arena(void **state) {
    (void)state;
    /* Arm 1: 3 candidates, 2 heads; means 1, 3, 3 -> 1 (tie to the lower). Arm 2: 2 candidates,
     * 4 heads; means 0.5, -1 -> 0. */
    float r1[3 * 2] = {0, 2, 3, 3, 6, 0};
    float r2[2 * 4] = {0, 1, 0, 1, -1, -1, -1, -1};
    int a = -1, b = -1;
    duel_error err;
    assert_int_equal(duel_select_arena(r1, 3, 2, r2, 2, 4, &a, &b, &err), 0);
    assert_int_equal(a, 1);
    assert_int_equal(b, 0);
    /* One candidate per arm is enough. */
    assert_int_equal(duel_select_arena(r2 + 4, 1, 4, r1, 1, 2, &a, &b, &err), 0);
    assert_int_equal(a, 0);
    assert_int_equal(b, 0);
    assert_int_equal(duel_select_arena(r1, 0, 2, r2, 2, 4, &a, &b, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "arena arm 1"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strategy_names),
        cmocka_unit_test(test_nonfinite_rejected),
        cmocka_unit_test(test_shape_rejected),
        cmocka_unit_test(test_ee_ts_unanimous),
        cmocka_unit_test(test_ee_ts_two_camps),
        cmocka_unit_test(test_ties_and_m2),
        cmocka_unit_test(test_ee_ts_is_a_sampler),
        cmocka_unit_test(test_seeded),
        cmocka_unit_test(test_bai_ts_variance),
        cmocka_unit_test(test_uncertainty),
        cmocka_unit_test(test_passive),
        cmocka_unit_test(test_bon),
        cmocka_unit_test(test_place),
        cmocka_unit_test(test_regret),
        cmocka_unit_test(test_pilaf_beta_zero),
        cmocka_unit_test(test_pilaf_formula),
        cmocka_unit_test(test_pilaf_masks_and_errors),
        cmocka_unit_test(test_arena),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
