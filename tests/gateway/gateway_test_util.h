/* gateway_test_util.h: what the gateway's socket tests share: a redis-server (common/redis_server.h) on a free
 * loopback port in a temporary directory and stopped by pid, a gateway running in-process on its
 * own thread, and a small blocking WebSocket client (RFC 6455: masked client frames, fragments,
 * raw bytes for misbehaving-client tests). Header-only; each test file includes it once. */
#ifndef DUEL_TEST_GATEWAY_UTIL_H
#define DUEL_TEST_GATEWAY_UTIL_H

#include "test_helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#include "gateway.h"
#include "redis_server.h"

static inline double tu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline void tu_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline int tu_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- redis-server ----------------------------------------------------------------------- */

typedef struct tu_redis {
    redis_server server; /* common/redis_server.h: the project's one launcher */
    int port;            /* the server's (set by tu_redis_start) */
    char dir[512];
    bool durable; /* appendonly + appendfsync always: acknowledged writes survive SIGKILL */
} tu_redis;

static inline redisContext *tu_redis_connect(const tu_redis *r) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* Starts a fresh server (port 0) or the same one again on its port and folder. */
static inline void tu_redis_start(tu_redis *r) {
    duel_error err = {0};
    int rc;
    if (r->port == 0) {
        rc = redis_server_start(&r->server, test_env("DUEL_TEST_TMP", "/tmp"), "redis",
                                r->durable ? REDIS_SERVER_AOF_ALWAYS : REDIS_SERVER_EPHEMERAL, &err);
        r->port = r->server.port;
        snprintf(r->dir, sizeof r->dir, "%s", r->server.dir);
    } else {
        rc = redis_server_restart(&r->server, &err);
    }
    if (rc) fail_msg("%s", err.message);
}

static inline void tu_redis_stop(tu_redis *r, int sig) { redis_server_stop(&r->server, sig); }

/* One redis-server for a whole cmocka group:
 * cmocka_run_group_tests(tests, tu_group_redis_start, tu_group_redis_stop). */
static tu_redis tu_group_redis __attribute__((unused));

static inline int tu_group_redis_start(void **state) {
    (void)state;
    tu_redis_start(&tu_group_redis);
    return 0;
}

static inline int tu_group_redis_stop(void **state) {
    (void)state;
    tu_redis_stop(&tu_group_redis, SIGTERM);
    return 0;
}

static inline long long tu_redis_int(const tu_redis *r, const char *cmd) {
    redisContext *c = tu_redis_connect(r);
    assert_non_null(c);
    redisReply *reply = redisCommand(c, cmd);
    assert_non_null(reply);
    long long v = reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;
    freeReplyObject(reply);
    redisFree(c);
    return v;
}

/* ---- in-process gateway ----------------------------------------------------------------- */

typedef struct tu_gateway {
    gateway *gw;
    pthread_t thread;
    int port;
    char spill_path[1024];
} tu_gateway;

static inline void *tu_gateway_thread(void *arg) {
    tu_gateway *t = arg;
    gateway_run(t->gw, NULL);
    return NULL;
}

/* A test config: port 0, no streaming pause, limits generous unless the test lowers them. */
static inline void tu_gateway_config(gateway_config *cfg, const tu_redis *r) {
    gateway_config_defaults(cfg);
    cfg->port = 0;
    cfg->redis_port = r->port;
    cfg->redis_timeout_ms = 500;
    snprintf(cfg->web_root, sizeof cfg->web_root, "%s/gateway/web",
             test_env("DUEL_SOURCE_DIR", "."));
    char dir[512];
    test_make_temp_dir("gwspill", dir, sizeof dir);
    snprintf(cfg->spill_path, sizeof cfg->spill_path, "%s/spill.log", dir);
    cfg->stream_interval_ms = 0;
    cfg->asks_per_minute_connection = 100000;
    cfg->asks_per_minute_address = 1000000;
    cfg->connections_per_address = 100000;
    cfg->asks_pending_per_address = 100000;
}

/* A gateway with this backend (which it takes over) on its own thread. */
static inline void tu_gateway_start_backend(tu_gateway *t, const gateway_config *cfg,
                                            duel_backend *backend) {
    memset(t, 0, sizeof *t);
    duel_error err = {0};
    if (gateway_create(cfg, backend, &t->gw, &err)) fail_msg("gateway_create: %s", err.message);
    t->port = gateway_port(t->gw);
    snprintf(t->spill_path, sizeof t->spill_path, "%s", cfg->spill_path);
    assert_true(t->port > 0);
    assert_int_equal(pthread_create(&t->thread, NULL, tu_gateway_thread, t), 0);
}

