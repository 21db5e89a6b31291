/* train_storage.h: the memory every trainable model family (llama_train.c, neox_train.c) keeps
 * the same way: parameters and gradients as one contiguous array each, carved into the family's
 * struct of pointers; the table of HF-named tensors over them; and the activations of the last
 * forward with the batch copied into them. A family says only what differs (its slots, their
 * sizes, its tensor names); the checks, the allocation, the lookups and the
 * forward-then-backward bookkeeping live here once.
 *
 * Invariant: have_forward is set by train_storage_end_forward when a forward has completed, and
 * cleared by every new forward, every reallocation and train_storage_begin_backward, so each
 * backward consumes exactly one forward's activations.
 *
 * Ownership: part of one model, used by one thread at a time. */
#ifndef DUEL_TRAIN_STORAGE_H
#define DUEL_TRAIN_STORAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "train_common.h"

typedef struct train_storage {
    /* parameters, gradients and their tensor table */
    float *param_memory, *grad_memory; /* num_parameters floats each, in the same order */
    size_t num_parameters;
    train_tensor *tensors;
    int num_tensors;
    /* activations of the last forward (act_memory carved by the family) */
    float *act_memory;
    int32_t *int_memory; /* tokens, targets, rows, row_targets: [cap_batch * cap_seq] each */
    float *mask;         /* [cap_batch * cap_seq]: copy of the batch's mask */
    int cap_batch, cap_seq;
    int batch, seq, num_rows; /* of the last forward */
    int32_t *tokens, *targets, *rows, *row_targets;
    train_fork_saved fork; /* of the last forward */
    bool have_forward;
} train_storage;

/* DUEL_ELIMIT (prefixed by who) when a config's parameter count, computed in double before any
 * size_t product, is over TRAIN_MAX_PARAMETERS. */
int train_storage_check_parameter_count(double total, const char *who, duel_error *err);

/* Allocates zeroed parameters and gradients of sum(sizes) floats and a table for max_tensors
 * tensors (the family's count for its config: the table does not grow), and points param_slots[i] and grad_slots[i] at slot i of each (NULL where sizes[i] is
 * 0). who prefixes messages. DUEL_ENOMEM (s is then freed). */
int train_storage_init(train_storage *s, float **param_slots[], float **grad_slots[],
                       const size_t sizes[], int num_slots, size_t max_tensors, const char *who,
                       duel_error *err);
/* Frees everything s owns; s may be zeroed or partly initialised. */
void train_storage_free(train_storage *s);

/* Appends a tensor of shape [d0] (ndim 1) or [d0][d1] whose parameters start at param (a
 * pointer into param_memory); its gradient is the same offset into grad_memory. */
void train_storage_add_tensor(train_storage *s, const char *name, int ndim, int d0, int d1,
                              float *param);

/* One row of a family's per-layer tensor table: layer l's tensor is base + l * stride (a NULL
 * base, such as an absent bias, adds none). */
typedef struct train_layer_tensor {
    const char *suffix; /* HF name after the layer prefix, e.g. "mlp.up_proj.weight" */
    int ndim, d0, d1;
    float *base;
    size_t stride;
} train_layer_tensor;
/* Layer l's slice of an [L][stride] parameter or gradient; NULL for an absent one (a bias the
 * config does not have), which the layer functions take as "none". */
static inline float *train_layer_slice(float *base, int l, size_t stride) {
    return base ? base + (size_t)l * stride : NULL;
}
/* Adds layer's tensors of rows in order, named "<prefix>.<layer>.<suffix>". */
void train_storage_add_layer_tensors(train_storage *s, const char *prefix, int layer,
                                     const train_layer_tensor *rows, size_t num_rows);

/* DUEL_EINVAL for an index outside [0, num_tensors). */
int train_storage_tensor_at(const train_storage *s, int index, train_tensor *out);
/* DUEL_ENOTFOUND (prefixed by who) when there is no tensor of that name. */
int train_storage_find_tensor(const train_storage *s, const char *name, train_tensor *out,
                              const char *who, duel_error *err);
void train_storage_zero_grad(train_storage *s);

/* The checks at the start of a forward: the batch (train_batch_check; fork rows may exceed
 * max_positions as train_fork_save allows), the required outputs, and the fork, saved for the
 * backward (*fork: the one to compute with, NULL for plain rows). Clears have_forward. */
int train_storage_begin_forward(train_storage *s, const train_batch *batch,
                                const train_fork *fork_in, const double *seq_logprob,
                                const double *seq_count, int vocab, int max_positions,
                                const char *who, const train_fork **fork, duel_error *err);
/* Whether activations for batch x seq need (re)allocating; if so, *cap_batch and *cap_seq get
 * the capacity to allocate (the larger of old and new in each dimension). */
bool train_storage_needs_activations(const train_storage *s, int batch, int seq, int *cap_batch,
                                     int *cap_seq);
/* Replaces the activations with sum(sizes) floats for cap_batch x cap_seq, carved into
 * slots[i] (NULL where sizes[i] is 0), plus the integer and mask copies. estimate_floats is the
 * family's count of the same floats in double: over TRAIN_MAX_ACTIVATION_BYTES gives
 * DUEL_ELIMIT before sizes (which may have wrapped then) is used. DUEL_ENOMEM keeps the old
 * activations. Clears have_forward. */
int train_storage_alloc_activations(train_storage *s, int cap_batch, int cap_seq,
                                    double estimate_floats, float **slots[], const size_t sizes[],
                                    int num_slots, const char *who, duel_error *err);
/* Copies the batch (tokens, targets, mask) into the activations, which must fit it. */
void train_storage_keep_batch(train_storage *s, const train_batch *batch);

/* Ends a successful forward: copies the B*T per-token log-probabilities the head saved
 * (saved_token_logprob) to token_logprob when the caller asked for them (non-NULL), and marks
 * the activations ready for one backward. */
void train_storage_end_forward(train_storage *s, float *token_logprob,
                               const float *saved_token_logprob);

/* The checks at the start of a backward: a forward to consume and one finite d(loss)/d(sum) per
 * sequence of it (2B for forked rows). Clears have_forward; *fork as the forward's. DUEL_EINVAL. */
int train_storage_begin_backward(train_storage *s, const double *dseq_logprob, const char *who,
                                 const train_fork **fork, duel_error *err);

#endif
