/* gateway.h: the public contract of gateway/: `duel serve`'s server. One libwebsockets vhost
 * serving the chat page (static files of gateway/web), the duel.v1 websocket protocol
 * (protocol.h), /healthz, /readyz and Prometheus /metrics; duels come from a duel_backend
 * (duel_backend.h), votes and conversations go to Redis through the Redis thread
 * (redis_worker.h). DESIGN.md section 7.
 *
 * Threads: gateway_run is the lws service thread and owns every socket and session; the backend
 * and the Redis worker run their own threads and hand results over through a locked inbox,
 * waking lws with lws_cancel_service. gateway_stop may be called from any thread. */
#ifndef DUEL_GATEWAY_H
#define DUEL_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>

#include "redis_link.h"
#include "duel_backend.h"
#include "error.h"
#include "knobs.h"

#define GATEWAY_MAX_ORIGINS 8
#define GATEWAY_MAX_TRUSTED_PROXIES 16
#define GATEWAY_VOTE_STREAM "duel:prefs"           /* votes the trainer learns from */
#define GATEWAY_TEST_VOTE_STREAM "duel:prefs:test" /* votes on an untrainable backend's duels */

/* Every key of the "gateway" config section (config/default.json: the defaults come from there,
 * gateway_config_defaults), plus what `duel serve` adds. */
typedef struct gateway_config {
    char bind[64];               /* "127.0.0.1"; "0.0.0.0" for all interfaces */
    int port;                    /* 8080; 0 picks a free port (see gateway_port) */
    char redis_host[256];        /* "127.0.0.1" */
    int redis_port;              /* 6379 */
    int redis_timeout_ms;        /* 1000: connect and command timeout */
    redis_link_config redis_link; /* redis.sentinels, master_name, ack_replicas, ack_timeout_ms */
    char web_root[1024];         /* "gateway/web" (relative to the working directory) */
    char spill_path[1024];       /* "": `duel serve` puts it at <data-dir>/gateway-spill.log */
    size_t max_frame_bytes;      /* 16384: inbound websocket message limit */
    size_t max_ask_bytes;        /* 4000: ask text limit */
    int asks_per_minute_connection; /* 20 */
    int asks_per_minute_address;    /* 60 */
    int asks_pending_per_address;   /* 8: asks of one address waiting for their answers
                                       (queued or generating) at a time */
    int connections_per_address;    /* 32 */
    int max_connections;         /* 10000: all addresses */
    int max_turns;               /* 32: turns per conversation */
    long long max_context_tokens; /* 2048: conversation + new ask */
    long long conversation_ttl_s; /* 86400 */
    int duel_retention_s;        /* 3600: how long a finished duel can be voted on */
    int max_duels;               /* 100000: duels kept for voting */
    long long max_duel_bytes;    /* 268435456: memory the finished duels kept for voting may
                                    hold; past it the oldest are forgotten first */
    int stream_interval_ms;      /* 20: pause between delta rounds (0: as fast as the socket) */
    int stream_chunk_bytes;      /* 12: a delta ends at the first word break after this */
    int abuse_limit;             /* 20: protocol errors before the connection is closed */
    int partial_message_timeout_s; /* 10: a message unfinished this long after its first
                                      fragment closes the connection (later fragments do not
                                      extend it) */
    int hello_timeout_s;         /* 10: a websocket that has not said hello by then is closed */
    int idle_timeout_s;          /* 600: a websocket with no message from its client and no duel
                                    running for this long is closed (the page reconnects) */
    int max_header_bytes;        /* 8192: an HTTP request's headers over this get 431 */
    int shutdown_grace_ms;       /* 3000: SIGTERM waits this long for votes to finish */
    bool snapshot_loader;        /* false: hot-swap of trainer snapshots (snapshot_loader.h);
                                    `duel serve` turns it on with --redis unless --no-snapshots */
    int snapshot_poll_ms;        /* 3000: how often the loader reads duel:snapshots anyway */
    int n_origins;               /* gateway.allowed_origins: the browser origins that may open
                                    a websocket; none: the loopback origins of the port
                                    (http_route.h) */
    char origins[GATEWAY_MAX_ORIGINS][256];
    int n_trusted_proxies;       /* gateway.trusted_proxies: addresses or CIDR ranges of the
                                    proxies whose X-Forwarded-For names the client (for the
                                    per-address limits); none: the peer is the client */
    char trusted_proxies[GATEWAY_MAX_TRUSTED_PROXIES][64];
    char tls_cert[1024];         /* "": plain ws/http; a PEM certificate (chain) file: wss/https */
    char tls_key[1024];          /* its PEM private key (both or neither) */
    int stats_interval_ms;       /* 5000: a duel:stats entry this often (0: no figures kept; the
                                    operator console then shows other instances only) */
    int knobs_poll_ms;           /* 2000: duel:knobs is read this often besides duel:notify */
    char tokens_file[1024];      /* "": the admin API's tokens (ROLE:NAME:SECRET per line) */
    char uplot_dir[1024];        /* "node_modules/uplot/dist": where /vendor/uPlot.* come from */
    long long stats_max_entries; /* redis.stats_max_entries (40000): MAXLEN ~ of duel:stats */
    int rollout_max_arms;        /* rollout.max_arms (4): arms a rollout may have (admin API) */
    int rollout_controller_tick_ms; /* rollout.controller_tick_ms (1000): this gateway may run the
                                       rollout controller (rollout_runner.h; one gateway holds
                                       its lock), ticking this often; 0: it never does */
    /* Not config keys: `duel serve` fills them. */
    const char *tokens;          /* DUEL_TOKENS (borrowed, read by gateway_create only) */
    duel_knob_values knobs;      /* the live knobs' defaults (duel_knobs_defaults of the config) */
} gateway_config;

