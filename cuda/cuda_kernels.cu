/* cuda_kernels.cu: the CUDA backend's elementwise and per-row kernels with their host launchers:
 * embedding gather, RMSNorm and LayerNorm (with the fused residual add), RoPE (full and partial),
 * SwiGLU, GELU, KV writes by slot and the block copy of copy-on-write. Each mirrors a function
 * of inference/cpu_ops.c (same layouts) and is tested against it in tests/cuda/test_cuda_kernels.c.
 * Kept straightforward: grid-stride loops, one thread block per row for the norms, statistics
 * accumulated in double as the CPU does.
 * UNVERIFIED: compiled in CI, never run on a GPU yet (docs/CUDA.md). */
#include <math.h>

#include "backend_cuda_internal.h"

#define ELEMENTWISE_THREADS 256
#define NORM_THREADS 256

#define GRID_STRIDE(i, total)                                                                    \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (total);                  \
         i += (size_t)gridDim.x * blockDim.x)

static unsigned grid_for(const backend_cuda_context *ctx, size_t count) {
    return backend_cuda_blocks_for(count, ELEMENTWISE_THREADS, ctx->sm_count);
}

__device__ __forceinline__ void store_out(void *out, size_t i, float v, int dtype) {
    if (dtype == BACKEND_CUDA_BF16)
        ((uint16_t *)out)[i] = bf16_from_float(v);
    else
        ((float *)out)[i] = v;
}

/* ---- embedding ------------------------------------------------------------------------------- */

__global__ void embedding_kernel(float *out, const int32_t *tokens, int n, const uint16_t *table,
                                 int vocab, int dim) {
    GRID_STRIDE(i, (size_t)n * dim) {
        size_t t = i / dim, d = i % dim;
        int32_t tok = tokens[t];
        out[i] = (tok >= 0 && tok < vocab) ? bf16_load(table + (size_t)tok * dim + d) : NAN;
    }
}

extern "C" int backend_cuda_embedding(backend_cuda_context *ctx, float *out, const int32_t *tokens,
                                      int n, const uint16_t *table, int vocab, int dim,
                                      duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(out && tokens && table, err, "CUDA embedding: NULL pointer");
    BACKEND_CUDA_REQUIRE(n > 0 && vocab > 0 && dim > 0, err,
                         "CUDA embedding: bad shape n=%d vocab=%d dim=%d", n, vocab, dim);
    embedding_kernel<<<grid_for(ctx, (size_t)n * dim), ELEMENTWISE_THREADS, 0, ctx->stream>>>(
        out, tokens, n, table, vocab, dim);
    return backend_cuda_check_launch(err, "embedding");
}

/* ---- norms ----------------------------------------------------------------------------------- */

/* Element i of the residual row x (row `row` of the stream) after adding delta's, which is
 * written back so that the norm's later passes read the sum; delta NULL: no add. */
__device__ __forceinline__ float residual_add(float *x, const float *delta, size_t row, int dim,
                                              int i) {
    float v = x[i];
    if (delta) {
        v += delta[row * dim + i];
        x[i] = v;
    }
    return v;
}

/* One block per row. Pass 1 applies the residual add (each thread owns the same elements in every
 * pass, so it reads back what it wrote) and accumulates statistics in double. */
__global__ void rmsnorm_kernel(void *out, int out_dtype, float *residual, const float *delta,
                               const uint16_t *weight, int dim, float eps) {
    __shared__ double shared[32];
    size_t row = blockIdx.x;
    float *x = residual + row * dim;
    double ss = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = residual_add(x, delta, row, dim, i);
        ss += (double)v * v;
    }
    ss = block_sum_double(ss, shared);
    float r = (float)(1.0 / sqrt(ss / dim + eps));
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        store_out(out, row * dim + i, bf16_load(weight + i) * (x[i] * r), out_dtype);
}

