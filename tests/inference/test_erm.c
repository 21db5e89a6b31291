/* test_erm.c: the epistemic reward model (inference/erm.c): seeded initialisation and its
 * statistics, batched scoring against a naive float64 reference, input validation, and the
 * erm.safetensors round trip (bit-exact) with its error paths. */
#include "test_helpers.h"

#include "erm.h"
#include "safetensors.h"

static erm *make_erm(int E, int D, int H, uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    erm_config c = {.num_heads = E, .d_feat = D, .hidden = H};
    erm *m = NULL;
    duel_error err;
    int rc = erm_create(&c, &rng, &m, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    return m;
}

/* Gives every parameter (biases included) a fresh random value so that scoring tests see
 * non-zero biases too. */
static void randomize(erm *m, uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    for (size_t i = 0; i < m->num_params; i++)
        m->params.memory[i] = (float)(0.3 * duel_rng_normal(&rng));
}

/* r_e(x) computed head by head, candidate by candidate, in double. */
static void naive_score(const erm *m, const float *x, int M, double *out) {
    int E = m->config.num_heads, H = m->config.hidden, D = m->config.d_feat;
    double *a1 = malloc(sizeof(double) * H), *a2 = malloc(sizeof(double) * H);
    for (int i = 0; i < M; i++)
        for (int e = 0; e < E; e++) {
            const float *W1 = m->params.fc1_weight + (size_t)e * H * D;
            const float *W2 = m->params.fc2_weight + (size_t)e * H * H;
            for (int j = 0; j < H; j++) {
                double s = m->params.fc1_bias[e * H + j];
                for (int k = 0; k < D; k++) s += (double)W1[j * D + k] * x[(size_t)i * D + k];
                a1[j] = s > 0 ? s : 0;
            }
            for (int j = 0; j < H; j++) {
                double s = m->params.fc2_bias[e * H + j];
                for (int k = 0; k < H; k++) s += (double)W2[j * H + k] * a1[k];
                a2[j] = s > 0 ? s : 0;
            }
            double r = m->params.fc3_bias[e];
            for (int j = 0; j < H; j++) r += (double)m->params.fc3_weight[e * H + j] * a2[j];
            out[(size_t)i * E + e] = r;
        }
    free(a1);
    free(a2);
}

static float *random_features(int M, int D, uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    float *x = malloc(sizeof(float) * (size_t)M * D);
    for (int i = 0; i < M * D; i++) x[i] = (float)duel_rng_normal(&rng);
    return x;
}

static void test_init_statistics(void **state) {
    (void)state;
    const int E = 20, D = 256, H = 128;
    erm *m = make_erm(E, D, H, 7);
    assert_int_equal(m->num_params, erm_num_params(&m->config));
    assert_int_equal(m->num_params, (size_t)E * (H * D + H + H * H + H + H + 1));
    /* Each weight block has mean ~0 and std 1/(2 sqrt(fan_in)); biases are exactly 0. */
    struct { const float *w; size_t n; int fan_in; } blocks[] = {
        {m->params.fc1_weight, (size_t)E * H * D, D},
        {m->params.fc2_weight, (size_t)E * H * H, H},
        {m->params.fc3_weight, (size_t)E * H, H},
    };
    for (size_t b = 0; b < 3; b++) {
        double s = 0, s2 = 0;
        for (size_t i = 0; i < blocks[b].n; i++) {
            s += blocks[b].w[i];
            s2 += (double)blocks[b].w[i] * blocks[b].w[i];
        }
        double mean = s / blocks[b].n, sd = sqrt(s2 / blocks[b].n - mean * mean);
        double want = 1.0 / (2.0 * sqrt(blocks[b].fan_in));
        assert_true(fabs(sd / want - 1.0) < (b == 2 ? 0.05 : 0.01));
        assert_true(fabs(mean) < 4 * want / sqrt((double)blocks[b].n));
    }
    for (int i = 0; i < E * H; i++) {
        assert_true(m->params.fc1_bias[i] == 0.0f);
        assert_true(m->params.fc2_bias[i] == 0.0f);
    }
    for (int e = 0; e < E; e++) assert_true(m->params.fc3_bias[e] == 0.0f);
    /* theta_0 is a copy, in a different place. */
    assert_ptr_not_equal(m->initial.memory, m->params.memory);
    assert_memory_equal(m->initial.memory, m->params.memory, m->num_params * sizeof(float));
    /* Heads differ from each other. */
    assert_true(memcmp(m->params.fc1_weight, m->params.fc1_weight + (size_t)H * D,
                       (size_t)H * D * sizeof(float)) != 0);
    erm_free(m);
}

static void test_init_deterministic(void **state) {
    (void)state;
    erm *a = make_erm(20, 32, 16, 99), *b = make_erm(20, 32, 16, 99), *c = make_erm(20, 32, 16, 100);
    assert_memory_equal(a->params.memory, b->params.memory, a->num_params * sizeof(float));
    assert_true(memcmp(a->params.memory, c->params.memory, a->num_params * sizeof(float)) != 0);
    /* Head by head: a 5-head ensemble is the first five heads of the 20-head one. */
    erm *d = make_erm(5, 32, 16, 99);
    assert_memory_equal(d->params.fc1_weight, a->params.fc1_weight, 5 * 16 * 32 * sizeof(float));
    assert_memory_equal(d->params.fc2_weight, a->params.fc2_weight, 5 * 16 * 16 * sizeof(float));
    assert_memory_equal(d->params.fc3_weight, a->params.fc3_weight, 5 * 16 * sizeof(float));
    /* reset_initial copies theta into theta_0. */
    a->params.memory[3] += 1.0f;
    assert_true(a->params.memory[3] != a->initial.memory[3]);
    erm_reset_initial(a);
    assert_true(a->params.memory[3] == a->initial.memory[3]);
    erm_free(a);
    erm_free(b);
    erm_free(c);
    erm_free(d);
}

static void test_config_validation(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 1);
    duel_error err;
    erm *m = (erm *)&rng;
    erm_config bad[] = {{0, 8, 8}, {ERM_MAX_NUM_HEADS + 1, 8, 8}, {2, 0, 8}, {2, 8, 0},
                        {2, ERM_MAX_D_FEAT + 1, 8}, {2, 8, ERM_MAX_HIDDEN + 1}};
    const char *field[] = {"num_heads", "num_heads", "d_feat", "hidden", "d_feat", "hidden"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(erm_create(&bad[i], &rng, &m, &err), DUEL_EINVAL);
        assert_null(m);
        assert_int_equal(erm_num_params(&bad[i]), 0);
        /* erm_config_validate names the field out of range */
        assert_int_equal(erm_config_validate(&bad[i], &err), DUEL_EINVAL);
        if (!strstr(err.message, field[i])) fail_msg("case %zu: '%s'", i, err.message);
    }
    assert_int_equal(erm_config_validate(NULL, &err), DUEL_EINVAL);
    /* Both ends of every range are valid. */
    erm_config lo = {1, 1, 1}, hi = {ERM_MAX_NUM_HEADS, ERM_MAX_D_FEAT, ERM_MAX_HIDDEN};
    assert_int_equal(erm_config_validate(&lo, &err), 0);
    assert_int_equal(erm_config_validate(&hi, &err), 0);
    erm_config ok = {2, 8, 8};
    assert_int_equal(erm_create(&ok, NULL, &m, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "rng"));
}

