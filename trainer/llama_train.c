/* llama_train.c: the trainable Llama model (see llama_train.h): carving the parameter, gradient
 * and activation structs out of single allocations, the HF tensor table, and the forward and
 * backward passes as chains of train_layers.h pairs.
 *
 * Invariant: activations hold the last forward of the batch copied into tokens/targets/mask;
 * have_forward is set by a successful forward and cleared by backward (which turns the saved
 * logits into their gradient in place), so every backward matches exactly one forward. */
#include "llama_train.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train_layers.h"
#include "train_storage.h"

#define NUM_PARAM_SLOTS 19

/* Saved activations and backward scratch for a batch of up to cap_batch x cap_seq. Per-layer
 * tensors are [L][...] with the strides of the current batch (N = B*T rows). */
typedef struct llama_train_acts {
    float *residual;     /* [L+1][N][C]: input of each layer, [L] the output of the last */
    float *attn_norm;    /* [L][N][C] */
    float *attn_rstd;    /* [L][N] */
    float *q;            /* [L][N][Hq*D] after rope */
    float *k;            /* [L][N][Hkv*D] after rope */
    float *v;            /* [L][N][Hkv*D] */
    float *probs;        /* [L][B][Hq][T][T] */
    float *attn_out;     /* [L][N][Hq*D] before o_proj */
    float *residual_mid; /* [L][N][C]: after the attention residual */
    float *mlp_norm;     /* [L][N][C] */
    float *mlp_rstd;     /* [L][N] */
    float *gate;         /* [L][N][F] */
    float *up;           /* [L][N][F] */
    float *swiglu;       /* [L][N][F] */
    float *final_norm;   /* [N][C] */
    float *final_rstd;   /* [N] */
    float *head_in;      /* [N][C]: rows with mask != 0, compacted */
    float *logits;       /* [N][V] compacted; holds dlogits after backward */
    float *lse;          /* [N] */
    float *row_logprob;  /* [N] compacted */
    float *token_logprob; /* [N] scattered back, 0 where mask == 0 */
    /* scratch */
    float *branch_out;   /* [N][C] */
    float *d_residual;   /* [N][C] */
    float *d_norm;       /* [N][C] */
    float *d_q_rot;      /* [N][Hq*D] */
    float *d_q;          /* [N][Hq*D] */
    float *d_k_rot;      /* [N][Hkv*D] */
    float *d_k;          /* [N][Hkv*D] */
    float *d_v;          /* [N][Hkv*D] */
    float *d_attn_out;   /* [N][Hq*D] */
    float *d_gate;       /* [N][F] */
    float *d_up;         /* [N][F] */
    float *d_swiglu;     /* [N][F] */
    float *d_head_in;    /* [N][C] */
    float *d_token_logprob; /* [N] */
    float *d_row_logprob;   /* [N] */
    float *attn_scratch; /* [T][T]: attention backward */
    float *rope_cos;     /* [T][rotary/2] */
    float *rope_sin;     /* [T][rotary/2] */
} llama_train_acts;

#define NUM_ACT_SLOTS 39

struct llama_train {
    model_config config;
    int C, F, V, L, Hq, Hkv, D, QD, KD; /* shorthand sizes */
    llama_train_params params, grads;
    llama_train_acts acts;
    train_storage store; /* params, grads and acts point into it; the batch of the last forward */
};

static void param_slots(llama_train_params *p, float **slots[NUM_PARAM_SLOTS]) {
    float **list[NUM_PARAM_SLOTS] = {
        &p->embed_tokens, &p->attn_norm, &p->wq, &p->bq, &p->wk, &p->bk, &p->wv,
        &p->bv, &p->wo, &p->bo, &p->mlp_norm, &p->w_gate, &p->b_gate, &p->w_up,
        &p->b_up, &p->w_down, &p->b_down, &p->final_norm, &p->lm_head};
    _Static_assert(sizeof(llama_train_params) == NUM_PARAM_SLOTS * sizeof(float *),
                   "every member of llama_train_params must be a slot");
    memcpy(slots, list, sizeof list);
}

