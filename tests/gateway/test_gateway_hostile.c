/* test_gateway_hostile.c: the gateway against hostile clients (issue 21), over real sockets with
 * a real redis-server: descriptors exhausted (a gateway under `ulimit -n 128` in a child process
 * stops accepting instead of spinning on EMFILE, logs nothing per accept, caps max_connections
 * below the limit and serves again once clients leave); websocket upgrades without the duel.v1
 * subprotocol refused and counted; max_connections enforced; the hello, idle and
 * partial-message timeouts (a message kept open fragment by fragment is still closed on time);
 * HTTP methods (405 with Allow, the admin API's POST still reaching it, HEAD without a body),
 * 431 for headers over the limit; the Origin allow-list instead of the request's own Host; the
 * per-address limits, each with its own code (asks per minute of the address, asks pending),
 * and the client address behind trusted proxies (X-Forwarded-For believed from them only). */
#include "gateway_test_util.h"
#include "http_route.h"

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>


/* Sends a raw request and reads the response until the server closes or has been quiet for
 * quiet_ms. Returns the status (-1: none); *out (may be NULL) gets the whole response. */
static int raw_request(int port, const char *req, size_t req_len, int quiet_ms, char **out) {
    int fd = tu_tcp_connect(port);
    assert_true(fd >= 0);
    if (tu_write_all(fd, req, req_len)) {
        close(fd);
        if (out) *out = strdup("");
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, quiet_ms) <= 0) break;
        if (len + 4096 > cap) buf = realloc(buf, cap *= 2);
        ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
        if (r <= 0) break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    close(fd);
    int status = -1;
    sscanf(buf, "HTTP/1.1 %d", &status);
    if (out) *out = buf;
    else free(buf);
    return status;
}

static int request_status(int port, const char *method, const char *path, char **out) {
    char req[512];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n",
                     method, path, port);
    return raw_request(port, req, (size_t)n, 1500, out);
}

/* A websocket upgrade with the given Host, Origin and subprotocol (NULL: header left out). */
static int upgrade_status(int port, const char *host, const char *origin, const char *protocol) {
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     "%s%s%s%s%s%s\r\n",
                     host, origin ? "Origin: " : "", origin ? origin : "", origin ? "\r\n" : "",
                     protocol ? "Sec-WebSocket-Protocol: " : "", protocol ? protocol : "",
                     protocol ? "\r\n" : "");
    return raw_request(port, req, (size_t)n, 1000, NULL);
}

static long long metric(int port, const char *name) {
    long long v = tu_metric(port, name);
    if (v < 0) fail_msg("/metrics lacks %s", name);
    return v;
}

/* CPU seconds (user + system) a process has used, from /proc. */
static double cpu_seconds(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the name may hold spaces */
    assert_non_null(p);
    unsigned long utime = 0, stime = 0;
    /* fields 3.. after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
     * cmajflt utime stime */
    assert_int_equal(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime,
                            &stime),
                     2);
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* Runs first, while the test process has no other threads, so that the child can start its own
 * gateway after fork. */
