/* engine_pilaf.c: PILAF duel requests (strategy pilaf, M = 2), decoded by the engine thread
 * itself between scheduler steps over contiguous caches of the serving arm and the reference
 * arm in lockstep (see engine.h). Engine thread only. */
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "timer.h"

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
    engine_arm_unref(e, arm);
}

void engine_pilaf_submit(engine *e, engine_command *cmd) {
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
        engine_set_state(e, cmd->id, ENGINE_STATE_ENDED);
        engine_push_error(e, cmd->id, p->user, DUEL_ENOMEM, "out of memory for a pilaf request");
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
    engine_set_state(e, j->id, ENGINE_STATE_ENDED);
    if (status) {
        engine_push_error(e, j->id, j->user, status, message);
        return;
    }
    engine_event *ready = calloc(1, sizeof *ready), *fin = calloc(1, sizeof *fin);
    if (!ready || !fin) {
        free(ready);
        free(fin);
        engine_push_error(e, j->id, j->user, DUEL_ENOMEM, "out of memory");
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
    engine_push_event(e, ready);
    fin->kind = ENGINE_EVENT_FINISHED;
    fin->request_id = j->id;
    fin->user = j->user;
    fin->timings.queued_ms = 0;
    fin->timings.first_token_ms = (j->first_time - j->submit_time) * 1e3;
    fin->timings.total_ms = (now - j->submit_time) * 1e3;
    fin->counts.prompt_tokens = j->prompt_len;
    fin->counts.prompt_computed = (int64_t)j->prompt_len * (j->mode == DUEL_PILAF_MIXED ? 4 : 2);
    fin->counts.generated_tokens = j->generated;
    engine_push_event(e, fin);
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
            ev->tokens = engine_copy_ints(j->tokens[i], j->count[i]);
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
            engine_push_event(e, ev);
            continue;
        }
        if ((rc = model_forward(pol, j->kv_pol[i], &tok, 1, j->lp[i], false, NULL, err))) return rc;
        if (mixed && (rc = model_forward(ref, j->kv_ref[i], &tok, 1, j->lr[i], false, NULL, err)))
            return rc;
    }
    if (j->first_time == 0) j->first_time = duel_time_seconds();
    return DUEL_OK;
}

void engine_pilaf_run_all(engine *e) {
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

bool engine_pilaf_cancel(engine *e, uint64_t id) {
    for (int at = 0; at < e->num_pilaf; at++)
        if (e->pilaf[at]->id == id) {
            engine_event *ev = calloc(1, sizeof *ev);
            engine_set_state(e, id, ENGINE_STATE_ENDED);
            if (ev) {
                ev->kind = ENGINE_EVENT_CANCELLED;
                ev->request_id = id;
                ev->user = e->pilaf[at]->user;
                engine_push_event(e, ev);
            }
            pilaf_remove(e, at);
            return true;
        }
    return false;
}

void engine_pilaf_free_all(engine *e) {
    for (int i = 0; i < e->num_pilaf; i++) pilaf_free(e->pilaf[i]);
    free(e->pilaf);
    e->pilaf = NULL;
    e->num_pilaf = e->cap_pilaf = 0;
}