__global__ void layernorm_kernel(void *out, int out_dtype, float *residual, const float *delta,
                                 const uint16_t *weight, const uint16_t *bias, int dim,
                                 float eps) {
    __shared__ double shared[32];
    size_t row = blockIdx.x;
    float *x = residual + row * dim;
    double sum = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) sum += residual_add(x, delta, row, dim, i);
    double mean = block_sum_double(sum, shared) / dim;
    double var = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        double d = x[i] - mean;
        var += d * d;
    }
    var = block_sum_double(var, shared) / dim;
    float m = (float)mean, r = (float)(1.0 / sqrt(var + eps));
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        store_out(out, row * dim + i, (x[i] - m) * r * bf16_load(weight + i) + bf16_load(bias + i),
                  out_dtype);
}

static int norm_args(backend_cuda_context *ctx, const void *out, backend_cuda_dtype out_dtype,
                     const float *residual, const uint16_t *weight, int n, int dim,
                     const char *name, duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(out && residual && weight, err, "CUDA %s: NULL pointer", name);
    BACKEND_CUDA_REQUIRE(out != (const void *)residual, err,
                         "CUDA %s: out must not alias the residual", name);
    BACKEND_CUDA_REQUIRE(out_dtype == BACKEND_CUDA_F32 || out_dtype == BACKEND_CUDA_BF16, err,
                         "CUDA %s: bad output dtype %d", name, (int)out_dtype);
    BACKEND_CUDA_REQUIRE(n > 0 && dim > 0, err, "CUDA %s: bad shape n=%d dim=%d", name, n, dim);
    return DUEL_OK;
}

extern "C" int backend_cuda_rmsnorm(backend_cuda_context *ctx, void *out,
                                    backend_cuda_dtype out_dtype, float *residual,
                                    const float *delta, const uint16_t *weight, int n, int dim,
                                    float eps, duel_error *err) {
    int rc = norm_args(ctx, out, out_dtype, residual, weight, n, dim, "rmsnorm", err);
    if (rc) return rc;
    rmsnorm_kernel<<<n, NORM_THREADS, 0, ctx->stream>>>(out, out_dtype, residual, delta, weight,
                                                         dim, eps);
    return backend_cuda_check_launch(err, "rmsnorm");
}

