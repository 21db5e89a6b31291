/* online_trainer.h: the state of the asynchronous trainer (DESIGN.md section 6) apart from Redis:
 * the policy being trained, the frozen reference (the initial policy), the policy's AdamW state,
 * the ERM ensemble with its trainer and pair buffer, the counters and the exactly-once
 * bookkeeping (last applied stream id, recent vote ids), and its checkpoint on disk.
 *
 * Exactly once (trainer/online_trainer.c states and enforces it; the stream consumer's side is
 * in stream_consumer.h): entries are offered in stream order (online_trainer_offer); an entry at
 * or before the checkpoint's last applied stream id is reported APPLIED (the caller only
 * acknowledges it), a vote id among the recent ones is a DUPLICATE. a/b votes join the pending
 * batch; tie and both_bad are counted. When a batch is due (online_trainer_cut_due),
 * online_trainer_apply runs one update (trainer/online_update.c): the ERM update (erm_train.h)
 * on the batch's real pairs that carry features (an unscored pilaf vote, d_feat 0, trains the
 * policy only; a batch without any leaves the ERM untouched), then one DAP update of the policy (dap_loss.h) with the reference's
 * log-probabilities of the same responses. online_trainer_checkpoint makes everything offered so
 * far durable (trainer/online_checkpoint.c); only then may the caller acknowledge those entries.
 *
 * SEA mixture (DESIGN.md section 6, trainer/sea_store.h): the trainer keeps a store of the last
 * `synthetic_store` duels (every entry that was batched or counted, with all M candidates'
 * tokens and features; an a/b entry joins it when its update is done, a tie or both_bad when it
 * is offered; an unscored duel without features, d_feat 0 (pilaf), never joins it). Once burn_in real pairs have been applied by earlier updates (prefs_applied >=
 * burn_in before this update), the policy batch of P real pairs (batch_size, or up to
 * max_batch_size) gets
 *     S = floor(P * (1 - gamma) / gamma + 1/2)   synthetic pairs (0 when gamma = 1 or the
 *                                                 store is empty; at most ONLINE_MAX_BATCH),
 * so real : synthetic = gamma : 1 - gamma up to rounding (P = 8, gamma = 0.7: S = 3). Each is
 * drawn after this update's ERM step from the mixture RNG: a stored duel uniformly, then a head
 * e uniformly, and labelled by sea_label with the current ERM: chosen = the candidate with the
 * largest r_e, rejected = the one with the smallest (the pair with the largest
 * |r_e(i) - r_e(j)|), then ordered by options.sea_relabel when one is set. Synthetic pairs never
 * enter the ERM buffer; all P + S pairs weigh the same in the DAP loss. With gamma = 1 the update
 * is exactly the one without a mixture.
 *
 * Checkpoint (<data_dir>/trainer/, trainer/online_checkpoint.h): checkpoint/ holds policy/
 * (checkpoint.h: weights and AdamW moments), erm.safetensors (theta and theta_0),
 * erm_optimizer.safetensors, entries.bin (the duel store and the pending batch's entries, so a
 * checkpoint may be taken between updates) and state.json (counters, last applied id, published
 * version, RNG states, recent vote ids, the pair log's length and the sha256 of every other
 * file). The ERM pair buffer is an append-only log beside it (trainer/erm_pair_log.h). The
 * folder is written as checkpoint.tmp and swapped into place (durable_file.h), so a crash at
 * any point leaves a complete old or new checkpoint. Everything the update depends on is in
 * it: an interrupted run resumes to bit-identical weights.
 *
 * Single-threaded: the consumer thread owns the trainer. */
#ifndef DUEL_ONLINE_TRAINER_H
#define DUEL_ONLINE_TRAINER_H

#include <stdbool.h>
#include <stdint.h>

#include "adamw.h"
#include "dap_loss.h"
#include "durable_file.h"
#include "erm.h"
#include "erm_train.h"
#include "error.h"
#include "sea_store.h"
#include "stream_id.h"
#include "train_model.h"
#include "vote_entry.h"

