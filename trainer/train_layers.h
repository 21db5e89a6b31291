/* train_layers.h: the layers of the trainer's forward and backward passes, llm.c-style. Each
 * layer is a pair <layer>_forward / <layer>_backward over plain row-major f32 arrays; nothing
 * here allocates, validates or fails (the model checks shapes and token ids once, up front).
 *
 * Conventions, shared by every pair unless its comment says otherwise:
 * - forward OVERWRITES its outputs and saves what backward needs in caller-provided arrays;
 * - backward ACCUMULATES (+=) into the gradients of its inputs and parameters, so that a tensor
 *   read twice (the residual stream, tied embeddings) gets the sum of both contributions; callers
 *   zero gradient buffers first. A gradient pointer may be NULL when that gradient is not needed.
 * - n is a number of rows (batch * positions); tensors with a sequence axis are [batch][seq_len].
 * - Weights use Hugging Face's layout: a linear layer's weight is [out_dim][in_dim]. */
#ifndef DUEL_TRAIN_LAYERS_H
#define DUEL_TRAIN_LAYERS_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "model_config.h"

/* out[i] = table[tokens[i]] for n tokens of width dim; tokens must be in range. */
void train_embedding_forward(float *out, const int32_t *tokens, const float *table, int n, int dim);
void train_embedding_backward(float *dtable, const float *dout, const int32_t *tokens, int n,
                              int dim);

/* RMSNorm as in HF Llama: out = weight * x / sqrt(mean(x^2) + eps); rstd[i] saves the inverse
 * root of row i. */
void train_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int n,
                           int dim, float eps);
void train_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                            const float *weight, const float *rstd, int n, int dim);

/* LayerNorm (GPT-NeoX): out = weight * (x - mean) / sqrt(var + eps) + bias, biased variance;
 * mean[i] and rstd[i] save row i's statistics. */
void train_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                             const float *weight, const float *bias, int n, int dim, float eps);
void train_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                              const float *inp, const float *weight, const float *mean,
                              const float *rstd, int n, int dim);

/* GELU over n values: exact 0.5 x (1 + erf(x / sqrt 2)) (HF "gelu"), or with tanh_approx the
 * tanh form 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (HF "gelu_new"). */
void train_gelu_forward(float *out, const float *inp, int n, bool tanh_approx);
void train_gelu_backward(float *dinp, const float *dout, const float *inp, int n, bool tanh_approx);

/* out[n][out_dim] = inp[n][in_dim] * weight^T + bias (bias may be NULL); cblas_sgemm. */
void train_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                          int n, int in_dim, int out_dim);
void train_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                           const float *inp, const float *weight, int n, int in_dim, int out_dim);

/* Rotary tables for positions 0..seq_len-1: cos_table and sin_table are [seq_len][rotary_dim/2],
 * with the inverse frequencies of config (rope_theta, rotary_dim and the rope_scaling kinds
 * none, linear and llama3, as Hugging Face computes them). Fails with DUEL_EINVAL for an odd
 * rotary_dim or non-positive theta/factors. */
int train_rope_tables(float *cos_table, float *sin_table, int seq_len, const model_config *config,
                      duel_error *err);

/* Forked rows: each row of a batch holds two sequences that share a prefix (a preference
 * pair's prompt, computed once instead of twice). Row b is the prefix [0, shared[b]), then
 * branch A [shared[b], branch[b]), then branch B [branch[b], seq_len) (whose end may be right
 * padding). A continues the prefix as usual; B continues it as if A were not there: its tokens
 * sit at positions shared[b], shared[b] + 1, ... (RoPE) and attend to the prefix and to B only.
 * The sequence sums are then 2 * batch: branch A of row b at [b], branch B at [batch + b].
 * 0 <= shared[b] <= branch[b] <= seq_len. NULL where a function takes one: plain rows. */
typedef struct train_fork {
    const int32_t *shared;
    const int32_t *branch;
} train_fork;

