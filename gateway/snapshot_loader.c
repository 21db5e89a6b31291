/* snapshot_loader.c: the loader thread (see snapshot_loader.h). One loop: (re)connect both
 * connections, wait up to 100 ms for a pub/sub message (poll() on the subscriber's socket, then
 * hiredis's reader; a timed-out blocking read would leave the context unusable), and check the
 * zset when a snapshot note came or poll_ms has passed. Installing (load + engine_add_arm) runs
 * on this thread, so the engine thread and the lws thread never wait for a disk read. */
#include "snapshot_loader.h"

#include <hiredis/hiredis.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "redis_link.h"
#include "rollout_spec.h"
#include "snapshot.h"
#include "timer.h"

#define LOADER_KEY_MAX 256
#define LOADER_MAX_REFUSED 1024 /* versions remembered as refused (oldest forgotten first) */
#define LOADER_WAIT_MS 100      /* longest wait for a pub/sub message per loop */
#define LOADER_RETRY_S 1.0      /* pause before reconnecting */
/* A version no arm pins any more stays resident this long before it is retired: every gateway's
 * router reads a changed duel:rollout within its poll (5 s) or at once on the note, and until
 * then may still assign users to the arm it was (they must get its weights, not the latest's). */
#define LOADER_RETIRE_GRACE_S 10.0
#define LOADER_MAX_PINS 64

struct snapshot_loader {
    snapshot_loader_config cfg;
    char host[256], prefix[LOADER_KEY_MAX];
    duel_backend backend; /* a copy of the borrowed backend's table */
    pthread_t thread;
    bool started;
    atomic_bool stopping;
    /* Loader thread only. */
    redisContext *cmd, *sub;
    double next_poll, next_connect;
    bool check_now;
    long long refused[LOADER_MAX_REFUSED];
    int n_refused;
    long long recent[LOADER_MAX_PINS]; /* versions pinned lately, each until recent_until */
    double recent_until[LOADER_MAX_PINS];
    int n_recent;
    /* Guarded by mu. */
    pthread_mutex_t mu;
    snapshot_loader_stats stats;
};

static void set_error(snapshot_loader *l, const char *message) {
    pthread_mutex_lock(&l->mu);
    snprintf(l->stats.last_error, sizeof l->stats.last_error, "%.*s", (int)sizeof l->stats.last_error - 1, message);
    pthread_mutex_unlock(&l->mu);
}

static void disconnect(snapshot_loader *l) {
    if (l->cmd) redisFree(l->cmd);
    if (l->sub) redisFree(l->sub);
    l->cmd = l->sub = NULL;
    pthread_mutex_lock(&l->mu);
    l->stats.connected = false;
    pthread_mutex_unlock(&l->mu);
}

/* The master (through the sentinels when configured), authenticated: redis_link.h. */
static redisContext *connect_one(snapshot_loader *l) {
    duel_error err = {0};
    redisContext *c = redis_link_connect(l->cfg.link, l->host, l->cfg.port, l->cfg.timeout_ms, NULL, 0, &err);
    if (!c) set_error(l, err.message);
    return c;
}

static void try_connect(snapshot_loader *l) {
    double now = duel_time_seconds();
    if (now < l->next_connect) return;
    l->next_connect = now + LOADER_RETRY_S;
    if (!(l->cmd = connect_one(l)) || !(l->sub = connect_one(l))) {
        disconnect(l);
        return;
    }
    char channel[SNAPSHOT_KEY_MAX];
    snapshot_key_notify(l->prefix, channel, sizeof channel, NULL);
    redisReply *r = redisCommand(l->sub, "SUBSCRIBE %s", channel);
    bool ok = r && r->type == REDIS_REPLY_ARRAY;
    if (r) freeReplyObject(r);
    if (!ok) {
        set_error(l, "redis: SUBSCRIBE failed");
        disconnect(l);
        return;
    }
    pthread_mutex_lock(&l->mu);
    l->stats.connected = true;
    pthread_mutex_unlock(&l->mu);
    l->check_now = true; /* whatever was published while we were away */
}

/* A pub/sub message: a snapshot or rollout note asks for a check now. Other kinds (knobs) are
 * not the loader's. */
