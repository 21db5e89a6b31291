/* train_layers.c: the forward/backward layer pairs of the trainer (see train_layers.h for the
 * conventions: forward overwrites, backward accumulates). Plain loops in f32 with double where a
 * long reduction would lose precision (norms, softmax sums); the GEMMs go to OpenBLAS. */
#include "train_layers.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

void train_embedding_forward(float *out, const int32_t *tokens, const float *table, int n,
                             int dim) {
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * dim, table + (size_t)tokens[i] * dim, (size_t)dim * sizeof *out);
}

void train_embedding_backward(float *dtable, const float *dout, const int32_t *tokens, int n,
                              int dim) {
    if (!dtable) return;
    for (int i = 0; i < n; i++) {
        float *row = dtable + (size_t)tokens[i] * dim;
        const float *g = dout + (size_t)i * dim;
        for (int j = 0; j < dim; j++) row[j] += g[j];
    }
}

void train_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int n,
                           int dim, float eps) {
    for (int i = 0; i < n; i++) {
        const float *x = inp + (size_t)i * dim;
        float *y = out + (size_t)i * dim;
        double sumsq = 0;
        for (int j = 0; j < dim; j++) sumsq += (double)x[j] * x[j];
        float r = (float)(1.0 / sqrt(sumsq / dim + eps));
        rstd[i] = r;
        for (int j = 0; j < dim; j++) y[j] = weight[j] * (x[j] * r);
    }
}

/* With xhat = x * r: dweight += dy * xhat, and since r depends on every x_j,
 * dx_j = r * (w_j dy_j - xhat_j * mean_k(w_k dy_k xhat_k)). */
void train_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                            const float *weight, const float *rstd, int n, int dim) {
    for (int i = 0; i < n; i++) {
        const float *x = inp + (size_t)i * dim;
        const float *dy = dout + (size_t)i * dim;
        float r = rstd[i];
        double dot = 0;
        for (int j = 0; j < dim; j++) dot += (double)weight[j] * dy[j] * (x[j] * r);
        float mean = (float)(dot / dim);
        if (dweight)
            for (int j = 0; j < dim; j++) dweight[j] += dy[j] * (x[j] * r);
        if (dinp) {
            float *dx = dinp + (size_t)i * dim;
            for (int j = 0; j < dim; j++) dx[j] += r * (weight[j] * dy[j] - x[j] * r * mean);
        }
    }
}

void train_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                             const float *weight, const float *bias, int n, int dim, float eps) {
    for (int i = 0; i < n; i++) {
        const float *x = inp + (size_t)i * dim;
        float *y = out + (size_t)i * dim;
        double sum = 0, sumsq = 0;
        for (int j = 0; j < dim; j++) sum += x[j];
        double mu = sum / dim;
        for (int j = 0; j < dim; j++) sumsq += (x[j] - mu) * (x[j] - mu);
        float m = (float)mu, r = (float)(1.0 / sqrt(sumsq / dim + eps));
        mean[i] = m;
        rstd[i] = r;
        for (int j = 0; j < dim; j++) y[j] = weight[j] * ((x[j] - m) * r) + bias[j];
    }
}

/* With xhat = (x - mean) r and dxhat = w dy:
 * dx = r (dxhat - mean(dxhat) - xhat mean(dxhat xhat)). */
void train_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                              const float *inp, const float *weight, const float *mean,
                              const float *rstd, int n, int dim) {
    for (int i = 0; i < n; i++) {
        const float *x = inp + (size_t)i * dim;
        const float *dy = dout + (size_t)i * dim;
        float m = mean[i], r = rstd[i];
        double sum_dxhat = 0, sum_dxhat_xhat = 0;
        for (int j = 0; j < dim; j++) {
            float xhat = (x[j] - m) * r, dxhat = weight[j] * dy[j];
            sum_dxhat += dxhat;
            sum_dxhat_xhat += (double)dxhat * xhat;
            if (dweight) dweight[j] += dy[j] * xhat;
            if (dbias) dbias[j] += dy[j];
        }
        float mean_dxhat = (float)(sum_dxhat / dim), mean_dxhat_xhat = (float)(sum_dxhat_xhat / dim);
        if (dinp) {
            float *dx = dinp + (size_t)i * dim;
            for (int j = 0; j < dim; j++) {
                float xhat = (x[j] - m) * r;
                dx[j] += r * (weight[j] * dy[j] - mean_dxhat - xhat * mean_dxhat_xhat);
            }
        }
    }
}

