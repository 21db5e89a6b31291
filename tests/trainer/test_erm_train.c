/* test_erm_train.c: the ERM trainer (trainer/erm_train.h): the analytic gradient of the
 * objective against central finite differences of an independent float64 forward, the FIFO
 * buffer and min_pairs, determinism, and learning a hidden linear reward from labelled pairs. */
#include "test_helpers.h"

#include "erm.h"
#include "erm_train.h"
#include "rng.h"

/* Independent float64 forward of sum_e L_e (erm_train.h) over parameters theta (double). */
static double ref_objective(const erm_config *c, const double *theta, const double *theta0,
                            const float *chosen, const float *rejected, int B, double reg_scale) {
    const int E = c->num_heads, H = c->hidden, D = c->d_feat;
    const size_t w1 = 0, b1 = w1 + (size_t)E * H * D, w2 = b1 + (size_t)E * H,
                 b2 = w2 + (size_t)E * H * H, w3 = b2 + (size_t)E * H, b3 = w3 + (size_t)E * H;
    const size_t total = b3 + E, per_head = total / E;
    double obj = 0;
    double h1[64], h2[64];
    for (int e = 0; e < E; e++) {
        double data = 0;
        for (int i = 0; i < B; i++) {
            double r[2];
            for (int side = 0; side < 2; side++) {
                const float *x = (side == 0 ? chosen : rejected) + (size_t)i * D;
                for (int j = 0; j < H; j++) {
                    double a = theta[b1 + (size_t)e * H + j];
                    for (int k = 0; k < D; k++)
                        a += theta[w1 + ((size_t)e * H + j) * D + k] * (double)x[k];
                    h1[j] = a > 0 ? a : 0;
                }
                for (int j = 0; j < H; j++) {
                    double a = theta[b2 + (size_t)e * H + j];
                    for (int k = 0; k < H; k++) a += theta[w2 + ((size_t)e * H + j) * H + k] * h1[k];
                    h2[j] = a > 0 ? a : 0;
                }
                double out = theta[b3 + e];
                for (int j = 0; j < H; j++) out += theta[w3 + (size_t)e * H + j] * h2[j];
                r[side] = out;
            }
            double delta = r[0] - r[1];
            data += log1p(exp(-delta));
        }
        double reg = 0;
        /* Head e's parameters: every block's slice. */
        const size_t starts[6] = {w1 + (size_t)e * H * D, b1 + (size_t)e * H, w2 + (size_t)e * H * H,
                                  b2 + (size_t)e * H, w3 + (size_t)e * H, b3 + e};
        const size_t sizes[6] = {(size_t)H * D, (size_t)H, (size_t)H * H, (size_t)H, (size_t)H, 1};
        for (int b = 0; b < 6; b++)
            for (size_t k = 0; k < sizes[b]; k++) {
                double d = theta[starts[b] + k] - theta0[starts[b] + k];
                reg += d * d;
            }
        obj += data / B + reg_scale * reg / (double)per_head;
    }
    return obj;
}

static void fill_normal(duel_rng *rng, float *x, size_t n, double scale) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * duel_rng_normal(rng));
}

/* How check_gradient's pairs relate: independent rows; every pair sharing its first half (the
 * prompt's state: layer 1 takes it once per pair); all but one pair sharing it (the general
 * path again). */
typedef enum pair_halves { HALVES_INDEPENDENT, HALVES_SHARED, HALVES_ALL_BUT_ONE } pair_halves;

