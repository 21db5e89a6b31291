/* test_train_fork.c: forked rows (train_layers.h train_fork; train_model_forward_forked), the
 * layout the online trainer gives a preference pair: the prompt once, then the chosen and the
 * rejected answer as two branches of one row. On the fixture models of both families (Llama
 * with and without biases, llama3 RoPE scaling, GPT-NeoX with partial rotary), random pairs
 * forked must give the sequence log-probabilities, counts and parameter gradients of the same
 * pairs as two plain rows each (relative error < 1e-5: only the summation order differs), with
 * empty branches, a one-token prompt and right padding among them; a plain forward after a
 * forked one is plain again; bad forks are refused. A forked row may be longer than the model's
 * positions when each of its sequences fits (a long prompt with two long answers), not when one
 * does not. */
#include "test_helpers.h"

#include "lm_trainer.h"
#include "rng.h"
#include "train_model.h"

enum { PAIRS = 6 };

typedef struct pair_spec {
    int prompt, chosen, rejected; /* token counts */
} pair_spec;

/* One prompt + response as a plain row of T positions (right-padded with mask 0). */
static void plain_row(const int32_t *prompt, int np, const int32_t *resp, int nr, int T, int32_t *tokens,
                      int32_t *targets, float *mask) {
    for (int t = 0; t < T; t++) {
        tokens[t] = 1;
        targets[t] = 0;
        mask[t] = 0;
    }
    for (int t = 0; t + 1 < np + nr; t++) {
        tokens[t] = t < np ? prompt[t] : resp[t - np];
        targets[t] = t + 1 < np ? prompt[t + 1] : resp[t + 1 - np];
        mask[t] = t + 1 >= np ? 1.0f : 0.0f;
    }
}

/* The forked row: prompt[0..np-2] shared, then each branch is the prompt's last token followed
 * by the response less its last token, predicting the response. */
static void forked_row(const int32_t *prompt, int np, const int32_t *c, int nc, const int32_t *r, int nr, int T,
                       int32_t *tokens, int32_t *targets, float *mask, int32_t *shared, int32_t *branch) {
    for (int t = 0; t < T; t++) {
        tokens[t] = 1;
        targets[t] = 0;
        mask[t] = 0;
    }
    const int S = np - 1;
    for (int t = 0; t < S; t++) {
        tokens[t] = prompt[t];
        targets[t] = prompt[t + 1];
    }
    for (int side = 0, at = S; side < 2; side++) {
        const int32_t *resp = side ? r : c;
        int n = side ? nr : nc;
        if (side) *branch = at;
        for (int j = 0; j < n; j++, at++) {
            tokens[at] = j == 0 ? prompt[np - 1] : resp[j - 1];
            targets[at] = resp[j];
            mask[at] = 1.0f;
        }
    }
    *shared = S;
}

