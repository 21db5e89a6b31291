/* test_dap_loss.c: DPO, IPO, SLiC, SimPO and XPO's term (trainer/dap_loss.c) against
 * hand-computed values, their gradients against central differences, the DPO direction check,
 * the edge cases (equal log-probs, hinge kink, masks all zero, empty responses) and bad input. */
#include "dap_loss.h"
#include "rng.h"
#include "test_helpers.h"

#define HAND_TOL 1e-9

typedef struct pairs {
    double pc[4], pr[4], nc[4], nr[4], rc[4], rr[4], ys[4], mask[4];
    int n;
    bool use_mask, use_ys;
} pairs;

static dap_loss_batch as_batch(pairs *p) {
    dap_loss_batch b = {p->n, p->pc, p->pr, p->nc, p->nr, p->rc, p->rr,
                        p->use_ys ? p->ys : NULL, p->use_mask ? p->mask : NULL};
    return b;
}

static dap_loss_result compute(const dap_loss_options *o, pairs *p, double *gc, double *gr,
                               double *gy) {
    dap_loss_batch b = as_batch(p);
    dap_loss_grads g = {gc, gr, gy};
    dap_loss_result r;
    duel_error err = {0};
    int rc = dap_loss_compute(o, &b, &r, &g, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    return r;
}

static void test_dpo_hand_values(void **state) {
    (void)state;
    dap_loss_options o;
    dap_loss_default_options(DAP_LOSS_DPO, &o);
    assert_float_equal(o.beta, 0.1, 0);
    /* pair 0: Delta = (-10 + 12) - (-11 + 11) = 2, loss = log(1 + e^-0.2)
     * pair 1: Delta = (-5 + 3) - (-4 + 4) = -2, loss = log(1 + e^0.2) */
    pairs p = {.pc = {-10, -5}, .pr = {-12, -3}, .nc = {3, 2}, .nr = {4, 2},
               .rc = {-11, -4}, .rr = {-11, -4}, .n = 2};
    double gc[2], gr[2];
    dap_loss_result r = compute(&o, &p, gc, gr, NULL);
    const double l0 = 0.5981388693815918, l1 = 0.7981388693815918;
    assert_float_equal(r.loss, (l0 + l1) / 2, HAND_TOL);
    /* dloss/dS+ = -beta sigmoid(-beta Delta) / pairs: sigmoid(-0.2) = 0.45016600268752216 */
    assert_float_equal(gc[0], -0.1 * 0.45016600268752216 / 2, HAND_TOL);
    assert_float_equal(gr[0], +0.1 * 0.45016600268752216 / 2, HAND_TOL);
    assert_float_equal(gc[1], -0.1 * 0.54983399731247784 / 2, HAND_TOL);
    assert_float_equal(gr[1], +0.1 * 0.54983399731247784 / 2, HAND_TOL);
    assert_float_equal(r.mean_margin, 0, HAND_TOL);
    assert_float_equal(r.accuracy, 0.5, 0);
    assert_int_equal(r.pairs_used, 2);
}

/* Raising log pi(y+) lowers the DPO loss and lowering log pi(y-) does too; the gradient says so. */
static void test_dpo_direction(void **state) {
    (void)state;
    dap_loss_options o;
    dap_loss_default_options(DAP_LOSS_DPO, &o);
    pairs p = {.pc = {-20}, .pr = {-18}, .nc = {5}, .nr = {5}, .rc = {-19}, .rr = {-19}, .n = 1};
    double gc[1], gr[1];
    double before = compute(&o, &p, gc, gr, NULL).loss;
    assert_true(gc[0] < 0 && gr[0] > 0);
    p.pc[0] += 0.5;
    double after_chosen = compute(&o, &p, NULL, NULL, NULL).loss;
    assert_true(after_chosen < before);
    p.pr[0] -= 0.5;
    assert_true(compute(&o, &p, NULL, NULL, NULL).loss < after_chosen);
    /* the loss only sees the difference: shifting all four by a constant changes nothing */
    pairs q = p;
    for (int i = 0; i < 1; i++) q.pc[i] += 3, q.pr[i] += 3, q.rc[i] += 3, q.rr[i] += 3;
    assert_float_equal(compute(&o, &q, NULL, NULL, NULL).loss,
                       compute(&o, &p, NULL, NULL, NULL).loss, 1e-12);
}

static void test_ipo_hand_values_and_equal_logprobs(void **state) {
    (void)state;
    dap_loss_options o;
    dap_loss_default_options(DAP_LOSS_IPO, &o);
    /* means: policy (-8/4, -9/3) = (-2, -3), reference (-6/4, -7.5/3) = (-1.5, -2.5):
     * Delta_avg = 1 - 1 = 0, loss = (0 - 1/(2*0.1))^2 = 25, dloss/dx = -10 */
    pairs p = {.pc = {-8}, .pr = {-9}, .nc = {4}, .nr = {3}, .rc = {-6}, .rr = {-7.5}, .n = 1};
    double gc[1], gr[1];
    dap_loss_result r = compute(&o, &p, gc, gr, NULL);
    assert_float_equal(r.loss, 25.0, HAND_TOL);
    assert_float_equal(gc[0], -10.0 / 4, HAND_TOL);
    assert_float_equal(gr[0], 10.0 / 3, HAND_TOL);
    /* policy == reference exactly: the same 25, pulling chosen up */
    pairs e = {.pc = {-7}, .pr = {-7}, .nc = {2}, .nr = {2}, .rc = {-7}, .rr = {-7}, .n = 1};
    r = compute(&o, &e, gc, gr, NULL);
    assert_float_equal(r.loss, 25.0, HAND_TOL);
    assert_true(gc[0] < 0 && gr[0] > 0);
    /* at the target margin 1/(2 beta) = 5 the loss and gradient vanish */
    pairs t = {.pc = {-2}, .pr = {-12}, .nc = {2}, .nr = {2}, .rc = {-4}, .rr = {-4}, .n = 1};
    r = compute(&o, &t, gc, gr, NULL);
    assert_float_equal(r.loss, 0, HAND_TOL);
    assert_float_equal(gc[0], 0, HAND_TOL);
}

static void test_slic_hand_values_and_kink(void **state) {
    (void)state;
    dap_loss_options o;
    dap_loss_default_options(DAP_LOSS_SLIC, &o);
    assert_float_equal(o.beta, 0.2, 0);
    double gc[1], gr[1];
    /* Delta = 2: loss 1 - 0.4 = 0.6, gradient -beta on chosen */
    pairs p = {.pc = {-10}, .pr = {-12}, .nc = {3}, .nr = {3}, .rc = {-11}, .rr = {-11}, .n = 1};
    dap_loss_result r = compute(&o, &p, gc, gr, NULL);
    assert_float_equal(r.loss, 0.6, HAND_TOL);
    assert_float_equal(gc[0], -0.2, HAND_TOL);
    assert_float_equal(gr[0], 0.2, HAND_TOL);
    /* equal log-probs: loss 1 */
    pairs e = {.pc = {-3}, .pr = {-3}, .nc = {1}, .nr = {1}, .rc = {-3}, .rr = {-3}, .n = 1};
    assert_float_equal(compute(&o, &e, gc, gr, NULL).loss, 1.0, HAND_TOL);
    /* exactly at the kink (beta Delta = 1) and past it: zero loss, zero gradient */
    pairs k = {.pc = {-1}, .pr = {-6}, .nc = {1}, .nr = {1}, .rc = {-2}, .rr = {-2}, .n = 1};
    r = compute(&o, &k, gc, gr, NULL);
    assert_float_equal(r.loss, 0, HAND_TOL);
    assert_true(gc[0] == 0 && gr[0] == 0);
    k.pr[0] = -20;
    r = compute(&o, &k, gc, gr, NULL);
    assert_true(r.loss == 0 && gc[0] == 0 && gr[0] == 0);
}

static void test_simpo_hand_values(void **state) {
    (void)state;
    dap_loss_options o;
    dap_loss_default_options(DAP_LOSS_SIMPO, &o);
    assert_float_equal(o.beta, 2.0, 0);
    assert_float_equal(o.simpo_gamma, 1.0, 0);
    /* means -6/3 = -2 and -10/4 = -2.5: z = 2 * 0.5 - 1 = 0, loss log 2, dloss/dx = -2 * 0.5 */
    pairs p = {.pc = {-6}, .pr = {-10}, .nc = {3}, .nr = {4}, .n = 1};
    dap_loss_batch b = as_batch(&p);
    b.reference_chosen = b.reference_rejected = NULL; /* SimPO has no reference */
    double gc[1], gr[1];
    dap_loss_grads g = {gc, gr, NULL};
    dap_loss_result r;
    assert_int_equal(dap_loss_compute(&o, &b, &r, &g, NULL), 0);
    assert_float_equal(r.loss, 0.6931471805599453, HAND_TOL);
    assert_float_equal(gc[0], -1.0 / 3, HAND_TOL);
    assert_float_equal(gr[0], 1.0 / 4, HAND_TOL);
    /* equal means: z = -gamma, loss log(1 + e) */
    pairs e = {.pc = {-4}, .pr = {-6}, .nc = {2}, .nr = {3}, .n = 1};
    b = as_batch(&e);
    b.reference_chosen = b.reference_rejected = NULL;
    assert_int_equal(dap_loss_compute(&o, &b, &r, &g, NULL), 0);
    assert_float_equal(r.loss, 1.3132616875182228, HAND_TOL);
}

static void test_xpo_term(void **state) {
    (void)state;
    dap_loss_options o;
    dap_loss_default_options(DAP_LOSS_DPO, &o);
    o.xpo_alpha = 5e-6;
    pairs p = {.pc = {-10, -5}, .pr = {-12, -3}, .nc = {3, 2}, .nr = {4, 2}, .rc = {-11, -4},
               .rr = {-11, -4}, .ys = {-20, -40}, .n = 2, .use_ys = true};
    double gc[2], gr[2], gy[2];
    dap_loss_result r = compute(&o, &p, gc, gr, gy);
    const double dpo = (0.5981388693815918 + 0.7981388693815918) / 2;
    assert_float_equal(r.loss, dpo + 5e-6 * (-20 - 40) / 2, HAND_TOL);
    assert_float_equal(gy[0], 5e-6 / 2, 1e-15);
    assert_float_equal(gy[1], 5e-6 / 2, 1e-15);
    /* the DPO part of the gradient is unchanged */
    assert_float_equal(gc[0], -0.1 * 0.45016600268752216 / 2, HAND_TOL);
    /* XPO without the sample's log-prob is an error */
    p.use_ys = false;
    dap_loss_batch b = as_batch(&p);
    duel_error err = {0};
    dap_loss_result r2;
    assert_int_equal(dap_loss_compute(&o, &b, &r2, NULL, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "y_ref"));
}

static void test_masks(void **state) {
    (void)state;
    dap_loss_options o;
    dap_loss_default_options(DAP_LOSS_DPO, &o);
    /* pair 1 is masked out: its NaNs are never read, the loss is pair 0's alone */
    pairs p = {.pc = {-10, NAN}, .pr = {-12, NAN}, .nc = {3, -1}, .nr = {4, 2}, .rc = {-11, NAN},
               .rr = {-11, 0}, .mask = {1, 0}, .n = 2, .use_mask = true};
    double gc[2] = {7, 7}, gr[2] = {7, 7};
    dap_loss_result r = compute(&o, &p, gc, gr, NULL);
    assert_float_equal(r.loss, 0.5981388693815918, HAND_TOL);
    assert_int_equal(r.pairs_used, 1);
    assert_true(gc[1] == 0 && gr[1] == 0);
    assert_float_equal(gc[0], -0.1 * 0.45016600268752216, HAND_TOL);
    /* every mask zero: loss 0, gradients 0, nothing used, for every loss */
    for (int kind = DAP_LOSS_DPO; kind <= DAP_LOSS_SIMPO; kind++) {
        dap_loss_default_options((dap_loss_kind)kind, &o);
        p.mask[0] = 0;
        gc[0] = gr[0] = 7;
        r = compute(&o, &p, gc, gr, NULL);
        assert_true(r.loss == 0 && r.pairs_used == 0 && gc[0] == 0 && gr[0] == 0);
    }
}

/* Per-token means of an empty response are undefined: IPO and SimPO skip such pairs (and say
 * so); DPO, on sums, treats an empty response as log-prob 0. */
static void test_empty_responses(void **state) {
    (void)state;
    pairs p = {.pc = {0, -4}, .pr = {-3, -6}, .nc = {0, 2}, .nr = {2, 3}, .rc = {0, -4},
               .rr = {-2, -5}, .n = 2};
    double gc[2], gr[2];
    dap_loss_options o;
    dap_loss_default_options(DAP_LOSS_IPO, &o);
    dap_loss_result r = compute(&o, &p, gc, gr, NULL);
    assert_int_equal(r.pairs_used, 1);
    assert_int_equal(r.pairs_skipped_empty, 1);
    assert_true(gc[0] == 0 && gr[0] == 0 && gc[1] != 0);
    assert_true(isfinite(r.loss));
    dap_loss_default_options(DAP_LOSS_DPO, &o);
    r = compute(&o, &p, gc, gr, NULL);
    assert_int_equal(r.pairs_used, 2);
    assert_int_equal(r.pairs_skipped_empty, 0);
}

/* Every loss's gradient against central differences on random inputs (away from SLiC's kink). */
static void test_gradients_match_differences(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 99);
    for (int kind = DAP_LOSS_DPO; kind <= DAP_LOSS_SIMPO; kind++) {
        dap_loss_options o;
        dap_loss_default_options((dap_loss_kind)kind, &o);
        o.xpo_alpha = 0.01;
        pairs p = {.n = 4, .use_mask = true, .use_ys = true};
        for (int i = 0; i < 4; i++) {
            p.nc[i] = 1 + (double)duel_rng_below(&rng, 9);
            p.nr[i] = 1 + (double)duel_rng_below(&rng, 9);
            p.pc[i] = -p.nc[i] * (1 + 2 * duel_rng_uniform(&rng));
            p.pr[i] = -p.nr[i] * (1 + 2 * duel_rng_uniform(&rng));
            p.rc[i] = p.pc[i] + 3 * duel_rng_normal(&rng);
            p.rr[i] = p.pr[i] + 3 * duel_rng_normal(&rng);
            p.ys[i] = -10 * duel_rng_uniform(&rng);
            p.mask[i] = i == 2 ? 0.0 : 1.0 + i;
        }
        double gc[4], gr[4], gy[4];
        compute(&o, &p, gc, gr, gy);
        double *arrays[3] = {p.pc, p.pr, p.ys}, *grads[3] = {gc, gr, gy};
        for (int a = 0; a < 3; a++)
            for (int i = 0; i < 4; i++) {
                const double h = 1e-6;
                double saved = arrays[a][i];
                arrays[a][i] = saved + h;
                double lp = compute(&o, &p, NULL, NULL, NULL).loss;
                arrays[a][i] = saved - h;
                double lm = compute(&o, &p, NULL, NULL, NULL).loss;
                arrays[a][i] = saved;
                double numeric = (lp - lm) / (2 * h);
                if (fabs(numeric - grads[a][i]) > 1e-7 * (1 + fabs(numeric))) {
                    fprintf(stderr, "%s: array %d pair %d: analytic %.10g numeric %.10g\n",
                            dap_loss_kind_name((dap_loss_kind)kind), a, i, grads[a][i], numeric);
                    fail();
                }
            }
        assert_true(gc[2] == 0 && gc[0] != 0);
    }
}

