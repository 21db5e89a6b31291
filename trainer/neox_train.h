/* neox_train.h: a trainable GPT-NeoX model (Pythia, the SEA paper's models) in f32 on the CPU,
 * the sibling of llama_train.h with the same shape of API and the same batch and head
 * (train_common.h). What differs: LayerNorm with biases, a fused query_key_value projection
 * laid out per head as [q | k | v], partial rotary (the first rotary_dim dimensions of each
 * head), GELU (exact or tanh), and the parallel residual x + attn(ln1(x)) + mlp(ln2(x)) when
 * use_parallel_residual (else the sequential one).
 *
 * Ownership: one thread at a time uses a neox_train; it owns its buffers. */
#ifndef DUEL_NEOX_TRAIN_H
#define DUEL_NEOX_TRAIN_H

#include <stddef.h>

#include "error.h"
#include "model_config.h"
#include "train_common.h"

/* Every parameter tensor, [L][...] where per layer; biases of attention are NULL without
 * attention_bias; embed_out == embed_in when tied. */
typedef struct neox_train_params {
    float *embed_in;   /* [V][C]   gpt_neox.embed_in */
    float *ln1_w;      /* [L][C]   input_layernorm */
    float *ln1_b;      /* [L][C] */
    float *ln2_w;      /* [L][C]   post_attention_layernorm */
    float *ln2_b;      /* [L][C] */
    float *w_qkv;      /* [L][3C][C] attention.query_key_value, rows [H][q,k,v][D] */
    float *b_qkv;      /* [L][3C] */
    float *w_dense;    /* [L][C][C] attention.dense */
    float *b_dense;    /* [L][C] */
    float *w_fc;       /* [L][F][C] mlp.dense_h_to_4h */
    float *b_fc;       /* [L][F] */
    float *w_proj;     /* [L][C][F] mlp.dense_4h_to_h */
    float *b_proj;     /* [L][C] */
    float *lnf_w;      /* [C]      gpt_neox.final_layer_norm */
    float *lnf_b;      /* [C] */
    float *embed_out;  /* [V][C] */
} neox_train_params;

typedef struct neox_train neox_train;

/* GPTNeoXForCausalLM with GELU (exact or tanh) and num_kv_heads == num_heads; other configs
 * give DUEL_EUNSUPPORTED, inconsistent sizes DUEL_EINVAL. Parameters start at zero. */
int neox_train_create(const model_config *config, neox_train **out, duel_error *err);
void neox_train_free(neox_train *model);
const model_config *neox_train_config(const neox_train *model);
size_t neox_train_num_parameters(const neox_train *model);
neox_train_params *neox_train_parameters(neox_train *model);
float *neox_train_parameter_memory(neox_train *model);
float *neox_train_gradient_memory(neox_train *model);

/* HF-named tensors in transformers' state_dict order: gpt_neox.embed_in, per layer
 * input_layernorm, post_attention_layernorm, attention.query_key_value, attention.dense,
 * mlp.dense_h_to_4h, mlp.dense_4h_to_h (weight then bias each), gpt_neox.final_layer_norm,
 * embed_out (absent when tied). */
int neox_train_num_tensors(const neox_train *model);
int neox_train_tensor_at(neox_train *model, int index, train_tensor *out);
int neox_train_find_tensor(neox_train *model, const char *name, train_tensor *out,
                           duel_error *err);
void neox_train_zero_grad(neox_train *model);

/* As llama_train_forward / llama_train_backward. */
int neox_train_forward(neox_train *model, const train_batch *batch, double *seq_logprob,
                       double *seq_count, float *token_logprob, duel_error *err);
/* The same over forked rows: 2 * B sequence sums (see llama_train_forward_forked). */
int neox_train_forward_forked(neox_train *model, const train_batch *batch, const train_fork *fork,
                              double *seq_logprob, double *seq_count, float *token_logprob,
                              duel_error *err);
int neox_train_backward(neox_train *model, const double *dseq_logprob, duel_error *err);

#endif
