/* redis_fixture.h: the tests' Redis: a real redis-server from common/redis_server.h (the
 * project's one launcher) in a folder under $DUEL_TEST_TMP (or /tmp), with an append-only file
 * so that restarts keep the data, plus a hiredis connection helper. Header-only. */
#ifndef DUEL_TEST_REDIS_FIXTURE_H
#define DUEL_TEST_REDIS_FIXTURE_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <sys/wait.h>

#include <hiredis/hiredis.h>

#include "redis_server.h"

typedef redis_server redis_fixture;

static inline const char *redis_fixture_tmp(void) {
    const char *base = getenv("DUEL_TEST_TMP");
    return base && *base ? base : "/tmp";
}

/* Starts one with persistence (REDIS_SERVER_AOF for restart tests, REDIS_SERVER_AOF_ALWAYS for
 * SIGKILL tests); 0, or -1 after printing why. */
static inline int redis_fixture_start_with(redis_fixture *f, const char *tag, redis_server_persistence p) {
    duel_error err = {0};
    if (redis_server_start(f, redis_fixture_tmp(), tag, p, &err) == 0) return 0;
    fprintf(stderr, "redis fixture: %s\n", err.message);
    return -1;
}

static inline int redis_fixture_start(redis_fixture *f, const char *tag) {
    return redis_fixture_start_with(f, tag, REDIS_SERVER_AOF);
}

/* SIGTERM (waits; the folder is kept for restart or inspection). */
static inline void redis_fixture_stop(redis_fixture *f) { redis_server_stop(f, SIGTERM); }

static inline int redis_fixture_restart(redis_fixture *f) {
    duel_error err = {0};
    if (redis_server_restart(f, &err) == 0) return 0;
    fprintf(stderr, "redis fixture: %s\n", err.message);
    return -1;
}

/* Stops it if it runs and removes its folder. */
static inline void redis_fixture_remove_dir(redis_fixture *f) { redis_server_destroy(f); }

/* Runs the duel executable exe with args (a shell string) against this Redis (--redis), stdout
 * and stderr into out (NUL-terminated, cut at cap); its exit status, or -1 when it could not run
 * or did not exit. */
static inline int redis_fixture_run_duel(const redis_fixture *f, const char *exe, const char *args,
                                         char *out, size_t cap) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' %s --redis 127.0.0.1:%d 2>&1", exe, args, f->port);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* A connection with a 5 s timeout, or NULL. */
static inline redisContext *redis_fixture_connect(const redis_fixture *f) {
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(f->host, f->port, tv);
    if (!c || c->err) {
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

#endif