static void check_score(int E, int D, int H, int M, uint64_t seed) {
    erm *m = make_erm(E, D, H, seed);
    randomize(m, seed + 1);
    float *x = random_features(M, D, seed + 2);
    float *r = malloc(sizeof(float) * (size_t)M * E);
    double *ref = malloc(sizeof(double) * (size_t)M * E);
    duel_error err;
    assert_int_equal(erm_score(m, x, M, r, &err), 0);
    naive_score(m, x, M, ref);
    double rel = test_relative_error(r, ref, (size_t)M * E);
    if (!(rel < 1e-5)) fprintf(stderr, "E=%d D=%d H=%d M=%d rel=%g\n", E, D, H, M, rel);
    assert_true(rel < 1e-5);
    /* Scoring one candidate alone gives the same row (no cross-talk between candidates). */
    float *one = malloc(sizeof(float) * E);
    int last = M - 1;
    assert_int_equal(erm_score(m, x + (size_t)last * D, 1, one, &err), 0);
    assert_true(test_relative_error(one, ref + (size_t)last * E, E) < 1e-5);
    free(one);
    free(x);
    free(r);
    free(ref);
    erm_free(m);
}

static void test_score_matches_naive(void **state) {
    (void)state;
    check_score(20, 96, 128, 12, 11); /* the default shape, 12 candidates */
    check_score(20, 64, 128, 1, 12);
    check_score(3, 17, 5, 9, 13); /* odd sizes */
    check_score(1, 1, 1, 2, 14);
}