static void test_extreme_margins_stay_finite(void **state) {
    (void)state;
    dap_loss_options o;
    dap_loss_default_options(DAP_LOSS_DPO, &o);
    pairs p = {.pc = {-1, -1e5}, .pr = {-1e5, -1}, .nc = {1, 1}, .nr = {1, 1}, .rc = {0, 0},
               .rr = {0, 0}, .n = 2};
    double gc[2], gr[2];
    dap_loss_result r = compute(&o, &p, gc, gr, NULL);
    /* pair 0 is won by Delta = 99999 (loss 0), pair 1 lost by it (loss beta Delta = 9999.9) */
    assert_true(isfinite(r.loss));
    assert_float_equal(r.loss, (0 + 0.1 * (1e5 - 1)) / 2, 1e-6);
    assert_float_equal(gc[1], -0.1 / 2, 1e-12);
    assert_true(gc[0] == 0 || fabs(gc[0]) < 1e-300);
}

static void test_bad_input(void **state) {
    (void)state;
    dap_loss_options o;
    dap_loss_default_options(DAP_LOSS_DPO, &o);
    pairs p = {.pc = {-1}, .pr = {-2}, .nc = {1}, .nr = {1}, .rc = {-1}, .rr = {-1}, .n = 1};
    dap_loss_batch b = as_batch(&p);
    dap_loss_result r;
    duel_error err = {0};
    o.beta = 0;
    assert_int_equal(dap_loss_compute(&o, &b, &r, NULL, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "beta"));
    o.beta = 0.1;
    b.reference_chosen = NULL;
    assert_int_equal(dap_loss_compute(&o, &b, &r, NULL, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "reference"));
    b = as_batch(&p);
    p.pc[0] = INFINITY;
    assert_int_equal(dap_loss_compute(&o, &b, &r, NULL, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "pair 0"));
    p.pc[0] = -1;
    p.nr[0] = -1;
    assert_int_equal(dap_loss_compute(&o, &b, &r, NULL, &err), DUEL_EINVAL);
    p.nr[0] = 1;
    p.mask[0] = -1;
    p.use_mask = true;
    b = as_batch(&p);
    assert_int_equal(dap_loss_compute(&o, &b, &r, NULL, &err), DUEL_EINVAL);
    o.kind = (dap_loss_kind)17;
    assert_int_equal(dap_loss_compute(&o, &b, &r, NULL, &err), DUEL_EINVAL);

    dap_loss_kind kind;
    assert_int_equal(dap_loss_kind_parse("SimPO", &kind, NULL), 0);
    assert_int_equal(kind, DAP_LOSS_SIMPO);
    assert_int_equal(dap_loss_kind_parse("kto", &kind, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "kto"));
    assert_string_equal(dap_loss_kind_name(DAP_LOSS_SLIC), "slic");
    assert_true(dap_loss_uses_means(DAP_LOSS_IPO) && !dap_loss_uses_means(DAP_LOSS_DPO));
    assert_true(!dap_loss_uses_reference(DAP_LOSS_SIMPO) && dap_loss_uses_reference(DAP_LOSS_IPO));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dpo_hand_values),
        cmocka_unit_test(test_dpo_direction),
        cmocka_unit_test(test_ipo_hand_values_and_equal_logprobs),
        cmocka_unit_test(test_slic_hand_values_and_kink),
        cmocka_unit_test(test_simpo_hand_values),
        cmocka_unit_test(test_xpo_term),
        cmocka_unit_test(test_masks),
        cmocka_unit_test(test_empty_responses),
        cmocka_unit_test(test_gradients_match_differences),
        cmocka_unit_test(test_extreme_margins_stay_finite),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