#define GELU_TANH_SCALE 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_TANH_CUBIC 0.044715f

void train_gelu_forward(float *out, const float *inp, int n, bool tanh_approx) {
    for (int i = 0; i < n; i++) {
        float x = inp[i];
        if (tanh_approx)
            out[i] = 0.5f * x * (1.0f + tanhf(GELU_TANH_SCALE * (x + GELU_TANH_CUBIC * x * x * x)));
        else
            out[i] = 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    }
}

void train_gelu_backward(float *dinp, const float *dout, const float *inp, int n, bool tanh_approx) {
    for (int i = 0; i < n; i++) {
        float x = inp[i], d;
        if (tanh_approx) {
            float th = tanhf(GELU_TANH_SCALE * (x + GELU_TANH_CUBIC * x * x * x));
            d = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * GELU_TANH_SCALE *
                                         (1.0f + 3.0f * GELU_TANH_CUBIC * x * x);
        } else {
            /* Phi(x) + x phi(x), phi the standard normal density */
            d = 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
                x * 0.3989422804014327f * expf(-0.5f * x * x);
        }
        dinp[i] += dout[i] * d;
    }
}

void train_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                          int n, int in_dim, int out_dim) {
    if (n <= 0) return;
    float beta = 0.0f;
    if (bias) {
        for (int i = 0; i < n; i++) memcpy(out + (size_t)i * out_dim, bias, (size_t)out_dim * sizeof *out);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out_dim, in_dim, 1.0f, inp, in_dim,
                weight, in_dim, beta, out, out_dim);
}

