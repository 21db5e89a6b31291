/* scheduler.c: continuous batching over the paged KV pool (see scheduler.h for the policy).
 *
 * Ownership: the scheduler owns its requests and their sequences (sched_seq, each embedding a
 * kv_sequence). A sequence is in exactly one place: the running list (holds blocks), the waiting
 * list (holds none; to be admitted), or finished (holds none, in no list) until its request
 * ends. Both lists are kept sorted by age, oldest first. All list capacities are grown at submit,
 * so that moving a sequence between lists never allocates in the middle of a step.
 *
 * A step's plan lives in sched_seq.step_count (tokens in this step's batch); preempting a planned
 * sequence zeroes it and gives its tokens back to the budget, and the batch is built from the
 * running list only after planning, so a preempted sequence can never be run.
 *
 * Sampling: after the step's forwards and commits, every sequence whose piece reached its end
 * gets one job (a prompt's end: one per candidate forked from it, all reading the prompt's logits
 * row); the jobs without a logits step are drawn in one compute_sample_rows call, the others read
 * their rows back and sample on the host; then each job's token is applied in job order, so a
 * request's PROGRESS lists its candidates in the order they were sampled.
 *
 * A scoring request's candidates (forced tokens) take their tokens at the prompt's end (the
 * first one's log-probability is a forced sample of the prompt's row), then run the rest as
 * pieces whose rows carry targets: position p's row scores token p + 1 when p >= prompt_len and
 * p >= max_computed (a position computed before a preemption was scored then), so each token is
 * scored exactly once; the candidate finishes when its last token has run (its hidden state).
 *
 * A candidate of a request with a lockstep reference model has a second kv_sequence (ref_kv).
 * Invariant: while the candidate is not finishing, ref_kv holds exactly the positions kv holds
 * (a waiting candidate: neither holds any), because both attach the same number of cached
 * positions at admission and every step reserves, runs and commits the same piece on both
 * (step_ref). A finishing candidate (its last token's hidden state still to run) needs no more
 * reference logits, so only kv runs then. */
#include "scheduler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "timer.h"

#define SCHED_AGE_CANDIDATE_BITS 11 /* age = arrival << 11 | candidate (M <= 1024) */

typedef struct sched_request sched_request;

typedef struct sched_seq {
    sched_request *req;
    int candidate;
    uint64_t age;
    int32_t *tokens;    /* prompt then generated; capacity req->max_total */
    int n_tokens;
    kv_sequence kv;
    kv_sequence ref_kv; /* the lockstep reference model's (req->p.use_ref_model) */
    duel_rng rng;
    double logprob_sum;
    bool running;       /* in s->running, holds blocks */
    bool finished;
    bool finishing;     /* last token sampled; runs it once more for the hidden state */
    bool to_finish;     /* finish at the end of this step */
    sched_finish_reason reason;
    int step_count;     /* tokens of this step's batch (0: not in it) */
    bool step_ref;      /* the piece also runs on ref_kv this step (it costs 2 x step_count) */
    int batch_slot;     /* its row of the step's logits */
    int max_computed;   /* positions below this were computed before (recomputes count so) */
    float *hidden;      /* hidden_size floats (want_hidden) */
    double finish_time;
    int32_t *targets;   /* scoring: one piece's targets (capacity req->max_total) */
    double piece_logprob; /* scoring: the piece's summed target log-probabilities */
    bool step_scored;   /* scoring: this step's piece carries targets */
    bool fork_job;      /* forked this step: its first token is one of the step's jobs */
} sched_seq;

struct sched_request {
    uint64_t id;
    sched_request_params p;  /* prompt and stop_tokens point at the copies below */
    int32_t *prompt;
    int32_t stop[SCHED_MAX_STOP_TOKENS];
    int32_t **forced;        /* scoring: [M] copies of the candidates' tokens; else NULL */
    int *forced_counts;
    int max_total;           /* tokens a candidate can reach: min(prompt + max_new, context) */
    int context;             /* the model's context (the smaller of the two with a reference) */
    uint64_t arrival;
    sched_seq **seqs;        /* [M]; 1..M-1 are NULL until the prompt is done */
    int n_seqs, n_done;
    bool prompt_done, first_admitted;
    int fail_code;           /* nonzero: fail at the end of the step */
    char fail_message[DUEL_ERROR_MESSAGE_MAX];
    float *prompt_hidden;
    sched_request_stats stats;
    int progress_count;
    int32_t *progress_candidates, *progress_tokens; /* [M] each */
};

struct scheduler {
    sched_params params;
    kv_pool *pool;
    int block_size;
    sched_model_info models[SCHED_MAX_MODELS];
    int n_models;
    compute_backend *backend;

    sched_request **reqs; /* active, sorted by id */
    int n_reqs, cap_reqs;
    sched_seq **running, **waiting;
    int n_running, n_waiting;
    int cap_seqs;         /* capacity of running, waiting, batch and completed */
    int total_seqs;       /* of active requests (created or to be) */
    uint64_t next_id, next_arrival;
    sched_stats stats;

    /* Step scratch (capacities: cap_seqs; entries 2 x cap_seqs). */
    sched_seq **batch, **completed;
    compute_entry *entries;
    sched_seq **job_seq;      /* the step's sampling jobs, in order */
    int *job_sample;          /* index into samples, or -1 for a job sampled on the host */
    compute_sample *samples;
    /* max_vocab floats each: a logits step's inputs (read back) and output */
    float *host_logits, *host_ref_logits, *stepped;
    int stepped_floats;
    int max_vocab;
};

/* ---- lists -------------------------------------------------------------------------------- */

static void list_insert(sched_seq **list, int *n, sched_seq *q) {
    int i = *n;
    while (i > 0 && list[i - 1]->age > q->age) {
        list[i] = list[i - 1];
        i--;
    }
    list[i] = q;
    (*n)++;
}

static void list_remove(sched_seq **list, int *n, const sched_seq *q) {
    for (int i = *n - 1; i >= 0; i--)
        if (list[i] == q) {
            memmove(list + i, list + i + 1, (size_t)(*n - i - 1) * sizeof *list);
            (*n)--;
            return;
        }
}