static bool note_is_rollout(const char *payload, size_t len) {
    json_t *note = json_loadb(payload, len, 0, NULL);
    const char *kind = json_string_value(json_object_get(note, "kind"));
    bool yes = kind && strcmp(kind, "rollout") == 0;
    json_decref(note);
    return yes;
}

static void on_message(snapshot_loader *l, const redisReply *r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3) return;
    const redisReply *kind = r->element[0], *payload = r->element[2];
    if (kind->type != REDIS_REPLY_STRING || strcmp(kind->str, "message") != 0 ||
        payload->type != REDIS_REPLY_STRING)
        return;
    if (note_is_rollout(payload->str, payload->len)) l->check_now = true;
    if (snapshot_note_is_snapshot(payload->str, payload->len)) {
        l->check_now = true;
        pthread_mutex_lock(&l->mu);
        l->stats.notes++;
        pthread_mutex_unlock(&l->mu);
    }
}

/* Waits up to LOADER_WAIT_MS for messages on the subscriber; false when the connection broke. */
static bool read_messages(snapshot_loader *l) {
    struct pollfd p = {.fd = l->sub->fd, .events = POLLIN};
    int n = poll(&p, 1, LOADER_WAIT_MS);
    if (n <= 0) return n == 0;
    if (redisBufferRead(l->sub) != REDIS_OK) return false;
    for (;;) {
        void *reply = NULL;
        if (redisGetReplyFromReader(l->sub, &reply) != REDIS_OK) return false;
        if (!reply) return true;
        on_message(l, reply);
        freeReplyObject(reply);
    }
}

static bool was_refused(const snapshot_loader *l, long long v) {
    for (int i = 0; i < l->n_refused; i++)
        if (l->refused[i] == v) return true;
    return false;
}

static void refuse(snapshot_loader *l, long long v, const char *why) {
    if (l->n_refused == LOADER_MAX_REFUSED) {
        memmove(l->refused, l->refused + 1, (LOADER_MAX_REFUSED - 1) * sizeof *l->refused);
        l->n_refused--;
    }
    l->refused[l->n_refused++] = v;
    char message[512];
    snprintf(message, sizeof message, "snapshot v%lld refused: %.200s", v, why);
    /* The gateway's log: once per version, since it is never retried. */
    fprintf(stderr, "duel serve: %s (serving continues on the current arm)\n", message);
    pthread_mutex_lock(&l->mu);
    l->stats.rejected++;
    snprintf(l->stats.last_error, sizeof l->stats.last_error, "%.*s", (int)sizeof l->stats.last_error - 1, message);
    pthread_mutex_unlock(&l->mu);
}

/* Seconds from then_ms to now_ms, 0 when then is later (another host's clock ahead). */
static double seconds_since(int64_t then_ms, int64_t now_ms) {
    return now_ms > then_ms ? (double)(now_ms - then_ms) / 1000.0 : 0.0;
}

/* Snapshot v's folder into dir, verified (every hash, the version in meta.json): 1; refused (and
 * remembered): -1; 0: the command connection broke. */
static int verified_folder(snapshot_loader *l, long long v, char dir[SNAPSHOT_PATH_MAX]) {
    char hkey[SNAPSHOT_KEY_MAX];
    dir[0] = '\0';
    snapshot_key_version(l->prefix, v, hkey, sizeof hkey, NULL);
    redisReply *r = redisCommand(l->cmd, "HGET %s %s", hkey, SNAPSHOT_FIELD_PATH);
    if (!r) return 0;
    if (r->type == REDIS_REPLY_STRING && r->len > 0 && r->len < SNAPSHOT_PATH_MAX)
        memcpy(dir, r->str, r->len + 1);
    freeReplyObject(r);
    if (!dir[0]) {
        refuse(l, v, "its hash has no usable path field");
        return -1;
    }
    duel_error err = {0};
    int64_t meta_version = 0;
    if (snapshot_verify(dir, &meta_version, &err)) {
        refuse(l, v, err.message);
        return -1;
    }
    if (meta_version != v) {
        char why[128];
        snprintf(why, sizeof why, "meta.json says version %lld", (long long)meta_version);
        refuse(l, v, why);
        return -1;
    }
    return 1;
}

