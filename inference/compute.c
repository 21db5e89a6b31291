/* compute.c: choosing a compute backend by name (compute.h) and the checked calls the engine and
 * the scheduler make through a backend's table, plus the host-logits helper that the CPU backend
 * and the test doubles share (one home for "a step's logits in host memory, sampled with
 * sampler_sample").
 *
 * Invariant: every compute_* call checks its arguments before the backend sees them, so a
 * backend's operation may assume non-NULL pointers and rows in range. */
#include "compute.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"

#define COMPUTE_COPY_CHUNK 256 /* copy-on-write pairs handed to the backend per call */

static const compute_provider *find_provider(const char *name,
                                             const compute_provider *const *providers, int n) {
    if (strcmp(name, "cpu") == 0) return compute_cpu_provider();
    for (int i = 0; i < n; i++)
        if (providers[i] && strcmp(providers[i]->name, name) == 0) return providers[i];
    return NULL;
}

bool compute_name_known(const char *name, const compute_provider *const *providers,
                        int n_providers) {
    return name && (strcmp(name, "auto") == 0 || find_provider(name, providers, n_providers));
}

static int create_from(const compute_provider *p, compute_backend **out, char *chosen,
                       duel_error *err) {
    int rc = p->create(out, err);
    if (rc) {
        if (err) duel_error_prefix(err, "compute backend %s", p->name);
        return rc;
    }
    if (chosen) snprintf(chosen, COMPUTE_MAX_NAME, "%s", p->name);
    return DUEL_OK;
}

int compute_open(const char *name, const compute_provider *const *providers, int n_providers,
                 compute_backend **out, char *chosen, duel_error *err) {
    if (!out) return duel_error_set(err, DUEL_EINVAL, "compute_open: no output pointer");
    *out = NULL;
    if (!name) name = "cpu";
    if (n_providers < 0 || (n_providers && !providers))
        return duel_error_set(err, DUEL_EINVAL, "compute_open: bad provider list");
    if (strcmp(name, "auto") == 0) {
        for (int i = 0; i < n_providers; i++) {
            const compute_provider *p = providers[i];
            if (!p || !p->device) continue;
            char why[256] = "";
            if (p->probe(why, sizeof why) == 1) return create_from(p, out, chosen, err);
        }
        return create_from(compute_cpu_provider(), out, chosen, err);
    }
    const compute_provider *p = find_provider(name, providers, n_providers);
    if (!p) {
        char known[256] = "auto, cpu";
        for (int i = 0; i < n_providers; i++) {
            if (!providers[i]) continue;
            size_t len = strlen(known);
            snprintf(known + len, sizeof known - len, ", %s", providers[i]->name);
        }
        return duel_error_set(err, DUEL_EINVAL,
                              "engine.backend \"%s\" is not a compute backend of this program "
                              "(%s)%s",
                              name, known,
                              strcmp(name, "cuda") == 0 ? "; it was built without CUDA" : "");
    }
    if (p->device && p->probe) {
        char why[256] = "";
        int found = p->probe(why, sizeof why);
        if (found != 1)
            return duel_error_set(err, DUEL_EDEVICE, "engine.backend %s: no device (%s)", name,
                                  why[0] ? why : "the probe found none");
    }
    return create_from(p, out, chosen, err);
}

void compute_destroy(compute_backend *b) {
    if (b) b->ops->destroy(b);
}

const char *compute_name(const compute_backend *b) { return b ? b->ops->name : "none"; }

int compute_pool_prepare(compute_backend *b, kv_pool_params *params, duel_error *err) {
    if (!b || !params) return duel_error_set(err, DUEL_EINVAL, "compute_pool_prepare: NULL");
    return b->ops->pool_prepare(b, params, err);
}

int compute_pool_attach(compute_backend *b, kv_pool *pool, duel_error *err) {
    if (!b || !pool) return duel_error_set(err, DUEL_EINVAL, "compute_pool_attach: NULL");
    return b->ops->pool_attach(b, pool, err);
}

void compute_pool_detach(compute_backend *b, kv_pool *pool) {
    if (b && pool) b->ops->pool_detach(b, pool);
}

int compute_copy_pending(compute_backend *b, kv_pool *pool, duel_error *err) {
    if (!b || !pool) return duel_error_set(err, DUEL_EINVAL, "compute_copy_pending: NULL");
    int32_t pairs[2 * COMPUTE_COPY_CHUNK];
    for (int n; (n = kv_pool_take_copies(pool, pairs, COMPUTE_COPY_CHUNK)) > 0;) {
        int rc = b->ops->copy_blocks(b, pool, pairs, n, err);
        if (rc) return rc;
    }
    return DUEL_OK;
}

int compute_arm_load(compute_backend *b, model *m, compute_arm **out, duel_error *err) {
    if (out) *out = NULL;
    if (!b || !m || !out) return duel_error_set(err, DUEL_EINVAL, "compute_arm_load: NULL");
    return b->ops->arm_load(b, m, out, err);
}

void compute_arm_unload(compute_backend *b, compute_arm *arm) {
    if (b && arm) b->ops->arm_unload(b, arm);
}

int compute_step_begin(compute_backend *b, int rows, int vocab, duel_error *err) {
    if (!b) return duel_error_set(err, DUEL_EINVAL, "compute_step_begin: NULL");
    if (rows < 0 || vocab < 1)
        return duel_error_set(err, DUEL_EINVAL, "compute_step_begin: %d rows of %d", rows, vocab);
    return b->ops->step_begin(b, rows, vocab, err);
}

