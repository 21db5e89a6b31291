/* engine_requests.c: the engine thread's requests (engine_active, one per engine request):
 * starting a submitted command on the scheduler (an arena request as two scheduler requests,
 * one per arm), turning the scheduler's events into engine events (deep copies; candidate
 * text decoded; a finished duel request's DUEL_READY from engine_duel.c before its FINISHED),
 * and cancels.
 *
 * Engine thread only. Invariant: a request is in the table from its start until the scheduler's
 * DONE for its last part; its state becomes ENDED, it leaves the table and its arms' refs drop
 * only around pushing its last event (FINISHED, CANCELLED or ERROR), in that order, so a cancel
 * after that event is refused and a retired arm is handed back after its last request's event.
 * Duel requests keep their prompt and every finished candidate's tokens (and, for policy
 * features, hidden states) until then. A duel with reference features stays in the table after
 * its candidates' DONE, holding its FINISHED event, until its reference pass (a scoring request,
 * part 2, engine_duel.c) is done. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

static int find_active(const engine *e, uint64_t id) {
    for (int i = 0; i < e->num_active; i++)
        if (e->active[i]->id == id) return i;
    return -1;
}

void engine_active_free(engine_active *a) {
    if (!a) return;
    if (a->cand_tokens)
        for (int i = 0; i < a->num_candidates; i++) free(a->cand_tokens[i]);
    free(a->cand_tokens);
    free(a->cand_counts);
    free(a->cand_hidden);
    free(a->prompt);
    free(a->features);
    free(a->ref_logprobs);
    engine_event_free(a->finished);
    free(a);
}

static void remove_active(engine *e, engine_active *a) {
    int at = find_active(e, a->id);
    if (at >= 0) {
        e->active[at] = e->active[--e->num_active];
    }
    engine_active_free(a);
}

/* Engine thread: a scheduler request to cancel after the current step (cancelling inside the
 * step's callbacks would free sequences the step is walking). Out of memory: the half runs to
 * its end instead. */
static void defer_cancel(engine *e, uint64_t sched_id) {
    if (!engine_array_reserve((void **)&e->deferred_cancels, e->num_deferred, &e->cap_deferred,
                              sizeof *e->deferred_cancels))
        return;
    e->deferred_cancels[e->num_deferred++] = sched_id;
}

