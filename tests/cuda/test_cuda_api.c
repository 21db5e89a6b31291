/* test_cuda_api.c: the parts of cuda/backend_cuda.h that need no GPU, so they run in every build:
 * the host bf16 conversions (round to nearest even, exhaustive round trip) and the error contract
 * without a device (a clear DUEL_EDEVICE, never an abort). With a GPU present it checks that a
 * context opens and closes. */
#include "test_helpers.h"

#include <float.h>

#include "backend_cuda.h"

static uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void test_bf16_rounding(void **state) {
    (void)state;
    assert_int_equal(backend_cuda_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(backend_cuda_f32_to_bf16(-2.0f), 0xc000);
    assert_int_equal(backend_cuda_f32_to_bf16(0.0f), 0x0000);
    assert_int_equal(backend_cuda_f32_to_bf16(-0.0f), 0x8000);
    /* Ties go to the even mantissa; anything past the half rounds up. */
    assert_int_equal(backend_cuda_f32_to_bf16(bits_float(0x3f808000u)), 0x3f80);
    assert_int_equal(backend_cuda_f32_to_bf16(bits_float(0x3f818000u)), 0x3f82);
    assert_int_equal(backend_cuda_f32_to_bf16(bits_float(0x3f808001u)), 0x3f81);
    assert_int_equal(backend_cuda_f32_to_bf16(bits_float(0x3f807fffu)), 0x3f80);
    /* Overflow of the largest finite values rounds to infinity, as on the device. */
    assert_int_equal(backend_cuda_f32_to_bf16(bits_float(0x7f7fffffu)), 0x7f80);
    assert_int_equal(backend_cuda_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(backend_cuda_f32_to_bf16(-INFINITY), 0xff80);
    uint16_t nan = backend_cuda_f32_to_bf16(NAN);
    assert_true(isnan(backend_cuda_bf16_to_f32(nan)));
    /* A NaN whose payload sits only in the low bits must not turn into infinity. */
    assert_true(isnan(backend_cuda_bf16_to_f32(backend_cuda_f32_to_bf16(bits_float(0x7f800001u)))));
    /* Every bf16 value survives a round trip through f32. */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float f = backend_cuda_bf16_to_f32((uint16_t)h);
        assert_int_equal(float_bits(f), h << 16);
        if (!isnan(f)) assert_int_equal(backend_cuda_f32_to_bf16(f), h);
    }
    /* Rounding error is at most half an ulp of bf16 (2^-9 relative) on random values. */
    uint64_t x = 12345;
    for (int i = 0; i < 100000; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        float f = bits_float((uint32_t)(x >> 32) & 0xbfffffffu); /* finite, any sign */
        float r = backend_cuda_bf16_to_f32(backend_cuda_f32_to_bf16(f));
        if (fabsf(f) >= FLT_MIN && isfinite(r)) assert_true(fabs((double)r - f) <= ldexp(fabs((double)f), -8));
    }
}

static void test_context_contract(void **state) {
    (void)state;
    backend_cuda_info info;
    duel_error err = {0};
    assert_int_equal(backend_cuda_probe(&info, &err), DUEL_OK);
    backend_cuda_context *ctx = (backend_cuda_context *)1;
    int rc = backend_cuda_context_create(0, 0, &ctx, &err);
    if (info.device_count == 0) {
        assert_int_equal(rc, DUEL_EDEVICE);
        assert_null(ctx);
        assert_true(strstr(err.message, "no CUDA device") || strstr(err.message, "built without CUDA"));
        print_message("no device: context_create says \"%s\"\n", err.message);
    } else {
        assert_int_equal(rc, DUEL_OK);
        assert_non_null(ctx);
        assert_true(strlen(backend_cuda_device_name(ctx)) > 0);
        backend_cuda_context_destroy(ctx);
    }
    /* Launchers never dereference a missing context. */
    duel_error lerr = {0};
    rc = backend_cuda_linear(NULL, NULL, NULL, NULL, NULL, 1, 1, 1, false, &lerr);
    assert_true(rc == DUEL_EINVAL || rc == DUEL_EDEVICE);
    assert_true(strlen(lerr.message) > 0);
    assert_true(backend_cuda_synchronize(NULL, &lerr) < 0);
    backend_cuda_context_destroy(NULL);
    backend_cuda_free(NULL, NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_rounding),
        cmocka_unit_test(test_context_contract),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
