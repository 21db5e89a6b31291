/* cuda_erm.h: the epistemic reward model (inference/erm.h) scored on a CUDA device: an ensemble's
 * current parameters (theta, not theta_0) are uploaded once, in fp32, then M candidates' feature
 * rows are scored by all E heads at once, with the same contract and output layout as erm_score:
 * features_host [M][d_feat] row-major in, rewards_host [M][E] out (rewards[m*E + e] = r_e(phi_m)).
 *
 * How: layer 1 is one fp32 GEMM over all heads and candidates (the heads share their input), layer
 * 2 one strided-batched GEMM with one batch per head, both cuBLAS with CUBLAS_COMPUTE_32F (no TF32),
 * and two small kernels for bias + ReLU and for the final bias + ReLU + 128 -> 1 dot product.
 *
 * STATUS: compiled in every CUDA build, never run on a GPU yet (docs/CUDA.md says how to run
 * tests/cuda/test_cuda_erm.c on one). In builds without nvcc (cuda_erm_absent.c) every function
 * exists and returns DUEL_EDEVICE "built without CUDA".
 *
 * Errors: 0 or a negative DUEL_E*, err filled. DUEL_EINVAL for bad arguments, a NULL context
 * included (what a caller has when backend_cuda_context_create said "no CUDA device"), and for
 * non-finite features (checked on the host before anything is uploaded, same message as
 * erm_score, rewards untouched); DUEL_ENOMEM / DUEL_EDEVICE naming the CUDA or cuBLAS failure.
 *
 * Ownership: a cuda_erm belongs to the thread that owns its context (it keeps scratch buffers for
 * the activations, grown on demand); it does not keep a pointer to the host erm. */
#ifndef DUEL_CUDA_ERM_H
#define DUEL_CUDA_ERM_H

#include "backend_cuda.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

struct erm; /* inference/erm.h */

typedef struct cuda_erm cuda_erm;

/* Validates model's config, allocates device memory for its parameters and copies theta there.
 * *out is NULL on failure. The context must outlive the cuda_erm. */
int cuda_erm_create(backend_cuda_context *ctx, const struct erm *model, cuda_erm **out,
                    duel_error *err);

/* Copies model's current parameters again (after training steps or a snapshot swap). model must
 * have the same num_heads, d_feat and hidden as the one cuda_erm_create saw: DUEL_EINVAL
 * otherwise, and the device copy is left as it was. */
int cuda_erm_update(cuda_erm *gpu, const struct erm *model, duel_error *err);

/* Scores num_candidates rows (1..ERM_MAX_CANDIDATES) of features_host with every head into
 * rewards_host [M][E]. Synchronous: the rewards are there when it returns. */
int cuda_erm_score(cuda_erm *gpu, const float *features_host, int num_candidates,
                   float *rewards_host, duel_error *err);

/* Heads and feature width of the uploaded model (0 for NULL). */
int cuda_erm_num_heads(const cuda_erm *gpu);
int cuda_erm_d_feat(const cuda_erm *gpu);

/* NULL is a no-op. Frees the device copies and scratch; synchronises the context first. */
void cuda_erm_free(cuda_erm *gpu);

#ifdef __cplusplus
}
#endif

#endif
