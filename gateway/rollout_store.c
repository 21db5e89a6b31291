/* rollout_store.c: duel:rollout's actions and the arena votes of duel:prefs (see
 * rollout_store.h). Invariant: every text this file writes to duel:rollout passed
 * rollout_spec_check with the engine's arm limit and the registered snapshots, in the same MULTI
 * as its audit entry. */
#include "rollout_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knob_store.h"
#include "snapshot.h"
#include "vote_entry.h"

#define KEY_MAX 256
#define CHANGE_ATTEMPTS 16 /* WATCH conflicts tolerated before giving up */
#define ARENA_PAGE "500"   /* duel:prefs entries per XRANGE */

static const char *const action_names[] = {"set",    "weight", "pause",    "resume",
                                           "promote", "abort", "step", "rollback", "complete"};
#define OPERATOR_ACTIONS 6 /* the first ones; the rest are the controller's */

const char *rollout_action_name(rollout_action action) {
    return (unsigned)action < sizeof action_names / sizeof *action_names ? action_names[action] : "?";
}

int rollout_action_parse(const char *name, rollout_action *out) {
    for (size_t i = 0; i < OPERATOR_ACTIONS; i++)
        if (strcmp(action_names[i], name) == 0) {
            *out = (rollout_action)i;
            return DUEL_OK;
        }
    return DUEL_EINVAL;
}

/* A reply that is not an error, or DUEL_EIO naming the command. */
static redisReply *command(redisContext *rc, duel_error *err, int argc, const char **argv) {
    redisReply *r = redisCommandArgv(rc, argc, argv, NULL);
    if (!r) {
        duel_error_set(err, DUEL_EIO, "redis: %s failed: %s", argv[0],
                       rc->errstr[0] ? rc->errstr : "no reply");
    } else if (r->type == REDIS_REPLY_ERROR) {
        duel_error_set(err, DUEL_EIO, "redis: %s: %s", argv[0], r->str);
        freeReplyObject(r);
        r = NULL;
    }
    return r;
}

int rollout_store_read(redisContext *rc, const char *prefix, rollout_spec *out, bool *present,
                       duel_error *err) {
    char key[KEY_MAX];
    snprintf(key, sizeof key, "%srollout", prefix);
    const char *get[] = {"GET", key};
    redisReply *r = command(rc, err, 2, get);
    if (!r) return err->code;
    *present = r->type == REDIS_REPLY_STRING;
    int rc0 = *present ? rollout_spec_parse(r->str, r->len, NULL, out, err) : DUEL_OK;
    freeReplyObject(r);
    return rc0;
}