static void test_descriptors_exhausted(void **state) {
    (void)state;
    int port = tu_free_port();
    char dir[512], log_path[600];
    test_make_temp_dir("gwfd", dir, sizeof dir);
    snprintf(log_path, sizeof log_path, "%s/stderr.log", dir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test's child goes with the test */
        FILE *log = freopen(log_path, "w", stderr);
        (void)log;
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = 128;
        if (setrlimit(RLIMIT_NOFILE, &rl)) _exit(3);
        gateway_config cfg;
        tu_gateway_config(&cfg, &tu_group_redis);
        cfg.port = port;
        duel_backend backend;
        backend_test_config bcfg = {.step_delay_ms = 0, .queue_capacity = 64};
        if (backend_test_create(&bcfg, &backend, NULL)) _exit(4);
        gateway *gw;
        duel_error err = {0};
        if (gateway_create(&cfg, &backend, &gw, &err)) {
            fprintf(stderr, "%s\n", err.message);
            _exit(5);
        }
        gateway_run(gw, NULL);
        _exit(0);
    }
    double deadline = tu_now() + 20;
    for (;;) { /* until the child listens */
        int fd = tu_tcp_connect(port);
        if (fd >= 0) {
            close(fd);
            break;
        }
        assert_true(tu_now() < deadline);
        assert_int_equal(waitpid(pid, NULL, WNOHANG), 0);
        tu_sleep_ms(50);
    }
    /* 10000 configured, but 128 descriptors cannot hold that many */
    long long cap = metric(port, "duel_gateway_max_connections");
    assert_true(cap > 0 && cap < 128);
    /* Far more connections than descriptors, each a half-finished request. */
    enum { CLIENTS = 300 };
    int fds[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        fds[i] = tu_tcp_connect(port);
        if (fds[i] >= 0) tu_write_all(fds[i], "GET / HTTP/1.1\r\n", 16);
    }
    tu_sleep_ms(300);
    double cpu0 = cpu_seconds(pid), t0 = tu_now();
    tu_sleep_ms(1500);
    double busy = (cpu_seconds(pid) - cpu0) / (tu_now() - t0);
    struct stat st;
    assert_int_equal(stat(log_path, &st), 0);
    /* Spinning on EMFILE used a whole core and logged at megabytes a second. */
    if (busy > 0.3) fail_msg("the gateway used %.0f%% of a core with descriptors exhausted", busy * 100);
    if (st.st_size > 4096) fail_msg("the gateway logged %lld bytes with descriptors exhausted", (long long)st.st_size);
    for (int i = 0; i < CLIENTS; i++)
        if (fds[i] >= 0) close(fds[i]);
    /* Once they are gone, a user gets a whole duel. */
    ws_client c;
    deadline = tu_now() + 15;
    for (;;) {
        int status = ws_connect(&c, port, NULL);
        if (status == 101) break;
        ws_close(&c);
        assert_true(tu_now() < deadline);
        tu_sleep_ms(100);
    }
    ws_hello(&c, NULL, NULL);
    tu_duel d;
    ws_ask_duel(&c, "still there?", &d);
    tu_duel_free(&d);
    ws_close(&c);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static void test_upgrades_and_connection_caps(void **state) {
    (void)state;
    gateway_config cfg;
    tu_gateway_config(&cfg, &tu_group_redis);
    cfg.max_connections = 2;
    tu_gateway g;
    tu_gateway_start(&g, &cfg, 0);
    char host[64];
    snprintf(host, sizeof host, "127.0.0.1:%d", g.port);
    assert_int_equal(metric(g.port, "duel_gateway_max_connections"), 2);
    long long rejected = metric(g.port, "duel_gateway_connections_rejected_total");
    /* No subprotocol, or another one: refused (hung up on), never an uncounted connection. */
    assert_true(upgrade_status(g.port, host, NULL, NULL) != 101);
    assert_true(upgrade_status(g.port, host, NULL, "chat, superchat") != 101);
    assert_true(upgrade_status(g.port, host, NULL, "duel.v10") != 101);
    assert_int_equal(metric(g.port, "duel_gateway_connections_rejected_total"), rejected + 3);
    assert_int_equal(metric(g.port, "duel_gateway_connections_open"), 0);
    /* duel.v1 among others is fine; the third connection is over max_connections. */
    assert_int_equal(upgrade_status(g.port, host, NULL, "chat, duel.v1"), 101);
    ws_client a, b, c;
    assert_int_equal(ws_connect(&a, g.port, NULL), 101);
    assert_int_equal(ws_connect(&b, g.port, NULL), 101);
    ws_hello(&a, NULL, NULL);
    ws_hello(&b, NULL, NULL);
    assert_int_equal(metric(g.port, "duel_gateway_connections_open"), 2);
    assert_true(ws_connect(&c, g.port, NULL) != 101);
    ws_close(&c);
    ws_close(&a);
    ws_close(&b);
    tu_gateway_stop(&g);
}

/* When each of the four clients' connections closed (seconds after start; 0: still open). */
static void test_timeouts(void **state) {
    (void)state;
    gateway_config cfg;
    tu_gateway_config(&cfg, &tu_group_redis);
    cfg.hello_timeout_s = 1;
    cfg.idle_timeout_s = 3;
    cfg.partial_message_timeout_s = 2;
    cfg.abuse_limit = 1000;
    tu_gateway g;
    tu_gateway_start(&g, &cfg, 0);
    enum { SILENT, CHATTY_NO_HELLO, IDLE, RESUMED, FRAGMENTS, ACTIVE, N };
    ws_client c[N];
    for (int i = 0; i < N; i++) assert_int_equal(ws_connect(&c[i], g.port, NULL), 101);
    ws_hello(&c[IDLE], NULL, NULL);
    /* a conversation this gateway has not cached: hello waits for Redis (then starts afresh) */
    ws_hello(&c[RESUMED], "0123456789abcdef0123456789abcdef", NULL);
    ws_hello(&c[FRAGMENTS], NULL, NULL);
    ws_hello(&c[ACTIVE], NULL, NULL);
    double t0 = tu_now(), closed[N] = {0};
    assert_int_equal(ws_send_frame(&c[FRAGMENTS], 1, false, "{\"type\":", 8), 0);
    /* until the five are closed and the active one has outlived the idle time by a second */
    while (tu_now() - t0 < 6.0 &&
           !(closed[SILENT] && closed[CHATTY_NO_HELLO] && closed[IDLE] && closed[RESUMED] &&
             closed[FRAGMENTS] && tu_now() - t0 > 4.2)) {
        /* the chatty one never says hello; the fragments never end; the active one asks */
        if (!closed[CHATTY_NO_HELLO]) ws_send_text(&c[CHATTY_NO_HELLO], "{\"type\":\"cancel\"}");
        if (!closed[FRAGMENTS]) ws_send_frame(&c[FRAGMENTS], 0, false, " ", 1);
        if (!closed[ACTIVE]) ws_send_text(&c[ACTIVE], "{\"type\":\"cancel\"}");
        for (int i = 0; i < N; i++) {
            if (closed[i]) continue;
            int rc;
            while ((rc = ws_fill(&c[i], 0)) == 0) {
                char *m = NULL;
                while ((rc = ws_recv(&c[i], 0, &m, NULL)) == 0) free(m); /* frames so far */
                if (rc == -2) break;                                     /* a close frame */
                c[i].len = 0; /* a partial frame's bytes: not needed here */
            }
            if (rc == -2) closed[i] = tu_now() - t0;
        }
        tu_sleep_ms(250);
    }
    for (int i = 0; i < N; i++) ws_close(&c[i]);
    tu_gateway_stop(&g);
    if (!closed[SILENT] || closed[SILENT] > 2.6) fail_msg("no hello: closed at %.1f s", closed[SILENT]);
    if (!closed[CHATTY_NO_HELLO] || closed[CHATTY_NO_HELLO] > 2.6)
        fail_msg("messages but no hello: closed at %.1f s", closed[CHATTY_NO_HELLO]);
    if (!closed[IDLE] || closed[IDLE] < 2.5 || closed[IDLE] > 4.6)
        fail_msg("idle after hello: closed at %.1f s (idle_timeout_s 3)", closed[IDLE]);
    /* its hello finished on Redis's answer: the idle time, not the hello time, closes it */
    if (!closed[RESUMED] || closed[RESUMED] < 2.5 || closed[RESUMED] > 4.6)
        fail_msg("idle after a hello that waited for Redis: closed at %.1f s", closed[RESUMED]);
    if (!closed[FRAGMENTS] || closed[FRAGMENTS] > 3.6)
        fail_msg("a message kept open by fragments: closed at %.1f s", closed[FRAGMENTS]);
    if (closed[ACTIVE]) fail_msg("an active client was closed at %.1f s", closed[ACTIVE]);
}

static void test_http_methods_and_headers(void **state) {
    (void)state;
    gateway_config cfg;
    tu_gateway_config(&cfg, &tu_group_redis);
    tu_gateway g;
    tu_gateway_start(&g, &cfg, 0);
    static const char *const METHODS[] = {"POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    static const char *const PATHS[] = {"/", "/metrics", "/app.js", "/healthz"};
    for (size_t m = 0; m < sizeof METHODS / sizeof *METHODS; m++)
        for (size_t p = 0; p < sizeof PATHS / sizeof *PATHS; p++) {
            char *resp = NULL;
            int status = request_status(g.port, METHODS[m], PATHS[p], &resp);
            if (status != 405) fail_msg("%s %s: %d", METHODS[m], PATHS[p], status);
            if (!strcasestr(resp, "\r\nallow: GET, HEAD\r\n"))
                fail_msg("%s %s: no Allow header:\n%s", METHODS[m], PATHS[p], resp);
            free(resp);
        }
    char *resp = NULL;
    assert_int_equal(request_status(g.port, "DELETE", "/no-such-page", &resp), 404);
    free(resp);
    /* The admin API keeps its own methods: a POST without a token is 401, not 405. */
    assert_int_equal(request_status(g.port, "POST", "/api/knobs", &resp), 401);
    free(resp);
    assert_int_equal(request_status(g.port, "GET", "/api/stats", &resp), 401);
    free(resp);
    assert_int_equal(request_status(g.port, "PUT", "/api/knobs", &resp), 405);
    assert_non_null(strcasestr(resp, "\r\nallow: GET, POST\r\n"));
    free(resp);
    /* HEAD: the headers of GET, no body. */
    static const char *const HEADS[] = {"/metrics", "/", "/healthz"};
    for (size_t i = 0; i < sizeof HEADS / sizeof *HEADS; i++) {
        assert_int_equal(request_status(g.port, "HEAD", HEADS[i], &resp), 200);
        char *end = strstr(resp, "\r\n\r\n");
        assert_non_null(end);
        if (end[4] != '\0') fail_msg("HEAD %s sent a body: %.60s", HEADS[i], end + 4);
        free(resp);
    }
    /* Headers over max_header_bytes (8192): 431, not a dropped connection. */
    size_t big = 10000;
    char *req = malloc(big + 256);
    int n = snprintf(req, 256, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: ");
    memset(req + n, 'c', big);
    n += (int)big;
    n += snprintf(req + n, 64, "\r\nConnection: close\r\n\r\n");
    assert_int_equal(raw_request(g.port, req, (size_t)n, 1500, NULL), 431);
    free(req);
    /* ... and the server goes on */
    assert_int_equal(request_status(g.port, "GET", "/healthz", &resp), 200);
    free(resp);
    tu_gateway_stop(&g);
}

static void test_origin_allow_list(void **state) {
    (void)state;
    gateway_config cfg;
    tu_gateway_config(&cfg, &tu_group_redis);
    tu_gateway g;
    tu_gateway_start(&g, &cfg, 0);
    char own[64], localhost[64];
    snprintf(own, sizeof own, "http://127.0.0.1:%d", g.port);
    snprintf(localhost, sizeof localhost, "http://localhost:%d", g.port);
    assert_int_equal(upgrade_status(g.port, own + 7, own, "duel.v1"), 101);
    assert_int_equal(upgrade_status(g.port, localhost + 7, localhost, "duel.v1"), 101);
    /* DNS rebinding: the page's origin and the Host header agree, and neither is ours. */
    assert_true(upgrade_status(g.port, "evil.example", "http://evil.example", "duel.v1") != 101);
    assert_true(upgrade_status(g.port, own + 7, "http://127.0.0.1:1", "duel.v1") != 101);
    assert_true(upgrade_status(g.port, own + 7, "null", "duel.v1") != 101);
    tu_gateway_stop(&g);
    /* A configured list replaces the loopback default. */
    cfg.n_origins = 1;
    snprintf(cfg.origins[0], sizeof cfg.origins[0], "https://chat.example");
    tu_gateway_start(&g, &cfg, 0);
    snprintf(own, sizeof own, "http://127.0.0.1:%d", g.port);
    assert_int_equal(upgrade_status(g.port, "chat.example", "https://chat.example", "duel.v1"), 101);
    assert_true(upgrade_status(g.port, own + 7, own, "duel.v1") != 101);
    assert_true(upgrade_status(g.port, "chat.example", "https://chat.example.evil", "duel.v1") != 101);
    tu_gateway_stop(&g);
}

/* The pure rules of http_client_address and http_cidr_parse (http_route.h). */
static void test_client_address_rules(void **state) {
    (void)state;
    http_cidr t[3];
    assert_true(http_cidr_parse("127.0.0.1", &t[0]));
    assert_true(http_cidr_parse("10.0.0.0/8", &t[1]));
    assert_true(http_cidr_parse("fd00::/8", &t[2]));
    http_cidr bad;
    assert_false(http_cidr_parse("10.0.0.0/33", &bad));
    assert_false(http_cidr_parse("10.0.0/8", &bad));
    assert_false(http_cidr_parse("::1/129", &bad));
    assert_false(http_cidr_parse("10.0.0.0/", &bad));
    assert_false(http_cidr_parse("example.com", &bad));
    assert_false(http_cidr_parse("", &bad));
    char out[HTTP_ADDRESS_MAX];
#define XFF(peer, xff) http_client_address(peer, xff, strlen(xff), t, 3, out)
    XFF("127.0.0.1", "203.0.113.5");
    assert_string_equal(out, "203.0.113.5");
    /* From the right: trusted hops are skipped, what the client wrote left of them is not read */
    XFF("127.0.0.1", "6.6.6.6, 203.0.113.5, 10.1.2.3");
    assert_string_equal(out, "203.0.113.5");
    XFF("10.0.0.9", " 198.51.100.7 ,fd00::1");
    assert_string_equal(out, "198.51.100.7");
    /* Not an address where a hop should be: the nearest trusted hop stands */
    XFF("127.0.0.1", "203.0.113.5, junk");
    assert_string_equal(out, "127.0.0.1");
    XFF("127.0.0.1", "203.0.113.5,,10.1.1.1");
    assert_string_equal(out, "10.1.1.1");
    XFF("127.0.0.1", "");
    assert_string_equal(out, "127.0.0.1");
    http_client_address("127.0.0.1", NULL, 0, t, 3, out);
    assert_string_equal(out, "127.0.0.1");
    /* Every hop trusted: the leftmost */
    XFF("127.0.0.1", "10.0.0.1, 10.0.0.2");
    assert_string_equal(out, "10.0.0.1");
    /* An untrusted peer's header is ignored */
    XFF("192.0.2.1", "203.0.113.5");
    assert_string_equal(out, "192.0.2.1");
    /* One client, one key: forms of one address normalise */
    XFF("127.0.0.1", "[2001:DB8::1]");
    assert_string_equal(out, "2001:db8::1");
    XFF("::ffff:127.0.0.1", "::ffff:203.0.113.5");
    assert_string_equal(out, "203.0.113.5");
#undef XFF
    /* config: refused with the key named */
    gateway_config cfg;
    gateway_config_defaults(&cfg);
    assert_int_equal(cfg.n_trusted_proxies, 0);
    assert_int_equal(cfg.asks_pending_per_address, 8);
    duel_error err = {0};
    json_t *j = json_loads("{\"gateway\":{\"trusted_proxies\":[\"10.0.0.0/8\",\"nope\"]}}", 0, NULL);
    assert_int_not_equal(gateway_config_from_json(&cfg, j, "test", &err), 0);
    assert_non_null(strstr(err.message, "gateway.trusted_proxies[1]"));
    json_decref(j);
    j = json_loads("{\"gateway\":{\"tls_cert\":\"a.pem\"}}", 0, NULL);
    assert_int_not_equal(gateway_config_from_json(&cfg, j, "test", &err), 0);
    assert_non_null(strstr(err.message, "tls_key"));
    json_decref(j);
}

/* Sends an ask and leaves its answer unread. */
static void send_ask(ws_client *c, const char *text) {
    char msg[256];
    snprintf(msg, sizeof msg, "{\"type\":\"ask\",\"text\":\"%s\"}", text);
    assert_int_equal(ws_send_text(c, msg), 0);
}

/* Reads frames until the duel of the ask just sent ends. */
static void finish_duel(ws_client *c) {
    for (;;) {
        json_t *j = ws_recv_json(c, 10000);
        if (!j) fail_msg("duel did not finish");
        bool end = strcmp(tu_type(j), "duel_end") == 0;
        if (strcmp(tu_type(j), "error") == 0) fail_msg("error during a duel");
        json_decref(j);
        if (end) return;
    }
}

/* Polls /metrics until the gateway accepted n asks (their order across sockets is then
 * settled). */
static void wait_asks(int port, long long n) {
    double deadline = tu_now() + 10;
    while (tu_metric(port, "duel_gateway_asks_total") < n) {
        if (tu_now() > deadline) fail_msg("the gateway did not take %lld asks", n);
        tu_sleep_ms(10);
    }
}

/* Each per-address limit refuses with its own code, and a connection's own limit with another:
 * asks per minute of the address (address_rate_limited, while each connection is far below
 * its own), asks pending for the address (too_many_pending, while the slow ones run; free
 * again once they end). */
static void test_address_limits_have_their_own_codes(void **state) {
    (void)state;
    gateway_config cfg;
    tu_gateway_config(&cfg, &tu_group_redis);
    cfg.asks_per_minute_connection = 100;
    cfg.asks_per_minute_address = 3;
    tu_gateway g;
    tu_gateway_start(&g, &cfg, 0);
    ws_client c[3];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ws_connect(&c[i], g.port, NULL), 101);
        ws_hello(&c[i], NULL, NULL);
    }
    tu_duel d;
    ws_ask_duel(&c[0], "one", &d);
    tu_duel_free(&d);
    ws_ask_duel(&c[1], "two", &d);
    tu_duel_free(&d);
    ws_ask_duel(&c[2], "three", &d);
    tu_duel_free(&d);
    send_ask(&c[0], "four"); /* c[0] asked once of its 100; the address three of its 3 */
    ws_expect_error(&c[0], "address_rate_limited");
    for (int i = 0; i < 3; i++) ws_close(&c[i]);
    tu_gateway_stop(&g);

    tu_gateway_config(&cfg, &tu_group_redis);
    cfg.asks_pending_per_address = 2;
    tu_gateway_start(&g, &cfg, 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ws_connect(&c[i], g.port, NULL), 101);
        ws_hello(&c[i], NULL, NULL);
    }
    /* "!slow": the test backend takes 800 ms over it, one at a time */
    send_ask(&c[0], "!slow one");
    wait_asks(g.port, 1);
    send_ask(&c[1], "!slow two");
    wait_asks(g.port, 2);
    send_ask(&c[2], "three");
    ws_expect_error(&c[2], "too_many_pending");
    finish_duel(&c[0]);
    finish_duel(&c[1]);
    ws_ask_duel(&c[2], "three again", &d); /* nothing pending now */
    tu_duel_free(&d);
    for (int i = 0; i < 3; i++) ws_close(&c[i]);
    tu_gateway_stop(&g);
}

