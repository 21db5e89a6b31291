/* test_cuda_erm.c: batched ERM scoring on the GPU (cuda/cuda_erm.h) against the CPU erm_score
 * (inference/erm.c) on fresh random models and features: E = 20 heads, d_feat = 640, hidden = 128,
 * M in {1, 2, 8, 64, 257}, plus odd shapes; relative error ||gpu - cpu|| / ||cpu|| under 1e-5
 * (fp32 end to end), NaN never passes (the host output is poisoned with NaN before every call).
 * Biases are random too (erm_create zeroes them), so a missing bias would show. Also: non-finite
 * features are refused with erm_score's contract (DUEL_EINVAL naming candidate and column, rewards
 * untouched), bad arguments, and cuda_erm_update with the same and with a different shape.
 *
 * Without a GPU (CI) it first checks the error contract there is without one: no context, and
 * every cuda_erm call given none fails with a message instead of crashing ("built without CUDA"
 * in builds without nvcc); then it prints "SKIP: no CUDA device (<reason>)" and exits 77, which
 * ctest reports as skipped (SKIP_RETURN_CODE in tests/cuda/cuda.cmake). */
#include "test_helpers.h"

#include "backend_cuda.h"
#include "cuda_erm.h"
#include "erm.h"
#include "rng.h"

#define TOL_F32 1e-5

/* Set once in main before the tests run; read-only afterwards. */
static backend_cuda_context *g_ctx;

/* A model of the given shape with random weights and random (non-zero) biases. */
static erm *make_model(int E, int D, int H, uint64_t seed) {
    erm_config c = {.num_heads = E, .d_feat = D, .hidden = H};
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    erm *m = NULL;
    duel_error err = {0};
    if (erm_create(&c, &rng, &m, &err)) fail_msg("erm_create: %s", err.message);
    for (size_t i = 0; i < (size_t)E * H; i++) {
        m->params.fc1_bias[i] = (float)(0.1 * duel_rng_normal(&rng));
        m->params.fc2_bias[i] = (float)(0.1 * duel_rng_normal(&rng));
    }
    for (int e = 0; e < E; e++) m->params.fc3_bias[e] = (float)(0.5 * duel_rng_normal(&rng));
    return m;
}

/* M*D random features, never exactly zero. */
static float *make_features(int M, int D, uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    float *f = malloc((size_t)M * D * sizeof *f);
    assert_non_null(f);
    for (size_t i = 0; i < (size_t)M * D; i++) {
        float v = (float)duel_rng_normal(&rng);
        f[i] = v != 0.0f ? v : 0.5f;
    }
    return f;
}

static void poison(float *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = NAN;
}

/* Scores features with both paths and returns the relative error; fails on any error code. */
static double compare_once(cuda_erm *gpu, const erm *model, const float *features, int M) {
    const int E = model->config.num_heads;
    float *ref = malloc((size_t)M * E * sizeof *ref);
    float *out = malloc((size_t)M * E * sizeof *out);
    assert_non_null(ref);
    assert_non_null(out);
    duel_error err = {0};
    if (erm_score(model, features, M, ref, &err)) fail_msg("erm_score: %s", err.message);
    poison(out, (size_t)M * E);
    if (cuda_erm_score(gpu, features, M, out, &err)) fail_msg("cuda_erm_score M=%d: %s", M, err.message);
    for (size_t i = 0; i < (size_t)M * E; i++)
        if (!isfinite(out[i])) fail_msg("M=%d: reward %zu is %f (unwritten or NaN)", M, i, out[i]);
    double rel = test_relative_error_f32(out, ref, (size_t)M * E);
    free(ref);
    free(out);
    return rel;
}

static void check_shape(int E, int D, int H, const int *Ms, int num_M, uint64_t seed) {
    erm *model = make_model(E, D, H, seed);
    cuda_erm *gpu = NULL;
    duel_error err = {0};
    if (cuda_erm_create(g_ctx, model, &gpu, &err)) fail_msg("cuda_erm_create: %s", err.message);
    assert_int_equal(cuda_erm_num_heads(gpu), E);
    assert_int_equal(cuda_erm_d_feat(gpu), D);
    for (int i = 0; i < num_M; i++) {
        float *features = make_features(Ms[i], D, seed * 1000 + (uint64_t)i);
        double rel = compare_once(gpu, model, features, Ms[i]);
        printf("  E=%d d_feat=%d hidden=%d M=%d: relative error %.3g\n", E, D, H, Ms[i], rel);
        if (!(rel < TOL_F32))
            fail_msg("E=%d d_feat=%d hidden=%d M=%d: relative error %g >= %g", E, D, H, Ms[i], rel,
                     TOL_F32);
        free(features);
    }
    cuda_erm_free(gpu);
    erm_free(model);
}

