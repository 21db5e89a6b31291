/* neox_train.c: the trainable GPT-NeoX model (see neox_train.h), built like llama_train.c:
 * parameter, gradient and activation structs carved from single allocations, an HF tensor
 * table, and forward/backward passes chaining the train_layers.h pairs.
 *
 * Invariant: as in llama_train.c, have_forward marks activations that a backward may consume
 * (backward turns the saved logits into their gradient, so it runs once per forward). */
#include "neox_train.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train_layers.h"
#include "train_storage.h"

#define NUM_PARAM_SLOTS 16

typedef struct neox_train_acts {
    float *residual;     /* [L+1][N][C]: input of each layer, [L] the last output */
    float *ln1;          /* [L][N][C] */
    float *ln1_mean;     /* [L][N] */
    float *ln1_rstd;     /* [L][N] */
    float *q;            /* [L][N][C] after rope, [N][H][D] */
    float *k;            /* [L][N][C] after rope */
    float *v;            /* [L][N][C] */
    float *probs;        /* [L][B][H][T][T] */
    float *attn_out;     /* [L][N][C] before attention.dense */
    float *residual_mid; /* [L][N][C] x + attn (sequential residual only) */
    float *ln2;          /* [L][N][C] */
    float *ln2_mean;     /* [L][N] */
    float *ln2_rstd;     /* [L][N] */
    float *fc;           /* [L][N][F] before the activation */
    float *act;          /* [L][N][F] */
    float *lnf;          /* [N][C] */
    float *lnf_mean;     /* [N] */
    float *lnf_rstd;     /* [N] */
    float *head_in;      /* [N][C] masked rows */
    float *logits;       /* [N][V]; dlogits after backward */
    float *lse;          /* [N] */
    float *row_logprob;  /* [N] */
    float *token_logprob; /* [N] */
    /* scratch */
    float *attn_branch;  /* [N][C] */
    float *mlp_branch;   /* [N][C] */
    float *qkv;          /* [N][3C] */
    float *d_residual;   /* [N][C] */
    float *d_norm1;      /* [N][C] */
    float *d_norm2;      /* [N][C] */
    float *d_q_rot;      /* [N][C] */
    float *d_k_rot;      /* [N][C] */
    float *d_q;          /* [N][C] */
    float *d_k;          /* [N][C] */
    float *d_v;          /* [N][C] */
    float *d_qkv;        /* [N][3C] */
    float *d_attn_out;   /* [N][C] */
    float *d_act;        /* [N][F] */
    float *d_fc;         /* [N][F] */
    float *d_head_in;    /* [N][C] */
    float *d_token_logprob; /* [N] */
    float *d_row_logprob;   /* [N] */
    float *attn_scratch; /* [T][T]: attention backward */
    float *rope_cos;     /* [T][rotary/2] */
    float *rope_sin;     /* [T][rotary/2] */
} neox_train_acts;

#define NUM_ACT_SLOTS 44

struct neox_train {
    model_config config;
    int C, F, V, L, H, D, R; /* R: rotary_dim */
    bool parallel, gelu_tanh;
    neox_train_params params, grads;
    neox_train_acts acts;
    train_storage store; /* params, grads and acts point into it; the batch of the last forward */
};

static void param_slots(neox_train_params *p, float **slots[NUM_PARAM_SLOTS]) {
    float **list[NUM_PARAM_SLOTS] = {&p->embed_in, &p->ln1_w,   &p->ln1_b,  &p->ln2_w,
                                     &p->ln2_b,    &p->w_qkv,   &p->b_qkv,  &p->w_dense,
                                     &p->b_dense,  &p->w_fc,    &p->b_fc,   &p->w_proj,
                                     &p->b_proj,   &p->lnf_w,   &p->lnf_b,  &p->embed_out};
    _Static_assert(sizeof(neox_train_params) == NUM_PARAM_SLOTS * sizeof(float *),
                   "every member of neox_train_params must be a slot");
    memcpy(slots, list, sizeof list);
}

static void param_sizes(const neox_train *m, size_t sizes[NUM_PARAM_SLOTS]) {
    size_t C = m->C, F = m->F, V = m->V, L = m->L;
    bool ab = m->config.attention_bias;
    size_t list[NUM_PARAM_SLOTS] = {V * C,     L * C, L * C, L * C, L * C, L * 3 * C * C,
                                    ab ? L * 3 * C : 0, L * C * C, ab ? L * C : 0,
                                    L * F * C, L * F, L * C * F, L * C, C, C,
                                    m->config.tie_word_embeddings ? 0 : V * C};
    memcpy(sizes, list, sizeof list);
}

