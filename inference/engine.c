/* engine.c: the engine's lifecycle and its thread (see engine.h for the contract and
 * engine_internal.h for how the engine's files divide the work and which thread owns what).
 *
 * The engine thread loops: it takes every queued command (submit, cancel, add or retire an
 * arm) and handles it (a submit waits for fair admission: engine_admission.c), starts the
 * requests whose turn it is, then runs one scheduler step when there is work, and publishes a stats
 * snapshot. Idle, it sleeps in the command queue; busy, it only polls it between steps, so a
 * command waits at most one step. engine_destroy closes the command queue, which ends the loop
 * after the current step; requests still in flight are dropped without events. */
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

/* True when cmd was taken over (a SUBMIT waits for fair admission: engine_admission.c). */
static bool handle_command(engine *e, engine_command *cmd) {
    switch (cmd->kind) {
    case ENGINE_CMD_ADD_ARM: engine_arm_apply_add(e, (int)cmd->id); break;
    case ENGINE_CMD_RETIRE_ARM: engine_arm_apply_retire(e, (int)cmd->id); break;
    case ENGINE_CMD_CANCEL: engine_request_cancel(e, cmd->id); break;
    case ENGINE_CMD_SUBMIT: return engine_admission_hold(e, cmd);
    }
    return false;
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
    /* requests_finished/cancelled/failed are counted by engine_on_sched_event as it pushes each
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
    o->pilaf_running = e->pilaf_running;
    o->pilaf_queued = e->num_pilaf_queued;
    o->admission_queued = (int)fair_queue_count(&e->admission);
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
        bool busy = sched_has_work(e->sched) || fair_queue_count(&e->admission) > 0;
        engine_queue_pop(e->commands, busy ? 0 : -1, &item);
        while (item) {
            if (!handle_command(e, item)) engine_command_free(item);
            engine_queue_pop(e->commands, 0, &item);
        }
        engine_flush_deferred_cancels(e);
        engine_admission_admit(e);
        engine_pilaf_admit(e);
        engine_duel_submit_queued(e);
        if (engine_queue_is_closed(e->commands)) break;
        if (sched_has_work(e->sched)) {
            duel_error err = {0};
            /* A failed step has already failed its requests with ERROR events. */
            sched_step(e->sched, engine_on_sched_event, e, &err);
            /* These change the scheduler's lists: never inside the step's callbacks. */
            engine_flush_deferred_cancels(e);
            engine_pilaf_admit(e);
            engine_duel_submit_queued(e);
        }
        update_stats(e);
    }
    return NULL;
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
    int rc = compute_open(params->backend, params->providers, params->num_providers, &e->backend,
                          e->backend_name, err);
    if (rc) goto fail;
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
        arm->state = ARM_RESIDENT;
        engine_arm_fill(arm, mp, (uint64_t)i + 1);
        e->num_arms++;
        if ((rc = engine_arm_load(e, arm, err))) goto fail;
        infos[i] = engine_arm_sched_info(arm);
    }
    e->next_model_id = (uint64_t)e->num_arms + 1;
    if ((unsigned)params->features > ENGINE_FEATURES_POLICY) {
        rc = duel_error_set(err, DUEL_EINVAL, "engine: feature source %d (reference 0, policy 1)",
                            (int)params->features);
        goto fail;
    }
    e->features = params->features;
    if (params->max_pilaf_jobs < 0 || params->max_pilaf_jobs > ENGINE_MAX_PILAF_JOBS) {
        rc = duel_error_set(err, DUEL_EINVAL, "engine: max_pilaf_jobs %d (0 for the default %d, "
                            "or 1 to %d)", params->max_pilaf_jobs, ENGINE_DEFAULT_MAX_PILAF_JOBS,
                            ENGINE_MAX_PILAF_JOBS);
        goto fail;
    }
    e->max_pilaf_jobs = params->max_pilaf_jobs ? params->max_pilaf_jobs
                                               : ENGINE_DEFAULT_MAX_PILAF_JOBS;
    e->erm = params->erm;
    e->ref_arm = 0;
    if (params->reference_arm) {
        e->ref_arm = engine_arm_lookup_locked(e, params->reference_arm);
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
    if (e->erm && (rc = compute_erm_load(e->backend, e->erm, &e->erm_dev, err))) goto fail;
    kv_pool_params pp = {.num_layers = c0->num_layers,
                         .num_kv_heads = c0->num_kv_heads,
                         .head_dim = c0->head_dim,
                         .block_size = params->block_size,
                         .memory_budget_bytes = params->kv_memory_bytes ? params->kv_memory_bytes
                                                                        : ENGINE_DEFAULT_KV_BYTES,
                         .bytes_per_element = params->kv_bytes_per_element,
                         .allocate_storage = true};
    if ((rc = compute_pool_prepare(e->backend, &pp, err)) ||
        (rc = kv_pool_create(&pp, &e->pool, err)) ||
        (rc = compute_pool_attach(e->backend, e->pool, err)))
        goto fail;
    e->pool_attached = true;
    sched_params sp = {.max_batch_tokens = params->max_batch_tokens,
                       .max_running = params->max_running,
                       .max_candidates = params->max_candidates ? params->max_candidates
                                                                : ENGINE_DEFAULT_MAX_CANDIDATES};
    if ((rc = sched_create(&sp, e->pool, infos, e->num_arms, e->backend, &e->sched, err)))
        goto fail;
    if ((rc = engine_queue_create(0, &e->commands, err)) ||
        (rc = engine_queue_create(0, &e->events, err)))
        goto fail;
    {
        const kv_pool_params *got = kv_pool_get_params(e->pool);
        e->stats.kv_bytes_per_token = 2 * (size_t)got->num_layers * got->num_kv_heads *
                                      got->head_dim * (size_t)got->bytes_per_element;
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
            engine_command_free(item);
    if (e->events)
        for (engine_queue_pop(e->events, 0, &item); item; engine_queue_pop(e->events, 0, &item))
            engine_event_free(item);
    sched_destroy(e->sched);
    for (int i = 0; i < e->num_active; i++) engine_active_free(e->active[i]);
    engine_pilaf_free_all(e);
    engine_admission_free_all(e);
    free(e->active);
    free(e->deferred_cancels);
    free(e->score_queued);
    for (int i = 0; i < e->num_arms; i++) engine_arm_unload(e, &e->arms[i]);
    compute_erm_unload(e->backend, e->erm_dev);
    if (e->pool_attached) compute_pool_detach(e->backend, e->pool);
    kv_pool_destroy(e->pool);
    compute_destroy(e->backend);
    engine_queue_destroy(e->commands);
    engine_queue_destroy(e->events);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->arm_applied);
    free(e->states);
    free(e);
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

const char *engine_backend_name(const engine *e) { return e ? e->backend_name : ""; }

int engine_features_parse(const char *text, engine_feature_source *out, duel_error *err) {
    if (text && strcmp(text, "reference") == 0) *out = ENGINE_FEATURES_REFERENCE;
    else if (text && strcmp(text, "policy") == 0) *out = ENGINE_FEATURES_POLICY;
    else
        return duel_error_set(err, DUEL_EINVAL, "\"%s\": reference or policy", text ? text : "");
    return DUEL_OK;
}

void engine_stats_get(engine *e, engine_stats *out) {
    pthread_mutex_lock(&e->lock);
    *out = e->stats;
    pthread_mutex_unlock(&e->lock);
}
