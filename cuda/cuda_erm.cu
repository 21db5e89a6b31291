/* cuda_erm.cu: batched ERM scoring on the device (cuda/cuda_erm.h). Owns the device copy of one
 * ensemble's parameters (one fp32 block with erm.h's layout, copied verbatim from params.memory)
 * and the activation scratch. Mirrors erm_score step for step so that the CPU function is its
 * reference: layer 1 one GEMM over all E*H hidden units, layer 2 one GEMM per head (here a single
 * strided-batched call), layer 3 bias + ReLU + dot with w3_e + b3_e. All fp32 with
 * CUBLAS_COMPUTE_32F: tensor-core TF32 is never allowed, whatever the handle's math mode.
 * Invariant: params holds exactly num_params floats of a model with `config`'s shape. */
#include <cmath>
#include <cstdlib>

#include "backend_cuda_internal.h"
#include "cuda_erm.h"
#include "erm.h"

struct cuda_erm {
    backend_cuda_context *ctx;
    erm_config config;
    size_t num_params;
    float *params; /* device, num_params floats, erm.h's layout */
    /* Offsets (in floats) of the six views inside params, taken from the host model. */
    size_t off_fc1_weight, off_fc1_bias, off_fc2_weight, off_fc2_bias, off_fc3_weight,
        off_fc3_bias;
    /* Scratch for `capacity` candidates: features [cap][D], h1 and h2 [cap][E*H], rewards [cap][E]. */
    int capacity;
    float *features, *h1, *h2, *rewards;
};

/* One thread per element of h[M][E*H]: h = relu(h + bias[column]). */
__global__ void erm_bias_relu_kernel(float *h, const float *bias, size_t count, size_t width) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = h[i] + bias[i % width];
        h[i] = v > 0.0f ? v : 0.0f;
    }
}

/* One warp per (candidate m, head e): rewards[m*E + e] = sum_j relu(h2[m][e*H + j] + b2[e*H + j])
 * * w3[e*H + j] + b3[e]. ReLU written as erm_score writes it (`v > 0 ? v : 0`), so both treat any
 * odd value the same way; the summation order differs (lane-strided, then a warp tree). */
__global__ void erm_head_output_kernel(float *rewards, const float *h2, const float *b2,
                                       const float *w3, const float *b3, int M, int E, int H) {
    const int warps_per_block = blockDim.x / 32;
    const long long pair = (long long)blockIdx.x * warps_per_block + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (pair >= (long long)M * E) return; /* whole warp leaves together */
    const int m = (int)(pair / E), e = (int)(pair % E);
    const size_t width = (size_t)E * H;
    const float *row = h2 + (size_t)m * width + (size_t)e * H;
    const float *bias = b2 + (size_t)e * H;
    const float *w = w3 + (size_t)e * H;
    float acc = 0.0f;
    for (int j = lane; j < H; j += 32) {
        float v = row[j] + bias[j];
        acc += (v > 0.0f ? v : 0.0f) * w[j];
    }
    acc = warp_sum(acc);
    if (lane == 0) rewards[(size_t)m * E + e] = acc + b3[e];
}

static int cuda_erm_check_model(const erm *model, duel_error *err) {
    if (!model) return duel_error_set(err, DUEL_EINVAL, "cuda_erm: model is NULL");
    const erm_config *c = &model->config;
    if (c->num_heads < 1 || c->num_heads > ERM_MAX_NUM_HEADS || c->hidden < 1 ||
        c->hidden > ERM_MAX_HIDDEN || c->d_feat < 1 || c->d_feat > ERM_MAX_D_FEAT)
        return duel_error_set(err, DUEL_EINVAL,
                              "cuda_erm: model shape num_heads=%d d_feat=%d hidden=%d outside the "
                              "limits of erm.h",
                              c->num_heads, c->d_feat, c->hidden);
    if (!model->params.memory || model->num_params == 0)
        return duel_error_set(err, DUEL_EINVAL, "cuda_erm: model has no parameters");
    return DUEL_OK;
}

static void cuda_erm_free_scratch(cuda_erm *g) {
    backend_cuda_free(g->ctx, g->features);
    backend_cuda_free(g->ctx, g->h1);
    backend_cuda_free(g->ctx, g->h2);
    backend_cuda_free(g->ctx, g->rewards);
    g->features = g->h1 = g->h2 = g->rewards = NULL;
    g->capacity = 0;
}

