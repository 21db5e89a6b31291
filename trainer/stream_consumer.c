/* stream_consumer.c: the Redis loop of the trainer (see stream_consumer.h). */
#include "stream_consumer.h"

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "json_util.h"
#include "lm_trainer.h"
#include "redis_link.h"
#include "snapshot.h"
#include "snapshot_write.h"
#include "timer.h"

#define KEY_MAX 256
#define MAX_UNACKED 65536 /* entries offered since the last checkpoint */

struct stream_consumer {
    stream_consumer_options o;
    char host[256], stream[KEY_MAX], group[KEY_MAX], consumer[KEY_MAX], dead[KEY_MAX];
    char prefix[KEY_MAX], data_dir[4096], tokenizer_dir[4096], base_model[4096];
    redisContext *rc;
    bool lost;                 /* the last failure was Redis going away (redis_error_is_transient) */
    bool never_connected;      /* opened with wait_for_redis before Redis answered */
    online_trainer *trainer;
    float *transport_block; /* the block a GPU transport sends (lm_model_export_block) */
    bool pending_phase;
    char cursor[STREAM_ID_MAX]; /* pending phase: last id read */
    char (*unacked)[STREAM_ID_MAX];
    int num_unacked;
    int updates_since_checkpoint;
    bool unpublished;          /* an update is not in a snapshot yet */
    bool caught_up;            /* the last read of new entries returned less than a full count */
    int status_pending;        /* pending pairs as the status hash last said (-1: not written) */
    /* Snapshots this trainer published after its checkpoint, before a crash: published again,
     * under the same versions, when the resumed run reaches their steps (replay is
     * deterministic), and no other snapshot before the last of them. */
    snapshot_listing *replay;
    int num_replay, next_replay;
    double last_publish_s;     /* duel_time_seconds() of the last snapshot (or of the start) */
    /* rejected knobs already logged, as "name=value" (logged again when the value changes) */
    char logged_knobs[ONLINE_MAX_KNOB_REPORTS][130];
    int num_logged_knobs, knob_errors;
    stream_consumer_stats stats;
    /* duel:stats */
    char instance[STATS_INSTANCE_MAX];
    double next_stats_s;        /* duel_time_seconds() when the next entry is due */
    stats_trainer figures;      /* of the last entry */
    int64_t votes_unpublished;  /* votes offered since the last snapshot, */
    double votes_ts_sum;        /* the sum of their ts_ms */
    int64_t votes_ts_min;       /* and the oldest */
};

void stream_consumer_default_options(stream_consumer_options *o) {
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 6379;
    o->stream = "duel:prefs";
    o->group = "trainers";
    o->consumer = "trainer-1";
    o->dead_stream = "duel:prefs:dead";
    o->key_prefix = "duel:";
    o->read_count = 64;
    o->block_ms = 500;
    o->timeout_ms = 5000;
    o->max_deliveries = 5;
    o->stats_max_entries = 40000;
}

void stream_consumer_get_stats(const stream_consumer *c, stream_consumer_stats *out) { *out = c->stats; }

/* Error replies of a Redis that restarts or fails over: the same command succeeds once it is
 * back (LOADING: replaying its AOF; NOGROUP: it came back without the stream; READONLY,
 * MASTERDOWN, TRYAGAIN: a replica or a cluster mid-failover). */
static bool redis_error_is_transient(const char *message) {
    static const char *const codes[] = {"LOADING", "NOGROUP", "READONLY", "MASTERDOWN", "TRYAGAIN", "BUSY "};
    for (size_t i = 0; i < sizeof codes / sizeof *codes; i++)
        if (strncmp(message, codes[i], strlen(codes[i])) == 0) return true;
    return false;
}

/* Runs a command; a NULL reply (connection lost, timeout) or an error reply is DUEL_EIO with
 * Redis's message, and marks the consumer lost when Redis went away. The caller frees *out. */
static int command(stream_consumer *c, redisReply **out, duel_error *err, int argc, const char **argv,
                   const size_t *lens) {
    *out = redisCommandArgv(c->rc, argc, argv, lens);
    if (!*out) {
        c->lost = true; /* the context is unusable from here on */
        return duel_error_set(err, DUEL_EIO, "redis %s:%d: %s failed: %s", c->host, c->o.port, argv[0],
                              c->rc->errstr[0] ? c->rc->errstr : "no reply");
    }
    if ((*out)->type == REDIS_REPLY_ERROR) {
        c->lost = redis_error_is_transient((*out)->str);
        int rc = duel_error_set(err, DUEL_EIO, "redis %s:%d: %s: %s", c->host, c->o.port, argv[0], (*out)->str);
        freeReplyObject(*out);
        *out = NULL;
        return rc;
    }
    return 0;
}

static int command_simple(stream_consumer *c, duel_error *err, int argc, const char **argv) {
    redisReply *r;
    int rc = command(c, &r, err, argc, argv, NULL);
    if (r) freeReplyObject(r);
    return rc;
}

static int xack(stream_consumer *c, const char *id, duel_error *err) {
    const char *argv[] = {"XACK", c->stream, c->group, id};
    int rc = command_simple(c, err, 4, argv);
    if (rc == 0) c->stats.acked++;
    return rc;
}

static int flush_acks(stream_consumer *c, duel_error *err) {
    int rc = 0;
    for (int i = 0; i < c->num_unacked && rc == 0; i++) rc = xack(c, c->unacked[i], err);
    c->num_unacked = 0;
    return rc;
}

