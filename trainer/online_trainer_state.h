/* online_trainer_state.h: the online trainer's state, shared by the files that make it up and
 * by no one else (callers use online_trainer.h): online_trainer.c (the exactly-once invariant:
 * open, offer, apply, checkpoint), online_options.c (defaults and checks), online_knobs.c (live
 * knobs), online_update.c (one ERM + policy update), online_checkpoint.c (the checkpoint's
 * format), with the parts they hold: vote_dedup.h, sea_store.h, batch_cuts.h, erm_pair_log.h. */
#ifndef DUEL_ONLINE_TRAINER_STATE_H
#define DUEL_ONLINE_TRAINER_STATE_H

#include "batch_cuts.h"
#include "erm_pair_log.h"
#include "lm_trainer.h"
#include "online_trainer.h"
#include "rng.h"
#include "sea_store.h"
#include "vote_dedup.h"

struct online_trainer {
    online_trainer_options options; /* in effect: base overridden by the live knobs */
    online_trainer_options base;    /* as configured */
    char data_dir[DURABLE_PATH_MAX], trainer_dir[DURABLE_PATH_MAX], base_model[DURABLE_PATH_MAX];
    char model_id[VOTE_ENTRY_MAX_ID + 1];
    train_model *policy, *reference;
    char *config_json;
    adamw_state optimizer;
    unsigned char *decay_mask;
    lr_schedule schedule;
    erm *erm;
    erm_trainer *erm_trainer;
    /* exactly-once bookkeeping */
    char last_applied_id[STREAM_ID_MAX]; /* in the checkpoint */
    char unsaved_id[STREAM_ID_MAX];      /* the last id offered since ("" when none) */
    vote_dedup recent;
    vote_entry *pending; /* the batch being gathered: owned a/b entries */
    int num_pending, pending_cap;
    erm_pair_log pair_log;
    /* counters and last values */
    online_trainer_status status;
    int64_t erm_right;
    bool publish_due;
    /* SEA: the duel store and the RNG that draws synthetic pairs */
    sea_store store;
    duel_rng mix_rng;
    batch_cuts cuts;
};

/* online_options.c: DUEL_EINVAL naming the first bad option. */
int online_options_check(const online_trainer_options *options, duel_error *err);
/* online_trainer.c: grows the pending batch's array to hold n entries. */
int online_pending_reserve(online_trainer *t, int n, duel_error *err);
/* online_update.c: one update on the pending batch (its cut already recorded). */
int online_update_run(online_trainer *t, duel_error *err);
/* online_checkpoint.c: writes <trainer_dir>/checkpoint atomically, recording applied_id as the
 * last applied stream id; reads it back at open (no checkpoint: a fresh start). */
int online_checkpoint_write(online_trainer *t, const char *applied_id, duel_error *err);
int online_checkpoint_read(online_trainer *t, duel_error *err);

#endif
