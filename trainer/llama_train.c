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
    float *param_memory, *grad_memory;
    size_t num_parameters;
    train_tensor *tensors;
    int num_tensors;

    llama_train_acts acts;
    float *act_memory;
    int32_t *int_memory; /* tokens, targets, rows, row_targets: [N] each */
    float *mask;         /* [N] copy */
    int cap_batch, cap_seq;
    int batch, seq, num_rows; /* of the last forward */
    int32_t *tokens, *targets, *rows, *row_targets;
    train_fork_saved fork; /* of the last forward */
    bool have_forward;
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

/* Points each slot of p into memory (zero-sized slots become NULL); ties lm_head. */
static void carve_params(llama_train *m, llama_train_params *p, float *memory) {
    float **slots[NUM_PARAM_SLOTS];
    size_t sizes[NUM_PARAM_SLOTS];
    param_slots(p, slots);
    param_sizes(m, sizes);
    size_t off = 0;
    for (int i = 0; i < NUM_PARAM_SLOTS; i++) {
        *slots[i] = sizes[i] ? memory + off : NULL;
        off += sizes[i];
    }
    if (m->config.tie_word_embeddings) p->lm_head = p->embed_tokens;
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
    if (total > (double)TRAIN_MAX_PARAMETERS)
        return duel_error_set(err, DUEL_ELIMIT,
                              "llama_train: %.0f parameters is over the limit of %lld", total,
                              (long long)TRAIN_MAX_PARAMETERS);
    return 0;
}