/* Dead-letters entry `id` with reason and its fields (as read) in one MULTI with its XACK. */
static int dead_letter(stream_consumer *c, const char *id, const char *reason, long long deliveries,
                       const redisReply *fields, duel_error *err) {
    const char *argv[8 + 2 * VOTE_ENTRY_MAX_FIELDS];
    size_t lens[8 + 2 * VOTE_ENTRY_MAX_FIELDS];
    char count[32];
    snprintf(count, sizeof count, "%lld", deliveries);
    int n = 0;
    const char *head[] = {"XADD", c->dead, "*", "dead_id", id, "dead_reason", reason, "dead_deliveries", count,
                          "dead_consumer", c->consumer};
    for (int i = 0; i < 11; i++) {
        argv[n] = head[i];
        lens[n++] = strlen(head[i]);
    }
    for (size_t i = 0; fields && i + 1 < fields->elements && n + 2 <= (int)(sizeof argv / sizeof *argv); i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
        argv[n] = k->str;
        lens[n++] = k->len;
        argv[n] = v->str;
        lens[n++] = v->len;
    }
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    const char *ack[] = {"XACK", c->stream, c->group, id};
    redisAppendCommandArgv(c->rc, 1, multi, NULL);
    redisAppendCommandArgv(c->rc, n, argv, lens);
    redisAppendCommandArgv(c->rc, 4, ack, NULL);
    redisAppendCommandArgv(c->rc, 1, exec, NULL);
    int rc = 0;
    for (int i = 0; i < 4; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c->rc, (void **)&r) != REDIS_OK || !r) {
            c->lost = true;
            return duel_error_set(err, DUEL_EIO, "redis %s:%d: dead-letter of %s failed: %s", c->host,
                                  c->o.port, id, c->rc->errstr);
        }
        if (r->type == REDIS_REPLY_ERROR && rc == 0) {
            c->lost = redis_error_is_transient(r->str);
            rc = duel_error_set(err, DUEL_EIO, "redis: dead-letter of %s: %s", id, r->str);
        }
        if (i == 3 && r->type != REDIS_REPLY_ARRAY && rc == 0)
            rc = duel_error_set(err, DUEL_EIO, "redis: dead-letter of %s was not executed", id);
        freeReplyObject(r);
    }
    if (rc == 0) {
        c->stats.dead++;
        c->stats.acked++;
    }
    return rc;
}

/* ---- live knobs ------------------------------------------------------------------------- */

static int refresh_knobs(stream_consumer *c, duel_error *err) {
    char key[KEY_MAX + 16];
    snprintf(key, sizeof key, "%sknobs", c->prefix);
    const char *argv[] = {"HGETALL", key};
    redisReply *r;
    int rc = command(c, &r, err, 2, argv, NULL);
    if (rc) return rc;
    enum { MAX_KNOBS = 256 };
    const char *names[MAX_KNOBS], *values[MAX_KNOBS];
    int n = 0;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements && n < MAX_KNOBS; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING || strlen(k->str) != k->len ||
            strlen(v->str) != v->len)
            continue; /* binary junk cannot be a knob name or value */
        names[n] = k->str;
        values[n++] = v->str;
    }
    online_knob_report report;
    /* DUEL_EINVAL when a knob was rejected: not an error here (logged below, the rest apply) */
    (void)online_trainer_set_knobs(c->trainer, n, names, values, &report);
    char now[ONLINE_MAX_KNOB_REPORTS][130];
    for (int i = 0; i < report.num_rejected; i++) {
        const online_knob_rejection *x = &report.rejected[i];
        snprintf(now[i], sizeof now[i], "%.63s=%.63s", x->name, x->value);
        bool seen = false;
        for (int j = 0; j < c->num_logged_knobs; j++) seen |= strcmp(c->logged_knobs[j], now[i]) == 0;
        if (!seen && c->o.log) {
            char line[1024];
            snprintf(line, sizeof line, "%sknobs: %s ignored: %s", c->prefix, x->name, x->reason);
            c->o.log(c->o.log_context, line);
        }
    }
    memcpy(c->logged_knobs, now, sizeof now);
    c->num_logged_knobs = report.num_rejected;
    c->knob_errors = report.num_rejected;
    freeReplyObject(r);
    return 0;
}

/* ---- status and snapshots --------------------------------------------------------------- */

static int write_status(stream_consumer *c, duel_error *err) {
    online_trainer_status s;
    online_trainer_get_status(c->trainer, &s);
    char key[KEY_MAX + 32], v[25][64], knobs[1024];
    if (online_trainer_knobs_json(c->trainer, knobs, sizeof knobs)) knobs[0] = '\0';
    snprintf(key, sizeof key, "%strainer:status", c->prefix);
    snprintf(v[0], 64, "%lld", (long long)s.step);
    snprintf(v[1], 64, "%.6g", s.loss);
    snprintf(v[2], 64, "%.6g", s.erm_loss);
    snprintf(v[3], 64, "%.6g", s.kl);
    snprintf(v[4], 64, "%.6g", s.lr);
    snprintf(v[5], 64, "%lld", (long long)s.prefs_applied);
    snprintf(v[6], 64, "%.6g", s.erm_accuracy);
    snprintf(v[7], 64, "%lld", (long long)s.ties);
    snprintf(v[8], 64, "%lld", (long long)s.both_bad);
    snprintf(v[9], 64, "%lld", (long long)s.duplicates);
    snprintf(v[10], 64, "%lld", (long long)s.published_version);
    snprintf(v[11], 64, "%.6g", s.margin);
    snprintf(v[12], 64, "%.6g", s.grad_norm);
    snprintf(v[13], 64, "%lld", (long long)duel_time_unix_ms());
    snprintf(v[14], 64, "%lld", (long long)s.erm_pairs_seen);
    snprintf(v[15], 64, "%lld", (long long)c->stats.dead);
    snprintf(v[16], 64, "%d", s.synthetic);
    snprintf(v[17], 64, "%lld", (long long)s.synthetic_total);
    snprintf(v[18], 64, "%d", s.stored_duels);
    snprintf(v[19], 64, "%d", c->knob_errors);
    snprintf(v[20], 64, "%.6g", s.update_flops / 1e9);
    snprintf(v[21], 64, "%lld", (long long)s.vote_ref_pairs);
    snprintf(v[22], 64, "%d", s.vote_ref_check);
    snprintf(v[23], 64, "%.6g", s.vote_ref_error);
    c->status_pending = online_trainer_pending_pairs(c->trainer);
    snprintf(v[24], 64, "%d", c->status_pending);
    const char *argv[] = {"HSET", key, "step", v[0], "loss", v[1], "erm_loss", v[2], "kl", v[3], "lr", v[4],
                          "prefs_applied", v[5], "erm_accuracy", v[6], "ties", v[7], "both_bad", v[8],
                          "duplicates", v[9], "snapshot", v[10], "margin", v[11], "grad_norm", v[12],
                          "updated_ms", v[13], "erm_pairs_seen", v[14], "dead_letters", v[15],
                          "last_applied_id", s.last_applied_id, "synthetic", v[16], "synthetic_total", v[17],
                          "stored_duels", v[18], "knobs", knobs, "knob_errors", v[19], "update_gflop", v[20],
                          "vote_ref_pairs", v[21], "vote_ref_check", v[22], "vote_ref_error", v[23],
                          "pending_pairs", v[24]};
    return command_simple(c, err, (int)(sizeof argv / sizeof *argv), argv);
}

