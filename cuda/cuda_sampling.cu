/* cuda_sampling.cu: token sampling on the device, so that only token ids (and log-probabilities)
 * cross to the host. Same semantics and tie-breaking as inference/sampler.c, step by step:
 *   1. sample_prepare_kernel (one block per row): rejects NaN / +inf, finds the argmax (ties to
 *      the lower id, -inf ignored), the log-sum-exp at temperature 1 for the log-probability, and
 *      finishes the rows that need no ranking: greedy, and plain softmax sampling walked in id order;
 *   2. rows with top-k or top-p are ranked by a segmented radix sort (CUB) of 64-bit keys
 *      (descending scaled logit, then ascending id: the CPU's order, independent of sort
 *      stability), in chunks of rows that bound the scratch memory;
 *   3. sample_sorted_kernel (one block per row) keeps the top k, then the shortest prefix whose
 *      mass reaches top_p, and draws from it.
 * The one uniform number per row is drawn on the host from the sequence's own duel_rng, as the
 * CPU sampler draws it, so both backends pick the same token for the same seed (up to rounding
 * at a bucket boundary). Weights and prefix sums are in double, as on the CPU.
 * UNVERIFIED: compiled in CI, never run on a GPU yet (docs/CUDA.md). */
#include <cub/cub.cuh>
#include <limits.h>
#include <math.h>
#include <stdlib.h>

#include "backend_cuda_internal.h"

#define SAMPLE_THREADS 1024
#define SAMPLE_MAX_TEMPERATURE 100.0f /* as sampler.c */
/* Bytes of sort keys (in + out) per chunk of ranked rows. */
#define SAMPLE_SORT_BYTES ((size_t)64 << 20)

enum { SAMPLE_OK = 0, SAMPLE_NAN = 1, SAMPLE_POS_INF = 2, SAMPLE_ALL_MASKED = 3 };

typedef struct sample_row_param {
    float temperature;
    float top_p;
    int top_k;
    int ranked; /* 1: top-k or top-p is active: finished by sample_sorted_kernel */
    double uniform;
} sample_row_param;

/* Per-row results, contiguous so that one copy brings them home. */
typedef struct sample_row_result {
    int32_t token;
    float logprob;
    int32_t status;
    int32_t bad_index;  /* first NaN / +inf logit */
    float max_logit;    /* argmax logit (temperature 1) */
    float pad;
    double log_total;   /* log sum exp(logit - max_logit) */
} sample_row_result;

typedef struct block_shared {
    double sums[SAMPLE_THREADS];
    double reduce[32];
    float best_value[32];
    int best_index[32];
    int claim;
    int first_bad;
    int last_positive;
} block_shared;

/* Lower-id-wins argmax merge of (value, index); index -1 is empty. */
__device__ __forceinline__ void argmax_merge(float &v, int &i, float ov, int oi) {
    if (oi < 0) return;
    if (i < 0 || ov > v || (ov == v && oi < i)) v = ov, i = oi;
}

__device__ int block_argmax(float v, int i, block_shared *sh) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __shfl_xor_sync(0xffffffffu, i, o);
        argmax_merge(v, i, ov, oi);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh->best_value[warp] = v, sh->best_index[warp] = i;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? sh->best_value[lane] : 0.0f;
        i = lane < (int)(blockDim.x >> 5) ? sh->best_index[lane] : -1;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, v, o);
            int oi = __shfl_xor_sync(0xffffffffu, i, o);
            argmax_merge(v, i, ov, oi);
        }
        if (lane == 0) sh->best_index[0] = i;
    }
    __syncthreads();
    return sh->best_index[0];
}

/* Each thread owns the contiguous range [t*per, (t+1)*per) of [0, len). */
__device__ __forceinline__ void thread_range(int len, int *begin, int *end) {
    int per = (len + (int)blockDim.x - 1) / (int)blockDim.x;
    *begin = min(len, (int)threadIdx.x * per);
    *end = min(len, *begin + per);
}

