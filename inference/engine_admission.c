/* engine_admission.c: fair admission of requests into the scheduler. A SUBMIT command does not
 * go into the scheduler when it reaches the engine thread: it waits in the fair queue
 * (common/fair_queue.h) under its request's fairness_key, and is started only while the
 * scheduler has fewer than ENGINE_ADMIT_WAITING sequences waiting for admission. The
 * scheduler admits its waiting sequences strictly oldest first, so whatever it holds is FIFO;
 * keeping its waiting list short moves the queueing here, where the next request is the one of
 * the key served least recently: a user asking once waits behind at most one request of each
 * other user, not behind another user's whole burst (issue 21: 128 asks from 8 addresses took
 * someone else's time to duel from 48 ms to 2.4 s).
 *
 * Invariant: a held command holds a reference on its arm (and arena arm), so retiring an arm
 * waits for held requests as it does for running ones; it is started, cancelled or freed at
 * destroy, never lost. Engine thread only. */
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "timer.h"

/* Waiting sequences the scheduler may have before more requests are started: enough that a
 * step's token budget finds several new prompts to prefill together, few enough that a new
 * user's request is started within a step or two of its turn. */
#define ENGINE_ADMIT_WAITING 4

static void unref_arms(engine *e, const engine_command *cmd) {
    engine_arm_unref(e, cmd->params.model);
    if (cmd->arena_model >= 0) engine_arm_unref(e, cmd->arena_model);
}

bool engine_admission_hold(engine *e, engine_command *cmd) {
    if (fair_queue_push(&e->admission, cmd->fairness_key, cmd)) {
        engine_set_state(e, cmd->id, ENGINE_STATE_ENDED);
        engine_push_error(e, cmd->id, cmd->params.user, DUEL_ENOMEM,
                          "out of memory for a request waiting for admission");
        return false;
    }
    e->arms[cmd->params.model].refs++;
    if (cmd->arena_model >= 0) e->arms[cmd->arena_model].refs++;
    return true;
}

void engine_admission_admit(engine *e) {
    while (fair_queue_count(&e->admission) > 0) {
        sched_stats ss;
        sched_stats_get(e->sched, &ss);
        if (ss.waiting >= ENGINE_ADMIT_WAITING) break;
        engine_command *cmd = fair_queue_pop(&e->admission);
        engine_request_start(e, cmd); /* takes its own references when it starts */
        unref_arms(e, cmd);
        engine_command_free(cmd);
    }
}

void engine_cancel_held(engine *e, engine_command *cmd) {
    uint64_t id = cmd->id;
    engine_event *ev = calloc(1, sizeof *ev);
    engine_set_state(e, id, ENGINE_STATE_ENDED);
    pthread_mutex_lock(&e->lock);
    e->stats.requests_cancelled++;
    pthread_mutex_unlock(&e->lock);
    if (ev) {
        double waited_ms = (duel_time_seconds() - cmd->params.submit_time) * 1e3;
        ev->kind = ENGINE_EVENT_CANCELLED;
        ev->request_id = id;
        ev->user = cmd->params.user;
        ev->timings = (engine_timings){.queued_ms = waited_ms, .first_token_ms = -1,
                                       .total_ms = waited_ms};
        ev->counts.prompt_tokens = cmd->params.prompt_len;
        engine_push_event(e, ev);
    }
    unref_arms(e, cmd);
    engine_command_free(cmd);
}

static bool has_id(const void *item, void *ctx) {
    return ((const engine_command *)item)->id == *(const uint64_t *)ctx;
}

bool engine_admission_cancel(engine *e, uint64_t id) {
    engine_command *cmd = fair_queue_remove(&e->admission, has_id, &id);
    if (!cmd) return false;
    engine_cancel_held(e, cmd);
    return true;
}

void engine_admission_free_all(engine *e) {
    engine_command *cmd;
    while ((cmd = fair_queue_pop(&e->admission))) engine_command_free(cmd);
    fair_queue_free(&e->admission);
}
