/* cuda_compute.cu: the CUDA compute backend (cuda_compute.h) but its forward pass
 * (cuda_forward.cu): the provider (probe, create), the device KV storage of the engine's pool and
 * its copy-on-write copies, arms (weights uploaded in bf16), the step's logits, sampling on the
 * device, ERM scoring (cuda_erm.h), and the small row kernels both files use.
 *
 * Copy-on-write: the pool records (src, dst) pairs in the order it made them; a later pair may
 * read a block an earlier one wrote or overwrite one an earlier one read, so the pairs are cut
 * into waves in which no block is both written and read or written twice, and each wave is one
 * kernel over all its pairs and all layers.
 *
 * UNVERIFIED: compiled in every CUDA build, never run on a GPU yet (docs/CUDA.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_compute_internal.h"

#define ROW_THREADS 256

/* ---- buffers ------------------------------------------------------------------------------ */

int cuda_buffer_reserve(cuda_compute *c, cuda_buffer *buf, size_t bytes, duel_error *err) {
    if (bytes <= buf->bytes) return DUEL_OK;
    size_t grown = buf->bytes ? buf->bytes * 2 : 4096;
    if (grown < bytes) grown = bytes;
    BACKEND_CUDA_TRY(cudaStreamSynchronize(c->ctx->stream), err, "cudaStreamSynchronize");
    if (buf->ptr) cudaFree(buf->ptr);
    buf->ptr = NULL;
    buf->bytes = 0;
    int rc = backend_cuda_alloc(c->ctx, grown, &buf->ptr, err);
    if (rc) return rc;
    buf->bytes = grown;
    c->generation++;
    return DUEL_OK;
}

void cuda_buffer_free(cuda_buffer *buf) {
    if (buf->ptr) cudaFree(buf->ptr);
    buf->ptr = NULL;
    buf->bytes = 0;
}

/* ---- row kernels -------------------------------------------------------------------------- */

__global__ void rows_gather_kernel(float *dst, const float *src, int src_stride, int cols,
                                   const int32_t *idx, int n) {
    size_t total = (size_t)n * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / cols, k = i % cols;
        dst[i] = src[(size_t)idx[r] * src_stride + k];
    }
}

__global__ void rows_scatter_kernel(float *dst, int dst_stride, const float *src, int cols,
                                    const int32_t *idx, int n) {
    size_t total = (size_t)n * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / cols, k = i % cols;
        int32_t to = idx[r];
        if (to >= 0) dst[(size_t)to * dst_stride + k] = src[i];
    }
}

__global__ void to_bf16_kernel(uint16_t *dst, const float *src, size_t count) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = bf16_from_float(src[i]);
}

/* One block per output: max, then the sum of exponentials in double, as cpu_log_sum_exp. */
__global__ void row_logprob_kernel(double *out, const float *rows, int stride, int cols,
                                   const int32_t *row_idx, const int32_t *tokens) {
    __shared__ double shared[32];
    __shared__ float max_shared[32];
    int i = blockIdx.x;
    const float *row = rows + (size_t)(row_idx ? row_idx[i] : i) * stride;
    float m = -INFINITY;
    for (int k = threadIdx.x; k < cols; k += blockDim.x) m = fmaxf(m, row[k]);
    m = warp_max(m);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) max_shared[warp] = m;
    __syncthreads();
    m = lane < warps ? max_shared[lane] : -INFINITY;
    m = warp_max(m);
    double s = 0;
    for (int k = threadIdx.x; k < cols; k += blockDim.x) s += exp((double)row[k] - (double)m);
    s = block_sum_double(s, shared);
    if (threadIdx.x == 0) {
        int t = tokens[i];
        out[i] = (t >= 0 && t < cols) ? (double)row[t] - (double)m - log(s) : NAN;
    }
}

static unsigned grid_of(const cuda_compute *c, size_t count) {
    return backend_cuda_blocks_for(count, ROW_THREADS, c->ctx->sm_count);
}

