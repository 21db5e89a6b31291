/* test_weight_matmul.c: the packed weight formats (inference/weight_format.c) and every kernel
 * over them (inference/weight_matmul.c, matmul_bf16.c, matmul_q8.c) against references written
 * here in double, on fresh random inputs (never zeros), odd sizes, 1..16 rows and a prefill-sized
 * product. Bounds (relative error ||out - ref|| / ||ref||; NaN never passes):
 *   against the product with the stored weights and the same input rounding the kernel does
 *   (none for the exact bf16 kernels, bf16 inputs for vdpbf16ps, int8 blocks for q8): 1e-5;
 *   against the f32 product with the stored weights and exact inputs: bf16 exact 1e-5,
 *   vdpbf16ps 1e-2, q8 2e-2 (the int8 input blocks: about 0.5 % measured);
 *   the stored weights against the f32 source: bf16 4e-3 (2^-8 per value), q8 1e-2.
 * Kernels this CPU lacks print a skip line. */
#include "test_helpers.h"

#include <immintrin.h>

#include "rng.h"
#include "weight_format.h"
#include "weight_matmul.h"

#define TOL_EXACT 1e-5
#define TOL_BF16_INPUT 1e-2
#define TOL_Q8_INPUT 2e-2
#define TOL_BF16_STORE 4e-3
#define TOL_Q8_STORE 1e-2

static float *rand_floats(duel_rng *rng, size_t n, double scale) {
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * duel_rng_normal(rng));
    return x;
}

/* Independent roundings: bf16 by the hardware where present, else by integer arithmetic; f16
 * by F16C (vcvtps2ph). */
static float round_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