static int find_request(const scheduler *s, uint64_t id) {
    int lo = 0, hi = s->n_reqs - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (s->reqs[mid]->id == id) return mid;
        if (s->reqs[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* ---- create / destroy --------------------------------------------------------------------- */

int sched_create(const sched_params *params, kv_pool *pool, const sched_model_info *models,
                 int n_models, compute_backend *backend, scheduler **out, duel_error *err) {
    if (out) *out = NULL;
    if (!pool || !models || !backend || !out)
        return duel_error_set(err, DUEL_EINVAL, "sched_create: NULL argument");
    if (n_models < 1 || n_models > SCHED_MAX_MODELS)
        return duel_error_set(err, DUEL_EINVAL, "sched_create: %d models (1 to %d)", n_models,
                              SCHED_MAX_MODELS);
    sched_params p = params ? *params : (sched_params){0};
    if (p.max_batch_tokens == 0) p.max_batch_tokens = SCHED_DEFAULT_BATCH_TOKENS;
    if (p.max_running == 0) p.max_running = SCHED_DEFAULT_MAX_RUNNING;
    if (p.max_candidates == 0) p.max_candidates = SCHED_MAX_CANDIDATES;
    if (p.max_batch_tokens < 1 || p.max_running < 1 || p.max_candidates < 1 ||
        p.max_candidates > SCHED_MAX_CANDIDATES)
        return duel_error_set(err, DUEL_EINVAL,
                              "sched_create: max_batch_tokens %d, max_running %d and "
                              "max_candidates %d must be positive (max_candidates <= %d)",
                              p.max_batch_tokens, p.max_running, p.max_candidates,
                              SCHED_MAX_CANDIDATES);
    for (int i = 0; i < n_models; i++) {
        const sched_model_info *m = &models[i];
        if (!m->arm || m->vocab_size < 1 || m->hidden_size < 1 || m->max_context < 2)
            return duel_error_set(err, DUEL_EINVAL,
                                  "sched_create: model %d: arm %s, vocab %d, hidden %d, context %d",
                                  i, m->arm ? "loaded" : "missing", m->vocab_size, m->hidden_size,
                                  m->max_context);
        for (int j = 0; j < i; j++)
            if (models[j].model_id == m->model_id)
                return duel_error_set(err, DUEL_EINVAL,
                                      "sched_create: models %d and %d share model id %llu", j, i,
                                      (unsigned long long)m->model_id);
    }
    scheduler *s = calloc(1, sizeof *s);
    if (!s) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    s->params = p;
    s->pool = pool;
    s->block_size = kv_pool_block_size(pool);
    memcpy(s->models, models, (size_t)n_models * sizeof *models);
    s->n_models = n_models;
    s->backend = backend;
    s->next_id = 1;
    s->next_arrival = 1; /* 0 in sched_request_params.arrival means "now" */
    for (int i = 0; i < n_models; i++)
        if (models[i].vocab_size > s->max_vocab) s->max_vocab = models[i].vocab_size;
    *out = s;
    return DUEL_OK;
}

int sched_set_model(scheduler *s, int index, const sched_model_info *info, duel_error *err) {
    if (!s || !info) return duel_error_set(err, DUEL_EINVAL, "sched_set_model: NULL argument");
    if (index < 0 || index > s->n_models || index >= SCHED_MAX_MODELS)
        return duel_error_set(err, DUEL_EINVAL, "sched_set_model: index %d (0 to %d)", index,
                              s->n_models < SCHED_MAX_MODELS ? s->n_models : SCHED_MAX_MODELS - 1);
    if (!info->arm || info->vocab_size < 1 || info->hidden_size < 1 || info->max_context < 2)
        return duel_error_set(err, DUEL_EINVAL,
                              "sched_set_model: arm %s, vocab %d, hidden %d, context %d",
                              info->arm ? "loaded" : "missing", info->vocab_size,
                              info->hidden_size, info->max_context);
    for (int i = 0; i < s->n_models; i++)
        if (i != index && s->models[i].model_id == info->model_id)
            return duel_error_set(err, DUEL_EINVAL, "sched_set_model: model id %llu is model %d's",
                                  (unsigned long long)info->model_id, i);
    for (int i = 0; i < s->n_reqs; i++)
        if (s->reqs[i]->p.model == index ||
            (s->reqs[i]->p.use_ref_model && s->reqs[i]->p.ref_model == index))
            return duel_error_set(err, DUEL_EINVAL,
                                  "sched_set_model: request %llu still uses model %d",
                                  (unsigned long long)s->reqs[i]->id, index);
    s->models[index] = *info;
    if (index == s->n_models) s->n_models++;
    if (info->vocab_size > s->max_vocab) s->max_vocab = info->vocab_size;
    return DUEL_OK;
}

static void seq_free(scheduler *s, sched_seq *q) {
    if (!q) return;
    kv_sequence_free(s->pool, &q->kv);
    kv_sequence_destroy(&q->kv);
    kv_sequence_free(s->pool, &q->ref_kv);
    free(q->tokens);
    free(q->hidden);
    free(q->targets);
    free(q);
}

static void request_free(scheduler *s, sched_request *r) {
    for (int i = 0; i < r->n_seqs; i++) seq_free(s, r->seqs[i]);
    free(r->seqs);
    free(r->prompt);
    if (r->forced)
        for (int i = 0; i < r->p.num_candidates; i++) free(r->forced[i]);
    free(r->forced);
    free(r->forced_counts);
    free(r->prompt_hidden);
    free(r->progress_candidates);
    free(r->progress_tokens);
    free(r);
}

void sched_destroy(scheduler *s) {
    if (!s) return;
    for (int i = 0; i < s->n_reqs; i++) request_free(s, s->reqs[i]);
    free(s->reqs);
    free(s->running);
    free(s->waiting);
    free(s->batch);
    free(s->completed);
    free(s->entries);
    free(s->job_seq);
    free(s->job_sample);
    free(s->samples);
    free(s->host_logits);
    free(s->host_ref_logits);
    free(s->stepped);
    free(s);
}

/* ---- submit ------------------------------------------------------------------------------- */

static int grow_ptrs(void **arr, int need, size_t elem, duel_error *err) {
    void *p = realloc(*arr, (size_t)need * elem);
    if (!p) return duel_error_set(err, DUEL_ENOMEM, "out of memory for scheduler lists");
    *arr = p;
    return DUEL_OK;
}

/* Makes room for `more` sequences in every per-sequence list and one more request. */
static int reserve_capacity(scheduler *s, int more, duel_error *err) {
    if (s->n_reqs + 1 > s->cap_reqs) {
        int cap = s->cap_reqs ? s->cap_reqs * 2 : 16;
        if (grow_ptrs((void **)&s->reqs, cap, sizeof *s->reqs, err)) return DUEL_ENOMEM;
        s->cap_reqs = cap;
    }
    int need = s->total_seqs + more;
    if (need > s->cap_seqs) {
        int cap = s->cap_seqs * 2 > need ? s->cap_seqs * 2 : need;
        if (grow_ptrs((void **)&s->running, cap, sizeof *s->running, err) ||
            grow_ptrs((void **)&s->waiting, cap, sizeof *s->waiting, err) ||
            grow_ptrs((void **)&s->batch, cap, sizeof *s->batch, err) ||
            grow_ptrs((void **)&s->completed, cap, sizeof *s->completed, err) ||
            grow_ptrs((void **)&s->entries, 2 * cap, sizeof *s->entries, err) ||
            grow_ptrs((void **)&s->job_seq, cap, sizeof *s->job_seq, err) ||
            grow_ptrs((void **)&s->job_sample, cap, sizeof *s->job_sample, err) ||
            grow_ptrs((void **)&s->samples, cap, sizeof *s->samples, err))
            return DUEL_ENOMEM;
        s->cap_seqs = cap;
    }
    return DUEL_OK;
}

static sched_seq *seq_new(sched_request *r, int candidate, int hidden_size) {
    sched_seq *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->tokens = malloc((size_t)r->max_total * sizeof *q->tokens);
    q->hidden = r->p.want_hidden ? malloc((size_t)hidden_size * sizeof *q->hidden) : NULL;
    q->targets = r->forced ? malloc((size_t)r->max_total * sizeof *q->targets) : NULL;
    if (!q->tokens || (r->p.want_hidden && !q->hidden) || (r->forced && !q->targets)) {
        free(q->tokens);
        free(q->hidden);
        free(q->targets);
        free(q);
        return NULL;
    }
    q->req = r;
    q->candidate = candidate;
    q->age = (r->arrival << SCHED_AGE_CANDIDATE_BITS) | (uint64_t)candidate;
    duel_rng_seed(&q->rng, r->p.seed + (uint64_t)candidate);
    kv_sequence_init(&q->kv, 0);
    kv_sequence_init(&q->ref_kv, 0);
    return q;
}

/* The context a candidate of p ends at: its model's, or the smaller of the two with a lockstep
 * reference (whose index is checked first). */
static int request_context(const scheduler *s, const sched_request_params *p) {
    int ctx = s->models[p->model].max_context;
    if (p->use_ref_model && s->models[p->ref_model].max_context < ctx)
        ctx = s->models[p->ref_model].max_context;
    return ctx;
}

/* The longest forced candidate of a scoring request (0 for others). */
static int forced_longest(const sched_request_params *p) {
    int longest = 0;
    for (int i = 0; p->forced && i < p->num_candidates; i++)
        if (p->forced_counts[i] > longest) longest = p->forced_counts[i];
    return longest;
}

/* Tokens one candidate of p can reach: min(prompt + max_new, context); a scoring request's
 * prompt + its longest forced candidate (validated to fit the context). */
static int64_t request_max_total(const scheduler *s, const sched_request_params *p) {
    if (p->forced) return (int64_t)p->prompt_len + forced_longest(p);
    int64_t total = (int64_t)p->prompt_len + p->max_new_tokens;
    int ctx = request_context(s, p);
    return total > ctx ? ctx : total;
}

int sched_validate(const scheduler *s, const sched_request_params *params, duel_error *err) {
    if (!s || !params) return duel_error_set(err, DUEL_EINVAL, "sched_validate: NULL argument");
    const sched_request_params *p = params;
    if (p->model < 0 || p->model >= s->n_models)
        return duel_error_set(err, DUEL_EINVAL, "unknown model index %d (%d models resident)",
                              p->model, s->n_models);
    const sched_model_info *mi = &s->models[p->model];
    if (p->use_ref_model) {
        if (p->ref_model < 0 || p->ref_model >= s->n_models)
            return duel_error_set(err, DUEL_EINVAL,
                                  "unknown reference model index %d (%d models resident)",
                                  p->ref_model, s->n_models);
        const sched_model_info *ri = &s->models[p->ref_model];
        if (ri->vocab_size != mi->vocab_size)
            return duel_error_set(err, DUEL_EINVAL,
                                  "the reference model has %d logits, the model %d (a lockstep "
                                  "reference needs the same vocabulary)",
                                  ri->vocab_size, mi->vocab_size);
        if (!p->logits_step)
            return duel_error_set(err, DUEL_EINVAL,
                                  "a lockstep reference model needs a logits step");
        if (p->prompt_len >= ri->max_context)
            return duel_error_set(err, DUEL_ELIMIT,
                                  "prompt of %d tokens does not fit the reference model's "
                                  "context of %d tokens (at most %d)",
                                  p->prompt_len, ri->max_context, ri->max_context - 1);
    }
    if (!p->prompt || p->prompt_len < 1)
        return duel_error_set(err, DUEL_EINVAL, "empty prompt (at least one token is needed)");
    if (p->prompt_len >= mi->max_context)
        return duel_error_set(err, DUEL_ELIMIT,
                              "prompt of %d tokens does not fit the model's context of %d "
                              "tokens (at most %d, leaving room for one generated token)",
                              p->prompt_len, mi->max_context, mi->max_context - 1);
    for (int i = 0; i < p->prompt_len; i++)
        if (p->prompt[i] < 0 || p->prompt[i] >= mi->vocab_size)
            return duel_error_set(err, DUEL_EINVAL,
                                  "prompt token %d (id %d) is outside the vocabulary of %d", i,
                                  (int)p->prompt[i], mi->vocab_size);
    if (p->num_candidates < 1 || p->num_candidates > s->params.max_candidates)
        return duel_error_set(err, DUEL_EINVAL, "M = %d candidates is outside 1..%d",
                              p->num_candidates, s->params.max_candidates);
    if (p->max_new_tokens < 1)
        return duel_error_set(err, DUEL_EINVAL, "max_new_tokens = %d (at least 1)",
                              p->max_new_tokens);
    int rc = sampler_params_validate(&p->sampling, err);
    if (rc) return rc;
    if (p->num_stop_tokens < 0 || p->num_stop_tokens > SCHED_MAX_STOP_TOKENS ||
        (p->num_stop_tokens && !p->stop_tokens))
        return duel_error_set(err, DUEL_EINVAL, "%d stop tokens (0 to %d)", p->num_stop_tokens,
                              SCHED_MAX_STOP_TOKENS);
    for (int i = 0; i < p->num_stop_tokens; i++)
        if (p->stop_tokens[i] < 0 || p->stop_tokens[i] >= mi->vocab_size)
            return duel_error_set(err, DUEL_EINVAL, "stop token id %d is outside the vocabulary",
                                  (int)p->stop_tokens[i]);
    if (p->forced || p->forced_counts) {
        if (!p->forced || !p->forced_counts)
            return duel_error_set(err, DUEL_EINVAL, "forced tokens need both tokens and counts");
        if (p->use_ref_model || p->logits_step)
            return duel_error_set(err, DUEL_EINVAL,
                                  "a scoring request (forced tokens) takes no lockstep reference "
                                  "or logits step");
        for (int i = 0; i < p->num_candidates; i++) {
            int n = p->forced_counts[i];
            if (!p->forced[i] || n < 1)
                return duel_error_set(err, DUEL_EINVAL, "forced candidate %d has no tokens", i);
            if ((int64_t)p->prompt_len + n > mi->max_context)
                return duel_error_set(err, DUEL_ELIMIT,
                                      "prompt + candidate %d of %lld tokens exceed the model's "
                                      "context of %d",
                                      i, (long long)p->prompt_len + n, mi->max_context);
            for (int t = 0; t < n; t++)
                if (p->forced[i][t] < 0 || p->forced[i][t] >= mi->vocab_size)
                    return duel_error_set(err, DUEL_EINVAL,
                                          "forced candidate %d: token %d (id %d) is outside the "
                                          "vocabulary of %d",
                                          i, t, (int)p->forced[i][t], mi->vocab_size);
        }
    }
    int64_t total = request_max_total(s, p);
    int64_t blocks = (total + s->block_size - 1) / s->block_size * (p->use_ref_model ? 2 : 1);
    if (blocks > kv_pool_num_blocks(s->pool))
        return duel_error_set(err, DUEL_ELIMIT,
                              "a candidate of up to %lld tokens needs %lld KV blocks%s, more "
                              "than the pool's %d (raise the KV memory budget or lower "
                              "max_new_tokens)",
                              (long long)total, (long long)blocks,
                              p->use_ref_model ? " with its reference sequence" : "",
                              kv_pool_num_blocks(s->pool));
    return DUEL_OK;
}

int sched_submit(scheduler *s, const sched_request_params *params, uint64_t *id,
                 duel_error *err) {
    if (id) *id = 0;
    if (!s || !params || !id) return duel_error_set(err, DUEL_EINVAL, "sched_submit: NULL argument");
    const sched_request_params *p = params;
    int rc = sched_validate(s, p, err);
    if (rc) return rc;
    if (p->arrival >= s->next_arrival && p->arrival != 0)
        return duel_error_set(err, DUEL_EINVAL, "arrival %llu has not been issued yet",
                              (unsigned long long)p->arrival);
    const sched_model_info *mi = &s->models[p->model];
    int64_t total = request_max_total(s, p);
    if ((rc = reserve_capacity(s, p->num_candidates, err))) return rc;

    sched_request *r = calloc(1, sizeof *r);
    if (!r) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    int M = p->num_candidates;
    r->p = *p;
    r->p.forced = NULL; /* the copies below are in r->forced */
    r->p.forced_counts = NULL;
    r->max_total = (int)total;
    r->context = request_context(s, p);
    r->prompt = malloc((size_t)p->prompt_len * sizeof *r->prompt);
    r->seqs = calloc((size_t)M, sizeof *r->seqs);
    r->progress_candidates = malloc((size_t)M * sizeof *r->progress_candidates);
    r->progress_tokens = malloc((size_t)M * sizeof *r->progress_tokens);
    r->prompt_hidden = p->want_hidden ? malloc((size_t)mi->hidden_size * sizeof(float)) : NULL;
    if (!r->prompt || !r->seqs || !r->progress_candidates || !r->progress_tokens ||
        (p->want_hidden && !r->prompt_hidden)) {
        request_free(s, r);
        return duel_error_set(err, DUEL_ENOMEM, "out of memory for a request");
    }
    memcpy(r->prompt, p->prompt, (size_t)p->prompt_len * sizeof *r->prompt);
    if (p->forced) {
        r->forced = calloc((size_t)M, sizeof *r->forced);
        r->forced_counts = malloc((size_t)M * sizeof *r->forced_counts);
        for (int i = 0; r->forced && r->forced_counts && i < M; i++) {
            r->forced_counts[i] = p->forced_counts[i];
            r->forced[i] = malloc((size_t)p->forced_counts[i] * sizeof *r->forced[i]);
            if (!r->forced[i]) break;
            memcpy(r->forced[i], p->forced[i], (size_t)p->forced_counts[i] * sizeof *r->forced[i]);
        }
        if (!r->forced || !r->forced_counts || !r->forced[M - 1]) {
            request_free(s, r);
            return duel_error_set(err, DUEL_ENOMEM, "out of memory for forced tokens");
        }
    }
    if (p->num_stop_tokens)
        memcpy(r->stop, p->stop_tokens, (size_t)p->num_stop_tokens * sizeof *r->stop);
    r->p.prompt = r->prompt;
    r->p.stop_tokens = r->stop;
    r->id = s->next_id;
    r->arrival = p->arrival ? p->arrival : s->next_arrival;
    r->stats.arrival = r->arrival;
    r->stats.prompt_tokens = p->prompt_len;
    r->stats.submit_time = p->submit_time > 0 ? p->submit_time : duel_time_seconds();
    sched_seq *q = seq_new(r, 0, mi->hidden_size);
    if (!q) {
        request_free(s, r);
        return duel_error_set(err, DUEL_ENOMEM, "out of memory for a sequence");
    }
    q->kv.model_id = mi->model_id;
    if (p->use_ref_model) q->ref_kv.model_id = s->models[p->ref_model].model_id;
    memcpy(q->tokens, r->prompt, (size_t)p->prompt_len * sizeof *q->tokens);
    q->n_tokens = p->prompt_len;
    r->seqs[0] = q;
    r->n_seqs = 1;

    s->next_id++;
    if (!p->arrival) s->next_arrival++;
    s->reqs[s->n_reqs++] = r; /* ids increase: stays sorted */
    s->total_seqs += M;
    list_insert(s->waiting, &s->n_waiting, q);
    s->stats.requests_submitted++;
    *id = r->id;
    return DUEL_OK;
}

/* ---- request end -------------------------------------------------------------------------- */

static void emit(sched_event_fn on_event, void *ctx, const sched_event *ev) {
    if (on_event) on_event(ctx, ev);
}

/* Takes every sequence of r out of the lists and frees r (after its DONE event). */
static void request_remove(scheduler *s, sched_request *r) {
    for (int i = 0; i < r->n_seqs; i++) {
        sched_seq *q = r->seqs[i];
        if (q->running) list_remove(s->running, &s->n_running, q);
        else if (!q->finished) list_remove(s->waiting, &s->n_waiting, q);
    }
    int at = find_request(s, r->id);
    if (at >= 0) {
        memmove(s->reqs + at, s->reqs + at + 1, (size_t)(s->n_reqs - at - 1) * sizeof *s->reqs);
        s->n_reqs--;
    }
    s->total_seqs -= r->p.num_candidates;
    request_free(s, r);
}

static void request_done(scheduler *s, sched_request *r, bool cancelled, int status,
                         const char *message, sched_event_fn on_event, void *ctx) {
    r->stats.done_time = duel_time_seconds();
    sched_event ev = {.kind = SCHED_EVENT_DONE,
                      .request_id = r->id,
                      .user = r->p.user,
                      .cancelled = cancelled,
                      .status = status,
                      .message = message,
                      .stats = &r->stats,
                      .prompt_hidden = r->prompt_done ? r->prompt_hidden : NULL};
    emit(on_event, ctx, &ev);
    if (cancelled) s->stats.requests_cancelled++;
    else if (status) s->stats.requests_failed++;
    else s->stats.requests_finished++;
    request_remove(s, r);
}

int sched_cancel(scheduler *s, uint64_t id, sched_event_fn on_event, void *ctx, duel_error *err) {
    if (!s) return duel_error_set(err, DUEL_EINVAL, "sched_cancel: NULL scheduler");
    int at = find_request(s, id);
    if (at < 0)
        return duel_error_set(err, DUEL_ENOTFOUND,
                              "request %llu is not active (unknown, finished or cancelled)",
                              (unsigned long long)id);
    request_done(s, s->reqs[at], true, 0, "cancelled", on_event, ctx);
    return DUEL_OK;
}

/* ---- step --------------------------------------------------------------------------------- */

/* Whether q's next piece also runs on its lockstep reference sequence. */
static bool seq_runs_ref(const sched_seq *q) { return q->req->p.use_ref_model && !q->finishing; }

/* Budget tokens of q's planned piece: twice its tokens when the reference runs it too. */
static int seq_step_cost(const sched_seq *q) { return q->step_count * (q->step_ref ? 2 : 1); }

static void preempt(scheduler *s, sched_seq *q, int *budget) {
    kv_sequence_free(s->pool, &q->kv);
    kv_sequence_free(s->pool, &q->ref_kv);
    list_remove(s->running, &s->n_running, q);
    q->running = false;
    *budget += seq_step_cost(q);
    q->step_count = 0;
    q->step_ref = false;
    list_insert(s->waiting, &s->n_waiting, q);
    q->req->stats.preemptions++;
    s->stats.preemptions++;
}

static bool is_stop(const sched_request *r, int32_t tok) {
    for (int i = 0; i < r->p.num_stop_tokens; i++)
        if (r->stop[i] == tok) return true;
    return false;
}

static void request_fail(sched_request *r, int code, const char *message) {
    if (r->fail_code) return;
    r->fail_code = code ? code : DUEL_EINVAL;
    snprintf(r->fail_message, sizeof r->fail_message, "%s", message);
}

/* Appends q's sampled token tok (log-probability lp) and decides whether q ends. */
static void apply_token(sched_seq *q, int32_t tok, double lp) {
    sched_request *r = q->req;
    if (q->n_tokens >= r->max_total) { /* cannot happen: the end checks below stop first */
        request_fail(r, DUEL_EINVAL, "internal error: candidate past its token capacity");
        return;
    }
    q->tokens[q->n_tokens++] = tok;
    q->logprob_sum += lp;
    r->stats.generated_tokens++;
    r->progress_candidates[r->progress_count] = q->candidate;
    r->progress_tokens[r->progress_count++] = tok;
    int generated = q->n_tokens - r->p.prompt_len;
    bool end = true;
    if (is_stop(r, tok)) q->reason = SCHED_FINISH_STOP;
    else if (generated >= r->p.max_new_tokens) q->reason = SCHED_FINISH_LENGTH;
    else if (q->n_tokens >= r->context) q->reason = SCHED_FINISH_CONTEXT;
    else end = false;
    if (!end) return;
    if (r->p.want_hidden) q->finishing = true; /* one more piece: the last token's hidden */
    else q->to_finish = true;
}

/* Samples q (a job of a request with a logits step) on the host: its rows read back from the
 * backend, the step applied, sampler_sample. Returns the token or a negative error (r failed). */
static int32_t sample_with_step(scheduler *s, sched_seq *q, int row, int ref_row, double *lp) {
    sched_request *r = q->req;
    const sched_model_info *mi = &s->models[r->p.model];
    duel_error e = {0};
    int rc = compute_read_logits(s->backend, row, s->host_logits, &e);
    if (!rc && r->p.use_ref_model)
        rc = compute_read_logits(s->backend, ref_row, s->host_ref_logits, &e);
    if (!rc)
        rc = r->p.logits_step(r->p.logits_ctx, q->candidate, s->host_logits,
                              r->p.use_ref_model ? s->host_ref_logits : NULL, mi->vocab_size,
                              s->stepped, &e);
    if (rc) {
        request_fail(r, rc, e.message[0] ? e.message : "the logits step failed");
        return rc;
    }
    float flp = 0;
    int32_t tok = sampler_sample(s->stepped, mi->vocab_size, &r->p.sampling, &q->rng, &flp, &e);
    if (tok < 0) request_fail(r, tok, e.message);
    *lp = flp;
    return tok;
}

/* Creates candidates 1..M-1 of r as forks of candidate 0 (whose prompt is committed); a scoring
 * request's candidates then take their forced tokens. */
static int fork_candidates(scheduler *s, sched_request *r, duel_error *err) {
    sched_seq *parent = r->seqs[0];
    const sched_model_info *mi = &s->models[r->p.model];
    for (int i = 1; i < r->p.num_candidates; i++) {
        sched_seq *q = seq_new(r, i, mi->hidden_size);
        if (!q) return duel_error_set(err, DUEL_ENOMEM, "out of memory forking candidates");
        int rc = kv_sequence_fork(s->pool, &parent->kv, &q->kv, err);
        if (!rc && r->p.use_ref_model) rc = kv_sequence_fork(s->pool, &parent->ref_kv, &q->ref_kv, err);
        if (rc) {
            seq_free(s, q);
            return rc;
        }
        memcpy(q->tokens, parent->tokens, (size_t)parent->n_tokens * sizeof *q->tokens);
        q->n_tokens = parent->n_tokens;
        q->max_computed = parent->max_computed;
        q->running = true;
        r->seqs[r->n_seqs++] = q;
        list_insert(s->running, &s->n_running, q);
    }
    for (int i = 0; r->forced && i < r->n_seqs; i++) {
        sched_seq *q = r->seqs[i];
        memcpy(q->tokens + q->n_tokens, r->forced[i], (size_t)r->forced_counts[i] * sizeof *q->tokens);
        q->n_tokens += r->forced_counts[i];
        q->reason = SCHED_FINISH_LENGTH;
    }
    return DUEL_OK;
}

static void finish_candidate(scheduler *s, sched_seq *q, sched_event_fn on_event, void *ctx) {
    sched_request *r = q->req;
    kv_sequence_free(s->pool, &q->kv);
    kv_sequence_free(s->pool, &q->ref_kv);
    if (q->running) list_remove(s->running, &s->n_running, q);
    q->running = false;
    q->finished = true;
    q->finish_time = duel_time_seconds();
    sched_event ev = {.kind = SCHED_EVENT_CANDIDATE,
                      .request_id = r->id,
                      .user = r->p.user,
                      .candidate = q->candidate,
                      .count = q->n_tokens - r->p.prompt_len,
                      .tokens = q->tokens + r->p.prompt_len,
                      .logprob_sum = q->logprob_sum,
                      .hidden = r->p.want_hidden ? q->hidden : NULL,
                      .finish_reason = q->reason,
                      .finish_time = q->finish_time};
    emit(on_event, ctx, &ev);
    r->n_done++;
}

/* Tokens of a sequence's next piece: what it needs, up to what the budget pays for (a piece
 * that also runs on the reference costs 2 per token; at least one token, so a budget of 1
 * still moves such a sequence, overdrawing the budget by one). */
static int piece_tokens(int need, int budget, bool with_ref) {
    int afford = with_ref ? budget / 2 : budget;
    if (afford < 1) afford = 1;
    return need < afford ? need : afford;
}

/* Reserves n more positions on both of q's sequences; all or nothing like kv_sequence_reserve:
 * DUEL_ELIMIT (nothing reserved) when the pool cannot give both their blocks. Sufficient: the
 * reference sequence's blocks are all referenced, so reserving q's own evicts none of them, and
 * the two never share a partly filled block (only whole blocks are ever attached or deduped). */
static int reserve_pair(scheduler *s, sched_seq *q, int64_t n, duel_error *err) {
    int64_t a = kv_sequence_blocks_needed(s->pool, &q->kv, n);
    int64_t b = kv_sequence_blocks_needed(s->pool, &q->ref_kv, n);
    if (a < 0 || b < 0) return duel_error_set(err, DUEL_EINVAL, "kv reserve: invalid arguments");
    if (a + b > kv_pool_available_blocks(s->pool))
        return duel_error_set(err, DUEL_ELIMIT,
                              "kv reserve: out of blocks for a candidate and its reference "
                              "(need %lld, %d free or cached)",
                              (long long)(a + b), kv_pool_available_blocks(s->pool));
    int rc = kv_sequence_reserve(s->pool, &q->kv, n, NULL, err);
    if (!rc) rc = kv_sequence_reserve(s->pool, &q->ref_kv, n, NULL, err);
    return rc;
}

/* Attaches the prefix cache's blocks to a waiting candidate that runs its reference too: the
 * same number of positions on both sequences (the shorter of the two matches), so that they
 * are in lockstep from the first piece. *reused gets the positions attached over both. */
static int attach_prefix_pair(scheduler *s, sched_seq *q, int64_t *reused, duel_error *err) {
    int64_t a = 0, b = 0;
    int rc = kv_prefix_lookup(s->pool, &q->kv, q->tokens, q->n_tokens - 1, &a, err);
    if (!rc) rc = kv_prefix_lookup(s->pool, &q->ref_kv, q->tokens, a, &b, err);
    if (!rc && b < a) {
        /* Its blocks go back to the cache's LRU (nothing evicts before the next lookup), so
         * looking up b positions finds them again. */
        kv_sequence_free(s->pool, &q->kv);
        rc = kv_prefix_lookup(s->pool, &q->kv, q->tokens, b, &a, err);
    }
    if (rc || a != b) { /* a != b cannot happen (see above); never run out of step anyway */
        kv_sequence_free(s->pool, &q->kv);
        kv_sequence_free(s->pool, &q->ref_kv);
        a = b = 0;
    }
    *reused = a + b;
    return rc;
}

/* Plans the running sequences whose next piece is (decodes) or is not (chunks) one token. */
static int plan_running(scheduler *s, bool decodes, int *budget, bool *preempted,
                        duel_error *err) {
    for (int i = 0; i < s->n_running && *budget > 0; i++) {
        sched_seq *q = s->running[i];
        if (q->step_count) continue;
        int need = q->n_tokens - (int)q->kv.num_tokens;
        if ((need == 1) != decodes) continue;
        bool with_ref = seq_runs_ref(q);
        int take = piece_tokens(need, *budget, with_ref);
        for (;;) {
            int rc = with_ref ? reserve_pair(s, q, take, err)
                              : kv_sequence_reserve(s->pool, &q->kv, take, NULL, err);
            if (rc == DUEL_OK) {
                q->step_count = take;
                q->step_ref = with_ref;
                *budget -= seq_step_cost(q);
                break;
            }
            if (rc != DUEL_ELIMIT) return rc;
            sched_seq *victim = s->running[s->n_running - 1];
            preempt(s, victim, budget);
            *preempted = true;
            if (victim == q) break; /* q was the youngest; index i is now past the end */
        }
    }
    return DUEL_OK;
}

/* Admits waiting sequences in age order while blocks, budget and max_running allow. */
static int admit_waiting(scheduler *s, int *budget, duel_error *err) {
    while (s->n_waiting > 0 && *budget > 0 && s->n_running < s->params.max_running) {
        sched_seq *q = s->waiting[0];
        sched_request *r = q->req;
        int64_t reused = 0;
        bool with_ref = seq_runs_ref(q);
        /* A scoring candidate attaches no position it has not scored: blocks cached by
         * another sequence (the policy's own candidate, say) hold the K/V but not its
         * targets' log-probabilities. */
        int64_t lookup = q->n_tokens - 1;
        if (r->forced && r->prompt_done) {
            int64_t scored = q->max_computed > r->p.prompt_len ? q->max_computed : r->p.prompt_len;
            if (lookup > scored) lookup = scored;
        }
        int rc = with_ref ? attach_prefix_pair(s, q, &reused, err)
                          : kv_prefix_lookup(s->pool, &q->kv, q->tokens, lookup, &reused, err);
        if (rc) return rc;
        int need = q->n_tokens - (int)q->kv.num_tokens;
        int take = piece_tokens(need, *budget, with_ref);
        int64_t blocks = kv_sequence_blocks_needed(s->pool, &q->kv, take);
        if (blocks < 0 || blocks > kv_pool_available_blocks(s->pool) ||
            (with_ref ? reserve_pair(s, q, take, NULL)
                      : kv_sequence_reserve(s->pool, &q->kv, take, NULL, NULL)) != DUEL_OK) {
            kv_sequence_free(s->pool, &q->kv); /* back to the cache; try next step */
            kv_sequence_free(s->pool, &q->ref_kv);
            return DUEL_OK;
        }
        memmove(s->waiting, s->waiting + 1, (size_t)(s->n_waiting - 1) * sizeof *s->waiting);
        s->n_waiting--;
        list_insert(s->running, &s->n_running, q);
        q->running = true;
        q->step_count = take;
        q->step_ref = with_ref;
        *budget -= seq_step_cost(q);
        s->stats.cached_tokens += (uint64_t)reused;
        if (!r->first_admitted) {
            r->first_admitted = true;
            r->stats.cached_tokens = reused;
            r->stats.first_scheduled_time = duel_time_seconds();
        }
    }
    return DUEL_OK;
}

/* Fails every request with a sequence in this step's plan (after an error that left the step
 * half done), and clears the plan. */
static void fail_planned(scheduler *s, int code, const char *message) {
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i]->step_count) request_fail(s->running[i]->req, code, message);
    for (int i = 0; i < s->n_running; i++) {
        s->running[i]->step_count = 0;
        s->running[i]->step_ref = false;
    }
}

/* Emits pending progress, finishes candidates and ends requests (all or failed). */
static void end_of_step(scheduler *s, int n_completed, sched_event_fn on_event, void *ctx) {
    for (int i = 0; i < s->n_reqs; i++) {
        sched_request *r = s->reqs[i];
        if (r->progress_count && r->p.want_progress && !r->fail_code) {
            sched_event ev = {.kind = SCHED_EVENT_PROGRESS,
                              .request_id = r->id,
                              .user = r->p.user,
                              .count = r->progress_count,
                              .candidates = r->progress_candidates,
                              .tokens = r->progress_tokens};
            emit(on_event, ctx, &ev);
        }
        r->progress_count = 0;
    }
    for (int i = 0; i < n_completed; i++) {
        sched_seq *q = s->completed[i];
        if (q->to_finish && !q->req->fail_code) finish_candidate(s, q, on_event, ctx);
    }
    for (int i = 0; i < s->n_reqs;) {
        sched_request *r = s->reqs[i];
        if (r->fail_code) {
            char message[DUEL_ERROR_MESSAGE_MAX];
            snprintf(message, sizeof message, "%s", r->fail_message);
            request_done(s, r, false, r->fail_code, message, on_event, ctx);
        } else if (r->n_done == r->p.num_candidates) {
            request_done(s, r, false, 0, NULL, on_event, ctx);
        } else {
            i++;
        }
    }
}

/* Begins the step on the backend: its logits rows (one per batch sequence, and one more per
 * sequence that runs its lockstep reference: rows n_batch + i) and, when a request of the batch
 * has a logits step, the host buffers it reads them into. */
static int begin_step_buffers(scheduler *s, int n_batch, duel_error *err) {
    bool any_ref = false, any_step = false;
    for (int i = 0; i < n_batch; i++) {
        any_ref |= s->batch[i]->step_ref;
        any_step |= s->batch[i]->req->p.logits_step != NULL;
    }
    if (any_step && s->max_vocab > s->stepped_floats) {
        size_t bytes = (size_t)s->max_vocab * sizeof(float);
        float *a = realloc(s->stepped, bytes);
        if (a) s->stepped = a;
        float *b = a ? realloc(s->host_logits, bytes) : NULL;
        if (b) s->host_logits = b;
        float *c = b ? realloc(s->host_ref_logits, bytes) : NULL;
        if (!c) return duel_error_set(err, DUEL_ENOMEM, "out of memory for a logits step");
        s->host_ref_logits = c;
        s->stepped_floats = s->max_vocab;
    }
    return compute_step_begin(s->backend, n_batch * (any_ref ? 2 : 1), s->max_vocab, err);
}

/* Fills q's targets for its planned piece (scoring): position p's row scores token p + 1 when
 * that token is a candidate token other than the first (p >= prompt_len) that no earlier piece
 * scored (p >= max_computed). */
static void fill_targets(sched_seq *q, int64_t start) {
    const sched_request *r = q->req;
    for (int j = 0; j < q->step_count; j++) {
        int64_t p = start + j;
        q->targets[j] = p >= r->p.prompt_len && p >= q->max_computed && p + 1 < q->n_tokens
                            ? q->tokens[p + 1]
                            : -1;
    }
}

/* Draws the step's sampling jobs (job_seq[0..n_jobs), each reading its sequence's batch row):
 * the device draws in one call, logits-step jobs on the host; then applies each job's token in
 * order. A row that fails fails its request only. */
static int run_jobs(scheduler *s, int n_jobs, int n_batch, duel_error *err) {
    int n_samples = 0;
    for (int j = 0; j < n_jobs; j++) {
        sched_seq *q = s->job_seq[j];
        sched_request *r = q->req;
        const sched_model_info *mi = &s->models[r->p.model];
        s->job_sample[j] = -1;
        if (r->p.logits_step && !r->forced) continue;
        s->job_sample[j] = n_samples;
        s->samples[n_samples++] = (compute_sample){
            .logits_row = q->batch_slot,
            .vocab = mi->vocab_size,
            .params = &r->p.sampling,
            .rng = &q->rng,
            .forced = r->forced ? r->forced[q->candidate][0] : -1};
    }
    duel_error serr = {0};
    int rc = compute_sample_rows(s->backend, s->samples, n_samples, &serr);
    if (rc) {
        if (err) *err = serr;
        return rc;
    }
    for (int j = 0; j < n_jobs; j++) {
        sched_seq *q = s->job_seq[j];
        sched_request *r = q->req;
        if (r->fail_code) continue;
        if (s->job_sample[j] < 0) {
            double lp = 0;
            int32_t tok = sample_with_step(s, q, q->batch_slot, n_batch + q->batch_slot, &lp);
            if (tok >= 0) apply_token(q, tok, lp);
            continue;
        }
        const compute_sample *cs = &s->samples[s->job_sample[j]];
        if (cs->status) {
            request_fail(r, cs->status, serr.message[0] ? serr.message : "sampling failed");
            continue;
        }
        if (r->forced) q->logprob_sum += cs->logprob; /* its first forced token */
        else apply_token(q, cs->token, cs->logprob);
    }
    return DUEL_OK;
}

int sched_step(scheduler *s, sched_event_fn on_event, void *ctx, duel_error *err) {
    if (!s) return duel_error_set(err, DUEL_EINVAL, "sched_step: NULL scheduler");
    if (s->n_reqs == 0) return 0;
    int budget = s->params.max_batch_tokens;
    bool preempted = false;
    int rc = plan_running(s, true, &budget, &preempted, err);
    if (!rc) rc = plan_running(s, false, &budget, &preempted, err);
    if (!rc && !preempted) rc = admit_waiting(s, &budget, err);
    if (rc) {
        fail_planned(s, rc, err ? err->message : "scheduling failed");
        end_of_step(s, 0, on_event, ctx);
        return rc;
    }

    /* The batch: planned running sequences, oldest first. */
    int n_batch = 0;
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i]->step_count) {
            s->running[i]->batch_slot = n_batch;
            s->batch[n_batch++] = s->running[i];
        }
    if (n_batch == 0) {
        /* Cannot happen with requests validated at submit; never spin on it: fail them all. */
        rc = duel_error_set(err, DUEL_ELIMIT,
                            "scheduler made no progress: %d running, %d waiting, %d blocks "
                            "available",
                            s->n_running, s->n_waiting, kv_pool_available_blocks(s->pool));
        for (int i = 0; i < s->n_reqs; i++)
            request_fail(s->reqs[i], rc, err ? err->message : "scheduler made no progress");
        end_of_step(s, 0, on_event, ctx);
        return rc;
    }
    /* The step's logits rows, then the copy-on-write copies its reservations recorded (before
     * any K/V of the step is written). */
    if ((rc = begin_step_buffers(s, n_batch, err)) ||
        (rc = compute_copy_pending(s->backend, s->pool, err))) {
        fail_planned(s, rc, err ? err->message : "the compute backend failed");
        end_of_step(s, 0, on_event, ctx);
        return rc;
    }
    /* One forward call per model over its sequences (and the lockstep reference sequences it
     * is the reference of: the same tokens at the same positions). */
    for (int mdl = 0; mdl < s->n_models && !rc; mdl++) {
        int n = 0;
        for (int i = 0; i < n_batch; i++) {
            sched_seq *q = s->batch[i];
            sched_request *r = q->req;
            int64_t start = q->kv.num_tokens;
            bool reaches_end = start + q->step_count == q->n_tokens;
            if (r->p.model == mdl) {
                bool prompt_end = reaches_end && q->candidate == 0 && !r->prompt_done;
                bool scored = r->forced && r->prompt_done; /* a forced candidate's piece */
                float *hidden = NULL;
                if (reaches_end && (q->finishing || scored)) hidden = q->hidden;
                else if (prompt_end && r->p.want_hidden) hidden = r->prompt_hidden;
                q->step_scored = scored;
                if (scored) fill_targets(q, start);
                s->entries[n++] = (compute_entry){
                    .seq = &q->kv,
                    .tokens = q->tokens + start,
                    .n_tokens = q->step_count,
                    .start = start,
                    .logits_row = reaches_end && !q->finishing && !scored ? i : -1,
                    .hidden_last = hidden,
                    .targets = scored ? q->targets : NULL,
                    .target_logprob = scored ? &q->piece_logprob : NULL};
            }
            if (q->step_ref && r->p.ref_model == mdl)
                s->entries[n++] = (compute_entry){
                    .seq = &q->ref_kv,
                    .tokens = q->tokens + start,
                    .n_tokens = q->step_count,
                    .start = start,
                    .logits_row = reaches_end ? n_batch + i : -1};
        }
        if (n) rc = compute_forward(s->backend, s->models[mdl].arm, s->pool, s->entries, n, err);
    }
    if (rc) {
        fail_planned(s, rc, err ? err->message : "forward failed");
        end_of_step(s, 0, on_event, ctx);
        return rc;
    }

    /* Commit, then sample where a piece reached the sequence's end. */
    int tokens = 0, n_completed = 0;
    for (int i = 0; i < n_batch; i++) {
        sched_seq *q = s->batch[i];
        sched_request *r = q->req;
        int64_t start = q->kv.num_tokens;
        int count = q->step_count, runs = q->step_ref ? 2 : 1;
        q->step_count = 0;
        q->step_ref = false;
        rc = kv_sequence_commit(s->pool, &q->kv, q->tokens + start, count, err);
        if (!rc && runs == 2)
            rc = kv_sequence_commit(s->pool, &q->ref_kv, q->tokens + start, count, err);
        if (rc) {
            request_fail(r, rc, err ? err->message : "commit failed");
            continue;
        }
        if (q->step_scored) q->logprob_sum += q->piece_logprob;
        q->step_scored = false;
        tokens += count * runs;
        if (count == 1) s->stats.decode_tokens += (uint64_t)runs;
        int64_t end = start + count;
        int64_t prompt_part = (end < r->p.prompt_len ? end : r->p.prompt_len) - start;
        if (prompt_part > 0) r->stats.prompt_computed += prompt_part * runs;
        int64_t from = start > r->p.prompt_len ? start : r->p.prompt_len;
        int64_t upto = end < q->max_computed ? end : q->max_computed;
        if (upto > from) r->stats.recomputed_tokens += (upto - from) * runs;
        if (end > q->max_computed) q->max_computed = (int)end;
        if (end == q->n_tokens) s->completed[n_completed++] = q;
    }
    s->stats.tokens += (uint64_t)tokens;
    s->stats.steps++;
    /* The sampling jobs: a prompt's end forks its candidates, each a job on the prompt's row. */
    int n_pieces_done = n_completed, n_jobs = 0;
    for (int i = 0; i < n_pieces_done; i++) {
        sched_seq *q = s->completed[i];
        sched_request *r = q->req;
        if (r->fail_code) continue;
        if (q->finishing || (r->forced && r->prompt_done)) {
            q->to_finish = true;
            continue;
        }
        if (q->candidate == 0 && !r->prompt_done) {
            r->prompt_done = true;
            r->stats.prompt_done_time = duel_time_seconds();
            duel_error ferr = {0};
            int frc = fork_candidates(s, r, &ferr);
            if (frc) {
                request_fail(r, frc, ferr.message);
                continue;
            }
            for (int c = 0; c < r->n_seqs; c++) {
                r->seqs[c]->batch_slot = q->batch_slot;
                r->seqs[c]->fork_job = c > 0;
                s->job_seq[n_jobs++] = r->seqs[c];
            }
        } else {
            s->job_seq[n_jobs++] = q;
        }
    }
    if ((rc = run_jobs(s, n_jobs, n_batch, err))) {
        /* The backend failed as a whole: every request that was to sample fails. */
        for (int j = 0; j < n_jobs; j++)
            request_fail(s->job_seq[j]->req, rc, err ? err->message : "sampling failed");
        end_of_step(s, n_completed, on_event, ctx);
        return rc;
    }
    /* Forked candidates that ended at their first token finish with the others. */
    for (int j = 0; j < n_jobs; j++) {
        sched_seq *q = s->job_seq[j];
        if (q->fork_job && q->to_finish && !q->req->fail_code) s->completed[n_completed++] = q;
        q->fork_job = false;
    }
    end_of_step(s, n_completed, on_event, ctx);
    return tokens;
}

