/* erm_train.c: backward pass of the ERM heads, the FIFO pair buffer and the per-batch AdamW
 * steps (see erm_train.h). Activations use erm_score's layout: one row per input of width E*H
 * holding every head's hidden units, so layer 1 is one SGEMM over all heads. */
#include "erm_train.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct erm_trainer {
    erm *model;
    erm_train_options options;
    adamw_state optimizer;
    duel_rng rng;
    int64_t pairs_seen;
    /* FIFO ring of pairs: slot s holds chosen at ring[s*2*D], rejected right after. */
    float *ring;
    int ring_start, ring_count;
    /* scratch for one step */
    float *chosen, *rejected, *grad;
    int *pick;
};

void erm_train_default_options(erm_train_options *o) {
    o->adam_steps = 5;
    o->minibatch = 128;
    o->buffer_capacity = 50000;
    o->min_pairs = 16;
    o->lr = 1e-3;
    o->weight_decay = 5e-5;
    o->lambda = 0.5;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->epsilon = 1e-8;
}

/* DUEL_EINVAL naming the option: steps, sizes and rates must be positive and finite. */
static int erm_train_options_check(const erm_train_options *o, duel_error *err) {
    if (o->adam_steps < 1 || o->adam_steps > 1000)
        return duel_error_set(err, DUEL_EINVAL, "erm.adam_steps %d outside 1..1000", o->adam_steps);
    if (o->minibatch < 1 || o->minibatch > ERM_TRAIN_MAX_MINIBATCH)
        return duel_error_set(err, DUEL_EINVAL, "erm.minibatch %d outside 1..%d", o->minibatch,
                              ERM_TRAIN_MAX_MINIBATCH);
    if (o->buffer_capacity < 1 || o->buffer_capacity > ERM_TRAIN_MAX_BUFFER)
        return duel_error_set(err, DUEL_EINVAL, "erm.buffer_capacity %d outside 1..%d",
                              o->buffer_capacity, ERM_TRAIN_MAX_BUFFER);
    if (o->min_pairs < 1 || o->min_pairs > o->buffer_capacity)
        return duel_error_set(err, DUEL_EINVAL, "erm.min_pairs %d outside 1..buffer_capacity",
                              o->min_pairs);
    if (!(o->lr > 0) || !isfinite(o->lr))
        return duel_error_set(err, DUEL_EINVAL, "erm.lr must be positive and finite");
    if (!(o->weight_decay >= 0) || !isfinite(o->weight_decay))
        return duel_error_set(err, DUEL_EINVAL, "erm.weight_decay must be >= 0 and finite");
    if (!(o->lambda >= 0) || !isfinite(o->lambda))
        return duel_error_set(err, DUEL_EINVAL, "erm.lambda must be >= 0 and finite");
    if (!(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1) ||
        !(o->epsilon > 0) || !isfinite(o->epsilon))
        return duel_error_set(err, DUEL_EINVAL, "erm: Adam betas must be in [0, 1), epsilon > 0");
    return 0;
}

/* sum_k (a_k - b_k)^2 in double over 8 fixed lanes (a fixed order, so deterministic, and one the
 * compiler vectorises; a single running sum would be a serial chain). */
static double sq_diff_sum(const float *restrict a, const float *restrict b, size_t n) {
    double lane[8] = {0};
    size_t k = 0;
    for (; k + 8 <= n; k += 8)
        for (int l = 0; l < 8; l++) {
            double d = (double)a[k + l] - (double)b[k + l];
            lane[l] += d * d;
        }
    for (; k < n; k++) {
        double d = (double)a[k] - (double)b[k];
        lane[k % 8] += d * d;
    }
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/* sum_j a_j b_j in float over 8 fixed lanes (as sq_diff_sum). */
static float dot_lanes(const float *restrict a, const float *restrict b, int n) {
    float lane[8] = {0};
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) lane[l] += a[j + l] * b[j + l];
    for (; j < n; j++) lane[j % 8] += a[j] * b[j];
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

static double softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }
static double sigmoid(double x) {
    return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
}