/* This thread's sum of weight(i) over its range of [0, len), also left in sh->sums[thread]. */
template <typename Weight>
__device__ double thread_local_sum(int len, Weight weight, block_shared *sh) {
    int b, e;
    thread_range(len, &b, &e);
    double local = 0.0;
    for (int i = b; i < e; i++) local += weight(i);
    __syncthreads();
    sh->sums[threadIdx.x] = local;
    return local;
}

/* Sum of weight(i) over [0, len), every thread gets it. Thread-local sums left in sh->sums. */
template <typename Weight>
__device__ double block_total(int len, Weight weight, block_shared *sh) {
    return block_sum_double(thread_local_sum(len, weight, sh), sh->reduce);
}

/* The first i in [0, len) whose inclusive prefix sum of weight exceeds target (strict) or
 * reaches it (!strict); -1 when none does (rounding). Thread 0 scans the thread-local sums
 * serially, so that the threads' intervals partition [0, total] exactly and at most one claims. */
template <typename Weight>
__device__ int block_find_crossing(int len, Weight weight, double target, bool strict,
                                   block_shared *sh) {
    int b, e;
    thread_range(len, &b, &e);
    const double local = thread_local_sum(len, weight, sh);
    if (threadIdx.x == 0) sh->claim = -1;
    __syncthreads();
    if (threadIdx.x == 0) {
        double acc = 0.0;
        for (int t = 0; t < (int)blockDim.x; t++) {
            double next = acc + sh->sums[t];
            sh->sums[t] = acc; /* exclusive prefix */
            acc = next;
        }
    }
    __syncthreads();
    double acc = sh->sums[threadIdx.x];
    double end_acc = acc + local;
    bool in_range = strict ? (acc <= target && target < end_acc) : (acc < target && target <= end_acc);
    if (b < e && in_range) {
        int found = -1;
        for (int i = b; i < e; i++) {
            acc += weight(i);
            if (strict ? target < acc : acc >= target) {
                found = i;
                break;
            }
        }
        sh->claim = found >= 0 ? found : e - 1;
    }
    __syncthreads();
    return sh->claim;
}

/* The largest i in [0, len) with weight(i) > 0, or fallback. */
template <typename Weight>
__device__ int block_last_positive(int len, Weight weight, int fallback, block_shared *sh) {
    __syncthreads();
    if (threadIdx.x == 0) sh->last_positive = -1;
    __syncthreads();
    int b, e;
    thread_range(len, &b, &e);
    for (int i = e - 1; i >= b; i--)
        if (weight(i) > 0.0) {
            atomicMax(&sh->last_positive, i);
            break;
        }
    __syncthreads();
    return sh->last_positive >= 0 ? sh->last_positive : fallback;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_prepare_kernel(const float *logits, int vocab, const sample_row_param *params,
                          sample_row_result *results) {
    __shared__ block_shared sh;
    const int row = blockIdx.x;
    const float *l = logits + (size_t)row * vocab;
    const sample_row_param p = params[row];
    sample_row_result *r = &results[row];

    if (threadIdx.x == 0) sh.first_bad = INT_MAX;
    __syncthreads();
    float best_v = 0.0f;
    int best_i = -1;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = l[i];
        if (isnan(v) || (isinf(v) && v > 0)) {
            atomicMin(&sh.first_bad, i);
        } else if (v != -INFINITY) {
            argmax_merge(best_v, best_i, v, i);
        }
    }
    int best = block_argmax(best_v, best_i, &sh); /* synchronises: first_bad is final */
    if (sh.first_bad != INT_MAX || best < 0) {
        if (threadIdx.x == 0) {
            r->token = -1;
            r->logprob = NAN;
            r->bad_index = sh.first_bad != INT_MAX ? sh.first_bad : -1;
            r->status = sh.first_bad == INT_MAX       ? SAMPLE_ALL_MASKED
                        : isnan(l[sh.first_bad]) ? SAMPLE_NAN
                                                  : SAMPLE_POS_INF;
        }
        return;
    }
    const float max_logit = l[best];
    double total1 = block_total(vocab, [&](int i) { return exp((double)l[i] - max_logit); }, &sh);
    double log_total = log(total1);

    int chosen = -1;
    if (p.temperature == 0.0f) {
        chosen = best;
    } else if (!p.ranked) {
        const float inv_t = 1.0f / p.temperature;
        const double max_s = (double)max_logit * inv_t;
        auto weight = [&](int i) { return exp((double)l[i] * inv_t - max_s); };
        double total = block_total(vocab, weight, &sh);
        chosen = block_find_crossing(vocab, weight, p.uniform * total, true, &sh);
        if (chosen < 0) chosen = block_last_positive(vocab, weight, best, &sh);
    }
    if (threadIdx.x == 0) {
        r->status = SAMPLE_OK;
        r->bad_index = -1;
        r->max_logit = max_logit;
        r->log_total = log_total;
        r->token = chosen;
        r->logprob = chosen >= 0 ? (float)((double)l[chosen] - max_logit - log_total) : NAN;
    }
}

