/* test_helpers.h: what many tests need: cmocka includes, relative error against a reference,
 * paths of the source and build trees (from ctest's environment), temporary directories. */
#ifndef DUEL_TEST_HELPERS_H
#define DUEL_TEST_HELPERS_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

/* ||out - ref|| / ||ref|| in double; NaN anywhere gives INFINITY so that it never passes. */
static inline double test_relative_error(const float *out, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(out[i]) || isnan(ref[i])) return INFINITY;
        double d = (double)out[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

static inline double test_relative_error_f32(const float *out, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(out[i]) || isnan(ref[i])) return INFINITY;
        double d = (double)out[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

static inline const char *test_env(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

/* A fresh directory under $DUEL_TEST_TMP (or /tmp); path written into out. */
static inline void test_make_temp_dir(const char *tag, char *out, size_t cap) {
    const char *base = test_env("DUEL_TEST_TMP", "/tmp");
    mkdir(base, 0755);
    snprintf(out, cap, "%s/%s-XXXXXX", base, tag);
    if (!mkdtemp(out)) {
        fprintf(stderr, "mkdtemp %s failed\n", out);
        abort();
    }
}

static inline void test_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len) assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

#endif
