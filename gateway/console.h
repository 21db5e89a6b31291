/* console.h: the gateway's console thread (issue 19): everything the operator console needs from
 * Redis, off the lws thread. It owns two hiredis connections (commands, and a subscriber on
 * duel:notify) and:
 *   - appends this gateway's duel:stats entries (handed over by the lws thread; kept in a short
 *     queue while Redis is away) and reads every instance's entries into its stats_view
 *     (common/stats.h): the whole last 24 h once connected, then only the new ones every
 *     CONSOLE_STATS_READ_MS; after each read it renders the three windows, so /api/stats is a
 *     copy of a ready text (the aggregation never runs on the lws thread);
 *   - keeps the serving knobs in effect: duel:knobs read over the configuration's defaults at
 *     connect, at every {"kind":"knobs"} note on duel:notify and every knobs_poll_ms (pub/sub can
 *     drop a note); the lws thread picks a changed set up with console_knobs_changed before a
 *     duel, so a change takes effect at the next duel;
 *   - runs the admin API's knob changes (gateway/knob_store.h: all or nothing, audited) and
 *     keeps the newest audit entries;
 *   - runs the admin API's rollout actions and reads (gateway/rollout_store.h) and computes the
 *     arena ratings from duel:prefs.
 * Without Redis the knobs are the configuration's defaults (or the last set read) and a change
 * is refused; serving goes on.
 *
 * Threads: the console thread owns the connections and the view; the rendered texts, the knobs,
 * the audit text and the job queue are guarded by one mutex; every console_* call is thread-safe
 * and never waits on Redis. done() runs on the console thread. */
#ifndef DUEL_GATEWAY_CONSOLE_H
#define DUEL_GATEWAY_CONSOLE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "duel_backend.h"
#include "error.h"
#include "knob_store.h"
#include "knobs.h"
#include "rollout_store.h"
#include "stats.h"

#define CONSOLE_STATS_READ_MS 1000   /* how often other instances' entries are read */
#define CONSOLE_AUDIT_ENTRIES 50     /* audit entries kept for /api/audit */
#define CONSOLE_MAX_QUEUED_ENTRIES 64 /* own entries kept while Redis is away (older ones go) */

/* A job's outcome, on the console thread: status 0 (result: a knob change's audit entry, or a
 * rollout job's document; borrowed for the call), DUEL_EINVAL or DUEL_EFORMAT (refused:
 * message), DUEL_EIO (Redis: message). */
typedef void (*console_done_fn)(void *ctx, uint64_t request_id, int status, const char *message,
                                const json_t *result);

typedef struct console_config {
    const struct redis_link_config *link; /* sentinels (redis_link.h); NULL: host:port */
    const char *host;
    int port;
    int timeout_ms;
    const char *prefix;          /* "duel:" */
    const char *instance;        /* this gateway's entries: "serve@HOST:PORT" */
    long long stats_max_entries; /* MAXLEN ~ of duel:stats */
    int knobs_poll_ms;
    int rollout_max_arms;        /* rollout.max_arms: the engine's limit for rollout changes */
    int rollout_controller_tick_ms; /* > 0: run the rollout controller (rollout_runner.h) */
    duel_knob_values defaults;   /* the knobs' defaults from the configuration */
    console_done_fn done;
    void *ctx;
} console_config;

typedef struct console console;

int console_create(const console_config *cfg, console **out, duel_error *err);
/* Stops the thread (queued entries are appended first when Redis answers) and frees it. */
void console_destroy(console *c);

/* Queues this gateway's entry (data: malloc'd JSON, ownership passes) for the interval of
 * interval_ms ending at ts_ms. */
void console_submit_entry(console *c, char *data, int64_t ts_ms, int64_t interval_ms);

/* Whether the knobs in effect changed since generation *seen (0 at first: the caller keeps it);
 * when they did, *out is the new set and *seen is updated. */
bool console_knobs_changed(console *c, uint64_t *seen, duel_knob_values *out);

/* The knobs as /api/knobs shows them: duel_knobs_describe plus, per knob, "value" (in effect)
 * and "set" (held by duel:knobs); and "ignored" (hand-written values refused) and "connected".
 * Caller json_decrefs; NULL on out of memory. */
json_t *console_knobs_json(console *c);
/* /api/stats for window_s: a malloc'd copy of the last rendering (stats_view_render); NULL for
 * a window not offered or before the first rendering. */
char *console_stats_text(console *c, int window_s, size_t *len);
/* /api/audit: {"entries": [newest first]} (malloc'd). */
char *console_audit_text(console *c, size_t *len);

/* Queues a knob change (names/texts copied; text NULL: back to the default) made by who; the
 * outcome comes through cfg.done with request_id. DUEL_ELIMIT when too many wait. */
int console_change_knobs(console *c, uint64_t request_id, const char *who,
                         const char *const *names, const char *const *texts, size_t n,
                         duel_error *err);

/* Queues a rollout job (gateway/rollout_store.h) whose outcome comes through cfg.done with its
 * document: change NULL and !arena reads duel:rollout ({"rollout": spec or null}); change applies
 * that action as who ({"rollout": spec, "audit": entry}; checked against cfg.rollout_max_arms);
 * arena reads the arena ratings (arena_ratings_json). DUEL_ELIMIT when too many wait. */
int console_rollout(console *c, uint64_t request_id, const char *who,
                    const rollout_change *change, bool arena, duel_error *err);

/* The serving knobs of values as the backend takes them (duel_backend_params). */
void console_serving_params(const duel_knob_values *values, duel_backend_params *out);

/* Whether the command connection is up. */
bool console_connected(console *c);

#endif
