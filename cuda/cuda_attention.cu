/* cuda_attention.cu: causal attention over the paged bf16 KV cache, for decode (one query per
 * sequence, block tables + context lengths) and for prefill (n queries of one sequence at
 * consecutive positions). Semantics of cpu_attention_forward: scale 1/sqrt(head_dim), query head h
 * reads kv head h / (num_heads / num_kv_heads), query at position p sees keys 0..p.
 *
 * Work split (kept simple; see docs/CUDA.md for what a faster version would change):
 *   - one thread block per (query row, kv head, chunk of up to 8 query heads of
 *     that kv head's group): every K/V vector read from memory serves the whole group (GQA);
 *   - the block's ATTN_WARPS warps take the context's tokens round robin; for each token a warp
 *     reads the K row (lane l holds dims 2(l+32j), 2(l+32j)+1: coalesced bf16x2 loads), reduces
 *     q.k with shuffles, and updates an online softmax (running max, sum, weighted V) per head;
 *   - the warps' partial states are merged in shared memory and the result stored as bf16.
 * Positions are read through the block table: token p is slot p % block_size of block
 * table[p / block_size]; a block id outside the cache poisons the row with NaN instead of reading
 * out of bounds. Prefill reuses the decode kernel row by row: correct, O(n * ctx) K/V traffic from
 * L2, not FlashAttention-fast.
 * UNVERIFIED: compiled in CI, never run on a GPU yet (docs/CUDA.md). */
#include <math.h>

#include "backend_cuda_internal.h"

#define ATTN_WARPS 4
#define ATTN_THREADS (ATTN_WARPS * 32)
/* Most query heads one block serves; the kernel is instantiated for 1, 2, 4 and 8 (the smallest
 * that covers the group, so that MHA does not pay registers for GQA), and for head_dim up to 128
 * or up to 256 (bf16 pairs per lane 2 or 4). */
#define ATTN_HEADS_PER_BLOCK 8

typedef struct attention_args {
    uint16_t *out;
    int out_stride;
    const float *q;
    int q_stride;
    const uint16_t *keys, *values;
    int num_blocks, num_kv_heads, block_size, head_dim;
    int num_heads, group, chunks_per_group, heads_per_block;
    const int32_t *block_tables; /* decode: [rows][max_blocks]; prefill: one row */
    int max_blocks;
    const int32_t *context_lens; /* decode: position of row r is context_lens[r] - 1 */
    int start_pos;               /* prefill: position of row r is start_pos + r */
    float scale;
} attention_args;