int cuda_rows_gather(cuda_compute *c, float *dst, const float *src, int src_stride, int cols,
                     const int32_t *idx, int n, duel_error *err) {
    if (n <= 0) return DUEL_OK;
    rows_gather_kernel<<<grid_of(c, (size_t)n * cols), ROW_THREADS, 0, c->ctx->stream>>>(
        dst, src, src_stride, cols, idx, n);
    return backend_cuda_check_launch(err, "rows_gather");
}

int cuda_rows_scatter(cuda_compute *c, float *dst, int dst_stride, const float *src, int cols,
                      const int32_t *idx, int n, duel_error *err) {
    if (n <= 0) return DUEL_OK;
    rows_scatter_kernel<<<grid_of(c, (size_t)n * cols), ROW_THREADS, 0, c->ctx->stream>>>(
        dst, dst_stride, src, cols, idx, n);
    return backend_cuda_check_launch(err, "rows_scatter");
}

int cuda_to_bf16(cuda_compute *c, uint16_t *dst, const float *src, size_t count, duel_error *err) {
    if (count == 0) return DUEL_OK;
    to_bf16_kernel<<<grid_of(c, count), ROW_THREADS, 0, c->ctx->stream>>>(dst, src, count);
    return backend_cuda_check_launch(err, "to_bf16");
}

int cuda_row_logprob(cuda_compute *c, double *out, const float *rows, int stride, int cols,
                     const int32_t *row_idx, const int32_t *tokens, int n, duel_error *err) {
    if (n <= 0) return DUEL_OK;
    row_logprob_kernel<<<n, ROW_THREADS, 0, c->ctx->stream>>>(out, rows, stride, cols, row_idx,
                                                              tokens);
    return backend_cuda_check_launch(err, "row_logprob");
}

/* ---- the pool ----------------------------------------------------------------------------- */

static int cc_pool_prepare(compute_backend *b, kv_pool_params *params, duel_error *err) {
    (void)b, (void)err;
    params->allocate_storage = false;
    params->record_copies = true;
    params->bytes_per_element = 2; /* bf16 K/V: the budget holds twice the f32 blocks */
    return DUEL_OK;
}

static void cc_pool_detach(compute_backend *b, kv_pool *pool) {
    cuda_compute *c = (cuda_compute *)b;
    (void)pool;
    cuda_graphs_clear(c, -1); /* they hold the cache's addresses */
    if (c->kv_memory) {
        cudaStreamSynchronize(c->ctx->stream);
        cudaFree(c->kv_memory);
    }
    c->kv_memory = NULL;
    free(c->kv);
    c->kv = NULL;
    memset(&c->kv_params, 0, sizeof c->kv_params);
}

