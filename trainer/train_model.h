/* train_model.h: a trainable causal language model of either family, chosen by
 * config->arch: Llama (llama_train.h) or GPT-NeoX (neox_train.h). A thin dispatch so that the
 * policy trainer, pretraining and SFT need not care which family they hold; the functions mean
 * exactly what their llama_train_* counterparts say. */
#ifndef DUEL_TRAIN_MODEL_H
#define DUEL_TRAIN_MODEL_H

#include <stddef.h>

#include "error.h"
#include "model_config.h"
#include "train_common.h"

typedef struct train_model train_model;

int train_model_create(const model_config *config, train_model **out, duel_error *err);
void train_model_free(train_model *model);
const model_config *train_model_config(const train_model *model);
size_t train_model_num_parameters(const train_model *model);
float *train_model_parameter_memory(train_model *model);
float *train_model_gradient_memory(train_model *model);
int train_model_num_tensors(const train_model *model);
int train_model_tensor_at(train_model *model, int index, train_tensor *out);
int train_model_find_tensor(train_model *model, const char *name, train_tensor *out,
                            duel_error *err);
void train_model_zero_grad(train_model *model);
/* A byte per parameter, 1 where AdamW applies weight decay: tensors with two dimensions
 * (matrices, embeddings), not norms or biases. Heap-allocated (free()); NULL when out of
 * memory. */
unsigned char *train_model_decay_mask(train_model *model);
int train_model_forward(train_model *model, const train_batch *batch, double *seq_logprob,
                        double *seq_count, float *token_logprob, duel_error *err);
/* Forked rows (train_layers.h): two sequences per row sharing a prefix; 2 * B sums, and the
 * next backward takes 2 * B gradients (llama_train_forward_forked). */
int train_model_forward_forked(train_model *model, const train_batch *batch, const train_fork *fork,
                               double *seq_logprob, double *seq_count, float *token_logprob,
                               duel_error *err);
int train_model_backward(train_model *model, const double *dseq_logprob, duel_error *err);

/* Matrix FLOPs (2 per multiply-add) of one forward and backward pass, per position of a row of
 * length T: *body for every position (the layers' matrices, and attention over T positions),
 * *head for each position whose target carries loss (only those reach the output head). A
 * forward alone is a third of either. */
void train_model_flops_per_position(const train_model *model, int T, double *body, double *head);

#endif
