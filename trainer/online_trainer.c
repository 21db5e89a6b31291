/* online_trainer.c: the online trainer's exactly-once invariant, stated and enforced here; the
 * rest of the trainer is its parts (online_trainer_state.h lists them).
 *
 * The invariant: every stream entry's effect is in the trainer's state exactly once, and a
 * state that has lost entries' effects (a crash) gets them back from Redis, in the same order
 * and the same batches. It rests on four rules:
 *   1. Entries are offered in stream order. An id at or before the checkpoint's last applied
 *      id is APPLIED: its effect is in the checkpoint; the caller only acknowledges it. An id
 *      at or before the last one offered since is a DUPLICATE (read twice in one run), and so
 *      is a vote id among the recent ones (the gateway wrote one vote twice).
 *   2. Everything offered is in the next checkpoint: the updates, the pending partial batch
 *      and the counted votes (entries.bin, state.json), with the last offered id as the last
 *      applied one. The checkpoint is atomic (durable_file.h), and the caller acknowledges
 *      entries only after online_trainer_checkpoint returned: an entry lost with a crash is
 *      still pending in Redis and is offered again.
 *   3. An update is a pure function of the state and its batch (online_update.c: fixed
 *      summation order, RNG states in the checkpoint), so a replay reaches the same weights.
 *   4. Where a batch ends is logged before its update runs (batch_cuts.h), so the updates a
 *      crash lost end where they ended before: a replayed snapshot version holds the same
 *      votes as the one published before the crash.
 * Single-threaded: the consumer's thread owns the trainer. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "online_trainer_state.h"

int online_trainer_open(const online_trainer_options *o, const char *data_dir, online_trainer **out,
                        duel_error *err) {
    *out = NULL;
    if (!data_dir) return duel_error_set(err, DUEL_EINVAL, "online trainer: model_dir and data_dir are required");
    int rc = online_options_check(o, err);
    if (rc) return rc;
    online_trainer *t = calloc(1, sizeof *t);
    if (!t) return duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
    t->options = *o;
    t->options.model_dir = NULL;
    t->options.erm_path = NULL;
    t->options.model_id = NULL;
    t->options.loss.xpo_alpha = 0; /* XPO needs samples of the reference, which votes lack */
    t->base = t->options;
    t->schedule = (lr_schedule){o->lr, o->min_lr, o->warmup_steps, o->total_steps};
    t->cuts.fd = -1;
    t->pair_log.fd = -1;
    snprintf(t->base_model, sizeof t->base_model, "%s", o->model_dir);
    snprintf(t->model_id, sizeof t->model_id, "%s", o->model_id ? o->model_id : "");
    snprintf(t->data_dir, sizeof t->data_dir, "%s", data_dir);
    if ((rc = durable_path_join(t->trainer_dir, data_dir, "trainer", err))) goto fail;
    mkdir(data_dir, 0755);
    if (mkdir(t->trainer_dir, 0755) != 0 && errno != EEXIST) {
        rc = duel_error_set(err, DUEL_EIO, "%s: cannot create: %s", t->trainer_dir, strerror(errno));
        goto fail;
    }
    char *ref_json = NULL;
    if ((rc = lm_model_load_hf(o->model_dir, &t->policy, &t->config_json, err)) ||
        (rc = lm_model_load_hf(o->model_dir, &t->reference, &ref_json, err)))
        goto fail;
    free(ref_json);
    if ((rc = adamw_init(&t->optimizer, train_model_num_parameters(t->policy), err))) goto fail;
    if (!(t->decay_mask = train_model_decay_mask(t->policy))) {
        rc = duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
        goto fail;
    }
    const model_config *mc = train_model_config(t->policy);
    if (o->erm_path && o->erm_path[0]) {
        if ((rc = erm_load(o->erm_path, 0, &t->erm, err))) goto fail;
    } else {
        erm_config ec = {o->erm_heads, 2 * mc->hidden_size, o->erm_hidden};
        duel_rng rng;
        duel_rng_seed(&rng, o->seed ^ 0x45524d5f494e4954ull); /* "ERM_INIT" */
        if ((rc = erm_create(&ec, &rng, &t->erm, err))) goto fail;
    }
    if ((rc = erm_trainer_create(t->erm, &o->erm, o->seed ^ 0x45524d5f42415443ull, &t->erm_trainer, err)))
        goto fail;
    erm_pair_log_init(&t->pair_log, t->trainer_dir, t->erm->config.d_feat);
    duel_rng_seed(&t->mix_rng, o->seed ^ 0x5345415f4d495821ull); /* "SEA_MIX!" */
    const int positions = mc->max_position_embeddings > 0 ? mc->max_position_embeddings : 0;
    if ((rc = vote_dedup_init(&t->recent, o->recent_vote_ids, err)) ||
        (rc = sea_store_init(&t->store, o->synthetic_store, positions, err)) ||
        (rc = online_pending_reserve(t, o->batch_size, err)) || (rc = online_checkpoint_read(t, err)) ||
        (rc = batch_cuts_open(&t->cuts, t->trainer_dir, t->status.step, o->io, err)))
        goto fail;
    *out = t;
    return 0;
