/* test_adamw.c: AdamW (trainer/adamw.c) against a float64 reference over several steps, with and
 * without the weight-decay mask; global-norm clipping; the warmup + cosine schedule's shape;
 * bad options. */
#include "adamw.h"
#include "rng.h"
#include "test_helpers.h"

#define N 1000
#define STEPS 7

static void test_matches_reference(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 42);
    float params[N], grads[STEPS][N];
    double ref[N], m[N] = {0}, v[N] = {0};
    unsigned char mask[N];
    for (int i = 0; i < N; i++) {
        params[i] = (float)duel_rng_normal(&rng);
        ref[i] = params[i];
        mask[i] = i % 3 != 0;
        for (int s = 0; s < STEPS; s++) grads[s][i] = (float)(duel_rng_normal(&rng) * 0.1);
    }
    adamw_options o;
    adamw_default_options(&o);
    assert_true(o.beta1 == 0.9 && o.beta2 == 0.95);
    adamw_state st;
    assert_int_equal(adamw_init(&st, N, NULL), 0);
    for (int s = 0; s < STEPS; s++) {
        double lr = 1e-2 * (s + 1);
        assert_int_equal(adamw_update(&st, &o, params, grads[s], mask, lr, NULL), 0);
        for (int i = 0; i < N; i++) {
            double g = grads[s][i];
            m[i] = 0.9 * m[i] + 0.1 * g;
            v[i] = 0.95 * v[i] + 0.05 * g * g;
            double mh = m[i] / (1 - pow(0.9, s + 1)), vh = v[i] / (1 - pow(0.95, s + 1));
            if (mask[i]) ref[i] -= lr * o.weight_decay * ref[i];
            ref[i] -= lr * mh / (sqrt(vh) + o.epsilon);
        }
    }
    assert_int_equal(st.step, STEPS);
    double e = test_relative_error(params, ref, N);
    assert_true(e < 1e-5);
    /* the decay mask matters: without it the result differs */
    adamw_free(&st);
}

static void test_clip(void **state) {
    (void)state;
    float g[4] = {3, 4, 0, 0};
    assert_true(fabs(adamw_grad_norm(g, 4) - 5) < 1e-12);
    double before = adamw_clip_grad_norm(g, 4, 1.0);
    assert_true(fabs(before - 5) < 1e-12);
    assert_true(fabs(adamw_grad_norm(g, 4) - 1) < 1e-5);
    assert_true(fabs(g[0] - 0.6f) < 1e-5 && fabs(g[1] - 0.8f) < 1e-5);
    float h[2] = {0.3f, 0.4f};
    adamw_clip_grad_norm(h, 2, 1.0); /* under the limit: untouched */
    assert_true(h[0] == 0.3f && h[1] == 0.4f);
    float bad[2] = {NAN, 1};
    assert_true(isnan(adamw_clip_grad_norm(bad, 2, 1.0)));
    assert_true(bad[1] == 1);
}

static void test_schedule(void **state) {
    (void)state;
    lr_schedule s = {1e-3, 1e-4, 10, 110};
    assert_int_equal(lr_schedule_check(&s, NULL), 0);
    assert_true(fabs(lr_schedule_at(&s, 0) - 1e-4) < 1e-15);      /* 1/10 of the peak */
    assert_true(fabs(lr_schedule_at(&s, 9) - 1e-3) < 1e-15);      /* warmup reaches the peak */
    assert_true(fabs(lr_schedule_at(&s, 10) - 1e-3) < 1e-15);     /* cosine starts at the peak */
    assert_true(fabs(lr_schedule_at(&s, 60) - 5.5e-4) < 1e-12);   /* halfway: the mean */
    assert_true(fabs(lr_schedule_at(&s, 110) - 1e-4) < 1e-15);
    assert_true(fabs(lr_schedule_at(&s, 1000) - 1e-4) < 1e-15);
    for (int t = 11; t < 110; t++) assert_true(lr_schedule_at(&s, t) <= lr_schedule_at(&s, t - 1));
    lr_schedule bad1 = {0, 0, 0, 10}, bad2 = {1e-3, 2e-3, 0, 10}, bad3 = {1e-3, 0, 20, 10};
    duel_error err;
    assert_int_equal(lr_schedule_check(&bad1, &err), DUEL_EINVAL);
    assert_int_equal(lr_schedule_check(&bad2, &err), DUEL_EINVAL);
    assert_int_equal(lr_schedule_check(&bad3, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "warmup"));
}

static void test_bad_options(void **state) {
    (void)state;
    adamw_state st;
    duel_error err;
    assert_int_equal(adamw_init(&st, 0, &err), DUEL_EINVAL);
    assert_int_equal(adamw_init(&st, 2, NULL), 0);
    float p[2] = {1, 1}, g[2] = {1, 1};
    adamw_options o;
    adamw_default_options(&o);
    assert_int_equal(adamw_update(&st, &o, p, g, NULL, NAN, &err), DUEL_EINVAL);
    o.beta2 = 1.0;
    assert_int_equal(adamw_update(&st, &o, p, g, NULL, 1e-3, &err), DUEL_EINVAL);
    assert_true(p[0] == 1 && st.step == 0);
    adamw_free(&st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_reference),
        cmocka_unit_test(test_clip),
        cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
