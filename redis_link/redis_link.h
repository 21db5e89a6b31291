/* redis_link.h: how a server reaches its Redis master (DESIGN.md section 13). Either one address
 * (redis.host, redis.port) or Redis Sentinel: redis.sentinels ["host:port", ...] and
 * redis.master_name, in which case each connect asks the sentinels in turn for the master's
 * address (SENTINEL get-master-addr-by-name) and checks that the server there is a master
 * (ROLE), so that a reconnect after a failover finds the new one. Credentials come from the
 * environment only, never from argv, the config file or logs: DUEL_REDIS_PASSWORD (AUTH) and
 * DUEL_REDIS_USER (AUTH user password, an ACL user). Used by every Redis connection of the
 * gateway and the trainer. No state beyond the config: safe on any thread. */
#ifndef DUEL_REDIS_LINK_H
#define DUEL_REDIS_LINK_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "error.h"

struct redisContext;
struct redisReply;

#define REDIS_LINK_MAX_SENTINELS 8
#define REDIS_LINK_HOST_MAX 256

typedef struct redis_link_endpoint {
    char host[REDIS_LINK_HOST_MAX];
    int port;
} redis_link_endpoint;

typedef struct redis_link_config {
    int num_sentinels; /* 0: connect to the caller's host:port */
    redis_link_endpoint sentinels[REDIS_LINK_MAX_SENTINELS];
    char master_name[128];
    int ack_replicas;   /* redis.ack_replicas: replicas a vote must reach (WAIT) before vote_ok */
    int ack_timeout_ms; /* redis.ack_timeout_ms: how long WAIT may take */
} redis_link_config;

/* Reads sentinels, master_name, ack_replicas and ack_timeout_ms of the "redis" section (absent
 * keys keep the defaults: no sentinels, "duel", 0, 1000). A bad address is DUEL_EINVAL naming
 * it and source. */
int redis_link_config_read(redis_link_config *out, const json_t *redis_section, const char *source,
                           duel_error *err);

/* Connects (timeout_ms for the connect and every command) to the master: through cfg's
 * sentinels when it lists any (cfg may be NULL), else host:port; then AUTH when
 * DUEL_REDIS_PASSWORD is set. *addr gets "host:port" of the server reached (for messages).
 * NULL with err set on failure. */
struct redisContext *redis_link_connect(const redis_link_config *cfg, const char *host, int port, int timeout_ms,
                                        char *addr, size_t addr_cap, duel_error *err);

/* Whether an error reply says this server cannot take writes now and the master should be
 * asked again: READONLY (a replica: a failover happened), MASTERDOWN, LOADING, NOAUTH. */
bool redis_link_reply_is_failover(const struct redisReply *reply);

#endif