fail:
    online_trainer_close(t);
    return rc;
}

void online_trainer_close(online_trainer *t) {
    if (!t) return;
    for (int i = 0; i < t->num_pending; i++) vote_entry_free(&t->pending[i]);
    free(t->pending);
    sea_store_free(&t->store);
    vote_dedup_free(&t->recent);
    erm_trainer_free(t->erm_trainer);
    erm_free(t->erm);
    adamw_free(&t->optimizer);
    free(t->decay_mask);
    free(t->config_json);
    train_model_free(t->policy);
    train_model_free(t->reference);
    erm_pair_log_close(&t->pair_log);
    batch_cuts_close(&t->cuts);
    free(t);
}

/* ---- rule 1: offering entries --------------------------------------------------------------- */

int online_pending_reserve(online_trainer *t, int n, duel_error *err) {
    if (n <= t->pending_cap) return 0;
    int cap = t->pending_cap * 2 > n ? t->pending_cap * 2 : n;
    if (cap > ONLINE_MAX_BATCH) cap = ONLINE_MAX_BATCH;
    if (n > cap) return duel_error_set(err, DUEL_ELIMIT, "online trainer: more than %d pending pairs", ONLINE_MAX_BATCH);
    vote_entry *p = realloc(t->pending, (size_t)cap * sizeof *p);
    if (!p) return duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
    memset(p + t->pending_cap, 0, (size_t)(cap - t->pending_cap) * sizeof *p);
    t->pending = p;
    t->pending_cap = cap;
    return 0;
}

int online_trainer_offer(online_trainer *t, const char *id, vote_entry *e, online_offer_result *result,
                         duel_error *err) {
    uint64_t ms, seq;
    if (strlen(id) >= STREAM_ID_MAX || stream_id_parse(id, &ms, &seq) != 0)
        return duel_error_set(err, DUEL_EINVAL, "online trainer: bad stream id '%s'", id);
    if (t->last_applied_id[0] && stream_id_compare(id, t->last_applied_id) <= 0) {
        *result = ONLINE_OFFER_APPLIED;
        return 0;
    }
    if (t->unsaved_id[0] && stream_id_compare(id, t->unsaved_id) <= 0) {
        *result = ONLINE_OFFER_DUPLICATE; /* offered already since the checkpoint */
        return 0;
    }
    snprintf(t->unsaved_id, sizeof t->unsaved_id, "%s", id);
    if (vote_dedup_contains(&t->recent, e->vote_id)) {
        t->status.duplicates++;
        *result = ONLINE_OFFER_DUPLICATE;
        return 0;
    }
    vote_dedup_add(&t->recent, e->vote_id);
    if (!vote_choice_is_pair(e->choice)) {
        if (e->choice == VOTE_CHOICE_TIE) t->status.ties++;
        else t->status.both_bad++;
        sea_store_push(&t->store, e);
        *result = ONLINE_OFFER_COUNTED;
        return 0;
    }
    int rc = online_pending_reserve(t, t->num_pending + 1, err);
    if (rc) return rc;
    t->pending[t->num_pending++] = *e;
    memset(e, 0, sizeof *e);
    *result = ONLINE_OFFER_BATCHED;
    return 0;
}

/* ---- rules 3 and 4: where batches end, and the update ---------------------------------------- */

/* The last stream id offered: where a batch cut now would end. */
static const char *last_offered_id(const online_trainer *t) {
    return t->unsaved_id[0] ? t->unsaved_id : t->last_applied_id;
}

