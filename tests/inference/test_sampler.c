/* test_sampler.c: tests inference/sampler.c: parameter validation, greedy ties, NaN/inf logits,
 * log-probabilities against a float64 log-softmax, top-k/top-p draws against an obviously-correct
 * reference (sort everything, cut, draw) fed the same random stream, and empirical frequencies
 * against the expected distribution. */
#include "test_helpers.h"

#include "sampler.h"

static sampler_params params_of(float temperature, float top_p, int top_k) {
    sampler_params p = {.temperature = temperature, .top_p = top_p, .top_k = top_k};
    return p;
}

static void test_validate(void **state) {
    (void)state;
    duel_error err = {0};
    sampler_params ok = params_of(0.7f, 0.9f, 40);
    assert_int_equal(sampler_params_validate(&ok, &err), 0);
    ok = params_of(0.0f, 1.0f, 0);
    assert_int_equal(sampler_params_validate(&ok, &err), 0);

    struct {
        sampler_params p;
        const char *names;
    } bad[] = {
        {params_of(-0.1f, 1.0f, 0), "temperature"}, {params_of(NAN, 1.0f, 0), "temperature"},
        {params_of(1000.0f, 1.0f, 0), "temperature"}, {params_of(1.0f, 0.0f, 0), "top_p"},
        {params_of(1.0f, 1.5f, 0), "top_p"},          {params_of(1.0f, NAN, 0), "top_p"},
        {params_of(1.0f, 1.0f, -1), "top_k"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&err, 0, sizeof err);
        assert_int_equal(sampler_params_validate(&bad[i].p, &err), DUEL_EINVAL);
        assert_non_null(strstr(err.message, bad[i].names));
    }
    float logits[3] = {1, 2, 3};
    duel_rng rng;
    duel_rng_seed(&rng, 1);
    sampler_params p = params_of(1.0f, 2.0f, 0);
    assert_int_equal(sampler_sample(logits, 3, &p, &rng, NULL, &err), DUEL_EINVAL);
}

static void test_greedy_and_ties(void **state) {
    (void)state;
    duel_error err = {0};
    sampler_params p = params_of(0.0f, 1.0f, 0);
    float logits[6] = {0.5f, 3.0f, -1.0f, 3.0f, 2.0f, 3.0f};
    assert_int_equal(sampler_sample(logits, 6, &p, NULL, NULL, &err), 1);
    float masked[4] = {-INFINITY, -5.0f, -INFINITY, -5.0f};
    assert_int_equal(sampler_sample(masked, 4, &p, NULL, NULL, &err), 1);
    /* top-k 1 at any temperature is greedy, ties included. */
    duel_rng rng;
    duel_rng_seed(&rng, 7);
    sampler_params k1 = params_of(5.0f, 1.0f, 1);
    for (int i = 0; i < 200; i++)
        assert_int_equal(sampler_sample(logits, 6, &k1, &rng, NULL, &err), 1);
    /* A tiny top-p keeps exactly one token: the best, ties to the lower id. */
    sampler_params p1 = params_of(1.0f, 1e-6f, 0);
    for (int i = 0; i < 200; i++)
        assert_int_equal(sampler_sample(logits, 6, &p1, &rng, NULL, &err), 1);
}

static void test_bad_logits(void **state) {
    (void)state;
    duel_error err = {0};
    duel_rng rng;
    duel_rng_seed(&rng, 3);
    sampler_params greedy = params_of(0.0f, 1.0f, 0), hot = params_of(0.8f, 0.9f, 5);
    float with_nan[4] = {1.0f, NAN, 2.0f, 0.0f};
    assert_int_equal(sampler_sample(with_nan, 4, &greedy, &rng, NULL, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "NaN"));
    assert_int_equal(sampler_sample(with_nan, 4, &hot, &rng, NULL, &err), DUEL_EFORMAT);
    float with_inf[3] = {1.0f, INFINITY, 2.0f};
    assert_int_equal(sampler_sample(with_inf, 3, &hot, &rng, NULL, &err), DUEL_EFORMAT);
    float all_masked[3] = {-INFINITY, -INFINITY, -INFINITY};
    assert_int_equal(sampler_sample(all_masked, 3, &hot, &rng, NULL, &err), DUEL_EFORMAT);
    assert_int_equal(sampler_sample(with_inf, 0, &hot, &rng, NULL, &err), DUEL_EINVAL);
    /* Sampling needs an rng; greedy does not. */
    float fine[2] = {0.0f, 1.0f};
    assert_int_equal(sampler_sample(fine, 2, &hot, NULL, NULL, &err), DUEL_EINVAL);
}

