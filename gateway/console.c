/* console.c: the console thread (see console.h). Invariant: the lws thread only ever copies
 * what this thread already prepared (rendered texts, the knob set) under mu; every Redis round
 * trip and every aggregation happens here. */
#include "console.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "redis_link.h"
#include "rollout_runner.h"
#include "rollout_store.h"
#include "stats_store.h"
#include "timer.h"

#define WAIT_MS 100             /* longest sleep of the loop when nothing happens */
#define RECONNECT_FIRST_MS 250
#define RECONNECT_MAX_MS 5000
#define MAX_CHANGES 64          /* knob changes waiting */
#define DAY_MS (86400LL * 1000)

typedef struct queued_entry {
    char *data;
    int64_t ts_ms, interval_ms;
} queued_entry;

typedef enum job_kind { JOB_KNOBS, JOB_ROLLOUT, JOB_ROLLOUT_READ, JOB_ARENA } job_kind;

typedef struct change_job {
    job_kind kind;
    uint64_t request_id;
    char who[KNOB_STORE_WHO_MAX];
    rollout_change rollout; /* JOB_ROLLOUT: spec_text and arm owned */
    size_t n;
    char *names[DUEL_KNOB_COUNT * 2];
    char *texts[DUEL_KNOB_COUNT * 2];
    struct change_job *next;
} change_job;

struct console {
    console_config cfg;
    char *host, *prefix, *instance;
    pthread_t thread;
    bool started;
    int wake[2];
    pthread_mutex_t mu;
    /* guarded by mu */
    bool stopping, connected;
    queued_entry entries[CONSOLE_MAX_QUEUED_ENTRIES];
    int n_entries;
    change_job *changes, *changes_tail;
    int n_changes;
    duel_knob_values knobs;
    bool knob_set[DUEL_KNOB_COUNT];
    knob_store_bad bad;
    uint64_t knobs_generation;
    char *rendered[STATS_VIEW_WINDOWS];
    size_t rendered_len[STATS_VIEW_WINDOWS];
    char *audit;
    size_t audit_len;
    /* the thread's own */
    redisContext *rc, *sub;
    double next_connect, next_knobs, next_stats;
    int backoff_ms;
    bool refresh_knobs;
    char last_id[STATS_STORE_ID_MAX];
    stats_view *view;
    rollout_runner runner;   /* the rollout controller, when cfg.rollout_controller_tick_ms */
    arena_tally arena;       /* the arena votes read so far (/api/arena reads only new ones) */
    char arena_id[ROLLOUT_STORE_ID_MAX];
};

static void wake(console *c) {
    char b = 1;
    ssize_t w = write(c->wake[1], &b, 1);
    (void)w; /* a full pipe already holds a wake-up */
}

static void change_free(change_job *j) {
    free((char *)j->rollout.spec_text);
    free((char *)j->rollout.arm);
    for (size_t i = 0; i < j->n; i++) {
        free(j->names[i]);
        free(j->texts[i]);
    }
    free(j);
}

/* ---- Redis, on the thread ---------------------------------------------------------------- */

/* The master (through the sentinels when configured), authenticated: redis_link.h. */
static redisContext *connect_one(console *c) {
    duel_error err = {0};
    return redis_link_connect(c->cfg.link, c->host, c->cfg.port, c->cfg.timeout_ms, NULL, 0, &err);
}

static void disconnect(console *c) {
    if (c->rc) redisFree(c->rc);
    if (c->sub) redisFree(c->sub);
    c->rc = c->sub = NULL;
    pthread_mutex_lock(&c->mu);
    c->connected = false;
    pthread_mutex_unlock(&c->mu);
    c->next_connect = duel_time_seconds() + c->backoff_ms / 1000.0;
    c->backoff_ms = c->backoff_ms * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : c->backoff_ms * 2;
}

