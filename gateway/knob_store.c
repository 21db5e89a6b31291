/* knob_store.c: duel:knobs and duel:audit in Redis (see knob_store.h). Invariant: every value
 * this file writes to duel:knobs passed the knob table, as part of a set that passed its
 * cross-knob rules, in the same MULTI as its audit entry. */
#include "knob_store.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "timer.h"

#define KEY_MAX 256
#define CHANGE_ATTEMPTS 16   /* WATCH conflicts tolerated before giving up */
#define AUDIT_MAX_LEN "100000" /* entries kept in duel:audit (MAXLEN ~): years of operator actions */

static void key_of(char *out, const char *prefix, const char *name) {
    snprintf(out, KEY_MAX, "%s%s", prefix, name);
}

/* A reply or DUEL_EIO naming the command; *out is a reply that is not an error. */
static int run(redisContext *rc, redisReply **out, duel_error *err, int argc, const char **argv,
               const size_t *lens) {
    *out = redisCommandArgv(rc, argc, argv, lens);
    if (!*out)
        return duel_error_set(err, DUEL_EIO, "redis: %s failed: %s", argv[0],
                              rc->errstr[0] ? rc->errstr : "no reply");
    if ((*out)->type == REDIS_REPLY_ERROR) {
        int code = duel_error_set(err, DUEL_EIO, "redis: %s: %s", argv[0], (*out)->str);
        freeReplyObject(*out);
        *out = NULL;
        return code;
    }
    return DUEL_OK;
}

static void note_bad(knob_store_bad *bad, const char *message, const char *suffix) {
    if (!bad || bad->count >= KNOB_STORE_MAX_BAD) return;
    snprintf(bad->message[bad->count++], sizeof bad->message[0], "%.100s%.55s", message, suffix);
}

/* The values of a HGETALL reply over defaults (see knob_store_read). */
static void values_from_hash(const redisReply *r, const duel_knob_values *defaults,
                             duel_knob_values *out, bool set[DUEL_KNOB_COUNT], knob_store_bad *bad) {
    *out = *defaults;
    bool have[DUEL_KNOB_COUNT] = {0};
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            strlen(k->str) != k->len || strlen(v->str) != v->len) {
            note_bad(bad, "a field that is not text", " (ignored)");
            continue;
        }
        duel_knob_value value;
        duel_error e = {0};
        int index = -1;
        if (duel_knob_parse(k->str, v->str, &value, &index, &e)) {
            note_bad(bad, e.message, " (ignored)");
            continue;
        }
        out->v[index] = value;
        have[index] = true;
    }
    duel_error e = {0};
    if (duel_knobs_check(out, &e)) {
        /* A hand-written hash breaks a cross-knob rule: the knobs it names revert. */
        note_bad(bad, e.message, " (strategy and M revert)");
        int s = duel_knob_index("strategy"), m = duel_knob_index("M");
        out->v[s] = defaults->v[s];
        out->v[m] = defaults->v[m];
        have[s] = have[m] = false;
    }
    if (set) memcpy(set, have, sizeof have);
}

int knob_store_read(redisContext *rc, const char *prefix, const duel_knob_values *defaults,
                    duel_knob_values *out, bool set[DUEL_KNOB_COUNT], knob_store_bad *bad,
                    duel_error *err) {
    if (bad) bad->count = 0;
    char key[KEY_MAX];
    key_of(key, prefix, "knobs");
    const char *argv[] = {"HGETALL", key};
    redisReply *r;
    int rc0 = run(rc, &r, err, 2, argv, NULL);
    if (rc0) return rc0;
    values_from_hash(r, defaults, out, set, bad);
    freeReplyObject(r);
    return DUEL_OK;
}

