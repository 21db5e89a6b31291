/* model.h: a loaded causal language model (Llama or GPT-NeoX family) and its CPU forward pass.
 * Weights are read from a Hugging Face directory (config.json + safetensors), validated, and held
 * as f32 (bf16/f16 widened at load), or with model_load_with the linear layers and the output head
 * as bf16 or q8 (weight_format.h: packed at load; norms, biases and an untied input embedding stay
 * f32). The forward pass computes in f32: OpenBLAS GEMMs and our skinny kernel for f32 weights,
 * the kernels of weight_matmul.h for packed ones.
 * Two entry points: model_forward over one sequence's contiguous KV cache (tests, benchmarks),
 * and model_forward_batch over many sequences whose KV lives in the paged pool of kv_cache.h
 * (the engine). A model is owned by one thread at a time: it keeps its scratch buffers inside. */
#ifndef DUEL_MODEL_H
#define DUEL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "kv_cache.h"
#include "model_config.h"
#include "safetensors.h"
#include "weight_format.h"

typedef struct model model;

/* Loads <dir>/config.json and the weights. Every expected tensor is checked for presence, dtype
 * and shape before use; errors name the file and the tensor. */
int model_load(const char *dir, model **out, duel_error *err);

typedef struct model_load_options {
    weight_format weights; /* WEIGHT_F32 (model_load's), WEIGHT_BF16 or WEIGHT_Q8 */
    int threads;           /* 0 or 2 (model_load's): the caller's thread and the model's helper
                              thread; 1: the caller's alone (benchmarks against one-thread
                              programs). OpenBLAS keeps its own threads (OPENBLAS_NUM_THREADS) */
    /* The weights from an archive already open (a snapshot's weights received through a GPU
     * weight transport, trainer/weight_transport_model.h), only read, closed by the caller;
     * <dir>/config.json still gives the shape. NULL (model_load's): <dir>'s safetensors files. */
    const safetensors_archive *archive;
} model_load_options;
/* model_load with options (NULL: model_load's defaults). Packing runs here, on the caller's
 * thread, one matrix at a time from an f32 stage of the largest layer. */
int model_load_with(const char *dir, const model_load_options *opts, model **out,
                    duel_error *err);
/* model_load_with f32 weights from an archive already open (model_load_options.archive). */
int model_load_archive(const char *dir, const safetensors_archive *weights, model **out,
                       duel_error *err);
void model_free(model *m);
weight_format model_weight_format(const model *m);
/* Bytes of the linear layers and the head as held (packed sizes): what one decode step reads. */
size_t model_weight_bytes(const model *m);
const model_config *model_get_config(const model *m);
/* Number of output scores per position: vocab_size for causal LMs, num_labels for classifiers. */
int model_output_size(const model *m);

/* A contiguous per-sequence KV cache: for every layer, K and V as [max_tokens][kv_heads][head_dim]
 * f32. The engine's paged cache (inference/kv_cache.h) supersedes it for serving. */
typedef struct model_kv_cache model_kv_cache;
int model_kv_cache_create(const model *m, int max_tokens, model_kv_cache **out, duel_error *err);
void model_kv_cache_free(model_kv_cache *kv);
void model_kv_cache_reset(model_kv_cache *kv);
/* Tokens stored so far (the position of the next token). */
int model_kv_cache_length(const model_kv_cache *kv);
/* Drops the cache back to length (<= current length). */
void model_kv_cache_truncate(model_kv_cache *kv, int length);

/* Runs n_tokens tokens at positions length .. length+n_tokens-1 of kv, appending their K/V.
 * logits (optional): when all_logits, n_tokens x output_size scores for every position, else
 *   output_size scores for the last position only.
 * hidden_last (optional): hidden_size floats, the final-norm hidden state of the last position
 *   (what the output head sees; the ERM's features).
 * Fails with DUEL_ELIMIT when the cache would overflow, DUEL_EINVAL for token ids out of range. */
int model_forward(model *m, model_kv_cache *kv, const int32_t *tokens, int n_tokens,
                  float *logits, bool all_logits, float *hidden_last, duel_error *err);

/* One sequence's part of a batched forward step (model_forward_batch). */
typedef struct model_batch_entry {
    const kv_sequence *seq; /* its block table; positions start .. start+n_tokens-1 must be
                               reserved (kv_sequence_reserve), positions before start hold valid
                               K/V (committed or written by an earlier step) */
    const int32_t *tokens;  /* n_tokens ids, for positions start .. start+n_tokens-1 */
    int n_tokens;           /* >= 1 */
    int64_t start;          /* position of tokens[0], normally seq->num_tokens */
    float *logits;          /* optional: output_size scores of the last token */
    float *hidden_last;     /* optional: hidden_size floats, the final-norm hidden state of the
                               last token */
    const int32_t *targets; /* optional (language models): n_tokens ids; targets[t] >= 0 adds
                               log softmax(logits of token t)[targets[t]] (temperature 1, no
                               filtering) to *target_logprob; < 0 skips token t */
    double *target_logprob; /* with targets: receives the sum (0 when every target skips) */
} model_batch_entry;