static int cc_pool_attach(compute_backend *b, kv_pool *pool, duel_error *err) {
    cuda_compute *c = (cuda_compute *)b;
    const kv_pool_params *pp = kv_pool_get_params(pool);
    if (pp->allocate_storage || !pp->record_copies || pp->bytes_per_element != 2)
        return duel_error_set(err, DUEL_EINVAL,
                              "cuda backend: the pool must be prepared by it (bf16 K/V held on "
                              "the device, copies recorded)");
    if (c->kv) cc_pool_detach(b, pool);
    size_t tile = (size_t)pp->num_kv_heads * pp->block_size * pp->head_dim; /* elements */
    size_t per_array = tile * (size_t)pp->num_blocks * sizeof(uint16_t);
    size_t total = per_array * 2 * (size_t)pp->num_layers;
    c->kv = (backend_cuda_kv_layer *)calloc((size_t)pp->num_layers, sizeof *c->kv);
    if (!c->kv) return duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of memory");
    int rc = backend_cuda_alloc(c->ctx, total, &c->kv_memory, err);
    if (rc) {
        free(c->kv);
        c->kv = NULL;
        return duel_error_prefix(err, "KV cache of %d blocks", pp->num_blocks);
    }
    /* Zeros, not garbage: a padded row of a captured decode step reads block 0. */
    BACKEND_CUDA_TRY(cudaMemsetAsync(c->kv_memory, 0, total, c->ctx->stream), err, "cudaMemset KV");
    for (int l = 0; l < pp->num_layers; l++) {
        char *base = (char *)c->kv_memory + 2 * (size_t)l * per_array;
        c->kv[l] = (backend_cuda_kv_layer){(uint16_t *)base, (uint16_t *)(base + per_array),
                                          pp->num_blocks, pp->num_kv_heads, pp->block_size,
                                          pp->head_dim};
    }
    c->kv_params = *pp;
    /* Base pointers of every layer's K and V for the copy kernel. */
    rc = cuda_buffer_reserve(c, &c->copy_ptrs, 2 * (size_t)pp->num_layers * sizeof(uint16_t *), err);
    if (rc) return rc;
    uint16_t **ptrs = (uint16_t **)malloc(2 * (size_t)pp->num_layers * sizeof *ptrs);
    if (!ptrs) return duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of memory");
    for (int l = 0; l < pp->num_layers; l++) {
        ptrs[2 * l] = c->kv[l].keys;
        ptrs[2 * l + 1] = c->kv[l].values;
    }
    rc = backend_cuda_copy_to_device(c->ctx, c->copy_ptrs.ptr, ptrs,
                                     2 * (size_t)pp->num_layers * sizeof *ptrs, err);
    free(ptrs);
    c->generation++;
    return rc;
}

/* Block (pair p, array a = 2 * layer + K/V) of one wave: copies tile elements. */
__global__ void kv_copy_wave_kernel(uint16_t *const *arrays, const int32_t *pairs, size_t tile) {
    int p = blockIdx.x, a = blockIdx.y;
    const uint16_t *src = arrays[a] + (size_t)pairs[2 * p] * tile;
    uint16_t *dst = arrays[a] + (size_t)pairs[2 * p + 1] * tile;
    for (size_t i = threadIdx.x; i < tile; i += blockDim.x) dst[i] = src[i];
}

static bool in_list(const int32_t *list, int n, int32_t v) {
    for (int i = 0; i < n; i++)
        if (list[i] == v) return true;
    return false;
}

static int cc_copy_blocks(compute_backend *b, kv_pool *pool, const int32_t *pairs, int n,
                          duel_error *err) {
    cuda_compute *c = (cuda_compute *)b;
    (void)pool;
    if (!c->kv) return duel_error_set(err, DUEL_EINVAL, "cuda backend: copies without a pool");
    const kv_pool_params *pp = &c->kv_params;
    for (int i = 0; i < n; i++)
        if (pairs[2 * i] < 0 || pairs[2 * i] >= pp->num_blocks || pairs[2 * i + 1] < 0 ||
            pairs[2 * i + 1] >= pp->num_blocks || pairs[2 * i] == pairs[2 * i + 1])
            return duel_error_set(err, DUEL_EINVAL, "cuda backend: copy %d -> %d of %d blocks",
                                  pairs[2 * i], pairs[2 * i + 1], pp->num_blocks);
    int rc = cuda_buffer_reserve(c, &c->copy_pairs, (size_t)n * 2 * sizeof(int32_t), err);
    if (rc) return rc;
    rc = backend_cuda_copy_to_device(c->ctx, c->copy_pairs.ptr, pairs,
                                     (size_t)n * 2 * sizeof(int32_t), err);
    if (rc) return rc;
    int32_t *reads = (int32_t *)malloc((size_t)n * sizeof *reads);
    int32_t *writes = (int32_t *)malloc((size_t)n * sizeof *writes);
    if (!reads || !writes) {
        free(reads), free(writes);
        return duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of memory");
    }
    size_t tile = (size_t)pp->num_kv_heads * pp->block_size * pp->head_dim;
    for (int start = 0; start < n && !rc;) {
        int end = start, nr = 0, nw = 0;
        while (end < n) {
            int32_t src = pairs[2 * end], dst = pairs[2 * end + 1];
            if (in_list(writes, nw, src) || in_list(writes, nw, dst) || in_list(reads, nr, dst))
                break;
            reads[nr++] = src;
            writes[nw++] = dst;
            end++;
        }
        dim3 grid((unsigned)(end - start), (unsigned)(2 * pp->num_layers));
        kv_copy_wave_kernel<<<grid, ROW_THREADS, 0, c->ctx->stream>>>(
            (uint16_t *const *)c->copy_ptrs.ptr, (const int32_t *)c->copy_pairs.ptr + 2 * start,
            tile);
        rc = backend_cuda_check_launch(err, "kv_copy_wave");
        start = end;
    }
    free(reads);
    free(writes);
    return rc;
}

