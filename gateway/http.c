/* http.c: the gateway's plain HTTP side: the static files of the chat page and of the operator
 * console (a fixed list of names found at start in web_root, and uPlot's two files in
 * gateway.uplot_dir served as /vendor/..., so no request path ever reaches the file system;
 * /ops is ops.html), /healthz, /readyz (draining, Redis up, votes waiting in the spill log) and
 * Prometheus /metrics (metrics.c renders; the Redis worker's and the snapshot loader's stats are
 * read here, and the per arm and strategy series of serving_stats.c follow). /api/... goes to
 * admin_api.c (GET answered at once; a POST's body gathered here first). Which handler answers
 * is http_route.h's decision (404, 405 with Allow); HEAD gets the headers alone; headers over
 * gateway.max_header_bytes get 431; a websocket upgrade without the duel.v1 subprotocol is
 * refused before it becomes a connection nobody counts. It is also the lws
 * protocol that receives the cancel-service wake-up, on which server.c's inbox is drained.
 *
 * Thread: the lws service thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "http_route.h"
#include "server_internal.h"
#include "text_buf.h"
#include "timer.h"

size_t gateway_http_pss_size(void) { return sizeof(http_pss); }

static const char *mime_for(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return NULL;
    if (strcmp(dot, ".html") == 0) return "text/html; charset=utf-8";
    if (strcmp(dot, ".js") == 0) return "text/javascript; charset=utf-8";
    if (strcmp(dot, ".css") == 0) return "text/css; charset=utf-8";
    if (strcmp(dot, ".svg") == 0) return "image/svg+xml";
    if (strcmp(dot, ".png") == 0) return "image/png";
    if (strcmp(dot, ".ico") == 0) return "image/x-icon";
    if (strcmp(dot, ".json") == 0) return "application/json";
    return NULL;
}

/* Adds dir/name as url when it is a regular file. */
static void add_file(gateway *gw, const char *dir, const char *name, const char *url) {
    if (gw->n_files >= GATEWAY_MAX_STATIC_FILES) return;
    static_file *f = &gw->files[gw->n_files];
    snprintf(f->path, sizeof f->path, "%s/%s", dir, name);
    struct stat sb;
    if (stat(f->path, &sb) || !S_ISREG(sb.st_mode)) return;
    snprintf(f->url, sizeof f->url, "%s", url);
    f->mime = mime_for(name);
    gw->n_files++;
}

int gateway_scan_web_root(gateway *gw, duel_error *err) {
    static const char *const NAMES[] = {"index.html", "app.js", "style.css", "ops.html", "ops.js",
                                        "ops.css", "favicon.svg", "favicon.ico"};
    for (size_t i = 0; i < sizeof NAMES / sizeof NAMES[0]; i++) {
        char url[80];
        snprintf(url, sizeof url, "/%s", NAMES[i]);
        add_file(gw, gw->cfg.web_root, NAMES[i], url);
    }
    /* The console's charts: uPlot from npm (node_modules, or wherever gateway.uplot_dir says),
     * never from a CDN. Missing: the page says so and shows its tables. */
    int before = gw->n_files;
    add_file(gw, gw->cfg.uplot_dir, "uPlot.iife.min.js", "/vendor/uPlot.iife.min.js");
    add_file(gw, gw->cfg.uplot_dir, "uPlot.min.css", "/vendor/uPlot.min.css");
    if (gw->n_files - before < 2 && gw->cfg.uplot_dir[0])
        fprintf(stderr, "duel serve: uPlot not found in %s (gateway.uplot_dir; run npm ci): the "
                        "console at /ops shows tables without charts\n",
                gw->cfg.uplot_dir);
    if (gw->n_files == 0)
        return duel_error_set(err, DUEL_ENOTFOUND, "%s: no web files (index.html) found",
                              gw->cfg.web_root);
    return DUEL_OK;
}

