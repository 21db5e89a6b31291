/* server.c: the gateway's lifecycle (see gateway.h): gateway_create binds the port and starts
 * the Redis thread, the backend and the snapshot loader; gateway_run is the lws service loop
 * until gateway_stop, then drains (no new asks, running duels cancelled, votes in flight waited
 * for up to shutdown_grace_ms); gateway_destroy closes every connection and flushes the votes.
 * Also the inbox, the one way other threads reach the lws thread: the backend's events and the
 * Redis thread's results are queued under inbox_mu and lws is woken with lws_cancel_service,
 * whose callback (http.c) drains the queue; and the housekeeping timer (expired duels, idle
 * conversations). The rest of the server: session.c (sockets), chat_flow.c (what messages and
 * results do), http.c (static files, /healthz, /readyz, /metrics), conversation.c,
 * duel_table.c, rollout.c.
 *
 * Thread: gateway_run is the lws service thread and owns everything but the inbox (inbox_mu,
 * with ctx_alive) and stop_requested (atomic); gateway_stop may be called from any thread. */
#include <libwebsockets.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "server_internal.h"
#include "timer.h"

#define HOUSEKEEPING_US 200000      /* 200 ms */
#define CONV_CACHE_SOFT_MAX 50000   /* conversations kept before idle ones are forgotten */
#define CONV_IDLE_S 600.0           /* idle seconds before a cached conversation may go */
/* Descriptors kept out of lws's hands: Redis connections (the vote, console and loader
 * threads'), the spill log, static files being sent, a snapshot's files while it loads. Plus
 * 1/FD_RESERVE_SHARE of the limit, and websockets leave 1/FD_HTTP_SHARE of lws's share to
 * plain HTTP (the page itself, /metrics, /healthz). */
#define FD_RESERVE 32
#define FD_RESERVE_SHARE 16
#define FD_HTTP_SHARE 8

/* lws's share of the descriptor limit (RLIMIT_NOFILE's soft limit). lws stops accepting (takes
 * the listening socket out of its poll set) once its table is full and resumes as connections
 * close, so the process never reaches EMFILE in accept(), where lws 4.1 would spin logging
 * "accept: errno 24" on a socket that stays readable. The price: with a table smaller than the
 * limit lws finds a socket's connection by a scan of the table, not an index. */
static int lws_fd_share(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1 << 20))
        return 1 << 20;
    int limit = (int)rl.rlim_cur;
    int share = limit - FD_RESERVE - limit / FD_RESERVE_SHARE;
    return share > 8 ? share : 8;
}

/* ---- inbox (results from other threads) --------------------------------------------------- */

static void push_inbox(gateway *gw, inbox_item *item) {
    pthread_mutex_lock(&gw->inbox_mu);
    if (!gw->ctx_alive) {
        pthread_mutex_unlock(&gw->inbox_mu);
        duel_backend_result_free(item->ev.result);
        free(item->rr.json);
        free(item->cr.audit);
        free(item);
        return;
    }
    if (gw->inbox_tail) gw->inbox_tail->next = item;
    else gw->inbox_head = item;
    gw->inbox_tail = item;
    lws_cancel_service(gw->ctx);
    pthread_mutex_unlock(&gw->inbox_mu);
}

/* The backend's thread. */
static void backend_sink(void *ctx, duel_backend_event *ev) {
    gateway *gw = ctx;
    inbox_item *item = calloc(1, sizeof *item);
    if (!item) return; /* the duel then never finishes; the client can cancel */
    item->kind = INBOX_BACKEND;
    item->ev = *ev;
    ev->result = NULL;
    push_inbox(gw, item);
}

/* The Redis thread. */
static void redis_sink(void *ctx, redis_result *r) {
    gateway *gw = ctx;
    inbox_item *item = calloc(1, sizeof *item);
    if (!item) {
        free(r->json);
        return;
    }
    item->kind = INBOX_REDIS;
    item->rr = *r;
    r->json = NULL;
    push_inbox(gw, item);
}