/* ---- arms --------------------------------------------------------------------------------- */

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

static void cc_arm_unload(compute_backend *b, compute_arm *arm) {
    cuda_compute *c = (cuda_compute *)b;
    cuda_graphs_clear(c, arm->id);
    cudaStreamSynchronize(c->ctx->stream);
    if (arm->weights) cudaFree(arm->weights);
    if (arm->inv_freq) cudaFree(arm->inv_freq);
    free(arm->layers);
    free(arm);
}

/* Where tensor t of layer goes in the arm's allocation: its bytes at *offset (advanced), its
 * pointer into *out (NULL for a tensor the model lacks). With base NULL only sizes are summed. */
static int place_tensor(const model *m, model_tensor t, int layer, char *base, size_t *offset,
                        const uint16_t **out, float *stage, uint16_t *stage16,
                        backend_cuda_context *ctx, duel_error *err) {
    int rows = 0, cols = 0;
    model_tensor_shape(m, t, layer, &rows, &cols);
    *out = NULL;
    if (rows == 0) return DUEL_OK;
    size_t count = (size_t)rows * (size_t)cols;
    if (base) {
        int rc = model_tensor_read(m, t, layer, stage, err);
        if (rc) return rc;
        for (size_t i = 0; i < count; i++) stage16[i] = backend_cuda_f32_to_bf16(stage[i]);
        rc = backend_cuda_copy_to_device(ctx, base + *offset, stage16, count * sizeof(uint16_t),
                                         err);
        if (rc) return rc;
        *out = (const uint16_t *)(base + *offset);
    }
    *offset += align256(count * sizeof(uint16_t));
    return DUEL_OK;
}

/* Sizes (base NULL) or uploads every tensor of m into base. */
static int place_all(const model *m, compute_arm *a, char *base, size_t *total, float *stage,
                     uint16_t *stage16, backend_cuda_context *ctx, duel_error *err) {
    size_t off = 0;
    int rc = place_tensor(m, MODEL_TENSOR_EMBEDDING, 0, base, &off, &a->embedding, stage, stage16,
                          ctx, err);
    for (int l = 0; !rc && l < a->config.num_layers; l++) {
        cuda_layer_weights *L = &a->layers[l];
        const uint16_t **dst[] = {&L->attn_norm_w, &L->attn_norm_b, &L->qkv_w, &L->qkv_b,
                                  &L->o_w,         &L->o_b,         &L->mlp_norm_w, &L->mlp_norm_b,
                                  &L->up_w,        &L->up_b,        &L->down_w, &L->down_b};
        for (int t = 0; !rc && t < 12; t++)
            rc = place_tensor(m, (model_tensor)(MODEL_TENSOR_ATTN_NORM_W + t), l, base, &off,
                              dst[t], stage, stage16, ctx, err);
    }
    if (!rc)
        rc = place_tensor(m, MODEL_TENSOR_FINAL_NORM_W, 0, base, &off, &a->final_norm_w, stage,
                          stage16, ctx, err);
    if (!rc)
        rc = place_tensor(m, MODEL_TENSOR_FINAL_NORM_B, 0, base, &off, &a->final_norm_b, stage,
                          stage16, ctx, err);
    if (!rc && !model_head_is_embedding(m))
        rc = place_tensor(m, MODEL_TENSOR_HEAD_W, 0, base, &off, &a->head_w, stage, stage16, ctx,
                          err);
    else if (!rc)
        a->head_w = a->embedding;
    *total = off;
    return rc;
}

