/* dpo_trainer.h: offline preference optimisation (DPO, IPO, SLiC; dap_loss.h) on a fixed set of
 * preference pairs, as `duel dpo` runs it.
 *
 * The reference model's sequence log-probabilities are computed once per pair up front (the
 * reference is the starting policy, frozen). Each update takes pairs_per_batch pairs, runs the
 * policy on their chosen and rejected responses as one batch (chosen rows first), computes the
 * loss and its gradient with respect to the sequence sums, backpropagates, clips and applies
 * AdamW with the warmup + cosine schedule. Pair order is a pure function of (seed, update), and
 * checkpoints (checkpoint.h) make an interrupted run resume to the same weights. */
#ifndef DUEL_DPO_TRAINER_H
#define DUEL_DPO_TRAINER_H

#include <stdint.h>

#include "adamw.h"
#include "dap_loss.h"
#include "error.h"
#include "lm_data.h"
#include "train_model.h"

typedef struct dpo_train_options {
    dap_loss_options loss;
    int pairs_per_batch;
    int64_t total_steps;
    double lr, min_lr;
    int64_t warmup_steps;
    adamw_options adamw;
    double clip_norm;
    int64_t eval_every;        /* 0: only at the end */
    int64_t checkpoint_every;  /* 0: only at the end */
    const char *checkpoint_dir; /* NULL: none */
    int64_t stop_at_step;
    uint64_t seed;
    const char *config_json;
} dpo_train_options;

/* Sequence sums of a model over pairs: chosen[i], rejected[i] and their token counts. */
typedef struct dpo_logprobs {
    size_t num_pairs;
    double *chosen, *rejected, *chosen_count, *rejected_count;
} dpo_logprobs;

/* Evaluation of a policy on pairs against the reference's log-probabilities. */
typedef struct dpo_eval {
    double loss;
    double reward_margin;  /* mean beta * Delta: the implicit reward margin */
    double accuracy;       /* fraction of pairs with Delta > 0 */
    double chosen_logprob; /* mean log-probability of the preferred response */
    double rejected_logprob;
} dpo_eval;

typedef struct dpo_progress {
    int event; /* 0 resumed, 1 step, 2 evaluation, 3 checkpoint */
    int64_t step, total_steps;
    double loss, margin, accuracy, lr, grad_norm;
    double pairs_per_second, elapsed_seconds, eta_seconds;
    dpo_eval valid; /* the last evaluation (valid.loss NaN before the first) */
} dpo_progress;

typedef void (*dpo_callback)(void *ctx, const dpo_progress *progress);

void dpo_train_default_options(dap_loss_kind kind, dpo_train_options *out);

int dpo_logprobs_compute(train_model *model, const lm_dataset *pairs, int pairs_per_batch,
                         dpo_logprobs *out, duel_error *err);
void dpo_logprobs_free(dpo_logprobs *lp);

int dpo_evaluate(train_model *policy, const lm_dataset *pairs, const dpo_logprobs *reference,
                 const dap_loss_options *loss, int pairs_per_batch, dpo_eval *out,
                 duel_error *err);

/* valid and valid_reference may be NULL. */
int dpo_train_run(train_model *policy, const lm_dataset *pairs, const dpo_logprobs *reference,
                  const lm_dataset *valid, const dpo_logprobs *valid_reference,
                  const dpo_train_options *options, dpo_callback callback, void *ctx,
                  dpo_progress *final, duel_error *err);

#endif