static void param_sizes(const llama_train *m, size_t sizes[NUM_PARAM_SLOTS]) {
    const model_config *c = &m->config;
    size_t C = m->C, F = m->F, V = m->V, L = m->L, QD = m->QD, KD = m->KD;
    size_t list[NUM_PARAM_SLOTS] = {
        V * C,                            /* embed_tokens */
        L * C,                            /* attn_norm */
        L * QD * C, c->attention_bias ? L * QD : 0,
        L * KD * C, c->attention_bias ? L * KD : 0,
        L * KD * C, c->attention_bias ? L * KD : 0,
        L * C * QD, c->attention_out_bias ? L * C : 0,
        L * C,                            /* mlp_norm */
        L * F * C, c->mlp_bias ? L * F : 0,
        L * F * C, c->mlp_bias ? L * F : 0,
        L * C * F, c->mlp_bias ? L * C : 0,
        C,                                /* final_norm */
        c->tie_word_embeddings ? 0 : V * C};
    memcpy(sizes, list, sizeof list);
}

static int check_config(const model_config *c, duel_error *err) {
    if (c->arch != MODEL_ARCH_LLAMA)
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "llama_train: architecture %s is not Llama (train_model.h picks "
                              "the GPT-NeoX trainer for it)",
                              c->architecture[0] ? c->architecture : "(unnamed)");
    if (c->head != MODEL_HEAD_CAUSAL_LM)
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "llama_train: only causal-LM heads can be trained as a policy");
    if (c->activation != MODEL_ACT_SILU)
        return duel_error_set(err, DUEL_EUNSUPPORTED, "llama_train: Llama needs the SiLU activation");
    if (c->vocab_size <= 0 || c->hidden_size <= 0 || c->intermediate_size <= 0 ||
        c->num_layers <= 0 || c->num_heads <= 0 || c->num_kv_heads <= 0 || c->head_dim <= 0)
        return duel_error_set(err, DUEL_EINVAL,
                              "llama_train: vocab_size, hidden_size, intermediate_size, "
                              "num_layers, num_heads, num_kv_heads and head_dim must be positive");
    if (c->num_heads % c->num_kv_heads != 0)
        return duel_error_set(err, DUEL_EINVAL,
                              "llama_train: num_heads %d is not a multiple of num_kv_heads %d",
                              c->num_heads, c->num_kv_heads);
    if (c->head_dim % 2 != 0 || c->rotary_dim != c->head_dim)
        return duel_error_set(err, DUEL_EINVAL,
                              "llama_train: Llama rotates whole heads: head_dim %d must be even "
                              "and equal rotary_dim %d",
                              c->head_dim, c->rotary_dim);
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps))
        return duel_error_set(err, DUEL_EINVAL, "llama_train: norm_eps must be positive");
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return duel_error_set(err, DUEL_EINVAL, "llama_train: rope_theta must be positive");
    /* Bound every size before multiplying them in size_t. */
    double C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, L = c->num_layers;
    double QD = (double)c->num_heads * c->head_dim, KD = (double)c->num_kv_heads * c->head_dim;
    double total = 2 * V * C + L * (QD * C * 2 + KD * C * 2 + 3 * F * C + 3 * C + QD + 2 * KD + F);
    return train_storage_check_parameter_count(total, "llama_train", err);
}

/* The HF names in state_dict order (module registration order of LlamaForCausalLM). */
static void build_tensor_table(llama_train *m) {
    llama_train_params *p = &m->params;
    size_t C = m->C, F = m->F, QD = m->QD, KD = m->KD;
    train_storage_add_tensor(&m->store, "model.embed_tokens.weight", 2, m->V, m->C, p->embed_tokens);
    for (int l = 0; l < m->L; l++) {
        const train_layer_tensor rows[] = {
            {"self_attn.q_proj.weight", 2, m->QD, m->C, p->wq, QD * C},
            {"self_attn.q_proj.bias", 1, m->QD, 0, p->bq, QD},
            {"self_attn.k_proj.weight", 2, m->KD, m->C, p->wk, KD * C},
            {"self_attn.k_proj.bias", 1, m->KD, 0, p->bk, KD},
            {"self_attn.v_proj.weight", 2, m->KD, m->C, p->wv, KD * C},
            {"self_attn.v_proj.bias", 1, m->KD, 0, p->bv, KD},
            {"self_attn.o_proj.weight", 2, m->C, m->QD, p->wo, C * QD},
            {"self_attn.o_proj.bias", 1, m->C, 0, p->bo, C},
            {"mlp.gate_proj.weight", 2, m->F, m->C, p->w_gate, F * C},
            {"mlp.gate_proj.bias", 1, m->F, 0, p->b_gate, F},
            {"mlp.up_proj.weight", 2, m->F, m->C, p->w_up, F * C},
            {"mlp.up_proj.bias", 1, m->F, 0, p->b_up, F},
            {"mlp.down_proj.weight", 2, m->C, m->F, p->w_down, C * F},
            {"mlp.down_proj.bias", 1, m->C, 0, p->b_down, C},
            {"input_layernorm.weight", 1, m->C, 0, p->attn_norm, C},
            {"post_attention_layernorm.weight", 1, m->C, 0, p->mlp_norm, C},
        };
        train_storage_add_layer_tensors(&m->store, "model.layers", l, rows,
                                        sizeof rows / sizeof rows[0]);
    }
    train_storage_add_tensor(&m->store, "model.norm.weight", 1, m->C, 0, p->final_norm);
    if (!m->config.tie_word_embeddings)
        train_storage_add_tensor(&m->store, "lm_head.weight", 2, m->V, m->C, p->lm_head);
}