#define ONLINE_MAX_BATCH 4096
/* Padded positions per forward/backward pass of a policy update (2 rows a pair, each as long as
 * the chunk's longest): about 7 pairs of 50-token rows, 17 of 22-token rows. */
#define ONLINE_CHUNK_POSITIONS 768
#define ONLINE_MAX_STORE 100000 /* duels in the SEA store */

typedef struct online_trainer_options {
    const char *model_dir;   /* initial policy (HF folder); also the frozen reference */
    const char *erm_path;    /* initial ERM (erm.safetensors); NULL: a fresh ensemble from seed */
    int erm_heads, erm_hidden; /* for a fresh ensemble (d_feat = 2 * hidden_size) */
    const char *model_id;    /* entries must carry it; NULL or "" accepts any */
    dap_loss_options loss;
    int batch_size;          /* real a/b pairs per policy update: 8 */
    int max_batch_size;      /* while the trainer is behind the stream a batch grows to this many
                                pairs (online_trainer_cut_due); at or below batch_size: every batch
                                is batch_size pairs: 64 */
    double lr, min_lr;       /* policy AdamW: 3e-5, 1e-6 */
    int64_t warmup_steps, total_steps; /* warmup + cosine over total_steps (min_lr after) */
    adamw_options adamw;     /* (0.9, 0.95), weight decay 0 */
    double clip_norm;        /* 1.0 */
    erm_train_options erm;
    int publish_every;       /* updates between snapshots; 0: never */
    double publish_every_seconds; /* also publish once this long has passed since the last
                                     snapshot and an update is unpublished; 0: never */
    bool publish_when_idle;  /* also publish an unpublished update as soon as the trainer has
                                caught up with the stream (a read returned less than a full
                                count): a quiet system serves every update at once, and the
                                limits above apply under a backlog: true */
    int keep_snapshots;      /* snapshot folders kept (the newest, plus any duel:rollout pins);
                                older ones are unregistered and deleted; 0: keep all: 10 */
    int checkpoint_every;    /* updates between checkpoints (a snapshot does not force one): 5 */
    bool vote_ref_logprobs;  /* take the reference log-probabilities a vote carries (ref_logprobs,
                                the serving engine's reference pass) instead of running the
                                reference model over its pairs; a chunk whose pairs do not all
                                carry them runs the reference model: true */
    double vote_ref_tolerance; /* how far (nats, plus ONLINE_VOTE_REF_RELATIVE of the value) the
                                  votes' values may be from the trainer's own at the check (not a
                                  config key; tests raise it): ONLINE_VOTE_REF_TOLERANCE */
    int64_t burn_in;         /* real pairs applied before synthetic pairs start: 1000 */
    double gamma;            /* real fraction of the policy batch, in (0, 1]: 0.7 */
    int synthetic_store;     /* duels kept for synthetic pairs, 1..ONLINE_MAX_STORE: 256 */
    int chunk_positions;     /* padded positions per forward/backward pass of an update (not a
                                config key; tests lower it): ONLINE_CHUNK_POSITIONS */
    double lr_scale;         /* multiplies the scheduled policy lr (a live knob): 1 */
    /* Labels of the synthetic pairs from elsewhere (not a config key; `duel sim --labels oracle`,
     * what the SEA paper's public code does): once the ERM head has chosen a stored duel's pair,
     * this may swap *chosen and *rejected (candidate indices of entry); an error fails the
     * update. NULL (the default): the head's order, the paper's rule. */
    int (*sea_relabel)(void *context, const vote_entry *entry, int *chosen, int *rejected, duel_error *err);
    void *sea_relabel_context;
    int recent_vote_ids;     /* vote ids remembered for de-duplication: 2048 */
    uint64_t seed;
    const durable_io *io;    /* file I/O hooks of the checkpoint (not a config key; fault tests):
                                NULL, real I/O */
} online_trainer_options;