static int check_config(const model_config *c, duel_error *err) {
    if (c->arch != MODEL_ARCH_GPT_NEOX)
        return duel_error_set(err, DUEL_EUNSUPPORTED, "neox_train: architecture %s is not GPT-NeoX",
                              c->architecture[0] ? c->architecture : "(unnamed)");
    if (c->head != MODEL_HEAD_CAUSAL_LM)
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "neox_train: only causal-LM heads can be trained as a policy");
    if (c->activation != MODEL_ACT_GELU && c->activation != MODEL_ACT_GELU_TANH)
        return duel_error_set(err, DUEL_EUNSUPPORTED, "neox_train: GPT-NeoX needs a GELU activation");
    if (c->vocab_size <= 0 || c->hidden_size <= 0 || c->intermediate_size <= 0 ||
        c->num_layers <= 0 || c->num_heads <= 0 || c->head_dim <= 0)
        return duel_error_set(err, DUEL_EINVAL,
                              "neox_train: vocab_size, hidden_size, intermediate_size, num_layers, "
                              "num_heads and head_dim must be positive");
    if (c->num_kv_heads != c->num_heads || (long long)c->num_heads * c->head_dim != c->hidden_size)
        return duel_error_set(err, DUEL_EINVAL,
                              "neox_train: GPT-NeoX needs num_kv_heads == num_heads (%d, %d) and "
                              "num_heads * head_dim == hidden_size (%d)",
                              c->num_kv_heads, c->num_heads, c->hidden_size);
    if (c->rotary_dim <= 0 || c->rotary_dim % 2 != 0 || c->rotary_dim > c->head_dim)
        return duel_error_set(err, DUEL_EINVAL,
                              "neox_train: rotary_dim %d must be even and in (0, head_dim %d]",
                              c->rotary_dim, c->head_dim);
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps) || !(c->rope_theta > 0) ||
        !isfinite(c->rope_theta))
        return duel_error_set(err, DUEL_EINVAL, "neox_train: norm_eps and rope_theta must be positive");
    double C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, L = c->num_layers;
    double total = 2 * V * C + L * (4 * C * C + 2 * F * C + 9 * C + F) + 2 * C;
    return train_storage_check_parameter_count(total, "neox_train", err);
}

static void build_tensor_table(neox_train *m) {
    neox_train_params *p = &m->params;
    size_t C = m->C, F = m->F;
    train_storage *st = &m->store;
    train_storage_add_tensor(st, "gpt_neox.embed_in.weight", 2, m->V, m->C, p->embed_in);
    for (int l = 0; l < m->L; l++) {
        const train_layer_tensor rows[] = {
            {"input_layernorm.weight", 1, m->C, 0, p->ln1_w, C},
            {"input_layernorm.bias", 1, m->C, 0, p->ln1_b, C},
            {"post_attention_layernorm.weight", 1, m->C, 0, p->ln2_w, C},
            {"post_attention_layernorm.bias", 1, m->C, 0, p->ln2_b, C},
            {"attention.query_key_value.weight", 2, 3 * m->C, m->C, p->w_qkv, 3 * C * C},
            {"attention.query_key_value.bias", 1, 3 * m->C, 0, p->b_qkv, 3 * C},
            {"attention.dense.weight", 2, m->C, m->C, p->w_dense, C * C},
            {"attention.dense.bias", 1, m->C, 0, p->b_dense, C},
            {"mlp.dense_h_to_4h.weight", 2, m->F, m->C, p->w_fc, F * C},
            {"mlp.dense_h_to_4h.bias", 1, m->F, 0, p->b_fc, F},
            {"mlp.dense_4h_to_h.weight", 2, m->C, m->F, p->w_proj, C * F},
            {"mlp.dense_4h_to_h.bias", 1, m->C, 0, p->b_proj, C},
        };
        train_storage_add_layer_tensors(st, "gpt_neox.layers", l, rows, sizeof rows / sizeof rows[0]);
    }
    train_storage_add_tensor(st, "gpt_neox.final_layer_norm.weight", 1, m->C, 0, p->lnf_w);
    train_storage_add_tensor(st, "gpt_neox.final_layer_norm.bias", 1, m->C, 0, p->lnf_b);
    if (!m->config.tie_word_embeddings)
        train_storage_add_tensor(st, "embed_out.weight", 2, m->V, m->C, p->embed_out);
}