/* The same with the test backend (step_ms between its progress events). */
static inline void tu_gateway_start(tu_gateway *t, const gateway_config *cfg, int step_ms) {
    duel_backend backend;
    backend_test_config bcfg = {.step_delay_ms = step_ms, .queue_capacity = 4096};
    assert_int_equal(backend_test_create(&bcfg, &backend, NULL), 0);
    tu_gateway_start_backend(t, cfg, &backend);
}

static inline void tu_gateway_stop(tu_gateway *t) {
    if (!t->gw) return;
    gateway_stop(t->gw);
    pthread_join(t->thread, NULL);
    gateway_destroy(t->gw);
    t->gw = NULL;
}

/* ---- WebSocket client ------------------------------------------------------------------- */

typedef struct ws_client {
    int fd;
    unsigned char buf[1 << 16];
    size_t len;
    /* Another transport (the wss test's TLS): reads what is there into buf (ws_fill's
     * contract) and writes all of data; NULL: the plain socket. */
    int (*fill)(struct ws_client *c, int timeout_ms);
    int (*write)(struct ws_client *c, const void *data, size_t n);
    void *io;
} ws_client;

static inline int tu_tcp_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static inline int tu_write_all(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads more bytes into the buffer; 0 ok, -1 timeout, -2 closed. */
static inline int ws_fill(ws_client *c, int timeout_ms) {
    if (c->len == sizeof c->buf) return -2;
    if (c->fill) return c->fill(c, timeout_ms);
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int pr = poll(&p, 1, timeout_ms);
    if (pr == 0) return -1;
    ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (r <= 0) return -2;
    c->len += (size_t)r;
    return 0;
}

/* The upgrade request on path ("/", or "/?client=ID" as the page sends behind a load balancer)
 * with extra header lines (NULL or "Name: value\r\n..."), and its answer, on c's connection
 * (plain or c->write's). Returns 101 on success, else the HTTP status (or -1). */
static inline int ws_upgrade_path(ws_client *c, int port, const char *path, const char *headers) {
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: duel.v1\r\n%s\r\n",
                     path, port, headers ? headers : "");
    if (c->write ? c->write(c, req, (size_t)n) : tu_write_all(c->fd, req, (size_t)n)) return -1;
    for (;;) {
        unsigned char *end = NULL;
        for (size_t i = 0; i + 3 < c->len; i++)
            if (memcmp(c->buf + i, "\r\n\r\n", 4) == 0) {
                end = c->buf + i + 4;
                break;
            }
        if (end) {
            int status = -1;
            sscanf((const char *)c->buf, "HTTP/1.1 %d", &status);
            size_t rest = c->len - (size_t)(end - c->buf);
            memmove(c->buf, end, rest);
            c->len = rest;
            return status;
        }
        if (ws_fill(c, 5000)) return -1;
    }
}

static inline int ws_upgrade(ws_client *c, int port, const char *headers) {
    return ws_upgrade_path(c, port, "/", headers);
}

/* Connects and upgrades on path, with an Origin header unless origin is NULL. */
static inline int ws_connect_path(ws_client *c, int port, const char *path, const char *origin) {
    memset(c, 0, sizeof *c);
    c->fd = tu_tcp_connect(port);
    if (c->fd < 0) return -1;
    char headers[512] = "";
    if (origin) snprintf(headers, sizeof headers, "Origin: %s\r\n", origin);
    return ws_upgrade_path(c, port, path, headers);
}

/* Connects and upgrades on "/" with extra header lines. */
static inline int ws_connect_headers(ws_client *c, int port, const char *headers) {
    memset(c, 0, sizeof *c);
    c->fd = tu_tcp_connect(port);
    if (c->fd < 0) return -1;
    return ws_upgrade(c, port, headers);
}

/* Connects and upgrades on "/". */
static inline int ws_connect(ws_client *c, int port, const char *origin) {
    return ws_connect_path(c, port, "/", origin);
}

