/* engine.c: the engine thread around the scheduler (see engine.h).
 *
 * Threads and ownership:
 *   - The engine thread owns the scheduler, the KV pool, the models (borrowed at create) and the
 *     table of active requests (engine_active). It pops commands, runs scheduler steps while
 *     there is work, and turns the scheduler's events into engine_events (deep copies, text
 *     decoded) that it pushes to the event queue.
 *   - Callers own what they pass in (copied at submit) and the events they pop.
 *   - The mutex guards the id counter, the per-id state table, the stats snapshot and the arm
 *     table's states (with the scheduler's model table, which sched_validate reads):
 *     engine_submit validates in the caller's thread under it, and pushes its command before
 *     unlocking, so commands reach the engine thread in the order their checks saw the arms.
 *   - Arm slots: FREE -> ADDING (engine_add_arm fills it, caller thread) -> RESIDENT (the
 *     engine thread, between steps: sched_set_model) -> RETIRING (engine_retire_arm) -> FREE
 *     (the engine thread, once no request holds it: ARM_RETIRED event). Only the engine thread
 *     turns a slot FREE or RESIDENT, and only while no request refers to the slot, so the engine
 *     thread reads arms[] without the lock. refs (engine thread only) counts the scheduler's
 *     and the PILAF requests on an arm.
 * The state table keeps one byte per id ever issued (1 MiB per million requests) so that
 * engine_cancel can tell "never issued" from "already finished" without the engine thread.
 *
 * Duel requests keep their prompt and every finished candidate's tokens (and, for policy
 * features, hidden states) in their engine_active; when the scheduler reports the request done,
 * run_duel computes the features, scores and selects on the engine thread (the reference pass
 * is a prefill of prompt + candidates: short next to the decode it follows). */
#include "engine.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"
#include "engine_queue.h"
#include "kv_cache.h"
#include "scheduler.h"
#include "timer.h"

#define ENGINE_DEFAULT_MAX_CANDIDATES 64

enum { ENGINE_STATE_UNKNOWN = 0, ENGINE_STATE_ACTIVE = 1, ENGINE_STATE_ENDED = 2 };

enum { ARM_FREE = 0, ARM_ADDING, ARM_RESIDENT, ARM_RETIRING };

typedef struct engine_arm {
    int state;            /* ARM_*, under the lock */
    char name[ENGINE_MAX_ARM_NAME];
    model *model;
    const tokenizer *tokenizer;
    const erm *erm;       /* NULL: the engine's */
    void *user;
    uint64_t model_id;    /* never reused */
    int32_t eos[MODEL_CONFIG_MAX_EOS];
    int num_eos;
    int refs;             /* engine thread: requests on this arm */
    int add_status;       /* ADDING -> FREE on failure: why (under the lock) */
    char add_message[DUEL_ERROR_MESSAGE_MAX];
} engine_arm;

typedef enum engine_command_kind {
    ENGINE_CMD_SUBMIT,
    ENGINE_CMD_CANCEL,
    ENGINE_CMD_ADD_ARM,    /* id: the slot */
    ENGINE_CMD_RETIRE_ARM, /* id: the slot */
} engine_command_kind;

typedef struct engine_command {
    engine_command_kind kind;
    uint64_t id;
    bool duel, want_hidden;
    duel_strategy strategy;
    double pilaf_beta;
    int arena_model;             /* arena: the second arm's slot; else -1 */
    sched_request_params params; /* SUBMIT: prompt and stop_tokens point at the copies (arena:
                                    the first half; the second is the same on arena_model with
                                    seed + M/2) */
    int32_t *prompt;
    int32_t stop[SCHED_MAX_STOP_TOKENS];
} engine_command;

/* What the scheduler's user pointer is: a request's half (arena) or the whole of it. */
typedef struct engine_part {
    struct engine_active *owner;
    int index; /* 0: arm, candidates from 0; 1 (arena): arena_arm, candidates from M/2 */
} engine_part;

/* A request the scheduler holds (engine thread only). */
typedef struct engine_active {
    uint64_t id, sched_id;
    int arm;
    engine_part parts[2];
    /* Arena requests: the second half is scheduler request arena_sched_id on arena_arm. */
    int arena_arm;        /* -1: not an arena request */
    uint64_t arena_sched_id;
    bool part_done[2];
    int parts_left;
    int fail_status;      /* the first failure of a half */
    char fail_message[DUEL_ERROR_MESSAGE_MAX];
    bool cancelled;
    engine_counts counts; /* summed over the halves */
    void *user;
    double submit_time;
    bool want_hidden; /* the caller's (a duel with policy features asks the scheduler anyway) */
    /* Duel requests only. */
    bool duel;
    duel_strategy strategy;
    uint64_t seed;
    int num_candidates, prompt_len, hidden_size;
    int32_t *prompt;       /* [prompt_len] */
    int32_t **cand_tokens; /* [M] finished candidates' tokens */
    int *cand_counts;      /* [M] */
    float *cand_hidden;    /* [M][hidden_size] (policy features) */
    bool lost;             /* a candidate's copy failed (out of memory) */
} engine_active;

struct engine {
    engine_arm arms[SCHED_MAX_MODELS];
    int num_arms;         /* slots ever used (a bound for loops) */
    uint64_t next_model_id; /* under the lock */
    pthread_cond_t arm_applied; /* with lock: an ADDING slot left ADDING */
    kv_pool *pool;
    scheduler *sched;
    engine_queue *commands, *events;
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t lock; /* guards next_id, states, stats */
    uint64_t next_id;
    uint8_t *states;      /* [states_cap], by id */
    size_t states_cap;
    engine_stats stats;

    struct pilaf_job **pilaf; /* PILAF requests in progress (engine thread) */
    int num_pilaf, cap_pilaf;
    const erm *erm;       /* borrowed; NULL: no duels */
    kv_pool *ref_pool;    /* the reference pass's own small pool (engine thread) */
    int ref_arm;          /* ENGINE_FEATURES_REFERENCE */
    engine_feature_source features;

    /* Engine thread only. */
    engine_active **active;
    int num_active, cap_active;
    uint64_t *deferred_cancels; /* scheduler ids to cancel after the step (arena halves) */
    int num_deferred, cap_deferred;
};

/* ---- events ------------------------------------------------------------------------------- */

void engine_event_free(engine_event *ev) {
    if (!ev) return;
    free(ev->features);
    free(ev->ref_logprobs);
    free(ev->rewards);
    free(ev->candidates);
    free(ev->tokens);
    free(ev->text);
    free(ev->hidden);
    free(ev->message);
    free(ev->arm);
    free(ev);
}

static void set_state(engine *e, uint64_t id, uint8_t state) {
    pthread_mutex_lock(&e->lock);
    if (id < e->states_cap) e->states[id] = state;
    pthread_mutex_unlock(&e->lock);
}

static void push_event(engine *e, engine_event *ev) {
    if (engine_queue_push(e->events, ev, NULL)) engine_event_free(ev); /* only on ENOMEM */
}

static void push_error(engine *e, uint64_t id, void *user, int status, const char *message) {
    engine_event *ev = calloc(1, sizeof *ev);
    if (!ev) return;
    ev->kind = ENGINE_EVENT_ERROR;
    ev->request_id = id;
    ev->user = user;
    ev->status = status;
    ev->message = strdup(message ? message : "error");
    push_event(e, ev);
}

/* ---- arms at run time ---------------------------------------------------------------------- */

/* Engine thread: a RETIRING arm whose last request has ended goes back to its owner. The slot is
 * FREE (its name reusable) before the event is visible. */
static void arm_release(engine *e, int slot) {
    engine_arm *arm = &e->arms[slot];
    engine_event *ev = calloc(1, sizeof *ev);
    if (ev) {
        ev->kind = ENGINE_EVENT_ARM_RETIRED;
        ev->user = arm->user;
        ev->arm = strdup(arm->name);
        ev->arm_model = arm->model;
        ev->arm_tokenizer = arm->tokenizer;
        ev->arm_erm = arm->erm;
    }
    pthread_mutex_lock(&e->lock);
    memset(arm, 0, sizeof *arm); /* state ARM_FREE */
    e->stats.arms_retired++;
    pthread_mutex_unlock(&e->lock);
    if (ev) push_event(e, ev); /* out of memory: the owner frees it after engine_destroy */
}

static void arm_unref(engine *e, int slot) {
    engine_arm *arm = &e->arms[slot];
    if (arm->refs > 0) arm->refs--;
    if (arm->refs == 0) {
        pthread_mutex_lock(&e->lock);
        bool retiring = arm->state == ARM_RETIRING;
        pthread_mutex_unlock(&e->lock);
        if (retiring) arm_release(e, slot);
    }
}

/* With the lock held: a RESIDENT arm by name (NULL: slot 0), or -1. */
static int arm_index_locked(const engine *e, const char *name) {
    if (!name) return e->arms[0].state == ARM_RESIDENT ? 0 : -1;
    for (int i = 0; i < e->num_arms; i++)
        if (e->arms[i].state == ARM_RESIDENT && strcmp(e->arms[i].name, name) == 0) return i;
    return -1;
}