struct json_t; /* jansson's */

/* The defaults: config/default.json's gateway and redis sections and knob defaults (the
 * embedded copy, common/config.h); nothing is copied by hand. */
void gateway_config_defaults(gateway_config *cfg);
/* Reads the "gateway" section (and "redis": host, port) of a parsed JSON config (root, e.g. the
 * document duel_config_load assembles; source names it in messages); unknown keys in those
 * sections, wrong types and values out of range are errors naming the dotted path
 * ("SOURCE: gateway.port = 70000 is outside [0, 65535]"); other sections are ignored. Keys
 * absent from root leave cfg as it was. */
int gateway_config_from_json(gateway_config *cfg, const struct json_t *root, const char *source,
                             duel_error *err);
/* The same for a JSON config file (at most 1 MiB), read without the shared defaults. */
int gateway_config_load(gateway_config *cfg, const char *path, duel_error *err);
/* "host:port" for --redis. */
int gateway_config_set_redis(gateway_config *cfg, const char *host_port, duel_error *err);

typedef struct gateway gateway;

/* Binds the port and starts the Redis thread, the backend (which the gateway now owns, even on
 * failure) and, with cfg->snapshot_loader, the snapshot loader (DUEL_EINVAL when the backend
 * cannot hot-swap). Votes go to GATEWAY_VOTE_STREAM, or to GATEWAY_TEST_VOTE_STREAM when the
 * backend is not trainable (the test backend). cfg->spill_path must name the spill log (its
 * folder must exist). */
int gateway_create(const gateway_config *cfg, duel_backend *backend, gateway **out,
                   duel_error *err);
/* The port actually listened on. */
int gateway_port(const gateway *gw);
/* The stream its votes go to (GATEWAY_VOTE_STREAM or GATEWAY_TEST_VOTE_STREAM). */
const char *gateway_vote_stream(const gateway *gw);
/* Serves until gateway_stop; then stops taking asks, cancels running duels, waits up to
 * shutdown_grace_ms for votes in flight, closes every connection and flushes votes (to Redis or
 * the spill log). */
int gateway_run(gateway *gw, duel_error *err);
/* Thread-safe request to stop gateway_run. */
void gateway_stop(gateway *gw);
void gateway_destroy(gateway *gw);

#endif
