/* redis_worker.c: the Redis thread (see redis_worker.h). Owns: the hiredis context, the spill
 * log, the job queue's consumer side. The queue (jobs, stopping, rollout copy, stats) is guarded
 * by mu; everything else is touched only by the thread. Invariant: while the spill log holds
 * records, new votes are appended behind them, so duel:prefs receives votes in acknowledgement
 * order per gateway. */
#include "redis_worker.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "redis_link.h"
#include "spill_log.h"
#include "timer.h"

#define BATCH_MAX 512     /* jobs taken from the queue at once */
#define REPLAY_BATCH 256  /* spilled votes pipelined per round trip */
#define ARGV_MAX (VOTE_ENTRY_MAX_FIELDS * 2 + 8)

/* Appends the entry unless its vote id was stored before (a replay of a stored vote returns 0),
 * then claims the id. The claim comes after the XADD: a script is atomic but not rolled back, so
 * an XADD that fails (a wrong-type key, a refused write) must leave no claim behind, or the
 * vote's replay from the spill log would be taken for a duplicate and the vote lost. A replay of a
 * stored vote still writes (the claim's expiry), so that a WAIT after it covers the earlier XADD:
 * replicas apply the master's writes in order. */
static const char VOTE_SCRIPT[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) return 0 end\n"
    "redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))\n"
    "redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])\n"
    "return 1\n";

/* A conversation's save in one command (HSET, then EXPIRE), so that a pipeline holds one reply
 * per save: two commands per save once let a failed append of the second leave the first's reply
 * unread, and the next vote took it for its own (acknowledged on the wrong reply). */
static const char SAVE_SCRIPT[] =
    "redis.call('HSET', KEYS[1], 'turns', ARGV[2], 'arm', ARGV[3], 'created', ARGV[4])\n"
    "return redis.call('EXPIRE', KEYS[1], ARGV[1])\n";

typedef enum job_kind { JOB_VOTE, JOB_SAVE, JOB_LOAD } job_kind;

typedef struct job {
    job_kind kind;
    uint64_t conn_id;
    char key[33];
    vote_entry_encoded rec;
    char *json;
    struct job *next;
} job;

struct redis_worker {
    redis_worker_config cfg;
    char *host, *spill_path, *stream_key;
    redis_result_fn on_result;
    void *ctx;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *head, *tail;
    bool stopping, started;
    char *rollout;              /* guarded by mu */
    uint64_t rollout_generation; /* guarded by mu: bumped when the text changes */
    redis_worker_stats stats;   /* guarded by mu */
    atomic_size_t votes_in_flight;
    /* thread-owned */
    redisContext *rc;
    spill_log *spill;
    double next_connect, next_rollout;
};

static void job_free(job *j) {
    vote_entry_encoded_free(&j->rec);
    free(j->json);
    free(j);
}

static void stat_add(redis_worker *w, uint64_t *field, uint64_t n) {
    pthread_mutex_lock(&w->mu);
    *field += n;
    pthread_mutex_unlock(&w->mu);
}

static void update_spill_stats(redis_worker *w) {
    pthread_mutex_lock(&w->mu);
    w->stats.spill_pending = spill_log_pending(w->spill);
    w->stats.connected = w->rc != NULL;
    pthread_mutex_unlock(&w->mu);
}

static void disconnect(redis_worker *w) {
    if (w->rc) redisFree(w->rc);
    w->rc = NULL;
    w->next_connect = duel_time_seconds() + w->cfg.retry_ms / 1000.0;
    update_spill_stats(w);
}

/* Every pipelined command goes through here: the test hook may refuse it as an out-of-memory
 * hiredis would (nothing appended). */
static bool append_command(redis_worker *w, int argc, const char **argv, const size_t *lens) {
    if (w->cfg.append_fault && w->cfg.append_fault(w->cfg.fault_ctx, argv[0])) return false;
    return redisAppendCommandArgv(w->rc, argc, argv, lens) == REDIS_OK;
}

