/* test_gateway_live_fuzz.c: a running gateway (in this process, so the ASan build checks it)
 * against many hostile clients at once while one normal user chats and votes (issue 21):
 *   - frame fuzzers: random bytes, mutated valid messages, oversized and fragmented messages,
 *     invalid UTF-8, binary frames, protocol violations (unmasked frames, reserved opcodes),
 *     messages left unfinished;
 *   - slowloris: upgrades sent a byte at a time and never finished, websockets that never say
 *     hello, messages dripped fragment by fragment;
 *   - idle connections (1,000 when the descriptor limit allows: the test raises its soft limit;
 *     otherwise as many as it allows, and it says so), each of which said hello;
 *   - ask bursts: 8 addresses x 8 connections asking back to back.
 * Clients have their own addresses through X-Forwarded-For (the gateway trusts 127.0.0.1 as a
 * proxy), so the per-address limits apply to each as to real users. Asserted: the gateway
 * neither crashes nor stops serving; every connection that sent something invalid got an error
 * frame or was closed; every slowloris connection was closed; the idle ones that said hello
 * are still open; the normal user's conversation (every voted turn, in order, on resume) and
 * votes (each in Redis once) are intact; and its time to duel under all this, the median of
 * several duels, stays within 2x of its median alone (measured first, in the same run) plus a
 * floor for scheduler noise on a shared machine: a FIFO backend would make it wait for the
 * whole burst, seconds (docs/SERVING.md, "Hostile clients"). */
#include "gateway_test_util.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <sys/resource.h>

#include "rng.h"

#define STEP_MS 10          /* the test backend's pause between its 4 progress events */
#define LOAD_S 6.0          /* how long the abusers run */
#define FUZZERS 4
#define BURST_ADDRESSES 8
#define BURST_PER_ADDRESS 8
#define SLOW_UPGRADES 16
#define SLOW_NO_HELLO 16
#define SLOW_DRIP 16
#define IDLE_WANTED 1000
#define IDLE_PER_ADDRESS 25 /* under connections_per_address */
#define DUELS_MEASURED 7    /* alone, then under load: medians of these */
/* Scheduler noise on a loaded 2-core box (ASan included): added to 2x the median alone. A FIFO
 * backend would add the burst's queue, 64 asks x 4 x STEP_MS = 2.5 s. */
#define FLOOR_MS 250.0
#define MAX_FRAME 4096
#define MAX_ASKED 60        /* the normal user's turns at most (under max_turns) */


/* cmocka's assertions may only fail on the test's own thread: the workers record a failure
 * here and stop, and the test fails with it after joining them. */
static atomic_int thread_failures;
static char thread_failure[512];