/* The console thread: a job's outcome, for the request that waits for it. */
static void console_done(void *ctx, uint64_t request_id, int status, const char *message,
                         const json_t *audit) {
    gateway *gw = ctx;
    inbox_item *item = calloc(1, sizeof *item);
    if (!item) return; /* the request then times out; the change itself is made or refused */
    item->kind = INBOX_CONSOLE;
    item->cr.request_id = request_id;
    item->cr.status = status;
    snprintf(item->cr.message, sizeof item->cr.message, "%s", message ? message : "");
    item->cr.audit = audit ? json_dumps(audit, JSON_COMPACT) : NULL;
    push_inbox(gw, item);
}

void gateway_drain_inbox(gateway *gw) {
    pthread_mutex_lock(&gw->inbox_mu);
    inbox_item *list = gw->inbox_head;
    gw->inbox_head = gw->inbox_tail = NULL;
    pthread_mutex_unlock(&gw->inbox_mu);
    while (list) {
        inbox_item *next = list->next;
        if (list->kind == INBOX_BACKEND) gateway_on_backend_event(gw, &list->ev);
        else if (list->kind == INBOX_REDIS) gateway_on_redis_result(gw, &list->rr);
        else gateway_api_on_console(gw, &list->cr);
        duel_backend_result_free(list->ev.result);
        free(list->rr.json);
        free(list->cr.audit);
        free(list);
        list = next;
    }
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

/* Every stats_interval_ms: this gateway's duel:stats entry, to the console thread. */
static void take_stats_entry(gateway *gw, double now) {
    if (gw->cfg.stats_interval_ms <= 0 || now < gw->next_stats_entry) return;
    gw->next_stats_entry = now + gw->cfg.stats_interval_ms / 1000.0;
    gateway_rollout_refresh(gw); /* the revision reported is the one served even while idle */
    redis_worker_stats rs;
    redis_worker_get_stats(gw->redis, &rs);
    snapshot_loader_stats ls = {.publish_to_serve_s = NAN, .vote_to_serving_s = NAN};
    if (gw->loader) snapshot_loader_get_stats(gw->loader, &ls);
    serving_gauges g = {
        .version = gw->backend.serving_version ? gw->backend.serving_version(gw->backend.impl) : 0,
        .queue_depth = (long long)gw->backend.queue_depth(gw->backend.impl),
        .spill_pending = (long long)rs.spill_pending,
        .snapshots_rejected = (long long)ls.rejected,
        .rollout_revision = gw->rollout.active ? gw->rollout.spec.revision : 0,
        .publish_to_serve_s = ls.publish_to_serve_s,
        .vote_to_serving_s = ls.vote_to_serving_s,
        .redis_up = rs.connected};
    int64_t interval_ms = 0;
    char *data = serving_stats_take(&gw->stats, now, &g, &interval_ms);
    console_submit_entry(gw->console, data, duel_time_unix_ms(), interval_ms);
}

static void housekeeping(lws_sorted_usec_list_t *sul) {
    gateway *gw = lws_container_of(sul, gateway, sul);
    double now = duel_time_seconds();
    take_stats_entry(gw, now);
    gateway_rollout_refresh(gw); /* the revision in /metrics follows without a new conversation */
    duel_table_expire(&gw->duels, now, gw->cfg.duel_retention_s, (size_t)gw->cfg.max_duels,
                      (size_t)gw->cfg.max_duel_bytes);
    conversation_cache_evict(&gw->convs, now, CONV_CACHE_SOFT_MAX, CONV_IDLE_S);
    lws_sul_schedule(gw->ctx, 0, &gw->sul, housekeeping, HOUSEKEEPING_US);
}

int gateway_create(const gateway_config *cfg, duel_backend *backend, gateway **out,
                   duel_error *err) {
    *out = NULL;
    gateway *gw = calloc(1, sizeof *gw);
    if (!gw) {
        if (backend->destroy) backend->destroy(backend->impl);
        return duel_error_set(err, DUEL_ENOMEM, "gateway: out of memory");
    }
    gw->cfg = *cfg;
    gw->backend = *backend;
    memset(backend, 0, sizeof *backend);
    pthread_mutex_init(&gw->inbox_mu, NULL);
    str_map_init(&gw->sessions);
    str_map_init(&gw->addrs);
    conversation_cache_init(&gw->convs);
    duel_table_init(&gw->duels);
    str_map_init(&gw->api_waiting);
    admin_auth_init(&gw->auth);
    serving_stats_init(&gw->stats, duel_time_seconds());
    gw->next_stats_entry = duel_time_seconds() + cfg->stats_interval_ms / 1000.0;
    gw->knobs = cfg->knobs;
    console_serving_params(&gw->knobs, &gw->params);
    int rc = gateway_scan_web_root(gw, err);
    if (rc) goto fail;
    /* The admin API's tokens: DUEL_TOKENS, then gateway.tokens_file. None: every /api request
     * is refused (401), the dashboard cannot sign in; the rest serves as usual. */
    if (cfg->tokens && cfg->tokens[0] && (rc = admin_auth_add(&gw->auth, cfg->tokens, "DUEL_TOKENS", err)))
        goto fail;
    if (cfg->tokens_file[0] && (rc = admin_auth_add_file(&gw->auth, cfg->tokens_file, err))) goto fail;

    if (!cfg->spill_path[0]) {
        rc = duel_error_set(err, DUEL_EINVAL, "gateway: no spill log path (gateway.spill_path)");
        goto fail;
    }
    redis_worker_config rcfg = {
        .link = &gw->cfg.redis_link, .host = cfg->redis_host, .port = cfg->redis_port,
        .timeout_ms = cfg->redis_timeout_ms,
        .retry_ms = 250, .spill_path = cfg->spill_path, .stream_key = gateway_vote_stream(gw),
        .conversation_ttl_s = cfg->conversation_ttl_s, .vote_dedup_ttl_s = 7 * 86400,
        .rollout_poll_ms = 5000};
    if ((rc = redis_worker_create(&rcfg, redis_sink, gw, &gw->redis, err))) goto fail;

    for (int i = 0; i < cfg->n_trusted_proxies; i++)
        if (!http_cidr_parse(cfg->trusted_proxies[i], &gw->trusted_proxies[gw->n_trusted_proxies++])) {
            rc = duel_error_set(err, DUEL_EINVAL, "gateway.trusted_proxies[%d] = \"%s\" is not an "
                                "address or a CIDR range", i, cfg->trusted_proxies[i]);
            goto fail;
        }
    if (!cfg->tls_cert[0] != !cfg->tls_key[0]) {
        rc = duel_error_set(err, DUEL_EINVAL, "gateway.tls_cert and gateway.tls_key go together");
        goto fail;
    }
    /* lws would only say "vhost creation failed" for a file it cannot read */
    if (cfg->tls_cert[0] && (access(cfg->tls_cert, R_OK) || access(cfg->tls_key, R_OK))) {
        rc = duel_error_set(err, DUEL_EIO, "gateway: cannot read gateway.tls_cert \"%s\" or "
                            "gateway.tls_key \"%s\"", cfg->tls_cert, cfg->tls_key);
        goto fail;
    }
    lws_set_log_level(LLL_ERR, NULL);
    gw->protocols[0] = (struct lws_protocols){"http", gateway_http_callback, gateway_http_pss_size(),
                                              0, 0, NULL, 0};
    gw->protocols[1] = (struct lws_protocols){GATEWAY_PROTOCOL_NAME, gateway_ws_callback, sizeof(session *),
                                              8192, 0, NULL, 0};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_DISABLE_IPV6;
    if (cfg->tls_cert[0]) info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.user = gw;
    info.port = CONTEXT_PORT_NO_LISTEN;
    /* Room for headers up to twice max_header_bytes, so that a request over the limit still
     * reaches http.c and gets 431; past this room lws itself drops the connection. */
    info.max_http_header_data2 = (unsigned)cfg->max_header_bytes * 2;
    info.timeout_secs = (unsigned)cfg->hello_timeout_s; /* see vinfo.timeout_secs */
    int fd_share = lws_fd_share();
    info.fd_limit_per_thread = (unsigned)fd_share;
    gw->max_connections = fd_share - fd_share / FD_HTTP_SHARE - 1;
    if (cfg->max_connections <= gw->max_connections) gw->max_connections = cfg->max_connections;
    else
        fprintf(stderr, "duel serve: gateway.max_connections = %d is more than the descriptor "
                        "limit allows (ulimit -n); %d websockets at most\n",
                cfg->max_connections, gw->max_connections);
    gw->metrics.max_connections = gw->max_connections;
    gw->ctx = lws_create_context(&info);
    if (!gw->ctx) {
        rc = duel_error_set(err, DUEL_EIO, "gateway: lws_create_context failed");
        goto fail;
    }
    gw->ctx_alive = true;
    struct lws_context_creation_info vinfo;
    memset(&vinfo, 0, sizeof vinfo);
    vinfo.vhost_name = "duel";
    vinfo.port = cfg->port;
    vinfo.iface = (cfg->bind[0] && strcmp(cfg->bind, "0.0.0.0") != 0) ? cfg->bind : NULL;
    vinfo.protocols = gw->protocols;
    vinfo.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    if (cfg->tls_cert[0]) { /* the port speaks TLS only: https and wss (lws looks for the
                               option on the vhost too: without it the vhost stays plain) */
        vinfo.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        vinfo.ssl_cert_filepath = cfg->tls_cert;
        vinfo.ssl_private_key_filepath = cfg->tls_key;
    }
    /* An HTTP request or upgrade still unfinished this long after the connection opened is
     * dropped (a slowloris upgrade: lws arms these at accept, timeout_secs_ah_idle while the
     * headers come in, and bytes dripping in do not extend them); the websocket's own hello time
     * has the same length. */
    vinfo.timeout_secs = (unsigned)cfg->hello_timeout_s;
    vinfo.keepalive_timeout = cfg->hello_timeout_s;
    vinfo.timeout_secs_ah_idle = (unsigned)cfg->hello_timeout_s;
    gw->vh = lws_create_vhost(gw->ctx, &vinfo);
    if (!gw->vh) {
        rc = duel_error_set(err, DUEL_EIO, "gateway: cannot listen on %s:%d (in use?%s)",
                            cfg->bind, cfg->port,
                            cfg->tls_cert[0] ? " or a bad TLS certificate or key" : "");
        goto fail;
    }
    gw->port = lws_get_vhost_listen_port(gw->vh);
    {
        char host[64] = "localhost", instance[STATS_INSTANCE_MAX];
        gethostname(host, sizeof host - 1);
        snprintf(instance, sizeof instance, "serve@%.60s:%d", host, gw->port);
        for (char *p = instance; *p; p++) /* the entries' name rule (common/stats.h) */
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                  *p == '_' || *p == '.' || *p == ':' || *p == '@' || *p == '-'))
                *p = '_';
        console_config ccfg = {.link = &gw->cfg.redis_link, .host = cfg->redis_host, .port = cfg->redis_port,
                               .timeout_ms = cfg->redis_timeout_ms, .prefix = "duel:",
                               .instance = instance, .stats_max_entries = cfg->stats_max_entries,
                               .knobs_poll_ms = cfg->knobs_poll_ms,
                               .rollout_max_arms = cfg->rollout_max_arms,
                               .rollout_controller_tick_ms = cfg->rollout_controller_tick_ms,
                               .defaults = cfg->knobs,
                               .done = console_done, .ctx = gw};
        if ((rc = console_create(&ccfg, &gw->console, err))) goto fail;
    }
    if ((rc = gw->backend.start(gw->backend.impl, backend_sink, gw, err))) goto fail;
    gw->backend_started = true;
    if (cfg->snapshot_loader) {
        snapshot_loader_config lcfg = {.link = &gw->cfg.redis_link, .host = cfg->redis_host, .port = cfg->redis_port,
                                       .timeout_ms = cfg->redis_timeout_ms,
                                       .poll_ms = cfg->snapshot_poll_ms};
        if ((rc = snapshot_loader_create(&lcfg, &gw->backend, &gw->loader, err))) goto fail;
    }
    lws_sul_schedule(gw->ctx, 0, &gw->sul, housekeeping, HOUSEKEEPING_US);
    *out = gw;
    return DUEL_OK;
