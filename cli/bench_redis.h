/* bench_redis.h: what the Redis-backed benchmarks (bench trainer, bench loop) share: the Redis
 * they use (a private redis-server from common/redis_server.h, no persistence, or one given
 * with --redis HOST:PORT), XADDing an encoded vote, and removing a work folder. Only cli/ uses
 * it. */
#ifndef DUEL_CLI_BENCH_REDIS_H
#define DUEL_CLI_BENCH_REDIS_H

#include <sys/types.h>

#include "error.h"
#include "redis_server.h"
#include "vote_entry.h"

typedef struct redisContext redisContext;

typedef struct bench_redis {
    char host[256];
    int port;
    redis_server server; /* ours; pid 0 when the Redis was given with --redis */
} bench_redis;

/* Parses "HOST:PORT" into r (not ours). DUEL_EINVAL naming the text. */
int bench_redis_parse(const char *text, bench_redis *r, duel_error *err);
/* Starts a private redis-server (redis_server_start, no persistence) in tmp/<tag>-XXXXXX. */
int bench_redis_start(bench_redis *r, const char *tmp, const char *tag, duel_error *err);
/* Stops our server (SIGTERM, wait) and removes its folder; a server given with --redis is left
 * alone. */
void bench_redis_stop(bench_redis *r);
/* XADD stream * with the encoded vote's fields; DUEL_EIO with Redis's message. */
int bench_xadd_vote(redisContext *c, const char *stream, const vote_entry_encoded *enc, duel_error *err);
/* rm -rf path (best effort): durable_remove_tree. */
void bench_remove_tree(const char *path);
void bench_sleep_ms(int ms);
/* CPU seconds (user + system) of this process and its threads so far. */
double bench_cpu_seconds(void);

#endif