int neox_train_create(const model_config *config, neox_train **out, duel_error *err) {
    *out = NULL;
    int rc = check_config(config, err);
    if (rc) return rc;
    neox_train *m = calloc(1, sizeof *m);
    if (!m) return duel_error_set(err, DUEL_ENOMEM, "neox_train: out of memory");
    m->config = *config;
    m->C = config->hidden_size;
    m->F = config->intermediate_size;
    m->V = config->vocab_size;
    m->L = config->num_layers;
    m->H = config->num_heads;
    m->D = config->head_dim;
    m->R = config->rotary_dim;
    m->parallel = config->use_parallel_residual;
    m->gelu_tanh = config->activation == MODEL_ACT_GELU_TANH;
    size_t sizes[NUM_PARAM_SLOTS];
    float **param_ptrs[NUM_PARAM_SLOTS], **grad_ptrs[NUM_PARAM_SLOTS];
    param_sizes(m, sizes);
    param_slots(&m->params, param_ptrs);
    param_slots(&m->grads, grad_ptrs);
    if ((rc = train_storage_init(&m->store, param_ptrs, grad_ptrs, sizes, NUM_PARAM_SLOTS,
                                 (size_t)m->L * 12 + 4, "neox_train", err))) {
        free(m);
        return rc;
    }
    if (config->tie_word_embeddings) { /* one matrix, one gradient */
        m->params.embed_out = m->params.embed_in;
        m->grads.embed_out = m->grads.embed_in;
    }
    build_tensor_table(m);
    *out = m;
    return 0;
}

void neox_train_free(neox_train *m) {
    if (!m) return;
    train_storage_free(&m->store);
    free(m);
}

const model_config *neox_train_config(const neox_train *m) { return &m->config; }
size_t neox_train_num_parameters(const neox_train *m) { return m->store.num_parameters; }
neox_train_params *neox_train_parameters(neox_train *m) { return &m->params; }
float *neox_train_parameter_memory(neox_train *m) { return m->store.param_memory; }
float *neox_train_gradient_memory(neox_train *m) { return m->store.grad_memory; }
int neox_train_num_tensors(const neox_train *m) { return m->store.num_tensors; }
int neox_train_tensor_at(neox_train *m, int index, train_tensor *out) {
    return train_storage_tensor_at(&m->store, index, out);
}
int neox_train_find_tensor(neox_train *m, const char *name, train_tensor *out, duel_error *err) {
    return train_storage_find_tensor(&m->store, name, out, "neox_train", err);
}
void neox_train_zero_grad(neox_train *m) { train_storage_zero_grad(&m->store); }

static void act_sizes(const neox_train *m, size_t B, size_t T, size_t sizes[NUM_ACT_SLOTS]) {
    size_t N = B * T, L = m->L, C = m->C, F = m->F, V = m->V, half = (size_t)m->R / 2;
    size_t list[NUM_ACT_SLOTS] = {
        (L + 1) * N * C, L * N * C, L * N, L * N, L * N * C, L * N * C, L * N * C,
        L * B * m->H * T * T, L * N * C, m->parallel ? 0 : L * N * C, L * N * C, L * N, L * N,
        L * N * F, L * N * F, N * C, N, N, N * C, N * V, N, N, N,
        /* scratch */
        N * C, N * C, 3 * N * C, N * C, N * C, N * C, N * C, N * C, N * C, N * C, N * C,
        3 * N * C, N * C, N * F, N * F, N * C, N, N, T * T, T * half, T * half};
    memcpy(sizes, list, sizeof list);
}