typedef enum online_offer_result {
    ONLINE_OFFER_BATCHED,   /* an a/b pair joined the pending batch */
    ONLINE_OFFER_COUNTED,   /* tie or both_bad: counted, not trained on */
    ONLINE_OFFER_DUPLICATE, /* vote id already applied or pending: skipped */
    ONLINE_OFFER_APPLIED,   /* stream id at or before the last applied one: already in the
                               checkpoint, just acknowledge it */
} online_offer_result;

/* How far (nats, plus a relative part) the reference log-probabilities a vote carries may be
 * from the trainer's own: the serving engine and the trainer compute the same f32 model with a
 * different summation order (about 1e-6 apart); another model is whole nats away. */
#define ONLINE_VOTE_REF_TOLERANCE 1e-3
#define ONLINE_VOTE_REF_RELATIVE 1e-4

typedef struct online_trainer_status {
    int64_t step;            /* policy updates */
    int64_t prefs_applied;   /* a/b pairs trained on */
    int64_t ties, both_bad, duplicates;
    int64_t erm_pairs_seen;
    int64_t published_version; /* 0: none yet */
    char last_applied_id[STREAM_ID_MAX];
    double loss, margin, accuracy; /* DAP loss of the last update (before it) */
    double kl;               /* mean over the batch's responses of log pi - log pi_ref (sums) */
    double lr, grad_norm;
    double erm_loss;         /* mean_e L_e of the last ERM step */
    double erm_accuracy;     /* running accuracy of the ERM mean on votes before training on
                                them (held back by construction) */
    int64_t erm_scored;      /* votes that accuracy is over */
    int synthetic;           /* synthetic pairs in the last update */
    int64_t synthetic_total; /* synthetic pairs trained on */
    int stored_duels;        /* duels in the SEA store */
    double update_flops;     /* matrix FLOPs of the policy updates since this process opened the
                                trainer: reference forward (where it ran), policy forward and backward over the
                                batches' rows without their padding (train_model_flops_per_position) */
    int64_t vote_ref_pairs;  /* pairs since open whose reference log-probabilities came with the
                                votes (no reference forward; vote_ref_logprobs) */
    int vote_ref_check;      /* the first chunk with the votes' reference log-probabilities after
                                open also runs the trainer's reference and compares: 0 not yet,
                                1 they agree, -1 they do not (|difference| above
                                options.vote_ref_tolerance: the servers' base model is not this
                                trainer's reference), and the trainer runs its own reference from
                                then on */
    double vote_ref_error;   /* that check's largest |difference| (nats) */
    double erm_seconds;      /* since open, the updates' time in the ERM (held-back scoring, its
                                AdamW steps, labelling the synthetic pairs), */
    double policy_seconds;   /* in the policy's forward and backward passes, */
    double optimizer_seconds; /* and in clipping and the policy's AdamW step */
} online_trainer_status;

typedef struct online_trainer online_trainer;

void online_trainer_default_options(online_trainer_options *out);

/* Loads the policy and reference from options->model_dir, the ERM, and resumes from the
 * checkpoint in <data_dir>/trainer when there is one (a checkpoint of another model shape or
 * ERM shape is an error naming the file). */
int online_trainer_open(const online_trainer_options *options, const char *data_dir,
                        online_trainer **out, duel_error *err);
void online_trainer_close(online_trainer *trainer);

/* Limits for vote_entry_decode: the model id, the ERM's d_feat and heads, the vocabulary and
 * the policy's positions. */
void online_trainer_limits(const online_trainer *trainer, vote_entry_limits *out);

/* Offers the entry with stream id `id` (strictly increasing across calls, except that ids at or
 * before the last applied one are reported as ONLINE_OFFER_APPLIED). A batched entry's contents
 * are moved into the trainer (entry is left empty). DUEL_EINVAL for a malformed id. */
int online_trainer_offer(online_trainer *trainer, const char *id, vote_entry *entry,
                         online_offer_result *result, duel_error *err);
