/* compute_reference.c: the "reference" compute backend, a test double (compute_reference.h).
 *
 * Its K/V storage is a second kv_pool of the engine's pool's geometry, created with host
 * storage and used only as memory (its bookkeeping is never touched): model_forward_batch reads
 * and writes K/V through the sequences' block tables, which index both pools alike. The engine's
 * pool records its copy-on-write copies (no storage of its own), and copy_blocks applies them
 * here in order, so a missed or misordered copy shows up as wrong logits. Each entry of a step
 * runs alone, in order (a sequence's K/V never depends on another's in one step), and its
 * last-token logits land in a host row kept until the next step_begin. */
#include "compute_reference.h"

#include <stdlib.h>
#include <string.h>

typedef struct reference_backend {
    compute_backend base;
    kv_pool *storage; /* memory only, same block ids as the attached pool */
    compute_host_logits logits;
    float *row;       /* one entry's logits before they go to their row */
    size_t row_floats;
} reference_backend;

struct compute_arm {
    model *model;
};

static void ref_destroy(compute_backend *b) {
    reference_backend *r = (reference_backend *)b;
    kv_pool_destroy(r->storage);
    compute_host_logits_free(&r->logits);
    free(r->row);
    free(r);
}

static int ref_pool_prepare(compute_backend *b, kv_pool_params *params, duel_error *err) {
    (void)b, (void)err;
    params->allocate_storage = false;
    params->record_copies = true;
    params->bytes_per_element = 4;
    return DUEL_OK;
}

static int ref_pool_attach(compute_backend *b, kv_pool *pool, duel_error *err) {
    reference_backend *r = (reference_backend *)b;
    const kv_pool_params *pp = kv_pool_get_params(pool);
    if (pp->allocate_storage || !pp->record_copies)
        return duel_error_set(err, DUEL_EINVAL,
                              "reference backend: the pool must record copies, not hold K/V");
    kv_pool_params sp = *pp;
    sp.memory_budget_bytes = 0;
    sp.num_blocks = pp->num_blocks;
    sp.allocate_storage = true;
    sp.record_copies = false;
    kv_pool_destroy(r->storage);
    r->storage = NULL;
    return kv_pool_create(&sp, &r->storage, err);
}

static void ref_pool_detach(compute_backend *b, kv_pool *pool) {
    (void)pool;
    reference_backend *r = (reference_backend *)b;
    kv_pool_destroy(r->storage);
    r->storage = NULL;
}

static int ref_copy_blocks(compute_backend *b, kv_pool *pool, const int32_t *pairs, int n,
                           duel_error *err) {
    reference_backend *r = (reference_backend *)b;
    const kv_pool_params *pp = kv_pool_get_params(pool);
    size_t tile = (size_t)pp->num_kv_heads * (size_t)pp->block_size * (size_t)pp->head_dim;
    for (int i = 0; i < n; i++) {
        int32_t src = pairs[2 * i], dst = pairs[2 * i + 1];
        if (src < 0 || dst < 0 || src >= pp->num_blocks || dst >= pp->num_blocks)
            return duel_error_set(err, DUEL_EINVAL, "reference backend: copy %d -> %d", src, dst);
        for (int l = 0; l < pp->num_layers; l++) {
            memcpy(kv_pool_block_keys(r->storage, l, dst), kv_pool_block_keys(r->storage, l, src),
                   tile * sizeof(float));
            memcpy(kv_pool_block_values(r->storage, l, dst),
                   kv_pool_block_values(r->storage, l, src), tile * sizeof(float));
        }
    }
    return DUEL_OK;
}

static int ref_arm_load(compute_backend *b, model *m, compute_arm **out, duel_error *err) {
    (void)b;
    compute_arm *a = calloc(1, sizeof *a);
    if (!a) return duel_error_set(err, DUEL_ENOMEM, "reference backend: out of memory");
    a->model = m;
    *out = a;
    return DUEL_OK;
}

static void ref_arm_unload(compute_backend *b, compute_arm *arm) {
    (void)b;
    free(arm);
}

static int ref_step_begin(compute_backend *b, int rows, int vocab, duel_error *err) {
    return compute_host_logits_begin(&((reference_backend *)b)->logits, rows, vocab, err);
}

static int ref_forward(compute_backend *b, compute_arm *arm, kv_pool *pool,
                       const compute_entry *entries, int n, duel_error *err) {
    reference_backend *r = (reference_backend *)b;
    (void)pool;
    if (!r->storage) return duel_error_set(err, DUEL_EINVAL, "reference backend: no pool");
    size_t V = (size_t)model_output_size(arm->model);
    if (V > r->row_floats) {
        float *grown = realloc(r->row, V * sizeof *grown);
        if (!grown) return duel_error_set(err, DUEL_ENOMEM, "reference backend: out of memory");
        r->row = grown;
        r->row_floats = V;
    }
    for (int i = 0; i < n; i++) {
        const compute_entry *e = &entries[i];
        float *dst = NULL;
        if (e->logits_row >= 0) {
            dst = compute_host_logits_row(&r->logits, e->logits_row);
            if (!dst || (int)V > r->logits.stride)
                return duel_error_set(err, DUEL_EINVAL,
                                      "reference backend: entry %d: logits row %d of %d", i,
                                      e->logits_row, r->logits.rows);
        }
        model_batch_entry one = {.seq = e->seq,
                                 .tokens = e->tokens,
                                 .n_tokens = e->n_tokens,
                                 .start = e->start,
                                 .logits = dst ? r->row : NULL,
                                 .hidden_last = e->hidden_last,
                                 .targets = e->targets,
                                 .target_logprob = e->target_logprob};
        int rc = model_forward_batch(arm->model, r->storage, &one, 1, err);
        if (rc) return rc;
        if (dst) memcpy(dst, r->row, V * sizeof *dst);
    }
    return DUEL_OK;
}

static int ref_sample(compute_backend *b, compute_sample *samples, int n, duel_error *err) {
    return compute_host_logits_sample(&((reference_backend *)b)->logits, samples, n, err);
}

static int ref_read_logits(compute_backend *b, int row, float *out, duel_error *err) {
    return compute_host_logits_read(&((reference_backend *)b)->logits, row, out, err);
}

static const compute_ops reference_ops = {
    .name = "reference",
    .destroy = ref_destroy,
    .pool_prepare = ref_pool_prepare,
    .pool_attach = ref_pool_attach,
    .pool_detach = ref_pool_detach,
    .copy_blocks = ref_copy_blocks,
    .arm_load = ref_arm_load,
    .arm_unload = ref_arm_unload,
    .step_begin = ref_step_begin,
    .forward = ref_forward,
    .sample = ref_sample,
    .read_logits = ref_read_logits,
    .erm_load = compute_host_erm_load,
    .erm_unload = compute_host_erm_unload,
    .erm_score = compute_host_erm_score,
};

static int ref_create(compute_backend **out, duel_error *err) {
    reference_backend *r = calloc(1, sizeof *r);
    if (!r) return duel_error_set(err, DUEL_ENOMEM, "reference backend: out of memory");
    r->base.ops = &reference_ops;
    *out = &r->base;
    return DUEL_OK;
}

static int ref_probe(char *why, size_t cap) {
    (void)why, (void)cap;
    return 1;
}

static const compute_provider reference_provider = {"reference", false, ref_probe, ref_create};

const compute_provider *compute_reference_provider(void) { return &reference_provider; }
