/* backend_cuda.h: the C face of the CUDA backend (DESIGN.md section 4). Probing (`duel info`), a
 * context (device, stream, cuBLAS handle, scratch), device buffers, and one host launcher per kernel.
 *
 * STATUS: every kernel here compiles in CI, but none has run on a GPU yet. tests/cuda/ holds the
 * tests a GPU session must run before anything relies on them (docs/CUDA.md says which commands).
 *
 * Conventions (same semantics as inference/cpu_ops.h, so that each kernel has a CPU reference):
 *   - All pointers passed to launchers are device pointers unless the parameter name ends in
 *     _host. Launchers are asynchronous on the context's stream; errors of the launch itself come
 *     back at once, errors during execution at the next backend_cuda_synchronize (or at a launcher
 *     that copies to the host, which synchronises). After an execution error (an illegal address)
 *     the CUDA context is unusable: destroy it.
 *   - Activations are row-major [n][dim]. The residual stream and every GEMM output are f32; GEMM
 *     inputs (normalised activations, attention output, MLP hidden) are bf16. Weights (linear,
 *     embedding, norm weights and biases) are held in bf16, stored as uint16_t bit patterns.
 *     Linear weights are [out][in] row-major, as Hugging Face stores them.
 *   - The residual add is fused where it pays: GEMMs can accumulate into their f32 output (the
 *     o_proj/down_proj/dense_4h_to_h outputs land directly in the residual stream, beta = 1), and the
 *     norms can add a delta to the residual before normalising it.
 *   - RoPE is NeoX rotate-half over the first rotary_dim dims of each head (partial rotary); GQA
 *     maps query head h to kv head h / (num_heads / num_kv_heads); attention is causal, scale
 *     1/sqrt(head_dim).
 *   - Paged KV cache on the device: bf16 (half the bytes of the host cache, which is f32), per
 *     layer one K and one V array, each [num_blocks][num_kv_heads][block_size][head_dim], the same
 *     layout as kv_cache.h's host storage. Slot s of a block b is the flat slot b*block_size + s.
 *     Block tables are [num_seqs][max_blocks_per_seq] int32 on the device.
 *   - Every launcher returns 0 or a negative DUEL_E* and fills err: DUEL_EINVAL for bad arguments
 *     (checked on the host before anything is launched), DUEL_EDEVICE naming the CUDA or cuBLAS
 *     error. No function aborts or prints.
 *
 * In builds without nvcc (backend_cuda_absent.c) every function exists and returns DUEL_EDEVICE
 * "built without CUDA", so callers need no #ifdefs. Not thread-safe: one thread owns a context. */
#ifndef DUEL_BACKEND_CUDA_H
#define DUEL_BACKEND_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "error.h"
#include "rng.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct backend_cuda_info {
    int built;              /* 1 when compiled with CUDA */
    int device_count;       /* GPUs that answered; 0 when none */
    char device_name[256];  /* device 0 */
    size_t total_memory;    /* device 0, bytes */
    int compute_major, compute_minor;
    int runtime_version;    /* e.g. 13000 */
    int cublas_version;
    int nccl_version;
} backend_cuda_info;

/* Fills info. Returns 0 when the probe ran (device_count may be 0: no GPU is not an error);
 * DUEL_EDEVICE with a message when the driver answered with an error other than "no device". */
int backend_cuda_probe(backend_cuda_info *info, duel_error *err);

/* ---- bf16 on the host ------------------------------------------------------------------------ */

/* f32 -> bf16 with round-to-nearest-even (what __float2bfloat16 does on the device); NaN stays a
 * quiet NaN, infinities stay infinities. */
static inline uint16_t backend_cuda_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float backend_cuda_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- context --------------------------------------------------------------------------------- */

typedef struct backend_cuda_context backend_cuda_context;

/* Smallest compute capability accepted (bf16 tensor-core GEMMs need sm_80). */
#define BACKEND_CUDA_MIN_COMPUTE_MAJOR 8

/* Opens device `device` (0 for the first GPU): a stream, a cuBLAS handle, and a check that the
 * kernels of this build can run on it. Fails with DUEL_EDEVICE and a message saying why when the
 * build has no CUDA, no device answers ("no CUDA device: ..."), the index is out of range, the
 * compute capability is below 8.0 or not among the architectures the kernels were built for, or
 * the device has less than min_free_bytes of free memory ("too small: ... free, ... needed"). */
int backend_cuda_context_create(int device, size_t min_free_bytes, backend_cuda_context **out,
                                duel_error *err);
/* NULL is a no-op. Synchronises first; frees the context's scratch, not the caller's buffers. */
void backend_cuda_context_destroy(backend_cuda_context *ctx);

/* Name ("NVIDIA H100 80GB HBM3"), multiprocessor count and total memory of the context's device. */
const char *backend_cuda_device_name(const backend_cuda_context *ctx);
int backend_cuda_sm_count(const backend_cuda_context *ctx);
int backend_cuda_mem_info(backend_cuda_context *ctx, size_t *free_bytes, size_t *total_bytes,
                          duel_error *err);