static void check_gradient(pair_halves halves) {
    erm_config c = {3, 6, 8};
    duel_rng rng;
    duel_rng_seed(&rng, 7);
    erm *m;
    assert_int_equal(erm_create(&c, &rng, &m, NULL), 0);
    /* Move theta away from theta0 and make biases non-zero so every term is exercised. */
    for (size_t k = 0; k < m->num_params; k++) m->params.memory[k] += (float)(0.3 * duel_rng_normal(&rng));
    const int B = 5;
    float chosen[5 * 6], rejected[5 * 6];
    fill_normal(&rng, chosen, sizeof chosen / sizeof *chosen, 1.0);
    fill_normal(&rng, rejected, sizeof rejected / sizeof *rejected, 1.0);
    for (int i = 0; halves != HALVES_INDEPENDENT && i < B; i++)
        if (!(halves == HALVES_ALL_BUT_ONE && i == 3)) memcpy(rejected + i * 6, chosen + i * 6, 3 * sizeof(float));
    const double reg_scale = 0.5 * B / 37.0;
    float *grad = malloc(m->num_params * sizeof(float));
    double per_head[3];
    assert_int_equal(erm_train_loss_grad(m, chosen, rejected, B, reg_scale, grad, per_head, NULL), 0);
    double *theta = malloc(m->num_params * sizeof(double));
    double *theta0 = malloc(m->num_params * sizeof(double));
    double *fd = malloc(m->num_params * sizeof(double));
    for (size_t k = 0; k < m->num_params; k++) {
        theta[k] = m->params.memory[k];
        theta0[k] = m->initial.memory[k];
    }
    double obj = ref_objective(&c, theta, theta0, chosen, rejected, B, reg_scale);
    assert_true(fabs(obj - (per_head[0] + per_head[1] + per_head[2])) < 1e-5 * fabs(obj));
    const double h = 1e-6;
    for (size_t k = 0; k < m->num_params; k++) {
        double saved = theta[k];
        theta[k] = saved + h;
        double up = ref_objective(&c, theta, theta0, chosen, rejected, B, reg_scale);
        theta[k] = saved - h;
        double down = ref_objective(&c, theta, theta0, chosen, rejected, B, reg_scale);
        theta[k] = saved;
        fd[k] = (up - down) / (2 * h);
    }
    double rel = test_relative_error(grad, fd, m->num_params);
    if (!(rel < 1e-5)) fail_msg("halves %d: gradient relative error %g", (int)halves, rel);
    /* Bad arguments are errors, not crashes. */
    duel_error err;
    assert_int_equal(erm_train_loss_grad(m, chosen, rejected, 0, reg_scale, grad, NULL, &err), DUEL_EINVAL);
    assert_int_equal(erm_train_loss_grad(m, chosen, rejected, B, NAN, grad, NULL, &err), DUEL_EINVAL);
    free(grad);
    free(theta);
    free(theta0);
    free(fd);
    erm_free(m);
}

static void test_gradient_matches_finite_differences(void **state) {
    (void)state;
    check_gradient(HALVES_INDEPENDENT);
    check_gradient(HALVES_SHARED);
    check_gradient(HALVES_ALL_BUT_ONE);
}

static void test_buffer_fifo_and_min_pairs(void **state) {
    (void)state;
    erm_config c = {2, 3, 4};
    duel_rng rng;
    duel_rng_seed(&rng, 3);
    erm *m;
    assert_int_equal(erm_create(&c, &rng, &m, NULL), 0);
    erm_train_options o;
    erm_train_default_options(&o);
    o.buffer_capacity = 4;
    o.min_pairs = 3;
    erm_trainer *t;
    assert_int_equal(erm_trainer_create(m, &o, 1, &t, NULL), 0);
    float a[6 * 3], b[6 * 3];
    for (int i = 0; i < 18; i++) {
        a[i] = (float)i;
        b[i] = (float)-i;
    }
    float *before = malloc(m->num_params * sizeof(float));
    memcpy(before, m->params.memory, m->num_params * sizeof(float));
    erm_train_stats s;
    assert_int_equal(erm_trainer_add_pairs(t, a, b, 2, NULL), 0);
    assert_int_equal(erm_trainer_update(t, &s, NULL), 0);
    assert_int_equal(s.steps, 0); /* 2 < min_pairs */
    assert_memory_equal(before, m->params.memory, m->num_params * sizeof(float));
    assert_int_equal(erm_trainer_add_pairs(t, a + 6, b + 6, 4, NULL), 0);
    assert_int_equal(erm_trainer_buffer_count(t), 4);
    assert_int_equal((int)erm_trainer_pairs_seen(t), 6);
    const float *pc, *pr;
    erm_trainer_buffer_pair(t, 0, &pc, &pr); /* oldest kept: pair 2 */
    assert_true(pc[0] == 6.0f && pr[0] == -6.0f);
    erm_trainer_buffer_pair(t, 3, &pc, &pr);
    assert_true(pc[0] == 15.0f && pr[2] == -17.0f);
    assert_int_equal(erm_trainer_update(t, &s, NULL), 0);
    assert_int_equal(s.steps, 5);
    assert_int_equal(s.minibatch, 4);
    assert_true(memcmp(before, m->params.memory, m->num_params * sizeof(float)) != 0);
    float bad[3] = {0, NAN, 0};
    duel_error err;
    assert_int_equal(erm_trainer_add_pairs(t, bad, a, 1, &err), DUEL_EINVAL);
    assert_int_equal((int)erm_trainer_pairs_seen(t), 6);
    o.min_pairs = 0;
    erm_trainer *t2;
    assert_int_equal(erm_trainer_create(m, &o, 1, &t2, &err), DUEL_EINVAL);
    free(before);
    erm_trainer_free(t);
    erm_free(m);
}

/* Pairs labelled by a hidden linear reward w*.phi: chosen is the better of two random features. */
static void make_pairs(duel_rng *rng, const float *w, int D, int n, float *chosen, float *rejected) {
    float *x = malloc((size_t)2 * D * sizeof(float));
    for (int i = 0; i < n; i++) {
        fill_normal(rng, x, (size_t)2 * D, 1.0);
        double ra = 0, rb = 0;
        for (int k = 0; k < D; k++) {
            ra += w[k] * x[k];
            rb += w[k] * x[D + k];
        }
        const float *c = ra >= rb ? x : x + D, *r = ra >= rb ? x + D : x;
        memcpy(chosen + (size_t)i * D, c, (size_t)D * sizeof(float));
        memcpy(rejected + (size_t)i * D, r, (size_t)D * sizeof(float));
    }
    free(x);
}