/* HSET, ZADD and PUBLISH for snapshot `version` from its meta.json (idempotent; the names and
 * fields are common/snapshot.h's). */
static int register_snapshot(stream_consumer *c, int64_t version, duel_error *err) {
    char dir[SNAPSHOT_PATH_MAX], key[SNAPSHOT_KEY_MAX], zkey[SNAPSHOT_KEY_MAX], notify[SNAPSHOT_KEY_MAX], ver[32];
    snapshot_meta *meta = malloc(sizeof *meta);
    snapshot_registration *reg = malloc(sizeof *reg);
    char *note = NULL;
    int rc = !meta || !reg ? duel_error_set(err, DUEL_ENOMEM, "stream consumer: out of memory") : 0;
    if (rc || (rc = snapshot_path(c->data_dir, version, dir, sizeof dir, err)) ||
        (rc = snapshot_meta_read(dir, meta, err)) ||
        (rc = snapshot_key_version(c->prefix, version, key, sizeof key, err)) ||
        (rc = snapshot_key_registry(c->prefix, zkey, sizeof zkey, err)) ||
        (rc = snapshot_key_notify(c->prefix, notify, sizeof notify, err)))
        goto done;
    online_trainer_status s;
    online_trainer_get_status(c->trainer, &s);
    char metrics[512];
    snprintf(metrics, sizeof metrics, "{\"loss\":%.6g,\"kl\":%.6g,\"erm_loss\":%.6g,\"erm_accuracy\":%.6g}",
             s.loss, s.kl, s.erm_loss, s.erm_accuracy);
    if ((rc = snapshot_registration_fields(meta, dir, metrics, reg, err))) goto done;
    const char *argv[2 + 2 * SNAPSHOT_REGISTRATION_MAX_FIELDS] = {"HSET", key};
    int n = 2;
    for (int i = 0; i < reg->num_fields; i++) {
        argv[n++] = reg->names[i];
        argv[n++] = reg->values[i];
    }
    if (!(note = snapshot_note_json(version, dir))) {
        rc = duel_error_set(err, DUEL_ENOMEM, "stream consumer: cannot build the snapshot note");
        goto done;
    }
    snprintf(ver, sizeof ver, "%lld", (long long)version);
    const char *zadd[] = {"ZADD", zkey, ver, ver};
    const char *publish[] = {"PUBLISH", notify, note};
    if ((rc = command_simple(c, err, n, argv)) == 0 && (rc = command_simple(c, err, 4, zadd)) == 0)
        rc = command_simple(c, err, 3, publish);
done:
    free(note);
    free(reg);
    free(meta);
    return rc;
}

/* Whether publish_every_seconds asks for a snapshot of the unpublished updates now. */
static bool publish_overdue(const stream_consumer *c) {
    double every = online_trainer_get_options(c->trainer)->publish_every_seconds;
    return c->unpublished && every > 0 && duel_time_seconds() - c->last_publish_s >= every;
}

/* Deletes the snapshots older than the newest keep_snapshots (version <= newest - keep), except
 * those duel:rollout pins ({"arms":[{"snapshot":v,...},...]}): unregistered first (ZREM, DEL of
 * duel:snapshot:{v}) so that no server picks one up, then the folders. */
static int prune_snapshots(stream_consumer *c, int64_t newest, duel_error *err) {
    int keep = online_trainer_get_options(c->trainer)->keep_snapshots;
    if (keep <= 0 || newest - keep < 1) return 0;
    int64_t below = newest - keep;
    int64_t pins[64];
    int num_pins = 0;
    char key[SNAPSHOT_KEY_MAX], zkey[SNAPSHOT_KEY_MAX], max[32];
    snprintf(key, sizeof key, "%srollout", c->prefix);
    const char *get[] = {"GET", key};
    redisReply *r = NULL;
    int rc = command(c, &r, err, 2, get, NULL);
    if (rc) return rc;
    json_t *rollout = r->type == REDIS_REPLY_STRING ? json_loadb(r->str, r->len, 0, NULL) : NULL;
    freeReplyObject(r);
    json_t *arm;
    size_t i;
    json_array_foreach(json_object_get(rollout, "arms"), i, arm) {
        json_t *v = json_object_get(arm, "snapshot");
        if (json_is_integer(v) && num_pins < 64) pins[num_pins++] = json_integer_value(v);
    }
    json_decref(rollout);
    if ((rc = snapshot_key_registry(c->prefix, zkey, sizeof zkey, err))) return rc;
    snprintf(max, sizeof max, "%lld", (long long)below);
    const char *range[] = {"ZRANGEBYSCORE", zkey, "-inf", max};
    if ((rc = command(c, &r, err, 4, range, NULL))) return rc;
    for (size_t k = 0; rc == 0 && r->type == REDIS_REPLY_ARRAY && k < r->elements; k++) {
        const redisReply *m = r->element[k];
        if (m->type != REDIS_REPLY_STRING) continue;
        long long v = atoll(m->str);
        bool pinned = false;
        for (int p = 0; p < num_pins; p++) pinned |= pins[p] == v;
        if (pinned) continue;
        if ((rc = snapshot_key_version(c->prefix, v, key, sizeof key, err))) break;
        const char *zrem[] = {"ZREM", zkey, m->str}, *del[] = {"DEL", key};
        if ((rc = command_simple(c, err, 3, zrem)) == 0) rc = command_simple(c, err, 2, del);
    }
    freeReplyObject(r);
    snapshot_listing *list = NULL;
    int n = 0;
    if (rc == 0) rc = snapshot_list(c->data_dir, &list, &n, err);
    for (int k = 0; rc == 0 && k < n && list[k].version <= below; k++) {
        bool pinned = false;
        for (int p = 0; p < num_pins; p++) pinned |= pins[p] == list[k].version;
        if (!pinned) rc = snapshot_remove(c->data_dir, list[k].version, err);
    }
    free(list);
    return rc;
}

/* Publishes the trainer's current state as snapshot `version`: writes the folder (a replayed
 * version whose folder is intact is kept), sends it through the transport, registers and
 * announces it, then prunes old ones. No checkpoint is needed first: a crash before the next
 * checkpoint replays the same updates, and the resumed run publishes the same versions at the
 * same steps (see replay). */