/* Whether erm (or, when NULL, the engine's) fits the features a duel on model m gets: d_feat =
 * 2 x the hidden size of the reference arm (reference features) or of m itself (policy). */
static int check_arm_erm(const engine *e, const model *m, const erm *own, const char *name,
                         duel_error *err) {
    const erm *scorer = own ? own : e->erm;
    if (!scorer) return DUEL_OK;
    const model *fm = e->features == ENGINE_FEATURES_REFERENCE ? e->arms[e->ref_arm].model : m;
    int H = model_get_config(fm)->hidden_size;
    if (scorer->config.d_feat != 2 * H)
        return duel_error_set(err, DUEL_EINVAL,
                              "engine: the ERM of arm \"%s\" takes %d features but its feature "
                              "model gives 2 x %d (its hidden size)",
                              name, scorer->config.d_feat, H);
    return DUEL_OK;
}

static int find_active(const engine *e, uint64_t id) {
    for (int i = 0; i < e->num_active; i++)
        if (e->active[i]->id == id) return i;
    return -1;
}

static void active_free(engine_active *a) {
    if (!a) return;
    if (a->cand_tokens)
        for (int i = 0; i < a->num_candidates; i++) free(a->cand_tokens[i]);
    free(a->cand_tokens);
    free(a->cand_counts);
    free(a->cand_hidden);
    free(a->prompt);
    free(a);
}

static void remove_active(engine *e, engine_active *a) {
    int at = find_active(e, a->id);
    if (at >= 0) {
        e->active[at] = e->active[--e->num_active];
    }
    active_free(a);
}

static void *copy_floats(const float *src, int n) {
    if (!src) return NULL;
    float *dst = malloc((size_t)n * sizeof *dst);
    if (dst) memcpy(dst, src, (size_t)n * sizeof *dst);
    return dst;
}

static int32_t *copy_ints(const int32_t *src, int n) {
    int32_t *dst = malloc(((size_t)n + 1) * sizeof *dst);
    if (dst && n) memcpy(dst, src, (size_t)n * sizeof *dst);
    return dst;
}

/* The reference arm's features of a duel's candidates into features [M][2H]: the prompt runs
 * once as one sequence of the engine's private reference pool, M forks of it share its blocks,
 * and all M candidates run in one model_forward_batch (each weight read once for all of them).
 * The same pass scores the candidates: ref_logprobs[i] = log pi_ref(candidate i | prompt), the
 * sum over its tokens (the first from the prompt's last logits, the others from the candidate's
 * own rows), which the trainer's DPO-family losses need and need not recompute.
 * The pool is kept between duels and grown when a duel needs more blocks. */
static int reference_features(engine *e, model *fm, engine_active *a, float *features,
                              double *ref_logprobs, duel_error *err) {
    const model_config *c = model_get_config(fm);
    int M = a->num_candidates, H = c->hidden_size, D = 2 * H;
    int longest = 0;
    for (int i = 0; i < M; i++)
        if (a->cand_counts[i] > longest) longest = a->cand_counts[i];
    if ((int64_t)a->prompt_len + longest > c->max_position_embeddings)
        return duel_error_set(err, DUEL_ELIMIT,
                              "duel: prompt + candidate of %d tokens exceed the reference arm's "
                              "context of %d",
                              a->prompt_len + longest, c->max_position_embeddings);
    int bs = KV_BLOCK_SIZE;
    int64_t need = (a->prompt_len + bs - 1) / bs + (int64_t)M * ((longest + bs - 1) / bs + 1) + 1;
    if (need > KV_MAX_BLOCKS) return duel_error_set(err, DUEL_ELIMIT, "duel: too many features");
    if (!e->ref_pool || kv_pool_num_blocks(e->ref_pool) < need) {
        kv_pool_destroy(e->ref_pool);
        e->ref_pool = NULL;
        kv_pool_params pp = {.num_layers = c->num_layers, .num_kv_heads = c->num_kv_heads,
                             .head_dim = c->head_dim, .block_size = bs,
                             .num_blocks = (int)(need + need / 2), .allocate_storage = true};
        int rc = kv_pool_create(&pp, &e->ref_pool, err);
        if (rc) return rc;
    }
    kv_pool *pool = e->ref_pool;
    const int V = c->vocab_size;
    kv_sequence *seqs = calloc((size_t)M + 1, sizeof *seqs);
    model_batch_entry *entries = calloc((size_t)M, sizeof *entries);
    float *prompt_logits = malloc((size_t)V * sizeof *prompt_logits);
    int32_t *targets = malloc(((size_t)M * (size_t)longest + 1) * sizeof *targets);
    double *rest = calloc((size_t)M, sizeof *rest);
    int rc = DUEL_OK;
    if (!seqs || !entries || !prompt_logits || !targets || !rest) {
        rc = duel_error_set(err, DUEL_ENOMEM, "duel: out of memory for the reference pass");
        goto done;
    }
    for (int i = 0; i <= M; i++) kv_sequence_init(&seqs[i], 1);
    kv_sequence *prompt = &seqs[M];
    if ((rc = kv_sequence_reserve(pool, prompt, a->prompt_len, NULL, err))) goto done;
    model_batch_entry pe = {.seq = prompt, .tokens = a->prompt, .n_tokens = a->prompt_len,
                            .start = 0, .hidden_last = features, .logits = prompt_logits};
    if ((rc = model_forward_batch(fm, pool, &pe, 1, err))) goto done;
    if ((rc = kv_sequence_commit(pool, prompt, a->prompt, a->prompt_len, err))) goto done;
    for (int i = 0; i < M; i++)
        if ((rc = kv_sequence_fork(pool, prompt, &seqs[i], err))) goto done;
    for (int i = 0; i < M; i++) {
        if ((rc = kv_sequence_reserve(pool, &seqs[i], a->cand_counts[i], NULL, err))) goto done;
        float *row = features + (size_t)i * D;
        if (i) memcpy(row, features, (size_t)H * sizeof *row);
        /* token t of the candidate predicts token t + 1; its last token predicts nothing */
        int32_t *tg = targets + (size_t)i * (size_t)longest;
        for (int t = 0; t < a->cand_counts[i]; t++)
            tg[t] = t + 1 < a->cand_counts[i] ? a->cand_tokens[i][t + 1] : -1;
        entries[i] = (model_batch_entry){.seq = &seqs[i], .tokens = a->cand_tokens[i],
                                         .n_tokens = a->cand_counts[i], .start = a->prompt_len,
                                         .hidden_last = row + H, .targets = tg,
                                         .target_logprob = &rest[i]};
    }
    if ((rc = model_forward_batch(fm, pool, entries, M, err))) goto done;
    /* The first tokens: log softmax of the prompt's last logits. */
    const double lse = cpu_log_sum_exp(prompt_logits, V);
    for (int i = 0; i < M; i++) ref_logprobs[i] = (double)prompt_logits[a->cand_tokens[i][0]] - lse + rest[i];
done:
    if (seqs)
        for (int i = 0; i <= M; i++) kv_sequence_free(pool, &seqs[i]);
    free(seqs);
    free(entries);
    free(prompt_logits);
    free(targets);
    free(rest);
    return rc;
}

/* The features, rewards and pair of a finished duel request (engine thread); *out gets the
 * DUEL_READY event. */