/* The rollout's pins (docs/SERVING.md, "Rollouts"): every version an arm at a weight above 0
 * names is made resident (verified like the newest, loaded on this thread, off the serving
 * path), then every resident snapshot no arm needs (weight 0, or no longer in the spec) that is
 * not the latest is retired (LOADER_RETIRE_GRACE_S after its last pin): its running duels finish
 * on it. No key: nothing pinned. A text the
 * spec's parser refuses leaves the pins as they were (the router keeps its spec too). false: the
 * command connection broke. */
static bool check_rollout(snapshot_loader *l) {
    if (!l->backend.hold_snapshot || !l->backend.set_pins) return true;
    char key[LOADER_KEY_MAX + 16];
    snprintf(key, sizeof key, "%srollout", l->prefix);
    redisReply *r = redisCommand(l->cmd, "GET %s", key);
    if (!r) return false;
    rollout_spec spec;
    duel_error err = {0};
    bool present = r->type == REDIS_REPLY_STRING;
    int rc = present ? rollout_spec_parse(r->str, r->len, NULL, &spec, &err) : DUEL_OK;
    freeReplyObject(r);
    if (rc) return true;
    long long pins[ROLLOUT_MAX_ARMS];
    int n = 0;
    for (int i = 0; present && i < spec.n_arms; i++) {
        long long v = spec.arms[i].snapshot;
        if (v < 1 || spec.arms[i].weight == 0) continue;
        pins[n++] = v;
        if (was_refused(l, v) || l->backend.snapshot_resident(l->backend.impl, v)) continue;
        char dir[SNAPSHOT_PATH_MAX];
        int ok = verified_folder(l, v, dir);
        if (ok == 0) return false;
        if (ok < 0) continue;
        if (l->backend.hold_snapshot(l->backend.impl, v, dir, &err)) {
            refuse(l, v, err.message);
            continue;
        }
        fprintf(stderr, "duel serve: snapshot v%lld resident for rollout arm %s\n", v,
                spec.arms[i].name);
        pthread_mutex_lock(&l->mu);
        l->stats.loaded++;
        pthread_mutex_unlock(&l->mu);
    }
    /* the pins now, and those of the last LOADER_RETIRE_GRACE_S seconds */
    double now = duel_time_seconds();
    for (int i = 0; i < n; i++) {
        int k = 0;
        while (k < l->n_recent && l->recent[k] != pins[i]) k++;
        if (k == l->n_recent && l->n_recent < LOADER_MAX_PINS) l->recent[l->n_recent++] = pins[i];
        if (k < l->n_recent) l->recent_until[k] = now + LOADER_RETIRE_GRACE_S;
    }
    int kept = 0;
    for (int k = 0; k < l->n_recent; k++)
        if (l->recent_until[k] > now) {
            l->recent[kept] = l->recent[k];
            l->recent_until[kept++] = l->recent_until[k];
        }
    l->n_recent = kept;
    l->backend.set_pins(l->backend.impl, l->recent, l->n_recent);
    pthread_mutex_lock(&l->mu);
    l->stats.pinned = n;
    pthread_mutex_unlock(&l->mu);
    return true;
}

/* Reads the newest version; installs it when newer than the serving one. false: the command
 * connection broke. */