int llama_train_create(const model_config *config, llama_train **out, duel_error *err) {
    *out = NULL;
    int rc = check_config(config, err);
    if (rc) return rc;
    llama_train *m = calloc(1, sizeof *m);
    if (!m) return duel_error_set(err, DUEL_ENOMEM, "llama_train: out of memory");
    m->config = *config;
    m->C = config->hidden_size;
    m->F = config->intermediate_size;
    m->V = config->vocab_size;
    m->L = config->num_layers;
    m->Hq = config->num_heads;
    m->Hkv = config->num_kv_heads;
    m->D = config->head_dim;
    m->QD = m->Hq * m->D;
    m->KD = m->Hkv * m->D;
    size_t sizes[NUM_PARAM_SLOTS];
    float **param_ptrs[NUM_PARAM_SLOTS], **grad_ptrs[NUM_PARAM_SLOTS];
    param_sizes(m, sizes);
    param_slots(&m->params, param_ptrs);
    param_slots(&m->grads, grad_ptrs);
    rc = train_storage_init(&m->store, param_ptrs, grad_ptrs, sizes, NUM_PARAM_SLOTS,
                            (size_t)m->L * 16 + 3, "llama_train", err);
    if (rc) {
        free(m);
        return rc;
    }
    if (config->tie_word_embeddings) {
        m->params.lm_head = m->params.embed_tokens;
        m->grads.lm_head = m->grads.embed_tokens;
    }
    build_tensor_table(m);
    *out = m;
    return 0;
}

void llama_train_free(llama_train *m) {
    if (!m) return;
    train_storage_free(&m->store);
    free(m);
}

const model_config *llama_train_config(const llama_train *m) { return &m->config; }
size_t llama_train_num_parameters(const llama_train *m) { return m->store.num_parameters; }
llama_train_params *llama_train_parameters(llama_train *m) { return &m->params; }
llama_train_params *llama_train_gradients(llama_train *m) { return &m->grads; }
float *llama_train_parameter_memory(llama_train *m) { return m->store.param_memory; }
float *llama_train_gradient_memory(llama_train *m) { return m->store.grad_memory; }
int llama_train_num_tensors(const llama_train *m) { return m->store.num_tensors; }
int llama_train_tensor_at(llama_train *m, int index, train_tensor *out) {
    return train_storage_tensor_at(&m->store, index, out);
}
int llama_train_find_tensor(llama_train *m, const char *name, train_tensor *out,
                            duel_error *err) {
    return train_storage_find_tensor(&m->store, name, out, "llama_train", err);
}
void llama_train_zero_grad(llama_train *m) { train_storage_zero_grad(&m->store); }

/* Sizes of the activation slots for a batch of B x T, in the order of llama_train_acts. */
static void act_sizes(const llama_train *m, size_t B, size_t T, size_t sizes[NUM_ACT_SLOTS]) {
    size_t N = B * T, L = m->L, C = m->C, F = m->F, QD = m->QD, KD = m->KD, V = m->V;
    size_t half = (size_t)m->config.rotary_dim / 2;
    size_t list[NUM_ACT_SLOTS] = {
        (L + 1) * N * C, L * N * C, L * N, L * N * QD, L * N * KD, L * N * KD,
        L * B * m->Hq * T * T, L * N * QD, L * N * C, L * N * C, L * N, L * N * F, L * N * F,
        L * N * F, N * C, N, N * C, N * V, N, N, N,
        /* scratch */
        N * C, N * C, N * C, N * QD, N * QD, N * KD, N * KD, N * KD, N * QD, N * F, N * F,
        N * F, N * C, N, N, T * T, T * half, T * half};
    memcpy(sizes, list, sizeof list);
}