/* Waits for all work on the context's stream; reports an execution error of any earlier launch. */
int backend_cuda_synchronize(backend_cuda_context *ctx, duel_error *err);

/* ---- device buffers -------------------------------------------------------------------------- */

/* cudaMalloc; DUEL_EDEVICE "out of device memory: N bytes requested, M free" when it fails.
 * bytes == 0 gives *out = NULL and 0. */
int backend_cuda_alloc(backend_cuda_context *ctx, size_t bytes, void **out, duel_error *err);
/* NULL is a no-op. */
void backend_cuda_free(backend_cuda_context *ctx, void *ptr);

/* Copies on the context's stream. to_host synchronises (the data is there when it returns). */
int backend_cuda_copy_to_device(backend_cuda_context *ctx, void *dst, const void *src_host,
                                size_t bytes, duel_error *err);
int backend_cuda_copy_to_host(backend_cuda_context *ctx, void *dst_host, const void *src,
                              size_t bytes, duel_error *err);
int backend_cuda_copy_device(backend_cuda_context *ctx, void *dst, const void *src, size_t bytes,
                             duel_error *err);
/* Sets bytes bytes to `byte` (tests poison outputs with 0xff: NaN in f32 and bf16). */
int backend_cuda_memset(backend_cuda_context *ctx, void *dst, int byte, size_t bytes,
                        duel_error *err);
/* Converts count host floats to bf16 (round to nearest even) and copies them to dst (weights at
 * load time). Allocates a host staging buffer of 2 * count bytes. */
int backend_cuda_upload_bf16(backend_cuda_context *ctx, uint16_t *dst, const float *src_host,
                             size_t count, duel_error *err);

/* ---- kernels --------------------------------------------------------------------------------- */

/* Element type of a kernel output that may be either. */
typedef enum backend_cuda_dtype { BACKEND_CUDA_F32 = 0, BACKEND_CUDA_BF16 = 1 } backend_cuda_dtype;

/* out[i][:] = (f32) table[tokens[i]][:] for i < n. table: bf16 [vocab][dim]. A token outside
 * [0, vocab) (the caller range-checks ids; this is a guard) yields a row of NaN. */
int backend_cuda_embedding(backend_cuda_context *ctx, float *out, const int32_t *tokens, int n,
                           const uint16_t *table, int vocab, int dim, duel_error *err);

/* Per row of dim: if delta is not NULL, residual += delta first (written back, the fused residual
 * add); then out = weight * x / sqrt(mean(x^2) + eps) with x = residual (cpu_rmsnorm_forward).
 * out is f32 or bf16 [n][dim] (out_dtype) and must not alias residual. weight: bf16 [dim]. */
int backend_cuda_rmsnorm(backend_cuda_context *ctx, void *out, backend_cuda_dtype out_dtype,
                         float *residual, const float *delta, const uint16_t *weight, int n,
                         int dim, float eps, duel_error *err);

/* As backend_cuda_rmsnorm but LayerNorm: (x - mean) / sqrt(var + eps) * weight + bias, biased
 * variance (cpu_layernorm_forward). weight, bias: bf16 [dim]. */
int backend_cuda_layernorm(backend_cuda_context *ctx, void *out, backend_cuda_dtype out_dtype,
                           float *residual, const float *delta, const uint16_t *weight,
                           const uint16_t *bias, int n, int dim, float eps, duel_error *err);

/* out[n][out_dim] (=|+=) in[n][in_dim] * weight[out_dim][in_dim]^T (+ bias[out_dim]), through
 * cublasGemmEx: bf16 inputs, f32 accumulation (CUBLAS_COMPUTE_32F), f32 output. accumulate adds
 * to out (beta = 1: the fused residual add). bias (bf16, may be NULL): the QKV bias of Qwen2 and
 * the biases of GPT-NeoX. out must not alias in. */
int backend_cuda_linear(backend_cuda_context *ctx, float *out, const uint16_t *in,
                        const uint16_t *weight, const uint16_t *bias, int n, int in_dim,
                        int out_dim, bool accumulate, duel_error *err);

/* In place on f32 x: for token t (position positions[t]) and head h < num_heads, the head's
 * vector at x + t*stride + h*head_dim gets NeoX rotate-half RoPE over its first rotary_dim dims
 * (pairs (i, i + rotary_dim/2)); the rest pass through. inv_freq: device double
 * [rotary_dim/2] (cpu_rope_inv_freq's output, scaling included); angles are computed in double,
 * as cpu_rope_tables does. Call once for the q heads and once for the k heads of a QKV row. */
int backend_cuda_rope(backend_cuda_context *ctx, float *x, int n, int stride, int num_heads,
                      int head_dim, int rotary_dim, const int32_t *positions,
                      const double *inv_freq, duel_error *err);

/* out[t][i] = bf16(silu(gate_up[t][i]) * gate_up[t][ffn + i]); rows of gate_up (f32) are
 * [gate | up], as cpu_swiglu_forward. */
int backend_cuda_swiglu(backend_cuda_context *ctx, uint16_t *out, const float *gate_up, int n,
                        int ffn, duel_error *err);

