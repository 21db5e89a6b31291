/* http_route.c: method, path and Origin rules of the gateway's HTTP side (see http_route.h).
 * Invariant: a request reaches a handler only through http_route_request, and a static file only
 * by an exact match with one of the urls found at start, so no request byte ever reaches the
 * file system. */
#include "http_route.h"

#include <stdio.h>
#include <string.h>

static bool path_is(const char *path, size_t len, const char *want) {
    return len == strlen(want) && memcmp(path, want, len) == 0;
}

http_route http_route_request(http_method method, const char *path, size_t path_len,
                              const char *const *urls, int n_urls) {
    http_route r = {HTTP_ROUTE_NOT_FOUND, -1, NULL};
    const char *q = memchr(path, '?', path_len);
    if (q) path_len = (size_t)(q - path);
    if (path_len == 0 || path_len > HTTP_ROUTE_MAX_PATH || path[0] != '/') return r;
    bool api = path_len >= 5 && memcmp(path, "/api/", 5) == 0;
    if (api) {
        r.kind = HTTP_ROUTE_API;
    } else if (path_is(path, path_len, "/healthz")) {
        r.kind = HTTP_ROUTE_HEALTHZ;
    } else if (path_is(path, path_len, "/readyz")) {
        r.kind = HTTP_ROUTE_READYZ;
    } else if (path_is(path, path_len, "/metrics")) {
        r.kind = HTTP_ROUTE_METRICS;
    } else {
        const char *name = path;
        size_t name_len = path_len;
        if (path_is(path, path_len, "/")) name = "/index.html", name_len = 11;
        else if (path_is(path, path_len, "/ops")) name = "/ops.html", name_len = 9;
        for (int i = 0; i < n_urls; i++)
            if (path_is(name, name_len, urls[i])) {
                r.kind = HTTP_ROUTE_FILE;
                r.file = i;
            }
        if (r.kind != HTTP_ROUTE_FILE) return r; /* 404 whatever the method */
    }
    bool allowed = api ? method == HTTP_METHOD_GET || method == HTTP_METHOD_POST
                       : method == HTTP_METHOD_GET || method == HTTP_METHOD_HEAD;
    if (!allowed) {
        r.kind = HTTP_ROUTE_NOT_ALLOWED;
        r.file = -1;
        r.allow = api ? "GET, POST" : "GET, HEAD";
    }
    return r;
}

bool http_subprotocol_offered(const char *value, size_t len, const char *name) {
    size_t n = strlen(name), i = 0;
    while (i < len) {
        while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ',')) i++;
        size_t start = i;
        while (i < len && value[i] != ',' && value[i] != ' ' && value[i] != '\t') i++;
        if (i - start == n && memcmp(value + start, name, n) == 0) return true;
        while (i < len && value[i] != ',') i++; /* anything after a space up to the comma */
    }
    return false;
}

static bool origin_is(const char *origin, size_t len, const char *scheme, const char *host,
                      int port) {
    char want[300];
    int n = snprintf(want, sizeof want, "%s://%s:%d", scheme, host, port);
    return n > 0 && (size_t)n == len && memcmp(origin, want, len) == 0;
}

bool http_origin_allowed(const char *origin, size_t len, const char (*allowed)[256],
                         int n_allowed, const char *bind, int port) {
    for (int i = 0; i < n_allowed; i++)
        if (strlen(allowed[i]) == len && memcmp(origin, allowed[i], len) == 0) return true;
    if (n_allowed > 0) return false;
    /* The shipped config's behaviour: the page as served on this machine's loopback. */
    static const char *const LOOPBACK[] = {"127.0.0.1", "localhost", "[::1]"};
    static const char *const SCHEMES[] = {"http", "https"};
    for (int s = 0; s < 2; s++) {
        for (int h = 0; h < 3; h++)
            if (origin_is(origin, len, SCHEMES[s], LOOPBACK[h], port)) return true;
        if (bind && bind[0] && strcmp(bind, "0.0.0.0") != 0 && strcmp(bind, "127.0.0.1") != 0 &&
            origin_is(origin, len, SCHEMES[s], bind, port))
            return true;
    }
    return false;
}