static int add_tensor(llama_train *m, const char *name, int ndim, int d0, int d1, float *param) {
    train_tensor *t = &m->tensors[m->num_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim == 2 ? d1 : 1;
    t->numel = (size_t)d0 * (ndim == 2 ? (size_t)d1 : 1);
    t->param = param;
    t->grad = m->grad_memory + (param - m->param_memory);
    return 0;
}

/* The HF names in state_dict order (module registration order of LlamaForCausalLM). */
static void build_tensor_table(llama_train *m) {
    llama_train_params *p = &m->params;
    size_t C = m->C, F = m->F, QD = m->QD, KD = m->KD;
    char name[96];
    add_tensor(m, "model.embed_tokens.weight", 2, m->V, m->C, p->embed_tokens);
    for (int l = 0; l < m->L; l++) {
        struct {
            const char *suffix;
            int ndim, d0, d1;
            float *base;
            size_t stride;
        } rows[] = {
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
        for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
            if (!rows[i].base) continue;
            snprintf(name, sizeof name, "model.layers.%d.%s", l, rows[i].suffix);
            add_tensor(m, name, rows[i].ndim, rows[i].d0, rows[i].d1,
                       rows[i].base + (size_t)l * rows[i].stride);
        }
    }
    add_tensor(m, "model.norm.weight", 1, m->C, 0, p->final_norm);
    if (!m->config.tie_word_embeddings) add_tensor(m, "lm_head.weight", 2, m->V, m->C, p->lm_head);
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
    param_sizes(m, sizes);
    for (int i = 0; i < NUM_PARAM_SLOTS; i++) m->num_parameters += sizes[i];
    m->param_memory = calloc(m->num_parameters, sizeof(float));
    m->grad_memory = calloc(m->num_parameters, sizeof(float));
    m->tensors = calloc((size_t)m->L * 16 + 3, sizeof *m->tensors);
    if (!m->param_memory || !m->grad_memory || !m->tensors) {
        size_t count = m->num_parameters;
        llama_train_free(m);
        return duel_error_set(err, DUEL_ENOMEM, "llama_train: out of memory for %zu parameters",
                              count);
    }
    carve_params(m, &m->params, m->param_memory);
    carve_params(m, &m->grads, m->grad_memory);
    build_tensor_table(m);
    *out = m;
    return 0;
}

void llama_train_free(llama_train *m) {
    if (!m) return;
    free(m->param_memory);
    free(m->grad_memory);
    free(m->tensors);
    free(m->act_memory);
    free(m->int_memory);
    free(m->mask);
    train_fork_saved_free(&m->fork);
    free(m);
}

const model_config *llama_train_config(const llama_train *m) { return &m->config; }
size_t llama_train_num_parameters(const llama_train *m) { return m->num_parameters; }
llama_train_params *llama_train_parameters(llama_train *m) { return &m->params; }
llama_train_params *llama_train_gradients(llama_train *m) { return &m->grads; }
float *llama_train_parameter_memory(llama_train *m) { return m->param_memory; }
float *llama_train_gradient_memory(llama_train *m) { return m->grad_memory; }
int llama_train_num_tensors(const llama_train *m) { return m->num_tensors; }

int llama_train_tensor_at(llama_train *m, int index, train_tensor *out) {
    if (index < 0 || index >= m->num_tensors) return DUEL_EINVAL;
    *out = m->tensors[index];
    return 0;
}

int llama_train_find_tensor(llama_train *m, const char *name, train_tensor *out,
                            duel_error *err) {
    for (int i = 0; i < m->num_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) {
            *out = m->tensors[i];
            return 0;
        }
    return duel_error_set(err, DUEL_ENOTFOUND, "llama_train: no tensor named %s", name);
}

void llama_train_zero_grad(llama_train *m) {
    memset(m->grad_memory, 0, m->num_parameters * sizeof(float));
}

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
    if (m->act_memory && batch <= m->cap_batch && seq <= m->cap_seq) return 0;
    int cap_batch = batch > m->cap_batch ? batch : m->cap_batch;
    int cap_seq = seq > m->cap_seq ? seq : m->cap_seq;
    /* Estimate in double first so that the size_t products below cannot overflow. */
    double B = cap_batch, T = cap_seq, N = B * T;
    double estimate = m->L * (B * m->Hq * T * T + N * (6.0 * m->C + 3.0 * m->F + 2.0 * m->QD +
                                                        2.0 * m->KD + 2)) +
                      N * (8.0 * m->C + m->V + 3.0 * m->QD + 3.0 * m->KD + 3.0 * m->F + 8) +
                      T * (m->config.rotary_dim + T);
    if (estimate * sizeof(float) > (double)TRAIN_MAX_ACTIVATION_BYTES)
        return duel_error_set(err, DUEL_ELIMIT,
                              "llama_train: a batch of %d x %d needs %.1f GiB of activations, over "
                              "the limit of %zu GiB",
                              cap_batch, cap_seq, estimate * sizeof(float) / (1 << 30),
                              TRAIN_MAX_ACTIVATION_BYTES >> 30);
    size_t sizes[NUM_ACT_SLOTS], total = 0;
    act_sizes(m, (size_t)cap_batch, (size_t)cap_seq, sizes);
    for (int i = 0; i < NUM_ACT_SLOTS; i++) total += sizes[i];
    size_t n = (size_t)cap_batch * cap_seq;
    float *memory = malloc(total * sizeof(float));
    int32_t *ints = malloc(4 * n * sizeof(int32_t));
    float *mask = malloc(n * sizeof(float));
    if (!memory || !ints || !mask) {
        free(memory);
        free(ints);
        free(mask);
        return duel_error_set(err, DUEL_ENOMEM, "llama_train: out of memory for activations");
    }
    free(m->act_memory);
    free(m->int_memory);
    free(m->mask);
    m->act_memory = memory;
    m->int_memory = ints;
    m->mask = mask;
    m->cap_batch = cap_batch;
    m->cap_seq = cap_seq;
    m->tokens = ints;
    m->targets = ints + n;
    m->rows = ints + 2 * n;
    m->row_targets = ints + 3 * n;
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
    size_t off = 0;
    for (int i = 0; i < NUM_ACT_SLOTS; i++) {
        *slots[i] = memory + off;
        off += sizes[i];
    }
    m->have_forward = false;
    return train_rope_tables(m->acts.rope_cos, m->acts.rope_sin, cap_seq, &m->config, err);
}

static float *layer_ptr(float *base, int l, size_t stride) {
    return base ? base + (size_t)l * stride : NULL;
}

int llama_train_forward(llama_train *m, const train_batch *batch, double *seq_logprob,
                        double *seq_count, float *token_logprob, duel_error *err) {
    return llama_train_forward_forked(m, batch, NULL, seq_logprob, seq_count, token_logprob, err);
}