static void train_run(uint64_t seed, erm **out_model, double *acc_before, double *acc_after) {
    const int D = 16, n_train = 480, n_test = 400, batch = 8;
    erm_config c = {4, D, 32};
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    float w[16];
    fill_normal(&rng, w, D, 1.0);
    float *tc = malloc((size_t)n_train * D * sizeof(float)), *tr = malloc((size_t)n_train * D * sizeof(float));
    float *vc = malloc((size_t)n_test * D * sizeof(float)), *vr = malloc((size_t)n_test * D * sizeof(float));
    make_pairs(&rng, w, D, n_train, tc, tr);
    make_pairs(&rng, w, D, n_test, vc, vr);
    erm *m;
    assert_int_equal(erm_create(&c, &rng, &m, NULL), 0);
    erm_train_options o;
    erm_train_default_options(&o);
    erm_trainer *t;
    assert_int_equal(erm_trainer_create(m, &o, seed + 1, &t, NULL), 0);
    assert_int_equal(erm_train_accuracy(m, vc, vr, n_test, acc_before, NULL), 0);
    for (int i = 0; i < n_train; i += batch) {
        assert_int_equal(erm_trainer_add_pairs(t, tc + (size_t)i * D, tr + (size_t)i * D, batch, NULL), 0);
        erm_train_stats s;
        assert_int_equal(erm_trainer_update(t, &s, NULL), 0);
        assert_true(isfinite(s.loss));
    }
    assert_int_equal(erm_train_accuracy(m, vc, vr, n_test, acc_after, NULL), 0);
    erm_trainer_free(t);
    free(tc);
    free(tr);
    free(vc);
    free(vr);
    *out_model = m;
}

static void test_learns_hidden_linear_reward(void **state) {
    (void)state;
    erm *m1, *m2;
    double before, after, before2, after2;
    train_run(11, &m1, &before, &after);
    fprintf(stderr, "held-out accuracy %.3f -> %.3f\n", before, after);
    assert_true(after > 0.85);
    assert_true(after > before + 0.2);
    /* Same seed, same pairs: bit-identical parameters. */
    train_run(11, &m2, &before2, &after2);
    assert_memory_equal(m1->params.memory, m2->params.memory, m1->num_params * sizeof(float));
    erm_free(m1);
    erm_free(m2);
}

/* erm_train_accuracy scores pairs in chunks; it counts what scoring each pair alone counts
 * (ensemble-mean reward of chosen above rejected), across a chunk boundary. */
static void test_accuracy_matches_pair_by_pair(void **state) {
    (void)state;
    erm_config c = {5, 24, 16};
    duel_rng rng;
    duel_rng_seed(&rng, 31);
    erm *m = NULL;
    assert_int_equal(erm_create(&c, &rng, &m, NULL), 0);
    const int n = 300, D = c.d_feat, E = c.num_heads;
    float *chosen = malloc((size_t)n * D * sizeof(float)), *rejected = malloc((size_t)n * D * sizeof(float));
    assert_non_null(chosen);
    assert_non_null(rejected);
    for (int i = 0; i < n * D; i++) {
        chosen[i] = (float)duel_rng_normal(&rng);
        rejected[i] = (float)duel_rng_normal(&rng);
    }
    int right = 0;
    for (int i = 0; i < n; i++) {
        float r[2][8];
        assert_int_equal(erm_score(m, chosen + (size_t)i * D, 1, r[0], NULL), 0);
        assert_int_equal(erm_score(m, rejected + (size_t)i * D, 1, r[1], NULL), 0);
        double a = 0, b = 0;
        for (int e = 0; e < E; e++) a += r[0][e], b += r[1][e];
        right += a > b;
    }
    assert_true(right > n / 5 && right < n * 4 / 5); /* not all one way: the test can tell */
    double acc = -1;
    assert_int_equal(erm_train_accuracy(m, chosen, rejected, n, &acc, NULL), 0);
    assert_true(acc == (double)right / n);
    assert_int_equal(erm_train_accuracy(m, chosen, rejected, 7, &acc, NULL), 0);
    assert_true(acc >= 0 && acc <= 1);
    free(chosen);
    free(rejected);
    erm_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradient_matches_finite_differences),
        cmocka_unit_test(test_buffer_fifo_and_min_pairs),
        cmocka_unit_test(test_learns_hidden_linear_reward),
        cmocka_unit_test(test_accuracy_matches_pair_by_pair),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