/* With the initialisation as created (biases 0) rewards are small, finite and differ per head. */
static void test_score_fresh_heads_disagree(void **state) {
    (void)state;
    const int E = 20, D = 48, M = 6;
    erm *m = make_erm(E, D, 128, 5);
    float *x = random_features(M, D, 6);
    float r[6 * 20];
    assert_int_equal(erm_score(m, x, M, r, NULL), 0);
    int distinct_argmax[6] = {0};
    for (int e = 0; e < E; e++) {
        int best = 0;
        for (int i = 1; i < M; i++)
            if (r[i * E + e] > r[best * E + e]) best = i;
        distinct_argmax[best] = 1;
    }
    int n = 0;
    for (int i = 0; i < M; i++) n += distinct_argmax[i];
    assert_true(n >= 2); /* independent heads do not all agree */
    for (int i = 0; i < M * E; i++) assert_true(isfinite(r[i]) && fabsf(r[i]) < 10.0f);
    free(x);
    erm_free(m);
}

static void test_score_rejects_bad_input(void **state) {
    (void)state;
    erm *m = make_erm(4, 8, 8, 3);
    float x[3 * 8], r[3 * 4];
    for (int i = 0; i < 24; i++) x[i] = 0.1f * (float)i;
    duel_error err;
    x[2 * 8 + 5] = NAN;
    assert_int_equal(erm_score(m, x, 3, r, &err), DUEL_EINVAL);
    assert_string_equal(err.message, "erm_score: candidate 2 feature 5 is NaN");
    x[2 * 8 + 5] = -INFINITY;
    assert_int_equal(erm_score(m, x, 3, r, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "infinite"));
    x[2 * 8 + 5] = 0.0f;
    assert_int_equal(erm_score(m, x, 0, r, &err), DUEL_EINVAL);
    assert_int_equal(erm_score(m, x, ERM_MAX_CANDIDATES + 1, r, &err), DUEL_EINVAL);
    assert_int_equal(erm_score(m, NULL, 3, r, &err), DUEL_EINVAL);
    assert_int_equal(erm_score(m, x, 3, r, &err), 0);
    erm_free(m);
}

static void tmp_path(char *out, size_t cap, const char *name) {
    char dir[512];
    test_make_temp_dir("erm", dir, sizeof dir);
    snprintf(out, cap, "%s/%s", dir, name);
}