static int run_duel(engine *e, engine_active *a, const float *prompt_hidden, double decode_ms,
                    engine_event **out, duel_error *err) {
    *out = NULL;
    const erm *scorer = e->arms[a->arm].erm ? e->arms[a->arm].erm : e->erm;
    bool arena = a->arena_arm >= 0;
    const erm *scorer2 = !arena                      ? scorer
                         : e->arms[a->arena_arm].erm ? e->arms[a->arena_arm].erm
                                                     : e->erm;
    int M = a->num_candidates, E = scorer->config.num_heads, half = M / 2;
    bool ref = e->features == ENGINE_FEATURES_REFERENCE;
    model *fm = e->arms[ref ? e->ref_arm : a->arm].model;
    int H = model_get_config(fm)->hidden_size, D = 2 * H;
    if (D != scorer->config.d_feat || D != scorer2->config.d_feat)
        return duel_error_set(err, DUEL_EINVAL, "duel: features of %d floats, the ERM takes %d",
                              D, D != scorer->config.d_feat ? scorer->config.d_feat
                                                            : scorer2->config.d_feat);
    if (scorer2->config.num_heads != E)
        return duel_error_set(err, DUEL_EINVAL, "arena: the arms' ERMs have %d and %d heads", E,
                              scorer2->config.num_heads);
    if (a->lost) return duel_error_set(err, DUEL_ENOMEM, "duel: out of memory for candidates");
    for (int i = 0; i < M; i++)
        if (!a->cand_tokens[i] || a->cand_counts[i] < 1)
            return duel_error_set(err, DUEL_EINVAL, "duel: candidate %d has no tokens", i);
    engine_event *ev = calloc(1, sizeof *ev);
    float *features = malloc((size_t)M * D * sizeof *features);
    float *rewards = malloc((size_t)M * E * sizeof *rewards);
    double *ref_logprobs = NULL;
    int rc = DUEL_OK;
    if (!ev || !features || !rewards) {
        rc = duel_error_set(err, DUEL_ENOMEM, "duel: out of memory for features");
        goto fail;
    }
    double t0 = duel_time_seconds();
    if (ref) {
        if (!(ref_logprobs = malloc((size_t)M * sizeof *ref_logprobs))) {
            rc = duel_error_set(err, DUEL_ENOMEM, "duel: out of memory for features");
            goto fail;
        }
        if ((rc = reference_features(e, fm, a, features, ref_logprobs, err))) goto fail;
    } else {
        if (!prompt_hidden || !a->cand_hidden) {
            rc = duel_error_set(err, DUEL_EINVAL, "duel: no hidden states for policy features");
            goto fail;
        }
        for (int i = 0; i < M; i++) {
            float *row = features + (size_t)i * D;
            memcpy(row, prompt_hidden, (size_t)H * sizeof *row);
            memcpy(row + H, a->cand_hidden + (size_t)i * H, (size_t)H * sizeof *row);
        }
    }
    double t1 = duel_time_seconds();
    if (arena) {
        /* Each half scored by its own arm's ERM; each arm's best by its own ensemble mean. */
        if ((rc = erm_score(scorer, features, half, rewards, err)) ||
            (rc = erm_score(scorer2, features + (size_t)half * D, M - half,
                            rewards + (size_t)half * E, err)))
            goto fail;
    } else if ((rc = erm_score(scorer, features, M, rewards, err))) {
        goto fail;
    }
    double t2 = duel_time_seconds();
    duel_rng rng;
    duel_rng_seed(&rng, a->seed ^ ENGINE_DUEL_SEED_SALT);
    if (arena) {
        int first = 0, second = 0;
        if ((rc = duel_select_arena(rewards, half, E, rewards + (size_t)half * E, M - half, E,
                                    &first, &second, err)))
            goto fail;
        ev->pair = (duel_pair){first, half + second, -1, -1};
        ev->arena_split = half;
    } else if ((rc = duel_select(a->strategy, rewards, M, E, &rng, &ev->pair, err))) {
        goto fail;
    }
    duel_place(&ev->pair, &rng, &ev->placement);
    if ((rc = duel_estimated_regret(rewards, M, E, ev->placement.a, ev->placement.b,
                                    &ev->regret_estimate, err)))
        goto fail;
    double t3 = duel_time_seconds();
    ev->kind = ENGINE_EVENT_DUEL_READY;
    ev->request_id = a->id;
    ev->user = a->user;
    ev->count = M;
    ev->strategy = a->strategy;
    ev->features = features;
    ev->ref_logprobs = ref_logprobs;
    ev->d_feat = D;
    ev->rewards = rewards;
    ev->num_heads = E;
    ev->decode_ms = decode_ms;
    ev->features_ms = ref ? (t1 - t0) * 1e3 : 0;
    ev->score_ms = (t2 - t1) * 1e3;
    ev->select_ms = (t3 - t2) * 1e3;
    *out = ev;
    return DUEL_OK;
fail:
    free(features);
    free(rewards);
    free(ref_logprobs);
    free(ev);
    return rc;
}

/* Engine thread: a scheduler request to cancel after the current step (cancelling inside the
 * step's callbacks would free sequences the step is walking). Out of memory: the half runs to
 * its end instead. */
static void defer_cancel(engine *e, uint64_t sched_id) {
    if (e->num_deferred == e->cap_deferred) {
        int cap = e->cap_deferred ? 2 * e->cap_deferred : 8;
        uint64_t *grown = realloc(e->deferred_cancels, (size_t)cap * sizeof *grown);
        if (!grown) return;
        e->deferred_cancels = grown;
        e->cap_deferred = cap;
    }
    e->deferred_cancels[e->num_deferred++] = sched_id;
}

static void on_sched_event(void *ctx, const sched_event *se);

static void flush_deferred_cancels(engine *e) {
    while (e->num_deferred > 0) {
        uint64_t id = e->deferred_cancels[--e->num_deferred];
        sched_cancel(e->sched, id, on_sched_event, e, NULL); /* ENOTFOUND: it ended meanwhile */
    }
}

/* An arena half's DONE. Returns true when the other half is still out (this one is recorded:
 * its counts, and a failure or cancel, which cancels the other half); false for the last half,
 * whose DONE ends the request as usual. */
static bool arena_half_done(engine *e, engine_active *a, int half, const sched_event *se) {
    a->part_done[half] = true;
    if (--a->parts_left == 0) return false;
    const sched_request_stats *st = se->stats;
    a->counts.prompt_computed += st->prompt_computed;
    a->counts.cached_tokens += st->cached_tokens;
    a->counts.recomputed_tokens += st->recomputed_tokens;
    a->counts.generated_tokens += st->generated_tokens;
    a->counts.preemptions += st->preemptions;
    if (se->cancelled) a->cancelled = true;
    if (se->status && !a->fail_status) {
        a->fail_status = se->status;
        snprintf(a->fail_message, sizeof a->fail_message, "%s",
                 se->message ? se->message : "failed");
    }
    if (se->cancelled || se->status) defer_cancel(e, half ? a->sched_id : a->arena_sched_id);
    return true;
}

/* The scheduler's callback (engine thread): deep-copies into an engine_event. */
static void on_sched_event(void *ctx, const sched_event *se) {
    engine *e = ctx;
    const engine_part *part = se->user;
    engine_active *a = part->owner;
    bool arena = a->arena_arm >= 0;
    int offset = part->index ? a->num_candidates / 2 : 0;
    const engine_arm *arm = &e->arms[part->index ? a->arena_arm : a->arm];
    int hidden_size = model_get_config(arm->model)->hidden_size;
    if (arena && se->kind == SCHED_EVENT_DONE && arena_half_done(e, a, part->index, se)) return;
    engine_event *ev = calloc(1, sizeof *ev);
    if (!ev) goto done;
    ev->request_id = a->id;
    ev->user = a->user;
    switch (se->kind) {
    case SCHED_EVENT_PROGRESS:
        ev->kind = ENGINE_EVENT_PROGRESS;
        ev->count = se->count;
        ev->candidates = copy_ints(se->candidates, se->count);
        ev->tokens = copy_ints(se->tokens, se->count);
        if (ev->candidates)
            for (int i = 0; i < se->count; i++) ev->candidates[i] += offset;
        break;
    case SCHED_EVENT_CANDIDATE: {
        ev->kind = ENGINE_EVENT_CANDIDATE;
        ev->candidate = se->candidate + offset;
        if (arena) ev->arm = strdup(arm->name);
        ev->count = se->count;
        ev->tokens = copy_ints(se->tokens, se->count);
        ev->logprob_sum = se->logprob_sum;
        ev->finish_reason = se->finish_reason == SCHED_FINISH_STOP     ? ENGINE_FINISH_STOP
                            : se->finish_reason == SCHED_FINISH_LENGTH ? ENGINE_FINISH_LENGTH
                                                                       : ENGINE_FINISH_CONTEXT;
        ev->finish_ms = (se->finish_time - a->submit_time) * 1e3;
        if (a->duel && se->candidate >= 0 && se->candidate + offset < a->num_candidates) {
            int c = se->candidate + offset;
            free(a->cand_tokens[c]);
            a->cand_tokens[c] = copy_ints(se->tokens, se->count);
            a->cand_counts[c] = se->count;
            if (!a->cand_tokens[c]) a->lost = true;
            if (se->hidden && a->cand_hidden)
                memcpy(a->cand_hidden + (size_t)c * hidden_size, se->hidden,
                       (size_t)hidden_size * sizeof(float));
        }
        if (se->hidden && a->want_hidden) {
            ev->hidden = copy_floats(se->hidden, hidden_size);
            ev->hidden_size = hidden_size;
        }
        if (arm->tokenizer) {
            int n = se->count - (se->finish_reason == SCHED_FINISH_STOP ? 1 : 0);
            size_t len = 0;
            if (tokenizer_decode(arm->tokenizer, se->tokens, (size_t)n, true, &ev->text, &len,
                                 NULL))
                ev->text = NULL;
        }
        break;
    }
    case SCHED_EVENT_DONE: {
        const sched_request_stats *st = se->stats;
        ev->kind = se->cancelled ? ENGINE_EVENT_CANCELLED
                   : se->status  ? ENGINE_EVENT_ERROR
                                 : ENGINE_EVENT_FINISHED;
        ev->status = se->status;
        if (se->status) ev->message = strdup(se->message ? se->message : "failed");
        double t0 = st->submit_time;
        ev->timings.queued_ms = st->first_scheduled_time > 0 ? (st->first_scheduled_time - t0) * 1e3 : -1;
        ev->timings.first_token_ms = st->prompt_done_time > 0 ? (st->prompt_done_time - t0) * 1e3 : -1;
        ev->timings.total_ms = (st->done_time - t0) * 1e3;
        ev->counts = (engine_counts){st->prompt_tokens,     st->prompt_computed,
                                     st->cached_tokens,     st->recomputed_tokens,
                                     st->generated_tokens,  st->preemptions};
        if (arena) { /* the last half: what both did, and the first failure of either */
            a->counts.prompt_tokens = st->prompt_tokens;
            a->counts.prompt_computed += st->prompt_computed;
            a->counts.cached_tokens += st->cached_tokens;
            a->counts.recomputed_tokens += st->recomputed_tokens;
            a->counts.generated_tokens += st->generated_tokens;
            a->counts.preemptions += st->preemptions;
            ev->counts = a->counts;
            int status = a->fail_status ? a->fail_status : se->status;
            const char *message = a->fail_status ? a->fail_message : se->message;
            bool cancelled = !status && (a->cancelled || se->cancelled);
            ev->kind = cancelled ? ENGINE_EVENT_CANCELLED
                       : status  ? ENGINE_EVENT_ERROR
                                 : ENGINE_EVENT_FINISHED;
            ev->status = status;
            free(ev->message);
            ev->message = status ? strdup(message ? message : "failed") : NULL;
        }
        if (se->prompt_hidden && a->want_hidden) {
            ev->hidden = copy_floats(se->prompt_hidden, hidden_size);
            ev->hidden_size = hidden_size;
        }
        if (a->duel && ev->kind == ENGINE_EVENT_FINISHED) {
            duel_error derr = {0};
            engine_event *ready = NULL;
            int rc = run_duel(e, a, se->prompt_hidden, ev->timings.total_ms, &ready, &derr);
            if (rc) {
                ev->kind = ENGINE_EVENT_ERROR;
                ev->status = rc;
                ev->message = strdup(derr.message[0] ? derr.message : "duel selection failed");
            } else {
                push_event(e, ready);
            }
        }
        break;
    }
    }
done:;
    int arm_index = a->arm, arena_index = a->arena_arm;
    bool ended = se->kind == SCHED_EVENT_DONE;
    if (ended) {
        /* Ended before the event is visible, so that a cancel after it reports "finished". */
        set_state(e, a->id, ENGINE_STATE_ENDED);
        remove_active(e, a);
        pthread_mutex_lock(&e->lock);
        if (!ev || ev->kind == ENGINE_EVENT_ERROR) e->stats.requests_failed++;
        else if (ev->kind == ENGINE_EVENT_CANCELLED) e->stats.requests_cancelled++;
        else e->stats.requests_finished++;
        pthread_mutex_unlock(&e->lock);
    }
    if (ev) push_event(e, ev);
    if (ended) { /* after the request's last event */
        arm_unref(e, arm_index);
        if (arena_index >= 0) arm_unref(e, arena_index);
    }
}

