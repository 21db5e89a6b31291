/* train_common.h: what the trainable model families (llama_train.h, neox_train.h) share: the
 * batch layout and its validation, the descriptor of an HF-named parameter tensor, and the
 * output head over masked rows (the forward/backward pair that turns final hidden states into
 * sequence log-probabilities). */
#ifndef DUEL_TRAIN_COMMON_H
#define DUEL_TRAIN_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "train_layers.h"

/* Upper bound on the activation memory one forward may allocate (bytes). */
#define TRAIN_MAX_ACTIVATION_BYTES ((size_t)64 << 30)
/* Upper bound on a model's parameter count (f32 parameters and gradients must fit in memory). */
#define TRAIN_MAX_PARAMETERS (4LL << 30)

/* A batch: B sequences right-padded to T positions. targets[b][t] is the token that follows
 * tokens[b][0..t]; mask[b][t] weighs it (1 on response tokens, 0 on prompt and padding).
 * tokens must all be in [0, vocab) (padding included); targets only where mask != 0 (ignored
 * targets such as -100 are fine). mask values must be finite and >= 0. */
typedef struct train_batch {
    int batch_size;
    int seq_len;
    const int32_t *tokens;
    const int32_t *targets;
    const float *mask;
} train_batch;

/* One parameter tensor under its Hugging Face name, e.g. "model.layers.3.mlp.up_proj.weight":
 * param and grad point into the model's memory (numel floats each, row-major shape). */
typedef struct train_tensor {
    char name[96];
    int ndim;
    int shape[2];
    size_t numel;
    float *param;
    float *grad;
} train_tensor;

/* Checks a batch against a vocabulary and a position limit (max_positions <= 0: none). who
 * prefixes messages. DUEL_EINVAL for NULL arrays, empty shapes, tokens or targets out of range,
 * bad masks (naming [b][t]); DUEL_ELIMIT for seq_len over max_positions. */
int train_batch_check(const train_batch *batch, int vocab, int max_positions, const char *who,
                      duel_error *err);

/* A model's copy of the forked layout of its last forward (train_fork), for the backward. */
typedef struct train_fork_saved {
    int32_t *memory; /* shared[cap], then branch[cap] */
    int cap;
    bool active;     /* the last forward was forked */
    train_fork view; /* points into memory while active */
} train_fork_saved;

/* Checks fork against a batch (0 <= shared[b] <= branch[b] <= seq_len) and copies it into
 * saved (fork NULL: saved becomes inactive). Returns the fork to compute with (NULL for plain
 * rows). A forked row may be longer than max_positions (> 0) as long as each of its sequences
 * fits: branch A ends by position max_positions, and so does branch B up to its last token with
 * a non-zero mask (right padding after it does not count). DUEL_EINVAL naming the row,
 * DUEL_ELIMIT for a sequence over max_positions, DUEL_ENOMEM. */
int train_fork_save(train_fork_saved *saved, const train_fork *fork, const train_batch *batch,
                    int max_positions, const char *who, const train_fork **out, duel_error *err);
void train_fork_saved_free(train_fork_saved *saved);
/* The saved fork, NULL when the last forward had plain rows. */
static inline const train_fork *train_fork_saved_get(const train_fork_saved *saved) {
    return saved->active ? &saved->view : NULL;
}

/* The output head. Forward: gathers the rows of hidden[B*T][C] whose mask is non-zero into
 * head_in (R rows, their indices in rows and targets in row_targets), computes
 * logits[R][V] = head_in * weight^T and the targets' log-probabilities (lse saves the
 * logsumexps), scatters them into token_logprob[B*T] (0 where mask == 0) and reduces them to
 * seq_logprob[b] and seq_count[b] (forked rows: 2B of each, train_fork). Returns R. Buffers
 * hold B*T rows. */
int train_head_forward(double *seq_logprob, double *seq_count, float *token_logprob,
                       int32_t *rows, int32_t *row_targets, float *head_in, float *logits,
                       float *lse, float *row_logprob, const float *hidden, const float *weight,
                       const int32_t *targets, const float *mask, int batch, int seq_len, int dim,
                       int vocab, const train_fork *fork);

/* Backward of train_head_forward for d(loss)/d(seq_logprob) = dseq: accumulates into
 * dhidden[B*T][C] (only masked rows receive gradient) and dweight[V][C]; logits is overwritten
 * with dlogits; d_head_in ([R][C]), d_token_logprob ([B*T]) and d_row_logprob ([R]) are scratch. */
void train_head_backward(float *dhidden, float *dweight, float *logits, float *d_head_in,
                         float *d_token_logprob, float *d_row_logprob, const double *dseq,
                         const int32_t *rows, const int32_t *row_targets, const float *head_in,
                         const float *lse, const float *weight, const float *mask, int num_rows,
                         int batch, int seq_len, int dim, int vocab, const train_fork *fork);

#endif