/* Sort key: descending scaled logit, then ascending id, as one ascending 64-bit key. */
__device__ __forceinline__ unsigned long long rank_key(float s, int id) {
    if (s == 0.0f) s = 0.0f; /* -0 ties with +0, as in the CPU's comparison */
    unsigned u = __float_as_uint(s);
    unsigned ordered = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* ascending as unsigned */
    return ((unsigned long long)(~ordered) << 32) | (unsigned)id;
}

__device__ __forceinline__ float rank_key_value(unsigned long long key) {
    unsigned ordered = ~(unsigned)(key >> 32);
    unsigned u = (ordered & 0x80000000u) ? (ordered & 0x7fffffffu) : ~ordered;
    return __uint_as_float(u);
}

__global__ void sample_keys_kernel(unsigned long long *keys, const float *logits, int vocab,
                                   const int32_t *rows, int num_rows,
                                   const sample_row_param *params) {
    size_t total = (size_t)num_rows * vocab;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        int r = (int)(k / vocab), i = (int)(k % vocab);
        int row = rows[r];
        float inv_t = 1.0f / params[row].temperature;
        keys[k] = rank_key(logits[(size_t)row * vocab + i] * inv_t, i);
    }
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_sorted_kernel(const unsigned long long *sorted, const float *logits, int vocab,
                         const int32_t *rows, const sample_row_param *params,
                         sample_row_result *results) {
    __shared__ block_shared sh;
    const int row = rows[blockIdx.x];
    sample_row_result *r = &results[row];
    if (r->status != SAMPLE_OK) return; /* uniform across the block */
    const sample_row_param p = params[row];
    const unsigned long long *keys = sorted + (size_t)blockIdx.x * vocab;
    const double top = rank_key_value(keys[0]);
    auto weight = [&](int i) { return exp((double)rank_key_value(keys[i]) - top); };

    int n = (p.top_k > 0 && p.top_k < vocab) ? p.top_k : vocab;
    int keep = n;
    if (p.top_p < 1.0f) {
        double mass = block_total(n, weight, &sh);
        int c = block_find_crossing(n, weight, (double)p.top_p * mass, false, &sh);
        if (c >= 0) keep = c + 1;
    }
    double total = block_total(keep, weight, &sh);
    int c = block_find_crossing(keep, weight, p.uniform * total, true, &sh);
    if (c < 0) c = block_last_positive(keep, weight, 0, &sh);
    if (threadIdx.x == 0) {
        int id = (int)(unsigned)(keys[c] & 0xffffffffu);
        r->token = id;
        r->logprob = (float)((double)logits[(size_t)row * vocab + id] - r->max_logit - r->log_total);
    }
}

static size_t align_up(size_t x) { return (x + 255) & ~(size_t)255; }

