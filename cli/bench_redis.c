/* bench_redis.c: a private redis-server for the Redis-backed benchmarks (see bench_redis.h). */
#include "bench_redis.h"

#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

void bench_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

double bench_cpu_seconds(void) {
    struct rusage u;
    if (getrusage(RUSAGE_SELF, &u) != 0) return 0;
    return (double)u.ru_utime.tv_sec + 1e-6 * (double)u.ru_utime.tv_usec + (double)u.ru_stime.tv_sec +
           1e-6 * (double)u.ru_stime.tv_usec;
}

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

void bench_remove_tree(const char *path) { nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

int bench_redis_parse(const char *text, bench_redis *r, duel_error *err) {
    memset(r, 0, sizeof *r);
    const char *colon = strrchr(text, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!colon || colon == text || (size_t)(colon - text) >= sizeof r->host || !end || *end || port < 1 || port > 65535)
        return duel_error_set(err, DUEL_EINVAL, "--redis wants HOST:PORT, got '%s'", text);
    snprintf(r->host, sizeof r->host, "%.*s", (int)(colon - text), text);
    r->port = (int)port;
    return 0;
}

int bench_redis_start(bench_redis *r, const char *tmp, const char *tag, duel_error *err) {
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s/%s-XXXXXX", tmp, tag);
    if (!mkdtemp(r->dir)) {
        int e = errno;
        r->dir[0] = '\0';
        return duel_error_set(err, DUEL_EIO, "%s/%s-XXXXXX: cannot create: %s", tmp, tag, strerror(e));
    }
    snprintf(r->host, sizeof r->host, "127.0.0.1");
    if ((r->port = free_port()) < 0) return duel_error_set(err, DUEL_EIO, "no free loopback port");
    char port[16], log[600];
    snprintf(port, sizeof port, "%d", r->port);
    snprintf(log, sizeof log, "%s/redis.log", r->dir);
    r->pid = fork();
    if (r->pid < 0) {
        r->pid = 0;
        return duel_error_set(err, DUEL_EIO, "fork failed: %s", strerror(errno));
    }
    if (r->pid == 0) {
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", r->dir, "--save", "",
               "--appendonly", "no", "--logfile", log, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        redisContext *c = redisConnect(r->host, r->port);
        if (c && !c->err) {
            redisReply *rep = redisCommand(c, "PING");
            bool ok = rep && rep->type == REDIS_REPLY_STATUS;
            if (rep) freeReplyObject(rep);
            redisFree(c);
            if (ok) return 0;
        } else if (c) {
            redisFree(c);
        }
        int status;
        if (waitpid(r->pid, &status, WNOHANG) == r->pid) {
            r->pid = 0;
            return duel_error_set(err, DUEL_EIO, "redis-server exited at start (installed? see %s)", log);
        }
        bench_sleep_ms(10);
    }
    return duel_error_set(err, DUEL_EIO, "redis-server did not answer on port %d", r->port);
}

void bench_redis_stop(bench_redis *r) {
    if (r->pid > 0) {
        kill(r->pid, SIGTERM);
        waitpid(r->pid, NULL, 0);
        r->pid = 0;
    }
    if (r->dir[0]) bench_remove_tree(r->dir);
    r->dir[0] = '\0';
}

int bench_xadd_vote(redisContext *c, const char *stream, const vote_entry_encoded *enc, duel_error *err) {
    const char *args[3 + 2 * VOTE_ENTRY_MAX_FIELDS];
    size_t lens[3 + 2 * VOTE_ENTRY_MAX_FIELDS];
    int n = 0;
    args[n] = "XADD", lens[n++] = 4;
    args[n] = stream, lens[n++] = strlen(stream);
    args[n] = "*", lens[n++] = 1;
    for (int i = 0; i < enc->n_fields; i++) {
        args[n] = enc->fields[i].name, lens[n++] = enc->fields[i].name_len;
        args[n] = enc->fields[i].value, lens[n++] = enc->fields[i].value_len;
    }
    redisReply *rep = redisCommandArgv(c, n, args, lens);
    int rc = 0;
    if (!rep || rep->type == REDIS_REPLY_ERROR)
        rc = duel_error_set(err, DUEL_EIO, "XADD %s: %s", stream, rep ? rep->str : c->errstr);
    if (rep) freeReplyObject(rep);
    return rc;
}