static float round_f16_hw(float x) {
    return _cvtsh_ss(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* q8 of one block in double: d = max|x| / 127 (f32 as ggml), quants x / d rounded. halfeven
 * picks the activation rule (nearest even) instead of ggml's weight rule (half away). */
static void q8_block_ref(const float *x, int n, bool halfeven, double *deq, float *scale_out) {
    float amax = 0;
    for (int j = 0; j < n; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
    float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    float stored = halfeven ? d : round_f16_hw(d);
    for (int j = 0; j < n; j++) {
        float v = x[j] * id;
        double q = halfeven ? nearbyint(v) : round(v);
        deq[j] = (double)stored * q;
    }
    if (scale_out) *scale_out = stored;
}

static void test_f16_and_bf16_rounding(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 11);
    for (int i = 0; i < 200000; i++) {
        /* magnitudes from 2^-30 (f16 subnormal and underflow) to 2^17 (f16 overflow) */
        float x = (float)(ldexp(duel_rng_uniform(&rng) + 0.5, (int)(duel_rng_below(&rng, 48)) - 30) *
                          (duel_rng_below(&rng, 2) ? -1 : 1));
        uint16_t h = weight_f32_to_f16(x);
        uint16_t hw = _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        if (h != hw) fail_msg("f16 of %a: 0x%04x, F16C says 0x%04x", (double)x, h, hw);
        float back = weight_f16_to_f32(h), back_hw = _cvtsh_ss(hw);
        assert_memory_equal(&back, &back_hw, 4);
        assert_true(weight_bf16_to_f32(weight_f32_to_bf16(x)) == round_bf16(x));
    }
    assert_true(isnan(weight_bf16_to_f32(weight_f32_to_bf16(NAN))));
    assert_true(isnan(weight_f16_to_f32(weight_f32_to_f16(NAN))));
    assert_true(isinf(weight_f16_to_f32(weight_f32_to_f16(70000.0f))));
}

static void test_packing(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 12);
    const int shapes[][2] = {{1, 1}, {16, 32}, {17, 33}, {45, 100}, {3, 577}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], cols = shapes[s][1];
        float *src = rand_floats(&rng, (size_t)rows * cols, 0.05);
        float *row = malloc((size_t)cols * sizeof *row);
        double *ref = malloc((size_t)cols * sizeof *ref);
        duel_error err = {0};
        weight_matrix b, q;
        assert_int_equal(weight_matrix_pack(&b, WEIGHT_BF16, src, rows, cols, &err), 0);
        assert_int_equal(weight_matrix_pack(&q, WEIGHT_Q8, src, rows, cols, &err), 0);
        assert_int_equal(b.cols_padded % 2, 0);
        assert_int_equal(q.cols_padded % 32, 0);
        for (int r = 0; r < rows; r++) {
            const float *x = src + (size_t)r * cols;
            weight_matrix_row(&b, r, row);
            for (int k = 0; k < cols; k++) assert_true(row[k] == round_bf16(x[k]));
            for (int k = 0; k < cols; k++) ref[k] = x[k];
            assert_true(test_relative_error(row, ref, (size_t)cols) < TOL_BF16_STORE);
            weight_matrix_row(&q, r, row);
            for (int k0 = 0; k0 < cols; k0 += 32) {
                int n = cols - k0 < 32 ? cols - k0 : 32;
                q8_block_ref(x + k0, n, false, ref + k0, NULL);
            }
            /* the stored values are exactly ggml's Q8_0 of the row */
            for (int k = 0; k < cols; k++) assert_true((double)row[k] == ref[k]);
            for (int k = 0; k < cols; k++) ref[k] = x[k];
            assert_true(test_relative_error(row, ref, (size_t)cols) < TOL_Q8_STORE);
        }
        assert_true(weight_matrix_bytes(&b) >= (size_t)rows * cols * 2);
        assert_true(weight_matrix_bytes(&q) * 32 >= (size_t)rows * cols * 34);
        weight_matrix_free(&b);
        weight_matrix_free(&q);
        free(src), free(row), free(ref);
    }
    /* roundf's ties (half away from zero), and a value just below one half: d = 127 / 127 = 1 */
    float block[32] = {127.0f, 2.5f, -3.5f, 0.5f, -0.5f, 126.5f, -126.5f, 0.49999997f, 1.5f, -2.5f};
    int8_t q[32];
    const int8_t want[10] = {127, 3, -4, 1, -1, 127, -127, 0, 2, -3};
    assert_int_equal(weight_q8_quantize_block(block, q), weight_f32_to_f16(1.0f));
    assert_memory_equal(q, want, sizeof want);
    for (int i = 10; i < 32; i++) assert_int_equal(q[i], 0);
    block[3] = NAN; /* a NaN block: the scale is NaN, the quants 0 */
    assert_true(isnan(weight_f16_to_f32(weight_q8_quantize_block(block, q))));
    for (int i = 0; i < 32; i++) assert_int_equal(q[i], 0);
    duel_error err = {0};
    weight_matrix w;
    float one = 1;
    assert_int_equal(weight_matrix_pack(&w, WEIGHT_F32, &one, 1, 1, &err), DUEL_EINVAL);
    assert_int_equal(weight_matrix_pack(&w, WEIGHT_Q8, &one, 0, 1, &err), DUEL_EINVAL);
    weight_format f;
    assert_int_equal(weight_format_parse("q8", &f, &err), 0);
    assert_int_equal(f, WEIGHT_Q8);
    assert_int_equal(weight_format_parse("Q8_0", &f, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "Q8_0"));
}

/* The reference product in double: out[t][o] = base[t][o] (accumulate) + bias[o] + sum_k
 * x'[t][k] W[o][k], with x' the input as the kernel rounds it (input_rule 0: exact, 1: bf16,
 * 2: int8 blocks). */