/* Grows the activation memory to hold batch x seq (keeping the larger of old and new). */
static int ensure_activations(llama_train *m, int batch, int seq, duel_error *err) {
    int cap_batch, cap_seq;
    if (!train_storage_needs_activations(&m->store, batch, seq, &cap_batch, &cap_seq)) return 0;
    /* The same count in double, checked before the size_t sizes are used (they may wrap). */
    double B = cap_batch, T = cap_seq, N = B * T;
    double estimate = m->L * (B * m->Hq * T * T + N * (6.0 * m->C + 3.0 * m->F + 2.0 * m->QD +
                                                        2.0 * m->KD + 2)) +
                      N * (8.0 * m->C + m->V + 3.0 * m->QD + 3.0 * m->KD + 3.0 * m->F + 8) +
                      T * (m->config.rotary_dim + T);
    size_t sizes[NUM_ACT_SLOTS];
    act_sizes(m, (size_t)cap_batch, (size_t)cap_seq, sizes);
    llama_train_acts *a = &m->acts;
    float **slots[NUM_ACT_SLOTS] = {
        &a->residual, &a->attn_norm, &a->attn_rstd, &a->q, &a->k, &a->v, &a->probs,
        &a->attn_out, &a->residual_mid, &a->mlp_norm, &a->mlp_rstd, &a->gate, &a->up,
        &a->swiglu, &a->final_norm, &a->final_rstd, &a->head_in, &a->logits, &a->lse,
        &a->row_logprob, &a->token_logprob, &a->branch_out, &a->d_residual, &a->d_norm,
        &a->d_q_rot, &a->d_q, &a->d_k_rot, &a->d_k, &a->d_v, &a->d_attn_out, &a->d_gate,
        &a->d_up, &a->d_swiglu, &a->d_head_in, &a->d_token_logprob, &a->d_row_logprob,
        &a->attn_scratch, &a->rope_cos, &a->rope_sin};
    _Static_assert(sizeof(llama_train_acts) == NUM_ACT_SLOTS * sizeof(float *),
                   "every member of llama_train_acts must be a slot");
    int rc = train_storage_alloc_activations(&m->store, cap_batch, cap_seq, estimate, slots, sizes,
                                             NUM_ACT_SLOTS, "llama_train", err);
    if (rc) return rc;
    return train_rope_tables(a->rope_cos, a->rope_sin, cap_seq, &m->config, err);
}

int llama_train_forward(llama_train *m, const train_batch *batch, double *seq_logprob,
                        double *seq_count, float *token_logprob, duel_error *err) {
    return llama_train_forward_forked(m, batch, NULL, seq_logprob, seq_count, token_logprob, err);
}