static bool try_connect(console *c) {
    c->rc = connect_one(c);
    c->sub = c->rc ? connect_one(c) : NULL;
    char channel[300];
    snprintf(channel, sizeof channel, "%snotify", c->prefix);
    redisReply *r = c->sub ? redisCommand(c->sub, "SUBSCRIBE %s", channel) : NULL;
    bool ok = r && r->type == REDIS_REPLY_ARRAY;
    if (r) freeReplyObject(r);
    if (!ok) {
        disconnect(c);
        return false;
    }
    c->backoff_ms = RECONNECT_FIRST_MS;
    pthread_mutex_lock(&c->mu);
    c->connected = true;
    pthread_mutex_unlock(&c->mu);
    /* everything afresh: the knobs and the last 24 h of stats (another gateway or a restart of
     * this one wrote them) */
    c->refresh_knobs = true;
    c->next_stats = 0;
    return true;
}

/* Reads duel:knobs and the audit log; publishes a changed knob set. false: Redis failed. */
static bool read_knobs(console *c) {
    duel_knob_values values;
    bool set[DUEL_KNOB_COUNT];
    knob_store_bad bad;
    duel_error err = {0};
    if (knob_store_read(c->rc, c->prefix, &c->cfg.defaults, &values, set, &bad, &err)) return false;
    json_t *audit = NULL;
    if (knob_store_audit(c->rc, c->prefix, CONSOLE_AUDIT_ENTRIES, &audit, &err)) return false;
    json_t *wrapped = json_pack("{s:o}", "entries", audit);
    char *text = wrapped ? json_dumps(wrapped, JSON_COMPACT) : NULL;
    json_decref(wrapped);
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < bad.count; i++) {
        bool known = false;
        for (int j = 0; j < c->bad.count; j++) known |= strcmp(c->bad.message[j], bad.message[i]) == 0;
        if (!known) fprintf(stderr, "duel serve: %sknobs: %s\n", c->prefix, bad.message[i]);
    }
    if (memcmp(&values, &c->knobs, sizeof values) != 0) {
        c->knobs = values;
        c->knobs_generation++;
    }
    memcpy(c->knob_set, set, sizeof set);
    c->bad = bad;
    if (text) {
        free(c->audit);
        c->audit = text;
        c->audit_len = strlen(text);
    }
    pthread_mutex_unlock(&c->mu);
    c->refresh_knobs = false;
    c->next_knobs = duel_time_seconds() + c->cfg.knobs_poll_ms / 1000.0;
    return true;
}

/* Reads the new stats entries and renders the windows. false: Redis failed. */
static bool read_stats(console *c) {
    int64_t now = duel_time_unix_ms();
    duel_error err = {0};
    if (stats_store_read(c->rc, c->prefix, now - DAY_MS, c->last_id, 0, c->view, NULL, NULL, &err))
        return false;
    c->next_stats = duel_time_seconds() + CONSOLE_STATS_READ_MS / 1000.0;
    for (int w = 0; w < STATS_VIEW_WINDOWS; w++) {
        json_t *o = stats_view_render(c->view, stats_view_windows_s[w], now);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text) continue;
        pthread_mutex_lock(&c->mu);
        free(c->rendered[w]);
        c->rendered[w] = text;
        c->rendered_len[w] = strlen(text);
        pthread_mutex_unlock(&c->mu);
    }
    return true;
}

/* Notes on duel:notify: a knobs note asks for a read now (others are the snapshot loader's). */
static bool read_notes(console *c) {
    if (redisBufferRead(c->sub) != REDIS_OK) return false;
    for (;;) {
        redisReply *r = NULL;
        if (redisGetReplyFromReader(c->sub, (void **)&r) != REDIS_OK) return false;
        if (!r) return true;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[2]->type == REDIS_REPLY_STRING) {
            json_t *note = json_loadb(r->element[2]->str, r->element[2]->len, 0, NULL);
            const char *kind = json_string_value(json_object_get(note, "kind"));
            if (kind && strcmp(kind, "knobs") == 0) c->refresh_knobs = true;
            json_decref(note);
        }
        freeReplyObject(r);
    }
}