fail:
    gateway_destroy(gw);
    return rc;
}

int gateway_port(const gateway *gw) { return gw->port; }

const char *gateway_vote_stream(const gateway *gw) {
    return gw->backend.trainable ? GATEWAY_VOTE_STREAM : GATEWAY_TEST_VOTE_STREAM;
}

void gateway_stop(gateway *gw) {
    atomic_store(&gw->stop_requested, true);
    pthread_mutex_lock(&gw->inbox_mu);
    if (gw->ctx_alive) lws_cancel_service(gw->ctx);
    pthread_mutex_unlock(&gw->inbox_mu);
}

static void begin_drain(gateway *gw) {
    gw->draining = true;
    gw->drain_deadline = duel_time_seconds() + gw->cfg.shutdown_grace_ms / 1000.0;
    for (size_t b = 0; b < gw->sessions.n_buckets; b++)
        for (str_map_entry *e = gw->sessions.buckets[b]; e; e = e->next) {
            session *s = e->value;
            if (!s->duel) continue;
            gateway_cancel_generation(gw, s->duel);
            gateway_abort_duel(gw, s, s->duel, true);
        }
}

static bool outboxes_empty(gateway *gw) {
    for (size_t b = 0; b < gw->sessions.n_buckets; b++)
        for (str_map_entry *e = gw->sessions.buckets[b]; e; e = e->next)
            if (((session *)e->value)->out_head) return false;
    return true;
}

