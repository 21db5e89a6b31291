/* cuda_compute_internal.h: what cuda_compute.cu (the backend: pool, arms, logits, sampling, ERM)
 * and cuda_forward.cu (the batched forward and its CUDA graphs) share. C++ (nvcc) only.
 *
 * Ownership: one thread (the engine's) owns a cuda_compute and everything in it. Device buffers
 * grow on demand and are never shrunk; every regrowth of a buffer a captured graph refers to
 * bumps `generation`, which retires every graph (a graph bakes in the addresses it saw). */
#ifndef DUEL_CUDA_COMPUTE_INTERNAL_H
#define DUEL_CUDA_COMPUTE_INTERNAL_H

#include "compute.h" /* first: C linkage for inference/'s headers */

#include "backend_cuda_internal.h"
#include "cuda_compute.h"
#include "cuda_erm.h"

#define CUDA_PASS_ROWS 2048     /* rows of one forward pass (bounds activation scratch) */
#define CUDA_TARGET_CHUNK 256   /* target rows per head GEMM when scoring forced tokens */
#define CUDA_MAX_GRAPHS 64      /* captured decode shapes kept at once */
#define CUDA_GRAPH_MAX_ROWS 512 /* decode steps with more rows run eagerly */
#define CUDA_CUBLAS_WORKSPACE ((size_t)32 << 20) /* bytes: cuBLAS inside graph capture needs one */

/* One layer's weights on the device (bf16; NULL when the model has no such tensor). */
typedef struct cuda_layer_weights {
    const uint16_t *attn_norm_w, *attn_norm_b, *qkv_w, *qkv_b, *o_w, *o_b;
    const uint16_t *mlp_norm_w, *mlp_norm_b, *up_w, *up_b, *down_w, *down_b;
} cuda_layer_weights;

/* An arm: a model's weights on the device. */
struct compute_arm {
    int id;                /* unique within the backend: part of a graph's key */
    model_config config;
    int q_dim, kv_dim, qkv_dim, up_dim, output_size;
    bool neox, parallel_residual;
    float eps;
    void *weights;         /* one device allocation holding every tensor */
    size_t weight_bytes;
    const uint16_t *embedding, *final_norm_w, *final_norm_b, *head_w;
    cuda_layer_weights *layers; /* host array [num_layers] of device pointers */
    double *inv_freq;      /* device [rotary_dim / 2] */
};

struct compute_erm {
    cuda_erm *gpu;
};

/* A device buffer that grows. */
typedef struct cuda_buffer {
    void *ptr;
    size_t bytes;
} cuda_buffer;

typedef struct cuda_graph_entry {
    int arm_id, rows, table_width;
    uint64_t generation;
    cudaGraphExec_t exec;
} cuda_graph_entry;

typedef struct cuda_compute {
    compute_backend base;
    backend_cuda_context *ctx;
    int next_arm_id;
    void *cublas_workspace;

    /* The KV pool's storage (pool_attach). */
    kv_pool_params kv_params;
    backend_cuda_kv_layer *kv; /* host array [num_layers] */
    void *kv_memory;
    cuda_buffer copy_pairs, copy_ptrs; /* copy_blocks: (src, dst) pairs; K and V base per layer */

    /* The step's logits: rows x vocab f32. */
    cuda_buffer logits;
    int logits_rows, logits_vocab;

    /* Forward scratch (cuda_forward.cu). */
    cuda_buffer x, xb, xb2, qkv, att, up, act;  /* activations of one pass */
    cuda_buffer out_in, out_norm, out_bf16, out_logits; /* the rows that want outputs */
    cuda_buffer tgt_logprob;                    /* doubles, one per target row of a chunk */
    cuda_buffer d_ints;                         /* the pass's int32 inputs, sections below */
    int32_t *h_ints;                            /* host staging of the same layout */
    size_t h_ints_cap;                          /* int32s */
    float *h_hidden;                            /* host copy of output rows' hidden states */
    size_t h_hidden_cap;
    double *h_tgt;
    size_t h_tgt_cap;

    /* Sampling scratch. */
    cuda_buffer sample_rows, sample_idx, sample_lp;

    /* CUDA graphs of decode passes. */
    bool graphs_enabled;
    uint64_t generation;
    cuda_graph_entry graphs[CUDA_MAX_GRAPHS];
    int num_graphs;
    char graph_note[256]; /* why graphs were switched off, if they were */
} cuda_compute;

/* Grows buf to at least bytes (synchronises first: the old buffer may be in use); bumps
 * c->generation when it moves. */
int cuda_buffer_reserve(cuda_compute *c, cuda_buffer *buf, size_t bytes, duel_error *err);
void cuda_buffer_free(cuda_buffer *buf);

/* The batched forward of one arm over entries (compute.h's forward). */
int cuda_forward(cuda_compute *c, compute_arm *arm, kv_pool *pool, const compute_entry *entries,
                 int n, duel_error *err);
/* Destroys every captured graph (of one arm: arm_id >= 0; all: -1). */
void cuda_graphs_clear(cuda_compute *c, int arm_id);

/* Small kernels shared by both files (cuda_compute.cu). */
int cuda_rows_gather(cuda_compute *c, float *dst, const float *src, int src_stride, int cols,
                     const int32_t *idx, int n, duel_error *err);
int cuda_rows_scatter(cuda_compute *c, float *dst, int dst_stride, const float *src, int cols,
                      const int32_t *idx, int n, duel_error *err);
int cuda_to_bf16(cuda_compute *c, uint16_t *dst, const float *src, size_t count, duel_error *err);
/* out[i] = log softmax(rows[row_idx[i]] (stride, cols))[tokens[i]], in double. */
int cuda_row_logprob(cuda_compute *c, double *out, const float *rows, int stride, int cols,
                     const int32_t *row_idx, const int32_t *tokens, int n, duel_error *err);

#endif