/* Layer 3 and the ReLU of layer 2 for one head: gradients of w3 and b2 (accumulated), and da2,
 * the gradient at layer 2's pre-activations. restrict lets the compiler vectorise the inner loop
 * (the gradients all live in one buffer); the order of every sum is unchanged. */
static void head_output_backward(int R, int H, const float *restrict h2, size_t stride, const float *restrict dr,
                                 const float *restrict w3, float *restrict da2, float *restrict gw3,
                                 float *restrict gb2) {
    for (int i = 0; i < R; i++) {
        const float *restrict row = h2 + (size_t)i * stride;
        float *restrict drow = da2 + (size_t)i * H;
        const float d = dr[i];
        for (int j = 0; j < H; j++) {
            gw3[j] += d * row[j];
            drow[j] = row[j] > 0.0f ? d * w3[j] : 0.0f;
            gb2[j] += drow[j];
        }
    }
}

/* Layer 1's ReLU on dh1 [R][W] (zero where h1 <= 0) and the bias gradient gb1 += column sums. */
static void relu_backward_bias(int R, size_t W, const float *restrict h1, float *restrict dh1, float *restrict gb1) {
    for (int i = 0; i < R; i++) {
        float *restrict drow = dh1 + (size_t)i * W;
        const float *restrict row = h1 + (size_t)i * W;
        for (size_t j = 0; j < W; j++) {
            drow[j] = row[j] > 0.0f ? drow[j] : 0.0f;
            gb1[j] += drow[j];
        }
    }
}

/* Whether every pair's chosen and rejected features share their first half (the prompt's
 * hidden state, in the engine's layout [prompt | candidate]). */
static bool first_halves_shared(const float *chosen, const float *rejected, int B, int D) {
    if (D % 2) return false;
    for (int i = 0; i < B; i++)
        if (memcmp(chosen + (size_t)i * D, rejected + (size_t)i * D, (size_t)(D / 2) * sizeof(float)) != 0)
            return false;
    return true;
}

/* erm_train_loss_grad, and from the same forward: data_per_head (optional, E doubles) the
 * softplus part of each L_e, *right (optional) the pairs whose ensemble-mean reward ranks chosen
 * above rejected (erm_train_accuracy's count).
 * When every pair's two feature rows share their first half (D/2: the prompt's state), layer 1
 * computes that half once per pair: h1 = [p | c] W1^T = p W1a^T + c W1b^T, with p W1a^T on B
 * rows instead of 2B, and dW1a = (dh1_chosen + dh1_rejected)^T p: a quarter of layer 1's work
 * (most of the ERM's) saved, the same result up to rounding. */