static double rel(const double *a, const double *b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void check_model(const char *name) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/test-models/%s", test_env("DUEL_BUILD_DIR", "."), name);
    train_model *plain = NULL, *forked = NULL;
    char *cfg = NULL;
    duel_error err = {0};
    if (lm_model_load_hf(dir, &plain, &cfg, &err)) fail_msg("%s: %s", name, err.message);
    free(cfg);
    if (lm_model_load_hf(dir, &forked, &cfg, &err)) fail_msg("%s: %s", name, err.message);
    free(cfg);
    const int vocab = train_model_config(plain)->vocab_size;
    /* Lengths: ordinary pairs, an empty chosen and an empty rejected answer, a one-token prompt,
     * and a short pair among long ones (right padding after its second branch). */
    const pair_spec spec[PAIRS] = {{5, 4, 7}, {3, 0, 5}, {6, 3, 0}, {1, 4, 2}, {4, 2, 2}, {7, 6, 5}};
    duel_rng rng;
    duel_rng_seed(&rng, 77);
    int32_t prompt[PAIRS][8], chosen[PAIRS][8], rejected[PAIRS][8];
    int T_plain = 1, T_fork = 1;
    for (int i = 0; i < PAIRS; i++) {
        for (int t = 0; t < 8; t++) {
            prompt[i][t] = (int32_t)duel_rng_below(&rng, (uint64_t)vocab);
            chosen[i][t] = (int32_t)duel_rng_below(&rng, (uint64_t)vocab);
            rejected[i][t] = (int32_t)duel_rng_below(&rng, (uint64_t)vocab);
        }
        int longer = spec[i].chosen > spec[i].rejected ? spec[i].chosen : spec[i].rejected;
        if (spec[i].prompt + longer - 1 > T_plain) T_plain = spec[i].prompt + longer - 1;
        if (spec[i].prompt - 1 + spec[i].chosen + spec[i].rejected > T_fork)
            T_fork = spec[i].prompt - 1 + spec[i].chosen + spec[i].rejected;
    }
    /* plain: chosen rows 0..PAIRS-1, rejected rows PAIRS..2*PAIRS-1 */
    int32_t *pt = calloc((size_t)2 * PAIRS * T_plain, sizeof *pt), *pg = calloc((size_t)2 * PAIRS * T_plain, sizeof *pg);
    float *pm = calloc((size_t)2 * PAIRS * T_plain, sizeof *pm);
    int32_t *ft = calloc((size_t)PAIRS * T_fork, sizeof *ft), *fg = calloc((size_t)PAIRS * T_fork, sizeof *fg);
    float *fm = calloc((size_t)PAIRS * T_fork, sizeof *fm);
    int32_t shared[PAIRS], branch[PAIRS];
    for (int i = 0; i < PAIRS; i++) {
        const pair_spec *s = &spec[i];
        size_t c = (size_t)i * T_plain, r = (size_t)(PAIRS + i) * T_plain, f = (size_t)i * T_fork;
        plain_row(prompt[i], s->prompt, chosen[i], s->chosen, T_plain, pt + c, pg + c, pm + c);
        plain_row(prompt[i], s->prompt, rejected[i], s->rejected, T_plain, pt + r, pg + r, pm + r);
        forked_row(prompt[i], s->prompt, chosen[i], s->chosen, rejected[i], s->rejected, T_fork, ft + f, fg + f,
                   fm + f, &shared[i], &branch[i]);
    }
    train_batch pb = {2 * PAIRS, T_plain, pt, pg, pm}, fb = {PAIRS, T_fork, ft, fg, fm};
    train_fork fork = {shared, branch};
    double ps[2 * PAIRS], pc[2 * PAIRS], fs[2 * PAIRS], fc[2 * PAIRS], dseq[2 * PAIRS];
    train_model_zero_grad(plain);
    train_model_zero_grad(forked);
    if (train_model_forward(plain, &pb, ps, pc, NULL, &err)) fail_msg("%s", err.message);
    if (train_model_forward_forked(forked, &fb, &fork, fs, fc, NULL, &err)) fail_msg("%s", err.message);
    for (int i = 0; i < 2 * PAIRS; i++) {
        assert_true(fc[i] == pc[i]); /* token counts, exactly */
        if (!(fabs(fs[i] - ps[i]) <= 1e-5 * fabs(ps[i]) + 1e-9))
            fail_msg("%s: sequence %d: forked log-probability %.9g, plain %.9g", name, i, fs[i], ps[i]);
        dseq[i] = 0.1 * (double)(i % 5) - 0.2 + 0.01 * i;
    }
    if (train_model_backward(plain, dseq, &err) || train_model_backward(forked, dseq, &err))
        fail_msg("%s: backward: %s", name, err.message);
    size_t n = train_model_num_parameters(plain);
    const float *gp = train_model_gradient_memory(plain), *gf = train_model_gradient_memory(forked);
    double num = 0, den = 0;
    for (size_t k = 0; k < n; k++) {
        num += ((double)gf[k] - gp[k]) * ((double)gf[k] - gp[k]);
        den += (double)gp[k] * gp[k];
    }
    assert_true(den > 0);
    if (!(sqrt(num / den) < 1e-5)) fail_msg("%s: gradient relative error %g", name, sqrt(num / den));
    /* A plain forward after a forked one: B sums, and its backward takes B gradients. */
    double again[2 * PAIRS], again_c[2 * PAIRS];
    if (train_model_forward(forked, &pb, again, again_c, NULL, &err)) fail_msg("%s", err.message);
    assert_true(rel(again, ps, 2 * PAIRS) < 1e-6);
    assert_int_equal(train_model_backward(forked, dseq, &err), 0);
    /* Bad forks. */
    branch[2] = T_fork + 1;
    assert_int_equal(train_model_forward_forked(forked, &fb, &fork, fs, fc, NULL, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "row 2"));
    branch[2] = shared[2] - 1;
    assert_int_equal(train_model_forward_forked(forked, &fb, &fork, fs, fc, NULL, &err), DUEL_EINVAL);
    train_fork half = {shared, NULL};
    assert_int_equal(train_model_forward_forked(forked, &fb, &half, fs, fc, NULL, &err), DUEL_EINVAL);
    /* and no backward follows a refused forward */
    assert_int_equal(train_model_backward(forked, dseq, &err), DUEL_EINVAL);
    free(pt), free(pg), free(pm), free(ft), free(fg), free(fm);
    train_model_free(plain);
    train_model_free(forked);
}