void train_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                           const float *inp, const float *weight, int n, int in_dim, int out_dim) {
    if (n <= 0) return;
    if (dinp) /* dinp[n][in] += dout[n][out] * weight[out][in] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in_dim, out_dim, 1.0f, dout,
                    out_dim, weight, in_dim, 1.0f, dinp, in_dim);
    if (dweight) /* dweight[out][in] += dout^T[out][n] * inp[n][in] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out_dim, in_dim, n, 1.0f, dout,
                    out_dim, inp, in_dim, 1.0f, dweight, in_dim);
    if (dbias)
        for (int i = 0; i < n; i++) {
            const float *g = dout + (size_t)i * out_dim;
            for (int j = 0; j < out_dim; j++) dbias[j] += g[j];
        }
}

/* Inverse frequency of rotary pair i, as transformers' rope init functions compute it. */
static double rope_inv_freq(int i, const model_config *config) {
    const double pi = 3.14159265358979323846;
    double inv_freq = pow(config->rope_theta, -2.0 * i / config->rotary_dim);
    switch (config->rope_scaling) {
    case MODEL_ROPE_NONE:
        return inv_freq;
    case MODEL_ROPE_LINEAR:
        return inv_freq / config->rope_factor;
    case MODEL_ROPE_LLAMA3: {
        double factor = config->rope_factor;
        double low = config->rope_low_freq_factor, high = config->rope_high_freq_factor;
        double old_len = config->rope_original_max_positions;
        double wavelen = 2 * pi / inv_freq;
        double low_freq_wavelen = old_len / low, high_freq_wavelen = old_len / high;
        if (wavelen > low_freq_wavelen) return inv_freq / factor;
        if (wavelen < high_freq_wavelen) return inv_freq;
        double smooth = (old_len / wavelen - low) / (high - low);
        return (1 - smooth) * inv_freq / factor + smooth * inv_freq;
    }
    }
    return inv_freq;
}

int train_rope_tables(float *cos_table, float *sin_table, int seq_len, const model_config *config,
                      duel_error *err) {
    if (config->rotary_dim <= 0 || config->rotary_dim % 2 != 0)
        return duel_error_set(err, DUEL_EINVAL, "rope: rotary_dim %d must be positive and even",
                              config->rotary_dim);
    if (!(config->rope_theta > 0))
        return duel_error_set(err, DUEL_EINVAL, "rope: rope_theta must be positive");
    if (config->rope_scaling != MODEL_ROPE_NONE && !(config->rope_factor > 0))
        return duel_error_set(err, DUEL_EINVAL, "rope: rope_scaling factor must be positive");
    if (config->rope_scaling == MODEL_ROPE_LLAMA3 &&
        !(config->rope_low_freq_factor > 0 &&
          config->rope_high_freq_factor > config->rope_low_freq_factor &&
          config->rope_original_max_positions > 0))
        return duel_error_set(err, DUEL_EINVAL,
                              "rope: llama3 scaling needs 0 < low_freq_factor < high_freq_factor "
                              "and original_max_position_embeddings > 0");
    int half = config->rotary_dim / 2;
    for (int i = 0; i < half; i++) {
        double inv_freq = rope_inv_freq(i, config);
        for (int t = 0; t < seq_len; t++) {
            double angle = t * inv_freq;
            cos_table[(size_t)t * half + i] = (float)cos(angle);
            sin_table[(size_t)t * half + i] = (float)sin(angle);
        }
    }
    return 0;
}

/* Rotation of pair (x1, x2) = (x[i], x[i + half]) by angle theta_t,i:
 * (x1 cos - x2 sin, x2 cos + x1 sin); its backward is the rotation by -theta, accumulated.
 * Dimensions past rotary_dim pass through. One loop serves both directions (backward is a
 * constant at each call, so the compiler specialises it). */
static inline void rope_rotate(float *out, const float *inp, const float *cos_table,
                               const float *sin_table, int batch, int seq_len, int heads,
                               int head_dim, int rotary_dim, const train_fork *fork,
                               const bool backward) {
    const float sign = backward ? -1.0f : 1.0f;
    int half = rotary_dim / 2;
    for (int b = 0; b < batch; b++)
        for (int t = 0; t < seq_len; t++) {
            const size_t pos = (size_t)train_fork_position(fork, b, t);
            const float *c = cos_table + pos * half, *s = sin_table + pos * half;
            for (int h = 0; h < heads; h++) {
                size_t off = (((size_t)b * seq_len + t) * heads + h) * head_dim;
                const float *x = inp + off;
                float *y = out + off;
                for (int i = 0; i < half; i++) {
                    float x1 = x[i], x2 = x[i + half], sn = sign * s[i];
                    float y1 = x1 * c[i] - x2 * sn, y2 = x2 * c[i] + x1 * sn;
                    if (backward) {
                        y[i] += y1;
                        y[i + half] += y2;
                    } else {
                        y[i] = y1;
                        y[i + half] = y2;
                    }
                }
                if (backward)
                    for (int i = rotary_dim; i < head_dim; i++) y[i] += x[i];
                else if (y != x)
                    for (int i = rotary_dim; i < head_dim; i++) y[i] = x[i];
            }
        }
}

void train_rope_forward(float *out, const float *inp, const float *cos_table,
                        const float *sin_table, int batch, int seq_len, int heads, int head_dim,
                        int rotary_dim, const train_fork *fork) {
    rope_rotate(out, inp, cos_table, sin_table, batch, seq_len, heads, head_dim, rotary_dim, fork,
                false);
}

void train_rope_backward(float *dinp, const float *dout, const float *cos_table,
                         const float *sin_table, int batch, int seq_len, int heads, int head_dim,
                         int rotary_dim, const train_fork *fork) {
    if (!dinp) return;
    rope_rotate(dinp, dout, cos_table, sin_table, batch, seq_len, heads, head_dim, rotary_dim, fork,
                true);
}

/* Attention runs per (sequence, query head) as matrix products on the strided head slices
 * (cblas_sgemm with lda = heads * head_dim), so OpenBLAS's kernels do the T x T x head_dim work;
 * only the row softmax and its backward are loops here. The score products cover the full
 * T x T square (the masked upper half is computed and then zeroed), which on this scale is far
 * cheaper than scalar dot products over the lower half. */
void train_attention_forward(float *out, float *probs, const float *q, const float *k,
                             const float *v, int batch, int seq_len, int q_heads, int kv_heads,
                             int head_dim, const train_fork *fork) {
    const int T = seq_len, D = head_dim, group = q_heads / kv_heads;
    const float scale = (float)(1.0 / sqrt((double)head_dim));
    const int q_stride = q_heads * head_dim, kv_stride = kv_heads * head_dim;
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < q_heads; h++) {
            size_t kv_off = (size_t)b * T * kv_stride + (size_t)(h / group) * D;
            size_t q_off = (size_t)b * T * q_stride + (size_t)h * D;
            float *p = probs + ((size_t)b * q_heads + h) * T * T;
            /* scores p[t][s] = scale q_t . k_s */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, D, scale, q + q_off,
                        q_stride, k + kv_off, kv_stride, 0.0f, p, T);
            const int shared = fork ? fork->shared[b] : T, branch = fork ? fork->branch[b] : T;
            for (int t = 0; t < T; t++) {
                float *row = p + (size_t)t * T;
                if (t >= branch) /* branch B does not see branch A */
                    for (int s = shared; s < branch; s++) row[s] = -INFINITY;
                float max = -INFINITY;
                for (int s = 0; s <= t; s++)
                    if (row[s] > max) max = row[s];
                double sum = 0;
                for (int s = 0; s <= t; s++) {
                    row[s] = expf(row[s] - max);
                    sum += row[s];
                }
                float inv = (float)(1.0 / sum);
                for (int s = 0; s <= t; s++) row[s] *= inv;
                for (int s = t + 1; s < T; s++) row[s] = 0;
            }
            /* out_t = sum_s p[t][s] v_s */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, T, 1.0f, p, T,
                        v + kv_off, kv_stride, 0.0f, out + q_off, q_stride);
        }
}