int llama_train_forward_forked(llama_train *m, const train_batch *batch, const train_fork *fork_in,
                               double *seq_logprob, double *seq_count, float *token_logprob,
                               duel_error *err) {
    train_storage *st = &m->store;
    const train_fork *fork;
    int rc = train_storage_begin_forward(st, batch, fork_in, seq_logprob, seq_count, m->V,
                                         m->config.max_position_embeddings, "llama_train", &fork,
                                         err);
    if (rc || (rc = ensure_activations(m, batch->batch_size, batch->seq_len, err))) return rc;
    train_storage_keep_batch(st, batch);
    const int B = batch->batch_size, T = batch->seq_len, N = B * T;
    const int C = m->C, F = m->F, V = m->V, QD = m->QD, KD = m->KD;
    const float eps = (float)m->config.norm_eps;

    llama_train_params *p = &m->params;
    llama_train_acts *a = &m->acts;
    const size_t NC = (size_t)N * C, NF = (size_t)N * F, NQ = (size_t)N * QD, NK = (size_t)N * KD;
    const size_t probs_stride = (size_t)B * m->Hq * T * T;

    train_embedding_forward(a->residual, st->tokens, p->embed_tokens, N, C);
    for (int l = 0; l < m->L; l++) {
        float *res_in = a->residual + l * NC, *res_mid = a->residual_mid + l * NC;
        float *res_out = a->residual + (l + 1) * NC;
        float *attn_norm = a->attn_norm + l * NC, *attn_rstd = a->attn_rstd + (size_t)l * N;
        float *q = a->q + l * NQ, *k = a->k + l * NK, *v = a->v + l * NK;
        float *attn_out = a->attn_out + l * NQ;
        float *mlp_norm = a->mlp_norm + l * NC, *mlp_rstd = a->mlp_rstd + (size_t)l * N;
        float *gate = a->gate + l * NF, *up = a->up + l * NF, *swiglu = a->swiglu + l * NF;

        train_rmsnorm_forward(attn_norm, attn_rstd, res_in, p->attn_norm + (size_t)l * C, N, C, eps);
        train_linear_forward(q, attn_norm, p->wq + (size_t)l * QD * C,
                             train_layer_slice(p->bq, l, QD), N, C, QD);
        train_linear_forward(k, attn_norm, p->wk + (size_t)l * KD * C,
                             train_layer_slice(p->bk, l, KD), N, C, KD);
        train_linear_forward(v, attn_norm, p->wv + (size_t)l * KD * C,
                             train_layer_slice(p->bv, l, KD), N, C, KD);
        train_rope_forward(q, q, a->rope_cos, a->rope_sin, B, T, m->Hq, m->D, m->D, fork);
        train_rope_forward(k, k, a->rope_cos, a->rope_sin, B, T, m->Hkv, m->D, m->D, fork);
        train_attention_forward(attn_out, a->probs + l * probs_stride, q, k, v, B, T, m->Hq,
                                m->Hkv, m->D, fork);
        train_linear_forward(a->branch_out, attn_out, p->wo + (size_t)l * C * QD,
                             train_layer_slice(p->bo, l, C), N, QD, C);
        train_residual_forward(res_mid, res_in, a->branch_out, (int)NC);

        train_rmsnorm_forward(mlp_norm, mlp_rstd, res_mid, p->mlp_norm + (size_t)l * C, N, C, eps);
        train_linear_forward(gate, mlp_norm, p->w_gate + (size_t)l * F * C,
                             train_layer_slice(p->b_gate, l, F), N, C, F);
        train_linear_forward(up, mlp_norm, p->w_up + (size_t)l * F * C,
                             train_layer_slice(p->b_up, l, F), N, C, F);
        train_swiglu_forward(swiglu, gate, up, (int)NF);
        train_linear_forward(a->branch_out, swiglu, p->w_down + (size_t)l * C * F,
                             train_layer_slice(p->b_down, l, C), N, F, C);
        train_residual_forward(res_out, res_mid, a->branch_out, (int)NC);
    }
    train_rmsnorm_forward(a->final_norm, a->final_rstd, a->residual + (size_t)m->L * NC,
                          p->final_norm, N, C, eps);

    /* Only masked rows go through the vocab-sized head. */
    st->num_rows = train_head_forward(seq_logprob, seq_count, a->token_logprob, st->rows,
                                     st->row_targets, a->head_in, a->logits, a->lse,
                                     a->row_logprob, a->final_norm, p->lm_head, st->targets,
                                     st->mask, B, T, C, V, fork);
    train_storage_end_forward(st, token_logprob, a->token_logprob);
    return 0;
}