/* ---- PILAF (engine thread) ------------------------------------------------------------------ */

typedef struct pilaf_job {
    uint64_t id;
    void *user;
    int arm;
    double submit_time, first_time;
    duel_pilaf_mode mode;
    double beta;
    sampler_params sampling;
    int prompt_len, max_new, max_ctx, vocab, n_stop;
    int32_t stop[SCHED_MAX_STOP_TOKENS];
    int32_t *prompt;
    duel_rng rng[2], sel_rng;
    model_kv_cache *kv_pol[2], *kv_ref[2];
    float *lp[2], *lr[2], *mix;
    int32_t *tokens[2];
    int count[2];
    double logprob[2];
    bool started, done[2];
    int64_t generated;
} pilaf_job;

static void pilaf_free(pilaf_job *j) {
    if (!j) return;
    for (int i = 0; i < 2; i++) {
        model_kv_cache_free(j->kv_pol[i]);
        model_kv_cache_free(j->kv_ref[i]);
        free(j->lp[i]);
        free(j->lr[i]);
        free(j->tokens[i]);
    }
    free(j->mix);
    free(j->prompt);
    free(j);
}

static void pilaf_remove(engine *e, int at) {
    int arm = e->pilaf[at]->arm;
    pilaf_free(e->pilaf[at]);
    e->pilaf[at] = e->pilaf[--e->num_pilaf];
    arm_unref(e, arm);
}

static void pilaf_submit(engine *e, engine_command *cmd) {
    const sched_request_params *p = &cmd->params;
    model *pol = e->arms[p->model].model;
    pilaf_job *j = calloc(1, sizeof *j);
    if (e->num_pilaf == e->cap_pilaf) {
        int cap = e->cap_pilaf ? 2 * e->cap_pilaf : 8;
        pilaf_job **grown = realloc(e->pilaf, (size_t)cap * sizeof *grown);
        if (grown) {
            e->pilaf = grown;
            e->cap_pilaf = cap;
        }
    }
    if (!j || e->num_pilaf == e->cap_pilaf) {
        free(j);
        set_state(e, cmd->id, ENGINE_STATE_ENDED);
        push_error(e, cmd->id, p->user, DUEL_ENOMEM, "out of memory for a pilaf request");
        return;
    }
    j->id = cmd->id;
    j->user = p->user;
    j->arm = p->model;
    j->submit_time = p->submit_time;
    j->beta = cmd->pilaf_beta;
    j->sampling = p->sampling;
    j->prompt_len = p->prompt_len;
    j->vocab = model_output_size(pol);
    int ctx = model_get_config(pol)->max_position_embeddings;
    int rctx = model_get_config(e->arms[e->ref_arm].model)->max_position_embeddings;
    j->max_ctx = ctx < rctx ? ctx : rctx;
    j->max_new = p->max_new_tokens;
    if (j->max_new > j->max_ctx - j->prompt_len) j->max_new = j->max_ctx - j->prompt_len;
    j->n_stop = p->num_stop_tokens;
    memcpy(j->stop, p->stop_tokens, (size_t)p->num_stop_tokens * sizeof *j->stop);
    j->prompt = cmd->prompt; /* taken over */
    cmd->prompt = NULL;
    duel_rng_seed(&j->sel_rng, p->seed ^ ENGINE_DUEL_SEED_SALT);
    j->mode = duel_pilaf_draw_mode(&j->sel_rng);
    for (int i = 0; i < 2; i++) duel_rng_seed(&j->rng[i], p->seed + (uint64_t)i);
    e->pilaf[e->num_pilaf++] = j;
    e->arms[j->arm].refs++;
}

/* Emits the end of a job: DUEL_READY + FINISHED, or an ERROR; the caller removes it. */
static void pilaf_finish(engine *e, pilaf_job *j, int status, const char *message) {
    double now = duel_time_seconds();
    set_state(e, j->id, ENGINE_STATE_ENDED);
    if (status) {
        push_error(e, j->id, j->user, status, message);
        return;
    }
    engine_event *ready = calloc(1, sizeof *ready), *fin = calloc(1, sizeof *fin);
    if (!ready || !fin) {
        free(ready);
        free(fin);
        push_error(e, j->id, j->user, DUEL_ENOMEM, "out of memory");
        return;
    }
    ready->kind = ENGINE_EVENT_DUEL_READY;
    ready->request_id = j->id;
    ready->user = j->user;
    ready->count = 2;
    ready->strategy = DUEL_STRATEGY_PILAF;
    ready->pair = (duel_pair){0, 1, -1, -1};
    duel_place(&ready->pair, &j->sel_rng, &ready->placement);
    ready->pilaf_mixed = j->mode == DUEL_PILAF_MIXED;
    ready->decode_ms = (now - j->submit_time) * 1e3;
    push_event(e, ready);
    fin->kind = ENGINE_EVENT_FINISHED;
    fin->request_id = j->id;
    fin->user = j->user;
    fin->timings.queued_ms = 0;
    fin->timings.first_token_ms = (j->first_time - j->submit_time) * 1e3;
    fin->timings.total_ms = (now - j->submit_time) * 1e3;
    fin->counts.prompt_tokens = j->prompt_len;
    fin->counts.prompt_computed = (int64_t)j->prompt_len * (j->mode == DUEL_PILAF_MIXED ? 4 : 2);
    fin->counts.generated_tokens = j->generated;
    push_event(e, fin);
}

/* Prefill (first call) or one decode step of every unfinished candidate. Returns 0, or an error
 * after which the job must be failed. */
