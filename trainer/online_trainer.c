/* online_trainer.c: the trainer's state, its updates and its checkpoint (see online_trainer.h). */
#include "online_trainer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "json_util.h"
#include "lm_trainer.h"
#include "safetensors.h"
#include "sha256.h"
#include "timer.h"

#define STATE_FORMAT "duel-online-trainer"
#define STATE_VERSION 2 /* 2: SEA store and pending entries in entries.bin */
#define ENTRIES_MAGIC "DUELENT1"
#define ENTRIES_MAX_BYTES ((uint64_t)16 << 30)
#define STATE_MAX_BYTES ((size_t)64 << 20)
#define PAIR_LOG_COMPACT_FACTOR 4 /* rewrite the pair log when it holds this many buffers */

/* One pending a/b pair: the entry's contents that the update needs. */
typedef struct pending_pair {
    vote_entry entry;
} pending_pair;

struct online_trainer {
    online_trainer_options options; /* in effect: base overridden by the live knobs */
    online_trainer_options base;    /* as configured */
    char data_dir[ONLINE_PATH_MAX], trainer_dir[ONLINE_PATH_MAX], base_model[ONLINE_PATH_MAX];
    char model_id[VOTE_ENTRY_MAX_ID + 1];
    train_model *policy, *reference;
    char *config_json;
    adamw_state optimizer;
    unsigned char *decay_mask;
    lr_schedule schedule;
    erm *erm;
    erm_trainer *erm_trainer;
    /* exactly-once bookkeeping */
    char last_applied_id[ONLINE_STREAM_ID_MAX]; /* in the checkpoint */
    char unsaved_id[ONLINE_STREAM_ID_MAX];      /* offered since */
    char (*recent)[VOTE_ENTRY_MAX_ID + 1];
    int recent_start, recent_count;
    pending_pair *pending;
    int num_pending, pending_cap;
    /* the pair log: erm_pairs.<gen>.bin holds pairs base .. base + records */
    int pair_log_fd;
    int64_t pair_log_gen, pair_log_base, pair_log_records, old_pair_log_gen;
    /* counters and last values */
    online_trainer_status status;
    int64_t erm_right;
    bool publish_due;
    /* SEA: the duel store (a ring of owned entries, oldest at store_start) and the RNG that
     * draws synthetic pairs */
    vote_entry *store;
    int store_start, store_count;
    duel_rng mix_rng;
    /* batch cuts (online_trainer_cut_due): the log's descriptor, and the cuts of the updates
     * after the checkpoint that a restart replays (update checkpoint step + 1 + i ends at
     * replay_cuts[i]) */
    int cut_log_fd;
    char (*replay_cuts)[ONLINE_STREAM_ID_MAX];
    int num_replay_cuts, next_replay_cut;
};

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

/* ---- stream ids ------------------------------------------------------------------------- */

int online_stream_id_parse(const char *id, uint64_t *ms, uint64_t *seq) {
    const char *p = id;
    uint64_t v[2] = {0, 0};
    for (int part = 0; part < 2; part++) {
        if (*p < '0' || *p > '9') return DUEL_EINVAL;
        while (*p >= '0' && *p <= '9') {
            uint64_t d = (uint64_t)(*p - '0');
            if (v[part] > (UINT64_MAX - d) / 10) return DUEL_EINVAL;
            v[part] = v[part] * 10 + d;
            p++;
        }
        if (part == 0 && *p++ != '-') return DUEL_EINVAL;
    }
    if (*p != '\0') return DUEL_EINVAL;
    *ms = v[0];
    *seq = v[1];
    return 0;
}

int online_stream_id_compare(const char *a, const char *b) {
    uint64_t am = 0, as = 0, bm = 0, bs = 0;
    online_stream_id_parse(a, &am, &as);
    online_stream_id_parse(b, &bm, &bs);
    if (am != bm) return am < bm ? -1 : 1;
    if (as != bs) return as < bs ? -1 : 1;
    return 0;
}

/* ---- files ------------------------------------------------------------------------------ */

static int path_join(char *out, const char *dir, const char *name, duel_error *err) {
    if (snprintf(out, ONLINE_PATH_MAX, "%s/%s", dir, name) >= ONLINE_PATH_MAX)
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", dir);
    return 0;
}

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Removes a folder we wrote, two levels deep at most (checkpoint/policy/...). */
static void remove_tree(const char *dir, int depth) {
    DIR *d = opendir(dir);
    if (!d) {
        unlink(dir);
        return;
    }
    struct dirent *e;
    char path[ONLINE_PATH_MAX];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            if (depth > 0) remove_tree(path, depth - 1);
        } else {
            unlink(path);
        }
    }
    closedir(d);
    rmdir(dir);
}

static int write_file_synced(const char *path, const void *data, size_t len, duel_error *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return duel_error_set(err, DUEL_EIO, "%s: cannot create: %s", path, strerror(errno));
    const char *p = data;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, p + off, len - off);
        if (w <= 0) {
            close(fd);
            return duel_error_set(err, DUEL_EIO, "%s: write failed: %s", path, strerror(errno));
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0)
        return duel_error_set(err, DUEL_EIO, "%s: fsync failed: %s", path, strerror(errno));
    return 0;
}

static void pair_log_name(const online_trainer *t, int64_t gen, char *out) {
    if (snprintf(out, ONLINE_PATH_MAX, "%s/erm_pairs.%06" PRId64 ".bin", t->trainer_dir, gen) >=
        ONLINE_PATH_MAX)
        out[0] = '\0'; /* open("") fails with a message naming the empty path */
}

static size_t pair_record_bytes(const online_trainer *t) {
    return (size_t)2 * (size_t)t->erm->config.d_feat * sizeof(float);
}

/* Opens (creating) the pair log of generation gen, cut to records valid records. */
static int pair_log_open(online_trainer *t, int64_t gen, int64_t records, duel_error *err) {
    char path[ONLINE_PATH_MAX];
    pair_log_name(t, gen, path);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return duel_error_set(err, DUEL_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    off_t want = (off_t)records * (off_t)pair_record_bytes(t);
    if (fstat(fd, &st) != 0 || st.st_size < want) {
        close(fd);
        return duel_error_set(err, DUEL_EFORMAT, "%s: holds %lld bytes, the checkpoint needs %lld",
                              path, (long long)st.st_size, (long long)want);
    }
    if (st.st_size > want && ftruncate(fd, want) != 0) {
        close(fd);
        return duel_error_set(err, DUEL_EIO, "%s: cannot truncate: %s", path, strerror(errno));
    }
    if (t->pair_log_fd >= 0) close(t->pair_log_fd);
    t->pair_log_fd = fd;
    t->pair_log_gen = gen;
    t->pair_log_records = records;
    return 0;
}

static int pair_log_append(online_trainer *t, const float *record, duel_error *err) {
    size_t n = pair_record_bytes(t);
    off_t at = (off_t)t->pair_log_records * (off_t)n;
    const char *p = (const char *)record;
    size_t off = 0;
    while (off < n) {
        ssize_t w = pwrite(t->pair_log_fd, p + off, n - off, at + (off_t)off);
        if (w <= 0) return duel_error_set(err, DUEL_EIO, "erm pair log: write failed: %s", strerror(errno));
        off += (size_t)w;
    }
    t->pair_log_records++;
    return 0;
}

/* Removes pair logs other than the current generation (leftovers of compactions and crashes). */
static void pair_log_remove_others(online_trainer *t) {
    DIR *d = opendir(t->trainer_dir);
    if (!d) return;
    struct dirent *e;
    char keep[ONLINE_PATH_MAX], path[ONLINE_PATH_MAX];
    pair_log_name(t, t->pair_log_gen, keep);
    const char *keep_name = strrchr(keep, '/') + 1;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "erm_pairs.", 10) != 0 || strcmp(e->d_name, keep_name) == 0) continue;
        if (snprintf(path, sizeof path, "%s/%s", t->trainer_dir, e->d_name) < (int)sizeof path)
            unlink(path);
    }
    closedir(d);
}

/* ---- batch cuts ------------------------------------------------------------------------- */

/* trainer/batch_cuts.log: a line "<update> <last stream id>" per update since the checkpoint
 * (emptied by each checkpoint). At open, the lines after the checkpoint's step, consecutive from
 * step + 1, become the replayed cuts; a torn last line (a crash mid-write) and anything after a
 * gap are ignored: those updates were never published. */