bool online_trainer_cut_due(const online_trainer *t, bool caught_up) {
    const char *cut = batch_cuts_next(&t->cuts);
    if (cut) return t->num_pending > 0 && stream_id_compare(last_offered_id(t), cut) >= 0;
    const int most = t->options.max_batch_size > t->options.batch_size ? t->options.max_batch_size
                                                                      : t->options.batch_size;
    return t->num_pending >= most || (caught_up && t->num_pending >= t->options.batch_size);
}

bool online_trainer_cut_before(const online_trainer *t, const char *id) {
    const char *cut = batch_cuts_next(&t->cuts);
    return cut && t->num_pending > 0 && stream_id_compare(id, cut) > 0;
}

int online_trainer_sync_cuts(online_trainer *t, duel_error *err) {
    return batch_cuts_sync(&t->cuts, t->options.io, err);
}

int online_trainer_apply(online_trainer *t, duel_error *err) {
    const bool replayed = batch_cuts_next(&t->cuts) != NULL;
    if (t->num_pending == 0 || (!replayed && t->num_pending < t->options.batch_size))
        return duel_error_set(err, DUEL_EINVAL, "online trainer: no batch is ready");
    int rc = batch_cuts_record(&t->cuts, t->status.step + 1, last_offered_id(t), err);
    return rc ? rc : online_update_run(t, err);
}

/* ---- rule 2: the checkpoint ------------------------------------------------------------------ */

int online_trainer_checkpoint(online_trainer *t, duel_error *err) {
    /* A copy: with nothing offered since the last checkpoint, last_offered_id is
     * t->last_applied_id itself, and snprintf from a buffer into the same buffer is undefined
     * (glibc's wrote ""): the trainer then forgot what it had applied, took its own pending
     * entries, read again after a Redis reconnect, for new ones and counted them as duplicates
     * (ops/chaos, 10,000 votes: 265), and would have applied any that its ring of recent vote
     * ids no longer held a second time. */
    char applied[STREAM_ID_MAX];
    snprintf(applied, sizeof applied, "%s", last_offered_id(t));
    int rc = online_checkpoint_write(t, applied, err);
    if (rc) return rc;
    snprintf(t->last_applied_id, sizeof t->last_applied_id, "%s", applied);
    t->unsaved_id[0] = '\0';
    /* The checkpoint holds every update so far: their cuts are no longer needed. */
    return batch_cuts_checkpointed(&t->cuts, err);
}

/* ---- what callers read ----------------------------------------------------------------------- */

void online_trainer_limits(const online_trainer *t, vote_entry_limits *out) {
    const model_config *mc = train_model_config(t->policy);
    out->model_id = t->model_id;
    out->d_feat = t->erm->config.d_feat;
    out->num_heads = 0; /* erm_rewards are the serving ensemble's: any head count */
    out->vocab = mc->vocab_size;
    out->max_sequence = mc->max_position_embeddings > 0 ? mc->max_position_embeddings : 0;
}

train_model *online_trainer_policy(online_trainer *t) { return t->policy; }
const online_trainer_options *online_trainer_get_options(const online_trainer *t) { return &t->options; }
const char *online_trainer_config_json(const online_trainer *t) { return t->config_json; }
const erm *online_trainer_erm(const online_trainer *t) { return t->erm; }
int online_trainer_pending_pairs(const online_trainer *t) { return t->num_pending; }
bool online_trainer_publish_due(const online_trainer *t) { return t->publish_due; }

void online_trainer_set_published(online_trainer *t, int64_t v) {
    t->status.published_version = v;
    t->publish_due = false;
}

int online_trainer_synthetic_pairs(const online_trainer *t) {
    return sea_synthetic_count(t->num_pending, t->options.gamma, t->store.count, t->status.prefs_applied,
                               t->options.burn_in, ONLINE_MAX_BATCH);
}

void online_trainer_get_status(const online_trainer *t, online_trainer_status *out) {
    *out = t->status;
    snprintf(out->last_applied_id, sizeof out->last_applied_id, "%s", t->last_applied_id);
    out->erm_pairs_seen = erm_trainer_pairs_seen(t->erm_trainer);
    out->stored_duels = t->store.count;
}