static int publish_snapshot(stream_consumer *c, int64_t version, bool replaying, duel_error *err) {
    double t0 = duel_time_seconds();
    online_trainer_status s;
    online_trainer_get_status(c->trainer, &s);
    char dir[4096];
    int rc = snapshot_path(c->data_dir, version, dir, sizeof dir, err);
    if (rc) return rc;
    duel_error ignored;
    /* the cuts of the updates in it must survive a crash (see online_trainer_cut_due) */
    if ((rc = online_trainer_sync_cuts(c->trainer, err))) return rc;
    if (!replaying || snapshot_verify(dir, NULL, &ignored) != 0) {
        snapshot_info info = {version, s.published_version < version ? s.published_version : 0, s.step,
                              s.prefs_applied, duel_time_unix_ms(), c->base_model, c->o.io,
                              /* for the servers' vote-to-serving latency (snapshot.h) */
                              c->votes_unpublished > 0 ? llround(c->votes_ts_sum / (double)c->votes_unpublished) : 0};
        if ((rc = snapshot_write(c->data_dir, &info, online_trainer_policy(c->trainer),
                                 online_trainer_config_json(c->trainer), online_trainer_erm(c->trainer),
                                 c->tokenizer_dir[0] ? c->tokenizer_dir : NULL, NULL, 0, err)))
            return rc;
    }
    online_trainer_set_published(c->trainer, version);
    c->unpublished = false;
    c->last_publish_s = duel_time_seconds();
    c->stats.snapshot_seconds += c->last_publish_s - t0;
    if (c->o.transport) {
        /* the model.safetensors data section (lm_model_export_block), which a receiver checks
         * against the file's hash */
        train_model *policy = online_trainer_policy(c->trainer);
        if (!c->transport_block &&
            !(c->transport_block = malloc(train_model_num_parameters(policy) * sizeof(float))))
            return duel_error_set(err, DUEL_ENOMEM, "out of memory for the transport's block");
        lm_model_export_block(policy, c->transport_block);
        weight_transport_snapshot ws = {version, dir, c->transport_block};
        if ((rc = weight_transport_send(c->o.transport, &ws, err))) return rc;
    }
    if ((rc = register_snapshot(c, version, err))) return rc;
    c->stats.snapshots++;
    if (c->votes_unpublished > 0) { /* the votes it holds are now announced to the servers */
        double now = (double)duel_time_unix_ms();
        c->figures.vote_to_publish_s = (now - c->votes_ts_sum / (double)c->votes_unpublished) / 1000.0;
        c->figures.vote_to_publish_max_s = (now - (double)c->votes_ts_min) / 1000.0;
        c->votes_unpublished = 0;
        c->votes_ts_sum = 0;
    }
    return prune_snapshots(c, version, err);
}

/* The version to publish now (0: none). While replaying: the next replayed version, exactly at
 * its step. Otherwise a new version when publish_every updates make one due, when
 * publish_every_seconds have passed with an update unpublished, or (publish_when_idle) when
 * an update is unpublished and the trainer has caught up with the stream. */
static int64_t version_due(const stream_consumer *c, bool *replaying) {
    online_trainer_status s;
    online_trainer_get_status(c->trainer, &s);
    *replaying = c->next_replay < c->num_replay;
    if (*replaying) return c->replay[c->next_replay].step == s.step ? c->replay[c->next_replay].version : 0;
    bool idle = c->caught_up && c->unpublished && online_trainer_get_options(c->trainer)->publish_when_idle;
    return online_trainer_publish_due(c->trainer) || publish_overdue(c) || idle ? s.published_version + 1 : 0;
}

/* apply: runs the ready batch. Then publishes a snapshot when one is due (version_due), and
 * checkpoints after checkpoint_every updates, when many entries wait, or when `force`;
 * acknowledges only the entries that checkpoint holds. */
static int commit_batch(stream_consumer *c, bool apply, bool force, duel_error *err) {
    int rc;
    double t0 = duel_time_seconds();
    if (apply) {
        if ((rc = online_trainer_apply(c->trainer, err))) return rc;
        c->stats.apply_seconds += duel_time_seconds() - t0;
        c->stats.updates++;
        c->updates_since_checkpoint++;
        c->unpublished = true;
    }
    bool replaying;
    int64_t version = version_due(c, &replaying);
    if (version > 0) {
        if ((rc = publish_snapshot(c, version, replaying, err))) return rc;
        if (replaying) c->next_replay++;
    }
    if (!force && c->updates_since_checkpoint < online_trainer_get_options(c->trainer)->checkpoint_every &&
        c->num_unacked < MAX_UNACKED / 2)
        return write_status(c, err); /* the entries stay unacknowledged until a checkpoint holds them */
    t0 = duel_time_seconds();
    if ((rc = online_trainer_checkpoint(c->trainer, err))) return rc;
    c->stats.checkpoint_seconds += duel_time_seconds() - t0;
    c->stats.checkpoints++;
    if ((rc = flush_acks(c, err))) return rc;
    c->updates_since_checkpoint = 0;
    return write_status(c, err);
}

/* ---- reading ---------------------------------------------------------------------------- */

/* Delivery counts of this consumer's pending entries between first and last (XPENDING). */
static int delivery_counts(stream_consumer *c, const char *first, const char *last, int count,
                           redisReply **out, duel_error *err) {
    char n[32];
    snprintf(n, sizeof n, "%d", count);
    const char *argv[] = {"XPENDING", c->stream, c->group, first, last, n, c->consumer};
    return command(c, out, err, 7, argv, NULL);
}

static long long lookup_deliveries(const redisReply *pending, const char *id) {
    for (size_t i = 0; pending && i < pending->elements; i++) {
        const redisReply *e = pending->element[i];
        if (e->type == REDIS_REPLY_ARRAY && e->elements >= 4 && e->element[0]->type == REDIS_REPLY_STRING &&
            strcmp(e->element[0]->str, id) == 0 && e->element[3]->type == REDIS_REPLY_INTEGER)
            return e->element[3]->integer;
    }
    return 1;
}

/* Applies the pending batch when it is due (online_trainer_cut_due; caught_up: the last read of
 * new entries came back short). The knobs are read first: they may change the batch's size. */
static int cut_if_due(stream_consumer *c, bool caught_up, duel_error *err) {
    if (!online_trainer_cut_due(c->trainer, caught_up)) return 0;
    int rc = refresh_knobs(c, err);
    if (rc) return rc;
    return online_trainer_cut_due(c->trainer, caught_up) ? commit_batch(c, true, false, err) : 0;
}