static inline int ws_send_frame(ws_client *c, int opcode, bool fin, const void *data, size_t len) {
    unsigned char hdr[14];
    size_t h = 0;
    hdr[h++] = (unsigned char)((fin ? 0x80 : 0) | opcode);
    if (len < 126) {
        hdr[h++] = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (unsigned char)(len >> 8);
        hdr[h++] = (unsigned char)len;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) hdr[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    const unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy(hdr + h, mask, 4);
    h += 4;
    unsigned char *frame = malloc(h + len);
    if (!frame) return -1;
    memcpy(frame, hdr, h);
    const unsigned char *d = data;
    for (size_t i = 0; i < len; i++) frame[h + i] = d[i] ^ mask[i & 3];
    int rc = c->write ? c->write(c, frame, h + len) : tu_write_all(c->fd, frame, h + len);
    free(frame);
    return rc;
}

static inline int ws_send_text(ws_client *c, const char *s) {
    return ws_send_frame(c, 1, true, s, strlen(s));
}

/* Receives one whole message. 0 ok (*out malloc'd, NUL-terminated), -1 timeout, -2 closed. */
static inline int ws_recv(ws_client *c, int timeout_ms, char **out, size_t *out_len) {
    double deadline = tu_now() + timeout_ms / 1000.0;
    char *msg = NULL;
    size_t msg_len = 0;
    for (;;) {
        if (c->len >= 2) {
            size_t need = 2, plen = c->buf[1] & 0x7f;
            if (plen == 126) need = 4;
            else if (plen == 127) need = 10;
            if (c->len >= need) {
                if (plen == 126) plen = (size_t)c->buf[2] << 8 | c->buf[3];
                else if (plen == 127) {
                    plen = 0;
                    for (int i = 0; i < 8; i++) plen = plen << 8 | c->buf[2 + i];
                }
                if (c->len >= need + plen) {
                    int opcode = c->buf[0] & 0x0f;
                    bool fin = c->buf[0] & 0x80;
                    if (opcode == 8) {
                        free(msg);
                        return -2;
                    }
                    if (opcode == 1 || opcode == 2 || opcode == 0) {
                        char *nm = realloc(msg, msg_len + plen + 1);
                        assert_non_null(nm);
                        msg = nm;
                        memcpy(msg + msg_len, c->buf + need, plen);
                        msg_len += plen;
                        msg[msg_len] = '\0';
                    }
                    memmove(c->buf, c->buf + need + plen, c->len - need - plen);
                    c->len -= need + plen;
                    if (fin && opcode != 9 && opcode != 10) {
                        *out = msg;
                        if (out_len) *out_len = msg_len;
                        return 0;
                    }
                    continue;
                }
            }
        }
        int left = (int)((deadline - tu_now()) * 1000);
        if (left <= 0) {
            free(msg);
            return -1;
        }
        int rc = ws_fill(c, left);
        if (rc) {
            free(msg);
            return rc;
        }
    }
}

static inline json_t *ws_recv_json(ws_client *c, int timeout_ms) {
    char *s = NULL;
    if (ws_recv(c, timeout_ms, &s, NULL)) return NULL;
    json_t *j = json_loads(s, JSON_REJECT_DUPLICATES, NULL);
    if (!j) fail_msg("server sent invalid JSON: %s", s);
    free(s);
    return j;
}

static inline const char *tu_type(const json_t *j) {
    return json_string_value(json_object_get(j, "type"));
}

/* Next message, which must be of the given type (an error frame otherwise fails with its code). */
static inline json_t *ws_expect(ws_client *c, const char *type) {
    json_t *j = ws_recv_json(c, 10000);
    if (!j) fail_msg("expected %s, got nothing (timeout or closed)", type);
    if (strcmp(tu_type(j), type) != 0) {
        char *s = json_dumps(j, 0);
        fail_msg("expected %s, got %s", type, s);
    }
    return j;
}

/* Expects an error frame with this code. */
static inline void ws_expect_error(ws_client *c, const char *code) {
    json_t *j = ws_expect(c, "error");
    const char *got = json_string_value(json_object_get(j, "code"));
    if (strcmp(got, code) != 0) fail_msg("expected error %s, got %s", code, got);
    json_decref(j);
}

static inline void ws_close(ws_client *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

/* hello and welcome; copies the conversation id into conv (33 bytes) if non-NULL. */
static inline void ws_hello(ws_client *c, const char *resume, char *conv) {
    char msg[128];
    if (resume) snprintf(msg, sizeof msg, "{\"type\":\"hello\",\"conversation\":\"%s\"}", resume);
    else snprintf(msg, sizeof msg, "{\"type\":\"hello\"}");
    assert_int_equal(ws_send_text(c, msg), 0);
    json_t *w = ws_expect(c, "welcome");
    if (conv) snprintf(conv, 33, "%s", json_string_value(json_object_get(w, "conversation")));
    json_decref(w);
}

typedef struct tu_duel {
    char id[33];
    char *a, *b;
    int progress, deltas_a, deltas_b;
    int dropped_turns; /* duel_start's: old turns left out of the prompt to fit the context */
    bool interleaved;
} tu_duel;

/* ask, then everything up to duel_end: progress, duel_start, deltas. */
static inline void ws_ask_duel(ws_client *c, const char *text, tu_duel *d) {
    memset(d, 0, sizeof *d);
    json_t *ask = json_pack("{s:s, s:s}", "type", "ask", "text", text);
    char *s = json_dumps(ask, JSON_COMPACT);
    json_decref(ask);
    assert_int_equal(ws_send_text(c, s), 0);
    free(s);
    d->a = calloc(1, 1);
    d->b = calloc(1, 1);
    char last_side = 0;
    for (;;) {
        json_t *j = ws_recv_json(c, 10000);
        if (!j) fail_msg("duel did not finish");
        const char *type = tu_type(j);
        if (strcmp(type, "progress") == 0) {
            d->progress++;
        } else if (strcmp(type, "duel_start") == 0) {
            snprintf(d->id, sizeof d->id, "%s", json_string_value(json_object_get(j, "duel")));
            d->dropped_turns = (int)json_integer_value(json_object_get(j, "dropped_turns"));
        } else if (strcmp(type, "delta") == 0) {
            assert_string_equal(json_string_value(json_object_get(j, "duel")), d->id);
            const char *side = json_string_value(json_object_get(j, "side"));
            const char *t = json_string_value(json_object_get(j, "text"));
            char **dst = side[0] == 'a' ? &d->a : &d->b;
            size_t old = strlen(*dst);
            *dst = realloc(*dst, old + strlen(t) + 1);
            strcpy(*dst + old, t);
            if (side[0] == 'a') d->deltas_a++;
            else d->deltas_b++;
            if (last_side && last_side != side[0]) d->interleaved = true;
            last_side = side[0];
        } else if (strcmp(type, "duel_end") == 0) {
            assert_null(json_object_get(j, "cancelled"));
            json_decref(j);
            return;
        } else {
            char *dump = json_dumps(j, 0);
            fail_msg("unexpected frame during a duel: %s", dump);
        }
        json_decref(j);
    }
}

static inline void tu_duel_free(tu_duel *d) {
    free(d->a);
    free(d->b);
}

/* Sends a vote and returns the vote_ok frame's "queued" (fails on anything else). */
static inline bool ws_vote(ws_client *c, const char *duel, const char *choice) {
    char msg[160];
    snprintf(msg, sizeof msg, "{\"type\":\"vote\",\"duel\":\"%s\",\"choice\":\"%s\"}", duel, choice);
    assert_int_equal(ws_send_text(c, msg), 0);
    json_t *ok = ws_expect(c, "vote_ok");
    assert_string_equal(json_string_value(json_object_get(ok, "duel")), duel);
    bool queued = json_is_true(json_object_get(ok, "queued"));
    json_decref(ok);
    return queued;
}

/* One HTTP request (method "GET", "POST", ...), with `Authorization: Bearer TOKEN` when token is
 * not NULL and a JSON body when request_body is not NULL; returns the status and the answer's
 * body (malloc'd) in *body. */
static inline int tu_http_request(int port, const char *method, const char *path, const char *token,
                                  const char *request_body, char **body) {
    int fd = tu_tcp_connect(port);
    assert_true(fd >= 0);
    char req[1024], length[96] = "";
    if (request_body)
        snprintf(length, sizeof length, "Content-Type: application/json\r\nContent-Length: %zu\r\n",
                 strlen(request_body));
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%s%s%sConnection: close\r\n\r\n",
                     method, path, token ? "Authorization: Bearer " : "", token ? token : "",
                     token ? "\r\n" : "", length);
    assert_true(n > 0 && (size_t)n < sizeof req);
    assert_int_equal(tu_write_all(fd, req, (size_t)n), 0);
    if (request_body) assert_int_equal(tu_write_all(fd, request_body, strlen(request_body)), 0);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) <= 0) break;
        if (len + 4096 > cap) buf = realloc(buf, cap *= 2);
        ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
        if (r <= 0) break;
        len += (size_t)r;
        buf[len] = '\0';
        /* Content-Length framed: stop once the whole body is here. */
        char *hend = strstr(buf, "\r\n\r\n");
        char *cl = strcasestr(buf, "content-length:");
        if (hend && cl && cl < hend && len >= (size_t)(hend + 4 - buf) + (size_t)atol(cl + 15))
            break;
    }
    close(fd);
    buf[len] = '\0';
    int status = -1;
    sscanf(buf, "HTTP/1.1 %d", &status);
    char *b = strstr(buf, "\r\n\r\n");
    *body = strdup(b ? b + 4 : "");
    free(buf);
    return status;
}

/* Plain HTTP GET, with `Authorization: Bearer TOKEN` when token is not NULL. */
static inline int tu_http_get_token(int port, const char *path, const char *token, char **body) {
    return tu_http_request(port, "GET", path, token, NULL, body);
}

static inline int tu_http_get(int port, const char *path, char **body) {
    return tu_http_get_token(port, path, NULL, body);
}

/* A /metrics line's value (the first sample named exactly so); -1 when there is none. */
static inline long long tu_metric(int port, const char *name) {
    char *body = NULL;
    assert_int_equal(tu_http_get(port, "/metrics", &body), 200);
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *at = strstr(body, key);
    long long v = at ? atoll(at + strlen(key)) : -1;
    free(body);
    return v;
}

#endif