static int ensure_activations(neox_train *m, int batch, int seq, duel_error *err) {
    int cap_batch, cap_seq;
    if (!train_storage_needs_activations(&m->store, batch, seq, &cap_batch, &cap_seq)) return 0;
    double B = cap_batch, T = cap_seq, N = B * T; /* act_sizes in double, checked first */
    double estimate = m->L * (B * m->H * T * T + N * (8.0 * m->C + 2.0 * m->F + 4)) +
                      N * (18.0 * m->C + m->V + 2.0 * m->F + 8) + T * (m->R + T);
    size_t sizes[NUM_ACT_SLOTS];
    act_sizes(m, (size_t)cap_batch, (size_t)cap_seq, sizes);
    neox_train_acts *a = &m->acts;
    float **slots[NUM_ACT_SLOTS] = {
        &a->residual, &a->ln1, &a->ln1_mean, &a->ln1_rstd, &a->q, &a->k, &a->v, &a->probs,
        &a->attn_out, &a->residual_mid, &a->ln2, &a->ln2_mean, &a->ln2_rstd, &a->fc, &a->act,
        &a->lnf, &a->lnf_mean, &a->lnf_rstd, &a->head_in, &a->logits, &a->lse,
        &a->row_logprob, &a->token_logprob, &a->attn_branch, &a->mlp_branch, &a->qkv,
        &a->d_residual, &a->d_norm1, &a->d_norm2, &a->d_q_rot, &a->d_k_rot, &a->d_q, &a->d_k,
        &a->d_v, &a->d_qkv, &a->d_attn_out, &a->d_act, &a->d_fc, &a->d_head_in,
        &a->d_token_logprob, &a->d_row_logprob, &a->attn_scratch, &a->rope_cos, &a->rope_sin};
    _Static_assert(sizeof(neox_train_acts) == NUM_ACT_SLOTS * sizeof(float *),
                   "every member of neox_train_acts must be a slot");
    int rc = train_storage_alloc_activations(&m->store, cap_batch, cap_seq, estimate, slots, sizes,
                                             NUM_ACT_SLOTS, "neox_train", err);
    return rc ? rc : train_rope_tables(a->rope_cos, a->rope_sin, cap_seq, &m->config, err);
}

/* The fused projection's rows are [head][q, k, v][head_dim]: split into [N][H][D] each. */
static void split_qkv(float *q, float *k, float *v, const float *qkv, int n, int heads, int dim) {
    size_t D = (size_t)dim;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < heads; h++) {
            const float *src = qkv + ((size_t)i * heads + h) * 3 * D;
            size_t dst = ((size_t)i * heads + h) * D;
            memcpy(q + dst, src, D * sizeof(float));
            memcpy(k + dst, src + D, D * sizeof(float));
            memcpy(v + dst, src + 2 * D, D * sizeof(float));
        }
}

static void merge_qkv(float *dqkv, const float *dq, const float *dk, const float *dv, int n,
                      int heads, int dim) {
    size_t D = (size_t)dim;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < heads; h++) {
            float *dst = dqkv + ((size_t)i * heads + h) * 3 * D;
            size_t src = ((size_t)i * heads + h) * D;
            memcpy(dst, dq + src, D * sizeof(float));
            memcpy(dst + D, dk + src, D * sizeof(float));
            memcpy(dst + 2 * D, dv + src, D * sizeof(float));
        }
}

int neox_train_forward(neox_train *m, const train_batch *batch, double *seq_logprob,
                       double *seq_count, float *token_logprob, duel_error *err) {
    return neox_train_forward_forked(m, batch, NULL, seq_logprob, seq_count, token_logprob, err);
}