extern "C" int backend_cuda_layernorm(backend_cuda_context *ctx, void *out,
                                      backend_cuda_dtype out_dtype, float *residual,
                                      const float *delta, const uint16_t *weight,
                                      const uint16_t *bias, int n, int dim, float eps,
                                      duel_error *err) {
    int rc = norm_args(ctx, out, out_dtype, residual, weight, n, dim, "layernorm", err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(bias, err, "CUDA layernorm: NULL bias");
    layernorm_kernel<<<n, NORM_THREADS, 0, ctx->stream>>>(out, out_dtype, residual, delta, weight,
                                                           bias, dim, eps);
    return backend_cuda_check_launch(err, "layernorm");
}

/* ---- RoPE ------------------------------------------------------------------------------------ */

/* One thread per rotated pair (t, h, i). */
__global__ void rope_kernel(float *x, int n, int stride, int num_heads, int head_dim, int half,
                            const int32_t *positions, const double *inv_freq) {
    GRID_STRIDE(k, (size_t)n * num_heads * half) {
        int i = (int)(k % half);
        size_t th = k / half;
        int h = (int)(th % num_heads);
        size_t t = th / num_heads;
        double s, c;
        sincos((double)positions[t] * inv_freq[i], &s, &c);
        float cf = (float)c, sf = (float)s;
        float *v = x + t * stride + (size_t)h * head_dim;
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * cf - x2 * sf;
        v[i + half] = x2 * cf + x1 * sf;
    }
}

extern "C" int backend_cuda_rope(backend_cuda_context *ctx, float *x, int n, int stride,
                                 int num_heads, int head_dim, int rotary_dim,
                                 const int32_t *positions, const double *inv_freq,
                                 duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(x && positions && inv_freq, err, "CUDA rope: NULL pointer");
    BACKEND_CUDA_REQUIRE(n > 0 && num_heads > 0 && head_dim > 0, err,
                         "CUDA rope: bad shape n=%d heads=%d head_dim=%d", n, num_heads, head_dim);
    BACKEND_CUDA_REQUIRE(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= head_dim, err,
                         "CUDA rope: rotary_dim %d must be even and in (0, head_dim=%d]",
                         rotary_dim, head_dim);
    BACKEND_CUDA_REQUIRE(stride >= num_heads * head_dim || n == 1, err,
                         "CUDA rope: stride %d shorter than %d heads of %d", stride, num_heads,
                         head_dim);
    int half = rotary_dim / 2;
    rope_kernel<<<grid_for(ctx, (size_t)n * num_heads * half), ELEMENTWISE_THREADS, 0,
                  ctx->stream>>>(x, n, stride, num_heads, head_dim, half, positions, inv_freq);
    return backend_cuda_check_launch(err, "rope");
}

/* ---- MLP activations ------------------------------------------------------------------------- */

__global__ void swiglu_kernel(uint16_t *out, const float *gate_up, int n, int ffn) {
    GRID_STRIDE(i, (size_t)n * ffn) {
        size_t t = i / ffn, j = i % ffn;
        float g = gate_up[t * 2 * ffn + j], u = gate_up[t * 2 * ffn + ffn + j];
        out[i] = bf16_from_float(g / (1.0f + expf(-g)) * u);
    }
}

extern "C" int backend_cuda_swiglu(backend_cuda_context *ctx, uint16_t *out, const float *gate_up,
                                   int n, int ffn, duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(out && gate_up, err, "CUDA swiglu: NULL pointer");
    BACKEND_CUDA_REQUIRE(n > 0 && ffn > 0, err, "CUDA swiglu: bad shape n=%d ffn=%d", n, ffn);
    swiglu_kernel<<<grid_for(ctx, (size_t)n * ffn), ELEMENTWISE_THREADS, 0, ctx->stream>>>(
        out, gate_up, n, ffn);
    return backend_cuda_check_launch(err, "swiglu");
}

__global__ void gelu_kernel(uint16_t *out, const float *in, size_t count, int tanh_approx) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    const float r = 0.7071067811865476f; /* 1/sqrt(2) */
    GRID_STRIDE(i, count) {
        float v = in[i];
        float y = tanh_approx ? 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)))
                              : 0.5f * v * (1.0f + erff(v * r));
        out[i] = bf16_from_float(y);
    }
}

extern "C" int backend_cuda_gelu(backend_cuda_context *ctx, uint16_t *out, const float *in,
                                 size_t count, bool tanh_approx, duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(out && in, err, "CUDA gelu: NULL pointer");
    if (count == 0) return DUEL_OK;
    gelu_kernel<<<grid_for(ctx, count), ELEMENTWISE_THREADS, 0, ctx->stream>>>(out, in, count,
                                                                              tanh_approx ? 1 : 0);
    return backend_cuda_check_launch(err, "gelu");
}

/* ---- KV cache writes and copies -------------------------------------------------------------- */

static int kv_layer_args(const backend_cuda_kv_layer *c, const char *name, duel_error *err) {
    BACKEND_CUDA_REQUIRE(c && c->keys && c->values, err, "CUDA %s: no KV cache", name);
    BACKEND_CUDA_REQUIRE(c->num_blocks > 0 && c->num_kv_heads > 0 && c->block_size > 0 &&
                             c->head_dim > 0,
                         err, "CUDA %s: bad KV cache shape blocks=%d kv_heads=%d block_size=%d "
                              "head_dim=%d",
                         name, c->num_blocks, c->num_kv_heads, c->block_size, c->head_dim);
    return DUEL_OK;
}

