/* server_internal.h: what the server's files share (not a public header; gateway.h is): the
 * gateway struct, a websocket session, and the functions each file offers the others.
 *   server.c     lifecycle (create, run, drain, stop, destroy), the inbox from other threads,
 *                housekeeping
 *   session.c    the websocket callbacks: sessions, their outboxes, per-address limits
 *   chat_flow.c  what each client message and each backend or Redis result does
 *   http.c       static files, /healthz, /readyz, /metrics
 *   admin_api.c  /api/stats, /api/knobs, /api/audit (bearer tokens: admin_auth.h)
 *   conversation.c, duel_table.c, rollout.c: the conversation cache, the duel table, the A/B
 *                router (their own headers); console.c (its own thread: duel:stats, duel:knobs,
 *                duel:audit in Redis) and serving_stats.c (the figures per arm and strategy)
 * Thread: everything here belongs to the lws service thread (gateway_run), except the inbox and
 * ctx_alive (inbox_mu) and stop_requested (atomic), which other threads touch. */
#ifndef DUEL_GATEWAY_SERVER_INTERNAL_H
#define DUEL_GATEWAY_SERVER_INTERNAL_H

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "admin_auth.h"
#include "console.h"
#include "conversation.h"
#include "duel_table.h"
#include "gateway.h"
#include "http_route.h"
#include "metrics.h"
#include "protocol.h"
#include "redis_worker.h"
#include "rollout.h"
#include "serving_stats.h"
#include "snapshot_loader.h"
#include "str_map.h"

#define GATEWAY_MAX_STATIC_FILES 32
#define GATEWAY_PROTOCOL_NAME "duel.v1" /* the websocket subprotocol; upgrades without it are refused */

typedef struct outframe {
    struct outframe *next;
    size_t len;
    unsigned char buf[]; /* LWS_PRE bytes of headroom, then the payload */
} outframe;

typedef struct session {
    uint64_t conn_id;
    char key[24];
    struct lws *wsi;
    char addr[HTTP_ADDRESS_MAX]; /* the client's, behind trusted proxies (http_client_address) */
    uint64_t fairness_key;       /* hash of addr: the backend's fair-admission key */
    conversation *conv;
    bool hello_done, hello_pending;
    char client[PROTOCOL_ID_LEN + 1]; /* hello's client id ("" without): the A/B router's key */
    char *rx;
    size_t rx_len;
    bool rx_overflow, rx_binary;
    bool rx_started;       /* a message's first bytes arrived, its last not yet */
    double hello_deadline; /* duel_time_seconds() by which hello must have come */
    outframe *out_head, *out_tail;
    size_t out_bytes;
    duel_rec *duel; /* RUNNING or STREAMING */
    double tokens, last;
    int errors;
    bool close_after_flush;
} session;

typedef struct addr_state {
    int connections;
    double tokens, last;
} addr_state;

typedef enum inbox_kind { INBOX_BACKEND, INBOX_REDIS, INBOX_CONSOLE } inbox_kind;

/* A console job's outcome, for the request waiting on it. */
typedef struct console_result {
    uint64_t request_id;
    int status;
    char message[DUEL_ERROR_MESSAGE_MAX];
    char *audit; /* the result as JSON text (a knob change's audit entry, a rollout job's
                    document), or NULL */
} console_result;

typedef struct inbox_item {
    inbox_kind kind;
    duel_backend_event ev;
    redis_result rr;
    console_result cr;
    struct inbox_item *next;
} inbox_item;

typedef struct static_file {
    char url[80];
    char path[1200];
    const char *mime;
} static_file;

struct gateway {
    gateway_config cfg;
    duel_backend backend;
    bool backend_started;
    struct lws_context *ctx;
    struct lws_vhost *vh;
    struct lws_protocols protocols[3];
    int port;
    redis_worker *redis;
    snapshot_loader *loader; /* NULL unless cfg.snapshot_loader */

    pthread_mutex_t inbox_mu;
    inbox_item *inbox_head, *inbox_tail;
    bool ctx_alive; /* guarded by inbox_mu: lws_cancel_service is safe */
    atomic_bool stop_requested;
    bool draining;
    double drain_deadline;

    str_map sessions, addrs;
    conversation_cache convs;
    duel_table duels;
    rollout_router rollout;      /* duel:rollout as last accepted */
    uint64_t rollout_generation; /* redis_worker_rollout_changed's */
    uint64_t next_conn_id;
    int max_connections;         /* cfg.max_connections capped below the descriptor limit */
    http_cidr trusted_proxies[GATEWAY_MAX_TRUSTED_PROXIES]; /* cfg.trusted_proxies, parsed */
    int n_trusted_proxies;
    gateway_metrics metrics;
    static_file files[GATEWAY_MAX_STATIC_FILES];
    int n_files;
    lws_sorted_usec_list_t sul;