/* Runs one step for several sequences at once: all their tokens are flattened into one
 * [n_total][hidden] activation so that every projection is one product over all sequences (the
 * weights are read once per step, not once per sequence: sgemm, or for steps of up to 8 rows the
 * skinny kernel cpu_matmul_skinny_isa, or with packed weights their kernels at any size, split
 * between the calling thread and a helper thread the model owns, which also shares decode
 * attention); attention runs per sequence, reading
 * K and V through its block table from the pool's host storage, where this call also writes the
 * new tokens' K/V (the caller commits them afterwards with kv_sequence_commit). Steps of more
 * than MODEL_BATCH_MAX_ROWS tokens run in several internal passes (a sequence's later tokens then
 * attend to the K/V its earlier ones wrote). Each sequence may appear at most once.
 * Per-row results equal a run of the sequence alone up to GEMM rounding (relative error ~1e-6;
 * with bf16 weights ~1e-3 where the step's row count picks another kernel than the run alone,
 * weight_matmul.h; with a bf16 KV pool ~1e-3 from the K/V rounding).
 * Entries with targets also score their tokens (the engine's reference log-probabilities): those
 * rows go through the final norm and the output head, one GEMM per internal pass.
 * DUEL_EINVAL for a pool whose shape (layers, kv heads, head_dim) differs from the model's or
 * without host storage, unreserved positions, token ids or targets out of range, targets on a
 * sequence classifier; nothing is written then. */
#define MODEL_BATCH_MAX_ROWS 512
int model_forward_batch(model *m, kv_pool *pool, const model_batch_entry *entries, int n_entries,
                        duel_error *err);

/* The weights as the forward pass holds them, for a backend that keeps its own copy (the CUDA
 * backend uploads them when an arm is loaded, compute.h). Matrices are [rows][cols] = [out][in]
 * row-major; q, k and v are fused into one [q_dim + 2 kv_dim][hidden] matrix (all q heads, then
 * all k heads, then all v heads; GPT-NeoX's interleaved rows already permuted) and Llama's
 * gate and up into one [2 ffn][hidden] (gate rows, then up); vectors are rows x 1. */
typedef enum model_tensor {
    MODEL_TENSOR_EMBEDDING,    /* [vocab][hidden] */
    MODEL_TENSOR_ATTN_NORM_W,  /* per layer from here to DOWN_B */
    MODEL_TENSOR_ATTN_NORM_B,  /* GPT-NeoX's LayerNorm only */
    MODEL_TENSOR_QKV_W,
    MODEL_TENSOR_QKV_B,
    MODEL_TENSOR_O_W,          /* [hidden][q_dim] */
    MODEL_TENSOR_O_B,
    MODEL_TENSOR_MLP_NORM_W,
    MODEL_TENSOR_MLP_NORM_B,
    MODEL_TENSOR_UP_W,         /* Llama: [2 ffn][hidden]; GPT-NeoX: [ffn][hidden] */
    MODEL_TENSOR_UP_B,
    MODEL_TENSOR_DOWN_W,       /* [hidden][ffn] */
    MODEL_TENSOR_DOWN_B,
    MODEL_TENSOR_FINAL_NORM_W,
    MODEL_TENSOR_FINAL_NORM_B,
    MODEL_TENSOR_HEAD_W,       /* [output_size][hidden]; the embedding itself when tied */
    MODEL_TENSOR_COUNT
} model_tensor;

/* rows x cols of tensor t (layer is ignored outside the per-layer ones); 0 x 0 when the model
 * has no such tensor (a bias it lacks) or t or layer is out of range. */
void model_tensor_shape(const model *m, model_tensor t, int layer, int *rows, int *cols);
/* Copies tensor t as f32 into out (rows * cols floats): with bf16 or q8 weights the linear
 * layers and the head (and a tied embedding) as the packed values stand, widened (q8: scale *
 * quant), so a backend that keeps its own copy computes with the weights the CPU does.
 * DUEL_EINVAL for a tensor the model lacks or a bad t or layer. */
int model_tensor_read(const model *m, model_tensor t, int layer, float *out, duel_error *err);
/* Whether the output head is the input embedding (tied): a backend then holds it once. */
bool model_head_is_embedding(const model *m);
/* RoPE inverse frequencies, rotary_dim / 2 doubles (cpu_rope_inv_freq's, scaling included). */
const double *model_rope_inv_freq(const model *m);

/* Time spent, for `duel bench forward`: total forward seconds, of which in GEMM/GEMV calls. */
typedef struct model_timing {
    double forward_seconds;
    double gemm_seconds;
    long long gemm_flops;
} model_timing;
model_timing model_get_timing(const model *m);
void model_reset_timing(model *m);

#endif
