/* engine_duel.c: a finished duel request's selection (engine.h, request.duel; DESIGN.md
 * sections 4 and 5), on the engine thread once every candidate has finished: the candidates'
 * ERM features (the reference arm's pass over prompt + candidate, or the policy's own hidden
 * states), their rewards (the arm's ERM or the engine's, scored on the compute backend), the
 * pair (duel_select, or duel_select_arena over the two halves of an arena request), its
 * placement and R-hat, all in one DUEL_READY event.
 *
 * The reference pass is a scoring request of the scheduler (forced tokens: sched_request_params)
 * on the reference arm: submitted after the step in which the candidates finished (the
 * scheduler's lists never change inside a step), it runs in the shared pool within the KV budget,
 * batched with everything else, keeping the duel's place in the age order (its arrival). Its
 * CANDIDATE events fill the features' second halves and ref_logprobs, its DONE the first halves
 * (prompt_hidden) and completes the duel: DUEL_READY, then the FINISHED event held since the
 * candidates finished. A failure ends the request with an ERROR event, a cancel with CANCELLED.
 * Selection randomness comes from one rng seeded seed ^ ENGINE_DUEL_SEED_SALT: duel_select draws
 * first, then duel_place. */
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "timer.h"

/* The ERM that scores candidate i of a: each arena half its own arm's, else the arm's (own or
 * the engine's), with its handle on the backend. */
static const erm *scorer_of(const engine *e, int arm, compute_erm **dev) {
    if (e->arms[arm].erm) {
        *dev = e->arms[arm].erm_dev;
        return e->arms[arm].erm;
    }
    *dev = e->erm_dev;
    return e->erm;
}

static model *feature_model(const engine *e, const engine_active *a) {
    return e->arms[e->features == ENGINE_FEATURES_REFERENCE ? e->ref_arm : a->arm].model;
}

int engine_duel_check(const engine *e, const engine_active *a, duel_error *err) {
    compute_erm *dev;
    const erm *scorer = scorer_of(e, a->arm, &dev);
    const erm *scorer2 = a->arena_arm >= 0 ? scorer_of(e, a->arena_arm, &dev) : scorer;
    int D = 2 * model_get_config(feature_model(e, a))->hidden_size;
    if (D != scorer->config.d_feat || D != scorer2->config.d_feat)
        return duel_error_set(err, DUEL_EINVAL, "duel: features of %d floats, the ERM takes %d",
                              D, D != scorer->config.d_feat ? scorer->config.d_feat
                                                            : scorer2->config.d_feat);
    if (scorer2->config.num_heads != scorer->config.num_heads)
        return duel_error_set(err, DUEL_EINVAL, "arena: the arms' ERMs have %d and %d heads",
                              scorer->config.num_heads, scorer2->config.num_heads);
    if (a->lost) return duel_error_set(err, DUEL_ENOMEM, "duel: out of memory for candidates");
    for (int i = 0; i < a->num_candidates; i++)
        if (!a->cand_tokens[i] || a->cand_counts[i] < 1)
            return duel_error_set(err, DUEL_EINVAL, "duel: candidate %d has no tokens", i);
    return DUEL_OK;
}

int engine_duel_queue_scoring(engine *e, engine_active *a, engine_event *finished,
                              duel_error *err) {
    int M = a->num_candidates, D = 2 * model_get_config(feature_model(e, a))->hidden_size;
    a->features = malloc((size_t)M * (size_t)D * sizeof *a->features);
    a->ref_logprobs = calloc((size_t)M, sizeof *a->ref_logprobs);
    if (!a->features || !a->ref_logprobs ||
        !engine_array_reserve((void **)&e->score_queued, e->num_score_queued,
                              &e->cap_score_queued, sizeof *e->score_queued))
        return duel_error_set(err, DUEL_ENOMEM, "duel: out of memory for the reference pass");
    a->finished = finished;
    a->score_state = SCORE_QUEUED;
    a->score_start = duel_time_seconds();
    e->score_queued[e->num_score_queued++] = a;
    return DUEL_OK;
}

/* Ends a duel whose reference pass did not complete: ERROR with message, or CANCELLED. */
static void end_without_pass(engine *e, engine_active *a, bool cancelled, int status,
                             const char *message) {
    engine_event *ev = a->finished;
    a->finished = NULL;
    if (ev) {
        ev->kind = cancelled ? ENGINE_EVENT_CANCELLED : ENGINE_EVENT_ERROR;
        ev->status = cancelled ? 0 : status;
        free(ev->message);
        ev->message = cancelled ? NULL : strdup(message ? message : "duel: reference pass failed");
    }
    engine_request_end(e, a, ev);
}

void engine_duel_submit_queued(engine *e) {
    int n = e->num_score_queued;
    e->num_score_queued = 0;
    for (int k = 0; k < n; k++) {
        engine_active *a = e->score_queued[k];
        sched_request_params p = {.model = e->ref_arm,
                                  .prompt = a->prompt,
                                  .prompt_len = a->prompt_len,
                                  .num_candidates = a->num_candidates,
                                  .sampling = {0.0f, 1.0f, 0},
                                  .max_new_tokens = 1,
                                  .want_hidden = true,
                                  .user = &a->parts[2],
                                  .submit_time = a->score_start,
                                  .forced = (const int32_t *const *)a->cand_tokens,
                                  .forced_counts = a->cand_counts,
                                  .arrival = a->arrival};
        duel_error err = {0};
        if (sched_submit(e->sched, &p, &a->score_sched_id, &err)) {
            end_without_pass(e, a, false, err.code ? err.code : DUEL_EINVAL, err.message);
            continue;
        }
        a->score_state = SCORE_RUNNING;
    }
}