static int cut_log_open(online_trainer *t, duel_error *err) {
    char path[ONLINE_PATH_MAX];
    int rc = path_join(path, t->trainer_dir, "batch_cuts.log", err);
    if (rc) return rc;
    FILE *f = fopen(path, "r");
    if (f) {
        char line[128];
        int64_t next = t->status.step + 1;
        while (fgets(line, sizeof line, f)) {
            long long step = 0;
            char id[ONLINE_STREAM_ID_MAX];
            uint64_t ms, seq;
            size_t n = strlen(line);
            if (n == 0 || line[n - 1] != '\n' || sscanf(line, "%lld %47s", &step, id) != 2 ||
                online_stream_id_parse(id, &ms, &seq) != 0)
                break;
            if (step < next) continue; /* in the checkpoint already */
            if (step != next) break;
            void *grown = realloc(t->replay_cuts, (size_t)(t->num_replay_cuts + 1) * sizeof *t->replay_cuts);
            if (!grown) {
                fclose(f);
                return duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
            }
            t->replay_cuts = grown;
            snprintf(t->replay_cuts[t->num_replay_cuts++], ONLINE_STREAM_ID_MAX, "%s", id);
            next++;
        }
        fclose(f);
    }
    /* Rewritten with just the replayed cuts (so that a torn line is not followed by new ones),
     * atomically: a crash here must not lose the cuts still to replay. */
    char *text = malloc((size_t)t->num_replay_cuts * 64 + 1);
    if (!text) return duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
    size_t len = 0;
    for (int i = 0; i < t->num_replay_cuts; i++)
        len += (size_t)snprintf(text + len, 64, "%lld %s\n", (long long)(t->status.step + 1 + i), t->replay_cuts[i]);
    char tmp[ONLINE_PATH_MAX];
    rc = path_join(tmp, t->trainer_dir, "batch_cuts.log.tmp", err);
    if (rc == 0) rc = write_file_synced(tmp, text, len, err);
    free(text);
    if (rc) return rc;
    if (rename(tmp, path) != 0 || fsync_path(t->trainer_dir) != 0)
        return duel_error_set(err, DUEL_EIO, "%s: cannot replace: %s", path, strerror(errno));
    t->cut_log_fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (t->cut_log_fd < 0) return duel_error_set(err, DUEL_EIO, "%s: cannot open: %s", path, strerror(errno));
    return 0;
}

/* The last stream id offered: where a batch cut now would end. */
static const char *last_offered_id(const online_trainer *t) {
    return t->unsaved_id[0] ? t->unsaved_id : t->last_applied_id;
}

static const char *replay_cut(const online_trainer *t) {
    return t->next_replay_cut < t->num_replay_cuts ? t->replay_cuts[t->next_replay_cut] : NULL;
}

bool online_trainer_cut_due(const online_trainer *t, bool caught_up) {
    const char *cut = replay_cut(t);
    if (cut) return t->num_pending > 0 && online_stream_id_compare(last_offered_id(t), cut) >= 0;
    const int most = t->options.max_batch_size > t->options.batch_size ? t->options.max_batch_size
                                                                      : t->options.batch_size;
    return t->num_pending >= most || (caught_up && t->num_pending >= t->options.batch_size);
}

bool online_trainer_cut_before(const online_trainer *t, const char *id) {
    const char *cut = replay_cut(t);
    return cut && t->num_pending > 0 && online_stream_id_compare(id, cut) > 0;
}

int online_trainer_sync_cuts(online_trainer *t, duel_error *err) {
    if (t->cut_log_fd >= 0 && fsync(t->cut_log_fd) != 0)
        return duel_error_set(err, DUEL_EIO, "batch_cuts.log: fsync failed: %s", strerror(errno));
    return 0;
}

/* Records the cut of the update about to run (a replayed one is in the log already). */
static int cut_log_append(online_trainer *t, duel_error *err) {
    if (replay_cut(t)) {
        t->next_replay_cut++;
        return 0;
    }
    char line[64];
    int n = snprintf(line, sizeof line, "%lld %s\n", (long long)(t->status.step + 1), last_offered_id(t));
    if (t->cut_log_fd >= 0 && write(t->cut_log_fd, line, (size_t)n) != n)
        return duel_error_set(err, DUEL_EIO, "batch_cuts.log: write failed: %s", strerror(errno));
    return 0;
}

/* ---- open / close ----------------------------------------------------------------------- */


static int load_checkpoint(online_trainer *t, duel_error *err);

int online_trainer_open(const online_trainer_options *o, const char *data_dir,
                        online_trainer **out, duel_error *err) {
    *out = NULL;
    if (!o->model_dir || !data_dir)
        return duel_error_set(err, DUEL_EINVAL, "online trainer: model_dir and data_dir are required");
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
    online_trainer *t = calloc(1, sizeof *t);
    if (!t) return duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
    t->options = *o;
    t->options.model_dir = NULL;
    t->options.erm_path = NULL;
    t->options.model_id = NULL;
    t->options.loss.xpo_alpha = 0; /* XPO needs samples of the reference, which votes lack */
    t->base = t->options;
    t->schedule = schedule;
    t->pair_log_fd = -1;
    t->cut_log_fd = -1;
    snprintf(t->base_model, sizeof t->base_model, "%s", o->model_dir);
    snprintf(t->model_id, sizeof t->model_id, "%s", o->model_id ? o->model_id : "");
    snprintf(t->data_dir, sizeof t->data_dir, "%s", data_dir);
    if ((rc = path_join(t->trainer_dir, data_dir, "trainer", err))) goto fail;
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
    size_t n = train_model_num_parameters(t->policy);
    if ((rc = adamw_init(&t->optimizer, n, err))) goto fail;
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
    t->recent = calloc((size_t)o->recent_vote_ids, sizeof *t->recent);
    t->pending = calloc((size_t)o->batch_size, sizeof *t->pending);
    t->pending_cap = o->batch_size;
    t->store = calloc((size_t)o->synthetic_store, sizeof *t->store);
    duel_rng_seed(&t->mix_rng, o->seed ^ 0x5345415f4d495821ull); /* "SEA_MIX!" */
    if (!t->recent || !t->pending || !t->store) {
        rc = duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
        goto fail;
    }
    if ((rc = load_checkpoint(t, err)) || (rc = cut_log_open(t, err))) goto fail;
    *out = t;
    return 0;
fail:
    online_trainer_close(t);
    return rc;
}

void online_trainer_close(online_trainer *t) {
    if (!t) return;
    for (int i = 0; i < t->num_pending; i++) vote_entry_free(&t->pending[i].entry);
    free(t->pending);
    for (int i = 0; t->store && i < t->options.synthetic_store; i++) vote_entry_free(&t->store[i]);
    free(t->store);
    free(t->recent);
    erm_trainer_free(t->erm_trainer);
    erm_free(t->erm);
    adamw_free(&t->optimizer);
    free(t->decay_mask);
    free(t->config_json);
    train_model_free(t->policy);
    train_model_free(t->reference);
    if (t->pair_log_fd >= 0) close(t->pair_log_fd);
    if (t->cut_log_fd >= 0) close(t->cut_log_fd);
    free(t->replay_cuts);
    free(t);
}

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
void online_trainer_set_published(online_trainer *t, int64_t v) {
    t->status.published_version = v;
    t->publish_due = false;
}
int online_trainer_pending_pairs(const online_trainer *t) { return t->num_pending; }
bool online_trainer_batch_ready(const online_trainer *t) { return t->num_pending >= t->options.batch_size; }
bool online_trainer_publish_due(const online_trainer *t) { return t->publish_due; }
const char *online_trainer_unsaved_id(const online_trainer *t) { return t->unsaved_id; }

void online_trainer_get_status(const online_trainer *t, online_trainer_status *out) {
    *out = t->status;
    snprintf(out->last_applied_id, sizeof out->last_applied_id, "%s", t->last_applied_id);
    out->erm_pairs_seen = erm_trainer_pairs_seen(t->erm_trainer);
    out->stored_duels = t->store_count;
}

/* ---- live knobs ------------------------------------------------------------------------- */

/* Knobs of duel:knobs that belong to serving (the engine and the gateway read them): the
 * trainer ignores them without a word. */
static const char *const SERVING_KNOBS[] = {"strategy", "M", "temperature", "top_p", "top_k", "max_new_tokens",
                                            "min_p", "repetition_penalty", "arena_fraction", NULL};

static int knob_int(const char *name, const char *v, long long lo, long long hi, long long *out, duel_error *err) {
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!v[0] || *end || errno || (v[0] != '-' && (v[0] < '0' || v[0] > '9')))
        return duel_error_set(err, DUEL_EFORMAT, "knob %s: '%.64s' is not an integer", name, v);
    if (x < lo || x > hi)
        return duel_error_set(err, DUEL_EINVAL, "knob %s: %lld outside %lld..%lld", name, x, lo, hi);
    *out = x;
    return 0;
}

