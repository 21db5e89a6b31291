/* bench_redis.c: the Redis of the Redis-backed benchmarks (see bench_redis.h). */
#include "bench_redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "durable_file.h"

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

void bench_remove_tree(const char *path) { durable_remove_tree(path); }

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
    int rc = redis_server_start(&r->server, tmp, tag, REDIS_SERVER_EPHEMERAL, err);
    if (rc) return rc;
    snprintf(r->host, sizeof r->host, "%s", r->server.host);
    r->port = r->server.port;
    return 0;
}

void bench_redis_stop(bench_redis *r) {
    if (r->server.pid > 0 || r->server.dir[0]) redis_server_destroy(&r->server);
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
