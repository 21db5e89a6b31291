/* http_route.c: method, path and Origin rules of the gateway's HTTP side (see http_route.h).
 * Invariant: a request reaches a handler only through http_route_request, and a static file only
 * by an exact match with one of the urls found at start, so no request byte ever reaches the
 * file system; X-Forwarded-For is believed only from a trusted proxy, and only as far back as the
 * hops that are trusted proxies themselves. */
#include "http_route.h"

#include <arpa/inet.h>
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

/* ---- client address behind trusted proxies -------------------------------------------------- */

/* text[0..len) as an address (IPv4, IPv6, "[v6]"; IPv4 as its mapped IPv6 form). */
static bool parse_address(const char *text, size_t len, unsigned char out[16]) {
    char buf[HTTP_ADDRESS_MAX];
    while (len && (*text == ' ' || *text == '\t')) text++, len--;
    while (len && (text[len - 1] == ' ' || text[len - 1] == '\t')) len--;
    if (len >= 2 && text[0] == '[' && text[len - 1] == ']') text++, len -= 2;
    if (len == 0 || len >= sizeof buf || memchr(text, '\0', len)) return false;
    memcpy(buf, text, len);
    buf[len] = '\0';
    struct in_addr v4;
    if (inet_pton(AF_INET, buf, &v4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &v4, 4);
        return true;
    }
    return inet_pton(AF_INET6, buf, out) == 1;
}

static void format_address(const unsigned char a[16], char *out) {
    static const unsigned char MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, MAPPED, 12) == 0) inet_ntop(AF_INET, a + 12, out, HTTP_ADDRESS_MAX);
    else inet_ntop(AF_INET6, a, out, HTTP_ADDRESS_MAX);
}

bool http_cidr_parse(const char *text, http_cidr *out) {
    memset(out, 0, sizeof *out);
    const char *slash = strchr(text, '/');
    size_t len = slash ? (size_t)(slash - text) : strlen(text);
    if (!parse_address(text, len, out->addr)) return false;
    bool v4 = memchr(text, ':', len) == NULL;
    int max = v4 ? 32 : 128, bits = max;
    if (slash) {
        const char *p = slash + 1;
        if (!*p || strlen(p) > 3) return false;
        bits = 0;
        for (; *p; p++) {
            if (*p < '0' || *p > '9') return false;
            bits = bits * 10 + (*p - '0');
        }
        if (bits > max) return false;
    }
    out->prefix_bits = v4 ? 96 + bits : bits;
    return true;
}

static bool cidr_contains(const http_cidr *c, const unsigned char a[16]) {
    int full = c->prefix_bits / 8, rest = c->prefix_bits % 8;
    if (memcmp(c->addr, a, (size_t)full) != 0) return false;
    if (rest == 0) return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (c->addr[full] & mask) == (a[full] & mask);
}

static bool trusted_address(const unsigned char a[16], const http_cidr *trusted, int n) {
    for (int i = 0; i < n; i++)
        if (cidr_contains(&trusted[i], a)) return true;
    return false;
}

void http_client_address(const char *peer, const char *xff, size_t xff_len,
                         const http_cidr *trusted, int n_trusted, char *out) {
    unsigned char hop[16];
    if (!parse_address(peer, strlen(peer), hop)) {
        snprintf(out, HTTP_ADDRESS_MAX, "%s", peer);
        return;
    }
    if (xff && trusted_address(hop, trusted, n_trusted)) {
        size_t end = xff_len;
        while (end > 0) {
            size_t start = end;
            while (start > 0 && xff[start - 1] != ',') start--;
            unsigned char next[16];
            if (!parse_address(xff + start, end - start, next)) break;
            memcpy(hop, next, sizeof hop);
            if (!trusted_address(hop, trusted, n_trusted)) break;
            end = start ? start - 1 : 0;
        }
    }
    format_address(hop, out);
}