int llama_train_forward_forked(llama_train *m, const train_batch *batch, const train_fork *fork_in,
                               double *seq_logprob, double *seq_count, float *token_logprob,
                               duel_error *err) {
    /* a forked row may be longer than the model's positions: train_fork_save checks its sequences */
    const int max_positions = m->config.max_position_embeddings;
    int rc = train_batch_check(batch, m->V, fork_in ? 0 : max_positions, "llama_train", err);
    if (rc) return rc;
    if (!seq_logprob || !seq_count)
        return duel_error_set(err, DUEL_EINVAL, "llama_train: seq_logprob and seq_count are required");
    m->have_forward = false;
    const train_fork *fork = NULL;
    if ((rc = train_fork_save(&m->fork, fork_in, batch, max_positions, "llama_train", &fork, err))) return rc;
    rc = ensure_activations(m, batch->batch_size, batch->seq_len, err);
    if (rc) return rc;
    const int B = batch->batch_size, T = batch->seq_len, N = B * T;
    const int C = m->C, F = m->F, V = m->V, QD = m->QD, KD = m->KD;
    const float eps = (float)m->config.norm_eps;
    m->batch = B;
    m->seq = T;
    memcpy(m->tokens, batch->tokens, (size_t)N * sizeof(int32_t));
    memcpy(m->targets, batch->targets, (size_t)N * sizeof(int32_t));
    memcpy(m->mask, batch->mask, (size_t)N * sizeof(float));

    llama_train_params *p = &m->params;
    llama_train_acts *a = &m->acts;
    const size_t NC = (size_t)N * C, NF = (size_t)N * F, NQ = (size_t)N * QD, NK = (size_t)N * KD;
    const size_t probs_stride = (size_t)B * m->Hq * T * T;

    train_embedding_forward(a->residual, m->tokens, p->embed_tokens, N, C);
    for (int l = 0; l < m->L; l++) {
        float *res_in = a->residual + l * NC, *res_mid = a->residual_mid + l * NC;
        float *res_out = a->residual + (l + 1) * NC;
        float *attn_norm = a->attn_norm + l * NC, *attn_rstd = a->attn_rstd + (size_t)l * N;
        float *q = a->q + l * NQ, *k = a->k + l * NK, *v = a->v + l * NK;
        float *attn_out = a->attn_out + l * NQ;
        float *mlp_norm = a->mlp_norm + l * NC, *mlp_rstd = a->mlp_rstd + (size_t)l * N;
        float *gate = a->gate + l * NF, *up = a->up + l * NF, *swiglu = a->swiglu + l * NF;

        train_rmsnorm_forward(attn_norm, attn_rstd, res_in, p->attn_norm + (size_t)l * C, N, C, eps);
        train_linear_forward(q, attn_norm, p->wq + (size_t)l * QD * C, layer_ptr(p->bq, l, QD), N,
                             C, QD);
        train_linear_forward(k, attn_norm, p->wk + (size_t)l * KD * C, layer_ptr(p->bk, l, KD), N,
                             C, KD);
        train_linear_forward(v, attn_norm, p->wv + (size_t)l * KD * C, layer_ptr(p->bv, l, KD), N,
                             C, KD);
        train_rope_forward(q, q, a->rope_cos, a->rope_sin, B, T, m->Hq, m->D, m->D, fork);
        train_rope_forward(k, k, a->rope_cos, a->rope_sin, B, T, m->Hkv, m->D, m->D, fork);
        train_attention_forward(attn_out, a->probs + l * probs_stride, q, k, v, B, T, m->Hq,
                                m->Hkv, m->D, fork);
        train_linear_forward(a->branch_out, attn_out, p->wo + (size_t)l * C * QD,
                             layer_ptr(p->bo, l, C), N, QD, C);
        train_residual_forward(res_mid, res_in, a->branch_out, (int)NC);

        train_rmsnorm_forward(mlp_norm, mlp_rstd, res_mid, p->mlp_norm + (size_t)l * C, N, C, eps);
        train_linear_forward(gate, mlp_norm, p->w_gate + (size_t)l * F * C,
                             layer_ptr(p->b_gate, l, F), N, C, F);
        train_linear_forward(up, mlp_norm, p->w_up + (size_t)l * F * C, layer_ptr(p->b_up, l, F),
                             N, C, F);
        train_swiglu_forward(swiglu, gate, up, (int)NF);
        train_linear_forward(a->branch_out, swiglu, p->w_down + (size_t)l * C * F,
                             layer_ptr(p->b_down, l, C), N, F, C);
        train_residual_forward(res_out, res_mid, a->branch_out, (int)NC);
    }
    train_rmsnorm_forward(a->final_norm, a->final_rstd, a->residual + (size_t)m->L * NC,
                          p->final_norm, N, C, eps);

    /* Only masked rows go through the vocab-sized head. */
    m->num_rows = train_head_forward(seq_logprob, seq_count, a->token_logprob, m->rows,
                                     m->row_targets, a->head_in, a->logits, a->lse,
                                     a->row_logprob, a->final_norm, p->lm_head, m->targets,
                                     m->mask, B, T, C, V, fork);
    if (token_logprob) memcpy(token_logprob, a->token_logprob, (size_t)N * sizeof(float));
    m->have_forward = true;
    return 0;
}

