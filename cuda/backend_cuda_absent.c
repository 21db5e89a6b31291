/* backend_cuda_absent.c: stands in for the CUDA backend in builds without nvcc. The probe reports
 * "not built"; every other function of backend_cuda.h exists and fails with DUEL_EDEVICE "built
 * without CUDA", so that callers never need #ifdefs. */
#include <string.h>

#include "backend_cuda.h"

static int absent(duel_error *err, const char *what) {
    return duel_error_set(err, DUEL_EDEVICE,
                          "CUDA %s: built without CUDA (reconfigure with nvcc on the PATH or "
                          "-DDUEL_CUDA=ON)",
                          what);
}

int backend_cuda_probe(backend_cuda_info *info, duel_error *err) {
    (void)err;
    memset(info, 0, sizeof *info);
    return DUEL_OK;
}

int backend_cuda_context_create(int device, size_t min_free_bytes, backend_cuda_context **out,
                                duel_error *err) {
    (void)device, (void)min_free_bytes;
    if (out) *out = NULL;
    return absent(err, "context");
}

void backend_cuda_context_destroy(backend_cuda_context *ctx) { (void)ctx; }

const char *backend_cuda_device_name(const backend_cuda_context *ctx) {
    (void)ctx;
    return "";
}

int backend_cuda_sm_count(const backend_cuda_context *ctx) {
    (void)ctx;
    return 0;
}

int backend_cuda_mem_info(backend_cuda_context *ctx, size_t *free_bytes, size_t *total_bytes,
                          duel_error *err) {
    (void)ctx;
    if (free_bytes) *free_bytes = 0;
    if (total_bytes) *total_bytes = 0;
    return absent(err, "mem_info");
}

int backend_cuda_synchronize(backend_cuda_context *ctx, duel_error *err) {
    (void)ctx;
    return absent(err, "synchronize");
}

int backend_cuda_alloc(backend_cuda_context *ctx, size_t bytes, void **out, duel_error *err) {
    (void)ctx, (void)bytes;
    if (out) *out = NULL;
    return absent(err, "alloc");
}

void backend_cuda_free(backend_cuda_context *ctx, void *ptr) { (void)ctx, (void)ptr; }

int backend_cuda_copy_to_device(backend_cuda_context *ctx, void *dst, const void *src_host,
                                size_t bytes, duel_error *err) {
    (void)ctx, (void)dst, (void)src_host, (void)bytes;
    return absent(err, "copy to device");
}

int backend_cuda_copy_to_host(backend_cuda_context *ctx, void *dst_host, const void *src,
                              size_t bytes, duel_error *err) {
    (void)ctx, (void)dst_host, (void)src, (void)bytes;
    return absent(err, "copy to host");
}

int backend_cuda_copy_device(backend_cuda_context *ctx, void *dst, const void *src, size_t bytes,
                             duel_error *err) {
    (void)ctx, (void)dst, (void)src, (void)bytes;
    return absent(err, "device copy");
}

int backend_cuda_memset(backend_cuda_context *ctx, void *dst, int byte, size_t bytes,
                        duel_error *err) {
    (void)ctx, (void)dst, (void)byte, (void)bytes;
    return absent(err, "memset");
}

int backend_cuda_upload_bf16(backend_cuda_context *ctx, uint16_t *dst, const float *src_host,
                             size_t count, duel_error *err) {
    (void)ctx, (void)dst, (void)src_host, (void)count;
    return absent(err, "upload");
}

int backend_cuda_embedding(backend_cuda_context *ctx, float *out, const int32_t *tokens, int n,
                           const uint16_t *table, int vocab, int dim, duel_error *err) {
    (void)ctx, (void)out, (void)tokens, (void)n, (void)table, (void)vocab, (void)dim;
    return absent(err, "embedding");
}

int backend_cuda_rmsnorm(backend_cuda_context *ctx, void *out, backend_cuda_dtype out_dtype,
                         float *residual, const float *delta, const uint16_t *weight, int n,
                         int dim, float eps, duel_error *err) {
    (void)ctx, (void)out, (void)out_dtype, (void)residual, (void)delta, (void)weight, (void)n;
    (void)dim, (void)eps;
    return absent(err, "rmsnorm");
}