/* lo_open: the lower bound itself is excluded. */
static int knob_real(const char *name, const char *v, double lo, bool lo_open, double hi, double *out,
                     duel_error *err) {
    char *end = NULL;
    errno = 0;
    double x = strtod(v, &end);
    if (!v[0] || *end || errno || !isfinite(x) || (v[0] != '-' && v[0] != '.' && (v[0] < '0' || v[0] > '9')))
        return duel_error_set(err, DUEL_EFORMAT, "knob %s: '%.64s' is not a finite number", name, v);
    if (x < lo || (lo_open && x == lo) || x > hi)
        return duel_error_set(err, DUEL_EINVAL, "knob %s: %g outside %s%g, %g]", name, x, lo_open ? "(" : "[", lo, hi);
    *out = x;
    return 0;
}

/* Applies one knob to o; DUEL_ENOTFOUND when it is not a trainer knob. */
static int apply_knob(online_trainer_options *o, const char *name, const char *v, duel_error *err) {
    long long i = 0;
    double x = 0;
    int rc;
    if (strcmp(name, "beta") == 0) {
        if ((rc = knob_real(name, v, 0, true, 1e6, &x, err)) == 0) o->loss.beta = x;
    } else if (strcmp(name, "gamma") == 0) {
        if ((rc = knob_real(name, v, 0, true, 1, &x, err)) == 0) o->gamma = x;
    } else if (strcmp(name, "loss") == 0) {
        dap_loss_kind kind;
        if ((rc = dap_loss_kind_parse(v, &kind, err)) == 0 && kind != o->loss.kind) {
            double simpo_gamma = o->loss.simpo_gamma;
            dap_loss_default_options(kind, &o->loss); /* that loss's beta unless a beta knob is set */
            o->loss.simpo_gamma = kind == DAP_LOSS_SIMPO ? o->loss.simpo_gamma : simpo_gamma;
            o->loss.xpo_alpha = 0;
        }
    } else if (strcmp(name, "lr_scale") == 0) {
        if ((rc = knob_real(name, v, 0, true, 1000, &x, err)) == 0) o->lr_scale = x;
    } else if (strcmp(name, "clip_norm") == 0) {
        if ((rc = knob_real(name, v, 0, false, 1e6, &x, err)) == 0) o->clip_norm = x;
    } else if (strcmp(name, "publish_every_seconds") == 0) {
        if ((rc = knob_real(name, v, 0, false, 1e9, &x, err)) == 0) o->publish_every_seconds = x;
    } else if (strcmp(name, "batch_size") == 0) {
        if ((rc = knob_int(name, v, 1, ONLINE_MAX_BATCH, &i, err)) == 0) o->batch_size = (int)i;
    } else if (strcmp(name, "publish_every") == 0) {
        if ((rc = knob_int(name, v, 0, 1 << 30, &i, err)) == 0) o->publish_every = (int)i;
    } else if (strcmp(name, "checkpoint_every") == 0) {
        if ((rc = knob_int(name, v, 1, 1 << 30, &i, err)) == 0) o->checkpoint_every = (int)i;
    } else if (strcmp(name, "burn_in") == 0) {
        if ((rc = knob_int(name, v, 0, 1LL << 40, &i, err)) == 0) o->burn_in = i;
    } else {
        return DUEL_ENOTFOUND;
    }
    return rc;
}

int online_trainer_set_knobs(online_trainer *t, int n, const char *const *names, const char *const *values,
                             online_knob_report *report) {
    online_trainer_options o = t->base;
    memset(report, 0, sizeof *report);
    /* loss first: a beta knob then overrides that loss's default beta, whatever the order */
    for (int pass = 0; pass < 2; pass++) {
        for (int k = 0; k < n; k++) {
            if ((strcmp(names[k], "loss") == 0) != (pass == 0)) continue;
            bool serving = false;
            for (int s = 0; SERVING_KNOBS[s]; s++) serving |= strcmp(SERVING_KNOBS[s], names[k]) == 0;
            if (serving) continue;
            duel_error kerr = {0};
            int rc = apply_knob(&o, names[k], values[k], &kerr);
            if (rc == 0) {
                report->applied++;
                continue;
            }
            if (rc == DUEL_ENOTFOUND) duel_error_set(&kerr, rc, "unknown knob %.64s", names[k]);
            if (report->num_rejected < ONLINE_MAX_KNOB_REPORTS) {
                online_knob_rejection *r = &report->rejected[report->num_rejected++];
                snprintf(r->name, sizeof r->name, "%.63s", names[k]);
                snprintf(r->value, sizeof r->value, "%.63s", values[k]);
                snprintf(r->reason, sizeof r->reason, "%.191s", kerr.message);
            }
        }
    }
    t->options = o;
    return 0;
}

int online_trainer_knobs_json(const online_trainer *t, char *out, size_t cap) {
    const online_trainer_options *o = &t->options;
    int n = snprintf(out, cap,
                     "{\"loss\":\"%s\",\"beta\":%.9g,\"gamma\":%.9g,\"lr_scale\":%.9g,\"clip_norm\":%.9g,"
                     "\"batch_size\":%d,\"burn_in\":%lld,\"publish_every\":%d,\"publish_every_seconds\":%.9g,"
                     "\"checkpoint_every\":%d}",
                     dap_loss_kind_name(o->loss.kind), o->loss.beta, o->gamma, o->lr_scale, o->clip_norm, o->batch_size,
                     (long long)o->burn_in, o->publish_every, o->publish_every_seconds, o->checkpoint_every);
    return n >= 0 && (size_t)n < cap ? 0 : DUEL_ELIMIT;
}

/* ---- the SEA duel store ----------------------------------------------------------------- */

/* Takes entry's contents into the store (the oldest duel leaves when full); entry is left
 * empty. Duels with a candidate that does not fit the model's positions are not kept (their
 * synthetic pairs could not be trained on). */
static void store_push(online_trainer *t, vote_entry *e) {
    const model_config *mc = train_model_config(t->policy);
    for (int i = 0; mc->max_position_embeddings > 0 && i < e->num_candidates; i++) {
        int len;
        vote_entry_candidate(e, i, &len);
        if (e->n_prompt_tokens + len > mc->max_position_embeddings) {
            vote_entry_free(e);
            return;
        }
    }
    int cap = t->options.synthetic_store, slot;
    if (t->store_count < cap) {
        slot = (t->store_start + t->store_count++) % cap;
    } else {
        slot = t->store_start;
        t->store_start = (t->store_start + 1) % cap;
        vote_entry_free(&t->store[slot]);
    }
    t->store[slot] = *e;
    memset(e, 0, sizeof *e);
}

int online_trainer_synthetic_pairs(const online_trainer *t) {
    const double g = t->options.gamma;
    if (g >= 1.0 || t->store_count == 0 || t->status.prefs_applied < t->options.burn_in) return 0;
    double s = floor((double)t->num_pending * (1.0 - g) / g + 0.5); /* the batch about to run */
    return s > ONLINE_MAX_BATCH ? ONLINE_MAX_BATCH : (int)s;
}

int online_sea_label(const erm *model, const float *features, int M, int head, int *chosen, int *rejected,
                     duel_error *err) {
    const int E = model->config.num_heads;
    if (M < 2 || M > ERM_MAX_CANDIDATES || head < 0 || head >= E)
        return duel_error_set(err, DUEL_EINVAL, "sea label: %d candidates, head %d of %d", M, head, E);
    float *r = malloc((size_t)M * (size_t)E * sizeof(float));
    if (!r) return duel_error_set(err, DUEL_ENOMEM, "sea label: out of memory");
    int rc = erm_score(model, features, M, r, err);
    if (rc == 0) {
        int hi = 0, lo = 0;
        for (int i = 1; i < M; i++) {
            if (r[(size_t)i * E + head] > r[(size_t)hi * E + head]) hi = i;
            if (r[(size_t)i * E + head] < r[(size_t)lo * E + head]) lo = i;
        }
        if (hi == lo) hi = 0, lo = 1; /* all equal */
        *chosen = hi;
        *rejected = lo;
    }
    free(r);
    return rc;
}

/* ---- offering entries ------------------------------------------------------------------- */

static bool vote_id_seen(const online_trainer *t, const char *vote_id) {
    int cap = t->options.recent_vote_ids;
    for (int i = 0; i < t->recent_count; i++)
        if (strcmp(t->recent[(t->recent_start + i) % cap], vote_id) == 0) return true;
    return false;
}

static void remember_vote_id(online_trainer *t, const char *vote_id) {
    int cap = t->options.recent_vote_ids;
    int slot;
    if (t->recent_count < cap) {
        slot = (t->recent_start + t->recent_count++) % cap;
    } else {
        slot = t->recent_start;
        t->recent_start = (t->recent_start + 1) % cap;
    }
    snprintf(t->recent[slot], sizeof t->recent[slot], "%s", vote_id);
}