int gateway_http_respond(struct lws *wsi, http_pss *pss, unsigned int status, const char *ctype,
                         const char *body, size_t len, const char *extra_name,
                         const char *extra_value) {
    free(pss->body);
    pss->body = malloc(LWS_PRE + len + 1);
    if (!pss->body) return -1;
    memcpy(pss->body + LWS_PRE, body, len);
    pss->len = pss->head ? 0 : len; /* content-length says len either way */
    unsigned char headers[LWS_PRE + 768], *start = headers + LWS_PRE, *p = start,
                                          *end = headers + sizeof headers - 1;
    if (lws_add_http_common_headers(wsi, status, ctype, (lws_filepos_t)len, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"x-content-type-options:",
                                    (const unsigned char *)"nosniff", 7, &p, end) ||
        (extra_name && lws_add_http_header_by_name(wsi, (const unsigned char *)extra_name,
                                                   (const unsigned char *)extra_value,
                                                   (int)strlen(extra_value), &p, end)) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    lws_callback_on_writable(wsi);
    return 0;
}

static int http_respond(struct lws *wsi, http_pss *pss, unsigned int status, const char *ctype,
                        const char *body, size_t len) {
    return gateway_http_respond(wsi, pss, status, ctype, body, len, NULL, NULL);
}

static const char SECURITY_HEADERS[] =
    "x-content-type-options: nosniff\r\n"
    "referrer-policy: no-referrer\r\n"
    "x-frame-options: DENY\r\n"
    "content-security-policy: default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'\r\n";

static long long serving_version(gateway *gw) {
    return gw->backend.serving_version ? gw->backend.serving_version(gw->backend.impl) : 0;
}

static int serve_path(gateway *gw, struct lws *wsi, http_pss *pss, const char *path,
                      http_method method) {
    const char *urls[GATEWAY_MAX_STATIC_FILES];
    for (int i = 0; i < gw->n_files; i++) urls[i] = gw->files[i].url;
    http_route route = http_route_request(method, path, strlen(path), urls, gw->n_files);
    switch (route.kind) {
    case HTTP_ROUTE_NOT_FOUND: return http_respond(wsi, pss, 404, "text/plain", "not found\n", 10);
    case HTTP_ROUTE_NOT_ALLOWED: {
        char body[64];
        int n = snprintf(body, sizeof body, "method not allowed (allowed: %s)\n", route.allow);
        return gateway_http_respond(wsi, pss, 405, "text/plain", body, (size_t)n, "allow:",
                                    route.allow);
    }
    case HTTP_ROUTE_API:
        return method == HTTP_METHOD_POST ? gateway_api_post_start(gw, wsi, pss, path)
                                          : gateway_api_get(gw, wsi, pss, path);
    case HTTP_ROUTE_FILE: {
        const static_file *f = &gw->files[route.file];
        int rc = lws_serve_http_file(wsi, f->path, f->mime, SECURITY_HEADERS,
                                     (int)strlen(SECURITY_HEADERS));
        if (rc < 0 || (rc > 0 && lws_http_transaction_completed(wsi))) return -1;
        return 0;
    }
    default: break;
    }
    if (route.kind == HTTP_ROUTE_HEALTHZ) {
        char body[64];
        int n = snprintf(body, sizeof body, "ok\npolicy_version: %lld\n", serving_version(gw));
        return http_respond(wsi, pss, 200, "text/plain", body, (size_t)n);
    }
    if (route.kind == HTTP_ROUTE_READYZ) {
        redis_worker_stats st;
        redis_worker_get_stats(gw->redis, &st);
        char body[128];
        int n = snprintf(body, sizeof body, "%s\nredis: %s\nspill_pending: %llu\n",
                         gw->draining ? "draining" : "ready", st.connected ? "up" : "down",
                         (unsigned long long)st.spill_pending);
        return http_respond(wsi, pss, gw->draining ? 503 : 200, "text/plain", body, (size_t)n);
    }
    {
        redis_worker_stats st;
        redis_worker_get_stats(gw->redis, &st);
        size_t n = 0;
        snapshot_loader_stats ls;
        if (gw->loader) snapshot_loader_get_stats(gw->loader, &ls);
        gw->metrics.finished_duel_bytes = (int64_t)gw->duels.finished_bytes;
        gateway_rollout_refresh(gw); /* duel_rollout_revision: the spec in effect now */
        char *text = metrics_render(&gw->metrics, &st, gw->backend.queue_depth(gw->backend.impl),
                                    metrics_tokens_per_second(&gw->metrics, duel_time_seconds()),
                                    gw->loader ? &ls : NULL, serving_version(gw), &n);
        if (!text) return -1;
        text_buf b = {0};
        text_buf_printf(&b, "%s", text);
        free(text);
        prom_gauge(&b, "duel_gateway_console_redis_up",
                   "1 when the console thread (stats, knobs, audit) reaches Redis.",
                   console_connected(gw->console) ? 1 : 0);
        if (gw->cfg.stats_interval_ms > 0) serving_stats_render(&gw->stats, &b);
        text = text_buf_take(&b, &n);
        if (!text) return -1;
        int rc = http_respond(wsi, pss, 200, "text/plain; version=0.0.4", text, n);
        free(text);
        return rc;
    }
}

static http_method request_method(struct lws *wsi) {
    if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0) return HTTP_METHOD_GET;
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0) return HTTP_METHOD_HEAD;
    if (lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0) return HTTP_METHOD_POST;
    return HTTP_METHOD_OTHER;
}