static int process_entry(stream_consumer *c, const char *id, const redisReply *fields, long long deliveries,
                         duel_error *err) {
    c->stats.entries++;
    char reason[DUEL_ERROR_MESSAGE_MAX + 64];
    int rc0;
    /* A replayed update ended before this entry (the one it ended on is gone): apply it first. */
    if (online_trainer_cut_before(c->trainer, id) && (rc0 = commit_batch(c, true, false, err))) return rc0;
    if (!fields || fields->type != REDIS_REPLY_ARRAY || fields->elements % 2 != 0) {
        /* A pending entry deleted from the stream comes back with nil fields. */
        return dead_letter(c, id, "entry has no fields (deleted or malformed)", deliveries, NULL, err);
    }
    if (deliveries > c->o.max_deliveries) {
        snprintf(reason, sizeof reason, "delivered %lld times (limit %d)", deliveries, c->o.max_deliveries);
        return dead_letter(c, id, reason, deliveries, fields, err);
    }
    vote_entry_field f[VOTE_ENTRY_MAX_FIELDS];
    int n = 0;
    duel_error derr = {0};
    int rc = 0;
    if (fields->elements / 2 > VOTE_ENTRY_MAX_FIELDS) {
        rc = duel_error_set(&derr, DUEL_EFORMAT, "entry has %zu fields, at most %d allowed", fields->elements / 2,
                            VOTE_ENTRY_MAX_FIELDS);
    }
    for (size_t i = 0; rc == 0 && i < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            rc = duel_error_set(&derr, DUEL_EFORMAT, "field %zu is not a string", i / 2);
            break;
        }
        f[n++] = (vote_entry_field){k->str, k->len, v->str, v->len};
    }
    vote_entry e;
    memset(&e, 0, sizeof e);
    vote_entry_limits limits;
    online_trainer_limits(c->trainer, &limits);
    if (rc == 0) rc = vote_entry_decode(f, n, &limits, &e, &derr);
    if (rc) {
        vote_entry_free(&e);
        return dead_letter(c, id, derr.message, deliveries, fields, err);
    }
    online_offer_result res;
    int64_t vote_ts = e.ts_ms;
    rc = online_trainer_offer(c->trainer, id, &e, &res, err);
    vote_entry_free(&e);
    if (rc) return rc;
    if (res == ONLINE_OFFER_BATCHED || res == ONLINE_OFFER_COUNTED) {
        if (c->votes_unpublished == 0 || vote_ts < c->votes_ts_min) c->votes_ts_min = vote_ts;
        c->votes_unpublished++;
        c->votes_ts_sum += (double)vote_ts;
    }
    if (res == ONLINE_OFFER_APPLIED) return xack(c, id, err);
    if (c->num_unacked >= MAX_UNACKED)
        return duel_error_set(err, DUEL_ELIMIT, "trainer: %d entries wait for a checkpoint", MAX_UNACKED);
    snprintf(c->unacked[c->num_unacked++], STREAM_ID_MAX, "%s", id);
    return cut_if_due(c, false, err);
}

int stream_consumer_poll(stream_consumer *c, int *processed, duel_error *err) {
    *processed = 0;
    /* A replayed update may end on an entry the checkpoint holds already. */
    if (c->pending_phase && online_trainer_cut_due(c->trainer, false)) {
        int rc0 = commit_batch(c, true, false, err);
        if (rc0) return rc0;
    }
    char count[32], block[32];
    snprintf(count, sizeof count, "%d", c->o.read_count);
    snprintf(block, sizeof block, "%d", c->o.block_ms);
    redisReply *r = NULL;
    int rc;
    if (c->pending_phase) {
        const char *argv[] = {"XREADGROUP", "GROUP", c->group, c->consumer, "COUNT", count, "STREAMS", c->stream,
                              c->cursor};
        rc = command(c, &r, err, 9, argv, NULL);
    } else {
        const char *argv[] = {"XREADGROUP", "GROUP", c->group, c->consumer, "COUNT", count, "BLOCK", block,
                              "STREAMS", c->stream, ">"};
        rc = command(c, &r, err, 11, argv, NULL);
    }
    if (rc) return rc;
    const redisReply *entries = NULL;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
        r->element[0]->elements == 2)
        entries = r->element[0]->element[1];
    if (!entries || entries->type != REDIS_REPLY_ARRAY || entries->elements == 0) {
        freeReplyObject(r);
        if (c->pending_phase) {
            c->pending_phase = false; /* own backlog drained: new entries from now on */
            return 0;
        }
        /* Idle: publish overdue updates, and checkpoint what is applied or counted so that its
         * entries are acknowledged now rather than at the next batch. A partial batch alone does
         * not call for a checkpoint (its entries wait safely in this consumer's pending list;
         * at a clean stop flush() writes it into the checkpoint). */
        c->caught_up = true;
        if ((rc = refresh_knobs(c, err))) return rc;
        if (online_trainer_cut_due(c->trainer, true)) return commit_batch(c, true, false, err);
        bool settle = c->updates_since_checkpoint > 0 ||
                      (c->num_unacked > 0 && online_trainer_pending_pairs(c->trainer) == 0);
        bool replaying;
        if (settle || version_due(c, &replaying) > 0) return commit_batch(c, false, settle, err);
        /* a partial batch grew since the status was written: say so (pending_pairs) */
        if (online_trainer_pending_pairs(c->trainer) != c->status_pending) return write_status(c, err);
        return 0;
    }
    redisReply *pending = NULL;
    if (c->pending_phase) {
        const redisReply *first = entries->element[0], *last = entries->element[entries->elements - 1];
        if (first->type == REDIS_REPLY_ARRAY && first->elements >= 1 && last->type == REDIS_REPLY_ARRAY &&
            last->elements >= 1 &&
            (rc = delivery_counts(c, first->element[0]->str, last->element[0]->str, (int)entries->elements,
                                  &pending, err))) {
            freeReplyObject(r);
            return rc;
        }
    }
    c->caught_up = false;
    for (size_t i = 0; i < entries->elements && rc == 0; i++) {
        const redisReply *en = entries->element[i];
        if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 || en->element[0]->type != REDIS_REPLY_STRING) {
            rc = duel_error_set(err, DUEL_EFORMAT, "redis: unexpected XREADGROUP reply shape");
            break;
        }
        const char *id = en->element[0]->str;
        long long deliveries = c->pending_phase ? lookup_deliveries(pending, id) : 1;
        if (c->pending_phase) snprintf(c->cursor, sizeof c->cursor, "%s", id);
        const redisReply *fields = en->element[1]->type == REDIS_REPLY_ARRAY ? en->element[1] : NULL;
        rc = process_entry(c, id, fields, deliveries, err);
        (*processed)++;
    }
    /* Caught up with the stream: a partial batch waits for more votes, and an update not yet
     * published goes out now rather than at the next batch (publish_when_idle). */
    bool replaying;
    if (rc == 0 && !c->pending_phase && entries->elements < (size_t)c->o.read_count) {
        c->caught_up = true;
        rc = cut_if_due(c, true, err);
        if (rc == 0 && version_due(c, &replaying) > 0) rc = commit_batch(c, false, false, err);
    }
    if (pending) freeReplyObject(pending);
    freeReplyObject(r);
    return rc;
}