/* Grows the pending batch's array to hold n entries (batch_size may grow by a live knob). */
static int reserve_pending(online_trainer *t, int n, duel_error *err) {
    if (n <= t->pending_cap) return 0;
    int cap = t->pending_cap * 2 > n ? t->pending_cap * 2 : n;
    if (cap > ONLINE_MAX_BATCH) cap = ONLINE_MAX_BATCH;
    if (n > cap) return duel_error_set(err, DUEL_ELIMIT, "online trainer: more than %d pending pairs", ONLINE_MAX_BATCH);
    pending_pair *p = realloc(t->pending, (size_t)cap * sizeof *p);
    if (!p) return duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
    memset(p + t->pending_cap, 0, (size_t)(cap - t->pending_cap) * sizeof *p);
    t->pending = p;
    t->pending_cap = cap;
    return 0;
}

int online_trainer_offer(online_trainer *t, const char *id, vote_entry *e,
                         online_offer_result *result, duel_error *err) {
    int rc;
    uint64_t ms, seq;
    if (strlen(id) >= ONLINE_STREAM_ID_MAX || online_stream_id_parse(id, &ms, &seq) != 0)
        return duel_error_set(err, DUEL_EINVAL, "online trainer: bad stream id '%s'", id);
    if (t->last_applied_id[0] && online_stream_id_compare(id, t->last_applied_id) <= 0) {
        *result = ONLINE_OFFER_APPLIED;
        return 0;
    }
    if (t->unsaved_id[0] && online_stream_id_compare(id, t->unsaved_id) <= 0) {
        *result = ONLINE_OFFER_DUPLICATE; /* offered already since the checkpoint */
        return 0;
    }
    snprintf(t->unsaved_id, sizeof t->unsaved_id, "%s", id);
    if (vote_id_seen(t, e->vote_id)) {
        t->status.duplicates++;
        *result = ONLINE_OFFER_DUPLICATE;
        return 0;
    }
    remember_vote_id(t, e->vote_id);
    if (!vote_choice_is_pair(e->choice)) {
        if (e->choice == VOTE_CHOICE_TIE) t->status.ties++;
        else t->status.both_bad++;
        store_push(t, e);
        *result = ONLINE_OFFER_COUNTED;
        return 0;
    }
    if ((rc = reserve_pending(t, t->num_pending + 1, err))) return rc;
    t->pending[t->num_pending++].entry = *e;
    memset(e, 0, sizeof *e);
    *result = ONLINE_OFFER_BATCHED;
    return 0;
}

/* ---- the update ------------------------------------------------------------------------- */

/* One pair of the policy batch: a real vote or a synthetic pair of a stored duel. */
typedef struct batch_pair {
    const vote_entry *entry;
    int chosen, rejected;
} batch_pair;

/* The row length of a pair: its forked row (train_layers.h train_fork) holds the prompt but its
 * last token once, then each answer after that last token: (P - 1) + Lc + Lr positions, where
 * two plain rows would take 2 (P - 1) + Lc + Lr. */
static int pair_length(const batch_pair *p) {
    int lc, lr;
    vote_entry_candidate(p->entry, p->chosen, &lc);
    vote_entry_candidate(p->entry, p->rejected, &lr);
    return p->entry->n_prompt_tokens - 1 + lc + lr;
}

/* Fills row i with pair i forked: the prompt's first P - 1 tokens (shared[i] = P - 1, no loss),
 * then branch A (the prompt's last token, then the chosen answer less its last token, predicting
 * the chosen answer), then from branch[i] branch B (the same for the rejected answer). The
 * sequence sums come out as chosen 0..P-1, rejected P..2P-1. */
static int build_batch(const batch_pair *pairs, int P, int32_t **tokens, int32_t **targets, float **mask,
                       int32_t *shared, int32_t *branch, int *seq_len, duel_error *err) {
    int T = 1;
    for (int i = 0; i < P; i++)
        if (pair_length(&pairs[i]) > T) T = pair_length(&pairs[i]);
    size_t cells = (size_t)P * T;
    *tokens = calloc(cells, sizeof(int32_t));
    *targets = calloc(cells, sizeof(int32_t));
    *mask = calloc(cells, sizeof(float));
    if (!*tokens || !*targets || !*mask)
        return duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory for the batch");
    for (int i = 0; i < P; i++) {
        const vote_entry *e = pairs[i].entry;
        const int np = e->n_prompt_tokens;
        int32_t *tok = *tokens + (size_t)i * T, *tgt = *targets + (size_t)i * T;
        float *msk = *mask + (size_t)i * T;
        for (int p = 0; p + 1 < np; p++) {
            tok[p] = e->prompt_tokens[p];
            tgt[p] = e->prompt_tokens[p + 1];
        }
        shared[i] = np - 1;
        int at = np - 1;
        for (int side = 0; side < 2; side++) {
            int len;
            const int32_t *resp = vote_entry_candidate(e, side == 0 ? pairs[i].chosen : pairs[i].rejected, &len);
            if (side == 1) branch[i] = at;
            for (int j = 0; j < len; j++, at++) {
                tok[at] = j == 0 ? e->prompt_tokens[np - 1] : resp[j - 1];
                tgt[at] = resp[j];
                msk[at] = 1.0f;
            }
        }
    }
    *seq_len = T;
    return 0;
}

/* Sorts idx[0..n) by pair length, ties by index (insertion sort: n is a batch). */
static void order_by_length(const batch_pair *pairs, int *idx, int n) {
    for (int i = 0; i < n; i++) idx[i] = i;
    for (int i = 1; i < n; i++) {
        int v = idx[i], key = pair_length(&pairs[v]), j = i - 1;
        while (j >= 0 && pair_length(&pairs[idx[j]]) > key) {
            idx[j + 1] = idx[j];
            j--;
        }
        idx[j + 1] = v;
    }
}

/* FLOPs of one chunk (see online_trainer_status.update_flops): every position of a row of the
 * padded length T costs body, every response position also head; the reference forward, when it
 * runs, adds a third. */
static double chunk_flops(const online_trainer *t, const batch_pair *pairs, int k, int T, bool uses_ref) {
    double body, head, positions = 0, heads = 0;
    train_model_flops_per_position(t->policy, T, &body, &head);
    for (int i = 0; i < k; i++) {
        positions += pair_length(&pairs[i]);
        heads += pair_length(&pairs[i]) - (pairs[i].entry->n_prompt_tokens - 1);
    }
    return (positions * body + heads * head) * (uses_ref ? 4.0 / 3.0 : 1.0);
}

static bool chunk_has_ref_logprobs(const batch_pair *pairs, int k) {
    for (int i = 0; i < k; i++)
        if (!pairs[i].entry->ref_logprobs) return false;
    return true;
}

/* Zeroes the policy's gradients and accumulates into them the gradient of the DAP loss (the
 * mean over the B pairs that count) of pairs[0..B). Each pair is one forked row (build_batch:
 * its prompt runs once for both answers). The pairs go through the models in chunks of
 * similar length (sorted by length), so that short rows are not padded to the batch's longest.
 * A chunk takes pairs while its padded rows fit options.chunk_positions (at least one pair), so
 * short rows make fewer, larger matrix products. Each chunk's gradient is scaled by its share of
 * the counted pairs, which gives the gradient of the whole batch's mean (the losses are sums over
 * pairs). result receives the batch's loss, margin and accuracy, *kl the mean of
 * log pi - log pi_ref over its rows. */