static int loss_grad(const erm *m, const float *chosen, const float *rejected, int B, double reg_scale,
                     float *grad, double *loss_per_head, double *data_per_head, int *right, duel_error *err) {
    if (!m || !chosen || !rejected || B < 1 || B > ERM_TRAIN_MAX_MINIBATCH || !isfinite(reg_scale))
        return duel_error_set(err, DUEL_EINVAL, "erm_train: bad minibatch arguments");
    const int E = m->config.num_heads, H = m->config.hidden, D = m->config.d_feat;
    const int R = 2 * B;                 /* rows: chosen 0..B-1, rejected B..2B-1 */
    const size_t W = (size_t)E * H;      /* activation row width */
    const bool shared = first_halves_shared(chosen, rejected, B, D);
    const int half = D / 2;
    /* x: [R][D] rows; shared: the B prompt halves [B][D/2], then the R second halves [R][D/2] */
    float *x = malloc((size_t)(shared ? B * half + R * half : R * D) * sizeof(float));
    float *h1 = malloc((size_t)R * W * sizeof(float));
    float *h2 = malloc((size_t)R * W * sizeof(float));
    float *dh1 = calloc((size_t)R * W, sizeof(float));
    float *da2 = malloc((size_t)R * H * sizeof(float));
    float *r = malloc((size_t)R * E * sizeof(float));
    float *dr = malloc((size_t)R * sizeof(float));
    int rc = 0;
    if (!x || !h1 || !h2 || !dh1 || !da2 || !r || !dr) {
        rc = duel_error_set(err, DUEL_ENOMEM, "erm_train: cannot allocate activations for %d pairs", B);
        goto done;
    }
    const erm_params *p = &m->params;
    float *xp = x, *xc = x + (size_t)B * half; /* shared: prompt halves, second halves */
    if (shared) {
        for (int i = 0; i < B; i++) {
            memcpy(xp + (size_t)i * half, chosen + (size_t)i * D, (size_t)half * sizeof(float));
            memcpy(xc + (size_t)i * half, chosen + (size_t)i * D + half, (size_t)half * sizeof(float));
            memcpy(xc + (size_t)(B + i) * half, rejected + (size_t)i * D + half, (size_t)half * sizeof(float));
        }
        /* h1 = p W1a^T (chosen rows, copied to the rejected rows) + [c; r] W1b^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, (int)W, half, 1.0f, xp, half, p->fc1_weight,
                    D, 0.0f, h1, (int)W);
        memcpy(h1 + (size_t)B * W, h1, (size_t)B * W * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, (int)W, half, 1.0f, xc, half,
                    p->fc1_weight + half, D, 1.0f, h1, (int)W);
    } else {
        memcpy(x, chosen, (size_t)B * D * sizeof(float));
        memcpy(x + (size_t)B * D, rejected, (size_t)B * D * sizeof(float));
        /* Forward: h1 = relu(x W1^T + b1) for all heads; h2 = relu(h1_e W2_e^T + b2_e); r. */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, (int)W, D, 1.0f, x, D, p->fc1_weight,
                    D, 0.0f, h1, (int)W);
    }
    for (int i = 0; i < R; i++) {
        float *row = h1 + (size_t)i * W;
        for (size_t j = 0; j < W; j++) {
            float v = row[j] + p->fc1_bias[j];
            row[j] = v > 0.0f ? v : 0.0f;
        }
    }
    for (int e = 0; e < E; e++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, H, H, 1.0f, h1 + (size_t)e * H,
                    (int)W, p->fc2_weight + (size_t)e * H * H, H, 0.0f, h2 + (size_t)e * H, (int)W);
    for (int i = 0; i < R; i++)
        for (int e = 0; e < E; e++) {
            float *row = h2 + (size_t)i * W + (size_t)e * H;
            const float *b2 = p->fc2_bias + (size_t)e * H, *w3 = p->fc3_weight + (size_t)e * H;
            for (int j = 0; j < H; j++) {
                float v = row[j] + b2[j];
                row[j] = v > 0.0f ? v : 0.0f;
            }
            r[(size_t)i * E + e] = dot_lanes(row, w3, H) + p->fc3_bias[e];
        }
    if (right) {
        *right = 0;
        for (int i = 0; i < B; i++) {
            double a = 0, b = 0;
            for (int e = 0; e < E; e++) {
                a += r[(size_t)i * E + e];
                b += r[(size_t)(B + i) * E + e];
            }
            *right += a > b;
        }
    }
    const size_t per_head = m->num_params / (size_t)E;
    if (grad) memset(grad, 0, m->num_params * sizeof(float));
    for (int e = 0; e < E; e++) {
        /* Data loss and d/dr. */
        double data = 0;
        for (int i = 0; i < B; i++) {
            double delta = (double)r[(size_t)i * E + e] - (double)r[(size_t)(B + i) * E + e];
            data += softplus(-delta);
            double s = sigmoid(-delta) / B;
            dr[i] = (float)-s;
            dr[B + i] = (float)s;
        }
        data /= B;
        if (data_per_head) data_per_head[e] = data;
        /* Regulariser over this head's parameters (they are strided across the six blocks). */
        double reg = 0;
        const float *blocks[6][2] = {
            {p->fc1_weight + (size_t)e * H * D, m->initial.fc1_weight + (size_t)e * H * D},
            {p->fc1_bias + (size_t)e * H, m->initial.fc1_bias + (size_t)e * H},
            {p->fc2_weight + (size_t)e * H * H, m->initial.fc2_weight + (size_t)e * H * H},
            {p->fc2_bias + (size_t)e * H, m->initial.fc2_bias + (size_t)e * H},
            {p->fc3_weight + (size_t)e * H, m->initial.fc3_weight + (size_t)e * H},
            {p->fc3_bias + e, m->initial.fc3_bias + e}};
        const size_t sizes[6] = {(size_t)H * D, (size_t)H, (size_t)H * H, (size_t)H, (size_t)H, 1};
        for (int b = 0; b < 6; b++) reg += sq_diff_sum(blocks[b][0], blocks[b][1], sizes[b]);
        reg = reg_scale * reg / (double)per_head;
        if (loss_per_head) loss_per_head[e] = data + reg;
        if (!grad) continue;
        /* Gradient pointers of head e in the same layout as the parameters. */
        const size_t off[6] = {(size_t)(p->fc1_weight - p->memory) + (size_t)e * H * D,
                               (size_t)(p->fc1_bias - p->memory) + (size_t)e * H,
                               (size_t)(p->fc2_weight - p->memory) + (size_t)e * H * H,
                               (size_t)(p->fc2_bias - p->memory) + (size_t)e * H,
                               (size_t)(p->fc3_weight - p->memory) + (size_t)e * H,
                               (size_t)(p->fc3_bias - p->memory) + (size_t)e};
        float *gw2 = grad + off[2], *gb2 = grad + off[3], *gw3 = grad + off[4], *gb3 = grad + off[5];
        const float *w3 = p->fc3_weight + (size_t)e * H;
        /* Layer 3 and the ReLU of layer 2. */
        for (int i = 0; i < R; i++) gb3[0] += dr[i];
        head_output_backward(R, H, h2 + (size_t)e * H, W, dr, w3, da2, gw3, gb2);
        /* Layer 2: dW2 = da2^T h1_e, dh1_e = da2 W2_e (masked by layer 1's ReLU below). */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, H, R, 1.0f, da2, H,
                    h1 + (size_t)e * H, (int)W, 0.0f, gw2, H);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, H, H, 1.0f, da2, H,
                    p->fc2_weight + (size_t)e * H * H, H, 0.0f, dh1 + (size_t)e * H, (int)W);
        /* The regulariser's gradient: reg_scale * 2 (theta - theta0) / per_head. */
        double c = 2.0 * reg_scale / (double)per_head;
        for (int b = 0; b < 6; b++) {
            if (b == 0) continue; /* fc1.weight is added after its SGEMM below */
            for (size_t k = 0; k < sizes[b]; k++)
                grad[off[b] + k] += (float)(c * ((double)blocks[b][0][k] - (double)blocks[b][1][k]));
        }
    }
    if (grad) {
        /* Layer 1 for all heads: mask by the ReLU, then dW1 = dh1^T x and db1 = column sums. */
        float *gw1 = grad + (p->fc1_weight - p->memory), *gb1 = grad + (p->fc1_bias - p->memory);
        relu_backward_bias(R, W, h1, dh1, gb1);
        if (shared) {
            /* dW1a = (dh1_chosen + dh1_rejected)^T p (summed into h2, free now); dW1b = dh1^T [c; r] */
            for (size_t k = 0; k < (size_t)B * W; k++) h2[k] = dh1[k] + dh1[(size_t)B * W + k];
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)W, half, B, 1.0f, h2, (int)W, xp, half,
                        0.0f, gw1, D);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)W, half, R, 1.0f, dh1, (int)W, xc, half,
                        0.0f, gw1 + half, D);
        } else {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)W, D, R, 1.0f, dh1, (int)W, x, D,
                        0.0f, gw1, D);
        }
        double c = 2.0 * reg_scale / (double)per_head;
        const float *t0 = m->initial.fc1_weight;
        for (size_t k = 0; k < W * (size_t)D; k++)
            gw1[k] += (float)(c * ((double)p->fc1_weight[k] - (double)t0[k]));
    }