/* Per (sequence, head), with P the saved probabilities and dO the output gradient:
 * dP = dO V^T, dV += P^T dO, dS = scale P o (dP - rowsum(P o dP)), dQ += dS K, dK += dS^T Q. */
void train_attention_backward(float *dq, float *dk, float *dv, float *scratch,
                              const float *dout, const float *probs, const float *q,
                              const float *k, const float *v, int batch, int seq_len, int q_heads,
                              int kv_heads, int head_dim) {
    const int T = seq_len, D = head_dim, group = q_heads / kv_heads;
    const float scale = (float)(1.0 / sqrt((double)head_dim));
    const int q_stride = q_heads * head_dim, kv_stride = kv_heads * head_dim;
    float *ds = scratch; /* [T][T]: dP, then dS in place */
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < q_heads; h++) {
            size_t kv_off = (size_t)b * T * kv_stride + (size_t)(h / group) * D;
            size_t q_off = (size_t)b * T * q_stride + (size_t)h * D;
            const float *p = probs + ((size_t)b * q_heads + h) * T * T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, D, 1.0f, dout + q_off,
                        q_stride, v + kv_off, kv_stride, 0.0f, ds, T);
            if (dv)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, T, 1.0f, p, T,
                            dout + q_off, q_stride, 1.0f, dv + kv_off, kv_stride);
            if (!dq && !dk) continue;
            for (int t = 0; t < T; t++) {
                const float *prow = p + (size_t)t * T;
                float *row = ds + (size_t)t * T;
                double weighted = 0;
                for (int s = 0; s <= t; s++) weighted += (double)prow[s] * row[s];
                float w = (float)weighted;
                for (int s = 0; s <= t; s++) row[s] = scale * prow[s] * (row[s] - w);
                for (int s = t + 1; s < T; s++) row[s] = 0;
            }
            if (dq)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, T, 1.0f, ds, T,
                            k + kv_off, kv_stride, 1.0f, dq + q_off, q_stride);
            if (dk)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, T, 1.0f, ds, T,
                            q + q_off, q_stride, 1.0f, dk + kv_off, kv_stride);
        }
}

