/* train_storage.c: the parameter, tensor-table and activation memory shared by the trainable
 * model families (see train_storage.h). */
#include "train_storage.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Points slots[i] at consecutive runs of sizes[i] floats of memory, NULL for empty runs. */
static void carve(float *memory, float **slots[], const size_t sizes[], int num_slots) {
    size_t off = 0;
    for (int i = 0; i < num_slots; i++) {
        *slots[i] = sizes[i] ? memory + off : NULL;
        off += sizes[i];
    }
}

int train_storage_check_parameter_count(double total, const char *who, duel_error *err) {
    if (total > (double)TRAIN_MAX_PARAMETERS)
        return duel_error_set(err, DUEL_ELIMIT, "%s: %.0f parameters is over the limit of %lld",
                              who, total, (long long)TRAIN_MAX_PARAMETERS);
    return 0;
}

int train_storage_init(train_storage *s, float **param_slots[], float **grad_slots[],
                       const size_t sizes[], int num_slots, size_t max_tensors, const char *who,
                       duel_error *err) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < num_slots; i++) s->num_parameters += sizes[i];
    s->param_memory = calloc(s->num_parameters, sizeof(float));
    s->grad_memory = calloc(s->num_parameters, sizeof(float));
    s->tensors = calloc(max_tensors, sizeof *s->tensors);
    if (!s->param_memory || !s->grad_memory || !s->tensors) {
        size_t count = s->num_parameters;
        train_storage_free(s);
        return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory for %zu parameters", who,
                              count);
    }
    carve(s->param_memory, param_slots, sizes, num_slots);
    carve(s->grad_memory, grad_slots, sizes, num_slots);
    return 0;
}

void train_storage_free(train_storage *s) {
    free(s->param_memory);
    free(s->grad_memory);
    free(s->tensors);
    free(s->act_memory);
    free(s->int_memory);
    free(s->mask);
    train_fork_saved_free(&s->fork);
    memset(s, 0, sizeof *s);
}

