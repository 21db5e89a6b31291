/* redis_fixture.h: a real redis-server for integration tests (shared/STYLE.md): started on a
 * free loopback port with a temporary data directory (`--save "" --appendonly yes`), stopped by
 * its pid. restart keeps port and directory, so the AOF is replayed (Redis restart tests). */
#ifndef DUEL_TEST_REDIS_FIXTURE_H
#define DUEL_TEST_REDIS_FIXTURE_H

#include <sys/types.h>

#include <hiredis/hiredis.h>

typedef struct redis_fixture {
    pid_t pid;
    int port;
    char dir[512];
} redis_fixture;

/* Starts redis-server (from PATH) in a new directory under $DUEL_TEST_TMP (or /tmp) and waits
 * until it answers PING. Returns 0, or -1 after printing why to stderr. */
int redis_fixture_start(redis_fixture *fixture, const char *tag);
/* SIGTERM, wait for it (SIGKILL after 5 s). The directory is kept for inspection until
 * redis_fixture_remove_dir. */
void redis_fixture_stop(redis_fixture *fixture);
/* Stops and starts again on the same port and directory. */
int redis_fixture_restart(redis_fixture *fixture);
void redis_fixture_remove_dir(redis_fixture *fixture);
/* A connection with a 5 s timeout, or NULL. */
redisContext *redis_fixture_connect(const redis_fixture *fixture);

#endif