done:
    free(x);
    free(h1);
    free(h2);
    free(dh1);
    free(da2);
    free(r);
    free(dr);
    return rc;
}

int erm_train_loss_grad(const erm *m, const float *chosen, const float *rejected, int B, double reg_scale,
                        float *grad, double *loss_per_head, duel_error *err) {
    return loss_grad(m, chosen, rejected, B, reg_scale, grad, loss_per_head, NULL, NULL, err);
}

int erm_train_accuracy(const erm *m, const float *chosen, const float *rejected, int n,
                       double *accuracy, duel_error *err) {
    *accuracy = 0;
    if (n < 1) return 0;
    /* Pairs in chunks scored by one erm_score call each (chosen rows, then rejected rows): one
     * pass over the heads' weights per chunk, not per pair. */
    const int E = m->config.num_heads, D = m->config.d_feat;
    const int chunk = n < 256 ? n : 256;
    float *x = malloc((size_t)2 * chunk * D * sizeof(float));
    float *r = malloc((size_t)2 * chunk * E * sizeof(float));
    if (!x || !r) {
        free(x);
        free(r);
        return duel_error_set(err, DUEL_ENOMEM, "erm_train: out of memory");
    }
    int right = 0, rc = 0;
    for (int start = 0; start < n && rc == 0; start += chunk) {
        const int k = n - start < chunk ? n - start : chunk;
        memcpy(x, chosen + (size_t)start * D, (size_t)k * D * sizeof(float));
        memcpy(x + (size_t)k * D, rejected + (size_t)start * D, (size_t)k * D * sizeof(float));
        if ((rc = erm_score(m, x, 2 * k, r, err)) != 0) break;
        for (int i = 0; i < k; i++) {
            double a = 0, b = 0;
            for (int e = 0; e < E; e++) {
                a += r[(size_t)i * E + e];
                b += r[(size_t)(k + i) * E + e];
            }
            right += a > b;
        }
    }
    free(x);
    free(r);
    if (rc == 0) *accuracy = (double)right / n;
    return rc;
}