/* ---- queries ------------------------------------------------------------------------------ */

bool sched_has_work(const scheduler *s) { return s && s->n_reqs > 0; }

void sched_stats_get(const scheduler *s, sched_stats *out) {
    *out = s->stats;
    out->running = s->n_running;
    out->waiting = s->n_waiting;
    out->active_requests = s->n_reqs;
}

int sched_check(const scheduler *s, duel_error *err) {
    for (int i = 0; i < s->n_running; i++) {
        const sched_seq *q = s->running[i];
        if (!q->running || q->finished || q->kv.num_blocks < 1)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "running sequence %d (request %llu candidate %d) holds %d "
                                  "blocks, flags running %d finished %d",
                                  i, (unsigned long long)q->req->id, q->candidate,
                                  q->kv.num_blocks, q->running, q->finished);
        if (i && s->running[i - 1]->age >= q->age)
            return duel_error_set(err, DUEL_EFORMAT, "running list not sorted by age at %d", i);
        if (q->step_count)
            return duel_error_set(err, DUEL_EFORMAT, "running sequence %d has a stale plan", i);
        if (q->n_tokens <= q->kv.num_tokens && !q->finished)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "running sequence %d has nothing to compute (%d tokens, %lld "
                                  "committed)",
                                  i, q->n_tokens, (long long)q->kv.num_tokens);
        if (find_request(s, q->req->id) < 0)
            return duel_error_set(err, DUEL_EFORMAT, "running sequence %d of an ended request", i);
        if (q->req->p.use_ref_model && !q->finishing &&
            q->ref_kv.num_tokens != q->kv.num_tokens)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "running sequence %d: its reference sequence holds %lld "
                                  "positions, it %lld (not in lockstep)",
                                  i, (long long)q->ref_kv.num_tokens, (long long)q->kv.num_tokens);
        if (!q->req->p.use_ref_model && q->ref_kv.num_blocks)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "running sequence %d holds reference blocks without a reference",
                                  i);
    }
    for (int i = 0; i < s->n_waiting; i++) {
        const sched_seq *q = s->waiting[i];
        if (q->running || q->finished || q->kv.num_blocks != 0 || q->kv.num_tokens != 0 ||
            q->ref_kv.num_blocks != 0 || q->ref_kv.num_tokens != 0)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "waiting sequence %d (request %llu candidate %d) holds %d "
                                  "blocks",
                                  i, (unsigned long long)q->req->id, q->candidate,
                                  q->kv.num_blocks);
        if (i && s->waiting[i - 1]->age >= q->age)
            return duel_error_set(err, DUEL_EFORMAT, "waiting list not sorted by age at %d", i);
        if (find_request(s, q->req->id) < 0)
            return duel_error_set(err, DUEL_EFORMAT, "waiting sequence %d of an ended request", i);
    }
    int counted = 0;
    for (int i = 0; i < s->n_reqs; i++) {
        const sched_request *r = s->reqs[i];
        if (i && s->reqs[i - 1]->id >= r->id)
            return duel_error_set(err, DUEL_EFORMAT, "requests not sorted by id at %d", i);
        for (int j = 0; j < r->n_seqs; j++) {
            const sched_seq *q = r->seqs[j];
            if (!q->finished) counted++;
            else if (q->kv.num_blocks || q->ref_kv.num_blocks)
                return duel_error_set(err, DUEL_EFORMAT,
                                      "finished candidate %d of request %llu holds blocks", j,
                                      (unsigned long long)r->id);
        }
    }
    if (counted != s->n_running + s->n_waiting)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%d live sequences but %d running + %d waiting", counted,
                              s->n_running, s->n_waiting);
    const kv_sequence **live = malloc((2 * (size_t)s->n_running + 1) * sizeof *live);
    if (!live) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    int n_live = 0;
    for (int i = 0; i < s->n_running; i++) {
        live[n_live++] = &s->running[i]->kv;
        if (s->running[i]->req->p.use_ref_model) live[n_live++] = &s->running[i]->ref_kv;
    }
    int rc = kv_pool_check(s->pool, live, n_live, err);
    free(live);
    return rc;
}
