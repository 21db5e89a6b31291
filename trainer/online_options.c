/* online_options.c: the online trainer's option defaults and their checks (see
 * online_trainer.h; `duel train` reads the same keys from the configuration, docs/CONFIG.md). */
#include <math.h>
#include <string.h>

#include "online_trainer_state.h"

void online_trainer_default_options(online_trainer_options *o) {
    memset(o, 0, sizeof *o);
    o->erm_heads = ERM_DEFAULT_NUM_HEADS;
    o->erm_hidden = ERM_DEFAULT_HIDDEN;
    dap_loss_default_options(DAP_LOSS_DPO, &o->loss);
    o->batch_size = 8;
    o->max_batch_size = 64;
    o->chunk_positions = ONLINE_CHUNK_POSITIONS;
    o->lr = 3e-5; /* the embedded 5.6M default model (docs/BENCHMARKS.md "Learning loop"); ~5e-7 for real models */
    o->min_lr = 1e-6;
    o->warmup_steps = 10;
    o->total_steps = 100000;
    adamw_default_options(&o->adamw);
    o->adamw.weight_decay = 0.0;
    o->clip_norm = 1.0;
    erm_train_default_options(&o->erm);
    o->publish_every = 10;
    o->publish_every_seconds = 5.0;
    o->publish_when_idle = true;
    o->vote_ref_logprobs = true;
    o->vote_ref_tolerance = ONLINE_VOTE_REF_TOLERANCE;
    o->keep_snapshots = 10;
    o->checkpoint_every = 5;
    o->burn_in = 1000;
    o->gamma = 0.7;
    o->synthetic_store = 256;
    o->lr_scale = 1.0;
    o->recent_vote_ids = 2048;
    o->seed = 1234;
}

int online_options_check(const online_trainer_options *o, duel_error *err) {
    if (!o->model_dir) return duel_error_set(err, DUEL_EINVAL, "online trainer: model_dir is required");
    if (o->batch_size < 1 || o->batch_size > ONLINE_MAX_BATCH)
        return duel_error_set(err, DUEL_EINVAL, "trainer.batch_size %d outside 1..%d", o->batch_size,
                              ONLINE_MAX_BATCH);
    if (o->max_batch_size < 1 || o->max_batch_size > ONLINE_MAX_BATCH)
        return duel_error_set(err, DUEL_EINVAL, "trainer.max_batch_size %d outside 1..%d", o->max_batch_size,
                              ONLINE_MAX_BATCH);
    if (o->publish_every < 0 || o->recent_vote_ids < 1 || o->recent_vote_ids > 1000000)
        return duel_error_set(err, DUEL_EINVAL, "trainer: publish_every must be >= 0 and "
                              "recent_vote_ids in 1..1000000");
    if (o->model_id && strlen(o->model_id) > VOTE_ENTRY_MAX_ID)
        return duel_error_set(err, DUEL_EINVAL, "trainer.model_id is longer than %d bytes", VOTE_ENTRY_MAX_ID);
    lr_schedule schedule = {o->lr, o->min_lr, o->warmup_steps, o->total_steps};
    int rc = lr_schedule_check(&schedule, err);
    if (rc) return rc;
    if (!(o->clip_norm >= 0) || !(o->loss.beta > 0))
        return duel_error_set(err, DUEL_EINVAL, "trainer: clip_norm must be >= 0 and beta > 0");
    if (!(o->gamma > 0 && o->gamma <= 1))
        return duel_error_set(err, DUEL_EINVAL, "trainer.gamma %g outside (0, 1]", o->gamma);
    if (o->burn_in < 0 || o->synthetic_store < 1 || o->synthetic_store > ONLINE_MAX_STORE)
        return duel_error_set(err, DUEL_EINVAL, "trainer: burn_in must be >= 0 and synthetic_store in 1..%d",
                              ONLINE_MAX_STORE);
    if (o->keep_snapshots < 0 || o->keep_snapshots > 1000000)
        return duel_error_set(err, DUEL_EINVAL, "trainer: keep_snapshots must be in 0..1000000");
    if (o->chunk_positions < 1)
        return duel_error_set(err, DUEL_EINVAL, "trainer: chunk_positions must be >= 1");
    if (o->checkpoint_every < 1 || !(o->publish_every_seconds >= 0 && isfinite(o->publish_every_seconds)))
        return duel_error_set(err, DUEL_EINVAL, "trainer: checkpoint_every must be >= 1 and "
                              "publish_every_seconds finite and >= 0");
    return 0;
}
