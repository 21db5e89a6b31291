/* train_common.c: batch validation and the masked-row output head shared by the trainable
 * model families (see train_common.h). */
#include "train_common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train_layers.h"

int train_batch_check(const train_batch *b, int vocab, int max_positions, const char *who,
                      duel_error *err) {
    if (!b || !b->tokens || !b->targets || !b->mask)
        return duel_error_set(err, DUEL_EINVAL, "%s: batch arrays must not be NULL", who);
    if (b->batch_size <= 0 || b->seq_len <= 0)
        return duel_error_set(err, DUEL_EINVAL, "%s: empty batch (%d x %d)", who, b->batch_size,
                              b->seq_len);
    if (max_positions > 0 && b->seq_len > max_positions)
        return duel_error_set(err, DUEL_ELIMIT,
                              "%s: seq_len %d is over max_position_embeddings %d", who,
                              b->seq_len, max_positions);
    size_t n = (size_t)b->batch_size * b->seq_len;
    for (size_t i = 0; i < n; i++) {
        int bi = (int)(i / b->seq_len), t = (int)(i % b->seq_len);
        if (b->tokens[i] < 0 || b->tokens[i] >= vocab)
            return duel_error_set(err, DUEL_EINVAL,
                                  "%s: token %d at [%d][%d] is outside the vocabulary of %d", who,
                                  (int)b->tokens[i], bi, t, vocab);
        if (!isfinite(b->mask[i]) || b->mask[i] < 0)
            return duel_error_set(err, DUEL_EINVAL, "%s: mask at [%d][%d] must be finite and >= 0",
                                  who, bi, t);
        if (b->mask[i] != 0 && (b->targets[i] < 0 || b->targets[i] >= vocab))
            return duel_error_set(err, DUEL_EINVAL,
                                  "%s: target %d at [%d][%d] (mask %g) is outside the vocabulary "
                                  "of %d",
                                  who, (int)b->targets[i], bi, t, (double)b->mask[i], vocab);
    }
    return 0;
}

int train_fork_save(train_fork_saved *saved, const train_fork *fork, const train_batch *batch,
                    int max_positions, const char *who, const train_fork **out, duel_error *err) {
    *out = NULL;
    saved->active = false;
    if (!fork) return 0;
    const int B = batch->batch_size, T = batch->seq_len;
    if (!fork->shared || !fork->branch) return duel_error_set(err, DUEL_EINVAL, "%s: fork without its arrays", who);
    for (int b = 0; b < B; b++)
        if (fork->shared[b] < 0 || fork->shared[b] > fork->branch[b] || fork->branch[b] > T)
            return duel_error_set(err, DUEL_EINVAL,
                                  "%s: row %d forks at %d with a prefix of %d (need 0 <= prefix <= fork <= %d)",
                                  who, b, (int)fork->branch[b], (int)fork->shared[b], T);
    for (int b = 0; b < B && max_positions > 0; b++) {
        int end = fork->branch[b]; /* branch B's real end: its last masked position + 1 */
        for (int t = T - 1; t >= fork->branch[b]; t--)
            if (batch->mask[(size_t)b * T + t] != 0) {
                end = t + 1;
                break;
            }
        const int longest = fork->branch[b] > fork->shared[b] + (end - fork->branch[b])
                                ? fork->branch[b]
                                : fork->shared[b] + (end - fork->branch[b]);
        if (longest > max_positions)
            return duel_error_set(err, DUEL_ELIMIT, "%s: row %d holds a sequence of %d positions, over the model's %d",
                                  who, b, longest, max_positions);
    }
    if (B > saved->cap) {
        int32_t *memory = malloc((size_t)2 * B * sizeof *memory);
        if (!memory) return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", who);
        free(saved->memory);
        saved->memory = memory;
        saved->cap = B;
    }
    memcpy(saved->memory, fork->shared, (size_t)B * sizeof(int32_t));
    memcpy(saved->memory + saved->cap, fork->branch, (size_t)B * sizeof(int32_t));
    saved->view = (train_fork){saved->memory, saved->memory + saved->cap};
    saved->active = true;
    *out = &saved->view;
    return 0;
}

void train_fork_saved_free(train_fork_saved *saved) {
    free(saved->memory);
    memset(saved, 0, sizeof *saved);
}

int train_head_forward(double *seq_logprob, double *seq_count, float *token_logprob,
                       int32_t *rows, int32_t *row_targets, float *head_in, float *logits,
                       float *lse, float *row_logprob, const float *hidden, const float *weight,
                       const int32_t *targets, const float *mask, int batch, int seq_len, int dim,
                       int vocab, const train_fork *fork) {
    int n = batch * seq_len, r = 0;
    for (int i = 0; i < n; i++)
        if (mask[i] != 0) {
            rows[r] = i;
            row_targets[r] = targets[i];
            memcpy(head_in + (size_t)r * dim, hidden + (size_t)i * dim, (size_t)dim * sizeof(float));
            r++;
        }
    train_linear_forward(logits, head_in, weight, NULL, r, dim, vocab);
    train_logprob_forward(row_logprob, lse, logits, row_targets, r, vocab);
    memset(token_logprob, 0, (size_t)n * sizeof(float));
    for (int k = 0; k < r; k++) token_logprob[rows[k]] = row_logprob[k];
    train_sequence_logprob_forward(seq_logprob, seq_count, token_logprob, mask, batch, seq_len, fork);
    return r;
}

void train_head_backward(float *dhidden, float *dweight, float *logits, float *d_head_in,
                         float *d_token_logprob, float *d_row_logprob, const double *dseq,
                         const int32_t *rows, const int32_t *row_targets, const float *head_in,
                         const float *lse, const float *weight, const float *mask, int num_rows,
                         int batch, int seq_len, int dim, int vocab, const train_fork *fork) {
    int n = batch * seq_len;
    memset(d_token_logprob, 0, (size_t)n * sizeof(float));
    train_sequence_logprob_backward(d_token_logprob, dseq, mask, batch, seq_len, fork);
    for (int k = 0; k < num_rows; k++) d_row_logprob[k] = d_token_logprob[rows[k]];
    train_logprob_backward(logits, logits, lse, row_targets, d_row_logprob, num_rows, vocab);
    memset(d_head_in, 0, (size_t)num_rows * dim * sizeof(float));
    train_linear_backward(d_head_in, dweight, NULL, logits, head_in, weight, num_rows, dim, vocab);
    for (int k = 0; k < num_rows; k++) {
        float *dst = dhidden + (size_t)rows[k] * dim;
        const float *src = d_head_in + (size_t)k * dim;
        for (int j = 0; j < dim; j++) dst[j] += src[j];
    }
}
