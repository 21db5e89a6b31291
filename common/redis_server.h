/* redis_server.h: a private redis-server child process, for the tests and the Redis-backed
 * benchmarks (`duel bench trainer`, `duel bench loop`): the one launcher of a throwaway Redis
 * in the project (shared/STYLE.md: integration tests start their own redis-server on a free
 * loopback port with a temporary folder and stop it by pid). It binds 127.0.0.1 on a free port,
 * keeps its files in a fresh folder, and is ready when it answers PING (checked over a plain
 * socket: duel_common has no Redis client). restart keeps the port and the folder, so a server
 * with an append-only file comes back with its data (restart tests).
 *
 * The struct belongs to the thread that started the server, and the server dies with that thread
 * (PR_SET_PDEATHSIG): a failed test or a killed benchmark leaves no redis-server running. */
#ifndef DUEL_REDIS_SERVER_H
#define DUEL_REDIS_SERVER_H

#include <sys/types.h>

#include "error.h"

typedef enum redis_server_persistence {
    REDIS_SERVER_EPHEMERAL, /* no AOF, no RDB: a benchmark's scratch server */
    REDIS_SERVER_AOF,       /* appendonly yes, appendfsync everysec: survives a SIGTERM restart */
    REDIS_SERVER_AOF_ALWAYS /* appendfsync always: every acknowledged write survives SIGKILL */
} redis_server_persistence;

typedef struct redis_server {
    pid_t pid;      /* 0 while not running */
    int port;
    char host[16];  /* "127.0.0.1" */
    char dir[512];  /* its folder (redis.log, the AOF) */
    redis_server_persistence persistence;
} redis_server;

/* Starts redis-server (from PATH) in a new folder <tmp_base>/<tag>-XXXXXX on a free loopback
 * port and waits (up to 5 s) until it answers PING; a few ports are tried if one is taken.
 * DUEL_EIO naming the folder (its redis.log says why) when it does not come up. */
int redis_server_start(redis_server *server, const char *tmp_base, const char *tag,
                       redis_server_persistence persistence, duel_error *err);
/* Stops the server with signal sig and waits for it: SIGTERM waits up to 5 s, then SIGKILL;
 * SIGKILL is a crash. The folder stays (restart, inspection). No-op when not running. */
void redis_server_stop(redis_server *server, int sig);
/* Starts it again on the same port and folder (stopping it first with SIGTERM if it runs),
 * retrying while the port lingers. */
int redis_server_restart(redis_server *server, duel_error *err);
/* Stops it (SIGTERM) and removes its folder. */
void redis_server_destroy(redis_server *server);

#endif