int erm_trainer_create(erm *model, const erm_train_options *o, uint64_t seed, erm_trainer **out,
                       duel_error *err) {
    *out = NULL;
    int rc = erm_train_options_check(o, err);
    if (rc) return rc;
    if (!model) return duel_error_set(err, DUEL_EINVAL, "erm_trainer_create: model is NULL");
    erm_trainer *t = calloc(1, sizeof *t);
    if (!t) return duel_error_set(err, DUEL_ENOMEM, "erm_trainer: out of memory");
    t->model = model;
    t->options = *o;
    duel_rng_seed(&t->rng, seed);
    const size_t D = (size_t)model->config.d_feat;
    const int mb = o->minibatch;
    t->ring = malloc((size_t)o->buffer_capacity * 2 * D * sizeof(float));
    t->chosen = malloc((size_t)mb * D * sizeof(float));
    t->rejected = malloc((size_t)mb * D * sizeof(float));
    t->grad = malloc(model->num_params * sizeof(float));
    t->pick = malloc((size_t)o->buffer_capacity * sizeof(int));
    if (!t->ring || !t->chosen || !t->rejected || !t->grad || !t->pick) {
        erm_trainer_free(t);
        return duel_error_set(err, DUEL_ENOMEM, "erm_trainer: cannot allocate a buffer of %d pairs",
                              o->buffer_capacity);
    }
    if ((rc = adamw_init(&t->optimizer, model->num_params, err)) != 0) {
        erm_trainer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void erm_trainer_free(erm_trainer *t) {
    if (!t) return;
    adamw_free(&t->optimizer);
    free(t->ring);
    free(t->chosen);
    free(t->rejected);
    free(t->grad);
    free(t->pick);
    free(t);
}

int erm_trainer_add_pairs(erm_trainer *t, const float *chosen, const float *rejected, int n,
                          duel_error *err) {
    const size_t D = (size_t)t->model->config.d_feat;
    for (int i = 0; i < n; i++)
        for (size_t k = 0; k < D; k++)
            if (!isfinite(chosen[(size_t)i * D + k]) || !isfinite(rejected[(size_t)i * D + k]))
                return duel_error_set(err, DUEL_EINVAL, "erm_trainer: pair %d has a non-finite "
                                      "feature %zu", i, k);
    const int cap = t->options.buffer_capacity;
    for (int i = 0; i < n; i++) {
        int slot;
        if (t->ring_count < cap) {
            slot = (t->ring_start + t->ring_count) % cap;
            t->ring_count++;
        } else {
            slot = t->ring_start; /* overwrite the oldest */
            t->ring_start = (t->ring_start + 1) % cap;
        }
        float *dst = t->ring + (size_t)slot * 2 * D;
        memcpy(dst, chosen + (size_t)i * D, D * sizeof(float));
        memcpy(dst + D, rejected + (size_t)i * D, D * sizeof(float));
    }
    t->pairs_seen += n;
    return 0;
}

int erm_trainer_update(erm_trainer *t, erm_train_stats *stats, duel_error *err) {
    erm_train_stats s = {0};
    const erm_train_options *o = &t->options;
    if (t->ring_count < o->min_pairs) {
        if (stats) *stats = s;
        return 0;
    }
    const size_t D = (size_t)t->model->config.d_feat;
    const int E = t->model->config.num_heads;
    const int B = t->ring_count < o->minibatch ? t->ring_count : o->minibatch;
    const double reg_scale = o->lambda * (double)B / (double)(t->pairs_seen > 0 ? t->pairs_seen : 1);
    adamw_options ao = {o->beta1, o->beta2, o->epsilon, o->weight_decay};
    double *per_head = malloc((size_t)2 * E * sizeof(double)), *data_head = per_head + E;
    if (!per_head) return duel_error_set(err, DUEL_ENOMEM, "erm_trainer: out of memory");
    int rc = 0, right = 0;
    for (int step = 0; step < o->adam_steps && rc == 0; step++) {
        if (B == t->ring_count) {
            for (int i = 0; i < B; i++) t->pick[i] = i;
        } else {
            /* B distinct indices: a partial Fisher-Yates shuffle of 0..count-1. */
            for (int i = 0; i < t->ring_count; i++) t->pick[i] = i;
            for (int i = 0; i < B; i++) {
                int j = i + (int)duel_rng_below(&t->rng, (uint64_t)(t->ring_count - i));
                int tmp = t->pick[i];
                t->pick[i] = t->pick[j];
                t->pick[j] = tmp;
            }
        }
        for (int i = 0; i < B; i++) {
            int slot = (t->ring_start + t->pick[i]) % o->buffer_capacity;
            const float *src = t->ring + (size_t)slot * 2 * D;
            memcpy(t->chosen + (size_t)i * D, src, D * sizeof(float));
            memcpy(t->rejected + (size_t)i * D, src + D, D * sizeof(float));
        }
        /* the loss, its softplus part and the accuracy come from the step's own forward */
        if ((rc = loss_grad(t->model, t->chosen, t->rejected, B, reg_scale, t->grad, per_head, data_head, &right,
                            err)) != 0)
            break;
        double loss = 0, data = 0;
        for (int e = 0; e < E; e++) {
            loss += per_head[e];
            data += data_head[e];
        }
        s.loss = loss / E;
        s.data_loss = data / E;
        s.accuracy = (double)right / B;
        if (!isfinite(s.loss)) {
            rc = duel_error_set(err, DUEL_EFORMAT, "erm_trainer: the loss became non-finite");
            break;
        }
        rc = adamw_update(&t->optimizer, &ao, t->model->params.memory, t->grad, NULL, o->lr, err);
        s.steps++;
    }
    s.minibatch = B;
    free(per_head);
    if (stats) *stats = s;
    return rc;
}

int64_t erm_trainer_pairs_seen(const erm_trainer *t) { return t->pairs_seen; }
int erm_trainer_buffer_count(const erm_trainer *t) { return t->ring_count; }

void erm_trainer_buffer_pair(const erm_trainer *t, int index, const float **chosen,
                             const float **rejected) {
    const size_t D = (size_t)t->model->config.d_feat;
    int slot = (t->ring_start + index) % t->options.buffer_capacity;
    *chosen = t->ring + (size_t)slot * 2 * D;
    *rejected = *chosen + D;
}

adamw_state *erm_trainer_optimizer(erm_trainer *t) { return &t->optimizer; }
duel_rng *erm_trainer_rng(erm_trainer *t) { return &t->rng; }

void erm_trainer_reset_buffer(erm_trainer *t) {
    t->ring_start = 0;
    t->ring_count = 0;
    t->pairs_seen = 0;
}

void erm_trainer_set_pairs_seen(erm_trainer *t, int64_t n) { t->pairs_seen = n; }