static void test_logprob(void **state) {
    (void)state;
    enum { V = 1000 };
    float logits[V];
    double ref[V];
    duel_rng rng;
    duel_rng_seed(&rng, 11);
    for (int i = 0; i < V; i++) logits[i] = (float)(duel_rng_normal(&rng) * 3.0);
    logits[17] = -INFINITY;
    double max = -INFINITY, total = 0;
    for (int i = 0; i < V; i++) max = fmax(max, logits[i]);
    for (int i = 0; i < V; i++) total += exp((double)logits[i] - max);
    for (int i = 0; i < V; i++) ref[i] = (double)logits[i] - max - log(total);

    duel_error err = {0};
    sampler_params configs[] = {params_of(0.0f, 1.0f, 0), params_of(0.7f, 0.9f, 0),
                                params_of(1.3f, 1.0f, 20), params_of(2.0f, 1.0f, 0)};
    float got[64];
    double want[64];
    for (size_t c = 0; c < sizeof configs / sizeof configs[0]; c++) {
        for (int i = 0; i < 64; i++) {
            float lp = NAN;
            int32_t id = sampler_sample(logits, V, &configs[c], &rng, &lp, &err);
            assert_true(id >= 0 && id < V);
            assert_int_not_equal(id, 17);
            got[i] = lp;
            want[i] = ref[id];
        }
        assert_true(test_relative_error(got, want, 64) < 1e-5);
    }
}

/* The obviously-correct reference: scale, sort the whole vocabulary by (logit desc, id asc), cut
 * to top-k, cut to the smallest prefix reaching top_p, draw one uniform. */
typedef struct ref_cand {
    float logit;
    int32_t id;
} ref_cand;

static int ref_compare(const void *pa, const void *pb) {
    const ref_cand *a = pa, *b = pb;
    if (a->logit != b->logit) return a->logit > b->logit ? -1 : 1;
    return a->id < b->id ? -1 : 1;
}

static int32_t reference_sample(const float *logits, int v, sampler_params p, duel_rng *rng) {
    ref_cand *c = malloc((size_t)v * sizeof *c);
    double *w = malloc((size_t)v * sizeof *w);
    assert_non_null(c);
    assert_non_null(w);
    float inv_t = 1.0f / p.temperature;
    for (int i = 0; i < v; i++) c[i] = (ref_cand){logits[i] * inv_t, i};
    qsort(c, (size_t)v, sizeof *c, ref_compare);
    int n = (p.top_k > 0 && p.top_k < v) ? p.top_k : v;
    double total = 0;
    for (int i = 0; i < n; i++) total += (w[i] = exp((double)c[i].logit - (double)c[0].logit));
    int keep = n;
    if (p.top_p < 1.0f) {
        double acc = 0;
        for (int i = 0; i < n; i++) {
            acc += w[i];
            if (acc >= (double)p.top_p * total) {
                keep = i + 1;
                break;
            }
        }
        total = 0;
        for (int i = 0; i < keep; i++) total += w[i];
    }
    double u = duel_rng_uniform(rng) * total, acc = 0;
    int32_t id = c[keep - 1].id;
    for (int i = 0; i < keep; i++) {
        acc += w[i];
        if (u < acc) {
            id = c[i].id;
            break;
        }
    }
    free(c);
    free(w);
    return id;
}

static void test_matches_reference(void **state) {
    (void)state;
    enum { V = 5000 };
    float *logits = malloc(V * sizeof *logits);
    assert_non_null(logits);
    duel_rng data;
    duel_rng_seed(&data, 2024);
    duel_error err = {0};
    /* Shapes: flat-ish, peaked (exercises the pre-selection), and many ties. */
    for (int shape = 0; shape < 3; shape++) {
        for (int i = 0; i < V; i++) {
            double g = duel_rng_normal(&data);
            logits[i] = shape == 0   ? (float)g
                        : shape == 1 ? (float)(g * 8.0)
                                     : (float)(int)(g * 2.0);
        }
        sampler_params configs[] = {params_of(1.0f, 0.9f, 0),  params_of(0.6f, 0.5f, 0),
                                    params_of(1.5f, 0.99f, 0), params_of(1.0f, 1.0f, 50),
                                    params_of(0.8f, 0.7f, 40), params_of(2.0f, 0.95f, 1000)};
        for (size_t c = 0; c < sizeof configs / sizeof configs[0]; c++) {
            duel_rng a, b;
            duel_rng_seed(&a, 100 + c);
            duel_rng_seed(&b, 100 + c);
            for (int draw = 0; draw < 50; draw++) {
                int32_t got = sampler_sample(logits, V, &configs[c], &a, NULL, &err);
                int32_t want = reference_sample(logits, V, configs[c], &b);
                if (got != want)
                    fail_msg("shape %d config %zu draw %d: got %d want %d", shape, c, draw, got,
                             want);
            }
        }
    }
    free(logits);
}