static int ack_replicas(const redis_worker *w) { return w->cfg.link ? w->cfg.link->ack_replicas : 0; }

static struct timeval ms_to_tv(int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* Through redis_link: the master (asked of the sentinels again at each reconnect, so a failover
 * is followed), authenticated. With ack_replicas the command timeout leaves room for WAIT. */
static void try_connect(redis_worker *w) {
    if (w->rc || duel_time_seconds() < w->next_connect) return;
    duel_error err = {0};
    char addr[300];
    redisContext *c = redis_link_connect(w->cfg.link, w->host, w->cfg.port, w->cfg.timeout_ms, addr, sizeof addr, &err);
    if (c && ack_replicas(w) > 0 &&
        redisSetTimeout(c, ms_to_tv(w->cfg.timeout_ms + w->cfg.link->ack_timeout_ms)) != REDIS_OK) {
        redisFree(c);
        c = NULL;
    }
    if (!c) {
        w->next_connect = duel_time_seconds() + w->cfg.retry_ms / 1000.0;
        return;
    }
    w->rc = c;
    update_spill_stats(w);
}

/* After the votes' replies: WAIT for the replicas redis.ack_replicas asks; true when they
 * confirmed (or none are asked). False leaves the votes to the spill log, to be replayed (and
 * waited for) again: a vote is acknowledged as stored only once it is as durable as promised. */
static bool replicas_confirm(redis_worker *w) {
    int n = ack_replicas(w);
    if (n <= 0) return true;
    redisReply *r = redisCommand(w->rc, "WAIT %d %d", n, w->cfg.link->ack_timeout_ms);
    if (!r) {
        disconnect(w);
        return false;
    }
    bool ok = r->type == REDIS_REPLY_INTEGER && r->integer >= n;
    bool failover = redis_link_reply_is_failover(r);
    freeReplyObject(r);
    if (failover) disconnect(w);
    if (!ok) stat_add(w, &w->stats.votes_unreplicated, 1);
    return ok;
}

/* One vote's fields: the encoder's (live votes) or unpacked from the spill log (replays). */
typedef struct vote_fields {
    const vote_entry_field *fields;
    int n;
} vote_fields;

/* EVAL argv for one vote: EVAL script 2 duel:vote:{id} stream ttl field value ... */
static int vote_argv(redis_worker *w, const vote_fields *v, const char **argv, size_t *lens,
                     char *dedup_key, size_t dedup_cap, char *ttl, size_t ttl_cap) {
    const vote_entry_field *id = vote_entry_field_find(v->fields, v->n, "vote_id");
    if (!id || id->value_len > VOTE_ENTRY_MAX_ID) return -1;
    snprintf(dedup_key, dedup_cap, "duel:vote:%.*s", (int)id->value_len, id->value);
    snprintf(ttl, ttl_cap, "%lld", w->cfg.vote_dedup_ttl_s);
    int n = 0;
    argv[n] = "EVAL", lens[n++] = 4;
    argv[n] = VOTE_SCRIPT, lens[n++] = sizeof VOTE_SCRIPT - 1;
    argv[n] = "2", lens[n++] = 1;
    argv[n] = dedup_key, lens[n++] = strlen(dedup_key);
    argv[n] = w->stream_key, lens[n++] = strlen(w->stream_key);
    argv[n] = ttl, lens[n++] = strlen(ttl);
    for (int i = 0; i < v->n; i++) {
        argv[n] = v->fields[i].name, lens[n++] = v->fields[i].name_len;
        argv[n] = v->fields[i].value, lens[n++] = v->fields[i].value_len;
    }
    return n;
}

/* Pipelines the votes recs[0..n) and reads the replies. Returns how many Redis stored (a prefix);
 * disconnects on the first failure. */
static size_t pipeline_votes(redis_worker *w, const vote_fields *recs, size_t n) {
    const char *argv[ARGV_MAX];
    size_t lens[ARGV_MAX];
    char dedup[VOTE_ENTRY_MAX_ID + 16], ttl[32];
    size_t appended = 0;
    for (size_t i = 0; i < n; i++) {
        int argc = vote_argv(w, &recs[i], argv, lens, dedup, sizeof dedup, ttl, sizeof ttl);
        if (argc < 0 || !append_command(w, argc, argv, lens)) break;
        appended++;
    }
    size_t stored = 0;
    for (size_t i = 0; i < appended; i++) {
        redisReply *reply = NULL;
        if (redisGetReply(w->rc, (void **)&reply) != REDIS_OK || !reply) break;
        bool ok = reply->type == REDIS_REPLY_INTEGER;
        freeReplyObject(reply);
        if (!ok) break;
        stored++;
    }
    if (stored < n) {
        disconnect(w);
        return stored; /* not waited for: the caller spills them all the same as the rest */
    }
    return stored > 0 && !replicas_confirm(w) ? 0 : stored;
}

/* Replays spilled votes while Redis answers. */
static void replay_spill(redis_worker *w) {
    while (w->rc && spill_log_pending(w->spill) > 0) {
        spill_log_batch batch;
        if (spill_log_peek(w->spill, REPLAY_BATCH, &batch, NULL) || batch.n == 0) {
            spill_log_batch_free(&batch);
            break;
        }
        /* The fields point into the batch's records, which live until the batch is freed. */
        vote_entry_field *fields = calloc(batch.n * VOTE_ENTRY_MAX_FIELDS, sizeof *fields);
        vote_fields *recs = calloc(batch.n, sizeof *recs);
        size_t parsed = 0;
        if (fields && recs) {
            for (; parsed < batch.n; parsed++) {
                size_t at = 0;
                vote_fields *v = &recs[parsed];
                v->fields = fields + parsed * VOTE_ENTRY_MAX_FIELDS;
                if (vote_entry_unpack(batch.records[parsed], batch.lens[parsed], &at,
                                      fields + parsed * VOTE_ENTRY_MAX_FIELDS, &v->n, NULL) ||
                    at != batch.lens[parsed])
                    break;
            }
        }
        size_t stored = parsed ? pipeline_votes(w, recs, parsed) : 0;
        /* A record that passed its CRC but does not parse cannot ever be stored: drop it. */
        size_t consumed = stored;
        if (stored == parsed && parsed < batch.n && fields && recs) consumed = parsed + 1;
        spill_log_consume(w->spill, &batch, consumed, NULL);
        stat_add(w, &w->stats.votes_stored, stored);
        stat_add(w, &w->stats.votes_replayed, stored);
        free(fields);
        free(recs);
        spill_log_batch_free(&batch);
        update_spill_stats(w);
        if (consumed == 0) break;
    }
}

static void emit_vote(redis_worker *w, const job *j, redis_result_kind kind, bool queued) {
    redis_result r = {.kind = kind, .conn_id = j->conn_id, .queued = queued};
    memcpy(r.key, j->key, sizeof r.key);
    w->on_result(w->ctx, &r);
    atomic_fetch_sub(&w->votes_in_flight, 1);
}

static void spill_votes(redis_worker *w, job **votes, size_t n) {
    if (n == 0) return;
    char **bufs = calloc(n, sizeof *bufs);
    size_t *lens = calloc(n, sizeof *lens);
    bool ok = bufs && lens;
    for (size_t i = 0; ok && i < n; i++)
        ok = vote_entry_pack(votes[i]->rec.fields, votes[i]->rec.n_fields, &bufs[i], &lens[i],
                             NULL) == DUEL_OK;
    ok = ok && spill_log_append(w->spill, (const void *const *)bufs, lens, n, NULL) == DUEL_OK;
    for (size_t i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    free(lens);
    if (ok) stat_add(w, &w->stats.votes_spilled, n);
    else stat_add(w, &w->stats.votes_failed, n);
    update_spill_stats(w);
    for (size_t i = 0; i < n; i++)
        emit_vote(w, votes[i], ok ? REDIS_RESULT_VOTE : REDIS_RESULT_VOTE_FAILED, true);
}

static void process_votes(redis_worker *w, job **votes, size_t n) {
    if (n == 0) return;
    size_t stored = 0;
    if (w->rc && spill_log_pending(w->spill) == 0) {
        vote_fields *recs = malloc(n * sizeof *recs);
        if (recs) {
            for (size_t i = 0; i < n; i++) recs[i] = (vote_fields){votes[i]->rec.fields, votes[i]->rec.n_fields};
            stored = pipeline_votes(w, recs, n);
            free(recs);
        }
        stat_add(w, &w->stats.votes_stored, stored);
        for (size_t i = 0; i < stored; i++) emit_vote(w, votes[i], REDIS_RESULT_VOTE, false);
    }
    /* The rest (Redis down, failed mid-pipeline, or spilled votes waiting) go to the log. Votes
     * Redis may have applied without answering are deduplicated by their id on replay. */
    spill_votes(w, votes + stored, n - stored);
}

/* Pipelines one SAVE_SCRIPT per conversation and reads exactly the replies of the commands
 * appended (a save whose append fails is dropped: the local cache still has it). */
static void save_conversations(redis_worker *w, job **saves, size_t n) {
    if (!w->rc || n == 0) return; /* the gateway's local cache carries on without Redis */
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%lld", w->cfg.conversation_ttl_s);
    size_t appended = 0;
    for (size_t i = 0; i < n; i++) {
        char key[64];
        snprintf(key, sizeof key, "duel:conv:%s", saves[i]->key);
        json_t *obj = json_loads(saves[i]->json, 0, NULL);
        json_t *turns = obj ? json_object_get(obj, "turns") : NULL;
        char *turns_text = turns ? json_dumps(turns, JSON_COMPACT) : NULL;
        long long arm = obj ? json_integer_value(json_object_get(obj, "arm")) : -1;
        long long created = obj ? json_integer_value(json_object_get(obj, "created")) : 0;
        json_decref(obj);
        if (!turns_text) continue;
        char arm_s[32], created_s[32];
        snprintf(arm_s, sizeof arm_s, "%lld", arm);
        snprintf(created_s, sizeof created_s, "%lld", created);
        const char *argv[] = {"EVAL", SAVE_SCRIPT, "1", key, ttl, turns_text, arm_s, created_s};
        size_t lens[8];
        for (int k = 0; k < 8; k++) lens[k] = strlen(argv[k]);
        bool ok = append_command(w, 8, argv, lens);
        free(turns_text);
        if (!ok) break;
        appended++;
    }
    for (size_t i = 0; i < appended; i++) {
        redisReply *reply = NULL;
        if (redisGetReply(w->rc, (void **)&reply) != REDIS_OK || !reply) {
            disconnect(w);
            return;
        }
        freeReplyObject(reply);
    }
}

static char *load_conversation(redis_worker *w, const char *conv_id) {
    if (!w->rc) return NULL;
    char key[64];
    snprintf(key, sizeof key, "duel:conv:%s", conv_id);
    const char *argv[] = {"HGETALL", key};
    size_t lens[] = {7, strlen(key)};
    redisReply *reply = redisCommandArgv(w->rc, 2, argv, lens);
    if (!reply) {
        disconnect(w);
        return NULL;
    }
    json_t *turns = NULL;
    long long arm = -1, created = 0;
    if (reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            redisReply *k = reply->element[i], *v = reply->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
            if (strcmp(k->str, "turns") == 0 && !turns)
                turns = json_loadb(v->str, v->len, JSON_REJECT_DUPLICATES, NULL);
            else if (strcmp(k->str, "arm") == 0)
                arm = strtoll(v->str, NULL, 10);
            else if (strcmp(k->str, "created") == 0)
                created = strtoll(v->str, NULL, 10);
        }
    }
    freeReplyObject(reply);
    if (!turns || !json_is_array(turns)) {
        json_decref(turns);
        return NULL;
    }
    json_t *obj = json_pack("{s:o, s:I, s:I}", "turns", turns, "arm", (json_int_t)arm, "created",
                            (json_int_t)created);
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    return text;
}

static void poll_rollout(redis_worker *w) {
    double now = duel_time_seconds();
    if (!w->rc || now < w->next_rollout) return;
    w->next_rollout = now + w->cfg.rollout_poll_ms / 1000.0;
    const char *argv[] = {"GET", "duel:rollout"};
    size_t lens[] = {3, 12};
    redisReply *reply = redisCommandArgv(w->rc, 2, argv, lens);
    if (!reply) {
        disconnect(w);
        return;
    }
    char *copy = reply->type == REDIS_REPLY_STRING ? strndup(reply->str, reply->len) : NULL;
    freeReplyObject(reply);
    pthread_mutex_lock(&w->mu);
    bool same = (!copy && !w->rollout) || (copy && w->rollout && strcmp(copy, w->rollout) == 0);
    if (same) {
        free(copy);
    } else {
        free(w->rollout);
        w->rollout = copy;
        w->rollout_generation++;
    }
    pthread_mutex_unlock(&w->mu);
}

static void *worker_main(void *arg) {
    redis_worker *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        if (!w->head && !w->stopping) {
            struct timespec deadline;
            clock_gettime(CLOCK_REALTIME, &deadline);
            deadline.tv_nsec += 100 * 1000000L; /* wake for reconnects, replay, rollout */
            if (deadline.tv_nsec >= 1000000000L) {
                deadline.tv_sec++;
                deadline.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&w->cv, &w->mu, &deadline);
        }
        job *list = w->head;
        size_t taken = 0;
        job *last = NULL;
        for (job *j = list; j && taken < BATCH_MAX; j = j->next) last = j, taken++;
        if (last) {
            w->head = last->next;
            if (!w->head) w->tail = NULL;
            last->next = NULL;
        } else {
            list = NULL;
        }
        bool exit_now = w->stopping && !w->head && !list;
        pthread_mutex_unlock(&w->mu);

        try_connect(w);
        if (w->rc && spill_log_pending(w->spill) > 0) replay_spill(w);

        job *votes[BATCH_MAX], *saves[BATCH_MAX];
        size_t n_votes = 0, n_saves = 0;
        for (job *j = list; j; j = j->next) {
            if (j->kind == JOB_VOTE) votes[n_votes++] = j;
            else if (j->kind == JOB_SAVE) saves[n_saves++] = j;
        }
        process_votes(w, votes, n_votes);
        save_conversations(w, saves, n_saves);
        for (job *j = list; j; j = j->next) {
            if (j->kind != JOB_LOAD) continue;
            redis_result r = {.kind = REDIS_RESULT_CONVERSATION, .conn_id = j->conn_id};
            memcpy(r.key, j->key, sizeof r.key);
            r.json = load_conversation(w, j->key);
            w->on_result(w->ctx, &r);
        }
        while (list) {
            job *next = list->next;
            job_free(list);
            list = next;
        }
        if (!w->stopping) poll_rollout(w);
        if (exit_now) break;
    }
    return NULL;
}

