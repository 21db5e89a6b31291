/* train_model.c: dispatch from train_model_* to llama_train_* or neox_train_* by architecture
 * (see train_model.h). */
#include "train_model.h"

#include <stdlib.h>
#include <string.h>

#include "llama_train.h"
#include "neox_train.h"

struct train_model {
    model_arch arch;
    llama_train *llama; /* exactly one of the two is set */
    neox_train *neox;
};

int train_model_create(const model_config *config, train_model **out, duel_error *err) {
    *out = NULL;
    train_model *m = calloc(1, sizeof *m);
    if (!m) return duel_error_set(err, DUEL_ENOMEM, "train_model: out of memory");
    m->arch = config->arch;
    int rc;
    switch (config->arch) {
    case MODEL_ARCH_LLAMA: rc = llama_train_create(config, &m->llama, err); break;
    case MODEL_ARCH_GPT_NEOX: rc = neox_train_create(config, &m->neox, err); break;
    default:
        rc = duel_error_set(err, DUEL_EUNSUPPORTED, "train_model: unknown architecture %d",
                            (int)config->arch);
    }
    if (rc) {
        free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void train_model_free(train_model *m) {
    if (!m) return;
    llama_train_free(m->llama);
    neox_train_free(m->neox);
    free(m);
}

#define DISPATCH(call_llama, call_neox) ((m)->llama ? (call_llama) : (call_neox))

const model_config *train_model_config(const train_model *m) {
    return DISPATCH(llama_train_config(m->llama), neox_train_config(m->neox));
}
size_t train_model_num_parameters(const train_model *m) {
    return DISPATCH(llama_train_num_parameters(m->llama), neox_train_num_parameters(m->neox));
}
float *train_model_parameter_memory(train_model *m) {
    return DISPATCH(llama_train_parameter_memory(m->llama), neox_train_parameter_memory(m->neox));
}
float *train_model_gradient_memory(train_model *m) {
    return DISPATCH(llama_train_gradient_memory(m->llama), neox_train_gradient_memory(m->neox));
}
int train_model_num_tensors(const train_model *m) {
    return DISPATCH(llama_train_num_tensors(m->llama), neox_train_num_tensors(m->neox));
}
int train_model_tensor_at(train_model *m, int index, train_tensor *out) {
    return DISPATCH(llama_train_tensor_at(m->llama, index, out),
                    neox_train_tensor_at(m->neox, index, out));
}
int train_model_find_tensor(train_model *m, const char *name, train_tensor *out,
                            duel_error *err) {
    return DISPATCH(llama_train_find_tensor(m->llama, name, out, err),
                    neox_train_find_tensor(m->neox, name, out, err));
}
void train_model_zero_grad(train_model *m) {
    if (m->llama) llama_train_zero_grad(m->llama);
    else neox_train_zero_grad(m->neox);
}
int train_model_forward(train_model *m, const train_batch *batch, double *seq_logprob,
                        double *seq_count, float *token_logprob, duel_error *err) {
    return DISPATCH(
        llama_train_forward(m->llama, batch, seq_logprob, seq_count, token_logprob, err),
        neox_train_forward(m->neox, batch, seq_logprob, seq_count, token_logprob, err));
}
int train_model_forward_forked(train_model *m, const train_batch *batch, const train_fork *fork,
                               double *seq_logprob, double *seq_count, float *token_logprob, duel_error *err) {
    return DISPATCH(
        llama_train_forward_forked(m->llama, batch, fork, seq_logprob, seq_count, token_logprob, err),
        neox_train_forward_forked(m->neox, batch, fork, seq_logprob, seq_count, token_logprob, err));
}
int train_model_backward(train_model *m, const double *dseq_logprob, duel_error *err) {
    return DISPATCH(llama_train_backward(m->llama, dseq_logprob, err),
                    neox_train_backward(m->neox, dseq_logprob, err));
}

unsigned char *train_model_decay_mask(train_model *m) {
    size_t n = train_model_num_parameters(m);
    unsigned char *mask = calloc(n ? n : 1, 1);
    if (!mask) return NULL;
    float *base = train_model_parameter_memory(m);
    for (int i = 0; i < train_model_num_tensors(m); i++) {
        train_tensor t;
        train_model_tensor_at(m, i, &t);
        if (t.ndim == 2) memset(mask + (t.param - base), 1, t.numel);
    }
    return mask;
}

void train_model_flops_per_position(const train_model *model, int T, double *body, double *head) {
    const model_config *c = train_model_config(model);
    double matrix = 0;
    for (int i = 0; i < train_model_num_tensors(model); i++) {
        train_tensor t;
        train_model_tensor_at((train_model *)model, i, &t);
        /* The embedding is a lookup; the head (vocab x hidden, tied or not) counts in *head. */
        if (t.ndim == 2 && t.shape[0] != c->vocab_size && t.shape[1] != c->vocab_size) matrix += (double)t.numel;
    }
    *body = 6.0 * matrix + 6.0 * c->num_layers * (double)T * c->num_heads * c->head_dim;
    *head = 6.0 * (double)c->vocab_size * c->hidden_size;
}