static void reference(const weight_matrix *w, const float *x, int n, const float *bias,
                      const float *base, int input_rule, double *ref) {
    int K = w->cols;
    float *row = malloc((size_t)K * sizeof *row);
    double *xr = malloc((size_t)K * sizeof *xr);
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * K;
        if (input_rule == 2) {
            for (int k0 = 0; k0 < K; k0 += 32)
                q8_block_ref(xt + k0, K - k0 < 32 ? K - k0 : 32, true, xr + k0, NULL);
        } else {
            for (int k = 0; k < K; k++) xr[k] = input_rule == 1 ? round_bf16(xt[k]) : xt[k];
        }
        for (int o = 0; o < w->rows; o++) {
            weight_matrix_row(w, o, row);
            double d = 0;
            for (int k = 0; k < K; k++) d += (double)row[k] * xr[k];
            if (bias) d += bias[o];
            if (base) d += base[(size_t)t * w->rows + o];
            ref[(size_t)t * w->rows + o] = d;
        }
    }
    free(row), free(xr);
}

/* One product with kernel k, the groups split in two calls as two threads would. */
static void run_kernel(weight_kernel k, const weight_matrix *w, const float *x, int n,
                       const float *bias, bool accumulate, float *out) {
    size_t bytes = weight_prepared_bytes(k, w, n);
    void *prep = aligned_alloc(64, bytes ? bytes : 64);
    assert_non_null(prep);
    memset(prep, 0xff, bytes); /* garbage (NaN patterns) wherever the prepare step writes nothing */
    weight_prepare_input(k, w, x, n, (size_t)w->cols, prep);
    int mid = w->groups / 2;
    weight_matmul_groups(k, w, prep, n, out, (size_t)w->rows, bias, accumulate, mid, w->groups);
    weight_matmul_groups(k, w, prep, n, out, (size_t)w->rows, bias, accumulate, 0, mid);
    free(prep);
}

static void check_format(weight_format f, uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    /* odd sizes: partial groups, a partial q8 block, an odd bf16 column count */
    const int shapes[][2] = {{37, 75}, {16, 64}, {50, 321}, {3, 33}};
    const int row_counts[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 37};
    int tested = 0;
    for (int k = 0; k < WEIGHT_KERNEL_COUNT; k++) {
        const char *kn = weight_kernel_name((weight_kernel)k);
        if (!weight_kernel_available((weight_kernel)k, f)) {
            bool applies = f == WEIGHT_BF16 ? k != WEIGHT_KERNEL_AVX512_VNNI
                                            : k != WEIGHT_KERNEL_AVX512 && k != WEIGHT_KERNEL_AVX512_BF16;
            if (applies)
                printf("SKIP: %s kernel %s: this CPU lacks its instructions\n",
                       weight_format_name(f), kn);
            continue;
        }
        int input_rule = f == WEIGHT_Q8 ? 2 : k == WEIGHT_KERNEL_AVX512_BF16 ? 1 : 0;
        double tol_exact_inputs = input_rule == 2 ? TOL_Q8_INPUT
                                  : input_rule == 1 ? TOL_BF16_INPUT
                                                    : TOL_EXACT;
        double worst = 0;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int rows = shapes[s][0], cols = shapes[s][1];
            float *wsrc = rand_floats(&rng, (size_t)rows * cols, 0.1);
            float *bias = rand_floats(&rng, (size_t)rows, 0.5);
            duel_error err = {0};
            weight_matrix w;
            assert_int_equal(weight_matrix_pack(&w, f, wsrc, rows, cols, &err), 0);
            for (size_t c = 0; c < sizeof row_counts / sizeof row_counts[0]; c++) {
                int n = row_counts[c];
                float *x = rand_floats(&rng, (size_t)n * cols, 1.0);
                float *base = rand_floats(&rng, (size_t)n * rows, 1.0);
                float *out = malloc((size_t)n * rows * sizeof *out);
                double *ref = malloc((size_t)n * rows * sizeof *ref);
                double *ref_exact = malloc((size_t)n * rows * sizeof *ref_exact);
                bool acc = c % 2 == 1, with_bias = c % 3 != 0;
                memcpy(out, base, (size_t)n * rows * sizeof *out);
                run_kernel((weight_kernel)k, &w, x, n, with_bias ? bias : NULL, acc, out);
                reference(&w, x, n, with_bias ? bias : NULL, acc ? base : NULL, input_rule, ref);
                reference(&w, x, n, with_bias ? bias : NULL, acc ? base : NULL, 0, ref_exact);
                double e = test_relative_error(out, ref, (size_t)n * rows);
                double e2 = test_relative_error(out, ref_exact, (size_t)n * rows);
                if (!(e < TOL_EXACT) || !(e2 < tol_exact_inputs))
                    fail_msg("%s kernel %s, %d x %d, %d rows%s%s: relative error %g against its "
                             "own input rounding (bound %g), %g against exact inputs (bound %g)",
                             weight_format_name(f), kn, rows, cols, n, acc ? ", accumulate" : "",
                             with_bias ? ", bias" : "", e, TOL_EXACT, e2, tol_exact_inputs);
                if (e2 > worst) worst = e2;
                free(x), free(base), free(out), free(ref), free(ref_exact);
            }
            /* NaN in one input row reaches that row's outputs and only them. */
            int n = 3;
            float *x = rand_floats(&rng, (size_t)n * cols, 1.0);
            float *out = malloc((size_t)n * rows * sizeof *out);
            x[cols + cols / 2] = NAN;
            run_kernel((weight_kernel)k, &w, x, n, NULL, false, out);
            for (int o = 0; o < rows; o++) {
                assert_false(isnan(out[o]));
                assert_true(isnan(out[rows + o]));
                assert_false(isnan(out[2 * rows + o]));
            }
            free(x), free(out);
            weight_matrix_free(&w);
            free(wsrc), free(bias);
        }
        printf("%s kernel %s: worst relative error against exact inputs %.2e\n",
               weight_format_name(f), kn, worst);
        tested++;
    }
    assert_true(tested >= 2); /* scalar and AVX2 run on every x86-64-v3 machine */
}