int neox_train_forward_forked(neox_train *m, const train_batch *batch, const train_fork *fork_in,
                              double *seq_logprob, double *seq_count, float *token_logprob,
                              duel_error *err) {
    train_storage *st = &m->store;
    const train_fork *fork;
    int rc = train_storage_begin_forward(st, batch, fork_in, seq_logprob, seq_count, m->V,
                                         m->config.max_position_embeddings, "neox_train", &fork, err);
    if (rc) return rc;
    if ((rc = ensure_activations(m, batch->batch_size, batch->seq_len, err))) return rc;
    train_storage_keep_batch(st, batch);
    const int B = batch->batch_size, T = batch->seq_len, N = B * T;
    const int C = m->C, F = m->F, V = m->V;
    const float eps = (float)m->config.norm_eps;
    neox_train_params *p = &m->params;
    neox_train_acts *a = &m->acts;
    const size_t NC = (size_t)N * C, NF = (size_t)N * F, probs_stride = (size_t)B * m->H * T * T;

    train_embedding_forward(a->residual, st->tokens, p->embed_in, N, C);
    for (int l = 0; l < m->L; l++) {
        float *res_in = a->residual + l * NC, *res_out = a->residual + (l + 1) * NC;
        float *ln1 = a->ln1 + l * NC, *ln2 = a->ln2 + l * NC;
        float *q = a->q + l * NC, *k = a->k + l * NC, *v = a->v + l * NC;
        float *attn_out = a->attn_out + l * NC, *fc = a->fc + l * NF, *act = a->act + l * NF;
        size_t row = (size_t)l * N;

        train_layernorm_forward(ln1, a->ln1_mean + row, a->ln1_rstd + row, res_in,
                                p->ln1_w + (size_t)l * C, p->ln1_b + (size_t)l * C, N, C, eps);
        train_linear_forward(a->qkv, ln1, p->w_qkv + (size_t)l * 3 * C * C,
                             train_layer_slice(p->b_qkv, l, 3 * (size_t)C), N, C, 3 * C);
        split_qkv(q, k, v, a->qkv, N, m->H, m->D);
        train_rope_forward(q, q, a->rope_cos, a->rope_sin, B, T, m->H, m->D, m->R, fork);
        train_rope_forward(k, k, a->rope_cos, a->rope_sin, B, T, m->H, m->D, m->R, fork);
        train_attention_forward(attn_out, a->probs + l * probs_stride, q, k, v, B, T, m->H, m->H,
                                m->D, fork);
        train_linear_forward(a->attn_branch, attn_out, p->w_dense + (size_t)l * C * C,
                             train_layer_slice(p->b_dense, l, C), N, C, C);
        /* The MLP reads ln2 of the layer input (parallel) or of x + attention (sequential). */
        float *ln2_in = res_in;
        if (!m->parallel) {
            ln2_in = a->residual_mid + l * NC;
            train_residual_forward(ln2_in, res_in, a->attn_branch, (int)NC);
        }
        train_layernorm_forward(ln2, a->ln2_mean + row, a->ln2_rstd + row, ln2_in,
                                p->ln2_w + (size_t)l * C, p->ln2_b + (size_t)l * C, N, C, eps);
        train_linear_forward(fc, ln2, p->w_fc + (size_t)l * F * C, p->b_fc + (size_t)l * F, N, C, F);
        train_gelu_forward(act, fc, (int)NF, m->gelu_tanh);
        train_linear_forward(a->mlp_branch, act, p->w_proj + (size_t)l * C * F,
                             p->b_proj + (size_t)l * C, N, F, C);
        if (m->parallel) {
            train_residual_forward(res_out, res_in, a->attn_branch, (int)NC);
            train_residual_forward(res_out, res_out, a->mlp_branch, (int)NC);
        } else {
            train_residual_forward(res_out, ln2_in, a->mlp_branch, (int)NC);
        }
    }
    train_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, a->residual + (size_t)m->L * NC,
                            p->lnf_w, p->lnf_b, N, C, eps);
    st->num_rows = train_head_forward(seq_logprob, seq_count, a->token_logprob, st->rows,
                                     st->row_targets, a->head_in, a->logits, a->lse,
                                     a->row_logprob, a->lnf, p->embed_out, st->targets, st->mask, B,
                                     T, C, V, fork);
    train_storage_end_forward(st, token_logprob, a->token_logprob);
    return 0;
}

