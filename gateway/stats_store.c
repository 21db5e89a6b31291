/* stats_store.c: duel:stats in Redis (see stats_store.h). */
#include "stats_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READ_CHUNK 500 /* entries per XRANGE */

int stats_store_append(redisContext *rc, const char *prefix, long long max_entries,
                       const char *instance, const char *role, int64_t ts_ms,
                       int64_t interval_ms, const char *data, duel_error *err) {
    char key[256], maxlen[32], ts[24], interval[24];
    snprintf(key, sizeof key, "%sstats", prefix);
    snprintf(maxlen, sizeof maxlen, "%lld", max_entries);
    const char *argv[6 + STATS_ENTRY_ARGC] = {"XADD", key, "MAXLEN", "~", maxlen, "*"};
    stats_entry_argv(instance, role, ts_ms, interval_ms, data, ts, interval, argv + 6);
    redisReply *r = redisCommandArgv(rc, 6 + STATS_ENTRY_ARGC, argv, NULL);
    if (!r) return duel_error_set(err, DUEL_EIO, "redis: XADD %s failed: %s", key, rc->errstr);
    int code = r->type == REDIS_REPLY_ERROR
                   ? duel_error_set(err, DUEL_EIO, "redis: XADD %s: %s", key, r->str)
                   : DUEL_OK;
    freeReplyObject(r);
    return code;
}

static void add_to_view(void *view, const stats_entry *e) { stats_view_add(view, e); }

int stats_store_read(redisContext *rc, const char *prefix, int64_t since_ms,
                     char last_id[STATS_STORE_ID_MAX], long long max_entries, stats_view *view,
                     long long *added, long long *skipped, duel_error *err) {
    return stats_store_each(rc, prefix, since_ms, last_id, max_entries, add_to_view, view, added,
                            skipped, err);
}

int stats_store_each(redisContext *rc, const char *prefix, int64_t since_ms,
                     char last_id[STATS_STORE_ID_MAX], long long max_entries,
                     void (*fn)(void *ctx, const stats_entry *e), void *ctx, long long *added,
                     long long *skipped, duel_error *err) {
    char key[256], start[STATS_STORE_ID_MAX + 2], count[32];
    snprintf(key, sizeof key, "%sstats", prefix);
    snprintf(count, sizeof count, "%d", READ_CHUNK);
    if (added) *added = 0;
    if (skipped) *skipped = 0;
    stats_entry *e = malloc(sizeof *e);
    if (!e) return duel_error_set(err, DUEL_ENOMEM, "stats: out of memory");
    long long total = 0;
    int code = DUEL_OK;
    for (;;) {
        /* "(" + id: exclusive start (Redis 6.2+) */
        if (last_id[0]) snprintf(start, sizeof start, "(%s", last_id);
        else snprintf(start, sizeof start, "%lld", (long long)(since_ms > 0 ? since_ms : 0));
        const char *argv[] = {"XRANGE", key, start, "+", "COUNT", count};
        redisReply *r = redisCommandArgv(rc, 6, argv, NULL);
        if (!r) {
            code = duel_error_set(err, DUEL_EIO, "redis: XRANGE %s failed: %s", key, rc->errstr);
            break;
        }
        if (r->type != REDIS_REPLY_ARRAY) {
            code = duel_error_set(err, DUEL_EIO, "redis: XRANGE %s: %s", key,
                                  r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            freeReplyObject(r);
            break;
        }
        size_t got = r->elements;
        for (size_t i = 0; i < got; i++) {
            const redisReply *en = r->element[i];
            if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 ||
                en->element[0]->type != REDIS_REPLY_STRING || en->element[0]->len >= STATS_STORE_ID_MAX)
                continue;
            snprintf(last_id, STATS_STORE_ID_MAX, "%s", en->element[0]->str);
            const redisReply *f = en->element[1];
            stats_field fields[16];
            size_t n = 0;
            for (size_t k = 0; f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements && n < 16; k += 2) {
                const redisReply *name = f->element[k], *value = f->element[k + 1];
                if (name->type != REDIS_REPLY_STRING || value->type != REDIS_REPLY_STRING) continue;
                fields[n++] = (stats_field){name->str, name->len, value->str, value->len};
            }
            duel_error derr = {0};
            if (stats_entry_decode(fields, n, e, &derr)) {
                if (skipped) (*skipped)++;
                continue;
            }
            fn(ctx, e);
            if (added) (*added)++;
        }
        freeReplyObject(r);
        total += (long long)got;
        if (got < READ_CHUNK || (max_entries > 0 && total >= max_entries)) break;
    }
    free(e);
    return code;
}
