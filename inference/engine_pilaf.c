/* engine_pilaf.c: PILAF duel requests (strategy pilaf, M = 2; DESIGN.md section 5) as requests
 * of the scheduler's batched decode, like every other request.
 *
 * The selection rng (seeded seed ^ ENGINE_DUEL_SEED_SALT) first draws the mode:
 *   PLAIN: the request is an ordinary two-candidate request of the serving arm (two plain
 *     policy samples, candidate i seeded seed + i: exactly what the same request without a
 *     duel gives);
 *   MIXED: the same two candidates, each also decoded in lockstep by the reference arm
 *     (sched_request_params.use_ref_model: a second KV sequence per candidate in the shared pool,
 *     within the KV budget, its blocks hashed with the reference's model id), and a logits step
 *     (pilaf_logits_step) turns the two models' logits into duel_pilaf_mix_logits' plus logits
 *     for candidate 0 (y+) and its minus logits for candidate 1 (y-) with request.pilaf_beta
 *     before the scheduler samples; a candidate's logprob_sum is under what it sampled from.
 * Stop tokens, max_new_tokens, the context (the smaller of the two models' in MIXED mode),
 * preemption and cancel are the scheduler's, as for every request. Once both candidates are
 * done, DUEL_READY (pair (0, 1), placed by the same rng's next draw, pilaf_mixed, no features
 * or rewards) comes before FINISHED.
 *
 * The bound: at most max_pilaf_jobs MIXED requests are in the scheduler at once (each decodes
 * the reference too: twice the compute and KV of a plain request). Others wait, in submission
 * order, in a FIFO on the engine thread (holding their command: the prompt, no KV) and enter the
 * scheduler as running ones end; they are queued rather than refused because a PILAF request is
 * a user's chat turn that the engine can serve a moment later, as the scheduler's own waiting
 * queue does for every request; the bound caps the reference decodes' share of the batch, it
 * does not shed load. A queued request's time counts in its queued_ms; it can be cancelled
 * while queued. PLAIN requests are not held back.
 *
 * Engine thread only, except engine_pilaf_lockstep and engine_pilaf_mode_mixed (pure, called by
 * engine_submit in the caller's thread). */
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "timer.h"

bool engine_pilaf_mode_mixed(uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed ^ ENGINE_DUEL_SEED_SALT);
    return duel_pilaf_draw_mode(&rng) == DUEL_PILAF_MIXED;
}

/* The scheduler's logits step of a MIXED request (ctx: its engine_active). */
static int pilaf_logits_step(void *ctx, int candidate, const float *logits,
                             const float *ref_logits, int vocab_size, float *out,
                             duel_error *err) {
    const engine_active *a = ctx;
    return duel_pilaf_mix_logits(logits, ref_logits, vocab_size, a->pilaf_beta,
                                 candidate == 0 ? out : NULL, candidate == 0 ? NULL : out, err);
}

void engine_pilaf_lockstep(const engine *e, sched_request_params *p) {
    p->use_ref_model = true;
    p->ref_model = e->ref_arm;
    p->logits_step = pilaf_logits_step;
    p->logits_ctx = NULL; /* the engine_active, set when the request starts */
}

bool engine_pilaf_start(engine *e, engine_command *cmd) {
    if (!cmd->pilaf_mixed) {
        /* Two plain policy samples. */
        cmd->params.use_ref_model = false;
        cmd->params.logits_step = NULL;
        return false;
    }
    /* Behind the others already waiting too (a slot a cancel freed goes to the oldest). */
    if (cmd->pilaf_admitted ||
        (e->pilaf_running < e->max_pilaf_jobs && e->num_pilaf_queued == 0))
        return false;
    /* Queued: the copy takes over the prompt; params point into the copy. */
    engine_command *held = malloc(sizeof *held);
    if (!held || !engine_array_reserve((void **)&e->pilaf_queued, e->num_pilaf_queued,
                                       &e->cap_pilaf_queued, sizeof *e->pilaf_queued)) {
        free(held);
        engine_set_state(e, cmd->id, ENGINE_STATE_ENDED);
        engine_push_error(e, cmd->id, cmd->params.user, DUEL_ENOMEM,
                          "out of memory for a queued pilaf request");
        return true;
    }
    *held = *cmd;
    held->params.prompt = held->prompt;
    held->params.stop_tokens = held->stop;
    cmd->prompt = NULL;
    e->pilaf_queued[e->num_pilaf_queued++] = held;
    e->arms[held->params.model].refs++; /* the arm stays resident while the request waits */
    return true;
}

void engine_pilaf_admit(engine *e) {
    while (e->num_pilaf_queued > 0 && e->pilaf_running < e->max_pilaf_jobs) {
        engine_command *cmd = e->pilaf_queued[0];
        memmove(e->pilaf_queued, e->pilaf_queued + 1,
                (size_t)(e->num_pilaf_queued - 1) * sizeof *e->pilaf_queued);
        e->num_pilaf_queued--;
        int arm = cmd->params.model;
        cmd->pilaf_admitted = true; /* into the free slot: it starts, or fails with an event */
        engine_request_start(e, cmd);
        engine_command_free(cmd);
        engine_arm_unref(e, arm); /* the queue's reference; the request holds its own */
    }
}

bool engine_pilaf_cancel_queued(engine *e, uint64_t id) {
    for (int at = 0; at < e->num_pilaf_queued; at++) {
        engine_command *cmd = e->pilaf_queued[at];
        if (cmd->id != id) continue;
        memmove(e->pilaf_queued + at, e->pilaf_queued + at + 1,
                (size_t)(e->num_pilaf_queued - at - 1) * sizeof *e->pilaf_queued);
        e->num_pilaf_queued--;
        engine_cancel_held(e, cmd);
        return true;
    }
    return false;
}

int engine_pilaf_ready(const engine_active *a, double decode_ms, engine_event **out,
                       duel_error *err) {
    *out = NULL;
    engine_event *ev = calloc(1, sizeof *ev);
    if (!ev) return duel_error_set(err, DUEL_ENOMEM, "pilaf: out of memory for its event");
    duel_rng rng;
    duel_rng_seed(&rng, a->seed ^ ENGINE_DUEL_SEED_SALT);
    duel_pilaf_draw_mode(&rng); /* the mode's draw, made at submit; the placement is next */
    ev->kind = ENGINE_EVENT_DUEL_READY;
    ev->request_id = a->id;
    ev->user = a->user;
    ev->count = 2;
    ev->strategy = DUEL_STRATEGY_PILAF;
    ev->pair = (duel_pair){0, 1, -1, -1};
    duel_place(&ev->pair, &rng, &ev->placement);
    ev->pilaf_mixed = a->pilaf_mixed;
    ev->decode_ms = decode_ms;
    *out = ev;
    return DUEL_OK;
}

void engine_pilaf_free_all(engine *e) {
    for (int i = 0; i < e->num_pilaf_queued; i++) engine_command_free(e->pilaf_queued[i]);
    free(e->pilaf_queued);
    e->pilaf_queued = NULL;
    e->num_pilaf_queued = e->cap_pilaf_queued = 0;
}