/* Behind a trusted proxy each client is counted under the address X-Forwarded-For names
 * (connections_per_address here); what the client itself wrote to the left is not believed,
 * and nobody else's header counts. */
static void test_trusted_proxy_address(void **state) {
    (void)state;
    gateway_config cfg;
    tu_gateway_config(&cfg, &tu_group_redis);
    cfg.connections_per_address = 2;
    cfg.n_trusted_proxies = 1;
    snprintf(cfg.trusted_proxies[0], sizeof cfg.trusted_proxies[0], "127.0.0.0/8");
    tu_gateway g;
    tu_gateway_start(&g, &cfg, 0);
    ws_client a[2], more[3];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ws_connect_headers(&a[i], g.port, "X-Forwarded-For: 203.0.113.5\r\n"), 101);
        ws_hello(&a[i], NULL, NULL);
    }
    /* a third from that client, spoofing another address to the left of the proxy's hop */
    assert_int_equal(ws_connect_headers(&more[0], g.port,
                                        "X-Forwarded-For: 198.51.100.1, 203.0.113.5\r\n"), 101);
    ws_expect_error(&more[0], "too_many_connections");
    ws_close(&more[0]);
    /* other clients behind the same proxy are not locked out */
    assert_int_equal(ws_connect_headers(&more[1], g.port,
                                        "X-Forwarded-For: 203.0.113.5, 203.0.113.9\r\n"), 101);
    ws_hello(&more[1], NULL, NULL);
    assert_int_equal(ws_connect_headers(&more[2], g.port, "X-Forwarded-For: 198.51.100.7\r\n"), 101);
    ws_hello(&more[2], NULL, NULL);
    tu_duel d;
    ws_ask_duel(&more[2], "hello from behind the proxy", &d);
    tu_duel_free(&d);
    for (int i = 0; i < 2; i++) ws_close(&a[i]);
    ws_close(&more[1]);
    ws_close(&more[2]);
    tu_gateway_stop(&g);

    /* Without trust the header is the client's word: everyone is the peer, 127.0.0.1. */
    cfg.n_trusted_proxies = 0;
    tu_gateway_start(&g, &cfg, 0);
    for (int i = 0; i < 2; i++) {
        char h[64];
        snprintf(h, sizeof h, "X-Forwarded-For: 203.0.113.%d\r\n", 20 + i);
        assert_int_equal(ws_connect_headers(&a[i], g.port, h), 101);
        ws_hello(&a[i], NULL, NULL);
    }
    assert_int_equal(ws_connect_headers(&more[0], g.port, "X-Forwarded-For: 203.0.113.30\r\n"), 101);
    ws_expect_error(&more[0], "too_many_connections");
    ws_close(&more[0]);
    for (int i = 0; i < 2; i++) ws_close(&a[i]);
    tu_gateway_stop(&g);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_descriptors_exhausted),
        cmocka_unit_test(test_upgrades_and_connection_caps),
        cmocka_unit_test(test_timeouts),
        cmocka_unit_test(test_http_methods_and_headers),
        cmocka_unit_test(test_origin_allow_list),
        cmocka_unit_test(test_client_address_rules),
        cmocka_unit_test(test_address_limits_have_their_own_codes),
        cmocka_unit_test(test_trusted_proxy_address),
    };
    return cmocka_run_group_tests(tests, tu_group_redis_start, tu_group_redis_stop);
}