static int cc_arm_load(compute_backend *b, model *m, compute_arm **out, duel_error *err) {
    cuda_compute *c = (cuda_compute *)b;
    const model_config *cfg = model_get_config(m);
    if (cfg->head_dim % 2 || cfg->head_dim > BACKEND_CUDA_MAX_HEAD_DIM || cfg->rotary_dim % 2 ||
        cfg->num_heads % cfg->num_kv_heads)
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "cuda backend: head_dim %d (even, at most %d), rotary_dim %d, %d "
                              "heads over %d kv heads",
                              cfg->head_dim, BACKEND_CUDA_MAX_HEAD_DIM, cfg->rotary_dim,
                              cfg->num_heads, cfg->num_kv_heads);
    compute_arm *a = (compute_arm *)calloc(1, sizeof *a);
    if (!a) return duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of memory");
    a->id = ++c->next_arm_id;
    a->config = *cfg;
    a->q_dim = cfg->num_heads * cfg->head_dim;
    a->kv_dim = cfg->num_kv_heads * cfg->head_dim;
    a->qkv_dim = a->q_dim + 2 * a->kv_dim;
    a->neox = cfg->arch == MODEL_ARCH_GPT_NEOX;
    a->up_dim = a->neox ? cfg->intermediate_size : 2 * cfg->intermediate_size;
    a->output_size = model_output_size(m);
    a->parallel_residual = a->neox && cfg->use_parallel_residual;
    a->eps = (float)cfg->norm_eps;
    a->layers = (cuda_layer_weights *)calloc((size_t)cfg->num_layers, sizeof *a->layers);
    int rc = a->layers ? DUEL_OK : duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of memory");
    size_t total = 0, largest = 0;
    if (!rc) rc = place_all(m, a, NULL, &total, NULL, NULL, c->ctx, err);
    for (int t = 0; !rc && t < MODEL_TENSOR_COUNT; t++)
        for (int l = 0; l < cfg->num_layers; l++) {
            int rows = 0, cols = 0;
            model_tensor_shape(m, (model_tensor)t, l, &rows, &cols);
            if ((size_t)rows * cols > largest) largest = (size_t)rows * cols;
        }
    float *stage = NULL;
    uint16_t *stage16 = NULL;
    if (!rc) {
        stage = (float *)malloc(largest * sizeof *stage);
        stage16 = (uint16_t *)malloc(largest * sizeof *stage16);
        if (!stage || !stage16)
            rc = duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of host memory staging %zu "
                                                  "weights", largest);
    }
    if (!rc) rc = backend_cuda_alloc(c->ctx, total, &a->weights, err);
    if (!rc) {
        a->weight_bytes = total;
        rc = place_all(m, a, (char *)a->weights, &total, stage, stage16, c->ctx, err);
    }
    int half = cfg->rotary_dim / 2;
    if (!rc && half > 0) {
        rc = backend_cuda_alloc(c->ctx, (size_t)half * sizeof(double), (void **)&a->inv_freq, err);
        if (!rc)
            rc = backend_cuda_copy_to_device(c->ctx, a->inv_freq, model_rope_inv_freq(m),
                                             (size_t)half * sizeof(double), err);
    }
    free(stage);
    free(stage16);
    if (rc) {
        cc_arm_unload(b, a);
        return rc;
    }
    *out = a;
    return DUEL_OK;
}

/* ---- the step's logits, sampling ---------------------------------------------------------- */

static int cc_step_begin(compute_backend *b, int rows, int vocab, duel_error *err) {
    cuda_compute *c = (cuda_compute *)b;
    int rc = cuda_buffer_reserve(c, &c->logits, (size_t)(rows ? rows : 1) * vocab * sizeof(float),
                                 err);
    if (rc) return rc;
    if (vocab != c->logits_vocab) c->generation++; /* the scatter's stride is in the graphs */
    c->logits_rows = rows;
    c->logits_vocab = vocab;
    return DUEL_OK;
}