static int enqueue(redis_worker *w, job *j) {
    pthread_mutex_lock(&w->mu);
    if (w->tail) w->tail->next = j;
    else w->head = j;
    w->tail = j;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return DUEL_OK;
}

int redis_worker_submit_vote(redis_worker *w, uint64_t conn_id, const char *duel_id,
                             vote_entry_encoded *rec) {
    job *j = calloc(1, sizeof *j);
    if (!j) {
        vote_entry_encoded_free(rec);
        return DUEL_ENOMEM;
    }
    j->kind = JOB_VOTE;
    j->conn_id = conn_id;
    snprintf(j->key, sizeof j->key, "%s", duel_id);
    j->rec = *rec;
    rec->n_fields = 0;
    atomic_fetch_add(&w->votes_in_flight, 1);
    return enqueue(w, j);
}

int redis_worker_save_conversation(redis_worker *w, const char *conv_id, char *json) {
    job *j = calloc(1, sizeof *j);
    if (!j) {
        free(json);
        return DUEL_ENOMEM;
    }
    j->kind = JOB_SAVE;
    snprintf(j->key, sizeof j->key, "%s", conv_id);
    j->json = json;
    return enqueue(w, j);
}

int redis_worker_load_conversation(redis_worker *w, uint64_t conn_id, const char *conv_id) {
    job *j = calloc(1, sizeof *j);
    if (!j) return DUEL_ENOMEM;
    j->kind = JOB_LOAD;
    j->conn_id = conn_id;
    snprintf(j->key, sizeof j->key, "%s", conv_id);
    return enqueue(w, j);
}