/* The position of index t of row b (t itself in a plain row). */
static inline int train_fork_position(const train_fork *fork, int b, int t) {
    if (!fork || t < fork->branch[b]) return t;
    return fork->shared[b] + (t - fork->branch[b]);
}

/* Rotary position embedding in HF's rotate_half layout (pairs i and i + rotary_dim/2 of the
 * first rotary_dim dimensions of each head; the rest pass through), at position t of each
 * sequence (sequences are right-padded, so a token's position is its index; in forked rows,
 * train_fork_position). inp and out are [batch][seq_len][heads][head_dim]; forward may run in
 * place (out == inp). */
void train_rope_forward(float *out, const float *inp, const float *cos_table,
                        const float *sin_table, int batch, int seq_len, int heads, int head_dim,
                        int rotary_dim, const train_fork *fork);
void train_rope_backward(float *dinp, const float *dout, const float *cos_table,
                         const float *sin_table, int batch, int seq_len, int heads, int head_dim,
                         int rotary_dim, const train_fork *fork);

/* Causal multi-head attention with grouped K/V heads (query head h reads K/V head
 * h / (q_heads / kv_heads), as HF's repeat_kv), scale 1/sqrt(head_dim).
 * q, out: [batch][seq_len][q_heads][head_dim]; k, v: [batch][seq_len][kv_heads][head_dim].
 * probs: [batch][q_heads][seq_len][seq_len] saved softmax rows (zero above the diagonal).
 * Backward needs scratch of seq_len * seq_len floats. Right padding needs no key mask: positions after
 * a sequence's end are never attended to by its real tokens. In forked rows, branch B's queries
 * do not see branch A (their probabilities there are zero, which the backward relies on). */
void train_attention_forward(float *out, float *probs, const float *q, const float *k,
                             const float *v, int batch, int seq_len, int q_heads, int kv_heads,
                             int head_dim, const train_fork *fork);
void train_attention_backward(float *dq, float *dk, float *dv, float *scratch,
                              const float *dout, const float *probs, const float *q,
                              const float *k, const float *v, int batch, int seq_len, int q_heads,
                              int kv_heads, int head_dim);

/* SwiGLU: out = silu(gate) * up, elementwise over n values. */
void train_swiglu_forward(float *out, const float *gate, const float *up, int n);
void train_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                           const float *up, int n);

/* out = a + b over n values. */
void train_residual_forward(float *out, const float *a, const float *b, int n);
void train_residual_backward(float *da, float *db, const float *dout, int n);

/* Log-softmax gathered at the targets: for each of n rows of logits[n][vocab],
 * logprob[i] = logits[i][targets[i]] - logsumexp(logits[i]); lse[i] saves the logsumexp.
 * Targets must be in range. */
void train_logprob_forward(float *logprob, float *lse, const float *logits,
                           const int32_t *targets, int n, int vocab);
/* dlogits[i][j] = dlogprob[i] * (1[j == targets[i]] - softmax(logits[i])[j]). Unlike the other
 * backward passes this one WRITES dlogits, and may run in place (dlogits == logits), which saves
 * a second [n][vocab] buffer. */
void train_logprob_backward(float *dlogits, const float *logits, const float *lse,
                            const int32_t *targets, const float *dlogprob, int n, int vocab);

/* Sequence reduction: seq_sum[b] = sum_t mask[b][t] * token_logprob[b][t], seq_count[b] =
 * sum_t mask[b][t] (in double, so long responses keep their precision). Forked rows: 2 * batch
 * sums, branch A's (t < branch[b]) at [b] and branch B's at [batch + b]. */
void train_sequence_logprob_forward(double *seq_sum, double *seq_count, const float *token_logprob,
                                    const float *mask, int batch, int seq_len, const train_fork *fork);
void train_sequence_logprob_backward(float *dtoken_logprob, const double *dseq_sum,
                                     const float *mask, int batch, int seq_len, const train_fork *fork);

#endif