static int cc_forward(compute_backend *b, compute_arm *arm, kv_pool *pool,
                      const compute_entry *entries, int n, duel_error *err) {
    return cuda_forward((cuda_compute *)b, arm, pool, entries, n, err);
}

static int cc_read_logits(compute_backend *b, int row, float *out, duel_error *err) {
    cuda_compute *c = (cuda_compute *)b;
    if (row >= c->logits_rows)
        return duel_error_set(err, DUEL_EINVAL, "read_logits: row %d of %d", row, c->logits_rows);
    return backend_cuda_copy_to_host(c->ctx, out,
                                     (const float *)c->logits.ptr + (size_t)row * c->logits_vocab,
                                     (size_t)c->logits_vocab * sizeof(float), err);
}

/* Draws samples[i] for i in idx[0..n) (all of one vocab): their rows gathered into one block,
 * backend_cuda_sample over it. A failure leaves the rngs as they were (restored). */
static int sample_group(cuda_compute *c, compute_sample *samples, const int *idx, int n, int vocab,
                        duel_error *err) {
    int32_t *rows = (int32_t *)malloc((size_t)n * sizeof *rows);
    int32_t *tokens = (int32_t *)malloc((size_t)n * sizeof *tokens);
    float *lps = (float *)malloc((size_t)n * sizeof *lps);
    backend_cuda_sampling *params = (backend_cuda_sampling *)malloc((size_t)n * sizeof *params);
    duel_rng **rngs = (duel_rng **)malloc((size_t)n * sizeof *rngs);
    duel_rng *saved = (duel_rng *)malloc((size_t)n * sizeof *saved);
    int rc = rows && tokens && lps && params && rngs && saved
                 ? DUEL_OK
                 : duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of memory sampling");
    for (int i = 0; !rc && i < n; i++) {
        compute_sample *s = &samples[idx[i]];
        rows[i] = s->logits_row;
        params[i] = (backend_cuda_sampling){s->params->temperature, s->params->top_p,
                                            s->params->top_k};
        rngs[i] = s->rng;
        saved[i] = *s->rng;
    }
    if (!rc) rc = cuda_buffer_reserve(c, &c->sample_idx, (size_t)n * sizeof(int32_t), err);
    if (!rc) rc = cuda_buffer_reserve(c, &c->sample_rows, (size_t)n * vocab * sizeof(float), err);
    if (!rc)
        rc = backend_cuda_copy_to_device(c->ctx, c->sample_idx.ptr, rows, (size_t)n * sizeof *rows,
                                         err);
    if (!rc)
        rc = cuda_rows_gather(c, (float *)c->sample_rows.ptr, (const float *)c->logits.ptr,
                              c->logits_vocab, vocab, (const int32_t *)c->sample_idx.ptr, n, err);
    if (!rc)
        rc = backend_cuda_sample(c->ctx, tokens, lps, (const float *)c->sample_rows.ptr, n, vocab,
                                 params, rngs, err);
    if (rc && rngs && saved)
        for (int i = 0; i < n; i++) *rngs[i] = saved[i];
    for (int i = 0; !rc && i < n; i++) {
        compute_sample *s = &samples[idx[i]];
        s->token = tokens[i];
        s->logprob = lps[i];
        s->status = 0;
    }
    free(rows), free(tokens), free(lps), free(params), free(rngs), free(saved);
    return rc;
}