static int policy_gradient(online_trainer *t, const batch_pair *pairs, int B, dap_loss_result *result, double *kl,
                           duel_error *err) {
    const dap_loss_options *lo = &t->options.loss;
    const bool uses_ref = dap_loss_uses_reference(lo->kind), means = dap_loss_uses_means(lo->kind);
    /* a chunk can take the whole batch: per-row buffers of 2 B */
    const size_t rows = 2 * (size_t)B;
    int *idx = malloc((size_t)B * sizeof(int));
    int32_t *shared = malloc((size_t)B * sizeof(int32_t)), *branch = malloc((size_t)B * sizeof(int32_t));
    batch_pair *chunk = malloc((size_t)B * sizeof *chunk);
    double *seq = malloc(rows * sizeof(double)), *cnt = malloc(rows * sizeof(double));
    double *ref = malloc(rows * sizeof(double)), *rcnt = malloc(rows * sizeof(double));
    double *dseq = malloc(rows * sizeof(double));
    int rc = 0;
    memset(result, 0, sizeof *result);
    *kl = 0;
    if (!idx || !chunk || !seq || !cnt || !ref || !rcnt || !dseq || !shared || !branch) {
        rc = duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
        goto done;
    }
    order_by_length(pairs, idx, B);
    /* Pairs that count: all, except (IPO, SimPO) those with an empty response. */
    int used_total = 0;
    for (int i = 0; i < B; i++) {
        int lc, lr;
        vote_entry_candidate(pairs[i].entry, pairs[i].chosen, &lc);
        vote_entry_candidate(pairs[i].entry, pairs[i].rejected, &lr);
        used_total += !means || (lc > 0 && lr > 0);
    }
    train_model_zero_grad(t->policy);
    double loss = 0, margin = 0, accuracy = 0;
    for (int start = 0, k = 0; start < B; start += k) {
        k = 1;
        while (start + k < B && (k + 1) * pair_length(&pairs[idx[start + k]]) <= t->options.chunk_positions) k++;
        for (int i = 0; i < k; i++) chunk[i] = pairs[idx[start + i]];
        int32_t *tokens = NULL, *targets = NULL;
        float *mask = NULL;
        int T = 1;
        /* The reference runs unless the votes carry its log-probabilities (every pair of the
         * chunk: a synthetic pair's candidates are those of a stored vote). The first such chunk
         * after open runs it anyway, to check that the votes' reference is this trainer's. */
        const bool from_votes = uses_ref && t->options.vote_ref_logprobs && t->status.vote_ref_check >= 0 &&
                                chunk_has_ref_logprobs(chunk, k);
        const bool check = from_votes && t->status.vote_ref_check == 0;
        bool run_ref = uses_ref && (!from_votes || check);
        const bool ran_ref = run_ref;
        if ((rc = build_batch(chunk, k, &tokens, &targets, &mask, shared, branch, &T, err)) == 0) {
            train_batch tb = {k, T, tokens, targets, mask};
            train_fork fork = {shared, branch};
            if (run_ref) rc = train_model_forward_forked(t->reference, &tb, &fork, ref, rcnt, NULL, err);
            if (rc == 0) rc = train_model_forward_forked(t->policy, &tb, &fork, seq, cnt, NULL, err);
        }
        if (rc == 0 && check) {
            /* Whatever the outcome, the values used below do not depend on which chunk was
             * checked: the votes' when they agree, the trainer's from then on when they do not. */
            double worst = 0;
            bool agree = true;
            for (int i = 0; i < 2 * k; i++) {
                const batch_pair *p = &chunk[i % k];
                const double v = p->entry->ref_logprobs[i < k ? p->chosen : p->rejected];
                const double d = fabs(v - ref[i]);
                if (d > worst) worst = d;
                agree = agree && d <= t->options.vote_ref_tolerance + ONLINE_VOTE_REF_RELATIVE * fabs(ref[i]);
            }
            t->status.vote_ref_check = agree ? 1 : -1;
            t->status.vote_ref_error = worst;
            run_ref = !agree;
        }
        if (rc == 0 && uses_ref && !run_ref) {
            for (int i = 0; i < k; i++) {
                ref[i] = chunk[i].entry->ref_logprobs[chunk[i].chosen];
                ref[k + i] = chunk[i].entry->ref_logprobs[chunk[i].rejected];
            }
            memcpy(rcnt, cnt, 2 * (size_t)k * sizeof *rcnt);
        }
        dap_loss_result cr = {0};
        if (rc == 0) {
            dap_loss_batch lb = {k, seq, seq + k, cnt, cnt + k, uses_ref ? ref : NULL, uses_ref ? ref + k : NULL,
                                 NULL, NULL};
            dap_loss_grads g = {dseq, dseq + k, NULL};
            rc = dap_loss_compute(lo, &lb, &cr, &g, err);
        }
        if (rc == 0 && cr.pairs_used > 0) {
            const double share = (double)cr.pairs_used / (double)used_total;
            for (int r = 0; r < 2 * k; r++) dseq[r] *= share;
            loss += share * cr.loss;
            margin += share * cr.mean_margin;
            accuracy += share * cr.accuracy;
            rc = train_model_backward(t->policy, dseq, err);
        }
        for (int r = 0; rc == 0 && uses_ref && r < 2 * k; r++) *kl += seq[r] - ref[r];
        if (rc == 0) t->status.update_flops += chunk_flops(t, chunk, k, T, ran_ref);
        if (rc == 0 && uses_ref && !run_ref) t->status.vote_ref_pairs += k;
        result->pairs_used += cr.pairs_used;
        result->pairs_skipped_empty += cr.pairs_skipped_empty;
        free(tokens);
        free(targets);
        free(mask);
        if (rc) break;
    }
    result->loss = loss;
    result->mean_margin = margin;
    result->accuracy = accuracy;
    *kl /= 2.0 * B;
done:
    free(idx);
    free(shared);
    free(branch);
    free(chunk);
    free(seq);
    free(cnt);
    free(ref);
    free(rcnt);
    free(dseq);
    return rc;
}

int online_trainer_apply(online_trainer *t, duel_error *err) {
    if (!online_trainer_batch_ready(t) && !(replay_cut(t) && t->num_pending > 0))
        return duel_error_set(err, DUEL_EINVAL, "online trainer: no batch is ready");
    int rc0 = cut_log_append(t, err);
    if (rc0) return rc0;
    const int P = t->num_pending, D = t->erm->config.d_feat;
    const int S = online_trainer_synthetic_pairs(t); /* before this update counts its pairs */
    int rc = 0;
    batch_pair *pairs = malloc((size_t)(P + S) * sizeof *pairs);
    float *chosen = malloc((size_t)P * D * sizeof(float)), *rejected = malloc((size_t)P * D * sizeof(float));
    float *record = malloc((size_t)2 * D * sizeof(float));
    if (!chosen || !rejected || !record || !pairs) {
        rc = duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
        goto done;
    }
    const double t_erm = duel_time_seconds();
    /* ERM: score the new pairs before training on them (held-back accuracy), then train. */
    for (int i = 0; i < P; i++) {
        const vote_entry *e = &t->pending[i].entry;
        memcpy(chosen + (size_t)i * D, e->features + (size_t)e->chosen_idx * D, (size_t)D * sizeof(float));
        memcpy(rejected + (size_t)i * D, e->features + (size_t)e->rejected_idx * D, (size_t)D * sizeof(float));
    }
    double acc;
    if ((rc = erm_train_accuracy(t->erm, chosen, rejected, P, &acc, err))) goto done;
    t->erm_right += (int64_t)llround(acc * P);
    t->status.erm_scored += P;
    t->status.erm_accuracy = (double)t->erm_right / (double)t->status.erm_scored;
    if ((rc = erm_trainer_add_pairs(t->erm_trainer, chosen, rejected, P, err))) goto done;
    for (int i = 0; i < P; i++) {
        memcpy(record, chosen + (size_t)i * D, (size_t)D * sizeof(float));
        memcpy(record + D, rejected + (size_t)i * D, (size_t)D * sizeof(float));
        if ((rc = pair_log_append(t, record, err))) goto done;
    }
    erm_train_stats es;
    if ((rc = erm_trainer_update(t->erm_trainer, &es, err))) goto done;
    if (es.steps > 0) t->status.erm_loss = es.loss;
    /* The policy batch: the P real pairs, then S synthetic pairs labelled by the updated ERM. */
    for (int i = 0; i < P; i++) {
        const vote_entry *e = &t->pending[i].entry;
        pairs[i] = (batch_pair){e, e->chosen_idx, e->rejected_idx};
    }
    for (int s = 0; s < S; s++) {
        int idx = (int)duel_rng_below(&t->mix_rng, (uint64_t)t->store_count);
        int head = (int)duel_rng_below(&t->mix_rng, (uint64_t)t->erm->config.num_heads);
        const vote_entry *d = &t->store[(t->store_start + idx) % t->options.synthetic_store];
        pairs[P + s].entry = d;
        if ((rc = online_sea_label(t->erm, d->features, d->num_candidates, head, &pairs[P + s].chosen,
                                   &pairs[P + s].rejected, err)))
            goto done;
    }
    /* Policy: reference and policy log-probabilities of the same responses, one DAP update. */
    const double t_policy = duel_time_seconds();
    t->status.erm_seconds += t_policy - t_erm;
    const int B = P + S;
    dap_loss_result lr_;
    double kl = 0;
    if ((rc = policy_gradient(t, pairs, B, &lr_, &kl, err))) goto done;
    const double t_opt = duel_time_seconds();
    t->status.policy_seconds += t_opt - t_policy;
    size_t n = train_model_num_parameters(t->policy);
    float *grads = train_model_gradient_memory(t->policy);
    double norm = adamw_clip_grad_norm(grads, n, t->options.clip_norm);
    if (!isfinite(lr_.loss) || !isfinite(norm)) {
        rc = duel_error_set(err, DUEL_EFORMAT, "online trainer: non-finite loss or gradient at "
                            "update %lld", (long long)t->status.step + 1);
        goto done;
    }
    double lr = lr_schedule_at(&t->schedule, t->status.step) * t->options.lr_scale;
    if ((rc = adamw_update(&t->optimizer, &t->options.adamw, train_model_parameter_memory(t->policy),
                           grads, t->decay_mask, lr, err)))
        goto done;
    t->status.optimizer_seconds += duel_time_seconds() - t_opt;
    t->status.step++;
    t->status.prefs_applied += P;
    t->status.loss = lr_.loss;
    t->status.margin = lr_.mean_margin;
    t->status.accuracy = lr_.accuracy;
    t->status.kl = kl;
    t->status.lr = lr;
    t->status.grad_norm = norm;
    t->status.synthetic = S;
    t->status.synthetic_total += S;
    t->publish_due = t->options.publish_every > 0 && t->status.step % t->options.publish_every == 0;
    for (int i = 0; i < P; i++) store_push(t, &t->pending[i].entry); /* the batch's duels join the store */
    t->num_pending = 0;
done:
    free(pairs);
    free(chosen);
    free(rejected);
    free(record);
    return rc;
}