bool engine_duel_cancel_queued(engine *e, engine_active *a) {
    if (a->score_state != SCORE_QUEUED) return false;
    for (int k = 0; k < e->num_score_queued; k++)
        if (e->score_queued[k] == a) {
            memmove(e->score_queued + k, e->score_queued + k + 1,
                    (size_t)(e->num_score_queued - k - 1) * sizeof *e->score_queued);
            e->num_score_queued--;
            break;
        }
    end_without_pass(e, a, true, 0, NULL);
    return true;
}

void engine_duel_on_score_event(engine *e, engine_active *a, const sched_event *se) {
    int M = a->num_candidates, H = model_get_config(feature_model(e, a))->hidden_size;
    if (se->kind == SCHED_EVENT_CANDIDATE) {
        if (se->candidate >= 0 && se->candidate < M) {
            if (se->hidden)
                memcpy(a->features + (size_t)se->candidate * 2 * H + H, se->hidden,
                       (size_t)H * sizeof(float));
            a->ref_logprobs[se->candidate] = se->logprob_sum;
        }
        return;
    }
    if (se->kind != SCHED_EVENT_DONE) return;
    a->score_state = SCORE_NONE;
    if (se->cancelled || se->status || !se->prompt_hidden) {
        end_without_pass(e, a, se->cancelled, se->status ? se->status : DUEL_EINVAL,
                         se->message ? se->message : "duel: the reference pass gave no features");
        return;
    }
    for (int i = 0; i < M; i++)
        memcpy(a->features + (size_t)i * 2 * H, se->prompt_hidden, (size_t)H * sizeof(float));
    a->features_ms = (duel_time_seconds() - a->score_start) * 1e3;
    engine_event *finished = a->finished;
    a->finished = NULL;
    duel_error derr = {0};
    engine_event *ready = NULL;
    int rc = engine_duel_ready(e, a, NULL, finished->timings.total_ms, &ready, &derr);
    if (rc) {
        finished->kind = ENGINE_EVENT_ERROR;
        finished->status = rc;
        finished->message = strdup(derr.message[0] ? derr.message : "duel selection failed");
    } else {
        engine_push_event(e, ready);
    }
    engine_request_end(e, a, finished);
}

int engine_duel_ready(engine *e, engine_active *a, const float *prompt_hidden, double decode_ms,
                      engine_event **out, duel_error *err) {
    *out = NULL;
    bool arena = a->arena_arm >= 0;
    compute_erm *dev = NULL, *dev2 = NULL;
    const erm *scorer = scorer_of(e, a->arm, &dev);
    if (arena) scorer_of(e, a->arena_arm, &dev2);
    else dev2 = dev;
    int M = a->num_candidates, E = scorer->config.num_heads, half = M / 2;
    bool ref = e->features == ENGINE_FEATURES_REFERENCE;
    int H = model_get_config(feature_model(e, a))->hidden_size, D = 2 * H;
    int rc = engine_duel_check(e, a, err);
    if (rc) return rc;
    engine_event *ev = calloc(1, sizeof *ev);
    float *features = NULL, *rewards = malloc((size_t)M * E * sizeof *rewards);
    double *ref_logprobs = NULL;
    if (ref) { /* the reference pass's, taken over */
        features = a->features;
        ref_logprobs = a->ref_logprobs;
        a->features = NULL;
        a->ref_logprobs = NULL;
    } else {
        features = malloc((size_t)M * D * sizeof *features);
    }
    if (!ev || !features || !rewards) {
        rc = duel_error_set(err, DUEL_ENOMEM, "duel: out of memory for features");
        goto fail;
    }
    double t1 = duel_time_seconds();
    if (!ref) {
        if (!prompt_hidden || !a->cand_hidden) {
            rc = duel_error_set(err, DUEL_EINVAL, "duel: no hidden states for policy features");
            goto fail;
        }
        for (int i = 0; i < M; i++) {
            float *row = features + (size_t)i * D;
            memcpy(row, prompt_hidden, (size_t)H * sizeof *row);
            memcpy(row + H, a->cand_hidden + (size_t)i * H, (size_t)H * sizeof *row);
        }
        t1 = duel_time_seconds();
    }
    if (arena) {
        /* Each half scored by its own arm's ERM; each arm's best by its own ensemble mean. */
        if ((rc = compute_erm_score(e->backend, dev, features, half, rewards, err)) ||
            (rc = compute_erm_score(e->backend, dev2, features + (size_t)half * D, M - half,
                                    rewards + (size_t)half * E, err)))
            goto fail;
    } else if ((rc = compute_erm_score(e->backend, dev, features, M, rewards, err))) {
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
    ev->features_ms = ref ? a->features_ms : 0;
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