extern "C" int backend_cuda_sample(backend_cuda_context *ctx, int32_t *tokens_host,
                                   float *logprobs_host, const float *logits, int n, int vocab,
                                   const backend_cuda_sampling *params_host,
                                   duel_rng *const *rngs, duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(tokens_host && logits && params_host, err, "CUDA sample: NULL pointer");
    BACKEND_CUDA_REQUIRE(n > 0 && vocab > 0, err, "CUDA sample: bad shape n=%d vocab=%d", n,
                         vocab);

    sample_row_param *hp = (sample_row_param *)calloc((size_t)n, sizeof *hp);
    int32_t *ranked_rows = (int32_t *)calloc((size_t)n, sizeof *ranked_rows);
    sample_row_result *hr = (sample_row_result *)calloc((size_t)n, sizeof *hr);
    if (!hp || !ranked_rows || !hr) {
        free(hp), free(ranked_rows), free(hr);
        return duel_error_set(err, DUEL_ENOMEM, "CUDA sample: out of host memory (%d rows)", n);
    }
    int num_ranked = 0;
    for (int i = 0; i < n && rc == DUEL_OK; i++) {
        const backend_cuda_sampling *s = &params_host[i];
        if (!isfinite(s->temperature) || s->temperature < 0.0f ||
            s->temperature > SAMPLE_MAX_TEMPERATURE)
            rc = duel_error_set(err, DUEL_EINVAL,
                                "CUDA sample: row %d: temperature must be in [0, %g], got %g", i,
                                (double)SAMPLE_MAX_TEMPERATURE, (double)s->temperature);
        else if (!isfinite(s->top_p) || s->top_p <= 0.0f || s->top_p > 1.0f)
            rc = duel_error_set(err, DUEL_EINVAL,
                                "CUDA sample: row %d: top_p must be in (0, 1], got %g", i,
                                (double)s->top_p);
        else if (s->top_k < 0)
            rc = duel_error_set(err, DUEL_EINVAL, "CUDA sample: row %d: top_k must be >= 0, got %d",
                                i, s->top_k);
        else if (s->temperature > 0.0f && (!rngs || !rngs[i]))
            rc = duel_error_set(err, DUEL_EINVAL,
                                "CUDA sample: row %d: temperature > 0 needs an rng", i);
        if (rc) break;
        hp[i].temperature = s->temperature;
        hp[i].top_p = s->top_p;
        hp[i].top_k = s->top_k;
        if (s->temperature > 0.0f) {
            hp[i].uniform = duel_rng_uniform(rngs[i]);
            hp[i].ranked = s->top_p < 1.0f || (s->top_k > 0 && s->top_k < vocab);
            if (hp[i].ranked) ranked_rows[num_ranked++] = i;
        }
    }
    if (rc) {
        free(hp), free(ranked_rows), free(hr);
        return rc;
    }

    size_t row_bytes = (size_t)vocab * sizeof(unsigned long long);
    int chunk = (int)(SAMPLE_SORT_BYTES / (2 * row_bytes));
    if (chunk < 1) chunk = 1;
    if (chunk > num_ranked) chunk = num_ranked;
    size_t cub_bytes = 0;
    int32_t *offsets_host = NULL;
    if (num_ranked > 0) {
        /* CUB counts items in int: chunk * vocab <= 4M for the 64 MiB budget unless vocab alone
         * is beyond that. */
        if ((long long)chunk * vocab > INT32_MAX)
            rc = duel_error_set(err, DUEL_ELIMIT, "CUDA sample: vocab %d too large", vocab);
        if (!rc) {
            cudaError_t cr = cub::DeviceSegmentedRadixSort::SortKeys(
                (void *)NULL, cub_bytes, (const unsigned long long *)NULL,
                (unsigned long long *)NULL, chunk * vocab, chunk, (const int32_t *)NULL,
                (const int32_t *)NULL, 0, 64, ctx->stream);
            if (cr != cudaSuccess) rc = backend_cuda_fail(err, cr, "CUB sort size query");
        }
        offsets_host = (int32_t *)malloc(((size_t)chunk + 1) * sizeof *offsets_host);
        if (!rc && !offsets_host)
            rc = duel_error_set(err, DUEL_ENOMEM, "CUDA sample: out of host memory");
        for (int i = 0; !rc && i <= chunk; i++) offsets_host[i] = i * vocab;
    }

    /* Scratch: params | results | ranked rows | offsets | keys in | keys out | CUB temp. */
    size_t off_params = 0;
    size_t off_results = off_params + align_up((size_t)n * sizeof *hp);
    size_t off_rows = off_results + align_up((size_t)n * sizeof *hr);
    size_t off_offsets = off_rows + align_up((size_t)n * sizeof(int32_t));
    size_t off_keys_in = off_offsets + align_up(((size_t)chunk + 1) * sizeof(int32_t));
    size_t off_keys_out = off_keys_in + align_up((size_t)chunk * row_bytes);
    size_t off_cub = off_keys_out + align_up((size_t)chunk * row_bytes);
    size_t total_bytes = off_cub + align_up(cub_bytes);
    char *scratch = NULL;
    if (!rc) rc = backend_cuda_scratch(ctx, total_bytes, (void **)&scratch, err);
    sample_row_param *d_params = (sample_row_param *)(scratch + off_params);
    sample_row_result *d_results = (sample_row_result *)(scratch + off_results);
    int32_t *d_rows = (int32_t *)(scratch + off_rows);
    int32_t *d_offsets = (int32_t *)(scratch + off_offsets);
    unsigned long long *d_keys_in = (unsigned long long *)(scratch + off_keys_in);
    unsigned long long *d_keys_out = (unsigned long long *)(scratch + off_keys_out);

    if (!rc) rc = backend_cuda_copy_to_device(ctx, d_params, hp, (size_t)n * sizeof *hp, err);
    if (!rc && num_ranked > 0) {
        rc = backend_cuda_copy_to_device(ctx, d_rows, ranked_rows,
                                         (size_t)num_ranked * sizeof(int32_t), err);
        if (!rc)
            rc = backend_cuda_copy_to_device(ctx, d_offsets, offsets_host,
                                             ((size_t)chunk + 1) * sizeof(int32_t), err);
    }
    if (!rc) {
        sample_prepare_kernel<<<n, SAMPLE_THREADS, 0, ctx->stream>>>(logits, vocab, d_params,
                                                                     d_results);
        rc = backend_cuda_check_launch(err, "sample_prepare");
    }
    for (int start = 0; !rc && start < num_ranked; start += chunk) {
        int rows = num_ranked - start < chunk ? num_ranked - start : chunk;
        size_t items = (size_t)rows * vocab;
        sample_keys_kernel<<<backend_cuda_blocks_for(items, 256, ctx->sm_count), 256, 0,
                             ctx->stream>>>(d_keys_in, logits, vocab, d_rows + start, rows,
                                            d_params);
        rc = backend_cuda_check_launch(err, "sample_keys");
        if (rc) break;
        size_t temp = cub_bytes;
        cudaError_t cr = cub::DeviceSegmentedRadixSort::SortKeys(
            (void *)(scratch + off_cub), temp, d_keys_in, d_keys_out, (int)items, rows,
            d_offsets, d_offsets + 1, 0, 64, ctx->stream);
        if (cr != cudaSuccess) {
            rc = backend_cuda_fail(err, cr, "CUB segmented radix sort");
            break;
        }
        sample_sorted_kernel<<<rows, SAMPLE_THREADS, 0, ctx->stream>>>(
            d_keys_out, logits, vocab, d_rows + start, d_params, d_results);
        rc = backend_cuda_check_launch(err, "sample_sorted");
    }
    if (!rc) rc = backend_cuda_copy_to_host(ctx, hr, d_results, (size_t)n * sizeof *hr, err);
    for (int i = 0; !rc && i < n; i++) {
        if (hr[i].status == SAMPLE_NAN)
            rc = duel_error_set(err, DUEL_EFORMAT, "CUDA sample: row %d: logit %d is NaN", i,
                                hr[i].bad_index);
        else if (hr[i].status == SAMPLE_POS_INF)
            rc = duel_error_set(err, DUEL_EFORMAT, "CUDA sample: row %d: logit %d is +inf", i,
                                hr[i].bad_index);
        else if (hr[i].status == SAMPLE_ALL_MASKED)
            rc = duel_error_set(err, DUEL_EFORMAT, "CUDA sample: row %d: every logit is -inf", i);
        else if (hr[i].token < 0 || hr[i].token >= vocab)
            rc = duel_error_set(err, DUEL_EDEVICE, "CUDA sample: row %d: kernel returned id %d", i,
                                hr[i].token);
    }
    if (!rc)
        for (int i = 0; i < n; i++) {
            tokens_host[i] = hr[i].token;
            if (logprobs_host) logprobs_host[i] = hr[i].logprob;
        }
    free(hp), free(ranked_rows), free(hr), free(offsets_host);
    return rc;
}
