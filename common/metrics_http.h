/* metrics_http.h: a minimal HTTP/1.0 server for one document, GET /metrics, on its own thread:
 * what `duel train --metrics HOST:PORT` answers Prometheus with (the gateway serves its /metrics
 * through lws). Each connection is read (at most METRICS_HTTP_MAX_REQUEST bytes, waiting at most
 * METRICS_HTTP_TIMEOUT_MS), answered from render() and closed: a scrape is one small request, so
 * connections are served one at a time. Other paths get 404, other methods 405.
 *
 * Threads: render is called on the server's thread; it must be thread-safe against whatever
 * updates the figures it renders. */
#ifndef DUEL_METRICS_HTTP_H
#define DUEL_METRICS_HTTP_H

#include <stddef.h>

#include "error.h"

#define METRICS_HTTP_MAX_REQUEST 8192
#define METRICS_HTTP_TIMEOUT_MS 2000

/* The document: malloc'd text (the server frees it), *len its length; NULL: 500. */
typedef char *(*metrics_http_render)(void *ctx, size_t *len);

typedef struct metrics_http metrics_http;

/* Listens on host:port (port 0: a free one, see metrics_http_port) and starts the thread.
 * DUEL_EIO naming the address when it cannot listen. */
int metrics_http_start(const char *host, int port, metrics_http_render render, void *ctx,
                       metrics_http **out, duel_error *err);
int metrics_http_port(const metrics_http *m);
/* Stops the thread and closes the socket. NULL is a no-op. */
void metrics_http_stop(metrics_http *m);

#endif
