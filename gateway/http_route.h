/* http_route.h: the one place where an HTTP request to the gateway is judged before anything
 * serves it: its method and path (which handler, or 404, or 405 with the Allow header), a
 * browser's Origin header against the allow-list (gateway.allowed_origins; empty: the loopback
 * origins of the listening port), and the client's address behind trusted proxies
 * (gateway.trusted_proxies, X-Forwarded-For). Pure
 * functions of their arguments (no lws, no state), so that the fuzz target
 * (tests/fuzz/fuzz_http_route.c) drives them with arbitrary bytes. */
#ifndef DUEL_GATEWAY_HTTP_ROUTE_H
#define DUEL_GATEWAY_HTTP_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

typedef enum http_method {
    HTTP_METHOD_GET,
    HTTP_METHOD_HEAD,
    HTTP_METHOD_POST,
    HTTP_METHOD_OTHER, /* PUT, DELETE, PATCH, OPTIONS, CONNECT, ... */
} http_method;

typedef enum http_route_kind {
    HTTP_ROUTE_HEALTHZ,
    HTTP_ROUTE_READYZ,
    HTTP_ROUTE_METRICS,
    HTTP_ROUTE_API,          /* /api/...: GET and POST, the admin API's business */
    HTTP_ROUTE_FILE,         /* one of the static files (file: its index in the list) */
    HTTP_ROUTE_NOT_FOUND,    /* 404 */
    HTTP_ROUTE_NOT_ALLOWED,  /* 405 with the Allow header `allow` */
} http_route_kind;

typedef struct http_route {
    http_route_kind kind;
    int file;          /* HTTP_ROUTE_FILE: index into the urls given */
    const char *allow; /* HTTP_ROUTE_NOT_ALLOWED: "GET, HEAD" or "GET, POST" */
} http_route;

/* Paths longer than this are not ours (404): no route is near it. */
#define HTTP_ROUTE_MAX_PATH 256

/* Routes method + path (path[0..path_len), any bytes; a query string, "?..." to the end, plays
 * no part) against the fixed endpoints and the static files' urls (n_urls of
 * them, "/index.html" style; "/" is /index.html and "/ops" /ops.html). An unknown path is 404
 * whatever the method; a known one answers GET and HEAD (and /api/... GET and POST), any other
 * method 405. */
http_route http_route_request(http_method method, const char *path, size_t path_len,
                              const char *const *urls, int n_urls);

/* Whether a Sec-WebSocket-Protocol header value (value[0..len), any bytes: a comma-separated
 * list) offers the subprotocol `name`. */
bool http_subprotocol_offered(const char *value, size_t len, const char *name);

/* Whether a browser's Origin header (origin[0..len), any bytes) may open a websocket: exactly
 * one of allowed[0..n_allowed); with none configured, http:// or https:// of 127.0.0.1,
 * localhost or [::1] with the listening port, and of `bind` with the port when bind names one
 * address (not 0.0.0.0). Never the request's own Host header (DNS rebinding passes that). */
bool http_origin_allowed(const char *origin, size_t len, const char (*allowed)[256],
                         int n_allowed, const char *bind, int port);

/* An address range of gateway.trusted_proxies: "10.0.0.0/8", "192.168.1.7" (/32), "::1",
 * "fd00::/8". IPv4 is kept as its IPv4-mapped IPv6 form, so one comparison serves both. */
typedef struct http_cidr {
    unsigned char addr[16];
    int prefix_bits; /* 0..128 over the 16 bytes (an IPv4 /n is 96 + n) */
} http_cidr;

#define HTTP_ADDRESS_MAX 64 /* room for any address as inet_ntop writes it, and its NUL */

/* Parses text (NUL-terminated) as an address or a CIDR range; false when it is neither (bad
 * address, prefix out of range, bits set past the prefix are allowed and ignored). */
bool http_cidr_parse(const char *text, http_cidr *out);

/* The client's address for the per-address limits (written to out, HTTP_ADDRESS_MAX bytes):
 * the peer's own address unless the peer is in trusted[0..n_trusted); then X-Forwarded-For's
 * hops (xff[0..xff_len), any bytes; NULL or empty: none) are read from the right, the last one
 * the proxies appended first, and the first hop that is not itself a trusted proxy is the
 * client. A hop that is not an address ends the walk at the trusted hop before it (what lies to
 * its left was written by whoever the trusted proxy talked to, and cannot be believed). The
 * result is normalised (inet_ntop; IPv4-mapped IPv6 as IPv4), so one client has one key. A
 * peer that is not an address at all is copied as it is. */
void http_client_address(const char *peer, const char *xff, size_t xff_len,
                         const http_cidr *trusted, int n_trusted, char *out);

#endif