/* Checkpoints and acknowledges whatever was offered since the last checkpoint (a clean stop). */
static int flush(stream_consumer *c, duel_error *err) {
    if (c->num_unacked == 0 && c->updates_since_checkpoint == 0) return 0;
    return commit_batch(c, false, true, err);
}

/* At start: the snapshots on disk newer than the checkpoint's published version P were
 * published before a crash, from updates the checkpoint lost. They must be P+1, P+2, ... at
 * increasing steps from the checkpoint's step on; then they become the replay list (one at the
 * current step is published now), and P is registered again in case the crash fell between a
 * snapshot and its registration. Anything else (a data folder or a registry from another run)
 * is logged, and new versions continue after the highest one on disk or registered, so that a
 * version number never names two different snapshots. */
static int setup_replay(stream_consumer *c, duel_error *err) {
    online_trainer_status s;
    online_trainer_get_status(c->trainer, &s);
    snapshot_listing *list = NULL;
    int n = 0;
    int rc = snapshot_list(c->data_dir, &list, &n, err);
    if (rc) return rc;
    char zkey[SNAPSHOT_KEY_MAX];
    const char *top[] = {"ZREVRANGE", zkey, "0", "0"};
    redisReply *r = NULL;
    if ((rc = snapshot_key_registry(c->prefix, zkey, sizeof zkey, err)) || (rc = command(c, &r, err, 4, top, NULL))) {
        free(list);
        return rc;
    }
    int64_t registered = r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->type == REDIS_REPLY_STRING
                             ? atoll(r->element[0]->str)
                             : 0;
    freeReplyObject(r);
    int first = 0;
    bool has_p = false, consistent = true;
    while (first < n && list[first].version <= s.published_version) has_p |= list[first++].version == s.published_version;
    int64_t newest = n > 0 ? list[n - 1].version : 0;
    for (int k = first; k < n; k++)
        consistent &= list[k].version == s.published_version + 1 + (k - first) &&
                      list[k].step >= (k == first ? s.step : list[k - 1].step + 1);
    if (!consistent || registered > (newest > s.published_version ? newest : s.published_version)) {
        int64_t floor = newest > registered ? newest : registered;
        if (c->o.log) {
            char line[300];
            snprintf(line, sizeof line,
                     "snapshots: versions on disk or registered (up to v%lld) do not follow this checkpoint "
                     "(v%lld at step %lld); new snapshots continue from v%lld",
                     (long long)floor, (long long)s.published_version, (long long)s.step, (long long)floor + 1);
            c->o.log(c->o.log_context, line);
        }
        if (floor > s.published_version) online_trainer_set_published(c->trainer, floor);
        free(list);
        return 0;
    }
    if (has_p && s.published_version > 0 && (rc = register_snapshot(c, s.published_version, err))) {
        free(list);
        return rc;
    }
    c->num_replay = n - first;
    if (c->num_replay > 0) {
        memmove(list, list + first, (size_t)c->num_replay * sizeof *list);
        c->replay = list;
    } else {
        free(list);
    }
    if (c->num_replay > 0 && c->replay[0].step == s.step) {
        if ((rc = publish_snapshot(c, c->replay[0].version, true, err))) return rc;
        c->next_replay = 1;
    }
    return 0;
}

/* ---- duel:stats --------------------------------------------------------------------------- */

/* The value of key in a flat XINFO reply (key, value, key, value, ...), or NULL. */
static const redisReply *info_field(const redisReply *r, const char *key) {
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && strcmp(r->element[i]->str, key) == 0)
            return r->element[i + 1];
    return NULL;
}

/* Entries the group has not read and the age of the oldest of them (XINFO GROUPS' lag, Redis
 * 7; when Redis cannot tell, entries-added minus entries-read). */
static int read_lag(stream_consumer *c, long long *entries, double *seconds, duel_error *err) {
    *entries = 0;
    *seconds = 0;
    const char *groups[] = {"XINFO", "GROUPS", c->stream};
    redisReply *r;
    int rc = command(c, &r, err, 3, groups, NULL);
    if (rc) return rc;
    char last_delivered[STREAM_ID_MAX] = "";
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *g = r->element[i], *name = info_field(g, "name");
        if (!name || name->type != REDIS_REPLY_STRING || strcmp(name->str, c->group) != 0) continue;
        const redisReply *lag = info_field(g, "lag"), *id = info_field(g, "last-delivered-id");
        if (lag && lag->type == REDIS_REPLY_INTEGER) *entries = lag->integer;
        if (id && id->type == REDIS_REPLY_STRING) snprintf(last_delivered, sizeof last_delivered, "%s", id->str);
    }
    freeReplyObject(r);
    if (*entries <= 0 || !last_delivered[0]) return 0;
    char start[STREAM_ID_MAX + 2];
    snprintf(start, sizeof start, "(%s", last_delivered);
    const char *oldest[] = {"XRANGE", c->stream, start, "+", "COUNT", "1"};
    if ((rc = command(c, &r, err, 6, oldest, NULL))) return rc;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
        r->element[0]->elements == 2 && r->element[0]->element[0]->type == REDIS_REPLY_STRING) {
        double ms = (double)duel_time_unix_ms() - (double)atoll(r->element[0]->element[0]->str);
        *seconds = ms > 0 ? ms / 1000.0 : 0;
    }
    freeReplyObject(r);
    return 0;
}