static int pilaf_step(engine *e, pilaf_job *j, duel_error *err) {
    model *pol = e->arms[j->arm].model, *ref = e->arms[e->ref_arm].model;
    bool mixed = j->mode == DUEL_PILAF_MIXED;
    int V = j->vocab, rc;
    if (!j->started) {
        j->started = true;
        int cap = j->prompt_len + j->max_new;
        if (!(j->mix = malloc((size_t)V * sizeof *j->mix)))
            return duel_error_set(err, DUEL_ENOMEM, "pilaf: out of memory");
        for (int i = 0; i < 2; i++) {
            j->lp[i] = malloc((size_t)V * sizeof(float));
            j->lr[i] = mixed ? malloc((size_t)V * sizeof(float)) : NULL;
            j->tokens[i] = malloc(((size_t)j->max_new + 1) * sizeof(int32_t));
            if (!j->lp[i] || (mixed && !j->lr[i]) || !j->tokens[i])
                return duel_error_set(err, DUEL_ENOMEM, "pilaf: out of memory");
            if ((rc = model_kv_cache_create(pol, cap, &j->kv_pol[i], err)) ||
                (rc = model_forward(pol, j->kv_pol[i], j->prompt, j->prompt_len, j->lp[i], false,
                                    NULL, err)))
                return rc;
            if (mixed && ((rc = model_kv_cache_create(ref, cap, &j->kv_ref[i], err)) ||
                          (rc = model_forward(ref, j->kv_ref[i], j->prompt, j->prompt_len,
                                              j->lr[i], false, NULL, err))))
                return rc;
        }
    }
    for (int i = 0; i < 2; i++) {
        if (j->done[i]) continue;
        const float *logits = j->lp[i];
        if (mixed) {
            if ((rc = duel_pilaf_mix_logits(j->lp[i], j->lr[i], V, j->beta, i == 0 ? j->mix : NULL,
                                            i == 1 ? j->mix : NULL, err)))
                return rc;
            logits = j->mix;
        }
        float lp = 0;
        int32_t tok = sampler_sample(logits, V, &j->sampling, &j->rng[i], &lp, err);
        if (tok < 0) return tok;
        j->tokens[i][j->count[i]++] = tok;
        j->logprob[i] += lp;
        j->generated++;
        bool stop = false;
        for (int k = 0; k < j->n_stop; k++) stop |= j->stop[k] == tok;
        engine_finish_reason reason = ENGINE_FINISH_STOP;
        if (!stop && j->count[i] >= j->max_new)
            reason = j->prompt_len + j->count[i] >= j->max_ctx ? ENGINE_FINISH_CONTEXT
                                                                : ENGINE_FINISH_LENGTH;
        if (stop || j->count[i] >= j->max_new) {
            j->done[i] = true;
            engine_event *ev = calloc(1, sizeof *ev);
            if (!ev) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
            ev->kind = ENGINE_EVENT_CANDIDATE;
            ev->request_id = j->id;
            ev->user = j->user;
            ev->candidate = i;
            ev->count = j->count[i];
            ev->tokens = copy_ints(j->tokens[i], j->count[i]);
            ev->logprob_sum = j->logprob[i];
            ev->finish_reason = reason;
            ev->finish_ms = (duel_time_seconds() - j->submit_time) * 1e3;
            const tokenizer *tok_ = e->arms[j->arm].tokenizer;
            if (tok_) {
                size_t len = 0;
                if (tokenizer_decode(tok_, j->tokens[i], (size_t)(j->count[i] - (stop ? 1 : 0)),
                                     true, &ev->text, &len, NULL))
                    ev->text = NULL;
            }
            push_event(e, ev);
            continue;
        }
        if ((rc = model_forward(pol, j->kv_pol[i], &tok, 1, j->lp[i], false, NULL, err))) return rc;
        if (mixed && (rc = model_forward(ref, j->kv_ref[i], &tok, 1, j->lr[i], false, NULL, err)))
            return rc;
    }
    if (j->first_time == 0) j->first_time = duel_time_seconds();
    return DUEL_OK;
}

static void pilaf_run_all(engine *e) {
    for (int at = 0; at < e->num_pilaf;) {
        pilaf_job *j = e->pilaf[at];
        duel_error err = {0};
        int rc = pilaf_step(e, j, &err);
        if (rc || (j->done[0] && j->done[1])) {
            pilaf_finish(e, j, rc, err.message[0] ? err.message : "pilaf decode failed");
            pilaf_remove(e, at);
            continue;
        }
        at++;
    }
}

static bool pilaf_cancel(engine *e, uint64_t id) {
    for (int at = 0; at < e->num_pilaf; at++)
        if (e->pilaf[at]->id == id) {
            engine_event *ev = calloc(1, sizeof *ev);
            set_state(e, id, ENGINE_STATE_ENDED);
            if (ev) {
                ev->kind = ENGINE_EVENT_CANCELLED;
                ev->request_id = id;
                ev->user = e->pilaf[at]->user;
                push_event(e, ev);
            }
            pilaf_remove(e, at);
            return true;
        }
    return false;
}

/* ---- the engine thread --------------------------------------------------------------------- */

static int forward_arm(void *ctx, int model_index, kv_pool *pool, const model_batch_entry *entries,
                       int n, duel_error *err) {
    engine *e = ctx;
    return model_forward_batch(e->arms[model_index].model, pool, entries, n, err);
}

/* ADD_ARM: the slot was filled by engine_add_arm; between two steps, so no batch is using the
 * scheduler's model table. */
static void apply_add_arm(engine *e, int slot) {
    engine_arm *arm = &e->arms[slot];
    const model_config *c = model_get_config(arm->model);
    sched_model_info info = {.model_id = arm->model_id,
                             .vocab_size = model_output_size(arm->model),
                             .hidden_size = c->hidden_size,
                             .max_context = c->max_position_embeddings > 1
                                                ? c->max_position_embeddings
                                                : 2048};
    duel_error err = {0};
    pthread_mutex_lock(&e->lock);
    int rc = sched_set_model(e->sched, slot, &info, &err);
    if (rc) {
        char message[DUEL_ERROR_MESSAGE_MAX];
        snprintf(message, sizeof message, "%s", err.message);
        memset(arm, 0, sizeof *arm);
        arm->add_status = rc;
        snprintf(arm->add_message, sizeof arm->add_message, "%s", message);
    } else {
        arm->state = ARM_RESIDENT;
        arm->refs = 0;
        e->stats.arms_added++;
    }
    pthread_cond_broadcast(&e->arm_applied);
    pthread_mutex_unlock(&e->lock);
}

static void handle_command(engine *e, engine_command *cmd) {
    duel_error err = {0};
    if (cmd->kind == ENGINE_CMD_ADD_ARM) {
        apply_add_arm(e, (int)cmd->id);
        return;
    }
    if (cmd->kind == ENGINE_CMD_RETIRE_ARM) {
        /* Requests submitted before the retirement were queued before this command: refs
         * already counts them. */
        if (e->arms[cmd->id].refs == 0) arm_release(e, (int)cmd->id);
        return;
    }
    if (cmd->kind == ENGINE_CMD_CANCEL) {
        int at = find_active(e, cmd->id);
        /* Not active: it ended after engine_cancel checked, and its event is already queued. */
        if (at < 0) {
            pilaf_cancel(e, cmd->id);
            return;
        }
        engine_active *a = e->active[at];
        if (a->arena_arm >= 0 && a->part_done[0]) { /* only the second half is left */
            sched_cancel(e->sched, a->arena_sched_id, on_sched_event, e, &err);
            return;
        }
        /* An arena's first half cancelled defers the second's cancel (flushed after commands). */
        sched_cancel(e->sched, a->sched_id, on_sched_event, e, &err);
        return;
    }
    if (cmd->duel && cmd->strategy == DUEL_STRATEGY_PILAF) {
        pilaf_submit(e, cmd);
        return;
    }
    engine_active *a = calloc(1, sizeof *a);
    if (e->num_active == e->cap_active) {
        int cap = e->cap_active ? e->cap_active * 2 : 16;
        engine_active **grown = realloc(e->active, (size_t)cap * sizeof *grown);
        if (grown) {
            e->active = grown;
            e->cap_active = cap;
        }
    }
    if (!a || e->num_active == e->cap_active) {
        free(a);
        set_state(e, cmd->id, ENGINE_STATE_ENDED);
        push_error(e, cmd->id, cmd->params.user, DUEL_ENOMEM, "out of memory for a request");
        return;
    }
    a->id = cmd->id;
    a->arm = cmd->params.model;
    a->arena_arm = cmd->arena_model;
    a->parts[0] = (engine_part){a, 0};
    a->parts[1] = (engine_part){a, 1};
    a->parts_left = cmd->arena_model >= 0 ? 2 : 1;
    a->user = cmd->params.user;
    a->submit_time = cmd->params.submit_time;
    a->want_hidden = cmd->want_hidden;
    if (cmd->duel) {
        int M = cmd->params.num_candidates * (cmd->arena_model >= 0 ? 2 : 1);
        a->duel = true;
        a->strategy = cmd->strategy;
        a->seed = cmd->params.seed;
        a->num_candidates = M;
        a->prompt_len = cmd->params.prompt_len;
        a->hidden_size = model_get_config(e->arms[a->arm].model)->hidden_size;
        a->prompt = cmd->prompt; /* taken over */
        cmd->prompt = NULL;
        a->cand_tokens = calloc((size_t)M, sizeof *a->cand_tokens);
        a->cand_counts = calloc((size_t)M, sizeof *a->cand_counts);
        if (e->features == ENGINE_FEATURES_POLICY)
            a->cand_hidden = calloc((size_t)M * (size_t)a->hidden_size, sizeof(float));
        if (!a->cand_tokens || !a->cand_counts ||
            (e->features == ENGINE_FEATURES_POLICY && !a->cand_hidden)) {
            set_state(e, cmd->id, ENGINE_STATE_ENDED);
            push_error(e, cmd->id, a->user, DUEL_ENOMEM, "out of memory for a duel request");
            active_free(a);
            return;
        }
    }
    cmd->params.user = &a->parts[0];
    int rc = sched_submit(e->sched, &cmd->params, &a->sched_id, &err);
    if (rc) {
        set_state(e, cmd->id, ENGINE_STATE_ENDED);
        push_error(e, cmd->id, a->user, rc, err.message);
        active_free(a);
        return;
    }
    e->active[e->num_active++] = a;
    e->arms[a->arm].refs++;
    if (a->arena_arm >= 0) {
        e->arms[a->arena_arm].refs++;
        sched_request_params second = cmd->params;
        second.model = a->arena_arm;
        second.seed = cmd->params.seed + (uint64_t)cmd->params.num_candidates;
        second.user = &a->parts[1];
        if ((rc = sched_submit(e->sched, &second, &a->arena_sched_id, &err))) {
            /* Validated at submit, so only out of memory: the first half is cancelled and the
             * request ends with this error. */
            a->fail_status = rc;
            snprintf(a->fail_message, sizeof a->fail_message, "%s", err.message);
            a->part_done[1] = true;
            a->parts_left = 1;
            sched_cancel(e->sched, a->sched_id, on_sched_event, e, NULL);
        }
    }
}