/* One audit entry's fields (the XADD/XRANGE field list) as the JSON object of knob_store.h. */
static json_t *audit_json(const char *id, const redisReply *fields) {
    json_t *o = json_pack("{s:s}", "id", id);
    for (size_t i = 0; o && fields && i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
        json_t *value = NULL;
        if (strcmp(k->str, "before") == 0 || strcmp(k->str, "after") == 0)
            value = json_loadb(v->str, v->len, 0, NULL);
        else if (strcmp(k->str, "ts_ms") == 0)
            value = json_integer(atoll(v->str));
        if (!value) value = json_stringn(v->str, v->len);
        if (!value) value = json_string("(not UTF-8)");
        json_object_set_new(o, k->str, value);
    }
    return o;
}

void knob_store_append_audit(redisContext *rc, const char *prefix, const char *who,
                             const char *action, const char *before, const char *after) {
    char audit_key[KEY_MAX], ts[32];
    key_of(audit_key, prefix, "audit");
    snprintf(ts, sizeof ts, "%lld", (long long)duel_time_unix_ms());
    const char *xadd[] = {"XADD", audit_key, "MAXLEN", "~", AUDIT_MAX_LEN, "*", "who", who,
                          "ts_ms", ts, "action", action, "before", before, "after", after};
    redisAppendCommandArgv(rc, (int)(sizeof xadd / sizeof *xadd), xadd, NULL);
}

json_t *knob_store_audit_entry(redisContext *rc, const char *prefix, const char *id) {
    char audit_key[KEY_MAX];
    key_of(audit_key, prefix, "audit");
    const char *range[] = {"XRANGE", audit_key, id, id};
    redisReply *x;
    json_t *out = NULL;
    if (run(rc, &x, NULL, 4, range, NULL) == 0) {
        if (x->type == REDIS_REPLY_ARRAY && x->elements == 1 &&
            x->element[0]->type == REDIS_REPLY_ARRAY && x->element[0]->elements == 2)
            out = audit_json(id, x->element[0]->element[1]);
        freeReplyObject(x);
    }
    return out;
}

void knob_store_conflict_backoff(int attempt) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t max_us = 1000ull << (attempt < 6 ? attempt : 6);
    /* the clock's nanoseconds, mixed: jitter without a shared generator */
    uint64_t x = (uint64_t)now.tv_nsec * 0x9E3779B97F4A7C15ull;
    uint64_t us = (x >> 32) % max_us;
    struct timespec pause = {0, (long)(us * 1000)};
    nanosleep(&pause, NULL);
}