    /* the operator console (issue 19) */
    console *console;              /* its thread: duel:stats, duel:knobs, duel:audit */
    serving_stats stats;           /* kept when cfg.stats_interval_ms > 0 */
    double next_stats_entry;       /* duel_time_seconds() when the next entry is taken */
    admin_auth auth;
    duel_knob_values knobs;        /* the knobs in effect here (console_knobs_changed) */
    uint64_t knobs_seen;
    duel_backend_params params;    /* the serving knobs as every request carries them */
    str_map api_waiting;           /* request id (hex) -> struct lws * waiting for a knob change */
    uint64_t next_api_id;
};

/* The HTTP side's per-connection state (http.c, admin_api.c). */
typedef struct http_pss {
    unsigned char *body;  /* the response: LWS_PRE headroom + payload */
    size_t len;
    bool head;            /* a HEAD request: the headers of the response, no body */
    /* a POST to /api/knobs: its body, who sent it, and the knob change it waits for */
    char *request;
    size_t request_len;
    bool request_too_large;
    bool is_api_post;
    admin_role role;
    char who[ADMIN_AUTH_NAME_MAX];
    uint64_t api_id;      /* != 0 while waiting in api_waiting */
    bool api_document;    /* the console's result is the reply (/api/rollout, /api/arena) */
    bool post_rollout;    /* the POST is to /api/rollout (else /api/knobs) */
} http_pss;

/* session.c */
int gateway_ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                        size_t len);
session *gateway_find_session(gateway *gw, uint64_t conn_id);
/* Queues json (takes ownership; NULL is ignored) and asks for a WRITEABLE callback. */
void gateway_send_frame(gateway *gw, session *s, char *json);
void gateway_send_error(gateway *gw, session *s, protocol_error_code code, const char *message);
void gateway_close_soon(session *s);
/* Sets s's one pending lws timeout from its state (hello, partial message, idle; none while a
 * duel runs): after every message, a duel's end and the connection's start. */
void gateway_session_deadline(gateway *gw, session *s);
/* Token bucket: capacity per_minute, refilled per_minute / 60 per second. */
bool gateway_bucket_take(double *tokens, double *last, int per_minute, double now);
/* The per-connection and per-address limits an ask must pass (asks per minute of the
 * connection, then of the address, then asks pending for the address), each refusal with its
 * own code sent to s. True: the ask may go to the backend (its tokens are taken). */
bool gateway_ask_allowed(gateway *gw, session *s, double now);

/* chat_flow.c */
/* Takes duel:rollout's text when the Redis thread fetched a changed one (parsed once per change). */
void gateway_rollout_refresh(gateway *gw);
void gateway_handle_message(gateway *gw, session *s, const char *data, size_t len);
void gateway_on_backend_event(gateway *gw, duel_backend_event *ev);
void gateway_on_redis_result(gateway *gw, redis_result *r);
/* Sends the next round of deltas of s's STREAMING duel (or its end). */
void gateway_stream_step(gateway *gw, session *s);
/* Asks the backend to stop a RUNNING duel's generation. */
void gateway_cancel_generation(gateway *gw, duel_rec *d);
/* Ends a RUNNING or STREAMING duel early and forgets it; tell: send duel_end cancelled. */
void gateway_abort_duel(gateway *gw, session *s, duel_rec *d, bool tell);

/* http.c */
int gateway_http_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
                          void *in, size_t len);
/* Queues a whole response (a copy of body) and asks for a WRITEABLE callback; extra (NULL or a
 * "name:" / value pair) adds one header. -1 on failure (close the connection). */
int gateway_http_respond(struct lws *wsi, http_pss *pss, unsigned int status, const char *ctype,
                         const char *body, size_t len, const char *extra_name,
                         const char *extra_value);

/* admin_api.c */
/* GET /api/...: answers now. 1 when path is not an API path. */
int gateway_api_get(gateway *gw, struct lws *wsi, http_pss *pss, const char *path);
/* POST /api/...: checks the token before the body arrives (a refusal is answered at once). */
int gateway_api_post_start(gateway *gw, struct lws *wsi, http_pss *pss, const char *path);
int gateway_api_post_body(gateway *gw, http_pss *pss, const void *in, size_t len);
int gateway_api_post_done(gateway *gw, struct lws *wsi, http_pss *pss);
/* A knob change's outcome (from the inbox): answers the request that waits for it. */
void gateway_api_on_console(gateway *gw, console_result *r);
/* The connection closed: forget its wait. */
void gateway_api_closed(gateway *gw, http_pss *pss);
size_t gateway_http_pss_size(void);
/* Finds the web files (a fixed list of names in cfg.web_root). */
int gateway_scan_web_root(gateway *gw, duel_error *err);

/* server.c */
/* Runs every result other threads queued (on the lws thread, from the cancel-service wake-up). */
void gateway_drain_inbox(gateway *gw);

#endif
