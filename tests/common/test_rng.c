/* test_rng.c: the seeded generator is reproducible and roughly uniform (common/rng.c). */
#include "rng.h"
#include "test_helpers.h"

static void test_same_seed_same_stream(void **state) {
    (void)state;
    duel_rng a, b, c;
    duel_rng_seed(&a, 42);
    duel_rng_seed(&b, 42);
    duel_rng_seed(&c, 43);
    int differ = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = duel_rng_next_u64(&a);
        assert_int_equal(x, duel_rng_next_u64(&b));
        differ += x != duel_rng_next_u64(&c);
    }
    assert_true(differ > 990);
}

static void test_uniform_moments_and_bounds(void **state) {
    (void)state;
    duel_rng r;
    duel_rng_seed(&r, 7);
    const int n = 200000;
    double sum = 0, sumsq = 0;
    int counts[10] = {0};
    for (int i = 0; i < n; i++) {
        double u = duel_rng_uniform(&r);
        assert_true(u >= 0.0 && u < 1.0);
        sum += u;
        sumsq += u * u;
        counts[duel_rng_below(&r, 10)]++;
    }
    assert_true(fabs(sum / n - 0.5) < 0.005);
    assert_true(fabs(sumsq / n - 1.0 / 3.0) < 0.005);
    /* chi-square with 9 degrees of freedom; 27.9 is the 0.999 quantile */
    double chi = 0;
    for (int k = 0; k < 10; k++) chi += pow(counts[k] - n / 10.0, 2) / (n / 10.0);
    assert_true(chi < 27.9);
}

static void test_normal_moments(void **state) {
    (void)state;
    duel_rng r;
    duel_rng_seed(&r, 9);
    const int n = 200000;
    double sum = 0, sumsq = 0;
    for (int i = 0; i < n; i++) {
        double x = duel_rng_normal(&r);
        sum += x;
        sumsq += x * x;
    }
    assert_true(fabs(sum / n) < 0.01);
    assert_true(fabs(sumsq / n - 1.0) < 0.02);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_seed_same_stream),
        cmocka_unit_test(test_uniform_moments_and_bounds),
        cmocka_unit_test(test_normal_moments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