/* Appends the queued entries; false when Redis failed (the entry stays queued). */
static bool append_entries(console *c) {
    for (;;) {
        pthread_mutex_lock(&c->mu);
        if (c->n_entries == 0) {
            pthread_mutex_unlock(&c->mu);
            return true;
        }
        queued_entry e = c->entries[0];
        pthread_mutex_unlock(&c->mu);
        duel_error err = {0};
        if (stats_store_append(c->rc, c->prefix, c->cfg.stats_max_entries, c->instance,
                               STATS_ROLE_SERVING, e.ts_ms, e.interval_ms, e.data, &err)) {
            /* an error reply (not a lost connection) would fail forever: drop that entry */
            if (c->rc->err) return false;
        }
        pthread_mutex_lock(&c->mu);
        free(c->entries[0].data);
        memmove(c->entries, c->entries + 1, (size_t)(c->n_entries - 1) * sizeof c->entries[0]);
        c->n_entries--;
        pthread_mutex_unlock(&c->mu);
    }
}

/* The controller's last check as its holder published it (rollout_runner.h); null when none. */
static json_t *read_analysis(console *c) {
    char key[300];
    snprintf(key, sizeof key, "%s%s", c->prefix, ROLLOUT_RUNNER_ANALYSIS_KEY);
    redisReply *r = redisCommand(c->rc, "GET %s", key);
    json_t *doc = r && r->type == REDIS_REPLY_STRING ? json_loadb(r->str, r->len, 0, NULL) : NULL;
    if (r) freeReplyObject(r);
    return doc ? doc : json_null();
}

/* A rollout action, a read of the rollout or of the arena ratings (rollout_store.h), answered
 * through cfg.done with its document; true when Redis failed under it. */
static bool run_rollout_job(console *c, change_job *j) {
    duel_error err = {0};
    json_t *doc = NULL, *audit = NULL;
    int rc = DUEL_OK;
    if (j->kind == JOB_ARENA) {
        /* incremental: only the votes since the last read are fetched (the fit runs on all) */
        rc = rollout_store_arena_after(c->rc, c->prefix, c->arena_id, 0, &c->arena, &err);
        if (!rc && !(doc = arena_ratings_json(&c->arena, ARENA_RATINGS_ROUNDS, ARENA_RATINGS_SEED, &err)))
            rc = err.code;
    } else {
        rollout_spec *spec = malloc(sizeof *spec);
        bool present = true;
        if (!spec) rc = duel_error_set(&err, DUEL_ENOMEM, "console: out of memory");
        else if (j->kind == JOB_ROLLOUT_READ) rc = rollout_store_read(c->rc, c->prefix, spec, &present, &err);
        else rc = rollout_store_change(c->rc, c->prefix, j->who, &j->rollout, c->cfg.rollout_max_arms,
                                       spec, &audit, &err);
        if (!rc) {
            doc = json_pack("{s:o, s:o}", "rollout", present ? rollout_spec_json(spec) : json_null(),
                            "analysis", read_analysis(c));
            if (doc && audit) json_object_set(doc, "audit", audit);
            if (!doc) rc = duel_error_set(&err, DUEL_ENOMEM, "console: out of memory");
        }
        free(spec);
    }
    bool lost = rc == DUEL_EIO && c->rc->err;
    if (!rc && j->kind == JOB_ROLLOUT) c->refresh_knobs = true; /* the audit list too */
    c->cfg.done(c->cfg.ctx, j->request_id, rc, rc ? err.message : "", doc);
    json_decref(doc);
    json_decref(audit);
    return lost;
}