/* Empirical frequencies over many draws against the expected probabilities. */
static void check_frequencies(const float *logits, int v, sampler_params p, const double *expect,
                              int draws, uint64_t seed) {
    int counts[16] = {0};
    assert_true(v <= 16);
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    duel_error err = {0};
    for (int i = 0; i < draws; i++) {
        int32_t id = sampler_sample(logits, v, &p, &rng, NULL, &err);
        assert_true(id >= 0 && id < v);
        counts[id]++;
    }
    for (int i = 0; i < v; i++) {
        double f = (double)counts[i] / draws;
        /* 5 standard deviations of a binomial proportion, plus exact zeros where expected. */
        double sd = sqrt(expect[i] * (1 - expect[i]) / draws);
        if (expect[i] == 0.0) assert_int_equal(counts[i], 0);
        else if (fabs(f - expect[i]) > 5 * sd + 1e-9)
            fail_msg("token %d: frequency %.4f, expected %.4f", i, f, expect[i]);
    }
}

static void test_distributions(void **state) {
    (void)state;
    /* probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1 */
    float logits[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    const int n = 40000;
    double plain[4] = {0.5, 0.3, 0.15, 0.05};
    check_frequencies(logits, 4, params_of(1.0f, 1.0f, 0), plain, n, 1);
    double nucleus[4] = {0.5 / 0.8, 0.3 / 0.8, 0, 0}; /* top_p 0.75 keeps the first two */
    check_frequencies(logits, 4, params_of(1.0f, 0.75f, 0), nucleus, n, 2);
    double top3[4] = {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0};
    check_frequencies(logits, 4, params_of(1.0f, 1.0f, 3), top3, n, 3);
    /* top-k then top-p over the renormalised top-k: 0.5/0.95 = 0.526 >= 0.5 keeps one. */
    double one[4] = {1, 0, 0, 0};
    check_frequencies(logits, 4, params_of(1.0f, 0.5f, 3), one, 2000, 4);
    /* Temperature 2: p_i proportional to sqrt(p_i). */
    double hot[4], total = 0;
    for (int i = 0; i < 4; i++) total += (hot[i] = sqrt(plain[i]));
    for (int i = 0; i < 4; i++) hot[i] /= total;
    check_frequencies(logits, 4, params_of(2.0f, 1.0f, 0), hot, n, 5);
    /* Masked tokens are never drawn. */
    float masked[4] = {0.0f, -INFINITY, 0.0f, -INFINITY};
    double half[4] = {0.5, 0, 0.5, 0};
    check_frequencies(masked, 4, params_of(1.0f, 1.0f, 0), half, n, 6);
    check_frequencies(masked, 4, params_of(1.0f, 0.9f, 0), half, n, 7);
}

static void test_seed_determinism(void **state) {
    (void)state;
    enum { V = 300, N = 200 };
    float logits[V];
    duel_rng data;
    duel_rng_seed(&data, 5);
    for (int i = 0; i < V; i++) logits[i] = (float)duel_rng_normal(&data);
    sampler_params p = params_of(0.9f, 0.95f, 0);
    int32_t first[N], second[N], other[N];
    duel_error err = {0};
    duel_rng a, b, c;
    duel_rng_seed(&a, 42);
    duel_rng_seed(&b, 42);
    duel_rng_seed(&c, 43);
    for (int i = 0; i < N; i++) {
        first[i] = sampler_sample(logits, V, &p, &a, NULL, &err);
        second[i] = sampler_sample(logits, V, &p, &b, NULL, &err);
        other[i] = sampler_sample(logits, V, &p, &c, NULL, &err);
    }
    assert_memory_equal(first, second, sizeof first);
    assert_memory_not_equal(first, other, sizeof first);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validate),          cmocka_unit_test(test_greedy_and_ties),
        cmocka_unit_test(test_bad_logits),        cmocka_unit_test(test_logprob),
        cmocka_unit_test(test_matches_reference), cmocka_unit_test(test_distributions),
        cmocka_unit_test(test_seed_determinism),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