static void command_free(engine_command *cmd) {
    if (!cmd) return;
    free(cmd->prompt);
    free(cmd);
}

static void update_stats(engine *e) {
    sched_stats ss;
    kv_pool_stats ps;
    sched_stats_get(e->sched, &ss);
    kv_pool_stats_get(e->pool, &ps);
    pthread_mutex_lock(&e->lock);
    engine_stats *o = &e->stats;
    o->steps = ss.steps;
    o->tokens = ss.tokens;
    o->decode_tokens = ss.decode_tokens;
    o->preemptions = ss.preemptions;
    o->cached_tokens = ss.cached_tokens;
    o->requests_submitted = ss.requests_submitted;
    /* requests_finished/cancelled/failed are counted by on_sched_event as it pushes each
     * request's last event (so they agree with the events a caller has seen; an arena request
     * is two scheduler requests but one engine request). */
    o->running = ss.running;
    o->waiting = ss.waiting;
    o->active_requests = ss.active_requests;
    o->kv_blocks = ps.num_blocks;
    o->kv_free_blocks = ps.free_blocks;
    o->kv_cached_blocks = ps.cached_blocks;
    o->kv_used_blocks = ps.used_blocks;
    o->prefix_hit_blocks = ps.hit_blocks;
    o->prefix_miss_blocks = ps.miss_blocks;
    o->arms_resident = o->arms_retiring = 0;
    for (int i = 0; i < e->num_arms; i++) {
        o->arms_resident += e->arms[i].state == ARM_RESIDENT;
        o->arms_retiring += e->arms[i].state == ARM_RETIRING;
    }
    pthread_mutex_unlock(&e->lock);
}

static void *engine_main(void *arg) {
    engine *e = arg;
    for (;;) {
        void *item = NULL;
        /* Idle: sleep until a command comes. Busy: take what is there and step. */
        bool busy = sched_has_work(e->sched) || e->num_pilaf > 0;
        engine_queue_pop(e->commands, busy ? 0 : -1, &item);
        while (item) {
            handle_command(e, item);
            command_free(item);
            engine_queue_pop(e->commands, 0, &item);
        }
        flush_deferred_cancels(e);
        if (engine_queue_is_closed(e->commands)) break;
        if (sched_has_work(e->sched)) {
            duel_error err = {0};
            /* A failed step has already failed its requests with ERROR events. */
            sched_step(e->sched, on_sched_event, e, &err);
            flush_deferred_cancels(e);
        }
        if (e->num_pilaf) pilaf_run_all(e);
        update_stats(e);
    }
    return NULL;
}

/* ---- public API ---------------------------------------------------------------------------- */

int engine_arm_index(engine *e, const char *arm) {
    if (!e) return -1;
    pthread_mutex_lock(&e->lock);
    int at = arm_index_locked(e, arm);
    pthread_mutex_unlock(&e->lock);
    return at;
}

