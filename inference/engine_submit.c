/* engine_submit.c: engine_submit, in the caller's thread: a request is checked against the
 * arms and the scheduler's limits (sched_validate) and translated into one SUBMIT command (the
 * prompt and stop tokens copied, the arm's eos ids added, an arena request's first half; its
 * second half is derived on the engine thread), which gets the next id.
 *
 * Invariant: everything a request can be refused for is refused here, synchronously, with
 * nothing queued; a request that passes reaches the engine thread, whose only remaining failure
 * is out of memory (an ERROR event). The lock is held from the arm's lookup until the command
 * is queued, so commands reach the engine thread in the order their checks saw the arms. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "timer.h"

void engine_command_free(engine_command *cmd) {
    if (!cmd) return;
    free(cmd->prompt);
    free(cmd);
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
    int arm = engine_arm_lookup_locked(e, r->arm);
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
        second = engine_arm_lookup_locked(e, r->arena_arm);
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
                                                         r->strategy != DUEL_STRATEGY_PILAF &&
                                                         e->features == ENGINE_FEATURES_POLICY),
                                         .want_progress = r->want_progress,
                                         .user = r->user,
                                         .submit_time = duel_time_seconds()};
    cmd->duel = r->duel;
    cmd->strategy = r->strategy;
    cmd->pilaf_beta = r->pilaf_beta;
    cmd->want_hidden = r->want_hidden;
    cmd->arena_model = second;
    cmd->fairness_key = r->fairness_key;
    bool pilaf = r->duel && r->strategy == DUEL_STRATEGY_PILAF;
    if (pilaf) {
        /* Checked as the mixed mode (the reference decoded in lockstep: its context, both
         * sequences in the pool), whichever mode the seed draws, so that whether a request is
         * accepted never depends on the coin; the engine thread drops the reference for the
         * plain mode (engine_pilaf.c). */
        engine_pilaf_lockstep(e, &cmd->params);
        cmd->pilaf_mixed = engine_pilaf_mode_mixed(r->seed);
    }
    int rc = sched_validate(e->sched, &cmd->params, err);
    if (rc && pilaf) duel_error_prefix(err, "pilaf request");
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
    cmd->prompt = engine_copy_ints(r->tokens, r->num_tokens);
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
            engine_command_free(cmd);
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
        engine_command_free(cmd);
        return rc;
    }
    *id = new_id;
    return DUEL_OK;
}