int llama_train_backward(llama_train *m, const double *dseq_logprob, duel_error *err) {
    if (!m->have_forward)
        return duel_error_set(err, DUEL_EINVAL,
                              "llama_train: backward needs a forward first (one backward per "
                              "forward)");
    if (!dseq_logprob) return duel_error_set(err, DUEL_EINVAL, "llama_train: dseq_logprob is NULL");
    const train_fork *fork = train_fork_saved_get(&m->fork);
    for (int b = 0; b < (fork ? 2 : 1) * m->batch; b++)
        if (!isfinite(dseq_logprob[b]))
            return duel_error_set(err, DUEL_EINVAL,
                                  "llama_train: d(loss)/d(seq_logprob[%d]) is not finite", b);
    m->have_forward = false;
    const int B = m->batch, T = m->seq, N = B * T, R = m->num_rows;
    const int C = m->C, F = m->F, V = m->V, QD = m->QD, KD = m->KD;
    const size_t NC = (size_t)N * C, NF = (size_t)N * F, NQ = (size_t)N * QD, NK = (size_t)N * KD;
    const size_t probs_stride = (size_t)B * m->Hq * T * T;
    llama_train_params *p = &m->params, *g = &m->grads;
    llama_train_acts *a = &m->acts;

    /* Head: sequence sums -> token log-probs -> masked rows -> logits -> final norm. */
    float *d_final = a->d_norm; /* gradient of final_norm's output, zero on unmasked rows */
    memset(d_final, 0, NC * sizeof(float));
    train_head_backward(d_final, g->lm_head, a->logits, a->d_head_in, a->d_token_logprob,
                        a->d_row_logprob, dseq_logprob, m->rows, m->row_targets, a->head_in,
                        a->lse, p->lm_head, m->mask, R, B, T, C, V, fork);
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
                              layer_ptr(g->b_down, l, C), a->d_residual, swiglu,
                              p->w_down + (size_t)l * C * F, N, F, C);
        memset(a->d_gate, 0, NF * sizeof(float));
        memset(a->d_up, 0, NF * sizeof(float));
        train_swiglu_backward(a->d_gate, a->d_up, a->d_swiglu, gate, up, (int)NF);
        memset(a->d_norm, 0, NC * sizeof(float));
        train_linear_backward(a->d_norm, g->w_gate + (size_t)l * F * C, layer_ptr(g->b_gate, l, F),
                              a->d_gate, mlp_norm, p->w_gate + (size_t)l * F * C, N, C, F);
        train_linear_backward(a->d_norm, g->w_up + (size_t)l * F * C, layer_ptr(g->b_up, l, F),
                              a->d_up, mlp_norm, p->w_up + (size_t)l * F * C, N, C, F);
        train_rmsnorm_backward(a->d_residual, g->mlp_norm + (size_t)l * C, a->d_norm, res_mid,
                               p->mlp_norm + (size_t)l * C, mlp_rstd, N, C);

        /* Attention branch */
        memset(a->d_attn_out, 0, NQ * sizeof(float));
        train_linear_backward(a->d_attn_out, g->wo + (size_t)l * C * QD, layer_ptr(g->bo, l, C),
                              a->d_residual, attn_out, p->wo + (size_t)l * C * QD, N, QD, C);
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
        train_linear_backward(a->d_norm, g->wq + (size_t)l * QD * C, layer_ptr(g->bq, l, QD),
                              a->d_q, attn_norm, p->wq + (size_t)l * QD * C, N, C, QD);
        train_linear_backward(a->d_norm, g->wk + (size_t)l * KD * C, layer_ptr(g->bk, l, KD),
                              a->d_k, attn_norm, p->wk + (size_t)l * KD * C, N, C, KD);
        train_linear_backward(a->d_norm, g->wv + (size_t)l * KD * C, layer_ptr(g->bv, l, KD),
                              a->d_v, attn_norm, p->wv + (size_t)l * KD * C, N, C, KD);
        train_rmsnorm_backward(a->d_residual, g->attn_norm + (size_t)l * C, a->d_norm, res_in,
                               p->attn_norm + (size_t)l * C, attn_rstd, N, C);
    }
    train_embedding_backward(g->embed_tokens, a->d_residual, m->tokens, N, C);
    return 0;
}
