/* redis_link.c: master discovery through Sentinel, AUTH from the environment (see redis_link.h).
 * Invariant: a context handed out has answered AUTH (when credentials are set) and, with
 * sentinels, ROLE "master"; the password never enters an error message. */
#include "redis_link.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

static struct timeval ms_to_tv(int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* "host:port" (host may be [v6]) into e; DUEL_EINVAL naming text. */
static int parse_endpoint(const char *text, redis_link_endpoint *e, const char *source, const char *path,
                          duel_error *err) {
    const char *colon = strrchr(text, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    const char *host = text;
    size_t host_len = colon ? (size_t)(colon - text) : 0;
    if (host_len >= 2 && host[0] == '[' && host[host_len - 1] == ']') host++, host_len -= 2;
    if (!colon || !end || *end || port < 1 || port > 65535 || host_len == 0 || host_len >= sizeof e->host)
        return duel_error_set(err, DUEL_EINVAL, "%s: %s: '%s' is not HOST:PORT", source, path, text);
    memcpy(e->host, host, host_len);
    e->host[host_len] = '\0';
    e->port = (int)port;
    return DUEL_OK;
}

int redis_link_config_read(redis_link_config *out, const json_t *sec, const char *source, duel_error *err) {
    memset(out, 0, sizeof *out);
    snprintf(out->master_name, sizeof out->master_name, "duel");
    out->ack_timeout_ms = 1000;
    if (!sec) return DUEL_OK;
    const json_t *list = json_object_get(sec, "sentinels");
    if (list) {
        if (!json_is_array(list))
            return duel_error_set(err, DUEL_EINVAL, "%s: redis.sentinels must be an array of \"host:port\"", source);
        if (json_array_size(list) > REDIS_LINK_MAX_SENTINELS)
            return duel_error_set(err, DUEL_EINVAL, "%s: redis.sentinels: at most %d", source,
                                  REDIS_LINK_MAX_SENTINELS);
        size_t i;
        const json_t *v;
        json_array_foreach(list, i, v) {
            char path[64];
            snprintf(path, sizeof path, "redis.sentinels[%zu]", i);
            if (!json_is_string(v))
                return duel_error_set(err, DUEL_EINVAL, "%s: %s must be a \"host:port\" string", source, path);
            int rc = parse_endpoint(json_string_value(v), &out->sentinels[i], source, path, err);
            if (rc) return rc;
        }
        out->num_sentinels = (int)json_array_size(list);
    }
    const json_t *name = json_object_get(sec, "master_name");
    if (name) {
        const char *s = json_string_value(name);
        if (!s || !*s || strlen(s) >= sizeof out->master_name)
            return duel_error_set(err, DUEL_EINVAL, "%s: redis.master_name must be a non-empty string", source);
        snprintf(out->master_name, sizeof out->master_name, "%s", s);
    }
    const json_t *acks = json_object_get(sec, "ack_replicas");
    if (acks) {
        if (!json_is_integer(acks) || json_integer_value(acks) < 0 || json_integer_value(acks) > 16)
            return duel_error_set(err, DUEL_EINVAL, "%s: redis.ack_replicas must be an integer in [0, 16]", source);
        out->ack_replicas = (int)json_integer_value(acks);
    }
    const json_t *wait = json_object_get(sec, "ack_timeout_ms");
    if (wait) {
        if (!json_is_integer(wait) || json_integer_value(wait) < 1 || json_integer_value(wait) > 600000)
            return duel_error_set(err, DUEL_EINVAL, "%s: redis.ack_timeout_ms must be an integer in [1, 600000]",
                                  source);
        out->ack_timeout_ms = (int)json_integer_value(wait);
    }
    return DUEL_OK;
}

static redisContext *open_context(const char *host, int port, int timeout_ms, duel_error *err) {
    redisContext *c = redisConnectWithTimeout(host, port, ms_to_tv(timeout_ms));
    if (!c || c->err || redisSetTimeout(c, ms_to_tv(timeout_ms)) != REDIS_OK) {
        duel_error_set(err, DUEL_EIO, "redis %s:%d: cannot connect: %s", host, port, c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    redisEnableKeepAlive(c);
    return c;
}

/* AUTH [user] password from the environment, when a password is set. */
static int authenticate(redisContext *c, const char *where, duel_error *err) {
    const char *password = getenv("DUEL_REDIS_PASSWORD"), *user = getenv("DUEL_REDIS_USER");
    if (!password || !*password) return DUEL_OK;
    const char *argv[3] = {"AUTH"};
    int argc = 1;
    if (user && *user) argv[argc++] = user;
    argv[argc++] = password;
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    if (!r) return duel_error_set(err, DUEL_EIO, "redis %s: AUTH failed: %s", where, c->errstr);
    int rc = DUEL_OK;
    if (r->type == REDIS_REPLY_ERROR) /* Redis's text names no secret ("WRONGPASS invalid username-password pair") */
        rc = duel_error_set(err, DUEL_EINVAL, "redis %s: AUTH as %s refused: %s (DUEL_REDIS_USER, DUEL_REDIS_PASSWORD)",
                            where, user && *user ? user : "default", r->str);
    freeReplyObject(r);
    return rc;
}

/* Asks one sentinel for the master's address. */
static int ask_sentinel(const redis_link_endpoint *s, const char *name, int timeout_ms, redis_link_endpoint *master,
                        duel_error *err) {
    redisContext *c = open_context(s->host, s->port, timeout_ms, err);
    if (!c) return DUEL_EIO;
    redisReply *r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", name);
    int rc = DUEL_OK;
    if (!r) {
        rc = duel_error_set(err, DUEL_EIO, "sentinel %s:%d: %s", s->host, s->port, c->errstr);
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
               r->element[1]->type != REDIS_REPLY_STRING || r->element[0]->len >= sizeof master->host) {
        rc = duel_error_set(err, DUEL_EIO, "sentinel %s:%d: no master called '%s'%s%s", s->host, s->port, name,
                            r->type == REDIS_REPLY_ERROR ? ": " : "", r->type == REDIS_REPLY_ERROR ? r->str : "");
    } else {
        snprintf(master->host, sizeof master->host, "%s", r->element[0]->str);
        master->port = atoi(r->element[1]->str);
    }
    if (r) freeReplyObject(r);
    redisFree(c);
    return rc;
}

static bool is_master(redisContext *c) {
    redisReply *r = redisCommand(c, "ROLE");
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 && r->element[0]->type == REDIS_REPLY_STRING &&
              strcmp(r->element[0]->str, "master") == 0;
    if (r) freeReplyObject(r);
    return ok;
}

redisContext *redis_link_connect(const redis_link_config *cfg, const char *host, int port, int timeout_ms,
                                 char *addr, size_t addr_cap, duel_error *err) {
    if (timeout_ms <= 0) timeout_ms = 1000;
    if (!cfg || cfg->num_sentinels == 0) {
        if (addr && addr_cap) snprintf(addr, addr_cap, "%s:%d", host, port);
        redisContext *c = open_context(host, port, timeout_ms, err);
        char where[REDIS_LINK_HOST_MAX + 16];
        snprintf(where, sizeof where, "%s:%d", host, port);
        if (c && authenticate(c, where, err)) {
            redisFree(c);
            c = NULL;
        }
        return c;
    }
    /* Each sentinel in turn: one that is down or does not know the master yet is skipped. */
    for (int i = 0; i < cfg->num_sentinels; i++) {
        redis_link_endpoint m;
        if (ask_sentinel(&cfg->sentinels[i], cfg->master_name, timeout_ms, &m, err)) continue;
        char where[REDIS_LINK_HOST_MAX + 16];
        snprintf(where, sizeof where, "%s:%d", m.host, m.port);
        if (addr && addr_cap) snprintf(addr, addr_cap, "%s", where);
        redisContext *c = open_context(m.host, m.port, timeout_ms, err);
        if (!c) continue;
        if (authenticate(c, where, err)) {
            redisFree(c);
            return NULL; /* wrong credentials: another sentinel will not fix that */
        }
        if (is_master(c)) return c;
        duel_error_set(err, DUEL_EIO, "redis %s (from sentinel %s:%d): not a master (a failover in progress)", where,
                       cfg->sentinels[i].host, cfg->sentinels[i].port);
        redisFree(c);
    }
    return NULL;
}

bool redis_link_reply_is_failover(const redisReply *r) {
    if (!r || r->type != REDIS_REPLY_ERROR || !r->str) return false;
    static const char *const prefixes[] = {"READONLY", "MASTERDOWN", "LOADING", "NOAUTH", NULL};
    for (int i = 0; prefixes[i]; i++)
        if (strncmp(r->str, prefixes[i], strlen(prefixes[i])) == 0) return true;
    return false;
}