int backend_cuda_layernorm(backend_cuda_context *ctx, void *out, backend_cuda_dtype out_dtype,
                           float *residual, const float *delta, const uint16_t *weight,
                           const uint16_t *bias, int n, int dim, float eps, duel_error *err) {
    (void)ctx, (void)out, (void)out_dtype, (void)residual, (void)delta, (void)weight, (void)bias;
    (void)n, (void)dim, (void)eps;
    return absent(err, "layernorm");
}

int backend_cuda_linear(backend_cuda_context *ctx, float *out, const uint16_t *in,
                        const uint16_t *weight, const uint16_t *bias, int n, int in_dim,
                        int out_dim, bool accumulate, duel_error *err) {
    (void)ctx, (void)out, (void)in, (void)weight, (void)bias, (void)n, (void)in_dim;
    (void)out_dim, (void)accumulate;
    return absent(err, "linear");
}

int backend_cuda_rope(backend_cuda_context *ctx, float *x, int n, int stride, int num_heads,
                      int head_dim, int rotary_dim, const int32_t *positions,
                      const double *inv_freq, duel_error *err) {
    (void)ctx, (void)x, (void)n, (void)stride, (void)num_heads, (void)head_dim, (void)rotary_dim;
    (void)positions, (void)inv_freq;
    return absent(err, "rope");
}

int backend_cuda_swiglu(backend_cuda_context *ctx, uint16_t *out, const float *gate_up, int n,
                        int ffn, duel_error *err) {
    (void)ctx, (void)out, (void)gate_up, (void)n, (void)ffn;
    return absent(err, "swiglu");
}

int backend_cuda_gelu(backend_cuda_context *ctx, uint16_t *out, const float *in, size_t count,
                      bool tanh_approx, duel_error *err) {
    (void)ctx, (void)out, (void)in, (void)count, (void)tanh_approx;
    return absent(err, "gelu");
}

int backend_cuda_kv_write(backend_cuda_context *ctx, const backend_cuda_kv_layer *cache,
                          const float *k, const float *v, int stride, const int32_t *slots, int n,
                          duel_error *err) {
    (void)ctx, (void)cache, (void)k, (void)v, (void)stride, (void)slots, (void)n;
    return absent(err, "kv_write");
}

int backend_cuda_kv_copy_blocks(backend_cuda_context *ctx, const backend_cuda_kv_layer *layers,
                                int num_layers, const int32_t *pairs_host, int num_pairs,
                                duel_error *err) {
    (void)ctx, (void)layers, (void)num_layers, (void)pairs_host, (void)num_pairs;
    return absent(err, "kv_copy_blocks");
}

int backend_cuda_attention_decode(backend_cuda_context *ctx, uint16_t *out, int out_stride,
                                  const float *q, int q_stride,
                                  const backend_cuda_kv_layer *cache,
                                  const int32_t *block_tables, int max_blocks_per_seq,
                                  const int32_t *context_lens, int num_seqs, int num_heads,
                                  duel_error *err) {
    (void)ctx, (void)out, (void)out_stride, (void)q, (void)q_stride, (void)cache;
    (void)block_tables, (void)max_blocks_per_seq, (void)context_lens, (void)num_seqs;
    (void)num_heads;
    return absent(err, "attention_decode");
}

int backend_cuda_attention_prefill(backend_cuda_context *ctx, uint16_t *out, int out_stride,
                                   const float *q, int q_stride,
                                   const backend_cuda_kv_layer *cache,
                                   const int32_t *block_table, int n, int start_pos,
                                   int num_heads, duel_error *err) {
    (void)ctx, (void)out, (void)out_stride, (void)q, (void)q_stride, (void)cache;
    (void)block_table, (void)n, (void)start_pos, (void)num_heads;
    return absent(err, "attention_prefill");
}

int backend_cuda_sample(backend_cuda_context *ctx, int32_t *tokens_host, float *logprobs_host,
                        const float *logits, int n, int vocab,
                        const backend_cuda_sampling *params_host, duel_rng *const *rngs,
                        duel_error *err) {
    (void)ctx, (void)tokens_host, (void)logprobs_host, (void)logits, (void)n, (void)vocab;
    (void)params_host, (void)rngs;
    return absent(err, "sample");
}