/* The forced samples: the log-softmax of their rows at their tokens. */
static int sample_forced(cuda_compute *c, compute_sample *samples, const int *idx, int n,
                         duel_error *err) {
    int32_t *ints = (int32_t *)malloc(2 * (size_t)n * sizeof *ints);
    double *lp = (double *)malloc((size_t)n * sizeof *lp);
    int rc = ints && lp ? DUEL_OK : duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of memory");
    int vocab = 0;
    for (int i = 0; !rc && i < n; i++) {
        ints[i] = samples[idx[i]].logits_row;
        ints[n + i] = samples[idx[i]].forced;
        if (samples[idx[i]].vocab > vocab) vocab = samples[idx[i]].vocab;
    }
    if (!rc) rc = cuda_buffer_reserve(c, &c->sample_idx, 2 * (size_t)n * sizeof(int32_t), err);
    if (!rc) rc = cuda_buffer_reserve(c, &c->sample_lp, (size_t)n * sizeof(double), err);
    if (!rc)
        rc = backend_cuda_copy_to_device(c->ctx, c->sample_idx.ptr, ints,
                                         2 * (size_t)n * sizeof *ints, err);
    /* every forced row of a step is one model's: one vocab (the scoring request's) */
    if (!rc)
        rc = cuda_row_logprob(c, (double *)c->sample_lp.ptr, (const float *)c->logits.ptr,
                              c->logits_vocab, vocab, (const int32_t *)c->sample_idx.ptr,
                              (const int32_t *)c->sample_idx.ptr + n, n, err);
    if (!rc)
        rc = backend_cuda_copy_to_host(c->ctx, lp, c->sample_lp.ptr, (size_t)n * sizeof *lp, err);
    for (int i = 0; !rc && i < n; i++) {
        compute_sample *s = &samples[idx[i]];
        s->token = s->forced;
        s->logprob = lp[i];
        s->status = isfinite(lp[i]) ? 0 : DUEL_EFORMAT;
    }
    free(ints);
    free(lp);
    return rc;
}

static int cc_sample(compute_backend *b, compute_sample *samples, int n, duel_error *err) {
    cuda_compute *c = (cuda_compute *)b;
    for (int i = 0; i < n; i++)
        if (samples[i].logits_row >= c->logits_rows || samples[i].vocab > c->logits_vocab)
            return duel_error_set(err, DUEL_EINVAL, "sample %d: row %d of %d, vocab %d of %d", i,
                                  samples[i].logits_row, c->logits_rows, samples[i].vocab,
                                  c->logits_vocab);
    if (n < 1) return DUEL_OK;
    int *idx = (int *)malloc((size_t)n * sizeof *idx);
    bool *done = (bool *)calloc((size_t)n, sizeof *done);
    int rc = idx && done ? DUEL_OK : duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of memory");
    int m = 0;
    for (int i = 0; !rc && i < n; i++)
        if (samples[i].forced >= 0) idx[m++] = i, done[i] = true;
    if (!rc && m) rc = sample_forced(c, samples, idx, m, err);
    /* Drawn samples, one group per vocab size (normally one). */
    for (int i = 0; !rc && i < n; i++) {
        if (done[i]) continue;
        int vocab = samples[i].vocab;
        m = 0;
        for (int j = i; j < n; j++)
            if (!done[j] && samples[j].vocab == vocab) idx[m++] = j, done[j] = true;
        duel_error group_err = {};
        int grc = sample_group(c, samples, idx, m, vocab, &group_err);
        if (grc == DUEL_EFORMAT || grc == DUEL_EINVAL) {
            /* A bad row (NaN logits): draw row by row so that only it fails. */
            for (int k = 0; k < m; k++) {
                duel_error row_err = {};
                int r = sample_group(c, samples, &idx[k], 1, vocab, &row_err);
                if (r == DUEL_EFORMAT || r == DUEL_EINVAL) {
                    samples[idx[k]].status = r;
                    samples[idx[k]].token = -1;
                    if (err) *err = row_err;
                } else if (r) {
                    rc = r;
                    if (err) *err = row_err;
                    break;
                }
            }
        } else if (grc) {
            rc = grc;
            if (err) *err = group_err;
        }
    }
    free(idx);
    free(done);
    return rc;
}

/* ---- ERM ---------------------------------------------------------------------------------- */

static int cc_erm_load(compute_backend *b, const erm *model, compute_erm **out, duel_error *err) {
    cuda_compute *c = (cuda_compute *)b;
    compute_erm *e = (compute_erm *)calloc(1, sizeof *e);
    if (!e) return duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of memory");
    int rc = cuda_erm_create(c->ctx, model, &e->gpu, err);
    if (rc) {
        free(e);
        return rc;
    }
    *out = e;
    return DUEL_OK;
}