void engine_flush_deferred_cancels(engine *e) {
    while (e->num_deferred > 0) {
        uint64_t id = e->deferred_cancels[--e->num_deferred];
        sched_cancel(e->sched, id, engine_on_sched_event, e, NULL); /* ENOTFOUND: it ended meanwhile */
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

void engine_request_end(engine *e, engine_active *a, engine_event *ev) {
    int arm_index = a->arm, arena_index = a->arena_arm;
    if (a->pilaf_mixed) e->pilaf_running--; /* engine_pilaf_admit fills the slot after the step */
    /* Ended before the event is visible, so that a cancel after it reports "finished". */
    engine_set_state(e, a->id, ENGINE_STATE_ENDED);
    remove_active(e, a);
    pthread_mutex_lock(&e->lock);
    if (!ev || ev->kind == ENGINE_EVENT_ERROR) e->stats.requests_failed++;
    else if (ev->kind == ENGINE_EVENT_CANCELLED) e->stats.requests_cancelled++;
    else e->stats.requests_finished++;
    pthread_mutex_unlock(&e->lock);
    if (ev) engine_push_event(e, ev);
    /* after the request's last event */
    engine_arm_unref(e, arm_index);
    if (arena_index >= 0) engine_arm_unref(e, arena_index);
}

/* The scheduler's callback (engine thread): deep-copies into an engine_event. */
void engine_on_sched_event(void *ctx, const sched_event *se) {
    engine *e = ctx;
    const engine_part *part = se->user;
    engine_active *a = part->owner;
    if (part->index == 2) {
        engine_duel_on_score_event(e, a, se);
        return;
    }
    if (se->kind == SCHED_EVENT_DONE && se->stats &&
        (!a->arrival || se->stats->arrival < a->arrival))
        a->arrival = se->stats->arrival;
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
        ev->candidates = engine_copy_ints(se->candidates, se->count);
        ev->tokens = engine_copy_ints(se->tokens, se->count);
        if (ev->candidates)
            for (int i = 0; i < se->count; i++) ev->candidates[i] += offset;
        break;
    case SCHED_EVENT_CANDIDATE: {
        ev->kind = ENGINE_EVENT_CANDIDATE;
        ev->candidate = se->candidate + offset;
        if (arena) ev->arm = strdup(arm->name);
        ev->count = se->count;
        ev->tokens = engine_copy_ints(se->tokens, se->count);
        ev->logprob_sum = se->logprob_sum;
        ev->finish_reason = se->finish_reason == SCHED_FINISH_STOP     ? ENGINE_FINISH_STOP
                            : se->finish_reason == SCHED_FINISH_LENGTH ? ENGINE_FINISH_LENGTH
                                                                       : ENGINE_FINISH_CONTEXT;
        ev->finish_ms = (se->finish_time - a->submit_time) * 1e3;
        if (a->cand_tokens && se->candidate >= 0 && se->candidate + offset < a->num_candidates) {
            int c = se->candidate + offset;
            free(a->cand_tokens[c]);
            a->cand_tokens[c] = engine_copy_ints(se->tokens, se->count);
            a->cand_counts[c] = se->count;
            if (!a->cand_tokens[c]) a->lost = true;
            if (se->hidden && a->cand_hidden)
                memcpy(a->cand_hidden + (size_t)c * hidden_size, se->hidden,
                       (size_t)hidden_size * sizeof(float));
        }
        if (se->hidden && a->want_hidden) {
            ev->hidden = engine_copy_floats(se->hidden, hidden_size);
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
            ev->hidden = engine_copy_floats(se->prompt_hidden, hidden_size);
            ev->hidden_size = hidden_size;
        }
        if (a->duel && ev->kind == ENGINE_EVENT_FINISHED) {
            duel_error derr = {0};
            engine_event *ready = NULL;
            bool pilaf = a->strategy == DUEL_STRATEGY_PILAF;
            int rc = pilaf ? DUEL_OK : engine_duel_check(e, a, &derr);
            if (!rc && !pilaf && e->features == ENGINE_FEATURES_REFERENCE) {
                /* FINISHED waits for the reference pass; the request stays active. */
                if ((rc = engine_duel_queue_scoring(e, a, ev, &derr)) == DUEL_OK) return;
            } else if (!rc) {
                rc = pilaf ? engine_pilaf_ready(a, ev->timings.total_ms, &ready, &derr)
                           : engine_duel_ready(e, a, se->prompt_hidden, ev->timings.total_ms,
                                               &ready, &derr);
            }
            if (rc) {
                ev->kind = ENGINE_EVENT_ERROR;
                ev->status = rc;
                ev->message = strdup(derr.message[0] ? derr.message : "duel selection failed");
            } else {
                engine_push_event(e, ready);
            }
        }
        break;
    }
    }
done:
    if (se->kind == SCHED_EVENT_DONE) engine_request_end(e, a, ev);
    else if (ev) engine_push_event(e, ev);
}

void engine_request_cancel(engine *e, uint64_t id) {
    duel_error err = {0};
    int at = find_active(e, id);
    /* Not active: waiting for fair admission, a MIXED PILAF request waiting for a slot, or it
     * ended after engine_cancel checked (its last event is already queued). */
    if (at < 0) {
        if (!engine_admission_cancel(e, id)) engine_pilaf_cancel_queued(e, id);
        return;
    }
    engine_active *a = e->active[at];
    if (engine_duel_cancel_queued(e, a)) return;
    if (a->score_state == SCORE_RUNNING) {
        sched_cancel(e->sched, a->score_sched_id, engine_on_sched_event, e, &err);
        return;
    }
    if (a->arena_arm >= 0 && a->part_done[0]) { /* only the second half is left */
        sched_cancel(e->sched, a->arena_sched_id, engine_on_sched_event, e, &err);
        return;
    }
    /* An arena's first half cancelled defers the second's cancel (flushed after commands). */
    sched_cancel(e->sched, a->sched_id, engine_on_sched_event, e, &err);
}

void engine_request_start(engine *e, engine_command *cmd) {
    duel_error err = {0};
    bool pilaf = cmd->duel && cmd->strategy == DUEL_STRATEGY_PILAF;
    if (pilaf && engine_pilaf_start(e, cmd)) return; /* queued behind the bound */
    engine_active *a = calloc(1, sizeof *a);
    if (!a || !engine_array_reserve((void **)&e->active, e->num_active, &e->cap_active,
                                    sizeof *e->active)) {
        free(a);
        engine_set_state(e, cmd->id, ENGINE_STATE_ENDED);
        engine_push_error(e, cmd->id, cmd->params.user, DUEL_ENOMEM, "out of memory for a request");
        return;
    }
    a->id = cmd->id;
    a->arm = cmd->params.model;
    a->arena_arm = cmd->arena_model;
    a->parts[0] = (engine_part){a, 0};
    a->parts[1] = (engine_part){a, 1};
    a->parts[2] = (engine_part){a, 2};
    a->parts_left = cmd->arena_model >= 0 ? 2 : 1;
    a->user = cmd->params.user;
    a->submit_time = cmd->params.submit_time;
    a->want_hidden = cmd->want_hidden;
    if (pilaf) {
        a->duel = true;
        a->strategy = cmd->strategy;
        a->seed = cmd->params.seed;
        a->num_candidates = cmd->params.num_candidates;
        a->prompt_len = cmd->params.prompt_len;
        a->pilaf_mixed = cmd->pilaf_mixed;
        a->pilaf_beta = cmd->pilaf_beta;
        cmd->params.logits_ctx = a;
    } else if (cmd->duel) {
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
            engine_set_state(e, cmd->id, ENGINE_STATE_ENDED);
            engine_push_error(e, cmd->id, a->user, DUEL_ENOMEM, "out of memory for a duel request");
            engine_active_free(a);
            return;
        }
    }
    cmd->params.user = &a->parts[0];
    int rc = sched_submit(e->sched, &cmd->params, &a->sched_id, &err);
    if (rc) {
        engine_set_state(e, cmd->id, ENGINE_STATE_ENDED);
        engine_push_error(e, cmd->id, a->user, rc, err.message);
        engine_active_free(a);
        return;
    }
    e->active[e->num_active++] = a;
    e->arms[a->arm].refs++;
    if (a->pilaf_mixed) e->pilaf_running++;
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
            sched_cancel(e->sched, a->sched_id, engine_on_sched_event, e, NULL);
        }
    }
}