/* The request's headers as lws parsed them: every header it knows by name (headers it does not
 * know count toward lws's own buffer, twice gateway.max_header_bytes, past which it drops the
 * connection without an answer). */
static size_t header_bytes(struct lws *wsi) {
    size_t n = 0;
    for (int t = 0; t < WSI_TOKEN_COUNT; t++) {
        int len = lws_hdr_total_length(wsi, (enum lws_token_indexes)t);
        if (len > 0) n += (size_t)len;
    }
    return n;
}

/* A websocket upgrade reaches lws's HTTP protocol first (with or without a subprotocol, lws asks
 * here): only one that offers duel.v1 may go on; any other is hung up on (lws 4.1 sends no
 * status we could set at this point) and counted as rejected. */
static int confirm_upgrade(gateway *gw, struct lws *wsi, const char *to) {
    char offered[256] = "";
    int n = lws_hdr_copy(wsi, offered, sizeof offered, WSI_TOKEN_PROTOCOL);
    if (to && strcmp(to, "websocket") == 0 && n > 0 &&
        http_subprotocol_offered(offered, (size_t)n, GATEWAY_PROTOCOL_NAME))
        return 0;
    gw->metrics.connections_rejected++;
    return -1;
}

int gateway_http_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
                          void *in, size_t len) {
    gateway *gw = lws_context_user(lws_get_context(wsi));
    http_pss *pss = user;
    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        gateway_drain_inbox(gw);
        return 0;
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: return confirm_upgrade(gw, wsi, in);
    case LWS_CALLBACK_HTTP: {
        /* a keep-alive connection's next request: nothing of the last one is left */
        free(pss->body);
        free(pss->request);
        memset(pss, 0, sizeof *pss);
        http_method method = request_method(wsi);
        pss->head = method == HTTP_METHOD_HEAD;
        if (header_bytes(wsi) > (size_t)gw->cfg.max_header_bytes) {
            char body[80];
            int n = snprintf(body, sizeof body, "request headers over %d bytes\n",
                             gw->cfg.max_header_bytes);
            return gateway_http_respond(wsi, pss, 431, "text/plain", body, (size_t)n,
                                        "connection:", "close");
        }
        return serve_path(gw, wsi, pss, in, method);
    }
    case LWS_CALLBACK_HTTP_BODY:
        return pss->is_api_post ? gateway_api_post_body(gw, pss, in, len) : 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return pss->is_api_post ? gateway_api_post_done(gw, wsi, pss) : 0;
    case LWS_CALLBACK_HTTP_WRITEABLE: {
        if (!pss->body) return 0;
        int n = pss->len ? lws_write(wsi, pss->body + LWS_PRE, pss->len, LWS_WRITE_HTTP_FINAL) : 0;
        free(pss->body);
        pss->body = NULL;
        if (n < (int)pss->len) return -1;
        if (lws_http_transaction_completed(wsi)) return -1;
        return 0;
    }
    case LWS_CALLBACK_HTTP_FILE_COMPLETION:
        if (lws_http_transaction_completed(wsi)) return -1;
        return 0;
    case LWS_CALLBACK_CLOSED_HTTP:
        if (pss) {
            gateway_api_closed(gw, pss);
            free(pss->body);
            free(pss->request);
            pss->body = NULL;
            pss->request = NULL;
        }
        return 0;
    default: break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}