int llama_train_backward(llama_train *m, const double *dseq_logprob, duel_error *err) {
    train_storage *st = &m->store;
    const train_fork *fork;
    int rc = train_storage_begin_backward(st, dseq_logprob, "llama_train", &fork, err);
    if (rc) return rc;
    const int B = st->batch, T = st->seq, N = B * T, R = st->num_rows;
    const int C = m->C, F = m->F, V = m->V, QD = m->QD, KD = m->KD;
    const size_t NC = (size_t)N * C, NF = (size_t)N * F, NQ = (size_t)N * QD, NK = (size_t)N * KD;
    const size_t probs_stride = (size_t)B * m->Hq * T * T;
    llama_train_params *p = &m->params, *g = &m->grads;
    llama_train_acts *a = &m->acts;

    /* Head: sequence sums -> token log-probs -> masked rows -> logits -> final norm. */
    float *d_final = a->d_norm; /* gradient of final_norm's output, zero on unmasked rows */
    memset(d_final, 0, NC * sizeof(float));
    train_head_backward(d_final, g->lm_head, a->logits, a->d_head_in, a->d_token_logprob,
                        a->d_row_logprob, dseq_logprob, st->rows, st->row_targets, a->head_in,
                        a->lse, p->lm_head, st->mask, R, B, T, C, V, fork);
    memset(a->d_residual, 0, NC * sizeof(float));
    train_rmsnorm_backward(a->d_residual, g->final_norm, d_final, a->residual + (size_t)m->L * NC,
                           p->final_norm, a->final_rstd, N, C);

    /* Layers in reverse. d_residual is the gradient of the residual stream after layer l; a
     * residual add passes it unchanged to its input and, as dout, to its branch, whose backward
     * then accumulates the branch's contribution into d_residual itself. */
    for (int l = m->L - 1; l >= 0; l--) {
        float *res_in = a->residual + l * NC, *res_mid = a->residual_mid + l * NC;
        float *attn_norm = a->attn_norm + l * NC, *attn_rstd = a->attn_rstd + (size_t)l * N;
        float *q = a->q + l * NQ, *k = a->k + l * NK, *v = a->v + l * NK;
        float *attn_out = a->attn_out + l * NQ;
        float *mlp_norm = a->mlp_norm + l * NC, *mlp_rstd = a->mlp_rstd + (size_t)l * N;
        float *gate = a->gate + l * NF, *up = a->up + l * NF, *swiglu = a->swiglu + l * NF;

        /* MLP branch */
        memset(a->d_swiglu, 0, NF * sizeof(float));
        train_linear_backward(a->d_swiglu, g->w_down + (size_t)l * C * F,
                              train_layer_slice(g->b_down, l, C), a->d_residual, swiglu,
                              p->w_down + (size_t)l * C * F, N, F, C);
        memset(a->d_gate, 0, NF * sizeof(float));
        memset(a->d_up, 0, NF * sizeof(float));
        train_swiglu_backward(a->d_gate, a->d_up, a->d_swiglu, gate, up, (int)NF);
        memset(a->d_norm, 0, NC * sizeof(float));
        train_linear_backward(a->d_norm, g->w_gate + (size_t)l * F * C,
                              train_layer_slice(g->b_gate, l, F), a->d_gate, mlp_norm,
                              p->w_gate + (size_t)l * F * C, N, C, F);
        train_linear_backward(a->d_norm, g->w_up + (size_t)l * F * C,
                              train_layer_slice(g->b_up, l, F), a->d_up, mlp_norm,
                              p->w_up + (size_t)l * F * C, N, C, F);
        train_rmsnorm_backward(a->d_residual, g->mlp_norm + (size_t)l * C, a->d_norm, res_mid,
                               p->mlp_norm + (size_t)l * C, mlp_rstd, N, C);

        /* Attention branch */
        memset(a->d_attn_out, 0, NQ * sizeof(float));
        train_linear_backward(a->d_attn_out, g->wo + (size_t)l * C * QD,
                              train_layer_slice(g->bo, l, C), a->d_residual, attn_out,
                              p->wo + (size_t)l * C * QD, N, QD, C);
        memset(a->d_q_rot, 0, NQ * sizeof(float));
        memset(a->d_k_rot, 0, NK * sizeof(float));
        memset(a->d_v, 0, NK * sizeof(float));
        train_attention_backward(a->d_q_rot, a->d_k_rot, a->d_v, a->attn_scratch, a->d_attn_out,
                                 a->probs + l * probs_stride, q, k, v, B, T, m->Hq, m->Hkv, m->D);
        memset(a->d_q, 0, NQ * sizeof(float));
        memset(a->d_k, 0, NK * sizeof(float));
        train_rope_backward(a->d_q, a->d_q_rot, a->rope_cos, a->rope_sin, B, T, m->Hq, m->D, m->D, fork);
        train_rope_backward(a->d_k, a->d_k_rot, a->rope_cos, a->rope_sin, B, T, m->Hkv, m->D, m->D, fork);
        memset(a->d_norm, 0, NC * sizeof(float));
        train_linear_backward(a->d_norm, g->wq + (size_t)l * QD * C,
                              train_layer_slice(g->bq, l, QD), a->d_q, attn_norm,
                              p->wq + (size_t)l * QD * C, N, C, QD);
        train_linear_backward(a->d_norm, g->wk + (size_t)l * KD * C,
                              train_layer_slice(g->bk, l, KD), a->d_k, attn_norm,
                              p->wk + (size_t)l * KD * C, N, C, KD);
        train_linear_backward(a->d_norm, g->wv + (size_t)l * KD * C,
                              train_layer_slice(g->bv, l, KD), a->d_v, attn_norm,
                              p->wv + (size_t)l * KD * C, N, C, KD);
        train_rmsnorm_backward(a->d_residual, g->attn_norm + (size_t)l * C, a->d_norm, res_in,
                               p->attn_norm + (size_t)l * C, attn_rstd, N, C);
    }
    train_embedding_backward(g->embed_tokens, a->d_residual, st->tokens, N, C);
    return 0;
}
