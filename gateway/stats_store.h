/* stats_store.h: the capped stream duel:stats in Redis (DESIGN.md section 8; the entries are
 * common/stats.h's): appending this process's entry (XADD MAXLEN ~ max_entries) and reading the
 * entries of a time range, or those after the last one read, into a stats_view. Used by the
 * gateway's console thread and by `duel ops status`; the trainer appends with the same field list
 * (stats_entry_argv) over its own connection.
 *
 * Synchronous hiredis calls on the caller's thread (never the lws thread). */
#ifndef DUEL_GATEWAY_STATS_STORE_H
#define DUEL_GATEWAY_STATS_STORE_H

#include <hiredis/hiredis.h>
#include <stdint.h>

#include "error.h"
#include "stats.h"

#define STATS_STORE_ID_MAX 48 /* bytes of a stream id, NUL included */

/* XADD <prefix>stats MAXLEN ~ max_entries * <the entry's fields>. */
int stats_store_append(redisContext *rc, const char *prefix, long long max_entries,
                       const char *instance, const char *role, int64_t ts_ms,
                       int64_t interval_ms, const char *data, duel_error *err);

/* Reads entries into view: those after stream id *last_id when it is not empty, else those from
 * since_ms on; at most max_entries (0: no limit), in chunks. *last_id is updated to the last id
 * read. Entries that do not decode are skipped and counted in *skipped (may be NULL); *added
 * (may be NULL) counts the rest. */
int stats_store_read(redisContext *rc, const char *prefix, int64_t since_ms,
                     char last_id[STATS_STORE_ID_MAX], long long max_entries, stats_view *view,
                     long long *added, long long *skipped, duel_error *err);
/* The same read, each decoded entry handed to fn(ctx, entry) instead of a view. */
int stats_store_each(redisContext *rc, const char *prefix, int64_t since_ms,
                     char last_id[STATS_STORE_ID_MAX], long long max_entries,
                     void (*fn)(void *ctx, const stats_entry *e), void *ctx, long long *added,
                     long long *skipped, duel_error *err);

#endif
