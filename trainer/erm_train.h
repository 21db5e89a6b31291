/* erm_train.h: training of the ERM ensemble (inference/erm.h) from real preference pairs
 * (DESIGN.md section 6). The trainer owns a FIFO buffer of the last `buffer_capacity` pairs
 * (phi+, phi-), the AdamW moments of the heads and the RNG that draws minibatches.
 *
 * Loss of head e on a minibatch of B pairs, with N the real pairs seen so far:
 *     L_e = (1/B) sum_i softplus(-(r_e(phi+_i) - r_e(phi-_i)))
 *           + lambda * (B/N) * mean_{k in head e}((theta_k - theta0_k)^2)
 * The heads are independent: the optimised objective is sum_e L_e (each parameter gets the
 * gradient of its own head's loss), all heads see the same minibatch, and the reported loss is
 * mean_e L_e. One update (erm_trainer_update) is `adam_steps` AdamW steps, each on a fresh
 * minibatch: the whole buffer (oldest first) while it holds at most `minibatch` pairs, else
 * `minibatch` distinct pairs drawn uniformly. Nothing is trained before `min_pairs` are stored.
 *
 * Determinism: the same pairs, seed and options give bit-identical parameters (fixed-order
 * loops, one SGEMM call shape per layer); the RNG state is part of the trainer's state and is
 * exposed so a checkpoint can carry it. Not thread-safe: the trainer thread owns it. */
#ifndef DUEL_ERM_TRAIN_H
#define DUEL_ERM_TRAIN_H

#include <stdint.h>

#include "adamw.h"
#include "erm.h"
#include "error.h"
#include "rng.h"

#define ERM_TRAIN_MAX_BUFFER 10000000 /* pairs in the FIFO buffer */
#define ERM_TRAIN_MAX_MINIBATCH 65536

typedef struct erm_train_options {
    int adam_steps;      /* AdamW steps per update: 5 */
    int minibatch;       /* pairs per step: 128 */
    int buffer_capacity; /* FIFO of real pairs: 50000 */
    int min_pairs;       /* no training below this many stored pairs: 16 */
    double lr;           /* 1e-3 */
    double weight_decay; /* decoupled AdamW decay: 5e-5 */
    double lambda;       /* regulariser weight toward theta_0: 0.5 */
    double beta1, beta2, epsilon; /* Adam: 0.9, 0.999, 1e-8 */
} erm_train_options;

typedef struct erm_train_stats {
    int steps;          /* AdamW steps taken by this update (0 below min_pairs) */
    int minibatch;      /* pairs per step */
    double loss;        /* mean_e L_e of the last step (before its update) */
    double data_loss;   /* mean_e of the softplus part of the last step (before its update) */
    double accuracy;    /* fraction of the last minibatch the ensemble mean ordered right
                           before the last step */
} erm_train_stats;

typedef struct erm_trainer erm_trainer;

void erm_train_default_options(erm_train_options *out);

/* A trainer for model (borrowed: it must outlive the trainer, and only the trainer writes its
 * parameters while it exists). seed starts the minibatch RNG. */
int erm_trainer_create(erm *model, const erm_train_options *options, uint64_t seed,
                       erm_trainer **out, duel_error *err);
void erm_trainer_free(erm_trainer *trainer);

/* Appends n pairs (rows of d_feat floats each) to the FIFO (dropping the oldest beyond
 * capacity) and adds n to the pairs seen. Non-finite features are DUEL_EINVAL naming the pair;
 * nothing is appended then. */
int erm_trainer_add_pairs(erm_trainer *trainer, const float *chosen, const float *rejected,
                          int n, duel_error *err);

/* One update (see above). stats may be NULL. */
int erm_trainer_update(erm_trainer *trainer, erm_train_stats *stats, duel_error *err);

/* State for checkpoints. The buffer is read oldest first: pair i of erm_trainer_buffer_count. */
int64_t erm_trainer_pairs_seen(const erm_trainer *trainer);
int erm_trainer_buffer_count(const erm_trainer *trainer);
void erm_trainer_buffer_pair(const erm_trainer *trainer, int index, const float **chosen,
                             const float **rejected);
adamw_state *erm_trainer_optimizer(erm_trainer *trainer);
duel_rng *erm_trainer_rng(erm_trainer *trainer);
/* Empties the buffer and sets the pairs seen (for a restore, followed by add_pairs of the
 * stored pairs and a second set_pairs_seen with the checkpoint's count). */
void erm_trainer_reset_buffer(erm_trainer *trainer);
void erm_trainer_set_pairs_seen(erm_trainer *trainer, int64_t pairs_seen);

/* The objective sum_e L_e on an explicit minibatch of B pairs and its gradient (grad has
 * erm_num_params floats, overwritten; may be NULL for the loss alone). reg_scale is
 * lambda * B / N. loss_per_head (optional, E doubles) receives each L_e. Used by the update and
 * by the gradient check. When every pair's chosen and rejected rows share their first half (the
 * prompt's state in the engine's [prompt | candidate] features), layer 1 computes it once per
 * pair: a quarter less work, the same result up to rounding. */
int erm_train_loss_grad(const erm *model, const float *chosen, const float *rejected, int B,
                        double reg_scale, float *grad, double *loss_per_head, duel_error *err);

/* Fraction of the n pairs whose ensemble-mean reward ranks chosen above rejected (ties count
 * as wrong). */
int erm_train_accuracy(const erm *model, const float *chosen, const float *rejected, int n,
                       double *accuracy, duel_error *err);

#endif