static void cc_erm_unload(compute_backend *b, compute_erm *e) {
    (void)b;
    cuda_erm_free(e->gpu);
    free(e);
}

static int cc_erm_score(compute_backend *b, compute_erm *e, const float *features, int M,
                        float *rewards, duel_error *err) {
    (void)b;
    return cuda_erm_score(e->gpu, features, M, rewards, err);
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void cc_destroy(compute_backend *b) {
    cuda_compute *c = (cuda_compute *)b;
    cuda_graphs_clear(c, -1);
    if (c->kv) cc_pool_detach(b, NULL);
    cuda_buffer *bufs[] = {&c->copy_pairs, &c->copy_ptrs, &c->logits,  &c->x,           &c->xb,
                           &c->xb2,        &c->qkv,       &c->att,     &c->up,          &c->act,
                           &c->out_in,     &c->out_norm,  &c->out_bf16, &c->out_logits, &c->tgt_logprob,
                           &c->d_ints,     &c->sample_rows, &c->sample_idx, &c->sample_lp};
    if (c->ctx) cudaStreamSynchronize(c->ctx->stream);
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cuda_buffer_free(bufs[i]);
    if (c->cublas_workspace) cudaFree(c->cublas_workspace);
    free(c->h_ints);
    free(c->h_hidden);
    free(c->h_tgt);
    backend_cuda_context_destroy(c->ctx);
    free(c);
}

static const compute_ops cuda_ops = {
    "cuda",          cc_destroy,   cc_pool_prepare, cc_pool_attach, cc_pool_detach,
    cc_copy_blocks,  cc_arm_load,  cc_arm_unload,   cc_step_begin,  cc_forward,
    cc_sample,       cc_read_logits, cc_erm_load,   cc_erm_unload,  cc_erm_score,
};

static int cc_create(compute_backend **out, duel_error *err) {
    cuda_compute *c = (cuda_compute *)calloc(1, sizeof *c);
    if (!c) return duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of memory");
    c->base.ops = &cuda_ops;
    c->graphs_enabled = getenv("DUEL_CUDA_GRAPHS") == NULL || strcmp(getenv("DUEL_CUDA_GRAPHS"), "0");
    int rc = backend_cuda_context_create(0, 0, &c->ctx, err);
    if (!rc) rc = backend_cuda_alloc(c->ctx, CUDA_CUBLAS_WORKSPACE, &c->cublas_workspace, err);
    if (!rc) {
        cublasStatus_t cs = cublasSetWorkspace(c->ctx->cublas, c->cublas_workspace,
                                               CUDA_CUBLAS_WORKSPACE);
        if (cs != CUBLAS_STATUS_SUCCESS) rc = backend_cuda_cublas_fail(err, cs, "cublasSetWorkspace");
    }
    if (rc) {
        cc_destroy(&c->base);
        return rc;
    }
    *out = &c->base;
    return DUEL_OK;
}

static int cc_probe(char *why, size_t cap) {
    backend_cuda_info info;
    duel_error err = {};
    if (backend_cuda_probe(&info, &err)) {
        snprintf(why, cap, "%s", err.message);
        return 0;
    }
    if (info.device_count < 1) {
        snprintf(why, cap, "no CUDA device: the driver reports none");
        return 0;
    }
    if (info.compute_major < BACKEND_CUDA_MIN_COMPUTE_MAJOR) {
        snprintf(why, cap, "CUDA device 0 (%s) has compute capability %d.%d; %d.0 or newer is needed",
                 info.device_name, info.compute_major, info.compute_minor,
                 BACKEND_CUDA_MIN_COMPUTE_MAJOR);
        return 0;
    }
    return 1;
}

static const compute_provider cuda_provider = {"cuda", true, cc_probe, cc_create};

extern "C" const compute_provider *cuda_compute_provider(void) { return &cuda_provider; }
