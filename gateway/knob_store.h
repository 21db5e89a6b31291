/* knob_store.h: the live knobs and the audit log in Redis (DESIGN.md section 8): the hash
 * duel:knobs (field -> canonical text, checked with the knob table, common/knobs.h), the stream
 * duel:audit (one entry per accepted change: who, ts_ms, action, before, after) and the note
 * {"kind":"knobs"} on duel:notify that tells every server to read the hash again. Used by the
 * gateway's console thread (the admin API) and by `duel knobs set`, so that a change made either
 * way is validated, applied and audited by the same code.
 *
 * A change is all or nothing: the hash is read under WATCH, the whole new set is checked
 * (duel_knobs_apply: each value, then the cross-knob rules), and the HSET/HDEL and the audit
 * entry go in one MULTI/EXEC; a concurrent change makes EXEC fail and the change is tried again
 * on the new hash. A value in the hash that the table refuses (written by hand) counts as its
 * default and is reported, never applied.
 *
 * Synchronous hiredis calls: the caller's thread blocks for the round trips (never the lws
 * thread). */
#ifndef DUEL_GATEWAY_KNOB_STORE_H
#define DUEL_GATEWAY_KNOB_STORE_H

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "error.h"
#include "knobs.h"

#define KNOB_STORE_MAX_BAD 8
#define KNOB_STORE_WHO_MAX 64 /* bytes of the audit's who, NUL included */

/* Fields of duel:knobs the table refused (hand-written), ignored. */
typedef struct knob_store_bad {
    int count; /* at most KNOB_STORE_MAX_BAD kept */
    char message[KNOB_STORE_MAX_BAD][160];
} knob_store_bad;

/* Keys under prefix ("duel:"): <prefix>knobs, <prefix>audit, <prefix>notify. */

/* Reads duel:knobs: *out = defaults overridden by every field the table accepts; set[k] (may be
 * NULL) tells which knobs the hash holds. bad (may be NULL) lists the refused fields. The whole
 * set is then checked: a hand-written hash that breaks a cross-knob rule counts as defaults for
 * the knobs involved (reported in bad). */
int knob_store_read(redisContext *rc, const char *prefix, const duel_knob_values *defaults,
                    duel_knob_values *out, bool set[DUEL_KNOB_COUNT], knob_store_bad *bad,
                    duel_error *err);

/* Applies a change (names[i] = texts[i], text NULL: back to the default) as described above;
 * who names the operator in the audit log (a token's name, never its secret). On success
 * *after (may be NULL) is the set now in effect and *audit (may be NULL) gets the audit entry
 * as JSON ({"id","who","ts_ms","action","before","after"}; caller json_decrefs). A refused
 * change is DUEL_EINVAL with the table's message, and nothing is written. */
int knob_store_change(redisContext *rc, const char *prefix, const char *who,
                      const duel_knob_values *defaults, const char *const *names,
                      const char *const *texts, size_t n, duel_knob_values *after,
                      json_t **audit, duel_error *err);

/* The audit log's two halves for other stores of operator state (gateway/rollout_store.h), so
 * that every action is audited alike: append (pipelined, inside the caller's MULTI) the XADD of
 * one entry {who, ts_ms, action, before, after} (before and after JSON texts), and read an entry
 * back by id as the JSON object above (NULL when it cannot be read). */
void knob_store_append_audit(redisContext *rc, const char *prefix, const char *who,
                             const char *action, const char *before, const char *after);
json_t *knob_store_audit_entry(redisContext *rc, const char *prefix, const char *id);

/* After a WATCH conflict (another writer changed the key between WATCH and EXEC): sleeps a
 * jittered while, up to 1 ms << attempt (64 ms at most), so that two writers that collided do not
 * collide again in lockstep (without it, two operators' tight loops lost 8 tries in a row). */
void knob_store_conflict_backoff(int attempt);

/* The newest `count` audit entries, newest first, as a JSON array of the objects above. */
int knob_store_audit(redisContext *rc, const char *prefix, int count, json_t **out,
                     duel_error *err);

#endif
