/* rollout_runner.c: the controller's lock, window reads and writes (see rollout_runner.h). The
 * decisions are rollout_analysis.c's; this file only feeds them and writes what they decide.
 * Invariant: a tick acts only while this process holds the lock, and writes only through
 * rollout_store_change with expect_revision = the revision it read. */
#include "rollout_runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena_ratings.h"
#include "rollout_store.h"
#include "stats_store.h"

void rollout_runner_init(rollout_runner *r, const char *prefix, const char *instance, int tick_ms,
                         int max_arms) {
    memset(r, 0, sizeof *r);
    snprintf(r->prefix, sizeof r->prefix, "%s", prefix);
    snprintf(r->instance, sizeof r->instance, "%s", instance);
    r->tick_ms = tick_ms > 0 ? tick_ms : ROLLOUT_RUNNER_TICK_MS;
    r->max_arms = max_arms;
}

/* Takes or renews the lock; *held says whether this process holds it now. */
static int hold_lock(rollout_runner *r, redisContext *rc, duel_error *err) {
    char key[192], ttl[32];
    snprintf(key, sizeof key, "%srollout:controller", r->prefix);
    snprintf(ttl, sizeof ttl, "%d", ROLLOUT_RUNNER_LOCK_MS);
    /* renew only our own lock: GET and PEXPIRE in one script, so a lock that lapsed and was
     * taken by another gateway in between is not extended */
    static const char renew[] =
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], "
        "ARGV[2]) end if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 "
        "end return 0";
    const char *argv[] = {"EVAL", renew, "1", key, r->instance, ttl};
    redisReply *x = redisCommandArgv(rc, 6, argv, NULL);
    if (!x) return duel_error_set(err, DUEL_EIO, "redis: rollout lock: %s", rc->errstr);
    bool ok = x->type == REDIS_REPLY_INTEGER;
    bool held = ok && x->integer == 1;
    char message[200];
    if (!ok) snprintf(message, sizeof message, "%.150s", x->type == REDIS_REPLY_ERROR ? x->str : "unexpected reply");
    freeReplyObject(x);
    if (!ok) return duel_error_set(err, DUEL_EIO, "redis: rollout lock: %s", message);
    if (held && !r->leader) fprintf(stderr, "duel serve: %s runs the rollout controller\n", r->instance);
    if (!held) r->ctl = (rollout_controller){0}; /* a later leadership starts afresh */
    r->leader = held;
    return DUEL_OK;
}

typedef struct window_feed {
    rollout_windows *w;
} window_feed;

static void add_entry(void *ctx, const stats_entry *e) {
    rollout_windows_add_entry(((window_feed *)ctx)->w, e);
}

int rollout_runner_window(redisContext *rc, const char *prefix, const rollout_spec *spec,
                          int64_t now_ms, rollout_windows *w, duel_error *err) {
    rollout_windows_init(w, spec);
    int64_t since = now_ms - spec->analysis.window_s * 1000;
    char stats_id[STATS_STORE_ID_MAX] = "";
    window_feed feed = {w};
    int rc0 = stats_store_each(rc, prefix, since, stats_id, 0, add_entry, &feed, NULL, NULL, err);
    if (rc0) return rc0;
    arena_tally t = {0};
    char prefs_id[ROLLOUT_STORE_ID_MAX] = "";
    rc0 = rollout_store_arena_after(rc, prefix, prefs_id, since, &t, err);
    for (size_t i = 0; !rc0 && i < t.n_battles; i++)
        rollout_windows_add_battle(w, spec, t.names[t.battles[i].first],
                                   t.names[t.battles[i].second], t.battles[i].first_score);
    arena_tally_free(&t);
    return rc0;
}

/* The state after a check, for every gateway's /api/rollout (best effort: a failed SET only
 * leaves the previous one showing). */
static void publish_analysis(const rollout_runner *r, redisContext *rc, long long revision) {
    json_t *o = rollout_runner_json(r);
    if (o) {
        json_object_set_new(o, "revision", json_integer(revision));
        json_object_set_new(o, "instance", json_string(r->instance));
    }
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) return;
    char key[192];
    snprintf(key, sizeof key, "%s%s", r->prefix, ROLLOUT_RUNNER_ANALYSIS_KEY);
    redisReply *x = redisCommand(rc, "SET %s %s EX 3600", key, text);
    if (x) freeReplyObject(x);
    free(text);
}