/* a/b pairs waiting for the next update. */
int online_trainer_pending_pairs(const online_trainer *trainer);
/* Whether the pending pairs make a batch now (the consumer then calls online_trainer_apply):
 * max(batch_size, max_batch_size) are pending; or batch_size are and the consumer has caught
 * up with the stream (caught_up: its last read of new entries returned less than a full count),
 * so a trainer that keeps up applies batches of batch_size and one that is behind applies
 * larger ones. Where the batch ends thus depends on timing, so every update's last stream id is
 * logged (trainer/batch_cuts.log, synced before a snapshot is published) and, after a restart,
 * the updates the checkpoint lost end where they ended before (such a cut is due once the last
 * offered id reaches it), so that a replayed snapshot version holds the same weights. */
bool online_trainer_cut_due(const online_trainer *trainer, bool caught_up);
/* Whether a replayed cut ends before the entry `id` (the entry it ended on was not offered
 * again, e.g. dead-lettered): the consumer applies the batch before offering `id`. */
bool online_trainer_cut_before(const online_trainer *trainer, const char *id);
/* Makes the logged cuts durable (before a snapshot of their updates is published). */
int online_trainer_sync_cuts(online_trainer *trainer, duel_error *err);

/* Runs one update on the pending batch (DUEL_EINVAL when no batch is due: fewer than
 * batch_size pairs pending, outside a replayed cut). */
int online_trainer_apply(online_trainer *trainer, duel_error *err);

/* Synthetic pairs the next update will add (the rule above, for the current state). */
int online_trainer_synthetic_pairs(const online_trainer *trainer);
/* Whether the last update makes a snapshot due (publish_every). */
bool online_trainer_publish_due(const online_trainer *trainer);

/* Writes the checkpoint atomically; afterwards every offered entry counts as applied. */
int online_trainer_checkpoint(online_trainer *trainer, duel_error *err);

void online_trainer_get_status(const online_trainer *trainer, online_trainer_status *out);

/* Live knobs (DESIGN.md section 8, the hash duel:knobs): the options in effect become the
 * configured ones overridden by these (name, value) pairs, so a knob deleted from the hash
 * reverts to the configuration. Each is checked against the knob table (common/knobs.h: the
 * trainer's knobs are loss, beta, gamma, lr_scale, clip_norm, publish_every_seconds, batch_size,
 * publish_every, checkpoint_every, burn_in, with the ranges of their config keys; loss switches
 * to that loss's default beta unless beta is set too). Serving knobs are ignored. Any other
 * name, a wrong type or a value out of range is rejected: it is left out (the configured value
 * stays) and reported with the reason in report; the other knobs still apply. Returns 0 when no
 * knob was rejected, DUEL_EINVAL when any was (report says which). Implemented in
 * trainer/online_knobs.c. */
#define ONLINE_MAX_KNOB_REPORTS 16
typedef struct online_knob_rejection {
    char name[64], value[64], reason[192];
} online_knob_rejection;
typedef struct online_knob_report {
    int applied;
    int num_rejected; /* at most ONLINE_MAX_KNOB_REPORTS are kept */
    online_knob_rejection rejected[ONLINE_MAX_KNOB_REPORTS];
} online_knob_report;
int online_trainer_set_knobs(online_trainer *trainer, int n, const char *const *names,
                             const char *const *values, online_knob_report *report);
/* The trainer knobs in effect as one JSON object (DUEL_ELIMIT when cap is too small). */
int online_trainer_knobs_json(const online_trainer *trainer, char *out, size_t cap);

/* The options in effect (live knobs included). */
const online_trainer_options *online_trainer_get_options(const online_trainer *trainer);

/* For snapshots and tests. */
train_model *online_trainer_policy(online_trainer *trainer);
const char *online_trainer_config_json(const online_trainer *trainer);
const erm *online_trainer_erm(const online_trainer *trainer);
/* Records that snapshot `version` now exists (stored with the next checkpoint); clears
 * online_trainer_publish_due. */
void online_trainer_set_published(online_trainer *trainer, int64_t version);

#endif
