/* adamw.h: the optimizer side of training on flat f32 arrays (the views train_model.h exposes):
 * AdamW with decoupled weight decay, global-norm gradient clipping, and the learning-rate
 * schedule (linear warmup, then cosine decay to a floor). Parameters are the fp32 master
 * weights; the moments m and v are fp32 arrays of the same length owned by the adamw state.
 *
 * Determinism: every operation is a fixed-order loop, so the same inputs give bit-identical
 * outputs (checkpoint kill-and-resume relies on it). */
#ifndef DUEL_ADAMW_H
#define DUEL_ADAMW_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct adamw_options {
    double beta1;        /* 0.9 */
    double beta2;        /* 0.95 */
    double epsilon;      /* 1e-8 */
    double weight_decay; /* decoupled, multiplied by the learning rate; 0.1 by default */
} adamw_options;

typedef struct adamw_state {
    size_t num_parameters;
    int64_t step; /* updates applied so far (bias correction uses step + 1 on the next update) */
    float *m;     /* first moment [num_parameters] */
    float *v;     /* second moment [num_parameters] */
} adamw_state;

/* The learning-rate schedule: linear warmup from lr/warmup to lr over warmup_steps, then cosine
 * from lr down to min_lr at total_steps (min_lr afterwards). */
typedef struct lr_schedule {
    double lr;
    double min_lr;
    int64_t warmup_steps;
    int64_t total_steps;
} lr_schedule;

void adamw_default_options(adamw_options *out);
/* Allocates zeroed moments. DUEL_EINVAL for 0 parameters, DUEL_ENOMEM. */
int adamw_init(adamw_state *state, size_t num_parameters, duel_error *err);
void adamw_free(adamw_state *state);

/* One AdamW update of params from grads with learning rate lr; increments state->step.
 * decay_mask (optional, num_parameters bytes): 1 where weight decay applies (matrices), 0 for
 * norms and biases; NULL applies it everywhere. DUEL_EINVAL for bad options or a non-finite lr. */
int adamw_update(adamw_state *state, const adamw_options *options, float *params,
                 const float *grads, const unsigned char *decay_mask, double lr, duel_error *err);

/* Global L2 norm of grads (accumulated in double). */
double adamw_grad_norm(const float *grads, size_t n);
/* Scales grads so that their global norm is at most max_norm (max_norm <= 0: no clipping).
 * Returns the norm before clipping (NaN/inf are returned as is and nothing is scaled). */
double adamw_clip_grad_norm(float *grads, size_t n, double max_norm);

/* DUEL_EINVAL for lr <= 0, min_lr outside [0, lr], negative or inconsistent step counts. */
int lr_schedule_check(const lr_schedule *schedule, duel_error *err);
/* Learning rate for the update with index step (0-based). */
double lr_schedule_at(const lr_schedule *schedule, int64_t step);

#endif