static rollout_action action_of(rollout_decision_kind kind) {
    switch (kind) {
    case ROLLOUT_DECIDE_ROLLBACK: return ROLLOUT_ACTION_ROLLBACK;
    case ROLLOUT_DECIDE_PROMOTE: return ROLLOUT_ACTION_COMPLETE;
    default: return ROLLOUT_ACTION_STEP;
    }
}

int rollout_runner_step(rollout_runner *r, redisContext *rc, int64_t now_ms, duel_error *err) {
    if (now_ms < r->next_tick_ms) return DUEL_OK;
    r->next_tick_ms = now_ms + r->tick_ms;
    int rc0 = hold_lock(r, rc, err);
    if (rc0 || !r->leader) return rc0;
    rollout_spec *spec = malloc(sizeof *spec);
    if (!spec) return duel_error_set(err, DUEL_ENOMEM, "rollout controller: out of memory");
    bool present = false;
    duel_error rerr = {0};
    rc0 = rollout_store_read(rc, r->prefix, spec, &present, &rerr);
    if (rc0 == DUEL_EIO) {
        *err = rerr;
        free(spec);
        return rc0;
    }
    if (rc0 || !present) { /* no rollout, or a stored text the parser refuses: nothing to run */
        free(spec);
        return DUEL_OK;
    }
    long long read_revision = spec->revision;
    const rollout_arm_window *canary = NULL;
    if (rollout_controller_check_due(&r->ctl, spec, now_ms)) {
        if ((rc0 = rollout_runner_window(rc, r->prefix, spec, now_ms, &r->windows, err))) {
            free(spec);
            return rc0;
        }
        r->have_windows = true;
        canary = &r->windows.arms[rollout_canary_index(spec)];
        r->checks++;
    }
    rollout_decision d;
    rollout_controller_tick(&r->ctl, spec, now_ms, canary, &d);
    if (d.checked || d.kind != ROLLOUT_DECIDE_KEEP) {
        r->last = d;
        publish_analysis(r, rc, spec->revision);
    }
    if (d.kind != ROLLOUT_DECIDE_KEEP) {
        char *text = rollout_spec_dump(spec);
        char who[160];
        snprintf(who, sizeof who, "controller:%s", r->instance);
        rollout_change change = {.action = action_of(d.kind), .spec_text = text,
                                 .expect_revision = read_revision, .reason = d.why};
        rollout_spec after;
        duel_error cerr = {0};
        rc0 = text ? rollout_store_change(rc, r->prefix, who, &change, r->max_arms, &after, NULL, &cerr)
                   : duel_error_set(&cerr, DUEL_ENOMEM, "rollout controller: out of memory");
        free(text);
        if (!rc0) {
            r->ctl.revision = after.revision; /* our own write: the state carries on */
            r->actions++;
            fprintf(stderr, "duel serve: rollout %s (revision %lld): %s\n",
                    rollout_action_name(change.action), after.revision, d.why);
        } else if (rc0 == DUEL_EIO) {
            *err = cerr;
        } else {
            /* changed meanwhile, or refused: the next tick reads the spec again */
            fprintf(stderr, "duel serve: rollout controller: %s\n", cerr.message);
            rc0 = DUEL_OK;
        }
    }
    free(spec);
    return rc0;
}

json_t *rollout_runner_json(const rollout_runner *r) {
    json_t *last = json_null(), *window = json_null();
    if (r->last.checked || r->last.kind != ROLLOUT_DECIDE_KEEP) {
        static const char *const kinds[] = {"keep", "step", "rollback", "promote"};
        last = json_pack("{s:s, s:s, s:s}", "verdict",
                         r->last.checked ? rollout_verdict_name(r->last.verdict) : "none", "kind",
                         kinds[r->last.kind], "why", r->last.why);
    }
    if (r->have_windows) window = rollout_windows_json(&r->windows);
    return json_pack("{s:b, s:I, s:I, s:i, s:o, s:o}", "leader", r->leader, "checks",
                     (json_int_t)r->checks, "actions", (json_int_t)r->actions, "failures",
                     r->ctl.failures, "last", last ? last : json_null(), "window",
                     window ? window : json_null());
}