static void test_bf16_kernels(void **state) {
    (void)state;
    check_format(WEIGHT_BF16, 21);
}

static void test_q8_kernels(void **state) {
    (void)state;
    check_format(WEIGHT_Q8, 22);
}

/* The kernels the model uses on this CPU: bf16 exact up to WEIGHT_BF16_EXACT_MAX_ROWS rows,
 * vdpbf16ps above where present; q8 the best there is. */
static void test_best_kernels(void **state) {
    (void)state;
    for (int n = 1; n <= WEIGHT_BF16_EXACT_MAX_ROWS; n++) {
        weight_kernel k = weight_kernel_best(WEIGHT_BF16, n);
        assert_true(weight_kernel_available(k, WEIGHT_BF16));
        assert_int_not_equal(k, WEIGHT_KERNEL_AVX512_BF16);
    }
    weight_kernel big = weight_kernel_best(WEIGHT_BF16, 128);
    assert_int_equal(big == WEIGHT_KERNEL_AVX512_BF16,
                     weight_kernel_available(WEIGHT_KERNEL_AVX512_BF16, WEIGHT_BF16));
    weight_kernel q = weight_kernel_best(WEIGHT_Q8, 1);
    assert_true(weight_kernel_available(q, WEIGHT_Q8));
    assert_int_equal(q == WEIGHT_KERNEL_AVX512_VNNI,
                     weight_kernel_available(WEIGHT_KERNEL_AVX512_VNNI, WEIGHT_Q8));
    printf("this CPU: bf16 decode %s, bf16 prefill %s, q8 %s\n",
           weight_kernel_name(weight_kernel_best(WEIGHT_BF16, 1)), weight_kernel_name(big),
           weight_kernel_name(q));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_and_bf16_rounding),
        cmocka_unit_test(test_packing),
        cmocka_unit_test(test_bf16_kernels),
        cmocka_unit_test(test_q8_kernels),
        cmocka_unit_test(test_best_kernels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
