/* llama_train.h: a trainable Llama-architecture model (Llama 2/3, SmolLM2, TinyLlama; Qwen2 =
 * Llama with q/k/v biases) in f32 on the CPU, llm.c-style: parameters, their gradients and the
 * activations saved by the forward pass are structs of pointers carved from one allocation each,
 * and the passes are chains of the layer pairs of train_layers.h.
 *
 * What it computes: for a batch of B right-padded sequences of length T, the sequence
 * log-probability sum_t mask[b][t] * log pi(targets[b][t] | tokens[b][0..t]) and the mask sum
 * (the response-token count, for per-token means). The backward pass takes d(loss)/d(sequence
 * log-probability) per sequence and accumulates d(loss)/d(parameter) into the gradients.
 * Only rows with a non-zero mask reach the output head, so prompt and padding cost no vocab GEMM.
 * The batch layout and the head are shared with GPT-NeoX (train_common.h); code that should not
 * care about the family uses train_model.h.
 *
 * Ownership: one thread at a time uses a llama_train; it owns its buffers. */
#ifndef DUEL_LLAMA_TRAIN_H
#define DUEL_LLAMA_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model_config.h"
#include "train_common.h"

/* Every parameter tensor, each covering all layers ([L][...]) where it is per layer. Biases
 * are NULL when the config has none. lm_head == embed_tokens when embeddings are tied. */
typedef struct llama_train_params {
    float *embed_tokens; /* [V][C] */
    float *attn_norm;    /* [L][C]       input_layernorm */
    float *wq;           /* [L][Hq*D][C] */
    float *bq;           /* [L][Hq*D]    attention_bias */
    float *wk;           /* [L][Hkv*D][C] */
    float *bk;           /* [L][Hkv*D] */
    float *wv;           /* [L][Hkv*D][C] */
    float *bv;           /* [L][Hkv*D] */
    float *wo;           /* [L][C][Hq*D] */
    float *bo;           /* [L][C]       attention_out_bias */
    float *mlp_norm;     /* [L][C]       post_attention_layernorm */
    float *w_gate;       /* [L][F][C] */
    float *b_gate;       /* [L][F]       mlp_bias */
    float *w_up;         /* [L][F][C] */
    float *b_up;         /* [L][F] */
    float *w_down;       /* [L][C][F] */
    float *b_down;       /* [L][C] */
    float *final_norm;   /* [C]          model.norm */
    float *lm_head;      /* [V][C] */
} llama_train_params;

typedef struct llama_train llama_train;

/* Creates a model with zeroed parameters and gradients for config (LlamaForCausalLM with SiLU;
 * other architectures give DUEL_EUNSUPPORTED, inconsistent sizes DUEL_EINVAL). */
int llama_train_create(const model_config *config, llama_train **out, duel_error *err);
void llama_train_free(llama_train *model);
const model_config *llama_train_config(const llama_train *model);
size_t llama_train_num_parameters(const llama_train *model);

/* The parameter and gradient structs (pointers into the model; valid until llama_train_free). */
llama_train_params *llama_train_parameters(llama_train *model);
llama_train_params *llama_train_gradients(llama_train *model);
/* All parameters, and their gradients, as one contiguous array of llama_train_num_parameters
 * floats each, in the same order (the optimizer's view: AdamW, clipping, copies). */
float *llama_train_parameter_memory(llama_train *model);
float *llama_train_gradient_memory(llama_train *model);

/* HF-named tensors in transformers' state_dict order: embed_tokens, then per layer
 * self_attn.{q,k,v,o}_proj (weight, then bias where the config has one), mlp.{gate,up,down}_proj,
 * input_layernorm, post_attention_layernorm; then model.norm and lm_head (absent when tied). */
int llama_train_num_tensors(const llama_train *model);
int llama_train_tensor_at(llama_train *model, int index, train_tensor *out);
/* DUEL_ENOTFOUND when the model has no tensor of that name. */
int llama_train_find_tensor(llama_train *model, const char *name, train_tensor *out,
                            duel_error *err);

void llama_train_zero_grad(llama_train *model);

/* Runs the forward pass, saving activations for llama_train_backward (the batch's arrays are
 * copied). seq_logprob[b] and seq_count[b] (batch_size each) receive the masked sum of target
 * log-probabilities and the mask sum. token_logprob (optional, B*T) receives each target's
 * log-probability where mask != 0 and 0 elsewhere. Activation memory grows to fit the largest
 * batch seen. Errors: DUEL_EINVAL (bad shapes, token or target out of range, bad mask),
 * DUEL_ELIMIT (seq_len over max_position_embeddings or activations over the memory bound),
 * DUEL_ENOMEM. */
int llama_train_forward(llama_train *model, const train_batch *batch, double *seq_logprob,
                        double *seq_count, float *token_logprob, duel_error *err);
/* The same over forked rows (train_layers.h: two sequences per row sharing a prefix, such as
 * the chosen and rejected answers to one prompt): seq_logprob and seq_count receive 2 * B
 * values (branch A of row b at [b], branch B at [B + b]), and the next backward takes 2 * B
 * gradients in that order. */
int llama_train_forward_forked(llama_train *model, const train_batch *batch, const train_fork *fork,
                               double *seq_logprob, double *seq_count, float *token_logprob,
                               duel_error *err);

/* Backward pass of the last forward: dseq_logprob[b] = d(loss)/d(seq_logprob[b]) (for a per-token
 * mean, divide by seq_count[b] first). Accumulates into the gradients; can be called once per
 * forward. DUEL_EINVAL without a preceding forward or with a non-finite dseq_logprob. */
int llama_train_backward(llama_train *model, const double *dseq_logprob, duel_error *err);

#endif
