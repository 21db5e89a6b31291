/* model.h: a loaded causal language model (Llama or GPT-NeoX family) and its CPU forward pass.
 * Weights are read from a Hugging Face directory (config.json + safetensors), validated, and held
 * as f32 (bf16/f16 widened at load). The forward pass runs f32 compute with OpenBLAS GEMMs.
 * A model is owned by one thread at a time: it keeps its scratch buffers inside. */
#ifndef DUEL_MODEL_H
#define DUEL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model_config.h"

typedef struct model model;

/* Loads <dir>/config.json and the weights. Every expected tensor is checked for presence, dtype
 * and shape before use; errors name the file and the tensor. */
int model_load(const char *dir, model **out, duel_error *err);
void model_free(model *m);
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

/* Time spent, for `duel bench forward`: total forward seconds, of which in GEMM/GEMV calls. */
typedef struct model_timing {
    double forward_seconds;
    double gemm_seconds;
    long long gemm_flops;
} model_timing;
model_timing model_get_timing(const model *m);
void model_reset_timing(model *m);

#endif