int gateway_run(gateway *gw, duel_error *err) {
    (void)err;
    for (;;) {
        if (atomic_load(&gw->stop_requested) && !gw->draining) begin_drain(gw);
        if (gw->draining) {
            bool votes_done = redis_worker_votes_in_flight(gw->redis) == 0;
            if ((votes_done && outboxes_empty(gw)) || duel_time_seconds() > gw->drain_deadline)
                break;
        }
        if (lws_service(gw->ctx, 0) < 0) break;
    }
    return DUEL_OK;
}

static void free_plain_entry(void *ctx, const char *key, void *value) {
    (void)ctx, (void)key;
    free(value);
}

void gateway_destroy(gateway *gw) {
    if (!gw) return;
    if (gw->ctx) {
        pthread_mutex_lock(&gw->inbox_mu);
        gw->ctx_alive = false;
        pthread_mutex_unlock(&gw->inbox_mu);
        lws_sul_cancel(&gw->sul);
        lws_context_destroy(gw->ctx); /* closes every connection (CLOSED callbacks run) */
        gw->ctx = NULL;
    }
    /* Votes still queued end up in Redis or the spill log before the thread exits; the last
     * stats entry too. */
    redis_worker_destroy(gw->redis);
    console_destroy(gw->console);
    snapshot_loader_destroy(gw->loader); /* before the backend it installs into */
    if (gw->backend.destroy) gw->backend.destroy(gw->backend.impl);
    while (gw->inbox_head) {
        inbox_item *i = gw->inbox_head;
        gw->inbox_head = i->next;
        duel_backend_result_free(i->ev.result);
        free(i->rr.json);
        free(i->cr.audit);
        free(i);
    }
    str_map_free(&gw->api_waiting);
    admin_auth_free(&gw->auth);
    duel_table_free(&gw->duels);
    conversation_cache_free(&gw->convs);
    str_map_foreach(&gw->addrs, free_plain_entry, NULL);
    str_map_free(&gw->sessions);
    str_map_free(&gw->addrs);
    pthread_mutex_destroy(&gw->inbox_mu);
    free(gw);
}