static void test_save_load_roundtrip(void **state) {
    (void)state;
    char path[700];
    tmp_path(path, sizeof path, "erm.safetensors");
    erm *m = make_erm(20, 40, 128, 21);
    randomize(m, 22); /* theta differs from theta_0 and biases are non-zero */
    m->params.memory[0] = 1e-42f; /* a subnormal survives */
    m->params.memory[1] = -0.0f;
    duel_error err;
    assert_int_equal(erm_save(m, path, &err), 0);
    erm *l = NULL;
    int rc = erm_load(path, 40, &l, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    assert_int_equal(l->config.num_heads, 20);
    assert_int_equal(l->config.d_feat, 40);
    assert_int_equal(l->config.hidden, 128);
    assert_int_equal(l->num_params, m->num_params);
    assert_memory_equal(l->params.memory, m->params.memory, m->num_params * sizeof(float));
    assert_memory_equal(l->initial.memory, m->initial.memory, m->num_params * sizeof(float));
    /* Same scores from both. */
    float *x = random_features(5, 40, 23);
    float r1[5 * 20], r2[5 * 20];
    assert_int_equal(erm_score(m, x, 5, r1, NULL), 0);
    assert_int_equal(erm_score(l, x, 5, r2, NULL), 0);
    assert_memory_equal(r1, r2, sizeof r1);
    /* The file is readable as plain safetensors with the documented names and shapes. */
    safetensors_archive *st;
    assert_int_equal(safetensors_open_file(path, &st, &err), 0);
    assert_int_equal(safetensors_count(st), 12);
    const safetensors_tensor *t = safetensors_find(st, "fc1.weight");
    assert_non_null(t);
    assert_int_equal(t->ndim, 3);
    assert_int_equal(t->shape[0], 20);
    assert_int_equal(t->shape[1], 128);
    assert_int_equal(t->shape[2], 40);
    t = safetensors_find(st, "initial.fc3.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[1], 1);
    assert_string_equal(safetensors_metadata(st, "format"), "duel-erm");
    assert_string_equal(safetensors_metadata(st, "num_heads"), "20");
    safetensors_close(st);
    /* d_feat 0 accepts the file's width; a different encoder width is refused. */
    erm *any = NULL;
    assert_int_equal(erm_load(path, 0, &any, &err), 0);
    erm_free(any);
    assert_int_equal(erm_load(path, 64, &any, &err), DUEL_EINVAL);
    assert_null(any);
    assert_non_null(strstr(err.message, "expects 40 features"));
    free(x);
    erm_free(m);
    erm_free(l);
}

/* Writes an ERM-shaped file from a model's arrays with one thing changed. */
typedef enum { MUT_NONE, MUT_NO_INITIAL, MUT_SHAPE, MUT_MISSING, MUT_EXTRA, MUT_NAN, MUT_META_FORMAT,
               MUT_META_HEADS, MUT_META_VERSION, MUT_DTYPE_INT } mutation;

static void write_mutated(const erm *m, const char *path, mutation mut) {
    static const char *names[12] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                                    "fc3.weight", "fc3.bias", "initial.fc1.weight",
                                    "initial.fc1.bias", "initial.fc2.weight", "initial.fc2.bias",
                                    "initial.fc3.weight", "initial.fc3.bias"};
    int64_t E = m->config.num_heads, H = m->config.hidden, D = m->config.d_feat;
    const erm_params *p[2] = {&m->params, &m->initial};
    safetensors_write_tensor t[13];
    size_t n = 0;
    static float nan_copy[4096];
    for (int b = 0; b < (mut == MUT_NO_INITIAL ? 1 : 2); b++) {
        const float *data[6] = {p[b]->fc1_weight, p[b]->fc1_bias, p[b]->fc2_weight,
                                p[b]->fc2_bias, p[b]->fc3_weight, p[b]->fc3_bias};
        int64_t shapes[6][3] = {{E, H, D}, {E, H}, {E, H, H}, {E, H}, {E, 1, H}, {E, 1}};
        int ndims[6] = {3, 2, 3, 2, 3, 2};
        for (int i = 0; i < 6; i++) {
            if (mut == MUT_MISSING && b == 0 && i == 3) continue;
            safetensors_write_tensor *w = &t[n++];
            memset(w, 0, sizeof *w);
            w->name = names[b * 6 + i];
            w->dtype = SAFETENSORS_F32;
            w->ndim = ndims[i];
            memcpy(w->shape, shapes[i], sizeof shapes[i]);
            w->data = data[i];
            if (mut == MUT_SHAPE && b == 1 && i == 2) { /* [E][H][H] -> [E][H*H] */
                w->ndim = 2;
                w->shape[1] = H * H;
            }
            if (mut == MUT_NAN && b == 0 && i == 4) {
                memcpy(nan_copy, data[i], sizeof(float) * (size_t)(E * H));
                nan_copy[5] = NAN;
                w->data = nan_copy;
            }
            if (mut == MUT_DTYPE_INT && b == 0 && i == 5) w->dtype = SAFETENSORS_I32;
        }
    }
    if (mut == MUT_EXTRA) {
        safetensors_write_tensor *w = &t[n++];
        memset(w, 0, sizeof *w);
        w->name = "fc4.weight";
        w->dtype = SAFETENSORS_F32;
        w->ndim = 1;
        w->shape[0] = 1;
        w->data = m->params.fc3_bias;
    }
    char meta[256];
    snprintf(meta, sizeof meta,
             "{\"format\":\"%s\",\"version\":\"%s\",\"num_heads\":\"%s\",\"d_feat\":\"%lld\","
             "\"hidden\":\"%lld\"}",
             mut == MUT_META_FORMAT ? "something-else" : "duel-erm",
             mut == MUT_META_VERSION ? "2" : "1", mut == MUT_META_HEADS ? "20x" : "3",
             (long long)D, (long long)H);
    duel_error err;
    int rc = safetensors_write_file(path, t, n, meta, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
}

static void test_load_errors(void **state) {
    (void)state;
    char path[700];
    tmp_path(path, sizeof path, "bad.safetensors");
    erm *m = make_erm(3, 6, 4, 31);
    randomize(m, 32);
    duel_error err;
    erm *l = NULL;

    /* Without initial.* the file loads and theta_0 = theta. */
    write_mutated(m, path, MUT_NO_INITIAL);
    assert_int_equal(erm_load(path, 6, &l, &err), 0);
    assert_memory_equal(l->params.memory, m->params.memory, m->num_params * sizeof(float));
    assert_memory_equal(l->initial.memory, m->params.memory, m->num_params * sizeof(float));
    erm_free(l);
    l = NULL;

    struct { mutation mut; int code; const char *needle; } cases[] = {
        {MUT_SHAPE, DUEL_EFORMAT, "initial.fc2.weight"},
        {MUT_MISSING, DUEL_ENOTFOUND, "'fc2.bias' is missing"},
        {MUT_EXTRA, DUEL_EFORMAT, "unexpected tensor \"fc4.weight\""},
        {MUT_NAN, DUEL_EFORMAT, "fc3.weight element 5 is NaN"},
        {MUT_META_FORMAT, DUEL_EFORMAT, "expected \"duel-erm\""},
        {MUT_META_HEADS, DUEL_EFORMAT, "\"num_heads\" is \"20x\""},
        {MUT_META_VERSION, DUEL_EUNSUPPORTED, "version 2"},
        {MUT_DTYPE_INT, DUEL_EUNSUPPORTED, "'fc3.bias' has dtype I32"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_mutated(m, path, cases[i].mut);
        int rc = erm_load(path, 6, &l, &err);
        if (rc != cases[i].code || !strstr(err.message, cases[i].needle))
            fprintf(stderr, "case %zu: rc %d: %s\n", i, rc, err.message);
        assert_int_equal(rc, cases[i].code);
        assert_null(l);
        assert_non_null(strstr(err.message, cases[i].needle));
        assert_non_null(strstr(err.message, "bad.safetensors"));
    }
    /* A missing file and a file that is not safetensors at all. */
    assert_true(erm_load("/nonexistent/erm.safetensors", 0, &l, &err) < 0);
    assert_non_null(strstr(err.message, "/nonexistent/erm.safetensors"));
    test_write_file(path, "not a safetensors file", 22);
    assert_true(erm_load(path, 0, &l, &err) < 0);
    assert_null(l);
    erm_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_statistics),
        cmocka_unit_test(test_init_deterministic),
        cmocka_unit_test(test_config_validation),
        cmocka_unit_test(test_score_matches_naive),
        cmocka_unit_test(test_score_fresh_heads_disagree),
        cmocka_unit_test(test_score_rejects_bad_input),
        cmocka_unit_test(test_save_load_roundtrip),
        cmocka_unit_test(test_load_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
