/* cuda_erm_absent.c: stands in for cuda_erm.cu in builds without nvcc. Every function of
 * cuda_erm.h exists and fails with DUEL_EDEVICE "built without CUDA", so callers need no #ifdefs. */
#include "cuda_erm.h"

static int cuda_erm_absent(duel_error *err, const char *what) {
    return duel_error_set(err, DUEL_EDEVICE,
                          "%s: built without CUDA (reconfigure with nvcc on the PATH or "
                          "-DDUEL_CUDA=ON)",
                          what);
}

int cuda_erm_create(backend_cuda_context *ctx, const struct erm *model, cuda_erm **out,
                    duel_error *err) {
    (void)ctx, (void)model;
    if (out) *out = NULL;
    return cuda_erm_absent(err, "cuda_erm_create");
}

int cuda_erm_update(cuda_erm *gpu, const struct erm *model, duel_error *err) {
    (void)gpu, (void)model;
    return cuda_erm_absent(err, "cuda_erm_update");
}

int cuda_erm_score(cuda_erm *gpu, const float *features_host, int num_candidates,
                   float *rewards_host, duel_error *err) {
    (void)gpu, (void)features_host, (void)num_candidates, (void)rewards_host;
    return cuda_erm_absent(err, "cuda_erm_score");
}

int cuda_erm_num_heads(const cuda_erm *gpu) {
    (void)gpu;
    return 0;
}

int cuda_erm_d_feat(const cuda_erm *gpu) {
    (void)gpu;
    return 0;
}

void cuda_erm_free(cuda_erm *gpu) { (void)gpu; }