/* Grows the scratch to hold M candidates (never shrinks). */
static int cuda_erm_reserve(cuda_erm *g, int M, duel_error *err) {
    if (M <= g->capacity) return DUEL_OK;
    cuda_erm_free_scratch(g);
    const size_t D = (size_t)g->config.d_feat, E = (size_t)g->config.num_heads;
    const size_t width = E * (size_t)g->config.hidden;
    int rc = backend_cuda_alloc(g->ctx, (size_t)M * D * sizeof(float), (void **)&g->features, err);
    if (!rc) rc = backend_cuda_alloc(g->ctx, (size_t)M * width * sizeof(float), (void **)&g->h1, err);
    if (!rc) rc = backend_cuda_alloc(g->ctx, (size_t)M * width * sizeof(float), (void **)&g->h2, err);
    if (!rc) rc = backend_cuda_alloc(g->ctx, (size_t)M * E * sizeof(float), (void **)&g->rewards, err);
    if (rc) {
        cuda_erm_free_scratch(g);
        return rc;
    }
    g->capacity = M;
    return DUEL_OK;
}

extern "C" int cuda_erm_create(backend_cuda_context *ctx, const erm *model, cuda_erm **out,
                               duel_error *err) {
    if (!out) return duel_error_set(err, DUEL_EINVAL, "cuda_erm_create: no output pointer");
    *out = NULL;
    if (!ctx)
        return duel_error_set(err, DUEL_EINVAL,
                              "cuda_erm_create: no CUDA context (backend_cuda_context_create "
                              "failed or was not called)");
    int rc = cuda_erm_check_model(model, err);
    if (rc) return rc;
    rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    cuda_erm *g = (cuda_erm *)calloc(1, sizeof *g);
    if (!g) return duel_error_set(err, DUEL_ENOMEM, "cuda_erm_create: out of host memory");
    g->ctx = ctx;
    g->config = model->config;
    g->num_params = model->num_params;
    const float *base = model->params.memory;
    g->off_fc1_weight = (size_t)(model->params.fc1_weight - base);
    g->off_fc1_bias = (size_t)(model->params.fc1_bias - base);
    g->off_fc2_weight = (size_t)(model->params.fc2_weight - base);
    g->off_fc2_bias = (size_t)(model->params.fc2_bias - base);
    g->off_fc3_weight = (size_t)(model->params.fc3_weight - base);
    g->off_fc3_bias = (size_t)(model->params.fc3_bias - base);
    rc = backend_cuda_alloc(ctx, g->num_params * sizeof(float), (void **)&g->params, err);
    if (!rc) rc = cuda_erm_update(g, model, err);
    if (rc) {
        cuda_erm_free(g);
        return rc;
    }
    *out = g;
    return DUEL_OK;
}

extern "C" int cuda_erm_update(cuda_erm *g, const erm *model, duel_error *err) {
    if (!g) return duel_error_set(err, DUEL_EINVAL, "cuda_erm_update: no device model");
    int rc = cuda_erm_check_model(model, err);
    if (rc) return rc;
    const erm_config *c = &model->config;
    if (c->num_heads != g->config.num_heads || c->d_feat != g->config.d_feat ||
        c->hidden != g->config.hidden || model->num_params != g->num_params)
        return duel_error_set(err, DUEL_EINVAL,
                              "cuda_erm_update: model shape num_heads=%d d_feat=%d hidden=%d "
                              "differs from the uploaded num_heads=%d d_feat=%d hidden=%d",
                              c->num_heads, c->d_feat, c->hidden, g->config.num_heads,
                              g->config.d_feat, g->config.hidden);
    rc = backend_cuda_use(g->ctx, err);
    if (rc) return rc;
    return backend_cuda_copy_to_device(g->ctx, g->params, model->params.memory,
                                       g->num_params * sizeof(float), err);
}

