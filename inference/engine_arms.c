/* engine_arms.c: the engine's arm table (arms resident at once: A/B snapshots, the reference):
 * engine_add_arm and engine_retire_arm in the caller's thread, their application between two
 * scheduler steps on the engine thread, and each arm's count of requests (refs), whose last
 * release hands a retired arm back to its owner (ENGINE_EVENT_ARM_RETIRED).
 *
 * Invariant: a slot's state changes under the lock; only the engine thread turns a slot FREE
 * or RESIDENT, and only while no request refers to it, so the engine thread reads a slot's
 * model, tokenizer and ERM without the lock. Every arm gets a model id never used before (the
 * prefix cache's block hashes include it). An arm's weights (and its own ERM) are loaded on the
 * compute backend when it becomes resident, on the engine thread between two steps, and
 * unloaded before it is handed back. See engine_internal.h for the whole slot cycle. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

void engine_arm_fill(engine_arm *arm, const engine_model_params *mp, uint64_t model_id) {
    const model_config *c = model_get_config(mp->model);
    snprintf(arm->name, sizeof arm->name, "%s", mp->arm);
    arm->model = mp->model;
    arm->tokenizer = mp->tokenizer;
    arm->model_id = model_id;
    arm->num_eos = 0;
    for (int k = 0; k < c->num_eos_token_ids && k < MODEL_CONFIG_MAX_EOS; k++)
        if (c->eos_token_ids[k] >= 0 && c->eos_token_ids[k] < c->vocab_size)
            arm->eos[arm->num_eos++] = c->eos_token_ids[k];
}

int engine_arm_load(engine *e, engine_arm *arm, duel_error *err) {
    int rc = compute_arm_load(e->backend, arm->model, &arm->dev, err);
    if (!rc && arm->erm) rc = compute_erm_load(e->backend, arm->erm, &arm->erm_dev, err);
    if (rc) {
        engine_arm_unload(e, arm);
        if (err) duel_error_prefix(err, "arm \"%s\" on the %s backend", arm->name, e->backend_name);
    }
    return rc;
}

void engine_arm_unload(engine *e, engine_arm *arm) {
    compute_erm_unload(e->backend, arm->erm_dev);
    compute_arm_unload(e->backend, arm->dev);
    arm->erm_dev = NULL;
    arm->dev = NULL;
}

sched_model_info engine_arm_sched_info(const engine_arm *arm) {
    const model_config *c = model_get_config(arm->model);
    return (sched_model_info){.arm = arm->dev,
                              .model_id = arm->model_id,
                              .vocab_size = model_output_size(arm->model),
                              .hidden_size = c->hidden_size,
                              .max_context = c->max_position_embeddings > 1
                                                 ? c->max_position_embeddings
                                                 : 2048};
}

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
    engine_arm_unload(e, arm);
    pthread_mutex_lock(&e->lock);
    memset(arm, 0, sizeof *arm); /* state ARM_FREE */
    e->stats.arms_retired++;
    pthread_mutex_unlock(&e->lock);
    if (ev) engine_push_event(e, ev); /* out of memory: the owner frees it after engine_destroy */
}

void engine_arm_unref(engine *e, int slot) {
    engine_arm *arm = &e->arms[slot];
    if (arm->refs > 0) arm->refs--;
    if (arm->refs == 0) {
        pthread_mutex_lock(&e->lock);
        bool retiring = arm->state == ARM_RETIRING;
        pthread_mutex_unlock(&e->lock);
        if (retiring) arm_release(e, slot);
    }
}

int engine_arm_lookup_locked(const engine *e, const char *name) {
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

/* ADD_ARM: the slot was filled by engine_add_arm; between two steps, so no batch is using the
 * scheduler's model table. */
void engine_arm_apply_add(engine *e, int slot) {
    engine_arm *arm = &e->arms[slot];
    duel_error err = {0};
    /* Loading (a device upload) runs outside the lock: the slot is ADDING, which only this
     * thread changes now. */
    int rc = engine_arm_load(e, arm, &err);
    sched_model_info info = engine_arm_sched_info(arm);
    pthread_mutex_lock(&e->lock);
    if (!rc) rc = sched_set_model(e->sched, slot, &info, &err);
    if (rc) {
        engine_arm_unload(e, arm);
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

void engine_arm_apply_retire(engine *e, int slot) {
    /* Requests submitted before the retirement were queued before this command: refs already
     * counts them. */
    if (e->arms[slot].refs == 0) arm_release(e, slot);
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
    engine_arm_fill(arm, mp, e->next_model_id++);
    arm->erm = arm_erm;
    arm->user = user;
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
    int slot = engine_arm_lookup_locked(e, name), rc = DUEL_OK;
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