static void thread_fail(const char *fmt, ...) {
    if (atomic_fetch_add(&thread_failures, 1) != 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(thread_failure, sizeof thread_failure, fmt, ap);
    va_end(ap);
}

/* The next frame as JSON (NULL: timeout, close, or not JSON). */
static json_t *recv_json(ws_client *c, int timeout_ms) {
    char *m = NULL;
    if (ws_recv(c, timeout_ms, &m, NULL)) return NULL;
    json_t *j = json_loads(m, 0, NULL);
    free(m);
    return j;
}

/* Reads frames until one of type `type` (NULL: timeout or close first). */
static json_t *recv_type(ws_client *c, const char *type, int timeout_ms) {
    for (;;) {
        json_t *j = recv_json(c, timeout_ms);
        if (!j || strcmp(tu_type(j), type) == 0) return j;
        json_decref(j);
    }
}

typedef struct shared {
    int port;
    atomic_bool stop;
    atomic_long bad_sent_conns, bad_answered_conns; /* connections that sent something invalid,
                                                       and of them those refused or closed */
    atomic_long fuzz_frames, fuzz_errors, fuzz_closed;
    atomic_long burst_duels, burst_refusals;
    atomic_long unanswered;                          /* bad senders never refused: must be 0 */
} shared;

static int connect_as(ws_client *c, int port, const char *addr) {
    char h[128];
    snprintf(h, sizeof h, "X-Forwarded-For: %s\r\n", addr);
    return ws_connect_headers(c, port, h);
}

static void send_raw(ws_client *c, const void *data, size_t n) { tu_write_all(c->fd, data, n); }

/* Reads what comes for up to ms: counts error frames; -2 when the server closed. */
static int drain(ws_client *c, int ms, long *errors) {
    double deadline = tu_now() + ms / 1000.0;
    for (;;) {
        int left = (int)((deadline - tu_now()) * 1000);
        if (left <= 0) return 0;
        char *m = NULL;
        int rc = ws_recv(c, left, &m, NULL);
        if (rc == -2) return -2;
        if (rc == -1) return 0;
        if (strstr(m, "\"type\":\"error\"")) (*errors)++;
        free(m);
    }
}

static const char *const VALID[] = {
    "{\"type\":\"hello\"}",
    "{\"type\":\"ask\",\"text\":\"hello there\"}",
    "{\"type\":\"vote\",\"duel\":\"0123456789abcdef0123456789abcdef\",\"choice\":\"a\"}",
    "{\"type\":\"cancel\"}",
};

/* One fuzzing connection: a few dozen messages of random kinds, then it hangs up. */
static void fuzz_session(shared *sh, duel_rng *r, const char *addr) {
    ws_client *c = malloc(sizeof *c);
    if (connect_as(c, sh->port, addr) != 101) {
        ws_close(c);
        free(c);
        return;
    }
    if (duel_rng_uniform(r) < 0.7) ws_send_text(c, VALID[0]);
    long errors = 0;
    bool bad = false, closed = false;
    int n = 5 + (int)(duel_rng_uniform(r) * 30);
    unsigned char *buf = malloc(MAX_FRAME + 8192);
    for (int i = 0; i < n && !closed && !atomic_load(&sh->stop); i++) {
        int kind = (int)(duel_rng_uniform(r) * 9);
        if (kind == 7 && duel_rng_uniform(r) < 0.7) kind = 0; /* it waits 2.6 s: now and then */
        size_t len = 0;
        atomic_fetch_add(&sh->fuzz_frames, 1);
        switch (kind) {
        case 0: /* random bytes: never a valid message (not UTF-8, or not a JSON object) */
            len = (size_t)(duel_rng_uniform(r) * 300);
            for (size_t k = 0; k < len; k++) buf[k] = (unsigned char)(duel_rng_next_u64(r) & 0xff);
            if (len) buf[0] = (unsigned char)(0x80 | buf[0]); /* a bare continuation byte */
            ws_send_frame(c, 1, true, buf, len);
            bad = true;
            break;
        case 1: { /* a valid message mutated: may stay valid (then it is served) */
            const char *v = VALID[(int)(duel_rng_uniform(r) * 4)];
            len = strlen(v);
            memcpy(buf, v, len);
            int flips = 1 + (int)(duel_rng_uniform(r) * 3);
            for (int f = 0; f < flips; f++)
                buf[(size_t)(duel_rng_uniform(r) * len)] = (unsigned char)(duel_rng_next_u64(r));
            if (duel_rng_uniform(r) < 0.3) len = (size_t)(duel_rng_uniform(r) * len);
            ws_send_frame(c, 1, true, buf, len);
            break;
        }
        case 2: { /* oversized, in 1 to 3 fragments */
            len = MAX_FRAME + 1 + (size_t)(duel_rng_uniform(r) * 8000);
            memset(buf, 'x', len);
            int parts = 1 + (int)(duel_rng_uniform(r) * 3);
            size_t at = 0;
            for (int p = 0; p < parts; p++) {
                size_t piece = p == parts - 1 ? len - at : len / (size_t)parts;
                ws_send_frame(c, p == 0 ? 1 : 0, p == parts - 1, buf + at, piece);
                at += piece;
            }
            bad = true;
            break;
        }
        case 3: { /* a valid ask in fragments: served like a whole one */
            const char *v = VALID[1];
            size_t L = strlen(v), at = 0;
            while (at < L) {
                size_t piece = 1 + (size_t)(duel_rng_uniform(r) * 6);
                if (piece > L - at) piece = L - at;
                ws_send_frame(c, at == 0 ? 1 : 0, at + piece == L, v + at, piece);
                at += piece;
            }
            break;
        }
        case 4: /* invalid UTF-8 inside a JSON string */
            len = (size_t)snprintf((char *)buf, 128, "{\"type\":\"ask\",\"text\":\"a\xc3\x28\xff\"}");
            ws_send_frame(c, 1, true, buf, len);
            bad = true;
            break;
        case 5: /* binary */
            ws_send_frame(c, 2, true, VALID[1], strlen(VALID[1]));
            bad = true;
            break;
        case 6: { /* protocol violations: lws closes the connection */
            static const unsigned char unmasked[] = {0x81, 0x02, 'h', 'i'};
            static const unsigned char reserved[] = {0x83, 0x80, 1, 2, 3, 4};
            if (duel_rng_uniform(r) < 0.5) send_raw(c, unmasked, sizeof unmasked);
            else send_raw(c, reserved, sizeof reserved);
            bad = true;
            break;
        }
        case 7: /* a message never finished: the partial-message timeout closes it */
            ws_send_frame(c, 1, false, "{\"type\":", 8);
            bad = true;
            closed = drain(c, 2600, &errors) == -2;
            break;
        default: /* a real ask: the gateway answers or refuses, both fine */
            ws_send_text(c, VALID[1]);
            break;
        }
        if (!closed && drain(c, 15, &errors) == -2) closed = true;
    }
    if (!closed && bad && errors == 0) closed = drain(c, 3000, &errors) == -2;
    atomic_fetch_add(&sh->fuzz_errors, errors);
    if (closed) atomic_fetch_add(&sh->fuzz_closed, 1);
    if (bad) {
        atomic_fetch_add(&sh->bad_sent_conns, 1);
        if (errors > 0 || closed) atomic_fetch_add(&sh->bad_answered_conns, 1);
        else atomic_fetch_add(&sh->unanswered, 1);
    }
    free(buf);
    ws_close(c);
    free(c);
}

typedef struct worker_arg {
    shared *sh;
    int index;
} worker_arg;

static void *fuzzer(void *arg) {
    worker_arg *w = arg;
    duel_rng r;
    duel_rng_seed(&r, 0xf22 + (uint64_t)w->index);
    char addr[32];
    for (int session = 0; !atomic_load(&w->sh->stop); session++) {
        snprintf(addr, sizeof addr, "10.66.%d.%d", w->index, session % 250 + 1);
        fuzz_session(w->sh, &r, addr);
    }
    return NULL;
}

/* One connection of the burst: ask, read to duel_end (or a refusal), vote now and then. */
static bool burst_connect(ws_client *c, int port, const char *addr) {
    if (connect_as(c, port, addr) != 101 || ws_send_text(c, VALID[0])) return false;
    json_t *w = recv_type(c, "welcome", 10000);
    json_decref(w);
    return w != NULL;
}

static void *burster(void *arg) {
    worker_arg *w = arg;
    char addr[32];
    snprintf(addr, sizeof addr, "10.77.0.%d", w->index / BURST_PER_ADDRESS + 1);
    ws_client *c = malloc(sizeof *c);
    if (!burst_connect(c, w->sh->port, addr)) {
        thread_fail("burst connection %d refused", w->index);
        goto out;
    }
    for (int i = 0; !atomic_load(&w->sh->stop); i++) {
        ws_send_text(c, VALID[1]);
        char duel[33] = "";
        for (;;) {
            json_t *j = recv_json(c, 20000);
            if (!j) {
                thread_fail("burst connection %d got no answer to an ask", w->index);
                goto out;
            }
            const char *type = tu_type(j);
            bool done = strcmp(type, "duel_end") == 0 || strcmp(type, "error") == 0;
            if (strcmp(type, "duel_start") == 0)
                snprintf(duel, sizeof duel, "%s", json_string_value(json_object_get(j, "duel")));
            if (strcmp(type, "error") == 0) atomic_fetch_add(&w->sh->burst_refusals, 1);
            else if (done) atomic_fetch_add(&w->sh->burst_duels, 1);
            json_decref(j);
            if (done) break;
        }
        if (duel[0] && i % 2 == 0) {
            char msg[160];
            snprintf(msg, sizeof msg, "{\"type\":\"vote\",\"duel\":\"%s\",\"choice\":\"a\"}", duel);
            ws_send_text(c, msg);
            json_t *ok = recv_type(c, "vote_ok", 10000);
            if (!ok) {
                thread_fail("burst connection %d: no vote_ok", w->index);
                goto out;
            }
            json_decref(ok);
        }
        /* too_many_pending: a real client would wait */
        if (!duel[0]) tu_sleep_ms(5);
        if (i % 20 == 19) { /* a fresh conversation before max_turns */
            ws_close(c);
            if (!burst_connect(c, w->sh->port, addr)) {
                thread_fail("burst connection %d: reconnect refused", w->index);
                goto out;
            }
        }
    }
out:
    ws_close(c);
    free(c);
    return NULL;
}

/* Slowloris of three kinds, all of which the gateway must close on its own. */
static void *slowloris(void *arg) {
    worker_arg *w = arg;
    shared *sh = w->sh;
    enum { N = SLOW_UPGRADES + SLOW_NO_HELLO + SLOW_DRIP };
    ws_client *c = calloc(N, sizeof *c);
    bool *closed = calloc(N, sizeof *closed);
    double kind_max_s[3] = {0, 0, 0}; /* the latest close of each kind */
    const char *upgrade = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n";
    for (int i = 0; i < N; i++) {
        char addr[32];
        snprintf(addr, sizeof addr, "10.88.0.%d", i + 1);
        if (i < SLOW_UPGRADES) {
            c[i].fd = tu_tcp_connect(sh->port);
        } else {
            if (connect_as(&c[i], sh->port, addr) != 101) thread_fail("slowloris %d refused", i);
            if (i >= SLOW_UPGRADES + SLOW_NO_HELLO) {
                ws_send_text(&c[i], VALID[0]);
                ws_send_frame(&c[i], 1, false, "{", 1);
            }
        }
    }
    double start = tu_now();
    size_t at = 0;
    int n_closed = 0;
    /* Drip until every one is closed: a byte of the upgrade or a fragment every 200 ms. */
    while (n_closed < N && tu_now() - start < 20) {
        for (int i = 0; i < N; i++) {
            if (closed[i]) continue;
            if (i < SLOW_UPGRADES && at < strlen(upgrade)) {
                if (send(c[i].fd, upgrade + at, 1, MSG_NOSIGNAL) < 0) closed[i] = true;
            } else if (i >= SLOW_UPGRADES + SLOW_NO_HELLO) {
                ws_send_frame(&c[i], 0, false, " ", 1);
            }
            struct pollfd p = {.fd = c[i].fd, .events = POLLIN};
            if (!closed[i] && poll(&p, 1, 0) > 0) {
                char b[4096];
                ssize_t rd = recv(c[i].fd, b, sizeof b, MSG_DONTWAIT);
                if (rd == 0 || (rd < 0 && errno != EAGAIN)) closed[i] = true;
                /* a close frame, or an error frame followed by the close */
            }
            if (closed[i]) {
                n_closed++;
                int kind = i < SLOW_UPGRADES ? 0 : i < SLOW_UPGRADES + SLOW_NO_HELLO ? 1 : 2;
                if (tu_now() - start > kind_max_s[kind]) kind_max_s[kind] = tu_now() - start;
            }
        }
        at++;
        tu_sleep_ms(200);
    }
    double took = tu_now() - start;
    for (int i = 0; i < N; i++) {
        if (!closed[i])
            thread_fail("slowloris connection %d (%s) still open after %.1f s", i,
                        i < SLOW_UPGRADES ? "upgrade dripped" :
                        i < SLOW_UPGRADES + SLOW_NO_HELLO ? "no hello" : "message dripped", took);
        ws_close(&c[i]);
    }
    printf("# slowloris: %d connections closed by the gateway within %.1f s (upgrade dripped "
           "%.1f s, no hello %.1f s, message dripped %.1f s)\n",
           N, took, kind_max_s[0], kind_max_s[1], kind_max_s[2]);
    free(c);
    free(closed);
    (void)sh;
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* n duels with votes, their ask-to-duel_end times in ms, and the questions asked. */
static double chat(ws_client *c, int n, int first, char (*asked)[64], int *n_asked) {
    double ms[DUELS_MEASURED];
    for (int i = 0; i < n; i++) {
        char text[64];
        snprintf(text, sizeof text, "normal question %d", first + i);
        tu_duel d;
        double t0 = tu_now();
        ws_ask_duel(c, text, &d);
        ms[i] = (tu_now() - t0) * 1e3;
        assert_false(ws_vote(c, d.id, i % 2 ? "b" : "a"));
        snprintf(asked[(*n_asked)++], 64, "%s", text);
        tu_duel_free(&d);
    }
    qsort(ms, (size_t)n, sizeof ms[0], cmp_double);
    return ms[n / 2];
}

static void test_live_fuzz(void **state) {
    (void)state;
    /* Room for 1,000 idle connections: both ends live in this process. */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t want = 2 * IDLE_WANTED + 1024;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    int idle_n = IDLE_WANTED;
    if (rl.rlim_cur < want) {
        idle_n = ((int)rl.rlim_cur - 1024) / 2;
        if (idle_n < 0) idle_n = 0;
        printf("# descriptor limit %llu: %d idle connections instead of %d\n",
               (unsigned long long)rl.rlim_cur, idle_n, IDLE_WANTED);
    }

    gateway_config cfg;
    tu_gateway_config(&cfg, &tu_group_redis);
    cfg.max_frame_bytes = MAX_FRAME;
    cfg.hello_timeout_s = 2;
    cfg.partial_message_timeout_s = 2;
    cfg.abuse_limit = 10;
    cfg.max_turns = MAX_ASKED + DUELS_MEASURED;
    cfg.connections_per_address = 32;
    cfg.asks_per_minute_connection = 100000;
    cfg.asks_per_minute_address = 100000;
    cfg.asks_pending_per_address = BURST_PER_ADDRESS;
    cfg.n_trusted_proxies = 1;
    snprintf(cfg.trusted_proxies[0], sizeof cfg.trusted_proxies[0], "127.0.0.1");
    tu_gateway g;
    tu_gateway_start(&g, &cfg, STEP_MS);
    shared sh = {.port = g.port};

    /* The normal user, alone. */
    ws_client user;
    assert_int_equal(connect_as(&user, g.port, "192.0.2.77"), 101);
    char conv[33];
    ws_hello(&user, NULL, conv);
    char asked[MAX_ASKED + DUELS_MEASURED][64];
    int n_asked = 0;
    double alone_ms = chat(&user, DUELS_MEASURED, 0, asked, &n_asked);

    /* Idle connections, each having said hello. */
    ws_client *idle = calloc((size_t)(idle_n ? idle_n : 1), sizeof *idle);
    for (int i = 0; i < idle_n; i++) {
        char addr[32];
        snprintf(addr, sizeof addr, "10.99.%d.%d", i / IDLE_PER_ADDRESS / 250,
                 i / IDLE_PER_ADDRESS % 250 + 1);
        if (connect_as(&idle[i], g.port, addr) != 101) fail_msg("idle connection %d refused", i);
        ws_hello(&idle[i], NULL, NULL);
    }

    /* The abusers. */
    enum { WORKERS = FUZZERS + BURST_ADDRESSES * BURST_PER_ADDRESS + 1 };
    pthread_t th[WORKERS];
    worker_arg args[WORKERS];
    int t = 0;
    for (int i = 0; i < FUZZERS; i++, t++) {
        args[t] = (worker_arg){&sh, i};
        assert_int_equal(pthread_create(&th[t], NULL, fuzzer, &args[t]), 0);
    }
    for (int i = 0; i < BURST_ADDRESSES * BURST_PER_ADDRESS; i++, t++) {
        args[t] = (worker_arg){&sh, i};
        assert_int_equal(pthread_create(&th[t], NULL, burster, &args[t]), 0);
    }
    args[t] = (worker_arg){&sh, 0};
    assert_int_equal(pthread_create(&th[t], NULL, slowloris, &args[t]), 0);
    t++;
    double load_start = tu_now();
    /* Until the burst has filled the backend's queue. */
    while (tu_metric(g.port, "duel_gateway_asks_total") < DUELS_MEASURED + 2 * BURST_ADDRESSES * BURST_PER_ADDRESS) {
        if (tu_now() - load_start > 10) fail_msg("the burst never got going");
        tu_sleep_ms(20);
    }
    double loaded_ms = chat(&user, DUELS_MEASURED, DUELS_MEASURED, asked, &n_asked);
    /* Keep chatting, at a person's pace, while the abusers run. */
    while (tu_now() - load_start < LOAD_S && n_asked < MAX_ASKED) {
        chat(&user, 1, n_asked, asked, &n_asked);
        tu_sleep_ms(200);
    }
    atomic_store(&sh.stop, true);
    for (int i = 0; i < t; i++) pthread_join(th[i], NULL);
    if (atomic_load(&thread_failures)) fail_msg("%s", thread_failure);

    printf("# time to duel, median of %d: alone %.1f ms, under load %.1f ms (bound %.1f ms); "
           "%d idle connections; fuzz: %ld frames, %ld error frames, %ld closed; burst: %ld "
           "duels, %ld refusals\n",
           DUELS_MEASURED, alone_ms, loaded_ms, 2 * alone_ms + FLOOR_MS, idle_n,
           atomic_load(&sh.fuzz_frames), atomic_load(&sh.fuzz_errors),
           atomic_load(&sh.fuzz_closed), atomic_load(&sh.burst_duels),
           atomic_load(&sh.burst_refusals));
    assert_true(atomic_load(&sh.bad_sent_conns) > 10);
    assert_int_equal(atomic_load(&sh.unanswered), 0);
    assert_true(atomic_load(&sh.burst_duels) > 0);
    assert_true(loaded_ms <= 2 * alone_ms + FLOOR_MS);

    /* The idle connections were not dropped for the others' sake. */
    for (int i = 0; i < idle_n; i++) {
        struct pollfd p = {.fd = idle[i].fd, .events = POLLIN};
        if (poll(&p, 1, 0) > 0) fail_msg("idle connection %d was closed or sent something", i);
        ws_close(&idle[i]);
    }
    free(idle);

    /* The user's conversation, resumed elsewhere: every voted turn, in order. */
    ws_close(&user);
    assert_int_equal(connect_as(&user, g.port, "192.0.2.77"), 101);
    char msg[128];
    snprintf(msg, sizeof msg, "{\"type\":\"hello\",\"conversation\":\"%s\"}", conv);
    ws_send_text(&user, msg);
    json_t *w = ws_expect(&user, "welcome");
    json_t *hist = json_object_get(w, "history");
    assert_int_equal(json_array_size(hist), (size_t)n_asked);
    for (int i = 0; i < n_asked; i++)
        assert_string_equal(json_string_value(json_object_get(json_array_get(hist, (size_t)i), "user")),
                            asked[i]);
    json_decref(w);
    ws_close(&user);

    /* Its votes: each in Redis once. */
    redisContext *rc = tu_redis_connect(&tu_group_redis);
    redisReply *all = redisCommand(rc, "XRANGE " GATEWAY_TEST_VOTE_STREAM " - +");
    assert_true(all && all->type == REDIS_REPLY_ARRAY);
    int mine = 0;
    for (size_t i = 0; i < all->elements; i++) {
        const redisReply *fields = all->element[i]->element[1];
        for (size_t k = 0; k + 1 < fields->elements; k += 2)
            if (strcmp(fields->element[k]->str, "conversation") == 0 &&
                strcmp(fields->element[k + 1]->str, conv) == 0)
                mine++;
    }
    freeReplyObject(all);
    redisFree(rc);
    assert_int_equal(mine, n_asked);

    /* Still serving. */
    char *body = NULL;
    assert_int_equal(tu_http_get(g.port, "/healthz", &body), 200);
    free(body);
    tu_gateway_stop(&g);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_live_fuzz),
    };
    return cmocka_run_group_tests(tests, tu_group_redis_start, tu_group_redis_stop);
}