int engine_add_arm(engine *e, const engine_model_params *mp, const erm *arm_erm, void *user,
                   duel_error *err) {
    if (!e || !mp) return duel_error_set(err, DUEL_EINVAL, "engine_add_arm: NULL argument");
    if (!mp->model || !mp->arm || !mp->arm[0] || strlen(mp->arm) >= ENGINE_MAX_ARM_NAME)
        return duel_error_set(err, DUEL_EINVAL,
                              "engine_add_arm: a model and an arm name of 1 to %d bytes",
                              ENGINE_MAX_ARM_NAME - 1);
    const model_config *c = model_get_config(mp->model);
    const kv_pool_params *pp = kv_pool_get_params(e->pool);
    if (c->num_layers != pp->num_layers || c->num_kv_heads != pp->num_kv_heads ||
        c->head_dim != pp->head_dim)
        return duel_error_set(err, DUEL_EINVAL,
                              "engine_add_arm: arm \"%s\" has a KV shape (%d layers x %d kv "
                              "heads x %d) other than the pool's (%d x %d x %d)",
                              mp->arm, c->num_layers, c->num_kv_heads, c->head_dim,
                              pp->num_layers, pp->num_kv_heads, pp->head_dim);
    int rc = check_arm_erm(e, mp->model, arm_erm, mp->arm, err);
    if (rc) return rc;
    engine_command *cmd = calloc(1, sizeof *cmd);
    if (!cmd) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    pthread_mutex_lock(&e->lock);
    int slot = -1;
    for (int i = 0; i < SCHED_MAX_MODELS; i++) {
        if (e->arms[i].state != ARM_FREE && strcmp(e->arms[i].name, mp->arm) == 0) {
            pthread_mutex_unlock(&e->lock);
            free(cmd);
            return duel_error_set(err, DUEL_EINVAL, "engine_add_arm: arm \"%s\" is %s",
                                  mp->arm,
                                  e->arms[i].state == ARM_RETIRING ? "still retiring"
                                                                    : "already resident");
        }
        if (slot < 0 && e->arms[i].state == ARM_FREE) slot = i;
    }
    if (slot < 0) {
        pthread_mutex_unlock(&e->lock);
        free(cmd);
        return duel_error_set(err, DUEL_ELIMIT,
                              "engine_add_arm: %d arms are resident or retiring (the most)",
                              SCHED_MAX_MODELS);
    }
    engine_arm *arm = &e->arms[slot];
    memset(arm, 0, sizeof *arm);
    arm->state = ARM_ADDING;
    snprintf(arm->name, sizeof arm->name, "%s", mp->arm);
    arm->model = mp->model;
    arm->tokenizer = mp->tokenizer;
    arm->erm = arm_erm;
    arm->user = user;
    arm->model_id = e->next_model_id++;
    for (int k = 0; k < c->num_eos_token_ids && k < MODEL_CONFIG_MAX_EOS; k++)
        if (c->eos_token_ids[k] >= 0 && c->eos_token_ids[k] < c->vocab_size)
            arm->eos[arm->num_eos++] = c->eos_token_ids[k];
    if (slot >= e->num_arms) e->num_arms = slot + 1;
    cmd->kind = ENGINE_CMD_ADD_ARM;
    cmd->id = (uint64_t)slot;
    if ((rc = engine_queue_push(e->commands, cmd, err))) {
        memset(arm, 0, sizeof *arm);
        pthread_mutex_unlock(&e->lock);
        free(cmd);
        return rc;
    }
    while (arm->state == ARM_ADDING) pthread_cond_wait(&e->arm_applied, &e->lock);
    if (arm->state != ARM_RESIDENT) {
        rc = duel_error_set(err, arm->add_status ? arm->add_status : DUEL_EINVAL,
                            "engine_add_arm: %s", arm->add_message);
        arm->add_status = 0;
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}

int engine_retire_arm(engine *e, const char *name, duel_error *err) {
    if (!e || !name) return duel_error_set(err, DUEL_EINVAL, "engine_retire_arm: NULL argument");
    engine_command *cmd = calloc(1, sizeof *cmd);
    if (!cmd) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    pthread_mutex_lock(&e->lock);
    int slot = arm_index_locked(e, name), rc = DUEL_OK;
    if (slot < 0)
        rc = duel_error_set(err, DUEL_ENOTFOUND, "retire: arm \"%s\" is not resident", name);
    else if (slot == e->ref_arm)
        rc = duel_error_set(err, DUEL_EINVAL,
                            "retire: arm \"%s\" is the reference arm (features, PILAF)", name);
    if (!rc) {
        cmd->kind = ENGINE_CMD_RETIRE_ARM;
        cmd->id = (uint64_t)slot;
        rc = engine_queue_push(e->commands, cmd, err);
        if (!rc) {
            e->arms[slot].state = ARM_RETIRING;
            cmd = NULL;
        }
    }
    pthread_mutex_unlock(&e->lock);
    free(cmd);
    return rc;
}

int engine_create(const engine_params *params, engine **out, duel_error *err) {
    if (out) *out = NULL;
    if (!params || !out) return duel_error_set(err, DUEL_EINVAL, "engine_create: NULL argument");
    if (params->num_models < 1 || params->num_models > SCHED_MAX_MODELS || !params->models)
        return duel_error_set(err, DUEL_EINVAL, "engine: %d models (1 to %d)", params->num_models,
                              SCHED_MAX_MODELS);
    engine *e = calloc(1, sizeof *e);
    if (!e) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->arm_applied, NULL);
    e->next_id = 1;
    int rc = DUEL_OK;
    sched_model_info infos[SCHED_MAX_MODELS];
    const model_config *c0 = NULL;
    for (int i = 0; i < params->num_models; i++) {
        const engine_model_params *mp = &params->models[i];
        if (!mp->model || !mp->arm || !mp->arm[0] || strlen(mp->arm) >= ENGINE_MAX_ARM_NAME) {
            rc = duel_error_set(err, DUEL_EINVAL,
                                "engine: model %d needs a model and an arm name of 1 to %d bytes",
                                i, ENGINE_MAX_ARM_NAME - 1);
            goto fail;
        }
        for (int j = 0; j < i; j++)
            if (strcmp(e->arms[j].name, mp->arm) == 0) {
                rc = duel_error_set(err, DUEL_EINVAL, "engine: arm \"%s\" given twice", mp->arm);
                goto fail;
            }
        const model_config *c = model_get_config(mp->model);
        if (!c0) c0 = c;
        if (c->num_layers != c0->num_layers || c->num_kv_heads != c0->num_kv_heads ||
            c->head_dim != c0->head_dim) {
            rc = duel_error_set(err, DUEL_EINVAL,
                                "engine: arm \"%s\" has a KV shape (%d layers x %d kv heads x %d) "
                                "other than arm \"%s\"'s (%d x %d x %d); they share one pool",
                                mp->arm, c->num_layers, c->num_kv_heads, c->head_dim,
                                params->models[0].arm, c0->num_layers, c0->num_kv_heads,
                                c0->head_dim);
            goto fail;
        }
        engine_arm *arm = &e->arms[i];
        snprintf(arm->name, sizeof arm->name, "%s", mp->arm);
        arm->state = ARM_RESIDENT;
        arm->model = mp->model;
        arm->tokenizer = mp->tokenizer;
        arm->model_id = (uint64_t)i + 1;
        for (int k = 0; k < c->num_eos_token_ids && k < MODEL_CONFIG_MAX_EOS; k++)
            if (c->eos_token_ids[k] >= 0 && c->eos_token_ids[k] < c->vocab_size)
                arm->eos[arm->num_eos++] = c->eos_token_ids[k];
        infos[i] = (sched_model_info){.model_id = (uint64_t)i + 1,
                                      .vocab_size = model_output_size(mp->model),
                                      .hidden_size = c->hidden_size,
                                      .max_context = c->max_position_embeddings > 1
                                                         ? c->max_position_embeddings
                                                         : 2048};
        e->num_arms++;
    }
    e->next_model_id = (uint64_t)e->num_arms + 1;
    if ((unsigned)params->features > ENGINE_FEATURES_POLICY) {
        rc = duel_error_set(err, DUEL_EINVAL, "engine: feature source %d (reference 0, policy 1)",
                            (int)params->features);
        goto fail;
    }
    e->features = params->features;
    e->erm = params->erm;
    e->ref_arm = 0;
    if (params->reference_arm) {
        e->ref_arm = engine_arm_index(e, params->reference_arm);
        if (e->ref_arm < 0) {
            rc = duel_error_set(err, DUEL_EINVAL, "engine: reference arm \"%s\" is not resident",
                                params->reference_arm);
            goto fail;
        }
    }
    if (e->erm) {
        for (int i = 0; i < e->num_arms; i++) {
            if (e->features == ENGINE_FEATURES_REFERENCE && i != e->ref_arm) continue;
            int H = model_get_config(e->arms[i].model)->hidden_size;
            if (e->erm->config.d_feat != 2 * H) {
                rc = duel_error_set(err, DUEL_EINVAL,
                                    "engine: the ERM takes %d features but arm \"%s\" gives "
                                    "2 x %d (its hidden size)",
                                    e->erm->config.d_feat, e->arms[i].name, H);
                goto fail;
            }
        }
    }
    kv_pool_params pp = {.num_layers = c0->num_layers,
                         .num_kv_heads = c0->num_kv_heads,
                         .head_dim = c0->head_dim,
                         .block_size = params->block_size,
                         .memory_budget_bytes = params->kv_memory_bytes ? params->kv_memory_bytes
                                                                        : ENGINE_DEFAULT_KV_BYTES,
                         .allocate_storage = true};
    if ((rc = kv_pool_create(&pp, &e->pool, err))) goto fail;
    sched_params sp = {.max_batch_tokens = params->max_batch_tokens,
                       .max_running = params->max_running,
                       .max_candidates = params->max_candidates ? params->max_candidates
                                                                : ENGINE_DEFAULT_MAX_CANDIDATES};
    if ((rc = sched_create(&sp, e->pool, infos, e->num_arms, forward_arm, e, &e->sched, err)))
        goto fail;
    if ((rc = engine_queue_create(0, &e->commands, err)) ||
        (rc = engine_queue_create(0, &e->events, err)))
        goto fail;
    {
        const kv_pool_params *got = kv_pool_get_params(e->pool);
        e->stats.kv_bytes_per_token = 2 * (size_t)got->num_layers * got->num_kv_heads *
                                      got->head_dim * sizeof(float);
        e->stats.block_size = got->block_size;
        e->stats.kv_blocks = got->num_blocks;
        e->stats.kv_free_blocks = got->num_blocks;
    }
    if (pthread_create(&e->thread, NULL, engine_main, e)) {
        rc = duel_error_set(err, DUEL_ENOMEM, "engine: cannot start its thread");
        goto fail;
    }
    e->thread_started = true;
    *out = e;
    return DUEL_OK;
fail:
    engine_destroy(e);
    return rc;
}

void engine_destroy(engine *e) {
    if (!e) return;
    if (e->thread_started) {
        engine_queue_close(e->commands);
        pthread_join(e->thread, NULL);
    }
    void *item;
    if (e->commands)
        for (engine_queue_pop(e->commands, 0, &item); item; engine_queue_pop(e->commands, 0, &item))
            command_free(item);
    if (e->events)
        for (engine_queue_pop(e->events, 0, &item); item; engine_queue_pop(e->events, 0, &item))
            engine_event_free(item);
    sched_destroy(e->sched);
    for (int i = 0; i < e->num_active; i++) active_free(e->active[i]);
    for (int i = 0; i < e->num_pilaf; i++) pilaf_free(e->pilaf[i]);
    free(e->pilaf);
    free(e->active);
    free(e->deferred_cancels);
    kv_pool_destroy(e->pool);
    kv_pool_destroy(e->ref_pool);
    engine_queue_destroy(e->commands);
    engine_queue_destroy(e->events);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->arm_applied);
    free(e->states);
    free(e);
}

static int submit_locked(engine *e, const engine_request *r, uint64_t *id, duel_error *err);

int engine_submit(engine *e, const engine_request *r, uint64_t *id, duel_error *err) {
    if (id) *id = 0;
    if (!e || !r || !id) return duel_error_set(err, DUEL_EINVAL, "engine_submit: NULL argument");
    /* Held from the arm's lookup until the command is queued: see the top of the file. */
    pthread_mutex_lock(&e->lock);
    int rc = submit_locked(e, r, id, err);
    pthread_mutex_unlock(&e->lock);
    return rc;
}

