/* fuzz_http_route.c: libFuzzer target for the gateway's HTTP request rules (gateway/http_route.c):
 * method and path (with any query string) to a handler, the Origin allow-list and the
 * Sec-WebSocket-Protocol list. The input is split at its first two NUL bytes into a path, an
 * Origin and a protocol header value (any bytes each); its first byte picks the method. The
 * invariants: a static file is reached only by an exact url (so no "..", no NUL, nothing of the
 * query string), 405 always carries an Allow header naming GET, a path longer than
 * HTTP_ROUTE_MAX_PATH never routes, an Origin is allowed only when it equals an allowed one
 * byte for byte, and the subprotocol list answers as a plain token scan does. The protocol
 * header's bytes are also an X-Forwarded-For value behind a trusted proxy: the client address
 * is always a NUL-terminated address that parses again, and a peer that is not trusted is its
 * own client whatever the header says. Seeds in
 * corpus/fuzz_http_route. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_route.h"

static const char *const URLS[] = {"/index.html", "/app.js", "/style.css", "/ops.html", "/ops.js",
                                   "/vendor/uPlot.iife.min.js"};

/* The reference: does the comma-separated list hold the token exactly (spaces trimmed)? */
static int offered_slow(const char *v, size_t len, const char *name) {
    size_t i = 0, n = strlen(name);
    while (i <= len) {
        size_t j = i;
        while (j < len && v[j] != ',') j++;
        size_t a = i, b = j;
        while (a < b && (v[a] == ' ' || v[a] == '\t')) a++;
        size_t e = a;
        while (e < b && v[e] != ' ' && v[e] != '\t') e++;
        if (e - a == n && memcmp(v + a, name, n) == 0) return 1;
        i = j + 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    http_method method = (http_method)(data[0] % 4);
    const char *rest = (const char *)data + 1;
    size_t left = size - 1;
    const char *parts[3] = {rest, "", ""};
    size_t lens[3] = {left, 0, 0};
    for (int p = 0; p < 2; p++) {
        const char *nul = memchr(parts[p], '\0', lens[p]);
        if (!nul) break;
        parts[p + 1] = nul + 1;
        lens[p + 1] = lens[p] - (size_t)(nul + 1 - parts[p]);
        lens[p] = (size_t)(nul - parts[p]);
    }
    http_route r = http_route_request(method, parts[0], lens[0], URLS, 6);
    size_t path_len = lens[0];
    const char *q = memchr(parts[0], '?', lens[0]);
    if (q) path_len = (size_t)(q - parts[0]);
    switch (r.kind) {
    case HTTP_ROUTE_FILE: {
        if (r.file < 0 || r.file >= 6) abort();
        int alias = (path_len == 1 && r.file == 0) || (path_len == 4 && r.file == 3);
        if (!alias && (path_len != strlen(URLS[r.file]) ||
                       memcmp(parts[0], URLS[r.file], path_len) != 0))
            abort();
        if (method != HTTP_METHOD_GET && method != HTTP_METHOD_HEAD) abort();
        break;
    }
    case HTTP_ROUTE_NOT_ALLOWED:
        if (!r.allow || strncmp(r.allow, "GET, ", 5) != 0) abort();
        if (method == HTTP_METHOD_GET) abort();
        break;
    case HTTP_ROUTE_API:
        if (path_len < 5 || memcmp(parts[0], "/api/", 5) != 0) abort();
        break;
    default: break;
    }
    if (r.kind != HTTP_ROUTE_NOT_FOUND && path_len > HTTP_ROUTE_MAX_PATH) abort();

    static const char allowed[2][256] = {"https://chat.example", "http://127.0.0.1:8080"};
    int ok = http_origin_allowed(parts[1], lens[1], allowed, 2, "0.0.0.0", 8080);
    int want = (lens[1] == 20 && memcmp(parts[1], allowed[0], 20) == 0) ||
               (lens[1] == 21 && memcmp(parts[1], allowed[1], 21) == 0);
    if (ok != want) abort();
    /* the loopback default with no list: never more than the six loopback origins */
    if (http_origin_allowed(parts[1], lens[1], allowed, 0, "127.0.0.1", 8080) &&
        (lens[1] < 17 || memcmp(parts[1] + lens[1] - 5, ":8080", 5) != 0))
        abort();
    if (http_subprotocol_offered(parts[2], lens[2], "duel.v1") !=
        offered_slow(parts[2], lens[2], "duel.v1"))
        abort();

    http_cidr trusted[2];
    if (!http_cidr_parse("127.0.0.1", &trusted[0]) || !http_cidr_parse("10.0.0.0/8", &trusted[1]))
        abort();
    char client[HTTP_ADDRESS_MAX];
    http_client_address("127.0.0.1", parts[2], lens[2], trusted, 2, client);
    http_cidr again;
    if (memchr(client, '\0', sizeof client) == NULL || !http_cidr_parse(client, &again)) abort();
    http_client_address("192.0.2.1", parts[2], lens[2], trusted, 2, client);
    if (strcmp(client, "192.0.2.1") != 0) abort();
    return 0;
}