/* ---- checkpoint ------------------------------------------------------------------------- */

static char *u64_hex(uint64_t v, char *buf) {
    snprintf(buf, 17, "%016" PRIx64, v);
    return buf;
}

static int write_erm_optimizer(const char *path, const adamw_state *opt, duel_error *err) {
    safetensors_write_tensor ts[2] = {
        {"adamw.m", SAFETENSORS_F32, 1, {(int64_t)opt->num_parameters}, opt->m},
        {"adamw.v", SAFETENSORS_F32, 1, {(int64_t)opt->num_parameters}, opt->v}};
    return safetensors_write_file(path, ts, 2, NULL, err);
}

/* entries.bin: ENTRIES_MAGIC, u32 store count, u32 pending count, then each entry (the store
 * oldest first, then the pending batch) as u32 field count and per field u32 name length, name,
 * u32 value length, value: the stream encoding of vote_entry.h, all integers little-endian. */
static int put_u32(FILE *f, uint64_t v) {
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    return fwrite(b, 1, 4, f) == 4 ? 0 : -1;
}

static int put_entry(FILE *f, const vote_entry *e, duel_error *err) {
    vote_entry_encoded enc;
    int rc = vote_entry_encode(e, NULL, &enc, err);
    if (rc) return rc;
    int bad = put_u32(f, (uint64_t)enc.n_fields);
    for (int i = 0; i < enc.n_fields && !bad; i++) {
        const vote_entry_field *x = &enc.fields[i];
        bad = put_u32(f, x->name_len) || fwrite(x->name, 1, x->name_len, f) != x->name_len ||
              put_u32(f, x->value_len) || (x->value_len && fwrite(x->value, 1, x->value_len, f) != x->value_len);
    }
    vote_entry_encoded_free(&enc);
    return bad ? duel_error_set(err, DUEL_EIO, "entries.bin: write failed: %s", strerror(errno)) : 0;
}

static int write_entries(const online_trainer *t, const char *path, duel_error *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return duel_error_set(err, DUEL_EIO, "%s: cannot create: %s", path, strerror(errno));
    int rc = 0;
    if (fwrite(ENTRIES_MAGIC, 1, 8, f) != 8 || put_u32(f, (uint64_t)t->store_count) ||
        put_u32(f, (uint64_t)t->num_pending))
        rc = duel_error_set(err, DUEL_EIO, "%s: write failed: %s", path, strerror(errno));
    for (int i = 0; rc == 0 && i < t->store_count; i++)
        rc = put_entry(f, &t->store[(t->store_start + i) % t->options.synthetic_store], err);
    for (int i = 0; rc == 0 && i < t->num_pending; i++) rc = put_entry(f, &t->pending[i].entry, err);
    if (rc == 0 && (fflush(f) != 0 || fsync(fileno(f)) != 0))
        rc = duel_error_set(err, DUEL_EIO, "%s: fsync failed: %s", path, strerror(errno));
    if (fclose(f) != 0 && rc == 0) rc = duel_error_set(err, DUEL_EIO, "%s: close failed", path);
    return rc;
}

static int get_u32(const unsigned char *buf, size_t len, size_t *at, uint32_t *out) {
    if (len - *at < 4) return -1;
    const unsigned char *b = buf + *at;
    *out = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    *at += 4;
    return 0;
}

/* Reads entries.bin into the (empty) store and pending batch, decoding every entry with the
 * trainer's limits. */
static int read_entries(online_trainer *t, const char *path, duel_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return duel_error_set(err, DUEL_EIO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char *buf = NULL;
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    int rc = 0;
    if (size < 16 || (uint64_t)size > ENTRIES_MAX_BYTES || fseek(f, 0, SEEK_SET) != 0 ||
        !(buf = malloc((size_t)size)) || fread(buf, 1, (size_t)size, f) != (size_t)size)
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: cannot read (%ld bytes)", path, size);
    fclose(f);
    const size_t len = (size_t)size;
    size_t at = 8;
    uint32_t n_store = 0, n_pending = 0;
    if (rc == 0 && (memcmp(buf, ENTRIES_MAGIC, 8) != 0 || get_u32(buf, len, &at, &n_store) ||
                    get_u32(buf, len, &at, &n_pending) || n_store > ONLINE_MAX_STORE ||
                    n_pending > ONLINE_MAX_BATCH || reserve_pending(t, (int)n_pending, NULL)))
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: bad header, or more duels (%u) or pending pairs (%u) than "
                            "%d and %d", path, n_store, n_pending, ONLINE_MAX_STORE, ONLINE_MAX_BATCH);
    /* a store written with a larger synthetic_store keeps its newest duels */
    const uint32_t skip = n_store > (uint32_t)t->options.synthetic_store ? n_store - (uint32_t)t->options.synthetic_store : 0;
    vote_entry_limits limits;
    online_trainer_limits(t, &limits);
    for (uint32_t k = 0; rc == 0 && k < n_store + n_pending; k++) {
        vote_entry_field fields[VOTE_ENTRY_MAX_FIELDS];
        uint32_t nf = 0;
        if (get_u32(buf, len, &at, &nf) || nf > VOTE_ENTRY_MAX_FIELDS) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: entry %u: bad field count", path, k);
            break;
        }
        for (uint32_t i = 0; i < nf && rc == 0; i++) {
            uint32_t nl = 0, vl = 0;
            if (get_u32(buf, len, &at, &nl) || len - at < nl) goto truncated;
            fields[i].name = (const char *)buf + at, fields[i].name_len = nl, at += nl;
            if (get_u32(buf, len, &at, &vl) || len - at < vl) goto truncated;
            fields[i].value = (const char *)buf + at, fields[i].value_len = vl, at += vl;
        }
        vote_entry e;
        memset(&e, 0, sizeof e);
        duel_error derr = {0};
        if (vote_entry_decode(fields, (int)nf, &limits, &e, &derr) != 0) {
            vote_entry_free(&e);
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: entry %u: %s", path, k, derr.message);
            break;
        }
        if (k < skip) vote_entry_free(&e);
        else if (k < n_store) t->store[t->store_count++] = e;
        else t->pending[t->num_pending++].entry = e;
        continue;
    truncated:
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: entry %u is truncated", path, k);
    }
    if (rc == 0 && at != len) rc = duel_error_set(err, DUEL_EFORMAT, "%s: trailing bytes", path);
    free(buf);
    return rc;
}

/* Rewrites the pair log as a new generation holding only the buffer's pairs. */
static int compact_pair_log(online_trainer *t, duel_error *err) {
    int count = erm_trainer_buffer_count(t->erm_trainer);
    int64_t seen = erm_trainer_pairs_seen(t->erm_trainer);
    int64_t old = t->pair_log_gen;
    char path[ONLINE_PATH_MAX];
    pair_log_name(t, old + 1, path);
    unlink(path);
    int rc = pair_log_open(t, old + 1, 0, err);
    if (rc) return rc;
    const size_t D = (size_t)t->erm->config.d_feat;
    float *record = malloc(2 * D * sizeof(float));
    if (!record) return duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
    for (int i = 0; i < count && rc == 0; i++) {
        const float *c, *r;
        erm_trainer_buffer_pair(t->erm_trainer, i, &c, &r);
        memcpy(record, c, D * sizeof(float));
        memcpy(record + D, r, D * sizeof(float));
        rc = pair_log_append(t, record, err);
    }
    free(record);
    t->pair_log_base = seen - count;
    t->old_pair_log_gen = old;
    return rc;
}