extern "C" int cuda_erm_score(cuda_erm *g, const float *features_host, int M,
                              float *rewards_host, duel_error *err) {
    if (!g || !features_host || !rewards_host)
        return duel_error_set(err, DUEL_EINVAL, "cuda_erm_score: NULL argument");
    if (M < 1 || M > ERM_MAX_CANDIDATES)
        return duel_error_set(err, DUEL_EINVAL, "cuda_erm_score: %d candidates outside 1..%d", M,
                              ERM_MAX_CANDIDATES);
    const int E = g->config.num_heads, H = g->config.hidden, D = g->config.d_feat;
    /* erm_score's contract, same message: non-finite features are refused before any work. */
    for (int i = 0; i < M; i++)
        for (int k = 0; k < D; k++) {
            float v = features_host[(size_t)i * D + k];
            if (!std::isfinite(v))
                return duel_error_set(err, DUEL_EINVAL,
                                      "cuda_erm_score: candidate %d feature %d is %s", i, k,
                                      std::isnan(v) ? "NaN" : "infinite");
        }
    int rc = backend_cuda_use(g->ctx, err);
    if (!rc) rc = cuda_erm_reserve(g, M, err);
    if (!rc)
        rc = backend_cuda_copy_to_device(g->ctx, g->features, features_host,
                                         (size_t)M * D * sizeof(float), err);
    if (rc) return rc;

    const int width = E * H; /* <= ERM_MAX_NUM_HEADS * ERM_MAX_HIDDEN = 2^20: fits an int */
    const float one = 1.0f, zero = 0.0f;
    cublasHandle_t handle = g->ctx->cublas;
    const float *p = g->params;
    /* Layer 1, row-major h1[M][E*H] = X[M][D] W1[E*H][D]^T; column-major that is
     * h1^T (width x M, ld width) = op_T(W1 as D x width, ld D) * X^T (D x M, ld D). */
    cublasStatus_t cs = cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, width, M, D, &one,
                                     p + g->off_fc1_weight, CUDA_R_32F, D, g->features, CUDA_R_32F,
                                     D, &zero, g->h1, CUDA_R_32F, width, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT);
    if (cs != CUBLAS_STATUS_SUCCESS) return backend_cuda_cublas_fail(err, cs, "cublasGemmEx (erm fc1)");
    const size_t count = (size_t)M * width;
    const int threads = 256;
    erm_bias_relu_kernel<<<backend_cuda_blocks_for(count, threads, g->ctx->sm_count), threads, 0,
                           g->ctx->stream>>>(g->h1, p + g->off_fc1_bias, count, (size_t)width);
    rc = backend_cuda_check_launch(err, "erm_bias_relu");
    if (rc) return rc;
    /* Layer 2, head e: row-major h2[:, e*H:(e+1)*H] = h1[:, e*H:(e+1)*H] W2_e[H][H]^T. Column-major
     * per batch e: C_e (H x M, ld width) = op_T(W2_e as H x H, ld H) * B_e (H x M, ld width), with
     * strides H*H for the weights and H (a column block of the same rows) for B and C. */
    cs = cublasGemmStridedBatchedEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, H, M, H, &one,
                                    p + g->off_fc2_weight, CUDA_R_32F, H, (long long)H * H, g->h1,
                                    CUDA_R_32F, width, (long long)H, &zero, g->h2, CUDA_R_32F,
                                    width, (long long)H, E, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    if (cs != CUBLAS_STATUS_SUCCESS)
        return backend_cuda_cublas_fail(err, cs, "cublasGemmStridedBatchedEx (erm fc2)");
    /* Layer 3: one warp per (candidate, head). */
    const int warps = threads / 32;
    const size_t pairs = (size_t)M * E;
    const unsigned blocks = (unsigned)((pairs + warps - 1) / warps);
    erm_head_output_kernel<<<blocks, threads, 0, g->ctx->stream>>>(
        g->rewards, g->h2, p + g->off_fc2_bias, p + g->off_fc3_weight, p + g->off_fc3_bias, M, E,
        H);
    rc = backend_cuda_check_launch(err, "erm_head_output");
    if (rc) return rc;
    return backend_cuda_copy_to_host(g->ctx, rewards_host, g->rewards,
                                     (size_t)M * E * sizeof(float), err);
}

extern "C" int cuda_erm_num_heads(const cuda_erm *g) { return g ? g->config.num_heads : 0; }
extern "C" int cuda_erm_d_feat(const cuda_erm *g) { return g ? g->config.d_feat : 0; }

extern "C" void cuda_erm_free(cuda_erm *g) {
    if (!g) return;
    if (backend_cuda_use(g->ctx, NULL) == DUEL_OK) cudaStreamSynchronize(g->ctx->stream);
    cuda_erm_free_scratch(g);
    backend_cuda_free(g->ctx, g->params);
    free(g);
}