int stream_consumer_write_stats(stream_consumer *c, duel_error *err) {
    online_trainer_status s;
    online_trainer_get_status(c->trainer, &s);
    stats_trainer *f = &c->figures;
    f->step = s.step;
    f->prefs_applied = s.prefs_applied;
    f->published_version = s.published_version;
    f->batch_size = online_trainer_get_options(c->trainer)->batch_size;
    f->loss = s.loss;
    f->erm_loss = s.erm_loss;
    f->kl = s.kl;
    f->grad_norm = s.grad_norm;
    f->lr = s.lr;
    f->erm_accuracy = s.erm_accuracy;
    int rc = read_lag(c, &f->lag_entries, &f->lag_s, err);
    if (rc || c->o.stats_interval_ms <= 0) return rc;
    char *data = stats_trainer_json(f);
    if (!data) return duel_error_set(err, DUEL_ENOMEM, "stats: out of memory");
    char key[KEY_MAX + 8], maxlen[32], ts[24], interval[24];
    snprintf(key, sizeof key, "%sstats", c->prefix);
    snprintf(maxlen, sizeof maxlen, "%lld", c->o.stats_max_entries);
    const char *argv[6 + STATS_ENTRY_ARGC] = {"XADD", key, "MAXLEN", "~", maxlen, "*"};
    stats_entry_argv(c->instance, STATS_ROLE_TRAINER, duel_time_unix_ms(), c->o.stats_interval_ms, data, ts,
                     interval, argv + 6);
    rc = command_simple(c, err, 6 + STATS_ENTRY_ARGC, argv);
    free(data);
    return rc;
}

void stream_consumer_get_figures(const stream_consumer *c, stats_trainer *out) { *out = c->figures; }

/* Appends an entry when one is due (stream_consumer_run, after every round). */
static int stats_if_due(stream_consumer *c, duel_error *err) {
    if (c->o.stats_interval_ms <= 0 || duel_time_seconds() < c->next_stats_s) return 0;
    c->next_stats_s = duel_time_seconds() + c->o.stats_interval_ms / 1000.0;
    return stream_consumer_write_stats(c, err);
}

/* ---- open / close ----------------------------------------------------------------------- */

static int copy_opt(char *dst, size_t cap, const char *src, const char *what, duel_error *err) {
    if (!src) src = "";
    if (strlen(src) >= cap) return duel_error_set(err, DUEL_EINVAL, "stream consumer: %s is too long", what);
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

/* Connects and starts reading as a fresh consumer does: the group (created if missing), the
 * knobs, the snapshot replay and registration, the status; own pending entries first. */
static int start(stream_consumer *c, duel_error *err) {
    if (c->rc) redisFree(c->rc);
    c->lost = false;
    /* The master, through the sentinels when configured (a reconnect after a failover finds the
     * new one), authenticated from the environment: redis_link.h. */
    duel_error link_err = {0};
    c->rc = redis_link_connect(c->o.link, c->host, c->o.port, c->o.timeout_ms, NULL, 0, &link_err);
    if (!c->rc) {
        c->lost = link_err.code != DUEL_EINVAL; /* refused credentials do not come back by waiting */
        return duel_error_set(err, link_err.code, "%s", link_err.message);
    }
    const char *create[] = {"XGROUP", "CREATE", c->stream, c->group, "0", "MKSTREAM"};
    redisReply *r = redisCommandArgv(c->rc, 6, create, NULL);
    if (!r) {
        c->lost = true;
        return duel_error_set(err, DUEL_EIO, "redis %s:%d: XGROUP CREATE failed: %s", c->host, c->o.port,
                              c->rc->errstr);
    }
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        c->lost = redis_error_is_transient(r->str);
        int rc = duel_error_set(err, DUEL_EIO, "redis %s:%d: XGROUP CREATE: %s", c->host, c->o.port, r->str);
        freeReplyObject(r);
        return rc;
    }
    freeReplyObject(r);
    c->pending_phase = true;
    c->caught_up = false;
    c->status_pending = -1;
    c->num_unacked = 0;
    c->updates_since_checkpoint = 0;
    snprintf(c->cursor, sizeof c->cursor, "0");
    free(c->replay);
    c->replay = NULL;
    c->num_replay = c->next_replay = 0;
    int rc;
    if ((rc = refresh_knobs(c, err)) || (rc = setup_replay(c, err)) || (rc = write_status(c, err))) return rc;
    c->next_stats_s = 0; /* an entry at once: the instance shows up as soon as it runs */
    return stats_if_due(c, err);
}

int stream_consumer_open(const stream_consumer_options *o, online_trainer *trainer, stream_consumer **out,
                         duel_error *err) {
    *out = NULL;
    if (o->port < 1 || o->port > 65535 || o->read_count < 1 || o->read_count > 10000 || o->block_ms < 1 ||
        o->timeout_ms <= o->block_ms || o->max_deliveries < 1 || !o->data_dir)
        return duel_error_set(err, DUEL_EINVAL, "stream consumer: bad options (port, read_count 1..10000, "
                              "block_ms < timeout_ms, max_deliveries >= 1, data_dir)");
    stream_consumer *c = calloc(1, sizeof *c);
    if (!c) return duel_error_set(err, DUEL_ENOMEM, "stream consumer: out of memory");
    c->o = *o;
    c->trainer = trainer;
    int rc;
    if ((rc = copy_opt(c->host, sizeof c->host, o->host, "host", err)) ||
        (rc = copy_opt(c->stream, sizeof c->stream, o->stream, "stream", err)) ||
        (rc = copy_opt(c->group, sizeof c->group, o->group, "group", err)) ||
        (rc = copy_opt(c->consumer, sizeof c->consumer, o->consumer, "consumer", err)) ||
        (rc = copy_opt(c->dead, sizeof c->dead, o->dead_stream, "dead_stream", err)) ||
        (rc = copy_opt(c->prefix, sizeof c->prefix, o->key_prefix, "key_prefix", err)) ||
        (rc = copy_opt(c->data_dir, sizeof c->data_dir, o->data_dir, "data_dir", err)) ||
        (rc = copy_opt(c->tokenizer_dir, sizeof c->tokenizer_dir, o->tokenizer_dir, "tokenizer_dir", err)) ||
        (rc = copy_opt(c->base_model, sizeof c->base_model, o->base_model, "base_model", err)))
        goto fail;
    c->unacked = calloc(MAX_UNACKED, sizeof *c->unacked);
    if (!c->unacked) {
        rc = duel_error_set(err, DUEL_ENOMEM, "stream consumer: out of memory");
        goto fail;
    }
    c->last_publish_s = duel_time_seconds();
    c->figures.vote_to_publish_s = c->figures.vote_to_publish_max_s = NAN;
    if (o->instance && o->instance[0]) {
        snprintf(c->instance, sizeof c->instance, "%s", o->instance);
    } else {
        char host[64] = "localhost";
        gethostname(host, sizeof host - 1);
        snprintf(c->instance, sizeof c->instance, "train@%.60s:%.60s", host, c->consumer);
    }
    for (char *p = c->instance; *p; p++) /* the entries' name rule (common/stats.h) */
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.' || *p == ':' || *p == '@' || *p == '-'))
            *p = '_';
    if ((rc = start(c, err))) {
        if (!(o->wait_for_redis && c->lost)) goto fail;
        c->never_connected = true; /* stream_consumer_run connects (reconnect) */
    }
    *out = c;
    return 0;
fail:
    stream_consumer_close(c);
    return rc;
}