__global__ void kv_write_kernel(uint16_t *keys, uint16_t *values, const float *k, const float *v,
                                int stride, const int32_t *slots, int n, int kv_heads,
                                int block_size, int head_dim, long long num_slots) {
    GRID_STRIDE(i, (size_t)n * kv_heads * head_dim) {
        int d = (int)(i % head_dim);
        size_t tg = i / head_dim;
        int g = (int)(tg % kv_heads);
        size_t t = tg / kv_heads;
        long long slot = slots[t];
        if (slot < 0 || slot >= num_slots) continue;
        long long b = slot / block_size, s = slot % block_size;
        size_t dst = (((size_t)b * kv_heads + g) * block_size + s) * head_dim + d;
        size_t src = t * stride + (size_t)g * head_dim + d;
        keys[dst] = bf16_from_float(k[src]);
        values[dst] = bf16_from_float(v[src]);
    }
}

extern "C" int backend_cuda_kv_write(backend_cuda_context *ctx, const backend_cuda_kv_layer *cache,
                                     const float *k, const float *v, int stride,
                                     const int32_t *slots, int n, duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    rc = kv_layer_args(cache, "kv_write", err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(k && v && slots, err, "CUDA kv_write: NULL pointer");
    BACKEND_CUDA_REQUIRE(n > 0, err, "CUDA kv_write: n=%d", n);
    BACKEND_CUDA_REQUIRE(stride >= cache->num_kv_heads * cache->head_dim || n == 1, err,
                         "CUDA kv_write: stride %d shorter than %d kv heads of %d", stride,
                         cache->num_kv_heads, cache->head_dim);
    size_t count = (size_t)n * cache->num_kv_heads * cache->head_dim;
    kv_write_kernel<<<grid_for(ctx, count), ELEMENTWISE_THREADS, 0, ctx->stream>>>(
        cache->keys, cache->values, k, v, stride, slots, n, cache->num_kv_heads, cache->block_size,
        cache->head_dim, (long long)cache->num_blocks * cache->block_size);
    return backend_cuda_check_launch(err, "kv_write");
}

extern "C" int backend_cuda_kv_copy_blocks(backend_cuda_context *ctx,
                                           const backend_cuda_kv_layer *layers, int num_layers,
                                           const int32_t *pairs_host, int num_pairs,
                                           duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(layers && num_layers > 0, err, "CUDA kv_copy_blocks: no layers");
    BACKEND_CUDA_REQUIRE(num_pairs >= 0 && (pairs_host || num_pairs == 0), err,
                         "CUDA kv_copy_blocks: no pairs");
    /* Everything is validated before the first copy, so a bad pair changes nothing. */
    for (int l = 0; l < num_layers; l++) {
        const backend_cuda_kv_layer *c = &layers[l];
        rc = kv_layer_args(c, "kv_copy_blocks", err);
        if (rc) return duel_error_prefix(err, "layer %d", l);
        for (int p = 0; p < num_pairs; p++) {
            int32_t src = pairs_host[2 * p], dst = pairs_host[2 * p + 1];
            BACKEND_CUDA_REQUIRE(src >= 0 && src < c->num_blocks && dst >= 0 &&
                                     dst < c->num_blocks && src != dst,
                                 err,
                                 "CUDA kv_copy_blocks: layer %d: bad pair %d (%d -> %d) for %d "
                                 "blocks",
                                 l, p, src, dst, c->num_blocks);
        }
    }
    for (int l = 0; l < num_layers; l++) {
        const backend_cuda_kv_layer *c = &layers[l];
        size_t block_elems = (size_t)c->num_kv_heads * c->block_size * c->head_dim;
        for (int p = 0; p < num_pairs; p++) {
            size_t src = (size_t)pairs_host[2 * p] * block_elems;
            size_t dst = (size_t)pairs_host[2 * p + 1] * block_elems;
            BACKEND_CUDA_TRY(cudaMemcpyAsync(c->keys + dst, c->keys + src,
                                             block_elems * sizeof(uint16_t),
                                             cudaMemcpyDeviceToDevice, ctx->stream),
                             err, "copy of a K block");
            BACKEND_CUDA_TRY(cudaMemcpyAsync(c->values + dst, c->values + src,
                                             block_elems * sizeof(uint16_t),
                                             cudaMemcpyDeviceToDevice, ctx->stream),
                             err, "copy of a V block");
        }
    }
    return DUEL_OK;
}