template <int HEADS, int PAIRS>
__global__ void __launch_bounds__(ATTN_THREADS)
    paged_attention_kernel(attention_args a) {
    __shared__ float part_max[ATTN_WARPS][HEADS];
    __shared__ float part_sum[ATTN_WARPS][HEADS];
    __shared__ float part_acc[ATTN_WARPS][HEADS][PAIRS * 64];

    const int row = blockIdx.x;
    const int kv_head = blockIdx.y / a.chunks_per_group;
    const int chunk = blockIdx.y % a.chunks_per_group;
    const int h0 = kv_head * a.group + chunk * HEADS;
    int heads = a.group - chunk * HEADS;
    if (heads > HEADS) heads = HEADS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int D = a.head_dim, pairs = D / 2;

    const int32_t *table;
    long long ctx_len;
    if (a.context_lens) {
        table = a.block_tables + (size_t)row * a.max_blocks;
        ctx_len = a.context_lens[row];
    } else {
        table = a.block_tables;
        ctx_len = (long long)a.start_pos + row + 1;
    }
    bool bad = ctx_len <= 0 || ctx_len > (long long)a.max_blocks * a.block_size;

    /* This lane's slice of each head's query, pre-scaled. */
    float q[HEADS][PAIRS][2];
    float acc[HEADS][PAIRS][2];
    float run_max[HEADS], run_sum[HEADS];
#pragma unroll
    for (int hh = 0; hh < HEADS; hh++) {
        run_max[hh] = -INFINITY;
        run_sum[hh] = 0.0f;
#pragma unroll
        for (int j = 0; j < PAIRS; j++) {
            int p = lane + 32 * j;
            const float *qh = a.q + (size_t)row * a.q_stride + (size_t)(h0 + hh) * D;
            bool live = hh < heads && p < pairs;
            q[hh][j][0] = live ? qh[2 * p] * a.scale : 0.0f;
            q[hh][j][1] = live ? qh[2 * p + 1] * a.scale : 0.0f;
            acc[hh][j][0] = acc[hh][j][1] = 0.0f;
        }
    }

    if (!bad) {
        for (long long pos = warp; pos < ctx_len; pos += ATTN_WARPS) {
            int32_t block = table[pos / a.block_size];
            if (block < 0 || block >= a.num_blocks) {
                bad = true; /* uniform across the warp: every lane read the same entry */
                break;
            }
            size_t base = (((size_t)block * a.num_kv_heads + kv_head) * a.block_size +
                           (size_t)(pos % a.block_size)) *
                          D;
            const __nv_bfloat162 *k2 = reinterpret_cast<const __nv_bfloat162 *>(a.keys + base);
            const __nv_bfloat162 *v2 = reinterpret_cast<const __nv_bfloat162 *>(a.values + base);
            float kf[PAIRS][2], vf[PAIRS][2];
#pragma unroll
            for (int j = 0; j < PAIRS; j++) {
                int p = lane + 32 * j;
                float2 kk = p < pairs ? __bfloat1622float2(k2[p]) : make_float2(0.0f, 0.0f);
                float2 vv = p < pairs ? __bfloat1622float2(v2[p]) : make_float2(0.0f, 0.0f);
                kf[j][0] = kk.x, kf[j][1] = kk.y, vf[j][0] = vv.x, vf[j][1] = vv.y;
            }
#pragma unroll
            for (int hh = 0; hh < HEADS; hh++) {
                if (hh >= heads) break;
                float dot = 0.0f;
#pragma unroll
                for (int j = 0; j < PAIRS; j++)
                    dot += q[hh][j][0] * kf[j][0] + q[hh][j][1] * kf[j][1];
                float score = warp_sum(dot);
                float new_max = fmaxf(run_max[hh], score);
                float correction = __expf(run_max[hh] - new_max); /* 0 on the first token */
                float weight = __expf(score - new_max);
                run_sum[hh] = run_sum[hh] * correction + weight;
                run_max[hh] = new_max;
#pragma unroll
                for (int j = 0; j < PAIRS; j++) {
                    acc[hh][j][0] = acc[hh][j][0] * correction + weight * vf[j][0];
                    acc[hh][j][1] = acc[hh][j][1] * correction + weight * vf[j][1];
                }
            }
        }
    }

    /* Merge the warps' states. A warp that saw a bad block id poisons the whole row. */
    __shared__ int row_bad;
    if (threadIdx.x == 0) row_bad = 0;
    __syncthreads();
    if (bad && lane == 0) row_bad = 1;
#pragma unroll
    for (int hh = 0; hh < HEADS; hh++) {
        if (hh >= heads) break;
        if (lane == 0) {
            part_max[warp][hh] = run_max[hh];
            part_sum[warp][hh] = run_sum[hh];
        }
#pragma unroll
        for (int j = 0; j < PAIRS; j++) {
            int p = lane + 32 * j;
            if (p < pairs) {
                part_acc[warp][hh][2 * p] = acc[hh][j][0];
                part_acc[warp][hh][2 * p + 1] = acc[hh][j][1];
            }
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < heads * D; i += ATTN_THREADS) {
        int hh = i / D, d = i % D;
        float m = -INFINITY;
        for (int w = 0; w < ATTN_WARPS; w++) m = fmaxf(m, part_max[w][hh]);
        float sum = 0.0f, o = 0.0f;
        for (int w = 0; w < ATTN_WARPS; w++) {
            if (part_max[w][hh] == -INFINITY) continue; /* a warp with no tokens */
            float c = __expf(part_max[w][hh] - m);
            sum += part_sum[w][hh] * c;
            o += part_acc[w][hh][d] * c;
        }
        float result = row_bad ? NAN : o / sum;
        a.out[(size_t)row * a.out_stride + (size_t)(h0 + hh) * D + d] = bf16_from_float(result);
    }
}

static int attention_args_fill(backend_cuda_context *ctx, attention_args *a, uint16_t *out,
                               int out_stride, const float *q, int q_stride,
                               const backend_cuda_kv_layer *cache, int num_heads,
                               const char *name, duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(out && q && cache && cache->keys && cache->values, err,
                         "CUDA %s: NULL pointer", name);
    int D = cache->head_dim, kvh = cache->num_kv_heads;
    BACKEND_CUDA_REQUIRE(D > 0 && D % 2 == 0 && D <= BACKEND_CUDA_MAX_HEAD_DIM, err,
                         "CUDA %s: head_dim %d must be even and at most %d", name, D,
                         BACKEND_CUDA_MAX_HEAD_DIM);
    BACKEND_CUDA_REQUIRE(kvh > 0 && num_heads > 0 && num_heads % kvh == 0, err,
                         "CUDA %s: %d query heads are not a multiple of %d kv heads", name,
                         num_heads, kvh);
    BACKEND_CUDA_REQUIRE(cache->num_blocks > 0 && cache->block_size > 0, err,
                         "CUDA %s: bad KV cache (%d blocks of %d)", name, cache->num_blocks,
                         cache->block_size);
    BACKEND_CUDA_REQUIRE(q_stride >= num_heads * D && out_stride >= num_heads * D, err,
                         "CUDA %s: strides q=%d out=%d shorter than %d heads of %d", name,
                         q_stride, out_stride, num_heads, D);
    /* bf16x2 loads of K/V need 4-byte alignment: even head_dim and an aligned base. */
    BACKEND_CUDA_REQUIRE(((uintptr_t)cache->keys | (uintptr_t)cache->values) % 4 == 0, err,
                         "CUDA %s: KV arrays must be 4-byte aligned", name);
    memset(a, 0, sizeof *a);
    a->out = out;
    a->out_stride = out_stride;
    a->q = q;
    a->q_stride = q_stride;
    a->keys = cache->keys;
    a->values = cache->values;
    a->num_blocks = cache->num_blocks;
    a->num_kv_heads = kvh;
    a->block_size = cache->block_size;
    a->head_dim = D;
    a->num_heads = num_heads;
    a->group = num_heads / kvh;
    a->heads_per_block = a->group >= 8 ? 8 : a->group >= 4 ? 4 : a->group >= 2 ? 2 : 1;
    if (a->heads_per_block < a->group && a->heads_per_block < ATTN_HEADS_PER_BLOCK)
        a->heads_per_block *= 2; /* group 3, 5, 6, 7: one block rather than two */
    a->chunks_per_group = (a->group + a->heads_per_block - 1) / a->heads_per_block;
    a->scale = 1.0f / sqrtf((float)D);
    return DUEL_OK;
}

static int attention_launch(backend_cuda_context *ctx, const attention_args *a, int rows,
                            duel_error *err) {
    long long y = (long long)a->num_kv_heads * a->chunks_per_group;
    BACKEND_CUDA_REQUIRE(y <= 65535, err, "CUDA attention: %lld kv-head chunks exceed the grid",
                         y);
    dim3 grid((unsigned)rows, (unsigned)y);
    bool wide = a->head_dim > 128;
#define ATTN_LAUNCH(H)                                                                            \
    (wide ? paged_attention_kernel<H, 4><<<grid, ATTN_THREADS, 0, ctx->stream>>>(*a)               \
          : paged_attention_kernel<H, 2><<<grid, ATTN_THREADS, 0, ctx->stream>>>(*a))
    switch (a->heads_per_block) {
    case 1: ATTN_LAUNCH(1); break;
    case 2: ATTN_LAUNCH(2); break;
    case 4: ATTN_LAUNCH(4); break;
    default: ATTN_LAUNCH(8); break;
    }
#undef ATTN_LAUNCH
    return backend_cuda_check_launch(err, "paged_attention");
}

extern "C" int backend_cuda_attention_decode(backend_cuda_context *ctx, uint16_t *out,
                                             int out_stride, const float *q, int q_stride,
                                             const backend_cuda_kv_layer *cache,
                                             const int32_t *block_tables, int max_blocks_per_seq,
                                             const int32_t *context_lens, int num_seqs,
                                             int num_heads, duel_error *err) {
    attention_args a;
    int rc = attention_args_fill(ctx, &a, out, out_stride, q, q_stride, cache, num_heads,
                                 "attention_decode", err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(block_tables && context_lens, err,
                         "CUDA attention_decode: NULL block tables or context lengths");
    BACKEND_CUDA_REQUIRE(num_seqs > 0 && max_blocks_per_seq > 0, err,
                         "CUDA attention_decode: %d sequences, %d blocks per table", num_seqs,
                         max_blocks_per_seq);
    a.block_tables = block_tables;
    a.max_blocks = max_blocks_per_seq;
    a.context_lens = context_lens;
    return attention_launch(ctx, &a, num_seqs, err);
}

extern "C" int backend_cuda_attention_prefill(backend_cuda_context *ctx, uint16_t *out,
                                              int out_stride, const float *q, int q_stride,
                                              const backend_cuda_kv_layer *cache,
                                              const int32_t *block_table, int n, int start_pos,
                                              int num_heads, duel_error *err) {
    attention_args a;
    int rc = attention_args_fill(ctx, &a, out, out_stride, q, q_stride, cache, num_heads,
                                 "attention_prefill", err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(block_table, err, "CUDA attention_prefill: NULL block table");
    BACKEND_CUDA_REQUIRE(n > 0 && start_pos >= 0 && (long long)start_pos + n <= INT32_MAX, err,
                         "CUDA attention_prefill: bad range n=%d start=%d", n, start_pos);
    long long positions = (long long)start_pos + n;
    a.block_tables = block_table;
    a.max_blocks = (int)((positions + cache->block_size - 1) / cache->block_size);
    a.context_lens = NULL;
    a.start_pos = start_pos;
    return attention_launch(ctx, &a, n, err);
}