int online_trainer_checkpoint(online_trainer *t, duel_error *err) {
    char tmp[ONLINE_PATH_MAX], dir[ONLINE_PATH_MAX], old[ONLINE_PATH_MAX], path[ONLINE_PATH_MAX];
    int rc;
    if ((rc = path_join(tmp, t->trainer_dir, "checkpoint.tmp", err)) ||
        (rc = path_join(dir, t->trainer_dir, "checkpoint", err)) ||
        (rc = path_join(old, t->trainer_dir, "checkpoint.old", err)))
        return rc;
    int64_t cap = t->options.erm.buffer_capacity;
    if (t->pair_log_records > PAIR_LOG_COMPACT_FACTOR * cap && (rc = compact_pair_log(t, err))) return rc;
    if (fdatasync(t->pair_log_fd) != 0)
        return duel_error_set(err, DUEL_EIO, "erm pair log: fsync failed: %s", strerror(errno));
    remove_tree(tmp, 2);
    if (mkdir(tmp, 0755) != 0)
        return duel_error_set(err, DUEL_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    checkpoint_progress cp = {t->optimizer.step, t->options.seed, (double)t->status.prefs_applied};
    char erm_path[ONLINE_PATH_MAX], erm_opt_path[ONLINE_PATH_MAX];
    if ((rc = path_join(path, tmp, "policy", err)) ||
        (rc = checkpoint_save(path, t->policy, &t->optimizer, &cp, t->config_json, err)) ||
        (rc = path_join(erm_path, tmp, "erm.safetensors", err)) ||
        (rc = erm_save(t->erm, erm_path, err)) ||
        (rc = path_join(erm_opt_path, tmp, "erm_optimizer.safetensors", err)) ||
        (rc = write_erm_optimizer(erm_opt_path, erm_trainer_optimizer(t->erm_trainer), err)))
        return rc;
    char entries_path[ONLINE_PATH_MAX];
    if ((rc = path_join(entries_path, tmp, "entries.bin", err)) || (rc = write_entries(t, entries_path, err)))
        return rc;
    char erm_hash[SHA256_HEX_BYTES], opt_hash[SHA256_HEX_BYTES], entries_hash[SHA256_HEX_BYTES], hex[8][17];
    if ((rc = sha256_file_hex(erm_path, erm_hash, err)) || (rc = sha256_file_hex(erm_opt_path, opt_hash, err)) ||
        (rc = sha256_file_hex(entries_path, entries_hash, err)))
        return rc;
    const char *applied = t->unsaved_id[0] ? t->unsaved_id : t->last_applied_id;
    duel_rng *rng = erm_trainer_rng(t->erm_trainer);
    json_t *recent = json_array();
    for (int i = 0; i < t->recent_count; i++)
        json_array_append_new(recent, json_string(t->recent[(t->recent_start + i) % t->options.recent_vote_ids]));
    const online_trainer_status *s = &t->status;
    json_t *state = json_pack(
        "{s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:I, s:I, s:I, s:I, s:[s,s,s,s], s:s, s:s,"
        " s:o, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f}",
        "format", STATE_FORMAT, "version", STATE_VERSION, "step", (json_int_t)s->step,
        "prefs_applied", (json_int_t)s->prefs_applied, "ties", (json_int_t)s->ties,
        "both_bad", (json_int_t)s->both_bad, "duplicates", (json_int_t)s->duplicates,
        "published_version", (json_int_t)s->published_version,
        "erm_adam_step", (json_int_t)erm_trainer_optimizer(t->erm_trainer)->step,
        "last_applied_id", applied, "erm_pairs_seen", (json_int_t)erm_trainer_pairs_seen(t->erm_trainer),
        "pair_log_generation", (json_int_t)t->pair_log_gen, "pair_log_base", (json_int_t)t->pair_log_base,
        "pair_log_records", (json_int_t)t->pair_log_records, "erm_rng", u64_hex(rng->s[0], hex[0]),
        u64_hex(rng->s[1], hex[1]), u64_hex(rng->s[2], hex[2]), u64_hex(rng->s[3], hex[3]),
        "erm_sha256", erm_hash, "erm_optimizer_sha256", opt_hash, "recent_vote_ids", recent,
        "erm_right", (json_int_t)t->erm_right, "erm_scored", (json_int_t)s->erm_scored,
        "loss", s->loss, "margin", s->margin, "accuracy", s->accuracy, "kl", s->kl, "lr", s->lr,
        "grad_norm", s->grad_norm, "erm_loss", s->erm_loss);
    if (state &&
        (json_object_set_new(state, "entries_sha256", json_string(entries_hash)) ||
         json_object_set_new(state, "synthetic", json_integer(s->synthetic)) ||
         json_object_set_new(state, "synthetic_total", json_integer(s->synthetic_total)) ||
         json_object_set_new(state, "mix_rng",
                             json_pack("[s,s,s,s]", u64_hex(t->mix_rng.s[0], hex[4]), u64_hex(t->mix_rng.s[1], hex[5]),
                                       u64_hex(t->mix_rng.s[2], hex[6]), u64_hex(t->mix_rng.s[3], hex[7]))))) {
        json_decref(state);
        state = NULL;
    }
    char *text = state ? json_dumps(state, JSON_INDENT(1) | JSON_SORT_KEYS) : NULL;
    json_decref(state);
    if (!text) return duel_error_set(err, DUEL_ENOMEM, "online trainer: cannot build state.json");
    rc = path_join(path, tmp, "state.json", err);
    if (rc == 0) rc = write_file_synced(path, text, strlen(text), err);
    free(text);
    if (rc) return rc;
    if (fsync_path(tmp) != 0) return duel_error_set(err, DUEL_EIO, "%s: fsync failed", tmp);
    /* Swap: checkpoint -> checkpoint.old, tmp -> checkpoint, make it durable, drop .old. */
    remove_tree(old, 2);
    struct stat st;
    if (stat(dir, &st) == 0 && rename(dir, old) != 0)
        return duel_error_set(err, DUEL_EIO, "%s: cannot rename: %s", dir, strerror(errno));
    if (rename(tmp, dir) != 0)
        return duel_error_set(err, DUEL_EIO, "%s: cannot rename: %s", tmp, strerror(errno));
    if (fsync_path(t->trainer_dir) != 0)
        return duel_error_set(err, DUEL_EIO, "%s: fsync failed", t->trainer_dir);
    remove_tree(old, 2);
    if (t->old_pair_log_gen >= 0 && t->old_pair_log_gen != t->pair_log_gen) pair_log_remove_others(t);
    t->old_pair_log_gen = -1;
    snprintf(t->last_applied_id, sizeof t->last_applied_id, "%s", applied);
    t->unsaved_id[0] = '\0';
    /* The checkpoint holds every update so far: their cuts are no longer needed. */
    if (t->cut_log_fd >= 0 && t->next_replay_cut >= t->num_replay_cuts && ftruncate(t->cut_log_fd, 0) != 0)
        return duel_error_set(err, DUEL_EIO, "batch_cuts.log: cannot truncate: %s", strerror(errno));
    return 0;
}

static int get_int(json_t *o, const char *key, int64_t *out, const char *src, duel_error *err) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return duel_error_set(err, DUEL_EFORMAT, "%s: %s is missing or not a non-negative integer", src, key);
    *out = json_integer_value(v);
    return 0;
}

static int get_real(json_t *o, const char *key, double *out, const char *src, duel_error *err) {
    json_t *v = json_object_get(o, key);
    if (!json_is_number(v))
        return duel_error_set(err, DUEL_EFORMAT, "%s: %s is missing or not a number", src, key);
    *out = json_number_value(v);
    return 0;
}

static int verify_hash(json_t *state, const char *key, const char *path, const char *src, duel_error *err) {
    char hex[SHA256_HEX_BYTES];
    const char *want = json_string_value(json_object_get(state, key));
    int rc = sha256_file_hex(path, hex, err);
    if (rc) return rc;
    if (!want || strcmp(want, hex) != 0)
        return duel_error_set(err, DUEL_EFORMAT, "%s: sha256 of %s does not match %s", path, path, src);
    return 0;
}