/* out[i] = bf16(gelu(in[i])) over count floats: exact erf form, or tanh_approx (gelu_new), as
 * cpu_gelu_forward. */
int backend_cuda_gelu(backend_cuda_context *ctx, uint16_t *out, const float *in, size_t count,
                      bool tanh_approx, duel_error *err);

/* The device KV cache of one layer: two bf16 arrays [num_blocks][num_kv_heads][block_size]
 * [head_dim]. */
typedef struct backend_cuda_kv_layer {
    uint16_t *keys;
    uint16_t *values;
    int num_blocks;
    int num_kv_heads;
    int block_size;
    int head_dim;
} backend_cuda_kv_layer;

/* Writes the K and V of n tokens into the cache: token t's vectors (f32, kv head g at
 * k + t*stride + g*head_dim, likewise v; k and v usually point into the QKV projection row) go to
 * flat slot slots[t] = block * block_size + slot_in_block, converted to bf16. slots[t] < 0 skips
 * the token (padding); a slot beyond the cache is skipped too (the caller validates slots). */
int backend_cuda_kv_write(backend_cuda_context *ctx, const backend_cuda_kv_layer *cache,
                          const float *k, const float *v, int stride, const int32_t *slots, int n,
                          duel_error *err);

/* Copy-on-write: for each of num_pairs (src, dst) block-id pairs in pairs_host ([2*num_pairs]
 * int32 on the host, from kv_reserve_result), copies the whole block (all kv heads, K and V) in
 * each of num_layers caches. */
int backend_cuda_kv_copy_blocks(backend_cuda_context *ctx, const backend_cuda_kv_layer *layers,
                                int num_layers, const int32_t *pairs_host, int num_pairs,
                                duel_error *err);

/* Largest head_dim the attention kernels support (must be even). */
#define BACKEND_CUDA_MAX_HEAD_DIM 256

/* Paged-attention decode: one query per sequence. q: f32, sequence s's query head h at
 * q + s*q_stride + h*head_dim; it attends to positions 0 .. context_lens[s]-1 of sequence s (the
 * new token's K/V already written), read through block_tables + s*max_blocks_per_seq.
 * out: bf16, sequence s head h at out + s*out_stride + h*head_dim. GQA-aware: one thread block
 * serves all query heads of a kv head, so each K/V vector is read from memory once per group. */
int backend_cuda_attention_decode(backend_cuda_context *ctx, uint16_t *out, int out_stride,
                                  const float *q, int q_stride,
                                  const backend_cuda_kv_layer *cache,
                                  const int32_t *block_tables, int max_blocks_per_seq,
                                  const int32_t *context_lens, int num_seqs, int num_heads,
                                  duel_error *err);

/* Prefill attention of one sequence: queries at positions start_pos .. start_pos+n-1 (row t of q
 * and out, strides as above), causal over positions 0 .. start_pos+t of the paged cache through
 * block_table (this sequence's row, device int32 [max_blocks]), whose K/V must already be
 * written (including the prefix-cache blocks before start_pos). Same kernel as decode, one query
 * row per thread block group: correct, not FlashAttention-fast (see docs/CUDA.md). */
int backend_cuda_attention_prefill(backend_cuda_context *ctx, uint16_t *out, int out_stride,
                                   const float *q, int q_stride,
                                   const backend_cuda_kv_layer *cache,
                                   const int32_t *block_table, int n, int start_pos,
                                   int num_heads, duel_error *err);

/* Sampling parameters of one row, as sampler_params (inference/sampler.h). */
typedef struct backend_cuda_sampling {
    float temperature; /* 0 = greedy (argmax; ties go to the lower id) */
    float top_p;       /* (0, 1]; 1 = off */
    int top_k;         /* 0 = off */
} backend_cuda_sampling;

/* Samples one token per row of logits (device f32 [n][vocab]) on the device; only the ids (and
 * log-probabilities) cross to the host. Same semantics as sampler_sample: temperature, then
 * top-k, then top-p over the renormalised top-k, candidates ranked by (logit desc, id asc), one
 * uniform draw per row with temperature > 0, taken on the host from rngs[i] (the sequence's own
 * seeded duel_rng, exactly as sampler_sample draws it), so the same seed gives the same tokens as
 * the CPU sampler up to floating-point rounding at a bucket boundary.
 * tokens_host [n] gets the ids; logprobs_host [n] (may be NULL) the log-probability of each chosen
 * token under the unmodified distribution. rngs may be NULL only when every temperature is 0.
 * Errors: DUEL_EINVAL for bad parameters (the message names the row), DUEL_EFORMAT for a row with
 * a NaN or +inf logit or only -inf logits, DUEL_EDEVICE. Synchronises. */
int backend_cuda_sample(backend_cuda_context *ctx, int32_t *tokens_host, float *logprobs_host,
                        const float *logits, int n, int vocab,
                        const backend_cuda_sampling *params_host, duel_rng *const *rngs,
                        duel_error *err);

#ifdef __cplusplus
}
#endif

#endif