/* One pair whose forked row (9 + 1100 + 1000 positions) is longer than the model's 2048
 * positions while each sequence (1109, 1009) fits: the same log-probabilities as two plain rows.
 * Then an answer that does not fit: DUEL_ELIMIT. */
static void test_row_longer_than_positions(void **state) {
    (void)state;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/test-models/tiny-llama-f32", test_env("DUEL_BUILD_DIR", "."));
    train_model *m = NULL;
    char *cfg = NULL;
    duel_error err = {0};
    if (lm_model_load_hf(dir, &m, &cfg, &err)) fail_msg("%s", err.message);
    free(cfg);
    const int max_pos = train_model_config(m)->max_position_embeddings, vocab = train_model_config(m)->vocab_size;
    enum { NP = 10, NC = 1100, NR = 1000, LONG = 2045 };
    assert_true(NP - 1 + NC + NR > max_pos && NP + NC - 1 <= max_pos);
    duel_rng rng;
    duel_rng_seed(&rng, 5);
    int32_t prompt[NP], *c = malloc(LONG * sizeof *c), *r = malloc(NR * sizeof *r);
    for (int i = 0; i < NP; i++) prompt[i] = (int32_t)duel_rng_below(&rng, (uint64_t)vocab);
    for (int i = 0; i < LONG; i++) c[i] = (int32_t)duel_rng_below(&rng, (uint64_t)vocab);
    for (int i = 0; i < NR; i++) r[i] = (int32_t)duel_rng_below(&rng, (uint64_t)vocab);
    const int TP = NP + NC - 1, TF = NP - 1 + LONG + NR;
    int32_t *pt = calloc((size_t)2 * TP, sizeof *pt), *pg = calloc((size_t)2 * TP, sizeof *pg);
    float *pm = calloc((size_t)2 * TP, sizeof *pm);
    int32_t *ft = calloc((size_t)TF, sizeof *ft), *fg = calloc((size_t)TF, sizeof *fg);
    float *fm = calloc((size_t)TF, sizeof *fm);
    plain_row(prompt, NP, c, NC, TP, pt, pg, pm);
    plain_row(prompt, NP, r, NR, TP, pt + TP, pg + TP, pm + TP);
    int32_t shared, branch;
    forked_row(prompt, NP, c, NC, r, NR, NP - 1 + NC + NR, ft, fg, fm, &shared, &branch);
    train_batch pb = {2, TP, pt, pg, pm}, fb = {1, NP - 1 + NC + NR, ft, fg, fm};
    train_fork fork = {&shared, &branch};
    double ps[2], pc[2], fs[2], fc[2];
    if (train_model_forward(m, &pb, ps, pc, NULL, &err)) fail_msg("%s", err.message);
    if (train_model_forward_forked(m, &fb, &fork, fs, fc, NULL, &err)) fail_msg("%s", err.message);
    for (int i = 0; i < 2; i++) {
        assert_true(fc[i] == pc[i]);
        if (!(fabs(fs[i] - ps[i]) <= 1e-5 * fabs(ps[i]))) fail_msg("sequence %d: %.9g forked, %.9g plain", i, fs[i], ps[i]);
    }
    /* the chosen answer of 2045 tokens ends at position 2054 */
    forked_row(prompt, NP, c, LONG, r, NR, TF, ft, fg, fm, &shared, &branch);
    fb.seq_len = TF;
    assert_int_equal(train_model_forward_forked(m, &fb, &fork, fs, fc, NULL, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "over the model's"));
    free(c), free(r), free(pt), free(pg), free(pm), free(ft), free(fg), free(fm);
    train_model_free(m);
}

static void test_llama(void **state) {
    (void)state;
    check_model("tiny-llama-f32");
    check_model("tiny-llama-qwen2-f32");
    check_model("tiny-llama3-rope-f32");
}

static void test_neox(void **state) {
    (void)state;
    check_model("tiny-neox-f32");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama),
        cmocka_unit_test(test_neox),
        cmocka_unit_test(test_row_longer_than_positions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