static int load_checkpoint(online_trainer *t, duel_error *err) {
    char dir[ONLINE_PATH_MAX], old[ONLINE_PATH_MAX], path[ONLINE_PATH_MAX], src[ONLINE_PATH_MAX];
    int rc;
    if ((rc = path_join(dir, t->trainer_dir, "checkpoint", err)) ||
        (rc = path_join(old, t->trainer_dir, "checkpoint.old", err)))
        return rc;
    struct stat st;
    t->old_pair_log_gen = -1;
    if (stat(dir, &st) != 0 && stat(old, &st) == 0 && rename(old, dir) != 0)
        return duel_error_set(err, DUEL_EIO, "%s: cannot restore: %s", old, strerror(errno));
    if (stat(dir, &st) != 0) { /* fresh start: no pair log survives */
        t->pair_log_gen = 0;
        char p0[ONLINE_PATH_MAX];
        pair_log_name(t, 0, p0);
        unlink(p0);
        if ((rc = pair_log_open(t, 0, 0, err))) return rc;
        pair_log_remove_others(t);
        return 0;
    }
    if ((rc = path_join(src, dir, "state.json", err))) return rc;
    json_t *state = NULL;
    if ((rc = duel_json_load_file(src, STATE_MAX_BYTES, &state, err))) return rc;
    const char *format = json_string_value(json_object_get(state, "format"));
    int64_t version = 0, erm_step = 0, seen = 0, gen = 0, base = 0, records = 0;
    online_trainer_status s = {0};
    if (!format || strcmp(format, STATE_FORMAT) != 0 || get_int(state, "version", &version, src, NULL) ||
        version != STATE_VERSION) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: not a version %d online trainer state", src, STATE_VERSION);
        goto done;
    }
    if ((rc = get_int(state, "step", &s.step, src, err)) ||
        (rc = get_int(state, "prefs_applied", &s.prefs_applied, src, err)) ||
        (rc = get_int(state, "ties", &s.ties, src, err)) ||
        (rc = get_int(state, "both_bad", &s.both_bad, src, err)) ||
        (rc = get_int(state, "duplicates", &s.duplicates, src, err)) ||
        (rc = get_int(state, "published_version", &s.published_version, src, err)) ||
        (rc = get_int(state, "erm_adam_step", &erm_step, src, err)) ||
        (rc = get_int(state, "erm_pairs_seen", &seen, src, err)) ||
        (rc = get_int(state, "pair_log_generation", &gen, src, err)) ||
        (rc = get_int(state, "pair_log_base", &base, src, err)) ||
        (rc = get_int(state, "pair_log_records", &records, src, err)) ||
        (rc = get_int(state, "erm_right", &t->erm_right, src, err)) ||
        (rc = get_int(state, "erm_scored", &s.erm_scored, src, err)) ||
        (rc = get_real(state, "loss", &s.loss, src, err)) || (rc = get_real(state, "margin", &s.margin, src, err)) ||
        (rc = get_real(state, "accuracy", &s.accuracy, src, err)) || (rc = get_real(state, "kl", &s.kl, src, err)) ||
        (rc = get_real(state, "lr", &s.lr, src, err)) || (rc = get_real(state, "grad_norm", &s.grad_norm, src, err)) ||
        (rc = get_real(state, "erm_loss", &s.erm_loss, src, err)))
        goto done;
    const char *applied = json_string_value(json_object_get(state, "last_applied_id"));
    uint64_t a, b;
    if (!applied || strlen(applied) >= ONLINE_STREAM_ID_MAX ||
        (applied[0] && online_stream_id_parse(applied, &a, &b) != 0)) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: bad last_applied_id", src);
        goto done;
    }
    json_t *rng = json_object_get(state, "erm_rng"), *recent = json_object_get(state, "recent_vote_ids");
    if (!json_is_array(rng) || json_array_size(rng) != 4 || !json_is_array(recent) || base + records != seen) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: bad erm_rng, recent_vote_ids or pair log counts", src);
        goto done;
    }
    uint64_t rng_state[4], mix_state[4];
    json_t *mix = json_object_get(state, "mix_rng");
    for (int i = 0; i < 8; i++) {
        const char *h = json_string_value(json_array_get(i < 4 ? rng : mix, (size_t)(i % 4)));
        char *end = NULL;
        uint64_t *dst = i < 4 ? &rng_state[i] : &mix_state[i - 4];
        if (!h || strlen(h) != 16 || (*dst = strtoull(h, &end, 16), *end != '\0')) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: bad %s", src, i < 4 ? "erm_rng" : "mix_rng");
            goto done;
        }
    }
    int64_t synthetic = 0;
    if ((rc = get_int(state, "synthetic_total", &s.synthetic_total, src, err)) ||
        (rc = get_int(state, "synthetic", &synthetic, src, err)))
        goto done;
    s.synthetic = (int)synthetic;
    /* ERM parameters and moments, verified by hash and shape. */
    char erm_path[ONLINE_PATH_MAX], opt_path[ONLINE_PATH_MAX], entries_path[ONLINE_PATH_MAX];
    if ((rc = path_join(erm_path, dir, "erm.safetensors", err)) ||
        (rc = path_join(opt_path, dir, "erm_optimizer.safetensors", err)) ||
        (rc = path_join(entries_path, dir, "entries.bin", err)) ||
        (rc = verify_hash(state, "erm_sha256", erm_path, src, err)) ||
        (rc = verify_hash(state, "erm_optimizer_sha256", opt_path, src, err)) ||
        (rc = verify_hash(state, "entries_sha256", entries_path, src, err)))
        goto done;
    erm *loaded = NULL;
    if ((rc = erm_load(erm_path, t->erm->config.d_feat, &loaded, err))) goto done;
    if (loaded->config.num_heads != t->erm->config.num_heads || loaded->config.hidden != t->erm->config.hidden) {
        erm_free(loaded);
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: ERM shape differs from the configured one", erm_path);
        goto done;
    }
    adamw_state *eo = erm_trainer_optimizer(t->erm_trainer);
    safetensors_archive *ar = NULL;
    const safetensors_tensor *tm = NULL, *tv = NULL;
    int64_t shape[1] = {(int64_t)eo->num_parameters};
    if ((rc = safetensors_open_file(opt_path, &ar, err)) == 0 &&
        (rc = safetensors_expect(ar, "adamw.m", 1, shape, &tm, err)) == 0 &&
        (rc = safetensors_expect(ar, "adamw.v", 1, shape, &tv, err)) == 0 &&
        (rc = safetensors_to_f32(tm, eo->m, err)) == 0)
        rc = safetensors_to_f32(tv, eo->v, err);
    safetensors_close(ar);
    if (rc) {
        erm_free(loaded);
        goto done;
    }
    memcpy(t->erm->params.memory, loaded->params.memory, t->erm->num_params * sizeof(float));
    memcpy(t->erm->initial.memory, loaded->initial.memory, t->erm->num_params * sizeof(float));
    erm_free(loaded);
    eo->step = erm_step;
    memcpy(erm_trainer_rng(t->erm_trainer)->s, rng_state, sizeof rng_state);
    memcpy(t->mix_rng.s, mix_state, sizeof mix_state);
    /* The SEA store and the pending batch. */
    if ((rc = read_entries(t, entries_path, err))) goto done;
    /* Policy weights and moments. */
    checkpoint_progress cp;
    if ((rc = path_join(path, dir, "policy", err)) ||
        (rc = checkpoint_load(path, t->policy, &t->optimizer, &cp, err)))
        goto done;
    /* The pair buffer: the last buffer_capacity valid records of the log. */
    if ((rc = pair_log_open(t, gen, records, err))) goto done;
    t->pair_log_base = base;
    pair_log_remove_others(t);
    erm_trainer_reset_buffer(t->erm_trainer);
    int64_t cap = t->options.erm.buffer_capacity, first = records > cap ? records - cap : 0;
    size_t rec = pair_record_bytes(t);
    const size_t D = (size_t)t->erm->config.d_feat;
    float *buf = malloc(rec);
    if (!buf) {
        rc = duel_error_set(err, DUEL_ENOMEM, "online trainer: out of memory");
        goto done;
    }
    for (int64_t i = first; i < records && rc == 0; i++) {
        if (pread(t->pair_log_fd, buf, rec, (off_t)(i * (int64_t)rec)) != (ssize_t)rec) {
            rc = duel_error_set(err, DUEL_EIO, "erm pair log: short read at record %lld", (long long)i);
            break;
        }
        rc = erm_trainer_add_pairs(t->erm_trainer, buf, buf + D, 1, err);
    }
    free(buf);
    if (rc) goto done;
    erm_trainer_set_pairs_seen(t->erm_trainer, seen);
    /* Bookkeeping. */
    t->recent_count = 0;
    t->recent_start = 0;
    for (size_t i = 0; i < json_array_size(recent); i++) {
        const char *v = json_string_value(json_array_get(recent, i));
        if (!v || strlen(v) > VOTE_ENTRY_MAX_ID) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: bad recent_vote_ids entry %zu", src, i);
            goto done;
        }
        remember_vote_id(t, v);
    }
    snprintf(t->last_applied_id, sizeof t->last_applied_id, "%s", applied);
    s.erm_accuracy = s.erm_scored > 0 ? (double)t->erm_right / (double)s.erm_scored : 0;
    t->status = s;
done:
    json_decref(state);
    return rc;
}