int neox_train_backward(neox_train *m, const double *dseq_logprob, duel_error *err) {
    train_storage *st = &m->store;
    const train_fork *fork;
    int rc = train_storage_begin_backward(st, dseq_logprob, "neox_train", &fork, err);
    if (rc) return rc;
    const int B = st->batch, T = st->seq, N = B * T, C = m->C, F = m->F, V = m->V;
    const size_t NC = (size_t)N * C, NF = (size_t)N * F, probs_stride = (size_t)B * m->H * T * T;
    neox_train_params *p = &m->params, *g = &m->grads;
    neox_train_acts *a = &m->acts;

    float *d_final = a->d_norm1;
    memset(d_final, 0, NC * sizeof(float));
    train_head_backward(d_final, g->embed_out, a->logits, a->d_head_in, a->d_token_logprob,
                        a->d_row_logprob, dseq_logprob, st->rows, st->row_targets, a->head_in,
                        a->lse, p->embed_out, st->mask, st->num_rows, B, T, C, V, fork);
    memset(a->d_residual, 0, NC * sizeof(float));
    train_layernorm_backward(a->d_residual, g->lnf_w, g->lnf_b, d_final,
                             a->residual + (size_t)m->L * NC, p->lnf_w, a->lnf_mean, a->lnf_rstd,
                             N, C);

    /* d_residual is the gradient of the layer's output. Both branches read it as their dout
     * before any layer norm accumulates into it (parallel), or the MLP's norm accumulates first
     * and turns it into the gradient of x + attention (sequential). */
    for (int l = m->L - 1; l >= 0; l--) {
        float *res_in = a->residual + l * NC;
        float *ln1 = a->ln1 + l * NC, *ln2 = a->ln2 + l * NC;
        float *q = a->q + l * NC, *k = a->k + l * NC, *v = a->v + l * NC;
        float *attn_out = a->attn_out + l * NC, *fc = a->fc + l * NF, *act = a->act + l * NF;
        float *ln2_in = m->parallel ? res_in : a->residual_mid + l * NC;
        size_t row = (size_t)l * N;

        memset(a->d_act, 0, NF * sizeof(float));
        train_linear_backward(a->d_act, g->w_proj + (size_t)l * C * F, g->b_proj + (size_t)l * C,
                              a->d_residual, act, p->w_proj + (size_t)l * C * F, N, F, C);
        memset(a->d_fc, 0, NF * sizeof(float));
        train_gelu_backward(a->d_fc, a->d_act, fc, (int)NF, m->gelu_tanh);
        memset(a->d_norm2, 0, NC * sizeof(float));
        train_linear_backward(a->d_norm2, g->w_fc + (size_t)l * F * C, g->b_fc + (size_t)l * F,
                              a->d_fc, ln2, p->w_fc + (size_t)l * F * C, N, C, F);
        if (!m->parallel)
            train_layernorm_backward(a->d_residual, g->ln2_w + (size_t)l * C,
                                     g->ln2_b + (size_t)l * C, a->d_norm2, ln2_in,
                                     p->ln2_w + (size_t)l * C, a->ln2_mean + row,
                                     a->ln2_rstd + row, N, C);

        memset(a->d_attn_out, 0, NC * sizeof(float));
        train_linear_backward(a->d_attn_out, g->w_dense + (size_t)l * C * C,
                              train_layer_slice(g->b_dense, l, C), a->d_residual, attn_out,
                              p->w_dense + (size_t)l * C * C, N, C, C);
        memset(a->d_q_rot, 0, NC * sizeof(float));
        memset(a->d_k_rot, 0, NC * sizeof(float));
        memset(a->d_v, 0, NC * sizeof(float));
        train_attention_backward(a->d_q_rot, a->d_k_rot, a->d_v, a->attn_scratch, a->d_attn_out,
                                 a->probs + l * probs_stride, q, k, v, B, T, m->H, m->H, m->D);
        memset(a->d_q, 0, NC * sizeof(float));
        memset(a->d_k, 0, NC * sizeof(float));
        train_rope_backward(a->d_q, a->d_q_rot, a->rope_cos, a->rope_sin, B, T, m->H, m->D, m->R, fork);
        train_rope_backward(a->d_k, a->d_k_rot, a->rope_cos, a->rope_sin, B, T, m->H, m->D, m->R, fork);
        merge_qkv(a->d_qkv, a->d_q, a->d_k, a->d_v, N, m->H, m->D);
        memset(a->d_norm1, 0, NC * sizeof(float));
        train_linear_backward(a->d_norm1, g->w_qkv + (size_t)l * 3 * C * C,
                              train_layer_slice(g->b_qkv, l, 3 * (size_t)C), a->d_qkv, ln1,
                              p->w_qkv + (size_t)l * 3 * C * C, N, C, 3 * C);
        if (m->parallel)
            train_layernorm_backward(a->d_residual, g->ln2_w + (size_t)l * C,
                                     g->ln2_b + (size_t)l * C, a->d_norm2, ln2_in,
                                     p->ln2_w + (size_t)l * C, a->ln2_mean + row,
                                     a->ln2_rstd + row, N, C);
        train_layernorm_backward(a->d_residual, g->ln1_w + (size_t)l * C, g->ln1_b + (size_t)l * C,
                                 a->d_norm1, res_in, p->ln1_w + (size_t)l * C, a->ln1_mean + row,
                                 a->ln1_rstd + row, N, C);
    }
    train_embedding_backward(g->embed_in, a->d_residual, st->tokens, N, C);
    return 0;
}
