/* lm_trainer.h: the training loop shared by `duel pretrain` and `duel sft` (next-token loss on
 * the tokens each example marks), plus loading, initialising and exporting models in Hugging
 * Face format.
 *
 * One update = grad_accum micro-batches of batch_size examples; the loss is the mean negative
 * log-likelihood over all loss-carrying tokens of the update (every token weighs the same however
 * the micro-batches split them). Then: gradient clipping to a global norm, AdamW on the fp32
 * master weights (no weight decay on norms and biases), the warmup + cosine schedule.
 * With a checkpoint folder, the loop resumes from it when present and saves every
 * checkpoint_every updates and at the end; batches are a pure function of (seed, update index),
 * so an interrupted and resumed run computes bit-for-bit what an uninterrupted run computes. */
#ifndef DUEL_LM_TRAINER_H
#define DUEL_LM_TRAINER_H

#include <stdbool.h>
#include <stdint.h>

#include "adamw.h"
#include "error.h"
#include "lm_data.h"
#include "train_model.h"

typedef struct lm_train_options {
    int batch_size;
    int grad_accum;
    int64_t total_steps;
    double lr, min_lr;
    int64_t warmup_steps;
    adamw_options adamw;
    double clip_norm;          /* <= 0: no clipping */
    int64_t eval_every;        /* 0: only at the end (when there is validation data) */
    int eval_batches;          /* validation micro-batches per evaluation (0: all) */
    int64_t checkpoint_every;  /* 0: only at the end */
    const char *checkpoint_dir; /* NULL: no checkpoints, no resume */
    int64_t stop_at_step;      /* > 0: return after this update (checkpointed), as if killed */
    uint64_t seed;
    const char *config_json;   /* the model's config.json text, stored in checkpoints */
} lm_train_options;

typedef enum lm_train_event {
    LM_TRAIN_RESUMED,
    LM_TRAIN_STEP,
    LM_TRAIN_EVAL,
    LM_TRAIN_CHECKPOINT,
} lm_train_event;

typedef struct lm_train_progress {
    lm_train_event event;
    int64_t step;        /* updates done */
    int64_t total_steps;
    double loss;         /* the last update's mean token loss */
    double valid_loss;   /* the last evaluation's (NaN before the first) */
    double lr;
    double grad_norm;    /* before clipping */
    double tokens_seen;  /* input tokens processed since the start of training (resumes included) */
    double tokens_per_second; /* this run's input tokens per second */
    double elapsed_seconds;   /* this run */
    double eta_seconds;
} lm_train_progress;

typedef void (*lm_train_callback)(void *ctx, const lm_train_progress *progress);

void lm_train_default_options(lm_train_options *out);

/* Trains model on train (valid may be NULL). callback (optional) gets every event. Errors:
 * DUEL_EINVAL for bad options, a checkpoint of another seed or shape; the checkpoint's and the
 * model's errors; DUEL_EFORMAT when the loss becomes non-finite (naming the step). */
int lm_train_run(train_model *model, const lm_dataset *train, const lm_dataset *valid,
                 const lm_train_options *options, lm_train_callback callback, void *ctx,
                 lm_train_progress *final, duel_error *err);

/* Mean token loss of model over the first max_batches batches of data (0: all) in file order. */
int lm_train_evaluate(train_model *model, const lm_dataset *data, int batch_size, int max_batches,
                      double *loss, duel_error *err);

/* Parameters of a fresh model: N(0, std) for matrices and embeddings (output projections of each
 * layer scaled by 1/sqrt(2 layers), as GPT-2 does), ones for norm weights, zeros for biases. */
void lm_model_init_random(train_model *model, uint64_t seed, double std);

/* Loads config.json and model.safetensors (any float dtype) of an HF model folder into a new
 * model; *config_json receives the config text (free()). */
int lm_model_load_hf(const char *dir, train_model **out, char **config_json, duel_error *err);

/* Writes config.json and model.safetensors (bf16 or f32) into dir (created if missing). */
int lm_model_export_hf(train_model *model, const char *config_json, const char *dir, bool bf16,
                       duel_error *err);
/* The data section of the f32 model.safetensors lm_model_export_hf writes: every tensor in its
 * order, packed, into out (train_model_num_parameters floats). What a GPU weight transport sends
 * (the parameter memory itself is laid out otherwise), so that a receiver can check it against
 * the file's sha256 (trainer/weight_transport_model.h). */
void lm_model_export_block(train_model *model, float *out);

#endif