static bool check_latest(snapshot_loader *l) {
    l->check_now = false;
    l->next_poll = duel_time_seconds() + l->cfg.poll_ms / 1000.0;
    char zkey[SNAPSHOT_KEY_MAX];
    snapshot_key_registry(l->prefix, zkey, sizeof zkey, NULL);
    redisReply *r = redisCommand(l->cmd, "ZRANGE %s -1 -1 WITHSCORES", zkey);
    if (!r) return false;
    long long newest = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        char *end = NULL;
        newest = strtoll(r->element[0]->str, &end, 10);
        if (!end || *end || newest < 1) newest = 0;
    }
    freeReplyObject(r);
    long long serving = l->backend.serving_version ? l->backend.serving_version(l->backend.impl) : 0;
    pthread_mutex_lock(&l->mu);
    l->stats.polls++;
    l->stats.newest_seen = newest;
    l->stats.serving_version = serving;
    pthread_mutex_unlock(&l->mu);
    if (newest <= serving || was_refused(l, newest)) return true;

    char dir[SNAPSHOT_PATH_MAX];
    int v = verified_folder(l, newest, dir);
    if (v <= 0) return v < 0; /* refused: the connection is fine */
    duel_error err = {0};
    if (l->backend.install_snapshot(l->backend.impl, newest, dir, &err)) {
        refuse(l, newest, err.message);
        return true;
    }
    int64_t served_ms = duel_time_unix_ms();
    fprintf(stderr, "duel serve: serving snapshot v%lld from %s\n", newest, dir);
    snapshot_meta meta; /* verified above; read again for its times */
    bool have_meta = snapshot_meta_read(dir, &meta, &err) == DUEL_OK;
    pthread_mutex_lock(&l->mu);
    l->stats.publish_to_serve_s = have_meta ? seconds_since(meta.created_ms, served_ms) : NAN;
    l->stats.vote_to_serving_s =
        have_meta && meta.votes_mean_ms > 0 ? seconds_since(meta.votes_mean_ms, served_ms) : NAN;
    l->stats.loaded++;
    l->stats.serving_version = newest;
    pthread_mutex_unlock(&l->mu);
    return true;
}

/* The newest version, installed when newer than the serving one, then the rollout's pins.
 * false: the command connection broke. */
static bool check(snapshot_loader *l) {
    return check_latest(l) && check_rollout(l);
}

static void *loader_main(void *arg) {
    snapshot_loader *l = arg;
    while (!atomic_load(&l->stopping)) {
        if (!l->cmd) {
            try_connect(l);
            if (!l->cmd) {
                struct timespec ts = {0, LOADER_WAIT_MS * 1000000L};
                nanosleep(&ts, NULL);
                continue;
            }
        }
        bool ok = read_messages(l);
        if (ok && (l->check_now || duel_time_seconds() >= l->next_poll)) ok = check(l);
        if (!ok) {
            set_error(l, "redis: connection lost");
            disconnect(l);
        }
    }
    disconnect(l);
    return NULL;
}

int snapshot_loader_create(const snapshot_loader_config *cfg, const duel_backend *backend,
                           snapshot_loader **out, duel_error *err) {
    *out = NULL;
    if (!cfg || !backend || !backend->install_snapshot)
        return duel_error_set(err, DUEL_EINVAL,
                              "snapshot loader: the %s backend cannot hot-swap snapshots",
                              backend && backend->name ? backend->name : "(none)");
    snapshot_loader *l = calloc(1, sizeof *l);
    if (!l) return duel_error_set(err, DUEL_ENOMEM, "snapshot loader: out of memory");
    l->cfg = *cfg;
    if (l->cfg.timeout_ms <= 0) l->cfg.timeout_ms = 1000;
    if (l->cfg.poll_ms <= 0) l->cfg.poll_ms = SNAPSHOT_LOADER_DEFAULT_POLL_MS;
    snprintf(l->host, sizeof l->host, "%s", cfg->host ? cfg->host : "127.0.0.1");
    snprintf(l->prefix, sizeof l->prefix, "%s", cfg->key_prefix ? cfg->key_prefix : "duel:");
    l->backend = *backend;
    l->stats.publish_to_serve_s = l->stats.vote_to_serving_s = NAN;
    pthread_mutex_init(&l->mu, NULL);
    if (pthread_create(&l->thread, NULL, loader_main, l)) {
        pthread_mutex_destroy(&l->mu);
        free(l);
        return duel_error_set(err, DUEL_ENOMEM, "snapshot loader: cannot start its thread");
    }
    l->started = true;
    *out = l;
    return DUEL_OK;
}

void snapshot_loader_get_stats(snapshot_loader *l, snapshot_loader_stats *out) {
    pthread_mutex_lock(&l->mu);
    *out = l->stats;
    pthread_mutex_unlock(&l->mu);
    if (l->backend.serving_version)
        out->serving_version = l->backend.serving_version(l->backend.impl);
}

void snapshot_loader_destroy(snapshot_loader *l) {
    if (!l) return;
    atomic_store(&l->stopping, true);
    if (l->started) pthread_join(l->thread, NULL);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