int compute_forward(compute_backend *b, compute_arm *arm, kv_pool *pool,
                    const compute_entry *entries, int n, duel_error *err) {
    if (!b || !arm || !pool || n < 0 || (n && !entries))
        return duel_error_set(err, DUEL_EINVAL, "compute_forward: NULL argument or %d entries",
                              n);
    if (n == 0) return DUEL_OK;
    return b->ops->forward(b, arm, pool, entries, n, err);
}

int compute_sample_rows(compute_backend *b, compute_sample *samples, int n, duel_error *err) {
    if (!b || n < 0 || (n && !samples))
        return duel_error_set(err, DUEL_EINVAL, "compute_sample_rows: NULL argument");
    for (int i = 0; i < n; i++) {
        const compute_sample *s = &samples[i];
        if (s->logits_row < 0 || s->vocab < 1 || s->forced >= s->vocab ||
            (s->forced < 0 && (!s->params || (s->params->temperature > 0 && !s->rng))))
            return duel_error_set(err, DUEL_EINVAL,
                                  "compute_sample_rows: sample %d (row %d, vocab %d, forced %d) "
                                  "is malformed",
                                  i, s->logits_row, s->vocab, (int)s->forced);
    }
    if (n == 0) return DUEL_OK;
    return b->ops->sample(b, samples, n, err);
}

int compute_read_logits(compute_backend *b, int row, float *out, duel_error *err) {
    if (!b || !out || row < 0)
        return duel_error_set(err, DUEL_EINVAL, "compute_read_logits: bad argument (row %d)", row);
    return b->ops->read_logits(b, row, out, err);
}

int compute_erm_load(compute_backend *b, const erm *model, compute_erm **out, duel_error *err) {
    if (out) *out = NULL;
    if (!b || !model || !out) return duel_error_set(err, DUEL_EINVAL, "compute_erm_load: NULL");
    return b->ops->erm_load(b, model, out, err);
}

void compute_erm_unload(compute_backend *b, compute_erm *e) {
    if (b && e) b->ops->erm_unload(b, e);
}

int compute_erm_score(compute_backend *b, compute_erm *e, const float *features, int M,
                      float *rewards, duel_error *err) {
    if (!b || !e || !features || !rewards || M < 1)
        return duel_error_set(err, DUEL_EINVAL, "compute_erm_score: bad argument (M %d)", M);
    return b->ops->erm_score(b, e, features, M, rewards, err);
}

/* ---- host logits -------------------------------------------------------------------------- */

int compute_host_logits_begin(compute_host_logits *h, int rows, int vocab, duel_error *err) {
    size_t need = (size_t)rows * (size_t)vocab;
    if (need > h->capacity) {
        float *grown = realloc(h->data, need * sizeof *grown);
        if (!grown) return duel_error_set(err, DUEL_ENOMEM, "out of memory for %d logit rows", rows);
        h->data = grown;
        h->capacity = need;
    }
    h->rows = rows;
    h->stride = vocab;
    return DUEL_OK;
}

float *compute_host_logits_row(compute_host_logits *h, int r) {
    if (r < 0 || r >= h->rows) return NULL;
    return h->data + (size_t)r * (size_t)h->stride;
}

int compute_host_logits_sample(compute_host_logits *h, compute_sample *samples, int n,
                               duel_error *err) {
    for (int i = 0; i < n; i++) {
        compute_sample *s = &samples[i];
        const float *row = compute_host_logits_row(h, s->logits_row);
        if (!row || s->vocab > h->stride)
            return duel_error_set(err, DUEL_EINVAL, "sample %d: row %d of %d (vocab %d of %d)", i,
                                  s->logits_row, h->rows, s->vocab, h->stride);
        s->status = 0;
        if (s->forced >= 0) {
            s->token = s->forced;
            s->logprob = (double)row[s->forced] - cpu_log_sum_exp(row, s->vocab);
            continue;
        }
        float lp = 0;
        duel_error row_err = {0};
        int32_t tok = sampler_sample(row, s->vocab, s->params, s->rng, &lp, &row_err);
        if (tok < 0) {
            s->status = tok;
            s->token = -1;
            if (err) *err = row_err; /* the last failing row's message */
            continue;
        }
        s->token = tok;
        s->logprob = lp;
    }
    return DUEL_OK;
}

int compute_host_logits_read(compute_host_logits *h, int row, float *out, duel_error *err) {
    const float *r = compute_host_logits_row(h, row);
    if (!r) return duel_error_set(err, DUEL_EINVAL, "read_logits: row %d of %d", row, h->rows);
    memcpy(out, r, (size_t)h->stride * sizeof *out);
    return DUEL_OK;
}

void compute_host_logits_free(compute_host_logits *h) {
    free(h->data);
    memset(h, 0, sizeof *h);
}

/* ---- host ERM ----------------------------------------------------------------------------- */

struct compute_erm {
    const erm *model; /* borrowed */
};

int compute_host_erm_load(compute_backend *b, const erm *model, compute_erm **out,
                          duel_error *err) {
    (void)b;
    compute_erm *e = calloc(1, sizeof *e);
    if (!e) return duel_error_set(err, DUEL_ENOMEM, "%s backend: out of memory", compute_name(b));
    e->model = model;
    *out = e;
    return DUEL_OK;
}

void compute_host_erm_unload(compute_backend *b, compute_erm *e) {
    (void)b;
    free(e);
}

int compute_host_erm_score(compute_backend *b, compute_erm *e, const float *features, int M,
                           float *rewards, duel_error *err) {
    (void)b;
    return erm_score(e->model, features, M, rewards, err);
}
