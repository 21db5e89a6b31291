/* cuda_compute_absent.c: the CUDA compute provider in builds without nvcc (cuda_compute.h): its
 * probe reports that CUDA was not built in, and create fails with DUEL_EDEVICE saying so, so
 * that engine.backend = cuda gives a clear error and auto falls back to the CPU. */
#include <stdio.h>

#include "cuda_compute.h"

static int absent_probe(char *why, size_t cap) {
    if (why && cap) snprintf(why, cap, "built without CUDA (reconfigure with nvcc on the PATH)");
    return 0;
}

static int absent_create(compute_backend **out, duel_error *err) {
    *out = NULL;
    return duel_error_set(err, DUEL_EDEVICE,
                          "no CUDA device: built without CUDA (reconfigure with nvcc on the PATH "
                          "or -DDUEL_CUDA=ON)");
}

static const compute_provider absent_provider = {"cuda", true, absent_probe, absent_create};

const compute_provider *cuda_compute_provider(void) { return &absent_provider; }