static void log_line(const stream_consumer *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_line(const stream_consumer *c, const char *fmt, ...) {
    if (!c->o.log) return;
    char line[DUEL_ERROR_MESSAGE_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    c->o.log(c->o.log_context, line);
}

/* Sleeps ms in short slices; false when *stop was set meanwhile. */
static bool pause_ms(int ms, volatile sig_atomic_t *stop) {
    for (int slept = 0; slept < ms && !(stop && *stop); slept += 20) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return !(stop && *stop);
}

#define RECONNECT_FIRST_MS 100
#define RECONNECT_DEFAULT_MAX_MS 5000

/* Checkpoints what was offered since the last checkpoint, then reconnects with backoff until
 * Redis answers or the run is stopped or idle (see stream_consumer_run). 0 once connected again
 * or stopped (c->lost tells which); an error when the checkpoint or the restart fails. */
static int reconnect(stream_consumer *c, const stream_consumer_run_options *run, duel_error *err) {
    const double lost_at = duel_time_seconds();
    int rc;
    if (c->num_unacked > 0 || c->updates_since_checkpoint > 0) {
        double t0 = duel_time_seconds();
        if ((rc = online_trainer_checkpoint(c->trainer, err))) return rc;
        c->stats.checkpoint_seconds += duel_time_seconds() - t0;
        c->stats.checkpoints++;
        c->num_unacked = 0; /* the checkpoint holds them: acknowledged when read again */
        c->updates_since_checkpoint = 0;
    }
    online_trainer_status s;
    online_trainer_get_status(c->trainer, &s);
    if (c->never_connected)
        log_line(c, "redis %s:%d does not answer yet (%s); connecting with backoff", c->host, c->o.port,
                 err ? err->message : "not reachable");
    else
        log_line(c, "redis %s:%d went away (%s); the checkpoint holds step %lld, %lld prefs applied and %d "
                 "pending (last applied id '%s'); reconnecting", c->host, c->o.port,
                 err ? err->message : "connection lost", (long long)s.step, (long long)s.prefs_applied,
                 online_trainer_pending_pairs(c->trainer), s.last_applied_id);
    const int max_ms = run->reconnect_max_ms > 0 ? run->reconnect_max_ms : RECONNECT_DEFAULT_MAX_MS;
    int wait_ms = RECONNECT_FIRST_MS;
    for (int attempt = 1;; attempt++) {
        if (!pause_ms(wait_ms, run->stop)) return 0;
        if (run->idle_exit_ms > 0 && (duel_time_seconds() - lost_at) * 1000.0 >= run->idle_exit_ms) return 0;
        duel_error e = {0};
        if ((rc = start(c, &e)) == 0) {
            if (c->never_connected)
                log_line(c, "redis %s:%d answers after %.1f s (%d attempts)", c->host, c->o.port,
                         duel_time_seconds() - lost_at, attempt);
            else
                log_line(c, "redis %s:%d is back after %.1f s (%d attempts); resuming from the checkpoint: own "
                         "pending entries first", c->host, c->o.port, duel_time_seconds() - lost_at, attempt);
            c->never_connected = false;
            return 0;
        }
        if (!c->lost) { /* Redis answers but something else failed (the disk, a bad reply) */
            *err = e;
            return rc;
        }
        if ((attempt & (attempt - 1)) == 0) /* attempts 1, 2, 4, 8, ...: not a line per try */
            log_line(c, "redis %s:%d still unreachable after %.1f s: %s", c->host, c->o.port,
                     duel_time_seconds() - lost_at, e.message);
        wait_ms = wait_ms * 2 < max_ms ? wait_ms * 2 : max_ms;
    }
}

int stream_consumer_run(stream_consumer *c, const stream_consumer_run_options *run, duel_error *err) {
    int rc = 0;
    if (c->never_connected) { /* opened before Redis answered (wait_for_redis) */
        duel_error first = {0};
        snprintf(first.message, sizeof first.message, "not reachable");
        if ((rc = reconnect(c, run, &first)) != 0) {
            *err = first;
            return rc;
        }
        if (c->lost) return 0; /* stopped (or idle) before Redis ever answered: nothing to flush */
    }
    double idle_since = duel_time_seconds();
    while (!(run->stop && *run->stop)) {
        int n = 0;
        if ((rc = stream_consumer_poll(c, &n, err)) != 0) {
            if (!c->lost) return rc;
            if ((rc = reconnect(c, run, err)) != 0) return rc;
            if (c->lost) return 0; /* stopped while Redis was away: the checkpoint holds everything */
            idle_since = duel_time_seconds();
            continue;
        }
        if ((rc = stats_if_due(c, err)) != 0) {
            if (!c->lost) return rc;
            if ((rc = reconnect(c, run, err)) != 0) return rc;
            if (c->lost) return 0;
            idle_since = duel_time_seconds();
            continue;
        }
        if (run->after_round) run->after_round(run->context);
        if (n > 0 || c->pending_phase) idle_since = duel_time_seconds();
        else if (run->idle_exit_ms > 0 && (duel_time_seconds() - idle_since) * 1000.0 >= run->idle_exit_ms) break;
    }
    rc = flush(c, err);
    if (rc && c->lost) { /* Redis went away at the very end: checkpoint what the flush could not acknowledge */
        stream_consumer_run_options stopped = *run;
        volatile sig_atomic_t yes = 1;
        stopped.stop = &yes;
        return reconnect(c, &stopped, err);
    }
    return rc;
}

void stream_consumer_close(stream_consumer *c) {
    if (!c) return;
    if (c->rc) redisFree(c->rc);
    free(c->transport_block);
    free(c->unacked);
    free(c->replay);
    free(c);
}
