/* compute_cpu.c: the CPU compute backend (compute.h): the pool keeps host storage, f32 or bf16
 * as the engine asks (engine_params.kv_bytes_per_element; model_forward_batch reads and writes
 * either), and copies its own copy-on-write blocks, so copy_blocks never has work; an arm
 * borrows its model (f32, bf16 or q8 weights) and runs model_forward_batch (OpenBLAS and the
 * model's own kernels), the step's logits live in host memory and are sampled with sampler_sample, and ERM scoring is erm_score. It adds nothing to
 * the numbers: a step gives exactly what model_forward_batch and sampler_sample give.
 *
 * Owned by the engine thread, like the models it borrows (they keep scratch buffers). */
#include <stdlib.h>

#include "compute.h"

typedef struct cpu_backend {
    compute_backend base;
    compute_host_logits logits;
    model_batch_entry *entries; /* translation scratch */
    int cap_entries;
} cpu_backend;

struct compute_arm {
    model *model; /* borrowed */
};

static void cpu_destroy(compute_backend *b) {
    cpu_backend *c = (cpu_backend *)b;
    compute_host_logits_free(&c->logits);
    free(c->entries);
    free(c);
}

static int cpu_pool_prepare(compute_backend *b, kv_pool_params *params, duel_error *err) {
    (void)b;
    /* The element size stays the engine's: 0 or 4 (f32) or 2 (bf16 host storage). */
    if (params->bytes_per_element != 0 && params->bytes_per_element != 4 &&
        params->bytes_per_element != 2)
        return duel_error_set(err, DUEL_EINVAL,
                              "cpu backend: KV storage of %d bytes per element (4: f32, 2: bf16)",
                              params->bytes_per_element);
    params->allocate_storage = true;
    params->record_copies = false;
    return DUEL_OK;
}

static int cpu_pool_attach(compute_backend *b, kv_pool *pool, duel_error *err) {
    (void)b;
    if (!kv_pool_layer_keys(pool, 0) && !kv_pool_layer_keys_bf16(pool, 0))
        return duel_error_set(err, DUEL_EINVAL, "cpu backend: the KV pool has no host storage");
    return DUEL_OK;
}

static void cpu_pool_detach(compute_backend *b, kv_pool *pool) { (void)b, (void)pool; }

static int cpu_copy_blocks(compute_backend *b, kv_pool *pool, const int32_t *pairs, int n,
                           duel_error *err) {
    (void)b, (void)pool, (void)pairs;
    /* The pool copied them at reserve; it records none with host storage. */
    return duel_error_set(err, DUEL_EINVAL,
                          "cpu backend: %d recorded copies, but the pool copies its own", n);
}

static int cpu_arm_load(compute_backend *b, model *m, compute_arm **out, duel_error *err) {
    (void)b;
    compute_arm *a = calloc(1, sizeof *a);
    if (!a) return duel_error_set(err, DUEL_ENOMEM, "cpu backend: out of memory");
    a->model = m;
    *out = a;
    return DUEL_OK;
}

static void cpu_arm_unload(compute_backend *b, compute_arm *arm) {
    (void)b;
    free(arm);
}

static int cpu_step_begin(compute_backend *b, int rows, int vocab, duel_error *err) {
    return compute_host_logits_begin(&((cpu_backend *)b)->logits, rows, vocab, err);
}

static int cpu_forward(compute_backend *b, compute_arm *arm, kv_pool *pool,
                       const compute_entry *entries, int n, duel_error *err) {
    cpu_backend *c = (cpu_backend *)b;
    if (n > c->cap_entries) {
        model_batch_entry *grown = realloc(c->entries, (size_t)n * sizeof *grown);
        if (!grown) return duel_error_set(err, DUEL_ENOMEM, "cpu backend: out of memory");
        c->entries = grown;
        c->cap_entries = n;
    }
    int V = model_output_size(arm->model);
    for (int i = 0; i < n; i++) {
        const compute_entry *e = &entries[i];
        float *logits = NULL;
        if (e->logits_row >= 0) {
            logits = compute_host_logits_row(&c->logits, e->logits_row);
            if (!logits || V > c->logits.stride)
                return duel_error_set(err, DUEL_EINVAL,
                                      "cpu backend: entry %d: logits row %d of %d (vocab %d of "
                                      "%d): step_begin too small",
                                      i, e->logits_row, c->logits.rows, V, c->logits.stride);
        }
        c->entries[i] = (model_batch_entry){.seq = e->seq,
                                            .tokens = e->tokens,
                                            .n_tokens = e->n_tokens,
                                            .start = e->start,
                                            .logits = logits,
                                            .hidden_last = e->hidden_last,
                                            .targets = e->targets,
                                            .target_logprob = e->target_logprob};
    }
    return model_forward_batch(arm->model, pool, c->entries, n, err);
}

static int cpu_sample(compute_backend *b, compute_sample *samples, int n, duel_error *err) {
    return compute_host_logits_sample(&((cpu_backend *)b)->logits, samples, n, err);
}

static int cpu_read_logits(compute_backend *b, int row, float *out, duel_error *err) {
    return compute_host_logits_read(&((cpu_backend *)b)->logits, row, out, err);
}

static const compute_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .pool_prepare = cpu_pool_prepare,
    .pool_attach = cpu_pool_attach,
    .pool_detach = cpu_pool_detach,
    .copy_blocks = cpu_copy_blocks,
    .arm_load = cpu_arm_load,
    .arm_unload = cpu_arm_unload,
    .step_begin = cpu_step_begin,
    .forward = cpu_forward,
    .sample = cpu_sample,
    .read_logits = cpu_read_logits,
    .erm_load = compute_host_erm_load,
    .erm_unload = compute_host_erm_unload,
    .erm_score = compute_host_erm_score,
};

static int cpu_create(compute_backend **out, duel_error *err) {
    cpu_backend *c = calloc(1, sizeof *c);
    if (!c) return duel_error_set(err, DUEL_ENOMEM, "cpu backend: out of memory");
    c->base.ops = &cpu_ops;
    *out = &c->base;
    return DUEL_OK;
}

static int cpu_probe(char *why, size_t cap) {
    (void)why, (void)cap;
    return 1;
}

static const compute_provider cpu_provider = {"cpu", false, cpu_probe, cpu_create};

const compute_provider *compute_cpu_provider(void) { return &cpu_provider; }