/* Runs the queued knob changes (or refuses them while Redis is away); false: Redis failed. */
static bool run_changes(console *c) {
    for (;;) {
        pthread_mutex_lock(&c->mu);
        change_job *j = c->changes;
        if (j) {
            c->changes = j->next;
            if (!c->changes) c->changes_tail = NULL;
            c->n_changes--;
        }
        pthread_mutex_unlock(&c->mu);
        if (!j) return true;
        if (!c->rc) {
            c->cfg.done(c->cfg.ctx, j->request_id, DUEL_EIO,
                        "Redis is not reachable from this gateway; nothing changed", NULL);
            change_free(j);
            continue;
        }
        if (j->kind != JOB_KNOBS) {
            bool lost = run_rollout_job(c, j);
            change_free(j);
            if (lost) return false;
            continue;
        }
        duel_error err = {0};
        json_t *audit = NULL;
        int rc = knob_store_change(c->rc, c->prefix, j->who, &c->cfg.defaults,
                                   (const char *const *)j->names, (const char *const *)j->texts, j->n,
                                   NULL, &audit, &err);
        bool lost = rc == DUEL_EIO && c->rc->err;
        if (rc == 0 && !read_knobs(c)) lost = true; /* in effect here before the reply */
        c->cfg.done(c->cfg.ctx, j->request_id, rc, rc ? err.message : "", audit);
        json_decref(audit);
        change_free(j);
        if (lost) return false;
    }
}

static void *run(void *arg) {
    console *c = arg;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        bool stopping = c->stopping;
        pthread_mutex_unlock(&c->mu);
        double now = duel_time_seconds();
        if (!c->rc && now >= c->next_connect) try_connect(c);
        bool ok = true;
        if (c->rc) ok = append_entries(c);
        if (ok) ok = run_changes(c);
        if (stopping) break;
        if (ok && c->rc && (c->refresh_knobs || now >= c->next_knobs)) ok = read_knobs(c);
        if (ok && c->rc && now >= c->next_stats) ok = read_stats(c);
        if (ok && c->rc && c->cfg.rollout_controller_tick_ms > 0) {
            duel_error rerr = {0};
            if (rollout_runner_step(&c->runner, c->rc, duel_time_unix_ms(), &rerr) == DUEL_EIO)
                ok = false;
        }
        if (!ok) {
            fprintf(stderr, "duel serve: console: redis %s:%d: %s; retrying\n", c->host, c->cfg.port,
                    c->rc && c->rc->errstr[0] ? c->rc->errstr : "command failed");
            disconnect(c);
            continue;
        }
        struct pollfd p[2] = {{c->wake[0], POLLIN, 0}, {c->sub ? c->sub->fd : -1, POLLIN, 0}};
        int n = poll(p, c->sub ? 2 : 1, WAIT_MS);
        if (n > 0 && (p[0].revents & POLLIN)) {
            char buf[64];
            while (read(c->wake[0], buf, sizeof buf) > 0) {
            }
        }
        if (n > 0 && c->sub && (p[1].revents & (POLLIN | POLLHUP | POLLERR)) && !read_notes(c)) disconnect(c);
    }
    return NULL;
}

/* ---- the API ------------------------------------------------------------------------------ */

int console_create(const console_config *cfg, console **out, duel_error *err) {
    *out = NULL;
    console *c = calloc(1, sizeof *c);
    if (!c) return duel_error_set(err, DUEL_ENOMEM, "console: out of memory");
    c->cfg = *cfg;
    c->wake[0] = c->wake[1] = -1;
    pthread_mutex_init(&c->mu, NULL);
    c->host = strdup(cfg->host ? cfg->host : "127.0.0.1");
    c->prefix = strdup(cfg->prefix ? cfg->prefix : "duel:");
    c->instance = strdup(cfg->instance ? cfg->instance : "serve@unknown");
    c->view = stats_view_create();
    rollout_runner_init(&c->runner, c->prefix ? c->prefix : "duel:", c->instance ? c->instance : "",
                        cfg->rollout_controller_tick_ms, cfg->rollout_max_arms);
    c->knobs = cfg->defaults;
    c->knobs_generation = 1; /* callers start from 0: the first call hands them the defaults */
    c->backoff_ms = RECONNECT_FIRST_MS;
    if (c->cfg.timeout_ms <= 0) c->cfg.timeout_ms = 1000;
    if (c->cfg.knobs_poll_ms <= 0) c->cfg.knobs_poll_ms = 2000;
    if (!c->host || !c->prefix || !c->instance || !c->view || pipe2(c->wake, O_CLOEXEC | O_NONBLOCK)) {
        console_destroy(c);
        return duel_error_set(err, DUEL_ENOMEM, "console: out of memory or pipes");
    }
    if (pthread_create(&c->thread, NULL, run, c)) {
        console_destroy(c);
        return duel_error_set(err, DUEL_ENOMEM, "console: cannot start its thread");
    }
    c->started = true;
    *out = c;
    return DUEL_OK;
}