/* The registered snapshot versions (malloc'd; *n may be 0). */
static int registered(redisContext *rc, const char *prefix, int64_t **out, size_t *n,
                      duel_error *err) {
    char key[KEY_MAX];
    *out = NULL;
    *n = 0;
    int rc0 = snapshot_key_registry(prefix, key, sizeof key, err);
    if (rc0) return rc0;
    const char *range[] = {"ZRANGE", key, "0", "-1"};
    redisReply *r = command(rc, err, 4, range);
    if (!r) return err->code;
    *out = calloc(r->elements ? r->elements : 1, sizeof **out);
    if (!*out) rc0 = duel_error_set(err, DUEL_ENOMEM, "rollout: out of memory");
    for (size_t i = 0; !rc0 && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
        if (r->element[i]->type == REDIS_REPLY_STRING) (*out)[(*n)++] = strtoll(r->element[i]->str, NULL, 10);
    freeReplyObject(r);
    return rc0;
}

/* The action on current (present: there is one) into next. */
static int apply(const rollout_change *c, bool present, const rollout_spec *current,
                 const rollout_limits *limits, rollout_spec *next, duel_error *err) {
    if (c->action == ROLLOUT_ACTION_SET || c->action >= ROLLOUT_ACTION_STEP) {
        if (!c->spec_text) return duel_error_set(err, DUEL_EINVAL, "rollout set: no spec");
        if (c->action >= ROLLOUT_ACTION_STEP && (!present || current->revision != c->expect_revision))
            return duel_error_set(err, DUEL_EINVAL,
                                  "rollout %s: duel:rollout changed meanwhile (revision %lld, "
                                  "decided on %lld)", rollout_action_name(c->action),
                                  present ? current->revision : 0, c->expect_revision);
        return rollout_spec_parse(c->spec_text, strlen(c->spec_text), limits, next, err);
    }
    if (!present)
        return duel_error_set(err, DUEL_EINVAL,
                              "rollout %s: there is no rollout (duel:rollout is empty); set one first",
                              rollout_action_name(c->action));
    *next = *current;
    switch (c->action) {
    case ROLLOUT_ACTION_WEIGHT: return rollout_spec_set_weight(next, c->arm, c->weight, err);
    case ROLLOUT_ACTION_PAUSE: return rollout_spec_pause(next, true, err);
    case ROLLOUT_ACTION_RESUME: return rollout_spec_pause(next, false, err);
    case ROLLOUT_ACTION_PROMOTE: return rollout_spec_promote(next, c->arm, err);
    case ROLLOUT_ACTION_ABORT: rollout_spec_abort(next, ROLLOUT_ABORTED); return DUEL_OK;
    default: return duel_error_set(err, DUEL_EINVAL, "rollout: unknown action");
    }
}

static int change_once(redisContext *rc, const char *prefix, const char *who,
                       const rollout_change *c, const rollout_limits *limits, rollout_spec *next,
                       json_t **audit, bool *retry, duel_error *err) {
    char key[KEY_MAX], notify[KEY_MAX];
    snprintf(key, sizeof key, "%srollout", prefix);
    snprintf(notify, sizeof notify, "%snotify", prefix);
    *retry = false;
    const char *watch[] = {"WATCH", key}, *get[] = {"GET", key}, *unwatch[] = {"UNWATCH"};
    redisReply *r = command(rc, err, 2, watch);
    if (!r) return err->code;
    freeReplyObject(r);
    if (!(r = command(rc, err, 2, get))) return err->code;
    char *before_text = r->type == REDIS_REPLY_STRING ? strndup(r->str, r->len) : strdup("null");
    freeReplyObject(r);
    rollout_spec *current = calloc(1, sizeof *current);
    bool present = strcmp(before_text ? before_text : "", "null") != 0;
    int rc0 = !before_text || !current ? duel_error_set(err, DUEL_ENOMEM, "rollout: out of memory")
              : present ? rollout_spec_parse(before_text, strlen(before_text), NULL, current, err)
                        : DUEL_OK;
    if (rc0 && present && c->action == ROLLOUT_ACTION_SET) { /* a bad stored spec can be replaced */
        present = false;
        rc0 = DUEL_OK;
    }
    if (!rc0) rc0 = apply(c, present, current, limits, next, err);
    if (!rc0) {
        next->revision = present ? current->revision + 1 : 1;
        rc0 = rollout_spec_check(next, limits, err);
    }
    free(current);
    char *after_text = rc0 ? NULL : rollout_spec_dump(next);
    if (!rc0 && !after_text) rc0 = duel_error_set(err, DUEL_ENOMEM, "rollout: out of memory");
    if (rc0) {
        if ((r = command(rc, NULL, 1, unwatch))) freeReplyObject(r);
        free(before_text);
        return rc0;
    }
    char action[32];
    snprintf(action, sizeof action, "rollout.%s", rollout_action_name(c->action));
    const char *multi[] = {"MULTI"}, *set[] = {"SET", key, after_text}, *exec[] = {"EXEC"};
    redisAppendCommandArgv(rc, 1, multi, NULL);
    redisAppendCommandArgv(rc, 3, set, NULL);
    knob_store_append_audit(rc, prefix, who, action, before_text, after_text);
    redisAppendCommandArgv(rc, 1, exec, NULL);
    free(before_text);
    free(after_text);
    redisReply *exec_reply = NULL;
    for (int i = 0; i < 4; i++) {
        redisReply *x = NULL;
        if (redisGetReply(rc, (void **)&x) != REDIS_OK || !x) {
            if (exec_reply) freeReplyObject(exec_reply);
            return duel_error_set(err, DUEL_EIO, "redis: rollout change failed: %s", rc->errstr);
        }
        if (i == 3) exec_reply = x;
        else freeReplyObject(x); /* QUEUED, or an error that EXEC reports again */
    }
    if (exec_reply->type == REDIS_REPLY_NIL) { /* duel:rollout changed under WATCH */
        freeReplyObject(exec_reply);
        *retry = true;
        return DUEL_OK;
    }
    if (exec_reply->type != REDIS_REPLY_ARRAY || exec_reply->elements != 2 ||
        exec_reply->element[1]->type != REDIS_REPLY_STRING) {
        freeReplyObject(exec_reply);
        return duel_error_set(err, DUEL_EIO, "redis: rollout change was not executed");
    }
    char id[64];
    snprintf(id, sizeof id, "%s", exec_reply->element[1]->str);
    freeReplyObject(exec_reply);
    /* every gateway reads duel:rollout again at once (they also poll: pub/sub may drop); the
     * controller's notes say what it did and why */
    json_t *note = json_pack("{s:s, s:I}", "kind", "rollout", "revision", (json_int_t)next->revision);
    if (note && c->action >= ROLLOUT_ACTION_STEP) {
        json_object_set_new(note, "action", json_string(rollout_action_name(c->action)));
        json_object_set_new(note, "status", json_string(rollout_status_name(next->status)));
        if (c->reason) json_object_set_new(note, "reason", json_string(c->reason));
    }
    char *note_text = note ? json_dumps(note, JSON_COMPACT) : NULL;
    json_decref(note);
    const char *publish[] = {"PUBLISH", notify, note_text};
    if (note_text && (r = command(rc, NULL, 3, publish))) freeReplyObject(r);
    free(note_text);
    if (audit) *audit = knob_store_audit_entry(rc, prefix, id);
    return DUEL_OK;
}

int rollout_store_change(redisContext *rc, const char *prefix, const char *who,
                         const rollout_change *change, int max_arms, rollout_spec *after,
                         json_t **audit, duel_error *err) {
    if (audit) *audit = NULL;
    int64_t *known = NULL;
    size_t n_known = 0;
    int rc0 = registered(rc, prefix, &known, &n_known, err);
    rollout_limits limits = {max_arms, known, n_known};
    rollout_spec *next = malloc(sizeof *next);
    if (!rc0 && !next) rc0 = duel_error_set(err, DUEL_ENOMEM, "rollout: out of memory");
    bool retry = true;
    for (int attempt = 0; !rc0 && retry && attempt < CHANGE_ATTEMPTS; attempt++) {
        if (attempt > 0) knob_store_conflict_backoff(attempt - 1);
        rc0 = change_once(rc, prefix, who, change, &limits, next, audit, &retry, err);
    }
    if (!rc0 && retry)
        rc0 = duel_error_set(err, DUEL_EIO,
                             "rollout: %d concurrent changes in a row; nothing changed, try again",
                             CHANGE_ATTEMPTS);
    if (!rc0 && after) *after = *next;
    free(next);
    free(known);
    return rc0;
}

int rollout_store_arena(redisContext *rc, const char *prefix, arena_tally *t, duel_error *err) {
    char last_id[ROLLOUT_STORE_ID_MAX] = "";
    return rollout_store_arena_after(rc, prefix, last_id, 0, t, err);
}

int rollout_store_arena_after(redisContext *rc, const char *prefix,
                              char last_id[ROLLOUT_STORE_ID_MAX], int64_t since_ms, arena_tally *t,
                              duel_error *err) {
    char key[KEY_MAX], start[ROLLOUT_STORE_ID_MAX + 2];
    snprintf(key, sizeof key, "%sprefs", prefix);
    if (last_id[0]) snprintf(start, sizeof start, "(%s", last_id);
    else snprintf(start, sizeof start, "%lld", (long long)(since_ms > 0 ? since_ms : 0));
    for (;;) {
        const char *range[] = {"XRANGE", key, start, "+", "COUNT", ARENA_PAGE};
        redisReply *r = command(rc, err, 6, range);
        if (!r) return err->code;
        size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
        for (size_t i = 0; i < n; i++) {
            const redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
                e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY)
                continue;
            /* the next page starts after the last id: "(" makes XRANGE exclusive (Redis 6.2) */
            if (e->element[0]->len >= ROLLOUT_STORE_ID_MAX) continue;
            snprintf(last_id, ROLLOUT_STORE_ID_MAX, "%s", e->element[0]->str);
            snprintf(start, sizeof start, "(%s", last_id);
            const redisReply *f = e->element[1];
            vote_entry_field fields[VOTE_ENTRY_MAX_FIELDS];
            int nf = 0;
            for (size_t k = 0; k + 1 < f->elements && nf < VOTE_ENTRY_MAX_FIELDS; k += 2)
                fields[nf++] = (vote_entry_field){f->element[k]->str, f->element[k]->len,
                                                  f->element[k + 1]->str, f->element[k + 1]->len};
            arena_tally_add_vote(t, fields, nf);
        }
        freeReplyObject(r);
        if (n < (size_t)atoi(ARENA_PAGE)) return DUEL_OK;
    }
}