void train_storage_add_tensor(train_storage *s, const char *name, int ndim, int d0, int d1,
                              float *param) {
    train_tensor *t = &s->tensors[s->num_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim == 2 ? d1 : 1;
    t->numel = (size_t)d0 * (ndim == 2 ? (size_t)d1 : 1);
    t->param = param;
    t->grad = s->grad_memory + (param - s->param_memory);
}

void train_storage_add_layer_tensors(train_storage *s, const char *prefix, int layer,
                                     const train_layer_tensor *rows, size_t num_rows) {
    char name[sizeof ((train_tensor *)0)->name];
    for (size_t i = 0; i < num_rows; i++) {
        if (!rows[i].base) continue;
        snprintf(name, sizeof name, "%s.%d.%s", prefix, layer, rows[i].suffix);
        train_storage_add_tensor(s, name, rows[i].ndim, rows[i].d0, rows[i].d1,
                                 rows[i].base + (size_t)layer * rows[i].stride);
    }
}

int train_storage_tensor_at(const train_storage *s, int index, train_tensor *out) {
    if (index < 0 || index >= s->num_tensors) return DUEL_EINVAL;
    *out = s->tensors[index];
    return 0;
}

int train_storage_find_tensor(const train_storage *s, const char *name, train_tensor *out,
                              const char *who, duel_error *err) {
    for (int i = 0; i < s->num_tensors; i++)
        if (strcmp(s->tensors[i].name, name) == 0) {
            *out = s->tensors[i];
            return 0;
        }
    return duel_error_set(err, DUEL_ENOTFOUND, "%s: no tensor named %s", who, name);
}

void train_storage_zero_grad(train_storage *s) {
    memset(s->grad_memory, 0, s->num_parameters * sizeof(float));
}

int train_storage_begin_forward(train_storage *s, const train_batch *batch,
                                const train_fork *fork_in, const double *seq_logprob,
                                const double *seq_count, int vocab, int max_positions,
                                const char *who, const train_fork **fork, duel_error *err) {
    *fork = NULL;
    /* a forked row may be longer than the model's positions: train_fork_save checks its sequences */
    int rc = train_batch_check(batch, vocab, fork_in ? 0 : max_positions, who, err);
    if (rc) return rc;
    if (!seq_logprob || !seq_count)
        return duel_error_set(err, DUEL_EINVAL, "%s: seq_logprob and seq_count are required", who);
    s->have_forward = false;
    return train_fork_save(&s->fork, fork_in, batch, max_positions, who, fork, err);
}

bool train_storage_needs_activations(const train_storage *s, int batch, int seq, int *cap_batch,
                                     int *cap_seq) {
    if (s->act_memory && batch <= s->cap_batch && seq <= s->cap_seq) return false;
    *cap_batch = batch > s->cap_batch ? batch : s->cap_batch;
    *cap_seq = seq > s->cap_seq ? seq : s->cap_seq;
    return true;
}

int train_storage_alloc_activations(train_storage *s, int cap_batch, int cap_seq,
                                    double estimate_floats, float **slots[], const size_t sizes[],
                                    int num_slots, const char *who, duel_error *err) {
    if (estimate_floats * sizeof(float) > (double)TRAIN_MAX_ACTIVATION_BYTES)
        return duel_error_set(err, DUEL_ELIMIT,
                              "%s: a batch of %d x %d needs %.1f GiB of activations, over the "
                              "limit of %zu GiB",
                              who, cap_batch, cap_seq, estimate_floats * sizeof(float) / (1 << 30),
                              TRAIN_MAX_ACTIVATION_BYTES >> 30);
    size_t total = 0;
    for (int i = 0; i < num_slots; i++) total += sizes[i];
    size_t n = (size_t)cap_batch * cap_seq;
    float *memory = malloc(total * sizeof(float));
    int32_t *ints = malloc(4 * n * sizeof(int32_t));
    float *mask = malloc(n * sizeof(float));
    if (!memory || !ints || !mask) {
        free(memory);
        free(ints);
        free(mask);
        return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory for activations", who);
    }
    free(s->act_memory);
    free(s->int_memory);
    free(s->mask);
    s->act_memory = memory;
    s->int_memory = ints;
    s->mask = mask;
    s->cap_batch = cap_batch;
    s->cap_seq = cap_seq;
    s->tokens = ints;
    s->targets = ints + n;
    s->rows = ints + 2 * n;
    s->row_targets = ints + 3 * n;
    carve(memory, slots, sizes, num_slots);
    s->have_forward = false;
    return 0;
}

void train_storage_keep_batch(train_storage *s, const train_batch *batch) {
    const size_t n = (size_t)batch->batch_size * batch->seq_len;
    s->batch = batch->batch_size;
    s->seq = batch->seq_len;
    memcpy(s->tokens, batch->tokens, n * sizeof(int32_t));
    memcpy(s->targets, batch->targets, n * sizeof(int32_t));
    memcpy(s->mask, batch->mask, n * sizeof(float));
}

void train_storage_end_forward(train_storage *s, float *token_logprob,
                               const float *saved_token_logprob) {
    if (token_logprob)
        memcpy(token_logprob, saved_token_logprob,
               (size_t)s->batch * s->seq * sizeof(float));
    s->have_forward = true;
}

int train_storage_begin_backward(train_storage *s, const double *dseq_logprob, const char *who,
                                 const train_fork **fork, duel_error *err) {
    if (!s->have_forward)
        return duel_error_set(err, DUEL_EINVAL,
                              "%s: backward needs a forward first (one backward per forward)", who);
    if (!dseq_logprob) return duel_error_set(err, DUEL_EINVAL, "%s: dseq_logprob is NULL", who);
    *fork = train_fork_saved_get(&s->fork);
    for (int b = 0; b < (*fork ? 2 : 1) * s->batch; b++)
        if (!isfinite(dseq_logprob[b]))
            return duel_error_set(err, DUEL_EINVAL, "%s: d(loss)/d(seq_logprob[%d]) is not finite",
                                  who, b);
    s->have_forward = false;
    return 0;
}