int knob_store_change(redisContext *rc, const char *prefix, const char *who,
                      const duel_knob_values *defaults, const char *const *names,
                      const char *const *texts, size_t n, duel_knob_values *after,
                      json_t **audit, duel_error *err) {
    if (audit) *audit = NULL;
    if (n == 0) return duel_error_set(err, DUEL_EINVAL, "no knob to change");
    char key[KEY_MAX], notify[KEY_MAX];
    key_of(key, prefix, "knobs");
    key_of(notify, prefix, "notify");
    for (int attempt = 0; attempt < CHANGE_ATTEMPTS; attempt++) {
        redisReply *r;
        const char *watch[] = {"WATCH", key};
        int rc0 = run(rc, &r, err, 2, watch, NULL);
        if (rc0) return rc0;
        freeReplyObject(r);
        const char *hgetall[] = {"HGETALL", key};
        if ((rc0 = run(rc, &r, err, 2, hgetall, NULL))) return rc0;
        duel_knob_values current, next;
        values_from_hash(r, defaults, &current, NULL, NULL);
        freeReplyObject(r);
        next = current;
        if ((rc0 = duel_knobs_apply(&next, defaults, names, texts, n, err))) {
            const char *unwatch[] = {"UNWATCH"};
            if (run(rc, &r, NULL, 1, unwatch, NULL) == 0) freeReplyObject(r);
            return rc0;
        }
        json_t *before = json_object(), *now = json_object();
        for (size_t i = 0; before && now && i < n; i++) {
            int k = duel_knob_index(names[i]);
            json_object_set_new(before, names[i], json_string(current.v[k].text));
            json_object_set_new(now, names[i], texts[i] ? json_string(next.v[k].text) : json_null());
        }
        char *before_text = before ? json_dumps(before, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        char *after_text = now ? json_dumps(now, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        json_decref(before);
        json_decref(now);
        if (!before_text || !after_text) {
            free(before_text);
            free(after_text);
            return duel_error_set(err, DUEL_ENOMEM, "knobs: out of memory");
        }
        /* MULTI, one HSET/HDEL per knob, the audit entry, EXEC: pipelined. */
        const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
        redisAppendCommandArgv(rc, 1, multi, NULL);
        for (size_t i = 0; i < n; i++) {
            int k = duel_knob_index(names[i]);
            const char *hset[] = {"HSET", key, names[i], next.v[k].text};
            const char *hdel[] = {"HDEL", key, names[i]};
            if (texts[i]) redisAppendCommandArgv(rc, 4, hset, NULL);
            else redisAppendCommandArgv(rc, 3, hdel, NULL);
        }
        knob_store_append_audit(rc, prefix, who, "knobs", before_text, after_text);
        redisAppendCommandArgv(rc, 1, exec, NULL);
        int rc1 = DUEL_OK;
        redisReply *exec_reply = NULL;
        for (size_t i = 0; i < n + 3; i++) {
            redisReply *x = NULL;
            if (redisGetReply(rc, (void **)&x) != REDIS_OK || !x) {
                rc1 = duel_error_set(err, DUEL_EIO, "redis: knob change failed: %s", rc->errstr);
                break;
            }
            if (i == n + 2) exec_reply = x;
            else {
                if (x->type == REDIS_REPLY_ERROR && !rc1)
                    rc1 = duel_error_set(err, DUEL_EIO, "redis: knob change: %s", x->str);
                freeReplyObject(x);
            }
        }
        free(before_text);
        free(after_text);
        if (rc1) {
            if (exec_reply) freeReplyObject(exec_reply);
            return rc1;
        }
        if (exec_reply->type == REDIS_REPLY_NIL) { /* the hash changed under WATCH: again */
            freeReplyObject(exec_reply);
            knob_store_conflict_backoff(attempt);
            continue;
        }
        if (exec_reply->type != REDIS_REPLY_ARRAY || exec_reply->elements != n + 1 ||
            exec_reply->element[n]->type != REDIS_REPLY_STRING) {
            freeReplyObject(exec_reply);
            return duel_error_set(err, DUEL_EIO, "redis: knob change was not executed");
        }
        char id[64];
        snprintf(id, sizeof id, "%s", exec_reply->element[n]->str);
        freeReplyObject(exec_reply);
        if (after) *after = next;
        /* Every server reads the hash again at once (it also polls: pub/sub may drop). */
        const char *publish[] = {"PUBLISH", notify, "{\"kind\":\"knobs\"}"};
        redisReply *p;
        if (run(rc, &p, NULL, 3, publish, NULL) == 0) freeReplyObject(p);
        if (audit) *audit = knob_store_audit_entry(rc, prefix, id);
        return DUEL_OK;
    }
    return duel_error_set(err, DUEL_EIO,
                          "knobs: %d concurrent changes in a row; nothing changed, try again",
                          CHANGE_ATTEMPTS);
}

int knob_store_audit(redisContext *rc, const char *prefix, int count, json_t **out,
                     duel_error *err) {
    *out = NULL;
    char key[KEY_MAX], n[32];
    key_of(key, prefix, "audit");
    snprintf(n, sizeof n, "%d", count > 0 ? count : 1);
    const char *argv[] = {"XREVRANGE", key, "+", "-", "COUNT", n};
    redisReply *r;
    int rc0 = run(rc, &r, err, 6, argv, NULL);
    if (rc0) return rc0;
    json_t *arr = json_array();
    for (size_t i = 0; arr && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING)
            continue;
        json_t *o = audit_json(e->element[0]->str,
                               e->element[1]->type == REDIS_REPLY_ARRAY ? e->element[1] : NULL);
        if (o) json_array_append_new(arr, o);
    }
    freeReplyObject(r);
    if (!arr) return duel_error_set(err, DUEL_ENOMEM, "audit: out of memory");
    *out = arr;
    return DUEL_OK;
}