static int submit_locked(engine *e, const engine_request *r, uint64_t *id, duel_error *err) {
    int arm = arm_index_locked(e, r->arm);
    if (arm < 0) {
        char names[SCHED_MAX_MODELS * (ENGINE_MAX_ARM_NAME + 2)] = "";
        for (int i = 0; i < e->num_arms; i++) {
            if (e->arms[i].state != ARM_RESIDENT) continue;
            if (names[0]) strcat(names, ", ");
            strcat(names, e->arms[i].name);
        }
        return duel_error_set(err, DUEL_ENOTFOUND, "unknown or retired arm \"%s\" (resident: %s)",
                              r->arm ? r->arm : "(the first)", names);
    }
    const engine_arm *a = &e->arms[arm];
    int second = -1; /* arena: the second arm */
    if (r->duel && r->strategy == DUEL_STRATEGY_ARENA) {
        if (!r->arena_arm)
            return duel_error_set(err, DUEL_EINVAL, "arena request: no arena_arm (the second arm)");
        second = arm_index_locked(e, r->arena_arm);
        if (second < 0)
            return duel_error_set(err, DUEL_ENOTFOUND,
                                  "arena request: unknown or retired arena arm \"%s\"",
                                  r->arena_arm);
        if (second == arm)
            return duel_error_set(err, DUEL_EINVAL,
                                  "arena request: arm \"%s\" twice (one answer from each of two "
                                  "arms)",
                                  a->name);
        if (r->num_candidates < 2 || r->num_candidates % 2)
            return duel_error_set(err, DUEL_EINVAL,
                                  "arena request: %d candidates (an even number >= 2, half per "
                                  "arm)",
                                  r->num_candidates);
        if (e->features != ENGINE_FEATURES_REFERENCE)
            return duel_error_set(err, DUEL_EINVAL,
                                  "arena request: needs reference features (both arms' "
                                  "candidates on one feature model)");
        const erm *e1 = a->erm ? a->erm : e->erm, *e2 = e->arms[second].erm ? e->arms[second].erm
                                                                             : e->erm;
        if (!e1 || !e2)
            return duel_error_set(err, DUEL_EINVAL, "arena request: arm \"%s\" has no ERM",
                                  e1 ? e->arms[second].name : a->name);
        if (e1->config.num_heads != e2->config.num_heads)
            return duel_error_set(err, DUEL_EINVAL,
                                  "arena request: the arms' ERMs have %d and %d heads",
                                  e1->config.num_heads, e2->config.num_heads);
    } else if (r->duel && r->strategy == DUEL_STRATEGY_PILAF) {
        const model *ref = e->arms[e->ref_arm].model;
        if (r->num_candidates != 2)
            return duel_error_set(err, DUEL_EINVAL, "pilaf request: %d candidates (exactly 2)",
                                  r->num_candidates);
        if (!(r->pilaf_beta >= 0) || !isfinite(r->pilaf_beta))
            return duel_error_set(err, DUEL_EINVAL, "pilaf request: beta %g (finite, >= 0)",
                                  r->pilaf_beta);
        if (model_output_size(ref) != model_output_size(a->model))
            return duel_error_set(err, DUEL_EINVAL,
                                  "pilaf request: the reference arm \"%s\" has %d logits, arm "
                                  "\"%s\" %d",
                                  e->arms[e->ref_arm].name, model_output_size(ref), a->name,
                                  model_output_size(a->model));
        if (r->num_tokens >= model_get_config(ref)->max_position_embeddings)
            return duel_error_set(err, DUEL_ELIMIT,
                                  "pilaf request: the prompt does not fit the reference's context");
    } else if (r->duel) {
        if (!e->erm && !a->erm)
            return duel_error_set(err, DUEL_EINVAL, "duel request: the engine has no ERM");
        if (r->num_candidates < 2)
            return duel_error_set(err, DUEL_EINVAL, "duel request: %d candidates (at least 2)",
                                  r->num_candidates);
        if ((unsigned)r->strategy >= DUEL_STRATEGY_COUNT)
            return duel_error_set(err, DUEL_EINVAL, "duel request: strategy %d is not one of "
                                  "the %d strategies", (int)r->strategy, DUEL_STRATEGY_COUNT);
    }
    engine_command *cmd = calloc(1, sizeof *cmd);
    if (!cmd) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    int n_stop = 0;
    if (r->num_stop_tokens < 0 || r->num_stop_tokens > SCHED_MAX_STOP_TOKENS ||
        (r->num_stop_tokens && !r->stop_tokens)) {
        free(cmd);
        return duel_error_set(err, DUEL_EINVAL, "%d stop tokens (0 to %d)", r->num_stop_tokens,
                              SCHED_MAX_STOP_TOKENS);
    }
    for (int i = 0; i < r->num_stop_tokens; i++) cmd->stop[n_stop++] = r->stop_tokens[i];
    for (int k = 0; r->use_eos && k < (second >= 0 ? 2 : 1); k++) {
        const engine_arm *sa = k ? &e->arms[second] : a; /* arena: both arms' eos ids */
        for (int i = 0; i < sa->num_eos; i++) {
            bool dup = false;
            for (int j = 0; j < n_stop; j++) dup |= cmd->stop[j] == sa->eos[i];
            if (!dup && n_stop < SCHED_MAX_STOP_TOKENS) cmd->stop[n_stop++] = sa->eos[i];
        }
    }
    cmd->kind = ENGINE_CMD_SUBMIT;
    cmd->params = (sched_request_params){.model = arm,
                                         .prompt = r->tokens,
                                         .prompt_len = r->num_tokens,
                                         .num_candidates = second >= 0 ? r->num_candidates / 2
                                                                       : r->num_candidates,
                                         .sampling = r->sampling,
                                         .seed = r->seed,
                                         .max_new_tokens = r->max_new_tokens,
                                         .stop_tokens = cmd->stop,
                                         .num_stop_tokens = n_stop,
                                         .want_hidden = r->want_hidden ||
                                                        (r->duel &&
                                                         e->features == ENGINE_FEATURES_POLICY),
                                         .want_progress = r->want_progress,
                                         .user = r->user,
                                         .submit_time = duel_time_seconds()};
    cmd->duel = r->duel;
    cmd->strategy = r->strategy;
    cmd->pilaf_beta = r->pilaf_beta;
    cmd->want_hidden = r->want_hidden;
    cmd->arena_model = second;
    int rc = sched_validate(e->sched, &cmd->params, err);
    if (!rc && second >= 0) {
        sched_request_params half = cmd->params;
        half.model = second;
        rc = sched_validate(e->sched, &half, err);
        if (rc) duel_error_prefix(err, "arena arm");
    }
    if (rc) {
        free(cmd);
        return rc;
    }
    cmd->prompt = copy_ints(r->tokens, r->num_tokens);
    if (!cmd->prompt) {
        free(cmd);
        return duel_error_set(err, DUEL_ENOMEM, "out of memory for a prompt");
    }
    cmd->params.prompt = cmd->prompt;

    uint64_t new_id = e->next_id;
    if (new_id >= e->states_cap) {
        size_t cap = e->states_cap ? e->states_cap * 2 : 1024;
        uint8_t *grown = realloc(e->states, cap);
        if (!grown) {
            command_free(cmd);
            return duel_error_set(err, DUEL_ENOMEM, "out of memory for the request table");
        }
        memset(grown + e->states_cap, 0, cap - e->states_cap);
        e->states = grown;
        e->states_cap = cap;
    }
    cmd->id = new_id;
    rc = engine_queue_push(e->commands, cmd, err);
    if (!rc) {
        e->states[new_id] = ENGINE_STATE_ACTIVE;
        e->next_id++;
    }
    if (rc) {
        command_free(cmd);
        return rc;
    }
    *id = new_id;
    return DUEL_OK;
}

int engine_cancel(engine *e, uint64_t id, duel_error *err) {
    if (!e) return duel_error_set(err, DUEL_EINVAL, "engine_cancel: NULL engine");
    pthread_mutex_lock(&e->lock);
    uint8_t state = id < e->states_cap && id < e->next_id ? e->states[id] : ENGINE_STATE_UNKNOWN;
    pthread_mutex_unlock(&e->lock);
    if (state == ENGINE_STATE_UNKNOWN)
        return duel_error_set(err, DUEL_ENOTFOUND, "cancel: no request %llu was submitted",
                              (unsigned long long)id);
    if (state == ENGINE_STATE_ENDED)
        return duel_error_set(err, DUEL_EINVAL,
                              "cancel: request %llu has already finished (or was cancelled)",
                              (unsigned long long)id);
    engine_command *cmd = calloc(1, sizeof *cmd);
    if (!cmd) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    cmd->kind = ENGINE_CMD_CANCEL;
    cmd->id = id;
    int rc = engine_queue_push(e->commands, cmd, err);
    if (rc) free(cmd);
    return rc;
}

void engine_poll(engine *e, double timeout_seconds, engine_event **event) {
    *event = NULL;
    if (!e) return;
    void *item = NULL;
    engine_queue_pop(e->events, timeout_seconds, &item);
    *event = item;
}

void engine_stats_get(engine *e, engine_stats *out) {
    pthread_mutex_lock(&e->lock);
    *out = e->stats;
    pthread_mutex_unlock(&e->lock);
}