void redis_worker_get_stats(redis_worker *w, redis_worker_stats *out) {
    pthread_mutex_lock(&w->mu);
    *out = w->stats;
    pthread_mutex_unlock(&w->mu);
}

bool redis_worker_rollout_changed(redis_worker *w, uint64_t *seen, char **json) {
    *json = NULL;
    pthread_mutex_lock(&w->mu);
    bool changed = w->rollout_generation != *seen;
    if (changed) {
        *json = w->rollout ? strdup(w->rollout) : NULL;
        if (w->rollout && !*json) changed = false; /* out of memory: try again next time */
        else *seen = w->rollout_generation;
    }
    pthread_mutex_unlock(&w->mu);
    return changed;
}

size_t redis_worker_votes_in_flight(redis_worker *w) { return atomic_load(&w->votes_in_flight); }

int redis_worker_create(const redis_worker_config *cfg, redis_result_fn on_result, void *ctx,
                        redis_worker **out, duel_error *err) {
    *out = NULL;
    redis_worker *w = calloc(1, sizeof *w);
    if (!w) return duel_error_set(err, DUEL_ENOMEM, "redis worker: out of memory");
    w->cfg = *cfg;
    w->host = strdup(cfg->host ? cfg->host : "127.0.0.1");
    w->spill_path = strdup(cfg->spill_path);
    w->stream_key = strdup(cfg->stream_key ? cfg->stream_key : "duel:prefs");
    if (!w->host || !w->spill_path || !w->stream_key) {
        redis_worker_destroy(w);
        return duel_error_set(err, DUEL_ENOMEM, "redis worker: out of memory");
    }
    if (w->cfg.timeout_ms <= 0) w->cfg.timeout_ms = 1000;
    if (w->cfg.retry_ms <= 0) w->cfg.retry_ms = 250;
    if (w->cfg.rollout_poll_ms <= 0) w->cfg.rollout_poll_ms = 5000;
    if (w->cfg.vote_dedup_ttl_s <= 0) w->cfg.vote_dedup_ttl_s = 7 * 86400;
    if (w->cfg.conversation_ttl_s <= 0) w->cfg.conversation_ttl_s = 86400;
    w->on_result = on_result;
    w->ctx = ctx;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    spill_log_open_stats st;
    int rc = spill_log_open(w->spill_path, NULL, &w->spill, &st, err);
    if (rc) {
        redis_worker_destroy(w);
        return rc;
    }
    w->stats.spill_pending = st.records;
    w->stats.spill_corrupt = st.corrupt;
    if (pthread_create(&w->thread, NULL, worker_main, w)) {
        redis_worker_destroy(w);
        return duel_error_set(err, DUEL_ENOMEM, "redis worker: cannot start its thread");
    }
    w->started = true;
    *out = w;
    return DUEL_OK;
}

void redis_worker_stop(redis_worker *w) {
    if (!w || !w->started) return;
    pthread_mutex_lock(&w->mu);
    w->stopping = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    w->started = false;
}

void redis_worker_destroy(redis_worker *w) {
    if (!w) return;
    redis_worker_stop(w);
    while (w->head) {
        job *j = w->head;
        w->head = j->next;
        job_free(j);
    }
    if (w->rc) redisFree(w->rc);
    spill_log_close(w->spill);
    free(w->rollout);
    free(w->host);
    free(w->spill_path);
    free(w->stream_key);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