void console_destroy(console *c) {
    if (!c) return;
    if (c->started) {
        pthread_mutex_lock(&c->mu);
        c->stopping = true;
        pthread_mutex_unlock(&c->mu);
        wake(c);
        pthread_join(c->thread, NULL);
    }
    if (c->rc) redisFree(c->rc);
    if (c->sub) redisFree(c->sub);
    for (int i = 0; i < c->n_entries; i++) free(c->entries[i].data);
    while (c->changes) {
        change_job *j = c->changes;
        c->changes = j->next;
        change_free(j);
    }
    for (int w = 0; w < STATS_VIEW_WINDOWS; w++) free(c->rendered[w]);
    free(c->audit);
    stats_view_free(c->view);
    arena_tally_free(&c->arena);
    if (c->wake[0] >= 0) close(c->wake[0]);
    if (c->wake[1] >= 0) close(c->wake[1]);
    free(c->host);
    free(c->prefix);
    free(c->instance);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void console_submit_entry(console *c, char *data, int64_t ts_ms, int64_t interval_ms) {
    if (!data) return;
    pthread_mutex_lock(&c->mu);
    if (c->n_entries == CONSOLE_MAX_QUEUED_ENTRIES) { /* Redis away for long: the oldest go */
        free(c->entries[0].data);
        memmove(c->entries, c->entries + 1, (CONSOLE_MAX_QUEUED_ENTRIES - 1) * sizeof c->entries[0]);
        c->n_entries--;
    }
    c->entries[c->n_entries++] = (queued_entry){data, ts_ms, interval_ms};
    pthread_mutex_unlock(&c->mu);
    wake(c);
}

bool console_knobs_changed(console *c, uint64_t *seen, duel_knob_values *out) {
    pthread_mutex_lock(&c->mu);
    bool changed = c->knobs_generation != *seen;
    if (changed) {
        *out = c->knobs;
        *seen = c->knobs_generation;
    }
    pthread_mutex_unlock(&c->mu);
    return changed;
}

json_t *console_knobs_json(console *c) {
    duel_knob_values values;
    bool set[DUEL_KNOB_COUNT];
    knob_store_bad bad;
    pthread_mutex_lock(&c->mu);
    values = c->knobs;
    memcpy(set, c->knob_set, sizeof set);
    bad = c->bad;
    bool connected = c->connected;
    pthread_mutex_unlock(&c->mu);
    json_t *knobs = duel_knobs_describe(&c->cfg.defaults), *ignored = json_array();
    size_t i;
    json_t *k;
    json_array_foreach(knobs, i, k) {
        json_object_set_new(k, "value", json_string(values.v[i].text));
        json_object_set_new(k, "set", json_boolean(set[i]));
    }
    for (int b = 0; ignored && b < bad.count; b++) json_array_append_new(ignored, json_string(bad.message[b]));
    if (!knobs || !ignored) {
        json_decref(knobs);
        json_decref(ignored);
        return NULL;
    }
    return json_pack("{s:o, s:o, s:b}", "knobs", knobs, "ignored", ignored, "connected", connected);
}

static char *copy_text(const char *s, size_t n, size_t *len) {
    char *out = s ? malloc(n + 1) : NULL;
    if (out) memcpy(out, s, n + 1);
    if (len) *len = out ? n : 0;
    return out;
}

char *console_stats_text(console *c, int window_s, size_t *len) {
    int w = -1;
    for (int i = 0; i < STATS_VIEW_WINDOWS; i++)
        if (stats_view_windows_s[i] == window_s) w = i;
    if (w < 0) return NULL;
    pthread_mutex_lock(&c->mu);
    char *out = copy_text(c->rendered[w], c->rendered_len[w], len);
    pthread_mutex_unlock(&c->mu);
    return out;
}

char *console_audit_text(console *c, size_t *len) {
    pthread_mutex_lock(&c->mu);
    char *out = copy_text(c->audit ? c->audit : "{\"entries\":[]}", c->audit ? c->audit_len : 14, len);
    pthread_mutex_unlock(&c->mu);
    return out;
}

/* Queues job j for the thread (ownership passes; freed on refusal). */
static int enqueue(console *c, change_job *j, duel_error *err) {
    pthread_mutex_lock(&c->mu);
    if (c->n_changes >= MAX_CHANGES) {
        pthread_mutex_unlock(&c->mu);
        change_free(j);
        return duel_error_set(err, DUEL_ELIMIT, "too many admin requests waiting; try again");
    }
    if (c->changes_tail) c->changes_tail->next = j;
    else c->changes = j;
    c->changes_tail = j;
    c->n_changes++;
    pthread_mutex_unlock(&c->mu);
    wake(c);
    return DUEL_OK;
}

int console_change_knobs(console *c, uint64_t request_id, const char *who,
                         const char *const *names, const char *const *texts, size_t n,
                         duel_error *err) {
    if (n == 0 || n > DUEL_KNOB_COUNT * 2)
        return duel_error_set(err, DUEL_EINVAL, "a change names 1..%d knobs", DUEL_KNOB_COUNT * 2);
    change_job *j = calloc(1, sizeof *j);
    if (!j) return duel_error_set(err, DUEL_ENOMEM, "console: out of memory");
    j->request_id = request_id;
    snprintf(j->who, sizeof j->who, "%s", who);
    for (size_t i = 0; i < n; i++) {
        j->names[i] = strdup(names[i]);
        j->texts[i] = texts[i] ? strdup(texts[i]) : NULL;
        j->n = i + 1;
        if (!j->names[i] || (texts[i] && !j->texts[i])) {
            change_free(j);
            return duel_error_set(err, DUEL_ENOMEM, "console: out of memory");
        }
    }
    return enqueue(c, j, err);
}

int console_rollout(console *c, uint64_t request_id, const char *who,
                    const rollout_change *change, bool arena, duel_error *err) {
    change_job *j = calloc(1, sizeof *j);
    if (!j) return duel_error_set(err, DUEL_ENOMEM, "console: out of memory");
    j->kind = arena ? JOB_ARENA : change ? JOB_ROLLOUT : JOB_ROLLOUT_READ;
    j->request_id = request_id;
    snprintf(j->who, sizeof j->who, "%s", who ? who : "");
    if (change) {
        j->rollout = *change;
        j->rollout.spec_text = change->spec_text ? strdup(change->spec_text) : NULL;
        j->rollout.arm = change->arm ? strdup(change->arm) : NULL;
        if ((change->spec_text && !j->rollout.spec_text) || (change->arm && !j->rollout.arm)) {
            change_free(j);
            return duel_error_set(err, DUEL_ENOMEM, "console: out of memory");
        }
    }
    return enqueue(c, j, err);
}

void console_serving_params(const duel_knob_values *v, duel_backend_params *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->strategy, sizeof out->strategy, "%s", v->v[duel_knob_index("strategy")].text);
    out->num_candidates = (int)v->v[duel_knob_index("M")].number;
    out->temperature = (float)v->v[duel_knob_index("temperature")].number;
    out->top_p = (float)v->v[duel_knob_index("top_p")].number;
    out->top_k = (int)v->v[duel_knob_index("top_k")].number;
    out->max_new_tokens = (int)v->v[duel_knob_index("max_new_tokens")].number;
    out->arena_fraction = v->v[duel_knob_index("arena_fraction")].number;
}

bool console_connected(console *c) {
    pthread_mutex_lock(&c->mu);
    bool v = c->connected;
    pthread_mutex_unlock(&c->mu);
    return v;
}