static void test_default_shape(void **state) {
    (void)state;
    /* Growing then shrinking M reuses the scratch; 257 is no multiple of anything. */
    const int Ms[] = {1, 2, 8, 64, 257, 8};
    check_shape(ERM_DEFAULT_NUM_HEADS, 640, ERM_DEFAULT_HIDDEN, Ms, 6, 11);
}

static void test_odd_shapes(void **state) {
    (void)state;
    const int Ms[] = {1, 5};
    check_shape(3, 37, 33, Ms, 2, 12); /* hidden not a multiple of the warp */
    check_shape(1, 1, 1, Ms, 2, 13);
    check_shape(7, 100, 200, Ms, 2, 14);
}

static void test_nonfinite_features(void **state) {
    (void)state;
    const int E = ERM_DEFAULT_NUM_HEADS, D = 640, H = ERM_DEFAULT_HIDDEN, M = 8;
    erm *model = make_model(E, D, H, 21);
    cuda_erm *gpu = NULL;
    duel_error err = {0};
    if (cuda_erm_create(g_ctx, model, &gpu, &err)) fail_msg("cuda_erm_create: %s", err.message);
    float *features = make_features(M, D, 22);
    float cpu_out[8 * 20], gpu_out[8 * 20];
    const float bad[2] = {NAN, INFINITY};
    const char *word[2] = {"candidate 3 feature 17 is NaN", "candidate 3 feature 17 is infinite"};
    for (int b = 0; b < 2; b++) {
        features[3 * D + 17] = bad[b];
        for (int i = 0; i < M * E; i++) cpu_out[i] = gpu_out[i] = 42.0f;
        duel_error cerr = {0}, gerr = {0};
        /* The CPU contract: DUEL_EINVAL naming the candidate and the column, nothing written. */
        assert_int_equal(erm_score(model, features, M, cpu_out, &cerr), DUEL_EINVAL);
        assert_non_null(strstr(cerr.message, word[b]));
        assert_int_equal(cuda_erm_score(gpu, features, M, gpu_out, &gerr), DUEL_EINVAL);
        assert_non_null(strstr(gerr.message, word[b]));
        for (int i = 0; i < M * E; i++) assert_true(gpu_out[i] == 42.0f);
    }
    features[3 * D + 17] = -INFINITY;
    assert_int_equal(cuda_erm_score(gpu, features, M, gpu_out, &err), DUEL_EINVAL);
    /* Refusing a row leaves the device model usable. */
    features[3 * D + 17] = 0.25f;
    double rel = compare_once(gpu, model, features, M);
    assert_true(rel < TOL_F32);
    free(features);
    cuda_erm_free(gpu);
    erm_free(model);
}

static void test_bad_arguments(void **state) {
    (void)state;
    erm *model = make_model(4, 16, 8, 31);
    cuda_erm *gpu = (cuda_erm *)1;
    duel_error err = {0};
    assert_int_equal(cuda_erm_create(g_ctx, NULL, &gpu, &err), DUEL_EINVAL);
    assert_null(gpu);
    assert_int_equal(cuda_erm_create(g_ctx, model, NULL, &err), DUEL_EINVAL);
    if (cuda_erm_create(g_ctx, model, &gpu, &err)) fail_msg("cuda_erm_create: %s", err.message);
    float *features = make_features(ERM_MAX_CANDIDATES + 1, 16, 32);
    float *out = malloc((size_t)(ERM_MAX_CANDIDATES + 1) * 4 * sizeof *out);
    assert_non_null(out);
    assert_int_equal(cuda_erm_score(gpu, features, 0, out, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "candidates outside"));
    assert_int_equal(cuda_erm_score(gpu, features, -3, out, &err), DUEL_EINVAL);
    assert_int_equal(cuda_erm_score(gpu, features, ERM_MAX_CANDIDATES + 1, out, &err), DUEL_EINVAL);
    assert_int_equal(cuda_erm_score(gpu, NULL, 1, out, &err), DUEL_EINVAL);
    assert_int_equal(cuda_erm_score(gpu, features, 1, NULL, &err), DUEL_EINVAL);
    assert_int_equal(cuda_erm_score(NULL, features, 1, out, &err), DUEL_EINVAL);
    /* The largest batch erm_score accepts works too. */
    double rel = compare_once(gpu, model, features, ERM_MAX_CANDIDATES);
    assert_true(rel < TOL_F32);
    free(out);
    free(features);
    cuda_erm_free(gpu);
    cuda_erm_free(NULL);
    erm_free(model);
}