static float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

void train_swiglu_forward(float *out, const float *gate, const float *up, int n) {
    for (int i = 0; i < n; i++) out[i] = gate[i] * sigmoidf_(gate[i]) * up[i];
}

/* silu'(g) = sigma(g) (1 + g (1 - sigma(g))). */
void train_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                           const float *up, int n) {
    for (int i = 0; i < n; i++) {
        float sg = sigmoidf_(gate[i]);
        if (dgate) dgate[i] += dout[i] * up[i] * sg * (1.0f + gate[i] * (1.0f - sg));
        if (dup) dup[i] += dout[i] * gate[i] * sg;
    }
}

void train_residual_forward(float *out, const float *a, const float *b, int n) {
    for (int i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void train_residual_backward(float *da, float *db, const float *dout, int n) {
    for (int i = 0; i < n; i++) {
        if (da) da[i] += dout[i];
        if (db) db[i] += dout[i];
    }
}

void train_logprob_forward(float *logprob, float *lse, const float *logits,
                           const int32_t *targets, int n, int vocab) {
    for (int i = 0; i < n; i++) {
        const float *row = logits + (size_t)i * vocab;
        float max = row[0];
        for (int j = 1; j < vocab; j++)
            if (row[j] > max) max = row[j];
        /* expf is exact to an ulp or so and several times cheaper than exp in double; the
         * sum stays in double so a long row keeps its precision. */
        double sum = 0;
        for (int j = 0; j < vocab; j++) sum += expf(row[j] - max);
        double l = max + log(sum);
        lse[i] = (float)l;
        logprob[i] = (float)(row[targets[i]] - l);
    }
}

void train_logprob_backward(float *dlogits, const float *logits, const float *lse,
                            const int32_t *targets, const float *dlogprob, int n, int vocab) {
    for (int i = 0; i < n; i++) {
        const float *row = logits + (size_t)i * vocab;
        float *drow = dlogits + (size_t)i * vocab;
        float g = dlogprob[i];
        for (int j = 0; j < vocab; j++) drow[j] = -g * expf(row[j] - lse[i]);
        drow[targets[i]] += g;
    }
}

void train_sequence_logprob_forward(double *seq_sum, double *seq_count, const float *token_logprob,
                                    const float *mask, int batch, int seq_len, const train_fork *fork) {
    for (int b = 0; b < batch; b++) {
        const int branch = fork ? fork->branch[b] : seq_len;
        double sum[2] = {0, 0}, count[2] = {0, 0};
        for (int t = 0; t < seq_len; t++) {
            size_t i = (size_t)b * seq_len + t;
            if (mask[i] == 0) continue; /* padding may hold anything, even NaN */
            sum[t >= branch] += (double)mask[i] * token_logprob[i];
            count[t >= branch] += mask[i];
        }
        seq_sum[b] = sum[0];
        seq_count[b] = count[0];
        if (fork) {
            seq_sum[batch + b] = sum[1];
            seq_count[batch + b] = count[1];
        }
    }
}

void train_sequence_logprob_backward(float *dtoken_logprob, const double *dseq_sum,
                                     const float *mask, int batch, int seq_len, const train_fork *fork) {
    for (int b = 0; b < batch; b++) {
        const int branch = fork ? fork->branch[b] : seq_len;
        for (int t = 0; t < seq_len; t++) {
            size_t i = (size_t)b * seq_len + t;
            dtoken_logprob[i] += (float)(dseq_sum[t >= branch ? batch + b : b] * mask[i]);
        }
    }
}