static void test_update(void **state) {
    (void)state;
    const int E = 5, D = 48, H = 40, M = 9;
    erm *model = make_model(E, D, H, 41);
    cuda_erm *gpu = NULL;
    duel_error err = {0};
    if (cuda_erm_create(g_ctx, model, &gpu, &err)) fail_msg("cuda_erm_create: %s", err.message);
    float *features = make_features(M, D, 42);
    assert_true(compare_once(gpu, model, features, M) < TOL_F32);
    /* New weights (a training step): the device follows after cuda_erm_update, not before. */
    erm *trained = make_model(E, D, H, 43);
    assert_false(compare_once(gpu, trained, features, M) < TOL_F32);
    assert_int_equal(cuda_erm_update(gpu, trained, &err), DUEL_OK);
    assert_true(compare_once(gpu, trained, features, M) < TOL_F32);
    /* Another shape is refused and the device copy stays as it was. */
    erm *other = make_model(E, D, H + 1, 44);
    assert_int_equal(cuda_erm_update(gpu, other, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "differs from the uploaded"));
    assert_true(compare_once(gpu, trained, features, M) < TOL_F32);
    assert_int_equal(cuda_erm_update(NULL, trained, &err), DUEL_EINVAL);
    assert_int_equal(cuda_erm_update(gpu, NULL, &err), DUEL_EINVAL);
    free(features);
    cuda_erm_free(gpu);
    erm_free(model);
    erm_free(trained);
    erm_free(other);
}

/* Without a device: no context, and every cuda_erm call fails cleanly. Returns 0 when the
 * contract holds, prints FAIL and returns 1 otherwise. */
static int check_without_device(const backend_cuda_info *info, char *context_message, size_t cap) {
    backend_cuda_context *ctx = (backend_cuda_context *)1;
    duel_error cerr = {0};
    int crc = backend_cuda_context_create(0, 0, &ctx, &cerr);
    if (crc != DUEL_EDEVICE || ctx != NULL || cerr.message[0] == '\0') {
        fprintf(stderr, "FAIL: context_create without a device returned %d (%s)\n", crc,
                cerr.message);
        return 1;
    }
    snprintf(context_message, cap, "%s", cerr.message);
    erm_config c = {.num_heads = 2, .d_feat = 8, .hidden = 4};
    duel_rng rng;
    duel_rng_seed(&rng, 1);
    erm *model = NULL;
    duel_error err = {0};
    if (erm_create(&c, &rng, &model, &err)) {
        fprintf(stderr, "FAIL: erm_create: %s\n", err.message);
        return 1;
    }
    int failed = 0;
    cuda_erm *gpu = (cuda_erm *)1;
    err = (duel_error){0};
    int rc = cuda_erm_create(ctx, model, &gpu, &err);
    if (rc == 0 || gpu != NULL || err.message[0] == '\0' ||
        (!info->built && (rc != DUEL_EDEVICE || !strstr(err.message, "built without CUDA")))) {
        fprintf(stderr, "FAIL: cuda_erm_create without a context returned %d (%s)\n", rc,
                err.message);
        failed = 1;
    }
    float features[8] = {1, 2, 3, 4, 5, 6, 7, 8}, rewards[2] = {42.0f, 42.0f};
    err = (duel_error){0};
    rc = cuda_erm_score(NULL, features, 1, rewards, &err);
    if (rc == 0 || err.message[0] == '\0' || rewards[0] != 42.0f || rewards[1] != 42.0f) {
        fprintf(stderr, "FAIL: cuda_erm_score without a model returned %d (%s)\n", rc, err.message);
        failed = 1;
    }
    err = (duel_error){0};
    rc = cuda_erm_update(NULL, model, &err);
    if (rc == 0 || err.message[0] == '\0') {
        fprintf(stderr, "FAIL: cuda_erm_update without a model returned %d (%s)\n", rc,
                err.message);
        failed = 1;
    }
    if (cuda_erm_num_heads(NULL) != 0 || cuda_erm_d_feat(NULL) != 0) {
        fprintf(stderr, "FAIL: accessors of a NULL model are not 0\n");
        failed = 1;
    }
    cuda_erm_free(NULL);
    erm_free(model);
    return failed;
}

int main(void) {
    backend_cuda_info info;
    duel_error err = {0};
    int rc = backend_cuda_probe(&info, &err);
    if (rc || info.device_count == 0) {
        const char *reason = rc ? err.message
                             : !info.built ? "built without CUDA"
                                           : "the driver reports no device";
        char context_message[DUEL_ERROR_MESSAGE_MAX];
        if (check_without_device(&info, context_message, sizeof context_message)) return 1;
        printf("SKIP: no CUDA device (%s; context_create said: %s; cuda_erm calls without a "
               "context fail cleanly)\n",
               reason, context_message);
        return 77;
    }
    rc = backend_cuda_context_create(0, 0, &g_ctx, &err);
    if (rc) {
        fprintf(stderr, "FAIL: a device answered the probe but context_create failed: %s\n",
                err.message);
        return 1;
    }
    printf("device: %s (%d SMs)\n", backend_cuda_device_name(g_ctx), backend_cuda_sm_count(g_ctx));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_shape),      cmocka_unit_test(test_odd_shapes),
        cmocka_unit_test(test_nonfinite_features), cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_update),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    backend_cuda_context_destroy(g_ctx);
    return failed ? 1 : 0;
}
